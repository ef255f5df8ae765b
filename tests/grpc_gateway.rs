//! The gateway's gRPC transport when the gRPC plugin server fails: the real `pipegate` binary, the
//! echo upstream and a real grpcio `coprocess.Dispatcher` server (`tests/plugins/scenarios_grpc.py`,
//! the scenarios of `scenarios.py` served over gRPC), over TCP and over a Unix socket. The hook
//! semantics themselves are the parametrised suite in `tests/hooks.rs`; this file is what only a
//! networked plugin server can do:
//! - the server is down when the gateway starts, then comes up;
//! - the server is killed mid-load and restarted;
//! - a hook call passes its deadline (and the deadline reaches the server);
//! - messages over `grpc_recv_max_size`, `grpc_send_max_size` or the server's own limit;
//! - replies proto3 allows and the pipe cannot express (an empty Object);
//! - `enable_grpc_fallback`: the pipe child is killed under load while a gRPC server serves the
//!   same hooks.
//!
//! What must hold is what a Tyk user sees (tyk-coprocess.md 2.5, 2.8): a failed hook call is a
//! clean Tyk error (500 "Middleware error", 403 "Key not authorised" for auth), the gateway never
//! crashes or hangs, the log says what went wrong, and service comes back by itself.
//!
//! Nothing asserts on timing; waits are generous (a busy two-core machine). Every test has its own
//! gateway, server (own port or socket), upstream and sandbox, so they run in parallel.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// How long to wait for the gateway to notice a change (a restart, a reconnect with backoff).
const RECOVERY_WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Where a test's gRPC server listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listen {
    Tcp,
    Unix,
}

impl Listen {
    /// A `--listen` value for a new server: any free TCP port, or `plugin.sock` in the sandbox.
    fn fresh(self, sb: &Sandbox) -> String {
        match self {
            Listen::Tcp => "tcp://127.0.0.1:0".to_string(),
            Listen::Unix => format!("unix://{}", sb.dir().join("plugin.sock").display()),
        }
    }

    /// An address where nothing listens yet (and a server can be started later).
    fn vacant(self, sb: &Sandbox) -> String {
        match self {
            Listen::Tcp => format!("tcp://{}", refused_addr()),
            Listen::Unix => self.fresh(sb),
        }
    }
}

/// A keyless API whose hooks go to the gRPC server (driver "grpc").
fn grpc_api(api_id: &str, listen_path: &str, target: &str, mw: Value) -> Value {
    let mut api = keyless_api(api_id, listen_path, target);
    let mut cm = json!({ "driver": "grpc" });
    merge(&mut cm, mw);
    api["custom_middleware"] = cm;
    api
}

/// [`grpc_api`] made a protected API with plugin auth.
fn protected_grpc_api(api_id: &str, listen_path: &str, target: &str, mw: Value) -> Value {
    let mut api = grpc_api(api_id, listen_path, target, mw);
    merge(
        &mut api,
        json!({ "use_keyless": false, "enable_coprocess_auth": true }),
    );
    api
}

/// A gateway in front of an echo upstream, with its gRPC server (started by the test, maybe
/// later). Fields drop in order: gateway, server, upstream, sandbox.
struct Env {
    gw: Gateway,
    server: Option<GrpcServer>,
    _echo: EchoUpstream,
    sb: Sandbox,
}

impl Env {
    /// Writes `coprocess_options` (plugins on, hook timeout 30 s, then `cp` merged over) and the
    /// APIs `apis(echo_url)`, then starts the gateway. `server` may be `None` (started later).
    fn start(
        sb: Sandbox,
        server: Option<GrpcServer>,
        cp: Value,
        apis: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
    ) -> Env {
        let echo = EchoUpstream::start();
        let mut options = json!({ "enable_coprocess": true, "hook_timeout_ms": 30000 });
        merge(&mut options, cp);
        sb.write_conf(&conf_with(json!({ "coprocess_options": options })));
        for (name, api) in apis(&format!("{}/", echo.url())) {
            sb.write_api(name, &api);
        }
        let gw = Gateway::start(&sb);
        Env {
            gw,
            server,
            _echo: echo,
            sb,
        }
    }

    fn get(&self, target: &str) -> Response {
        self.gw.get(target)
    }

    fn send(&self, r: Req) -> Response {
        self.gw.send(&r.close().to_bytes())
    }

    /// Lines the plugin(s) wrote to `<sandbox>/<name>` (SCENARIO_LOG).
    fn calls(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.sb.dir().join(name))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Waits until the gateway's log has a line with every one of `needles`; returns it.
    fn wait_log(&self, from: usize, needles: &[&str]) -> Option<String> {
        let mut found = None;
        wait_until(RECOVERY_WAIT, || {
            found = self.gw.log().lines()[from..]
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            found.is_some()
        });
        found
    }
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

/// Polls `target` until it answers 200 (or [`RECOVERY_WAIT`] passes) and returns the last answer.
fn wait_for_200(env: &Env, target: &str) -> Response {
    let mut last = None;
    wait_until(RECOVERY_WAIT, || {
        let r = env.get(target);
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    let r = last.unwrap_or_else(|| panic!("no request was sent to {target}"));
    assert_eq!(r.status, 200, "{target} did not recover: {r:?}");
    r
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// Tallies of a load run.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    clean_errors: AtomicUsize,
    bad: Mutex<Vec<String>>,
    bad_count: AtomicUsize,
}

impl Tally {
    /// Counts `o`; false when the connection should be replaced (a bad outcome).
    fn record(&self, o: &LoadOutcome) -> bool {
        match o {
            LoadOutcome::Ok => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            LoadOutcome::CleanError => {
                self.clean_errors.fetch_add(1, Ordering::Relaxed);
                true
            }
            LoadOutcome::Bad(why) => {
                self.bad_count.fetch_add(1, Ordering::Relaxed);
                let mut b = self.bad.lock().unwrap_or_else(|p| p.into_inner());
                if b.len() < 20 {
                    b.push(why.clone());
                }
                false
            }
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn clean_errors(&self) -> usize {
        self.clean_errors.load(Ordering::Relaxed)
    }

    fn report(&self) -> String {
        format!(
            "{} ok, {} clean 5xx, {} bad; first bad: {:#?}",
            self.ok(),
            self.clean_errors(),
            self.bad_count.load(Ordering::Relaxed),
            self.bad.lock().unwrap_or_else(|p| p.into_inner())
        )
    }
}

/// `threads` keep-alive clients sending `/echo/` requests until `stop` is set (and at least 50
/// each). After a clean error a client pauses briefly, so an outage is not a busy loop.
struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &Gateway, threads: usize) -> Load {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let addr = gw.addr();
        let handles = (0..threads)
            .map(|t| {
                let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) || i < 50 {
                        let o = echo_request(&mut c, &format!("k{t}x{i}"));
                        if !tally.record(&o) {
                            c = Client::connect(addr);
                        }
                        if matches!(o, LoadOutcome::CleanError) {
                            thread::sleep(Duration::from_millis(10));
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            tally,
            stop,
            handles,
        }
    }

    /// Waits until `n` more requests than now have succeeded; false if they did not in time.
    fn wait_ok(&self, n: usize) -> bool {
        let target = self.tally.ok() + n;
        wait_until(RECOVERY_WAIT, || self.tally.ok() >= target)
    }

    /// Stops the clients and returns the tally.
    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            assert!(h.join().is_ok(), "a client thread panicked");
        }
        self.tally
    }
}

/// The `/echo/` API (hook `Echo`, which sets X-Plugin-Token from X-Echo-Token after a short,
/// varying sleep) and the `/pid/` API (hook `Pid`: X-Plugin-Pid, the serving process).
fn echo_and_pid_apis(up: &str, driver: &str) -> Vec<(&'static str, Value)> {
    let mut echo = grpc_api("echo", "/echo/", up, json!({"pre": [{"name": "Echo"}]}));
    let mut pid = grpc_api("pid", "/pid/", up, json!({"pre": [{"name": "Pid"}]}));
    echo["custom_middleware"]["driver"] = json!(driver);
    pid["custom_middleware"]["driver"] = json!(driver);
    vec![("echo", echo), ("pid", pid)]
}

// ---------------------------------------------------------------------------------------------
// Server down at start
// ---------------------------------------------------------------------------------------------

#[test]
fn server_down_at_start_tcp() {
    server_down_at_start(Listen::Tcp);
}

#[test]
fn server_down_at_start_unix() {
    server_down_at_start(Listen::Unix);
}

/// Tyk 2.2 ("will attempt a connection on startup and keep reconnecting") and 2.5 (a failed
/// Dispatch is 500 "Middleware error", 403 "Key not authorised" for auth): the gateway starts
/// while nothing listens at `coprocess_grpc_server`, answers every hooked request with a clean
/// error, logs that the server is unreachable, naming it, and serves normally once the server
/// comes up, without a reload.
fn server_down_at_start(listen: Listen) {
    let sb = Sandbox::new("grpc-down");
    let address = listen.vacant(&sb);
    let log = sb.dir().join("calls.log");
    let mut env = Env::start(
        sb,
        None,
        json!({ "coprocess_grpc_server": address }),
        |up| {
            vec![
                (
                    "pre",
                    grpc_api("pre", "/pre/", up, json!({"pre": [{"name": "AddHeaders"}]})),
                ),
                (
                    "auth",
                    protected_grpc_api(
                        "auth",
                        "/auth/",
                        up,
                        json!({"auth_check": {"name": "Auth"}}),
                    ),
                ),
                (
                    "resp",
                    grpc_api(
                        "resp",
                        "/resp/",
                        up,
                        json!({"response": [{"name": "Resp"}]}),
                    ),
                ),
            ]
        },
    );
    for _ in 0..5 {
        assert_error(&env.get("/pre/"), 500, "Middleware error");
    }
    assert_error(
        &env.send(req("GET", "/auth/").header("Authorization", "letmein")),
        403,
        "Key not authorised",
    );
    assert_error(&env.get("/resp/"), 500, "Middleware error");
    // The log names the server and says it cannot be reached.
    let shown = address.trim_start_matches("tcp://");
    assert!(
        env.wait_log(0, &["gRPC plugin server", shown, "cannot connect"])
            .is_some(),
        "no log line says {shown} cannot be reached:\n{}",
        env.gw.log().text()
    );

    // The server comes up at that address: the gateway reconnects by itself.
    env.server = Some(GrpcServer::start(&address, &log, &[]));
    let e = upstream_saw(&wait_for_200(&env, "/pre/"));
    assert_eq!(e.header("X-Pre"), Some("1"), "{e:?}");
    let e = upstream_saw(&env.send(req("GET", "/auth/in").header("Authorization", "letmein")));
    assert_eq!(e.path, "/in", "{e:?}");
    let r = env.get("/resp/");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("X-Resp"), Some("1"), "{r:?}");
    assert!(
        env.gw.wait_exit(Duration::ZERO).is_none(),
        "the gateway exited"
    );
}

// ---------------------------------------------------------------------------------------------
// Server killed mid-load and restarted
// ---------------------------------------------------------------------------------------------

#[test]
fn server_killed_mid_load_and_restarted_tcp() {
    server_killed_mid_load_and_restarted(Listen::Tcp);
}

#[test]
fn server_killed_mid_load_and_restarted_unix() {
    server_killed_mid_load_and_restarted(Listen::Unix);
}

/// 8 keep-alive clients load a gRPC hook; the server is SIGKILLed (calls in flight die with it),
/// stays down a while, and is started again on the same address. Every request gets an answer:
/// 200 with its own data, or a clean 500 "Middleware error" while the server is down (there must
/// be some: the outage is seen, not hidden or hung). The gateway stays up, reconnects by itself,
/// and afterwards every request succeeds.
fn server_killed_mid_load_and_restarted(listen: Listen) {
    const THREADS: usize = 8;
    let sb = Sandbox::new("grpc-kill");
    let log = sb.dir().join("calls.log");
    let server = GrpcServer::start(&listen.fresh(&sb), &log, &[]);
    let address = server.target.clone();
    let mut env = Env::start(
        sb,
        Some(server),
        json!({ "coprocess_grpc_server": address }),
        |up| echo_and_pid_apis(up, "grpc"),
    );
    let load = Load::start(&env.gw, THREADS);
    assert!(
        load.wait_ok(200),
        "no load got through: {}",
        load.tally.report()
    );

    if let Some(s) = env.server.as_mut() {
        s.kill();
    }
    let errors_before = load.tally.clean_errors();
    assert!(
        wait_until(RECOVERY_WAIT, || load.tally.clean_errors() > errors_before),
        "no request failed while the server was down: {}",
        load.tally.report()
    );
    env.server = Some(GrpcServer::start(&address, &log, &[]));
    assert!(
        load.wait_ok(200),
        "the load did not recover after the restart: {}",
        load.tally.report()
    );
    let tally = load.finish();
    eprintln!(
        "load while the gRPC server was killed and restarted: {}",
        tally.report()
    );
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

    // Back to normal: everything succeeds, on the new server.
    let mut c = env.gw.client();
    for i in 0..100 {
        match echo_request(&mut c, &format!("after{i}")) {
            LoadOutcome::Ok => {}
            LoadOutcome::CleanError => panic!("request {i} after the restart failed"),
            LoadOutcome::Bad(why) => panic!("request {i} after the restart: {why}"),
        }
    }
    let pid = env.server.as_ref().map(GrpcServer::pid).unwrap_or_default();
    let e = upstream_saw(&env.get("/pid/"));
    assert_eq!(
        e.header("X-Plugin-Pid"),
        Some(pid.to_string().as_str()),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------------------

/// A hook call that passes its deadline (`hook_timeout_ms`, or the hook's own `timeout_ms`) is
/// answered 500 "Middleware error" (403 "Key not authorised" for auth) and logged as a timeout;
/// the deadline is sent to the server (`grpc-timeout`: the server sees at most the hook's
/// timeout left); hung calls hold only their own HTTP/2 streams, so other calls on the same
/// connection are served meanwhile; and a slow server is not taken for a dead one.
#[test]
fn deadline_exceeded_is_a_clean_error_and_other_calls_go_on() {
    let sb = Sandbox::new("grpc-deadline");
    let log = sb.dir().join("calls.log");
    let server = GrpcServer::start(&Listen::Tcp.fresh(&sb), &log, &[]);
    let address = server.target.clone();
    let env = Env::start(
        sb,
        Some(server),
        json!({ "coprocess_grpc_server": address, "hook_timeout_ms": 3000 }),
        |up| {
            vec![
                (
                    "slow",
                    grpc_api("slow", "/slow/", up, json!({"pre": [{"name": "Slow"}]})),
                ),
                (
                    "slowhook",
                    grpc_api(
                        "slowhook",
                        "/slowhook/",
                        up,
                        json!({"pre": [{"name": "Slow", "timeout_ms": 500}]}),
                    ),
                ),
                (
                    "slowauth",
                    protected_grpc_api(
                        "slowauth",
                        "/slowauth/",
                        up,
                        json!({"auth_check": {"name": "Slow"}}),
                    ),
                ),
                (
                    "fast",
                    grpc_api(
                        "fast",
                        "/fast/",
                        up,
                        json!({"pre": [{"name": "AddHeaders"}]}),
                    ),
                ),
                (
                    "deadline",
                    grpc_api(
                        "deadline",
                        "/deadline/",
                        up,
                        json!({"pre": [{"name": "Deadline"}]}),
                    ),
                ),
                (
                    "deadlinelong",
                    grpc_api(
                        "deadlinelong",
                        "/deadlinelong/",
                        up,
                        json!({"pre": [{"name": "Deadline", "timeout_ms": 20000}]}),
                    ),
                ),
            ]
        },
    );

    // The deadline reaches the server: at most the hook's timeout (plus rounding) is left.
    let left = |target: &str| -> u64 {
        let e = upstream_saw(&env.get(target));
        let v = e
            .header("X-Deadline-Left-Ms")
            .unwrap_or("missing")
            .to_string();
        v.parse()
            .unwrap_or_else(|_| panic!("{target}: the server saw no deadline ({v}): {e:?}"))
    };
    let short = left("/deadline/");
    assert!(
        short > 0 && short <= 4000,
        "hook_timeout_ms 3000, server saw {short} ms"
    );
    let long = left("/deadlinelong/");
    assert!(
        long > 3000 && long <= 21000,
        "timeout_ms 20000 on the hook, server saw {long} ms"
    );

    // Six calls hang on the server (30 s each) while other calls are served.
    let mark = env.gw.log().mark();
    let addr = env.gw.addr();
    let hung: Vec<_> = (0..6)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.request(&req("GET", "/slow/?sleep=30").close().to_bytes())
            })
        })
        .collect();
    assert!(
        wait_until(RECOVERY_WAIT, || env
            .calls("calls.log")
            .iter()
            .filter(|l| l.as_str() == "Pre Slow")
            .count()
            >= 6),
        "the server did not receive the slow calls: {:?}",
        env.calls("calls.log")
    );
    for _ in 0..10 {
        let e = upstream_saw(&env.get("/fast/"));
        assert_eq!(e.header("X-Pre"), Some("1"), "{e:?}");
    }
    for h in hung {
        let r = h
            .join()
            .unwrap_or_else(|_| panic!("a client thread panicked"));
        assert_error(&r, 500, "Middleware error");
    }
    assert!(
        env.wait_log(mark, &["plugin call timed out"]).is_some(),
        "the timeouts were not logged as such:\n{}",
        env.gw.log().text()
    );

    assert_error(&env.get("/slowhook/?sleep=30"), 500, "Middleware error");
    assert_error(&env.get("/slowauth/?sleep=30"), 403, "Key not authorised");
    for _ in 0..5 {
        let e = upstream_saw(&env.get("/fast/"));
        assert_eq!(e.header("X-Pre"), Some("1"), "{e:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Message sizes
// ---------------------------------------------------------------------------------------------

/// A reply over `grpc_recv_max_size` (1 MiB here) is 500 "Middleware error" with a log line
/// naming the setting to raise; the gateway and the connection go on (a reply under the limit
/// right after works). Tyk 6.2: grpc-go's "received message larger than max" is the classic
/// symptom; pipegate answers the one request instead of failing more.
#[test]
fn reply_over_grpc_recv_max_size_is_a_clear_500() {
    let sb = Sandbox::new("grpc-recvmax");
    let log = sb.dir().join("calls.log");
    let server = GrpcServer::start(&Listen::Tcp.fresh(&sb), &log, &[]);
    let address = server.target.clone();
    let mut env = Env::start(
        sb,
        Some(server),
        json!({ "coprocess_grpc_server": address, "grpc_recv_max_size": 1 << 20 }),
        |up| {
            vec![
                (
                    "big",
                    grpc_api("big", "/big/", up, json!({"pre": [{"name": "BigReply"}]})),
                ),
                (
                    "bigauth",
                    protected_grpc_api(
                        "bigauth",
                        "/bigauth/",
                        up,
                        json!({"auth_check": {"name": "BigReply"}}),
                    ),
                ),
            ]
        },
    );
    let mark = env.gw.log().mark();
    assert_error(
        &env.get(&format!("/big/?bytes={}", 2 << 20)),
        500,
        "Middleware error",
    );
    let line = env.wait_log(mark, &["grpc_recv_max_size"]);
    assert!(
        line.is_some(),
        "the log does not name grpc_recv_max_size:\n{}",
        env.gw.log().text()
    );
    assert_error(
        &env.get(&format!("/bigauth/?bytes={}", 2 << 20)),
        403,
        "Key not authorised",
    );
    // Under the limit: the new body reaches the upstream.
    let e = upstream_saw(&env.get("/big/?bytes=1000"));
    assert_eq!(e.body_len, 1000, "{e:?}");
    assert!(
        env.gw.wait_exit(Duration::ZERO).is_none(),
        "the gateway exited"
    );
}

/// A request over `grpc_send_max_size` is refused before it is sent (500, log naming the
/// setting); a reply over the default receive limit (4 MiB, gRPC's default, as in Tyk with
/// `grpc_recv_max_size` 0) is refused too; and bodies under both limits pass intact.
#[test]
fn request_over_grpc_send_max_size_and_reply_over_default_limit_are_clear_500s() {
    let sb = Sandbox::new("grpc-sendmax");
    let log = sb.dir().join("calls.log");
    let server = GrpcServer::start(&Listen::Tcp.fresh(&sb), &log, &[]);
    let address = server.target.clone();
    let env = Env::start(
        sb,
        Some(server),
        json!({ "coprocess_grpc_server": address, "grpc_send_max_size": 256 * 1024 }),
        |up| {
            vec![
                (
                    "noop",
                    grpc_api("noop", "/noop/", up, json!({"pre": [{"name": "Noop"}]})),
                ),
                (
                    "big",
                    grpc_api("big", "/big/", up, json!({"pre": [{"name": "BigReply"}]})),
                ),
            ]
        },
    );
    let mark = env.gw.log().mark();
    let r = env.send(req("POST", "/noop/").body(pattern(512 * 1024)));
    assert_error(&r, 500, "Middleware error");
    assert!(
        env.wait_log(mark, &["grpc_send_max_size"]).is_some(),
        "the log does not name grpc_send_max_size:\n{}",
        env.gw.log().text()
    );
    assert!(
        !env.calls("calls.log").iter().any(|l| l == "Pre Noop"),
        "a request over grpc_send_max_size reached the server"
    );
    let body = pattern(64 * 1024);
    let e = upstream_saw(&env.send(req("POST", "/noop/").body(body.clone())));
    assert_eq!(e.body_len, body.len() as u64, "{e:?}");

    let mark = env.gw.log().mark();
    assert_error(
        &env.get(&format!("/big/?bytes={}", 5 << 20)),
        500,
        "Middleware error",
    );
    assert!(
        env.wait_log(mark, &["grpc_recv_max_size"]).is_some(),
        "the log does not name grpc_recv_max_size:\n{}",
        env.gw.log().text()
    );
    let e = upstream_saw(&env.get(&format!("/big/?bytes={}", 3 << 20)));
    assert_eq!(e.body_len, 3 << 20, "{e:?}");
}

/// A request over the *server's* receive limit (the server refuses it with RESOURCE_EXHAUSTED)
/// is 500 "Middleware error", with the server's status in the log; the server and the gateway go
/// on serving smaller requests.
#[test]
fn request_over_the_servers_limit_is_a_clear_500() {
    let sb = Sandbox::new("grpc-servermax");
    let log = sb.dir().join("calls.log");
    let server = GrpcServer::start(&Listen::Unix.fresh(&sb), &log, &["--max-message", "262144"]);
    let address = server.target.clone();
    let env = Env::start(
        sb,
        Some(server),
        json!({ "coprocess_grpc_server": address }),
        |up| {
            vec![(
                "noop",
                grpc_api("noop", "/noop/", up, json!({"pre": [{"name": "Noop"}]})),
            )]
        },
    );
    let mark = env.gw.log().mark();
    let r = env.send(req("POST", "/noop/").body(pattern(512 * 1024)));
    assert_error(&r, 500, "Middleware error");
    assert!(
        env.wait_log(mark, &["ResourceExhausted"]).is_some(),
        "the log does not report the server's RESOURCE_EXHAUSTED:\n{}",
        env.gw.log().text()
    );
    let body = pattern(64 * 1024);
    let e = upstream_saw(&env.send(req("POST", "/noop/").body(body.clone())));
    assert_eq!(e.body_len, body.len() as u64, "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// proto3 replies the pipe cannot express
// ---------------------------------------------------------------------------------------------

/// Replies proto3 allows that a pipe plugin cannot send the same way.
///
/// An empty Object (no `request`, `session` or `response`: proto3's only "absent"): Tyk
/// dereferences the missing request and panics (tyk-coprocess.md 2.5, inference); pipegate
/// treats a missing message as "no change" (response_code 0), so a pre hook lets the request
/// through unchanged, body included, and an auth hook without a session is 403 "Forbidden", as
/// for any auth reply without a session (2.6).
///
/// A new Object carrying only the change (`request.set_headers`), i.e. a server that does not
/// echo: proto3 cannot leave `url` out, so it comes back "", which Tyk's url.ParseRequestURI
/// refuses: 500 "Middleware error" (2.5 step 4). The same reply over the pipe, where absent means
/// unchanged, would just set the header.
#[test]
fn proto3_empty_and_fresh_objects_follow_tyk() {
    let sb = Sandbox::new("grpc-empty");
    let log = sb.dir().join("calls.log");
    let server = GrpcServer::start(&Listen::Tcp.fresh(&sb), &log, &[]);
    let address = server.target.clone();
    let env = Env::start(
        sb,
        Some(server),
        json!({ "coprocess_grpc_server": address }),
        |up| {
            vec![
                (
                    "empty",
                    grpc_api(
                        "empty",
                        "/empty/",
                        up,
                        json!({"pre": [{"name": "EmptyObject"}]}),
                    ),
                ),
                (
                    "emptyauth",
                    protected_grpc_api(
                        "emptyauth",
                        "/emptyauth/",
                        up,
                        json!({"auth_check": {"name": "EmptyObject"}}),
                    ),
                ),
                (
                    "fresh",
                    grpc_api(
                        "fresh",
                        "/fresh/",
                        up,
                        json!({"pre": [{"name": "FreshObject"}]}),
                    ),
                ),
            ]
        },
    );
    let e = upstream_saw(
        &env.send(
            req("PUT", "/empty/p?b=2&a=1")
                .header("X-Client", "c")
                .body("kept body"),
        ),
    );
    assert_eq!(e.method, "PUT", "{e:?}");
    assert_eq!(e.path, "/p", "{e:?}");
    assert_eq!(e.query, "b=2&a=1", "{e:?}");
    assert_eq!(e.header("X-Client"), Some("c"), "{e:?}");
    assert_eq!(e.body.as_deref(), Some("kept body"), "{e:?}");
    assert_error(
        &env.send(req("GET", "/emptyauth/").header("Authorization", "letmein")),
        403,
        "Forbidden",
    );
    assert_error(
        &env.send(req("POST", "/fresh/x").body("body")),
        500,
        "Middleware error",
    );
    assert_eq!(
        env.calls("calls.log"),
        [
            "Pre EmptyObject",
            "CustomKeyCheck EmptyObject",
            "Pre FreshObject"
        ]
    );
    // The 500 comes from the fresh object's empty url (Tyk: ParseRequestURI fails), not from a
    // failed call.
    assert!(
        env.gw
            .log()
            .text()
            .contains("plugin returned an invalid url"),
        "{}",
        env.gw.log().text()
    );
}

// ---------------------------------------------------------------------------------------------
// Fallback from the pipe child to the gRPC server
// ---------------------------------------------------------------------------------------------

/// The pid in the last "[scenarios:<pid>] plugin ready" log line after line `from`, waiting for
/// one.
fn wait_child_ready(gw: &Gateway, from: usize) -> u32 {
    let line = gw
        .log()
        .wait_for(from, "plugin ready", RECOVERY_WAIT)
        .unwrap_or_else(|| panic!("the plugin child was not (re)started:\n{}", gw.log().text()));
    line.split_once("[scenarios:")
        .and_then(|(_, rest)| rest.split(']').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in the ready line {line:?}"))
}

/// Sends SIGKILL to the plugin child the gateway started for this test.
fn kill_pid(pid: u32) {
    let pid = libc::pid_t::try_from(pid).unwrap_or_else(|_| panic!("pid {pid} does not fit pid_t"));
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the plugin child the gateway
    // reported as running a moment ago (it is its parent and has not reaped it yet).
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill({pid}): {}", std::io::Error::last_os_error());
}

/// `enable_grpc_fallback` with a pipe child and a gRPC server serving the same scenarios: the
/// child is SIGKILLed twice while 8 clients load a pipe-driver hook. Every request is a 200 with
/// its own data (calls in flight with the dead child are re-sent over gRPC, and new calls go to
/// gRPC until the child is back); the gRPC server did serve some of them; and once the new child
/// is ready the hooks return to it.
#[test]
fn fallback_serves_every_request_while_the_pipe_child_restarts() {
    const THREADS: usize = 8;
    let sb = Sandbox::new("grpc-fallback");
    let server = GrpcServer::start(
        &Listen::Tcp.fresh(&sb),
        &sb.dir().join("grpc_calls.log"),
        &[],
    );
    let address = server.target.clone();
    let grpc_pid = server.pid();
    let pipe_log = sb.dir().join("pipe_calls.log");
    let env = Env::start(
        sb,
        Some(server),
        json!({
            "coprocess_grpc_server": address,
            "enable_grpc_fallback": true,
            "pipe_command": ["python3", plugin_script("scenarios.py")],
            "pipe_env": { "SCENARIO_LOG": pipe_log.to_string_lossy() },
        }),
        |up| echo_and_pid_apis(up, "python"),
    );
    let mut child = wait_child_ready(&env.gw, 0);
    // While the child is healthy, the pipe serves.
    let e = upstream_saw(&wait_for_200(&env, "/pid/"));
    assert_eq!(
        e.header("X-Plugin-Pid"),
        Some(child.to_string().as_str()),
        "with a healthy child the pipe must serve: {e:?}"
    );
    assert!(
        env.calls("grpc_calls.log").is_empty(),
        "the gRPC server was called while the child was healthy: {:?}",
        env.calls("grpc_calls.log")
    );

    let load = Load::start(&env.gw, THREADS);
    assert!(
        load.wait_ok(200),
        "no load got through: {}",
        load.tally.report()
    );
    for round in 0..2 {
        let mark = env.gw.log().mark();
        kill_pid(child);
        let next = wait_child_ready(&env.gw, mark);
        assert_ne!(next, child, "round {round}: the child was not replaced");
        child = next;
        assert!(
            load.wait_ok(200),
            "round {round}: the load stalled: {}",
            load.tally.report()
        );
    }
    let tally = load.finish();
    eprintln!(
        "load while the pipe child was killed twice: {}",
        tally.report()
    );
    assert_eq!(
        tally.clean_errors() + tally.bad_count.load(Ordering::Relaxed),
        0,
        "with the fallback every request must succeed: {}",
        tally.report()
    );
    let served = env
        .calls("grpc_calls.log")
        .iter()
        .filter(|l| l.as_str() == "Pre Echo")
        .count();
    assert!(
        served > 0,
        "the gRPC server served no hook while the child was down"
    );

    // The hooks return to the new child once it is healthy.
    let mut last = None;
    let back = wait_until(RECOVERY_WAIT, || {
        let r = env.get("/pid/");
        let on_pipe = r.status == 200
            && r.echoed().header("X-Plugin-Pid") == Some(child.to_string().as_str());
        last = Some(r);
        on_pipe
    });
    let r = last.unwrap_or_else(|| panic!("no request was sent"));
    assert!(
        back,
        "the hooks did not return to the new child {child} (gRPC server is {grpc_pid}): {r:?}"
    );
    let mut c = env.gw.client();
    for i in 0..50 {
        match echo_request(&mut c, &format!("after{i}")) {
            LoadOutcome::Ok => {}
            LoadOutcome::CleanError => panic!("request {i} after the restarts failed"),
            LoadOutcome::Bad(why) => panic!("request {i} after the restarts: {why}"),
        }
    }
}
