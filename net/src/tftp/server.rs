//! The TFTP server: every transfer's session, the ports they use, the limits and the timers,
//! behind one [`DatagramService`].

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
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
use crate::service::{DatagramService, DriverDrop, RecvMeta, SendMeta, TxQueue};
use crate::wire::tftp::{ErrorCode, Mode, Opcode, Packet, Repr, write_error};

/// Sessions allocated before the first request; the table grows on demand up to
/// `max_transfers + max_pending` and never shrinks, so the steady state allocates nothing.
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
/// the pool ports, picked at random among the least loaded (RFC 1350's per-transfer TID;
/// the binary binds the pool on ephemeral ports and passes their numbers), or, with
/// [`TftpConfig::single_port`], from the request port itself. Packets are matched to
/// transfers by client address and the transfer's port. Nothing here reads a clock or
/// touches a socket: the driver passes `now` in and sends what lands in the [`TxQueue`].
///
/// Anyone on the network can send a request with a forged source address, so a request
/// earns nothing until its client proves it receives there by acknowledging the first
/// reply (the OACK, or block 1 without options):
/// - until then it is *pending*: it holds no transfer slot and counts toward neither
///   [`TftpConfig::max_transfers`] nor [`TftpConfig::max_per_client`]; it waits in a table
///   of at most [`TftpConfig::max_pending`] entries, the oldest dropped when it is full;
/// - its first reply goes out once and is resent at most once (it then waits silently
///   for the client's own retransmission until the retries' time is up), so a forged
///   request makes its victim receive two datagrams at most, never a window;
/// - an ACK from its client's address and port arriving at another transfer port before
///   anything beyond the first reply was acknowledged ends it without a reply: a client
///   locked onto its server port never does that, a blind sprayer of forged ACKs does, and
///   the port is picked at random so the sprayer cannot know which one is right;
/// - a request replacing a transfer of the same client address and port is served from a
///   different port, so late datagrams of the old transfer (an EDK2 probe's ERROR 8)
///   cannot reach the new one.
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
    /// Proven transfers (the ones the limits count).
    active: usize,
    /// Requests waiting for their first ACK.
    pending: usize,
    /// Pending requests, oldest first; entries of requests since proven or ended are
    /// skipped (and dropped) when met.
    pending_order: VecDeque<SlotId>,
    /// State of the generator picking among equally loaded pool ports (xorshift64*).
    rng: u64,
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
        let initial = (config.max_transfers + config.max_pending).min(INITIAL_SLOTS);
        let pending_order = VecDeque::with_capacity(2 * config.max_pending.min(INITIAL_SLOTS));
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
            pending: 0,
            pending_order,
            rng: RandomState::new().hash_one(0x7466_7470_u64) | 1,
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

    /// Pick among equally loaded transfer ports with a generator seeded by `seed` instead
    /// of a random seed, for reproducible runs. In service the seed must stay random: it
    /// keeps a sprayer of forged ACKs from knowing the port of a transfer.
    pub fn with_port_seed(mut self, seed: u64) -> Self {
        self.rng = seed | 1;
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &TftpConfig {
        &self.config
    }

    /// The counters.
    pub fn counters(&self) -> &Arc<TftpCounters> {
        &self.counters
    }

    /// Transfers in progress whose client acknowledged the first reply.
    pub fn active_transfers(&self) -> usize {
        self.active
    }

    /// Requests answered and waiting for their client's first ACK.
    pub fn pending_requests(&self) -> usize {
        self.pending
    }

    /// Whether a transfer for `ip` could take a slot under the transfer limits now; takes
    /// nothing (a request is only checked: its slot is taken when its client proves it
    /// receives, see [`TftpServer::reserve`]).
    fn check_limits(&self, ip: Ipv4Addr) -> Result<(), RequestOutcome> {
        let (max, per_client) = (self.config.max_transfers, self.config.max_per_client);
        if let Some(shared) = &self.shared {
            return shared.check(ip, max, per_client);
        }
        if self.active >= max {
            return Err(RequestOutcome::ServerBusy);
        }
        if self.transfers_of(ip) >= per_client {
            return Err(RequestOutcome::ClientBusy);
        }
        Ok(())
    }

    /// Take a slot for a transfer of `ip` if the limits allow it (counted in the shared
    /// limits at once when there are any: the caller must then count it as proven).
    fn reserve(&self, ip: Ipv4Addr) -> Result<(), RequestOutcome> {
        let (max, per_client) = (self.config.max_transfers, self.config.max_per_client);
        match &self.shared {
            Some(shared) => shared.admit(ip, max, per_client),
            None => self.check_limits(ip),
        }
    }

    /// Proven transfers in progress for one client IP.
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
            match self.slots.get_mut(index) {
                Some(session) if session.is_repeat(hash, now) => {
                    self.counters.request(RequestOutcome::Repeat);
                    return;
                }
                // The same request again, later, for a transfer never acknowledged: the
                // first reply (or its resend) was lost. Answered again from the same
                // port, which the client may have locked onto already; one reply per
                // request, like a new one.
                Some(session) if !session.proven && session.same_request(hash) => {
                    session.answer_again(now, tx, &self.counters);
                    self.counters.request(RequestOutcome::AnsweredAgain);
                    self.arm(index);
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
        if let Err(outcome) = self.check_limits(*client.ip()) {
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
        if self.pending >= self.config.max_pending {
            self.evict_oldest_pending(now);
        }
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
    /// one picked at random among the least loaded, never `previous` (the port of the
    /// transfer this one replaces, whose late datagrams must not reach it) unless the pool
    /// has no other.
    fn transfer_port(&mut self, previous: Option<u16>) -> u16 {
        if self.config.single_port {
            return self.config.port;
        }
        let eligible = |p: &&PoolPort| Some(p.port) != previous;
        let Some(min) = self.pool.iter().filter(eligible).map(|p| p.load).min() else {
            return previous.unwrap_or(self.config.port);
        };
        let candidates = self
            .pool
            .iter()
            .filter(eligible)
            .filter(|p| p.load == min)
            .count();
        // The high half of the output, scaled to the count: its low bits are the weakest.
        let pick = (((self.next_random() >> 32) * candidates as u64) >> 32) as usize;
        self.pool
            .iter()
            .filter(eligible)
            .filter(|p| p.load == min)
            .nth(pick)
            .map_or(self.config.port, |p| p.port)
    }

    /// The next number of the port-picking generator (xorshift64*).
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Whether the slot `id` names still holds a request waiting for its first ACK.
    fn is_live_pending(&self, id: SlotId) -> bool {
        self.slots.id(id.index) == id && self.slots.get(id.index).is_some_and(|s| !s.proven)
    }

    /// End the oldest request still waiting for its first ACK, to make room.
    fn evict_oldest_pending(&mut self, now: Instant) {
        while let Some(id) = self.pending_order.pop_front() {
            if self.is_live_pending(id) {
                self.end(id.index, now, End::Failed(TransferFailure::PendingEvicted));
                return;
            }
        }
    }

    /// The client of waiting request `index` acknowledged the first reply: give it a
    /// transfer slot, or if the limits are full now, answer "busy" and end it. Returns
    /// whether it may go on.
    fn prove(&mut self, index: u32, now: Instant, meta: &RecvMeta, tx: &mut TxQueue) -> bool {
        let ip = *meta.src.ip();
        if let Err(outcome) = self.reserve(ip) {
            let message = match outcome {
                RequestOutcome::ClientBusy => "busy: too many transfers from this address, retry",
                _ => "server busy, retry",
            };
            self.send_error(tx, meta, ErrorCode::NotDefined, message);
            self.end(index, now, End::Failed(TransferFailure::Busy));
            return false;
        }
        let Some(session) = self.slots.get_mut(index) else {
            return false;
        };
        session.proven = true;
        self.pending -= 1;
        self.active += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        self.counters.transfer_proven();
        true
    }

    /// Put a new transfer in a slot, waiting for its first ACK, and send its first packet.
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
        if let Some(p) = self.pool.iter_mut().find(|p| p.port == port) {
            p.load += 1;
        }
        self.pending += 1;
        // Entries of requests that ended or were proven are dropped from the front here,
        // and the whole queue is swept if they pile up behind a long-lived one, so it
        // stays within twice the pending limit.
        while let Some(&front) = self.pending_order.front() {
            if self.is_live_pending(front) {
                break;
            }
            self.pending_order.pop_front();
        }
        if self.pending_order.len() >= 2 * self.config.max_pending {
            let TftpServer {
                pending_order,
                slots,
                ..
            } = self;
            pending_order.retain(|&id| {
                slots.id(id.index) == id && slots.get(id.index).is_some_and(|s| !s.proven)
            });
        }
        self.pending_order.push_back(self.slots.id(index));
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
        if let Some(p) = self.pool.iter_mut().find(|p| p.port == session.local_port) {
            p.load -= 1;
        }
        if session.proven {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
            self.active -= 1;
            if let Some(shared) = &self.shared {
                shared.release(ip);
            }
        } else {
            self.pending -= 1;
        }
        match how {
            // Only an ACK reaches completion, and the first one proves the client.
            End::Completed => self.counters.transfer_completed(
                now.saturating_duration_since(session.started()),
                session.size(),
            ),
            End::Failed(why) => self.counters.transfer_failed(why, session.proven),
        }
    }

    /// A datagram from the client of transfer `index`, on its port.
    fn on_transfer_packet(
        &mut self,
        index: u32,
        now: Instant,
        data: &[u8],
        meta: &RecvMeta,
        tx: &mut TxQueue,
    ) {
        let Some(session) = self.slots.get(index) else {
            return;
        };
        if !session.proven {
            if let Ok(Repr::Ack { block }) = Repr::parse_bytes(data) {
                if session.is_proof(block) && !self.prove(index, now, meta, tx) {
                    return;
                }
            }
        }
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

    /// The transfer an ACK on the wrong pool port gives away as forged: its client's
    /// address and port hold a transfer on another port that nothing beyond the first
    /// reply was acknowledged for. A client locked onto its transfer's port never sends
    /// there; a sprayer of blind ACKs to every pool port does.
    fn sprayed(&self, opcode: Opcode, meta: &RecvMeta) -> Option<u32> {
        if opcode != Opcode::Ack || !self.is_pool_port(meta.local_port) {
            return None;
        }
        let index = *self.by_client.get(&meta.src)?;
        self.slots
            .get(index)
            .is_some_and(|s| s.unconfirmed())
            .then_some(index)
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
            let why = if session.proven {
                TransferFailure::Timeout
            } else {
                TransferFailure::Unproven
            };
            match session.on_timeout(now, self.config.retries, tx, &self.counters) {
                TimeoutOutcome::Retransmitted => self.arm(id.index),
                TimeoutOutcome::GiveUp => self.end(id.index, now, End::Failed(why)),
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
            self.on_transfer_packet(index, now, data, meta, tx);
        } else if on_request_port {
            self.on_stray(data, meta, tx);
        } else if let Some(index) = self.sprayed(opcode, meta) {
            self.end(index, now, End::Failed(TransferFailure::WrongPort));
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
