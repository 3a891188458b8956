//! One read transfer: the windowed sender of RFC 1350 + RFC 7440, driven with explicit
//! time.
//!
//! Blocks are counted with absolute 64-bit indices (block 1 is the first); only the wire
//! number wraps (65535 -> 0), so files of more than 65535 blocks need nothing special. The
//! last block is shorter than `blksize`, zero bytes long when the size is a multiple of it.
//!
//! The sender keeps one window of `windowsize` blocks outstanding. An ACK for a block inside
//! it moves the window to the block after and sends the whole next window at once (the
//! client ACKs the last block it got in order, so after a gap the window restarts at the
//! gap). An ACK for the already acknowledged block, or for anything outside the window, is
//! ignored: answering duplicates is the Sorcerer's Apprentice bug (RFC 1123 4.2.3.1), where
//! every duplicate doubles the traffic. Only the timer retransmits.
//!
//! What a timeout resends is bounded, so a transfer started for a forged address costs
//! its victim little: the first timeout after ACK progress resends the window (except the
//! first window, which an ACK of the OACK alone started), later ones only a probe of two
//! blocks, the first unacknowledged one and the window's last (a live client acknowledges
//! what it has, at once or after its own timeout, and the window resumes from there).
//! Without progress a transfer resends at most one window plus `2 * retries` blocks
//! before it is given up.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::counters::{Retransmit, TftpCounters};
use super::negotiate::Negotiated;
use super::timers::Timer;
use crate::service::{SendMeta, TxQueue};
use crate::wire::tftp::write_data_header;

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// OACK sent, waiting for ACK 0.
    Negotiating,
    /// Sending windows.
    Sending,
}

/// What an ACK did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckOutcome {
    /// Acknowledged new blocks; the next window went out.
    Advanced,
    /// Acknowledged the last block: the transfer is complete.
    Complete,
    /// The block acknowledged last time, again (a duplicate, or a client that saw a gap).
    Duplicate,
    /// A block outside the window (stale, reordered, or bogus).
    Ignored,
}

/// What a timeout did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeoutOutcome {
    /// The OACK, window or probe went out again (or, for a transfer not yet proven past
    /// its one resend, nothing did and it waits on).
    Retransmitted,
    /// Retries exhausted: drop the transfer.
    GiveUp,
}

/// The parameters a transfer starts with.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub(crate) client: SocketAddrV4,
    pub(crate) local_port: u16,
    /// Source address for replies: the address the request was sent to.
    pub(crate) reply_from: Option<Ipv4Addr>,
    pub(crate) file: Bytes,
    pub(crate) options: Negotiated,
    pub(crate) timeout: Duration,
    /// Fingerprint of the request, to tell a retransmitted RRQ from a new one.
    pub(crate) request_hash: u64,
}

/// One transfer's state. Its size does not depend on the file: the file is a shared
/// [`Bytes`] (a reference count and two offsets).
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client: SocketAddrV4,
    pub(crate) local_port: u16,
    reply_from: Option<Ipv4Addr>,
    file: Bytes,
    options: Negotiated,
    timeout: Duration,
    /// Absolute index of the last block.
    last_block: u64,
    /// Highest block acknowledged (0: none).
    acked: u64,
    /// Highest block of the window in flight.
    sent_to: u64,
    /// Highest block ever sent, to count re-sends.
    high_water: u64,
    /// Whether the window was resent on a timeout since the last ACK progress (later
    /// timeouts then send a probe only).
    window_resent: bool,
    /// Whether the client acknowledged the first reply; until then the transfer holds no
    /// slot and is resent at most once.
    pub(crate) proven: bool,
    phase: Phase,
    retries: u8,
    pub(crate) timer: Timer,
    started: Instant,
    /// Last time the client made progress (the request, or an ACK that advanced).
    last_progress: Instant,
    request_hash: u64,
}

impl Session {
    /// A transfer for `start`; nothing is sent until [`Session::begin`].
    pub(crate) fn new(start: Start, now: Instant) -> Self {
        let blksize = u64::from(start.options.blksize);
        let last_block = start.file.len() as u64 / blksize + 1;
        Session {
            client: start.client,
            local_port: start.local_port,
            reply_from: start.reply_from,
            file: start.file,
            options: start.options,
            timeout: start.timeout,
            last_block,
            acked: 0,
            sent_to: 0,
            high_water: 0,
            window_resent: false,
            proven: false,
            phase: Phase::Negotiating,
            retries: 0,
            timer: Timer::new(now + start.timeout),
            started: now,
            last_progress: now,
            request_hash: start.request_hash,
        }
    }

    fn send_meta(&self) -> SendMeta {
        SendMeta {
            dst: self.client,
            ifindex: None,
            src_ip: self.reply_from,
            local_port: self.local_port,
        }
    }

    /// Send the OACK, or without options the first block.
    pub(crate) fn begin(&mut self, now: Instant, tx: &mut TxQueue, counters: &TftpCounters) {
        if self.options.has_oack() {
            self.send_oack(tx, counters);
        } else {
            self.phase = Phase::Sending;
            self.send_window(tx, counters, Retransmit::Timeout);
        }
        self.timer.deadline = now + self.timeout;
    }

    fn send_oack(&self, tx: &mut TxQueue, counters: &TftpCounters) {
        let meta = self.send_meta();
        let tsize = self.file.len() as u64;
        let options = self.options;
        let queued = tx.push_with(|buf| {
            let len = options.write_oack(buf, tsize).ok()?;
            Some((len, meta))
        });
        if queued {
            counters.oack_sent();
        } else {
            counters.send_queue_full();
        }
    }

    /// Send blocks `acked + 1 ..= min(acked + windowsize, last_block)`. Blocks sent before
    /// are counted as re-sent for `cause`.
    fn send_window(&mut self, tx: &mut TxQueue, counters: &TftpCounters, cause: Retransmit) {
        let last = (self.acked + u64::from(self.options.windowsize)).min(self.last_block);
        self.send_blocks(self.acked + 1, last, tx, counters, cause);
        self.sent_to = last;
    }

    /// Send blocks `first ..= last`; blocks sent before are counted as re-sent for
    /// `cause`.
    fn send_blocks(
        &mut self,
        first: u64,
        last: u64,
        tx: &mut TxQueue,
        counters: &TftpCounters,
        cause: Retransmit,
    ) {
        let meta = self.send_meta();
        let blksize = u64::from(self.options.blksize);
        let len = self.file.len() as u64;
        for block in first..=last {
            let start = (block - 1) * blksize;
            let end = (start + blksize).min(len);
            // `start <= len` because `block <= last_block`; the casts are lossless since
            // both are at most the file's length.
            let body = self.file.slice(start as usize..end as usize);
            let body_len = body.len();
            let wire_block = block as u16;
            let queued = tx.push_with_body(body, |buf| {
                let n = write_data_header(buf, wire_block).ok()?;
                Some((n, meta))
            });
            if !queued {
                // The datagram is lost; the timer recovers it like any other loss.
                counters.send_queue_full();
                break;
            }
            counters.data_sent(body_len);
            if block <= self.high_water {
                counters.retransmitted(cause);
            }
        }
        self.high_water = self.high_water.max(last);
    }

    /// Send the first unacknowledged block, which a client that missed it needs to go on,
    /// and the last block of the window in flight, which a client that has the whole
    /// window but whose ACK was lost answers with that ACK again (a finished client
    /// answers only the last block of the file).
    fn send_probe(&mut self, tx: &mut TxQueue, counters: &TftpCounters) {
        let first = self.acked + 1;
        self.send_blocks(first, first, tx, counters, Retransmit::Probe);
        let last = self.sent_to;
        if last > first {
            self.send_blocks(last, last, tx, counters, Retransmit::Probe);
        }
    }

    /// Handle ACK `block` from the client.
    pub(crate) fn on_ack(
        &mut self,
        block: u16,
        now: Instant,
        tx: &mut TxQueue,
        counters: &TftpCounters,
    ) -> AckOutcome {
        if self.phase == Phase::Negotiating {
            if block != 0 {
                return AckOutcome::Ignored;
            }
            self.phase = Phase::Sending;
        } else {
            // Distance from the last acknowledged block, on the wrapping wire numbers: the
            // window (at most 256 blocks) is far smaller than the 65536-number space, so
            // this is unambiguous.
            let ahead = u64::from(block.wrapping_sub(self.acked as u16));
            if ahead == 0 {
                return AckOutcome::Duplicate;
            }
            if ahead > self.sent_to - self.acked {
                return AckOutcome::Ignored;
            }
            self.acked += ahead;
            if self.acked == self.last_block {
                return AckOutcome::Complete;
            }
        }
        self.retries = 0;
        self.window_resent = false;
        self.last_progress = now;
        self.send_window(tx, counters, Retransmit::Rollback);
        self.timer.deadline = now + self.timeout;
        AckOutcome::Advanced
    }

    /// Handle the retransmission deadline having passed. A transfer not yet proven
    /// resends its first reply once; its later timeouts send nothing and only keep it
    /// waiting (up to `max_retries` of them) for an ACK the client retransmits itself.
    pub(crate) fn on_timeout(
        &mut self,
        now: Instant,
        max_retries: u8,
        tx: &mut TxQueue,
        counters: &TftpCounters,
    ) -> TimeoutOutcome {
        if self.retries >= max_retries {
            return TimeoutOutcome::GiveUp;
        }
        self.retries += 1;
        if !self.proven && self.retries > 1 {
            self.timer.deadline = now + self.timeout;
            return TimeoutOutcome::Retransmitted;
        }
        match self.phase {
            Phase::Negotiating => {
                self.send_oack(tx, counters);
                counters.retransmitted(Retransmit::Timeout);
            }
            // Until the client acknowledged a block of it, the first window went out on an
            // ACK of the OACK alone, which a blind guess of the transfer's port can forge:
            // never resent whole.
            Phase::Sending if self.window_resent || (self.proven && self.acked == 0) => {
                self.send_probe(tx, counters)
            }
            Phase::Sending => {
                self.window_resent = true;
                self.send_window(tx, counters, Retransmit::Timeout);
            }
        }
        self.timer.deadline = now + self.timeout;
        TimeoutOutcome::Retransmitted
    }

    /// Send the first reply again (the OACK, or block 1) for a repeated request of a
    /// transfer not yet proven, and restart its timer.
    pub(crate) fn answer_again(&mut self, now: Instant, tx: &mut TxQueue, counters: &TftpCounters) {
        match self.phase {
            Phase::Negotiating => self.send_oack(tx, counters),
            Phase::Sending => self.send_window(tx, counters, Retransmit::Timeout),
        }
        self.retries = 0;
        self.last_progress = now;
        self.timer.deadline = now + self.timeout;
    }

    /// Whether ACK `block` is the client's first proof of receiving: the ACK of the OACK,
    /// or without options the ACK of block 1.
    pub(crate) fn is_proof(&self, block: u16) -> bool {
        match self.phase {
            Phase::Negotiating => block == 0,
            Phase::Sending => self.acked == 0 && block == 1,
        }
    }

    /// Whether nothing sent yet was acknowledged beyond the first reply: the transfer
    /// waits for its proof, or its first window went out on an ACK of the OACK alone.
    pub(crate) fn unconfirmed(&self) -> bool {
        !self.proven || self.acked == 0
    }

    /// Whether a request with fingerprint `hash`, arriving at `now`, repeats the one this
    /// transfer answers while the transfer is alive: a client retransmitting its RRQ
    /// because our first reply was slow or lost, or the network duplicating it. Such a
    /// request is ignored (the timer retransmits); anything else replaces the transfer.
    pub(crate) fn is_repeat(&self, hash: u64, now: Instant) -> bool {
        self.same_request(hash) && now < self.last_progress + self.timeout
    }

    /// Whether a request with fingerprint `hash` asks exactly what this transfer answers.
    pub(crate) fn same_request(&self, hash: u64) -> bool {
        self.request_hash == hash
    }

    /// When the transfer started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The size of what is being sent.
    pub(crate) fn size(&self) -> u64 {
        self.file.len() as u64
    }

    /// Whether any data went out yet (an ERROR before that aborts the negotiation, as
    /// EDK2's size probe does).
    pub(crate) fn negotiating(&self) -> bool {
        self.phase == Phase::Negotiating
    }
}
