//! Per-request cost of `GET /ipxe/boot.ipxe?uuid=..&mac=..&arch=..`, the request every
//! booting machine makes after iPXE's init script: through the real API router
//! (`tower::ServiceExt::oneshot`, no socket; the machine store's writer behind it, as in
//! the service), and the handler's own steps without the router.
//!
//! - `router/standalone_known`: a machine of the inventory, found by UUID, with its own
//!   script.
//! - `router/standalone_default`: an unknown machine, answered with `[default]`.
//! - `router/omni_agent_local_assets`: Omni mode, a machine new to Omni, booting the agent
//!   from local boot assets (`--use-local-boot-assets`; the Image Factory variant needs the
//!   factory on the network and is not measured here).
//! - `render/known`, `render/default`: query parse and check, inventory decision, script
//!   render, without the router, the store or the log line.
//!
//! Every workload is checked first to answer 200 with the expected script, so an early
//! error cannot be timed. After criterion it prints how many sightings each machine store
//! wrote and dropped (its queue full), since its writer shares the machine with the
//! bench. Run: `cargo bench --bench http_boot_script`; see BENCHMARKS.md.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, Uri};
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use ironboot::bench_api::{BootRouter, ScriptRenderer};
use tower::ServiceExt;

const KNOWN_SCRIPT: &str = "#!ipxe\n\
                            kernel http://10.0.0.1:8080/worker/vmlinuz console=ttyS0 ip=dhcp\n\
                            initrd http://10.0.0.1:8080/worker/initrd.img\n\
                            boot\n";
const DEFAULT_SCRIPT: &str = "#!ipxe\n\
                              echo unknown machine ${uuid}, booting the installer\n\
                              chain http://10.0.0.1:8080/installer.ipxe\n";

fn inventory() -> String {
    // A rack's worth of machines, so the lookup is not a one-entry table.
    let mut inv = format!("[default]\nscript = \"\"\"{DEFAULT_SCRIPT}\"\"\"\n");
    for i in 0..256u32 {
        inv.push_str(&format!(
            "[[machine]]\nname = \"worker-{i}\"\nuuid = \"00000000-0000-4000-8000-{i:012x}\"\n\
             script = \"\"\"{KNOWN_SCRIPT}\"\"\"\n"
        ));
    }
    inv
}

/// Machine 200 of the inventory, as iPXE's init script asks for it.
const KNOWN_URI: &str = "/ipxe/boot.ipxe?uuid=00000000-0000-4000-8000-0000000000c8\
                         &mac=52-54-00-aa-00-c8&arch=x86_64";
/// A machine the inventory does not know.
const UNKNOWN_URI: &str = "/ipxe/boot.ipxe?uuid=4c4c4544-0042-3510-8051-b7c04f4e3332\
                           &mac=52-54-00-bb-01-02&arch=x86_64";

/// Local boot assets for amd64, as `--boot-assets-path` holds them.
fn write_assets(dir: &Path) {
    std::fs::write(dir.join("kernel-amd64"), b"K").unwrap();
    std::fs::write(dir.join("initramfs-metal-amd64.xz"), b"I").unwrap();
    std::fs::write(
        dir.join("cmdline-metal-amd64"),
        "talos.platform=metal console=ttyS0\n",
    )
    .unwrap();
}

/// One request through the router, body collected: what the handler costs a connection.
async fn get(router: &Router, uri: &'static str) -> (StatusCode, Bytes) {
    let resp = router
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

fn check_agent_script(body: &[u8]) {
    let text = std::str::from_utf8(body).unwrap();
    assert!(
        text.starts_with(
            "#!ipxe\nkernel http://10.0.0.1:50042/assets/kernel-amd64 talos.platform=metal"
        ),
        "{text}"
    );
    assert!(
        text.contains("metal.provider.address=10.0.0.1:50042"),
        "{text}"
    );
    assert!(
        text.ends_with("initrd http://10.0.0.1:50042/assets/initramfs-metal-amd64.xz\nboot\n"),
        "{text}"
    );
}

/// One `router` workload: `GET uri` must answer 200 with a body `check` accepts.
struct RouterCase<'a> {
    name: &'static str,
    router: &'a Router,
    uri: &'static str,
    check: fn(&[u8]),
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inventory = inventory();
    let state = tempfile::tempdir().unwrap();
    let omni_state = tempfile::tempdir().unwrap();
    let assets = tempfile::tempdir().unwrap();
    write_assets(assets.path());

    let (standalone, omni) = rt.block_on(async {
        (
            BootRouter::standalone(&inventory, state.path()).unwrap(),
            BootRouter::omni_local_assets(assets.path(), omni_state.path()).unwrap(),
        )
    });
    let (standalone_api, omni_api) = (standalone, omni);
    let (standalone, omni) = (standalone_api.router(), omni_api.router());
    let renderer = ScriptRenderer::new(&inventory).unwrap();

    // As the other benches: 1 s warm-up, 4 s measurement, 60 samples (criterion's flags
    // override them).
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(60)
        .configure_from_args();

    let mut group = criterion.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    let router_cases = [
        RouterCase {
            name: "standalone_known",
            router: &standalone,
            uri: KNOWN_URI,
            check: |b| assert_eq!(b, KNOWN_SCRIPT.as_bytes()),
        },
        RouterCase {
            name: "standalone_default",
            router: &standalone,
            uri: UNKNOWN_URI,
            check: |b| assert_eq!(b, DEFAULT_SCRIPT.as_bytes()),
        },
        RouterCase {
            name: "omni_agent_local_assets",
            router: &omni,
            uri: UNKNOWN_URI,
            check: check_agent_script,
        },
    ];
    for RouterCase {
        name,
        router,
        uri,
        check,
    } in router_cases
    {
        let (status, body) = rt.block_on(get(router, uri));
        assert_eq!(status, StatusCode::OK, "{name}: {body:?}");
        check(&body);
        group.bench_function(name, |b| {
            b.iter(|| black_box(rt.block_on(get(router, black_box(uri)))));
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group("render");
    group.throughput(Throughput::Elements(1));
    for (name, uri, script) in [
        ("known", KNOWN_URI, KNOWN_SCRIPT),
        ("default", UNKNOWN_URI, DEFAULT_SCRIPT),
    ] {
        let uri: Uri = uri.parse().unwrap();
        assert_eq!(
            renderer.render(&uri).as_deref(),
            Ok(script.as_bytes()),
            "{name}"
        );
        group.bench_function(name, |b| {
            b.iter(|| black_box(renderer.render(black_box(&uri))));
        });
    }
    group.finish();
    criterion.final_summary();
    // The store behind the router saw every request; say how many it kept up with.
    for (name, api) in [("standalone", &standalone_api), ("omni", &omni_api)] {
        let (written, dropped) = api.sightings();
        println!("{name}: machine store wrote {written} sightings, dropped {dropped} (queue full)");
    }
}
