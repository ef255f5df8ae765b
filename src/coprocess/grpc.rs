//! [`GrpcClient`]: hook calls to a Tyk-compatible gRPC plugin server (`coprocess.Dispatcher`).
//!
//! Existing Tyk gRPC plugin servers work unchanged: the messages are Tyk's (`proto.rs`), the
//! methods are `/coprocess.Dispatcher/Dispatch` and `/coprocess.Dispatcher/DispatchEvent`, and
//! `coprocess_grpc_server`, `grpc_recv_max_size`, `grpc_send_max_size` and `grpc_authority` mean
//! what they mean in Tyk.
//!
//! Threads and data flow:
//! ```text
//! worker ──dispatch()──▶ convert to protobuf, spawn ──▶ private tokio runtime (1 thread)
//!    ▲                                                   one HTTP/2 connection, many streams
//!    └── reply channel + Waker ◀── HookReply ◀──────────  reply / status / deadline
//! ```
//! - **Workers never block.** `dispatch` converts the object (the caller's borrow ends there),
//!   spawns the call on the client's own runtime and returns the call id. The mio workers stay
//!   free of async code; the answer arrives like the pipe client's, as a [`HookReply`] on the
//!   worker's channel followed by `waker.wake()`.
//! - **One channel, one connection.** Every call is a stream on one multiplexed HTTP/2
//!   connection, as Tyk does (never a connection per call).
//! - **Exactly one answer per call.** A call lives in the pending table until someone removes
//!   it: its task (reply, error or deadline), `cancel` (no answer), or `shutdown` (answered
//!   `Unavailable`). Only the remover answers.
//! - **Down is not an error at start.** The channel connects lazily; a background task connects
//!   it as soon as possible and again after every disconnect, with exponential backoff (100 ms
//!   doubling to 5 s). While the server is unreachable, calls fail fast with
//!   [`CallError::Unavailable`] instead of each dialling, and the log gets one line per outage
//!   rather than one per call (Tyk issue #1762).
//! - **Deadlines are enforced here and sent to the server** (`grpc-timeout`), so a hung plugin
//!   costs a call its deadline and nothing else. Tyk has no gRPC timeout at all (issue #5543).

pub use super::{CallError, CoprocessError, HookReply};

use super::object::Object;
use super::pipe::WorkerHandle;
use super::proto::pb;
use super::proto::pb::dispatcher_client::DispatcherClient;
use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

/// gRPC's default largest received message (what Tyk gets with `grpc_recv_max_size: 0`).
pub const DEFAULT_RECV_MAX: usize = 4 << 20;
/// Threads of the private runtime. One is enough: the runtime only moves bytes between the
/// socket and the workers' channels, and this machine class has 2 cores shared with workers.
const RUNTIME_THREADS: usize = 1;
/// Longest wait for one TCP or Unix connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay after a failed connect; doubled per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Upper bound of the reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a `DispatchEvent` may take before it is given up (events have no caller waiting).
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that closes this soon after opening, before the server answered anything,
/// counts as a failed connect for the backoff.
const QUICK_CLOSE: Duration = Duration::from_secs(1);
/// A call cancelled this close to its deadline timed out.
const DEADLINE_SLACK: Duration = Duration::from_millis(5);
/// Deadline of the connection probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The method the connection probe calls: the standard gRPC health check. A server without the
/// health service answers `UNIMPLEMENTED`, which proves it is reachable just as well, and no
/// plugin code runs (unlike a `DispatchEvent`).
const PROBE_PATH: &str = "/grpc.health.v1.Health/Check";

/// Settings of the gRPC transport, from `coprocess_options` (or by hand in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcOptions {
    /// `coprocess_grpc_server` as configured: `tcp://host:port`, `unix:///path`, or `host:port`
    /// (also `dns:///host:port`, `unix:relative/path`, `[::1]:port`).
    pub target: String,
    /// Largest reply accepted from the server; 0 = 4 MiB, gRPC's default (`grpc_recv_max_size`).
    pub recv_max: usize,
    /// Largest request sent to the server; 0 = unlimited (`grpc_send_max_size`).
    pub send_max: usize,
    /// The `:authority` of every call (`grpc_authority`); `None` = `host:port` of the target, or
    /// `localhost` for Unix sockets, as grpc-go does.
    pub authority: Option<String>,
    /// Message compression: `"gzip"`, `"zstd"` or `None` (default; what Tyk sends).
    pub compression: Option<String>,
}

impl GrpcOptions {
    /// Options for `target` with Tyk's defaults (4 MiB receive limit, unlimited send, no
    /// authority override, no compression).
    pub fn new(target: impl Into<String>) -> GrpcOptions {
        GrpcOptions {
            target: target.into(),
            recv_max: 0,
            send_max: 0,
            authority: None,
            compression: None,
        }
    }
}

impl From<&crate::config::CoprocessOptions> for GrpcOptions {
    fn from(c: &crate::config::CoprocessOptions) -> GrpcOptions {
        GrpcOptions {
            target: c.grpc_server.clone().unwrap_or_default(),
            recv_max: c.grpc_recv_max_size,
            send_max: c.grpc_send_max_size,
            authority: c.grpc_authority.clone(),
            compression: c.grpc_compression.clone(),
        }
    }
}

/// Where the plugin server listens, parsed from `coprocess_grpc_server`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl Target {
    /// The default `:authority`: `host:port` for TCP, `localhost` for Unix sockets (grpc-go).
    fn default_authority(&self) -> String {
        match self {
            Target::Tcp { .. } => self.to_string(),
            Target::Unix(_) => "localhost".to_string(),
        }
    }
}

const TARGET_HELP: &str = "use tcp://host:port, host:port or unix:///path/to/socket";

/// Parses `coprocess_grpc_server` the way Tyk and grpc-go read it: `tcp://` is stripped,
/// `unix://` needs an absolute path, a bare `host:port` is taken as is, and `dns:///` or
/// `passthrough:///` prefixes are accepted (one address is used; no round robin).
fn parse_target(raw: &str) -> Result<Target, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(format!(
            "coprocess_grpc_server is empty; {TARGET_HELP} (e.g. tcp://127.0.0.1:5555)"
        ));
    }
    if let Some(rest) = s.strip_prefix("unix://") {
        if !rest.starts_with('/') {
            return Err(format!(
                "coprocess_grpc_server {s:?}: unix:// needs an absolute path, e.g. unix:///run/plugin.sock \
                 (or unix:relative/path for a path relative to the working directory)"
            ));
        }
        return Ok(Target::Unix(PathBuf::from(rest)));
    }
    if let Some(rest) = s.strip_prefix("unix:") {
        if rest.is_empty() {
            return Err(format!(
                "coprocess_grpc_server {s:?} names no socket path; {TARGET_HELP}"
            ));
        }
        return Ok(Target::Unix(PathBuf::from(rest)));
    }
    let host_port = if let Some(rest) = s.strip_prefix("tcp://") {
        rest
    } else if let Some((scheme, rest)) = s.split_once("://") {
        match scheme {
            // dns://[resolver]/host:port and passthrough:///host:port: the address is the path.
            "dns" | "passthrough" => rest.split_once('/').map(|(_, a)| a).unwrap_or_default(),
            "" => {
                return Err(format!(
                    "coprocess_grpc_server {s:?} has no scheme before \"://\"; {TARGET_HELP}"
                ))
            }
            other => {
                return Err(format!(
                    "coprocess_grpc_server {s:?}: scheme {other:?} is not supported (gRPC plugin \
                     servers are plaintext, as in Tyk); {TARGET_HELP}"
                ))
            }
        }
    } else {
        s
    };
    parse_host_port(host_port)
        .map_err(|e| format!("coprocess_grpc_server {s:?}: {e}; {TARGET_HELP}"))
}

/// `host:port`, `[v6]:port`, `:port` (= localhost, as grpc-go) or `host` (= port 443, as grpc-go).
fn parse_host_port(s: &str) -> Result<Target, String> {
    if s.is_empty() {
        return Err("no host:port".into());
    }
    if s.contains('/') {
        return Err(format!("{s:?} is not a host:port"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {s:?}"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("unexpected {after:?} after the IPv6 address")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!(
                    "IPv6 addresses need brackets: [{h}]:port, not {s:?}"
                ))
            }
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("bad port {p:?}"))?,
        None => {
            tracing::warn!(
                "coprocess_grpc_server {s:?} has no port; using 443 as grpc-go does (gRPC plugin \
                 servers usually listen elsewhere, e.g. :5555)"
            );
            443
        }
    };
    let host = if host.is_empty() { "localhost" } else { host };
    Ok(Target::Tcp {
        host: host.to_string(),
        port,
    })
}

/// A worker's reply channel and the waker of its event loop.
struct WorkerSlot {
    tx: Sender<HookReply>,
    waker: Arc<mio::Waker>,
}

/// A call that has not been answered yet.
struct Pending {
    worker: usize,
    tag: u64,
    /// The call's task, to free its HTTP/2 stream on `cancel`; set just after the spawn.
    abort: Option<AbortHandle>,
}

struct PendingTable {
    calls: HashMap<u64, Pending>,
    /// Set by `shutdown`: no call enters the table any more.
    closed: bool,
}

/// Reconnect backoff: a connect is only attempted once `next_attempt` has passed, so calls during
/// an outage fail fast instead of each dialling.
struct Backoff {
    /// Consecutive failures: failed connects, and connections that closed right after opening
    /// (a target that is not a gRPC server). Reset when the server answers.
    failures: u32,
    next_attempt: Instant,
    last_error: String,
}

impl Backoff {
    /// Records a failure, schedules the next attempt and logs: a warning for the first failure
    /// of an outage, debug lines after that (no log line per call or per attempt).
    fn fail(&mut self, target: &Target, what: &str) {
        self.failures = self.failures.saturating_add(1);
        let delay = backoff_delay(self.failures);
        self.next_attempt = Instant::now() + delay;
        self.last_error = what.to_string();
        if self.failures == 1 {
            tracing::warn!(
                "gRPC plugin server {target}: {what}; retrying with backoff (up to {BACKOFF_MAX:?});                  hook calls fail until it answers (check that the server runs and that                  coprocess_grpc_server points at it)"
            );
        } else {
            tracing::debug!(
                "gRPC plugin server {target} still down (failure {}): {what}; next attempt in {delay:?}",
                self.failures
            );
        }
    }
}

/// What the connector knows about the connection; shared with the probe task.
struct ConnState {
    target: Target,
    /// Open connections (0 or 1 in practice: the channel keeps one).
    live: AtomicUsize,
    /// Connections opened so far (for the reconnect counter of the metrics).
    opened: AtomicU64,
    /// The server has answered on the current connection.
    answered: AtomicBool,
    backoff: Mutex<Backoff>,
    /// Signalled when a connection closes (the probe task reconnects).
    lost: Notify,
}

impl ConnState {
    /// The channel's connector: dials the target unless the backoff says wait.
    async fn connect(self: Arc<ConnState>) -> io::Result<hyper_util::rt::TokioIo<PluginStream>> {
        {
            let b = self.backoff.lock();
            let now = Instant::now();
            if now < b.next_attempt {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "gRPC plugin server {} is unreachable ({}); next connect attempt in {} ms",
                        self.target,
                        b.last_error,
                        (b.next_attempt - now).as_millis()
                    ),
                ));
            }
        }
        let dialled = tokio::time::timeout(CONNECT_TIMEOUT, self.dial()).await;
        let result = match dialled {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {CONNECT_TIMEOUT:?}"),
            )),
        };
        match result {
            Ok(io) => {
                self.live.fetch_add(1, Ordering::AcqRel);
                self.opened.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("connected to gRPC plugin server {}", self.target);
                Ok(hyper_util::rt::TokioIo::new(PluginStream {
                    io,
                    _live: LiveGuard {
                        state: Arc::clone(&self),
                        opened: Instant::now(),
                    },
                }))
            }
            Err(e) => {
                self.backoff
                    .lock()
                    .fail(&self.target, &format!("cannot connect: {e}"));
                Err(e)
            }
        }
    }

    async fn dial(&self) -> io::Result<Io> {
        match &self.target {
            Target::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                // Hook calls are small request/response exchanges: never wait for Nagle.
                s.set_nodelay(true)?;
                Ok(Io::Tcp(s))
            }
            Target::Unix(path) => Ok(Io::Unix(UnixStream::connect(path).await?)),
        }
    }

    /// The server answered (a call or the probe): the outage, if any, is over.
    fn mark_answered(&self) {
        // A plain load first: this runs on every successful call.
        if self.answered.load(Ordering::Acquire) || self.answered.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut b = self.backoff.lock();
        if b.failures > 0 {
            tracing::info!(
                "gRPC plugin server {} answers again (after {} failure(s))",
                self.target,
                b.failures
            );
        } else {
            tracing::debug!("gRPC plugin server {} answers", self.target);
        }
        b.failures = 0;
    }

    /// How long until a connect may be attempted (zero = now).
    fn wait_before_attempt(&self) -> Duration {
        self.backoff
            .lock()
            .next_attempt
            .saturating_duration_since(Instant::now())
    }
}

/// 100 ms, 200 ms, 400 ms, ... up to 5 s, each with up to 20% jitter so that a fleet of gateways
/// does not reconnect in lockstep after a plugin server restart.
fn backoff_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = base.mul_f64(f64::from(nanos % 1000) / 5000.0);
    base.saturating_sub(jitter)
}

/// Tracks one open connection: when its stream is dropped (the HTTP/2 connection ended) it
/// updates the state and wakes the probe task to reconnect.
struct LiveGuard {
    state: Arc<ConnState>,
    opened: Instant,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let st = &self.state;
        if st.live.fetch_sub(1, Ordering::AcqRel) > 1 {
            // Another connection is open (a reconnect raced the old connection's end, or two
            // dials raced): the server state is that connection's, not this one's to clear.
            tracing::debug!(
                "extra connection to gRPC plugin server {} closed",
                st.target
            );
            return;
        }
        let answered = st.answered.swap(false, Ordering::AcqRel);
        let lived = self.opened.elapsed();
        if !answered && lived < QUICK_CLOSE {
            // Accepted and closed without ever answering: something that is not a gRPC server
            // (or one that refuses us). Back off as for a failed connect.
            st.backoff.lock().fail(
                &st.target,
                &format!(
                    "the connection closed {} ms after opening without an answer (is it a \
                     gRPC server? plaintext HTTP/2 is expected)",
                    lived.as_millis()
                ),
            );
        } else {
            tracing::warn!(
                "connection to gRPC plugin server {} closed; reconnecting",
                st.target
            );
        }
        st.lost.notify_one();
    }
}

enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The connection's byte stream: TCP or Unix, with the live-connection guard.
struct PluginStream {
    io: Io,
    _live: LiveGuard,
}

impl AsyncRead for PluginStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PluginStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// `grpc.health.v1.HealthCheckRequest`, for the connection probe.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`, for the connection probe.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

struct Inner {
    target: Target,
    handle: Handle,
    client: DispatcherClient<Channel>,
    channel: Channel,
    conn: Arc<ConnState>,
    workers: RwLock<Vec<WorkerSlot>>,
    pending: Mutex<PendingTable>,
    next_id: AtomicU64,
    send_max: usize,
    recv_max: usize,
    shutting_down: AtomicBool,
}

/// The gRPC transport: one HTTP/2 channel to a `coprocess.Dispatcher` server, driven by a small
/// private tokio runtime. See the module docs for the design.
pub struct GrpcClient {
    inner: Arc<Inner>,
    runtime: Mutex<Option<Runtime>>,
}

impl GrpcClient {
    /// Starts the runtime (one thread, `pipegate-grpc`) and the channel. The server does not
    /// have to be up: the channel connects in the background and calls fail with
    /// [`CallError::Unavailable`] until it is reachable.
    ///
    /// Errors are configuration errors only: an unparsable target, authority or compression
    /// name, or a runtime that cannot start.
    pub fn start(opts: GrpcOptions) -> Result<Arc<GrpcClient>, CoprocessError> {
        let target = parse_target(&opts.target).map_err(CoprocessError::Config)?;
        let compression = match opts.compression.as_deref().map(str::trim) {
            None | Some("") | Some("none") => None,
            Some(c) if c.eq_ignore_ascii_case("gzip") => Some(CompressionEncoding::Gzip),
            Some(c) if c.eq_ignore_ascii_case("zstd") => Some(CompressionEncoding::Zstd),
            Some(other) => {
                return Err(CoprocessError::Config(format!(
                    "gRPC compression {other:?} is not supported; use \"gzip\", \"zstd\" or leave it unset"
                )))
            }
        };
        let authority = opts
            .authority
            .clone()
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| target.default_authority());
        let uri: Uri = format!("http://{authority}").parse().map_err(|e| {
            CoprocessError::Config(format!(
                "grpc_authority {authority:?} is not a valid host[:port] ({e}); fix or remove it"
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("pipegate-grpc")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| {
                CoprocessError::Config(format!("cannot start the gRPC client runtime: {e}"))
            })?;
        let conn = Arc::new(ConnState {
            target: target.clone(),
            live: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            answered: AtomicBool::new(false),
            backoff: Mutex::new(Backoff {
                failures: 0,
                next_attempt: Instant::now(),
                last_error: String::new(),
            }),
            lost: Notify::new(),
        });
        let endpoint = Endpoint::from(uri)
            .user_agent(format!("pipegate/{}", env!("CARGO_PKG_VERSION")))
            .map_err(|e| CoprocessError::Config(format!("gRPC user agent: {e}")))?;
        let connector_state = Arc::clone(&conn);
        let channel = {
            // The channel spawns its connection worker on the current runtime.
            let _entered = runtime.enter();
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                Arc::clone(&connector_state).connect()
            }))
        };
        let recv_max = if opts.recv_max == 0 {
            DEFAULT_RECV_MAX
        } else {
            opts.recv_max
        };
        let send_max = if opts.send_max == 0 {
            usize::MAX
        } else {
            opts.send_max
        };
        let mut client = DispatcherClient::new(channel.clone())
            .max_decoding_message_size(recv_max)
            .max_encoding_message_size(send_max);
        if let Some(enc) = compression {
            client = client.send_compressed(enc).accept_compressed(enc);
        }
        let inner = Arc::new(Inner {
            target,
            handle: runtime.handle().clone(),
            client,
            channel,
            conn,
            workers: RwLock::new(Vec::new()),
            pending: Mutex::new(PendingTable {
                calls: HashMap::with_capacity(1024),
                closed: false,
            }),
            next_id: AtomicU64::new(1),
            send_max,
            recv_max,
            shutting_down: AtomicBool::new(false),
        });
        runtime.spawn(keep_connected(Arc::clone(&inner)));
        tracing::info!(
            "gRPC plugin transport started for {} (authority {authority}, receive limit {recv_max} bytes{})",
            inner.target,
            match compression {
                Some(c) => format!(", {c} compression"),
                None => String::new(),
            }
        );
        Ok(Arc::new(GrpcClient {
            inner,
            runtime: Mutex::new(Some(runtime)),
        }))
    }

    /// Registers a gateway worker (a mio event loop). Replies to its calls arrive on the returned
    /// channel, after which the client calls `waker.wake()`.
    pub fn register_worker(&self, waker: Arc<mio::Waker>) -> WorkerHandle {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut w = self.inner.workers.write();
        w.push(WorkerSlot { tx, waker });
        WorkerHandle {
            id: w.len() - 1,
            replies: rx,
        }
    }

    /// Starts a `Dispatch` call and returns its id at once; exactly one [`HookReply`] with this id
    /// and `tag` arrives on the worker's channel: the server's object, or
    /// [`CallError::Timeout`] at `deadline`, [`CallError::Unavailable`] while the server is
    /// unreachable, [`CallError::Protocol`] for size limits and other gRPC statuses,
    /// [`CallError::PluginError`] when the server's handler failed (`UNKNOWN`).
    ///
    /// Never blocks: the object is converted here and the call runs on the client's runtime.
    pub fn dispatch(&self, worker: usize, tag: u64, deadline: Instant, object: &Object) -> u64 {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        if deadline <= Instant::now() {
            inner.answer(id, worker, tag, Err(CallError::Timeout));
            return id;
        }
        let msg = pb::Object::from(object);
        let body_files = BodyFiles::of(object);
        if body_files.is_none() {
            if let Err(e) = inner.check_send_size(&msg) {
                inner.answer(id, worker, tag, Err(e));
                return id;
            }
        }
        {
            let mut table = inner.pending.lock();
            if table.closed {
                drop(table);
                inner.answer(id, worker, tag, Err(CallError::Unavailable));
                return id;
            }
            table.calls.insert(
                id,
                Pending {
                    worker,
                    tag,
                    abort: None,
                },
            );
        }
        let task = inner
            .handle
            .spawn(run_call(Arc::clone(inner), id, deadline, msg, body_files));
        if let Some(p) = inner.pending.lock().calls.get_mut(&id) {
            p.abort = Some(task.abort_handle());
        }
        id
    }

    /// Forgets a call the worker gave up on (its client went away): no reply is sent for it and
    /// its HTTP/2 stream is reset, so the server sees the cancellation.
    pub fn cancel(&self, call_id: u64) {
        let p = self.inner.pending.lock().calls.remove(&call_id);
        if let Some(abort) = p.and_then(|p| p.abort) {
            abort.abort();
        }
    }

    /// Sends an event (`DispatchEvent`, JSON payload). Fire and forget: failures are logged.
    pub fn send_event(&self, payload: &str) {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let mut client = inner.client.clone();
        let target = inner.target.clone();
        let event = pb::Event {
            payload: payload.to_string(),
        };
        inner.handle.spawn(async move {
            let mut req = tonic::Request::new(event);
            req.set_timeout(EVENT_TIMEOUT);
            match tokio::time::timeout(EVENT_TIMEOUT, client.dispatch_event(req)).await {
                Ok(Ok(_)) => {}
                // An outage is logged once by the connector, not once per event.
                Ok(Err(status)) if status.code() == Code::Unavailable => tracing::debug!(
                    "gRPC plugin server {target} down; event dropped: {}",
                    describe_status(&status)
                ),
                Ok(Err(status)) => tracing::warn!(
                    "gRPC plugin server {target}: DispatchEvent failed: {}",
                    describe_status(&status)
                ),
                Err(_) => tracing::warn!(
                    "gRPC plugin server {target}: DispatchEvent got no answer within {EVENT_TIMEOUT:?}"
                ),
            }
        });
    }

    /// Whether the server implements `hook`. A gRPC server has one `Dispatch` method for every
    /// hook and no way to list them, so this is always true (the server answers unknown hooks
    /// itself, usually by echoing the object).
    pub fn implements(&self, _hook: &str) -> bool {
        true
    }

    /// Connections opened to the plugin server after the first one (reconnects after a lost
    /// connection or a server restart).
    pub fn reconnects(&self) -> u64 {
        self.inner
            .conn
            .opened
            .load(Ordering::Relaxed)
            .saturating_sub(1)
    }

    /// Whether the channel is connected, as far as the client knows: a connection is open and the
    /// server has answered on it (a call or the background probe). A server that died without
    /// closing the connection is noticed on the next call.
    pub fn is_healthy(&self) -> bool {
        let conn = &self.inner.conn;
        !self.inner.shutting_down.load(Ordering::Acquire)
            && conn.live.load(Ordering::Acquire) > 0
            && conn.answered.load(Ordering::Acquire)
    }

    /// Stops the client: every pending call is answered [`CallError::Unavailable`], later calls
    /// are answered so at once, and the runtime (with its connection) is stopped without
    /// waiting. Idempotent.
    pub fn shutdown(&self) {
        let inner = &self.inner;
        if inner.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let drained: Vec<(u64, Pending)> = {
            let mut table = inner.pending.lock();
            table.closed = true;
            table.calls.drain().collect()
        };
        for (id, p) in drained {
            inner.answer(id, p.worker, p.tag, Err(CallError::Unavailable));
        }
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
        tracing::info!("gRPC plugin transport for {} stopped", inner.target);
    }
}

impl Drop for GrpcClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    /// Delivers a reply and wakes the worker (callers make sure each call is answered once).
    fn answer(&self, call_id: u64, worker: usize, tag: u64, result: Result<Object, CallError>) {
        let workers = self.workers.read();
        let Some(slot) = workers.get(worker) else {
            tracing::error!("gRPC reply for unknown worker {worker} dropped (call {call_id})");
            return;
        };
        if slot
            .tx
            .send(HookReply {
                call_id,
                tag,
                result,
            })
            .is_ok()
        {
            if let Err(e) = slot.waker.wake() {
                tracing::error!("cannot wake worker {worker}: {e}");
            }
        }
    }

    /// Answers `id` if it is still pending (not cancelled, not already answered).
    fn finish(&self, id: u64, result: Result<Object, CallError>) {
        let p = self.pending.lock().calls.remove(&id);
        if let Some(p) = p {
            self.answer(id, p.worker, p.tag, result);
        }
    }

    /// Refuses a request over `grpc_send_max_size` before it is sent, with a message saying
    /// what to change (tonic would fail it too, less clearly).
    fn check_send_size(&self, msg: &pb::Object) -> Result<(), CallError> {
        if self.send_max == usize::MAX {
            return Ok(());
        }
        let len = msg.encoded_len();
        if len > self.send_max {
            return Err(CallError::Protocol(format!(
                "hook request is {len} bytes, over grpc_send_max_size ({} bytes); raise \
                 grpc_send_max_size (and the plugin server's receive limit) or set raw_body_only \
                 on the hook to send the body once",
                self.send_max
            )));
        }
        Ok(())
    }

    /// Maps a failed call's status to the chain's error.
    fn call_error(&self, status: &Status) -> CallError {
        let msg = status.message();
        match status.code() {
            Code::Unavailable => CallError::Unavailable,
            Code::DeadlineExceeded => CallError::Timeout,
            Code::OutOfRange if msg.contains("decoded message length too large") => {
                CallError::Protocol(format!(
                    "the plugin server's reply is over grpc_recv_max_size ({} bytes): {msg}; \
                     raise grpc_recv_max_size",
                    self.recv_max
                ))
            }
            // A status the server did not send (no trailers) whose cause is the connection
            // itself: the server went away mid-call.
            Code::Unknown | Code::Internal | Code::Cancelled if is_transport_error(status) => {
                CallError::Unavailable
            }
            // What servers answer when the handler raised or returned an error.
            Code::Unknown => CallError::PluginError(msg.to_string()),
            _ => CallError::Protocol(format!(
                "gRPC plugin server {} answered {}",
                self.target,
                describe_status(status)
            )),
        }
    }
}

/// Whether a status came from the connection (tonic wraps those in its transport error, e.g.
/// `UNKNOWN "transport error"` when the server dies mid-call) rather than from the server.
fn is_transport_error(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>())
}

fn describe_status(status: &Status) -> String {
    let msg = status.message();
    if msg.is_empty() {
        format!("status {:?}", status.code())
    } else {
        format!("status {:?}: {msg}", status.code())
    }
}

/// Bodies handed over as files (the pipe protocol's `raw_body_file`), which gRPC must send
/// inline: read on the runtime, never on the worker.
#[derive(Default)]
struct BodyFiles {
    request: Option<PathBuf>,
    response: Option<PathBuf>,
}

impl BodyFiles {
    fn of(o: &Object) -> Option<BodyFiles> {
        let request = o
            .request
            .as_ref()
            .filter(|r| r.raw_body.is_none())
            .and_then(|r| r.raw_body_file.as_ref())
            .map(|f| PathBuf::from(&f.path));
        let response = o
            .response
            .as_ref()
            .filter(|r| r.raw_body.is_none())
            .and_then(|r| r.raw_body_file.as_ref())
            .map(|f| PathBuf::from(&f.path));
        (request.is_some() || response.is_some()).then_some(BodyFiles { request, response })
    }

    fn load_into(self, msg: &mut pb::Object) -> Result<(), CallError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| {
                CallError::Protocol(format!("cannot read body file {}: {e}", p.display()))
            })
        };
        if let (Some(p), Some(r)) = (&self.request, msg.request.as_mut()) {
            r.raw_body = read(p)?;
        }
        if let (Some(p), Some(r)) = (&self.response, msg.response.as_mut()) {
            r.raw_body = read(p)?;
        }
        Ok(())
    }
}

/// One `Dispatch` call, from spawn to answer.
async fn run_call(
    inner: Arc<Inner>,
    id: u64,
    deadline: Instant,
    mut msg: pb::Object,
    body_files: Option<BodyFiles>,
) {
    if let Some(files) = body_files {
        if let Err(e) = files
            .load_into(&mut msg)
            .and_then(|()| inner.check_send_size(&msg))
        {
            inner.finish(id, Err(e));
            return;
        }
    }
    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
        inner.finish(id, Err(CallError::Timeout));
        return;
    };
    let mut client = inner.client.clone();
    let mut req = tonic::Request::new(msg);
    req.set_timeout(left);
    let result = match tokio::time::timeout_at(
        tokio::time::Instant::from_std(deadline),
        client.dispatch(req),
    )
    .await
    {
        Err(_) => Err(CallError::Timeout),
        Ok(Ok(resp)) => Ok(Object::from(resp.into_inner())),
        // tonic enforces the grpc-timeout it sends, rounded down to its unit, so it can
        // fire just before our own timer: a cancellation at the deadline is the deadline.
        Ok(Err(status))
            if status.code() == Code::Cancelled && Instant::now() + DEADLINE_SLACK >= deadline =>
        {
            Err(CallError::Timeout)
        }
        Ok(Err(status)) => {
            let e = inner.call_error(&status);
            tracing::debug!(
                call = id,
                "gRPC Dispatch failed: {}",
                describe_status(&status)
            );
            Err(e)
        }
    };
    inner.finish(id, result);
}

/// Keeps the channel connected: after start and after every disconnect, probes (respecting the
/// connect backoff) until the server answers, then sleeps until the connection closes.
async fn keep_connected(inner: Arc<Inner>) {
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(PROBE_PATH);
    loop {
        loop {
            if inner.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let wait = inner.conn.wait_before_attempt();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let mut grpc = tonic::client::Grpc::new(inner.channel.clone());
            let probe = async {
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let codec =
                    tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
                let mut req = tonic::Request::new(HealthCheckRequest {
                    service: String::new(),
                });
                req.set_timeout(PROBE_TIMEOUT);
                grpc.unary(req, path.clone(), codec).await
            };
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                // Any answer from the server, even UNIMPLEMENTED, means it is there.
                Ok(Ok(_)) => break,
                Ok(Err(status))
                    if !is_transport_error(&status) && status.code() != Code::Unavailable =>
                {
                    break
                }
                // The connector logged and scheduled the next attempt; wait for it.
                _ => {
                    if inner.conn.wait_before_attempt().is_zero() {
                        tokio::time::sleep(BACKOFF_BASE).await;
                    }
                }
            }
        }
        inner.conn.mark_answered();
        // `Notify` keeps a permit, so a close that happened meanwhile is not missed.
        inner.conn.lost.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> Target {
        Target::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn targets_parse_like_tyk() {
        for (raw, want) in [
            ("tcp://127.0.0.1:5555", tcp("127.0.0.1", 5555)),
            ("localhost:9000", tcp("localhost", 9000)),
            ("tcp://localhost:3000", tcp("localhost", 3000)),
            (" tcp://[::1]:5555 ", tcp("::1", 5555)),
            (":5555", tcp("localhost", 5555)),
            ("dns:///plugins.svc:5555", tcp("plugins.svc", 5555)),
            ("dns://8.8.8.8/plugins.svc:5555", tcp("plugins.svc", 5555)),
            ("passthrough:///10.0.0.1:1", tcp("10.0.0.1", 1)),
            ("plugin-host", tcp("plugin-host", 443)),
            (
                "unix:///run/plugin.sock",
                Target::Unix(PathBuf::from("/run/plugin.sock")),
            ),
            ("unix:rel/p.sock", Target::Unix(PathBuf::from("rel/p.sock"))),
            ("unix:/abs.sock", Target::Unix(PathBuf::from("/abs.sock"))),
        ] {
            assert_eq!(parse_target(raw), Ok(want), "{raw}");
        }
    }

    #[test]
    fn bad_targets_say_what_to_do() {
        for raw in [
            "",
            "://invalid",
            "http://localhost:5555",
            "unix://relative.sock",
            "unix:",
            "localhost:notaport",
            "localhost:0",
            "localhost:70000",
            "::1:5555",
            "[::1",
            "tcp://host:1/path",
        ] {
            let e = parse_target(raw).expect_err(raw);
            assert!(
                e.contains("coprocess_grpc_server") && (e.contains("tcp://") || e.contains("unix")),
                "{raw}: {e}"
            );
        }
    }

    #[test]
    fn default_authority_follows_grpc_go() {
        assert_eq!(tcp("127.0.0.1", 5555).default_authority(), "127.0.0.1:5555");
        assert_eq!(tcp("::1", 1).default_authority(), "[::1]:1");
        assert_eq!(
            Target::Unix(PathBuf::from("/x")).default_authority(),
            "localhost"
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_bounded_jitter() {
        let d1 = backoff_delay(1);
        assert!(
            d1 <= BACKOFF_BASE && d1 >= BACKOFF_BASE.mul_f64(0.79),
            "{d1:?}"
        );
        let d3 = backoff_delay(3);
        assert!(
            d3 <= BACKOFF_BASE * 4 && d3 >= (BACKOFF_BASE * 4).mul_f64(0.79),
            "{d3:?}"
        );
        for f in [7, 20, u32::MAX] {
            let d = backoff_delay(f);
            assert!(
                d <= BACKOFF_MAX && d >= BACKOFF_MAX.mul_f64(0.79),
                "{f}: {d:?}"
            );
        }
    }

    #[test]
    fn bad_options_are_config_errors() {
        let mut o = GrpcOptions::new("tcp://127.0.0.1:1");
        o.compression = Some("brotli".into());
        assert!(
            matches!(GrpcClient::start(o), Err(CoprocessError::Config(m)) if m.contains("gzip"))
        );
        let mut o = GrpcOptions::new("tcp://127.0.0.1:1");
        o.authority = Some("bad authority with spaces".into());
        assert!(
            matches!(GrpcClient::start(o), Err(CoprocessError::Config(m)) if m.contains("grpc_authority"))
        );
        assert!(matches!(
            GrpcClient::start(GrpcOptions::new("http://x:1")),
            Err(CoprocessError::Config(_))
        ));
    }
}
