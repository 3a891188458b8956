//! The ProxyDHCP decision: one request in, at most one reply out, from the packet alone.
//!
//! A ProxyDHCP server (PXE 2.1 specification; RFC 4578) never hands out addresses: it
//! answers PXE firmware beside the site's own DHCP server, telling it where to fetch a
//! boot program. Port 67 gets DISCOVERs and answers with a broadcast OFFER; port 4011
//! gets the client's follow-up REQUEST (boot server discovery) and answers with an ACK to
//! the sender.

use core::net::{Ipv4Addr, SocketAddrV4};

use super::guard::{self, Refusal};
use super::policy::{BootPolicy, MENU_DESCRIPTION};
use crate::service::{RecvMeta, SendMeta};
use crate::wire::dhcpv4::{FLAG_BROADCAST, MIN_REPLY_LEN};
use crate::wire::options::{ClientArch, OptionWriter, client_uuid, code};
use crate::wire::pxe::{self, DiscoveryMenu};
use crate::wire::{Error, MessageType, Op, Packet, Repr};

/// The firmware kinds we tell apart; each gets its own boot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// x86 BIOS PXE ROM.
    X86Bios,
    /// x86-64 UEFI PXE (EFI BC or EFI x86-64).
    EfiX64,
    /// 32-bit x86 UEFI PXE.
    EfiIa32,
    /// arm64 UEFI PXE or arm64 U-Boot.
    EfiArm64,
    /// x86-64 UEFI HTTP boot.
    HttpX64,
    /// 32-bit x86 UEFI HTTP boot.
    HttpIa32,
    /// arm64 UEFI or U-Boot HTTP boot.
    HttpArm64,
}

impl Firmware {
    /// Every kind, for metrics.
    pub const ALL: [Firmware; 7] = [
        Firmware::X86Bios,
        Firmware::EfiX64,
        Firmware::EfiIa32,
        Firmware::EfiArm64,
        Firmware::HttpX64,
        Firmware::HttpIa32,
        Firmware::HttpArm64,
    ];

    /// The firmware kind for an option 93 value, if we serve it.
    pub fn from_arch(arch: ClientArch) -> Option<Firmware> {
        Some(match arch {
            ClientArch::X86Bios => Firmware::X86Bios,
            ClientArch::EfiBc | ClientArch::EfiX64 => Firmware::EfiX64,
            ClientArch::EfiIa32 => Firmware::EfiIa32,
            ClientArch::EfiArm64 | ClientArch::UBootArm64 => Firmware::EfiArm64,
            ClientArch::EfiX64Http => Firmware::HttpX64,
            ClientArch::EfiIa32Http => Firmware::HttpIa32,
            ClientArch::EfiArm64Http | ClientArch::UBootArm64Http => Firmware::HttpArm64,
            _ => return None,
        })
    }

    /// Whether this is UEFI HTTP boot (answered with `HTTPClient` and a URL).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Firmware::HttpX64 | Firmware::HttpIa32 | Firmware::HttpArm64
        )
    }

    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Firmware::X86Bios => "x86_bios",
            Firmware::EfiX64 => "efi_x64",
            Firmware::EfiIa32 => "efi_ia32",
            Firmware::EfiArm64 => "efi_arm64",
            Firmware::HttpX64 => "http_x64",
            Firmware::HttpIa32 => "http_ia32",
            Firmware::HttpArm64 => "http_arm64",
        }
    }
}

/// Who is asking, as far as boot file choice goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Firmware kind.
    pub firmware: Firmware,
    /// The client is iPXE already (option 77 `iPXE` or option 175): it gets the script URL.
    pub ipxe: bool,
}

/// Why a request got no reply. Each is counted; none is logged per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// A BOOTREPLY (another server's offer or ack).
    NotBootRequest,
    /// Plain BOOTP: no option 53.
    NoMessageType,
    /// Neither option 60 `PXEClient`/`HTTPClient` nor option 93: not a network-boot client.
    NotPxeClient,
    /// A message type this port has no business with (e.g. REQUEST on 67).
    UnexpectedMessageType,
    /// A PXE client whose architectures we have no boot file for.
    UnsupportedArch,
    /// An EFI IA32 client, and no IA32 boot file is configured.
    NoIa32BootFile,
    /// Arrived on a port that is neither the DHCP nor the PXE port.
    UnexpectedPort,
    /// A DHCPREQUEST on the PXE port naming another server (option 54).
    OtherServer,
    /// A reply we would have sent, refused for where it would go (see [`Refusal`]).
    Refused(Refusal),
}

impl Ignored {
    /// Every reason, for metrics.
    pub const ALL: [Ignored; 18] = [
        Ignored::NotBootRequest,
        Ignored::NoMessageType,
        Ignored::NotPxeClient,
        Ignored::UnexpectedMessageType,
        Ignored::UnsupportedArch,
        Ignored::NoIa32BootFile,
        Ignored::UnexpectedPort,
        Ignored::OtherServer,
        Ignored::Refused(Refusal::ALL[0]),
        Ignored::Refused(Refusal::ALL[1]),
        Ignored::Refused(Refusal::ALL[2]),
        Ignored::Refused(Refusal::ALL[3]),
        Ignored::Refused(Refusal::ALL[4]),
        Ignored::Refused(Refusal::ALL[5]),
        Ignored::Refused(Refusal::ALL[6]),
        Ignored::Refused(Refusal::ALL[7]),
        Ignored::Refused(Refusal::ALL[8]),
        Ignored::Refused(Refusal::ALL[9]),
    ];

    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Ignored::NotBootRequest => "not_boot_request",
            Ignored::NoMessageType => "no_message_type",
            Ignored::NotPxeClient => "not_pxe_client",
            Ignored::UnexpectedMessageType => "unexpected_message_type",
            Ignored::UnsupportedArch => "unsupported_arch",
            Ignored::NoIa32BootFile => "no_ia32_boot_file",
            Ignored::UnexpectedPort => "unexpected_port",
            Ignored::OtherServer => "other_server",
            Ignored::Refused(why) => why.label(),
        }
    }
}

/// A reply written into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Bytes written at the start of the buffer.
    pub len: usize,
    /// Where to send it.
    pub send: SendMeta,
    /// OFFER (port 67) or ACK (port 4011).
    pub message_type: MessageType,
    /// The client it was chosen for.
    pub client: Client,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send this.
    Reply(Reply),
    /// Stay silent, for this reason.
    Ignore(Ignored),
}

/// Tell the client's firmware from its options.
///
/// A network-boot client says `PXEClient`/`HTTPClient` in option 60 or sends option 93.
/// Its architecture is the first of option 93's list that we serve; without option 93, the
/// `Arch:NNNNN` field of a PXE vendor class, else x86 BIOS (PXE 2.x ROMs predating 93).
pub fn classify(request: &Repr<'_>) -> Result<Client, Ignored> {
    let vendor = request.vendor_class_id.unwrap_or(&[]);
    let boot_vendor = vendor.starts_with(b"PXEClient") || vendor.starts_with(b"HTTPClient");
    if !boot_vendor && request.client_arch.is_none() {
        return Err(Ignored::NotPxeClient);
    }
    let firmware = match request.client_arch {
        Some(list) => list.iter().find_map(Firmware::from_arch),
        None => Firmware::from_arch(vendor_class_arch(vendor).unwrap_or(ClientArch::X86Bios)),
    }
    .ok_or(Ignored::UnsupportedArch)?;
    let ipxe = request.ipxe_encapsulated.is_some()
        || request.user_class.is_some_and(|uc| uc.contains(b"iPXE"));
    Ok(Client { firmware, ipxe })
}

/// The architecture in a vendor class like `PXEClient:Arch:00007:UNDI:003000`.
fn vendor_class_arch(vendor: &[u8]) -> Option<ClientArch> {
    let at = vendor.windows(5).position(|w| w == b"Arch:")? + 5;
    let digits = vendor.get(at..at + 5)?;
    let mut v: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(d - b'0');
    }
    u16::try_from(v).ok().map(ClientArch::from)
}

/// What to boot: a file name on our TFTP server or a URL.
fn boot_target(policy: &BootPolicy, client: Client) -> Result<&str, Ignored> {
    if client.ipxe {
        return Ok(&policy.ipxe_script_url);
    }
    Ok(match client.firmware {
        Firmware::X86Bios => &policy.bios_file,
        Firmware::EfiX64 => &policy.efi_x64_file,
        Firmware::EfiArm64 => &policy.efi_arm64_file,
        Firmware::EfiIa32 => policy
            .efi_ia32_file
            .as_deref()
            .ok_or(Ignored::NoIa32BootFile)?,
        Firmware::HttpX64 => &policy.http_x64_url,
        Firmware::HttpArm64 => &policy.http_arm64_url,
        Firmware::HttpIa32 => policy
            .http_ia32_url
            .as_deref()
            .ok_or(Ignored::NoIa32BootFile)?,
    })
}

/// Decide the reply to `request`, received as `meta` says, and write it into `out`.
///
/// `out` must hold at least 576 bytes, the message size every DHCP client accepts (RFC
/// 2131 2), and no reply is longer, whatever `out` holds; replies to real firmware stay
/// far below it (about 350 bytes). The only error is a reply that does not fit, which
/// only a long option 82 echoed to a relay can cause.
pub fn decide(
    request: &Repr<'_>,
    meta: &RecvMeta,
    policy: &BootPolicy,
    out: &mut [u8],
) -> Result<Decision, Error> {
    if request.op != Op::BootRequest {
        return Ok(Decision::Ignore(Ignored::NotBootRequest));
    }
    let Some(message_type) = request.message_type else {
        return Ok(Decision::Ignore(Ignored::NoMessageType));
    };
    let ports = policy.ports;
    let reply_type = if meta.local_port == ports.server {
        match message_type {
            MessageType::Discover => MessageType::Offer,
            _ => return Ok(Decision::Ignore(Ignored::UnexpectedMessageType)),
        }
    } else if meta.local_port == ports.pxe {
        match message_type {
            MessageType::Request | MessageType::Inform => MessageType::Ack,
            _ => return Ok(Decision::Ignore(Ignored::UnexpectedMessageType)),
        }
    } else {
        return Ok(Decision::Ignore(Ignored::UnexpectedPort));
    };
    if reply_type == MessageType::Ack
        && request
            .server_identifier
            .is_some_and(|id| id != meta.local_addr && id != policy.advertise)
    {
        return Ok(Decision::Ignore(Ignored::OtherServer));
    }
    let client = match classify(request) {
        Ok(c) => c,
        Err(why) => return Ok(Decision::Ignore(why)),
    };
    let target = match boot_target(policy, client) {
        Ok(t) => t,
        Err(why) => return Ok(Decision::Ignore(why)),
    };
    let (send, to_relay) = match destination(request, meta, policy, reply_type) {
        Ok(d) => d,
        Err(why) => return Ok(Decision::Ignore(Ignored::Refused(why))),
    };
    let content = Content {
        client,
        reply_type,
        target,
        uuid: request.client_uuid.filter(|v| client_uuid(v).is_some()),
        relay_agent_information: request.relay_agent_information.filter(|_| to_relay),
    };
    let len = write_reply(request, meta, policy, content, out)?;
    Ok(Decision::Reply(Reply {
        len,
        send,
        message_type: reply_type,
        client,
    }))
}

/// What a reply says: for whom, its type, what to boot, and the request's options it
/// carries back. Those are returned only where firmware or a relay needs them, so a reply
/// holds as few bytes chosen by the sender as it can:
///
/// - Option 97 (client UUID, RFC 4578 2.3; the PXE specification lists it, 17 bytes long,
///   in the server's replies): only in its one defined form, type 0 and a 16-byte UUID.
/// - Option 82 (relay agent information, RFC 3046 2.2): only in a reply sent to the relay,
///   which strips it before the client sees it. A client that sends option 82 itself, or
///   a reply that goes to the client directly (a 4011 ACK), gets none.
/// - Option 61 (client identifier) is never returned: the PXE firmware seen (iPXE ROM,
///   iPXE snponly, EDK2) matches replies by `xid` and `chaddr`, and boots from ProxyDHCP
///   replies without it (the dnsmasq captures in `net/tests/data`).
#[derive(Debug, Clone, Copy)]
struct Content<'a> {
    client: Client,
    reply_type: MessageType,
    target: &'a str,
    uuid: Option<&'a [u8]>,
    relay_agent_information: Option<&'a [u8]>,
}

/// Where the reply goes, and whether that is a relay; refused if it is not a place a
/// reply may go (see [`guard`]).
///
/// OFFERs to a client without an address are broadcast to port 68 whatever the broadcast
/// flag says: the client has no address to unicast to and firmware often leaves the flag
/// clear (iPXE does). Relayed requests go back to the relay's port 67. ACKs on 4011 go to
/// the request's source address and port (EDK2 sends from 4011, iPXE from 68).
fn destination(
    request: &Repr<'_>,
    meta: &RecvMeta,
    policy: &BootPolicy,
    reply_type: MessageType,
) -> Result<(SendMeta, bool), Refusal> {
    let ports = policy.ports;
    let relayed = !request.giaddr.is_unspecified();
    let (dst, to_relay) = if reply_type == MessageType::Ack && !meta.src.ip().is_unspecified() {
        guard::check_reply_source(
            meta.src,
            meta.local_addr,
            &policy.local_subnets,
            &policy.relay_allow,
            ports.client,
            ports.pxe,
        )?;
        (meta.src, false)
    } else if relayed {
        guard::check_giaddr(request.giaddr, &policy.local_subnets, &policy.relay_allow)?;
        (SocketAddrV4::new(request.giaddr, ports.server), true)
    } else {
        (SocketAddrV4::new(Ipv4Addr::BROADCAST, ports.client), false)
    };
    let send = SendMeta {
        dst,
        ifindex: (dst.ip().is_broadcast()).then_some(meta.ifindex),
        src_ip: None,
        local_port: meta.local_port,
    };
    Ok((send, to_relay))
}

/// Write the reply message; returns its length.
fn write_reply(
    request: &Repr<'_>,
    meta: &RecvMeta,
    policy: &BootPolicy,
    content: Content<'_>,
    out: &mut [u8],
) -> Result<usize, Error> {
    let Content {
        client,
        reply_type,
        target,
        ..
    } = content;
    const NEEDED: usize = 576;
    let Some(out) = out.get_mut(..NEEDED) else {
        return Err(Error::BufferTooSmall {
            needed: NEEDED,
            available: out.len(),
        });
    };
    let header = crate::wire::dhcpv4::layout::OPTIONS;
    out[..header].fill(0);
    let mut packet = Packet::new_unchecked(&mut *out);
    packet.set_op(Op::BootReply);
    packet.set_htype(request.htype);
    packet.set_hlen(request.client_hardware_address.len() as u8);
    packet.set_xid(request.xid);
    packet.set_flags(request.flags & FLAG_BROADCAST);
    if reply_type == MessageType::Ack {
        packet.set_ciaddr(request.ciaddr);
    }
    packet.set_siaddr(policy.advertise);
    packet.set_giaddr(request.giaddr);
    packet.set_chaddr(request.client_hardware_address);
    packet.set_sname(policy.tftp_server_name.as_bytes());
    packet.set_file(target.as_bytes());
    packet.set_magic_cookie();

    let mut w = OptionWriter::new(packet.options_mut());
    w.put(code::MESSAGE_TYPE, &[u8::from(reply_type)])?;
    w.put(code::SERVER_IDENTIFIER, &meta.local_addr.octets())?;
    let vendor_class: &[u8] = if client.firmware.is_http() {
        b"HTTPClient"
    } else {
        b"PXEClient"
    };
    w.put(code::VENDOR_CLASS_ID, vendor_class)?;
    if let Some(uuid) = content.uuid {
        w.put(code::CLIENT_UUID, uuid)?;
    }
    if !client.firmware.is_http() {
        match reply_type {
            MessageType::Offer => pxe::write_offer_vendor_options(
                &mut w,
                &DiscoveryMenu {
                    server: meta.local_addr,
                    description: MENU_DESCRIPTION.as_bytes(),
                    use_boot_file: client.ipxe,
                },
            )?,
            _ => {
                if let Some(item) = request
                    .vendor_specific
                    .and_then(|v| pxe::requested_boot_item(&v))
                {
                    pxe::write_ack_vendor_options(&mut w, item)?;
                }
            }
        }
    }
    w.put(code::TFTP_SERVER_NAME, policy.tftp_server_name.as_bytes())?;
    w.put(code::BOOT_FILE_NAME, target.as_bytes())?;
    if let Some(info) = content.relay_agent_information {
        w.put(code::RELAY_AGENT_INFORMATION, info)?;
    }
    w.end()?;
    let written = header + w.len();
    let len = written.max(MIN_REPLY_LEN);
    // Pad with zeros (PAD options) up to the BOOTP minimum.
    out[written..len].fill(0);
    Ok(len)
}
