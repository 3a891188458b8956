//! A hostile PXE network against the TFTP server, on the virtual network of `tftp_sim`:
//! anyone can forge a source address, so requests and ACKs may come from a host that never
//! sees the replies.
//!
//! - a flood of forged requests from thousands of addresses must leave a real client
//!   served;
//! - amplification (bytes the server sends to a forged source over bytes the attacker
//!   sent, both counted on the wire with 28 bytes of IPv4 and UDP headers per datagram)
//!   stays at most 25x for a forged request and for a forged request followed by a blind
//!   ACK sprayed to every pool port;
//! - a late ERROR of a transfer the client replaced does not end the new one.
//!
//! Each test prints its figures; `cargo test -p ironboot-net --test tftp_attacks --
//! --nocapture` shows them.

mod tftp_sim;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use ironboot_net::files::FileSet;
use ironboot_net::service::DatagramService;
use ironboot_net::tftp::{TftpCounters, TftpServer};
use ironboot_net::wire::tftp::{ErrorCode, Repr};
use tftp_sim::{
    Ask, Driver, Faults, Outcome, REQUEST_PORT, Sent, Sim, ack, config, content, error, rrq,
};

/// IPv4 and UDP headers of one datagram.
const HEADERS: u64 = 28;
/// The most bytes the server may send to a forged source per byte the attacker sent.
const MAX_AMPLIFICATION: f64 = 25.0;
/// The pool size of a default installation (`--tftp-port-pool`).
const POOL_PORTS: u16 = 32;

/// A datagram's size on the wire.
fn wire(payload: usize) -> u64 {
    payload as u64 + HEADERS
}

/// What a PXE server serves, under its real names (the shortest name makes the smallest
/// request, so the largest amplification).
fn pxe_files() -> FileSet {
    let mut files = FileSet::new();
    files.insert("ipxe.efi", content(1_000_000, 1)).unwrap();
    files.insert("snp.efi", content(200_000, 2)).unwrap();
    files.insert("undionly.kpxe", content(70_000, 3)).unwrap();
    files
}

/// A driven server with the default configuration and a pool of `POOL_PORTS` ports.
fn driver() -> Driver {
    let mut d = Driver::new(config(), pxe_files());
    let pool: Vec<u16> = (0..POOL_PORTS).map(|i| 41_000 + i).collect();
    let counters = Arc::new(TftpCounters::default());
    d.server = TftpServer::new(config(), Arc::new(pxe_files()), &pool, counters.clone())
        .expect("valid configuration");
    d.counters = counters;
    d
}

/// The pool ports of [`driver`].
fn pool() -> impl Iterator<Item = u16> {
    (0..POOL_PORTS).map(|i| 41_000 + i)
}

/// Bytes on the wire the server sent to `victim`'s address.
fn to_victim(sent: &[Sent], victim: SocketAddrV4) -> u64 {
    sent.iter()
        .filter(|s| s.meta.dst.ip() == victim.ip())
        .map(|s| wire(s.bytes.len()))
        .sum()
}

/// Run every timer out (a second at a time, at most a minute); what the server sent.
fn run_out(d: &mut Driver) -> Vec<Sent> {
    let mut out = Vec::new();
    for _ in 0..60 {
        if d.server.next_timeout().is_none() {
            break;
        }
        out.extend(d.advance(Duration::from_secs(1)));
    }
    out
}

/// A forged address for attack `i`.
fn victim(i: u32) -> SocketAddrV4 {
    let [_, b, c, d] = (0x0a40_0000 + i).to_be_bytes();
    SocketAddrV4::new(
        Ipv4Addr::new(10, b, c, d.max(1)),
        1024 + (i % 60_000) as u16,
    )
}

/// Totals of a series of attacks.
#[derive(Debug, Default)]
struct Amplification {
    attacks: u32,
    attacker_bytes: u64,
    victim_bytes: u64,
    /// The largest ratio of a single attack.
    worst: f64,
    /// Attacks after which the victim received any DATA.
    with_data: u32,
}

impl Amplification {
    fn add(&mut self, attacker: u64, sent: &[Sent], victim: SocketAddrV4) {
        let bytes = to_victim(sent, victim);
        self.attacks += 1;
        self.attacker_bytes += attacker;
        self.victim_bytes += bytes;
        self.worst = self.worst.max(bytes as f64 / attacker as f64);
        if sent
            .iter()
            .any(|s| s.meta.dst == victim && matches!(s.repr(), Repr::Data { .. }))
        {
            self.with_data += 1;
        }
    }

    fn ratio(&self) -> f64 {
        self.victim_bytes as f64 / self.attacker_bytes as f64
    }

    fn report(&self, what: &str) {
        println!(
            "{what}: {} attacks, attacker sent {} B, victims received {} B: {:.1}x \
             (worst single attack {:.1}x, {} with DATA)",
            self.attacks,
            self.attacker_bytes,
            self.victim_bytes,
            self.ratio(),
            self.worst,
            self.with_data
        );
    }
}

#[test]
fn a_forged_request_is_answered_twice_at_most() {
    // Every case is measured and printed before any is checked.
    let mut results = Vec::new();
    for (name, options) in [
        ("snp.efi", vec![]),
        ("ipxe.efi", vec![]),
        (
            "snp.efi",
            vec![("blksize", "1468"), ("windowsize", "64"), ("tsize", "0")],
        ),
    ] {
        let mut d = driver();
        let mut total = Amplification::default();
        let mut most_replies = 0;
        for i in 0..64 {
            let v = victim(i);
            let request = rrq(name, &options);
            let mut sent = d.send(v, REQUEST_PORT, &request);
            sent.extend(run_out(&mut d));
            most_replies = most_replies.max(sent.iter().filter(|s| s.meta.dst == v).count());
            total.add(wire(request.len()), &sent, v);
        }
        let what = format!("forged RRQ {name} {options:?}");
        total.report(&what);
        results.push((what, total, most_replies, d.counters.active()));
    }
    for (what, total, most_replies, active) in results {
        assert!(most_replies <= 2, "{what}: {most_replies} replies");
        assert!(
            total.worst <= MAX_AMPLIFICATION,
            "{what}: {:.1}x",
            total.worst
        );
        assert_eq!(active, 0, "{what}: no transfer slot was ever taken");
    }
}

#[test]
fn a_blind_ack_sprayed_to_every_pool_port_gains_little() {
    // A forged request for the largest file with the largest window, then ACK 0 of the
    // OACK from the same forged address to each pool port in turn (the attacker cannot
    // see which port the OACK came from).
    let request = rrq(
        "ipxe.efi",
        &[("blksize", "1468"), ("windowsize", "64"), ("tsize", "0")],
    );
    let mut d = driver();
    let mut total = Amplification::default();
    for i in 0..640 {
        let v = victim(i);
        let mut attacker = wire(request.len());
        let mut sent = d.send(v, REQUEST_PORT, &request);
        for port in pool() {
            attacker += wire(4);
            sent.extend(d.send(v, port, &ack(0)));
        }
        sent.extend(run_out(&mut d));
        total.add(attacker, &sent, v);
    }
    total.report("forged RRQ + ACK 0 sprayed to 32 pool ports");
    assert!(
        total.ratio() <= MAX_AMPLIFICATION,
        "{:.1}x over {} attacks",
        total.ratio(),
        total.attacks
    );
    assert_eq!(d.counters.active(), 0);
}

#[test]
fn a_blind_ack_to_one_guessed_pool_port() {
    // The other blind strategy: one ACK 0 to one port, guessed. Reported, and bounded by
    // one window per right guess (1 in 32): the window a forged ACK 0 starts is never
    // resent whole.
    let request = rrq(
        "ipxe.efi",
        &[("blksize", "1468"), ("windowsize", "64"), ("tsize", "0")],
    );
    let mut d = driver();
    let mut total = Amplification::default();
    for i in 0..640 {
        let v = victim(i);
        let guess = 41_000 + (i % u32::from(POOL_PORTS)) as u16;
        let mut sent = d.send(v, REQUEST_PORT, &request);
        sent.extend(d.send(v, guess, &ack(0)));
        sent.extend(run_out(&mut d));
        total.add(wire(request.len()) + wire(4), &sent, v);
    }
    total.report("forged RRQ + ACK 0 to one guessed pool port");
    // A right guess gets one window (64 x 1496 B) and two-block probes; the others get
    // their OACK alone (the wrong-port ACK ends the request without a reply).
    let window = 64 * wire(1468);
    let per_hit = window + 2 * 5 * wire(1468) + 2 * wire(64);
    let bound = u64::from(total.with_data) * per_hit + u64::from(total.attacks) * 3 * wire(64);
    assert!(
        total.victim_bytes <= bound,
        "{} B to victims, bound {bound}",
        total.victim_bytes
    );
}

#[test]
fn a_forged_request_flood_leaves_room_for_real_clients() {
    // 8 forged requests per fake address, 8200 every 150 ms (the attack measured against
    // the release binary), kept up while two real machines boot: an EDK2-like client with
    // a 64-block window and an iPXE-like lock-step one.
    let (server, counters) = tftp_sim::server(config(), pxe_files());
    let faults = Faults::NONE;
    let mut sim = Sim::new(server, counters, faults, 1);
    let flood_request = |name: &str| rrq(name, &[("blksize", "1468"), ("windowsize", "64")]);
    let mut forged = 0u32;
    let mut flood = |sim: &mut Sim, n: u32| {
        for _ in 0..n {
            let ip = Ipv4Addr::from(0x0ac8_0000 + forged / 8);
            let src = SocketAddrV4::new(ip, 1024 + (forged % 8) as u16);
            sim.inject(src, flood_request("ipxe.efi"));
            forged += 1;
        }
    };
    // The first burst lands before the machines ask.
    flood(&mut sim, 8200);
    sim.run(Duration::from_millis(150));
    let edk2 = sim.add_client(
        SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 1), 1030),
        Ask::octet(
            "ipxe.efi",
            &[("blksize", "1468"), ("windowsize", "64"), ("tsize", "0")],
            content(1_000_000, 1),
        ),
    );
    let ipxe = sim.add_client(
        SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), 2071),
        Ask::octet(
            "undionly.kpxe",
            &[("blksize", "1432"), ("tsize", "0")],
            content(70_000, 3),
        ),
    );
    // 820 forged requests every 15 ms for 2 s of virtual time.
    let mut elapsed = Duration::ZERO;
    let mut done_at = HashMap::new();
    while elapsed < Duration::from_secs(2) {
        flood(&mut sim, 820);
        sim.run(Duration::from_millis(15));
        elapsed += Duration::from_millis(15);
        for i in [edk2, ipxe] {
            if sim.clients[i].outcome != Outcome::Running {
                done_at.entry(i).or_insert(elapsed);
            }
        }
    }
    let counts = sim.counters.snapshot();
    println!(
        "forged RRQs: {forged}; EDK2-like client: {:?} after {:?}; iPXE-like client: {:?} \
         after {:?}",
        sim.clients[edk2].outcome,
        done_at.get(&edk2),
        sim.clients[ipxe].outcome,
        done_at.get(&ipxe)
    );
    println!(
        "  pending: {}, active: {}, completed: {}",
        counts.pending, counts.active, counts.transfers_completed
    );
    for (what, n) in counts
        .requests
        .iter()
        .map(|(o, n)| (o.label(), n))
        .chain(counts.transfers_failed.iter().map(|(r, n)| (r.label(), n)))
    {
        if what.contains("busy") {
            println!("  {what}: {n}");
        }
    }
    for i in [edk2, ipxe] {
        let c = &sim.clients[i];
        assert_eq!(c.outcome, Outcome::Done, "{} under the flood", c.addr);
        assert!(c.data == c.ask.expect, "{} got different bytes", c.addr);
    }
    assert!(sim.counters.transfers_completed() >= 2);
    // The flood ends; every forged request is forgotten within the retry time.
    sim.run(Duration::from_secs(60));
    assert_eq!(sim.server.active_transfers(), 0);
    assert_eq!(sim.server.next_timeout(), None);
}

#[test]
fn a_late_error_of_a_replaced_transfer_does_not_end_the_new_one() {
    // EDK2's size probe from one client port: RRQ with tsize, OACK, ERROR 8 to abort, then
    // the real RRQ. The network delivers the real RRQ before the ERROR.
    let mut d = driver();
    let c = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 9), 1030);
    let probe = d.send(c, REQUEST_PORT, &rrq("snp.efi", &[("tsize", "0")]));
    let old_port = probe[0].meta.local_port;
    let real = d.send(
        c,
        REQUEST_PORT,
        &rrq("snp.efi", &[("blksize", "1468"), ("windowsize", "16")]),
    );
    let port = real[0].meta.local_port;
    assert!(matches!(real[0].repr(), Repr::Oack { .. }));
    let late = d.send(
        c,
        old_port,
        &error(ErrorCode::OptionNegotiation, "size probe done"),
    );
    assert!(late.is_empty(), "an ERROR is never answered: {late:?}");
    // The real transfer runs to its end.
    let body = content(200_000, 2);
    let mut got = Vec::new();
    let mut acked = 0u16;
    let mut window = d.send(c, port, &ack(0));
    while !window.is_empty() {
        for s in &window {
            assert_eq!(s.meta.local_port, port);
            let (block, _) = s.data();
            assert_eq!(
                block,
                acked.wrapping_add(1),
                "in order on a perfect network"
            );
            acked = block;
            got.extend_from_slice(&s.bytes[4..]);
        }
        window = d.send(c, port, &ack(acked));
    }
    assert!(got == body, "the real transfer delivered the file");
    assert_eq!(d.counters.transfers_completed(), 1);
}
