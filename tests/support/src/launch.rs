//! The one way the tests launch ironboot: the binary cargo built for this test run, with
//! debug logging ([`crate::logs::debug_env`]), on the host or in a network namespace.
//! The caller adds the flags, where its stderr goes ([`crate::logs::ironboot_log`]) and
//! stops the process by PID ([`crate::process::stop`]).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::{logs, prereqs};

/// The `ironboot` binary of this build: cargo puts it in the profile directory above the
/// test binary's `deps/` (where `CARGO_BIN_EXE_ironboot` points for the root package's
/// integration tests).
pub fn binary() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let bin: PathBuf = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|profile| profile.join("ironboot"))
            .unwrap_or_else(|| panic!("no profile directory above {}", exe.display()));
        assert!(
            bin.is_file(),
            "{} is missing: build it with the tests (`cargo test --test it`)",
            bin.display()
        );
        bin.to_str().expect("a UTF-8 target path").to_owned()
    })
}

/// ironboot on the host, with debug logging.
pub fn command() -> Command {
    let mut cmd = Command::new(binary());
    logs::debug_env(&mut cmd);
    cmd
}

/// ironboot in the network namespace `ns` (`ip netns exec <ns> ironboot`), with debug
/// logging and the `PATH` of [`prereqs::path_env`]. `ip netns exec` execs ironboot: the
/// child's PID is ironboot's own.
pub fn command_in(ns: &str) -> Command {
    command_in_via(ns, &[], binary())
}

/// `program` (ironboot's [`binary`], or another build of it a test was pointed at) in
/// `ns` through `wrapper` (a command that execs the rest, such as `prlimit --nofile=N:N`;
/// empty for none), with debug logging and the `PATH` of [`prereqs::path_env`]. The
/// child's PID is the program's own.
pub fn command_in_via(ns: &str, wrapper: &[&str], program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .args(wrapper)
        .arg(program)
        .env("PATH", prereqs::path_env());
    logs::debug_env(&mut cmd);
    cmd
}

/// ironboot in standalone mode, alone in a network namespace of its own (`unshare -n`,
/// no root needed beyond what `unshare` asks): `sh` brings that namespace's loopback up
/// and execs ironboot, so the child's PID is ironboot's. It serves the HTTP API on
/// `127.0.0.1:api_port` and ProxyDHCP on `lo`; its ports never meet another test's. The
/// caller adds `--state-dir`, `--ipxe-dir` and the rest, and where the output goes.
pub fn standalone_on_loopback(api_port: u16) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(binary())
        .args([
            "--api-listen-address",
            "127.0.0.1",
            "--api-advertise-address",
            "127.0.0.1",
            "--dhcp-proxy-iface-or-ip",
            "lo",
            "--api-port",
            &api_port.to_string(),
        ]);
    cmd
}
