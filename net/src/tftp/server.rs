//! The TFTP server: every transfer's session, the ports they use, the limits and the timers,
//! behind one [`DatagramService`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use super::config::{ConfigError, TftpConfig};
use super::counters::{RequestOutcome, TftpCounters, TransferFailure};
use super::limits::SharedLimits;
use super::negotiate::Negotiated;
use super::netascii::NetasciiCache;
use super::session::{AckOutcome, Session, Start, TimeoutOutcome};
use super::timers::{SlotId, Timer, TimerTable, Timers};
use crate::files::FileSet;
use crate::udp::{DatagramService, DriverDrop, RecvMeta, SendMeta, TxQueue};
use crate::wire::tftp::{ErrorCode, Mode, Opcode, Packet, Repr, write_error};

/// Sessions allocated before the first request; the table grows on demand up to
/// `max_transfers` and never shrinks, so the steady state allocates nothing.
const INITIAL_SLOTS: usize = 1024;

/// A session slot; the generation tells a reused slot from its previous occupant.
#[derive(Debug)]
struct Slot {
    generation: u32,
    session: Option<Session>,
}

/// All slots.
#[derive(Debug, Default)]
struct Slots(Vec<Slot>);

impl Slots {
    fn get(&self, index: u32) -> Option<&Session> {
        self.0.get(index as usize)?.session.as_ref()
    }

    fn get_mut(&mut self, index: u32) -> Option<&mut Session> {
        self.0.get_mut(index as usize)?.session.as_mut()
    }

    fn id(&self, index: u32) -> SlotId {
        SlotId {
            index,
            generation: self.0.get(index as usize).map_or(0, |s| s.generation),
        }
    }
}

impl TimerTable for Slots {
    fn timer_mut(&mut self, id: SlotId) -> Option<&mut Timer> {
        let slot = self.0.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.session.as_mut().map(|s| &mut s.timer)
    }
}

/// A port transfers are served from, and how many it carries.
#[derive(Debug, Clone, Copy)]
struct PoolPort {
    port: u16,
    load: u32,
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy)]
enum End {
    Completed,
    Failed(TransferFailure),
}

/// The read-only TFTP server as a sans-IO [`DatagramService`].
///
/// Requests arrive on [`TftpConfig::port`] (69). Each transfer is then served from one of
/// the pool ports, the least loaded (RFC 1350's per-transfer TID; the binary binds the
/// pool on ephemeral ports and passes their numbers), or, with
/// [`TftpConfig::single_port`], from the request port itself. Packets are matched to
/// transfers by client address (and the transfer's port). Nothing here reads a clock or
/// touches a socket: the driver passes `now` in and sends what lands in the [`TxQueue`].
#[derive(Debug)]
pub struct TftpServer {
    config: TftpConfig,
    files: Arc<FileSet>,
    counters: Arc<TftpCounters>,
    pool: Vec<PoolPort>,
    slots: Slots,
    free: Vec<u32>,
    by_client: HashMap<SocketAddrV4, u32>,
    per_ip: HashMap<Ipv4Addr, u32>,
    active: usize,
    /// Limits kept together with other workers' servers, when there are any.
    shared: Option<Arc<SharedLimits>>,
    timers: Timers,
    netascii: NetasciiCache,
}

/// FNV-1a over the request bytes: enough to tell a repeated RRQ from a different one.
fn fingerprint(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl TftpServer {
    /// A server for `files`, counting into `counters`. `pool_ports` are the local ports
    /// (already bound by the binary, e.g. on port 0) transfers are served from; they are
    /// not used in single-port mode.
    pub fn new(
        config: TftpConfig,
        files: Arc<FileSet>,
        pool_ports: &[u16],
        counters: Arc<TftpCounters>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        config.validate_pool(pool_ports)?;
        let pool = if config.single_port {
            Vec::new()
        } else {
            pool_ports
                .iter()
                .map(|&port| PoolPort { port, load: 0 })
                .collect()
        };
        let initial = config.max_transfers.min(INITIAL_SLOTS);
        Ok(TftpServer {
            config,
            files,
            counters,
            pool,
            slots: Slots(Vec::with_capacity(initial)),
            free: Vec::with_capacity(initial),
            by_client: HashMap::with_capacity(initial),
            per_ip: HashMap::with_capacity(initial),
            active: 0,
            shared: None,
            timers: Timers::with_capacity(initial),
            netascii: NetasciiCache::default(),
        })
    }

    /// Apply [`TftpConfig::max_transfers`] and [`TftpConfig::max_per_client`] to the
    /// transfers of every server given the same `limits` (the UDP workers of one service),
    /// not to this server's alone.
    pub fn with_shared_limits(mut self, limits: Arc<SharedLimits>) -> Self {
        self.shared = Some(limits);
        self
    }

    /// Serve `files` from now on. Transfers in progress keep the file they started with.
    pub fn set_files(&mut self, files: Arc<FileSet>) {
        self.files = files;
        self.netascii.clear();
    }

    /// The configuration in use.
    pub fn config(&self) -> &TftpConfig {
        &self.config
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<TftpCounters> {
        &self.counters
    }

    /// Transfers in progress.
    pub fn active_transfers(&self) -> usize {
        self.active
    }

    /// Whether a transfer for `ip` may start under the transfer limits (counted in the
    /// shared limits at once when there are any: the transfer then must begin).
    fn admit(&self, ip: Ipv4Addr) -> Result<(), RequestOutcome> {
        let (max, per_client) = (self.config.max_transfers, self.config.max_per_client);
        if let Some(shared) = &self.shared {
            return shared.admit(ip, max, per_client);
        }
        if self.active >= max {
            return Err(RequestOutcome::ServerBusy);
        }
        if self.transfers_of(ip) >= per_client {
            return Err(RequestOutcome::ClientBusy);
        }
        Ok(())
    }

    /// Transfers in progress for one client IP.
    pub fn transfers_of(&self, ip: Ipv4Addr) -> usize {
        self.per_ip.get(&ip).map_or(0, |&n| n as usize)
    }

    /// Transfers in progress per pool port, in the order given (empty in single-port mode).
    pub fn pool_load(&self) -> impl Iterator<Item = (u16, usize)> + '_ {
        self.pool.iter().map(|p| (p.port, p.load as usize))
    }

    fn is_pool_port(&self, port: u16) -> bool {
        self.pool.iter().any(|p| p.port == port)
    }

    /// The transfer `client` holds on `local_port`, if any.
    fn session_at(&self, client: SocketAddrV4, local_port: u16) -> Option<u32> {
        let index = *self.by_client.get(&client)?;
        let session = self.slots.get(index)?;
        (session.local_port == local_port).then_some(index)
    }

    fn send_error(&self, tx: &mut TxQueue, meta: &RecvMeta, code: ErrorCode, message: &str) {
        let send = SendMeta {
            dst: meta.src,
            ifindex: None,
            src_ip: reply_source(meta),
            local_port: meta.local_port,
        };
        let queued = tx.push_with(|buf| Some((write_error(buf, code, message).ok()?, send)));
        if queued {
            self.counters.error_sent(code);
        } else {
            self.counters.send_queue_full();
        }
    }

    /// Refuse a request with an ERROR.
    fn refuse(
        &self,
        tx: &mut TxQueue,
        meta: &RecvMeta,
        outcome: RequestOutcome,
        code: ErrorCode,
        message: &str,
    ) {
        self.counters.request(outcome);
        self.send_error(tx, meta, code, message);
    }

    /// An RRQ or WRQ on the request port.
    fn on_request(&mut self, now: Instant, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue) {
        let request = match Repr::parse_bytes(data) {
            Ok(Repr::Rrq(request)) => request,
            Ok(Repr::Wrq(_)) => {
                return self.refuse(
                    tx,
                    meta,
                    RequestOutcome::WriteRefused,
                    ErrorCode::AccessViolation,
                    "read-only server",
                );
            }
            Ok(_) => return self.counters.unexpected_message(),
            Err(e) => {
                self.counters.malformed(&e);
                return self.refuse(
                    tx,
                    meta,
                    RequestOutcome::Malformed,
                    ErrorCode::IllegalOperation,
                    "malformed request",
                );
            }
        };
        let client = meta.src;
        let hash = fingerprint(data);
        let mut previous_port = None;
        if let Some(&index) = self.by_client.get(&client) {
            match self.slots.get(index) {
                Some(session) if session.is_repeat(hash, now) => {
                    self.counters.request(RequestOutcome::Repeat);
                    return;
                }
                // A new read request from the same address: the client gave up on the old
                // transfer (or restarted), so that one ends here whatever this one asks.
                // Only a well-formed RRQ gets this far: garbage or a WRQ from the
                // client's port must not end a live transfer.
                Some(session) => {
                    previous_port = Some(session.local_port);
                    self.end(index, now, End::Failed(TransferFailure::Replaced));
                }
                // Not reachable (the map names live slots only); heal it anyway.
                None => {
                    self.by_client.remove(&client);
                }
            }
        }

        let netascii = match request.mode() {
            Mode::Octet => false,
            Mode::Netascii => true,
            Mode::Mail | Mode::Unknown => {
                return self.refuse(
                    tx,
                    meta,
                    RequestOutcome::BadMode,
                    ErrorCode::IllegalOperation,
                    "unsupported transfer mode",
                );
            }
        };
        let file = match self.files.get(request.filename) {
            Ok(Some(file)) => file,
            Ok(None) => {
                return self.refuse(
                    tx,
                    meta,
                    RequestOutcome::NotFound,
                    ErrorCode::FileNotFound,
                    "file not found",
                );
            }
            Err(_) => {
                return self.refuse(
                    tx,
                    meta,
                    RequestOutcome::RefusedName,
                    ErrorCode::AccessViolation,
                    "access violation",
                );
            }
        };
        let options = match Negotiated::negotiate(request.options, &self.config) {
            Ok(options) => options,
            Err(e) => {
                return self.refuse(
                    tx,
                    meta,
                    RequestOutcome::BadOptions,
                    ErrorCode::OptionNegotiation,
                    e.message(),
                );
            }
        };
        if let Err(outcome) = self.admit(*client.ip()) {
            let message = match outcome {
                RequestOutcome::ClientBusy => "busy: too many transfers from this address, retry",
                _ => "server busy, retry",
            };
            return self.refuse(tx, meta, outcome, ErrorCode::NotDefined, message);
        }
        let file = if netascii {
            self.netascii.get(file)
        } else {
            file.clone()
        };
        let start = Start {
            client,
            local_port: self.transfer_port(previous_port),
            reply_from: reply_source(meta),
            file,
            timeout: options.timeout(&self.config),
            options,
            request_hash: hash,
        };
        self.counters.request(RequestOutcome::Started);
        self.begin(start, now, tx);
    }

    /// The port a new transfer is served from: the request port in single-port mode, else
    /// the port the client's previous transfer used (its OACK may still be in flight, and
    /// a client that locked on that TID should keep working), else the least loaded.
    fn transfer_port(&self, previous: Option<u16>) -> u16 {
        if self.config.single_port {
            return self.config.port;
        }
        if let Some(port) = previous.filter(|&p| self.is_pool_port(p)) {
            return port;
        }
        self.pool
            .iter()
            .min_by_key(|p| p.load)
            .map_or(self.config.port, |p| p.port)
    }

    /// Put a new transfer in a slot and send its first packet.
    fn begin(&mut self, start: Start, now: Instant, tx: &mut TxQueue) {
        let client = start.client;
        let port = start.local_port;
        let mut session = Session::new(start, now);
        session.begin(now, tx, &self.counters);
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.0.push(Slot {
                    generation: 0,
                    session: None,
                });
                (self.slots.0.len() - 1) as u32
            }
        };
        self.slots.0[index as usize].session = Some(session);
        self.by_client.insert(client, index);
        *self.per_ip.entry(*client.ip()).or_insert(0) += 1;
        if let Some(p) = self.pool.iter_mut().find(|p| p.port == port) {
            p.load += 1;
        }
        self.active += 1;
        self.counters.transfer_started();
        self.arm(index);
    }

    fn arm(&mut self, index: u32) {
        let id = self.slots.id(index);
        if let Some(session) = self.slots.get_mut(index) {
            self.timers.arm(id, &mut session.timer);
        }
    }

    /// Free a transfer's slot and account for how it ended.
    fn end(&mut self, index: u32, now: Instant, how: End) {
        let Some(slot) = self.slots.0.get_mut(index as usize) else {
            return;
        };
        let Some(session) = slot.session.take() else {
            return;
        };
        // Entries of the old generation in the timer heap are now dead.
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        if self.by_client.get(&session.client) == Some(&index) {
            self.by_client.remove(&session.client);
        }
        let ip = *session.client.ip();
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        if let Some(p) = self.pool.iter_mut().find(|p| p.port == session.local_port) {
            p.load -= 1;
        }
        self.active -= 1;
        if let Some(shared) = &self.shared {
            shared.release(ip);
        }
        match how {
            End::Completed => self.counters.transfer_completed(
                now.saturating_duration_since(session.started()),
                session.size(),
            ),
            End::Failed(why) => self.counters.transfer_failed(why),
        }
    }

    /// A datagram from the client of transfer `index`, on its port.
    fn on_transfer_packet(&mut self, index: u32, now: Instant, data: &[u8], tx: &mut TxQueue) {
        let counters = &*self.counters;
        let Some(session) = self.slots.get_mut(index) else {
            return;
        };
        match Packet::new_unchecked(data).opcode() {
            // An ERROR ends the transfer even if its message is malformed: the client has
            // given up either way, and holding the slot for it helps nobody.
            Opcode::Error => {
                let why = if session.negotiating() {
                    TransferFailure::NegotiationAborted
                } else {
                    TransferFailure::ClientError
                };
                self.end(index, now, End::Failed(why));
            }
            Opcode::Ack => match Repr::parse_bytes(data) {
                Ok(Repr::Ack { block }) => {
                    let outcome = session.on_ack(block, now, tx, counters);
                    counters.ack(outcome);
                    match outcome {
                        AckOutcome::Complete => self.end(index, now, End::Completed),
                        AckOutcome::Advanced => self.arm(index),
                        AckOutcome::Duplicate | AckOutcome::Ignored => {}
                    }
                }
                Ok(_) => counters.unexpected_message(),
                Err(e) => counters.malformed(&e),
            },
            _ => counters.unexpected_message(),
        }
    }

    /// A datagram on the request port that is not a request and belongs to no transfer.
    fn on_stray(&mut self, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue) {
        match Repr::parse_bytes(data) {
            // Never answer an ERROR with an ERROR.
            Ok(Repr::Error { .. }) => self.counters.unexpected_message(),
            Ok(_) => self.send_error(
                tx,
                meta,
                ErrorCode::UnknownTransferId,
                "unknown transfer ID",
            ),
            Err(e) => {
                self.counters.malformed(&e);
                if data.len() >= 4 && Packet::new_unchecked(data).opcode() != Opcode::Error {
                    self.send_error(
                        tx,
                        meta,
                        ErrorCode::IllegalOperation,
                        "illegal TFTP operation",
                    );
                }
            }
        }
    }

    /// Timers due at `now`, as many as `tx` has room for a full window each (the rest stay
    /// due, and the driver calls again after flushing). At least one is handled per call,
    /// so a queue smaller than a window slows the retransmissions down but cannot stall
    /// the clock: what does not fit is lost like any datagram and sent again later.
    fn expire(&mut self, now: Instant, tx: &mut TxQueue) {
        let room = self.max_sends_per_event();
        let mut first = true;
        while first || tx.remaining() >= room {
            first = false;
            let Some(id) = self.timers.pop_due(now, &mut self.slots) else {
                break;
            };
            let Some(session) = self.slots.get_mut(id.index) else {
                continue;
            };
            match session.on_timeout(now, self.config.retries, tx, &self.counters) {
                TimeoutOutcome::Retransmitted => self.arm(id.index),
                TimeoutOutcome::GiveUp => {
                    self.end(id.index, now, End::Failed(TransferFailure::Timeout))
                }
            }
        }
    }
}

/// The source address for replies to `meta`: the address the client sent to, so a
/// multi-homed server answers from the address the client knows.
fn reply_source(meta: &RecvMeta) -> Option<Ipv4Addr> {
    let local = meta.local_addr;
    (!local.is_unspecified() && !local.is_broadcast() && !local.is_multicast()).then_some(local)
}

/// Whether replies can go to `src` at all.
fn valid_source(src: SocketAddrV4) -> bool {
    let ip = src.ip();
    src.port() != 0 && !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast()
}

impl DatagramService for TftpServer {
    /// A full window: the most one ACK (or one session's timeout) sends.
    fn max_sends_per_event(&self) -> usize {
        usize::from(self.config.max_windowsize).max(1)
    }

    fn on_datagram(&mut self, now: Instant, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue) {
        if !valid_source(meta.src) {
            self.counters.bad_source();
            return;
        }
        let on_request_port = meta.local_port == self.config.port;
        let opcode = Packet::new_unchecked(data).opcode();
        if on_request_port && matches!(opcode, Opcode::Rrq | Opcode::Wrq) {
            self.on_request(now, data, meta, tx);
        } else if let Some(index) = self.session_at(meta.src, meta.local_port) {
            self.on_transfer_packet(index, now, data, tx);
        } else if on_request_port {
            self.on_stray(data, meta, tx);
        } else if self.is_pool_port(meta.local_port) {
            // RFC 1350: a packet for a transfer we do not have gets ERROR 5, and no
            // transfer is disturbed. Never answer an ERROR, nor a runt.
            if opcode == Opcode::Error || data.len() < 4 {
                self.counters.unexpected_message();
            } else {
                self.send_error(
                    tx,
                    meta,
                    ErrorCode::UnknownTransferId,
                    "unknown transfer ID",
                );
            }
        } else {
            self.counters.unexpected_port();
        }
        self.timers.prune(&mut self.slots);
    }

    fn on_timeout(&mut self, now: Instant, tx: &mut TxQueue) {
        self.expire(now, tx);
        self.timers.prune(&mut self.slots);
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    fn on_dropped(&mut self, reason: DriverDrop) {
        self.counters.driver_drop(reason);
    }
}
