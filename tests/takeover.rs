//! Taking over from the Go provider (Sidero Labs' omni-infra-provider-bare-metal): the
//! operator stops it and starts ironboot with the same provider ID and key, over the state
//! the Go provider left in Omni. Omni is the Go harness built on the upstream modules
//! (`tests/omni-harness`), which seeds that state resource by resource (`put_raw`: raw
//! spec bytes, owner, finalizers); BMCs are OpenIPMI's `ipmi_sim`.
//!
//! - State exactly as the Go provider leaves it (the InfraMachine held by its six
//!   controllers, each private record held by the controllers that read it, the
//!   InfraMachineStatus with labels of an older `--machine-labels`, the agents' CA in
//!   TLSConfig): ironboot reuses the CA, manages the machine with the Go provider's BMC
//!   credentials, and sets the status's labels as upstream does. Allocated, the machine
//!   is powered on over PXE (PowerOperation); installed, left alone; deallocated, rebooted
//!   into the agent (RebootStatus, PowerOperation untouched); every record is written
//!   under the Go provider's controller names with its finalizers kept, and the private
//!   MachineStatus follows the machine. When Omni removes the machine, ironboot lifts its
//!   provider's finalizers from every record, destroys them all once, and lifts every
//!   finalizer of its provider from the InfraMachine. The CA stays.
//! - A pending machine the Go provider saw (its MachineStatus, its finalizers), with the
//!   operator's BMC credentials: accepted after the takeover, it is rebooted into the
//!   agent for its wipe (RebootStatus, no PowerOperation), and released when removed.
//! - A record another party still holds does not keep the machine in Omni: the
//!   InfraMachine is let go, and the record is destroyed once its holder let go too, by
//!   ironboot restarted meanwhile.
//! - An InfraMachine whose spec carries a field ironboot does not know (Omni's schema
//!   grows): holding and releasing it send the spec back byte for byte, which Omni
//!   requires of a provider.
//!
//! - An older Omni (no `ProviderJoinConfig` resource definition in `meta`): ironboot
//!   serves, at `/config`, the join configuration Omni's own Go module renders from the
//!   `ConnectionParams` for the Go provider, and follows their changes.
//!
//! Needs Go, the harness's modules and `ipmi_sim` (`tests/install-prereqs.sh`); a missing
//! one fails the test naming it. Everything listens on the loopback (127.0.0.0/8).

use ironboot::testing::{agent, executor, lifecycle, omni, tls};
use ironboot_test_support::{go_harness, http, ipmi_sim, launch, logs, omni_harness, process};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use ironboot_proto::{baremetal, omni as specs};
use prost::Message as _;
use serde_json::{Value, json};

use agent::admission::AgentGate;
use agent::tunnel::Tunnels;
use executor::Settings;
use executor::real::Running;
use lifecycle::Policy;
use omni::client::Client;
use tls::{AgentTls, CertSource};

const ID: &str = "bare-metal";
const SHARED_NS: &str = "infra-provider";
const PRIVATE_NS: &str = "infra-provider:bare-metal";
const INFRA_MACHINE: &str = "InfraMachines.omni.sidero.dev";
const INFRA_MACHINE_STATUS: &str = "InfraMachineStatuses.omni.sidero.dev";
const PROVIDER_LABEL: &str = "omni.sidero.dev/infra-provider-id";
/// The Go provider's controllers, each of which puts its finalizer on the InfraMachine.
const CONTROLLERS: [&str; 6] = [
    "MachineStatusController",
    "BMCConfigurationController",
    "WipeStatusController",
    "PowerOperationController",
    "RebootStatusController",
    "InfraMachineStatusController",
];
/// How long a release or a retry may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The Omni harness, built once per test run.
fn omni_harness_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_harness::build("the takeover test", "omni-harness", "omniharness"))
}

/// `<provider-id>.<controller>`: the Go provider's finalizer and owner names.
fn go(controller: &str) -> String {
    format!("{ID}.{controller}")
}

/// The provider-private type `<name>.<id>.infraprovider.sidero.dev`.
fn private_type(name: &str) -> String {
    format!("{name}.{ID}.infraprovider.sidero.dev")
}

/// A running harness; killed (by its PID, through our handle) on drop.
struct Omni {
    serve: omni_harness::Serve,
    key: String,
}

impl Omni {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// The harness with extra `serve` flags (`--legacy-omni`: an older Omni).
    fn start_with(flags: &[&str]) -> Self {
        let bin = omni_harness_bin();
        let key = omni_harness::keygen(bin, &["--id", ID]);
        let serve = omni_harness::serve(bin, &key, flags);
        Self { serve, key }
    }

    fn ok(&mut self, cmd: Value) -> Value {
        let v = omni_harness::send(&mut self.serve.stdin, &mut self.serve.stdout, &cmd);
        assert_eq!(
            v["ok"], true,
            "harness command {cmd} failed: {}",
            v["error"]
        );
        v
    }

    /// Stores a resource as another writer left it: `spec` as raw protobuf bytes.
    fn put_raw(
        &mut self,
        (ns, typ, id): (&str, &str, &str),
        spec: &[u8],
        owner: &str,
        finalizers: &[String],
        labels: &[(&str, &str)],
    ) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.ok(json!({
            "cmd": "put_raw", "ns": ns, "type": typ, "id": id,
            "raw_spec": base64::engine::general_purpose::STANDARD.encode(spec),
            "owner": owner, "finalizers": finalizers, "labels": labels,
        }));
    }

    /// The resource's metadata and `raw_spec`, `found: false` if it does not exist.
    fn get(&mut self, (ns, typ, id): (&str, &str, &str)) -> Value {
        self.ok(json!({"cmd": "get", "ns": ns, "type": typ, "id": id}))
    }

    fn finalizers(&mut self, at: (&str, &str, &str)) -> Vec<String> {
        let v = self.get(at);
        v["finalizers"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The stored spec's protobuf bytes.
    fn raw_spec(&mut self, at: (&str, &str, &str)) -> Vec<u8> {
        let v = self.get(at);
        let b64 = v["raw_spec"].as_str().unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("raw_spec of {at:?}: {e}: {v}"))
    }

    /// Authenticated calls of the COSI method whose name ends in `method`.
    fn calls(&mut self, method: &str) -> u64 {
        let v = self.ok(json!({"cmd": "calls"}));
        v["calls"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.ends_with(method))
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Omni changes the InfraMachine's spec (the finalizers on it stay).
    fn update_machine(
        &mut self,
        id: &str,
        spec: &specs::InfraMachineSpec,
        labels: &[(&str, &str)],
    ) {
        let at = (SHARED_NS, INFRA_MACHINE, id);
        let finalizers = self.finalizers(at);
        self.put_raw(at, &spec.encode_to_vec(), "", &finalizers, labels);
    }

    /// The private record `name` of machine `id`, decoded, with its metadata.
    fn record<M: prost::Message + Default>(&mut self, name: &str, id: &str) -> (M, Value) {
        let typ = private_type(name);
        let meta = self.get((PRIVATE_NS, &typ, id));
        assert_eq!(meta["found"], true, "{name} of {id} missing");
        let spec = M::decode(&self.raw_spec((PRIVATE_NS, &typ, id))[..])
            .unwrap_or_else(|e| panic!("{name} of {id}: {e}"));
        (spec, meta)
    }

    /// Omni starts removing the machine: phase tearingDown, its finalizers pending.
    fn teardown(&mut self, id: &str) {
        self.ok(json!({"cmd": "teardown", "ns": SHARED_NS, "type": INFRA_MACHINE, "id": id}));
    }

    /// Omni destroys the machine once its finalizers are gone.
    fn destroy(&mut self, id: &str) {
        self.ok(json!({"cmd": "destroy", "ns": SHARED_NS, "type": INFRA_MACHINE, "id": id}));
    }

    fn client(&self) -> Client {
        omni::signed_client(&format!("http://{}", self.serve.addr), &self.key, ID)
    }
}

impl Drop for Omni {
    fn drop(&mut self) {
        let _ = self.serve.child.kill();
        let _ = self.serve.child.wait();
    }
}

/// Polls `probe` every 50 ms until it holds; fails naming `what` after [`TIMEOUT`].
fn wait_for(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `probe` until its value has stayed the same for 3 s (at most [`TIMEOUT`]) and
/// returns it: what a late, wrongful action would change shows before this returns.
fn quiet<T: PartialEq + std::fmt::Debug>(what: &str, mut probe: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + TIMEOUT;
    let mut last = probe();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = probe();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(3) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never settled: last {last:?}"
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `--min-reboot-interval` of the tests: short, so that a reboot into the agent comes
/// within seconds of a power-on, yet long enough to observe one reboot before the next.
const MIN_REBOOT_INTERVAL: Duration = Duration::from_secs(4);

/// The control loop over `client` as the binary starts it (with `--machine-labels
/// rack=a1`, `--min-reboot-interval 4s`, `--ipmi-pxe-boot-mode bios`), a fresh BMC fleet
/// and no agent. A failed pass is retried within 2 s.
fn start(client: &Client) -> Running {
    let mut settings = Settings::new(
        Policy::new(MIN_REBOOT_INTERVAL, false, ironboot_bmc::BootMode::Bios),
        BTreeMap::from([("rack".to_owned(), "a1".to_owned())]),
    );
    settings.power_poll_interval = Duration::from_secs(2);
    executor::start_for_test(client, &Tunnels::new(AgentGate::open()), settings)
}

/// An InfraMachine spec as Omni writes it: accepted, preferred off, with its node token.
fn accepted(token: &str, cordoned: bool) -> specs::InfraMachineSpec {
    specs::InfraMachineSpec {
        acceptance_status: specs::infra_machine_config_spec::AcceptanceStatus::Accepted as i32,
        preferred_power_state: specs::infra_machine_spec::MachinePowerState::PowerStateOff as i32,
        node_unique_token: token.to_owned(),
        cordoned,
        ..Default::default()
    }
}

/// A self-signed CA as PEM certificate and key.
fn ca_pem() -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A simulated BMC answering, its chassis on or off, and its UDP port.
fn started_bmc(name: &str, on: bool) -> (ipmi_sim::SimBmc, u32) {
    let bmc = ipmi_sim::SimBmc::start(name);
    bmc.set_power(on);
    bmc.wait_ready_blocking();
    let port = bmc.address().rsplit_once(':').unwrap().1.parse().unwrap();
    (bmc, port)
}

/// `t` is within the last minute.
fn recent(t: Option<&prost_types::Timestamp>) -> bool {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    t.is_some_and(|t| (now - 60..=now + 1).contains(&t.seconds))
}

#[test]
fn a_machine_the_go_provider_managed_is_allocated_deallocated_and_released_by_ironboot() {
    let mut omni = Omni::start();
    let (mut bmc, port) = started_bmc("takeover", false);

    // The Go provider's state of machine m1, accepted, wiped and powered off.
    let machine = (SHARED_NS, INFRA_MACHINE, "m1");
    let all_controllers: Vec<String> = CONTROLLERS.iter().map(|c| go(c)).collect();
    omni.put_raw(
        machine,
        &accepted("tok-1", false).encode_to_vec(),
        "",
        &all_controllers,
        &[
            (PROVIDER_LABEL, ID),
            ("omni.sidero.dev/cluster", "c1"),
            ("omni.sidero.dev/role-worker", ""),
        ],
    );
    let off = baremetal::PowerState::Off as i32;
    let an_hour_ago = prost_types::Timestamp {
        seconds: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - 3600,
        nanos: 0,
    };
    // Each record: its type, its owner, its spec, and the controllers that read it (each
    // holds it with its finalizer, as upstream's controllers do with their inputs).
    let records: [(&str, &str, Vec<u8>, &[&str]); 5] = [
        (
            "BMCConfiguration",
            "BMCConfigurationController",
            baremetal::BmcConfigurationSpec {
                ipmi: Some(baremetal::bmc_configuration_spec::Ipmi {
                    address: "127.0.0.1".into(),
                    port,
                    username: ipmi_sim::USER.into(),
                    password: ipmi_sim::PASSWORD.into(),
                }),
                api: None,
                manually_configured: false,
            }
            .encode_to_vec(),
            &[
                "MachineStatusController",
                "PowerOperationController",
                "RebootStatusController",
                "InfraMachineStatusController",
            ],
        ),
        (
            "MachineStatus",
            "MachineStatusController",
            baremetal::MachineStatusSpec {
                agent_accessible: false,
                power_state: off,
                initialized: true,
            }
            .encode_to_vec(),
            &[
                "BMCConfigurationController",
                "WipeStatusController",
                "PowerOperationController",
                "RebootStatusController",
                "InfraMachineStatusController",
            ],
        ),
        (
            "WipeStatus",
            "WipeStatusController",
            baremetal::WipeStatusSpec {
                initial_wipe_done: true,
                wiped_node_unique_token: "tok-1".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            &[
                "PowerOperationController",
                "RebootStatusController",
                "InfraMachineStatusController",
            ],
        ),
        (
            "PowerOperation",
            "PowerOperationController",
            baremetal::PowerOperationSpec {
                last_power_operation: off,
                last_power_on_timestamp: Some(an_hour_ago),
                ..Default::default()
            }
            .encode_to_vec(),
            &["RebootStatusController", "InfraMachineStatusController"],
        ),
        (
            "RebootStatus",
            "RebootStatusController",
            baremetal::RebootStatusSpec::default().encode_to_vec(),
            &["PowerOperationController", "InfraMachineStatusController"],
        ),
    ];
    for (name, owner, spec, readers) in &records {
        let finalizers: Vec<String> = readers.iter().map(|c| go(c)).collect();
        omni.put_raw(
            (PRIVATE_NS, &private_type(name), "m1"),
            spec,
            &go(owner),
            &finalizers,
            &[],
        );
    }
    let status = (SHARED_NS, INFRA_MACHINE_STATUS, "m1");
    omni.put_raw(
        status,
        &specs::InfraMachineStatusSpec {
            power_state: specs::infra_machine_status_spec::MachinePowerState::PowerStateOff as i32,
            ready_to_use: true,
            wiped_node_unique_token: "tok-1".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        &go("InfraMachineStatusController"),
        &[],
        &[(PROVIDER_LABEL, ID), ("rack", "a0"), ("dropped", "x")],
    );
    let (ca_cert, ca_key) = ca_pem();
    let tls_config_type = private_type("TLSConfig");
    let tls_config = (PRIVATE_NS, tls_config_type.as_str(), tls::TLS_CONFIG_ID);
    omni.put_raw(
        tls_config,
        &baremetal::TlsConfigSpec {
            ca_cert: ca_cert.clone(),
            ca_key,
        }
        .encode_to_vec(),
        "",
        &[],
        &[],
    );
    let tls_version = omni.get(tls_config)["version"].clone();

    let rt = runtime();
    let _guard = rt.enter();
    let client = omni.client();

    // ironboot starts with the same ID: agents that trust the Go provider's CA trust it.
    let agent_tls = rt
        .block_on(AgentTls::prepare(
            &CertSource::Generated {
                ca_ttl: Duration::from_secs(365 * 24 * 3600),
                cert_ttl: Duration::from_secs(3600),
            },
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(&client),
        ))
        .expect("the Go provider's CA is loaded");
    assert_eq!(agent_tls.ca_pem(), ca_cert);

    let running = start(&client);

    // ironboot manages the machine: it reads the BMC with the Go provider's credentials
    // and publishes the status with the labels upstream's transform gives: the old
    // `--machine-labels` gone, the new ones set, the cluster and role copied.
    wait_for("the BMC read with the Go provider's credentials", || {
        bmc.chassis_log().iter().any(|l| l.starts_with("get power"))
    });
    let want_labels = json!({
        PROVIDER_LABEL: ID, "rack": "a1",
        "omni.sidero.dev/cluster": "c1", "omni.sidero.dev/role-worker": "",
    });
    wait_for("the status's labels set as upstream sets them", || {
        omni.get(status)["labels"] == want_labels
    });
    assert_eq!(
        omni.get(status)["owner"],
        go("InfraMachineStatusController")
    );
    let machine_labels = [
        (PROVIDER_LABEL, ID),
        ("omni.sidero.dev/cluster", "c1"),
        ("omni.sidero.dev/role-worker", ""),
    ];

    // Omni allocates the machine: ironboot sets PXE-once and powers it on to install, and
    // records the power-on in PowerOperation under the Go provider's controller name,
    // keeping the finalizers the Go provider's controllers put there.
    let mut spec = accepted("tok-1", false);
    spec.cluster_talos_version = "v1.11.0".into();
    omni.update_machine("m1", &spec, &machine_labels);
    wait_for("the allocated machine powered on", || {
        bmc.changes().iter().any(|c| c == "set power 1")
    });
    assert_eq!(bmc.changes(), ["set boot pxe", "set power 1"]);
    let (power_op, power_meta) =
        omni.record::<baremetal::PowerOperationSpec>("PowerOperation", "m1");
    assert_eq!(
        power_op.last_power_operation,
        baremetal::PowerState::On as i32
    );
    assert!(
        recent(power_op.last_power_on_timestamp.as_ref()),
        "{power_op:?}"
    );
    assert_eq!(power_meta["owner"], go("PowerOperationController"));
    assert_eq!(
        power_meta["finalizers"],
        json!([
            go("RebootStatusController"),
            go("InfraMachineStatusController")
        ])
    );
    // The private MachineStatus follows, as the Go provider keeps it: on, no agent, and
    // still initialized (the Go provider saw the machine's first PXE boot).
    wait_for("MachineStatus shows the machine on", || {
        let (ms, _) = omni.record::<baremetal::MachineStatusSpec>("MachineStatus", "m1");
        ms.power_state == baremetal::PowerState::On as i32
    });
    let (ms, ms_meta) = omni.record::<baremetal::MachineStatusSpec>("MachineStatus", "m1");
    assert!(ms.initialized && !ms.agent_accessible, "{ms:?}");
    assert_eq!(ms_meta["owner"], go("MachineStatusController"));

    // Talos installed: the machine boots from its disk; nothing to do.
    spec.install_event_id = 1;
    omni.update_machine("m1", &spec, &machine_labels);
    wait_for("the status shows the machine installed", || {
        specs::InfraMachineStatusSpec::decode(&omni.raw_spec(status)[..]).is_ok_and(|s| s.installed)
    });

    // Omni deallocates it (a new wipe ID): the disks must be wiped by the agent, which
    // does not run, so once the cooldown from the power-on is over ironboot reboots the
    // machine into it over PXE. The reboot is recorded in RebootStatus (with the request
    // ID Omni has, as upstream records a mode switch), PowerOperation is left alone, and
    // the status publishes the reboot's time.
    spec.cluster_talos_version.clear();
    spec.wipe_id = "w2".into();
    omni.update_machine("m1", &spec, &machine_labels);
    wait_for("the reboot into the agent recorded", || {
        let (r, _) = omni.record::<baremetal::RebootStatusSpec>("RebootStatus", "m1");
        r.last_reboot_timestamp.is_some()
    });
    let (reboot, reboot_meta) = omni.record::<baremetal::RebootStatusSpec>("RebootStatus", "m1");
    assert!(recent(reboot.last_reboot_timestamp.as_ref()), "{reboot:?}");
    assert_eq!(reboot.last_reboot_id, "");
    assert_eq!(reboot_meta["owner"], go("RebootStatusController"));
    wait_for("the power cycle", || bmc.changes().len() >= 4);
    let changes = bmc.changes();
    assert_eq!(
        changes[2..4],
        ["set boot pxe", "set power 0"],
        "{changes:?}"
    );
    assert_eq!(
        omni.get((PRIVATE_NS, &private_type("PowerOperation"), "m1"))["version"],
        power_meta["version"],
        "PowerOperation is not written on a reboot"
    );
    wait_for("the status shows the reboot", || {
        specs::InfraMachineStatusSpec::decode(&omni.raw_spec(status)[..])
            .is_ok_and(|s| s.last_reboot_timestamp == reboot.last_reboot_timestamp)
    });

    // Omni removes the machine.
    let destroys_before = omni.calls("Destroy");
    omni.teardown("m1");
    wait_for("the InfraMachine let go", || {
        omni.finalizers(machine).is_empty()
    });
    for (name, ..) in &records {
        let v = omni.get((PRIVATE_NS, &private_type(name), "m1"));
        assert_eq!(v["found"], false, "{name} left after the release: {v}");
    }
    assert_eq!(omni.get(status)["found"], false, "InfraMachineStatus left");
    omni.destroy("m1");

    // Each record was destroyed once: no destroy refused for pending finalizers, and
    // none repeated.
    let destroys = quiet("the destroy calls", || omni.calls("Destroy"));
    assert_eq!(
        destroys - destroys_before,
        records.len() as u64 + 1,
        "one destroy per record and one for the status"
    );
    // The CA is the provider's, not the machine's: it stays, untouched.
    let v = omni.get(tls_config);
    assert_eq!((&v["found"], &v["version"]), (&json!(true), &tls_version));
    // Once released, the machine is not touched again.
    let after = bmc.changes().len();
    std::thread::sleep(MIN_REBOOT_INTERVAL + Duration::from_secs(2));
    assert_eq!(bmc.changes().len(), after, "{:?}", bmc.changes());
    drop(running);
    bmc.stop();
}

#[test]
fn a_pending_machine_the_go_provider_saw_is_accepted_by_ironboot() {
    let mut omni = Omni::start();
    let (mut bmc, port) = started_bmc("takeover-accept", true);

    // The Go provider saw m4 boot its agent (MachineStatus) and holds it, pending; the
    // operator gave its BMC's credentials in Omni.
    let machine = (SHARED_NS, INFRA_MACHINE, "m4");
    let all_controllers: Vec<String> = CONTROLLERS.iter().map(|c| go(c)).collect();
    let mut spec = accepted("tok-4", false);
    spec.acceptance_status = specs::infra_machine_config_spec::AcceptanceStatus::Pending as i32;
    spec.preferred_power_state = specs::infra_machine_spec::MachinePowerState::PowerStateOn as i32;
    let labels = [(PROVIDER_LABEL, ID)];
    omni.put_raw(
        machine,
        &spec.encode_to_vec(),
        "",
        &all_controllers,
        &labels,
    );
    omni.put_raw(
        (PRIVATE_NS, &private_type("MachineStatus"), "m4"),
        &baremetal::MachineStatusSpec {
            agent_accessible: true,
            power_state: baremetal::PowerState::On as i32,
            initialized: true,
        }
        .encode_to_vec(),
        &go("MachineStatusController"),
        &[
            go("RebootStatusController"),
            go("InfraMachineStatusController"),
        ],
        &[],
    );
    omni.ok(json!({
        "cmd": "put", "kind": "BMCConfig", "id": "m4",
        "spec": {"config": {"ipmi": {
            "address": "127.0.0.1", "port": port,
            "username": ipmi_sim::USER, "password": ipmi_sim::PASSWORD,
        }}},
        "labels": {PROVIDER_LABEL: ID},
    }));

    let rt = runtime();
    let _guard = rt.enter();
    let client = omni.client();
    let running = start(&client);

    // Pending: ironboot only keeps the private status (the Go provider's agent is gone:
    // its tunnel was to the Go provider), and touches nothing.
    wait_for("MachineStatus shows the agent gone", || {
        let (ms, _) = omni.record::<baremetal::MachineStatusSpec>("MachineStatus", "m4");
        !ms.agent_accessible && ms.power_state == baremetal::PowerState::On as i32
    });
    let (ms, ms_meta) = omni.record::<baremetal::MachineStatusSpec>("MachineStatus", "m4");
    assert!(ms.initialized, "{ms:?}");
    assert_eq!(
        ms_meta["finalizers"],
        json!([
            go("RebootStatusController"),
            go("InfraMachineStatusController")
        ])
    );
    std::thread::sleep(MIN_REBOOT_INTERVAL + Duration::from_secs(1));
    assert!(bmc.changes().is_empty(), "{:?}", bmc.changes());

    // Omni accepts it: its disks must be wiped by the agent, which does not run, so
    // ironboot reboots it into the agent over PXE, recorded in RebootStatus only.
    spec.acceptance_status = specs::infra_machine_config_spec::AcceptanceStatus::Accepted as i32;
    omni.update_machine("m4", &spec, &labels);
    wait_for("the reboot into the agent", || bmc.changes().len() >= 2);
    assert_eq!(bmc.changes()[..2], ["set boot pxe", "set power 0"]);
    let (reboot, reboot_meta) = omni.record::<baremetal::RebootStatusSpec>("RebootStatus", "m4");
    assert!(recent(reboot.last_reboot_timestamp.as_ref()), "{reboot:?}");
    assert_eq!(reboot_meta["owner"], go("RebootStatusController"));
    assert_eq!(
        omni.get((PRIVATE_NS, &private_type("PowerOperation"), "m4"))["found"],
        false,
        "no PowerOperation for a reboot"
    );
    let status = (SHARED_NS, INFRA_MACHINE_STATUS, "m4");
    let published = specs::InfraMachineStatusSpec::decode(&omni.raw_spec(status)[..]).unwrap();
    assert!(!published.ready_to_use, "not wiped yet: {published:?}");

    // Removed before its agent came: every record goes, the InfraMachine is let go.
    omni.teardown("m4");
    wait_for("the InfraMachine let go", || {
        omni.finalizers(machine).is_empty()
    });
    for name in ["MachineStatus", "RebootStatus"] {
        let v = omni.get((PRIVATE_NS, &private_type(name), "m4"));
        assert_eq!(v["found"], false, "{name} left after the release: {v}");
    }
    assert_eq!(omni.get(status)["found"], false, "InfraMachineStatus left");
    omni.destroy("m4");
    drop(running);
    bmc.stop();
}

#[test]
fn a_record_held_by_another_party_does_not_keep_the_machine_in_omni() {
    let mut omni = Omni::start();
    // A cordoned machine (left alone: no BMC needed) held by ironboot, whose RebootStatus
    // another party holds too.
    let machine = (SHARED_NS, INFRA_MACHINE, "m2");
    omni.put_raw(
        machine,
        &accepted("tok-2", true).encode_to_vec(),
        "",
        &[go("MachineStatusController")],
        &[(PROVIDER_LABEL, ID)],
    );
    let reboot_type = private_type("RebootStatus");
    let reboot = (PRIVATE_NS, reboot_type.as_str(), "m2");
    let spec = baremetal::RebootStatusSpec {
        last_reboot_id: "r1".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let owner = go("RebootStatusController");
    omni.put_raw(
        reboot,
        &spec,
        &owner,
        &[go("PowerOperationController"), "someone-else".to_owned()],
        &[],
    );

    let rt = runtime();
    let _guard = rt.enter();
    let client = omni.client();
    let running = start(&client);

    omni.teardown("m2");
    wait_for("the InfraMachine let go", || {
        omni.finalizers(machine).is_empty()
    });
    // The record stays while its holder holds it, without the provider's finalizer.
    assert_eq!(omni.finalizers(reboot), ["someone-else"]);
    omni.destroy("m2");

    // ironboot restarts meanwhile: the machine is in no watch any more, but its record
    // is, and the holder lets go: the restarted ironboot destroys the record.
    drop(running);
    let running = start(&client);
    omni.put_raw(reboot, &spec, &owner, &[], &[]);
    wait_for("the record destroyed once its holder let go", || {
        omni.get(reboot)["found"] == false
    });
    drop(running);
}

#[test]
fn an_infra_machine_with_a_field_ironboot_does_not_know_is_held_and_released_unchanged() {
    let mut omni = Omni::start();
    // A spec from a newer Omni: the known fields, then field 1000 (a string) that this
    // build's InfraMachineSpec does not have.
    let mut spec = accepted("tok-3", true).encode_to_vec();
    let unknown = {
        let mut b = Vec::new();
        prost::encoding::string::encode(1000, &"from a newer Omni".to_owned(), &mut b);
        b
    };
    spec.extend_from_slice(&unknown);
    let machine = (SHARED_NS, INFRA_MACHINE, "m3");
    omni.put_raw(machine, &spec, "", &[], &[(PROVIDER_LABEL, ID)]);
    let stored = omni.raw_spec(machine);
    assert!(
        stored.ends_with(&unknown),
        "the harness keeps the unknown field: {stored:?}"
    );

    let rt = runtime();
    let _guard = rt.enter();
    let client = omni.client();
    let running = start(&client);

    // Held: Omni accepts the finalizer only with the spec unchanged.
    wait_for("ironboot's finalizer on the InfraMachine", || {
        omni.finalizers(machine) == [go("MachineStatusController")]
    });
    assert_eq!(omni.raw_spec(machine), stored, "the spec after the hold");

    // Released.
    omni.teardown("m3");
    wait_for("the InfraMachine let go", || {
        omni.finalizers(machine).is_empty()
    });
    assert_eq!(omni.raw_spec(machine), stored, "the spec after the release");
    omni.destroy("m3");
    drop(running);
}

/// ironboot in Omni mode on `ip` (its HTTP API on a free port, TFTP on `ip`:69, no
/// ProxyDHCP), against `omni`; killed on drop. Its log is in the suite's log directory.
struct Provider {
    child: std::process::Child,
    api: std::net::SocketAddr,
    log: PathBuf,
    _state: tempfile::TempDir,
}

impl Provider {
    fn start(omni: &Omni, ip: &str) -> Self {
        let api = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let state = tempfile::tempdir().unwrap();
        let (log_file, log) = logs::ironboot_log("legacy-join");
        let child = launch::command()
            .args(["--id", ID])
            .args([
                "--omni-api-endpoint",
                &format!("http://{}", omni.serve.addr),
            ])
            .args(["--api-listen-address", ip, "--api-advertise-address", ip])
            .args(["--api-port", &api.port().to_string()])
            .args(["--disable-dhcp-proxy", "--udp-driver", "portable"])
            .arg("--state-dir")
            .arg(state.path())
            .env("OMNI_SERVICE_ACCOUNT_KEY", &omni.key)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting ironboot");
        Self {
            child,
            api,
            log,
            _state: state,
        }
    }

    /// `GET path` on the API port: the status and the body (`None` before it listens).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http::get(self.api, path).ok()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        process::stop(&mut self.child);
    }
}

#[test]
fn an_older_omni_gets_the_join_configuration_rendered_from_its_connection_params() {
    let mut omni = Omni::start_with(&["--legacy-omni"]);
    let put_params = |omni: &mut Omni, token: &str| {
        logs::record_secret("legacy join token", token);
        omni.ok(json!({
            "cmd": "put", "kind": "ConnectionParams", "id": "siderolink-config",
            "spec": {
                "apiEndpoint": "https://omni.example.org:8090",
                "joinToken": token,
                "eventsPort": 8091,
                "logsPort": 8092,
                "wireguardEndpoint": "10.9.8.7:50180",
                "args": format!("siderolink.api=https://omni.example.org:8090?jointoken={token}"),
            },
        }));
        // What the Go provider serves for these parameters, rendered by Omni's module.
        let v = omni.ok(json!({"cmd": "legacy_join_config", "id": ID}));
        v["config"]
            .as_str()
            .expect("a rendered configuration")
            .to_owned()
    };
    let first = put_params(&mut omni, "w7bZ1uVq9mXk3tYp0aRs5dEf8gHj2kLn4oPi6uQ");
    assert!(
        first.contains("kind: SideroLinkConfig") && first.contains("jointoken=v1%3A"),
        "{first}"
    );

    let ironboot = Provider::start(&omni, "127.0.0.57");
    let config = "/config?u=11111111-2222-3333-4444-555555555555";
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match ironboot.get(config) {
            Some((200, body)) => {
                assert_eq!(body, first, "the served join configuration");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "no join configuration served (last answer {other:?})\n{}",
                ironboot.log_tail()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Omni's join token changes: ironboot follows without a restart (the Go provider
    // reads it once at start).
    let second = put_params(&mut omni, "Qn5tR8yU1iO4pA7sD0fG3hJ6kL9zX2cV5bN8mW1e");
    assert_ne!(first, second);
    wait_for("the new join token served", || {
        ironboot
            .get(config)
            .is_some_and(|(s, b)| s == 200 && b == second)
    });
}
