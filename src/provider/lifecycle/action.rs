//! The outputs of [`super::reconcile`]: what the executor does, in order, stopping at the
//! first failure (the next pass decides again from the records).

use std::fmt;
use std::time::SystemTime;

use ironboot_bmc::{BootMode, PowerState};

/// A secret string (a BMC password). Its `Debug` prints nothing of it, so actions and
/// plans can be logged freely.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one call that must send it (the agent's SetPowerManagement).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A provider power action, as recorded in `PowerOperation` (a reboot is recorded in
/// `RebootStatus` instead, as upstream does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PowerOp {
    /// Powered on.
    On,
    /// Powered off.
    Off,
}

/// The Omni-visible status of a machine (`InfraMachineStatusSpec`). Labels from
/// `--machine-labels` and the copied cluster labels are the executor's business.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct InfraMachineStatus {
    /// Power state as last read (`None` = unknown).
    pub(crate) power: Option<PowerState>,
    /// BMC configured and disks wiped for the current wipe ID: Omni may allocate it.
    pub(crate) ready_to_use: bool,
    /// Talos was installed since the last wipe.
    pub(crate) installed: bool,
    /// The node token at the last wipe (Omni matches it to know the wipe is done).
    pub(crate) wiped_node_unique_token: String,
    /// The reboot request handled last.
    pub(crate) last_reboot_id: String,
    /// When it was handled.
    pub(crate) last_reboot_at: Option<SystemTime>,
    /// The power-off request acknowledged last.
    pub(crate) last_power_off_id: String,
}

/// One step for the executor.
///
/// Ordering is part of the contract: a `Record…` placed before its side effect makes the
/// effect at-most-once across a crash, one placed after makes it at-least-once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Ask the agent for the in-band BMC address (GetPowerManagement), create or claim the
    /// IPMI user with this password (SetPowerManagement), then store the credentials in
    /// the private `BMCConfiguration`.
    ConfigureBmcViaAgent {
        /// IPMI user name.
        username: String,
        /// Its new password.
        password: Secret,
    },
    /// Record that a wipe for this wipe ID is about to be sent.
    RecordWipeStarted {
        /// Omni's wipe ID.
        wipe_id: String,
    },
    /// The agent's WipeDisks.
    WipeDisks {
        /// Overwrite with zeroes instead of a fast wipe.
        zeroes: bool,
    },
    /// Record the completed wipe (upstream's `WipeStatus`).
    RecordWipeDone {
        /// Omni's wipe ID that was wiped for.
        wipe_id: String,
        /// Omni's install event counter at that time.
        install_event_id: u64,
        /// The node token at that time.
        node_unique_token: String,
    },
    /// Record a power action and its time (before doing it).
    RecordPowerOp {
        /// What is about to be done.
        op: PowerOp,
        /// Now.
        at: SystemTime,
    },
    /// Record a reboot in `RebootStatus` (before doing it): Omni's requested reboot ID is
    /// handled by it, whether the user asked for it or the boot mode must switch, as
    /// upstream records both.
    RecordRebootHandled {
        /// Omni's requested reboot ID.
        reboot_id: String,
        /// When the machine is rebooted; `None` when a request is acknowledged without a
        /// reboot (the machine is off), keeping the time of the last reboot.
        at: Option<SystemTime>,
    },
    /// Record a power-off request as seen; from now on it holds the machine off.
    AcknowledgePowerOffRequest {
        /// Omni's power-off request ID.
        request_id: String,
        /// Omni's wipe ID now.
        wipe_id: String,
    },
    /// BMC: optionally set a one-time PXE boot, then power on.
    PowerOn {
        /// PXE-once in this firmware mode first, or boot as configured.
        pxe_once: Option<BootMode>,
    },
    /// BMC: power off.
    PowerOff,
    /// BMC: optionally set a one-time PXE boot, then power-cycle.
    Reboot {
        /// PXE-once in this firmware mode first, or boot as configured.
        pxe_once: Option<BootMode>,
    },
    /// Write Omni's `InfraMachineStatus`.
    WriteInfraMachineStatus(InfraMachineStatus),
    /// Write the provider's private `MachineStatus` (the live status, which the Go provider
    /// reads when it takes the machine back).
    WriteMachineStatus(super::model::MachineStatus),
    /// Put this provider's finalizer on the `InfraMachine`, so its removal waits for
    /// [`Action::ReleaseMachine`].
    HoldMachine,
    /// Omni removes the machine: optionally reboot it into the agent over PXE (best effort:
    /// a failing BMC does not keep the machine in Omni), then delete the provider's
    /// records of it and lift the finalizer. A machine added again starts afresh (wiped
    /// first).
    ReleaseMachine {
        /// PXE-once in this firmware mode and power-cycle first.
        reboot_into_agent: Option<BootMode>,
    },
}

impl Action {
    /// Touches disks or power: the actions a restart must never repeat by accident.
    pub(crate) fn is_destructive(&self) -> bool {
        matches!(
            self,
            Action::WipeDisks { .. }
                | Action::PowerOn { .. }
                | Action::PowerOff
                | Action::Reboot { .. }
                | Action::ReleaseMachine {
                    reboot_into_agent: Some(_)
                }
        )
    }
}
