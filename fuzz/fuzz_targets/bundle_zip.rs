//! Bundle zip handling: `bundle::unpack` (limits, path checks, staging and commit) on arbitrary
//! archives, then the manifest inside and `bundle::verify_dir` (checksum over `file_list`), as a
//! downloaded bundle goes through them. Every extracted path must stay inside the destination.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipegate::bundle::{self, BundleManifest, Limits, VerifyMode, MANIFEST_NAME};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static SEQ: AtomicU64 = AtomicU64::new(0);

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::var_os("FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let r = base.join(format!("pipegate-fuzz-zip-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        std::fs::create_dir_all(&r).expect("fuzz scratch directory");
        r
    })
}

/// Every file under `dir` (symlinks included, not followed) must resolve inside `dir`.
fn assert_contained(dir: &Path, at: &Path) {
    let Ok(entries) = std::fs::read_dir(at) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).expect("listed entry");
        assert!(
            !meta.file_type().is_symlink(),
            "bundle created a symlink: {p:?}"
        );
        assert!(p.starts_with(dir), "{p:?} escaped {dir:?}");
        if meta.is_dir() {
            assert_contained(dir, &p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parent = root().join(format!("{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    let dest = parent.join("bundle");
    let limits = Limits {
        max_total_size: 1 << 20,
        max_files: 64,
        max_file_size: 1 << 20,
    };
    if bundle::unpack(data, &dest, &limits).is_ok() {
        assert!(dest.is_dir());
        assert_contained(&dest, &dest);
        if let Ok(bytes) = std::fs::read(dest.join(MANIFEST_NAME)) {
            if let Ok((m, _)) = BundleManifest::parse(&bytes, &dest.join(MANIFEST_NAME)) {
                let _ = bundle::verify_dir(&dest, &m, None, VerifyMode::Deep);
            }
        }
    }
    // Nothing may be left beside the destination (no staging directory survives).
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for e in entries.flatten() {
            assert_eq!(e.file_name(), "bundle", "left behind: {:?}", e.path());
        }
    }
    let _ = std::fs::remove_dir_all(&parent);
});
