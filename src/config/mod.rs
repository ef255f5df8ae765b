//! Configuration: Tyk's tyk.conf and classic API definition files, validated once.
//!
//! Everything is checked when it is loaded and turned into typed structs ([`GatewayConfig`],
//! [`ApiDefinition`]) that the rest of the gateway uses without checking again. A loaded
//! configuration is published as an immutable [`Snapshot`]; a reload builds a new one and swaps
//! it in, so in-flight requests finish on the snapshot they started with.
//!
//! - [`gateway`]: tyk.conf, including pipegate's own `"pipegate"` object and its extra
//!   `coprocess_options` keys. Relative paths in it are resolved against tyk.conf's directory.
//! - [`api`]: API definitions from `app_path`, routing data, upstream URL and path joining.
//! - [`error`]: [`ConfigError`], displayed as `<file>: <field path>: <reason>`.
//!
//! Unknown keys are accepted (real files carry hundreds) and listed once at debug level.

pub mod api;
pub mod error;
pub mod gateway;

mod fields;
mod go_json;

use std::path::Path;
use std::sync::Arc;

pub use api::{
    load_apis, parse_api_file, parse_middleware_section, ApiDefinition, HookDef, IdExtractor,
    IgnoredPath, MiddlewareSection, UpstreamTarget,
};
pub use error::ConfigError;
pub use gateway::{
    load_gateway, load_gateway_all, parse_gateway, AccessLogOptions, CoprocessOptions,
    GatewayConfig, Limits, LogFormat, MetricsOptions, UpstreamOptions, ACCESS_LOG_FIELDS,
    DEFAULT_SECRET,
};

/// One consistent, immutable view of the configuration: the gateway settings and the active
/// APIs, with the routing order computed once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Gateway-wide settings.
    pub gateway: Arc<GatewayConfig>,
    /// Active APIs in load order (file name order, then array order).
    pub apis: Vec<Arc<ApiDefinition>>,
    /// Indices into `apis`, longest listen_path first (ties in load order), so routing is one
    /// scan with no allocation.
    route_order: Vec<usize>,
}

impl Snapshot {
    /// Builds a snapshot and its routing order. The APIs are expected to come from
    /// [`load_apis`], which rejects duplicate api_ids and listen paths.
    pub fn new(gateway: Arc<GatewayConfig>, apis: Vec<Arc<ApiDefinition>>) -> Self {
        let mut route_order: Vec<usize> = (0..apis.len()).collect();
        // Stable sort: equal lengths keep load order.
        route_order.sort_by(|&a, &b| apis[b].listen_path.len().cmp(&apis[a].listen_path.len()));
        Snapshot {
            gateway,
            apis,
            route_order,
        }
    }

    /// The API serving `path` (the request path without query): the longest listen_path that is
    /// a plain string prefix of it, as Tyk's PathPrefix routing. A listen_path ending in '/' also
    /// matches the same path without that slash (`/demo` → the `/demo/` API), unless an API
    /// listens on `/demo` itself. Does not allocate.
    pub fn route(&self, path: &str) -> Option<&Arc<ApiDefinition>> {
        // An API matched only through the trailing-slash rule; its effective length is one less
        // than its listen_path, so a real prefix match of that length still beats it.
        let mut slash_less: Option<usize> = None;
        for &i in &self.route_order {
            let lp = self.apis[i].listen_path.as_str();
            if let Some(candidate) = slash_less {
                if lp.len() < self.apis[candidate].listen_path.len() - 1 {
                    break;
                }
            }
            if path.starts_with(lp) {
                return Some(&self.apis[i]);
            }
            if slash_less.is_none()
                && lp.len() > 1
                && lp.ends_with('/')
                && path.len() == lp.len() - 1
                && lp.starts_with(path)
            {
                slash_less = Some(i);
            }
        }
        slash_less.map(|i| &self.apis[i])
    }

    /// The API with this api_id, for the admin API and `tyk://` loops.
    pub fn api_by_id(&self, id: &str) -> Option<&Arc<ApiDefinition>> {
        self.apis.iter().find(|a| a.api_id == id)
    }
}

/// Loads tyk.conf and every API definition, returning all problems found in either.
pub fn load_snapshot(conf_path: &Path) -> Result<Snapshot, Vec<ConfigError>> {
    let gateway = load_gateway_all(conf_path)?;
    let apis = load_apis(&gateway)?;
    Ok(Snapshot::new(
        Arc::new(gateway),
        apis.into_iter().map(Arc::new).collect(),
    ))
}

/// Parses a configuration file's bytes as JSON, naming line and column on a syntax error.
/// A UTF-8 byte order mark (left by some Windows editors) is skipped.
fn parse_json(file: &Path, bytes: &[u8]) -> Result<serde_json::Value, ConfigError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    serde_json::from_slice(bytes).map_err(|e| ConfigError::json_syntax(file, &e))
}

#[cfg(test)]
mod tests;
