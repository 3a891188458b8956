//! The lifecycle predicates (upstream `internal/provider/machine`), each one line of the
//! lifecycle's rules, shared by [`super::reconcile`] and the boot decision.

use ironboot_bmc::PowerState;

use super::model::{Acceptance, InfraMachine, Recorded};

/// Talos was installed since the last wipe: Omni's install event counter is above the one
/// recorded when that wipe completed.
pub(crate) fn installed(infra: &InfraMachine, recorded: &Recorded) -> bool {
    infra.install_event_id > recorded.wipe.last_wipe_install_event_id
}

/// The disks must be wiped: never wiped yet, or Omni's wipe ID differs from the last one
/// recorded. Comparing IDs (not "was it installed?") is what keeps a wipe from looping:
/// once recorded, the same ID never asks again.
pub(crate) fn requires_wipe(infra: &InfraMachine, recorded: &Recorded) -> bool {
    !recorded.wipe.initial_wipe_done || infra.wipe_id != recorded.wipe.last_wipe_id
}

/// The machine must run: allocated, installed, or waiting for a wipe (which needs the
/// agent, so the machine on).
pub(crate) fn requires_power_on(infra: &InfraMachine, recorded: &Recorded) -> bool {
    infra.allocated() || installed(infra, recorded) || requires_wipe(infra, recorded)
}

/// A power-off request holds the machine off until the next deallocation.
pub(crate) fn power_off_hold(infra: &InfraMachine, recorded: &Recorded) -> bool {
    let p = &recorded.power;
    !p.last_power_off_id.is_empty()
        && p.last_power_off_id == infra.power_off_request_id
        && p.wipe_id_at_power_off == infra.wipe_id
}

/// What the machine should boot next time it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootDecision {
    /// Talos in agent mode, over PXE (discovery, wipes).
    AgentPxe,
    /// The cluster's Talos, over PXE (install).
    TalosPxe,
    /// Whatever is on disk.
    TalosDisk,
}

impl BootDecision {
    /// This boot needs a one-time PXE flag set on the BMC first.
    pub(crate) fn needs_pxe(self) -> bool {
        !matches!(self, BootDecision::TalosDisk)
    }
}

/// Upstream's `RequiredBootMode`: rejected machines boot from disk; anything not yet ready
/// for a cluster boots the agent; an allocated machine installs once, then boots its disk.
pub(crate) fn required_boot(
    infra: &InfraMachine,
    recorded: &Recorded,
    bmc_configured: bool,
) -> BootDecision {
    if infra.acceptance == Acceptance::Rejected {
        return BootDecision::TalosDisk;
    }
    if infra.acceptance == Acceptance::Pending
        || !infra.allocated()
        || !bmc_configured
        || requires_wipe(infra, recorded)
    {
        return BootDecision::AgentPxe;
    }
    if installed(infra, recorded) {
        BootDecision::TalosDisk
    } else {
        BootDecision::TalosPxe
    }
}

/// The running system differs from the required one, judged by the agent tunnel: agent
/// wanted but absent, or cluster Talos wanted but the agent still runs. Only meaningful for
/// a machine that is on and must stay on (upstream PR #53: checking it on a powered-off,
/// idle machine rebooted it into the agent over and over).
pub(crate) fn boot_mismatch(boot: BootDecision, agent_connected: bool) -> bool {
    match boot {
        BootDecision::AgentPxe => !agent_connected,
        BootDecision::TalosPxe => agent_connected,
        BootDecision::TalosDisk => false,
    }
}

/// Upstream's power-state preference comparison, kept in one place.
pub(crate) fn prefers_on(infra: &InfraMachine) -> bool {
    infra.preferred_power == PowerState::On
}
