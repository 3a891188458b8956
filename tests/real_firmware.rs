//! Real-firmware `ProxyDHCP` test: real network-boot firmware must accept ironboot's offers.
//!
//! Runs `tests/firmware/run.sh` (see `tests/firmware/README.md`) against the `ironboot`
//! binary of this package: an isolated LAN of network namespaces with a plain site DHCP server
//! (dnsmasq) and ironboot as the `ProxyDHCP` server, then two VMs under QEMU (TCG) booting at once
//! from the network:
//! - `SeaBIOS` + QEMU's e1000 iPXE ROM: ironboot offers `http://10.98.0.3:50042/ipxe/init.ipxe`,
//!   the VM fetches it (HTTP stand-in) and prints a marker on its serial console;
//! - OVMF with EDK2's own PXE (arch 7): the VM accepts the offer, does the `ProxyDHCP`
//!   REQUEST/ACK on port 4011 and asks for `snp.efi` over TFTP (stand-in: iPXE, which then
//!   DHCPs again, fetches init.ipxe and prints the marker).
//!
//! The checks are made on per-VM packet captures with tshark. The test needs root and the
//! packages of `tests/install-prereqs.sh`; without them it FAILS (it never skips) and says
//! what is missing and how to install it.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/firmware/run.sh");
const IRONBOOT: &str = env!("CARGO_BIN_EXE_ironboot");
const INSTALL_HINT: &str = "sudo tests/install-prereqs.sh";
/// The script bounds each VM (60 s BIOS, 120 s UEFI, in parallel); this only guards a hang.
const GUARD: Duration = Duration::from_secs(420);
/// Directories searched besides `PATH` (a non-login root shell may lack the sbin ones).
const EXTRA_PATH: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Commands the script runs, with the Debian package providing each.
const COMMANDS: [(&str, &str); 8] = [
    ("bash", "bash"),
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("dnsmasq", "dnsmasq-base"),
    ("tcpdump", "tcpdump"),
    ("tshark", "tshark"),
    ("python3", "python3"),
];
/// Firmware files the VMs and stand-ins use, with their Debian packages.
const FILES: [(&str, &str); 5] = [
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"),
    ("/usr/share/seabios/bios-256k.bin", "seabios"),
    ("/usr/lib/ipxe/qemu/efi-e1000.rom", "ipxe-qemu"),
    ("/usr/lib/ipxe/snponly.efi", "ipxe"),
];

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(EXTRA_PATH.iter().map(PathBuf::from));
    dirs
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Everything missing to run the test, as (what, package) pairs.
fn missing_prerequisites() -> Vec<(String, &'static str)> {
    let dirs = search_path();
    let mut missing = Vec::new();
    for (cmd, pkg) in COMMANDS {
        if !dirs.iter().any(|d| is_executable(&d.join(cmd))) {
            missing.push((format!("command `{cmd}`"), pkg));
        }
    }
    for (file, pkg) in FILES {
        if !Path::new(file).exists() {
            missing.push((format!("file {file}"), pkg));
        }
    }
    missing
}

fn check_prerequisites() {
    if let Some(uid) = effective_uid().filter(|&uid| uid != 0) {
        panic!(
            "the real-firmware test must run as root (network namespaces, taps, packet \
             captures), not as uid {uid}: run e.g. \
             `sudo -E env PATH=\"$PATH\" cargo test --test real_firmware`"
        );
    }
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let what: Vec<&str> = missing.iter().map(|(w, _)| w.as_str()).collect();
        let mut pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
        pkgs.sort_unstable();
        pkgs.dedup();
        panic!(
            "the real-firmware test cannot run; missing: {}.\n  install everything: {INSTALL_HINT}\n  \
             or just these: apt-get install -y --no-install-recommends {}",
            what.join(", "),
            pkgs.join(" ")
        );
    }
}

/// Runs the script with a guard timeout and ironboot's arguments; returns (exit code,
/// combined output).
fn run_script(ironboot_args: &str) -> (Option<i32>, String) {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let log_path = tmp.join(format!("real_firmware-{}.log", std::process::id()));
    let log = File::create(&log_path).expect("create the script's log file");
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    for extra in EXTRA_PATH {
        path.push(":");
        path.push(extra);
    }
    let mut child = Command::new("bash")
        .arg(SCRIPT)
        .env("PATH", path)
        .env("IRONBOOT_BIN", IRONBOOT)
        .env("PROXY_UNDER_TEST", "ironboot")
        .env("IRONBOOT_ARGS", ironboot_args)
        .env("IBFW_OUT_BASE", tmp.join("firmware-test"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log file"))
        .stderr(log)
        .spawn()
        .expect("start tests/firmware/run.sh");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for run.sh") {
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

/// Runs the whole firmware scenario once with these ironboot arguments; panics with the
/// report on failure.
fn scenario(label: &str, ironboot_args: &str) {
    let (code, output) = run_script(ironboot_args);
    println!(
        "---- tests/firmware/run.sh output ({label}) ----\n{output}---- end of run.sh output ----"
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
            "real-firmware test ({label}) failed (run.sh exit {c}); the report with ironboot's \
             stderr, the serial consoles and the captures is in the output above:\n{}",
            findings.join("\n")
        ),
        None => panic!(
            "real-firmware test ({label}): run.sh did not finish within {GUARD:?} (or died by a \
             signal)"
        ),
    }
}

/// Both UDP drivers, one after the other (the VMs of one run already load both cores).
/// No --api-advertise-address: ironboot must pick the namespace's single routable address.
#[test]
fn real_firmware_accepts_ironboot_proxydhcp_offers() {
    check_prerequisites();
    scenario(
        "io_uring driver",
        "--dhcp-proxy-iface-or-ip eth0 --debug --udp-driver io-uring",
    );
    scenario(
        "portable driver",
        "--dhcp-proxy-iface-or-ip eth0 --debug --udp-driver portable",
    );
}
