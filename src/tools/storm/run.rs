//! Runs the clients: N tasks, each with its own socket per transfer (a new port per
//! transfer, as firmware does, so a late datagram of one transfer cannot be taken for the
//! reply to the next), closed loop, then merges their tallies into the report.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ironboot_net::tftp::client::{ClientOptions, TftpClient};
use nix::sys::socket::sockopt;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::StormError;
use super::report::{Context, Report, Tally};
use super::transfer::{Failure, drive};

/// How many transfers to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Each client runs this many.
    PerClient(u64),
    /// This many in all, taken by whichever client is free.
    Total(u64),
}

/// A validated storm.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) server: SocketAddrV4,
    /// Source addresses, given to the clients in turn (never empty).
    pub(crate) bind: Vec<Ipv4Addr>,
    pub(crate) clients: usize,
    pub(crate) work: Work,
    /// The real request.
    pub(crate) request: ClientOptions,
    /// The size probe before it (EDK2), if any.
    pub(crate) probe: Option<ClientOptions>,
    /// The bytes every transfer must deliver (--verify).
    pub(crate) expect: Option<Bytes>,
    /// Print a progress line every second.
    pub(crate) progress: bool,
}

/// What the workers share: the plan and counters for the progress line (bumped once per
/// transfer, never per packet).
#[derive(Debug)]
struct Shared {
    plan: Plan,
    /// Transfers not yet taken, for [`Work::Total`].
    remaining: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    /// Receive buffer size: the largest block asked for, plus the header, plus one byte so
    /// an over-long block shows as such instead of arriving cut to size.
    buf_len: usize,
}

impl Shared {
    /// Take the next transfer, if any is left; `mine` counts this client's own.
    fn take(&self, mine: &mut u64) -> bool {
        match self.plan.work {
            Work::PerClient(n) => {
                *mine += 1;
                *mine <= n
            }
            Work::Total(_) => self
                .remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                .is_ok(),
        }
    }
}

pub(super) fn open(bind: Ipv4Addr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddrV4::new(bind, 0))?;
    socket.set_nonblocking(true)?;
    // Let the kernel hand over a server's segmented window in one piece (see
    // `transfer::drive`): the generator shares the CPU with the server under test, and
    // this keeps its own cost down. Old kernels lack it; then datagrams come one by one.
    let _ = nix::sys::socket::setsockopt(&socket, sockopt::UdpGroSegment, &true);
    UdpSocket::from_std(socket)
}

/// The largest block any request in the plan may receive.
fn largest_block(plan: &Plan) -> usize {
    plan.request
        .options()
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("blksize"))
        .filter_map(|(_, v)| v.parse::<usize>().ok())
        .max()
        .unwrap_or(512)
        .max(512)
}

/// One client fetching with `options`; the bytes and the client's counters.
///
/// The socket is left in `previous` when done, and the one there before is closed only
/// once the new one is bound: so the next transfer cannot get the port just used. Firmware
/// moves on to a new port too (OVMF: 1030 for the probe, 1031 for the file); reusing the
/// port at once would let a late datagram of the last transfer (the probe's ERROR 8, a
/// final ACK) meet the server's state for the next one.
async fn fetch(
    shared: &Shared,
    bind: Ipv4Addr,
    options: &ClientOptions,
    buf: &mut [u8],
    tally: &mut Tally,
    verify: bool,
    previous: &mut Option<UdpSocket>,
) -> Result<u64, Failure> {
    let plan = &shared.plan;
    let socket = open(bind).map_err(|e| Failure::Io(e.kind()))?;
    let socket = &*previous.insert(socket);
    let mut client = TftpClient::new(plan.server, options.clone(), Instant::now().into_std())
        .map_err(|_| Failure::Client("request_too_long"))?;
    let expect = plan.expect.as_ref().filter(|_| verify);
    let result = drive(socket, &mut client, buf, |offset, data| match expect {
        Some(e) => {
            usize::try_from(offset)
                .ok()
                .and_then(|at| e.get(at..at + data.len()))
                == Some(data)
        }
        None => true,
    })
    .await;
    tally.client.add(client.stats());
    result?;
    if expect.is_some_and(|e| e.len() as u64 != client.bytes_received()) {
        return Err(Failure::Verify);
    }
    Ok(client.bytes_received())
}

/// One transfer as the firmware makes it: the probe (if any), then the real request.
async fn transfer(
    shared: &Shared,
    bind: Ipv4Addr,
    buf: &mut [u8],
    tally: &mut Tally,
    previous: &mut Option<UdpSocket>,
) -> Result<u64, String> {
    if let Some(probe) = &shared.plan.probe {
        fetch(shared, bind, probe, buf, tally, false, previous)
            .await
            .map_err(|f| format!("probe_{}", f.reason()))?;
    }
    fetch(
        shared,
        bind,
        &shared.plan.request,
        buf,
        tally,
        true,
        previous,
    )
    .await
    .map_err(Failure::reason)
}

async fn worker(shared: Arc<Shared>, bind: Ipv4Addr) -> Tally {
    let mut tally = Tally::default();
    let mut buf = vec![0u8; shared.buf_len];
    let mut mine = 0;
    let mut previous = None;
    while shared.take(&mut mine) {
        let started = Instant::now();
        match transfer(&shared, bind, &mut buf, &mut tally, &mut previous).await {
            Ok(bytes) => {
                tally.success(started.elapsed(), bytes);
                shared.done.fetch_add(1, Ordering::Relaxed);
                shared.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(reason) => {
                tally.failure(&reason);
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally
}

/// Print a line on stderr every second: transfers so far and the last second's goodput.
async fn progress(shared: Arc<Shared>, start: Instant) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last_bytes = 0;
    let mut last_at = start;
    loop {
        let at = tick.tick().await;
        let bytes = shared.bytes.load(Ordering::Relaxed);
        let secs = (at - last_at).as_secs_f64().max(1e-3);
        eprintln!(
            "[{:>5.0}s] {} done, {} failed, {:.1} MB/s",
            (at - start).as_secs_f64(),
            shared.done.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
            (bytes - last_bytes) as f64 / secs / 1e6,
        );
        last_bytes = bytes;
        last_at = at;
    }
}

/// CPU time this process has used so far (user + system).
pub(super) fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(
                tv.tv_sec().max(0) as u64,
                (tv.tv_usec().max(0) as u32) * 1000,
            )
        };
        t(u.user_time()) + t(u.system_time())
    })
}

/// Run the storm to its end.
pub(crate) async fn run(plan: Plan) -> Result<Report, StormError> {
    // A socket on each address up front, so a bad --bind is one clear error rather than
    // N failures.
    for &ip in &plan.bind {
        drop(open(ip).map_err(|source| StormError::Socket {
            addr: SocketAddrV4::new(ip, 0),
            source,
        })?);
    }
    let total = match plan.work {
        Work::Total(n) => n,
        Work::PerClient(_) => 0,
    };
    let shared = Arc::new(Shared {
        buf_len: (largest_block(&plan) + 4 + 1).max(super::transfer::GRO_BUFFER),
        plan,
        remaining: AtomicU64::new(total),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let cpu_start = cpu_time();
    let start = Instant::now();
    let ticker = shared
        .plan
        .progress
        .then(|| tokio::spawn(progress(shared.clone(), start)));
    let mut workers = JoinSet::new();
    for i in 0..shared.plan.clients {
        let bind = shared.plan.bind[i % shared.plan.bind.len()];
        workers.spawn(worker(shared.clone(), bind));
    }
    let mut tally = Tally::default();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(t) => tally.merge(t),
            // A panicking worker is a bug; count it rather than lose the whole report.
            Err(_) => tally.failure("worker_panicked"),
        }
    }
    let wall = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
    }
    let plan = &shared.plan;
    Ok(Report::new(
        tally,
        Context {
            server: plan.server.to_string(),
            file: plan.request.filename().to_owned(),
            clients: plan.clients,
            wall,
            cpu: cpu_time().saturating_sub(cpu_start),
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use clap::Parser;
    use ironboot_net::files::FileSet;
    use ironboot_net::tftp::{TftpConfig, TftpCounters, TftpServer};
    use ironboot_net::udp::{self, BindSpec, BoundSockets, DriverKind, Shutdown};

    use super::*;
    use crate::cli::flags::{Cli, Command};
    use crate::tools::storm::StormTarget;

    /// Deterministic, not periodic in the block size.
    fn content(len: usize) -> Bytes {
        let mut x: u32 = 0x9e37_79b9;
        Bytes::from(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect::<Vec<_>>(),
        )
    }

    /// An in-process ironboot TFTP server on loopback, request port and pool on ephemeral
    /// ports; its address, counters and the handle that stops it.
    fn server(files: FileSet) -> (SocketAddrV4, Arc<TftpCounters>, Shutdown) {
        let lo = |port| BindSpec::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        let binds: Vec<BindSpec> = (0..5).map(|_| lo(0)).collect();
        let sockets = BoundSockets::open(&binds).unwrap();
        let addrs = sockets.local_addrs();
        let pool: Vec<u16> = addrs[1..].iter().map(|a| a.port()).collect();
        let config = TftpConfig {
            port: addrs[0].port(),
            // Every client is 127.0.0.x; the default cap is for real machines.
            max_per_client: 1000,
            ..TftpConfig::default()
        };
        let counters = Arc::new(TftpCounters::default());
        let server = TftpServer::new(config, Arc::new(files), &pool, counters.clone()).unwrap();
        let shutdown = Shutdown::new();
        tokio::spawn(udp::serve_bound(
            DriverKind::Portable,
            sockets,
            server,
            shutdown.clone(),
        ));
        (addrs[0], counters, shutdown)
    }

    fn plan(server: SocketAddrV4, args: &[&str]) -> Plan {
        let addr = server.to_string();
        let cli = Cli::try_parse_from(
            [
                "ironboot",
                "storm",
                "tftp",
                "--server",
                addr.as_str(),
                "--quiet",
            ]
            .into_iter()
            .chain(args.iter().copied()),
        )
        .unwrap();
        let Some(Command::Storm(storm)) = cli.command else {
            panic!("not a storm command");
        };
        let StormTarget::Tftp(tftp) = storm.target else {
            panic!("not a tftp storm");
        };
        tftp.plan().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_edk2_clients_all_succeed_and_verify() {
        let body = content(173_792);
        let mut files = FileSet::new();
        files.insert("snp.efi", body.clone()).unwrap();
        let (addr, counters, shutdown) = server(files);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snp.efi");
        std::fs::write(&path, &body).unwrap();
        let path = path.to_str().unwrap();
        let args = ["--file", "snp.efi", "--clients", "50", "--count", "2"];
        let edk2 = plan(addr, &[&args[..], &["--edk2", "--verify", path]].concat());
        let report = run(edk2).await.unwrap();
        assert_eq!(report.failures, Default::default(), "{}", report.to_text());
        assert_eq!(report.transfers_ok, 100);
        assert_eq!(report.bytes, 100 * body.len() as u64);
        assert!(report.goodput_mb_s > 0.0 && report.latency.max_ms > 0.0);
        // The probes were aborted by the client, as EDK2 aborts them.
        assert_eq!(
            counters.transfers_failed(ironboot_net::tftp::TransferFailure::NegotiationAborted),
            100
        );
        let ipxe = plan(addr, &[&args[..], &["--ipxe", "--verify", path]].concat());
        let report = run(ipxe).await.unwrap();
        assert_eq!(report.transfers_ok, 100, "{}", report.to_text());
        shutdown.trigger();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_are_counted_by_reason() {
        let mut files = FileSet::new();
        files.insert("a", content(5000)).unwrap();
        let (addr, _, shutdown) = server(files);
        let dir = tempfile::tempdir().unwrap();
        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, content(4999)).unwrap();
        let p = plan(
            addr,
            &[
                "--file",
                "a",
                "--clients",
                "3",
                "--transfers",
                "7",
                "--verify",
                wrong.to_str().unwrap(),
            ],
        );
        let report = run(p).await.unwrap();
        assert_eq!(report.failures["verify_mismatch"], 7);
        assert_eq!(report.transfers_ok, 0);
        let missing = plan(addr, &["--file", "nope", "--clients", "2", "--edk2"]);
        let report = run(missing).await.unwrap();
        assert_eq!(report.failures["probe_server_error_1"], 2);
        shutdown.trigger();
    }
}
