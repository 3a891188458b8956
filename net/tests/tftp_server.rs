//! The TFTP server's answers outside the happy path: the error table, limits, port pool and
//! single-port modes, repeated and replacing requests, netascii, and the metrics text.

mod tftp_sim;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use ironboot_net::files::FileSet;
use ironboot_net::service::DatagramService;
use ironboot_net::tftp::{
    ConfigError, RequestOutcome, TftpConfig, TftpCounters, TftpServer, TransferFailure,
};
use ironboot_net::wire::tftp::{ErrorCode, Opcode};
use tftp_sim::{
    Ask, Driver, Faults, Outcome, POOL, REQUEST_PORT, Sim, ack, config, content, error, request,
    rrq, server,
};

fn files() -> FileSet {
    let mut files = FileSet::new();
    files.insert("f", content(3000, 1)).unwrap();
    files.insert("dir/g", content(10, 2)).unwrap();
    files
}

fn client(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, i), 3000 + u16::from(i))
}

/// Raw bytes of a request with a field left unterminated or other damage.
fn raw(bytes: &[u8]) -> Vec<u8> {
    bytes.to_vec()
}

#[test]
fn refused_requests_get_the_right_error_code() {
    let cases: Vec<(&str, Vec<u8>, ErrorCode, RequestOutcome)> = vec![
        (
            "write request",
            request(Opcode::Wrq, "f", "octet", &[]),
            ErrorCode::AccessViolation,
            RequestOutcome::WriteRefused,
        ),
        (
            "missing file",
            rrq("nope.efi", &[]),
            ErrorCode::FileNotFound,
            RequestOutcome::NotFound,
        ),
        (
            "missing file in a directory",
            rrq("dir/h", &[]),
            ErrorCode::FileNotFound,
            RequestOutcome::NotFound,
        ),
        (
            "parent directory",
            rrq("../etc/passwd", &[]),
            ErrorCode::AccessViolation,
            RequestOutcome::RefusedName,
        ),
        (
            "absolute escape",
            rrq("/../../etc/shadow", &[]),
            ErrorCode::AccessViolation,
            RequestOutcome::RefusedName,
        ),
        (
            "inner parent",
            rrq("dir/../../f", &[]),
            ErrorCode::AccessViolation,
            RequestOutcome::RefusedName,
        ),
        (
            "backslash",
            rrq("dir\\g", &[]),
            ErrorCode::AccessViolation,
            RequestOutcome::RefusedName,
        ),
        (
            "empty name",
            rrq("", &[]),
            ErrorCode::AccessViolation,
            RequestOutcome::RefusedName,
        ),
        (
            "mail mode",
            request(Opcode::Rrq, "f", "mail", &[]),
            ErrorCode::IllegalOperation,
            RequestOutcome::BadMode,
        ),
        (
            "unknown mode",
            request(Opcode::Rrq, "f", "binary", &[]),
            ErrorCode::IllegalOperation,
            RequestOutcome::BadMode,
        ),
        (
            "mode without NUL",
            raw(b"\x00\x01f\x00octet"),
            ErrorCode::IllegalOperation,
            RequestOutcome::Malformed,
        ),
        (
            "name without NUL",
            raw(b"\x00\x01ffff"),
            ErrorCode::IllegalOperation,
            RequestOutcome::Malformed,
        ),
        (
            "option without value",
            raw(b"\x00\x01f\x00octet\x00blksize\x00"),
            ErrorCode::IllegalOperation,
            RequestOutcome::Malformed,
        ),
        (
            "non-UTF-8 name",
            raw(b"\x00\x01\xff\xfe\x00octet\x00"),
            ErrorCode::IllegalOperation,
            RequestOutcome::Malformed,
        ),
        (
            "bad option value",
            rrq("f", &[("blksize", "4")]),
            ErrorCode::OptionNegotiation,
            RequestOutcome::BadOptions,
        ),
    ];
    for (what, bytes, code, outcome) in cases {
        let mut d = Driver::new(config(), files());
        let reply = d.send(client(1), REQUEST_PORT, &bytes);
        assert_eq!(reply.len(), 1, "{what}");
        assert_eq!(reply[0].error().0, code, "{what}: {:?}", reply[0].error());
        assert_eq!(reply[0].meta.dst, client(1));
        assert_eq!(reply[0].meta.local_port, REQUEST_PORT);
        assert_eq!(d.counters.requests(outcome), 1, "{what}");
        assert_eq!(d.counters.errors_sent(code), 1, "{what}");
        assert_eq!(d.counters.active(), 0, "{what}");
    }
}

#[test]
fn modes_are_case_insensitive() {
    for mode in ["octet", "OCTET", "Octet", "netascii", "NetASCII"] {
        let mut d = Driver::new(config(), files());
        let reply = d.send(
            client(1),
            REQUEST_PORT,
            &request(Opcode::Rrq, "f", mode, &[]),
        );
        assert_eq!(reply[0].data().0, 1, "{mode}");
    }
}

#[test]
fn stray_datagrams_on_the_request_port() {
    let mut d = Driver::new(config(), files());
    // An ACK or DATA for no transfer: ERROR 5.
    for bytes in [ack(1), raw(b"\x00\x03\x00\x01data")] {
        let reply = d.send(client(1), REQUEST_PORT, &bytes);
        assert_eq!(reply[0].error().0, ErrorCode::UnknownTransferId);
    }
    // An ERROR is never answered; a runt is dropped; an unknown opcode is illegal.
    assert!(
        d.send(client(1), REQUEST_PORT, &error(ErrorCode::NotDefined, "x"))
            .is_empty()
    );
    assert!(d.send(client(1), REQUEST_PORT, b"\x00").is_empty());
    let reply = d.send(client(1), REQUEST_PORT, b"\x00\x09abcd");
    assert_eq!(reply[0].error().0, ErrorCode::IllegalOperation);
    // Unusable sources and foreign ports get nothing.
    let zero_port = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 1), 0);
    assert!(d.send(zero_port, REQUEST_PORT, &rrq("f", &[])).is_empty());
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
    assert!(d.send(broadcast, REQUEST_PORT, &rrq("f", &[])).is_empty());
    assert!(d.send(client(1), 4011, &rrq("f", &[])).is_empty());
    assert_eq!(d.counters.active(), 0);
}

#[test]
fn unknown_tid_on_a_pool_port_gets_error_5_and_disturbs_nothing() {
    let mut d = Driver::new(config(), files());
    let a = client(1);
    let reply = d.send(a, REQUEST_PORT, &rrq("f", &[("blksize", "512")]));
    let port = reply[0].meta.local_port;
    assert!(POOL.contains(&port), "served from a pool port");
    // Another client (or another port of the same host) on that port.
    for intruder in [client(2), SocketAddrV4::new(*a.ip(), a.port() + 1)] {
        for bytes in [ack(0), ack(1), rrq("f", &[]), raw(b"\x00\x03\x00\x01x")] {
            let reply = d.send(intruder, port, &bytes);
            assert_eq!(reply.len(), 1);
            assert_eq!(reply[0].error().0, ErrorCode::UnknownTransferId);
            assert_eq!(reply[0].meta.dst, intruder);
        }
        // An ERROR from a stranger is not answered, and does not end A's transfer.
        assert!(
            d.send(intruder, port, &error(ErrorCode::NotDefined, "x"))
                .is_empty()
        );
    }
    // A's request is intact: A's ACK proves it receives and brings block 1.
    assert_eq!(d.counters.pending(), 1);
    let data = d.send(a, port, &ack(0));
    assert_eq!(data[0].data(), (1, 512));
    assert_eq!(d.send(a, port, &ack(1))[0].data(), (2, 512));
    // Once A acknowledged data, its packet on another pool port is foreign there too, and
    // ends nothing.
    let other = POOL.iter().copied().find(|&p| p != port).unwrap();
    assert_eq!(
        d.send(a, other, &ack(0))[0].error().0,
        ErrorCode::UnknownTransferId
    );
    assert_eq!(d.counters.active(), 1);
    assert_eq!(d.send(a, port, &ack(2))[0].data(), (3, 512));
}

#[test]
fn transfers_spread_over_the_pool_least_loaded_first() {
    let mut d = Driver::new(config(), files());
    let mut ports = Vec::new();
    for i in 0..8 {
        let reply = d.send(client(i), REQUEST_PORT, &rrq("f", &[("tsize", "0")]));
        ports.push(reply[0].meta.local_port);
    }
    for p in POOL {
        assert_eq!(ports.iter().filter(|&&x| x == p).count(), 2, "{ports:?}");
    }
    // Free two on one port; the next two go there.
    let busy = ports[0];
    for (i, &p) in ports.iter().enumerate() {
        if p == busy {
            d.send(client(i as u8), p, &error(ErrorCode::NotDefined, "bye"));
        }
    }
    for i in 8..10 {
        let reply = d.send(client(i), REQUEST_PORT, &rrq("f", &[("tsize", "0")]));
        assert_eq!(reply[0].meta.local_port, busy);
    }
    assert!(d.server.pool_load().all(|(_, n)| n == 2));
}

#[test]
fn single_port_mode_serves_everything_on_69() {
    let cfg = TftpConfig {
        single_port: true,
        ..config()
    };
    let mut d = Driver::new(cfg, files());
    let (a, b) = (client(1), client(2));
    let ra = d.send(a, REQUEST_PORT, &rrq("f", &[("blksize", "1000")]));
    let rb = d.send(b, REQUEST_PORT, &rrq("f", &[]));
    assert_eq!(ra[0].meta.local_port, REQUEST_PORT);
    assert_eq!(rb[0].meta.local_port, REQUEST_PORT);
    assert_eq!(rb[0].data(), (1, 512));
    // Interleaved, demultiplexed by client address.
    assert_eq!(d.send(a, REQUEST_PORT, &ack(0))[0].data(), (1, 1000));
    assert_eq!(d.send(b, REQUEST_PORT, &ack(1))[0].data(), (2, 512));
    assert_eq!(d.send(a, REQUEST_PORT, &ack(1))[0].data(), (2, 1000));
    // A stranger's ACK on 69 is an unknown transfer.
    assert_eq!(
        d.send(client(3), REQUEST_PORT, &ack(1))[0].error().0,
        ErrorCode::UnknownTransferId
    );
    assert_eq!(d.counters.active(), 2);
    assert_eq!(d.server.pool_load().count(), 0);
    // And whole transfers complete.
    let mut d = Driver::new(
        TftpConfig {
            single_port: true,
            ..config()
        },
        files(),
    );
    let (_, data) = d.fetch(client(4), &rrq("f", &[("windowsize", "2")]));
    assert!(data == content(3000, 1));
}

#[test]
fn single_port_mode_over_a_lossy_network() {
    let body = content(50_000, 9);
    let mut fs = FileSet::new();
    fs.insert("f", body.clone()).unwrap();
    let cfg = TftpConfig {
        single_port: true,
        retries: 40,
        ..config()
    };
    let (server, counters) = server(cfg, fs);
    let faults = Faults {
        loss: 0.05,
        dup: 0.05,
        jitter: Duration::from_millis(2),
    };
    let mut sim = Sim::new(server, counters, faults, 4);
    for i in 0..20 {
        sim.add_client(
            client(i),
            Ask::octet(
                "f",
                &[("windowsize", "8"), ("blksize", "1468")],
                body.clone(),
            ),
        );
    }
    sim.run(Duration::from_secs(3600));
    for c in &sim.clients {
        assert_eq!(c.outcome, Outcome::Done);
        assert_eq!(c.server_tid.map(|t| t.port()), Some(REQUEST_PORT));
        assert!(c.data == body);
    }
    assert_eq!(sim.counters.active(), 0);
}

#[test]
fn repeated_rrq_is_ignored_while_the_transfer_lives() {
    let mut d = Driver::new(config(), files());
    let c = client(1);
    let req = rrq("f", &[("tsize", "0")]);
    let first = d.send(c, REQUEST_PORT, &req);
    // The client retransmits its RRQ (our OACK was slow): nothing new starts.
    assert!(d.send(c, REQUEST_PORT, &req).is_empty());
    assert_eq!(d.counters.requests(RequestOutcome::Repeat), 1);
    assert_eq!(d.counters.transfers_started(), 1);
    // Our timer retransmits the OACK.
    let again = d.advance(Duration::from_secs(1));
    assert_eq!(again[0].bytes, first[0].bytes);
    // A timeout later, the same RRQ for an OACK never acknowledged: both were lost. The
    // OACK goes out again from the same port (the client may have locked onto it).
    d.now += Duration::from_millis(1500);
    let answered = d.send(c, REQUEST_PORT, &req);
    assert_eq!(answered[0].bytes, first[0].bytes);
    assert_eq!(answered[0].meta.local_port, first[0].meta.local_port);
    assert_eq!(d.counters.requests(RequestOutcome::AnsweredAgain), 1);
    assert_eq!(d.counters.transfers_started(), 1);
    assert_eq!(d.server.pending_requests(), 1);
    // Once proven, a timeout after the last progress, the same RRQ means the client
    // restarted: replaced, from another port so the old transfer's late datagrams cannot
    // reach the new one.
    let port = first[0].meta.local_port;
    assert!(!d.send(c, port, &ack(0)).is_empty());
    assert_eq!(d.counters.active(), 1);
    d.now += Duration::from_millis(1500);
    let restarted = d.send(c, REQUEST_PORT, &req);
    assert_eq!(restarted[0].oack(), first[0].oack());
    assert_ne!(restarted[0].meta.local_port, port);
    assert_eq!(d.counters.transfers_failed(TransferFailure::Replaced), 1);
    assert_eq!(d.counters.active(), 0);
    assert_eq!(d.server.pending_requests(), 1);
}

#[test]
fn a_different_rrq_from_the_same_address_replaces_the_transfer() {
    let mut d = Driver::new(config(), files());
    let c = client(1);
    let first = d.send(c, REQUEST_PORT, &rrq("f", &[("windowsize", "2")]));
    let port = first[0].meta.local_port;
    assert_eq!(d.send(c, port, &ack(0)).len(), 2);
    let second = d.send(c, REQUEST_PORT, &rrq("dir/g", &[]));
    assert_eq!(second[0].data(), (1, 10), "the new file from block 1");
    assert_ne!(second[0].meta.local_port, port, "a new TID");
    assert_eq!(d.counters.transfers_failed(TransferFailure::Replaced), 1);
    assert_eq!(
        d.counters.active(),
        0,
        "the new request waits for its first ACK"
    );
    assert_eq!(d.server.pending_requests(), 1);
    assert_eq!(d.server.transfers_of(*c.ip()), 0);
    // A late datagram of the old transfer on the old port reaches nothing.
    assert!(
        d.send(c, port, &error(ErrorCode::NotDefined, "late"))
            .is_empty()
    );
    assert_eq!(d.server.pending_requests(), 1);
    // Garbage or a write request from the client's port is refused and ends nothing.
    let mut wrq = rrq("f", &[]);
    wrq[1] = 2;
    assert_eq!(
        d.send(c, REQUEST_PORT, &wrq)[0].error().0,
        ErrorCode::AccessViolation
    );
    assert_eq!(
        d.send(c, REQUEST_PORT, &[0, 1, b'x'])[0].error().0,
        ErrorCode::IllegalOperation
    );
    assert_eq!(
        d.server.pending_requests(),
        1,
        "the live transfer survives a bad request"
    );
    assert_eq!(d.counters.transfers_failed(TransferFailure::Replaced), 1);
    // A refused but well-formed new read request ends the old transfer.
    d.send(c, REQUEST_PORT, &rrq("missing", &[]));
    assert_eq!(d.server.pending_requests(), 0);
    assert_eq!(d.counters.active(), 0);
}

#[test]
fn over_the_limits_clients_hear_busy_not_silence() {
    let cfg = TftpConfig {
        max_transfers: 3,
        max_per_client: 2,
        ..config()
    };
    let mut d = Driver::new(cfg, files());
    let host = |h: u8, p: u16| SocketAddrV4::new(Ipv4Addr::new(10, 0, 4, h), p);
    // A transfer takes a slot when its client acknowledges block 1.
    let start = |d: &mut Driver, c: SocketAddrV4| {
        let first = d.send(c, REQUEST_PORT, &rrq("f", &[]));
        assert_eq!(first[0].data().0, 1);
        let next = d.send(c, first[0].meta.local_port, &ack(1));
        assert_eq!(next[0].data().0, 2, "{c} proven");
    };
    // Per-client cap: the third transfer of one IP is refused, another IP is fine.
    start(&mut d, host(1, 1));
    start(&mut d, host(1, 2));
    let busy = d.send(host(1, 3), REQUEST_PORT, &rrq("f", &[]));
    let (code, message) = busy[0].error();
    assert_eq!(code, ErrorCode::NotDefined);
    assert!(message.contains("retry"), "{message}");
    assert_eq!(d.counters.requests(RequestOutcome::ClientBusy), 1);
    // Requests not acknowledged yet take no slot: two more wait while one slot is left.
    let waiting = d.send(host(3, 1), REQUEST_PORT, &rrq("f", &[]));
    assert_eq!(waiting[0].data().0, 1);
    assert_eq!(d.server.pending_requests(), 1);
    start(&mut d, host(2, 1));
    assert_eq!(d.counters.active(), 3);
    // Server cap.
    let busy = d.send(host(3, 2), REQUEST_PORT, &rrq("f", &[]));
    let (code, message) = busy[0].error();
    assert_eq!(code, ErrorCode::NotDefined);
    assert_eq!(message, "server busy, retry");
    assert_eq!(d.counters.requests(RequestOutcome::ServerBusy), 1);
    // The waiting request's client proves itself once the slots are gone: it hears busy.
    let late = d.send(host(3, 1), waiting[0].meta.local_port, &ack(1));
    assert_eq!(
        late[0].error(),
        (ErrorCode::NotDefined, "server busy, retry".into())
    );
    assert_eq!(d.counters.transfers_failed(TransferFailure::Busy), 1);
    assert_eq!(d.server.pending_requests(), 0);
    // A replacing request from a holder gives up its slot; its one-block file completes.
    let replaced = d.send(host(1, 2), REQUEST_PORT, &rrq("dir/g", &[]));
    assert_eq!(replaced[0].data(), (1, 10));
    assert_eq!(d.counters.active(), 2);
    d.send(host(1, 2), replaced[0].meta.local_port, &ack(1));
    assert_eq!(d.counters.transfers_completed(), 1);
    // The freed slot serves the next client.
    start(&mut d, host(3, 1));
    assert_eq!(d.counters.active(), 3);
    // Time frees everything: a window resend and four probes a second apart, then the end.
    for _ in 0..6 {
        d.advance(Duration::from_secs(1));
    }
    assert_eq!(d.counters.active(), 0);
    assert_eq!(d.server.transfers_of(Ipv4Addr::new(10, 0, 4, 1)), 0);
}

#[test]
fn netascii_is_encoded_once_and_tsize_reports_the_encoded_size() {
    let text = Bytes::from_static(b"line one\nline two\r\nbare cr\r end\n");
    let encoded: &[u8] = b"line one\r\nline two\r\0\r\nbare cr\r\0 end\r\n";
    let mut fs = FileSet::new();
    fs.insert("motd.txt", text.clone()).unwrap();
    fs.alias("alias.txt", "motd.txt").unwrap();
    let mut d = Driver::new(config(), fs);
    for (i, name) in ["motd.txt", "alias.txt", "motd.txt"]
        .into_iter()
        .enumerate()
    {
        let (oack, data) = d.fetch(
            client(i as u8),
            &request(Opcode::Rrq, name, "netascii", &[("tsize", "0")]),
        );
        assert_eq!(oack.unwrap()[0].1, encoded.len().to_string());
        assert_eq!(data, encoded);
    }
    // Octet mode still gets the original bytes.
    let (oack, data) = d.fetch(client(9), &rrq("motd.txt", &[("tsize", "0")]));
    assert_eq!(oack.unwrap()[0].1, text.len().to_string());
    assert!(data == text);

    // A longer text over a lossy network, several blocks.
    let long: Vec<u8> = (0..20_000u32)
        .map(|i| {
            if i % 37 == 0 {
                b'\n'
            } else if i % 101 == 0 {
                b'\r'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    let long_encoded = ironboot_net::tftp::netascii::encode(&long);
    let mut fs = FileSet::new();
    fs.insert("long.txt", Bytes::from(long)).unwrap();
    let (server, counters) = server(
        TftpConfig {
            retries: 40,
            ..config()
        },
        fs,
    );
    let faults = Faults {
        loss: 0.05,
        dup: 0.05,
        jitter: Duration::from_millis(1),
    };
    let mut sim = Sim::new(server, counters, faults, 8);
    let mut ask = Ask::octet(
        "long.txt",
        &[("windowsize", "4")],
        Bytes::from(long_encoded.clone()),
    );
    ask.mode = "netascii";
    sim.add_client(client(1), ask);
    sim.run(Duration::from_secs(3600));
    assert_eq!(sim.clients[0].outcome, Outcome::Done);
    assert_eq!(sim.clients[0].data, long_encoded);
}

#[test]
fn bad_configurations_are_refused() {
    let files = std::sync::Arc::new(FileSet::new());
    let counters = std::sync::Arc::new(TftpCounters::default());
    let build = |cfg: TftpConfig, pool: &[u16]| {
        TftpServer::new(cfg, files.clone(), pool, counters.clone()).map(|_| ())
    };
    assert_eq!(build(config(), &[]), Err(ConfigError::EmptyPool));
    assert_eq!(build(config(), &[69]), Err(ConfigError::BadPoolPort(69)));
    assert_eq!(
        build(config(), &[5000, 5000]),
        Err(ConfigError::BadPoolPort(5000))
    );
    let single = TftpConfig {
        single_port: true,
        ..config()
    };
    assert_eq!(build(single, &[]), Ok(()));
    let cases = [
        (
            TftpConfig {
                max_blksize: 7,
                ..config()
            },
            ConfigError::BlockSize(7),
        ),
        (
            TftpConfig {
                max_blksize: 65465,
                ..config()
            },
            ConfigError::BlockSize(65465),
        ),
        (
            TftpConfig {
                max_windowsize: 0,
                ..config()
            },
            ConfigError::WindowSize(0),
        ),
        (
            TftpConfig {
                max_windowsize: 257,
                ..config()
            },
            ConfigError::WindowSize(257),
        ),
        (
            TftpConfig {
                default_timeout: Duration::ZERO,
                ..config()
            },
            ConfigError::ZeroTimeout,
        ),
        (
            TftpConfig {
                max_transfers: 0,
                ..config()
            },
            ConfigError::ZeroLimit,
        ),
        (
            TftpConfig {
                max_per_client: 0,
                ..config()
            },
            ConfigError::ZeroLimit,
        ),
        (
            TftpConfig {
                max_pending: 0,
                ..config()
            },
            ConfigError::ZeroLimit,
        ),
    ];
    for (cfg, err) in cases {
        assert_eq!(build(cfg, &POOL), Err(err));
    }
}

#[test]
fn defaults_match_the_documented_values() {
    let d = TftpConfig::default();
    assert_eq!(d.port, 69);
    assert_eq!(d.max_blksize, 1468, "1500 - 20 - 8 - 4");
    assert_eq!(d.max_windowsize, 64);
    assert_eq!(d.default_timeout, Duration::from_secs(1));
    assert_eq!(d.retries, 5);
    assert_eq!(d.max_transfers, 8192);
    assert_eq!(d.max_per_client, 8);
    assert_eq!(d.max_pending, 2048);
    assert!(!d.single_port);
    let (server, _) = server(config(), FileSet::new());
    assert!(
        server.max_sends_per_event() >= 64,
        "a full window per event"
    );
}

#[test]
fn the_snapshot_counts_every_outcome() {
    let mut d = Driver::new(config(), files());
    d.fetch(
        client(1),
        &rrq("f", &[("blksize", "1024"), ("windowsize", "2")]),
    );
    d.send(client(2), REQUEST_PORT, &rrq("missing", &[]));
    let port = d.send(client(3), REQUEST_PORT, &rrq("f", &[]))[0]
        .meta
        .local_port;
    d.send(client(3), port, &error(ErrorCode::NotDefined, "bye"));
    let s = d.counters.snapshot();
    assert!(s.requests.contains(&(RequestOutcome::Started, 2)));
    assert!(s.requests.contains(&(RequestOutcome::NotFound, 1)));
    assert!(s.requests.contains(&(RequestOutcome::AnsweredAgain, 0)));
    assert!(s.errors_sent.contains(&("1", 1)));
    assert_eq!((s.transfers_started, s.transfers_completed), (2, 1));
    assert!(
        s.transfers_failed
            .contains(&(TransferFailure::ClientError, 1))
    );
    assert!(s.transfers_failed.contains(&(TransferFailure::Unproven, 0)));
    assert_eq!((s.active, s.pending), (0, 0));
    assert!(s.retransmissions.contains(&("probe", 0)));
    assert_eq!((s.data_packets, s.oacks, s.data_bytes), (4, 1, 3512));
    assert!(s.dropped.contains(&("send_queue_full", 0)));
    // One transfer of 3000 bytes, completed within the first duration bucket (50 ms).
    let duration = s.duration_micros;
    assert_eq!(duration.buckets[0], (Some(50_000), 1));
    assert_eq!(duration.buckets.last(), Some(&(None, 1)));
    assert_eq!(duration.count, 1);
    let size = s.size_bytes;
    assert_eq!(size.buckets[0], (Some(4096), 1));
    assert_eq!((size.sum, size.count), (3000, 1));
    // The buckets are cumulative.
    assert!(size.buckets.windows(2).all(|w| w[0].1 <= w[1].1));
}

#[test]
fn the_pending_table_is_capped_and_drops_its_oldest() {
    let cfg = TftpConfig {
        max_pending: 3,
        ..config()
    };
    let mut d = Driver::new(cfg, files());
    let ports: Vec<u16> = (1..=4)
        .map(|i| {
            d.send(client(i), REQUEST_PORT, &rrq("f", &[]))[0]
                .meta
                .local_port
        })
        .collect();
    // The fourth request pushed out the first.
    assert_eq!(d.server.pending_requests(), 3);
    assert_eq!(d.counters.pending(), 3);
    assert_eq!(
        d.counters.transfers_failed(TransferFailure::PendingEvicted),
        1
    );
    assert_eq!(
        d.send(client(1), ports[0], &ack(1))[0].error().0,
        ErrorCode::UnknownTransferId,
        "the dropped request is gone"
    );
    // The others are served; a proven transfer leaves the table, making room.
    assert_eq!(d.send(client(2), ports[1], &ack(1))[0].data().0, 2);
    assert_eq!(d.server.pending_requests(), 2);
    assert_eq!(d.server.active_transfers(), 1);
    d.send(client(5), REQUEST_PORT, &rrq("f", &[]));
    assert_eq!(d.server.pending_requests(), 3);
    assert_eq!(
        d.counters.transfers_failed(TransferFailure::PendingEvicted),
        1
    );
    // Left alone, waiting requests expire: one resend, then silence until the retries'
    // time is up.
    for _ in 0..8 {
        d.advance(Duration::from_secs(1));
    }
    assert_eq!(d.server.pending_requests(), 0);
    assert_eq!(d.counters.pending(), 0);
    assert_eq!(d.counters.transfers_failed(TransferFailure::Unproven), 3);
    let s = d.counters.snapshot();
    assert!(
        s.transfers_failed
            .contains(&(TransferFailure::PendingEvicted, 1))
    );
    assert!(s.transfers_failed.contains(&(TransferFailure::Unproven, 3)));
    assert_eq!(s.pending, 0);
}

#[test]
fn an_ack_on_the_wrong_pool_port_ends_an_unconfirmed_transfer_silently() {
    let options = [("blksize", "512"), ("windowsize", "4")];
    // While the request waits for its first ACK.
    let mut d = Driver::new(config(), files());
    let a = client(1);
    let port = d.send(a, REQUEST_PORT, &rrq("f", &options))[0]
        .meta
        .local_port;
    let other = POOL.iter().copied().find(|&p| p != port).unwrap();
    assert!(
        d.send(a, other, &ack(0)).is_empty(),
        "no reply to a sprayer"
    );
    assert_eq!(d.server.pending_requests(), 0);
    assert_eq!(d.counters.transfers_failed(TransferFailure::WrongPort), 1);
    assert_eq!(
        d.send(a, port, &ack(0))[0].error().0,
        ErrorCode::UnknownTransferId
    );
    // After a blind ACK of the OACK started the first window: no more of it goes out.
    let port = d.send(a, REQUEST_PORT, &rrq("f", &options))[0]
        .meta
        .local_port;
    assert_eq!(d.send(a, port, &ack(0)).len(), 4);
    let other = POOL.iter().copied().find(|&p| p != port).unwrap();
    assert!(d.send(a, other, &ack(0)).is_empty());
    assert_eq!(d.server.active_transfers(), 0);
    assert_eq!(d.counters.transfers_failed(TransferFailure::WrongPort), 2);
    assert!(d.advance(Duration::from_secs(1)).is_empty());
    // An ERROR on the wrong port is never taken for a spray: it ends nothing.
    let port = d.send(a, REQUEST_PORT, &rrq("f", &options))[0]
        .meta
        .local_port;
    let other = POOL.iter().copied().find(|&p| p != port).unwrap();
    assert!(
        d.send(a, other, &error(ErrorCode::NotDefined, "late"))
            .is_empty()
    );
    assert_eq!(d.server.pending_requests(), 1);
    assert_eq!(d.send(a, port, &ack(0)).len(), 4);
}

#[test]
fn the_first_window_started_by_an_ack_of_the_oack_is_only_probed() {
    let mut fs = FileSet::new();
    fs.insert("big", content(64 * 1468 * 2, 4)).unwrap();
    let mut d = Driver::new(config(), fs);
    let c = client(1);
    let port = d.send(
        c,
        REQUEST_PORT,
        &rrq("big", &[("blksize", "1468"), ("windowsize", "64")]),
    )[0]
    .meta
    .local_port;
    assert_eq!(d.send(c, port, &ack(0)).len(), 64);
    // Nothing acknowledged of it: every timeout sends block 1 and block 64 only.
    let retries = usize::from(d.server.config().retries);
    for _ in 0..retries {
        let out = d.advance(Duration::from_secs(1));
        let blocks: Vec<u16> = out.iter().map(|s| s.data().0).collect();
        assert_eq!(blocks, [1, 64]);
    }
    assert!(d.advance(Duration::from_secs(1)).is_empty());
    assert_eq!(d.counters.transfers_failed(TransferFailure::Timeout), 1);
    assert_eq!(d.counters.data_packets_sent(), (64 + 2 * retries) as u64);
    assert_eq!(d.counters.retransmissions_as_probe(), (2 * retries) as u64);
}
