//! The fleet executor against real simulated BMCs (`ipmi_sim`, one process each), a
//! "hung" BMC (a UDP socket that never answers) and a "lying" one (answers every
//! datagram with garbage), plus a UDP relay in front of simulators that records when
//! each IPMI session (one client socket per operation) talks, to see on the wire that
//! one BMC never has two sessions at once and that the fleet bound holds. Also a
//! simulator frozen (SIGSTOP) in the middle of a session, once open and once right
//! after it carried out a power cycle: the operation fails in its bound naming the
//! BMC, a healthy BMC is served meanwhile, and nothing destructive runs twice.
//!
//! Needs `ipmi_sim` (Debian package `openipmi`); fails, naming it, when it is missing.

use ironboot_test_support::{ipmi_sim, udp_relay};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipmi_sim::SimBmc;
use ironboot_bmc::fleet::{Fleet, FleetError, FleetOptions, Operation, Outcome};
use ironboot_bmc::ipmi::{IpmiClient, IpmiConfig};
use ironboot_bmc::{BootMode, PowerControl, PowerState};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use udp_relay::{Dir, Relay, Verdict};

/// Starts `n` simulators and waits until each answers.
async fn sims(prefix: &str, n: usize) -> Vec<SimBmc> {
    let sims: Vec<SimBmc> = (0..n)
        .map(|i| SimBmc::start(&format!("{prefix}{i}")))
        .collect();
    for s in &sims {
        s.wait_ready().await;
    }
    sims
}

/// A UDP peer at `127.0.0.1:PORT` that never answers, or answers garbage.
struct FakePeer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl FakePeer {
    async fn start(lying: bool) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut n: u8 = 0;
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if lying {
                    // An RMCP header, then nonsense of the request's length.
                    n = n.wrapping_add(37);
                    let mut reply = vec![0x06, 0x00, 0xff, 0x07];
                    reply.extend((0..len).map(|i| n.wrapping_mul(i as u8 | 1)));
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        FakePeer { port, task }
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ipmi(port: u16, timeout: Duration) -> IpmiClient {
    let mut cfg = IpmiConfig::new("127.0.0.1", ipmi_sim::USER, ipmi_sim::PASSWORD);
    cfg.port = port;
    cfg.timeout = timeout;
    cfg.attempt_timeout = Duration::from_millis(500);
    IpmiClient::new(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_and_a_lying_bmc_delay_nobody_and_then_back_off() {
    let sims = sims("fleet-hung-", 5).await;
    let hung = FakePeer::start(false).await;
    let lying = FakePeer::start(true).await;
    let bound = Duration::from_secs(5);
    let fleet = Fleet::new(FleetOptions {
        concurrency: 3,
        operation_timeout: bound,
        backoff_base: Duration::from_secs(60),
        backoff_max: Duration::from_secs(120),
    });
    // The IPMI clients' own bound (and retransmissions) last longer than the fleet's
    // bound: the fleet cuts them off.
    let patient_bound = Duration::from_secs(20);
    let patient = |port| {
        let mut cfg = IpmiConfig::new("127.0.0.1", ipmi_sim::USER, ipmi_sim::PASSWORD);
        cfg.port = port;
        cfg.timeout = patient_bound;
        cfg.attempt_timeout = Duration::from_millis(500);
        cfg.retries = 100;
        IpmiClient::new(cfg).unwrap()
    };
    let hung_addr = fleet.insert(patient(hung.port));
    let lying_addr = fleet.insert(patient(lying.port));
    for s in &sims {
        fleet.insert(ipmi(s.port, Duration::from_secs(20)));
    }
    let gets_before: Vec<usize> = sims.iter().map(|s| s.chassis_log().len()).collect();

    // The bad ones first in the list.
    let mut jobs = vec![
        (hung_addr.clone(), Operation::Status),
        (lying_addr.clone(), Operation::Status),
    ];
    jobs.extend(sims.iter().map(|s| (s.address(), Operation::Status)));
    let reports = fleet.run_many(jobs.clone()).await;
    assert_eq!(reports.len(), 7);

    let hung_report = &reports[0];
    assert_eq!(hung_report.bmc, hung_addr);
    match &hung_report.result {
        Err(FleetError::Timeout { bmc, .. }) => assert_eq!(bmc, &hung_addr),
        other => panic!("hung BMC: {other:?}"),
    }
    // Cut off by the fleet's bound, not by the client's own (much longer) one.
    assert!(
        hung_report.elapsed >= bound && hung_report.elapsed < patient_bound,
        "hung BMC cut off after {:?}",
        hung_report.elapsed
    );
    let hung_deadline = hung_report.finished_at;
    let lie = reports[1]
        .result
        .as_ref()
        .expect_err("the lying BMC cannot succeed");
    assert_eq!(lie.bmc(), lying_addr, "{lie}");
    assert!(
        reports[1].elapsed < patient_bound,
        "lying BMC ran for {:?}",
        reports[1].elapsed
    );

    for (report, s) in reports[2..].iter().zip(&sims) {
        assert_eq!(report.bmc, s.address());
        assert!(
            matches!(report.result, Ok(Outcome::Power(PowerState::Off))),
            "{}: {:?}",
            s.name,
            report.result
        );
        // Finished within its own bound and before the hung BMC's bound ran out.
        assert!(report.elapsed < bound, "{}: {:?}", s.name, report.elapsed);
        assert!(
            report.finished_at < hung_deadline,
            "{} finished {:?} after the hung BMC was cut off",
            s.name,
            report.finished_at - hung_deadline
        );
    }
    for (s, before) in sims.iter().zip(gets_before) {
        assert!(
            s.chassis_log()[before..]
                .iter()
                .any(|l| l.starts_with("get power")),
            "{}: the simulator was not asked: {:?}",
            s.name,
            s.chassis_log()
        );
    }
    // The two bad BMCs were driven at the same time, not one after the other: each
    // one's operation started before the other's ended.
    let started = |r: &ironboot_bmc::fleet::Report| r.finished_at - r.elapsed;
    assert!(
        started(&reports[1]) < reports[0].finished_at
            && started(&reports[0]) < reports[1].finished_at,
        "the hung and the lying BMC were driven one after the other"
    );

    // Next sweep: the failed two are backing off and answer at once; the rest work.
    let health = fleet.health(&hung_addr).unwrap();
    assert_eq!(health.failures, 1);
    // At least half the 60 s base (equal jitter), less the time since the failure.
    assert!(health.retry_in >= Duration::from_secs(10), "{health:?}");
    let again = fleet.run_many(jobs).await;
    for r in &again[..2] {
        match &r.result {
            Err(FleetError::BackingOff {
                bmc,
                failures: 1,
                last_error,
                ..
            }) => {
                assert_eq!(bmc, &r.bmc);
                assert!(!last_error.is_empty());
            }
            other => panic!("{}: {other:?}", r.bmc),
        }
        assert_eq!(r.elapsed, Duration::ZERO);
    }
    assert!(again[2..].iter().all(|r| r.result.is_ok()), "{again:?}");
    // Clearing the backoff lets it be tried (and fail) again.
    fleet.clear_backoff(&hung_addr);
    assert_eq!(fleet.health(&hung_addr).unwrap().failures, 0);
}

/// When each relayed client socket (one per IPMI operation) sent datagrams.
#[derive(Default)]
struct Wire {
    /// (relay id, client port) -> times of the client's datagrams.
    sends: HashMap<(usize, u16), Vec<Instant>>,
    /// RMCP+ Open Session Requests seen: one per session, whatever client port it used
    /// (the OS may give a later session the port of one already closed).
    opens: usize,
}

/// An RMCP+ Open Session Request: the RMCP header of an IPMI message, authentication type
/// RMCP+ (6), payload type 0x10. Sent once at the start of each session, in the clear.
fn is_open_session_request(datagram: &[u8]) -> bool {
    datagram.len() > 5
        && datagram[..4] == [0x06, 0x00, 0xff, 0x07]
        && datagram[4] == 0x06
        && datagram[5] & 0x3f == 0x10
}

impl Wire {
    /// Each client port's [first, last] datagram, per relay: one session each, unless the
    /// OS gave two sessions the same port (they then show as one, spanning both, which
    /// can only make [`Wire::max_overlap`] higher).
    fn sessions(&self) -> Vec<(usize, Instant, Instant)> {
        let mut out: Vec<(usize, Instant, Instant)> = self
            .sends
            .iter()
            .map(|(&(relay, _), times)| (relay, times[0], *times.last().unwrap()))
            .collect();
        out.sort_by_key(|s| s.1);
        out
    }

    /// Most sessions (of relay `only`, or of all) active at one moment.
    fn max_overlap(&self, only: Option<usize>) -> usize {
        let mut events = Vec::new();
        for (relay, a, b) in self.sessions() {
            if only.is_none_or(|o| o == relay) {
                events.push((a, 1i32));
                events.push((b, -1i32));
            }
        }
        // Ends before starts at the same instant: touching is not overlapping.
        events.sort_by_key(|&(t, d)| (t, d));
        let (mut now, mut max) = (0, 0);
        for (_, d) in events {
            now += d;
            max = max.max(now);
        }
        max as usize
    }
}

/// A UDP relay in front of one simulator: delays every reply by `delay` (so sessions
/// last long enough to overlap if anything lets them) and records client datagrams.
async fn relay(
    id: usize,
    target: u16,
    delay: Duration,
    wire: Arc<Mutex<Wire>>,
) -> (u16, tokio::task::JoinHandle<()>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = front.local_addr().unwrap().port();
    let target: SocketAddr = ([127, 0, 0, 1], target).into();
    let task = tokio::spawn(async move {
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut tasks = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((len, client)) = front.recv_from(&mut buf).await {
            {
                let mut wire = wire.lock().unwrap();
                wire.sends
                    .entry((id, client.port()))
                    .or_default()
                    .push(Instant::now());
                if is_open_session_request(&buf[..len]) {
                    wire.opens += 1;
                }
            }
            let back = match backs.get(&client) {
                Some(b) => Arc::clone(b),
                None => {
                    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    backs.insert(client, Arc::clone(&b));
                    let (b2, front2) = (Arc::clone(&b), Arc::clone(&front));
                    tasks.push(tokio::spawn(async move {
                        let mut buf = [0u8; 2048];
                        while let Ok((len, _)) = b2.recv_from(&mut buf).await {
                            tokio::time::sleep(delay).await;
                            let _ = front2.send_to(&buf[..len], client).await;
                        }
                    }));
                    b
                }
            };
            let _ = back.send_to(&buf[..len], target).await;
        }
        for t in tasks {
            t.abort();
        }
    });
    (port, task)
}

struct Relays(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Relays {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bmc_never_has_two_sessions_and_the_fleet_bound_holds() {
    let sims = sims("fleet-serial-", 4).await;
    let wire = Arc::new(Mutex::new(Wire::default()));
    let delay = Duration::from_millis(25);
    let mut ports = Vec::new();
    let mut relays = Relays(Vec::new());
    for (i, s) in sims.iter().enumerate() {
        let (port, task) = relay(i, s.port, delay, Arc::clone(&wire)).await;
        ports.push(port);
        relays.0.push(task);
    }
    let timeout = Duration::from_secs(10);

    // The measurement can see overlap: two direct clients at once on relay 0 overlap.
    let a = ipmi(ports[0], timeout);
    let b = ipmi(ports[0], timeout);
    let (ra, rb) = tokio::join!(a.power_status(), b.power_status());
    ra.unwrap();
    rb.unwrap();
    assert_eq!(
        wire.lock().unwrap().max_overlap(Some(0)),
        2,
        "control: direct clients overlap"
    );
    *wire.lock().unwrap() = Wire::default();

    // Through the fleet: four operations on BMC 0 asked at once from separate tasks.
    let fleet = Fleet::new(FleetOptions {
        concurrency: 8,
        operation_timeout: timeout,
        ..FleetOptions::default()
    });
    let addr0 = fleet.insert(ipmi(ports[0], timeout));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (fleet, addr) = (fleet.clone(), addr0.clone());
        tasks.push(tokio::spawn(async move {
            fleet.run(&addr, Operation::Status).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.result.is_ok(), "{:?}", r.result);
    }
    {
        let w = wire.lock().unwrap();
        assert_eq!(w.opens, 4, "a session per operation");
        assert_eq!(w.max_overlap(Some(0)), 1, "two sessions at once on one BMC");
    }

    // Operations on one BMC given together run in the order given (chassis log).
    let before = sims[0].changes().len();
    let reports = fleet
        .run_many([
            (addr0.clone(), Operation::On),
            (addr0.clone(), Operation::Status),
            (addr0.clone(), Operation::Off),
            (addr0.clone(), Operation::PxeOnce(BootMode::Uefi)),
        ])
        .await;
    assert!(reports.iter().all(|r| r.result.is_ok()), "{reports:?}");
    assert!(matches!(
        reports[1].result,
        Ok(Outcome::Power(PowerState::On))
    ));
    assert_eq!(
        sims[0].changes()[before..],
        ["set power 1", "set power 0", "set boot pxe"]
    );
    assert_eq!(wire.lock().unwrap().max_overlap(Some(0)), 1);

    // The fleet bound: 4 BMCs, 3 operations each, at most 2 sessions at once overall,
    // and really 2 at once (the sweep is concurrent).
    *wire.lock().unwrap() = Wire::default();
    let fleet = Fleet::new(FleetOptions {
        concurrency: 2,
        operation_timeout: timeout,
        ..FleetOptions::default()
    });
    let addrs: Vec<String> = ports
        .iter()
        .map(|&p| fleet.insert(ipmi(p, timeout)))
        .collect();
    let jobs: Vec<(String, Operation)> = (0..3)
        .flat_map(|_| addrs.iter().map(|a| (a.clone(), Operation::Status)))
        .collect();
    let reports = fleet.run_many(jobs).await;
    assert!(reports.iter().all(|r| r.result.is_ok()), "{reports:?}");
    let w = wire.lock().unwrap();
    assert_eq!(w.opens, 12, "a session per operation");
    assert_eq!(w.max_overlap(None), 2, "fleet bound of 2");
    for relay in 0..4 {
        assert_eq!(w.max_overlap(Some(relay)), 1, "BMC {relay}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_members_are_reported_and_replacing_keeps_the_bmc_lock() {
    let sims = sims("fleet-misc-", 1).await;
    let fleet = Fleet::new(FleetOptions::default());
    let r = fleet.run("127.0.0.1:1", Operation::Status).await;
    assert!(
        matches!(r.result, Err(FleetError::Unknown { .. })),
        "{:?}",
        r.result
    );
    let addr = fleet.insert(ipmi(sims[0].port, Duration::from_secs(5)));
    assert_eq!(
        fleet.insert(ipmi(sims[0].port, Duration::from_secs(5))),
        addr
    );
    assert_eq!(fleet.addresses(), std::slice::from_ref(&addr));
    let sweep = fleet.sweep_status().await;
    assert_eq!(sweep.len(), 1);
    assert!(matches!(
        sweep[0].result,
        Ok(Outcome::Power(PowerState::Off))
    ));
    assert!(fleet.remove(&addr));
    assert!(!fleet.remove(&addr));
}

/// Where in a power cycle's session the simulator is frozen.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FreezeAt {
    /// When the client's first datagram inside the session (Set Session Privilege
    /// Level) arrives: it is passed on and queues up behind the frozen process.
    SessionOpen,
    /// When the simulator has carried out the power cycle, before its reply gets out
    /// (the reply is lost).
    AfterTheCycle,
}

/// A BMC that hangs mid-session: its simulator is frozen (SIGSTOP) at `at`. The power
/// cycle fails within the client's bound with an error naming the BMC and `step`; the
/// fleet serves a healthy BMC all the while; once the simulator runs again (SIGCONT)
/// and works off everything queued for it, its chassis log shows `cycles` power
/// cycles (each `set power 0` then `set power 1`), never more.
async fn frozen_mid_session(at: FreezeAt, step: &str, cycles: usize) {
    let sims = sims("fleet-frozen-", 2).await;
    let (frozen, healthy) = (&sims[0], &sims[1]);
    frozen.set_power(true);
    let (pid, log) = (frozen.pid(), frozen.log_reader());
    let froze = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&froze);
    let relay = Relay::start(frozen.port, move |dir, datagram| {
        use std::sync::atomic::Ordering::SeqCst;
        if flag.load(SeqCst) {
            return Verdict::Forward;
        }
        let (now, verdict) = match at {
            FreezeAt::SessionOpen => (
                dir == Dir::Up && udp_relay::in_session(datagram),
                Verdict::Forward,
            ),
            FreezeAt::AfterTheCycle => (
                dir == Dir::Down && log().iter().any(|l| l == "set power 0"),
                Verdict::Drop,
            ),
        };
        if now {
            ipmi_sim::signal(pid, "-STOP");
            flag.store(true, SeqCst);
            return verdict;
        }
        Verdict::Forward
    })
    .await;
    let bound = Duration::from_secs(3);
    let fleet = Fleet::new(FleetOptions {
        concurrency: 2,
        operation_timeout: Duration::from_secs(30),
        ..FleetOptions::default()
    });
    // The client's own bound (3 s) is the per-operation bound here; retries without
    // limit inside it.
    let mut cfg = IpmiConfig::new("127.0.0.1", ipmi_sim::USER, ipmi_sim::PASSWORD);
    cfg.port = relay.port;
    cfg.timeout = bound;
    cfg.attempt_timeout = Duration::from_millis(300);
    cfg.retries = 100;
    let frozen_addr = fleet.insert(IpmiClient::new(cfg).unwrap());
    let healthy_addr = fleet.insert(ipmi(healthy.port, Duration::from_secs(20)));
    let before = frozen.changes().len();

    let cycle = {
        let (fleet, addr) = (fleet.clone(), frozen_addr.clone());
        tokio::spawn(async move { fleet.run(&addr, Operation::Cycle).await })
    };
    // Serve the healthy BMC until the frozen one's operation has ended.
    let mut served = Vec::new();
    while !cycle.is_finished() {
        served.push(fleet.run(&healthy_addr, Operation::Status).await);
    }
    let report = cycle.await.unwrap();
    assert!(
        froze.load(std::sync::atomic::Ordering::SeqCst),
        "never froze"
    );

    let err = match &report.result {
        Err(FleetError::Bmc(e)) => e,
        other => panic!("frozen BMC: {other:?}"),
    };
    assert!(
        matches!(err, ironboot_bmc::BmcError::Timeout { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains(&frozen_addr), "{text}");
    assert!(text.contains(step), "{text}");
    assert!(report.elapsed >= bound, "{:?}", report.elapsed);
    // Generous: the bound plus scheduling on a loaded machine.
    assert!(
        report.elapsed < bound + Duration::from_secs(10),
        "{:?}",
        report.elapsed
    );

    eprintln!(
        "frozen BMC failed after {:?}: {text}; the healthy BMC served {} operations meanwhile",
        report.elapsed,
        served.len()
    );
    assert!(!served.is_empty());
    for r in &served {
        assert!(
            matches!(r.result, Ok(Outcome::Power(PowerState::Off))),
            "healthy BMC: {:?}",
            r.result
        );
    }
    assert!(
        served[0].finished_at < report.finished_at,
        "the healthy BMC waited for the frozen one"
    );

    ipmi_sim::signal(pid, "-CONT");
    drop(relay);
    let want: Vec<&str> = ["set power 0", "set power 1"].repeat(cycles);
    // ipmi_sim powers on again by itself after its cycle delay; then nothing more.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = frozen.changes().split_off(before);
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "frozen BMC after SIGCONT: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A status read after it: by then every queued datagram has been worked off.
    let direct = ipmi(frozen.port, Duration::from_secs(20));
    assert_eq!(direct.power_status().await.unwrap(), PowerState::On);
    assert_eq!(
        frozen.changes().split_off(before),
        want,
        "a destructive command was repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_hanging_after_a_power_cycle_fails_in_its_bound_and_cycles_once() {
    frozen_mid_session(
        FreezeAt::AfterTheCycle,
        "Get Chassis Status (after Chassis Control (power cycle) went unanswered)",
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_hanging_once_the_session_is_open_fails_in_its_bound_and_never_cycles() {
    frozen_mid_session(
        FreezeAt::SessionOpen,
        "Set Session Privilege Level (administrator)",
        0,
    )
    .await;
}
