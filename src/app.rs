//! Composition: builds the boot server every mode shares from the validated [`Config`],
//! adds the mode's part (the inventory, or Omni's provider), runs every service under one
//! [`Supervisor`] until a signal or the first failure, then stops them in order.

pub(crate) mod capabilities;
mod supervisor;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ironboot_net::proxy::ProxyCounters;
use ironboot_net::tftp::TftpCounters;
use ironboot_net::wire::MessageType;
use tracing::info;

use crate::boot::config::ServerConfig;
use crate::boot::inventory::reload::{LiveInventory, Reloader, Source};
use crate::boot::service::ServiceHandle;
use crate::boot::{
    assets, boot_files, boot_script, http, inventory, metrics, proxy_dhcp, store, tftp_service,
};
use crate::cli::config::{Config, Mode, Standalone};
use crate::provider::factory_proxy::FactoryProxy;
use crate::provider::mode::{OmniConfig, OmniMode};
use supervisor::{Stage, Supervisor, Wake};

/// How long each service may take to stop once its stage is cancelled.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the mode adds to the boot server: who answers `boot.ipxe`, extra routes, the
/// boot images sent zero-copy, metric sources.
struct ModeParts {
    decider: Arc<dyn boot_script::BootAnswerer>,
    /// Standalone's routes (Omni mode's are mounted by [`OmniMode::mount`]).
    mount: Option<Box<dyn FnOnce(axum::Router) -> axum::Router + Send>>,
    image_routes: Option<Arc<dyn http::sendfile::ImageRoutes>>,
    metrics: Vec<Arc<dyn metrics::PrometheusSource>>,
    /// Standalone's inventory, pinned in the machine store.
    pinned: Option<Arc<LiveInventory>>,
    /// Standalone with `--inventory`: what reloads the file (a service of the edges).
    reloader: Option<Reloader>,
}

/// Run ironboot until SIGINT/SIGTERM, or until an essential service fails.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let Config { server, mode } = config;
    let (mut files, report) = boot_files::load(&server.ipxe_dirs)?;
    report.log();
    if let Some(cert) = &server.ipxe_ca_cert {
        boot_files::trust_ca(&mut files, cert)?.log();
    }
    let supervisor = Supervisor::new(STOP_GRACE);
    let mut omni = None;
    let parts = match &mode {
        Mode::Standalone(standalone) => standalone_parts(&server, standalone)?,
        Mode::Omni(config) => {
            let factory_proxy = factory_proxy(&server, config, &files)?;
            if factory_proxy.is_none() {
                warn_if_ipxe_cannot_reach_the_factory(config, &files);
            }
            let started = omni.insert(
                OmniMode::start(
                    &server,
                    config,
                    factory_proxy.clone(),
                    supervisor.token(Stage::Provider),
                )
                .await?,
            );
            omni_parts(started, factory_proxy)
        }
    };
    let files = Arc::new(files);
    serve(&server, files, parts, omni, supervisor).await
}

/// Standalone mode: the inventory decides, and with --use-local-boot-assets the
/// directory's files are served on /assets/ (the inventory's kernel and initrd may name
/// them as /assets/... paths).
fn standalone_parts(server: &ServerConfig, standalone: &Standalone) -> anyhow::Result<ModeParts> {
    let assets = match &standalone.assets {
        Some(dir) => {
            let tree = assets::AssetTree::new(dir)?;
            info!(dir = %dir.display(), "serving the boot assets directory's files on /assets/");
            Some(tree)
        }
        None => None,
    };
    let assets_url = assets
        .as_ref()
        .map(|_| boot_script::assets_url(server.advertise_address.into(), server.api_port));
    let mut metrics: Vec<Arc<dyn metrics::PrometheusSource>> = Vec::new();
    let (inventory, reloader) = match &standalone.inventory {
        Some(path) => {
            let reloader = Reloader::load(Source {
                path: path.clone(),
                assets: assets_url,
            })?;
            let live = reloader.live();
            metrics.push(live.clone());
            (live, Some(reloader))
        }
        None => (
            Arc::new(LiveInventory::new(inventory::Inventory::default())),
            None,
        ),
    };
    info!(inventory = %inventory.current().summary(), "boot policy");
    if let Some(assets) = &assets {
        metrics.push(assets.counters());
    }
    let image_routes = assets
        .as_ref()
        .map(|a| Arc::new(assets::AssetImages(a.clone())) as Arc<dyn http::sendfile::ImageRoutes>);
    Ok(ModeParts {
        decider: inventory.clone(),
        mount: Some(Box::new(move |router| match &assets {
            Some(assets) => assets.mount(router),
            None => router,
        })),
        image_routes,
        metrics,
        pinned: Some(inventory),
        reloader,
    })
}

/// Omni mode: Omni's boot decisions, `/config`, the agents' tunnels, the local assets or
/// the factory proxy.
fn omni_parts(omni: &OmniMode, factory_proxy: Option<Arc<FactoryProxy>>) -> ModeParts {
    let mut metrics: Vec<Arc<dyn metrics::PrometheusSource>> =
        vec![omni.stats(), Arc::new(omni.tunnels.clone())];
    if let Some(proxy) = &factory_proxy {
        metrics.push(proxy.stats());
    }
    ModeParts {
        decider: omni.decider.clone(),
        mount: None,
        image_routes: omni.image_routes(),
        metrics,
        pinned: None,
        reloader: None,
    }
}

/// The boot server every mode shares: the machine store, ProxyDHCP, TFTP, the HTTP API
/// (and, in Omni mode, the agents' TLS port), run under `supervisor` until a signal or an
/// essential service's end.
async fn serve(
    server: &ServerConfig,
    files: Arc<ironboot_net::files::FileSet>,
    parts: ModeParts,
    mut omni: Option<OmniMode>,
    mut supervisor: Supervisor,
) -> anyhow::Result<()> {
    let store = store::Store::open(&server.state_dir)?;
    info!(path = %store.path().display(), "machine store open");
    let mut options = store::StoreOptions {
        max_machines: server.store.max_machines,
        new_per_source: server.store.new_per_source,
        ..store::StoreOptions::default()
    };
    if let Some(pinned) = &parts.pinned {
        options.pinned = pinned.clone();
    }
    let store = store.start_with(options)?;
    let store_stats = store.stats.clone();
    // SIGHUP reloads the inventory; without one it is ignored (its default action would
    // end the process: `systemctl reload` and a closed terminal send it).
    let ignored_hangups = match parts.reloader {
        Some(reloader) => {
            supervisor.add(
                Stage::Edges,
                reloader.start(supervisor.token(Stage::Edges))?,
            );
            None
        }
        None => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing the SIGHUP handler")?,
        ),
    };
    if let Some(omni) = &mut omni {
        for service in omni.take_services() {
            supervisor.add(Stage::Provider, service);
        }
        supervisor.add(
            Stage::Tunnels,
            omni.tunnels_service(supervisor.token(Stage::Tunnels)),
        );
    }

    let proxy_counters = Arc::new(ProxyCounters::default());
    if let Some(service) = proxy_dhcp::start(
        server,
        proxy_counters.clone(),
        supervisor.token(Stage::Edges),
    )? {
        supervisor.add(Stage::Edges, service);
    }
    let tftp_counters = Arc::new(TftpCounters::default());
    let tftp = tftp_service::start(
        server,
        files.clone(),
        tftp_counters.clone(),
        supervisor.token(Stage::Edges),
    )?;
    supervisor.add(Stage::Edges, tftp);

    let http_gate = http_gate(server);
    let mut registry = metrics::Registry::new();
    registry.register(http_gate.counters());
    registry.register(proxy_counters.clone());
    registry.register(tftp_counters.clone());
    registry.register(store.stats.clone());
    for source in parts.metrics {
        registry.register(source);
    }
    let image_stats = Arc::new(http::sendfile::ImageStats::default());
    registry.register(image_stats.clone());
    let router = http::router(http::ApiState {
        init_script: boot_script::init_script(
            server.advertise_address.into(),
            server.api_port,
            server.boot_from_disk_method,
        ),
        decider: parts.decider,
        disk_method: server.boot_from_disk_method,
        files,
        metrics: registry,
        recorder: store.recorder,
        machines: store.machines,
    });
    let router = match (&omni, parts.mount) {
        (Some(omni), _) => omni.mount(router),
        (None, Some(mount)) => mount(router),
        (None, None) => router,
    };
    // Boot images (`/assets/`, `/factory/image/`) go out with sendfile (src/boot/http/sendfile.rs).
    let images = parts
        .image_routes
        .map(|routes| http::sendfile::ImagePath::new(routes, image_stats));
    let http_addr = SocketAddrV4::new(
        server.api_listen_address.unwrap_or(Ipv4Addr::UNSPECIFIED),
        server.api_port,
    );
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("--api-port: listening on {http_addr}"))?;
    info!(addr = %http_addr, "HTTP API listening");
    // Omni mode with --tls-enabled: the metal agents' tunnels on the TLS port too.
    if let Some((tls, tunnels, port)) = omni.as_mut().and_then(|omni| {
        let port = omni.tls_port;
        omni.tls.take().map(|tls| (tls, omni.tunnels.clone(), port))
    }) {
        let addr = SocketAddrV4::new(
            server.api_listen_address.unwrap_or(Ipv4Addr::UNSPECIFIED),
            port,
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--tls-api-port: listening on {addr}"))?;
        info!(%addr, "agents' TLS gRPC listening");
        // Stops accepting with the edges; drains once the tunnels are closed.
        let stop = supervisor.token(Stage::Edges);
        let router = tunnels.mount(axum::Router::new());
        let served = tls.serve(listener, router, http_gate.clone(), stop.cancelled_owned());
        supervisor.add(
            Stage::Drain,
            ServiceHandle::spawn("agents' TLS", async move { Ok(served.await?) }),
        );
    }
    let stop = supervisor.token(Stage::Edges);
    let served =
        http::serve_with_images(listener, router, images, http_gate, stop.cancelled_owned());
    supervisor.add(
        Stage::Drain,
        ServiceHandle::spawn("HTTP API", async move { Ok(served.await?) }),
    );
    // The writer ends once the HTTP router (the last recorder) is gone.
    let writer = store.writer;
    supervisor.add(
        Stage::Store,
        ServiceHandle::spawn("machine store", async move {
            writer.await.context("machine store writer")
        }),
    );

    let outcome = match supervisor.wait(shutdown_signal(ignored_hangups)).await {
        Wake::Signal(signal) => {
            info!(%signal, "shutting down");
            Ok(())
        }
        Wake::Ended(name, Ok(())) => Err(anyhow::anyhow!("{name} stopped unexpectedly")),
        Wake::Ended(name, Err(e)) => Err(e.context(format!("{name} failed"))),
    };
    supervisor.shutdown().await;
    drop(omni);
    info!(
        offers = proxy_counters.replies(MessageType::Offer),
        acks = proxy_counters.replies(MessageType::Ack),
        dhcp_dropped = proxy_counters.dropped_total(),
        machines_written = store_stats.written(),
        sightings_dropped = store_stats.dropped(),
        "totals"
    );
    outcome
}

/// Descriptors kept for everything but HTTP connections: the UDP services' sockets
/// (ProxyDHCP, TFTP port 69 and its transfer ports, per worker), the machine store, the
/// Omni and BMC clients, logs.
fn descriptor_reserve(config: &ServerConfig) -> u64 {
    let per_worker = config.tftp.port_pool as u64 + 4;
    1024 + config.udp_workers as u64 * per_worker
}

/// The caps and deadlines both HTTP ports share: RLIMIT_NOFILE raised to its hard limit,
/// and `--http-max-connections` lowered if it would leave the rest of ironboot short.
fn http_gate(config: &ServerConfig) -> Arc<http::server::Gate> {
    use http::server::{ConnCounters, Gate, fit_to_descriptors, raise_nofile_limit};
    let mut limits = config.http.clone();
    match raise_nofile_limit() {
        Ok(nofile) => {
            let reserve = descriptor_reserve(config);
            let fitted = fit_to_descriptors(limits.max_connections, nofile, reserve);
            if fitted < limits.max_connections {
                tracing::warn!(
                    wanted = limits.max_connections,
                    allowed = fitted,
                    nofile,
                    reserve,
                    "--http-max-connections lowered to fit the open-files limit (raise \
                     RLIMIT_NOFILE, e.g. LimitNOFILE= in the systemd unit)"
                );
                limits.max_connections = fitted;
            }
            info!(
                nofile,
                max_connections = limits.max_connections,
                max_per_source = limits.max_per_source,
                "HTTP connection limits"
            );
        }
        Err(e) => tracing::warn!(error = %e, "RLIMIT_NOFILE could not be read or raised"),
    }
    Gate::new(limits, Arc::new(ConnCounters::default()))
}

/// The Image Factory proxy (`--image-factory-proxy`): Omni mode with the factory as the
/// agent's source, when asked for or when the iPXE binaries cannot speak HTTPS.
fn factory_proxy(
    server: &ServerConfig,
    config: &OmniConfig,
    files: &ironboot_net::files::FileSet,
) -> anyhow::Result<Option<Arc<FactoryProxy>>> {
    use crate::provider::boot_plan::AgentBootSource;
    use crate::provider::factory_proxy::{
        CACHE_DIR_NAME, FactoryProxyMode, Options, ipxe_needs_proxy,
    };
    let AgentBootSource::ImageFactory(settings) = &config.agent_boot else {
        return Ok(None);
    };
    let on = match config.image_factory_proxy {
        FactoryProxyMode::On => true,
        FactoryProxyMode::Off => false,
        FactoryProxyMode::Auto => ipxe_needs_proxy(files),
    };
    if !on {
        return Ok(None);
    }
    let cache = server.state_dir.join(CACHE_DIR_NAME);
    let proxy = FactoryProxy::new(
        settings,
        server.advertise_address.into(),
        server.api_port,
        Options::new(cache.clone()),
    )
    .context("--image-factory-proxy")?;
    info!(
        pxe_base_url = %settings.pxe_base_url,
        cache = %cache.display(),
        "machines get the Image Factory's images through ironboot (plain HTTP, cached)"
    );
    Ok(Some(proxy))
}

/// In Omni mode the agent and installer boots chain to the Image Factory's PXE front end;
/// over `https://` that needs an iPXE built with HTTPS, which Debian's is not.
fn warn_if_ipxe_cannot_reach_the_factory(
    config: &OmniConfig,
    files: &ironboot_net::files::FileSet,
) {
    let crate::provider::boot_plan::AgentBootSource::ImageFactory(factory) = &config.agent_boot
    else {
        return;
    };
    if !factory.pxe_base_url.starts_with("https://") {
        return;
    }
    if boot_files::efi_ipxe_speaks_https(files) == Some(false) {
        tracing::warn!(
            pxe_base_url = %factory.pxe_base_url,
            "the iPXE binaries loaded have no HTTPS: machines cannot chain to the Image \
             Factory's https:// PXE URLs. Put HTTPS-capable iPXE builds in a directory \
             named by --ipxe-dir, serve the factory over http:// \
             (--image-factory-pxe-base-url), or use --use-local-boot-assets"
        );
    }
}

/// Resolves with the name of the first of SIGINT / SIGTERM. Each SIGHUP of `hangups`
/// (when nothing reloads on it) is logged and ignored.
async fn shutdown_signal(mut hangups: Option<tokio::signal::unix::Signal>) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return "SIGINT",
            _ = term.recv() => return "SIGTERM",
            Some(()) = hangup => {
                info!("SIGHUP: nothing to reload (no --inventory); ignored");
            }
        }
    }
}
