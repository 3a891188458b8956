//! The inventory reloads while the standalone server runs: a file renamed into place is
//! in force after SIGHUP, and by itself after the file watch sees it; a broken file is
//! refused (logged, counted on `/metrics`) while the inventory in force keeps answering;
//! `/api/v1/machines` names the entry each machine's boot script came from; and the
//! reload service stops with the others on SIGTERM. Without `--inventory`, a SIGHUP is
//! logged and ignored (its default action would end the server).
//!
//! The server runs in a network namespace of its own (`unshare -n`, loopback only), so
//! its ports (TFTP 69, ProxyDHCP 67/4011) never meet another test's; the test's HTTP
//! requests enter that namespace from a thread of their own. As root:
//! `sudo -E cargo test --test it inventory_reload::`.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ironboot_test_support::{http, launch, logs, metrics, prereqs, process};

const PORT: u16 = 8080;
const U1: &str = "00000000-0000-4000-8000-000000000001";
/// Generous bound on anything that should take a second or two: the machine is shared.
const SLACK: Duration = Duration::from_secs(30);

fn inventory(version: &str) -> String {
    format!(
        r##"[default]
script = "#!ipxe\necho default {version}\n"
[[machine]]
name = "u1"
uuid = "{U1}"
script = "#!ipxe\necho u1 {version}\n"
[[machine]]
mac = "52:54:00:aa:00:09"
script = "#!ipxe\necho mac {version}\n"
"##
    )
}

/// The first file has no entry for the MAC: that machine gets the default.
fn first_inventory() -> String {
    format!(
        r##"[default]
script = "#!ipxe\necho default v1\n"
[[machine]]
name = "u1"
uuid = "{U1}"
script = "#!ipxe\necho u1 v1\n"
"##
    )
}

/// Replaces `path` the way configuration tools do: a new file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// ironboot in its own network namespace; stopped by its PID when dropped.
struct Server {
    /// `None` once the test stopped it itself.
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("ironboot running").id()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the server's API port, from inside its namespace: the status and
    /// the body.
    fn get(&self, path: &str) -> (u16, String) {
        let pid = self.pid();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
                .unwrap_or_else(|e| panic!("ironboot's namespace: {e}"));
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering ironboot's namespace: {e}"));
            http::get(SocketAddr::from(([127, 0, 0, 1], PORT)), &path)
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        })
        .join()
        .unwrap()
    }

    /// The boot script of the machine named by `query`.
    fn script(&self, query: &str) -> String {
        let (status, body) = self.get(&format!("/ipxe/boot.ipxe?{query}&arch=x86_64"));
        assert_eq!(status, 200, "{query}: {body}");
        body
    }

    /// Polls `probe` until it returns `Some`, or fails naming `what`, with the log.
    fn wait<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + SLACK;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {SLACK:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn metric(&self, sample: &str) -> u64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        metrics::count(&text, sample).unwrap_or_else(|| panic!("no {sample} in\n{text}"))
    }

    fn sighup(&self) {
        process::run_ok("kill", &["-HUP", &self.pid().to_string()]);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop(&mut child);
        }
    }
}

const U1_QUERY: &str = "uuid=00000000-0000-4000-8000-000000000001&mac=52-54-00-aa-00-01";
const MAC_QUERY: &str = "mac=52-54-00-aa-00-09";
const OTHER_QUERY: &str = "uuid=00000000-0000-4000-8000-000000000002&mac=52-54-00-aa-00-0a";

/// Standalone ironboot alone on its loopback, serving `dir`'s iPXE stand-in, with `args`.
fn start_server(dir: &Path, args: &[&std::ffi::OsStr]) -> Server {
    if let Some(why) = prereqs::missing_prerequisites(
        "the inventory reload test",
        "inventory_reload",
        &[
            ("unshare", "util-linux"),
            ("ip", "iproute2"),
            ("kill", "procps"),
        ],
        &[],
    ) {
        panic!("{why}");
    }
    let ipxe = dir.join("ipxe");
    fs::create_dir(&ipxe).unwrap();
    fs::write(ipxe.join("snponly.efi"), vec![0x5a; 64 * 1024]).unwrap();
    let (log_file, log) = logs::ironboot_log("standalone");
    let mut cmd = launch::standalone_on_loopback(PORT);
    cmd.arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--ipxe-dir")
        .arg(&ipxe)
        .args(args)
        .env("PATH", prereqs::path_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    logs::debug_env(&mut cmd);
    let child = cmd
        .spawn()
        .expect("unshare (util-linux) runs ironboot in a network namespace");
    let server = Server {
        child: Some(child),
        log,
    };
    server.wait("ironboot listening", || {
        server.log().contains("HTTP API listening").then_some(())
    });
    server
}

#[test]
fn a_sighup_without_an_inventory_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), &[]);
    server.sighup();
    server.wait("the SIGHUP logged", || {
        server
            .log()
            .contains("SIGHUP: nothing to reload")
            .then_some(())
    });
    // Still serving, and still running.
    assert_eq!(server.get("/healthz").0, 200);
    let child = server.child.as_mut().expect("ironboot running");
    assert!(
        child.try_wait().unwrap().is_none(),
        "ironboot ended on SIGHUP"
    );
}

#[test]
fn the_inventory_reloads_on_sighup_and_on_change_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("machines.toml");
    fs::write(&inv, first_inventory()).unwrap();
    let mut server = start_server(dir.path(), &["--inventory".as_ref(), inv.as_os_str()]);

    // The first inventory.
    assert_eq!(server.script(U1_QUERY), "#!ipxe\necho u1 v1\n");
    assert_eq!(server.script(MAC_QUERY), "#!ipxe\necho default v1\n");

    // A new file renamed into place, then SIGHUP: in force at once.
    replace(&inv, &inventory("v2"));
    server.sighup();
    server.wait("the SIGHUP reload", || {
        (server.script(U1_QUERY) == "#!ipxe\necho u1 v2\n").then_some(())
    });
    assert_eq!(server.script(MAC_QUERY), "#!ipxe\necho mac v2\n");
    // ironboot logs and counts a reload before putting it in force.
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("inventory reloaded") && l.contains("SIGHUP")),
        "{log}"
    );

    // Another one, no signal: the file watch loads it.
    replace(&inv, &inventory("v3"));
    server.wait("the file watch's reload", || {
        (server.script(U1_QUERY) == "#!ipxe\necho u1 v3\n").then_some(())
    });
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("inventory reloaded") && l.contains("file changed")),
        "{}",
        server.log()
    );
    assert_eq!(
        server.metric("ironboot_inventory_reloads_total{result=\"ok\"}"),
        2
    );
    assert_eq!(server.metric("ironboot_inventory_machine_entries"), 2);

    // A broken file: refused by the watch, and again on SIGHUP; v3 stays in force.
    replace(&inv, "[default\nscript = \"#!ipxe\"\n");
    server.wait("the watch's refusal", || {
        (server.metric("ironboot_inventory_reloads_total{result=\"refused\"}") == 1).then_some(())
    });
    assert_eq!(server.script(U1_QUERY), "#!ipxe\necho u1 v3\n");
    server.sighup();
    server.wait("the SIGHUP refusal", || {
        (server.metric("ironboot_inventory_reloads_total{result=\"refused\"}") == 2).then_some(())
    });
    assert_eq!(server.script(U1_QUERY), "#!ipxe\necho u1 v3\n");
    assert_eq!(server.script(MAC_QUERY), "#!ipxe\necho mac v3\n");
    assert_eq!(
        server.script(OTHER_QUERY),
        "#!ipxe\necho default v3\n",
        "unknown machines still get the default in force"
    );
    let log = server.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("inventory file refused"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
    assert!(
        refusal.contains("machines.toml") && refusal.contains("error="),
        "{refusal}"
    );
    assert_eq!(
        server.metric("ironboot_inventory_reloads_total{result=\"ok\"}"),
        2
    );

    // The machine list names the entry each machine's last boot script came from.
    let entries = server.wait("the machines recorded with their entries", || {
        let (status, body) = server.get("/api/v1/machines");
        assert_eq!(status, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        let entry = |id: &str| {
            list.as_array()?
                .iter()
                .find(|m| m["id"] == id)
                .map(|m| m["inventory_entry"].clone())
        };
        let found = (
            entry(U1)?,
            entry("mac-52:54:00:aa:00:09")?,
            entry("00000000-0000-4000-8000-000000000002")?,
        );
        (found.2 == "default").then_some(found)
    });
    assert_eq!(entries.0, U1, "matched by its UUID");
    assert_eq!(entries.1, "52:54:00:aa:00:09", "matched by its MAC");
    assert_eq!(entries.2, "default");

    // SIGTERM: the reload service stops with the edges, and ironboot exits cleanly.
    let mut child = server.child.take().expect("ironboot running");
    process::run_ok("kill", &["-TERM", &child.id().to_string()]);
    let deadline = Instant::now() + SLACK;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            process::stop(&mut child);
            panic!("ironboot still running after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = server.log();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("service stopped") && l.contains("service=\"inventory reload\"")),
        "{text}"
    );
}
