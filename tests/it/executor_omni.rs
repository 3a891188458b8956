//! The control loop's executor against real peers: Omni's COSI state served by the Go
//! harness built on the upstream modules (`tests/omni-harness`, see
//! `tests/it/omni_conformance.rs`) and a BMC simulated by OpenIPMI's `ipmi_sim`
//! (the test-support crate's `ipmi_sim` module).
//!
//! - Started by Omni's watched changes alone, an accepted, already-wiped machine whose
//!   operator gave BMC credentials in Omni is powered off exactly once (Omni prefers it
//!   off); ironboot records the `PowerOperation` and publishes an `InfraMachineStatus`
//!   that Omni's own Go types decode; a restarted executor repeats nothing.
//! - A new machine whose metal agent (`tests/agent-harness`, the real grpctunnel Go
//!   module) opened its tunnel is wiped through the agent once, recorded in `WipeStatus`,
//!   then powered off once.
//! - An agent that disconnects in the middle of the wipe: the wipe is not recorded as
//!   done, nothing else happens while the agent is away, and the wipe is sent again once
//!   an agent of the machine is back, then recorded and followed by the power-off.
//!
//! "Nothing more happened" is asserted after the event it follows and a bounded quiet
//! period ([`quiet`]) in which what is checked stayed the same, never after a fixed sleep.
//!
//! Needs Go and the harnesses' modules and `ipmi_sim` (`tests/install-prereqs.sh`); a
//! missing one fails the test naming it. Everything listens on 127.0.0.1.

use ironboot::testing::{agent, executor, lifecycle, omni};
use ironboot_test_support::{go_harness, ipmi_sim, omni_harness};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ironboot_proto::{baremetal, omni as specs};
use serde_json::{Value, json};

use agent::admission::{AgentGate, KnownMachines};
use agent::tunnel::Tunnels;
use executor::Settings;
use executor::real::Running;
use lifecycle::Policy;
use omni::client::Client;

const ID: &str = "bare-metal";

/// The chassis changes, a request the IPMI client retransmitted (its reply was late, so
/// `ipmi_sim` ran it twice) counted once: what is asserted is the executor's actions.
fn power_changes(bmc: &ipmi_sim::SimBmc) -> Vec<String> {
    let mut changes = bmc.changes();
    changes.dedup();
    changes
}

/// The Omni harness, built once per test run (two tests building it at once would race).
fn omni_harness() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_harness::build("the executor's Omni test", "omni-harness", "omniharness"))
}

/// The metal agent harness, built once per test run.
fn agent_harness() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        go_harness::build("the executor's agent test", "agent-harness", "agentharness")
    })
}

/// A running harness; killed (by its PID, through our handle) on drop.
struct Harness {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
    key: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Self {
        let bin = omni_harness();
        let key = omni_harness::keygen(bin, &["--id", ID]);
        let s = omni_harness::serve(bin, &key, &[]);
        Self {
            child: s.child,
            stdin: s.stdin,
            stdout: s.stdout,
            addr: s.addr,
            key,
            _dir: s.dir,
        }
    }

    fn ok(&mut self, cmd: Value) -> Value {
        let v = omni_harness::send(&mut self.stdin, &mut self.stdout, &cmd);
        assert_eq!(
            v["ok"], true,
            "harness command {cmd} failed: {}",
            v["error"]
        );
        v
    }

    /// Omni: `id` is accepted (preferred power: off) with `token` as its node token.
    fn put_accepted(&mut self, id: &str, token: &str) {
        self.ok(json!({
            "cmd": "put", "kind": "InfraMachine", "id": id,
            "spec": {"acceptanceStatus": "ACCEPTED", "nodeUniqueToken": token},
            "labels": {"omni.sidero.dev/infra-provider-id": ID},
        }));
    }

    /// Omni: the operator gave `id` the simulated BMC on 127.0.0.1:`port`.
    fn put_bmc_config(&mut self, id: &str, port: u16) {
        self.ok(json!({
            "cmd": "put", "kind": "BMCConfig", "id": id,
            "spec": {"config": {"ipmi": {"address": "127.0.0.1", "port": port,
                "username": ipmi_sim::USER, "password": ipmi_sim::PASSWORD}}},
            "labels": {"omni.sidero.dev/infra-provider-id": ID},
        }));
    }

    /// Omni's Go types decode `id`'s status (protobuf and YAML) as ready, powered off and
    /// wiped for `token`.
    fn check_ready_and_off(&mut self, id: &str, token: &str) {
        self.ok(json!({
            "cmd": "check", "ns": "infra-provider", "type": "InfraMachineStatuses.omni.sidero.dev",
            "id": id,
            "spec": {"powerState": "POWER_STATE_OFF", "readyToUse": true,
                "wipedNodeUniqueToken": token},
            "labels": {"rack": "a1", "omni.sidero.dev/infra-provider-id": ID},
            "owner": "bare-metal.InfraMachineStatusController",
        }));
    }

    fn client(&self) -> Client {
        omni::signed_client(&format!("http://{}", self.addr), &self.key, ID)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulated BMC named `name`, powered on and answering; with its port.
fn powered_on_bmc(name: &str) -> (ipmi_sim::SimBmc, u16) {
    let bmc = ipmi_sim::SimBmc::start(name);
    bmc.set_power(true);
    bmc.wait_ready_blocking();
    let port = bmc
        .address()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse::<u16>()
        .unwrap();
    (bmc, port)
}

/// Polls `probe` until its value has stayed the same for [`QUIET`] (at most 60 s) and
/// returns it: what a late, wrongful action would change shows before this returns.
fn quiet<T: PartialEq + std::fmt::Debug>(what: &str, mut probe: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = probe();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = probe();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= QUIET {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never settled: last {last:?}"
        );
    }
}

/// How long a checked value must stay unchanged to count as settled: several executor
/// passes (each follows the last at once, or after 10 ms to 1 s of failure backoff).
const QUIET: Duration = Duration::from_secs(3);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn accepted_wiped_machine_is_powered_off_once_and_its_status_published() {
    let mut h = Harness::start();
    let (bmc, port) = powered_on_bmc("executor-omni");
    let rt = runtime();
    let _guard = rt.enter();
    let client = h.client();
    // The provider's record of a wipe done by an earlier run.
    let wiped = client.new_resource(
        "m1",
        baremetal::WipeStatusSpec {
            initial_wipe_done: true,
            wiped_node_unique_token: "tok-1".into(),
            ..Default::default()
        },
    );
    rt.block_on(client.create(&wiped, "bare-metal.WipeStatusController"))
        .expect("seeding WipeStatus");

    let running = start(&client);

    // Omni: the machine is accepted (preferred power: off), the operator gave its BMC.
    h.put_accepted("m1", "tok-1");
    h.put_bmc_config("m1", port);

    // Wait for the power-off and the status that reports it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = rt
            .block_on(client.get_opt::<specs::InfraMachineStatusSpec>("m1"))
            .expect("reading InfraMachineStatus");
        let off = specs::infra_machine_status_spec::MachinePowerState::PowerStateOff as i32;
        if status.is_some_and(|s| s.spec.power_state == off) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no power-off reported; chassis log: {:?}",
            bmc.chassis_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        quiet("the BMC's changes", || power_changes(&bmc)),
        ["set power 0"],
        "exactly one power-off"
    );

    let op = rt
        .block_on(client.get::<baremetal::PowerOperationSpec>("m1"))
        .expect("PowerOperation recorded");
    assert_eq!(
        op.spec.last_power_operation,
        baremetal::PowerState::Off as i32
    );
    assert_eq!(op.metadata.owner, "bare-metal.PowerOperationController");

    // Omni's Go types decode the status (protobuf and YAML) as written.
    h.check_ready_and_off("m1", "tok-1");

    // A restarted provider over the same records repeats nothing: it reads the power
    // state (a chassis `get`) and leaves the machine alone.
    drop(running);
    let reads_before = bmc.chassis_log().len();
    let running = start(&client);
    let deadline = Instant::now() + Duration::from_secs(30);
    while bmc.chassis_log().len() == reads_before {
        assert!(
            Instant::now() < deadline,
            "the restarted executor never read the BMC"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        quiet("the BMC's changes", || power_changes(&bmc)),
        ["set power 0"],
        "no power action after a restart"
    );
    let op_after = rt
        .block_on(client.get::<baremetal::PowerOperationSpec>("m1"))
        .expect("PowerOperation");
    assert_eq!(
        op_after.metadata.version, op.metadata.version,
        "no new record"
    );
    drop(running);
}

/// The control loop over `client` as the binary starts it, with a fresh BMC fleet and a
/// tunnel registry no agent connects to.
fn start(client: &Client) -> Running {
    start_with(client, &Tunnels::new(AgentGate::open()))
}

/// Like [`start`], with the agents of `tunnels`.
fn start_with(client: &Client, tunnels: &Tunnels) -> Running {
    let mut settings = Settings::new(
        Policy::default(),
        BTreeMap::from([("rack".to_owned(), "a1".to_owned())]),
    );
    settings.power_poll_interval = Duration::from_secs(3600);
    executor::start_for_test(client, tunnels, settings)
}

/// A metal agent played by `tests/agent-harness` (the real jhump/grpctunnel Go module),
/// dialling ironboot's tunnel service; killed by PID on drop.
struct GoAgent {
    child: Child,
    calls: std::sync::mpsc::Receiver<Value>,
    seen: std::sync::Mutex<Vec<String>>,
}

impl GoAgent {
    fn start(tunnel_addr: std::net::SocketAddr, machine_id: &str) -> Self {
        Self::start_with(tunnel_addr, machine_id, &[])
    }

    /// Like [`GoAgent::start`], with more of the harness's flags.
    fn start_with(tunnel_addr: std::net::SocketAddr, machine_id: &str, extra: &[&str]) -> Self {
        let bin = agent_harness();
        let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/proto");
        let mut child = Command::new(bin)
            .arg("--addr")
            .arg(tunnel_addr.to_string())
            .args(["--machine-id", machine_id, "--name", "agent"])
            .args(["--proto-dir", proto_dir])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the agent harness");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, calls) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("method").is_some() && tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            calls,
            seen: std::sync::Mutex::default(),
        }
    }

    /// The methods the agent was called with so far (a call's end is not counted).
    fn methods(&self) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(
            self.calls
                .try_iter()
                .filter(|v| v["event"] != "cancelled" && v["event"] != "finished")
                .map(|v| v["method"].as_str().unwrap_or_default().to_owned()),
        );
        seen.clone()
    }

    /// Waits (at most 30 s) until the agent was called with `method`.
    fn wait_for_call(&self, method: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.methods().iter().any(|m| m == method) {
            assert!(
                Instant::now() < deadline,
                "the agent was never called with {method}: {:?}",
                self.methods()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GoAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_new_machine_is_wiped_through_its_agent_then_powered_off() {
    let mut h = Harness::start();
    let (bmc, port) = powered_on_bmc("executor-agent");
    let rt = runtime();
    let _guard = rt.enter();
    let client = h.client();

    // ironboot's tunnel service, as the binary mounts it on the API port.
    let tunnels = Tunnels::new(AgentGate::open());
    let (tunnel_addr, server) = serve_tunnels(&rt, &tunnels);
    let running = start_with(&client, &tunnels);

    // The agent connects; Omni then creates the machine, and the operator accepts it
    // with BMC credentials of their own (so no IPMI user is set up through the agent).
    let mut events = tunnels.subscribe();
    let agent = GoAgent::start(tunnel_addr, "00000000-0000-4000-8000-000000000001");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(agent::tunnel::TunnelEvent::Connected { machine_id }) =
                    events.recv().await
                    && machine_id == "00000000-0000-4000-8000-000000000001"
                {
                    return;
                }
            }
        })
        .await
        .expect("the Go agent never opened its tunnel");
    });
    h.put_bmc_config("00000000-0000-4000-8000-000000000001", port);
    h.put_accepted("00000000-0000-4000-8000-000000000001", "tok-9");

    wait_ready_and_off(
        &rt,
        &client,
        "00000000-0000-4000-8000-000000000001",
        &bmc,
        Duration::from_secs(30),
        "not wiped and powered off in time",
    );
    let (methods, changes) = quiet("the agent's calls and the BMC's changes", || {
        (agent.methods(), power_changes(&bmc))
    });
    assert_eq!(methods, ["WipeDisks"], "one wipe, nothing else");
    assert_eq!(changes, ["set power 0"], "one power-off, after the wipe");
    let wipe = rt
        .block_on(client.get::<baremetal::WipeStatusSpec>("00000000-0000-4000-8000-000000000001"))
        .expect("WipeStatus recorded");
    assert_eq!(
        wipe.spec,
        baremetal::WipeStatusSpec {
            last_wipe_id: String::new(),
            last_wipe_install_event_id: 0,
            initial_wipe_done: true,
            wiped_node_unique_token: "tok-9".into(),
        }
    );
    assert_eq!(wipe.metadata.owner, "bare-metal.WipeStatusController");
    h.check_ready_and_off("00000000-0000-4000-8000-000000000001", "tok-9");
    drop(running);
    tunnels.close_all();
    server.abort();
}

/// Waits (at most 30 s) for the tunnel event `want` of `machine_id` on `events`.
fn wait_tunnel(
    rt: &tokio::runtime::Runtime,
    events: &mut tokio::sync::broadcast::Receiver<agent::tunnel::TunnelEvent>,
    machine_id: &str,
    connected: bool,
) {
    use agent::tunnel::TunnelEvent;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match events.recv().await {
                    Ok(TunnelEvent::Connected { machine_id: m })
                        if connected && m == machine_id =>
                    {
                        return;
                    }
                    Ok(TunnelEvent::Disconnected { machine_id: m })
                        if !connected && m == machine_id =>
                    {
                        return;
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("tunnel events ended: {e}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no {} event of {machine_id}",
                if connected { "connect" } else { "disconnect" }
            )
        });
    });
}

/// `ironboot_lifecycle_failed_passes_total` of `running`.
fn failed_passes(running: &Running) -> u64 {
    let mut out = String::new();
    running.render_prometheus(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix("ironboot_lifecycle_failed_passes_total "))
        .and_then(|n| n.parse().ok())
        .expect("ironboot_lifecycle_failed_passes_total in the executor's metrics")
}

#[test]
fn an_agent_lost_in_the_middle_of_a_wipe_gets_the_wipe_again_once_back() {
    let mut h = Harness::start();
    let (bmc, port) = powered_on_bmc("executor-agent-lost");
    let rt = runtime();
    let _guard = rt.enter();
    let client = h.client();
    let tunnels = Tunnels::new(AgentGate::open());
    let (tunnel_addr, server) = serve_tunnels(&rt, &tunnels);
    let running = start_with(&client, &tunnels);

    // An agent whose wipe takes far longer than the test: it is lost in the middle.
    let mut events = tunnels.subscribe();
    let slow = GoAgent::start_with(
        tunnel_addr,
        "00000000-0000-4000-8000-000000000003",
        &["--wipe-delay", "10m"],
    );
    wait_tunnel(
        &rt,
        &mut events,
        "00000000-0000-4000-8000-000000000003",
        true,
    );
    h.put_bmc_config("00000000-0000-4000-8000-000000000003", port);
    h.put_accepted("00000000-0000-4000-8000-000000000003", "tok-2");
    slow.wait_for_call("WipeDisks");
    let failed_before = failed_passes(&running);
    drop(slow);
    wait_tunnel(
        &rt,
        &mut events,
        "00000000-0000-4000-8000-000000000003",
        false,
    );

    // The executor saw the wipe fail (a failed pass), and recorded nothing as done.
    let deadline = Instant::now() + Duration::from_secs(30);
    while failed_passes(&running) == failed_before {
        assert!(
            Instant::now() < deadline,
            "the lost wipe never failed in the executor"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (wipe, status, changes) = quiet("the records and the BMC while the agent is away", || {
        (
            rt.block_on(
                client.get_opt::<baremetal::WipeStatusSpec>("00000000-0000-4000-8000-000000000003"),
            )
            .expect("reading WipeStatus")
            .map(|w| w.spec),
            rt.block_on(
                client.get_opt::<specs::InfraMachineStatusSpec>(
                    "00000000-0000-4000-8000-000000000003",
                ),
            )
            .expect("reading InfraMachineStatus")
            .map(|s| s.spec.ready_to_use),
            power_changes(&bmc),
        )
    });
    assert!(
        wipe.as_ref()
            .is_none_or(|w| !w.initial_wipe_done && w.wiped_node_unique_token.is_empty()),
        "a wipe the agent never finished is recorded as done: {wipe:?}"
    );
    assert_ne!(status, Some(true), "ready to use without a finished wipe");
    assert!(
        changes.is_empty(),
        "a power action before the wipe: {changes:?}"
    );

    // The agent is back: the wipe is sent again, recorded, and the machine powered off.
    let agent = GoAgent::start(tunnel_addr, "00000000-0000-4000-8000-000000000003");
    wait_ready_and_off(
        &rt,
        &client,
        "00000000-0000-4000-8000-000000000003",
        &bmc,
        Duration::from_secs(30),
        "not wiped and powered off after the agent came back",
    );
    let (methods, changes) = quiet("the agent's calls and the BMC's changes", || {
        (agent.methods(), power_changes(&bmc))
    });
    assert_eq!(methods, ["WipeDisks"], "the wipe sent again, once");
    assert_eq!(changes, ["set power 0"], "one power-off, after the wipe");
    let wipe = rt
        .block_on(client.get::<baremetal::WipeStatusSpec>("00000000-0000-4000-8000-000000000003"))
        .expect("WipeStatus recorded");
    assert!(wipe.spec.initial_wipe_done, "{:?}", wipe.spec);
    assert_eq!(wipe.spec.wiped_node_unique_token, "tok-2");
    drop(running);
    tunnels.close_all();
    server.abort();
}

/// The machines Omni names, for the address-bound gate.
struct KnownIds(Vec<&'static str>);

impl KnownMachines for KnownIds {
    fn is_known(&self, uuid: &str) -> bool {
        self.0.contains(&uuid)
    }
}

#[test]
fn an_impostor_agent_gets_neither_the_credentials_nor_a_recorded_wipe() {
    const MACHINE: &str = "00000000-0000-4000-8000-000000000002";
    let mut h = Harness::start();
    let (bmc, port) = powered_on_bmc("executor-impostor");
    let port = port.to_string();
    let rt = runtime();
    let _guard = rt.enter();
    let client = h.client();

    // The address-bound gate, as Omni mode builds it; the tunnel service with the
    // client's address, as the binary serves it.
    let gate = AgentGate::bound(Arc::new(KnownIds(vec![MACHINE])), None);
    let tunnels = Tunnels::new(gate.clone());
    let (tunnel_addr, server) = serve_tunnels(&rt, &tunnels);
    let running = start_with(&client, &tunnels);
    // The machine's Talos loaded its configuration (`/config?u=`) from 127.0.0.1.
    gate.config_fetch(&MACHINE.parse().unwrap(), "127.0.0.1".parse().unwrap());

    // An impostor on 127.0.0.2 claims the machine (reconnecting as the agent does) and
    // would report the simulated BMC; Omni then accepts the machine, with no BMC
    // configuration of the operator's: the control loop wants the agent to set up the
    // IPMI user, then to wipe.
    let agent_flags = |source: &'static str| {
        [
            "--source-ip",
            source,
            "--reconnect",
            "--ipmi-address",
            "127.0.0.1",
            "--ipmi-port",
            port.as_str(),
        ]
    };
    let impostor = GoAgent::start_with(tunnel_addr, MACHINE, &agent_flags("127.0.0.2"));
    h.put_accepted(MACHINE, "tok-7");
    // Bounded quiet period: the impostor is refused again and again meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tunnels_refused(&tunnels) < 5 {
        assert!(
            Instant::now() < deadline,
            "the impostor was not refused in time"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        impostor.methods(),
        Vec::<String>::new(),
        "the impostor got calls"
    );
    assert!(
        rt.block_on(client.get_opt::<baremetal::BmcConfigurationSpec>(MACHINE))
            .expect("reading BMCConfiguration")
            .is_none(),
        "credentials were set up through the impostor"
    );
    assert!(
        rt.block_on(client.get_opt::<baremetal::WipeStatusSpec>(MACHINE))
            .expect("reading WipeStatus")
            .is_none(),
        "a wipe was recorded without the machine's agent"
    );
    assert_eq!(power_changes(&bmc), Vec::<String>::new(), "no power change");

    // The real agent, from the bound address: credentials, wipe, power-off.
    let mut real_flags = agent_flags("127.0.0.1").to_vec();
    let admin = format!("{}:{}", ipmi_sim::USER, ipmi_sim::PASSWORD);
    real_flags.extend(["--ipmi-admin", admin.as_str()]);
    let agent = GoAgent::start_with(tunnel_addr, MACHINE, &real_flags);
    wait_ready_and_off(
        &rt,
        &client,
        MACHINE,
        &bmc,
        Duration::from_secs(60),
        "not set up, wiped and powered off in time",
    );
    assert_eq!(
        agent.methods(),
        ["GetPowerManagement", "SetPowerManagement", "WipeDisks"],
        "the real agent set up the BMC and wiped"
    );
    assert_eq!(
        impostor.methods(),
        Vec::<String>::new(),
        "the impostor got calls"
    );
    let stored = rt
        .block_on(client.get::<baremetal::BmcConfigurationSpec>(MACHINE))
        .expect("BMCConfiguration recorded");
    let ipmi = stored.spec.ipmi.expect("IPMI configuration");
    assert_eq!(
        (ipmi.address.as_str(), ipmi.username.as_str()),
        ("127.0.0.1", "talos-agent")
    );
    drop(running);
    tunnels.close_all();
    server.abort();
}

/// Tunnels refused because they came from another address than the machine's.
fn tunnels_refused(tunnels: &Tunnels) -> u64 {
    tunnels.stats().refusals("other_address")
}

/// ironboot's tunnel service on a loopback port, with the client's address (agents are
/// admitted by it), as the binary serves it.
fn serve_tunnels(
    rt: &tokio::runtime::Runtime,
    tunnels: &Tunnels,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tunnels.mount(axum::Router::new());
    let server = rt.spawn(async move {
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let _ = axum::serve(listener, service).await;
    });
    (addr, server)
}

/// Waits up to `limit` until Omni's `InfraMachineStatus` of `id` says ready to use and
/// powered off; fails saying `what` did not happen, with the BMC's chassis log.
fn wait_ready_and_off(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    id: &str,
    bmc: &ipmi_sim::SimBmc,
    limit: Duration,
    what: &str,
) {
    let off = specs::infra_machine_status_spec::MachinePowerState::PowerStateOff as i32;
    let deadline = Instant::now() + limit;
    loop {
        let status = rt
            .block_on(client.get_opt::<specs::InfraMachineStatusSpec>(id))
            .expect("reading InfraMachineStatus");
        if status.is_some_and(|s| s.spec.power_state == off && s.spec.ready_to_use) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; chassis log: {:?}",
            bmc.chassis_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
