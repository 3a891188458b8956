//! The `ironboot` binary: composes configuration, logging and the services.

mod config;
mod netif;
mod proxy_dhcp;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ironboot_net::proxy::ProxyCounters;
use ironboot_net::wire::MessageType;
use tracing::info;

use crate::config::{Cli, Config};

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.debug);
    match start(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace: start-up
            // errors are about configuration or the host, not about our code.
            eprintln!("ironboot: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(cli: &Cli) -> anyhow::Result<()> {
    let interfaces = netif::host_interfaces().context("listing network interfaces")?;
    let config = Config::from_cli(cli, &interfaces)?;
    info!(
        provider_id = %config.provider_id,
        advertise = %config.advertise_address,
        api_port = config.api_port,
        mode = if config.omni_endpoint.is_some() { "omni" } else { "standalone" },
        "ironboot starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = ironboot_net::udp::Shutdown::new();
    let counters = Arc::new(ProxyCounters::default());
    let mut dhcp = proxy_dhcp::start(&config, counters.clone(), shutdown.clone())?;
    let dhcp_done = async {
        match dhcp.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        signal = shutdown_signal() => {
            info!(%signal, "shutting down");
            shutdown.trigger();
            if let Some(task) = dhcp {
                task.await.context("ProxyDHCP task")??;
            }
        }
        done = dhcp_done => {
            done.context("ProxyDHCP task")??;
            anyhow::bail!("ProxyDHCP stopped unexpectedly");
        }
    }
    info!(
        offers = counters.replies(MessageType::Offer),
        acks = counters.replies(MessageType::Ack),
        dropped = counters.dropped_total(),
        "ProxyDHCP totals"
    );
    Ok(())
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
