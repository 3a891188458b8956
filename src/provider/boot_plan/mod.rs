//! Omni-mode boot decisions: what `/ipxe/boot.ipxe` answers each
//! machine, from its state in Omni, and the routes Talos and the agent load from ironboot.
//!
//! - [`MachineStateCache`]: each machine's boot-relevant state (acceptance, cordon, the
//!   cluster's Talos version and extensions, install and wipe records, BMC configured),
//!   fed by the Omni watches through [`MachineStateCache::apply`], read without waiting
//!   on Omni.
//! - [`OmniBootDecider`]: the decision table ([`decide`], upstream's `RequiredBootMode`
//!   through [`crate::provider::lifecycle::required_boot`]) and its rendering: the Image Factory's
//!   agent-mode or Talos install image (`chain --replace <factory PXE URL>`), the local
//!   boot assets, boot from disk by `--boot-from-disk-method`, 404 for cordoned and
//!   rejected machines, and the retrying script during a factory outage or before Omni's
//!   state is loaded.
//! - [`JoinConfig`]: `GET /config`, the join configuration from Omni's
//!   `ProviderJoinConfig` (on an older Omni, rendered from its `ConnectionParams`:
//!   `legacy_join`), following its changes, plus the operator's documents from
//!   `--extra-machine-config-path` ([`ExtraDocuments`], [`OmniBoot::with_extra_documents`]).
//! - [`LocalAssets`]: `GET /assets/<name>`, the local boot assets.
//! - [`follow`]: the Omni watches feeding the cache and the join configuration.
//! - [`OmniBoot::with_factory_proxy`]: agent and install boots through ironboot's
//!   Image Factory proxy ([`crate::provider::factory_proxy`]), for iPXE builds without HTTPS.
//! - [`OmniBoot::with_agent_options`]: `--agent-test-mode` and the TLS listener
//!   (`metal.provider.address=https://…`, `talos.config.inline=`, the CA as a
//!   `TrustedRootsConfig` in `/config`), see [`crate::provider::tls`].

mod assets;
mod cache;
mod decider;
mod extra_docs;
mod feed;
mod join_config;
mod legacy_join;
#[cfg(test)]
mod tests;

pub(crate) use assets::{LocalAssets, boot_asset_names};
pub(crate) use cache::{CacheEvent, MachineStateCache};
#[cfg(test)]
pub(crate) use cache::{InfraView, MachineBootState};
pub(crate) use decider::{AgentModeOptions, AgentTlsBoot, OmniBootDecider, OmniBootError};
#[cfg(test)]
pub(crate) use decider::{Decision, decide};
pub(crate) use extra_docs::ExtraDocuments;
pub(crate) use feed::follow;
pub(crate) use join_config::JoinConfig;

use std::net::IpAddr;
use std::sync::Arc;

use crate::provider::factory_proxy::FactoryProxy;

/// Where machines in agent mode get the metal agent (Talos in agent mode) from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AgentBootSource {
    /// The Image Factory (`--image-factory-*`, `--agent-mode-talos-version`,
    /// `--secure-boot-enabled`).
    ImageFactory(crate::provider::image_factory::ImageFactorySettings),
    /// Files in a local directory (`--use-local-boot-assets`, `--boot-assets-path`).
    LocalAssets {
        /// The directory, checked at start to hold at least one complete architecture.
        path: std::path::PathBuf,
    },
}

/// Everything Omni-mode boots need, built once at start: the cache and the join
/// configuration (fed by [`follow`]), the decider (`ApiState::decider`), and the routes
/// ([`OmniBoot::mount`]).
#[derive(Debug, Clone)]
pub(crate) struct OmniBoot {
    /// Fed by [`follow`].
    pub(crate) cache: Arc<MachineStateCache>,
    /// Fed by [`follow`]; served on `/config`.
    pub(crate) join: Arc<JoinConfig>,
    /// The `boot.ipxe` decider.
    pub(crate) decider: Arc<OmniBootDecider>,
    /// `/assets/`, with `--use-local-boot-assets`.
    pub(crate) assets: Option<Arc<LocalAssets>>,
    /// `/factory/`, the Image Factory through ironboot ([`OmniBoot::with_factory_proxy`]).
    pub(crate) factory_proxy: Option<Arc<FactoryProxy>>,
}

impl OmniBoot {
    /// For provider `provider_id`, reached by machines at `advertise:port`, booting the
    /// agent from `source`.
    pub(crate) fn new(
        provider_id: &str,
        advertise: IpAddr,
        port: u16,
        source: &AgentBootSource,
    ) -> Result<Self, OmniBootError> {
        let cache = Arc::new(MachineStateCache::new());
        let decider = Arc::new(OmniBootDecider::new(
            cache.clone(),
            advertise,
            port,
            source,
            crate::provider::image_factory::DEFAULT_REQUEST_TIMEOUT,
        )?);
        let assets = match source {
            AgentBootSource::LocalAssets { path } => Some(LocalAssets::new(path.clone())),
            AgentBootSource::ImageFactory(_) => None,
        };
        Ok(Self {
            cache,
            join: JoinConfig::new(provider_id),
            decider,
            assets,
            factory_proxy: None,
        })
    }

    /// Boot agents with `options` (`--agent-test-mode`, `--tls-*`): the kernel
    /// arguments of agent boots (and, in TLS mode, `talos.config.inline=` for every boot),
    /// and in TLS mode the CA as a `TrustedRootsConfig` in `/config`.
    pub(crate) fn with_agent_options(self, options: AgentModeOptions) -> Self {
        self.join
            .set_trusted_ca(options.tls.as_ref().map(|t| t.ca_pem.clone()));
        self.decider.set_agent_options(options, self.join.clone());
        self
    }

    /// `--extra-machine-config-path`: serve `docs` (from [`ExtraDocuments::load`]) in
    /// `/config` after Omni's documents and the CA; in TLS mode they are in
    /// `talos.config.inline=` too, which encodes the served document.
    pub(crate) fn with_extra_documents(self, docs: ExtraDocuments) -> Self {
        self.join.set_extra_documents(docs);
        self
    }

    /// Boot factory images through `proxy` (machines whose iPXE has no HTTPS): agent and
    /// install boots chain to `http://<advertise>:<port>/factory/pxe/...` instead of the
    /// factory's PXE front end, and [`OmniBoot::mount`] adds the proxy's routes. Without
    /// this call (the default) machines chain to the factory directly.
    pub(crate) fn with_factory_proxy(mut self, proxy: Arc<FactoryProxy>) -> Self {
        self.decider.set_factory_proxy(true);
        // The proxy fetches only what the decider's factory client created.
        self.decider.report_schematics_to(proxy.known());
        self.factory_proxy = Some(proxy);
        self
    }

    /// The image routes for the zero-copy image path (`/assets/`, `/factory/image/`),
    /// if this set-up has any.
    pub(crate) fn image_routes(&self) -> Option<Arc<dyn crate::boot::http::sendfile::ImageRoutes>> {
        if self.assets.is_none() && self.factory_proxy.is_none() {
            return None;
        }
        Some(Arc::new(BootImages {
            assets: self.assets.clone(),
            factory: self.factory_proxy.clone(),
        }))
    }

    /// Add `/config` (binding agents to addresses in `agents`' gate) and, with local boot
    /// assets, `/assets/<name>`, with the factory proxy `/factory/...`, to `router`.
    pub(crate) fn mount(
        &self,
        router: axum::Router,
        agents: Option<crate::provider::agent::tunnel::Tunnels>,
    ) -> axum::Router {
        let router = self.join.mount(router, agents);
        let router = match &self.factory_proxy {
            Some(proxy) => proxy.mount(router),
            None => router,
        };
        match &self.assets {
            Some(assets) => assets.mount(router),
            None => router,
        }
    }
}

/// The boot images served on the zero-copy image path: local boot assets and the
/// factory cache's images.
#[derive(Debug)]
pub(crate) struct BootImages {
    /// `/assets/`.
    pub(crate) assets: Option<Arc<LocalAssets>>,
    /// `/factory/image/`.
    pub(crate) factory: Option<Arc<FactoryProxy>>,
}

impl crate::boot::http::sendfile::ImageRoutes for BootImages {
    fn resolve<'a>(
        &'a self,
        path: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = crate::boot::http::sendfile::Resolved> + Send + 'a>>
    {
        use crate::boot::http::sendfile::Resolved;
        Box::pin(async move {
            if let Some(assets) = &self.assets
                && path.starts_with("/assets/")
            {
                return assets.image_for_sendfile(path).await;
            }
            if let Some(factory) = &self.factory
                && path.starts_with("/factory/image/")
            {
                return factory.image_for_sendfile(path).await;
            }
            Resolved::NotMine
        })
    }
}
