//! TFTP messages (RFC 1350) with the option extension (RFC 2347): a checked view, a
//! validated representation borrowing from the datagram, and allocation-free writers.
//!
//! ```text
//!  RRQ/WRQ  | 01/02 | filename | 0 | mode | 0 | opt1 | 0 | value1 | 0 | ...
//!  DATA     | 03    | block    | data (0..blksize bytes)
//!  ACK      | 04    | block    |
//!  ERROR    | 05    | code     | message | 0 |
//!  OACK     | 06    | opt1 | 0 | value1 | 0 | ...
//! ```
//! Every field is big-endian u16 or a NUL-terminated string. Option names and values and
//! the mode are case-insensitive ASCII (RFC 2347); we accept any UTF-8 and compare names
//! ASCII-case-insensitively.

use core::fmt;

/// Offsets of the fixed fields (RFC 1350 section 5; RFC 2347 for OACK).
mod field {
    use core::ops::Range;
    pub(super) const OPCODE: Range<usize> = 0..2;
    /// DATA/ACK block number, or the ERROR code.
    pub(super) const WORD: Range<usize> = 2..4;
    /// Where the payload of DATA and the message of ERROR start.
    pub(super) const BODY: usize = 4;
    /// Where the strings of RRQ/WRQ and the options of OACK start.
    pub(super) const STRINGS: usize = 2;
}

/// Length of the DATA header (opcode + block number), the only bytes written per block:
/// the payload follows as a slice of the served file.
pub const DATA_HEADER_LEN: usize = 4;
/// Length of an ACK.
pub const ACK_LEN: usize = 4;
/// The largest request accepted (RFC 2347: "The maximum size of a request packet is 512
/// octets"). Real firmware sends well under 100 bytes.
pub const MAX_REQUEST_LEN: usize = 512;
/// The longest file name accepted, the same bound as [`crate::files::MAX_NAME_LEN`].
pub const MAX_FILENAME_LEN: usize = crate::files::MAX_NAME_LEN;
/// Block size without the `blksize` option (RFC 1350).
pub const DEFAULT_BLOCK_SIZE: u16 = 512;
/// Smallest `blksize` (RFC 2348).
pub const MIN_BLOCK_SIZE: u16 = 8;
/// Largest `blksize` (RFC 2348): 65535 - 20 (IP) - 8 (UDP) - 4 (TFTP), rounded down.
pub const MAX_BLOCK_SIZE: u16 = 65464;

/// A TFTP opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 1: read request.
    Rrq,
    /// 2: write request.
    Wrq,
    /// 3: data block.
    Data,
    /// 4: acknowledgment.
    Ack,
    /// 5: error.
    Error,
    /// 6: option acknowledgment (RFC 2347).
    Oack,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for Opcode {
    fn from(v: u16) -> Self {
        match v {
            1 => Opcode::Rrq,
            2 => Opcode::Wrq,
            3 => Opcode::Data,
            4 => Opcode::Ack,
            5 => Opcode::Error,
            6 => Opcode::Oack,
            other => Opcode::Unknown(other),
        }
    }
}

impl From<Opcode> for u16 {
    fn from(op: Opcode) -> u16 {
        match op {
            Opcode::Rrq => 1,
            Opcode::Wrq => 2,
            Opcode::Data => 3,
            Opcode::Ack => 4,
            Opcode::Error => 5,
            Opcode::Oack => 6,
            Opcode::Unknown(v) => v,
        }
    }
}

/// A transfer mode (RFC 1350 section 1), compared case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `netascii`: text with CR LF line ends (RFC 764).
    Netascii,
    /// `octet`: raw bytes.
    Octet,
    /// `mail`: obsolete, never served.
    Mail,
    /// Anything else.
    Unknown,
}

impl Mode {
    /// The mode a request names.
    pub fn parse(s: &str) -> Mode {
        if s.eq_ignore_ascii_case("octet") {
            Mode::Octet
        } else if s.eq_ignore_ascii_case("netascii") {
            Mode::Netascii
        } else if s.eq_ignore_ascii_case("mail") {
            Mode::Mail
        } else {
            Mode::Unknown
        }
    }
}

/// ERROR codes (RFC 1350 appendix, plus 8 from RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTransferId,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation failed (RFC 2347).
    OptionNegotiation,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for ErrorCode {
    fn from(v: u16) -> Self {
        match v {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTransferId,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionNegotiation,
            other => ErrorCode::Unknown(other),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> u16 {
        match c {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTransferId => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionNegotiation => 8,
            ErrorCode::Unknown(v) => v,
        }
    }
}

/// A string field of a TFTP message, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The file name of RRQ/WRQ.
    Filename,
    /// The mode of RRQ/WRQ.
    Mode,
    /// An option name.
    OptionName,
    /// An option value.
    OptionValue,
    /// The message of ERROR.
    ErrorMessage,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Filename => "file name",
            Field::Mode => "mode",
            Field::OptionName => "option name",
            Field::OptionValue => "option value",
            Field::ErrorMessage => "error message",
        })
    }
}

/// Why bytes were refused as a TFTP message, or why one could not be written.
///
/// [`Error::reason`] gives a stable label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than the smallest message of its kind.
    #[error("message too short: {len} bytes, need at least {min}")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// Longer than any message of its kind (a request over 512 bytes, a block over 65464,
    /// an ACK with trailing bytes).
    #[error("message too long: {len} bytes, at most {max} accepted")]
    TooLong {
        /// Bytes received.
        len: usize,
        /// Maximum length.
        max: usize,
    },
    /// The opcode is none of 1-6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field runs to the end of the message without its NUL.
    #[error("{field} is not NUL-terminated")]
    MissingNul {
        /// The field.
        field: Field,
    },
    /// A string field is not UTF-8.
    #[error("{field} is not UTF-8")]
    NotUtf8 {
        /// The field.
        field: Field,
    },
    /// The file name is longer than [`MAX_FILENAME_LEN`].
    #[error("file name of {len} bytes exceeds {max}")]
    FilenameTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The options end with a name that has no value.
    #[error("option list ends with a name without a value")]
    OddOptions,
    /// Bytes follow the NUL that ends an ERROR message.
    #[error("{len} bytes after the error message")]
    TrailingData {
        /// How many.
        len: usize,
    },
    /// A string to be written contains NUL (it would end the field early).
    #[error("{field} to be written contains NUL")]
    NulInString {
        /// The field.
        field: Field,
    },
    /// The output buffer cannot hold what is being written.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

impl Error {
    /// Every label [`Error::reason`] returns, for metrics.
    pub const REASONS: [&'static str; 10] = [
        "too_short",
        "too_long",
        "unknown_opcode",
        "missing_nul",
        "not_utf8",
        "filename_too_long",
        "odd_options",
        "trailing_data",
        "nul_in_string",
        "buffer_too_small",
    ];

    /// A stable, low-cardinality label for metrics (`reason="..."`).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::TooShort { .. } => "too_short",
            Error::TooLong { .. } => "too_long",
            Error::UnknownOpcode(_) => "unknown_opcode",
            Error::MissingNul { .. } => "missing_nul",
            Error::NotUtf8 { .. } => "not_utf8",
            Error::FilenameTooLong { .. } => "filename_too_long",
            Error::OddOptions => "odd_options",
            Error::TrailingData { .. } => "trailing_data",
            Error::NulInString { .. } => "nul_in_string",
            Error::BufferTooSmall { .. } => "buffer_too_small",
        }
    }
}

/// Result of TFTP wire operations.
pub type Result<T> = core::result::Result<T, Error>;

fn u16_at(b: &[u8], at: core::ops::Range<usize>) -> u16 {
    match b.get(at) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

/// Split a NUL-terminated string off the front of `b`: the string and the rest.
fn take_str(b: &[u8], field: Field) -> Result<(&str, &[u8])> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(Error::MissingNul { field })?;
    let s = core::str::from_utf8(&b[..end]).map_err(|_| Error::NotUtf8 { field })?;
    Ok((s, &b[end + 1..]))
}

/// A view over the bytes of a TFTP message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap bytes without checking them. Accessors never panic; on a short buffer they
    /// return zeros and empty slices.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wrap received bytes after checking the whole message (what [`Repr::parse`] checks).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        p.check()?;
        Ok(p)
    }

    /// The checks [`Packet::new_checked`] makes.
    pub fn check(&self) -> Result<()> {
        Repr::parse_bytes(self.buffer.as_ref()).map(|_| ())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The opcode (`Unknown(0)` if shorter than two bytes).
    pub fn opcode(&self) -> Opcode {
        Opcode::from(u16_at(self.buffer.as_ref(), field::OPCODE))
    }

    /// The block number of DATA or ACK.
    pub fn block(&self) -> u16 {
        u16_at(self.buffer.as_ref(), field::WORD)
    }

    /// The code of ERROR.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::from(u16_at(self.buffer.as_ref(), field::WORD))
    }

    /// The payload of DATA.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::BODY..).unwrap_or(&[])
    }
}

/// A validated option list (RRQ/WRQ after the mode, or OACK): an even number of
/// NUL-terminated UTF-8 strings, read as (name, value) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options<'a> {
    region: &'a [u8],
}

/// One option, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TftpOption<'a> {
    /// Name as sent (compare with [`str::eq_ignore_ascii_case`]).
    pub name: &'a str,
    /// Value as sent.
    pub value: &'a str,
}

impl<'a> Options<'a> {
    /// No options.
    pub const EMPTY: Options<'static> = Options { region: &[] };

    /// Validate `region` as an option list.
    pub fn new_checked(region: &'a [u8]) -> Result<Self> {
        let mut rest = region;
        while !rest.is_empty() {
            let (_, r) = take_str(rest, Field::OptionName)?;
            if r.is_empty() {
                // A name, then nothing: `name\0` without a value. (A value missing its
                // own NUL is reported as such by `take_str`.)
                return Err(Error::OddOptions);
            }
            let (_, r) = take_str(r, Field::OptionValue)?;
            rest = r;
        }
        Ok(Options { region })
    }

    /// The raw bytes of the list.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.region
    }

    /// Whether there are no options.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// The value of the first option named `name` (ASCII-case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter()
            .find(|o| o.name.eq_ignore_ascii_case(name))
            .map(|o| o.value)
    }

    /// Iterate the options in wire order.
    pub fn iter(&self) -> OptionsIter<'a> {
        OptionsIter { rest: self.region }
    }
}

impl<'a> IntoIterator for Options<'a> {
    type Item = TftpOption<'a>;
    type IntoIter = OptionsIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over a validated option list.
#[derive(Debug, Clone)]
pub struct OptionsIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for OptionsIter<'a> {
    type Item = TftpOption<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // Checked at construction; a failure here (a bug) ends the iteration.
        let (name, r) = take_str(self.rest, Field::OptionName).ok()?;
        let (value, r) = take_str(r, Field::OptionValue).ok()?;
        self.rest = r;
        Some(TftpOption { name, value })
    }
}

/// A read or write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The file name as sent (not normalised).
    pub filename: &'a str,
    /// The mode as sent; see [`Request::mode`].
    pub mode_name: &'a str,
    /// RFC 2347 options, possibly empty.
    pub options: Options<'a>,
}

impl Request<'_> {
    /// The transfer mode.
    pub fn mode(&self) -> Mode {
        Mode::parse(self.mode_name)
    }
}

/// A validated TFTP message, borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    /// Read request.
    Rrq(Request<'a>),
    /// Write request.
    Wrq(Request<'a>),
    /// A data block.
    Data {
        /// Block number (wraps 65535 -> 0 on long transfers).
        block: u16,
        /// The block's bytes.
        data: &'a [u8],
    },
    /// An acknowledgment.
    Ack {
        /// Block number acknowledged (0 acknowledges an OACK).
        block: u16,
    },
    /// An error; ends the transfer.
    Error {
        /// The code.
        code: ErrorCode,
        /// The message.
        message: &'a str,
    },
    /// Option acknowledgment.
    Oack {
        /// The accepted options.
        options: Options<'a>,
    },
}

fn parse_request(b: &[u8]) -> Result<Request<'_>> {
    if b.len() > MAX_REQUEST_LEN {
        return Err(Error::TooLong {
            len: b.len(),
            max: MAX_REQUEST_LEN,
        });
    }
    let strings = b.get(field::STRINGS..).unwrap_or(&[]);
    let (filename, rest) = take_str(strings, Field::Filename)?;
    if filename.len() > MAX_FILENAME_LEN {
        return Err(Error::FilenameTooLong {
            len: filename.len(),
            max: MAX_FILENAME_LEN,
        });
    }
    let (mode_name, rest) = take_str(rest, Field::Mode)?;
    // Some stacks pad requests with NULs; an all-NUL tail is padding, not options.
    let options = if rest.iter().all(|&c| c == 0) {
        Options::EMPTY
    } else {
        Options::new_checked(rest)?
    };
    Ok(Request {
        filename,
        mode_name,
        options,
    })
}

impl<'a> Repr<'a> {
    /// Decode a checked packet.
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Self> {
        Repr::parse_bytes(packet.buffer)
    }

    /// Decode the bytes of one datagram.
    pub fn parse_bytes(b: &'a [u8]) -> Result<Self> {
        let min = match b
            .get(field::OPCODE)
            .map(|_| Opcode::from(u16_at(b, field::OPCODE)))
        {
            None => 2,
            // Opcode, then two (possibly empty) strings with their NULs.
            Some(Opcode::Rrq | Opcode::Wrq) => 4,
            Some(Opcode::Data | Opcode::Ack) => 4,
            Some(Opcode::Error) => 5,
            Some(Opcode::Oack) => 2,
            Some(Opcode::Unknown(op)) => return Err(Error::UnknownOpcode(op)),
        };
        if b.len() < min {
            return Err(Error::TooShort { len: b.len(), min });
        }
        let packet = Packet::new_unchecked(b);
        Ok(match packet.opcode() {
            Opcode::Rrq => Repr::Rrq(parse_request(b)?),
            Opcode::Wrq => Repr::Wrq(parse_request(b)?),
            Opcode::Data => {
                let data = &b[field::BODY..];
                if data.len() > usize::from(MAX_BLOCK_SIZE) {
                    return Err(Error::TooLong {
                        len: b.len(),
                        max: DATA_HEADER_LEN + usize::from(MAX_BLOCK_SIZE),
                    });
                }
                Repr::Data {
                    block: packet.block(),
                    data,
                }
            }
            Opcode::Ack => {
                if b.len() > ACK_LEN {
                    return Err(Error::TooLong {
                        len: b.len(),
                        max: ACK_LEN,
                    });
                }
                Repr::Ack {
                    block: packet.block(),
                }
            }
            Opcode::Error => {
                let (message, rest) = take_str(&b[field::BODY..], Field::ErrorMessage)?;
                if !rest.is_empty() {
                    return Err(Error::TrailingData { len: rest.len() });
                }
                Repr::Error {
                    code: packet.error_code(),
                    message,
                }
            }
            Opcode::Oack => Repr::Oack {
                options: Options::new_checked(&b[field::STRINGS..])?,
            },
            Opcode::Unknown(op) => return Err(Error::UnknownOpcode(op)),
        })
    }

    /// The opcode of this message.
    pub fn opcode(&self) -> Opcode {
        match self {
            Repr::Rrq(_) => Opcode::Rrq,
            Repr::Wrq(_) => Opcode::Wrq,
            Repr::Data { .. } => Opcode::Data,
            Repr::Ack { .. } => Opcode::Ack,
            Repr::Error { .. } => Opcode::Error,
            Repr::Oack { .. } => Opcode::Oack,
        }
    }

    /// Length of the message [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Repr::Rrq(r) | Repr::Wrq(r) => {
                2 + r.filename.len() + 1 + r.mode_name.len() + 1 + r.options.as_bytes().len()
            }
            Repr::Data { data, .. } => DATA_HEADER_LEN + data.len(),
            Repr::Ack { .. } => ACK_LEN,
            Repr::Error { message, .. } => 4 + message.len() + 1,
            Repr::Oack { options } => 2 + options.as_bytes().len(),
        }
    }

    /// Write the message at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let needed = self.buffer_len();
        if buf.len() < needed {
            return Err(Error::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        }
        match *self {
            Repr::Rrq(r) | Repr::Wrq(r) => {
                let mut w = OptionWriter::request(buf, self.opcode(), r.filename, r.mode_name)?;
                w.raw(r.options.as_bytes())?;
                Ok(w.finish())
            }
            Repr::Data { block, data } => {
                write_data_header(buf, block)?;
                buf[DATA_HEADER_LEN..needed].copy_from_slice(data);
                Ok(needed)
            }
            Repr::Ack { block } => write_ack(buf, block),
            Repr::Error { code, message } => write_error(buf, code, message),
            Repr::Oack { options } => {
                let mut w = OptionWriter::oack(buf)?;
                w.raw(options.as_bytes())?;
                Ok(w.finish())
            }
        }
    }
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn check_room(buf: &[u8], needed: usize) -> Result<()> {
    if buf.len() < needed {
        return Err(Error::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    }
    Ok(())
}

/// Write the 4-byte DATA header for `block`; the payload goes after it (or is sent from a
/// shared buffer behind it). Returns [`DATA_HEADER_LEN`].
pub fn write_data_header(buf: &mut [u8], block: u16) -> Result<usize> {
    check_room(buf, DATA_HEADER_LEN)?;
    put_u16(buf, 0, Opcode::Data.into());
    put_u16(buf, 2, block);
    Ok(DATA_HEADER_LEN)
}

/// Write an ACK of `block`. Returns [`ACK_LEN`].
pub fn write_ack(buf: &mut [u8], block: u16) -> Result<usize> {
    check_room(buf, ACK_LEN)?;
    put_u16(buf, 0, Opcode::Ack.into());
    put_u16(buf, 2, block);
    Ok(ACK_LEN)
}

/// Write an ERROR with `code` and `message` (which must not contain NUL). Returns the
/// length.
pub fn write_error(buf: &mut [u8], code: ErrorCode, message: &str) -> Result<usize> {
    if message.as_bytes().contains(&0) {
        return Err(Error::NulInString {
            field: Field::ErrorMessage,
        });
    }
    let len = 4 + message.len() + 1;
    check_room(buf, len)?;
    put_u16(buf, 0, Opcode::Error.into());
    put_u16(buf, 2, code.into());
    buf[4..len - 1].copy_from_slice(message.as_bytes());
    buf[len - 1] = 0;
    Ok(len)
}

/// Writes a request (RRQ/WRQ) or an OACK and its options into a caller-owned buffer,
/// without allocating.
#[derive(Debug)]
pub struct OptionWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> OptionWriter<'b> {
    /// Start an OACK.
    pub fn oack(buf: &'b mut [u8]) -> Result<Self> {
        check_room(buf, 2)?;
        put_u16(buf, 0, Opcode::Oack.into());
        Ok(OptionWriter { buf, len: 2 })
    }

    /// Start a request with `opcode` ([`Opcode::Rrq`] or [`Opcode::Wrq`]; any other is
    /// written as given, for tests of malformed input), `filename` and `mode`.
    pub fn request(buf: &'b mut [u8], opcode: Opcode, filename: &str, mode: &str) -> Result<Self> {
        check_room(buf, 2)?;
        put_u16(buf, 0, opcode.into());
        let mut w = OptionWriter { buf, len: 2 };
        w.string(filename, Field::Filename)?;
        w.string(mode, Field::Mode)?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        let end = self.len + bytes.len();
        check_room(self.buf, end)?;
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn string(&mut self, s: &str, field: Field) -> Result<()> {
        if s.as_bytes().contains(&0) {
            return Err(Error::NulInString { field });
        }
        check_room(self.buf, self.len + s.len() + 1)?;
        self.raw(s.as_bytes())?;
        self.raw(&[0])
    }

    /// Append an option with a string value.
    pub fn option(&mut self, name: &str, value: &str) -> Result<()> {
        if value.as_bytes().contains(&0) {
            return Err(Error::NulInString {
                field: Field::OptionValue,
            });
        }
        check_room(self.buf, self.len + name.len() + value.len() + 2)?;
        self.string(name, Field::OptionName)?;
        self.string(value, Field::OptionValue)
    }

    /// Append an option with a decimal value, formatted without allocating.
    pub fn option_u64(&mut self, name: &str, value: u64) -> Result<()> {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut v = value;
        loop {
            at -= 1;
            digits[at] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // ASCII digits are UTF-8.
        let value = core::str::from_utf8(&digits[at..]).unwrap_or("0");
        self.option(name, value)
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written (never true: the opcode comes first).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finish; returns the message length.
    pub fn finish(self) -> usize {
        self.len
    }
}
