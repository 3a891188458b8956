//! The Redfish back end against a real Redfish service: sushy-tools' emulator with its
//! fake driver (one emulator per test, on its own port). Power changes land on the
//! emulator 1-11 s after the request, so every change is polled to completion.

use ironboot_test_support::redfish;
use std::time::Duration;

use ironboot_bmc::redfish::{ProbeReport, ResetType, probe};
use ironboot_bmc::{
    BmcError, BootMode, PowerControl, PowerState, RedfishClient, RedfishConfig,
    wait_for_power_state,
};
use redfish::{Emulator, FakeSystem, Tls, USER};

/// The emulator user's password.
const PASSWORD: &str = "redfish-test-password";
const NODE0: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";
const NODE1: &str = "8cb5a3b4-1d2e-4b8f-9f0a-2a3b4c5d6e7f";
/// sushy applies a power change after at most 11 s.
const SETTLE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(250);

fn one(power_on: bool) -> Vec<FakeSystem> {
    vec![FakeSystem {
        uuid: NODE0,
        name: "node-0",
        power_on,
    }]
}

fn client(emu: &Emulator) -> RedfishClient {
    RedfishClient::new(RedfishConfig::new(emu.endpoint(), USER, PASSWORD)).unwrap()
}

async fn power_of(emu: &Emulator) -> String {
    served_system(emu, NODE0).await["PowerState"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The system resource as the emulator serves it, read without our client (over TLS
/// too, unlike the harness's plain-HTTP [`Emulator::raw_system`]).
async fn served_system(emu: &Emulator, uuid: &str) -> serde_json::Value {
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = http
        .get(format!("{}/redfish/v1/Systems/{uuid}", emu.endpoint()))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .expect("GET system from the emulator");
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.expect("system JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_on_from_off_is_polled_to_completion() {
    let emu = Emulator::start(&one(false), None, PASSWORD);
    let bmc = client(&emu);
    assert_eq!(bmc.power_status().await.unwrap(), PowerState::Off);
    bmc.power_on().await.unwrap();
    wait_for_power_state(&bmc, PowerState::On, SETTLE, POLL)
        .await
        .unwrap();
    assert_eq!(power_of(&emu).await, "On");
    assert_eq!(emu.resets_logged(), ["On"]);
    assert_eq!(
        bmc.system_uri().as_deref(),
        Some(format!("/redfish/v1/Systems/{NODE0}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_off_from_on_is_a_force_off() {
    let emu = Emulator::start(&one(true), None, PASSWORD);
    let bmc = client(&emu);
    assert_eq!(bmc.power_status().await.unwrap(), PowerState::On);
    bmc.power_off().await.unwrap();
    wait_for_power_state(&bmc, PowerState::Off, SETTLE, POLL)
        .await
        .unwrap();
    assert_eq!(power_of(&emu).await, "Off");
    assert_eq!(emu.resets_logged(), ["ForceOff"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cycle_of_a_running_machine_is_a_force_restart() {
    let emu = Emulator::start(&one(true), None, PASSWORD);
    let bmc = client(&emu);
    bmc.power_cycle().await.unwrap();
    // sushy shows a pending restart as Off until it lands (after 0-11 s: too soon to
    // assert on), then On.
    wait_for_power_state(&bmc, PowerState::On, SETTLE, POLL)
        .await
        .unwrap();
    assert_eq!(power_of(&emu).await, "On");
    assert_eq!(emu.resets_logged(), ["ForceRestart"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cycle_of_a_machine_that_is_off_powers_it_on() {
    let emu = Emulator::start(&one(false), None, PASSWORD);
    let bmc = client(&emu);
    bmc.power_cycle().await.unwrap();
    wait_for_power_state(&bmc, PowerState::On, SETTLE, POLL)
        .await
        .unwrap();
    assert_eq!(emu.resets_logged(), ["On"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pxe_once_uefi_and_legacy_then_reset_override() {
    let emu = Emulator::start(&one(false), None, PASSWORD);
    let bmc = client(&emu);
    let boot = |v: serde_json::Value| {
        (
            v["Boot"]["BootSourceOverrideTarget"]
                .as_str()
                .unwrap()
                .to_owned(),
            v["Boot"]["BootSourceOverrideMode"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    };
    assert_eq!(boot(served_system(&emu, NODE0).await).0, "Hdd");

    bmc.pxe_boot_once(BootMode::Uefi).await.unwrap();
    assert_eq!(
        boot(served_system(&emu, NODE0).await),
        ("Pxe".to_owned(), "UEFI".to_owned())
    );

    bmc.pxe_boot_once(BootMode::Bios).await.unwrap();
    assert_eq!(
        boot(served_system(&emu, NODE0).await),
        ("Pxe".to_owned(), "Legacy".to_owned())
    );
    // Our reading agrees with the raw one (Enabled always reads "Continuous" on sushy).
    let ours = bmc.boot_override().await.unwrap();
    assert_eq!(ours.target.as_deref(), Some("Pxe"));
    assert_eq!(ours.mode.as_deref(), Some("Legacy"));

    // --redfish-set-boot-source-override-mode=false: the mode is left alone.
    let mut cfg = RedfishConfig::new(emu.endpoint(), USER, PASSWORD);
    cfg.set_boot_source_override_mode = false;
    let no_mode = RedfishClient::new(cfg).unwrap();
    bmc.reset_boot_override().await.unwrap();
    assert_eq!(boot(served_system(&emu, NODE0).await).0, "None");
    no_mode.pxe_boot_once(BootMode::Uefi).await.unwrap();
    assert_eq!(
        boot(served_system(&emu, NODE0).await),
        ("Pxe".to_owned(), "Legacy".to_owned())
    );

    bmc.reset_boot_override().await.unwrap();
    assert_eq!(boot(served_system(&emu, NODE0).await).0, "None");
    let log = emu.log();
    assert!(log.contains(r#"Set boot mode to "UEFI""#), "{log}");
    assert!(log.contains(r#"Set boot mode to "Legacy""#), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_reset_types_are_reported() {
    let emu = Emulator::start(&one(false), None, PASSWORD);
    let bmc = client(&emu);

    // Advertised by sushy but refused with 501 and a Redfish error body: its message
    // reaches our error.
    let err = bmc.reset(ResetType::Nmi).await.unwrap_err();
    assert!(
        matches!(err, BmcError::Unsupported { .. }),
        "{err:?} should be Unsupported"
    );
    let text = err.to_string();
    assert!(text.contains("Power state Nmi is not supported"), "{text}");
    assert!(text.contains("501"), "{text}");
    assert!(text.contains(&emu.endpoint()), "{text}");

    // Not among ResetType@Redfish.AllowableValues: refused without a request, naming
    // what the BMC allows.
    let err = bmc.reset(ResetType::PowerCycle).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BmcError::Unsupported { .. }), "{err:?}");
    assert!(text.contains("PowerCycle"), "{text}");
    assert!(
        text.contains(
            "[On, ForceOff, GracefulShutdown, GracefulRestart, ForceRestart, Nmi, ForceOn]"
        ),
        "{text}"
    );
    // The emulator saw the Nmi request, and no PowerCycle one.
    let posts = emu
        .log()
        .lines()
        .filter(|l| l.contains("POST") && l.contains("ComputerSystem.Reset"))
        .count();
    assert_eq!(posts, 1, "{}", emu.log());

    // An allowed type goes through exactly.
    bmc.reset(ResetType::ForceOn).await.unwrap();
    wait_for_power_state(&bmc, PowerState::On, SETTLE, POLL)
        .await
        .unwrap();
    assert_eq!(emu.resets_logged(), ["ForceOn"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_auth_rejected_and_probe_tells() {
    let emu = Emulator::start(&one(false), None, PASSWORD);
    let bad = RedfishClient::new(RedfishConfig::new(emu.endpoint(), USER, "wrong")).unwrap();
    let err = bad.power_status().await.unwrap_err();
    assert!(matches!(err, BmcError::AuthRejected { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("Incorrect username or password"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");

    let err = probe(
        RedfishConfig::new(emu.endpoint(), USER, "wrong"),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BmcError::AuthRejected { .. }), "{err:?}");

    let report = probe(
        RedfishConfig::new(emu.endpoint(), USER, PASSWORD),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        report,
        ProbeReport {
            redfish_version: Some("1.5.0".to_owned()),
            systems: vec![format!("/redfish/v1/Systems/{NODE0}")],
        }
    );

    // Nothing listening: unreachable, quickly.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = std::time::Instant::now();
    let err = probe(
        RedfishConfig::new(format!("http://127.0.0.1:{closed}"), USER, PASSWORD),
        Duration::from_secs(3),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BmcError::Unreachable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_is_chosen_by_uuid_or_the_choice_is_explained() {
    let emu = Emulator::start(
        &[
            FakeSystem {
                uuid: NODE0,
                name: "node-0",
                power_on: false,
            },
            FakeSystem {
                uuid: NODE1,
                name: "node-1",
                power_on: true,
            },
        ],
        None,
        PASSWORD,
    );
    // Two systems, no UUID: an error listing both.
    let err = client(&emu).power_status().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BmcError::Protocol { .. }), "{err:?}");
    assert!(
        text.contains(NODE0) && text.contains(NODE1) && text.contains("2 systems"),
        "{text}"
    );

    // By UUID (case-insensitive): node-1 is on, node-0 off.
    let mut cfg = RedfishConfig::new(emu.endpoint(), USER, PASSWORD);
    cfg.system_id = Some(NODE1.to_uppercase());
    let bmc = RedfishClient::new(cfg).unwrap();
    assert_eq!(bmc.power_status().await.unwrap(), PowerState::On);
    assert_eq!(
        bmc.system_uri().as_deref(),
        Some(format!("/redfish/v1/Systems/{NODE1}").as_str())
    );
    let mut cfg = RedfishConfig::new(emu.endpoint(), USER, PASSWORD);
    cfg.system_id = Some(NODE0.to_owned());
    let bmc0 = RedfishClient::new(cfg).unwrap();
    assert_eq!(bmc0.power_status().await.unwrap(), PowerState::Off);

    let mut cfg = RedfishConfig::new(emu.endpoint(), USER, PASSWORD);
    cfg.system_id = Some("00000000-0000-0000-0000-000000000000".to_owned());
    let err = RedfishClient::new(cfg)
        .unwrap()
        .power_status()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no system has UUID 00000000") && text.contains(NODE0),
        "{text}"
    );
}

fn self_signed() -> Tls {
    let key =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
    Tls {
        cert_pem: key.cert.pem(),
        key_pem: key.signing_key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_self_signed_certificate() {
    let tls = self_signed();
    let cert_pem = tls.cert_pem.clone();
    let emu = Emulator::start(&one(false), Some(tls), PASSWORD);
    assert!(emu.endpoint().starts_with("https://"));

    // Verification on: refused, saying why.
    let err = client(&emu).power_status().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BmcError::Unreachable { .. }), "{err:?}");
    assert!(
        text.to_lowercase().contains("certificate"),
        "the error should say it is the certificate: {text}"
    );
    let err = probe(
        RedfishConfig::new(emu.endpoint(), USER, PASSWORD),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BmcError::Unreachable { .. }), "{err:?}");

    // Verification off: works, every step.
    let mut cfg = RedfishConfig::new(emu.endpoint(), USER, PASSWORD);
    cfg.insecure_skip_tls_verify = true;
    let bmc = RedfishClient::new(cfg).unwrap();
    assert_eq!(bmc.power_status().await.unwrap(), PowerState::Off);
    bmc.pxe_boot_once(BootMode::Uefi).await.unwrap();
    assert_eq!(
        served_system(&emu, NODE0).await["Boot"]["BootSourceOverrideTarget"],
        "Pxe"
    );

    // Verification on, with the certificate trusted: works too.
    let mut cfg = RedfishConfig::new(emu.endpoint(), USER, PASSWORD);
    cfg.ca_certificates_pem = vec![cert_pem.into_bytes()];
    let trusted = RedfishClient::new(cfg).unwrap();
    assert_eq!(trusted.power_status().await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_that_never_answers_times_out_naming_the_url() {
    // A socket that accepts and then says nothing: a hung BMC.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(3));
        drop(conns);
    });
    let mut cfg = RedfishConfig::new(format!("http://127.0.0.1:{port}"), USER, PASSWORD);
    cfg.timeout = Duration::from_millis(500);
    let bmc = RedfishClient::new(cfg).unwrap();
    let started = std::time::Instant::now();
    let err = bmc.power_status().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, BmcError::Timeout { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("GET http://127.0.0.1:{port}/redfish/v1/")),
        "{text}"
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    hold.join().unwrap();
}
