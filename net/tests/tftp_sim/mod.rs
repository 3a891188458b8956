//! An in-memory network with a virtual clock for the TFTP server, with clients driven by
//! the library's own sans-IO [`TftpClient`], shared by the `tftp_*` tests: every lossy
//! transfer here proves the server and the client together.
//!
//! The network delivers datagrams after a base delay plus seeded random jitter (which
//! reorders them), and may drop or duplicate each one, in both directions. Time only moves
//! when the next event (a delivery, the server's deadline, a client's deadline) is due, so
//! a transfer with hundreds of timeouts runs in milliseconds.
#![allow(dead_code, unreachable_pub)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ironboot_net::files::FileSet;
use ironboot_net::service::{DatagramService, RecvMeta, SendMeta, TxQueue};
use ironboot_net::tftp::client::{
    Accepted, ClientError, ClientOptions, Status, TftpClient, TransferMode,
};
use ironboot_net::tftp::{TftpConfig, TftpCounters, TftpServer};
use ironboot_net::wire::tftp::{
    ErrorCode, Mode, Opcode, OptionWriter, Repr, write_ack, write_error,
};

/// The server's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The request port.
pub const REQUEST_PORT: u16 = 69;
/// The default transfer port pool.
pub const POOL: [u16; 4] = [40001, 40002, 40003, 40004];

/// Deterministic file contents: not all zeros, not periodic in the block size.
pub fn content(len: usize, seed: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    Bytes::from((0..len).map(|_| rng.u8(..)).collect::<Vec<_>>())
}

/// A server with `files`, the pool ports of [`POOL`] (unless single-port).
pub fn server(config: TftpConfig, files: FileSet) -> (TftpServer, Arc<TftpCounters>) {
    let counters = Arc::new(TftpCounters::default());
    let server = TftpServer::new(config, Arc::new(files), &POOL, Arc::clone(&counters))
        .expect("valid test configuration");
    (server, counters)
}

/// The test configuration: defaults on port 69.
pub fn config() -> TftpConfig {
    TftpConfig {
        port: REQUEST_PORT,
        ..TftpConfig::default()
    }
}

/// An RRQ (or another request opcode) with options.
pub fn request(opcode: Opcode, filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let mut w = OptionWriter::request(&mut buf, opcode, filename, mode).expect("fits");
    for (name, value) in options {
        w.option(name, value).expect("fits");
    }
    let len = w.finish();
    buf.truncate(len);
    buf
}

/// An RRQ in octet mode.
pub fn rrq(filename: &str, options: &[(&str, &str)]) -> Vec<u8> {
    request(Opcode::Rrq, filename, "octet", options)
}

/// An ACK.
pub fn ack(block: u16) -> Vec<u8> {
    let mut buf = vec![0u8; 4];
    write_ack(&mut buf, block).expect("fits");
    buf
}

/// An ERROR.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 4 + message.len() + 1];
    let n = write_error(&mut buf, code, message).expect("fits");
    buf.truncate(n);
    buf
}

/// One datagram the server sent: where to, from which port, and its bytes (header and
/// body joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub meta: SendMeta,
    pub bytes: Vec<u8>,
}

impl Sent {
    pub fn repr(&self) -> Repr<'_> {
        Repr::parse_bytes(&self.bytes).unwrap_or_else(|e| {
            panic!("server sent an unparsable datagram ({e}): {:?}", self.bytes)
        })
    }

    /// The (code, message) of an ERROR, or a panic.
    pub fn error(&self) -> (ErrorCode, String) {
        match self.repr() {
            Repr::Error { code, message } => (code, message.to_owned()),
            other => panic!("expected ERROR, got {other:?}"),
        }
    }

    /// The options of an OACK, lower-cased names, or a panic.
    pub fn oack(&self) -> Vec<(String, String)> {
        match self.repr() {
            Repr::Oack { options } => options
                .iter()
                .map(|o| (o.name.to_ascii_lowercase(), o.value.to_owned()))
                .collect(),
            other => panic!("expected OACK, got {other:?}"),
        }
    }

    /// The block number and payload length of a DATA, or a panic.
    pub fn data(&self) -> (u16, usize) {
        match self.repr() {
            Repr::Data { block, data } => (block, data.len()),
            other => panic!("expected DATA, got {other:?}"),
        }
    }
}

/// Empty `tx` into a list.
pub fn drain(tx: &mut TxQueue) -> Vec<Sent> {
    let out = tx
        .iter()
        .map(|(meta, header, body)| {
            let mut bytes = header.to_vec();
            if let Some(body) = body {
                bytes.extend_from_slice(body);
            }
            Sent { meta: *meta, bytes }
        })
        .collect();
    tx.clear();
    out
}

/// Drive a server by hand, one datagram or timeout at a time.
pub struct Driver {
    pub server: TftpServer,
    pub counters: Arc<TftpCounters>,
    pub now: Instant,
    pub tx: TxQueue,
}

impl Driver {
    pub fn new(config: TftpConfig, files: FileSet) -> Self {
        let (server, counters) = server(config, files);
        let tx = TxQueue::with_capacity(server.max_sends_per_event().max(64));
        Driver {
            server,
            counters,
            now: Instant::now(),
            tx,
        }
    }

    /// Deliver `data` from `src` to the server's `port`; what it sent back.
    pub fn send(&mut self, src: SocketAddrV4, port: u16, data: &[u8]) -> Vec<Sent> {
        let meta = RecvMeta {
            src,
            local_addr: SERVER_IP,
            local_port: port,
            ifindex: 1,
        };
        self.server.on_datagram(self.now, data, &meta, &mut self.tx);
        drain(&mut self.tx)
    }

    /// Run a whole transfer on a perfect network with a [`TftpClient`] asking for what
    /// `request` asks (the request itself is sent as given): every reply must come from
    /// the transfer's port to `client`, each window must end in exactly one ACK, and the
    /// server must send nothing after the last one. Returns the OACK options (lower-case
    /// names) if there was one, and the bytes received; panics if the client fails.
    pub fn fetch(
        &mut self,
        client: SocketAddrV4,
        request: &[u8],
    ) -> (Option<Vec<(String, String)>>, Vec<u8>) {
        let server = SocketAddrV4::new(SERVER_IP, REQUEST_PORT);
        let mut tftp =
            TftpClient::new(server, options_of(request), self.now).expect("request fits");
        let first = self.send(client, REQUEST_PORT, request);
        assert_eq!(first.len(), 1, "one reply to a request: {first:?}");
        let port = first[0].meta.local_port;
        let oack = matches!(first[0].repr(), Repr::Oack { .. }).then(|| first[0].oack());
        let tid = SocketAddrV4::new(SERVER_IP, port);
        let mut data = Vec::new();
        let mut window = first;
        loop {
            assert!(!window.is_empty(), "the server stalled");
            let mut answer = None;
            for s in &window {
                assert_eq!(
                    s.meta.local_port, port,
                    "every block from the transfer's port"
                );
                assert_eq!(s.meta.dst, client);
                assert!(answer.is_none(), "a datagram after the window's ACK");
                let step = tftp.on_datagram(self.now, tid, &s.bytes);
                assert_eq!(step.offset, data.len() as u64);
                data.extend_from_slice(step.data);
                answer = step.transmit.map(|t| {
                    assert_eq!(t.dst, tid);
                    t.bytes.to_vec()
                });
            }
            assert_ne!(tftp.status(), Status::Failed, "{:?}", tftp.error());
            let answer = answer.expect("the window ended without an ACK");
            let next = self.send(client, port, &answer);
            if tftp.status() == Status::Done {
                assert!(next.is_empty(), "nothing after the last block's ACK");
                return (oack, data);
            }
            window = next;
        }
    }

    /// Move the clock by `d` and run every timer due; what the server sent.
    pub fn advance(&mut self, d: Duration) -> Vec<Sent> {
        self.now += d;
        let mut out = Vec::new();
        while self.server.next_timeout().is_some_and(|t| t <= self.now) {
            self.server.on_timeout(self.now, &mut self.tx);
            out.extend(drain(&mut self.tx));
        }
        out
    }
}

/// What can go wrong on the wire, per datagram and direction.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability of a datagram being lost.
    pub loss: f64,
    /// Probability of a datagram arriving twice.
    pub dup: f64,
    /// Largest extra random delay; anything above zero reorders datagrams sent together.
    pub jitter: Duration,
}

impl Faults {
    pub const NONE: Faults = Faults {
        loss: 0.0,
        dup: 0.0,
        jitter: Duration::ZERO,
    };
}

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub filename: String,
    pub mode: &'static str,
    pub options: Vec<(String, String)>,
    /// What the delivered bytes must be.
    pub expect: Bytes,
}

impl Ask {
    pub fn octet(filename: &str, options: &[(&str, &str)], expect: Bytes) -> Self {
        Ask {
            filename: filename.to_owned(),
            mode: "octet",
            options: options
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            expect,
        }
    }
}

/// What a client asks for, as library options (the request carries them in this order).
pub fn options_of_ask(ask: &Ask) -> ClientOptions {
    let mode = match Mode::parse(ask.mode) {
        Mode::Netascii => TransferMode::Netascii,
        _ => TransferMode::Octet,
    };
    ask.options.iter().fold(
        ClientOptions::new(ask.filename.as_str()).mode(mode),
        |o, (name, value)| o.option(name.as_str(), value.as_str()),
    )
}

/// The options of a request's bytes, as library options.
pub fn options_of(request: &[u8]) -> ClientOptions {
    let Ok(Repr::Rrq(r)) = Repr::parse_bytes(request) else {
        panic!("not an RRQ: {request:?}");
    };
    let mode = match r.mode() {
        Mode::Netascii => TransferMode::Netascii,
        _ => TransferMode::Octet,
    };
    r.options
        .iter()
        .fold(ClientOptions::new(r.filename).mode(mode), |o, opt| {
            o.option(opt.name, opt.value)
        })
}

/// How a client's transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still going.
    Running,
    /// Received the last block and acknowledged it.
    Done,
    /// The server sent ERROR.
    Error(ErrorCode, String),
    /// The client gave up after its own retries.
    GaveUp,
    /// The server broke the protocol (the client's check, as text).
    Violation(String),
}

/// One simulated machine: a [`TftpClient`] plus what it received, kept in the fields the
/// tests read.
#[derive(Debug)]
pub struct Client {
    pub addr: SocketAddrV4,
    pub ask: Ask,
    pub tftp: TftpClient,
    pub server_tid: Option<SocketAddrV4>,
    pub oack: Option<Accepted>,
    pub data: Vec<u8>,
    pub outcome: Outcome,
    pub deadline: Instant,
    /// Blocks accepted in order.
    pub blocks_seen: u64,
}

/// The client's retransmission interval: longer than the server's, as real firmware's is.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);
/// The client's retransmissions before it gives up.
pub const CLIENT_RETRIES: u32 = 40;

impl Client {
    pub fn new(addr: SocketAddrV4, ask: Ask, now: Instant) -> Self {
        let options = options_of_ask(&ask)
            .retransmit(CLIENT_TIMEOUT)
            .retries(CLIENT_RETRIES);
        let server = SocketAddrV4::new(SERVER_IP, REQUEST_PORT);
        let tftp = TftpClient::new(server, options, now).expect("request fits");
        let mut c = Client {
            addr,
            ask,
            tftp,
            server_tid: None,
            oack: None,
            data: Vec::new(),
            outcome: Outcome::Running,
            deadline: now,
            blocks_seen: 0,
        };
        c.sync();
        c
    }

    /// The first datagram: the request, to the request port.
    pub fn start(&self) -> (SocketAddrV4, Vec<u8>) {
        let t = self.tftp.request();
        (t.dst, t.bytes.to_vec())
    }

    /// Copy the client's state into the fields the tests read.
    fn sync(&mut self) {
        self.server_tid = self.tftp.server_tid();
        self.oack = self.tftp.accepted();
        self.blocks_seen = self.tftp.blocks_received();
        // Finished clients never wake again.
        self.deadline = self
            .tftp
            .deadline()
            .unwrap_or(self.deadline + Duration::from_secs(365 * 24 * 3600));
        self.outcome = match (self.tftp.status(), self.tftp.error()) {
            (Status::Running, _) => Outcome::Running,
            (Status::Done, _) => Outcome::Done,
            (Status::Failed, Some(ClientError::Server { code, message })) => {
                Outcome::Error(*code, message.clone())
            }
            (Status::Failed, Some(ClientError::Timeout { .. })) => Outcome::GaveUp,
            (Status::Failed, e) => Outcome::Violation(format!("{e:?}")),
        };
    }

    /// Handle a datagram from `src`; returns what to send.
    pub fn on_datagram(
        &mut self,
        src: SocketAddrV4,
        bytes: &[u8],
        now: Instant,
    ) -> Vec<(SocketAddrV4, Vec<u8>)> {
        assert_eq!(*src.ip(), SERVER_IP, "reply from a foreign host");
        let step = self.tftp.on_datagram(now, src, bytes);
        assert_eq!(step.offset, self.data.len() as u64, "data out of order");
        self.data.extend_from_slice(step.data);
        let out = step
            .transmit
            .map(|t| vec![(t.dst, t.bytes.to_vec())])
            .unwrap_or_default();
        self.sync();
        out
    }

    /// The client's own timer: retransmit (the request before any reply, else an ACK of
    /// the last block received in order).
    pub fn on_timeout(&mut self, now: Instant) -> Vec<(SocketAddrV4, Vec<u8>)> {
        let out = self
            .tftp
            .on_timeout(now)
            .map(|t| vec![(t.dst, t.bytes.to_vec())])
            .unwrap_or_default();
        self.sync();
        out
    }

    /// Blocks of the file at the negotiated size (what the server must send at least).
    pub fn blocks_needed(&self) -> u64 {
        self.ask.expect.len() as u64 / u64::from(self.tftp.blksize()) + 1
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    bytes: Vec<u8>,
}

/// Per-client bookkeeping of the Sorcerer's Apprentice check.
#[derive(Debug, Default)]
struct AckLog {
    /// ACK number -> index (in accepted ACKs) of the last one that made the server send.
    accepted: HashMap<u16, u64>,
    count: u64,
}

/// The whole simulation: server, clients, network, clock.
pub struct Sim {
    pub server: TftpServer,
    pub counters: Arc<TftpCounters>,
    pub now: Instant,
    pub clients: Vec<Client>,
    by_addr: HashMap<SocketAddrV4, usize>,
    rng: fastrand::Rng,
    pub faults: Faults,
    pub base_delay: Duration,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    tx: TxQueue,
    acks: HashMap<SocketAddrV4, AckLog>,
    /// No client deadline is earlier than this. Client deadlines only move later, so it
    /// is recomputed only when it comes due, not on every event.
    client_wake: Option<Instant>,
    /// DATA datagrams the server sent, all clients.
    pub data_sent: u64,
    /// Datagrams the server sent, all kinds.
    pub server_sent: u64,
}

impl Sim {
    pub fn new(server: TftpServer, counters: Arc<TftpCounters>, faults: Faults, seed: u64) -> Self {
        let tx = TxQueue::with_capacity(server.max_sends_per_event().max(64));
        Sim {
            server,
            counters,
            now: Instant::now(),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            faults,
            base_delay: Duration::from_micros(500),
            queue: BinaryHeap::new(),
            seq: 0,
            tx,
            acks: HashMap::new(),
            client_wake: None,
            data_sent: 0,
            server_sent: 0,
        }
    }

    /// Add a client that sends its request now.
    pub fn add_client(&mut self, addr: SocketAddrV4, ask: Ask) -> usize {
        let client = Client::new(addr, ask, self.now);
        self.client_wake = Some(
            self.client_wake
                .map_or(client.deadline, |w| w.min(client.deadline)),
        );
        let (dst, bytes) = client.start();
        self.clients.push(client);
        let i = self.clients.len() - 1;
        self.by_addr.insert(addr, i);
        self.transmit(addr, dst, bytes);
        i
    }

    /// Put a datagram from `src` to the server's request port on the wire now, as a host
    /// forging its source address would: replies to `src` go nowhere unless a client of
    /// the simulation has that address.
    pub fn inject(&mut self, src: SocketAddrV4, bytes: Vec<u8>) {
        self.transmit(src, SocketAddrV4::new(SERVER_IP, REQUEST_PORT), bytes);
    }

    /// Put a datagram on the wire, through the faults.
    fn transmit(&mut self, src: SocketAddrV4, dst: SocketAddrV4, bytes: Vec<u8>) {
        if self.rng.f64() < self.faults.loss {
            return;
        }
        let copies = if self.rng.f64() < self.faults.dup {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = self.faults.jitter.mul_f64(self.rng.f64());
            self.seq += 1;
            self.queue.push(Reverse(InFlight {
                at: self.now + self.base_delay + jitter,
                seq: self.seq,
                src,
                dst,
                bytes: bytes.clone(),
            }));
        }
    }

    /// Send what the server queued, checking each datagram.
    fn flush_server(&mut self) -> u64 {
        let mut data = 0;
        for sent in drain(&mut self.tx) {
            let repr = sent.repr();
            if let Repr::Data { .. } = repr {
                data += 1;
            }
            self.server_sent += 1;
            let src_ip = sent.meta.src_ip.unwrap_or(SERVER_IP);
            assert_eq!(src_ip, SERVER_IP, "reply from the wrong address");
            let src = SocketAddrV4::new(src_ip, sent.meta.local_port);
            self.transmit(src, sent.meta.dst, sent.bytes);
        }
        self.data_sent += data;
        data
    }

    fn deliver(&mut self, d: InFlight) {
        if *d.dst.ip() == SERVER_IP {
            let meta = RecvMeta {
                src: d.src,
                local_addr: SERVER_IP,
                local_port: d.dst.port(),
                ifindex: 1,
            };
            self.server
                .on_datagram(self.now, &d.bytes, &meta, &mut self.tx);
            let data = self.flush_server();
            self.check_ack_response(d.src, &d.bytes, data);
        } else if let Some(&i) = self.by_addr.get(&d.dst) {
            let replies = self.clients[i].on_datagram(d.src, &d.bytes, self.now);
            for (dst, bytes) in replies {
                self.transmit(d.dst, dst, bytes);
            }
        }
    }

    /// No retransmission burst on a duplicate ACK: an ACK number that recently made the
    /// server send must not make it send again.
    fn check_ack_response(&mut self, src: SocketAddrV4, bytes: &[u8], data: u64) {
        let Ok(Repr::Ack { block }) = Repr::parse_bytes(bytes) else {
            return;
        };
        if block == 0 {
            // ACK 0 answers an OACK; a replaced transfer legitimately takes it again.
            return;
        }
        let log = self.acks.entry(src).or_default();
        if let Some(&at) = log.accepted.get(&block) {
            if log.count - at < 512 {
                assert_eq!(
                    data, 0,
                    "duplicate ACK {block} from {src} made the server send {data} DATA"
                );
                return;
            }
        }
        if data > 0 {
            log.count += 1;
            log.accepted.insert(block, log.count);
        }
    }

    /// The next event's time.
    fn next_event(&self) -> Option<Instant> {
        let net = self.queue.peek().map(|Reverse(d)| d.at);
        let server = self.server.next_timeout();
        [net, server, self.client_wake].into_iter().flatten().min()
    }

    /// Run until nothing is left to happen or `limit` of virtual time passed.
    pub fn run(&mut self, limit: Duration) {
        let end = self.now + limit;
        while let Some(at) = self.next_event() {
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            if self.queue.peek().is_some_and(|Reverse(d)| d.at <= self.now) {
                let Reverse(d) = self.queue.pop().expect("peeked");
                self.deliver(d);
                continue;
            }
            if self.server.next_timeout().is_some_and(|t| t <= self.now) {
                self.server.on_timeout(self.now, &mut self.tx);
                self.flush_server();
                continue;
            }
            for i in 0..self.clients.len() {
                if self.clients[i].outcome == Outcome::Running
                    && self.clients[i].deadline <= self.now
                {
                    let from = self.clients[i].addr;
                    for (dst, bytes) in self.clients[i].on_timeout(self.now) {
                        self.transmit(from, dst, bytes);
                    }
                }
            }
            self.client_wake = self
                .clients
                .iter()
                .filter(|c| c.outcome == Outcome::Running)
                .map(|c| c.deadline)
                .min();
        }
    }
}
