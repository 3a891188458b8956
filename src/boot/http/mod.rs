//! The HTTP API on `--api-port`: iPXE scripts, the boot files over HTTP, metrics, health
//! and the machine list.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ipxe/init.ipxe` | the init script (DHCP on each NIC, chain to `boot.ipxe`) |
//! | `GET /ipxe/boot.ipxe?uuid=&mac=&serial=&hostname=&domain=&arch=` | the machine's boot script |
//! | `GET`/`HEAD /tftp/<name>` | a boot file, with single-range support |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | `ok` |
//! | `GET /api/v1/machines?limit=&after=` | JSON array of recorded machines, a page at a time (`Link: rel="next"`), streamed |
//! | `GET /config?u=<uuid>` | Omni mode: the machines' join configuration ([`crate::provider::boot_plan`]) |
//! | `GET /assets/<name>` | Omni mode with `--use-local-boot-assets`: the agent's kernel and initramfs |
//! | `GET /assets/<path>` | standalone mode with `--use-local-boot-assets`: any file under `--boot-assets-path` ([`crate::boot::assets`]) |
//! | `GET /factory/pxe/...`, `GET`/`HEAD /factory/image/...` | Omni mode with `--image-factory-proxy`: the factory's scripts and cached images ([`crate::provider::factory_proxy`]) |
//!
//! Handlers never block: the boot decision is in memory (in Omni mode it may await the
//! Image Factory, bounded by its request timeout and shared by every request for the same
//! schematic), and the machine store is fed through a bounded queue. Bad input gets a 4xx
//! with a plain-text reason.

mod api;
mod files;
mod ipxe;
pub(crate) mod sendfile;
#[cfg_attr(
    not(feature = "test-support"),
    allow(
        unreachable_pub,
        reason = "what `ironboot::testing` re-exports is `pub`"
    )
)]
pub(crate) mod server;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use ironboot_net::files::FileSet;

use crate::boot::boot_script::{BootAnswerer, BootFromDiskMethod};
use crate::boot::machine::MachineQuery;
use crate::boot::metrics::{HttpCounters, Registry, Route};
use crate::boot::store::{Machines, Recorder};

/// Everything the handlers need.
pub(crate) struct ApiState {
    /// The rendered init script ([`crate::boot::boot_script::init_script`]).
    pub(crate) init_script: Bytes,
    /// Decides each machine's boot target (the inventory, or Omni mode's decider).
    pub(crate) decider: Arc<dyn BootAnswerer>,
    /// How "boot from disk" is answered.
    pub(crate) disk_method: BootFromDiskMethod,
    /// The boot files, shared with TFTP.
    pub(crate) files: Arc<FileSet>,
    /// Metric sources of other subsystems (ProxyDHCP, TFTP, the store); the router adds
    /// its own HTTP counters.
    pub(crate) metrics: Registry,
    /// Feeds the machine store.
    pub(crate) recorder: Recorder,
    /// Reads the machine store.
    pub(crate) machines: Machines,
}

/// The state as the handlers see it.
struct Shared {
    api: ApiState,
    http: Arc<HttpCounters>,
}

type AppState = Arc<Shared>;

/// The API router. The HTTP counters are created here and appended to `state.metrics`.
pub(crate) fn router(state: ApiState) -> Router {
    let http = Arc::new(HttpCounters::default());
    let mut state = state;
    state.metrics.register(http.clone());
    let shared: AppState = Arc::new(Shared { api: state, http });
    Router::new()
        .route("/ipxe/init.ipxe", get(ipxe::init))
        .route("/ipxe/boot.ipxe", get(ipxe::boot))
        .route("/tftp/{*name}", get(files::serve))
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/api/v1/machines", get(api::machines))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), count))
        .with_state(shared)
}

/// The `boot.ipxe` query of `uri` read and checked as the handler does (axum's `Query`,
/// then [`ipxe::machine_query`]); the `Err` is the 400 body. For the benchmarks'
/// parse-and-render case ([`crate::tools::bench_api`]).
pub(crate) fn parse_boot_query(uri: &axum::http::Uri) -> Result<MachineQuery, String> {
    let axum::extract::Query(params) = axum::extract::Query::<ipxe::BootParams>::try_from_uri(uri)
        .map_err(|e| format!("bad query: {}\n", e.body_text()))?;
    ipxe::machine_query(params).map_err(|msg| msg + "\n")
}

#[cfg(test)]
/// Serve `router` on `listener` until `shutdown` resolves, then finish the requests in
/// flight. Every connection is held to `gate`'s caps and deadlines ([`server`]); handlers
/// see the client address (recorded as a machine's last IP).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    gate: Arc<server::Gate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_images(listener, router, None, gate, shutdown).await
}

/// [`serve`], with `images` (if any: the zero-copy image path, [`sendfile`]) answering
/// boot image requests on plain HTTP/1 connections; everything else goes to `router`.
pub(crate) async fn serve_with_images(
    listener: tokio::net::TcpListener,
    router: Router,
    images: Option<sendfile::ImagePath>,
    gate: Arc<server::Gate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let raw = images.map(|i| Arc::new(i) as Arc<dyn server::RawPath>);
    server::serve_with(
        listener,
        server::Listener::Api,
        gate,
        router,
        server::Plain,
        raw,
        shutdown,
    )
    .await
}

/// Count every answered request by route and status.
async fn count(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route = Route::of(req.uri().path());
    let response = next.run(req).await;
    s.http.request(route, response.status().as_u16());
    response
}

async fn not_found(req: Request) -> Response {
    let msg = if req.uri().path().starts_with("/ipxe/") {
        "no such iPXE script; iPXE asks for /ipxe/init.ipxe or /ipxe/boot.ipxe\n"
    } else {
        "not found\n"
    };
    text(StatusCode::NOT_FOUND, msg)
}

/// A plain-text answer. Scripts and messages are never cached: decisions change.
fn text(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body.into(),
    )
        .into_response()
}
