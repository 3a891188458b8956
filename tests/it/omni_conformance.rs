//! The Omni client proven against the real upstream Go code: `tests/omni-harness` serves
//! the COSI State API with cosi-project/runtime's in-memory state and gRPC server,
//! verifies every call's signature with go-api-signature against a service-account key
//! it generated the way `omnictl infraprovider create` does, emulates Omni's access rules
//! for infra providers, and decodes what the Rust client wrote with Omni's own Go types
//! (protobuf spec and YAML spec alike).
//!
//! Needs Go (`go` on PATH or /usr/local/go/bin/go) and the harness's modules
//! (`tests/install-prereqs.sh` runs `go mod download`); the harness is built once into
//! `target/tmp/omni-harness/`. No root needed; everything listens on 127.0.0.1.

use ironboot::testing::omni;
use ironboot_test_support::{go_harness, launch, logs, omni_harness};

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use ironboot_proto::{baremetal, omni as specs};
use omni::auth::{KeyError, ServiceAccountKey};
use omni::client::{Client, LabelQuery, OmniError, Phase};
use omni::provider::{self as registration, ProviderInfo};
use omni::resources::{LABEL_INFRA_PROVIDER_ID, LABEL_IS_STATIC_PROVIDER, Spec};
use omni::transport::{OmniEndpoint, SignedChannel};
use omni::watch::{Event, Watch};
use prost_types::Timestamp;
use serde_json::{Value, json};

const ID: &str = "bare-metal";

/// Builds the harness once per test run (and only if a source is newer than the binary).
fn harness_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        go_harness::build("the Omni conformance test", "omni-harness", "omniharness")
    })
}

fn keygen(args: &[&str]) -> String {
    omni_harness::keygen(harness_binary(), args)
}

/// The provider's key, generated once per test run.
fn provider_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| keygen(&["--id", ID]))
}

/// A running harness; killed on drop.
struct Harness {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(extra: &[&str]) -> Self {
        Self::start_with_key(provider_key(), extra)
    }

    fn start_with_key(key: &str, extra: &[&str]) -> Self {
        let s = omni_harness::serve(harness_binary(), key, extra);
        Self {
            child: s.child,
            stdin: s.stdin,
            stdout: s.stdout,
            addr: s.addr,
            _dir: s.dir,
        }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Sends one control command; returns the answer (which has `ok`).
    fn send(&mut self, cmd: Value) -> Value {
        omni_harness::send(&mut self.stdin, &mut self.stdout, &cmd)
    }

    /// Like [`Self::send`], and panics unless it succeeded.
    fn ok(&mut self, cmd: Value) -> Value {
        let v = self.send(cmd.clone());
        assert_eq!(
            v["ok"], true,
            "harness command {cmd} failed: {}",
            v["error"]
        );
        v
    }

    fn client(&self) -> Client {
        client_for(&self.url("http"), provider_key(), |c| c)
    }

    fn auth_failures(&mut self) -> Vec<String> {
        let v = self.ok(json!({"cmd": "auth_failures"}));
        v["failures"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_for(url: &str, key: &str, tweak: impl FnOnce(SignedChannel) -> SignedChannel) -> Client {
    let key = Arc::new(ServiceAccountKey::parse(key, ID, SystemTime::now()).expect("valid key"));
    let endpoint = OmniEndpoint::parse(url, true).expect("endpoint");
    let channel = endpoint.channel().expect("channel");
    let provider_id = key.provider_id().to_owned();
    Client::from_signed(
        tweak(SignedChannel::new(channel, key)),
        provider_id,
        url.to_owned(),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

fn check<S: Spec>(h: &mut Harness, c: &Client, id: &str, spec: Value, extra: Value) -> Value {
    let mut cmd = json!({
        "cmd": "check",
        "ns": c.namespace_of::<S>(),
        "type": c.type_of::<S>(),
        "id": id,
        "spec": spec,
    });
    for (k, v) in extra.as_object().unwrap() {
        cmd[k] = v.clone();
    }
    h.ok(cmd)
}

#[test]
fn registration_heartbeat_and_machine_status_decode_with_omnis_go_types() {
    let mut h = Harness::start(&[]);
    let rt = rt();
    let _guard = rt.enter();
    let c = h.client();
    let info = ProviderInfo {
        name: "Bare Metal \"rack\" <a&b>".into(),
        description: "Bare metal infrastructure provider\nsecond line".into(),
        version: "v9.8.7".into(),
    };
    let status = rt
        .block_on(registration::register(&c, &info))
        .expect("register");
    assert_eq!(status.metadata.version, Some(1));
    let icon = &status.spec.icon;
    check::<specs::InfraProviderStatusSpec>(
        &mut h,
        &c,
        ID,
        json!({"name": info.name, "description": info.description, "icon": icon, "version": "v9.8.7"}),
        json!({
            "labels": {LABEL_IS_STATIC_PROVIDER: "", LABEL_INFRA_PROVIDER_ID: ID},
            "owner": "",
        }),
    );
    // The icon is the SVG in unpadded base64, as the Go provider sends it.
    assert!(!icon.ends_with('='));
    use base64::Engine as _;
    let svg = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(icon)
        .unwrap();
    assert!(svg.starts_with(b"<svg"), "icon is not an SVG");

    // Registering again (a restart) updates in place.
    let again = rt
        .block_on(registration::register(
            &c,
            &ProviderInfo {
                version: "v9.8.8".into(),
                ..info.clone()
            },
        ))
        .expect("register again");
    assert_eq!(again.metadata.version, Some(2));
    assert_eq!(again.spec.version, "v9.8.8");

    let at = SystemTime::UNIX_EPOCH + Duration::new(1_750_000_000, 123_456_789);
    rt.block_on(registration::heartbeat(&c, at, "bmc 10.0.0.9: timeout"))
        .expect("heartbeat");
    check::<specs::InfraProviderHealthStatusSpec>(
        &mut h,
        &c,
        ID,
        json!({"lastHeartbeatTimestamp": "2025-06-15T15:06:40.123456789Z", "error": "bmc 10.0.0.9: timeout"}),
        json!({
            "labels": {LABEL_INFRA_PROVIDER_ID: ID},
            "owner": "bare-metal.ProviderHealthStatusController",
        }),
    );
    let hb = rt
        .block_on(registration::heartbeat(
            &c,
            at + Duration::from_secs(30),
            "",
        ))
        .expect("second heartbeat");
    assert_eq!(hb.spec.error, "");
    assert_eq!(hb.metadata.version, Some(2));

    // The heartbeat loop: a tick, then the latest error as soon as it is reported.
    let (report, errors) = tokio::sync::watch::channel(String::new());
    let beat = rt.spawn(registration::run_heartbeat(
        c.clone(),
        Duration::from_millis(50),
        errors,
    ));
    report.send("ipmi 10.0.0.7: auth failed".into()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = rt
            .block_on(c.get::<specs::InfraProviderHealthStatusSpec>(ID))
            .unwrap();
        let fresh = got
            .spec
            .last_heartbeat_timestamp
            .is_some_and(|t| t.seconds > 1_750_000_100);
        if fresh
            && got.spec.error == "ipmi 10.0.0.7: auth failed"
            && got.metadata.version >= Some(4)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "heartbeat loop stalled: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(report);
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), beat).await })
        .expect("heartbeat loop ends when its error sender is dropped")
        .unwrap();

    // InfraMachineStatus: every field, and labels.
    let mut ms = c.new_resource(
        "6f1c0b4e-0000-4000-8000-00000000abcd",
        specs::InfraMachineStatusSpec {
            power_state: specs::infra_machine_status_spec::MachinePowerState::PowerStateOn as i32,
            ready_to_use: true,
            last_reboot_id: "reboot-7".into(),
            last_reboot_timestamp: ts(1_700_000_001, 5),
            installed: true,
            wiped_node_unique_token: "tok-1".into(),
            last_power_off_id: "off-3".into(),
        },
    );
    ms.metadata.labels.insert("a".into(), "b".into());
    ms.metadata
        .labels
        .insert("omni.sidero.dev/cluster".into(), "prod".into());
    let created = rt
        .block_on(c.create(&ms, "bare-metal.InfraMachineStatusController"))
        .expect("create");
    assert_eq!(
        created
            .metadata
            .labels
            .get(LABEL_INFRA_PROVIDER_ID)
            .map(String::as_str),
        Some(ID)
    );
    check::<specs::InfraMachineStatusSpec>(
        &mut h,
        &c,
        &ms.metadata.id,
        json!({
            "powerState": "POWER_STATE_ON", "readyToUse": true, "lastRebootId": "reboot-7",
            "lastRebootTimestamp": "2023-11-14T22:13:21.000000005Z", "installed": true,
            "wipedNodeUniqueToken": "tok-1", "lastPowerOffId": "off-3",
        }),
        json!({
            "labels": {"a": "b", "omni.sidero.dev/cluster": "prod", LABEL_INFRA_PROVIDER_ID: ID},
            "owner": "bare-metal.InfraMachineStatusController",
        }),
    );
    // Zero values too (proto3 omits them; YAML carries them).
    let zero = c.new_resource("zero", specs::InfraMachineStatusSpec::default());
    rt.block_on(c.create(&zero, "")).expect("create zero");
    check::<specs::InfraMachineStatusSpec>(&mut h, &c, "zero", json!({}), json!({}));

    // Omni's rules: the provider status must carry the provider's ID.
    let other = c.new_resource("someone-else", specs::InfraProviderStatusSpec::default());
    let err = rt.block_on(c.create(&other, "")).expect_err("foreign ID");
    assert!(
        matches!(
            err,
            OmniError::Rpc {
                code: tonic::Code::InvalidArgument,
                ..
            }
        ),
        "{err}"
    );
    assert!(h.auth_failures().is_empty());
}

#[test]
fn private_resources_round_trip_in_the_provider_namespace() {
    let mut h = Harness::start(&[]);
    let rt = rt();
    let _guard = rt.enter();
    let c = h.client();
    let bmc = baremetal::BmcConfigurationSpec {
        ipmi: Some(baremetal::bmc_configuration_spec::Ipmi {
            address: "10.0.0.5".into(),
            port: 623,
            username: "talos-agent".into(),
            password: "s3cret".into(),
        }),
        api: Some(baremetal::bmc_configuration_spec::Api {
            address: "http://10.0.0.6:8080".into(),
        }),
        manually_configured: true,
    };
    let ms = baremetal::MachineStatusSpec {
        agent_accessible: true,
        power_state: baremetal::PowerState::On as i32,
        initialized: true,
    };
    let po = baremetal::PowerOperationSpec {
        last_power_operation: baremetal::PowerState::Off as i32,
        last_power_on_timestamp: ts(1_700_000_100, 0),
        last_power_off_id: "off-1".into(),
        wipe_id_at_power_off: "wipe-1".into(),
    };
    let rs = baremetal::RebootStatusSpec {
        last_reboot_id: "r-1".into(),
        last_reboot_timestamp: ts(1_700_000_200, 7),
    };
    let ws = baremetal::WipeStatusSpec {
        last_wipe_id: "wipe-2".into(),
        last_wipe_install_event_id: u64::MAX - 1,
        initial_wipe_done: true,
        wiped_node_unique_token: "tok".into(),
    };
    let tls = baremetal::TlsConfigSpec {
        ca_cert: "-----BEGIN CERTIFICATE-----\n...".into(),
        ca_key: "-----BEGIN PRIVATE KEY-----\n...".into(),
    };

    async fn round_trip<S: Spec + std::fmt::Debug>(c: &Client, id: &str, spec: S) {
        let r = c.new_resource(id, spec.clone());
        c.create(&r, "ctrl").await.expect("create private resource");
        let back = c.get::<S>(id).await.expect("get private resource");
        assert_eq!(back.spec, spec);
        assert_eq!(back.metadata.namespace, "infra-provider:bare-metal");
        assert!(
            back.metadata
                .type_name
                .ends_with(".bare-metal.infraprovider.sidero.dev")
        );
        // No label stamping in the private namespace.
        assert!(
            back.metadata.labels.is_empty(),
            "{:?}",
            back.metadata.labels
        );
    }
    rt.block_on(async {
        round_trip(&c, "m1", bmc).await;
        round_trip(&c, "m1", ms).await;
        round_trip(&c, "m1", po).await;
        round_trip(&c, "m1", rs).await;
        round_trip(&c, "m1", ws).await;
        round_trip(&c, "tls-config", tls).await;
    });
    let meta = h.ok(json!({
        "cmd": "meta", "ns": "infra-provider:bare-metal",
        "type": "WipeStatus.bare-metal.infraprovider.sidero.dev", "id": "m1",
    }));
    assert_eq!(meta["owner"], "ctrl");
    assert_eq!(meta["version"], "1");
}

fn put_machine(h: &mut Harness, id: &str, provider: &str, spec: Value) -> Value {
    h.ok(json!({
        "cmd": "put", "kind": "InfraMachine", "id": id, "spec": spec,
        "labels": {LABEL_INFRA_PROVIDER_ID: provider},
    }))
}

#[test]
fn omni_owned_resources_are_read_and_only_finalizers_may_change() {
    let mut h = Harness::start(&[]);
    let rt = rt();
    let _guard = rt.enter();
    let c = h.client();
    put_machine(
        &mut h,
        "m1",
        ID,
        json!({
            "preferredPowerState": "POWER_STATE_ON", "acceptanceStatus": "ACCEPTED",
            "clusterTalosVersion": "v1.11.2", "extensions": ["siderolabs/iscsi-tools", "x"],
            "wipeId": "w-1", "extraKernelArgs": "console=ttyS0", "requestedRebootId": "rr",
            "cordoned": true, "installEventId": "18446744073709551615",
            "nodeUniqueToken": "nut", "powerOffRequestId": "por",
        }),
    );
    put_machine(&mut h, "theirs", "other-provider", json!({"wipeId": "x"}));
    h.ok(json!({
        "cmd": "put", "kind": "BMCConfig", "id": "m1",
        "spec": {"config": {"ipmi": {"address": "10.1.1.1", "port": 624, "username": "admin", "password": "pw"}, "api": {"address": "a"}}},
        "labels": {LABEL_INFRA_PROVIDER_ID: ID},
    }));
    h.ok(json!({
        "cmd": "put", "kind": "ProviderJoinConfig", "id": ID,
        "spec": {"config": {"kernelArgs": ["siderolink.api=x"], "config": "apiVersion: v1alpha1\nkind: SideroLinkConfig\n"}, "joinToken": "jt"},
        "labels": {LABEL_INFRA_PROVIDER_ID: ID},
    }));

    rt.block_on(async {
        let m = c
            .get::<specs::InfraMachineSpec>("m1")
            .await
            .expect("get machine");
        assert_eq!(
            m.spec,
            specs::InfraMachineSpec {
                preferred_power_state: specs::infra_machine_spec::MachinePowerState::PowerStateOn
                    as i32,
                acceptance_status: specs::infra_machine_config_spec::AcceptanceStatus::Accepted
                    as i32,
                cluster_talos_version: "v1.11.2".into(),
                extensions: vec!["siderolabs/iscsi-tools".into(), "x".into()],
                wipe_id: "w-1".into(),
                extra_kernel_args: "console=ttyS0".into(),
                requested_reboot_id: "rr".into(),
                cordoned: true,
                install_event_id: u64::MAX,
                node_unique_token: "nut".into(),
                power_off_request_id: "por".into(),
            }
        );
        let bmc = c
            .get::<specs::BmcConfigSpec>("m1")
            .await
            .expect("get BMC config");
        let ipmi = bmc
            .spec
            .config
            .as_ref()
            .and_then(|c| c.ipmi.as_ref())
            .expect("ipmi");
        assert_eq!(
            (
                ipmi.address.as_str(),
                ipmi.port,
                ipmi.username.as_str(),
                ipmi.password.as_str()
            ),
            ("10.1.1.1", 624, "admin", "pw")
        );
        assert_eq!(
            bmc.spec
                .config
                .as_ref()
                .and_then(|c| c.api.as_ref())
                .unwrap()
                .address,
            "a"
        );
        let join = c
            .get::<specs::ProviderJoinConfigSpec>(ID)
            .await
            .expect("get join config");
        assert_eq!(join.spec.join_token, "jt");
        let jc = join.spec.config.as_ref().unwrap();
        assert_eq!(jc.kernel_args, ["siderolink.api=x"]);
        assert!(jc.config.contains("SideroLinkConfig"));

        // Another provider's machine is invisible.
        let err = c
            .get::<specs::InfraMachineSpec>("theirs")
            .await
            .expect_err("foreign machine");
        assert!(matches!(err, OmniError::NotFound { .. }), "{err}");
        let mine = LabelQuery::default().equal(LABEL_INFRA_PROVIDER_ID, ID);
        let all = c
            .list::<specs::InfraMachineSpec>(&LabelQuery::default())
            .await
            .unwrap();
        assert_eq!(
            all.iter()
                .map(|r| r.metadata.id.as_str())
                .collect::<Vec<_>>(),
            ["m1"]
        );
        assert_eq!(
            c.list::<specs::InfraMachineSpec>(&mine)
                .await
                .unwrap()
                .len(),
            1
        );

        // Read-only: spec changes and creation are refused, finalizers are not.
        let err = c
            .modify::<specs::InfraMachineSpec>("m1", "", false, |r| {
                r.spec.wipe_id = "mine".into();
                true
            })
            .await
            .expect_err("spec change");
        assert!(matches!(err, OmniError::PermissionDenied { .. }), "{err}");
        let fresh = c.new_resource("new", specs::InfraMachineSpec::default());
        let err = c.create(&fresh, "").await.expect_err("create InfraMachine");
        assert!(matches!(err, OmniError::PermissionDenied { .. }), "{err}");
        let with = c
            .add_finalizer::<specs::InfraMachineSpec>("m1", "bare-metal.MachineStatusController")
            .await
            .expect("add finalizer");
        assert_eq!(
            with.metadata.finalizers,
            ["bare-metal.MachineStatusController"]
        );
        // Idempotent.
        let again = c
            .add_finalizer::<specs::InfraMachineSpec>("m1", "bare-metal.MachineStatusController")
            .await
            .unwrap();
        assert_eq!(again.metadata.version, with.metadata.version);
    });
    check::<specs::InfraMachineSpec>(
        &mut h,
        &c,
        "m1",
        json!({
            "preferredPowerState": 1, "acceptanceStatus": 1, "clusterTalosVersion": "v1.11.2",
            "extensions": ["siderolabs/iscsi-tools", "x"], "wipeId": "w-1",
            "extraKernelArgs": "console=ttyS0", "requestedRebootId": "rr", "cordoned": true,
            "installEventId": "18446744073709551615", "nodeUniqueToken": "nut", "powerOffRequestId": "por",
        }),
        json!({"finalizers": ["bare-metal.MachineStatusController"]}),
    );
    rt.block_on(
        c.remove_finalizer::<specs::InfraMachineSpec>("m1", "bare-metal.MachineStatusController"),
    )
    .expect("remove finalizer");
    let meta = h.ok(json!({"cmd": "meta", "ns": "infra-provider", "type": "InfraMachines.omni.sidero.dev", "id": "m1"}));
    assert_eq!(meta["finalizers"], Value::Null);
}

#[test]
fn updates_are_optimistic_and_retried_on_conflict() {
    let h = Harness::start(&[]);
    let rt = rt();
    let _guard = rt.enter();
    let c = h.client();
    rt.block_on(async {
        let r = c.new_resource("m1", baremetal::WipeStatusSpec::default());
        let created = c.create(&r, "").await.unwrap();
        // A stale version is refused...
        let mut stale = created.clone();
        stale.spec.last_wipe_id = "a".into();
        c.update(&stale, "", Some(Phase::Running)).await.unwrap();
        let err = c
            .update(&stale, "", Some(Phase::Running))
            .await
            .expect_err("stale");
        assert!(matches!(err, OmniError::Conflict { .. }), "{err}");
        // ...and read-modify-write loops running at once lose no increment.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    c.modify::<baremetal::WipeStatusSpec>("m1", "", false, |r| {
                        r.spec.last_wipe_install_event_id += 1;
                        true
                    })
                    .await
                    .expect("modify");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let end = c.get::<baremetal::WipeStatusSpec>("m1").await.unwrap();
        assert_eq!(end.spec.last_wipe_install_event_id, 40);
        assert_eq!(end.metadata.version, Some(42));
    });
}

#[test]
fn teardown_waits_for_finalizers_then_destroy_succeeds() {
    let h = Harness::start(&[]);
    let rt = rt();
    let _guard = rt.enter();
    let c = h.client();
    rt.block_on(async {
        let r = c.new_resource("m1", baremetal::RebootStatusSpec::default());
        c.create(&r, "").await.unwrap();
        c.add_finalizer::<baremetal::RebootStatusSpec>("m1", "fin")
            .await
            .unwrap();
        assert!(
            !c.teardown::<baremetal::RebootStatusSpec>("m1", "")
                .await
                .unwrap()
        );
        let torn = c.get::<baremetal::RebootStatusSpec>("m1").await.unwrap();
        assert_eq!(torn.metadata.phase, Phase::TearingDown);
        // Record updates expect the resource running, as the Go SDK's do: one being torn
        // down is not written again.
        let err = c
            .modify::<baremetal::RebootStatusSpec>("m1", "", false, |r| {
                r.spec.last_reboot_id = "r1".into();
                true
            })
            .await
            .expect_err("the record is tearing down");
        assert!(matches!(err, OmniError::PhaseConflict { .. }), "{err}");
        let err = c
            .destroy::<baremetal::RebootStatusSpec>("m1", "")
            .await
            .expect_err("finalizer");
        assert!(matches!(err, OmniError::Conflict { .. }), "{err}");
        // Finalizers can be released while tearing down.
        c.remove_finalizer::<baremetal::RebootStatusSpec>("m1", "fin")
            .await
            .unwrap();
        assert!(
            c.teardown::<baremetal::RebootStatusSpec>("m1", "")
                .await
                .unwrap()
        );
        c.destroy::<baremetal::RebootStatusSpec>("m1", "")
            .await
            .unwrap();
        assert!(
            c.get_opt::<baremetal::RebootStatusSpec>("m1")
                .await
                .unwrap()
                .is_none()
        );

        let r2 = c.new_resource("m2", baremetal::RebootStatusSpec::default());
        c.create(&r2, "").await.unwrap();
        c.teardown_and_destroy::<baremetal::RebootStatusSpec>("m2", "")
            .await
            .unwrap();
        let err = c
            .get::<baremetal::RebootStatusSpec>("m2")
            .await
            .expect_err("destroyed");
        assert!(matches!(err, OmniError::NotFound { .. }), "{err}");
    });
}

fn ids<S>(events: &[Event<S>]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::Created(r) => format!("created {}", r.metadata.id),
            Event::Updated { new, .. } => format!(
                "updated {} v{}",
                new.metadata.id,
                new.metadata.version.unwrap_or(0)
            ),
            Event::Destroyed(r) => format!("destroyed {}", r.metadata.id),
            Event::Bootstrapped => "bootstrapped".into(),
            Event::Reset => "reset".into(),
        })
        .collect()
}

#[test]
fn watch_bootstraps_then_delivers_in_order_across_a_broken_stream() {
    let mut h = Harness::start(&[]);
    let rt = rt();
    let _guard = rt.enter();
    let c = h.client();
    for id in ["m1", "m2", "m3"] {
        put_machine(&mut h, id, ID, json!({"wipeId": id}));
    }
    put_machine(&mut h, "theirs", "other", json!({}));
    let mut w = Watch::<specs::InfraMachineSpec>::new(c, LabelQuery::default());
    let next = |w: &mut Watch<specs::InfraMachineSpec>, n: usize| {
        rt.block_on(async {
            let mut out = Vec::new();
            for _ in 0..n {
                let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
                    .await
                    .expect("watch event within 10 s")
                    .expect("watch event");
                out.push(ev);
            }
            out
        })
    };
    let boot = next(&mut w, 4);
    assert_eq!(
        ids(&boot),
        ["created m1", "created m2", "created m3", "bootstrapped"]
    );
    let Event::Created(m2) = &boot[1] else {
        unreachable!()
    };
    assert_eq!(m2.spec.wipe_id, "m2");

    put_machine(&mut h, "m1", ID, json!({"wipeId": "m1-b"}));
    put_machine(&mut h, "m1", ID, json!({"wipeId": "m1-c"}));
    let live = next(&mut w, 2);
    assert_eq!(ids(&live), ["updated m1 v2", "updated m1 v3"]);
    if let Event::Updated { old, new } = &live[1] {
        assert_eq!(old.as_ref().map(|o| o.spec.wipe_id.as_str()), Some("m1-b"));
        assert_eq!(new.spec.wipe_id, "m1-c");
    }

    // Break the stream; changes made meanwhile arrive after the resume, in order, once.
    let broken = h.ok(json!({"cmd": "break_streams"}));
    assert!(broken["broken"].as_u64().unwrap() >= 1, "{broken}");
    put_machine(&mut h, "m2", ID, json!({"wipeId": "m2-b"}));
    put_machine(&mut h, "m4", ID, json!({"wipeId": "m4"}));
    h.ok(json!({"cmd": "destroy", "ns": "infra-provider", "type": "InfraMachines.omni.sidero.dev", "id": "m3"}));
    put_machine(&mut h, "theirs", "other", json!({"wipeId": "changed"}));
    put_machine(&mut h, "m1", ID, json!({"wipeId": "m1-d"}));
    let resumed = next(&mut w, 4);
    assert_eq!(
        ids(&resumed),
        [
            "updated m2 v2",
            "created m4",
            "destroyed m3",
            "updated m1 v4"
        ]
    );
    assert!(w.resumes() >= 1, "the stream was not re-opened");
    // Twice more, back to back.
    h.ok(json!({"cmd": "break_streams"}));
    h.ok(json!({"cmd": "break_streams"}));
    put_machine(&mut h, "m4", ID, json!({"wipeId": "m4-b"}));
    assert_eq!(ids(&next(&mut w, 1)), ["updated m4 v2"]);
}

#[test]
fn tampered_stale_and_unknown_signatures_are_rejected_and_reported() {
    let mut h = Harness::start(&[]);
    let url = h.url("http");
    let rt = rt();
    let _guard = rt.enter();
    let get =
        |c: Client| rt.block_on(async move { c.get_opt::<specs::InfraMachineSpec>("x").await });

    // A valid signature passes (no such resource: that is an answer, not an auth error).
    assert!(
        get(client_for(&url, provider_key(), |c| c))
            .unwrap()
            .is_none()
    );
    assert!(h.auth_failures().is_empty());

    let err = get(client_for(&url, provider_key(), |c| {
        c.with_tampered_payload()
    }))
    .unwrap_err();
    assert!(matches!(err, OmniError::SignatureRejected { .. }), "{err}");
    assert!(
        err.to_string().contains("rejected the request signature"),
        "{err}"
    );
    let f = h.auth_failures();
    assert!(f.len() == 1 && f[0].contains("verify"), "{f:?}");

    // Ten minutes behind (Omni allows five).
    let err = get(client_for(&url, provider_key(), |c| {
        c.with_clock_offset(-600)
    }))
    .unwrap_err();
    assert!(matches!(err, OmniError::SignatureRejected { .. }), "{err}");
    let f = h.auth_failures();
    assert!(
        f.len() == 1 && f[0].contains("outside of allowed skew"),
        "{f:?}"
    );
    // Four minutes ahead is fine.
    assert!(get(client_for(&url, provider_key(), |c| c.with_clock_offset(240))).is_ok());

    // A key Omni does not know (e.g. revoked and replaced).
    let other = keygen(&["--id", ID]);
    let err = get(client_for(&url, &other, |c| c)).unwrap_err();
    assert!(matches!(err, OmniError::SignatureRejected { .. }), "{err}");
    let f = h.auth_failures();
    assert!(
        f.len() == 1 && f[0].contains("unknown key fingerprint"),
        "{f:?}"
    );
}

#[test]
fn service_account_keys_are_validated_at_start() {
    let now = SystemTime::now();
    let key = ServiceAccountKey::parse(provider_key(), ID, now).expect("omnictl-style key");
    assert_eq!(key.name(), "infra-provider:bare-metal");
    assert_eq!(key.fingerprint().len(), 40);
    let expires = key.expires_at().expect("omnictl keys expire");
    let days = expires.duration_since(now).unwrap().as_secs() / 86_400;
    assert!((364..=365).contains(&days), "{days} days");
    // Debug output carries no key material.
    let dbg = format!("{key:?}");
    assert!(
        !dbg.contains("BEGIN") && dbg.contains("infra-provider:bare-metal"),
        "{dbg}"
    );

    let err = ServiceAccountKey::parse(provider_key(), "rack-2", now).unwrap_err();
    assert!(matches!(err, KeyError::WrongProvider { .. }), "{err}");

    let wrong_mail = keygen(&["--id", ID, "--email", "mallory@example.org"]);
    let err = ServiceAccountKey::parse(&wrong_mail, ID, now).unwrap_err();
    assert!(matches!(err, KeyError::WrongIdentity { .. }), "{err}");

    let user = keygen(&["--name", "alice@example.org"]);
    let err = ServiceAccountKey::parse(&user, ID, now).unwrap_err();
    assert!(matches!(err, KeyError::NotInfraProvider { .. }), "{err}");

    let short = keygen(&["--id", ID, "--ttl", "1h"]);
    ServiceAccountKey::parse(&short, ID, now).expect("valid for an hour");
    let err = ServiceAccountKey::parse(&short, ID, now + Duration::from_secs(3601)).unwrap_err();
    assert!(matches!(err, KeyError::Expired { .. }), "{err}");
    assert!(
        err.to_string().contains("OMNI_SERVICE_ACCOUNT_KEY"),
        "{err}"
    );
}

#[test]
fn unreachable_omni_is_retried_until_it_answers() {
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let rt = rt();
    let _guard = rt.enter();
    let c = client_for(&url, provider_key(), |c| c);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let task = rt.spawn(async move {
        let info = ProviderInfo {
            name: "n".into(),
            description: "d".into(),
            version: "v".into(),
        };
        registration::register_with_retry(&c, &info, |e, wait| {
            let _ = tx.send(format!("{e} (retry in {wait:?})"));
        })
        .await
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a retry status line");
    assert!(
        first.contains("unreachable") && first.contains(&url),
        "{first}"
    );
    let addr = format!("127.0.0.1:{port}");
    let mut h = Harness::start(&["--listen", &addr]);
    let registered = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(40), task).await })
        .expect("registered within 40 s")
        .unwrap()
        .expect("registration");
    assert_eq!(registered.metadata.id, ID);
    let meta = h.ok(json!({"cmd": "meta", "ns": "infra-provider", "type": "InfraProviderStatuses.omni.sidero.dev", "id": ID}));
    assert_eq!(meta["version"], "1");
}

#[test]
fn https_endpoints_with_and_without_verification() {
    let h = Harness::start(&["--tls"]);
    let rt = rt();
    let _guard = rt.enter();
    let ok = client_for(&h.url("https"), provider_key(), |c| c);
    rt.block_on(registration::heartbeat(&ok, SystemTime::now(), ""))
        .expect("heartbeat over TLS");
    // Verifying against the system roots refuses the self-signed certificate.
    let key = Arc::new(ServiceAccountKey::parse(provider_key(), ID, SystemTime::now()).unwrap());
    let strict = Client::new(&OmniEndpoint::parse(&h.url("https"), false).unwrap(), key).unwrap();
    let err = rt
        .block_on(registration::heartbeat(&strict, SystemTime::now(), ""))
        .expect_err("self-signed certificate");
    assert!(matches!(err, OmniError::Unavailable { .. }), "{err}");
    // Plain HTTP/2 to a TLS port fails too, as unreachable.
    let plain = client_for(&h.url("http"), provider_key(), |c| c);
    assert!(
        rt.block_on(registration::heartbeat(&plain, SystemTime::now(), ""))
            .is_err()
    );
}

#[test]
fn omni_check_command_registers_and_reports_bad_keys() {
    let mut h = Harness::start(&[]);
    // Debug logging, its output kept in the suite's log directory for the secret check.
    let url = h.url("http");
    let run = |key: &str| {
        let out = launch::command()
            .args(["omni", "check", "--omni-api-endpoint", &url])
            .env("OMNI_SERVICE_ACCOUNT_KEY", key)
            .env_remove("SIDERO_SERVICE_ACCOUNT_KEY")
            .output()
            .unwrap();
        let (mut log, _) = logs::ironboot_log("omni-check");
        std::io::Write::write_all(&mut log, &[&out.stdout[..], &out.stderr[..]].concat())
            .expect("writing the omni check log");
        out
    };
    let out = run(provider_key());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("registered") && stdout.contains("heartbeat sent"),
        "{stdout}"
    );
    assert!(!stdout.contains("BEGIN PGP") && !stderr.contains("BEGIN PGP"));
    h.ok(json!({"cmd": "meta", "ns": "infra-provider-ephemeral", "type": "InfraProviderHealthStatuses.omni.sidero.dev", "id": ID}));

    let out = run("bm90IGpzb24=");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("OMNI_SERVICE_ACCOUNT_KEY"), "{stderr}");
}

#[test]
fn watch_starts_over_when_omni_restarts_and_forgets_the_bookmark() {
    let mut first = Harness::start(&[]);
    let addr = first.addr.clone();
    let rt = rt();
    let _guard = rt.enter();
    let c = first.client();
    put_machine(&mut first, "old", ID, json!({}));
    let mut w = Watch::<specs::InfraMachineSpec>::new(c, LabelQuery::default());
    let next = |w: &mut Watch<specs::InfraMachineSpec>| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), w.next())
                .await
                .expect("watch event within 20 s")
                .expect("watch event")
        })
    };
    assert_eq!(
        ids(&[next(&mut w), next(&mut w)]),
        ["created old", "bootstrapped"]
    );
    // Omni restarts (same address, new state, bookmarks of the old run are invalid).
    drop(first);
    let mut second = Harness::start(&["--listen", &addr]);
    put_machine(&mut second, "new", ID, json!({}));
    let events: Vec<_> = (0..3).map(|_| next(&mut w)).collect();
    assert_eq!(ids(&events), ["reset", "created new", "bootstrapped"]);
}
