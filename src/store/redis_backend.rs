//! The Redis backend: sessions shared by several gateways, limits decided atomically in Redis.
//!
//! Keys:
//! - `apikey-<key>`: the session JSON, as Tyk stores it (unhashed keys), so Tyk tooling and
//!   pipegate read each other's keys.
//! - `quota-<key>`: the quota used in the current period, an integer whose TTL is the period, as
//!   Tyk's quota counter.
//! - `pipegate-rate-limit-<key>`: the sliding log (a sorted set scored in microseconds). Tyk's
//!   `rate-limit-<key>` set is scored in nanoseconds and logs refused requests too, so pipegate's
//!   log has its own name rather than misreading Tyk's.
//!
//! Every limit decision is one `EVALSHA` of [`LIMIT_SCRIPT`]: Redis runs scripts one at a time,
//! so the read-decide-write is atomic across every gateway sharing the Redis, and the script reads
//! Redis's own clock (`TIME`) so gateways with skewed clocks agree.
//!
//! Connections: a small pool of blocking connections (the worker threads call in, one request at
//! a time each). A connection that fails with an I/O error is dropped; when a pooled connection
//! fails because the server went away (a restart), the pool is emptied and the command is retried
//! once on a fresh connection. When connecting fails, further connects are skipped for a short,
//! growing back-off (100 ms to 2 s), so a dead Redis costs each request a fast error instead of a
//! connect timeout, and the store recovers by itself once Redis is back.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{Connection, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError};

use super::limits::{LimitDecision, LimitSpec, Verdict};
use super::session::TykSession;
use super::{RedisSettings, StoreError};

/// Tyk's session key prefix.
const SESSION_PREFIX: &str = "apikey-";
/// Tyk's quota counter prefix.
const QUOTA_PREFIX: &str = "quota-";
/// pipegate's sliding-log prefix.
const RATE_PREFIX: &str = "pipegate-rate-limit-";

/// KEYS[1] rate log, KEYS[2] quota counter; ARGV: capacity (0 = no rate limit), window µs,
/// quota max (0 = no quota), renewal ms (0 = never). Returns
/// `{0, used, quota_pttl_ms, now_us}` admitted, `{1, reset_us, 0, now_us}` rate limited,
/// `{2, used, quota_pttl_ms, now_us}` quota exceeded. Numbers are passed to `redis.call` as
/// strings formatted with `%.0f` so microsecond timestamps keep every digit.
const LIMIT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cap = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2])
local qmax = tonumber(ARGV[3])
local renew_ms = tonumber(ARGV[4])
local function n(x) return string.format('%.0f', x) end
local count = 0
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', n(now_us - window_us))
  count = redis.call('ZCARD', KEYS[1])
  if count >= cap then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    local reset = now_us
    if oldest[2] then reset = tonumber(oldest[2]) + window_us end
    return {1, reset, 0, now_us}
  end
end
local used = 0
if qmax > 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= qmax then
    return {2, used, redis.call('PTTL', KEYS[2]), now_us}
  end
end
if cap > 0 then
  redis.call('ZADD', KEYS[1], n(now_us), t[1] .. '.' .. t[2] .. '.' .. count)
  redis.call('PEXPIRE', KEYS[1], n(math.floor(window_us / 1000) + 1000))
end
local ttl = -1
if qmax > 0 then
  used = redis.call('INCR', KEYS[2])
  if used == 1 and renew_ms > 0 then
    redis.call('PEXPIRE', KEYS[2], n(renew_ms))
  end
  ttl = redis.call('PTTL', KEYS[2])
end
return {0, used, ttl, now_us}
"#;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Connect back-off state.
#[derive(Default)]
struct Backoff {
    /// No connect attempt before this instant.
    until: Option<Instant>,
    /// The next back-off length.
    next: Duration,
}

pub(crate) struct RedisBackend {
    client: redis::Client,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    timeout: Duration,
    backoff: Mutex<Backoff>,
    script: redis::Script,
    /// `host:port`, for messages (never the password).
    addr: String,
}

impl RedisBackend {
    pub fn new(s: RedisSettings) -> Result<RedisBackend, StoreError> {
        let mut redis_info = RedisConnectionInfo::default().set_db(s.database);
        if let Some(u) = &s.username {
            redis_info = redis_info.set_username(u);
        }
        if let Some(p) = &s.password {
            redis_info = redis_info.set_password(p);
        }
        let info = ConnectionAddr::Tcp(s.host.clone(), s.port)
            .into_connection_info()
            .map_err(|e| StoreError::Config(format!("storage: {e}")))?
            .set_redis_settings(redis_info);
        let client =
            redis::Client::open(info).map_err(|e| StoreError::Config(format!("storage: {e}")))?;
        Ok(RedisBackend {
            client,
            idle: Mutex::new(Vec::new()),
            max_idle: s.max_idle.max(1),
            timeout: s.timeout,
            backoff: Mutex::new(Backoff::default()),
            script: redis::Script::new(LIMIT_SCRIPT),
            addr: format!("{}:{}", s.host, s.port),
        })
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        {
            let b = self.backoff.lock();
            if let Some(until) = b.until {
                let now = Instant::now();
                if now < until {
                    return Err(StoreError::Unavailable(format!(
                        "Redis at {} is unreachable (next attempt in {} ms); check that it is running",
                        self.addr,
                        (until - now).as_millis()
                    )));
                }
            }
        }
        let attempt = self
            .client
            .get_connection_with_timeout(self.timeout)
            .and_then(|c| {
                c.set_read_timeout(Some(self.timeout))?;
                c.set_write_timeout(Some(self.timeout))?;
                Ok(c)
            });
        match attempt {
            Ok(c) => {
                let mut b = self.backoff.lock();
                if b.until.is_some() {
                    tracing::info!(redis = %self.addr, "reconnected to Redis");
                }
                *b = Backoff::default();
                Ok(c)
            }
            Err(e) => {
                let mut b = self.backoff.lock();
                let wait = if b.next.is_zero() {
                    BACKOFF_FIRST
                } else {
                    b.next
                };
                b.until = Some(Instant::now() + wait);
                b.next = (wait * 2).min(BACKOFF_MAX);
                Err(self.describe(&e))
            }
        }
    }

    /// A store error for a Redis error, with what to check.
    fn describe(&self, e: &RedisError) -> StoreError {
        if e.kind() == redis::ErrorKind::AuthenticationFailed {
            return StoreError::Unavailable(format!(
                "Redis at {} refused the credentials; check storage.username and storage.password",
                self.addr
            ));
        }
        if is_connection_error(e) {
            return StoreError::Unavailable(format!(
                "Redis at {} is unreachable ({e}); check that it is running and storage.host/port",
                self.addr
            ));
        }
        StoreError::Corrupt(format!(
            "Redis at {} answered with an error: {e}",
            self.addr
        ))
    }

    /// Runs `op` on a pooled (or new) connection; see the module docs for the retry rule.
    fn with_conn<T>(
        &self,
        mut op: impl FnMut(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let mut retried = false;
        loop {
            let pooled = self.idle.lock().pop();
            let (mut conn, was_pooled) = match pooled {
                Some(c) => (c, true),
                None => (self.connect()?, false),
            };
            match op(&mut conn) {
                Ok(v) => {
                    let mut idle = self.idle.lock();
                    if idle.len() < self.max_idle {
                        idle.push(conn);
                    }
                    return Ok(v);
                }
                Err(e) if is_connection_error(&e) => {
                    drop(conn);
                    // A timed-out command may have run; never run it twice.
                    if was_pooled && !retried && !e.is_timeout() {
                        retried = true;
                        self.idle.lock().clear();
                        continue;
                    }
                    return Err(self.describe(&e));
                }
                Err(e) => {
                    let mut idle = self.idle.lock();
                    if idle.len() < self.max_idle {
                        idle.push(conn);
                    }
                    return Err(self.describe(&e));
                }
            }
        }
    }

    pub fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|c| redis::cmd("PING").query::<String>(c))
            .map(|_| ())
    }

    pub fn get_first(&self, keys: &[String]) -> Result<Option<(String, TykSession)>, StoreError> {
        if keys.is_empty() {
            return Ok(None);
        }
        let names: Vec<String> = keys.iter().map(|k| session_key(k)).collect();
        let values: Vec<Option<Vec<u8>>> =
            self.with_conn(|c| redis::cmd("MGET").arg(&names).query(c))?;
        for (key, value) in keys.iter().zip(values) {
            if let Some(bytes) = value {
                let session = TykSession::from_json(&bytes).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "the session of key {} in Redis is not session JSON ({e}); replace it with PUT /tyk/keys/<key> or delete it",
                        super::obfuscate_key(key)
                    ))
                })?;
                return Ok(Some((key.clone(), session)));
            }
        }
        Ok(None)
    }

    pub fn put(&self, key: &str, session: &TykSession) -> Result<(), StoreError> {
        let json = session.to_json();
        let name = session_key(key);
        self.with_conn(|c| redis::cmd("SET").arg(&name).arg(&json).query::<()>(c))
    }

    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let names = [session_key(key), quota_key(key), rate_key(key)];
        let (removed, _, _): (i64, i64, i64) = self.with_conn(|c| {
            redis::pipe()
                .atomic()
                .del(&names[0])
                .del(&names[1])
                .del(&names[2])
                .query(c)
        })?;
        Ok(removed > 0)
    }

    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{SESSION_PREFIX}*");
        self.with_conn(|c| {
            let mut out = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)?;
                out.extend(
                    batch
                        .into_iter()
                        .filter_map(|k| k.strip_prefix(SESSION_PREFIX).map(str::to_string)),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            // SCAN may return a key twice.
            out.sort();
            out.dedup();
            Ok(out)
        })
    }

    pub fn reset_limits(&self, key: &str) -> Result<(), StoreError> {
        let names = [quota_key(key), rate_key(key)];
        self.with_conn(|c| redis::cmd("DEL").arg(&names).query::<i64>(c))
            .map(|_| ())
    }

    pub fn check_limits(&self, key: &str, spec: &LimitSpec) -> Result<LimitDecision, StoreError> {
        let (cap, window_us) = spec.window().unwrap_or((0, 0));
        let qmax = spec.quota_max.max(0);
        let renew_ms = spec.renewal_us().map(|us| us / 1000).unwrap_or(0);
        let (rk, qk) = (rate_key(key), quota_key(key));
        let reply: Vec<i64> = self.with_conn(|c| {
            self.script
                .key(&rk)
                .key(&qk)
                .arg(cap)
                .arg(window_us)
                .arg(qmax)
                .arg(renew_ms)
                .invoke(c)
        })?;
        let [code, a, b, now_us] = reply[..] else {
            return Err(StoreError::Corrupt(format!(
                "the limit script answered {reply:?}; expected four numbers"
            )));
        };
        let now_us = u64::try_from(now_us).unwrap_or(0);
        let renews = |pttl_ms: i64| {
            (pttl_ms > 0).then(|| {
                super::limits::micros_to_secs(now_us.saturating_add(pttl_ms as u64 * 1000))
            })
        };
        let quota = |used: i64| (qmax > 0).then(|| (qmax - used).max(0));
        Ok(match code {
            0 => LimitDecision {
                verdict: Verdict::Allowed,
                quota_remaining: quota(a),
                quota_renews: if qmax > 0 { renews(b) } else { None },
                rate_reset_us: None,
            },
            1 => LimitDecision {
                verdict: Verdict::RateLimited,
                quota_remaining: None,
                quota_renews: None,
                rate_reset_us: u64::try_from(a).ok(),
            },
            _ => LimitDecision {
                verdict: Verdict::QuotaExceeded,
                quota_remaining: Some(0),
                quota_renews: renews(b),
                rate_reset_us: None,
            },
        })
    }

    pub fn quota_usage(&self, key: &str) -> Result<Option<(i64, Option<i64>)>, StoreError> {
        let qk = quota_key(key);
        let (used, pttl, time): (Option<i64>, i64, (u64, u64)) = self.with_conn(|c| {
            redis::pipe()
                .cmd("GET")
                .arg(&qk)
                .cmd("PTTL")
                .arg(&qk)
                .cmd("TIME")
                .query(c)
        })?;
        let Some(used) = used.filter(|u| *u > 0) else {
            return Ok(None);
        };
        let now_us = time.0.saturating_mul(1_000_000).saturating_add(time.1);
        let renews = (pttl > 0)
            .then(|| super::limits::micros_to_secs(now_us.saturating_add(pttl as u64 * 1000)));
        Ok(Some((used, renews)))
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

fn session_key(key: &str) -> String {
    format!("{SESSION_PREFIX}{key}")
}

fn quota_key(key: &str) -> String {
    format!("{QUOTA_PREFIX}{key}")
}

fn rate_key(key: &str) -> String {
    format!("{RATE_PREFIX}{key}")
}
