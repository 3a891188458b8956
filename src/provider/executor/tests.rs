//! The executor's loop against in-process stand-ins for its three seams (Omni store, BMC,
//! agent): what a Rust unit test cannot reach as a real peer. The mapping is tested in
//! [`super::mapping`]; the seams' real implementations by the conformance tests of the
//! Omni client, the BMC crate and the agent tunnel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironboot_bmc::{BmcInfo, PowerState};
use ironboot_proto::agent::{GetPowerManagementResponse, get_power_management_response};
use ironboot_proto::{baremetal, omni};

use super::mapping::{self, Records, Write};
use super::{Agent, ExecError, Executor, Power, PowerAction, Settings, Store};
use crate::provider::agent::client::AgentError;
use crate::provider::lifecycle::{Event, Policy, Secret};

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, entry: String) {
    log.lock().unwrap().push(entry);
}

#[derive(Clone)]
struct FakeStore {
    records: Arc<Mutex<HashMap<String, Records>>>,
    log: Log,
}

impl Store for FakeStore {
    async fn load(&self, machine_id: &str) -> Result<Records, ExecError> {
        Ok(self
            .records
            .lock()
            .unwrap()
            .get(machine_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn write(&self, machine_id: &str, write: &Write) -> Result<(), ExecError> {
        let name = match write {
            Write::BmcConfiguration(_) => "BmcConfiguration".to_owned(),
            Write::WipeStarted { wipe_id } => format!("WipeStarted {wipe_id:?}"),
            Write::WipeDone { wipe_id, .. } => format!("WipeDone {wipe_id:?}"),
            Write::PowerOp { op, .. } => format!("PowerOp {op:?}"),
            Write::PowerOffAcknowledged { request_id, .. } => format!("PowerOffAck {request_id}"),
            Write::RebootHandled { reboot_id, .. } => format!("RebootHandled {reboot_id}"),
            Write::Status { .. } => "Status".to_owned(),
            Write::MachineStatus(_) => "MachineStatus".to_owned(),
            Write::Hold => "Hold".to_owned(),
            Write::Release => "Release".to_owned(),
        };
        push(&self.log, format!("{machine_id} store {name}"));
        let mut records = self.records.lock().unwrap();
        mapping::apply(records.entry(machine_id.to_owned()).or_default(), write);
        Ok(())
    }
}

#[derive(Clone)]
struct FakeBmc {
    power: Arc<Mutex<HashMap<String, PowerState>>>,
    slow: Arc<Mutex<HashMap<String, Duration>>>,
    log: Log,
    /// Status reads in flight now, and the most seen at once.
    in_flight: Arc<Mutex<(u32, u32)>>,
    /// Status reads to fail before one succeeds.
    failing_reads: Arc<AtomicU32>,
    /// Every power action with the monotonic time it reached the BMC.
    acted_at: Arc<Mutex<Vec<(String, tokio::time::Instant)>>>,
}

impl Power for FakeBmc {
    async fn status(&self, machine_id: &str, _bmc: &BmcInfo) -> Result<PowerState, ExecError> {
        let delay = self.slow.lock().unwrap().get(machine_id).copied();
        {
            let mut f = self.in_flight.lock().unwrap();
            f.0 += 1;
            f.1 = f.1.max(f.0);
        }
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        self.in_flight.lock().unwrap().0 -= 1;
        if self
            .failing_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            push(&self.log, format!("{machine_id} bmc status failed"));
            return Err(ExecError::Bmc {
                machine_id: machine_id.to_owned(),
                bmc: "10.0.0.8:623".into(),
                operation: "status".into(),
                detail: "no answer".into(),
            });
        }
        push(&self.log, format!("{machine_id} bmc status"));
        Ok(*self
            .power
            .lock()
            .unwrap()
            .get(machine_id)
            .unwrap_or(&PowerState::Off))
    }

    async fn act(
        &self,
        machine_id: &str,
        _bmc: &BmcInfo,
        action: PowerAction,
    ) -> Result<(), ExecError> {
        push(&self.log, format!("{machine_id} bmc {action:?}"));
        self.acted_at.lock().unwrap().push((
            format!("{machine_id} {action:?}"),
            tokio::time::Instant::now(),
        ));
        let state = match action {
            PowerAction::Off => PowerState::Off,
            PowerAction::On(_) | PowerAction::Reboot(_) => PowerState::On,
        };
        self.power
            .lock()
            .unwrap()
            .insert(machine_id.to_owned(), state);
        Ok(())
    }
}

#[derive(Clone)]
struct FakeAgent {
    log: Log,
    /// Wipes to fail before one succeeds.
    failing_wipes: Arc<AtomicU32>,
    /// The password the IPMI user got.
    password: Arc<Mutex<Option<String>>>,
    /// Machines whose tunnel is open.
    connected: Arc<Mutex<HashSet<String>>>,
    /// How long a wipe takes.
    wipe_time: Arc<Mutex<Duration>>,
    /// Answer GetPowerManagement as an agent in test mode (`api {}`, no IPMI).
    api_only: Arc<AtomicBool>,
}

impl FakeAgent {
    fn connect(&self, machine_id: &str) {
        self.connected.lock().unwrap().insert(machine_id.to_owned());
    }
}

impl Agent for FakeAgent {
    fn is_connected(&self, machine_id: &str) -> bool {
        self.connected.lock().unwrap().contains(machine_id)
    }

    async fn get_power_management(
        &self,
        machine_id: &str,
    ) -> Result<GetPowerManagementResponse, ExecError> {
        push(&self.log, format!("{machine_id} agent GetPowerManagement"));
        if self.api_only.load(Ordering::SeqCst) {
            return Ok(GetPowerManagementResponse {
                ipmi: None,
                api: Some(Default::default()),
            });
        }
        Ok(GetPowerManagementResponse {
            ipmi: Some(get_power_management_response::Ipmi {
                address: "10.0.0.7".into(),
                port: 0,
                user_exists: false,
            }),
            api: None,
        })
    }

    async fn set_power_management(
        &self,
        machine_id: &str,
        username: &str,
        password: &Secret,
    ) -> Result<(), ExecError> {
        push(
            &self.log,
            format!("{machine_id} agent SetPowerManagement {username}"),
        );
        *self.password.lock().unwrap() = Some(password.expose().to_owned());
        Ok(())
    }

    async fn wipe_disks(&self, machine_id: &str, zeroes: bool) -> Result<(), ExecError> {
        push(
            &self.log,
            format!("{machine_id} agent WipeDisks zeroes={zeroes}"),
        );
        let wipe_time = *self.wipe_time.lock().unwrap();
        tokio::time::sleep(wipe_time).await;
        if self
            .failing_wipes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ExecError::Agent(AgentError::Timeout {
                machine_id: machine_id.to_owned(),
                method: "WipeDisks",
                timeout: Duration::from_secs(1),
            }));
        }
        Ok(())
    }
}

struct Rig {
    store: FakeStore,
    bmc: FakeBmc,
    agent: FakeAgent,
    /// `--api-power-mgmt-state-dir`.
    power_api_dir: Arc<Mutex<Option<std::path::PathBuf>>>,
    log: Log,
}

impl Rig {
    fn new() -> Self {
        let log = Log::default();
        Self {
            store: FakeStore {
                records: Arc::default(),
                log: Arc::clone(&log),
            },
            bmc: FakeBmc {
                power: Arc::default(),
                slow: Arc::default(),
                log: Arc::clone(&log),
                in_flight: Arc::default(),
                failing_reads: Arc::default(),
                acted_at: Arc::default(),
            },
            agent: FakeAgent {
                log: Arc::clone(&log),
                failing_wipes: Arc::default(),
                password: Arc::default(),
                connected: Arc::default(),
                wipe_time: Arc::default(),
                api_only: Arc::default(),
            },
            power_api_dir: Arc::default(),
            log,
        }
    }

    fn executor(&self) -> Executor<FakeStore, FakeBmc, FakeAgent> {
        self.executor_with(16)
    }

    fn executor_with(&self, concurrency: usize) -> Executor<FakeStore, FakeBmc, FakeAgent> {
        let mut settings = Settings::new(
            Policy {
                min_reboot_interval: Duration::from_secs(3600),
                ..Policy::default()
            },
            BTreeMap::from([("rack".to_owned(), "a1".to_owned())]),
        );
        settings.power_poll_interval = Duration::from_secs(3600);
        settings.retry_base = Duration::from_millis(10);
        settings.concurrency = concurrency;
        settings.power_api_dir = self.power_api_dir.lock().unwrap().clone();
        Executor::new(
            self.store.clone(),
            self.bmc.clone(),
            self.agent.clone(),
            settings,
        )
    }

    fn set(&self, machine_id: &str, records: Records) {
        self.store
            .records
            .lock()
            .unwrap()
            .insert(machine_id.to_owned(), records);
    }

    fn records(&self, machine_id: &str) -> Records {
        self.store
            .records
            .lock()
            .unwrap()
            .get(machine_id)
            .cloned()
            .unwrap_or_default()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The fake BMC reads `machine_id` as powered on.
    fn power_on(&self, machine_id: &str) {
        self.bmc
            .power
            .lock()
            .unwrap()
            .insert(machine_id.to_owned(), PowerState::On);
    }

    /// The fake BMC of `machine_id` answers after `delay`.
    fn slow_bmc(&self, machine_id: &str, delay: Duration) {
        self.bmc
            .slow
            .lock()
            .unwrap()
            .insert(machine_id.to_owned(), delay);
    }

    /// Connects the agent of `machine_id`, starts an executor, reports the tunnel and
    /// waits until the machine is ready and powered off.
    async fn connect_until_ready_and_off(
        &self,
        machine_id: &str,
    ) -> Executor<FakeStore, FakeBmc, FakeAgent> {
        self.agent.connect(machine_id);
        let exec = self.executor();
        exec.event(machine_id, Event::TunnelConnected);
        self.settle("ready and off", |r| powered_off_and_ready(r, machine_id))
            .await;
        exec
    }

    /// Waits until `done` holds (failing after 5 s), then a little longer so that any
    /// extra action would show in the log.
    async fn settle(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not reached; log: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn accepted() -> omni::InfraMachineSpec {
    omni::InfraMachineSpec {
        acceptance_status: omni::infra_machine_config_spec::AcceptanceStatus::Accepted as i32,
        node_unique_token: "tok-1".into(),
        ..Default::default()
    }
}

/// Omni's machine, with this provider's finalizer already on it.
fn with_infra(infra: omni::InfraMachineSpec) -> Records {
    Records {
        infra: Some(infra),
        held: true,
        ..Records::default()
    }
}

fn powered_off_and_ready(r: &Rig, id: &str) -> bool {
    r.records(id).status.is_some_and(|s| {
        s.ready_to_use
            && s.power_state
                == omni::infra_machine_status_spec::MachinePowerState::PowerStateOff as i32
    })
}

#[tokio::test]
async fn accept_configures_bmc_wipes_and_powers_off_once() {
    let rig = Rig::new();
    rig.set("m1", with_infra(accepted()));
    rig.power_on("m1");
    let exec = rig.connect_until_ready_and_off("m1").await;
    let stats = exec.stats();
    assert_eq!(
        (
            stats.steps("bmc_setup"),
            stats.steps("wipe"),
            stats.steps("power_off")
        ),
        (1, 1, 1),
        "counted steps"
    );
    assert_eq!(
        rig.log(),
        [
            "m1 store MachineStatus",
            "m1 store Status",
            "m1 agent GetPowerManagement",
            "m1 agent SetPowerManagement talos-agent",
            "m1 store BmcConfiguration",
            "m1 bmc status",
            "m1 store WipeStarted \"\"",
            "m1 agent WipeDisks zeroes=false",
            "m1 store WipeDone \"\"",
            "m1 store Status",
            "m1 store PowerOp Off",
            "m1 bmc Off",
            "m1 store MachineStatus",
            "m1 store Status",
        ]
    );
    // The private MachineStatus follows the live status, as the Go provider keeps it.
    assert_eq!(
        rig.records("m1").machine_status,
        Some(baremetal::MachineStatusSpec {
            agent_accessible: true,
            power_state: baremetal::PowerState::Off as i32,
            initialized: false,
        })
    );
    // The stored credentials are the ones the agent set, from the OS random source.
    let records = rig.records("m1");
    let stored = records
        .bmc_configuration
        .and_then(|b| b.ipmi)
        .expect("BMC credentials stored");
    let given = rig.agent.password.lock().unwrap().clone();
    assert_eq!(Some(stored.password.clone()), given);
    assert_eq!(stored.password.len(), 16);
    assert_eq!((stored.address.as_str(), stored.port), ("10.0.0.7", 623));
    assert_eq!(
        records.wipe,
        Some(baremetal::WipeStatusSpec {
            last_wipe_id: String::new(),
            last_wipe_install_event_id: 0,
            initial_wipe_done: true,
            wiped_node_unique_token: "tok-1".into(),
        })
    );
    drop(exec);

    // A restarted executor over the same records repeats nothing: one power reading, no
    // wipe, no power action, no write.
    let before = rig.log().len();
    let exec = rig.executor();
    exec.wake("m1");
    rig.settle("restart read", |r| r.log().len() > before).await;
    assert_eq!(rig.log()[before..], ["m1 bmc status"]);
}

#[tokio::test]
async fn pending_cordoned_and_unknown_machines_are_left_alone() {
    let rig = Rig::new();
    let pending = omni::InfraMachineSpec::default();
    let cordoned = omni::InfraMachineSpec {
        cordoned: true,
        ..accepted()
    };
    rig.set("pending", with_infra(pending));
    rig.set("cordoned", with_infra(cordoned));
    let exec = rig.executor();
    for id in ["pending", "cordoned", "unknown"] {
        exec.event(id, Event::TunnelConnected);
        exec.event(id, Event::PxeBoot);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exec.machines(), ["cordoned", "pending", "unknown"]);
    // Only the private status of the machines Omni knows is kept (as upstream keeps it
    // whatever the acceptance): no BMC, agent or Omni-visible write.
    let mut log = rig.log();
    log.sort();
    assert_eq!(
        log,
        [
            "cordoned store MachineStatus",
            "pending store MachineStatus"
        ]
    );
    for id in ["pending", "cordoned"] {
        let stored = rig
            .records(id)
            .machine_status
            .expect("private status stored");
        assert!(
            stored.initialized && stored.power_state == baremetal::PowerState::On as i32,
            "{id}: {stored:?}"
        );
    }
}

#[tokio::test]
async fn a_failed_wipe_is_sent_again_and_recorded_once() {
    let rig = Rig::new();
    rig.set(
        "m1",
        Records {
            infra: Some(accepted()),
            bmc_configuration: Some(mapping::bmc_configuration_from_agent(
                &GetPowerManagementResponse {
                    ipmi: Some(get_power_management_response::Ipmi::default()),
                    api: None,
                },
                "talos-agent",
                "pw",
            ))
            .flatten(),
            ..Records::default()
        },
    );
    rig.power_on("m1");
    rig.agent.failing_wipes.store(1, Ordering::SeqCst);
    let _exec = rig.connect_until_ready_and_off("m1").await;
    let log = rig.log();
    let count = |s: &str| log.iter().filter(|e| e.as_str() == s).count();
    assert_eq!(count("m1 agent WipeDisks zeroes=false"), 2, "{log:#?}");
    assert_eq!(count("m1 store WipeStarted \"\""), 1, "{log:#?}");
    assert_eq!(count("m1 store WipeDone \"\""), 1, "{log:#?}");
    assert_eq!(count("m1 bmc Off"), 1, "{log:#?}");
    assert_eq!(
        count("m1 agent SetPowerManagement talos-agent"),
        0,
        "{log:#?}"
    );
}

fn wiped() -> Records {
    Records {
        infra: Some(accepted()),
        held: true,
        bmc_configuration: Some(baremetal::BmcConfigurationSpec {
            ipmi: Some(baremetal::bmc_configuration_spec::Ipmi {
                address: "10.0.0.8".into(),
                port: 623,
                username: "talos-agent".into(),
                password: "pw".into(),
            }),
            api: None,
            manually_configured: false,
        }),
        wipe: Some(baremetal::WipeStatusSpec {
            initial_wipe_done: true,
            wiped_node_unique_token: "tok-1".into(),
            ..Default::default()
        }),
        ..Records::default()
    }
}

#[tokio::test]
async fn a_slow_bmc_delays_only_its_own_machine() {
    let rig = Rig::new();
    for id in ["slow", "fast"] {
        rig.set(id, wiped());
        rig.power_on(id);
    }
    rig.slow_bmc("slow", Duration::from_secs(30));
    let exec = rig.executor();
    exec.wake("slow");
    exec.wake("fast");
    rig.settle("fast machine off", |r| powered_off_and_ready(r, "fast"))
        .await;
    let log = rig.log();
    assert!(log.contains(&"fast bmc Off".to_owned()), "{log:#?}");
    assert!(!log.iter().any(|e| e.starts_with("slow")), "{log:#?}");
}

#[tokio::test]
async fn passes_at_once_are_bounded() {
    let rig = Rig::new();
    let ids: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    for id in &ids {
        rig.set(id, wiped());
        rig.power_on(id);
        rig.slow_bmc(id, Duration::from_millis(50));
    }
    let exec = rig.executor_with(2);
    for id in &ids {
        exec.wake(id);
    }
    rig.settle("all off", |r| {
        ids.iter().all(|id| powered_off_and_ready(r, id))
    })
    .await;
    assert_eq!(
        rig.bmc.in_flight.lock().unwrap().1,
        2,
        "at most 2 passes at once"
    );
    for id in &ids {
        let offs = rig
            .log()
            .iter()
            .filter(|e| **e == format!("{id} bmc Off"))
            .count();
        assert_eq!(offs, 1, "{id}");
    }
}

#[tokio::test]
async fn an_unanswered_power_reading_is_retried_soon() {
    let rig = Rig::new();
    rig.set("m1", wiped());
    rig.power_on("m1");
    rig.bmc.failing_reads.store(2, Ordering::SeqCst);
    // The poll interval is an hour: only the failure backoff can bring the next reading.
    let exec = rig.executor();
    exec.wake("m1");
    rig.settle("off", |r| powered_off_and_ready(r, "m1")).await;
    let log = rig.log();
    let count = |s: &str| log.iter().filter(|e| e.as_str() == s).count();
    assert_eq!(count("m1 bmc status failed"), 2, "{log:#?}");
    assert_eq!(count("m1 bmc Off"), 1, "{log:#?}");
}

#[tokio::test]
async fn a_long_wipe_holds_no_permit() {
    let rig = Rig::new();
    let mut wiping = wiped();
    wiping.wipe = None;
    rig.set("wiping", wiping);
    rig.set("idle", wiped());
    for id in ["wiping", "idle"] {
        rig.power_on(id);
    }
    rig.agent.connect("wiping");
    *rig.agent.wipe_time.lock().unwrap() = Duration::from_secs(30);
    // One pass at a time: the idle machine gets its turn only if the wipe lets go.
    let exec = rig.executor_with(1);
    exec.wake("wiping");
    let started = tokio::time::Instant::now() + Duration::from_secs(5);
    while !rig
        .log()
        .iter()
        .any(|e| e.starts_with("wiping agent WipeDisks"))
    {
        assert!(tokio::time::Instant::now() < started, "{:#?}", rig.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    exec.wake("idle");
    rig.settle("idle machine off", |r| powered_off_and_ready(r, "idle"))
        .await;
    assert!(
        !rig.log().iter().any(|e| e == "wiping store WipeDone \"\""),
        "the wipe is still running: {:#?}",
        rig.log()
    );
}

#[tokio::test]
async fn a_new_machine_gets_the_finalizer_once() {
    let rig = Rig::new();
    rig.set(
        "m1",
        Records {
            held: false,
            ..wiped()
        },
    );
    rig.power_on("m1");
    let exec = rig.executor();
    exec.wake("m1");
    rig.settle("held", |r| r.records("m1").held).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let holds = rig
        .log()
        .iter()
        .filter(|e| e.ends_with("store Hold"))
        .count();
    assert_eq!(holds, 1, "{:#?}", rig.log());
}

/// A rig with one wiped, held machine `m1`, powered on, that Omni is removing.
fn removed_while_on() -> Rig {
    let rig = Rig::new();
    rig.set(
        "m1",
        Records {
            infra_tearing_down: true,
            ..wiped()
        },
    );
    rig.power_on("m1");
    rig
}

/// Omni removes a machine that runs its installed Talos: it is rebooted into the agent
/// over PXE (so it comes back as a new machine), its records are deleted and the
/// finalizer lifted; nothing else happens, then or later.
#[tokio::test]
async fn a_removed_machine_is_sent_back_to_the_agent_and_released_once() {
    let rig = removed_while_on();
    let exec = rig.executor();
    exec.wake("m1");
    rig.settle("released", |r| !r.records("m1").held).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        rig.log(),
        [
            "m1 bmc status",
            "m1 bmc Reboot(Some(Uefi))",
            "m1 store Release",
        ]
    );
    let r = rig.records("m1");
    assert!(
        r.bmc_configuration.is_none() && r.wipe.is_none() && r.status.is_none(),
        "records left: {r:?}"
    );
}

/// A machine removed while it runs the agent (or is off) is only released: no reboot.
#[tokio::test]
async fn a_removed_machine_running_the_agent_is_released_without_a_reboot() {
    let rig = removed_while_on();
    rig.agent.connect("m1");
    let exec = rig.executor();
    exec.event("m1", Event::TunnelConnected);
    rig.settle("released", |r| !r.records("m1").held).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.log(), ["m1 bmc status", "m1 store Release"]);
}

/// An agent in test mode offers the emulated machine's HTTP power API: its address comes
/// from the launch configuration naming the machine, no IPMI user is created, and the
/// machine is then wiped and powered off through that API.
#[tokio::test]
async fn a_test_mode_agent_gets_the_power_api_from_the_launch_configs() {
    let rig = Rig::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node-1.config"),
        r#"{"NodeUUID": "m1", "Network": {"GatewayAddrs": ["10.5.0.1"]},
            "APIBindAddress": {"IP": "10.5.0.1", "Port": 40123, "Zone": ""}}"#,
    )
    .unwrap();
    *rig.power_api_dir.lock().unwrap() = Some(dir.path().to_owned());
    rig.agent.api_only.store(true, Ordering::SeqCst);
    rig.set("m1", with_infra(accepted()));
    rig.power_on("m1");
    let _exec = rig.connect_until_ready_and_off("m1").await;
    let bmc = rig
        .records("m1")
        .bmc_configuration
        .expect("BMC configuration");
    assert_eq!(
        bmc.api.map(|a| a.address).as_deref(),
        Some("10.5.0.1:40123")
    );
    assert!(bmc.ipmi.is_none());
    let log = rig.log();
    assert!(
        !log.iter().any(|e| e.contains("SetPowerManagement")),
        "no IPMI user for an emulated machine: {log:#?}"
    );
    assert!(log.contains(&"m1 bmc Off".to_owned()), "{log:#?}");
}

/// Without the state directory the step fails, naming the flag, and is retried: nothing
/// is stored and no power action is taken.
#[tokio::test]
async fn a_test_mode_agent_without_the_state_dir_is_an_error() {
    let rig = Rig::new();
    rig.agent.api_only.store(true, Ordering::SeqCst);
    rig.set("m1", with_infra(accepted()));
    rig.power_on("m1");
    rig.agent.connect("m1");
    let exec = rig.executor();
    exec.event("m1", Event::TunnelConnected);
    rig.settle("tried twice", |r| {
        r.log()
            .iter()
            .filter(|e| e.ends_with("GetPowerManagement"))
            .count()
            >= 2
    })
    .await;
    assert!(rig.records("m1").bmc_configuration.is_none());
    assert!(
        !rig.log().iter().any(|e| e.contains(" bmc ")),
        "{:#?}",
        rig.log()
    );
    assert!(exec.stats().steps("bmc_setup") == 0);
}

/// A wall clock that a test sets forward or back: the system's plus an offset.
#[derive(Clone, Default)]
struct JumpingClock(Arc<Mutex<Duration>>, Arc<AtomicBool>);

impl JumpingClock {
    fn now(&self) -> std::time::SystemTime {
        let offset = *self.0.lock().unwrap();
        let now = std::time::SystemTime::now();
        if self.1.load(Ordering::SeqCst) {
            now - offset
        } else {
            now + offset
        }
    }

    /// Forward by `by` (`back`: back by `by`) from the system's clock.
    fn jump(&self, by: Duration, back: bool) {
        *self.0.lock().unwrap() = by;
        self.1.store(back, Ordering::SeqCst);
    }
}

/// The wall clock jumps by `by` (forward, or `back`) during the cooldown that follows a
/// power-on: the power-off Omni then asks for comes once the cooldown has run on the
/// monotonic clock, neither at once nor (for a jump back) never; nothing is repeated.
async fn cooldown_across_a_clock_jump(by: Duration, back: bool) {
    const COOLDOWN: Duration = Duration::from_secs(2);
    let rig = Rig::new();
    let mut records = wiped();
    records.infra.as_mut().unwrap().preferred_power_state =
        omni::infra_machine_spec::MachinePowerState::PowerStateOn as i32;
    rig.set("m1", records);
    let clock = JumpingClock::default();
    let mut settings = Settings::new(
        Policy {
            min_reboot_interval: COOLDOWN,
            ..Policy::default()
        },
        BTreeMap::new(),
    );
    settings.power_poll_interval = Duration::from_secs(3600);
    settings.retry_base = Duration::from_millis(10);
    let tick = clock.clone();
    let exec = Executor::with_sources(
        rig.store.clone(),
        rig.bmc.clone(),
        rig.agent.clone(),
        settings,
        Arc::new(move || tick.now()),
        Box::new(super::secrets::OsSecrets),
    );
    exec.wake("m1");
    let acted = |rig: &Rig| rig.bmc.acted_at.lock().unwrap().clone();
    rig.settle("powered on", |r| !acted(r).is_empty()).await;
    let on_at = acted(&rig)[0].1;

    // Omni now prefers the machine off, and the wall clock jumps.
    clock.jump(by, back);
    rig.store
        .records
        .lock()
        .unwrap()
        .get_mut("m1")
        .unwrap()
        .infra
        .as_mut()
        .unwrap()
        .preferred_power_state = omni::infra_machine_spec::MachinePowerState::PowerStateOff as i32;
    exec.wake("m1");

    // Waits on the power-off itself (generous bound: a jump back must not stretch the
    // cooldown by the jump).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acted(&rig).len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no power-off after the cooldown (clock {} by {by:?}); log: {:#?}",
            if back { "back" } else { "forward" },
            rig.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acts = acted(&rig);
    assert!(acts[0].0.starts_with("m1 On"), "{acts:?}");
    assert_eq!(acts[1].0, "m1 Off", "{acts:?}");
    assert!(
        acts[1].1.duration_since(on_at) >= COOLDOWN,
        "powered off {:?} after the power-on, within the {COOLDOWN:?} cooldown (clock {} by {by:?})",
        acts[1].1.duration_since(on_at),
        if back { "back" } else { "forward" },
    );
    // A bounded quiet period after the power-off: nothing repeated.
    rig.settle("off recorded", |r| {
        r.records("m1").status.is_some_and(|s| {
            s.power_state
                == omni::infra_machine_status_spec::MachinePowerState::PowerStateOff as i32
        })
    })
    .await;
    exec.wake("m1");
    rig.settle("quiet", |_| true).await;
    let log = rig.log();
    let power: Vec<&String> = log.iter().filter(|e| e.contains(" bmc O")).collect();
    assert_eq!(power.len(), 2, "one power-on, one power-off: {log:#?}");
    let ops: Vec<&String> = log.iter().filter(|e| e.contains("store PowerOp")).collect();
    assert_eq!(ops.len(), 2, "each recorded once: {log:#?}");
}

#[tokio::test]
async fn a_wall_clock_jump_forward_does_not_end_a_cooldown() {
    cooldown_across_a_clock_jump(Duration::from_secs(2 * 3600), false).await;
}

#[tokio::test]
async fn a_wall_clock_jump_back_does_not_stretch_a_cooldown() {
    cooldown_across_a_clock_jump(Duration::from_secs(24 * 3600), true).await;
}

/// A shutdown during a wipe lets the wipe finish and be recorded, then starts no other
/// step: the machine is never left half-changed, and no task is aborted.
#[tokio::test]
async fn a_shutdown_mid_wipe_finishes_the_step_and_starts_no_other() {
    let rig = Rig::new();
    rig.set("m1", with_infra(accepted()));
    rig.power_on("m1");
    rig.agent.connect("m1");
    *rig.agent.wipe_time.lock().unwrap() = Duration::from_millis(300);
    let exec = rig.executor();
    exec.event("m1", Event::TunnelConnected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !rig
        .log()
        .iter()
        .any(|e| e.starts_with("m1 agent WipeDisks"))
    {
        assert!(tokio::time::Instant::now() < deadline, "{:#?}", rig.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    exec.shutdown();
    tokio::time::timeout(Duration::from_secs(5), exec.stopped())
        .await
        .expect("the machine's task ends once its step is done");
    let log = rig.log();
    assert!(
        log.iter().any(|e| e == "m1 store WipeDone \"\""),
        "the wipe in progress finished and was recorded: {log:#?}"
    );
    assert!(
        !log.iter()
            .any(|e| e == "m1 bmc Off" || e.contains("PowerOp")),
        "no step after the stop: {log:#?}"
    );
    // Woken after the stop, the machine starts nothing.
    exec.wake("m1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rig.log(), log);
}
