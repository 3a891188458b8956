//! DHCPv4 options (RFC 2132 and the PXE/iPXE extensions): a borrowing iterator over a
//! validated option region and an allocation-free writer.

use super::{Error, Result};

/// Option codes this crate reads or writes.
pub mod code {
    /// Pad (RFC 2132 3.1): a single byte with no length.
    pub const PAD: u8 = 0;
    /// Vendor-specific information (RFC 2132 8.4); PXE puts its sub-options here.
    pub const VENDOR_SPECIFIC: u8 = 43;
    /// DHCP message type (RFC 2132 9.6).
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier (RFC 2132 9.7).
    pub const SERVER_IDENTIFIER: u8 = 54;
    /// Parameter request list (RFC 2132 9.8).
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    /// Maximum DHCP message size (RFC 2132 9.10).
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    /// Vendor class identifier (RFC 2132 9.13): `PXEClient:...` / `HTTPClient:...`.
    pub const VENDOR_CLASS_ID: u8 = 60;
    /// Client identifier (RFC 2132 9.14); echoed per RFC 6842.
    pub const CLIENT_IDENTIFIER: u8 = 61;
    /// TFTP server name (RFC 2132 9.4).
    pub const TFTP_SERVER_NAME: u8 = 66;
    /// Boot file name (RFC 2132 9.5).
    pub const BOOT_FILE_NAME: u8 = 67;
    /// User class (RFC 3004); iPXE sends the raw string `iPXE` instead.
    pub const USER_CLASS: u8 = 77;
    /// Relay agent information (RFC 3046); echoed to the relay.
    pub const RELAY_AGENT_INFORMATION: u8 = 82;
    /// Client system architecture (RFC 4578 2.1).
    pub const CLIENT_ARCH: u8 = 93;
    /// Client network device interface (RFC 4578 2.2).
    pub const CLIENT_NDI: u8 = 94;
    /// Client machine identifier / UUID (RFC 4578 2.3).
    pub const CLIENT_UUID: u8 = 97;
    /// iPXE encapsulated options ("Etherboot"); its presence means the client is iPXE.
    pub const IPXE_ENCAPSULATED: u8 = 175;
    /// End (RFC 2132 3.2).
    pub const END: u8 = 255;
}

/// One option: its code and its value, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpOption<'a> {
    /// Option code.
    pub code: u8,
    /// Option value (without code and length bytes).
    pub data: &'a [u8],
}

/// Walks a TLV option region once and reports its first defect.
///
/// Used by [`Packet::new_checked`](super::Packet::new_checked) so that iterating a checked
/// packet's options cannot fail. `base` is the offset of `region` in the message, for
/// error reports. The region may end without an END option (some stacks omit it); bytes
/// after END are padding and are not looked at.
pub(crate) fn check_region(region: &[u8], base: usize) -> Result<()> {
    let mut at = 0;
    while let Some(&code) = region.get(at) {
        match code {
            code::PAD => at += 1,
            code::END => return Ok(()),
            _ => {
                let Some(&len) = region.get(at + 1) else {
                    return Err(Error::TruncatedOption {
                        code,
                        offset: base + at,
                    });
                };
                let end = at + 2 + usize::from(len);
                if end > region.len() {
                    return Err(Error::TruncatedOption {
                        code,
                        offset: base + at,
                    });
                }
                at = end;
            }
        }
    }
    Ok(())
}

/// A validated option region; iterate it for [`DhcpOption`]s.
///
/// Constructed by checked views only, so its iterator never meets a truncated option; if
/// it did (a bug), it stops instead of panicking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options<'a> {
    region: &'a [u8],
}

impl<'a> Options<'a> {
    /// Validate `region` as a TLV option sequence (as found after the magic cookie, or
    /// inside option 43 / 175).
    pub fn new_checked(region: &'a [u8]) -> Result<Self> {
        check_region(region, 0)?;
        Ok(Options { region })
    }

    pub(crate) fn new_unchecked(region: &'a [u8]) -> Self {
        Options { region }
    }

    /// The raw bytes of the region, up to and including END if present (trailing padding
    /// after END is cut).
    pub fn as_bytes(&self) -> &'a [u8] {
        let mut at = 0;
        while let Some(&code) = self.region.get(at) {
            match code {
                code::PAD => at += 1,
                code::END => return &self.region[..at + 1],
                _ => {
                    let len = self.region.get(at + 1).map_or(0, |&l| usize::from(l));
                    at = (at + 2 + len).min(self.region.len());
                }
            }
        }
        self.region
    }

    /// The first option with this code.
    pub fn find(&self, code: u8) -> Option<&'a [u8]> {
        self.iter().find(|o| o.code == code).map(|o| o.data)
    }

    /// Iterate the options in order, skipping PAD, stopping at END.
    pub fn iter(&self) -> OptionsIter<'a> {
        OptionsIter {
            region: self.region,
        }
    }
}

impl<'a> IntoIterator for Options<'a> {
    type Item = DhcpOption<'a>;
    type IntoIter = OptionsIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over a validated option region.
#[derive(Debug, Clone)]
pub struct OptionsIter<'a> {
    region: &'a [u8],
}

impl<'a> Iterator for OptionsIter<'a> {
    type Item = DhcpOption<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (&code, rest) = self.region.split_first()?;
            match code {
                code::PAD => self.region = rest,
                code::END => {
                    self.region = &[];
                    return None;
                }
                _ => {
                    let (&len, rest) = rest.split_first()?;
                    let Some((data, rest)) = rest.split_at_checked(usize::from(len)) else {
                        self.region = &[];
                        return None;
                    };
                    self.region = rest;
                    return Some(DhcpOption { code, data });
                }
            }
        }
    }
}

/// Writes options into a caller-owned buffer without allocating.
///
/// Nested (encapsulated) options such as PXE's option 43 are written with
/// [`OptionWriter::begin`] / [`OptionWriter::finish`], which fill in the length afterwards.
#[derive(Debug)]
pub struct OptionWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

/// An option opened with [`OptionWriter::begin`] whose length byte is still to be set.
#[derive(Debug)]
#[must_use = "an open option must be closed with OptionWriter::finish"]
pub struct OpenOption {
    code: u8,
    length_at: usize,
}

impl<'b> OptionWriter<'b> {
    /// A writer that fills `buf` from its start.
    pub fn new(buf: &'b mut [u8]) -> Self {
        OptionWriter { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append raw bytes.
    pub fn put_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let end = self.len + bytes.len();
        let available = self.buf.len();
        let dst = self
            .buf
            .get_mut(self.len..end)
            .ok_or(Error::BufferTooSmall {
                needed: end,
                available,
            })?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Write one option (code, length, value).
    pub fn put(&mut self, code: u8, data: &[u8]) -> Result<()> {
        let len = u8::try_from(data.len()).map_err(|_| Error::OptionTooLong {
            code,
            len: data.len(),
        })?;
        self.ensure(2 + data.len())?;
        self.put_bytes(&[code, len])?;
        self.put_bytes(data)
    }

    /// Write an option whose value is the concatenation of `parts` (avoids a temporary).
    pub fn put_parts(&mut self, code: u8, parts: &[&[u8]]) -> Result<()> {
        let open = self.begin(code)?;
        for part in parts {
            self.put_bytes(part)?;
        }
        self.finish(open)
    }

    /// Start an option whose value is written next (e.g. sub-options); close it with
    /// [`OptionWriter::finish`].
    pub fn begin(&mut self, code: u8) -> Result<OpenOption> {
        self.ensure(2)?;
        let length_at = self.len + 1;
        self.put_bytes(&[code, 0])?;
        Ok(OpenOption { code, length_at })
    }

    /// Close an option opened with [`OptionWriter::begin`], setting its length.
    pub fn finish(&mut self, open: OpenOption) -> Result<()> {
        let value_len = self.len - (open.length_at + 1);
        let len = u8::try_from(value_len).map_err(|_| Error::OptionTooLong {
            code: open.code,
            len: value_len,
        })?;
        if let Some(slot) = self.buf.get_mut(open.length_at) {
            *slot = len;
        }
        Ok(())
    }

    /// Write END.
    pub fn end(&mut self) -> Result<()> {
        self.put_bytes(&[code::END])
    }

    fn ensure(&self, extra: usize) -> Result<()> {
        let needed = self.len + extra;
        if needed > self.buf.len() {
            return Err(Error::BufferTooSmall {
                needed,
                available: self.buf.len(),
            });
        }
        Ok(())
    }
}

/// IANA "Processor Architecture Types" (RFC 4578 option 93 values) that matter for boot
/// file selection; everything else is `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientArch {
    /// 0: x86 BIOS.
    X86Bios,
    /// 6: EFI IA32.
    EfiIa32,
    /// 7: EFI BC (used by x86-64 UEFI firmware, EDK2 among them).
    EfiBc,
    /// 9: EFI x86-64.
    EfiX64,
    /// 10: EFI ARM 32-bit.
    EfiArm32,
    /// 11: EFI ARM 64-bit.
    EfiArm64,
    /// 15: x86 UEFI HTTP boot.
    EfiIa32Http,
    /// 16: x64 UEFI HTTP boot.
    EfiX64Http,
    /// 19: ARM 64-bit UEFI HTTP boot.
    EfiArm64Http,
    /// 21: ARM 32-bit U-Boot.
    UBootArm32,
    /// 22: ARM 64-bit U-Boot.
    UBootArm64,
    /// 24: ARM 64-bit U-Boot HTTP boot.
    UBootArm64Http,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for ClientArch {
    fn from(v: u16) -> Self {
        match v {
            0 => ClientArch::X86Bios,
            6 => ClientArch::EfiIa32,
            7 => ClientArch::EfiBc,
            9 => ClientArch::EfiX64,
            10 => ClientArch::EfiArm32,
            11 => ClientArch::EfiArm64,
            15 => ClientArch::EfiIa32Http,
            16 => ClientArch::EfiX64Http,
            19 => ClientArch::EfiArm64Http,
            21 => ClientArch::UBootArm32,
            22 => ClientArch::UBootArm64,
            24 => ClientArch::UBootArm64Http,
            other => ClientArch::Unknown(other),
        }
    }
}

impl From<ClientArch> for u16 {
    fn from(a: ClientArch) -> u16 {
        match a {
            ClientArch::X86Bios => 0,
            ClientArch::EfiIa32 => 6,
            ClientArch::EfiBc => 7,
            ClientArch::EfiX64 => 9,
            ClientArch::EfiArm32 => 10,
            ClientArch::EfiArm64 => 11,
            ClientArch::EfiIa32Http => 15,
            ClientArch::EfiX64Http => 16,
            ClientArch::EfiArm64Http => 19,
            ClientArch::UBootArm32 => 21,
            ClientArch::UBootArm64 => 22,
            ClientArch::UBootArm64Http => 24,
            ClientArch::Unknown(v) => v,
        }
    }
}

/// Option 93: the architectures a client supports, most preferred first (RFC 4578 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientArchList<'a> {
    data: &'a [u8],
}

impl<'a> ClientArchList<'a> {
    /// Validate option 93's value: a non-empty sequence of big-endian u16.
    pub fn new_checked(data: &'a [u8]) -> Result<Self> {
        if data.is_empty() || data.len() % 2 != 0 {
            return Err(Error::BadOptionLength {
                code: code::CLIENT_ARCH,
                len: data.len(),
            });
        }
        Ok(ClientArchList { data })
    }

    /// The architectures in the order the client listed them.
    pub fn iter(&self) -> impl Iterator<Item = ClientArch> + 'a {
        self.data
            .chunks_exact(2)
            .map(|c| ClientArch::from(u16::from_be_bytes([c[0], c[1]])))
    }

    /// The raw option value.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.data
    }
}

/// Option 77 in either form: RFC 3004 (a sequence of length-prefixed class names) or the
/// raw string iPXE sends (`iPXE`, no length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserClass<'a> {
    data: &'a [u8],
}

impl<'a> UserClass<'a> {
    /// Wrap option 77's value; both forms are accepted, so this cannot fail.
    pub fn new(data: &'a [u8]) -> Self {
        UserClass { data }
    }

    /// The RFC 3004 items, if the value is well-formed in that encoding (every item
    /// non-empty and exactly filling the value).
    pub fn rfc3004_items(&self) -> Option<impl Iterator<Item = &'a [u8]> + 'a> {
        let mut at = 0;
        while at < self.data.len() {
            let len = usize::from(self.data[at]);
            if len == 0 || at + 1 + len > self.data.len() {
                return None;
            }
            at += 1 + len;
        }
        if self.data.is_empty() {
            return None;
        }
        let mut rest = self.data;
        Some(core::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let (item, tail) = tail.split_at_checked(usize::from(len))?;
            rest = tail;
            Some(item)
        }))
    }

    /// Whether `class` is one of the user classes, in either encoding.
    pub fn contains(&self, class: &[u8]) -> bool {
        if self.data == class {
            return true;
        }
        self.rfc3004_items()
            .is_some_and(|mut items| items.any(|item| item == class))
    }

    /// The raw option value.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.data
    }
}

/// Option 97: client machine identifier. Type 0 followed by a 16-byte UUID (RFC 4578 2.3).
pub fn client_uuid(data: &[u8]) -> Option<[u8; 16]> {
    match data {
        [0, uuid @ ..] => uuid.try_into().ok(),
        _ => None,
    }
}
