//! The emulated firmware's DHCP messages (sans-IO): who a machine is, the DISCOVER and the
//! 4011 REQUEST it sends, what it reads from a reply, and the demultiplexer that hands a
//! reply to the machine waiting for it.
//!
//! Facts followed (EDK2 `NetworkPkg/UefiPxeBcDxe`, RFC 4578, PXE 2.1):
//! - options in EDK2's order: 53, 57 (1464, its packet buffer minus 8), 55 (its 35-entry
//!   list), 97 (type 0 + the SMBIOS GUID as EDK2 copies it, i.e. in `EFI_GUID` memory
//!   layout), 94 (UNDI type 1, version 3.16), 93 (arch), 60 (`PXEClient:Arch:00007:UNDI:003016`);
//! - a proxy offer has `yiaddr` 0 and `PXEClient` in option 60; with a boot menu (option 43
//!   sub-options 8/9) the client asks the listed boot server on port 4011 for the first
//!   item (sub-option 71, layer 0); without one ("BINL" offer) it asks `siaddr`, else
//!   option 54, with no item; either way the ACK's boot file (option 67, else `file`) is
//!   what it fetches, from `siaddr` (else option 54).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ironboot_net::wire::dhcpv4::{FLAG_BROADCAST, MIN_REPLY_LEN, layout};
use ironboot_net::wire::options::code;
use ironboot_net::wire::pxe::{BootItem, discovery, sub};
use ironboot_net::wire::{MessageType, Op, OptionWriter, Packet, Repr};

/// The emulated firmware kind of one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Firmware {
    /// x86-64 UEFI (EDK2/OVMF): arch 7, UNDI 3.16.
    Uefi,
    /// x86 BIOS PXE ROM: arch 0, UNDI 2.1.
    Bios,
}

impl Firmware {
    /// Option 93's value.
    pub(crate) fn arch(self) -> u16 {
        match self {
            Firmware::Uefi => 7,
            Firmware::Bios => 0,
        }
    }

    /// Option 94: interface type 1 (UNDI), major, minor.
    fn ndi(self) -> [u8; 3] {
        match self {
            Firmware::Uefi => [1, 3, 16],
            Firmware::Bios => [1, 2, 1],
        }
    }

    /// Option 60, as the firmware formats it (five-digit arch, three-digit UNDI version).
    pub(crate) fn vendor_class(self) -> String {
        let [_, major, minor] = self.ndi();
        format!(
            "PXEClient:Arch:{:05}:UNDI:{:03}{:03}",
            self.arch(),
            major,
            minor
        )
    }

    /// iPXE's `${buildarch}` for the binary this firmware chains (snponly.efi or
    /// undionly.kpxe), as sent in the `boot.ipxe` query.
    pub(crate) fn buildarch(self) -> &'static str {
        match self {
            Firmware::Uefi => "x86_64",
            Firmware::Bios => "i386",
        }
    }
}

/// EDK2's option 55 list (PxeBcBuildDhcp4Options).
const PARAMETER_REQUEST_LIST: [u8; 35] = [
    1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60, 66,
    67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
];
/// EDK2's option 57: `sizeof (EFI_PXE_BASE_CODE_PACKET) - 8`.
const MAX_MESSAGE_SIZE: u16 = 1464;
/// Where the options start (after the magic cookie).
const OPTIONS_AT: usize = layout::OPTIONS;
/// The smallest buffer the builders need.
pub(crate) const BUFFER_LEN: usize = 576;

/// One emulated machine's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Its NIC's MAC address.
    pub(crate) mac: [u8; 6],
    /// Its SMBIOS UUID, in RFC 4122 (string) byte order.
    pub(crate) uuid: [u8; 16],
    /// Its firmware.
    pub(crate) firmware: Firmware,
}

impl Identity {
    /// Machine `index` of a storm: MAC `base + index`, UUID
    /// `{tag:08x}-0000-4000-8000-{index:012x}`.
    pub(crate) fn nth(base: [u8; 6], tag: u32, index: u64, firmware: Firmware) -> Identity {
        let mut m = [0u8; 8];
        m[2..].copy_from_slice(&base);
        let mac = u64::from_be_bytes(m).wrapping_add(index) & 0xffff_ffff_ffff;
        let mut mac6 = [0u8; 6];
        mac6.copy_from_slice(&mac.to_be_bytes()[2..]);
        let mut uuid = [0u8; 16];
        uuid[..4].copy_from_slice(&tag.to_be_bytes());
        uuid[6] = 0x40;
        uuid[8] = 0x80;
        uuid[10..].copy_from_slice(&index.to_be_bytes()[2..]);
        Identity {
            mac: mac6,
            uuid,
            firmware,
        }
    }

    /// `8-4-4-4-12` lower-case hex, as iPXE's `${uuid}`.
    pub(crate) fn uuid_string(&self) -> String {
        let mut s = String::with_capacity(36);
        for (i, b) in self.uuid.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// `52-54-00-..`, as iPXE's `${mac:hexhyp}`.
    pub(crate) fn mac_hexhyp(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    }

    /// The UUID as EDK2 puts it in option 97: an `EFI_GUID` copied from memory, whose first
    /// three fields are little-endian.
    pub(crate) fn guid_bytes(&self) -> [u8; 16] {
        let u = self.uuid;
        let mut g = u;
        g[..4].copy_from_slice(&[u[3], u[2], u[1], u[0]]);
        g[4..6].copy_from_slice(&[u[5], u[4]]);
        g[6..8].copy_from_slice(&[u[7], u[6]]);
        g
    }
}

/// Write the fixed header of a client message; the options follow at [`OPTIONS_AT`].
fn header(buf: &mut [u8], id: &Identity, xid: u32, secs: u16, flags: u16, ciaddr: Ipv4Addr) {
    buf[..OPTIONS_AT].fill(0);
    let mut p = Packet::new_unchecked(&mut *buf);
    p.set_op(Op::BootRequest);
    p.set_htype(1);
    p.set_hlen(6);
    p.set_xid(xid);
    p.set_secs(secs);
    p.set_flags(flags);
    p.set_ciaddr(ciaddr);
    p.set_chaddr(&id.mac);
    p.set_magic_cookie();
}

/// The options every PXE client message carries, in EDK2's order, then `extra`, then END.
/// Returns the message length (padded to the BOOTP minimum of 300 bytes).
fn options(
    buf: &mut [u8],
    id: &Identity,
    message_type: MessageType,
    item: Option<BootItem>,
) -> Result<usize, ironboot_net::wire::Error> {
    let mut w = OptionWriter::new(&mut buf[OPTIONS_AT..]);
    w.put(code::MESSAGE_TYPE, &[u8::from(message_type)])?;
    w.put(code::MAX_MESSAGE_SIZE, &MAX_MESSAGE_SIZE.to_be_bytes())?;
    w.put(code::PARAMETER_REQUEST_LIST, &PARAMETER_REQUEST_LIST)?;
    w.put_parts(code::CLIENT_UUID, &[&[0], &id.guid_bytes()])?;
    w.put(code::CLIENT_NDI, &id.firmware.ndi())?;
    w.put(code::CLIENT_ARCH, &id.firmware.arch().to_be_bytes())?;
    w.put(code::VENDOR_CLASS_ID, id.firmware.vendor_class().as_bytes())?;
    if let Some(item) = item {
        let open = w.begin(code::VENDOR_SPECIFIC)?;
        w.put(sub::BOOT_ITEM, &item.to_bytes())?;
        w.end()?;
        w.finish(open)?;
    }
    w.end()?;
    let len = OPTIONS_AT + w.len();
    let padded = len.max(MIN_REPLY_LEN);
    buf[len..padded].fill(0);
    Ok(padded)
}

/// The DISCOVER a machine broadcasts to port 67 (broadcast flag set, no address yet).
/// `buf` must hold [`BUFFER_LEN`] bytes. Returns the message length.
pub(crate) fn discover(buf: &mut [u8], id: &Identity, xid: u32, secs: u16) -> usize {
    header(buf, id, xid, secs, FLAG_BROADCAST, Ipv4Addr::UNSPECIFIED);
    // The options are fixed and far below the buffer's size: cannot fail.
    options(buf, id, MessageType::Discover, None).unwrap_or(0)
}

/// The boot server discovery REQUEST to port 4011, from the machine's address `ciaddr`,
/// asking for `item` (none for a "BINL" offer without a menu).
pub(crate) fn request(
    buf: &mut [u8],
    id: &Identity,
    xid: u32,
    secs: u16,
    ciaddr: Ipv4Addr,
    item: Option<BootItem>,
) -> usize {
    header(buf, id, xid, secs, 0, ciaddr);
    options(buf, id, MessageType::Request, item).unwrap_or(0)
}

/// What a machine reads from a server's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) xid: u32,
    pub(crate) chaddr: [u8; 6],
    pub(crate) message_type: Option<MessageType>,
    pub(crate) yiaddr: Ipv4Addr,
    pub(crate) siaddr: Ipv4Addr,
    pub(crate) server_id: Option<Ipv4Addr>,
    /// Option 60 starts with `PXEClient`.
    pub(crate) pxe: bool,
    /// Option 67, else the `file` field; `None` when both are empty.
    pub(crate) boot_file: Option<String>,
    /// The first boot menu item (option 43 sub-option 9), if any.
    pub(crate) menu_item: Option<u16>,
    /// The first boot server (sub-option 8) of that item's type, else of any type.
    pub(crate) boot_server: Option<Ipv4Addr>,
    /// Discovery control (sub-option 6) says to use the offer's boot file.
    pub(crate) use_boot_file: bool,
    /// Sub-option 71 (an ACK's echo of the requested item).
    pub(crate) boot_item: Option<BootItem>,
}

/// Why a datagram was not a reply for a machine.
pub(crate) type NotReply = &'static str;

fn nul_trimmed(b: &[u8]) -> &[u8] {
    b.split(|&c| c == 0).next().unwrap_or(b)
}

/// Parse a server's reply (BOOTREPLY with an Ethernet `chaddr`).
pub(crate) fn parse_reply(bytes: &[u8]) -> Result<Reply, NotReply> {
    let packet = Packet::new_checked(bytes).map_err(|e| e.reason())?;
    let repr = Repr::parse(&packet).map_err(|e| e.reason())?;
    if repr.op != Op::BootReply {
        return Err("not_boot_reply");
    }
    let chaddr: [u8; 6] = repr
        .client_hardware_address
        .try_into()
        .map_err(|_| "not_ethernet")?;
    let boot_file = repr
        .options
        .find(code::BOOT_FILE_NAME)
        .map(nul_trimmed)
        .filter(|f| !f.is_empty())
        .or(Some(repr.boot_file).filter(|f| !f.is_empty()))
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let vendor = |code: u8| repr.vendor_specific.and_then(|v| v.find(code));
    let menu_item = vendor(sub::BOOT_MENU)
        .and_then(|m| m.get(..2))
        .map(|t| u16::from_be_bytes([t[0], t[1]]));
    let boot_server = vendor(sub::BOOT_SERVERS).and_then(|list| first_boot_server(list, menu_item));
    let use_boot_file = vendor(sub::DISCOVERY_CONTROL)
        .and_then(|c| c.first())
        .is_some_and(|c| c & discovery::USE_BOOT_FILE != 0);
    Ok(Reply {
        xid: repr.xid,
        chaddr,
        message_type: repr.message_type,
        yiaddr: repr.yiaddr,
        siaddr: repr.siaddr,
        server_id: repr.server_identifier,
        pxe: repr
            .vendor_class_id
            .is_some_and(|v| v.starts_with(b"PXEClient")),
        boot_file,
        menu_item,
        boot_server,
        use_boot_file,
        boot_item: vendor(sub::BOOT_ITEM).and_then(ironboot_net::wire::pxe::BootItem::parse),
    })
}

/// Sub-option 8 is a list of (type: u16, count: u8, count IPv4 addresses).
fn first_boot_server(mut list: &[u8], want: Option<u16>) -> Option<Ipv4Addr> {
    let mut any = None;
    while let [t0, t1, n, rest @ ..] = list {
        let len = usize::from(*n) * 4;
        let ips = rest.get(..len)?;
        if let Some(ip) = ips.get(..4) {
            let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            if want == Some(u16::from_be_bytes([*t0, *t1])) {
                return Some(ip);
            }
            any.get_or_insert(ip);
        }
        list = &rest[len..];
    }
    any
}

impl Reply {
    /// A proxy offer a PXE client would take: OFFER, no address, `PXEClient`.
    pub(crate) fn is_proxy_offer(&self) -> bool {
        self.message_type == Some(MessageType::Offer) && self.yiaddr.is_unspecified() && self.pxe
    }

    /// Where the client sends its 4011 REQUEST, and the item it asks for: the menu's
    /// boot server and first item, else (a "BINL" offer) `siaddr`, else option 54.
    pub(crate) fn boot_server_request(&self) -> Option<(Ipv4Addr, Option<BootItem>)> {
        let item = self.menu_item.map(|server_type| BootItem {
            server_type,
            layer: 0,
        });
        let next = (!self.siaddr.is_unspecified())
            .then_some(self.siaddr)
            .or(self.server_id);
        match item {
            Some(item) if !self.use_boot_file => {
                Some((self.boot_server.or(self.server_id).or(next)?, Some(item)))
            }
            _ => Some((next?, None)),
        }
    }

    /// The TFTP server of the boot file: `siaddr`, else option 54.
    pub(crate) fn tftp_server(&self) -> Option<Ipv4Addr> {
        (!self.siaddr.is_unspecified())
            .then_some(self.siaddr)
            .or(self.server_id)
    }
}

/// Replies are handed to the machine that waits on their `xid`, if their `chaddr` is that
/// machine's: the generator's many machines share the client port (68), as a rack's
/// machines share a broadcast domain.
#[derive(Debug)]
pub(crate) struct Demux<T> {
    waiting: HashMap<u32, ([u8; 6], T)>,
}

/// Where a reply goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a, T> {
    /// To this waiter.
    Deliver(&'a T),
    /// Nobody waits on the xid (late duplicate, another client's exchange).
    UnknownXid,
    /// Somebody waits on the xid, but for another MAC.
    WrongClient,
}

impl<T> Default for Demux<T> {
    fn default() -> Self {
        Demux {
            waiting: HashMap::new(),
        }
    }
}

impl<T> Demux<T> {
    /// Wait on `xid` for `mac`; false if the xid is taken (pick another).
    pub(crate) fn register(&mut self, xid: u32, mac: [u8; 6], waiter: T) -> bool {
        match self.waiting.entry(xid) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert((mac, waiter));
                true
            }
        }
    }

    /// Stop waiting on `xid`.
    pub(crate) fn remove(&mut self, xid: u32) {
        self.waiting.remove(&xid);
    }

    /// Where a reply with `xid` for `chaddr` goes.
    pub(crate) fn route(&self, xid: u32, chaddr: &[u8; 6]) -> Route<'_, T> {
        match self.waiting.get(&xid) {
            None => Route::UnknownXid,
            Some((mac, _)) if mac != chaddr => Route::WrongClient,
            Some((_, waiter)) => Route::Deliver(waiter),
        }
    }

    /// Exchanges in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use ironboot_net::proxy::{BootPolicy, Decision, decide};

    use ironboot_net::service::RecvMeta;

    use super::*;

    const BASE: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x00];

    fn uefi(index: u64) -> Identity {
        Identity::nth(BASE, 0x1b00_75a0, index, Firmware::Uefi)
    }

    #[test]
    fn identities_are_distinct_and_formatted_like_ipxe() {
        let a = Identity::nth(BASE, 0x1b00_75a0, 0x1_02ff, Firmware::Uefi);
        assert_eq!(a.mac, [0x52, 0x54, 0x00, 0x01, 0x02, 0xff]);
        assert_eq!(a.mac_hexhyp(), "52-54-00-01-02-ff");
        assert_eq!(a.uuid_string(), "1b0075a0-0000-4000-8000-0000000102ff");
        // EFI_GUID memory layout: the first three fields byte-swapped.
        assert_eq!(
            a.guid_bytes()[..8],
            [0xa0, 0x75, 0x00, 0x1b, 0x00, 0x00, 0x00, 0x40]
        );
        assert_eq!(a.guid_bytes()[8..], a.uuid[8..]);
        // The MAC carries into higher bytes, and wraps within 48 bits.
        let b = Identity::nth([0, 0, 0, 0, 0xff, 0xff], 0, 1, Firmware::Bios);
        assert_eq!(b.mac, [0, 0, 0, 1, 0, 0]);
        let c = Identity::nth([0xff; 6], 0, 1, Firmware::Bios);
        assert_eq!(c.mac, [0; 6]);
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let id = uefi(i);
            assert!(seen.insert((id.mac, id.uuid)), "{i}");
        }
        assert_eq!(
            Firmware::Uefi.vendor_class(),
            "PXEClient:Arch:00007:UNDI:003016"
        );
        assert_eq!(
            Firmware::Bios.vendor_class(),
            "PXEClient:Arch:00000:UNDI:002001"
        );
    }

    #[test]
    fn discover_carries_what_edk2_sends() {
        let id = uefi(7);
        let mut buf = [0xeeu8; BUFFER_LEN];
        let len = discover(&mut buf, &id, 0xdead_beef, 4);
        // 53, 57, 55 (35), 97 (17), 94, 93, 60 (32) and END after the 240-byte header:
        // above the BOOTP minimum of 300, so no padding.
        assert_eq!(len, 240 + 3 + 4 + 37 + 19 + 5 + 4 + 34 + 1);
        assert_eq!(buf[len - 1], 255);
        let packet = Packet::new_checked(&buf[..len]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr.op, Op::BootRequest);
        assert_eq!(repr.xid, 0xdead_beef);
        assert_eq!(repr.secs, 4);
        assert!(repr.broadcast());
        assert!(repr.ciaddr.is_unspecified());
        assert_eq!(repr.client_hardware_address, id.mac);
        assert_eq!(repr.message_type, Some(MessageType::Discover));
        assert_eq!(repr.max_message_size, Some(1464));
        assert_eq!(
            repr.parameter_request_list,
            Some(&PARAMETER_REQUEST_LIST[..])
        );
        assert_eq!(
            repr.vendor_class_id,
            Some(&b"PXEClient:Arch:00007:UNDI:003016"[..])
        );
        assert_eq!(repr.client_arch.unwrap().as_bytes(), [0, 7]);
        assert_eq!(repr.client_ndi, Some(&[1, 3, 16][..]));
        let uuid = ironboot_net::wire::options::client_uuid(repr.client_uuid.unwrap());
        assert_eq!(uuid, Some(id.guid_bytes()));
        assert!(repr.vendor_specific.is_none());
        // EDK2's order.
        let codes: Vec<u8> = repr.options.iter().map(|o| o.code).collect();
        assert_eq!(codes, [53, 57, 55, 97, 94, 93, 60]);

        let bios = Identity::nth(BASE, 1, 1, Firmware::Bios);
        let len = request(
            &mut buf,
            &bios,
            9,
            0,
            Ipv4Addr::new(10, 0, 0, 9),
            Some(BootItem {
                server_type: 0x8000,
                layer: 0,
            }),
        );
        let packet = Packet::new_checked(&buf[..len]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr.message_type, Some(MessageType::Request));
        assert!(!repr.broadcast());
        assert_eq!(repr.ciaddr, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(repr.client_arch.unwrap().as_bytes(), [0, 0]);
        let item = ironboot_net::wire::pxe::requested_boot_item(&repr.vendor_specific.unwrap());
        assert_eq!(
            item,
            Some(BootItem {
                server_type: 0x8000,
                layer: 0
            })
        );
    }

    /// The generator's messages through ironboot's own ProxyDHCP decision, and its
    /// replies back through the generator's parser: the whole DHCP half of a boot.
    #[test]
    fn round_trip_through_the_proxy_decision() {
        let server = Ipv4Addr::new(10, 0, 0, 1);
        let policy = BootPolicy::new(server, 50042);
        let id = uefi(3);
        let mut req = [0u8; BUFFER_LEN];
        let mut out = [0u8; 1500];
        let meta = |port: u16, src: std::net::SocketAddrV4| RecvMeta {
            src,
            local_addr: server,
            local_port: port,
            ifindex: 2,
        };
        let len = discover(&mut req, &id, 42, 0);
        let packet = Packet::new_checked(&req[..len]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        let src = "0.0.0.0:68".parse().unwrap();
        let Decision::Reply(r) = decide(&repr, &meta(67, src), &policy, &mut out).unwrap() else {
            panic!("no offer");
        };
        let offer = parse_reply(&out[..r.len]).unwrap();
        assert!(offer.is_proxy_offer(), "{offer:?}");
        assert_eq!((offer.xid, offer.chaddr), (42, id.mac));
        let (to, item) = offer.boot_server_request().unwrap();
        assert_eq!(to, server);
        let item = item.expect("ironboot's offer has a menu: the client asks for its item");

        let ciaddr = Ipv4Addr::new(10, 0, 0, 2);
        let len = request(&mut req, &id, 43, 0, ciaddr, Some(item));
        let packet = Packet::new_checked(&req[..len]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        let src = std::net::SocketAddrV4::new(ciaddr, 68);
        let Decision::Reply(r) = decide(&repr, &meta(4011, src), &policy, &mut out).unwrap() else {
            panic!("no ack");
        };
        assert_eq!(r.send.dst, src);
        let ack = parse_reply(&out[..r.len]).unwrap();
        assert_eq!(ack.message_type, Some(MessageType::Ack));
        assert_eq!(ack.boot_item, Some(item));
        assert_eq!(
            ack.boot_file.as_deref(),
            Some(ironboot_net::proxy::DEFAULT_EFI_X64_FILE)
        );
        assert_eq!(ack.tftp_server(), Some(server));
    }

    /// A hand-made reply: header fields and raw options.
    fn reply(xid: u32, mac: [u8; 6], siaddr: Ipv4Addr, file: &[u8], opts: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; OPTIONS_AT];
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_op(Op::BootReply);
        p.set_htype(1);
        p.set_hlen(6);
        p.set_xid(xid);
        p.set_siaddr(siaddr);
        p.set_chaddr(&mac);
        p.set_file(file);
        p.set_magic_cookie();
        b.extend_from_slice(opts);
        b.push(255);
        b.resize(300, 0);
        b
    }

    #[test]
    fn binl_offers_menus_and_boot_files() {
        let mac = [2, 0, 0, 0, 0, 1];
        let zero = Ipv4Addr::UNSPECIFIED;
        // A dnsmasq-style offer: PXEClient, server id, boot file, no menu.
        let opts = [
            &[53, 1, 2][..],
            &[54, 4, 10, 0, 0, 9],
            &[60, 9],
            b"PXEClient",
            &[67, 8],
            b"snp.efi\0",
        ]
        .concat();
        let r = parse_reply(&reply(5, mac, zero, b"", &opts)).unwrap();
        assert!(r.is_proxy_offer());
        assert_eq!(r.boot_file.as_deref(), Some("snp.efi"));
        assert_eq!(
            r.boot_server_request(),
            Some((Ipv4Addr::new(10, 0, 0, 9), None))
        );
        assert_eq!(r.tftp_server(), Some(Ipv4Addr::new(10, 0, 0, 9)));
        // siaddr wins over option 54; the file field when there is no option 67.
        let r = parse_reply(&reply(
            5,
            mac,
            Ipv4Addr::new(10, 0, 0, 7),
            b"f.0",
            &opts[..9],
        ))
        .unwrap();
        assert_eq!(r.boot_file.as_deref(), Some("f.0"));
        assert_eq!(r.tftp_server(), Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert!(!r.is_proxy_offer(), "no PXEClient: not a PXE offer");
        // A menu whose item's type has its own server among several.
        let vendor = [
            &[6, 1, 3][..],
            &[8, 14, 0, 1, 1, 10, 0, 0, 1, 0x80, 0x00, 1, 10, 0, 0, 2],
            &[9, 5, 0x80, 0x00, 2, b'h', b'i'],
            &[255],
        ]
        .concat();
        let opts = [
            &[53, 1, 2, 60, 9][..],
            b"PXEClient",
            &[43, vendor.len() as u8],
            &vendor,
        ]
        .concat();
        let r = parse_reply(&reply(6, mac, zero, b"", &opts)).unwrap();
        assert_eq!(r.menu_item, Some(0x8000));
        assert_eq!(
            r.boot_server_request(),
            Some((
                Ipv4Addr::new(10, 0, 0, 2),
                Some(BootItem {
                    server_type: 0x8000,
                    layer: 0
                })
            ))
        );
        assert_eq!(r.boot_file, None);
        // Discovery control "use the boot file": no item asked for.
        let opts = [&opts[..], &[]].concat();
        let mut vendor_use = vendor.clone();
        vendor_use[2] = 0x08;
        let opts2 = [
            &[53, 1, 2, 54, 4, 10, 0, 0, 9, 60, 9][..],
            b"PXEClient",
            &[43, vendor_use.len() as u8],
            &vendor_use,
        ]
        .concat();
        let r = parse_reply(&reply(6, mac, zero, b"", &opts2)).unwrap();
        assert!(r.use_boot_file);
        assert_eq!(
            r.boot_server_request(),
            Some((Ipv4Addr::new(10, 0, 0, 9), None))
        );
        assert!(parse_reply(&reply(6, mac, zero, b"", &opts)).is_ok());
        // Not replies.
        let mut req = [0u8; BUFFER_LEN];
        let len = discover(&mut req, &uefi(1), 1, 0);
        assert_eq!(parse_reply(&req[..len]), Err("not_boot_reply"));
        assert!(parse_reply(&req[..100]).is_err());
    }

    #[test]
    fn demux_by_xid_and_chaddr() {
        let mut d = Demux::default();
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        assert!(d.register(1, a, "a"));
        assert!(d.register(2, b, "b"));
        assert!(!d.register(1, b, "b again"), "an xid in use is refused");
        assert_eq!(d.len(), 2);
        assert_eq!(d.route(1, &a), Route::Deliver(&"a"));
        assert_eq!(d.route(2, &b), Route::Deliver(&"b"));
        assert_eq!(d.route(1, &b), Route::WrongClient);
        assert_eq!(d.route(3, &a), Route::UnknownXid);
        d.remove(1);
        assert_eq!(d.route(1, &a), Route::UnknownXid);
        assert!(d.register(1, b, "b2"));
        assert_eq!(d.route(1, &b), Route::Deliver(&"b2"));
    }
}
