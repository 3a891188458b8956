//! `--udp-workers 2`: the `ironboot` binary of this package with two driver instances per
//! UDP service, for each UDP driver, against real clients (`tests/udp-workers/pxe_clients.py`).
//!
//! A third test runs the same checks with `--udp-workers 1`.
//!
//! Each test makes two network namespaces of its own joined by a veth pair: the server's
//! (`10.78.0.1/24`) and the clients' (`10.78.0.2/24`). Then:
//! - ProxyDHCP: 40 PXE DISCOVERs broadcast to port 67 each get exactly one OFFER (every
//!   reply is counted for two seconds). Linux hands a broadcast to every socket bound to
//!   the port, so a socket per worker would answer each DISCOVER twice; `/metrics` must
//!   agree (40 offers).
//! - TFTP: 60 clients, one source port each, fetch `snp.efi` at once; every transfer
//!   completes with the bytes of the file on disk, and on shutdown both TFTP workers report
//!   having received datagrams (the kernel spread the clients over their port-69 sockets)
//!   and the transfers came from ports of both workers' pools.
//!
//! Needs root (namespaces, port 68) and the packages of `tests/install-prereqs.sh`; without
//! them each test FAILS (never skips) and says what is missing.

use ironboot_test_support::{launch, logs, metrics, netns, prereqs, process};

use std::collections::BTreeSet;
use std::fs;
use std::process::{Child, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use netns::VethPair;
use process::{run_ok, stop};

const CLIENTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/udp-workers/pxe_clients.py"
);
const SNPONLY: &str = "/usr/lib/ipxe/snponly.efi";
const SERVER_IP: &str = "10.78.0.1";
const CLIENT_IP: &str = "10.78.0.2";
const API: &str = "http://10.78.0.1:50042";
const DISCOVERS: u64 = 40;
const TFTP_CLIENTS: u64 = 60;

const COMMANDS: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("timeout", "coreutils"),
];
const FILES: [(&str, &str); 2] = [(SNPONLY, "ipxe"), ("/usr/lib/ipxe/undionly.kpxe", "ipxe")];

/// Two namespaces joined by a veth pair and the ironboot started in one. Dropping it stops
/// ironboot (by PID: SIGTERM, then SIGKILL) and deletes the namespaces (and the veth pair).
struct Lab {
    net: VethPair,
    server: Option<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(label: &str) -> Lab {
        if let Some(why) = prereqs::missing_prerequisites(
            "the UDP workers tests",
            "udp_workers",
            &COMMANDS,
            &FILES,
        ) {
            panic!("{why}");
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("ironboot-udp-workers-{label}-"))
            .tempdir()
            .expect("temporary directory");
        Lab {
            net: VethPair::new(
                "uw",
                label,
                &format!("{SERVER_IP}/24"),
                &format!("{CLIENT_IP}/24"),
            ),
            server: None,
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Run `program args` in namespace `ns`, killed after `limit_s` seconds.
    fn exec(&self, ns: &str, program: &str, args: &[&str], limit_s: u32) -> Output {
        self.net.exec(ns, program, args, limit_s)
    }

    /// Run the client script in the client namespace; its JSON answer.
    fn clients(&self, args: &[&str]) -> Value {
        let mut all = vec![CLIENTS];
        all.extend_from_slice(args);
        let out = self.exec(&self.net.client_ns, "python3", &all, 60);
        assert!(
            out.status.success(),
            "pxe_clients.py {args:?} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pxe_clients.py {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Start ironboot with `workers` UDP workers and `driver`; wait for `/healthz`.
    fn start_ironboot(&mut self, driver: &str, workers: u64) {
        let inventory = self.path("inventory.toml");
        fs::write(
            &inventory,
            "[default]\nscript = \"\"\"#!ipxe\necho hi\n\"\"\"\n",
        )
        .expect("write inventory");
        let state = self.path("state");
        // The debug log in the suite's log directory, linked as ironboot.err here.
        let (err, log_path) = logs::ironboot_log(&format!("{driver}-{workers}"));
        let link = self.path("ironboot.err");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&log_path, &link).expect("link the ironboot log");
        let child = launch::command_in(&self.net.server_ns)
            .args([
                "--dhcp-proxy-iface-or-ip",
                &self.net.server_if,
                "--api-advertise-address",
                SERVER_IP,
                "--state-dir",
                &state,
                "--inventory",
                &inventory,
                "--ipxe-dir",
                "/usr/lib/ipxe",
                "--udp-driver",
                driver,
                "--udp-workers",
                &workers.to_string(),
                // All clients share one address; the per-client limit is not under test.
                "--tftp-max-per-client",
                "1000",
            ])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting ironboot in {}: {e}", self.net.server_ns));
        self.server = Some(child);
        let start = Instant::now();
        loop {
            let out = self.exec(
                &self.net.server_ns,
                "curl",
                &["-sf", "--max-time", "1", &format!("{API}/healthz")],
                5,
            );
            if out.status.success() {
                break;
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("ironboot exited at start ({status}):\n{}", self.log_tail());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ironboot did not answer /healthz within 20 s:\n{}",
                self.log_tail()
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM ironboot and wait (10 s at most) for it to exit; its log.
    fn stop_ironboot(&mut self) -> String {
        let mut child = self.server.take().expect("ironboot was started");
        run_ok("kill", &["-TERM", &child.id().to_string()]);
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ironboot did not stop within 10 s of SIGTERM:\n{}",
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(50));
        }
        fs::read_to_string(self.path("ironboot.err")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.path("ironboot.err")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- ironboot log (tail)\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    fn metrics(&self) -> String {
        let out = self.exec(
            &self.net.server_ns,
            "curl",
            &["-sS", "--max-time", "5", &format!("{API}/metrics")],
            10,
        );
        assert!(out.status.success(), "GET /metrics failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The namespaces go with `net`, after this.
        if let Some(mut child) = self.server.take() {
            stop(&mut child);
        }
    }
}

/// `received` of every `<service> stopped` line of the log, by worker index.
fn received_per_worker(log: &str, service: &str) -> Vec<(u64, u64)> {
    let marker = format!("{service} stopped");
    let field = |rest: &str, key: &str| -> Option<u64> {
        let at = rest.find(key)? + key.len();
        let digits: String = rest[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let mut workers: Vec<(u64, u64)> = log
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&marker)? + marker.len()..];
            Some((field(rest, "worker=")?, field(rest, "received: ")?))
        })
        .collect();
    workers.sort_unstable();
    workers
}

fn serve_with_workers(label: &str, driver: &str, workers: u64) {
    let mut lab = Lab::new(label);
    lab.start_ironboot(driver, workers);
    let indexes: Vec<u64> = (0..workers).collect();

    // ProxyDHCP: one OFFER per broadcast DISCOVER, however many workers share port 67.
    let count = DISCOVERS.to_string();
    let dhcp = lab.clients(&[
        "dhcp",
        "--iface",
        &lab.net.client_if,
        "--count",
        &count,
        "--listen",
        "2",
    ]);
    let replies = dhcp["replies"].as_object().expect("replies");
    assert_eq!(replies.len() as u64, DISCOVERS, "{dhcp}");
    let wrong: Vec<_> = replies
        .iter()
        .filter(|(_, n)| n.as_u64() != Some(1))
        .collect();
    assert!(
        wrong.is_empty(),
        "[{driver}] every DISCOVER must get exactly one OFFER; xids with another count: \
         {wrong:?}\n{}",
        lab.log_tail()
    );
    assert_eq!(dhcp["other"], 0, "{dhcp}");
    let offers = metrics::count(
        &lab.metrics(),
        "ironboot_dhcp_replies_total{type=\"offer\"}",
    );
    assert_eq!(offers, Some(DISCOVERS), "[{driver}] /metrics offers");

    // TFTP: many clients, each from its own port, all complete with the right bytes.
    let clients = TFTP_CLIENTS.to_string();
    let tftp = lab.clients(&[
        "tftp",
        "--host",
        SERVER_IP,
        "--file",
        "snp.efi",
        "--expect",
        SNPONLY,
        "--clients",
        &clients,
    ]);
    assert_eq!(
        tftp["ok"].as_u64(),
        Some(TFTP_CLIENTS),
        "[{driver}] every transfer must complete and verify: {tftp}\n{}",
        lab.log_tail()
    );
    let tids: BTreeSet<u64> = tftp["tids"]
        .as_array()
        .expect("tids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let completed = metrics::count(&lab.metrics(), "ironboot_tftp_transfers_completed_total");
    assert_eq!(
        completed,
        Some(TFTP_CLIENTS),
        "[{driver}] /metrics completed transfers"
    );

    let log = lab.stop_ironboot();
    let tftp_workers = received_per_worker(&log, "TFTP");
    assert_eq!(
        tftp_workers.iter().map(|&(w, _)| w).collect::<Vec<_>>(),
        indexes,
        "[{driver}] one `TFTP stopped` line per worker:\n{log}"
    );
    assert!(
        tftp_workers.iter().all(|&(_, received)| received > 0),
        "[{driver}] every TFTP worker must have served clients: {tftp_workers:?}"
    );
    // Each worker's transfer ports are its own: every pool was used.
    let pools = worker_pools(&log);
    assert_eq!(
        pools.len() as u64,
        workers,
        "[{driver}] transfer ports per worker in the log:\n{log}"
    );
    for (w, pool) in pools.iter().enumerate() {
        assert!(
            pool.iter().any(|p| tids.contains(p)),
            "[{driver}] no transfer came from worker {w}'s ports {pool:?}; transfer ports {tids:?}"
        );
    }
    let dhcp_workers = received_per_worker(&log, "ProxyDHCP");
    assert_eq!(
        dhcp_workers.iter().map(|&(w, _)| w).collect::<Vec<_>>(),
        indexes,
        "[{driver}] one `ProxyDHCP stopped` line per worker:\n{log}"
    );
    assert_eq!(
        dhcp_workers.iter().map(|&(_, r)| r).sum::<u64>(),
        DISCOVERS,
        "[{driver}] the workers read each DISCOVER once between them: {dhcp_workers:?}"
    );
    eprintln!("[{driver}] received per worker: ProxyDHCP {dhcp_workers:?}, TFTP {tftp_workers:?}");
}

/// The transfer ports of each TFTP worker, from its `TFTP worker listening` log line.
fn worker_pools(log: &str) -> Vec<BTreeSet<u64>> {
    let mut pools: Vec<(u64, BTreeSet<u64>)> = log
        .lines()
        .filter(|l| l.contains("TFTP worker listening"))
        .filter_map(|l| {
            let at = l.find("worker=")? + "worker=".len();
            let worker: u64 = l[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()?;
            let list = &l[l.find("transfer_ports=[")? + "transfer_ports=[".len()..];
            let list = &list[..list.find(']')?];
            Some((
                worker,
                list.split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect(),
            ))
        })
        .collect();
    pools.sort();
    pools.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn two_udp_workers_with_io_uring() {
    serve_with_workers("u", "io-uring", 2);
}

#[test]
fn two_udp_workers_with_portable_driver() {
    serve_with_workers("p", "portable", 2);
}

/// One worker is the single-driver server: one OFFER each, every transfer, one driver per
/// service.
#[test]
fn one_udp_worker_with_io_uring() {
    serve_with_workers("1", "io-uring", 1);
}
