//! Sessions, rate limits and quotas: where keys live and how they are enforced.
//!
//! One [`Store`] type with two backends, chosen from tyk.conf's `storage` object:
//! - **embedded** (the default; `"type": "embedded"` or no `storage` at all): sessions and
//!   counters in process memory, optionally persisted to a file (`"file": "path"`, relative to
//!   tyk.conf's directory), written atomically (temp file + rename) by a background flusher and
//!   on [`Store::flush`]. One gateway process only.
//! - **redis** (`"type": "redis"` with `host`/`port` or `addrs`): sessions stored like Tyk
//!   (`apikey-<key>` → session JSON), so several gateways share keys. Rate limits and quotas are
//!   decided by one Lua script per request, atomically inside Redis, so two gateways sharing a
//!   Redis share a key's limits exactly. A small connection pool reconnects after failures, with a
//!   short back-off so a dead Redis costs a fast error, not a connect timeout per request.
//!
//! Limits (see [`limits`] for the algorithm and why): the rate limit is an exact **sliding log**
//! (at most `rate` admitted requests in any `per`-second window); the quota counts admitted
//! requests per period, the period starting at the first request after a renewal, as Tyk's
//! `quota-<key>` counter with its TTL does. A refused request consumes neither.
//!
//! The request path uses [`enforce`] (Tyk's KeyExpired, AccessRightsCheck and
//! RateLimitAndQuotaCheck), [`token_auth`] (Tyk's AuthKey), and the ID extractor helpers; the
//! Gateway API is in `crate::admin`.

pub mod auth;
mod embedded;
pub mod extractor;
pub mod limits;
mod redis_backend;
pub mod session;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::config::GatewayConfig;
use crate::middleware::chain::LocalResponse;

pub use auth::{
    cached_session, enforce, generate_token, store_auth_session, store_error_response, token_auth,
    token_org,
};
pub use extractor::{extractor_needs_body, id_extractor_key, ExtractorRequest};
pub use limits::{LimitDecision, LimitSpec, Verdict};
pub use session::{TykAccessDefinition, TykSession};

/// Why the store could not answer. The request path turns it into a JSON 5xx and refuses the
/// request (authentication and limits fail closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The backend cannot be reached (Redis down, refused, timed out).
    Unavailable(String),
    /// A stored value could not be read (not valid session JSON, wrong Redis type).
    Corrupt(String),
    /// The persistence file could not be read or written.
    Io(String),
    /// The `storage` configuration is not usable.
    Config(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "session store unavailable: {m}"),
            StoreError::Corrupt(m) => write!(f, "session store holds an unreadable value: {m}"),
            StoreError::Io(m) => write!(f, "session store file error: {m}"),
            StoreError::Config(m) => write!(f, "storage configuration: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Which backend a [`Store`] uses (for logs and the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// In-process maps (optionally persisted to a file).
    Embedded,
    /// A Redis server shared by gateways.
    Redis,
}

/// Redis connection settings, from tyk.conf's `storage` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user name (Redis 6+), if any.
    pub username: Option<String>,
    /// Password, if any. Never logged.
    pub password: Option<String>,
    /// Database number (`SELECT`).
    pub database: i64,
    /// Connect and per-command I/O timeout.
    pub timeout: Duration,
    /// Most idle connections kept for reuse.
    pub max_idle: usize,
}

/// The parsed `storage` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageSettings {
    /// Embedded store, persisted to this file when set.
    Embedded {
        /// Persistence file (absolute, or resolved against tyk.conf's directory).
        file: Option<PathBuf>,
    },
    /// Redis.
    Redis(RedisSettings),
}

impl StorageSettings {
    /// Reads tyk.conf's `storage` object. `base_dir` resolves a relative `file`. Settings pipegate
    /// cannot honour (Redis Cluster, Sentinel, TLS) are errors that say what to change, because
    /// silently connecting somewhere else would split the keys.
    pub fn parse(storage: &Value, base_dir: &Path) -> Result<StorageSettings, StoreError> {
        let obj = match storage {
            Value::Null => return Ok(StorageSettings::Embedded { file: None }),
            Value::Object(o) => o,
            _ => {
                return Err(StoreError::Config(
                    "\"storage\" must be an object, e.g. {\"type\": \"embedded\"} or {\"type\": \"redis\", \"host\": \"localhost\", \"port\": 6379}".into(),
                ))
            }
        };
        let str_field = |name: &str| -> Result<Option<String>, StoreError> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(StoreError::Config(format!(
                    "storage.{name} must be a string, found {other}"
                ))),
            }
        };
        let int_field = |name: &str| -> Result<Option<i64>, StoreError> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| {
                    StoreError::Config(format!("storage.{name} must be an integer, found {n}"))
                }),
                Some(other) => Err(StoreError::Config(format!(
                    "storage.{name} must be an integer, found {other}"
                ))),
            }
        };
        let bool_field = |name: &str| obj.get(name).and_then(Value::as_bool).unwrap_or(false);
        let kind = str_field("type")?.unwrap_or_else(|| "embedded".to_string());
        match kind.to_ascii_lowercase().as_str() {
            "embedded" | "memory" => {
                let file = str_field("file")?.map(|f| {
                    let p = PathBuf::from(f);
                    if p.is_absolute() {
                        p
                    } else {
                        base_dir.join(p)
                    }
                });
                Ok(StorageSettings::Embedded { file })
            }
            "redis" => {
                if bool_field("enable_cluster") {
                    return Err(StoreError::Config(
                        "storage.enable_cluster is set, but pipegate does not speak Redis Cluster; point storage.host/port at a single Redis (or a cluster proxy)".into(),
                    ));
                }
                if str_field("master_name")?.is_some() {
                    return Err(StoreError::Config(
                        "storage.master_name (Redis Sentinel) is not supported; point storage.host/port at the Redis primary".into(),
                    ));
                }
                if bool_field("use_ssl") {
                    return Err(StoreError::Config(
                        "storage.use_ssl is set, but this build has no TLS for Redis; use a local TLS tunnel (e.g. stunnel) and plain storage.host/port".into(),
                    ));
                }
                let (host, port) = redis_address(obj, &str_field, &int_field)?;
                let timeout = match int_field("timeout")? {
                    Some(t) if t > 0 => Duration::from_secs(t as u64),
                    _ => Duration::from_secs(2),
                };
                let max_idle = match int_field("optimisation_max_idle")? {
                    Some(n) if n > 0 => (n as usize).min(64),
                    _ => 16,
                };
                Ok(StorageSettings::Redis(RedisSettings {
                    host,
                    port,
                    username: str_field("username")?,
                    password: str_field("password")?,
                    database: int_field("database")?.unwrap_or(0),
                    timeout,
                    max_idle,
                }))
            }
            other => Err(StoreError::Config(format!(
                "storage.type {other:?} is not supported; use \"embedded\" (default, in-process, optional \"file\") or \"redis\""
            ))),
        }
    }
}

type StrField<'a> = dyn Fn(&str) -> Result<Option<String>, StoreError> + 'a;
type IntField<'a> = dyn Fn(&str) -> Result<Option<i64>, StoreError> + 'a;

/// `addrs[0]` ("host:port") when given, else `host` + `port` (defaults localhost:6379).
fn redis_address(
    obj: &serde_json::Map<String, Value>,
    str_field: &StrField<'_>,
    int_field: &IntField<'_>,
) -> Result<(String, u16), StoreError> {
    if let Some(Value::Array(addrs)) = obj.get("addrs") {
        if let Some(first) = addrs.iter().find_map(Value::as_str) {
            if addrs.len() > 1 {
                tracing::warn!(
                    "storage.addrs lists {} addresses; pipegate uses only the first, {first}",
                    addrs.len()
                );
            }
            let (h, p) = first.rsplit_once(':').ok_or_else(|| {
                StoreError::Config(format!(
                    "storage.addrs entry {first:?} must be \"host:port\""
                ))
            })?;
            let port: u16 = p.parse().map_err(|_| {
                StoreError::Config(format!("storage.addrs entry {first:?} has a bad port"))
            })?;
            let host = h.trim_start_matches('[').trim_end_matches(']').to_string();
            return Ok((host, port));
        }
    }
    let host = str_field("host")?.unwrap_or_else(|| "localhost".to_string());
    let port = match int_field("port")? {
        None | Some(0) => 6379,
        Some(p) => u16::try_from(p).map_err(|_| {
            StoreError::Config(format!("storage.port {p} is not a TCP port (1-65535)"))
        })?,
    };
    Ok((host, port))
}

/// The session store. Share one per process (it is `Send + Sync`); every method is safe to call
/// from any worker thread.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Embedded(embedded::Embedded),
    Redis(Box<redis_backend::RedisBackend>),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind())
            .finish()
    }
}

impl Store {
    /// The store tyk.conf asks for (`storage`; relative paths against tyk.conf's directory).
    /// An embedded store with a file loads it now; a Redis store connects lazily (see
    /// [`Store::ping`] to check at start-up).
    pub fn from_config(gw: &GatewayConfig) -> Result<Store, StoreError> {
        let base = gw
            .conf_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Store::from_storage_json(&gw.storage, &base)
    }

    /// As [`Store::from_config`], from the raw `storage` JSON.
    pub fn from_storage_json(storage: &Value, base_dir: &Path) -> Result<Store, StoreError> {
        Store::open(StorageSettings::parse(storage, base_dir)?)
    }

    /// Opens a store from parsed settings.
    pub fn open(settings: StorageSettings) -> Result<Store, StoreError> {
        match settings {
            StorageSettings::Embedded { file } => Store::embedded(file),
            StorageSettings::Redis(r) => Ok(Store {
                backend: Backend::Redis(Box::new(redis_backend::RedisBackend::new(r)?)),
            }),
        }
    }

    /// An embedded store, loading `file` if it exists (a missing file is an empty store; an
    /// unreadable one is an error, so a typo never silently drops every key).
    pub fn embedded(file: Option<PathBuf>) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Embedded(embedded::Embedded::open(file)?),
        })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Embedded(_) => BackendKind::Embedded,
            Backend::Redis(_) => BackendKind::Redis,
        }
    }

    /// Checks the backend answers (Redis `PING`); always Ok for the embedded store.
    pub fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Redis(r) => r.ping(),
        }
    }

    /// The session stored under exactly `key`.
    pub fn get(&self, key: &str) -> Result<Option<TykSession>, StoreError> {
        Ok(self
            .get_first(&[key.to_string()])?
            .map(|(_, session)| session))
    }

    /// The first of `keys` that has a session, with the key it was found under (one round trip
    /// on Redis). Used for Tyk's "custom key with org prefix, else as given" lookup.
    pub fn get_first(&self, keys: &[String]) -> Result<Option<(String, TykSession)>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => Ok(e.get_first(keys)),
            Backend::Redis(r) => r.get_first(keys),
        }
    }

    /// Stores (creates or replaces) the session under `key`. Counters are not touched.
    pub fn put(&self, key: &str, session: &TykSession) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(e) => {
                e.put(key, session);
                Ok(())
            }
            Backend::Redis(r) => r.put(key, session),
        }
    }

    /// Removes the session and its counters; whether a session was there.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => Ok(e.delete(key)),
            Backend::Redis(r) => r.delete(key),
        }
    }

    /// Every stored key, sorted.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut keys = match &self.backend {
            Backend::Embedded(e) => e.list(),
            Backend::Redis(r) => r.list()?,
        };
        keys.sort();
        Ok(keys)
    }

    /// Forgets the key's rate-limit window and quota usage (Tyk resets quotas when a key is
    /// created, updated without `suppress_reset`, or deleted).
    pub fn reset_limits(&self, key: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(e) => {
                e.reset_limits(key);
                Ok(())
            }
            Backend::Redis(r) => r.reset_limits(key),
        }
    }

    /// Admits or refuses one request for `key` under `spec`, atomically: a refused request
    /// consumes nothing. `now` drives the embedded backend; Redis uses its own clock (`TIME`) so
    /// that gateways with skewed clocks still agree.
    pub fn check_limits(
        &self,
        key: &str,
        spec: &LimitSpec,
        now: SystemTime,
    ) -> Result<LimitDecision, StoreError> {
        if !spec.limits_anything() {
            return Ok(LimitDecision::unlimited());
        }
        match &self.backend {
            Backend::Embedded(e) => Ok(e.check_limits(key, spec, unix_micros(now))),
            Backend::Redis(r) => r.check_limits(key, spec),
        }
    }

    /// The key's quota usage in the current period: `(used, renews_at_unix_secs)`, `None` when no
    /// period is running (the next request starts one with the full quota).
    pub fn quota_usage(
        &self,
        key: &str,
        now: SystemTime,
    ) -> Result<Option<(i64, Option<i64>)>, StoreError> {
        match &self.backend {
            Backend::Embedded(e) => Ok(e.quota_usage(key, unix_micros(now))),
            Backend::Redis(r) => r.quota_usage(key),
        }
    }

    /// Writes pending changes to the persistence file now (embedded with a file); a no-op
    /// otherwise. The Gateway API calls it after every change so that "ok" means durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(e) => e.flush(),
            Backend::Redis(_) => Ok(()),
        }
    }
}

/// Microseconds since the unix epoch (0 for times before it).
pub(crate) fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whole seconds since the unix epoch (0 for times before it).
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A key shortened for logs (Tyk's `obfuscateKey`): only the last four characters.
pub fn obfuscate_key(key: &str) -> String {
    let n = key.chars().count();
    if n <= 4 {
        return "----".to_string();
    }
    let tail: String = key.chars().skip(n - 4).collect();
    format!("****{tail}")
}

/// Turns a store failure into the response a client gets. Logged here with detail; the client
/// sees only that the store is unavailable.
impl From<&StoreError> for LocalResponse {
    fn from(e: &StoreError) -> LocalResponse {
        store_error_response(e)
    }
}
