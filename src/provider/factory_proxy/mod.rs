//! The Image Factory through ironboot: its PXE scripts and boot images served over plain
//! HTTP on `--api-port`, the images cached on disk.
//!
//! Omni-mode boots chain to the factory's PXE front end (`https://pxe.factory.talos.dev/
//! pxe/<schematic>/<version>/metal-<arch>`), whose script loads the kernel and initramfs
//! from `https://…/image/<schematic>/<version>/…`. Debian's iPXE has no HTTPS, so with the
//! proxy on, the decider chains to ironboot instead
//! ([`crate::provider::boot_plan::OmniBoot::with_factory_proxy`]):
//!
//! | route | answer |
//! |---|---|
//! | `GET /factory/pxe/<schematic>/<version>/<asset>` | the factory's script, its image URLs rewritten to the route below and a retry added for when they fail ([`script`]); kept [`Options::script_ttl`] |
//! | `GET`/`HEAD /factory/image/<schematic>/<version>/<name>` | the image, from the cache or downloaded once for every request ([`cache`]); single ranges of cached images |
//!
//! Only the factory of the configuration is reached, only under `/pxe/` and `/image/`,
//! only with checked segments ([`path`]), only for schematics ironboot vouches for
//! ([`KnownSchematics`]: created by its own Image Factory client, or already in its cache;
//! any other ID is a `404` without a request to the factory) and never with the request's
//! query: ironboot is no open proxy. A factory that cannot be reached is a `502` with the reason in plain
//! text (`404` passes through); the machine's retry script then applies.

pub(crate) mod cache;
mod path;
mod script;
mod stats;
#[cfg(test)]
mod tests;

use crate::boot::http::sendfile::{ImageFile, Resolved};
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, warn};

pub(crate) use cache::DEFAULT_MAX_BYTES;
use cache::{ImageCache, Upstream};
use path::{AssetPath, Kind, PathError};
pub(crate) use script::BadFactoryUrl;
use script::Rewriter;
pub(crate) use stats::FactoryProxyStats;
use stats::Served;

/// `--image-factory-proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FactoryProxyMode {
    /// When the iPXE binaries cannot fetch `https://`.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

use crate::provider::image_factory::ImageFactorySettings;
use crate::provider::image_factory::{KnownSchematics, PxeImage};

/// The cache directory under `--state-dir`.
pub(crate) const CACHE_DIR_NAME: &str = "factory-cache";
/// Retry reason in the factory script's fallback.
pub(crate) const IMAGE_FAILED: &str =
    "ironboot could not fetch its kernel or initramfs from the Image Factory";
/// Longest factory script accepted.
const MAX_SCRIPT_BYTES: usize = 64 << 10;

/// Whether `auto` turns the proxy on: the UEFI iPXE ironboot serves cannot fetch
/// `https://` URLs (Debian's builds).
pub(crate) fn ipxe_needs_proxy(files: &ironboot_net::files::FileSet) -> bool {
    crate::boot::boot_files::efi_ipxe_speaks_https(files) == Some(false)
}

/// `http://<advertise>:<port>/factory`: where machines reach the proxy.
pub(crate) fn proxy_base(advertise: IpAddr, port: u16) -> String {
    match advertise {
        IpAddr::V4(a) => format!("http://{a}:{port}/factory"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}/factory"),
    }
}

/// The proxied iPXE URL of `image`: `http://<advertise>:<port>/factory/pxe/<schematic>/
/// <version>/<asset>`.
pub(crate) fn script_url(advertise: IpAddr, port: u16, image: &PxeImage) -> String {
    image.url(&proxy_base(advertise, port))
}

/// Tuning of [`FactoryProxy`].
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Where images are kept (`<state-dir>/factory-cache`).
    pub(crate) cache_dir: PathBuf,
    /// Bound of the cache's complete images.
    pub(crate) max_cache_bytes: u64,
    /// Connecting to the factory.
    pub(crate) connect_timeout: Duration,
    /// A whole script request.
    pub(crate) script_timeout: Duration,
    /// Silence from the factory during an image download (it may build the image first).
    pub(crate) read_timeout: Duration,
    /// How long a fetched script is served again without asking the factory.
    pub(crate) script_ttl: Duration,
}

impl Options {
    /// Defaults, caching in `cache_dir`.
    pub(crate) fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            max_cache_bytes: DEFAULT_MAX_BYTES,
            connect_timeout: Duration::from_secs(10),
            script_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(300),
            script_ttl: Duration::from_secs(60),
        }
    }
}

/// A failed fetch from the factory, naming the URL (or the cache file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No answer: connection refused or reset, DNS, TLS.
    #[error("Image Factory {url}: unreachable: {reason}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// What failed, with its causes.
        reason: String,
    },
    /// No answer in time.
    #[error("Image Factory {url}: no answer in time")]
    Timeout {
        /// The request URL.
        url: String,
    },
    /// 404.
    #[error("Image Factory {url}: not found")]
    NotFound {
        /// The request URL.
        url: String,
    },
    /// Another error status.
    #[error("Image Factory {url}: HTTP {status}")]
    Status {
        /// The request URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The body broke off.
    #[error("Image Factory {url}: the transfer broke off after {got} bytes: {reason}")]
    Interrupted {
        /// The request URL.
        url: String,
        /// Bytes received.
        got: u64,
        /// What failed.
        reason: String,
    },
    /// Fewer bytes than announced.
    #[error("Image Factory {url}: {got} bytes of the {expected} announced")]
    Truncated {
        /// The request URL.
        url: String,
        /// Bytes received.
        got: u64,
        /// `Content-Length`.
        expected: u64,
    },
    /// Larger than ironboot accepts.
    #[error("Image Factory {url}: more than {limit} bytes")]
    TooLarge {
        /// The request URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// A script route answered something else.
    #[error("Image Factory {url}: the answer is not an iPXE script")]
    NotAScript {
        /// The request URL.
        url: String,
    },
    /// Writing the cache failed.
    #[error("Image Factory cache {path}: {reason}")]
    Disk {
        /// The file.
        path: String,
        /// The error.
        reason: String,
    },
    /// The download's task ended without an outcome (shutting down).
    #[error("Image Factory {url}: the download was abandoned")]
    Abandoned {
        /// The request URL.
        url: String,
    },
}

impl UpstreamError {
    fn from_reqwest(url: &str, e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            UpstreamError::Timeout {
                url: url.to_owned(),
            }
        } else {
            UpstreamError::Unreachable {
                url: url.to_owned(),
                reason: error_chain(e),
            }
        }
    }

    /// The machine's status: 404 passes through, a cache failure is ironboot's (500),
    /// anything else is a bad gateway.
    fn status(&self) -> StatusCode {
        match self {
            UpstreamError::NotFound { .. } => StatusCode::NOT_FOUND,
            UpstreamError::Disk { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

use crate::provider::image_factory::chain as error_chain;

/// Why the proxy could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FactoryProxyError {
    /// `--image-factory-base-url` / `--image-factory-pxe-base-url`.
    #[error(transparent)]
    Url(#[from] BadFactoryUrl),
    /// The cache directory.
    #[error("Image Factory cache {path}: {source}")]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP client.
    #[error("building the HTTP client for the Image Factory: {0}")]
    Client(String),
}

type ScriptOutcome = Option<Result<Bytes, UpstreamError>>;

enum ScriptEntry {
    Ready { at: Instant, script: Bytes },
    InFlight(watch::Receiver<ScriptOutcome>),
}

/// The proxy (see the module documentation). Shared as `Arc<FactoryProxy>`.
pub(crate) struct FactoryProxy {
    upstream: Upstream,
    rewriter: Rewriter,
    /// ironboot's retrying script without its `#!ipxe` line, run when an image fails.
    fallback: String,
    options: Options,
    scripts: Mutex<HashMap<AssetPath, ScriptEntry>>,
    images: Arc<ImageCache>,
    stats: Arc<FactoryProxyStats>,
    /// The schematics whose scripts and images may be fetched.
    known: KnownSchematics,
}

impl std::fmt::Debug for FactoryProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FactoryProxy")
            .field("upstream", &self.upstream.base)
            .field("cache", &self.images.dir())
            .finish_non_exhaustive()
    }
}

fn plain(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        msg,
    )
        .into_response()
}

impl FactoryProxy {
    /// The proxy of the factory in `settings`, reached by machines at `advertise:port`;
    /// opens (and trims) the cache in `options.cache_dir`.
    pub(crate) fn new(
        settings: &ImageFactorySettings,
        advertise: IpAddr,
        port: u16,
        options: Options,
    ) -> Result<Arc<Self>, FactoryProxyError> {
        let rewriter = Rewriter::new(
            &[&settings.pxe_base_url, &settings.base_url],
            proxy_base(advertise, port),
        )?;
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .build()
            .map_err(|e| FactoryProxyError::Client(error_chain(&e)))?;
        let upstream = Upstream {
            client,
            base: settings.pxe_base_url.trim_end_matches('/').to_owned(),
        };
        let stats = Arc::new(FactoryProxyStats::default());
        let images = ImageCache::open(
            options.cache_dir.clone(),
            options.max_cache_bytes,
            upstream.clone(),
            stats.clone(),
        )
        .map_err(|source| FactoryProxyError::CacheDir {
            path: options.cache_dir.clone(),
            source,
        })?;
        // Cached images were fetched for schematics ironboot vouched for in an earlier
        // run: machines booting across a restart keep getting them.
        let known = KnownSchematics::default();
        if let Ok(entries) = std::fs::read_dir(&options.cache_dir) {
            for e in entries.flatten() {
                if let Some(p) = e.file_name().to_str().and_then(AssetPath::from_cache_name) {
                    known.insert(p.schematic());
                }
            }
        }
        let fallback =
            crate::boot::boot_script::retry_script_because(advertise, port, IMAGE_FAILED);
        let fallback = String::from_utf8_lossy(&fallback);
        let fallback = fallback
            .strip_prefix("#!ipxe\n")
            .unwrap_or(&fallback)
            .to_owned();
        Ok(Arc::new(Self {
            upstream,
            rewriter,
            fallback,
            options,
            scripts: Mutex::new(HashMap::new()),
            images: Arc::new(images),
            stats,
            known,
        }))
    }

    /// The counters, for `/metrics`.
    pub(crate) fn stats(&self) -> Arc<FactoryProxyStats> {
        self.stats.clone()
    }

    /// The schematics the proxy fetches; the Image Factory client adds the IDs it
    /// creates ([`crate::provider::image_factory::ImageFactory::report_to`]).
    pub(crate) fn known(&self) -> &KnownSchematics {
        &self.known
    }

    /// Add `/factory/pxe/...` and `/factory/image/...` to `router`.
    pub(crate) fn mount(self: &Arc<Self>, router: Router) -> Router {
        let scripts = self.clone();
        let images = self.clone();
        router
            .route(
                "/factory/pxe/{schematic}/{version}/{name}",
                get(
                    move |Path((s, v, n)): Path<(String, String, String)>| async move {
                        scripts.serve_script(&s, &v, &n).await
                    },
                ),
            )
            .route(
                "/factory/image/{schematic}/{version}/{name}",
                get(
                    move |Path((s, v, n)): Path<(String, String, String)>,
                          headers: HeaderMap| async move {
                        images.serve_image(&s, &v, &n, &headers).await
                    },
                ),
            )
    }

    /// `path` (`/factory/image/<schematic>/<version>/<name>`) for the zero-copy image
    /// path: the image's open file (complete or still downloading), or the same error
    /// answers as the route's handler. Paths with escapes are left to the handler (its
    /// extractor decodes them).
    pub(crate) async fn image_for_sendfile(self: &Arc<Self>, path: &str) -> Resolved {
        let Some(rest) = path.strip_prefix("/factory/image/") else {
            return Resolved::NotMine;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let [s, v, n] = parts[..] else {
            return Resolved::NotMine;
        };
        if rest.contains('%') {
            return Resolved::NotMine;
        }
        let path = match AssetPath::new(Kind::Image, s, v, n) {
            Ok(p) => p,
            Err(e) => return Resolved::Answer(self.refused(Kind::Image, &e)),
        };
        if let Some(refused) = self.unknown(&path) {
            return Resolved::Answer(refused);
        }
        let source = match self.images.get(&path).await {
            Ok(source) => source,
            Err(e) => return Resolved::Answer(self.failed(Kind::Image, &e)),
        };
        self.stats.request(Kind::Image, source.served);
        let (file, follow, len) = source.into_parts();
        let stats = self.stats.clone();
        Resolved::File(ImageFile {
            file,
            len,
            follow,
            sent: Some(Box::new(move |n| stats.served_bytes(n))),
        })
    }

    fn refused(&self, kind: Kind, e: &PathError) -> Response {
        self.stats.request(kind, Served::Error);
        plain(StatusCode::BAD_REQUEST, format!("ironboot: {e}\n"))
    }

    /// `None` if ironboot vouches for `path`'s schematic, else the `404` (counted; no
    /// log line: anyone on the network can send these).
    fn unknown(&self, path: &AssetPath) -> Option<Response> {
        if self.known.contains(path.schematic()) {
            return None;
        }
        self.stats.unknown_schematic(path.kind());
        Some(plain(
            StatusCode::NOT_FOUND,
            format!(
                "ironboot: schematic {} was not created by ironboot\n",
                path.schematic()
            ),
        ))
    }

    fn failed(&self, kind: Kind, e: &UpstreamError) -> Response {
        self.stats.request(kind, Served::Error);
        plain(e.status(), format!("ironboot: {e}\n"))
    }

    async fn serve_script(self: &Arc<Self>, s: &str, v: &str, n: &str) -> Response {
        let path = match AssetPath::new(Kind::Script, s, v, n) {
            Ok(p) => p,
            Err(e) => return self.refused(Kind::Script, &e),
        };
        if let Some(refused) = self.unknown(&path) {
            return refused;
        }
        match self.script(&path).await {
            (Ok(script), served) => {
                self.stats.request(Kind::Script, served);
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    )],
                    script,
                )
                    .into_response()
            }
            (Err(e), _) => self.failed(Kind::Script, &e),
        }
    }

    /// The rewritten script at `path`: kept for [`Options::script_ttl`]; concurrent
    /// requests share one fetch; failures are not kept.
    async fn script(self: &Arc<Self>, path: &AssetPath) -> (Result<Bytes, UpstreamError>, Served) {
        loop {
            let (mut rx, served) = {
                let mut scripts = self.scripts.lock().unwrap_or_else(|p| p.into_inner());
                match scripts.get(path) {
                    Some(ScriptEntry::Ready { at, script })
                        if at.elapsed() < self.options.script_ttl =>
                    {
                        return (Ok(script.clone()), Served::Hit);
                    }
                    Some(ScriptEntry::InFlight(rx)) => (rx.clone(), Served::Shared),
                    _ => {
                        let ttl = self.options.script_ttl;
                        scripts.retain(|_, e| match e {
                            ScriptEntry::Ready { at, .. } => at.elapsed() < ttl,
                            ScriptEntry::InFlight(_) => true,
                        });
                        let (tx, rx) = watch::channel(None);
                        scripts.insert(path.clone(), ScriptEntry::InFlight(rx.clone()));
                        self.stats.fetch_started(Kind::Script);
                        let me = self.clone();
                        let path = path.clone();
                        tokio::spawn(async move {
                            let outcome = me.fetch_script(&path).await;
                            let mut scripts = me.scripts.lock().unwrap_or_else(|p| p.into_inner());
                            match &outcome {
                                Ok(script) => {
                                    scripts.insert(
                                        path,
                                        ScriptEntry::Ready {
                                            at: Instant::now(),
                                            script: script.clone(),
                                        },
                                    );
                                }
                                Err(e) => {
                                    me.stats.upstream_error();
                                    warn!(error = %e, "Image Factory PXE script unavailable");
                                    scripts.remove(&path);
                                }
                            }
                            drop(scripts);
                            let _ = tx.send(Some(outcome));
                        });
                        (rx, Served::Miss)
                    }
                }
            };
            match rx.wait_for(Option::is_some).await.map(|o| o.clone()) {
                Ok(Some(outcome)) => return (outcome, served),
                Ok(None) => {}
                Err(_) => {
                    let mut scripts = self.scripts.lock().unwrap_or_else(|p| p.into_inner());
                    if matches!(scripts.get(path), Some(ScriptEntry::InFlight(r)) if r.same_channel(&rx))
                    {
                        scripts.remove(path);
                    }
                }
            }
        }
    }

    /// GET the factory's script and rewrite it.
    async fn fetch_script(&self, path: &AssetPath) -> Result<Bytes, UpstreamError> {
        let url = path.url(&self.upstream.base);
        debug!(%url, "fetching an Image Factory PXE script");
        let mut response = self
            .upstream
            .client
            .get(&url)
            .timeout(self.options.script_timeout)
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&url, &e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(UpstreamError::NotFound { url });
        }
        if !status.is_success() {
            return Err(UpstreamError::Status {
                url,
                status: status.as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&url, &e))?
        {
            if body.len() + chunk.len() > MAX_SCRIPT_BYTES {
                return Err(UpstreamError::TooLarge {
                    url,
                    limit: MAX_SCRIPT_BYTES as u64,
                });
            }
            body.extend_from_slice(&chunk);
        }
        let text = match std::str::from_utf8(&body) {
            Ok(t) if t.starts_with("#!ipxe") => t,
            _ => return Err(UpstreamError::NotAScript { url }),
        };
        let rewritten = self.rewriter.rewrite(text, path);
        if !rewritten.left.is_empty() {
            warn!(%url, left = ?rewritten.left, "the Image Factory's PXE script names URLs on the factory ironboot does not proxy: machines without HTTPS cannot load them");
        }
        debug!(%url, rewritten = rewritten.rewritten, "Image Factory PXE script rewritten");
        match script::with_fallback(&rewritten.text, &self.fallback) {
            Some(text) => Ok(Bytes::from(text)),
            None => {
                warn!(%url, "the Image Factory's PXE script has an unexpected shape: served without ironboot's retry on failure");
                Ok(Bytes::from(rewritten.text))
            }
        }
    }

    async fn serve_image(
        self: &Arc<Self>,
        s: &str,
        v: &str,
        n: &str,
        headers: &HeaderMap,
    ) -> Response {
        let path = match AssetPath::new(Kind::Image, s, v, n) {
            Ok(p) => p,
            Err(e) => return self.refused(Kind::Image, &e),
        };
        if let Some(refused) = self.unknown(&path) {
            return refused;
        }
        let source = match self.images.get(&path).await {
            Ok(source) => source,
            Err(e) => return self.failed(Kind::Image, &e),
        };
        self.stats.request(Kind::Image, source.served);
        let range = match (source.complete(), source.len) {
            (true, Some(len)) => parse_range(headers.get(header::RANGE), len),
            _ => RangeAnswer::Full,
        };
        let len = source.len;
        let (status, range, body_len) = match range {
            RangeAnswer::Full => (StatusCode::OK, None, len),
            RangeAnswer::Partial(r) => (
                StatusCode::PARTIAL_CONTENT,
                Some(r.clone()),
                Some(r.end - r.start),
            ),
            RangeAnswer::Unsatisfiable => {
                let mut resp = plain(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range not satisfiable\n".to_owned(),
                );
                if let Some(v) =
                    len.and_then(|l| HeaderValue::from_str(&format!("bytes */{l}")).ok())
                {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        };
        let complete = source.complete();
        let rx = source.stream(range.clone(), self.stats.clone());
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut response = (status, body).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Some(n) = body_len {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        if complete {
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        if let (Some(r), Some(len)) = (range, len)
            && let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{len}", r.start, r.end - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        response
    }
}

/// A `Range` header against an image of known length.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RangeAnswer {
    /// None, or one ironboot does not serve (several ranges, other units): 200.
    Full,
    /// One satisfiable range: 206.
    Partial(Range<u64>),
    /// Starts past the end: 416.
    Unsatisfiable,
}

/// `bytes=a-b`, `bytes=a-` and `bytes=-n` (RFC 9110 lets a server ignore the rest).
fn parse_range(value: Option<&HeaderValue>, len: u64) -> RangeAnswer {
    let Some(spec) = value.and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Full;
    };
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    let Some((a, b)) = set.split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (a, b) {
        ("", n) => match num(n) {
            None => RangeAnswer::Full,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial(len.saturating_sub(n)..len),
        },
        (a, b) => match (num(a), if b.is_empty() { Some(u64::MAX) } else { num(b) }) {
            (Some(a), Some(b)) if a <= b => {
                if a >= len {
                    RangeAnswer::Unsatisfiable
                } else {
                    RangeAnswer::Partial(a..b.saturating_add(1).min(len))
                }
            }
            _ => RangeAnswer::Full,
        },
    }
}
