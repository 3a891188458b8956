//! BMC power control for ironboot: one [`PowerControl`] trait with IPMI v2.0 RMCP+,
//! Redfish and HTTP-power-API back ends.
//!
//! Every back end is bounded in time and reports failures as a [`BmcError`] that
//! names the BMC it talked to, so that an operator reading one log line knows
//! which machine's controller misbehaved and how.
#![warn(missing_docs)]

use std::fmt;
use std::future::Future;

pub mod fleet;
pub mod http_api;
pub mod ipmi;
pub mod redfish;
pub mod select;

pub use fleet::{Fleet, FleetOptions, Operation, Outcome};
pub use http_api::HttpApiClient;
pub use ipmi::{IpmiClient, IpmiConfig};
pub use redfish::{RedfishClient, RedfishConfig, wait_for_power_state};
pub use select::{Backend, BmcInfo, IpmiInfo, Selector, SelectorOptions};

/// Firmware mode for a one-time PXE boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootMode {
    /// Legacy BIOS (IPMI "PC compatible", Redfish `Legacy`).
    Bios,
    /// UEFI (IPMI EFI boot type bit, Redfish `UEFI`).
    Uefi,
}

impl fmt::Display for BootMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootMode::Bios => "bios",
            BootMode::Uefi => "uefi",
        })
    }
}

/// Chassis power state as the BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// The machine is powered on.
    On,
    /// The machine is powered off.
    Off,
}

/// What went wrong talking to one BMC. `bmc` is always the address (or URL) used.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    /// The BMC refused our credentials (RAKP failure, HTTP 401/403).
    #[error("BMC {bmc}: authentication rejected: {detail}")]
    AuthRejected {
        /// The BMC address.
        bmc: String,
        /// What the BMC said.
        detail: String,
    },
    /// No (complete) answer within the configured bound.
    #[error("BMC {bmc}: no answer within {timeout_ms} ms while {during}")]
    Timeout {
        /// The BMC address.
        bmc: String,
        /// The bound that expired.
        timeout_ms: u64,
        /// The step that was waiting.
        during: String,
    },
    /// The BMC could not be reached at all (connection refused, TLS failure, DNS).
    #[error("BMC {bmc}: unreachable: {detail}")]
    Unreachable {
        /// The BMC address.
        bmc: String,
        /// The transport error.
        detail: String,
    },
    /// The BMC does not offer the requested operation.
    #[error("BMC {bmc}: {operation} is not supported: {detail}")]
    Unsupported {
        /// The BMC address.
        bmc: String,
        /// The operation asked for.
        operation: &'static str,
        /// Why we concluded it is unsupported.
        detail: String,
    },
    /// The BMC answered, but with an error or with something we cannot parse.
    #[error("BMC {bmc}: protocol error during {during}: {detail}")]
    Protocol {
        /// The BMC address.
        bmc: String,
        /// The step that failed.
        during: String,
        /// The BMC's error (completion code, Redfish message) or the parse failure.
        detail: String,
    },
}

impl BmcError {
    /// The BMC address this error is about.
    pub fn bmc(&self) -> &str {
        match self {
            BmcError::AuthRejected { bmc, .. }
            | BmcError::Timeout { bmc, .. }
            | BmcError::Unreachable { bmc, .. }
            | BmcError::Unsupported { bmc, .. }
            | BmcError::Protocol { bmc, .. } => bmc,
        }
    }
}

/// Power and boot control of one machine through its BMC.
///
/// Every method is bounded in time by the back end's configured timeout; none of
/// them retries a state-changing action after the BMC confirmed it.
pub trait PowerControl: Send + Sync {
    /// The address or URL this controller talks to (for logs and errors).
    fn address(&self) -> &str;
    /// Current chassis power state.
    fn power_status(&self) -> impl Future<Output = Result<PowerState, BmcError>> + Send;
    /// Power the machine on.
    fn power_on(&self) -> impl Future<Output = Result<(), BmcError>> + Send;
    /// Power the machine off (hard).
    fn power_off(&self) -> impl Future<Output = Result<(), BmcError>> + Send;
    /// Power cycle / reboot the machine.
    fn power_cycle(&self) -> impl Future<Output = Result<(), BmcError>> + Send;
    /// Make the next boot (only) a network boot in the given firmware mode.
    fn pxe_boot_once(&self, mode: BootMode) -> impl Future<Output = Result<(), BmcError>> + Send;
    /// Clear any boot override.
    fn reset_boot_override(&self) -> impl Future<Output = Result<(), BmcError>> + Send;
}
