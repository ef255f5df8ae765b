//! What happens to a key on the request path, in Tyk's order and with Tyk's statuses:
//! standard token auth ([`token_auth`], Tyk's `AuthKey`), the custom-auth session cache
//! ([`cached_session`], [`store_auth_session`]), then [`enforce`] (Tyk's `KeyExpired`,
//! `AccessRightsCheck` and `RateLimitAndQuotaCheck`).
//!
//! Every store failure fails closed: the request is refused with a JSON 5xx
//! ([`store_error_response`]), never let through unauthenticated or unlimited.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::limits::{LimitSpec, Verdict};
use super::session::TykSession;
use super::{obfuscate_key, unix_secs, Store, StoreError};
use crate::config::ApiDefinition;
use crate::coprocess::object::SessionState;
use crate::middleware::chain::LocalResponse;

/// Tyk's message for a request without a key (401).
pub const MSG_AUTH_FIELD_MISSING: &str = "Authorization field missing";
/// Tyk's message for an unknown key or an API the key may not use (403).
pub const MSG_ACCESS_DISALLOWED: &str = "Access to this API has been disallowed";
/// Tyk's message for an inactive key (403).
pub const MSG_KEY_INACTIVE: &str = "Key is inactive, please renew";
/// Tyk's message for an expired key (401).
pub const MSG_KEY_EXPIRED: &str = "Key has expired, please renew";
/// Tyk's message for a key over its rate limit (429).
pub const MSG_RATE_LIMITED: &str = "Rate limit exceeded";
/// Tyk's message for a key out of quota (403).
pub const MSG_QUOTA_EXCEEDED: &str = "Quota exceeded";

/// The client's answer when the store failed: 503 when it is unreachable (retrying later can
/// work), 500 otherwise. The detail goes to the log, not to the client.
pub fn store_error_response(e: &StoreError) -> LocalResponse {
    tracing::error!("{e}");
    match e {
        StoreError::Unavailable(_) => {
            LocalResponse::error(503, "Session store unavailable", Vec::new())
        }
        _ => LocalResponse::error(500, "Session store error", Vec::new()),
    }
}

/// The organisation a key belongs to, as Tyk's `storage.TokenOrg` reads it: from a base64 JSON key
/// (`{"org":...}`, made when `hash_key_function` is set), else everything before the last 32
/// characters of a key longer than 32 (`org_id + uuid hex`), else "".
pub fn token_org(key: &str) -> String {
    if key.starts_with("eyJv") {
        let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
        let trimmed = key.trim_end_matches('=');
        if let Ok(bytes) = engine.decode(trimmed) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(org) = v.get("org").and_then(|o| o.as_str()) {
                    return org.to_string();
                }
            }
        }
    }
    if key.len() > 32 {
        if let Some(org) = key.get(..key.len() - 32) {
            return org.to_string();
        }
    }
    String::new()
}

/// Tyk's legacy `generateToken(org, key)`: the key with the org id in front (once).
pub fn generate_token(org_id: &str, key: &str) -> String {
    let bare = key.strip_prefix(org_id).unwrap_or(key);
    format!("{org_id}{bare}")
}

/// The keys Tyk's `SessionDetail` tries for `key` in organisation `org_id`: a key that does not
/// carry this org is tried with the org prefix first (custom keys are stored that way), then as
/// given.
pub fn key_candidates(org_id: &str, key: &str) -> Vec<String> {
    if token_org(key) == org_id {
        return vec![key.to_string()];
    }
    let prefixed = generate_token(org_id, key);
    if prefixed == key {
        vec![prefixed]
    } else {
        vec![prefixed, key.to_string()]
    }
}

/// Finds a key's session as Tyk does (see [`key_candidates`]); returns the key it is stored
/// under.
pub fn lookup_session(
    store: &Store,
    org_id: &str,
    key: &str,
) -> Result<Option<(String, TykSession)>, StoreError> {
    if key.is_empty() {
        return Ok(None);
    }
    store.get_first(&key_candidates(org_id, key))
}

/// Tyk's `stripBearer`: a leading "Bearer " (any case) is removed.
fn strip_bearer(value: &str) -> &str {
    match value.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => &value[7..],
        _ => value,
    }
}

/// Standard token auth (Tyk's `AuthKey`) for a protected API without plugin auth.
///
/// `header_value` is the API's auth header (`api.auth_header_name`). Missing or empty → 401
/// "Authorization field missing"; a `Bearer ` prefix is stripped; an unknown key → 403 "Access to
/// this API has been disallowed". On success returns the key the session is stored under (use it
/// for [`enforce`]) and the session as plugins see it.
pub fn token_auth(
    store: &Store,
    api: &ApiDefinition,
    header_value: Option<&str>,
) -> Result<(String, SessionState), LocalResponse> {
    let raw = header_value.unwrap_or("");
    if raw.is_empty() {
        return Err(LocalResponse::error(
            401,
            MSG_AUTH_FIELD_MISSING,
            Vec::new(),
        ));
    }
    let key = strip_bearer(raw);
    match lookup_session(store, &api.org_id, key) {
        Ok(Some((stored_key, session))) => {
            let mut proto = session.to_proto();
            proto.key_id = Some(stored_key.clone());
            Ok((stored_key, proto))
        }
        Ok(None) => {
            tracing::info!(api = %api.api_id, key = %obfuscate_key(key), "Attempted access with non-existent key.");
            Err(LocalResponse::error(403, MSG_ACCESS_DISALLOWED, Vec::new()))
        }
        Err(e) => Err(store_error_response(&e)),
    }
}

/// The ID extractor's cache (Tyk's `ExtractAndCheck`): the session stored under `id` when its
/// `id_extractor_deadline` is still ahead of `now`, in which case the auth plugin is not called.
pub fn cached_session(
    store: &Store,
    id: &str,
    now: SystemTime,
) -> Result<Option<SessionState>, LocalResponse> {
    match store.get(id) {
        Ok(Some(s)) if s.id_extractor_deadline > unix_secs(now) => {
            let mut proto = s.to_proto();
            proto.key_id = Some(id.to_string());
            Ok(Some(proto))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(store_error_response(&e)),
    }
}

/// Stores the session an auth plugin returned under `id` (the extractor's session id, else the
/// plugin's `metadata["token"]`), as Tyk does after `auth_check` (step 5): when a session is
/// already stored there, its `quota_renews` and `quota_remaining` are kept, so a plugin that
/// returns a fresh session on every call does not reset the quota. `session` is updated the same
/// way (and its `key_id` set to `id`) so later hooks see what was stored.
pub fn store_auth_session(
    store: &Store,
    id: &str,
    session: &mut SessionState,
) -> Result<(), LocalResponse> {
    let previous = store.get(id).map_err(|e| store_error_response(&e))?;
    if let Some(prev) = previous {
        session.quota_renews = Some(prev.quota_renews);
        session.quota_remaining = Some(prev.quota_remaining);
    }
    session.key_id = Some(id.to_string());
    let stored = TykSession::from_proto(session);
    store.put(id, &stored).map_err(|e| store_error_response(&e))
}

/// The limits a session carries.
pub fn limit_spec(session: &SessionState) -> LimitSpec {
    LimitSpec {
        rate: session.rate.unwrap_or(0.0),
        per: session.per.unwrap_or(0.0),
        quota_max: session.quota_max.unwrap_or(0),
        quota_renewal_rate: session.quota_renewal_rate.unwrap_or(0),
    }
}

/// Enforces an authenticated session for `api` (Tyk's `KeyExpired`, `AccessRightsCheck`,
/// `RateLimitAndQuotaCheck`, in that order):
/// - `is_inactive` → 403 "Key is inactive, please renew";
/// - `expires` >= 1 and in the past → 401 "Key has expired, please renew";
/// - non-empty `access_rights` without this API's id → 403 "Access to this API has been
///   disallowed";
/// - over `rate` per `per` seconds → 429 "Rate limit exceeded";
/// - `quota_max` > 0 used up → 403 "Quota exceeded".
///
/// `key` is the key the counters belong to (the stored key from [`token_auth`], or the id used
/// with [`store_auth_session`]). On success the session's `quota_remaining`/`quota_renews` are
/// updated and the `X-RateLimit-Limit/Remaining/Reset` headers to add to the response are
/// returned (Tyk's default: the quota's max, remaining and renewal time). Per-API `limit`s from
/// policies are not applied (pipegate has no policies); the session's own limits are.
pub fn enforce(
    store: &Store,
    key: &str,
    session: &mut SessionState,
    api: &ApiDefinition,
    now: SystemTime,
) -> Result<Vec<(String, String)>, LocalResponse> {
    if session.is_inactive.unwrap_or(false) {
        tracing::info!(api = %api.api_id, key = %obfuscate_key(key), "Attempted access from inactive key.");
        return Err(LocalResponse::error(403, MSG_KEY_INACTIVE, Vec::new()));
    }
    let expires = session.expires.unwrap_or(0);
    if expires >= 1 && now > UNIX_EPOCH + Duration::from_secs(expires as u64) {
        tracing::info!(api = %api.api_id, key = %obfuscate_key(key), "Attempted access from expired key.");
        return Err(LocalResponse::error(401, MSG_KEY_EXPIRED, Vec::new()));
    }
    if let Some(rights) = &session.access_rights {
        if !rights.is_empty() && rights.get(&api.api_id).is_none() {
            tracing::info!(api = %api.api_id, key = %obfuscate_key(key), "Attempted access to unauthorised API.");
            return Err(LocalResponse::error(403, MSG_ACCESS_DISALLOWED, Vec::new()));
        }
    }
    let spec = limit_spec(session);
    let decision = store
        .check_limits(key, &spec, now)
        .map_err(|e| store_error_response(&e))?;
    match decision.verdict {
        Verdict::RateLimited => {
            tracing::info!(api = %api.api_id, key = %obfuscate_key(key), "Key rate limit exceeded.");
            return Err(LocalResponse::error(429, MSG_RATE_LIMITED, Vec::new()));
        }
        Verdict::QuotaExceeded => {
            tracing::info!(api = %api.api_id, key = %obfuscate_key(key), "Key quota limit exceeded.");
            return Err(LocalResponse::error(403, MSG_QUOTA_EXCEEDED, Vec::new()));
        }
        Verdict::Allowed => {}
    }
    if let Some(remaining) = decision.quota_remaining {
        session.quota_remaining = Some(remaining);
    }
    if let Some(renews) = decision.quota_renews {
        session.quota_renews = Some(renews);
    }
    Ok(vec![
        (
            "X-RateLimit-Limit".to_string(),
            session.quota_max.unwrap_or(0).to_string(),
        ),
        (
            "X-RateLimit-Remaining".to_string(),
            session.quota_remaining.unwrap_or(0).to_string(),
        ),
        (
            "X-RateLimit-Reset".to_string(),
            session.quota_renews.unwrap_or(0).to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_org_reads_legacy_and_base64_keys() {
        let uuid = "0123456789abcdef0123456789abcdef";
        assert_eq!(token_org(&format!("default{uuid}")), "default");
        assert_eq!(token_org(uuid), "");
        assert_eq!(token_org("abc"), "");
        // base64 of {"org":"o1","id":"x","h":"murmur64"}
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(r#"{"org":"o1","id":"x","h":"murmur64"}"#);
        assert_eq!(token_org(&b64), "o1");
    }

    #[test]
    fn candidates_prefix_custom_keys_with_the_org() {
        assert_eq!(key_candidates("default", "abc"), vec!["defaultabc", "abc"]);
        assert_eq!(key_candidates("", "abc"), vec!["abc"]);
        let full = format!("default{}", "f".repeat(32));
        assert_eq!(key_candidates("default", &full), vec![full.clone()]);
        assert_eq!(generate_token("default", "defaultabc"), "defaultabc");
    }

    #[test]
    fn bearer_prefix_is_stripped_in_any_case() {
        assert_eq!(strip_bearer("Bearer abc"), "abc");
        assert_eq!(strip_bearer("bEaReR abc"), "abc");
        assert_eq!(strip_bearer("Bearerabc"), "Bearerabc");
        assert_eq!(strip_bearer("Bear"), "Bear");
        assert_eq!(strip_bearer("é€ééé"), "é€ééé");
    }
}
