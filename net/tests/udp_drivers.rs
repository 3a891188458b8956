//! One table of behaviour cases for the UDP drivers, each run against both of them.
//!
//! Everything happens on loopback (127.0.0.0/8) with ephemeral ports. The io_uring cases
//! fail, saying so, on a machine where io_uring is unavailable: they never pass silently.

use std::collections::HashSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ironboot_net::udp::{
    ActiveDriver, BindSpec, BoundSockets, DatagramService, DriverDrop, DriverKind, DriverReport,
    MAX_DATAGRAM, RecvMeta, SendMeta, Shutdown, SocketError, TxQueue, UdpError, io_uring_available,
    serve, serve_bound,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long a client waits for any one reply; generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(5);

/// Each case, run once per driver: `io_uring::<case>` and `portable::<case>`.
macro_rules! both_drivers {
    ($($case:ident),* $(,)?) => {
        mod io_uring {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::DriverKind::IoUring).await;
                }
            )*
        }
        mod portable {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::DriverKind::Portable).await;
                }
            )*
        }
    };
}

both_drivers!(
    echo_replies_to_the_source,
    recv_meta_names_local_address_port_and_interface,
    two_sockets_reply_from_the_port_asked,
    burst_of_2000_all_answered,
    oversized_datagram_dropped_as_truncated,
    timeouts_fire_and_can_send,
    full_tx_queue_still_sends_everything,
    shutdown_returns_promptly,
    dropping_serve_releases_the_sockets,
    serve_opens_sockets_from_specs,
);

// ---------------------------------------------------------------------------------------
// Harness

/// A driver serving in a task.
struct Running<S> {
    kind: DriverKind,
    addrs: Vec<SocketAddrV4>,
    shutdown: Shutdown,
    task: JoinHandle<Result<DriverReport<S>, UdpError>>,
}

impl<S> Running<S> {
    /// Trigger shutdown; `serve` must return within [`WAIT`] with the driver asked for.
    async fn stop(self) -> DriverReport<S> {
        self.shutdown.trigger();
        let report = timeout(WAIT, self.task)
            .await
            .expect("serve returned within 5 s of shutdown")
            .expect("serve task did not panic")
            .expect("serve succeeded");
        match self.kind {
            DriverKind::IoUring => assert_eq!(report.driver, ActiveDriver::IoUring),
            DriverKind::Portable => assert_eq!(report.driver, ActiveDriver::Portable),
            DriverKind::Auto => {}
        }
        report
    }
}

fn require_io_uring(kind: DriverKind) {
    if kind == DriverKind::IoUring {
        if let Err(reason) = io_uring_available() {
            panic!(
                "io_uring is not available on this machine, so this io_uring case cannot run: {reason}"
            );
        }
    }
}

/// Open sockets for `binds`, build the service (it may need the bound addresses), serve.
fn start<S: DatagramService>(
    kind: DriverKind,
    binds: &[BindSpec],
    service: impl FnOnce(&[SocketAddrV4]) -> S,
) -> Running<S> {
    require_io_uring(kind);
    let sockets = BoundSockets::open(binds).expect("binding the test sockets");
    let addrs = sockets.local_addrs();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(serve_bound(
        kind,
        sockets,
        service(&addrs),
        shutdown.clone(),
    ));
    Running {
        kind,
        addrs,
        shutdown,
        task,
    }
}

fn bind(ip: Ipv4Addr) -> BindSpec {
    BindSpec::new(SocketAddrV4::new(ip, 0))
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A client socket on `ip`, with a receive buffer big enough for bursts.
fn client(ip: Ipv4Addr) -> UdpSocket {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    socket.set_recv_buffer_size(4 << 20).unwrap();
    socket.bind(&SocketAddrV4::new(ip, 0).into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    UdpSocket::from_std(socket.into()).unwrap()
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("unexpected IPv6 address {a}"),
    }
}

fn local(socket: &UdpSocket) -> SocketAddrV4 {
    v4(socket.local_addr().unwrap())
}

/// One datagram, or a failure naming what was awaited.
async fn recv(socket: &UdpSocket, what: &str) -> (Vec<u8>, SocketAddrV4) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no {what} within 5 s"))
        .unwrap();
    buf.truncate(n);
    (buf, v4(from))
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 5 s"))
}

fn lo_index() -> u32 {
    nix::net::if_::if_nametoindex("lo").expect("loopback interface index")
}

// ---------------------------------------------------------------------------------------
// Services

/// Replies to the sender with what the driver said about the datagram, then the datagram.
#[derive(Default)]
struct Echo {
    /// Pin the reply's source address and interface to where the request arrived.
    pin_source: bool,
    lens: Vec<usize>,
    drops: Vec<DriverDrop>,
    queue_full: usize,
}

/// local_addr 4, local_port 2, ifindex 4, src ip 4, src port 2, payload length 2.
const ECHO_HEADER: usize = 18;

impl DatagramService for Echo {
    fn on_datagram(&mut self, _now: Instant, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue) {
        self.lens.push(data.len());
        let pin = self.pin_source;
        let pushed = tx.push_with(|buf| {
            buf[0..4].copy_from_slice(&meta.local_addr.octets());
            buf[4..6].copy_from_slice(&meta.local_port.to_be_bytes());
            buf[6..10].copy_from_slice(&meta.ifindex.to_be_bytes());
            buf[10..14].copy_from_slice(&meta.src.ip().octets());
            buf[14..16].copy_from_slice(&meta.src.port().to_be_bytes());
            buf[16..18].copy_from_slice(&(data.len() as u16).to_be_bytes());
            let n = data.len().min(buf.len() - ECHO_HEADER);
            buf[ECHO_HEADER..ECHO_HEADER + n].copy_from_slice(&data[..n]);
            let send = SendMeta {
                dst: meta.src,
                ifindex: pin.then_some(meta.ifindex),
                src_ip: pin.then_some(meta.local_addr),
                local_port: meta.local_port,
            };
            Some((ECHO_HEADER + n, send))
        });
        if !pushed {
            self.queue_full += 1;
        }
    }

    fn on_dropped(&mut self, reason: DriverDrop) {
        self.drops.push(reason);
    }
}

#[derive(Debug)]
struct EchoReply {
    local_addr: Ipv4Addr,
    local_port: u16,
    ifindex: u32,
    src: SocketAddrV4,
    len: usize,
    payload: Vec<u8>,
}

fn parse_echo(bytes: &[u8]) -> EchoReply {
    assert!(bytes.len() >= ECHO_HEADER, "short echo reply: {bytes:?}");
    let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    let ip_at = |i: usize| Ipv4Addr::new(bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]);
    EchoReply {
        local_addr: ip_at(0),
        local_port: u16_at(4),
        ifindex: u32::from_be_bytes(bytes[6..10].try_into().unwrap()),
        src: SocketAddrV4::new(ip_at(10), u16_at(14)),
        len: usize::from(u16_at(16)),
        payload: bytes[ECHO_HEADER..].to_vec(),
    }
}

/// Sends `copies` replies per datagram: `[copy index] ++ datagram`.
struct Fanout {
    copies: u8,
    queue_full: usize,
}

impl DatagramService for Fanout {
    fn max_sends_per_event(&self) -> usize {
        usize::from(self.copies)
    }

    fn on_datagram(&mut self, _now: Instant, data: &[u8], meta: &RecvMeta, tx: &mut TxQueue) {
        for copy in 0..self.copies {
            let pushed = tx.push_with(|buf| {
                buf[0] = copy;
                buf[1..1 + data.len()].copy_from_slice(data);
                let send = SendMeta {
                    dst: meta.src,
                    ifindex: None,
                    src_ip: None,
                    local_port: meta.local_port,
                };
                Some((1 + data.len(), send))
            });
            if !pushed {
                self.queue_full += 1;
            }
        }
    }
}

/// Asks for a timeout 50 ms ahead, `left` times, and sends the count down to `client`
/// from each one.
struct Ticker {
    client: SocketAddrV4,
    local_port: u16,
    next: Option<Instant>,
    left: u32,
}

impl DatagramService for Ticker {
    fn on_datagram(&mut self, _: Instant, _: &[u8], _: &RecvMeta, _: &mut TxQueue) {}

    fn next_timeout(&self) -> Option<Instant> {
        self.next
    }

    fn on_timeout(&mut self, now: Instant, tx: &mut TxQueue) {
        let Some(due) = self.next else {
            return;
        };
        assert!(now >= due, "on_timeout called before the deadline");
        let (left, dst, local_port) = (self.left, self.client, self.local_port);
        tx.push_with(|buf| {
            buf[..4].copy_from_slice(&left.to_be_bytes());
            let send = SendMeta {
                dst,
                ifindex: None,
                src_ip: None,
                local_port,
            };
            Some((4, send))
        });
        self.left -= 1;
        self.next = (self.left > 0).then(|| now + Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// Cases (each takes the driver to run)

async fn echo_replies_to_the_source(kind: DriverKind) {
    let server = start(kind, &[bind(ip(1))], |_| Echo::default());
    let to = server.addrs[0];
    let client = client(ip(3));

    client.send_to(b"hello", to).await.unwrap();
    let (bytes, from) = recv(&client, "echo reply").await;
    let reply = parse_echo(&bytes);

    assert_eq!(from, to, "the reply leaves from the address and port asked");
    assert_eq!(
        reply.src,
        local(&client),
        "the service saw the client's address"
    );
    assert_eq!(reply.payload, b"hello");
    assert_eq!((reply.local_addr, reply.local_port), (*to.ip(), to.port()));

    let report = server.stop().await;
    assert_eq!(report.service.lens, [5]);
    assert_eq!((report.stats.received, report.stats.sent), (1, 1));
    assert_eq!(report.fallback_reason, None);
}

async fn recv_meta_names_local_address_port_and_interface(kind: DriverKind) {
    let server = start(kind, &[bind(Ipv4Addr::UNSPECIFIED)], |_| Echo {
        pin_source: true,
        ..Echo::default()
    });
    let port = server.addrs[0].port();
    let client = client(ip(1));

    for dst_ip in [ip(1), ip(2)] {
        let dst = SocketAddrV4::new(dst_ip, port);
        client.send_to(b"where", dst).await.unwrap();
        let (bytes, from) = recv(&client, "reply").await;
        let reply = parse_echo(&bytes);
        assert_eq!(
            reply.local_addr, dst_ip,
            "local_addr is the address sent to"
        );
        assert_eq!(reply.local_port, port);
        assert_eq!(reply.ifindex, lo_index(), "arrived on lo");
        assert_eq!(reply.src, local(&client));
        // The reply pinned its source with IP_PKTINFO; routing alone would pick 127.0.0.1.
        assert_eq!(
            from, dst,
            "the reply's source is the address the request was sent to"
        );
    }
    server.stop().await;
}

async fn two_sockets_reply_from_the_port_asked(kind: DriverKind) {
    let server = start(kind, &[bind(ip(1)), bind(ip(1))], |_| Echo::default());
    let (a, b) = (server.addrs[0], server.addrs[1]);
    assert_ne!(a.port(), b.port());
    let client = client(ip(1));

    // Interleaved, so both sockets are served at once.
    for round in 0..3u8 {
        for to in [a, b] {
            client.send_to(&[round], to).await.unwrap();
            let (bytes, from) = recv(&client, "reply").await;
            let reply = parse_echo(&bytes);
            assert_eq!(
                from.port(),
                to.port(),
                "the reply leaves from the port it was sent to"
            );
            assert_eq!(reply.local_port, to.port());
            assert_eq!(reply.payload, [round]);
        }
    }
    let report = server.stop().await;
    assert_eq!(report.stats.received, 6);
}

async fn burst_of_2000_all_answered(kind: DriverKind) {
    const TOTAL: u32 = 2000;
    const WINDOW: u32 = 64;
    let server = start(kind, &[bind(ip(1))], |_| Echo::default());
    let to = server.addrs[0];
    let client = client(ip(1));

    let mut answered = HashSet::new();
    let mut next = 0;
    while next < TOTAL {
        let end = (next + WINDOW).min(TOTAL);
        for seq in next..end {
            client.send_to(&seq.to_be_bytes(), to).await.unwrap();
        }
        for _ in next..end {
            let (bytes, _) = recv(&client, "burst reply").await;
            let reply = parse_echo(&bytes);
            answered.insert(u32::from_be_bytes(reply.payload[..4].try_into().unwrap()));
        }
        next = end;
    }
    assert_eq!(answered.len(), TOTAL as usize);
    assert!(answered.iter().all(|&seq| seq < TOTAL));

    let report = server.stop().await;
    assert_eq!(report.stats.received, u64::from(TOTAL));
    assert_eq!(report.stats.sent, u64::from(TOTAL));
    assert_eq!(report.service.queue_full, 0);
}

async fn oversized_datagram_dropped_as_truncated(kind: DriverKind) {
    let server = start(kind, &[bind(ip(1))], |_| Echo::default());
    let to = server.addrs[0];
    let client = client(ip(1));

    client
        .send_to(&vec![0xee; MAX_DATAGRAM + 100], to)
        .await
        .unwrap();
    // The largest datagram that fits must still pass, and the driver must keep serving.
    client.send_to(&vec![0xaa; MAX_DATAGRAM], to).await.unwrap();
    let (bytes, _) = recv(&client, "reply to the MAX_DATAGRAM datagram").await;
    assert_eq!(parse_echo(&bytes).len, MAX_DATAGRAM);
    client.send_to(b"after", to).await.unwrap();
    let (bytes, _) = recv(&client, "reply after the oversized datagram").await;
    assert_eq!(parse_echo(&bytes).payload, b"after");

    let report = server.stop().await;
    assert_eq!(report.service.drops, [DriverDrop::Truncated]);
    assert_eq!(
        report.service.lens,
        [MAX_DATAGRAM, 5],
        "the oversized one was not passed on"
    );
    assert_eq!(report.stats.truncated, 1);
}

async fn timeouts_fire_and_can_send(kind: DriverKind) {
    let client = client(ip(1));
    let client_addr = local(&client);
    let server = start(kind, &[bind(ip(1))], |addrs| Ticker {
        client: client_addr,
        local_port: addrs[0].port(),
        next: Some(Instant::now() + Duration::from_millis(50)),
        left: 3,
    });

    for expected in (1..=3u32).rev() {
        let (bytes, from) = recv(&client, "timeout-driven datagram").await;
        assert_eq!(bytes, expected.to_be_bytes());
        assert_eq!(from, server.addrs[0]);
    }
    let report = server.stop().await;
    assert_eq!(report.service.left, 0);
    assert_eq!(report.service.next, None);
}

async fn full_tx_queue_still_sends_everything(kind: DriverKind) {
    const DATAGRAMS: u32 = 40;
    let server = start(kind, &[bind(ip(1))], |_| Fanout {
        copies: 8,
        queue_full: 0,
    });
    let to = server.addrs[0];
    let client = client(ip(1));

    // All at once, so one receive batch holds several datagrams and the queue (room for
    // 8 sends per event) must be flushed in the middle of it.
    for seq in 0..DATAGRAMS {
        client.send_to(&seq.to_be_bytes(), to).await.unwrap();
    }
    let mut got = HashSet::new();
    for _ in 0..DATAGRAMS * 8 {
        let (bytes, _) = recv(&client, "fan-out reply").await;
        assert_eq!(bytes.len(), 5);
        got.insert((
            bytes[0],
            u32::from_be_bytes(bytes[1..5].try_into().unwrap()),
        ));
    }
    assert_eq!(
        got.len(),
        (DATAGRAMS * 8) as usize,
        "every copy of every datagram"
    );

    let report = server.stop().await;
    assert_eq!(
        report.service.queue_full, 0,
        "the driver always left room for 8 sends"
    );
    assert_eq!(report.stats.sent, u64::from(DATAGRAMS * 8));
}

async fn shutdown_returns_promptly(kind: DriverKind) {
    let server = start(kind, &[bind(ip(1))], |_| Echo::default());
    let client = client(ip(1));
    client.send_to(b"up?", server.addrs[0]).await.unwrap();
    recv(&client, "reply before shutdown").await;
    // `stop` fails unless serve returns within 5 s.
    server.stop().await;

    // A handle triggered before serving starts stops the driver at once.
    let shutdown = Shutdown::new();
    shutdown.trigger();
    let sockets = BoundSockets::open(&[bind(ip(1))]).unwrap();
    let report = within("serve with a pre-triggered shutdown returning", async {
        serve_bound(kind, sockets, Echo::default(), shutdown).await
    })
    .await
    .expect("serve succeeded");
    assert_eq!(report.stats.received, 0);
}

async fn dropping_serve_releases_the_sockets(kind: DriverKind) {
    let server = start(kind, &[bind(ip(1))], |_| Echo::default());
    let addr = server.addrs[0];
    let client = client(ip(1));
    client.send_to(b"up?", addr).await.unwrap();
    recv(&client, "reply before the abort").await;

    server.task.abort();
    // The driver closes its socket once it has stopped (the io_uring thread notices the
    // dropped future on its own). Until then a bind without reuse flags fails; there is
    // no event to wait on, so poll for it.
    within("the port being released after serve was dropped", async {
        while std::net::UdpSocket::bind(addr).is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn serve_opens_sockets_from_specs(kind: DriverKind) {
    require_io_uring(kind);
    // Learn a free port, then let it go: `serve` binds from a spec, with a device.
    let port = {
        let probe = std::net::UdpSocket::bind((ip(1), 0)).unwrap();
        v4(probe.local_addr().unwrap()).port()
    };
    let to = SocketAddrV4::new(ip(1), port);
    let spec = BindSpec {
        addr: to,
        device: Some("lo".to_owned()),
        broadcast: true,
    };
    let shutdown = Shutdown::new();
    // Bound by the time `serve` returns its future, so the datagram below is queued.
    let task = tokio::spawn(serve(kind, &[spec], Echo::default(), shutdown.clone()));
    let client = client(ip(1));
    client.send_to(b"spec", to).await.unwrap();
    let (bytes, from) = recv(&client, "reply from the spec-bound server").await;
    let reply = parse_echo(&bytes);
    assert_eq!(from, to);
    assert_eq!(reply.ifindex, lo_index());
    assert_eq!(reply.payload, b"spec");

    shutdown.trigger();
    let report = within("serve returning", task).await.unwrap().unwrap();
    assert_eq!(report.stats.received, 1);
}

// ---------------------------------------------------------------------------------------
// Driver-independent cases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_runs_a_driver() {
    let server = start(DriverKind::Auto, &[bind(ip(1))], |_| Echo::default());
    let client = client(ip(1));
    client.send_to(b"auto", server.addrs[0]).await.unwrap();
    let (bytes, _) = recv(&client, "reply from the auto driver").await;
    assert_eq!(parse_echo(&bytes).payload, b"auto");

    let report = server.stop().await;
    match io_uring_available() {
        Ok(()) => {
            assert_eq!(report.driver, ActiveDriver::IoUring);
            assert_eq!(report.fallback_reason, None);
        }
        Err(reason) => {
            assert_eq!(report.driver, ActiveDriver::Portable);
            assert_eq!(report.fallback_reason, Some(reason));
        }
    }
}

#[test]
fn io_uring_is_available_here() {
    // The io_uring cases need it; say so plainly rather than in every case.
    if let Err(reason) = io_uring_available() {
        panic!("io_uring is not available on this machine: {reason}");
    }
}

#[test]
fn driver_kind_parses_and_displays() {
    for (text, kind) in [
        ("auto", DriverKind::Auto),
        ("io-uring", DriverKind::IoUring),
        ("portable", DriverKind::Portable),
    ] {
        assert_eq!(text.parse::<DriverKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), text);
    }
    assert_eq!(
        "io_uring".parse::<DriverKind>().unwrap(),
        DriverKind::IoUring
    );
    assert_eq!(DriverKind::default(), DriverKind::Auto);
    for bad in ["", "uring", "Auto", "epoll", "io-uring "] {
        let err = bad.parse::<DriverKind>().unwrap_err();
        assert!(
            err.to_string().contains("auto, io-uring or portable"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn bind_failures_name_the_address_or_device() {
    // 192.0.2.1 (TEST-NET-1) is not a local address: bind fails, nothing is sent.
    let foreign = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 0);
    match BoundSockets::open(&[BindSpec::new(foreign)]) {
        Err(err @ SocketError::Bind { addr, .. }) => {
            assert_eq!(addr, foreign);
            assert!(err.to_string().contains("192.0.2.1"), "{err}");
        }
        other => panic!("expected a bind error, got {other:?}"),
    }

    let spec = BindSpec {
        device: Some("nosuchif0".to_owned()),
        ..bind(ip(1))
    };
    match BoundSockets::open(&[spec]) {
        Err(err @ SocketError::BindToDevice { .. }) => {
            assert!(err.to_string().contains("nosuchif0"), "{err}");
        }
        other => panic!("expected a bind-to-device error, got {other:?}"),
    }

    let none = serve(DriverKind::Portable, &[], Echo::default(), Shutdown::new()).await;
    assert!(matches!(none, Err(UdpError::NoBinds)));
}
