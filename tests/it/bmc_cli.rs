//! `ironboot bmc` end to end: the built binary against real simulated BMCs, OpenIPMI's
//! `ipmi_sim` and sushy-tools' Redfish emulator (plain and behind TLS with a
//! self-signed certificate). Effects are checked on the simulators (chassis-control
//! log, the emulator's system resource and log), not only on exit codes and output.
//!
//! Needs `ipmi_sim` (openipmi) and the sushy-tools venv of tests/install-prereqs.sh;
//! fails, naming them, when they are missing.

use ironboot_test_support::{ipmi_sim, launch, logs, redfish};

use std::process::Output;
use std::time::{Duration, Instant};

use ipmi_sim::SimBmc;
use redfish::{Emulator, FakeSystem, Tls};
use serde_json::Value;

const PW_VAR: &str = "IRONBOOT_TEST_BMC_PASSWORD";
const NODE: &str = "9d3c1e2f-4a5b-4c6d-8e7f-0a1b2c3d4e5f";

/// Runs `ironboot bmc ARGS` with debug logging and the password variable set to
/// `password` (or unset); its output is kept in the suite's log directory too, and the
/// password recorded as a secret no log line may carry, unless it is too short or too
/// common to be looked for without matching by chance (`ipmi_sim`'s fixture password, the
/// word "password", names the flag in legitimate messages; "wrong", the empty one).
fn bmc(args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = launch::command();
    cmd.arg("bmc").args(args);
    match password {
        Some(p) => {
            if p != ipmi_sim::PASSWORD && p.len() >= 8 {
                logs::record_secret("BMC password", p);
            }
            cmd.env(PW_VAR, p)
        }
        None => cmd.env_remove(PW_VAR),
    };
    let out = cmd.output().expect("running ironboot");
    let (mut log, _) = logs::ironboot_log(args.first().copied().unwrap_or("bmc"));
    std::io::Write::write_all(&mut log, &[&out.stdout[..], &out.stderr[..]].concat())
        .expect("writing the bmc command's log");
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON object printed on stdout.
fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn ipmi_args<'a>(target: &'a str, op: &'a str) -> Vec<&'a str> {
    vec![
        op,
        "--ipmi",
        target,
        "--user",
        ipmi_sim::USER,
        "--password-env",
        PW_VAR,
    ]
}

/// The chassis-log lines (without status reads) added since `before`.
fn new_changes(sim: &SimBmc, before: usize) -> Vec<String> {
    sim.changes()[before..].to_vec()
}

#[test]
fn ipmi_every_operation_lands_on_the_simulator() {
    let sim = SimBmc::start("cli-ipmi");
    sim.wait_ready_blocking();
    let target = sim.address();

    let mut args = ipmi_args(&target, "status");
    args.push("--json");
    let out = bmc(&args, Some(ipmi_sim::PASSWORD));
    let v = json_of(ok(&out));
    assert_eq!(v["bmc"], target.as_str());
    assert_eq!(v["backend"], "ipmi");
    assert_eq!(v["operation"], "status");
    assert_eq!(v["ok"], true);
    assert_eq!(v["power"], "off");
    assert!(sim.chassis_log().iter().any(|l| l.starts_with("get power")));

    let before = sim.changes().len();
    let mut args = ipmi_args(&target, "on");
    // ipmi_sim does not answer Get Channel Cipher Suites: naming the suite skips the ask.
    args.extend(["--cipher-suite", "3"]);
    let out = bmc(&args, Some(ipmi_sim::PASSWORD));
    assert!(text(&ok(&out).stdout).contains(&target));
    assert_eq!(new_changes(&sim, before), ["set power 1"]);
    let out = bmc(&ipmi_args(&target, "status"), Some(ipmi_sim::PASSWORD));
    assert_eq!(
        text(&ok(&out).stdout).trim(),
        format!("{target} (ipmi): power on")
    );

    let before = sim.changes().len();
    let mut args = ipmi_args(&target, "off");
    args.extend(["--wait", "--json"]);
    let v = json_of(ok(&bmc(&args, Some(ipmi_sim::PASSWORD))));
    assert_eq!(
        (v["operation"].as_str(), v["power"].as_str()),
        (Some("off"), Some("off"))
    );
    assert_eq!(new_changes(&sim, before), ["set power 0"]);

    let before = sim.changes().len();
    let mut args = ipmi_args(&target, "pxe-once");
    args.extend(["--mode", "bios", "--json"]);
    let v = json_of(ok(&bmc(&args, Some(ipmi_sim::PASSWORD))));
    assert_eq!(v["mode"], "bios");
    assert_eq!(new_changes(&sim, before), ["set boot pxe"]);

    ok(&bmc(&ipmi_args(&target, "on"), Some(ipmi_sim::PASSWORD)));
    let before = sim.changes().len();
    ok(&bmc(&ipmi_args(&target, "cycle"), Some(ipmi_sim::PASSWORD)));
    let changes = new_changes(&sim, before);
    assert_eq!(
        changes.first().map(String::as_str),
        Some("set power 0"),
        "{changes:?}"
    );
}

#[test]
fn ipmi_failures_name_the_bmc_and_fail() {
    let mut sim = SimBmc::start("cli-ipmi-fail");
    sim.wait_ready_blocking();
    let target = sim.address();

    // Wrong password: authentication error, exit 1, the BMC named.
    let mut args = ipmi_args(&target, "on");
    args.push("--json");
    let out = bmc(&args, Some("not-the-password"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v = json_of(&out);
    assert_eq!(
        (v["ok"].as_bool(), v["error_kind"].as_str()),
        (Some(false), Some("auth_rejected"))
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(&target) && err.contains("authentication"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password leaked: {err}"
    );
    assert!(sim.changes().is_empty(), "{:?}", sim.changes());

    // Unset and empty variables, and no --password-env at all: usage errors naming it.
    let out = bmc(&ipmi_args(&target, "status"), None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(PW_VAR) && err.contains("not set") && err.contains(&target),
        "{err}"
    );
    let out = bmc(&ipmi_args(&target, "status"), Some(""));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(&format!("{PW_VAR} is empty")));
    let out = bmc(
        &["status", "--ipmi", &target, "--user", "admin"],
        Some(ipmi_sim::PASSWORD),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--password-env"));
    // The password flag does not exist.
    let out = bmc(&["status", "--ipmi", &target, "--password", "x"], None);
    assert_eq!(out.status.code(), Some(2));

    // A stopped simulator: a timeout naming the address, within the bound.
    sim.stop();
    let mut args = ipmi_args(&target, "status");
    args.extend(["--timeout", "2s", "--json"]);
    let started = Instant::now();
    let out = bmc(&args, Some(ipmi_sim::PASSWORD));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    assert_eq!(v["error_kind"], "timeout", "{v}");
    assert!(v["error"].as_str().unwrap().contains(&target), "{v}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "gave up after {took:?}"
    );
}

fn node(power_on: bool) -> Vec<FakeSystem> {
    vec![FakeSystem {
        uuid: NODE,
        name: "node-cli",
        power_on,
    }]
}

/// Polls the emulator until the system's power state reads `want` (sushy applies
/// changes 1-11 s after the request).
fn await_power(emu: &Emulator, want: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let now = emu.raw_system(NODE)["PowerState"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "power state stays {now}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn redfish_operations_land_on_the_emulator() {
    let password = "cli-redfish-pw";
    let emu = Emulator::start(&node(false), None, password);
    let url = emu.endpoint();
    let args = |op: &'static str| -> Vec<String> {
        [
            op,
            "--redfish",
            &url,
            "--user",
            redfish::USER,
            "--password-env",
            PW_VAR,
            "--timeout",
            "30s",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run = |op: &'static str, extra: &[&str]| -> Output {
        let mut a = args(op);
        a.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        bmc(&a, Some(password))
    };

    let v = json_of(ok(&run("status", &["--json"])));
    assert_eq!(
        (v["backend"].as_str(), v["power"].as_str()),
        (Some("redfish"), Some("off"))
    );
    assert_eq!(v["bmc"], url.as_str());

    let v = json_of(ok(&run("on", &["--wait", "--json"])));
    assert_eq!(v["power"], "on");
    assert_eq!(emu.raw_system(NODE)["PowerState"], "On");
    assert_eq!(emu.resets_logged(), ["On"]);

    ok(&run("pxe-once", &["--mode", "bios"]));
    let boot = &emu.raw_system(NODE)["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe", "{boot}");
    assert_eq!(boot["BootSourceOverrideMode"], "Legacy", "{boot}");
    ok(&run("pxe-once", &[]));
    assert_eq!(
        emu.raw_system(NODE)["Boot"]["BootSourceOverrideMode"],
        "UEFI"
    );

    ok(&run("cycle", &[]));
    assert_eq!(emu.resets_logged()[1], "ForceRestart");

    let out = run("off", &[]);
    assert!(text(&ok(&out).stdout).contains("power off accepted"));
    await_power(&emu, "Off");
    assert_eq!(emu.resets_logged()[2..], ["ForceOff"]);

    // Wrong password: exit 1, the URL named.
    let a = args("status");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = bmc(&a, Some("wrong"));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&url) && err.contains("authentication"),
        "{err}"
    );
}

#[test]
fn redfish_tls_is_verified_unless_insecure() {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .expect("self-signed certificate");
    let tls = Tls {
        cert_pem: key.cert.pem(),
        key_pem: key.signing_key.serialize_pem(),
    };
    let password = "cli-tls-pw";
    let emu = Emulator::start(&node(true), Some(tls), password);
    let url = emu.endpoint();
    assert!(url.starts_with("https://"));
    let base = [
        "status",
        "--redfish",
        url.as_str(),
        "--user",
        redfish::USER,
        "--password-env",
        PW_VAR,
        "--json",
    ];

    let out = bmc(&base, Some(password));
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    assert_eq!(v["ok"], false);
    let err = v["error"].as_str().unwrap().to_lowercase();
    assert!(err.contains(&url) && err.contains("certificate"), "{err}");

    let mut insecure = base.to_vec();
    insecure.push("--insecure");
    let v = json_of(ok(&bmc(&insecure, Some(password))));
    assert_eq!(v["power"], "on");
}

#[test]
fn the_http_power_api_needs_no_password_and_refusals_name_it() {
    // Nothing listens on this port: unreachable, named, exit 1.
    let port = redfish::free_port();
    let target = format!("127.0.0.1:{port}");
    let out = bmc(
        &[
            "status",
            "--api",
            &format!("http://{target}/"),
            "--timeout",
            "2s",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&target), "{err}");
    // Two BMCs at once is a usage error.
    let out = bmc(&["status", "--api", &target, "--ipmi", "127.0.0.1"], None);
    assert_eq!(out.status.code(), Some(2));
}
