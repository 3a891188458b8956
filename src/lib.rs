//! ironboot as a library: every module of the `ironboot` binary, so that benchmarks can
//! drive the real hot paths (`benches/`). The binary (`src/main.rs`) only calls [`main`].
//!
//! Nothing here is a stable interface: [`main`] is the whole command, the hidden
//! `bench_api` module exists only for the benchmarks, and the hidden `testing` module
//! (feature `test-support`) only for the integration tests.

mod app;
mod boot;
mod cli;
mod provider;
mod tools;

#[doc(hidden)]
pub use tools::bench_api;

#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod testing;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing::info;

use crate::cli::config::{Config, Mode};
use crate::cli::flags::{Cli, Command};

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    // RUST_LOG or the default, the chatty dependencies kept at info and the OpenPGP crate
    // at warn (it would dump the service-account key).
    let filter = cli::log_filter::from_env(default);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, not in files or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The `ironboot` command: parses the command line (`std::env::args_os`), then runs the
/// server (no subcommand), `ironboot storm`, `ironboot bmc` or `ironboot omni`, and returns
/// the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Storm(storm)) => return tools::storm::main(storm),
        Some(Command::Bmc(bmc)) => return tools::bmc::main(bmc),
        Some(Command::Omni(omni)) => {
            init_logging(false);
            return tools::omni_check::main(omni);
        }
        None => {}
    }
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
    // Before any thread starts: threads inherit the capabilities of the one that made them.
    app::capabilities::raise_permitted();
    let interfaces = boot::netif::host_interfaces().context("listing network interfaces")?;
    let config = Config::from_cli(cli, &interfaces)?;
    info!(
        provider_id = %cli.id.trim(),
        advertise = %config.server.advertise_address,
        api_port = config.server.api_port,
        mode = config.mode.name(),
        "ironboot starting"
    );
    if let Mode::Omni(omni) = &config.mode {
        tracing::debug!(selection = ?omni.bmc, "BMC back-end selection");
        tracing::debug!(
            agent = ?omni.agent,
            min_reboot_interval = ?omni.min_reboot_interval,
            machine_labels = ?omni.machine_labels,
            agent_boot = ?omni.agent_boot,
            "lifecycle settings"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(app::run(config))
}
