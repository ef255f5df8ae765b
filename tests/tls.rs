//! TLS end to end: termination with SNI-selected certificates, versions, reload and robustness;
//! https upstreams with verification against a test CA; `pipegate check` on bad TLS settings.
//!
//! Certificates are made at test time with the `openssl` CLI ([`common::TestPki`]); the client
//! is rustls trusting only the test CA; the https upstream is a real TLS server (Python's
//! http.server in ssl, tests/fixtures/tls_echo_upstream.py).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

/// A gateway terminating TLS with two certificates in front of the echo upstream:
/// `alpha.test` (EC, also valid for 127.0.0.1; the first, so the default) and `*.beta.test` (RSA).
struct TlsEnv {
    gw: Gateway,
    _echo: EchoUpstream,
    pki: TestPki,
    alpha: CertFiles,
    beta: CertFiles,
    sandbox: Sandbox,
}

impl TlsEnv {
    fn start(tag: &str, http_patch: Value, pg_patch: Value) -> TlsEnv {
        let sandbox = Sandbox::new(tag);
        let pki = TestPki::new(&sandbox.dir().join("certs"), "test-ca");
        let alpha = pki.issue("alpha", &["DNS:alpha.test", "IP:127.0.0.1"], false);
        let beta = pki.issue("beta", &["DNS:*.beta.test"], true);
        let echo = EchoUpstream::start();
        let mut http = json!({
            "use_ssl": true,
            // Relative paths: resolved against tyk.conf's directory.
            "certificates": [
                {"domain_name": "alpha.test", "cert_file": "certs/alpha.pem", "key_file": "certs/alpha.key"},
                {"domain_name": "*.beta.test", "cert_file": "certs/beta.pem", "key_file": "certs/beta.key"}
            ]
        });
        merge(&mut http, http_patch);
        let mut pg = json!({});
        merge(&mut pg, pg_patch);
        sandbox.write_conf(&conf_with(json!({
            "http_server_options": http,
            "pipegate": pg,
        })));
        sandbox.write_api(
            "echo",
            &keyless_api("echo", "/echo/", &format!("{}/", echo.url())),
        );
        let gw = Gateway::start(&sandbox);
        TlsEnv {
            gw,
            _echo: echo,
            pki,
            alpha,
            beta,
            sandbox,
        }
    }

    /// A TLS connection trusting the test CA, sending `sni` (an IP literal sends none).
    fn connect(&self, sni: &str) -> Client {
        Client::connect_tls(
            self.gw.addr(),
            tls_client_config(Some(&self.pki.ca_pem()), &[]),
            sni,
        )
        .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni:?} failed: {e}"))
    }
}

fn get(path: &str) -> Vec<u8> {
    req("GET", path).to_bytes()
}

#[test]
fn sni_selects_the_certificate_and_the_first_is_the_default() {
    let env = TlsEnv::start("tls-sni", json!({}), json!({}));

    let mut a = env.connect("alpha.test");
    assert_eq!(
        a.peer_cert(),
        env.alpha.der(),
        "alpha.test got another certificate"
    );
    assert_eq!(a.tls().alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = a.request(&get("/echo/sni"));
    assert_eq!(r.status, 200, "{r:?}");
    let e = r.echoed();
    assert_eq!(e.path, "/sni");
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));

    // Wildcard entry, verified by the client against the test CA.
    let mut b = env.connect("api.beta.test");
    assert_eq!(
        b.peer_cert(),
        env.beta.der(),
        "wildcard name got another certificate"
    );
    assert_eq!(b.request(&get("/echo/")).status, 200);

    // No SNI (connecting by IP address) and an unknown name: the first certificate.
    let ip = env.connect("127.0.0.1");
    assert_eq!(
        ip.peer_cert(),
        env.alpha.der(),
        "no SNI must get the default"
    );
    let any = tls_client_config(None, &[]);
    let unknown = Client::connect_tls(env.gw.addr(), Arc::clone(&any), "unknown.test")
        .unwrap_or_else(|e| panic!("handshake with an unknown SNI name: {e}"));
    assert_eq!(unknown.peer_cert(), env.alpha.der());
    // A wildcard covers one label only.
    let deep = Client::connect_tls(env.gw.addr(), any, "a.b.beta.test")
        .unwrap_or_else(|e| panic!("handshake: {e}"));
    assert_eq!(deep.peer_cert(), env.alpha.der());

    // TLS 1.2 clients are served by default.
    let mut v12 = Client::connect_tls(
        env.gw.addr(),
        tls_client_config(Some(&env.pki.ca_pem()), &[&rustls::version::TLS12]),
        "alpha.test",
    )
    .unwrap_or_else(|e| panic!("TLS 1.2 handshake: {e}"));
    assert_eq!(
        v12.tls().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(v12.request(&get("/echo/v12")).status, 200);
}

#[test]
fn plugins_see_https_as_the_request_scheme() {
    let sandbox = Sandbox::new("tls-plugin");
    let pki = TestPki::new(&sandbox.dir().join("certs"), "test-ca");
    let cert = pki.issue("alpha", &["DNS:alpha.test"], false);
    let echo = EchoUpstream::start();
    sandbox.write_conf(&conf_with(json!({
        "http_server_options": {
            "use_ssl": true,
            "certificates": [{"domain_name": "alpha.test", "cert_file": cert.cert, "key_file": cert.key}]
        },
        "coprocess_options": {
            "enable_coprocess": true,
            "pipe_command": ["python3", plugin_script("scenarios.py")],
            "hook_timeout_ms": 30000
        }
    })));
    let mut api = keyless_api("inspect", "/inspect/", &format!("{}/", echo.url()));
    api["custom_middleware"] = json!({"driver": "python", "pre": [{"name": "Inspect"}]});
    sandbox.write_api("inspect", &api);
    let gw = Gateway::start(&sandbox);
    let mut c = Client::connect_tls(
        gw.addr(),
        tls_client_config(Some(&pki.ca_pem()), &[]),
        "alpha.test",
    )
    .unwrap_or_else(|e| panic!("TLS handshake: {e}"));
    let r = c.request(&get("/inspect/x"));
    assert_eq!(r.status, 200, "{r:?}");
    let e = r.echoed();
    let seen: Value = serde_json::from_str(e.header("X-Inspect").unwrap_or_default())
        .unwrap_or_else(|err| panic!("X-Inspect is not JSON ({err}): {e:?}"));
    assert_eq!(seen["request"]["scheme"], "https", "{seen}");
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));
}

#[test]
fn requests_are_proxied_with_keep_alive_and_large_bodies() {
    let env = TlsEnv::start("tls-proxy", json!({}), json!({}));
    let mut c = env.connect("alpha.test");
    for i in 0..3 {
        let r = c.request(&get(&format!("/echo/keep/{i}")));
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.says_close(), "keep-alive expected: {r:?}");
        assert_eq!(r.echoed().path, format!("/keep/{i}"));
    }
    // Two pipelined requests in one write: the second waits decrypted in the gateway's buffers.
    let mut two = get("/echo/pipe/1");
    two.extend(get("/echo/pipe/2"));
    c.send(&two);
    assert_eq!(c.read_response().echoed().path, "/pipe/1");
    assert_eq!(c.read_response().echoed().path, "/pipe/2");
    // A large request body, streamed through TLS to the upstream.
    let body = pattern(3 * 1024 * 1024 + 17);
    let r = c.request(&req("POST", "/echo/upload").body(body.clone()).to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().body_len, body.len() as u64);
    // A large chunked request body.
    let pieces: Vec<&[u8]> = body.chunks(100_000).collect();
    let r = c.request(&req("PUT", "/echo/chunked").chunked(&pieces).to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed().body_len, body.len() as u64);
    // A large response body.
    let n = 5 * 1024 * 1024 + 3;
    let r = c.request(&get(&format!("/echo/big?size={n}")));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().all(|&b| b == b'x'));
    // A close-delimited response: the client reads to the end, which rustls accepts only after
    // the gateway's close_notify (a bare TCP close is an error there).
    let r = c.request(&get("/echo/end?close=1"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.says_close());
    assert_eq!(r.echoed().path, "/end");
}

/// The first bytes of a real ClientHello.
fn client_hello() -> Vec<u8> {
    let config = tls_client_config(None, &[]);
    let name = rustls::pki_types::ServerName::try_from("alpha.test").unwrap();
    let mut c = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

#[test]
fn bad_handshakes_and_garbage_do_not_disturb_other_connections() {
    // A short header timeout bounds a handshake that never finishes.
    let env = TlsEnv::start(
        "tls-garbage",
        json!({}),
        json!({"client_header_timeout_ms": 1000}),
    );
    let mut good = env.connect("alpha.test");
    assert_eq!(good.request(&get("/echo/before")).status, 200);

    let hello = client_hello();
    assert!(hello.len() > 40);
    // Plain HTTP on the TLS port.
    let mut plain = env.gw.client();
    plain.send(&get("/echo/plain"));
    // Random bytes dressed as a handshake record.
    let mut junk = env.gw.client();
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    bytes.extend(pattern(64));
    junk.send(&bytes);
    // Half a ClientHello, then silence: closed by the header timeout.
    let mut stalled = env.gw.client();
    stalled.send(&hello[..hello.len() / 2]);
    // Half a ClientHello, then the client goes away.
    let mut aborted = env.gw.client();
    aborted.send(&hello[..hello.len() / 2]);
    drop(aborted);
    // A handshake cut right after the ClientHello.
    let mut cut = env.gw.client();
    cut.send(&hello);
    let _ = cut.stream().shutdown(std::net::Shutdown::Both);

    // The good connection carries on meanwhile, and new ones are served.
    assert_eq!(good.request(&get("/echo/during")).status, 200);
    for (name, c) in [
        ("plain HTTP", &mut plain),
        ("junk", &mut junk),
        ("stalled", &mut stalled),
    ] {
        let rest = c
            .read_until_closed()
            .unwrap_or_else(|e| panic!("{name}: the gateway kept the connection open: {e}"));
        assert!(
            !rest.starts_with(b"HTTP/"),
            "{name}: answered in plain HTTP: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    assert_eq!(good.request(&get("/echo/after")).status, 200);
    let mut fresh = env.connect("api.beta.test");
    assert_eq!(fresh.request(&get("/echo/fresh")).status, 200);
    env.gw.assert_no_panics();
}

#[test]
fn min_version_772_refuses_tls12_clients() {
    let env = TlsEnv::start("tls-min13", json!({"min_version": 772}), json!({}));
    let ca = env.pki.ca_pem();
    let refused = Client::connect_tls(
        env.gw.addr(),
        tls_client_config(Some(&ca), &[&rustls::version::TLS12]),
        "alpha.test",
    );
    assert!(refused.is_err(), "a TLS 1.2-only client got in");
    let mut ok = Client::connect_tls(
        env.gw.addr(),
        tls_client_config(Some(&ca), &[&rustls::version::TLS13]),
        "alpha.test",
    )
    .unwrap_or_else(|e| panic!("TLS 1.3 handshake: {e}"));
    assert_eq!(
        ok.tls().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(ok.request(&get("/echo/v13")).status, 200);
}

#[test]
fn sighup_with_replaced_certificate_files_serves_new_connections_the_new_certificate() {
    let env = TlsEnv::start("tls-reload", json!({}), json!({}));
    let old_der = env.alpha.der();
    let mut old = env.connect("alpha.test");
    assert_eq!(old.peer_cert(), old_der);
    assert_eq!(old.request(&get("/echo/old")).status, 200);

    // Re-issue into the same files, then SIGHUP.
    let renewed = env
        .pki
        .issue("alpha", &["DNS:alpha.test", "IP:127.0.0.1"], false);
    let new_der = renewed.der();
    assert_ne!(new_der, old_der);
    let mark = env.gw.log().mark();
    env.gw.reload();
    env.gw
        .log()
        .wait_for(mark, "configuration reloaded", IO_TIMEOUT)
        .unwrap_or_else(|| panic!("no reload logged:\n{}", env.gw.log().text()));

    let mut new = env.connect("alpha.test");
    assert_eq!(
        new.peer_cert(),
        new_der,
        "a new connection got the old certificate"
    );
    assert_eq!(new.request(&get("/echo/new")).status, 200);
    // The connection opened before the reload keeps working.
    assert_eq!(old.request(&get("/echo/old-again")).status, 200);

    // A broken key on reload: the reload fails, naming the file, and the running certificates
    // stay.
    let key = env.sandbox.dir().join("certs/beta.key");
    std::fs::write(&key, b"not a key\n").unwrap();
    let mark = env.gw.log().mark();
    env.gw.reload();
    let line = env
        .gw
        .log()
        .wait_for(mark, "certificates[1].key_file", IO_TIMEOUT)
        .unwrap_or_else(|| panic!("no failed reload logged:\n{}", env.gw.log().text()));
    assert!(
        line.contains("reload failed") && line.contains("beta.key"),
        "the failed reload does not name the key file: {line}"
    );
    let b = env.connect("x.beta.test");
    assert_eq!(b.peer_cert(), env.beta.der());
}

/// Two https upstreams: one with a certificate from the test CA, one from a CA nobody trusts.
struct Upstreams {
    pki: TestPki,
    trusted: TlsUpstream,
    untrusted: TlsUpstream,
}

fn https_upstreams(sandbox: &Sandbox) -> Upstreams {
    let pki = TestPki::new(&sandbox.dir().join("pki"), "upstream-ca");
    let good = pki.issue("upstream", &["DNS:localhost", "IP:127.0.0.1"], false);
    let rogue = TestPki::new(&sandbox.dir().join("rogue"), "rogue-ca");
    let bad = rogue.issue("upstream", &["DNS:localhost", "IP:127.0.0.1"], true);
    Upstreams {
        trusted: TlsUpstream::start(&good),
        untrusted: TlsUpstream::start(&bad),
        pki,
    }
}

fn start_with_ca(sandbox: &Sandbox, ca: &Path) -> Gateway {
    let ca = ca.to_string_lossy().into_owned();
    Gateway::try_start(
        &sandbox.conf_path(),
        &[("RUST_LOG", "info"), ("SSL_CERT_FILE", ca.as_str())],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn https_upstreams_are_verified_pooled_and_skip_verify_is_honoured() {
    let sandbox = Sandbox::new("tls-upstream");
    let ups = https_upstreams(&sandbox);
    sandbox.write_conf(&base_conf());
    sandbox.write_api(
        "good",
        &keyless_api("good", "/good/", &format!("{}/", ups.trusted.url_by_name())),
    );
    sandbox.write_api(
        "good-ip",
        &keyless_api("good-ip", "/good-ip/", &format!("{}/", ups.trusted.url())),
    );
    sandbox.write_api(
        "bad",
        &keyless_api("bad", "/bad/", &format!("{}/", ups.untrusted.url_by_name())),
    );
    let mut skip = keyless_api(
        "skip",
        "/skip/",
        &format!("{}/", ups.untrusted.url_by_name()),
    );
    merge(
        &mut skip,
        json!({"proxy": {"transport": {"ssl_insecure_skip_verify": true}}}),
    );
    sandbox.write_api("skip", &skip);
    let gw = start_with_ca(&sandbox, &ups.pki.ca_pem());

    // Verified against the trusted CA; one pooled connection serves consecutive requests.
    let mut c = gw.client();
    let mut ports = Vec::new();
    for i in 0..3 {
        let r = c.request(&get(&format!("/good/p{i}")));
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        assert_eq!(v["path"], format!("/p{i}"));
        assert_eq!(
            v["headers"]["Host"],
            format!("localhost:{}", ups.trusted.addr().port())
        );
        ports.push(v["peer_port"].as_u64().unwrap_or_default());
    }
    assert!(
        ports.windows(2).all(|w| w[0] == w[1]),
        "the upstream TLS connection was not reused: source ports {ports:?}"
    );
    // A large body both ways over the upstream TLS connection.
    let body = pattern(2 * 1024 * 1024);
    let r = c.request(&req("POST", "/good/up").body(body.clone()).to_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["body_len"], body.len());
    let r = c.request(&get("/good/down?size=3000000"));
    assert_eq!(r.body.len(), 3_000_000);

    // By IP address: the certificate's IP SAN is checked.
    assert_eq!(gw.get("/good-ip/x").status, 200);

    // A certificate from an unknown CA: a clean 502 and a log line saying why.
    let mark = gw.log().mark();
    let r = gw.get("/bad/x");
    assert_eq!(
        r.assert_tyk_error(502),
        "There was a problem proxying the request"
    );
    let line = gw
        .log()
        .wait_for(mark, "upstream TLS failed", IO_TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "no log line for the failed upstream handshake:\n{}",
                gw.log().text()
            )
        });
    assert!(line.contains("UnknownIssuer"), "{line}");
    // The keep-alive client connection is still usable after a 502 elsewhere.
    assert_eq!(c.request(&get("/good/after")).status, 200);

    // The same upstream with ssl_insecure_skip_verify.
    let r = gw.get("/skip/x");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["path"], "/x");
    drop(gw);

    // tyk.conf's proxy_ssl_insecure_skip_verify turns it off for every API.
    sandbox.write_conf(&conf_with(json!({"proxy_ssl_insecure_skip_verify": true})));
    let gw = start_with_ca(&sandbox, &ups.pki.ca_pem());
    let r = gw.get("/bad/x");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn upstream_ssl_min_version_is_enforced() {
    let sandbox = Sandbox::new("tls-upstream-min");
    let pki = TestPki::new(&sandbox.dir().join("pki"), "upstream-ca");
    let cert = pki.issue("upstream", &["DNS:localhost", "IP:127.0.0.1"], false);
    let old = TlsUpstream::start_with(&cert, &["tls12"]);
    let target = format!("https://localhost:{}/", old.addr().port());
    sandbox.write_conf(&base_conf());
    sandbox.write_api("v12", &keyless_api("v12", "/v12/", &target));
    let mut v13 = keyless_api("v13", "/v13/", &target);
    merge(
        &mut v13,
        json!({"proxy": {"transport": {"ssl_min_version": 772}}}),
    );
    sandbox.write_api("v13", &v13);
    let gw = start_with_ca(&sandbox, &pki.ca_pem());

    let r = gw.get("/v12/x");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["tls_version"], "TLSv1.2");
    // The API asks for TLS 1.3; the upstream cannot: 502 and the reason in the log.
    let mark = gw.log().mark();
    gw.get("/v13/x").assert_tyk_error(502);
    gw.log()
        .wait_for(mark, "upstream TLS failed", IO_TIMEOUT)
        .unwrap_or_else(|| panic!("no log line for the refused version:\n{}", gw.log().text()));
    drop(gw);

    // tyk.conf's proxy_ssl_min_version does the same for every API.
    sandbox.remove_api("v13");
    sandbox.write_conf(&conf_with(json!({"proxy_ssl_min_version": 772})));
    let gw = start_with_ca(&sandbox, &pki.ca_pem());
    gw.get("/v12/x").assert_tyk_error(502);
}

#[test]
fn check_and_start_report_bad_tls_settings_with_file_field_and_reason() {
    let sandbox = Sandbox::new("tls-check");
    let pki = TestPki::new(&sandbox.dir().join("certs"), "ca");
    let a = pki.issue("a", &["DNS:a.test"], false);
    let b = pki.issue("b", &["DNS:b.test"], false);
    let junk = sandbox.write_file("certs/junk.pem", "hello\n");
    sandbox.write_conf(&conf_with(json!({
        "http_server_options": {
            "use_ssl": true,
            "min_version": 769,
            "certificates": [
                {"domain_name": "missing.test", "cert_file": "certs/missing.pem", "key_file": "certs/missing.key"},
                {"domain_name": "nokey.test", "cert_file": a.cert},
                {"domain_name": "a.test", "cert_file": a.cert, "key_file": b.key},
                {"domain_name": "junk.test", "cert_file": junk, "key_file": a.key}
            ]
        }
    })));
    sandbox.write_api("x", &keyless_api("x", "/x/", "https://127.0.0.1:1/"));

    let out = run_check(&sandbox.conf_path());
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let conf = sandbox.conf_path().display().to_string();
    for want in [
        format!("{conf}: http_server_options.min_version: 769 (TLS 1.0) is not supported"),
        format!("{conf}: http_server_options.certificates[0].cert_file: cannot read"),
        "missing.pem".to_string(),
        format!("{conf}: http_server_options.certificates[1].key_file: is missing"),
        format!("{conf}: http_server_options.certificates[2].key_file: the private key in "),
        "b.key does not match the certificate".to_string(),
        format!("{conf}: http_server_options.certificates[3].cert_file: "),
        "junk.pem holds no certificate".to_string(),
    ] {
        assert!(text.contains(&want), "check output lacks {want:?}:\n{text}");
    }
    let err = match Gateway::try_start(&sandbox.conf_path(), &[]) {
        Ok(_) => panic!("the gateway started with broken TLS settings"),
        Err(e) => e,
    };
    assert!(err.contains("certificates[0].cert_file"), "{err}");

    // tyk.conf fixed; an API names a TLS version that does not exist.
    sandbox.write_conf(&conf_with(json!({
        "http_server_options": {
            "use_ssl": true,
            "min_version": 771,
            "certificates": [{"domain_name": "a.test", "cert_file": a.cert, "key_file": a.key}]
        }
    })));
    let mut api = keyless_api("x", "/x/", "https://127.0.0.1:1/");
    merge(
        &mut api,
        json!({"proxy": {"transport": {"ssl_min_version": 42}}}),
    );
    let api_file = sandbox.write_api("x", &api);
    let out = run_check(&sandbox.conf_path());
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let want = format!(
        "{}: proxy.transport.ssl_min_version: 42 is not a TLS version",
        api_file.display()
    );
    assert!(text.contains(&want), "check output lacks {want:?}:\n{text}");

    // All fixed: check passes and says TLS is on.
    sandbox.write_api("x", &keyless_api("x", "/x/", "https://127.0.0.1:1/"));
    let out = run_check(&sandbox.conf_path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("TLS on"), "{stdout}");
}

#[test]
fn idle_tls_connections_are_closed_with_close_notify() {
    let env = TlsEnv::start("tls-idle", json!({}), json!({"keepalive_timeout_ms": 300}));
    let mut c = env.connect("alpha.test");
    assert_eq!(c.request(&get("/echo/once")).status, 200);
    // The keep-alive timeout closes the connection; rustls reports a close without close_notify
    // as an error ("peer closed connection without sending TLS close_notify"), an orderly one as
    // a plain end of stream.
    let err = c
        .try_read_response(false)
        .err()
        .unwrap_or_else(|| panic!("a response arrived on an idle connection"));
    assert!(
        err.to_string().contains("closed before a response"),
        "not an orderly TLS close: {err}"
    );
}
