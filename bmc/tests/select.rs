//! Back-end selection against real peers: an `ipmi_sim` BMC and a sushy-tools Redfish
//! emulator on the same host (127.0.0.1), as a real BMC offers both. Checks the Go
//! provider's rules (API first, Redfish always / when available, else IPMI), that the
//! Redfish settings come from the flags, and that probe answers are cached per host
//! and expire (upstream caches them forever).
//!
//! Needs `ipmi_sim` (openipmi) and the sushy-tools venv of tests/install-prereqs.sh;
//! fails, naming them, when they are missing.

use ironboot_test_support::{ipmi_sim, redfish};
use std::time::Duration;

use ipmi_sim::SimBmc;
use ironboot_bmc::select::{BackendKind, BmcInfo, IpmiInfo, Selector, SelectorOptions};
use ironboot_bmc::{BootMode, PowerControl, PowerState};
use redfish::{Emulator, FakeSystem};

const NODE: &str = "5b1f2a7e-3c4d-4e5f-8a9b-0c1d2e3f4a5b";

fn node(power_on: bool) -> Vec<FakeSystem> {
    vec![FakeSystem {
        uuid: NODE,
        name: "node-sel",
        power_on,
    }]
}

fn info(sim: &SimBmc) -> BmcInfo {
    BmcInfo::Ipmi(IpmiInfo {
        address: "127.0.0.1".into(),
        port: sim.port,
        username: ipmi_sim::USER.into(),
        password: ipmi_sim::PASSWORD.into(),
    })
}

/// Long probe cache lifetimes: an answer is still believed however slow the machine.
const BELIEVED: Duration = Duration::from_secs(300);
/// A short lifetime, for the checks that an answer expires (they wait longer than it).
const SHORT: Duration = Duration::from_secs(1);

fn options(redfish_port: u16) -> SelectorOptions {
    SelectorOptions {
        redfish_port,
        redfish_use_https: false,
        probe_timeout: Duration::from_secs(10),
        probe_ttl_ok: BELIEVED,
        probe_ttl_failed: BELIEVED,
        operation_timeout: Some(Duration::from_secs(10)),
        ..SelectorOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redfish_when_available_with_an_expiring_probe_cache() {
    let sim = SimBmc::start("select-cache");
    sim.wait_ready().await;
    let emu = Emulator::start(&node(true), None, ipmi_sim::PASSWORD);
    let info = info(&sim);
    let refused = with_password(&info, "not-the-password");

    // The first probe fails (Redfish refuses these credentials): IPMI...
    let selector = Selector::new(options(emu.port));
    let b = selector.select(&refused).await.unwrap();
    assert_eq!(b.kind(), BackendKind::Ipmi);
    // ...and the failure is believed for this BMC for a while, whoever asks: the right
    // credentials get IPMI too, without a new probe, and IPMI works.
    let b = selector.select(&info).await.unwrap();
    assert_eq!(b.kind(), BackendKind::Ipmi, "failed probe not cached");
    assert_eq!(b.address(), sim.address());
    let gets = sim.chassis_log().len();
    assert_eq!(b.power_status().await.unwrap(), PowerState::Off);
    assert!(
        sim.chassis_log().len() > gets,
        "the simulator was not asked"
    );

    // Once a failure expires, the BMC is probed again and Redfish is used (waiting
    // longer than the lifetime: expiry does not depend on the machine's speed).
    let quick_to_retry = Selector::new(SelectorOptions {
        probe_ttl_failed: SHORT,
        ..options(emu.port)
    });
    let b = quick_to_retry.select(&refused).await.unwrap();
    assert_eq!(b.kind(), BackendKind::Ipmi);
    tokio::time::sleep(SHORT + Duration::from_millis(100)).await;
    let b = quick_to_retry.select(&info).await.unwrap();
    assert_eq!(b.kind(), BackendKind::Redfish);
    assert_eq!(b.address(), emu.endpoint());
    // The emulator's system is on, the IPMI simulator's chassis off: Redfish answered.
    assert_eq!(b.power_status().await.unwrap(), PowerState::On);
    // The PXE override carries --ipmi-pxe-boot-mode's mode (the selector's) to Redfish.
    b.pxe_boot_once(quick_to_retry.pxe_boot_mode())
        .await
        .unwrap();
    let boot = &emu.raw_system(NODE)["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe", "{boot}");
    assert_eq!(boot["BootSourceOverrideMode"], "UEFI", "{boot}");

    // A success whose lifetime is short, probed while Redfish still answers.
    let quick_to_forget = Selector::new(SelectorOptions {
        probe_ttl_ok: SHORT,
        ..options(emu.port)
    });
    assert_eq!(
        quick_to_forget.select(&info).await.unwrap().kind(),
        BackendKind::Redfish
    );

    // Redfish goes away: the success is believed until it expires, then IPMI again.
    drop(emu);
    assert_eq!(
        quick_to_retry.select(&info).await.unwrap().kind(),
        BackendKind::Redfish,
        "successful probe not cached"
    );
    tokio::time::sleep(SHORT + Duration::from_millis(100)).await;
    assert_eq!(
        quick_to_forget.select(&info).await.unwrap().kind(),
        BackendKind::Ipmi
    );
}

fn with_password(info: &BmcInfo, password: &str) -> BmcInfo {
    match info {
        BmcInfo::Ipmi(i) => BmcInfo::Ipmi(IpmiInfo {
            password: password.into(),
            ..i.clone()
        }),
        BmcInfo::Api { .. } => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redfish_flags_decide() {
    let sim = SimBmc::start("select-flags");
    sim.wait_ready().await;
    let emu = Emulator::start(&node(false), None, ipmi_sim::PASSWORD);
    let info = info(&sim);

    // --redfish-use-when-available=false: IPMI although Redfish answers.
    let off = Selector::new(SelectorOptions {
        redfish_use_when_available: false,
        ..options(emu.port)
    });
    assert_eq!(off.select(&info).await.unwrap().kind(), BackendKind::Ipmi);

    // Redfish refusing the IPMI credentials: the probe fails, IPMI is used.
    let sel = Selector::new(options(emu.port));
    let wrong = with_password(&info, "not-the-password");
    assert_eq!(sel.select(&wrong).await.unwrap().kind(), BackendKind::Ipmi);

    // Nothing speaking Redfish on --redfish-port: IPMI.
    let nobody = Selector::new(options(redfish::free_port()));
    assert_eq!(
        nobody.select(&info).await.unwrap().kind(),
        BackendKind::Ipmi
    );

    // --redfish-use-https against a plain-HTTP service: no Redfish.
    let https = Selector::new(SelectorOptions {
        redfish_use_https: true,
        ..options(emu.port)
    });
    assert_eq!(https.select(&info).await.unwrap().kind(), BackendKind::Ipmi);

    // --redfish-use-always without a probe; --ipmi-pxe-boot-mode bios is Legacy, and
    // --redfish-set-boot-source-override-mode=false leaves the mode alone.
    let always = Selector::new(SelectorOptions {
        redfish_use_always: true,
        redfish_use_when_available: false,
        pxe_boot_mode: BootMode::Bios,
        ..options(emu.port)
    });
    let b = always.select(&info).await.unwrap();
    assert_eq!(b.kind(), BackendKind::Redfish);
    b.pxe_boot_once(always.pxe_boot_mode()).await.unwrap();
    assert_eq!(
        emu.raw_system(NODE)["Boot"]["BootSourceOverrideMode"],
        "Legacy"
    );
    let no_mode = Selector::new(SelectorOptions {
        redfish_use_always: true,
        redfish_set_boot_source_override_mode: false,
        pxe_boot_mode: BootMode::Uefi,
        ..options(emu.port)
    });
    let b = no_mode.select(&info).await.unwrap();
    b.pxe_boot_once(no_mode.pxe_boot_mode()).await.unwrap();
    let boot = &emu.raw_system(NODE)["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe", "{boot}");
    assert_eq!(
        boot["BootSourceOverrideMode"], "Legacy",
        "mode sent anyway: {boot}"
    );

    // An HTTP power API address wins over everything.
    let api = always
        .select(&BmcInfo::Api {
            address: "127.0.0.1:9".into(),
        })
        .await
        .unwrap();
    assert_eq!(api.kind(), BackendKind::Api);
}
