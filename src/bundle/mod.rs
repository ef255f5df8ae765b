//! Plugin bundles, compatible with Tyk's byte for byte: a zip built by `tyk bundle build` loads in
//! pipegate, and one built by `pipegate bundle build` loads in Tyk.
//!
//! A bundle is a zip holding plugin files plus `manifest.json` ([`BundleManifest`]): the hooks
//! (`custom_middleware`), the `file_list` covered by the checks, an MD5 `checksum` and an optional
//! RSA `signature` of the concatenated files. An API definition names a bundle in
//! `custom_middleware_bundle`; the gateway then downloads it from `bundle_base_url`, unpacks it to
//! `<middleware_path>/bundles/<md5 of the name>/` and uses the manifest's hooks instead of the
//! definition's own.
//!
//! - [`build`] / [`verify`] / [`cli_build`] / [`cli_verify`]: the `bundle` command.
//! - [`load_for_api`]: what the gateway calls per API (cache, [`fetch`], [`unpack`], checks).
//! - [`verify_dir`]: Tyk's verification rules ([`VerifyMode::Deep`] for downloads,
//!   [`VerifyMode::Partial`] for bundles already on disk).
//!
//! Neither checksum nor signature covers manifest.json itself (Tyk's design): whoever can change
//! a bundle in transit can change its hooks and driver. Use http only on trusted networks.

mod apply;
mod build;
mod crypto;
mod error;
mod fetch;
mod loader;
mod manifest;
mod unpack;
mod verify;

pub use apply::{apply_bundles, bundle_config, Applied};
pub use build::{build, cli_build, cli_verify, verify, BuildReport};
pub use crypto::{md5_hex, FileDigest};
pub use error::BundleError;
pub use fetch::{bundle_url, fetch, FetchOptions};
pub use loader::{bundle_dir, load_for_api, BundleConfig, LoadedBundle};
pub use manifest::{BundleManifest, MANIFEST_NAME};
pub use unpack::{unpack, Limits};
pub use verify::{verify_dir, SignatureCheck, VerifyMode, VerifyReport};
