//! Pure translations between Omni's resources and the lifecycle core: the provider's and
//! Omni's specs become a [`lifecycle::Observed`], and each recording [`Action`] becomes a
//! [`Write`] applied to one spec. No I/O: the executor and the store call these, and every
//! field is pinned by the tests below.
//!
//! Where the Go provider's records hold less than the core's model, the mapping keeps the
//! behaviour the rules depend on:
//! - `PowerOperation` stores only ON/OFF and the time of the last power-on: a power-off
//!   keeps the last power-on time. A reboot is stored in `RebootStatus` alone, as upstream
//!   does, and the cooldown runs from the later of the two times.
//! - the "wipe started" intent has no field upstream: it is an annotation on `WipeStatus`
//!   ([`WIPE_STARTED_ANNOTATION`]), which the Go provider ignores.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use ironboot_bmc::{BmcInfo, IpmiInfo, PowerState};
use ironboot_proto::agent::GetPowerManagementResponse;
use ironboot_proto::{baremetal, omni};
use prost_types::Timestamp;

use crate::provider::lifecycle::{
    self, Acceptance, Action, BmcRecord, InfraMachine, InfraMachineStatus, MachineStatus, PowerOp,
    PowerRecord, RebootRecord, Recorded, WipeRecord,
};

/// Annotation on `WipeStatus` holding the wipe ID a wipe was last started for.
pub(crate) const WIPE_STARTED_ANNOTATION: &str = "ironboot.dev/wipe-started-id";

/// The IPMI port when the agent or the operator gave none.
pub(crate) const DEFAULT_IPMI_PORT: u32 = 623;

/// Everything stored in Omni about one machine, as read (each `None` = no such resource).
/// `Debug` shows no BMC password.
#[derive(Clone, PartialEq, Default)]
pub(crate) struct Records {
    /// Omni's `InfraMachine`.
    pub(crate) infra: Option<omni::InfraMachineSpec>,
    /// The operator's `BMCConfig`.
    pub(crate) bmc_config: Option<omni::BmcConfigSpec>,
    /// The provider's `BMCConfiguration`.
    pub(crate) bmc_configuration: Option<baremetal::BmcConfigurationSpec>,
    /// The provider's `WipeStatus`.
    pub(crate) wipe: Option<baremetal::WipeStatusSpec>,
    /// [`WIPE_STARTED_ANNOTATION`] of the `WipeStatus`.
    pub(crate) wipe_started: Option<String>,
    /// The provider's `PowerOperation`.
    pub(crate) power: Option<baremetal::PowerOperationSpec>,
    /// The provider's `RebootStatus`.
    pub(crate) reboot: Option<baremetal::RebootStatusSpec>,
    /// The `InfraMachineStatus` written last.
    pub(crate) status: Option<omni::InfraMachineStatusSpec>,
    /// The provider's private `MachineStatus` (the Go provider's).
    pub(crate) machine_status: Option<baremetal::MachineStatusSpec>,
    /// The `InfraMachine`'s labels (Omni's: its cluster, machine set and role).
    pub(crate) infra_labels: BTreeMap<String, String>,
    /// The `InfraMachineStatus`'s labels.
    pub(crate) status_labels: BTreeMap<String, String>,
    /// The `InfraMachine` is tearing down (Omni removes the machine).
    pub(crate) infra_tearing_down: bool,
    /// This provider's finalizer is on the `InfraMachine`.
    pub(crate) held: bool,
}

/// One resource change derived from an action. `Debug` shows no BMC password.
#[derive(Clone, PartialEq)]
pub(crate) enum Write {
    /// Replace the provider's `BMCConfiguration`.
    BmcConfiguration(baremetal::BmcConfigurationSpec),
    /// Set [`WIPE_STARTED_ANNOTATION`] on `WipeStatus` (created if missing).
    WipeStarted {
        /// Omni's wipe ID.
        wipe_id: String,
    },
    /// Record a completed wipe in `WipeStatus`.
    WipeDone {
        /// Omni's wipe ID.
        wipe_id: String,
        /// Omni's install event counter then.
        install_event_id: u64,
        /// The node token then.
        node_unique_token: String,
    },
    /// Record a power action in `PowerOperation`.
    PowerOp {
        /// The action.
        op: PowerOp,
        /// Its time.
        at: SystemTime,
    },
    /// Record an acknowledged power-off request in `PowerOperation`.
    PowerOffAcknowledged {
        /// Omni's request ID.
        request_id: String,
        /// Omni's wipe ID then.
        wipe_id: String,
    },
    /// Record a reboot, and the reboot request it handled, in `RebootStatus`.
    RebootHandled {
        /// Omni's requested reboot ID.
        reboot_id: String,
        /// When the machine was rebooted; `None` keeps the stored time (a request
        /// acknowledged without a reboot).
        at: Option<SystemTime>,
    },
    /// Replace the private `MachineStatus`.
    MachineStatus(baremetal::MachineStatusSpec),
    /// Replace `InfraMachineStatus`: its spec, and its labels through [`status_labels`].
    Status {
        /// The spec.
        spec: omni::InfraMachineStatusSpec,
        /// The `--machine-labels`.
        labels: BTreeMap<String, String>,
        /// The `InfraMachine`'s labels.
        infra_labels: BTreeMap<String, String>,
    },
    /// Put the provider's finalizer on the `InfraMachine`.
    Hold,
    /// Delete the provider's records of the machine (its `BMCConfiguration`,
    /// `WipeStatus`, `PowerOperation`, `RebootStatus`, `MachineStatus` and
    /// `InfraMachineStatus`, each freed of the provider's finalizers first), then lift the
    /// provider's finalizers from the `InfraMachine`. Idempotent.
    Release,
}

/// A copy of a `BMCConfiguration` without its password, for `Debug`.
fn redacted_stored(spec: &baremetal::BmcConfigurationSpec) -> baremetal::BmcConfigurationSpec {
    let mut s = spec.clone();
    if let Some(i) = s.ipmi.as_mut() {
        i.password = "<redacted>".into();
    }
    s
}

/// A copy of a `BMCConfig` without its password, for `Debug`.
fn redacted_manual(spec: &omni::BmcConfigSpec) -> omni::BmcConfigSpec {
    let mut s = spec.clone();
    if let Some(i) = s.config.as_mut().and_then(|c| c.ipmi.as_mut()) {
        i.password = "<redacted>".into();
    }
    s
}

impl fmt::Debug for Records {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Records")
            .field("infra", &self.infra)
            .field("bmc_config", &self.bmc_config.as_ref().map(redacted_manual))
            .field(
                "bmc_configuration",
                &self.bmc_configuration.as_ref().map(redacted_stored),
            )
            .field("wipe", &self.wipe)
            .field("wipe_started", &self.wipe_started)
            .field("power", &self.power)
            .field("reboot", &self.reboot)
            .field("status", &self.status)
            .field("machine_status", &self.machine_status)
            .field("infra_labels", &self.infra_labels)
            .field("status_labels", &self.status_labels)
            .finish()
    }
}

impl fmt::Debug for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Write::BmcConfiguration(spec) => f
                .debug_tuple("BmcConfiguration")
                .field(&redacted_stored(spec))
                .finish(),
            Write::WipeStarted { wipe_id } => f
                .debug_struct("WipeStarted")
                .field("wipe_id", wipe_id)
                .finish(),
            Write::WipeDone {
                wipe_id,
                install_event_id,
                node_unique_token,
            } => f
                .debug_struct("WipeDone")
                .field("wipe_id", wipe_id)
                .field("install_event_id", install_event_id)
                .field("node_unique_token", node_unique_token)
                .finish(),
            Write::PowerOp { op, at } => f
                .debug_struct("PowerOp")
                .field("op", op)
                .field("at", at)
                .finish(),
            Write::PowerOffAcknowledged {
                request_id,
                wipe_id,
            } => f
                .debug_struct("PowerOffAcknowledged")
                .field("request_id", request_id)
                .field("wipe_id", wipe_id)
                .finish(),
            Write::RebootHandled { reboot_id, at } => f
                .debug_struct("RebootHandled")
                .field("reboot_id", reboot_id)
                .field("at", at)
                .finish(),
            Write::MachineStatus(spec) => f.debug_tuple("MachineStatus").field(spec).finish(),
            Write::Status {
                spec,
                labels,
                infra_labels,
            } => f
                .debug_struct("Status")
                .field("spec", spec)
                .field("labels", labels)
                .field("infra_labels", infra_labels)
                .finish(),
            Write::Hold => f.write_str("Hold"),
            Write::Release => f.write_str("Release"),
        }
    }
}

/// Omni's `InfraMachine` in the core's terms. Unknown enum values read as the safe
/// default (pending: the machine is not touched).
pub(crate) fn infra_machine(spec: &omni::InfraMachineSpec) -> InfraMachine {
    use omni::infra_machine_config_spec::AcceptanceStatus as A;
    use omni::infra_machine_spec::MachinePowerState as P;
    InfraMachine {
        acceptance: match A::try_from(spec.acceptance_status) {
            Ok(A::Accepted) => Acceptance::Accepted,
            Ok(A::Rejected) => Acceptance::Rejected,
            Ok(A::Pending) | Err(_) => Acceptance::Pending,
        },
        cordoned: spec.cordoned,
        preferred_power: match P::try_from(spec.preferred_power_state) {
            Ok(P::PowerStateOn) => PowerState::On,
            Ok(P::PowerStateOff) | Err(_) => PowerState::Off,
        },
        cluster_talos_version: spec.cluster_talos_version.clone(),
        extensions: spec.extensions.clone(),
        wipe_id: spec.wipe_id.clone(),
        install_event_id: spec.install_event_id,
        requested_reboot_id: spec.requested_reboot_id.clone(),
        power_off_request_id: spec.power_off_request_id.clone(),
        node_unique_token: spec.node_unique_token.clone(),
    }
}

/// The operator's `BMCConfig` gives usable credentials (IPMI or the power API).
pub(crate) fn manual_bmc(spec: Option<&omni::BmcConfigSpec>) -> bool {
    spec.and_then(|s| s.config.as_ref())
        .is_some_and(|c| c.ipmi.is_some() || c.api.is_some())
}

/// Where the provider's `BMCConfiguration` came from, if it holds credentials.
pub(crate) fn bmc_record(spec: Option<&baremetal::BmcConfigurationSpec>) -> Option<BmcRecord> {
    let spec = spec?;
    if spec.ipmi.is_none() && spec.api.is_none() {
        return None;
    }
    Some(if spec.manually_configured {
        BmcRecord::Manual
    } else {
        BmcRecord::ViaAgent
    })
}

/// How to reach the machine's BMC: the operator's `BMCConfig` wins over the provider's
/// `BMCConfiguration`; IPMI port 0 means 623.
pub(crate) fn bmc_info(
    manual: Option<&omni::BmcConfigSpec>,
    stored: Option<&baremetal::BmcConfigurationSpec>,
) -> Option<BmcInfo> {
    fn ipmi(address: &str, port: u32, username: &str, password: &str) -> BmcInfo {
        let port = if port == 0 { DEFAULT_IPMI_PORT } else { port };
        BmcInfo::Ipmi(IpmiInfo {
            address: address.to_owned(),
            port: u16::try_from(port).unwrap_or(623),
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }
    if let Some(c) = manual.and_then(|m| m.config.as_ref()) {
        if let Some(i) = &c.ipmi {
            return Some(ipmi(&i.address, i.port, &i.username, &i.password));
        }
        if let Some(a) = &c.api {
            return Some(BmcInfo::Api {
                address: a.address.clone(),
            });
        }
    }
    let s = stored?;
    if let Some(i) = &s.ipmi {
        return Some(ipmi(&i.address, i.port, &i.username, &i.password));
    }
    s.api.as_ref().map(|a| BmcInfo::Api {
        address: a.address.clone(),
    })
}

fn time(t: Option<&Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The provider's records in the core's terms.
pub(crate) fn recorded(records: &Records) -> Recorded {
    let wipe = records.wipe.clone().unwrap_or_default();
    let power = records.power.clone().unwrap_or_default();
    let reboot = records.reboot.clone().unwrap_or_default();
    let last_on = time(power.last_power_on_timestamp.as_ref());
    let last = match baremetal::PowerState::try_from(power.last_power_operation) {
        Ok(baremetal::PowerState::On) => last_on.map(|at| (PowerOp::On, at)),
        Ok(baremetal::PowerState::Off) => {
            Some((PowerOp::Off, last_on.unwrap_or(SystemTime::UNIX_EPOCH)))
        }
        Ok(baremetal::PowerState::Unknown) | Err(_) => None,
    };
    Recorded {
        bmc: bmc_record(records.bmc_configuration.as_ref()),
        wipe: WipeRecord {
            started_wipe_id: records.wipe_started.clone(),
            last_wipe_id: wipe.last_wipe_id,
            last_wipe_install_event_id: wipe.last_wipe_install_event_id,
            initial_wipe_done: wipe.initial_wipe_done,
            wiped_node_unique_token: wipe.wiped_node_unique_token,
        },
        power: PowerRecord {
            last,
            last_power_off_id: power.last_power_off_id,
            wipe_id_at_power_off: power.wipe_id_at_power_off,
        },
        reboot: RebootRecord {
            last_reboot_id: reboot.last_reboot_id,
            last_reboot_at: time(reboot.last_reboot_timestamp.as_ref()),
        },
    }
}

/// `InfraMachineStatus` as the core writes it.
pub(crate) fn status_spec(status: &InfraMachineStatus) -> omni::InfraMachineStatusSpec {
    use omni::infra_machine_status_spec::MachinePowerState as P;
    omni::InfraMachineStatusSpec {
        power_state: match status.power {
            None => P::PowerStateUnknown,
            Some(PowerState::Off) => P::PowerStateOff,
            Some(PowerState::On) => P::PowerStateOn,
        } as i32,
        ready_to_use: status.ready_to_use,
        last_reboot_id: status.last_reboot_id.clone(),
        last_reboot_timestamp: status.last_reboot_at.map(timestamp),
        installed: status.installed,
        wiped_node_unique_token: status.wiped_node_unique_token.clone(),
        last_power_off_id: status.last_power_off_id.clone(),
    }
}

/// `InfraMachineStatus` as read back (the inverse of [`status_spec`]).
pub(crate) fn written_status(spec: &omni::InfraMachineStatusSpec) -> InfraMachineStatus {
    use omni::infra_machine_status_spec::MachinePowerState as P;
    InfraMachineStatus {
        power: match P::try_from(spec.power_state) {
            Ok(P::PowerStateOn) => Some(PowerState::On),
            Ok(P::PowerStateOff) => Some(PowerState::Off),
            Ok(P::PowerStateUnknown) | Err(_) => None,
        },
        ready_to_use: spec.ready_to_use,
        installed: spec.installed,
        wiped_node_unique_token: spec.wiped_node_unique_token.clone(),
        last_reboot_id: spec.last_reboot_id.clone(),
        last_reboot_at: time(spec.last_reboot_timestamp.as_ref()),
        last_power_off_id: spec.last_power_off_id.clone(),
    }
}

/// The private `MachineStatus` as the core writes it.
pub(crate) fn machine_status_spec(status: &MachineStatus) -> baremetal::MachineStatusSpec {
    baremetal::MachineStatusSpec {
        agent_accessible: status.agent_connected,
        power_state: match status.power {
            None => baremetal::PowerState::Unknown,
            Some(PowerState::Off) => baremetal::PowerState::Off,
            Some(PowerState::On) => baremetal::PowerState::On,
        } as i32,
        initialized: status.initialized,
    }
}

/// The private `MachineStatus` as read back (the inverse of [`machine_status_spec`]).
pub(crate) fn stored_status(spec: &baremetal::MachineStatusSpec) -> MachineStatus {
    MachineStatus {
        power: match baremetal::PowerState::try_from(spec.power_state) {
            Ok(baremetal::PowerState::On) => Some(PowerState::On),
            Ok(baremetal::PowerState::Off) => Some(PowerState::Off),
            Ok(baremetal::PowerState::Unknown) | Err(_) => None,
        },
        agent_connected: spec.agent_accessible,
        initialized: spec.initialized,
    }
}

/// One reconcile input from the records and the live status. A machine stays initialized
/// once its stored status says so (its first PXE boot may have been seen before a restart,
/// or by the Go provider).
pub(crate) fn observed(records: &Records, mut status: MachineStatus) -> lifecycle::Observed {
    let stored = records.machine_status.as_ref().map(stored_status);
    status.initialized |= stored.is_some_and(|s| s.initialized);
    let recorded = recorded(records);
    lifecycle::Observed {
        infra: records.infra.as_ref().map(infra_machine),
        manual_bmc: manual_bmc(records.bmc_config.as_ref()),
        cooldown_from: recorded.last_boot(),
        recorded,
        status,
        stored_status: stored,
        written_status: records.status.as_ref().map(written_status),
        held: records.held,
        tearing_down: records.infra.is_some() && records.infra_tearing_down,
        records_left: records.infra.is_none() && has_records(records),
        agent_grace_until: None,
    }
}

/// Omni's own labels: the only ones [`status_labels`] keeps of what it finds.
const OMNI_LABEL_PREFIX: &str = "omni.sidero.dev/";

/// The labels `InfraMachineStatus` takes from its `InfraMachine`: the cluster and machine
/// set the machine is allocated to, and its role.
pub(crate) const COPIED_LABELS: [&str; 4] = [
    "omni.sidero.dev/cluster",
    "omni.sidero.dev/machine-set",
    "omni.sidero.dev/role-controlplane",
    "omni.sidero.dev/role-worker",
];

/// The labels of an `InfraMachineStatus` now labelled `current`, as the Go provider's
/// transform sets them, in order: every label not under `omni.sidero.dev/` is deleted (so
/// a `--machine-labels` entry dropped since goes), the `--machine-labels` are set, and
/// each of [`COPIED_LABELS`] is copied from the `InfraMachine`, or deleted when it has
/// none (a machine back from a cluster loses them).
pub(crate) fn status_labels(
    current: &BTreeMap<String, String>,
    machine_labels: &BTreeMap<String, String>,
    infra_labels: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = current
        .iter()
        .filter(|(k, _)| k.starts_with(OMNI_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend(machine_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    for key in COPIED_LABELS {
        match infra_labels.get(key) {
            Some(v) => labels.insert(key.to_owned(), v.clone()),
            None => labels.remove(key),
        };
    }
    labels
}

/// The stored `InfraMachineStatus` carries other labels than [`status_labels`] gives
/// (the machine joined or left a cluster, or `--machine-labels` changed): it is to be
/// written again even if its spec is current.
pub(crate) fn status_labels_stale(
    records: &Records,
    machine_labels: &BTreeMap<String, String>,
) -> bool {
    records.status.is_some()
        && status_labels(
            &records.status_labels,
            machine_labels,
            &records.infra_labels,
        ) != records.status_labels
}

/// Any record of the provider's about the machine is stored.
fn has_records(records: &Records) -> bool {
    records.bmc_configuration.is_some()
        || records.wipe.is_some()
        || records.power.is_some()
        || records.reboot.is_some()
        || records.status.is_some()
        || records.machine_status.is_some()
}

/// The record an action writes, or `None` for side effects (BMC, agent).
/// `ConfigureBmcViaAgent` writes through [`bmc_configuration_from_agent`] once the agent
/// answered, so it is `None` here too.
pub(crate) fn write_for(
    action: &Action,
    labels: &BTreeMap<String, String>,
    infra_labels: &BTreeMap<String, String>,
) -> Option<Write> {
    Some(match action {
        Action::RecordWipeStarted { wipe_id } => Write::WipeStarted {
            wipe_id: wipe_id.clone(),
        },
        Action::RecordWipeDone {
            wipe_id,
            install_event_id,
            node_unique_token,
        } => Write::WipeDone {
            wipe_id: wipe_id.clone(),
            install_event_id: *install_event_id,
            node_unique_token: node_unique_token.clone(),
        },
        Action::RecordPowerOp { op, at } => Write::PowerOp { op: *op, at: *at },
        Action::RecordRebootHandled { reboot_id, at } => Write::RebootHandled {
            reboot_id: reboot_id.clone(),
            at: *at,
        },
        Action::AcknowledgePowerOffRequest {
            request_id,
            wipe_id,
        } => Write::PowerOffAcknowledged {
            request_id: request_id.clone(),
            wipe_id: wipe_id.clone(),
        },
        Action::WriteMachineStatus(s) => Write::MachineStatus(machine_status_spec(s)),
        Action::WriteInfraMachineStatus(s) => Write::Status {
            spec: status_spec(s),
            labels: labels.clone(),
            infra_labels: infra_labels.clone(),
        },
        Action::HoldMachine => Write::Hold,
        Action::ConfigureBmcViaAgent { .. }
        | Action::WipeDisks { .. }
        | Action::PowerOn { .. }
        | Action::PowerOff
        | Action::Reboot { .. }
        | Action::ReleaseMachine { .. } => return None,
    })
}

/// The `BMCConfiguration` stored after the agent set up the IPMI user: the in-band address
/// and port from GetPowerManagement (port 0 = 623) and the new credentials. `None` when
/// the agent reports no IPMI (its test mode's power API needs an address the agent does
/// not give).
pub(crate) fn bmc_configuration_from_agent(
    answer: &GetPowerManagementResponse,
    username: &str,
    password: &str,
) -> Option<baremetal::BmcConfigurationSpec> {
    let ipmi = answer.ipmi.as_ref()?;
    Some(baremetal::BmcConfigurationSpec {
        ipmi: Some(baremetal::bmc_configuration_spec::Ipmi {
            address: ipmi.address.clone(),
            port: if ipmi.port == 0 {
                DEFAULT_IPMI_PORT
            } else {
                ipmi.port
            },
            username: username.to_owned(),
            password: password.to_owned(),
        }),
        api: None,
        manually_configured: false,
    })
}

/// Applies a write to the records it touches (the store does the same per resource).
#[cfg(test)]
pub(crate) fn apply(records: &mut Records, write: &Write) {
    match write {
        Write::BmcConfiguration(spec) => records.bmc_configuration = Some(spec.clone()),
        Write::WipeStarted { wipe_id } => {
            records.wipe.get_or_insert_with(Default::default);
            records.wipe_started = Some(wipe_id.clone());
        }
        Write::WipeDone { .. } => {
            apply_wipe(records.wipe.get_or_insert_with(Default::default), write)
        }
        Write::PowerOp { .. } | Write::PowerOffAcknowledged { .. } => {
            apply_power(records.power.get_or_insert_with(Default::default), write);
        }
        Write::RebootHandled { .. } => {
            apply_reboot(records.reboot.get_or_insert_with(Default::default), write);
        }
        Write::MachineStatus(spec) => records.machine_status = Some(*spec),
        Write::Status {
            spec,
            labels,
            infra_labels,
        } => {
            records.status = Some(spec.clone());
            records.status_labels = status_labels(&records.status_labels, labels, infra_labels);
        }
        Write::Hold => records.held = true,
        Write::Release => {
            *records = Records {
                infra: records.infra.take(),
                bmc_config: records.bmc_config.take(),
                infra_labels: std::mem::take(&mut records.infra_labels),
                infra_tearing_down: records.infra_tearing_down,
                ..Records::default()
            };
        }
    }
}

/// A [`Write::WipeDone`] on a `WipeStatus` (other writes leave it alone).
pub(crate) fn apply_wipe(spec: &mut baremetal::WipeStatusSpec, write: &Write) {
    if let Write::WipeDone {
        wipe_id,
        install_event_id,
        node_unique_token,
    } = write
    {
        spec.last_wipe_id = wipe_id.clone();
        spec.last_wipe_install_event_id = *install_event_id;
        spec.initial_wipe_done = true;
        spec.wiped_node_unique_token = node_unique_token.clone();
    }
}

/// A [`Write::PowerOp`] or [`Write::PowerOffAcknowledged`] on a `PowerOperation`.
pub(crate) fn apply_power(spec: &mut baremetal::PowerOperationSpec, write: &Write) {
    match write {
        Write::PowerOp { op, at } => match op {
            PowerOp::On => {
                spec.last_power_operation = baremetal::PowerState::On as i32;
                spec.last_power_on_timestamp = Some(timestamp(*at));
            }
            PowerOp::Off => spec.last_power_operation = baremetal::PowerState::Off as i32,
        },
        Write::PowerOffAcknowledged {
            request_id,
            wipe_id,
        } => {
            spec.last_power_off_id = request_id.clone();
            spec.wipe_id_at_power_off = wipe_id.clone();
        }
        _ => {}
    }
}

/// A [`Write::RebootHandled`] on a `RebootStatus`.
pub(crate) fn apply_reboot(spec: &mut baremetal::RebootStatusSpec, write: &Write) {
    if let Write::RebootHandled { reboot_id, at } = write {
        spec.last_reboot_id = reboot_id.clone();
        if let Some(at) = at {
            spec.last_reboot_timestamp = Some(timestamp(*at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::lifecycle::Secret;
    use omni::infra_machine_config_spec::AcceptanceStatus;
    use omni::infra_machine_spec::MachinePowerState as Preferred;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The Go provider's label transform, row by row: (what, labels on the status now,
    /// `--machine-labels`, the InfraMachine's labels, the labels written).
    #[test]
    fn status_labels_table() {
        type Row = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static [(&'static str, &'static str)],
            &'static [(&'static str, &'static str)],
            &'static [(&'static str, &'static str)],
        );
        const PROVIDER: (&str, &str) = ("omni.sidero.dev/infra-provider-id", "bare-metal");
        const CLUSTER: (&str, &str) = ("omni.sidero.dev/cluster", "c1");
        const SET: (&str, &str) = ("omni.sidero.dev/machine-set", "c1-workers");
        const WORKER: (&str, &str) = ("omni.sidero.dev/role-worker", "");
        const CONTROL: (&str, &str) = ("omni.sidero.dev/role-controlplane", "");
        let rows: &[Row] = &[
            (
                "a new status: the machine labels",
                &[],
                &[("rack", "a1")],
                &[],
                &[("rack", "a1")],
            ),
            (
                "Omni's stamp stays",
                &[PROVIDER],
                &[("rack", "a1")],
                &[],
                &[PROVIDER, ("rack", "a1")],
            ),
            (
                "a machine label dropped since goes, a changed one is replaced",
                &[PROVIDER, ("old", "x"), ("rack", "a0")],
                &[("rack", "a1")],
                &[],
                &[PROVIDER, ("rack", "a1")],
            ),
            (
                "no machine labels: only Omni's labels stay",
                &[PROVIDER, ("rack", "a1")],
                &[],
                &[],
                &[PROVIDER],
            ),
            (
                "allocated: cluster, machine set and role are copied",
                &[PROVIDER],
                &[("rack", "a1")],
                &[
                    PROVIDER,
                    CLUSTER,
                    SET,
                    WORKER,
                    ("omni.sidero.dev/other", "y"),
                    ("user", "z"),
                ],
                &[PROVIDER, CLUSTER, SET, WORKER, ("rack", "a1")],
            ),
            (
                "a new role replaces the old one",
                &[PROVIDER, CLUSTER, SET, WORKER],
                &[],
                &[CLUSTER, SET, CONTROL],
                &[PROVIDER, CLUSTER, SET, CONTROL],
            ),
            (
                "deallocated: the copied labels are deleted",
                &[PROVIDER, CLUSTER, SET, WORKER, ("rack", "a1")],
                &[("rack", "a1")],
                &[PROVIDER],
                &[PROVIDER, ("rack", "a1")],
            ),
            (
                "other labels under omni.sidero.dev/ stay",
                &[PROVIDER, ("omni.sidero.dev/other", "y"), ("user", "z")],
                &[],
                &[],
                &[PROVIDER, ("omni.sidero.dev/other", "y")],
            ),
            (
                "a machine label may set a copied key; the InfraMachine's value wins",
                &[],
                &[("omni.sidero.dev/cluster", "mine")],
                &[CLUSTER],
                &[CLUSTER],
            ),
            (
                "a machine label on a copied key the InfraMachine lacks is deleted",
                &[],
                &[("omni.sidero.dev/cluster", "mine")],
                &[],
                &[],
            ),
        ];
        for (what, current, machine, infra, want) in rows {
            let got = status_labels(&labels(current), &labels(machine), &labels(infra));
            assert_eq!(got, labels(want), "{what}");
            // Applied again to its own result, the transform changes nothing: a written
            // status is not written again for its labels.
            let records = Records {
                status: Some(Default::default()),
                status_labels: got.clone(),
                infra_labels: labels(infra),
                ..Records::default()
            };
            assert!(!status_labels_stale(&records, &labels(machine)), "{what}");
        }
        let stale = Records {
            status: Some(Default::default()),
            status_labels: labels(&[PROVIDER, CLUSTER]),
            ..Records::default()
        };
        assert!(status_labels_stale(&stale, &BTreeMap::new()));
        let no_status = Records {
            status_labels: labels(&[("user", "z")]),
            ..Records::default()
        };
        assert!(!status_labels_stale(&no_status, &BTreeMap::new()));
    }

    #[test]
    fn infra_machine_field_by_field() {
        let spec = omni::InfraMachineSpec {
            preferred_power_state: Preferred::PowerStateOn as i32,
            acceptance_status: AcceptanceStatus::Accepted as i32,
            cluster_talos_version: "v1.9.0".into(),
            extensions: vec!["siderolabs/iscsi-tools".into()],
            wipe_id: "w1".into(),
            extra_kernel_args: "ignored".into(),
            requested_reboot_id: "r1".into(),
            cordoned: true,
            install_event_id: 7,
            node_unique_token: "tok".into(),
            power_off_request_id: "p1".into(),
        };
        let m = infra_machine(&spec);
        assert_eq!(
            m,
            InfraMachine {
                acceptance: Acceptance::Accepted,
                cordoned: true,
                preferred_power: PowerState::On,
                cluster_talos_version: "v1.9.0".into(),
                extensions: vec!["siderolabs/iscsi-tools".into()],
                wipe_id: "w1".into(),
                install_event_id: 7,
                requested_reboot_id: "r1".into(),
                power_off_request_id: "p1".into(),
                node_unique_token: "tok".into(),
            }
        );
        let rejected = omni::InfraMachineSpec {
            acceptance_status: AcceptanceStatus::Rejected as i32,
            ..Default::default()
        };
        assert_eq!(infra_machine(&rejected).acceptance, Acceptance::Rejected);
        let defaults = infra_machine(&omni::InfraMachineSpec::default());
        assert_eq!(defaults, InfraMachine::default());
        // An enum value from a newer Omni must not accept a machine or power it on.
        let future = omni::InfraMachineSpec {
            acceptance_status: 9,
            preferred_power_state: 9,
            ..Default::default()
        };
        let f = infra_machine(&future);
        assert_eq!(f.acceptance, Acceptance::Pending);
        assert_eq!(f.preferred_power, PowerState::Off);
    }

    fn stored_ipmi(manual: bool) -> baremetal::BmcConfigurationSpec {
        baremetal::BmcConfigurationSpec {
            ipmi: Some(baremetal::bmc_configuration_spec::Ipmi {
                address: "10.0.0.9".into(),
                port: 0,
                username: "talos-agent".into(),
                password: "s3cret".into(),
            }),
            api: None,
            manually_configured: manual,
        }
    }

    #[test]
    fn bmc_sources() {
        assert_eq!(bmc_record(None), None);
        assert_eq!(
            bmc_record(Some(&baremetal::BmcConfigurationSpec::default())),
            None
        );
        assert_eq!(
            bmc_record(Some(&stored_ipmi(false))),
            Some(BmcRecord::ViaAgent)
        );
        assert_eq!(
            bmc_record(Some(&stored_ipmi(true))),
            Some(BmcRecord::Manual)
        );

        assert!(!manual_bmc(None));
        assert!(!manual_bmc(Some(&omni::BmcConfigSpec::default())));
        let manual = omni::BmcConfigSpec {
            config: Some(omni::InfraMachineBmcConfigSpec {
                ipmi: Some(omni::infra_machine_bmc_config_spec::Ipmi {
                    address: "192.0.2.1".into(),
                    port: 6230,
                    username: "admin".into(),
                    password: "pw".into(),
                }),
                api: None,
            }),
        };
        assert!(manual_bmc(Some(&manual)));

        // Stored credentials, port 0 read as 623.
        assert_eq!(
            bmc_info(None, Some(&stored_ipmi(false))),
            Some(BmcInfo::Ipmi(IpmiInfo {
                address: "10.0.0.9".into(),
                port: 623,
                username: "talos-agent".into(),
                password: "s3cret".into(),
            }))
        );
        // The operator's BMCConfig wins.
        assert_eq!(
            bmc_info(Some(&manual), Some(&stored_ipmi(false))),
            Some(BmcInfo::Ipmi(IpmiInfo {
                address: "192.0.2.1".into(),
                port: 6230,
                username: "admin".into(),
                password: "pw".into(),
            }))
        );
        let api = baremetal::BmcConfigurationSpec {
            api: Some(baremetal::bmc_configuration_spec::Api {
                address: "127.0.0.1:9000".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            bmc_info(None, Some(&api)),
            Some(BmcInfo::Api {
                address: "127.0.0.1:9000".into()
            })
        );
        assert_eq!(bmc_info(None, None), None);
    }

    #[test]
    fn recorded_field_by_field() {
        let records = Records {
            bmc_configuration: Some(stored_ipmi(false)),
            wipe: Some(baremetal::WipeStatusSpec {
                last_wipe_id: "w1".into(),
                last_wipe_install_event_id: 3,
                initial_wipe_done: true,
                wiped_node_unique_token: "tok".into(),
            }),
            wipe_started: Some("w2".into()),
            power: Some(baremetal::PowerOperationSpec {
                last_power_operation: baremetal::PowerState::On as i32,
                last_power_on_timestamp: Some(Timestamp {
                    seconds: 100,
                    nanos: 5,
                }),
                last_power_off_id: "p1".into(),
                wipe_id_at_power_off: "w1".into(),
            }),
            reboot: Some(baremetal::RebootStatusSpec {
                last_reboot_id: "r1".into(),
                last_reboot_timestamp: Some(Timestamp {
                    seconds: 200,
                    nanos: 0,
                }),
            }),
            ..Records::default()
        };
        let r = recorded(&records);
        assert_eq!(
            r,
            Recorded {
                bmc: Some(BmcRecord::ViaAgent),
                wipe: WipeRecord {
                    started_wipe_id: Some("w2".into()),
                    last_wipe_id: "w1".into(),
                    last_wipe_install_event_id: 3,
                    initial_wipe_done: true,
                    wiped_node_unique_token: "tok".into(),
                },
                power: PowerRecord {
                    last: Some((PowerOp::On, at(100) + Duration::from_nanos(5))),
                    last_power_off_id: "p1".into(),
                    wipe_id_at_power_off: "w1".into(),
                },
                reboot: RebootRecord {
                    last_reboot_id: "r1".into(),
                    last_reboot_at: Some(at(200)),
                },
            }
        );
        // Nothing stored: the core's defaults (never wiped, no power action).
        assert_eq!(recorded(&Records::default()), Recorded::default());
        // Powered off: the cooldown (from power-ons only) no longer applies.
        let off = Records {
            power: Some(baremetal::PowerOperationSpec {
                last_power_operation: baremetal::PowerState::Off as i32,
                ..Default::default()
            }),
            ..Records::default()
        };
        assert_eq!(
            recorded(&off).power.last,
            Some((PowerOp::Off, SystemTime::UNIX_EPOCH))
        );
    }

    #[test]
    fn status_round_trips() {
        for power in [None, Some(PowerState::On), Some(PowerState::Off)] {
            let s = InfraMachineStatus {
                power,
                ready_to_use: true,
                installed: true,
                wiped_node_unique_token: "tok".into(),
                last_reboot_id: "r1".into(),
                last_reboot_at: Some(at(42)),
                last_power_off_id: "p1".into(),
            };
            let spec = status_spec(&s);
            assert_eq!(written_status(&spec), s);
        }
        let spec = status_spec(&InfraMachineStatus {
            power: Some(PowerState::On),
            ..Default::default()
        });
        assert_eq!(
            spec.power_state,
            omni::infra_machine_status_spec::MachinePowerState::PowerStateOn as i32
        );
        assert_eq!(spec.last_reboot_timestamp, None);
    }

    #[test]
    fn every_record_action_round_trips_through_the_records() {
        let labels = BTreeMap::from([("rack".to_owned(), "r1".to_owned())]);
        let mut records = Records::default();
        let actions = [
            Action::RecordWipeStarted {
                wipe_id: "w1".into(),
            },
            Action::RecordWipeDone {
                wipe_id: "w1".into(),
                install_event_id: 4,
                node_unique_token: "tok".into(),
            },
            Action::AcknowledgePowerOffRequest {
                request_id: "p1".into(),
                wipe_id: "w1".into(),
            },
            Action::RecordPowerOp {
                op: PowerOp::On,
                at: at(300),
            },
            Action::RecordRebootHandled {
                reboot_id: "r9".into(),
                at: Some(at(301)),
            },
            Action::WriteInfraMachineStatus(InfraMachineStatus {
                ready_to_use: true,
                ..Default::default()
            }),
            Action::WriteMachineStatus(MachineStatus {
                power: Some(PowerState::Off),
                agent_connected: true,
                initialized: true,
            }),
            // A request acknowledged without a reboot keeps the time of the last one.
            Action::RecordRebootHandled {
                reboot_id: "r10".into(),
                at: None,
            },
        ];
        for a in &actions {
            let w = write_for(a, &labels, &BTreeMap::new()).expect("a record action writes");
            apply(&mut records, &w);
        }
        let r = recorded(&records);
        assert_eq!(r.wipe.started_wipe_id.as_deref(), Some("w1"));
        assert_eq!(r.wipe.last_wipe_id, "w1");
        assert_eq!(r.wipe.last_wipe_install_event_id, 4);
        assert!(r.wipe.initial_wipe_done);
        assert_eq!(r.wipe.wiped_node_unique_token, "tok");
        assert_eq!(r.power.last_power_off_id, "p1");
        assert_eq!(r.power.wipe_id_at_power_off, "w1");
        // A reboot is stored in RebootStatus alone; the cooldown runs from the later of
        // the power-on and the reboot.
        assert_eq!(r.power.last, Some((PowerOp::On, at(300))));
        assert_eq!(r.reboot.last_reboot_id, "r10");
        assert_eq!(r.reboot.last_reboot_at, Some(at(301)));
        assert_eq!(r.last_boot(), Some(at(301)));
        assert!(records.status.as_ref().is_some_and(|s| s.ready_to_use));
        assert_eq!(
            records.machine_status,
            Some(baremetal::MachineStatusSpec {
                agent_accessible: true,
                power_state: baremetal::PowerState::Off as i32,
                initialized: true,
            })
        );

        // A power-off keeps the last power-on time.
        let mut p = records.power.clone().unwrap_or_default();
        apply_power(
            &mut p,
            &Write::PowerOp {
                op: PowerOp::Off,
                at: at(900),
            },
        );
        assert_eq!(p.last_power_operation, baremetal::PowerState::Off as i32);
        assert_eq!(p.last_power_on_timestamp.map(|t| t.seconds), Some(300));

        match write_for(&actions[5], &labels, &BTreeMap::new()) {
            Some(Write::Status { labels: l, .. }) => assert_eq!(l, labels),
            other => panic!("unexpected {other:?}"),
        }
        for side_effect in [
            Action::WipeDisks { zeroes: false },
            Action::PowerOff,
            Action::PowerOn { pxe_once: None },
            Action::Reboot { pxe_once: None },
            Action::ConfigureBmcViaAgent {
                username: "talos-agent".into(),
                password: Secret::new("x"),
            },
        ] {
            assert_eq!(
                write_for(&side_effect, &labels, &BTreeMap::new()),
                None,
                "{side_effect:?}"
            );
        }
    }

    #[test]
    fn agent_bmc_configuration() {
        use ironboot_proto::agent::get_power_management_response as g;
        let answer = GetPowerManagementResponse {
            ipmi: Some(g::Ipmi {
                address: "10.1.1.1".into(),
                port: 0,
                user_exists: false,
            }),
            api: None,
        };
        let spec = bmc_configuration_from_agent(&answer, "talos-agent", "pw").expect("ipmi");
        let i = spec.ipmi.as_ref().expect("ipmi");
        assert_eq!(
            (
                i.address.as_str(),
                i.port,
                i.username.as_str(),
                i.password.as_str()
            ),
            ("10.1.1.1", 623, "talos-agent", "pw")
        );
        assert!(!spec.manually_configured);
        assert_eq!(bmc_record(Some(&spec)), Some(BmcRecord::ViaAgent));
        let api_only = GetPowerManagementResponse {
            ipmi: None,
            api: Some(g::Api {}),
        };
        assert_eq!(
            bmc_configuration_from_agent(&api_only, "talos-agent", "pw"),
            None
        );
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let manual = omni::BmcConfigSpec {
            config: Some(omni::InfraMachineBmcConfigSpec {
                ipmi: Some(omni::infra_machine_bmc_config_spec::Ipmi {
                    address: "192.0.2.1".into(),
                    port: 623,
                    username: "admin".into(),
                    password: "manual-Secret-1".into(),
                }),
                api: None,
            }),
        };
        let mut stored = stored_ipmi(false);
        if let Some(i) = stored.ipmi.as_mut() {
            i.password = "stored-Secret-2".into();
        }
        let records = Records {
            bmc_config: Some(manual),
            bmc_configuration: Some(stored.clone()),
            ..Records::default()
        };
        let shown = format!("{records:?} {:?}", Write::BmcConfiguration(stored));
        assert!(!shown.contains("manual-Secret-1"), "{shown}");
        assert!(!shown.contains("stored-Secret-2"), "{shown}");
        assert!(
            shown.contains("192.0.2.1") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn observed_composes_everything() {
        let records = Records {
            infra: Some(omni::InfraMachineSpec {
                acceptance_status: AcceptanceStatus::Accepted as i32,
                ..Default::default()
            }),
            status: Some(status_spec(&InfraMachineStatus::default())),
            ..Records::default()
        };
        let live = MachineStatus {
            power: Some(PowerState::On),
            agent_connected: true,
            initialized: true,
        };
        let o = observed(&records, live);
        assert_eq!(o.infra.map(|i| i.acceptance), Some(Acceptance::Accepted));
        assert!(!o.manual_bmc);
        assert_eq!(o.status, live);
        assert_eq!(o.written_status, Some(InfraMachineStatus::default()));
    }
}
