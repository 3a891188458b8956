//! The inventory in force, and its reloads (standalone mode with `--inventory`).
//!
//! [`LiveInventory`] holds the inventory `boot.ipxe` answers from behind a lock that is
//! only ever held to clone or replace an `Arc`: each request takes the inventory in force
//! when it arrives and answers from it whole, so an answer never mixes two inventories,
//! and a reload waits for no request (nor a request for a reload). TFTP transfers, HTTP
//! connections and the machine store do not notice a reload.
//!
//! The reload service ([`Reloader::start`]) reads the file again on SIGHUP and when it
//! changes: every [`POLL`] it compares the file's identity (device, inode, size,
//! modification and change times, following symlinks), so an edit in place, a file
//! renamed into place and a symlink swapped to another file (a Kubernetes ConfigMap) are
//! all seen. A change is loaded once the file has stayed the same for one more poll, so a
//! file still being written is not read half-way.
//!
//! A file that does not load (unreadable, bad syntax, an invalid entry: everything that
//! stops ironboot at start) is refused: the error is logged with the path, the inventory
//! in force stays, and `ironboot_inventory_reloads_total{result="refused"}` counts it.
//! The file is not read again until it changes or SIGHUP asks.

use std::fmt::Write as _;
use std::fs::{File, Metadata};
use std::io::{self, Read as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::{EntryKey, Format, Inventory, InventoryError};
use crate::boot::boot_script::{BootDecider, BootTarget};
use crate::boot::machine::{MacAddr, MachineQuery, Uuid};
use crate::boot::metrics::PrometheusSource;
use crate::boot::service::{CancellationToken, ServiceHandle};
use crate::boot::store::Pinned;

/// How often the file's identity is compared: a stat a second costs nothing, and an
/// operator's edit is in force two seconds later at most.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// Where the inventory comes from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The `--inventory` file.
    pub(crate) path: PathBuf,
    /// The URL `/assets/...` kernels and initrds become, when ironboot serves them.
    pub(crate) assets: Option<String>,
}

/// One version of the file: what a stat tells apart. A rename into place changes the
/// inode, a write in place the size or the times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The version at `path` now, following symlinks; `None` if there is none to stat.
    fn at(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId::of(&m))
    }
}

/// The outcome of reading the file once.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The version read (`None`: the file could not be opened or stat'ed).
    pub(crate) id: Option<FileId>,
    /// The inventory, or why the file is refused.
    pub(crate) result: Result<Inventory, InventoryError>,
}

impl Source {
    /// Reads and validates the file. The version and the text come from one open file, so
    /// the version recorded is the one loaded even if the file is replaced meanwhile.
    pub(crate) fn load(&self) -> Loaded {
        let Some(format) = Format::of(&self.path) else {
            return Loaded {
                id: FileId::at(&self.path),
                result: Err(InventoryError::Format {
                    path: self.path.clone(),
                }),
            };
        };
        match read(&self.path) {
            Ok((id, text)) => Loaded {
                id: Some(id),
                result: Inventory::parse_with_assets(
                    &text,
                    format,
                    &self.path,
                    self.assets.as_deref(),
                ),
            },
            Err(source) => Loaded {
                id: FileId::at(&self.path),
                result: Err(InventoryError::Read {
                    path: self.path.clone(),
                    source,
                }),
            },
        }
    }
}

/// The file's version and text, from one open file.
fn read(path: &Path) -> io::Result<(FileId, String)> {
    let mut file = File::open(path)?;
    let id = FileId::of(&file.metadata()?);
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((id, text))
}

/// The inventory in force, swapped whole by a reload; the boot decider and the store's
/// pins in standalone mode, and the reload counters on `/metrics`.
#[derive(Debug)]
pub(crate) struct LiveInventory {
    current: RwLock<Arc<Inventory>>,
    reloads_ok: AtomicU64,
    reloads_refused: AtomicU64,
}

impl LiveInventory {
    /// `inventory` in force.
    pub(crate) fn new(inventory: Inventory) -> LiveInventory {
        LiveInventory {
            current: RwLock::new(Arc::new(inventory)),
            reloads_ok: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
        }
    }

    /// The inventory in force now; a reload after this does not change what it answers.
    pub(crate) fn current(&self) -> Arc<Inventory> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A reload's outcome: a loaded inventory is put in force, a refused file is logged
    /// (`path`, the error) and the inventory in force kept; both are counted and logged
    /// with what asked for the reload (`trigger`). Whether the new one is in force.
    pub(crate) fn apply(
        &self,
        path: &Path,
        trigger: &'static str,
        result: Result<Inventory, InventoryError>,
    ) -> bool {
        match result {
            Ok(inventory) => {
                let counts = inventory.counts();
                // Only this task replaces the inventory: what it compares with stays in
                // force until the swap below.
                let changed = *self.current() != inventory;
                // Logged and counted first: once a request sees the new inventory, so do
                // the log and /metrics.
                info!(
                    path = %path.display(),
                    trigger,
                    changed,
                    machine_entries = counts.machines,
                    uuids = counts.uuids,
                    macs = counts.macs,
                    default = counts.default,
                    "inventory reloaded"
                );
                self.reloads_ok.fetch_add(1, Relaxed);
                // The old inventory is dropped after the lock is released.
                let old = std::mem::replace(
                    &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
                    Arc::new(inventory),
                );
                drop(old);
                true
            }
            Err(e) => {
                // Quoted: a parser's message spans lines (TOML shows the line and a caret).
                warn!(
                    path = %path.display(),
                    trigger,
                    error = ?e.to_string(),
                    "inventory file refused; the inventory in force is kept"
                );
                self.reloads_refused.fetch_add(1, Relaxed);
                false
            }
        }
    }
}

impl BootDecider for LiveInventory {
    fn decide(&self, who: &MachineQuery) -> BootTarget {
        self.current().decide_entry(who).0.clone()
    }

    fn decide_with_entry(&self, who: &MachineQuery) -> (BootTarget, Option<EntryKey>) {
        let inventory = self.current();
        let (target, key) = inventory.decide_entry(who);
        (target.clone(), key)
    }
}

/// The machines the inventory in force lists are pinned in the store: one added by a
/// reload is never evicted from then on.
impl Pinned for LiveInventory {
    fn pinned(&self, uuid: Option<Uuid>, macs: &mut dyn Iterator<Item = MacAddr>) -> bool {
        self.current().pinned(uuid, macs)
    }
}

impl PrometheusSource for LiveInventory {
    fn render(&self, out: &mut String) {
        let _ = write!(
            out,
            "# HELP ironboot_inventory_reloads_total Reloads of the --inventory file (SIGHUP or a change of the file), by result: ok (in force) or refused (the inventory in force was kept; the reason is logged).\n\
             # TYPE ironboot_inventory_reloads_total counter\n\
             ironboot_inventory_reloads_total{{result=\"ok\"}} {}\n\
             ironboot_inventory_reloads_total{{result=\"refused\"}} {}\n\
             # HELP ironboot_inventory_machine_entries Machine entries of the inventory in force.\n\
             # TYPE ironboot_inventory_machine_entries gauge\n\
             ironboot_inventory_machine_entries {}\n",
            self.reloads_ok.load(Relaxed),
            self.reloads_refused.load(Relaxed),
            self.current().counts().machines,
        );
    }
}

/// When a change of the file is loaded: once its version differs from the one last read
/// and has stayed the same for one poll.
#[derive(Debug)]
struct Watch {
    /// The version last read (`None`: it could not be).
    read: Option<FileId>,
    /// A different version seen at the last poll.
    pending: Option<Option<FileId>>,
}

impl Watch {
    fn new(read: Option<FileId>) -> Watch {
        Watch {
            read,
            pending: None,
        }
    }

    /// The version `seen` at a poll; whether to load the file now.
    fn poll(&mut self, seen: Option<FileId>) -> bool {
        if seen == self.read {
            self.pending = None;
            return false;
        }
        if self.pending == Some(seen) {
            return true;
        }
        self.pending = Some(seen);
        false
    }

    /// A load read version `id`.
    fn loaded(&mut self, id: Option<FileId>) {
        self.read = id;
        self.pending = None;
    }
}

/// The inventory in force and what reloads it.
#[derive(Debug)]
pub(crate) struct Reloader {
    live: Arc<LiveInventory>,
    source: Arc<Source>,
    read: Option<FileId>,
}

impl Reloader {
    /// Loads `source` to start with; a refused file stops ironboot at start.
    pub(crate) fn load(source: Source) -> Result<Reloader, InventoryError> {
        let Loaded { id, result } = source.load();
        Ok(Reloader {
            live: Arc::new(LiveInventory::new(result?)),
            source: Arc::new(source),
            read: id,
        })
    }

    /// The inventory in force, as the boot path and the store read it.
    pub(crate) fn live(&self) -> Arc<LiveInventory> {
        self.live.clone()
    }

    /// Starts the service that reloads the file on SIGHUP and when it changes, until
    /// `stop`. SIGHUP is handled from this call on.
    pub(crate) fn start(self, stop: CancellationToken) -> anyhow::Result<ServiceHandle> {
        let mut hangup = signal(SignalKind::hangup())
            .context("installing the SIGHUP handler (inventory reloads)")?;
        let Reloader { live, source, read } = self;
        Ok(ServiceHandle::spawn("inventory reload", async move {
            let mut watch = Watch::new(read);
            let mut poll = tokio::time::interval(POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let trigger = tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    Some(()) = hangup.recv() => "SIGHUP",
                    _ = poll.tick() => {
                        let path = source.path.clone();
                        let Some(seen) = off_runtime(&stop, move || FileId::at(&path)).await?
                        else {
                            return Ok(());
                        };
                        if !watch.poll(seen) {
                            continue;
                        }
                        "file changed"
                    }
                };
                let from = source.clone();
                let Some(loaded) = off_runtime(&stop, move || from.load()).await? else {
                    return Ok(());
                };
                watch.loaded(loaded.id);
                live.apply(&source.path, trigger, loaded.result);
            }
        }))
    }
}

/// Runs `f` on the blocking pool (the file may sit on a slow or hung network file system:
/// never on the runtime's workers); `None` if `stop` comes first.
async fn off_runtime<T: Send + 'static>(
    stop: &CancellationToken,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<Option<T>> {
    tokio::select! {
        () = stop.cancelled() => Ok(None),
        done = tokio::task::spawn_blocking(f) => Ok(Some(done.context("reading the inventory file")?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::machine::Arch;

    const U1: &str = "00000000-0000-4000-8000-000000000001";

    const FIRST: &str = r##"
[default]
script = "#!ipxe\necho first default\n"
[[machine]]
uuid = "00000000-0000-4000-8000-000000000001"
script = "#!ipxe\necho first u1\n"
"##;

    const SECOND: &str = r##"
[default]
boot = "disk"
[[machine]]
uuid = "00000000-0000-4000-8000-000000000001"
script = "#!ipxe\necho second u1\n"
[[machine]]
mac = "52:54:00:aa:00:02"
script = "#!ipxe\necho second mac\n"
"##;

    fn who(uuid: Option<&str>, mac: Option<&str>) -> MachineQuery {
        MachineQuery {
            uuid: uuid.map(|u| u.parse().unwrap()),
            mac: mac.map(|m| m.parse().unwrap()),
            arch: Arch::Amd64,
            serial: None,
            hostname: None,
            domain: None,
        }
    }

    fn script(t: &BootTarget) -> String {
        match t {
            BootTarget::Script(s) => String::from_utf8(s.bytes().to_vec()).unwrap(),
            BootTarget::Kernel(k) => String::from_utf8(k.bytes().to_vec()).unwrap(),
            BootTarget::Disk => "disk".into(),
        }
    }

    fn source(dir: &Path) -> Source {
        Source {
            path: dir.join("inventory.toml"),
            assets: None,
        }
    }

    /// Writes `text` to `path` the way an operator's tool replaces a file: a new file
    /// renamed over the old one.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn metric(live: &LiveInventory, sample: &str) -> String {
        let mut out = String::new();
        live.render(&mut out);
        crate::boot::metrics::assert_families_declared(&out);
        out.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {sample} in\n{out}"))
            .to_owned()
    }

    /// A reload swaps the whole inventory: new requests answer from the new one, with its
    /// entry; one that took the old inventory before the swap still answers from it.
    #[test]
    fn a_reload_swaps_the_inventory_whole() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        std::fs::write(&src.path, FIRST).unwrap();
        let reloader = Reloader::load(src.clone()).unwrap();
        let live = reloader.live();
        let u1 = who(Some(U1), Some("52:54:00:aa:00:02"));
        let (t, key) = live.decide_with_entry(&u1);
        assert_eq!(script(&t), "#!ipxe\necho first u1\n");
        assert_eq!(key, Some(EntryKey::Uuid(U1.parse().unwrap())));
        let in_flight = live.current();

        replace(&src.path, SECOND);
        assert!(live.apply(&src.path, "test", src.load().result));
        assert_eq!(script(&live.decide(&u1)), "#!ipxe\necho second u1\n");
        let by_mac = who(
            Some("00000000-0000-4000-8000-000000000009"),
            Some("52:54:00:aa:00:02"),
        );
        let (t, key) = live.decide_with_entry(&by_mac);
        assert_eq!(script(&t), "#!ipxe\necho second mac\n");
        assert_eq!(
            key.map(|k| k.to_string()).as_deref(),
            Some("52:54:00:aa:00:02")
        );
        let (t, key) = live.decide_with_entry(&who(None, Some("52:54:00:aa:00:09")));
        assert_eq!((t, key), (BootTarget::Disk, Some(EntryKey::Default)));
        assert_eq!(
            script(in_flight.decide_entry(&u1).0),
            "#!ipxe\necho first u1\n",
            "an answer started before the swap is unchanged"
        );
        // The store's pins follow the inventory in force.
        let mac: MacAddr = "52:54:00:aa:00:02".parse().unwrap();
        assert!(live.pinned(None, &mut std::iter::once(mac)));
        assert_eq!(
            metric(&live, "ironboot_inventory_reloads_total{result=\"ok\"}"),
            "1"
        );
        assert_eq!(metric(&live, "ironboot_inventory_machine_entries"), "2");
    }

    /// A file that does not load is refused and counted; the inventory in force stays.
    #[test]
    fn a_bad_file_is_refused_and_the_inventory_in_force_stays() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        std::fs::write(&src.path, FIRST).unwrap();
        let live = Reloader::load(src.clone()).unwrap().live();
        let u1 = who(Some(U1), None);
        for (bad, needle) in [
            ("[default\n", "inventory.toml"),
            ("[default]\nbot = \"disk\"\n", "bot"),
            (
                "[[machine]]\nuuid = \"not-a-uuid\"\nboot = \"disk\"\n",
                "machine[0]: uuid[0]",
            ),
        ] {
            replace(&src.path, bad);
            let loaded = src.load();
            assert!(loaded.id.is_some());
            let e = loaded.result.as_ref().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
            assert!(!live.apply(&src.path, "test", loaded.result));
            assert_eq!(script(&live.decide(&u1)), "#!ipxe\necho first u1\n");
        }
        std::fs::remove_file(&src.path).unwrap();
        let gone = src.load();
        assert!(gone.id.is_none());
        assert!(matches!(gone.result, Err(InventoryError::Read { .. })));
        assert!(!live.apply(&src.path, "test", gone.result));
        assert_eq!(script(&live.decide(&u1)), "#!ipxe\necho first u1\n");
        assert_eq!(
            metric(
                &live,
                "ironboot_inventory_reloads_total{result=\"refused\"}"
            ),
            "4"
        );
        assert_eq!(
            metric(&live, "ironboot_inventory_reloads_total{result=\"ok\"}"),
            "0"
        );
        assert_eq!(metric(&live, "ironboot_inventory_machine_entries"), "1");
    }

    /// A change is loaded once the new version has held for one poll; a version that could
    /// not be read is not tried again until the file changes.
    #[test]
    fn a_change_is_loaded_once_it_holds_for_a_poll() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.toml");
        std::fs::write(&path, FIRST).unwrap();
        let first = FileId::at(&path);
        assert!(first.is_some());
        replace(&path, SECOND);
        let second = FileId::at(&path);
        assert_ne!(first, second, "a rename into place is a new version");

        let mut w = Watch::new(first);
        assert!(!w.poll(first));
        assert!(!w.poll(second), "seen once: maybe still being written");
        assert!(w.poll(second), "the same for a poll: load it");
        w.loaded(second);
        assert!(!w.poll(second));
        // Changing under the watch: each new version restarts the wait.
        let (a, b) = (first, None);
        assert!(!w.poll(a));
        assert!(!w.poll(b));
        assert!(w.poll(b));
        w.loaded(b);
        assert!(!w.poll(None), "a missing file is not tried again");
        assert!(!w.poll(None));
        assert!(!w.poll(second));
        assert!(w.poll(second), "back: loaded");
        // A change that reverts before it holds is nothing to load.
        w.loaded(second);
        assert!(!w.poll(first));
        assert!(!w.poll(second));
        assert!(!w.poll(second));
    }

    /// The service notices a file renamed into place by itself and stops on its token.
    #[tokio::test]
    async fn the_service_follows_the_file_and_stops_on_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        std::fs::write(&src.path, FIRST).unwrap();
        let reloader = Reloader::load(src.clone()).unwrap();
        let live = reloader.live();
        let stop = CancellationToken::new();
        let service = reloader.start(stop.clone()).unwrap();
        let u1 = who(Some(U1), None);

        replace(&src.path, SECOND);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while script(&live.decide(&u1)) != "#!ipxe\necho second u1\n" {
            assert!(tokio::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replace(&src.path, "[default\n");
        while metric(
            &live,
            "ironboot_inventory_reloads_total{result=\"refused\"}",
        ) != "1"
        {
            assert!(tokio::time::Instant::now() < deadline, "not refused");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(script(&live.decide(&u1)), "#!ipxe\necho second u1\n");
        // The refused version is not read again while it stays.
        tokio::time::sleep(POLL * 3).await;
        assert_eq!(
            metric(
                &live,
                "ironboot_inventory_reloads_total{result=\"refused\"}"
            ),
            "1"
        );
        assert_eq!(
            metric(&live, "ironboot_inventory_reloads_total{result=\"ok\"}"),
            "1"
        );

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), service.task)
            .await
            .expect("stopped on its token")
            .unwrap()
            .unwrap();
    }
}
