//! RFC 2347 option negotiation, as clients see it: what the OACK carries for each request,
//! that it never names an option the client did not ask for, the values that fail with
//! ERROR 8, and the exchanges of real firmware (EDK2's size probe, iPXE).

mod tftp_sim;

use std::net::{Ipv4Addr, SocketAddrV4};

use ironboot_net::files::FileSet;
use ironboot_net::service::DatagramService;
use ironboot_net::tftp::{RequestOutcome, TftpConfig, TransferFailure};
use ironboot_net::wire::tftp::{ErrorCode, Opcode, Repr};
use tftp_sim::{Driver, REQUEST_PORT, ack, config, content, error, request, rrq};

const SIZE: usize = 10_000;

fn driver_with(config: TftpConfig) -> Driver {
    let mut files = FileSet::new();
    files.insert("f", content(SIZE, 1)).unwrap();
    files.insert("snp.efi", content(1_000_000, 2)).unwrap();
    files.insert("undionly.kpxe", content(70_000, 3)).unwrap();
    Driver::new(config, files)
}

fn driver() -> Driver {
    driver_with(config())
}

fn client(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, i), 1024 + u16::from(i))
}

/// Option (name, value) pairs.
type Options<'a> = Vec<(&'a str, &'a str)>;

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn oack_carries_only_requested_and_accepted_options() {
    let size = SIZE.to_string();
    // (options sent, OACK expected: None = no OACK, DATA 1 at once, first block length)
    let cases: Vec<(Options, Option<Options>, usize)> = vec![
        (vec![], None, 512),
        (
            vec![("blksize", "1024")],
            Some(vec![("blksize", "1024")]),
            1024,
        ),
        (vec![("blksize", "8")], Some(vec![("blksize", "8")]), 8),
        // Above our maximum: lowered to it (RFC 2348 lets the server answer less).
        (
            vec![("blksize", "65464")],
            Some(vec![("blksize", "1468")]),
            1468,
        ),
        (
            vec![("blksize", "99999999999")],
            Some(vec![("blksize", "1468")]),
            1468,
        ),
        // Names are case-insensitive; the OACK spells them in lower case.
        (
            vec![("BlkSize", "1432")],
            Some(vec![("blksize", "1432")]),
            1432,
        ),
        (vec![("tsize", "0")], Some(vec![("tsize", &size)]), 512),
        (vec![("TSIZE", "0")], Some(vec![("tsize", &size)]), 512),
        (vec![("timeout", "3")], Some(vec![("timeout", "3")]), 512),
        (vec![("timeout", "10")], Some(vec![("timeout", "10")]), 512),
        // Above the 10 s ceiling the option is declined, not refused: no OACK at all.
        (vec![("timeout", "255")], None, 512),
        (
            vec![("timeout", "11"), ("tsize", "0")],
            Some(vec![("tsize", &size)]),
            512,
        ),
        (
            vec![("windowsize", "4")],
            Some(vec![("windowsize", "4")]),
            512,
        ),
        (
            vec![("windowsize", "65535")],
            Some(vec![("windowsize", "64")]),
            512,
        ),
        // Unknown options are ignored; alone, they mean plain RFC 1350.
        (vec![("multicast", "")], None, 512),
        (vec![("rollover", "0")], None, 512),
        (vec![("utimeout", "500000")], None, 512),
        (
            vec![("foo", "bar"), ("blksize", "1024")],
            Some(vec![("blksize", "1024")]),
            1024,
        ),
        // The client's order is kept.
        (
            vec![("tsize", "0"), ("blksize", "1432")],
            Some(vec![("tsize", &size), ("blksize", "1432")]),
            1432,
        ),
        // The first occurrence of a repeated option counts.
        (
            vec![("blksize", "1024"), ("blksize", "512")],
            Some(vec![("blksize", "1024")]),
            1024,
        ),
        (
            vec![
                ("windowsize", "16"),
                ("timeout", "2"),
                ("multicast", ""),
                ("tsize", "0"),
                ("blksize", "1468"),
            ],
            Some(vec![
                ("windowsize", "16"),
                ("timeout", "2"),
                ("tsize", &size),
                ("blksize", "1468"),
            ]),
            1468,
        ),
    ];
    for (i, (options, expected, first_len)) in cases.iter().enumerate() {
        let mut d = driver();
        let c = client(1);
        let reply = d.send(c, REQUEST_PORT, &rrq("f", options));
        assert_eq!(reply.len(), 1, "case {i} {options:?}");
        let port = reply[0].meta.local_port;
        let first = match expected {
            None => reply[0].clone(),
            Some(expected) => {
                assert_eq!(reply[0].oack(), owned(expected), "case {i} {options:?}");
                let window = d.send(c, port, &ack(0));
                assert!(!window.is_empty());
                window[0].clone()
            }
        };
        assert_eq!(first.data(), (1, *first_len), "case {i} {options:?}");
        assert_eq!(d.counters.requests(RequestOutcome::Started), 1);
    }
}

#[test]
fn absurd_option_values_fail_negotiation_with_error_8() {
    let bad: [(&str, &str); 14] = [
        ("blksize", "7"),
        ("blksize", "0"),
        ("blksize", "abc"),
        ("blksize", ""),
        ("blksize", "-1"),
        ("blksize", " 512"),
        ("timeout", "0"),
        ("timeout", "256"),
        ("timeout", "1.5"),
        ("windowsize", "0"),
        ("windowsize", "x"),
        ("tsize", "abc"),
        ("TimeOut", "999"),
        ("WINDOWSIZE", "0"),
    ];
    for (name, value) in bad {
        let mut d = driver();
        let reply = d.send(client(1), REQUEST_PORT, &rrq("f", &[(name, value)]));
        assert_eq!(reply.len(), 1);
        let (code, message) = reply[0].error();
        assert_eq!(
            code,
            ErrorCode::OptionNegotiation,
            "{name}={value:?}: {message}"
        );
        assert_eq!(
            reply[0].meta.local_port, REQUEST_PORT,
            "refusals leave from port 69"
        );
        assert_eq!(d.counters.requests(RequestOutcome::BadOptions), 1);
        assert_eq!(d.counters.active(), 0, "no session for a refused request");
    }
}

#[test]
fn configured_maximums_bound_the_oack() {
    let cfg = TftpConfig {
        max_blksize: 512,
        max_windowsize: 8,
        ..config()
    };
    let mut d = driver_with(cfg);
    let reply = d.send(
        client(1),
        REQUEST_PORT,
        &rrq("f", &[("blksize", "1468"), ("windowsize", "64")]),
    );
    assert_eq!(
        reply[0].oack(),
        owned(&[("blksize", "512"), ("windowsize", "8")])
    );
    let window = d.send(client(1), reply[0].meta.local_port, &ack(0));
    assert_eq!(window.len(), 8);
}

#[test]
fn edk2_size_probe_then_real_download() {
    // EDK2's PXE base code first asks for the size only, aborts once it has it, then
    // downloads with its block and window sizes.
    let mut d = driver();
    let probe_port = client(5);
    let reply = d.send(
        probe_port,
        REQUEST_PORT,
        &rrq("snp.efi", &[("tsize", "0"), ("blksize", "1468")]),
    );
    assert_eq!(
        reply[0].oack(),
        owned(&[("tsize", "1000000"), ("blksize", "1468")])
    );
    let transfer_port = reply[0].meta.local_port;
    assert_ne!(transfer_port, REQUEST_PORT);
    let quiet = d.send(
        probe_port,
        transfer_port,
        &error(ErrorCode::OptionNegotiation, "User aborted"),
    );
    assert!(quiet.is_empty(), "an aborting client gets no answer");
    assert_eq!(
        d.counters.active(),
        0,
        "the probe's session is freed at once"
    );
    assert_eq!(
        d.counters
            .transfers_failed(TransferFailure::NegotiationAborted),
        1
    );
    assert_eq!(d.server.next_timeout(), None);

    // The real download, from a new port and from the probe's port (EDK2 builds differ).
    for c in [SocketAddrV4::new(*probe_port.ip(), 1500), probe_port] {
        let (oack, data) = d.fetch(
            c,
            &rrq("snp.efi", &[("blksize", "1468"), ("windowsize", "4")]),
        );
        assert_eq!(
            oack,
            Some(owned(&[("blksize", "1468"), ("windowsize", "4")]))
        );
        assert!(data == content(1_000_000, 2));
    }
    assert_eq!(d.counters.transfers_completed(), 2);
    assert_eq!(d.counters.active(), 0);
}

#[test]
fn ipxe_blksize_1432_and_tsize() {
    let mut d = driver();
    let (oack, data) = d.fetch(
        client(7),
        &rrq("undionly.kpxe", &[("blksize", "1432"), ("tsize", "0")]),
    );
    assert_eq!(
        oack,
        Some(owned(&[("blksize", "1432"), ("tsize", "70000")]))
    );
    assert!(data == content(70_000, 3));
}

#[test]
fn duplicate_ack_0_after_oack_does_not_resend() {
    let mut d = driver();
    let c = client(1);
    let reply = d.send(c, REQUEST_PORT, &rrq("f", &[("windowsize", "4")]));
    let port = reply[0].meta.local_port;
    assert_eq!(d.send(c, port, &ack(0)).len(), 4);
    assert!(d.send(c, port, &ack(0)).is_empty());
    // An ACK for a block not yet sent is ignored too.
    assert!(d.send(c, port, &ack(9)).is_empty());
}

#[test]
fn oack_is_retransmitted_until_ack_0() {
    let mut d = driver();
    let c = client(1);
    let reply = d.send(
        c,
        REQUEST_PORT,
        &rrq("f", &[("tsize", "0"), ("timeout", "2")]),
    );
    assert_eq!(reply[0].repr().opcode(), Opcode::Oack);
    // The client's timeout option sets the interval: nothing after 1 s, the OACK at 2 s.
    assert!(d.advance(std::time::Duration::from_secs(1)).is_empty());
    let again = d.advance(std::time::Duration::from_secs(1));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].bytes, reply[0].bytes, "the same OACK again");
    let data = d.send(c, reply[0].meta.local_port, &ack(0));
    assert!(matches!(data[0].repr(), Repr::Data { block: 1, .. }));
}

#[test]
fn request_options_round_trip_through_the_wire_writer() {
    // The requests built here are what the parser reads back.
    let bytes = request(
        Opcode::Rrq,
        "a/b.efi",
        "OCTET",
        &[("blksize", "1468"), ("tsize", "0")],
    );
    let Ok(Repr::Rrq(r)) = Repr::parse_bytes(&bytes) else {
        panic!("not an RRQ")
    };
    assert_eq!(r.filename, "a/b.efi");
    assert_eq!(r.options.get("BLKSIZE"), Some("1468"));
    assert_eq!(r.options.get("tsize"), Some("0"));
    assert_eq!(r.options.get("windowsize"), None);
}
