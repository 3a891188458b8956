//! Who is asking for a boot script: the identifiers iPXE sends (SMBIOS UUID, the MAC of
//! the NIC it booted from, `${buildarch}`), parsed into validated types once, so the
//! inventory, the boot decision and the store never see raw strings.

use std::fmt;
use std::str::FromStr;

/// Property checks shared by the `boot_query` fuzz target and the corpus replay test.
#[cfg(feature = "fuzzing")]
pub mod fuzz;

/// A malformed identifier; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is malformed: expected {expected}")]
pub struct IdError {
    what: &'static str,
    value: String,
    expected: &'static str,
}

/// Longest value echoed back in an error message (the input is untrusted).
const MAX_ECHO: usize = 64;

fn id_error(what: &'static str, value: &str, expected: &'static str) -> IdError {
    let value = match value.char_indices().nth(MAX_ECHO) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    };
    IdError {
        what,
        value,
        expected,
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parse exactly `out.len()` hex bytes from `digits` (two hex digits each).
fn hex_bytes(digits: impl Iterator<Item = u8>, out: &mut [u8]) -> Option<()> {
    let mut n = 0;
    let mut high = None;
    for d in digits {
        let v = hex_digit(d)?;
        match high.take() {
            None => high = Some(v),
            Some(h) => {
                *out.get_mut(n)? = (h << 4) | v;
                n += 1;
            }
        }
    }
    (high.is_none() && n == out.len()).then_some(())
}

/// A machine's SMBIOS UUID, as iPXE's `${uuid}` prints it (`8-4-4-4-12` hex digits).
/// Parsing is case-insensitive (dmidecode prints upper case); display is lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// Whether firmware left the UUID unset: all zeros or all ones are placeholders many
    /// boards share, so they identify nothing and the MAC must be used instead.
    pub fn is_placeholder(&self) -> bool {
        self.0 == [0; 16] || self.0 == [0xff; 16]
    }
}

impl FromStr for Uuid {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        const EXPECTED: &str = "8-4-4-4-12 hex digits like 4c4c4544-0042-3510-8051-b7c04f4e3332";
        let b = s.as_bytes();
        let dashes_ok = b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-');
        let mut out = [0u8; 16];
        if !dashes_ok || hex_bytes(b.iter().copied().filter(|&c| c != b'-'), &mut out).is_none() {
            return Err(id_error("UUID", s, EXPECTED));
        }
        Ok(Uuid(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A NIC's MAC address. Accepts `52:54:00:aa:00:01`, iPXE's `:hexhyp` form
/// `52-54-00-aa-00-01`, or 12 bare hex digits; displays with colons, lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

impl FromStr for MacAddr {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        const EXPECTED: &str = "6 hex octets like 52:54:00:aa:00:01 or 52-54-00-aa-00-01";
        let b = s.as_bytes();
        let separated = b.len() == 17
            && (2..17)
                .step_by(3)
                .all(|i| b[i] == b[2] && (b[i] == b':' || b[i] == b'-'));
        let mut out = [0u8; 6];
        let ok = if separated {
            hex_bytes(
                b.iter()
                    .enumerate()
                    .filter(|(i, _)| i % 3 != 2)
                    .map(|(_, &c)| c),
                &mut out,
            )
        } else if b.len() == 12 {
            hex_bytes(b.iter().copied(), &mut out)
        } else {
            None
        };
        ok.map(|()| MacAddr(out))
            .ok_or_else(|| id_error("MAC address", s, EXPECTED))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// CPU architecture of the booting iPXE, from `${buildarch}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `x86_64` (EFI) and `i386` (the BIOS `undionly.kpxe` build is 32-bit even on 64-bit
    /// machines, as is IA32 EFI); the Go provider treats them all as amd64.
    Amd64,
    /// `arm64`.
    Arm64,
}

impl Arch {
    /// The Go provider's and Talos' name.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Parse iPXE's `${buildarch}` (also the Go names). `None` for an architecture no
    /// ironboot boot file exists for (arm32, riscv64, loong64, ...).
    pub fn from_buildarch(value: &str) -> Option<Arch> {
        match value {
            "x86_64" | "i386" | "amd64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated boot-script request: at least one of `uuid` and `mac` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineQuery {
    /// SMBIOS UUID, unless iPXE had none (or a placeholder).
    pub uuid: Option<Uuid>,
    /// MAC of the NIC iPXE is booting from.
    pub mac: Option<MacAddr>,
    /// Architecture of the iPXE build.
    pub arch: Arch,
    /// Informational values from DHCP/SMBIOS, cleaned for storage (see [`clean_text`]).
    pub serial: Option<String>,
    /// DHCP host name.
    pub hostname: Option<String>,
    /// DHCP domain.
    pub domain: Option<String>,
}

impl MachineQuery {
    /// The key a machine is recorded under: its UUID, else `mac-` and its MAC. (A machine
    /// seen once without and once with a UUID gets two records; firmware is consistent in
    /// practice.)
    pub fn machine_id(&self) -> String {
        match (self.uuid, self.mac) {
            (Some(u), _) => u.to_string(),
            (None, Some(m)) => format!("mac-{m}"),
            // Unreachable for validated queries; a stable key all the same.
            (None, None) => "unknown".to_owned(),
        }
    }
}

/// Longest informational value kept (serial numbers and host names are short).
pub const MAX_TEXT: usize = 128;

/// Clean an informational value (serial, host name, domain): drop control characters, trim,
/// cap at [`MAX_TEXT`] characters; `None` when nothing is left. These values are only
/// recorded, never interpolated into scripts, so cleaning beats refusing a machine whose
/// SMBIOS serial is odd.
pub fn clean_text(value: &str) -> Option<String> {
    let cleaned: String = value
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect();
    let trimmed = cleaned.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_parse_case_insensitively_and_display_lower_case() {
        let u: Uuid = "4C4C4544-0042-3510-8051-B7C04F4E3332".parse().unwrap();
        assert_eq!(u.to_string(), "4c4c4544-0042-3510-8051-b7c04f4e3332");
        assert!(!u.is_placeholder());
        for p in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        ] {
            assert!(p.parse::<Uuid>().unwrap().is_placeholder(), "{p}");
        }
        for bad in [
            "",
            "4c4c4544004235108051b7c04f4e3332",
            "4c4c4544-0042-3510-8051-b7c04f4e333",
            "4c4c4544-0042-3510-8051-b7c04f4e33321",
            "4c4c4544-0042-3510-8051_b7c04f4e3332",
            "4c4c4544-0042-3510-8051-b7c04f4e333g",
            "4c4c4544-0042-3510-80511b7c04f4e332-",
            "{4c4c4544-0042-3510-8051-b7c04f4e33}",
            "4c4c4544-0042-3510-8051-b7c04f4e333\n",
            "é4c4c544-0042-3510-8051-b7c04f4e333",
        ] {
            let e = bad.parse::<Uuid>().unwrap_err();
            assert!(e.to_string().contains("UUID"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn macs_accept_colons_hyphens_and_bare_hex() {
        let want = "52:54:00:aa:00:01";
        for ok in [
            "52:54:00:aa:00:01",
            "52-54-00-AA-00-01",
            "525400aa0001",
            "52:54:00:Aa:00:01",
        ] {
            assert_eq!(ok.parse::<MacAddr>().unwrap().to_string(), want, "{ok}");
        }
        for bad in [
            "",
            "52:54:00:aa:00",
            "52:54:00:aa:00:01:02",
            "52:54-00:aa:00:01",
            "52.54.00.aa.00.01",
            "52:54:00:aa:00:0g",
            "5254:00aa:0001",
            "52:54:00:aa:00:1",
            "525400aa00011",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn long_bad_values_are_cut_in_the_message() {
        let e = "x".repeat(1000).parse::<MacAddr>().unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn buildarch_values() {
        for (v, a) in [
            ("x86_64", Some(Arch::Amd64)),
            ("i386", Some(Arch::Amd64)),
            ("arm64", Some(Arch::Arm64)),
            ("aarch64", Some(Arch::Arm64)),
            ("arm32", None),
            ("riscv64", None),
            ("", None),
        ] {
            assert_eq!(Arch::from_buildarch(v), a, "{v}");
        }
    }

    #[test]
    fn text_is_cleaned_not_refused() {
        assert_eq!(
            clean_text("  To Be Filled\n By O.E.M. "),
            Some("To Be Filled By O.E.M.".into())
        );
        assert_eq!(clean_text("\t\r\n"), None);
        assert_eq!(
            clean_text(&"é".repeat(500)).unwrap().chars().count(),
            MAX_TEXT
        );
    }

    #[test]
    fn machine_ids_prefer_the_uuid() {
        let mut q = MachineQuery {
            uuid: Some("00000000-0000-4000-8000-000000000001".parse().unwrap()),
            mac: Some("52:54:00:aa:00:01".parse().unwrap()),
            arch: Arch::Amd64,
            serial: None,
            hostname: None,
            domain: None,
        };
        assert_eq!(q.machine_id(), "00000000-0000-4000-8000-000000000001");
        q.uuid = None;
        assert_eq!(q.machine_id(), "mac-52:54:00:aa:00:01");
    }
}
