//! The IPMI client against real BMC simulators: OpenIPMI's `ipmi_sim`, several at once,
//! each on its own loopback port with its own state directory and chassis-control log.
//! Every operation is checked on what the simulator's chassis script was told, not
//! only on our return values. Also: wrong credentials, a stopped simulator (timeout
//! within the bound), cipher suite fallback, session cleanup (80 operations in a row),
//! retransmission through a relay that loses every third datagram, a Chassis Control
//! whose reply is lost (acted on once, although ipmi_sim executes every copy it gets)
//! and the cipher suite answer remembered per BMC address.
//!
//! ipmi_sim grants an RMCP+ session whatever privilege it asks for, whatever the
//! user's limit in lan.conf (a user limited to `operator` still gets administrator and
//! may power the chassis), so the check that the BMC granted administrator is tested
//! against a peer that grants less, in `bmc/src/ipmi/client.rs`.
//!
//! ipmi_sim stores neither the valid nor the EFI bit of boot parameter 5 and logs both
//! PXE modes as `set boot pxe`; the bytes for each mode are unit-tested in
//! `bmc/src/ipmi/cmd.rs`.
//!
//! Needs `ipmi_sim` (Debian package `openipmi`); fails, naming it, when it is missing.
//! Files: `tests/data/ipmi/{lan.conf.in, bmc.emu, chassis.sh}`.

use ironboot_test_support::{ipmi_sim, udp_relay};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipmi_sim::SimBmc;
use ironboot_bmc::ipmi::{CipherSuite, IpmiClient, IpmiConfig};
use ironboot_bmc::{BmcError, BootMode, PowerControl, PowerState};
use udp_relay::{Dir, Relay, Verdict};

/// This file's client settings: suite 3 pinned, 10 s bound, 3 retries, `password`.
fn config(sim: &SimBmc, password: &str) -> IpmiConfig {
    let mut cfg = sim.config(Duration::from_secs(10));
    cfg.password = password.to_owned();
    cfg.retries = 3;
    cfg.cipher_suite = Some(CipherSuite::Suite3);
    cfg
}

fn client(sim: &SimBmc) -> IpmiClient {
    IpmiClient::new(config(sim, ipmi_sim::PASSWORD)).expect("valid config")
}

/// Runs `op` and returns the chassis-log lines it added that are not status reads
/// (`get ...`).
async fn changes(sim: &SimBmc, op: impl Future<Output = Result<(), BmcError>>) -> Vec<String> {
    let before = sim.changes().len();
    op.await.unwrap_or_else(|e| panic!("{}: {e}", sim.name));
    sim.changes().split_off(before)
}

/// Runs `op` (`what`), checks the chassis changes it made and, when given, the power
/// state read back afterwards.
async fn step(
    sim: &SimBmc,
    bmc: &IpmiClient,
    what: &str,
    op: impl Future<Output = Result<(), BmcError>>,
    want: &[&str],
    then: Option<PowerState>,
) {
    let name = &sim.name;
    assert_eq!(changes(sim, op).await, want, "{name}: {what}");
    if let Some(state) = then {
        assert_eq!(
            bmc.power_status().await.expect("status"),
            state,
            "{name}: status after {what}"
        );
    }
}

/// Every operation on one simulated BMC, checked on its chassis-control log.
async fn exercise(sim: SimBmc) {
    sim.wait_ready().await;
    let bmc = client(&sim);
    let name = &sim.name;
    assert_eq!(
        bmc.power_status().await.expect("status"),
        PowerState::Off,
        "{name}"
    );
    let (on, off) = (Some(PowerState::On), Some(PowerState::Off));
    step(&sim, &bmc, "on", bmc.power_on(), &["set power 1"], on).await;
    step(&sim, &bmc, "off", bmc.power_off(), &["set power 0"], off).await;
    step(&sim, &bmc, "on", bmc.power_on(), &["set power 1"], None).await;

    let before_cycle = sim.changes().len();
    let cycle = changes(&sim, bmc.power_cycle()).await;
    assert_eq!(
        cycle.first().map(String::as_str),
        Some("set power 0"),
        "{name}: cycle {cycle:?}"
    );
    // ipmi_sim powers back on by itself after its power-cycle delay.
    let until = Instant::now() + Duration::from_secs(8);
    loop {
        let after = sim.changes().split_off(before_cycle);
        if after == ["set power 0", "set power 1"] {
            break;
        }
        assert!(
            Instant::now() < until,
            "{name}: cycle did not end powered on: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        bmc.power_status().await.expect("status"),
        PowerState::On,
        "{name}"
    );

    step(
        &sim,
        &bmc,
        "reset",
        bmc.hard_reset(),
        &["set reset 1"],
        None,
    )
    .await;
    let pxe = ["set boot pxe"];
    let uefi = bmc.pxe_boot_once(BootMode::Uefi);
    step(&sim, &bmc, "pxe-once uefi", uefi, &pxe, None).await;
    let bios = bmc.pxe_boot_once(BootMode::Bios);
    step(&sim, &bmc, "pxe-once bios", bios, &pxe, None).await;
    let none = bmc.reset_boot_override();
    step(&sim, &bmc, "no override", none, &["set boot none"], None).await;
    assert_eq!(bmc.negotiated_cipher_suite(), Some(CipherSuite::Suite3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_three_simulated_bmcs_at_once() {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=3 {
        let sim = SimBmc::start(&format!("bmc{i}"));
        tasks.spawn(exercise(sim));
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a simulated BMC's checks failed");
    }
}

#[tokio::test]
async fn wrong_password_or_user_is_auth_rejected() {
    let sim = SimBmc::start("bmc-auth");
    sim.wait_ready().await;
    let bmc = IpmiClient::new(config(&sim, "not-the-password")).expect("valid config");
    let err = bmc.power_status().await.expect_err("must be refused");
    assert!(matches!(err, BmcError::AuthRejected { .. }), "{err}");
    assert_eq!(err.bmc(), sim.address());
    assert!(err.to_string().contains(&sim.address()), "{err}");

    let mut cfg = config(&sim, ipmi_sim::PASSWORD);
    cfg.username = "nobody".to_owned();
    let err = IpmiClient::new(cfg)
        .expect("valid config")
        .power_on()
        .await
        .expect_err("unknown user");
    assert!(matches!(err, BmcError::AuthRejected { .. }), "{err}");
    assert!(
        !sim.chassis_log().iter().any(|l| l.starts_with("set ")),
        "a refused login changed the chassis: {:?}",
        sim.chassis_log()
    );
    // The refused attempts leave the BMC usable.
    client(&sim)
        .power_status()
        .await
        .expect("status with the right password");
}

#[tokio::test]
async fn stopped_simulator_times_out_within_the_bound_naming_the_address() {
    let mut sim = SimBmc::start("bmc-stopped");
    sim.wait_ready().await;
    sim.stop();
    let mut cfg = config(&sim, ipmi_sim::PASSWORD);
    cfg.timeout = Duration::from_millis(1500);
    cfg.attempt_timeout = Duration::from_millis(200);
    cfg.retries = 100;
    let bmc = IpmiClient::new(cfg).expect("valid config");
    let started = Instant::now();
    let err = bmc.power_on().await.expect_err("nobody answers");
    let took = started.elapsed();
    assert!(matches!(err, BmcError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains(&sim.address()), "{err}");
    assert!(err.to_string().contains("Open Session"), "{err}");
    // Never before the bound; after it only by scheduling delay (generous: the
    // retries alone would take 100 x 200 ms).
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "took {took:?} for a 1.5 s bound"
    );
}

#[tokio::test]
async fn cipher_suite_selection_falls_back_to_3() {
    let sim = SimBmc::start("bmc-suites");
    sim.wait_ready().await;
    // Asking: ipmi_sim does not answer Get Channel Cipher Suites; suite 3 it is.
    let mut cfg = config(&sim, ipmi_sim::PASSWORD);
    cfg.cipher_suite = None;
    let asking = IpmiClient::new(cfg).expect("valid config");
    assert_eq!(
        asking.power_status().await.expect("status"),
        PowerState::Off
    );
    assert_eq!(asking.negotiated_cipher_suite(), Some(CipherSuite::Suite3));
    // Preferring 17: ipmi_sim refuses its algorithms at Open Session; suite 3 it is.
    let mut cfg = config(&sim, ipmi_sim::PASSWORD);
    cfg.cipher_suite = Some(CipherSuite::Suite17);
    let preferring = IpmiClient::new(cfg).expect("valid config");
    assert_eq!(changes(&sim, preferring.power_on()).await, ["set power 1"]);
    assert_eq!(
        preferring.negotiated_cipher_suite(),
        Some(CipherSuite::Suite3)
    );
}

/// ipmi_sim refuses a new session (RMCP+ status 0x01) once about 63 are open, so 80
/// operations in a row only pass if each one closes its session.
#[tokio::test]
async fn sessions_are_closed_so_many_operations_in_a_row_work() {
    let sim = SimBmc::start("bmc-sessions");
    sim.wait_ready().await;
    let bmc = client(&sim);
    for i in 0..80 {
        bmc.power_status()
            .await
            .unwrap_or_else(|e| panic!("operation {i}: {e}"));
    }
}

/// A loopback UDP relay between the client and a simulator that drops every
/// `drop_every`-th datagram in each direction. Returns its port and the drop counter.
async fn lossy_relay(
    sim_port: u16,
    drop_every: usize,
) -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("relay front");
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("relay back");
    back.connect(("127.0.0.1", sim_port))
        .await
        .expect("relay connect");
    let port = front.local_addr().expect("relay address").port();
    let dropped = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    let task = tokio::spawn(async move {
        let (mut up, mut down) = (0usize, 0usize);
        let mut client = None;
        let mut a = [0u8; 2048];
        let mut b = [0u8; 2048];
        loop {
            tokio::select! {
                got = front.recv_from(&mut a) => {
                    let Ok((n, from)) = got else { return };
                    client = Some(from);
                    up += 1;
                    if up % drop_every == 0 {
                        counter.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let _ = back.send(&a[..n]).await;
                    }
                }
                got = back.recv(&mut b) => {
                    let Ok(n) = got else { continue };
                    down += 1;
                    if down % drop_every == 0 {
                        counter.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(to) = client {
                        let _ = front.send_to(&b[..n], to).await;
                    }
                }
            }
        }
    });
    (port, dropped, task)
}

#[tokio::test]
async fn lost_datagrams_are_retransmitted() {
    let sim = SimBmc::start("bmc-lossy");
    sim.wait_ready().await;
    let (port, dropped, relay) = lossy_relay(sim.port, 3).await;
    let mut cfg = config(&sim, ipmi_sim::PASSWORD);
    cfg.port = port;
    cfg.attempt_timeout = Duration::from_millis(200);
    cfg.retries = 5;
    let bmc = IpmiClient::new(cfg).expect("valid config");
    // Every third datagram lost each way: each operation needs several retransmissions
    // and, when a RAKP 4 is lost, a second handshake.
    assert_eq!(
        bmc.power_status().await.expect("status through loss"),
        PowerState::Off
    );
    bmc.power_on().await.expect("power on through loss");
    assert_eq!(
        bmc.power_status().await.expect("status through loss"),
        PowerState::On
    );
    assert!(
        sim.chassis_log().iter().any(|l| l == "set power 1"),
        "{:?}",
        sim.chassis_log()
    );
    assert!(
        dropped.load(std::sync::atomic::Ordering::Relaxed) >= 5,
        "the relay dropped too little to test anything"
    );
    relay.abort();
}

/// Waits (up to 15 s) until the simulator's chassis changes since `from` are `want`.
async fn await_changes(sim: &SimBmc, from: usize, want: &[&str]) {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let got = sim.changes().split_off(from);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "{}: chassis changes {got:?}, expected {want:?}",
            sim.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `action` through a relay that loses the BMC's first datagram sent after the
/// chassis script logged `effect` (the reply to the Chassis Control that caused it),
/// and returns the chassis changes once `settled` (the last change the action makes)
/// was seen, plus how many replies the relay lost.
async fn with_lost_reply(
    name: &str,
    power_on: bool,
    effect: &'static str,
    action: impl AsyncFnOnce(&IpmiClient) -> Result<(), BmcError>,
    want: &[&str],
) {
    let sim = SimBmc::start(name);
    sim.wait_ready().await;
    sim.set_power(power_on);
    let log = sim.log_reader();
    let lost = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&lost);
    let relay = Relay::start(sim.port, move |dir, _| {
        if dir == Dir::Down
            && counter.load(Ordering::SeqCst) == 0
            && log().iter().any(|l| l == effect)
        {
            counter.fetch_add(1, Ordering::SeqCst);
            Verdict::Drop
        } else {
            Verdict::Forward
        }
    })
    .await;
    let mut cfg = config(&sim, ipmi_sim::PASSWORD);
    cfg.port = relay.port;
    cfg.attempt_timeout = Duration::from_millis(300);
    let bmc = IpmiClient::new(cfg).expect("valid config");
    let before = sim.changes().len();
    action(&bmc)
        .await
        .unwrap_or_else(|e| panic!("{name}: the action must succeed despite the lost reply: {e}"));
    assert_eq!(lost.load(Ordering::SeqCst), 1, "{name}: no reply was lost");
    await_changes(&sim, before, want).await;
    // Whatever the client sent is answered by now; give the simulator a moment to act
    // on anything still queued, then check that nothing more happened.
    bmc.power_status().await.expect("status after");
    await_changes(&sim, before, want).await;
}

/// A Chassis Control whose reply is lost is not simply sent again: the chassis state
/// tells that it took effect, so a simulator that executes every copy it gets
/// (ipmi_sim does not discard duplicates) still cycles, powers on or off only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_chassis_control_reply_never_repeats_the_action() {
    with_lost_reply(
        "bmc-lost-cycle",
        true,
        "set power 0",
        async |b| b.power_cycle().await,
        &["set power 0", "set power 1"],
    )
    .await;
    with_lost_reply(
        "bmc-lost-on",
        false,
        "set power 1",
        async |b| b.power_on().await,
        &["set power 1"],
    )
    .await;
    with_lost_reply(
        "bmc-lost-off",
        true,
        "set power 0",
        async |b| b.power_off().await,
        &["set power 0"],
    )
    .await;
}

/// ipmi_sim does not answer Get Channel Cipher Suites: the first operation pays one
/// attempt timeout for the silence, and the answer ("none") is remembered for the BMC
/// address, so later operations, even from new clients, do not ask again.
#[tokio::test]
async fn an_unanswered_cipher_suite_query_is_asked_once_per_bmc() {
    let sim = SimBmc::start("bmc-suite-cache");
    sim.wait_ready().await;
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let relay = Relay::start(sim.port, move |dir, datagram| {
        if dir == Dir::Up && udp_relay::is_cipher_suites_request(datagram) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Verdict::Forward
    })
    .await;
    let client = |ttl| {
        let mut cfg = config(&sim, ipmi_sim::PASSWORD);
        cfg.port = relay.port;
        cfg.cipher_suite = None;
        cfg.suite_cache_ttl = ttl;
        IpmiClient::new(cfg).expect("valid config")
    };
    for i in 0..3 {
        // A new client each time, as the selector builds one per operation.
        let bmc = client(ironboot_bmc::ipmi::DEFAULT_SUITE_CACHE_TTL);
        let started = Instant::now();
        assert_eq!(
            bmc.power_status().await.expect("status"),
            PowerState::Off,
            "operation {i}"
        );
        eprintln!("remembered: operation {i} took {:?}", started.elapsed());
        assert_eq!(bmc.negotiated_cipher_suite(), Some(CipherSuite::Suite3));
        assert_eq!(asked.load(Ordering::SeqCst), 1, "after operation {i}");
    }
    // The control: with nothing remembered (a zero lifetime), every operation asks.
    for i in 1..=2 {
        let bmc = client(Duration::ZERO);
        let started = Instant::now();
        bmc.power_status().await.expect("status");
        eprintln!("not remembered: operation {i} took {:?}", started.elapsed());
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1 + i,
            "zero lifetime, operation {i}"
        );
    }
}
