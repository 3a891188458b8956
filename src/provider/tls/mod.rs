//! The metal agents' TLS listener (`--tls-enabled`, on `--tls-api-port`): the agent
//! tunnel's gRPC over TLS 1.3, with a certificate issued by a CA generated once and
//! stored in Omni (`TLSConfig`, shared with the Go provider), or with your own files.
//!
//! # Wiring (src/app.rs)
//!
//! ```ignore
//! use crate::provider::tls::{AgentTls, CertSource, UserFiles};
//!
//! let source = match &config.tls.user_certs {
//!     Some(u) => CertSource::Files(UserFiles {
//!         ca_cert: u.ca_cert.clone(),
//!         cert: u.cert.clone(),
//!         key: u.key.clone(),
//!     }),
//!     None => CertSource::Generated {
//!         ca_ttl: config.tls.ca_ttl,
//!         cert_ttl: config.tls.cert_ttl,
//!     },
//! };
//! // Before the routes are built: fails at start with a message naming the flag.
//! let tls = AgentTls::prepare(&source, config.advertise_address.into(), Some(&omni_client)).await?;
//! let renewal = tls.spawn_renewal(stop); // Some(JoinHandle) with the generated CA; ends when `stop` is cancelled
//! // Boot decisions: `metal.provider.address=https://…`, the CA in `/config`.
//! let boot = OmniBoot::new(...)?.with_agent_options(AgentModeOptions {
//!     test_mode: config.agent_test_mode,
//!     tls: Some(AgentTlsBoot {
//!         port: config.tls.port,
//!         skip_verify: config.tls.agent_skip_verify,
//!         ca_pem: tls.ca_pem().to_owned(),
//!     }),
//! });
//! let listener = TcpListener::bind((listen_ip, config.tls.port)).await?;
//! let router = tunnels.mount(axum::Router::new());
//! tokio::spawn(tls.serve(listener, router, gate, shutdown_future));
//! ```
//!
//! - [`AgentTls::prepare`]: generated mode loads the CA from Omni's `TLSConfig`
//!   (`tls-config`), or creates it there valid for `--tls-ca-ttl` (also replacing one that
//!   has ended, as upstream), then issues the serving certificate for the advertise IP
//!   (IP SAN) valid for `--tls-cert-ttl`. Files mode checks that the key is the
//!   certificate's, that it chains to the CA and that it is valid now for the advertise
//!   address.
//! - [`AgentTls::ca_pem`]: what Talos must trust (the join configuration's
//!   `TrustedRootsConfig` named `infra-provider-ca`).
//! - [`AgentTls::spawn_renewal`]: replaces the serving certificate once less than a tenth
//!   of its life is left; handshakes in flight keep the old one, later ones get the new.
//! - [`AgentTls::serve`]: the listener: TLS 1.3 only, ALPN `h2`, no client certificates,
//!   the connection caps and deadlines and the graceful shutdown of [`crate::boot::http::serve_with_images`].

mod ca;
mod listener;
mod store;
#[cfg(test)]
mod tests;
mod user;

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, version};
use tracing::{error, info};

pub use ca::Ca;
pub(crate) use ca::Issued;
pub use store::TLS_CONFIG_ID;
pub(crate) use store::load_or_create;
pub use user::UserFiles;

use crate::provider::omni::client::{Client, OmniError};

/// The agents' TLS listener (`--tls-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// `--tls-enabled`.
    pub(crate) enabled: bool,
    /// `--tls-api-port`.
    pub(crate) port: u16,
    /// `--tls-agent-skip-verify`.
    pub(crate) agent_skip_verify: bool,
    /// `--tls-ca-ttl`.
    pub(crate) ca_ttl: Duration,
    /// `--tls-cert-ttl`.
    pub(crate) cert_ttl: Duration,
    /// Your own certificates, instead of the CA generated and stored in Omni.
    pub(crate) user_certs: Option<UserCerts>,
}

/// `--tls-ca-cert-file`, `--tls-cert-file`, `--tls-key-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserCerts {
    /// CA certificate (PEM).
    pub(crate) ca_cert: PathBuf,
    /// Serving certificate (PEM).
    pub(crate) cert: PathBuf,
    /// Its key (PEM).
    pub(crate) key: PathBuf,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// The CA stored in Omni (created on first start), issuing short-lived certificates.
    Generated {
        /// `--tls-ca-ttl`: life of a newly created CA.
        ca_ttl: Duration,
        /// `--tls-cert-ttl`: life of each serving certificate.
        cert_ttl: Duration,
    },
    /// `--tls-ca-cert-file`, `--tls-cert-file`, `--tls-key-file`.
    Files(UserFiles),
}

/// Why the TLS listener cannot be set up. Each names the flag, file or resource.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of your own certificates is missing or unreadable.
    #[error("--{flag} {path:?}: {why}")]
    UserFile {
        flag: &'static str,
        path: PathBuf,
        why: String,
    },
    /// The key is not the certificate's.
    #[error("--tls-key-file {key:?} is not the key of the certificate in --tls-cert-file {cert:?}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    /// The certificate does not chain to the CA.
    #[error("--tls-cert-file {cert:?} is not issued by the CA in --tls-ca-cert-file {ca:?}: {why}")]
    NotIssuedByCa {
        cert: PathBuf,
        ca: PathBuf,
        why: String,
    },
    /// The certificate does not name the advertise address.
    #[error(
        "--tls-cert-file {cert:?} is not valid for the advertise address {address} \
         (--api-advertise-address; the agents dial it by IP, so the certificate needs it \
         as an IP address SAN): {why}"
    )]
    NotForAddress {
        cert: PathBuf,
        address: IpAddr,
        why: String,
    },
    /// The generated mode needs Omni, where the CA lives.
    #[error(
        "--tls-enabled without --tls-ca-cert-file/--tls-cert-file/--tls-key-file needs Omni \
         (--omni-api-endpoint): the generated CA is stored there"
    )]
    NoOmni,
    /// Reading or writing the CA in Omni.
    #[error("the agents' TLS CA (Omni resource TLSConfig {TLS_CONFIG_ID:?}): {source}")]
    Omni {
        #[source]
        source: OmniError,
    },
    /// The stored CA cannot be used (it is left as is).
    #[error(
        "the agents' TLS CA stored in Omni (resource TLSConfig {TLS_CONFIG_ID:?}) is unusable: \
         {why}; delete the resource to have a new CA made (machines then trust the new one \
         once they boot again)"
    )]
    StoredCa { why: String },
    /// Making a key or certificate failed.
    #[error("generating {what}: {why}")]
    Generate { what: &'static str, why: String },
    /// The rustls configuration.
    #[error("TLS listener configuration: {0}")]
    Config(String),
}

/// `t` as an RFC 3339 UTC time, for messages.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t}"))
}

/// The crypto provider of the project's rustls (aws-lc-rs, as reqwest's).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificate served now; swapped by the renewal.
#[derive(Debug)]
pub(crate) struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(key),
        }
    }

    /// The certificate served now.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The generated mode's issuer: the CA, the address and the certificate in use.
pub(crate) struct Renewer {
    ca: Ca,
    ip: IpAddr,
    ttl: Duration,
    provider: Arc<CryptoProvider>,
    slot: Arc<CertSlot>,
    issued: RwLock<Issued>,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer")
            .field("ip", &self.ip)
            .field("ttl", &self.ttl)
            .field(
                "issued",
                &*self.issued.read().unwrap_or_else(|p| p.into_inner()),
            )
            .finish_non_exhaustive()
    }
}

/// Longest sleep of the renewal task between checks (the wall clock may jump).
const MAX_RENEWAL_SLEEP: Duration = Duration::from_secs(3600);
/// Wait after a failed renewal.
const RENEWAL_RETRY: Duration = Duration::from_secs(30);

impl Renewer {
    /// Issue the first certificate for `ip` at `now`.
    pub(crate) fn new(
        ca: Ca,
        ip: IpAddr,
        ttl: Duration,
        now: SystemTime,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        if ca.not_after() <= now {
            return Err(TlsError::StoredCa {
                why: format!("it ended at {}", rfc3339(ca.not_after())),
            });
        }
        let issued = ca.issue(ip, now, ttl, &provider)?;
        Ok(Self {
            slot: Arc::new(CertSlot::new(issued.key.clone())),
            issued: RwLock::new(issued),
            ca,
            ip,
            ttl,
            provider,
        })
    }

    /// The certificate in use.
    pub(crate) fn issued(&self) -> Issued {
        self.issued
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The slot rustls reads.
    pub(crate) fn slot(&self) -> Arc<CertSlot> {
        self.slot.clone()
    }

    /// The CA.
    pub(crate) fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Replace the certificate if it is due at `now`; whether it was.
    pub(crate) fn renew_if_due(&self, now: SystemTime) -> Result<bool, TlsError> {
        if !self.issued().renewal_due(now) {
            return Ok(false);
        }
        if self.ca.not_after() <= now {
            return Err(TlsError::StoredCa {
                why: format!(
                    "it ended at {}; restart ironboot to have it replaced",
                    rfc3339(self.ca.not_after())
                ),
            });
        }
        let issued = self.ca.issue(self.ip, now, self.ttl, &self.provider)?;
        self.slot.replace(issued.key.clone());
        info!(
            until = %rfc3339(issued.not_after),
            "agents' TLS serving certificate renewed"
        );
        *self.issued.write().unwrap_or_else(|p| p.into_inner()) = issued;
        Ok(true)
    }

    /// How long to sleep at `now` before the next check.
    pub(crate) fn sleep_before_next(&self, now: SystemTime) -> Duration {
        self.issued()
            .renew_at()
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .clamp(Duration::from_secs(1), MAX_RENEWAL_SLEEP)
    }
}

/// The agents' TLS listener, ready to serve.
pub struct AgentTls {
    ca_pem: String,
    /// The certificate rustls serves (read by the tests; the resolver holds it too).
    #[cfg_attr(not(test), allow(dead_code))]
    slot: Arc<CertSlot>,
    renewer: Option<Arc<Renewer>>,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("generated", &self.renewer.is_some())
            .finish_non_exhaustive()
    }
}

/// TLS 1.3 only, ALPN `h2`, no client certificates, certificates from `slot`.
fn server_config(
    slot: Arc<CertSlot>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

impl AgentTls {
    /// Set up the certificates for agents dialing `advertise` (see the module docs).
    /// `client` is needed by the generated mode only.
    pub async fn prepare(
        source: &CertSource,
        advertise: IpAddr,
        client: Option<&Client>,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        match source {
            CertSource::Generated { ca_ttl, cert_ttl } => {
                let client = client.ok_or(TlsError::NoOmni)?;
                let ca = load_or_create(client, *ca_ttl).await?;
                Self::from_ca(ca, advertise, *cert_ttl, SystemTime::now(), provider)
            }
            CertSource::Files(files) => {
                let loaded = user::load(files, advertise, SystemTime::now(), &provider)?;
                info!(cert = %files.cert.display(), "agents' TLS certificate loaded from files");
                let slot = Arc::new(CertSlot::new(loaded.key));
                Ok(Self {
                    ca_pem: loaded.ca_pem,
                    config: server_config(slot.clone(), provider)?,
                    slot,
                    renewer: None,
                })
            }
        }
    }

    /// The generated mode with `ca` (already loaded), at `now`.
    pub fn from_ca(
        ca: Ca,
        advertise: IpAddr,
        cert_ttl: Duration,
        now: SystemTime,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let renewer = Arc::new(Renewer::new(
            ca,
            advertise,
            cert_ttl,
            now,
            provider.clone(),
        )?);
        info!(
            address = %advertise,
            until = %rfc3339(renewer.issued().not_after),
            "agents' TLS serving certificate issued"
        );
        let slot = renewer.slot();
        Ok(Self {
            ca_pem: renewer.ca().cert_pem().to_owned(),
            config: server_config(slot.clone(), provider)?,
            slot,
            renewer: Some(renewer),
        })
    }

    /// The CA the agents must trust, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The certificate served now.
    #[cfg(any(test, feature = "test-support"))]
    pub fn current_cert(&self) -> Arc<CertifiedKey> {
        self.slot.current()
    }

    /// The generated mode's issuer (`None` with your own files).
    #[cfg(test)]
    pub(crate) fn renewer(&self) -> Option<Arc<Renewer>> {
        self.renewer.clone()
    }

    /// With the generated CA, a task renewing the serving certificate in time until `stop`
    /// is cancelled; `None` with your own files, which are never reloaded.
    pub fn spawn_renewal(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let renewer = self.renewer.clone()?;
        Some(tokio::spawn(async move {
            // Stops only while waiting: a renewal is synchronous and never cut off.
            loop {
                let sleep = renewer.sleep_before_next(SystemTime::now());
                if stop
                    .run_until_cancelled(tokio::time::sleep(sleep))
                    .await
                    .is_none()
                {
                    return;
                }
                if let Err(e) = renewer.renew_if_due(SystemTime::now()) {
                    error!(error = %e, "agents' TLS serving certificate not renewed; retrying");
                    if stop
                        .run_until_cancelled(tokio::time::sleep(RENEWAL_RETRY))
                        .await
                        .is_none()
                    {
                        return;
                    }
                }
            }
        }))
    }

    /// Serve `router` (the agent tunnel's: `Tunnels::mount(axum::Router::new())`) over
    /// TLS on `listener`, every connection held to `gate`'s caps and deadlines (shared
    /// with the API port), until `shutdown` resolves, then finish what is in flight.
    pub fn serve(
        &self,
        listener: TcpListener,
        router: axum::Router,
        gate: Arc<crate::boot::http::server::Gate>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        listener::serve(listener, self.config.clone(), router, gate, shutdown)
    }
}
