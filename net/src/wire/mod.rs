//! Wire formats: zero-copy views over received bytes and allocation-free writers. DHCPv4
//! and its PXE options are re-exported here; TFTP lives in [`tftp`] with its own errors.
//!
//! Pattern (after smoltcp): a `Packet<T: AsRef<[u8]>>` view whose `new_checked` validates
//! every length once, so no accessor can panic afterwards; a `Repr` that holds the
//! validated, decoded fields and borrows from the buffer; writers that fill a buffer the
//! caller owns and report `BufferTooSmall` instead of panicking.

pub mod dhcpv4;
pub mod options;
pub mod pxe;
pub mod tftp;

pub use dhcpv4::{MessageType, Op, Packet, Repr};
pub use options::{DhcpOption, OptionWriter, Options};

/// Why bytes were refused as a DHCPv4 message, or why a reply could not be written.
///
/// Every variant names what was wrong so that a drop counter or a test can tell cases
/// apart; [`Error::reason`] gives a stable label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Shorter than the fixed BOOTP header plus the magic cookie.
    #[error("message too short: {len} bytes, need at least {min}")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// Longer than any DHCP message we accept.
    #[error("message too long: {len} bytes, at most {max} accepted")]
    TooLong {
        /// Bytes received.
        len: usize,
        /// Maximum length.
        max: usize,
    },
    /// The four bytes after the BOOTP header are not 99.130.83.99.
    #[error("missing DHCP magic cookie")]
    BadMagicCookie,
    /// `op` is neither BOOTREQUEST (1) nor BOOTREPLY (2).
    #[error("unknown BOOTP op {0}")]
    BadOp(u8),
    /// `hlen` is larger than the 16-byte `chaddr` field.
    #[error("hardware address length {hlen} exceeds the 16-byte chaddr field")]
    HardwareAddressTooLong {
        /// The `hlen` byte.
        hlen: u8,
    },
    /// An option's length runs past the end of the message.
    #[error("option {code} at offset {offset} runs past the end of the message")]
    TruncatedOption {
        /// Option code.
        code: u8,
        /// Offset of the option's code byte in the message.
        offset: usize,
    },
    /// An option's length does not fit its definition.
    #[error("option {code} has invalid length {len}")]
    BadOptionLength {
        /// Option code.
        code: u8,
        /// Length found.
        len: usize,
    },
    /// The output buffer cannot hold what is being written.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// An option value longer than 255 bytes was to be written.
    #[error("option {code} value of {len} bytes exceeds 255")]
    OptionTooLong {
        /// Option code.
        code: u8,
        /// Value length.
        len: usize,
    },
}

impl Error {
    /// A stable, low-cardinality label for metrics (`reason="..."`).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::TooShort { .. } => "too_short",
            Error::TooLong { .. } => "too_long",
            Error::BadMagicCookie => "bad_magic_cookie",
            Error::BadOp(_) => "bad_op",
            Error::HardwareAddressTooLong { .. } => "bad_hlen",
            Error::TruncatedOption { .. } => "truncated_option",
            Error::BadOptionLength { .. } => "bad_option_length",
            Error::BufferTooSmall { .. } => "buffer_too_small",
            Error::OptionTooLong { .. } => "option_too_long",
        }
    }
}

/// Result of wire operations.
pub type Result<T> = core::result::Result<T, Error>;
