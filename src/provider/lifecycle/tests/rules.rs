//! One table row per lifecycle rule, plus the upstream bugs as named regressions.

use std::time::SystemTime;

use ironboot_bmc::{BootMode, PowerState};

use super::super::{Action, InfraMachineStatus, PowerOp, reconcile};
use super::{CountingSecrets, MIN, Observed, at, plan_at, policy, ready, steps};

struct Row {
    name: &'static str,
    observed: Observed,
    now: SystemTime,
    want: Vec<Action>,
    wake_at: Option<SystemTime>,
}

fn row(
    name: &'static str,
    now: SystemTime,
    edit: impl FnOnce(&mut Observed),
    want: Vec<Action>,
    wake_at: Option<SystemTime>,
) -> Row {
    let mut observed = ready();
    edit(&mut observed);
    Row {
        name,
        observed,
        now,
        want,
        wake_at,
    }
}

fn infra(o: &mut Observed) -> &mut super::super::InfraMachine {
    o.infra.as_mut().expect("fixture has an InfraMachine")
}

const PXE: Option<BootMode> = Some(BootMode::Uefi);

fn power_off_at(now: SystemTime) -> Vec<Action> {
    vec![
        Action::RecordPowerOp {
            op: PowerOp::Off,
            at: now,
        },
        Action::PowerOff,
    ]
}

fn power_on_at(now: SystemTime, pxe_once: Option<BootMode>) -> Vec<Action> {
    vec![
        Action::RecordPowerOp {
            op: PowerOp::On,
            at: now,
        },
        Action::PowerOn { pxe_once },
    ]
}

/// A reboot to switch the boot mode (no reboot request pending).
fn reboot_at(now: SystemTime, pxe_once: Option<BootMode>) -> Vec<Action> {
    requested_reboot_at("", now, pxe_once)
}

/// A reboot recorded in `RebootStatus` with the request it serves, then done.
fn requested_reboot_at(
    reboot_id: &str,
    now: SystemTime,
    pxe_once: Option<BootMode>,
) -> Vec<Action> {
    vec![
        Action::RecordRebootHandled {
            reboot_id: reboot_id.into(),
            at: Some(now),
        },
        Action::Reboot { pxe_once },
    ]
}

fn wipe(started: bool, wipe_id: &str, install_event_id: u64, zeroes: bool) -> Vec<Action> {
    let mut v = Vec::new();
    if started {
        v.push(Action::RecordWipeStarted {
            wipe_id: wipe_id.into(),
        });
    }
    v.push(Action::WipeDisks { zeroes });
    v.push(Action::RecordWipeDone {
        wipe_id: wipe_id.into(),
        install_event_id,
        node_unique_token: "tok-1".into(),
    });
    v
}

/// A machine that needs a wipe for a new wipe ID (deallocated).
fn deallocated(o: &mut Observed) {
    infra(o).wipe_id = "w2".into();
}

/// The last provider power action was a power-on at `secs`.
fn powered_on_at(o: &mut Observed, secs: u64) {
    o.recorded.power.last = Some((PowerOp::On, at(secs)));
}

fn allocated_installed(o: &mut Observed) {
    let i = infra(o);
    i.cluster_talos_version = "v1.11.0".into();
    i.install_event_id = 1;
    o.status.agent_connected = false;
}

fn rows() -> Vec<Row> {
    let now = at(100 * MIN);
    vec![
        // --- who is left alone
        row(
            "not in Omni yet: nothing",
            now,
            |o| o.infra = None,
            vec![],
            None,
        ),
        row(
            "gone from Omni with records left by a blocked release: release again",
            now,
            |o| {
                o.infra = None;
                o.records_left = true;
            },
            vec![Action::ReleaseMachine {
                reboot_into_agent: None,
            }],
            None,
        ),
        row(
            "pending: nothing, not even BMC setup",
            now,
            |o| {
                infra(o).acceptance = super::super::Acceptance::Pending;
                o.recorded.bmc = None;
            },
            vec![],
            None,
        ),
        row(
            "rejected: nothing",
            now,
            |o| {
                infra(o).acceptance = super::super::Acceptance::Rejected;
                deallocated(o);
            },
            vec![],
            None,
        ),
        row(
            "cordoned: nothing, even with a wipe due",
            now,
            |o| {
                infra(o).cordoned = true;
                deallocated(o);
            },
            vec![],
            None,
        ),
        // --- BMC configuration
        row(
            "no BMC, agent connected: set up an IPMI user through the agent",
            now,
            |o| o.recorded.bmc = None,
            vec![Action::ConfigureBmcViaAgent {
                username: "talos-agent".into(),
                password: super::super::Secret::new("pw1"),
            }],
            None,
        ),
        row(
            "BMC set up already: not again (a wipe is next)",
            now,
            deallocated,
            wipe(true, "w2", 0, false),
            None,
        ),
        row(
            "manual BMCConfig from Omni: no agent setup",
            now,
            |o| {
                o.recorded.bmc = None;
                o.manual_bmc = true;
                deallocated(o);
            },
            wipe(true, "w2", 0, false),
            None,
        ),
        row(
            "manual BMCConfig, agent connected, nothing due: still no agent setup",
            now,
            |o| {
                o.recorded.bmc = None;
                o.manual_bmc = true;
                infra(o).preferred_power = PowerState::On;
            },
            vec![],
            None,
        ),
        row(
            "no BMC and no agent: nothing can be done yet",
            now,
            |o| {
                o.recorded.bmc = None;
                o.status.agent_connected = false;
            },
            vec![],
            None,
        ),
        // --- wipes
        row(
            "first wipe after accept (wipe ID empty)",
            now,
            |o| {
                o.recorded.wipe = Default::default();
            },
            wipe(true, "", 0, false),
            None,
        ),
        row(
            "new wipe ID: wipe, with zeroes when asked",
            now,
            deallocated,
            wipe(true, "w2", 0, false),
            None,
        ),
        row(
            "wipe interrupted by a restart: sent again, not recorded as started twice",
            now,
            |o| {
                deallocated(o);
                o.recorded.wipe.started_wipe_id = Some("w2".into());
            },
            wipe(false, "w2", 0, false),
            None,
        ),
        row(
            "wipe due, machine off: PXE-once into the agent and power on",
            now,
            |o| {
                deallocated(o);
                o.status.power = Some(PowerState::Off);
                o.status.agent_connected = false;
            },
            power_on_at(now, PXE),
            None,
        ),
        row(
            "wipe due, installed Talos running: PXE-once reboot into the agent",
            now,
            |o| {
                deallocated(o);
                allocated_installed(o);
                infra(o).cluster_talos_version.clear();
            },
            reboot_at(now, PXE),
            None,
        ),
        // --- installed
        row(
            "installed (events above the wiped count): stays on though Omni prefers off",
            now,
            allocated_installed,
            vec![],
            None,
        ),
        // --- power
        row(
            "idle and wiped, Omni prefers off: power off",
            now,
            |_| {},
            power_off_at(now),
            None,
        ),
        row(
            "power-off within --min-reboot-interval of our power-on: wait",
            at(10 * MIN),
            |o| powered_on_at(o, 0),
            vec![],
            Some(at(15 * MIN)),
        ),
        row(
            "power-off once the interval passed",
            at(15 * MIN),
            |o| powered_on_at(o, 0),
            power_off_at(at(15 * MIN)),
            None,
        ),
        row(
            "power-off interval runs from a reboot too",
            at(5 * MIN),
            |o| o.recorded.reboot.last_reboot_at = Some(at(0)),
            vec![],
            Some(at(15 * MIN)),
        ),
        row(
            "allocated and off: PXE-once and power on to install",
            now,
            |o| {
                infra(o).cluster_talos_version = "v1.11.0".into();
                o.status.power = Some(PowerState::Off);
                o.status.agent_connected = false;
            },
            power_on_at(now, PXE),
            None,
        ),
        row(
            "installed and off: power on from disk, no PXE flag",
            now,
            |o| {
                allocated_installed(o);
                o.status.power = Some(PowerState::Off);
            },
            power_on_at(now, None),
            None,
        ),
        row(
            "Omni prefers on: power on an idle machine (into the agent)",
            now,
            |o| {
                infra(o).preferred_power = PowerState::On;
                o.status.power = Some(PowerState::Off);
                o.status.agent_connected = false;
            },
            power_on_at(now, PXE),
            None,
        ),
        row(
            "power state unknown: no power action",
            now,
            |o| o.status.power = None,
            vec![],
            None,
        ),
        // --- power-off requests
        row(
            "new power-off request: acknowledged first",
            now,
            |o| infra(o).power_off_request_id = "off-1".into(),
            vec![Action::AcknowledgePowerOffRequest {
                request_id: "off-1".into(),
                wipe_id: String::new(),
            }],
            None,
        ),
        row(
            "acknowledged power-off request holds an allocated machine off",
            now,
            |o| {
                allocated_installed(o);
                o.status.power = Some(PowerState::Off);
                infra(o).power_off_request_id = "off-1".into();
                o.recorded.power.last_power_off_id = "off-1".into();
            },
            vec![],
            None,
        ),
        row(
            "a deallocation (new wipe ID) ends the power-off hold",
            now,
            |o| {
                deallocated(o);
                o.status.power = Some(PowerState::Off);
                o.status.agent_connected = false;
                infra(o).power_off_request_id = "off-1".into();
                o.recorded.power.last_power_off_id = "off-1".into();
            },
            power_on_at(now, PXE),
            None,
        ),
        // --- reboots
        row(
            "requested reboot: recorded, then power-cycled from disk",
            now,
            |o| {
                allocated_installed(o);
                infra(o).requested_reboot_id = "r1".into();
            },
            requested_reboot_at("r1", now, None),
            None,
        ),
        row(
            "requested reboot already handled: nothing",
            now,
            |o| {
                allocated_installed(o);
                infra(o).requested_reboot_id = "r1".into();
                o.recorded.reboot.last_reboot_id = "r1".into();
            },
            vec![],
            None,
        ),
        row(
            "requested reboot within the interval: wait",
            at(3 * MIN),
            |o| {
                allocated_installed(o);
                powered_on_at(o, 0);
                infra(o).requested_reboot_id = "r1".into();
            },
            vec![],
            Some(at(15 * MIN)),
        ),
        row(
            "requested reboot of a machine that is off: acknowledged, no power action",
            now,
            |o| {
                o.status.power = Some(PowerState::Off);
                o.status.agent_connected = false;
                infra(o).requested_reboot_id = "r1".into();
            },
            vec![Action::RecordRebootHandled {
                reboot_id: "r1".into(),
                at: None,
            }],
            None,
        ),
        row(
            "boot-mode mismatch: allocated but the agent still runs -> PXE-once reboot",
            now,
            |o| infra(o).cluster_talos_version = "v1.11.0".into(),
            reboot_at(now, PXE),
            None,
        ),
    ]
}

#[test]
fn reconcile_table() {
    let mut failures = Vec::new();
    for r in rows() {
        let plan = plan_at(&r.observed, r.now);
        let got = steps(&plan.actions);
        if got != r.want || plan.wake_at != r.wake_at {
            failures.push(format!(
                "{}:\n  want {:?} wake {:?}\n  got  {:?} wake {:?}",
                r.name, r.want, r.wake_at, got, plan.wake_at
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn wipe_with_zeroes_follows_the_flag() {
    let mut o = ready();
    deallocated(&mut o);
    let mut p = policy();
    p.wipe_with_zeroes = true;
    let plan = reconcile(&o, &p, at(0), &mut CountingSecrets::default());
    assert_eq!(steps(&plan.actions), wipe(true, "w2", 0, true));
}

#[test]
fn pxe_once_uses_the_configured_firmware_mode() {
    let mut o = ready();
    deallocated(&mut o);
    o.status.power = Some(PowerState::Off);
    o.status.agent_connected = false;
    let mut p = policy();
    p.pxe_boot_mode = BootMode::Bios;
    let plan = reconcile(&o, &p, at(0), &mut CountingSecrets::default());
    assert_eq!(
        steps(&plan.actions),
        power_on_at(at(0), Some(BootMode::Bios))
    );
}

#[test]
fn status_reports_rules_and_is_written_only_on_change() {
    let mut o = ready();
    infra(&mut o).preferred_power = PowerState::On;
    infra(&mut o).install_event_id = 2;
    o.recorded.wipe.last_wipe_install_event_id = 1;
    o.recorded.reboot.last_reboot_id = "r0".into();
    infra(&mut o).requested_reboot_id = "r0".into();
    let plan = plan_at(&o, at(0));
    let want = InfraMachineStatus {
        power: Some(PowerState::On),
        ready_to_use: true,
        installed: true,
        wiped_node_unique_token: "tok-1".into(),
        last_reboot_id: "r0".into(),
        last_reboot_at: None,
        last_power_off_id: String::new(),
    };
    assert_eq!(
        plan.actions,
        vec![Action::WriteInfraMachineStatus(want.clone())]
    );

    o.written_status = Some(want);
    let plan = plan_at(&o, at(0));
    assert!(
        plan.actions.is_empty(),
        "unchanged status rewritten: {plan:?}"
    );

    // Equal counters: not installed. A wipe due: not ready to use.
    infra(&mut o).install_event_id = 1;
    deallocated(&mut o);
    let plan = plan_at(&o, at(0));
    let Some(Action::WriteInfraMachineStatus(s)) = plan.actions.first() else {
        panic!("no status write first: {plan:?}");
    };
    assert!(!s.installed && !s.ready_to_use, "{s:?}");
}

#[test]
fn passwords_never_reach_debug_output() {
    let mut o = ready();
    o.recorded.bmc = None;
    let plan = plan_at(&o, at(0));
    let text = format!("{plan:?}");
    assert!(text.contains("talos-agent"), "{text}");
    assert!(!text.contains("pw1"), "password leaked into Debug: {text}");
    let Some(Action::ConfigureBmcViaAgent { password, .. }) = steps(&plan.actions).pop() else {
        panic!("no BMC setup: {plan:?}");
    };
    assert_eq!(password.expose(), "pw1");
}

/// Upstream issue #37: the disks were wiped again and again after accept. Once a wipe is
/// recorded for Omni's wipe ID, nothing asks for it again: not more passes, not a restart,
/// not Talos events counting up.
#[test]
fn regression_wipe_loop_after_accept() {
    let mut o = ready();
    infra(&mut o).preferred_power = PowerState::On;
    for pass in 0..50u64 {
        if pass % 10 == 9 {
            infra(&mut o).install_event_id += 1;
        }
        let plan = plan_at(&o, at(pass * MIN));
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::WipeDisks { .. })),
            "pass {pass}: wiped again: {plan:?}"
        );
    }
}

/// Upstream PR #53: an accepted machine that was wiped and powered off got rebooted into
/// the agent over and over, because "agent expected but absent" was checked on a machine
/// that had no reason to run. And right after our own power-on, an agent still booting
/// must not count as a mismatch either.
#[test]
fn regression_reboot_loop_of_an_idle_machine() {
    let mut o = ready();
    o.status.power = Some(PowerState::Off);
    o.status.agent_connected = false;
    o.recorded.power.last = Some((PowerOp::Off, at(0)));
    for pass in 0..100u64 {
        let plan = plan_at(&o, at(pass * MIN));
        assert!(
            !plan.actions.iter().any(Action::is_destructive),
            "pass {pass}: idle powered-off machine touched: {plan:?}"
        );
    }

    // On, idle and wiped, but the agent is gone (it crashed, or the machine came up from
    // disk): nothing requires the agent, so no reboot into it. Omni wants it off: power
    // off (not reboot); Omni wants it on: leave it be.
    o.status.power = Some(PowerState::On);
    o.recorded.power.last = Some((PowerOp::On, at(0)));
    let plan = plan_at(&o, at(30 * MIN));
    assert_eq!(steps(&plan.actions), power_off_at(at(30 * MIN)));
    infra(&mut o).preferred_power = PowerState::On;
    for pass in 0..100u64 {
        let plan = plan_at(&o, at(pass * MIN));
        assert!(
            !plan.actions.iter().any(Action::is_destructive),
            "pass {pass}: idle machine without agent rebooted: {plan:?}"
        );
    }
    infra(&mut o).preferred_power = PowerState::Off;

    // A wipe is due; we power on into the agent, which takes minutes to connect.
    deallocated(&mut o);
    o.status.power = Some(PowerState::On);
    o.recorded.power.last = Some((PowerOp::On, at(0)));
    for minute in 0..15u64 {
        let plan = plan_at(&o, at(minute * MIN));
        assert!(
            !plan.actions.iter().any(Action::is_destructive),
            "minute {minute}: rebooted while the agent boots: {plan:?}"
        );
        assert_eq!(plan.wake_at, Some(at(15 * MIN)));
    }
}

/// Upstream issue #55: machines were powered off before Omni had collected their
/// information. Omni keeps the preferred power state "on" until it has; a machine Omni
/// does not know yet is not touched at all.
#[test]
fn regression_no_power_off_before_omni_collected_info() {
    let mut o = ready();
    infra(&mut o).preferred_power = PowerState::On;
    let plan = plan_at(&o, at(100 * MIN));
    assert!(
        !plan.actions.iter().any(Action::is_destructive),
        "powered off before info was collected: {plan:?}"
    );

    o.infra = None;
    let plan = plan_at(&o, at(100 * MIN));
    assert!(plan.actions.is_empty(), "unknown machine touched: {plan:?}");

    // Once Omni has the information it prefers off, and only then do we power off.
    let o = ready();
    let plan = plan_at(&o, at(100 * MIN));
    assert_eq!(steps(&plan.actions), power_off_at(at(100 * MIN)));
}

/// Found by the chaos scenario (`tests/it/lifecycle_scenario.rs`): a provider restart closes
/// every tunnel, and a machine that runs the agent for a pending wipe, with no recent
/// power action of ours to cool down from, was rebooted before its agent redialled. An
/// absent agent counts only after the reconnect grace; a user's reboot request does not
/// wait for it.
#[test]
fn regression_restart_does_not_reboot_machines_whose_agent_has_not_redialled() {
    let mut o = ready();
    deallocated(&mut o);
    o.status.power = Some(PowerState::On);
    o.status.agent_connected = false;
    o.recorded.power.last = None;
    let grace = policy().agent_reconnect_grace;
    assert_eq!(
        grace,
        std::time::Duration::from_secs(120),
        "the default grace"
    );
    o.agent_grace_until = Some(at(grace.as_secs()));
    for secs in [0, 1, 60, grace.as_secs() - 1] {
        let plan = plan_at(&o, at(secs));
        assert!(
            !plan.actions.iter().any(Action::is_destructive),
            "{secs} s after the start: rebooted before the agent could redial: {plan:?}"
        );
        assert_eq!(plan.wake_at, Some(at(grace.as_secs())));
    }
    // The grace is over and the agent is still absent: reboot into it.
    let now = at(grace.as_secs());
    let plan = plan_at(&o, now);
    assert_eq!(
        steps(&plan.actions),
        reboot_at(now, Some(policy().pxe_boot_mode))
    );
    // A requested reboot is done at once, grace or not.
    infra(&mut o).requested_reboot_id = "r1".into();
    let plan = plan_at(&o, at(1));
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Reboot { .. })),
        "requested reboot waited: {plan:?}"
    );
}

#[test]
fn the_reconnect_grace_follows_min_reboot_interval_up_to_two_minutes() {
    use crate::provider::lifecycle::Policy;
    use std::time::Duration;
    let p = |secs| Policy::new(Duration::from_secs(secs), false, BootMode::Uefi);
    assert_eq!(p(4).agent_reconnect_grace, Duration::from_secs(4));
    assert_eq!(p(0).agent_reconnect_grace, Duration::ZERO);
    assert_eq!(p(15 * MIN).agent_reconnect_grace, Duration::from_secs(120));
}
