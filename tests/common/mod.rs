//! Shared harness for pipegate's integration tests: they start the real `pipegate` binary and talk
//! to it over real sockets, so what they check is what a client and an upstream would see.
//!
//! Pieces, each usable on its own:
//! - [`Sandbox`]: a private temp directory per test holding `tyk.conf` and `apps/`; removed on drop
//!   (kept, with its path printed, when the test fails). [`base_conf`], [`conf_with`],
//!   [`keyless_api`] and [`merge`] build the JSON written into it.
//! - [`Gateway`]: the gateway process. It is started on port 0 and its address is read from its
//!   own "pipegate listening on ..." log line, so parallel tests never race for ports. Its stderr
//!   is collected by a thread ([`LogSink`]) so tests can wait for and assert on log lines; the
//!   process is killed on drop and its log is printed when the test failed. Dropping it also
//!   fails the test if the gateway logged a panic (a dead worker), whatever the test checked.
//! - [`EchoUpstream`]: the `pipegate echo-upstream` process (see src/demo.rs).
//! - [`ScriptedUpstream`]: an in-test upstream whose behaviour is a closure per connection, for
//!   upstreams that misbehave in ways the echo upstream cannot (never answer, reset mid-body,
//!   send odd headers). It records every request it reads.
//! - [`Client`]: a raw TCP client that writes exact bytes and reads exactly one response at a time
//!   with its real framing (Content-Length, chunked, close-delimited, no body for HEAD/1xx/204/
//!   304), so keep-alive and pipelining are tested on one connection. [`req`] builds well-formed
//!   requests; malformed ones are written as byte strings.
//!
//! - [`Metrics`]: a strict parser of Prometheus text exposition (0.0.4) for `/metrics`, with
//!   [`Gateway::metrics`] and [`Gateway::wait_metrics`] to scrape it.
//!
//! Every blocking read has a timeout ([`IO_TIMEOUT`]), so a gateway that hangs fails the test
//! instead of hanging it. Nothing here asserts on timing.

// Each test file uses a different subset of this harness.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How long a spawned process may take to report its listening address. Generous: the tests run
/// on a busy two-core machine next to compilers.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest silence tolerated on a socket read before the read fails the test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Host header [`req`] sends unless told otherwise.
pub const DEFAULT_HOST: &str = "gateway.test";

/// The pipegate binary built by cargo for this test run.
pub fn pipegate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pipegate")
}

// ---------------------------------------------------------------------------------------------
// Configuration files
// ---------------------------------------------------------------------------------------------

static SANDBOX_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A private directory for one test: `tyk.conf` plus `apps/`. Removed on drop unless the test is
/// failing, in which case it is kept and its path printed, so the configuration can be inspected.
pub struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// Creates `<tmp>/pipegate-it-<tag>-<pid>-<seq>-<nanos>/apps/`.
    pub fn new(tag: &str) -> Sandbox {
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seq = SANDBOX_SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "pipegate-it-{tag}-{}-{seq}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(dir.join("apps"))
            .unwrap_or_else(|e| panic!("cannot create sandbox {}: {e}", dir.display()));
        Sandbox { dir }
    }

    /// The sandbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<sandbox>/tyk.conf`.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.join("tyk.conf")
    }

    /// `<sandbox>/apps`, the `app_path` of [`base_conf`].
    pub fn apps_dir(&self) -> PathBuf {
        self.dir.join("apps")
    }

    /// Writes `conf` as `tyk.conf`.
    pub fn write_conf(&self, conf: &Value) -> PathBuf {
        self.write_file("tyk.conf", pretty(conf))
    }

    /// Writes `apps/<name>.json`. The file is written under another name and renamed into place,
    /// so a reload running at the same moment never reads half a file.
    pub fn write_api(&self, name: &str, api: &Value) -> PathBuf {
        let path = self.apps_dir().join(format!("{name}.json"));
        let tmp = self.apps_dir().join(format!(".{name}.json.tmp"));
        fs::write(&tmp, pretty(api))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("cannot rename {} into place: {e}", tmp.display()));
        path
    }

    /// Removes `apps/<name>.json`.
    pub fn remove_api(&self, name: &str) {
        let path = self.apps_dir().join(format!("{name}.json"));
        fs::remove_file(&path).unwrap_or_else(|e| panic!("cannot remove {}: {e}", path.display()));
    }

    /// Writes any file below the sandbox (parent directories are created).
    pub fn write_file(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "[harness] test failed; sandbox kept at {}",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_else(|e| panic!("cannot serialise {v}: {e}"))
}

/// A minimal tyk.conf for tests: loopback, port 0 (the gateway logs the port it got), `apps/` as
/// app_path, two workers (so cross-worker behaviour is exercised on a two-core machine).
pub fn base_conf() -> Value {
    json!({
        "listen_address": "127.0.0.1",
        "listen_port": 0,
        "secret": "integration-test-secret",
        "app_path": "apps/",
        "pipegate": { "workers": 2 }
    })
}

/// [`base_conf`] with `patch` deep-merged over it (see [`merge`]).
pub fn conf_with(patch: Value) -> Value {
    let mut conf = base_conf();
    merge(&mut conf, patch);
    conf
}

/// Deep-merges `patch` into `target`: objects merge key by key, `null` removes a key, anything
/// else replaces.
pub fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else if let Some(slot) = t.get_mut(&k) {
                    merge(slot, v);
                } else {
                    t.insert(k, v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

/// A keyless Tyk classic API definition with `strip_listen_path: true`.
pub fn keyless_api(api_id: &str, listen_path: &str, target_url: &str) -> Value {
    json!({
        "name": format!("test API {api_id}"),
        "api_id": api_id,
        "org_id": "test-org",
        "active": true,
        "use_keyless": true,
        "proxy": {
            "listen_path": listen_path,
            "target_url": target_url,
            "strip_listen_path": true
        }
    })
}

/// An address nothing listens on (a port just bound and released), for "connection refused".
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
    l.local_addr()
        .unwrap_or_else(|e| panic!("local_addr of a fresh listener: {e}"))
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Lines a child process wrote to one of its pipes, collected by a background thread (ANSI colour
/// codes removed) and observable while the process runs.
#[derive(Clone, Default)]
pub struct LogSink {
    inner: Arc<(Mutex<LogState>, Condvar)>,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    closed: bool,
}

impl LogSink {
    fn collect(mut pipe: impl Read + Send + 'static, name: &str) -> LogSink {
        let sink = LogSink::default();
        let s = sink.clone();
        let spawned = thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || {
                let mut pending: Vec<u8> = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=nl).collect();
                        s.push(strip_ansi(&String::from_utf8_lossy(&line[..nl])));
                    }
                }
                if !pending.is_empty() {
                    s.push(strip_ansi(&String::from_utf8_lossy(&pending)));
                }
                let (m, cv) = &*s.inner;
                lock(m).closed = true;
                cv.notify_all();
            });
        if let Err(e) = spawned {
            panic!("cannot spawn the log collector thread: {e}");
        }
        sink
    }

    fn push(&self, line: String) {
        let (m, cv) = &*self.inner;
        lock(m).lines.push(line);
        cv.notify_all();
    }

    /// Number of lines so far; pass it to [`LogSink::wait_for`] to look only at later lines.
    pub fn mark(&self) -> usize {
        lock(&self.inner.0).lines.len()
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.inner.0).lines.clone()
    }

    /// All lines so far, joined with newlines.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Lines so far that contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        lock(&self.inner.0)
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the pipe has closed (the process and everything that inherited the pipe
    /// exited) and every line is collected; returns whether it closed within `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let (m, cv) = &*self.inner;
        let mut st = lock(m);
        while !st.closed {
            let now = Instant::now();
            if now >= end {
                return false;
            }
            st = cv
                .wait_timeout(st, end - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        true
    }

    /// Waits until a line at index `from` or later contains `needle`; returns it, or `None` on
    /// timeout or when the pipe closed without such a line.
    pub fn wait_for(&self, from: usize, needle: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        let (m, cv) = &*self.inner;
        let mut st = lock(m);
        loop {
            if let Some(l) = st.lines.iter().skip(from).find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if st.closed || now >= end {
                return None;
            }
            st = cv
                .wait_timeout(st, end - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes ANSI escape sequences (`ESC [ ... letter`) that the log formatter adds.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c2 in chars.by_ref() {
                if ('@'..='~').contains(&c2) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Spawns `cmd` with piped stdout/stderr collected into sinks. On Linux the child is also asked
/// to be killed if the spawning thread dies, so a test binary killed mid-run leaves no gateway
/// behind (normal test ends kill it through `Drop` first).
fn spawn_logged(mut cmd: Command, name: &str) -> (Child, LogSink, LogSink) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1");
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
        // is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", pipegate_bin()));
    let stdout = match child.stdout.take() {
        Some(p) => LogSink::collect(p, &format!("{name}-stdout")),
        None => LogSink::default(),
    };
    let stderr = match child.stderr.take() {
        Some(p) => LogSink::collect(p, &format!("{name}-stderr")),
        None => LogSink::default(),
    };
    (child, stdout, stderr)
}

/// Sends `sig` to a child that has not been reaped yet.
fn signal_child(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id())
        .unwrap_or_else(|_| panic!("pid {} does not fit pid_t", child.id()));
    // SAFETY: kill(2) has no memory-safety preconditions. The child has not been waited for, so
    // its pid cannot have been reused by another process.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        panic!("kill({pid}, {sig}) failed: {}", io::Error::last_os_error());
    }
}

/// Waits for the address a child reports in a line containing `marker` followed by the address.
fn wait_for_addr(
    child: &mut Child,
    sink: &LogSink,
    marker: &str,
    what: &str,
    diag: &LogSink,
) -> Result<SocketAddr, String> {
    let end = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(line) = sink.wait_for(0, marker, Duration::from_millis(100)) {
            let rest = line.split_once(marker).map(|(_, r)| r).unwrap_or_default();
            let addr_text = rest.split_whitespace().next().unwrap_or_default();
            return addr_text
                .parse()
                .map_err(|e| format!("{what}: cannot parse the address in {line:?}: {e}"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited with {status} before listening; its output:\n{}\n{}",
                sink.text(),
                diag.text()
            ));
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{what} did not report {marker:?} within {STARTUP_TIMEOUT:?}; its output:\n{}\n{}",
                sink.text(),
                diag.text()
            ));
        }
    }
}

/// What Rust prints when a thread panics; in the gateway's log it means a worker died.
const PANIC_MARKER: &str = "panicked at";

/// A running `pipegate --conf ...` process. Killed on drop; when the test is failing its stderr
/// is printed first.
///
/// A panic in the gateway is always a bug (a worker thread that dies takes its connections and
/// its listener with it, and nothing restarts it), so dropping a `Gateway` whose log reports one
/// fails the test, whatever the test itself checked.
pub struct Gateway {
    child: Child,
    addr: SocketAddr,
    stderr: LogSink,
    stdout: LogSink,
    exit: Option<ExitStatus>,
}

impl Gateway {
    /// Starts the gateway on the sandbox's tyk.conf and waits until it listens.
    pub fn start(sandbox: &Sandbox) -> Gateway {
        Gateway::try_start(&sandbox.conf_path(), &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the gateway on `conf` with extra environment variables (e.g. `RUST_LOG`); the error
    /// carries the gateway's output when it exits or stays silent.
    pub fn try_start(conf: &Path, env: &[(&str, &str)]) -> Result<Gateway, String> {
        let mut cmd = Command::new(pipegate_bin());
        cmd.arg("--conf").arg(conf).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (mut child, stdout, stderr) = spawn_logged(cmd, "gateway");
        let addr = wait_for_addr(
            &mut child,
            &stderr,
            "pipegate listening on ",
            "gateway",
            &stdout,
        )?;
        Ok(Gateway {
            child,
            addr,
            stderr,
            stdout,
            exit: None,
        })
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the gateway process (from /proc), for leak checks.
    pub fn fd_count(&self) -> usize {
        fd_count(self.child.id())
    }

    /// The address the gateway listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new raw connection to the gateway.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends `request` on a new connection and reads one response.
    pub fn send(&self, request: &[u8]) -> Response {
        let mut c = self.client();
        c.request(request)
    }

    /// `GET path` with `Connection: close` on a new connection.
    pub fn get(&self, path: &str) -> Response {
        self.send(&req("GET", path).close().to_bytes())
    }

    /// The gateway's stderr (its log).
    pub fn log(&self) -> &LogSink {
        &self.stderr
    }

    /// Log lines reporting a panic so far.
    pub fn panics(&self) -> Vec<String> {
        self.stderr
            .lines()
            .into_iter()
            .filter(|l| l.contains(PANIC_MARKER))
            .collect()
    }

    /// Fails the test if the log so far reports a panic. (Log lines arrive asynchronously; the
    /// check on drop, after the process is gone, sees every line.)
    pub fn assert_no_panics(&self) {
        let p = self.panics();
        assert!(
            p.is_empty(),
            "the gateway panicked: {p:?}\nfull log:\n{}",
            self.stderr.text()
        );
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, sig: libc::c_int) {
        assert!(self.exit.is_none(), "the gateway has already exited");
        signal_child(&self.child, sig);
    }

    /// SIGHUP: reload the configuration.
    pub fn reload(&self) {
        self.signal(libc::SIGHUP);
    }

    /// SIGTERM: graceful shutdown.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exit {
            return Some(s);
        }
        let end = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.exit = Some(s);
                    return Some(s);
                }
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(20)),
                Ok(None) => return None,
                Err(e) => panic!("waiting for the gateway: {e}"),
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "[harness] gateway {} log:\n{}\n{}",
                self.addr,
                self.stderr.text(),
                self.stdout.text()
            );
            return;
        }
        // Bounded: a plugin child that inherited stderr may keep the pipe open a little longer.
        self.stderr.wait_closed(Duration::from_secs(5));
        self.assert_no_panics();
    }
}

/// A running `pipegate echo-upstream` process (src/demo.rs): answers every request with a JSON
/// description of it. Killed on drop.
pub struct EchoUpstream {
    child: Child,
    addr: SocketAddr,
    stderr: LogSink,
}

impl EchoUpstream {
    /// Starts the echo upstream on a free loopback port.
    pub fn start() -> EchoUpstream {
        let mut cmd = Command::new(pipegate_bin());
        cmd.args(["echo-upstream", "--listen", "127.0.0.1:0"]);
        let (mut child, stdout, stderr) = spawn_logged(cmd, "echo-upstream");
        let addr = wait_for_addr(
            &mut child,
            &stdout,
            "listening on ",
            "echo-upstream",
            &stderr,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        EchoUpstream {
            child,
            addr,
            stderr,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` (no trailing slash, so a base path can be appended).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() && self.stderr.mark() > 0 {
            eprintln!("[harness] echo-upstream log:\n{}", self.stderr.text());
        }
    }
}

/// Runs `pipegate check --conf <conf>` to completion.
pub fn run_check(conf: &Path) -> Output {
    Command::new(pipegate_bin())
        .arg("check")
        .arg("--conf")
        .arg(conf)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run pipegate check: {e}"))
}

/// The common setup: an echo upstream, and a gateway serving one keyless API `echo` on
/// `/echo/` (listen path stripped) in front of it, with `conf_patch` merged into [`base_conf`].
/// Fields drop in order: the gateway first, then the upstream, then the sandbox.
pub struct EchoEnv {
    /// The gateway.
    pub gw: Gateway,
    /// The echo upstream behind `/echo/`.
    pub echo: EchoUpstream,
    /// The configuration directory.
    pub sandbox: Sandbox,
}

impl EchoEnv {
    /// Starts the echo upstream and the gateway.
    pub fn start(tag: &str, conf_patch: Value) -> EchoEnv {
        let sandbox = Sandbox::new(tag);
        let echo = EchoUpstream::start();
        sandbox.write_conf(&conf_with(conf_patch));
        sandbox.write_api(
            "echo",
            &keyless_api("echo", "/echo/", &format!("{}/", echo.url())),
        );
        let gw = Gateway::start(&sandbox);
        EchoEnv { gw, echo, sandbox }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire reading (shared by the client and the scripted upstream)
// ---------------------------------------------------------------------------------------------

/// A socket plus the bytes read from it but not yet consumed.
struct Wire {
    stream: TcpStream,
    /// The TLS session when the client speaks TLS ([`Client::connect_tls`]).
    tls: Option<Box<rustls::ClientConnection>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Wire {
    fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            tls: None,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes; `Ok(0)` at EOF. A read timeout becomes `ErrorKind::TimedOut`.
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut tmp = [0u8; 64 * 1024];
        loop {
            let read = match self.tls.as_deref_mut() {
                None => self.stream.read(&mut tmp),
                Some(t) => rustls::Stream::new(t, &mut self.stream).read(&mut tmp),
            };
            match read {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(io::Error::new(
                        ErrorKind::TimedOut,
                        "no data from the peer within the read timeout",
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn fill_or_eof(&mut self, what: &str) -> io::Result<()> {
        if self.fill()? == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("connection closed while reading {what}"),
            ));
        }
        Ok(())
    }

    /// Reads until `pending()` holds a complete head (ending in CRLFCRLF); returns its length.
    /// `Ok(None)` when the peer closed before sending anything.
    fn read_head_len(&mut self) -> io::Result<Option<usize>> {
        loop {
            if let Some(p) = find(self.pending(), b"\r\n\r\n") {
                return Ok(Some(p + 4));
            }
            if self.fill()? == 0 {
                if self.pending().is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed in the middle of a head: {:?}",
                        String::from_utf8_lossy(self.pending())
                    ),
                ));
            }
        }
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    fn read_line(&mut self, what: &str) -> io::Result<Vec<u8>> {
        loop {
            if let Some(p) = find(self.pending(), b"\r\n") {
                let line = self.pending()[..p].to_vec();
                self.consume(p + 2);
                return Ok(line);
            }
            if self.pending().len() > 64 * 1024 {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("{what}: line longer than 64 KiB"),
                ));
            }
            self.fill_or_eof(what)?;
        }
    }

    /// Appends exactly `n` bytes to `out`.
    fn read_exact_into(&mut self, mut n: usize, out: &mut Vec<u8>, what: &str) -> io::Result<()> {
        out.reserve(n);
        while n > 0 {
            if self.pending().is_empty() {
                self.fill_or_eof(what)?;
            }
            let take = n.min(self.pending().len());
            out.extend_from_slice(&self.pending()[..take]);
            self.consume(take);
            n -= take;
        }
        Ok(())
    }

    /// Decodes a chunked body into `out`; returns the trailer fields.
    fn read_chunked_into(&mut self, out: &mut Vec<u8>) -> io::Result<Vec<(String, String)>> {
        loop {
            let line = self.read_line("a chunk size line")?;
            let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
            let size_text = String::from_utf8_lossy(size_text).trim().to_string();
            let size = usize::from_str_radix(&size_text, 16).map_err(|_| {
                io::Error::new(
                    ErrorKind::InvalidData,
                    format!("bad chunk size line {:?}", String::from_utf8_lossy(&line)),
                )
            })?;
            if size == 0 {
                break;
            }
            self.read_exact_into(size, out, "chunk data")?;
            let crlf = self.read_line("the CRLF after chunk data")?;
            if !crlf.is_empty() {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "chunk data longer than its size line says",
                ));
            }
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.read_line("chunked trailers")?;
            if line.is_empty() {
                return Ok(trailers);
            }
            let text = String::from_utf8_lossy(&line);
            if let Some((k, v)) = text.split_once(':') {
                trailers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }

    /// Appends everything until EOF to `out`.
    fn read_to_eof_into(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            out.extend_from_slice(self.pending());
            let n = self.pending().len();
            self.consume(n);
            if self.fill()? == 0 {
                return Ok(());
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses header lines with httparse into owned (name, value) pairs.
fn owned_headers(hs: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    hs.iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn headers_in<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
pub fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// How a response body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body by rule (HEAD, 1xx, 204, 304).
    NoBody,
    /// Content-Length.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// Until the server closed the connection.
    UntilClose,
}

/// One response as the client received it; `body` is de-chunked.
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Header fields in order, as sent.
    pub headers: Vec<(String, String)>,
    /// Body bytes, de-chunked.
    pub body: Vec<u8>,
    /// How the body was delimited.
    pub framing: Framing,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        headers_in(&self.headers, name)
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
    }

    /// True when the response says the connection closes after it.
    pub fn says_close(&self) -> bool {
        self.header_all("connection")
            .iter()
            .any(|v| has_token(v, "close"))
    }

    /// The echo upstream's description of the request it received.
    pub fn echoed(&self) -> Echoed {
        let v = self.json();
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let headers = v["headers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Echoed {
            method: s("method"),
            path: s("path"),
            query: s("query"),
            headers,
            body_len: v["body_len"]
                .as_u64()
                .unwrap_or_else(|| panic!("echo response without body_len: {self:?}")),
            body: v["body"].as_str().map(str::to_string),
        }
    }

    /// Asserts a gateway error in Tyk's format: this status, `Content-Type: application/json` and
    /// the body `{\n    "error": "<message>"\n}`; returns the message.
    pub fn assert_tyk_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "unexpected status: {self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "error without JSON content type: {self:?}"
        );
        let text = self.text();
        assert!(
            text.starts_with("{\n    \"error\": \"") && text.ends_with("\"\n}"),
            "error body is not Tyk's error template: {self:?}"
        );
        let v = self.json();
        let msg = v["error"].as_str().unwrap_or_default().to_string();
        assert!(!msg.is_empty(), "empty error message: {self:?}");
        msg
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {} {}", self.version, self.status, self.reason)?;
        for (k, v) in &self.headers {
            writeln!(f, "{k}: {v}")?;
        }
        let shown = &self.body[..self.body.len().min(600)];
        write!(
            f,
            "\n{}{} [{} body bytes, {:?}]",
            String::from_utf8_lossy(shown),
            if self.body.len() > shown.len() {
                "..."
            } else {
                ""
            },
            self.body.len(),
            self.framing
        )
    }
}

/// What the echo upstream says it received (header names Go-canonical).
#[derive(Debug, Clone)]
pub struct Echoed {
    /// Request method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query without '?'.
    pub query: String,
    /// Headers by canonical name (a repeated header keeps its last value).
    pub headers: BTreeMap<String, String>,
    /// Body length.
    pub body_len: u64,
    /// Body text, for UTF-8 bodies of at most 64 KiB.
    pub body: Option<String>,
}

impl Echoed {
    /// A received header by name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.x client connection.
pub struct Client {
    wire: Wire,
}

impl Client {
    /// Connects to `addr`; panics when it cannot.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
    }

    /// Connects to `addr`, with [`IO_TIMEOUT`] as read and write timeout.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let _ = stream.set_nodelay(true);
        Ok(Client {
            wire: Wire::new(stream),
        })
    }

    /// Changes the read timeout (the longest silence a read tolerates).
    pub fn set_read_timeout(&mut self, t: Duration) {
        self.wire
            .stream
            .set_read_timeout(Some(t))
            .unwrap_or_else(|e| panic!("set_read_timeout: {e}"));
    }

    /// The socket, for what the helpers do not cover.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.wire.stream
    }

    /// Writes all of `bytes`; panics on error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("writing {} bytes to the gateway: {e}", bytes.len()));
    }

    /// Writes all of `bytes`.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.wire.tls.as_deref_mut() {
            None => {
                self.wire.stream.write_all(bytes)?;
                self.wire.stream.flush()
            }
            Some(t) => {
                let mut s = rustls::Stream::new(t, &mut self.wire.stream);
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }

    /// Connects to `addr` and completes a TLS handshake with `config`, sending `server_name` as
    /// SNI (an IP address sends none). The error is the handshake's (e.g. a refused version).
    pub fn connect_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<Client> {
        let mut c = Client::try_connect(addr)?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
        let mut tls = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut c.wire.stream)?;
        }
        c.wire.tls = Some(Box::new(tls));
        Ok(c)
    }

    /// The TLS session (panics on a plain connection).
    pub fn tls(&self) -> &rustls::ClientConnection {
        self.wire
            .tls
            .as_deref()
            .unwrap_or_else(|| panic!("not a TLS connection"))
    }

    /// The leaf certificate the server presented (DER).
    pub fn peer_cert(&self) -> Vec<u8> {
        self.tls()
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_else(|| panic!("the server presented no certificate"))
    }

    /// Reads one response to a request that may have a body; panics on error.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Reads one response to a HEAD request (never a body); panics on error.
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .unwrap_or_else(|e| panic!("reading a HEAD response: {e}"))
    }

    /// Sends `request` and reads its response (as for a non-HEAD request).
    pub fn request(&mut self, request: &[u8]) -> Response {
        self.send(request);
        self.read_response()
    }

    /// Reads one response. An interim (1xx) response is returned on its own, so a test can see
    /// `100 Continue` and then read the final response with another call.
    pub fn try_read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let w = &mut self.wire;
        let Some(head_len) = w.read_head_len()? else {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        };
        let mut raw = [httparse::EMPTY_HEADER; 256];
        let mut parsed = httparse::Response::new(&mut raw);
        let head_bytes = w.pending()[..head_len].to_vec();
        match parsed.parse(&head_bytes) {
            Ok(httparse::Status::Complete(_)) => {}
            other => {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "unparsable response head ({other:?}): {:?}",
                        String::from_utf8_lossy(&head_bytes)
                    ),
                ))
            }
        }
        let status = parsed.code.unwrap_or(0);
        let mut resp = Response {
            version: format!("HTTP/1.{}", parsed.version.unwrap_or(1)),
            status,
            reason: parsed.reason.unwrap_or_default().to_string(),
            headers: owned_headers(parsed.headers),
            body: Vec::new(),
            framing: Framing::NoBody,
            trailers: Vec::new(),
        };
        w.consume(head_len);
        let te = resp.header_all("transfer-encoding").join(",");
        let chunked = te
            .rsplit(',')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            resp.framing = Framing::NoBody;
        } else if !te.is_empty() {
            if chunked {
                resp.framing = Framing::Chunked;
                resp.trailers = w.read_chunked_into(&mut resp.body)?;
            } else {
                resp.framing = Framing::UntilClose;
                w.read_to_eof_into(&mut resp.body)?;
            }
        } else if let Some(cl) = resp.header("content-length") {
            let n: u64 = cl.trim().parse().map_err(|_| {
                io::Error::new(ErrorKind::InvalidData, format!("bad Content-Length {cl:?}"))
            })?;
            resp.framing = Framing::Length(n);
            let n = usize::try_from(n)
                .map_err(|_| io::Error::new(ErrorKind::InvalidData, "Content-Length too big"))?;
            w.read_exact_into(n, &mut resp.body, "a Content-Length body")?;
        } else {
            resp.framing = Framing::UntilClose;
            w.read_to_eof_into(&mut resp.body)?;
        }
        Ok(resp)
    }

    /// Reads until the server closes the connection and returns what arrived meanwhile (bytes
    /// already buffered included). A reset counts as closed. Errors only on a read timeout.
    pub fn read_until_closed(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            out.extend_from_slice(self.wire.pending());
            let n = self.wire.pending().len();
            self.wire.consume(n);
            match self.wire.fill() {
                Ok(0) => return Ok(out),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::TimedOut => return Err(e),
                Err(_) => return Ok(out),
            }
        }
    }

    /// Asserts that the server closes the connection (FIN or RST) without sending anything more.
    pub fn assert_closed(&mut self) {
        match self.read_until_closed() {
            Ok(rest) if rest.is_empty() => {}
            Ok(rest) => panic!(
                "expected the connection to close, but the gateway sent more: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) => panic!("expected the connection to close, but it stayed open: {e}"),
        }
    }
}

/// Builder for a well-formed request. Adds `Host:` [`DEFAULT_HOST`] (HTTP/1.1) and
/// `Content-Length` for a body unless told otherwise.
#[derive(Clone)]
pub struct Req {
    method: String,
    target: String,
    http10: bool,
    host: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: ReqFraming,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length,
    Chunked,
}

/// Starts a request `method target HTTP/1.1`.
pub fn req(method: &str, target: &str) -> Req {
    Req {
        method: method.to_string(),
        target: target.to_string(),
        http10: false,
        host: Some(DEFAULT_HOST.to_string()),
        headers: Vec::new(),
        body: Vec::new(),
        framing: ReqFraming::None,
    }
}

impl Req {
    /// Adds a header line.
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds `X-Echo-Token`, which the echo upstream copies into its response headers.
    pub fn token(self, token: &str) -> Req {
        self.header("X-Echo-Token", token)
    }

    /// Adds `Connection: close`.
    pub fn close(self) -> Req {
        self.header("Connection", "close")
    }

    /// Uses `HTTP/1.0` and sends no Host header (add one with [`Req::host`]).
    pub fn http10(mut self) -> Req {
        self.http10 = true;
        self.host = None;
        self
    }

    /// Sets the Host header value.
    pub fn host(mut self, host: &str) -> Req {
        self.host = Some(host.to_string());
        self
    }

    /// A body sent with Content-Length.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.body = body.into();
        self.framing = ReqFraming::Length;
        self
    }

    /// A body sent with `Transfer-Encoding: chunked`, one chunk per piece.
    pub fn chunked(mut self, pieces: &[&[u8]]) -> Req {
        self.body = chunked_encode(pieces);
        self.framing = ReqFraming::Chunked;
        self
    }

    /// The head only (no body bytes), e.g. to send the body later.
    pub fn head_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.{}\r\n",
            self.method,
            self.target,
            if self.http10 { 0 } else { 1 }
        )
        .into_bytes();
        if let Some(h) = &self.host {
            out.extend_from_slice(format!("Host: {h}\r\n").as_bytes());
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        match self.framing {
            ReqFraming::None => {}
            ReqFraming::Length => {
                out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes())
            }
            ReqFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The whole request.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.head_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Encodes `pieces` as a chunked body (one chunk each, empty pieces skipped) with the last chunk.
pub fn chunked_encode(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces.iter().filter(|p| !p.is_empty()) {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Deterministic, non-repeating-looking test data of `n` bytes (so a dropped, duplicated or
/// reordered block changes the bytes).
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Scripted upstream
// ---------------------------------------------------------------------------------------------

/// A request as the scripted upstream read it (body de-chunked).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// Minor version: 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
    /// The body came chunked.
    pub chunked: bool,
    /// The head exactly as received.
    pub raw_head: Vec<u8>,
}

impl RecordedRequest {
    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        headers_in(&self.headers, name)
    }
}

struct UpState {
    stop: AtomicBool,
    accepted: AtomicUsize,
    requests: Mutex<Vec<RecordedRequest>>,
    cv: Condvar,
}

/// An upstream server inside the test: every accepted connection runs `handler` on its own
/// thread. Handlers read requests with [`UpConn::read_request`] (which records them) and answer
/// however the test needs.
pub struct ScriptedUpstream {
    addr: SocketAddr,
    state: Arc<UpState>,
    acceptor: Option<JoinHandle<()>>,
}

impl ScriptedUpstream {
    /// Starts listening on a free loopback port.
    pub fn start<F>(handler: F) -> ScriptedUpstream
    where
        F: Fn(UpConn) + Send + Sync + 'static,
    {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let state = Arc::new(UpState {
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            cv: Condvar::new(),
        });
        let handler = Arc::new(handler);
        let st = Arc::clone(&state);
        let acceptor = thread::Builder::new()
            .name("scripted-upstream".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    st.accepted.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    let conn = UpConn {
                        wire: Wire::new(stream),
                        state: Arc::clone(&st),
                    };
                    let h = Arc::clone(&handler);
                    let _ = thread::Builder::new()
                        .name("scripted-conn".into())
                        .spawn(move || h(conn));
                }
            })
            .unwrap_or_else(|e| panic!("cannot spawn the scripted upstream: {e}"));
        ScriptedUpstream {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Requests read so far (by any connection), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Waits until at least `n` requests have been read; returns whether they were.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut reqs = lock(&self.state.requests);
        while reqs.len() < n {
            let now = Instant::now();
            if now >= end {
                return false;
            }
            reqs = self
                .state
                .cv
                .wait_timeout(reqs, end - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        true
    }

    /// Reads each request and never answers (the connection stays open until the test ends).
    pub fn silent() -> ScriptedUpstream {
        ScriptedUpstream::start(|mut c| {
            let _ = c.read_request();
            c.hold();
        })
    }

    /// Answers every request on every connection with `response` (which must be a complete,
    /// correctly framed response), keeping connections alive.
    pub fn always(response: Vec<u8>) -> ScriptedUpstream {
        ScriptedUpstream::start(move |mut c| {
            while c.read_request().is_some() {
                if c.write(&response).is_err() {
                    return;
                }
            }
        })
    }

    /// Answers every request with its own body (Content-Length framing, keep-alive), so a test
    /// can compare what it uploaded with what came back, byte for byte.
    pub fn body_mirror() -> ScriptedUpstream {
        ScriptedUpstream::start(|mut c| {
            while let Some(r) = c.read_request() {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                    r.body.len()
                )
                .into_bytes();
                out.extend_from_slice(&r.body);
                if c.write(&out).is_err() {
                    return;
                }
            }
        })
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// One connection accepted by a [`ScriptedUpstream`].
pub struct UpConn {
    wire: Wire,
    state: Arc<UpState>,
}

impl UpConn {
    /// Reads one request (head and Content-Length or chunked body) and records it. `None` when
    /// the gateway closed the connection, on a read error, or on an unparsable request.
    pub fn read_request(&mut self) -> Option<RecordedRequest> {
        let head_len = self.wire.read_head_len().ok()??;
        let raw_head = self.wire.pending()[..head_len].to_vec();
        let mut raw = [httparse::EMPTY_HEADER; 256];
        let mut parsed = httparse::Request::new(&mut raw);
        match parsed.parse(&raw_head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return None,
        }
        let mut r = RecordedRequest {
            method: parsed.method.unwrap_or_default().to_string(),
            target: parsed.path.unwrap_or_default().to_string(),
            minor_version: parsed.version.unwrap_or(1),
            headers: owned_headers(parsed.headers),
            body: Vec::new(),
            chunked: false,
            raw_head,
        };
        self.wire.consume(head_len);
        let te = r.header_all("transfer-encoding").join(",");
        if has_token(&te, "chunked") {
            r.chunked = true;
            self.wire.read_chunked_into(&mut r.body).ok()?;
        } else if let Some(cl) = r.header("content-length") {
            let n: usize = cl.trim().parse().ok()?;
            self.wire
                .read_exact_into(n, &mut r.body, "request body")
                .ok()?;
        }
        lock(&self.state.requests).push(r.clone());
        self.state.cv.notify_all();
        Some(r)
    }

    /// Writes bytes to the gateway.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.stream.write_all(bytes)?;
        self.wire.stream.flush()
    }

    /// The socket.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.wire.stream
    }

    /// True once the upstream is being dropped (handlers that loop should stop).
    pub fn stopping(&self) -> bool {
        self.state.stop.load(Ordering::SeqCst)
    }

    /// Closes with a TCP reset (SO_LINGER 0) instead of an orderly FIN.
    pub fn reset(self) {
        let _ = socket2::SockRef::from(&self.wire.stream).set_linger(Some(Duration::ZERO));
        drop(self);
    }

    /// Keeps the connection open, discarding input, until the gateway closes it or the upstream
    /// is dropped.
    pub fn hold(mut self) {
        let _ = self
            .wire
            .stream
            .set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 4096];
        while !self.stopping() {
            match self.wire.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC plugin server (tests/plugins/scenarios_grpc.py)
// ---------------------------------------------------------------------------------------------

/// Absolute path of a plugin script under tests/plugins/.
pub fn plugin_script(name: &str) -> String {
    format!("{}/tests/plugins/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A running `tests/plugins/scenarios_grpc.py`. Killed on drop; its stderr is printed when the
/// test fails.
pub struct GrpcServer {
    child: Child,
    /// The address it serves, as `coprocess_grpc_server` must say it (and as `--listen` takes it
    /// to start a server on the same address again).
    pub target: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl GrpcServer {
    /// Starts the server on `listen` with `SCENARIO_LOG` = `log` and extra arguments (e.g.
    /// `--max-message`), and waits until it reports the address it serves.
    pub fn start(listen: &str, log: &Path, args: &[&str]) -> GrpcServer {
        let mut cmd = Command::new("python3");
        cmd.arg(plugin_script("scenarios_grpc.py"))
            .arg("--listen")
            .arg(listen)
            .args(args)
            .env("SCENARIO_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
            // which is async-signal-safe and touches no memory of the parent. Reason: a test
            // binary killed mid-run must not leave plugin servers behind.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start scenarios_grpc.py with python3: {e}"));
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        if let Some(pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(pipe) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut server = GrpcServer {
            child,
            target: String::new(),
            stderr,
        };
        let end = Instant::now() + STARTUP_TIMEOUT;
        while server.target.is_empty() {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        server.target = addr.trim().to_string();
                    }
                }
                Err(e) => panic!(
                    "scenarios_grpc.py on {listen} did not report its address ({e}); stderr:\n{}",
                    server.stderr_text()
                ),
            }
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash: every socket closes at once, nothing is flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "[scenarios_grpc.py {}] stderr:\n{}",
                self.target,
                self.stderr_text()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load through the scenario plugin's Echo hook
// ---------------------------------------------------------------------------------------------

/// Tallies of a load run.
#[derive(Default)]
pub struct Tally {
    /// Requests answered 200 with their own data.
    pub ok: AtomicUsize,
    /// Requests answered with a clean Tyk 5xx.
    pub clean_errors: AtomicUsize,
    /// The first bad outcomes, for the report.
    pub bad: Mutex<Vec<String>>,
    /// Every bad outcome (a mix-up, a dropped connection, a malformed answer).
    pub bad_count: AtomicUsize,
}

impl Tally {
    /// Counts one outcome; false for a bad one (the caller should reconnect).
    pub fn record(&self, o: LoadOutcome) -> bool {
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
                    b.push(why);
                }
                false
            }
        }
    }

    /// A one-line summary with the first bad outcomes.
    pub fn report(&self) -> String {
        format!(
            "{} ok, {} clean 5xx, {} bad; first bad: {:#?}",
            self.ok.load(Ordering::Relaxed),
            self.clean_errors.load(Ordering::Relaxed),
            self.bad_count.load(Ordering::Relaxed),
            self.bad.lock().unwrap_or_else(|p| p.into_inner())
        )
    }
}

/// The pid in the last "[<name>:<pid>] plugin ready" log line.
pub fn ready_pid(gw: &Gateway, name: &str) -> Option<u32> {
    let marker = format!("[{name}:");
    gw.log()
        .lines()
        .iter()
        .rev()
        .filter(|l| l.contains("plugin ready"))
        .find_map(|l| {
            let rest = l.split_once(&marker)?.1;
            rest.split(']').next()?.parse().ok()
        })
}

/// Waits for a "plugin ready" line after log line `mark` (a restarted child) and returns the
/// new child's pid.
pub fn wait_restarted(gw: &Gateway, mark: usize, name: &str) -> u32 {
    let line = gw
        .log()
        .wait_for(mark, "plugin ready", PLUGIN_RESTART_WAIT)
        .unwrap_or_else(|| panic!("the plugin was not restarted within {PLUGIN_RESTART_WAIT:?}"));
    let marker = format!("[{name}:");
    line.split_once(&marker)
        .and_then(|(_, rest)| rest.split(']').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in the ready line {line:?}"))
}

/// Open file descriptors of process `pid` (entries of /proc/<pid>/fd).
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
        .count()
}

/// True while process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "Z" is a zombie, "X" dead.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// A keyless API whose `custom_middleware` is `mw` (driver `python`, pipe or gRPC by the
/// gateway's coprocess options), in front of `target`.
pub fn hooked_api(api_id: &str, listen_path: &str, target: &str, mw: Value) -> Value {
    let mut api = keyless_api(api_id, listen_path, target);
    let mut cm = json!({ "driver": "python" });
    merge(&mut cm, mw);
    api["custom_middleware"] = cm;
    api
}

/// How long a restarted plugin child may take to report ready (a busy two-core machine).
pub const PLUGIN_RESTART_WAIT: Duration = Duration::from_secs(60);

/// Sends SIGKILL to a plugin child the gateway started for this test.
pub fn kill_pid(pid: u32) {
    let pid = libc::pid_t::try_from(pid).unwrap_or_else(|_| panic!("pid {pid} does not fit pid_t"));
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the plugin child the gateway
    // reported as running a moment ago (it is its parent and has not reaped it yet).
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill({pid}): {}", std::io::Error::last_os_error());
}

/// The outcome of one request under load.
pub enum LoadOutcome {
    /// 200 carrying its own token both ways.
    Ok,
    /// A clean Tyk error (JSON, "Middleware error").
    CleanError,
    /// Anything else: a mix-up, a dropped connection, a malformed answer.
    Bad(String),
}

/// Sends one request through the scenario plugin's `Echo` hook (`/echo/`) with `token` on `c`
/// and classifies the answer: its own token must come back both ways and reach the upstream.
pub fn echo_request(c: &mut Client, token: &str) -> LoadOutcome {
    echo_request_via(c, "/echo/", token)
}

/// [`echo_request`] through the API on `listen_path` (whose pre hook must set `X-Plugin-Token`
/// from `X-Echo-Token`, as scenarios.py's `Echo` and `WrongId` do).
pub fn echo_request_via(c: &mut Client, listen_path: &str, token: &str) -> LoadOutcome {
    let bytes = req("GET", &format!("{listen_path}{token}?t={token}"))
        .token(token)
        .to_bytes();
    if let Err(e) = c.try_send(&bytes) {
        return LoadOutcome::Bad(format!("{token}: send failed: {e}"));
    }
    let r = match c.try_read_response(false) {
        Ok(r) => r,
        Err(e) => return LoadOutcome::Bad(format!("{token}: no response: {e}")),
    };
    if r.status == 500 {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.header("content-type") == Some("application/json") && v["error"] == "Middleware error"
        {
            return LoadOutcome::CleanError;
        }
        return LoadOutcome::Bad(format!("{token}: unclean 500: {r:?}"));
    }
    if r.status != 200 {
        return LoadOutcome::Bad(format!("{token}: status {}: {r:?}", r.status));
    }
    if r.header("x-echo-token") != Some(token) {
        return LoadOutcome::Bad(format!("{token}: X-Echo-Token mismatch: {r:?}"));
    }
    let v: Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(e) => return LoadOutcome::Bad(format!("{token}: body not JSON ({e}): {r:?}")),
    };
    if v["headers"]["X-Plugin-Token"] != token {
        return LoadOutcome::Bad(format!(
            "{token}: the upstream saw X-Plugin-Token {} (another request's reply?)",
            v["headers"]["X-Plugin-Token"]
        ));
    }
    if v["path"] != format!("/{token}") {
        return LoadOutcome::Bad(format!("{token}: the upstream saw path {}", v["path"]));
    }
    LoadOutcome::Ok
}

// ---------------------------------------------------------------------------------------------
// TLS: certificates made with the openssl CLI, a TLS client config, a real TLS upstream
// ---------------------------------------------------------------------------------------------

/// Runs `openssl` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test certificate authority in a directory, made with the `openssl` CLI (as an operator
/// would make theirs), issuing leaf certificates for server names.
pub struct TestPki {
    dir: PathBuf,
    name: String,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl CertFiles {
    /// The certificate's DER bytes (what a TLS peer sees).
    pub fn der(&self) -> Vec<u8> {
        cert_der(&self.cert)
    }
}

impl TestPki {
    /// Creates a CA called `name` (EC P-256) in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestPki {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let pki = TestPki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        };
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
        pki
    }

    /// The CA certificate (PEM), for clients to trust.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// Issues a server certificate saved as `<file>.pem`/`<file>.key` for `sans` (openssl
    /// subjectAltName syntax, e.g. `DNS:a.test`, `IP:127.0.0.1`); CN is the first name. `rsa`
    /// makes an RSA-2048 key instead of EC P-256. Issuing again under the same file name replaces
    /// the files with a new certificate.
    pub fn issue(&self, file: &str, sans: &[&str], rsa: bool) -> CertFiles {
        let cn = sans
            .first()
            .and_then(|s| s.split_once(':'))
            .map_or("leaf", |(_, v)| v);
        let key_args: &[&str] = if rsa {
            &["-newkey", "rsa:2048"]
        } else {
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        };
        let mut args = vec!["req", "-new"];
        args.extend_from_slice(key_args);
        let subj = format!("/CN={cn}");
        let key = format!("{file}.key");
        let csr = format!("{file}.csr");
        args.extend_from_slice(&["-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(&self.dir, &args);
        let ext = format!("{file}.ext");
        fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )
        .unwrap_or_else(|e| panic!("write {ext}: {e}"));
        let ca_cert = format!("{}.pem", self.name);
        let ca_key = format!("{}.key", self.name);
        let cert = format!("{file}.pem");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        CertFiles {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }
}

/// The first certificate of a PEM file, as DER.
pub fn cert_der(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem)
        .unwrap_or_else(|e| panic!("no certificate in {}: {e}", pem.display()))
        .as_ref()
        .to_vec()
}

/// Accepts any server certificate: for tests that look at which certificate was presented
/// rather than whether it verifies (e.g. the default certificate for an unknown SNI name).
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client configuration: trusting only `ca` (or, with `None`, accepting any
/// certificate), offering ALPN http/1.1, limited to `versions` (empty: TLS 1.2 and 1.3).
pub fn tls_client_config(
    ca: Option<&Path>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = if versions.is_empty() {
        rustls::ALL_VERSIONS
    } else {
        versions
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .unwrap_or_else(|e| panic!("TLS versions: {e}"));
    let mut config = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from(cert_der(ca)))
                .unwrap_or_else(|e| panic!("CA {}: {e}", ca.display()));
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A real TLS upstream: `tests/fixtures/tls_echo_upstream.py` (Python's http.server in ssl),
/// answering JSON that names the request and the source port of the gateway's connection.
pub struct TlsUpstream {
    child: Child,
    addr: SocketAddr,
    stderr: LogSink,
}

impl TlsUpstream {
    /// Starts it with a certificate and key.
    pub fn start(cert: &CertFiles) -> TlsUpstream {
        TlsUpstream::start_with(cert, &[])
    }

    /// Starts it with extra arguments (`tls12`: at most TLS 1.2).
    pub fn start_with(cert: &CertFiles, args: &[&str]) -> TlsUpstream {
        let mut cmd = Command::new("python3");
        cmd.arg(format!(
            "{}/tests/fixtures/tls_echo_upstream.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&cert.cert)
        .arg(&cert.key)
        .args(args);
        let (mut child, stdout, stderr) = spawn_logged(cmd, "tls-upstream");
        let addr = wait_for_addr(
            &mut child,
            &stdout,
            "listening on ",
            "tls-upstream",
            &stderr,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        TlsUpstream {
            child,
            addr,
            stderr,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>` (no trailing slash).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `https://localhost:<port>`: a host name, so the gateway sends SNI and verifies a DNS name.
    pub fn url_by_name(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("[harness] tls-upstream log:\n{}", self.stderr.text());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition
// ---------------------------------------------------------------------------------------------

/// One sample line: metric name, labels in written order, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed `/metrics` page. [`Metrics::parse`] rejects anything a Prometheus server would
/// reject, and more: every sample belongs to a family declared by `# TYPE` before it, families are
/// contiguous, counters end in `_total`, histograms have ascending cumulative buckets ending in
/// `le="+Inf"` equal to `_count`, and no series appears twice.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// Family name -> type.
    pub types: BTreeMap<String, String>,
}

fn is_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses the labels after a `{`: returns them and the bytes used, closing `}` included.
fn parse_labels(text: &str) -> Result<(Vec<(String, String)>, usize), String> {
    let bytes = text.as_bytes();
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    loop {
        if bytes.get(i) == Some(&b'}') {
            return Ok((labels, i + 1));
        }
        let eq = text[i..].find('=').ok_or("label without '='")? + i;
        let lname = &text[i..eq];
        if !is_label_name(lname) {
            return Err(format!("bad label name {lname:?}"));
        }
        if bytes.get(eq + 1) != Some(&b'"') {
            return Err(format!("label {lname} value not quoted"));
        }
        let mut value = String::new();
        i = eq + 2;
        loop {
            match *bytes.get(i).ok_or("unterminated label value")? {
                b'\\' => {
                    match bytes.get(i + 1) {
                        Some(b'\\') => value.push('\\'),
                        Some(b'"') => value.push('"'),
                        Some(b'n') => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    }
                    i += 2;
                }
                b'"' => {
                    i += 1;
                    break;
                }
                b'\n' => return Err("raw newline in a label value".into()),
                _ => {
                    let ch = text[i..].chars().next().ok_or("bad utf-8")?;
                    value.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        if labels.iter().any(|(n, _)| n == lname) {
            return Err(format!("label {lname} twice"));
        }
        labels.push((lname.to_string(), value));
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            other => {
                return Err(format!(
                    "expected ',' or '}}' after a label, found {:?}",
                    other.map(|b| *b as char)
                ))
            }
        }
    }
}

/// Parses `name{a="x",b="y"} value` (labels optional, no timestamp).
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (l, used) = parse_labels(after)?;
        labels = l;
        rest = &after[used..];
    }
    let value_text = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("expected one space before the value in {line:?}"))?;
    if value_text.contains(' ') {
        return Err(format!(
            "timestamps or extra fields are not expected: {line:?}"
        ));
    }
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The family a sample name belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return Some(base);
            }
        }
    }
    None
}

impl Metrics {
    /// Parses and validates a whole exposition page.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        if !text.ends_with('\n') {
            return Err("the page must end with a line feed".into());
        }
        let mut m = Metrics::default();
        let mut helps = std::collections::BTreeSet::new();
        let mut seen_families: Vec<String> = Vec::new();
        let mut series = std::collections::BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix("# ") {
                let mut parts = c.splitn(3, ' ');
                let kind = parts.next().unwrap_or_default();
                let name = parts.next().unwrap_or_default().to_string();
                let rest = parts.next().unwrap_or_default();
                match kind {
                    "HELP" if !is_metric_name(&name) || !helps.insert(name.clone()) => {
                        return Err(at("bad or repeated HELP".into()));
                    }
                    "TYPE" => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest)
                        {
                            return Err(at(format!("unknown type {rest:?}")));
                        }
                        if !is_metric_name(&name) || m.types.contains_key(&name) {
                            return Err(at("bad or repeated TYPE".into()));
                        }
                        if rest == "counter" && !name.ends_with("_total") {
                            return Err(at("counter names end in _total".into()));
                        }
                        m.types.insert(name, rest.to_string());
                    }
                    _ => {}
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let s = parse_sample(line).map_err(at)?;
            let fam = family_of(&s.name, &m.types)
                .ok_or_else(|| at("sample before (or without) its # TYPE".into()))?
                .to_string();
            if seen_families.last() != Some(&fam) {
                if seen_families.contains(&fam) {
                    return Err(at(format!("family {fam} is not contiguous")));
                }
                seen_families.push(fam.clone());
            }
            if m.types[&fam] == "histogram"
                && s.name.ends_with("_bucket")
                && !s.labels.iter().any(|(k, _)| k == "le")
            {
                return Err(at("bucket without le".into()));
            }
            let key = format!("{}{:?}", s.name, s.labels);
            if !series.insert(key) {
                return Err(at("series repeated".into()));
            }
            m.samples.push(s);
        }
        m.check_histograms()?;
        Ok(m)
    }

    fn check_histograms(&self) -> Result<(), String> {
        for (fam, t) in &self.types {
            if t != "histogram" {
                continue;
            }
            let bucket = format!("{fam}_bucket");
            // Label set without `le` -> (le, cumulative count) in written order.
            type Buckets = Vec<(f64, f64)>;
            let mut by_set: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
            for s in self.samples.iter().filter(|s| s.name == bucket) {
                let le = s
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse::<f64>()
                        .map_err(|e| format!("{fam}: bad le {le:?}: {e}"))?
                };
                let set: Vec<_> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                by_set.entry(set).or_default().push((le, s.value));
            }
            for (set, buckets) in &by_set {
                for w in buckets.windows(2) {
                    if w[1].0 <= w[0].0 || w[1].1 < w[0].1 {
                        return Err(format!(
                            "{fam}{set:?}: buckets not ascending and cumulative: {buckets:?}"
                        ));
                    }
                }
                let last = buckets.last().copied().unwrap_or((0.0, 0.0));
                if last.0 != f64::INFINITY {
                    return Err(format!("{fam}{set:?}: no +Inf bucket"));
                }
                let count = self.value(&format!("{fam}_count"), &pairs(set));
                if count != Some(last.1) {
                    return Err(format!(
                        "{fam}{set:?}: _count {count:?} differs from the +Inf bucket {}",
                        last.1
                    ));
                }
                if self.value(&format!("{fam}_sum"), &pairs(set)).is_none() {
                    return Err(format!("{fam}{set:?}: no _sum"));
                }
            }
        }
        Ok(())
    }

    /// The value of the series `name` with exactly `labels` (any order), if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    }

    /// Like [`Metrics::value`], 0 when absent (pipegate emits a series once it is non-zero).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}

fn pairs(set: &[(String, String)]) -> Vec<(&str, &str)> {
    set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// GETs `path` from `addr` and parses it as a metrics page (panics with the page on any problem).
pub fn scrape(addr: SocketAddr, path: &str) -> Metrics {
    let mut c = Client::connect(addr);
    let r = c.request(&req("GET", path).close().to_bytes());
    assert_eq!(r.status, 200, "scrape {path}: {r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{r:?}"
    );
    let text = r.text();
    Metrics::parse(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"))
}

impl Gateway {
    /// Scrapes `/metrics` on the main listener.
    pub fn metrics(&self) -> Metrics {
        scrape(self.addr, "/metrics")
    }

    /// Scrapes `/metrics` until `cond` holds (see [`wait_scrape`]).
    pub fn wait_metrics(&self, cond: impl Fn(&Metrics) -> bool) -> Metrics {
        wait_scrape(self.addr, "/metrics", cond)
    }
}

/// Scrapes until `cond` holds (counters are bumped just after the response bytes leave, so a
/// client can be a hair ahead of them); panics with the last page after [`IO_TIMEOUT`].
pub fn wait_scrape(addr: SocketAddr, path: &str, cond: impl Fn(&Metrics) -> bool) -> Metrics {
    let mut last = scrape(addr, path);
    let ok = wait_until(IO_TIMEOUT, || {
        last = scrape(addr, path);
        cond(&last)
    });
    assert!(ok, "metrics never reached the expected values: {last:#?}");
    last
}

/// Raises this process's RLIMIT_NOFILE soft limit towards `want` (up to the hard limit); child
/// processes started afterwards (the gateway, the upstream) inherit it.
pub fn raise_nofile_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
