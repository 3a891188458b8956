//! TFTP counters, shared between the packet path (relaxed atomic adds) and whoever reads
//! them: [`TftpCounters::snapshot`] gives plain numbers, which the binary renders for
//! `/metrics`.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::session::AckOutcome;
use crate::service::DriverDrop;
use crate::wire::tftp::{Error as WireError, ErrorCode};

/// How a request (RRQ or WRQ on the request port) was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    /// A transfer started (OACK or DATA 1 sent).
    Started,
    /// A repeat of the request a live transfer is serving; ignored.
    Repeat,
    /// The same request again, a timeout after the last reply, while its first reply was
    /// not acknowledged: answered again from the same port.
    AnsweredAgain,
    /// ERROR 1: no such file.
    NotFound,
    /// ERROR 2: the name tries to leave the served set (`..`, absolute escape, empty).
    RefusedName,
    /// ERROR 2: a write request; this server is read-only.
    WriteRefused,
    /// ERROR 4: a mode other than `octet` or `netascii`.
    BadMode,
    /// ERROR 8: an option value out of range or not a number.
    BadOptions,
    /// ERROR 0: the server carries its maximum of transfers.
    ServerBusy,
    /// ERROR 0: this client IP carries its maximum of transfers.
    ClientBusy,
    /// ERROR 4: the request did not parse.
    Malformed,
}

impl RequestOutcome {
    /// Every outcome, for metrics.
    pub const ALL: [RequestOutcome; 11] = [
        RequestOutcome::Started,
        RequestOutcome::Repeat,
        RequestOutcome::AnsweredAgain,
        RequestOutcome::NotFound,
        RequestOutcome::RefusedName,
        RequestOutcome::WriteRefused,
        RequestOutcome::BadMode,
        RequestOutcome::BadOptions,
        RequestOutcome::ServerBusy,
        RequestOutcome::ClientBusy,
        RequestOutcome::Malformed,
    ];

    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            RequestOutcome::Started => "started",
            RequestOutcome::Repeat => "repeat",
            RequestOutcome::AnsweredAgain => "answered_again",
            RequestOutcome::NotFound => "not_found",
            RequestOutcome::RefusedName => "refused_name",
            RequestOutcome::WriteRefused => "write_refused",
            RequestOutcome::BadMode => "bad_mode",
            RequestOutcome::BadOptions => "bad_options",
            RequestOutcome::ServerBusy => "server_busy",
            RequestOutcome::ClientBusy => "client_busy",
            RequestOutcome::Malformed => "malformed",
        }
    }
}

/// Why a started transfer ended without completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferFailure {
    /// The resend budget ran out with no ACK progress: the window went out again once,
    /// then single-block probes up to the retry limit, and the client stayed silent.
    Timeout,
    /// The client sent ERROR after data had started.
    ClientError,
    /// The client sent ERROR in answer to the OACK (EDK2 does this after learning the
    /// size from `tsize`, before requesting the file for real).
    NegotiationAborted,
    /// The client sent a new request from the same address.
    Replaced,
    /// No ACK came for the first reply (sent once, resent once) within the retry time:
    /// the request's source address never showed it receives (a lost client, or a forged
    /// request).
    Unproven,
    /// The table of requests waiting for their first ACK was full and this was the oldest.
    PendingEvicted,
    /// The client acknowledged the first reply while the transfer limits were full; it
    /// was answered "busy".
    Busy,
    /// An ACK from the client's address and port reached another transfer port before the
    /// transfer had delivered anything acknowledged: a client locked onto its server port
    /// never does that, a blind sprayer of spoofed ACKs does. Ended without a reply.
    WrongPort,
}

impl TransferFailure {
    /// Every reason, for metrics.
    pub const ALL: [TransferFailure; 8] = [
        TransferFailure::Timeout,
        TransferFailure::ClientError,
        TransferFailure::NegotiationAborted,
        TransferFailure::Replaced,
        TransferFailure::Unproven,
        TransferFailure::PendingEvicted,
        TransferFailure::Busy,
        TransferFailure::WrongPort,
    ];

    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            TransferFailure::Timeout => "timeout",
            TransferFailure::ClientError => "client_error",
            TransferFailure::NegotiationAborted => "negotiation_aborted",
            TransferFailure::Replaced => "replaced",
            TransferFailure::Unproven => "unproven",
            TransferFailure::PendingEvicted => "pending_evicted",
            TransferFailure::Busy => "busy",
            TransferFailure::WrongPort => "wrong_port",
        }
    }
}

/// Why a block (or OACK) went out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retransmit {
    /// The retransmission timer fired.
    Timeout,
    /// The client acknowledged part of a window (it missed the block after), so the window
    /// restarted there.
    Rollback,
    /// A timeout after the window was already resent with no progress since, or while
    /// only an ACK of the OACK started the first window: only the first unacknowledged
    /// block and the window's last went out again.
    Probe,
}

const RETRANSMIT_CAUSES: [&str; 3] = ["timeout", "rollback", "probe"];

/// Datagrams dropped without an answer, besides malformed ones (labelled by
/// [`WireError::reason`]).
const DROPS: [&str; 6] = [
    "unexpected_port",
    "unexpected_message",
    "bad_source",
    "truncated",
    "no_packet_info",
    "send_queue_full",
];
const DROP_UNEXPECTED_PORT: usize = 0;
const DROP_UNEXPECTED_MESSAGE: usize = 1;
const DROP_BAD_SOURCE: usize = 2;
const DROP_TRUNCATED: usize = 3;
const DROP_NO_PACKET_INFO: usize = 4;
const DROP_SEND_QUEUE_FULL: usize = 5;

const ACKS: [&str; 4] = ["advanced", "complete", "duplicate", "ignored"];
/// ERROR codes we send (0-8); the last slot counts anything else.
const ERROR_CODES: usize = 9;

/// Upper bounds of the transfer duration buckets, in milliseconds.
const DURATION_BUCKETS_MS: [u64; 11] = [
    50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000,
];
/// Upper bounds of the transfer size buckets, in bytes (4 KiB to 256 MiB by powers of 4).
const SIZE_BUCKETS: [u64; 8] = [
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    256 << 20,
];

/// A histogram with fixed buckets; each bucket counts its own observations (cumulated in
/// the snapshot), the last one is unbounded.
#[derive(Debug)]
struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
    count: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: core::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// Record `value` against `bounds` (N - 1 of them; beyond the last is `+Inf`).
    fn observe(&self, bounds: &[u64], value: u64) {
        let i = bounds.iter().position(|&b| value <= b).unwrap_or(N - 1);
        self.buckets[i.min(N - 1)].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// The observations so far, cumulated per bucket against `bounds` (N - 1 of them).
    fn snapshot(&self, bounds: &[u64]) -> HistogramSnapshot<N> {
        let mut cumulative = 0;
        HistogramSnapshot {
            buckets: core::array::from_fn(|i| {
                cumulative += self.buckets[i].load(Relaxed);
                (bounds.get(i).copied(), cumulative)
            }),
            sum: self.sum.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }
}

/// A histogram at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot<const N: usize> {
    /// Each bucket's upper bound (`None` for the last, unbounded one) and the number of
    /// observations at or below it: cumulative, as Prometheus' `le` buckets are.
    pub buckets: [(Option<u64>, u64); N],
    /// Sum of the observed values.
    pub sum: u64,
    /// Number of observations.
    pub count: u64,
}

/// Counts of everything the TFTP server saw and did.
#[derive(Debug, Default)]
pub struct TftpCounters {
    requests: [AtomicU64; RequestOutcome::ALL.len()],
    errors_sent: [AtomicU64; ERROR_CODES + 1],
    started: AtomicU64,
    completed: AtomicU64,
    failed: [AtomicU64; TransferFailure::ALL.len()],
    active: AtomicU64,
    pending: AtomicU64,
    retransmissions: [AtomicU64; RETRANSMIT_CAUSES.len()],
    data_packets: AtomicU64,
    data_bytes: AtomicU64,
    oacks: AtomicU64,
    acks: [AtomicU64; ACKS.len()],
    malformed: [AtomicU64; WireError::REASONS.len()],
    drops: [AtomicU64; DROPS.len()],
    /// Microseconds.
    duration: Histogram<{ DURATION_BUCKETS_MS.len() + 1 }>,
    size: Histogram<{ SIZE_BUCKETS.len() + 1 }>,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

fn index_of<T: PartialEq>(all: &[T], x: &T) -> usize {
    all.iter().position(|a| a == x).unwrap_or(0)
}

impl TftpCounters {
    pub(crate) fn request(&self, outcome: RequestOutcome) {
        bump(&self.requests[index_of(&RequestOutcome::ALL, &outcome)]);
    }

    pub(crate) fn error_sent(&self, code: ErrorCode) {
        let i = usize::from(u16::from(code)).min(ERROR_CODES);
        bump(&self.errors_sent[i]);
    }

    /// A request was accepted and answered; it waits for its first ACK.
    pub(crate) fn transfer_started(&self) {
        bump(&self.started);
        bump(&self.pending);
    }

    /// A waiting request's client acknowledged the first reply: it holds a slot now.
    pub(crate) fn transfer_proven(&self) {
        self.pending.fetch_sub(1, Relaxed);
        bump(&self.active);
    }

    pub(crate) fn transfer_completed(&self, duration: Duration, size: u64) {
        bump(&self.completed);
        self.active.fetch_sub(1, Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.duration
            .observe(&DURATION_BUCKETS_MS.map(|ms| ms * 1000), micros);
        self.size.observe(&SIZE_BUCKETS, size);
    }

    /// A transfer ended for `why`; `proven` says whether it held a slot or was waiting.
    pub(crate) fn transfer_failed(&self, why: TransferFailure, proven: bool) {
        bump(&self.failed[index_of(&TransferFailure::ALL, &why)]);
        if proven {
            self.active.fetch_sub(1, Relaxed);
        } else {
            self.pending.fetch_sub(1, Relaxed);
        }
    }

    pub(crate) fn retransmitted(&self, cause: Retransmit) {
        let i = match cause {
            Retransmit::Timeout => 0,
            Retransmit::Rollback => 1,
            Retransmit::Probe => 2,
        };
        bump(&self.retransmissions[i]);
    }

    pub(crate) fn data_sent(&self, payload: usize) {
        bump(&self.data_packets);
        self.data_bytes.fetch_add(payload as u64, Relaxed);
    }

    pub(crate) fn oack_sent(&self) {
        bump(&self.oacks);
    }

    pub(crate) fn ack(&self, outcome: AckOutcome) {
        let i = match outcome {
            AckOutcome::Advanced => 0,
            AckOutcome::Complete => 1,
            AckOutcome::Duplicate => 2,
            AckOutcome::Ignored => 3,
        };
        bump(&self.acks[i]);
    }

    pub(crate) fn malformed(&self, error: &WireError) {
        bump(&self.malformed[index_of(&WireError::REASONS, &error.reason())]);
    }

    pub(crate) fn unexpected_port(&self) {
        bump(&self.drops[DROP_UNEXPECTED_PORT]);
    }

    pub(crate) fn unexpected_message(&self) {
        bump(&self.drops[DROP_UNEXPECTED_MESSAGE]);
    }

    pub(crate) fn bad_source(&self) {
        bump(&self.drops[DROP_BAD_SOURCE]);
    }

    pub(crate) fn send_queue_full(&self) {
        bump(&self.drops[DROP_SEND_QUEUE_FULL]);
    }

    pub(crate) fn driver_drop(&self, why: DriverDrop) {
        bump(
            &self.drops[match why {
                DriverDrop::Truncated => DROP_TRUNCATED,
                DriverDrop::NoPacketInfo => DROP_NO_PACKET_INFO,
            }],
        );
    }

    /// Transfers in progress (their client acknowledged the first reply).
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    /// Requests answered and waiting for their client's first ACK.
    pub fn pending(&self) -> u64 {
        self.pending.load(Relaxed)
    }

    /// Transfers started so far.
    pub fn transfers_started(&self) -> u64 {
        self.started.load(Relaxed)
    }

    /// Transfers completed (last block acknowledged) so far.
    pub fn transfers_completed(&self) -> u64 {
        self.completed.load(Relaxed)
    }

    /// Transfers that ended for `why` so far.
    pub fn transfers_failed(&self, why: TransferFailure) -> u64 {
        self.failed[index_of(&TransferFailure::ALL, &why)].load(Relaxed)
    }

    /// Requests answered with `outcome` so far.
    pub fn requests(&self, outcome: RequestOutcome) -> u64 {
        self.requests[index_of(&RequestOutcome::ALL, &outcome)].load(Relaxed)
    }

    /// ERROR packets with `code` sent so far.
    pub fn errors_sent(&self, code: ErrorCode) -> u64 {
        let i = usize::from(u16::from(code)).min(ERROR_CODES);
        self.errors_sent[i].load(Relaxed)
    }

    /// DATA packets sent so far, first sends and re-sends.
    pub fn data_packets_sent(&self) -> u64 {
        self.data_packets.load(Relaxed)
    }

    /// File bytes sent in DATA packets so far, re-sends included.
    pub fn data_bytes_sent(&self) -> u64 {
        self.data_bytes.load(Relaxed)
    }

    /// Windows' blocks and OACKs sent again after a timeout so far (probes apart).
    pub fn retransmissions_on_timeout(&self) -> u64 {
        self.retransmissions[0].load(Relaxed)
    }

    /// Blocks sent again because the client acknowledged only part of a window.
    pub fn retransmissions_on_rollback(&self) -> u64 {
        self.retransmissions[1].load(Relaxed)
    }

    /// Single blocks sent again on a timeout after the window had already been resent.
    pub fn retransmissions_as_probe(&self) -> u64 {
        self.retransmissions[2].load(Relaxed)
    }

    /// ACKs that acknowledged the already acknowledged block again.
    pub fn duplicate_acks(&self) -> u64 {
        self.acks[2].load(Relaxed)
    }

    /// Malformed datagrams so far, all reasons.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The counters as they are now, as plain numbers (for `/metrics`).
    pub fn snapshot(&self) -> TftpSnapshot {
        let load = |c: &AtomicU64| c.load(Relaxed);
        let mut dropped = [("", 0); DROP_REASONS];
        let reasons = WireError::REASONS
            .iter()
            .zip(&self.malformed)
            .chain(DROPS.iter().zip(&self.drops));
        for (slot, (reason, c)) in dropped.iter_mut().zip(reasons) {
            *slot = (reason, load(c));
        }
        TftpSnapshot {
            requests: core::array::from_fn(|i| (RequestOutcome::ALL[i], load(&self.requests[i]))),
            errors_sent: core::array::from_fn(|i| {
                (ERROR_CODE_LABELS[i], load(&self.errors_sent[i]))
            }),
            transfers_started: load(&self.started),
            transfers_completed: load(&self.completed),
            transfers_failed: core::array::from_fn(|i| {
                (TransferFailure::ALL[i], load(&self.failed[i]))
            }),
            active: load(&self.active),
            pending: load(&self.pending),
            retransmissions: core::array::from_fn(|i| {
                (RETRANSMIT_CAUSES[i], load(&self.retransmissions[i]))
            }),
            data_packets: load(&self.data_packets),
            oacks: load(&self.oacks),
            data_bytes: load(&self.data_bytes),
            acks: core::array::from_fn(|i| (ACKS[i], load(&self.acks[i]))),
            dropped,
            duration_micros: self
                .duration
                .snapshot(&DURATION_BUCKETS_MS.map(|ms| ms * 1000)),
            size_bytes: self.size.snapshot(&SIZE_BUCKETS),
        }
    }
}

/// Drop reasons: every malformation, then the other drops.
const DROP_REASONS: usize = WireError::REASONS.len() + DROPS.len();

/// Labels of the ERROR codes counted: 0 to 8, then anything else.
const ERROR_CODE_LABELS: [&str; ERROR_CODES + 1] =
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "other"];

/// The TFTP counters at one moment: plain numbers, each with what it counts (the label
/// values `/metrics` shows), in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpSnapshot {
    /// Requests received on the request port, by how they were answered.
    pub requests: [(RequestOutcome, u64); RequestOutcome::ALL.len()],
    /// ERROR packets sent, by code: `0` to `8`, then `other`.
    pub errors_sent: [(&'static str, u64); ERROR_CODES + 1],
    /// Requests accepted and answered (OACK or DATA 1), proven or not.
    pub transfers_started: u64,
    /// Transfers whose last block was acknowledged.
    pub transfers_completed: u64,
    /// Transfers ended before completion, by reason.
    pub transfers_failed: [(TransferFailure, u64); TransferFailure::ALL.len()],
    /// Transfers in progress whose client acknowledged the first reply (a gauge).
    pub active: u64,
    /// Requests answered and waiting for their client's first ACK (a gauge).
    pub pending: u64,
    /// Blocks and OACKs sent again, by cause: `timeout`, `rollback`, `probe`.
    pub retransmissions: [(&'static str, u64); RETRANSMIT_CAUSES.len()],
    /// DATA packets sent, re-sends included.
    pub data_packets: u64,
    /// OACK packets sent.
    pub oacks: u64,
    /// File bytes sent in DATA packets, re-sends included.
    pub data_bytes: u64,
    /// ACKs received for a transfer, by effect: `advanced`, `complete`, `duplicate`,
    /// `ignored`.
    pub acks: [(&'static str, u64); ACKS.len()],
    /// Datagrams malformed or of no use, by reason: each malformation
    /// ([`WireError::reason`]), then `unexpected_port`, `unexpected_message`, `bad_source`,
    /// `truncated`, `no_packet_info`, `send_queue_full`.
    pub dropped: [(&'static str, u64); DROP_REASONS],
    /// Durations of completed transfers, in microseconds.
    pub duration_micros: HistogramSnapshot<{ DURATION_BUCKETS_MS.len() + 1 }>,
    /// Sizes of completed transfers, in bytes.
    pub size_bytes: HistogramSnapshot<{ SIZE_BUCKETS.len() + 1 }>,
}
