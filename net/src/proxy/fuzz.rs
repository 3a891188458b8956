//! The property check behind the `dhcp_proxy` fuzz target, shared with the stable test
//! that replays its corpus (`net/tests/fuzz_corpus.rs`), so both check exactly the same
//! things.
//!
//! It lives in the library, not in `fuzz/`, because the fuzz crate is built only with
//! nightly and sanitizers; a plain public function lets stable CI replay every input the
//! fuzzer ever kept.

use core::net::{Ipv4Addr, SocketAddrV4};
use std::sync::LazyLock;

use super::counters::ProxyCounters;
use super::decide::Ignored;
use super::guard::{Ipv4Subnet, check_giaddr, check_reply_source};
use super::policy::BootPolicy;
use super::service::handle_datagram;
use crate::service::{MAX_DATAGRAM, RecvMeta};
use crate::wire::dhcpv4::{MAX_LEN, MIN_REPLY_LEN};
use crate::wire::options::client_uuid;
use crate::wire::{Error, MessageType, Op, Packet, Repr};

/// The address the fuzzed server advertises (and, with selector bit 4 clear, receives on).
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
/// Another local interface address, for a multi-homed server (selector bit 4 set).
const OTHER_INTERFACE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// A client that already has an address (the 4011 exchange).
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 127);
/// A DHCP relay agent.
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 98, 1, 1);
const IFINDEX: u32 = 7;
const API_PORT: u16 = 50042;

/// Local ports, by selector bits 0-1: the DHCP port, the PXE port, and two ports a
/// ProxyDHCP server does not serve (which must be ignored).
const LOCAL_PORTS: [u16; 4] = [67, 4011, 68, API_PORT];
/// Sources, by selector bits 2-3: a client without an address, iPXE and EDK2 on 4011
/// (iPXE sends from 68, EDK2 from 4011), and a relay agent.
const SOURCES: [SocketAddrV4; 4] = [
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    SocketAddrV4::new(CLIENT, 68),
    SocketAddrV4::new(CLIENT, 4011),
    SocketAddrV4::new(RELAY, 67),
];
/// Output buffer sizes, by selector bits 6-7: a driver slot, an Ethernet MTU, the 576
/// bytes `decide` requires, and less than that (every reply must then fail cleanly).
const OUT_LENS: [usize; 4] = [MAX_DATAGRAM, 1500, 576, 300];

/// Policies by selector bit 5: the default, and one that also serves EFI IA32 (which
/// otherwise gets no reply) and knows the served link's subnet and a relay allow list
/// holding [`RELAY`], so both sides of those branches are reachable. Built once:
/// building allocates, and the fuzzer calls us millions of times.
static POLICIES: LazyLock<[BootPolicy; 2]> = LazyLock::new(|| {
    let base = BootPolicy::new(SERVER, API_PORT);
    let subnet = |a: Ipv4Addr, p| Ipv4Subnet::containing(a, p).into_iter().collect();
    let guarded = base
        .clone()
        .with_efi_ia32_file(Some("ipxe-ia32.efi".to_owned()))
        .with_local_subnets(subnet(SERVER, 24))
        .with_relay_allow(subnet(RELAY, 24));
    [base, guarded]
});

/// The receive context an input selects with its first byte.
///
/// Bits 0-1: local port ([`LOCAL_PORTS`]); bits 2-3: source ([`SOURCES`]); bit 4: local
/// address is another interface instead of the advertised one; bit 5: IA32 boot file
/// configured, with a local subnet and a relay allow list; bits 6-7: output buffer size
/// ([`OUT_LENS`]).
struct Context {
    meta: RecvMeta,
    policy: &'static BootPolicy,
    out_len: usize,
}

impl Context {
    fn from_selector(s: u8) -> Self {
        let bits = |shift: u8, mask: u8| usize::from((s >> shift) & mask);
        Context {
            meta: RecvMeta {
                src: SOURCES[bits(2, 3)],
                local_addr: if bits(4, 1) == 0 {
                    SERVER
                } else {
                    OTHER_INTERFACE
                },
                local_port: LOCAL_PORTS[bits(0, 3)],
                ifindex: IFINDEX,
            },
            policy: &POLICIES[bits(5, 1)],
            out_len: OUT_LENS[bits(6, 3)],
        }
    }
}

/// Run one fuzz input through the ProxyDHCP path and panic if any property fails.
///
/// The first byte selects the receive context (see the constants above for the bit
/// layout); the rest is the UDP payload. Checked:
/// - a message that parses emits back to the same [`Repr`] (round trip), and emit refuses
///   a buffer one byte short instead of panicking;
/// - [`handle_datagram`] never panics, answers nothing that did not parse, and counts
///   every datagram exactly once (a reply, a reason to ignore, or malformed);
/// - a reply fits the output buffer, is at least the BOOTP minimum and at most 576 bytes,
///   parses, is a BOOTREPLY of the right type for the port, and echoes the request's
///   `xid` and hardware address;
/// - a reply goes to one unicast host that passes the destination checks, or is a
///   broadcast to the client port on the arrival interface;
/// - a reply never carries option 61, carries option 82 only to a relay, and option 97
///   only as type 0 and a 16-byte UUID.
///
/// Allocation-free apart from building the policies on first use.
pub fn check_datagram(input: &[u8]) {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let ctx = Context::from_selector(selector);
    let request = Packet::new_checked(data).and_then(|p| Repr::parse(&p));
    if let Ok(request) = &request {
        check_round_trip(request, data.len());
    }

    let counters = ProxyCounters::default();
    let mut out = [0u8; MAX_DATAGRAM];
    let out = &mut out[..ctx.out_len];
    let answer = handle_datagram(data, &ctx.meta, ctx.policy, &counters, out);

    let replies = counters.replies(MessageType::Offer) + counters.replies(MessageType::Ack);
    let ignored: u64 = Ignored::ALL
        .iter()
        .map(|&r| counters.ignored_count(r))
        .sum();
    let outcomes = replies + ignored + counters.malformed_total();
    assert_eq!(outcomes, 1, "each datagram must be counted exactly once");
    assert_eq!(
        replies,
        u64::from(answer.is_some()),
        "replies counted as sent"
    );

    let Some((len, send)) = answer else {
        return;
    };
    let Ok(request) = request else {
        panic!("replied to a datagram that does not parse");
    };
    assert!(
        len <= out.len(),
        "reply of {len} bytes overruns a {}-byte buffer",
        out.len()
    );
    assert!(
        len >= MIN_REPLY_LEN,
        "reply of {len} bytes is below the BOOTP minimum"
    );
    assert_eq!(
        send.local_port, ctx.meta.local_port,
        "reply must leave from the request's port"
    );

    let reply = Packet::new_checked(&out[..len])
        .and_then(|p| Repr::parse(&p))
        .unwrap_or_else(|e| panic!("our reply does not parse: {e}"));
    assert_eq!(request.op, Op::BootRequest, "answered a BOOTREPLY");
    assert_eq!(reply.op, Op::BootReply);
    assert_eq!(reply.xid, request.xid);
    assert_eq!(
        reply.client_hardware_address,
        request.client_hardware_address
    );
    let expected = if ctx.meta.local_port == ctx.policy.ports().server {
        MessageType::Offer
    } else {
        MessageType::Ack
    };
    assert_eq!(reply.message_type, Some(expected));
    check_destination_and_echoes(&request, &reply, len, &send, &ctx);
}

/// Where a reply goes and what it carries back of the request.
fn check_destination_and_echoes(
    request: &Repr<'_>,
    reply: &Repr<'_>,
    len: usize,
    send: &crate::service::SendMeta,
    ctx: &Context,
) {
    let ports = ctx.policy.ports();
    assert!(len <= 576, "reply of {len} bytes passes 576");
    let to_relay = !request.giaddr.is_unspecified() && send.dst.port() == ports.server;
    if send.dst.ip().is_broadcast() {
        assert_eq!(send.dst.port(), ports.client, "broadcast only to clients");
        assert_eq!(
            send.ifindex,
            Some(ctx.meta.ifindex),
            "broadcast on the arrival link"
        );
    } else if to_relay {
        assert_eq!(*send.dst.ip(), request.giaddr);
        assert_eq!(
            check_giaddr(
                request.giaddr,
                &ctx.policy.local_subnets,
                &ctx.policy.relay_allow
            ),
            Ok(()),
            "reply to a refused relay {}",
            send.dst
        );
    } else {
        assert_eq!(send.dst, ctx.meta.src, "an ACK goes back to its source");
        assert_eq!(
            check_reply_source(
                send.dst,
                ctx.meta.local_addr,
                &ctx.policy.local_subnets,
                &ctx.policy.relay_allow,
                ports.client,
                ports.pxe,
            ),
            Ok(()),
            "reply to a refused source {}",
            send.dst
        );
    }
    assert_eq!(reply.client_identifier, None, "option 61 echoed");
    if !to_relay {
        assert_eq!(
            reply.relay_agent_information, None,
            "option 82 echoed to a client"
        );
    }
    if let Some(uuid) = reply.client_uuid {
        assert!(client_uuid(uuid).is_some(), "malformed option 97 echoed");
    }
}

/// Emit `request` again, parse that, and require the same [`Repr`].
fn check_round_trip(request: &Repr<'_>, received_len: usize) {
    let len = request.buffer_len();
    // Emit drops only trailing padding, so it never needs more than it was given.
    assert!(
        len <= received_len,
        "emit needs {len} bytes for a {received_len}-byte message"
    );
    let mut buf = [0u8; MAX_LEN];
    let short = request.emit(&mut Packet::new_unchecked(&mut buf[..len - 1]));
    assert!(
        matches!(short, Err(Error::BufferTooSmall { .. })),
        "emit into a short buffer: {short:?}"
    );
    request
        .emit(&mut Packet::new_unchecked(&mut buf[..len]))
        .unwrap_or_else(|e| panic!("emit of a parsed message failed: {e}"));
    let again = Packet::new_checked(&buf[..len])
        .and_then(|p| Repr::parse(&p))
        .unwrap_or_else(|e| panic!("emitted message does not parse: {e}"));
    assert_eq!(&again, request, "parse(emit(repr)) != repr");
}
