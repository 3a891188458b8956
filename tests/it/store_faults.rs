//! The machine store's faults, with the real binary in standalone mode on loopback:
//!
//! - the state directory's disk fills up (a small tmpfs mounted by the test): boot scripts
//!   are still served, the store reports the failure (`ironboot_store_writable 0`,
//!   `ironboot_store_write_errors_total`, one log line), records again once space
//!   returns, and the database opens clean afterwards (redb's integrity check);
//! - ironboot is killed with SIGKILL at random moments while machines boot, again and
//!   again on the same state directory: the database always reopens intact, committed
//!   boots are never lost, and no machine's boot count ever exceeds the requests sent
//!   for it (nothing is recorded twice).
//!
//! As root (the TFTP port, the tmpfs mount): `sudo -E cargo test --test it store_faults::`.

use ironboot_test_support::{launch, metrics, prereqs, process};

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use process::{run_ok, stop};
use redb::{ReadableTable, TableDefinition};

const HOST: &str = "127.0.0.1";
/// The store's table, as `src/boot/store.rs` defines it.
const MACHINES: TableDefinition<&str, &[u8]> = TableDefinition::new("machines");

fn check_prerequisites(test: &str) {
    if let Some(why) = prereqs::missing_prerequisites(
        "the machine store fault test",
        "store_faults",
        &[("mount", "mount"), ("umount", "mount")],
        &[],
    ) {
        panic!("{test}: {why}");
    }
}

/// A port free on loopback now (the kernel's pick).
fn free_port() -> u16 {
    TcpListener::bind((HOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One ironboot, standalone, on loopback; stopped by its PID when dropped.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Start ironboot on `state`, with a dummy boot file in `work/ipxe` and its log in
    /// `work/<label>.log`; returns once `/healthz` answers.
    fn start(work: &Path, state: &Path, label: &str) -> Server {
        let ipxe = work.join("ipxe");
        std::fs::create_dir_all(&ipxe).expect("mkdir ipxe");
        // Any bytes: nothing boots them here.
        std::fs::write(ipxe.join("undionly.kpxe"), vec![0x90u8; 4096]).expect("boot file");
        let port = free_port();
        let log = work.join(format!("{label}.log"));
        let child = launch::command()
            .args([
                "--disable-dhcp-proxy",
                "--api-listen-address",
                HOST,
                "--api-advertise-address",
                HOST,
                "--api-port",
                &port.to_string(),
                "--state-dir",
                &state.display().to_string(),
                "--ipxe-dir",
                &ipxe.display().to_string(),
                // Every request comes from 127.0.0.1: the per-source limit is not tested here.
                "--store-new-machines-per-source",
                "1000000",
            ])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start ironboot");
        let mut server = Server {
            child: Some(child),
            addr: SocketAddr::new(HOST.parse().unwrap(), port),
            log,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ironboot exited at start ({status}):\n{}",
                    server.log_text()
                );
            }
            if get(server.addr, "/healthz").is_ok_and(|(s, _)| s == 200) {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "ironboot did not answer /healthz within 60 s:\n{}",
                server.log_text()
            );
            sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, by PID.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The value of an unlabelled sample (or one with its labels written out).
    fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = get(self.addr, "/metrics").ok()?;
        metrics::value(&String::from_utf8_lossy(&body), sample)
    }

    /// Every machine ID the API lists, following the pages.
    fn listed(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let mut path = "/api/v1/machines?limit=10000".to_owned();
        loop {
            let (status, body) = get(self.addr, &path).expect("GET /api/v1/machines");
            assert_eq!(status, 200, "{path}");
            let page: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            let page = page.as_array().expect("a JSON array");
            if page.is_empty() {
                return ids;
            }
            ids.extend(page.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
            path = format!("/api/v1/machines?limit=10000&after={}", ids.last().unwrap());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

/// One `GET` on a fresh connection: status and body (chunked bodies decoded).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: ironboot\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| std::io::Error::other("bad chunk"))?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..line_end]).unwrap_or("").trim(),
                16,
            )
            .map_err(std::io::Error::other)?;
            if size == 0 {
                break;
            }
            let start = line_end + 2;
            out.extend_from_slice(&rest[start..start + size]);
            rest = &rest[start + size + 2..];
        }
        body = out;
    }
    Ok((status, body))
}

fn uuid(round: u32, i: u32) -> String {
    format!("5707e000-0000-4000-8000-{round:04x}{i:08x}")
}

/// `boot.ipxe` for machine `id`, with the longest fields the store keeps.
fn boot(addr: SocketAddr, id: &str) -> std::io::Result<u16> {
    let long = "s".repeat(200);
    get(
        addr,
        &format!(
            "/ipxe/boot.ipxe?uuid={id}&mac=52-54-00-12-34-56&arch=x86_64&serial={long}&hostname={long}&domain={long}"
        ),
    )
    .map(|(s, _)| s)
}

/// Poll `cond` every 200 ms for up to `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        sleep(Duration::from_millis(200));
    }
    cond()
}

/// A tmpfs of `size` on `dir`, unmounted when dropped (after the server using it is
/// stopped: declare it before the server).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir mount point");
        run_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "ironboot-store-test",
                &dir.display().to_string(),
            ],
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.0)
            .env("PATH", prereqs::path_env())
            .status();
    }
}

/// Open the database file as a fresh process would (redb repairs an interrupted commit),
/// check its integrity and read every record: ID to boot count.
fn read_db(path: &Path) -> BTreeMap<String, u64> {
    let mut db = redb::Database::create(path)
        .unwrap_or_else(|e| panic!("{}: does not open: {e}", path.display()));
    assert!(
        db.check_integrity()
            .unwrap_or_else(|e| panic!("{}: integrity check failed: {e}", path.display())),
        "{}: integrity check repaired the file: it was not clean",
        path.display()
    );
    let txn = db.begin_read().expect("read transaction");
    let table = txn.open_table(MACHINES).expect("the machines table");
    let mut out = BTreeMap::new();
    for row in table.iter().expect("iterate") {
        let (k, v) = row.expect("a row");
        let record: serde_json::Value =
            serde_json::from_slice(v.value()).unwrap_or_else(|e| panic!("{}: {e}", k.value()));
        let boots = record["boots"].as_u64().expect("boots");
        assert_eq!(record["id"], k.value());
        out.insert(k.value().to_owned(), boots);
    }
    out
}

#[test]
fn a_full_disk_stops_recording_not_booting_and_the_store_recovers() {
    check_prerequisites("a_full_disk_stops_recording_not_booting_and_the_store_recovers");
    let work = tempfile::Builder::new()
        .prefix("ironboot-store-enospc-")
        .tempdir()
        .expect("temp dir");
    let state = work.path().join("state");
    let _tmpfs = Tmpfs::mount(&state, "4m");
    let server = Server::start(work.path(), &state, "enospc");

    for i in 0..20 {
        assert_eq!(boot(server.addr, &uuid(0, i)).unwrap(), 200);
    }
    assert!(
        wait_for(Duration::from_secs(30), || server.listed().len() == 20),
        "the first 20 machines recorded; listed {}",
        server.listed().len()
    );

    // Fill the disk.
    let filler = state.join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write_all(&block).and_then(|()| f.sync_data()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }

    // New machines keep booting; the store's writes fail once its file must grow.
    let mut round = 1;
    let mut booted = 0;
    let failed = loop {
        for i in 0..100 {
            assert_eq!(
                boot(server.addr, &uuid(round, i)).unwrap(),
                200,
                "boot scripts are served with a full disk"
            );
            booted += 1;
        }
        if wait_for(Duration::from_secs(2), || {
            server.metric("ironboot_store_writable") == Some(0.0)
        }) {
            break true;
        }
        round += 1;
        if round > 60 {
            break false;
        }
    };
    assert!(
        failed,
        "{booted} machines booted on a full disk and the store still reports writable:\n{}",
        server.log_text()
    );
    assert!(server.metric("ironboot_store_write_errors_total").unwrap() >= 1.0);
    assert!(
        server
            .metric("ironboot_store_sightings_total{result=\"dropped_write_error\"}")
            .unwrap()
            >= 1.0
    );
    // More boots while full: still served, and not one log line each.
    for i in 0..200 {
        assert_eq!(boot(server.addr, &uuid(100, i)).unwrap(), 200);
    }
    sleep(Duration::from_secs(2));
    let lines = server
        .log_text()
        .lines()
        .filter(|l| l.contains("machine store write failed"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines about failed writes:\n{}",
        server.log_text()
    );

    // Space returns: the store reopens and records again.
    let full_at = Instant::now();
    std::fs::remove_file(&filler).expect("remove filler");
    let back = uuid(200, 1);
    assert!(
        wait_for(Duration::from_secs(30), || {
            let _ = boot(server.addr, &back);
            server.metric("ironboot_store_writable") == Some(1.0) && server.listed().contains(&back)
        }),
        "the store records again once space returns:\n{}",
        server.log_text()
    );
    assert!(server.metric("ironboot_store_reopens_total").unwrap() >= 1.0);
    assert!(server.log_text().contains("machine store writable again"));
    eprintln!(
        "full disk: {} boot scripts served while the store could not write ({} failed \
         writes, {} sightings dropped, {lines} log lines); recording again {:?} after space \
         returned, {} reopenings",
        booted + 200,
        server
            .metric("ironboot_store_write_errors_total")
            .unwrap_or(0.0),
        server
            .metric("ironboot_store_sightings_total{result=\"dropped_write_error\"}")
            .unwrap_or(0.0),
        full_at.elapsed(),
        server.metric("ironboot_store_reopens_total").unwrap_or(0.0),
    );
    let listed = server.listed();
    for i in 0..20 {
        assert!(
            listed.contains(&uuid(0, i)),
            "machine {i} from before the fault"
        );
    }
    drop(server);

    // The file opens clean and holds what the API listed.
    let on_disk = read_db(&state.join("machines.redb"));
    assert_eq!(on_disk.keys().cloned().collect::<Vec<_>>(), listed);
    // And ironboot starts on it again.
    let again = Server::start(work.path(), &state, "enospc-restart");
    assert_eq!(again.listed(), listed);
}

/// xorshift64*: the kill times, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn kill_9_during_writes_never_corrupts_nor_records_twice() {
    check_prerequisites("kill_9_during_writes_never_corrupts_nor_records_twice");
    const ROUNDS: u32 = 10;
    const MACHINES: u32 = 40;
    let seed = std::env::var("STORE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("kill times from seed {seed} (STORE_KILL_SEED={seed} repeats them)");
    let mut rng = Rng(seed);
    let work = tempfile::Builder::new()
        .prefix("ironboot-store-kill-")
        .tempdir()
        .expect("temp dir");
    let state = work.path().join("state");
    let db = state.join("machines.redb");
    // Requests sent per machine, counted before each is written: a request may be
    // recorded even if its answer is lost to the kill, never more often than sent.
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    let mut committed: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut server = Server::start(work.path(), &state, &format!("kill-{round}"));
        let addr = server.addr;
        let stop_flag = Arc::new(AtomicBool::new(false));
        let client = {
            let stop_flag = stop_flag.clone();
            let offset = round * 7;
            std::thread::spawn(move || {
                let mut sent = BTreeMap::<String, u64>::new();
                let mut k = offset;
                while !stop_flag.load(Ordering::Relaxed) {
                    let id = uuid(0, k % MACHINES);
                    *sent.entry(id.clone()).or_default() += 1;
                    if boot(addr, &id).is_err() {
                        break;
                    }
                    k += 1;
                }
                sent
            })
        };
        let after = Duration::from_millis(200 + rng.next() % 1800);
        sleep(after);
        let pid = server.pid();
        server.kill9();
        stop_flag.store(true, Ordering::Relaxed);
        let round_sent = client.join().expect("client thread");
        for (id, n) in &round_sent {
            *sent.entry(id.clone()).or_default() += n;
        }
        let now = read_db(&db);
        for (id, &boots) in &now {
            let limit = sent.get(id).copied().unwrap_or(0);
            assert!(
                boots <= limit,
                "round {round} (pid {pid} killed after {after:?}): {id} has {boots} boots \
                 recorded, only {limit} requests were sent"
            );
        }
        for (id, &before) in &committed {
            let boots = now.get(id).copied().unwrap_or(0);
            assert!(
                boots >= before,
                "round {round}: {id} went from {before} committed boots to {boots}"
            );
        }
        eprintln!(
            "round {round}: killed after {after:?} ({} requests this round); {} boots committed in all",
            round_sent.values().sum::<u64>(),
            now.values().sum::<u64>()
        );
        committed = now;
    }
    assert!(
        committed.values().sum::<u64>() > 0,
        "no boot was ever committed in {ROUNDS} rounds: the test proved nothing"
    );
    // A last clean start lists exactly what the file holds.
    let server = Server::start(work.path(), &state, "kill-final");
    assert_eq!(
        server.listed(),
        committed.keys().cloned().collect::<Vec<_>>()
    );
}
