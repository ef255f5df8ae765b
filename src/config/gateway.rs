//! tyk.conf: the gateway-wide settings.
//!
//! A real tyk.conf carries hundreds of keys, so keys pipegate does not use are accepted and listed
//! once at debug level. pipegate's own settings live in a top-level `"pipegate"` object (unknown
//! keys there are errors, because they can only be typos) and in extra keys of
//! `coprocess_options` (`pipe_command`, `hook_timeout_ms`, ...).
//!
//! Relative paths (`app_path`, `middleware_path`, `public_key_path`,
//! `coprocess_options.pipe_workdir`) are resolved against the directory holding tyk.conf, not the
//! working directory, so the same file works wherever the gateway is started from.
//!
//! Where a Tyk key and a pipegate key set the same thing:
//! - body size: `http_server_options.max_request_body_size` wins when > 0, else
//!   `pipegate.max_request_body_bytes` (default 100 MiB);
//! - client body timeout: `pipegate.client_body_timeout_ms` when set, else
//!   `http_server_options.read_timeout` (seconds) when > 0, else 30 s;
//! - idle upstream connections: `pipegate.upstream_max_idle_per_target` when set, else
//!   `max_idle_connections_per_host` (0 or absent = 100).
//!
//! Tyk's float-seconds settings (`proxy_default_timeout`, `http_server_options.*_timeout`) use
//! their default when absent or 0.
//!
//! Differences from Tyk worth knowing:
//! - `http_server_options.min_version` 769/770 (TLS 1.0/1.1) is refused: rustls implements TLS 1.2
//!   and 1.3 only. Certificates come from `http_server_options.certificates` (PEM files); Tyk's
//!   certificate store (`ssl_certificates` IDs) is not supported.
//! - Keys are matched exactly; Go's decoder also accepts other letter cases.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::error::ConfigError;
use super::fields::{describe, Issues, Obj};
use crate::tls::server::CertificateEntry;
use crate::tls::MinVersion;

/// Tyk's default gateway API secret, used when tyk.conf sets none.
pub const DEFAULT_SECRET: &str = "352d20ee67be67f6340b4c0605b044b7";

const MIB: u64 = 1024 * 1024;

/// Everything the gateway needs from tyk.conf, validated and with defaults applied.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The tyk.conf file this was loaded from (reload reads it again).
    pub conf_path: PathBuf,
    /// Address to bind; Tyk's "" (all interfaces) is stored as "0.0.0.0". IPv6 literals are stored
    /// without brackets.
    pub listen_address: String,
    /// Port to bind (`listen_port`, default 8080).
    pub listen_port: u16,
    /// Value of the `X-Tyk-Authorization` header that opens the `/tyk/` admin API.
    pub secret: String,
    /// Directory of API definition files (`*.json`), resolved against tyk.conf's directory.
    pub app_path: PathBuf,
    /// Directory for plugin bundles (`<middleware_path>/bundles/<md5>/`), resolved likewise.
    pub middleware_path: PathBuf,
    /// Whether `custom_middleware_bundle` is fetched from `bundle_base_url`.
    pub enable_bundle_downloader: bool,
    /// Base URL bundles are fetched from (http, https or file).
    pub bundle_base_url: String,
    /// TLS termination (`http_server_options.use_ssl`): certificates, SNI and versions, loaded
    /// and checked with the rest of the file. `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Tyk's `proxy_ssl_insecure_skip_verify`: https upstreams' certificates are not verified.
    pub proxy_ssl_insecure_skip_verify: bool,
    /// Tyk's `proxy_ssl_min_version` for https upstreams (an API's
    /// `proxy.transport.ssl_min_version` overrides it).
    pub proxy_ssl_min_version: MinVersion,
    /// Skip TLS certificate checks when fetching bundles over https.
    pub bundle_insecure_skip_verify: bool,
    /// Tyk's `skip_verify_existing_plugin_bundle`: trust bundles already on disk without re-checking.
    pub skip_verify_existing_plugin_bundle: bool,
    /// PEM public key bundles must be signed with; `None` when unset or empty.
    pub public_key_path: Option<PathBuf>,
    /// Leave out the `X-Generator: tyk.io` style response header.
    pub hide_generator_header: bool,
    /// Close client connections after every response (no keep-alive).
    pub close_connections: bool,
    /// Plugin process settings.
    pub coprocess: CoprocessOptions,
    /// Limits on client connections and requests.
    pub limits: Limits,
    /// Upstream connection settings.
    pub upstream: UpstreamOptions,
    /// Number of worker threads, resolved (`pipegate.workers` 0 = one per CPU); always >= 1.
    pub workers: usize,
    /// How long in-flight requests may run after a stop signal.
    pub shutdown_grace: Duration,
    /// Log line format: tyk.conf `log_format` (Tyk's key), else `pipegate.log_format`; the
    /// environment (`TYK_GW_LOGFORMAT`, `TYK_LOGFORMAT`) overrides both at start.
    pub log_format: LogFormat,
    /// Tyk's `log_level` (`debug`, `info`, `warn`, `error`); `None` when unset or empty. `RUST_LOG`
    /// and `TYK_GW_LOGLEVEL` / `TYK_LOGLEVEL` override it at start.
    pub log_level: Option<String>,
    /// The Prometheus endpoint (`pipegate.metrics`).
    pub metrics: MetricsOptions,
    /// Tyk's `access_logs`: one info line per request, target `access_log`.
    pub access_log: AccessLogOptions,
    /// The `storage` object as written (Redis settings); `Value::Null` when absent. Typed by the
    /// store module, which knows what it supports.
    pub storage: Value,
}

/// Limits applied to client connections, so one client cannot hold resources forever.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body accepted; larger gets 413.
    pub max_request_body_bytes: u64,
    /// Time a client has to send the complete request head; after it, 408.
    pub client_header_timeout: Duration,
    /// Longest pause allowed while a client sends the body.
    pub client_body_timeout: Duration,
    /// How long an idle keep-alive connection is kept open.
    pub keepalive_timeout: Duration,
    /// Time allowed to write a response to the client (`http_server_options.write_timeout`).
    pub write_timeout: Duration,
    /// Open client connections per worker above which new ones are refused.
    pub max_connections_per_worker: usize,
}

/// Settings for connections to upstream targets.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Time allowed to establish an upstream TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed waiting for upstream response data (`proxy_default_timeout`, default 30 s).
    pub read_timeout: Duration,
    /// Idle keep-alive connections kept per upstream target (0 = none kept).
    pub max_idle_per_target: usize,
}

/// The plugin process (coprocess) settings from `coprocess_options`.
#[derive(Debug, Clone)]
pub struct CoprocessOptions {
    /// Tyk's master switch: when false, hooks are not run at all.
    pub enable_coprocess: bool,
    /// Tyk's `coprocess_grpc_server` (`tcp://host:port`, `unix:///path`, ...); `None` when empty.
    pub grpc_server: Option<String>,
    /// Largest gRPC message accepted from the plugin server; 0 = gRPC's default (4 MiB).
    pub grpc_recv_max_size: usize,
    /// Largest gRPC message sent to the plugin server; 0 = unlimited.
    pub grpc_send_max_size: usize,
    /// `:authority` sent on gRPC calls; `None` = derived from the target.
    pub grpc_authority: Option<String>,
    /// Tyk's `grpc_round_robin_load_balancing` (needs a `dns:///` target).
    pub grpc_round_robin_load_balancing: bool,
    /// argv of the plugin child spoken to over stdin/stdout; empty = no pipe child.
    pub pipe_command: Vec<String>,
    /// Extra environment for the child, sorted by name.
    pub pipe_env: Vec<(String, String)>,
    /// Working directory of the child, resolved against tyk.conf's directory.
    pub pipe_workdir: Option<PathBuf>,
    /// Default time a hook may take before the request fails (or passes, with fail_open).
    pub hook_timeout: Duration,
    /// Default policy when a hook times out or the plugin is down: pass the request on (true) or
    /// answer with an error (false, Tyk's behaviour).
    pub fail_open: bool,
    /// Largest frame accepted from or sent to the child.
    pub max_frame_bytes: usize,
    /// Bodies at least this large are handed over as a memory-mapped file; 0 = never.
    pub mmap_threshold_bytes: usize,
    /// Whether request/response bodies are sent to hooks at all.
    pub send_body: bool,
    /// Upper bound of the restart backoff of a crashing child.
    pub restart_backoff_max: Duration,
    /// Use the gRPC server when the pipe child is unavailable.
    pub enable_grpc_fallback: bool,
    /// pipegate: compress gRPC messages to the plugin server (`grpc_compression`: "gzip" or
    /// "zstd"; off by default because Tyk's servers may not accept it).
    pub grpc_compression: Option<String>,
}

/// Where `/metrics` is served (`pipegate.metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsOptions {
    /// `enabled` (default true): serve the endpoint at all. Counting never stops (it is cheap).
    pub enabled: bool,
    /// `path` (default `/metrics`).
    pub path: String,
    /// `listen_address` (`host:port`): serve on this separate listener instead of the main one.
    /// Read at start only; changing it takes a restart.
    pub listen_address: Option<std::net::SocketAddr>,
}

/// Fields an access log line can carry (Tyk's `access_logs.template` names plus pipegate's own).
pub const ACCESS_LOG_FIELDS: &[&str] = &[
    "api_id",
    "api_name",
    "method",
    "path",
    "status",
    "latency_total",
    "upstream_latency",
    "hook_latency",
    "bytes_in",
    "bytes_out",
    "client_ip",
    "remote_addr",
    "host",
    "protocol",
    "user_agent",
    "upstream_addr",
];

/// Tyk template fields pipegate accepts but does not log (a warning says so once).
const ACCESS_LOG_NOT_LOGGED: &[&str] = &["api_key"];

/// Tyk's `access_logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogOptions {
    /// `enabled` (default false). Off costs one branch per request.
    pub enabled: bool,
    /// `template`: bit `i` set = `ACCESS_LOG_FIELDS[i]` is logged; all fields when no template.
    pub fields: u32,
}

impl AccessLogOptions {
    /// Whether `field` (a name from [`ACCESS_LOG_FIELDS`]) is logged.
    pub fn has(&self, field: &str) -> bool {
        ACCESS_LOG_FIELDS
            .iter()
            .position(|f| *f == field)
            .is_some_and(|i| self.fields & (1 << i) != 0)
    }
}

/// Log line format (tyk.conf `log_format`, or `pipegate.log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (default).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl GatewayConfig {
    /// The socket addresses to bind, resolving `listen_address` if it is a host name.
    pub fn listen_socket_addrs(&self) -> std::io::Result<Vec<std::net::SocketAddr>> {
        use std::net::ToSocketAddrs;
        Ok((self.listen_address.as_str(), self.listen_port)
            .to_socket_addrs()?
            .collect())
    }
}

/// Top-level tyk.conf keys pipegate reads (or accepts on purpose, like `template_path`).
const KNOWN_TOP: &[&str] = &[
    "listen_address",
    "listen_port",
    "secret",
    "app_path",
    "middleware_path",
    "template_path",
    "enable_bundle_downloader",
    "bundle_base_url",
    "bundle_insecure_skip_verify",
    "skip_verify_existing_plugin_bundle",
    "public_key_path",
    "hide_generator_header",
    "close_connections",
    "proxy_default_timeout",
    "max_idle_connections_per_host",
    "proxy_ssl_insecure_skip_verify",
    "proxy_ssl_min_version",
    "http_server_options",
    "storage",
    "coprocess_options",
    "log_level",
    "log_format",
    "access_logs",
    "pipegate",
];

const KNOWN_HTTP_SERVER_OPTIONS: &[&str] = &[
    "read_timeout",
    "write_timeout",
    "max_request_body_size",
    "use_ssl",
    "certificates",
    "min_version",
];

const KNOWN_COPROCESS: &[&str] = &[
    "enable_coprocess",
    "coprocess_grpc_server",
    "grpc_recv_max_size",
    "grpc_send_max_size",
    "grpc_authority",
    "grpc_round_robin_load_balancing",
    "python_path_prefix",
    "python_version",
    "pipe_command",
    "pipe_env",
    "pipe_workdir",
    "hook_timeout_ms",
    "fail_open",
    "max_frame_bytes",
    "mmap_threshold_bytes",
    "send_body",
    "restart_backoff_max_ms",
    "enable_grpc_fallback",
    "grpc_compression",
];

const KNOWN_PIPEGATE: &[&str] = &[
    "workers",
    "max_header_bytes",
    "max_request_body_bytes",
    "client_header_timeout_ms",
    "client_body_timeout_ms",
    "keepalive_timeout_ms",
    "upstream_connect_timeout_ms",
    "upstream_max_idle_per_target",
    "shutdown_grace_ms",
    "max_connections_per_worker",
    "log_format",
    "metrics",
];

const KNOWN_METRICS: &[&str] = &["enabled", "path", "listen_address"];
const KNOWN_ACCESS_LOGS: &[&str] = &["enabled", "template"];

/// Loads and validates tyk.conf, returning the first problem found.
///
/// Use [`load_gateway_all`] to get every problem at once (as `pipegate check` does).
pub fn load_gateway(conf_path: &Path) -> Result<GatewayConfig, ConfigError> {
    load_gateway_all(conf_path).map_err(|mut errs| {
        if errs.is_empty() {
            ConfigError::new(conf_path, "", "invalid configuration")
        } else {
            errs.swap_remove(0)
        }
    })
}

/// Loads and validates tyk.conf, returning every problem found in it.
pub fn load_gateway_all(conf_path: &Path) -> Result<GatewayConfig, Vec<ConfigError>> {
    let bytes =
        std::fs::read(conf_path).map_err(|e| vec![ConfigError::unreadable(conf_path, &e)])?;
    parse_gateway(conf_path, &bytes)
}

/// Validates tyk.conf from bytes already read; `conf_path` names the file in errors and is the
/// base for its relative paths. Split from [`load_gateway_all`] so the parser can be fuzzed
/// without a file system round trip.
pub fn parse_gateway(conf_path: &Path, bytes: &[u8]) -> Result<GatewayConfig, Vec<ConfigError>> {
    let root: Value = super::parse_json(conf_path, bytes).map_err(|e| vec![e])?;
    let mut issues = Issues::default();
    let cfg = gateway_from_value(conf_path, &root, &mut issues);
    match cfg {
        Some(cfg) if issues.is_empty() => Ok(cfg),
        _ => Err(issues
            .list
            .into_iter()
            .map(|i| ConfigError::new(conf_path, i.field, i.reason))
            .collect()),
    }
}

/// The directory relative paths in tyk.conf are resolved against.
fn conf_dir(conf_path: &Path) -> PathBuf {
    match conf_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `p` if absolute, else `base/p`.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn gateway_from_value(
    conf_path: &Path,
    root: &Value,
    issues: &mut Issues,
) -> Option<GatewayConfig> {
    let top = match root {
        Value::Object(_) => Obj::from_value(root, "").ok()?,
        other => {
            issues.push(
                "",
                format!(
                    "expected a JSON object at the top level, found {}",
                    describe(other)
                ),
            );
            return None;
        }
    };
    let base = conf_dir(conf_path);
    let http = issues.take(
        top.obj("http_server_options"),
        Obj::empty("http_server_options"),
    );
    let cp = issues.take(
        top.obj("coprocess_options"),
        Obj::empty("coprocess_options"),
    );
    let pg = issues.take(top.obj("pipegate"), Obj::empty("pipegate"));

    let mut unknown = top.unknown_keys(KNOWN_TOP);
    unknown.extend(http.unknown_keys(KNOWN_HTTP_SERVER_OPTIONS));
    if !unknown.is_empty() {
        tracing::debug!(
            file = %conf_path.display(),
            keys = %unknown.join(", "),
            "tyk.conf keys that pipegate accepts but does not use"
        );
    }
    let cp_unknown = cp.unknown_keys(KNOWN_COPROCESS);
    if !cp_unknown.is_empty() {
        tracing::warn!(
            file = %conf_path.display(),
            keys = %cp_unknown.join(", "),
            "unknown coprocess_options keys are ignored; check them for typos"
        );
    }
    for key in pg.unknown_keys(KNOWN_PIPEGATE) {
        issues.push(
            key,
            format!(
                "unknown pipegate setting; known ones are {}",
                KNOWN_PIPEGATE.join(", ")
            ),
        );
    }

    // Listening.
    let listen_address = issues.take(top.string("listen_address", ""), String::new());
    let listen_address = match normalise_listen_address(&listen_address) {
        Ok(a) => a,
        Err(reason) => {
            issues.push("listen_address", reason);
            String::new()
        }
    };
    let listen_port = issues.take(top.u64("listen_port", 8080), 8080);
    let listen_port = match u16::try_from(listen_port) {
        // 0 asks the OS for a free port (the bound address is logged); handy for tests.
        Ok(p) => p,
        _ => {
            issues.push(
                "listen_port",
                format!("{listen_port} is not a TCP port; use a number from 0 to 65535"),
            );
            8080
        }
    };
    let secret = issues.take(top.string("secret", DEFAULT_SECRET), String::new());
    if secret.is_empty() {
        tracing::warn!(
            file = %conf_path.display(),
            "secret is empty; set one to protect the /tyk/ admin API"
        );
    }

    // Paths.
    let app_path = issues.take(top.string("app_path", "apps/"), String::new());
    if app_path.is_empty() {
        issues.push(
            "app_path",
            "is empty; set the directory holding API definition files",
        );
    }
    let middleware_path = issues.take(top.string("middleware_path", "middleware"), String::new());
    let _ = issues.take(top.str("template_path"), None);
    let public_key_path = issues.take(top.string("public_key_path", ""), String::new());

    // Bundles and response behaviour.
    let enable_bundle_downloader = issues.take(top.bool("enable_bundle_downloader", false), false);
    let bundle_base_url = issues.take(top.string("bundle_base_url", ""), String::new());
    let bundle_insecure_skip_verify =
        issues.take(top.bool("bundle_insecure_skip_verify", false), false);
    let skip_verify_existing_plugin_bundle =
        issues.take(top.bool("skip_verify_existing_plugin_bundle", false), false);
    let hide_generator_header = issues.take(top.bool("hide_generator_header", false), false);
    let close_connections = issues.take(top.bool("close_connections", false), false);

    // Upstream.
    let proxy_timeout = issues.take(top.opt_f64("proxy_default_timeout"), None);
    let read_timeout = seconds_or(proxy_timeout, 30.0, "proxy_default_timeout", issues);
    let max_idle_host = issues.take(top.u64("max_idle_connections_per_host", 100), 100);
    let max_idle_host = if max_idle_host == 0 {
        100
    } else {
        max_idle_host
    };
    let connect_ms = positive_ms(&pg, "upstream_connect_timeout_ms", 2000, issues);
    let max_idle_per_target = issues.take(
        pg.u64("upstream_max_idle_per_target", max_idle_host),
        max_idle_host,
    );

    // http_server_options.
    let http_read = issues.take(http.opt_f64("read_timeout"), None);
    let http_write = issues.take(http.opt_f64("write_timeout"), None);
    let write_timeout = seconds_or(
        http_write,
        30.0,
        "http_server_options.write_timeout",
        issues,
    );
    let tyk_body_max = issues.take(http.u64("max_request_body_size", 0), 0);
    let tls = server_tls(&http, &base, issues);
    let proxy_ssl_insecure_skip_verify =
        issues.take(top.bool("proxy_ssl_insecure_skip_verify", false), false);
    let proxy_ssl_min_version =
        tls_version(&top, "proxy_ssl_min_version", true, issues).unwrap_or_default();

    // pipegate's own limits.
    let max_header_bytes = issues.take(pg.u64("max_header_bytes", 32768), 32768);
    if max_header_bytes < 1024 {
        issues.push(
            "pipegate.max_header_bytes",
            format!("{max_header_bytes} is too small for real request heads; use at least 1024"),
        );
    }
    let pg_body_max = issues.take(pg.opt_u64("max_request_body_bytes"), None);
    let max_request_body_bytes = if tyk_body_max > 0 {
        if pg_body_max.is_some_and(|p| p != tyk_body_max) {
            tracing::warn!(
                file = %conf_path.display(),
                "http_server_options.max_request_body_size overrides pipegate.max_request_body_bytes"
            );
        }
        tyk_body_max
    } else {
        pg_body_max.unwrap_or(100 * MIB)
    };
    if max_request_body_bytes == 0 {
        issues.push(
            "pipegate.max_request_body_bytes",
            "must be greater than 0; leave it out for the 100 MiB default",
        );
    }
    let client_header_ms = positive_ms(&pg, "client_header_timeout_ms", 10_000, issues);
    // An explicit pipegate value wins; otherwise Tyk's read_timeout (seconds) when set.
    let client_body_timeout = if pg.get("client_body_timeout_ms").is_some() {
        Duration::from_millis(positive_ms(&pg, "client_body_timeout_ms", 30_000, issues))
    } else {
        seconds_or(http_read, 30.0, "http_server_options.read_timeout", issues)
    };
    let keepalive_ms = positive_ms(&pg, "keepalive_timeout_ms", 60_000, issues);
    let shutdown_ms = issues.take(pg.u64("shutdown_grace_ms", 10_000), 10_000);
    let max_conns = issues.take(pg.u64("max_connections_per_worker", 65_536), 65_536);
    if max_conns == 0 {
        issues.push(
            "pipegate.max_connections_per_worker",
            "must be greater than 0",
        );
    }
    let workers = issues.take(pg.u64("workers", 0), 0);
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        usize::try_from(workers).unwrap_or(1)
    };
    // Tyk's key wins over pipegate's older one; both take "text" or "json".
    let log_format = match top.get("log_format") {
        Some(v) if !v.is_null() => log_format_of(
            issues.take(top.string("log_format", "text"), "text".to_string()),
            "log_format",
            issues,
        ),
        _ => log_format_of(
            issues.take(pg.string("log_format", "text"), "text".to_string()),
            "pipegate.log_format",
            issues,
        ),
    };
    let log_level = issues.take(top.string("log_level", ""), String::new());
    let log_level = if log_level.is_empty() {
        None
    } else if ["debug", "info", "warn", "error"].contains(&log_level.as_str()) {
        Some(log_level)
    } else {
        issues.push(
            "log_level",
            format!(
                "{log_level:?} is not a log level; use \"debug\", \"info\", \"warn\" or \"error\""
            ),
        );
        None
    };
    let metrics = metrics_options(&pg, issues);
    let access_log = access_log_options(&top, conf_path, issues);

    let storage = match top.get("storage") {
        None => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => {
            issues.push(
                "storage",
                format!("expected an object, found {}", describe(other)),
            );
            Value::Null
        }
    };

    let coprocess = coprocess_options(&cp, &base, issues);

    Some(GatewayConfig {
        conf_path: conf_path.to_path_buf(),
        listen_address,
        listen_port,
        secret,
        app_path: resolve(&base, &app_path),
        middleware_path: resolve(&base, &middleware_path),
        enable_bundle_downloader,
        bundle_base_url,
        tls,
        proxy_ssl_insecure_skip_verify,
        proxy_ssl_min_version,
        bundle_insecure_skip_verify,
        skip_verify_existing_plugin_bundle,
        public_key_path: (!public_key_path.is_empty()).then(|| resolve(&base, &public_key_path)),
        hide_generator_header,
        close_connections,
        coprocess,
        limits: Limits {
            max_header_bytes: to_usize(max_header_bytes),
            max_request_body_bytes,
            client_header_timeout: Duration::from_millis(client_header_ms),
            client_body_timeout,
            keepalive_timeout: Duration::from_millis(keepalive_ms),
            write_timeout,
            max_connections_per_worker: to_usize(max_conns),
        },
        upstream: UpstreamOptions {
            connect_timeout: Duration::from_millis(connect_ms),
            read_timeout,
            max_idle_per_target: to_usize(max_idle_per_target),
        },
        workers,
        shutdown_grace: Duration::from_millis(shutdown_ms),
        log_format,
        log_level,
        metrics,
        access_log,
        storage,
    })
}

/// Reads a log format value ("text" or "json"; Tyk's "default" means text).
fn log_format_of(v: String, field: &str, issues: &mut Issues) -> LogFormat {
    match v.as_str() {
        "text" | "default" | "" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            issues.push(
                field,
                format!("{other:?} is not a log format; use \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    }
}

/// `pipegate.metrics`: `{"enabled": true, "path": "/metrics", "listen_address": "127.0.0.1:9100"}`.
fn metrics_options(pg: &Obj<'_>, issues: &mut Issues) -> MetricsOptions {
    let m = issues.take(pg.obj("metrics"), Obj::empty("pipegate.metrics"));
    for key in m.unknown_keys(KNOWN_METRICS) {
        issues.push(
            key,
            format!(
                "unknown metrics setting; known ones are {}",
                KNOWN_METRICS.join(", ")
            ),
        );
    }
    let enabled = issues.take(m.bool("enabled", true), true);
    let path = issues.take(m.string("path", "/metrics"), "/metrics".to_string());
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.starts_with("/tyk/") {
        issues.push(
            "pipegate.metrics.path",
            format!("{path:?} is not a usable path; give one starting with '/', outside /tyk/, without '?', '#' or spaces (e.g. \"/metrics\")"),
        );
    }
    let listen = issues.take(m.string("listen_address", ""), String::new());
    let listen_address = if listen.is_empty() {
        None
    } else {
        use std::net::ToSocketAddrs;
        match listen.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => Some(a),
            _ => {
                issues.push(
                    "pipegate.metrics.listen_address",
                    format!("{listen:?} is not a host:port address; use e.g. \"127.0.0.1:9100\""),
                );
                None
            }
        }
    };
    MetricsOptions {
        enabled,
        path,
        listen_address,
    }
}

/// Tyk's `access_logs`: `{"enabled": true, "template": ["api_id", "status", ...]}`.
fn access_log_options(top: &Obj<'_>, conf_path: &Path, issues: &mut Issues) -> AccessLogOptions {
    let a = issues.take(top.obj("access_logs"), Obj::empty("access_logs"));
    let unknown = a.unknown_keys(KNOWN_ACCESS_LOGS);
    if !unknown.is_empty() {
        tracing::warn!(
            file = %conf_path.display(),
            keys = %unknown.join(", "),
            "unknown access_logs keys are ignored; check them for typos"
        );
    }
    let enabled = issues.take(a.bool("enabled", false), false);
    let template = issues.take(a.strings("template"), Vec::new());
    let mut fields = 0u32;
    for (i, name) in template.iter().enumerate() {
        if let Some(bit) = ACCESS_LOG_FIELDS.iter().position(|f| f == name) {
            fields |= 1 << bit;
        } else if ACCESS_LOG_NOT_LOGGED.contains(&name.as_str()) {
            tracing::warn!(
                file = %conf_path.display(),
                "access_logs.template[{i}]: {name:?} is not logged by pipegate"
            );
        } else {
            issues.push(
                format!("access_logs.template[{i}]"),
                format!(
                    "{name:?} is not an access log field; known ones are {}",
                    ACCESS_LOG_FIELDS.join(", ")
                ),
            );
        }
    }
    if template.is_empty() {
        fields = (1u32 << ACCESS_LOG_FIELDS.len()) - 1;
    }
    AccessLogOptions { enabled, fields }
}

/// Reads a Tyk TLS version number (`uint16`); `None` when absent or 0 (the default applies).
/// `upstream` accepts TLS 1.0 and 1.1 as TLS 1.2 with a warning (see
/// [`MinVersion::from_tyk_upstream`]).
pub(crate) fn tls_version(
    obj: &Obj<'_>,
    key: &str,
    upstream: bool,
    issues: &mut Issues,
) -> Option<MinVersion> {
    let v = issues.take(obj.u64(key, 0), 0);
    if v == 0 {
        return None;
    }
    let parsed = if upstream {
        MinVersion::from_tyk_upstream(v)
    } else {
        MinVersion::from_tyk(v).map(|m| (m, false))
    };
    match parsed {
        Ok((m, raised)) => {
            if raised {
                tracing::warn!(
                    field = %obj.field(key),
                    "{v} asks for TLS 1.0/1.1, which pipegate (rustls) does not speak: upstream connections use TLS 1.2 or 1.3"
                );
            }
            Some(m)
        }
        Err(reason) => {
            issues.push(obj.field(key), reason);
            None
        }
    }
}

/// `use_ssl`, `certificates` and `min_version`: the TLS server configuration, with the
/// certificate files read and checked now so that a bad one stops the load (or the reload).
fn server_tls(
    http: &Obj<'_>,
    base: &Path,
    issues: &mut Issues,
) -> Option<Arc<rustls::ServerConfig>> {
    let use_ssl = issues.take(http.bool("use_ssl", false), false);
    // Checked only when TLS is on: a Tyk file may carry it unused.
    let min = if use_ssl {
        tls_version(http, "min_version", false, issues).unwrap_or_default()
    } else {
        MinVersion::default()
    };
    // The files are checked even when min_version is wrong, so that every problem shows at once.
    let before = issues.list.len();
    let items = issues.take(http.array("certificates"), &[]);
    let mut entries = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("http_server_options.certificates[{i}]");
        let obj = match Obj::from_value(item, path.clone()) {
            Ok(o) => o,
            Err(issue) => {
                issues.list.push(issue);
                continue;
            }
        };
        let domain_name = issues.take(obj.string("domain_name", ""), String::new());
        let mut file = |key: &str| {
            let p = issues.take(obj.string(key, ""), String::new());
            if p.is_empty() {
                issues.push(
                    obj.field(key),
                    "is missing; give the path of a PEM file (relative paths are resolved against tyk.conf's directory)",
                );
                return None;
            }
            Some(resolve(base, &p))
        };
        let (cert_file, key_file) = (file("cert_file"), file("key_file"));
        if let (Some(cert_file), Some(key_file)) = (cert_file, key_file) {
            entries.push((
                i,
                CertificateEntry {
                    domain_name,
                    cert_file,
                    key_file,
                },
            ));
        }
    }
    for key in ["ssl_certificates", "ssl_ciphers"] {
        if http
            .get(key)
            .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
        {
            tracing::warn!(
                field = %http.field(key),
                "not supported by pipegate and ignored: certificates come from http_server_options.certificates (PEM files), cipher suites are rustls' defaults"
            );
        }
    }
    if !use_ssl {
        return None;
    }
    // The complete entries' files are checked even when others are incomplete, so that every
    // problem shows at once; the configuration is used only when nothing is wrong.
    let complete = entries.len() == items.len();
    let (positions, entries): (Vec<usize>, Vec<CertificateEntry>) = entries.into_iter().unzip();
    if entries.is_empty() && !complete {
        return None;
    }
    match crate::tls::server::build(&entries, min) {
        Ok(cfg) if complete && issues.list.len() == before => Some(cfg),
        Ok(_) => None,
        Err(errs) => {
            for (field, reason) in errs {
                // Renumber to the entry's place in the file.
                issues.push(renumber(&field, &positions), reason);
            }
            None
        }
    }
}

/// `http_server_options.certificates[i]...` with `i` (an index among the complete entries)
/// replaced by that entry's index in the file.
fn renumber(field: &str, positions: &[usize]) -> String {
    let prefix = "http_server_options.certificates[";
    let Some(rest) = field.strip_prefix(prefix) else {
        return field.to_string();
    };
    let Some((num, tail)) = rest.split_once(']') else {
        return field.to_string();
    };
    match num.parse::<usize>().ok().and_then(|i| positions.get(i)) {
        Some(p) => format!("{prefix}{p}]{tail}"),
        None => field.to_string(),
    }
}

fn coprocess_options(cp: &Obj<'_>, base: &Path, issues: &mut Issues) -> CoprocessOptions {
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let enable_coprocess = issues.take(cp.bool("enable_coprocess", false), false);
    let grpc_server = non_empty(issues.take(cp.string("coprocess_grpc_server", ""), String::new()));
    let grpc_recv_max_size = issues.take(cp.u64("grpc_recv_max_size", 0), 0);
    let grpc_send_max_size = issues.take(cp.u64("grpc_send_max_size", 0), 0);
    let grpc_authority = non_empty(issues.take(cp.string("grpc_authority", ""), String::new()));
    let grpc_round_robin_load_balancing =
        issues.take(cp.bool("grpc_round_robin_load_balancing", false), false);
    let _ = issues.take(cp.str("python_path_prefix"), None);
    let _ = issues.take(cp.str("python_version"), None);

    let pipe_command = issues.take(cp.strings("pipe_command"), Vec::new());
    if pipe_command.first().is_some_and(|p| p.is_empty()) {
        issues.push(
            "coprocess_options.pipe_command[0]",
            "the program to run is empty; give its path or name, e.g. [\"python3\", \"plugin.py\"]",
        );
    }
    let mut pipe_env = Vec::new();
    if let Some(map) = issues.take(cp.raw_object("pipe_env"), None) {
        for (k, v) in map {
            match v {
                Value::String(s) => pipe_env.push((k.clone(), s.clone())),
                other => issues.push(
                    format!("coprocess_options.pipe_env.{k}"),
                    format!(
                        "environment values must be strings, found {}; quote it",
                        describe(other)
                    ),
                ),
            }
        }
    }
    pipe_env.sort();
    let pipe_workdir = issues.take(cp.string("pipe_workdir", ""), String::new());
    let hook_timeout_ms = positive_ms(cp, "hook_timeout_ms", 1000, issues);
    let fail_open = issues.take(cp.bool("fail_open", false), false);
    let max_frame_bytes = issues.take(cp.u64("max_frame_bytes", 64 * MIB), 64 * MIB);
    if !(1024..=u64::from(u32::MAX)).contains(&max_frame_bytes) {
        issues.push(
            "coprocess_options.max_frame_bytes",
            format!("{max_frame_bytes} is out of range; use a value from 1024 to 4294967295"),
        );
    }
    // Measured crossover (docs/PERFORMANCE.md): inline is as fast up to ~1 MiB, files win by 8 MiB.
    let mmap_threshold_bytes = issues.take(cp.u64("mmap_threshold_bytes", 4 * MIB), 4 * MIB);
    let send_body = issues.take(cp.bool("send_body", true), true);
    let backoff_ms = positive_ms(cp, "restart_backoff_max_ms", 5000, issues);
    let enable_grpc_fallback = issues.take(cp.bool("enable_grpc_fallback", false), false);
    let grpc_compression = match issues.take(cp.string("grpc_compression", ""), String::new()) {
        c if c.is_empty() => None,
        c if c == "gzip" || c == "zstd" => Some(c),
        other => {
            issues.push(
                "coprocess_options.grpc_compression",
                format!(
                    "{other:?} is not a gRPC compression; use \"gzip\", \"zstd\" or leave it out"
                ),
            );
            None
        }
    };
    if enable_grpc_fallback && grpc_server.is_none() {
        issues.push(
            "coprocess_options.enable_grpc_fallback",
            "needs coprocess_grpc_server to fall back to; set it or turn the fallback off",
        );
    }

    CoprocessOptions {
        enable_coprocess,
        grpc_server,
        grpc_recv_max_size: to_usize(grpc_recv_max_size),
        grpc_send_max_size: to_usize(grpc_send_max_size),
        grpc_authority,
        grpc_round_robin_load_balancing,
        pipe_command,
        pipe_env,
        pipe_workdir: (!pipe_workdir.is_empty()).then(|| resolve(base, &pipe_workdir)),
        hook_timeout: Duration::from_millis(hook_timeout_ms),
        fail_open,
        max_frame_bytes: to_usize(max_frame_bytes),
        mmap_threshold_bytes: to_usize(mmap_threshold_bytes),
        send_body,
        restart_backoff_max: Duration::from_millis(backoff_ms),
        enable_grpc_fallback,
        grpc_compression,
    }
}

/// A millisecond setting that must be > 0 (a zero timeout would fail every request).
fn positive_ms(obj: &Obj<'_>, key: &str, default: u64, issues: &mut Issues) -> u64 {
    let v = issues.take(obj.u64(key, default), default);
    if v == 0 {
        issues.push(
            obj.field(key),
            format!("must be greater than 0; leave it out for the default of {default}"),
        );
        return default;
    }
    v
}

/// Tyk's float seconds, where absent or 0 means the default.
fn seconds_or(v: Option<f64>, default: f64, field: &str, issues: &mut Issues) -> Duration {
    let secs = match v {
        Some(s) if s > 0.0 => s,
        _ => default,
    };
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if secs <= 1e9 => d,
        _ => {
            issues.push(
                field,
                format!("{secs} seconds is too long; use at most 1000000000"),
            );
            Duration::from_secs_f64(default)
        }
    }
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Tyk's "" means all interfaces; brackets around an IPv6 literal are dropped so that
/// `(address, port)` can be handed to the socket API.
fn normalise_listen_address(raw: &str) -> Result<String, String> {
    let a = raw.trim();
    if a.is_empty() {
        return Ok("0.0.0.0".to_string());
    }
    let unbracketed = a
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(a);
    if unbracketed.parse::<std::net::IpAddr>().is_ok() {
        return Ok(unbracketed.to_string());
    }
    let host_ok = a.len() <= 253
        && a.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if host_ok {
        Ok(a.to_string())
    } else {
        Err(format!(
            "{raw:?} is neither an IP address nor a host name; use e.g. \"0.0.0.0\", \"127.0.0.1\" or \"::\" (no port here; the port goes in listen_port)"
        ))
    }
}
