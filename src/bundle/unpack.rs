//! Unpacking a bundle zip that came from the network, without trusting it.
//!
//! Every entry name must stay inside the destination; symlinks and other special files are refused;
//! the entry count and the uncompressed sizes are capped (both as declared and as actually
//! inflated, since a zip bomb lies about its sizes). Extraction goes to a staging directory next to
//! the destination, which is renamed into place only when complete, so a crash or a concurrent
//! loader never sees a half-written bundle.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Cursor, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use zip::ZipArchive;

use super::manifest::safe_relative_path;
use super::BundleError;

/// Caps applied when unpacking a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sum of the uncompressed sizes of all entries (default 100 MiB).
    pub max_total_size: u64,
    /// Number of zip entries, directories included (default 1000).
    pub max_files: usize,
    /// Uncompressed size of any single entry (default 100 MiB, i.e. only the total applies).
    pub max_file_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_size: 100 * 1024 * 1024,
            max_files: 1000,
            max_file_size: 100 * 1024 * 1024,
        }
    }
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// Unpacks `zip_bytes` into `dest`, which must not exist yet.
///
/// Directories are created with mode 0700 (as Tyk does), files with 0600, or 0700 when the entry
/// carries a Unix owner-execute bit. `dest`'s parent directories are created (0700) if missing.
pub fn unpack(zip_bytes: &[u8], dest: &Path, limits: &Limits) -> Result<(), BundleError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(BundleError::AlreadyExists {
            path: dest.to_path_buf(),
        });
    }
    let staging = Staging::extract(zip_bytes, dest, limits)?;
    staging.commit(dest)
}

/// A directory being filled next to its final place; removed on drop unless committed.
#[derive(Debug)]
pub(crate) struct Staging {
    path: PathBuf,
    committed: bool,
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

impl Staging {
    /// Creates an empty staging directory beside `dest` (same file system, so the final rename is
    /// atomic).
    pub(crate) fn create(dest: &Path) -> Result<Staging, BundleError> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".to_string());
        create_dirs(&parent)?;
        let seq = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!(".{base}.partial-{}-{seq}", std::process::id()));
        // A leftover from a crashed process with a recycled pid: clear it.
        if fs::symlink_metadata(&path).is_ok() {
            fs::remove_dir_all(&path)
                .map_err(|e| BundleError::io("cannot remove stale staging directory", &path, e))?;
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| BundleError::io("cannot create staging directory", &path, e))?;
        Ok(Staging {
            path,
            committed: false,
        })
    }

    /// Creates a staging directory beside `dest` and extracts `zip_bytes` into it.
    pub(crate) fn extract(
        zip_bytes: &[u8],
        dest: &Path,
        limits: &Limits,
    ) -> Result<Staging, BundleError> {
        let staging = Staging::create(dest)?;
        extract_into(zip_bytes, &staging.path, limits)?;
        Ok(staging)
    }

    /// Where the files are.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the staging directory to `dest`. Fails with [`BundleError::AlreadyExists`] when
    /// `dest` appeared meanwhile (another process won the race); the staging copy is then removed.
    pub(crate) fn commit(mut self, dest: &Path) -> Result<(), BundleError> {
        match fs::rename(&self.path, dest) {
            Ok(()) => {
                self.committed = true;
                Ok(())
            }
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    || e.kind() == io::ErrorKind::DirectoryNotEmpty =>
            {
                Err(BundleError::AlreadyExists {
                    path: dest.to_path_buf(),
                })
            }
            Err(e) => Err(BundleError::io(
                format!("cannot move unpacked bundle {} to", self.path.display()),
                dest,
                e,
            )),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover is cleared by the next staging with the same name.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// `mkdir -p` with mode 0700 for every directory it creates.
pub(crate) fn create_dirs(path: &Path) -> Result<(), BundleError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| BundleError::io("cannot create directory", path, e))
}

fn zip_err(e: zip::result::ZipError) -> BundleError {
    BundleError::Zip {
        reason: e.to_string(),
    }
}

/// Extracts every entry of `zip_bytes` into the existing, empty directory `root`.
fn extract_into(zip_bytes: &[u8], root: &Path, limits: &Limits) -> Result<(), BundleError> {
    let too_many = |count: u64| BundleError::LimitExceeded {
        what: format!(
            "the zip has {count} entries, more than the limit of {}",
            limits.max_files
        ),
    };
    // The zip reader parses every central directory entry up front; refuse a zip claiming
    // millions of entries before it allocates for them.
    if let Some(declared) = declared_entry_count(zip_bytes) {
        if declared > limits.max_files as u64 {
            return Err(too_many(declared));
        }
    }
    let mut archive = ZipArchive::new(Cursor::new(zip_bytes)).map_err(zip_err)?;
    let count = archive.len();
    if count > limits.max_files {
        return Err(too_many(count as u64));
    }
    // Check the declared sizes first so an oversized bundle fails before anything is written.
    let mut declared = 0u64;
    for i in 0..count {
        let entry = archive.by_index_raw(i).map_err(zip_err)?;
        check_file_size(&entry_name(&entry)?, entry.size(), limits)?;
        declared = declared.saturating_add(entry.size());
        if declared > limits.max_total_size {
            return Err(total_exceeded(limits));
        }
    }
    let mut written = 0u64;
    for i in 0..count {
        let mut entry = archive.by_index(i).map_err(zip_err)?;
        let name = entry_name(&entry)?;
        let rel = safe_relative_path(&name).map_err(|reason| BundleError::UnsafeEntry {
            name: name.clone(),
            reason,
        })?;
        if entry.encrypted() {
            return Err(BundleError::UnsafeEntry {
                name,
                reason: "encrypted entries are not supported".into(),
            });
        }
        if entry.is_symlink() {
            return Err(BundleError::UnsafeEntry {
                name,
                reason: "symbolic links are not allowed in bundles".into(),
            });
        }
        let mode = entry.unix_mode().unwrap_or(0);
        let kind = mode & S_IFMT;
        if kind != 0 && kind != S_IFREG && kind != S_IFDIR {
            return Err(BundleError::UnsafeEntry {
                name,
                reason: format!("special file (mode {mode:o}) is not allowed in bundles"),
            });
        }
        let target = root.join(&rel);
        if entry.is_dir() {
            create_dirs(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            create_dirs(parent)?;
        }
        let file_mode = if mode & 0o100 != 0 { 0o700 } else { 0o600 };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file_mode)
            .open(&target)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    BundleError::UnsafeEntry {
                        name: name.clone(),
                        reason: "duplicate entry (the name appears twice in the zip)".into(),
                    }
                } else {
                    BundleError::io("cannot create", &target, e)
                }
            })?;
        let allowed = limits
            .max_file_size
            .min(limits.max_total_size.saturating_sub(written));
        let copied = copy_limited(&mut entry, &mut out, allowed).map_err(|e| BundleError::Zip {
            reason: format!("cannot extract {name:?}: {e}"),
        })?;
        if copied > allowed {
            if copied > limits.max_file_size {
                return Err(file_exceeded(&name, limits));
            }
            return Err(total_exceeded(limits));
        }
        written += copied;
    }
    Ok(())
}

/// The entry count the end-of-central-directory record declares (ZIP64 aware), if one is found.
fn declared_entry_count(bytes: &[u8]) -> Option<u64> {
    const EOCD_LEN: usize = 22;
    let last = bytes.len().checked_sub(EOCD_LEN)?;
    // The record ends with a comment of at most 65535 bytes.
    let first = last.saturating_sub(0xFFFF);
    let pos = (first..=last)
        .rev()
        .find(|&i| bytes[i..].starts_with(b"PK\x05\x06"))?;
    let le16 = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let le64 = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let total = le16(pos + 10)?;
    if total != 0xFFFF {
        return Some(u64::from(total));
    }
    // ZIP64: the locator sits just before the record and points at the ZIP64 record.
    let locator = pos.checked_sub(20)?;
    if !bytes[locator..].starts_with(b"PK\x06\x07") {
        return Some(u64::from(total));
    }
    let record = usize::try_from(le64(locator + 8)?).ok()?;
    if !bytes.get(record..)?.starts_with(b"PK\x06\x06") {
        return Some(u64::from(total));
    }
    le64(record + 32)
}

fn entry_name<R: Read>(entry: &zip::read::ZipFile<'_, R>) -> Result<String, BundleError> {
    entry.name().map(|n| n.into_owned()).map_err(zip_err)
}

fn check_file_size(name: &str, size: u64, limits: &Limits) -> Result<(), BundleError> {
    if size > limits.max_file_size {
        return Err(file_exceeded(name, limits));
    }
    Ok(())
}

fn file_exceeded(name: &str, limits: &Limits) -> BundleError {
    BundleError::LimitExceeded {
        what: format!(
            "entry {name:?} is larger than the per-file limit of {} bytes",
            limits.max_file_size
        ),
    }
}

fn total_exceeded(limits: &Limits) -> BundleError {
    BundleError::LimitExceeded {
        what: format!(
            "the unpacked bundle is larger than the limit of {} bytes",
            limits.max_total_size
        ),
    }
}

/// Copies at most `allowed + 1` bytes, so the caller can tell "exactly at the limit" from "over".
fn copy_limited(src: &mut dyn Read, dst: &mut File, allowed: u64) -> io::Result<u64> {
    let mut limited = src.take(allowed.saturating_add(1));
    io::copy(&mut limited, dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn entry_count_is_read_from_the_end_record() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for i in 0..7 {
            w.start_file(format!("f{i}"), zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(b"x").unwrap();
        }
        w.set_comment("a trailing comment").unwrap();
        let bytes = w.finish().unwrap().into_inner();
        assert_eq!(declared_entry_count(&bytes), Some(7));
        assert_eq!(declared_entry_count(b"not a zip"), None);
    }

    #[test]
    fn a_zip_claiming_too_many_entries_is_refused_before_parsing() {
        // An end record alone, claiming 60000 entries: refused on the claim, not parsed.
        let mut eocd = b"PK\x05\x06".to_vec();
        eocd.extend_from_slice(&[0, 0, 0, 0]);
        eocd.extend_from_slice(&60000u16.to_le_bytes());
        eocd.extend_from_slice(&60000u16.to_le_bytes());
        eocd.extend_from_slice(&[0; 10]);
        assert_eq!(declared_entry_count(&eocd), Some(60000));
        let dir = std::env::temp_dir().join(format!("pipegate-eocd-{}", std::process::id()));
        let e = unpack(&eocd, &dir, &Limits::default()).unwrap_err();
        assert!(matches!(e, BundleError::LimitExceeded { .. }), "{e:?}");
        assert!(!dir.exists());
    }
}
