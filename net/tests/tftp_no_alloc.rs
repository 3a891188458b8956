//! The TFTP server's steady state allocates nothing: requests, windows of DATA (a shared
//! slice of the file each), ACKs, duplicate ACKs, timeouts and completions, measured with
//! the `allocation-counter` crate (per thread, so the harness cannot disturb it).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ironboot_net::files::FileSet;
use ironboot_net::service::{DatagramService, RecvMeta, TxQueue};
use ironboot_net::tftp::{TftpConfig, TftpCounters, TftpServer};
use ironboot_net::wire::tftp::{Opcode, OptionWriter, Repr, write_ack};

mod common;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const POOL: [u16; 2] = [40001, 40002];

fn meta(src: SocketAddrV4, port: u16) -> RecvMeta {
    RecvMeta {
        src,
        local_addr: SERVER,
        local_port: port,
        ifindex: 1,
    }
}

/// Drive `clients` transfers of "f" to completion, ACKing every window, with one duplicate
/// of every ACK and one timeout round in the middle. Returns DATA packets seen.
fn run_round(
    server: &mut TftpServer,
    tx: &mut TxQueue,
    now: &mut Instant,
    clients: &[SocketAddrV4],
    rrq: &[u8],
) -> usize {
    let mut ack = [0u8; 4];
    let mut ports = [0u16; 16];
    let mut last = [0u16; 16];
    let mut done = [false; 16];
    let mut data = 0;
    for (i, &c) in clients.iter().enumerate() {
        server.on_datagram(*now, rrq, &meta(c, 69), tx);
        let (m, _, _) = tx.iter().next().expect("an OACK");
        ports[i] = m.local_port;
        tx.clear();
    }
    let mut round = 0;
    while done.iter().take(clients.len()).any(|d| !d) {
        round += 1;
        if round == 3 {
            // Nobody answers for a while: every transfer retransmits its window.
            *now += Duration::from_secs(1);
            while server.next_timeout().is_some_and(|t| t <= *now) {
                server.on_timeout(*now, tx);
                data += tx.len();
                tx.clear();
            }
        }
        for (i, &c) in clients.iter().enumerate() {
            if done[i] {
                continue;
            }
            write_ack(&mut ack, last[i]).unwrap();
            for _ in 0..2 {
                server.on_datagram(*now, &ack, &meta(c, ports[i]), tx);
                for (_, header, body) in tx.iter() {
                    let Ok(Repr::Data { block, .. }) = Repr::parse_bytes(header) else {
                        panic!("DATA expected");
                    };
                    last[i] = block;
                    if body.is_none_or(|b| b.len() < 1468) {
                        done[i] = true;
                    }
                    data += 1;
                }
                tx.clear();
            }
            if done[i] {
                write_ack(&mut ack, last[i]).unwrap();
                server.on_datagram(*now, &ack, &meta(c, ports[i]), tx);
                tx.clear();
            }
        }
        *now += Duration::from_millis(1);
    }
    data
}

#[test]
fn steady_state_allocates_nothing() {
    let mut files = FileSet::new();
    let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    files.insert("f", Bytes::from(body)).unwrap();
    let counters = Arc::new(TftpCounters::default());
    let config = TftpConfig::default();
    let mut server = TftpServer::new(config, Arc::new(files), &POOL, counters.clone()).unwrap();
    let mut tx = TxQueue::with_capacity(server.max_sends_per_event());
    let mut now = Instant::now();
    let clients: Vec<SocketAddrV4> = (0..16)
        .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, i), 2000))
        .collect();
    let mut rrq = [0u8; 128];
    let mut w = OptionWriter::request(&mut rrq, Opcode::Rrq, "f", "octet").unwrap();
    w.option("blksize", "1468").unwrap();
    w.option("windowsize", "16").unwrap();
    w.option("tsize", "0").unwrap();
    let n = w.finish();
    let rrq = &rrq[..n];

    // Warm up: the first clone of the file turns it into a shared buffer (one allocation
    // for the whole run), and the tables reach their working size.
    let warm = run_round(&mut server, &mut tx, &mut now, &clients, rrq);
    assert!(warm > 0);
    assert_eq!(counters.active(), 0);

    let mut data = 0;
    let seen = allocation_counter::measure(|| {
        data = run_round(&mut server, &mut tx, &mut now, &clients, rrq);
    });
    assert_eq!(counters.active(), 0);
    assert_eq!(counters.transfers_completed(), 32);
    assert!(data > 16 * 200, "{data} DATA packets");
    assert_eq!(
        seen.count_total, 0,
        "{} allocations for {data} DATA packets and 16 transfers",
        seen.count_total
    );
}

#[test]
fn counting_allocator_sees_allocations() {
    common::assert_allocations_are_counted();
}
