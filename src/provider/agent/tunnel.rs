//! The server side of the metal agent's reverse gRPC tunnel (jhump/grpctunnel v0.3).
//!
//! The agent calls `OpenReverseTunnel`, sending `ServerToClient` frames; ironboot answers
//! with `ClientToServer` frames and so plays the *client* of the RPCs carried inside:
//! `new_stream` (method and headers), `request_message` (+ `more_request_data` chunks of
//! at most 16 KiB), `half_close`; the agent answers with `response_headers`,
//! `response_message` chunks and `close_stream` (status and trailers).
//!
//! Protocol revisions: both ends send the header `grpctunnel-negotiate: on` when they
//! know revision ONE; then the agent's first frame is `settings` (stream ID -1) with its
//! supported revisions and its per-stream receive window. Revision ONE has per-stream
//! flow control in both directions: a sender may only send as many data bytes as the
//! peer's window allows, and the receiver gives consumed bytes back with
//! `window_update`. Without negotiation (revision ZERO) there is neither settings nor
//! flow control.
//!
//! Tunnels are keyed by the agent's `machine-id` metadata, which must be a UUID; the
//! [`AgentGate`] decides whether the agent may speak for that machine (see
//! [`super::admission`]), before anything else is done or logged. A second tunnel for a
//! machine whose tunnel is open replaces it only once the old one fails a ping (a Hello
//! call): a live agent is never displaced. The end of a tunnel is noticed at once and
//! fails the calls in flight on it. Open tunnels are capped ([`MAX_TUNNELS`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ironboot_net::log_limit::LogLimiter;
use ironboot_net::machine::Uuid;
use ironboot_proto::google::rpc::Status as RpcStatus;
use ironboot_proto::grpctunnel::v1::tunnel_service_server::{TunnelService, TunnelServiceServer};
use ironboot_proto::grpctunnel::v1::{
    ClientToServer, MessageData, Metadata, NewStream, ProtocolRevision, ServerToClient, Settings,
    client_to_server, metadata, server_to_client,
};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::admission::{AgentGate, Refusal};

/// The gRPC metadata key in which the agent sends its machine ID (SMBIOS UUID).
pub(crate) const MACHINE_ID_METADATA: &str = "machine-id";
/// The header by which both ends announce that they know protocol revision ONE.
const NEGOTIATE_HEADER: &str = "grpctunnel-negotiate";
/// The path prefix of the tunnel service's methods on the API port.
pub(crate) const SERVICE_PATH: &str = "/grpctunnel.v1.TunnelService";
/// Largest data chunk in one frame (upstream's `chunkMax`).
const CHUNK_MAX: usize = 16 * 1024;
/// Our receive window for each stream, announced in `new_stream` (upstream's value).
const RECEIVE_WINDOW: u32 = 64 * 1024;
/// How long an agent that negotiated revision ONE may take to send its settings.
const SETTINGS_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued towards one agent before senders wait.
const OUTBOUND_QUEUE: usize = 64;
/// Most tunnels open (or waiting for their settings) at once; more are refused.
pub(crate) const MAX_TUNNELS: usize = 16_384;
/// How long the agent behind an open tunnel has to answer the ping that decides whether
/// a second tunnel for its machine may replace it.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The agent's liveness call, used as that ping.
const HELLO_METHOD: &str = "/management.AgentService/Hello";

/// A tunnel opened or closed (for the control loop: a connect wakes it at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TunnelEvent {
    /// An agent opened a tunnel (possibly replacing an older one of the same machine).
    Connected {
        /// The agent's `machine-id`.
        machine_id: String,
    },
    /// The machine's current tunnel ended; no tunnel of that machine is left.
    Disconnected {
        /// The agent's `machine-id`.
        machine_id: String,
    },
}

/// Why a call over a tunnel failed (the client adds the machine and method).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The tunnel was closed before or during the call.
    #[error("the tunnel closed")]
    Closed,
    /// No final status within the deadline; the stream was cancelled.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The agent answered with a non-OK gRPC status.
    #[error("the agent answered {code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The agent broke the tunnel protocol on this stream.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The open tunnels, by machine ID. Cheap to clone.
#[derive(Clone)]
pub struct Tunnels {
    inner: Arc<Registry>,
}

struct Registry {
    tunnels: Mutex<HashMap<String, Arc<Tunnel>>>,
    events: broadcast::Sender<TunnelEvent>,
    gate: Arc<AgentGate>,
    /// Tunnels open or waiting for their settings.
    open: AtomicUsize,
    stats: TunnelStats,
    /// Refusals are logged at most once a second: a flood must not flood the log.
    refusal_log: LogLimiter,
    /// Answer `grpctunnel-negotiate: on` (revision ONE); off = revision ZERO only.
    negotiate: bool,
    next_generation: AtomicU64,
    /// Set by [`Tunnels::close_all`]: new tunnels are refused.
    closing: AtomicBool,
}

impl Tunnels {
    /// A registry that negotiates revision ONE with agents that know it and admits the
    /// agents `gate` lets in.
    pub fn new(gate: Arc<AgentGate>) -> Self {
        Self::with_negotiation(gate, true)
    }

    /// `negotiate = false` never announces revision ONE, so every tunnel runs revision
    /// ZERO (as with an agent built on a grpctunnel older than v0.3).
    pub fn with_negotiation(gate: Arc<AgentGate>, negotiate: bool) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Registry {
                tunnels: Mutex::new(HashMap::new()),
                events,
                gate,
                open: AtomicUsize::new(0),
                stats: TunnelStats::default(),
                refusal_log: LogLimiter::new(Duration::from_secs(1)),
                negotiate,
                next_generation: AtomicU64::new(1),
                closing: AtomicBool::new(false),
            }),
        }
    }

    /// Tunnel open/close events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TunnelEvent> {
        self.inner.events.subscribe()
    }

    /// The current tunnel of `machine_id`, if its agent is connected.
    pub fn get(&self, machine_id: &str) -> Option<Arc<Tunnel>> {
        self.inner.lock().get(machine_id).cloned()
    }

    /// The admission policy.
    pub(crate) fn gate(&self) -> &Arc<AgentGate> {
        &self.inner.gate
    }

    /// The counters.
    #[cfg(any(test, feature = "test-support"))]
    pub fn stats(&self) -> &TunnelStats {
        &self.inner.stats
    }

    /// Closes `machine_id`'s tunnel unless it comes from `keep` (the machine's binding
    /// moved away from its address, or two addresses contest it: `keep = None`).
    pub fn close_unless_from(&self, machine_id: &str, keep: Option<IpAddr>) {
        let tunnel = {
            let mut tunnels = self.inner.lock();
            match tunnels.get(machine_id) {
                Some(t) if keep.is_none_or(|ip| t.peer != Some(ip)) => tunnels.remove(machine_id),
                _ => None,
            }
        };
        if let Some(tunnel) = tunnel {
            warn!(
                machine_id,
                peer = tunnel.peer.map(tracing::field::display),
                "closing the agent tunnel: the machine's address binding changed"
            );
            tunnel.close();
            let _ = self.inner.events.send(TunnelEvent::Disconnected {
                machine_id: machine_id.to_owned(),
            });
        }
    }

    /// The machine IDs with an open tunnel, sorted.
    #[cfg(feature = "test-support")]
    pub fn connected(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.lock().keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Closes every tunnel and refuses new ones (at shutdown: the agents' `Serve`
    /// returns, so the HTTP server can finish its connections instead of waiting on
    /// tunnels that never end).
    pub fn close_all(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        let all: Vec<Arc<Tunnel>> = self.inner.lock().drain().map(|(_, t)| t).collect();
        for tunnel in all {
            tunnel.close();
        }
    }

    /// The tonic service to serve (h2c gRPC) on the API port.
    pub(crate) fn service(&self) -> TunnelServiceServer<TunnelHandler> {
        // Frames carry at most 16 KiB of data each, well under tonic's default limits;
        // whole agent messages are reassembled here, not by tonic.
        TunnelServiceServer::new(TunnelHandler {
            tunnels: self.clone(),
        })
    }

    /// `router` with the tunnel service mounted next to its HTTP routes (gRPC requests
    /// are plain HTTP/2 POSTs to `/grpctunnel.v1.TunnelService/<method>`).
    pub fn mount(&self, router: axum::Router) -> axum::Router {
        router.route_service(&format!("{SERVICE_PATH}/{{*method}}"), self.service())
    }

    /// Runs one tunnel: settings, registration, then its frames until it ends.
    async fn run(
        self,
        machine_id: String,
        peer: Option<IpAddr>,
        expect_settings: bool,
        mut inbound: Streaming<ServerToClient>,
        out: mpsc::Sender<Result<ClientToServer, Status>>,
    ) {
        let _open = OpenSlot(&self.inner.open);
        let (revision, peer_window) = if expect_settings {
            match await_settings(&mut inbound).await {
                Ok(v) => v,
                Err(e) => {
                    warn!(%machine_id, error = %e, "agent tunnel refused");
                    let _ = out.send(Err(Status::failed_precondition(e))).await;
                    return;
                }
            }
        } else {
            (ProtocolRevision::RevisionZero, 0)
        };
        if let Some(old) = self.get(&machine_id) {
            // A live agent keeps its tunnel: the newcomer may be an impostor (or a
            // duplicate of the same agent), and the old one is proven to work.
            match old.unary(HELLO_METHOD, &[], PING_TIMEOUT).await {
                Ok(_) => {
                    self.inner
                        .stats
                        .replacement_refused
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(
                        %machine_id,
                        peer = peer.map(tracing::field::display),
                        open_from = old.peer.map(tracing::field::display),
                        "second agent tunnel refused: the open one answers"
                    );
                    let _ = out
                        .send(Err(Status::already_exists(
                            "this machine's agent already has a tunnel that answers",
                        )))
                        .await;
                    return;
                }
                Err(e) => {
                    self.inner.stats.replaced.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        %machine_id,
                        peer = peer.map(tracing::field::display),
                        open_from = old.peer.map(tracing::field::display),
                        error = %e,
                        "agent reconnected: its older tunnel failed a ping and is replaced"
                    );
                }
            }
        }
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let tunnel = Arc::new(Tunnel {
            machine_id: machine_id.clone(),
            peer,
            generation,
            revision,
            peer_window,
            out: Mutex::new(Some(out)),
            streams: Mutex::new(StreamTable::default()),
            opening: tokio::sync::Mutex::new(()),
        });
        let old = {
            let mut tunnels = self.inner.lock();
            if self.inner.closing.load(Ordering::SeqCst) {
                drop(tunnels);
                tunnel.close();
                return;
            }
            tunnels.insert(machine_id.clone(), tunnel.clone())
        };
        if let Some(old) = old {
            old.close();
        }
        info!(
            %machine_id,
            peer = peer.map(tracing::field::display),
            revision = revision.as_str_name(),
            "agent tunnel open"
        );
        let _ = self.inner.events.send(TunnelEvent::Connected {
            machine_id: machine_id.clone(),
        });

        let ended = tunnel.read_frames(&mut inbound).await;
        tunnel.close();
        let was_current = {
            let mut tunnels = self.inner.lock();
            let current = tunnels
                .get(&machine_id)
                .is_some_and(|t| t.generation == generation);
            if current {
                tunnels.remove(&machine_id);
            }
            current
        };
        match ended {
            Ok(()) => info!(%machine_id, "agent tunnel closed by the agent"),
            Err(e) => warn!(%machine_id, error = %e, "agent tunnel ended"),
        }
        if was_current {
            let _ = self
                .inner
                .events
                .send(TunnelEvent::Disconnected { machine_id });
        }
    }
}

/// One place in [`Registry::open`], given back when the tunnel's task ends.
struct OpenSlot<'a>(&'a AtomicUsize);

impl Drop for OpenSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Tunnel admissions and refusals, for `/metrics`.
#[derive(Debug, Default)]
pub struct TunnelStats {
    admitted: AtomicU64,
    /// By [`REFUSALS`] index.
    refused: [AtomicU64; REFUSALS.len()],
    replaced: AtomicU64,
    replacement_refused: AtomicU64,
}

/// The reasons a tunnel is refused, as metric labels.
const REFUSALS: [&str; 8] = [
    "no_machine_id",
    "not_a_uuid",
    "unknown_machine",
    "not_bound",
    "other_address",
    "contested",
    "no_peer_address",
    "too_many_tunnels",
];

impl TunnelStats {
    fn refused(&self, reason: &str) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tunnels refused for `reason` (a [`REFUSALS`] label).
    #[cfg(any(test, feature = "test-support"))]
    pub fn refusals(&self, reason: &str) -> u64 {
        REFUSALS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.refused[i].load(Ordering::Relaxed))
    }

    /// Prometheus text of the counters; `open` is the number of open tunnels.
    pub(crate) fn render_prometheus(&self, open: usize, out: &mut String) {
        let _ = write!(
            out,
            "# HELP ironboot_agent_tunnels Metal agent tunnels open or opening.\n\
             # TYPE ironboot_agent_tunnels gauge\n\
             ironboot_agent_tunnels {open}\n\
             # HELP ironboot_agent_tunnels_admitted_total Agent tunnels admitted.\n\
             # TYPE ironboot_agent_tunnels_admitted_total counter\n\
             ironboot_agent_tunnels_admitted_total {}\n\
             # HELP ironboot_agent_tunnels_replaced_total Agent tunnels that replaced an older \
             one of their machine after it failed a ping.\n\
             # TYPE ironboot_agent_tunnels_replaced_total counter\n\
             ironboot_agent_tunnels_replaced_total {}\n\
             # HELP ironboot_agent_tunnels_refused_total Agent tunnels refused, by reason.\n\
             # TYPE ironboot_agent_tunnels_refused_total counter\n",
            self.admitted.load(Ordering::Relaxed),
            self.replaced.load(Ordering::Relaxed),
        );
        for (reason, n) in REFUSALS.iter().zip(&self.refused) {
            let _ = writeln!(
                out,
                "ironboot_agent_tunnels_refused_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "ironboot_agent_tunnels_refused_total{{reason=\"live_tunnel\"}} {}",
            self.replacement_refused.load(Ordering::Relaxed)
        );
    }
}

impl Tunnels {
    /// Prometheus text of the tunnel counters.
    pub(crate) fn render_prometheus(&self, out: &mut String) {
        let open = self.inner.open.load(Ordering::SeqCst);
        self.inner.stats.render_prometheus(open, out);
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Tunnel>>> {
        self.tunnels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Waits for the agent's settings frame and picks the highest revision both know.
async fn await_settings(
    inbound: &mut Streaming<ServerToClient>,
) -> Result<(ProtocolRevision, u32), String> {
    let first = tokio::time::timeout(SETTINGS_TIMEOUT, inbound.message())
        .await
        .map_err(|_| format!("no settings frame within {SETTINGS_TIMEOUT:?}"))?
        .map_err(|e| format!("reading the settings frame: {e}"))?
        .ok_or("the agent closed the tunnel before sending its settings")?;
    let settings: Settings = match first.frame {
        Some(server_to_client::Frame::Settings(s)) if first.stream_id == -1 => s,
        Some(server_to_client::Frame::Settings(_)) => {
            return Err(format!(
                "settings frame on stream {} instead of -1",
                first.stream_id
            ));
        }
        other => return Err(format!("first frame was not settings but {other:?}")),
    };
    let revs = &settings.supported_protocol_revisions;
    if revs.contains(&(ProtocolRevision::RevisionOne as i32)) {
        Ok((ProtocolRevision::RevisionOne, settings.initial_window_size))
    } else if revs.is_empty() || revs.contains(&(ProtocolRevision::RevisionZero as i32)) {
        Ok((ProtocolRevision::RevisionZero, 0))
    } else {
        Err(format!(
            "the agent supports only protocol revisions {revs:?}, ironboot 0 and 1"
        ))
    }
}

/// The tonic handler of `grpctunnel.v1.TunnelService`.
#[derive(Clone)]
pub(crate) struct TunnelHandler {
    tunnels: Tunnels,
}

#[tonic::async_trait]
impl TunnelService for TunnelHandler {
    type OpenTunnelStream = ReceiverStream<Result<ServerToClient, Status>>;
    type OpenReverseTunnelStream = ReceiverStream<Result<ClientToServer, Status>>;

    async fn open_tunnel(
        &self,
        _request: Request<Streaming<ClientToServer>>,
    ) -> Result<Response<Self::OpenTunnelStream>, Status> {
        Err(Status::unimplemented(
            "ironboot serves only reverse tunnels (OpenReverseTunnel), as the metal agent opens",
        ))
    }

    async fn open_reverse_tunnel(
        &self,
        request: Request<Streaming<ServerToClient>>,
    ) -> Result<Response<Self::OpenReverseTunnelStream>, Status> {
        let inner = &self.tunnels.inner;
        let refuse = |reason: &str, status: Status| {
            inner.stats.refused(reason);
            Err(status)
        };
        // Checked before anything is logged: the value is the client's to choose.
        let Some(claimed) = request.metadata().get(MACHINE_ID_METADATA) else {
            return refuse(
                "no_machine_id",
                Status::invalid_argument(
                    "OpenReverseTunnel: no `machine-id` metadata (the metal agent sends its \
                     SMBIOS UUID there)",
                ),
            );
        };
        let Some(uuid) = claimed
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<Uuid>().ok())
        else {
            return refuse(
                "not_a_uuid",
                Status::invalid_argument("OpenReverseTunnel: `machine-id` is not a UUID"),
            );
        };
        if inner.closing.load(Ordering::SeqCst) {
            return Err(Status::unavailable("ironboot is shutting down"));
        }
        let machine_id = uuid.to_string();
        let peer = peer_ip(&request);
        if let Err(refusal) = inner.gate.admit(&uuid, peer) {
            let reason = match &refusal {
                Refusal::Unknown { .. } => "unknown_machine",
                Refusal::NotBound { .. } => "not_bound",
                Refusal::OtherAddress { .. } => "other_address",
                Refusal::Contested { .. } => "contested",
                Refusal::NoPeerAddress => "no_peer_address",
            };
            let bound = match &refusal {
                Refusal::OtherAddress { bound, .. } => Some(*bound),
                _ => None,
            };
            if let Some(suppressed) = inner.refusal_log.allow(std::time::Instant::now()) {
                warn!(
                    %machine_id,
                    peer = peer.map(tracing::field::display),
                    bound = bound.map(tracing::field::display),
                    reason,
                    suppressed,
                    "agent tunnel refused (at most one line a second; `suppressed` were not logged)"
                );
            }
            return refuse(reason, Status::permission_denied(refusal.to_string()));
        }
        if inner.open.fetch_add(1, Ordering::SeqCst) >= MAX_TUNNELS {
            inner.open.fetch_sub(1, Ordering::SeqCst);
            return refuse(
                "too_many_tunnels",
                Status::resource_exhausted("too many agent tunnels open"),
            );
        }
        inner.stats.admitted.fetch_add(1, Ordering::Relaxed);
        let agent_negotiates = request
            .metadata()
            .get(NEGOTIATE_HEADER)
            .is_some_and(|v| v.as_bytes() == b"on");
        let negotiate = inner.negotiate;
        debug!(%machine_id, agent_negotiates, "agent opens a reverse tunnel");
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(self.tunnels.clone().run(
            machine_id,
            peer,
            negotiate && agent_negotiates,
            request.into_inner(),
            tx,
        ));
        let mut response = Response::new(ReceiverStream::new(rx));
        if negotiate {
            response.metadata_mut().insert(
                NEGOTIATE_HEADER,
                tonic::metadata::MetadataValue::from_static("on"),
            );
        }
        Ok(response)
    }
}

/// The client's address, as the listener recorded it (axum's `ConnectInfo`).
fn peer_ip<T>(request: &Request<T>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
}

/// One agent's tunnel.
pub struct Tunnel {
    machine_id: String,
    /// The agent's address.
    peer: Option<IpAddr>,
    generation: u64,
    revision: ProtocolRevision,
    /// The agent's receive window for each new stream (revision ONE).
    peer_window: u32,
    /// Frames to the agent; `None` once closed (the response stream then ends).
    out: Mutex<Option<mpsc::Sender<Result<ClientToServer, Status>>>>,
    streams: Mutex<StreamTable>,
    /// Held while a stream ID is taken and its new_stream frame queued.
    opening: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct StreamTable {
    last_id: i64,
    closed: bool,
    active: HashMap<i64, StreamSlot>,
}

struct StreamSlot {
    frames: mpsc::UnboundedSender<server_to_client::Frame>,
    window: Arc<SendWindow>,
}

/// What the agent still accepts on one stream (revision ONE).
struct SendWindow {
    available: Mutex<u32>,
    grown: Notify,
}

impl SendWindow {
    fn new(initial: u32) -> Self {
        Self {
            available: Mutex::new(initial),
            grown: Notify::new(),
        }
    }

    fn grow(&self, add: u32) {
        let mut w = self.available.lock().unwrap_or_else(|e| e.into_inner());
        *w = w.saturating_add(add);
        self.grown.notify_one();
    }

    /// Takes up to `want` bytes of window, waiting while it is empty.
    async fn take(&self, want: usize) -> usize {
        loop {
            let notified = self.grown.notified();
            {
                let mut w = self.available.lock().unwrap_or_else(|e| e.into_inner());
                if *w > 0 {
                    let n = want.min(*w as usize);
                    // n <= *w, which is a u32.
                    *w -= n as u32;
                    return n;
                }
            }
            notified.await;
        }
    }
}

impl Tunnel {
    /// The negotiated protocol revision.
    #[cfg(feature = "test-support")]
    pub fn revision(&self) -> ProtocolRevision {
        self.revision
    }

    fn table(&self) -> MutexGuard<'_, StreamTable> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the tunnel: our response stream finishes (the agent's `Serve` returns) and
    /// the calls in flight fail with [`CallError::Closed`].
    fn close(&self) {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut table = self.table();
        table.closed = true;
        table.active.clear();
    }

    async fn send(&self, stream_id: i64, frame: client_to_server::Frame) -> Result<(), CallError> {
        let out = self
            .out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(CallError::Closed)?;
        out.send(Ok(ClientToServer {
            stream_id,
            frame: Some(frame),
        }))
        .await
        .map_err(|_| CallError::Closed)
    }

    /// Reads the agent's frames and hands them to their streams until the tunnel ends.
    async fn read_frames(&self, inbound: &mut Streaming<ServerToClient>) -> Result<(), String> {
        loop {
            let msg = match inbound.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("reading from the agent: {e}")),
            };
            let Some(frame) = msg.frame else {
                return Err(format!("empty frame on stream {}", msg.stream_id));
            };
            let mut table = self.table();
            if table.closed {
                // Replaced by a newer tunnel: ignore the stragglers until the agent hangs up.
                continue;
            }
            let slot = table.active.get(&msg.stream_id);
            match (frame, slot) {
                (server_to_client::Frame::Settings(_), _) => {
                    debug!(machine_id = %self.machine_id, "ignoring a repeated settings frame");
                }
                (server_to_client::Frame::WindowUpdate(n), Some(slot)) => slot.window.grow(n),
                (frame, Some(slot)) => {
                    let done = matches!(frame, server_to_client::Frame::CloseStream(_));
                    // The call may have given up already; its frames are then dropped.
                    let _ = slot.frames.send(frame);
                    if done {
                        table.active.remove(&msg.stream_id);
                    }
                }
                (_, None) if msg.stream_id <= table.last_id => {
                    // A late frame of a finished or cancelled stream.
                }
                (_, None) => {
                    return Err(format!(
                        "frame for stream {} which was never opened",
                        msg.stream_id
                    ));
                }
            }
        }
    }

    /// One unary call: `method` is the full gRPC path (`/package.Service/Method`),
    /// `request` the encoded request message; answers the encoded response message.
    pub(crate) async fn unary(
        &self,
        method: &str,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let mut guard = StreamGuard {
            tunnel: self,
            stream_id: None,
            opened: false,
            finished: false,
        };
        let call = self.exchange(&mut guard, method, request, timeout);
        let result = match tokio::time::timeout(timeout, call).await {
            // The agent enforces the same deadline (`grpc-timeout`) and may report it
            // first.
            Ok(Err(CallError::Status {
                code: tonic::Code::DeadlineExceeded,
                ..
            })) => Err(CallError::Timeout(timeout)),
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(timeout)),
        };
        // Cancel what the agent may still be working on (timeout, protocol error).
        guard.finished = matches!(
            result,
            Ok(_) | Err(CallError::Status { .. } | CallError::Closed)
        );
        result
    }

    async fn exchange(
        &self,
        guard: &mut StreamGuard<'_>,
        method: &str,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let flow_control = self.revision == ProtocolRevision::RevisionOne;
        let size = u32::try_from(request.len())
            .map_err(|_| CallError::Protocol(format!("request of {} bytes", request.len())))?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let window = Arc::new(SendWindow::new(self.peer_window));
        let headers = Metadata {
            md: HashMap::from([(
                "grpc-timeout".to_owned(),
                metadata::Values {
                    val: vec![grpc_timeout(timeout)],
                },
            )]),
        };
        // The agent refuses a stream ID lower than one it has seen (and drops the whole
        // tunnel): IDs are taken and their new_stream frames queued in one step.
        let stream_id = {
            let _opening = self.opening.lock().await;
            let stream_id = {
                let mut table = self.table();
                if table.closed {
                    return Err(CallError::Closed);
                }
                table.last_id += 1;
                let id = table.last_id;
                table.active.insert(
                    id,
                    StreamSlot {
                        frames: tx,
                        window: window.clone(),
                    },
                );
                id
            };
            guard.stream_id = Some(stream_id);
            self.send(
                stream_id,
                client_to_server::Frame::NewStream(NewStream {
                    method_name: method.to_owned(),
                    request_headers: Some(headers),
                    initial_window_size: if flow_control { RECEIVE_WINDOW } else { 0 },
                    protocol_revision: self.revision as i32,
                }),
            )
            .await?;
            guard.opened = true;
            stream_id
        };

        // The request, in chunks the agent's window allows. Frames that arrive meanwhile
        // (an early error status) are kept for the answer below.
        let mut early = Vec::new();
        let mut rest = request;
        let mut first = true;
        while first || !rest.is_empty() {
            let want = rest.len().min(CHUNK_MAX);
            let n = if !flow_control || want == 0 {
                want
            } else {
                tokio::select! {
                    n = window.take(want) => n,
                    frame = rx.recv() => {
                        let frame = frame.ok_or(CallError::Closed)?;
                        let closing = matches!(frame, server_to_client::Frame::CloseStream(_));
                        early.push(frame);
                        if closing {
                            break;
                        }
                        continue;
                    }
                }
            };
            let (chunk, tail) = rest.split_at(n);
            let frame = if first {
                client_to_server::Frame::RequestMessage(MessageData {
                    size,
                    data: chunk.to_vec(),
                })
            } else {
                client_to_server::Frame::MoreRequestData(chunk.to_vec())
            };
            self.send(stream_id, frame).await?;
            rest = tail;
            first = false;
        }
        let closed_early = early
            .iter()
            .any(|f| matches!(f, server_to_client::Frame::CloseStream(_)));
        if !closed_early {
            self.send(stream_id, client_to_server::Frame::HalfClose(()))
                .await?;
        }

        // The answer: optional headers, one message in chunks, then the final status.
        let mut early = early.into_iter();
        let mut message: Option<Vec<u8>> = None;
        let mut partial: Option<(usize, Vec<u8>)> = None;
        loop {
            let frame = match early.next() {
                Some(f) => f,
                None => rx.recv().await.ok_or(CallError::Closed)?,
            };
            let data_len = match &frame {
                server_to_client::Frame::ResponseMessage(m) => m.data.len(),
                server_to_client::Frame::MoreResponseData(d) => d.len(),
                _ => 0,
            };
            if flow_control && data_len > 0 {
                // Every chunk is consumed (and its bytes given back) at once, so our
                // window is whole whenever the agent sends: a bigger chunk overruns it.
                if data_len > RECEIVE_WINDOW as usize {
                    return Err(CallError::Protocol(format!(
                        "the agent sent a {data_len}-byte chunk, over the {RECEIVE_WINDOW}-byte \
                         flow-control window"
                    )));
                }
                self.send(
                    stream_id,
                    client_to_server::Frame::WindowUpdate(data_len as u32),
                )
                .await?;
            }
            match frame {
                server_to_client::Frame::ResponseHeaders(_) => {}
                server_to_client::Frame::ResponseMessage(m) => {
                    if message.is_some() || partial.is_some() {
                        return Err(CallError::Protocol(
                            "more than one response message for a unary call".into(),
                        ));
                    }
                    settle(m.size as usize, m.data, &mut message, &mut partial)?;
                }
                server_to_client::Frame::MoreResponseData(d) => {
                    let Some((size, mut data)) = partial.take() else {
                        return Err(CallError::Protocol(
                            "response data without a message envelope".into(),
                        ));
                    };
                    data.extend_from_slice(&d);
                    settle(size, data, &mut message, &mut partial)?;
                }
                server_to_client::Frame::CloseStream(close) => {
                    let status: RpcStatus = close.status.unwrap_or_default();
                    if status.code != 0 {
                        return Err(CallError::Status {
                            code: tonic::Code::from_i32(status.code),
                            message: status.message,
                        });
                    }
                    return message.ok_or_else(|| {
                        CallError::Protocol("the stream closed OK without a response".into())
                    });
                }
                server_to_client::Frame::Settings(_) | server_to_client::Frame::WindowUpdate(_) => {
                }
            }
        }
    }
}

/// Cleans up a stream when its call ends: forgets it and, if the call gave up before the
/// agent's final status (timeout, or the caller dropped the future), cancels it.
struct StreamGuard<'a> {
    tunnel: &'a Tunnel,
    /// Set once an ID is taken.
    stream_id: Option<i64>,
    /// Whether the agent was sent the stream's new_stream frame.
    opened: bool,
    /// Whether the stream ended (no cancel needed).
    finished: bool,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        let Some(stream_id) = self.stream_id else {
            return;
        };
        let was_active = self.tunnel.table().active.remove(&stream_id).is_some();
        if was_active && self.opened && !self.finished {
            let out = self
                .tunnel
                .out
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(out) = out {
                // Best effort: a full queue means the agent is not reading anyway.
                let _ = out.try_send(Ok(ClientToServer {
                    stream_id,
                    frame: Some(client_to_server::Frame::Cancel(())),
                }));
            }
        }
    }
}

/// A `grpc-timeout` header value: at most 8 digits and a unit.
fn grpc_timeout(timeout: Duration) -> String {
    let ms = timeout.as_millis();
    if ms < 100_000_000 {
        format!("{}m", ms.max(1))
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

/// A response message's bytes so far against the size its envelope announced: complete
/// (into `message`), still partial (into `partial`), or too long (a protocol error).
fn settle(
    size: usize,
    data: Vec<u8>,
    message: &mut Option<Vec<u8>>,
    partial: &mut Option<(usize, Vec<u8>)>,
) -> Result<(), CallError> {
    if data.len() > size {
        return Err(CallError::Protocol(format!(
            "{} bytes in a response message announced as {size}",
            data.len()
        )));
    }
    if data.len() == size {
        *message = Some(data);
    } else {
        *partial = Some((size, data));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_fits_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_secs(30)), "30000m");
        assert_eq!(grpc_timeout(Duration::from_secs(24 * 3600)), "86400000m");
        assert_eq!(grpc_timeout(Duration::from_secs(100_000_000)), "99999999S");
        assert_eq!(grpc_timeout(Duration::ZERO), "1m");
    }

    #[test]
    fn refusals_are_counted_by_reason_and_rendered() {
        let tunnels = Tunnels::new(AgentGate::open());
        let stats = tunnels.stats();
        stats.refused("not_a_uuid");
        stats.refused("other_address");
        stats.refused("other_address");
        stats.refused("no such reason");
        assert_eq!(stats.refusals("other_address"), 2);
        assert_eq!(stats.refusals("not_a_uuid"), 1);
        let mut out = String::new();
        tunnels.render_prometheus(&mut out);
        assert!(out.contains("ironboot_agent_tunnels 0\n"), "{out}");
        assert!(
            out.contains("ironboot_agent_tunnels_refused_total{reason=\"other_address\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("ironboot_agent_tunnels_refused_total{reason=\"too_many_tunnels\"} 0\n"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn send_window_waits_for_updates() {
        let w = Arc::new(SendWindow::new(10));
        assert_eq!(w.take(4).await, 4);
        assert_eq!(w.take(100).await, 6);
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.take(5).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "took window that was not there");
        w.grow(3);
        assert_eq!(waiter.await.unwrap(), 3);
    }
}
