//! `pipegate plugin-bench`: a load generator for a plugin author's own plugin.
//!
//! It drives the plugin exactly as the gateway does — the same transport clients
//! ([`PipeClient`] for a pipe child, [`GrpcClient`] for a `coprocess.Dispatcher` server), the
//! same hook objects (built by the chain's own [`RequestView::mini_request`] from a parsed
//! request) and the same deadlines — with no HTTP in front, so the figures are the plugin's cost
//! plus the transport's, nothing else. It keeps `concurrency` calls in flight from one event loop
//! (as one gateway worker would), records each call's latency from dispatch to reply, and prints
//! throughput and percentiles.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use serde_bytes::ByteBuf;

use crate::coprocess::grpc::{GrpcClient, GrpcOptions};
use crate::coprocess::object::{HookType, Object, PairMap, ResponseObject, SessionState};
use crate::coprocess::pipe::{PipeClient, PipeOptions, WorkerHandle};
use crate::coprocess::{CallError, HookReply};
use crate::http::{parse_request, RequestHead};
use crate::middleware::chain::RequestView;

/// Where the plugin under test runs.
#[derive(Debug, Clone)]
pub enum BenchTarget {
    /// A pipe child started from this shell command line (run with `sh -c "exec ..."`, so quoting
    /// and environment assignments work as in a shell).
    Pipe(String),
    /// A gRPC `coprocess.Dispatcher` server (`tcp://host:port`, `unix:///path`, `host:port`).
    Grpc(String),
}

/// What to run and how hard.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The plugin.
    pub target: BenchTarget,
    /// The hook type sent (`pre`, `auth_check`, `post_key_auth`, `post`, `response`).
    pub hook: HookType,
    /// The hook name (the function the plugin runs for this hook, as in `custom_middleware`).
    pub name: String,
    /// Calls kept in flight at once.
    pub concurrency: usize,
    /// Calls measured (after the warm-up).
    pub requests: u64,
    /// Calls made first and not measured (JIT, caches, first-call imports).
    pub warmup: u64,
    /// Request body size in bytes (a JSON-ish payload).
    pub body_bytes: usize,
    /// Per-call deadline, as `hook_timeout_ms` in the gateway.
    pub timeout: Duration,
    /// Extra request headers (`Name: value`).
    pub headers: Vec<(String, String)>,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

/// The measured outcome.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// What ran, for the header line.
    pub target: String,
    /// Hook type and name.
    pub hook: String,
    /// Calls in flight.
    pub concurrency: usize,
    /// Calls answered with an object.
    pub ok: u64,
    /// Calls that failed, by reason (timeout, plugin error, ...), with the first message seen.
    pub errors: Vec<(String, u64, String)>,
    /// Wall time of the measured part.
    pub elapsed: Duration,
    /// Latencies of successful calls in nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
    /// Child restarts seen during the run (pipe only).
    pub restarts: u64,
}

impl BenchReport {
    /// Successful calls per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The `q`-quantile (0.0..=1.0) of successful-call latency; zero when nothing succeeded.
    pub fn percentile(&self, q: f64) -> Duration {
        if self.latencies_ns.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * (self.latencies_ns.len() - 1) as f64).round() as usize;
        Duration::from_nanos(self.latencies_ns[rank.min(self.latencies_ns.len() - 1)])
    }

    /// Total failed calls.
    pub fn failed(&self) -> u64 {
        self.errors.iter().map(|e| e.1).sum()
    }

    /// One JSON object with every figure (microseconds), for scripts and CI dashboards.
    pub fn to_json(&self) -> serde_json::Value {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        serde_json::json!({
            "target": self.target,
            "hook": self.hook,
            "concurrency": self.concurrency,
            "ok": self.ok,
            "failed": self.failed(),
            "errors": self.errors.iter().map(|(k, n, first)| serde_json::json!({"kind": k, "count": n, "first": first})).collect::<Vec<_>>(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput_per_s": self.throughput(),
            "latency_us": {
                "p50": us(self.percentile(0.50)),
                "p90": us(self.percentile(0.90)),
                "p99": us(self.percentile(0.99)),
                "p999": us(self.percentile(0.999)),
                "max": us(self.percentile(1.0)),
            },
            "restarts": self.restarts,
        })
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        writeln!(f, "plugin:      {}", self.target)?;
        writeln!(f, "hook:        {}", self.hook)?;
        writeln!(
            f,
            "calls:       {} ok, {} failed, {} in flight, {:.2} s",
            self.ok,
            self.failed(),
            self.concurrency,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "throughput:  {:.0} calls/s", self.throughput())?;
        writeln!(
            f,
            "latency µs:  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            us(self.percentile(0.50)),
            us(self.percentile(0.90)),
            us(self.percentile(0.99)),
            us(self.percentile(0.999)),
            us(self.percentile(1.0)),
        )?;
        if self.restarts > 0 {
            writeln!(
                f,
                "restarts:    {} (the child died during the run)",
                self.restarts
            )?;
        }
        for (kind, n, first) in &self.errors {
            writeln!(f, "errors:      {n} × {kind} (first: {first})")?;
        }
        Ok(())
    }
}

/// Parses a hook type as written in `custom_middleware` sections and Tyk's docs.
pub fn parse_hook(s: &str) -> Result<HookType, String> {
    match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "pre" => Ok(HookType::Pre),
        "post" => Ok(HookType::Post),
        "post_key_auth" | "postkeyauth" => Ok(HookType::PostKeyAuth),
        "auth_check" | "auth" | "customkeycheck" => Ok(HookType::CustomKeyCheck),
        "response" => Ok(HookType::Response),
        other => Err(format!(
            "unknown hook {other:?}; use pre, auth_check, post_key_auth, post or response"
        )),
    }
}

/// Either transport, behind the two calls the bench needs.
enum Driver {
    Pipe(Arc<PipeClient>),
    Grpc(Arc<GrpcClient>),
}

impl Driver {
    fn register(&self, waker: Arc<Waker>) -> WorkerHandle {
        match self {
            Driver::Pipe(c) => c.register_worker(waker),
            Driver::Grpc(c) => c.register_worker(waker),
        }
    }

    fn dispatch(&self, worker: usize, tag: u64, deadline: Instant, obj: &Object) {
        match self {
            Driver::Pipe(c) => c.dispatch(worker, tag, deadline, obj),
            Driver::Grpc(c) => c.dispatch(worker, tag, deadline, obj),
        };
    }

    fn healthy(&self) -> bool {
        match self {
            Driver::Pipe(c) => c.is_healthy(),
            Driver::Grpc(c) => c.is_healthy(),
        }
    }

    fn restarts(&self) -> u64 {
        match self {
            Driver::Pipe(c) => c.restarts(),
            Driver::Grpc(_) => 0,
        }
    }

    fn shutdown(&self) {
        match self {
            Driver::Pipe(c) => c.shutdown(Duration::from_secs(2)),
            Driver::Grpc(c) => c.shutdown(),
        }
    }
}

/// The request every call carries: a realistic API call (a dozen headers, a bearer token, a JSON
/// body of `body_bytes`). Public so the criterion benches (`benches/pipe.rs`) measure the same
/// request and hook object as this command, instead of a second fixture drifting from it.
pub fn sample_request(opts: &BenchOptions) -> Result<Vec<u8>, String> {
    let mut raw = String::with_capacity(1024 + opts.body_bytes);
    raw.push_str("POST /bench/orders/12345?expand=items HTTP/1.1\r\n");
    for (k, v) in [
        ("Host", "api.example.com"),
        ("User-Agent", "pipegate-plugin-bench/1"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"),
        ("X-Request-Id", "7f9c2ba4-e88f-11ee-a5d2-0242ac120002"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Cookie", "session=abcdef0123456789; theme=dark"),
        ("Accept-Language", "en-US,en;q=0.9"),
        ("Cache-Control", "no-cache"),
    ] {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    for (k, v) in &opts.headers {
        if k.is_empty() || k.contains([':', '\r', '\n']) || v.contains(['\r', '\n']) {
            return Err(format!(
                "--header {k:?}: expected \"Name: value\" without line breaks"
            ));
        }
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n", opts.body_bytes));
    let mut bytes = raw.into_bytes();
    let mut body = Vec::with_capacity(opts.body_bytes);
    let filler = br#"{"id":12345,"items":[{"sku":"A-1","qty":2}],"note":"#;
    while body.len() < opts.body_bytes {
        let take = (opts.body_bytes - body.len()).min(filler.len());
        body.extend_from_slice(&filler[..take]);
    }
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Builds the hook object the gateway would send for the sample request.
pub fn sample_object(opts: &BenchOptions) -> Result<Object, String> {
    let raw = sample_request(opts)?;
    let mut head = RequestHead::default();
    match parse_request(&raw, &mut head, 64 << 10) {
        Ok(true) => {}
        Ok(false) => return Err("sample request is incomplete (internal error)".into()),
        Err(e) => return Err(format!("sample request does not parse: {e:?}")),
    }
    let body = &raw[head.head_len..];
    let view = RequestView {
        buf: &raw,
        head: &head,
        edits: None,
        body,
        scheme: "http",
    };
    let mut spec = PairMap::new();
    spec.push("OrgID", "bench-org".to_string());
    spec.push("APIID", "bench-api".to_string());
    spec.push("config_data", "{}".to_string());
    let session = match opts.hook {
        HookType::Pre | HookType::CustomKeyCheck => None,
        _ => Some(Box::new(SessionState {
            rate: Some(100.0),
            per: Some(1.0),
            quota_max: Some(-1),
            org_id: Some("bench-org".into()),
            ..Default::default()
        })),
    };
    let response = (opts.hook == HookType::Response).then(|| {
        let mut headers = PairMap::new();
        headers.push("Content-Type", "application/json".to_string());
        headers.push("Content-Length", "27".to_string());
        ResponseObject {
            status_code: Some(200),
            raw_body: Some(ByteBuf::from(b"{\"id\":12345,\"status\":\"ok\"}".to_vec())),
            headers: Some(headers),
            ..Default::default()
        }
    });
    Ok(Object {
        hook_type: Some(opts.hook),
        hook_name: Some(opts.name.clone()),
        request: Some(view.mini_request(true, false)),
        session,
        metadata: Some(PairMap::new()),
        spec: Some(spec),
        response,
    })
}

fn error_kind(e: &CallError) -> &'static str {
    match e {
        CallError::Timeout => "timeout",
        CallError::ChildDied => "child died",
        CallError::PluginError(_) => "plugin error",
        CallError::Protocol(_) => "protocol error",
        CallError::Unavailable => "unavailable",
    }
}

fn start_driver(target: &BenchTarget) -> Result<Driver, String> {
    match target {
        BenchTarget::Pipe(cmd) => {
            if cmd.trim().is_empty() {
                return Err("--command is empty; give the plugin's command line, e.g. --command \"python3 my_plugin.py\"".into());
            }
            let mut o = PipeOptions::new(vec!["sh".into(), "-c".into(), format!("exec {cmd}")]);
            o.name = "bench".into();
            PipeClient::start(o)
                .map(Driver::Pipe)
                .map_err(|e| format!("cannot start the plugin: {e}"))
        }
        BenchTarget::Grpc(addr) => GrpcClient::start(GrpcOptions::new(addr.clone()))
            .map(Driver::Grpc)
            .map_err(|e| format!("cannot use the gRPC server: {e}")),
    }
}

/// Runs the benchmark: starts the plugin (or connects), waits until it is ready, warms up, then
/// measures. Errors say why the plugin could not be driven at all; per-call failures are counted
/// in the report instead.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, String> {
    if opts.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if opts.requests == 0 {
        return Err("--requests must be at least 1".into());
    }
    let obj = sample_object(opts)?;
    let driver = start_driver(&opts.target)?;
    let result = drive(&driver, opts, &obj);
    driver.shutdown();
    result
}

fn drive(driver: &Driver, opts: &BenchOptions, obj: &Object) -> Result<BenchReport, String> {
    let mut poll = Poll::new().map_err(|e| format!("cannot create a poller: {e}"))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), Token(0)).map_err(|e| format!("cannot create a waker: {e}"))?,
    );
    let handle = driver.register(waker);
    let mut events = Events::with_capacity(8);

    // A gRPC channel connects lazily and a child may still be starting: wait until the transport
    // says it is up (the pipe client is up after its handshake), then make one probe call.
    let ready_by = Instant::now() + Duration::from_secs(10);
    while !driver.healthy() {
        if matches!(driver, Driver::Grpc(_)) {
            // gRPC health is learnt from answered calls: send a probe to get it connected.
            driver.dispatch(handle.id, u64::MAX, Instant::now() + opts.timeout, obj);
            let _ = poll.poll(&mut events, Some(Duration::from_millis(200)));
            while handle.replies.try_recv().is_ok() {}
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
        if Instant::now() > ready_by {
            return Err(match &opts.target {
                BenchTarget::Pipe(c) => format!("the plugin {c:?} did not become ready within 10 s; run it by hand to see its errors"),
                BenchTarget::Grpc(a) => format!("the gRPC server at {a} is not reachable; check the address and that it is running"),
            });
        }
    }

    let total = opts.warmup + opts.requests;
    let mut started: Vec<Instant> = vec![Instant::now(); opts.concurrency];
    let mut sent = 0u64;
    let mut done = 0u64;
    let mut ok = 0u64;
    let mut latencies: Vec<u64> = Vec::with_capacity(opts.requests as usize);
    let mut errors: Vec<(String, u64, String)> = Vec::new();
    let mut measure_start = Instant::now();
    let restarts_before = driver.restarts();
    let show_bar = opts.progress && std::io::stderr().is_terminal();
    let mut bar = ProgressBar::new(opts.requests, show_bar);

    let send = |slot: usize, sent: &mut u64, started: &mut [Instant]| {
        let now = Instant::now();
        started[slot] = now;
        driver.dispatch(handle.id, slot as u64, now + opts.timeout, obj);
        *sent += 1;
    };
    for slot in 0..opts.concurrency.min(total as usize) {
        send(slot, &mut sent, &mut started);
    }
    if opts.warmup == 0 {
        measure_start = Instant::now();
    }
    while done < total {
        let mut got_any = false;
        while let Ok(HookReply { tag, result, .. }) = handle.replies.try_recv() {
            if tag == u64::MAX {
                continue; // a late readiness probe
            }
            got_any = true;
            let slot = tag as usize;
            let latency = started[slot].elapsed();
            done += 1;
            let measured = done > opts.warmup;
            if done == opts.warmup {
                measure_start = Instant::now();
            }
            if measured {
                match result {
                    Ok(_) => {
                        ok += 1;
                        latencies.push(latency.as_nanos() as u64);
                    }
                    Err(e) => {
                        let kind = error_kind(&e);
                        match errors.iter_mut().find(|x| x.0 == kind) {
                            Some(x) => x.1 += 1,
                            None => errors.push((kind.to_string(), 1, e.to_string())),
                        }
                    }
                }
                bar.update(done - opts.warmup);
            }
            if sent < total {
                send(slot, &mut sent, &mut started);
            }
        }
        if !got_any && done < total {
            poll.poll(&mut events, Some(opts.timeout + Duration::from_secs(1)))
                .map_err(|e| format!("poll failed: {e}"))?;
        }
    }
    let elapsed = measure_start.elapsed();
    bar.finish();
    latencies.sort_unstable();
    Ok(BenchReport {
        target: match &opts.target {
            BenchTarget::Pipe(c) => format!("pipe: {c}"),
            BenchTarget::Grpc(a) => format!("gRPC: {a}"),
        },
        hook: format!("{} {}", opts.hook.name(), opts.name),
        concurrency: opts.concurrency,
        ok,
        errors,
        elapsed,
        latencies_ns: latencies,
        restarts: driver.restarts() - restarts_before,
    })
}

/// A one-line progress bar on stderr, redrawn at most ten times a second.
struct ProgressBar {
    total: u64,
    enabled: bool,
    started: Instant,
    last_draw: Instant,
}

impl ProgressBar {
    fn new(total: u64, enabled: bool) -> ProgressBar {
        let now = Instant::now();
        ProgressBar {
            total,
            enabled,
            started: now,
            last_draw: now,
        }
    }

    fn update(&mut self, done: u64) {
        if !self.enabled || self.last_draw.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_draw = Instant::now();
        self.draw(done);
    }

    fn draw(&self, done: u64) {
        const WIDTH: u64 = 40;
        let filled = (done * WIDTH / self.total.max(1)).min(WIDTH) as usize;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:>3}% {done}/{} {rate:.0} calls/s ",
            "#".repeat(filled),
            ".".repeat(WIDTH as usize - filled),
            done * 100 / self.total.max(1),
            self.total
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled {
            self.draw(self.total);
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(hook: HookType) -> BenchOptions {
        BenchOptions {
            target: BenchTarget::Pipe("true".into()),
            hook,
            name: "MyHook".into(),
            concurrency: 1,
            requests: 1,
            warmup: 0,
            body_bytes: 100,
            timeout: Duration::from_secs(1),
            headers: vec![("X-Extra".into(), "1".into())],
            progress: false,
        }
    }

    #[test]
    fn sample_object_is_what_the_gateway_sends() {
        let o = sample_object(&opts(HookType::Pre)).unwrap();
        let req = o.request.as_ref().unwrap();
        assert_eq!(req.method.as_deref(), Some("POST"));
        assert_eq!(req.url.as_deref(), Some("/bench/orders/12345?expand=items"));
        assert_eq!(req.raw_body.as_ref().map(|b| b.len()), Some(100));
        let h = req.headers.as_ref().unwrap();
        assert_eq!(h.get("X-Extra").map(String::as_str), Some("1"));
        assert!(o.session.is_none());
        let r = sample_object(&opts(HookType::Response)).unwrap();
        assert_eq!(r.response.as_ref().unwrap().status_code, Some(200));
        assert!(r.session.is_some());
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let mut o = opts(HookType::Pre);
        o.headers = vec![("X-Bad\r\nInjected".into(), "1".into())];
        assert!(sample_object(&o).unwrap_err().contains("--header"));
        assert!(parse_hook("prehook").unwrap_err().contains("use pre"));
        assert_eq!(parse_hook("auth_check").unwrap(), HookType::CustomKeyCheck);
        let mut o = opts(HookType::Pre);
        o.concurrency = 0;
        assert!(run(&o).unwrap_err().contains("--concurrency"));
    }

    #[test]
    fn percentiles_pick_ranks() {
        let r = BenchReport {
            target: String::new(),
            hook: String::new(),
            concurrency: 1,
            ok: 100,
            errors: vec![],
            elapsed: Duration::from_secs(1),
            latencies_ns: (1..=100).map(|i| i * 1000).collect(),
            restarts: 0,
        };
        assert_eq!(r.percentile(0.5), Duration::from_micros(51));
        assert_eq!(r.percentile(1.0), Duration::from_micros(100));
        assert_eq!(r.percentile(0.0), Duration::from_micros(1));
        assert_eq!(r.throughput(), 100.0);
    }
}
