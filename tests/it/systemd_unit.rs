//! `deploy/systemd/ironboot.service`, the unit operators install: `systemd-analyze verify`
//! must accept it without a word, and `systemd-analyze security --offline` must find it
//! no more exposed than it was made. `verify` checks that `ExecStart=`'s command exists,
//! so the unit is checked with this build's binary in place of the installed path.
//! Needs `systemd-analyze` (Debian's `systemd`, tests/install-prereqs.sh); no root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ironboot_test_support::launch;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/systemd/ironboot.service"
);

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
