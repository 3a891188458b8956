//! An in-memory network with a virtual clock for the TFTP server, and an RFC-conformant
//! client model, shared by the `tftp_*` tests.
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
use ironboot_net::tftp::{TftpConfig, TftpCounters, TftpServer};
use ironboot_net::udp::{DatagramService, RecvMeta, SendMeta, TxQueue};
use ironboot_net::wire::tftp::{
    ErrorCode, Opcode, OptionWriter, Packet, Repr, write_ack, write_error,
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

    /// Run a whole transfer on a perfect network: send `request` from `client`, ACK 0 an
    /// OACK, ACK the last block of every window. Returns the OACK options (lower-case
    /// names) if there was one, and the bytes received; panics on an ERROR.
    pub fn fetch(
        &mut self,
        client: SocketAddrV4,
        request: &[u8],
    ) -> (Option<Vec<(String, String)>>, Vec<u8>) {
        let first = self.send(client, REQUEST_PORT, request);
        assert_eq!(first.len(), 1, "one reply to a request: {first:?}");
        let port = first[0].meta.local_port;
        let mut oack = None;
        let mut blksize = 512;
        let mut window = first.clone();
        if let Repr::Oack { .. } = first[0].repr() {
            let options = first[0].oack();
            if let Some((_, v)) = options.iter().find(|(n, _)| n == "blksize") {
                blksize = v.parse().unwrap();
            }
            oack = Some(options);
            window = self.send(client, port, &ack(0));
        }
        let mut data = Vec::new();
        loop {
            assert!(!window.is_empty(), "the server stalled");
            let mut last = (0, 0);
            for s in &window {
                assert_eq!(
                    s.meta.local_port, port,
                    "every block from the transfer's port"
                );
                assert_eq!(s.meta.dst, client);
                last = s.data();
                data.extend_from_slice(&s.bytes[4..]);
            }
            let (block, len) = last;
            let next = self.send(client, port, &ack(block));
            if len < blksize {
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
}

/// An RFC 1350 / 2347 / 7440 client: locks onto the server's TID from the first reply,
/// acknowledges each full window and the last block, answers a gap with an ACK of the last
/// block received in order and a repeat of an acknowledged block with that ACK again,
/// retransmits its last packet when nothing arrives for a while, and dallies after the
/// last block (re-acknowledging it).
#[derive(Debug)]
pub struct Client {
    pub addr: SocketAddrV4,
    pub ask: Ask,
    request: Vec<u8>,
    pub server_tid: Option<SocketAddrV4>,
    pub oack: Option<Vec<(String, String)>>,
    blksize: usize,
    windowsize: u64,
    /// Blocks received in order (absolute count).
    received_blocks: u64,
    in_window: u64,
    /// The last ACK sent.
    last_ack: Option<u16>,
    pub data: Vec<u8>,
    pub outcome: Outcome,
    last_sent: Vec<u8>,
    pub deadline: Instant,
    retries: u32,
    /// Payload lengths of every DATA accepted, for checks.
    pub blocks_seen: u64,
}

/// The client's retransmission interval: longer than the server's, as real firmware's is.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);
/// The client's retransmissions before it gives up.
pub const CLIENT_RETRIES: u32 = 40;

impl Client {
    pub fn new(addr: SocketAddrV4, ask: Ask, now: Instant) -> Self {
        let opts: Vec<(&str, &str)> = ask
            .options
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let request = request(Opcode::Rrq, &ask.filename, ask.mode, &opts);
        Client {
            addr,
            ask,
            last_sent: request.clone(),
            request,
            server_tid: None,
            oack: None,
            blksize: 512,
            windowsize: 1,
            received_blocks: 0,
            in_window: 0,
            last_ack: None,
            data: Vec::new(),
            outcome: Outcome::Running,
            deadline: now + CLIENT_TIMEOUT,
            retries: 0,
            blocks_seen: 0,
        }
    }

    /// The first datagram: the request, to the request port.
    pub fn start(&self) -> (SocketAddrV4, Vec<u8>) {
        (
            SocketAddrV4::new(SERVER_IP, REQUEST_PORT),
            self.request.clone(),
        )
    }

    fn reply(&mut self, bytes: Vec<u8>, now: Instant) -> Vec<(SocketAddrV4, Vec<u8>)> {
        if let Ok(Repr::Ack { block }) = Repr::parse_bytes(&bytes) {
            self.last_ack = Some(block);
        }
        self.last_sent.clone_from(&bytes);
        self.deadline = now + CLIENT_TIMEOUT;
        self.retries = 0;
        vec![(self.server_tid.expect("locked"), bytes)]
    }

    /// Handle a datagram from `src`; returns what to send.
    pub fn on_datagram(
        &mut self,
        src: SocketAddrV4,
        bytes: &[u8],
        now: Instant,
    ) -> Vec<(SocketAddrV4, Vec<u8>)> {
        if matches!(self.outcome, Outcome::Error(..) | Outcome::GaveUp) {
            return Vec::new();
        }
        if self.outcome == Outcome::Done && Packet::new_unchecked(bytes).opcode() != Opcode::Data {
            // Finished: only a repeated last block matters (its ACK was lost). The server
            // may answer our dallying ACKs with ERROR 5 once it has let go; that is fine.
            return Vec::new();
        }
        match self.server_tid {
            None => {
                assert_eq!(*src.ip(), SERVER_IP, "reply from a foreign host");
                self.server_tid = Some(src);
            }
            Some(tid) if tid != src => {
                // RFC 1350: a packet from a foreign TID gets ERROR 5; the transfer goes on.
                return vec![(src, error(ErrorCode::UnknownTransferId, "unknown TID"))];
            }
            Some(_) => {}
        }
        let repr = Repr::parse_bytes(bytes)
            .unwrap_or_else(|e| panic!("client got an unparsable datagram ({e}): {bytes:?}"));
        match repr {
            Repr::Oack { options } => {
                if self.received_blocks > 0 || self.outcome == Outcome::Done {
                    return Vec::new();
                }
                let mut got = Vec::new();
                for o in options {
                    let asked = self
                        .ask
                        .options
                        .iter()
                        .any(|(n, _)| n.eq_ignore_ascii_case(o.name));
                    assert!(asked, "OACK carries unrequested option {:?}", o.name);
                    let name = o.name.to_ascii_lowercase();
                    assert!(
                        !got.iter().any(|(n, _): &(String, String)| *n == name),
                        "OACK repeats {name}"
                    );
                    let value: u64 = o.value.parse().expect("numeric OACK value");
                    match name.as_str() {
                        "blksize" => self.blksize = value as usize,
                        "windowsize" => self.windowsize = value,
                        _ => {}
                    }
                    got.push((name, o.value.to_owned()));
                }
                self.oack = Some(got);
                self.reply(ack(0), now)
            }
            Repr::Data { block, data } => {
                if self.outcome == Outcome::Done {
                    // Dallying: the last ACK was lost, say so again.
                    return self.reply(ack(self.received_blocks as u16), now);
                }
                let expected = (self.received_blocks + 1) as u16;
                if block != expected {
                    let ahead = block.wrapping_sub(expected);
                    if ahead < 0x8000 {
                        // A gap: ACK the last block received in order, so the server
                        // restarts the window there (RFC 7440).
                        self.in_window = 0;
                        return self.reply(ack(self.received_blocks as u16), now);
                    }
                    // An old block. If it is one we acknowledged, that ACK was lost (the
                    // server timed out and resent): say it again. Other old blocks are
                    // network duplicates; acknowledging them would make the server
                    // restart a window that is arriving fine.
                    if self.last_ack == Some(block) {
                        return self.reply(ack(block), now);
                    }
                    return Vec::new();
                }
                assert!(
                    data.len() <= self.blksize,
                    "block of {} bytes over blksize {}",
                    data.len(),
                    self.blksize
                );
                self.data.extend_from_slice(data);
                self.received_blocks += 1;
                self.blocks_seen += 1;
                self.in_window += 1;
                if data.len() < self.blksize {
                    self.outcome = Outcome::Done;
                    return self.reply(ack(block), now);
                }
                if self.in_window == self.windowsize {
                    self.in_window = 0;
                    return self.reply(ack(block), now);
                }
                self.deadline = now + CLIENT_TIMEOUT;
                Vec::new()
            }
            Repr::Error { code, message } => {
                self.outcome = Outcome::Error(code, message.to_owned());
                Vec::new()
            }
            other => panic!("client got {other:?}"),
        }
    }

    /// The client's own timer: retransmit the last packet (RRQ before any reply).
    pub fn on_timeout(&mut self, now: Instant) -> Vec<(SocketAddrV4, Vec<u8>)> {
        if self.outcome != Outcome::Running {
            self.deadline = now + Duration::from_secs(3600);
            return Vec::new();
        }
        self.retries += 1;
        if self.retries > CLIENT_RETRIES {
            self.outcome = Outcome::GaveUp;
            return Vec::new();
        }
        self.deadline = now + CLIENT_TIMEOUT;
        let dst = self
            .server_tid
            .unwrap_or(SocketAddrV4::new(SERVER_IP, REQUEST_PORT));
        vec![(dst, self.last_sent.clone())]
    }

    /// Blocks of the file at the negotiated size (what the server must send at least).
    pub fn blocks_needed(&self) -> u64 {
        self.ask.expect.len() as u64 / self.blksize as u64 + 1
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
