//! The decision table row by row, the scripts each row renders (checked against Debian's
//! 2019 iPXE command set), the cache fed by watch events, `/config` before and after an
//! update, and the whole path through the HTTP router.
//!
//! The Image Factory is a stand-in of its `POST /schematics` on 127.0.0.1 (the real
//! factory cannot be reached from CI), answering as the factory does: the SHA-256 of the
//! posted schematic as its ID. It records the bodies so the tests can check the kernel
//! arguments and extensions that went into each image, and can be told to fail.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ironboot_net::files::FileSet;
use ironboot_proto::{baremetal, omni};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use super::*;
use crate::boot::boot_script::tests::check_debian_2019_commands_and_labels;
use crate::boot::boot_script::{Answer, BootFromDiskMethod, Rendered, init_script};
use crate::boot::machine::{Arch, MachineQuery, Uuid};
use crate::provider::boot_plan::AgentBootSource;
use crate::provider::image_factory::ImageFactory;
use crate::provider::image_factory::ImageFactorySettings;
use crate::provider::image_factory::tests::Served;
use crate::provider::lifecycle::WipeRecord;
use crate::provider::omni::client::{Metadata, Phase, Resource};
use crate::provider::omni::watch::Event;

const ADVERTISE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const PORT: u16 = 50042;
const U1: &str = "4c4c4544-0042-3510-8051-b7c04f4e3332";
const AGENT_VERSION: &str = "v1.13.7";

// ---------------------------------------------------------------------------------------
// Building watch events.

fn resource<S>(id: &str, spec: S) -> Resource<S> {
    Resource {
        metadata: Metadata {
            id: id.to_owned(),
            ..Metadata::default()
        },
        spec,
    }
}

fn infra(f: impl FnOnce(&mut omni::InfraMachineSpec)) -> omni::InfraMachineSpec {
    let mut s = omni::InfraMachineSpec::default();
    f(&mut s);
    s
}

/// Accepted, with a completed initial wipe recorded, BMC configured: the state after
/// acceptance. `f` adjusts the `infra.Machine`.
fn ready_machine(cache: &MachineStateCache, id: &str, f: impl FnOnce(&mut omni::InfraMachineSpec)) {
    let spec = infra(|s| {
        s.acceptance_status = 1;
        f(s);
    });
    let wipe_id = spec.wipe_id.clone();
    cache.apply(CacheEvent::InfraMachine(Event::Created(resource(id, spec))));
    cache.apply(CacheEvent::WipeStatus(Event::Created(resource(
        id,
        baremetal::WipeStatusSpec {
            last_wipe_id: wipe_id,
            initial_wipe_done: true,
            ..Default::default()
        },
    ))));
    cache.apply(CacheEvent::BmcConfiguration(Event::Created(resource(
        id,
        baremetal::BmcConfigurationSpec::default(),
    ))));
}

fn synced_cache() -> MachineStateCache {
    let cache = MachineStateCache::new();
    cache.apply(CacheEvent::InfraMachine(Event::Bootstrapped));
    cache.apply(CacheEvent::WipeStatus(Event::Bootstrapped));
    cache.apply(CacheEvent::BmcConfiguration(Event::Bootstrapped));
    cache
}

// ---------------------------------------------------------------------------------------
// The decision table.

fn view(f: impl FnOnce(&mut omni::InfraMachineSpec)) -> InfraView {
    InfraView::from_spec(&infra(f), Phase::Running)
}

fn wiped(wipe_id: &str, install_event_id: u64) -> Option<WipeRecord> {
    Some(WipeRecord {
        last_wipe_id: wipe_id.to_owned(),
        last_wipe_install_event_id: install_event_id,
        initial_wipe_done: true,
        ..WipeRecord::default()
    })
}

fn agent(args: &[&str]) -> Decision {
    Decision::Agent {
        extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
    }
}

#[test]
fn every_row_of_the_decision_table() {
    let accepted = |f: fn(&mut omni::InfraMachineSpec)| {
        view(|s| {
            s.acceptance_status = 1;
            f(s);
        })
    };
    let state = |infra: Option<InfraView>, wipe: Option<WipeRecord>, bmc: bool| MachineBootState {
        infra,
        wipe,
        bmc_configured: bmc,
    };
    // Accepted (`f` adjusts it), the wipe record of [`wiped`], BMC configured.
    let ready = |f: fn(&mut omni::InfraMachineSpec), wipe_id: &str, install_event_id: u64| {
        Some(state(
            Some(accepted(f)),
            wiped(wipe_id, install_event_id),
            true,
        ))
    };
    let install = |version: &str, ext: &[&str], args: &[&str]| Decision::Install {
        talos_version: version.to_owned(),
        extensions: ext.iter().map(|s| (*s).to_owned()).collect(),
        extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut tearing = accepted(|s| s.cluster_talos_version = "v1.11.0".into());
    tearing.tearing_down = true;
    let rows: Vec<(&str, Option<MachineBootState>, bool, Decision)> = vec![
        (
            "nothing loaded from Omni yet: wait, even for a known machine",
            ready(|_| {}, "", 0),
            false,
            Decision::NotReady,
        ),
        (
            "unknown machine: discovery in agent mode",
            None,
            true,
            agent(&[]),
        ),
        (
            "records of ours but no infra.Machine: agent mode",
            Some(state(None, wiped("", 0), true)),
            true,
            agent(&[]),
        ),
        (
            "pending: agent mode, with the user's kernel arguments",
            Some(state(
                Some(view(|s| s.extra_kernel_args = " a=1  b ".into())),
                None,
                false,
            )),
            true,
            agent(&["a=1", "b"]),
        ),
        (
            "cordoned: 404",
            ready(
                |s| {
                    s.cordoned = true;
                    s.cluster_talos_version = "v1.11.0".into();
                },
                "",
                0,
            ),
            true,
            Decision::Refuse(super::decider::CORDONED),
        ),
        (
            "cordoned while pending: 404 too",
            Some(state(Some(view(|s| s.cordoned = true)), None, false)),
            true,
            Decision::Refuse(super::decider::CORDONED),
        ),
        (
            "rejected: 404",
            Some(state(Some(view(|s| s.acceptance_status = 2)), None, false)),
            true,
            Decision::Refuse(super::decider::REJECTED),
        ),
        (
            "accepted, not allocated: agent mode",
            ready(|_| {}, "", 0),
            true,
            agent(&[]),
        ),
        (
            "allocated but never wiped: agent mode (the wipe first)",
            Some(state(
                Some(accepted(|s| s.cluster_talos_version = "v1.11.0".into())),
                None,
                true,
            )),
            true,
            agent(&[]),
        ),
        (
            "allocated without a BMC configuration: agent mode",
            Some(state(
                Some(accepted(|s| s.cluster_talos_version = "v1.11.0".into())),
                wiped("", 0),
                false,
            )),
            true,
            agent(&[]),
        ),
        (
            "allocated, wiped, not installed: install the cluster's Talos",
            Some(state(
                Some(view(|s| {
                    s.acceptance_status = 1;
                    s.cluster_talos_version = "v1.11.0".into();
                    s.extensions = vec!["siderolabs/iscsi-tools".into()];
                    s.extra_kernel_args = "net.ifnames=0".into();
                })),
                wiped("", 0),
                true,
            )),
            true,
            install("v1.11.0", &["siderolabs/iscsi-tools"], &["net.ifnames=0"]),
        ),
        (
            "installed (install event above the wipe's): boot from disk",
            ready(
                |s| {
                    s.cluster_talos_version = "v1.11.0".into();
                    s.install_event_id = 3;
                },
                "",
                2,
            ),
            true,
            Decision::Disk,
        ),
        (
            "deallocated with a new wipe ID: agent mode to wipe",
            ready(
                |s| {
                    s.wipe_id = "w2".into();
                    s.install_event_id = 3;
                },
                "w1",
                2,
            ),
            true,
            agent(&[]),
        ),
        (
            "new wipe ID while still allocated: agent mode, not the disk",
            ready(
                |s| {
                    s.cluster_talos_version = "v1.11.0".into();
                    s.wipe_id = "w2".into();
                    s.install_event_id = 3;
                },
                "w1",
                2,
            ),
            true,
            agent(&[]),
        ),
        (
            "infra.Machine tearing down: agent mode",
            Some(state(Some(tearing), wiped("", 0), true)),
            true,
            agent(&[]),
        ),
    ];
    for (what, state, synced, want) in rows {
        assert_eq!(decide(state.as_ref(), synced), want, "{what}");
    }
}

// ---------------------------------------------------------------------------------------
// The cache.

#[test]
fn the_cache_follows_watch_events() {
    let cache = MachineStateCache::new();
    assert!(!cache.is_synced());
    let upper = U1.to_ascii_uppercase();
    cache.apply(CacheEvent::InfraMachine(Event::Created(resource(
        &upper,
        infra(|s| s.acceptance_status = 1),
    ))));
    cache.apply(CacheEvent::InfraMachine(Event::Bootstrapped));
    cache.apply(CacheEvent::WipeStatus(Event::Bootstrapped));
    assert!(!cache.is_synced(), "the BMC configurations are not loaded");
    cache.apply(CacheEvent::BmcConfiguration(Event::Bootstrapped));
    assert!(cache.is_synced());
    let got = cache.get(U1).expect("UUIDs are matched case-insensitively");
    assert_eq!(
        got.infra.unwrap().machine.acceptance,
        crate::provider::lifecycle::Acceptance::Accepted
    );

    cache.apply(CacheEvent::InfraMachine(Event::Updated {
        old: None,
        new: resource(U1, infra(|s| s.cordoned = true)),
    }));
    assert!(cache.get(U1).unwrap().infra.unwrap().machine.cordoned);
    cache.apply(CacheEvent::BmcConfiguration(Event::Created(resource(
        U1,
        baremetal::BmcConfigurationSpec::default(),
    ))));
    assert!(cache.get(U1).unwrap().bmc_configured);

    let mut tearing = resource(U1, infra(|_| {}));
    tearing.metadata.phase = Phase::TearingDown;
    cache.apply(CacheEvent::InfraMachine(Event::Updated {
        old: None,
        new: tearing,
    }));
    assert!(cache.get(U1).unwrap().infra.unwrap().tearing_down);

    cache.apply(CacheEvent::InfraMachine(Event::Destroyed(resource(
        U1,
        infra(|_| {}),
    ))));
    let left = cache.get(U1).expect("the BMC record remains");
    assert!(left.infra.is_none() && left.bmc_configured);
    cache.apply(CacheEvent::BmcConfiguration(Event::Destroyed(resource(
        U1,
        baremetal::BmcConfigurationSpec::default(),
    ))));
    assert!(cache.get(U1).is_none(), "nothing left: the entry is gone");
    assert_eq!(cache.len(), 0);

    // A reset forgets that kind and waits for its contents again.
    ready_machine(&cache, U1, |_| {});
    cache.apply(CacheEvent::WipeStatus(Event::Reset));
    assert!(!cache.is_synced());
    let after = cache.get(U1).unwrap();
    assert!(after.wipe.is_none() && after.infra.is_some() && after.bmc_configured);
    cache.apply(CacheEvent::WipeStatus(Event::Bootstrapped));
    assert!(cache.is_synced());
}

// ---------------------------------------------------------------------------------------
// The Image Factory stand-in.

#[derive(Clone, Default)]
struct FactoryState {
    bodies: Arc<Mutex<Vec<String>>>,
    down: Arc<AtomicBool>,
}

struct StandIn {
    served: Served,
    state: FactoryState,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn create(State(state): State<FactoryState>, body: Bytes) -> Response {
    if state.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "factory is down").into_response();
    }
    state
        .bodies
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&body).into_owned());
    let id = hex(&Sha256::digest(&body));
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "id": id })),
    )
        .into_response()
}

impl StandIn {
    async fn start() -> Self {
        let state = FactoryState::default();
        let router = Router::new()
            .route("/schematics", axum::routing::post(create))
            .with_state(state.clone());
        Self {
            served: Served::start(router).await,
            state,
        }
    }

    fn settings(&self) -> ImageFactorySettings {
        ImageFactorySettings {
            base_url: format!("http://{}", self.served.addr),
            pxe_base_url: "http://pxe.example.test".to_owned(),
            agent_mode_talos_version: AGENT_VERSION.to_owned(),
            secure_boot: false,
        }
    }

    fn decider(&self, cache: Arc<MachineStateCache>) -> OmniBootDecider {
        let factory = ImageFactory::new(self.settings(), Duration::from_secs(5)).unwrap();
        OmniBootDecider::with_factory(cache, ADVERTISE, PORT, factory)
    }

    fn last_body(&self) -> String {
        self.state.bodies.lock().unwrap().last().cloned().unwrap()
    }
}

fn query(uuid: Option<&str>, arch: Arch) -> MachineQuery {
    MachineQuery {
        uuid: uuid.map(|u| u.parse::<Uuid>().unwrap()),
        mac: None,
        arch,
        serial: None,
        hostname: None,
        domain: None,
    }
}

fn script(answer: &Answer) -> String {
    match &answer.rendered {
        Rendered::Script(b) => {
            check_debian_2019_commands_and_labels(b);
            String::from_utf8(b.to_vec()).unwrap()
        }
        Rendered::NotFound(m) => panic!("404 {m:?}, expected a script"),
    }
}

/// The schematic ID in a `chain --replace <pxe>/pxe/<id>/<version>/metal-<arch>` script.
fn chained(script: &str) -> (String, String, String) {
    let url = script
        .strip_prefix("#!ipxe\nchain --replace http://pxe.example.test/pxe/")
        .and_then(|r| r.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("not a chain to the factory: {script:?}"));
    let parts: Vec<&str> = url.split('/').collect();
    assert_eq!(parts.len(), 3, "{url}");
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
    )
}

#[tokio::test]
async fn agent_mode_boots_the_factorys_agent_image_with_the_providers_arguments() {
    let f = StandIn::start().await;
    let cache = Arc::new(synced_cache());
    let d = f.decider(cache.clone());
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "script");
    let (id, version, asset) = chained(&script(&a));
    let body = f.last_body();
    assert_eq!(id, hex(&Sha256::digest(body.as_bytes())));
    assert_eq!(version, AGENT_VERSION);
    assert_eq!(asset, "metal-amd64");
    for arg in [
        "- talos.config=http://10.0.0.1:50042/config?u=${uuid}",
        "- console=tty0",
        "- console=ttyS0",
        "- metal.provider.address=10.0.0.1:50042",
        "- siderolabs/metal-agent",
        "- siderolabs/intel-ucode",
    ] {
        assert!(
            body.contains(arg),
            "{arg:?} missing from the schematic:\n{body}"
        );
    }

    // arm64: its console and asset; the user's kernel arguments come last.
    cache.apply(CacheEvent::InfraMachine(Event::Created(resource(
        U1,
        infra(|s| s.extra_kernel_args = "foo=bar".into()),
    ))));
    let a = d
        .answer_for(&query(Some(U1), Arch::Arm64), BootFromDiskMethod::IpxeExit)
        .await;
    let (_, _, asset) = chained(&script(&a));
    assert_eq!(asset, "metal-arm64");
    let body = f.last_body();
    assert!(body.contains("- console=ttyAMA0\n"), "{body}");
    assert!(
        body.contains(
            "    extraKernelArgs:\n        \
             - talos.config=http://10.0.0.1:50042/config?u=${uuid}\n        \
             - metal.provider.address=10.0.0.1:50042\n        \
             - console=tty0\n        \
             - console=ttyAMA0\n        \
             - foo=bar\n"
        ),
        "the Go provider's order:\n{body}"
    );
}

#[tokio::test]
async fn an_allocated_machine_installs_the_clusters_talos_then_boots_its_disk() {
    let f = StandIn::start().await;
    let cache = Arc::new(synced_cache());
    ready_machine(&cache, U1, |s| {
        s.cluster_talos_version = "v1.11.2".into();
        s.extensions = vec!["siderolabs/iscsi-tools".into()];
    });
    let d = f.decider(cache.clone());
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    let (id, version, _) = chained(&script(&a));
    assert_eq!(version, "v1.11.2");
    let body = f.last_body();
    assert_eq!(id, hex(&Sha256::digest(body.as_bytes())));
    assert!(body.contains("- siderolabs/iscsi-tools\n"), "{body}");
    assert!(!body.contains("metal-agent"), "{body}");
    assert!(!body.contains("metal.provider.address"), "{body}");
    assert!(
        body.contains(
            "    extraKernelArgs:\n        \
             - talos.config=http://10.0.0.1:50042/config?u=${uuid}\n        \
             - console=tty0\n        \
             - console=ttyS0\n    systemExtensions:"
        ),
        "{body}"
    );

    // Installed: an install event above the one recorded at the wipe.
    ready_machine(&cache, U1, |s| {
        s.cluster_talos_version = "v1.11.2".into();
        s.install_event_id = 1;
    });
    let posts = f.state.bodies.lock().unwrap().len();
    let exit = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(exit.kind, "disk");
    assert_eq!(script(&exit), "#!ipxe\nexit\n");
    let sanboot = d
        .answer_for(
            &query(Some(U1), Arch::Amd64),
            BootFromDiskMethod::IpxeSanboot,
        )
        .await;
    assert_eq!(
        script(&sanboot),
        "#!ipxe\nsanboot --no-describe --drive 0x80\n"
    );
    let http404 = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::Http404)
        .await;
    assert!(matches!(http404.rendered, Rendered::NotFound(_)));
    assert_eq!(
        f.state.bodies.lock().unwrap().len(),
        posts,
        "boot from disk asks the factory nothing"
    );
}

#[tokio::test]
async fn cordoned_rejected_and_uuid_less_machines_get_404() {
    let f = StandIn::start().await;
    let cache = Arc::new(synced_cache());
    let d = f.decider(cache.clone());
    cache.apply(CacheEvent::InfraMachine(Event::Created(resource(
        U1,
        infra(|s| s.cordoned = true),
    ))));
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.rendered, Rendered::NotFound("machine is cordoned\n"));
    cache.apply(CacheEvent::InfraMachine(Event::Created(resource(
        U1,
        infra(|s| s.acceptance_status = 2),
    ))));
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.rendered, Rendered::NotFound("machine is rejected\n"));
    let a = d
        .answer_for(&query(None, Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert!(matches!(a.rendered, Rendered::NotFound(m) if m.contains("UUID")));
    assert!(f.state.bodies.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_factory_outage_or_unloaded_state_gives_the_retrying_script() {
    let f = StandIn::start().await;
    let cache = Arc::new(MachineStateCache::new());
    let d = f.decider(cache.clone());
    let retry_url = "chain --replace http://10.0.0.1:50042/ipxe/boot.ipxe?uuid=${uuid}";

    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "retry");
    let text = script(&a);
    assert!(
        text.contains("waiting for the machine's state from Omni"),
        "{text}"
    );
    assert!(text.contains(retry_url), "{text}");

    for kind in [0, 1, 2] {
        cache.apply(match kind {
            0 => CacheEvent::InfraMachine(Event::Bootstrapped),
            1 => CacheEvent::WipeStatus(Event::Bootstrapped),
            _ => CacheEvent::BmcConfiguration(Event::Bootstrapped),
        });
    }
    f.state.down.store(true, Ordering::SeqCst);
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "retry");
    let text = script(&a);
    assert!(text.contains("Image Factory unreachable"), "{text}");
    assert!(text.contains(retry_url), "{text}");

    // The factory is back: the next request gets the image.
    f.state.down.store(false, Ordering::SeqCst);
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "script");
    chained(&script(&a));
}

/// A boot asset directory with both architectures.
fn asset_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["amd64", "arm64"] {
        std::fs::write(
            dir.path().join(format!("kernel-{arch}")),
            format!("K-{arch}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("initramfs-metal-{arch}.xz")),
            format!("I-{arch}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("cmdline-metal-{arch}")),
            "talos.platform=metal  ima_appraise=fix\n",
        )
        .unwrap();
    }
    dir
}

#[tokio::test]
async fn local_boot_assets_boot_the_agent_from_ironboot() {
    let dir = asset_dir();
    let cache = Arc::new(synced_cache());
    let d = OmniBootDecider::new(
        cache.clone(),
        ADVERTISE,
        PORT,
        &AgentBootSource::LocalAssets {
            path: dir.path().to_owned(),
        },
        Duration::from_secs(1),
    )
    .unwrap();
    let a = d
        .answer_for(&query(Some(U1), Arch::Arm64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "kernel");
    assert_eq!(
        script(&a),
        "#!ipxe\n\
         kernel http://10.0.0.1:50042/assets/kernel-arm64 talos.platform=metal  ima_appraise=fix \
         talos.config=http://10.0.0.1:50042/config?u=${uuid} metal.provider.address=10.0.0.1:50042 \
         console=tty0 console=ttyAMA0\n\
         initrd http://10.0.0.1:50042/assets/initramfs-metal-arm64.xz\n\
         boot\n"
    );

    // Extra kernel arguments that would add iPXE commands are refused: retry, not inject.
    cache.apply(CacheEvent::InfraMachine(Event::Created(resource(
        U1,
        infra(|s| s.extra_kernel_args = "a || reboot".into()),
    ))));
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "retry");
    assert!(!script(&a).contains("a || reboot"));

    // No factory is configured with local assets: an install waits with a message.
    ready_machine(&cache, U1, |s| s.cluster_talos_version = "v1.11.2".into());
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "retry");
    assert!(script(&a).contains("a Talos install needs the Image Factory"));
}

// ---------------------------------------------------------------------------------------
// /config and the HTTP path.

const JOIN_DOCS: &str = "apiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: \
                         https://omni.example.test:8090?jointoken=t1\n";

fn join_event(id: &str, config: &str) -> Event<omni::ProviderJoinConfigSpec> {
    Event::Created(resource(
        id,
        omni::ProviderJoinConfigSpec {
            config: Some(omni::JoinConfig {
                kernel_args: vec![],
                config: config.to_owned(),
            }),
            join_token: "t1".to_owned(),
        },
    ))
}

#[test]
fn the_join_config_follows_omni_and_hides_its_token_from_debug() {
    let j = JoinConfig::new("bare-metal");
    assert_eq!(j.current(), None);
    j.apply(join_event("other-provider", JOIN_DOCS));
    assert_eq!(j.current(), None, "another provider's config is ignored");
    j.apply(join_event("bare-metal", JOIN_DOCS));
    assert_eq!(j.current().unwrap(), JOIN_DOCS.as_bytes());
    assert!(!format!("{j:?}").contains("jointoken"), "{j:?}");
    let rotated = JOIN_DOCS.replace("t1", "t2");
    j.apply(Event::Updated {
        old: None,
        new: match join_event("bare-metal", rotated.trim_end()) {
            Event::Created(r) => r,
            _ => unreachable!(),
        },
    });
    assert_eq!(
        j.current().unwrap(),
        rotated.as_bytes(),
        "a newline is added"
    );
    j.apply(Event::Reset);
    assert!(j.current().is_some(), "a reset keeps the last one");
    j.apply(Event::Destroyed(resource(
        "bare-metal",
        omni::ProviderJoinConfigSpec::default(),
    )));
    assert_eq!(j.current(), None);
}

struct Http {
    router: Router,
    _store_dir: tempfile::TempDir,
    _writer: tokio::task::JoinHandle<()>,
}

/// The API router as `app` builds it in Omni mode: [`OmniBoot`]'s decider and routes.
fn http(omni: &OmniBoot) -> Http {
    let store_dir = tempfile::tempdir().unwrap();
    let handles = crate::boot::store::Store::open(store_dir.path())
        .unwrap()
        .start(64)
        .unwrap();
    let router = crate::boot::http::router(crate::boot::http::ApiState {
        init_script: init_script(ADVERTISE, PORT, BootFromDiskMethod::Http404),
        decider: omni.decider.clone(),
        disk_method: BootFromDiskMethod::Http404,
        files: Arc::new(FileSet::new()),
        metrics: crate::boot::metrics::Registry::new(),
        recorder: handles.recorder,
        machines: handles.machines,
    });
    Http {
        router: omni.mount(router, None),
        _store_dir: store_dir,
        _writer: handles.writer,
    }
}

impl Http {
    async fn get(&self, uri: &str) -> (StatusCode, Bytes) {
        let resp = self
            .router
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body)
    }
}

fn synced(omni: &OmniBoot) {
    omni.cache
        .apply(CacheEvent::InfraMachine(Event::Bootstrapped));
    omni.cache
        .apply(CacheEvent::WipeStatus(Event::Bootstrapped));
    omni.cache
        .apply(CacheEvent::BmcConfiguration(Event::Bootstrapped));
}

const BOOT: &str = "/ipxe/boot.ipxe?uuid=4c4c4544-0042-3510-8051-b7c04f4e3332\
                    &mac=52-54-00-aa-00-01&arch=x86_64";

#[tokio::test]
async fn the_router_serves_omni_decisions_and_the_join_config() {
    let f = StandIn::start().await;
    let omni = OmniBoot::new(
        "bare-metal",
        ADVERTISE,
        PORT,
        &AgentBootSource::ImageFactory(f.settings()),
    )
    .unwrap();
    assert!(omni.assets.is_none());
    let h = http(&omni);

    let (status, body) = h.get(BOOT).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&body).contains("waiting for the machine's state from Omni"),
        "{body:?}"
    );
    synced(&omni);
    let (status, body) = h.get(BOOT).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let (_, version, asset) = chained(&text);
    assert_eq!(
        (version.as_str(), asset.as_str()),
        (AGENT_VERSION, "metal-amd64")
    );

    ready_machine(&omni.cache, U1, |s| {
        s.cluster_talos_version = "v1.11.2".into();
        s.install_event_id = 1;
    });
    let (status, body) = h.get(BOOT).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "installed, http-404 method");
    assert_eq!(
        &body[..],
        b"boot from disk (--boot-from-disk-method=http-404)\n"
    );
    omni.cache.apply(CacheEvent::InfraMachine(Event::Updated {
        old: None,
        new: resource(U1, infra(|s| s.cordoned = true)),
    }));
    let (status, body) = h.get(BOOT).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(&body[..], b"machine is cordoned\n");

    let (status, body) = h.get(&format!("/config?u={U1}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        String::from_utf8_lossy(&body).contains("waiting for Omni's ProviderJoinConfig"),
        "{body:?}"
    );
    omni.join.apply(join_event("bare-metal", JOIN_DOCS));
    let (status, body) = h.get(&format!("/config?u={U1}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], JOIN_DOCS.as_bytes());
    let rotated = JOIN_DOCS.replace("t1", "t2");
    omni.join.apply(join_event("bare-metal", &rotated));
    let (_, body) = h.get("/config").await;
    assert_eq!(&body[..], rotated.as_bytes(), "no restart needed");
    let (status, _) = h.get("/assets/kernel-amd64").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no local assets configured");
}

#[tokio::test]
async fn the_router_serves_local_boot_assets() {
    let dir = asset_dir();
    let omni = OmniBoot::new(
        "bare-metal",
        ADVERTISE,
        PORT,
        &AgentBootSource::LocalAssets {
            path: dir.path().to_owned(),
        },
    )
    .unwrap();
    synced(&omni);
    let h = http(&omni);
    let (status, body) = h.get(BOOT).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.starts_with("#!ipxe\nkernel http://10.0.0.1:50042/assets/kernel-amd64 "),
        "{text}"
    );

    let (status, body) = h.get("/assets/kernel-arm64").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"K-arm64"[..]));
    let (status, body) = h.get("/assets/initramfs-metal-amd64.xz").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"I-amd64"[..]));
    let (status, _) = h.get("/assets/..%2Fetc%2Fpasswd").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    std::fs::remove_file(dir.path().join("kernel-amd64")).unwrap();
    let (status, _) = h.get("/assets/kernel-amd64").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------
// Agent-mode options: test mode and TLS (`with_agent_options`).

const TLS_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBtest\nAAAA==\n-----END CERTIFICATE-----\n";

fn tls_options(test_mode: bool, skip_verify: bool) -> AgentModeOptions {
    AgentModeOptions {
        test_mode,
        skip_verify,
        tls: Some(AgentTlsBoot {
            port: 50043,
            ca_pem: TLS_CA.to_owned(),
        }),
    }
}

/// The document a `talos.config.inline=` argument carries.
fn inline_doc(arg: &str) -> String {
    use base64::Engine as _;
    let value = arg
        .strip_prefix("talos.config.inline=")
        .unwrap_or_else(|| panic!("not an inline config: {arg}"));
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(value)
        .unwrap();
    String::from_utf8(zstd::decode_all(compressed.as_slice()).unwrap()).unwrap()
}

#[test]
fn tls_join_config_appends_the_infra_provider_ca_document() {
    let j = JoinConfig::new("bare-metal");
    j.set_trusted_ca(Some(TLS_CA.to_owned()));
    assert_eq!(j.current(), None, "nothing before Omni's documents");
    j.apply(join_event("bare-metal", JOIN_DOCS));
    let served = String::from_utf8(j.current().unwrap().to_vec()).unwrap();
    assert_eq!(
        served,
        format!(
            "{JOIN_DOCS}---\napiVersion: v1alpha1\nkind: TrustedRootsConfig\n\
             name: infra-provider-ca\ncertificates: |\n  \
             -----BEGIN CERTIFICATE-----\n  MIIBtest\n  AAAA==\n  \
             -----END CERTIFICATE-----\n"
        )
    );
    // Two YAML documents; the second carries the PEM text exactly.
    let docs: Vec<std::collections::BTreeMap<String, String>> =
        serde_saphyr::from_multiple(&served).unwrap();
    assert_eq!(docs.len(), 2, "{served}");
    assert_eq!(docs[0]["kind"], "SideroLinkConfig");
    assert_eq!(docs[1]["kind"], "TrustedRootsConfig");
    assert_eq!(docs[1]["name"], "infra-provider-ca");
    assert_eq!(docs[1]["certificates"], TLS_CA);
    // It follows Omni's changes, and goes when TLS is off.
    j.apply(join_event("bare-metal", &JOIN_DOCS.replace("t1", "t2")));
    let served = String::from_utf8(j.current().unwrap().to_vec()).unwrap();
    assert!(served.contains("jointoken=t2") && served.contains("infra-provider-ca"));
    j.set_trusted_ca(None);
    assert_eq!(
        j.current().unwrap(),
        JOIN_DOCS.replace("t1", "t2").as_bytes()
    );
    // A PEM whose first line is indented still parses back exactly.
    let doc = join_config::trusted_roots_document("  odd\nlines\n");
    let parsed: std::collections::BTreeMap<String, String> = serde_saphyr::from_str(&doc).unwrap();
    assert_eq!(parsed["certificates"], "  odd\nlines\n");
}

#[test]
fn tls_agent_kernel_args_follow_upstream() {
    let omni = OmniBoot::new(
        "bare-metal",
        ADVERTISE,
        PORT,
        &AgentBootSource::ImageFactory(ImageFactorySettings {
            base_url: "http://127.0.0.1:9".into(),
            pxe_base_url: "http://127.0.0.1:9".into(),
            agent_mode_talos_version: AGENT_VERSION.into(),
            secure_boot: false,
        }),
    )
    .unwrap();
    let extra = vec!["foo=bar".to_owned()];

    // Defaults: no TLS, no test mode.
    assert_eq!(
        omni.decider.kernel_args(Arch::Amd64, true, &extra).unwrap(),
        [
            "talos.config=http://10.0.0.1:50042/config?u=${uuid}",
            "metal.provider.address=10.0.0.1:50042",
            "console=tty0",
            "console=ttyS0",
            "foo=bar"
        ]
    );

    // Test mode without TLS; skip-verify is passed whenever the flag is set, as upstream.
    let omni = omni.with_agent_options(AgentModeOptions {
        test_mode: true,
        skip_verify: true,
        tls: None,
    });
    assert_eq!(
        omni.decider.kernel_args(Arch::Arm64, true, &[]).unwrap(),
        [
            "talos.config=http://10.0.0.1:50042/config?u=${uuid}",
            "metal.provider.address=10.0.0.1:50042",
            "metal.provider.test.mode=1",
            "metal.provider.tls.skip.verify=1",
            "console=tty0",
            "console=ttyAMA0",
        ]
    );
    assert!(omni.join.current().is_none());

    // TLS: the inline configuration needs the join configuration first.
    let omni = omni.with_agent_options(tls_options(false, false));
    assert_eq!(
        omni.decider.kernel_args(Arch::Amd64, true, &extra),
        Err(decider::WAITING_FOR_JOIN_CONFIG)
    );
    omni.join.apply(join_event("bare-metal", JOIN_DOCS));
    let agent = omni.decider.kernel_args(Arch::Amd64, true, &extra).unwrap();
    assert_eq!(agent.len(), 6, "{agent:?}");
    assert_eq!(
        agent[0],
        "talos.config=http://10.0.0.1:50042/config?u=${uuid}"
    );
    assert_eq!(
        inline_doc(&agent[1]).as_bytes(),
        omni.join.current().unwrap(),
        "the inline configuration is the served one, CA included"
    );
    assert!(inline_doc(&agent[1]).contains("name: infra-provider-ca"));
    assert_eq!(
        agent[2..],
        [
            "metal.provider.address=https://10.0.0.1:50043",
            "console=tty0",
            "console=ttyS0",
            "foo=bar"
        ]
    );
    // Talos installs carry the inline configuration too (upstream's default arguments),
    // but nothing of the agent's.
    let install = omni
        .decider
        .kernel_args(Arch::Amd64, false, &extra)
        .unwrap();
    assert_eq!(install[..2], agent[..2]);
    assert_eq!(install[2..], ["console=tty0", "console=ttyS0", "foo=bar"]);

    // A rotated join token changes the inline configuration.
    omni.join
        .apply(join_event("bare-metal", &JOIN_DOCS.replace("t1", "t2")));
    let rotated = omni.decider.kernel_args(Arch::Amd64, true, &[]).unwrap();
    assert!(inline_doc(&rotated[1]).contains("jointoken=t2"));
    assert!(!format!("{:?}", omni.decider.agent_options()).contains("BEGIN"));
    let dbg = format!("{:?}", omni.decider);
    assert!(
        !dbg.contains("jointoken")
            && !dbg.contains("BEGIN")
            && !dbg.contains(rotated[1].trim_start_matches("talos.config.inline=")),
        "no join token or inline configuration in Debug: {dbg}"
    );
}

#[tokio::test]
async fn tls_agent_boots_reach_the_factory_and_wait_for_the_join_config() {
    let f = StandIn::start().await;
    let cache = Arc::new(synced_cache());
    let d = f.decider(cache.clone());
    let join = JoinConfig::new("bare-metal");
    join.set_trusted_ca(Some(TLS_CA.to_owned()));
    d.set_agent_options(tls_options(true, true), join.clone());

    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "retry", "no join configuration yet");
    assert!(script(&a).contains("join configuration"), "{}", script(&a));

    join.apply(join_event("bare-metal", JOIN_DOCS));
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "script");
    let body = f.last_body();
    let inline = format!(
        "- talos.config.inline={}\n",
        decider::inline_config(&join.current().unwrap()).unwrap()
    );
    for arg in [
        "- talos.config=http://10.0.0.1:50042/config?u=${uuid}\n",
        inline.as_str(),
        "- metal.provider.address=https://10.0.0.1:50043\n",
        "- metal.provider.test.mode=1\n",
        "- metal.provider.tls.skip.verify=1\n",
    ] {
        assert!(body.contains(arg), "{arg:?} missing from:\n{body}");
    }
}

// ---------------------------------------------------------------------------------------
// The Image Factory through ironboot (`--image-factory-proxy`).

/// The proxied chain's URL and the rest of the script.
fn proxied_chain(script: &str) -> (String, String, String) {
    let first = script
        .strip_prefix("#!ipxe\nchain --replace http://10.0.0.1:50042/factory/pxe/")
        .and_then(|r| r.split_once(" || goto factory_failed\n:factory_failed\n"))
        .unwrap_or_else(|| panic!("not a proxied chain: {script:?}"));
    let parts: Vec<&str> = first.0.split('/').collect();
    assert_eq!(parts.len(), 3, "{script}");
    // If ironboot cannot get the image (a 502), the machine waits and asks again.
    let fallback = first.1;
    assert!(fallback.contains(decider::PROXY_FAILED), "{script}");
    assert!(
        fallback.contains("chain --replace http://10.0.0.1:50042/ipxe/boot.ipxe?uuid=${uuid}"),
        "{script}"
    );
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
    )
}

#[tokio::test]
async fn with_the_factory_proxy_agent_and_install_boots_chain_to_ironboot() {
    let f = StandIn::start().await;
    let cache = Arc::new(synced_cache());
    let d = f.decider(cache.clone());
    assert!(!d.factory_proxied(), "off by default");
    d.set_factory_proxy(true);

    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "script");
    let (id, version, asset) = proxied_chain(&script(&a));
    assert_eq!(id, hex(&Sha256::digest(f.last_body().as_bytes())));
    assert_eq!(
        (version.as_str(), asset.as_str()),
        (AGENT_VERSION, "metal-amd64")
    );
    assert!(
        f.last_body()
            .contains("- metal.provider.address=10.0.0.1:50042"),
        "the same schematic as without the proxy"
    );

    ready_machine(&cache, U1, |s| {
        s.cluster_talos_version = "v1.11.2".into();
    });
    let a = d
        .answer_for(&query(Some(U1), Arch::Arm64), BootFromDiskMethod::IpxeExit)
        .await;
    let (id, version, asset) = proxied_chain(&script(&a));
    assert_eq!(id, hex(&Sha256::digest(f.last_body().as_bytes())));
    assert_eq!(
        (version.as_str(), asset.as_str()),
        ("v1.11.2", "metal-arm64")
    );

    // A factory outage at schematic creation is still the plain retrying script.
    f.state.down.store(true, Ordering::SeqCst);
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    assert_eq!(a.kind, "retry");
    assert!(script(&a).contains("Image Factory unreachable"));

    // Off again: straight to the factory.
    f.state.down.store(false, Ordering::SeqCst);
    d.set_factory_proxy(false);
    let a = d
        .answer_for(&query(Some(U1), Arch::Amd64), BootFromDiskMethod::IpxeExit)
        .await;
    let (_, version, _) = chained(&script(&a));
    assert_eq!(version, "v1.11.2");
}

#[tokio::test]
async fn the_router_mounts_the_factory_proxy_with_the_boot_plan() {
    let f = StandIn::start().await;
    // The proxy's upstream is the stand-in, which has no PXE front end: its 404 passes
    // through, proving the request reached the proxy and the factory.
    let mut settings = f.settings();
    settings.pxe_base_url = format!("http://{}", f.served.addr);
    let dir = tempfile::tempdir().unwrap();
    let proxy = crate::provider::factory_proxy::FactoryProxy::new(
        &settings,
        ADVERTISE,
        PORT,
        crate::provider::factory_proxy::Options::new(dir.path().join("factory-cache")),
    )
    .unwrap();
    let omni = OmniBoot::new(
        "bare-metal",
        ADVERTISE,
        PORT,
        &AgentBootSource::ImageFactory(settings),
    )
    .unwrap()
    .with_factory_proxy(proxy.clone());
    synced(&omni);
    let h = http(&omni);
    let (status, body) = h.get(BOOT).await;
    assert_eq!(status, StatusCode::OK);
    let (id, version, asset) = proxied_chain(std::str::from_utf8(&body).unwrap());
    let (status, body) = h.get(&format!("/factory/pxe/{id}/{version}/{asset}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        body.starts_with(&format!(
            "ironboot: Image Factory http://{}/pxe/{id}/{version}/{asset}: not found",
            f.served.addr
        )),
        "{body}"
    );
    assert!(dir.path().join("factory-cache").is_dir());
}
