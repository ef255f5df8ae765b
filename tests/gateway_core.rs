//! Integration tests of the gateway core: the real `pipegate` binary between a raw TCP client and
//! a real upstream (the echo upstream process, or a scripted in-test upstream when the upstream
//! has to misbehave). Covers routing, HTTP/1.1 framing and connection handling, limits, request
//! smuggling defences, upstream failures, reload, graceful shutdown and config checking.

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

#[test]
fn routes_by_longest_listen_path_strips_and_joins_target_base_path() {
    let sb = Sandbox::new("routing");
    let echo = EchoUpstream::start();
    sb.write_conf(&base_conf());
    let base = echo.url();
    sb.write_api("api", &keyless_api("api", "/api/", &format!("{base}/base")));
    sb.write_api(
        "apiv2",
        &keyless_api("apiv2", "/api/v2/", &format!("{base}/v2base/")),
    );
    let mut nostrip = keyless_api("nostrip", "/nostrip/", &format!("{base}/root"));
    merge(&mut nostrip, json!({"proxy": {"strip_listen_path": false}}));
    sb.write_api("nostrip", &nostrip);
    sb.write_api(
        "plain",
        &keyless_api("plain", "/plain/", &format!("{base}/")),
    );
    let gw = Gateway::start(&sb);

    // (request target, expected upstream path, expected upstream query)
    let cases = [
        ("/api/v2/items?x=1", "/v2base/items", "x=1"),
        ("/api/v2/a/b/c", "/v2base/a/b/c", ""),
        ("/api/v2", "/v2base", ""),
        (
            "/api/things/deep?k=v&k2=v2",
            "/base/things/deep",
            "k=v&k2=v2",
        ),
        ("/api/", "/base", ""),
        ("/api/v2x", "/base/v2x", ""),
        ("/nostrip/a/b", "/root/nostrip/a/b", ""),
        ("/plain/x?y=2", "/x", "y=2"),
        ("/plain/", "/", ""),
        ("/plain/q?a=%20b&c&d=%2F", "/q", "a=%20b&c&d=%2F"),
        // Absolute-form targets (RFC 9112 3.2.2) are routed by their path.
        ("http://gateway.test/api/abs?z=1", "/base/abs", "z=1"),
    ];
    let mut c = gw.client();
    for (i, (target, path, query)) in cases.iter().enumerate() {
        let token = format!("route-{i}");
        let r = c.request(&req("GET", target).token(&token).to_bytes());
        assert_eq!(r.status, 200, "{target}: {r:?}");
        assert_eq!(
            r.header("x-echo-token"),
            Some(token.as_str()),
            "{target}: {r:?}"
        );
        let e = r.echoed();
        assert_eq!(e.path, *path, "{target} reached the upstream as {e:?}");
        assert_eq!(e.query, *query, "{target} reached the upstream as {e:?}");
        assert_eq!(e.method, "GET");
    }
}

#[test]
fn unmatched_path_is_404_json_and_connection_stays_usable() {
    let env = EchoEnv::start("no-route", json!({}));
    let mut c = env.gw.client();
    for target in ["/nope", "/echo", "/ECHO/x", "/echoes/x"] {
        let r = c.request(&req("GET", target).to_bytes());
        if target == "/echo" {
            // "/echo" without the slash is served by the "/echo/" API (Tyk's behaviour).
            assert_eq!(r.status, 200, "{target}: {r:?}");
            continue;
        }
        r.assert_tyk_error(404);
    }
    let r = c.request(&req("GET", "/echo/after-404").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().path, "/after-404");
}

#[test]
fn upstream_status_and_headers_pass_through() {
    let env = EchoEnv::start("status", json!({}));
    let mut c = env.gw.client();
    let r = c.request(&req("GET", "/echo/x?status=503").token("s503").to_bytes());
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-echo-token"), Some("s503"));
    assert_eq!(r.header("x-echo-upstream"), Some("1"));
    assert_eq!(
        r.echoed().path,
        "/x",
        "the upstream's own body must pass through"
    );
    let r = c.request(&req("GET", "/echo/y?status=404").token("s404").to_bytes());
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.echoed().path, "/y");
}

#[test]
fn hello_health_check_answers_json() {
    let env = EchoEnv::start("hello", json!({}));
    let r = env.gw.get("/hello");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["status"], "pass", "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Connection handling
// ---------------------------------------------------------------------------------------------

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let env = EchoEnv::start("keepalive", json!({}));
    let mut c = env.gw.client();
    for i in 0..100 {
        let token = format!("ka-{i}");
        let (bytes, method, body) = if i % 2 == 0 {
            (
                req("GET", &format!("/echo/n/{i}")).token(&token).to_bytes(),
                "GET",
                None,
            )
        } else {
            let body = format!("body number {i}");
            (
                req("POST", &format!("/echo/n/{i}"))
                    .token(&token)
                    .body(body.clone())
                    .to_bytes(),
                "POST",
                Some(body),
            )
        };
        let r = c.request(&bytes);
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(!r.says_close(), "request {i} closed the connection: {r:?}");
        assert_eq!(r.header("x-echo-token"), Some(token.as_str()));
        let e = r.echoed();
        assert_eq!(e.method, method);
        assert_eq!(e.path, format!("/n/{i}"));
        assert_eq!(e.body, body.or(Some(String::new())), "request {i}");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let env = EchoEnv::start("pipeline", json!({}));
    let reqs: Vec<Vec<u8>> = vec![
        // The first one is slow, so later answers are ready first and must wait.
        req("GET", "/echo/p0?delay_ms=300").token("t0").to_bytes(),
        req("POST", "/echo/p1").token("t1").body("one").to_bytes(),
        req("GET", "/hello").to_bytes(),
        req("POST", "/echo/p3")
            .token("t3")
            .chunked(&[b"ab", b"cd"])
            .to_bytes(),
        req("GET", "/no-such-api").to_bytes(),
        req("HEAD", "/echo/p5").token("t5").to_bytes(),
        req("GET", "/echo/p6?chunked=1&size=3000")
            .token("t6")
            .to_bytes(),
        req("GET", "/echo/p7").token("t7").to_bytes(),
    ];
    let mut c = env.gw.client();
    c.send(&reqs.concat());

    let r = c.read_response();
    assert_eq!(
        (r.status, r.header("x-echo-token")),
        (200, Some("t0")),
        "{r:?}"
    );
    assert_eq!(r.echoed().path, "/p0");
    let r = c.read_response();
    assert_eq!(
        (r.status, r.header("x-echo-token")),
        (200, Some("t1")),
        "{r:?}"
    );
    assert_eq!(r.echoed().body.as_deref(), Some("one"));
    let r = c.read_response();
    assert_eq!(r.status, 200, "/hello: {r:?}");
    assert_eq!(r.json()["status"], "pass");
    let r = c.read_response();
    assert_eq!(
        (r.status, r.header("x-echo-token")),
        (200, Some("t3")),
        "{r:?}"
    );
    assert_eq!(r.echoed().body.as_deref(), Some("abcd"));
    let r = c.read_response();
    r.assert_tyk_error(404);
    let r = c.read_head_response();
    assert_eq!(
        (r.status, r.header("x-echo-token")),
        (200, Some("t5")),
        "{r:?}"
    );
    let r = c.read_response();
    assert_eq!(
        (r.status, r.header("x-echo-token")),
        (200, Some("t6")),
        "{r:?}"
    );
    assert_eq!(r.body, vec![b'x'; 3000]);
    let r = c.read_response();
    assert_eq!(
        (r.status, r.header("x-echo-token")),
        (200, Some("t7")),
        "{r:?}"
    );
    assert_eq!(r.echoed().path, "/p7");
}

#[test]
fn long_pipelined_bursts_are_answered_completely() {
    let env = EchoEnv::start("pipeline-burst", json!({}));
    // Requests the gateway answers itself, so the whole burst is served from its read buffer
    // without any upstream event: 404s mixed in first, then a long run of health checks.
    let expected = |i: usize| if i < 100 && i % 2 == 1 { 404 } else { 200 };
    let mut c = env.gw.client();
    let burst: Vec<u8> = (0..300)
        .flat_map(|i| {
            let path = if expected(i) == 404 {
                format!("/none/{i}")
            } else {
                "/hello".into()
            };
            req("GET", &path).to_bytes()
        })
        .collect();
    c.send(&burst);
    for i in 0..300 {
        let r = c
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("response {i} of 300 never came: {e}"));
        assert_eq!(r.status, expected(i), "response {i}: {r:?}");
    }

    // Proxied requests.
    let mut c = env.gw.client();
    let burst: Vec<u8> = (0..200)
        .flat_map(|i| {
            req("GET", &format!("/echo/b/{i}"))
                .token(&format!("b{i}"))
                .to_bytes()
        })
        .collect();
    c.send(&burst);
    for i in 0..200 {
        let r = c
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("proxied response {i} of 200 never came: {e}"));
        assert_eq!(
            r.header("x-echo-token"),
            Some(format!("b{i}").as_str()),
            "{r:?}"
        );
    }
}

#[test]
fn connection_close_is_honoured() {
    let env = EchoEnv::start("conn-close", json!({}));
    let mut c = env.gw.client();
    let r = c.request(&req("GET", "/echo/bye").close().to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.says_close(), "no Connection: close in {r:?}");
    c.assert_closed();

    // A request pipelined behind a `Connection: close` request must not be answered.
    let mut c = env.gw.client();
    let two = [
        req("GET", "/echo/first").token("first").close().to_bytes(),
        req("GET", "/echo/second").token("second").to_bytes(),
    ]
    .concat();
    c.send(&two);
    let r = c.read_response();
    assert_eq!(r.header("x-echo-token"), Some("first"), "{r:?}");
    c.assert_closed();
}

#[test]
fn request_followed_by_client_half_close_still_gets_its_response() {
    let env = EchoEnv::start("half-close", json!({}));
    let mut c = env.gw.client();
    c.send(&req("GET", "/echo/half").token("half").to_bytes());
    c.stream()
        .shutdown(std::net::Shutdown::Write)
        .unwrap_or_else(|e| panic!("shutdown(Write): {e}"));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-echo-token"), Some("half"));
    c.assert_closed();
}

#[test]
fn http10_requests_close_by_default_and_keep_alive_on_request() {
    let env = EchoEnv::start("http10", json!({}));
    let mut c = env.gw.client();
    let r = c.request(b"GET /echo/ten?a=b HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let e = r.echoed();
    assert_eq!((e.path.as_str(), e.query.as_str()), ("/ten", "a=b"));
    assert_eq!(e.header("host"), Some(env.echo.addr().to_string().as_str()));
    c.assert_closed();

    let mut c = env.gw.client();
    let ka = b"GET /echo/ka1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let r = c.request(ka);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("connection")
            .is_some_and(|v| has_token(v, "keep-alive")),
        "HTTP/1.0 keep-alive response must say so: {r:?}"
    );
    assert!(matches!(r.framing, Framing::Length(_)), "{r:?}");
    let r = c.request(b"GET /echo/ka2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().path, "/ka2");
}

#[test]
fn head_responses_have_no_body_and_keep_the_connection_in_sync() {
    let env = EchoEnv::start("head", json!({}));
    let mut c = env.gw.client();

    c.send(&req("HEAD", "/echo/h1").token("h1").to_bytes());
    let r = c.read_head_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-echo-token"), Some("h1"));
    let cl: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("HEAD response without Content-Length: {r:?}"));
    assert!(cl > 0);

    // If body bytes had been sent after the HEAD response, this response would be misparsed.
    let r = c.request(&req("GET", "/echo/after-head").token("g1").to_bytes());
    assert_eq!(r.header("x-echo-token"), Some("g1"), "{r:?}");
    assert_eq!(r.echoed().path, "/after-head");

    c.send(&req("HEAD", "/echo/h2?chunked=1").token("h2").to_bytes());
    let r = c.read_head_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-echo-token"), Some("h2"));
    let r = c.request(
        &req("GET", "/echo/after-chunked-head")
            .token("g2")
            .to_bytes(),
    );
    assert_eq!(r.header("x-echo-token"), Some("g2"), "{r:?}");

    c.send(&req("HEAD", "/hello").to_bytes());
    let r = c.read_head_response();
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.request(&req("GET", "/echo/after-hello").token("g3").to_bytes());
    assert_eq!(r.header("x-echo-token"), Some("g3"), "{r:?}");
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let env = EchoEnv::start("expect", json!({}));
    let mut c = env.gw.client();
    let body = b"hello world";
    let head = req("POST", "/echo/upload")
        .token("exp")
        .header("Expect", "100-continue")
        .body(&body[..])
        .head_bytes();
    c.send(&head);
    // Nothing of the body is sent yet: an interim 100 must come first.
    let interim = c.read_response();
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue, got {interim:?}"
    );
    c.send(body);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-echo-token"), Some("exp"));
    let e = r.echoed();
    assert_eq!(e.body.as_deref(), Some("hello world"));
    assert_eq!(
        e.header("expect"),
        None,
        "Expect must not be forwarded: {e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Chunked and large bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn chunked_request_body_arrives_intact() {
    let env = EchoEnv::start("chunked-req", json!({}));
    let mut c = env.gw.client();
    let pieces: [&[u8]; 4] = [
        b"The quick ",
        b"brown fox ",
        b"j",
        b"umps over the lazy dog",
    ];
    let r = c.request(
        &req("POST", "/echo/chunky")
            .token("c1")
            .chunked(&pieces)
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let e = r.echoed();
    assert_eq!(
        e.body.as_deref(),
        Some("The quick brown fox jumps over the lazy dog")
    );
    assert_eq!(e.body_len, 43);

    // Chunk extensions and trailers are legal and must not corrupt the body.
    let raw =
        b"POST /echo/ext HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n\
                5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let r = c.request(raw);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().body.as_deref(), Some("hello world"));

    // A bigger body in many chunks, then the connection is still in sync.
    let data = vec![b'z'; 300_000];
    let chunks: Vec<&[u8]> = data.chunks(7_001).collect();
    let r = c.request(&req("PUT", "/echo/many").chunked(&chunks).to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().body_len, 300_000);
    let r = c.request(&req("GET", "/echo/after").token("c2").to_bytes());
    assert_eq!(r.header("x-echo-token"), Some("c2"), "{r:?}");
}

#[test]
fn chunked_upstream_response_arrives_intact() {
    let env = EchoEnv::start("chunked-resp", json!({}));
    let mut c = env.gw.client();
    let r = c.request(
        &req("GET", "/echo/cr?chunked=1&size=100000")
            .token("cr")
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.framing, Framing::Chunked, "{r:?}");
    assert_eq!(r.body, vec![b'x'; 100_000]);
    // The JSON echo, chunked.
    let r = c.request(&req("GET", "/echo/cr2?chunked=1").token("cr2").to_bytes());
    assert_eq!(r.framing, Framing::Chunked, "{r:?}");
    assert_eq!(r.echoed().path, "/cr2");
    assert_eq!(r.header("x-echo-token"), Some("cr2"));
}

#[test]
fn http10_client_gets_chunked_upstream_response_dechunked() {
    let env = EchoEnv::start("dechunk", json!({}));
    let mut c = env.gw.client();
    let r = c.request(b"GET /echo/old?chunked=1&size=5000 HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(
        r.framing,
        Framing::Chunked,
        "HTTP/1.0 client got chunked framing: {r:?}"
    );
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert_eq!(r.body.len(), 5000, "{r:?}");
    assert!(
        r.body.iter().all(|&b| b == b'x'),
        "chunk framing leaked into the body: {r:?}"
    );
}

#[test]
fn large_uploads_stream_through() {
    // A stalled upload fails after client_body_timeout_ms without progress (408), so a gateway
    // that stops reading shows up within seconds instead of as a hang.
    let env = EchoEnv::start(
        "large-up",
        json!({"pipegate": {"client_body_timeout_ms": 10000}}),
    );
    let n = 20 * MIB;
    let data = pattern(n);
    let r = env.gw.send(
        &req("POST", "/echo/big")
            .token("up")
            .body(data.clone())
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "Content-Length upload: {r:?}");
    assert_eq!(r.echoed().body_len, n as u64);

    let chunks: Vec<&[u8]> = data.chunks(256 * 1024 + 17).collect();
    let r = env.gw.send(
        &req("POST", "/echo/bigchunked")
            .token("upc")
            .chunked(&chunks)
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "chunked upload: {r:?}");
    assert_eq!(r.echoed().body_len, n as u64);
}

#[test]
fn uploads_never_stall_midway() {
    // Head and body written at once, each on a new connection: near the end of the upload the
    // gateway finds megabytes already waiting in its socket buffer and no further readiness event
    // will come, so it must keep reading without one. The lost wake-up this guards against shows
    // in a fraction of uploads only (10-60% of 5 MiB uploads on the development machine), hence
    // many uploads of a few sizes; a stall fails after client_body_timeout_ms with a 408.
    let env = EchoEnv::start(
        "upload-stall",
        json!({"pipegate": {"client_body_timeout_ms": 10000}}),
    );
    let bodies: Vec<Vec<u8>> = [3, 5, 8].iter().map(|mb| pattern(mb * MIB)).collect();
    for i in 0..24 {
        let data = &bodies[i % bodies.len()];
        let r = env
            .gw
            .send(&req("POST", "/echo/up").body(data.clone()).to_bytes());
        assert_eq!(r.status, 200, "upload {i} ({} bytes): {r:?}", data.len());
        assert_eq!(r.echoed().body_len, data.len() as u64);
    }
}

#[test]
fn large_downloads_stream_through() {
    let env = EchoEnv::start("large-down", json!({}));
    let n = 20 * MIB;
    let mut c = env.gw.client();
    let r = c.request(&req("GET", &format!("/echo/big?size={n}")).to_bytes());
    assert_eq!(r.status, 200, "status {} reason {}", r.status, r.reason);
    assert_eq!(r.framing, Framing::Length(n as u64));
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().all(|&b| b == b'x'));

    let r = c.request(&req("GET", &format!("/echo/bigc?size={n}&chunked=1")).to_bytes());
    assert_eq!(r.status, 200, "status {} reason {}", r.status, r.reason);
    assert_eq!(r.framing, Framing::Chunked);
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().all(|&b| b == b'x'));
}

#[test]
fn large_body_round_trips_byte_for_byte() {
    let sb = Sandbox::new("mirror");
    let up = ScriptedUpstream::body_mirror();
    // A stall shows as a 408 after 10 s instead of the default 30 s.
    sb.write_conf(&conf_with(
        json!({"pipegate": {"client_body_timeout_ms": 10000}}),
    ));
    sb.write_api("m", &keyless_api("m", "/m/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sb);
    let data = pattern(20 * MIB + 12_345);
    let mut c = gw.client();
    let r = c.request(&req("PUT", "/m/blob").body(data.clone()).to_bytes());
    assert_eq!(r.status, 200, "status {} reason {}", r.status, r.reason);
    assert_eq!(r.body.len(), data.len());
    assert!(r.body == data, "the body came back changed");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body == data, "the upstream received a changed body");
}

// ---------------------------------------------------------------------------------------------
// Header handling
// ---------------------------------------------------------------------------------------------

#[test]
fn hop_by_hop_request_headers_are_not_forwarded() {
    let env = EchoEnv::start("hop-req", json!({}));
    let r = env.gw.send(
        &req("GET", "/echo/hop")
            .header("Connection", "keep-alive, X-Hop-Custom")
            .header("X-Hop-Custom", "secret")
            .header("Keep-Alive", "timeout=5")
            .header("Proxy-Connection", "keep-alive")
            .header("TE", "trailers")
            .header("X-End-To-End", "kept")
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let e = r.echoed();
    for h in ["X-Hop-Custom", "Keep-Alive", "Proxy-Connection", "Te"] {
        assert_eq!(e.header(h), None, "{h} was forwarded: {e:?}");
    }
    if let Some(conn) = e.header("connection") {
        assert!(
            !has_token(conn, "x-hop-custom"),
            "client Connection forwarded: {e:?}"
        );
    }
    assert_eq!(e.header("x-end-to-end"), Some("kept"), "{e:?}");
}

#[test]
fn hop_by_hop_response_headers_are_not_forwarded() {
    let sb = Sandbox::new("hop-resp");
    let up = ScriptedUpstream::always(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Up-Hop\r\nX-Up-Hop: 1\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Up-Kept: yes\r\n\r\nok"
            .to_vec(),
    );
    sb.write_conf(&base_conf());
    sb.write_api("u", &keyless_api("u", "/u/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sb);
    let mut c = gw.client();
    let r = c.request(&req("GET", "/u/x").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"ok");
    for h in ["X-Up-Hop", "Keep-Alive", "Proxy-Connection"] {
        assert!(
            r.header(h).is_none(),
            "{h} was forwarded to the client: {r:?}"
        );
    }
    if let Some(conn) = r.header("connection") {
        assert!(!has_token(conn, "x-up-hop"), "{r:?}");
    }
    assert_eq!(r.header("x-up-kept"), Some("yes"), "{r:?}");
    // The upstream's Connection header did not say close: the client connection stays usable.
    let r = c.request(&req("GET", "/u/y").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn x_forwarded_for_is_appended() {
    let env = EchoEnv::start("xff", json!({}));
    let mut c = env.gw.client();
    let r = c.request(&req("GET", "/echo/a").to_bytes());
    assert_eq!(
        r.echoed().header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{r:?}"
    );

    let r = c.request(
        &req("GET", "/echo/b")
            .header("X-Forwarded-For", "10.1.2.3")
            .to_bytes(),
    );
    assert_eq!(
        r.echoed().header("x-forwarded-for"),
        Some("10.1.2.3, 127.0.0.1"),
        "{r:?}"
    );

    let r = c.request(
        &req("GET", "/echo/c")
            .header("X-Forwarded-For", "10.0.0.1")
            .header("X-Forwarded-For", "10.0.0.2")
            .to_bytes(),
    );
    assert_eq!(
        r.echoed().header("x-forwarded-for"),
        Some("10.0.0.1, 10.0.0.2, 127.0.0.1"),
        "{r:?}"
    );
}

#[test]
fn host_is_rewritten_to_the_target_unless_preserve_host_header() {
    let sb = Sandbox::new("host");
    let echo = EchoUpstream::start();
    sb.write_conf(&base_conf());
    sb.write_api(
        "rw",
        &keyless_api("rw", "/rw/", &format!("{}/", echo.url())),
    );
    let mut keep = keyless_api("keep", "/keep/", &format!("{}/", echo.url()));
    merge(&mut keep, json!({"proxy": {"preserve_host_header": true}}));
    sb.write_api("keep", &keep);
    let gw = Gateway::start(&sb);
    let mut c = gw.client();

    let r = c.request(&req("GET", "/rw/x").host("client.example:1234").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    let upstream_host = echo.addr().to_string();
    assert_eq!(
        r.echoed().header("host"),
        Some(upstream_host.as_str()),
        "{r:?}"
    );

    let r = c.request(&req("GET", "/keep/x").host("client.example:1234").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.echoed().header("host"),
        Some("client.example:1234"),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[test]
fn header_too_large_is_431() {
    let env = EchoEnv::start("431", json!({"pipegate": {"max_header_bytes": 4096}}));
    // Control: a head well under the limit passes.
    let r = env.gw.send(
        &req("GET", "/echo/ok")
            .header("X-Big", &"a".repeat(2000))
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");

    let mut c = env.gw.client();
    c.send(
        &req("GET", "/echo/big")
            .header("X-Big", &"a".repeat(8000))
            .to_bytes(),
    );
    let r = c.read_response();
    r.assert_tyk_error(431);
    c.assert_closed();
}

#[test]
fn body_over_the_limit_is_413() {
    let env = EchoEnv::start("413", json!({"pipegate": {"max_request_body_bytes": 1000}}));
    // Control: exactly the limit passes.
    let r = env
        .gw
        .send(&req("POST", "/echo/ok").body(vec![b'b'; 1000]).to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().body_len, 1000);

    // Declared too large: refused from the head alone.
    let mut c = env.gw.client();
    c.send(b"POST /echo/big HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5000\r\n\r\n");
    c.read_response().assert_tyk_error(413);
    c.assert_closed();

    // Chunked, so the size is only known while streaming (on a connection that already served
    // a request).
    let mut c = env.gw.client();
    assert_eq!(c.request(&req("GET", "/hello").to_bytes()).status, 200);
    let piece = vec![b'c'; 600];
    c.send(
        &req("POST", "/echo/bigc")
            .chunked(&[&piece, &piece, &piece])
            .to_bytes(),
    );
    c.read_response().assert_tyk_error(413);
    c.assert_closed();

    // With Expect: 100-continue the answer is 413 at once, never 100.
    let mut c = env.gw.client();
    c.send(b"POST /echo/exp HTTP/1.1\r\nHost: gateway.test\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n");
    c.read_response().assert_tyk_error(413);
}

#[test]
fn body_over_the_limit_is_413_even_while_the_client_is_still_sending_it() {
    // A client that does not use Expect sends head and body at once (curl, most libraries). The
    // 413 must reach it even though the gateway will not read the body.
    let env = EchoEnv::start(
        "413-sending",
        json!({"pipegate": {"max_request_body_bytes": 1000}}),
    );
    let mut c = env.gw.client();
    let request = req("POST", "/echo/big")
        .body(vec![b'q'; 4 * MIB])
        .to_bytes();
    // The write may fail once the gateway has answered and closed; the answer must still arrive.
    let _ = c.try_send(&request);
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("the 413 answer was lost: {e}"));
    r.assert_tyk_error(413);
}

#[test]
fn slow_request_head_is_408() {
    let env = EchoEnv::start(
        "408",
        json!({"pipegate": {"client_header_timeout_ms": 500}}),
    );
    let mut c = env.gw.client();
    c.send(b"GET /echo/slow HTTP/1.1\r\nHost: gateway.test\r\n");
    let r = c.read_response();
    r.assert_tyk_error(408);
    c.assert_closed();
}

#[test]
fn stalled_request_body_is_408() {
    let env = EchoEnv::start(
        "408-body",
        json!({"pipegate": {"client_body_timeout_ms": 500}, "proxy_default_timeout": 5}),
    );
    let mut c = env.gw.client();
    c.send(
        b"POST /echo/stall HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    let r = c.read_response();
    r.assert_tyk_error(408);
    c.assert_closed();
}

#[test]
fn malformed_requests_are_400_and_close_the_connection() {
    let env = EchoEnv::start("400", json!({}));
    let cases: [(&str, &[u8]); 4] = [
        (
            "header without colon",
            b"GET /echo/ HTTP/1.1\r\nHost gateway.test\r\n\r\n",
        ),
        (
            "TLS handshake bytes",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        ),
        (
            "HTTP/1.1 without Host",
            b"GET /echo/ HTTP/1.1\r\nX-A: b\r\n\r\n",
        ),
        (
            "bad request line",
            b"GET  /echo/ HTTP/1.1 extra\r\nHost: a\r\n\r\n",
        ),
    ];
    for (name, bytes) in cases {
        let mut c = env.gw.client();
        c.send(bytes);
        let r = c
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("{name}: no response: {e}"));
        assert_eq!(r.status, 400, "{name}: {r:?}");
        r.assert_tyk_error(400);
        c.assert_closed();
    }
}

#[test]
fn request_smuggling_shapes_are_rejected_with_400() {
    let sb = Sandbox::new("smuggling");
    let up = ScriptedUpstream::always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    sb.write_conf(&base_conf());
    sb.write_api("s", &keyless_api("s", "/s/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sb);

    // Control: a valid request reaches the upstream.
    let r = gw.send(&req("POST", "/s/control").body("hello").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(up.wait_for_requests(1, IO_TIMEOUT));
    // Control: repeated but equal Content-Length is legal (RFC 9110 8.6) and sent on as one.
    let r = gw.send(
        b"POST /s/dup HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(up.wait_for_requests(2, IO_TIMEOUT));
    let dup = &up.requests()[1];
    assert_eq!(dup.body, b"hello");
    assert_eq!(dup.header_all("content-length"), vec!["5"], "{dup:?}");

    let smuggled = "GET /s/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = "POST /s/x HTTP/1.1\r\nHost: gateway.test\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "CL then TE",
            format!(
                "{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE then CL",
            format!(
                "{h}Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "differing duplicate CL",
            format!("{h}Content-Length: 5\r\nContent-Length: 44\r\n\r\nhello{smuggled}"),
        ),
        (
            "CL list",
            format!("{h}Content-Length: 5, 44\r\n\r\nhello{smuggled}"),
        ),
        (
            "CL with sign",
            format!("{h}Content-Length: +5\r\n\r\nhello"),
        ),
        (
            "TE chunked, identity",
            format!("{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE unknown",
            format!("{h}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE twice",
            format!("{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "space before colon",
            format!("{h}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold",
            "GET /s/x HTTP/1.1\r\nHost: gateway.test\r\nX-Folded: a\r\n b\r\n\r\n".to_string(),
        ),
        (
            "NUL in header value",
            "GET /s/x HTTP/1.1\r\nHost: gateway.test\r\nX-Nul: a\0b\r\n\r\n".to_string(),
        ),
        (
            "chunk size -1",
            format!("{h}Transfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "chunk size 0x5",
            format!("{h}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "chunk lines with bare LF",
            format!("{h}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{smuggled}"),
        ),
    ];
    for (name, raw) in &cases {
        // Each shape arrives on a connection that already served a request, as smuggling
        // attempts do (and so that the gateway has seen the socket writable before).
        let mut c = gw.client();
        let warm = c.request(&req("GET", "/hello").to_bytes());
        assert_eq!(warm.status, 200, "{name}: warm-up request failed: {warm:?}");
        c.send(raw.as_bytes());
        let r = c
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("{name}: no response: {e}"));
        assert_eq!(r.status, 400, "{name}: {r:?}");
        r.assert_tyk_error(400);
        c.assert_closed();
        // Attribute a crash to its case when the log line is already there (the final check,
        // when the gateway is dropped, catches the rest).
        assert!(
            gw.panics().is_empty(),
            "{name}: the gateway panicked: {:?}",
            gw.panics()
        );
    }
    let seen = up.requests();
    assert!(
        seen.iter().all(|r| !r.target.contains("smuggled")),
        "a smuggled request reached the upstream: {seen:?}"
    );
    assert_eq!(
        seen.len(),
        2,
        "only the control requests may reach the upstream complete: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_upstream_is_502_json() {
    let sb = Sandbox::new("502");
    sb.write_conf(&base_conf());
    let down = refused_addr();
    sb.write_api(
        "down",
        &keyless_api("down", "/down/", &format!("http://{down}/")),
    );
    let gw = Gateway::start(&sb);
    let mut c = gw.client();
    let r = c.request(&req("GET", "/down/x").to_bytes());
    r.assert_tyk_error(502);
    // The client connection survives an upstream failure.
    let r = c.request(&req("GET", "/hello").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn slow_upstream_is_504_json() {
    let env = EchoEnv::start("504", json!({"proxy_default_timeout": 0.5}));
    let mut c = env.gw.client();
    let r = c.request(&req("GET", "/echo/slow?delay_ms=5000").to_bytes());
    r.assert_tyk_error(504);
}

#[test]
fn upstream_that_never_answers_is_504_json() {
    let sb = Sandbox::new("silent");
    let up = ScriptedUpstream::silent();
    sb.write_conf(&conf_with(json!({"proxy_default_timeout": 0.5})));
    sb.write_api("q", &keyless_api("q", "/q/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sb);
    let mut c = gw.client();
    let r = c.request(&req("GET", "/q/x").to_bytes());
    r.assert_tyk_error(504);
    assert_eq!(
        up.requests().len(),
        1,
        "the request should have reached the upstream"
    );
}

#[test]
fn upstream_sending_slowly_but_steadily_is_not_cut_off() {
    // proxy_default_timeout bounds the wait for upstream data, not the whole response: a body
    // trickling in for longer than the timeout, with short pauses, must arrive whole.
    let sb = Sandbox::new("trickle");
    let up = ScriptedUpstream::start(|mut c| {
        if c.read_request().is_none() {
            return;
        }
        if c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n")
            .is_err()
        {
            return;
        }
        for i in 0..15u8 {
            thread::sleep(Duration::from_millis(250));
            if c.write(&[b'a' + i]).is_err() {
                return;
            }
        }
    });
    sb.write_conf(&conf_with(json!({"proxy_default_timeout": 2})));
    sb.write_api("t", &keyless_api("t", "/t/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sb);
    let mut c = gw.client();
    let r = c.request(&req("GET", "/t/x").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"abcdefghijklmno");
}

#[test]
fn upstream_reset_mid_response_closes_the_client_connection() {
    let sb = Sandbox::new("reset");
    let up = ScriptedUpstream::start(|mut c| {
        if c.read_request().is_none() {
            return;
        }
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        out.extend_from_slice(&[b'r'; 1000]);
        let _ = c.write(&out);
        thread::sleep(Duration::from_millis(100));
        c.reset();
    });
    sb.write_conf(&base_conf());
    sb.write_api("r", &keyless_api("r", "/r/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sb);
    let mut c = gw.client();
    c.send(&req("GET", "/r/x").to_bytes());
    match c.try_read_response(false) {
        Ok(r) => panic!("a truncated response was delivered as complete: {r:?}"),
        Err(e) => assert_ne!(
            e.kind(),
            ErrorKind::TimedOut,
            "the client connection hung instead of closing: {e}"
        ),
    }
    // The gateway is fine afterwards.
    assert_eq!(gw.get("/hello").status, 200);
}

#[test]
fn truncated_chunked_upstream_response_is_not_completed_for_the_client() {
    let sb = Sandbox::new("trunc-chunked");
    let up = ScriptedUpstream::start(|mut c| {
        if c.read_request().is_none() {
            return;
        }
        // Two chunks, then FIN without the last chunk.
        let _ = c.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n",
        );
    });
    sb.write_conf(&base_conf());
    sb.write_api("t", &keyless_api("t", "/t/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sb);
    let mut c = gw.client();
    c.send(&req("GET", "/t/x").to_bytes());
    match c.try_read_response(false) {
        Ok(r) => panic!("a truncated chunked response was completed: {r:?}"),
        Err(e) => assert_ne!(e.kind(), ErrorKind::TimedOut, "client connection hung: {e}"),
    }
}

#[test]
fn upstream_dropping_the_connection_in_its_head_is_502() {
    // The upstream writes part of a response head and closes.
    let up = ScriptedUpstream::start(|mut conn: UpConn| {
        if conn.read_request().is_some() {
            let _ = conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/pl");
        }
    });
    let sandbox = Sandbox::new("reset-head");
    sandbox.write_conf(&conf_with(json!({})));
    sandbox.write_api("t", &keyless_api("t", "/t/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sandbox);
    let mut c = gw.client();
    c.send(&req("GET", "/t/x").to_bytes());
    let r = c
        .try_read_response(false)
        .unwrap_or_else(|e| panic!("expected a 502, got no response: {e}"));
    r.assert_tyk_error(502);
}

#[test]
fn echo_upstream_reset_mid_body_closes_the_client_connection() {
    // reset=1: a head promising more body than is sent, then a TCP reset.
    let env = EchoEnv::start("reset-body", json!({}));
    let mut c = env.gw.client();
    c.send(&req("GET", "/echo/x?reset=1").to_bytes());
    match c.try_read_response(false) {
        Ok(r) => panic!("a truncated response was completed: {r:?}"),
        Err(e) => assert_ne!(e.kind(), ErrorKind::TimedOut, "client connection hung: {e}"),
    }
}

#[test]
fn close_delimited_upstream_response_is_delivered_whole() {
    let env = EchoEnv::start("close-delim", json!({}));
    let mut c = env.gw.client();
    let r = c.request(&req("GET", "/echo/cd?close=1&size=70000").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.len(), 70_000, "{r:?}");
    assert!(r.body.iter().all(|&b| b == b'x'));
}

#[test]
fn upstream_connection_that_said_close_is_not_reused() {
    let sb = Sandbox::new("up-close");
    let up = ScriptedUpstream::start(|mut c| {
        if let Some(r) = c.read_request() {
            let body = format!("served {}", r.target);
            let _ = c.write(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        // The connection is closed here, as announced.
    });
    sb.write_conf(&base_conf());
    sb.write_api("u", &keyless_api("u", "/u/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sb);
    let mut c = gw.client();
    for i in 0..5 {
        // POST is not retried by a gateway, so a reused dead connection would show as a 502.
        let r = c.request(&req("POST", &format!("/u/{i}")).body("x").to_bytes());
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.text(), format!("served /{i}"));
    }
    assert_eq!(
        up.accepted(),
        5,
        "each request needs its own upstream connection"
    );
}

#[test]
fn upstream_closing_kept_alive_connections_silently_is_survived() {
    // The upstream answers with keep-alive framing and then closes anyway (an idle timeout of 0),
    // so a pooled connection is dead when it is next used; idempotent requests must still work.
    let sb = Sandbox::new("up-silent-close");
    let up = ScriptedUpstream::start(|mut c| {
        if c.read_request().is_some() {
            let _ = c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    sb.write_conf(&base_conf());
    sb.write_api("u", &keyless_api("u", "/u/", &format!("{}/", up.url())));
    let gw = Gateway::start(&sb);
    let mut c = gw.client();
    for i in 0..10 {
        let r = c.request(&req("GET", &format!("/u/{i}")).to_bytes());
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body, b"ok");
    }
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

#[test]
fn sighup_reload_adds_an_api_while_keep_alive_clients_keep_working() {
    let env = EchoEnv::start("sighup", json!({}));
    let mut ka = env.gw.client();
    let r = ka.request(&req("GET", "/echo/before").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    ka.request(&req("GET", "/added/x").to_bytes())
        .assert_tyk_error(404);

    env.sandbox.write_api(
        "added",
        &keyless_api("added", "/added/", &format!("{}/", env.echo.url())),
    );
    let mark = env.gw.log().mark();
    env.gw.reload();
    let served = wait_until(IO_TIMEOUT, || env.gw.get("/added/new").status == 200);
    assert!(served, "the new API was not served after SIGHUP");
    assert!(
        env.gw
            .log()
            .wait_for(mark, "configuration reloaded", IO_TIMEOUT)
            .is_some(),
        "no reload log line"
    );

    // The connection opened before the reload still works, and sees the new API.
    let r = ka.request(&req("GET", "/echo/after").token("old-conn").to_bytes());
    assert_eq!(r.header("x-echo-token"), Some("old-conn"), "{r:?}");
    let r = ka.request(&req("GET", "/added/y").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().path, "/y");
}

#[test]
fn sighup_with_a_broken_definition_keeps_the_running_configuration() {
    let env = EchoEnv::start("sighup-bad", json!({}));
    let mut ka = env.gw.client();
    assert_eq!(ka.request(&req("GET", "/echo/a").to_bytes()).status, 200);
    env.sandbox
        .write_file("apps/broken.json", "{\"api_id\": \"broken\", \"proxy\": {");
    let mark = env.gw.log().mark();
    env.gw.reload();
    let line = env
        .gw
        .log()
        .wait_for(mark, "reload failed", IO_TIMEOUT)
        .unwrap_or_else(|| panic!("no reload failure in the log:\n{}", env.gw.log().text()));
    assert!(
        line.contains("broken.json"),
        "the log line should name the file: {line}"
    );
    let r = ka.request(&req("GET", "/echo/b").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(env.gw.get("/echo/c").status, 200);
}

#[test]
fn sigterm_finishes_in_flight_requests_exits_0_and_refuses_new_connections() {
    let sb = Sandbox::new("sigterm");
    let up = ScriptedUpstream::start(|mut c| {
        while c.read_request().is_some() {
            thread::sleep(Duration::from_millis(1500));
            if c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
                .is_err()
            {
                return;
            }
        }
    });
    sb.write_conf(&base_conf());
    sb.write_api(
        "slow",
        &keyless_api("slow", "/slow/", &format!("{}/", up.url())),
    );
    let mut gw = Gateway::start(&sb);
    let addr = gw.addr();

    // An idle keep-alive connection: the drain should close it.
    let mut idle = gw.client();
    assert_eq!(idle.request(&req("GET", "/hello").to_bytes()).status, 200);

    let mut c = gw.client();
    c.send(&req("GET", "/slow/x").to_bytes());
    assert!(
        up.wait_for_requests(1, IO_TIMEOUT),
        "the request never reached the upstream"
    );
    gw.terminate();

    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"done");
    assert!(
        r.says_close(),
        "a draining gateway should say Connection: close: {r:?}"
    );
    c.assert_closed();
    idle.assert_closed();

    let status = gw
        .wait_exit(IO_TIMEOUT)
        .unwrap_or_else(|| panic!("the gateway did not exit after SIGTERM"));
    assert!(status.success(), "exit status {status}");
    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a new connection was accepted after shutdown"),
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn check_reports_file_field_and_reason() {
    // A broken tyk.conf.
    let sb = Sandbox::new("check-conf");
    sb.write_conf(&conf_with(json!({
        "listen_port": 70000,
        "pipegate": {"max_header_bytes": 10}
    })));
    let out = run_check(&sb.conf_path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check accepted a bad tyk.conf:\n{stderr}"
    );
    let conf = sb.conf_path().display().to_string();
    for field in ["listen_port", "pipegate.max_header_bytes"] {
        let prefix = format!("{conf}: {field}: ");
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no `{prefix}<reason>` line in:\n{stderr}"));
        assert!(line.len() > prefix.len() + 5, "no reason in {line:?}");
    }

    // A good tyk.conf with a broken API definition.
    let sb = Sandbox::new("check-api");
    sb.write_conf(&base_conf());
    sb.write_api(
        "bad",
        &json!({"api_id": "bad", "name": "bad", "use_keyless": true,
                "proxy": {"listen_path": "/bad/", "strip_listen_path": "yes"}}),
    );
    let out = run_check(&sb.conf_path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted a bad API:\n{stderr}");
    let file = sb.apps_dir().join("bad.json").display().to_string();
    for field in ["proxy.target_url", "proxy.strip_listen_path"] {
        let prefix = format!("{file}: {field}: ");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.len() > prefix.len() + 5),
            "no `{prefix}<reason>` line in:\n{stderr}"
        );
    }

    // Control: the same sandbox, fixed, passes.
    sb.write_api("bad", &keyless_api("bad", "/bad/", "http://127.0.0.1:9/"));
    let out = run_check(&sb.conf_path());
    assert!(
        out.status.success(),
        "check rejected a good configuration:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn realistic_tyk_files_serve_requests_unchanged() {
    let sb = Sandbox::new("tyk-real");
    let echo = EchoUpstream::start();
    sb.write_file("tyk.conf", REAL_TYK_CONF);
    sb.write_file(
        "apps/app_sample.json",
        REAL_TYK_API.replace("__TARGET__", &format!("{}/", echo.url())),
    );
    let out = run_check(&sb.conf_path());
    assert!(
        out.status.success(),
        "check rejected a real Tyk configuration:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gw = Gateway::start(&sb);
    let mut c = gw.client();
    let r = c.request(
        &req("GET", "/tyk-api-test/get?param=1")
            .token("real")
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-echo-token"), Some("real"));
    let e = r.echoed();
    assert_eq!((e.path.as_str(), e.query.as_str()), ("/get", "param=1"));
    let r = c.request(
        &req("POST", "/tyk-api-test/post")
            .body("{\"a\":1}")
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().body.as_deref(), Some("{\"a\":1}"));
    let r = c.request(&req("GET", "/hello").to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
}

/// A tyk.conf as Tyk users have them (modelled on Tyk's sample), with many keys pipegate does not
/// use. Only the listen address and port differ from a stock file, so the test can run in
/// parallel.
const REAL_TYK_CONF: &str = r#"{
  "listen_address": "127.0.0.1",
  "listen_port": 0,
  "secret": "352d20ee67be67f6340b4c0605b044b7",
  "node_secret": "352d20ee67be67f6340b4c0605b044b7",
  "template_path": "./templates",
  "tyk_js_path": "./js/tyk.js",
  "use_db_app_configs": false,
  "app_path": "./apps",
  "middleware_path": "./middleware",
  "storage": {
    "type": "redis",
    "host": "localhost",
    "port": 6379,
    "hosts": null,
    "username": "",
    "password": "",
    "database": 0,
    "optimisation_max_idle": 2000,
    "optimisation_max_active": 4000,
    "enable_cluster": false
  },
  "enable_analytics": false,
  "analytics_config": {
    "type": "",
    "ignored_ips": [],
    "enable_detailed_recording": false,
    "enable_geo_ip": false,
    "geo_ip_db_path": "",
    "normalise_urls": {
      "enabled": true,
      "normalise_uuids": true,
      "normalise_numbers": true,
      "custom_patterns": []
    }
  },
  "health_check": {
    "enable_health_checks": false,
    "health_check_value_timeouts": 60
  },
  "optimisations_use_async_session_write": true,
  "enable_non_transactional_rate_limiter": true,
  "enable_sentinel_rate_limiter": false,
  "enable_redis_rolling_limiter": false,
  "allow_master_keys": false,
  "policies": {
    "policy_source": "file",
    "policy_record_name": "./policies/policies.json"
  },
  "hash_keys": true,
  "hash_key_function": "murmur64",
  "suppress_redis_signal_reload": false,
  "force_global_session_lifetime": false,
  "global_session_lifetime": 100,
  "max_idle_connections_per_host": 500,
  "enable_jsvm": true,
  "proxy_ssl_insecure_skip_verify": false,
  "http_server_options": {
    "enable_websockets": true,
    "use_ssl": false,
    "certificates": []
  },
  "uptime_tests": {
    "disable": true,
    "config": {
      "enable_uptime_analytics": false,
      "failure_trigger_sample_size": 3,
      "time_wait": 300,
      "checker_pool_size": 50
    }
  },
  "local_session_cache": {
    "disable_cached_session_state": false
  },
  "enable_separate_cache_store": false,
  "enable_custom_domains": true,
  "hostname": "",
  "control_api_hostname": "",
  "log_level": "info",
  "close_connections": false,
  "coprocess_options": {
    "enable_coprocess": false,
    "python_path_prefix": ""
  },
  "enable_bundle_downloader": true,
  "bundle_base_url": "",
  "enforce_org_quotas": false,
  "experimental_process_org_off_thread": true,
  "disable_dashboard_zeroconf": true,
  "track_404_logs": false
}
"#;

/// A keyless Tyk classic API definition as exported by Tyk (version data, auth, CORS, cache,
/// middleware sections, ...). `__TARGET__` is replaced by the echo upstream's URL.
const REAL_TYK_API: &str = r#"{
  "name": "Tyk Test Keyless API",
  "slug": "tyk-test-keyless",
  "api_id": "3a8b2c1d0e9f4a7b8c6d5e4f3a2b1c0d",
  "org_id": "default",
  "use_keyless": true,
  "use_oauth2": false,
  "use_openid": false,
  "use_basic_auth": false,
  "use_mutual_tls_auth": false,
  "use_standard_auth": false,
  "enable_jwt": false,
  "enable_signature_checking": false,
  "enable_coprocess_auth": false,
  "auth": {
    "auth_header_name": "Authorization",
    "use_param": false,
    "param_name": "",
    "use_cookie": false,
    "cookie_name": ""
  },
  "auth_configs": {
    "authToken": { "auth_header_name": "Authorization" },
    "basic": { "auth_header_name": "Authorization" }
  },
  "definition": {
    "location": "header",
    "key": "x-api-version",
    "strip_path": false
  },
  "version_data": {
    "not_versioned": true,
    "default_version": "",
    "versions": {
      "Default": {
        "name": "Default",
        "expires": "",
        "use_extended_paths": true,
        "paths": { "ignored": [], "white_list": [], "black_list": [] },
        "extended_paths": {
          "ignored": [],
          "white_list": [],
          "black_list": [],
          "cache": [],
          "transform": [],
          "transform_headers": [],
          "hard_timeouts": [],
          "url_rewrites": []
        },
        "global_headers": {},
        "global_headers_remove": [],
        "global_size_limit": 0,
        "override_target": ""
      }
    }
  },
  "proxy": {
    "preserve_host_header": false,
    "listen_path": "/tyk-api-test/",
    "target_url": "__TARGET__",
    "disable_strip_slash": false,
    "strip_listen_path": true,
    "enable_load_balancing": false,
    "target_list": [],
    "check_host_against_uptime_tests": false,
    "service_discovery": {
      "use_discovery_service": false,
      "query_endpoint": "",
      "use_nested_query": false,
      "parent_data_path": "",
      "data_path": "",
      "port_data_path": "",
      "target_path": "",
      "use_target_list": false,
      "cache_timeout": 0,
      "endpoint_returns_list": false
    },
    "transport": {
      "ssl_insecure_skip_verify": false,
      "ssl_ciphers": [],
      "ssl_min_version": 0,
      "proxy_url": ""
    }
  },
  "custom_middleware": {
    "pre": [],
    "post": [],
    "post_key_auth": [],
    "auth_check": { "name": "", "path": "", "require_session": false, "raw_body_only": false },
    "response": [],
    "driver": "",
    "id_extractor": { "extract_from": "", "extract_with": "", "extractor_config": {} }
  },
  "custom_middleware_bundle": "",
  "cache_options": {
    "cache_timeout": 60,
    "enable_cache": true,
    "cache_all_safe_requests": false,
    "cache_response_codes": [],
    "enable_upstream_cache_control": false
  },
  "session_lifetime": 0,
  "active": true,
  "internal": false,
  "auth_provider": { "name": "", "storage_engine": "", "meta": {} },
  "session_provider": { "name": "", "storage_engine": "", "meta": null },
  "event_handlers": { "events": {} },
  "enable_batch_request_support": false,
  "enable_ip_whitelisting": false,
  "allowed_ips": [],
  "enable_ip_blacklisting": false,
  "blacklisted_ips": [],
  "dont_set_quota_on_create": false,
  "expire_analytics_after": 0,
  "response_processors": [],
  "CORS": {
    "enable": false,
    "allowed_origins": ["*"],
    "allowed_methods": ["GET", "POST", "HEAD"],
    "allowed_headers": [],
    "exposed_headers": [],
    "allow_credentials": false,
    "max_age": 24,
    "options_passthrough": false,
    "debug": false
  },
  "domain": "",
  "do_not_track": false,
  "tags": [],
  "enable_context_vars": false,
  "config_data": {},
  "tag_headers": [],
  "global_rate_limit": { "rate": 0, "per": 0 },
  "strip_auth_data": false,
  "enable_detailed_recording": false
}
"#;
