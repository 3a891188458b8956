//! `ironboot storm pxe` against real servers: the `ironboot` binary of this package with
//! each UDP driver, and dnsmasq in proxy-DHCP + TFTP mode.
//!
//! Each test makes two network namespaces of its own joined by a veth pair: the server's
//! (`10.77.0.1/16`) and the load generator's (`10.77.0.2/16` plus 50 more addresses the
//! emulated machines use in turn, as a rack's machines each have their own). Two hundred
//! machines (half UEFI, half BIOS, `--firmware mixed`) boot at once: DISCOVER broadcast,
//! proxy OFFER, 4011 REQUEST, ACK, TFTP (EDK2's way for UEFI, lock-step for BIOS) and, for
//! ironboot, the HTTP boot script. Then the servers' own accounts must agree with the
//! generator's report:
//! - ironboot: `/metrics` counted one OFFER per DISCOVER sent, one ACK per REQUEST, one
//!   completed TFTP transfer per machine (plus one aborted EDK2 size probe per UEFI
//!   machine), one `boot_script` request per machine; `/api/v1/machines` lists exactly the
//!   200 emulated UUIDs, each with its MAC. Before ironboot starts, a storm against the
//!   silent namespace must fail every machine in the discover stage (exit status 1).
//! - dnsmasq (`--no-http`): every DHCP and TFTP stage succeeds, and its log shows every
//!   boot file sent: the generator is not ironboot-specific.
//! - ironboot to the end (`--stop-after image`, 50 machines): the inventory's kernel and
//!   initrd (ironboot's own `ipxe.efi` and `undionly.kpxe` under `/tftp/`) fetched by every
//!   machine on one kept-alive connection each, bytes and SHA-256 (`--verify-image`) those
//!   of the files, ironboot's `/metrics` counting each fetch; then 50 machines whose
//!   initrd URL 404s all fail in the image stage with `initrd_status_404`; and 10 whose
//!   script chains to another boot script of ironboot follow it to the same images.
//! - the Go provider's own libraries (`tests/pxe-peer`: insomniacslk/dhcp server4 and
//!   pin/tftp v3, configured as the provider configures them, built with `go build`):
//!   50 machines through every stage, the TFTP bytes those of the served files (and curl
//!   fetches them byte for byte), and the peer logs no error but the aborted size probes.
//!
//! Needs root (namespaces, port 68), Go with the peer's modules, and the packages of
//! `tests/install-prereqs.sh`; without them each test FAILS (never skips) and says what is
//! missing.

use ironboot_test_support::{go_harness, launch, logs, metrics, netns, prereqs, process};

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use netns::VethPair;
use process::{run_ok, stop};

const SNPONLY: &str = "/usr/lib/ipxe/snponly.efi";
const UNDIONLY: &str = "/usr/lib/ipxe/undionly.kpxe";
/// The "kernel" of the image storm (any file ironboot serves under `/tftp/` will do).
const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
const SERVER_IP: &str = "10.77.0.1";
const LOAD_IP: &str = "10.77.0.2";
const API: &str = "http://10.77.0.1:50042";
const MACHINES: u64 = 200;
/// Machines of the ProxyDHCP-only storm (`--stop-after discover`) after the full one.
const DHCP_ONLY_MACHINES: u64 = 300;
/// Addresses of the emulated machines: 10.77.1.10 .. 10.77.1.59 (four machines each,
/// under ironboot's default cap of eight TFTP transfers per client address).
const SOURCES: u32 = 50;
/// First machine index (MAC 52:54:00:00:10:00 on, UUIDs 57a7c000-0000-4000-8000-...1000 on).
const FIRST: u64 = 0x1000;
/// Lab timeouts: DISCOVER 0.8, 1.6, 3.2, 6.4 s; REQUEST 0.2 s x 4; TFTP 0.8 s (EDK2) or
/// 0.2 s (lock-step), six tries; HTTP 3 s.
const TIMEOUT_SCALE: &str = "0.2";

const COMMANDS: [(&str, &str); 5] = [
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("curl", "curl"),
    ("dnsmasq", "dnsmasq-base"),
    ("timeout", "coreutils"),
];
const FILES: [(&str, &str); 3] = [(SNPONLY, "ipxe"), (UNDIONLY, "ipxe"), (IPXE_EFI, "ipxe")];
/// Machines storming the Go provider's own libraries (`tests/pxe-peer`): its single-port
/// TFTP sends 512-byte blocks only, so a smaller storm keeps the test to seconds.
const GO_PEER_MACHINES: u64 = 50;

fn check_prerequisites() {
    if let Some(why) =
        prereqs::missing_prerequisites("the PXE storm tests", "storm_pxe", &COMMANDS, &FILES)
    {
        panic!("{why}");
    }
}

/// Two namespaces joined by a veth pair, and the processes started in them. Dropping it
/// stops those processes (by PID: SIGTERM, then SIGKILL) and deletes the namespaces (which
/// deletes the veth pair).
struct Lab {
    net: VethPair,
    children: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(label: &str) -> Lab {
        check_prerequisites();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ironboot-storm-pxe-{label}-"))
            .tempdir()
            .expect("temporary directory");
        let lab = Lab {
            net: VethPair::new(
                "sp",
                label,
                &format!("{SERVER_IP}/16"),
                &format!("{LOAD_IP}/16"),
            ),
            children: Vec::new(),
            dir,
        };
        let batch = lab.dir.path().join("addrs.batch");
        let lines: String = sources()
            .iter()
            .map(|ip| format!("addr add {ip}/16 dev {}\n", lab.net.client_if))
            .collect();
        fs::write(&batch, lines).expect("write ip batch");
        run_ok(
            "ip",
            &[
                "-n",
                &lab.net.client_ns,
                "-batch",
                batch.to_str().expect("utf-8 path"),
            ],
        );
        lab
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Start `args` in the server namespace, output to `<name>.out` / `<name>.err`; for
    /// ironboot, `<name>.err` links to its debug log in the suite's log directory.
    fn start_server(&mut self, name: &str, args: &[&str]) {
        let log = |ext: &str| {
            fs::File::create(self.path(&format!("{name}.{ext}"))).expect("create log file")
        };
        let ns = &self.net.server_ns;
        let (mut cmd, stderr) = if args.first() == Some(&launch::binary()) {
            let (file, path) = logs::ironboot_log(name);
            let link = self.path(&format!("{name}.err"));
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&path, &link).expect("link the ironboot log");
            let mut cmd = launch::command_in(ns);
            cmd.args(&args[1..]);
            (cmd, file)
        } else {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns])
                .args(args)
                .env("PATH", prereqs::path_env());
            (cmd, log("err"))
        };
        // `ip netns exec` execs the program: the child's PID is the server's own.
        let child = cmd
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log("out"))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {args:?} in {}: {e}", self.net.server_ns));
        self.children.push((name.to_owned(), child));
    }

    fn log_tail(&self, name: &str) -> String {
        let mut s = String::new();
        for ext in ["err", "out", "log"] {
            let text = fs::read_to_string(self.path(&format!("{name}.{ext}"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                s.push_str(&format!("--- {name}.{ext} (tail)\n"));
                s.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
                s.push('\n');
            }
        }
        s
    }

    /// Run `program args` in namespace `ns`, killed after `limit_s` seconds.
    fn exec(&self, ns: &str, program: &str, args: &[&str], limit_s: u32) -> Output {
        self.net.exec(ns, program, args, limit_s)
    }

    /// The storm, from the load namespace; its exit status and JSON report.
    fn storm(&self, machines: u64, scale: &str, extra: &[&str]) -> (Option<i32>, Value, String) {
        self.storm_from(FIRST, machines, scale, extra)
    }

    /// The storm of machines `first` on.
    fn storm_from(
        &self,
        first: u64,
        machines: u64,
        scale: &str,
        extra: &[&str],
    ) -> (Option<i32>, Value, String) {
        let first = first.to_string();
        let machines = machines.to_string();
        let bind = sources().join(",");
        let mut args = vec![
            "storm",
            "pxe",
            "--server",
            SERVER_IP,
            "--interface",
            &self.net.client_if,
            "--firmware",
            "mixed",
            "--timeout-scale",
            scale,
            "--first",
            &first,
            "--bind",
            &bind,
            "--machines",
            &machines,
            "--json",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let out = self.exec(&self.net.client_ns, launch::binary(), &args, 50);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "storm pxe {extra:?}: no JSON report ({e}), exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
                out.status.code()
            )
        });
        (out.status.code(), report, stderr)
    }

    /// Poll `ready` until it gives a value; fail with `name`'s log if the process started
    /// last exits first, or if `limit` passes.
    fn wait_started<T>(
        &mut self,
        name: &str,
        limit: Duration,
        what: &str,
        mut ready: impl FnMut(&Lab) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = ready(self) {
                return v;
            }
            let exited = self
                .children
                .last_mut()
                .and_then(|(_, c)| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "{name} exited at start ({status}):\n{}",
                    self.log_tail(name)
                );
            }
            assert!(
                start.elapsed() < limit,
                "{name} did not {what} within {limit:?}:\n{}",
                self.log_tail(name)
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// ironboot's `/metrics` once every sample in `want` has its value, or after 5 s (its
    /// counters are updated as it goes, so they may trail the storm's report briefly).
    fn metrics_when(&self, want: &[(&str, u64)]) -> String {
        let start = Instant::now();
        loop {
            let m = self.http_get(&format!("{API}/metrics"));
            if want.iter().all(|(s, n)| metrics::count(&m, s) == Some(*n))
                || start.elapsed() > Duration::from_secs(5)
            {
                return m;
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn http_get(&self, url: &str) -> String {
        let out = self.exec(
            &self.net.server_ns,
            "curl",
            &["-sS", "--max-time", "5", url],
            10,
        );
        assert!(
            out.status.success(),
            "GET {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The namespaces go with `net`, after this.
        for (_, child) in &mut self.children {
            stop(child);
        }
    }
}

fn sources() -> Vec<String> {
    (0..SOURCES)
        .map(|i| format!("10.77.1.{}", 10 + i))
        .collect()
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("report has no number at {path:?}: {v}"))
}

/// Every one of `machines` booted, every stage counted once per machine.
fn assert_all_booted(report: &Value, machines: u64, stages: &[&str], what: &str) {
    let ok = num(report, &["booted"]);
    let failed = num(report, &["failed"]);
    assert!(
        ok == machines && failed == 0,
        "{what}: {ok} of {machines} machines booted, {failed} failed; report: {report:#}"
    );
    for stage in stages {
        assert_eq!(
            num(report, &["stages", stage, "ok"]),
            machines,
            "{what}: stage {stage}; report: {report:#}"
        );
    }
    assert_eq!(
        report["stages"].as_object().map(|m| m.len()),
        Some(stages.len()),
        "{what}: stages reported; report: {report:#}"
    );
    assert!(num(report, &["tftp_bytes"]) > 0);
}

/// The file sizes `machines` (an even number) must have fetched: half snponly.efi, half
/// undionly.kpxe.
fn expected_tftp_bytes(machines: u64) -> u64 {
    let size = |p: &str| fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}")).len();
    machines / 2 * (size(SNPONLY) + size(UNDIONLY))
}

fn storm_against_ironboot(label: &str, driver: &str) {
    let mut lab = Lab::new(label);

    // Nobody answers yet: every machine must fail in the discover stage, and say so.
    let (code, report, stderr) = lab.storm(3, "0.02", &[]);
    assert_eq!(
        code,
        Some(1),
        "a storm with failures exits 1; stderr: {stderr}"
    );
    assert_eq!(
        (
            num(&report, &["booted"]),
            num(&report, &["stages", "discover", "failures", "timeout"])
        ),
        (0, 3),
        "silent server: {report:#}"
    );
    assert_eq!(num(&report, &["discover_retransmissions"]), 3 * 3);

    let state = lab.path("state");
    let inventory = lab.path("inventory.toml");
    fs::write(
        &inventory,
        "[default]\nscript = \"\"\"#!ipxe\necho storm ${uuid}\n\"\"\"\n",
    )
    .expect("write inventory");
    let srv_if = lab.net.server_if.clone();
    lab.start_server(
        "ironboot",
        &[
            launch::binary(),
            "--dhcp-proxy-iface-or-ip",
            &srv_if,
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
        ],
    );
    lab.wait_started(
        "ironboot",
        Duration::from_secs(20),
        "answer /healthz",
        |lab| {
            let url = format!("{API}/healthz");
            let out = lab.exec(
                &lab.net.server_ns,
                "curl",
                &["-sf", "--max-time", "1", &url],
                5,
            );
            out.status.success().then_some(())
        },
    );

    let (code, report, stderr) = lab.storm(MACHINES, TIMEOUT_SCALE, &[]);
    eprintln!("[{driver}] storm report: {report}");
    let context = || format!("stderr: {stderr}\n{}", lab.log_tail("ironboot"));
    assert_all_booted(
        &report,
        MACHINES,
        &["discover", "request", "tftp", "http"],
        driver,
    );
    assert_eq!(code, Some(0), "{}", context());
    assert_eq!(num(&report, &["tftp_bytes"]), expected_tftp_bytes(MACHINES));
    let replies = &report["replies"];
    assert_eq!(
        num(replies, &["wrong_chaddr"]) + num(replies, &["malformed"]),
        0,
        "{report:#}"
    );
    // Every reply ironboot sent reached the generator (veth loses nothing once the
    // generator's buffers are large): between one per machine and one per DHCP message
    // sent, the rest being answers to retransmissions of lost messages, or late.
    let offers = num(replies, &["offers"]);
    let acks = num(replies, &["acks"]);
    assert!(
        (MACHINES..=MACHINES + num(&report, &["discover_retransmissions"])).contains(&offers)
            && (MACHINES..=MACHINES + num(&report, &["request_retransmissions"])).contains(&acks),
        "{report:#}"
    );

    // ironboot's own account. Its counters are updated as it goes; poll briefly.
    let want = [
        ("ironboot_dhcp_replies_total{type=\"offer\"}", offers),
        ("ironboot_dhcp_replies_total{type=\"ack\"}", acks),
        ("ironboot_tftp_transfers_completed_total", MACHINES),
        // The UEFI half's EDK2 size probes, aborted with ERROR 8 as OVMF aborts them.
        (
            "ironboot_tftp_transfers_failed_total{reason=\"negotiation_aborted\"}",
            MACHINES / 2,
        ),
        (
            "ironboot_http_requests_total{route=\"boot_script\",status=\"200\"}",
            MACHINES,
        ),
    ];
    let metrics = lab.metrics_when(&want);
    for (sample, n) in want {
        assert_eq!(
            metrics::count(&metrics, sample),
            Some(n),
            "[{driver}] /metrics {sample}, want {n} as the storm's report says; report: \
             {report:#}\n/metrics (DHCP, UDP):\n{}",
            metrics
                .lines()
                .filter(|l| !l.starts_with('#') && (l.contains("dhcp") || l.contains("udp")))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // Every emulated machine is recorded, with its own UUID and MAC.
    let want: BTreeSet<(String, String)> = (FIRST..FIRST + MACHINES)
        .map(|i| {
            let m = i.to_be_bytes();
            (
                format!("57a7c000-0000-4000-8000-{i:012x}"),
                format!("52:54:00:{:02x}:{:02x}:{:02x}", m[5], m[6], m[7]),
            )
        })
        .collect();
    let start = Instant::now();
    let got = loop {
        let body = lab.http_get(&format!("{API}/api/v1/machines"));
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let got: BTreeSet<(String, String)> = v
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|m| {
                        (
                            m["uuid"].as_str().unwrap_or_default().to_owned(),
                            m["macs"][0].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if got == want || start.elapsed() > Duration::from_secs(10) {
            break got;
        }
        sleep(Duration::from_millis(200));
    };
    assert!(
        got == want,
        "[{driver}] /api/v1/machines: {} machines, want the {MACHINES} emulated ones; missing {:?}, unexpected {:?}",
        got.len(),
        want.difference(&got).take(5).collect::<Vec<_>>(),
        got.difference(&want).take(5).collect::<Vec<_>>()
    );

    // ProxyDHCP alone (`--stop-after discover`, open loop): one OFFER per machine, no
    // REQUEST, no TFTP, and a completion curve that ends at the last machine.
    let (code, dhcp_only, stderr) = lab.storm(
        DHCP_ONLY_MACHINES,
        TIMEOUT_SCALE,
        &["--stop-after", "discover", "--rate", "2000"],
    );
    assert_eq!(code, Some(0), "stderr: {stderr}\n{dhcp_only:#}");
    let stages: Vec<&String> = dhcp_only["stages"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(stages, ["discover"], "{dhcp_only:#}");
    assert_eq!(num(&dhcp_only, &["booted"]), DHCP_ONLY_MACHINES);
    assert_eq!(dhcp_only["stop_after"], "discover");
    assert_eq!(
        (
            num(&dhcp_only, &["tftp_bytes"]),
            num(&dhcp_only, &["replies", "acks"])
        ),
        (0, 0),
        "{dhcp_only:#}"
    );
    let curve = dhcp_only["completion_curve"]
        .as_array()
        .unwrap_or_else(|| panic!("no completion_curve: {dhcp_only:#}"));
    let last = &curve[curve.len() - 1];
    assert_eq!(last[1].as_f64(), Some(DHCP_ONLY_MACHINES as f64));
    assert!(
        curve
            .windows(2)
            .all(|w| w[0][0].as_f64() <= w[1][0].as_f64() && w[0][1].as_f64() < w[1][1].as_f64()),
        "{dhcp_only:#}"
    );
    let more_offers = num(&dhcp_only, &["replies", "offers"]);
    let want = [
        (
            "ironboot_dhcp_replies_total{type=\"offer\"}",
            offers + more_offers,
        ),
        ("ironboot_dhcp_replies_total{type=\"ack\"}", acks),
    ];
    let metrics = lab.metrics_when(&want);
    for (sample, n) in want {
        assert_eq!(
            metrics::count(&metrics, sample),
            Some(n),
            "[{driver}] after the DHCP-only storm, /metrics {sample}; report: {dhcp_only:#}"
        );
    }

    let err = fs::read_to_string(lab.path("ironboot.err")).unwrap_or_default();
    assert!(!err.contains("panicked"), "{}", lab.log_tail("ironboot"));
}

#[test]
fn storm_of_200_against_ironboot_io_uring() {
    storm_against_ironboot("u", "io-uring");
}

#[test]
fn storm_of_200_against_ironboot_portable() {
    storm_against_ironboot("p", "portable");
}

#[test]
fn storm_of_200_against_dnsmasq_proxy_and_tftp() {
    let mut lab = Lab::new("d");
    let root = lab.dir.path().join("tftp");
    fs::create_dir(&root).expect("mkdir tftp root");
    for (src, name) in [(SNPONLY, "snp.efi"), (UNDIONLY, "undionly.kpxe")] {
        fs::copy(src, root.join(name)).unwrap_or_else(|e| panic!("copy {src}: {e}"));
    }
    let conf = lab.path("dnsmasq.conf");
    fs::write(
        &conf,
        format!(
            "port=0\ninterface={}\nbind-interfaces\ndhcp-range={SERVER_IP},proxy,255.255.0.0\n\
             pxe-service=X86-64_EFI,\"storm\",snp.efi\npxe-service=x86PC,\"storm\",undionly.kpxe\n\
             enable-tftp\ntftp-root={}\ntftp-max=1000\n\
             # the temporary tftp-root is readable by root only\nuser=root\n",
            lab.net.server_if,
            root.display()
        ),
    )
    .expect("write dnsmasq.conf");
    let log = lab.path("dnsmasq.log");
    lab.start_server(
        "dnsmasq",
        &[
            "dnsmasq",
            "-k",
            &format!("--conf-file={conf}"),
            "--pid-file=",
            &format!("--log-facility={log}"),
        ],
    );
    // Listening once its DHCP socket is bound.
    let start = Instant::now();
    loop {
        let out = lab.exec(&lab.net.server_ns, "ss", &["-Hlnu", "sport = :4011"], 5);
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "dnsmasq does not listen on 4011:\n{}",
            lab.log_tail("dnsmasq")
        );
        sleep(Duration::from_millis(100));
    }

    let (code, report, stderr) = lab.storm(MACHINES, TIMEOUT_SCALE, &["--no-http"]);
    assert_all_booted(
        &report,
        MACHINES,
        &["discover", "request", "tftp"],
        "dnsmasq",
    );
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(num(&report, &["tftp_bytes"]), expected_tftp_bytes(MACHINES));

    // dnsmasq's own account: every boot file sent, and the UEFI half's size probes
    // aborted with ERROR 8. dnsmasq logs "sent" for an aborted probe too, so snp.efi
    // shows twice per UEFI machine.
    let count =
        |text: &str, needle: &str| text.lines().filter(|l| l.contains(needle)).count() as u64;
    let sent = |file: &str| format!("sent {} to ", Path::new(&root).join(file).display());
    let want = (MACHINES, MACHINES / 2, MACHINES / 2);
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let got = (
            count(&text, &sent("snp.efi")),
            count(&text, &sent("undionly.kpxe")),
            count(&text, "error 8 User aborted the transfer"),
        );
        if got == want {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "dnsmasq's log shows (snp.efi sent, undionly.kpxe sent, probes aborted) = {got:?}, \
             want {want:?}:\n{}",
            lab.log_tail("dnsmasq")
        );
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn storm_of_50_against_the_go_providers_dhcp_and_tftp_libraries() {
    let mut lab = Lab::new("g");
    let peer = go_harness::build(
        "the PXE storm test against the Go provider's DHCP/TFTP libraries",
        "pxe-peer",
        "pxepeer",
    );
    let root = lab.dir.path().join("tftp");
    fs::create_dir(&root).expect("mkdir tftp root");
    let served = [(SNPONLY, "snp.efi"), (UNDIONLY, "undionly.kpxe")];
    for (src, name) in served {
        fs::copy(src, root.join(name)).unwrap_or_else(|e| panic!("copy {src}: {e}"));
    }
    let (peer, root, srv_if) = (
        peer.display().to_string(),
        root.display().to_string(),
        lab.net.server_if.clone(),
    );
    lab.start_server(
        "pxepeer",
        &[
            &peer,
            "--iface",
            &srv_if,
            "--advertise",
            SERVER_IP,
            "--listen",
            SERVER_IP,
            "--tftp-root",
            &root,
        ],
    );
    // Ready once it prints its one "listening" line: every socket is bound by then.
    let listening: Value = lab.wait_started(
        "pxepeer",
        Duration::from_secs(10),
        "say it listens",
        |lab| {
            let out = fs::read_to_string(lab.path("pxepeer.out")).unwrap_or_default();
            let line = out.lines().next()?;
            Some(
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("pxepeer's first line {line:?}: {e}")),
            )
        },
    );
    let size = |p: &str| fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}")).len();
    assert_eq!(
        (
            listening["msg"].as_str(),
            listening["tftp"].as_str(),
            listening["files"]["snp.efi"].as_u64(),
            listening["files"]["undionly.kpxe"].as_u64(),
        ),
        (
            Some("listening"),
            Some("10.77.0.1:69"),
            Some(size(SNPONLY)),
            Some(size(UNDIONLY))
        ),
        "{listening}"
    );

    let (code, report, stderr) = lab.storm(GO_PEER_MACHINES, TIMEOUT_SCALE, &[]);
    eprintln!("[go peer] storm report: {report}");
    let what = "the Go provider's libraries";
    assert_all_booted(
        &report,
        GO_PEER_MACHINES,
        &["discover", "request", "tftp", "http"],
        what,
    );
    assert_eq!(
        code,
        Some(0),
        "stderr: {stderr}\n{}",
        lab.log_tail("pxepeer")
    );
    assert_eq!(
        num(&report, &["tftp_bytes"]),
        expected_tftp_bytes(GO_PEER_MACHINES)
    );
    let replies = &report["replies"];
    assert_eq!(
        num(replies, &["wrong_chaddr"]) + num(replies, &["malformed"]),
        0,
        "{report:#}"
    );
    assert!(
        num(replies, &["offers"]) >= GO_PEER_MACHINES
            && num(replies, &["acks"]) >= GO_PEER_MACHINES,
        "{report:#}"
    );
    // Each machine got the peer's boot script.
    let script = lab.http_get(&format!("{API}/ipxe/boot.ipxe?uuid=x"));
    assert!(script.starts_with("#!ipxe\n"), "{script:?}");
    assert_eq!(
        num(&report, &["http_bytes"]),
        GO_PEER_MACHINES * script.len() as u64,
        "{report:#}"
    );
    // pin/tftp serves the files byte for byte (the storm counts bytes; curl fetches them
    // from the machines' namespace).
    for (src, name) in served {
        let url = format!("tftp://{SERVER_IP}/{name}");
        let out = lab.exec(
            &lab.net.client_ns,
            "curl",
            &["-sS", "--max-time", "20", &url],
            30,
        );
        assert!(
            out.status.success(),
            "GET {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = fs::read(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert!(
            out.stdout == want,
            "{url}: {} bytes differ from {src} ({} bytes)",
            out.stdout.len(),
            want.len()
        );
    }
    // The peer's own account: errors only for the UEFI half's EDK2 size probes, each
    // aborted with ERROR 8 after the OACK (pin/tftp reports it from the read handler).
    let err = fs::read_to_string(lab.path("pxepeer.err")).unwrap_or_default();
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("panic"))
        .collect();
    let aborted = errors
        .iter()
        .filter(|l| l.contains("\"filename\":\"snp.efi\"") && l.contains("code=8"))
        .count() as u64;
    assert!(
        aborted == GO_PEER_MACHINES / 2 && errors.len() as u64 == aborted,
        "pxepeer logged {} errors, want exactly the {} aborted size probes:\n{}",
        errors.len(),
        GO_PEER_MACHINES / 2,
        lab.log_tail("pxepeer")
    );
}

/// Machines of the image storm, and of its failure case (machines `FIRST + BROKEN_OFFSET`
/// on, whose inventory entry names an initrd ironboot does not have).
const IMAGE_MACHINES: u64 = 50;
const BROKEN_OFFSET: u64 = 0x100;
/// Machines whose script chains to another machine's boot script (`FIRST + CHAIN_OFFSET`
/// on).
const CHAIN_MACHINES: u64 = 10;
const CHAIN_OFFSET: u64 = 0x200;

#[test]
fn storm_of_50_boots_to_the_image_from_ironboot() {
    let mut lab = Lab::new("i");
    let state = lab.path("state");
    let inventory = lab.path("inventory.toml");
    let uuids = |from: u64, n: u64| -> Vec<String> {
        (from..from + n)
            .map(|i| format!("\"57a7c000-0000-4000-8000-{i:012x}\""))
            .collect()
    };
    let broken = uuids(FIRST + BROKEN_OFFSET, IMAGE_MACHINES);
    let chained = uuids(FIRST + CHAIN_OFFSET, CHAIN_MACHINES);
    fs::write(
        &inventory,
        format!(
            "[default]\nkernel = \"{API}/tftp/ipxe.efi\"\ninitrd = \"{API}/tftp/undionly.kpxe\"\n\
             cmdline = \"console=ttyS0 storm=${{uuid}}\"\n\n\
             [[machine]]\nname = \"broken-initrd\"\nuuid = [{}]\nkernel = \"{API}/tftp/ipxe.efi\"\n\
             initrd = \"{API}/tftp/missing.img\"\n\n\
             [[machine]]\nname = \"chained\"\nuuid = [{}]\n\
             script = \"#!ipxe\\nchain --replace {API}/ipxe/boot.ipxe?uuid=57a7c000-0000-4000-8000-00000000ffff || exit\\n\"\n",
            broken.join(", "),
            chained.join(", ")
        ),
    )
    .expect("write inventory");
    let srv_if = lab.net.server_if.clone();
    lab.start_server(
        "ironboot",
        &[
            launch::binary(),
            "--dhcp-proxy-iface-or-ip",
            &srv_if,
            "--api-advertise-address",
            SERVER_IP,
            "--state-dir",
            &state,
            "--inventory",
            &inventory,
            "--ipxe-dir",
            "/usr/lib/ipxe",
        ],
    );
    lab.wait_started(
        "ironboot",
        Duration::from_secs(20),
        "answer /healthz",
        |lab| {
            let url = format!("{API}/healthz");
            let out = lab.exec(
                &lab.net.server_ns,
                "curl",
                &["-sf", "--max-time", "1", &url],
                5,
            );
            out.status.success().then_some(())
        },
    );
    let size = |p: &str| fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}")).len();

    let (code, report, stderr) = lab.storm(
        IMAGE_MACHINES,
        TIMEOUT_SCALE,
        &[
            "--stop-after",
            "image",
            "--verify-image",
            IPXE_EFI,
            "--verify-image",
            UNDIONLY,
        ],
    );
    eprintln!("[image] storm report: {report}");
    let context = || format!("stderr: {stderr}\n{}", lab.log_tail("ironboot"));
    assert_all_booted(
        &report,
        IMAGE_MACHINES,
        &["discover", "request", "tftp", "http", "image"],
        "image",
    );
    assert_eq!(code, Some(0), "{}", context());
    assert_eq!(report["stop_after"], "image");
    assert_eq!(
        num(&report, &["image_bytes"]),
        IMAGE_MACHINES * (size(IPXE_EFI) + size(UNDIONLY)),
        "{report:#}"
    );
    assert_eq!(
        (
            num(&report, &["kernel_fetches"]),
            num(&report, &["initrd_fetches"]),
            num(&report, &["image_connections"]),
        ),
        (IMAGE_MACHINES, IMAGE_MACHINES, IMAGE_MACHINES),
        "one kernel, one initrd, one kept-alive connection per machine: {report:#}"
    );
    assert!(
        report["image_mb_s"].as_f64().is_some_and(|v| v > 0.0)
            && report["kernel_latency"]["max_ms"]
                .as_f64()
                .is_some_and(|v| v > 0.0)
            && report["initrd_latency"]["max_ms"]
                .as_f64()
                .is_some_and(|v| v > 0.0),
        "{report:#}"
    );
    let curve = report["completion_curve"]
        .as_array()
        .unwrap_or_else(|| panic!("no completion_curve: {report:#}"));
    assert_eq!(
        curve.last().and_then(|p| p[1].as_f64()),
        Some(IMAGE_MACHINES as f64),
        "{report:#}"
    );
    // ironboot's own account: one file request per image fetched.
    let files_ok = "ironboot_http_requests_total{route=\"files\",status=\"200\"}";
    let metrics = lab.metrics_when(&[(files_ok, 2 * IMAGE_MACHINES)]);
    assert_eq!(metrics::count(&metrics, files_ok), Some(2 * IMAGE_MACHINES));

    // The initrd URL 404s: every machine fails in the image stage, with that reason,
    // after fetching its kernel.
    let (code, broken, stderr) = lab.storm_from(
        FIRST + BROKEN_OFFSET,
        IMAGE_MACHINES,
        TIMEOUT_SCALE,
        &["--stop-after", "image"],
    );
    assert_eq!(code, Some(1), "stderr: {stderr}\n{broken:#}");
    assert_eq!(
        (
            num(&broken, &["booted"]),
            num(&broken, &["failed"]),
            num(&broken, &["stages", "http", "ok"]),
            num(&broken, &["stages", "image", "ok"]),
            num(
                &broken,
                &["stages", "image", "failures", "initrd_status_404"]
            ),
        ),
        (0, IMAGE_MACHINES, IMAGE_MACHINES, 0, IMAGE_MACHINES),
        "{broken:#}"
    );
    assert_eq!(
        broken["stages"]["image"]["failures"]
            .as_object()
            .map(|m| m.len()),
        Some(1),
        "no other reason: {broken:#}"
    );
    assert_eq!(
        (
            num(&broken, &["kernel_fetches"]),
            num(&broken, &["initrd_fetches"]),
            num(&broken, &["image_bytes"]),
        ),
        (IMAGE_MACHINES, 0, IMAGE_MACHINES * size(IPXE_EFI)),
        "{broken:#}"
    );
    let files_404 = "ironboot_http_requests_total{route=\"files\",status=\"404\"}";
    let metrics = lab.metrics_when(&[(files_ok, 3 * IMAGE_MACHINES), (files_404, IMAGE_MACHINES)]);
    assert_eq!(
        (
            metrics::count(&metrics, files_ok),
            metrics::count(&metrics, files_404)
        ),
        (Some(3 * IMAGE_MACHINES), Some(IMAGE_MACHINES))
    );

    // A script that chains to another boot script of the same server (an unknown
    // machine's: the default kernel and initrd): followed once, then the images.
    let (code, chain, stderr) = lab.storm_from(
        FIRST + CHAIN_OFFSET,
        CHAIN_MACHINES,
        TIMEOUT_SCALE,
        &["--stop-after", "image", "--verify-image", IPXE_EFI],
    );
    assert_eq!(code, Some(0), "stderr: {stderr}\n{chain:#}");
    assert_eq!(
        (
            num(&chain, &["stages", "image", "ok"]),
            num(&chain, &["image_bytes"]),
            num(&chain, &["image_connections"]),
        ),
        (
            CHAIN_MACHINES,
            CHAIN_MACHINES * (size(IPXE_EFI) + size(UNDIONLY)),
            CHAIN_MACHINES
        ),
        "the chained script, the kernel and the initrd on one connection: {chain:#}"
    );
    let script_ok = "ironboot_http_requests_total{route=\"boot_script\",status=\"200\"}";
    let want = 2 * IMAGE_MACHINES + 2 * CHAIN_MACHINES;
    let metrics = lab.metrics_when(&[(script_ok, want)]);
    assert_eq!(
        metrics::count(&metrics, script_ok),
        Some(want),
        "every machine's boot.ipxe, and the chained one"
    );

    let err = fs::read_to_string(lab.path("ironboot.err")).unwrap_or_default();
    assert!(!err.contains("panicked"), "{}", lab.log_tail("ironboot"));
}
