//! Tyk's Gateway API (`/tyk/...`), so Tyk's tooling and scripts manage pipegate's keys.
//!
//! Every request must carry the gateway secret in `X-Tyk-Authorization`; it is compared in
//! constant time (as SHA-256 digests, so neither content nor length leaks through timing) and is
//! never logged. A missing or wrong secret gets Tyk's 403
//! `{"status":"error","message":"Attempted administrative access with invalid or missing key!"}`.
//! An empty configured secret locks the API (Tyk would accept an empty header then).
//!
//! Endpoints (Tyk's shapes; bodies end with a newline as Go's `json.Encoder` writes them):
//! - `POST /tyk/keys`, `POST /tyk/keys/create` → a generated key (`org_id` + 32 hex);
//!   `POST /tyk/keys/{key}` → a custom key (stored as `org_id + key`, as Tyk does);
//!   `{"key":..., "status":"ok", "action":"added"}`.
//! - `GET /tyk/keys/{key}` → the session JSON (Tyk's internal field names), with
//!   `quota_remaining`/`quota_renews` from the live counters; 404 `Key not found`.
//! - `PUT /tyk/keys/{key}` → `"action":"modified"` (quota reset unless `?suppress_reset=1`);
//!   404 `Key is not found`.
//! - `DELETE /tyk/keys/{key}` → `"action":"deleted"` (counters reset); 404 `There is no such key
//!   found`.
//! - `GET /tyk/keys` → `{"keys": [...]}` (`?filter=` keeps keys containing it).
//! - `GET /tyk/apis` → every API definition as written; `GET /tyk/apis/{id}` → one, or 404
//!   `API not found`. Creating or changing APIs over HTTP is not supported (edit `app_path`, then
//!   reload).
//! - `GET|POST /tyk/reload`, `/tyk/reload/group` → runs the reload; `{"status":"ok","message":""}`.
//!
//! Differences from Tyk, on purpose: keys are never hashed (`hash_keys` is not supported);
//! policies are not supported, so a key naming `apply_policies` is refused with a message rather
//! than stored without its limits; a key created with an `expires` in the past stays expired
//! (Tyk silently makes it never expire); a failed reload answers 500 with the reason.

mod keys;

use sha2::{Digest, Sha256};

use crate::config::Snapshot;
use crate::middleware::chain::LocalResponse;
use crate::store::Store;

/// Tyk's message for a missing or wrong secret.
pub const MSG_ADMIN_FORBIDDEN: &str =
    "Attempted administrative access with invalid or missing key!";

/// One Gateway API request, as the server parsed it.
#[derive(Debug, Clone, Copy)]
pub struct AdminRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path, starting with `/tyk/` (no query).
    pub path: &'a str,
    /// Query string without '?'.
    pub query: Option<&'a str>,
    /// The `X-Tyk-Authorization` header value.
    pub secret_header: Option<&'a [u8]>,
    /// The request body.
    pub body: &'a [u8],
}

/// What the Gateway API works on.
pub struct AdminContext<'a> {
    /// The session store.
    pub store: &'a Store,
    /// The configuration in force (secret, APIs).
    pub snapshot: &'a Snapshot,
    /// Reloads tyk.conf and the API definitions; the number of APIs loaded, or why it failed.
    pub reload: &'a dyn Fn() -> Result<usize, String>,
    /// Tyk's `allow_master_keys`: whether keys without `access_rights` (valid for every API) may
    /// be created. Tyk's default is false.
    pub allow_master_keys: bool,
}

/// Answers one Gateway API request. Never panics on any input.
pub fn handle(req: &AdminRequest<'_>, ctx: &AdminContext<'_>) -> LocalResponse {
    if !secret_matches(req.secret_header, &ctx.snapshot.gateway.secret) {
        tracing::warn!(path = %req.path, "Attempted administrative access with invalid or missing key!");
        return status_message(403, "error", MSG_ADMIN_FORBIDDEN);
    }
    // Tyk strips trailing slashes before routing.
    let path = req.path.trim_end_matches('/');
    let Some(rest) = path.strip_prefix("/tyk") else {
        return not_found();
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match segments.as_slice() {
        ["keys"] => keys::collection(req, ctx),
        ["keys", "create"] if req.method == "POST" => keys::create_generated(req, ctx, true),
        ["keys", key] => keys::item(req, ctx, &percent_decode(key)),
        ["apis"] => match req.method {
            "GET" => json(
                200,
                &serde_json::Value::Array(
                    ctx.snapshot.apis.iter().map(|a| a.raw.clone()).collect(),
                ),
            ),
            _ => apis_read_only(),
        },
        ["apis", id] => match req.method {
            "GET" => {
                let id = percent_decode(id);
                match ctx.snapshot.api_by_id(&id) {
                    Some(api) => json(200, &api.raw),
                    None => status_message(404, "error", "API not found"),
                }
            }
            _ => apis_read_only(),
        },
        ["reload"] | ["reload", "group"] => match req.method {
            "GET" | "POST" => match (ctx.reload)() {
                Ok(n) => {
                    tracing::info!(apis = n, "reload requested through the Gateway API: done");
                    status_message(200, "ok", "")
                }
                Err(e) => {
                    tracing::error!("reload requested through the Gateway API failed: {e}");
                    status_message(500, "error", &format!("Reload failed: {e}"))
                }
            },
            _ => method_not_allowed(),
        },
        _ => not_found(),
    }
}

/// Constant-time comparison of the header with the configured secret.
fn secret_matches(header: Option<&[u8]>, secret: &str) -> bool {
    if secret.is_empty() {
        tracing::warn!("the Gateway API is locked because tyk.conf's \"secret\" is empty; set a secret to use /tyk/");
        return false;
    }
    let Some(given) = header else {
        return false;
    };
    let a = Sha256::digest(given);
    let b = Sha256::digest(secret.as_bytes());
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// `%XX` escapes in a path segment decoded (keys may contain characters clients escape).
fn percent_decode(segment: &str) -> String {
    if !segment.contains('%') {
        return segment.to_string();
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON response as Go's `json.Encoder` writes it (compact, trailing newline).
pub(crate) fn json<T: serde::Serialize + ?Sized>(status: u16, body: &T) -> LocalResponse {
    let mut bytes = serde_json::to_vec(body)
        .unwrap_or_else(|_| br#"{"status":"error","message":"encoding failed"}"#.to_vec());
    bytes.push(b'\n');
    LocalResponse {
        status,
        headers: Vec::new(),
        body: bytes,
        content_type: Some("application/json"),
    }
}

/// Tyk's `apiStatusMessage`: `{"status": ..., "message": ...}`.
pub(crate) fn status_message(status: u16, kind: &str, message: &str) -> LocalResponse {
    json(
        status,
        &serde_json::json!({ "status": kind, "message": message }),
    )
}

fn not_found() -> LocalResponse {
    status_message(404, "error", "Not found")
}

fn method_not_allowed() -> LocalResponse {
    status_message(405, "error", "Method not supported")
}

fn apis_read_only() -> LocalResponse {
    status_message(
        405,
        "error",
        "pipegate does not change API definitions over the Gateway API; edit the files in app_path, then call /tyk/reload",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison() {
        assert!(secret_matches(Some(b"s3cret"), "s3cret"));
        assert!(!secret_matches(Some(b"s3cre"), "s3cret"));
        assert!(!secret_matches(Some(b"s3cret "), "s3cret"));
        assert!(!secret_matches(None, "s3cret"));
        assert!(!secret_matches(Some(b""), ""));
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("abc"), "abc");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("%41"), "A");
    }
}
