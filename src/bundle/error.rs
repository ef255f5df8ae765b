//! The one error type of the bundle module.
//!
//! Where Tyk has a fixed message (`Couldn't load manifest file`, `No driver specified`,
//! `No hooks defined`, `Referencing a nonexistent file: X`, `Bundle isn't signed`,
//! `invalid checksum`, `HTTP Error, got status code N`, `Bundle downloader is disabled`,
//! `No bundle base URL set, skipping bundle`) the display starts with that text, so operators who
//! search Tyk's docs or issues for it find the right page; the rest says which file or check failed
//! and what to do next.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::config::ConfigError;

/// Why building, verifying, fetching, unpacking or loading a bundle failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BundleError {
    /// The manifest file could not be read (Tyk: `Couldn't load manifest file`).
    ManifestLoad {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The manifest is not valid JSON or a field has the wrong type.
    ManifestJson {
        /// The manifest path (or `<bundle>/manifest.json`).
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// `custom_middleware.driver` is empty (Tyk: `No driver specified`).
    NoDriver {
        /// The manifest path.
        path: PathBuf,
    },
    /// No hook in `custom_middleware` (Tyk: `No hooks defined`).
    NoHooks {
        /// The manifest path.
        path: PathBuf,
    },
    /// A `file_list` entry does not exist (Tyk: `Referencing a nonexistent file: X`).
    NonexistentFile {
        /// The entry as listed.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A `file_list` entry cannot go into a bundle (absolute, `..`, duplicate, `manifest.json`,
    /// not a regular file).
    InvalidFileList {
        /// The entry as listed.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `custom_middleware` would be rejected by pipegate's API loader.
    InvalidMiddleware {
        /// Every problem found.
        errors: Vec<ConfigError>,
    },
    /// `bundle build` got neither a key nor `--skip-signing`; pipegate never prompts.
    SigningChoiceRequired,
    /// A key file could not be read or is not a supported RSA key.
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A public key is configured but the bundle carries no signature (Tyk: `Bundle isn't signed`).
    NotSigned,
    /// A file named in `file_list` could not be read while hashing.
    FileUnreadable {
        /// The entry as listed.
        name: String,
        /// The path that was opened.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The files do not hash to the manifest's checksum (Tyk: `invalid checksum`).
    ChecksumMismatch {
        /// The manifest's `checksum`.
        expected: String,
        /// MD5 of the files as found.
        actual: String,
    },
    /// The manifest's `signature` is not standard base64.
    SignatureEncoding {
        /// The decoder's message.
        reason: String,
    },
    /// The signature does not match the files and the public key.
    BadSignature {
        /// The public key used.
        key: PathBuf,
    },
    /// A zip entry would escape the destination or is not a plain file or directory.
    UnsafeEntry {
        /// The entry name as stored in the zip.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A size or count limit of [`crate::bundle::Limits`] or
    /// [`crate::bundle::FetchOptions`] was exceeded.
    LimitExceeded {
        /// Which limit, with the numbers.
        what: String,
    },
    /// The zip archive is malformed or uses an unsupported feature.
    Zip {
        /// The zip reader's or writer's message.
        reason: String,
    },
    /// The bundle URL could not be built or parsed.
    InvalidUrl {
        /// The URL or base URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The URL scheme is not http, https or file (Tyk: `Unknown URL scheme`).
    UnknownScheme {
        /// The URL.
        url: String,
    },
    /// The server answered with a status other than 200 (Tyk: `HTTP Error, got status code N`).
    HttpStatus {
        /// The URL fetched.
        url: String,
        /// The status code.
        code: u16,
    },
    /// Connecting, sending or reading failed.
    Transport {
        /// The URL fetched.
        url: String,
        /// The client's message.
        reason: String,
    },
    /// Every download attempt failed; `last` is the final attempt's error.
    Fetch {
        /// The URL fetched.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<BundleError>,
    },
    /// `enable_bundle_downloader` is false and the bundle is not on disk yet.
    DownloaderDisabled {
        /// The bundle name.
        name: String,
    },
    /// `bundle_base_url` is empty and the bundle is not on disk yet.
    NoBaseUrl {
        /// The bundle name.
        name: String,
    },
    /// The bundle name is empty.
    EmptyName,
    /// The destination directory already exists.
    AlreadyExists {
        /// The destination.
        path: PathBuf,
    },
    /// The cached copy failed verification and no fresh copy could be installed.
    CachedInvalid {
        /// The cached bundle directory.
        dir: PathBuf,
        /// Why the cached copy was rejected.
        cached: Box<BundleError>,
        /// Why the fresh copy could not be installed.
        fresh: Box<BundleError>,
    },
    /// A file system operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl BundleError {
    /// Shorthand for [`BundleError::Io`].
    pub(crate) fn io(what: impl Into<String>, path: impl Into<PathBuf>, source: io::Error) -> Self {
        BundleError::Io {
            what: what.into(),
            path: path.into(),
            source,
        }
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BundleError::*;
        match self {
            ManifestLoad { path, reason } => write!(
                f,
                "Couldn't load manifest file {}: {reason}; pass the manifest with -m/--manifest",
                path.display()
            ),
            ManifestJson { path, reason } => {
                write!(f, "{}: invalid manifest JSON: {reason}", path.display())
            }
            NoDriver { path } => write!(
                f,
                "No driver specified in {}: set custom_middleware.driver (e.g. \"grpc\" or \
                 \"python\")",
                path.display()
            ),
            NoHooks { path } => write!(
                f,
                "No hooks defined in {}: custom_middleware needs at least one of pre, post, \
                 post_key_auth, response or a named auth_check",
                path.display()
            ),
            NonexistentFile { name, path } => write!(
                f,
                "Referencing a nonexistent file: {name} (looked for {}); file_list entries are \
                 read relative to the manifest's directory",
                path.display()
            ),
            InvalidFileList { name, reason } => {
                write!(f, "file_list entry {name:?} cannot be bundled: {reason}")
            }
            InvalidMiddleware { errors } => {
                write!(f, "custom_middleware would not load in pipegate:")?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
            SigningChoiceRequired => write!(
                f,
                "no signing key given: pass -k/--key KEY.pem to sign the bundle, or \
                 -y/--skip-signing to build it unsigned (pipegate never prompts, unlike `tyk \
                 bundle build`)"
            ),
            Key { path, reason } => write!(f, "key {}: {reason}", path.display()),
            NotSigned => write!(
                f,
                "Bundle isn't signed, but public_key_path is set: sign it with `pipegate bundle \
                 build -k PRIVATE_KEY.pem`"
            ),
            FileUnreadable { name, path, reason } => write!(
                f,
                "bundle file {name:?} listed in file_list cannot be read at {}: {reason}",
                path.display()
            ),
            ChecksumMismatch { expected, actual } => write!(
                f,
                "invalid checksum: manifest.json says {expected:?} but the file_list files hash \
                 to {actual:?}; a file was changed after the bundle was built, rebuild it"
            ),
            SignatureEncoding { reason } => write!(
                f,
                "invalid signature: manifest.json's signature is not standard base64 ({reason})"
            ),
            BadSignature { key } => write!(
                f,
                "invalid signature: it does not match the file_list files and the public key {}; \
                 the files were changed or the bundle was signed with another key",
                key.display()
            ),
            UnsafeEntry { name, reason } => {
                write!(f, "refusing zip entry {name:?}: {reason}")
            }
            LimitExceeded { what } => write!(f, "bundle too large: {what}"),
            Zip { reason } => write!(f, "bad zip archive: {reason}"),
            InvalidUrl { url, reason } => write!(f, "invalid bundle URL {url:?}: {reason}"),
            UnknownScheme { url } => write!(
                f,
                "Unknown URL scheme in {url:?}: bundle_base_url must start with http://, \
                 https:// or file://"
            ),
            HttpStatus { url, code } => {
                write!(f, "HTTP Error, got status code {code} from {url}")
            }
            Transport { url, reason } => write!(f, "fetching {url} failed: {reason}"),
            Fetch {
                url,
                attempts,
                last,
            } => write!(
                f,
                "could not download bundle {url} ({attempts} attempt(s)): {last}"
            ),
            DownloaderDisabled { name } => write!(
                f,
                "Bundle downloader is disabled and bundle {name:?} is not on disk: set \
                 enable_bundle_downloader to true in tyk.conf"
            ),
            NoBaseUrl { name } => write!(
                f,
                "No bundle base URL set, skipping bundle {name:?}: set bundle_base_url in tyk.conf"
            ),
            EmptyName => write!(f, "the bundle name is empty"),
            AlreadyExists { path } => write!(
                f,
                "{} already exists; remove it first to unpack the bundle there",
                path.display()
            ),
            CachedInvalid { dir, cached, fresh } => write!(
                f,
                "cached bundle {} failed verification ({cached}) and no fresh copy could be \
                 installed: {fresh}",
                dir.display()
            ),
            Io { what, path, source } => write!(f, "{what} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for BundleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BundleError::Io { source, .. } => Some(source),
            BundleError::Fetch { last, .. } => Some(last.as_ref()),
            _ => None,
        }
    }
}
