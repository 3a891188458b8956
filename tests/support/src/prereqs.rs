//! Helpers shared by the real-peer test suites: prerequisite checks that fail (never
//! skip) naming what is missing and how to install it, and the `PATH` they run with.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where Debian keeps dnsmasq, tcpdump and friends; plain user `PATH`s lack them.
pub const EXTRA_PATH: [&str; 2] = ["/usr/sbin", "/sbin"];

/// How to install everything the suite needs.
pub const INSTALL_HINT: &str = "sudo tests/install-prereqs.sh";

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `PATH` with [`EXTRA_PATH`] appended, for the commands the tests start.
pub fn path_env() -> OsString {
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    for extra in EXTRA_PATH {
        path.push(":");
        path.push(extra);
    }
    path
}

/// Why `what` (a test binary, e.g. "the real-firmware test") cannot run: not root, or
/// missing `commands` / `files`, each given with its Debian package. `None` if it can.
pub fn missing_prerequisites(
    what: &str,
    test_name: &str,
    commands: &[(&str, &'static str)],
    files: &[(&str, &'static str)],
) -> Option<String> {
    if let Some(uid) = effective_uid().filter(|&uid| uid != 0) {
        return Some(format!(
            "{what} must run as root (network namespaces), not as uid {uid}: run e.g. \
             `sudo -E env PATH=\"$PATH\" cargo test --test it {test_name}::`"
        ));
    }
    let dirs: Vec<PathBuf> = std::env::split_paths(&path_env()).collect();
    let mut missing = Vec::new();
    let mut pkgs = Vec::new();
    for &(cmd, pkg) in commands {
        if !dirs.iter().any(|d| is_executable(&d.join(cmd))) {
            missing.push(format!("command `{cmd}`"));
            pkgs.push(pkg);
        }
    }
    for &(file, pkg) in files {
        if !Path::new(file).exists() {
            missing.push(format!("file {file}"));
            pkgs.push(pkg);
        }
    }
    if missing.is_empty() {
        return None;
    }
    pkgs.sort_unstable();
    pkgs.dedup();
    Some(format!(
        "{what} cannot run; missing: {}.\n  install everything: {INSTALL_HINT}\n  or just \
         these: apt-get install -y --no-install-recommends {}",
        missing.join(", "),
        pkgs.join(" ")
    ))
}
