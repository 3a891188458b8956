//! Real-firmware tests: real network-boot firmware boots end to end from ironboot alone.
//!
//! Runs `tests/firmware/run.sh` and `tests/firmware/storm.sh` (see
//! `tests/firmware/README.md`) against the `ironboot` binary of this package: an isolated
//! LAN of network namespaces with a plain site DHCP server (dnsmasq) and ironboot as the only
//! other server (ProxyDHCP, TFTP and HTTP; the scripts check that nothing else runs in its
//! namespace), then VMs under QEMU (TCG) booting from the network:
//! - `SeaBIOS` + QEMU's e1000 iPXE ROM: ironboot offers `http://10.98.0.3:50042/ipxe/init.ipxe`,
//!   the VM fetches it and its boot script and prints the marker of the inventory's
//!   `[default]` target on its serial console;
//! - OVMF with EDK2's own PXE (arch 7): the VM accepts the offer, does the `ProxyDHCP`
//!   REQUEST/ACK on port 4011, reads `snp.efi` over TFTP from ironboot (OACK blksize 1468,
//!   windowsize 4; DATA from a transfer port, or port 69 with `--tftp-single-port`), which
//!   DHCPs again, fetches init.ipxe and boot.ipxe and prints the marker of its own
//!   `[[machine]]` entry;
//! - a storm of 20 BIOS VMs at once, all of which must reach their marker, after which
//!   `GET /api/v1/machines` lists exactly those 20 UUIDs with their MACs;
//! - Omni mode (`tests/firmware/omni.sh`): ironboot registered with "Omni" (the Go harness
//!   `tests/omni-harness`, the real COSI runtime) answers both firmwares' `boot.ipxe` with
//!   the agent-mode image of an Image Factory stand-in on the LAN: the schematic it POSTs
//!   (once for both) has upstream's agent kernel arguments and extensions, and each VM
//!   fetches `/pxe/<id>/<version>/metal-amd64` from the stand-in, prints its marker and
//!   loads the schematic's `talos.config` URL (`/config?u=<its uuid>`) from ironboot, which
//!   serves Omni's join document.
//!
//! - standalone mode's `/assets/` (`tests/firmware/assets.sh`): a BIOS VM's inventory
//!   entry boots a kernel and an initramfs given as `/assets/...` paths; the VM fetches a
//!   real Debian kernel and an initramfs the script built (busybox and an `/init` with a
//!   per-run token) from ironboot, Linux boots and `/init` prints both the token and the
//!   inventory command line's token on the serial console; refused paths (`..`, absolute,
//!   a symlink out, directories) are 404s counted by reason.
//!
//! The checks are made on packet captures with tshark and through ironboot's HTTP API. The
//! tests need root and the packages of `tests/install-prereqs.sh`; without them they FAIL
//! (never skip) and say what is missing and how to install it. They share one test LAN, so
//! they run one at a time (a lock), whatever the test harness's thread count.

use ironboot_test_support::{go_harness, launch, logs, prereqs};

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/firmware/run.sh");
const STORM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/firmware/storm.sh");
const OMNI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/firmware/omni.sh");
const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/firmware/assets.sh");
/// Where `tests/install-prereqs.sh` puts the Linux kernel and static busybox of the
/// `/assets/` boot.
const LINUX_BOOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.cache-tests/linux-boot");
/// The scripts bound each VM (60 s BIOS, 120 s UEFI, in parallel; 180 s for the storm);
/// this only guards a hang.
const GUARD: Duration = Duration::from_secs(420);
/// VMs booted at once by the storm test.
const STORM_VMS: &str = "20";

/// Commands the script runs, with the Debian package providing each.
const COMMANDS: [(&str, &str); 9] = [
    ("bash", "bash"),
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("dnsmasq", "dnsmasq-base"),
    ("tcpdump", "tcpdump"),
    ("tshark", "tshark"),
    ("python3", "python3"),
    ("curl", "curl"),
];
/// Firmware files the VMs and stand-ins use, with their Debian packages.
const FILES: [(&str, &str); 5] = [
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"),
    ("/usr/share/seabios/bios-256k.bin", "seabios"),
    ("/usr/lib/ipxe/qemu/efi-e1000.rom", "ipxe-qemu"),
    ("/usr/lib/ipxe/snponly.efi", "ipxe"),
];

fn check_prerequisites() {
    if let Some(why) =
        prereqs::missing_prerequisites("the real-firmware test", "real_firmware", &COMMANDS, &FILES)
    {
        panic!("{why}");
    }
}

/// Runs `script` with a guard timeout and these environment variables (besides `PATH`,
/// `IRONBOOT_BIN` and `IBFW_OUT_BASE`); returns (exit code, combined output).
fn run_script(script: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let log_path = tmp.join(format!("real_firmware-{}.log", std::process::id()));
    let log = File::create(&log_path).expect("create the script's log file");
    let path = prereqs::path_env();
    // Debug logging for every ironboot the scripts start; they copy its log into the
    // suite's log directory (IRONBOOT_TEST_LOG_DIR, inherited) for the secret check.
    let mut child = logs::debug_env(&mut Command::new("bash"))
        .arg(script)
        .env("PATH", path)
        .env("IRONBOOT_BIN", launch::binary())
        .env("IBFW_OUT_BASE", tmp.join("firmware-test"))
        .env("PROXY_UNDER_TEST", "ironboot")
        // The scripts' knobs come from the test alone, not from the caller's environment.
        .env_remove("IBFW_VMS")
        .env_remove("IBFW_PREFIX")
        .env_remove("IRONBOOT_ARGS")
        .env_remove("STORM_VMS")
        .env_remove("STORM_TIMEOUT")
        .env_remove("OMNI_HARNESS_BIN")
        .env_remove("ASSETS_TIMEOUT")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if start.elapsed() > GUARD {
            // SIGTERM lets the script's trap stop its processes and delete its namespaces.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    (status.and_then(|s| s.code()), output)
}

/// The tests share the namespaces, the taps' names and the two cores: one at a time.
fn rig() -> MutexGuard<'static, ()> {
    static RIG: Mutex<()> = Mutex::new(());
    RIG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `script` once with this environment; panics with the report on failure.
fn scenario(label: &str, script: &str, env: &[(&str, &str)]) {
    let _rig = rig();
    check_prerequisites();
    let started = Instant::now();
    let (code, output) = run_script(script, env);
    let name = Path::new(script)
        .file_name()
        .map_or_else(|| script.into(), |n| n.to_string_lossy());
    println!(
        "---- tests/firmware/{name} output ({label}, {:.1} s) ----\n{output}---- end of {name} output ----",
        started.elapsed().as_secs_f64()
    );
    let findings: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("FAIL:") || l.contains("SETUP ERROR:"))
        .collect();
    match code {
        Some(0) => {}
        Some(2) => panic!(
            "real-firmware test ({label}): setup error (see the output above):\n{}",
            findings.join("\n")
        ),
        Some(c) => panic!(
            "real-firmware test ({label}) failed ({name} exit {c}); the report with ironboot's \
             stderr, the serial consoles and the captures is in the output above:\n{}",
            findings.join("\n")
        ),
        None => panic!(
            "real-firmware test ({label}): {name} did not finish within {GUARD:?} (or died by a \
             signal)"
        ),
    }
}

/// No --api-advertise-address in any scenario: ironboot must pick the namespace's single
/// routable address.
const BASE_ARGS: &str = "--dhcp-proxy-iface-or-ip eth0 --debug";

/// BIOS and UEFI at once, io_uring UDP driver.
#[test]
fn real_firmware_boots_from_ironboot_io_uring() {
    let args = format!("{BASE_ARGS} --udp-driver io-uring");
    scenario("io_uring driver", SCRIPT, &[("IRONBOOT_ARGS", &args)]);
}

/// BIOS and UEFI at once, portable UDP driver.
#[test]
fn real_firmware_boots_from_ironboot_portable() {
    let args = format!("{BASE_ARGS} --udp-driver portable");
    scenario("portable driver", SCRIPT, &[("IRONBOOT_ARGS", &args)]);
}

/// EDK2 over `--tftp-single-port`: DATA must come from port 69 (UEFI only: the BIOS path
/// has no TFTP).
#[test]
fn real_firmware_tftp_single_port() {
    let args = format!("{BASE_ARGS} --tftp-single-port");
    scenario(
        "--tftp-single-port, UEFI",
        SCRIPT,
        &[("IRONBOOT_ARGS", &args), ("IBFW_VMS", "uefi")],
    );
}

/// 20 BIOS VMs at once; all boot, and ironboot records exactly those 20 machines.
#[test]
fn pxe_storm_of_bios_vms() {
    scenario(
        "storm of 20 BIOS VMs",
        STORM,
        &[
            ("IRONBOOT_ARGS", "--dhcp-proxy-iface-or-ip eth0"),
            ("STORM_VMS", STORM_VMS),
            ("STORM_TIMEOUT", "180"),
        ],
    );
}

/// Omni mode: a BIOS (iPXE ROM) and a UEFI (EDK2) VM unknown to Omni PXE-boot through
/// ironboot and chain to the agent-mode image of the Image Factory stand-in; ironboot
/// registered with the Omni harness and posted one schematic with upstream's agent-mode
/// kernel arguments and extensions (see `tests/firmware/omni.sh`).
#[test]
fn real_firmware_omni_agent_mode_boot() {
    check_prerequisites();
    let harness = go_harness::build("the real-firmware Omni test", "omni-harness", "omniharness");
    let harness = harness
        .to_str()
        .expect("the harness path is UTF-8")
        .to_owned();
    scenario(
        "Omni mode, agent image from the factory stand-in",
        OMNI,
        &[("IRONBOOT_ARGS", BASE_ARGS), ("OMNI_HARNESS_BIN", &harness)],
    );
}

/// Standalone mode with `--use-local-boot-assets`: a BIOS VM boots a real Linux kernel and
/// an initramfs made by the test, both fetched from ironboot's `/assets/` as the inventory
/// names them; the initramfs's `/init` prints its marker on the serial console.
#[test]
fn real_firmware_boots_linux_from_standalone_assets() {
    check_prerequisites();
    let mut missing = Vec::new();
    for (cmd, pkg) in [("cpio", "cpio"), ("gzip", "gzip")] {
        if prereqs::missing_prerequisites("", "real_firmware", &[(cmd, pkg)], &[]).is_some() {
            missing.push(format!("command `{cmd}` (package {pkg})"));
        }
    }
    for file in ["vmlinuz", "busybox"] {
        let path = Path::new(LINUX_BOOT).join(file);
        if !path.is_file() {
            missing.push(format!(
                "{} (Debian's kernel and busybox-static, downloaded there by {})",
                path.display(),
                prereqs::INSTALL_HINT
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "the /assets/ Linux boot test cannot run; missing: {}.\n  install: {}",
        missing.join(", "),
        prereqs::INSTALL_HINT
    );
    scenario(
        "Linux from standalone /assets/",
        ASSETS,
        &[("IRONBOOT_ARGS", BASE_ARGS)],
    );
}
