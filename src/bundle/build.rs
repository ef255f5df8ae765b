//! `pipegate bundle build` / `bundle verify`: the equivalent of Tyk's `tyk bundle build`
//! (`cli/bundler/bundler.go`), producing zips Tyk loads and loading zips Tyk produced.
//!
//! One deliberate difference: `file_list` entries are read relative to the **manifest's
//! directory**, while Tyk reads them relative to the current working directory. Both agree in the
//! documented workflow (run the tool in the plugin directory with the default `manifest.json`);
//! resolving against the manifest makes `-m some/dir/manifest.json` work from anywhere.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::crypto::{load_private_key, sign, AddError, ContentHasher, FileDigest};
use super::manifest::{safe_relative_path, MANIFEST_NAME};
use super::unpack::{Limits, Staging};
use super::verify::{verify_dir, VerifyMode, VerifyReport};
use super::{BundleError, BundleManifest};

/// What [`build`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildReport {
    /// The zip written.
    pub output: PathBuf,
    /// The `file_list` files, in order, with their sizes.
    pub files: Vec<FileDigest>,
    /// The checksum put into manifest.json.
    pub checksum: String,
    /// Whether the bundle was signed.
    pub signed: bool,
    /// The manifest as written into the zip.
    pub manifest: BundleManifest,
}

/// Builds a bundle zip from a manifest, like `tyk bundle build`.
///
/// Checks, in Tyk's order: the manifest is readable and valid JSON; every `file_list` entry
/// exists (read relative to the manifest's directory); at least one hook (pre, post,
/// post_key_auth, response, or a named auth_check/traffic_logs); a driver. On top of Tyk, the
/// `custom_middleware` section must pass pipegate's own API loader, and `file_list` entries must be
/// relative, without `..`, unique, and not `manifest.json` (Tyk would build such bundles, but its
/// own loader refuses or mis-verifies them).
///
/// The zip holds one deflated entry per `file_list` item, named exactly as listed, in order, then
/// `manifest.json` with `checksum` and `signature` filled in. It is written to a temporary file
/// beside `output` and renamed into place, so a failed build leaves no partial zip.
pub fn build(
    manifest_path: &Path,
    key: Option<&Path>,
    output: &Path,
) -> Result<BuildReport, BundleError> {
    let bytes = fs::read(manifest_path).map_err(|e| BundleError::ManifestLoad {
        path: manifest_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (mut manifest, _) = BundleManifest::parse(&bytes, manifest_path)?;
    let base_dir = match manifest_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let sources = check_file_list(&manifest.file_list, &base_dir)?;
    if manifest.hook_count() == 0 {
        return Err(BundleError::NoHooks {
            path: manifest_path.to_path_buf(),
        });
    }
    if manifest.driver().is_empty() {
        return Err(BundleError::NoDriver {
            path: manifest_path.to_path_buf(),
        });
    }
    crate::config::parse_middleware_section(
        manifest_path,
        "custom_middleware",
        &manifest.custom_middleware,
    )
    .map_err(|errors| BundleError::InvalidMiddleware { errors })?;
    let signer = key.map(load_private_key).transpose()?;

    let tmp = temp_output_path(output);
    let result = (|| {
        let file = File::create(&tmp)
            .map_err(|e| BundleError::io("cannot create the bundle file", &tmp, e))?;
        let mut zip = ZipWriter::new(file);
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        let mut hasher = ContentHasher::new();
        for (name, source) in manifest.file_list.iter().zip(&sources) {
            let mut input = File::open(source).map_err(|e| BundleError::FileUnreadable {
                name: name.clone(),
                path: source.clone(),
                reason: e.to_string(),
            })?;
            let large = input.metadata().is_ok_and(|m| m.len() >= 0xFFFF_FFFF);
            zip.start_file(name.as_str(), options.large_file(large))
                .map_err(zip_err)?;
            hasher
                .add(name, &mut input, &mut |chunk| zip.write_all(chunk))
                .map_err(|e| match e {
                    AddError::Read(e) => BundleError::FileUnreadable {
                        name: name.clone(),
                        path: source.clone(),
                        reason: e.to_string(),
                    },
                    AddError::Sink(e) => BundleError::io("cannot write", &tmp, e),
                })?;
        }
        let digest = hasher.finish();
        manifest.checksum = digest.md5_hex.clone();
        manifest.signature = match (&signer, key) {
            (Some(k), Some(path)) => sign(k, path, &digest.sha256)?,
            _ => String::new(),
        };
        zip.start_file(MANIFEST_NAME, options).map_err(zip_err)?;
        zip.write_all(manifest.to_json().as_bytes())
            .map_err(|e| BundleError::io("cannot write", &tmp, e))?;
        let file = zip.finish().map_err(zip_err)?;
        file.sync_all()
            .map_err(|e| BundleError::io("cannot flush", &tmp, e))?;
        fs::rename(&tmp, output)
            .map_err(|e| BundleError::io("cannot move the bundle into place at", output, e))?;
        Ok(digest)
    })();
    let digest = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    Ok(BuildReport {
        output: output.to_path_buf(),
        files: digest.files,
        checksum: digest.md5_hex,
        signed: signer.is_some(),
        manifest,
    })
}

/// Validates the `file_list` entries and resolves them against `base_dir`.
fn check_file_list(names: &[String], base_dir: &Path) -> Result<Vec<PathBuf>, BundleError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let invalid = |reason: String| BundleError::InvalidFileList {
            name: name.clone(),
            reason,
        };
        let rel = safe_relative_path(name).map_err(|r| {
            invalid(format!(
                "{r}; list files by their path relative to the manifest's directory"
            ))
        })?;
        if rel == Path::new(MANIFEST_NAME) {
            return Err(invalid(
                "manifest.json is added by the bundler itself; remove it from file_list".into(),
            ));
        }
        if !seen.insert(rel.clone()) {
            return Err(invalid("it is listed twice".into()));
        }
        let path = base_dir.join(&rel);
        match fs::metadata(&path) {
            Err(_) => {
                return Err(BundleError::NonexistentFile {
                    name: name.clone(),
                    path,
                })
            }
            Ok(m) if !m.is_file() => {
                return Err(invalid(format!("{} is not a regular file", path.display())))
            }
            Ok(_) => out.push(path),
        }
    }
    Ok(out)
}

fn temp_output_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle.zip".into());
    output.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

fn zip_err(e: zip::result::ZipError) -> BundleError {
    BundleError::Zip {
        reason: e.to_string(),
    }
}

/// Verifies a bundle zip the way the gateway verifies a fresh download ([`VerifyMode::Deep`]):
/// it is unpacked with the default [`Limits`] into a temporary directory, `manifest.json` must be
/// present and valid, the checksum must match, and with `public_key` the signature must be present
/// and valid. Without a key a signature is reported as present but unchecked.
pub fn verify(bundle_zip: &Path, public_key: Option<&Path>) -> Result<VerifyReport, BundleError> {
    let bytes =
        fs::read(bundle_zip).map_err(|e| BundleError::io("cannot read bundle", bundle_zip, e))?;
    let scratch = std::env::temp_dir().join("pipegate-bundle-verify");
    let staging = Staging::extract(&bytes, &scratch, &Limits::default())?;
    let manifest_path = staging.path().join(MANIFEST_NAME);
    let manifest_bytes = fs::read(&manifest_path).map_err(|e| BundleError::ManifestLoad {
        path: bundle_zip.join(MANIFEST_NAME),
        reason: if e.kind() == io::ErrorKind::NotFound {
            "the bundle has no manifest.json".into()
        } else {
            e.to_string()
        },
    })?;
    let (manifest, _) = BundleManifest::parse(&manifest_bytes, &bundle_zip.join(MANIFEST_NAME))?;
    verify_dir(staging.path(), &manifest, public_key, VerifyMode::Deep)
}

/// `pipegate bundle build [-m MANIFEST] [-k KEY | -y] [-o OUTPUT]`; returns the text to print.
///
/// Tyk prompts on stdin when neither `-k` nor `-y` is given; pipegate never prompts (it runs in
/// CI and containers without a terminal), so that combination is refused with a message saying
/// which flag to add. With both `-k` and `-y` the bundle is signed.
pub fn cli_build(
    manifest: &Path,
    key: Option<&Path>,
    skip_signing: bool,
    output: &Path,
) -> Result<String, BundleError> {
    if key.is_none() && !skip_signing {
        return Err(BundleError::SigningChoiceRequired);
    }
    let report = build(manifest, key, output)?;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "wrote {} ({} file(s) + manifest.json)",
        report.output.display(),
        report.files.len()
    );
    for f in &report.files {
        let _ = writeln!(text, "  {} ({} bytes)", f.name, f.size);
    }
    let _ = writeln!(text, "checksum: {}", report.checksum);
    match key {
        Some(k) if report.signed => {
            let _ = write!(
                text,
                "signature: RSA PKCS#1 v1.5 SHA-256 with {}",
                k.display()
            );
            if skip_signing {
                let _ = write!(text, " (-y ignored because -k was given)");
            }
        }
        _ => {
            let _ = write!(text, "signature: none (unsigned bundle)");
        }
    }
    Ok(text)
}

/// `pipegate bundle verify [-k PUBLIC_KEY] BUNDLE.zip`; returns the text to print.
pub fn cli_verify(key: Option<&Path>, bundle: &Path) -> Result<String, BundleError> {
    let report = verify(bundle, key)?;
    Ok(format!("{}: ok\n{report}", bundle.display()))
}
