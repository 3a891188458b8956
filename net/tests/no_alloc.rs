//! The per-packet path allocates nothing: every golden request, parsed, decided, counted
//! and answered by `handle_datagram`, under the `allocation-counter` crate's global
//! allocator, which counts per thread (so the test harness's own threads cannot disturb it)
//! and keeps `unsafe` out of this project's tests.

use std::net::{Ipv4Addr, SocketAddrV4};

use ironboot_net::proxy::{BootPolicy, ProxyCounters, handle_datagram};
use ironboot_net::service::{MAX_DATAGRAM, RecvMeta};

mod common;
use common::golden;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 127);

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
    common::assert_allocations_are_counted();
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

        let mut replies = 0;
        let allocated = allocation_counter::measure(|| {
            for _ in 0..100 {
                let reply = handle_datagram(request, meta, &policy, &counters, &mut out);
                replies += usize::from(std::hint::black_box(reply).is_some());
            }
        })
        .count_total;
        assert_eq!(replies, 100, "{name}: every request must be answered");
        assert_eq!(
            allocated, 0,
            "{name}: {allocated} allocations in 100 packets"
        );
    }
}
