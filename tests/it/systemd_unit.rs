//! `docs/systemd/ironboot.service`, the unit operators install: `systemd-analyze verify`
//! must accept it without a word, and `systemd-analyze security --offline` must find it
//! no more exposed than it was made. `verify` checks that `ExecStart=`'s command exists,
//! so the unit is checked with this build's binary in place of the installed path.
//! Needs `systemd-analyze` (Debian's `systemd`, tests/install-prereqs.sh); no root.
//!
//! No systemd runs the unit here, so the last test plays its sandbox by hand: ironboot as
//! an unprivileged user with only the unit's capabilities, traced while machines boot
//! through it, must make no system call and open no socket family the unit refuses. That
//! one needs root (network namespaces), `setpriv` and `strace`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ironboot_test_support::launch;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/systemd/ironboot.service");

/// Where the unit expects the binary (`install -m 755 ... /usr/local/bin/ironboot`).
const INSTALLED_BINARY: &str = "/usr/local/bin/ironboot";

/// Highest exposure `systemd-analyze security` may give the unit, in tenths (its
/// `--threshold` unit): systemd 252 (Debian bookworm) scores it 1.6. What is left is what
/// a PXE server cannot give up: the host's network, Internet and netlink sockets,
/// CAP_NET_BIND_SERVICE and CAP_NET_ADMIN.
const EXPOSURE_TENTHS: u32 = 16;

fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running systemd-analyze: {e} (Debian's `systemd` package; install it with \
                 tests/install-prereqs.sh)"
            )
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The unit as shipped, with `ExecStart=` naming this build's binary, written into `dir`
/// under its own name.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let shipped = fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("reading {UNIT}: {e}"));
    let exec = format!("\nExecStart={INSTALLED_BINARY} ");
    assert_eq!(
        shipped.matches(&exec).count(),
        1,
        "{UNIT} must have exactly one `ExecStart={INSTALLED_BINARY} ...` line"
    );
    let unit = shipped.replace(&exec, &format!("\nExecStart={} ", launch::binary()));
    let path = dir.join("ironboot.service");
    fs::write(&path, unit).unwrap();
    path
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let out = systemd_analyze(&["verify"], &unit);
    // verify exits 0 on unknown keys and unparsable values (it only logs them), so any
    // output is a failure too.
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify {UNIT} (ExecStart pointed at this build) found problems \
         ({}):\n{}",
        out.status,
        text(&out)
    );
}

#[test]
fn the_unit_is_no_more_exposed_than_it_was_made() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let threshold = format!("--threshold={EXPOSURE_TENTHS}");
    let out = systemd_analyze(&["security", "--offline=yes", &threshold], &unit);
    assert!(
        out.status.success(),
        "systemd-analyze security scores {UNIT} above {}.{} ({}): a hardening setting was \
         lost or loosened. Its report (✗ marks what is exposed):\n{}",
        EXPOSURE_TENTHS / 10,
        EXPOSURE_TENTHS % 10,
        out.status,
        text(&out)
    );
}

/// The values of every `key=` line of the unit, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// The system calls of every `systemd-analyze syscall-filter` group, groups expanded.
fn syscall_groups() -> std::collections::HashMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .expect("running systemd-analyze syscall-filter");
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let item = line.trim();
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') && item.starts_with('@') {
            current = Some(item.to_owned());
            groups.insert(item.to_owned(), Vec::new());
        } else if let Some(g) = &current {
            groups.get_mut(g).unwrap().push(item.to_owned());
        }
    }
    groups
}

fn expand(
    name: &str,
    groups: &std::collections::HashMap<String, Vec<String>>,
) -> std::collections::BTreeSet<String> {
    if !name.starts_with('@') {
        return [name.to_owned()].into();
    }
    let members = groups
        .get(name)
        .unwrap_or_else(|| panic!("systemd-analyze knows no group {name}"));
    members.iter().flat_map(|m| expand(m, groups)).collect()
}

/// ironboot as the unit runs it (an unprivileged user holding only the unit's
/// capabilities, no new privileges, the open-files limit as high as the hard one) boots
/// machines of both firmware kinds, forces its socket buffers, and makes no system call
/// the unit's filter refuses and opens no socket family it restricts: the unit's lists
/// are checked against what the code does. Needs root (namespaces), `setpriv`, `strace`.
#[test]
fn the_units_capabilities_and_filters_are_enough_to_boot_machines() {
    use ironboot_test_support::{netns::VethPair, prereqs, process};
    use std::collections::BTreeSet;

    if let Some(why) = prereqs::missing_prerequisites(
        "the systemd unit's sandbox test",
        "systemd_unit",
        &[
            ("setpriv", "util-linux"),
            ("prlimit", "util-linux"),
            ("strace", "strace"),
            ("systemd-analyze", "systemd"),
            ("ip", "iproute2"),
            ("curl", "curl"),
        ],
        &[("/usr/lib/ipxe/undionly.kpxe", "ipxe")],
    ) {
        panic!("{why}");
    }
    let unit = fs::read_to_string(UNIT).unwrap();
    let ambient = unit_values(&unit, "AmbientCapabilities").join(" ");
    assert_eq!(
        ambient,
        unit_values(&unit, "CapabilityBoundingSet").join(" "),
        "{UNIT}: the bounding set should hold exactly the ambient capabilities"
    );
    let caps = ambient
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let caps = format!("-all,{caps}");
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let wanted: u64 = unit_values(&unit, "LimitNOFILE")[0].parse().unwrap();
    let nofile = wanted.min(hard);

    let net = VethPair::new("su", "a", "10.212.0.1/24", "10.212.0.2/24");
    let state = tempfile::tempdir().unwrap();
    let traces = tempfile::tempdir().unwrap();
    for dir in [state.path(), traces.path()] {
        // nobody:nogroup, the user setpriv runs ironboot as.
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    }
    let trace = traces.path().join("strace");
    let (log, log_path) = ironboot_test_support::logs::ironboot_log("sandboxed");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.server_ns, "prlimit"])
        .arg(format!("--nofile={nofile}:{nofile}"))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(format!("--bounding-set={caps}"))
        .args(["strace", "-f", "-qq", "-o"])
        .arg(&trace)
        .arg(launch::binary())
        .args([
            "--api-advertise-address",
            "10.212.0.1",
            "--dhcp-proxy-iface-or-ip",
            &net.server_if,
            "--state-dir",
        ])
        .arg(state.path())
        .env("PATH", prereqs::path_env())
        .stdin(std::process::Stdio::null())
        .stderr(log);
    ironboot_test_support::logs::debug_env(&mut cmd);
    // `ip netns exec`, prlimit and setpriv exec in turn: the child is strace, and
    // ironboot is strace's child.
    let mut strace = cmd
        .spawn()
        .expect("starting ironboot under setpriv and strace");
    let log_text = || fs::read_to_string(&log_path).unwrap_or_default();
    let healthy = (0..100).any(|_| {
        if matches!(strace.try_wait(), Ok(Some(_))) {
            return false;
        }
        let out = net.exec(
            &net.server_ns,
            "curl",
            &["-sf", "-m", "1", "http://10.212.0.1:50042/healthz"],
            5,
        );
        out.status.success() || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            false
        }
    });
    if !healthy {
        process::stop(&mut strace);
        panic!(
            "ironboot as the unit runs it did not start:\n{}",
            log_text()
        );
    }
    let storm = net.exec(
        &net.client_ns,
        launch::binary(),
        &[
            "storm",
            "pxe",
            "--server",
            "10.212.0.1",
            "--interface",
            &net.client_if,
            "--machines",
            "4",
            "--firmware",
            "mixed",
            "--timeout-scale",
            "0.25",
            "--json",
            "--quiet",
        ],
        50,
    );
    let pid = strace.id();
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        let _ = Command::new("kill").args(["-TERM", child]).status();
    }
    let exited = (0..300).find_map(|_| {
        let status = strace.try_wait().ok().flatten();
        if status.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        status
    });
    process::stop(&mut strace);
    assert!(
        storm.status.success(),
        "4 machines did not boot through ironboot as the unit runs it: {}\n{}\n{}",
        String::from_utf8_lossy(&storm.stdout),
        String::from_utf8_lossy(&storm.stderr),
        log_text()
    );
    assert!(
        exited.is_some_and(|s| s.success()),
        "ironboot did not stop cleanly on SIGTERM ({exited:?}):\n{}",
        log_text()
    );

    let trace = fs::read_to_string(&trace).unwrap();
    let forced: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains("SO_RCVBUFFORCE") || l.contains("SO_SNDBUFFORCE"))
        .collect();
    assert!(
        !forced.is_empty() && forced.iter().all(|l| !l.contains("EPERM")),
        "the unit's capabilities should let ironboot force its socket buffers:\n{}",
        forced.join("\n")
    );

    let groups = syscall_groups();
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for line in unit_values(&unit, "SystemCallFilter") {
        let (set, list) = match line.strip_prefix('~') {
            Some(rest) => (&mut denied, rest),
            None => (&mut allowed, line),
        };
        for name in list.split_whitespace() {
            set.extend(expand(name, &groups));
        }
    }
    let families: BTreeSet<&str> = unit_values(&unit, "RestrictAddressFamilies")
        .iter()
        .flat_map(|l| l.split_whitespace())
        .collect();
    let mut used = BTreeSet::new();
    let mut used_families = BTreeSet::new();
    for line in trace.lines() {
        // `<pid> <name>(...` or `<pid> <... <name> resumed>`.
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        let rest = rest.strip_prefix("<... ").unwrap_or(rest);
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !rest.starts_with("+++") {
            used.insert(name);
        }
        if let Some(at) = rest.strip_prefix("socket(") {
            used_families.insert(at.split(',').next().unwrap_or("").to_owned());
        }
    }
    let refused: Vec<&String> = used
        .iter()
        .filter(|s| !allowed.contains(*s) || denied.contains(*s))
        .collect();
    assert!(
        refused.is_empty(),
        "ironboot made system calls {UNIT}'s SystemCallFilter= refuses: {refused:?}"
    );
    let restricted: Vec<&String> = used_families
        .iter()
        .filter(|f| !families.contains(f.as_str()))
        .collect();
    assert!(
        restricted.is_empty(),
        "ironboot opened sockets of families {UNIT}'s RestrictAddressFamilies= leaves out: \
         {restricted:?}"
    );
}
