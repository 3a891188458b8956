//! A sans-IO TFTP read client (RFC 1350, with RFC 2347 options: RFC 2348 `blksize`, RFC
//! 2349 `tsize` and `timeout`, RFC 7440 `windowsize`), driven with explicit time.
//!
//! [`TftpClient`] fetches one file. It never touches a socket or reads a clock: the caller
//! sends [`TftpClient::request`], feeds every datagram the client's socket receives to
//! [`TftpClient::on_datagram`] and calls [`TftpClient::on_timeout`] once
//! [`TftpClient::deadline`] has passed; each call says what to send (at most one datagram)
//! and hands over the file's new bytes, borrowed from the datagram, so the caller decides
//! whether to keep, hash or compare them. Nothing is allocated after [`TftpClient::new`]
//! unless the transfer fails (the error keeps the server's message).
//!
//! It behaves like careful firmware:
//! - the transfer ID (RFC 1350): the first reply from the server's address fixes the
//!   server's port; datagrams from any other source are answered with ERROR 5 and change
//!   nothing;
//! - an OACK is checked (only requested options, each once, values within what was asked)
//!   and acknowledged with ACK 0; a server that ignores options starts with DATA 1 and the
//!   transfer runs with RFC 1350's 512-byte blocks, one at a time;
//! - windows (RFC 7440): the last block of each window is acknowledged; on a gap the last
//!   block received in order is acknowledged once (the server restarts the window there),
//!   and the rest of the broken window is ignored rather than answered block by block;
//! - a repeat of the block acknowledged last means that ACK was lost: it is sent again;
//!   other old blocks are network duplicates and get nothing (answering them is the
//!   Sorcerer's Apprentice bug, RFC 1123 4.2.3.1);
//! - block numbers roll over (65535 -> 0); blocks are counted with 64-bit indices;
//! - silence for the retransmission interval re-sends the request, or acknowledges the
//!   last block received in order; after `retries` such timeouts in a row it gives up;
//! - after the last block it stays ready to acknowledge that block again (its ACK may be
//!   lost), for as long as the caller keeps feeding it;
//! - optionally, the EDK2 size probe: a request whose OACK is answered with ERROR 8
//!   ("User aborted the transfer") once the size is known, as OVMF does before the real
//!   request.
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use std::time::Instant;
//! use ironboot_net::tftp::client::{ClientOptions, TftpClient};
//!
//! let server = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 69);
//! let options = ClientOptions::new("snp.efi").blksize(1468).windowsize(4).tsize();
//! let mut client = TftpClient::new(server, options, Instant::now()).unwrap();
//! let rrq = client.request();
//! assert_eq!(rrq.dst, server);
//! // socket.send_to(rrq.bytes, rrq.dst); then, for each datagram received:
//! // let step = client.on_datagram(now, src, bytes);
//! // sink(step.offset, step.data); if let Some(t) = step.transmit { send t };
//! ```

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use crate::wire::tftp::{
    self, DEFAULT_BLOCK_SIZE, ErrorCode, MAX_REQUEST_LEN, MIN_BLOCK_SIZE, Opcode, OptionWriter,
    Options, Repr, write_ack, write_error,
};

/// Retransmission interval when the caller sets none and the server accepts no `timeout`.
pub const DEFAULT_RETRANSMIT: Duration = Duration::from_secs(2);
/// Timeouts in a row before the client gives up.
pub const DEFAULT_RETRIES: u32 = 6;
/// The message of the ERROR 8 that ends a size probe (what OVMF sends).
pub const PROBE_ABORT_MESSAGE: &str = "User aborted the transfer";

/// Room for the client's own datagrams: ACKs (4 bytes) and short ERRORs.
const OUT_LEN: usize = 64;

/// The transfer mode requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferMode {
    /// `octet`: raw bytes.
    Octet,
    /// `netascii`: the bytes are delivered as sent (CR LF, CR NUL), not decoded.
    Netascii,
}

impl TransferMode {
    fn name(self) -> &'static str {
        match self {
            TransferMode::Octet => "octet",
            TransferMode::Netascii => "netascii",
        }
    }
}

/// What to fetch and how: the request's options, in the order they will be sent, and the
/// client's own timing. Built with chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    filename: String,
    mode: TransferMode,
    options: Vec<(String, String)>,
    retransmit: Option<Duration>,
    retries: u32,
    probe: bool,
}

impl ClientOptions {
    /// Fetch `filename` in octet mode, with no options (plain RFC 1350).
    pub fn new(filename: impl Into<String>) -> Self {
        ClientOptions {
            filename: filename.into(),
            mode: TransferMode::Octet,
            options: Vec::new(),
            retransmit: None,
            retries: DEFAULT_RETRIES,
            probe: false,
        }
    }

    /// Use `mode`.
    pub fn mode(mut self, mode: TransferMode) -> Self {
        self.mode = mode;
        self
    }

    /// Ask for `blksize` (RFC 2348).
    pub fn blksize(self, blksize: u16) -> Self {
        self.option("blksize", blksize.to_string())
    }

    /// Ask for `windowsize` (RFC 7440).
    pub fn windowsize(self, windowsize: u16) -> Self {
        self.option("windowsize", windowsize.to_string())
    }

    /// Ask for the transfer size (`tsize` 0, RFC 2349).
    pub fn tsize(self) -> Self {
        self.option("tsize", "0")
    }

    /// Ask for the server's retransmission interval (`timeout`, RFC 2349). The client
    /// retransmits at that interval too once the server accepts it, unless
    /// [`ClientOptions::retransmit`] is set.
    pub fn timeout(self, secs: u8) -> Self {
        self.option("timeout", secs.to_string())
    }

    /// Append any option as given (names are compared case-insensitively). Known names
    /// with values that are not numbers are sent as they are: the server's ERROR 8 is then
    /// the expected answer.
    pub fn option(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((name.into(), value.into()));
        self
    }

    /// Retransmit after `interval` of silence (default: the accepted `timeout`, else
    /// [`DEFAULT_RETRANSMIT`]).
    pub fn retransmit(mut self, interval: Duration) -> Self {
        self.retransmit = Some(interval);
        self
    }

    /// Give up after `retries` timeouts in a row ([`DEFAULT_RETRIES`]).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Make this an EDK2-style size probe: once the OACK (or, from a server that ignores
    /// options, the first block) arrives, answer it with ERROR 8 and finish. The size is
    /// then [`TftpClient::tsize`].
    pub fn probe(mut self) -> Self {
        self.probe = true;
        self
    }

    /// The file name.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// The options, in request order.
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Still going.
    Running,
    /// The whole file arrived and its last block was acknowledged (or, for a probe, the
    /// negotiation was answered and aborted).
    Done,
    /// Ended without the file; [`TftpClient::error`] says why.
    Failed,
}

/// A server behaviour that breaks the protocol; the client answers it with ERROR 4 (or
/// ERROR 8 for a bad OACK) and fails the transfer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A datagram that is not a TFTP message.
    #[error("unparsable datagram: {0}")]
    Malformed(tftp::Error),
    /// A message a server never sends to a reader (RRQ, WRQ, ACK).
    #[error("unexpected {0:?}")]
    UnexpectedOpcode(Opcode),
    /// The OACK names an option that was not requested.
    #[error("OACK carries the unrequested option {0:?}")]
    UnrequestedOption(String),
    /// The OACK names an option twice.
    #[error("OACK repeats {0:?}")]
    RepeatedOption(String),
    /// The OACK grants a value the request does not allow (a larger block or window, a
    /// different timeout, a size that is not a number).
    #[error("OACK value {value:?} for {name} is not acceptable")]
    BadOptionValue {
        /// The option.
        name: &'static str,
        /// The value sent.
        value: String,
    },
    /// A block longer than the block size.
    #[error("block of {len} bytes exceeds blksize {blksize}")]
    BlockTooLarge {
        /// The block's length.
        len: usize,
        /// The negotiated block size.
        blksize: u16,
    },
    /// The file's length differs from the `tsize` the server announced.
    #[error("received {received} bytes, the OACK announced {tsize}")]
    SizeMismatch {
        /// Bytes received.
        received: u64,
        /// `tsize` of the OACK.
        tsize: u64,
    },
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server sent ERROR.
    #[error("server error {}: {message}", u16::from(*code))]
    Server {
        /// The code.
        code: ErrorCode,
        /// The message.
        message: String,
    },
    /// Nothing useful arrived for the retransmission interval, `retries` times in a row.
    #[error("no answer after {retries} retransmissions")]
    Timeout {
        /// Retransmissions made.
        retries: u32,
    },
    /// The server broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(Violation),
}

impl ClientError {
    /// A stable, low-cardinality label: `server_error_<code>`, `timeout`, `protocol`.
    pub fn reason(&self) -> &'static str {
        match self {
            ClientError::Server { code, .. } => match code {
                ErrorCode::NotDefined => "server_error_0",
                ErrorCode::FileNotFound => "server_error_1",
                ErrorCode::AccessViolation => "server_error_2",
                ErrorCode::DiskFull => "server_error_3",
                ErrorCode::IllegalOperation => "server_error_4",
                ErrorCode::UnknownTransferId => "server_error_5",
                ErrorCode::FileExists => "server_error_6",
                ErrorCode::NoSuchUser => "server_error_7",
                ErrorCode::OptionNegotiation => "server_error_8",
                ErrorCode::Unknown(_) => "server_error_other",
            },
            ClientError::Timeout { .. } => "timeout",
            ClientError::Protocol(_) => "protocol",
        }
    }
}

/// What the server's OACK granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepted {
    /// `blksize`, if granted.
    pub blksize: Option<u16>,
    /// `windowsize`, if granted.
    pub windowsize: Option<u16>,
    /// `timeout` in seconds, if granted.
    pub timeout: Option<u8>,
    /// `tsize`: the file's size, if sent.
    pub tsize: Option<u64>,
}

/// How the transfer went, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Datagrams re-sent because the retransmission interval passed in silence.
    pub retransmissions: u32,
    /// ACKs sent because a block arrived ahead of a missing one.
    pub gap_acks: u32,
    /// ACKs repeated because the block they acknowledge arrived again.
    pub repeated_acks: u32,
    /// Old or out-of-window blocks ignored (network duplicates, the tail of a broken
    /// window).
    pub ignored_blocks: u32,
    /// Datagrams from a source other than the server's transfer ID.
    pub foreign: u32,
}

/// One datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// Where to.
    pub dst: SocketAddrV4,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// What one received datagram did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'c, 'd> {
    /// The datagram to send in answer, if any.
    pub transmit: Option<Transmit<'c>>,
    /// New bytes of the file, in order (empty if none), borrowed from the datagram.
    pub data: &'d [u8],
    /// Offset of `data` in the file.
    pub offset: u64,
    /// Where the transfer stands now.
    pub status: Status,
}

/// What the next transmission is, written into the client's buffer or its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Nothing,
    Request,
    Buffer(SocketAddrV4, usize),
}

/// Where the exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Request sent, no reply yet.
    Requesting,
    /// Receiving blocks (after ACK 0 of an OACK, or from DATA 1).
    Receiving,
    /// The file (or probe) is complete.
    Done,
    /// Gave up or refused.
    Failed,
}

/// What was asked for, parsed from the request's options (unparsable values: `None`).
#[derive(Debug, Clone, Copy, Default)]
struct Asked {
    blksize: Option<u64>,
    windowsize: Option<u64>,
    timeout: Option<u64>,
}

/// One read transfer, client side. See the [module docs](self).
#[derive(Debug)]
pub struct TftpClient {
    server: SocketAddrV4,
    request: Vec<u8>,
    asked: Asked,
    retransmit: Option<Duration>,
    max_retries: u32,
    probe: bool,
    tid: Option<SocketAddrV4>,
    phase: Phase,
    accepted: Option<Accepted>,
    blksize: u16,
    windowsize: u16,
    /// Blocks received in order (absolute count).
    received: u64,
    /// Bytes received in order.
    bytes: u64,
    /// Blocks received in order since the last ACK that closed a window.
    in_window: u16,
    /// The last ACK sent.
    last_ack: Option<u16>,
    /// A gap ACK went out and no block arrived in order since.
    gap_acked: bool,
    deadline: Option<Instant>,
    retries: u32,
    out: [u8; OUT_LEN],
    stats: ClientStats,
    error: Option<ClientError>,
}

fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl TftpClient {
    /// A transfer from `server` (the request port, normally 69) asking for `options`.
    /// Fails only if the request cannot be written (longer than 512 bytes, a NUL in a
    /// string).
    pub fn new(
        server: SocketAddrV4,
        options: ClientOptions,
        now: Instant,
    ) -> Result<Self, tftp::Error> {
        let mut request = vec![0u8; MAX_REQUEST_LEN];
        let mut w = OptionWriter::request(
            &mut request,
            Opcode::Rrq,
            &options.filename,
            options.mode.name(),
        )?;
        for (name, value) in &options.options {
            w.option(name, value)?;
        }
        let len = w.finish();
        request.truncate(len);
        let mut asked = Asked::default();
        for (name, value) in &options.options {
            let slot = if name.eq_ignore_ascii_case("blksize") {
                &mut asked.blksize
            } else if name.eq_ignore_ascii_case("windowsize") {
                &mut asked.windowsize
            } else if name.eq_ignore_ascii_case("timeout") {
                &mut asked.timeout
            } else {
                continue;
            };
            // The first occurrence counts, as on the server.
            if slot.is_none() {
                *slot = parse_number(value);
            }
        }
        let mut client = TftpClient {
            server,
            request,
            asked,
            retransmit: options.retransmit,
            max_retries: options.retries,
            probe: options.probe,
            tid: None,
            phase: Phase::Requesting,
            accepted: None,
            blksize: DEFAULT_BLOCK_SIZE,
            windowsize: 1,
            received: 0,
            bytes: 0,
            in_window: 0,
            last_ack: None,
            gap_acked: false,
            deadline: None,
            retries: 0,
            out: [0; OUT_LEN],
            stats: ClientStats::default(),
            error: None,
        };
        client.deadline = Some(now + client.interval());
        Ok(client)
    }

    /// The request (RRQ) to send first, to the server's request port.
    pub fn request(&self) -> Transmit<'_> {
        Transmit {
            dst: self.server,
            bytes: &self.request,
        }
    }

    /// When [`TftpClient::on_timeout`] is due; `None` once the transfer has ended.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Where the transfer stands.
    pub fn status(&self) -> Status {
        match self.phase {
            Phase::Requesting | Phase::Receiving => Status::Running,
            Phase::Done => Status::Done,
            Phase::Failed => Status::Failed,
        }
    }

    /// Why the transfer failed, once it has.
    pub fn error(&self) -> Option<&ClientError> {
        self.error.as_ref()
    }

    /// The server's transfer ID, once it replied.
    pub fn server_tid(&self) -> Option<SocketAddrV4> {
        self.tid
    }

    /// What the OACK granted, if one arrived.
    pub fn accepted(&self) -> Option<Accepted> {
        self.accepted
    }

    /// The file's size: from the OACK's `tsize`, else (once done) what arrived.
    pub fn tsize(&self) -> Option<u64> {
        self.accepted
            .and_then(|a| a.tsize)
            .or((self.phase == Phase::Done && !self.probe).then_some(self.bytes))
    }

    /// The block size in use.
    pub fn blksize(&self) -> u16 {
        self.blksize
    }

    /// The window size in use.
    pub fn windowsize(&self) -> u16 {
        self.windowsize
    }

    /// Bytes of the file received so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes
    }

    /// Blocks received in order so far.
    pub fn blocks_received(&self) -> u64 {
        self.received
    }

    /// Counters of this transfer.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// The retransmission interval now in force.
    fn interval(&self) -> Duration {
        self.retransmit
            .or_else(|| {
                self.accepted
                    .and_then(|a| a.timeout)
                    .map(|s| Duration::from_secs(u64::from(s)))
            })
            .unwrap_or(DEFAULT_RETRANSMIT)
    }

    fn write_ack(&mut self, block: u16, now: Instant) -> Out {
        let tid = self.tid.unwrap_or(self.server);
        self.last_ack = Some(block);
        self.deadline = Some(now + self.interval());
        // An ACK always fits the buffer.
        match write_ack(&mut self.out, block) {
            Ok(len) => Out::Buffer(tid, len),
            Err(_) => Out::Nothing,
        }
    }

    fn write_error(&mut self, dst: SocketAddrV4, code: ErrorCode, message: &str) -> Out {
        match write_error(&mut self.out, code, message) {
            Ok(len) => Out::Buffer(dst, len),
            Err(_) => Out::Nothing,
        }
    }

    fn fail(&mut self, error: ClientError) {
        self.phase = Phase::Failed;
        self.deadline = None;
        self.error = Some(error);
    }

    /// Fail for `violation` and tell the server with an ERROR.
    fn violate(&mut self, violation: Violation) -> Out {
        let (code, message) = match violation {
            Violation::UnrequestedOption(_)
            | Violation::RepeatedOption(_)
            | Violation::BadOptionValue { .. } => {
                (ErrorCode::OptionNegotiation, "unacceptable OACK")
            }
            _ => (ErrorCode::IllegalOperation, "illegal TFTP operation"),
        };
        let dst = self.tid.unwrap_or(self.server);
        self.fail(ClientError::Protocol(violation));
        self.write_error(dst, code, message)
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        self.deadline = None;
    }

    fn transmit(&self, out: Out) -> Option<Transmit<'_>> {
        match out {
            Out::Nothing => None,
            Out::Request => Some(self.request()),
            Out::Buffer(dst, len) => Some(Transmit {
                dst,
                bytes: &self.out[..len],
            }),
        }
    }

    /// Handle one datagram the client's socket received from `src`.
    pub fn on_datagram<'d>(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        bytes: &'d [u8],
    ) -> Step<'_, 'd> {
        let offset = self.bytes;
        let (out, data) = self.handle(now, src, bytes);
        Step {
            transmit: self.transmit(out),
            data,
            offset,
            status: self.status(),
        }
    }

    fn handle<'d>(&mut self, now: Instant, src: SocketAddrV4, bytes: &'d [u8]) -> (Out, &'d [u8]) {
        let opcode = tftp::Packet::new_unchecked(bytes).opcode();
        match self.tid {
            None if src.ip() == self.server.ip() && self.phase == Phase::Requesting => {
                self.tid = Some(src);
            }
            Some(tid) if tid == src => {}
            _ => {
                // RFC 1350: a packet from a foreign transfer ID gets ERROR 5 and the transfer
                // goes on. Never answer an ERROR, and stay quiet once finished (a late
                // reply to an earlier request, e.g. a probe's OACK, is no news).
                self.stats.foreign += 1;
                let quiet = opcode == Opcode::Error
                    || bytes.len() < 4
                    || matches!(self.phase, Phase::Done | Phase::Failed)
                    || src.ip() != self.server.ip();
                let out = if quiet {
                    Out::Nothing
                } else {
                    self.write_error(src, ErrorCode::UnknownTransferId, "unknown transfer ID")
                };
                return (out, &[]);
            }
        }
        match self.phase {
            Phase::Failed => return (Out::Nothing, &[]),
            Phase::Done => {
                // Finished: only a repeat of the last block matters (its ACK was lost).
                if !self.probe
                    && opcode == Opcode::Data
                    && tftp::Packet::new_unchecked(bytes).block() == self.received as u16
                {
                    self.stats.repeated_acks += 1;
                    let block = self.received as u16;
                    let out = self.write_ack(block, now);
                    self.deadline = None;
                    return (out, &[]);
                }
                return (Out::Nothing, &[]);
            }
            Phase::Requesting | Phase::Receiving => {}
        }
        let repr = match Repr::parse_bytes(bytes) {
            Ok(repr) => repr,
            Err(e) => return (self.violate(Violation::Malformed(e)), &[]),
        };
        match repr {
            Repr::Oack { options } => (self.on_oack(now, options), &[]),
            Repr::Data { block, data } => self.on_data(now, block, data),
            Repr::Error { code, message } => {
                self.fail(ClientError::Server {
                    code,
                    message: message.to_owned(),
                });
                (Out::Nothing, &[])
            }
            other => (
                self.violate(Violation::UnexpectedOpcode(other.opcode())),
                &[],
            ),
        }
    }

    fn on_oack(&mut self, now: Instant, options: Options<'_>) -> Out {
        if self.phase == Phase::Receiving {
            if self.received == 0 && self.accepted.is_some() {
                // Our ACK 0 was lost and the server sent its OACK again.
                self.stats.repeated_acks += 1;
                return self.write_ack(0, now);
            }
            // An OACK after data has started: stale, ignore it.
            self.stats.ignored_blocks += 1;
            return Out::Nothing;
        }
        let accepted = match self.check_oack(options) {
            Ok(a) => a,
            Err(v) => return self.violate(v),
        };
        self.accepted = Some(accepted);
        self.blksize = accepted.blksize.unwrap_or(DEFAULT_BLOCK_SIZE);
        self.windowsize = accepted.windowsize.unwrap_or(1);
        self.retries = 0;
        if self.probe {
            let tid = self.tid.unwrap_or(self.server);
            self.finish();
            return self.write_error(tid, ErrorCode::OptionNegotiation, PROBE_ABORT_MESSAGE);
        }
        self.phase = Phase::Receiving;
        self.write_ack(0, now)
    }

    /// What an OACK grants, if it is acceptable for what was asked.
    fn check_oack(&self, options: Options<'_>) -> Result<Accepted, Violation> {
        let requested = match Repr::parse_bytes(&self.request) {
            Ok(Repr::Rrq(r)) => r.options,
            _ => Options::EMPTY,
        };
        let mut a = Accepted::default();
        let mut seen = [false; 4];
        for o in options {
            if requested.get(o.name).is_none() {
                return Err(Violation::UnrequestedOption(o.name.to_owned()));
            }
            let known = ["blksize", "windowsize", "timeout", "tsize"]
                .iter()
                .position(|k| o.name.eq_ignore_ascii_case(k));
            let Some(k) = known else {
                // An option only the caller understands: the server echoed it, fine.
                continue;
            };
            if std::mem::replace(&mut seen[k], true) {
                return Err(Violation::RepeatedOption(o.name.to_owned()));
            }
            let value = parse_number(o.value);
            let bad = |name: &'static str| Violation::BadOptionValue {
                name,
                value: o.value.to_owned(),
            };
            match k {
                0 => {
                    // RFC 2348: the server may lower the size, never raise it.
                    let v = value
                        .filter(|&v| v >= u64::from(MIN_BLOCK_SIZE))
                        .filter(|&v| self.asked.blksize.is_none_or(|asked| v <= asked))
                        .and_then(|v| u16::try_from(v).ok())
                        .ok_or_else(|| bad("blksize"))?;
                    a.blksize = Some(v);
                }
                1 => {
                    let v = value
                        .filter(|&v| v >= 1)
                        .filter(|&v| self.asked.windowsize.is_none_or(|asked| v <= asked))
                        .and_then(|v| u16::try_from(v).ok())
                        .ok_or_else(|| bad("windowsize"))?;
                    a.windowsize = Some(v);
                }
                2 => {
                    // RFC 2349: the server echoes the interval or leaves the option out.
                    let v = value
                        .filter(|&v| Some(v) == self.asked.timeout)
                        .and_then(|v| u8::try_from(v).ok())
                        .ok_or_else(|| bad("timeout"))?;
                    a.timeout = Some(v);
                }
                _ => a.tsize = Some(value.ok_or_else(|| bad("tsize"))?),
            }
        }
        Ok(a)
    }

    fn on_data<'d>(&mut self, now: Instant, block: u16, data: &'d [u8]) -> (Out, &'d [u8]) {
        if self.probe {
            // The server ignored the options: no size to learn, abort all the same.
            let tid = self.tid.unwrap_or(self.server);
            self.finish();
            return (
                self.write_error(tid, ErrorCode::OptionNegotiation, PROBE_ABORT_MESSAGE),
                &[],
            );
        }
        if self.phase == Phase::Requesting {
            // No OACK: the server ignored every option (RFC 2347), plain RFC 1350 rules.
            self.phase = Phase::Receiving;
        }
        let expected = (self.received + 1) as u16;
        if block != expected {
            let ahead = block.wrapping_sub(expected);
            if ahead < 0x8000 {
                // A gap: acknowledge the last block received in order, once, so the server
                // restarts its window there (RFC 7440); the rest of this broken window
                // would only repeat that ACK.
                if self.gap_acked {
                    self.stats.ignored_blocks += 1;
                    return (Out::Nothing, &[]);
                }
                self.gap_acked = true;
                self.in_window = 0;
                self.stats.gap_acks += 1;
                return (self.write_ack(self.received as u16, now), &[]);
            }
            // An old block. If it is the one acknowledged last, that ACK was lost (the
            // server timed out and resent): say it again. Other old blocks are network
            // duplicates or the server's retransmitted window.
            if self.last_ack == Some(block) && self.received > 0 {
                self.stats.repeated_acks += 1;
                return (self.write_ack(block, now), &[]);
            }
            self.stats.ignored_blocks += 1;
            return (Out::Nothing, &[]);
        }
        if data.len() > usize::from(self.blksize) {
            return (
                self.violate(Violation::BlockTooLarge {
                    len: data.len(),
                    blksize: self.blksize,
                }),
                &[],
            );
        }
        self.received += 1;
        self.bytes += data.len() as u64;
        self.in_window += 1;
        self.gap_acked = false;
        self.retries = 0;
        if data.len() < usize::from(self.blksize) {
            let announced = self.accepted.and_then(|a| a.tsize);
            if let Some(tsize) = announced.filter(|&t| t != self.bytes) {
                let received = self.bytes;
                return (
                    self.violate(Violation::SizeMismatch { received, tsize }),
                    data,
                );
            }
            let out = self.write_ack(block, now);
            self.finish();
            return (out, data);
        }
        if self.in_window >= self.windowsize {
            self.in_window = 0;
            return (self.write_ack(block, now), data);
        }
        self.deadline = Some(now + self.interval());
        (Out::Nothing, data)
    }

    /// The retransmission timer: if [`TftpClient::deadline`] has passed, re-send the
    /// request (no reply yet) or acknowledge the last block received in order (RFC 7440:
    /// the server resumes after it); after too many timeouts in a row, fail. Early calls
    /// do nothing, so a caller may wake up late or spuriously.
    pub fn on_timeout(&mut self, now: Instant) -> Option<Transmit<'_>> {
        let deadline = self.deadline?;
        if now < deadline {
            return None;
        }
        if self.retries >= self.max_retries {
            let retries = self.retries;
            self.fail(ClientError::Timeout { retries });
            return None;
        }
        self.retries += 1;
        self.stats.retransmissions += 1;
        let out = match self.phase {
            Phase::Requesting => {
                self.deadline = Some(now + self.interval());
                Out::Request
            }
            Phase::Receiving => {
                self.in_window = 0;
                self.gap_acked = false;
                self.write_ack(self.received as u16, now)
            }
            Phase::Done | Phase::Failed => Out::Nothing,
        };
        self.transmit(out)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::wire::tftp::{Repr, write_data_header};

    const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 69);
    const TID: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);

    fn data(block: u16, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; 4 + len];
        write_data_header(&mut v, block).unwrap();
        for (i, b) in v[4..].iter_mut().enumerate() {
            *b = (block as usize + i) as u8;
        }
        v
    }

    fn oack(options: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let mut w = OptionWriter::oack(&mut buf).unwrap();
        for (n, v) in options {
            w.option(n, v).unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// One step, owned: what was sent (destination and parsed message bytes), the data's
    /// (offset, length), the status.
    #[derive(Debug)]
    struct Owned {
        sent: Option<(SocketAddrV4, Vec<u8>)>,
        data: (u64, usize),
        status: Status,
    }

    impl Owned {
        fn repr(&self) -> Option<(SocketAddrV4, Repr<'_>)> {
            self.sent
                .as_ref()
                .map(|(dst, b)| (*dst, Repr::parse_bytes(b).unwrap()))
        }

        fn ack(&self) -> Option<u16> {
            match self.repr() {
                Some((_, Repr::Ack { block })) => Some(block),
                None => None,
                other => panic!("expected an ACK, got {other:?}"),
            }
        }

        fn error(&self) -> (SocketAddrV4, ErrorCode, String) {
            match self.repr() {
                Some((dst, Repr::Error { code, message })) => (dst, code, message.to_owned()),
                other => panic!("expected an ERROR, got {other:?}"),
            }
        }
    }

    fn feed(c: &mut TftpClient, now: Instant, src: SocketAddrV4, bytes: &[u8]) -> Owned {
        let s = c.on_datagram(now, src, bytes);
        Owned {
            sent: s.transmit.map(|t| (t.dst, t.bytes.to_vec())),
            data: (s.offset, s.data.len()),
            status: s.status,
        }
    }

    fn ack_of(t: Option<Transmit<'_>>) -> Option<u16> {
        match t.map(|t| Repr::parse_bytes(t.bytes).unwrap()) {
            Some(Repr::Ack { block }) => Some(block),
            other => panic!("expected an ACK, got {other:?}"),
        }
    }

    #[test]
    fn windowed_transfer_with_a_gap_acks_once_and_resumes() {
        let t0 = Instant::now();
        let opts = ClientOptions::new("f").blksize(8).windowsize(4).tsize();
        let mut c = TftpClient::new(SERVER, opts, t0).unwrap();
        match Repr::parse_bytes(c.request().bytes).unwrap() {
            Repr::Rrq(r) => {
                assert_eq!(r.filename, "f");
                assert_eq!(r.options.get("windowsize"), Some("4"));
            }
            other => panic!("{other:?}"),
        }
        let o = oack(&[("blksize", "8"), ("windowsize", "4"), ("tsize", "36")]);
        assert_eq!(feed(&mut c, t0, TID, &o).ack(), Some(0));
        assert_eq!(c.windowsize(), 4);
        for b in 1..=3 {
            assert_eq!(feed(&mut c, t0, TID, &data(b, 8)).ack(), None);
        }
        assert_eq!(feed(&mut c, t0, TID, &data(4, 8)).ack(), Some(4));
        // 5 lost: 6 gets one ACK 4, 7 and 8 nothing.
        assert_eq!(feed(&mut c, t0, TID, &data(6, 8)).ack(), Some(4));
        assert_eq!(feed(&mut c, t0, TID, &data(7, 8)).ack(), None);
        assert_eq!(feed(&mut c, t0, TID, &data(8, 8)).ack(), None);
        assert_eq!(c.stats().gap_acks, 1);
        // The server restarts at 5.
        assert_eq!(feed(&mut c, t0, TID, &data(5, 8)).data, (32, 8));
        assert_eq!(feed(&mut c, t0, TID, &data(6, 8)).ack(), None);
        let s = feed(&mut c, t0, TID, &data(7, 0));
        assert_eq!(s.status, Status::Failed, "36 announced, 48 received");
        assert!(matches!(
            c.error(),
            Some(ClientError::Protocol(Violation::SizeMismatch { .. }))
        ));
    }

    #[test]
    fn plain_data_without_oack_and_tid_locking() {
        let t0 = Instant::now();
        let opts = ClientOptions::new("f").blksize(1468).windowsize(4);
        let mut c = TftpClient::new(SERVER, opts, t0).unwrap();
        assert_eq!(feed(&mut c, t0, TID, &data(1, 512)).ack(), Some(1));
        assert_eq!(c.blksize(), 512);
        // Another port of the server: ERROR 5 to it, nothing changes.
        let other = SocketAddrV4::new(*TID.ip(), 40001);
        let (dst, code, _) = feed(&mut c, t0, other, &data(2, 512)).error();
        assert_eq!((dst, code), (other, ErrorCode::UnknownTransferId));
        assert_eq!(c.blocks_received(), 1);
        // The ACK of block 1 was lost: block 1 again is answered again.
        assert_eq!(feed(&mut c, t0, TID, &data(1, 512)).ack(), Some(1));
        let s = feed(&mut c, t0, TID, &data(2, 10));
        assert_eq!(s.status, Status::Done);
        assert_eq!(c.tsize(), Some(522));
        // Dallying: a repeated last block is acknowledged again.
        assert_eq!(feed(&mut c, t0, TID, &data(2, 10)).ack(), Some(2));
    }

    #[test]
    fn retransmits_then_gives_up() {
        let t0 = Instant::now();
        let opts = ClientOptions::new("f")
            .retransmit(Duration::from_secs(1))
            .retries(2);
        let mut c = TftpClient::new(SERVER, opts, t0).unwrap();
        assert!(c.on_timeout(t0).is_none(), "not due yet");
        let t1 = t0 + Duration::from_secs(1);
        let again = c.on_timeout(t1).unwrap();
        assert_eq!(again.dst, SERVER);
        assert!(c.on_timeout(t1 + Duration::from_secs(1)).is_some());
        assert!(c.on_timeout(t1 + Duration::from_secs(2)).is_none());
        assert_eq!(c.status(), Status::Failed);
        assert_eq!(c.error().unwrap().reason(), "timeout");
        assert_eq!(c.stats().retransmissions, 2);
    }

    #[test]
    fn bad_oacks_are_refused_with_error_8() {
        let t0 = Instant::now();
        for bad in [
            vec![("blksize", "2000")],
            vec![("windowsize", "8")],
            vec![("tsize", "0"), ("tsize", "0")],
            vec![("timeout", "5")],
            vec![("mystery", "1")],
            vec![("tsize", "big")],
        ] {
            let opts = ClientOptions::new("f")
                .blksize(1468)
                .windowsize(4)
                .tsize()
                .timeout(3);
            let mut c = TftpClient::new(SERVER, opts, t0).unwrap();
            let (dst, code, _) = feed(&mut c, t0, TID, &oack(&bad)).error();
            assert_eq!((dst, code), (TID, ErrorCode::OptionNegotiation), "{bad:?}");
            assert_eq!(c.error().unwrap().reason(), "protocol");
        }
    }

    #[test]
    fn probe_aborts_after_the_oack() {
        let t0 = Instant::now();
        let opts = ClientOptions::new("f")
            .tsize()
            .blksize(1468)
            .windowsize(4)
            .probe();
        let mut c = TftpClient::new(SERVER, opts, t0).unwrap();
        let s = feed(
            &mut c,
            t0,
            TID,
            &oack(&[("tsize", "173792"), ("blksize", "1468")]),
        );
        let (dst, code, message) = s.error();
        assert_eq!((dst, code), (TID, ErrorCode::OptionNegotiation));
        assert_eq!(message, PROBE_ABORT_MESSAGE);
        assert_eq!(s.status, Status::Done);
        assert_eq!(c.tsize(), Some(173_792));
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn block_numbers_roll_over() {
        let t0 = Instant::now();
        let mut c = TftpClient::new(SERVER, ClientOptions::new("f").blksize(8), t0).unwrap();
        feed(&mut c, t0, TID, &oack(&[("blksize", "8")]));
        for i in 1..=65_537u64 {
            assert_eq!(
                feed(&mut c, t0, TID, &data(i as u16, 8)).ack(),
                Some(i as u16)
            );
        }
        assert_eq!(feed(&mut c, t0, TID, &data(2, 3)).status, Status::Done);
        assert_eq!(c.bytes_received(), 65_537 * 8 + 3);
    }

    #[test]
    fn timeout_acks_the_last_block_in_order() {
        let t0 = Instant::now();
        let opts = ClientOptions::new("f")
            .blksize(8)
            .windowsize(8)
            .retransmit(Duration::from_secs(1));
        let mut c = TftpClient::new(SERVER, opts, t0).unwrap();
        feed(
            &mut c,
            t0,
            TID,
            &oack(&[("blksize", "8"), ("windowsize", "8")]),
        );
        for b in 1..=3 {
            feed(&mut c, t0, TID, &data(b, 8));
        }
        assert_eq!(ack_of(c.on_timeout(t0 + Duration::from_secs(1))), Some(3));
        let s = feed(&mut c, t0, TID, &[0, 4, 0, 1]);
        assert_eq!(
            s.status,
            Status::Failed,
            "an ACK from the server is illegal"
        );
    }
}
