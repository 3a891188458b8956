//! What ironboot's test suites share: prerequisite checks ([`prereqs`]), starting and
//! stopping processes by PID ([`process`]), the one way to launch ironboot
//! ([`launch`]), network namespaces ([`netns`]), the log directory ([`logs`]), the
//! `/metrics` parser ([`metrics`]), a plain HTTP GET ([`http`]), the Go harnesses ([`go_harness`], [`omni_harness`]),
//! the simulated BMCs ([`ipmi_sim`], [`redfish`]) and the relays a test puts in front of
//! a peer ([`tcp_relay`], [`udp_relay`]).
//!
//! Used by the root package's integration tests and the bmc crate's; never published.

pub mod go_harness;
pub mod http;
pub mod ipmi_sim;
pub mod launch;
pub mod logs;
pub mod metrics;
pub mod netns;
pub mod omni_harness;
pub mod prereqs;
pub mod process;
pub mod redfish;
pub mod tcp_relay;
pub mod udp_relay;

use std::path::{Path, PathBuf};

/// The repository's root (the root package's directory): the Go harnesses, scripts and
/// data files are found from here.
pub fn repo_root() -> &'static Path {
    // This crate lives at `tests/support/` of the repository.
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Cargo's target directory of the running test binary: the nearest ancestor of the
/// executable holding `CACHEDIR.TAG` (cargo writes it at the top of a target directory
/// it creates), else the directory above the profile's (`<target>/<profile>/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .or_else(|| exe.ancestors().nth(3))
        .unwrap_or_else(|| panic!("no cargo target directory above {}", exe.display()))
        .to_path_buf()
}

/// Where tests keep what they build and write (`<target>/tmp`, cargo's
/// `CARGO_TARGET_TMPDIR`, which only integration tests are given at build time).
pub fn target_tmpdir() -> PathBuf {
    let dir = target_dir().join("tmp");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
