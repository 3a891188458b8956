//! `GET /assets/<relative path>` in standalone mode (`--use-local-boot-assets
//! --boot-assets-path DIR`): every regular file under DIR, subdirectories included, so an
//! inventory's `kernel` and `initrd` can boot machines from ironboot itself (a Talos
//! kernel and initramfs, say) without another web server.
//!
//! Which requests reach a file: the path after `/assets/` (percent-decoded) is split at
//! `/`; an empty path, a `..` or `.` segment, an empty segment (so `/assets//etc/passwd`,
//! an absolute path, is refused) or a NUL byte is refused before the file system is
//! touched. The rest is joined to DIR and resolved with `canonicalize`, which follows
//! every symlink; the result must still lie under DIR's own canonical path, else it is
//! refused as an escape. Symlinks that stay inside DIR are followed (sites link
//! `vmlinuz` to the current version). Canonicalize plus a prefix check was chosen over
//! `openat2(RESOLVE_BENEATH)` because it needs no `unsafe` nor a new dependency, and the
//! callers it guards against are network clients, who cannot change DIR between the check
//! and the open; the operator's own changes to DIR are trusted. Directories are refused
//! (no listings), as are other non-regular files (a FIFO would block the reader).
//!
//! Every refusal is a plain `404` (a client learns nothing about what exists outside DIR)
//! and is counted in `ironboot_assets_refused_total{reason=...}`; nothing is logged per
//! request. The bytes themselves are sent by [`send_file`], the one place that streams an
//! opened file.

use crate::boot::http::sendfile::{ImageFile, Resolved};
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ironboot_net::log_limit::LogLimiter;
use tokio_util::io::ReaderStream;

use crate::boot::metrics::PrometheusSource;

/// Why a request under `/assets/` got no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// A `..` or `.` segment.
    #[error("the path has a '..' or '.' segment")]
    DotSegment,
    /// An empty segment: a leading `/` (an absolute path) or `//`.
    #[error("the path is absolute or has an empty segment")]
    Absolute,
    /// A NUL byte, which no file name holds.
    #[error("the path has a NUL byte")]
    BadName,
    /// A symlink whose target lies outside the asset directory.
    #[error("the path resolves outside the asset directory")]
    Escape,
    /// A directory (or the asset root itself): no listings.
    #[error("the path names a directory")]
    Directory,
    /// A FIFO, socket or device.
    #[error("the path names no regular file")]
    NotRegular,
    /// Nothing there.
    #[error("no such file")]
    NotFound,
    /// The file exists but cannot be read.
    #[error("the file cannot be read")]
    Unreadable,
}

impl Refused {
    const ALL: [Refused; 8] = [
        Refused::DotSegment,
        Refused::Absolute,
        Refused::BadName,
        Refused::Escape,
        Refused::Directory,
        Refused::NotRegular,
        Refused::NotFound,
        Refused::Unreadable,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::DotSegment => "dot_segment",
            Refused::Absolute => "absolute",
            Refused::BadName => "bad_name",
            Refused::Escape => "escape",
            Refused::Directory => "directory",
            Refused::NotRegular => "not_regular",
            Refused::NotFound => "not_found",
            Refused::Unreadable => "unreadable",
        }
    }

    fn index(self) -> usize {
        Refused::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// What `/assets/` answered, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct AssetCounters {
    served: AtomicU64,
    refused: [AtomicU64; Refused::ALL.len()],
}

impl AssetCounters {
    /// Requests refused for `reason` so far.
    pub(crate) fn refused(&self, reason: Refused) -> u64 {
        self.refused[reason.index()].load(Relaxed)
    }

    /// Files answered so far.
    pub(crate) fn served(&self) -> u64 {
        self.served.load(Relaxed)
    }
}

impl PrometheusSource for AssetCounters {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP ironboot_assets_served_total Files answered on /assets/ (standalone mode).\n\
             # TYPE ironboot_assets_served_total counter\n\
             ironboot_assets_served_total {}",
            self.served()
        );
        out.push_str(
            "# HELP ironboot_assets_refused_total Requests on /assets/ answered 404, by reason.\n\
             # TYPE ironboot_assets_refused_total counter\n",
        );
        for reason in Refused::ALL {
            let _ = writeln!(
                out,
                "ironboot_assets_refused_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.refused(reason)
            );
        }
    }
}

/// The asset tree of standalone mode: a directory and what was answered from it.
#[derive(Debug)]
pub(crate) struct AssetTree {
    /// DIR, canonical: every resolved file must lie under it.
    root: PathBuf,
    counters: Arc<AssetCounters>,
    /// Files that exist but cannot be read are the operator's to fix: logged, at most
    /// one line a minute (anyone can ask for them again and again).
    unreadable_log: LogLimiter,
}

/// Why the asset directory cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("--boot-assets-path {path}: {source}")]
pub(crate) struct AssetDirError {
    /// The directory given.
    pub(crate) path: PathBuf,
    /// Why it cannot be resolved.
    pub(crate) source: std::io::Error,
}

impl AssetTree {
    /// Serve the files under `dir` (resolved once to its canonical path).
    pub(crate) fn new(dir: &Path) -> Result<Arc<Self>, AssetDirError> {
        let root = dir.canonicalize().map_err(|source| AssetDirError {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Arc::new(Self {
            root,
            counters: Arc::new(AssetCounters::default()),
            unreadable_log: LogLimiter::new(Duration::from_secs(60)),
        }))
    }

    /// The counters, for the metrics registry.
    pub(crate) fn counters(&self) -> Arc<AssetCounters> {
        self.counters.clone()
    }

    /// Open the file `rel` (the request path after `/assets/`, percent-decoded) names, with
    /// its length. Blocking: it touches the file system.
    pub(crate) fn open(&self, rel: &str) -> Result<(File, u64), Refused> {
        let joined = self.root.join(checked_relative(rel)?);
        let resolved = match joined.canonicalize() {
            Ok(p) => p,
            Err(e) => return Err(self.io_refusal(&joined, &e)),
        };
        if !resolved.starts_with(&self.root) {
            return Err(Refused::Escape);
        }
        let meta = std::fs::metadata(&resolved).map_err(|e| self.io_refusal(&resolved, &e))?;
        if meta.is_dir() {
            return Err(Refused::Directory);
        }
        if !meta.is_file() {
            return Err(Refused::NotRegular);
        }
        let file = File::open(&resolved).map_err(|e| self.io_refusal(&resolved, &e))?;
        // What was opened is what is sent: checked again on the descriptor.
        let meta = file
            .metadata()
            .map_err(|e| self.io_refusal(&resolved, &e))?;
        if !meta.is_file() {
            return Err(Refused::NotRegular);
        }
        Ok((file, meta.len()))
    }

    /// The refusal for an I/O error on `path`: nothing there, or a file that cannot be
    /// read (logged, rate-limited).
    fn io_refusal(&self, path: &Path, e: &std::io::Error) -> Refused {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::NotFound | ErrorKind::NotADirectory => Refused::NotFound,
            _ => {
                if let Some(suppressed) = self.unreadable_log.allow(Instant::now()) {
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        suppressed,
                        "boot asset unreadable: answered 404 (one line a minute; \
                         `suppressed` were not logged)"
                    );
                }
                Refused::Unreadable
            }
        }
    }

    /// Answer `GET /assets/<rel>`: the file, or a counted `404`.
    async fn answer(self: Arc<Self>, rel: String) -> Response {
        let me = self.clone();
        let opened = tokio::task::spawn_blocking(move || me.open(&rel))
            .await
            .unwrap_or(Err(Refused::Unreadable));
        match opened {
            Ok((file, len)) => {
                self.counters.served.fetch_add(1, Relaxed);
                send_file(file, len)
            }
            Err(reason) => self.refuse(reason),
        }
    }

    fn refuse(&self, reason: Refused) -> Response {
        self.counters.refused[reason.index()].fetch_add(1, Relaxed);
        (
            StatusCode::NOT_FOUND,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            "no such boot asset\n",
        )
            .into_response()
    }

    /// Add `GET /assets/<path>` (and `/assets`, `/assets/`, refused as directory
    /// listings) to `router`.
    pub(crate) fn mount(self: &Arc<Self>, router: Router) -> Router {
        let files = self.clone();
        let root = self.clone();
        router
            .route(
                "/assets/{*path}",
                get(move |uri: Uri| {
                    let files = files.clone();
                    async move {
                        let raw = uri.path().strip_prefix("/assets/").unwrap_or_default();
                        match percent_decoded(raw) {
                            Some(rel) => files.answer(rel).await,
                            None => files.refuse(Refused::BadName),
                        }
                    }
                }),
            )
            .route(
                "/assets/",
                get({
                    let root = root.clone();
                    move || async move { root.refuse(Refused::Directory) }
                }),
            )
            .route(
                "/assets",
                get(move || async move { root.refuse(Refused::Directory) }),
            )
    }
}

/// The asset tree on the zero-copy image path (`crate::boot::http::sendfile`): the same
/// checks, counters and `404`s as the route's handler, the file sent with `sendfile`.
#[derive(Debug)]
pub(crate) struct AssetImages(pub(crate) Arc<AssetTree>);

impl crate::boot::http::sendfile::ImageRoutes for AssetImages {
    fn resolve<'a>(
        &'a self,
        path: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Resolved> + Send + 'a>> {
        Box::pin(async move {
            let Some(raw) = path.strip_prefix("/assets/") else {
                // `/assets` itself and other routes: the router's.
                return Resolved::NotMine;
            };
            let Some(rel) = percent_decoded(raw) else {
                return Resolved::Answer(self.0.refuse(Refused::BadName));
            };
            let tree = self.0.clone();
            let opened = tokio::task::spawn_blocking(move || tree.open(&rel))
                .await
                .unwrap_or(Err(Refused::Unreadable));
            match opened {
                Ok((file, len)) => {
                    self.0.counters.served.fetch_add(1, Relaxed);
                    Resolved::File(ImageFile {
                        file: Arc::new(file),
                        len: Some(len),
                        follow: None,
                        sent: None,
                    })
                }
                Err(reason) => Resolved::Answer(self.0.refuse(reason)),
            }
        })
    }
}

/// `rel` as a path relative to the asset root, or why it is refused: no `..` or `.`
/// segments, no empty segment (a leading `/` or `//`), no NUL byte.
fn checked_relative(rel: &str) -> Result<&Path, Refused> {
    if rel.is_empty() {
        return Err(Refused::Directory);
    }
    if rel.contains('\0') {
        return Err(Refused::BadName);
    }
    let mut segments = rel.split('/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            ".." | "." => return Err(Refused::DotSegment),
            // A trailing `/` names a directory; an empty segment elsewhere an absolute
            // path or `//`.
            "" if segments.peek().is_none() => return Err(Refused::Directory),
            "" => return Err(Refused::Absolute),
            _ => {}
        }
    }
    let path = Path::new(rel);
    // What the checks above let through is only plain names; this holds by construction.
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Refused::DotSegment);
    }
    Ok(path)
}

/// `raw` with its `%XX` escapes decoded, or `None` if an escape is malformed or the
/// result is not UTF-8. Done here rather than by axum's `Path` extractor, whose rejection
/// of such paths would be an uncounted `400`.
fn percent_decoded(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The response carrying an opened file's `len` bytes. The one place the bytes of
/// `/assets/` are sent, so a faster path can replace it alone.
pub(crate) fn send_file(file: File, len: u64) -> Response {
    let stream = ReaderStream::new(tokio::fs::File::from_std(file));
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::http::Request;
    use tower::ServiceExt;

    /// DIR with `vmlinuz`, `talos/v1/initramfs.xz`, a symlink inside and one leaving it,
    /// and a subdirectory; plus a secret file beside DIR.
    fn layout() -> (tempfile::TempDir, Arc<AssetTree>) {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("assets");
        std::fs::create_dir_all(dir.join("talos/v1")).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"kernel bytes").unwrap();
        std::fs::write(dir.join("talos/v1/initramfs.xz"), b"initramfs bytes").unwrap();
        std::fs::write(top.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink("talos/v1/initramfs.xz", dir.join("current")).unwrap();
        std::os::unix::fs::symlink("../secret", dir.join("leak")).unwrap();
        std::os::unix::fs::symlink("..", dir.join("up")).unwrap();
        // A symlink loop: exists, cannot be resolved (ELOOP), even by root.
        std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
        // A sibling whose name has DIR's as a prefix: outside, though the strings match.
        std::fs::create_dir(top.path().join("assets2")).unwrap();
        std::fs::write(top.path().join("assets2/secret"), b"outside").unwrap();
        std::os::unix::fs::symlink("../assets2/secret", dir.join("sibling")).unwrap();
        let tree = AssetTree::new(&dir).unwrap();
        (top, tree)
    }

    async fn get(router: &Router, uri: &str) -> (StatusCode, Vec<u8>) {
        let response = router
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, body.to_vec())
    }

    #[tokio::test]
    async fn files_under_the_directory_are_served_subdirectories_and_inner_links_too() {
        let (_top, tree) = layout();
        let router = tree.mount(Router::new());
        for (uri, want) in [
            ("/assets/vmlinuz", &b"kernel bytes"[..]),
            ("/assets/talos/v1/initramfs.xz", b"initramfs bytes"),
            ("/assets/current", b"initramfs bytes"),
            ("/assets/talos%2Fv1/initramfs.xz", b"initramfs bytes"),
        ] {
            assert_eq!(
                get(&router, uri).await,
                (StatusCode::OK, want.to_vec()),
                "{uri}"
            );
        }
        assert_eq!(tree.counters().served(), 4);
        assert!(
            Refused::ALL
                .iter()
                .all(|r| tree.counters().refused(*r) == 0)
        );
    }

    /// Each refused request is a 404 without the file's bytes and counts its reason.
    #[tokio::test]
    async fn every_refused_path_is_a_404_counted_by_reason() {
        let (_top, tree) = layout();
        let router = tree.mount(Router::new());
        let cases = [
            ("/assets/../secret", Refused::DotSegment),
            ("/assets/talos/../vmlinuz", Refused::DotSegment),
            ("/assets/%2e%2e/secret", Refused::DotSegment),
            (
                "/assets/talos/%2E%2E%2F%2E%2E%2Fsecret",
                Refused::DotSegment,
            ),
            ("/assets/./vmlinuz", Refused::DotSegment),
            ("/assets//etc/passwd", Refused::Absolute),
            ("/assets/%2Fetc%2Fpasswd", Refused::Absolute),
            ("/assets/talos//v1/initramfs.xz", Refused::Absolute),
            ("/assets/vmlinuz%00.txt", Refused::BadName),
            ("/assets/vmlinuz%ff", Refused::BadName),
            ("/assets/vmlinuz%2", Refused::BadName),
            ("/assets/vmlinuz%zz", Refused::BadName),
            ("/assets/leak", Refused::Escape),
            ("/assets/up/secret", Refused::Escape),
            ("/assets/sibling", Refused::Escape),
            ("/assets/talos", Refused::Directory),
            ("/assets/talos/", Refused::Directory),
            ("/assets/", Refused::Directory),
            ("/assets", Refused::Directory),
            ("/assets/missing", Refused::NotFound),
            ("/assets/vmlinuz/below", Refused::NotFound),
            ("/assets/loop", Refused::Unreadable),
        ];
        for (i, (uri, reason)) in cases.iter().enumerate() {
            let before = tree.counters().refused(*reason);
            let (status, body) = get(&router, uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(body, b"no such boot asset\n", "{uri}");
            assert_eq!(
                tree.counters().refused(*reason),
                before + 1,
                "case {i} {uri}: counted as {}",
                reason.label()
            );
        }
        assert_eq!(tree.counters().served(), 0);
        let mut text = String::new();
        tree.counters().render(&mut text);
        assert!(
            text.contains("ironboot_assets_refused_total{reason=\"dot_segment\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("ironboot_assets_refused_total{reason=\"escape\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn a_fifo_is_refused_without_being_opened() {
        let (top, tree) = layout();
        let fifo = top.path().join("assets/pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
        // Opening a FIFO for reading would block until a writer came: refused first.
        assert_eq!(tree.open("pipe").unwrap_err(), Refused::NotRegular);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_flag() {
        let top = tempfile::tempdir().unwrap();
        let e = AssetTree::new(&top.path().join("nope")).unwrap_err();
        assert!(e.to_string().starts_with("--boot-assets-path "), "{e}");
    }
}
