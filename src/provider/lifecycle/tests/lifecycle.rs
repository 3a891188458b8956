//! A simulated machine driven through a whole lifecycle, once without restarts and then
//! with the provider restarted after every single executed action, rebuilt each time from
//! nothing but the records it wrote to Omni.

use std::time::SystemTime;

use ironboot_bmc::{BootMode, PowerState};

use super::super::model::BmcRecord;
use super::super::rules::{BootDecision, required_boot};
use super::super::{
    Acceptance, Action, Event, InfraMachine, InfraMachineStatus, MachineStatus, Observed, Recorded,
    apply_event, reconcile,
};
use super::{CountingSecrets, MIN, at, policy};

/// What the simulated machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Running {
    Off,
    /// Power-cycled or powered on; comes up as decided when it (PXE-)booted.
    Booting(BootDecision),
    Agent,
    Talos,
}

struct Sim {
    now: SystemTime,
    // Omni: survives provider restarts.
    infra: InfraMachine,
    recorded: Recorded,
    written: Option<InfraMachineStatus>,
    stored_status: Option<MachineStatus>,
    // The machine and its BMC.
    power: PowerState,
    running: Running,
    // Provider memory: lost on restart, rebuilt by polling.
    status: MachineStatus,
    secrets: CountingSecrets,
    /// Every BMC, agent-setup and wipe call the machine received, in order.
    trace: Vec<Action>,
    executed: usize,
    crash_after: Option<usize>,
    /// Restart after every pass that did something, on top of `crash_after`.
    restart_every_pass: bool,
    restarts: usize,
}

impl Sim {
    /// A machine a user powered on: it PXE-booted the agent, which opened its tunnel;
    /// Omni created the InfraMachine as pending and keeps it on until it has its info.
    fn discovered(crash_after: Option<usize>) -> Self {
        let status = apply_event(
            apply_event(MachineStatus::default(), Event::PxeBoot),
            Event::TunnelConnected,
        );
        Self {
            now: at(0),
            infra: InfraMachine {
                acceptance: Acceptance::Pending,
                preferred_power: PowerState::On,
                node_unique_token: "tok-1".into(),
                ..InfraMachine::default()
            },
            recorded: Recorded::default(),
            written: None,
            stored_status: None,
            power: PowerState::On,
            running: Running::Agent,
            status,
            secrets: CountingSecrets::default(),
            trace: Vec::new(),
            executed: 0,
            crash_after,
            restart_every_pass: false,
            restarts: 0,
        }
    }

    fn observed(&self) -> Observed {
        Observed {
            infra: Some(self.infra.clone()),
            manual_bmc: false,
            recorded: self.recorded.clone(),
            // A stored "initialized" is read back, as the executor's mapping does.
            status: MachineStatus {
                initialized: self.status.initialized
                    || self.stored_status.is_some_and(|s| s.initialized),
                ..self.status
            },
            stored_status: self.stored_status,
            cooldown_from: self.recorded.last_boot(),
            written_status: self.written.clone(),
            held: true,
            tearing_down: false,
            records_left: false,
            agent_grace_until: None,
        }
    }

    /// The provider restarts: everything in memory is gone; the first poll reads the BMC
    /// and the agent reconnects.
    fn restart(&mut self) {
        self.restarts += 1;
        let mut s = apply_event(MachineStatus::default(), Event::PowerPolled(self.power));
        if self.running == Running::Agent {
            s = apply_event(s, Event::TunnelConnected);
        }
        self.status = s;
    }

    /// What iPXE would be told to boot right now (`/ipxe/boot.ipxe`).
    fn pxe_decision(&self) -> BootDecision {
        required_boot(&self.infra, &self.recorded, self.recorded.bmc.is_some())
    }

    fn execute(&mut self, action: &Action) {
        match action {
            Action::ConfigureBmcViaAgent { username, .. } => {
                assert_eq!(self.running, Running::Agent, "BMC setup without an agent");
                // A pass cut short by a crash drew a password that was never sent: only
                // the call itself is compared.
                self.trace.push(Action::ConfigureBmcViaAgent {
                    username: username.clone(),
                    password: super::super::Secret::new("*"),
                });
                self.recorded.bmc = Some(BmcRecord::ViaAgent);
            }
            Action::RecordWipeStarted { wipe_id } => {
                self.recorded.wipe.started_wipe_id = Some(wipe_id.clone());
            }
            Action::WipeDisks { .. } => {
                assert_eq!(self.running, Running::Agent, "wipe without an agent");
                self.trace.push(action.clone());
            }
            Action::RecordWipeDone {
                wipe_id,
                install_event_id,
                node_unique_token,
            } => {
                let w = &mut self.recorded.wipe;
                w.last_wipe_id = wipe_id.clone();
                w.last_wipe_install_event_id = *install_event_id;
                w.initial_wipe_done = true;
                w.wiped_node_unique_token = node_unique_token.clone();
            }
            Action::RecordPowerOp { op, at } => self.recorded.power.last = Some((*op, *at)),
            Action::RecordRebootHandled { reboot_id, at } => {
                self.recorded.reboot.last_reboot_id = reboot_id.clone();
                if let Some(at) = at {
                    self.recorded.reboot.last_reboot_at = Some(*at);
                }
            }
            Action::WriteMachineStatus(status) => self.stored_status = Some(*status),
            Action::AcknowledgePowerOffRequest {
                request_id,
                wipe_id,
            } => {
                self.recorded.power.last_power_off_id = request_id.clone();
                self.recorded.power.wipe_id_at_power_off = wipe_id.clone();
            }
            Action::PowerOn { pxe_once } => {
                assert_eq!(self.power, PowerState::Off, "powered on twice");
                self.trace.push(action.clone());
                self.power = PowerState::On;
                self.running = Running::Booting(self.boot_target(*pxe_once));
                self.status = apply_event(self.status, Event::PowerPolled(PowerState::On));
            }
            Action::PowerOff => {
                assert_eq!(self.power, PowerState::On, "powered off twice");
                self.trace.push(action.clone());
                self.power = PowerState::Off;
                self.running = Running::Off;
                self.status = apply_event(self.status, Event::TunnelClosed);
                self.status = apply_event(self.status, Event::PowerPolled(PowerState::Off));
            }
            Action::Reboot { pxe_once } => {
                self.trace.push(action.clone());
                self.running = Running::Booting(self.boot_target(*pxe_once));
                self.status = apply_event(self.status, Event::TunnelClosed);
            }
            Action::WriteInfraMachineStatus(s) => self.written = Some(s.clone()),
            Action::HoldMachine | Action::ReleaseMachine { .. } => {
                panic!("the simulated machine is held and never removed: {action:?}")
            }
        }
    }

    fn boot_target(&self, pxe_once: Option<BootMode>) -> BootDecision {
        match pxe_once {
            Some(_) => self.pxe_decision(),
            None => BootDecision::TalosDisk,
        }
    }

    /// A booting machine finishes booting; returns whether anything changed.
    fn boot_completes(&mut self) -> bool {
        let Running::Booting(decision) = self.running else {
            return false;
        };
        if decision.needs_pxe() {
            self.status = apply_event(self.status, Event::PxeBoot);
        }
        if decision == BootDecision::AgentPxe {
            self.running = Running::Agent;
            self.status = apply_event(self.status, Event::TunnelConnected);
        } else {
            self.running = Running::Talos;
        }
        true
    }

    /// Runs the executor until nothing is left to do: passes, crashes, boots and
    /// cooldowns (the virtual clock jumps to each wake-up time).
    fn settle(&mut self) {
        for _ in 0..200 {
            let plan = reconcile(&self.observed(), &policy(), self.now, &mut self.secrets);
            let mut crashed = false;
            for action in &plan.actions {
                self.execute(action);
                self.executed += 1;
                if self.crash_after == Some(self.executed) {
                    self.restart();
                    crashed = true;
                    break;
                }
            }
            if crashed {
                continue;
            }
            if !plan.actions.is_empty() {
                if self.restart_every_pass {
                    self.restart();
                }
                continue;
            }
            if self.boot_completes() {
                continue;
            }
            match plan.wake_at {
                Some(t) => self.now = self.now.max(t),
                None => return,
            }
        }
        panic!("lifecycle did not settle: {:?}", self.trace);
    }

    /// Omni's side of the lifecycle, step by step.
    fn run_script(&mut self) {
        self.settle();
        assert!(self.trace.is_empty(), "pending machine touched");

        self.infra.acceptance = Acceptance::Accepted;
        self.settle();

        // Omni has collected the machine's information.
        self.infra.preferred_power = PowerState::Off;
        self.settle();

        self.now += std::time::Duration::from_secs(60 * MIN);
        self.infra.cluster_talos_version = "v1.11.0".into();
        self.settle();
        assert_eq!(
            self.running,
            Running::Talos,
            "not booted into Talos for install"
        );

        // Talos installed and booted: Omni counts the event.
        self.infra.install_event_id += 1;
        self.settle();

        self.infra.requested_reboot_id = "r1".into();
        self.settle();

        // Deallocation: Omni resets the node and asks for a wipe.
        self.now += std::time::Duration::from_secs(60 * MIN);
        self.infra.cluster_talos_version.clear();
        self.infra.wipe_id = "w2".into();
        self.settle();
        assert_eq!(self.running, Running::Off, "not powered off after the wipe");
        let status = self.written.as_ref().expect("status written");
        assert!(status.ready_to_use && !status.installed, "{status:?}");
    }
}

fn clean_trace() -> Vec<Action> {
    let pxe = Some(BootMode::Uefi);
    vec![
        Action::ConfigureBmcViaAgent {
            username: "talos-agent".into(),
            password: super::super::Secret::new("*"),
        },
        Action::WipeDisks { zeroes: false },
        Action::PowerOff,
        Action::PowerOn { pxe_once: pxe },
        Action::Reboot { pxe_once: None },
        Action::Reboot { pxe_once: pxe },
        Action::WipeDisks { zeroes: false },
        Action::PowerOff,
    ]
}

#[test]
fn lifecycle_without_restarts() {
    let mut sim = Sim::discovered(None);
    sim.run_script();
    assert_eq!(sim.trace, clean_trace());
}

/// Restart after every pass: a provider that keeps nothing in memory between passes
/// makes exactly the same calls.
#[test]
fn lifecycle_restarted_after_every_pass() {
    let mut sim = Sim::discovered(None);
    sim.restart_every_pass = true;
    sim.run_script();
    assert!(sim.restarts > 10, "too few restarts: {}", sim.restarts);
    assert_eq!(sim.trace, clean_trace());
}

/// Restart after every single executed action (each run crashes once, at a different
/// point). The machine must see the same BMC/agent calls as without restarts, with two
/// documented exceptions decided by which record the crash fell behind:
/// - between WipeDisks and its record: the wipe is sent again (at-least-once, safety);
/// - between the records of a requested reboot and the BMC call: the reboot is not
///   repeated, so it is lost (at-most-once for power actions).
#[test]
fn lifecycle_restarted_at_every_step() {
    let mut reference = Sim::discovered(None);
    reference.run_script();
    let total = reference.executed;
    assert!(total > 10, "too few steps to be meaningful: {total}");

    let mut checked = 0;
    for k in 1..=total {
        // Find out which action the crash falls behind, by a run that stops there.
        let mut sim = Sim::discovered(Some(k));
        sim.run_script();
        assert_eq!(sim.restarts, 1, "crash point {k} not reached");
        checked += 1;

        let mut want = clean_trace();
        if sim.trace != want {
            let extra_wipe = {
                let mut w = want.clone();
                let first_wipe = w
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| matches!(a, Action::WipeDisks { .. }))
                    .map(|(i, _)| i)
                    .find(|&i| {
                        let mut c = want.clone();
                        c.insert(i, Action::WipeDisks { zeroes: false });
                        c == sim.trace
                    });
                first_wipe.map(|i| {
                    w.insert(i, Action::WipeDisks { zeroes: false });
                    w
                })
            };
            let lost_requested_reboot = {
                want.retain(|a| *a != Action::Reboot { pxe_once: None });
                want == sim.trace
            };
            assert!(
                extra_wipe.is_some() || lost_requested_reboot,
                "crash after action {k}: trace differs beyond the documented windows:\n  {:?}",
                sim.trace
            );
        }
    }
    assert_eq!(checked, total);
}

/// The two exception windows above are exactly one action wide each: count them.
#[test]
fn restart_windows_are_narrow() {
    let mut reference = Sim::discovered(None);
    reference.run_script();
    let mut repeated_wipes = 0;
    let mut lost_reboots = 0;
    for k in 1..=reference.executed {
        let mut sim = Sim::discovered(Some(k));
        sim.run_script();
        let wipes = |t: &[Action]| {
            t.iter()
                .filter(|a| matches!(a, Action::WipeDisks { .. }))
                .count()
        };
        let reboots = |t: &[Action]| {
            t.iter()
                .filter(|a| matches!(a, Action::Reboot { .. }))
                .count()
        };
        repeated_wipes += wipes(&sim.trace) - wipes(&reference.trace);
        lost_reboots += reboots(&reference.trace) - reboots(&sim.trace);
        assert!(
            reboots(&sim.trace) <= reboots(&reference.trace),
            "crash after {k}: a reboot was repeated: {:?}",
            sim.trace
        );
    }
    // One crash point per wipe (two wipes); one for the requested reboot (after its
    // record in RebootStatus).
    assert_eq!(repeated_wipes, 2, "repeated wipes");
    assert_eq!(lost_reboots, 1, "lost requested reboots");
}
