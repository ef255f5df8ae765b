//! Loading an API's `custom_middleware_bundle` at gateway start and reload.
//!
//! Bundles live at `<middleware_path>/bundles/<md5 hex of the bundle name>/` (Tyk's layout since
//! TT-4147) and are shared by every API that names the same bundle. A directory already there is
//! reused after a [`VerifyMode::Partial`] check, so a bundle server that is down at restart does not
//! take APIs down. Otherwise the bundle is downloaded, unpacked into a staging directory,
//! checked with [`VerifyMode::Deep`] and only then renamed into place: an unverified bundle is
//! never visible at its final path, and a failed one leaves nothing behind.
//!
//! Differences from Tyk, both in the direction of keeping a working cache usable: a cached
//! bundle is used even when `enable_bundle_downloader` is off or `bundle_base_url` is empty (those
//! errors only arise when a download is needed), and a cached bundle that fails its check is
//! replaced by a fresh download when one verifies (Tyk just fails the API).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde_json::Value;

use super::crypto::md5_hex;
use super::fetch::{fetch, FetchOptions};
use super::manifest::MANIFEST_NAME;
use super::unpack::{create_dirs, Limits, Staging};
use super::verify::{verify_dir, VerifyMode, VerifyReport};
use super::{BundleError, BundleManifest};

/// The tyk.conf settings that govern bundles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleConfig {
    /// `middleware_path`; bundles go to its `bundles/` subdirectory. A relative path is taken
    /// relative to the current directory.
    pub middleware_path: PathBuf,
    /// `enable_bundle_downloader`.
    pub enable_bundle_downloader: bool,
    /// `bundle_base_url`.
    pub bundle_base_url: String,
    /// `public_key_path`: bundles must be signed with its private key when set.
    pub public_key_path: Option<PathBuf>,
    /// `skip_verify_existing_plugin_bundle`: trust bundles already on disk without hashing them.
    pub skip_verify_existing: bool,
    /// Caps on the unpacked bundle.
    pub limits: Limits,
    /// Download timeout, retries and size cap.
    pub fetch: FetchOptions,
}

impl Default for BundleConfig {
    fn default() -> Self {
        BundleConfig {
            middleware_path: PathBuf::from("middleware"),
            enable_bundle_downloader: false,
            bundle_base_url: String::new(),
            public_key_path: None,
            skip_verify_existing: false,
            limits: Limits::default(),
            fetch: FetchOptions::default(),
        }
    }
}

/// A bundle ready to use.
#[derive(Debug, Clone)]
pub struct LoadedBundle {
    /// Absolute path of the unpacked bundle: `<middleware_path>/bundles/<hash>/`. Plugins that
    /// read files (Python, JS) resolve hook `path`s against it.
    pub dir: PathBuf,
    /// Lowercase hex MD5 of the bundle name (the directory name).
    pub hash: String,
    /// The parsed manifest.
    pub manifest: BundleManifest,
    /// The whole manifest.json as JSON (unknown keys included).
    pub manifest_json: Value,
    /// What was checked.
    pub report: VerifyReport,
    /// True when the directory already existed and was reused; false after a download.
    pub from_cache: bool,
}

/// `<middleware_path>/bundles/<md5 hex of name>`, made absolute.
pub fn bundle_dir(middleware_path: &Path, name: &str) -> Result<PathBuf, BundleError> {
    let base = if middleware_path.is_absolute() {
        middleware_path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| BundleError::io("cannot resolve", middleware_path, e))?
            .join(middleware_path)
    };
    Ok(base.join("bundles").join(md5_hex(name.as_bytes())))
}

/// One lock per bundle directory, so APIs sharing a bundle and loading at once (e.g. on parallel
/// reloads) download and unpack it once and never see each other's partial work.
fn dir_lock(dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS.get_or_init(|| Mutex::new(HashMap::new())).lock();
    map.entry(dir.to_path_buf()).or_default().clone()
}

/// Loads bundle `name` for an API: the cached copy when it is there and passes a partial check,
/// else a fresh, fully verified download. An error means the API must not be loaded (Tyk drops
/// an API whose bundle fails).
pub fn load_for_api(name: &str, cfg: &BundleConfig) -> Result<LoadedBundle, BundleError> {
    if name.is_empty() {
        return Err(BundleError::EmptyName);
    }
    let dir = bundle_dir(&cfg.middleware_path, name)?;
    let hash = md5_hex(name.as_bytes());
    let lock = dir_lock(&dir);
    let _guard = lock.lock();

    let cached_error = if dir.exists() {
        let mode = VerifyMode::Partial {
            skip_existing: cfg.skip_verify_existing,
        };
        match open_verified(&dir, cfg, mode) {
            Ok((manifest, manifest_json, report)) => {
                tracing::debug!(bundle = name, dir = %dir.display(), "using cached bundle");
                return Ok(LoadedBundle {
                    dir,
                    hash,
                    manifest,
                    manifest_json,
                    report,
                    from_cache: true,
                });
            }
            Err(e) => {
                tracing::warn!(bundle = name, dir = %dir.display(), error = %e,
                    "cached bundle failed verification; fetching a fresh copy");
                Some(e)
            }
        }
    } else {
        None
    };

    match fetch_and_install(name, &dir, cfg, cached_error.is_some()) {
        Ok((manifest, manifest_json, report)) => Ok(LoadedBundle {
            dir,
            hash,
            manifest,
            manifest_json,
            report,
            from_cache: false,
        }),
        Err(fresh) => match cached_error {
            Some(cached) => Err(BundleError::CachedInvalid {
                dir,
                cached: Box::new(cached),
                fresh: Box::new(fresh),
            }),
            None => Err(fresh),
        },
    }
}

type Opened = (BundleManifest, Value, VerifyReport);

/// Reads `<dir>/manifest.json` (it must exist and parse in every mode, TT-14814) and verifies.
fn open_verified(dir: &Path, cfg: &BundleConfig, mode: VerifyMode) -> Result<Opened, BundleError> {
    let path = dir.join(MANIFEST_NAME);
    let bytes = fs::read(&path).map_err(|e| BundleError::ManifestLoad {
        path: path.clone(),
        reason: if e.kind() == io::ErrorKind::NotFound {
            "the bundle has no manifest.json".into()
        } else {
            e.to_string()
        },
    })?;
    let (manifest, json) = BundleManifest::parse(&bytes, &path)?;
    let report = verify_dir(dir, &manifest, cfg.public_key_path.as_deref(), mode)?;
    Ok((manifest, json, report))
}

fn fetch_and_install(
    name: &str,
    dir: &Path,
    cfg: &BundleConfig,
    replace: bool,
) -> Result<Opened, BundleError> {
    if !cfg.enable_bundle_downloader {
        return Err(BundleError::DownloaderDisabled {
            name: name.to_string(),
        });
    }
    if cfg.bundle_base_url.is_empty() {
        return Err(BundleError::NoBaseUrl {
            name: name.to_string(),
        });
    }
    let bytes = fetch(&cfg.bundle_base_url, name, &cfg.fetch)?;
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    let staging = Staging::extract(&bytes, dir, &cfg.limits)?;
    let opened = open_verified(staging.path(), cfg, VerifyMode::Deep)?;
    if replace {
        swap_out(dir)?;
    }
    match staging.commit(dir) {
        Ok(()) => {
            tracing::info!(bundle = name, dir = %dir.display(), "bundle downloaded and verified");
            Ok(opened)
        }
        // Another process installed it between our check and our rename: use theirs.
        Err(BundleError::AlreadyExists { .. }) => {
            let mode = VerifyMode::Partial {
                skip_existing: cfg.skip_verify_existing,
            };
            open_verified(dir, cfg, mode)
        }
        Err(e) => Err(e),
    }
}

/// Moves a rejected cached bundle out of the way and deletes it.
fn swap_out(dir: &Path) -> Result<(), BundleError> {
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash = dir.with_file_name(format!(".{base}.rejected-{}", std::process::id()));
    let _ = fs::remove_dir_all(&trash);
    fs::rename(dir, &trash)
        .map_err(|e| BundleError::io("cannot move away the rejected bundle", dir, e))?;
    if let Err(e) = fs::remove_dir_all(&trash) {
        tracing::warn!(dir = %trash.display(), error = %e, "cannot delete rejected bundle");
    }
    Ok(())
}
