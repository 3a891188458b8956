//! The accept loop of the API port and of the agents' TLS port: HTTP/1.1 and HTTP/2
//! (h2c on the API port, h2 over TLS) on one listener through hyper-util's auto builder,
//! serving an axum [`Router`], with every connection bounded:
//!
//! - **caps**: at most `max_connections` open connections over both ports together and
//!   `max_per_source` from one IP address; a connection over a cap gets a canned `503`
//!   written straight into the socket (no hyper connection, no task) and is closed.
//!   When all places are taken, a new connection first takes the place of the oldest
//!   connection that has not sent a complete request yet (evicted), so a crowd of slow
//!   clients cannot lock out the quick ones; only when there is none is it refused;
//! - **header deadline**: a connection must complete its first request head (after the TLS
//!   handshake, on the TLS port) within `header_timeout` of being accepted, and on HTTP/1
//!   each later head within `header_timeout` of its first byte: a client trickling a
//!   header is dropped however it spaces its bytes;
//! - **idle**: a connection with no request in flight for `idle_timeout` is closed; a
//!   long-lived HTTP/2 stream (the agents' tunnels) is a request in flight, so it stays,
//!   and HTTP/2 connections are pinged every `idle_timeout` so a peer that vanished
//!   is found (an unanswered ping closes the connection);
//! - **write deadline**: a write into the socket that makes no progress for
//!   `write_timeout` (a client that stopped reading) drops the connection;
//! - **sizes**: request heads are bounded ([`MAX_HEADER_BYTES`]); request bodies other
//!   than gRPC streams are bounded ([`MAX_BODY_BYTES`]); so are the concurrent HTTP/2
//!   streams of a connection ([`MAX_H2_STREAMS`]);
//! - **operator routes**: with `allow` set, only sources inside it reach routes outside
//!   the boot path ([`is_boot_path`]); others get `403`;
//! - **descriptors**: `accept` failing for lack of descriptors (EMFILE, ENFILE) backs off
//!   ([`ACCEPT_BACKOFF`]) instead of spinning, counted and logged at most once per
//!   [`LOG_EVERY`].
//!
//! Everything is counted in [`ConnCounters`] (`/metrics`), per listener.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ironboot_net::cidr::Cidr;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;
use tracing::{debug, warn};

/// Default `--http-header-timeout`.
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--http-idle-timeout`.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--http-write-timeout`.
pub(crate) const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `--tls-handshake-timeout`.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--http-max-connections`.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `--http-max-connections-per-source`.
pub(crate) const DEFAULT_MAX_PER_SOURCE: usize = 64;

/// Largest request head: HTTP/1's read buffer (hyper's smallest allowed is 8 KiB) and
/// HTTP/2's header list. iPXE's and curl's heads are a few hundred bytes.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields in an HTTP/1 request head.
const MAX_HEADERS: usize = 64;
/// Most concurrent HTTP/2 streams per connection. A metal agent holds one (its tunnel,
/// which carries all of ironboot's calls); a little room for tools, and a bound on what
/// one connection can make the server hold.
const MAX_H2_STREAMS: u32 = 32;
/// Largest request body of a route other than gRPC (no such route reads a body today;
/// the bound keeps one from being made to buffer without end).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// Pause after `accept` failed for lack of descriptors or memory.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Least time between two log lines about the same kind of refused or failed connection.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a connection closed for being idle, or by shutdown, may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The bounds every connection is held to (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `--http-header-timeout`.
    pub header_timeout: Duration,
    /// `--http-idle-timeout`.
    pub idle_timeout: Duration,
    /// `--http-write-timeout`.
    pub write_timeout: Duration,
    /// `--tls-handshake-timeout` (the TLS port only).
    pub handshake_timeout: Duration,
    /// `--http-max-connections`: both ports together.
    pub max_connections: usize,
    /// `--http-max-connections-per-source`: both ports together.
    pub max_per_source: usize,
    /// `--api-allow-cidr`: who reaches the operator routes; `None` = anyone.
    pub allow: Option<Vec<Cidr>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_source: DEFAULT_MAX_PER_SOURCE,
            allow: None,
        }
    }
}

/// Routes machines and agents use, reachable from anywhere whatever `--api-allow-cidr`
/// says: the iPXE scripts, boot files, local boot assets, the Image Factory proxy, the
/// join configuration, the agents' gRPC tunnel and the health check. Anything else is an
/// operator route.
pub(crate) fn is_boot_path(path: &str) -> bool {
    const PREFIXES: [&str; 5] = [
        "/ipxe/",
        "/tftp/",
        "/assets/",
        "/factory/",
        "/grpctunnel.v1.TunnelService/",
    ];
    matches!(path, "/config" | "/healthz") || PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Which port a connection came in on, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `--api-port`.
    Api,
    /// `--tls-api-port`.
    Tls,
}

impl Listener {
    const ALL: [Listener; 2] = [Listener::Api, Listener::Tls];

    fn label(self) -> &'static str {
        match self {
            Listener::Api => "api",
            Listener::Tls => "tls",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a connection was refused or ended early, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Refused: `--http-max-connections` open already.
    MaxConnections,
    /// Refused: `--http-max-connections-per-source` open from its address already.
    PerSource,
    /// No complete request head in time.
    HeaderTimeout,
    /// No request for `--http-idle-timeout`.
    Idle,
    /// A write made no progress for `--http-write-timeout`.
    WriteTimeout,
    /// No TLS handshake within `--tls-handshake-timeout`.
    HandshakeTimeout,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// Closed before its first request to make room for a new connection at the cap.
    Evicted,
}

impl Reason {
    const ALL: [Reason; 8] = [
        Reason::MaxConnections,
        Reason::PerSource,
        Reason::HeaderTimeout,
        Reason::Idle,
        Reason::WriteTimeout,
        Reason::HandshakeTimeout,
        Reason::HandshakeFailed,
        Reason::Evicted,
    ];

    fn label(self) -> &'static str {
        match self {
            Reason::MaxConnections => "max_connections",
            Reason::PerSource => "per_source",
            Reason::HeaderTimeout => "header_timeout",
            Reason::Idle => "idle",
            Reason::WriteTimeout => "write_timeout",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::HandshakeFailed => "handshake_failed",
            Reason::Evicted => "evicted",
        }
    }

    fn is_refusal(self) -> bool {
        matches!(self, Reason::MaxConnections | Reason::PerSource)
    }
}

/// One listener's counters.
#[derive(Debug, Default)]
struct ListenerStats {
    accepted: AtomicU64,
    open: AtomicU64,
    ended: [AtomicU64; Reason::ALL.len()],
    accept_fd_exhausted: AtomicU64,
    accept_other: AtomicU64,
    forbidden: AtomicU64,
}

/// The connection counters of both listeners (`/metrics`).
#[derive(Debug, Default)]
pub struct ConnCounters {
    listeners: [ListenerStats; 2],
    max_connections: AtomicU64,
}

impl ConnCounters {
    fn of(&self, l: Listener) -> &ListenerStats {
        &self.listeners[l.index()]
    }

    fn ended(&self, l: Listener, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.of(l).ended[i].fetch_add(1, Relaxed);
    }

    /// Connections refused or ended for `reason` on `l` so far.
    pub(crate) fn ended_total(&self, l: Listener, reason: Reason) -> u64 {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.of(l).ended[i].load(Relaxed)
    }

    /// Connections open on `l` now.
    pub(crate) fn open(&self, l: Listener) -> u64 {
        self.of(l).open.load(Relaxed)
    }

    /// Append the Prometheus families.
    pub(crate) fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        };
        family(
            "ironboot_http_connections_accepted_total",
            "counter",
            "TCP connections accepted and served, by listener.",
        );
        for l in Listener::ALL {
            let _ = writeln!(
                out,
                "ironboot_http_connections_accepted_total{{listener=\"{}\"}} {}",
                l.label(),
                self.of(l).accepted.load(Relaxed)
            );
        }
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        };
        family(
            "ironboot_http_connections_open",
            "gauge",
            "Connections open now, by listener.",
        );
        for l in Listener::ALL {
            let _ = writeln!(
                out,
                "ironboot_http_connections_open{{listener=\"{}\"}} {}",
                l.label(),
                self.open(l)
            );
        }
        let _ = write!(
            out,
            "# HELP ironboot_http_connections_max Connections allowed open on both listeners \
             together (--http-max-connections, lowered to fit the descriptor limit).\n\
             # TYPE ironboot_http_connections_max gauge\n\
             ironboot_http_connections_max {}\n",
            self.max_connections.load(Relaxed)
        );
        let _ = write!(
            out,
            "# HELP ironboot_http_connections_refused_total Connections refused at accept \
             (answered 503 and closed), by listener and cap.\n\
             # TYPE ironboot_http_connections_refused_total counter\n"
        );
        for l in Listener::ALL {
            for r in Reason::ALL.iter().filter(|r| r.is_refusal()) {
                let _ = writeln!(
                    out,
                    "ironboot_http_connections_refused_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    l.label(),
                    r.label(),
                    self.ended_total(l, *r)
                );
            }
        }
        let _ = write!(
            out,
            "# HELP ironboot_http_connections_dropped_total Connections closed by ironboot \
             for breaking a deadline, by listener and reason.\n\
             # TYPE ironboot_http_connections_dropped_total counter\n"
        );
        for l in Listener::ALL {
            for r in Reason::ALL.iter().filter(|r| !r.is_refusal()) {
                let _ = writeln!(
                    out,
                    "ironboot_http_connections_dropped_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    l.label(),
                    r.label(),
                    self.ended_total(l, *r)
                );
            }
        }
        let _ = write!(
            out,
            "# HELP ironboot_http_accept_errors_total accept() failures, by listener and kind \
             (fd_exhausted: EMFILE, ENFILE, ENOBUFS or ENOMEM, answered by a pause).\n\
             # TYPE ironboot_http_accept_errors_total counter\n"
        );
        for l in Listener::ALL {
            let s = self.of(l);
            for (kind, c) in [
                ("fd_exhausted", &s.accept_fd_exhausted),
                ("other", &s.accept_other),
            ] {
                let _ = writeln!(
                    out,
                    "ironboot_http_accept_errors_total{{listener=\"{}\",kind=\"{kind}\"}} {}",
                    l.label(),
                    c.load(Relaxed)
                );
            }
        }
        let _ = write!(
            out,
            "# HELP ironboot_http_forbidden_total Requests for operator routes from outside \
             --api-allow-cidr, answered 403, by listener.\n\
             # TYPE ironboot_http_forbidden_total counter\n"
        );
        for l in Listener::ALL {
            let _ = writeln!(
                out,
                "ironboot_http_forbidden_total{{listener=\"{}\"}} {}",
                l.label(),
                self.of(l).forbidden.load(Relaxed)
            );
        }
    }
}

/// Logs a warning at most once per [`LOG_EVERY`], with how many were not logged.
#[derive(Debug)]
struct RateLimited {
    base: Instant,
    /// Milliseconds after `base` of the last line, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimited {
    fn new() -> Self {
        RateLimited {
            base: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let now = millis(self.base.elapsed()) + 1;
        let last = self.last.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < millis(LOG_EVERY) {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The caps shared by both listeners, the limits and the counters.
pub struct Gate {
    limits: Limits,
    counters: Arc<ConnCounters>,
    open: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// Connections in the order they were admitted, for eviction at the cap; entries
    /// that have sent a request or are gone are skipped and pruned.
    unanswered: Mutex<VecDeque<Weak<Activity>>>,
    builder: auto::Builder<TokioExecutor>,
    refused_log: RateLimited,
    accept_log: RateLimited,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("limits", &self.limits)
            .field("open", &self.open.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// The gate for `limits`, counting into `counters`.
    pub fn new(limits: Limits, counters: Arc<ConnCounters>) -> Arc<Gate> {
        counters
            .max_connections
            .store(limits.max_connections as u64, Relaxed);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // The header deadline is the watchdog's (see `Activity`): hyper's own would
            // also cut idle keep-alive connections at the header deadline.
            .header_read_timeout(None)
            .max_buf_size(MAX_HEADER_BYTES)
            .max_headers(MAX_HEADERS)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(MAX_H2_STREAMS)
            .keep_alive_interval(limits.idle_timeout)
            .keep_alive_timeout(limits.write_timeout);
        Arc::new(Gate {
            limits,
            counters,
            open: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::new()),
            unanswered: Mutex::new(VecDeque::new()),
            builder,
            refused_log: RateLimited::new(),
            accept_log: RateLimited::new(),
        })
    }

    /// The counters, for `/metrics`.
    pub(crate) fn counters(&self) -> Arc<ConnCounters> {
        self.counters.clone()
    }

    /// A place for one more connection (`activity`) from `ip`, or the cap it would
    /// break. At the total cap the oldest connection without a request yet is told to
    /// go and its place is taken (the count is over the cap until it has gone).
    fn admit(self: &Arc<Self>, ip: IpAddr, activity: &Arc<Activity>) -> Result<Permit, Reason> {
        let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.limits.max_per_source {
            return Err(Reason::PerSource);
        }
        let total = self.open.fetch_add(1, Relaxed);
        // Evicted connections take a moment to go: past a margin, refuse outright so the
        // descriptors in use stay bounded however fast connections come.
        let ceiling = self.limits.max_connections + self.limits.max_connections / 4 + 16;
        if total >= ceiling
            || (total >= self.limits.max_connections && !self.evict_oldest_unanswered())
        {
            self.open.fetch_sub(1, Relaxed);
            if *n == 0 {
                map.remove(&ip);
            }
            return Err(Reason::MaxConnections);
        }
        *n += 1;
        drop(map);
        let mut queue = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        queue.push_back(Arc::downgrade(activity));
        // Entries of connections that have since sent a request or gone are only popped
        // by eviction: prune them when they could outnumber the open connections.
        if queue.len() > 2 * self.limits.max_connections + 64 {
            queue.retain(|w| w.upgrade().is_some_and(|a| a.evictable()));
        }
        Ok(Permit {
            gate: self.clone(),
            ip,
        })
    }

    /// Tell the oldest connection still without a request to go; false if there is none.
    fn evict_oldest_unanswered(&self) -> bool {
        let mut queue = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(w) = queue.pop_front() {
            if let Some(a) = w.upgrade()
                && a.evictable()
                && !a.evicted.swap(true, Relaxed)
            {
                a.evict.notify_one();
                return true;
            }
        }
        false
    }
}

/// One admitted connection; gives its place back when dropped.
struct Permit {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self
            .gate
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        drop(map);
        self.gate.open.fetch_sub(1, Relaxed);
    }
}

/// What a connection does once accepted, before HTTP: nothing on the API port, the TLS
/// handshake on the TLS port.
pub trait Handshake: Clone + Send + Sync + 'static {
    /// The stream HTTP is then spoken over.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Whether this is the TLS port (the handshake is then bounded by
    /// `--tls-handshake-timeout` and counted).
    const TLS: bool;

    /// Turn the accepted connection into the stream HTTP is spoken over.
    fn handshake(
        &self,
        tcp: Timed<TcpStream>,
    ) -> impl Future<Output = io::Result<Self::Io>> + Send + 'static;

    /// The plain TCP stream under `io`, if HTTP is spoken on it directly (a
    /// [`RawPath`] may then serve it).
    fn plain_tcp(io: &mut Self::Io) -> Option<&mut Timed<TcpStream>> {
        let _ = io;
        None
    }
}

/// The API port: plain TCP.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl Handshake for Plain {
    type Io = Timed<TcpStream>;
    const TLS: bool = false;

    fn handshake(
        &self,
        tcp: Timed<TcpStream>,
    ) -> impl Future<Output = io::Result<Self::Io>> + Send + 'static {
        std::future::ready(Ok(tcp))
    }

    fn plain_tcp(io: &mut Self::Io) -> Option<&mut Timed<TcpStream>> {
        Some(io)
    }
}

/// The canned answer to a connection over a cap: written with one non-blocking write,
/// never waited on.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 21\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n";

/// Serve `router` on `listener` (port `which`) under `gate`'s rules until `shutdown`
/// resolves; then stop accepting, ask every connection to finish (HTTP/2: GOAWAY) and
/// wait for them all.
pub async fn serve<H: Handshake>(
    listener: TcpListener,
    which: Listener,
    gate: Arc<Gate>,
    router: Router,
    handshake: H,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, which, gate, router, handshake, None, shutdown).await
}

/// [`serve`], with `raw` answering what is its own of plain HTTP/1 connections before
/// hyper.
pub(crate) async fn serve_with<H: Handshake>(
    listener: TcpListener,
    which: Listener,
    gate: Arc<Gate>,
    router: Router,
    handshake: H,
    raw: Option<Arc<dyn RawPath>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_failed(&gate, which, &e).await;
                continue;
            }
        };
        let stats = gate.counters.of(which);
        let activity = Arc::new(Activity::new());
        let permit = match gate.admit(peer.ip(), &activity) {
            Ok(p) => p,
            Err(reason) => {
                gate.counters.ended(which, reason);
                // One try, no waiting: a client that cannot take 200 bytes gets nothing.
                let _ = tcp.try_write(BUSY);
                if let Some(suppressed) = gate.refused_log.allow() {
                    warn!(
                        listener = which.label(),
                        %peer,
                        reason = reason.label(),
                        open = gate.open.load(Relaxed),
                        suppressed,
                        "connection refused: too many open"
                    );
                }
                continue;
            }
        };
        stats.accepted.fetch_add(1, Relaxed);
        // Scripts are small and answered at once: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            peer,
            permit,
            activity,
            which,
            router.clone(),
            handshake.clone(),
            raw.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    // Every connection task holds a receiver: all are gone once this resolves.
    stop_tx.closed().await;
    Ok(())
}

/// `accept` failed: out of descriptors (or memory) gets a pause, so the loop does not
/// spin on a backlog it cannot take; anything else (a connection reset before it was
/// accepted) is only counted.
async fn accept_failed(gate: &Gate, which: Listener, e: &io::Error) {
    let stats = gate.counters.of(which);
    let exhausted = e.raw_os_error().is_some_and(|n| {
        use nix::errno::Errno;
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM].contains(&Errno::from_raw(n))
    });
    if exhausted {
        stats.accept_fd_exhausted.fetch_add(1, Relaxed);
    } else {
        stats.accept_other.fetch_add(1, Relaxed);
    }
    if let Some(suppressed) = gate.accept_log.allow() {
        warn!(
            listener = which.label(),
            error = %e,
            open = gate.open.load(Relaxed),
            suppressed,
            "accept failed"
        );
    }
    if exhausted {
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// One connection: the handshake, then HTTP under the watchdog.
#[allow(clippy::too_many_arguments)]
async fn connection<H: Handshake>(
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Permit,
    activity: Arc<Activity>,
    which: Listener,
    router: Router,
    handshake: H,
    raw: Option<Arc<dyn RawPath>>,
    mut stop: watch::Receiver<bool>,
) {
    let gate = permit.gate.clone();
    let counters = gate.counters.clone();
    let stats = counters.of(which);
    stats.open.fetch_add(1, Relaxed);
    let _open = OpenGuard(&stats.open);
    let limits = &gate.limits;
    let io = Timed {
        inner: tcp,
        activity: activity.clone(),
    };
    let handshaken = tokio::select! {
        h = tokio::time::timeout(limits.handshake_timeout, handshake.handshake(io)) => h,
        () = activity.evict.notified() => {
            counters.ended(which, Reason::Evicted);
            return;
        }
    };
    let io = if H::TLS {
        match handshaken {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                counters.ended(which, Reason::HandshakeFailed);
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                counters.ended(which, Reason::HandshakeTimeout);
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        }
    } else {
        match handshaken {
            Ok(Ok(io)) => io,
            _ => return,
        }
    };
    activity.opened();
    let mut io = io;
    let mut prefix = Vec::new();
    let mut tick = tokio::time::interval(watch_period(limits));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let (Some(raw), Some(tcp)) = (&raw, H::plain_tcp(&mut io)) {
        let served = raw.serve(tcp, &mut prefix);
        tokio::pin!(served);
        let mut closing_by: Option<Instant> = None;
        loop {
            tokio::select! {
                to_hyper = served.as_mut() => {
                    if !to_hyper {
                        return;
                    }
                    break;
                }
                _ = tick.tick() => {
                    if closing_by.is_some_and(|by| Instant::now() >= by) {
                        return;
                    }
                    if let Some(reason) = activity.verdict(limits) {
                        counters.ended(which, reason);
                        debug!(%peer, reason = reason.label(), "connection dropped");
                        return;
                    }
                }
                () = activity.evict.notified() => {
                    counters.ended(which, Reason::Evicted);
                    return;
                }
                changed = stop.changed(), if closing_by.is_none() => {
                    // Shutdown: finish the response under way, if any.
                    let _ = changed;
                    if activity.in_flight.load(Relaxed) == 0 {
                        return;
                    }
                    closing_by = Some(Instant::now() + CLOSE_GRACE.max(limits.write_timeout));
                }
            }
        }
    }
    let io = Rewind::new(prefix, io);
    let service = ConnService {
        router,
        peer,
        activity: activity.clone(),
        gate: gate.clone(),
        which,
    };
    let conn = gate.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Set once the connection was asked to finish: it is dropped if it has not by then.
    let mut closing_by: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if closing_by.is_some_and(|by| now >= by) {
                    return;
                }
                match activity.verdict(limits) {
                    // Idle: ask it to finish (HTTP/2: GOAWAY), once.
                    Some(Reason::Idle) if closing_by.is_none() => {
                        counters.ended(which, Reason::Idle);
                        conn.as_mut().graceful_shutdown();
                        closing_by = Some(now + CLOSE_GRACE);
                    }
                    None | Some(Reason::Idle) => {}
                    Some(reason) => {
                        counters.ended(which, reason);
                        debug!(%peer, reason = reason.label(), "connection dropped");
                        return;
                    }
                }
            }
            () = activity.evict.notified() => {
                counters.ended(which, Reason::Evicted);
                debug!(%peer, "connection without a request evicted at the connection cap");
                return;
            }
            changed = stop.changed(), if closing_by.is_none() => {
                // Shutdown (or the server gone): finish what is in flight.
                let _ = changed;
                conn.as_mut().graceful_shutdown();
                closing_by = Some(Instant::now() + CLOSE_GRACE.max(limits.write_timeout));
            }
        }
    }
}

/// How often a connection's deadlines are checked: a quarter of the shortest, between
/// 100 ms and 1 s.
fn watch_period(limits: &Limits) -> Duration {
    let shortest = limits
        .header_timeout
        .min(limits.idle_timeout)
        .min(limits.write_timeout);
    (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What the watchdog knows of a connection. Times are milliseconds after `base`, plus
/// one so that 0 means "not set".
#[derive(Debug)]
struct Activity {
    base: Instant,
    /// The connection was handed to HTTP (after the TLS handshake).
    opened: AtomicU64,
    /// A write returned "would block" then and has made no progress since.
    write_blocked: AtomicU64,
    /// HTTP/1: the first byte of a request head after the last request ended.
    head_started: AtomicU64,
    /// The last time no request was in flight any more.
    idle_since: AtomicU64,
    in_flight: AtomicU32,
    requests: AtomicU64,
    http2: AtomicBool,
    /// Chosen for eviction (see [`Gate::admit`]).
    evicted: AtomicBool,
    evict: Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            opened: AtomicU64::new(1),
            write_blocked: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(1),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    /// Not one request yet (handshaking, or its first head still arriving), so it may
    /// make room for a new connection at the cap.
    fn evictable(&self) -> bool {
        self.requests.load(Relaxed) == 0 && !self.evicted.load(Relaxed)
    }

    fn now(&self) -> u64 {
        millis(self.base.elapsed()) + 1
    }

    fn opened(&self) {
        let now = self.now();
        self.opened.store(now, Relaxed);
        self.idle_since.store(now, Relaxed);
    }

    fn read(&self) {
        if self.in_flight.load(Relaxed) == 0
            && self.requests.load(Relaxed) > 0
            && !self.http2.load(Relaxed)
            && self.head_started.load(Relaxed) == 0
        {
            self.head_started.store(self.now(), Relaxed);
        }
    }

    fn request_started(&self, http2: bool) {
        if http2 {
            self.http2.store(true, Relaxed);
        }
        self.head_started.store(0, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(self.now(), Relaxed);
        }
    }

    /// The deadline this connection broke, if any.
    fn verdict(&self, limits: &Limits) -> Option<Reason> {
        self.verdict_at(limits, self.now())
    }

    /// [`Self::verdict`] at `now` (milliseconds after `base`, plus one).
    fn verdict_at(&self, limits: &Limits, now: u64) -> Option<Reason> {
        let past = |since: u64, limit: Duration| since != 0 && now - since.min(now) > millis(limit);
        if past(self.write_blocked.load(Relaxed), limits.write_timeout) {
            return Some(Reason::WriteTimeout);
        }
        if self.in_flight.load(Relaxed) > 0 {
            return None;
        }
        if self.requests.load(Relaxed) == 0 {
            return past(self.opened.load(Relaxed), limits.header_timeout)
                .then_some(Reason::HeaderTimeout);
        }
        if past(self.head_started.load(Relaxed), limits.header_timeout) {
            return Some(Reason::HeaderTimeout);
        }
        past(self.idle_since.load(Relaxed), limits.idle_timeout).then_some(Reason::Idle)
    }
}

/// A stream that tells [`Activity`] about reads and stalled writes.
#[derive(Debug)]
pub struct Timed<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Timed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> Timed<T> {
    fn wrote<R>(&self, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match &polled {
            Poll::Pending => {
                if self.activity.write_blocked.load(Relaxed) == 0 {
                    self.activity
                        .write_blocked
                        .store(self.activity.now(), Relaxed);
                }
            }
            Poll::Ready(_) => self.activity.write_blocked.store(0, Relaxed),
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Timed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Progress is judged by writes alone: a socket's flush is ready at once even
        // while its writes wait.
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream whose first reads come from bytes already read off it.
#[derive(Debug)]
pub(crate) struct Rewind<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner`, replaying `prefix` first.
    pub(crate) fn new(prefix: Vec<u8>, inner: T) -> Self {
        Rewind {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A path that may answer a plain connection's HTTP/1 requests itself before hyper
/// (the image path, `sendfile.rs`): it reads from `io` into `buf` and answers what is
/// its own; it returns `true` to hand the connection to hyper with `buf`'s bytes
/// replayed first, `false` when the connection is done. The watchdog's deadlines hold
/// throughout (reads, requests and stalled writes are reported through `io`).
pub(crate) trait RawPath: Send + Sync + 'static {
    /// Serve what is its own of the connection.
    fn serve<'a>(
        &'a self,
        io: &'a mut Timed<TcpStream>,
        buf: &'a mut Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

impl<T> Timed<T> {
    /// The stream, for calls that bypass `AsyncWrite` (`sendfile`); report their
    /// progress with [`Self::write_stalled`] and [`Self::write_progressed`].
    pub(crate) fn inner_ref(&self) -> &T {
        &self.inner
    }

    /// A write would block: the write deadline runs from now (if not already).
    pub(crate) fn write_stalled(&self) {
        if self.activity.write_blocked.load(Relaxed) == 0 {
            self.activity
                .write_blocked
                .store(self.activity.now(), Relaxed);
        }
    }

    /// A write made progress.
    pub(crate) fn write_progressed(&self) {
        self.activity.write_blocked.store(0, Relaxed);
    }

    /// An HTTP/1 request is in flight (for the idle and header rules).
    pub(crate) fn request_started(&self) {
        self.activity.request_started(false);
    }

    /// The request started last is answered.
    pub(crate) fn request_ended(&self) {
        self.activity.request_ended();
    }
}

/// The hyper service of one connection: the client address for the handlers, the
/// operator-route check, the body bound, and the in-flight count the idle rule reads.
#[derive(Clone)]
struct ConnService {
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    gate: Arc<Gate>,
    which: Listener,
}

/// Ends a request for the idle rule when dropped (with its response body, or with the
/// handler's future if the connection goes first).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn plain(status: StatusCode, msg: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity
            .request_started(req.version() == axum::http::Version::HTTP_2);
        let guard = InFlight(self.activity.clone());
        let allowed = match &self.gate.limits.allow {
            None => true,
            Some(nets) => {
                is_boot_path(req.uri().path()) || nets.iter().any(|n| n.contains(self.peer.ip()))
            }
        };
        if !allowed {
            self.gate
                .counters
                .of(self.which)
                .forbidden
                .fetch_add(1, Relaxed);
            let r = plain(
                StatusCode::FORBIDDEN,
                "this route is for operators; your address is outside --api-allow-cidr\n",
            );
            return Box::pin(std::future::ready(Ok(track(r, guard))));
        }
        let grpc = is_grpc(&req);
        let too_big = !grpc
            && req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > MAX_BODY_BYTES as u64);
        if too_big {
            let r = plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
            return Box::pin(std::future::ready(Ok(track(r, guard))));
        }
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        let body = if grpc {
            Body::new(body)
        } else {
            Body::new(Limited::new(body, MAX_BODY_BYTES))
        };
        let req = Request::from_parts(parts, body);
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(req).await?;
            Ok(track(response, guard))
        })
    }
}

/// `response` with `guard` riding on its body: the request counts as in flight until
/// the body is sent (or dropped).
fn track(response: Response<Body>, guard: InFlight) -> Response<Body> {
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _ = &guard;
            frame
        }))
    })
}

/// Raise this process's soft `RLIMIT_NOFILE` to its hard limit; the soft limit in force
/// afterwards.
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// `--http-max-connections` lowered so that HTTP never takes the descriptors the rest of
/// ironboot needs: `nofile` (the soft limit) minus `reserve`, over 2.5 because a
/// connection may hold a second descriptor (a boot asset or cached image streamed from
/// disk) and eviction may overshoot the cap by a quarter. At least 16, so the API stays
/// reachable on a host with a tiny limit.
pub(crate) fn fit_to_descriptors(wanted: usize, nofile: u64, reserve: u64) -> usize {
    // Eviction may overshoot the cap by a quarter (see `Gate::admit`): 2.5 descriptors
    // per place.
    let budget = nofile.saturating_sub(reserve) * 2 / 5;
    let budget = usize::try_from(budget).unwrap_or(usize::MAX).max(16);
    wanted.min(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_path_is_open_and_the_rest_is_operators() {
        for p in [
            "/ipxe/boot.ipxe",
            "/tftp/snp.efi",
            "/assets/kernel-amd64",
            "/factory/pxe/x",
            "/config",
            "/healthz",
            "/grpctunnel.v1.TunnelService/OpenReverseTunnel",
        ] {
            assert!(is_boot_path(p), "{p}");
        }
        for p in [
            "/metrics",
            "/api/v1/machines",
            "/",
            "/configx",
            "/healthz/x",
            "/tftp",
        ] {
            assert!(!is_boot_path(p), "{p}");
        }
    }

    #[test]
    fn the_connection_cap_keeps_descriptors_in_reserve() {
        assert_eq!(fit_to_descriptors(4096, 1_048_576, 1024), 4096);
        assert_eq!(fit_to_descriptors(4096, 4096, 1024), 1228);
        assert_eq!(fit_to_descriptors(4096, 1024, 1024), 16);
    }

    #[tokio::test]
    async fn caps_count_per_source_and_in_total() {
        let limits = Limits {
            max_connections: 3,
            max_per_source: 2,
            ..Limits::default()
        };
        let gate = Gate::new(limits, Arc::new(ConnCounters::default()));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // Every connection here has answered requests already: none may be evicted.
        let answered = || {
            let act = Arc::new(Activity::new());
            act.request_started(false);
            act
        };
        let acts: Vec<_> = (0..6).map(|_| answered()).collect();
        let p1 = gate.admit(a, &acts[0]).unwrap();
        let _p2 = gate.admit(a, &acts[1]).unwrap();
        assert_eq!(gate.admit(a, &acts[2]).err(), Some(Reason::PerSource));
        let _p3 = gate.admit(b, &acts[3]).unwrap();
        assert_eq!(gate.admit(b, &acts[4]).err(), Some(Reason::MaxConnections));
        drop(p1);
        let _p4 = gate.admit(a, &acts[5]).unwrap();
        assert_eq!(gate.open.load(Relaxed), 3);
    }

    #[tokio::test]
    async fn accept_out_of_descriptors_pauses_and_is_counted() {
        let counters = Arc::new(ConnCounters::default());
        let gate = Gate::new(Limits::default(), counters.clone());
        let start = Instant::now();
        let emfile = io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        accept_failed(&gate, Listener::Api, &emfile).await;
        assert!(start.elapsed() >= ACCEPT_BACKOFF, "a pause, not a spin");
        let aborted = io::Error::from_raw_os_error(nix::errno::Errno::ECONNABORTED as i32);
        accept_failed(&gate, Listener::Api, &aborted).await;
        let mut text = String::new();
        counters.render_prometheus(&mut text);
        for line in [
            "ironboot_http_accept_errors_total{listener=\"api\",kind=\"fd_exhausted\"} 1",
            "ironboot_http_accept_errors_total{listener=\"api\",kind=\"other\"} 1",
            "ironboot_http_accept_errors_total{listener=\"tls\",kind=\"fd_exhausted\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        crate::boot::metrics::assert_families_declared(&text);
    }

    #[test]
    fn at_the_cap_the_oldest_connection_without_a_request_makes_room() {
        let limits = Limits {
            max_connections: 3,
            ..Limits::default()
        };
        let gate = Gate::new(limits, Arc::new(ConnCounters::default()));
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        let acts: Vec<_> = (0..6).map(|_| Arc::new(Activity::new())).collect();
        // 0 has sent a request; 1 and 2 have not.
        acts[0].request_started(false);
        let _p: Vec<_> = (0..3)
            .map(|i| gate.admit(ip(i), &acts[i as usize]).unwrap())
            .collect();
        // The fourth evicts 1 (the oldest without a request), the fifth 2, ...
        let _p3 = gate.admit(ip(3), &acts[3]).unwrap();
        assert!(acts[1].evicted.load(Relaxed) && !acts[2].evicted.load(Relaxed));
        acts[3].request_started(false);
        let _p4 = gate.admit(ip(4), &acts[4]).unwrap();
        assert!(acts[2].evicted.load(Relaxed));
        assert!(
            !acts[0].evicted.load(Relaxed),
            "a connection with requests stays"
        );
        // Once 3 and 4 have sent requests too, nobody is left to evict.
        acts[4].request_started(false);
        assert_eq!(
            gate.admit(ip(5), &acts[5]).err(),
            Some(Reason::MaxConnections)
        );
    }

    #[test]
    fn the_watchdog_applies_each_deadline() {
        let limits = Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(20),
            ..Limits::default()
        };
        // Events are stamped with the real clock (milliseconds into the test); verdicts
        // are asked for at chosen later times.
        let at = |s: u64| s * 1000;
        // No request head at all.
        let a = Activity::new();
        assert_eq!(a.verdict_at(&limits, at(5)), None);
        assert_eq!(a.verdict_at(&limits, at(12)), Some(Reason::HeaderTimeout));
        // A request in flight is never idle nor late with its head.
        let a = Activity::new();
        a.request_started(false);
        assert_eq!(a.verdict_at(&limits, at(100)), None);
        // Then idle; an HTTP/1 head begun but not finished is held to the header deadline.
        a.request_ended();
        assert_eq!(a.verdict_at(&limits, at(5)), None);
        a.read();
        assert_eq!(a.verdict_at(&limits, at(12)), Some(Reason::HeaderTimeout));
        // Without a head begun, only the idle rule.
        let a = Activity::new();
        a.request_started(false);
        a.request_ended();
        assert_eq!(a.verdict_at(&limits, at(25)), None);
        assert_eq!(a.verdict_at(&limits, at(35)), Some(Reason::Idle));
        // HTTP/2 reads (pings, window updates) start no head; the idle rule applies.
        let a = Activity::new();
        a.request_started(true);
        a.request_ended();
        a.read();
        assert_eq!(a.verdict_at(&limits, at(25)), None);
        assert_eq!(a.verdict_at(&limits, at(35)), Some(Reason::Idle));
        // A stalled write, even with a request in flight; progress clears it.
        let a = Activity::new();
        a.request_started(false);
        a.write_blocked.store(a.now(), Relaxed);
        assert_eq!(a.verdict_at(&limits, at(15)), None);
        assert_eq!(a.verdict_at(&limits, at(25)), Some(Reason::WriteTimeout));
        a.write_blocked.store(0, Relaxed);
        assert_eq!(a.verdict_at(&limits, at(25)), None);
    }
}
