//! What `benches/http_boot_script.rs` drives: the real `/ipxe/boot.ipxe` router, built
//! as `app` builds it (the machine store behind it), in standalone mode from an inventory
//! or in Omni mode with local boot assets (no Omni and no Image Factory reached); and the
//! handler's steps without the router: query parse, inventory decision, script render.
//!
//! Not a stable interface: hidden from the docs, only for the benchmarks.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ironboot_net::files::FileSet;

use crate::boot::boot_script::{BootDecider, BootFromDiskMethod, Rendered, init_script, render};
use crate::boot::http::{ApiState, parse_boot_query, router};
use crate::boot::inventory::{Format, Inventory};
use crate::boot::metrics::Registry;
use crate::boot::store::{Store, StoreHandles, StoreStats};
use crate::provider::boot_plan::AgentBootSource;
use crate::provider::boot_plan::{CacheEvent, OmniBoot};
use crate::provider::omni::watch::Event;

/// The address machines reach ironboot at, in every script these routers render.
pub const ADVERTISE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
/// The API port in every script these routers render.
pub const API_PORT: u16 = 50042;

/// Why a benchmark's router could not be built (a bad inventory, an unusable directory).
#[derive(Debug, thiserror::Error)]
#[error("benchmark set-up: {0}")]
pub struct SetupError(String);

/// Why [`ScriptRenderer::render`] gave no script; each carries the answer's body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoScript {
    /// The query is not one iPXE sends (answered 400).
    #[error("bad request: {0}")]
    BadQuery(String),
    /// No script for this machine (answered 404).
    #[error("not found: {0}")]
    NotFound(String),
}

/// The API router over a machine store in a directory of the caller's.
#[derive(Debug)]
pub struct BootRouter {
    router: axum::Router,
    /// The store's counters.
    stats: Arc<StoreStats>,
    /// The store's writer: it runs until the router (its last recorder) is dropped.
    _writer: tokio::task::JoinHandle<()>,
}

impl BootRouter {
    /// Standalone mode: boot decisions from `inventory` (TOML, as `--inventory`), boot
    /// from disk by `ipxe-exit`, the machine store in `state_dir`. Call inside a tokio
    /// runtime (the store's writer is a blocking task).
    pub fn standalone(inventory: &str, state_dir: &Path) -> Result<Self, SetupError> {
        let inventory = Inventory::parse(inventory, Format::Toml, Path::new("bench.toml"))
            .map_err(|e| SetupError(e.to_string()))?;
        Self::build(state_dir, Arc::new(inventory), None)
    }

    /// Omni mode booting the agent from local boot assets in `assets_dir`
    /// (`--use-local-boot-assets`), with Omni's state loaded and empty: every machine is
    /// new to Omni, so it gets the agent-mode boot. The machine store in `state_dir`. Call
    /// inside a tokio runtime.
    pub fn omni_local_assets(assets_dir: &Path, state_dir: &Path) -> Result<Self, SetupError> {
        let source = AgentBootSource::LocalAssets {
            path: assets_dir.to_owned(),
        };
        let omni = OmniBoot::new("bench", ADVERTISE, API_PORT, &source)
            .map_err(|e| SetupError(format!("Omni boot decider: {e}")))?;
        // What the watches deliver first: "the initial contents are all here", none.
        omni.cache
            .apply(CacheEvent::InfraMachine(Event::Bootstrapped));
        omni.cache
            .apply(CacheEvent::WipeStatus(Event::Bootstrapped));
        omni.cache
            .apply(CacheEvent::BmcConfiguration(Event::Bootstrapped));
        Self::build(state_dir, omni.decider.clone(), Some(&omni))
    }

    fn build(
        state_dir: &Path,
        decider: Arc<dyn crate::boot::boot_script::BootAnswerer>,
        omni: Option<&OmniBoot>,
    ) -> Result<Self, SetupError> {
        let StoreHandles {
            recorder,
            machines,
            stats,
            writer,
        } = Store::open(state_dir)
            .and_then(|s| s.start(crate::boot::store::DEFAULT_QUEUE))
            .map_err(|e| SetupError(format!("machine store: {e}")))?;
        let mut metrics = Registry::new();
        metrics.register(stats.clone());
        let router = router(ApiState {
            init_script: init_script(ADVERTISE, API_PORT, BootFromDiskMethod::IpxeExit),
            decider,
            disk_method: BootFromDiskMethod::IpxeExit,
            files: Arc::new(FileSet::new()),
            metrics,
            recorder,
            machines,
        });
        let router = match omni {
            Some(omni) => omni.mount(router, None),
            None => router,
        };
        Ok(Self {
            router,
            stats,
            _writer: writer,
        })
    }

    /// The router (a cheap clone), for `tower::ServiceExt::oneshot`.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// Sightings the machine store has written so far, and those it dropped (its queue
    /// full, as when requests come faster than its writer commits).
    pub fn sightings(&self) -> (u64, u64) {
        (self.stats.written(), self.stats.dropped())
    }
}

/// The `boot.ipxe` handler's own steps in standalone mode, without the router, the
/// machine store or the logs: query parse and check, inventory decision, script render.
#[derive(Debug)]
pub struct ScriptRenderer {
    inventory: Inventory,
}

impl ScriptRenderer {
    /// Decisions from `inventory` (TOML), boot from disk by `ipxe-exit`.
    pub fn new(inventory: &str) -> Result<Self, SetupError> {
        let inventory = Inventory::parse(inventory, Format::Toml, Path::new("bench.toml"))
            .map_err(|e| SetupError(e.to_string()))?;
        Ok(Self { inventory })
    }

    /// The script `GET <uri>` is answered with (status 200), or why there is none.
    pub fn render(&self, uri: &http::Uri) -> Result<Bytes, NoScript> {
        let who = parse_boot_query(uri).map_err(NoScript::BadQuery)?;
        let target = self.inventory.decide(&who);
        match render(&target, BootFromDiskMethod::IpxeExit) {
            Rendered::Script(script) => Ok(script),
            Rendered::NotFound(msg) => Err(NoScript::NotFound(msg.to_owned())),
        }
    }
}

/// Serve the local boot assets of `assets_dir` (`/assets/<name>`, as Omni mode with
/// `--use-local-boot-assets`) on `listener` through the API port's accept loop, with
/// `max_per_source` connections allowed from one address, until the process ends.
/// `zero_copy`: boot images go out on the sendfile image path (`src/boot/http/sendfile.rs`);
/// otherwise through hyper and the route's file stream (the baseline it is compared with).
pub async fn serve_assets(
    listener: tokio::net::TcpListener,
    assets_dir: &Path,
    zero_copy: bool,
    max_per_source: usize,
) -> std::io::Result<()> {
    use crate::boot::http::server::{ConnCounters, Gate, Limits};
    let assets = crate::provider::boot_plan::LocalAssets::new(assets_dir.to_owned());
    let router = assets.mount(axum::Router::new());
    let images = zero_copy.then(|| {
        crate::boot::http::sendfile::ImagePath::new(
            Arc::new(crate::provider::boot_plan::BootImages {
                assets: Some(assets.clone()),
                factory: None,
            }),
            Arc::default(),
        )
    });
    let limits = Limits {
        max_per_source,
        ..Limits::default()
    };
    let gate = Gate::new(limits, Arc::new(ConnCounters::default()));
    crate::boot::http::serve_with_images(listener, router, images, gate, std::future::pending())
        .await
}
