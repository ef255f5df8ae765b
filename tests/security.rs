//! Security rules from issue #8, tested end to end: headers a plugin may not set (routing,
//! framing and hop-by-hop headers, see protocol/PROTOCOL.md §4), the Gateway API secret never
//! reaching the log, and bundle and body-file paths staying inside their folders. (Zip entry
//! escapes are covered in tests/bundles.rs and tests/bundles_gateway.rs, body files in
//! tests/bodyfile.rs.)

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

/// A gateway with the scenario plugin (pipe) in front of `up`, one API per (listen path, mw).
fn plugin_gateway(tag: &str, up: &str, apis: &[(&str, serde_json::Value)]) -> (Gateway, Sandbox) {
    let sb = Sandbox::new(tag);
    sb.write_conf(&conf_with(json!({
        "coprocess_options": {
            "enable_coprocess": true,
            "pipe_command": ["python3", plugin_script("scenarios.py")],
            "hook_timeout_ms": 30000
        }
    })));
    for (lp, mw) in apis {
        let id = lp.trim_matches('/');
        sb.write_api(id, &hooked_api(id, lp, up, mw.clone()));
    }
    (Gateway::start(&sb), sb)
}

const HOP_BY_HOP: [&str; 8] = [
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Proxy-Authorization",
];

/// A pre hook setting Host, Content-Length, Transfer-Encoding, Connection, Expect and the other
/// hop-by-hop headers changes none of them upstream: Host is the target's, Content-Length
/// follows the new body, the rest are absent; its ordinary header arrives; the connection to
/// the client stays in sync.
#[test]
fn plugin_cannot_set_routing_framing_or_hop_by_hop_headers_upstream() {
    let up = ScriptedUpstream::always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    let (gw, _sb) = plugin_gateway(
        "sec-hijack",
        &format!("{}/", up.url()),
        &[("/h/", json!({"pre": [{"name": "Hijack"}]}))],
    );
    let mut c = gw.client();
    let r = c.request(&req("POST", "/h/x").body("original body").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(up.wait_for_requests(1, IO_TIMEOUT));
    let seen = up.requests()[0].clone();
    let raw = String::from_utf8_lossy(&seen.raw_head).to_string();
    assert_eq!(
        seen.header_all("host"),
        vec![up.addr().to_string().as_str()],
        "{raw}"
    );
    assert_eq!(seen.header_all("content-length"), vec!["5"], "{raw}");
    assert_eq!(seen.body, b"12345");
    assert!(!seen.chunked, "{raw}");
    assert_eq!(seen.header("x-legit"), Some("yes"), "{raw}");
    assert_eq!(seen.header("expect"), None, "{raw}");
    for h in HOP_BY_HOP {
        assert_eq!(seen.header(h), None, "{h} reached the upstream: {raw}");
    }
    // The client connection is still usable (nothing the plugin set closed or reframed it).
    let again = c.request(&req("GET", "/hello").to_bytes());
    assert_eq!(again.status, 200, "{again:?}");
}

/// Headers in a short-circuit reply (`return_overrides`) and in a response hook's reply cannot
/// reframe the response or the connection: Content-Length follows the body, hop-by-hop headers
/// are dropped, ordinary ones arrive, and the next request on the connection is answered.
#[test]
fn plugin_cannot_set_framing_or_hop_by_hop_headers_towards_the_client() {
    let up = ScriptedUpstream::always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    let (gw, _sb) = plugin_gateway(
        "sec-hijack-resp",
        &format!("{}/", up.url()),
        &[
            ("/o/", json!({"pre": [{"name": "HijackOverride"}]})),
            ("/r/", json!({"response": [{"name": "HijackResp"}]})),
        ],
    );
    let mut c = gw.client();
    for (path, body) in [("/o/x", &b"short"[..]), ("/r/x", &b"resp"[..])] {
        let r = c.request(&req("GET", path).to_bytes());
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.body, body, "{path}: {r:?}");
        let len = body.len().to_string();
        assert_eq!(
            r.header_all("content-length"),
            vec![len.as_str()],
            "{path}: {r:?}"
        );
        assert_eq!(r.header("x-legit"), Some("yes"), "{path}: {r:?}");
        for h in HOP_BY_HOP {
            assert_eq!(r.header(h), None, "{path}: {h} reached the client: {r:?}");
        }
        let again = c.request(&req("GET", "/hello").to_bytes());
        assert_eq!(again.status, 200, "{path}: follow-up: {again:?}");
    }
}

/// The Gateway API secret never appears in the log, at the most verbose level, whether calls
/// carry it, carry a wrong one, or carry it where it does not belong.
#[test]
fn admin_secret_never_appears_in_the_log() {
    const SECRET: &str = "adm1n-s3cret-never-logged-4f9c";
    let sb = Sandbox::new("sec-secret");
    let echo = EchoUpstream::start();
    sb.write_conf(&conf_with(json!({ "secret": SECRET })));
    sb.write_api(
        "echo",
        &keyless_api("echo", "/echo/", &format!("{}/", echo.url())),
    );
    let gw = Gateway::try_start(&sb.conf_path(), &[("RUST_LOG", "trace")])
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = |method: &str, path: &str, secret: &str, body: &str| {
        let mut r = req(method, path).header("X-Tyk-Authorization", secret);
        if !body.is_empty() {
            r = r.body(body.to_string());
        }
        gw.send(&r.close().to_bytes())
    };
    // Authenticated calls.
    assert_eq!(admin("GET", "/tyk/apis", SECRET, "").status, 200);
    assert_eq!(admin("GET", "/tyk/reload", SECRET, "").status, 200);
    let created = admin(
        "POST",
        "/tyk/keys/create",
        SECRET,
        r#"{"rate": 10, "per": 1, "access_rights": {}}"#,
    );
    assert!(created.status < 500, "{created:?}");
    // Failed calls: wrong secret, the secret with a suffix, missing header, secret in a query.
    for bad in ["wrong", &format!("{SECRET}x"), &SECRET[..SECRET.len() - 1]] {
        let r = admin("GET", "/tyk/apis", bad, "");
        assert_eq!(r.status, 403, "{r:?}");
    }
    let r = gw.send(&req("GET", "/tyk/apis").close().to_bytes());
    assert_eq!(r.status, 403, "{r:?}");
    let r = gw.send(
        &req("GET", &format!("/tyk/keys?secret={SECRET}"))
            .close()
            .to_bytes(),
    );
    assert_eq!(r.status, 403, "{r:?}");
    // A reload logs the configuration it loaded.
    gw.reload();
    assert!(gw.log().wait_for(0, "reload", IO_TIMEOUT).is_some());
    // The secret is in none of the lines (the query above also shows request URLs are not
    // logged with it).
    let log = gw.log().text();
    assert!(
        log.lines().count() > 3,
        "trace logging produced no lines:\n{log}"
    );
    for line in log.lines() {
        assert!(
            !line.contains(SECRET),
            "the Gateway API secret appears in the log: {line}"
        );
    }
    // `pipegate check` does not print it either.
    let out = run_check(&sb.conf_path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains(SECRET),
        "pipegate check printed the secret:\n{text}"
    );
}

/// A bundle name from an API definition cannot point outside the bundles folder: the directory is
/// named after the name's MD5, whatever the name holds.
#[test]
fn bundle_names_cannot_escape_the_bundles_folder() {
    let base = Path::new("/srv/middleware");
    for name in [
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../b.zip",
        "..",
        "bundle.zip\0../x",
        "%2e%2e%2fescape.zip",
    ] {
        let dir =
            pipegate::bundle::bundle_dir(base, name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(
            dir.parent(),
            Some(base.join("bundles").as_path()),
            "{name:?}: {dir:?}"
        );
        let leaf = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            leaf.len() == 32 && leaf.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name:?}: {dir:?}"
        );
    }
}
