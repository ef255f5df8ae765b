//! Large bodies handed to the plugin through files on tmpfs instead of through the pipe.
//!
//! A body above `coprocess_options.mmap_threshold_bytes` is written once to a file under
//! `/dev/shm` (memory-backed, so this is a page-cache copy, not disk I/O) and the hook object
//! carries `raw_body_file: {path, len}`; a child that said `"mmap": true` in its hello maps it
//! instead of reading megabytes through a 64 KiB pipe. A child may answer with a file of its own.
//! The gateway only ever reads or deletes files in its spill directory whose names start with
//! [`PREFIX`]: a plugin cannot make it forward or delete an arbitrary file.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::object::RawBodyFile;

/// File-name prefix of every body file, the gateway's and the child's alike.
pub const PREFIX: &str = "pipegate-body-";

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Where body files live: `/dev/shm` when present (tmpfs), else the system temp directory.
pub fn spill_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Writes `body` to a new body file and describes it for the object.
pub fn spill(body: &[u8]) -> io::Result<RawBodyFile> {
    let name = format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = spill_dir().join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    f.write_all(body)?;
    Ok(RawBodyFile {
        path: path.to_string_lossy().into_owned(),
        len: body.len() as u64,
    })
}

/// Checks that `path` names a body file in the spill directory (no other file can be read or
/// deleted through a plugin's reply).
fn checked(path: &str) -> io::Result<PathBuf> {
    let p = Path::new(path);
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with(PREFIX) && !n.contains('/'))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("raw_body_file {path:?} is not a pipegate body file ({PREFIX}*)"),
            )
        })?;
    let parent = p.parent().unwrap_or(Path::new(""));
    if parent != spill_dir() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("raw_body_file {path:?} is not in {}", spill_dir().display()),
        ));
    }
    Ok(spill_dir().join(name))
}

/// Reads a body file named in a plugin's reply (memory-mapped), then deletes it. The file must be
/// exactly `len` bytes long.
pub fn take(file: &RawBodyFile) -> io::Result<Vec<u8>> {
    let path = checked(&file.path)?;
    let result = (|| {
        let f = fs::File::open(&path)?;
        let actual = f.metadata()?.len();
        if actual != file.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raw_body_file is {actual} bytes, reply said {}", file.len),
            ));
        }
        if actual == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the file is private to the gateway and the plugin; the plugin has finished
        // writing it (it replied), and the map is dropped before the file is deleted. A plugin
        // that truncates the file concurrently could fault the read; body files live in the
        // gateway's spill directory, which only the gateway's own plugin child can write.
        let map = unsafe { memmap2::Mmap::map(&f)? };
        Ok(map.to_vec())
    })();
    let _ = fs::remove_file(&path);
    result
}

/// Deletes a body file the gateway created (after the hook replied or failed).
pub fn remove(file: &RawBodyFile) {
    if let Ok(p) = checked(&file.path) {
        let _ = fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spill_and_take_round_trip() {
        let body = vec![7u8; 300_000];
        let f = spill(&body).unwrap();
        assert_eq!(f.len, body.len() as u64);
        assert_eq!(take(&f).unwrap(), body);
        assert!(!Path::new(&f.path).exists(), "taken file is deleted");
    }

    #[test]
    fn refuses_foreign_files() {
        let f = RawBodyFile {
            path: "/etc/passwd".into(),
            len: 1,
        };
        assert!(take(&f).is_err());
        let f = RawBodyFile {
            path: spill_dir()
                .join(format!("{PREFIX}../../etc/passwd"))
                .to_string_lossy()
                .into_owned(),
            len: 1,
        };
        assert!(take(&f).is_err());
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let mut f = spill(b"abc").unwrap();
        f.len = 5;
        assert!(take(&f).is_err());
    }
}
