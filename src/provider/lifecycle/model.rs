//! The inputs of [`super::reconcile`]: small plain structs, independent of the protobuf
//! types, so the rules read as they are stated and the executor does the mapping once.

use std::time::{Duration, SystemTime};

use ironboot_bmc::{BootMode, PowerState};

use super::action::Secret;

/// Omni's acceptance of a machine (`InfraMachineSpec.acceptance_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Acceptance {
    /// Not yet accepted by an operator: the provider must not touch its disks or power.
    #[default]
    Pending,
    /// Accepted: the provider owns the machine's lifecycle.
    Accepted,
    /// Rejected: left alone for good (booted from disk by the boot decision).
    Rejected,
}

/// What Omni says about one machine (`infra.Machine` in the `infra-provider` namespace).
/// Empty strings mean "not set", as in the protobuf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InfraMachine {
    /// Pending, accepted or rejected.
    pub(crate) acceptance: Acceptance,
    /// Cordoned by an operator: the provider leaves the machine alone.
    pub(crate) cordoned: bool,
    /// The power state Omni prefers. Omni forces `On` until it has collected the
    /// machine's information (upstream issue #55), so honouring it is what keeps us from
    /// powering off too early.
    pub(crate) preferred_power: PowerState,
    /// Non-empty while the machine is allocated to a cluster (the cluster's Talos version).
    pub(crate) cluster_talos_version: String,
    /// Extensions of the cluster's schematic (for the boot decision, not used here).
    pub(crate) extensions: Vec<String>,
    /// Changes (to a fresh UUID) each time Omni wants the disks wiped (deallocation).
    pub(crate) wipe_id: String,
    /// Counts Talos install/boot events; above the count recorded at the last wipe means
    /// "installed".
    pub(crate) install_event_id: u64,
    /// A user's reboot request; a new value asks for one reboot.
    pub(crate) requested_reboot_id: String,
    /// A user's power-off request (Omni powers the node off through Talos; we must then
    /// keep it off).
    pub(crate) power_off_request_id: String,
    /// The node's unique token, echoed back once its disks are wiped.
    pub(crate) node_unique_token: String,
}

impl Default for InfraMachine {
    /// Omni's defaults: pending, preferred power off, nothing requested.
    fn default() -> Self {
        Self {
            acceptance: Acceptance::Pending,
            cordoned: false,
            preferred_power: PowerState::Off,
            cluster_talos_version: String::new(),
            extensions: Vec::new(),
            wipe_id: String::new(),
            install_event_id: 0,
            requested_reboot_id: String::new(),
            power_off_request_id: String::new(),
            node_unique_token: String::new(),
        }
    }
}

impl InfraMachine {
    /// Allocated to a cluster.
    pub(crate) fn allocated(&self) -> bool {
        !self.cluster_talos_version.is_empty()
    }
}

/// Live status of a machine, as polled from its BMC and agent tunnel and updated by events
/// (upstream's private `MachineStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MachineStatus {
    /// Last power state read from the BMC; `None` until the first successful poll.
    pub(crate) power: Option<PowerState>,
    /// The metal agent's tunnel is open (the machine runs Talos in agent mode).
    pub(crate) agent_connected: bool,
    /// The machine has PXE-booted through this provider at least once.
    pub(crate) initialized: bool,
}

/// Events that change the status between polls and wake the loop at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The machine fetched `/ipxe/boot.ipxe`.
    PxeBoot,
    /// The agent opened its reverse tunnel.
    TunnelConnected,
    /// The agent's tunnel closed.
    TunnelClosed,
    /// A BMC poll answered.
    PowerPolled(PowerState),
}

/// Folds an event into the status. A PXE boot or an open tunnel proves the machine is on,
/// whatever the last poll said, so the loop does not act on a stale "off".
pub(crate) fn apply_event(status: MachineStatus, event: Event) -> MachineStatus {
    let mut s = status;
    match event {
        Event::PxeBoot => {
            s.initialized = true;
            s.power = Some(PowerState::On);
        }
        Event::TunnelConnected => {
            s.agent_connected = true;
            s.power = Some(PowerState::On);
        }
        Event::TunnelClosed => s.agent_connected = false,
        Event::PowerPolled(p) => s.power = Some(p),
    }
    s
}

/// Where the BMC credentials came from (upstream's private `BMCConfiguration`). The
/// credentials themselves stay with the executor: the rules only need to know one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BmcRecord {
    /// Set up through the agent by this provider (IPMI user and generated password).
    ViaAgent,
    /// Copied from the operator's `BMCConfig` in Omni.
    Manual,
}

/// Wipe progress (upstream's private `WipeStatus`, plus the "started" intent record).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct WipeRecord {
    /// Recorded before a wipe is sent: a restart that finds it equal to Omni's wipe ID and
    /// different from `last_wipe_id` knows a wipe was interrupted.
    pub(crate) started_wipe_id: Option<String>,
    /// The wipe ID of the last completed wipe.
    pub(crate) last_wipe_id: String,
    /// Omni's install event counter when that wipe completed.
    pub(crate) last_wipe_install_event_id: u64,
    /// At least one wipe completed (the first wipe ID is the empty string, so the ID alone
    /// cannot tell).
    pub(crate) initial_wipe_done: bool,
    /// The node token seen at the last wipe.
    pub(crate) wiped_node_unique_token: String,
}

/// The last provider power action (upstream's private `PowerOperation`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PowerRecord {
    /// What was done last, and when (a power-off keeps the time of the last power-on).
    pub(crate) last: Option<(super::action::PowerOp, SystemTime)>,
    /// The power-off request acknowledged last.
    pub(crate) last_power_off_id: String,
    /// Omni's wipe ID when that request was acknowledged: a later deallocation (new wipe
    /// ID) ends the request's hold on power-on.
    pub(crate) wipe_id_at_power_off: String,
}

/// The last reboot and the last handled reboot request (upstream's private
/// `RebootStatus`, written on every reboot the provider makes, mode switches included).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RebootRecord {
    /// The requested reboot ID handled last.
    pub(crate) last_reboot_id: String,
    /// When the provider last rebooted the machine.
    pub(crate) last_reboot_at: Option<SystemTime>,
}

/// Everything the provider recorded in Omni for one machine: the only memory that survives
/// a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Recorded {
    /// BMC credentials, if configured.
    pub(crate) bmc: Option<BmcRecord>,
    /// Wipe progress.
    pub(crate) wipe: WipeRecord,
    /// Power actions.
    pub(crate) power: PowerRecord,
    /// Reboots and reboot requests.
    pub(crate) reboot: RebootRecord,
}

impl Recorded {
    /// When the provider last started the machine: the later of its last power-on (while
    /// "on" is the last power action) and its last reboot. The cooldown of
    /// `--min-reboot-interval` runs from here, as upstream's does.
    pub(crate) fn last_boot(&self) -> Option<SystemTime> {
        let powered_on = match self.power.last {
            Some((super::action::PowerOp::On, at)) => Some(at),
            _ => None,
        };
        powered_on.max(self.reboot.last_reboot_at)
    }
}

/// One machine as seen by one reconcile pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Observed {
    /// Omni's view; `None` until Omni created it (the agent joined) or after removal.
    pub(crate) infra: Option<InfraMachine>,
    /// The operator gave BMC credentials in Omni (`infra.BMCConfig`).
    pub(crate) manual_bmc: bool,
    /// The provider's records.
    pub(crate) recorded: Recorded,
    /// Live status.
    pub(crate) status: MachineStatus,
    /// The private `MachineStatus` record as stored (`None`: none yet), written again
    /// whenever the live status differs, so that the Go provider can take the machine back.
    pub(crate) stored_status: Option<MachineStatus>,
    /// [`Recorded::last_boot`] as the cooldown measures it: the executor moves it onto its
    /// monotonic clock, so a wall clock that jumps neither ends nor stretches the cooldown.
    pub(crate) cooldown_from: Option<SystemTime>,
    /// The `InfraMachineStatus` currently in Omni, to write only on change.
    pub(crate) written_status: Option<super::action::InfraMachineStatus>,
    /// This provider's finalizer is on the `InfraMachine` (its records are not released).
    pub(crate) held: bool,
    /// Omni is removing the machine (the `InfraMachine` is tearing down).
    pub(crate) tearing_down: bool,
    /// Omni no longer knows the machine, yet records of the provider's about it remain (a
    /// release found one held by another party's finalizer).
    pub(crate) records_left: bool,
    /// Until then an absent agent tunnel proves nothing: this provider started recently
    /// and the agent may not have reconnected yet (its gRPC backoff). `None`: no grace.
    pub(crate) agent_grace_until: Option<SystemTime>,
}

/// The command-line policy the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `--min-reboot-interval`: no power-off or reboot sooner than this after the last
    /// provider power-on or reboot.
    pub(crate) min_reboot_interval: Duration,
    /// `--wipe-with-zeroes`.
    pub(crate) wipe_with_zeroes: bool,
    /// `--ipmi-pxe-boot-mode`: the firmware mode for PXE-once.
    pub(crate) pxe_boot_mode: BootMode,
    /// How long after the provider starts an agent gets to reconnect before its absence
    /// counts (a machine that should run the agent is rebooted into it only after that).
    pub(crate) agent_reconnect_grace: Duration,
}

/// The longest [`Policy::agent_reconnect_grace`]: gRPC's reconnect backoff tops out at two
/// minutes, so every agent has redialled by then.
pub(crate) const MAX_AGENT_RECONNECT_GRACE: Duration = Duration::from_secs(120);

impl Policy {
    /// The policy of the command line: the agents get `--min-reboot-interval` to
    /// reconnect after a start (the time a machine gets to boot), at most
    /// [`MAX_AGENT_RECONNECT_GRACE`].
    pub fn new(
        min_reboot_interval: Duration,
        wipe_with_zeroes: bool,
        pxe_boot_mode: BootMode,
    ) -> Self {
        Self {
            min_reboot_interval,
            wipe_with_zeroes,
            pxe_boot_mode,
            agent_reconnect_grace: min_reboot_interval.min(MAX_AGENT_RECONNECT_GRACE),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::new(Duration::from_secs(15 * 60), false, BootMode::Uefi)
    }
}

/// Fresh secrets, injected so the core stays deterministic under test. The executor's
/// implementation draws from the OS random source.
pub(crate) trait SecretSource {
    /// A new BMC password (upstream: 16 alphanumeric characters).
    fn bmc_password(&mut self) -> Secret;
}
