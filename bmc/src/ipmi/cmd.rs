//! The IPMI commands this client sends (request data) and the parsers of their
//! response data. Pure functions over untrusted bytes.

use crate::BootMode;

use super::crypto::CipherSuite;
use super::wire::{Reader, WireError};

/// Network function: chassis.
pub(crate) const NETFN_CHASSIS: u8 = 0x00;
/// Network function: application.
pub(crate) const NETFN_APP: u8 = 0x06;

/// App: Get Channel Authentication Capabilities.
pub(crate) const CMD_GET_CHANNEL_AUTH_CAPABILITIES: u8 = 0x38;
/// App: Set Session Privilege Level.
pub(crate) const CMD_SET_SESSION_PRIVILEGE: u8 = 0x3b;
/// App: Close Session.
pub(crate) const CMD_CLOSE_SESSION: u8 = 0x3c;
/// App: Get Channel Cipher Suites.
pub(crate) const CMD_GET_CHANNEL_CIPHER_SUITES: u8 = 0x54;
/// Chassis: Get Chassis Status.
pub(crate) const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
/// Chassis: Chassis Control.
pub(crate) const CMD_CHASSIS_CONTROL: u8 = 0x02;
/// Chassis: Set System Boot Options.
pub(crate) const CMD_SET_SYSTEM_BOOT_OPTIONS: u8 = 0x08;

/// "This channel" in channel-number fields.
const CURRENT_CHANNEL: u8 = 0x0e;

/// A Chassis Control action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChassisControl {
    /// Power down (hard off).
    PowerDown,
    /// Power up.
    PowerUp,
    /// Power cycle (off, at least a second, on).
    PowerCycle,
    /// Hard reset (reset line pulse, power stays on).
    HardReset,
}

impl ChassisControl {
    /// The request data byte.
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::PowerDown => 0x00,
            Self::PowerUp => 0x01,
            Self::PowerCycle => 0x02,
            Self::HardReset => 0x03,
        }
    }

    /// Whether the chassis power state read after this action went unanswered shows
    /// that the BMC carried it out: `before` is the state read before sending (a power
    /// cycle needs it), `now_on` the state read after. False when the state cannot
    /// tell: a power cycle that left the state as it was has either not run or already
    /// ended, and a hard reset leaves no trace in the power state.
    pub(crate) fn took_effect(self, before: Option<bool>, now_on: bool) -> bool {
        match self {
            Self::PowerUp => now_on,
            Self::PowerDown => !now_on,
            Self::PowerCycle => before.is_some_and(|was_on| was_on != now_on),
            Self::HardReset => false,
        }
    }

    /// The step name of the status read that follows an unanswered copy of this
    /// action, for logs and errors.
    pub(crate) fn check_step(self) -> &'static str {
        match self {
            Self::PowerDown => {
                "Get Chassis Status (after Chassis Control (power down) went unanswered)"
            }
            Self::PowerUp => {
                "Get Chassis Status (after Chassis Control (power up) went unanswered)"
            }
            Self::PowerCycle => {
                "Get Chassis Status (after Chassis Control (power cycle) went unanswered)"
            }
            Self::HardReset => {
                "Get Chassis Status (after Chassis Control (hard reset) went unanswered)"
            }
        }
    }

    /// For logs and errors.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::PowerDown => "Chassis Control (power down)",
            Self::PowerUp => "Chassis Control (power up)",
            Self::PowerCycle => "Chassis Control (power cycle)",
            Self::HardReset => "Chassis Control (hard reset)",
        }
    }
}

/// A boot device override (Set System Boot Options, parameter 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootOverride {
    /// Force PXE on the next boot only, in this firmware mode.
    PxeOnce(BootMode),
    /// No override: the machine's own boot order.
    None,
}

impl BootOverride {
    /// Request data of Set System Boot Options: parameter 5 (boot flags), not locked,
    /// then the five boot flag bytes: valid bit, next boot only, EFI or PC-compatible
    /// boot type; device selector 0001b (force PXE) or 0000b (no override).
    pub(crate) fn request_data(self) -> [u8; 6] {
        const VALID: u8 = 0x80;
        const EFI: u8 = 0x20;
        const FORCE_PXE: u8 = 0x01 << 2;
        match self {
            Self::PxeOnce(BootMode::Uefi) => [0x05, VALID | EFI, FORCE_PXE, 0, 0, 0],
            Self::PxeOnce(BootMode::Bios) => [0x05, VALID, FORCE_PXE, 0, 0, 0],
            Self::None => [0x05, VALID, 0x00, 0, 0, 0],
        }
    }

    /// For logs and errors.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::PxeOnce(BootMode::Uefi) => "Set System Boot Options (PXE once, EFI)",
            Self::PxeOnce(BootMode::Bios) => "Set System Boot Options (PXE once, legacy)",
            Self::None => "Set System Boot Options (no override)",
        }
    }
}

/// Request data of Get Channel Authentication Capabilities: this channel, with the
/// IPMI v2.0 extended data bit, for administrator.
pub(crate) fn auth_capabilities_request() -> [u8; 2] {
    [0x80 | CURRENT_CHANNEL, super::session::PRIV_ADMIN]
}

/// What Get Channel Authentication Capabilities says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AuthCapabilities {
    /// The channel supports IPMI v2.0 / RMCP+ connections.
    pub(crate) ipmi_v2: bool,
}

/// Parses the Get Channel Authentication Capabilities response data.
pub(crate) fn parse_auth_capabilities(data: &[u8]) -> Result<AuthCapabilities, WireError> {
    let mut r = Reader::new(data);
    let _channel = r.u8("channel number")?;
    let auth_support = r.u8("authentication type support")?;
    let _status = r.u8("authentication status")?;
    let extended = r.u8("extended capabilities")?;
    r.take(4, "OEM id and data")?;
    // Bit 7 of byte 2: extended data present; then byte 4 bit 1: IPMI v2.0 supported.
    Ok(AuthCapabilities {
        ipmi_v2: auth_support & 0x80 != 0 && extended & 0x02 != 0,
    })
}

/// Request data of Get Channel Cipher Suites: this channel, IPMI payload, list the
/// algorithms by cipher suite, starting at record byte `16 * index`.
pub(crate) fn cipher_suites_request(index: u8) -> [u8; 3] {
    [CURRENT_CHANNEL, 0x00, 0x80 | (index & 0x3f)]
}

/// Splits a Get Channel Cipher Suites response into the channel and the (up to 16)
/// record bytes of this chunk.
pub(crate) fn parse_cipher_suites_chunk(data: &[u8]) -> Result<&[u8], WireError> {
    let mut r = Reader::new(data);
    let _channel = r.u8("channel number")?;
    let records = r.rest();
    if records.len() > 16 {
        return Err(WireError::Trailing {
            what: "cipher suite record chunk",
            len: records.len() - 16,
        });
    }
    Ok(records)
}

/// The cipher suite ids listed in the concatenated record bytes: each record starts
/// with 0xc0 (standard: then the id) or 0xc1 (OEM: the id and a 3-byte IANA number),
/// followed by algorithm bytes (top bits 00, 01, 10).
pub(crate) fn parse_cipher_suite_ids(records: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut ids = Vec::new();
    let mut r = Reader::new(records);
    while r.remaining() > 0 {
        match r.u8("cipher suite record start")? {
            0xc0 => ids.push(r.u8("cipher suite id")?),
            0xc1 => {
                ids.push(r.u8("OEM cipher suite id")?);
                r.take(3, "OEM IANA number")?;
            }
            // Algorithm bytes of the current record.
            b if b & 0xc0 != 0xc0 && !ids.is_empty() => {}
            _ => {
                return Err(WireError::Trailer("cipher suite records out of order"));
            }
        }
    }
    Ok(ids)
}

/// The suite to use from what a BMC lists: 17 if offered, else 3, else none.
pub(crate) fn pick_suite(ids: &[u8]) -> Option<CipherSuite> {
    [CipherSuite::Suite17, CipherSuite::Suite3]
        .into_iter()
        .find(|s| ids.contains(&s.id()))
}

/// Parses Get Chassis Status: bit 0 of the first byte is "system power is on".
pub(crate) fn parse_chassis_power_on(data: &[u8]) -> Result<bool, WireError> {
    let mut r = Reader::new(data);
    let current = r.u8("current power state")?;
    Ok(current & 0x01 != 0)
}

/// Parses Set Session Privilege Level: the new privilege level (low four bits).
pub(crate) fn parse_privilege(data: &[u8]) -> Result<u8, WireError> {
    let mut r = Reader::new(data);
    Ok(r.u8("new privilege level")? & 0x0f)
}

/// The meaning of an IPMI completion code (IPMI v2.0 table 5-2; 0x80.. are
/// command-specific, given for the commands this client sends).
pub(crate) fn completion_text(netfn: u8, cmd: u8, code: u8) -> &'static str {
    match (netfn, cmd, code) {
        (_, _, 0x00) => "success",
        (NETFN_CHASSIS, CMD_SET_SYSTEM_BOOT_OPTIONS, 0x80) => "parameter not supported",
        (NETFN_CHASSIS, CMD_SET_SYSTEM_BOOT_OPTIONS, 0x81) => "set in progress by another party",
        (NETFN_CHASSIS, CMD_SET_SYSTEM_BOOT_OPTIONS, 0x82) => "write to a read-only parameter",
        (NETFN_APP, CMD_SET_SESSION_PRIVILEGE, 0x80) => {
            "requested level not available for this user"
        }
        (NETFN_APP, CMD_SET_SESSION_PRIVILEGE, 0x81) => {
            "requested level exceeds the channel or user limit"
        }
        (NETFN_APP, CMD_SET_SESSION_PRIVILEGE, 0x82) => "cannot disable user-level authentication",
        (_, _, 0xc0) => "node busy",
        (_, _, 0xc1) => "invalid command",
        (_, _, 0xc2) => "command invalid for this LUN",
        (_, _, 0xc3) => "timeout while processing command",
        (_, _, 0xc4) => "out of space",
        (_, _, 0xc5) => "reservation cancelled or invalid",
        (_, _, 0xc6) => "request data truncated",
        (_, _, 0xc7) => "request data length invalid",
        (_, _, 0xc8) => "request data field length limit exceeded",
        (_, _, 0xc9) => "parameter out of range",
        (_, _, 0xca) => "cannot return the requested number of data bytes",
        (_, _, 0xcb) => "requested sensor, data or record not present",
        (_, _, 0xcc) => "invalid data field in request",
        (_, _, 0xcd) => "command illegal for this sensor or record type",
        (_, _, 0xce) => "command response could not be provided",
        (_, _, 0xcf) => "cannot execute a duplicated request",
        (_, _, 0xd0) => "SDR repository in update mode",
        (_, _, 0xd1) => "device in firmware update mode",
        (_, _, 0xd2) => "BMC initialization in progress",
        (_, _, 0xd3) => "destination unavailable",
        (_, _, 0xd4) => "insufficient privilege level",
        (_, _, 0xd5) => "not supported in present state",
        (_, _, 0xd6) => "sub-function disabled or unavailable",
        (_, _, 0xff) => "unspecified error",
        _ => "unknown completion code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_flags_match_the_spec() {
        // IPMI v2.0 table 28-14, parameter 5, data 1: bit 7 valid, bit 6 persistent
        // (0 = next boot only), bit 5 EFI; data 2 bits 5:2 device (0001b = PXE).
        assert_eq!(
            BootOverride::PxeOnce(BootMode::Uefi).request_data(),
            [5, 0xa0, 0x04, 0, 0, 0]
        );
        assert_eq!(
            BootOverride::PxeOnce(BootMode::Bios).request_data(),
            [5, 0x80, 0x04, 0, 0, 0]
        );
        assert_eq!(BootOverride::None.request_data(), [5, 0x80, 0, 0, 0, 0]);
    }

    #[test]
    fn only_a_visible_effect_stops_a_chassis_control_resend() {
        use ChassisControl::*;
        assert!(PowerUp.took_effect(None, true));
        assert!(!PowerUp.took_effect(None, false));
        assert!(PowerDown.took_effect(None, false));
        assert!(!PowerDown.took_effect(None, true));
        // A cycle from on is seen while the chassis is off; from off (some BMCs power
        // on) while it is on; an unchanged state is no proof either way.
        assert!(PowerCycle.took_effect(Some(true), false));
        assert!(PowerCycle.took_effect(Some(false), true));
        assert!(!PowerCycle.took_effect(Some(true), true));
        assert!(!PowerCycle.took_effect(Some(false), false));
        assert!(!PowerCycle.took_effect(None, false));
        assert!(!HardReset.took_effect(Some(true), true));
    }

    #[test]
    fn cipher_suite_records_are_parsed() {
        // Suites 1, 3 and 17 (typical of a real BMC), then an OEM suite 0x30.
        let records = [
            0xc0, 1, 0x01, 0x40, 0xc0, 3, 0x01, 0x41, 0x81, 0xc0, 17, 0x03, 0x44, 0x81, 0xc1, 0x30,
            0x57, 0x01, 0x00, 0x01, 0x41, 0x81,
        ];
        let ids = parse_cipher_suite_ids(&records).expect("parse");
        assert_eq!(ids, [1, 3, 17, 0x30]);
        assert_eq!(pick_suite(&ids), Some(CipherSuite::Suite17));
        assert_eq!(pick_suite(&[0, 1, 2, 3]), Some(CipherSuite::Suite3));
        assert_eq!(pick_suite(&[1, 2]), None);
        assert!(parse_cipher_suite_ids(&[0x01]).is_err());
        assert!(parse_cipher_suite_ids(&[0xc0]).is_err());
    }

    #[test]
    fn auth_capabilities_need_the_v2_bits() {
        let caps = parse_auth_capabilities(&[1, 0x97, 0x04, 0x02, 0, 0, 0, 0]).expect("parse");
        assert!(caps.ipmi_v2);
        let caps = parse_auth_capabilities(&[1, 0x17, 0x04, 0x00, 0, 0, 0, 0]).expect("parse");
        assert!(!caps.ipmi_v2);
        assert!(parse_auth_capabilities(&[1, 0x97]).is_err());
    }
}
