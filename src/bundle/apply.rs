//! Applying bundles to freshly loaded API definitions (start-up and every reload).

use crate::config::{self, ApiDefinition, GatewayConfig};

use super::{load_for_api, BundleConfig, LoadedBundle};

/// A bundle that was loaded for an API, for telling the plugin process about it.
pub struct Applied {
    /// The API it serves.
    pub api_id: String,
    /// The loaded bundle.
    pub bundle: LoadedBundle,
}

/// The bundle settings of a gateway configuration.
pub fn bundle_config(gw: &GatewayConfig) -> BundleConfig {
    BundleConfig {
        middleware_path: gw.middleware_path.clone(),
        enable_bundle_downloader: gw.enable_bundle_downloader,
        bundle_base_url: gw.bundle_base_url.clone(),
        public_key_path: gw.public_key_path.clone(),
        skip_verify_existing: gw.skip_verify_existing_plugin_bundle,
        fetch: super::FetchOptions {
            insecure_skip_verify: gw.bundle_insecure_skip_verify,
            ..Default::default()
        },
        ..BundleConfig::default()
    }
}

/// Loads every API's `custom_middleware_bundle` (download, verify, unpack or reuse the cache) and
/// makes the manifest's hooks the API's hooks, as Tyk does. A bundle that fails keeps only its own
/// API out of service: the API is marked unavailable (its requests get a JSON 503) and the failure
/// is logged with the API, the bundle and the reason. Blocks on downloads: call it off the event
/// loop.
pub fn apply_bundles(gw: &GatewayConfig, apis: &mut [ApiDefinition]) -> Vec<Applied> {
    let cfg = bundle_config(gw);
    let mut applied = Vec::new();
    for api in apis.iter_mut() {
        let name = api.custom_middleware_bundle.trim().to_string();
        if name.is_empty() || api.custom_middleware_bundle_disabled {
            continue;
        }
        let loaded = match load_for_api(&name, &cfg) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(api = %api.api_id, bundle = %name, "bundle not loaded, API out of service: {e}");
                api.unavailable = Some(format!("bundle {name:?}: {e}"));
                continue;
            }
        };
        let manifest_path = loaded.dir.join(super::MANIFEST_NAME);
        match config::parse_middleware_section(
            &manifest_path,
            "custom_middleware",
            &loaded.manifest.custom_middleware,
        ) {
            Ok(section) => {
                api.set_custom_middleware(section);
                tracing::info!(
                    api = %api.api_id,
                    bundle = %name,
                    dir = %loaded.dir.display(),
                    cached = loaded.from_cache,
                    "bundle loaded"
                );
                applied.push(Applied {
                    api_id: api.api_id.clone(),
                    bundle: loaded,
                });
            }
            Err(errs) => {
                let why = errs
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::error!(api = %api.api_id, bundle = %name, "bundle manifest rejected, API out of service: {why}");
                // Leave nothing behind, so a fixed bundle under the same name is downloaded.
                if let Err(e) = std::fs::remove_dir_all(&loaded.dir) {
                    tracing::warn!(dir = %loaded.dir.display(), "cannot remove rejected bundle: {e}");
                }
                api.unavailable = Some(format!("bundle {name:?}: {why}"));
            }
        }
    }
    applied
}
