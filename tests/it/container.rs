//! The container image operators run: the root `Dockerfile`, built by
//! `tests/container/build.sh` with podman as `localhost/ironboot:test` (once per run of
//! this test binary), run as the Go provider's image is, with host networking, in a
//! network namespace of the test (`podman run --network ns:/run/netns/NAME`; podman is
//! never wrapped in `ip netns exec`, which remounts `/sys` and leaves runc no cgroups).
//!
//! - A BIOS VM (SeaBIOS + QEMU's e1000 iPXE ROM) PXE-boots through the container to its
//!   standalone inventory's script, on the real-firmware tests' LAN
//!   (`tests/firmware/container.sh`, on `tests/firmware/lib.sh` and `topology.sh`): the
//!   VM's serial console, the container's `/metrics` and machine list prove it; the
//!   container's main process is ironboot as uid 10042 with `CAP_NET_BIND_SERVICE` alone
//!   effective (podman's default capabilities); under podman's default seccomp profile
//!   io_uring is refused and each UDP service says once that the portable driver serves.
//! - With `--cap-add NET_ADMIN` the same image also gets `CAP_NET_ADMIN` effective (the 4
//!   MiB UDP buffers forced past `net.core.rmem_max`) and serves `/healthz`.
//!
//! Needs root, podman, runc, mmdebstrap, cargo (the build vendors the crates) and the
//! real-firmware tests' packages (`tests/install-prereqs.sh`); fails, never skips, naming
//! what is missing. Every container is removed and every namespace deleted at the end,
//! failed or not (drop guards).

use std::fs::File;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ironboot_test_support::netns::VethPair;
use ironboot_test_support::{logs, prereqs, repo_root, target_tmpdir};

/// The image `tests/container/build.sh` makes.
const IMAGE: &str = "localhost/ironboot:test";
/// The uid the image's user `ironboot` has.
const IMAGE_UID: u32 = 10042;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
/// The image build compiles ironboot in release mode from scratch when its sources
/// changed; this only guards a hang.
const BUILD_GUARD: Duration = Duration::from_secs(3600);
/// `tests/firmware/container.sh` bounds the VM (90 s); this only guards a hang.
const SCRIPT_GUARD: Duration = Duration::from_secs(300);

/// Commands the suite runs, with their Debian packages.
const COMMANDS: [(&str, &str); 10] = [
    ("podman", "podman"),
    ("runc", "runc"),
    ("mmdebstrap", "mmdebstrap"),
    ("bash", "bash"),
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("dnsmasq", "dnsmasq-base"),
    ("python3", "python3"),
    ("curl", "curl"),
];
/// Firmware files the VM uses.
const FILES: [(&str, &str); 3] = [
    ("/usr/share/seabios/bios-256k.bin", "seabios"),
    ("/usr/lib/ipxe/qemu/efi-e1000.rom", "ipxe-qemu"),
    ("/usr/lib/ipxe/snponly.efi", "ipxe"),
];

fn check_prerequisites() {
    if let Some(why) =
        prereqs::missing_prerequisites("the container test", "container", &COMMANDS, &FILES)
    {
        panic!("{why}");
    }
}

/// podman with the suite's configuration (`tests/container/containers.conf`).
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env(
        "CONTAINERS_CONF",
        repo_root().join("tests/container/containers.conf"),
    )
    .env("PATH", prereqs::path_env())
    .stdin(Stdio::null());
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `child` until it exits or `guard` passes (then SIGTERM, 30 s, SIGKILL); its exit
/// code, `None` if it had to be stopped or died by a signal.
fn wait_guarded(mut child: std::process::Child, guard: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status.code();
        }
        if start.elapsed() > guard {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    return None;
                }
                sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        sleep(Duration::from_millis(200));
    }
}

/// Builds the image once per run of the test binary; every test gets the outcome (the
/// build's output on failure).
fn image() -> &'static str {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let log_path = target_tmpdir().join(format!("container-build-{}.log", std::process::id()));
        let log = File::create(&log_path).expect("create the image build's log");
        let started = Instant::now();
        let child = Command::new("bash")
            .arg(repo_root().join("tests/container/build.sh"))
            .env("PATH", prereqs::path_env())
            .env("IMAGE", IMAGE)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting tests/container/build.sh: {e}"))?;
        let code = wait_guarded(child, BUILD_GUARD);
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        let tail: Vec<&str> = output.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        match code {
            Some(0) => {
                let summary = output
                    .lines()
                    .filter(|l| l.starts_with("[container-build"))
                    .collect::<Vec<_>>()
                    .join("\n");
                println!(
                    "image {IMAGE} ready in {:.0} s:\n{summary}",
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            }
            code => Err(format!(
                "building the image {IMAGE} with tests/container/build.sh failed (exit {code:?}, \
                 None = stopped after {BUILD_GUARD:?}); the end of its output:\n{}",
                tail.join("\n")
            )),
        }
    });
    if let Err(why) = built {
        panic!("{why}");
    }
    IMAGE
}

/// The tests share the two cores and the image: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A container this test named; removed with its anonymous volume when dropped, whether
/// or not it is still running.
struct Container {
    name: String,
}

impl Container {
    /// A name unique to this test process and `label`; a container of that name left by a
    /// crashed run of the same PID is removed first.
    fn named(label: &str) -> Container {
        let container = Container {
            name: format!("ibct-{}-{label}", std::process::id()),
        };
        container.remove();
        container
    }

    fn remove(&self) {
        let _ = podman()
            .args(["rm", "-f", "-v", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The host's PID of the container's main process.
    fn pid(&self) -> u32 {
        let out = podman()
            .args(["inspect", "--format", "{{.State.Pid}}", &self.name])
            .output()
            .expect("running podman inspect");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        pid.parse()
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or_else(|| panic!("{}: no main process ({pid:?}):\n{}", self.name, self.logs()))
    }

    /// Its output so far (ironboot logs to stderr).
    fn logs(&self) -> String {
        podman()
            .args(["logs", &self.name])
            .output()
            .map(|o| text(&o))
            .unwrap_or_else(|e| format!("(podman logs failed: {e})"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The namespaces `tests/firmware/container.sh` makes under `prefix`, deleted when
/// dropped (the script deletes them itself unless it was killed).
struct Topology {
    prefix: String,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("tests/firmware/topology.sh"))
            .args(["down", &self.prefix])
            .env("PATH", prereqs::path_env())
            .stdin(Stdio::null())
            .status();
    }
}

/// `/proc/<pid>/status`'s value of `field` (e.g. `CapEff`).
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {field}"))
}

/// A BIOS VM boots through the image run with podman's defaults (seccomp profile,
/// capabilities) as a host-network container: see `tests/firmware/container.sh`.
#[test]
fn bios_vm_boots_through_the_image_with_default_capabilities() {
    let _serial = serial();
    check_prerequisites();
    let image = image();
    // Dropped in reverse: the container is removed before its namespace is deleted.
    let topology = Topology {
        prefix: format!("ibct{}", std::process::id()),
    };
    let container = Container::named("bios");
    let out_base = target_tmpdir().join("firmware-test");
    let log_path = target_tmpdir().join(format!("container-bios-{}.log", std::process::id()));
    let log = File::create(&log_path).expect("create the script's log");
    let started = Instant::now();
    let child = logs::debug_env(&mut Command::new("bash"))
        .arg(repo_root().join("tests/firmware/container.sh"))
        .env("PATH", prereqs::path_env())
        .env("IRONBOOT_IMAGE", image)
        .env("CONTAINER_NAME", &container.name)
        .env("IBFW_PREFIX", &topology.prefix)
        .env("IBFW_OUT_BASE", &out_base)
        .env("IRONBOOT_ARGS", "--dhcp-proxy-iface-or-ip eth0 --debug")
        .env_remove("CAP_ADD")
        .env_remove("BIOS_TIMEOUT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup the log"))
        .stderr(log)
        .spawn()
        .expect("starting tests/firmware/container.sh");
    let code = wait_guarded(child, SCRIPT_GUARD);
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    println!(
        "---- tests/firmware/container.sh output ({:.1} s) ----\n{output}---- end ----",
        started.elapsed().as_secs_f64()
    );
    let findings: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("FAIL:") || l.contains("SETUP ERROR:"))
        .collect();
    assert_eq!(
        code,
        Some(0),
        "tests/firmware/container.sh failed (exit {code:?}; 2 = setup error, None = stopped \
         after {SCRIPT_GUARD:?}); the report is in the output above:\n{}",
        findings.join("\n")
    );
}

/// With `--cap-add NET_ADMIN` the image's ironboot has both capabilities effective, forces
/// its UDP buffers (no "capped" warning) and serves.
#[test]
fn net_admin_added_is_effective_and_buffers_are_forced() {
    let _serial = serial();
    check_prerequisites();
    let image = image();
    let pair = VethPair::new("ct", "na", "10.77.0.1/24", "10.77.0.2/24");
    let container = Container::named("netadmin");
    let ns = format!("ns:/run/netns/{}", pair.server_ns);
    let run = podman()
        .args(["run", "-d", "--name", &container.name, "--network", &ns])
        .args(["--cap-add", "NET_ADMIN", "-e", "NO_COLOR=1", image])
        .args(["--dhcp-proxy-iface-or-ip", &pair.server_if])
        .args(["--api-advertise-address", "10.77.0.1", "--debug"])
        .output()
        .expect("running podman run");
    assert!(
        run.status.success(),
        "podman run --cap-add NET_ADMIN {image} failed: {}",
        text(&run)
    );
    let pid = container.pid();

    // Served: /healthz from the clients' side of the pair.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = pair.exec(
            &pair.client_ns,
            "curl",
            &["-sS", "--max-time", "2", "http://10.77.0.1:50042/healthz"],
            5,
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container never answered /healthz within 30 s ({}); its log:\n{}",
            text(&out),
            container.logs()
        );
        sleep(Duration::from_millis(300));
    }

    let uid = status_field(pid, "Uid");
    let want_uid = format!("{IMAGE_UID}\t{IMAGE_UID}\t{IMAGE_UID}\t{IMAGE_UID}");
    assert_eq!(uid, want_uid, "ironboot's uids in the container");
    let want = format!(
        "{:016x}",
        (1u64 << CAP_NET_BIND_SERVICE) | (1u64 << CAP_NET_ADMIN)
    );
    for field in ["CapEff", "CapPrm"] {
        assert_eq!(
            status_field(pid, field),
            want,
            "ironboot's {field} with --cap-add NET_ADMIN: NET_BIND_SERVICE and NET_ADMIN"
        );
    }
    assert_eq!(status_field(pid, "CapAmb"), "0000000000000000");

    let log = container.logs();
    // For the suite's secret check, as every ironboot log.
    let (mut file, _) = logs::ironboot_log("netadmin");
    std::io::Write::write_all(&mut file, log.as_bytes()).expect("writing the container's log");
    assert!(
        log.contains("permitted capabilities made effective"),
        "no log line saying the capabilities were made effective:\n{log}"
    );
    assert!(
        !log.contains("UDP socket buffers capped"),
        "buffers capped although NET_ADMIN was granted:\n{log}"
    );
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
}
