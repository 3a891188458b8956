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
//! Tunnels are keyed by the agent's `machine-id` metadata: a new tunnel from the same
//! machine replaces (and closes) the old one; the end of a tunnel is noticed at once and
//! fails the calls in flight on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

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

/// A tunnel opened or closed (for the control loop: a connect wakes it at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TunnelEvent {
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
pub(crate) struct Tunnels {
    inner: Arc<Registry>,
}

struct Registry {
    tunnels: Mutex<HashMap<String, Arc<Tunnel>>>,
    events: broadcast::Sender<TunnelEvent>,
    /// Answer `grpctunnel-negotiate: on` (revision ONE); off = revision ZERO only.
    negotiate: bool,
    next_generation: AtomicU64,
    /// Set by [`Tunnels::close_all`]: new tunnels are refused.
    closing: AtomicBool,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self::new()
    }
}

impl Tunnels {
    /// A registry that negotiates revision ONE with agents that know it.
    pub(crate) fn new() -> Self {
        Self::with_negotiation(true)
    }

    /// `negotiate = false` never announces revision ONE, so every tunnel runs revision
    /// ZERO (as with an agent built on a grpctunnel older than v0.3).
    pub(crate) fn with_negotiation(negotiate: bool) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Registry {
                tunnels: Mutex::new(HashMap::new()),
                events,
                negotiate,
                next_generation: AtomicU64::new(1),
                closing: AtomicBool::new(false),
            }),
        }
    }

    /// Tunnel open/close events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<TunnelEvent> {
        self.inner.events.subscribe()
    }

    /// The current tunnel of `machine_id`, if its agent is connected.
    pub(crate) fn get(&self, machine_id: &str) -> Option<Arc<Tunnel>> {
        self.inner.lock().get(machine_id).cloned()
    }

    /// The machine IDs with an open tunnel, sorted.
    #[allow(dead_code, reason = "read by the conformance tests")]
    pub(crate) fn connected(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.lock().keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Closes every tunnel and refuses new ones (at shutdown: the agents' `Serve`
    /// returns, so the HTTP server can finish its connections instead of waiting on
    /// tunnels that never end).
    pub(crate) fn close_all(&self) {
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
    pub(crate) fn mount(&self, router: axum::Router) -> axum::Router {
        router.route_service(&format!("{SERVICE_PATH}/{{*method}}"), self.service())
    }

    /// Runs one tunnel: settings, registration, then its frames until it ends.
    async fn run(
        self,
        machine_id: String,
        expect_settings: bool,
        mut inbound: Streaming<ServerToClient>,
        out: mpsc::Sender<Result<ClientToServer, Status>>,
    ) {
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
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let tunnel = Arc::new(Tunnel {
            machine_id: machine_id.clone(),
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
            info!(%machine_id, "agent reconnected: replacing its older tunnel");
            old.close();
        }
        info!(%machine_id, revision = revision.as_str_name(), "agent tunnel open");
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
        let machine_id = request
            .metadata()
            .get(MACHINE_ID_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                Status::invalid_argument(
                    "OpenReverseTunnel: no `machine-id` metadata (the metal agent sends its \
                     SMBIOS UUID there)",
                )
            })?;
        if self.tunnels.inner.closing.load(Ordering::SeqCst) {
            return Err(Status::unavailable("ironboot is shutting down"));
        }
        let agent_negotiates = request
            .metadata()
            .get(NEGOTIATE_HEADER)
            .is_some_and(|v| v.as_bytes() == b"on");
        let negotiate = self.tunnels.inner.negotiate;
        debug!(%machine_id, agent_negotiates, "agent opens a reverse tunnel");
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(self.tunnels.clone().run(
            machine_id,
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

/// One agent's tunnel.
pub(crate) struct Tunnel {
    machine_id: String,
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

#[allow(dead_code, reason = "read by the conformance tests")]
impl Tunnel {
    /// The agent's machine ID.
    pub(crate) fn machine_id(&self) -> &str {
        &self.machine_id
    }

    /// The negotiated protocol revision.
    pub(crate) fn revision(&self) -> ProtocolRevision {
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
