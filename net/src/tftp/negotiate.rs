//! RFC 2347 option negotiation: which of the client's options we accept, with what values,
//! and the OACK that says so.
//!
//! The OACK names only options the client asked for (some EFI clients fail a transfer on
//! an unrequested one), in the client's order, with lower-case names. Unknown options are
//! ignored, as RFC 2347 asks. If nothing is accepted there is no OACK at all and the
//! transfer starts with DATA 1, as in RFC 1350.

use std::time::Duration;

use super::config::TftpConfig;
use crate::wire::tftp::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, OptionWriter, Options, Result};

/// The options we understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    /// RFC 2348.
    Blksize,
    /// RFC 2349.
    Tsize,
    /// RFC 2349.
    Timeout,
    /// RFC 7440.
    Windowsize,
}

impl Known {
    const ALL: [Known; 4] = [
        Known::Blksize,
        Known::Tsize,
        Known::Timeout,
        Known::Windowsize,
    ];

    fn name(self) -> &'static str {
        match self {
            Known::Blksize => "blksize",
            Known::Tsize => "tsize",
            Known::Timeout => "timeout",
            Known::Windowsize => "windowsize",
        }
    }

    fn parse(name: &str) -> Option<Known> {
        Known::ALL
            .into_iter()
            .find(|k| name.eq_ignore_ascii_case(k.name()))
    }
}

/// Why a request's options were refused (answered with ERROR 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NegotiationError {
    /// A value that is not a decimal number.
    #[error("option value is not a number")]
    NotNumeric,
    /// `blksize` below 8.
    #[error("blksize below 8")]
    BlksizeTooSmall,
    /// `timeout` outside 1..=255 seconds.
    #[error("timeout outside 1..255")]
    TimeoutOutOfRange,
    /// `windowsize` 0.
    #[error("windowsize 0")]
    WindowsizeZero,
}

impl NegotiationError {
    /// The text of the ERROR 8 sent back.
    pub(crate) fn message(self) -> &'static str {
        match self {
            NegotiationError::NotNumeric => "option value is not a number",
            NegotiationError::BlksizeTooSmall => "blksize must be 8..65464",
            NegotiationError::TimeoutOutOfRange => "timeout must be 1..255",
            NegotiationError::WindowsizeZero => "windowsize must be 1..65535",
        }
    }
}

/// What a transfer runs with, and which options its OACK carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub(crate) blksize: u16,
    pub(crate) windowsize: u16,
    /// The client's `timeout`, if accepted; else the configured default applies.
    pub(crate) timeout_secs: Option<u8>,
    /// Accepted options in the client's order; `oack_len` of them are valid.
    oack: [Known; 4],
    oack_len: u8,
}

/// A decimal number: ASCII digits only, at least one; saturates instead of overflowing
/// (a huge `blksize` is then simply clamped).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |v, c| {
        v.saturating_mul(10).saturating_add(u64::from(c - b'0'))
    }))
}

impl Negotiated {
    /// Plain RFC 1350: 512-byte blocks, one at a time, no OACK.
    pub(crate) const DEFAULT: Negotiated = Negotiated {
        blksize: crate::wire::tftp::DEFAULT_BLOCK_SIZE,
        windowsize: 1,
        timeout_secs: None,
        oack: [Known::Blksize; 4],
        oack_len: 0,
    };

    /// Negotiate a request's `options` under `config`. The first occurrence of an option
    /// counts; later ones are ignored, like unknown options.
    pub(crate) fn negotiate(
        options: Options<'_>,
        config: &TftpConfig,
    ) -> core::result::Result<Self, NegotiationError> {
        let mut n = Negotiated::DEFAULT;
        for opt in options {
            let Some(known) = Known::parse(opt.name) else {
                continue;
            };
            if n.accepted().any(|k| k == known) {
                continue;
            }
            let value = number(opt.value).ok_or(NegotiationError::NotNumeric)?;
            match known {
                Known::Blksize => {
                    if value < u64::from(MIN_BLOCK_SIZE) {
                        return Err(NegotiationError::BlksizeTooSmall);
                    }
                    let max = config.max_blksize.min(MAX_BLOCK_SIZE);
                    n.blksize = u16::try_from(value).unwrap_or(max).min(max);
                }
                // In a read request the client sends 0; the value we answer is the file
                // size, filled in when the OACK is written.
                Known::Tsize => {}
                Known::Timeout => {
                    let secs = u8::try_from(value)
                        .ok()
                        .filter(|&s| s >= 1)
                        .ok_or(NegotiationError::TimeoutOutOfRange)?;
                    // A long timeout times the retry limit is how long a vanished client
                    // holds a transfer slot: above the ceiling, the option is declined
                    // (left out of the OACK, RFC 2349) and our default interval applies.
                    if secs > config.max_timeout_secs {
                        continue;
                    }
                    n.timeout_secs = Some(secs);
                }
                Known::Windowsize => {
                    if value == 0 {
                        return Err(NegotiationError::WindowsizeZero);
                    }
                    let max = config.max_windowsize;
                    n.windowsize = u16::try_from(value).unwrap_or(max).min(max);
                }
            }
            n.oack[usize::from(n.oack_len)] = known;
            n.oack_len += 1;
        }
        Ok(n)
    }

    fn accepted(&self) -> impl Iterator<Item = Known> + '_ {
        self.oack[..usize::from(self.oack_len)].iter().copied()
    }

    /// Whether an OACK is due (some option was accepted).
    pub(crate) fn has_oack(&self) -> bool {
        self.oack_len > 0
    }

    /// The retransmission interval.
    pub(crate) fn timeout(&self, config: &TftpConfig) -> Duration {
        self.timeout_secs.map_or(config.default_timeout, |s| {
            Duration::from_secs(u64::from(s))
        })
    }

    /// Write the OACK, with `tsize` as the transfer size.
    pub(crate) fn write_oack(&self, buf: &mut [u8], tsize: u64) -> Result<usize> {
        let mut w = OptionWriter::oack(buf)?;
        for known in self.accepted() {
            let value = match known {
                Known::Blksize => u64::from(self.blksize),
                Known::Tsize => tsize,
                Known::Timeout => u64::from(self.timeout_secs.unwrap_or(1)),
                Known::Windowsize => u64::from(self.windowsize),
            };
            w.option_u64(known.name(), value)?;
        }
        Ok(w.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_plain_decimal() {
        assert_eq!(number("0"), Some(0));
        assert_eq!(number("01468"), Some(1468));
        assert_eq!(number("99999999999999999999999"), Some(u64::MAX));
        for bad in ["", " 1", "1 ", "-1", "+1", "0x10", "1e3", "１"] {
            assert_eq!(number(bad), None, "{bad:?}");
        }
    }
}
