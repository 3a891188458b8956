//! The provider end to end: the `ironboot` binary in Omni mode runs ten machines through
//! their whole lifecycle while the test plays Omni and the machines.
//!
//! - **Omni** is the Go harness built on the upstream COSI runtime and Omni resource types
//!   (`tests/omni-harness`). The test writes what Omni's controllers would: the
//!   `InfraMachine` once the machine's agent comes up, acceptance, allocation (a cluster
//!   Talos version, preferred power on), the install event when Talos installs, a reboot
//!   request, a power-off request, deallocation (a new wipe ID, preferred power off), and
//!   a cordon. It reads the `InfraMachineStatus` ironboot publishes.
//! - **Each machine** is a simulated BMC (OpenIPMI's `ipmi_sim`) plus a small state machine
//!   standing for the host: it follows the BMC's chassis log (power on, off, cycle, PXE
//!   once), boots disk-first (network when the disk is empty or PXE-once is set) by asking
//!   ironboot's `/ipxe/boot.ipxe`, and acts on the answer: the agent-mode image starts the
//!   metal agent (`tests/agent-harness`, the real grpctunnel Go module, which sets up the
//!   IPMI user on the simulated BMC as the real agent does in-band), the cluster's Talos
//!   image installs Talos on the disk, "exit" boots the disk. A wipe empties the disk.
//! - **The Image Factory** is an in-process stand-in answering schematic creation.
//!
//! Checked for every machine: the exact sequence of BMC changes and of agent calls, and the
//! published status after every phase. The chaos variant kills ironboot (SIGKILL) at random
//! moments throughout and restarts it: the sequences must be the same, nothing repeated
//! nor lost. The seed is printed; `IRONBOOT_SCENARIO_SEED` replays one. The outage variants
//! reach Omni through a relay ([`tcp_relay::Relay`]) that cuts it off (connections reset) or
//! pauses it (a black hole) for [`OUTAGE`] right after the reboot request: every machine's boot is still answered from ironboot's cached
//! state, `/healthz` and `ironboot_omni_reachable` report the outage, the provider's
//! heartbeat reaches Omni again after it, and the sequences are the same.
//!
//! Needs Go with the harnesses' modules, `ipmi_sim` and `ipmitool`
//! (`tests/install-prereqs.sh`); a missing one fails the test naming it. Everything
//! listens on loopback addresses of its own.

use ironboot_test_support::{go_harness, ipmi_sim, launch, logs, metrics, omni_harness, tcp_relay};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const PROVIDER: &str = "bare-metal";
const MACHINES: usize = 10;
/// The Talos version of agent mode (`--agent-mode-talos-version`) and of the cluster.
const AGENT_TALOS: &str = "v1.13.7";
const CLUSTER_TALOS: &str = "v1.12.4";
/// `--min-reboot-interval`: longer than an agent takes to come up after a boot here.
const MIN_REBOOT_INTERVAL: &str = "4s";
/// ironboot's BMC power readings (hidden flag; upstream's fixed 30 s would slow the test).
const POWER_POLL_INTERVAL: &str = "2s";
/// The provider's private records of each machine, in its namespace.
const PRIVATE_NS: &str = "infra-provider:bare-metal";
const PRIVATE_KINDS: [&str; 4] = [
    "WipeStatus.bare-metal.infraprovider.sidero.dev",
    "BMCConfiguration.bare-metal.infraprovider.sidero.dev",
    "PowerOperation.bare-metal.infraprovider.sidero.dev",
    "RebootStatus.bare-metal.infraprovider.sidero.dev",
];
/// Bound of each phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the outage variants keep Omni away.
const OUTAGE: Duration = Duration::from_secs(60);

/// How the outage variants keep Omni away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// Every connection reset, new ones refused.
    Cut,
    /// No byte moves, new connections never answered.
    Pause,
}

fn omni_harness_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_harness::build("the lifecycle scenario", "omni-harness", "omniharness"))
}

fn agent_harness_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_harness::build("the lifecycle scenario", "agent-harness", "agentharness"))
}

fn require_commands() {
    for cmd in ["ipmitool", "ipmi_sim"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/bin".into(), "/usr/sbin".into()])
            .any(|d| d.join(cmd).is_file());
        assert!(
            found,
            "the lifecycle scenario needs `{cmd}` (Debian packages openipmi and ipmitool): \
             run sudo tests/install-prereqs.sh"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Omni, played through the Go harness.

/// Omni's side: the harness, and the `InfraMachine` specs as Omni's controllers keep them.
struct Omni {
    pipes: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    child: Mutex<Child>,
    addr: String,
    key: String,
    machines: Mutex<HashMap<String, Value>>,
    _dir: tempfile::TempDir,
}

impl Omni {
    fn start() -> Self {
        let bin = omni_harness_bin();
        let key = omni_harness::keygen(bin, &["--id", PROVIDER]);
        let s = omni_harness::serve(bin, &key, &[]);
        Self {
            pipes: Mutex::new((s.stdin, s.stdout)),
            child: Mutex::new(s.child),
            addr: s.addr,
            key,
            machines: Mutex::new(HashMap::new()),
            _dir: s.dir,
        }
    }

    fn send(&self, cmd: &Value) -> Value {
        let mut pipes = self.pipes.lock().unwrap();
        let (stdin, stdout) = &mut *pipes;
        let v = omni_harness::send(stdin, stdout, cmd);
        assert_eq!(
            v["ok"], true,
            "harness command {cmd} failed: {}",
            v["error"]
        );
        v
    }

    /// Omni changes machine `id`'s `InfraMachine` (creating it first if `create`).
    fn update(&self, id: &str, change: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let mut machines = self.machines.lock().unwrap();
        let Some(spec) = machines.get_mut(id) else {
            panic!("Omni has no InfraMachine {id}");
        };
        change(spec.as_object_mut().unwrap());
        self.send(&json!({
            "cmd": "put", "kind": "InfraMachine", "id": id, "spec": spec,
            "labels": {"omni.sidero.dev/infra-provider-id": PROVIDER},
        }));
    }

    /// Omni creates `id`'s `InfraMachine` (pending acceptance) unless it exists.
    fn create_if_new(&self, id: &str) {
        {
            let mut machines = self.machines.lock().unwrap();
            if machines.contains_key(id) {
                return;
            }
            machines.insert(
                id.to_owned(),
                json!({"acceptanceStatus": "PENDING", "preferredPowerState": "POWER_STATE_ON"}),
            );
        }
        self.update(id, |_| {});
    }

    fn known(&self, id: &str) -> bool {
        self.machines.lock().unwrap().contains_key(id)
    }

    /// `id`'s `InfraMachineStatus` spec (proto field names), if ironboot wrote one.
    fn status(&self, id: &str) -> Option<Value> {
        let v = self.send(&json!({
            "cmd": "get", "ns": "infra-provider",
            "type": "InfraMachineStatuses.omni.sidero.dev", "id": id,
        }));
        (v["found"] == true).then(|| v["spec"].clone())
    }

    fn provider_registered(&self) -> bool {
        let v = self.send(&json!({
            "cmd": "get", "ns": "infra-provider",
            "type": "InfraProviderStatuses.omni.sidero.dev", "id": PROVIDER,
        }));
        v["found"] == true
    }
}

impl Drop for Omni {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The Image Factory stand-in: schematic IDs by content.

struct Factory {
    url: String,
    /// Every schematic created: its ID and body.
    schematics: Schematics,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Factory {
    fn start(ip: &str) -> Self {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("factory stand-in bind");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let schematics = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (schematics.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let seen = seen.clone();
                        thread::spawn(move || serve_factory(conn, &seen));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            url,
            schematics,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Factory {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Schematics = Arc<Mutex<Vec<(String, String)>>>;

/// The kernel argument `name=value` of schematic `id`'s body, if any.
fn schematic_kernel_arg(schematics: &Schematics, id: &str, name: &str) -> Option<String> {
    let all = schematics.lock().unwrap();
    let (_, body) = all.iter().find(|(i, _)| i == id)?;
    // The schematic is YAML: `customization.extraKernelArgs` is a list of `- arg` lines.
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|a| a.trim().trim_matches(['"', '\'']))
        .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

/// One request on `conn`: `POST /schematics` answers `{"id": <sha256 of the body>}`.
fn serve_factory(mut conn: TcpStream, seen: &Mutex<Vec<(String, String)>>) {
    use sha2::Digest;
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let Some((head, body)) = read_http(&mut conn) else {
        return;
    };
    let (status, answer) = if head.starts_with("POST /schematics ") {
        let id = format!("{:x}", sha2::Sha256::digest(&body));
        seen.lock()
            .unwrap()
            .push((id.clone(), String::from_utf8_lossy(&body).into_owned()));
        ("201 Created", json!({ "id": id }).to_string())
    } else {
        ("404 Not Found", String::new())
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// Reads one HTTP/1.1 message (head and a content-length body).
fn read_http(conn: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

/// `GET path` on `addr`: status code and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    ironboot_test_support::http::get(addr, path)
}

// ---------------------------------------------------------------------------------------
// ironboot, the binary under test.

struct Ironboot {
    child: Option<Child>,
    ip: String,
    port: u16,
    state: tempfile::TempDir,
    log: PathBuf,
    omni_url: String,
    key: String,
    factory_url: String,
    /// `--tls-api-port`, with `--tls-enabled`.
    tls_port: Option<u16>,
    starts: u32,
}

impl Ironboot {
    /// ironboot on `ip`, reaching Omni's harness at `omni_addr` (directly, or a relay).
    fn new(ip: &str, omni: &Omni, omni_addr: &str, factory: &Factory, tls: bool) -> Self {
        let state = tempfile::tempdir().unwrap();
        // One debug log in the suite's log directory for all of this ironboot's starts.
        let (_, log) = logs::ironboot_log(if tls { "tls" } else { "h2c" });
        Self {
            child: None,
            ip: ip.to_owned(),
            port: free_tcp_port(ip),
            state,
            log,
            omni_url: format!("http://{omni_addr}"),
            key: omni.key.clone(),
            factory_url: factory.url.clone(),
            tls_port: tls.then(|| free_tcp_port(ip)),
            starts: 0,
        }
    }

    fn api(&self) -> SocketAddr {
        format!("{}:{}", self.ip, self.port).parse().unwrap()
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = launch::command();
        if let Some(port) = self.tls_port {
            cmd.args(["--tls-enabled", "--tls-api-port", &port.to_string()]);
        }
        let child = cmd
            .args(["--omni-api-endpoint", &self.omni_url])
            .args(["--api-listen-address", &self.ip])
            .args(["--api-advertise-address", &self.ip])
            .args(["--api-port", &self.port.to_string()])
            .args(["--disable-dhcp-proxy", "--udp-driver", "portable"])
            .arg("--state-dir")
            .arg(self.state.path())
            .args(["--image-factory-base-url", &self.factory_url])
            .args(["--image-factory-pxe-base-url", &self.factory_url])
            .args(["--agent-mode-talos-version", AGENT_TALOS])
            .args(["--min-reboot-interval", MIN_REBOOT_INTERVAL])
            .args(["--power-poll-interval", POWER_POLL_INTERVAL])
            .args(["--ipmi-pxe-boot-mode", "bios"])
            .args(["--redfish-use-when-available=false"])
            .args(["--machine-labels", "rack=a1,scenario"])
            .args([
                "--agent-call-timeout",
                "10s",
                "--agent-fast-wipe-timeout",
                "30s",
            ])
            .env("OMNI_SERVICE_ACCOUNT_KEY", &self.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting ironboot");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(self.api(), "/healthz").map(|(s, _)| s).ok() != Some(200) {
            assert!(
                Instant::now() < deadline,
                "ironboot never served /healthz\n{}",
                self.tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no clean-up, as a crash or an OOM kill.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Ironboot {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------
// The machines.

/// A metal agent process (one per agent-mode boot), reconnecting as the real one does.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Agent {
    /// An agent dialling `address` (`metal.provider.address`: `ip:port`, or
    /// `https://ip:port` trusting the CA in `ca_file`).
    fn start(address: &str, ca_file: Option<&Path>, id: &str, bmc_port: u16) -> Self {
        let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/proto");
        let mut cmd = Command::new(agent_harness_bin());
        if let Some(ca) = ca_file {
            cmd.arg("--tls-ca-file").arg(ca);
        }
        let mut child = cmd
            .args(["--addr", address, "--machine-id", id, "--name", id])
            .args(["--proto-dir", proto_dir, "--reconnect"])
            .args([
                "--ipmi-address",
                "127.0.0.1",
                "--ipmi-port",
                &bmc_port.to_string(),
            ])
            .args([
                "--ipmi-admin",
                &format!("{}:{}", ipmi_sim::USER, ipmi_sim::PASSWORD),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the agent harness");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Self { child, lines }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disk {
    Empty,
    Talos,
}

/// What one machine went through, for the assertions.
#[derive(Debug, Default, Clone)]
struct History {
    /// Agent RPCs served, in order, over all of the machine's agent boots.
    agent_calls: Vec<String>,
    /// For each of `agent_calls`, which agent boot served it (1 = the first).
    call_boots: Vec<usize>,
    /// What each boot ran: agent, install, talos, halt, refused.
    boots: Vec<String>,
}

/// One simulated host behind its BMC, driven by a thread until `stop`.
struct Machine {
    id: String,
    bmc: ipmi_sim::SimBmc,
    bmc_port: u16,
    history: Arc<Mutex<History>>,
}

impl Machine {
    fn new(index: usize) -> Self {
        let id = format!("5c0e1b7a-0000-4000-8000-{index:012x}");
        let bmc = ipmi_sim::SimBmc::start(&format!("scenario-{index}"));
        bmc.set_power(true);
        bmc.wait_ready_blocking();
        let bmc_port = bmc.address().rsplit_once(':').unwrap().1.parse().unwrap();
        Self {
            id,
            bmc,
            bmc_port,
            history: Arc::default(),
        }
    }

    /// The BMC's power and boot-device changes, retransmitted duplicates folded.
    fn bmc_changes(&self) -> Vec<String> {
        let mut changes = self.bmc.changes();
        changes.dedup();
        changes
    }
}

/// The host's state machine: follows the chassis log, boots, runs agents.
struct Host {
    id: String,
    bmc_port: u16,
    api: SocketAddr,
    omni: Arc<Omni>,
    history: Arc<Mutex<History>>,
    powered: bool,
    pxe_once: bool,
    disk: Disk,
    agent: Option<Agent>,
    seen_log: usize,
    schematics: Schematics,
    /// Holds the CA file of TLS agents.
    dir: tempfile::TempDir,
}

impl Host {
    fn run(mut self, log: impl Fn() -> Vec<String>, stop: &AtomicBool) {
        // The machine was on when the test began: it boots now.
        self.powered = true;
        self.boot();
        while !stop.load(Ordering::Relaxed) {
            let lines = log();
            for line in lines.iter().skip(self.seen_log) {
                self.chassis(line);
            }
            self.seen_log = lines.len();
            self.drain_agent();
            thread::sleep(Duration::from_millis(30));
        }
    }

    fn chassis(&mut self, line: &str) {
        match line {
            "set boot pxe" => self.pxe_once = true,
            l if l.starts_with("set boot ") => self.pxe_once = false,
            "set power 1" if !self.powered => {
                self.powered = true;
                self.boot();
            }
            "set power 0" if self.powered => {
                self.powered = false;
                // What the agent did before the power went is history: read it first.
                self.drain_agent();
                self.agent = None;
            }
            "set reset 1" if self.powered => self.boot(),
            _ => {}
        }
    }

    fn drain_agent(&mut self) {
        let Some(agent) = &self.agent else { return };
        let mut up = false;
        for v in agent.lines.try_iter() {
            if v["event"] == "serving" {
                up = true;
            }
            if v["event"] == "call" {
                let method = v["method"].as_str().unwrap_or_default().to_owned();
                if method == "WipeDisks" {
                    self.disk = Disk::Empty;
                }
                let mut history = self.history.lock().unwrap();
                let boot = history.boots.iter().filter(|b| *b == "agent").count();
                history.agent_calls.push(method);
                history.call_boots.push(boot);
            }
        }
        // Talos in agent mode joined Omni over SideroLink: Omni creates the machine.
        if up && !self.omni.known(&self.id) {
            self.omni.create_if_new(&self.id);
        }
    }

    fn record_boot(&self, what: &str) {
        self.history.lock().unwrap().boots.push(what.to_owned());
    }

    /// Power-on or reset: disk first, the network when PXE-once is set or the disk is
    /// empty (firmware falls through to the next boot device).
    fn boot(&mut self) {
        self.drain_agent();
        self.agent = None;
        let network = std::mem::take(&mut self.pxe_once) || self.disk == Disk::Empty;
        if !network {
            self.record_boot("talos");
            return;
        }
        let path = format!(
            "/ipxe/boot.ipxe?uuid={}&mac=52-54-00-00-00-01&arch=i386",
            self.id
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // ironboot may be down (the chaos test): iPXE's init script retries the
            // same way, so does this host.
            let answer = http_get(self.api, &path);
            match answer {
                Ok((404, _)) => {
                    self.record_boot("refused");
                    self.boot_disk_after_network();
                    return;
                }
                Ok((200, script))
                    if script.contains("chain --replace") && script.contains("/pxe/") =>
                {
                    let version = factory_version(&script);
                    if version.as_deref() == Some(AGENT_TALOS) {
                        self.record_boot("agent");
                        self.start_agent(&script);
                    } else {
                        assert_eq!(
                            version.as_deref(),
                            Some(CLUSTER_TALOS),
                            "machine {}: unexpected boot script\n{script}",
                            self.id
                        );
                        self.record_boot("install");
                        // The installer writes the disk; Omni sees the install event; the
                        // machine reboots from its disk into the cluster's Talos.
                        self.disk = Disk::Talos;
                        self.omni.update(&self.id, |s| {
                            let n = s
                                .get("installEventId")
                                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
                            s.insert("installEventId".into(), json!(n.unwrap_or(0) + 1));
                        });
                        self.record_boot("talos");
                    }
                    return;
                }
                Ok((200, script)) if script.lines().any(|l| l.trim() == "exit") => {
                    self.record_boot("exit");
                    self.boot_disk_after_network();
                    return;
                }
                // The retrying script (Omni's state not loaded, factory down), or ironboot
                // not there: ask again.
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "machine {}: no usable boot script for 60 s (last: {answer:?})",
                self.id
            );
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// Talos in agent mode: it loads its configuration from the schematic's
    /// `talos.config=` URL (`/config?u=<uuid>`, which binds the machine's agent to this
    /// host's address), then the metal agent dials `metal.provider.address` from the
    /// kernel arguments; over TLS it trusts the CA Talos got from that configuration (the
    /// `TrustedRootsConfig` named `infra-provider-ca`).
    fn start_agent(&mut self, script: &str) {
        let schematic = factory_schematic(script).expect("schematic ID in the chain URL");
        let address = schematic_kernel_arg(&self.schematics, &schematic, "metal.provider.address")
            .unwrap_or_else(|| panic!("agent schematic {schematic} has no metal.provider.address"));
        let config = self.load_config();
        let ca_file = if address.starts_with("https://") {
            assert!(
                config.contains("name: infra-provider-ca"),
                "no CA in /config:\n{config}"
            );
            let begin = config
                .find("-----BEGIN CERTIFICATE-----")
                .expect("a PEM certificate");
            let end = config.find("-----END CERTIFICATE-----").expect("a PEM end") + 25;
            let pem: String = config[begin..end]
                .lines()
                .map(|l| format!("{}\n", l.trim()))
                .collect();
            let path = self.dir.path().join("ca.pem");
            std::fs::write(&path, pem).unwrap();
            Some(path)
        } else {
            None
        };
        self.agent = Some(Agent::start(
            &address,
            ca_file.as_deref(),
            &self.id,
            self.bmc_port,
        ));
    }

    /// `GET /config?u=<uuid>` as Talos does at boot, retried while ironboot is down or
    /// does not know the configuration yet.
    fn load_config(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = http_get(self.api, &format!("/config?u={}", self.id));
            if let Ok((200, config)) = answer {
                return config;
            }
            assert!(
                Instant::now() < deadline,
                "machine {}: no configuration from /config for 60 s (last: {answer:?})",
                self.id
            );
            thread::sleep(Duration::from_millis(300));
        }
    }

    fn boot_disk_after_network(&mut self) {
        self.record_boot(if self.disk == Disk::Talos {
            "talos"
        } else {
            "halt"
        });
    }
}

/// The schematic ID in a factory PXE chain URL `.../pxe/<schematic>/<version>/<asset>`.
fn factory_schematic(script: &str) -> Option<String> {
    let line = script.lines().find(|l| l.contains("chain --replace"))?;
    let url = line.split_whitespace().find(|w| w.contains("/pxe/"))?;
    url.split("/pxe/")
        .nth(1)?
        .split('/')
        .next()
        .map(str::to_owned)
}

/// The Talos version in a factory PXE chain URL `.../pxe/<schematic>/<version>/<asset>`.
fn factory_version(script: &str) -> Option<String> {
    let line = script.lines().find(|l| l.contains("chain --replace"))?;
    let url = line.split_whitespace().find(|w| w.contains("/pxe/"))?;
    let after = url.split("/pxe/").nth(1)?;
    after.split('/').nth(1).map(str::to_owned)
}

// ---------------------------------------------------------------------------------------
// The scenario.

struct World {
    omni: Arc<Omni>,
    /// Between ironboot and Omni, in the outage variant.
    relay: Option<tcp_relay::Relay>,
    factory: Factory,
    ironboot: Arc<Mutex<Ironboot>>,
    machines: Vec<Machine>,
    stop: Arc<AtomicBool>,
    hosts: Vec<JoinHandle<()>>,
}

impl World {
    fn start(ip: &str, tls: bool, outage: bool) -> Self {
        require_commands();
        let _ = agent_harness_bin();
        let omni = Arc::new(Omni::start());
        // Omni's join configuration (its SideroLink documents), served on /config; a
        // random join token, which no log line may carry.
        let token = format!(
            "jt-{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        logs::record_secret("join token", &token);
        let join_doc = format!(
            "apiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://omni.test:8090?jointoken={token}\n"
        );
        omni.send(&json!({
            "cmd": "put", "kind": "ProviderJoinConfig", "id": PROVIDER,
            "spec": {"config": {"config": join_doc}, "joinToken": token},
            "labels": {"omni.sidero.dev/infra-provider-id": PROVIDER},
        }));
        let factory = Factory::start(ip);
        let relay = outage.then(|| {
            let target = omni.addr.parse().expect("the harness's address");
            tcp_relay::Relay::start(ip, target)
        });
        let omni_addr = relay
            .as_ref()
            .map_or_else(|| omni.addr.clone(), |r| r.addr().to_string());
        let mut ironboot = Ironboot::new(ip, &omni, &omni_addr, &factory, tls);
        ironboot.start();
        let api = ironboot.api();
        let machines: Vec<Machine> = (0..MACHINES).map(Machine::new).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut hosts = Vec::new();
        for m in &machines {
            let host = Host {
                id: m.id.clone(),
                bmc_port: m.bmc_port,
                api,
                omni: omni.clone(),
                history: m.history.clone(),
                powered: false,
                pxe_once: false,
                disk: Disk::Empty,
                agent: None,
                seen_log: 0,
                schematics: factory.schematics.clone(),
                dir: tempfile::tempdir().unwrap(),
            };
            let (stop, bmc_log) = (stop.clone(), m.bmc.log_reader());
            hosts.push(thread::spawn(move || host.run(bmc_log, &stop)));
        }
        Self {
            omni,
            relay,
            factory,
            ironboot: Arc::new(Mutex::new(ironboot)),
            machines,
            stop,
            hosts,
        }
    }

    fn ids(&self) -> Vec<String> {
        self.machines.iter().map(|m| m.id.clone()).collect()
    }

    /// Waits until every machine's status satisfies `ok`.
    fn wait_all(&self, phase: &str, ok: impl Fn(&str, &Value) -> bool) {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            let pending: Vec<String> = self
                .ids()
                .into_iter()
                .filter(|id| !self.omni.status(id).is_some_and(|s| ok(id, &s)))
                .collect();
            if pending.is_empty() {
                eprintln!("phase done: {phase}");
                return;
            }
            if Instant::now() > deadline {
                let detail: Vec<String> = pending
                    .iter()
                    .map(|id| {
                        let m = self.machines.iter().find(|m| &m.id == id).unwrap();
                        format!(
                            "{id}: status {:?}; BMC {:?}; {:?}",
                            self.omni.status(id),
                            m.bmc_changes(),
                            m.history.lock().unwrap()
                        )
                    })
                    .collect();
                panic!(
                    "phase {phase:?} not reached by {} machines:\n{}\n--- ironboot log tail ---\n{}",
                    pending.len(),
                    detail.join("\n"),
                    self.ironboot.lock().unwrap().tail()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn each(&self, change: impl Fn(&mut serde_json::Map<String, Value>)) {
        for id in self.ids() {
            self.omni.update(&id, &change);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.hosts.drain(..) {
            let _ = h.join();
        }
    }
}

fn field<'a>(s: &'a Value, name: &str) -> &'a Value {
    &s[name]
}

fn is_str(s: &Value, name: &str, want: &str) -> bool {
    field(s, name).as_str().unwrap_or_default() == want
}

fn is_true(s: &Value, name: &str) -> bool {
    field(s, name).as_bool().unwrap_or(false)
}

/// A thread killing ironboot (SIGKILL) at random moments and starting it again; stopped
/// and joined on drop, so a failing test leaves no ironboot behind.
struct Chaos {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Chaos {
    fn start(ironboot: Arc<Mutex<Ironboot>>) -> Self {
        let seed = std::env::var("IRONBOOT_SCENARIO_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("chaos seed: {seed} (IRONBOOT_SCENARIO_SEED={seed} replays it)");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            // Sleeps in short steps, so a stop is seen at once.
            let pause = |ms: u64| {
                let until = Instant::now() + Duration::from_millis(ms);
                while Instant::now() < until && !stopped.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(20));
                }
            };
            while !stopped.load(Ordering::Relaxed) {
                // Up for 0.3 to 8 s: often enough to hit every step, with stretches
                // longer than the agents' reconnect grace (--min-reboot-interval), which
                // each start begins anew.
                pause(rng.gen_range(300..8000));
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                ironboot.lock().unwrap_or_else(|e| e.into_inner()).kill();
                pause(rng.gen_range(50..800));
                // Always up again: the rest of the test talks to it.
                ironboot.lock().unwrap_or_else(|e| e.into_inner()).start();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the scenario; with `chaos`, a thread kills and restarts ironboot meanwhile; with
/// `outage`, Omni is away for [`OUTAGE`] after the reboot request ([`omni_outage`]).
fn scenario(ip: &str, chaos: bool, tls: bool, outage: Option<Outage>) {
    let world = World::start(ip, tls, outage.is_some());
    // Declared after `world`, so dropped first: a failing assertion stops the restarts
    // before the world (and its ironboot) goes.
    let mut restarts = chaos.then(|| Chaos::start(world.ironboot.clone()));

    let omni = &world.omni;
    // Discovery: each machine boots the agent; Omni creates it; then accepts it.
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while !world.ids().iter().all(|id| omni.known(id)) {
        assert!(
            Instant::now() < deadline,
            "not every machine came up in agent mode: {:?}\n{}",
            world
                .machines
                .iter()
                .map(|m| (m.id.clone(), m.history.lock().unwrap().clone()))
                .collect::<Vec<_>>(),
            world.ironboot.lock().unwrap().tail()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(omni.provider_registered(), "ironboot registered with Omni");
    for (i, id) in world.ids().iter().enumerate() {
        omni.update(id, |s| {
            s.insert("acceptanceStatus".into(), json!("ACCEPTED"));
            s.insert("nodeUniqueToken".into(), json!(format!("token-{i}")));
            s.insert("preferredPowerState".into(), json!("POWER_STATE_OFF"));
        });
    }
    // Accepted: BMC set up through the agent, disks wiped, powered off.
    world.wait_all("accepted, wiped and off", |id, s| {
        let i = world.ids().iter().position(|x| x == id).unwrap();
        is_true(s, "ready_to_use")
            && is_str(s, "power_state", "POWER_STATE_OFF")
            && is_str(s, "wiped_node_unique_token", &format!("token-{i}"))
            && !is_true(s, "installed")
    });

    // Every status carries the --machine-labels, next to the provider's own label.
    for id in world.ids() {
        let v = omni.send(&json!({
            "cmd": "get", "ns": "infra-provider",
            "type": "InfraMachineStatuses.omni.sidero.dev", "id": id,
        }));
        assert_eq!(v["labels"]["rack"], "a1", "labels of {id}: {v}");
        assert_eq!(v["labels"]["scenario"], "", "labels of {id}: {v}");
        assert_eq!(v["owner"], "bare-metal.InfraMachineStatusController", "{v}");
    }

    // Allocation: the cluster's Talos version; Omni wants the machines on.
    world.each(|s| {
        s.insert("clusterTalosVersion".into(), json!(CLUSTER_TALOS));
        s.insert("preferredPowerState".into(), json!("POWER_STATE_ON"));
    });
    world.wait_all("allocated and installed", |_, s| {
        is_true(s, "installed") && is_str(s, "power_state", "POWER_STATE_ON")
    });

    // A reboot request.
    world.each(|s| {
        s.insert("requestedRebootId".into(), json!("reboot-1"));
    });
    if let (Some(relay), Some(kind)) = (&world.relay, outage) {
        omni_outage(&world, relay, kind);
    }
    world.wait_all("rebooted once", |_, s| {
        is_str(s, "last_reboot_id", "reboot-1")
    });

    // A power-off request (acknowledged; the machine runs a cluster, so it stays on).
    world.each(|s| {
        s.insert("powerOffRequestId".into(), json!("off-1"));
    });
    world.wait_all("power-off request acknowledged", |_, s| {
        is_str(s, "last_power_off_id", "off-1")
    });

    // Deallocation: Omni resets the machine and asks for a wipe with a new ID.
    world.each(|s| {
        s.remove("clusterTalosVersion");
        s.insert("wipeId".into(), json!("wipe-2"));
        s.insert("preferredPowerState".into(), json!("POWER_STATE_OFF"));
    });
    world.wait_all("deallocated, wiped again and off", |_, s| {
        is_true(s, "ready_to_use")
            && !is_true(s, "installed")
            && is_str(s, "power_state", "POWER_STATE_OFF")
    });
    // Let the wipe records settle before checking sequences.
    thread::sleep(Duration::from_secs(1));

    // Cordoned: whatever Omni asks now, ironboot leaves the machines alone.
    world.each(|s| {
        s.insert("cordoned".into(), json!(true));
        s.insert("requestedRebootId".into(), json!("reboot-2"));
        s.insert("preferredPowerState".into(), json!("POWER_STATE_ON"));
    });

    if let Some(r) = restarts.as_mut() {
        r.stop();
    }
    // Long enough for a wrongful action on the cordoned machines to show.
    thread::sleep(Duration::from_secs(3));
    let api = world.ironboot.lock().unwrap().api();
    for id in world.ids() {
        let (status, body) = http_get(
            api,
            &format!("/ipxe/boot.ipxe?uuid={id}&mac=52-54-00-00-00-01&arch=i386"),
        )
        .expect("boot.ipxe");
        assert_eq!(
            status, 404,
            "cordoned machine {id} got a boot script: {body}"
        );
    }
    // Those requests told ironboot the machines were on (a PXE boot proves it, and a
    // removed machine that is on gets rebooted into the agent); wait for its next BMC
    // reading of each (a `get power` in the chassis log), which says off again.
    let seen: Vec<usize> = world
        .machines
        .iter()
        .map(|m| m.bmc.chassis_log().len())
        .collect();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    for (m, n) in world.machines.iter().zip(seen) {
        while !m.bmc.chassis_log()[n..]
            .iter()
            .any(|l| l.starts_with("get power"))
        {
            assert!(
                Instant::now() < deadline,
                "ironboot never read the power state of {} again",
                m.id
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    // The reading lands in the machine's status right after the BMC answers.
    thread::sleep(Duration::from_millis(300));

    // Removal: Omni tears the machines down; ironboot deletes its records of them and
    // lifts its finalizer (they are off and cordoned: no power action).
    for id in world.ids() {
        let meta = omni.send(&json!({
            "cmd": "meta", "ns": "infra-provider", "type": "InfraMachines.omni.sidero.dev", "id": id,
        }));
        assert!(
            meta["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "bare-metal.MachineStatusController")),
            "machine {id} has no finalizer of ironboot's: {meta}"
        );
        for kind in PRIVATE_KINDS {
            let v = omni.send(&json!({"cmd": "get", "ns": PRIVATE_NS, "type": kind, "id": id}));
            assert_eq!(
                v["found"], true,
                "no {kind} of machine {id} before removal: {v}"
            );
        }
        omni.send(&json!({
            "cmd": "teardown", "ns": "infra-provider", "type": "InfraMachines.omni.sidero.dev", "id": id,
        }));
    }
    let deadline = Instant::now() + PHASE_TIMEOUT;
    for id in world.ids() {
        loop {
            let meta = omni.send(&json!({
                "cmd": "meta", "ns": "infra-provider", "type": "InfraMachines.omni.sidero.dev", "id": id,
            }));
            if meta["finalizers"].as_array().is_none_or(|f| f.is_empty()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "machine {id} never released: {meta}\n{}",
                world.ironboot.lock().unwrap().tail()
            );
            thread::sleep(Duration::from_millis(100));
        }
        omni.send(&json!({
            "cmd": "destroy", "ns": "infra-provider", "type": "InfraMachines.omni.sidero.dev", "id": id,
        }));
        let records = PRIVATE_KINDS.map(|k| (PRIVATE_NS, k));
        let status = ("infra-provider", "InfraMachineStatuses.omni.sidero.dev");
        for (ns, kind) in records.into_iter().chain([status]) {
            let v = omni.send(&json!({"cmd": "get", "ns": ns, "type": kind, "id": id}));
            assert_eq!(
                v["found"], false,
                "{kind} of removed machine {id} left behind: {v}"
            );
        }
    }
    eprintln!("phase done: removed and released");

    if !chaos {
        // One ironboot ran it all: its counters tell the same story as the peers. A step
        // is counted once its pass returns, a moment after its effect shows in Omni.
        let n = MACHINES;
        let want: Vec<String> = [
            ("bmc_setup", n),
            ("wipe", 2 * n),
            ("power_on", n),
            ("power_off", 2 * n),
            ("reboot", 2 * n),
            ("hold", n),
            ("release", n),
        ]
        .iter()
        .map(|(step, count)| format!("ironboot_lifecycle_steps_total{{step=\"{step}\"}} {count}\n"))
        .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, metrics) =
                http_get(world.ironboot.lock().unwrap().api(), "/metrics").expect("GET /metrics");
            assert_eq!(status, 200);
            let missing: Vec<&String> = want.iter().filter(|l| !metrics.contains(*l)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "want {missing:?} in /metrics:\n{metrics}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    let starts = world.ironboot.lock().unwrap().starts;
    eprintln!("ironboot was started {starts} times");
    for m in &world.machines {
        let h = m.history.lock().unwrap().clone();
        let context = format!(
            "machine {}: BMC {:?}, {h:?}\n--- ironboot log tail ---\n{}",
            m.id,
            m.bmc_changes(),
            world.ironboot.lock().unwrap().tail()
        );
        let mut calls = h.agent_calls.clone();
        if chaos {
            // Killed after the agent finished a wipe but before ironboot recorded it: the
            // wipe is sent again after the restart (a wipe is recorded only once it is
            // done, so a disk never passes as wiped without one). Back to back, within the
            // same agent boot, it wipes an empty disk again; nothing else may repeat.
            let mut by_boot: Vec<(usize, String)> = h
                .call_boots
                .iter()
                .copied()
                .zip(h.agent_calls.iter().cloned())
                .collect();
            by_boot.dedup_by(|later, earlier| later == earlier && later.1 == "WipeDisks");
            calls = by_boot.into_iter().map(|(_, method)| method).collect();
            // Killed while the agent was setting up the IPMI user: the provider never
            // stored that password, so it sets the user up again with a new one (not a
            // wipe nor a power action; redoing it is the only way forward).
            let setup = ["GetPowerManagement", "SetPowerManagement"];
            while calls.len() >= 4 && calls[..2] == setup && calls[2..4] == setup {
                calls.drain(..2);
            }
        }
        assert_eq!(
            calls,
            [
                // Acceptance: the IPMI user, then the wipe.
                "GetPowerManagement",
                "SetPowerManagement",
                "WipeDisks",
                // Deallocation.
                "WipeDisks",
            ],
            "agent calls of {context}"
        );
        assert_eq!(
            m.bmc_changes(),
            [
                // Accepted and wiped: off.
                "set power 0",
                // Allocated: PXE once, on (installs, then boots its disk).
                "set boot pxe",
                "set power 1",
                // The requested reboot: a power cycle, no PXE (Talos is installed).
                "set power 0",
                "set power 1",
                // Deallocated: PXE once into the agent (cycle), wiped, off.
                "set boot pxe",
                "set power 0",
                "set power 1",
                "set power 0",
            ],
            "BMC changes of {context}"
        );
        assert_eq!(
            h.boots,
            ["agent", "install", "talos", "talos", "agent"],
            "boots of {context}"
        );
    }
    let posted: Vec<String> = world
        .factory
        .schematics
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| body.clone())
        .collect();
    assert!(
        posted.iter().any(|b| b.contains("metal-agent")),
        "no agent-mode schematic (with the metal-agent extension) was created: {posted:?}"
    );
    if !chaos {
        // Cached by content: one creation per distinct schematic (agent mode, install),
        // however many machines booted.
        let mut distinct = posted.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            posted.len(),
            distinct.len(),
            "a schematic created twice: {posted:?}"
        );
        assert!(posted.len() <= 2, "schematics: {posted:?}");
    }
    if chaos {
        assert!(
            starts > 2,
            "the chaos thread restarted ironboot ({starts} starts)"
        );
    }
}

#[test]
fn ten_machines_through_their_lifecycle() {
    scenario("127.0.0.61", false, false, None);
}

#[test]
fn ten_machines_through_their_lifecycle_with_ironboot_killed_at_random() {
    scenario("127.0.0.62", true, false, None);
}

/// The same with Omni cut off for a minute in the middle (see [`omni_outage`]).
#[test]
fn ten_machines_through_their_lifecycle_with_omni_cut_off_for_a_minute() {
    scenario("127.0.0.64", false, false, Some(Outage::Cut));
}

/// The same with Omni silent for a minute in the middle: requests under way hang rather
/// than fail.
#[test]
fn ten_machines_through_their_lifecycle_with_omni_silent_for_a_minute() {
    scenario("127.0.0.65", false, false, Some(Outage::Pause));
}

/// The same over the agents' TLS listener (`--tls-enabled`, the CA generated and kept in
/// Omni): each agent dials `https://` and trusts only the CA Talos got from `/config`.
#[test]
fn ten_machines_through_their_lifecycle_over_tls() {
    scenario("127.0.0.63", false, true, None);
}

/// The value of the sample `name` (no labels) in ironboot's `/metrics`.
fn metric(api: SocketAddr, name: &str) -> Option<f64> {
    let (status, text) = http_get(api, "/metrics").ok()?;
    assert_eq!(status, 200, "GET /metrics");
    metrics::value(&text, name)
}

/// The provider's last heartbeat in Omni (its health status), in seconds since the epoch.
fn last_heartbeat(omni: &Omni) -> Option<f64> {
    let v = omni.send(&json!({
        "cmd": "get", "ns": "infra-provider-ephemeral",
        "type": "InfraProviderHealthStatuses.omni.sidero.dev", "id": PROVIDER,
    }));
    rfc3339_secs(v["spec"]["last_heartbeat_timestamp"].as_str()?)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (protojson's timestamps) in seconds since the epoch.
fn rfc3339_secs(t: &str) -> Option<f64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut h = time.splitn(3, ':');
    let (hh, mm) = (
        h.next()?.parse::<i64>().ok()?,
        h.next()?.parse::<i64>().ok()?,
    );
    let ss = h.next()?.parse::<f64>().ok()?;
    // Days from the civil date (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// Keeps Omni away from ironboot for [`OUTAGE`] (`kind`), the reboot request just written. Meanwhile every
/// machine asks for its boot script every few seconds and must get its disk boot (from
/// the cached state, as Omni left it); `/healthz` must say Omni is unreachable and the
/// gauge must be 0. Then Omni is back: both must say so, and a heartbeat must reach Omni.
/// The rest of the scenario checks that nothing was repeated nor lost.
fn omni_outage(world: &World, relay: &tcp_relay::Relay, kind: Outage) {
    assert_eq!(
        rfc3339_secs("2027-01-15T08:00:00.5Z"),
        Some(1_800_000_000.5),
        "the timestamp parser"
    );
    let api = world.ironboot.lock().unwrap().api();
    let outages_before = metric(api, "ironboot_omni_outages_total").unwrap_or(0.0);
    let relayed_before = relay.relayed();
    match kind {
        Outage::Cut => relay.cut(),
        Outage::Pause => relay.pause(),
    }
    let cut_at = Instant::now();
    eprintln!("Omni away for {OUTAGE:?} ({kind:?})");
    let (mut answers, mut rounds) = (0u64, 0u64);
    let mut detected_after = None;
    while cut_at.elapsed() < OUTAGE {
        for id in world.ids() {
            let (status, script) = http_get(
                api,
                &format!("/ipxe/boot.ipxe?uuid={id}&mac=52-54-00-00-00-01&arch=i386"),
            )
            .expect("boot.ipxe during the outage");
            assert!(
                status == 200 && script.lines().any(|l| l.trim() == "exit"),
                "machine {id} got no disk boot while Omni was unreachable: {status} {script}"
            );
            answers += 1;
        }
        let (status, health) = http_get(api, "/healthz").expect("/healthz during the outage");
        assert_eq!(status, 200, "/healthz during the outage: {health}");
        if health.contains("omni: unreachable since ") {
            detected_after.get_or_insert(cut_at.elapsed());
            assert_eq!(
                metric(api, "ironboot_omni_reachable"),
                Some(0.0),
                "the gauge during the outage"
            );
        }
        rounds += 1;
        thread::sleep(Duration::from_secs(2));
    }
    let detected_after = detected_after.unwrap_or_else(|| {
        panic!(
            "/healthz never reported Omni unreachable in {OUTAGE:?}\n{}",
            world.ironboot.lock().unwrap().tail()
        )
    });
    assert_eq!(
        metric(api, "ironboot_omni_outages_total"),
        Some(outages_before + 1.0),
        "one outage counted"
    );
    let refused = relay.refused();
    if kind == Outage::Cut {
        assert!(
            refused > 0,
            "ironboot never tried to reach Omni during the outage"
        );
    }
    relay.restore();
    let back_at = Instant::now();
    let back_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let deadline = back_at + PHASE_TIMEOUT;
    let recovered_after = loop {
        let (_, health) = http_get(api, "/healthz").expect("/healthz after the outage");
        if health.contains("omni: reachable\n")
            && metric(api, "ironboot_omni_reachable") == Some(1.0)
        {
            break back_at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "Omni back, /healthz still says: {health}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    let heartbeat_after = loop {
        if last_heartbeat(&world.omni).is_some_and(|t| t >= back_wall) {
            break back_at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat reached Omni after the outage\n{}",
            world.ironboot.lock().unwrap().tail()
        );
        thread::sleep(Duration::from_millis(100));
    };
    if kind == Outage::Cut {
        assert!(relay.relayed() > relayed_before, "ironboot reconnected");
    }
    eprintln!(
        "outage ({kind:?}): {OUTAGE:?}; {answers} boot scripts answered in {rounds} rounds \
         (all disk boots); {refused} connections to Omni refused or held; reported \
         unreachable after \
         {detected_after:?}; reachable again {recovered_after:?} and a heartbeat in Omni \
         {heartbeat_after:?} after Omni was back"
    );
}
