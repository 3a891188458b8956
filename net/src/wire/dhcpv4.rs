//! The DHCPv4 message (RFC 2131 section 2, on BOOTP of RFC 951): a checked view and a
//! validated, borrowing representation.

use core::net::Ipv4Addr;

use super::options::{ClientArchList, Options, UserClass, check_region, code};
use super::{Error, Result};

/// The DHCP magic cookie, 99.130.83.99 (RFC 2131 section 3).
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// Length of the fixed BOOTP header plus the magic cookie: the shortest DHCP message.
pub const MIN_LEN: usize = field::OPTIONS;

/// The longest DHCP message accepted: the largest UDP payload of one standard 1500-byte
/// Ethernet frame (1500 - 20 IPv4 - 8 UDP). PXE firmware never sends more; anything longer
/// is refused instead of being half-read.
pub const MAX_LEN: usize = 1472;

/// The shortest reply we send: BOOTP's 300-byte minimum (RFC 951 and RFC 1542 2.1), which
/// old PXE ROMs still enforce.
pub const MIN_REPLY_LEN: usize = 300;

/// Byte ranges of the fixed header (RFC 2131 figure 1).
mod field {
    use core::ops::Range;
    pub(super) const OP: usize = 0;
    pub(super) const HTYPE: usize = 1;
    pub(super) const HLEN: usize = 2;
    pub(super) const HOPS: usize = 3;
    pub(super) const XID: Range<usize> = 4..8;
    pub(super) const SECS: Range<usize> = 8..10;
    pub(super) const FLAGS: Range<usize> = 10..12;
    pub(super) const CIADDR: Range<usize> = 12..16;
    pub(super) const YIADDR: Range<usize> = 16..20;
    pub(super) const SIADDR: Range<usize> = 20..24;
    pub(super) const GIADDR: Range<usize> = 24..28;
    pub(super) const CHADDR: Range<usize> = 28..44;
    pub(super) const SNAME: Range<usize> = 44..108;
    pub(super) const FILE: Range<usize> = 108..236;
    pub(super) const MAGIC: Range<usize> = 236..240;
    pub(super) const OPTIONS: usize = 240;
}

/// Offsets of the header fields, public for tests that check them against the RFC diagram.
pub mod layout {
    /// `chaddr` byte range.
    pub const CHADDR: core::ops::Range<usize> = super::field::CHADDR;
    /// `sname` byte range.
    pub const SNAME: core::ops::Range<usize> = super::field::SNAME;
    /// `file` byte range.
    pub const FILE: core::ops::Range<usize> = super::field::FILE;
    /// Where the options start (after the magic cookie).
    pub const OPTIONS: usize = super::field::OPTIONS;
}

/// The broadcast bit of `flags` (RFC 2131 figure 2).
pub const FLAG_BROADCAST: u16 = 0x8000;

/// BOOTP `op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// 1: client to server.
    BootRequest,
    /// 2: server to client.
    BootReply,
}

/// Option 53 values (RFC 2132 9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// 1
    Discover,
    /// 2
    Offer,
    /// 3
    Request,
    /// 4
    Decline,
    /// 5
    Ack,
    /// 6
    Nak,
    /// 7
    Release,
    /// 8
    Inform,
    /// Anything else.
    Unknown(u8),
}

impl From<u8> for MessageType {
    fn from(v: u8) -> Self {
        match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            other => MessageType::Unknown(other),
        }
    }
}

impl From<MessageType> for u8 {
    fn from(m: MessageType) -> u8 {
        match m {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Release => 7,
            MessageType::Inform => 8,
            MessageType::Unknown(v) => v,
        }
    }
}

/// A view over the bytes of a DHCPv4 message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn ipv4_at(b: &[u8], at: core::ops::Range<usize>) -> Ipv4Addr {
    let mut o = [0u8; 4];
    if let Some(s) = b.get(at) {
        o.copy_from_slice(s);
    }
    Ipv4Addr::from(o)
}

fn nul_trimmed(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap bytes without checking them. Accessors still never panic, but may return
    /// zeros for a short buffer; use [`Packet::new_checked`] for received data.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wrap received bytes after checking length bounds, magic cookie, `hlen`, and that
    /// every option lies within the message.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        p.check()?;
        Ok(p)
    }

    /// The checks [`Packet::new_checked`] makes.
    pub fn check(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < MIN_LEN {
            return Err(Error::TooShort {
                len: b.len(),
                min: MIN_LEN,
            });
        }
        if b.len() > MAX_LEN {
            return Err(Error::TooLong {
                len: b.len(),
                max: MAX_LEN,
            });
        }
        if b[field::MAGIC] != MAGIC_COOKIE {
            return Err(Error::BadMagicCookie);
        }
        if b[field::HLEN] > 16 {
            return Err(Error::HardwareAddressTooLong {
                hlen: b[field::HLEN],
            });
        }
        check_region(&b[field::OPTIONS..], field::OPTIONS)
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn byte(&self, at: usize) -> u8 {
        self.buffer.as_ref().get(at).copied().unwrap_or(0)
    }

    fn bytes(&self, at: core::ops::Range<usize>) -> &[u8] {
        self.buffer.as_ref().get(at).unwrap_or(&[])
    }

    /// `op`, raw.
    pub fn op_raw(&self) -> u8 {
        self.byte(field::OP)
    }

    /// `htype`: hardware address type (1 = Ethernet).
    pub fn htype(&self) -> u8 {
        self.byte(field::HTYPE)
    }

    /// `hlen`: hardware address length.
    pub fn hlen(&self) -> u8 {
        self.byte(field::HLEN)
    }

    /// `hops`.
    pub fn hops(&self) -> u8 {
        self.byte(field::HOPS)
    }

    /// `xid`: transaction ID.
    pub fn xid(&self) -> u32 {
        let mut o = [0u8; 4];
        o.copy_from_slice(self.bytes(field::XID).get(..4).unwrap_or(&[0; 4]));
        u32::from_be_bytes(o)
    }

    /// `secs`.
    pub fn secs(&self) -> u16 {
        let s = self.bytes(field::SECS);
        u16::from_be_bytes([
            s.first().copied().unwrap_or(0),
            s.get(1).copied().unwrap_or(0),
        ])
    }

    /// `flags`.
    pub fn flags(&self) -> u16 {
        let s = self.bytes(field::FLAGS);
        u16::from_be_bytes([
            s.first().copied().unwrap_or(0),
            s.get(1).copied().unwrap_or(0),
        ])
    }

    /// `ciaddr`: client address (set when the client already has one).
    pub fn ciaddr(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), field::CIADDR)
    }

    /// `yiaddr`: "your" address.
    pub fn yiaddr(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), field::YIADDR)
    }

    /// `siaddr`: next server (TFTP) address.
    pub fn siaddr(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), field::SIADDR)
    }

    /// `giaddr`: relay agent address.
    pub fn giaddr(&self) -> Ipv4Addr {
        ipv4_at(self.buffer.as_ref(), field::GIADDR)
    }

    /// The whole 16-byte `chaddr` field.
    pub fn chaddr_field(&self) -> &[u8] {
        self.bytes(field::CHADDR)
    }

    /// The client hardware address: the first `hlen` bytes of `chaddr` (clamped to 16).
    pub fn client_hardware_address(&self) -> &[u8] {
        let n = usize::from(self.hlen()).min(16);
        self.chaddr_field().get(..n).unwrap_or(&[])
    }

    /// The whole 64-byte `sname` field.
    pub fn sname_field(&self) -> &[u8] {
        self.bytes(field::SNAME)
    }

    /// The whole 128-byte `file` field.
    pub fn file_field(&self) -> &[u8] {
        self.bytes(field::FILE)
    }

    /// The option region after the magic cookie.
    pub fn options(&self) -> Options<'_> {
        Options::new_unchecked(self.buffer.as_ref().get(field::OPTIONS..).unwrap_or(&[]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put(&mut self, at: core::ops::Range<usize>, v: &[u8]) {
        if let Some(d) = self.buffer.as_mut().get_mut(at) {
            let n = d.len().min(v.len());
            d[..n].copy_from_slice(&v[..n]);
            d[n..].fill(0);
        }
    }

    fn put_byte(&mut self, at: usize, v: u8) {
        if let Some(d) = self.buffer.as_mut().get_mut(at) {
            *d = v;
        }
    }

    /// Set `op`.
    pub fn set_op(&mut self, op: Op) {
        self.put_byte(
            field::OP,
            match op {
                Op::BootRequest => 1,
                Op::BootReply => 2,
            },
        );
    }

    /// Set `htype`.
    pub fn set_htype(&mut self, v: u8) {
        self.put_byte(field::HTYPE, v);
    }

    /// Set `hlen`.
    pub fn set_hlen(&mut self, v: u8) {
        self.put_byte(field::HLEN, v);
    }

    /// Set `hops`.
    pub fn set_hops(&mut self, v: u8) {
        self.put_byte(field::HOPS, v);
    }

    /// Set `xid`.
    pub fn set_xid(&mut self, v: u32) {
        self.put(field::XID, &v.to_be_bytes());
    }

    /// Set `secs`.
    pub fn set_secs(&mut self, v: u16) {
        self.put(field::SECS, &v.to_be_bytes());
    }

    /// Set `flags`.
    pub fn set_flags(&mut self, v: u16) {
        self.put(field::FLAGS, &v.to_be_bytes());
    }

    /// Set `ciaddr`.
    pub fn set_ciaddr(&mut self, v: Ipv4Addr) {
        self.put(field::CIADDR, &v.octets());
    }

    /// Set `yiaddr`.
    pub fn set_yiaddr(&mut self, v: Ipv4Addr) {
        self.put(field::YIADDR, &v.octets());
    }

    /// Set `siaddr`.
    pub fn set_siaddr(&mut self, v: Ipv4Addr) {
        self.put(field::SIADDR, &v.octets());
    }

    /// Set `giaddr`.
    pub fn set_giaddr(&mut self, v: Ipv4Addr) {
        self.put(field::GIADDR, &v.octets());
    }

    /// Set `chaddr` (zero-padded to 16 bytes; longer input is cut).
    pub fn set_chaddr(&mut self, v: &[u8]) {
        self.put(field::CHADDR, v);
    }

    /// Set `sname` (NUL-padded; at most 63 bytes are kept so it stays NUL-terminated).
    pub fn set_sname(&mut self, v: &[u8]) {
        self.put(field::SNAME, v.get(..63).unwrap_or(v));
    }

    /// Set `file` (NUL-padded; at most 127 bytes are kept so it stays NUL-terminated).
    pub fn set_file(&mut self, v: &[u8]) {
        self.put(field::FILE, v.get(..127).unwrap_or(v));
    }

    /// Write the magic cookie.
    pub fn set_magic_cookie(&mut self) {
        self.put(field::MAGIC, &MAGIC_COOKIE);
    }

    /// The option region, for an [`OptionWriter`](super::OptionWriter).
    pub fn options_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::OPTIONS..)
            .unwrap_or(&mut [])
    }
}

/// A validated DHCPv4 message: the header fields and the options a PXE server looks at,
/// decoded once and borrowed from the packet.
///
/// Unknown options stay in [`Repr::options`] and are re-emitted verbatim by
/// [`Repr::emit`]. If an option appears more than once the first instance is decoded
/// (RFC 3396 concatenation is not needed by any PXE client seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr<'a> {
    /// BOOTREQUEST or BOOTREPLY.
    pub op: Op,
    /// `htype`.
    pub htype: u8,
    /// `hops`.
    pub hops: u8,
    /// `xid`.
    pub xid: u32,
    /// `secs`.
    pub secs: u16,
    /// `flags` (bit 15: broadcast).
    pub flags: u16,
    /// `ciaddr`.
    pub ciaddr: Ipv4Addr,
    /// `yiaddr`.
    pub yiaddr: Ipv4Addr,
    /// `siaddr`.
    pub siaddr: Ipv4Addr,
    /// `giaddr`.
    pub giaddr: Ipv4Addr,
    /// `chaddr[..hlen]`.
    pub client_hardware_address: &'a [u8],
    /// `sname` up to its first NUL.
    pub server_name: &'a [u8],
    /// `file` up to its first NUL.
    pub boot_file: &'a [u8],
    /// Option 53; `None` for plain BOOTP.
    pub message_type: Option<MessageType>,
    /// Option 54.
    pub server_identifier: Option<Ipv4Addr>,
    /// Option 57.
    pub max_message_size: Option<u16>,
    /// Option 55.
    pub parameter_request_list: Option<&'a [u8]>,
    /// Option 60.
    pub vendor_class_id: Option<&'a [u8]>,
    /// Option 61.
    pub client_identifier: Option<&'a [u8]>,
    /// Option 43 (PXE sub-options; see [`super::pxe`]).
    pub vendor_specific: Option<Options<'a>>,
    /// Option 77, in either encoding.
    pub user_class: Option<UserClass<'a>>,
    /// Option 82, raw (echoed to relays).
    pub relay_agent_information: Option<&'a [u8]>,
    /// Option 93.
    pub client_arch: Option<ClientArchList<'a>>,
    /// Option 94.
    pub client_ndi: Option<&'a [u8]>,
    /// Option 97, raw (echoed; see [`super::options::client_uuid`]).
    pub client_uuid: Option<&'a [u8]>,
    /// Option 175 (iPXE's encapsulated options).
    pub ipxe_encapsulated: Option<Options<'a>>,
    /// All options, in wire order.
    pub options: Options<'a>,
}

fn exact<const N: usize>(code: u8, data: &[u8]) -> Result<[u8; N]> {
    data.try_into().map_err(|_| Error::BadOptionLength {
        code,
        len: data.len(),
    })
}

impl<'a> Repr<'a> {
    /// Decode a checked packet.
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Self> {
        let op = match packet.op_raw() {
            1 => Op::BootRequest,
            2 => Op::BootReply,
            other => return Err(Error::BadOp(other)),
        };
        packet.check()?;
        let bytes: &'a [u8] = packet.buffer;
        // Trailing padding after END is not part of the options.
        let options =
            Options::new_unchecked(Options::new_unchecked(&bytes[field::OPTIONS..]).as_bytes());
        let mut repr = Repr {
            op,
            htype: packet.htype(),
            hops: packet.hops(),
            xid: packet.xid(),
            secs: packet.secs(),
            flags: packet.flags(),
            ciaddr: packet.ciaddr(),
            yiaddr: packet.yiaddr(),
            siaddr: packet.siaddr(),
            giaddr: packet.giaddr(),
            client_hardware_address: &bytes[field::CHADDR][..usize::from(packet.hlen())],
            server_name: nul_trimmed(&bytes[field::SNAME]),
            boot_file: nul_trimmed(&bytes[field::FILE]),
            message_type: None,
            server_identifier: None,
            max_message_size: None,
            parameter_request_list: None,
            vendor_class_id: None,
            client_identifier: None,
            vendor_specific: None,
            user_class: None,
            relay_agent_information: None,
            client_arch: None,
            client_ndi: None,
            client_uuid: None,
            ipxe_encapsulated: None,
            options,
        };
        for opt in options {
            let data = opt.data;
            match opt.code {
                code::MESSAGE_TYPE if repr.message_type.is_none() => {
                    let [v] = exact::<1>(opt.code, data)?;
                    repr.message_type = Some(MessageType::from(v));
                }
                code::SERVER_IDENTIFIER if repr.server_identifier.is_none() => {
                    repr.server_identifier = Some(Ipv4Addr::from(exact::<4>(opt.code, data)?));
                }
                code::MAX_MESSAGE_SIZE if repr.max_message_size.is_none() => {
                    repr.max_message_size = Some(u16::from_be_bytes(exact::<2>(opt.code, data)?));
                }
                code::PARAMETER_REQUEST_LIST => {
                    repr.parameter_request_list.get_or_insert(data);
                }
                code::VENDOR_CLASS_ID => {
                    repr.vendor_class_id.get_or_insert(data);
                }
                code::CLIENT_IDENTIFIER => {
                    repr.client_identifier.get_or_insert(data);
                }
                code::VENDOR_SPECIFIC if repr.vendor_specific.is_none() => {
                    // Option 43 is vendor-defined; only PXE clients use it in requests, and
                    // then as TLV sub-options. Anything else is kept raw in `options`.
                    repr.vendor_specific = Options::new_checked(data).ok();
                }
                code::USER_CLASS => {
                    repr.user_class.get_or_insert(UserClass::new(data));
                }
                code::RELAY_AGENT_INFORMATION => {
                    repr.relay_agent_information.get_or_insert(data);
                }
                code::CLIENT_ARCH if repr.client_arch.is_none() => {
                    repr.client_arch = Some(ClientArchList::new_checked(data)?);
                }
                code::CLIENT_NDI => {
                    repr.client_ndi.get_or_insert(data);
                }
                code::CLIENT_UUID => {
                    repr.client_uuid.get_or_insert(data);
                }
                code::IPXE_ENCAPSULATED if repr.ipxe_encapsulated.is_none() => {
                    repr.ipxe_encapsulated =
                        Some(
                            Options::new_checked(data).map_err(|_| Error::BadOptionLength {
                                code: opt.code,
                                len: data.len(),
                            })?,
                        );
                }
                _ => {}
            }
        }
        Ok(repr)
    }

    /// Length of the message [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        field::OPTIONS + self.options.as_bytes().len()
    }

    /// Write the header and the options verbatim into `packet`, which must hold
    /// [`Repr::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let available = packet.buffer.as_ref().len();
        if available < self.buffer_len() {
            return Err(Error::BufferTooSmall {
                needed: self.buffer_len(),
                available,
            });
        }
        let hlen = self.client_hardware_address.len();
        if hlen > 16 {
            return Err(Error::HardwareAddressTooLong {
                hlen: u8::try_from(hlen).unwrap_or(u8::MAX),
            });
        }
        packet.set_op(self.op);
        packet.set_htype(self.htype);
        packet.set_hlen(hlen as u8);
        packet.set_hops(self.hops);
        packet.set_xid(self.xid);
        packet.set_secs(self.secs);
        packet.set_flags(self.flags);
        packet.set_ciaddr(self.ciaddr);
        packet.set_yiaddr(self.yiaddr);
        packet.set_siaddr(self.siaddr);
        packet.set_giaddr(self.giaddr);
        packet.set_chaddr(self.client_hardware_address);
        // Verbatim, all 64/128 bytes: `set_sname`/`set_file` keep a NUL terminator for the
        // replies we compose, which would cut a received field that fills its slot.
        packet.put(field::SNAME, self.server_name);
        packet.put(field::FILE, self.boot_file);
        packet.set_magic_cookie();
        let opts = self.options.as_bytes();
        packet.options_mut()[..opts.len()].copy_from_slice(opts);
        Ok(())
    }

    /// Whether the broadcast flag is set.
    pub fn broadcast(&self) -> bool {
        self.flags & FLAG_BROADCAST != 0
    }
}
