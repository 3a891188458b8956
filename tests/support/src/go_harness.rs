//! Building the Go conformance peers under `tests/` (they import the real upstream Go
//! modules): found `go`, built once per test binary into the target dir, and rebuilt only
//! when a source file is newer than the binary. A missing Go or module fails the test,
//! saying what to install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

/// `go` from `PATH`, else the official tarball's location; panics naming `what` needs it.
fn go_binary(what: &str, module_dir: &str) -> PathBuf {
    let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("go"))
        .find(|p| p.is_file());
    let fallback = PathBuf::from("/usr/local/go/bin/go");
    on_path
        .or_else(|| fallback.is_file().then_some(fallback))
        .unwrap_or_else(|| {
            panic!(
                "{what} needs Go (its peer imports the real upstream modules): `go` is not \
                 on PATH nor at /usr/local/go/bin/go; install Go and run sudo \
                 tests/install-prereqs.sh (it runs `go mod download` in tests/{module_dir})"
            )
        })
}

/// The newest modification time of the module's Go sources and go.mod/go.sum.
fn newest_source(dir: &Path) -> SystemTime {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".go") || n == "go.mod" || n == "go.sum"
        })
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Build the Go module `tests/<module_dir>` into `<target tmp>/<module_dir>/<bin_name>`
/// unless that binary is newer than every source; returns its path. `what` names the
/// test in error messages. Call it once per test binary (e.g. behind a `OnceLock`).
pub fn build(what: &str, module_dir: &str, bin_name: &str) -> PathBuf {
    let src = crate::repo_root().join("tests").join(module_dir);
    let out_dir = crate::target_tmpdir().join(module_dir);
    std::fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", out_dir.display()));
    let bin = out_dir.join(bin_name);
    let fresh = bin
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= newest_source(&src));
    if !fresh {
        let started = Instant::now();
        let out = Command::new(go_binary(what, module_dir))
            .args(["build", "-mod=readonly", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&src)
            .output()
            .expect("running go build");
        assert!(
            out.status.success(),
            "building tests/{module_dir} for {what} failed (missing modules? run sudo \
             tests/install-prereqs.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("built tests/{module_dir} in {:?}", started.elapsed());
    }
    bin
}

/// The JSON lines a Go harness prints on `stdout`, read on a thread into a channel (closed
/// when the harness exits); a line that is not JSON fails the test.
pub fn json_lines(
    stdout: std::process::ChildStdout,
) -> tokio::sync::mpsc::UnboundedReceiver<serde_json::Value> {
    use std::io::BufRead;
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("Go harness line {line:?}: {e}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    events
}
