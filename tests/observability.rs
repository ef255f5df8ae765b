//! Observability end to end: `/metrics` (strictly parsed Prometheus text) moves exactly as
//! requests and hooks run, on the main or a separate listener; logs in text and JSON (Tyk's
//! `log_format`); the access log (Tyk's `access_logs`) writes one line per request.
//!
//! Counters are compared as deltas between two scrapes, so the scrapes themselves (which count
//! under `api_id=""`) never disturb an assertion about an API.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const REQUESTS: &str = "pipegate_requests_total";
const HOOK_COUNT: &str = "pipegate_hook_duration_seconds_count";

fn api_labels<'a>(id: &'a str, name: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("api_id", id), ("api_name", name)]
}

fn with(
    mut base: Vec<(&'static str, &'static str)>,
    more: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    base.extend_from_slice(more);
    base
}

/// A gateway running tests/plugins/scenarios.py as its pipe child, with `apis` (file name, API)
/// written next to an echo upstream whose URL they get.
fn plugin_env(
    tag: &str,
    conf_patch: Value,
    apis: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
) -> (Gateway, EchoUpstream, Sandbox) {
    let sb = Sandbox::new(tag);
    let echo = EchoUpstream::start();
    let mut conf = conf_with(json!({"coprocess_options": {
        "enable_coprocess": true,
        "pipe_command": ["python3", plugin_script("scenarios.py")],
        "hook_timeout_ms": 30000,
    }}));
    merge(&mut conf, conf_patch);
    sb.write_conf(&conf);
    for (name, api) in apis(&format!("{}/", echo.url())) {
        sb.write_api(name, &api);
    }
    let gw = Gateway::start(&sb);
    (gw, echo, sb)
}

/// A keyless API whose pre hook is `hook` (pipe driver), with `extra` merged into the hook entry.
fn pre_hooked(api_id: &str, listen: &str, target: &str, hook: &str, extra: Value) -> Value {
    let mut api = keyless_api(api_id, listen, target);
    let mut h = json!({"name": hook});
    merge(&mut h, extra);
    api["custom_middleware"] = json!({"driver": "python", "pre": [h]});
    api
}

#[test]
fn requests_hooks_and_404s_move_the_counters_exactly() {
    let (gw, _echo, _sb) = plugin_env("obs-count", json!({}), |up| {
        vec![
            (
                "hooked",
                pre_hooked("hooked", "/hooked/", up, "AddHeaders", json!({})),
            ),
            ("plain", keyless_api("plain", "/plain/", up)),
        ]
    });
    let hooked = api_labels("hooked", "test API hooked");
    let plain = api_labels("plain", "test API plain");
    let none = api_labels("", "");
    let before = gw.metrics();
    assert_eq!(
        before.value(
            "pipegate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    for name in [
        "pipegate_plugin_restarts_total",
        "pipegate_grpc_reconnects_total",
        "pipegate_requests_in_flight",
        "pipegate_open_connections",
    ] {
        assert!(
            before.value(name, &[]).is_some(),
            "{name} missing: {before:#?}"
        );
    }

    const N: f64 = 5.0;
    let mut c = gw.client();
    for i in 0..5 {
        let r = c.request(&req("GET", &format!("/hooked/n{i}")).to_bytes());
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.echoed().header("X-Pre"),
            Some("1"),
            "the pre hook ran: {r:?}"
        );
    }
    for _ in 0..2 {
        let r = c.request(&req("GET", "/nowhere").to_bytes());
        assert_eq!(r.status, 404, "{r:?}");
    }
    let r = c.request(&req("GET", "/plain/x").close().to_bytes());
    assert_eq!(r.status, 200, "{r:?}");

    let ok = with(hooked.clone(), &[("code_class", "2xx")]);
    let four = with(none.clone(), &[("code_class", "4xx")]);
    let plain_ok = with(plain.clone(), &[("code_class", "2xx")]);
    let after = gw.wait_metrics(|m| {
        m.get(REQUESTS, &ok) >= before.get(REQUESTS, &ok) + N
            && m.get(REQUESTS, &four) >= before.get(REQUESTS, &four) + 2.0
            && m.get(REQUESTS, &plain_ok) >= before.get(REQUESTS, &plain_ok) + 1.0
            // Only the scrape itself in flight: every request above has ended.
            && m.get("pipegate_requests_in_flight", &[]) == 1.0
    });
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(delta(REQUESTS, &ok), N);
    assert_eq!(delta(REQUESTS, &four), 2.0);
    assert_eq!(delta(REQUESTS, &plain_ok), 1.0);
    for class in ["1xx", "3xx", "4xx", "5xx"] {
        assert_eq!(
            delta(REQUESTS, &with(hooked.clone(), &[("code_class", class)])),
            0.0,
            "{class}"
        );
    }
    assert_eq!(delta("pipegate_request_duration_seconds_count", &hooked), N);
    assert_eq!(
        delta("pipegate_upstream_duration_seconds_count", &hooked),
        N
    );
    assert_eq!(
        delta("pipegate_upstream_duration_seconds_count", &plain),
        1.0
    );
    let pre_pipe = with(hooked.clone(), &[("hook", "pre"), ("transport", "pipe")]);
    assert_eq!(delta(HOOK_COUNT, &pre_pipe), N);
    assert!(after.get("pipegate_hook_duration_seconds_sum", &pre_pipe) > 0.0);
    assert_eq!(
        delta(
            HOOK_COUNT,
            &with(plain.clone(), &[("hook", "pre"), ("transport", "pipe")])
        ),
        0.0,
        "the plain API has no hooks"
    );
    assert_eq!(
        delta(
            "pipegate_hook_failures_total",
            &[("hook", "pre"), ("transport", "pipe")]
        ),
        0.0
    );
    // The 404s matched no API: no upstream time for them.
    assert_eq!(
        delta("pipegate_upstream_duration_seconds_count", &none),
        0.0
    );
    assert!(after.get("pipegate_open_connections", &[]) >= 1.0);
    // The access log is off unless tyk.conf turns it on.
    assert_eq!(gw.log().count("access-log"), 0, "{}", gw.log().text());
}

#[test]
fn a_crashed_child_counts_a_restart_and_a_hook_failure() {
    let (gw, _echo, _sb) = plugin_env("obs-crash", json!({}), |up| {
        vec![
            (
                "crash",
                pre_hooked("crash", "/crash/", up, "Crash", json!({})),
            ),
            ("ok", pre_hooked("ok", "/ok/", up, "Noop", json!({}))),
        ]
    });
    let before = gw.metrics();
    assert_eq!(before.get("pipegate_plugin_restarts_total", &[]), 0.0);
    let r = gw.get("/crash/x");
    assert_eq!(
        r.status, 500,
        "a hook whose child died fails the request: {r:?}"
    );
    let failed = [("hook", "pre"), ("transport", "pipe")];
    let after = gw.wait_metrics(|m| {
        m.get("pipegate_plugin_restarts_total", &[]) >= 1.0
            && m.get("pipegate_hook_failures_total", &failed) >= 1.0
    });
    assert_eq!(after.get("pipegate_plugin_restarts_total", &[]), 1.0);
    assert_eq!(after.get("pipegate_hook_failures_total", &failed), 1.0);
    assert_eq!(after.get("pipegate_hook_timeouts_total", &failed), 0.0);
    let crash5 = with(
        api_labels("crash", "test API crash"),
        &[("code_class", "5xx")],
    );
    assert_eq!(after.get(REQUESTS, &crash5), 1.0);
    // The restarted child serves again.
    let ok = wait_until(Duration::from_secs(30), || gw.get("/ok/y").status == 200);
    assert!(ok, "the restarted child never served: {}", gw.log().text());
}

#[test]
fn a_hung_hook_counts_a_timeout() {
    let (gw, _echo, _sb) = plugin_env("obs-hang", json!({}), |up| {
        vec![(
            "slow",
            pre_hooked("slow", "/slow/", up, "Slow", json!({"timeout_ms": 200})),
        )]
    });
    let r = gw.get("/slow/x?sleep=3");
    assert_eq!(r.status, 500, "a timed-out hook fails the request: {r:?}");
    let pre = [("hook", "pre"), ("transport", "pipe")];
    let m = gw.wait_metrics(|m| m.get("pipegate_hook_timeouts_total", &pre) >= 1.0);
    assert_eq!(m.get("pipegate_hook_timeouts_total", &pre), 1.0);
    assert_eq!(m.get("pipegate_hook_failures_total", &pre), 0.0);
    let slow = with(
        api_labels("slow", "test API slow"),
        &[("hook", "pre"), ("transport", "pipe")],
    );
    assert_eq!(m.get(HOOK_COUNT, &slow), 1.0);
    // The observation is the time waited: at least the 200 ms timeout.
    assert!(
        m.get("pipegate_hook_duration_seconds_sum", &slow) >= 0.2,
        "{m:#?}"
    );
}

#[test]
fn a_separate_metrics_listener_takes_the_endpoint_off_the_main_port() {
    let env = EchoEnv::start(
        "obs-listener",
        json!({"pipegate": {"metrics": {"listen_address": "127.0.0.1:0", "path": "/internal/m"}}}),
    );
    let line = env
        .gw
        .log()
        .wait_for(0, "metrics on http://", IO_TIMEOUT)
        .unwrap_or_else(|| panic!("no metrics listener line: {}", env.gw.log().text()));
    let url = line
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default();
    let (addr, path) = url.split_at(url.find('/').unwrap_or(url.len()));
    assert_eq!(path, "/internal/m", "{line}");
    let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{line}: {e}"));

    assert_eq!(env.gw.get("/echo/a").status, 200);
    let echo_ok = [
        ("api_id", "echo"),
        ("api_name", "test API echo"),
        ("code_class", "2xx"),
    ];
    let m = wait_scrape(addr, "/internal/m", |m| m.get(REQUESTS, &echo_ok) >= 1.0);
    assert_eq!(m.get(REQUESTS, &echo_ok), 1.0, "{m:#?}");
    // The main listener serves neither path; the scrape itself was not counted as a request.
    env.gw.get("/metrics").assert_tyk_error(404);
    env.gw.get("/internal/m").assert_tyk_error(404);
    let none4 = [("api_id", ""), ("api_name", ""), ("code_class", "4xx")];
    let m = wait_scrape(addr, "/internal/m", |m| m.get(REQUESTS, &none4) >= 2.0);
    assert_eq!(m.get(REQUESTS, &none4), 2.0);
    assert_eq!(
        m.get(
            REQUESTS,
            &[("api_id", ""), ("api_name", ""), ("code_class", "2xx")]
        ),
        0.0
    );
    // Other paths on the metrics listener are 404.
    let mut c = Client::connect(addr);
    assert_eq!(
        c.request(&req("GET", "/metrics").close().to_bytes()).status,
        404
    );
}

#[test]
fn metrics_can_be_disabled_or_moved_on_the_main_listener() {
    let off = EchoEnv::start(
        "obs-off",
        json!({"pipegate": {"metrics": {"enabled": false}}}),
    );
    off.gw.get("/metrics").assert_tyk_error(404);

    let moved = EchoEnv::start(
        "obs-path",
        json!({"pipegate": {"metrics": {"path": "/_stats"}}}),
    );
    moved.gw.get("/metrics").assert_tyk_error(404);
    let m = scrape(moved.gw.addr(), "/_stats");
    assert!(m.types.contains_key("pipegate_requests_total"), "{m:#?}");
}

#[test]
fn counters_survive_a_reload_and_new_apis_get_series() {
    let env = EchoEnv::start("obs-reload", json!({}));
    let echo_ok = [
        ("api_id", "echo"),
        ("api_name", "test API echo"),
        ("code_class", "2xx"),
    ];
    for _ in 0..3 {
        assert_eq!(env.gw.get("/echo/a").status, 200);
    }
    env.gw.wait_metrics(|m| m.get(REQUESTS, &echo_ok) >= 3.0);
    let mut renamed = keyless_api("echo", "/echo/", &format!("{}/", env.echo.url()));
    renamed["name"] = json!("renamed echo");
    env.sandbox.write_api("echo", &renamed);
    env.sandbox.write_api(
        "second",
        &keyless_api("second", "/second/", &format!("{}/", env.echo.url())),
    );
    let mark = env.gw.log().mark();
    env.gw.reload();
    assert!(
        env.gw
            .log()
            .wait_for(mark, "configuration reloaded", IO_TIMEOUT)
            .is_some(),
        "{}",
        env.gw.log().text()
    );
    assert!(wait_until(IO_TIMEOUT, || env.gw.get("/second/b").status == 200));
    assert_eq!(env.gw.get("/echo/c").status, 200);
    let renamed_ok = [
        ("api_id", "echo"),
        ("api_name", "renamed echo"),
        ("code_class", "2xx"),
    ];
    let second_ok = [
        ("api_id", "second"),
        ("api_name", "test API second"),
        ("code_class", "2xx"),
    ];
    let m = env.gw.wait_metrics(|m| {
        m.get(REQUESTS, &renamed_ok) >= 4.0 && m.get(REQUESTS, &second_ok) >= 1.0
    });
    // One series per api_id: the count went on from 3 under the new name.
    assert_eq!(m.get(REQUESTS, &renamed_ok), 4.0);
    assert_eq!(m.value(REQUESTS, &echo_ok), None);
    assert_eq!(m.get(REQUESTS, &second_ok), 1.0);
}

/// The JSON log lines of `gw` so far, each checked to be an object with `level` and `message`.
fn json_lines(gw: &Gateway) -> Vec<Value> {
    gw.log()
        .lines()
        .iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "{l}");
            assert!(v["level"].is_string(), "no level: {l}");
            assert!(v["message"].is_string(), "no message: {l}");
            v
        })
        .collect()
}

#[test]
fn json_logs_and_the_access_log_one_object_per_request() {
    let env = EchoEnv::start(
        "obs-json",
        json!({"log_format": "json", "access_logs": {"enabled": true}}),
    );
    let r = env.gw.send(
        &req("POST", "/echo/in?q=1")
            .header("User-Agent", "obs-test")
            .body("hello")
            .close()
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    env.gw.get("/missing").assert_tyk_error(404);
    let access = |gw: &Gateway| -> Vec<Value> {
        json_lines(gw)
            .into_iter()
            .filter(|v| v["target"] == "access_log")
            .collect()
    };
    assert!(
        wait_until(IO_TIMEOUT, || access(&env.gw).len() >= 2),
        "{}",
        env.gw.log().text()
    );
    let lines = access(&env.gw);
    assert_eq!(lines.len(), 2, "one line per request: {lines:#?}");
    // Two workers may write their lines in either order.
    let by_status = |code: u64| {
        lines
            .iter()
            .find(|v| v["status"] == code)
            .unwrap_or_else(|| panic!("no access line with status {code}: {lines:#?}"))
    };
    let ok = by_status(200);
    assert_eq!(ok["prefix"], "access-log");
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["api_id"], "echo");
    assert_eq!(ok["api_name"], "test API echo");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/echo/in");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["user_agent"], "obs-test");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert!(
        ok["latency_total"].as_f64().is_some_and(|v| v >= 0.0),
        "{ok}"
    );
    assert!(
        ok["upstream_latency"].as_f64().is_some_and(|v| v >= 0.0),
        "{ok}"
    );
    assert!(
        ok["upstream_latency"].as_f64() <= ok["latency_total"].as_f64(),
        "{ok}"
    );
    assert_eq!(ok["hook_latency"].as_f64(), Some(0.0), "{ok}");
    assert!(
        ok["bytes_in"].as_u64().is_some_and(|n| n > 5),
        "head + 5 body bytes: {ok}"
    );
    assert!(ok["bytes_out"].as_u64().is_some_and(|n| n > 0), "{ok}");
    let miss = by_status(404);
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["path"], "/missing");
    assert_eq!(miss["api_id"], "");
    assert_eq!(
        miss.get("upstream_latency"),
        None,
        "no upstream for a 404: {miss}"
    );
}

#[test]
fn text_access_log_follows_the_template() {
    let env = EchoEnv::start(
        "obs-text",
        json!({"access_logs": {"enabled": true, "template": ["api_id", "status", "path"]}}),
    );
    assert_eq!(env.gw.get("/echo/t1").status, 200);
    env.gw.get("/nope").assert_tyk_error(404);
    let lines = || -> Vec<String> {
        env.gw
            .log()
            .lines()
            .into_iter()
            .filter(|l| l.contains("access_log:"))
            .collect()
    };
    assert!(
        wait_until(IO_TIMEOUT, || lines().len() >= 2),
        "{}",
        env.gw.log().text()
    );
    let l = lines();
    assert_eq!(l.len(), 2, "{l:#?}");
    let ok = l
        .iter()
        .find(|l| l.contains("status=200"))
        .unwrap_or_else(|| panic!("no 200 line: {l:#?}"));
    assert!(ok.contains("INFO"), "{ok}");
    assert!(ok.contains("api_id=\"echo\""), "{ok}");
    assert!(ok.contains("path=\"/echo/t1\""), "{ok}");
    assert!(!ok.contains("method="), "not in the template: {ok}");
    assert!(!ok.contains("latency_total="), "not in the template: {ok}");
    assert!(
        l.iter()
            .any(|l| l.contains("status=404") && l.contains("path=\"/nope\"")),
        "{l:#?}"
    );
    // Text format: no line of the log is JSON.
    assert!(env.gw.log().lines().iter().all(|l| !l.starts_with('{')));
}

#[test]
fn tyk_logformat_environment_variable_selects_json() {
    let sb = Sandbox::new("obs-env");
    sb.write_conf(&base_conf());
    let gw = Gateway::try_start(&sb.conf_path(), &[("TYK_LOGFORMAT", "json")])
        .unwrap_or_else(|e| panic!("{e}"));
    gw.get("/hello");
    let lines = json_lines(&gw);
    assert!(
        lines.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("pipegate listening on"))),
        "{lines:#?}"
    );
}

/// The strict parser the tests above rely on rejects what Prometheus would.
#[test]
fn the_exposition_parser_is_strict() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\"} 1\n\
                # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n";
    let m = Metrics::parse(good).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.get("a_total", &[("k", "v\"")]), 1.0);
    for (bad, why) in [
        ("# TYPE a counter\na 1\n", "counter without _total"),
        ("a_total 1\n", "sample without TYPE"),
        ("# TYPE a_total counter\na_total{k=v} 1\n", "unquoted label"),
        ("# TYPE a_total counter\na_total 1", "no final line feed"),
        ("# TYPE a_total counter\na_total 1\na_total 2\n", "repeated series"),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "buckets not cumulative",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
            "no +Inf bucket",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
            "+Inf differs from _count",
        ),
        (
            "# TYPE a_total counter\n# TYPE b gauge\na_total 1\nb 1\na_total{x=\"1\"} 1\n",
            "family not contiguous",
        ),
    ] {
        assert!(Metrics::parse(bad).is_err(), "accepted ({why}): {bad:?}");
    }
}

#[test]
fn grpc_hooks_are_labelled_grpc_and_a_server_restart_counts_a_reconnect() {
    let sb = Sandbox::new("obs-grpc");
    let log = sb.dir().join("calls.log");
    let listen = format!("unix://{}", sb.dir().join("plugin.sock").display());
    let mut server = GrpcServer::start(&listen, &log, &[]);
    let echo = EchoUpstream::start();
    sb.write_conf(&conf_with(json!({"coprocess_options": {
        "enable_coprocess": true,
        "coprocess_grpc_server": server.target.clone(),
        "hook_timeout_ms": 30000,
    }})));
    let mut api = keyless_api("g", "/g/", &format!("{}/", echo.url()));
    api["custom_middleware"] = json!({"driver": "grpc", "pre": [{"name": "AddHeaders"}]});
    sb.write_api("g", &api);
    let gw = Gateway::start(&sb);

    let r = gw.get("/g/a");
    assert_eq!(r.status, 200, "{r:?}");
    let g_pre = with(
        api_labels("g", "test API g"),
        &[("hook", "pre"), ("transport", "grpc")],
    );
    let m = gw.wait_metrics(|m| m.get(HOOK_COUNT, &g_pre) >= 1.0);
    assert_eq!(m.get(HOOK_COUNT, &g_pre), 1.0);
    assert_eq!(
        m.get(
            HOOK_COUNT,
            &with(
                api_labels("g", "test API g"),
                &[("hook", "pre"), ("transport", "pipe")]
            )
        ),
        0.0
    );
    assert_eq!(m.get("pipegate_grpc_reconnects_total", &[]), 0.0);

    server.kill();
    assert!(
        wait_until(IO_TIMEOUT, || gw.get("/g/b").status == 500),
        "requests never failed while the server was down"
    );
    let failed = [("hook", "pre"), ("transport", "grpc")];
    let m = gw.wait_metrics(|m| m.get("pipegate_hook_failures_total", &failed) >= 1.0);
    assert!(m.get("pipegate_hook_failures_total", &failed) >= 1.0);
    let _server = GrpcServer::start(&listen, &log, &[]);
    assert!(
        wait_until(Duration::from_secs(60), || gw.get("/g/c").status == 200),
        "never recovered: {}",
        gw.log().text()
    );
    let m = gw.wait_metrics(|m| m.get("pipegate_grpc_reconnects_total", &[]) >= 1.0);
    assert!(m.get("pipegate_grpc_reconnects_total", &[]) >= 1.0);
}

/// With stderr closed (the gateway piped into `head`, a log shipper gone), log lines are dropped:
/// no thread dies of it, so SIGTERM still stops the gateway.
#[test]
fn a_closed_stderr_does_not_stop_shutdown() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let sb = Sandbox::new("obs-closed-stderr");
    sb.write_conf(&base_conf());
    let mut child = Command::new(pipegate_bin())
        .arg("--conf")
        .arg(sb.conf_path())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the gateway: {e}"));
    let stderr = child
        .stderr
        .take()
        .unwrap_or_else(|| panic!("no stderr pipe"));
    let mut lines = BufReader::new(stderr).lines();
    let started = lines.any(|l| l.is_ok_and(|l| l.contains("pipegate listening on")));
    assert!(started, "the gateway never reported its address");
    drop(lines); // closes the read end: every later write to stderr fails with EPIPE
    let pid = libc::pid_t::try_from(child.id()).unwrap_or_else(|_| panic!("pid"));
    // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet, so the pid
    // is still its own.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exited = wait_until(IO_TIMEOUT, || child.try_wait().is_ok_and(|s| s.is_some()));
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        exited,
        "SIGTERM did not stop a gateway whose stderr is closed"
    );
}
