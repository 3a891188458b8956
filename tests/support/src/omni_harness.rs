//! Starting `tests/omni-harness serve` (the Go COSI state the Omni tests run against) and
//! talking to it over its control pipes: one JSON command a line in, one answer out.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

/// Runs `bin keygen` with `args`; the service-account key it printed.
pub fn keygen(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("keygen")
        .args(args)
        .output()
        .expect("running omniharness keygen");
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A started harness: its process, control pipes, listening address, and the directory
/// holding its key file (removed when dropped).
pub struct Serve {
    pub child: Child,
    pub stdin: ChildStdin,
    pub stdout: BufReader<ChildStdout>,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

/// Runs `bin serve` trusting the service-account `key`, with `extra` arguments, and waits
/// for its first line (the address it listens on).
pub fn serve(bin: &Path, key: &str, extra: &[&str]) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("sa.key");
    std::fs::write(&key_file, key).unwrap();
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--key-file")
        .arg(&key_file)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting omniharness serve");
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("reading the harness's first line");
    let v: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("harness start: {e}: {line:?}"));
    let addr = v["listening"]
        .as_str()
        .expect("listening address")
        .to_owned();
    Serve {
        child,
        stdin,
        stdout,
        addr,
        dir,
    }
}

/// Sends one control command; returns the answer (which has `ok`).
pub fn send(stdin: &mut ChildStdin, stdout: &mut BufReader<ChildStdout>, cmd: &Value) -> Value {
    writeln!(stdin, "{cmd}").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("harness answer {line:?}: {e}"))
}
