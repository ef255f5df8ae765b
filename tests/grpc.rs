//! The gRPC transport ([`GrpcClient`]) against real gRPC servers: the Rust example server and a
//! test server (tonic, in-process on their own runtimes) over TCP and Unix sockets, and the
//! Python grpcio example server (a separate process, stubs generated from `protocol/proto`).
//!
//! Each test plays a gateway worker: a `mio::Poll` with a `Waker` registered with the client,
//! collecting [`HookReply`]s the way the event loop does. Servers are "killed" by dropping their
//! runtime, which closes every socket at once, like a crashed process.

#[path = "../examples/grpc_server.rs"]
#[allow(dead_code)]
mod example;

use example::{Listen, SampleDispatcher};
use mio::{Events, Poll, Token, Waker};
use pipegate::coprocess::grpc::{GrpcClient, GrpcOptions};
use pipegate::coprocess::object::{
    AccessDefinition, AccessSpec, BasicAuthData, HookType, JwtData, MiniRequestObject, Monitor,
    Object, PairMap, ResponseObject, ReturnOverrides, SessionState, StringMap,
};
use pipegate::coprocess::pipe::WorkerHandle;
use pipegate::coprocess::proto::pb;
use pipegate::coprocess::proto::pb::dispatcher_server::{Dispatcher, DispatcherServer};
use pipegate::coprocess::{CallError, HookReply};
use serde_bytes::ByteBuf;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll as TaskPoll};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::codegen::http;
use tonic::{Request, Response, Status};

const WAKE: Token = Token(0);
/// Longest wait for replies that should come (a busy 2-core machine, debug builds).
const PATIENCE: Duration = Duration::from_secs(30);
/// Deadline of ordinary calls.
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A worker stand-in
// ---------------------------------------------------------------------------------------------

struct Worker {
    poll: Poll,
    handle: WorkerHandle,
    events: Events,
}

impl Worker {
    fn new(client: &GrpcClient) -> Worker {
        let poll = Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).expect("waker"));
        let handle = client.register_worker(waker);
        Worker {
            poll,
            handle,
            events: Events::with_capacity(16),
        }
    }

    /// Collects replies until `n` have arrived or `PATIENCE` passes, waiting on the Waker.
    fn collect(&mut self, n: usize) -> Vec<HookReply> {
        let mut out = Vec::with_capacity(n);
        let until = Instant::now() + PATIENCE;
        while out.len() < n && Instant::now() < until {
            while let Ok(r) = self.handle.replies.try_recv() {
                out.push(r);
            }
            if out.len() >= n {
                break;
            }
            let _ = self
                .poll
                .poll(&mut self.events, Some(Duration::from_millis(200)));
        }
        out
    }

    /// Replies arriving within `wait` (for asserting that nothing more comes).
    fn collect_for(&mut self, wait: Duration) -> Vec<HookReply> {
        let mut out = Vec::new();
        let until = Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let _ = self.poll.poll(&mut self.events, Some(left));
            while let Ok(r) = self.handle.replies.try_recv() {
                out.push(r);
            }
        }
        out
    }

    fn call_with(&mut self, client: &GrpcClient, obj: &Object, deadline: Duration) -> HookReply {
        let id = client.dispatch(self.handle.id, 7, Instant::now() + deadline, obj);
        let mut got = self.collect(1);
        assert_eq!(got.len(), 1, "exactly one reply for call {id}");
        let r = got.remove(0);
        assert_eq!((r.call_id, r.tag), (id, 7));
        r
    }

    fn call(&mut self, client: &GrpcClient, obj: &Object) -> Result<Object, CallError> {
        self.call_with(client, obj, DEADLINE).result
    }
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

fn smap(pairs: &[(&str, &str)]) -> StringMap {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// A hook call the way the chain builds one: request with headers, -1 override, body.
fn hook(hook_type: HookType, name: &str, meta: &[(&str, &str)]) -> Object {
    Object {
        hook_type: Some(hook_type),
        hook_name: Some(name.into()),
        request: Some(MiniRequestObject {
            headers: Some(smap(&[("Host", "gw.test"), ("X-Test", "hello")])),
            set_headers: Some(StringMap::new()),
            delete_headers: Some(vec![]),
            body: Some("abc".into()),
            url: Some("/api/x?a=1".into()),
            params: Some(smap(&[("a", "1")])),
            return_overrides: Some(ReturnOverrides {
                response_code: Some(-1),
                ..Default::default()
            }),
            method: Some("POST".into()),
            request_uri: Some("/api/x?a=1".into()),
            scheme: Some("http".into()),
            raw_body: Some(ByteBuf::from(b"abc".to_vec())),
            ..Default::default()
        }),
        metadata: Some(smap(meta)),
        spec: Some(smap(&[("APIID", "api1"), ("OrgID", "org1")])),
        ..Default::default()
    }
}

fn set_header(o: &Object, name: &str) -> Option<String> {
    o.request.as_ref()?.set_headers.as_ref()?.get(name).cloned()
}

fn meta(o: &Object, key: &str) -> Option<String> {
    o.metadata.as_ref()?.get(key).cloned()
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// What the test server saw of each HTTP/2 request (pseudo-headers and gRPC headers).
#[derive(Debug, Clone, Default)]
struct Seen {
    path: String,
    authority: String,
    timeout: Option<String>,
    encoding: Option<String>,
    user_agent: String,
}

#[derive(Default)]
struct Log {
    requests: Mutex<Vec<Seen>>,
    events: Mutex<Vec<String>>,
    dispatches: AtomicUsize,
}

/// Hooks for the tests, by `hook_name`:
/// - `Echo`: unchanged.
/// - `Tag`: `set_headers["X-Call"] = metadata["n"]` after sleeping `metadata["sleep_ms"]`.
/// - `Big`: replies with a `raw_body` of `metadata["size"]` bytes.
/// - `Fail`: a handler error (`UNKNOWN`, "boom").
#[derive(Clone)]
struct TestDispatcher(Arc<Log>);

fn meta_num(o: &pb::Object, key: &str) -> u64 {
    o.metadata
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tonic::async_trait]
impl Dispatcher for TestDispatcher {
    async fn dispatch(&self, request: Request<pb::Object>) -> Result<Response<pb::Object>, Status> {
        self.0.dispatches.fetch_add(1, Ordering::Relaxed);
        let mut obj = request.into_inner();
        match obj.hook_name.as_str() {
            "Tag" => {
                let sleep = meta_num(&obj, "sleep_ms");
                if sleep > 0 {
                    tokio::time::sleep(Duration::from_millis(sleep)).await;
                }
                let n = obj.metadata.get("n").cloned().unwrap_or_default();
                let req = obj.request.get_or_insert_with(Default::default);
                req.set_headers.insert("X-Call".into(), n);
            }
            "Big" => {
                let size = meta_num(&obj, "size") as usize;
                obj.request.get_or_insert_with(Default::default).raw_body = vec![b'x'; size];
            }
            "Fail" => return Err(Status::unknown("boom")),
            _ => {}
        }
        Ok(Response::new(obj))
    }

    async fn dispatch_event(
        &self,
        request: Request<pb::Event>,
    ) -> Result<Response<pb::EventReply>, Status> {
        self.0
            .events
            .lock()
            .unwrap()
            .push(request.into_inner().payload);
        Ok(Response::new(pb::EventReply {}))
    }
}

/// Wraps the tonic service to record each request's `:authority`, path and gRPC headers.
#[derive(Clone)]
struct Recording<S> {
    inner: S,
    log: Arc<Log>,
}

impl<S, B> tower::Service<http::Request<B>> for Recording<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> TaskPoll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let seen = Seen {
            path: req.uri().path().to_string(),
            authority: req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            timeout: h("grpc-timeout"),
            encoding: h("grpc-encoding"),
            user_agent: h("user-agent").unwrap_or_default(),
        };
        self.log.requests.lock().unwrap().push(seen);
        self.inner.call(req)
    }
}

/// A server running on its own runtime; dropping it (or `kill`) closes every socket at once.
struct Server {
    rt: Option<Runtime>,
    /// `tcp://127.0.0.1:port` or `unix:///path`, as bound.
    target: String,
    log: Arc<Log>,
}

impl Server {
    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("test server runtime")
}

/// Starts the test dispatcher (recording requests) with a `max_message` limit on both sides.
fn start_test_server(listen: Listen, max_message: usize) -> Server {
    let log = Arc::new(Log::default());
    let rt = runtime();
    let (tx, rx) = std::sync::mpsc::channel();
    let svc = Recording {
        inner: DispatcherServer::new(TestDispatcher(Arc::clone(&log)))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .send_compressed(tonic::codec::CompressionEncoding::Gzip),
        log: Arc::clone(&log),
    };
    rt.spawn(async move {
        let server = tonic::transport::Server::builder();
        let served = match listen {
            Listen::Tcp(addr) => {
                let l = tokio::net::TcpListener::bind(&addr)
                    .await
                    .expect("bind test server");
                let _ = tx.send(format!("tcp://{}", l.local_addr().expect("addr")));
                server
                    .serve_with_incoming_shutdown(
                        svc,
                        TcpListenerStream::new(l),
                        std::future::pending(),
                    )
                    .await
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(&path);
                let l = tokio::net::UnixListener::bind(&path).expect("bind unix test server");
                let _ = tx.send(format!("unix://{}", path.display()));
                server
                    .serve_with_incoming_shutdown(
                        svc,
                        UnixListenerStream::new(l),
                        std::future::pending(),
                    )
                    .await
            }
        };
        if let Err(e) = served {
            eprintln!("test server stopped: {e}");
        }
    });
    let target = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("test server bound");
    Server {
        rt: Some(rt),
        target,
        log,
    }
}

/// Starts the example server (examples/grpc_server.rs) in-process.
fn start_example_server(listen: Listen) -> Server {
    let rt = runtime();
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let served = example::serve(
            SampleDispatcher,
            listen,
            example::DEFAULT_MAX_MESSAGE,
            move |a| {
                let _ = tx.send(a);
            },
            std::future::pending(),
        )
        .await;
        if let Err(e) = served {
            eprintln!("example server stopped: {e}");
        }
    });
    let target = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("example server bound");
    Server {
        rt: Some(rt),
        target,
        log: Arc::default(),
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pipegate-grpc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn client(target: &str) -> Arc<GrpcClient> {
    GrpcClient::start(GrpcOptions::new(target)).expect("client starts")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls `Echo` until one succeeds (the client reconnects with backoff).
fn wait_for_success(c: &GrpcClient, w: &mut Worker) -> usize {
    let until = Instant::now() + PATIENCE;
    let mut failures = 0;
    loop {
        match w.call(c, &hook(HookType::Pre, "Echo", &[])) {
            Ok(_) => return failures,
            Err(e) => {
                assert!(
                    matches!(e, CallError::Unavailable),
                    "while reconnecting: {e:?}"
                );
                failures += 1;
                assert!(Instant::now() < until, "no success after {failures} calls");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: the example server
// ---------------------------------------------------------------------------------------------

fn check_example_hooks(c: &GrpcClient, w: &mut Worker) {
    let got = w
        .call(c, &hook(HookType::Pre, "MyPreMiddleware", &[]))
        .expect("pre hook");
    assert_eq!(set_header(&got, "myheader").as_deref(), Some("myvalue"));
    assert_eq!(got.hook_type, Some(HookType::Pre));
    // The rest of the object comes back as sent.
    let req = got.request.as_ref().expect("request");
    assert_eq!(req.url.as_deref(), Some("/api/x?a=1"));
    assert_eq!(
        req.raw_body.as_deref().map(Vec::as_slice),
        Some(&b"abc"[..])
    );
    assert_eq!(
        req.return_overrides.as_ref().and_then(|r| r.response_code),
        Some(-1)
    );
    assert!(got.session.is_none() && got.response.is_none());

    let mut auth = hook(HookType::CustomKeyCheck, "MyAuthCheck", &[]);
    if let Some(h) = auth.request.as_mut().and_then(|r| r.headers.as_mut()) {
        h.insert("Authorization", example::VALID_TOKEN.to_string());
    }
    let got = w.call(c, &auth).expect("auth hook");
    let s = got.session.as_ref().expect("session installed");
    assert_eq!(
        (s.rate, s.per, s.quota_max),
        (Some(1000.0), Some(1.0), Some(-1))
    );
    assert_eq!(meta(&got, "token").as_deref(), Some(example::VALID_TOKEN));

    let got = w
        .call(c, &hook(HookType::CustomKeyCheck, "MyAuthCheck", &[]))
        .expect("auth hook (refused)");
    let ro = got
        .request
        .and_then(|r| r.return_overrides)
        .expect("overrides");
    assert_eq!(ro.response_code, Some(401));
    assert!(got.session.is_none());
}

#[test]
fn example_server_hooks_over_tcp() {
    let server = start_example_server(Listen::Tcp("127.0.0.1:0".into()));
    let c = client(&server.target);
    let mut w = Worker::new(&c);
    check_example_hooks(&c, &mut w);
    assert!(c.is_healthy());
    assert!(c.implements("anything"));
}

#[test]
fn example_server_hooks_over_unix_socket() {
    let dir = temp_dir("example-unix");
    let server = start_example_server(Listen::Unix(dir.join("plugin.sock")));
    assert!(server.target.starts_with("unix:///"));
    let c = client(&server.target);
    let mut w = Worker::new(&c);
    check_example_hooks(&c, &mut w);
    // Response hook: the response object goes both ways.
    let mut o = hook(HookType::Response, "MyResponseMiddleware", &[]);
    o.response = Some(ResponseObject {
        status_code: Some(200),
        raw_body: Some(ByteBuf::from(b"up".to_vec())),
        body: Some("up".into()),
        headers: Some(smap(&[("Content-Type", "text/plain")])),
        multivalue_headers: Some(vec![]),
        raw_body_file: None,
    });
    let got = w.call(&c, &o).expect("response hook");
    let r = got.response.expect("response");
    assert_eq!(r.status_code, Some(200));
    assert_eq!(
        r.headers
            .as_ref()
            .and_then(|h| h.get("x-grpc-response"))
            .map(String::as_str),
        Some("true")
    );
    let mv = r.multivalue_headers.expect("multivalue");
    assert_eq!(mv[0].key.as_deref(), Some("x-grpc-response"));
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Tests: concurrency, failures, limits
// ---------------------------------------------------------------------------------------------

#[test]
fn a_thousand_concurrent_calls_each_get_their_own_reply() {
    let server = start_test_server(Listen::Tcp("127.0.0.1:0".into()), 4 << 20);
    let c = client(&server.target);
    // Two workers on two threads, 500 calls each, all in flight at once; the server sleeps a
    // pseudo-random 0-9 ms per call so replies come back out of order.
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                let mut w = Worker::new(&c);
                let mut want = std::collections::HashMap::new();
                for i in 0..500u64 {
                    let n = format!("{t}-{i}");
                    let sleep = (i * 7919 + t * 31) % 10;
                    let o = hook(
                        HookType::Post,
                        "Tag",
                        &[("n", &n), ("sleep_ms", &sleep.to_string())],
                    );
                    let tag = t * 1_000_000 + i;
                    let id = c.dispatch(w.handle.id, tag, Instant::now() + PATIENCE, &o);
                    want.insert(id, (tag, n));
                }
                let got = w.collect(500);
                assert_eq!(got.len(), 500, "worker {t}: every call answered");
                let mut order = Vec::new();
                for r in got {
                    let (tag, n) = want.remove(&r.call_id).expect("a reply per call, once");
                    assert_eq!(r.tag, tag);
                    let o = r.result.expect("call succeeds");
                    assert_eq!(set_header(&o, "X-Call"), Some(n));
                    order.push(tag);
                }
                assert!(want.is_empty());
                assert!(w.collect_for(Duration::from_millis(100)).is_empty());
                order
            })
        })
        .collect();
    let mut out_of_order = false;
    for t in threads {
        let order = t.join().expect("worker thread");
        out_of_order |= order.windows(2).any(|p| p[0] > p[1]);
    }
    assert!(
        out_of_order,
        "replies arrived out of order (the test exercises reordering)"
    );
    assert_eq!(server.log.dispatches.load(Ordering::Relaxed), 1000);
    // One connection for everything: the probe plus 1000 calls, all with one authority.
    let seen = server.log.requests.lock().unwrap();
    assert!(
        seen.iter()
            .filter(|s| s.path == "/coprocess.Dispatcher/Dispatch")
            .count()
            == 1000
    );
}

#[test]
fn server_down_at_start_is_unavailable_then_connects() {
    let port = free_port();
    let target = format!("tcp://127.0.0.1:{port}");
    let c = client(&target);
    let mut w = Worker::new(&c);
    let t0 = Instant::now();
    let r = w.call(&c, &hook(HookType::Pre, "Echo", &[]));
    assert_eq!(r, Err(CallError::Unavailable));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "fails fast, not at the deadline"
    );
    assert!(!c.is_healthy());
    // Calls during the outage fail fast too (backoff: no dial per call).
    let t0 = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            w.call(&c, &hook(HookType::Pre, "Echo", &[])),
            Err(CallError::Unavailable)
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(3));

    let server = start_test_server(Listen::Tcp(format!("127.0.0.1:{port}")), 4 << 20);
    // The background probe connects without any call.
    wait_until("the client to connect by itself", || c.is_healthy());
    wait_for_success(&c, &mut w);
    assert!(server.log.dispatches.load(Ordering::Relaxed) >= 1);
}

#[test]
fn server_killed_under_load_then_restarted() {
    let mut server = start_test_server(Listen::Tcp("127.0.0.1:0".into()), 4 << 20);
    let target = server.target.clone();
    let addr = target.trim_start_matches("tcp://").to_string();
    let c = client(&target);
    let mut w = Worker::new(&c);
    wait_for_success(&c, &mut w);

    // 200 calls in flight, each held 300 ms by the server; the server dies under them.
    let mut ids = std::collections::HashSet::new();
    for i in 0..200 {
        let o = hook(
            HookType::Pre,
            "Tag",
            &[("n", &i.to_string()), ("sleep_ms", "300")],
        );
        ids.insert(c.dispatch(w.handle.id, i, Instant::now() + PATIENCE, &o));
    }
    std::thread::sleep(Duration::from_millis(100));
    server.kill();
    let t0 = Instant::now();
    let got = w.collect(200);
    assert_eq!(got.len(), 200, "every in-flight call is answered");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "answered when the connection broke, not at the deadline"
    );
    for r in &got {
        assert!(ids.remove(&r.call_id));
        assert_eq!(r.result, Err(CallError::Unavailable), "call {}", r.call_id);
    }
    wait_until("the client to notice", || !c.is_healthy());
    assert_eq!(
        w.call(&c, &hook(HookType::Pre, "Echo", &[])),
        Err(CallError::Unavailable)
    );

    let server = start_test_server(Listen::Tcp(addr), 4 << 20);
    wait_for_success(&c, &mut w);
    assert!(c.is_healthy());
    // And load works again.
    for i in 0..100 {
        let o = hook(HookType::Pre, "Tag", &[("n", &i.to_string())]);
        c.dispatch(w.handle.id, i, Instant::now() + PATIENCE, &o);
    }
    let got = w.collect(100);
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|r| r.result.is_ok()));
    drop(server);
}

#[test]
fn a_target_that_is_not_a_grpc_server_fails_fast_with_backoff() {
    // Accepts connections, answers HTTP/1.1 garbage and closes: e.g. coprocess_grpc_server
    // pointed at the upstream by mistake.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = format!("tcp://{}", l.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            count.fetch_add(1, Ordering::Relaxed);
            use std::io::Write;
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        }
    });
    let c = client(&target);
    let mut w = Worker::new(&c);
    let t0 = Instant::now();
    let mut calls = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        let r = w.call_with(
            &c,
            &hook(HookType::Pre, "Echo", &[]),
            Duration::from_secs(5),
        );
        assert_eq!(r.result, Err(CallError::Unavailable));
        calls += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!c.is_healthy());
    let n = accepted.load(Ordering::Relaxed);
    // 100 ms, 200 ms, 400 ms, 800 ms: a handful of connections, not one per call.
    assert!((2..=8).contains(&n), "{n} connections for {calls} calls");
    assert!(calls > 20);
}

#[test]
fn deadline_is_a_timeout_and_is_sent_to_the_server() {
    let server = start_test_server(Listen::Tcp("127.0.0.1:0".into()), 4 << 20);
    let c = client(&server.target);
    let mut w = Worker::new(&c);
    wait_for_success(&c, &mut w);
    let t0 = Instant::now();
    let r = w.call_with(
        &c,
        &hook(HookType::Pre, "Tag", &[("sleep_ms", "3000")]),
        Duration::from_millis(300),
    );
    let took = t0.elapsed();
    assert_eq!(r.result, Err(CallError::Timeout));
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // The remaining time travels as grpc-timeout (the server can give up too).
    let seen = server.log.requests.lock().unwrap().clone();
    let last = seen
        .iter()
        .rev()
        .find(|s| s.path == "/coprocess.Dispatcher/Dispatch")
        .expect("request seen");
    let timeout = last.timeout.as_deref().expect("grpc-timeout sent");
    let (num, unit) = timeout.split_at(timeout.len() - 1);
    let num: u64 = num.parse().expect("grpc-timeout number");
    let ms = match unit {
        "H" => num * 3_600_000,
        "M" => num * 60_000,
        "S" => num * 1000,
        "m" => num,
        "u" => num / 1000,
        "n" => num / 1_000_000,
        other => panic!("grpc-timeout unit {other}"),
    };
    assert!(ms > 0 && ms <= 300, "grpc-timeout {timeout}");
    // A deadline already past is answered at once.
    let r = w.call_with(&c, &hook(HookType::Pre, "Echo", &[]), Duration::ZERO);
    assert_eq!(r.result, Err(CallError::Timeout));
    // The connection is still fine.
    assert!(w.call(&c, &hook(HookType::Pre, "Echo", &[])).is_ok());
}

#[test]
fn message_limits_are_protocol_errors_and_the_client_goes_on() {
    let server = start_test_server(Listen::Tcp("127.0.0.1:0".into()), 8 << 20);
    let mut o = GrpcOptions::new(&server.target);
    o.recv_max = 64 << 10;
    o.send_max = 64 << 10;
    let c = GrpcClient::start(o).expect("client");
    let mut w = Worker::new(&c);
    wait_for_success(&c, &mut w);

    // A reply over grpc_recv_max_size.
    let big_reply = hook(HookType::Pre, "Big", &[("size", "100000")]);
    match w.call(&c, &big_reply) {
        Err(CallError::Protocol(m)) => assert!(m.contains("grpc_recv_max_size"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    // A request over grpc_send_max_size: refused before it is sent.
    let before = server.log.dispatches.load(Ordering::Relaxed);
    let mut big_request = hook(HookType::Pre, "Echo", &[]);
    if let Some(r) = big_request.request.as_mut() {
        r.raw_body = Some(ByteBuf::from(vec![0u8; 70_000]));
    }
    match w.call(&c, &big_request) {
        Err(CallError::Protocol(m)) => assert!(m.contains("grpc_send_max_size"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(server.log.dispatches.load(Ordering::Relaxed), before);
    // Just under both limits works, and so does everything after.
    let ok = hook(HookType::Pre, "Big", &[("size", "60000")]);
    let got = w.call(&c, &ok).expect("under the limit");
    assert_eq!(
        got.request.and_then(|r| r.raw_body).map(|b| b.len()),
        Some(60_000)
    );
    assert!(w.call(&c, &hook(HookType::Pre, "Echo", &[])).is_ok());
    assert!(c.is_healthy());
}

#[test]
fn default_receive_limit_is_4_mib() {
    let server = start_test_server(Listen::Tcp("127.0.0.1:0".into()), 16 << 20);
    let c = client(&server.target);
    let mut w = Worker::new(&c);
    wait_for_success(&c, &mut w);
    let over = hook(HookType::Pre, "Big", &[("size", &(5u64 << 20).to_string())]);
    assert!(matches!(w.call(&c, &over), Err(CallError::Protocol(_))));
    let under = hook(HookType::Pre, "Big", &[("size", &(3u64 << 20).to_string())]);
    assert!(w.call(&c, &under).is_ok());
}

#[test]
fn handler_errors_cancel_events_and_shutdown() {
    let server = start_test_server(Listen::Tcp("127.0.0.1:0".into()), 4 << 20);
    let c = client(&server.target);
    let mut w = Worker::new(&c);
    wait_for_success(&c, &mut w);

    assert_eq!(
        w.call(&c, &hook(HookType::Pre, "Fail", &[])),
        Err(CallError::PluginError("boom".into()))
    );

    // A cancelled call gets no reply; the next one does.
    let slow = hook(HookType::Pre, "Tag", &[("sleep_ms", "300")]);
    let cancelled = c.dispatch(w.handle.id, 1, Instant::now() + DEADLINE, &slow);
    c.cancel(cancelled);
    let next = c.dispatch(
        w.handle.id,
        2,
        Instant::now() + DEADLINE,
        &hook(HookType::Pre, "Echo", &[]),
    );
    let got = w.collect_for(Duration::from_millis(800));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].call_id, next);

    c.send_event(r#"{"message":{"Type":"AuthFailure"},"handler_name":"h"}"#);
    wait_until("the event to arrive", || {
        server
            .log
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("AuthFailure"))
    });

    // Shutdown answers what is pending, then everything is Unavailable at once.
    let pending = c.dispatch(w.handle.id, 3, Instant::now() + DEADLINE, &slow);
    c.shutdown();
    let got = w.collect(1);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].call_id, &got[0].result),
        (pending, &Err(CallError::Unavailable))
    );
    assert!(!c.is_healthy());
    assert_eq!(
        w.call(&c, &hook(HookType::Pre, "Echo", &[])),
        Err(CallError::Unavailable)
    );
    c.shutdown();
}

#[test]
fn authority_timeout_user_agent_and_compression_on_the_wire() {
    let server = start_test_server(Listen::Tcp("127.0.0.1:0".into()), 4 << 20);
    let hostport = server.target.trim_start_matches("tcp://").to_string();

    // Defaults: authority = host:port of the target, no compression.
    let c = client(&server.target);
    let mut w = Worker::new(&c);
    wait_for_success(&c, &mut w);
    let last_dispatch = || {
        let seen = server.log.requests.lock().unwrap();
        let d = seen
            .iter()
            .rev()
            .find(|s| s.path == "/coprocess.Dispatcher/Dispatch");
        d.cloned().expect("a Dispatch seen")
    };
    let first = last_dispatch();
    assert_eq!(first.authority, hostport);
    assert!(
        first.user_agent.contains("pipegate/"),
        "{}",
        first.user_agent
    );
    assert_eq!(first.encoding, None);
    drop(c);

    // grpc_authority and gzip.
    let mut o = GrpcOptions::new(&server.target);
    o.authority = Some("plugins.internal".into());
    o.compression = Some("gzip".into());
    let c = GrpcClient::start(o).expect("client");
    let mut w = Worker::new(&c);
    wait_for_success(&c, &mut w);
    let mut big = hook(HookType::Pre, "Echo", &[]);
    if let Some(r) = big.request.as_mut() {
        r.raw_body = Some(ByteBuf::from(vec![b'a'; 100_000]));
    }
    let got = w.call(&c, &big).expect("compressed call");
    assert_eq!(
        got.request.and_then(|r| r.raw_body).map(|b| b.len()),
        Some(100_000)
    );
    let last = last_dispatch();
    assert_eq!(last.authority, "plugins.internal");
    assert_eq!(last.encoding.as_deref(), Some("gzip"));
}

#[test]
fn unix_socket_server_restarts_and_reconnects() {
    let dir = temp_dir("unix-restart");
    let sock = dir.join("p.sock");
    let mut server = start_test_server(Listen::Unix(sock.clone()), 4 << 20);
    let c = client(&format!("unix://{}", sock.display()));
    let mut w = Worker::new(&c);
    wait_for_success(&c, &mut w);
    let seen = server
        .log
        .requests
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("seen");
    // Probe or Dispatch: every request carries the same authority.
    assert_eq!(
        seen.authority, "localhost",
        "grpc-go's authority for unix targets"
    );
    server.kill();
    wait_until("the client to notice", || !c.is_healthy());
    let _server = start_test_server(Listen::Unix(sock), 4 << 20);
    wait_for_success(&c, &mut w);
    drop(c);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Tests: the Python grpcio server (stubs generated from protocol/proto)
// ---------------------------------------------------------------------------------------------

struct PyServer {
    child: Child,
    target: String,
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_python_server() -> PyServer {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocol/examples/grpc_server.py"
    );
    let mut child = Command::new("python3")
        .args([script, "--listen", "tcp://127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs (the gRPC tests need python3 with grpcio and grpcio-tools: .ci/install-deps)");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let target = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(t) => t,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "protocol/examples/grpc_server.py did not start (is grpcio / grpcio-tools \
                 installed? run .ci/install-deps); see its stderr above"
            );
        }
    };
    PyServer { child, target }
}

/// Every field of every message set to a distinct non-default value.
fn full_object() -> Object {
    let session = SessionState {
        last_check: Some(1),
        allowance: Some(2.5),
        rate: Some(3.5),
        per: Some(4.5),
        expires: Some(5),
        quota_max: Some(6),
        quota_renews: Some(7),
        quota_remaining: Some(8),
        quota_renewal_rate: Some(9),
        access_rights: Some(PairMap(vec![(
            "api1".into(),
            AccessDefinition {
                api_name: Some("API one".into()),
                api_id: Some("api1".into()),
                versions: Some(vec!["Default".into()]),
                allowed_urls: Some(vec![AccessSpec {
                    url: Some("/x".into()),
                    methods: Some(vec!["GET".into()]),
                }]),
            },
        )])),
        org_id: Some("org1".into()),
        oauth_client_id: Some("client1".into()),
        oauth_keys: Some(smap(&[("ok", "ov")])),
        basic_auth_data: Some(BasicAuthData {
            password: Some("pw".into()),
            hash: Some("bcrypt".into()),
        }),
        jwt_data: Some(JwtData {
            secret: Some("jwts".into()),
        }),
        hmac_enabled: Some(true),
        hmac_secret: Some("hs".into()),
        is_inactive: Some(true),
        apply_policy_id: Some("pol0".into()),
        data_expires: Some(20),
        monitor: Some(Monitor {
            trigger_limits: Some(vec![80.0, 95.5]),
        }),
        enable_detailed_recording: Some(true),
        metadata: Some(smap(&[("token", "t1")])),
        tags: Some(vec!["tag1".into()]),
        alias: Some("alias1".into()),
        last_updated: Some("lu".into()),
        id_extractor_deadline: Some(27),
        session_lifetime: Some(28),
        apply_policies: Some(vec!["pol1".into()]),
        certificate: Some("cert".into()),
        max_query_depth: Some(31),
        key_id: Some("key1".into()),
        post_expiry_action: Some("delete".into()),
        post_expiry_grace_period: Some(34),
    };
    let mut o = hook(HookType::PostKeyAuth, "Dump", &[("token", "t1")]);
    if let Some(r) = o.request.as_mut() {
        r.set_headers = Some(smap(&[("X-Set", "1")]));
        r.delete_headers = Some(vec!["X-Del".into()]);
        r.add_params = Some(smap(&[("b", "2")]));
        r.extended_params = Some(smap(&[("e", "5")]));
        r.delete_params = Some(vec!["d".into()]);
        r.return_overrides = Some(ReturnOverrides {
            response_code: Some(-1),
            response_error: Some("re".into()),
            headers: Some(smap(&[("X-O", "o")])),
            override_error: Some(true),
            response_body: Some("rb".into()),
        });
    }
    o.session = Some(Box::new(session));
    o.response = Some(ResponseObject {
        status_code: Some(201),
        raw_body: Some(ByteBuf::from(b"resp".to_vec())),
        body: Some("resp".into()),
        headers: Some(smap(&[("Set-Cookie", "a=1")])),
        multivalue_headers: Some(vec![pipegate::coprocess::object::Header {
            key: Some("Set-Cookie".into()),
            values: Some(vec!["a=1".into(), "b=2".into()]),
        }]),
        raw_body_file: None,
    });
    o
}

#[test]
fn python_grpcio_server_interoperates() {
    let py = start_python_server();
    let c = client(&py.target);
    let mut w = Worker::new(&c);
    let until = Instant::now() + PATIENCE;
    let got = loop {
        match w.call(&c, &hook(HookType::PostKeyAuth, "Inspect", &[])) {
            Ok(o) => break o,
            Err(CallError::Unavailable) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("Inspect: {e:?}"),
        }
    };
    // What the Python server read, by Tyk's field names, comes back as set_headers.
    assert_eq!(
        set_header(&got, "X-Seen-Hook-Name").as_deref(),
        Some("Inspect")
    );
    assert_eq!(set_header(&got, "X-Seen-Hook-Type").as_deref(), Some("3"));
    assert_eq!(
        set_header(&got, "X-Seen-Test-Header").as_deref(),
        Some("hello")
    );
    assert_eq!(set_header(&got, "X-Seen-Method").as_deref(), Some("POST"));
    assert_eq!(
        set_header(&got, "X-Seen-Raw-Body-Len").as_deref(),
        Some("3")
    );
    assert_eq!(
        meta(&got, "seen_hook_type_name").as_deref(),
        Some("PostKeyAuth")
    );
    let req = got.request.as_ref().expect("request");
    assert_eq!(
        req.raw_body.as_deref().map(Vec::as_slice),
        Some(&b"inspected"[..])
    );

    // Every field, by name, with its value (Python's json_format uses the schema's names).
    let got = w.call(&c, &full_object()).expect("Dump");
    let json: serde_json::Value =
        serde_json::from_str(&meta(&got, "received_json").expect("received_json")).expect("json");
    assert_eq!(json["hook_type"], "PostKeyAuth");
    assert_eq!(json["hook_name"], "Dump");
    assert_eq!(json["metadata"]["token"], "t1");
    assert_eq!(json["spec"]["APIID"], "api1");
    let r = &json["request"];
    assert_eq!(r["headers"]["X-Test"], "hello");
    assert_eq!(r["set_headers"]["X-Set"], "1");
    assert_eq!(r["delete_headers"][0], "X-Del");
    assert_eq!(r["body"], "abc");
    assert_eq!(r["url"], "/api/x?a=1");
    assert_eq!(r["params"]["a"], "1");
    assert_eq!(r["add_params"]["b"], "2");
    assert_eq!(r["extended_params"]["e"], "5");
    assert_eq!(r["delete_params"][0], "d");
    assert_eq!(r["method"], "POST");
    assert_eq!(r["request_uri"], "/api/x?a=1");
    assert_eq!(r["scheme"], "http");
    assert_eq!(r["raw_body"], "YWJj"); // base64("abc")
    let ro = &r["return_overrides"];
    assert_eq!(ro["response_code"], -1);
    assert_eq!(ro["response_error"], "re");
    assert_eq!(ro["headers"]["X-O"], "o");
    assert_eq!(ro["override_error"], true);
    assert_eq!(ro["response_body"], "rb");
    let resp = &json["response"];
    assert_eq!(resp["status_code"], 201);
    assert_eq!(resp["raw_body"], "cmVzcA=="); // base64("resp")
    assert_eq!(resp["body"], "resp");
    assert_eq!(resp["headers"]["Set-Cookie"], "a=1");
    assert_eq!(resp["multivalue_headers"][0]["key"], "Set-Cookie");
    assert_eq!(resp["multivalue_headers"][0]["values"][1], "b=2");
    let s = &json["session"];
    // json_format renders int64 as strings.
    let want = serde_json::json!({
        "last_check": "1", "allowance": 2.5, "rate": 3.5, "per": 4.5, "expires": "5",
        "quota_max": "6", "quota_renews": "7", "quota_remaining": "8", "quota_renewal_rate": "9",
        "access_rights": {"api1": {"api_name": "API one", "api_id": "api1", "versions": ["Default"],
                                   "allowed_urls": [{"url": "/x", "methods": ["GET"]}]}},
        "org_id": "org1", "oauth_client_id": "client1", "oauth_keys": {"ok": "ov"},
        "basic_auth_data": {"password": "pw", "hash": "bcrypt"}, "jwt_data": {"secret": "jwts"},
        "hmac_enabled": true, "hmac_secret": "hs", "is_inactive": true, "apply_policy_id": "pol0",
        "data_expires": "20", "monitor": {"trigger_limits": [80.0, 95.5]},
        "enable_detailed_recording": true, "metadata": {"token": "t1"}, "tags": ["tag1"],
        "alias": "alias1", "last_updated": "lu", "id_extractor_deadline": "27",
        "session_lifetime": "28", "apply_policies": ["pol1"], "certificate": "cert",
        "max_query_depth": "31", "key_id": "key1", "post_expiry_action": "delete",
        "post_expiry_grace_period": "34"
    });
    assert_eq!(s, &want, "session as the Python server decoded it");
    assert_eq!(s.as_object().map(|m| m.len()), Some(34));
    // And the echoed object is the one sent, plus the dump.
    let mut echoed = got.clone();
    if let Some(m) = echoed.metadata.as_mut() {
        m.0.retain(|(k, _)| k != "received_json");
    }
    assert_eq!(echoed, full_object());

    // Tyk's sample hooks, as a Python server implements them.
    let got = w
        .call(&c, &hook(HookType::Pre, "MyPreMiddleware", &[]))
        .expect("pre");
    assert_eq!(set_header(&got, "myheader").as_deref(), Some("myvalue"));
    let mut auth = hook(HookType::CustomKeyCheck, "MyAuthCheck", &[]);
    if let Some(h) = auth.request.as_mut().and_then(|r| r.headers.as_mut()) {
        h.insert("Authorization", example::VALID_TOKEN.to_string());
    }
    let got = w.call(&c, &auth).expect("auth");
    let s = got.session.as_ref().expect("session set by Python");
    assert_eq!(
        (s.rate, s.per, s.quota_max),
        (Some(1000.0), Some(1.0), Some(-1))
    );
    assert!(s.id_extractor_deadline.unwrap_or(0) > 1_600_000_000);
    assert_eq!(meta(&got, "token").as_deref(), Some(example::VALID_TOKEN));

    // Concurrent calls against the thread-pool server.
    for i in 0..200 {
        c.dispatch(
            w.handle.id,
            i,
            Instant::now() + PATIENCE,
            &hook(HookType::Pre, "MyPreMiddleware", &[]),
        );
    }
    let got = w.collect(200);
    assert_eq!(got.len(), 200);
    assert!(got.iter().all(|r| r.result.is_ok()));
    assert!(c.is_healthy());
}

// ---------------------------------------------------------------------------------------------
// Measurement (run with: cargo test --release --test grpc -- --ignored --nocapture)
// ---------------------------------------------------------------------------------------------

fn measure(c: &GrpcClient, w: &mut Worker, in_flight: usize, total: usize) -> (Duration, f64) {
    let o = hook(HookType::Pre, "Echo", &[]);
    let t0 = Instant::now();
    let mut sent = 0;
    let mut done = 0;
    while sent < in_flight.min(total) {
        c.dispatch(w.handle.id, 0, Instant::now() + PATIENCE, &o);
        sent += 1;
    }
    while done < total {
        let got = w.collect(1);
        assert!(!got.is_empty(), "reply within {PATIENCE:?}");
        for r in got {
            assert!(r.result.is_ok(), "{:?}", r.result);
            done += 1;
            if sent < total {
                c.dispatch(w.handle.id, 0, Instant::now() + PATIENCE, &o);
                sent += 1;
            }
        }
    }
    let took = t0.elapsed();
    let per_call = took / total as u32 * in_flight.min(total) as u32;
    (per_call, total as f64 / took.as_secs_f64())
}

#[test]
#[ignore = "measurement; run explicitly with --release --ignored --nocapture"]
fn measure_latency_and_throughput() {
    let py = std::env::var("PIPEGATE_MEASURE_PYTHON").is_ok();
    let _py_server;
    let _rs_server;
    let target = if py {
        _py_server = start_python_server();
        _py_server.target.clone()
    } else {
        _rs_server = start_test_server(Listen::Tcp("127.0.0.1:0".into()), 4 << 20);
        _rs_server.target.clone()
    };
    let c = client(&target);
    let mut w = Worker::new(&c);
    wait_for_success(&c, &mut w);
    measure(&c, &mut w, 1, 500);
    for (in_flight, total) in [(1, 5_000), (100, 50_000)] {
        let (lat, rps) = measure(&c, &mut w, in_flight, total);
        println!(
            "{} server, {in_flight} in flight: {:.1} µs per call, {rps:.0} calls/s",
            if py { "python" } else { "rust" },
            lat.as_secs_f64() * 1e6
        );
    }
}
