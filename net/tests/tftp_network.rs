//! Whole transfers over an in-memory network with a virtual clock: loss, duplication and
//! reordering in both directions, across seeds, window sizes, block sizes and file sizes
//! around block and window boundaries. Every transfer must deliver the exact file, a
//! duplicate ACK must never make the server send, and every session must be freed.

mod tftp_sim;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ironboot_net::files::FileSet;
use ironboot_net::service::DatagramService;
use ironboot_net::tftp::{RequestOutcome, TftpConfig, TransferFailure};
use tftp_sim::{
    Ask, Driver, Faults, Outcome, POOL, REQUEST_PORT, Sim, config, content, rrq, server,
};

fn client_addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(10, 0, 1 + (i / 200) as u8, 10 + (i % 200) as u8),
        2000 + i as u16,
    )
}

/// File sizes around the block and window boundaries for `blksize` and `windowsize`.
fn sizes(blksize: usize, windowsize: usize) -> Vec<usize> {
    let window = blksize * windowsize;
    let mut v = vec![
        0,
        1,
        511,
        512,
        513,
        blksize - 1,
        blksize,
        blksize + 1,
        3 * blksize,
        window - 1,
        window,
        window + 1,
        2 * window + blksize / 2,
    ];
    v.sort_unstable();
    v.dedup();
    v
}

/// The faults each seed runs with: none, duplicates only, reordering only, and all at once.
fn faults_for(seed: u64) -> Faults {
    match seed % 4 {
        0 => Faults::NONE,
        1 => Faults {
            loss: 0.0,
            dup: 0.2,
            jitter: Duration::ZERO,
        },
        2 => Faults {
            loss: 0.0,
            dup: 0.0,
            jitter: Duration::from_millis(2),
        },
        _ => Faults {
            loss: 0.08,
            dup: 0.08,
            jitter: Duration::from_millis(2),
        },
    }
}

/// What a run went through, to prove the faults were exercised.
#[derive(Debug, Default)]
struct Exercised {
    timeouts: u64,
    rollbacks: u64,
    duplicate_acks: u64,
    transfers: u64,
}

/// Run every size for one (blksize, windowsize, seed) as concurrent clients, and check.
fn run_matrix(blksize: u16, windowsize: u16, seed: u64, seen: &mut Exercised) {
    let faults = faults_for(seed);
    let sizes = sizes(usize::from(blksize), usize::from(windowsize));
    let mut files = FileSet::new();
    let mut asks = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let name = format!("f{i}.bin");
        let body = content(len, seed * 1000 + i as u64);
        files.insert(&name, body.clone()).unwrap();
        let bs = blksize.to_string();
        let ws = windowsize.to_string();
        asks.push(Ask::octet(
            &name,
            &[("blksize", &bs), ("windowsize", &ws), ("tsize", "0")],
            body,
        ));
    }
    let cfg = TftpConfig {
        // Lossy runs may need many timeouts in a row; giving up is tested separately.
        retries: 40,
        max_blksize: 1468,
        max_windowsize: 64,
        ..config()
    };
    let (server, counters) = server(cfg, files);
    let mut sim = Sim::new(server, counters, faults, seed);
    for (i, ask) in asks.into_iter().enumerate() {
        sim.add_client(client_addr(i), ask);
    }
    sim.run(Duration::from_secs(3600));

    let ctx = format!("blksize {blksize} windowsize {windowsize} seed {seed} faults {faults:?}");
    let mut needed = 0;
    for c in &sim.clients {
        assert_eq!(
            c.outcome,
            Outcome::Done,
            "{ctx}: client {} ({} bytes)",
            c.addr,
            c.ask.expect.len()
        );
        assert!(
            c.data == c.ask.expect,
            "{ctx}: client {} got different bytes",
            c.addr
        );
        needed += c.blocks_needed();
        let oack = c.oack.expect("options were accepted");
        assert_eq!(
            oack.tsize,
            Some(c.ask.expect.len() as u64),
            "{ctx}: tsize in OACK"
        );
    }
    let counters = &sim.counters;
    assert_eq!(counters.active(), 0, "{ctx}: active gauge back to 0");
    assert_eq!(sim.server.active_transfers(), 0, "{ctx}");
    assert_eq!(
        sim.server.next_timeout(),
        None,
        "{ctx}: no timer left behind"
    );
    assert_eq!(
        counters.transfers_completed(),
        sim.clients.len() as u64,
        "{ctx}"
    );
    let resent = counters.retransmissions_on_timeout()
        + counters.retransmissions_on_rollback()
        + counters.retransmissions_as_probe();
    // Every DATA sent is either the first send of a needed block or counted as a re-send
    // (the OACK re-sends are in the timeout count too, hence <=).
    assert!(
        counters.data_packets_sent() <= needed + resent && counters.data_packets_sent() >= needed,
        "{ctx}: {} DATA sent, {needed} needed, {resent} re-sent",
        counters.data_packets_sent()
    );
    if faults.loss == 0.0 && faults.jitter.is_zero() {
        // Duplicates alone must cost nothing: no re-send at all.
        assert_eq!(
            counters.data_packets_sent(),
            needed,
            "{ctx}: duplicates caused re-sends"
        );
        assert_eq!(resent, 0, "{ctx}");
    }
    seen.timeouts += counters.retransmissions_on_timeout();
    seen.rollbacks += counters.retransmissions_on_rollback();
    seen.duplicate_acks += counters.duplicate_acks();
    seen.transfers += counters.transfers_completed();
}

#[test]
fn transfers_survive_loss_duplication_and_reordering() {
    let mut seen = Exercised::default();
    for windowsize in [1u16, 4, 16, 64] {
        for blksize in [512u16, 1428, 1468] {
            for seed in 0..12 {
                run_matrix(blksize, windowsize, seed, &mut seen);
            }
        }
    }
    println!("{seen:?}");
    // The faults really hit every recovery path.
    assert!(seen.timeouts > 100, "{seen:?}");
    assert!(seen.rollbacks > 100, "{seen:?}");
    assert!(seen.duplicate_acks > 100, "{seen:?}");
}

#[test]
fn block_numbers_roll_over_past_65535() {
    // 65536 + 2 blocks of 8 bytes: the wire number wraps to 0 and goes on.
    let len = 8 * 65537 + 3;
    let body = content(len, 7);
    for (windowsize, faults) in [
        (64u16, Faults::NONE),
        (
            16,
            Faults {
                loss: 0.02,
                dup: 0.02,
                jitter: Duration::from_millis(1),
            },
        ),
    ] {
        let mut files = FileSet::new();
        files.insert("big.bin", body.clone()).unwrap();
        let cfg = TftpConfig {
            retries: 40,
            ..config()
        };
        let (server, counters) = server(cfg, files);
        let mut sim = Sim::new(server, counters, faults, 99);
        let ws = windowsize.to_string();
        sim.add_client(
            client_addr(0),
            Ask::octet(
                "big.bin",
                &[("blksize", "8"), ("windowsize", &ws)],
                body.clone(),
            ),
        );
        sim.run(Duration::from_secs(36_000));
        let c = &sim.clients[0];
        assert_eq!(c.outcome, Outcome::Done);
        assert!(
            c.data == body,
            "rolled-over transfer delivered different bytes"
        );
        assert!(c.blocks_needed() > 65536);
        assert_eq!(sim.counters.active(), 0);
        if faults.loss == 0.0 {
            assert_eq!(sim.counters.data_packets_sent(), c.blocks_needed());
        }
    }
}

#[test]
fn plain_rfc1350_lockstep_without_options() {
    for seed in 0..8 {
        let mut files = FileSet::new();
        let mut asks = Vec::new();
        for (i, len) in [0usize, 1, 511, 512, 513, 1024, 5000]
            .into_iter()
            .enumerate()
        {
            let body = content(len, seed + i as u64);
            files.insert(&format!("p{i}"), body.clone()).unwrap();
            asks.push(Ask::octet(&format!("p{i}"), &[], body));
        }
        let (server, counters) = server(
            TftpConfig {
                retries: 40,
                ..config()
            },
            files,
        );
        let mut sim = Sim::new(server, counters, faults_for(seed), seed);
        for (i, ask) in asks.into_iter().enumerate() {
            sim.add_client(client_addr(i), ask);
        }
        sim.run(Duration::from_secs(3600));
        for c in &sim.clients {
            assert_eq!(c.outcome, Outcome::Done, "seed {seed}");
            assert!(c.data == c.ask.expect);
            assert_eq!(c.oack, None, "no options, no OACK");
        }
        assert_eq!(sim.counters.active(), 0);
    }
}

#[test]
fn storm_of_clients_over_the_pool() {
    // 600 machines at once, three per IP, over a lossy network: all served, load spread
    // over the pool ports, everything freed.
    let body = content(200_000, 3);
    let mut files = FileSet::new();
    files.insert("snp.efi", body.clone()).unwrap();
    let cfg = TftpConfig {
        retries: 40,
        ..config()
    };
    let (server, counters) = server(cfg, files);
    let faults = Faults {
        loss: 0.03,
        dup: 0.03,
        jitter: Duration::from_millis(3),
    };
    let mut sim = Sim::new(server, counters, faults, 11);
    for i in 0..600 {
        let ip = Ipv4Addr::new(10, 1, (i / 3 / 250) as u8, (i / 3 % 250) as u8 + 1);
        let addr = SocketAddrV4::new(ip, 3000 + (i % 3) as u16);
        sim.add_client(
            addr,
            Ask::octet(
                "snp.efi",
                &[("blksize", "1468"), ("windowsize", "16"), ("tsize", "0")],
                body.clone(),
            ),
        );
    }
    let loads: Vec<usize> = sim.server.pool_load().map(|(_, n)| n).collect();
    let _ = loads;
    // Run a little, check the spread while everyone is mid-transfer.
    sim.run(Duration::from_millis(20));
    let loads: Vec<usize> = sim.server.pool_load().map(|(_, n)| n).collect();
    assert_eq!(loads.len(), POOL.len());
    let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
    assert!(max - min <= 1, "least-loaded assignment: {loads:?}");
    sim.run(Duration::from_secs(3600));
    for c in &sim.clients {
        assert_eq!(c.outcome, Outcome::Done);
        assert!(c.data == body);
    }
    assert_eq!(sim.counters.active(), 0);
    assert_eq!(sim.counters.transfers_completed(), 600);
    assert_eq!(sim.server.next_timeout(), None);
}

#[test]
fn silent_client_is_dropped_after_the_retries() {
    let mut files = FileSet::new();
    files.insert("f", content(100_000, 1)).unwrap();
    for (options, window) in [(vec![], 1usize), (vec![("windowsize", "8")], 8)] {
        let mut d = Driver::new(config(), files.clone());
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 1234);
        let first = d.send(client, REQUEST_PORT, &rrq("f", &options));
        assert_eq!(first.len(), 1);
        let port = first[0].meta.local_port;
        // Prove the client receives (ACK the OACK, or block 1) and acknowledge block 1,
        // take one window, go silent.
        if options.is_empty() {
            assert_eq!(first[0].data(), (1, 512));
        } else {
            assert_eq!(d.send(client, port, &tftp_sim::ack(0)).len(), window);
        }
        let window_sent = d.send(client, port, &tftp_sim::ack(1));
        assert_eq!(window_sent.len(), window);
        let first_unacked = window_sent[0].data().0;
        let retries = usize::from(d.server.config().retries);
        let mut resent = 0;
        for round in 0..retries {
            let out = d.advance(Duration::from_secs(1));
            if round == 0 {
                // The first timeout resends the window ...
                assert_eq!(out.len(), window, "one window on the first timeout");
            } else {
                // ... later ones only probe with the first unacknowledged block and the
                // window's last.
                let blocks: Vec<u16> = out.iter().map(|s| s.data().0).collect();
                let last = window_sent[window - 1].data().0;
                let probe: Vec<u16> = if window == 1 {
                    vec![first_unacked]
                } else {
                    vec![first_unacked, last]
                };
                assert_eq!(blocks, probe, "a probe, not a window");
            }
            resent += out.len();
        }
        assert!(
            resent <= window + 2 * (retries - 1),
            "without progress at most a window and the probes go out again"
        );
        assert_eq!(d.counters.active(), 1);
        let out = d.advance(Duration::from_secs(1));
        assert!(out.is_empty(), "gives up silently");
        assert_eq!(d.counters.active(), 0);
        assert_eq!(d.counters.transfers_failed(TransferFailure::Timeout), 1);
        assert_eq!(
            d.counters.retransmissions_on_timeout() + d.counters.retransmissions_as_probe(),
            resent as u64
        );
        assert_eq!(d.server.next_timeout(), None);
    }
}

#[test]
fn unproven_request_gets_one_resend_then_waits_silently() {
    let mut files = FileSet::new();
    files.insert("f", content(100_000, 1)).unwrap();
    for options in [vec![], vec![("windowsize", "64"), ("blksize", "1468")]] {
        let mut d = Driver::new(config(), files.clone());
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 1234);
        let first = d.send(client, REQUEST_PORT, &rrq("f", &options));
        assert_eq!(first.len(), 1, "one first reply");
        assert_eq!(d.server.pending_requests(), 1);
        assert_eq!(
            d.server.active_transfers(),
            0,
            "no slot before the first ACK"
        );
        let again = d.advance(Duration::from_secs(1));
        assert_eq!(again.len(), 1, "one resend");
        assert_eq!(again[0].bytes, first[0].bytes);
        let retries = u32::from(d.server.config().retries);
        for _ in 1..retries {
            assert!(d.advance(Duration::from_secs(1)).is_empty(), "nothing more");
            assert_eq!(d.server.pending_requests(), 1, "still waiting");
        }
        // A late ACK still proves the client: the transfer goes on.
        if options.is_empty() {
            let port = first[0].meta.local_port;
            let next = d.send(client, port, &tftp_sim::ack(1));
            assert_eq!(next[0].data().0, 2);
            assert_eq!(d.server.active_transfers(), 1);
            assert_eq!(d.server.pending_requests(), 0);
            continue;
        }
        assert!(d.advance(Duration::from_secs(1)).is_empty());
        assert_eq!(d.server.pending_requests(), 0);
        assert_eq!(d.counters.pending(), 0);
        assert_eq!(d.counters.transfers_failed(TransferFailure::Unproven), 1);
        assert_eq!(d.counters.data_packets_sent(), 0, "never a window");
        assert_eq!(d.server.next_timeout(), None);
    }
}

#[test]
fn duplicate_acks_never_trigger_a_burst() {
    // Hammer one transfer with copies of every ACK: each copy after the first is ignored.
    let body = content(64 * 1468 * 3, 5);
    let mut files = FileSet::new();
    files.insert("f", body.clone()).unwrap();
    let mut d = Driver::new(config(), files);
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 1234);
    let oack = d.send(
        client,
        REQUEST_PORT,
        &rrq("f", &[("blksize", "1468"), ("windowsize", "64")]),
    );
    let port = oack[0].meta.local_port;
    let mut acked = 0u16;
    let mut got = Vec::new();
    loop {
        let window = d.send(client, port, &tftp_sim::ack(acked));
        for _ in 0..5 {
            // Nothing at all while the transfer runs; after the last ACK the session is
            // gone and a late copy only gets ERROR 5.
            let answer = d.send(client, port, &tftp_sim::ack(acked));
            assert!(
                answer
                    .iter()
                    .all(|s| matches!(s.repr(), ironboot_net::wire::tftp::Repr::Error { .. })),
                "duplicate ACK {acked} answered with {answer:?}"
            );
            assert!(window.is_empty() || answer.is_empty());
        }
        if window.is_empty() {
            break;
        }
        for s in &window {
            let (block, len) = s.data();
            assert_eq!(block, acked.wrapping_add(1));
            acked = block;
            got.extend_from_slice(&s.bytes[4..]);
            assert!(len <= 1468);
        }
        // An ACK from the middle of the acknowledged past is stale too.
        assert!(
            d.send(client, port, &tftp_sim::ack(acked.wrapping_sub(70)))
                .is_empty()
        );
    }
    assert!(got == body);
    assert_eq!(
        d.counters.data_packets_sent(),
        (body.len() / 1468 + 1) as u64
    );
    assert_eq!(d.counters.active(), 0);
}

#[test]
fn a_gap_ack_restarts_the_window_at_the_gap() {
    let body = content(1468 * 20, 6);
    let mut files = FileSet::new();
    files.insert("f", body).unwrap();
    let mut d = Driver::new(config(), files);
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 1234);
    let port = d.send(
        client,
        REQUEST_PORT,
        &rrq("f", &[("blksize", "1468"), ("windowsize", "8")]),
    )[0]
    .meta
    .local_port;
    let w = d.send(client, port, &tftp_sim::ack(0));
    assert_eq!(
        w.iter().map(|s| s.data().0).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    // The client got 1-3, missed 4: it acknowledges 3; the server resends from 4.
    let w = d.send(client, port, &tftp_sim::ack(3));
    assert_eq!(
        w.iter().map(|s| s.data().0).collect::<Vec<_>>(),
        (4..=11).collect::<Vec<_>>()
    );
    assert_eq!(
        d.counters.retransmissions_on_rollback(),
        5,
        "blocks 4-8 went out twice"
    );
    // The client's further gap ACKs for 3 are duplicates.
    assert!(d.send(client, port, &tftp_sim::ack(3)).is_empty());
    // An ACK beyond what was sent is ignored.
    assert!(d.send(client, port, &tftp_sim::ack(30)).is_empty());
    let _ = RequestOutcome::Started;
}
