//! TFTP conformance and the HTTP boot path, checked with real clients against the
//! `ironboot` binary of this package.
//!
//! Each test starts its own ironboot in a network namespace of its own that has only
//! loopback (`--disable-dhcp-proxy --api-listen-address 127.0.0.1`, a temporary
//! `--state-dir`), so nothing touches the host's network and the tests can run in
//! parallel. The clients are the packaged ones a technician would use, plus a small Python
//! client (`tests/tftp/tftp_probe.py`) for packets no client sends on purpose:
//! - atftp with every combination of `blksize`/`tsize`/`timeout`/`windowsize` (none
//!   included): byte-identical files, and the OACK carries exactly what was granted;
//! - tftp-hpa's `tftp` in its default netascii mode (compared with the netascii round trip)
//!   and in binary mode; curl's `tftp://`; 32 MiB files past block-number rollover;
//! - errors on the wire: not found 1, traversal 2, write 2, bad options 8, bad opcode or
//!   mode 4, stray ACK 5;
//! - a client that stops acknowledging is dropped after the retry limit and its slot is
//!   freed (seen in `/metrics`); per-client and server limits answer ERROR 0;
//! - `--tftp-single-port` serves DATA from port 69, the default from another port;
//! - HTTP: `/ipxe/init.ipxe`, `/ipxe/boot.ipxe` from an inventory, `/tftp/<name>` whole,
//!   by range and HEAD, `/healthz`, `/metrics`, `/api/v1/machines`.
//!
//! Needs root (network namespaces) and the packages of `tests/install-prereqs.sh`; without
//! them every test FAILS (never skips) and says what is missing.

use ironboot_test_support::{launch, logs, metrics, prereqs, process};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

use process::{run_ok, stop};

const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tftp/tftp_probe.py");
/// Where ironboot listens, inside each test's namespace.
const HOST: &str = "127.0.0.1";
const API: &str = "http://127.0.0.1:50042";
/// Debian's iPXE binaries, served by ironboot under these names.
const SNPONLY: &str = "/usr/lib/ipxe/snponly.efi";
const UNDIONLY: &str = "/usr/lib/ipxe/undionly.kpxe";
/// ironboot's TFTP defaults (net/src/tftp/config.rs).
const MAX_BLKSIZE: u64 = 1468;
const MAX_WINDOWSIZE: u64 = 64;
const MAX_TIMEOUT: u64 = 10;
const RETRIES: usize = 5;

/// Served name of the crafted netascii test file (an otherwise unused name).
const NETASCII_NAME: &str = "snp-arm64.efi";
/// Served name of the crafted 32 MiB file: 65536 blocks of 512 bytes, so a transfer at the
/// default block size wraps the block number (65535 -> 0) and ends with an empty block.
const BIG_NAME: &str = "ipxe-arm64.efi";
const BIG_SIZE: usize = 32 << 20;

const COMMANDS: [(&str, &str); 7] = [
    ("ip", "iproute2"),
    ("atftp", "atftp"),
    ("tftp", "tftp-hpa"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("timeout", "coreutils"),
    ("kill", "procps"),
];
const FILES: [(&str, &str); 2] = [(SNPONLY, "ipxe"), (UNDIONLY, "ipxe")];

// ------------------------------------------------------------------ prerequisites

/// Panics (never skips) when something the tests need is missing.
fn check_prerequisites() {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    if let Some(why) = MISSING.get_or_init(|| {
        prereqs::missing_prerequisites(
            "the TFTP/HTTP conformance tests",
            "tftp_conformance",
            &COMMANDS,
            &FILES,
        )
    }) {
        panic!("{why}");
    }
}

// ------------------------------------------------------------------ test files

/// Deterministic noise (xorshift64*), so a failure can be reproduced byte for byte.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// A file that exercises netascii: every byte value, LF, CR LF, bare CR, CR CR LF, LF CR,
/// CR NUL, runs of each, and a CR as the very last byte.
fn netascii_torture() -> Vec<u8> {
    let mut v: Vec<u8> = (0..=255u8).collect();
    for piece in [
        &b"line one\nline two\r\nbare\rcr\r\r\nlf-cr\n\rcr-nul\r\0end\n"[..],
        b"\n\n\n\r\r\r\r\n\r\n",
        b"#!ipxe\necho hello\n",
    ] {
        for _ in 0..40 {
            v.extend_from_slice(piece);
        }
    }
    v.extend(noise(3000, 7));
    v.push(b'\r');
    v
}

/// RFC 764 netascii as ironboot sends it: LF -> CR LF, CR -> CR NUL.
fn netascii_encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    for &c in data {
        match c {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            _ => out.push(c),
        }
    }
    out
}

/// What a netascii client writes on Unix: CR LF -> LF, CR NUL -> CR, any other CR kept.
fn netascii_decode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        match (data[i], data.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.push(b'\n');
                i += 2;
            }
            (b'\r', Some(0)) => {
                out.push(b'\r');
                i += 2;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Where two byte strings first differ, for failure messages.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => format!(
            "{} bytes, want {}; first difference at offset {i} (got {:#04x}, want {:#04x})",
            got.len(),
            want.len(),
            got[i],
            want[i]
        ),
        None => format!(
            "{} bytes, want {} (one is a prefix of the other)",
            got.len(),
            want.len()
        ),
    }
}

fn read(path: &str) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

// ------------------------------------------------------------------ the server under test

/// One ironboot in a namespace of its own (only `lo`, up), with a temporary state dir and
/// an `--ipxe-dir` of crafted files searched before Debian's. Dropping it stops ironboot
/// (SIGTERM, then SIGKILL after 10 s) by its PID and deletes the namespace.
struct Server {
    label: String,
    ns: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// ironboot's stderr (debug log), in the suite's log directory.
    log: std::path::PathBuf,
    netascii_file: Vec<u8>,
    big_file: Vec<u8>,
}

impl Server {
    fn start(label: &str, extra_args: &[&str]) -> Server {
        Server::start_with(label, extra_args, None)
    }

    fn start_with(label: &str, extra_args: &[&str], inventory: Option<&str>) -> Server {
        check_prerequisites();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ironboot-tftp-{label}-"))
            .tempdir()
            .expect("temporary directory");
        let ipxe = dir.path().join("ipxe");
        let state = dir.path().join("state");
        fs::create_dir_all(&ipxe).expect("mkdir ipxe");
        fs::create_dir_all(dir.path().join("out")).expect("mkdir out");
        let netascii_file = netascii_torture();
        let big_file = noise(BIG_SIZE, 42);
        fs::write(ipxe.join(NETASCII_NAME), &netascii_file).expect("write netascii file");
        fs::write(ipxe.join(BIG_NAME), &big_file).expect("write big file");

        let ns = format!("ibtc{}-{label}", std::process::id());
        // A namespace of this name can only be left over by a crashed run of this very
        // PID; remove it so the test starts clean.
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        run_ok("ip", &["netns", "add", &ns]);
        let mut server = Server {
            label: label.to_owned(),
            ns,
            child: None,
            dir,
            log: std::path::PathBuf::new(),
            netascii_file,
            big_file,
        };
        run_ok("ip", &["-n", &server.ns, "link", "set", "lo", "up"]);

        let ipxe_dirs = format!("{},/usr/lib/ipxe,/boot", ipxe.display());
        let state = state.display().to_string();
        let mut args: Vec<String> = [
            "--disable-dhcp-proxy",
            "--api-listen-address",
            HOST,
            "--api-advertise-address",
            HOST,
            "--state-dir",
            &state,
            "--ipxe-dir",
            &ipxe_dirs,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(text) = inventory {
            let path = server.dir.path().join("inventory.toml");
            fs::write(&path, text).expect("write inventory");
            args.push("--inventory".into());
            args.push(path.display().to_string());
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let (log, log_path) = logs::ironboot_log(&server.label);
        server.log = log_path;
        // `ip netns exec` execs ironboot: the child's PID is ironboot's own.
        let child = launch::command_in(&server.ns)
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log file"))
            .stderr(log)
            .spawn()
            .expect("start ironboot");
        server.child = Some(child);
        server.wait_ready();
        server
    }

    /// Until `/healthz` answers (TFTP binds its sockets before the HTTP listener).
    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "[{}] ironboot exited at start ({status}); its stderr:\n{}",
                    self.label,
                    self.stderr()
                );
            }
            let out = self.exec(
                "curl",
                &["-sf", "--max-time", "1", &format!("{API}/healthz")],
                5,
            );
            if out.status.success() {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!(
                    "[{}] ironboot did not answer {API}/healthz within 20 s; its stderr:\n{}",
                    self.label,
                    self.stderr()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn out_path(&self, name: &str) -> String {
        self.dir.path().join("out").join(name).display().to_string()
    }

    /// Run `program args` in the namespace, killed after `limit_s` seconds.
    fn exec(&self, program: &str, args: &[&str], limit_s: u32) -> Output {
        let limit = limit_s.to_string();
        Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "timeout", "-k", "5", &limit, program,
            ])
            .args(args)
            .env("PATH", prereqs::path_env())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.ns))
    }

    /// Start `program args` in the namespace without waiting.
    fn spawn(&self, program: &str, args: &[&str], limit_s: u32) -> Child {
        let limit = limit_s.to_string();
        Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "timeout", "-k", "5", &limit, program,
            ])
            .args(args)
            .env("PATH", prereqs::path_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} in {}: {e}", self.ns))
    }

    /// Run the Python probe and parse its JSON answer.
    fn probe(&self, args: &[&str]) -> Value {
        let mut all = vec![PROBE];
        all.extend_from_slice(args);
        parse_probe(&self.exec("python3", &all, 60), args)
    }

    fn metrics(&self) -> String {
        let out = self.exec(
            "curl",
            &["-sS", "--max-time", "5", &format!("{API}/metrics")],
            10,
        );
        assert!(
            out.status.success(),
            "[{}] GET /metrics failed: {}",
            self.label,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("metrics are UTF-8")
    }

    /// The value of one sample (`name` with its labels exactly as rendered).
    fn metric(&self, sample: &str) -> u64 {
        metrics::count(&self.metrics(), sample)
            .unwrap_or_else(|| panic!("[{}] /metrics has no sample {sample}", self.label))
    }

    /// Poll until `sample` has `want` (the server updates counters asynchronously to us).
    fn wait_metric(&self, sample: &str, want: u64, limit: Duration) -> u64 {
        let start = Instant::now();
        loop {
            let v = self.metric(sample);
            if v == want || start.elapsed() > limit {
                return v;
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// ironboot must still run, and must not have panicked.
    fn assert_healthy(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "[{}] ironboot is not running any more ({status}); its stderr:\n{}",
                self.label,
                self.stderr()
            );
        }
        let err = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(
            !err.contains("panicked"),
            "[{}] ironboot's stderr reports a panic:\n{}",
            self.label,
            self.stderr()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        if std::thread::panicking() {
            eprintln!(
                "[{}] ironboot's stderr (last lines):\n{}",
                self.label,
                self.stderr()
            );
        }
    }
}

fn parse_probe(out: &Output, args: &[&str]) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "tftp_probe.py {} gave no JSON ({e}; {}): stdout {stdout:?}, stderr {:?}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "tftp_probe.py {} failed ({}): {value}",
        args.join(" "),
        out.status
    );
    value
}

/// Fail with every collected finding at once.
fn assert_no_failures(label: &str, failures: &[String], cases: usize) {
    assert!(
        failures.is_empty(),
        "[{label}] {} of {cases} cases failed:\n  - {}",
        failures.len(),
        failures.join("\n  - ")
    );
}

// ------------------------------------------------------------------ real clients

/// The OACK atftp printed with `--trace` ("received OACK <tsize: 1, blksize: 2, >"), or
/// None if the transfer started with DATA.
fn atftp_oack(trace: &str) -> Option<BTreeMap<String, String>> {
    let line = trace.lines().find(|l| l.starts_with("received OACK"))?;
    let inner = line.split_once('<')?.1.rsplit_once('>')?.0;
    Some(
        inner
            .split(',')
            .filter_map(|kv| kv.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

/// The OACK ironboot must send for these requested options on a file of `size` bytes:
/// only the options it accepts, with the values it grants.
fn expected_oack(opts: &[(&str, u64)], size: usize) -> Option<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for &(name, v) in opts {
        let granted = match name {
            "blksize" => Some(v.min(MAX_BLKSIZE)),
            "tsize" => Some(size as u64),
            "timeout" => (v <= MAX_TIMEOUT).then_some(v),
            "windowsize" => Some(v.min(MAX_WINDOWSIZE)),
            _ => unreachable!(),
        };
        if let Some(g) = granted {
            m.insert(name.to_owned(), g.to_string());
        }
    }
    (!m.is_empty()).then_some(m)
}

/// One atftp download with these options; returns a failure description, if any.
fn atftp_case(
    s: &Server,
    file: &str,
    want: &[u8],
    opts: &[(&str, u64)],
    tag: &str,
) -> Option<String> {
    let case = if opts.is_empty() {
        "no options".to_owned()
    } else {
        opts.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let out_file = s.out_path(&format!("atftp-{tag}.bin"));
    let _ = fs::remove_file(&out_file);
    let opt_args: Vec<String> = opts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let mut args: Vec<&str> = vec!["--trace"];
    for o in &opt_args {
        args.push("--option");
        args.push(o);
    }
    args.extend_from_slice(&["-g", "-r", file, "-l", &out_file, HOST]);
    let out = s.exec("atftp", &args, 60);
    let trace = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last_lines = || {
        let l: Vec<&str> = trace.lines().collect();
        l[l.len().saturating_sub(4)..].join(" / ")
    };
    if !out.status.success() {
        return Some(format!(
            "atftp {file} [{case}]: exit {} ({})",
            out.status,
            last_lines()
        ));
    }
    let got = fs::read(&out_file).unwrap_or_default();
    if got != want {
        return Some(format!(
            "atftp {file} [{case}]: file differs: {}",
            first_difference(&got, want)
        ));
    }
    let oack = atftp_oack(&trace);
    let want_oack = expected_oack(opts, want.len());
    if oack != want_oack {
        return Some(format!(
            "atftp {file} [{case}]: OACK {oack:?}, want {want_oack:?} (only accepted options, \
             blksize <= {MAX_BLKSIZE}, windowsize <= {MAX_WINDOWSIZE}, timeout <= {MAX_TIMEOUT} \
             else declined, tsize = file size; no OACK when nothing is accepted)"
        ));
    }
    let _ = fs::remove_file(&out_file);
    None
}

/// Every combination of the four options, each absent or at one of several values
/// (including values ironboot lowers or declines).
fn atftp_matrix(s: &Server, failures: &mut Vec<String>) -> usize {
    let want = read(SNPONLY);
    let blksizes = [None, Some(512), Some(1468), Some(65464)];
    let tsizes = [None, Some(0)];
    let timeouts = [None, Some(1), Some(255)];
    let windows = [None, Some(1), Some(4), Some(300)];
    let mut n = 0;
    for b in blksizes {
        for t in tsizes {
            for to in timeouts {
                for w in windows {
                    let opts: Vec<(&str, u64)> = [
                        ("blksize", b),
                        ("tsize", t),
                        ("timeout", to),
                        ("windowsize", w),
                    ]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect();
                    n += 1;
                    failures.extend(atftp_case(s, "snp.efi", &want, &opts, &n.to_string()));
                }
            }
        }
    }
    n
}

fn curl_case(s: &Server, file: &str, want: &[u8], extra: &[&str], failures: &mut Vec<String>) {
    let out_file = s.out_path("curl.bin");
    let _ = fs::remove_file(&out_file);
    let url = format!("tftp://{HOST}/{file}");
    let mut args = vec!["-sS", "-o", &out_file];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = s.exec("curl", &args, 120);
    if !out.status.success() {
        failures.push(format!(
            "curl {} {url}: exit {} ({})",
            extra.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return;
    }
    let got = fs::read(&out_file).unwrap_or_default();
    if got != want {
        failures.push(format!(
            "curl {} {url}: file differs: {}",
            extra.join(" "),
            first_difference(&got, want)
        ));
    }
}

/// tftp-hpa's client: `binary` = octet; otherwise its default mode, netascii.
fn tftp_hpa_case(s: &Server, file: &str, want: &[u8], binary: bool, failures: &mut Vec<String>) {
    let out_file = s.out_path("tftp-hpa.bin");
    let _ = fs::remove_file(&out_file);
    let get = format!("get {file} {out_file}");
    let mut args = vec!["-v"];
    if binary {
        args.extend_from_slice(&["-m", "binary"]);
    }
    args.extend_from_slice(&[HOST, "-c"]);
    args.extend(get.split(' '));
    let mode = if binary {
        "binary"
    } else {
        "netascii (default)"
    };
    let out = s.exec("tftp", &args, 120);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // tftp-hpa exits 0 even after an error; it prints "Error code N: ..." then.
    if !out.status.success() || said.contains("Error code") || said.contains("Transfer timed out") {
        failures.push(format!(
            "tftp-hpa {mode} {file}: {} ({})",
            out.status,
            said.trim()
        ));
        return;
    }
    let got = fs::read(&out_file).unwrap_or_default();
    if got != want {
        failures.push(format!(
            "tftp-hpa {mode} {file}: file differs from {}: {}",
            if binary {
                "the source"
            } else {
                "the netascii decode of the netascii encoding of the source"
            },
            first_difference(&got, want)
        ));
    }
}

/// A file to fetch with atftp: served name, expected bytes, options.
type AtftpCase<'a> = (&'a str, &'a [u8], &'a [(&'a str, u64)]);

fn real_clients(driver: &str) {
    let label = format!("clients-{driver}");
    let mut s = Server::start(&label, &["--udp-driver", driver]);
    let mut failures = Vec::new();
    let mut cases = atftp_matrix(&s, &mut failures);

    let snp = read(SNPONLY);
    let undi = read(UNDIONLY);
    let text = s.netascii_file.clone();
    let big = s.big_file.clone();

    // Other names, and the end of a file that is an exact multiple of the block size (an
    // empty last block): 32 MiB at 512 and 1024, with block-number rollover at 512.
    let more: [AtftpCase<'_>; 8] = [
        ("undionly.kpxe", &undi, &[]),
        ("undionly.kpxe.0", &undi, &[("blksize", 1468), ("tsize", 0)]),
        ("amd64/snp.efi", &snp, &[("windowsize", 8)]),
        ("/snp.efi", &snp, &[("blksize", 1468), ("windowsize", 4)]),
        (NETASCII_NAME, &text, &[("blksize", 1000)]),
        (BIG_NAME, &big, &[("windowsize", 64)]),
        (
            BIG_NAME,
            &big,
            &[("blksize", 1024), ("tsize", 0), ("windowsize", 16)],
        ),
        (
            BIG_NAME,
            &big,
            &[("blksize", 1468), ("windowsize", 64), ("timeout", 2)],
        ),
    ];
    for (i, (file, want, opts)) in more.iter().enumerate() {
        cases += 1;
        failures.extend(atftp_case(&s, file, want, opts, &format!("more{i}")));
    }

    // tftp-hpa: no options at all; lockstep 512-byte blocks (the 32 MiB file wraps).
    let text_round_trip = netascii_decode(&netascii_encode(&text));
    let snp_round_trip = netascii_decode(&netascii_encode(&snp));
    for (file, want, binary) in [
        ("snp.efi", &snp_round_trip, false),
        (NETASCII_NAME, &text_round_trip, false),
        ("snp.efi", &snp, true),
        ("undionly.kpxe", &undi, true),
        (NETASCII_NAME, &text, true),
        (BIG_NAME, &big, true),
    ] {
        cases += 1;
        tftp_hpa_case(&s, file, want, binary, &mut failures);
    }

    // curl: tsize + timeout (+ blksize when asked), or no options; rollover at 512.
    for (file, want, extra) in [
        ("snp.efi", &snp, &[][..]),
        ("snp.efi", &snp, &["--tftp-blksize", "1468"][..]),
        ("snp.efi", &snp, &["--tftp-no-options"][..]),
        ("undionly.kpxe", &undi, &["--tftp-blksize", "8192"][..]),
        (BIG_NAME, &big, &[][..]),
    ] {
        cases += 1;
        curl_case(&s, file, want, extra, &mut failures);
    }
    cases += 1;
    let out = s.exec(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            &format!("tftp://{HOST}/no-such-file"),
        ],
        30,
    );
    if out.status.code() != Some(68) {
        failures.push(format!(
            "curl tftp://{HOST}/no-such-file: exit {}, want 68 (CURLE_TFTP_NOTFOUND: ERROR 1)",
            out.status
        ));
    }

    // The netascii encoding on the wire, byte for byte, and its tsize.
    for (file, src) in [(NETASCII_NAME, &text), ("snp.efi", &snp)] {
        cases += 1;
        let raw = s.out_path("netascii.raw");
        let r = s.probe(&[
            "fetch",
            "--file",
            file,
            "--mode",
            "netascii",
            "--opt",
            "tsize=0",
            "--opt",
            "blksize=1000",
            "--opt",
            "windowsize=3",
            "--out",
            &raw,
        ]);
        let want = netascii_encode(src);
        if r["ok"] != true {
            failures.push(format!("netascii fetch of {file} failed: {r}"));
            continue;
        }
        let got = read(&raw);
        if got != want {
            failures.push(format!(
                "netascii wire bytes of {file}: {}",
                first_difference(&got, &want)
            ));
        }
        let tsize = want.len().to_string();
        if r["oack"]["tsize"].as_str() != Some(tsize.as_str()) {
            failures.push(format!(
                "netascii {file}: OACK tsize {}, want {} (the size of the netascii form)",
                r["oack"]["tsize"],
                want.len()
            ));
        }
    }

    // Default mode: DATA from a per-transfer port, not 69.
    cases += 1;
    let r = s.probe(&[
        "fetch",
        "--file",
        "snp.efi",
        "--out",
        &s.out_path("ports.bin"),
    ]);
    let ports = r["data_ports"].as_array().cloned().unwrap_or_default();
    if r["ok"] != true || ports.is_empty() || ports.iter().any(|p| p == 69) {
        failures.push(format!(
            "default (pool) mode: DATA must come from a transfer port other than 69; got {r}"
        ));
    }

    // Everything ended: completed, nothing left active.
    let active = s.wait_metric("ironboot_tftp_active_transfers", 0, Duration::from_secs(3));
    if active != 0 {
        failures.push(format!(
            "{active} transfers still active after all clients finished"
        ));
    }
    s.assert_healthy();
    assert_no_failures(&label, &failures, cases);
}

#[test]
fn tftp_real_clients_io_uring() {
    real_clients("io-uring");
}

#[test]
fn tftp_real_clients_portable() {
    real_clients("portable");
}

// ------------------------------------------------------------------ errors on the wire

#[test]
fn tftp_errors_have_the_right_codes() {
    let mut s = Server::start("errors", &[]);
    // (what, probe arguments, expected ERROR code, or None for no answer at all)
    let cases: &[(&str, &[&str], Option<u64>)] = &[
        ("missing file", &["--file", "no-such-file"], Some(1)),
        (
            "absolute host path (not in the served set)",
            &["--file", "/etc/passwd"],
            Some(1),
        ),
        ("`..` traversal", &["--file", "../etc/passwd"], Some(2)),
        (
            "`..` inside the name",
            &["--file", "amd64/../snp.efi"],
            Some(2),
        ),
        ("backslash", &["--file", "amd64\\snp.efi"], Some(2)),
        ("empty name", &["--file", ""], Some(2)),
        // RequestOutcome::WriteRefused: "ERROR 2: a write request; this server is read-only".
        (
            "write request (WRQ)",
            &["--wrq", "--file", "snp.efi"],
            Some(2),
        ),
        ("blksize=3", &["--opt", "blksize=3"], Some(8)),
        ("blksize=7", &["--opt", "blksize=7"], Some(8)),
        ("blksize not a number", &["--opt", "blksize=abc"], Some(8)),
        ("windowsize=0", &["--opt", "windowsize=0"], Some(8)),
        ("timeout=0", &["--opt", "timeout=0"], Some(8)),
        ("timeout=256", &["--opt", "timeout=256"], Some(8)),
        ("mode mail", &["--mode", "mail"], Some(4)),
        ("unknown mode", &["--mode", "binary"], Some(4)),
        ("garbage opcode 9", &["--hex", "00090001aabbcc"], Some(4)),
        ("opcode 0", &["--hex", "00000000"], Some(4)),
        (
            "RRQ without terminating NULs",
            &["--hex", "0001736e702e656669"],
            Some(4),
        ),
        (
            "ACK on port 69 with no transfer",
            &["--hex", "00040001"],
            Some(5),
        ),
        (
            "DATA on port 69 with no transfer",
            &["--hex", "0003000161"],
            Some(5),
        ),
        (
            "ERROR on port 69 (never answered)",
            &["--hex", "000500004e6f00", "--wait", "1"],
            None,
        ),
        (
            "runt of 1 byte (never answered)",
            &["--hex", "01", "--wait", "1"],
            None,
        ),
        (
            "empty datagram (never answered)",
            &["--hex", "", "--wait", "1"],
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (what, args, want) in cases {
        let mut all = vec!["send"];
        all.extend_from_slice(args);
        let r = s.probe(&all);
        let reply = &r["reply"];
        match want {
            None if reply.is_null() => {}
            None => failures.push(format!("{what}: want no answer, got {reply}")),
            Some(code) => {
                let ok = reply["op"] == "ERROR"
                    && reply["code"] == *code
                    && reply["from"] == format!("{HOST}:69")
                    && reply["nul_terminated"] == true
                    && reply["message"].as_str().is_some_and(|m| !m.is_empty());
                if !ok {
                    failures.push(format!(
                        "{what}: want ERROR {code} (with a NUL-terminated message) from \
                         {HOST}:69, got {reply}"
                    ));
                }
            }
        }
    }
    // Accepted oddities: upper-case mode and names of options, repeated options (the first
    // counts), unknown options (ignored, not in the OACK).
    let accepted: &[(&str, &[&str], &str)] = &[
        ("mode OCTET", &["--mode", "OCTET"], "DATA"),
        (
            "option BLKSIZE=8",
            &["--opt", "BLKSIZE=8", "--opt", "blksize=1000"],
            "OACK",
        ),
        ("unknown option only", &["--opt", "frobnicate=1"], "DATA"),
    ];
    for (what, args, op) in accepted {
        let mut all = vec!["send"];
        all.extend_from_slice(args);
        let r = s.probe(&all);
        if r["reply"]["op"] != *op {
            failures.push(format!("{what}: want {op}, got {}", r["reply"]));
        }
        if *what == "option BLKSIZE=8"
            && r["reply"]["options"] != serde_json::json!({"blksize": "8"})
        {
            failures.push(format!(
                "{what}: OACK must grant the first blksize only, lower-case: {}",
                r["reply"]
            ));
        }
    }
    let m = s.metrics();
    for (sample, at_least) in [
        ("ironboot_tftp_requests_total{outcome=\"not_found\"}", 2),
        ("ironboot_tftp_requests_total{outcome=\"refused_name\"}", 4),
        ("ironboot_tftp_requests_total{outcome=\"write_refused\"}", 1),
        ("ironboot_tftp_requests_total{outcome=\"bad_options\"}", 6),
        ("ironboot_tftp_requests_total{outcome=\"bad_mode\"}", 2),
        ("ironboot_tftp_requests_total{outcome=\"malformed\"}", 1),
        ("ironboot_tftp_errors_sent_total{code=\"5\"}", 2),
    ] {
        match metrics::count(&m, sample) {
            Some(v) if v >= at_least => {}
            other => failures.push(format!("/metrics {sample} = {other:?}, want >= {at_least}")),
        }
    }
    s.assert_healthy();
    assert_no_failures("errors", &failures, cases.len() + accepted.len() + 7);
}

// ------------------------------------------------------------------ silent client, limits

#[test]
fn tftp_silent_client_is_dropped_and_its_slot_freed() {
    // One transfer per client address, so a held slot is visible as "busy". The client
    // acknowledges DATA 1 (a request takes a slot only once its client proves it
    // receives), then goes silent.
    let mut s = Server::start("silent", &["--tftp-max-per-client", "1"]);
    let listen = "9";
    let stall = s.spawn(
        "python3",
        &[
            PROBE, "stall", "--file", "snp.efi", "--listen", listen, "--prove",
        ],
        30,
    );
    sleep(Duration::from_millis(1500));
    let active = s.metric("ironboot_tftp_active_transfers");
    assert_eq!(
        active, 1,
        "the silent client's transfer must be active while it retries"
    );
    let r = s.probe(&["send", "--file", "undionly.kpxe"]);
    assert!(
        r["reply"]["op"] == "ERROR" && r["reply"]["code"] == 0,
        "a second transfer from the same address while the silent one holds the only \
         per-client slot must get ERROR 0 (busy); got {}",
        r["reply"]
    );
    let out = stall
        .wait_with_output()
        .expect("wait for the stalling probe");
    let v = parse_probe(&out, &["stall"]);
    let all = v["packets"].as_array().cloned().unwrap_or_default();
    assert!(
        all.first()
            .is_some_and(|p| p["op"] == "DATA" && p["block"] == 1),
        "DATA 1 first: {all:?}"
    );
    let packets = &all[1..];
    let times: Vec<f64> = packets.iter().filter_map(|p| p["t"].as_f64()).collect();
    let all_data2 = packets.iter().all(|p| p["op"] == "DATA" && p["block"] == 2);
    assert!(
        all_data2 && packets.len() == 1 + RETRIES,
        "a client that ACKs DATA 1 and never DATA 2 must see DATA 2 {} times (first send + \
         {RETRIES} retransmissions at the 1 s default timeout), then nothing; got {} packets: \
         {packets:?}",
        1 + RETRIES,
        packets.len()
    );
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (0.5..=3.0).contains(&gap),
            "retransmissions must be about 1 s apart (default timeout); times {times:?}"
        );
    }
    let active = s.wait_metric("ironboot_tftp_active_transfers", 0, Duration::from_secs(3));
    assert_eq!(
        active, 0,
        "the silent client's slot must be freed after the retry limit"
    );
    let m = s.metrics();
    let timeouts = metrics::count(
        &m,
        "ironboot_tftp_transfers_failed_total{reason=\"timeout\"}",
    );
    assert_eq!(
        timeouts,
        Some(1),
        "ironboot_tftp_transfers_failed_total{{reason=\"timeout\"}} must count the dropped transfer"
    );
    // The window (one block) is resent once, then probed (the same block) until the end.
    let window = metrics::count(&m, "ironboot_tftp_retransmissions_total{cause=\"timeout\"}");
    let probes = metrics::count(&m, "ironboot_tftp_retransmissions_total{cause=\"probe\"}");
    assert_eq!(
        (window, probes),
        (Some(1), Some(RETRIES as u64 - 1)),
        "retransmissions on timeout: the window once, then probes"
    );
    assert_eq!(
        metrics::count(&m, "ironboot_tftp_requests_total{outcome=\"client_busy\"}"),
        Some(1)
    );
    // The slot is free again: a new transfer from the same address starts.
    let r = s.probe(&["send", "--file", "undionly.kpxe"]);
    assert!(
        r["reply"]["op"] == "DATA" && r["reply"]["block"] == 1,
        "after the silent transfer was dropped, the same address must get a transfer again; got {}",
        r["reply"]
    );
    // A client that never acknowledges DATA 1 (or a forged source address) holds no slot
    // and gets DATA 1 twice: the first send and one resend, then nothing.
    let v = s.probe(&["stall", "--file", "snp.efi", "--listen", "4"]);
    let packets = v["packets"].as_array().cloned().unwrap_or_default();
    let all_data1 = packets.iter().all(|p| p["op"] == "DATA" && p["block"] == 1);
    assert!(
        all_data1 && packets.len() == 2,
        "an unproven request must see DATA 1 twice, then nothing; got {packets:?}"
    );
    let pending = s.wait_metric("ironboot_tftp_pending_requests", 0, Duration::from_secs(10));
    assert_eq!(pending, 0, "the unproven request must be forgotten");
    assert_eq!(
        metrics::count(
            &s.metrics(),
            "ironboot_tftp_transfers_failed_total{reason=\"unproven\"}"
        ),
        Some(1)
    );
    s.assert_healthy();
}

#[test]
fn tftp_limits_answer_busy() {
    let mut s = Server::start(
        "limits",
        &["--tftp-max-per-client", "3", "--tftp-max-transfers", "5"],
    );
    // 4 from 127.0.0.1: 3 start, the 4th is over the per-client cap. Then 3 from 127.0.0.2:
    // 2 start (5 in all), the 3rd is over the server's cap. Each client acknowledges DATA
    // 1: only transfers whose client proved it receives count toward the limits.
    let r = s.probe(&[
        "hold",
        "--prove",
        "--file",
        "snp.efi",
        "--group",
        "127.0.0.1:4",
        "--group",
        "127.0.0.2:3",
    ]);
    let results = r["results"].as_array().cloned().unwrap_or_default();
    let want = [
        "DATA",
        "DATA",
        "DATA",
        "busy-client",
        "DATA",
        "DATA",
        "busy-server",
    ];
    let mut failures = Vec::new();
    if results.len() != want.len() {
        failures.push(format!("want {} answers, got {r}", want.len()));
    }
    for (i, (res, w)) in results.iter().zip(want).enumerate() {
        let reply = &res["reply"];
        let ok = match w {
            "DATA" => reply["op"] == "DATA" && reply["block"] == 1,
            _ => {
                reply["op"] == "ERROR"
                    && reply["code"] == 0
                    && reply["message"].as_str().is_some_and(|m| !m.is_empty())
            }
        };
        if !ok {
            let what = match w {
                "DATA" => "DATA 1 (transfer started)".to_owned(),
                "busy-client" => "ERROR 0 (over --tftp-max-per-client 3), not silence".to_owned(),
                _ => "ERROR 0 (over --tftp-max-transfers 5), not silence".to_owned(),
            };
            failures.push(format!(
                "request {} from {}: want {what}, got {reply}",
                i + 1,
                res["src"]
            ));
        }
    }
    let m = s.metrics();
    for (sample, want) in [
        ("ironboot_tftp_requests_total{outcome=\"client_busy\"}", 1),
        ("ironboot_tftp_requests_total{outcome=\"server_busy\"}", 1),
        ("ironboot_tftp_errors_sent_total{code=\"0\"}", 2),
        ("ironboot_tftp_transfers_started_total", 5),
    ] {
        let got = metrics::count(&m, sample);
        if got != Some(want) {
            failures.push(format!("/metrics {sample} = {got:?}, want {want}"));
        }
    }
    // The probe aborted its transfers with ERROR: every slot is free again.
    let active = s.wait_metric("ironboot_tftp_active_transfers", 0, Duration::from_secs(3));
    if active != 0 {
        failures.push(format!(
            "{active} transfers still active after the clients aborted"
        ));
    }
    s.assert_healthy();
    assert_no_failures("limits", &failures, want.len() + 5);
}

#[test]
fn tftp_single_port_serves_data_from_port_69() {
    let mut s = Server::start("single", &["--tftp-single-port"]);
    let snp = read(SNPONLY);
    let r = s.probe(&[
        "fetch",
        "--file",
        "snp.efi",
        "--opt",
        "blksize=1468",
        "--opt",
        "windowsize=4",
        "--out",
        &s.out_path("single.bin"),
    ]);
    assert_eq!(r["ok"], true, "single-port fetch failed: {r}");
    assert_eq!(
        r["data_ports"],
        serde_json::json!([69]),
        "--tftp-single-port: OACK and DATA must come from port 69: {r}"
    );
    assert_eq!(r["first"]["from"], format!("{HOST}:69"), "OACK source: {r}");
    let got = read(&s.out_path("single.bin"));
    assert!(
        got == snp,
        "single-port file: {}",
        first_difference(&got, &snp)
    );
    let mut failures = Vec::new();
    failures.extend(atftp_case(
        &s,
        "snp.efi",
        &snp,
        &[("blksize", 1468), ("windowsize", 4)],
        "single",
    ));
    tftp_hpa_case(&s, "undionly.kpxe", &read(UNDIONLY), true, &mut failures);
    s.assert_healthy();
    assert_no_failures("single", &failures, 2);
}

// ------------------------------------------------------------------ HTTP boot path

struct HttpAnswer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

fn http(s: &Server, path: &str, extra: &[&str]) -> HttpAnswer {
    let body = s.out_path("http.body");
    let headers = s.out_path("http.headers");
    let _ = fs::remove_file(&body);
    let url = format!("{API}{path}");
    let mut args = vec![
        "-sS",
        "--max-time",
        "10",
        "-o",
        &body,
        "-D",
        &headers,
        "-w",
        "%{http_code}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = s.exec("curl", &args, 20);
    assert!(
        out.status.success(),
        "curl {} {url} failed: {}",
        extra.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    HttpAnswer {
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: fs::read_to_string(&headers)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        body: fs::read(&body).unwrap_or_default(),
    }
}

const KNOWN_MAC: &str = "52:54:00:aa:bb:01";
const KNOWN_UUID: &str = "8e1f0000-0000-4000-8000-00000000aa01";
const DEFAULT_SCRIPT: &str = "#!ipxe\necho DEFAULT-TARGET ${uuid}\n";
const MACHINE_SCRIPT: &str = "#!ipxe\necho MACHINE-TARGET ${uuid}\n";

#[test]
fn http_boot_path() {
    let inventory = format!(
        "[default]\nscript = \"\"\"{DEFAULT_SCRIPT}\"\"\"\n\n[[machine]]\nname = \"known\"\n\
         mac = \"{KNOWN_MAC}\"\nscript = \"\"\"{MACHINE_SCRIPT}\"\"\"\n"
    );
    let mut s = Server::start_with("http", &[], Some(&inventory));
    let snp = read(SNPONLY);
    let undi = read(UNDIONLY);
    let mut f = Vec::new();
    let mut check = |cond: bool, what: String| {
        if !cond {
            f.push(what);
        }
    };

    let a = http(&s, "/ipxe/init.ipxe", &[]);
    let body = String::from_utf8_lossy(&a.body).into_owned();
    check(
        a.status == 200
            && body.starts_with("#!ipxe\n")
            && body.contains(&format!(
                "chain --replace {API}/ipxe/boot.ipxe?uuid=${{uuid}}"
            )),
        format!(
            "GET /ipxe/init.ipxe: {} {body:?}; want 200, an iPXE script chaining to {API}/ipxe/boot.ipxe",
            a.status
        ),
    );

    let a = http(&s, "/tftp/snp.efi", &[]);
    check(
        a.status == 200
            && a.body == snp
            && a.headers
                .contains(&format!("content-length: {}", snp.len())),
        format!(
            "GET /tftp/snp.efi: status {}, body {}",
            a.status,
            first_difference(&a.body, &snp)
        ),
    );
    let a = http(&s, "/tftp/amd64/snp.efi", &[]);
    check(
        a.status == 200 && a.body == snp,
        format!("GET /tftp/amd64/snp.efi (alias): status {}", a.status),
    );
    let a = http(&s, "/tftp/snp.efi", &["-r", "100-1099"]);
    check(
        a.status == 206
            && a.body == snp[100..1100]
            && a.headers
                .contains(&format!("content-range: bytes 100-1099/{}", snp.len())),
        format!(
            "GET /tftp/snp.efi Range bytes=100-1099: status {}, {} body bytes, headers {:?}",
            a.status,
            a.body.len(),
            a.headers
        ),
    );
    let a = http(&s, "/tftp/snp.efi", &["-H", "Range: bytes=-500"]);
    check(
        a.status == 206 && a.body == snp[snp.len() - 500..],
        format!(
            "GET /tftp/snp.efi Range bytes=-500: status {}, {} bytes",
            a.status,
            a.body.len()
        ),
    );
    let a = http(&s, "/tftp/snp.efi", &["-H", "Range: bytes=99999999-"]);
    check(
        a.status == 416
            && a.headers
                .contains(&format!("content-range: bytes */{}", snp.len())),
        format!(
            "GET /tftp/snp.efi Range past the end: status {}, want 416 with Content-Range */len",
            a.status
        ),
    );
    let a = http(&s, "/tftp/undionly.kpxe", &["-I"]);
    check(
        a.status == 200
            && a.headers
                .contains(&format!("content-length: {}", undi.len()))
            && a.headers.contains("accept-ranges: bytes"),
        format!(
            "HEAD /tftp/undionly.kpxe: status {}, headers {:?}",
            a.status, a.headers
        ),
    );
    let a = http(&s, "/tftp/no-such-file", &[]);
    check(
        a.status == 404,
        format!("GET /tftp/no-such-file: status {}, want 404", a.status),
    );
    let a = http(&s, "/tftp/..%2f..%2fetc%2fpasswd", &["--path-as-is"]);
    check(
        a.status == 400 || a.status == 404,
        format!(
            "GET /tftp/..%2f..%2fetc%2fpasswd: status {}, want 400 or 404",
            a.status
        ),
    );

    let a = http(&s, "/healthz", &[]);
    check(
        a.status == 200 && a.body == b"ok\n",
        format!(
            "GET /healthz: {} {:?}",
            a.status,
            String::from_utf8_lossy(&a.body)
        ),
    );

    // The boot script: the inventory's per-machine entry by MAC, else [default].
    let hexhyp = KNOWN_MAC.replace(':', "-");
    let a = http(
        &s,
        &format!("/ipxe/boot.ipxe?uuid={KNOWN_UUID}&mac={hexhyp}&arch=x86_64"),
        &[],
    );
    check(
        a.status == 200 && a.body == MACHINE_SCRIPT.as_bytes(),
        format!(
            "GET /ipxe/boot.ipxe for the known MAC: {} {:?}, want the [[machine]] script",
            a.status,
            String::from_utf8_lossy(&a.body)
        ),
    );
    let a = http(
        &s,
        "/ipxe/boot.ipxe?uuid=8e1f0000-0000-4000-8000-00000000aa02&mac=52-54-00-aa-bb-02&arch=x86_64",
        &[],
    );
    check(
        a.status == 200 && a.body == DEFAULT_SCRIPT.as_bytes(),
        format!(
            "GET /ipxe/boot.ipxe for an unknown machine: {} {:?}, want the [default] script",
            a.status,
            String::from_utf8_lossy(&a.body)
        ),
    );
    let a = http(&s, "/ipxe/boot.ipxe?uuid=not-a-uuid&arch=x86_64", &[]);
    check(
        a.status == 400,
        format!(
            "GET /ipxe/boot.ipxe with a bad uuid: {}, want 400",
            a.status
        ),
    );

    // Both machines are recorded (the store is written asynchronously: poll).
    let start = Instant::now();
    let machines = loop {
        let a = http(&s, "/api/v1/machines", &[]);
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        let n = v.as_array().map_or(0, Vec::len);
        if n >= 2 || start.elapsed() > Duration::from_secs(5) {
            check(
                a.status == 200,
                format!("GET /api/v1/machines: status {}", a.status),
            );
            break v;
        }
        sleep(Duration::from_millis(100));
    };
    let known = machines
        .as_array()
        .and_then(|l| l.iter().find(|m| m["uuid"] == KNOWN_UUID).cloned());
    check(
        machines.as_array().map_or(0, Vec::len) == 2
            && known.as_ref().is_some_and(|m| {
                m["macs"] == serde_json::json!([KNOWN_MAC])
                    && m["arch"] == "amd64"
                    && m["last_ip"] == HOST
            }),
        format!(
            "GET /api/v1/machines: want the 2 machines asked for, {KNOWN_UUID} with mac {KNOWN_MAC}; got {machines}"
        ),
    );

    let a = http(&s, "/metrics", &[]);
    let m = String::from_utf8_lossy(&a.body).into_owned();
    check(
        a.status == 200
            && a.headers
                .contains("content-type: text/plain; version=0.0.4"),
        format!("GET /metrics: status {}, headers {:?}", a.status, a.headers),
    );
    for family in [
        "ironboot_dhcp_requests_total",
        "ironboot_dhcp_replies_total",
        "ironboot_tftp_requests_total",
        "ironboot_tftp_active_transfers",
        "ironboot_http_requests_total",
        "ironboot_boot_decisions_total",
        "ironboot_store_machines",
    ] {
        check(
            m.contains(&format!("# TYPE {family} ")),
            format!("/metrics has no {family} family"),
        );
    }
    for (sample, want) in [
        (
            "ironboot_http_requests_total{route=\"init_script\",status=\"200\"}",
            1,
        ),
        (
            "ironboot_http_requests_total{route=\"boot_script\",status=\"200\"}",
            2,
        ),
        (
            "ironboot_http_requests_total{route=\"boot_script\",status=\"400\"}",
            1,
        ),
        (
            "ironboot_http_requests_total{route=\"files\",status=\"206\"}",
            2,
        ),
        (
            "ironboot_http_requests_total{route=\"files\",status=\"416\"}",
            1,
        ),
        (
            "ironboot_http_requests_total{route=\"files\",status=\"404\"}",
            1,
        ),
        ("ironboot_boot_decisions_total{kind=\"script\"}", 2),
    ] {
        let got = metrics::count(&m, sample);
        check(
            got == Some(want),
            format!("/metrics {sample} = {got:?}, want {want}"),
        );
    }
    // At least the one above; the readiness poll asked too.
    let healthz = metrics::count(
        &m,
        "ironboot_http_requests_total{route=\"healthz\",status=\"200\"}",
    );
    check(
        healthz.is_some_and(|n| n >= 1),
        format!("/metrics healthz 200 = {healthz:?}, want >= 1"),
    );
    s.assert_healthy();
    let mut report = String::new();
    for line in &f {
        let _ = writeln!(report, "  - {line}");
    }
    assert!(f.is_empty(), "[http] {} checks failed:\n{report}", f.len());
}
