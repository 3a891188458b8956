//! Runs the emulated machines.
//!
//! The machines share the DHCP client port, as a rack shares a broadcast domain: one
//! socket on `0.0.0.0:68` (broadcast OFFERs arrive there; DISCOVERs leave from it) and,
//! per `--bind` address, one on `addr:68` (the 4011 REQUEST leaves from it and its unicast
//! ACK comes back to it). A receiver task per socket parses every datagram and hands it to
//! the machine waiting on its xid and MAC ([`Demux`]). Each machine then fetches its boot
//! file over TFTP from a fresh port (the TFTP storm's client), asks for its boot script
//! over HTTP and, with `--stop-after image`, fetches the script's kernel and initrds.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironboot_net::tftp::client::{ClientOptions, TftpClient};
use ironboot_net::wire::MessageType;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
};
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::image;
use super::packet::{self, Demux, Identity, Reply, Route};
use super::report::{BootTally, PxeContext, PxeReport, PxeSetup, ReplyCounters, Stage};
use super::{Load, PxePlan};
use crate::tools::storm::StormError;
use crate::tools::storm::run::{cpu_time, open as open_tftp};
use crate::tools::storm::transfer::{self, drive};

/// What the receivers and machines share.
struct Shared {
    plan: PxePlan,
    /// Where DISCOVERs leave from and broadcast OFFERs arrive.
    any: Arc<UdpSocket>,
    /// Per `--bind` address (same order), the socket on `addr:client_port`.
    bound: Vec<Arc<UdpSocket>>,
    /// The machines' address when no `--bind` was given.
    default_ip: Ipv4Addr,
    demux: Mutex<Demux<mpsc::Sender<Reply>>>,
    /// OFFERs, ACKs, unknown xid, wrong chaddr, malformed.
    replies: [AtomicU64; 5],
    /// For the progress line: machines started, booted, failed; stages done; TFTP bytes.
    started: AtomicU64,
    booted: AtomicU64,
    failed: AtomicU64,
    stage_ok: [AtomicU64; 5],
    tftp_bytes: AtomicU64,
    /// Image bytes received so far (the progress line).
    image_bytes: AtomicU64,
    /// Next machine index (closed loop).
    next: AtomicU64,
    /// When the storm started: completions are counted from here.
    start: Instant,
}

/// Receive buffer of the DHCP client sockets.
const RECEIVE_BUFFER: usize = 8 << 20;

fn io_reason(e: &std::io::Error) -> String {
    format!("io_{:?}", e.kind()).to_lowercase()
}

/// A DHCP client socket on `ip:port`: SO_REUSEADDR (the wildcard and the per-address
/// sockets share the port), SO_BROADCAST, SO_BINDTODEVICE when an interface is given.
fn dhcp_socket(ip: Ipv4Addr, port: u16, interface: Option<&str>) -> Result<UdpSocket, StormError> {
    let addr = SocketAddrV4::new(ip, port);
    let err = |e: nix::Error| StormError::Socket {
        addr,
        source: std::io::Error::from(e),
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::Udp,
    )
    .map_err(err)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(err)?;
    // A storm's replies come in bursts (one OFFER per machine at once): a receive buffer
    // past the default keeps the generator from dropping them. Forcing it past rmem_max
    // needs CAP_NET_ADMIN; without it, the capped request still helps.
    if setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER);
    }
    if let Some(name) = interface {
        setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(name)).map_err(|e| {
            StormError::Flag {
                flag: "interface",
                message: format!("SO_BINDTODEVICE {name}: {e}"),
            }
        })?;
    }
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).map_err(err)?;
    UdpSocket::from_std(StdUdpSocket::from(fd))
        .map_err(|source| StormError::Socket { addr, source })
}

/// The local address the kernel would use towards `server`.
fn route_source(server: SocketAddrV4) -> Result<Ipv4Addr, StormError> {
    let probe = || -> std::io::Result<Ipv4Addr> {
        let s = StdUdpSocket::bind("0.0.0.0:0")?;
        s.connect(server)?;
        match s.local_addr()? {
            std::net::SocketAddr::V4(a) => Ok(*a.ip()),
            std::net::SocketAddr::V6(_) => Err(std::io::ErrorKind::InvalidData.into()),
        }
    };
    probe().map_err(|source| StormError::Socket {
        addr: server,
        source,
    })
}

/// Read every datagram on `socket` and hand replies to their machines.
async fn receive(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match socket.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            // ICMP errors and the like: keep reading.
            Err(_) => continue,
        };
        let reply = match packet::parse_reply(&buf[..n]) {
            Ok(r) => r,
            Err(_) => {
                shared.replies[4].fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match reply.message_type {
            Some(MessageType::Offer) => {
                shared.replies[0].fetch_add(1, Ordering::Relaxed);
            }
            Some(MessageType::Ack) => {
                shared.replies[1].fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let demux = shared.demux.lock().unwrap_or_else(|p| p.into_inner());
        match demux.route(reply.xid, &reply.chaddr) {
            Route::Deliver(tx) => {
                // A full queue means duplicates the machine has not read yet: drop.
                let _ = tx.try_send(reply);
            }
            Route::UnknownXid => {
                shared.replies[2].fetch_add(1, Ordering::Relaxed);
            }
            Route::WrongClient => {
                shared.replies[3].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waiting on an xid; unregistered when dropped.
struct Waiting<'a> {
    shared: &'a Shared,
    xid: u32,
    rx: mpsc::Receiver<Reply>,
}

impl<'a> Waiting<'a> {
    fn new(shared: &'a Shared, mac: [u8; 6]) -> Waiting<'a> {
        let (tx, rx) = mpsc::channel(8);
        let mut rng = rand::thread_rng();
        let mut demux = shared.demux.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let xid: u32 = rng.r#gen();
            if demux.register(xid, mac, tx.clone()) {
                return Waiting { shared, xid, rx };
            }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared
            .demux
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.xid);
    }
}

/// One DHCP exchange the firmware's way: send, wait `timeouts[k]`, send again (same
/// xid, `secs` updated), until a reply `accept` takes. Returns the reply and the
/// retransmissions made.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    shared: &Shared,
    socket: &UdpSocket,
    dst: SocketAddrV4,
    id: &Identity,
    boot_start: Instant,
    timeouts: &[Duration],
    build: impl Fn(&mut [u8], u32, u16) -> usize,
    accept: impl Fn(&Reply) -> bool,
    retransmissions: &mut u64,
) -> Result<Reply, String> {
    let mut waiting = Waiting::new(shared, id.mac);
    let mut buf = [0u8; packet::BUFFER_LEN];
    for (attempt, &timeout) in timeouts.iter().enumerate() {
        if attempt > 0 {
            *retransmissions += 1;
        }
        let secs = u16::try_from(boot_start.elapsed().as_secs()).unwrap_or(u16::MAX);
        let len = build(&mut buf, waiting.xid, secs);
        socket
            .send_to(&buf[..len], dst)
            .await
            .map_err(|e| io_reason(&e))?;
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, waiting.rx.recv()).await {
                Ok(Some(reply)) if accept(&reply) => return Ok(reply),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    Err("timeout".to_owned())
}

/// The machine's TFTP fetch: the probe (EDK2), then the file. Returns the file's size.
async fn fetch(
    server: SocketAddrV4,
    bind: Ipv4Addr,
    request: &ClientOptions,
    probe: Option<&ClientOptions>,
    tally: &mut BootTally,
) -> Result<u64, String> {
    // A read buffer big enough for a UDP_GRO batch (see `transfer`).
    let mut buf = vec![0u8; transfer::GRO_BUFFER];
    let mut previous: Option<UdpSocket> = None;
    let mut one = async |options: &ClientOptions| -> Result<u64, transfer::Failure> {
        let socket = open_tftp(bind).map_err(|e| transfer::Failure::Io(e.kind()))?;
        let socket = &*previous.insert(socket);
        let mut client = TftpClient::new(server, options.clone(), Instant::now().into_std())
            .map_err(|_| transfer::Failure::Client("request_too_long"))?;
        let result = drive(socket, &mut client, &mut buf, |_, _| true).await;
        tally.tftp_client.add(client.stats());
        result.map(|()| client.bytes_received())
    };
    if let Some(p) = probe {
        one(p).await.map_err(|f| format!("probe_{}", f.reason()))?;
    }
    one(request).await.map_err(transfer::Failure::reason)
}

/// One machine's boot, start to end, into `tally`.
async fn boot(shared: &Shared, index: u64, tally: &mut BootTally) {
    let plan = &shared.plan;
    let id = plan.identity(index);
    let (ip, socket) = if plan.bind.is_empty() {
        (shared.default_ip, &shared.any)
    } else {
        let k = (index % plan.bind.len() as u64) as usize;
        (plan.bind[k], &shared.bound[k])
    };
    shared.started.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    let result = stages(shared, &id, ip, socket, start, tally).await;
    match result {
        Ok(()) => {
            tally.booted += 1;
            tally.boot_latencies.push(start.elapsed());
            tally.completions.push(shared.start.elapsed());
            shared.booted.fetch_add(1, Ordering::Relaxed);
        }
        Err((stage, reason)) => {
            tally.failure(stage, &reason);
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn done(shared: &Shared, tally: &mut BootTally, stage: Stage, since: Instant) {
    tally.stage_done(stage, since.elapsed());
    shared.stage_ok[stage as usize].fetch_add(1, Ordering::Relaxed);
}

async fn stages(
    shared: &Shared,
    id: &Identity,
    ip: Ipv4Addr,
    socket: &UdpSocket,
    start: Instant,
    tally: &mut BootTally,
) -> Result<(), (Stage, String)> {
    let plan = &shared.plan;
    // DISCOVER -> proxy OFFER.
    let dst = if plan.unicast_discover {
        SocketAddrV4::new(plan.server, plan.dhcp_port)
    } else {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, plan.dhcp_port)
    };
    let mut retrans = 0;
    let offer = exchange(
        shared,
        &shared.any,
        dst,
        id,
        start,
        &plan.discover_timeouts,
        |buf, xid, secs| packet::discover(buf, id, xid, secs),
        Reply::is_proxy_offer,
        &mut retrans,
    )
    .await;
    tally.dhcp_retransmissions[0] += retrans;
    let offer = offer.map_err(|r| (Stage::Discover, r))?;
    done(shared, tally, Stage::Discover, start);
    if plan.last_stage == Stage::Discover {
        return Ok(());
    }

    // REQUEST to the boot server's 4011 -> ACK.
    let t = Instant::now();
    let (server, item) = offer
        .boot_server_request()
        .ok_or((Stage::Request, "offer_names_no_server".to_owned()))?;
    let mut retrans = 0;
    let ack = exchange(
        shared,
        socket,
        SocketAddrV4::new(server, plan.pxe_port),
        id,
        start,
        &plan.request_timeouts,
        |buf, xid, secs| packet::request(buf, id, xid, secs, ip, item),
        |r| r.message_type == Some(MessageType::Ack),
        &mut retrans,
    )
    .await;
    tally.dhcp_retransmissions[1] += retrans;
    let ack = ack.map_err(|r| (Stage::Request, r))?;
    let file = ack
        .boot_file
        .clone()
        .or(offer.boot_file.clone())
        .ok_or((Stage::Request, "no_boot_file".to_owned()))?;
    let tftp_server = ack
        .tftp_server()
        .or(offer.tftp_server())
        .unwrap_or(plan.server);
    done(shared, tally, Stage::Request, t);
    if plan.last_stage == Stage::Request {
        return Ok(());
    }

    // TFTP.
    let t = Instant::now();
    let (request, probe) = plan.tftp_requests(id.firmware, &file);
    let bytes = fetch(
        SocketAddrV4::new(tftp_server, plan.tftp_port),
        ip,
        &request,
        probe.as_ref(),
        tally,
    )
    .await
    .map_err(|r| (Stage::Tftp, r))?;
    tally.tftp_bytes += bytes;
    shared.tftp_bytes.fetch_add(bytes, Ordering::Relaxed);
    done(shared, tally, Stage::Tftp, t);

    // HTTP boot script, as the chained iPXE asks for it.
    if plan.last_stage >= Stage::Http {
        let t = Instant::now();
        let path = format!(
            "/ipxe/boot.ipxe?uuid={}&mac={}&arch={}",
            id.uuid_string(),
            id.mac_hexhyp(),
            id.firmware.buildarch()
        );
        let bind = if plan.bind.is_empty() {
            Ipv4Addr::UNSPECIFIED
        } else {
            ip
        };
        let api = SocketAddrV4::new(plan.server, plan.api_port);
        let (response, script) = super::http::get(bind, api, &path, plan.http_timeout)
            .await
            .map_err(|r| (Stage::Http, r))?;
        if response.status != 200 {
            return Err((Stage::Http, format!("status_{}", response.status)));
        }
        tally.http_bytes += response.body_len;
        done(shared, tally, Stage::Http, t);

        // The kernel and initrds the script names.
        if plan.last_stage == Stage::Image {
            let t = Instant::now();
            let machine = image::Machine {
                api,
                bind,
                idle: plan.http_timeout,
                settings: image::Settings {
                    uuid: id.uuid_string(),
                    mac: id.mac_hexhyp().replace('-', ":"),
                    buildarch: id.firmware.buildarch().to_owned(),
                },
                digests: &plan.image_digests,
            };
            let mut outcome = image::Outcome::default();
            let result = image::boot_images(
                &machine,
                &script,
                image::Target { addr: api, path },
                &mut outcome,
                &shared.image_bytes,
            )
            .await;
            let since = |at: Instant| at.saturating_duration_since(shared.start);
            tally.image_ran(since(t), since(Instant::now()));
            tally.image_bytes += outcome.bytes;
            tally.image_connections += outcome.connections;
            tally.kernel_latencies.extend(outcome.kernel);
            tally.initrd_latencies.extend(outcome.initrd);
            result.map_err(|r| (Stage::Image, r))?;
            done(shared, tally, Stage::Image, t);
        }
    }
    Ok(())
}

/// Print a line on stderr every second.
async fn progress(shared: Arc<Shared>, start: Instant) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last_bytes = 0;
    let mut last_at = start;
    loop {
        let at = tick.tick().await;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let bytes = n(&shared.tftp_bytes) + n(&shared.image_bytes);
        let secs = (at - last_at).as_secs_f64().max(1e-3);
        eprintln!(
            "[{:>5.0}s] {}/{} started, {} booted, {} failed | offer {} ack {} tftp {} http {} \
             image {} | {:.1} MB/s",
            (at - start).as_secs_f64(),
            n(&shared.started),
            shared.plan.machines,
            n(&shared.booted),
            n(&shared.failed),
            n(&shared.stage_ok[0]),
            n(&shared.stage_ok[1]),
            n(&shared.stage_ok[2]),
            n(&shared.stage_ok[3]),
            n(&shared.stage_ok[4]),
            (bytes - last_bytes) as f64 / secs / 1e6,
        );
        last_bytes = bytes;
        last_at = at;
    }
}

/// Run the storm to its end.
pub(crate) async fn run(
    plan: PxePlan,
    firmware: String,
    tftp_mode: String,
) -> Result<PxeReport, StormError> {
    let interface = plan.interface.as_deref();
    let any = Arc::new(dhcp_socket(
        Ipv4Addr::UNSPECIFIED,
        plan.client_port,
        interface,
    )?);
    let mut bound = Vec::new();
    for &ip in &plan.bind {
        bound.push(Arc::new(dhcp_socket(ip, plan.client_port, interface)?));
    }
    let default_ip = if plan.bind.is_empty() {
        route_source(SocketAddrV4::new(plan.server, plan.pxe_port))?
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let shared = Arc::new(Shared {
        any,
        bound,
        default_ip,
        demux: Mutex::new(Demux::default()),
        replies: Default::default(),
        started: AtomicU64::new(0),
        booted: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stage_ok: Default::default(),
        tftp_bytes: AtomicU64::new(0),
        image_bytes: AtomicU64::new(0),
        next: AtomicU64::new(0),
        start: Instant::now(),
        plan,
    });
    let mut receivers = JoinSet::new();
    receivers.spawn(receive(shared.clone(), shared.any.clone()));
    for s in &shared.bound {
        receivers.spawn(receive(shared.clone(), s.clone()));
    }
    let cpu_start = cpu_time();
    let start = shared.start;
    let ticker = shared
        .plan
        .progress
        .then(|| tokio::spawn(progress(shared.clone(), start)));
    let mut machines = JoinSet::new();
    let load = shared.plan.load;
    match load {
        Load::Concurrency(c) => {
            for _ in 0..c {
                let shared = shared.clone();
                machines.spawn(async move {
                    let mut tally = BootTally::default();
                    loop {
                        let i = shared.next.fetch_add(1, Ordering::Relaxed);
                        if i >= shared.plan.machines {
                            break;
                        }
                        boot(&shared, i, &mut tally).await;
                    }
                    tally
                });
            }
        }
        Load::Rate(rate) => {
            let period = Duration::from_secs_f64(1.0 / rate);
            for i in 0..shared.plan.machines {
                tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
                let shared = shared.clone();
                machines.spawn(async move {
                    let mut tally = BootTally::default();
                    boot(&shared, i, &mut tally).await;
                    tally
                });
            }
        }
    }
    let mut tally = BootTally::default();
    while let Some(done) = machines.join_next().await {
        match done {
            Ok(t) => tally.merge(t),
            Err(_) => tally.failure(Stage::Discover, "machine_task_panicked"),
        }
    }
    let wall = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    receivers.abort_all();
    let plan = &shared.plan;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Ok(PxeReport::new(
        tally,
        PxeContext {
            setup: PxeSetup {
                server: plan.server.to_string(),
                machines: plan.machines,
                firmware,
                tftp_mode,
                load: match load {
                    Load::Rate(r) => format!("rate {r}/s"),
                    Load::Concurrency(c) => format!("concurrency {c}"),
                },
                http: plan.last_stage >= Stage::Http,
                stop_after: plan.last_stage.label(),
            },
            last_stage: plan.last_stage,
            replies: ReplyCounters {
                offers: n(&shared.replies[0]),
                acks: n(&shared.replies[1]),
                unknown_xid: n(&shared.replies[2]),
                wrong_chaddr: n(&shared.replies[3]),
                malformed: n(&shared.replies[4]),
            },
            wall,
            cpu: cpu_time().saturating_sub(cpu_start),
        },
    ))
}
