//! Tests of the lifecycle core: rule tables (`rules`) and a simulated machine driven
//! through a whole lifecycle with restarts (`lifecycle`).

use std::time::{Duration, SystemTime};

use ironboot_bmc::PowerState;

use super::{
    Acceptance, Action, InfraMachine, MachineStatus, Observed, Plan, Policy, Recorded, Secret,
    SecretSource, reconcile,
};

mod lifecycle;
mod rules;

/// The virtual clock's origin.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// `secs` seconds after [`t0`].
fn at(secs: u64) -> SystemTime {
    t0() + Duration::from_secs(secs)
}

const MIN: u64 = 60;

/// Deterministic passwords: `pw1`, `pw2`, ...
#[derive(Default)]
struct CountingSecrets(u32);

impl SecretSource for CountingSecrets {
    fn bmc_password(&mut self) -> Secret {
        self.0 += 1;
        Secret::new(format!("pw{}", self.0))
    }
}

/// An accepted, wiped, idle machine with agent-configured BMC, on and running the agent,
/// Omni preferring it off: the state right after a clean accept.
fn ready() -> Observed {
    let infra = InfraMachine {
        acceptance: Acceptance::Accepted,
        preferred_power: PowerState::Off,
        wipe_id: String::new(),
        node_unique_token: "tok-1".into(),
        ..InfraMachine::default()
    };
    let mut recorded = Recorded {
        bmc: Some(super::model::BmcRecord::ViaAgent),
        ..Recorded::default()
    };
    recorded.wipe.initial_wipe_done = true;
    recorded.wipe.started_wipe_id = Some(String::new());
    recorded.wipe.wiped_node_unique_token = "tok-1".into();
    Observed {
        infra: Some(infra),
        manual_bmc: false,
        recorded,
        status: MachineStatus {
            power: Some(PowerState::On),
            agent_connected: true,
            initialized: true,
        },
        stored_status: Some(MachineStatus {
            power: Some(PowerState::On),
            agent_connected: true,
            initialized: true,
        }),
        cooldown_from: None,
        written_status: None,
        held: true,
        tearing_down: false,
        records_left: false,
        agent_grace_until: None,
    }
}

/// The actions of a plan other than the status writes.
fn steps(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| {
            !matches!(
                a,
                Action::WriteInfraMachineStatus(_) | Action::WriteMachineStatus(_)
            )
        })
        .cloned()
        .collect()
}

/// One reconcile pass with the default policy and fresh secrets; the cooldown runs from
/// the records' last start, as the executor's mapping gives it.
fn plan_at(observed: &Observed, now: SystemTime) -> Plan {
    let mut observed = observed.clone();
    observed.cooldown_from = observed.recorded.last_boot();
    reconcile(&observed, &policy(), now, &mut CountingSecrets::default())
}

fn policy() -> Policy {
    Policy::default()
}
