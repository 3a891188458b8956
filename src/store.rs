//! The machine store: every machine that asked for a boot script, kept across restarts in
//! an embedded database (`<state-dir>/machines.redb`, redb: pure Rust, crash-safe
//! transactions).
//!
//! The HTTP path never touches the database. A handler hands a [`Sighting`] to the
//! [`Recorder`], which only `try_send`s it into a bounded queue (a full queue drops and
//! counts it: a storm must not slow boot scripts). One writer thread drains the queue and
//! writes each batch in one transaction, so a thousand machines booting at once cost a
//! handful of commits. After each commit the writer updates an in-memory mirror, from
//! which [`Machines`] answers `GET /api/v1/machines`: readers see exactly the committed
//! state, without opening a read transaction per request.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::machine::MachineQuery;
use crate::metrics::PrometheusSource;

/// The `--state-dir` default.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/ironboot";
/// The database file in the state directory.
pub(crate) const DB_FILE: &str = "machines.redb";
/// Default capacity of the sighting queue: a whole storm's worth of first requests.
pub(crate) const DEFAULT_QUEUE: usize = 4096;
/// Most sightings written in one transaction.
const MAX_BATCH: usize = 1024;
/// Most machines recorded: requests are unauthenticated, so a flood of invented UUIDs
/// must not grow the database without end. Sightings of new machines beyond this are
/// dropped and counted; known machines are still updated.
pub(crate) const MAX_MACHINES: usize = 100_000;
/// Most MACs kept per machine, for the same reason.
const MAX_MACS: usize = 32;

/// Key: machine ID; value: a JSON [`MachineRecord`] (JSON so fields can be added with
/// `#[serde(default)]` without a migration).
const MACHINES: TableDefinition<&str, &[u8]> = TableDefinition::new("machines");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The state directory cannot be created.
    #[error("state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds the database.
    #[error(
        "machine database {path} is open in another process (is another ironboot running with this --state-dir?)"
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// Any database error (I/O, corruption, an unsupported file version).
    #[error("machine database {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<redb::Error>,
    },
}

/// What is known about one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MachineRecord {
    /// The key: the UUID, or `mac-` and the MAC for machines without one.
    pub(crate) id: String,
    /// SMBIOS UUID.
    #[serde(default)]
    pub(crate) uuid: Option<String>,
    /// MACs it booted from.
    #[serde(default)]
    pub(crate) macs: BTreeSet<String>,
    /// Architecture of its iPXE (`amd64`, `arm64`).
    pub(crate) arch: String,
    /// Address of its last request.
    #[serde(default)]
    pub(crate) last_ip: Option<IpAddr>,
    /// SMBIOS serial, if iPXE sent one.
    #[serde(default)]
    pub(crate) serial: Option<String>,
    /// DHCP host name, if any.
    #[serde(default)]
    pub(crate) hostname: Option<String>,
    /// DHCP domain, if any.
    #[serde(default)]
    pub(crate) domain: Option<String>,
    /// First request, Unix milliseconds.
    pub(crate) first_seen_ms: u64,
    /// Last request, Unix milliseconds.
    pub(crate) last_seen_ms: u64,
    /// The last boot decision's kind (`disk`, `script`, `kernel`).
    pub(crate) last_boot: String,
    /// Boot scripts served to it.
    pub(crate) boots: u64,
}

/// One boot-script request, as the handler saw it.
#[derive(Debug, Clone)]
pub(crate) struct Sighting {
    /// Who asked.
    pub(crate) query: MachineQuery,
    /// From where.
    pub(crate) ip: Option<IpAddr>,
    /// What it was told to boot ([`crate::boot_script::BootTarget::kind`]).
    pub(crate) decision: &'static str,
    /// When, Unix milliseconds.
    pub(crate) at_ms: u64,
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix milliseconds as RFC 3339 UTC (`2026-11-22T03:04:05.678Z`).
pub(crate) fn format_time(ms: u64) -> String {
    // Days to civil date: Howard Hinnant's algorithm (proleptic Gregorian calendar).
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    );
    s
}

/// Fold a sighting into what was known.
fn apply(existing: Option<&MachineRecord>, s: &Sighting) -> MachineRecord {
    let q = &s.query;
    let mut r = existing.cloned().unwrap_or_else(|| MachineRecord {
        id: q.machine_id(),
        uuid: None,
        macs: BTreeSet::new(),
        arch: String::new(),
        last_ip: None,
        serial: None,
        hostname: None,
        domain: None,
        first_seen_ms: s.at_ms,
        last_seen_ms: s.at_ms,
        last_boot: String::new(),
        boots: 0,
    });
    if let Some(u) = q.uuid {
        r.uuid = Some(u.to_string());
    }
    if let Some(m) = q.mac.filter(|_| r.macs.len() < MAX_MACS) {
        r.macs.insert(m.to_string());
    }
    q.arch.as_str().clone_into(&mut r.arch);
    r.last_ip = s.ip.or(r.last_ip);
    for (new, old) in [
        (&q.serial, &mut r.serial),
        (&q.hostname, &mut r.hostname),
        (&q.domain, &mut r.domain),
    ] {
        if new.is_some() {
            old.clone_from(new);
        }
    }
    r.first_seen_ms = r.first_seen_ms.min(s.at_ms);
    r.last_seen_ms = r.last_seen_ms.max(s.at_ms);
    s.decision.clone_into(&mut r.last_boot);
    r.boots += 1;
    r
}

/// Counters of the store, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct StoreStats {
    written: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_store_full: AtomicU64,
    dropped_closed: AtomicU64,
    dropped_write_error: AtomicU64,
    batches: AtomicU64,
    machines: AtomicU64,
}

impl StoreStats {
    /// Sightings written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }

    /// Sightings dropped so far, all reasons.
    pub(crate) fn dropped(&self) -> u64 {
        [
            &self.dropped_queue_full,
            &self.dropped_store_full,
            &self.dropped_closed,
            &self.dropped_write_error,
        ]
        .iter()
        .map(|c| c.load(Relaxed))
        .sum()
    }

    /// Transactions committed so far.
    #[cfg(test)]
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(Relaxed)
    }
}

impl PrometheusSource for StoreStats {
    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP ironboot_store_sightings_total Boot-script requests handed to the machine store, by outcome.\n\
             # TYPE ironboot_store_sightings_total counter\n",
        );
        for (result, c) in [
            ("written", &self.written),
            ("dropped_queue_full", &self.dropped_queue_full),
            ("dropped_store_full", &self.dropped_store_full),
            ("dropped_closed", &self.dropped_closed),
            ("dropped_write_error", &self.dropped_write_error),
        ] {
            let _ = writeln!(
                out,
                "ironboot_store_sightings_total{{result=\"{result}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ironboot_store_batches_total Write transactions committed by the machine store.\n\
             # TYPE ironboot_store_batches_total counter\n\
             ironboot_store_batches_total {}\n\
             # HELP ironboot_store_machines Machines recorded.\n\
             # TYPE ironboot_store_machines gauge\n\
             ironboot_store_machines {}",
            self.batches.load(Relaxed),
            self.machines.load(Relaxed)
        );
    }
}

/// The database.
pub(crate) struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Open (creating if needed) `state_dir/machines.redb`, creating the directory too.
    pub(crate) fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.to_owned(),
            source,
        })?;
        Store::open_file(&state_dir.join(DB_FILE))
    }

    /// Open (creating if needed) the database file `path`.
    pub(crate) fn open_file(path: &Path) -> Result<Store, StoreError> {
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked {
                    path: path.to_owned(),
                });
            }
            Err(e) => return Err(db_error(path, e)),
        };
        let store = Store {
            db,
            path: path.to_owned(),
        };
        // Create the table now, so reads of a new database need no special case.
        store.write(&BTreeMap::new())?;
        Ok(store)
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: impl Into<redb::Error>) -> StoreError {
        db_error(&self.path, e)
    }

    /// Every record. Records that do not decode (written by a newer, incompatible
    /// ironboot) are skipped with a warning: the store is informational and must not stop
    /// machines from booting.
    pub(crate) fn read_all(&self) -> Result<BTreeMap<String, MachineRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(MACHINES).map_err(|e| self.error(e))?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(|e| self.error(e))? {
            let (k, v) = row.map_err(|e| self.error(e))?;
            match serde_json::from_slice::<MachineRecord>(v.value()) {
                Ok(r) => {
                    out.insert(k.value().to_owned(), r);
                }
                Err(e) => {
                    warn!(path = %self.path.display(), key = k.value(), error = %e, "skipping undecodable machine record")
                }
            }
        }
        Ok(out)
    }

    /// Write `records` in one transaction.
    fn write(&self, records: &BTreeMap<String, MachineRecord>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(MACHINES).map_err(|e| self.error(e))?;
            for (k, r) in records {
                // Serialising plain owned data cannot fail.
                let v = serde_json::to_vec(r).unwrap_or_default();
                table
                    .insert(k.as_str(), v.as_slice())
                    .map_err(|e| self.error(e))?;
            }
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// Load the mirror and start the writer thread (needs a tokio runtime). The writer
    /// runs until every [`Recorder`] clone is dropped, then writes what is queued and
    /// ends; await [`StoreHandles::writer`] at shutdown for a complete last batch.
    pub(crate) fn start(self, queue: usize) -> Result<StoreHandles, StoreError> {
        let records = self.read_all()?;
        let stats = Arc::new(StoreStats::default());
        stats
            .machines
            .store(u64::try_from(records.len()).unwrap_or(u64::MAX), Relaxed);
        let mirror = Arc::new(RwLock::new(records));
        let (tx, rx) = mpsc::channel(queue.max(1));
        let writer = {
            let (mirror, stats) = (mirror.clone(), stats.clone());
            tokio::task::spawn_blocking(move || self.writer_loop(rx, &mirror, &stats))
        };
        Ok(StoreHandles {
            recorder: Recorder {
                tx,
                stats: stats.clone(),
            },
            machines: Machines { mirror },
            stats,
            writer,
        })
    }

    fn writer_loop(
        self,
        mut rx: mpsc::Receiver<Sighting>,
        mirror: &RwLock<BTreeMap<String, MachineRecord>>,
        stats: &StoreStats,
    ) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            let mut updated: BTreeMap<String, MachineRecord> = BTreeMap::new();
            let mut applied = 0u64;
            {
                let known = mirror.read().unwrap_or_else(PoisonError::into_inner);
                let mut new = 0usize;
                for s in batch.drain(..) {
                    let id = s.query.machine_id();
                    let current = updated.get(&id).or_else(|| known.get(&id));
                    if current.is_none() {
                        if known.len() + new >= MAX_MACHINES {
                            stats.dropped_store_full.fetch_add(1, Relaxed);
                            continue;
                        }
                        new += 1;
                    }
                    let record = apply(current, &s);
                    updated.insert(id, record);
                    applied += 1;
                }
            }
            match self.write(&updated) {
                Ok(()) => {
                    let mut m = mirror.write().unwrap_or_else(PoisonError::into_inner);
                    m.extend(updated);
                    stats
                        .machines
                        .store(u64::try_from(m.len()).unwrap_or(u64::MAX), Relaxed);
                    stats.written.fetch_add(applied, Relaxed);
                    stats.batches.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    // One line per failed batch (not per request); the next batch retries
                    // from the committed state.
                    stats.dropped_write_error.fetch_add(applied, Relaxed);
                    error!(error = %e, sightings = applied, "machine store write failed; sightings dropped");
                }
            }
        }
    }
}

fn db_error(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    let source = e.into();
    if matches!(source, redb::Error::DatabaseAlreadyOpen) {
        return StoreError::Locked {
            path: path.to_owned(),
        };
    }
    StoreError::Db {
        path: path.to_owned(),
        source: Box::new(source),
    }
}

/// What [`Store::start`] hands out.
#[derive(Debug)]
pub(crate) struct StoreHandles {
    /// For the HTTP handlers.
    pub(crate) recorder: Recorder,
    /// For `GET /api/v1/machines`.
    pub(crate) machines: Machines,
    /// For `/metrics`.
    pub(crate) stats: Arc<StoreStats>,
    /// The writer; ends after the last [`Recorder`] is dropped.
    pub(crate) writer: tokio::task::JoinHandle<()>,
}

/// Hands sightings to the writer without waiting.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    tx: mpsc::Sender<Sighting>,
    stats: Arc<StoreStats>,
}

impl Recorder {
    /// Queue `s` for the writer; if the queue is full (or the writer gone) drop and count
    /// it. Never blocks. Returns whether it was queued.
    pub(crate) fn record(&self, s: Sighting) -> bool {
        match self.tx.try_send(s) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dropped_queue_full.fetch_add(1, Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.dropped_closed.fetch_add(1, Relaxed);
                false
            }
        }
    }
}

/// Read access to the recorded machines (the committed state).
#[derive(Debug, Clone)]
pub(crate) struct Machines {
    mirror: Arc<RwLock<BTreeMap<String, MachineRecord>>>,
}

impl Machines {
    /// Run `f` over every record, sorted by ID, under a read lock (keep `f` short).
    pub(crate) fn with_all<T>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = &MachineRecord>) -> T,
    ) -> T {
        let m = self.mirror.read().unwrap_or_else(PoisonError::into_inner);
        f(&mut m.values())
    }

    /// One record.
    #[cfg(test)]
    pub(crate) fn get(&self, id: &str) -> Option<MachineRecord> {
        let m = self.mirror.read().unwrap_or_else(PoisonError::into_inner);
        m.get(id).cloned()
    }

    /// Number of machines recorded.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.mirror
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Arch;

    fn sighting(
        uuid: Option<&str>,
        mac: Option<&str>,
        at_ms: u64,
        decision: &'static str,
    ) -> Sighting {
        Sighting {
            query: MachineQuery {
                uuid: uuid.map(|u| u.parse().unwrap()),
                mac: mac.map(|m| m.parse().unwrap()),
                arch: Arch::Amd64,
                serial: Some("SN1".into()),
                hostname: None,
                domain: None,
            },
            ip: Some("10.0.0.9".parse().unwrap()),
            decision,
            at_ms,
        }
    }

    fn uuid(n: u32) -> String {
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_time(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert!(now_ms() > 1_700_000_000_000);
    }

    #[test]
    fn sightings_merge_into_records() {
        let a = sighting(Some(&uuid(1)), Some("52:54:00:aa:00:01"), 1000, "script");
        let r1 = apply(None, &a);
        assert_eq!(
            (r1.first_seen_ms, r1.last_seen_ms, r1.boots),
            (1000, 1000, 1)
        );
        let mut b = sighting(Some(&uuid(1)), Some("52:54:00:aa:00:02"), 2000, "disk");
        b.query.serial = None;
        b.query.arch = Arch::Arm64;
        b.ip = None;
        let r2 = apply(Some(&r1), &b);
        assert_eq!(r2.macs.len(), 2);
        assert_eq!(
            (r2.first_seen_ms, r2.last_seen_ms, r2.boots),
            (1000, 2000, 2)
        );
        assert_eq!(
            r2.serial.as_deref(),
            Some("SN1"),
            "kept when not sent again"
        );
        assert_eq!(
            r2.last_ip,
            Some("10.0.0.9".parse().unwrap()),
            "kept when unknown"
        );
        assert_eq!((r2.arch.as_str(), r2.last_boot.as_str()), ("arm64", "disk"));
        // MAC sets are bounded.
        let mut r = r2;
        for i in 0..100u32 {
            let mac = format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256);
            r = apply(
                Some(&r),
                &sighting(Some(&uuid(1)), Some(&mac), 3000, "disk"),
            );
        }
        assert_eq!(r.macs.len(), MAX_MACS);
    }

    #[tokio::test]
    async fn records_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        assert_eq!(store.path(), dir.path().join("state").join(DB_FILE));
        let h = store.start(16).unwrap();
        assert!(h.recorder.record(sighting(
            Some(&uuid(7)),
            Some("52:54:00:aa:00:07"),
            5,
            "kernel"
        )));
        assert!(
            h.recorder
                .record(sighting(None, Some("52:54:00:aa:00:08"), 6, "disk"))
        );
        drop(h.recorder);
        h.writer.await.unwrap();
        assert_eq!(h.machines.len(), 2);
        assert_eq!(h.stats.written(), 2);
        // The writer owned the database; it is closed now. Reopen and read.
        let again = Store::open(&dir.path().join("state")).unwrap();
        let all = again.read_all().unwrap();
        assert_eq!(all.len(), 2);
        let r = &all[&uuid(7)];
        assert_eq!(r.macs.iter().collect::<Vec<_>>(), ["52:54:00:aa:00:07"]);
        assert_eq!(
            (r.last_boot.as_str(), r.boots, r.first_seen_ms),
            ("kernel", 1, 5)
        );
        assert_eq!(all["mac-52:54:00:aa:00:08"].uuid, None);
        // And the mirror of a restarted store starts from the file.
        let h2 = again.start(4).unwrap();
        assert_eq!(h2.machines.get(&uuid(7)).unwrap().boots, 1);
        assert!(
            h2.recorder
                .record(sighting(Some(&uuid(7)), None, 9, "disk"))
        );
        drop(h2.recorder);
        h2.writer.await.unwrap();
        assert_eq!(h2.machines.get(&uuid(7)).unwrap().boots, 2);
    }

    #[tokio::test]
    async fn a_storm_is_batched_and_fully_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let h = Store::open(dir.path()).unwrap().start(8192).unwrap();
        let n = 3000u32;
        for i in 0..n {
            // Two requests per machine: two NICs tried, or a retry.
            let mac = format!("52:54:00:{:02x}:{:02x}:01", i / 256, i % 256);
            assert!(h.recorder.record(sighting(
                Some(&uuid(i % 1500)),
                Some(&mac),
                u64::from(i),
                "disk"
            )));
        }
        drop(h.recorder);
        h.writer.await.unwrap();
        assert_eq!(h.stats.written(), u64::from(n));
        assert_eq!(h.stats.dropped(), 0);
        assert_eq!(h.machines.len(), 1500);
        assert!(
            h.stats.batches() <= u64::from(n) / 2,
            "batched: {} commits",
            h.stats.batches()
        );
        assert!(h.stats.batches() >= 3, "at most MAX_BATCH per commit");
        let r = h.machines.get(&uuid(3)).unwrap();
        assert_eq!((r.boots, r.macs.len()), (2, 2));
        let reopened = Store::open(dir.path()).unwrap().read_all().unwrap();
        assert_eq!(reopened.len(), 1500);
        assert_eq!(reopened[&uuid(3)], r);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        // A queue nobody drains: build the recorder by hand.
        let (tx, _rx) = mpsc::channel(2);
        let stats = Arc::new(StoreStats::default());
        let rec = Recorder {
            tx,
            stats: stats.clone(),
        };
        let results: Vec<bool> = (0..5u32)
            .map(|i| rec.record(sighting(Some(&uuid(i)), None, 1, "disk")))
            .collect();
        assert_eq!(results, [true, true, false, false, false]);
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 3);
        let mut text = String::new();
        stats.render(&mut text);
        assert!(
            text.contains("ironboot_store_sightings_total{result=\"dropped_queue_full\"} 3"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_second_open_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&dir.path().join(DB_FILE).display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn unusable_paths_are_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let e = Store::open(&file.join("state")).unwrap_err();
        assert!(matches!(e, StoreError::Dir { .. }), "{e}");
        assert!(e.to_string().contains("not-a-dir"), "{e}");
        let garbage = dir.path().join("garbage.redb");
        std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        let e = Store::open_file(&garbage).unwrap_err();
        assert!(matches!(e, StoreError::Db { .. }), "{e}");
        assert!(e.to_string().contains("garbage.redb"), "{e}");
    }
}
