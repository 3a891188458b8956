//! Where the ironboot processes the tests start write their logs, and the secrets the
//! tests create, so that `tests/check-log-secrets.py` can prove after the suite that no
//! log line carries one.
//!
//! `tests/run-all.sh` sets `IRONBOOT_TEST_LOG_DIR`; every ironboot process goes through
//! [`crate::launch::command`] (debug logging) and [`ironboot_log`] (its stderr in that
//! directory), and every secret a test or a Go harness makes up is appended to
//! `secrets.jsonl` there. Without the variable the logs go to the target's temporary
//! directory and no secret is recorded.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable naming the log directory (set by `tests/run-all.sh`).
pub const LOG_DIR_ENV: &str = "IRONBOOT_TEST_LOG_DIR";

/// The file of recorded secrets in the log directory, one JSON object a line.
pub const SECRETS_FILE: &str = "secrets.jsonl";

/// The log directory: `$IRONBOOT_TEST_LOG_DIR`, else `<target tmp>/ironboot-logs`.
pub fn dir() -> PathBuf {
    let dir = std::env::var_os(LOG_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::target_tmpdir().join("ironboot-logs"));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating the log directory {}: {e}", dir.display()));
    dir
}

/// The suite of the running test (`lifecycle_scenario`): the first part of the test
/// thread's name (libtest names it after the test's path), else the test binary's name
/// without cargo's hash.
fn test_name() -> String {
    if let Some(suite) = std::thread::current()
        .name()
        .and_then(|n| n.split_once("::"))
        .map(|(suite, _)| suite.to_owned())
    {
        return suite;
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "test".into());
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem,
    }
}

/// A new log file for one ironboot process: `<dir>/<test>-<label>-<pid>-<n>.log`
/// (`label` says which process of the test it is). Returns it open for writing, and its
/// path for reading it back.
pub fn ironboot_log(label: &str) -> (File, PathBuf) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir().join(format!(
        "{}-{label}-{}-{n}.log",
        test_name(),
        std::process::id()
    ));
    let file = File::create(&path)
        .unwrap_or_else(|e| panic!("creating the ironboot log {}: {e}", path.display()));
    (file, path)
}

/// Debug logging for an ironboot command (the level the secret check runs at: what an
/// operator gets with `--debug`), without colour codes.
pub fn debug_env(cmd: &mut Command) -> &mut Command {
    cmd.env("RUST_LOG", "debug").env("NO_COLOR", "1")
}

/// Records a secret a test made up (`what` names it in the checker's report), when
/// `IRONBOOT_TEST_LOG_DIR` is set. One `write` per line on an `O_APPEND` file, so
/// concurrent tests and harnesses do not interleave.
pub fn record_secret(what: &str, secret: &str) {
    if std::env::var_os(LOG_DIR_ENV).is_none_or(|d| d.is_empty()) {
        return;
    }
    let path = dir().join(SECRETS_FILE);
    let mut line = serde_json::json!({"what": what, "secret": secret}).to_string();
    line.push('\n');
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("recording a secret in {}: {e}", path.display()));
}
