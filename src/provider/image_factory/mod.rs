//! The Talos Image Factory: schematics for the images machines PXE-boot (the metal agent,
//! or Talos with a cluster's extensions), and the factory's iPXE URLs for them.
//!
//! Unlike the Go provider, which posts the schematic on every boot request, ironboot
//! creates each schematic once per content: [`ImageFactory::schematic_id`] keeps the
//! factory's answer under the hash of the canonical schematic ([`Schematic::content_key`]),
//! and concurrent requests for the same content wait on one POST. Failures are not
//! cached: the next request asks again.
//!
//! A factory outage gives a [`FactoryError`]; the boot handler answers the machine with
//! [`crate::boot::boot_script::retry_script`] (wait, then ask for `boot.ipxe` again), never a
//! dead end.

mod schematic;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
pub(crate) use schematic::{ContentKey, Schematic};
use tokio::sync::watch;
use tracing::{debug, warn};

/// Image Factory settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageFactorySettings {
    /// API base URL, without a trailing `/`.
    pub(crate) base_url: String,
    /// PXE front end base URL, without a trailing `/`.
    pub(crate) pxe_base_url: String,
    /// Talos version booted in agent mode.
    pub(crate) agent_mode_talos_version: String,
    /// Serve the secure-boot (UKI) PXE assets.
    pub(crate) secure_boot: bool,
}

/// How long one schematic creation may take, as the Go provider's.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest part of an error body kept in a [`FactoryError`].
const MAX_ERROR_BODY: usize = 512;

/// A machine architecture the factory builds PXE assets for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Arch {
    /// x86-64.
    Amd64,
    /// 64-bit ARM.
    Arm64,
}

impl Arch {
    /// As the Go provider reads `boot.ipxe?arch=` (iPXE's `${buildarch}`): `arm64` is
    /// arm64, anything else amd64.
    #[cfg(test)]
    pub(crate) fn from_query(arch: &str) -> Self {
        if arch == "arm64" {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }

    /// The name in factory URLs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// A schematic ID the factory returned: 64 lowercase hex digits (a SHA-256), so it is
/// safe in a URL and an iPXE script.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SchematicId(String);

impl SchematicId {
    fn parse(id: &str) -> Option<Self> {
        (id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(id.to_owned()))
    }

    /// The hex ID.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The schematic IDs ironboot vouches for: those its own [`ImageFactory`] client created
/// (and, for the factory proxy, those whose images it already cached). The factory proxy
/// fetches nothing for any other ID, so nobody on the PXE network can make ironboot
/// download (and cache) images of their choosing. Cheap to clone (one shared set); it
/// grows by one entry per distinct schematic ironboot asked for, never by request.
#[derive(Debug, Clone, Default)]
pub(crate) struct KnownSchematics(Arc<RwLock<HashSet<String>>>);

impl KnownSchematics {
    /// Vouch for `id` (64 lowercase hex digits).
    pub(crate) fn insert(&self, id: &str) {
        let mut ids = self.0.write().unwrap_or_else(|p| p.into_inner());
        if !ids.contains(id) {
            ids.insert(id.to_owned());
        }
    }

    /// Whether `id` was vouched for.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }
}

/// A failed Image Factory request, naming the URL. Every variant but
/// [`FactoryError::InvalidSchematic`] and [`FactoryError::BadTalosVersion`] is an outage
/// that may pass: answer the machine with a retrying script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FactoryError {
    /// No answer: connection refused or reset, DNS, TLS.
    #[error("Image Factory {url}: unreachable: {reason}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// What failed, with its causes.
        reason: String,
    },
    /// No complete answer in time.
    #[error("Image Factory {url}: no answer within {after:?}")]
    Timeout {
        /// The request URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// An error status other than 400.
    #[error("Image Factory {url}: HTTP {status}: {body}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// 400: the factory refused the schematic (e.g. an unknown extension).
    #[error("Image Factory {url}: invalid schematic: {details}")]
    InvalidSchematic {
        /// The request URL.
        url: String,
        /// The factory's explanation.
        details: String,
    },
    /// A success status without `{"id": "<64 hex digits>"}`.
    #[error("Image Factory {url}: unexpected answer: {reason}")]
    BadResponse {
        /// The request URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A Talos version that cannot go into a URL.
    #[error("Talos version {0:?} is not a version like v1.13.7")]
    BadTalosVersion(String),
}

impl FactoryError {
    /// Whether asking again later may succeed by itself (an outage), rather than after a
    /// change of configuration (the operator's attention: log it as an error).
    pub(crate) fn is_transient(&self) -> bool {
        !matches!(
            self,
            FactoryError::InvalidSchematic { .. } | FactoryError::BadTalosVersion(_)
        )
    }

    /// The machine's answer to `boot.ipxe` when its image could not be had: always the
    /// retrying script ([`crate::boot::boot_script::retry_script`]) on ironboot's
    /// `advertise:port`, never a dead end; a refused schematic is fixed in Omni (the
    /// cluster's extensions or kernel arguments) and the machine picks the fix up on its
    /// next try.
    pub(crate) fn retry_script(&self, advertise: IpAddr, port: u16) -> Bytes {
        crate::boot::boot_script::retry_script(advertise, port)
    }
}

/// One schematic creation's outcome, shared with everyone waiting for it.
type Outcome = Option<Result<SchematicId, FactoryError>>;

enum Entry {
    /// The factory's ID for this content.
    Ready(SchematicId),
    /// A POST is under way; its outcome arrives here.
    InFlight(watch::Receiver<Outcome>),
}

struct Inner {
    http: reqwest::Client,
    settings: ImageFactorySettings,
    schematics_url: String,
    timeout: Duration,
    cache: Mutex<HashMap<ContentKey, Entry>>,
    posts: AtomicU64,
    /// Where every created schematic's ID is also recorded (the factory proxy's
    /// allowlist), once [`ImageFactory::report_to`] named it.
    known: OnceLock<KnownSchematics>,
}

/// The Image Factory client; cheap to clone (one shared cache).
#[derive(Clone)]
pub(crate) struct ImageFactory {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFactory")
            .field("settings", &self.inner.settings)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl ImageFactory {
    /// A client of the factory in `settings`; each POST may take `timeout`
    /// ([`DEFAULT_REQUEST_TIMEOUT`] in the server).
    pub(crate) fn new(
        settings: ImageFactorySettings,
        timeout: Duration,
    ) -> Result<Self, FactoryError> {
        let schematics_url = format!("{}/schematics", settings.base_url.trim_end_matches('/'));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| FactoryError::Unreachable {
                url: schematics_url.clone(),
                reason: format!("building the HTTP client: {}", chain(&e)),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                settings,
                schematics_url,
                timeout,
                cache: Mutex::new(HashMap::new()),
                posts: AtomicU64::new(0),
                known: OnceLock::new(),
            }),
        })
    }

    /// Record the ID of every schematic this client created, and creates from now on, in
    /// `known` (the factory proxy's allowlist). A second call keeps the first set.
    pub(crate) fn report_to(&self, known: &KnownSchematics) {
        let _ = self.inner.known.set(known.clone());
        let Some(known) = self.inner.known.get() else {
            return;
        };
        // Under the cache's lock: a creation finishing now either is in the cache for
        // this loop or sees the set above.
        let cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        for entry in cache.values() {
            if let Entry::Ready(id) = entry {
                known.insert(id.as_str());
            }
        }
    }

    /// Schematic creations sent so far (for metrics and tests).
    #[cfg(test)]
    pub(crate) fn posts(&self) -> u64 {
        self.inner.posts.load(Ordering::Relaxed)
    }

    /// The factory's ID for `schematic`: from the cache, from a POST already under way for
    /// the same content, or from a new POST. A failure is not remembered.
    pub(crate) async fn schematic_id(
        &self,
        schematic: &Schematic,
    ) -> Result<SchematicId, FactoryError> {
        let key = schematic.content_key();
        loop {
            let mut rx = {
                let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                match cache.get(&key) {
                    Some(Entry::Ready(id)) => return Ok(id.clone()),
                    Some(Entry::InFlight(rx)) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        cache.insert(key, Entry::InFlight(rx.clone()));
                        // The POST runs on its own task: a caller that goes away (its HTTP
                        // request dropped) does not cancel it for the others.
                        let inner = self.inner.clone();
                        let yaml = schematic.canonical_yaml();
                        tokio::spawn(async move {
                            let outcome = inner.create(yaml).await;
                            let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                            match &outcome {
                                Ok(id) => {
                                    cache.insert(key, Entry::Ready(id.clone()));
                                    if let Some(known) = inner.known.get() {
                                        known.insert(id.as_str());
                                    }
                                }
                                Err(_) => {
                                    cache.remove(&key);
                                }
                            }
                            drop(cache);
                            let _ = tx.send(Some(outcome));
                        });
                        rx
                    }
                }
            };
            let outcome = rx.wait_for(Option::is_some).await.map(|o| o.clone());
            match outcome {
                Ok(Some(result)) => return result,
                Ok(None) => {}
                // The task ended without an outcome (the runtime is shutting down): its
                // entry is stale; drop it and try again.
                Err(_) => {
                    let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if matches!(cache.get(&key), Some(Entry::InFlight(r)) if r.same_channel(&rx)) {
                        cache.remove(&key);
                    }
                }
            }
        }
    }

    /// The factory's iPXE URL of `image`: `<pxe base>/pxe/<image path>`.
    pub(crate) fn url_of(&self, image: &PxeImage) -> String {
        image.url(&self.inner.settings.pxe_base_url)
    }

    /// The agent-mode PXE image: the agent schematic with `kernel_args`, at
    /// `--agent-mode-talos-version`.
    pub(crate) async fn agent_mode_image(
        &self,
        arch: Arch,
        kernel_args: Vec<String>,
    ) -> Result<PxeImage, FactoryError> {
        let id = self
            .schematic_id(&Schematic::agent_mode(kernel_args))
            .await?;
        PxeImage::new(
            &self.inner.settings,
            id,
            &self.inner.settings.agent_mode_talos_version,
            arch,
        )
    }

    /// The agent-mode iPXE URL ([`ImageFactory::agent_mode_image`] on the factory).
    #[cfg(test)]
    pub(crate) async fn agent_mode_url(
        &self,
        arch: Arch,
        kernel_args: Vec<String>,
    ) -> Result<String, FactoryError> {
        Ok(self.url_of(&self.agent_mode_image(arch, kernel_args).await?))
    }

    /// The PXE image of Talos `talos_version` with a cluster's `extensions` and
    /// `kernel_args`.
    pub(crate) async fn talos_image(
        &self,
        talos_version: &str,
        arch: Arch,
        extensions: Vec<String>,
        kernel_args: Vec<String>,
    ) -> Result<PxeImage, FactoryError> {
        check_talos_version(talos_version)?;
        let id = self
            .schematic_id(&Schematic {
                extra_kernel_args: kernel_args,
                official_extensions: extensions,
            })
            .await?;
        PxeImage::new(&self.inner.settings, id, talos_version, arch)
    }

    /// The iPXE URL of Talos `talos_version` ([`ImageFactory::talos_image`] on the
    /// factory).
    #[cfg(test)]
    pub(crate) async fn talos_url(
        &self,
        talos_version: &str,
        arch: Arch,
        extensions: Vec<String>,
        kernel_args: Vec<String>,
    ) -> Result<String, FactoryError> {
        Ok(self.url_of(
            &self
                .talos_image(talos_version, arch, extensions, kernel_args)
                .await?,
        ))
    }
}

/// A PXE image of the factory: its iPXE script is `<pxe base>/pxe/<schematic>/<version>/
/// <asset>`; every part is URL- and script-safe (checked on creation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PxeImage {
    /// The schematic.
    pub(crate) schematic: SchematicId,
    /// The Talos version (`v1.13.7`).
    pub(crate) talos_version: String,
    /// `metal-<arch>`, with `-secureboot` when secure boot is on.
    pub(crate) asset: String,
}

impl PxeImage {
    fn new(
        settings: &ImageFactorySettings,
        schematic: SchematicId,
        talos_version: &str,
        arch: Arch,
    ) -> Result<Self, FactoryError> {
        check_talos_version(talos_version)?;
        let secure = if settings.secure_boot {
            "-secureboot"
        } else {
            ""
        };
        Ok(Self {
            schematic,
            talos_version: talos_version.to_owned(),
            asset: format!("metal-{}{secure}", arch.as_str()),
        })
    }

    /// `<schematic>/<version>/<asset>`, the path under the factory's `/pxe/`.
    pub(crate) fn path(&self) -> String {
        format!(
            "{}/{}/{}",
            self.schematic.as_str(),
            self.talos_version,
            self.asset
        )
    }

    /// The iPXE URL under `pxe_base_url` (the factory's, or ironboot's proxy).
    pub(crate) fn url(&self, pxe_base_url: &str) -> String {
        format!("{}/pxe/{}", pxe_base_url.trim_end_matches('/'), self.path())
    }
}

impl Inner {
    /// One `POST /schematics`, as the factory's Go client sends it.
    async fn create(&self, yaml: String) -> Result<SchematicId, FactoryError> {
        let url = &self.schematics_url;
        self.posts.fetch_add(1, Ordering::Relaxed);
        debug!(%url, schematic = %yaml, "creating an Image Factory schematic");
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                FactoryError::Timeout {
                    url: url.clone(),
                    after: self.timeout,
                }
            } else {
                FactoryError::Unreachable {
                    url: url.clone(),
                    reason: chain(&e),
                }
            }
        };
        let response = self
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/yaml")
            .body(yaml)
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        let body = response.bytes().await.map_err(failed)?;
        let text = || {
            let t = String::from_utf8_lossy(&body);
            let t = t.trim();
            match t.char_indices().nth(MAX_ERROR_BODY) {
                Some((cut, _)) => format!("{}...", &t[..cut]),
                None => t.to_owned(),
            }
        };
        let outcome = if status == http::StatusCode::BAD_REQUEST {
            Err(FactoryError::InvalidSchematic {
                url: url.clone(),
                details: text(),
            })
        } else if status.is_client_error() || status.is_server_error() {
            Err(FactoryError::Status {
                url: url.clone(),
                status: status.as_u16(),
                body: text(),
            })
        } else {
            #[derive(serde::Deserialize)]
            struct Created {
                id: String,
            }
            match serde_json::from_slice::<Created>(&body) {
                Ok(created) => {
                    SchematicId::parse(&created.id).ok_or_else(|| FactoryError::BadResponse {
                        url: url.clone(),
                        reason: format!("{:?} is not a schematic ID", created.id),
                    })
                }
                Err(e) => Err(FactoryError::BadResponse {
                    url: url.clone(),
                    reason: format!("HTTP {status} without {{\"id\": ...}}: {e}"),
                }),
            }
        };
        match &outcome {
            Ok(id) => debug!(%url, id = id.as_str(), "Image Factory schematic ready"),
            Err(e) => warn!(error = %e, "Image Factory schematic creation failed"),
        }
        outcome
    }
}

/// See [`ImageFactory::pxe_url`].
#[cfg(test)]
fn pxe_url(
    settings: &ImageFactorySettings,
    id: &SchematicId,
    talos_version: &str,
    arch: Arch,
) -> Result<String, FactoryError> {
    Ok(PxeImage::new(settings, id.clone(), talos_version, arch)?.url(&settings.pxe_base_url))
}

/// A version goes into a URL path and an iPXE script: letters, digits, `.`, `-`, `+`.
fn check_talos_version(v: &str) -> Result<(), FactoryError> {
    let ok = v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(FactoryError::BadTalosVersion(v.to_owned()))
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
pub(crate) mod tests;
