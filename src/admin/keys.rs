//! `/tyk/keys`: create, read, update, delete and list keys (Tyk's `keyHandler`,
//! `createKeyHandler`, `handleAddOrUpdate`, `handleGetDetail`, `handleDeleteKey`).

use std::io::Read;
use std::time::SystemTime;

use serde::Serialize;

use super::{json, status_message, AdminContext, AdminRequest};
use crate::middleware::chain::LocalResponse;
use crate::store::auth::{generate_token, lookup_session};
use crate::store::{obfuscate_key, store_error_response, unix_secs, StoreError, TykSession};

/// Tyk's `apiModifyKeySuccess`.
#[derive(Serialize)]
struct ModifyKeySuccess<'a> {
    key: &'a str,
    status: &'static str,
    action: &'static str,
}

fn success(key: &str, action: &'static str) -> LocalResponse {
    json(
        200,
        &ModifyKeySuccess {
            key,
            status: "ok",
            action,
        },
    )
}

fn query_param(req: &AdminRequest<'_>, name: &str) -> Option<String> {
    let q = req.query?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `/tyk/keys` without a key.
pub(super) fn collection(req: &AdminRequest<'_>, ctx: &AdminContext<'_>) -> LocalResponse {
    match req.method {
        "GET" => {
            let filter = query_param(req, "filter").unwrap_or_default();
            match ctx.store.list() {
                Ok(keys) => {
                    let keys: Vec<String> = keys
                        .into_iter()
                        .filter(|k| filter.is_empty() || k.contains(&filter))
                        .collect();
                    json(200, &serde_json::json!({ "keys": keys }))
                }
                Err(e) => store_failure(&e),
            }
        }
        "POST" => create_generated(req, ctx, false),
        "PUT" | "DELETE" => item(req, ctx, ""),
        _ => super::method_not_allowed(),
    }
}

/// A Gateway API answer for a store failure (the detail is logged, not returned).
fn store_failure(e: &StoreError) -> LocalResponse {
    let resp = store_error_response(e);
    status_message(
        resp.status,
        "error",
        "Session store unavailable or failing; see the gateway log",
    )
}

/// Parses a session body; `None` when it is not session JSON.
fn parse_session(body: &[u8]) -> Option<TykSession> {
    TykSession::from_json(body).ok()
}

/// Refuses what pipegate cannot honour, with Tyk's messages where Tyk has one.
fn check_new_session(
    session: &TykSession,
    ctx: &AdminContext<'_>,
    via_create_endpoint: bool,
) -> Result<(), LocalResponse> {
    if !session.policy_ids().is_empty() {
        return Err(status_message(
            400,
            "error",
            "pipegate does not support policies (apply_policies / apply_policy_id); set rate, per, quota_max, quota_renewal_rate and access_rights on the key itself",
        ));
    }
    if session.access_rights.is_empty() && !ctx.allow_master_keys {
        tracing::error!("Master keys disallowed in configuration, key not added.");
        return Err(if via_create_endpoint {
            status_message(
                400,
                "error",
                "Failed to create key, keys must have at least one Access Rights record set.",
            )
        } else {
            status_message(
                500,
                "error",
                "Failed to create key, ensure security settings are correct.",
            )
        });
    }
    Ok(())
}

/// `POST /tyk/keys` and `POST /tyk/keys/create`: a new key named `org_id` + 32 random hex.
pub(super) fn create_generated(
    req: &AdminRequest<'_>,
    ctx: &AdminContext<'_>,
    via_create_endpoint: bool,
) -> LocalResponse {
    let Some(session) = parse_session(req.body) else {
        return if via_create_endpoint {
            status_message(500, "error", "Unmarshalling failed")
        } else {
            status_message(400, "error", "Request malformed")
        };
    };
    if let Err(resp) = check_new_session(&session, ctx, via_create_endpoint) {
        return resp;
    }
    let random = match random_hex() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot generate a key: {e}");
            return status_message(
                500,
                "error",
                "Failed to create key - no randomness available",
            );
        }
    };
    let key = format!("{}{random}", session.org_id);
    save_new(ctx, &key, session)
}

/// Stores a new (or recreated) key with fresh counters, then flushes.
fn save_new(ctx: &AdminContext<'_>, key: &str, mut session: TykSession) -> LocalResponse {
    let now = SystemTime::now();
    let secs = unix_secs(now);
    session.date_created = rfc3339(secs);
    session.last_updated = secs.to_string();
    session.quota_renews = secs + session.quota_renewal_rate;
    session.key_id.clear();
    let saved = ctx
        .store
        .reset_limits(key)
        .and_then(|_| ctx.store.put(key, &session))
        .and_then(|_| ctx.store.flush());
    match saved {
        Ok(()) => {
            tracing::info!(key = %obfuscate_key(key), org_id = %session.org_id, "Key added.");
            success(key, "added")
        }
        Err(e) => store_failure(&e),
    }
}

/// `/tyk/keys/{key}`.
pub(super) fn item(req: &AdminRequest<'_>, ctx: &AdminContext<'_>, key: &str) -> LocalResponse {
    match req.method {
        "GET" => get_key(req, ctx, key),
        "POST" => {
            let Some(session) = parse_session(req.body) else {
                return status_message(400, "error", "Request malformed");
            };
            if let Err(resp) = check_new_session(&session, ctx, false) {
                return resp;
            }
            if key.is_empty() {
                return create_generated(req, ctx, false);
            }
            let stored = generate_token(&session.org_id, key);
            save_new(ctx, &stored, session)
        }
        "PUT" => update_key(req, ctx, key),
        "DELETE" => delete_key(req, ctx, key),
        _ => super::method_not_allowed(),
    }
}

/// The org a key lookup uses: `?org_id=`, or the org of `?api_id=`'s API.
fn lookup_org(req: &AdminRequest<'_>, ctx: &AdminContext<'_>) -> String {
    if let Some(api_id) = query_param(req, "api_id") {
        if let Some(api) = ctx.snapshot.api_by_id(&api_id) {
            return api.org_id.clone();
        }
    }
    query_param(req, "org_id").unwrap_or_default()
}

fn get_key(req: &AdminRequest<'_>, ctx: &AdminContext<'_>, key: &str) -> LocalResponse {
    if query_param(req, "hashed").is_some_and(|h| !h.is_empty()) {
        return status_message(
            400,
            "error",
            "Key requested by hash but key hashing is not enabled",
        );
    }
    let org = lookup_org(req, ctx);
    let (stored, mut session) = match lookup_session(ctx.store, &org, key) {
        Ok(Some(found)) => found,
        Ok(None) => return status_message(404, "error", "Key not found"),
        Err(e) => return store_failure(&e),
    };
    if session.quota_max > 0 {
        match ctx.store.quota_usage(&stored, SystemTime::now()) {
            Ok(Some((used, renews))) => {
                session.quota_remaining = (session.quota_max - used).max(0);
                if let Some(r) = renews {
                    session.quota_renews = r;
                }
            }
            Ok(None) => session.quota_remaining = session.quota_max,
            Err(e) => return store_failure(&e),
        }
    }
    session.key_id = stored;
    // Tyk blanks basic auth passwords in key details.
    session.basic_auth_data.password.clear();
    json(200, &session)
}

fn update_key(req: &AdminRequest<'_>, ctx: &AdminContext<'_>, key: &str) -> LocalResponse {
    let Some(mut session) = parse_session(req.body) else {
        return status_message(400, "error", "Request malformed");
    };
    if !session.policy_ids().is_empty() {
        return status_message(
            400,
            "error",
            "pipegate does not support policies (apply_policies / apply_policy_id); set the limits on the key itself",
        );
    }
    let (stored, original) = match lookup_session(ctx.store, &session.org_id, key) {
        Ok(Some(found)) => found,
        Ok(None) => return status_message(404, "error", "Key is not found"),
        Err(e) => return store_failure(&e),
    };
    let suppress_reset = query_param(req, "suppress_reset").as_deref() == Some("1");
    let secs = unix_secs(SystemTime::now());
    session.date_created = original.date_created.clone();
    session.key_id.clear();
    if suppress_reset {
        session.quota_renews = original.quota_renews;
        session.last_updated = original.last_updated.clone();
    } else {
        session.last_updated = secs.to_string();
        session.quota_renews = secs + session.quota_renewal_rate;
    }
    if session.basic_auth_data.password.is_empty() {
        session.basic_auth_data = original.basic_auth_data.clone();
    }
    let reset = if suppress_reset {
        Ok(())
    } else {
        ctx.store.reset_limits(&stored)
    };
    let saved = reset
        .and_then(|_| ctx.store.put(&stored, &session))
        .and_then(|_| ctx.store.flush());
    match saved {
        Ok(()) => {
            tracing::info!(key = %obfuscate_key(&stored), "Key updated.");
            success(&stored, "modified")
        }
        Err(e) => store_failure(&e),
    }
}

fn delete_key(req: &AdminRequest<'_>, ctx: &AdminContext<'_>, key: &str) -> LocalResponse {
    let org = query_param(req, "org_id").unwrap_or_default();
    let stored = match lookup_session(ctx.store, &org, key) {
        Ok(Some((stored, _))) => stored,
        Ok(None) => return status_message(404, "error", "There is no such key found"),
        Err(e) => return store_failure(&e),
    };
    match ctx.store.delete(&stored).and_then(|_| ctx.store.flush()) {
        Ok(()) => {
            tracing::info!(key = %obfuscate_key(&stored), "Deleted key.");
            if query_param(req, "api_id").as_deref() == Some("-1") {
                // Tyk answers a delete "across all APIs" with a JSON null.
                return json(200, &serde_json::Value::Null);
            }
            success(&stored, "deleted")
        }
        Err(e) => store_failure(&e),
    }
}

/// 32 lowercase hex characters from the OS's random source (Tyk's `uuid.NewHex` length).
fn random_hex() -> std::io::Result<String> {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Unix seconds as RFC 3339 UTC (`2024-01-02T03:04:05Z`), as Go writes `time.Time` in JSON.
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn random_keys_are_hex_and_differ() {
        let a = random_hex().unwrap();
        let b = random_hex().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
