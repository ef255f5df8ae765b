//! Checksum, signature and key handling, byte-compatible with Tyk's bundler and goverify.
//!
//! Both digests cover the `file_list` files concatenated in order with no separator; they are
//! computed in one streaming pass (Tyk TT-16532: reading whole files into memory made verification
//! expensive). The signature is RSA PKCS#1 v1.5 over the SHA-256 digest, in standard base64 with
//! padding, which is what Go's `rsa.SignPKCS1v15(.., crypto.SHA256, ..)` and
//! `base64.StdEncoding` produce.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use md5::Digest as _;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use rsa::signature::SignatureEncoding;
use rsa::{PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use sha2::Digest as _;
use sha2::Sha256;

use super::manifest::safe_relative_path;
use super::BundleError;

/// One file covered by the checksum: its name as listed and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// The `file_list` entry.
    pub name: String,
    /// Bytes hashed.
    pub size: u64,
}

/// MD5 and SHA-256 of the concatenated `file_list` files.
#[derive(Debug, Clone)]
pub(crate) struct ContentDigest {
    /// Lowercase hex MD5: the manifest's `checksum`.
    pub md5_hex: String,
    /// SHA-256: what the signature signs.
    pub sha256: Vec<u8>,
    /// The files in hashing order.
    pub files: Vec<FileDigest>,
}

/// Why [`ContentHasher::add`] stopped: the input could not be read, or the sink not written.
#[derive(Debug)]
pub(crate) enum AddError {
    Read(io::Error),
    Sink(io::Error),
}

/// Feeds files into both hashes at once.
pub(crate) struct ContentHasher {
    md5: md5::Md5,
    sha256: Sha256,
    files: Vec<FileDigest>,
    buf: Vec<u8>,
}

impl ContentHasher {
    pub(crate) fn new() -> Self {
        ContentHasher {
            md5: md5::Md5::new(),
            sha256: Sha256::new(),
            files: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// Hashes everything `reader` yields as the next file, handing each chunk to `sink` too (the
    /// bundler writes the zip entry in the same pass).
    pub(crate) fn add(
        &mut self,
        name: &str,
        reader: &mut dyn Read,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u64, AddError> {
        let mut size = 0u64;
        loop {
            let n = match reader.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(AddError::Read(e)),
            };
            let chunk = &self.buf[..n];
            self.md5.update(chunk);
            self.sha256.update(chunk);
            sink(chunk).map_err(AddError::Sink)?;
            size += n as u64;
        }
        self.files.push(FileDigest {
            name: name.to_string(),
            size,
        });
        Ok(size)
    }

    pub(crate) fn finish(self) -> ContentDigest {
        ContentDigest {
            md5_hex: hex(&self.md5.finalize()),
            sha256: self.sha256.finalize().to_vec(),
            files: self.files,
        }
    }
}

/// Hashes the `file_list` files of an unpacked bundle in `dir`.
///
/// Names come from a manifest that may be hostile, so each must stay inside `dir`.
pub(crate) fn hash_dir_files(dir: &Path, names: &[String]) -> Result<ContentDigest, BundleError> {
    let mut hasher = ContentHasher::new();
    for name in names {
        let rel = safe_relative_path(name).map_err(|reason| BundleError::UnsafeEntry {
            name: name.clone(),
            reason: format!("file_list entry refused: {reason}"),
        })?;
        let path = dir.join(rel);
        let unreadable = |e: io::Error| BundleError::FileUnreadable {
            name: name.clone(),
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut file = File::open(&path).map_err(unreadable)?;
        hasher
            .add(name, &mut file, &mut |_| Ok(()))
            .map_err(|e| match e {
                AddError::Read(e) | AddError::Sink(e) => unreadable(e),
            })?;
    }
    Ok(hasher.finish())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Lowercase hex MD5 of `bytes` (bundle directory names, checksums of in-memory data).
pub fn md5_hex(bytes: &[u8]) -> String {
    hex(&md5::Md5::digest(bytes))
}

/// Go's `base64.StdEncoding`: padding required, non-zero trailing bits tolerated.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Signs the SHA-256 digest and returns the manifest's `signature` value.
pub(crate) fn sign(
    key: &SigningKey<Sha256>,
    key_path: &Path,
    sha256: &[u8],
) -> Result<String, BundleError> {
    let sig = key.sign_prehash(sha256).map_err(|e| BundleError::Key {
        path: key_path.to_path_buf(),
        reason: format!("signing failed: {e}"),
    })?;
    Ok(GO_STD_BASE64.encode(sig.to_bytes()))
}

/// Checks the manifest's `signature` against the SHA-256 digest.
pub(crate) fn check_signature(
    key: &VerifyingKey<Sha256>,
    key_path: &Path,
    sha256: &[u8],
    signature_b64: &str,
) -> Result<(), BundleError> {
    // Go's decoder skips CR and LF anywhere in the input.
    let cleaned: String = signature_b64
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .collect();
    let raw =
        GO_STD_BASE64
            .decode(cleaned.as_bytes())
            .map_err(|e| BundleError::SignatureEncoding {
                reason: e.to_string(),
            })?;
    let bad = || BundleError::BadSignature {
        key: key_path.to_path_buf(),
    };
    let sig = Signature::try_from(raw.as_slice()).map_err(|_| bad())?;
    key.verify_prehash(sha256, &sig).map_err(|_| bad())
}

/// The first PEM block in `text`: its label and the block text itself.
///
/// Like Go's `pem.Decode`, text before the block is skipped; unlike it, a missing END line is
/// reported rather than treated as "no key found".
fn first_pem_block(text: &str) -> Result<(&str, &str), String> {
    const BEGIN: &str = "-----BEGIN ";
    let start = text
        .find(BEGIN)
        .ok_or("no PEM block found (expected a -----BEGIN ...----- line)")?;
    let after = &text[start + BEGIN.len()..];
    let label_len = after
        .find("-----")
        .ok_or("malformed PEM BEGIN line (no closing -----)")?;
    let label = &after[..label_len];
    let end_marker = format!("-----END {label}-----");
    let end = text[start..]
        .find(&end_marker)
        .ok_or_else(|| format!("PEM block {label:?} has no {end_marker} line"))?;
    Ok((label, &text[start..start + end + end_marker.len()]))
}

fn read_key_file(path: &Path) -> Result<String, BundleError> {
    std::fs::read_to_string(path).map_err(|e| BundleError::Key {
        path: path.to_path_buf(),
        reason: format!("cannot read the key file: {e}"),
    })
}

/// Loads an RSA private key for signing: PEM `RSA PRIVATE KEY` (PKCS#1) or `PRIVATE KEY`
/// (PKCS#8 holding an RSA key), as goverify accepts.
pub(crate) fn load_private_key(path: &Path) -> Result<SigningKey<Sha256>, BundleError> {
    let text = read_key_file(path)?;
    let key_err = |reason: String| BundleError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let (label, block) = first_pem_block(&text).map_err(|r| key_err(r.to_string()))?;
    let key = match label {
        "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_pem(block)
            .map_err(|e| key_err(format!("cannot parse the PKCS#1 RSA private key: {e}")))?,
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_pem(block).map_err(|e| {
            key_err(format!(
                "cannot parse the PKCS#8 private key as RSA: {e} (only RSA keys can sign bundles)"
            ))
        })?,
        other => {
            return Err(key_err(format!(
                "unsupported key type {other:?}: use an unencrypted RSA private key in PEM \
                 (\"RSA PRIVATE KEY\" or \"PRIVATE KEY\"), e.g. from `openssl genrsa -out key.pem \
                 2048`"
            )))
        }
    };
    Ok(SigningKey::<Sha256>::new(key))
}

/// Loads an RSA public key for verification: PEM `PUBLIC KEY` (PKIX) or `RSA PUBLIC KEY`
/// (PKCS#1), as goverify accepts.
pub(crate) fn load_public_key(path: &Path) -> Result<VerifyingKey<Sha256>, BundleError> {
    let text = read_key_file(path)?;
    let key_err = |reason: String| BundleError::Key {
        path: path.to_path_buf(),
        reason,
    };
    let (label, block) = first_pem_block(&text).map_err(|r| key_err(r.to_string()))?;
    let key = match label {
        "PUBLIC KEY" => RsaPublicKey::from_public_key_pem(block).map_err(|e| {
            key_err(format!(
                "cannot parse the PKIX public key as RSA: {e} (only RSA keys can verify bundles)"
            ))
        })?,
        "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_pem(block)
            .map_err(|e| key_err(format!("cannot parse the PKCS#1 RSA public key: {e}")))?,
        other => {
            return Err(key_err(format!(
                "unsupported key type {other:?}: use an RSA public key in PEM (\"PUBLIC KEY\" or \
                 \"RSA PUBLIC KEY\"), e.g. from `openssl rsa -in key.pem -pubout -out pub.pem`"
            )))
        }
    };
    Ok(VerifyingKey::<Sha256>::new(key))
}
