//! Library-level tests of the session store, enforcement, the ID extractor and the Gateway API
//! (`pipegate::store`, `pipegate::admin`), against real configuration files and, for the Redis
//! backend, a real `redis-server` started by the test (install it with
//! `apt-get install redis-server`; these tests fail rather than skip without it).
//!
//! Timing: rate windows of 1 s are waited out with margins; nothing asserts that something
//! happens *quickly*, only that counts are exact.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use serde_json::{json, Value};

use pipegate::admin::{handle, AdminContext, AdminRequest, MSG_ADMIN_FORBIDDEN};
use pipegate::config::{load_snapshot, ApiDefinition, IdExtractor, Snapshot};
use pipegate::coprocess::object::{SessionState, StringMap};
use pipegate::http::response::error_body;
use pipegate::middleware::chain::LocalResponse;
use pipegate::store::{
    cached_session, enforce, id_extractor_key, store_auth_session, token_auth, BackendKind,
    ExtractorRequest, LimitSpec, Store, StoreError, TykSession, Verdict,
};

const SECRET: &str = "s3cret-for-tests";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A private directory with tyk.conf and two protected APIs; removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pipegate-store-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("apps")).unwrap();
        for (id, path) in [("protected", "/p/"), ("other", "/o/")] {
            let api = json!({
                "name": id, "api_id": id, "org_id": "default", "use_keyless": false,
                "active": true,
                "proxy": {"listen_path": path, "target_url": "http://127.0.0.1:9/",
                          "strip_listen_path": true}
            });
            std::fs::write(dir.join(format!("apps/{id}.json")), api.to_string()).unwrap();
        }
        Scratch { dir }
    }

    /// Writes tyk.conf with this `storage` object and loads the snapshot.
    fn snapshot(&self, storage: Value) -> Snapshot {
        let conf = json!({
            "listen_port": 8080, "secret": SECRET, "app_path": "apps/", "storage": storage
        });
        let path = self.dir.join("tyk.conf");
        std::fs::write(&path, conf.to_string()).unwrap();
        load_snapshot(&path).unwrap_or_else(|e| panic!("config did not load: {e:?}"))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn api<'a>(snap: &'a Snapshot, id: &str) -> &'a ApiDefinition {
    snap.api_by_id(id).expect("api loaded")
}

fn embedded_store(snap: &Snapshot) -> Store {
    let store = Store::from_config(&snap.gateway).expect("store opens");
    assert_eq!(store.kind(), BackendKind::Embedded);
    store
}

fn proto(json: Value) -> SessionState {
    TykSession::from_json(json.to_string().as_bytes())
        .expect("session JSON")
        .to_proto()
}

fn body_json(resp: &LocalResponse) -> Value {
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&resp.body)
        )
    })
}

fn assert_error(resp: &LocalResponse, status: u16, message: &str) {
    assert_eq!(resp.status, status, "status for {message:?}");
    assert_eq!(
        String::from_utf8_lossy(&resp.body),
        error_body(message),
        "body for status {status}"
    );
    assert_eq!(resp.content_type, Some("application/json"));
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Calls the Gateway API.
fn admin(
    ctx: &AdminContext<'_>,
    method: &str,
    path_and_query: &str,
    secret: Option<&str>,
    body: &str,
) -> LocalResponse {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    handle(
        &AdminRequest {
            method,
            path,
            query,
            secret_header: secret.map(str::as_bytes),
            body: body.as_bytes(),
        },
        ctx,
    )
}

fn no_reload() -> Result<usize, String> {
    Ok(2)
}

// ---------------------------------------------------------------------------------------------
// Enforcement
// ---------------------------------------------------------------------------------------------

#[test]
fn enforcement_answers_with_tyks_statuses_and_messages() {
    let s = Scratch::new("enforce");
    let snap = s.snapshot(json!({"type": "embedded"}));
    let store = embedded_store(&snap);
    let api = api(&snap, "protected");
    let now = SystemTime::now();

    let mut inactive = proto(json!({"is_inactive": true}));
    let err = enforce(&store, "k1", &mut inactive, api, now).unwrap_err();
    assert_error(&err, 403, "Key is inactive, please renew");

    let mut expired = proto(json!({"expires": unix_now() - 10}));
    let err = enforce(&store, "k2", &mut expired, api, now).unwrap_err();
    assert_error(&err, 401, "Key has expired, please renew");

    // expires in the future, 0 and -1 all pass.
    for expires in [unix_now() + 3600, 0, -1] {
        let mut ok = proto(json!({ "expires": expires }));
        enforce(&store, "k3", &mut ok, api, now)
            .unwrap_or_else(|e| panic!("expires {expires} refused: {}", e.status));
    }

    let mut elsewhere = proto(json!({"access_rights": {"other": {"api_id": "other"}}}));
    let err = enforce(&store, "k4", &mut elsewhere, api, now).unwrap_err();
    assert_error(&err, 403, "Access to this API has been disallowed");
    // The same key on its own API passes; an empty access_rights is valid everywhere.
    enforce(
        &store,
        "k4",
        &mut elsewhere,
        crate::api(&snap, "other"),
        now,
    )
    .unwrap();
    let mut master = proto(json!({}));
    enforce(&store, "k5", &mut master, api, now).unwrap();

    // Inactive is checked before expiry, as Tyk's KeyExpired does.
    let mut both = proto(json!({"is_inactive": true, "expires": 1}));
    assert_eq!(
        enforce(&store, "k6", &mut both, api, now)
            .unwrap_err()
            .status,
        403
    );
}

#[test]
fn rate_limit_counts_are_exact_and_renew_after_the_window() {
    let s = Scratch::new("rate");
    let snap = s.snapshot(Value::Null);
    let store = embedded_store(&snap);
    let api = api(&snap, "protected");
    let mut session = proto(json!({"rate": 3, "per": 1}));

    for i in 0..3 {
        enforce(&store, "rk", &mut session, api, SystemTime::now())
            .unwrap_or_else(|e| panic!("request {i} refused with {}", e.status));
    }
    let err = enforce(&store, "rk", &mut session, api, SystemTime::now()).unwrap_err();
    assert_error(&err, 429, "Rate limit exceeded");
    // Another key has its own window.
    enforce(&store, "rk-other", &mut session, api, SystemTime::now()).unwrap();

    std::thread::sleep(Duration::from_millis(1_150));
    for i in 0..3 {
        enforce(&store, "rk", &mut session, api, SystemTime::now())
            .unwrap_or_else(|e| panic!("after the window, request {i} refused: {}", e.status));
    }
    assert_eq!(
        enforce(&store, "rk", &mut session, api, SystemTime::now())
            .unwrap_err()
            .status,
        429
    );
}

#[test]
fn rate_limit_is_a_sliding_window() {
    // Driven by the `now` argument: the embedded backend uses the caller's clock.
    let s = Scratch::new("sliding");
    let snap = s.snapshot(Value::Null);
    let store = embedded_store(&snap);
    let api = api(&snap, "protected");
    let mut session = proto(json!({"rate": 2, "per": 10}));
    let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs);

    enforce(&store, "sw", &mut session, api, at(0.0)).unwrap();
    enforce(&store, "sw", &mut session, api, at(6.0)).unwrap();
    // A fixed 10 s window starting at 0 would admit this one at 10.5 *and* another at 10.6;
    // the sliding log frees exactly one slot (the request at 0 aged out).
    assert_eq!(
        enforce(&store, "sw", &mut session, api, at(9.9))
            .unwrap_err()
            .status,
        429
    );
    enforce(&store, "sw", &mut session, api, at(10.5)).unwrap();
    assert_eq!(
        enforce(&store, "sw", &mut session, api, at(10.6))
            .unwrap_err()
            .status,
        429
    );
    enforce(&store, "sw", &mut session, api, at(16.1)).unwrap();
}

#[test]
fn quota_is_used_up_then_renewed_and_reported_in_headers() {
    let s = Scratch::new("quota");
    let snap = s.snapshot(Value::Null);
    let store = embedded_store(&snap);
    let api = api(&snap, "protected");
    let mut session = proto(json!({"quota_max": 2, "quota_renewal_rate": 60, "rate": -1}));
    let t0 = UNIX_EPOCH + Duration::from_secs(2_000_000);

    let h = enforce(&store, "qk", &mut session, api, t0).unwrap();
    assert_eq!(header(&h, "X-RateLimit-Limit"), "2");
    assert_eq!(header(&h, "X-RateLimit-Remaining"), "1");
    assert_eq!(header(&h, "X-RateLimit-Reset"), "2000060");
    assert_eq!(session.quota_remaining, Some(1));
    assert_eq!(session.quota_renews, Some(2_000_060));

    let h = enforce(&store, "qk", &mut session, api, t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(header(&h, "X-RateLimit-Remaining"), "0");
    let err = enforce(
        &store,
        "qk",
        &mut session,
        api,
        t0 + Duration::from_secs(59),
    )
    .unwrap_err();
    assert_error(&err, 403, "Quota exceeded");
    // Refused requests are not counted: after the renewal the whole quota is there again.
    let h = enforce(
        &store,
        "qk",
        &mut session,
        api,
        t0 + Duration::from_secs(61),
    )
    .unwrap();
    assert_eq!(header(&h, "X-RateLimit-Remaining"), "1");
    assert_eq!(header(&h, "X-RateLimit-Reset"), "2000121");

    // Real time, renewal of 1 s.
    let mut short = proto(json!({"quota_max": 1, "quota_renewal_rate": 1}));
    enforce(&store, "qshort", &mut short, api, SystemTime::now()).unwrap();
    assert_eq!(
        enforce(&store, "qshort", &mut short, api, SystemTime::now())
            .unwrap_err()
            .status,
        403
    );
    std::thread::sleep(Duration::from_millis(1_200));
    enforce(&store, "qshort", &mut short, api, SystemTime::now()).unwrap();

    // Unlimited sessions still get Tyk's quota headers.
    let mut unlimited = proto(json!({"quota_max": -1, "quota_remaining": 0, "quota_renews": 7}));
    let h = enforce(&store, "unl", &mut unlimited, api, SystemTime::now()).unwrap();
    assert_eq!(
        (
            header(&h, "X-RateLimit-Limit"),
            header(&h, "X-RateLimit-Remaining"),
            header(&h, "X-RateLimit-Reset")
        ),
        ("-1", "0", "7")
    );
}

// ---------------------------------------------------------------------------------------------
// Token auth, ID extractor, auth-plugin sessions
// ---------------------------------------------------------------------------------------------

#[test]
fn token_auth_follows_tyks_auth_key_rules() {
    let s = Scratch::new("token");
    let snap = s.snapshot(Value::Null);
    let store = embedded_store(&snap);
    let api = api(&snap, "protected");
    let stored = TykSession::from_json(
        br#"{"org_id": "default", "rate": 10, "per": 1, "meta_data": {"tier": {"level": 2}}}"#,
    )
    .unwrap();
    store.put("defaultcustom", &stored).unwrap();
    store.put("plainkey", &stored).unwrap();

    assert_error(
        &token_auth(&store, api, None).unwrap_err(),
        401,
        "Authorization field missing",
    );
    assert_error(
        &token_auth(&store, api, Some("")).unwrap_err(),
        401,
        "Authorization field missing",
    );
    assert_error(
        &token_auth(&store, api, Some("nope")).unwrap_err(),
        403,
        "Access to this API has been disallowed",
    );
    // "Bearer " alone leaves an empty key: unknown, not missing (Tyk strips after the check).
    assert_eq!(
        token_auth(&store, api, Some("Bearer ")).unwrap_err().status,
        403
    );

    // A custom key is found through the API's org prefix, Bearer in any case is stripped.
    let (key, session) = token_auth(&store, api, Some("bearer custom")).unwrap();
    assert_eq!(key, "defaultcustom");
    assert_eq!(session.rate, Some(10.0));
    assert_eq!(session.key_id.as_deref(), Some("defaultcustom"));
    // Non-string metadata reaches plugins as JSON text.
    assert_eq!(
        session
            .metadata
            .as_ref()
            .and_then(|m| m.get("tier"))
            .map(String::as_str),
        Some(r#"{"level":2}"#)
    );
    let (key, _) = token_auth(&store, api, Some("plainkey")).unwrap();
    assert_eq!(key, "plainkey");
}

fn extractor(from: &str, with: &str) -> IdExtractor {
    IdExtractor {
        extract_from: from.into(),
        extract_with: with.into(),
        header_name: "Authorization".into(),
        param_name: "auth".into(),
        regex_expression: String::new(),
        regex_match_index: 0,
        xpath_expression: String::new(),
    }
}

fn extract(
    api: &ApiDefinition,
    ex: &IdExtractor,
    headers: &[(&str, &str)],
    method: &str,
    query: Option<&str>,
    body: Option<&[u8]>,
) -> Result<String, LocalResponse> {
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
    };
    id_extractor_key(
        api,
        ex,
        &ExtractorRequest {
            method,
            header: &lookup,
            query,
            body,
        },
    )
}

#[test]
fn id_extractor_builds_tyks_session_ids() {
    let s = Scratch::new("extractor");
    let snap = s.snapshot(Value::Null);
    let api = api(&snap, "protected");

    let ex = extractor("header", "value");
    let id = extract(api, &ex, &[("authorization", "abc")], "GET", None, None).unwrap();
    assert_eq!(id, format!("default{}", md5_hex("abc")));
    assert_error(
        &extract(api, &ex, &[], "GET", None, None).unwrap_err(),
        400,
        "Authorization field missing",
    );
    assert_eq!(
        extract(api, &ex, &[("Authorization", "")], "GET", None, None)
            .unwrap_err()
            .status,
        400
    );

    // Form: urlencoded body values first, then query values, joined with "".
    let ex = extractor("form", "value");
    let ct = [(
        "Content-Type",
        "application/x-www-form-urlencoded; charset=utf-8",
    )];
    let id = extract(api, &ex, &ct, "POST", Some("auth=2"), Some(b"auth=1&x=y")).unwrap();
    assert_eq!(id, format!("default{}", md5_hex("12")));
    // A GET body is not a form.
    let id = extract(api, &ex, &ct, "GET", Some("auth=2"), Some(b"auth=1")).unwrap();
    assert_eq!(id, format!("default{}", md5_hex("2")));
    assert_eq!(
        extract(api, &ex, &ct, "POST", None, Some(b"x=1"))
            .unwrap_err()
            .status,
        400
    );

    // Regex: the index picks among whole matches (Tyk's FindAllString quirk).
    let mut ex = extractor("header", "regex");
    ex.regex_expression = "[0-9]+".into();
    ex.regex_match_index = 1;
    let id = extract(
        api,
        &ex,
        &[("Authorization", "prefix-12345-678")],
        "GET",
        None,
        None,
    )
    .unwrap();
    assert_eq!(id, format!("default{}", md5_hex("678")));
    ex.regex_match_index = 2;
    assert_eq!(
        extract(
            api,
            &ex,
            &[("Authorization", "prefix-12345-678")],
            "GET",
            None,
            None
        )
        .unwrap_err()
        .status,
        400
    );
    let mut ex = extractor("body", "regex");
    ex.regex_expression = "user=[a-z]+".into();
    let id = extract(api, &ex, &[], "POST", None, Some(b"{\"q\": \"user=bob\"}")).unwrap();
    assert_eq!(id, format!("default{}", md5_hex("user=bob")));
    ex.regex_expression = "(unclosed".into();
    assert_eq!(
        extract(api, &ex, &[], "POST", None, Some(b"x"))
            .unwrap_err()
            .status,
        400
    );
}

#[test]
fn auth_plugin_sessions_are_cached_and_keep_their_quota() {
    let s = Scratch::new("authcache");
    let snap = s.snapshot(Value::Null);
    let store = embedded_store(&snap);
    let api = api(&snap, "protected");
    let id = format!("default{}", md5_hex("abc"));
    let now = SystemTime::now();

    assert!(cached_session(&store, &id, now).unwrap().is_none());

    // What Tyk's Python test plugin returns: quota_max 1, renewal 60, a fresh session each call.
    let fresh = || {
        let mut md = StringMap::new();
        md.insert("token", "abc".to_string());
        SessionState {
            quota_max: Some(1),
            quota_renewal_rate: Some(60),
            id_extractor_deadline: Some(unix_now() + 60),
            metadata: Some(md),
            ..SessionState::default()
        }
    };
    let mut first = fresh();
    store_auth_session(&store, &id, &mut first).unwrap();
    assert_eq!(first.key_id.as_deref(), Some(id.as_str()));
    enforce(&store, &id, &mut first, api, now).unwrap();

    // Within the deadline the cache answers, with the stored session.
    let cached = cached_session(&store, &id, now)
        .unwrap()
        .expect("cache hit");
    assert_eq!(cached.quota_max, Some(1));
    // Past the deadline it does not.
    assert!(cached_session(&store, &id, now + Duration::from_secs(61))
        .unwrap()
        .is_none());

    // The plugin's fresh session does not reset the quota: the second call is refused.
    let mut second = fresh();
    store_auth_session(&store, &id, &mut second).unwrap();
    assert_error(
        &enforce(&store, &id, &mut second, api, now).unwrap_err(),
        403,
        "Quota exceeded",
    );

    // Tyk's test then reads the key through the Gateway API (it is stored under the id) and
    // deletes it, after which the quota starts over.
    let reload = no_reload;
    let ctx = AdminContext {
        store: &store,
        snapshot: &snap,
        reload: &reload,
        allow_master_keys: false,
    };
    let got = admin(&ctx, "GET", &format!("/tyk/keys/{id}"), Some(SECRET), "");
    assert_eq!(got.status, 200);
    assert_eq!(body_json(&got)["meta_data"]["token"], "abc");
    assert_eq!(body_json(&got)["quota_remaining"], 0);
    let del = admin(&ctx, "DELETE", &format!("/tyk/keys/{id}"), Some(SECRET), "");
    assert_eq!(body_json(&del)["action"], "deleted");
    let mut third = fresh();
    store_auth_session(&store, &id, &mut third).unwrap();
    enforce(&store, &id, &mut third, api, now).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Gateway API
// ---------------------------------------------------------------------------------------------

#[test]
fn gateway_api_requires_the_secret() {
    let s = Scratch::new("secret");
    let snap = s.snapshot(Value::Null);
    let store = embedded_store(&snap);
    let reload = no_reload;
    let ctx = AdminContext {
        store: &store,
        snapshot: &snap,
        reload: &reload,
        allow_master_keys: false,
    };
    for secret in [None, Some("wrong"), Some(""), Some("s3cret-for-tests ")] {
        for (method, path) in [
            ("GET", "/tyk/keys"),
            ("POST", "/tyk/keys/create"),
            ("GET", "/tyk/nothing"),
        ] {
            let r = admin(&ctx, method, path, secret, "{}");
            assert_eq!(r.status, 403, "{method} {path} with {secret:?}");
            assert_eq!(
                body_json(&r),
                json!({"status": "error", "message": MSG_ADMIN_FORBIDDEN})
            );
        }
    }
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn gateway_api_key_crud_in_tyks_shapes() {
    let s = Scratch::new("crud");
    let snap = s.snapshot(Value::Null);
    let store = embedded_store(&snap);
    let reloads = AtomicUsize::new(0);
    let reload = || {
        reloads.fetch_add(1, Ordering::SeqCst);
        Ok(2)
    };
    let ctx = AdminContext {
        store: &store,
        snapshot: &snap,
        reload: &reload,
        allow_master_keys: false,
    };
    let key_body = json!({
        "org_id": "default", "rate": 100, "per": 1, "quota_max": 5, "quota_renewal_rate": 3600,
        "quota_remaining": 5, "expires": -1,
        "access_rights": {"protected": {"api_id": "protected", "api_name": "p", "versions": ["Default"]}},
        "meta_data": {"testkey": {"nestedkey": "nestedvalue"}, "testkey2": "testvalue"},
        "some_future_field": {"kept": true}
    })
    .to_string();

    // Create (generated key: org id + 32 hex).
    let created = admin(&ctx, "POST", "/tyk/keys/create", Some(SECRET), &key_body);
    assert_eq!(
        created.status,
        200,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert!(created.body.ends_with(b"\n"));
    let c = body_json(&created);
    assert_eq!(
        (c["status"].as_str(), c["action"].as_str()),
        (Some("ok"), Some("added"))
    );
    let key = c["key"].as_str().unwrap().to_string();
    assert!(
        key.starts_with("default") && key.len() == "default".len() + 32,
        "{key}"
    );

    // The key works for its API, with plugins seeing the metadata as Tyk sends it.
    let protected = api(&snap, "protected");
    let (stored_key, mut session) = token_auth(&store, protected, Some(&key)).unwrap();
    assert_eq!(stored_key, key);
    let md = session.metadata.clone().unwrap();
    assert_eq!(md.get("testkey2").map(String::as_str), Some("testvalue"));
    assert!(md.get("testkey").unwrap().contains("nestedkey"));
    enforce(
        &store,
        &stored_key,
        &mut session,
        protected,
        SystemTime::now(),
    )
    .unwrap();

    // Read: Tyk's internal JSON, quota from the live counter, unknown fields kept.
    let got = admin(&ctx, "GET", &format!("/tyk/keys/{key}"), Some(SECRET), "");
    assert_eq!(got.status, 200);
    let g = body_json(&got);
    assert_eq!(g["meta_data"]["testkey"]["nestedkey"], "nestedvalue");
    assert_eq!(g["access_rights"]["protected"]["api_id"], "protected");
    assert_eq!(g["quota_remaining"], 4);
    assert_eq!(g["key_id"], key.as_str());
    assert_eq!(g["some_future_field"]["kept"], true);
    assert_eq!(g["hmac_string"], "");
    assert!(
        g.get("metadata").is_none(),
        "internal names, not protobuf ones"
    );

    // List, with and without a filter.
    let list = body_json(&admin(&ctx, "GET", "/tyk/keys", Some(SECRET), ""));
    assert_eq!(list, json!({"keys": [key.clone()]}));
    let none = body_json(&admin(
        &ctx,
        "GET",
        "/tyk/keys?filter=zzz",
        Some(SECRET),
        "",
    ));
    assert_eq!(none, json!({"keys": []}));

    // Update: modified, quota reset (without suppress_reset).
    let mut changed: Value = serde_json::from_str(&key_body).unwrap();
    changed["rate"] = json!(7);
    let put = admin(
        &ctx,
        "PUT",
        &format!("/tyk/keys/{key}"),
        Some(SECRET),
        &changed.to_string(),
    );
    assert_eq!(
        body_json(&put),
        json!({"key": key.clone(), "status": "ok", "action": "modified"})
    );
    let g = body_json(&admin(
        &ctx,
        "GET",
        &format!("/tyk/keys/{key}"),
        Some(SECRET),
        "",
    ));
    assert_eq!(
        (g["rate"].as_f64(), g["quota_remaining"].as_i64()),
        (Some(7.0), Some(5))
    );
    let missing = admin(&ctx, "PUT", "/tyk/keys/nosuchkey", Some(SECRET), &key_body);
    assert_eq!(
        (missing.status, body_json(&missing)),
        (
            404,
            json!({"status": "error", "message": "Key is not found"})
        )
    );

    // Custom key: stored as org id + name, found by its bare name.
    let custom = admin(&ctx, "POST", "/tyk/keys/mykey", Some(SECRET), &key_body);
    assert_eq!(body_json(&custom)["key"], "defaultmykey");
    assert_eq!(
        admin(
            &ctx,
            "GET",
            "/tyk/keys/mykey?org_id=default",
            Some(SECRET),
            ""
        )
        .status,
        200
    );
    assert_eq!(
        admin(
            &ctx,
            "GET",
            "/tyk/keys/mykey?api_id=protected",
            Some(SECRET),
            ""
        )
        .status,
        200
    );
    assert_eq!(
        token_auth(&store, protected, Some("mykey")).unwrap().0,
        "defaultmykey"
    );

    // Delete.
    let del = admin(
        &ctx,
        "DELETE",
        &format!("/tyk/keys/{key}"),
        Some(SECRET),
        "",
    );
    assert_eq!(
        body_json(&del),
        json!({"key": key.clone(), "status": "ok", "action": "deleted"})
    );
    let gone = admin(&ctx, "GET", &format!("/tyk/keys/{key}"), Some(SECRET), "");
    assert_eq!(
        (gone.status, body_json(&gone)),
        (404, json!({"status": "error", "message": "Key not found"}))
    );
    let again = admin(
        &ctx,
        "DELETE",
        &format!("/tyk/keys/{key}"),
        Some(SECRET),
        "",
    );
    assert_eq!(body_json(&again)["message"], "There is no such key found");
    assert_eq!(
        token_auth(&store, protected, Some(&key))
            .unwrap_err()
            .status,
        403
    );

    // Refusals: malformed bodies, master keys (Tyk's default), policies.
    let bad = admin(&ctx, "POST", "/tyk/keys", Some(SECRET), "{not json");
    assert_eq!(
        (bad.status, body_json(&bad)["message"].as_str()),
        (400, Some("Request malformed"))
    );
    let bad = admin(&ctx, "POST", "/tyk/keys/create", Some(SECRET), "[]");
    assert_eq!(
        (bad.status, body_json(&bad)["message"].as_str()),
        (500, Some("Unmarshalling failed"))
    );
    let master = admin(
        &ctx,
        "POST",
        "/tyk/keys/create",
        Some(SECRET),
        r#"{"rate": 1}"#,
    );
    assert_eq!(
        (master.status, body_json(&master)["message"].as_str()),
        (
            400,
            Some("Failed to create key, keys must have at least one Access Rights record set.")
        )
    );
    let master = admin(&ctx, "POST", "/tyk/keys", Some(SECRET), r#"{"rate": 1}"#);
    assert_eq!(master.status, 500);
    let pol = admin(
        &ctx,
        "POST",
        "/tyk/keys/create",
        Some(SECRET),
        r#"{"apply_policies": ["p1"], "access_rights": {"protected": {"api_id": "protected"}}}"#,
    );
    assert_eq!(pol.status, 400);
    assert!(body_json(&pol)["message"]
        .as_str()
        .unwrap()
        .contains("policies"));
    let allow = AdminContext {
        allow_master_keys: true,
        ..ctx
    };
    let created = admin(
        &allow,
        "POST",
        "/tyk/keys",
        Some(SECRET),
        r#"{"org_id": "default"}"#,
    );
    assert_eq!(created.status, 200);

    // APIs and reload.
    let apis = body_json(&admin(&ctx, "GET", "/tyk/apis", Some(SECRET), ""));
    let mut ids: Vec<&str> = apis
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["api_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["other", "protected"]);
    let one = body_json(&admin(&ctx, "GET", "/tyk/apis/protected", Some(SECRET), ""));
    assert_eq!(one["proxy"]["listen_path"], "/p/");
    let none = admin(&ctx, "GET", "/tyk/apis/nope", Some(SECRET), "");
    assert_eq!(
        (none.status, body_json(&none)["message"].as_str()),
        (404, Some("API not found"))
    );
    for path in ["/tyk/reload", "/tyk/reload/", "/tyk/reload/group"] {
        let r = admin(&ctx, "GET", path, Some(SECRET), "");
        assert_eq!(
            body_json(&r),
            json!({"status": "ok", "message": ""}),
            "{path}"
        );
    }
    assert_eq!(reloads.load(Ordering::SeqCst), 3);
    let failing = || Err("apps/x.json: bad".to_string());
    let fctx = AdminContext {
        reload: &failing,
        ..ctx
    };
    let r = admin(&fctx, "GET", "/tyk/reload", Some(SECRET), "");
    assert_eq!(r.status, 500);
    assert!(body_json(&r)["message"]
        .as_str()
        .unwrap()
        .contains("apps/x.json"));
    assert_eq!(
        admin(&ctx, "GET", "/tyk/unknown", Some(SECRET), "").status,
        404
    );
}

// ---------------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------------

#[test]
fn embedded_store_file_survives_a_restart() {
    let s = Scratch::new("persist");
    let snap = s.snapshot(json!({"type": "embedded", "file": "data/sessions.json"}));
    std::fs::create_dir_all(s.path("data")).unwrap();
    let reload = no_reload;
    let key;
    {
        let store = embedded_store(&snap);
        let ctx = AdminContext {
            store: &store,
            snapshot: &snap,
            reload: &reload,
            allow_master_keys: false,
        };
        let body = json!({"org_id": "default", "quota_max": 3, "quota_renewal_rate": 3600,
                          "access_rights": {"protected": {"api_id": "protected"}},
                          "meta_data": {"who": "alice"}});
        let created = admin(
            &ctx,
            "POST",
            "/tyk/keys/create",
            Some(SECRET),
            &body.to_string(),
        );
        key = body_json(&created)["key"].as_str().unwrap().to_string();
        // Written before the API answered.
        assert!(s.path("data/sessions.json").exists());
        let (k, mut session) = token_auth(&store, api(&snap, "protected"), Some(&key)).unwrap();
        enforce(
            &store,
            &k,
            &mut session,
            api(&snap, "protected"),
            SystemTime::now(),
        )
        .unwrap();
    } // dropped: the quota usage is flushed.

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.path("data/sessions.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "sessions carry secrets");
    }
    let leftovers: Vec<_> = std::fs::read_dir(s.path("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");

    let store = embedded_store(&snap);
    let reload = no_reload;
    let ctx = AdminContext {
        store: &store,
        snapshot: &snap,
        reload: &reload,
        allow_master_keys: false,
    };
    let got = body_json(&admin(
        &ctx,
        "GET",
        &format!("/tyk/keys/{key}"),
        Some(SECRET),
        "",
    ));
    assert_eq!(got["meta_data"]["who"], "alice");
    assert_eq!(
        got["quota_remaining"], 2,
        "quota usage survives the restart"
    );
    drop(store);

    // A corrupt file is an error at start, not an empty store.
    std::fs::write(s.path("data/sessions.json"), "{ not json").unwrap();
    let err = Store::from_config(&snap.gateway).unwrap_err();
    assert!(
        matches!(err, StoreError::Io(ref m) if m.contains("sessions.json")),
        "{err}"
    );
    // A file in a directory that does not exist is refused up front.
    let snap2 = s.snapshot(json!({"type": "embedded", "file": "nodir/s.json"}));
    assert!(Store::from_config(&snap2.gateway).is_err());
    // Unsupported storage settings say what to change.
    let snap3 = s.snapshot(json!({"type": "redis", "enable_cluster": true}));
    let err = Store::from_config(&snap3.gateway).unwrap_err();
    assert!(err.to_string().contains("Cluster"), "{err}");
}

#[test]
fn session_json_converts_like_tyk() {
    let raw = json!({
        "rate": 5, "per": 60.0, "quota_max": 10.0, "expires": null, "hmac_string": "h",
        "basic_auth_data": {"password": "pw", "hash_type": "bcrypt"},
        "meta_data": {"n": 1, "s": "x", "o": {"a": [1, 2]}}, "tags": null,
        "smoothing": {"enabled": true}
    });
    let session = TykSession::from_json(raw.to_string().as_bytes()).unwrap();
    assert_eq!((session.quota_max, session.expires), (10, 0));
    let p = session.to_proto();
    assert_eq!(p.hmac_secret.as_deref(), Some("h"));
    assert_eq!(
        p.basic_auth_data.as_ref().unwrap().hash.as_deref(),
        Some("bcrypt")
    );
    let md = p.metadata.as_ref().unwrap();
    assert_eq!(md.get("n").map(String::as_str), Some("1"));
    assert_eq!(md.get("s").map(String::as_str), Some("x"));
    assert_eq!(md.get("o").map(String::as_str), Some(r#"{"a":[1,2]}"#));
    // Back from a plugin: metadata stays strings, internal names are used.
    let back: Value = serde_json::from_str(&TykSession::from_proto(&p).to_json()).unwrap();
    assert_eq!(back["meta_data"]["o"], r#"{"a":[1,2]}"#);
    assert_eq!(back["hmac_string"], "h");
    assert_eq!(back["basic_auth_data"]["hash_type"], "bcrypt");
    // Unknown fields survive a read-write through the store's type.
    let again: Value = serde_json::from_str(&session.to_json()).unwrap();
    assert_eq!(again["smoothing"]["enabled"], true);
    assert!(TykSession::from_json(br#"{"quota_max": 1.5}"#).is_err());
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// A `redis-server` started by the test on a free loopback port, killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer { child: None, port };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it with `apt-get install redis-server`")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn storage(&self) -> Value {
        json!({"type": "redis", "host": "127.0.0.1", "port": self.port, "timeout": 2})
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn redis_stores(server: &RedisServer, s: &Scratch) -> (Snapshot, Store, Store) {
    let snap = s.snapshot(server.storage());
    let a = Store::from_config(&snap.gateway).unwrap();
    let b = Store::from_config(&snap.gateway).unwrap();
    assert_eq!(a.kind(), BackendKind::Redis);
    a.ping().unwrap();
    (snap, a, b)
}

#[test]
fn redis_two_gateways_share_rate_limit_and_quota_exactly() {
    let server = RedisServer::start();
    let s = Scratch::new("redis-share");
    let (snap, a, b) = redis_stores(&server, &s);
    let api = api(&snap, "protected");

    // A session written through one gateway is read by the other, in Tyk's format.
    let session = TykSession::from_json(
        br#"{"org_id": "default", "rate": 4, "per": 30, "quota_max": 6, "quota_renewal_rate": 3600,
             "access_rights": {"protected": {"api_id": "protected"}}}"#,
    )
    .unwrap();
    a.put("shared", &session).unwrap();
    let (key, mut sa) = token_auth(&b, api, Some("shared")).unwrap();
    let mut sb = sa.clone();
    assert_eq!(key, "shared");
    assert_eq!(b.list().unwrap(), vec!["shared".to_string()]);

    // Rate 4 per 30 s: four requests alternating between the gateways pass, the fifth is
    // refused on either.
    for i in 0..4 {
        let (store, sess) = if i % 2 == 0 {
            (&a, &mut sa)
        } else {
            (&b, &mut sb)
        };
        enforce(store, &key, sess, api, SystemTime::now())
            .unwrap_or_else(|e| panic!("request {i} refused: {}", e.status));
    }
    assert_error(
        &enforce(&a, &key, &mut sa, api, SystemTime::now()).unwrap_err(),
        429,
        "Rate limit exceeded",
    );
    assert_eq!(
        enforce(&b, &key, &mut sb, api, SystemTime::now())
            .unwrap_err()
            .status,
        429
    );
    // The quota counted the four admitted requests once each.
    assert_eq!(sb.quota_remaining, Some(2));
    let (used, renews) = a.quota_usage(&key, SystemTime::now()).unwrap().unwrap();
    assert_eq!(used, 4);
    assert!(renews.unwrap() > unix_now() + 3500);

    // Quota shared exactly under concurrency: 8 threads × 5 requests over both gateways,
    // quota 13 → exactly 13 admitted.
    let spec = LimitSpec {
        rate: 0.0,
        per: 0.0,
        quota_max: 13,
        quota_renewal_rate: 3600,
    };
    let a = Arc::new(a);
    let b = Arc::new(b);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let store = if t % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            std::thread::spawn(move || {
                (0..5)
                    .filter(|_| {
                        store
                            .check_limits("concurrent", &spec, SystemTime::now())
                            .unwrap()
                            .verdict
                            == Verdict::Allowed
                    })
                    .count()
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 13);

    // Rate limit renews after the window (1 s here), on both gateways.
    let fast = LimitSpec {
        rate: 2.0,
        per: 1.0,
        quota_max: 0,
        quota_renewal_rate: 0,
    };
    let verdict = |s: &Store| {
        s.check_limits("fast", &fast, SystemTime::now())
            .unwrap()
            .verdict
    };
    assert_eq!(verdict(&a), Verdict::Allowed);
    assert_eq!(verdict(&b), Verdict::Allowed);
    assert_eq!(verdict(&a), Verdict::RateLimited);
    std::thread::sleep(Duration::from_millis(1_150));
    assert_eq!(verdict(&b), Verdict::Allowed);
    assert_eq!(verdict(&a), Verdict::Allowed);
    assert_eq!(verdict(&b), Verdict::RateLimited);

    // Delete clears the session and its counters for everyone.
    assert!(a.delete("shared").unwrap());
    assert!(b.get("shared").unwrap().is_none());
    assert!(b
        .quota_usage("shared", SystemTime::now())
        .unwrap()
        .is_none());
}

#[test]
fn redis_outage_is_a_clean_error_and_the_store_recovers() {
    let mut server = RedisServer::start();
    let s = Scratch::new("redis-outage");
    let (snap, store, _) = redis_stores(&server, &s);
    let api = api(&snap, "protected");
    store
        .put(
            "k",
            &TykSession::from_json(br#"{"rate": 100, "per": 1, "quota_max": 100}"#).unwrap(),
        )
        .unwrap();
    let (key, mut session) = token_auth(&store, api, Some("k")).unwrap();
    enforce(&store, &key, &mut session, api, SystemTime::now()).unwrap();

    server.kill();
    let err = store.get("k").unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&server.port.to_string()), "{err}");
    // Auth and limits fail closed with a JSON 503.
    let resp = token_auth(&store, api, Some("k")).unwrap_err();
    assert_error(&resp, 503, "Session store unavailable");
    let resp = enforce(&store, &key, &mut session, api, SystemTime::now()).unwrap_err();
    assert_eq!(resp.status, 503);
    // The Gateway API reports it too.
    let reload = no_reload;
    let ctx = AdminContext {
        store: &store,
        snapshot: &snap,
        reload: &reload,
        allow_master_keys: false,
    };
    assert_eq!(
        admin(&ctx, "GET", "/tyk/keys", Some(SECRET), "").status,
        503
    );

    // Redis comes back (empty: it saved nothing); the same Store reconnects by itself.
    server.spawn();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.ping() {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("store did not recover: {e}"),
        }
    }
    assert!(store.get("k").unwrap().is_none());
    store
        .put("k", &TykSession::from_json(br#"{"quota_max": 1}"#).unwrap())
        .unwrap();
    let (key, mut session) = token_auth(&store, api, Some("k")).unwrap();
    enforce(&store, &key, &mut session, api, SystemTime::now()).unwrap();
    assert_eq!(
        enforce(&store, &key, &mut session, api, SystemTime::now())
            .unwrap_err()
            .status,
        403
    );
}

#[test]
fn redis_reads_sessions_written_by_tyk() {
    let server = RedisServer::start();
    let s = Scratch::new("redis-tyk");
    let (snap, store, _) = redis_stores(&server, &s);
    // What Tyk writes under apikey-<key> (trimmed), set here with a raw client.
    let tyk_json = r#"{"last_check":0,"allowance":1000,"rate":1000,"per":1,"throttle_interval":0,"throttle_retry_limit":0,"max_query_depth":0,"date_created":"2024-05-01T10:00:00Z","expires":0,"quota_max":-1,"quota_renews":1714557600,"quota_remaining":0,"quota_renewal_rate":0,"access_rights":{"protected":{"api_name":"p","api_id":"protected","versions":["Default"],"allowed_urls":null,"restricted_types":null,"limit":null,"field_access_rights":null,"allowance_scope":""}},"org_id":"default","oauth_client_id":"","oauth_keys":null,"certificate":"","basic_auth_data":{"password":"","hash_type":""},"jwt_data":{"secret":""},"hmac_enabled":false,"enable_http_signature_validation":false,"hmac_string":"","rsa_certificate_id":"","is_inactive":false,"apply_policy_id":"","apply_policies":null,"data_expires":0,"monitor":{"trigger_limits":null},"enable_detail_recording":false,"enable_detailed_recording":false,"meta_data":{"tier":"gold"},"tags":null,"alias":"","last_updated":"1714557600","id_extractor_deadline":0,"session_lifetime":0}"#;
    let mut raw = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let cmd = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\napikey-defaulttyk\r\n${}\r\n{}\r\n",
        "apikey-defaulttyk".len(),
        tyk_json.len(),
        tyk_json
    );
    raw.write_all(cmd.as_bytes()).unwrap();
    let mut ok = [0u8; 5];
    raw.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");

    let api = api(&snap, "protected");
    let (key, session) = token_auth(&store, api, Some("tyk")).unwrap();
    assert_eq!(key, "defaulttyk");
    assert_eq!(session.rate, Some(1000.0));
    assert_eq!(
        session
            .metadata
            .as_ref()
            .and_then(|m| m.get("tier"))
            .map(String::as_str),
        Some("gold")
    );
    let stored = store.get("defaulttyk").unwrap().unwrap();
    assert_eq!(stored.date_created, "2024-05-01T10:00:00Z");
    assert_eq!(
        stored.access_rights["protected"].extra["allowance_scope"],
        ""
    );
}
