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
//!
//! Boot requests are unauthenticated and anyone on the PXE network can invent UUIDs and
//! MACs, so the store is bounded on every axis:
//!
//! - **Fields**: serial, host name and domain are cut to a few dozen bytes and a machine
//!   keeps at most [`MAX_MACS`] MACs; each cut is counted.
//! - **New machines per source address**: a token bucket per client IP (in a table of
//!   bounded size) limits how fast one address adds machines the store has not seen;
//!   sightings of recorded machines are never limited. A real machine is one address and
//!   adds itself once, so only a flood notices the limit.
//! - **Machines**: at most `max_machines`. At the cap a new machine takes the place of the
//!   oldest *unconfirmed* one. A machine is confirmed when it is in the inventory or was
//!   seen in two separate boots: a sighting at least [`CONFIRM_GAP_MS`] after its first
//!   one. The second boot is the test, not who answered the DHCP: it holds with ProxyDHCP
//!   disabled and under UEFI HTTP boot alike, and one boot's retries (iPXE trying each
//!   NIC) fall within the gap. A flood of invented machines therefore only ever replaces
//!   itself; a confirmed machine is never evicted for a newcomer (which would let a flood
//!   erase the fleet's history), so when every record is confirmed the newcomer is
//!   dropped and counted, and machines in the inventory are never evicted at all.
//! - **Faults**: a failed write (a full disk, an I/O error) drops that batch, counts it,
//!   logs at most once a minute and marks the store unwritable
//!   (`ironboot_store_writable 0`); the writer then closes and reopens the database
//!   (redb refuses further writes after an I/O error), reloads the mirror from what was
//!   committed and carries on when the disk has room again. Boot scripts are served
//!   throughout: they never wait on the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::boot::inventory::EntryKey;
use crate::boot::machine::{MacAddr, MachineQuery, Uuid};
use crate::boot::metrics::PrometheusSource;

/// The `--state-dir` default.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/ironboot";
/// The database file in the state directory.
pub(crate) const DB_FILE: &str = "machines.redb";
/// Default capacity of the sighting queue: a whole storm's worth of first requests.
pub(crate) const DEFAULT_QUEUE: usize = 4096;
/// Most sightings written in one transaction.
const MAX_BATCH: usize = 1024;
/// Default most machines recorded (see the module documentation for who makes room).
pub(crate) const MAX_MACHINES: usize = 100_000;
/// Most MACs kept per machine: servers boot from a handful of NICs; further MACs are
/// refused and counted.
pub(crate) const MAX_MACS: usize = 16;
/// Longest SMBIOS serial kept, in bytes (vendors' serials are a few dozen characters).
pub(crate) const MAX_SERIAL: usize = 64;
/// Longest DHCP host name kept, in bytes (a DNS label is at most 63).
pub(crate) const MAX_HOSTNAME: usize = 64;
/// Longest DHCP domain kept, in bytes.
pub(crate) const MAX_DOMAIN: usize = 128;
/// A sighting this long after a machine's first one is a second boot, which confirms it.
/// A firmware reboot (POST, PXE, iPXE) takes longer; one boot's NIC retries take less.
pub(crate) const CONFIRM_GAP_MS: u64 = 60_000;
/// Default `--store-new-machines-per-source`: new machines one source address may add at
/// once, and again every minute.
pub(crate) const DEFAULT_NEW_PER_SOURCE: u32 = 16;

/// The store's caps from the command line (`--store-max-machines`,
/// `--store-new-machines-per-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoreCaps {
    /// Most machines recorded.
    pub(crate) max_machines: usize,
    /// New machines one source address may add at once and per minute.
    pub(crate) new_per_source: u32,
}
/// Source addresses with a bucket in use at once; beyond, new addresses share one bucket.
const MAX_SOURCES: usize = 4096;
/// Least time between two attempts to reopen the database after an I/O error; doubled
/// after each attempt that is followed by another failure, up to [`MAX_REOPEN_BACKOFF`]
/// (each attempt reads every record back), and reset by a successful write.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two reopening attempts: how long recording may lag behind the
/// disk having room again.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(16);
/// Least time between two log lines about failing writes.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

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
    /// The inventory entry its last boot script came from (standalone mode): the UUID or
    /// MAC the entry matched, or `default`; `None` when no entry matched (no inventory, no
    /// `[default]`, Omni mode) and in records written before ironboot kept it.
    #[serde(default)]
    pub(crate) inventory_entry: Option<String>,
}

impl MachineRecord {
    /// Seen in two separate boots (see the module documentation).
    pub(crate) fn seen_twice(&self) -> bool {
        self.last_seen_ms.saturating_sub(self.first_seen_ms) >= CONFIRM_GAP_MS
    }
}

/// Which machines are the operator's own (the inventory): never evicted, confirmed from
/// their first sighting.
pub(crate) trait Pinned: Send + Sync {
    /// Whether a machine with this UUID or any of these MACs is listed.
    fn pinned(&self, uuid: Option<Uuid>, macs: &mut dyn Iterator<Item = MacAddr>) -> bool;
}

/// No machine is pinned.
#[derive(Debug, Default)]
pub(crate) struct NothingPinned;

impl Pinned for NothingPinned {
    fn pinned(&self, _: Option<Uuid>, _: &mut dyn Iterator<Item = MacAddr>) -> bool {
        false
    }
}

fn is_pinned(p: &dyn Pinned, r: &MachineRecord) -> bool {
    let uuid = r.uuid.as_deref().and_then(|u| u.parse().ok());
    p.pinned(uuid, &mut r.macs.iter().filter_map(|m| m.parse().ok()))
}

/// Whether `r` may make room for a new machine: neither confirmed nor pinned.
fn evictable(p: &dyn Pinned, r: &MachineRecord) -> bool {
    !r.seen_twice() && !is_pinned(p, r)
}

/// How the store is bounded.
#[derive(Clone)]
pub(crate) struct StoreOptions {
    /// Capacity of the sighting queue.
    pub(crate) queue: usize,
    /// Most machines recorded.
    pub(crate) max_machines: usize,
    /// New machines one source address may add at once and per minute.
    pub(crate) new_per_source: u32,
    /// The inventory's machines.
    pub(crate) pinned: Arc<dyn Pinned>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("queue", &self.queue)
            .field("max_machines", &self.max_machines)
            .field("new_per_source", &self.new_per_source)
            .finish_non_exhaustive()
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            queue: DEFAULT_QUEUE,
            max_machines: MAX_MACHINES,
            new_per_source: DEFAULT_NEW_PER_SOURCE,
            pinned: Arc::new(NothingPinned),
        }
    }
}

/// One boot-script request, as the handler saw it.
#[derive(Debug, Clone)]
pub(crate) struct Sighting {
    /// Who asked.
    pub(crate) query: MachineQuery,
    /// From where.
    pub(crate) ip: Option<IpAddr>,
    /// What it was told to boot ([`crate::boot::boot_script::BootTarget::kind`]).
    pub(crate) decision: &'static str,
    /// The inventory entry that chose the boot target, if one did.
    pub(crate) entry: Option<EntryKey>,
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

/// Cut `value` to at most `max` bytes on a character boundary; whether it was cut.
fn cut(value: &mut Option<String>, max: usize) -> bool {
    let Some(v) = value.as_mut() else {
        return false;
    };
    if v.len() <= max {
        return false;
    }
    let mut end = max;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v.truncate(end);
    let trimmed = v.trim_end().len();
    v.truncate(trimmed);
    if v.is_empty() {
        *value = None;
    }
    true
}

/// Fold a sighting into what was known; whether a MAC was refused (the machine already has
/// [`MAX_MACS`]).
fn apply(existing: Option<&MachineRecord>, s: &Sighting) -> (MachineRecord, bool) {
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
        inventory_entry: None,
    });
    if let Some(u) = q.uuid {
        r.uuid = Some(u.to_string());
    }
    let mut mac_refused = false;
    if let Some(m) = q.mac {
        let m = m.to_string();
        if r.macs.len() < MAX_MACS || r.macs.contains(&m) {
            r.macs.insert(m);
        } else {
            mac_refused = true;
        }
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
    r.inventory_entry = s.entry.map(|e| e.to_string());
    r.boots += 1;
    (r, mac_refused)
}

/// The fields whose cuts are counted, as metric labels.
const FIELDS: [&str; 4] = ["serial", "hostname", "domain", "macs"];

/// Counters of the store, for `/metrics`.
#[derive(Debug)]
pub(crate) struct StoreStats {
    written: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_store_full: AtomicU64,
    dropped_rate_limited: AtomicU64,
    dropped_closed: AtomicU64,
    dropped_write_error: AtomicU64,
    batches: AtomicU64,
    write_errors: AtomicU64,
    reopens: AtomicU64,
    evicted: AtomicU64,
    truncated: [AtomicU64; FIELDS.len()],
    machines: AtomicU64,
    writable: AtomicU64,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            written: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            dropped_store_full: AtomicU64::new(0),
            dropped_rate_limited: AtomicU64::new(0),
            dropped_closed: AtomicU64::new(0),
            dropped_write_error: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            truncated: Default::default(),
            machines: AtomicU64::new(0),
            writable: AtomicU64::new(1),
        }
    }
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
            &self.dropped_rate_limited,
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

    fn cut(&self, field: &str) {
        if let Some(i) = FIELDS.iter().position(|f| *f == field) {
            self.truncated[i].fetch_add(1, Relaxed);
        }
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
            ("dropped_rate_limited", &self.dropped_rate_limited),
            ("dropped_closed", &self.dropped_closed),
            ("dropped_write_error", &self.dropped_write_error),
        ] {
            let _ = writeln!(
                out,
                "ironboot_store_sightings_total{{result=\"{result}\"}} {}",
                c.load(Relaxed)
            );
        }
        out.push_str(
            "# HELP ironboot_store_fields_truncated_total Values cut to their bound (serial, hostname, domain) or refused (a MAC beyond a machine's bound).\n\
             # TYPE ironboot_store_fields_truncated_total counter\n",
        );
        for (field, c) in FIELDS.iter().zip(&self.truncated) {
            let _ = writeln!(
                out,
                "ironboot_store_fields_truncated_total{{field=\"{field}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ironboot_store_batches_total Write transactions committed by the machine store.\n\
             # TYPE ironboot_store_batches_total counter\n\
             ironboot_store_batches_total {}\n\
             # HELP ironboot_store_write_errors_total Write transactions (or reopenings) of the machine store that failed.\n\
             # TYPE ironboot_store_write_errors_total counter\n\
             ironboot_store_write_errors_total {}\n\
             # HELP ironboot_store_reopens_total Times the machine database was reopened after an I/O error.\n\
             # TYPE ironboot_store_reopens_total counter\n\
             ironboot_store_reopens_total {}\n\
             # HELP ironboot_store_evictions_total Unconfirmed machines removed to make room for new ones.\n\
             # TYPE ironboot_store_evictions_total counter\n\
             ironboot_store_evictions_total {}\n\
             # HELP ironboot_store_writable Whether the machine store's last write succeeded.\n\
             # TYPE ironboot_store_writable gauge\n\
             ironboot_store_writable {}\n\
             # HELP ironboot_store_machines Machines recorded.\n\
             # TYPE ironboot_store_machines gauge\n\
             ironboot_store_machines {}",
            self.batches.load(Relaxed),
            self.write_errors.load(Relaxed),
            self.reopens.load(Relaxed),
            self.evicted.load(Relaxed),
            self.writable.load(Relaxed),
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
        store.write(&BTreeMap::new(), &BTreeSet::new())?;
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

    /// Write `records` and delete `removed` in one transaction.
    fn write(
        &self,
        records: &BTreeMap<String, MachineRecord>,
        removed: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(MACHINES).map_err(|e| self.error(e))?;
            for k in removed {
                table.remove(k.as_str()).map_err(|e| self.error(e))?;
            }
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

    /// Load the mirror and start the writer thread with the default bounds and a queue of
    /// `queue` sightings (needs a tokio runtime).
    pub(crate) fn start(self, queue: usize) -> Result<StoreHandles, StoreError> {
        self.start_with(StoreOptions {
            queue,
            ..StoreOptions::default()
        })
    }

    /// Load the mirror and start the writer thread (needs a tokio runtime). The writer
    /// runs until every [`Recorder`] clone is dropped, then writes what is queued and
    /// ends; await [`StoreHandles::writer`] at shutdown for a complete last batch.
    pub(crate) fn start_with(self, options: StoreOptions) -> Result<StoreHandles, StoreError> {
        let records = self.read_all()?;
        let stats = Arc::new(StoreStats::default());
        stats
            .machines
            .store(u64::try_from(records.len()).unwrap_or(u64::MAX), Relaxed);
        let index = Evictable::build(&records, options.pinned.as_ref());
        let mirror = Arc::new(RwLock::new(records));
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let writer = {
            let writer = Writer {
                path: self.path.clone(),
                store: Some(self),
                mirror: mirror.clone(),
                stats: stats.clone(),
                index,
                pinned: options.pinned.clone(),
                max_machines: options.max_machines.max(1),
                last_reopen: None,
                reopen_backoff: REOPEN_BACKOFF,
                last_log: None,
                failed_since_log: 0,
                failure_announced: false,
            };
            tokio::task::spawn_blocking(move || writer.run(rx))
        };
        let machines = Machines { mirror };
        Ok(StoreHandles {
            recorder: Recorder {
                tx,
                stats: stats.clone(),
                known: machines.clone(),
                limiter: Arc::new(Mutex::new(SourceLimiter::new(
                    options.new_per_source,
                    MAX_SOURCES,
                ))),
            },
            machines,
            stats,
            writer,
        })
    }
}

/// The machines that may make room, oldest last sighting first.
#[derive(Debug, Default)]
struct Evictable(BTreeSet<(u64, String)>);

impl Evictable {
    fn build(records: &BTreeMap<String, MachineRecord>, pinned: &dyn Pinned) -> Evictable {
        Evictable(
            records
                .values()
                .filter(|r| evictable(pinned, r))
                .map(|r| (r.last_seen_ms, r.id.clone()))
                .collect(),
        )
    }
}

impl Evictable {
    /// Takes the oldest machine that may make room, `known` as committed and `updated` and
    /// `removed` by the batch so far. The inventory may have been reloaded since a record
    /// was indexed, so each one is checked again: one the inventory lists now is passed
    /// over (and leaves the index until its next sighting), and so is a key left behind
    /// for a record already gone.
    fn pop_victim(
        &mut self,
        pinned: &dyn Pinned,
        known: &BTreeMap<String, MachineRecord>,
        updated: &BTreeMap<String, MachineRecord>,
        removed: &BTreeSet<String>,
    ) -> Option<String> {
        while let Some((_, id)) = self.0.pop_first() {
            let record = match updated.get(&id) {
                Some(r) => Some(r),
                None if removed.contains(&id) => None,
                None => known.get(&id),
            };
            if record.is_some_and(|r| evictable(pinned, r)) {
                return Some(id);
            }
        }
        None
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    /// `None` after an I/O error, until reopened.
    store: Option<Store>,
    mirror: Arc<RwLock<BTreeMap<String, MachineRecord>>>,
    stats: Arc<StoreStats>,
    index: Evictable,
    pinned: Arc<dyn Pinned>,
    max_machines: usize,
    last_reopen: Option<Instant>,
    reopen_backoff: Duration,
    last_log: Option<Instant>,
    failed_since_log: u64,
    /// A failure line was logged and its recovery not yet: a disk that flaps between
    /// full and not logs at most one failure and one recovery line a minute.
    failure_announced: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Sighting>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            self.batch(&mut batch);
        }
    }

    /// Fold `batch` into the records, making room at the cap, and commit it.
    fn batch(&mut self, batch: &mut Vec<Sighting>) {
        let mut updated: BTreeMap<String, MachineRecord> = BTreeMap::new();
        let mut removed: BTreeSet<String> = BTreeSet::new();
        let mut applied = 0u64;
        let mut evicted = 0u64;
        {
            let known = self.mirror.read().unwrap_or_else(PoisonError::into_inner);
            let mut count = known.len();
            for s in batch.drain(..) {
                let id = s.query.machine_id();
                let current = match updated.get(&id) {
                    Some(r) => Some(r),
                    None if removed.contains(&id) => None,
                    None => known.get(&id),
                }
                .cloned();
                let old_key = current
                    .as_ref()
                    .filter(|r| evictable(self.pinned.as_ref(), r))
                    .map(|r| (r.last_seen_ms, id.clone()));
                if current.is_none() {
                    if count >= self.max_machines {
                        let victim =
                            self.index
                                .pop_victim(self.pinned.as_ref(), &known, &updated, &removed);
                        let Some(victim) = victim else {
                            self.stats.dropped_store_full.fetch_add(1, Relaxed);
                            continue;
                        };
                        updated.remove(&victim);
                        removed.insert(victim);
                        evicted += 1;
                        count -= 1;
                    }
                    count += 1;
                }
                let (record, mac_refused) = apply(current.as_ref(), &s);
                if mac_refused {
                    self.stats.cut("macs");
                }
                if let Some(k) = old_key {
                    self.index.0.remove(&k);
                }
                if evictable(self.pinned.as_ref(), &record) {
                    self.index.0.insert((record.last_seen_ms, id.clone()));
                }
                removed.remove(&id);
                updated.insert(id, record);
                applied += 1;
            }
        }
        if updated.is_empty() && removed.is_empty() {
            return;
        }
        match self.commit(&updated, &removed) {
            Ok(()) => {
                let mut m = self.mirror.write().unwrap_or_else(PoisonError::into_inner);
                for id in &removed {
                    m.remove(id);
                }
                m.extend(updated);
                self.stats
                    .machines
                    .store(u64::try_from(m.len()).unwrap_or(u64::MAX), Relaxed);
                drop(m);
                self.stats.written.fetch_add(applied, Relaxed);
                self.stats.evicted.fetch_add(evicted, Relaxed);
                self.stats.batches.fetch_add(1, Relaxed);
                self.last_reopen = None;
                self.reopen_backoff = REOPEN_BACKOFF;
                if self.stats.writable.swap(1, Relaxed) == 0 && self.failure_announced {
                    info!(path = %self.path.display(), "machine store writable again");
                    self.failure_announced = false;
                }
            }
            Err(e) => {
                self.stats.dropped_write_error.fetch_add(applied, Relaxed);
                self.stats.write_errors.fetch_add(1, Relaxed);
                self.stats.writable.store(0, Relaxed);
                self.failed_since_log += applied;
                // The batch's evictions did not happen: rebuild the index from the mirror.
                let known = self.mirror.read().unwrap_or_else(PoisonError::into_inner);
                self.index = Evictable::build(&known, self.pinned.as_ref());
                drop(known);
                // One line, then at most one a minute: a full disk fails every batch.
                if self
                    .last_log
                    .is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL)
                {
                    error!(
                        error = %e,
                        sightings_dropped = self.failed_since_log,
                        "machine store write failed; sightings dropped until it succeeds \
                         (boot scripts are still served)"
                    );
                    self.last_log = Some(Instant::now());
                    self.failed_since_log = 0;
                    self.failure_announced = true;
                }
            }
        }
    }

    /// Commit on the open database, reopening it first if an earlier I/O error closed it.
    /// Any failure closes it: redb refuses all writes after an I/O error until reopened.
    fn commit(
        &mut self,
        updated: &BTreeMap<String, MachineRecord>,
        removed: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        if self.store.is_none() {
            self.reopen()?;
        }
        let Some(store) = &self.store else {
            return Err(closed(&self.path));
        };
        let result = store.write(updated, removed);
        if result.is_err() {
            self.store = None;
        }
        result
    }

    /// Reopen the database (redb repairs it if the last commit was cut short) and reload
    /// the mirror from what it holds, at most once per backoff period.
    fn reopen(&mut self) -> Result<(), StoreError> {
        if self
            .last_reopen
            .is_some_and(|at| at.elapsed() < self.reopen_backoff)
        {
            return Err(closed(&self.path));
        }
        if self.last_reopen.is_some() {
            self.reopen_backoff = (self.reopen_backoff * 2).min(MAX_REOPEN_BACKOFF);
        }
        self.last_reopen = Some(Instant::now());
        let store = Store::open_file(&self.path)?;
        let records = store.read_all()?;
        self.index = Evictable::build(&records, self.pinned.as_ref());
        let mut m = self.mirror.write().unwrap_or_else(PoisonError::into_inner);
        *m = records;
        self.stats
            .machines
            .store(u64::try_from(m.len()).unwrap_or(u64::MAX), Relaxed);
        drop(m);
        self.stats.reopens.fetch_add(1, Relaxed);
        self.store = Some(store);
        Ok(())
    }
}

/// The error of a write attempted while the database is closed after an I/O error.
fn closed(path: &Path) -> StoreError {
    StoreError::Db {
        path: path.to_owned(),
        source: Box::new(redb::Error::PreviousIo),
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

/// A token bucket per source address, in a table of bounded size: how fast each address
/// may add machines the store has not seen.
#[derive(Debug)]
struct SourceLimiter {
    /// Bucket size, and tokens added per minute.
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by new addresses while the table is full of addresses still limited.
    overflow: Bucket,
    max_sources: usize,
    last_prune: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refill for the time since the last take, then take one token if there is one.
    fn take(&mut self, burst: f64, now: Instant) -> bool {
        self.refill(burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, burst: f64, now: Instant) {
        let minutes = now.saturating_duration_since(self.at).as_secs_f64() / 60.0;
        self.tokens = (self.tokens + minutes * burst).min(burst);
        self.at = now;
    }
}

impl SourceLimiter {
    fn new(per_minute: u32, max_sources: usize) -> SourceLimiter {
        let burst = f64::from(per_minute.max(1));
        SourceLimiter {
            burst,
            buckets: HashMap::new(),
            overflow: Bucket {
                tokens: burst,
                at: Instant::now(),
            },
            max_sources: max_sources.max(1),
            last_prune: None,
        }
    }

    /// Whether `ip` may add one more machine now.
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let burst = self.burst;
        if let Some(b) = self.buckets.get_mut(&ip) {
            return b.take(burst, now);
        }
        if self.buckets.len() >= self.max_sources
            && self
                .last_prune
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
        {
            // A full bucket is the same as no bucket: forget those.
            self.last_prune = Some(now);
            self.buckets.retain(|_, b| {
                b.refill(burst, now);
                b.tokens < burst
            });
        }
        if self.buckets.len() >= self.max_sources {
            return self.overflow.take(burst, now);
        }
        let mut b = Bucket {
            tokens: burst,
            at: now,
        };
        let allowed = b.take(burst, now);
        self.buckets.insert(ip, b);
        allowed
    }
}

/// Hands sightings to the writer without waiting.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    tx: mpsc::Sender<Sighting>,
    stats: Arc<StoreStats>,
    /// To tell new machines (limited per source) from recorded ones (never limited).
    known: Machines,
    limiter: Arc<Mutex<SourceLimiter>>,
}

impl Recorder {
    /// Bound the sighting's fields, limit new machines per source address, and queue it
    /// for the writer; if the queue is full (or the writer gone) drop and count it. Never
    /// blocks. Returns whether it was queued. Sightings without a source address (only
    /// in-process callers have none) are not limited.
    pub(crate) fn record(&self, mut s: Sighting) -> bool {
        for (field, value, max) in [
            ("serial", &mut s.query.serial, MAX_SERIAL),
            ("hostname", &mut s.query.hostname, MAX_HOSTNAME),
            ("domain", &mut s.query.domain, MAX_DOMAIN),
        ] {
            if cut(value, max) {
                self.stats.cut(field);
            }
        }
        if let Some(ip) = s.ip
            && !self.known.contains(&s.query.machine_id())
        {
            let allowed = self
                .limiter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .allow(ip, Instant::now());
            if !allowed {
                self.stats.dropped_rate_limited.fetch_add(1, Relaxed);
                return false;
            }
        }
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
    /// Whether machine `id` is recorded.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.mirror
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(id)
    }

    /// The last ID of the page of at most `limit` machines after `after` (from the first
    /// when `None`), and whether more follow it. `None` for an empty page.
    pub(crate) fn page_end(&self, after: Option<&str>, limit: usize) -> Option<(String, bool)> {
        let m = self.mirror.read().unwrap_or_else(PoisonError::into_inner);
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut ids = m.range::<str, _>((from, Bound::Unbounded)).map(|(k, _)| k);
        let last = ids.by_ref().take(limit.max(1)).last()?.clone();
        Some((last, ids.next().is_some()))
    }

    /// Run `f` over at most `max` records after `after` (from the first when `None`) up
    /// to `through` (included), sorted by ID, under one read lock (keep `f` short); the
    /// last ID visited, `None` if none.
    pub(crate) fn visit(
        &self,
        after: Option<&str>,
        through: &str,
        max: usize,
        mut f: impl FnMut(&MachineRecord),
    ) -> Option<String> {
        let m = self.mirror.read().unwrap_or_else(PoisonError::into_inner);
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last = None;
        for (id, r) in m
            .range::<str, _>((from, Bound::Included(through)))
            .take(max)
        {
            f(r);
            last = Some(id);
        }
        last.cloned()
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
    use crate::boot::machine::Arch;

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
            entry: None,
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
        let (r1, _) = apply(None, &a);
        assert_eq!(
            (r1.first_seen_ms, r1.last_seen_ms, r1.boots),
            (1000, 1000, 1)
        );
        let mut b = sighting(Some(&uuid(1)), Some("52:54:00:aa:00:02"), 2000, "disk");
        b.query.serial = None;
        b.query.arch = Arch::Arm64;
        b.ip = None;
        let (r2, _) = apply(Some(&r1), &b);
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
        // MAC sets are bounded: beyond the bound new MACs are refused, known ones still
        // count as sightings.
        let mut r = r2;
        let mut refused = 0;
        for i in 0..100u32 {
            let mac = format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256);
            let (next, was_refused) = apply(
                Some(&r),
                &sighting(Some(&uuid(1)), Some(&mac), 3000, "disk"),
            );
            r = next;
            refused += u32::from(was_refused);
        }
        assert_eq!(r.macs.len(), MAX_MACS);
        assert_eq!(refused, 100 - (MAX_MACS as u32 - 2));
        let (again, was_refused) = apply(
            Some(&r),
            &sighting(Some(&uuid(1)), Some("52:54:00:aa:00:01"), 4000, "disk"),
        );
        assert!(!was_refused, "a MAC already kept is not refused");
        assert_eq!((again.macs.len(), again.boots), (MAX_MACS, r.boots + 1));
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
        // One source address booting 1500 machines: no per-source limit here.
        let h = Store::open(dir.path())
            .unwrap()
            .start_with(StoreOptions {
                queue: 8192,
                new_per_source: u32::MAX,
                ..StoreOptions::default()
            })
            .unwrap();
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
            known: Machines {
                mirror: Arc::default(),
            },
            limiter: Arc::new(Mutex::new(SourceLimiter::new(16, 16))),
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

    /// Pins the machines whose UUID ends in `…00ff` (the inventory's role).
    struct PinFf;

    impl Pinned for PinFf {
        fn pinned(&self, uuid: Option<Uuid>, _: &mut dyn Iterator<Item = MacAddr>) -> bool {
            uuid.is_some_and(|u| u.to_string().ends_with("00ff"))
        }
    }

    fn options(max_machines: usize) -> StoreOptions {
        StoreOptions {
            queue: 4096,
            max_machines,
            new_per_source: u32::MAX,
            pinned: Arc::new(PinFf),
        }
    }

    /// Hand `sightings` to a store in `dir` started with `options`, wait for the writer.
    async fn run(
        dir: &Path,
        options: StoreOptions,
        sightings: impl IntoIterator<Item = Sighting>,
    ) -> (Machines, Arc<StoreStats>) {
        let h = Store::open(dir).unwrap().start_with(options).unwrap();
        for s in sightings {
            assert!(h.recorder.record(s));
        }
        drop(h.recorder);
        h.writer.await.unwrap();
        (h.machines, h.stats)
    }

    #[tokio::test]
    async fn at_the_cap_unconfirmed_machines_make_room_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_000_000u64;
        // 10 machines: 1-3 seen again in a later boot (confirmed), 0xff pinned, 4-9 once.
        let mut first: Vec<Sighting> = (1..=9u32)
            .map(|i| sighting(Some(&uuid(i)), None, t0 + u64::from(i), "disk"))
            .collect();
        first.push(sighting(Some(&uuid(0xff)), None, t0, "disk"));
        for i in 1..=3u32 {
            first.push(sighting(
                Some(&uuid(i)),
                None,
                t0 + CONFIRM_GAP_MS + u64::from(i),
                "disk",
            ));
        }
        // Retries within one boot do not confirm machine 4.
        first.push(sighting(Some(&uuid(4)), None, t0 + 4 + 5000, "disk"));
        let (m, _) = run(dir.path(), options(10), first).await;
        assert_eq!(m.len(), 10);
        assert!(m.get(&uuid(1)).unwrap().seen_twice());
        assert!(!m.get(&uuid(4)).unwrap().seen_twice());

        // A flood of 100 new machines at the cap, after a restart (the order is rebuilt
        // from the file): each takes the place of the oldest unconfirmed machine, then of
        // an earlier flood machine; the confirmed and the pinned stay, and the newest
        // flood machines are the ones recorded.
        let flood = (1000..1100u32)
            .map(|i| sighting(Some(&uuid(i)), None, t0 + 10_000 + u64::from(i), "disk"));
        let (m, stats) = run(dir.path(), options(10), flood).await;
        assert_eq!(m.len(), 10);
        for keep in [1, 2, 3, 0xff] {
            assert!(m.get(&uuid(keep)).is_some(), "machine {keep} kept");
        }
        for gone in 4..=9 {
            assert!(m.get(&uuid(gone)).is_none(), "machine {gone} evicted");
        }
        for newest in 1094..1100 {
            assert!(m.get(&uuid(newest)).is_some(), "machine {newest} recorded");
        }
        assert_eq!(stats.evicted.load(Relaxed), 100);
        assert_eq!(stats.written(), 100);
        assert_eq!(stats.dropped_store_full.load(Relaxed), 0);
        // The file holds what the mirror holds.
        let on_disk = Store::open(dir.path()).unwrap().read_all().unwrap();
        assert_eq!(on_disk.len(), 10);
        assert!(on_disk.contains_key(&uuid(0xff)) && !on_disk.contains_key(&uuid(4)));
    }

    /// Pins machine 1 once switched on: an inventory reloaded to list it.
    struct PinLater(std::sync::atomic::AtomicBool);

    impl Pinned for PinLater {
        fn pinned(&self, id: Option<Uuid>, _: &mut dyn Iterator<Item = MacAddr>) -> bool {
            self.0.load(Relaxed) && id.is_some_and(|u| u.to_string() == uuid(1))
        }
    }

    /// A machine the inventory lists only since a reload is not evicted, though it was
    /// indexed as evictable before; the sighting is recorded with its entry.
    #[tokio::test]
    async fn a_machine_pinned_by_a_reload_is_not_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let pin = Arc::new(PinLater(std::sync::atomic::AtomicBool::new(false)));
        let h = Store::open(dir.path())
            .unwrap()
            .start_with(StoreOptions {
                queue: 4096,
                max_machines: 3,
                new_per_source: u32::MAX,
                pinned: pin.clone(),
            })
            .unwrap();
        let t0 = 1_000_000u64;
        for i in 1..=3u32 {
            let mut s = sighting(Some(&uuid(i)), None, t0 + u64::from(i), "disk");
            s.entry = Some(EntryKey::Default);
            assert!(h.recorder.record(s));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.machines.len() < 3 {
            assert!(Instant::now() < deadline, "not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pin.0.store(true, Relaxed);
        let mut s = sighting(Some(&uuid(4)), None, t0 + 10, "script");
        s.entry = Some(EntryKey::Uuid(uuid(4).parse().unwrap()));
        assert!(h.recorder.record(s));
        drop(h.recorder);
        h.writer.await.unwrap();
        let m = h.machines;
        assert!(m.get(&uuid(1)).is_some(), "the newly listed machine stays");
        assert!(
            m.get(&uuid(2)).is_none(),
            "the oldest unlisted one made room"
        );
        assert_eq!(
            m.get(&uuid(1)).unwrap().inventory_entry.as_deref(),
            Some("default")
        );
        assert_eq!(
            m.get(&uuid(4)).unwrap().inventory_entry,
            Some(uuid(4)),
            "recorded with the entry that chose its boot"
        );
        assert_eq!(h.stats.evicted.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn when_every_machine_is_confirmed_newcomers_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 5_000_000u64;
        let seen_twice = (1..=4u32).flat_map(|i| {
            [
                sighting(Some(&uuid(i)), None, t0, "disk"),
                sighting(Some(&uuid(i)), None, t0 + CONFIRM_GAP_MS, "disk"),
            ]
        });
        let pinned = [sighting(Some(&uuid(0xff)), None, t0, "disk")];
        let newcomers = (100..120u32).map(|i| sighting(Some(&uuid(i)), None, t0 + 1, "disk"));
        let (m, stats) = run(
            dir.path(),
            options(5),
            seen_twice.chain(pinned).chain(newcomers),
        )
        .await;
        assert_eq!(m.len(), 5);
        assert_eq!(stats.dropped_store_full.load(Relaxed), 20);
        assert_eq!(stats.evicted.load(Relaxed), 0);
        // Sightings of recorded machines are still written at the cap.
        let again = [sighting(
            Some(&uuid(2)),
            None,
            t0 + 2 * CONFIRM_GAP_MS,
            "kernel",
        )];
        let (m, _) = run(dir.path(), options(5), again).await;
        let r = m.get(&uuid(2)).unwrap();
        assert_eq!((r.boots, r.last_boot.as_str()), (3, "kernel"));
    }

    #[tokio::test]
    async fn a_machine_evicted_and_seen_again_in_one_batch_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        // Cap 2, one batch: 1 and 2 fill the store, 3 evicts 1, 1 comes back and evicts 2.
        // The writer may split the sightings over batches; the outcome is the same.
        let all =
            [1u32, 2, 3, 1].map(|i| sighting(Some(&uuid(i)), None, 10 + u64::from(i), "disk"));
        let (m, _) = run(dir.path(), options(2), all).await;
        assert_eq!(m.len(), 2);
        assert!(m.get(&uuid(1)).is_some() && m.get(&uuid(3)).is_some());
        let on_disk = Store::open(dir.path()).unwrap().read_all().unwrap();
        assert_eq!(
            on_disk.keys().cloned().collect::<Vec<_>>(),
            [uuid(1), uuid(3)]
        );
        assert_eq!(
            on_disk[&uuid(1)].boots,
            1,
            "its earlier record went with the eviction"
        );
    }

    #[test]
    fn new_machines_are_limited_per_source_address_in_a_bounded_table() {
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut l = SourceLimiter::new(4, 3);
        assert_eq!((0..6).filter(|_| l.allow(a, t0)).count(), 4, "the burst");
        assert!(l.allow(b, t0), "another address has its own bucket");
        assert!(
            !l.allow(a, t0 + Duration::from_secs(10)),
            "a sixth of a minute: two thirds of a token"
        );
        assert!(
            l.allow(a, t0 + Duration::from_secs(16)),
            "six more seconds: a token"
        );
        assert_eq!(
            (0..10)
                .filter(|_| l.allow(a, t0 + Duration::from_secs(600)))
                .count(),
            4,
            "refilled to the burst, no more"
        );
        // The table holds 3 addresses; newer ones share the overflow bucket while the
        // others are still limited.
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let t1 = t0 + Duration::from_secs(601);
        for _ in 0..4 {
            l.allow(c, t1);
        }
        assert!(l.allow(b, t1));
        assert_eq!(l.buckets.len(), 3);
        let shared = (4..20u8)
            .filter(|i| l.allow(IpAddr::from([10, 0, 1, *i]), t1))
            .count();
        assert_eq!(shared, 4, "new addresses share one burst");
        assert_eq!(l.buckets.len(), 3, "the table stays bounded");
        // Once the buckets in the table refill, they are forgotten and room is made.
        let t2 = t1 + Duration::from_secs(120);
        assert!(l.allow(IpAddr::from([10, 0, 2, 1]), t2));
        assert!(l.buckets.len() <= 3);
        assert!(l.buckets.contains_key(&IpAddr::from([10, 0, 2, 1])));
    }

    #[tokio::test]
    async fn the_recorder_limits_new_machines_never_known_ones_and_bounds_fields() {
        let dir = tempfile::tempdir().unwrap();
        let h = Store::open(dir.path())
            .unwrap()
            .start_with(StoreOptions {
                new_per_source: 3,
                ..StoreOptions::default()
            })
            .unwrap();
        let flood_ip: IpAddr = "10.0.0.66".parse().unwrap();
        let from = |i: u32, ip: Option<IpAddr>| {
            let mut s = sighting(Some(&uuid(i)), None, 1, "disk");
            s.ip = ip;
            s
        };
        let queued = (0..50u32)
            .filter(|&i| h.recorder.record(from(i, Some(flood_ip))))
            .count();
        assert_eq!(queued, 3);
        assert_eq!(h.stats.dropped_rate_limited.load(Relaxed), 47);
        // Another address is not held back by the flood.
        assert!(
            h.recorder
                .record(from(500, Some("10.0.0.7".parse().unwrap())))
        );
        // Without a source address (in-process callers) there is no limit.
        assert!(h.recorder.record(from(501, None)));
        let start = Instant::now();
        while h.machines.len() < 5 {
            assert!(start.elapsed() < Duration::from_secs(30), "writer stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Recorded machines are always recorded, whatever their address's bucket holds.
        for _ in 0..20 {
            assert!(h.recorder.record(from(0, Some(flood_ip))));
        }
        // Fields are cut to their bound on a character boundary, and counted.
        let mut s = from(600, None);
        s.query.serial = Some("\u{1d54f}".repeat(40));
        s.query.hostname = Some("h".repeat(MAX_HOSTNAME));
        s.query.domain = Some(format!("{} x", "d".repeat(MAX_DOMAIN - 1)));
        assert!(h.recorder.record(s));
        let StoreHandles {
            recorder,
            machines,
            stats,
            writer,
        } = h;
        drop(recorder);
        writer.await.unwrap();
        assert_eq!(machines.get(&uuid(0)).unwrap().boots, 21);
        let r = machines.get(&uuid(600)).unwrap();
        assert_eq!(r.serial, Some("\u{1d54f}".repeat(MAX_SERIAL / 4)));
        assert_eq!(
            r.hostname.as_deref().map(str::len),
            Some(MAX_HOSTNAME),
            "at the bound: kept"
        );
        assert_eq!(
            r.domain,
            Some("d".repeat(MAX_DOMAIN - 1)),
            "cut, then trimmed"
        );
        let mut text = String::new();
        stats.render(&mut text);
        for line in [
            "ironboot_store_fields_truncated_total{field=\"serial\"} 1",
            "ironboot_store_fields_truncated_total{field=\"hostname\"} 0",
            "ironboot_store_fields_truncated_total{field=\"domain\"} 1",
            "ironboot_store_sightings_total{result=\"dropped_rate_limited\"} 47",
            "ironboot_store_writable 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn pages_are_bounded_and_visited_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = run(
            dir.path(),
            options(100),
            (0..10u32).map(|i| sighting(Some(&uuid(i)), None, 1, "disk")),
        )
        .await;
        assert_eq!(m.page_end(None, 4), Some((uuid(3), true)));
        assert_eq!(m.page_end(Some(&uuid(3)), 4), Some((uuid(7), true)));
        assert_eq!(m.page_end(Some(&uuid(7)), 4), Some((uuid(9), false)));
        assert_eq!(m.page_end(Some(&uuid(9)), 4), None);
        assert_eq!(m.page_end(None, 10), Some((uuid(9), false)));
        let mut seen = Vec::new();
        let last = m.visit(Some(&uuid(2)), &uuid(7), 3, |r| seen.push(r.id.clone()));
        assert_eq!(seen, [uuid(3), uuid(4), uuid(5)]);
        assert_eq!(last, Some(uuid(5)));
        let last = m.visit(last.as_deref(), &uuid(7), 3, |r| seen.push(r.id.clone()));
        assert_eq!(last, Some(uuid(7)), "stops at the page's end");
        assert_eq!(seen.len(), 5);
    }
}
