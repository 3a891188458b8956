//! One reconcile pass for one machine.
//!
//! A pass takes at most one step that changes the records (configure the BMC, wipe,
//! acknowledge a power-off request, one power action). The executor runs the step and
//! calls [`reconcile`] again at once, so every decision is made from freshly recorded
//! state rather than from what the previous pass expected to happen.

use std::time::SystemTime;

use super::action::{Action, InfraMachineStatus, PowerOp};
use super::model::{Acceptance, Observed, Policy, SecretSource};
use super::rules::{
    BootDecision, boot_mismatch, installed, power_off_hold, prefers_on, required_boot,
    requires_power_on, requires_wipe,
};
use ironboot_bmc::PowerState;

/// The IPMI user the provider creates through the agent (upstream's constant, so machines
/// move between the Go provider and ironboot without a second user).
pub(crate) const AGENT_BMC_USERNAME: &str = "talos-agent";

/// The result of a pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    /// Run in order; stop at the first failure.
    pub(crate) actions: Vec<Action>,
    /// Reconcile again at this time even without an event (a cooldown ends).
    pub(crate) wake_at: Option<SystemTime>,
}

/// Decides what to do with one machine now.
///
/// Cordoned, rejected and pending machines, and machines Omni does not (yet) know, are left
/// alone: no wipe, no power action, no status write (only the finalizer that lets the
/// provider clean up when Omni removes the machine).
pub(crate) fn reconcile(
    observed: &Observed,
    policy: &Policy,
    now: SystemTime,
    secrets: &mut dyn SecretSource,
) -> Plan {
    let mut plan = Plan::default();
    let Some(infra) = &observed.infra else {
        if observed.records_left {
            // A release left records another party held: Omni has let the machine go
            // since, and what is left is deleted now.
            plan.actions.push(Action::ReleaseMachine {
                reboot_into_agent: None,
            });
        }
        return plan;
    };
    if observed.tearing_down {
        if observed.held {
            // Upstream: a machine not running the agent is sent back to it, so that it
            // shows up in Omni again as a new machine.
            let bmc_configured = observed.manual_bmc || observed.recorded.bmc.is_some();
            let running_other =
                observed.status.power == Some(PowerState::On) && !observed.status.agent_connected;
            plan.actions.push(Action::ReleaseMachine {
                reboot_into_agent: (bmc_configured && running_other)
                    .then_some(policy.pxe_boot_mode),
            });
        }
        return plan;
    }
    if !observed.held {
        plan.actions.push(Action::HoldMachine);
    }
    // Every machine Omni knows has its private status record, as upstream keeps one
    // (whatever the acceptance): the Go provider needs it to take the machine back.
    if observed.stored_status != Some(observed.status) {
        plan.actions
            .push(Action::WriteMachineStatus(observed.status));
    }
    if infra.acceptance != Acceptance::Accepted || infra.cordoned {
        return plan;
    }
    let rec = &observed.recorded;
    let status = &observed.status;
    let bmc_configured = observed.manual_bmc || rec.bmc.is_some();
    let wipe_needed = requires_wipe(infra, rec);

    let visible = InfraMachineStatus {
        power: status.power,
        ready_to_use: bmc_configured && !wipe_needed,
        installed: installed(infra, rec),
        wiped_node_unique_token: rec.wipe.wiped_node_unique_token.clone(),
        last_reboot_id: rec.reboot.last_reboot_id.clone(),
        last_reboot_at: rec.reboot.last_reboot_at,
        last_power_off_id: rec.power.last_power_off_id.clone(),
    };
    if observed.written_status.as_ref() != Some(&visible) {
        plan.actions.push(Action::WriteInfraMachineStatus(visible));
    }

    if !infra.power_off_request_id.is_empty()
        && infra.power_off_request_id != rec.power.last_power_off_id
    {
        plan.actions.push(Action::AcknowledgePowerOffRequest {
            request_id: infra.power_off_request_id.clone(),
            wipe_id: infra.wipe_id.clone(),
        });
        return plan;
    }

    // Manual credentials from Omni win and need no agent; otherwise set them up once.
    if !bmc_configured && status.agent_connected {
        plan.actions.push(Action::ConfigureBmcViaAgent {
            username: AGENT_BMC_USERNAME.to_owned(),
            password: secrets.bmc_password(),
        });
        return plan;
    }

    if wipe_needed && status.agent_connected {
        // Record before, so a restart knows a wipe was under way; record after, so a wipe
        // interrupted by a crash is sent again (at-least-once: a half-wiped disk must never
        // be handed to a cluster; the agent joins a repeated call to a wipe in flight).
        if rec.wipe.started_wipe_id.as_deref() != Some(infra.wipe_id.as_str()) {
            plan.actions.push(Action::RecordWipeStarted {
                wipe_id: infra.wipe_id.clone(),
            });
        }
        plan.actions.push(Action::WipeDisks {
            zeroes: policy.wipe_with_zeroes,
        });
        plan.actions.push(Action::RecordWipeDone {
            wipe_id: infra.wipe_id.clone(),
            install_event_id: infra.install_event_id,
            node_unique_token: infra.node_unique_token.clone(),
        });
        return plan;
    }

    // Power needs a BMC and a known power state: never act on a guess.
    let Some(power) = status.power else {
        return plan;
    };
    if !bmc_configured {
        return plan;
    }

    let boot = required_boot(infra, rec, bmc_configured);
    let pxe_once = boot.needs_pxe().then_some(policy.pxe_boot_mode);
    let must_run = requires_power_on(infra, rec);
    // The cooldown runs from the provider's last power-on or reboot: the machine needs
    // that long to boot and show up (agent tunnel, Talos events) before its state means
    // anything. Without it, "agent expected but absent" right after a power-on reboots
    // the machine again and again.
    let cooldown_until = observed
        .cooldown_from
        .map(|at| at + policy.min_reboot_interval);
    let cooling = cooldown_until.filter(|until| now < *until);

    match power {
        PowerState::Off => {
            if infra.requested_reboot_id != rec.reboot.last_reboot_id {
                // Nothing to reboot: acknowledge, so an old request does not fire when
                // the machine is powered on later (inferred; upstream power-cycles).
                plan.actions.push(Action::RecordRebootHandled {
                    reboot_id: infra.requested_reboot_id.clone(),
                    at: None,
                });
                return plan;
            }
            if !power_off_hold(infra, rec) && (must_run || prefers_on(infra)) {
                // Recorded before: at-most-once. If it is lost, the BMC still reads "off"
                // and the next pass powers on again.
                plan.actions.push(Action::RecordPowerOp {
                    op: PowerOp::On,
                    at: now,
                });
                plan.actions.push(Action::PowerOn { pxe_once });
            }
        }
        PowerState::On => {
            let requested = infra.requested_reboot_id != rec.reboot.last_reboot_id;
            let mismatch = must_run && boot_mismatch(boot, status.agent_connected);
            // Right after a (re)start every tunnel is closed: an agent that has not
            // redialled yet is not an agent that is absent. Without this, each restart
            // of the provider rebooted every machine running the agent.
            let agent_grace = observed.agent_grace_until.filter(|until| now < *until);
            let awaiting_agent =
                mismatch && boot == BootDecision::AgentPxe && agent_grace.is_some();
            let mismatch = mismatch && !awaiting_agent;
            if awaiting_agent && !requested {
                plan.wake_at = agent_grace;
                return plan;
            }
            // Omni prefers "on" until it has collected the machine's information
            // (upstream issue #55), so an idle, wiped machine waits for that.
            let power_off = !must_run && !prefers_on(infra);
            if !(requested || mismatch || power_off) {
                return plan;
            }
            if let Some(until) = cooling {
                plan.wake_at = Some(until);
                return plan;
            }
            if requested || mismatch {
                // Recorded before: a reboot is done at most once per cooldown, however
                // often the pass is repeated. A mode switch records Omni's requested ID
                // too (upstream's behaviour): that request is served by this reboot.
                plan.actions.push(Action::RecordRebootHandled {
                    reboot_id: infra.requested_reboot_id.clone(),
                    at: Some(now),
                });
                plan.actions.push(Action::Reboot { pxe_once });
            } else {
                plan.actions.push(Action::RecordPowerOp {
                    op: PowerOp::Off,
                    at: now,
                });
                plan.actions.push(Action::PowerOff);
            }
        }
    }
    plan
}
