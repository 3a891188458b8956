//! The property check behind the `tftp` fuzz target, shared with the stable test that
//! replays its corpus (`net/tests/tftp_fuzz_corpus.rs`).
//!
//! An input is a configuration byte and then a sequence of operations: datagrams from
//! four clients to the request port, the pool ports or a foreign port (raw bytes, or
//! well-formed requests, ACKs and ERRORs built from a few bytes so the fuzzer reaches deep
//! into transfers quickly), and steps of virtual time. After every step the server's
//! output is checked against a reference model, and at the end time runs on until every
//! retry is spent.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::counters::TransferFailure;
use super::{TftpConfig, TftpCounters, TftpServer, netascii};
use crate::files::FileSet;
use crate::service::{DatagramService, RecvMeta, SendMeta, TxQueue};
use crate::wire::tftp::{ErrorCode, Mode, Opcode, OptionWriter, Repr, write_ack, write_error};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const REQUEST_PORT: u16 = 69;
const POOL: [u16; 2] = [50001, 50002];
/// Ports a datagram can be sent to, by two selector bits: the request port twice (it is
/// where most traffic starts), a pool port, and a port the server does not serve.
const PORTS: [u16; 4] = [REQUEST_PORT, REQUEST_PORT, POOL[0], 4011];
/// Two hosts with two ports each, so per-IP limits and same-host TIDs are reachable.
const CLIENTS: [SocketAddrV4; 4] = [
    SocketAddrV4::new(Ipv4Addr::new(10, 9, 1, 1), 2001),
    SocketAddrV4::new(Ipv4Addr::new(10, 9, 1, 1), 2002),
    SocketAddrV4::new(Ipv4Addr::new(10, 9, 1, 2), 2001),
    SocketAddrV4::new(Ipv4Addr::new(10, 9, 1, 2), 2002),
];
/// Names a structured request can ask for: served files, a missing one, refused ones.
const NAMES: [&str; 8] = ["a", "b", "c", "d/e", "missing", "../c", "/d/e", ""];
const MODES: [&str; 4] = ["octet", "netascii", "NETASCII", "mail"];
/// At most this many operations per input, so one input cannot run for long.
const MAX_OPS: usize = 256;

/// The served files (small: no transfer needs more than a few hundred blocks).
static FILES: LazyLock<Arc<FileSet>> = LazyLock::new(|| {
    let mut files = FileSet::new();
    let text: Vec<u8> = (0..600u32)
        .map(|i| match i % 13 {
            0 => b'\n',
            7 => b'\r',
            _ => b'a' + (i % 26) as u8,
        })
        .collect();
    let blob: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    let inserted = [
        files.insert("a", Bytes::new()),
        files.insert("b", Bytes::from_static(b"\n")),
        files.insert("c", Bytes::from(text)),
        files.insert("d/e", Bytes::from(blob)),
    ];
    assert!(inserted.iter().all(Result::is_ok));
    Arc::new(files)
});

/// The configuration an input selects with its first byte.
///
/// Bit 0: single-port mode; bits 1-2: max window 1/3/8/64; bits 3-4: max block size
/// 512/8/1468/100; bit 5: 0 or 2 retries; bits 6-7: at most 1/2/4/64 transfers, with at
/// most 1/2/1/2 per client IP and 2/1/3/64 requests waiting for their first ACK.
fn config(s: u8) -> TftpConfig {
    let bits = |shift: u8, mask: u8| usize::from((s >> shift) & mask);
    TftpConfig {
        port: REQUEST_PORT,
        single_port: bits(0, 1) == 1,
        max_windowsize: [1, 3, 8, 64][bits(1, 3)],
        max_blksize: [512, 8, 1468, 100][bits(3, 3)],
        retries: [0, 2][bits(5, 1)],
        max_transfers: [1, 2, 4, 64][bits(6, 3)],
        max_per_client: [1, 2, 1, 2][bits(6, 3)],
        max_pending: [2, 1, 3, 64][bits(6, 3)],
        default_timeout: Duration::from_millis(500),
        max_timeout_secs: super::DEFAULT_MAX_TIMEOUT_SECS,
    }
}

/// Bytes of the input, read front to back; zeros once exhausted.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// What the reference model expects a client to receive.
#[derive(Debug, Clone)]
struct Expect {
    content: Bytes,
    blksize: usize,
    /// Option names the request carried (lower case).
    asked: Vec<String>,
}

/// What the checker knows of each client.
#[derive(Debug, Default, Clone)]
struct ClientState {
    /// The last request sent to the request port.
    request: Option<Vec<u8>>,
    expect: Option<Expect>,
    /// Port and block of the last DATA sent to it.
    last_data: Option<(u16, u16)>,
    /// Port the last OACK came from.
    oack_port: Option<u16>,
}

struct Harness {
    /// Scratch space for joining headers and bodies, and for re-emitting.
    joined: Vec<u8>,
    emitted: Vec<u8>,
    server: TftpServer,
    counters: Arc<TftpCounters>,
    config: TftpConfig,
    tx: TxQueue,
    now: Instant,
    clients: HashMap<SocketAddrV4, ClientState>,
}

/// The content a request for `name` in `mode` must deliver, if the file is served.
fn expected_content(name: &str, mode: Mode) -> Option<Bytes> {
    let file = FILES.get(name).ok()??.clone();
    match mode {
        Mode::Octet => Some(file),
        Mode::Netascii => Some(Bytes::from(netascii::encode(&file))),
        Mode::Mail | Mode::Unknown => None,
    }
}

impl Harness {
    fn new(selector: u8) -> Self {
        let config = config(selector);
        let counters = Arc::new(TftpCounters::default());
        let server = TftpServer::new(
            config.clone(),
            Arc::clone(&FILES),
            &POOL,
            Arc::clone(&counters),
        )
        .unwrap_or_else(|e| panic!("fuzz configuration refused: {e}"))
        // Port picks are random in service; an input must replay the same way.
        .with_port_seed(u64::from(selector));
        let tx = TxQueue::with_capacity(server.max_sends_per_event());
        Harness {
            joined: Vec::new(),
            emitted: Vec::new(),
            server,
            counters,
            config,
            tx,
            now: Instant::now(),
            clients: CLIENTS
                .iter()
                .map(|&c| (c, ClientState::default()))
                .collect(),
        }
    }

    /// Deliver `data` from client `c` to `port`, then check what came out.
    fn send(&mut self, c: SocketAddrV4, port: u16, data: &[u8]) {
        if let Ok(repr) = Repr::parse_bytes(data) {
            check_round_trip(&repr, data.len(), &mut self.emitted);
            if let (Repr::Rrq(r), REQUEST_PORT) = (repr, port) {
                let state = self.clients.entry(c).or_default();
                // The server may take a repeat of the last request as a retransmission
                // and carry on, with the block size its OACK set; a repeat negotiates the
                // same anyway, so only a different request resets the model.
                if state.request.as_deref() != Some(data) {
                    state.request = Some(data.to_vec());
                    state.expect = expected_content(r.filename, r.mode()).map(|content| Expect {
                        content,
                        blksize: 512,
                        asked: r
                            .options
                            .iter()
                            .map(|o| o.name.to_ascii_lowercase())
                            .collect(),
                    });
                    state.last_data = None;
                    state.oack_port = None;
                }
            }
        }
        let active_before = self.server.active_transfers() + self.server.pending_requests();
        let meta = RecvMeta {
            src: c,
            local_addr: SERVER,
            local_port: port,
            ifindex: 1,
        };
        self.server.on_datagram(self.now, data, &meta, &mut self.tx);
        let sent = self.drain();
        if port != REQUEST_PORT
            && sent
                .iter()
                .any(|(_, code)| *code == Some(ErrorCode::UnknownTransferId))
        {
            assert_eq!(
                self.server.active_transfers() + self.server.pending_requests(),
                active_before,
                "an unknown TID disturbed a transfer"
            );
        }
        self.check_limits();
    }

    /// Run the timers due now.
    fn expire(&mut self) {
        let mut rounds = 0;
        while self.server.next_timeout().is_some_and(|t| t <= self.now) {
            self.server.on_timeout(self.now, &mut self.tx);
            self.drain();
            self.check_limits();
            rounds += 1;
            assert!(rounds < 10_000, "timers keep firing at one instant");
        }
    }

    /// Check and forget everything the server queued; returns (destination, ERROR code).
    fn drain(&mut self) -> Vec<(SocketAddrV4, Option<ErrorCode>)> {
        let mut out = Vec::new();
        let Harness {
            joined,
            emitted,
            tx,
            clients,
            config,
            ..
        } = self;
        for (meta, header, body) in tx.iter() {
            joined.clear();
            joined.extend_from_slice(header);
            joined.extend_from_slice(body.map_or(&[][..], |b| &b[..]));
            let repr = Repr::parse_bytes(joined)
                .unwrap_or_else(|e| panic!("the server sent an unparsable datagram: {e}"));
            check_round_trip(&repr, joined.len(), emitted);
            let code = match repr {
                Repr::Error { code, .. } => Some(code),
                _ => None,
            };
            check_sent(config, clients, meta, &repr);
            out.push((meta.dst, code));
        }
        tx.clear();
        out
    }

    fn check_limits(&self) {
        let active = self.server.active_transfers();
        assert!(active <= self.config.max_transfers, "{active} transfers");
        assert_eq!(self.counters.active(), active as u64, "active gauge");
        for c in CLIENTS {
            assert!(self.server.transfers_of(*c.ip()) <= self.config.max_per_client);
        }
        let pending = self.server.pending_requests();
        assert!(pending <= self.config.max_pending, "{pending} pending");
        assert_eq!(self.counters.pending(), pending as u64, "pending gauge");
        let load: usize = self.server.pool_load().map(|(_, n)| n).sum();
        if !self.config.single_port {
            assert_eq!(
                load,
                active + pending,
                "pool load accounts for every transfer and pending request"
            );
        }
    }

    /// Run time forward until every transfer has ended.
    fn finish(&mut self) {
        let mut rounds = 0;
        while let Some(at) = self.server.next_timeout() {
            self.now = self.now.max(at);
            self.expire();
            rounds += 1;
            assert!(rounds < 100_000, "timers never settle");
        }
        assert_eq!(
            self.server.active_transfers(),
            0,
            "transfers outlive their retries"
        );
        assert_eq!(self.counters.active(), 0);
        assert_eq!(
            self.server.pending_requests(),
            0,
            "requests outlive their resend"
        );
        assert_eq!(self.counters.pending(), 0);
        let ended = self.counters.transfers_completed()
            + TransferFailure::ALL
                .iter()
                .map(|&f| self.counters.transfers_failed(f))
                .sum::<u64>();
        assert_eq!(
            self.counters.transfers_started(),
            ended,
            "every transfer ends once"
        );
    }
}

/// Check one datagram the server sent against the reference model.
fn check_sent(
    config: &TftpConfig,
    clients: &mut HashMap<SocketAddrV4, ClientState>,
    meta: &SendMeta,
    repr: &Repr<'_>,
) {
    assert!(
        clients.contains_key(&meta.dst),
        "sent to a stranger: {meta:?}"
    );
    assert_eq!(meta.src_ip, Some(SERVER), "reply from the address asked");
    let port_ok =
        meta.local_port == REQUEST_PORT || (!config.single_port && POOL.contains(&meta.local_port));
    assert!(port_ok, "sent from port {}: {repr:?}", meta.local_port);
    let single = config.single_port;
    let state = clients.entry(meta.dst).or_default();
    match *repr {
        Repr::Data { block, data } => {
            assert!(
                single || meta.local_port != REQUEST_PORT,
                "DATA from port 69 in pool mode"
            );
            let expect = state
                .expect
                .as_ref()
                .unwrap_or_else(|| panic!("DATA to {} which asked for no served file", meta.dst));
            assert!(
                block >= 1,
                "DATA 0 (no transfer here is long enough to wrap)"
            );
            let start = (usize::from(block) - 1) * expect.blksize;
            assert!(
                start <= expect.content.len(),
                "DATA {block} beyond the end of the file"
            );
            let end = (start + expect.blksize).min(expect.content.len());
            assert!(
                data == &expect.content[start..end],
                "DATA {block} has the wrong bytes"
            );
            state.last_data = Some((meta.local_port, block));
        }
        Repr::Oack { options } => {
            let expect = state.expect.as_mut().expect("OACK for a served file");
            for o in options {
                let name = o.name.to_ascii_lowercase();
                assert!(
                    expect.asked.contains(&name),
                    "OACK names unrequested {name}"
                );
                let value: u64 = o.value.parse().expect("numeric OACK value");
                match name.as_str() {
                    "blksize" => {
                        assert!((8..=u64::from(config.max_blksize)).contains(&value));
                        expect.blksize = value as usize;
                    }
                    "tsize" => assert_eq!(value, expect.content.len() as u64),
                    "windowsize" => {
                        assert!((1..=u64::from(config.max_windowsize)).contains(&value));
                    }
                    "timeout" => assert!((1..=255).contains(&value)),
                    other => panic!("OACK names unknown option {other}"),
                }
            }
            state.oack_port = Some(meta.local_port);
        }
        Repr::Error { .. } => {}
        _ => panic!("the server sent {repr:?}"),
    }
}

/// Emit `repr` again, parse that, and require the same [`Repr`].
fn check_round_trip(repr: &Repr<'_>, received_len: usize, buf: &mut Vec<u8>) {
    let len = repr.buffer_len();
    // Emit drops only NUL padding after a request's mode.
    assert!(
        len <= received_len,
        "emit needs {len} bytes for a {received_len}-byte message"
    );
    buf.resize(len, 0);
    let written = repr
        .emit(&mut buf[..len])
        .unwrap_or_else(|e| panic!("emit of a parsed message failed: {e}"));
    assert_eq!(written, len);
    let again = Repr::parse_bytes(&buf[..len])
        .unwrap_or_else(|e| panic!("emitted message does not parse: {e}"));
    assert_eq!(&again, repr, "parse(emit(repr)) != repr");
}

/// A well-formed (or deliberately damaged) request built from a few input bytes.
fn build_request(r: &mut Reader<'_>, out: &mut [u8; 600]) -> usize {
    let what = r.u8();
    let flags = r.u8();
    let name = NAMES[usize::from(what & 7)];
    let mode = MODES[usize::from((what >> 3) & 3)];
    let opcode = if what >> 5 == 6 {
        Opcode::Wrq
    } else {
        Opcode::Rrq
    };
    let Ok(mut w) = OptionWriter::request(out, opcode, name, mode) else {
        return 0;
    };
    let upper = flags & 0x20 != 0;
    let spell = |n: &'static str| {
        if upper {
            n.to_ascii_uppercase()
        } else {
            n.to_owned()
        }
    };
    let garbage = flags & 0x80 != 0;
    let add = |w: &mut OptionWriter<'_>, n: &'static str, v: u64| {
        let _ = if garbage && v % 3 == 0 {
            w.option(&spell(n), "x1")
        } else {
            w.option_u64(&spell(n), v)
        };
    };
    if flags & 0x01 != 0 {
        add(&mut w, "blksize", u64::from(r.u16()));
    }
    if flags & 0x02 != 0 {
        add(&mut w, "tsize", 0);
    }
    if flags & 0x04 != 0 {
        add(&mut w, "timeout", u64::from(r.u8()) % 4);
    }
    if flags & 0x08 != 0 {
        add(&mut w, "windowsize", u64::from(r.u8()));
    }
    if flags & 0x10 != 0 {
        let _ = w.option("foo", "bar");
    }
    if flags & 0x40 != 0 {
        add(&mut w, "blksize", 512);
    }
    let mut len = w.finish();
    if what >> 5 == 7 {
        // Damage it: cut the last NUL, or pad with NULs.
        if flags & 1 == 0 {
            len -= 1;
        } else if len + 3 <= out.len() {
            out[len..len + 3].fill(0);
            len += 3;
        }
    }
    len
}

/// Run one fuzz input and panic if any property fails. See the module documentation for
/// the input layout; the operation byte's top three bits pick the operation:
/// 0 raw datagram, 1-2 a built request, 3 an ACK of the last block received (or a
/// neighbour of it), 4 an ACK of any number, 5 an ERROR, 6 a small time step, 7 a large
/// one. Checked after every step: every datagram parses and round-trips; DATA carries
/// exactly the right bytes of the right file and never lies beyond its end; an OACK names
/// only requested options with sane values and the true size; replies leave from the
/// request port or a pool port (only the request port in single-port mode); the active
/// count stays within the limits and matches the gauge and the pool load; an unknown TID
/// changes no transfer. At the end, with time run past every retry, no transfer is left
/// and each one ended exactly once.
pub fn check_ops(input: &[u8]) {
    check_ops_counted(input);
}

/// [`check_ops`], returning the server's counters at the end (`None` for an empty input),
/// so tests can tell what an input exercised.
pub fn check_ops_counted(input: &[u8]) -> Option<Arc<TftpCounters>> {
    let (&selector, rest) = input.split_first()?;
    let mut h = Harness::new(selector);
    let mut r = Reader(rest);
    let mut ops = 0;
    while !r.0.is_empty() && ops < MAX_OPS {
        ops += 1;
        let op = r.u8();
        let c = CLIENTS[usize::from(op & 3)];
        let port = PORTS[usize::from((op >> 2) & 3)];
        match op >> 5 {
            0 => {
                let len = usize::from(r.u8() % 80);
                let data = r.bytes(len).to_vec();
                h.send(c, port, &data);
            }
            1 | 2 => {
                let mut buf = [0u8; 600];
                let len = build_request(&mut r, &mut buf);
                h.send(c, port, &buf[..len]);
            }
            3 => {
                let state = h.clients.get(&c).cloned().unwrap_or_default();
                let (tid, block) = match (state.last_data, state.oack_port) {
                    (Some((p, b)), _) => (p, b),
                    (None, Some(p)) => (p, 0),
                    (None, None) => (port, 0),
                };
                let block = match (op >> 4) & 1 {
                    0 => block,
                    _ => block.wrapping_sub(u16::from(r.u8() % 3)),
                };
                let mut buf = [0u8; 4];
                if write_ack(&mut buf, block).is_ok() {
                    h.send(c, tid, &buf);
                }
            }
            4 => {
                let block = r.u16();
                let mut buf = [0u8; 4];
                if write_ack(&mut buf, block).is_ok() {
                    h.send(c, port, &buf);
                }
            }
            5 => {
                let state = h.clients.get(&c).cloned().unwrap_or_default();
                let tid = state
                    .last_data
                    .map(|(p, _)| p)
                    .or(state.oack_port)
                    .unwrap_or(port);
                let mut buf = [0u8; 32];
                if let Ok(n) = write_error(
                    &mut buf,
                    ErrorCode::from(u16::from(r.u8() % 9)),
                    "User aborted",
                ) {
                    h.send(c, tid, &buf[..n]);
                }
            }
            6 => {
                h.now += Duration::from_millis(u64::from(r.u8()) * 4);
                h.expire();
            }
            _ => {
                h.now += Duration::from_millis(u64::from(r.u8()) * 100);
                h.expire();
            }
        }
    }
    h.finish();
    Some(h.counters)
}
