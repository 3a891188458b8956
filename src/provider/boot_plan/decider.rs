//! The Omni-mode boot decision: what `boot.ipxe` answers a machine, from its state in Omni
//! (upstream `makeBootDecision` and `RequiredBootMode`, see the lifecycle rules).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;

use bytes::Bytes;
use ironboot_net::log_limit::LogLimiter;
use tracing::{error, warn};

use super::cache::{MachineBootState, MachineStateCache};
use super::join_config::JoinConfig;
use super::{AgentBootSource, boot_asset_names};
use crate::boot::boot_script::{
    Answer, AnswerFuture, BootAnswerer, BootFromDiskMethod, BootTarget, IpxeScript, KernelBoot,
    Rendered, render, retry_script_because,
};
use crate::boot::machine::{Arch, MachineQuery};
use crate::provider::image_factory::{self, FactoryError, ImageFactory, PxeImage};
use crate::provider::lifecycle::{BootDecision, Recorded, required_boot};

/// What a machine boots, before any URL is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// 404 with this message: the machine is left alone (cordoned, rejected, or not
    /// identifiable by UUID).
    Refuse(&'static str),
    /// Omni's state is not loaded yet: ask again shortly.
    NotReady,
    /// Talos in agent mode (discovery, wipes), with the user's kernel arguments.
    Agent {
        /// `InfraMachine.extra_kernel_args`.
        extra_args: Vec<String>,
    },
    /// The cluster's Talos, to be installed.
    Install {
        /// The cluster's Talos version.
        talos_version: String,
        /// The cluster's extensions.
        extensions: Vec<String>,
        /// `InfraMachine.extra_kernel_args`.
        extra_args: Vec<String>,
    },
    /// Its own disk, by `--boot-from-disk-method`.
    Disk,
}

/// 404 body for a cordoned machine (as the Go provider's).
pub(crate) const CORDONED: &str = "machine is cordoned\n";
/// 404 body for a rejected machine.
pub(crate) const REJECTED: &str = "machine is rejected\n";
/// 404 body for a request without a usable UUID.
pub(crate) const NO_UUID: &str = "Omni mode identifies machines by their SMBIOS UUID; this \
     request had none (or a placeholder one)\n";

/// The decision for a machine in `state` (`None`: unknown to Omni), once every watch is
/// `synced`. Until then every machine waits: an installed machine whose records are not
/// loaded yet must not be sent to the agent or an installer.
pub(crate) fn decide(state: Option<&MachineBootState>, synced: bool) -> Decision {
    if !synced {
        return Decision::NotReady;
    }
    let Some(state) = state else {
        return Decision::Agent {
            extra_args: Vec::new(),
        };
    };
    let Some(infra) = &state.infra else {
        // Records of ours but no infra.Machine (not joined yet, or removed): discovery.
        return Decision::Agent {
            extra_args: Vec::new(),
        };
    };
    if infra.machine.cordoned {
        return Decision::Refuse(CORDONED);
    }
    if infra.machine.acceptance == crate::provider::lifecycle::Acceptance::Rejected {
        return Decision::Refuse(REJECTED);
    }
    let extra_args = infra.extra_kernel_args.clone();
    if infra.tearing_down {
        return Decision::Agent { extra_args };
    }
    let recorded = Recorded {
        wipe: state.wipe.clone().unwrap_or_default(),
        ..Recorded::default()
    };
    match required_boot(&infra.machine, &recorded, state.bmc_configured) {
        BootDecision::AgentPxe => Decision::Agent { extra_args },
        BootDecision::TalosPxe => Decision::Install {
            talos_version: infra.machine.cluster_talos_version.clone(),
            extensions: infra.machine.extensions.clone(),
            extra_args,
        },
        BootDecision::TalosDisk => Decision::Disk,
    }
}

/// Where agent-mode boots come from.
#[derive(Debug, Clone)]
enum AgentImage {
    /// The Image Factory's agent-mode schematic.
    Factory,
    /// `--boot-assets-path`, served on `/assets/`: the command line of each architecture
    /// (`cmdline-metal-<arch>`, trimmed), `None` where that architecture is incomplete.
    Local {
        amd64: Option<String>,
        arm64: Option<String>,
    },
}

/// Why the decider could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OmniBootError {
    /// The Image Factory client.
    #[error(transparent)]
    Factory(#[from] FactoryError),
}

/// Agent-mode options beyond [`OmniBootDecider::new`]'s (upstream's `--agent-test-mode`
/// and `--tls-*`), set by [`super::OmniBoot::with_agent_options`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AgentModeOptions {
    /// `--agent-test-mode`: `metal.provider.test.mode=1`.
    pub(crate) test_mode: bool,
    /// `--tls-agent-skip-verify`: `metal.provider.tls.skip.verify=1` (added whenever the
    /// flag is set, as upstream).
    pub(crate) skip_verify: bool,
    /// `--tls-enabled`: the agents dial the TLS port.
    pub(crate) tls: Option<AgentTlsBoot>,
}

/// The agents' TLS listener as the machines see it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AgentTlsBoot {
    /// `--tls-api-port`.
    pub(crate) port: u16,
    /// The CA Talos must trust (served in `/config` and inline).
    pub(crate) ca_pem: String,
}

impl std::fmt::Debug for AgentTlsBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTlsBoot")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The agent-mode options and, in TLS mode, the join configuration that goes inline.
#[derive(Debug, Default)]
struct Mode {
    options: AgentModeOptions,
    join: Option<Arc<JoinConfig>>,
}

/// Retry reason while the join configuration that TLS mode puts inline is not known.
pub(crate) const WAITING_FOR_JOIN_CONFIG: &str =
    "waiting for the join configuration from Omni (TLS mode puts it in the kernel arguments)";

/// Retry reason when a proxied factory image could not be fetched through ironboot.
pub(crate) const PROXY_FAILED: &str = "ironboot could not fetch it from the Image Factory";

/// Label of the proxied chain's fallback.
const PROXY_FAILED_LABEL: &str = "factory_failed";

/// zstd level of the inline configuration (upstream uses its encoder's best compression).
const INLINE_ZSTD_LEVEL: i32 = 19;

/// `talos.config.inline=` value: base64 of the zstd frame of `doc` (upstream's encoding).
pub(crate) fn inline_config(doc: &[u8]) -> std::io::Result<String> {
    let compressed = zstd::bulk::compress(doc, INLINE_ZSTD_LEVEL)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(compressed))
}

/// The Omni-mode `boot.ipxe` decider.
#[derive(Debug)]
pub(crate) struct OmniBootDecider {
    cache: Arc<MachineStateCache>,
    advertise: IpAddr,
    port: u16,
    agent: AgentImage,
    /// Talos installs (and factory agent boots). `None` with local boot assets, whose
    /// configuration carries no factory (installs then wait with a retrying script).
    factory: Option<ImageFactory>,
    /// Test mode and TLS.
    mode: RwLock<Mode>,
    /// The last inline configuration, by the document it encodes.
    inline: InlineCache,
    /// Factory images through ironboot's `/factory/` routes ([`crate::provider::factory_proxy`]).
    proxied: AtomicBool,
}

/// The last document put inline and its encoding. Its `Debug` shows neither: the join
/// configuration carries the join token.
#[derive(Default)]
struct InlineCache(Mutex<Option<(Bytes, String)>>);

impl std::fmt::Debug for InlineCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InlineCache")
    }
}

/// The boot asset names of `arch` (kernel, initramfs, cmdline).
fn asset_names(arch: Arch) -> [String; 3] {
    boot_asset_names(arch.as_str())
}

impl OmniBootDecider {
    /// A decider over `cache`, telling machines to reach ironboot at `advertise:port`.
    /// With local boot assets, each architecture's command line is read now.
    pub(crate) fn new(
        cache: Arc<MachineStateCache>,
        advertise: IpAddr,
        port: u16,
        source: &AgentBootSource,
        factory_timeout: Duration,
    ) -> Result<Self, OmniBootError> {
        let (agent, factory) = match source {
            AgentBootSource::ImageFactory(settings) => (
                AgentImage::Factory,
                Some(ImageFactory::new(settings.clone(), factory_timeout)?),
            ),
            AgentBootSource::LocalAssets { path } => {
                let cmdline = |arch: Arch| {
                    let [kernel, initramfs, cmdline] = asset_names(arch);
                    let complete = [&kernel, &initramfs].iter().all(|n| path.join(n).is_file());
                    if !complete {
                        return None;
                    }
                    match std::fs::read_to_string(path.join(&cmdline)) {
                        Ok(text) => Some(text.trim().to_owned()),
                        Err(e) => {
                            warn!(path = %path.join(&cmdline).display(), error = %e, "boot asset command line unreadable");
                            None
                        }
                    }
                };
                (
                    AgentImage::Local {
                        amd64: cmdline(Arch::Amd64),
                        arm64: cmdline(Arch::Arm64),
                    },
                    None,
                )
            }
        };
        Ok(Self {
            cache,
            advertise,
            port,
            agent,
            factory,
            mode: RwLock::default(),
            inline: InlineCache::default(),
            proxied: AtomicBool::new(false),
        })
    }

    /// Boot agents with `options`; in TLS mode `join`'s document goes inline.
    pub(crate) fn set_agent_options(&self, options: AgentModeOptions, join: Arc<JoinConfig>) {
        *self.mode.write().unwrap_or_else(|p| p.into_inner()) = Mode {
            options,
            join: Some(join),
        };
    }

    /// Chain factory images through ironboot's `/factory/pxe/` route (`true`) instead of
    /// the factory's PXE front end (see [`crate::provider::factory_proxy`]).
    pub(crate) fn set_factory_proxy(&self, on: bool) {
        self.proxied.store(on, Ordering::Relaxed);
    }

    /// Record every schematic the decider's factory client creates in `known` (the
    /// factory proxy's allowlist).
    pub(crate) fn report_schematics_to(
        &self,
        known: &crate::provider::image_factory::KnownSchematics,
    ) {
        if let Some(factory) = &self.factory {
            factory.report_to(known);
        }
    }

    /// Whether factory images go through ironboot.
    pub(crate) fn factory_proxied(&self) -> bool {
        self.proxied.load(Ordering::Relaxed)
    }

    /// The agent-mode options in force.
    #[cfg(test)]
    pub(crate) fn agent_options(&self) -> AgentModeOptions {
        self.mode
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .options
            .clone()
    }

    /// `talos.config.inline=` of the join document served now; `Err`: why not (yet).
    fn inline_arg(&self, join: &JoinConfig) -> Result<String, &'static str> {
        let doc = join.current().ok_or(WAITING_FOR_JOIN_CONFIG)?;
        let mut last = self.inline.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((d, value)) = &*last
            && *d == doc
        {
            return Ok(format!("talos.config.inline={value}"));
        }
        let value = inline_config(&doc).map_err(|e| {
            error!(error = %e, "compressing the inline machine configuration failed");
            "the inline machine configuration could not be compressed"
        })?;
        *last = Some((doc, value.clone()));
        Ok(format!("talos.config.inline={value}"))
    }

    /// A decider with this factory client (tests: a stand-in factory).
    #[cfg(test)]
    pub(crate) fn with_factory(
        cache: Arc<MachineStateCache>,
        advertise: IpAddr,
        port: u16,
        factory: ImageFactory,
    ) -> Self {
        Self {
            cache,
            advertise,
            port,
            agent: AgentImage::Factory,
            factory: Some(factory),
            mode: RwLock::default(),
            inline: InlineCache::default(),
            proxied: AtomicBool::new(false),
        }
    }

    fn host(&self) -> String {
        match self.advertise {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        }
    }

    /// `talos.config=`: where every Talos booted by ironboot loads its configuration
    /// (iPXE expands `${uuid}`; the literal is part of the schematic, as upstream's).
    fn config_arg(&self) -> String {
        format!(
            "talos.config=http://{}:{}/config?u=${{uuid}}",
            self.host(),
            self.port
        )
    }

    /// Kernel arguments in the Go provider's order, so equal content gives the factory
    /// the same schematic (and ID) as it would: `talos.config=`, in TLS mode
    /// `talos.config.inline=`, for the agent `metal.provider.address=` (`https://` and the
    /// TLS port in TLS mode), `metal.provider.test.mode=1`,
    /// `metal.provider.tls.skip.verify=1`, then the console arguments, then the user's.
    /// `Err`: why the machine must ask again.
    pub(crate) fn kernel_args(
        &self,
        arch: Arch,
        agent: bool,
        extra: &[String],
    ) -> Result<Vec<String>, &'static str> {
        let (options, join) = {
            let mode = self.mode.read().unwrap_or_else(|p| p.into_inner());
            (mode.options.clone(), mode.join.clone())
        };
        let mut args = vec![self.config_arg()];
        if options.tls.is_some() {
            let join = join.as_deref().ok_or(WAITING_FOR_JOIN_CONFIG)?;
            args.push(self.inline_arg(join)?);
        }
        if agent {
            args.push(match &options.tls {
                Some(tls) => format!(
                    "metal.provider.address=https://{}:{}",
                    self.host(),
                    tls.port
                ),
                None => format!("metal.provider.address={}:{}", self.host(), self.port),
            });
            if options.test_mode {
                args.push("metal.provider.test.mode=1".to_owned());
            }
            if options.skip_verify {
                args.push("metal.provider.tls.skip.verify=1".to_owned());
            }
        }
        args.push("console=tty0".to_owned());
        args.push(
            match arch {
                Arch::Amd64 => "console=ttyS0",
                Arch::Arm64 => "console=ttyAMA0",
            }
            .to_owned(),
        );
        args.extend(extra.iter().cloned());
        Ok(args)
    }

    fn retry(&self, reason: &'static str) -> Answer {
        Answer {
            kind: "retry",
            rendered: Rendered::Script(retry_script_because(self.advertise, self.port, reason)),
            entry: None,
        }
    }

    fn factory_failed(&self, who: &MachineQuery, e: &FactoryError) -> Answer {
        // Every machine asks again every few seconds, and anyone can ask for any UUID: at
        // most one line a minute.
        static LINES: LogLimiter = LogLimiter::new(Duration::from_secs(60));
        if let Some(suppressed) = LINES.allow(std::time::Instant::now()) {
            if e.is_transient() {
                warn!(machine = %who.machine_id(), error = %e, suppressed, "Image Factory unavailable: the machine will ask again (one line a minute; `suppressed` were not logged)");
            } else {
                error!(machine = %who.machine_id(), error = %e, suppressed, "Image Factory refused the machine's image: fix it in Omni; the machine asks again (one line a minute; `suppressed` were not logged)");
            }
        }
        Answer {
            kind: "retry",
            rendered: Rendered::Script(e.retry_script(self.advertise, self.port)),
            entry: None,
        }
    }

    /// The answer for a factory image: chain to its script on the factory, or, proxied,
    /// on ironboot, falling back to the retrying script when ironboot cannot get it
    /// (the factory unreachable: a 502).
    fn factory_chain(&self, factory: &ImageFactory, image: &PxeImage) -> Answer {
        if !self.factory_proxied() {
            return Self::chain(&factory.url_of(image));
        }
        let url = crate::provider::factory_proxy::script_url(self.advertise, self.port, image);
        let retry = retry_script_because(self.advertise, self.port, PROXY_FAILED);
        let retry = String::from_utf8_lossy(&retry);
        let retry = retry.strip_prefix("#!ipxe\n").unwrap_or(&retry);
        let text = format!(
            "#!ipxe\nchain --replace {url} || goto {PROXY_FAILED_LABEL}\n:{PROXY_FAILED_LABEL}\n{retry}"
        );
        Answer {
            kind: "script",
            rendered: Rendered::Script(Bytes::from(text)),
            entry: None,
        }
    }

    fn chain(url: &str) -> Answer {
        let text = format!("#!ipxe\nchain --replace {url}\n");
        match IpxeScript::new(&text) {
            Ok(s) => Answer {
                kind: "script",
                rendered: Rendered::Script(s.bytes().clone()),
                entry: None,
            },
            // Unreachable: the text starts with the signature.
            Err(_) => Answer {
                kind: "script",
                rendered: Rendered::Script(Bytes::from(text)),
                entry: None,
            },
        }
    }

    async fn agent(&self, who: &MachineQuery, extra: &[String]) -> Answer {
        let arch = who.arch;
        let args = match self.kernel_args(arch, true, extra) {
            Ok(args) => args,
            Err(reason) => return self.retry(reason),
        };
        match &self.agent {
            AgentImage::Factory => {
                let Some(factory) = &self.factory else {
                    return self.retry("no Image Factory configured");
                };
                match factory.agent_mode_image(factory_arch(arch), args).await {
                    Ok(image) => self.factory_chain(factory, &image),
                    Err(e) => self.factory_failed(who, &e),
                }
            }
            AgentImage::Local { amd64, arm64 } => {
                let cmdline = match arch {
                    Arch::Amd64 => amd64,
                    Arch::Arm64 => arm64,
                };
                let Some(cmdline) = cmdline else {
                    error!(machine = %who.machine_id(), arch = %arch, "no local boot assets for this architecture");
                    return self.retry("no local boot assets for this architecture");
                };
                let [kernel, initramfs, _] = asset_names(arch);
                let base = format!("http://{}:{}/assets", self.host(), self.port);
                let mut line = cmdline.clone();
                for a in &args {
                    line.push(' ');
                    line.push_str(a);
                }
                match KernelBoot::new(
                    &format!("{base}/{kernel}"),
                    &[format!("{base}/{initramfs}")],
                    &line,
                ) {
                    Ok(k) => Answer {
                        kind: "kernel",
                        rendered: Rendered::Script(k.bytes().clone()),
                        entry: None,
                    },
                    Err((field, e)) => {
                        error!(machine = %who.machine_id(), %field, error = %e, "agent kernel command line refused (local boot assets or the machine's extra kernel arguments in Omni)");
                        self.retry("its kernel arguments are invalid")
                    }
                }
            }
        }
    }

    async fn install(
        &self,
        who: &MachineQuery,
        talos_version: &str,
        extensions: Vec<String>,
        extra: &[String],
    ) -> Answer {
        let Some(factory) = &self.factory else {
            error!(machine = %who.machine_id(), "a Talos install needs the Image Factory, which local boot assets do not configure");
            return self.retry("a Talos install needs the Image Factory");
        };
        let args = match self.kernel_args(who.arch, false, extra) {
            Ok(args) => args,
            Err(reason) => return self.retry(reason),
        };
        match factory
            .talos_image(talos_version, factory_arch(who.arch), extensions, args)
            .await
        {
            Ok(image) => self.factory_chain(factory, &image),
            Err(e) => self.factory_failed(who, &e),
        }
    }

    /// The answer for `who`.
    pub(crate) async fn answer_for(&self, who: &MachineQuery, disk: BootFromDiskMethod) -> Answer {
        let Some(uuid) = who.uuid else {
            return Answer {
                kind: "refused",
                rendered: Rendered::NotFound(NO_UUID),
                entry: None,
            };
        };
        let state = self.cache.get(&uuid.to_string());
        match decide(state.as_ref(), self.cache.is_synced()) {
            Decision::Refuse(msg) => Answer {
                kind: "refused",
                rendered: Rendered::NotFound(msg),
                entry: None,
            },
            Decision::NotReady => self.retry("waiting for the machine's state from Omni"),
            Decision::Agent { extra_args } => self.agent(who, &extra_args).await,
            Decision::Install {
                talos_version,
                extensions,
                extra_args,
            } => {
                self.install(who, &talos_version, extensions, &extra_args)
                    .await
            }
            Decision::Disk => Answer {
                kind: "disk",
                rendered: render(&BootTarget::Disk, disk),
                entry: None,
            },
        }
    }
}

impl BootAnswerer for OmniBootDecider {
    fn answer<'a>(&'a self, who: &'a MachineQuery, disk: BootFromDiskMethod) -> AnswerFuture<'a> {
        Box::pin(self.answer_for(who, disk))
    }
}

fn factory_arch(arch: Arch) -> image_factory::Arch {
    match arch {
        Arch::Amd64 => image_factory::Arch::Amd64,
        Arch::Arm64 => image_factory::Arch::Arm64,
    }
}
