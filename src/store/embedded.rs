//! The embedded backend: sessions and counters in process memory, optionally persisted.
//!
//! Persistence: one JSON file holding the sessions and the quota counters (rate windows are
//! seconds long and are not worth a write). It is written to a temporary file beside the target,
//! fsynced, then renamed over it, so a crash leaves the old or the new file, never half of one;
//! mode 0600 because sessions carry secrets (HMAC, basic auth). Writes happen on
//! [`Embedded::flush`] (the Gateway API calls it after each change) and from a background thread
//! once a second when something changed (sessions stored by auth plugins, quota usage), and when
//! the store is dropped.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::limits::{KeyCounters, LimitDecision, LimitSpec, QuotaCounter};
use super::session::TykSession;
use super::{unix_micros, StoreError};

/// How often the flusher looks for unsaved changes, and sweeps idle counters.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Counters idle for longer than this are dropped by the sweep (a rate window longer than an
/// hour is unusual; a longer one just starts empty after a sweep).
const SWEEP_HORIZON_US: u64 = 3_600 * 1_000_000;

/// The file's layout.
#[derive(Serialize, Deserialize, Default)]
struct FileImage {
    /// Format version, for future changes.
    version: u32,
    /// Key → session, in Tyk's JSON.
    sessions: BTreeMap<String, TykSession>,
    /// Key → quota usage.
    #[serde(default)]
    quotas: BTreeMap<String, QuotaCounter>,
}

struct Shared {
    sessions: RwLock<HashMap<String, TykSession>>,
    counters: Mutex<HashMap<String, KeyCounters>>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
    /// Serializes writers of the file.
    save_lock: Mutex<()>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The embedded backend.
pub(crate) struct Embedded {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl Embedded {
    /// Opens the store, loading `file` when it exists.
    pub fn open(file: Option<PathBuf>) -> Result<Embedded, StoreError> {
        let mut sessions = HashMap::new();
        let mut counters = HashMap::new();
        if let Some(path) = &file {
            match fs::read(path) {
                Ok(bytes) => {
                    let image: FileImage = serde_json::from_slice(&bytes).map_err(|e| {
                        StoreError::Io(format!(
                            "{} is not a pipegate session file ({e}); fix it, or move it away to start with no keys",
                            path.display()
                        ))
                    })?;
                    sessions.extend(image.sessions);
                    for (k, q) in image.quotas {
                        counters.insert(k, KeyCounters::with_quota(q));
                    }
                    tracing::info!(file = %path.display(), keys = sessions.len(), "loaded the embedded session store");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Fail now rather than on the first save if the directory cannot hold it.
                    let dir = parent_dir(path);
                    if !dir.is_dir() {
                        return Err(StoreError::Io(format!(
                            "the directory of storage.file {} does not exist; create it or change storage.file",
                            path.display()
                        )));
                    }
                }
                Err(e) => {
                    return Err(StoreError::Io(format!(
                        "cannot read {}: {e}; check its permissions",
                        path.display()
                    )))
                }
            }
        }
        let shared = Arc::new(Shared {
            sessions: RwLock::new(sessions),
            counters: Mutex::new(counters),
            file,
            dirty: AtomicBool::new(false),
            save_lock: Mutex::new(()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let flusher = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pipegate-store".into())
                .spawn(move || flusher_loop(&shared))
                .map_err(|e| {
                    StoreError::Io(format!("cannot start the store's flusher thread: {e}"))
                })?
        };
        Ok(Embedded {
            shared,
            flusher: Some(flusher),
        })
    }

    pub fn get_first(&self, keys: &[String]) -> Option<(String, TykSession)> {
        let sessions = self.shared.sessions.read();
        keys.iter()
            .find_map(|k| sessions.get(k).map(|s| (k.clone(), s.clone())))
    }

    pub fn put(&self, key: &str, session: &TykSession) {
        self.shared
            .sessions
            .write()
            .insert(key.to_string(), session.clone());
        self.shared.dirty.store(true, Ordering::Release);
    }

    pub fn delete(&self, key: &str) -> bool {
        let removed = self.shared.sessions.write().remove(key).is_some();
        self.shared.counters.lock().remove(key);
        self.shared.dirty.store(true, Ordering::Release);
        removed
    }

    pub fn list(&self) -> Vec<String> {
        self.shared.sessions.read().keys().cloned().collect()
    }

    pub fn reset_limits(&self, key: &str) {
        if self.shared.counters.lock().remove(key).is_some() {
            self.shared.dirty.store(true, Ordering::Release);
        }
    }

    pub fn check_limits(&self, key: &str, spec: &LimitSpec, now_us: u64) -> LimitDecision {
        let decision = {
            let mut counters = self.shared.counters.lock();
            match counters.get_mut(key) {
                Some(c) => c.check(spec, now_us),
                None => {
                    let mut c = KeyCounters::default();
                    let d = c.check(spec, now_us);
                    counters.insert(key.to_string(), c);
                    d
                }
            }
        };
        if spec.quota_max > 0 {
            self.shared.dirty.store(true, Ordering::Release);
        }
        decision
    }

    pub fn quota_usage(&self, key: &str, now_us: u64) -> Option<(i64, Option<i64>)> {
        let counters = self.shared.counters.lock();
        let q = counters.get(key)?.quota().current(now_us);
        (q.used > 0).then(|| (q.used, q.renews_at_us.map(super::limits::micros_to_secs)))
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        save_if_dirty(&self.shared)
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        if let Err(e) = save_if_dirty(&self.shared) {
            tracing::error!("could not save the session store on shutdown: {e}");
        }
    }
}

fn flusher_loop(shared: &Shared) {
    loop {
        {
            let mut stop = shared.stop.lock();
            if *stop {
                return;
            }
            shared.wake.wait_for(&mut stop, FLUSH_EVERY);
            if *stop {
                return;
            }
        }
        sweep_idle(shared);
        if let Err(e) = save_if_dirty(shared) {
            tracing::error!("{e}");
        }
    }
}

/// Drops counters that hold nothing, so keys seen once do not stay in memory forever.
fn sweep_idle(shared: &Shared) {
    let now = unix_micros(SystemTime::now());
    shared
        .counters
        .lock()
        .retain(|_, c| !c.is_idle(now, SWEEP_HORIZON_US));
}

fn save_if_dirty(shared: &Shared) -> Result<(), StoreError> {
    let Some(path) = &shared.file else {
        shared.dirty.store(false, Ordering::Release);
        return Ok(());
    };
    let _guard = shared.save_lock.lock();
    if !shared.dirty.swap(false, Ordering::AcqRel) {
        return Ok(());
    }
    let now = unix_micros(SystemTime::now());
    let image = FileImage {
        version: 1,
        sessions: shared
            .sessions
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        quotas: shared
            .counters
            .lock()
            .iter()
            .filter_map(|(k, c)| {
                let q = c.quota().current(now);
                (q.used > 0).then(|| (k.clone(), q))
            })
            .collect(),
    };
    let result = serde_json::to_vec(&image)
        .map_err(|e| StoreError::Io(format!("cannot encode the session store: {e}")))
        .and_then(|bytes| write_atomically(path, &bytes));
    if result.is_err() {
        // Try again on the next flush.
        shared.dirty.store(true, Ordering::Release);
    }
    result
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Temp file in the same directory, fsync, rename over the target, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sessions".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let io = |what: &str, e: std::io::Error| {
        StoreError::Io(format!(
            "cannot {what} {} ({e}); check the directory exists and is writable",
            tmp.display()
        ))
    };
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| io("create", e))?;
        f.write_all(bytes).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io(format!(
            "cannot replace {} ({e}); check the directory is writable",
            path.display()
        )));
    }
    // Make the rename itself durable; not every platform lets a directory be synced.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
