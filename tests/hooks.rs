//! End-to-end tests of the plugin hooks, one suite run over each transport: the real `pipegate`
//! binary, a real upstream (the echo upstream, which answers with a JSON description of what it
//! received) and a real plugin serving one scenario per hook name:
//! - `pipe::*`: the plugin child `tests/plugins/scenarios.py` (raw MessagePack over stdin/stdout,
//!   written from the wire contract alone), plus the pipe-only tests: a child that hangs, crashes,
//!   writes garbage (`hooks_garbage.py`) or oversized frames (`hooks_oversized.py`), and a
//!   `pipe_command` that cannot start;
//! - `grpc_tcp::*` and `grpc_unix::*`: the same scenarios served by a real grpcio
//!   `coprocess.Dispatcher` server (`tests/plugins/scenarios_grpc.py`, which runs scenarios.py's
//!   own `hook()` and replies with the whole object, as Tyk's gRPC servers do), reached over TCP
//!   and over a Unix socket with API definitions of driver `grpc`.
//!
//! What is checked is what a Tyk user would see: each hook type changes what Tyk lets it change
//! (headers, params, url, method, body, status, response headers and body) and nothing else,
//! return_overrides and errors render as Tyk renders them (tyk-coprocess.md 2.5, 2.8, 5.3), auth
//! allows and denies as Tyk's CustomKeyCheck does, replies that come back out of order under load
//! reach their own request, and a child that crashes, hangs, writes garbage or oversized frames
//! costs only the calls in flight: every request is answered and the child comes back. Where
//! proto3 makes gRPC differ (a gRPC server cannot leave a field out), the test says so and asserts
//! Tyk's gRPC behaviour. Failures of the gRPC server itself are in `tests/grpc_gateway.rs`.
//!
//! Nothing asserts on timing except one loose bound (a hung hook is answered well before the
//! plugin's 20 s sleep ends); timeouts are generous because the machine is small and shared.
//! Every test has its own gateway, upstream, plugin (child or server, on its own port or socket)
//! and sandbox, so they run in parallel.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// MD5 of the empty string: Tyk's `bundle_hash` for an API without a bundle.
const EMPTY_BUNDLE_HASH: &str = "d41d8cd98f00b204e9800998ecf8427e";
/// How long to wait for log lines such as a plugin restart.
const LOG_WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The suite, once per transport
// ---------------------------------------------------------------------------------------------

/// How the gateway reaches the scenario plugin in one run of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// The plugin child `scenarios.py` over its stdin/stdout (API driver "python").
    Pipe,
    /// The gRPC server `scenarios_grpc.py` on a TCP port (API driver "grpc").
    GrpcTcp,
    /// The gRPC server `scenarios_grpc.py` on a Unix socket in the sandbox (API driver "grpc").
    GrpcUnix,
}

impl Transport {
    fn is_grpc(self) -> bool {
        self != Transport::Pipe
    }

    /// The `custom_middleware.driver` a Tyk API definition names for this transport.
    fn driver(self) -> &'static str {
        if self.is_grpc() {
            "grpc"
        } else {
            "python"
        }
    }
}

/// Declares the suite: every `shared` test runs as `pipe::<name>`, `grpc_tcp::<name>` and
/// `grpc_unix::<name>` (the function takes the [`Transport`]); `pipe_only` tests run as
/// `pipe::<name>`. So `cargo test --test hooks grpc_unix::` runs one transport's suite.
macro_rules! suite {
    (shared: [$($s:ident),* $(,)?], pipe_only: [$($p:ident),* $(,)?] $(,)?) => {
        mod pipe {
            $(#[test] fn $s() { super::$s(super::Transport::Pipe) })*
            $(#[test] fn $p() { super::$p() })*
        }
        mod grpc_tcp {
            $(#[test] fn $s() { super::$s(super::Transport::GrpcTcp) })*
        }
        mod grpc_unix {
            $(#[test] fn $s() { super::$s(super::Transport::GrpcUnix) })*
        }
    };
}

suite! {
    shared: [
        pre_and_post_hooks_set_and_delete_headers_seen_upstream,
        set_headers_names_are_canonical_and_delete_ignores_case,
        pre_hook_adds_and_deletes_params_query_reencoded_sorted,
        pre_hook_rewrites_url_and_method,
        hook_url_that_does_not_parse_is_500_and_spaces_are_escaped,
        pre_hook_replaces_raw_body_and_content_length_follows,
        hook_sees_body_as_body_and_raw_body,
        pre_hook_object_mirrors_tyk_build_object,
        spec_carries_ids_bundle_hash_and_sorted_config_data,
        response_override_table_matches_tyk,
        later_hooks_see_earlier_hooks_changes,
        short_circuit_and_errors_skip_the_rest_of_the_chain,
        crlf_in_plugin_headers_never_reaches_the_wire,
        auth_check_allows_denies_and_passes_the_session_on,
        auth_check_without_a_name_dispatches_an_empty_hook_name,
        auth_and_post_key_auth_never_run_on_keyless_apis,
        hooks_run_in_tyk_order,
        response_hook_changes_status_headers_and_body,
        response_hook_header_sync_follows_tyk,
        response_hook_failure_is_500,
        response_hook_reply_without_response,
        plugin_error_is_500_and_fail_open_proceeds_unchanged,
        fail_open_never_opens_a_protected_api,
        hung_hook_is_answered_at_its_deadline,
        out_of_order_replies_never_mix_up_requests_under_concurrency,
        pipelined_requests_through_a_hook_keep_their_order,
        plugins_off_skips_hooks,
        auth_failure_fires_the_cp_dynamic_handler_event,
    ],
    pipe_only: [
        frozen_child_is_killed_and_restarted,
        child_killed_mid_load_every_request_answered_and_child_back,
        garbage_on_stdout_restarts_the_child_and_service_recovers,
        oversized_frames_are_refused_and_service_recovers,
        bad_pipe_command_fails_start_with_a_clear_error,
    ],
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// [`hooked_api`] made a protected API with plugin auth (`enable_coprocess_auth`).
fn protected_api(api_id: &str, listen_path: &str, target: &str, mw: Value) -> Value {
    let mut api = hooked_api(api_id, listen_path, target, mw);
    merge(
        &mut api,
        json!({ "use_keyless": false, "enable_coprocess_auth": true }),
    );
    api
}

/// A gateway, its upstream and its plugin. The plugin writes one "hook_type hook_name" line per
/// call to `<sandbox>/calls.log` (scenarios.py's `SCENARIO_LOG`, for the child and the gRPC server
/// alike). Fields drop in order: gateway, gRPC server, upstream, sandbox.
struct HookEnv {
    gw: Gateway,
    _server: Option<GrpcServer>,
    _echo: Option<EchoUpstream>,
    sb: Sandbox,
}

impl HookEnv {
    /// The scenario plugin over `t` in front of an echo upstream. `extra` is merged into
    /// `coprocess_options` (hook timeout 30 s unless it says otherwise); `apis(echo_url)` lists
    /// (file name, API definition) pairs.
    fn start(
        t: Transport,
        tag: &str,
        extra: Value,
        apis: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
    ) -> HookEnv {
        let echo = EchoUpstream::start();
        let url = format!("{}/", echo.url());
        HookEnv::launch(t, "scenarios.py", tag, extra, &url, Some(echo), apis)
    }

    /// The scenario plugin over `t` in front of `up` (owned by the test); `apis(up_url)`.
    fn scripted(
        t: Transport,
        tag: &str,
        up: &ScriptedUpstream,
        apis: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
    ) -> HookEnv {
        let url = format!("{}/", up.url());
        HookEnv::launch(t, "scenarios.py", tag, json!({}), &url, None, apis)
    }

    /// A pipe plugin child running `tests/plugins/<script>` in front of an echo upstream.
    fn start_pipe_script(
        tag: &str,
        script: &str,
        extra: Value,
        apis: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
    ) -> HookEnv {
        let echo = EchoUpstream::start();
        let url = format!("{}/", echo.url());
        HookEnv::launch(Transport::Pipe, script, tag, extra, &url, Some(echo), apis)
    }

    /// Writes the configuration, starts the plugin (the gRPC server; the gateway starts a pipe
    /// child itself) and then the gateway. `pipe_script` is the child for [`Transport::Pipe`];
    /// the gRPC server always serves the scenarios.
    fn launch(
        t: Transport,
        pipe_script: &str,
        tag: &str,
        extra: Value,
        upstream_url: &str,
        echo: Option<EchoUpstream>,
        apis: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
    ) -> HookEnv {
        let sb = Sandbox::new(tag);
        let log = sb.dir().join("calls.log");
        let (mut cp, server) = match t {
            Transport::Pipe => (
                json!({
                    "pipe_command": ["python3", plugin_script(pipe_script)],
                    "pipe_env": { "SCENARIO_LOG": log.to_string_lossy() },
                }),
                None,
            ),
            Transport::GrpcTcp | Transport::GrpcUnix => {
                let listen = if t == Transport::GrpcTcp {
                    "tcp://127.0.0.1:0".to_string()
                } else {
                    format!("unix://{}", sb.dir().join("plugin.sock").display())
                };
                let server = GrpcServer::start(&listen, &log, &[]);
                (
                    json!({ "coprocess_grpc_server": server.target.clone() }),
                    Some(server),
                )
            }
        };
        merge(
            &mut cp,
            json!({ "enable_coprocess": true, "hook_timeout_ms": 30000 }),
        );
        merge(&mut cp, extra);
        sb.write_conf(&conf_with(json!({ "coprocess_options": cp })));
        for (name, mut api) in apis(upstream_url) {
            if api["custom_middleware"].is_object() {
                api["custom_middleware"]["driver"] = json!(t.driver());
            }
            sb.write_api(name, &api);
        }
        let gw = Gateway::start(&sb);
        HookEnv {
            gw,
            _server: server,
            _echo: echo,
            sb,
        }
    }

    /// GET `target` on a new connection (closed after the response).
    fn get(&self, target: &str) -> Response {
        self.gw.get(target)
    }

    /// Sends `r` (with `Connection: close`) on a new connection.
    fn send(&self, r: Req) -> Response {
        self.gw.send(&r.close().to_bytes())
    }

    /// The hook calls the plugin recorded so far, in order.
    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.sb.dir().join("calls.log"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

/// The request the scripted upstream read after the first `before` ones.
fn nth_request(up: &ScriptedUpstream, before: usize) -> RecordedRequest {
    assert!(
        up.wait_for_requests(before + 1, IO_TIMEOUT),
        "the upstream received no request"
    );
    up.requests()[before].clone()
}

/// Asserts a Tyk error response with exactly this status and message.
fn assert_error(r: &Response, status: u16, message: &str) {
    let got = r.assert_tyk_error(status);
    assert_eq!(got, message, "unexpected error message: {r:?}");
}

/// Asserts `r` is a 200 from the echo upstream and returns what the upstream saw.
fn upstream_saw(r: &Response) -> Echoed {
    assert_eq!(r.status, 200, "expected the upstream's 200: {r:?}");
    assert_eq!(
        r.header("x-echo-upstream"),
        Some("1"),
        "the response did not come from the echo upstream: {r:?}"
    );
    r.echoed()
}

/// Parses the X-Inspect header scenarios.py's `Inspect` hook sets (the object it received).
fn inspected(e: &Echoed) -> Value {
    let text = e
        .header("X-Inspect")
        .unwrap_or_else(|| panic!("the upstream did not get X-Inspect: {e:?}"));
    serde_json::from_str(text).unwrap_or_else(|err| panic!("X-Inspect is not JSON ({err}): {text}"))
}

// ---------------------------------------------------------------------------------------------
// Request hooks: what each one may change
// ---------------------------------------------------------------------------------------------

/// Tyk 2.5 step 2: delete_headers then set_headers (replacing), on pre and post hooks alike; the
/// hook sees the full path including the listen path (2.3, point 8). A scripted upstream records
/// every header line, so a header appended instead of replaced would show.
fn pre_and_post_hooks_set_and_delete_headers_seen_upstream(t: Transport) {
    let up = ScriptedUpstream::always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    let env = HookEnv::scripted(t, "hdrs", &up, |target| {
        vec![
            (
                "pre",
                hooked_api(
                    "pre",
                    "/pre/",
                    target,
                    json!({"pre": [{"name": "AddHeaders"}]}),
                ),
            ),
            (
                "post",
                hooked_api(
                    "post",
                    "/post/",
                    target,
                    json!({"post": [{"name": "AddHeaders"}]}),
                ),
            ),
            (
                "off",
                hooked_api(
                    "off",
                    "/off/",
                    target,
                    json!({"pre": [{"name": "AddHeaders", "disabled": true}]}),
                ),
            ),
        ]
    });
    let gw = &env.gw;

    for lp in ["/pre/", "/post/"] {
        let before = up.requests().len();
        let r = gw.send(
            &req("GET", &format!("{lp}some/path?q=1"))
                .header("X-Remove-Me", "secret")
                .header("X-Keep", "kept")
                .header("X-Pre", "from-client")
                .close()
                .to_bytes(),
        );
        assert_eq!(r.status, 200, "{lp}: {r:?}");
        assert!(
            up.wait_for_requests(before + 1, IO_TIMEOUT),
            "{lp}: upstream got nothing"
        );
        let seen = up.requests()[before].clone();
        assert_eq!(seen.target, "/some/path?q=1", "{lp}: {seen:?}");
        assert_eq!(
            seen.header_all("X-Pre"),
            vec!["1"],
            "{lp}: set_headers must replace: {seen:?}"
        );
        assert_eq!(
            seen.header("X-Hook-Saw-Url"),
            Some(format!("{lp}some/path?q=1").as_str()),
            "{lp}: the hook must see the full path with the listen path: {seen:?}"
        );
        assert!(
            seen.header("X-Remove-Me").is_none(),
            "{lp}: delete_headers ignored: {seen:?}"
        );
        assert_eq!(seen.header("X-Keep"), Some("kept"), "{lp}: {seen:?}");
    }

    // A disabled hook is skipped (Tyk 2.3).
    let before = up.requests().len();
    let r = gw.send(
        &req("GET", "/off/x")
            .header("X-Remove-Me", "still")
            .close()
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(up.wait_for_requests(before + 1, IO_TIMEOUT));
    let seen = up.requests()[before].clone();
    assert!(
        seen.header("X-Pre").is_none(),
        "a disabled hook ran: {seen:?}"
    );
    assert_eq!(seen.header("X-Remove-Me"), Some("still"), "{seen:?}");
}

/// Tyk's setCustomHeader canonicalizes set_headers names (`x-lower-set` goes out as
/// `X-Lower-Set`); delete_headers matches names in any case (Header.Del canonicalizes too).
fn set_headers_names_are_canonical_and_delete_ignores_case(t: Transport) {
    let up = ScriptedUpstream::always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    let env = HookEnv::scripted(t, "lower", &up, |target| {
        vec![(
            "lower",
            hooked_api(
                "lower",
                "/lower/",
                target,
                json!({"pre": [{"name": "SetLower"}]}),
            ),
        )]
    });
    let gw = &env.gw;
    let r = gw.send(
        &req("GET", "/lower/x")
            .header("X-Remove-Me", "gone")
            .close()
            .to_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = nth_request(&up, 0);
    assert!(
        seen.headers
            .iter()
            .any(|(k, v)| k == "X-Lower-Set" && v == "v"),
        "set_headers names must be canonical on the wire: {seen:?}"
    );
    assert!(seen.header("X-Remove-Me").is_none(), "{seen:?}");
}

/// Tyk 2.5 steps 3 and 6: delete_params, then add_params replacing existing values, then the
/// query is re-encoded with sorted keys (Go's url.Values.Encode).
fn pre_hook_adds_and_deletes_params_query_reencoded_sorted(t: Transport) {
    let env = HookEnv::start(t, "params", json!({}), |up| {
        vec![(
            "params",
            hooked_api(
                "params",
                "/params/",
                up,
                json!({"pre": [{"name": "Params"}]}),
            ),
        )]
    });
    let cases = [
        (
            "/params/x?zeta=1&gone=2&alpha=3&added=old&gone=4",
            "added=yes&alpha=3&zeta=1",
        ),
        ("/params/x?sp=a%20b&b=2&b=1", "added=yes&b=2&b=1&sp=a+b"),
        ("/params/x", "added=yes"),
        ("/params/x?gone=1", "added=yes"),
    ];
    for (target, query) in cases {
        let e = upstream_saw(&env.get(target));
        assert_eq!(e.path, "/x", "{target}: {e:?}");
        assert_eq!(e.query, query, "{target}: {e:?}");
    }
}

/// Tyk 2.5 steps 4-6: `url` replaces the path (the listen path is stripped only if the new path
/// still starts with it), `method` replaces the method, and the query stays the original one
/// (a query changed through `url` is reverted); the body is kept.
fn pre_hook_rewrites_url_and_method(t: Transport) {
    let env = HookEnv::start(t, "rewrite", json!({}), |up| {
        vec![(
            "rw",
            hooked_api("rw", "/rw/", up, json!({"pre": [{"name": "Rewrite"}]})),
        )]
    });
    let e = upstream_saw(&env.send(req("POST", "/rw/").body("payload")));
    assert_eq!(e.method, "PUT", "{e:?}");
    assert_eq!(e.path, "/rewritten/path", "{e:?}");
    assert_eq!(
        e.body.as_deref(),
        Some("payload"),
        "the body must survive a rewrite: {e:?}"
    );

    // Tyk keeps the original query (re-encoded with sorted keys) when `url` changes the path.
    let e = upstream_saw(&env.send(req("GET", "/rw/a/b?x=1&y=2")));
    assert_eq!(e.method, "PUT", "{e:?}");
    assert_eq!(e.path, "/rewritten/path", "{e:?}");
    assert_eq!(e.query, "x=1&y=2", "the client's query was lost: {e:?}");
}

/// Tyk 2.5 step 4: a `url` that does not parse as a request URI is 500 "Middleware error"; a
/// space in it is escaped on the request line (Go writes URL.EscapedPath()).
fn hook_url_that_does_not_parse_is_500_and_spaces_are_escaped(t: Transport) {
    let env = HookEnv::start(t, "badurl", json!({}), |up| {
        vec![
            (
                "badurl",
                hooked_api(
                    "badurl",
                    "/badurl/",
                    up,
                    json!({"pre": [{"name": "BadUrl"}]}),
                ),
            ),
            (
                "spaceurl",
                hooked_api(
                    "spaceurl",
                    "/spaceurl/",
                    up,
                    json!({"pre": [{"name": "SpaceUrl"}]}),
                ),
            ),
        ]
    });
    assert_error(&env.get("/badurl/x"), 500, "Middleware error");
    let r = env.get("/spaceurl/x");
    let e = upstream_saw(&r);
    assert_eq!(e.path, "/a%20b", "{e:?}");
}

/// Tyk 2.5 step 1: `raw_body` replaces the body and Content-Length follows it; `body` (the string)
/// is ignored on return; a plugin that echoes the whole object changes nothing it did not mean to.
fn pre_hook_replaces_raw_body_and_content_length_follows(t: Transport) {
    let env = HookEnv::start(t, "body", json!({}), |up| {
        vec![
            (
                "body",
                hooked_api("body", "/body/", up, json!({"pre": [{"name": "Body"}]})),
            ),
            (
                "bodystr",
                hooked_api(
                    "bodystr",
                    "/bodystr/",
                    up,
                    json!({"pre": [{"name": "BodyStrOnly"}]}),
                ),
            ),
            (
                "whole",
                hooked_api(
                    "whole",
                    "/whole/",
                    up,
                    json!({"post": [{"name": "EchoWhole"}]}),
                ),
            ),
        ]
    });
    // Content-Length body, chunked body, and no body at all: all become "replaced body".
    let sends = [
        req("POST", "/body/x").body("the original payload, longer than the new one"),
        req("POST", "/body/x").chunked(&[b"chunk one ", b"chunk two"]),
        req("GET", "/body/x"),
    ];
    for r in sends {
        let e = upstream_saw(&env.send(r));
        assert_eq!(e.body.as_deref(), Some("replaced body"), "{e:?}");
        assert_eq!(e.body_len, 13, "{e:?}");
        assert_eq!(e.header("Content-Length"), Some("13"), "{e:?}");
        assert!(e.header("Transfer-Encoding").is_none(), "{e:?}");
    }

    let e = upstream_saw(&env.send(req("POST", "/bodystr/x").body("original")));
    assert_eq!(
        e.body.as_deref(),
        Some("original"),
        "a change of `body` alone must be ignored (Tyk uses raw_body): {e:?}"
    );
    assert_eq!(e.header("Content-Length"), Some("8"), "{e:?}");

    let e = upstream_saw(
        &env.send(
            req("PATCH", "/whole/p/q?b=2&a=1")
                .header("X-Client", "c")
                .body("whole body"),
        ),
    );
    assert_eq!(e.header("X-Whole"), Some("1"), "{e:?}");
    assert_eq!(e.method, "PATCH", "{e:?}");
    assert_eq!(e.path, "/p/q", "{e:?}");
    assert_eq!(
        e.query, "b=2&a=1",
        "an unchanged query must not be re-encoded: {e:?}"
    );
    assert_eq!(e.header("X-Client"), Some("c"), "{e:?}");
    assert_eq!(e.body.as_deref(), Some("whole body"), "{e:?}");
}

/// Tyk 2.4: the hook gets the body as `raw_body` (bytes) and, when it is UTF-8 and the hook is not
/// `raw_body_only`, also as the `body` string.
fn hook_sees_body_as_body_and_raw_body(t: Transport) {
    let env = HookEnv::start(t, "seebody", json!({}), |up| {
        vec![
            (
                "see",
                hooked_api("see", "/see/", up, json!({"pre": [{"name": "SeeBody"}]})),
            ),
            (
                "rawonly",
                hooked_api(
                    "rawonly",
                    "/rawonly/",
                    up,
                    json!({"pre": [{"name": "SeeBody", "raw_body_only": true}]}),
                ),
            ),
        ]
    });
    let e = upstream_saw(
        &env.send(
            req("POST", "/see/")
                .header("Content-Type", "application/json")
                .body("{\"a\": 1}"),
        ),
    );
    assert_eq!(e.header("X-Body-Len"), Some("8"), "{e:?}");
    assert_eq!(e.header("X-Body-Str"), Some("{\"a\": 1}"), "{e:?}");
    assert_eq!(
        e.body.as_deref(),
        Some("{\"a\": 1}"),
        "the body must pass unchanged: {e:?}"
    );

    // Not UTF-8: only raw_body carries it; the upstream still gets every byte.
    let binary: Vec<u8> = vec![0xff, 0xfe, 0x00, 0x01, 0x80, b'x'];
    let e = upstream_saw(&env.send(req("POST", "/see/").body(binary.clone())));
    assert_eq!(e.header("X-Body-Len"), Some("6"), "{e:?}");
    assert_eq!(e.header("X-Body-Str").unwrap_or(""), "", "{e:?}");
    assert_eq!(e.body_len, 6, "{e:?}");

    // A chunked body is de-chunked before the hook sees it.
    let e = upstream_saw(&env.send(req("POST", "/see/").chunked(&[b"abc", b"defg"])));
    assert_eq!(e.header("X-Body-Len"), Some("7"), "{e:?}");
    assert_eq!(e.header("X-Body-Str"), Some("abcdefg"), "{e:?}");

    let e = upstream_saw(&env.send(req("POST", "/rawonly/").body("{\"a\": 1}")));
    assert_eq!(e.header("X-Body-Len"), Some("8"), "{e:?}");
    assert_eq!(
        e.header("X-Body-Str").unwrap_or(""),
        "",
        "raw_body_only must leave `body` empty: {e:?}"
    );
}

/// Tyk 2.4 (BuildObject): every field of the object a pre hook receives.
fn pre_hook_object_mirrors_tyk_build_object(t: Transport) {
    let env = HookEnv::start(t, "inspect", json!({}), |up| {
        vec![(
            "inspect",
            hooked_api(
                "inspect",
                "/inspect/",
                up,
                json!({"pre": [{"name": "Inspect"}]}),
            ),
        )]
    });
    let e = upstream_saw(
        &env.send(
            req("PUT", "/inspect/deep/path?b=2&a=1&a=3")
                .header("x-lower-case", "v")
                .header("Accept", "one")
                .header("Accept", "two")
                .body("hello"),
        ),
    );
    let o = inspected(&e);
    assert_eq!(o["hook_type"], "Pre", "{o}");
    assert_eq!(o["hook_name"], "Inspect", "{o}");
    assert!(
        o.get("session").is_none_or(Value::is_null),
        "a pre hook gets no session: {o}"
    );
    let r = &o["request"];
    assert_eq!(r["url"], "/inspect/deep/path?b=2&a=1&a=3", "{o}");
    assert_eq!(r["request_uri"], "/inspect/deep/path?b=2&a=1&a=3", "{o}");
    assert_eq!(r["method"], "PUT", "{o}");
    assert_eq!(r["scheme"], "http", "{o}");
    assert_eq!(
        r["params"],
        json!({"a": "1", "b": "2"}),
        "first value per key: {o}"
    );
    assert_eq!(
        r["headers"]["X-Lower-Case"], "v",
        "names must be Go-canonical: {o}"
    );
    assert_eq!(r["headers"]["Accept"], "one", "first value only: {o}");
    assert_eq!(r["headers"]["Host"], DEFAULT_HOST, "{o}");
    assert_eq!(r["headers"]["Content-Length"], "5", "{o}");
    assert_eq!(r["set_headers"], json!({}), "{o}");
    assert_eq!(r["delete_headers"], json!([]), "{o}");
    assert_eq!(r["add_params"], json!({}), "{o}");
    assert_eq!(r["extended_params"], json!({}), "{o}");
    assert_eq!(r["delete_params"], json!([]), "{o}");
    assert_eq!(r["return_overrides"]["response_code"], -1, "{o}");
    assert_eq!(r["body"], "hello", "{o}");
    assert_eq!(
        r["raw_body"]["bin"], 5,
        "raw_body must arrive as bytes (MessagePack bin, protobuf bytes), not str: {o}"
    );
    assert_eq!(o["spec"]["APIID"], "inspect", "{o}");
    assert_eq!(o["spec"]["OrgID"], "test-org", "{o}");
    assert_eq!(o["spec"]["bundle_hash"], EMPTY_BUNDLE_HASH, "{o}");
    assert_eq!(e.body.as_deref(), Some("hello"), "{e:?}");
}

/// Tyk 2.4: `spec` carries APIID, OrgID, bundle_hash (MD5 of "" without a bundle) and the
/// API's config_data as Go's json.Marshal writes it (sorted keys, HTML-safe escapes, numbers as
/// float64), and no config_data when config_data_disabled is set or it is empty.
fn spec_carries_ids_bundle_hash_and_sorted_config_data(t: Transport) {
    let env = HookEnv::start(t, "spec", json!({}), |up| {
        let mw = json!({"pre": [{"name": "Spec"}]});
        let mut on = hooked_api("spec-on", "/spec-on/", up, mw.clone());
        on["config_data"] =
            json!({"zeta": 1, "alpha": {"b": [1, 2.50], "a": "x"}, "html": "<a&b>"});
        let mut off = hooked_api("spec-off", "/spec-off/", up, mw.clone());
        off["config_data"] = json!({"key": "value"});
        off["config_data_disabled"] = json!(true);
        let mut empty = hooked_api("spec-empty", "/spec-empty/", up, mw);
        empty["config_data"] = json!({});
        empty["org_id"] = json!("other-org");
        vec![("on", on), ("off", off), ("empty", empty)]
    });
    let e = upstream_saw(&env.get("/spec-on/"));
    assert_eq!(e.header("X-Api-Id"), Some("spec-on"), "{e:?}");
    assert_eq!(e.header("X-Org-Id"), Some("test-org"), "{e:?}");
    assert_eq!(e.header("X-Bundle-Hash"), Some(EMPTY_BUNDLE_HASH), "{e:?}");
    assert_eq!(e.header("X-Has-Config-Data"), Some("true"), "{e:?}");
    assert_eq!(
        e.header("X-Config-Data"),
        Some(r#"{"alpha":{"a":"x","b":[1,2.5]},"html":"\u003ca\u0026b\u003e","zeta":1}"#),
        "{e:?}"
    );
    assert_eq!(
        e.header("X-Spec-Keys"),
        Some("APIID,OrgID,bundle_hash,config_data"),
        "{e:?}"
    );

    for (target, api, org) in [
        ("/spec-off/", "spec-off", "test-org"),
        ("/spec-empty/", "spec-empty", "other-org"),
    ] {
        let e = upstream_saw(&env.get(target));
        assert_eq!(e.header("X-Api-Id"), Some(api), "{e:?}");
        assert_eq!(e.header("X-Org-Id"), Some(org), "{e:?}");
        assert_eq!(
            e.header("X-Has-Config-Data"),
            Some("false"),
            "{target}: {e:?}"
        );
        assert_eq!(
            e.header("X-Spec-Keys"),
            Some("APIID,OrgID,bundle_hash"),
            "{target}: {e:?}"
        );
    }
}

/// What a response body must be.
enum Body {
    /// Exactly these bytes, written raw.
    Raw(&'static str),
    /// Tyk's JSON error template with this message.
    TykError(&'static str),
}

/// Tyk's TestResponseOverride (tyk-coprocess.md 5.3): a pre hook sets `X-Foo: Bar` and a code from
/// `?status`, with `response_body` "foobar" or `response_error` `{"foo": "bar"}`, and maybe
/// `override_error`. Codes >= 400 without override_error render Tyk's error template; everything
/// else is written raw. Every case carries X-Foo.
fn response_override_table_matches_tyk(t: Transport) {
    let env = HookEnv::start(t, "override", json!({}), |up| {
        vec![(
            "test",
            hooked_api("test", "/test/", up, json!({"pre": [{"name": "Override"}]})),
        )]
    });
    let cases = [
        ("status=200", 200, Body::Raw(r#"{"foo": "bar"}"#)),
        ("status=200&response_body=true", 200, Body::Raw("foobar")),
        ("status=400", 400, Body::TykError(r#"{"foo": "bar"}"#)),
        (
            "status=400&response_body=true",
            400,
            Body::TykError("foobar"),
        ),
        ("status=401", 401, Body::TykError(r#"{"foo": "bar"}"#)),
        (
            "status=400&override=true",
            400,
            Body::Raw(r#"{"foo": "bar"}"#),
        ),
        (
            "status=400&override=true&response_body=true",
            400,
            Body::Raw("foobar"),
        ),
        (
            "status=401&override=true",
            401,
            Body::Raw(r#"{"foo": "bar"}"#),
        ),
    ];
    let mut c = env.gw.client();
    for (query, status, body) in cases {
        let r = c.request(&req("GET", &format!("/test/?{query}")).to_bytes());
        assert_eq!(r.status, status, "?{query}: {r:?}");
        assert_eq!(r.header("X-Foo"), Some("Bar"), "?{query}: {r:?}");
        assert!(
            r.header("x-echo-upstream").is_none(),
            "?{query} reached the upstream: {r:?}"
        );
        match body {
            Body::Raw(b) => {
                assert_eq!(r.text(), b, "?{query}: {r:?}");
                assert_eq!(
                    r.framing,
                    Framing::Length(b.len() as u64),
                    "?{query}: {r:?}"
                );
            }
            Body::TykError(message) => assert_error(&r, status, message),
        }
    }
}

/// Each hook sees the request as the earlier hooks left it (Tyk rebuilds the object from the
/// modified request): headers, re-encoded query and params, and the new body.
fn later_hooks_see_earlier_hooks_changes(t: Transport) {
    let env = HookEnv::start(t, "chain", json!({}), |up| {
        let mw = json!({"pre": [
            {"name": "AddHeaders"}, {"name": "Params"}, {"name": "Body"}, {"name": "Inspect"}
        ]});
        vec![("chain", hooked_api("chain", "/chain/", up, mw))]
    });
    let e = upstream_saw(
        &env.send(
            req("POST", "/chain/x?zeta=1&gone=1")
                .header("X-Remove-Me", "r")
                .body("first body"),
        ),
    );
    let o = inspected(&e);
    let r = &o["request"];
    assert_eq!(r["headers"]["X-Pre"], "1", "{o}");
    assert_eq!(
        r["headers"]["X-Hook-Saw-Url"], "/chain/x?zeta=1&gone=1",
        "{o}"
    );
    assert!(r["headers"].get("X-Remove-Me").is_none(), "{o}");
    assert_eq!(r["url"], "/chain/x?added=yes&zeta=1", "{o}");
    assert_eq!(r["params"], json!({"added": "yes", "zeta": "1"}), "{o}");
    assert_eq!(r["raw_body"]["bin"], 13, "{o}");
    assert_eq!(r["body"], "replaced body", "{o}");
    assert_eq!(e.query, "added=yes&zeta=1", "{e:?}");
    assert_eq!(e.body.as_deref(), Some("replaced body"), "{e:?}");
}

/// A short-circuit (return_overrides) or an error ends the chain: no later request hook, no
/// upstream, no response hook (Tyk writes the reply and stops). Response hooks do not run on a
/// gateway error either (an unreachable upstream).
fn short_circuit_and_errors_skip_the_rest_of_the_chain(t: Transport) {
    let down = refused_addr();
    let env = HookEnv::start(t, "shortcircuit", json!({}), |up| {
        vec![
            (
                "sc",
                hooked_api(
                    "sc",
                    "/sc/",
                    up,
                    json!({
                        "pre": [{"name": "Override"}, {"name": "AddHeaders"}],
                        "post": [{"name": "Spec"}],
                        "response": [{"name": "Resp"}],
                    }),
                ),
            ),
            (
                "err",
                hooked_api(
                    "err",
                    "/err/",
                    up,
                    json!({"pre": [{"name": "Fail"}], "response": [{"name": "Resp"}]}),
                ),
            ),
            (
                "down",
                hooked_api(
                    "down",
                    "/down/",
                    &format!("http://{down}/"),
                    json!({"response": [{"name": "Resp"}]}),
                ),
            ),
        ]
    });
    let r = env.get("/sc/?status=200&response_body=true");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "foobar", "{r:?}");
    assert!(r.header("X-Resp").is_none(), "a response hook ran: {r:?}");
    assert_error(&env.get("/sc/?status=403"), 403, r#"{"foo": "bar"}"#);
    assert_error(&env.get("/err/"), 500, "Middleware error");
    assert_eq!(env.calls(), ["Pre Override", "Pre Override", "Pre Fail"]);

    let r = env.get("/down/");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.header("X-Resp").is_none(), "{r:?}");
    assert_eq!(
        env.calls().len(),
        3,
        "a response hook ran on a gateway error"
    );
}

/// CR/LF in header names or values a plugin returns (set_headers, response headers,
/// return_overrides headers) never becomes an extra header line on the wire: no header injection
/// towards the upstream or the client, whatever else the gateway does with the value.
fn crlf_in_plugin_headers_never_reaches_the_wire(t: Transport) {
    // The upstream keeps every request head as raw bytes, parsable or not (a head with an
    // injected line may not parse), and answers each with a fixed response.
    let heads: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let recorder = Arc::clone(&heads);
    let up = ScriptedUpstream::start(move |mut c| {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match std::io::Read::read(c.stream(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(head);
        let _ = c.write(
            b"HTTP/1.1 200 OK\r\nX-Up: u\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        );
    });
    let env = HookEnv::scripted(t, "crlf", &up, |target| {
        vec![
            (
                "inj",
                hooked_api("inj", "/inj/", target, json!({"pre": [{"name": "Inject"}]})),
            ),
            (
                "injurl",
                hooked_api(
                    "injurl",
                    "/injurl/",
                    target,
                    json!({"pre": [{"name": "InjectUrl"}]}),
                ),
            ),
            (
                "injresp",
                hooked_api(
                    "injresp",
                    "/injresp/",
                    target,
                    json!({"response": [{"name": "InjectResp"}]}),
                ),
            ),
            (
                "injovr",
                hooked_api(
                    "injovr",
                    "/injovr/",
                    target,
                    json!({"pre": [{"name": "InjectOverride"}]}),
                ),
            ),
        ]
    });
    let gw = &env.gw;
    // Every direction is checked before failing, so the report lists each one that leaks.
    let mut leaks = Vec::new();
    let r = gw.get("/inj/");
    if !(r.status == 200 || r.status >= 500) {
        leaks.push(format!("/inj/: unexpected answer: {r:?}"));
    }
    // A url with control characters does not parse: Tyk answers 500 "Middleware error".
    let r = gw.get("/injurl/");
    if r.status != 500 || r.text() != "{\n    \"error\": \"Middleware error\"\n}" {
        leaks.push(format!("/injurl/: expected 500 Middleware error: {r:?}"));
    }
    for head in heads.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let head = String::from_utf8_lossy(head).into_owned();
        if head.lines().any(|l| l.starts_with("Injected")) {
            leaks.push(format!(
                "/inj/ or /injurl/: injection towards the upstream:\n{head}"
            ));
        }
    }
    for target in ["/injresp/", "/injovr/"] {
        let r = gw.get(target);
        if !(r.status == 200 || r.status >= 500) {
            leaks.push(format!("{target}: unexpected answer: {r:?}"));
        }
        if r.header("Injected").is_some() {
            leaks.push(format!("{target}: injection towards the client:\n{r:?}"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

/// Tyk 2.6: an auth_check that returns a session and metadata["token"] lets the request in, and
/// later hooks (post_key_auth, post) see that session; the plugin's own override denies (401
/// "bad key"); a session without a token is 403 "Forbidden"; a failing auth hook is 403 "Key not
/// authorised"; an auth hook may short-circuit with a 200 override. Denied requests reach neither
/// post_key_auth nor the upstream.
fn auth_check_allows_denies_and_passes_the_session_on(t: Transport) {
    let env = HookEnv::start(t, "auth", json!({}), |up| {
        vec![
            (
                "auth",
                protected_api(
                    "auth",
                    "/auth/",
                    up,
                    json!({"auth_check": {"name": "Auth"}, "post_key_auth": [{"name": "AfterAuth"}]}),
                ),
            ),
            (
                "authpost",
                protected_api(
                    "authpost",
                    "/authpost/",
                    up,
                    json!({"auth_check": {"name": "Auth"}, "post": [{"name": "Inspect"}]}),
                ),
            ),
            (
                "autherr",
                protected_api(
                    "autherr",
                    "/autherr/",
                    up,
                    json!({"auth_check": {"name": "Fail"}, "post_key_auth": [{"name": "AfterAuth"}]}),
                ),
            ),
            (
                "authovr",
                protected_api(
                    "authovr",
                    "/authovr/",
                    up,
                    json!({"auth_check": {"name": "Override"}, "post_key_auth": [{"name": "AfterAuth"}]}),
                ),
            ),
        ]
    });

    let e = upstream_saw(&env.send(req("GET", "/auth/in").header("Authorization", "letmein")));
    assert_eq!(e.path, "/in", "{e:?}");
    assert_eq!(
        e.header("X-Session-Rate"),
        Some("100.0"),
        "post_key_auth must see the session: {e:?}"
    );
    assert_eq!(e.header("X-Session-User"), Some("alice"), "{e:?}");

    // A post hook sees the session too, with object.metadata merged into it (Tyk 2.5 step 8,
    // 2.6 step 3).
    let e = upstream_saw(&env.send(req("GET", "/authpost/").header("Authorization", "letmein")));
    let o = inspected(&e);
    assert_eq!(o["hook_type"], "Post", "{o}");
    assert_eq!(o["session"]["rate"], 100.0, "{o}");
    assert_eq!(o["session"]["metadata"]["user"], "alice", "{o}");
    assert_eq!(o["session"]["metadata"]["token"], "letmein", "{o}");
    assert_eq!(
        o["metadata"]["token"], "letmein",
        "object.metadata = session.metadata: {o}"
    );

    let calls_before = env.calls().len();
    assert_error(
        &env.send(req("GET", "/auth/x").header("Authorization", "wrong")),
        401,
        "bad key",
    );
    assert_error(&env.send(req("GET", "/auth/x")), 401, "bad key");
    assert_error(
        &env.send(req("GET", "/auth/x").header("Authorization", "notoken")),
        403,
        "Forbidden",
    );
    let calls: Vec<String> = env.calls().split_off(calls_before);
    assert_eq!(
        calls,
        vec!["CustomKeyCheck Auth"; 3],
        "denied requests must not reach post_key_auth"
    );

    assert_error(
        &env.send(req("GET", "/autherr/x").header("Authorization", "letmein")),
        403,
        "Key not authorised",
    );

    // A 200 override from the auth hook answers directly (Tyk 2.5 step 11), without a session.
    let calls_before = env.calls().len();
    let r = env.send(req("GET", "/authovr/?status=200&response_body=true"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "foobar", "{r:?}");
    assert_eq!(r.header("X-Foo"), Some("Bar"), "{r:?}");
    assert_eq!(
        env.calls().split_off(calls_before),
        vec!["CustomKeyCheck Override"]
    );
}

/// Tyk 2.4: with plugin auth on and no auth_check named, the auth hook is still dispatched, with
/// an empty hook_name; a plugin that returns no session gets 403 "Forbidden" (TestGRPCIgnore).
fn auth_check_without_a_name_dispatches_an_empty_hook_name(t: Transport) {
    let env = HookEnv::start(t, "authnoname", json!({}), |up| {
        vec![(
            "noname",
            protected_api(
                "noname",
                "/noname/",
                up,
                json!({"pre": [{"name": "AddHeaders"}]}),
            ),
        )]
    });
    assert_error(
        &env.send(req("GET", "/noname/").header("Authorization", "letmein")),
        403,
        "Forbidden",
    );
    assert_eq!(env.calls(), ["Pre AddHeaders", "CustomKeyCheck "]);
}

/// Tyk 2.3: auth_check and post_key_auth are never registered on keyless APIs, even with plugin
/// auth switched on; pre and post still run.
fn auth_and_post_key_auth_never_run_on_keyless_apis(t: Transport) {
    let env = HookEnv::start(t, "keyless", json!({}), |up| {
        let mut api = hooked_api(
            "keyless",
            "/keyless/",
            up,
            json!({
                "pre": [{"name": "AddHeaders"}],
                "auth_check": {"name": "Auth"},
                "post_key_auth": [{"name": "AfterAuth"}],
                "post": [{"name": "Spec"}],
            }),
        );
        api["enable_coprocess_auth"] = json!(true);
        vec![("keyless", api)]
    });
    for auth in [None, Some("wrong"), Some("letmein")] {
        let mut r = req("GET", "/keyless/x");
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let e = upstream_saw(&env.send(r));
        assert_eq!(e.header("X-Pre"), Some("1"), "{e:?}");
        assert_eq!(e.header("X-Api-Id"), Some("keyless"), "{e:?}");
        assert!(
            e.header("X-Session-Rate").is_none(),
            "post_key_auth ran: {e:?}"
        );
    }
    assert_eq!(env.calls(), ["Pre AddHeaders", "Post Spec"].repeat(3));
}

/// Tyk 2.3: pre, auth_check, post_key_auth, post, upstream, response: one call each, in order.
fn hooks_run_in_tyk_order(t: Transport) {
    let env = HookEnv::start(t, "order", json!({}), |up| {
        vec![(
            "order",
            protected_api(
                "order",
                "/order/",
                up,
                json!({
                    "pre": [{"name": "AddHeaders"}, {"name": "Params"}],
                    "auth_check": {"name": "Auth"},
                    "post_key_auth": [{"name": "AfterAuth"}],
                    "post": [{"name": "Spec"}],
                    "response": [{"name": "NewBody"}],
                }),
            ),
        )]
    });
    let r = env.send(req("GET", "/order/").header("Authorization", "letmein"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "newbody", "{r:?}");
    assert_eq!(
        env.calls(),
        vec![
            "Pre AddHeaders",
            "Pre Params",
            "CustomKeyCheck Auth",
            "PostKeyAuth AfterAuth",
            "Post Spec",
            "Response NewBody",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Response hooks
// ---------------------------------------------------------------------------------------------

/// Tyk 2.9: a response hook sets the status, the headers and the body (raw_body), and
/// Content-Length always matches the new body, also when the upstream answered chunked.
fn response_hook_changes_status_headers_and_body(t: Transport) {
    let env = HookEnv::start(t, "resp", json!({}), |up| {
        vec![
            (
                "resp",
                hooked_api(
                    "resp",
                    "/resp/",
                    up,
                    json!({"response": [{"name": "Resp"}]}),
                ),
            ),
            (
                "newbody",
                hooked_api(
                    "newbody",
                    "/newbody/",
                    up,
                    json!({"response": [{"name": "NewBody"}]}),
                ),
            ),
            (
                "whole",
                hooked_api(
                    "whole",
                    "/whole/",
                    up,
                    json!({"response": [{"name": "EchoWhole"}]}),
                ),
            ),
            (
                "inspect",
                hooked_api(
                    "inspect",
                    "/inspect/",
                    up,
                    json!({"response": [{"name": "InspectResp"}]}),
                ),
            ),
        ]
    });
    for target in ["/resp/a?x=1", "/resp/a?x=1&chunked=1"] {
        let r = env.send(req("GET", target).token("tok-resp"));
        assert_eq!(r.status, 201, "{target}: {r:?}");
        assert_eq!(r.header("X-Resp"), Some("1"), "{target}: {r:?}");
        assert_eq!(
            r.header("X-Echo-Upstream"),
            Some("1"),
            "kept upstream header: {r:?}"
        );
        assert_eq!(
            r.header("X-Echo-Token"),
            Some("tok-resp"),
            "{target}: {r:?}"
        );
        assert_eq!(
            r.framing,
            Framing::Length(r.body.len() as u64),
            "{target}: {r:?}"
        );
        let text = r.text();
        let rest = text
            .strip_prefix("wrapped:")
            .unwrap_or_else(|| panic!("{target}: body not wrapped: {r:?}"));
        let v: Value = serde_json::from_str(rest).unwrap_or_else(|e| {
            panic!("{target}: the wrapped upstream body is not JSON ({e}): {r:?}")
        });
        assert_eq!(v["path"], "/a", "{target}: {r:?}");
    }

    // Only raw_body changed (Tyk's testResponseHook): status and headers stay.
    let r = env.send(req("GET", "/newbody/"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "newbody", "{r:?}");
    assert_eq!(r.header("Content-Length"), Some("7"), "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/json"), "{r:?}");

    // The whole object echoed back with one header added changes nothing else.
    let r = env.send(req("GET", "/whole/w?s=1").token("tok-whole"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Whole-Resp"), Some("1"), "{r:?}");
    assert_eq!(r.header("X-Echo-Token"), Some("tok-whole"), "{r:?}");
    assert_eq!(r.echoed().path, "/w", "{r:?}");
    assert_eq!(r.framing, Framing::Length(r.body.len() as u64), "{r:?}");

    // What the response hook receives (Tyk 2.4, response hook part).
    let r = env.send(req("GET", "/inspect/i?status=202").token("tok-i"));
    assert_eq!(r.status, 202, "{r:?}");
    let o = r.json();
    assert_eq!(o["hook_type"], "Response", "{o}");
    assert_eq!(o["hook_name"], "InspectResp", "{o}");
    assert!(
        o["session"].is_object(),
        "a response hook always gets a session (empty when keyless): {o}"
    );
    let resp = &o["response"];
    assert_eq!(resp["status_code"], 202, "{o}");
    assert_eq!(resp["headers"]["Content-Type"], "application/json", "{o}");
    assert_eq!(resp["headers"]["X-Echo-Token"], "tok-i", "{o}");
    assert!(
        resp["multivalue_headers"].as_array().is_some_and(|hs| hs
            .iter()
            .any(|h| h["key"] == "X-Echo-Token" && h["values"] == json!(["tok-i"]))),
        "{o}"
    );
    let len = resp["raw_body"]["bin"]
        .as_u64()
        .unwrap_or_else(|| panic!("raw_body must be bin: {o}"));
    assert!(len > 0, "{o}");
    let body: Value = serde_json::from_str(resp["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("response.body must carry the upstream JSON ({e}): {o}"));
    assert_eq!(body["path"], "/i", "{o}");
    assert_eq!(o["request"]["url"], "/inspect/i?status=202", "{o}");
}

/// Tyk 2.9 header rules: the reply's `headers` replace the first value of each multivalue entry
/// (so three Set-Cookie lines survive a hook that echoes `headers`), and entries whose key is not
/// in `headers` are dropped. Content-Length always follows the new body.
fn response_hook_header_sync_follows_tyk(t: Transport) {
    let up = ScriptedUpstream::always(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nSet-Cookie: c=3\r\nX-Up: u\r\nContent-Length: 2\r\n\r\nok"
            .to_vec(),
    );
    let env = HookEnv::scripted(t, "sync", &up, |target| {
        vec![
            (
                "keep",
                hooked_api(
                    "keep",
                    "/keep/",
                    target,
                    json!({"response": [{"name": "Resp"}]}),
                ),
            ),
            (
                "drop",
                hooked_api(
                    "drop",
                    "/drop/",
                    target,
                    json!({"response": [{"name": "RespDrop"}]}),
                ),
            ),
        ]
    });
    let gw = &env.gw;
    let r = gw.get("/keep/");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header_all("Set-Cookie"), ["a=1", "b=2", "c=3"], "{r:?}");
    assert_eq!(r.header("X-Up"), Some("u"), "{r:?}");
    assert_eq!(r.header("X-Resp"), Some("1"), "{r:?}");
    assert_eq!(r.text(), "wrapped:ok", "{r:?}");
    assert_eq!(r.header_all("Content-Length"), ["10"], "{r:?}");

    let r = gw.get("/drop/");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Only"), Some("1"), "{r:?}");
    assert!(r.header("Set-Cookie").is_none(), "{r:?}");
    assert!(r.header("X-Up").is_none(), "{r:?}");
    assert_eq!(r.text(), "ok", "{r:?}");
    assert_eq!(r.framing, Framing::Length(2), "{r:?}");
}

/// A response hook that fails is 500 "Middleware error" (Tyk 2.9).
fn response_hook_failure_is_500(t: Transport) {
    let env = HookEnv::start(t, "respfail", json!({}), |up| {
        vec![(
            "fail",
            hooked_api(
                "fail",
                "/fail/",
                up,
                json!({"response": [{"name": "Fail"}]}),
            ),
        )]
    });
    assert_error(&env.get("/fail/"), 500, "Middleware error");
}

/// A response hook's "no change" reply.
///
/// Pipe: a reply with no `response` (e.g. `{"id": N, "object": {}}`, which the Node and Rust
/// SDKs send for "no change") leaves the response unchanged: in the pipe protocol an absent field
/// means unchanged.
///
/// gRPC (proto3 differs): a gRPC server cannot leave fields out, so "no change" is the echoed
/// object (scenarios_grpc.py answers `Noop` so, as Tyk's servers do), which leaves the response
/// unchanged too. An Object that really comes back without `response` (scenario `NoResponse`) is
/// what Tyk answers 500 "Middleware error" for (tyk-coprocess.md 2.9 step 2:
/// `returned.response == nil`), and it must not reach the upstream's response through unchanged.
fn response_hook_reply_without_response(t: Transport) {
    let env = HookEnv::start(t, "respnoop", json!({}), |up| {
        vec![
            (
                "noop",
                hooked_api(
                    "noop",
                    "/noop/",
                    up,
                    json!({"response": [{"name": "Noop"}]}),
                ),
            ),
            (
                "noresp",
                hooked_api(
                    "noresp",
                    "/noresp/",
                    up,
                    json!({"response": [{"name": "NoResponse"}]}),
                ),
            ),
        ]
    });
    let r = env.send(req("GET", "/noop/n").token("tok-noop"));
    let e = upstream_saw(&r);
    assert_eq!(e.path, "/n", "{r:?}");
    assert_eq!(r.header("X-Echo-Token"), Some("tok-noop"), "{r:?}");

    if t.is_grpc() {
        let r = env.send(req("GET", "/noresp/n").token("tok-noresp"));
        assert_error(&r, 500, "Middleware error");
        assert_eq!(env.calls(), ["Response Noop", "Response NoResponse"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin failures
// ---------------------------------------------------------------------------------------------

/// A hook error reply is 500 "Middleware error" (Tyk 2.5, dispatch error); with fail_open (the
/// gateway's or the hook's own) the request goes on unchanged.
fn plugin_error_is_500_and_fail_open_proceeds_unchanged(t: Transport) {
    let env = HookEnv::start(t, "fail", json!({}), |up| {
        vec![
            (
                "pre",
                hooked_api("pre", "/pre/", up, json!({"pre": [{"name": "Fail"}]})),
            ),
            (
                "post",
                hooked_api("post", "/post/", up, json!({"post": [{"name": "Fail"}]})),
            ),
            (
                "open",
                hooked_api(
                    "open",
                    "/open/",
                    up,
                    json!({"pre": [{"name": "Fail", "fail_open": true}, {"name": "AddHeaders"}]}),
                ),
            ),
        ]
    });
    assert_error(&env.get("/pre/"), 500, "Middleware error");
    assert_error(
        &env.send(req("POST", "/post/").body("b")),
        500,
        "Middleware error",
    );
    let e = upstream_saw(&env.send(req("GET", "/open/o?q=1").header("X-Remove-Me", "r")));
    assert_eq!(e.path, "/o", "{e:?}");
    assert_eq!(
        e.header("X-Pre"),
        Some("1"),
        "the next hook must still run: {e:?}"
    );
    drop(env);

    let env = HookEnv::start(t, "failopen", json!({"fail_open": true}), |up| {
        vec![(
            "pre",
            hooked_api("pre", "/pre/", up, json!({"pre": [{"name": "Fail"}]})),
        )]
    });
    let e = upstream_saw(
        &env.send(
            req("POST", "/pre/x?q=1")
                .header("X-Client", "c")
                .body("unchanged"),
        ),
    );
    assert_eq!(e.path, "/x", "{e:?}");
    assert_eq!(e.query, "q=1", "{e:?}");
    assert_eq!(e.method, "POST", "{e:?}");
    assert_eq!(e.header("X-Client"), Some("c"), "{e:?}");
    assert_eq!(e.body.as_deref(), Some("unchanged"), "{e:?}");
}

/// fail_open is for hooks that enrich a request; it must not turn a protected API into an open
/// one. An auth_check that fails (error reply or deadline) is still 403 "Key not authorised", as
/// in Tyk, with the gateway-wide fail_open on.
fn fail_open_never_opens_a_protected_api(t: Transport) {
    let env = HookEnv::start(
        t,
        "failopenauth",
        json!({"fail_open": true, "hook_timeout_ms": 500}),
        |up| {
            vec![
                (
                    "autherr",
                    protected_api(
                        "autherr",
                        "/autherr/",
                        up,
                        json!({"auth_check": {"name": "Fail"}}),
                    ),
                ),
                (
                    "authslow",
                    protected_api(
                        "authslow",
                        "/authslow/",
                        up,
                        json!({"auth_check": {"name": "Slow"}}),
                    ),
                ),
            ]
        },
    );
    assert_error(&env.get("/autherr/"), 403, "Key not authorised");
    assert_error(&env.get("/authslow/?sleep=20"), 403, "Key not authorised");
}

/// A hook slower than its deadline is answered 500 "Middleware error" (403 "Key not authorised"
/// for auth) without waiting for it; other requests keep being served meanwhile and after.
fn hung_hook_is_answered_at_its_deadline(t: Transport) {
    let env = HookEnv::start(t, "slow", json!({"hook_timeout_ms": 500}), |up| {
        vec![
            (
                "slow",
                hooked_api("slow", "/slow/", up, json!({"pre": [{"name": "Slow"}]})),
            ),
            (
                "fast",
                hooked_api(
                    "fast",
                    "/fast/",
                    up,
                    json!({"pre": [{"name": "AddHeaders"}]}),
                ),
            ),
            (
                "slowhook",
                hooked_api(
                    "slowhook",
                    "/slowhook/",
                    up,
                    json!({"pre": [{"name": "Slow", "timeout_ms": 300}]}),
                ),
            ),
            (
                "slowauth",
                protected_api(
                    "slowauth",
                    "/slowauth/",
                    up,
                    json!({"auth_check": {"name": "Slow"}}),
                ),
            ),
        ]
    });
    // Plenty of room above the 500 ms deadline, far below the hook's 20 s sleep.
    let started = Instant::now();
    assert_error(&env.get("/slow/?sleep=20"), 500, "Middleware error");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the hung call was not answered at its deadline (took {:?})",
        started.elapsed()
    );
    let e = upstream_saw(&env.get("/fast/"));
    assert_eq!(e.header("X-Pre"), Some("1"), "{e:?}");
    assert_error(&env.get("/slowhook/?sleep=20"), 500, "Middleware error");
    assert_error(&env.get("/slowauth/?sleep=20"), 403, "Key not authorised");
    for _ in 0..5 {
        let e = upstream_saw(&env.get("/fast/"));
        assert_eq!(e.header("X-Pre"), Some("1"), "{e:?}");
    }
}

/// A child that stops answering altogether (every reply blocked) has its calls answered 500 at
/// their deadline, is killed as hung and restarted, and then serves again.
fn frozen_child_is_killed_and_restarted() {
    let env = HookEnv::start(
        Transport::Pipe,
        "freeze",
        json!({"hook_timeout_ms": 500}),
        |up| {
            vec![
                (
                    "freeze",
                    hooked_api(
                        "freeze",
                        "/freeze/",
                        up,
                        json!({"pre": [{"name": "Freeze"}]}),
                    ),
                ),
                (
                    "pid",
                    hooked_api("pid", "/pid/", up, json!({"pre": [{"name": "Pid"}]})),
                ),
            ]
        },
    );
    let first = upstream_saw(&env.get("/pid/"));
    let pid1 = first.header("X-Plugin-Pid").unwrap_or_default().to_string();
    assert!(!pid1.is_empty(), "{first:?}");
    let mark = env.gw.log().mark();
    assert_error(&env.get("/freeze/?sleep=300"), 500, "Middleware error");
    // While frozen, calls fail cleanly at their deadline (or succeed, if the child was already
    // replaced by the time this one was sent).
    let r = env.get("/pid/");
    if r.status != 200 {
        assert_error(&r, 500, "Middleware error");
    }
    assert!(
        env.gw.log().wait_for(mark, "is hung", LOG_WAIT).is_some(),
        "the frozen child was not declared hung"
    );
    let pid2 = wait_restarted(&env.gw, mark, "scenarios");
    assert_ne!(
        pid2.to_string(),
        pid1,
        "the restarted child has the old pid"
    );
    let mut last = None;
    let ok = wait_until(LOG_WAIT, || {
        let r = env.get("/pid/");
        let good = r.status == 200;
        last = Some(r);
        good
    });
    let r = last.unwrap_or_else(|| panic!("no request was sent"));
    assert!(ok, "requests did not succeed after the restart: {r:?}");
    assert_eq!(
        upstream_saw(&r).header("X-Plugin-Pid"),
        Some(pid2.to_string().as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency and crashes
// ---------------------------------------------------------------------------------------------

/// 32 keep-alive clients × 320 requests (10,240) through a hook whose replies come back out of
/// order (the plugin sleeps a varying time per request on a thread pool): every response carries
/// its own request's token, as the upstream echoed it and as the plugin set it.
fn out_of_order_replies_never_mix_up_requests_under_concurrency(t: Transport) {
    const THREADS: usize = 32;
    const PER_THREAD: usize = 320;
    let env = HookEnv::start(t, "concurrency", json!({}), |up| {
        vec![(
            "echo",
            hooked_api("echo", "/echo/", up, json!({"pre": [{"name": "Echo"}]})),
        )]
    });
    let tally = Arc::new(Tally::default());
    let addr = env.gw.addr();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let tally = Arc::clone(&tally);
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..PER_THREAD {
                    let token = format!("c{t}x{i}");
                    if !tally.record(echo_request(&mut c, &token)) {
                        c = Client::connect(addr);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().is_ok(), "a client thread panicked");
    }
    assert_eq!(
        tally.ok.load(Ordering::Relaxed),
        THREADS * PER_THREAD,
        "every request must succeed with its own data: {}",
        tally.report()
    );
}

/// 40 requests pipelined on one connection through the out-of-order `Echo` hook are answered in
/// request order, each with its own data.
fn pipelined_requests_through_a_hook_keep_their_order(t: Transport) {
    let env = HookEnv::start(t, "pipelined", json!({}), |up| {
        vec![(
            "echo",
            hooked_api("echo", "/echo/", up, json!({"pre": [{"name": "Echo"}]})),
        )]
    });
    let tokens: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
    let mut all = Vec::new();
    for t in &tokens {
        all.extend_from_slice(&req("GET", &format!("/echo/{t}?t={t}")).token(t).to_bytes());
    }
    let mut c = env.gw.client();
    c.send(&all);
    for t in &tokens {
        let r = c.read_response();
        assert_eq!(r.status, 200, "{t}: {r:?}");
        assert_eq!(
            r.header("x-echo-token"),
            Some(t.as_str()),
            "responses out of order: {r:?}"
        );
        let e = r.echoed();
        assert_eq!(e.header("X-Plugin-Token"), Some(t.as_str()), "{e:?}");
        assert_eq!(e.path, format!("/{t}"), "{e:?}");
    }
}

/// The child is killed twice while 8 clients load a normal hook (once by the `Crash` hook making
/// it exit, once by SIGKILL from outside): every request gets an answer (200 with its own data or
/// a clean 500 "Middleware error"), the gateway stays up, the child comes back each time, and
/// afterwards every request succeeds again.
fn child_killed_mid_load_every_request_answered_and_child_back() {
    const THREADS: usize = 8;
    let mut env = HookEnv::start(Transport::Pipe, "crash", json!({}), |up| {
        vec![
            (
                "echo",
                hooked_api("echo", "/echo/", up, json!({"pre": [{"name": "Echo"}]})),
            ),
            (
                "crash",
                hooked_api("crash", "/crash/", up, json!({"pre": [{"name": "Crash"}]})),
            ),
        ]
    });
    let first_pid = ready_pid(&env.gw, "scenarios")
        .unwrap_or_else(|| panic!("no ready line with a pid:\n{}", env.gw.log().text()));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let addr = env.gw.addr();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) || i < 50 {
                    let token = format!("k{t}x{i}");
                    if !tally.record(echo_request(&mut c, &token)) {
                        c = Client::connect(addr);
                    }
                    i += 1;
                }
            })
        })
        .collect();

    // Let the load get going, then crash the child through a hook.
    wait_until(LOG_WAIT, || tally.ok.load(Ordering::Relaxed) >= 200);
    let mark = env.gw.log().mark();
    assert_error(&env.get("/crash/"), 500, "Middleware error");
    let second_pid = wait_restarted(&env.gw, mark, "scenarios");
    assert_ne!(second_pid, first_pid);

    // Then kill the new child from outside while the load goes on.
    let ok_before = tally.ok.load(Ordering::Relaxed);
    wait_until(LOG_WAIT, || {
        tally.ok.load(Ordering::Relaxed) >= ok_before + 200
    });
    let mark = env.gw.log().mark();
    kill_pid(second_pid);
    let third_pid = wait_restarted(&env.gw, mark, "scenarios");
    assert_ne!(third_pid, second_pid);
    let ok_before = tally.ok.load(Ordering::Relaxed);
    wait_until(LOG_WAIT, || {
        tally.ok.load(Ordering::Relaxed) >= ok_before + 200
    });

    stop.store(true, Ordering::Relaxed);
    for h in handles {
        assert!(h.join().is_ok(), "a client thread panicked");
    }
    eprintln!("load while the child was killed twice: {}", tally.report());
    assert_eq!(
        tally.bad_count.load(Ordering::Relaxed),
        0,
        "{}",
        tally.report()
    );
    assert!(
        env.gw.wait_exit(Duration::ZERO).is_none(),
        "the gateway exited"
    );

    // Back to normal: everything succeeds.
    let mut c = env.gw.client();
    for i in 0..100 {
        match echo_request(&mut c, &format!("after{i}")) {
            LoadOutcome::Ok => {}
            LoadOutcome::CleanError => {
                panic!("request {i} after the restarts failed: {}", tally.report())
            }
            LoadOutcome::Bad(why) => panic!("request {i} after the restarts: {why}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol violations
// ---------------------------------------------------------------------------------------------

/// Runs `bad` (a hook that breaks the protocol) and checks: a clean 500, the protocol violation
/// logged, a new child, and the service back for the good hook.
fn assert_violation_recovers(env: &HookEnv, bad: &str, name: &str, log_needle: &str) {
    let before = upstream_saw(&env.get("/ok/"));
    let old_pid = before
        .header("X-Plugin-Pid")
        .unwrap_or_default()
        .to_string();
    let mark = env.gw.log().mark();
    assert_error(&env.get(bad), 500, "Middleware error");
    assert!(
        env.gw.log().wait_for(mark, log_needle, LOG_WAIT).is_some(),
        "{bad}: no {log_needle:?} in the log"
    );
    let new_pid = wait_restarted(&env.gw, mark, name);
    assert_ne!(
        new_pid.to_string(),
        old_pid,
        "{bad}: the child was not replaced"
    );
    let mut last = None;
    let ok = wait_until(LOG_WAIT, || {
        let r = env.get("/ok/");
        let good = r.status == 200;
        last = Some(r);
        good
    });
    let r = last.unwrap_or_else(|| panic!("no request sent"));
    assert!(ok, "{bad}: the service did not recover: {r:?}");
    assert_eq!(
        upstream_saw(&r).header("X-Plugin-Pid"),
        Some(new_pid.to_string().as_str())
    );
}

/// Garbage on the child's stdout (a non-MessagePack payload, a printed text line, a frame that is
/// not a map) is a protocol error: the call is answered 500, the child is replaced, and the
/// service recovers. A reply that is undecodable but names its call id fails only that call.
fn garbage_on_stdout_restarts_the_child_and_service_recovers() {
    let env = HookEnv::start_pipe_script("garbage", "hooks_garbage.py", json!({}), |up| {
        vec![
            (
                "ok",
                hooked_api("ok", "/ok/", up, json!({"pre": [{"name": "Ok"}]})),
            ),
            (
                "gf",
                hooked_api("gf", "/gf/", up, json!({"pre": [{"name": "GarbageFrame"}]})),
            ),
            (
                "gt",
                hooked_api("gt", "/gt/", up, json!({"pre": [{"name": "GarbageText"}]})),
            ),
            (
                "nm",
                hooked_api("nm", "/nm/", up, json!({"pre": [{"name": "NotAMap"}]})),
            ),
            (
                "br",
                hooked_api("br", "/br/", up, json!({"pre": [{"name": "BadReply"}]})),
            ),
        ]
    });
    for bad in ["/gf/", "/gt/", "/nm/"] {
        assert_violation_recovers(&env, bad, "hooks_garbage", "broke the protocol");
    }

    let before = upstream_saw(&env.get("/ok/"));
    let pid = before
        .header("X-Plugin-Pid")
        .unwrap_or_default()
        .to_string();
    let mark = env.gw.log().mark();
    assert_error(&env.get("/br/"), 500, "Middleware error");
    let after = upstream_saw(&env.get("/ok/"));
    assert_eq!(
        after.header("X-Plugin-Pid"),
        Some(pid.as_str()),
        "an undecodable reply to one call must not cost the child"
    );
    assert!(
        env.gw.log().lines()[mark..]
            .iter()
            .all(|l| !l.contains("plugin ready")),
        "the child was restarted for a bad reply"
    );
}

/// Frames over max_frame_bytes: a child announcing a huge frame (length prefix only) or sending a
/// complete oversized one is killed and replaced, its call answered 500; a request whose frame
/// would exceed the limit is answered 500 (Tyk: gRPC message too large) without harming the child.
fn oversized_frames_are_refused_and_service_recovers() {
    let env = HookEnv::start_pipe_script(
        "oversized",
        "hooks_oversized.py",
        json!({"max_frame_bytes": 65536}),
        |up| {
            vec![
                (
                    "ok",
                    hooked_api("ok", "/ok/", up, json!({"pre": [{"name": "Ok"}]})),
                ),
                (
                    "huge",
                    hooked_api(
                        "huge",
                        "/huge/",
                        up,
                        json!({"pre": [{"name": "HugeLength"}]}),
                    ),
                ),
                (
                    "over",
                    hooked_api("over", "/over/", up, json!({"pre": [{"name": "OverMax"}]})),
                ),
            ]
        },
    );
    for bad in ["/huge/", "/over/"] {
        assert_violation_recovers(&env, bad, "hooks_oversized", "broke the protocol");
    }

    // Gateway -> child: a 200 KiB body cannot fit a 64 KiB frame.
    let pid = upstream_saw(&env.get("/ok/"))
        .header("X-Plugin-Pid")
        .unwrap_or_default()
        .to_string();
    let r = env.send(req("POST", "/ok/").body(vec![b'a'; 200 * 1024]));
    assert_error(&r, 500, "Middleware error");
    // A body that fits still works, on the same child.
    let e = upstream_saw(&env.send(req("POST", "/ok/").body(vec![b'b'; 8 * 1024])));
    assert_eq!(e.body_len, 8 * 1024, "{e:?}");
    assert_eq!(
        e.header("X-Plugin-Pid"),
        Some(pid.as_str()),
        "the child was replaced: {e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Start-up failures
// ---------------------------------------------------------------------------------------------

/// Runs the gateway on `conf` until it exits (killing it after [`STARTUP_TIMEOUT`]); returns its
/// exit status (`None` when it had to be killed) and its output.
fn run_to_exit(conf: &Path, dir: &Path) -> (Option<ExitStatus>, String) {
    let out_path: PathBuf = dir.join("gateway.out");
    let out = fs::File::create(&out_path)
        .unwrap_or_else(|e| panic!("create {}: {e}", out_path.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("clone {}: {e}", out_path.display()));
    let mut child = Command::new(pipegate_bin())
        .arg("--conf")
        .arg(conf)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the gateway: {e}"));
    let end = Instant::now() + STARTUP_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => panic!("waiting for the gateway: {e}"),
        }
    };
    (status, fs::read_to_string(&out_path).unwrap_or_default())
}

/// A pipe_command that cannot start, exits at once, or does not speak the protocol stops the
/// gateway at start with a non-zero exit and a message naming the command.
fn bad_pipe_command_fails_start_with_a_clear_error() {
    let missing = "/nonexistent/pipegate-test-no-such-plugin";
    // (argv, what the message must name, what it must say about the failure)
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec![missing, "--flag"], missing, "not found"),
        (
            vec!["python3", "-c", "import sys; sys.exit(7)"],
            "python3",
            "status 7",
        ),
        (
            vec!["echo", "this is not a plugin"],
            "echo this is not a plugin",
            "hello",
        ),
    ];
    for (argv, name, why) in cases {
        let sb = Sandbox::new("badcmd");
        sb.write_conf(&conf_with(json!({"coprocess_options": {
            "enable_coprocess": true,
            "pipe_command": argv,
        }})));
        sb.write_api(
            "api",
            &hooked_api(
                "api",
                "/api/",
                "http://127.0.0.1:9/",
                json!({"pre": [{"name": "X"}]}),
            ),
        );
        let (status, output) = run_to_exit(&sb.conf_path(), sb.dir());
        let status =
            status.unwrap_or_else(|| panic!("{argv:?}: the gateway kept running:\n{output}"));
        assert!(!status.success(), "{argv:?}: exit {status}:\n{output}");
        assert!(
            output.contains(name),
            "{argv:?}: the error must name the command {name:?}:\n{output}"
        );
        assert!(
            output.contains(why),
            "{argv:?}: the error must say {why:?}:\n{output}"
        );
        assert!(
            !output.contains("pipegate listening on"),
            "{argv:?}: the gateway listened without its plugin:\n{output}"
        );
        assert!(
            !output.contains("panicked"),
            "{argv:?}: the gateway panicked:\n{output}"
        );
    }
}

/// Sanity check of the scenario plugin's log (so the call-order assertions above can fail): with
/// plugins switched off (`enable_coprocess: false`) hooks are skipped, as in Tyk, and nothing is
/// dispatched.
fn plugins_off_skips_hooks(t: Transport) {
    let env = HookEnv::start(t, "off", json!({"enable_coprocess": false}), |up| {
        vec![(
            "api",
            hooked_api("api", "/api/", up, json!({"pre": [{"name": "AddHeaders"}]})),
        )]
    });
    let e = upstream_saw(&env.get("/api/"));
    assert!(e.header("X-Pre").is_none(), "{e:?}");
    assert!(env.calls().is_empty(), "{:?}", env.calls());
}

/// Tyk's events: an API whose `event_handlers.events.AuthFailure` names a `cp_dynamic_handler`
/// gets the event sent to the plugin (pipe `event` message / gRPC `DispatchEvent`) when a hook
/// refuses the request, with Tyk's payload shape; a request that passes fires nothing.
fn auth_failure_fires_the_cp_dynamic_handler_event(t: Transport) {
    let env = HookEnv::start(t, "events", json!({}), |up| {
        let mut api = protected_api(
            "ev",
            "/ev/",
            up,
            json!({ "auth_check": { "name": "Auth" } }),
        );
        api["event_handlers"] = json!({ "events": { "AuthFailure": [
            { "handler_name": "cp_dynamic_handler", "handler_meta": { "name": "OnAuthFailure" } }
        ] } });
        vec![("ev", api)]
    });
    let ok = env.send(req("GET", "/ev/fine").header("Authorization", "letmein"));
    assert_eq!(ok.status, 200, "{ok:?}");
    let denied = env.send(req("GET", "/ev/nope").header("Authorization", "wrong"));
    assert_error(&denied, 401, "bad key");
    let mut event = None;
    assert!(
        wait_until(IO_TIMEOUT, || {
            event = env
                .calls()
                .into_iter()
                .find_map(|l| l.strip_prefix("event ").map(str::to_string));
            event.is_some()
        }),
        "no event reached the plugin; calls: {:?}",
        env.calls()
    );
    let v: Value = serde_json::from_str(&event.unwrap_or_default()).expect("event payload is JSON");
    assert_eq!(v["handler_name"], "OnAuthFailure", "{v}");
    assert_eq!(v["message"]["Type"], "AuthFailure", "{v}");
    assert_eq!(v["message"]["Meta"]["Path"], "/ev/nope", "{v}");
    assert_eq!(v["message"]["Meta"]["Key"], "wrong", "{v}");
    assert_eq!(v["message"]["Meta"]["Message"], "bad key", "{v}");
    assert_eq!(v["spec"]["APIID"], "ev", "{v}");
    let events = env
        .calls()
        .iter()
        .filter(|l| l.starts_with("event "))
        .count();
    assert_eq!(events, 1, "exactly one event for one refused request");
}
