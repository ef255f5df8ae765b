//! The verification rules of Tyk's `gateway/coprocess_bundle.go` (TT-16554): a fresh download is
//! checked fully ([`VerifyMode::Deep`]); a bundle already on disk only as far as
//! [`VerifyMode::Partial`] says, so a restart does not re-hash every bundle, while a signed
//! bundle that was tampered with on disk is still caught.

use std::fmt;
use std::path::Path;

use super::crypto::{check_signature, hash_dir_files, load_public_key, FileDigest};
use super::{BundleError, BundleManifest};

/// How thoroughly an unpacked bundle is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// Fresh download: a configured key requires a signature; the checksum is always checked;
    /// the signature whenever a key is configured.
    Deep,
    /// Bundle already on disk: nothing when `skip_existing`
    /// (`skip_verify_existing_plugin_bundle`) or when the bundle is unsigned; otherwise the
    /// checksum, plus the signature when a key is configured.
    Partial {
        /// `skip_verify_existing_plugin_bundle`.
        skip_existing: bool,
    },
}

/// What happened to the signature during verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Checked against the public key and valid.
    Verified,
    /// The bundle carries no signature (allowed because no key is configured, or because a
    /// partial check does not look at unsigned bundles).
    Unsigned,
    /// The bundle is signed but no public key was given, so only the checksum was checked.
    NoKey,
    /// Verification was skipped altogether (`skip_verify_existing_plugin_bundle`).
    Skipped,
}

/// What a verification checked, for logs and the `bundle verify` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The mode used.
    pub mode: VerifyMode,
    /// The files hashed, in order; empty when nothing was hashed.
    pub files: Vec<FileDigest>,
    /// The checksum that was confirmed, or `None` when the checksum was not checked.
    pub checksum: Option<String>,
    /// The signature outcome.
    pub signature: SignatureCheck,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.checksum {
            None => writeln!(f, "checksum: not checked")?,
            Some(sum) => {
                writeln!(f, "files ({}):", self.files.len())?;
                for file in &self.files {
                    writeln!(f, "  {} ({} bytes)", file.name, file.size)?;
                }
                writeln!(f, "checksum: ok (md5 {sum})")?;
            }
        }
        let sig = match self.signature {
            SignatureCheck::Verified => "ok (RSA PKCS#1 v1.5 SHA-256, public key matches)",
            SignatureCheck::Unsigned => "unsigned",
            SignatureCheck::NoKey => "present but not checked (no public key given)",
            SignatureCheck::Skipped => "not checked (skip_verify_existing_plugin_bundle)",
        };
        write!(f, "signature: {sig}")
    }
}

/// Verifies the unpacked bundle in `dir` against its manifest.
///
/// `public_key` is the `public_key_path` of tyk.conf (`None` when unset); it is read on each call
/// so a rotated key takes effect at the next load.
pub fn verify_dir(
    dir: &Path,
    manifest: &BundleManifest,
    public_key: Option<&Path>,
    mode: VerifyMode,
) -> Result<VerifyReport, BundleError> {
    let unchecked = |signature| VerifyReport {
        mode,
        files: Vec::new(),
        checksum: None,
        signature,
    };
    let signed = !manifest.signature.is_empty();
    if let VerifyMode::Partial { skip_existing } = mode {
        if skip_existing {
            return Ok(unchecked(SignatureCheck::Skipped));
        }
        if !signed {
            return Ok(unchecked(SignatureCheck::Unsigned));
        }
    }
    let key = match public_key {
        Some(path) => Some((load_public_key(path)?, path)),
        None => None,
    };
    if key.is_some() && !signed {
        return Err(BundleError::NotSigned);
    }
    let digest = hash_dir_files(dir, &manifest.file_list)?;
    if digest.md5_hex != manifest.checksum {
        return Err(BundleError::ChecksumMismatch {
            expected: manifest.checksum.clone(),
            actual: digest.md5_hex,
        });
    }
    let signature = match (&key, signed) {
        (Some((key, path)), _) => {
            check_signature(key, path, &digest.sha256, &manifest.signature)?;
            SignatureCheck::Verified
        }
        (None, true) => SignatureCheck::NoKey,
        (None, false) => SignatureCheck::Unsigned,
    };
    Ok(VerifyReport {
        mode,
        files: digest.files,
        checksum: Some(digest.md5_hex),
        signature,
    })
}
