//! `ironboot omni check`: validates the service-account key and the endpoint, registers
//! the provider (retrying while Omni is unreachable), sends one heartbeat and counts the
//! provider's machines; with `--watch`, then prints InfraMachine changes until stopped.
//! The way to try credentials and connectivity before running the provider.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use clap::{ArgAction, Subcommand};
use ironboot_proto::omni::InfraMachineSpec;

use crate::provider::omni::auth::{KeyError, ServiceAccountKey};
use crate::provider::omni::client::{Client, LabelQuery, OmniError};
use crate::provider::omni::provider::{self, ProviderInfo};
use crate::provider::omni::resources::LABEL_INFRA_PROVIDER_ID;
use crate::provider::omni::transport::{EndpointError, OmniEndpoint};
use crate::provider::omni::watch::{Event, Watch};

/// `ironboot omni ...`
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct OmniArgs {
    #[command(subcommand)]
    command: OmniCommand,
}

#[derive(Debug, Clone, Subcommand)]
enum OmniCommand {
    /// Check the key (OMNI_SERVICE_ACCOUNT_KEY) and endpoint: register the provider,
    /// send a heartbeat, count its machines.
    Check(CheckArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct CheckArgs {
    /// Provider ID (must match the service account `infra-provider:<id>`).
    #[arg(long, default_value = "bare-metal")]
    id: String,
    /// Omni API endpoint (http:// or https://).
    #[arg(long, env = "OMNI_ENDPOINT")]
    omni_api_endpoint: String,
    /// Accept any TLS certificate from Omni.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    insecure_skip_tls_verify: bool,
    /// Provider name shown in Omni.
    #[arg(long, default_value = "Bare Metal")]
    provider_name: String,
    /// Provider description shown in Omni.
    #[arg(long, default_value = "Bare metal infrastructure provider")]
    provider_description: String,
    /// Then print InfraMachine changes until interrupted.
    #[arg(long)]
    watch: bool,
}

/// Runs `ironboot omni ...`.
pub(crate) fn main(args: &OmniArgs) -> ExitCode {
    let OmniCommand::Check(check) = &args.command;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ironboot omni: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_check(check)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ironboot omni: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors of `omni check`.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Omni(#[from] OmniError),
}

async fn run_check(args: &CheckArgs) -> Result<(), CheckError> {
    let key = Arc::new(ServiceAccountKey::from_env(&args.id, SystemTime::now())?);
    let endpoint = OmniEndpoint::parse(&args.omni_api_endpoint, args.insecure_skip_tls_verify)?;
    println!(
        "key: service account {} (fingerprint {}), expires {}",
        key.name(),
        key.fingerprint(),
        key.expires_at()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(
                || "never".to_owned(),
                |d| format!("at Unix time {}", d.as_secs())
            )
    );
    let client = Client::new(&endpoint, key)?;
    let info = ProviderInfo {
        name: args.provider_name.clone(),
        description: args.provider_description.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let status = provider::register_with_retry(&client, &info, |e, wait| {
        eprintln!(
            "Omni at {} unreachable ({e}); retrying in {wait:?}",
            endpoint.url()
        );
    })
    .await?;
    println!(
        "registered: InfraProviderStatus {} version {:?}",
        status.metadata.id, status.metadata.version
    );
    provider::heartbeat(&client, SystemTime::now(), "").await?;
    println!("heartbeat sent");
    let mine = LabelQuery::default().equal(LABEL_INFRA_PROVIDER_ID, client.provider_id());
    let machines = client.list::<InfraMachineSpec>(&mine).await?;
    println!(
        "{} InfraMachines for provider {}",
        machines.len(),
        client.provider_id()
    );
    if args.watch {
        // Keep the provider healthy in Omni's eyes while watching.
        let (_healthy, errors) = tokio::sync::watch::channel(String::new());
        tokio::spawn(provider::run_heartbeat(
            client.clone(),
            provider::HEARTBEAT_INTERVAL,
            errors,
        ));
        let mut watch = Watch::<InfraMachineSpec>::new(client, mine);
        loop {
            match watch.next().await? {
                Event::Created(r) => println!("created {} {:?}", r.metadata.id, r.spec),
                Event::Updated { new, .. } => {
                    println!("updated {} {:?}", new.metadata.id, new.spec)
                }
                Event::Destroyed(r) => println!("destroyed {}", r.metadata.id),
                Event::Bootstrapped => println!("(bootstrapped)"),
                Event::Reset => println!("(watch restarted after {} resumptions)", watch.resumes()),
            }
        }
    }
    Ok(())
}
