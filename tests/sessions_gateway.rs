//! End-to-end tests of keys, sessions, rate limits, quotas and the Gateway API (`/tyk/`), against
//! the real `pipegate` binary, real upstreams, a real plugin child (`tests/plugins/
//! sessions_auth.py`, raw MessagePack written from protocol/PROTOCOL.md, which logs every
//! auth_check call so the tests can count them) and, for the shared-store tests, real
//! `redis-server` processes started by the tests (install with `apt-get install redis-server`;
//! those tests fail rather than skip without it).
//!
//! What is checked is what a Tyk user sees (tyk-coprocess.md 2.6, 2.7, 5.1 cases 7-10, 5.4):
//! Tyk's statuses and messages for missing, unknown, inactive, expired and wrong-API keys; rate
//! limits and quotas with exact counts, also when requests race across workers and across two
//! gateways sharing one Redis; renewal; key CRUD through the Gateway API with and without the
//! secret; the auth plugin's session cached by the ID extractor (one plugin call for many
//! requests); keys surviving a restart with the embedded store's file; a Redis restart answered
//! with clean JSON 5xx errors and then recovered from. The configured secret must never appear in
//! the gateway's log.
//!
//! Timing: nothing asserts that something is fast. Windows that must renew are 1 s and are waited
//! out with a 1.5 s sleep; exact-count checks use 60 s windows so they do not depend on speed.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

/// The Gateway API secret of every test here: distinctive, so finding it in a log is meaningful.
const SECRET: &str = "sess-e2e-secret-Q7x9Vb2Kp4";
/// Tyk's answer to a missing or wrong secret.
const MSG_ADMIN_FORBIDDEN: &str = "Attempted administrative access with invalid or missing key!";
/// Organisation of every API here.
const ORG: &str = "default";
/// How long recovery (e.g. after a Redis restart) may take before the test fails.
const RECOVERY_WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A complete upstream response the counting upstream sends for every request.
const UPSTREAM_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nupstream";

fn plugin_script(name: &str) -> String {
    format!("{}/tests/plugins/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// tyk.conf: the harness's base with [`SECRET`], plus `patch`.
fn conf(patch: Value) -> Value {
    let mut c = conf_with(json!({ "secret": SECRET }));
    merge(&mut c, patch);
    c
}

/// tyk.conf patch running the sessions plugin as the pipe child.
fn plugin_conf() -> Value {
    json!({ "coprocess_options": {
        "enable_coprocess": true,
        "pipe_command": ["python3", plugin_script("sessions_auth.py")],
        "hook_timeout_ms": 30000,
    } })
}

/// A protected API (standard token auth) on `listen_path` in front of `target`, plus `extra`.
fn protected_api(api_id: &str, listen_path: &str, target: &str, extra: Value) -> Value {
    let mut api = keyless_api(api_id, listen_path, target);
    merge(&mut api, json!({ "org_id": ORG, "use_keyless": false }));
    merge(&mut api, extra);
    api
}

/// A protected API whose auth is the plugin's `auth_check` hook `hook` (`enable_coprocess_auth`),
/// with `extra` merged over it (e.g. an `id_extractor` in `custom_middleware`).
fn plugin_auth_api(
    api_id: &str,
    listen_path: &str,
    target: &str,
    hook: &str,
    extra: Value,
) -> Value {
    let mut api = protected_api(
        api_id,
        listen_path,
        target,
        json!({
            "enable_coprocess_auth": true,
            "custom_middleware": { "driver": "python", "auth_check": { "name": hook } }
        }),
    );
    merge(&mut api, extra);
    api
}

/// `custom_middleware.id_extractor` reading the whole `Authorization` header.
fn header_extractor() -> Value {
    json!({ "custom_middleware": { "id_extractor": {
        "extract_from": "header",
        "extract_with": "value",
        "extractor_config": { "header_name": "Authorization" }
    } } })
}

/// A Tyk session for the Gateway API granting `apis`, no limits, with `extra` merged over it.
fn session(apis: &[&str], extra: Value) -> Value {
    let rights: Map<String, Value> = apis
        .iter()
        .map(|id| {
            (
                id.to_string(),
                json!({ "api_id": id, "api_name": id, "versions": ["Default"] }),
            )
        })
        .collect();
    let mut s = json!({
        "org_id": ORG,
        "rate": 0,
        "per": 0,
        "quota_max": -1,
        "quota_renewal_rate": 0,
        "expires": 0,
        "access_rights": rights,
    });
    merge(&mut s, extra);
    s
}

/// A Gateway API request with `secret` in `X-Tyk-Authorization` (none when `None`).
fn admin_bytes(method: &str, path: &str, secret: Option<&str>, body: Option<&Value>) -> Vec<u8> {
    let mut r = req(method, path).close();
    if let Some(s) = secret {
        r = r.header("X-Tyk-Authorization", s);
    }
    if let Some(b) = body {
        r = r
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    r.to_bytes()
}

/// A Gateway API call with the right secret.
fn admin(gw: &Gateway, method: &str, path: &str, body: Option<&Value>) -> Response {
    gw.send(&admin_bytes(method, path, Some(SECRET), body))
}

/// Asserts a Gateway API `{"key":..., "status":"ok", "action": action}` answer; returns the key.
fn assert_key_action(resp: &Response, action: &str) -> String {
    assert_eq!(resp.status, 200, "Gateway API call failed: {resp:?}");
    let v = resp.json();
    assert_eq!(v["status"], "ok", "{resp:?}");
    assert_eq!(v["action"], action, "{resp:?}");
    let key = v["key"].as_str().unwrap_or_default().to_string();
    assert!(!key.is_empty(), "no key in {resp:?}");
    key
}

/// Creates a key with a generated name through `POST /tyk/keys/create`; returns it.
fn create_key(gw: &Gateway, session: &Value) -> String {
    let resp = admin(gw, "POST", "/tyk/keys/create", Some(session));
    assert_key_action(&resp, "added")
}

/// Asserts a Gateway API error: this status, JSON `{"status":"error","message":...}`; returns the
/// message.
fn assert_admin_error(resp: &Response, status: u16) -> String {
    assert_eq!(resp.status, status, "unexpected status: {resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{resp:?}"
    );
    let v = resp.json();
    assert_eq!(v["status"], "error", "{resp:?}");
    v["message"].as_str().unwrap_or_default().to_string()
}

/// A `GET path` request (closed after the response) with these extra headers.
fn get_bytes(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = req("GET", path).close();
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r.to_bytes()
}

/// `GET path` with these headers on a new connection.
fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response {
    gw.send(&get_bytes(path, headers))
}

/// `GET path` with `Authorization: key`.
fn with_key(gw: &Gateway, path: &str, key: &str) -> Response {
    call(gw, path, &[("Authorization", key)])
}

/// Asserts a response from the upstream (not a gateway error).
fn assert_upstream(resp: &Response) {
    assert_eq!(resp.status, 200, "expected the upstream's answer: {resp:?}");
    assert_eq!(resp.text(), "upstream", "{resp:?}");
}

/// Sends every request at once (one connection each, released together by a barrier) and
/// returns the responses in the same order.
fn burst(requests: Vec<(SocketAddr, Vec<u8>)>) -> Vec<Response> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let handles: Vec<_> = requests
        .into_iter()
        .map(|(addr, bytes)| {
            let b = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                b.wait();
                c.request(&bytes)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect()
}

/// How many responses had each status.
fn status_counts(responses: &[Response]) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for r in responses {
        *m.entry(r.status).or_insert(0) += 1;
    }
    m
}

/// Fails when the configured secret appears anywhere in the gateway's log so far.
fn assert_secret_not_logged(gw: &Gateway) {
    let log = gw.log().text();
    assert!(
        !log.contains(SECRET),
        "the Gateway API secret appears in the gateway's log:\n{log}"
    );
}

/// The `X-RateLimit-*` headers of a response as (limit, remaining, reset).
fn rate_headers(resp: &Response) -> (i64, i64, i64) {
    let h = |name: &str| -> i64 {
        resp.header(name)
            .unwrap_or_else(|| panic!("no {name} header: {resp:?}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name} is not a number ({e}): {resp:?}"))
    };
    (
        h("X-RateLimit-Limit"),
        h("X-RateLimit-Remaining"),
        h("X-RateLimit-Reset"),
    )
}

/// A counting upstream, a gateway and its sandbox. The plugin (when configured) logs its calls
/// to `<sandbox>/calls.log`. Fields drop in order: gateway, upstream, sandbox.
struct Env {
    gw: Gateway,
    up: ScriptedUpstream,
    sb: Sandbox,
}

impl Env {
    /// `conf_patch` is merged into [`conf`]; `apis(upstream_url)` lists (file name, definition).
    fn start(
        tag: &str,
        conf_patch: Value,
        apis: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
    ) -> Env {
        Env::start_with_env(tag, conf_patch, apis, &[])
    }

    fn start_with_env(
        tag: &str,
        conf_patch: Value,
        apis: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
        env: &[(&str, &str)],
    ) -> Env {
        let sb = Sandbox::new(tag);
        let up = ScriptedUpstream::always(UPSTREAM_OK.to_vec());
        let mut c = conf(conf_patch);
        if c["coprocess_options"].is_object() {
            let log = sb.dir().join("calls.log");
            merge(
                &mut c,
                json!({ "coprocess_options": { "pipe_env": {
                    "SESSIONS_LOG": log.to_string_lossy()
                } } }),
            );
        }
        sb.write_conf(&c);
        for (name, api) in apis(&format!("{}/", up.url())) {
            sb.write_api(name, &api);
        }
        let gw = Gateway::try_start(&sb.conf_path(), env).unwrap_or_else(|e| panic!("{e}"));
        Env { gw, up, sb }
    }

    /// Requests the upstream has received so far.
    fn upstream_hits(&self) -> usize {
        self.up.requests().len()
    }

    /// The plugin's call log: one "hook_name authorization" line per auth_check call.
    fn calls(&self) -> Vec<String> {
        read_calls(&self.sb)
    }

    /// Plugin calls whose line is exactly `line`.
    fn calls_of(&self, line: &str) -> usize {
        self.calls().iter().filter(|l| l.as_str() == line).count()
    }
}

/// The plugin's call log in `sb` (`calls.log`): one "hook_name authorization" line per call.
fn read_calls(sb: &Sandbox) -> Vec<String> {
    match std::fs::read_to_string(sb.dir().join("calls.log")) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read the plugin's call log: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// tyk.conf for a gateway on `redis` running the sessions plugin, logging to `<sb>/calls.log`.
fn redis_plugin_conf(sb: &Sandbox, redis: &RedisProc) -> Value {
    let mut c = conf(json!({ "storage": redis.storage() }));
    merge(&mut c, plugin_conf());
    merge(
        &mut c,
        json!({ "coprocess_options": { "pipe_env": {
            "SESSIONS_LOG": sb.dir().join("calls.log").to_string_lossy()
        } } }),
    );
    c
}

/// A `redis-server` child on a free loopback port, without persistence. Killed on drop.
struct RedisProc {
    child: Option<Child>,
    port: u16,
}

impl RedisProc {
    fn start() -> RedisProc {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot find a free port for redis-server: {e}"));
        let mut r = RedisProc { child: None, port };
        r.spawn();
        r
    }

    /// Starts redis-server on `self.port` and waits for `PING` → `PONG`.
    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the child between fork and exec and only calls prctl, which is
            // async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                    Ok(())
                });
            }
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                "redis-server is not installed; these tests need it: apt-get install redis-server"
            ),
            Err(e) => panic!("cannot start redis-server: {e}; apt-get install redis-server"),
        };
        self.child = Some(child);
        if !wait_until(Duration::from_secs(30), || redis_ping(self.port)) {
            panic!(
                "redis-server on port {} did not answer PING within 30 s",
                self.port
            );
        }
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// tyk.conf's `storage` for this server.
    fn storage(&self) -> Value {
        json!({ "type": "redis", "host": "127.0.0.1", "port": self.port })
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis answers `PING` with `+PONG` on `port`.
fn redis_ping(port: u16) -> bool {
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

// ---------------------------------------------------------------------------------------------
// Gateway API: the secret
// ---------------------------------------------------------------------------------------------

/// Every Gateway API endpoint refuses a missing, wrong, empty or near-miss secret with Tyk's 403,
/// and a refused create creates nothing. The secret never reaches the log, even at trace level.
#[test]
fn gateway_api_requires_the_secret_and_never_logs_it() {
    let env = Env::start_with_env(
        "admin-secret",
        json!({}),
        |up| vec![("prot", protected_api("prot", "/prot/", up, json!({})))],
        &[("RUST_LOG", "trace")],
    );
    let gw = &env.gw;
    let body = session(&["prot"], json!({}));
    // (Surrounding spaces are not a near miss: HTTP strips them from header values.)
    let longer = format!("{SECRET}x");
    let upper = SECRET.to_uppercase();
    let prefix = &SECRET[..SECRET.len() - 1];
    let endpoints: Vec<(&str, &str, Option<&Value>)> = vec![
        ("GET", "/tyk/keys", None),
        ("POST", "/tyk/keys/create", Some(&body)),
        ("POST", "/tyk/keys", Some(&body)),
        ("POST", "/tyk/keys/custom-key", Some(&body)),
        ("GET", "/tyk/keys/some-key", None),
        ("PUT", "/tyk/keys/some-key", Some(&body)),
        ("DELETE", "/tyk/keys/some-key", None),
        ("GET", "/tyk/apis", None),
        ("GET", "/tyk/apis/prot", None),
        ("GET", "/tyk/reload", None),
        ("POST", "/tyk/reload", None),
    ];
    for (method, path, b) in &endpoints {
        for secret in [
            None,
            Some("wrong"),
            Some(""),
            Some(prefix),
            Some(longer.as_str()),
            Some(upper.as_str()),
        ] {
            let resp = gw.send(&admin_bytes(method, path, secret, *b));
            let msg = assert_admin_error(&resp, 403);
            assert_eq!(msg, MSG_ADMIN_FORBIDDEN, "{method} {path} with {secret:?}");
        }
        // The secret in the wrong header is no secret.
        let mut r = req(method, path)
            .close()
            .header("Authorization", SECRET)
            .header("X-Tyk-Authorisation", SECRET);
        if let Some(b) = b {
            r = r.body(b.to_string());
        }
        let resp = gw.send(&r.to_bytes());
        assert_eq!(
            assert_admin_error(&resp, 403),
            MSG_ADMIN_FORBIDDEN,
            "{method} {path} with the secret in other headers"
        );
    }
    // Nothing was created by the refused calls.
    let listed = admin(gw, "GET", "/tyk/keys", None);
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.json()["keys"], json!([]), "{listed:?}");
    // With the secret the same calls work, and still nothing about the secret is logged.
    let key = create_key(gw, &body);
    assert_upstream(&with_key(gw, "/prot/", &key));
    // The secret sent to a proxied API is just a header; it must not be logged either.
    let resp = call(gw, "/prot/", &[("X-Tyk-Authorization", SECRET)]);
    assert_eq!(resp.assert_tyk_error(401), "Authorization field missing");
    assert_secret_not_logged(gw);
}

// ---------------------------------------------------------------------------------------------
// Standard token auth and key CRUD
// ---------------------------------------------------------------------------------------------

/// Keys created, read, listed, updated and deleted through the Gateway API drive standard token
/// auth with Tyk's statuses: missing key 401, unknown 403, inactive 403, expired 401, an API not
/// in `access_rights` 403; the auth header name comes from the API definition; custom keys are
/// stored with the org prefix and found with or without it.
#[test]
fn key_crud_through_the_gateway_api_drives_token_auth() {
    let env = Env::start("key-crud", json!({}), |up| {
        vec![
            ("prot", protected_api("prot", "/prot/", up, json!({}))),
            ("other", protected_api("other", "/other/", up, json!({}))),
            (
                "hdr",
                protected_api(
                    "hdr",
                    "/hdr/",
                    up,
                    json!({ "auth_configs": { "authToken": { "auth_header_name": "X-Api-Key" } } }),
                ),
            ),
            (
                "legacy",
                protected_api(
                    "legacy",
                    "/legacy/",
                    up,
                    json!({ "auth": { "auth_header_name": "X-Legacy-Key" } }),
                ),
            ),
        ]
    });
    let gw = &env.gw;

    // No key, an empty key, an unknown key.
    assert_eq!(
        call(gw, "/prot/", &[]).assert_tyk_error(401),
        "Authorization field missing"
    );
    assert_eq!(
        with_key(gw, "/prot/", "").assert_tyk_error(401),
        "Authorization field missing"
    );
    assert_eq!(
        with_key(gw, "/prot/", "no-such-key").assert_tyk_error(403),
        "Access to this API has been disallowed"
    );
    assert_eq!(
        env.upstream_hits(),
        0,
        "refused requests reached the upstream"
    );

    // Create: a generated key is org_id + 32 hex characters.
    let s = session(
        &["prot", "hdr", "legacy"],
        json!({ "meta_data": { "user": "alice" }, "alias": "alice-key" }),
    );
    let key = create_key(gw, &s);
    let hex = key
        .strip_prefix(ORG)
        .unwrap_or_else(|| panic!("generated key {key:?} does not start with the org id"));
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "generated key {key:?} is not org_id + 32 hex"
    );
    let other_key = create_key(gw, &s);
    assert_ne!(key, other_key, "two generated keys are equal");
    // POST /tyk/keys also generates a key; a chunked body (and Expect: 100-continue) is read whole.
    let third = assert_key_action(&admin(gw, "POST", "/tyk/keys", Some(&s)), "added");
    let body = s.to_string();
    let (head, tail) = body.as_bytes().split_at(body.len() / 2);
    let chunked = gw.send(
        &req("POST", "/tyk/keys/create")
            .close()
            .header("X-Tyk-Authorization", SECRET)
            .header("Content-Type", "application/json")
            .chunked(&[head, tail])
            .to_bytes(),
    );
    let fourth = assert_key_action(&chunked, "added");
    let mut c = gw.client();
    c.send(
        &req("POST", "/tyk/keys/create")
            .close()
            .header("X-Tyk-Authorization", SECRET)
            .header("Expect", "100-continue")
            .header("Content-Length", &body.len().to_string())
            .head_bytes(),
    );
    let interim = c.read_response();
    assert_eq!(interim.status, 100, "{interim:?}");
    c.send(body.as_bytes());
    let fifth = assert_key_action(&c.read_response(), "added");
    for k in [&third, &fourth, &fifth] {
        assert_upstream(&with_key(gw, "/prot/", k));
    }

    // Use it.
    assert_upstream(&with_key(gw, "/prot/", &key));
    assert_upstream(&with_key(gw, "/prot/", &format!("Bearer {key}")));
    assert_eq!(
        with_key(gw, "/other/", &key).assert_tyk_error(403),
        "Access to this API has been disallowed",
        "access_rights must restrict the key to its APIs"
    );
    // The API's own auth header.
    assert_eq!(
        with_key(gw, "/hdr/", &key).assert_tyk_error(401),
        "Authorization field missing"
    );
    assert_upstream(&call(gw, "/hdr/", &[("X-Api-Key", &key)]));
    assert_upstream(&call(gw, "/legacy/", &[("X-Legacy-Key", &key)]));

    // Read and list.
    let got = admin(gw, "GET", &format!("/tyk/keys/{key}"), None);
    assert_eq!(got.status, 200, "{got:?}");
    let v = got.json();
    assert_eq!(v["org_id"], ORG, "{got:?}");
    assert_eq!(v["alias"], "alice-key", "{got:?}");
    assert_eq!(v["meta_data"]["user"], "alice", "{got:?}");
    let rights: Vec<&String> = v["access_rights"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(rights, vec!["hdr", "legacy", "prot"], "{got:?}");
    let listed = admin(gw, "GET", "/tyk/keys", None);
    assert_eq!(listed.status, 200, "{listed:?}");
    let keys = listed.json()["keys"].clone();
    for k in [&key, &other_key] {
        assert!(
            keys.as_array().is_some_and(|a| a.contains(&json!(k))),
            "{k} not listed: {listed:?}"
        );
    }
    let filtered = admin(gw, "GET", &format!("/tyk/keys?filter={hex}"), None);
    assert_eq!(filtered.json()["keys"], json!([key]), "{filtered:?}");
    assert_eq!(
        assert_admin_error(&admin(gw, "GET", "/tyk/keys/no-such-key", None), 404),
        "Key not found"
    );

    // Update: inactive, expired, moved to another API, then back in order.
    let put = |s: &Value| admin(gw, "PUT", &format!("/tyk/keys/{key}"), Some(s));
    assert_eq!(
        assert_key_action(
            &put(&session(&["prot"], json!({ "is_inactive": true }))),
            "modified"
        ),
        key
    );
    assert_eq!(
        with_key(gw, "/prot/", &key).assert_tyk_error(403),
        "Key is inactive, please renew"
    );
    assert_key_action(
        &put(&session(&["prot"], json!({ "expires": unix_now() - 60 }))),
        "modified",
    );
    assert_eq!(
        with_key(gw, "/prot/", &key).assert_tyk_error(401),
        "Key has expired, please renew"
    );
    assert_key_action(
        &put(&session(
            &["other"],
            json!({ "expires": unix_now() + 3600 }),
        )),
        "modified",
    );
    assert_eq!(
        with_key(gw, "/prot/", &key).assert_tyk_error(403),
        "Access to this API has been disallowed"
    );
    assert_upstream(&with_key(gw, "/other/", &key));
    assert_eq!(
        assert_admin_error(
            &admin(
                gw,
                "PUT",
                "/tyk/keys/no-such-key",
                Some(&session(&["prot"], json!({})))
            ),
            404
        ),
        "Key is not found"
    );

    // Delete.
    let del = admin(gw, "DELETE", &format!("/tyk/keys/{key}"), None);
    assert_eq!(assert_key_action(&del, "deleted"), key);
    assert_eq!(
        with_key(gw, "/other/", &key).assert_tyk_error(403),
        "Access to this API has been disallowed",
        "a deleted key must stop working"
    );
    assert_admin_error(&admin(gw, "GET", &format!("/tyk/keys/{key}"), None), 404);
    assert_eq!(
        assert_admin_error(&admin(gw, "DELETE", &format!("/tyk/keys/{key}"), None), 404),
        "There is no such key found"
    );
    // The other key is untouched.
    assert_upstream(&with_key(gw, "/prot/", &other_key));

    // A custom key is stored with the org prefix and works with or without it.
    let resp = admin(
        gw,
        "POST",
        "/tyk/keys/my-custom-key",
        Some(&session(&["prot"], json!({}))),
    );
    assert_eq!(assert_key_action(&resp, "added"), "defaultmy-custom-key");
    assert_upstream(&with_key(gw, "/prot/", "my-custom-key"));
    assert_upstream(&with_key(gw, "/prot/", "defaultmy-custom-key"));
    let got = admin(gw, "GET", "/tyk/keys/my-custom-key?org_id=default", None);
    assert_eq!(got.status, 200, "{got:?}");

    // A key without access rights (a master key) is refused by default, and nothing is stored.
    let before = admin(gw, "GET", "/tyk/keys", None).json()["keys"].clone();
    let master = admin(
        gw,
        "POST",
        "/tyk/keys/create",
        Some(&json!({ "org_id": ORG, "rate": 0, "per": 0, "quota_max": -1 })),
    );
    assert_eq!(
        assert_admin_error(&master, 400),
        "Failed to create key, keys must have at least one Access Rights record set."
    );
    // Not a session at all.
    let garbage = gw.send(
        &req("POST", "/tyk/keys/create")
            .close()
            .header("X-Tyk-Authorization", SECRET)
            .body("{not json")
            .to_bytes(),
    );
    assert!(
        (400..600).contains(&garbage.status) && garbage.json()["status"] == "error",
        "{garbage:?}"
    );
    assert_eq!(
        admin(gw, "GET", "/tyk/keys", None).json()["keys"],
        before,
        "refused creates must not store a key"
    );
    assert_secret_not_logged(gw);
}

/// `GET /tyk/apis[/{id}]` lists what is loaded; `/tyk/reload` loads a new API file.
#[test]
fn gateway_api_lists_apis_and_reloads() {
    let env = Env::start("apis-reload", json!({}), |up| {
        vec![
            ("prot", protected_api("prot", "/prot/", up, json!({}))),
            ("open", keyless_api("open", "/open/", up)),
        ]
    });
    let gw = &env.gw;
    let all = admin(gw, "GET", "/tyk/apis", None);
    assert_eq!(all.status, 200, "{all:?}");
    let mut ids: Vec<String> = all
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("/tyk/apis is not an array: {all:?}"))
        .iter()
        .map(|a| a["api_id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["open", "prot"]);
    let one = admin(gw, "GET", "/tyk/apis/prot", None);
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.json()["api_id"], "prot");
    assert_eq!(one.json()["proxy"]["listen_path"], "/prot/");
    assert_eq!(
        assert_admin_error(&admin(gw, "GET", "/tyk/apis/nope", None), 404),
        "API not found"
    );

    // Tyk strips a trailing slash before routing.
    let listed = admin(gw, "GET", "/tyk/keys/", None);
    assert_eq!(listed.status, 200, "{listed:?}");
    assert!(listed.json()["keys"].is_array(), "{listed:?}");
    let key = create_key(gw, &session(&["prot"], json!({})));

    // A new definition is served only after a reload through the Gateway API.
    env.sb.write_api(
        "late",
        &keyless_api("late", "/late/", &format!("{}/", env.up.url())),
    );
    assert_eq!(gw.get("/late/").status, 404);
    let reload = admin(gw, "GET", "/tyk/reload", None);
    assert_eq!(reload.status, 200, "{reload:?}");
    assert_eq!(reload.json()["status"], "ok", "{reload:?}");
    assert_upstream(&gw.get("/late/"));
    assert_eq!(admin(gw, "GET", "/tyk/apis/late", None).status, 200);
    // Keys outlive reloads.
    assert_upstream(&with_key(gw, "/prot/", &key));
    let reload = admin(gw, "POST", "/tyk/reload/group", None);
    assert_eq!(reload.status, 200, "{reload:?}");
    assert_secret_not_logged(gw);
}

// ---------------------------------------------------------------------------------------------
// Rate limits and quotas
// ---------------------------------------------------------------------------------------------

/// `rate` per `per` seconds admits exactly `rate` requests even when they race over both workers;
/// the rest get 429 "Rate limit exceeded" and never reach the upstream; the window renews.
#[test]
fn rate_limit_is_exact_across_workers_and_renews() {
    let env = Env::start("rate", json!({}), |up| {
        vec![("prot", protected_api("prot", "/prot/", up, json!({})))]
    });
    let gw = &env.gw;

    // Exact count, independent of speed: 3 per minute, 12 racing requests.
    let key = create_key(gw, &session(&["prot"], json!({ "rate": 3, "per": 60 })));
    let rs = burst(
        (0..12)
            .map(|_| (gw.addr(), get_bytes("/prot/", &[("Authorization", &key)])))
            .collect(),
    );
    assert_eq!(
        status_counts(&rs),
        BTreeMap::from([(200, 3), (429, 9)]),
        "rate 3 per 60 s over 12 racing requests"
    );
    for r in rs.iter().filter(|r| r.status == 429) {
        assert_eq!(r.assert_tyk_error(429), "Rate limit exceeded");
    }
    assert_eq!(
        env.upstream_hits(),
        3,
        "rate-limited requests reached the upstream"
    );
    // Still refused afterwards, one at a time.
    assert_eq!(with_key(gw, "/prot/", &key).status, 429);

    // Renewal: 2 per second; a burst, a pause longer than the window, another burst.
    let key = create_key(gw, &session(&["prot"], json!({ "rate": 2, "per": 1 })));
    let burst_of = |n: usize| {
        burst(
            (0..n)
                .map(|_| (gw.addr(), get_bytes("/prot/", &[("Authorization", &key)])))
                .collect(),
        )
    };
    assert_eq!(
        status_counts(&burst_of(5)),
        BTreeMap::from([(200, 2), (429, 3)])
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status_counts(&burst_of(5)),
        BTreeMap::from([(200, 2), (429, 3)]),
        "the rate window did not renew after 1.5 s"
    );
    // A key without limits is never limited.
    let free = create_key(gw, &session(&["prot"], json!({})));
    let rs = burst(
        (0..10)
            .map(|_| (gw.addr(), get_bytes("/prot/", &[("Authorization", &free)])))
            .collect(),
    );
    assert_eq!(status_counts(&rs), BTreeMap::from([(200, 10)]));
    assert_secret_not_logged(gw);
}

/// `quota_max` admits exactly that many requests per period, reports the count in
/// `X-RateLimit-*` headers and in the key's details, refuses the rest with 403 "Quota exceeded",
/// resets on a key update (not with `suppress_reset=1`) and renews after `quota_renewal_rate`.
#[test]
fn quota_is_exact_reported_and_renews() {
    let env = Env::start("quota", json!({}), |up| {
        vec![("prot", protected_api("prot", "/prot/", up, json!({})))]
    });
    let gw = &env.gw;
    let s = session(
        &["prot"],
        json!({ "quota_max": 3, "quota_renewal_rate": 3600 }),
    );
    let key = create_key(gw, &s);
    let start = unix_now();
    for remaining in [2, 1, 0] {
        let r = with_key(gw, "/prot/", &key);
        assert_upstream(&r);
        let (limit, rem, reset) = rate_headers(&r);
        assert_eq!((limit, rem), (3, remaining), "{r:?}");
        assert!(
            reset >= start + 3600 - 5 && reset <= unix_now() + 3600 + 5,
            "X-RateLimit-Reset {reset} is not about an hour ahead: {r:?}"
        );
    }
    for _ in 0..3 {
        assert_eq!(
            with_key(gw, "/prot/", &key).assert_tyk_error(403),
            "Quota exceeded"
        );
    }
    assert_eq!(env.upstream_hits(), 3);
    let details = admin(gw, "GET", &format!("/tyk/keys/{key}"), None).json();
    assert_eq!(
        (
            details["quota_max"].clone(),
            details["quota_remaining"].clone()
        ),
        (json!(3), json!(0)),
        "{details}"
    );

    // An update with suppress_reset keeps the usage; a plain update resets it.
    let put = admin(
        gw,
        "PUT",
        &format!("/tyk/keys/{key}?suppress_reset=1"),
        Some(&s),
    );
    assert_key_action(&put, "modified");
    assert_eq!(
        with_key(gw, "/prot/", &key).assert_tyk_error(403),
        "Quota exceeded",
        "suppress_reset=1 must keep the quota used"
    );
    assert_key_action(
        &admin(gw, "PUT", &format!("/tyk/keys/{key}"), Some(&s)),
        "modified",
    );
    let rs = burst(
        (0..6)
            .map(|_| (gw.addr(), get_bytes("/prot/", &[("Authorization", &key)])))
            .collect(),
    );
    assert_eq!(
        status_counts(&rs),
        BTreeMap::from([(200, 3), (403, 3)]),
        "after a reset, exactly quota_max racing requests pass"
    );

    // Renewal after quota_renewal_rate (1 s).
    let key = create_key(
        gw,
        &session(
            &["prot"],
            json!({ "quota_max": 2, "quota_renewal_rate": 1 }),
        ),
    );
    let burst_of = |n: usize| {
        burst(
            (0..n)
                .map(|_| (gw.addr(), get_bytes("/prot/", &[("Authorization", &key)])))
                .collect(),
        )
    };
    assert_eq!(
        status_counts(&burst_of(4)),
        BTreeMap::from([(200, 2), (403, 2)])
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status_counts(&burst_of(4)),
        BTreeMap::from([(200, 2), (403, 2)]),
        "the quota did not renew after 1.5 s"
    );

    // A rate-limited request uses no quota.
    let key = create_key(
        gw,
        &session(
            &["prot"],
            json!({ "rate": 1, "per": 60, "quota_max": 5, "quota_renewal_rate": 3600 }),
        ),
    );
    let r = with_key(gw, "/prot/", &key);
    assert_eq!(rate_headers(&r).1, 4, "{r:?}");
    for _ in 0..3 {
        assert_eq!(with_key(gw, "/prot/", &key).status, 429);
    }
    let details = admin(gw, "GET", &format!("/tyk/keys/{key}"), None).json();
    assert_eq!(details["quota_remaining"], json!(4), "{details}");
    assert_secret_not_logged(gw);
}

/// A key expires by itself once `expires` passes (401 "Key has expired, please renew"), a key
/// created already expired is refused at once, and `expires: 0` never expires.
#[test]
fn keys_expire_when_their_time_passes() {
    let env = Env::start("expiry", json!({}), |up| {
        vec![("prot", protected_api("prot", "/prot/", up, json!({})))]
    });
    let gw = &env.gw;
    let expires = unix_now() + 2;
    let soon = create_key(gw, &session(&["prot"], json!({ "expires": expires })));
    let never = create_key(gw, &session(&["prot"], json!({ "expires": 0 })));
    let past = create_key(
        gw,
        &session(&["prot"], json!({ "expires": unix_now() - 10 })),
    );
    assert_upstream(&with_key(gw, "/prot/", &soon));
    assert_eq!(
        with_key(gw, "/prot/", &past).assert_tyk_error(401),
        "Key has expired, please renew"
    );
    assert!(
        wait_until(Duration::from_secs(10), || unix_now() > expires + 1),
        "the clock did not move"
    );
    assert_eq!(
        with_key(gw, "/prot/", &soon).assert_tyk_error(401),
        "Key has expired, please renew"
    );
    assert_upstream(&with_key(gw, "/prot/", &never));
    assert_eq!(env.upstream_hits(), 2);
    assert_secret_not_logged(gw);
}

// ---------------------------------------------------------------------------------------------
// Plugin auth
// ---------------------------------------------------------------------------------------------

/// Tyk's Python auth test (coprocess_python_test.go), once with `enable_coprocess_auth` and once
/// with `custom_plugin_auth_enabled`: valid token 200, invalid 403, valid again 403 (the plugin's
/// session has quota_max 1, renewal 60 s, and a fresh session from the plugin does not reset the
/// stored quota); `DELETE /tyk/keys/valid_token` → 200 "deleted" in between.
#[test]
fn tyk_python_auth_test_quota_of_one_then_delete() {
    let env = Env::start("python-auth", plugin_conf(), |up| {
        vec![
            (
                "py1",
                plugin_auth_api("py1", "/py1/", up, "PyAuth", json!({})),
            ),
            (
                "py2",
                plugin_auth_api(
                    "py2",
                    "/py2/",
                    up,
                    "PyAuth",
                    json!({ "enable_coprocess_auth": false, "custom_plugin_auth_enabled": true }),
                ),
            ),
        ]
    });
    let gw = &env.gw;
    for path in ["/py1/", "/py2/"] {
        assert_upstream(&with_key(gw, path, "valid_token"));
        assert_eq!(
            with_key(gw, path, "invalid_token").assert_tyk_error(403),
            "Forbidden",
            "{path}: no token from the plugin"
        );
        assert_eq!(
            with_key(gw, path, "valid_token").assert_tyk_error(403),
            "Quota exceeded",
            "{path}: quota_max 1 must refuse the second valid request"
        );
        // The stored session is the plugin's, with the quota used up.
        let got = admin(gw, "GET", "/tyk/keys/valid_token", None);
        assert_eq!(got.status, 200, "{path}: {got:?}");
        let v = got.json();
        assert_eq!(v["rate"], json!(1000.0), "{got:?}");
        assert_eq!(v["quota_max"], json!(1), "{got:?}");
        assert_eq!(v["quota_renewal_rate"], json!(60), "{got:?}");
        assert_eq!(v["quota_remaining"], json!(0), "{got:?}");

        let del = admin(gw, "DELETE", "/tyk/keys/valid_token", None);
        assert_eq!(assert_key_action(&del, "deleted"), "valid_token");
        assert_admin_error(&admin(gw, "GET", "/tyk/keys/valid_token", None), 404);
    }
    assert_eq!(env.upstream_hits(), 2);
    // No cache without an ID extractor: every request was a plugin call.
    assert_eq!(env.calls_of("PyAuth valid_token"), 4, "{:?}", env.calls());
    assert_eq!(env.calls_of("PyAuth invalid_token"), 2, "{:?}", env.calls());
    assert_secret_not_logged(gw);
}

/// The ID extractor caches the plugin's session under `org_id + md5(value)` until its
/// `id_extractor_deadline`: many requests, one plugin call (Tyk's case 8); the cached session is
/// enforced (quota); failures are not cached; a missing header is 400 without a plugin call; an
/// expired deadline calls the plugin again; deleting the cached key through the Gateway API
/// invalidates it. With the extractor disabled (case 9) the session is stored under the token and
/// the plugin is called every time.
#[test]
fn id_extractor_caches_the_plugin_session() {
    let env = Env::start("id-extractor", plugin_conf(), |up| {
        vec![
            (
                "ext",
                plugin_auth_api("ext", "/ext/", up, "JsonAuth", header_extractor()),
            ),
            (
                "noext",
                plugin_auth_api(
                    "noext",
                    "/noext/",
                    up,
                    "JsonAuth",
                    json!({ "custom_middleware": { "id_extractor": {
                        "disabled": true,
                        "extract_from": "header",
                        "extract_with": "value",
                        "extractor_config": { "header_name": "Authorization" }
                    } } }),
                ),
            ),
        ]
    });
    let gw = &env.gw;
    let sess = r#"{"rate": 100, "per": 1}"#;
    let abc = [
        ("Authorization", "abc"),
        ("X-Session", sess),
        ("X-Cache-Seconds", "60"),
    ];

    // Many requests, one call.
    for _ in 0..5 {
        assert_upstream(&call(gw, "/ext/", &abc));
    }
    let rs = burst(
        (0..6)
            .map(|_| (gw.addr(), get_bytes("/ext/", &abc)))
            .collect(),
    );
    assert_eq!(status_counts(&rs), BTreeMap::from([(200, 6)]));
    assert_eq!(
        env.calls_of("JsonAuth abc"),
        1,
        "the cached session must skip the plugin: {:?}",
        env.calls()
    );
    // Stored under the extractor's id, not under the token.
    let id = format!("{ORG}{}", md5_hex("abc"));
    let got = admin(gw, "GET", &format!("/tyk/keys/{id}"), None);
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["rate"], json!(100.0), "{got:?}");
    assert_admin_error(&admin(gw, "GET", "/tyk/keys/abc", None), 404);

    // No header: 400 before any plugin call.
    let before = env.calls().len();
    assert_eq!(
        call(gw, "/ext/", &[]).assert_tyk_error(400),
        "Authorization field missing"
    );
    assert_eq!(
        env.calls().len(),
        before,
        "the plugin was called without an id"
    );

    // Refusals are not cached.
    for _ in 0..2 {
        assert_eq!(
            with_key(gw, "/ext/", "bad-1").assert_tyk_error(403),
            "Forbidden"
        );
    }
    assert_eq!(env.calls_of("JsonAuth bad-1"), 2, "{:?}", env.calls());

    // The cached session is enforced: its quota counts across cache hits.
    let quota = [
        ("Authorization", "quota-user"),
        (
            "X-Session",
            r#"{"quota_max": 2, "quota_renewal_rate": 3600}"#,
        ),
        ("X-Cache-Seconds", "60"),
    ];
    assert_upstream(&call(gw, "/ext/", &quota));
    assert_upstream(&call(gw, "/ext/", &quota));
    assert_eq!(
        call(gw, "/ext/", &quota).assert_tyk_error(403),
        "Quota exceeded"
    );
    assert_eq!(env.calls_of("JsonAuth quota-user"), 1, "{:?}", env.calls());

    // A deadline in the past does not cache; the plugin's fresh session keeps the quota used.
    let short = [
        ("Authorization", "short-lived"),
        (
            "X-Session",
            r#"{"quota_max": 2, "quota_renewal_rate": 3600}"#,
        ),
        ("X-Cache-Seconds", "1"),
    ];
    assert_upstream(&call(gw, "/ext/", &short));
    thread::sleep(Duration::from_millis(2500));
    assert_upstream(&call(gw, "/ext/", &short));
    assert_eq!(
        env.calls_of("JsonAuth short-lived"),
        2,
        "an expired id_extractor_deadline must call the plugin again: {:?}",
        env.calls()
    );
    assert_eq!(
        call(gw, "/ext/", &short).assert_tyk_error(403),
        "Quota exceeded",
        "a session the plugin returns again must not reset the quota used"
    );

    // Deleting the cached key invalidates the cache.
    let del = admin(gw, "DELETE", &format!("/tyk/keys/{id}"), None);
    assert_eq!(assert_key_action(&del, "deleted"), id);
    assert_upstream(&call(gw, "/ext/", &abc));
    assert_eq!(env.calls_of("JsonAuth abc"), 2, "{:?}", env.calls());

    // Extractor disabled: stored under metadata["token"], no cache.
    let plain = [
        ("Authorization", "plain-token"),
        ("X-Session", sess),
        ("X-Cache-Seconds", "60"),
    ];
    for _ in 0..3 {
        assert_upstream(&call(gw, "/noext/", &plain));
    }
    assert_eq!(env.calls_of("JsonAuth plain-token"), 3, "{:?}", env.calls());
    let got = admin(gw, "GET", "/tyk/keys/plain-token", None);
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["rate"], json!(100.0), "{got:?}");
    assert_secret_not_logged(gw);
}

/// The session an auth plugin returns is enforced like a stored key's (tyk-coprocess.md 2.6,
/// "downstream middlewares"): inactive 403, expired 401, access rights for other APIs 403, rate
/// limit 429; each refused request is one plugin call and never reaches the upstream.
#[test]
fn plugin_sessions_are_enforced_like_keys() {
    let env = Env::start("plugin-enforce", plugin_conf(), |up| {
        vec![(
            "pa",
            plugin_auth_api("pa", "/pa/", up, "JsonAuth", json!({})),
        )]
    });
    let gw = &env.gw;
    let with_session =
        |auth: &str, s: &str| call(gw, "/pa/", &[("Authorization", auth), ("X-Session", s)]);
    assert_eq!(
        with_session("inactive", r#"{"is_inactive": true}"#).assert_tyk_error(403),
        "Key is inactive, please renew"
    );
    let expired = format!(r#"{{"expires": {}}}"#, unix_now() - 60);
    assert_eq!(
        with_session("expired", &expired).assert_tyk_error(401),
        "Key has expired, please renew"
    );
    let elsewhere = r#"{"access_rights": {"other-api": {"api_id": "other-api", "api_name": "o", "versions": ["Default"]}}}"#;
    assert_eq!(
        with_session("elsewhere", elsewhere).assert_tyk_error(403),
        "Access to this API has been disallowed"
    );
    let here =
        r#"{"access_rights": {"pa": {"api_id": "pa", "api_name": "pa", "versions": ["Default"]}}}"#;
    assert_upstream(&with_session("here", here));
    let rated = r#"{"rate": 2, "per": 60}"#;
    assert_upstream(&with_session("rated", rated));
    assert_upstream(&with_session("rated", rated));
    assert_eq!(
        with_session("rated", rated).assert_tyk_error(429),
        "Rate limit exceeded",
        "a fresh session from the plugin must not reset the rate window"
    );
    assert_eq!(env.upstream_hits(), 3);
    assert_eq!(env.calls().len(), 7, "{:?}", env.calls());
    assert_secret_not_logged(gw);
}

/// Tyk's Python ID-extractor test: the plugin succeeds only on its first call, so a valid value
/// passes, the same value passes again from the cache, and a different value is refused.
#[test]
fn tyk_python_id_extractor_test_plugin_succeeds_once() {
    let env = Env::start("python-extractor", plugin_conf(), |up| {
        vec![(
            "once",
            plugin_auth_api("once", "/once/", up, "OnceAuth", header_extractor()),
        )]
    });
    let gw = &env.gw;
    assert_upstream(&with_key(gw, "/once/", "valid-value"));
    assert_upstream(&with_key(gw, "/once/", "valid-value"));
    assert_eq!(
        with_key(gw, "/once/", "other-value").assert_tyk_error(403),
        "Forbidden"
    );
    assert_eq!(
        env.calls(),
        vec!["OnceAuth valid-value", "OnceAuth other-value"],
        "the second valid request must come from the cache"
    );
    assert_secret_not_logged(gw);
}

/// The regex and form extractors: what they extract is the cache id, so two requests whose
/// extracted parts are equal share one plugin call even when their headers differ.
#[test]
fn regex_and_form_extractors_key_the_cache_by_what_they_extract() {
    let env = Env::start("extractor-kinds", plugin_conf(), |up| {
        vec![
            (
                "rx",
                plugin_auth_api(
                    "rx",
                    "/rx/",
                    up,
                    "JsonAuth",
                    json!({ "custom_middleware": { "id_extractor": {
                        "extract_from": "header",
                        "extract_with": "regex",
                        "extractor_config": {
                            "header_name": "Authorization",
                            "regex_expression": "[0-9]+",
                            "regex_match_index": 0
                        }
                    } } }),
                ),
            ),
            (
                "form",
                plugin_auth_api(
                    "form",
                    "/form/",
                    up,
                    "JsonAuth",
                    json!({ "custom_middleware": { "id_extractor": {
                        "extract_from": "form",
                        "extract_with": "value",
                        "extractor_config": { "param_name": "auth" }
                    } } }),
                ),
            ),
        ]
    });
    let gw = &env.gw;
    let cached = |auth: &'static str| [("Authorization", auth), ("X-Cache-Seconds", "60")];
    assert_upstream(&call(gw, "/rx/", &cached("prefix-12345")));
    assert_upstream(&call(gw, "/rx/", &cached("other-12345")));
    assert_eq!(
        (
            env.calls_of("JsonAuth prefix-12345"),
            env.calls_of("JsonAuth other-12345")
        ),
        (1, 0),
        "both headers extract 12345: one session: {:?}",
        env.calls()
    );
    let id = format!("{ORG}{}", md5_hex("12345"));
    assert_eq!(
        admin(gw, "GET", &format!("/tyk/keys/{id}"), None).status,
        200
    );
    // No match: 400 without a plugin call.
    let before = env.calls().len();
    assert_eq!(
        call(gw, "/rx/", &cached("no-digits")).assert_tyk_error(400),
        "Authorization field missing"
    );
    assert_eq!(env.calls().len(), before);

    // Form value from the query string.
    assert_upstream(&call(gw, "/form/?auth=form-id", &cached("form-a")));
    assert_upstream(&call(gw, "/form/?auth=form-id", &cached("form-b")));
    assert_eq!(
        (
            env.calls_of("JsonAuth form-a"),
            env.calls_of("JsonAuth form-b")
        ),
        (1, 0),
        "{:?}",
        env.calls()
    );
    let id = format!("{ORG}{}", md5_hex("form-id"));
    assert_eq!(
        admin(gw, "GET", &format!("/tyk/keys/{id}"), None).status,
        200
    );
    assert_eq!(
        call(gw, "/form/", &cached("form-c")).assert_tyk_error(400),
        "Authorization field missing"
    );
    assert_secret_not_logged(gw);
}

/// Tyk's gRPC case 7: plugin auth with no auth_check name, a header ID extractor and an ignored
/// path. The ignored path passes with or without a header; elsewhere no header is 400 and a header
/// the plugin refuses is 403.
#[test]
fn ignored_path_skips_plugin_auth_and_the_extractor() {
    let env = Env::start("ignored", plugin_conf(), |up| {
        let mut api = protected_api(
            "ign",
            "/ign/",
            up,
            json!({
                "enable_coprocess_auth": true,
                "custom_middleware": { "driver": "python" },
                "version_data": { "not_versioned": true, "versions": { "Default": {
                    "name": "Default",
                    "use_extended_paths": true,
                    "extended_paths": { "ignored": [ {
                        "path": "/anything",
                        "method_actions": { "GET": {
                            "action": "no_action", "code": 200, "data": "", "headers": {}
                        } }
                    } ] }
                } } }
            }),
        );
        merge(&mut api, header_extractor());
        vec![("ign", api)]
    });
    let gw = &env.gw;
    assert_eq!(
        call(gw, "/ign/something", &[]).assert_tyk_error(400),
        "Authorization field missing"
    );
    assert_upstream(&call(gw, "/ign/anything", &[]));
    assert_eq!(with_key(gw, "/ign/something", "bad").status, 403);
    assert_upstream(&with_key(gw, "/ign/anything", "bad"));
    assert_eq!(
        env.calls(),
        vec![" bad"],
        "only the non-ignored request with a header reaches the plugin (hook name \"\")"
    );
    assert_secret_not_logged(gw);
}

/// Tyk's gRPC case 10 (multi-auth): plugin auth plus standard auth (`use_standard_auth`, token in
/// `AuthToken`). Both must pass; `base_identity_provided_by` picks whose session is used and
/// stored: `custom_auth` the plugin's, `auth_token` the token's.
#[test]
fn multi_auth_base_identity_picks_the_session() {
    let env = Env::start("multi-auth", plugin_conf(), |up| {
        let multi = |id: &str, lp: &str, base: &str| {
            plugin_auth_api(
                id,
                lp,
                up,
                "JsonAuth",
                json!({
                    "use_standard_auth": true,
                    "base_identity_provided_by": base,
                    "auth_configs": { "authToken": { "auth_header_name": "AuthToken" } }
                }),
            )
        };
        vec![
            ("mc", multi("mc", "/mc/", "custom_auth")),
            ("mt", multi("mt", "/mt/", "auth_token")),
        ]
    });
    let gw = &env.gw;
    let plugin_session = r#"{"rate": 100, "per": 1}"#;

    // custom_auth: the plugin's session is the identity (and is stored under its token).
    let token = create_key(gw, &session(&["mc"], json!({ "rate": 200, "per": 1 })));
    assert_upstream(&call(
        gw,
        "/mc/",
        &[
            ("Authorization", "abc-c"),
            ("X-Session", plugin_session),
            ("AuthToken", &token),
        ],
    ));
    let got = admin(gw, "GET", "/tyk/keys/abc-c", None);
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["rate"], json!(100.0), "{got:?}");
    assert_eq!(
        call(
            gw,
            "/mc/",
            &[("Authorization", "abc-c"), ("X-Session", plugin_session)]
        )
        .assert_tyk_error(401),
        "Authorization field missing",
        "standard auth must still be required"
    );

    // auth_token: the token's session (quota 1) is the identity; the plugin's is not stored.
    let token = create_key(
        gw,
        &session(
            &["mt"],
            json!({ "rate": 200, "per": 1, "quota_max": 1, "quota_renewal_rate": 3600 }),
        ),
    );
    let headers = [
        ("Authorization", "abc-t"),
        ("X-Session", plugin_session),
        ("AuthToken", token.as_str()),
    ];
    assert_upstream(&call(gw, "/mt/", &headers));
    assert_eq!(
        call(gw, "/mt/", &headers).assert_tyk_error(403),
        "Quota exceeded",
        "the token's session (quota_max 1) must be enforced"
    );
    assert_admin_error(&admin(gw, "GET", "/tyk/keys/abc-t", None), 404);
    assert_secret_not_logged(gw);
}

// ---------------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------------

/// With `storage.file`, keys (and quota usage) survive a graceful restart, and keys written
/// through the Gateway API survive a crash (SIGKILL) too; deleted keys stay deleted.
#[test]
fn embedded_store_file_keeps_keys_across_restarts() {
    let mut env = Env::start(
        "embedded-file",
        json!({ "storage": { "type": "embedded", "file": "keys.json" } }),
        |up| vec![("prot", protected_api("prot", "/prot/", up, json!({})))],
    );
    let quota_key = create_key(
        &env.gw,
        &session(
            &["prot"],
            json!({ "quota_max": 3, "quota_renewal_rate": 3600 }),
        ),
    );
    let custom = admin(
        &env.gw,
        "POST",
        "/tyk/keys/persist-me",
        Some(&session(&["prot"], json!({ "alias": "kept" }))),
    );
    assert_eq!(assert_key_action(&custom, "added"), "defaultpersist-me");
    let doomed = create_key(&env.gw, &session(&["prot"], json!({})));
    assert_key_action(
        &admin(&env.gw, "DELETE", &format!("/tyk/keys/{doomed}"), None),
        "deleted",
    );
    for remaining in [2, 1] {
        let r = with_key(&env.gw, "/prot/", &quota_key);
        assert_upstream(&r);
        assert_eq!(rate_headers(&r).1, remaining);
    }
    assert!(
        env.sb.dir().join("keys.json").is_file(),
        "storage.file was not written"
    );
    assert_secret_not_logged(&env.gw);

    // Graceful restart.
    env.gw.terminate();
    let status = env.gw.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the gateway did not exit cleanly on SIGTERM: {status:?}"
    );
    env.gw = Gateway::start(&env.sb);
    let gw = &env.gw;
    let r = with_key(gw, "/prot/", &quota_key);
    assert_upstream(&r);
    assert_eq!(
        rate_headers(&r).1,
        0,
        "the quota used before the restart was forgotten: {r:?}"
    );
    assert_eq!(
        with_key(gw, "/prot/", &quota_key).assert_tyk_error(403),
        "Quota exceeded"
    );
    assert_upstream(&with_key(gw, "/prot/", "persist-me"));
    let got = admin(gw, "GET", "/tyk/keys/defaultpersist-me", None);
    assert_eq!(got.json()["alias"], "kept", "{got:?}");
    assert_eq!(
        with_key(gw, "/prot/", &doomed).assert_tyk_error(403),
        "Access to this API has been disallowed",
        "a deleted key came back after a restart"
    );
    let late = create_key(gw, &session(&["prot"], json!({})));

    // Crash: what the Gateway API answered "ok" for is on disk.
    env.gw.signal(libc::SIGKILL);
    assert!(env.gw.wait_exit(Duration::from_secs(30)).is_some());
    env.gw = Gateway::start(&env.sb);
    let gw = &env.gw;
    assert_upstream(&with_key(gw, "/prot/", &late));
    assert_upstream(&with_key(gw, "/prot/", "persist-me"));
    let listed = admin(gw, "GET", "/tyk/keys", None).json()["keys"].clone();
    let mut expected = vec![
        quota_key.clone(),
        "defaultpersist-me".to_string(),
        late.clone(),
    ];
    expected.sort();
    assert_eq!(listed, json!(expected));
    let file = std::fs::read_to_string(env.sb.dir().join("keys.json"))
        .unwrap_or_else(|e| panic!("cannot read keys.json: {e}"));
    assert!(
        !file.contains(SECRET),
        "the secret was written to keys.json"
    );
    assert_secret_not_logged(gw);
}

// ---------------------------------------------------------------------------------------------
// Redis: two gateways, outages
// ---------------------------------------------------------------------------------------------

/// Two gateway processes sharing one Redis share a key's quota and rate limit exactly: N requests
/// spread over both nodes pass, the N+1st is refused wherever it lands. Keys created on one node
/// work and are deleted on the other.
#[test]
fn redis_two_gateways_share_quota_and_rate_limit_exactly() {
    let redis = RedisProc::start();
    let sb = Sandbox::new("redis-shared");
    let up = ScriptedUpstream::always(UPSTREAM_OK.to_vec());
    sb.write_conf(&conf(json!({ "storage": redis.storage() })));
    sb.write_api(
        "prot",
        &protected_api("prot", "/prot/", &format!("{}/", up.url()), json!({})),
    );
    let a = Gateway::start(&sb);
    let b = Gateway::start(&sb);
    let nodes = [&a, &b];

    // A key made on A is known to B.
    let quota = create_key(
        &a,
        &session(
            &["prot"],
            json!({ "quota_max": 10, "quota_renewal_rate": 3600 }),
        ),
    );
    let got = admin(&b, "GET", &format!("/tyk/keys/{quota}"), None);
    assert_eq!(got.status, 200, "{got:?}");

    // One at a time, alternating nodes: the remaining count is shared.
    let small = create_key(
        &b,
        &session(
            &["prot"],
            json!({ "quota_max": 4, "quota_renewal_rate": 3600 }),
        ),
    );
    for (i, remaining) in [3, 2, 1, 0].into_iter().enumerate() {
        let r = with_key(nodes[i % 2], "/prot/", &small);
        assert_upstream(&r);
        assert_eq!(rate_headers(&r).1, remaining, "request {i}: {r:?}");
    }
    for n in nodes {
        assert_eq!(
            with_key(n, "/prot/", &small).assert_tyk_error(403),
            "Quota exceeded"
        );
        let details = admin(n, "GET", &format!("/tyk/keys/{small}"), None).json();
        assert_eq!(details["quota_remaining"], json!(0), "{details}");
    }
    let hits_before = up.requests().len();

    // Quota 10: 20 racing requests over both nodes, exactly 10 pass.
    let rs = burst(
        (0..20)
            .map(|i| {
                (
                    nodes[i % 2].addr(),
                    get_bytes("/prot/", &[("Authorization", &quota)]),
                )
            })
            .collect(),
    );
    assert_eq!(
        status_counts(&rs),
        BTreeMap::from([(200, 10), (403, 10)]),
        "quota 10 shared by two gateways"
    );
    assert_eq!(up.requests().len() - hits_before, 10);
    for n in nodes {
        assert_eq!(
            with_key(n, "/prot/", &quota).assert_tyk_error(403),
            "Quota exceeded"
        );
    }

    // Rate 4 per minute, one request at a time alternating nodes: 4 pass, then both refuse.
    let rate = create_key(&b, &session(&["prot"], json!({ "rate": 4, "per": 60 })));
    for i in 0..4 {
        assert_upstream(&with_key(nodes[i % 2], "/prot/", &rate));
    }
    for n in nodes {
        assert_eq!(
            with_key(n, "/prot/", &rate).assert_tyk_error(429),
            "Rate limit exceeded"
        );
    }
    // Racing over both nodes.
    let rate = create_key(&a, &session(&["prot"], json!({ "rate": 5, "per": 60 })));
    let rs = burst(
        (0..16)
            .map(|i| {
                (
                    nodes[i % 2].addr(),
                    get_bytes("/prot/", &[("Authorization", &rate)]),
                )
            })
            .collect(),
    );
    assert_eq!(
        status_counts(&rs),
        BTreeMap::from([(200, 5), (429, 11)]),
        "rate 5 per 60 s shared by two gateways"
    );

    // The shared window renews.
    let renew = create_key(&a, &session(&["prot"], json!({ "rate": 2, "per": 1 })));
    let burst_both = || {
        burst(
            (0..4)
                .map(|i| {
                    (
                        nodes[i % 2].addr(),
                        get_bytes("/prot/", &[("Authorization", &renew)]),
                    )
                })
                .collect(),
        )
    };
    assert_eq!(
        status_counts(&burst_both()),
        BTreeMap::from([(200, 2), (429, 2)])
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status_counts(&burst_both()),
        BTreeMap::from([(200, 2), (429, 2)]),
        "the shared rate window did not renew after 1.5 s"
    );

    // Deleted on B: refused on A.
    assert_key_action(
        &admin(&b, "DELETE", &format!("/tyk/keys/{quota}"), None),
        "deleted",
    );
    assert_eq!(
        with_key(&a, "/prot/", &quota).assert_tyk_error(403),
        "Access to this API has been disallowed"
    );
    for n in nodes {
        assert_secret_not_logged(n);
    }
}

/// Redis going away mid-test: requests that need the store get a clean JSON 5xx (never a hang,
/// never let through), the Gateway API answers JSON errors, keyless APIs keep working; once Redis
/// is back the gateway recovers by itself.
#[test]
fn redis_restart_gives_clean_errors_then_recovers() {
    let mut redis = RedisProc::start();
    let sb = Sandbox::new("redis-restart");
    let up = ScriptedUpstream::always(UPSTREAM_OK.to_vec());
    let target = format!("{}/", up.url());
    sb.write_conf(&redis_plugin_conf(&sb, &redis));
    sb.write_api("prot", &protected_api("prot", "/prot/", &target, json!({})));
    sb.write_api("open", &keyless_api("open", "/open/", &target));
    sb.write_api(
        "ext",
        &plugin_auth_api("ext", "/ext/", &target, "JsonAuth", header_extractor()),
    );
    sb.write_api(
        "noext",
        &plugin_auth_api("noext", "/noext/", &target, "JsonAuth", json!({})),
    );
    let gw = Gateway::start(&sb);
    let cached = [
        ("Authorization", "cached-user"),
        ("X-Cache-Seconds", "3600"),
    ];
    assert_upstream(&call(&gw, "/ext/", &cached));
    assert_upstream(&with_key(&gw, "/noext/", "plain-user"));
    let key = create_key(
        &gw,
        &session(
            &["prot"],
            json!({ "quota_max": 100, "quota_renewal_rate": 3600 }),
        ),
    );
    assert_upstream(&with_key(&gw, "/prot/", &key));

    redis.kill();
    let hits_before = up.requests().len();
    for i in 0..6 {
        let r = with_key(&gw, "/prot/", &key);
        assert!(
            (500..600).contains(&r.status),
            "request {i} with Redis down: expected a 5xx, got {r:?}"
        );
        r.assert_tyk_error(r.status);
        let admin_get = admin(&gw, "GET", &format!("/tyk/keys/{key}"), None);
        assert!((500..600).contains(&admin_get.status), "{admin_get:?}");
        assert_eq!(admin_get.json()["status"], "error", "{admin_get:?}");
    }
    // Plugin auth fails closed too: the cached session cannot be read, the plugin's session
    // cannot be stored.
    for r in [
        call(&gw, "/ext/", &cached),
        with_key(&gw, "/noext/", "plain-user"),
    ] {
        assert!(
            (500..600).contains(&r.status),
            "plugin auth with Redis down: expected a 5xx, got {r:?}"
        );
        r.assert_tyk_error(r.status);
    }
    let created = admin(
        &gw,
        "POST",
        "/tyk/keys/create",
        Some(&session(&["prot"], json!({}))),
    );
    assert!((500..600).contains(&created.status), "{created:?}");
    assert_eq!(created.json()["status"], "error", "{created:?}");
    let listed = admin(&gw, "GET", "/tyk/keys", None);
    assert!((500..600).contains(&listed.status), "{listed:?}");
    assert_eq!(
        up.requests().len() - hits_before,
        0,
        "a request was let through while the store was down"
    );
    // What does not need the store still works.
    assert_upstream(&gw.get("/open/"));
    assert_eq!(
        call(&gw, "/prot/", &[]).assert_tyk_error(401),
        "Authorization field missing"
    );

    // Redis back (empty: it ran without persistence).
    redis.spawn();
    assert!(
        wait_until(RECOVERY_WAIT, || admin(&gw, "GET", "/tyk/keys", None)
            .status
            == 200),
        "the Gateway API did not recover within {RECOVERY_WAIT:?} after Redis came back"
    );
    assert_eq!(
        with_key(&gw, "/prot/", &key).assert_tyk_error(403),
        "Access to this API has been disallowed",
        "the restarted Redis is empty, so the old key is unknown"
    );
    let key = create_key(
        &gw,
        &session(
            &["prot"],
            json!({ "quota_max": 2, "quota_renewal_rate": 3600 }),
        ),
    );
    let rs = burst(
        (0..6)
            .map(|_| (gw.addr(), get_bytes("/prot/", &[("Authorization", &key)])))
            .collect(),
    );
    assert_eq!(
        status_counts(&rs),
        BTreeMap::from([(200, 2), (403, 4)]),
        "limits after recovery"
    );
    // Plugin auth works again (the cache is empty, so the plugin is asked once more).
    let before = read_calls(&sb).len();
    assert_upstream(&call(&gw, "/ext/", &cached));
    assert_upstream(&call(&gw, "/ext/", &cached));
    assert_upstream(&with_key(&gw, "/noext/", "plain-user"));
    assert_eq!(
        read_calls(&sb)[before..],
        ["JsonAuth cached-user", "JsonAuth plain-user"],
        "after recovery the plugin's session is cached again"
    );
    assert_secret_not_logged(&gw);
}

/// Two gateways on one Redis share the auth plugin's cached session: the plugin is called once,
/// by whichever node saw the client first, and the session's quota is shared.
#[test]
fn redis_plugin_session_is_cached_once_for_both_gateways() {
    let redis = RedisProc::start();
    let sb = Sandbox::new("redis-plugin-cache");
    let up = ScriptedUpstream::always(UPSTREAM_OK.to_vec());
    sb.write_conf(&redis_plugin_conf(&sb, &redis));
    sb.write_api(
        "ext",
        &plugin_auth_api(
            "ext",
            "/ext/",
            &format!("{}/", up.url()),
            "JsonAuth",
            header_extractor(),
        ),
    );
    let a = Gateway::start(&sb);
    let b = Gateway::start(&sb);
    let headers = [
        ("Authorization", "shared-user"),
        (
            "X-Session",
            r#"{"quota_max": 6, "quota_renewal_rate": 3600}"#,
        ),
        ("X-Cache-Seconds", "3600"),
    ];
    assert_upstream(&call(&a, "/ext/", &headers));
    let rs = burst(
        (0..9)
            .map(|i| ([&a, &b][i % 2].addr(), get_bytes("/ext/", &headers)))
            .collect(),
    );
    assert_eq!(
        status_counts(&rs),
        BTreeMap::from([(200, 5), (403, 4)]),
        "the cached session's quota of 6 is shared by both gateways"
    );
    assert_eq!(
        read_calls(&sb),
        ["JsonAuth shared-user"],
        "gateway B must use the session gateway A's plugin call stored"
    );
    for n in [&a, &b] {
        assert_secret_not_logged(n);
    }
}

/// Requests on one keep-alive connection never share authentication: a key used by one request
/// does not authenticate the next, and the secret of one Gateway API call does not carry over.
#[test]
fn keep_alive_requests_do_not_share_a_session() {
    let env = Env::start("keep-alive", plugin_conf(), |up| {
        vec![
            ("prot", protected_api("prot", "/prot/", up, json!({}))),
            (
                "ext",
                plugin_auth_api("ext", "/ext/", up, "JsonAuth", header_extractor()),
            ),
        ]
    });
    let gw = &env.gw;
    let key = create_key(gw, &session(&["prot"], json!({})));
    let mut c = gw.client();
    let get = |headers: &[(&str, &str)]| {
        let mut r = req("GET", "/prot/");
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.to_bytes()
    };
    assert_upstream(&c.request(&get(&[("Authorization", &key)])));
    assert_eq!(
        c.request(&get(&[])).assert_tyk_error(401),
        "Authorization field missing"
    );
    assert_eq!(
        c.request(&get(&[("Authorization", "unknown")]))
            .assert_tyk_error(403),
        "Access to this API has been disallowed"
    );
    assert_upstream(&c.request(&get(&[("Authorization", &key)])));

    // Gateway API on the same connection.
    let listed = c.request(&admin_bytes_keep_alive("GET", "/tyk/keys", Some(SECRET)));
    assert_eq!(listed.status, 200, "{listed:?}");
    let refused = c.request(&admin_bytes_keep_alive("GET", "/tyk/keys", None));
    assert_eq!(assert_admin_error(&refused, 403), MSG_ADMIN_FORBIDDEN);

    // Plugin auth with a cached session, then a refused token, then no token.
    let ext = |auth: Option<&str>| {
        let mut r = req("GET", "/ext/").header("X-Cache-Seconds", "3600");
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.to_bytes()
    };
    assert_upstream(&c.request(&ext(Some("ka-user"))));
    assert_eq!(
        c.request(&ext(Some("bad-ka"))).assert_tyk_error(403),
        "Forbidden"
    );
    assert_eq!(
        c.request(&ext(None)).assert_tyk_error(400),
        "Authorization field missing"
    );
    assert_upstream(&c.request(&ext(Some("ka-user"))));
    assert_eq!(env.calls_of("JsonAuth ka-user"), 1, "{:?}", env.calls());
    assert_secret_not_logged(gw);
}

/// A keep-alive Gateway API request (no `Connection: close`, no body).
fn admin_bytes_keep_alive(method: &str, path: &str, secret: Option<&str>) -> Vec<u8> {
    let mut r = req(method, path);
    if let Some(s) = secret {
        r = r.header("X-Tyk-Authorization", s);
    }
    r.to_bytes()
}

/// A Redis that hangs (SIGSTOP) rather than dies: requests that need it get a clean JSON 5xx once
/// the store's timeout passes (never a hang, never let through); after SIGCONT it works again.
#[test]
fn redis_hang_gives_clean_errors_then_recovers() {
    let redis = RedisProc::start();
    let sb = Sandbox::new("redis-hang");
    let up = ScriptedUpstream::always(UPSTREAM_OK.to_vec());
    sb.write_conf(&conf(json!({ "storage": redis.storage() })));
    sb.write_api(
        "prot",
        &protected_api("prot", "/prot/", &format!("{}/", up.url()), json!({})),
    );
    let gw = Gateway::start(&sb);
    let key = create_key(&gw, &session(&["prot"], json!({})));
    assert_upstream(&with_key(&gw, "/prot/", &key));
    let pid = redis
        .child
        .as_ref()
        .map(|c| c.id())
        .unwrap_or_else(|| panic!("redis-server is not running"));
    let signal = |sig: libc::c_int| {
        let pid = libc::pid_t::try_from(pid).unwrap_or_else(|_| panic!("pid {pid} too large"));
        // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet, so
        // its pid is still ours.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    };
    signal(libc::SIGSTOP);
    let hits_before = up.requests().len();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for i in 0..2 {
            let r = with_key(&gw, "/prot/", &key);
            assert!(
                (500..600).contains(&r.status),
                "request {i} with Redis hung: expected a 5xx, got {r:?}"
            );
            r.assert_tyk_error(r.status);
        }
        let listed = admin(&gw, "GET", "/tyk/keys", None);
        assert!((500..600).contains(&listed.status), "{listed:?}");
        assert_eq!(listed.json()["status"], "error", "{listed:?}");
    }));
    // Resume Redis whatever happened, so the gateway and the server can be shut down cleanly.
    signal(libc::SIGCONT);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
    assert_eq!(
        up.requests().len(),
        hits_before,
        "let through while Redis hung"
    );
    assert!(
        wait_until(RECOVERY_WAIT, || with_key(&gw, "/prot/", &key).status
            == 200),
        "no recovery within {RECOVERY_WAIT:?} after Redis resumed"
    );
    assert_secret_not_logged(&gw);
}
