//! The image cache: the factory's kernels, initramfs and UKIs on disk under
//! `<state-dir>/factory-cache`, one file per `<schematic>_<version>_<name>` (immutable for
//! a schematic, version and name).
//!
//! - **One download per image**: the first request starts the download on a task of its
//!   own (a machine that goes away does not cancel it for the others) into a temporary
//!   file; every request for the same image, the first included, reads that file as it
//!   grows, so a rack PXE-booting at once costs one download from the internet, and each
//!   machine gets bytes as soon as they arrive.
//! - **No truncated entry, ever**: the download is written to `.tmp-<n>-<name>`, synced,
//!   then renamed to its name; an interrupted download is deleted (its readers get an
//!   aborted transfer, and the next request downloads again), and leftovers of a crash are
//!   deleted at start.
//! - **Bounded**: complete images are kept under a size bound (default
//!   [`DEFAULT_MAX_BYTES`]), the least recently used removed first. Readers hold the file
//!   open, so removing an image never cuts a transfer short; an image larger than the whole
//!   bound is served and then not kept.
//!
//! File-system calls that could wait on the disk run on blocking threads; renames and
//! removals happen under the cache's lock so a name never points at the wrong file.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::UpstreamError;
use super::path::{AssetPath, Kind};
use super::stats::{FactoryProxyStats, Served};

/// Default bound of the cache: a few dozen kernels and initramfs (the agent image and each
/// cluster's Talos, per architecture).
pub(crate) const DEFAULT_MAX_BYTES: u64 = 4 << 30;
/// Largest image downloaded (a UKI or an initramfs with extensions is a few hundred MB).
pub(crate) const MAX_IMAGE_BYTES: u64 = 2 << 30;
/// Bytes gathered before a write to the temporary file (and a progress report).
const WRITE_BATCH: usize = 256 << 10;
/// Bytes read from the file per body chunk.
const READ_CHUNK: u64 = 256 << 10;
/// Body chunks queued per reader.
const READER_QUEUE: usize = 4;
/// Prefix of downloads under way.
const TMP_PREFIX: &str = ".tmp-";

/// A download's progress, shared with its readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Waiting for the factory's answer.
    Connecting,
    /// `written` bytes are in the file; `expected` is the factory's `Content-Length`.
    Receiving {
        /// From the factory's headers.
        expected: Option<u64>,
        /// In the file, readable.
        written: u64,
    },
    /// Complete and in the cache (or served and dropped, if larger than the bound).
    Done {
        /// The image's size.
        len: u64,
    },
    /// Failed; nothing was kept.
    Failed(UpstreamError),
}

/// Where images come from.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// For the factory.
    pub(crate) client: reqwest::Client,
    /// The PXE front end's base URL (`--image-factory-pxe-base-url`).
    pub(crate) base: String,
}

#[derive(Debug)]
struct Ready {
    len: u64,
    /// Last use, in [`State::tick`]s.
    used: u64,
}

#[derive(Debug, Clone)]
struct InFlight {
    file: Arc<fs::File>,
    progress: watch::Receiver<Progress>,
}

#[derive(Debug, Default)]
struct State {
    ready: HashMap<String, Ready>,
    inflight: HashMap<String, InFlight>,
    total: u64,
    tick: u64,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

/// The image cache (see the module documentation).
#[derive(Debug)]
pub(crate) struct ImageCache {
    dir: PathBuf,
    max_bytes: u64,
    upstream: Upstream,
    stats: Arc<FactoryProxyStats>,
    state: Mutex<State>,
    seq: AtomicU64,
}

/// An image to send: an open file, complete or still being written.
#[derive(Debug)]
pub(crate) struct Source {
    file: Arc<fs::File>,
    /// `None`: complete.
    progress: Option<watch::Receiver<Progress>>,
    /// The size, when known (complete, or announced by the factory).
    pub(crate) len: Option<u64>,
    /// How the request was served.
    pub(crate) served: Served,
}

impl Source {
    /// Whether the whole image is on disk (ranges can be served).
    pub(crate) fn complete(&self) -> bool {
        self.progress.is_none()
    }

    /// The open file, the download's progress while it is under way, and the size when
    /// known: for the zero-copy image path (`crate::boot::http::sendfile`).
    pub(crate) fn into_parts(
        self,
    ) -> (
        Arc<fs::File>,
        Option<watch::Receiver<Progress>>,
        Option<u64>,
    ) {
        (self.file, self.progress, self.len)
    }

    /// The body: `range` of a complete image, or all of it; an error item when the
    /// download breaks off.
    pub(crate) fn stream(
        self,
        range: Option<Range<u64>>,
        stats: Arc<FactoryProxyStats>,
    ) -> mpsc::Receiver<io::Result<Bytes>> {
        let (tx, rx) = mpsc::channel(READER_QUEUE);
        let (start, end) = match (&self.progress, range, self.len) {
            (None, Some(r), _) => (r.start, Some(r.end)),
            (None, None, len) => (0, len),
            (Some(_), _, _) => (0, None),
        };
        tokio::spawn(pump(self.file, self.progress, start, end, tx, stats));
        rx
    }
}

/// Send `pos..end` of `file` (`end`: `None` until the download is done) to `tx`.
async fn pump(
    file: Arc<fs::File>,
    mut progress: Option<watch::Receiver<Progress>>,
    mut pos: u64,
    end: Option<u64>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    stats: Arc<FactoryProxyStats>,
) {
    loop {
        let (available, done) = match progress.as_mut() {
            None => (end.unwrap_or(0), true),
            Some(rx) => {
                let now = rx.borrow_and_update().clone();
                match now {
                    Progress::Connecting => (0, false),
                    Progress::Receiving { written, .. } => (written, false),
                    Progress::Done { len } => (len, true),
                    Progress::Failed(e) => {
                        let _ = tx.send(Err(io::Error::other(e))).await;
                        return;
                    }
                }
            }
        };
        let stop = end.map_or(available, |e| e.min(available));
        if pos >= stop {
            let Some(rx) = progress.as_mut().filter(|_| !done) else {
                return;
            };
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        let _ = tx
                            .send(Err(io::Error::other("the download was abandoned")))
                            .await;
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            continue;
        }
        let n = (stop - pos).min(READ_CHUNK);
        let f = file.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
            f.read_exact_at(&mut buf, pos).map(|()| buf)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match read {
            Ok(buf) => {
                stats.served_bytes(n);
                if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    return;
                }
                pos += n;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

fn disk_error(path: &Path, e: &io::Error) -> UpstreamError {
    UpstreamError::Disk {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl ImageCache {
    /// The cache in `dir` (created if absent), bounded by `max_bytes`: leftovers of
    /// interrupted downloads are deleted, complete images are taken back (least recently
    /// modified first out), and the cache is trimmed to the bound.
    pub(crate) fn open(
        dir: PathBuf,
        max_bytes: u64,
        upstream: Upstream,
        stats: Arc<FactoryProxyStats>,
    ) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        let mut leftovers = 0u32;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            if name.starts_with(TMP_PREFIX) {
                fs::remove_file(entry.path())?;
                leftovers += 1;
                continue;
            }
            if AssetPath::from_cache_name(name).is_none() {
                continue;
            }
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            found.push((modified, name.to_owned(), meta.len()));
        }
        found.sort();
        let mut state = State::default();
        for (_, name, len) in found {
            let used = state.tick();
            state.total += len;
            state.ready.insert(name, Ready { len, used });
        }
        let cache = Self {
            dir,
            max_bytes,
            upstream,
            stats,
            state: Mutex::new(State::default()),
            seq: AtomicU64::new(0),
        };
        let evicted = cache.evict(&mut state);
        cache.stats.set_cache(state.total, state.ready.len() as u64);
        info!(
            dir = %cache.dir.display(),
            images = state.ready.len(),
            bytes = state.total,
            max_bytes,
            evicted,
            interrupted_downloads_removed = leftovers,
            "Image Factory cache open"
        );
        *cache.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        Ok(cache)
    }

    /// The cache's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remove least recently used images until the cache is within its bound; returns how
    /// many. Called with the lock held: a removal and a rename never interleave.
    fn evict(&self, state: &mut State) -> u64 {
        let mut n = 0;
        while state.total > self.max_bytes {
            let Some(victim) = state
                .ready
                .iter()
                .min_by_key(|(_, r)| r.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(r) = state.ready.remove(&victim) {
                state.total -= r.len;
            }
            let path = self.dir.join(&victim);
            match fs::remove_file(&path) {
                Ok(()) => debug!(path = %path.display(), "factory cache: evicted"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "factory cache: removing an evicted image failed")
                }
            }
            n += 1;
        }
        if n > 0 {
            self.stats.evicted(n);
        }
        n
    }

    /// The image at `path`: from the cache, from the download under way, or from a new
    /// download. `Err` when the download failed before its first byte.
    pub(crate) async fn get(self: &Arc<Self>, path: &AssetPath) -> Result<Source, UpstreamError> {
        let key = path.cache_name();
        let mut created: Option<(PathBuf, fs::File)> = None;
        loop {
            let found = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let tick = state.tick();
                if let Some(r) = state.ready.get_mut(&key) {
                    r.used = tick;
                    Found::Ready
                } else if let Some(f) = state.inflight.get(&key) {
                    Found::InFlight(f.clone(), Served::Shared)
                } else if let Some((tmp, file)) = created.take() {
                    match self.start(&mut state, &key, path, tmp, file) {
                        Ok(f) => Found::InFlight(f, Served::Miss),
                        Err(e) => return Err(e),
                    }
                } else {
                    Found::Nothing
                }
            };
            match found {
                Found::Ready => {
                    let file_path = self.dir.join(&key);
                    let opened = tokio::task::spawn_blocking(move || {
                        let f = fs::File::open(&file_path)?;
                        let len = f.metadata()?.len();
                        Ok::<_, io::Error>((f, len))
                    })
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)));
                    match opened {
                        Ok((file, len)) => {
                            self.discard(created.take());
                            return Ok(Source {
                                file: Arc::new(file),
                                progress: None,
                                len: Some(len),
                                served: Served::Hit,
                            });
                        }
                        Err(e) => {
                            // Removed behind our back: forget it and download again.
                            warn!(path = %self.dir.join(&key).display(), error = %e, "factory cache: a cached image is unreadable; downloading it again");
                            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(r) = state.ready.remove(&key) {
                                state.total -= r.len;
                            }
                        }
                    }
                }
                Found::InFlight(f, served) => {
                    self.discard(created.take());
                    let mut rx = f.progress.clone();
                    let now = rx
                        .wait_for(|p| !matches!(p, Progress::Connecting))
                        .await
                        .map(|p| p.clone());
                    return match now {
                        Ok(Progress::Failed(e)) => Err(e),
                        Ok(p) => Ok(Source {
                            file: f.file,
                            len: match p {
                                Progress::Receiving { expected, .. } => expected,
                                Progress::Done { len } => Some(len),
                                _ => None,
                            },
                            progress: Some(rx),
                            served,
                        }),
                        Err(_) => Err(UpstreamError::Abandoned {
                            url: path.url(&self.upstream.base),
                        }),
                    };
                }
                Found::Nothing => {
                    // Create the temporary file off the lock, then look again: another
                    // request may have started meanwhile.
                    let tmp = self.dir.join(format!(
                        "{TMP_PREFIX}{}-{key}",
                        self.seq.fetch_add(1, Ordering::Relaxed)
                    ));
                    let t = tmp.clone();
                    let file = tokio::task::spawn_blocking(move || {
                        fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create_new(true)
                            .open(&t)
                    })
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)))
                    .map_err(|e| disk_error(&tmp, &e))?;
                    created = Some((tmp, file));
                }
            }
        }
    }

    /// Delete a temporary file made for a download another request started first.
    fn discard(&self, created: Option<(PathBuf, fs::File)>) {
        if let Some((tmp, file)) = created {
            drop(file);
            tokio::task::spawn_blocking(move || {
                let _ = fs::remove_file(tmp);
            });
        }
    }

    /// Register the download of `key` into `tmp` and start it (lock held).
    fn start(
        self: &Arc<Self>,
        state: &mut State,
        key: &str,
        path: &AssetPath,
        tmp: PathBuf,
        file: fs::File,
    ) -> Result<InFlight, UpstreamError> {
        let reader = match file.try_clone() {
            Ok(f) => Arc::new(f),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(disk_error(&tmp, &e));
            }
        };
        let (tx, rx) = watch::channel(Progress::Connecting);
        let inflight = InFlight {
            file: reader,
            progress: rx,
        };
        state.inflight.insert(key.to_owned(), inflight.clone());
        self.stats.fetch_started(Kind::Image);
        let me = self.clone();
        let key = key.to_owned();
        let path = path.clone();
        tokio::spawn(async move {
            me.download(key, path, tmp, tokio::fs::File::from_std(file), tx)
                .await;
        });
        Ok(inflight)
    }

    /// The download task: fetch, write, sync, rename, publish.
    async fn download(
        self: Arc<Self>,
        key: String,
        path: AssetPath,
        tmp: PathBuf,
        mut writer: tokio::fs::File,
        tx: watch::Sender<Progress>,
    ) {
        let url = path.url(&self.upstream.base);
        let outcome = match self.receive(&url, &tmp, &mut writer, &tx).await {
            Ok(len) => match writer.sync_all().await {
                Ok(()) => Ok(len),
                Err(e) => Err(disk_error(&tmp, &e)),
            },
            Err(e) => Err(e),
        };
        drop(writer);
        let me = self.clone();
        let k = key.clone();
        let t = tmp.clone();
        let outcome = tokio::task::spawn_blocking(move || me.finish(&k, &t, outcome))
            .await
            .unwrap_or_else(|e| {
                Err(UpstreamError::Disk {
                    path: tmp.display().to_string(),
                    reason: e.to_string(),
                })
            });
        match outcome {
            Ok(len) => {
                info!(%url, bytes = len, "Image Factory image cached");
                tx.send_replace(Progress::Done { len });
            }
            Err(e) => {
                self.stats.upstream_error();
                warn!(error = %e, "Image Factory image download failed; nothing cached");
                tx.send_replace(Progress::Failed(e));
            }
        }
    }

    /// After the download (blocking thread): rename into place and account for it, or
    /// delete the temporary file; either way the download is no longer under way.
    fn finish(
        &self,
        key: &str,
        tmp: &Path,
        outcome: Result<u64, UpstreamError>,
    ) -> Result<u64, UpstreamError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.inflight.remove(key);
        let outcome = outcome.and_then(|len| {
            fs::rename(tmp, self.dir.join(key))
                .map(|()| len)
                .map_err(|e| disk_error(tmp, &e))
        });
        match &outcome {
            Ok(len) => {
                let used = state.tick();
                if let Some(old) = state
                    .ready
                    .insert(key.to_owned(), Ready { len: *len, used })
                {
                    state.total -= old.len;
                }
                state.total += len;
                if *len > self.max_bytes {
                    warn!(
                        image = key,
                        bytes = len,
                        max_bytes = self.max_bytes,
                        "an image larger than the whole factory cache: served, not kept"
                    );
                }
                self.evict(&mut state);
            }
            Err(_) => {
                let _ = fs::remove_file(tmp);
            }
        }
        self.stats.set_cache(state.total, state.ready.len() as u64);
        outcome
    }

    /// Fetch `url` into `writer`, reporting progress; the image's length.
    async fn receive(
        &self,
        url: &str,
        tmp: &Path,
        writer: &mut tokio::fs::File,
        tx: &watch::Sender<Progress>,
    ) -> Result<u64, UpstreamError> {
        debug!(%url, "fetching an Image Factory image");
        let mut response = self
            .upstream
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(url, &e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(UpstreamError::NotFound {
                url: url.to_owned(),
            });
        }
        if !status.is_success() {
            return Err(UpstreamError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let expected = response.content_length();
        if expected.is_some_and(|n| n > MAX_IMAGE_BYTES) {
            return Err(UpstreamError::TooLarge {
                url: url.to_owned(),
                limit: MAX_IMAGE_BYTES,
            });
        }
        tx.send_replace(Progress::Receiving {
            expected,
            written: 0,
        });
        let mut written = 0u64;
        let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| UpstreamError::Interrupted {
                    url: url.to_owned(),
                    got: written + batch.len() as u64,
                    reason: super::error_chain(&e),
                })?;
            let last = chunk.is_none();
            if let Some(c) = &chunk {
                self.stats.upstream_bytes(c.len() as u64);
                batch.extend_from_slice(c);
                if written + batch.len() as u64 > MAX_IMAGE_BYTES {
                    return Err(UpstreamError::TooLarge {
                        url: url.to_owned(),
                        limit: MAX_IMAGE_BYTES,
                    });
                }
            }
            if batch.len() >= WRITE_BATCH || (last && !batch.is_empty()) {
                writer
                    .write_all(&batch)
                    .await
                    .map_err(|e| disk_error(tmp, &e))?;
                // Readers read the file by position: the bytes must be written, not in
                // the writer's buffer, before they are announced.
                writer.flush().await.map_err(|e| disk_error(tmp, &e))?;
                written += batch.len() as u64;
                batch.clear();
                tx.send_replace(Progress::Receiving { expected, written });
            }
            if last {
                break;
            }
        }
        if let Some(expected) = expected
            && expected != written
        {
            return Err(UpstreamError::Truncated {
                url: url.to_owned(),
                got: written,
                expected,
            });
        }
        Ok(written)
    }
}

enum Found {
    Ready,
    InFlight(InFlight, Served),
    Nothing,
}
