//! No DHCP reflection: where ProxyDHCP replies may go (every refused `giaddr` class, the
//! served link's subnet edges, `--dhcp-relay-allow`, the 4011 source), which request
//! bytes a reply may carry back, the counters and the log bound for refusals, and the
//! reply-to-request size ratios recorded in RELIABILITY.md.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ironboot_net::proxy::{
    BootPolicy, Ignored, Ipv4Subnet, ProxyCounters, Refusal, RefusalLog, Refused, SubnetError,
    handle_datagram_refused,
};
use ironboot_net::service::{MAX_DATAGRAM, RecvMeta, SendMeta};
use ironboot_net::wire::options::code;
use ironboot_net::wire::{MessageType, OptionWriter, Packet, Repr};

mod common;
use common::golden;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 127);
const IFINDEX: u32 = 7;
/// Filler for attacker-chosen option values: a reply must never carry it.
const FILLER: u8 = 0xa5;

fn policy() -> BootPolicy {
    BootPolicy::new(SERVER, 50042)
}

fn subnet(s: &str) -> Ipv4Subnet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn meta(port: u16, src: SocketAddrV4) -> RecvMeta {
    RecvMeta {
        src,
        local_addr: SERVER,
        local_port: port,
        ifindex: IFINDEX,
    }
}

fn on_67() -> RecvMeta {
    meta(67, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))
}

fn on_4011(src: SocketAddrV4) -> RecvMeta {
    meta(4011, src)
}

/// A synthetic PXE request: DISCOVER (1) or REQUEST (3), EDK2's architecture, and extra
/// options.
fn request(message_type: u8, giaddr: Ipv4Addr, options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    if message_type == 3 {
        b[12..16].copy_from_slice(&CLIENT.octets());
    }
    b[24..28].copy_from_slice(&giaddr.octets());
    b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0xaa, 0, 1]);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let mut opts = [0u8; 1200];
    let mut w = OptionWriter::new(&mut opts);
    w.put(code::MESSAGE_TYPE, &[message_type]).unwrap();
    w.put(code::CLIENT_ARCH, &[0, 7]).unwrap();
    for (c, d) in options {
        w.put(*c, d).unwrap();
    }
    w.end().unwrap();
    let n = w.len();
    b.extend_from_slice(&opts[..n]);
    b
}

fn discover_via(giaddr: Ipv4Addr) -> Vec<u8> {
    request(1, giaddr, &[])
}

/// One request through the service path: the reply (bytes and destination) or the
/// refusal, with the counters it touched.
struct Outcome {
    reply: Option<(Vec<u8>, SendMeta)>,
    refused: Option<Refused>,
    counters: ProxyCounters,
}

fn handle(bytes: &[u8], meta: &RecvMeta, policy: &BootPolicy) -> Outcome {
    let counters = ProxyCounters::default();
    let mut out = [0u8; MAX_DATAGRAM];
    let (answer, refused) = handle_datagram_refused(bytes, meta, policy, &counters, &mut out);
    Outcome {
        reply: answer.map(|(len, send)| (out[..len].to_vec(), send)),
        refused,
        counters,
    }
}

fn refused(bytes: &[u8], meta: &RecvMeta, policy: &BootPolicy) -> Refused {
    let o = handle(bytes, meta, policy);
    assert!(o.reply.is_none(), "expected a refusal, got a reply");
    let r = o
        .refused
        .expect("expected a refusal, got silence of another kind");
    assert_eq!(o.counters.ignored_count(Ignored::Refused(r.reason)), 1);
    assert_eq!(o.counters.dropped_total(), 1, "counted once");
    r
}

fn answered(bytes: &[u8], meta: &RecvMeta, policy: &BootPolicy) -> (Vec<u8>, SendMeta) {
    let o = handle(bytes, meta, policy);
    assert_eq!(o.refused, None);
    o.reply.expect("expected a reply")
}

fn reply_repr(bytes: &[u8]) -> Repr<'_> {
    let p = Packet::new_checked(bytes).expect("our reply passes our checks");
    Repr::parse(&p).expect("our reply parses")
}

#[test]
fn every_giaddr_that_is_not_one_unicast_host_is_refused_by_class() {
    let cases = [
        ([0, 1, 2, 3], Refusal::GiaddrThisNetwork),
        ([0, 255, 255, 255], Refusal::GiaddrThisNetwork),
        ([127, 0, 0, 1], Refusal::GiaddrLoopback),
        ([127, 255, 255, 255], Refusal::GiaddrLoopback),
        ([169, 254, 0, 1], Refusal::GiaddrLinkLocal),
        ([169, 254, 255, 255], Refusal::GiaddrLinkLocal),
        ([224, 0, 0, 1], Refusal::GiaddrMulticast),
        ([239, 255, 255, 250], Refusal::GiaddrMulticast),
        ([255, 255, 255, 255], Refusal::GiaddrBroadcast),
        ([240, 0, 0, 1], Refusal::GiaddrReserved),
        ([254, 255, 255, 255], Refusal::GiaddrReserved),
    ];
    for (octets, why) in cases {
        let giaddr = Ipv4Addr::from(octets);
        let r = refused(&discover_via(giaddr), &on_67(), &policy());
        assert_eq!(r.reason, why, "{giaddr}");
        assert_eq!(r.to, SocketAddrV4::new(giaddr, 67), "{giaddr}");
    }
    // Unicast relays, on-link or far away, are answered at their port 67 by default.
    for giaddr in [
        [10, 20, 0, 1],
        [203, 0, 113, 7],
        [1, 0, 0, 0],
        [223, 255, 255, 254],
    ] {
        let giaddr = Ipv4Addr::from(giaddr);
        let (out, send) = answered(&discover_via(giaddr), &on_67(), &policy());
        assert_eq!(send.dst, SocketAddrV4::new(giaddr, 67));
        assert_eq!(send.ifindex, None);
        assert_eq!(reply_repr(&out).message_type, Some(MessageType::Offer));
    }
}

#[test]
fn the_served_links_network_and_broadcast_addresses_are_refused() {
    let p = policy().with_local_subnets(vec![subnet("10.98.0.0/24")]);
    for edge in [Ipv4Addr::new(10, 98, 0, 0), Ipv4Addr::new(10, 98, 0, 255)] {
        assert_eq!(
            refused(&discover_via(edge), &on_67(), &p).reason,
            Refusal::GiaddrSubnetEdge,
            "giaddr {edge}"
        );
        let req = request(3, Ipv4Addr::UNSPECIFIED, &[]);
        let r = refused(&req, &on_4011(SocketAddrV4::new(edge, 68)), &p);
        assert_eq!(r.reason, Refusal::SourceNotUnicast, "source {edge}");
        assert_eq!(r.to, SocketAddrV4::new(edge, 68));
    }
    answered(&discover_via(Ipv4Addr::new(10, 98, 0, 254)), &on_67(), &p);
    answered(
        &request(3, Ipv4Addr::UNSPECIFIED, &[]),
        &on_4011(SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 1), 68)),
        &p,
    );
}

#[test]
fn the_relay_allow_list_admits_only_host_addresses_of_its_subnets() {
    let p = policy().with_relay_allow(vec![
        subnet("10.20.0.0/24"),
        subnet("10.30.0.0/16"),
        subnet("10.30.5.0/30"),
        subnet("192.0.2.8/31"),
        subnet("198.51.100.7/32"),
    ]);
    let ok = [
        [10, 20, 0, 1],
        [10, 20, 0, 254],
        [10, 30, 0, 255], // a host of the /16
        [10, 30, 5, 1],
        [192, 0, 2, 8], // both addresses of a /31 are hosts (RFC 3021)
        [192, 0, 2, 9],
        [198, 51, 100, 7],
    ];
    for giaddr in ok {
        let giaddr = Ipv4Addr::from(giaddr);
        let (_, send) = answered(&discover_via(giaddr), &on_67(), &p);
        assert_eq!(send.dst, SocketAddrV4::new(giaddr, 67));
    }
    let refusals = [
        ([10, 20, 1, 1], Refusal::GiaddrNotAllowed),
        ([10, 21, 0, 1], Refusal::GiaddrNotAllowed),
        ([198, 51, 100, 8], Refusal::GiaddrNotAllowed),
        ([203, 0, 113, 7], Refusal::GiaddrNotAllowed),
        ([10, 20, 0, 0], Refusal::GiaddrSubnetEdge),
        ([10, 20, 0, 255], Refusal::GiaddrSubnetEdge),
        ([10, 30, 255, 255], Refusal::GiaddrSubnetEdge),
        // The most specific subnet decides: the /30's broadcast, though a /16 host.
        ([10, 30, 5, 3], Refusal::GiaddrSubnetEdge),
        // The address class is checked first, whatever the list says.
        ([224, 0, 0, 5], Refusal::GiaddrMulticast),
        ([255, 255, 255, 255], Refusal::GiaddrBroadcast),
    ];
    for (giaddr, why) in refusals {
        let giaddr = Ipv4Addr::from(giaddr);
        assert_eq!(
            refused(&discover_via(giaddr), &on_67(), &p).reason,
            why,
            "{giaddr}"
        );
    }
    // Clients on the served link (no relay) are not subject to the list.
    let (_, send) = answered(&golden("edk2-x64-discover"), &on_67(), &p);
    assert_eq!(send.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!(send.ifindex, Some(IFINDEX));
    let (_, send) = answered(
        &golden("edk2-x64-proxy-request-4011"),
        &on_4011(SocketAddrV4::new(CLIENT, 4011)),
        &p,
    );
    assert_eq!(send.dst, SocketAddrV4::new(CLIENT, 4011));
}

#[test]
fn a_4011_ack_goes_back_only_to_a_unicast_source_on_a_pxe_client_port() {
    let req = golden("edk2-x64-proxy-request-4011");
    for port in [68, 4011] {
        let src = SocketAddrV4::new(CLIENT, port);
        let (out, send) = answered(&req, &on_4011(src), &policy());
        assert_eq!(send.dst, src);
        assert_eq!(reply_repr(&out).message_type, Some(MessageType::Ack));
    }
    for port in [0, 7, 19, 53, 67, 69, 123, 161, 1900, 11211, 50042] {
        let src = SocketAddrV4::new(CLIENT, port);
        let r = refused(&req, &on_4011(src), &policy());
        assert_eq!((r.reason, r.to), (Refusal::SourcePort, src), "port {port}");
    }
    for ip in [
        [255, 255, 255, 255],
        [224, 0, 0, 1],
        [239, 1, 2, 3],
        [240, 0, 0, 9],
        [0, 1, 2, 3],
        [127, 0, 0, 1],
    ] {
        let src = SocketAddrV4::new(Ipv4Addr::from(ip), 68);
        let r = refused(&req, &on_4011(src), &policy());
        assert_eq!(r.reason, Refusal::SourceNotUnicast, "{src}");
    }
    // A host on the link with a link-local address is one unicast host.
    let src = SocketAddrV4::new(Ipv4Addr::new(169, 254, 3, 4), 68);
    assert_eq!(answered(&req, &on_4011(src), &policy()).1.dst, src);
    // A loopback source is answered when the request came to a loopback address: a
    // client on this host.
    let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4011);
    let mut m = on_4011(lo);
    m.local_addr = Ipv4Addr::LOCALHOST;
    assert_eq!(answered(&req, &m, &policy()).1.dst, lo);
}

#[test]
fn option_61_is_never_echoed_as_the_captured_proxy_never_does() {
    // iPXE sends 61 and boots from dnsmasq's proxy replies, which carry none.
    for name in [
        "dnsmasq-proxy-offer-to-ipxe-rom",
        "dnsmasq-proxy-ack-to-ipxe-rom",
        "dnsmasq-proxy-ack-to-edk2",
    ] {
        let b = golden(name);
        assert_eq!(reply_repr(&b).client_identifier, None, "{name}");
    }
    let discover = golden("ipxe-rom-bios-discover");
    let p = Packet::new_checked(&discover[..]).unwrap();
    assert!(Repr::parse(&p).unwrap().client_identifier.is_some());
    let (out, _) = answered(&discover, &on_67(), &policy());
    assert_eq!(reply_repr(&out).client_identifier, None);
    let (out, _) = answered(
        &golden("ipxe-rom-bios-proxy-request-4011"),
        &on_4011(SocketAddrV4::new(CLIENT, 68)),
        &policy(),
    );
    assert_eq!(reply_repr(&out).client_identifier, None);
}

#[test]
fn option_97_is_echoed_only_in_its_defined_form() {
    let mut uuid = [FILLER; 17];
    uuid[0] = 0;
    let (out, _) = answered(
        &request(1, Ipv4Addr::UNSPECIFIED, &[(97, &uuid)]),
        &on_67(),
        &policy(),
    );
    assert_eq!(reply_repr(&out).client_uuid, Some(&uuid[..]));
    let (out, _) = answered(
        &request(3, Ipv4Addr::UNSPECIFIED, &[(97, &uuid)]),
        &on_4011(SocketAddrV4::new(CLIENT, 4011)),
        &policy(),
    );
    assert_eq!(reply_repr(&out).client_uuid, Some(&uuid[..]), "ACK too");
    let mut other_type = uuid;
    other_type[0] = 1;
    for bad in [&[0u8; 16][..], &[FILLER; 255][..], &other_type[..], &[][..]] {
        let (out, _) = answered(
            &request(1, Ipv4Addr::UNSPECIFIED, &[(97, bad)]),
            &on_67(),
            &policy(),
        );
        assert_eq!(reply_repr(&out).client_uuid, None, "{} bytes", bad.len());
    }
}

#[test]
fn option_82_goes_back_only_to_the_relay() {
    let info = [1u8, 4, b'p', b'o', b'r', b't', 2, 2, 0xab, 0xcd];
    let relay = Ipv4Addr::new(10, 20, 0, 1);
    let (out, send) = answered(&request(1, relay, &[(82, &info)]), &on_67(), &policy());
    assert_eq!(send.dst, SocketAddrV4::new(relay, 67));
    let r = reply_repr(&out);
    assert_eq!(r.relay_agent_information, Some(&info[..]));
    assert_eq!(r.options.iter().last().map(|o| o.code), Some(82), "82 last");
    // A client sending 82 itself (no relay) gets it back nowhere: RFC 3046 has relays
    // drop such requests; the broadcast reply would show it to the whole link.
    let (out, send) = answered(
        &request(1, Ipv4Addr::UNSPECIFIED, &[(82, &info)]),
        &on_67(),
        &policy(),
    );
    assert!(send.dst.ip().is_broadcast());
    assert_eq!(reply_repr(&out).relay_agent_information, None);
    // A 4011 ACK goes to the client itself, never through a relay that would strip 82.
    let src = SocketAddrV4::new(CLIENT, 68);
    let (out, send) = answered(&request(3, relay, &[(82, &info)]), &on_4011(src), &policy());
    assert_eq!(send.dst, src);
    assert_eq!(reply_repr(&out).relay_agent_information, None);
}

/// A request stuffed with the options an attacker controls, at their largest.
fn stuffed(message_type: u8, giaddr: Ipv4Addr) -> Vec<u8> {
    let filler = [FILLER; 255];
    let mut uuid = [FILLER; 17];
    uuid[0] = 0;
    let item = [71u8, 4, 0x80, 0, 0, 0, 255];
    request(
        message_type,
        giaddr,
        &[
            (61, &filler),
            (82, &filler),
            (97, &uuid),
            (43, &item),
            (60, b"PXEClient"),
            (250, &filler),
        ],
    )
}

/// Longest run of `FILLER` bytes in `b`.
fn filler_run(b: &[u8]) -> usize {
    b.split(|&x| x != FILLER)
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0)
}

#[test]
fn replies_carry_at_most_the_uuid_of_attacker_chosen_bytes_and_never_pass_576() {
    let cases = [
        ("DISCOVER", stuffed(1, Ipv4Addr::UNSPECIFIED), on_67()),
        (
            "4011 REQUEST",
            stuffed(3, Ipv4Addr::UNSPECIFIED),
            on_4011(SocketAddrV4::new(CLIENT, 68)),
        ),
        (
            "relayed 4011 REQUEST",
            stuffed(3, Ipv4Addr::new(10, 20, 0, 1)),
            on_4011(SocketAddrV4::new(CLIENT, 4011)),
        ),
    ];
    for (name, req, m) in cases {
        let (out, _) = answered(&req, &m, &policy());
        assert!(
            (300..=576).contains(&out.len()),
            "{name}: {} bytes",
            out.len()
        );
        assert_eq!(
            filler_run(&out),
            16,
            "{name}: only the UUID's 16 bytes come back"
        );
        let r = reply_repr(&out);
        assert_eq!(r.client_identifier, None, "{name}");
        assert_eq!(r.relay_agent_information, None, "{name}");
        assert_eq!(r.options.find(250), None, "{name}");
    }
    // To a relay, option 82 (up to 255 bytes) is the one long echo; a reply it would push
    // past 576 bytes is not sent at all.
    let o = handle(
        &stuffed(1, Ipv4Addr::new(10, 20, 0, 1)),
        &on_67(),
        &policy(),
    );
    assert!(o.reply.is_none() && o.refused.is_none());
    assert_eq!(
        o.counters.malformed_total(),
        1,
        "counted as buffer_too_small"
    );
}

/// Reply bytes over request bytes, for the RELIABILITY.md figures.
fn ratio(req: &[u8], m: &RecvMeta) -> (usize, usize) {
    let (out, _) = answered(req, m, &policy());
    (req.len(), out.len())
}

#[test]
fn amplification_stays_small_for_every_request_shape() {
    let to_68 = on_4011(SocketAddrV4::new(CLIENT, 68));
    let to_4011 = on_4011(SocketAddrV4::new(CLIENT, 4011));
    let minimal_discover = request(1, Ipv4Addr::UNSPECIFIED, &[]);
    let minimal_request = request(3, Ipv4Addr::UNSPECIFIED, &[]);
    let cases = [
        (
            "EDK2 DISCOVER (captured)",
            golden("edk2-x64-discover"),
            on_67(),
        ),
        (
            "iPXE ROM DISCOVER (captured)",
            golden("ipxe-rom-bios-discover"),
            on_67(),
        ),
        ("smallest PXE DISCOVER (53, 93)", minimal_discover, on_67()),
        (
            "DISCOVER stuffed (61/82/250 x255, 97)",
            stuffed(1, Ipv4Addr::UNSPECIFIED),
            on_67(),
        ),
        (
            "EDK2 4011 REQUEST (captured)",
            golden("edk2-x64-proxy-request-4011"),
            to_4011,
        ),
        (
            "iPXE ROM 4011 REQUEST (captured)",
            golden("ipxe-rom-bios-proxy-request-4011"),
            to_68,
        ),
        ("smallest 4011 REQUEST (53, 93)", minimal_request, to_68),
        (
            "4011 REQUEST stuffed (61/82/250 x255, 97, 43)",
            stuffed(3, Ipv4Addr::UNSPECIFIED),
            to_68,
        ),
    ];
    for (name, req, m) in cases {
        let (asked, sent) = ratio(&req, &m);
        let r = sent as f64 / asked as f64;
        println!("amplification | {name} | request {asked} B | reply {sent} B | {r:.2}");
        // The BOOTP minimum of 300 bytes and the PXE menu bound the smallest replies; no
        // request, however small, gets more than 1.3 times its size back, nor more than
        // 400 bytes.
        assert!(r <= 1.3, "{name}: {sent} / {asked}");
        assert!(sent <= 400, "{name}: {sent} bytes");
    }
}

#[test]
fn subnets_parse_and_bad_ones_are_refused_with_the_reason() {
    let s = subnet("10.20.0.0/24");
    assert_eq!((s.network(), s.prefix()), (Ipv4Addr::new(10, 20, 0, 0), 24));
    assert_eq!(s.broadcast(), Ipv4Addr::new(10, 20, 0, 255));
    assert_eq!(s.to_string(), "10.20.0.0/24");
    assert_eq!(subnet(" 0.0.0.0/0 ").prefix(), 0);
    assert_eq!(
        subnet("192.0.2.1/32").broadcast(),
        Ipv4Addr::new(192, 0, 2, 1)
    );
    assert!(matches!(
        "10.20.0.5/24".parse::<Ipv4Subnet>(),
        Err(SubnetError::HostBits { network, prefix: 24, .. }) if network == Ipv4Addr::new(10, 20, 0, 0)
    ));
    for bad in ["10.20.0.0", "10.20.0/24", "x/8", "", "/8"] {
        assert!(
            matches!(bad.parse::<Ipv4Subnet>(), Err(SubnetError::Syntax(_))),
            "{bad:?}"
        );
    }
    for bad in ["10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/x", "10.0.0.0/"] {
        assert!(
            matches!(bad.parse::<Ipv4Subnet>(), Err(SubnetError::Prefix(_))),
            "{bad:?}"
        );
    }
    for bad in [
        "224.0.0.0/4",
        "239.1.0.0/16",
        "127.0.0.0/8",
        "127.1.0.0/16",
        "0.0.0.0/8",
        "169.254.0.0/16",
        "240.0.0.0/4",
        "255.255.255.255/32",
    ] {
        assert!(
            matches!(bad.parse::<Ipv4Subnet>(), Err(SubnetError::NotUnicast(_))),
            "{bad:?}"
        );
    }
    // A subnet that merely overlaps a refused block still holds unicast hosts.
    subnet("126.0.0.0/7");
    subnet("192.0.0.0/2");
}

#[test]
fn refusals_are_logged_once_per_reason_per_interval_with_the_suppressed_count() {
    let start = Instant::now();
    let every = Duration::from_secs(10);
    let log = RefusalLog::new(start, every);
    let at = |s: u64| start + Duration::from_millis(s);
    assert_eq!(log.admit(Refusal::GiaddrBroadcast, at(0)), Some(0));
    for ms in [1, 500, 9_999] {
        assert_eq!(log.admit(Refusal::GiaddrBroadcast, at(ms)), None);
    }
    // Other reasons have their own bound.
    assert_eq!(log.admit(Refusal::SourcePort, at(5)), Some(0));
    assert_eq!(log.admit(Refusal::SourcePort, at(6)), None);
    // A time before the log's start (a clock the caller got earlier) is not a panic.
    assert_eq!(
        log.admit(Refusal::SourcePort, start - Duration::from_secs(1)),
        None
    );
    assert_eq!(log.admit(Refusal::GiaddrBroadcast, at(10_000)), Some(3));
    assert_eq!(log.admit(Refusal::GiaddrBroadcast, at(10_001)), None);
    assert_eq!(log.admit(Refusal::GiaddrBroadcast, at(25_000)), Some(1));
    assert_eq!(log.admit(Refusal::SourcePort, at(10_005)), Some(2));
}

#[test]
fn workers_sharing_one_log_get_one_line_per_interval_between_them() {
    let start = Instant::now();
    let log = RefusalLog::new(start, Duration::from_secs(10));
    let now = start + Duration::from_secs(1);
    let lines: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..10_000)
                        .filter(|_| log.admit(Refusal::GiaddrMulticast, now).is_some())
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(lines, 1);
    let later = start + Duration::from_secs(11);
    assert_eq!(log.admit(Refusal::GiaddrMulticast, later), Some(39_999));
}

#[test]
fn refusals_are_drop_reasons_of_their_own() {
    // Every refusal is a drop reason of its own, so none is counted under another's name.
    let labels: std::collections::HashSet<&str> = Ignored::ALL.iter().map(|i| i.label()).collect();
    assert_eq!(labels.len(), Ignored::ALL.len(), "labels are distinct");
    for r in Refusal::ALL {
        assert!(Ignored::ALL.contains(&Ignored::Refused(r)), "{r:?} missing");
    }
    let counters = ProxyCounters::default();
    let mut out = [0u8; MAX_DATAGRAM];
    let p = policy().with_relay_allow(vec![subnet("10.20.0.0/24")]);
    for giaddr in [[224, 0, 0, 1], [224, 0, 0, 2], [10, 21, 0, 1]] {
        let req = discover_via(Ipv4Addr::from(giaddr));
        handle_datagram_refused(&req, &on_67(), &p, &counters, &mut out);
    }
    let req = golden("edk2-x64-proxy-request-4011");
    let m = on_4011(SocketAddrV4::new(CLIENT, 53));
    handle_datagram_refused(&req, &m, &p, &counters, &mut out);
    assert_eq!(counters.dropped_total(), 4);
    let dropped = counters.snapshot().dropped;
    for (reason, n) in [
        ("giaddr_multicast", 2),
        ("giaddr_not_allowed", 1),
        ("source_port", 1),
        ("giaddr_broadcast", 0),
        ("giaddr_this_network", 0),
        ("giaddr_loopback", 0),
        ("giaddr_link_local", 0),
        ("giaddr_reserved", 0),
        ("giaddr_subnet_edge", 0),
        ("source_not_unicast", 0),
    ] {
        assert!(
            dropped.contains(&(reason, n)),
            "{reason} {n} missing from {dropped:?}"
        );
    }
}

#[test]
fn mutated_firmware_requests_never_reach_a_refused_destination() {
    use ironboot_net::proxy::fuzz::check_datagram;
    let seeds = [
        golden("ipxe-rom-bios-discover"),
        golden("edk2-x64-discover"),
        golden("snponly-efi-discover"),
        golden("ipxe-rom-bios-proxy-request-4011"),
        golden("edk2-x64-proxy-request-4011"),
        golden("snponly-efi-proxy-request-4011"),
        stuffed(1, Ipv4Addr::new(10, 98, 1, 1)),
        stuffed(3, Ipv4Addr::UNSPECIFIED),
    ];
    // Relay addresses around every boundary the checks draw.
    let giaddrs = [
        [0, 0, 0, 0],
        [0, 0, 0, 1],
        [10, 98, 0, 0],
        [10, 98, 0, 255],
        [10, 98, 1, 0],
        [10, 98, 1, 1],
        [10, 98, 1, 255],
        [10, 98, 2, 1],
        [127, 0, 0, 1],
        [169, 254, 255, 255],
        [224, 0, 0, 1],
        [240, 0, 0, 1],
        [255, 255, 255, 255],
    ];
    let mut rng = fastrand::Rng::with_seed(0x6469_6863);
    let mut input = Vec::with_capacity(2048);
    for _ in 0..20_000 {
        let seed = &seeds[rng.usize(..seeds.len())];
        input.clear();
        input.push(rng.u8(..));
        input.extend_from_slice(seed);
        input[1 + 24..1 + 28].copy_from_slice(&giaddrs[rng.usize(..giaddrs.len())]);
        for _ in 0..rng.usize(..3) {
            let at = rng.usize(1..input.len());
            input[at] = rng.u8(..);
        }
        check_datagram(&input);
    }
}

/// The service on real loopback sockets: an ACK reaches a client sending from the client
/// port, a spoofed-looking source port and a multicast relay get nothing, and both
/// refusals are counted where `/metrics` reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_service_refuses_on_real_sockets() {
    use std::sync::Arc;

    use ironboot_net::proxy::{Ports, ProxyService};
    use ironboot_net::udp::{BindSpec, BoundSockets, DriverKind, Shutdown, serve_bound};
    use tokio::net::UdpSocket;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(5);
    let client = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let stranger = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let any = |ip| BindSpec::new(SocketAddrV4::new(ip, 0));
    let sockets = BoundSockets::open(&[any(Ipv4Addr::LOCALHOST), any(Ipv4Addr::LOCALHOST)])
        .expect("binding loopback sockets");
    let [server, pxe] = <[SocketAddrV4; 2]>::try_from(sockets.local_addrs()).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let p = BootPolicy::new(Ipv4Addr::LOCALHOST, 50042).with_ports(Ports {
        server: server.port(),
        client: client_port,
        pxe: pxe.port(),
    });
    let counters = Arc::new(ProxyCounters::default());
    let service = ProxyService::new(Arc::new(p), counters.clone());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(serve_bound(
        DriverKind::Portable,
        sockets,
        service,
        shutdown.clone(),
    ));

    let request = golden("edk2-x64-proxy-request-4011");
    client.send_to(&request, pxe).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = timeout(WAIT, client.recv_from(&mut buf))
        .await
        .expect("an ACK within 5 s")
        .unwrap();
    assert_eq!(from, std::net::SocketAddr::V4(pxe));
    assert_eq!(reply_repr(&buf[..n]).message_type, Some(MessageType::Ack));

    stranger.send_to(&request, pxe).await.unwrap();
    stranger
        .send_to(&discover_via(Ipv4Addr::new(224, 0, 0, 1)), server)
        .await
        .unwrap();
    let counted = |why| counters.ignored_count(Ignored::Refused(why));
    timeout(WAIT, async {
        while counted(Refusal::SourcePort) + counted(Refusal::GiaddrMulticast) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both refusals counted within 5 s");
    // Refused requests queue nothing, so once counted nothing can still be on its way.
    assert!(
        stranger.try_recv_from(&mut buf).is_err(),
        "a refused request was answered"
    );
    assert_eq!(counters.replies(MessageType::Ack), 1);
    assert_eq!(counters.replies(MessageType::Offer), 0);

    shutdown.trigger();
    timeout(WAIT, task)
        .await
        .expect("the service stops within 5 s")
        .unwrap()
        .unwrap();
}
