//! The image path: boot images (`/assets/`, `/factory/image/`) sent with `sendfile(2)`
//! straight from the page cache into the socket, on the API port's plain HTTP/1.1
//! connections, beside hyper.
//!
//! hyper (and axum above it) only sends bodies it was handed as bytes: a large image
//! crosses user space chunk by chunk, read on the blocking pool and copied. Here the
//! connection's first request head is read by ironboot itself ([`parse_head`]); when it
//! is a `GET` or `HEAD` of an image route ([`ImageRoutes`]), ironboot writes the response
//! head and then the body with `sendfile` from the open file, looping while the socket
//! takes bytes and waiting for tokio's writability when it does not. After the response
//! the next request on the connection is looked at the same way (keep-alive). Anything
//! else (another route, a request with a body, a head that does not parse as HTTP/1,
//! such as HTTP/2's prior-knowledge preface of an agent's gRPC tunnel) goes to hyper
//! with the bytes read so far replayed first ([`Rewind`]); the connection then stays
//! with hyper.
//!
//! HTTP semantics (RFC 9110): `Content-Length`, one byte range (`206` with
//! `Content-Range`; `416` with `Content-Range: bytes */LEN` for a range past the end;
//! several ranges answered `200` whole), `HEAD`, a strong `ETag` from the file's inode,
//! size and modification time, `If-None-Match` (`304`), `If-Range`, `Last-Modified`,
//! `Accept-Ranges: bytes`, `Connection: close` (and HTTP/1.0 without keep-alive).
//!
//! The body comes from the file descriptor opened for the request: a file replaced by
//! rename while it is sent still gives that client the old content whole. A file
//! rewritten in place is not covered.
//!
//! An image still being downloaded by the factory cache is followed: what is on disk is
//! sent, then the sender waits on the download's progress for more. Its length is the
//! factory's `Content-Length` (or the body is chunked when the factory gave none); if
//! the download fails, the connection is closed before the announced end, so the
//! client sees a truncated transfer, never a complete-looking one.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::os::fd::AsFd as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::Response;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::server::{MAX_HEADER_BYTES, RawPath, Timed};
use crate::provider::factory_proxy::cache::Progress;

/// Most header fields in a request head on the image path (as hyper's bound).
const MAX_HEADERS: usize = 64;
/// Most bytes handed to one `sendfile` call: bounds how long one call may hold a
/// worker when the pages are not resident yet.
const SEND_CHUNK: usize = 1 << 20;
/// How far ahead of the sending position the kernel is asked to read the file.
const READAHEAD: u64 = 4 << 20;
/// Largest error answer collected from a route's handler.
const MAX_ERROR_BODY: usize = 4096;

/// A file to send.
pub(crate) struct ImageFile {
    /// Open for the whole response.
    pub(crate) file: Arc<std::fs::File>,
    /// The size; `None` while a download with no announced size is under way.
    pub(crate) len: Option<u64>,
    /// The download still writing the file, if any: the body follows it.
    pub(crate) follow: Option<watch::Receiver<Progress>>,
    /// Told of every body byte sent (a route's counters).
    pub(crate) sent: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFile")
            .field("len", &self.len)
            .field("follows_download", &self.follow.is_some())
            .finish_non_exhaustive()
    }
}

/// What an image route makes of a request path.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// Not an image route, or nothing to send from here: hyper answers it.
    NotMine,
    /// Send this file.
    File(ImageFile),
    /// A small answer from the route itself (an error), written as it is.
    Answer(Response<Body>),
}

/// The image routes served on the image path.
pub(crate) trait ImageRoutes: Send + Sync + 'static {
    /// What `path` (no query) names.
    fn resolve<'a>(&'a self, path: &'a str) -> Pin<Box<dyn Future<Output = Resolved> + Send + 'a>>;
}

/// The method of a request head, as far as the image path cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
}

/// A complete HTTP/1 request head the image path may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) method: Method,
    /// Without the query.
    pub(crate) path: String,
    /// The connection ends after the response (`Connection: close`, HTTP/1.0 without
    /// `keep-alive`).
    pub(crate) close: bool,
    /// HTTP/1.0 with `Connection: keep-alive`: the response must say it keeps the
    /// connection open.
    pub(crate) keep_alive_1_0: bool,
    pub(crate) range: Option<String>,
    pub(crate) if_none_match: Option<String>,
    pub(crate) if_range: Option<String>,
    /// Length of the head in the buffer.
    pub(crate) len: usize,
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A complete head the image path may answer (its route still to be resolved).
    Head(Head),
    /// Not complete yet.
    Partial,
    /// For hyper: another method, a body, an HTTP/2 preface, a malformed head, ...
    Hyper,
}

/// Look at the request head at the start of `buf`.
pub(crate) fn parse_head(buf: &[u8]) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            // A method other than GET/HEAD needs no more bytes to be handed over.
            return match req.method {
                Some(m) if m != "GET" && m != "HEAD" => Parsed::Hyper,
                _ => Parsed::Partial,
            };
        }
        Err(_) => return Parsed::Hyper,
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => return Parsed::Hyper,
    };
    let Some(target) = req.path else {
        return Parsed::Hyper;
    };
    // Origin form only; the query is not part of the route.
    if !target.starts_with('/') {
        return Parsed::Hyper;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target).to_owned();
    let mut close = req.version == Some(0);
    let (mut range, mut if_none_match, mut if_range) = (None, None, None);
    for f in req.headers.iter() {
        let value = || {
            std::str::from_utf8(f.value)
                .ok()
                .map(|v| v.trim().to_owned())
        };
        let name = f.name;
        if name.eq_ignore_ascii_case("connection") {
            let v = value().unwrap_or_default();
            for token in v.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && req.version == Some(0) {
                    close = false;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    // An h2c upgrade: hyper's business.
                    return Parsed::Hyper;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if value().as_deref() != Some("0") {
                return Parsed::Hyper;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Hyper;
        } else if name.eq_ignore_ascii_case("range") {
            if range.is_some() {
                return Parsed::Hyper;
            }
            range = value();
        } else if name.eq_ignore_ascii_case("if-none-match") {
            // Several fields are one comma-separated list.
            let v = value().unwrap_or_default();
            if_none_match = Some(match if_none_match {
                Some(prev) => format!("{prev}, {v}"),
                None => v,
            });
        } else if name.eq_ignore_ascii_case("if-range") {
            if_range = value();
        }
    }
    Parsed::Head(Head {
        method,
        path,
        keep_alive_1_0: req.version == Some(0) && !close,
        close,
        range,
        if_none_match,
        if_range,
        len,
    })
}

/// A file's validators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Validators {
    /// A strong entity tag, quotes included.
    pub(crate) etag: String,
    /// `Last-Modified`, an IMF-fixdate.
    pub(crate) last_modified: String,
}

impl Validators {
    /// From the open file: inode, size and modification time (nanoseconds), so a file
    /// replaced or rewritten gets another tag.
    pub(crate) fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        let etag = format!(
            "\"{:x}-{:x}-{:x}.{:x}\"",
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        Validators {
            etag,
            last_modified: httpdate::fmt_http_date(modified),
        }
    }
}

/// The answer to a head for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `200`, all of it.
    Full,
    /// `206`, this range.
    Partial(Range<u64>),
    /// `304`.
    NotModified,
    /// `416`.
    Unsatisfiable,
}

/// Whether `list` (an `If-None-Match` value) matches `etag` by the weak comparison.
fn none_match_hits(list: &str, etag: &str) -> bool {
    let bare = etag.trim_start_matches("W/");
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == bare)
}

/// The answer to `head` for a file of length `len` (`None`: still downloading, so only
/// `200` whole) with validators `v` (RFC 9110 sections 13.1.2, 13.1.5, 14.2).
pub(crate) fn answer(head: &Head, len: Option<u64>, v: Option<&Validators>) -> Answer {
    if let (Some(list), Some(v)) = (&head.if_none_match, v)
        && none_match_hits(list, &v.etag)
    {
        return Answer::NotModified;
    }
    let (Some(len), Some(spec)) = (len, &head.range) else {
        return Answer::Full;
    };
    // Range applies to GET only.
    if head.method != Method::Get {
        return Answer::Full;
    }
    if let Some(cond) = &head.if_range {
        // A strong tag compared strongly, or the exact Last-Modified date.
        let holds = v.is_some_and(|v| {
            if cond.starts_with('"') {
                *cond == v.etag
            } else {
                *cond == v.last_modified
            }
        });
        if !holds {
            return Answer::Full;
        }
    }
    parse_range(spec, len)
}

/// `bytes=a-b`, `bytes=a-` and `bytes=-n` against `len`; another unit or several ranges
/// are answered whole (RFC 9110 lets a server ignore them).
pub(crate) fn parse_range(spec: &str, len: u64) -> Answer {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Answer::Full;
    };
    if set.contains(',') {
        return Answer::Full;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return Answer::Full;
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (a.trim(), b.trim()) {
        ("", n) => match num(n) {
            None => Answer::Full,
            Some(0) => Answer::Unsatisfiable,
            Some(_) if len == 0 => Answer::Unsatisfiable,
            Some(n) => Answer::Partial(len.saturating_sub(n)..len),
        },
        (a, b) => match (num(a), if b.is_empty() { Some(u64::MAX) } else { num(b) }) {
            (Some(a), Some(b)) if a <= b => {
                if a >= len {
                    Answer::Unsatisfiable
                } else {
                    Answer::Partial(a..b.saturating_add(1).min(len))
                }
            }
            _ => Answer::Full,
        },
    }
}

/// The image path's counters (`/metrics`).
#[derive(Debug, Default)]
pub(crate) struct ImageStats {
    /// By [`STATUSES`] index.
    responses: [AtomicU64; STATUSES.len()],
    body_bytes: AtomicU64,
    cut_short: AtomicU64,
}

/// Status labels of [`ImageStats`]; the last one takes every other status (a route's own
/// error answers).
const STATUSES: [&str; 5] = ["200", "206", "304", "416", "other"];

impl ImageStats {
    fn response(&self, status: &str) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.responses[i].fetch_add(1, Relaxed);
    }

    /// Responses answered with `status` (`"other"`: any other) so far.
    #[cfg(test)]
    pub(crate) fn responses(&self, status: &str) -> u64 {
        STATUSES
            .iter()
            .position(|s| *s == status)
            .map_or(0, |i| self.responses[i].load(Relaxed))
    }

    /// Body bytes sent with `sendfile` so far.
    #[cfg(test)]
    pub(crate) fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Relaxed)
    }

    /// Responses that ended before their last byte so far.
    #[cfg(test)]
    pub(crate) fn cut_short(&self) -> u64 {
        self.cut_short.load(Relaxed)
    }
}

impl crate::boot::metrics::PrometheusSource for ImageStats {
    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP ironboot_http_image_responses_total Boot image responses written by the \
             zero-copy image path (/assets/, /factory/image/), by status.\n\
             # TYPE ironboot_http_image_responses_total counter\n",
        );
        for (i, s) in STATUSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "ironboot_http_image_responses_total{{status=\"{s}\"}} {}",
                self.responses[i].load(Relaxed)
            );
        }
        let _ = write!(
            out,
            "# HELP ironboot_http_image_body_bytes_total Boot image bytes sent with sendfile.\n\
             # TYPE ironboot_http_image_body_bytes_total counter\n\
             ironboot_http_image_body_bytes_total {}\n\
             # HELP ironboot_http_image_cut_short_total Image responses that ended before \
             their last byte (client gone or too slow, a download that failed).\n\
             # TYPE ironboot_http_image_cut_short_total counter\n\
             ironboot_http_image_cut_short_total {}\n",
            self.body_bytes.load(Relaxed),
            self.cut_short.load(Relaxed)
        );
    }
}

/// The image path as the accept loop's [`RawPath`]: `routes`, counted in `stats`.
pub(crate) struct ImagePath {
    routes: Arc<dyn ImageRoutes>,
    stats: Arc<ImageStats>,
}

impl ImagePath {
    /// Serve `routes`, counting into `stats`.
    pub(crate) fn new(routes: Arc<dyn ImageRoutes>, stats: Arc<ImageStats>) -> Self {
        ImagePath { routes, stats }
    }
}

impl RawPath for ImagePath {
    fn serve<'a>(
        &'a self,
        io: &'a mut Timed<TcpStream>,
        buf: &'a mut Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            serve_images(io, buf, &*self.routes, &self.stats).await == Outcome::Hyper
        })
    }
}

/// How the image path left a connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Hand it to hyper, replaying the bytes in the buffer.
    Hyper,
    /// Done: close it.
    Closed,
}

/// Answer image requests on `io` until one is not for the image path (then
/// [`Outcome::Hyper`], with the bytes read so far left in `buf`) or the connection ends.
/// Deadlines are the caller's watchdog's: reads and stalled writes are reported through
/// `io`.
pub(crate) async fn serve_images(
    io: &mut Timed<TcpStream>,
    buf: &mut Vec<u8>,
    routes: &dyn ImageRoutes,
    stats: &ImageStats,
) -> Outcome {
    loop {
        let head = loop {
            match parse_head(buf) {
                Parsed::Head(h) => break h,
                Parsed::Hyper => return Outcome::Hyper,
                Parsed::Partial if buf.len() >= MAX_HEADER_BYTES => return Outcome::Hyper,
                Parsed::Partial => {}
            }
            buf.reserve(4096);
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => {
                    // Closed by the client; hyper has nothing to add to a partial head.
                    return Outcome::Closed;
                }
                Ok(_) => {}
            }
        };
        // In flight from here: resolving may wait on the factory's answer, which the
        // header deadline must not cut.
        io.request_started();
        let file = match routes.resolve(&head.path).await {
            Resolved::NotMine => {
                io.request_ended();
                return Outcome::Hyper;
            }
            Resolved::File(f) => f,
            Resolved::Answer(r) => {
                stats.response(r.status().as_str());
                let ok = write_answer(io, &head, r).await.is_ok();
                io.request_ended();
                buf.drain(..head.len);
                if !ok || head.close {
                    return Outcome::Closed;
                }
                continue;
            }
        };
        buf.drain(..head.len);
        // Counted as cut short unless the response completes, including when the
        // watchdog drops this future mid-body (a client that stopped reading).
        let unfinished = Unfinished(&stats.cut_short);
        let sent = send_file(io, &head, file, stats).await;
        io.request_ended();
        if sent.is_ok() {
            std::mem::forget(unfinished);
        }
        match sent {
            Ok(true) if !head.close => {}
            _ => {
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
        }
    }
}

/// Adds one to its counter when dropped: an image response that did not complete.
struct Unfinished<'a>(&'a AtomicU64);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
}

/// Write a route's small answer (its body collected, at most [`MAX_ERROR_BODY`]).
async fn write_answer(io: &mut Timed<TcpStream>, head: &Head, r: Response<Body>) -> io::Result<()> {
    let (parts, body) = r.into_parts();
    let body = http_body_util::Limited::new(body, MAX_ERROR_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if name == axum::http::header::CONTENT_LENGTH {
            continue;
        }
        if let Ok(v) = value.to_str() {
            let _ = write!(out, "{name}: {v}\r\n");
        }
    }
    let _ = write!(out, "Content-Length: {}\r\n", body.len());
    if head.close {
        out.push_str("Connection: close\r\n");
    } else if head.keep_alive_1_0 {
        out.push_str("Connection: keep-alive\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if head.method == Method::Get {
        bytes.extend_from_slice(&body);
    }
    io.write_all(&bytes).await
}

/// The response head for `answer`.
fn response_head(
    head: &Head,
    answer: &Answer,
    len: Option<u64>,
    v: Option<&Validators>,
    chunked: bool,
) -> String {
    let status = match answer {
        Answer::Full => "200 OK",
        Answer::Partial(_) => "206 Partial Content",
        Answer::NotModified => "304 Not Modified",
        Answer::Unsatisfiable => "416 Range Not Satisfiable",
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nDate: {}\r\n",
        httpdate::fmt_http_date(SystemTime::now())
    );
    match answer {
        Answer::Full => {
            out.push_str("Content-Type: application/octet-stream\r\n");
            match len {
                Some(n) => {
                    let _ = write!(out, "Content-Length: {n}\r\n");
                }
                None if chunked => out.push_str("Transfer-Encoding: chunked\r\n"),
                None => {}
            }
        }
        Answer::Partial(r) => {
            let _ = write!(
                out,
                "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\
                 Content-Range: bytes {}-{}/{}\r\n",
                r.end - r.start,
                r.start,
                r.end - 1,
                len.unwrap_or(0)
            );
        }
        Answer::NotModified => {}
        Answer::Unsatisfiable => {
            let _ = write!(
                out,
                "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 22\r\n\
                 Content-Range: bytes */{}\r\n",
                len.unwrap_or(0)
            );
        }
    }
    if let Some(v) = v {
        let _ = write!(
            out,
            "ETag: {}\r\nLast-Modified: {}\r\n",
            v.etag, v.last_modified
        );
    }
    // Ranges are served once the file is complete (it has validators then).
    if v.is_some() {
        out.push_str("Accept-Ranges: bytes\r\n");
    }
    if head.close {
        out.push_str("Connection: close\r\n");
    } else if head.keep_alive_1_0 {
        out.push_str("Connection: keep-alive\r\n");
    }
    out.push_str("\r\n");
    if *answer == Answer::Unsatisfiable && head.method == Method::Get {
        out.push_str("range not satisfiable\n");
    }
    out
}

/// Answer `head` with `image`. `Ok(true)`: the response is complete and the connection
/// may carry another request.
async fn send_file(
    io: &mut Timed<TcpStream>,
    head: &Head,
    image: ImageFile,
    stats: &ImageStats,
) -> io::Result<bool> {
    let file = image.file.clone();
    let meta = tokio::task::spawn_blocking(move || file.metadata())
        .await
        .map_err(io::Error::other)??;
    let complete = image.follow.is_none();
    // Validators only for a complete file: one still growing changes under them.
    let v = complete.then(|| Validators::of(&meta));
    let len = if complete {
        Some(meta.len())
    } else {
        image.len
    };
    let answer = answer(head, len, v.as_ref());
    let chunked = len.is_none();
    let text = response_head(head, &answer, len, v.as_ref(), chunked);
    stats.response(match answer {
        Answer::Full => "200",
        Answer::Partial(_) => "206",
        Answer::NotModified => "304",
        Answer::Unsatisfiable => "416",
    });
    io.write_all(text.as_bytes()).await?;
    if head.method == Method::Head {
        return Ok(true);
    }
    let range = match answer {
        Answer::NotModified | Answer::Unsatisfiable => return Ok(true),
        Answer::Partial(r) => r,
        Answer::Full => 0..len.unwrap_or(u64::MAX),
    };
    let mut pos = range.start;
    let mut follow = image.follow;
    let mut ahead = pos;
    loop {
        // How far the file can be read now.
        let available = match follow.as_mut() {
            None => range.end,
            Some(rx) => {
                let now = rx.borrow_and_update().clone();
                match now {
                    Progress::Connecting => 0,
                    Progress::Receiving { written, .. } => written,
                    Progress::Done { len } => {
                        follow = None;
                        len
                    }
                    Progress::Failed(_) => {
                        return Err(io::Error::other("the download failed"));
                    }
                }
            }
        };
        let stop = available.min(range.end);
        if pos >= stop {
            if let Some(rx) = follow.as_mut() {
                if rx.changed().await.is_err() {
                    return Err(io::Error::other("the download was abandoned"));
                }
                continue;
            }
            if stop < range.end && len.is_some() {
                // The file is shorter than its announced length.
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            break;
        }
        // Send one window at a time, the next one being read ahead meanwhile.
        let window_end = stop.min(pos.saturating_add(READAHEAD));
        let advise_to = stop.min(window_end.saturating_add(READAHEAD));
        if ahead < advise_to {
            read_ahead(&image.file, ahead.max(pos), advise_to).await;
            ahead = advise_to;
        }
        let n = window_end - pos;
        if chunked {
            io.write_all(format!("{n:x}\r\n").as_bytes()).await?;
        }
        send_range(io, &image.file, pos, n).await?;
        stats.body_bytes.fetch_add(n, Relaxed);
        if let Some(sent) = &image.sent {
            sent(n);
        }
        pos += n;
        if chunked {
            io.write_all(b"\r\n").await?;
        }
    }
    if chunked {
        io.write_all(b"0\r\n\r\n").await?;
    }
    Ok(true)
}

/// Ask the kernel to read `from..to` of `file` into the page cache.
///
/// A `sendfile` from pages not yet resident waits for the disk inside the call, on an
/// async worker. `posix_fadvise(WILLNEED)` starts the reads of the window after the one
/// being sent without waiting for them (it runs on the blocking pool, as submitting the
/// reads may wait on a congested device), so the disk works ahead of the socket and a
/// `sendfile` call waits at most for pages already on their way; each call is also
/// bounded ([`SEND_CHUNK`]). Reading the window on the blocking pool would guarantee
/// residency but costs a copy of every byte, which is what this path is here to avoid.
async fn read_ahead(file: &Arc<std::fs::File>, from: u64, to: u64) {
    let f = file.clone();
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to.saturating_sub(from)))
    else {
        return;
    };
    let _ = tokio::task::spawn_blocking(move || {
        nix::fcntl::posix_fadvise(
            f.as_fd(),
            offset,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        )
    })
    .await;
}

/// Send `n` bytes of `file` from `pos` with `sendfile`, waiting for writability when the
/// socket is full (reported to the watchdog as a stalled write).
async fn send_range(
    io: &mut Timed<TcpStream>,
    file: &std::fs::File,
    mut pos: u64,
    mut n: u64,
) -> io::Result<()> {
    while n > 0 {
        let mut offset = i64::try_from(pos).map_err(io::Error::other)?;
        let count = usize::try_from(n).unwrap_or(usize::MAX).min(SEND_CHUNK);
        let tcp = io.inner_ref();
        let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile(tcp.as_fd(), file.as_fd(), Some(&mut offset), count)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(k) => {
                io.write_progressed();
                pos += k as u64;
                n -= k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.write_stalled();
                io.inner_ref().writable().await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "sendfile_tests.rs"]
pub(crate) mod real;

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        match parse_head(text.as_bytes()) {
            Parsed::Head(h) => h,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn heads_for_the_image_path_and_for_hyper() {
        let h = head(
            "GET /assets/kernel-amd64?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=5-\r\n\
             If-None-Match: \"a\"\r\nif-none-match: \"b\"\r\nIf-Range: \"a\"\r\n\r\nGET /next",
        );
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path, "/assets/kernel-amd64");
        assert!(!h.close);
        assert_eq!(h.range.as_deref(), Some("bytes=5-"));
        assert_eq!(h.if_none_match.as_deref(), Some("\"a\", \"b\""));
        assert_eq!(h.if_range.as_deref(), Some("\"a\""));
        let text = "GET /assets/kernel-amd64?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=5-\r\n\
             If-None-Match: \"a\"\r\nif-none-match: \"b\"\r\nIf-Range: \"a\"\r\n\r\n";
        assert_eq!(
            h.len,
            text.len(),
            "the pipelined request stays in the buffer"
        );
        assert!(head("HEAD /a HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").close);
        assert!(head("GET /a HTTP/1.0\r\n\r\n").close);
        let h10 = head("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(!h10.close && h10.keep_alive_1_0);
        assert!(!head("GET /a HTTP/1.1\r\n\r\n").keep_alive_1_0);
        assert_eq!(
            parse_head(b"GET /assets/kernel HTTP/1.1\r\nHost"),
            Parsed::Partial
        );
        assert_eq!(parse_head(b"GE"), Parsed::Partial);
        for hyper in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"POST /assets/x HTTP/1.1\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            b"GET /a HTTP/1.1\r\nRange: bytes=1-\r\nRange: bytes=2-\r\n\r\n",
            b"GET http://x/a HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
            b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(hyper),
                Parsed::Hyper,
                "{:?}",
                String::from_utf8_lossy(hyper)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        assert_eq!(
            parse_head(format!("GET /a HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Parsed::Hyper
        );
    }

    #[test]
    fn ranges() {
        use Answer::*;
        assert_eq!(parse_range("bytes=0-99", 1000), Partial(0..100));
        assert_eq!(parse_range("bytes=900-", 1000), Partial(900..1000));
        assert_eq!(parse_range("bytes=900-5000", 1000), Partial(900..1000));
        assert_eq!(parse_range("bytes=-100", 1000), Partial(900..1000));
        assert_eq!(parse_range("bytes=-5000", 1000), Partial(0..1000));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Full);
        assert_eq!(parse_range("bytes=5-1", 1000), Full);
        assert_eq!(parse_range("items=0-1", 1000), Full);
        assert_eq!(parse_range("bytes=x-1", 1000), Full);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn conditionals() {
        let v = Validators {
            etag: "\"1-2-3.4\"".to_owned(),
            last_modified: "Mon, 07 Dec 2026 09:00:00 GMT".to_owned(),
        };
        let req = |extra: &str| head(&format!("GET /a HTTP/1.1\r\n{extra}\r\n"));
        let a = |h: &Head| answer(h, Some(1000), Some(&v));
        assert_eq!(
            a(&req("If-None-Match: \"1-2-3.4\"\r\n")),
            Answer::NotModified
        );
        assert_eq!(
            a(&req("If-None-Match: \"x\", W/\"1-2-3.4\"\r\n")),
            Answer::NotModified
        );
        assert_eq!(a(&req("If-None-Match: *\r\n")), Answer::NotModified);
        assert_eq!(a(&req("If-None-Match: \"x\"\r\n")), Answer::Full);
        // If-None-Match wins over Range.
        assert_eq!(
            a(&req("If-None-Match: \"1-2-3.4\"\r\nRange: bytes=0-1\r\n")),
            Answer::NotModified
        );
        assert_eq!(a(&req("Range: bytes=10-19\r\n")), Answer::Partial(10..20));
        assert_eq!(
            a(&req("Range: bytes=10-19\r\nIf-Range: \"1-2-3.4\"\r\n")),
            Answer::Partial(10..20)
        );
        assert_eq!(
            a(&req("Range: bytes=10-19\r\nIf-Range: \"old\"\r\n")),
            Answer::Full
        );
        // A weak tag never satisfies If-Range.
        assert_eq!(
            a(&req("Range: bytes=10-19\r\nIf-Range: W/\"1-2-3.4\"\r\n")),
            Answer::Full
        );
        assert_eq!(
            a(&req(
                "Range: bytes=10-19\r\nIf-Range: Mon, 07 Dec 2026 09:00:00 GMT\r\n"
            )),
            Answer::Partial(10..20)
        );
        assert_eq!(
            a(&req(
                "Range: bytes=10-19\r\nIf-Range: Sun, 06 Dec 2026 09:00:00 GMT\r\n"
            )),
            Answer::Full
        );
        assert_eq!(a(&req("Range: bytes=2000-\r\n")), Answer::Unsatisfiable);
        // HEAD ignores Range; a download under way (no length) is sent whole.
        let h = head("HEAD /a HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n");
        assert_eq!(answer(&h, Some(1000), Some(&v)), Answer::Full);
        assert_eq!(
            answer(&req("Range: bytes=0-1\r\n"), None, None),
            Answer::Full
        );
    }

    #[test]
    fn validators_change_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let a = Validators::of(&std::fs::metadata(&p).unwrap());
        std::fs::write(dir.path().join("g"), b"two!").unwrap();
        std::fs::rename(dir.path().join("g"), &p).unwrap();
        let b = Validators::of(&std::fs::metadata(&p).unwrap());
        assert_ne!(a.etag, b.etag);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
        assert!(a.last_modified.ends_with(" GMT"));
    }

    #[test]
    fn image_stats_render_as_prometheus_families() {
        use crate::boot::metrics::PrometheusSource as _;
        let st = ImageStats::default();
        st.response("206");
        st.response("404");
        st.body_bytes.fetch_add(7, Relaxed);
        let mut text = String::new();
        st.render(&mut text);
        for line in [
            "ironboot_http_image_responses_total{status=\"206\"} 1",
            "ironboot_http_image_responses_total{status=\"other\"} 1",
            "ironboot_http_image_responses_total{status=\"200\"} 0",
            "ironboot_http_image_body_bytes_total 7",
            "ironboot_http_image_cut_short_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        crate::boot::metrics::assert_families_declared(&text);
    }

    #[tokio::test]
    async fn rewind_replays_then_reads_on() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut r = super::super::server::Rewind::new(b"hello".to_vec(), a);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
