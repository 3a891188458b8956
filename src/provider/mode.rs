//! Omni mode's start-up: the pieces that turn the standalone boot server into Omni's
//! bare-metal infrastructure provider.
//!
//! - the Omni client from `OMNI_SERVICE_ACCOUNT_KEY` and `--omni-api-endpoint`;
//! - registration (`InfraProviderStatus`, retried while Omni is unreachable) and the
//!   health heartbeat;
//! - the boot decisions ([`crate::provider::boot_plan`]) fed by Omni's watches, with `/config` and
//!   the local boot assets mounted on the API router;
//! - the control loop ([`crate::provider::executor::real::start`]) over the BMC fleet and the agents'
//!   tunnels, told of every PXE boot by the `boot.ipxe` route.
//!
//! - a probe of Omni's reachability ([`reach`]), on `/healthz` and `/metrics`.
//!
//! Nothing here waits for Omni: ProxyDHCP, TFTP and HTTP serve from the first second, and a
//! machine that boots before Omni's state is loaded gets the retrying script.

mod config;
mod reach;

pub(crate) use config::OmniConfig;

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use ironboot_bmc::Selector;
use ironboot_bmc::fleet::{Fleet, FleetOptions};
use tracing::{info, warn};

use crate::boot::boot_script::{AnswerFuture, BootAnswerer, BootFromDiskMethod};
use crate::boot::config::ServerConfig;
use crate::boot::machine::MachineQuery;
use crate::boot::service::{CancellationToken, ServiceHandle};
use crate::provider::agent::admission::{AgentGate, KnownMachines};
use crate::provider::agent::client::AgentClient;
use crate::provider::agent::tunnel::Tunnels;
use crate::provider::boot_plan::{self, AgentModeOptions, AgentTlsBoot, OmniBoot, OmniBootDecider};
use crate::provider::executor::Settings;
use crate::provider::executor::real::{FleetPower, OmniExecutor};
use crate::provider::lifecycle::{Event, Policy};
use crate::provider::omni::auth::ServiceAccountKey;
use crate::provider::omni::client::Client;
use crate::provider::omni::provider::{self, ProviderInfo};
use crate::provider::omni::transport::OmniEndpoint;
use crate::provider::tls::{AgentTls, CertSource, TlsError, UserFiles};

/// Omni mode, started: what the HTTP router needs, and its services for the supervisor.
pub(crate) struct OmniMode {
    /// The `boot.ipxe` answerer: Omni's boot decisions, reporting each PXE boot to the
    /// control loop.
    pub(crate) decider: Arc<dyn BootAnswerer>,
    /// The agents' TLS listener's certificates (`--tls-enabled`).
    pub(crate) tls: Option<AgentTls>,
    /// The metal agents' tunnels, admitted by their machines' address bindings.
    pub(crate) tunnels: Tunnels,
    /// `--tls-api-port`.
    pub(crate) tls_port: u16,
    boot: OmniBoot,
    executor_stats: Arc<crate::provider::executor::stats::ExecutorStats>,
    reach: Arc<reach::OmniReachability>,
    /// The control loop, registration and heartbeat, probe, watches, binding saver and
    /// certificate renewal: each ends once the token given to [`OmniMode::start`] is
    /// cancelled.
    services: Vec<ServiceHandle>,
}

impl OmniMode {
    /// Reads the key, builds the client and starts registration, the heartbeat, the
    /// watches and the control loop. Fails only on what a restart cannot fix: a missing or
    /// malformed key, a bad endpoint, unusable TLS files. With `--tls-enabled` and the
    /// generated CA, it first loads (or creates) the CA in Omni, waiting while Omni is
    /// unreachable: agents and boots need it. The loops stop once `stop` is cancelled.
    pub(crate) async fn start(
        server: &ServerConfig,
        config: &OmniConfig,
        factory_proxy: Option<Arc<crate::provider::factory_proxy::FactoryProxy>>,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let key = ServiceAccountKey::from_env(&config.provider_id, SystemTime::now())
            .context("OMNI_SERVICE_ACCOUNT_KEY")?;
        let key = Arc::new(key);
        info!(
            service_account = key.name(),
            fingerprint = key.fingerprint(),
            "Omni service-account key loaded"
        );
        let endpoint = OmniEndpoint::parse(&config.endpoint, config.insecure_skip_tls_verify)
            .context("--omni-api-endpoint")?;
        let client = Client::new(&endpoint, key).context("--omni-api-endpoint")?;

        let tls = match config.tls.enabled {
            true => Some(prepare_tls(server, config, Some(&client)).await?),
            false => None,
        };
        let boot = OmniBoot::new(
            &config.provider_id,
            server.advertise_address.into(),
            server.api_port,
            &config.agent_boot,
        )
        .context("Omni-mode boot decisions")?
        .with_extra_documents(match &config.extra_machine_config {
            Some(path) => {
                let docs = boot_plan::ExtraDocuments::load(path)?;
                info!(documents = %docs, path = %path.display(), "extra machine configuration");
                docs
            }
            None => boot_plan::ExtraDocuments::default(),
        })
        .with_agent_options(AgentModeOptions {
            test_mode: config.agent_test_mode,
            skip_verify: config.tls.agent_skip_verify,
            tls: tls.as_ref().map(|t| AgentTlsBoot {
                port: config.tls.port,
                ca_pem: t.ca_pem().to_owned(),
            }),
        });

        let boot = match factory_proxy {
            Some(proxy) => boot.with_factory_proxy(proxy),
            None => boot,
        };
        // The agents' tunnels: only machines Omni names (or that PXE-booted here), from
        // the address that loaded their configuration.
        let gate = AgentGate::bound(
            Arc::new(KnownInOmni(boot.cache.clone())),
            Some(&server.state_dir),
        );
        let tunnels = Tunnels::new(gate.clone());
        let agents = AgentClient::new(tunnels.clone(), config.agent.timeouts);
        let power = FleetPower::new(
            Selector::new(config.bmc.clone()),
            Fleet::new(FleetOptions::default()),
        );
        let mut settings = Settings::new(
            Policy::new(
                config.min_reboot_interval,
                config.agent.wipe_with_zeroes,
                config.bmc.pxe_boot_mode,
            ),
            config.machine_labels.clone(),
        );
        settings.power_poll_interval = config.power_poll_interval;
        settings
            .power_api_dir
            .clone_from(&config.api_power_mgmt_state_dir);
        settings.bmc_allow.clone_from(&config.bmc_allow);
        let mut control = crate::provider::executor::real::start(
            &client,
            power,
            agents,
            tunnels.subscribe(),
            settings,
        );

        let info = ProviderInfo {
            name: config.provider_name.clone(),
            description: config.provider_description.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        // A send on `kick` makes the heartbeat beat at once (the probe, when Omni is back).
        let (kick, beats) = tokio::sync::watch::channel(String::new());
        let reach = Arc::new(reach::OmniReachability::default());
        // The heartbeat, the probe and the watches only read from Omni or send it a
        // status: stopping them at any await point loses nothing.
        let until_stopped = |name: &'static str, run| {
            let stop = stop.clone();
            ServiceHandle::spawn(name, async move {
                stop.run_until_cancelled(run).await;
                Ok(())
            })
        };
        let mut services = vec![
            until_stopped(
                "Omni registration and heartbeat",
                Box::pin(register_and_heartbeat(client.clone(), info, beats))
                    as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
            ),
            until_stopped(
                "Omni reachability probe",
                Box::pin(reach::probe(
                    client.clone(),
                    reach.clone(),
                    kick,
                    reach::PROBE_INTERVAL,
                )),
            ),
        ];
        let (cache, join) = (boot.cache.clone(), boot.join.clone());
        let watch_client = client.clone();
        services.push(until_stopped(
            "Omni boot decisions watch",
            Box::pin(async move {
                // The watches resume broken streams themselves; an end is for good (the
                // key rejected, say): boots then keep the last state Omni gave.
                if let Err(e) = boot_plan::follow(watch_client, cache, join).await {
                    tracing::error!(error = %e, "watching Omni for boot decisions stopped");
                }
            }),
        ));
        let joined = |name, task: tokio::task::JoinHandle<()>| {
            ServiceHandle::spawn(name, async move {
                task.await.context("task panicked")?;
                Ok(())
            })
        };
        services.extend(
            gate.spawn_saver(stop.clone())
                .map(|t| joined("agent bindings saver", t)),
        );
        services.extend(
            tls.as_ref()
                .and_then(|tls| tls.spawn_renewal(stop.clone()))
                .map(|t| joined("agents' TLS renewal", t)),
        );

        let decider = Arc::new(ReportingPxeBoots {
            decider: boot.decider.clone(),
            executor: control.executor.clone(),
            gate,
        });
        let executor_stats = control.executor.stats();
        // The control loop: a machine in a lifecycle step finishes it, then its task ends.
        services.push(ServiceHandle::spawn("Omni control loop", async move {
            stop.cancelled().await;
            control.stopped().await;
            Ok(())
        }));
        Ok(Self {
            decider,
            tls,
            tunnels,
            tls_port: config.tls.port,
            boot,
            executor_stats,
            reach,
            services,
        })
    }

    /// The loops started, for the supervisor (taken once).
    pub(crate) fn take_services(&mut self) -> Vec<ServiceHandle> {
        std::mem::take(&mut self.services)
    }

    /// The service closing the agents' tunnels once `stop` is cancelled (after the
    /// control loop has stopped: its steps may be using them), then saving the agents'
    /// address bindings. Open tunnels would keep the HTTP servers from draining.
    pub(crate) fn tunnels_service(&self, stop: CancellationToken) -> ServiceHandle {
        let tunnels = self.tunnels.clone();
        ServiceHandle::spawn("agent tunnels", async move {
            stop.cancelled().await;
            tunnels.close_all();
            let gate = tunnels.gate().clone();
            if let Err(e) = tokio::task::spawn_blocking(move || gate.save())
                .await
                .context("task panicked")?
            {
                warn!(error = %e, "saving the agent bindings failed");
            }
            Ok(())
        })
    }

    /// The control loop's counters and Omni's reachability, for `/metrics`.
    pub(crate) fn stats(&self) -> Arc<dyn crate::boot::metrics::PrometheusSource> {
        Arc::new(OmniModeMetrics {
            executor: self.executor_stats.clone(),
            reach: self.reach.clone(),
        })
    }

    /// The boot images sent by the zero-copy image path, if any ([`OmniBoot::image_routes`]).
    pub(crate) fn image_routes(&self) -> Option<Arc<dyn crate::boot::http::sendfile::ImageRoutes>> {
        self.boot.image_routes()
    }

    /// Adds Omni mode's routes (`/config`, `/assets/`, the agents' tunnel) to `router`,
    /// and Omni's reachability to its `/healthz`.
    pub(crate) fn mount(&self, router: axum::Router) -> axum::Router {
        self.tunnels
            .mount(self.boot.mount(router, Some(self.tunnels.clone())))
            .layer(axum::middleware::from_fn_with_state(
                self.reach.clone(),
                reach::healthz_layer,
            ))
    }
}

/// Omni mode's metric sources, rendered one after the other.
struct OmniModeMetrics {
    executor: Arc<crate::provider::executor::stats::ExecutorStats>,
    reach: Arc<reach::OmniReachability>,
}

impl crate::boot::metrics::PrometheusSource for OmniModeMetrics {
    fn render(&self, out: &mut String) {
        self.executor.render_prometheus(out);
        self.reach.render_prometheus(out);
    }
}

/// The agents' TLS certificates from the `--tls-*` flags: your own files, or the CA kept
/// in Omni (`client`), loaded or created there; retried while Omni is unreachable.
pub(crate) async fn prepare_tls(
    server: &ServerConfig,
    config: &OmniConfig,
    client: Option<&Client>,
) -> anyhow::Result<AgentTls> {
    let source = match &config.tls.user_certs {
        Some(u) => CertSource::Files(UserFiles {
            ca_cert: u.ca_cert.clone(),
            cert: u.cert.clone(),
            key: u.key.clone(),
        }),
        None => CertSource::Generated {
            ca_ttl: config.tls.ca_ttl,
            cert_ttl: config.tls.cert_ttl,
        },
    };
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        match AgentTls::prepare(&source, server.advertise_address.into(), client).await {
            Err(TlsError::Omni { source }) if source.is_unavailable() => {
                warn!(error = %source, retry_in = ?wait, "Omni unreachable: waiting for the agents' TLS CA");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
            other => return other.context("--tls-enabled"),
        }
    }
}

/// Registers the provider (retrying while Omni is unreachable), then keeps the
/// heartbeat going, beating at once on each send on `beats`. A refused registration is
/// logged and retried later: the boot path and the control loop run meanwhile, and Omni
/// shows the provider unhealthy.
async fn register_and_heartbeat(
    client: Client,
    info: ProviderInfo,
    beats: tokio::sync::watch::Receiver<String>,
) {
    let mut wait = std::time::Duration::from_secs(5);
    loop {
        match provider::register_with_retry(&client, &info, |_, _| {}).await {
            Ok(status) => {
                info!(
                    provider = %status.metadata.id,
                    endpoint = client.endpoint(),
                    "registered with Omni"
                );
                break;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?wait, "registering with Omni failed");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(300));
            }
        }
    }
    // No error source feeds the heartbeat: it says "healthy" while ironboot runs (an
    // unreachable Omni cannot be told otherwise), and beats again once Omni is back.
    provider::run_heartbeat(client, provider::HEARTBEAT_INTERVAL, beats).await;
}

/// The Omni boot decider, telling the control loop of each PXE boot of a machine it can
/// name (by SMBIOS UUID, Omni's machine ID): the first marks the machine initialized, and
/// each wakes its loop at once (upstream's `PXEBootEvent`).
struct ReportingPxeBoots {
    decider: Arc<OmniBootDecider>,
    executor: Arc<OmniExecutor>,
    gate: Arc<AgentGate>,
}

/// Machines named by Omni's `InfraMachine`s (the boot decisions' cache of them).
struct KnownInOmni(Arc<boot_plan::MachineStateCache>);

impl KnownMachines for KnownInOmni {
    fn is_known(&self, uuid: &str) -> bool {
        self.0.get(uuid).is_some()
    }
}

impl BootAnswerer for ReportingPxeBoots {
    fn answer<'a>(&'a self, who: &'a MachineQuery, disk: BootFromDiskMethod) -> AnswerFuture<'a> {
        Box::pin(async move {
            let answer = self.decider.answer(who, disk).await;
            if let Some(uuid) = &who.uuid {
                self.executor.event(&uuid.to_string(), Event::PxeBoot);
            }
            answer
        })
    }

    fn booted(&self, who: &MachineQuery, ip: Option<std::net::IpAddr>) {
        if let Some(uuid) = &who.uuid {
            self.gate.pxe_boot(uuid, ip);
        }
    }
}
