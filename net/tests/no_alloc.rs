//! The per-packet path allocates nothing: every golden request, parsed, decided, counted
//! and answered by `handle_datagram`, under a global allocator that counts.
//!
//! Its own test binary because the counting allocator is process-wide; the count itself is
//! per thread, so the test harness's own threads cannot disturb it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddrV4};

use ironboot_net::proxy::{BootPolicy, ProxyCounters, handle_datagram};
use ironboot_net::udp::{MAX_DATAGRAM, RecvMeta};

/// The system allocator, counting allocations (and reallocations) made by this thread.
struct Counting;

thread_local! {
    // `const` initialisation: no lazy init, so touching it from inside the allocator
    // cannot itself allocate or recurse.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: during thread teardown the slot may be gone; those allocations are not
    // ours to count.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; counting touches only a thread-local `Cell`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours, which the caller upholds.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours, which the caller upholds.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours; `ptr` came from `System` via this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours; `ptr` came from `System` via this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 127);

fn golden(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}.bin", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("golden packet {path}: {e}"))
}

fn meta(local_port: u16, src: SocketAddrV4) -> RecvMeta {
    RecvMeta {
        src,
        local_addr: SERVER,
        local_port,
        ifindex: 2,
    }
}

#[test]
fn counting_allocator_sees_allocations() {
    // Guards the test below: if counting were broken it would pass vacuously.
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    drop(v);
    assert!(
        allocations() > before,
        "the counting allocator is not installed"
    );
}

#[test]
fn handle_datagram_allocates_nothing_for_golden_requests() {
    let cases = [
        // (golden request, local port, source), as captured.
        (
            "ipxe-rom-bios-discover",
            67,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        ),
        (
            "edk2-x64-discover",
            67,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        ),
        (
            "snponly-efi-discover",
            67,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        ),
        (
            "ipxe-rom-bios-proxy-request-4011",
            4011,
            SocketAddrV4::new(CLIENT, 68),
        ),
        (
            "edk2-x64-proxy-request-4011",
            4011,
            SocketAddrV4::new(CLIENT, 4011),
        ),
        (
            "snponly-efi-proxy-request-4011",
            4011,
            SocketAddrV4::new(CLIENT, 68),
        ),
    ];
    // Everything that may allocate is set up before counting starts.
    let policy = BootPolicy::new(SERVER, 50042);
    let counters = ProxyCounters::default();
    let mut out = vec![0u8; MAX_DATAGRAM];
    let requests: Vec<_> = cases
        .iter()
        .map(|&(name, port, src)| (name, golden(name), meta(port, src)))
        .collect();

    for (name, request, meta) in &requests {
        // Warm-up: any one-time initialisation happens here, outside the count.
        handle_datagram(request, meta, &policy, &counters, &mut out)
            .unwrap_or_else(|| panic!("{name}: no reply"));

        let before = allocations();
        let mut replies = 0;
        for _ in 0..100 {
            let reply = handle_datagram(request, meta, &policy, &counters, &mut out);
            replies += usize::from(std::hint::black_box(reply).is_some());
        }
        let allocated = allocations() - before;
        assert_eq!(replies, 100, "{name}: every request must be answered");
        assert_eq!(
            allocated, 0,
            "{name}: {allocated} allocations in 100 packets"
        );
    }
}
