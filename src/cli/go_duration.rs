//! Durations written as Go's `time.ParseDuration` reads them (`30s`, `5m`, `1h30m`,
//! `1.5h`, `500ms`, `0`), so the Go provider's duration flags keep their values.
//!
//! One parser for every duration flag and option of the binary (the server's flags in
//! [`crate::cli::config`], the `bmc` tool's `--timeout`).

use std::time::Duration;

/// Why a text is not a (non-negative) Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurationError {
    /// Not of the form `[+]<number><unit>...` (or `0`).
    #[error("{0:?} is not a duration (e.g. 30s, 5m, 1h30m, 500ms)")]
    Invalid(String),
    /// A number without its unit (only `0` may have none).
    #[error("{0:?}: missing unit (ns, us, ms, s, m, h)")]
    MissingUnit(String),
    /// A unit Go does not know.
    #[error("{text:?}: unknown unit {unit:?} (ns, us, ms, s, m, h)")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// Negative: Go accepts it, but no setting here means anything with it.
    #[error("{0:?}: must not be negative")]
    Negative(String),
    /// More than Go's largest duration (about 292 years).
    #[error("{0:?}: too large (at most 2562047h)")]
    Overflow(String),
}

/// Nanoseconds per unit, as Go's `unitMap` (both micro signs included).
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Parse `text` as Go's `time.ParseDuration` does, refusing negative durations.
pub(crate) fn parse(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    let mut s = text;
    if let Some(rest) = s.strip_prefix('-') {
        // A negative zero ("-0", "-0s") is zero in Go; anything else negative is refused.
        if rest.is_empty() || rest.starts_with(['-', '+']) {
            return Err(invalid());
        }
        return match parse(rest)? {
            Duration::ZERO => Ok(Duration::ZERO),
            _ => Err(DurationError::Negative(text.to_owned())),
        };
    }
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    // Go's limit: the nanoseconds must fit an int64.
    const MAX_NANOS: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, rest) = s.split_at(int_len);
        let (frac_digits, rest) = match rest.strip_prefix('.') {
            Some(after) => {
                let n = after.bytes().take_while(u8::is_ascii_digit).count();
                after.split_at(n)
            }
            None => ("", rest),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let (unit, rest) = rest.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(text.to_owned()));
        }
        let per_unit = unit_nanos(unit).ok_or_else(|| DurationError::UnknownUnit {
            text: text.to_owned(),
            unit: unit.to_owned(),
        })?;
        let overflow = || DurationError::Overflow(text.to_owned());
        let whole: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| overflow())?
        };
        let mut nanos = whole.checked_mul(per_unit).ok_or_else(overflow)?;
        // The fraction, truncated to whole nanoseconds; digits past 30 cannot matter.
        let frac = &frac_digits[..frac_digits.len().min(30)];
        if !frac.is_empty() {
            let numerator: u128 = frac.parse().map_err(|_| overflow())?;
            let scale = 10u128.pow(frac.len() as u32);
            nanos += numerator * (per_unit) / scale;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
        if total > MAX_NANOS {
            return Err(overflow());
        }
        s = rest;
    }
    let secs = (total / 1_000_000_000) as u64;
    let sub = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn go_forms_parse() {
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("24h"), Duration::from_secs(86_400));
        assert_eq!(ok("1h30m"), Duration::from_secs(5_400));
        assert_eq!(ok("1h30m15s500ms"), Duration::from_millis(5_415_500));
        assert_eq!(ok("1.5h"), Duration::from_secs(5_400));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("7us"), Duration::from_micros(7));
        assert_eq!(ok("7\u{b5}s"), Duration::from_micros(7));
        assert_eq!(ok("7\u{3bc}s"), Duration::from_micros(7));
        assert_eq!(ok("9ns"), Duration::from_nanos(9));
        assert_eq!(ok("+2m"), Duration::from_secs(120));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("-0s"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        // Go's largest duration.
        assert_eq!(
            ok("2562047h47m16.854775807s"),
            Duration::from_nanos(i64::MAX as u64)
        );
    }

    #[test]
    fn non_go_forms_are_refused_with_the_reason() {
        for bad in ["", "s", ".s", "h1", "1 s", " 1s", "++1s", "-", "1e3s"] {
            assert!(
                matches!(
                    parse(bad),
                    Err(DurationError::Invalid(_) | DurationError::UnknownUnit { .. })
                ),
                "{bad:?}: {:?}",
                parse(bad)
            );
        }
        assert!(matches!(parse("30"), Err(DurationError::MissingUnit(_))));
        assert!(matches!(parse("1h30"), Err(DurationError::MissingUnit(_))));
        // As Go: the unit of "1.2" would start at the second '.'.
        assert!(matches!(
            parse("1.2.3s"),
            Err(DurationError::MissingUnit(_))
        ));
        assert_eq!(
            parse("3d"),
            Err(DurationError::UnknownUnit {
                text: "3d".into(),
                unit: "d".into()
            })
        );
        assert_eq!(parse("-5m"), Err(DurationError::Negative("-5m".into())));
        assert!(matches!(
            parse("-5x"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert_eq!(
            parse("2562048h"),
            Err(DurationError::Overflow("2562048h".into()))
        );
        assert!(matches!(
            parse("99999999999999999999999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }
}
