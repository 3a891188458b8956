//! Per-packet cost of the ProxyDHCP path on golden firmware packets: parse + decide +
//! count + write the reply (`handle_datagram`), and parse alone.
//!
//! After the criterion run it prints the heap allocations per packet of each workload,
//! counted per thread by the `allocation-counter` crate's global allocator (expected: 0). `PROXY_DHCP_ITERS=N` skips criterion and
//! only runs each workload N times (optionally only those whose name contains
//! `PROXY_DHCP_FILTER`), for a fixed amount of work under `valgrind --tool=callgrind`;
//! see BENCHMARKS.md.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use ironboot_net::proxy::{BootPolicy, ProxyCounters, handle_datagram};
use ironboot_net::service::{MAX_DATAGRAM, RecvMeta};
use ironboot_net::wire::{Packet, Repr};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 127);
const IPXE_ROM_DISCOVER: &[u8] = include_bytes!("../net/tests/data/ipxe-rom-bios-discover.bin");
const EDK2_DISCOVER: &[u8] = include_bytes!("../net/tests/data/edk2-x64-discover.bin");
const EDK2_REQUEST_4011: &[u8] =
    include_bytes!("../net/tests/data/edk2-x64-proxy-request-4011.bin");

/// Allocation-count pass after criterion: enough packets that one stray allocation in a
/// rare branch would still show as a non-zero average.
const COUNT_ITERATIONS: u64 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    /// `handle_datagram`: parse, decide, count, write the reply.
    Handle,
    /// `Packet::new_checked` + `Repr::parse` only.
    Parse,
}

struct Workload {
    work: Work,
    name: &'static str,
    request: &'static [u8],
    meta: RecvMeta,
}

/// Everything one packet needs, set up once so nothing is allocated per packet.
struct Bench {
    policy: BootPolicy,
    counters: ProxyCounters,
    out: Vec<u8>,
}

impl Bench {
    fn new() -> Self {
        Bench {
            policy: BootPolicy::new(SERVER, 50042),
            counters: ProxyCounters::default(),
            out: vec![0u8; MAX_DATAGRAM],
        }
    }

    /// Process one packet; true if it produced what it should (a reply, or a parse).
    #[inline]
    fn run(&mut self, w: &Workload) -> bool {
        let data = black_box(w.request);
        match w.work {
            Work::Handle => {
                let meta = black_box(&w.meta);
                let r = handle_datagram(data, meta, &self.policy, &self.counters, &mut self.out);
                black_box(r).is_some()
            }
            Work::Parse => {
                let r = Packet::new_checked(data).and_then(|p| Repr::parse(&p));
                black_box(r).is_ok()
            }
        }
    }
}

fn workloads() -> [Workload; 5] {
    let broadcast = RecvMeta {
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        local_addr: SERVER,
        local_port: 67,
        ifindex: 2,
    };
    // EDK2 sends its boot server request from port 4011, with its leased address.
    let edk2_4011 = RecvMeta {
        src: SocketAddrV4::new(CLIENT, 4011),
        local_port: 4011,
        ..broadcast
    };
    [
        (
            Work::Handle,
            "ipxe_rom_discover",
            IPXE_ROM_DISCOVER,
            broadcast,
        ),
        (Work::Handle, "edk2_discover", EDK2_DISCOVER, broadcast),
        (
            Work::Handle,
            "edk2_request_4011",
            EDK2_REQUEST_4011,
            edk2_4011,
        ),
        (
            Work::Parse,
            "ipxe_rom_discover",
            IPXE_ROM_DISCOVER,
            broadcast,
        ),
        (Work::Parse, "edk2_discover", EDK2_DISCOVER, broadcast),
    ]
    .map(|(work, name, request, meta)| Workload {
        work,
        name,
        request,
        meta,
    })
}

fn group_name(work: Work) -> &'static str {
    match work {
        Work::Handle => "handle_datagram",
        Work::Parse => "parse",
    }
}

fn full_name(w: &Workload) -> String {
    format!("{}/{}", group_name(w.work), w.name)
}

/// Criterion measurements, one benchmark per workload.
fn measure(c: &mut Criterion, bench: &mut Bench) {
    for work in [Work::Handle, Work::Parse] {
        let mut group = c.benchmark_group(group_name(work));
        group.throughput(Throughput::Elements(1));
        for w in workloads().iter().filter(|w| w.work == work) {
            group.bench_function(w.name, |b| b.iter(|| bench.run(w)));
        }
        group.finish();
    }
}

/// Run each workload `iterations` times and print heap allocations per packet.
fn count_allocations(bench: &mut Bench, iterations: u64, filter: Option<&str>) {
    for w in &workloads() {
        let name = full_name(w);
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        // Warm-up, and a check that the bench measures real work, not an early return.
        assert!(bench.run(w), "{name}: no reply / parse failed");
        let allocs = allocation_counter::measure(|| {
            for _ in 0..iterations {
                bench.run(w);
            }
        })
        .count_total;
        println!(
            "{name:<34} allocs/packet = {} ({allocs} in {iterations} packets)",
            allocs as f64 / iterations.max(1) as f64
        );
    }
}

fn main() {
    let mut bench = Bench::new();
    if let Ok(n) = std::env::var("PROXY_DHCP_ITERS") {
        let n = n.parse().expect("PROXY_DHCP_ITERS must be a number");
        let filter = std::env::var("PROXY_DHCP_FILTER").ok();
        count_allocations(&mut bench, n, filter.as_deref());
        return;
    }
    // Modest defaults so a full run takes well under a minute; command-line options
    // (`--measurement-time`, `--sample-size`, ...) still override them.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(60)
        .configure_from_args();
    measure(&mut c, &mut bench);
    c.final_summary();
    if !std::env::args().any(|a| a == "--list") {
        count_allocations(&mut bench, COUNT_ITERATIONS, None);
    }
}
