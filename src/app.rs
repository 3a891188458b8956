//! Composition: builds every service from the validated [`Config`], runs them until a
//! signal or the first failure, then stops them in order.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use anyhow::Context;
use ironboot_net::proxy::ProxyCounters;
use ironboot_net::tftp::TftpCounters;
use ironboot_net::udp::Shutdown;
use ironboot_net::wire::MessageType;
use tokio::task::JoinSet;
use tracing::{error, info};

use crate::boot::{
    assets, boot_files, boot_script, http, inventory, metrics, proxy_dhcp, store, tftp_service,
};
use crate::cli::config::Config;
use crate::provider::mode::OmniMode;

/// The running services; each task resolves with its name and how it ended.
type Services = JoinSet<(&'static str, anyhow::Result<()>)>;

/// Run ironboot until SIGINT/SIGTERM, or until a service fails.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let (mut files, report) = boot_files::load(&config.ipxe_dirs)?;
    report.log();
    if let Some(cert) = &config.ipxe_ca_cert {
        boot_files::trust_ca(&mut files, cert)?.log();
    }
    let factory_proxy = factory_proxy(&config, &files)?;
    if factory_proxy.is_none() {
        warn_if_ipxe_cannot_reach_the_factory(&config, &files);
    }
    let files = Arc::new(files);
    // Standalone mode with --use-local-boot-assets: the directory's files on /assets/,
    // which the inventory's kernel and initrd may name as /assets/... paths.
    let assets = match config.standalone_assets() {
        Some(dir) => {
            let tree = assets::AssetTree::new(dir)?;
            info!(dir = %dir.display(), "serving the boot assets directory's files on /assets/");
            Some(tree)
        }
        None => None,
    };
    let assets_url = assets
        .as_ref()
        .map(|_| boot_script::assets_url(config.advertise_address.into(), config.api_port));
    let inventory = Arc::new(match &config.inventory {
        Some(path) => inventory::Inventory::load(path, assets_url.as_deref())?,
        None => inventory::Inventory::default(),
    });
    if config.omni_endpoint.is_none() {
        info!(inventory = %inventory.summary(), "boot policy");
    }
    let store = store::Store::open(&config.state_dir)?;
    info!(path = %store.path().display(), "machine store open");
    let store = store.start_with(store::StoreOptions {
        max_machines: config.store_max_machines,
        new_per_source: config.store_new_per_source,
        pinned: inventory.clone(),
        ..store::StoreOptions::default()
    })?;
    let store_stats = store.stats.clone();

    let udp_shutdown = Shutdown::new();
    let mut services = Services::new();
    let proxy_counters = Arc::new(ProxyCounters::default());
    if let Some(task) = proxy_dhcp::start(&config, proxy_counters.clone(), udp_shutdown.clone())? {
        services.spawn(async move { ("ProxyDHCP", flatten(task.await)) });
    }

    let tftp_counters = Arc::new(TftpCounters::default());
    let tftp = tftp_service::start(
        &config,
        files.clone(),
        tftp_counters.clone(),
        udp_shutdown.clone(),
    )?;
    services.spawn(async move { ("TFTP", flatten(tftp.await)) });

    // Omni mode: the provider, with the metal agents' reverse gRPC tunnels (h2c) on the
    // same port as the HTTP routes and, with --tls-enabled, on the TLS port.
    let mut omni = match &config.omni_endpoint {
        Some(endpoint) => Some(OmniMode::start(&config, endpoint, factory_proxy.clone()).await?),
        None => None,
    };
    let agent_tls = omni.as_mut().and_then(|omni| omni.tls.take());
    let agent_tunnels = omni.as_ref().map(|omni| omni.tunnels.clone());
    let decider: Arc<dyn boot_script::BootAnswerer> = match &omni {
        Some(omni) => omni.decider.clone(),
        None => inventory,
    };

    let http_gate = http_gate(&config);
    let mut registry = metrics::Registry::new();
    registry.register(http_gate.counters());
    registry.register(proxy_counters.clone());
    registry.register(tftp_counters.clone());
    registry.register(store.stats.clone());
    if let Some(omni) = &omni {
        registry.register(omni.stats());
        registry.register(Arc::new(omni.tunnels.clone()));
    }
    if let Some(proxy) = &factory_proxy {
        registry.register(proxy.stats());
    }
    if let Some(assets) = &assets {
        registry.register(assets.counters());
    }
    let image_stats = Arc::new(http::sendfile::ImageStats::default());
    registry.register(image_stats.clone());
    let router = http::router(http::ApiState {
        init_script: boot_script::init_script(
            config.advertise_address.into(),
            config.api_port,
            config.boot_from_disk_method,
        ),
        decider,
        disk_method: config.boot_from_disk_method,
        files,
        metrics: registry,
        recorder: store.recorder,
        machines: store.machines,
    });
    let router = match (&omni, &assets) {
        (Some(omni), _) => omni.mount(router),
        (None, Some(assets)) => assets.mount(router),
        (None, None) => router,
    };
    // Boot images (`/assets/`, `/factory/image/`) go out with sendfile (src/boot/http/sendfile.rs).
    let image_routes: Option<Arc<dyn http::sendfile::ImageRoutes>> = match (&omni, &assets) {
        (Some(omni), _) => omni.image_routes(),
        (None, Some(assets)) => Some(Arc::new(assets::AssetImages(assets.clone()))),
        (None, None) => None,
    };
    let images = image_routes.map(|routes| http::sendfile::ImagePath::new(routes, image_stats));
    let http_addr = SocketAddrV4::new(
        config.api_listen_address.unwrap_or(Ipv4Addr::UNSPECIFIED),
        config.api_port,
    );
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("--api-port: listening on {http_addr}"))?;
    info!(addr = %http_addr, "HTTP API listening");
    let tls_stop = match (agent_tls, &agent_tunnels) {
        (Some(tls), Some(agent_tunnels)) => {
            let addr = SocketAddrV4::new(
                config.api_listen_address.unwrap_or(Ipv4Addr::UNSPECIFIED),
                config.tls.port,
            );
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--tls-api-port: listening on {addr}"))?;
            info!(%addr, "agents' TLS gRPC listening");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let router = agent_tunnels.mount(axum::Router::new());
            let served = tls.serve(listener, router, http_gate.clone(), async {
                let _ = stopped.await;
            });
            services.spawn(async move { ("agents' TLS", served.await.map_err(Into::into)) });
            Some(stop)
        }
        _ => None,
    };
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    services.spawn(async move {
        let stopped = async {
            let _ = http_stopped.await;
        };
        (
            "HTTP API",
            http::serve_with_images(listener, router, images, http_gate, stopped)
                .await
                .map_err(Into::into),
        )
    });

    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            info!(%signal, "shutting down");
            Ok(())
        }
        Some(ended) = services.join_next() => {
            let (name, result) = ended.context("a service task panicked")?;
            match result {
                Ok(()) => Err(anyhow::anyhow!("{name} stopped unexpectedly")),
                Err(e) => Err(e.context(format!("{name} failed"))),
            }
        }
    };
    if let Some(omni) = &omni {
        omni.stop();
    }
    udp_shutdown.trigger();
    // Tunnels never end by themselves: close them so the HTTP server can drain.
    if let Some(tunnels) = &agent_tunnels {
        tunnels.close_all();
    }
    let _ = http_stop.send(());
    if let Some(stop) = tls_stop {
        let _ = stop.send(());
    }
    while let Some(ended) = services.join_next().await {
        match ended {
            Ok((name, Err(e))) => {
                error!(service = name, error = %format!("{e:#}"), "stopped with an error")
            }
            Ok((name, Ok(()))) => info!(service = name, "stopped"),
            Err(e) => error!(error = %e, "a service task panicked"),
        }
    }
    // The writer ends once the HTTP router (the last recorder) is gone: after the loop.
    store.writer.await.context("machine store writer")?;
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
fn descriptor_reserve(config: &Config) -> u64 {
    let per_worker = config.tftp.port_pool as u64 + 4;
    1024 + config.udp_workers as u64 * per_worker
}

/// The caps and deadlines both HTTP ports share: RLIMIT_NOFILE raised to its hard limit,
/// and `--http-max-connections` lowered if it would leave the rest of ironboot short.
fn http_gate(config: &Config) -> Arc<http::server::Gate> {
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
    config: &Config,
    files: &ironboot_net::files::FileSet,
) -> anyhow::Result<Option<Arc<crate::provider::factory_proxy::FactoryProxy>>> {
    use crate::cli::config::{AgentBootSource, FactoryProxyMode};
    use crate::provider::factory_proxy::{CACHE_DIR_NAME, FactoryProxy, Options, ipxe_needs_proxy};
    let (Some(_), AgentBootSource::ImageFactory(settings)) =
        (&config.omni_endpoint, &config.agent_boot)
    else {
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
    let cache = config.state_dir.join(CACHE_DIR_NAME);
    let proxy = FactoryProxy::new(
        settings,
        config.advertise_address.into(),
        config.api_port,
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
fn warn_if_ipxe_cannot_reach_the_factory(config: &Config, files: &ironboot_net::files::FileSet) {
    let crate::cli::config::AgentBootSource::ImageFactory(factory) = &config.agent_boot else {
        return;
    };
    if config.omni_endpoint.is_none() || !factory.pxe_base_url.starts_with("https://") {
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

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    joined.context("task panicked")?
}

/// Resolves with the name of the first of SIGINT / SIGTERM.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
