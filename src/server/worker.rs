//! One worker: a mio event loop owning its listener, its client connections, its upstream
//! connections and pool.
//!
//! A connection is advanced by [`Worker::drive`], which runs small steps (read the client, parse,
//! pump the request body, write upstream, read upstream, pump the response, write the client,
//! finish) until none makes progress. Sockets are edge-triggered: a step that stops early (buffer
//! full) keeps the readiness flag and resumes when the buffer drains, without waiting for a new edge.
//!
//! TLS connections (client side with `use_ssl`, upstream side for https targets) take the same
//! steps; only the socket fill/flush goes through rustls ([`crate::tls::io`]).

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::buffers::BufferPool;
use super::conn::{BodySink, Conn, Deadline, St, MAX_PENDING_CLIENT, MAX_PENDING_UPSTREAM};
use super::Shared;
use crate::config::{ApiDefinition, GatewayConfig, HookDef, Snapshot};
use crate::coprocess::grpc::GrpcClient;
use crate::coprocess::object::HookType;
use crate::coprocess::object::SessionState;
use crate::coprocess::pipe::{PipeClient, ReplyPipe, WorkerHandle};
use crate::coprocess::{CallError, HookReply};
use crate::http::{self, response, BodyKind, ChunkedDecoder};
use crate::middleware::chain::{
    self, LocalResponse, Outcome, PendingCall, Phase, RequestView, Step,
};
use crate::middleware::hook_object::RequestHookObject;
use crate::proxy::{self, Outbound, Pool, Upstream};
use crate::{admin, store, tls};
use crossbeam_channel::{Receiver, Sender};

mod observe;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// The plugin child's stdout, when this worker reads the replies itself.
const PIPE_REPLIES: Token = Token(usize::MAX - 3);
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// Pooled upstream connections idle longer than this are closed.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Message used for any upstream failure before a response (Tyk's wording).
const UPSTREAM_ERROR: &str = "There was a problem proxying the request";
/// Message used for upstream timeouts (Tyk's wording).
const UPSTREAM_TIMEOUT: &str = "Upstream service reached hard timeout.";

#[inline]
fn client_token(i: usize) -> Token {
    Token(i << 1)
}
#[inline]
fn upstream_token(i: usize) -> Token {
    Token((i << 1) | 1)
}

/// Why a connection must be closed abruptly.
struct Abort;

/// A worker thread's state.
pub struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    ups: Slab<Upstream>,
    pool: Pool,
    /// Spare client buffers, parked by idle connections.
    buffers: BufferPool,
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    now: Instant,
    next_tick: Instant,
    draining_since: Option<Instant>,
    /// The plugin process client and this worker's reply channel, when plugins are configured.
    pipe: Option<(Arc<PipeClient>, WorkerHandle)>,
    /// The plugin child's stdout, registered in this worker's poll, when this worker holds it.
    reply_pipe: Option<ReplyPipe>,
    /// The child generation `reply_pipe` was last attached for (0: none yet).
    reply_gen: u64,
    /// This worker's replies read from `reply_pipe` (kept for its capacity).
    own_replies: Vec<HookReply>,
    /// The gRPC plugin server client and this worker's reply channel.
    grpc: Option<(Arc<GrpcClient>, WorkerHandle)>,
    /// Connections that yielded while still able to progress; driven again before polling.
    again: Vec<usize>,
    /// This worker's waker (store threads wake it with their results).
    waker: Arc<Waker>,
    /// With a Redis store: the store threads' job queue and this worker's result channel.
    store_jobs: Option<(Sender<StoreJob>, Sender<StoreResult>)>,
    /// Results of store operations done on the store threads.
    store_replies: Option<Receiver<StoreResult>>,
    /// This worker's metric cells.
    metrics: crate::metrics::WorkerMetrics,
}

/// A store operation, run inline or on a store thread.
type StoreOp = Box<dyn FnOnce(&Shared) -> StoreDone + Send>;
/// A job for the store threads.
pub type StoreJob = Box<dyn FnOnce() + Send>;
/// A store operation's result, tagged with its connection and request generation.
type StoreResult = (u64, StoreDone);

/// The result of a store operation, applied to the request by [`Worker::apply_store_done`].
enum StoreDone {
    Token(Result<(String, SessionState), LocalResponse>),
    Cache(String, Result<Option<SessionState>, LocalResponse>),
    Stored(String, Result<SessionState, LocalResponse>),
    Enforced(Result<(Vec<(String, String)>, SessionState), LocalResponse>),
    Admin(LocalResponse),
}

/// How an API's hooks are served.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Plugins are off (`enable_coprocess: false`): hooks are skipped, as Tyk does.
    Off,
    /// The pipe child serves them.
    Pipe,
    /// The gRPC plugin server serves them (driver "grpc", or pipe hooks while the child is down
    /// and `enable_grpc_fallback` is on).
    Grpc,
    /// The API's driver has no transport configured: every hooked request fails with 500.
    Missing,
}

/// The message of a gateway error response (the JSON template's "error"), for event payloads.
fn resp_message(resp: &LocalResponse) -> String {
    serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| crate::http::response::reason(resp.status).to_string())
}

/// Seconds since the Unix epoch, as text (the event's TimeStamp).
fn unix_time_text() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default()
}

/// Packs a connection index and its request generation into a call tag.
#[inline]
fn tag_of(ci: usize, generation: u32) -> u64 {
    ((ci as u64) << 32) | generation as u64
}

impl Worker {
    /// Creates a worker around a listener bound by the server.
    pub fn new(
        id: usize,
        listener: std::net::TcpListener,
        shared: Arc<Shared>,
    ) -> io::Result<(Worker, Arc<Waker>)> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let snapshot = shared.snapshot.load_full();
        let now = Instant::now();
        let pipe = shared.pipe.as_ref().map(|p| {
            let h = p.register_worker(Arc::clone(&waker));
            (Arc::clone(p), h)
        });
        let (store_jobs, store_replies) = match shared.store_jobs.clone() {
            Some(jobs) => {
                let (tx, rx) = crossbeam_channel::unbounded::<StoreResult>();
                (Some((jobs, tx)), Some(rx))
            }
            None => (None, None),
        };
        let grpc = shared.grpc.as_ref().map(|g| {
            let h = g.register_worker(Arc::clone(&waker));
            (Arc::clone(g), h)
        });
        Ok((
            Worker {
                id,
                poll,
                listener: Some(listener),
                // Address space for every connection the worker may hold (up to 64k), so the
                // table never moves: a growing table would copy itself and leave its old copies'
                // pages in the heap. Untouched capacity costs address space, not memory.
                conns: Slab::with_capacity(
                    snapshot
                        .gateway
                        .limits
                        .max_connections_per_worker
                        .min(1 << 16),
                ),
                ups: Slab::with_capacity(256),
                pool: Pool::default(),
                buffers: BufferPool::default(),
                shared,
                snapshot,
                now,
                next_tick: now + TICK,
                draining_since: None,
                pipe,
                reply_pipe: None,
                reply_gen: 0,
                own_replies: Vec::with_capacity(64),
                grpc,
                again: Vec::with_capacity(64),
                waker: Arc::clone(&waker),
                store_jobs,
                store_replies,
                metrics: crate::metrics::registry().worker(),
            },
            waker,
        ))
    }

    /// Picks up a configuration a reload published since this worker last looked. Done once per
    /// loop round and again for each accepted connection: a client that got `/tyk/reload`'s
    /// answer and connects again at once may be accepted in the very round that answered it,
    /// and must already be routed by the new API definitions.
    fn refresh_snapshot(&mut self) {
        let current = self.shared.snapshot.load();
        if !Arc::ptr_eq(&current, &self.snapshot) {
            self.snapshot = Arc::clone(&current);
            self.metrics.sync();
        }
    }

    fn gw(&self) -> &GatewayConfig {
        &self.snapshot.gateway
    }

    /// Runs the event loop until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if !self.again.is_empty() {
                Some(Duration::ZERO)
            } else if self.conns.is_empty() && self.ups.is_empty() {
                if self.draining_since.is_some() {
                    break;
                }
                None
            } else {
                Some(self.next_tick.saturating_duration_since(Instant::now()))
            };
            // The hook calls of this round go to the plugin in one write (see dispatch_deferred).
            if let Some((pipe, _)) = &self.pipe {
                pipe.flush();
                if pipe.generation() != self.reply_gen {
                    self.attach_reply_pipe();
                }
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(worker = self.id, "poll failed: {e}");
                    break;
                }
            }
            self.now = Instant::now();
            self.refresh_snapshot();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.drain_replies(),
                    PIPE_REPLIES => self.read_pipe_replies(),
                    Token(t) if t & 1 == 0 => {
                        let ci = t >> 1;
                        if let Some(c) = self.conns.get_mut(ci) {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                c.readable = true;
                            }
                            if ev.is_read_closed() || ev.is_error() {
                                c.rdhup = true;
                            }
                            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                                c.writable = true;
                            }
                            self.drive(ci);
                        }
                    }
                    Token(t) => {
                        let ui = t >> 1;
                        let owner = match self.ups.get_mut(ui) {
                            Some(u) => {
                                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                    u.readable = true;
                                }
                                if ev.is_read_closed() || ev.is_error() {
                                    u.rdhup = true;
                                }
                                if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                                    u.writable = true;
                                }
                                u.owner
                            }
                            None => continue,
                        };
                        match owner {
                            Some(ci) => self.drive(ci),
                            None => self.idle_upstream_event(ui),
                        }
                    }
                }
            }
            if !self.again.is_empty() {
                self.drive_again();
            }
            if self.shared.shutdown.load(Ordering::Acquire) && self.draining_since.is_none() {
                self.begin_drain();
            }
            if self.now >= self.next_tick {
                self.tick();
                self.next_tick = self.now + TICK;
            }
            self.metrics.set_connections(self.conns.len());
        }
        tracing::debug!(worker = self.id, "worker stopped");
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((mut sock, peer)) => {
                    self.refresh_snapshot();
                    if self.conns.len() >= self.gw().limits.max_connections_per_worker {
                        // Over the limit: refuse by closing at once rather than queueing forever.
                        drop(sock);
                        continue;
                    }
                    let _ = sock.set_nodelay(true);
                    // Taken from the snapshot in force: after a reload, new connections present
                    // the new certificates while open ones keep theirs.
                    let tls = match self.gw().tls.as_ref() {
                        None => None,
                        Some(cfg) => match rustls::ServerConnection::new(Arc::clone(cfg)) {
                            Ok(t) => Some(Box::new(t)),
                            Err(e) => {
                                tracing::warn!("cannot start a TLS session: {e}");
                                continue;
                            }
                        },
                    };
                    let idle = self.gw().limits.client_header_timeout;
                    let entry = self.conns.vacant_entry();
                    let ci = entry.key();
                    if let Err(e) = self.poll.registry().register(
                        &mut sock,
                        client_token(ci),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!("register client socket: {e}");
                        continue;
                    }
                    entry.insert(Conn::new(sock, tls, peer, self.now, idle));
                    self.metrics.set_connections(self.conns.len());
                    // Edge-triggered: data may already be waiting, and a fresh socket has room
                    // to write (an answer to a request that came with the SYN goes out now,
                    // and the connection can go idle and park its buffers at once).
                    self.conns[ci].readable = true;
                    self.conns[ci].writable = true;
                    self.drive(ci);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and stop accepting for this round.
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn begin_drain(&mut self) {
        self.draining_since = Some(self.now);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.st == St::Head && c.rlen == 0 && c.pending_write() == 0)
            .map(|(i, _)| i)
            .collect();
        for ci in idle {
            self.conns[ci].close_notify_best_effort();
            self.close_conn(ci);
        }
        for (_, c) in self.conns.iter_mut() {
            c.close_after = true;
        }
        let pooled: Vec<usize> = self
            .pool
            .all_idle()
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        for ui in pooled {
            self.close_upstream(ui);
        }
    }

    fn tick(&mut self) {
        let now = self.now;
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(i, _)| i)
            .collect();
        for ci in expired {
            self.on_deadline(ci);
        }
        let stale: Vec<usize> = self
            .pool
            .all_idle()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|&ui| {
                self.ups
                    .get(ui)
                    .is_some_and(|u| now.duration_since(u.idle_since) > POOL_IDLE)
            })
            .collect();
        for ui in stale {
            self.close_upstream(ui);
        }
        if let Some(since) = self.draining_since {
            if now.duration_since(since) > self.gw().shutdown_grace {
                let all: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
                if !all.is_empty() {
                    tracing::warn!(
                        worker = self.id,
                        connections = all.len(),
                        "shutdown grace period over; closing remaining connections"
                    );
                }
                for ci in all {
                    self.close_conn(ci);
                }
                let ups: Vec<usize> = self.ups.iter().map(|(i, _)| i).collect();
                for ui in ups {
                    self.close_upstream(ui);
                }
            }
        }
    }

    fn on_deadline(&mut self, ci: usize) {
        self.expire(ci);
        if self.conns.contains(ci) {
            self.drive(ci);
        }
    }

    fn expire(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        c.deadline = None;
        match c.deadline_kind {
            Deadline::Idle => {
                c.close_notify_best_effort();
                self.close_conn(ci);
            }
            Deadline::Write => self.close_conn(ci),
            Deadline::Head => {
                if c.rlen > 0 {
                    self.local_error(ci, 408, "Request timeout", true);
                } else {
                    self.close_conn(ci);
                }
            }
            Deadline::Body => {
                if c.resp_started {
                    self.close_conn(ci);
                } else {
                    self.local_error(ci, 408, "Request timeout", true);
                }
            }
            Deadline::Connect | Deadline::Upstream => {
                if c.resp_started {
                    self.close_conn(ci);
                } else {
                    self.local_error(ci, 504, UPSTREAM_TIMEOUT, true);
                }
            }
            Deadline::Hook => self.local_error(ci, 500, "Middleware error", true),
        }
    }

    fn idle_upstream_event(&mut self, ui: usize) {
        // An idle pooled connection became readable: the upstream closed it (or sent garbage).
        // On TLS it may also be a session ticket or key update, which leaves it clean and idle.
        let u = &mut self.ups[ui];
        if let Some(t) = u.tls.as_deref_mut() {
            let read = tls::io::fill(t, &mut u.sock, &mut u.rbuf, &mut u.rlen, &mut u.readable);
            if matches!(read, Ok((_, false))) && u.rlen == 0 && !t.wants_write() {
                return;
            }
        }
        let key = self.ups[ui].key.clone();
        self.pool.remove(&key, ui);
        self.close_upstream(ui);
    }

    fn close_upstream(&mut self, ui: usize) {
        if let Some(mut u) = self.ups.try_remove(ui) {
            if u.owner.is_none() {
                self.pool.remove(&u.key, ui);
            }
            let _ = self.poll.registry().deregister(&mut u.sock);
        }
    }

    fn close_conn(&mut self, ci: usize) {
        self.end_request(ci);
        if let Some(mut c) = self.conns.try_remove(ci) {
            let _ = self.poll.registry().deregister(&mut c.sock);
            self.buffers.reclaim(&mut c);
            if let Some(ui) = c.up.take() {
                self.close_upstream(ui);
            }
        }
    }

    /// Queues a Tyk-style JSON error for the client and moves to flushing it. Any upstream in use is
    /// closed (its state is unknown).
    fn local_error(&mut self, ci: usize, status: u16, message: &str, close: bool) {
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        if c.resp_started {
            self.close_conn(ci);
            return;
        }
        if let Some(ui) = c.up.take() {
            self.close_upstream(ui);
        }
        self.begin_request(ci);
        let c = &mut self.conns[ci];
        c.mark.status = status;
        let close = close || c.close_after || !c.req_body_done || self.shared.closing();
        c.close_after |= close;
        response::write_error(&mut c.wbuf, status, message, close, c.head_req);
        c.resp_started = true;
        c.st = if close { St::Close } else { St::Local };
        let at = self.now + self.snapshot.gateway.limits.write_timeout;
        c.arm(Deadline::Write, at);
    }

    /// Advances connection `ci` as far as it can go without blocking.
    fn drive(&mut self, ci: usize) {
        for _ in 0..64 {
            if !self.conns.contains(ci) {
                return;
            }
            match self.step(ci) {
                Ok(true) => continue,
                Ok(false) => {
                    if let Some(c) = self.conns.get_mut(ci) {
                        self.buffers.park_if_idle(c);
                    }
                    return;
                }
                Err(Abort) => {
                    self.close_conn(ci);
                    return;
                }
            }
        }
        // Still making progress after many rounds (a large body): yield to other connections and
        // resume it before the next poll. No new readiness edge would come for it, since its
        // sockets have not hit EAGAIN.
        if !self.again.contains(&ci) {
            self.again.push(ci);
        }
    }

    /// Drives the connections that yielded in the last round.
    fn drive_again(&mut self) {
        let list = std::mem::take(&mut self.again);
        for &ci in &list {
            self.drive(ci);
        }
        let mut list = list;
        list.clear();
        if self.again.is_empty() {
            self.again = list;
        }
    }

    /// One round of every step; returns whether anything moved.
    fn step(&mut self, ci: usize) -> Result<bool, Abort> {
        let mut progress = false;
        progress |= self.write_client(ci)?;
        progress |= self.read_client(ci)?;
        let st = self.conns[ci].st;
        match st {
            St::Head => progress |= self.parse_head(ci)?,
            St::Body => progress |= self.buffer_body(ci)?,
            St::Chain => {}
            St::Proxy => {
                progress |= self.pump_request_body(ci)?;
                if self.conns.contains(ci) && self.conns[ci].st == St::Proxy {
                    progress |= self.upstream_io(ci)?;
                }
                if self.conns.contains(ci) && self.conns[ci].st == St::Proxy {
                    progress |= self.pump_response(ci)?;
                }
            }
            St::Local => progress |= self.discard_body(ci)?,
            St::Close => {}
        }
        if !self.conns.contains(ci) {
            return Ok(false);
        }
        progress |= self.finish(ci)?;
        Ok(progress)
    }

    fn write_client(&mut self, ci: usize) -> Result<bool, Abort> {
        let c = &mut self.conns[ci];
        if c.pending_write() == 0 || !c.writable {
            return Ok(false);
        }
        let before = c.pending_write();
        let moved = match c.tls.as_deref_mut() {
            None => flush(&mut c.sock, &mut c.wbuf, &mut c.wpos, &mut c.writable),
            Some(t) => tls::io::flush(t, &mut c.sock, &mut c.wbuf, &mut c.wpos, &mut c.writable),
        }
        .map_err(|_| Abort)?;
        c.mark.bytes_out += (before - c.pending_write()) as u64;
        if moved && c.deadline_kind == Deadline::Write {
            c.deadline = Some(self.now + self.snapshot.gateway.limits.write_timeout);
        }
        Ok(moved)
    }

    /// Whether the connection currently wants bytes from the client.
    fn wants_input(c: &Conn, max_head: usize) -> bool {
        match c.st {
            St::Head => true,
            St::Body | St::Local => !c.req_body_done,
            St::Proxy => {
                !c.req_body_done
                    && c.up.is_some()
                    && c.rlen - c.head.head_len < MAX_PENDING_UPSTREAM.min(max_head.max(1 << 16))
            }
            St::Chain | St::Close => false,
        }
    }

    fn read_client(&mut self, ci: usize) -> Result<bool, Abort> {
        let max_head = self.snapshot.gateway.limits.max_header_bytes;
        let c = &mut self.conns[ci];
        // On TLS, rustls may hold decrypted bytes that did not fit last time: read even without
        // a new edge (tls::io::fill touches the socket only while it is readable).
        if (!c.readable && c.tls.is_none()) || c.eof || !Self::wants_input(c, max_head) {
            return Ok(false);
        }
        self.buffers.lend(c);
        if c.rlen == c.rbuf.len() {
            if c.st == St::Head && c.rbuf.len() < max_head + 1 {
                let grow = (c.rbuf.len() * 2).min(max_head + 1);
                c.rbuf.resize(grow, 0);
            } else {
                return Ok(false);
            }
        }
        let (moved, eof) = match c.tls.as_deref_mut() {
            None => fill(
                &mut c.sock,
                &mut c.rbuf,
                &mut c.rlen,
                &mut c.readable,
                c.rdhup,
            ),
            Some(t) => tls::io::fill(t, &mut c.sock, &mut c.rbuf, &mut c.rlen, &mut c.readable)
                .inspect_err(|e| {
                    // A failed handshake or a bad record ends this connection only.
                    tracing::debug!(peer = %c.peer, "TLS connection failed: {e}");
                }),
        }
        .map_err(|_| Abort)?;
        c.eof |= eof;
        if moved {
            match c.st {
                St::Head if c.deadline_kind == Deadline::Idle && c.rlen > 0 => {
                    let at = self.now + self.snapshot.gateway.limits.client_header_timeout;
                    c.arm(Deadline::Head, at);
                }
                St::Body | St::Proxy if c.deadline_kind == Deadline::Body => {
                    c.deadline = Some(self.now + self.snapshot.gateway.limits.client_body_timeout);
                }
                _ => {}
            }
        }
        Ok(moved)
    }

    fn parse_head(&mut self, ci: usize) -> Result<bool, Abort> {
        let max = self.snapshot.gateway.limits.max_header_bytes;
        let c = &mut self.conns[ci];
        if c.rlen == 0 {
            if c.eof {
                return Err(Abort);
            }
            return Ok(false);
        }
        match http::parse_request(&c.rbuf[..c.rlen], &mut c.head, max) {
            Ok(true) => {
                self.start_request(ci);
                Ok(true)
            }
            Ok(false) => {
                if c.eof {
                    // The client closed mid-head: nothing sensible to answer.
                    return Err(Abort);
                }
                Ok(false)
            }
            Err(e) => {
                c.head.head_len = c.rlen;
                self.local_error(ci, e.status, e.message, true);
                Ok(true)
            }
        }
    }

    /// A complete head was parsed: route it and decide its path through the chain.
    fn start_request(&mut self, ci: usize) {
        let gw = Arc::clone(&self.snapshot.gateway);
        self.begin_request(ci);
        let c = &mut self.conns[ci];
        c.mark.head_parsed = true;
        c.started = self.now;
        c.http10 = c.head.http10;
        c.head_req = c.head.method.of(&c.rbuf) == b"HEAD";
        c.close_after = !c.head.keep_alive || gw.close_connections || self.shared.closing();
        c.req_body = c.head.body;
        c.req_body_done = c.req_body == BodyKind::None;
        c.req_remaining = match c.req_body {
            BodyKind::Length(n) => n,
            _ => 0,
        };
        c.req_chunk = ChunkedDecoder::new();
        c.req_body_seen = 0;

        if let BodyKind::Length(n) = c.req_body {
            if n > gw.limits.max_request_body_bytes {
                self.local_error(ci, 413, "Request body too large", true);
                return;
            }
        }
        let path = c.head.path(&c.rbuf);
        if path.starts_with("/tyk/") {
            // The Gateway API: its body (a session JSON) is read whole first.
            c.req.admin = true;
            if c.req_body_done {
                c.req.body_buffered = true;
                c.st = St::Chain;
                self.handle_admin(ci);
            } else {
                c.st = St::Body;
                let at = self.now + gw.limits.client_body_timeout;
                c.arm(Deadline::Body, at);
            }
            return;
        }
        let metrics_here = gw.metrics.enabled && gw.metrics.listen_address.is_none();
        let metrics_path = metrics_here && path == gw.metrics.path;
        if path == "/hello" || metrics_path {
            let (body, ctype) = if metrics_path {
                (
                    super::metrics_text(&self.shared),
                    crate::metrics::CONTENT_TYPE,
                )
            } else {
                (super::health_body(&self.shared), "application/json")
            };
            let c = &mut self.conns[ci];
            let close = c.close_after;
            c.mark.status = 200;
            response::Local {
                status: 200,
                headers: &[],
                content_type: Some(ctype),
                body: body.as_bytes(),
                close,
                http10_keep_alive: c.http10 && !close,
                head: c.head_req,
            }
            .write(&mut c.wbuf);
            c.resp_started = true;
            c.st = if close { St::Close } else { St::Local };
            let at = self.now + gw.limits.write_timeout;
            c.arm(Deadline::Write, at);
            return;
        }
        let api = match self.snapshot.route(path) {
            Some(api) => Arc::clone(api),
            None => {
                self.local_error(ci, 404, "Not found", false);
                return;
            }
        };
        if api.unavailable.is_some() {
            self.local_error(
                ci,
                503,
                "This API is unavailable: its plugin bundle could not be loaded",
                false,
            );
            return;
        }
        let transport = self.transport_for(&api);
        let response_hooks = transport != Transport::Off
            && chain::has_response_hooks(&api, &|h| self.hook_active(&api, h));
        let hooked = response_hooks
            || (transport != Transport::Off
                && chain::has_request_hooks(&api, &|h| self.hook_active(&api, h)));
        let c = &mut self.conns[ci];
        c.api = Some(Arc::clone(&api));
        c.req.response_hooks = response_hooks;
        if transport == Transport::Missing && hooked_any(&api) {
            tracing::error!(api = %api.api_id, driver = %api.custom_middleware.driver,
                "API has plugin hooks but no transport serves driver; answering 500");
            self.local_error(ci, 500, "Internal Server Error", false);
            return;
        }
        let request_hooks =
            hooked && chain::has_request_hooks(&api, &|h| self.hook_active(&api, h));
        if request_hooks || !api.use_keyless {
            let extractor_body = api
                .custom_middleware
                .id_extractor
                .as_ref()
                .is_some_and(store::extractor_needs_body);
            let need_body = (request_hooks && self.snapshot.gateway.coprocess.send_body)
                || (extractor_body && api.coprocess_auth);
            let c = &mut self.conns[ci];
            if need_body && !c.req_body_done {
                c.st = St::Body;
                let at = self.now + self.snapshot.gateway.limits.client_body_timeout;
                c.arm(Deadline::Body, at);
                return;
            }
            c.req.body_buffered = c.req_body_done;
            c.st = St::Chain;
            self.run_chain(ci);
            return;
        }
        self.start_proxy(ci);
    }

    /// How `api`'s hooks are served.
    fn transport_for(&self, api: &ApiDefinition) -> Transport {
        let cp = &self.snapshot.gateway.coprocess;
        if !cp.enable_coprocess {
            return Transport::Off;
        }
        if api.custom_middleware.driver.eq_ignore_ascii_case("grpc") {
            return if self.grpc.is_some() {
                Transport::Grpc
            } else {
                Transport::Missing
            };
        }
        match (&self.pipe, &self.grpc) {
            // Fallback: pipe hooks go to the gRPC server while the child is down.
            (Some((p, _)), Some(_)) if cp.enable_grpc_fallback && !p.is_healthy() => {
                Transport::Grpc
            }
            (Some(_), _) => Transport::Pipe,
            (None, Some(_)) if cp.enable_grpc_fallback => Transport::Grpc,
            _ => Transport::Missing,
        }
    }

    /// Whether a hook is called: plugins on, a transport for the API, and the plugin implements it.
    fn hook_active(&self, api: &ApiDefinition, h: &HookDef) -> bool {
        match self.transport_for(api) {
            // A bundle's hooks are announced to the plugin by load_bundle, not in its hello.
            Transport::Pipe => self.pipe.as_ref().is_some_and(|(p, _)| {
                !api.custom_middleware_bundle.is_empty() || p.implements(&h.name)
            }),
            Transport::Grpc => true,
            Transport::Off | Transport::Missing => false,
        }
    }

    /// Picks an upstream connection (pooled or new) and queues the request head.
    fn start_proxy(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        let Some(api) = c.api.clone() else {
            self.local_error(ci, 500, "Internal Server Error", true);
            return;
        };
        c.st = St::Proxy;
        c.mark.upstream_sent.get_or_insert(self.now);
        let target = &api.target;
        let key = api
            .upstream_tls
            .as_ref()
            .map_or(target.url.as_str(), |t| t.pool_key.as_str());
        let ui = match self.pool.take(key) {
            Some(ui) => {
                let u = &mut self.ups[ui];
                u.owner = Some(ci);
                u.reused = true;
                ui
            }
            None => {
                let addr = match self.pool.resolve(key, target) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(api = %api.api_id, target = %target.url, "cannot resolve upstream: {e}");
                        self.local_error(ci, 502, UPSTREAM_ERROR, false);
                        return;
                    }
                };
                match self.open_upstream(addr, key, api.upstream_tls.as_deref(), ci) {
                    Ok(ui) => ui,
                    Err(e) => {
                        tracing::warn!(api = %api.api_id, target = %target.url, "cannot connect upstream: {e}");
                        self.pool.forget_addr(key);
                        self.local_error(ci, 502, UPSTREAM_ERROR, false);
                        return;
                    }
                }
            }
        };
        let c = &mut self.conns[ci];
        c.up = Some(ui);
        let u = &mut self.ups[ui];
        u.wbuf.clear();
        u.wpos = 0;
        u.rlen = 0;
        let body = match c.req.edits.as_ref().and_then(|e| e.body.as_ref()) {
            Some(b) if !b.is_empty() || c.req_body != BodyKind::None => {
                BodyKind::Length(b.len() as u64)
            }
            Some(_) => BodyKind::None,
            None if c.req.body_buffered && c.req_body != BodyKind::None => {
                BodyKind::Length(c.req.body.len() as u64)
            }
            None => c.req_body,
        };
        proxy::write_request_head(
            &Outbound {
                buf: &c.rbuf,
                head: &c.head,
                api: &api,
                edits: c.req.edits.as_deref(),
                client_ip: &c.client_ip,
                body,
                scheme: c.scheme(),
            },
            &mut u.wbuf,
        );
        if let Some(b) = c.req.edits.as_ref().and_then(|e| e.body.as_ref()) {
            u.wbuf.extend_from_slice(b);
        } else if c.req.body_buffered {
            u.wbuf.extend_from_slice(&c.req.body);
        }
        if !c.req_body_done
            && c.head.expect_continue
            && !c.sent_continue
            && c.rlen == c.head.head_len
        {
            c.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            c.sent_continue = true;
        }
        c.resp_head_done = false;
        c.resp_done = false;
        let gw = &self.snapshot.gateway;
        let connecting = u.connecting;
        // A pooled connection has no pending edge: try writing right away.
        u.writable = true;
        if connecting {
            c.arm(Deadline::Connect, self.now + gw.upstream.connect_timeout);
        } else {
            self.arm_exchange(ci);
        }
    }

    /// Arms the deadline for the exchange with a connected upstream: the client's body timeout
    /// while its body is still coming, else the upstream read timeout.
    fn arm_exchange(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if c.req_body_done || c.req.body_buffered {
            c.arm(
                Deadline::Upstream,
                self.now + self.snapshot.gateway.upstream.read_timeout,
            );
        } else {
            c.arm(
                Deadline::Body,
                self.now + self.snapshot.gateway.limits.client_body_timeout,
            );
        }
    }

    fn open_upstream(
        &mut self,
        addr: SocketAddr,
        key: &str,
        tls: Option<&tls::client::UpstreamTls>,
        owner: usize,
    ) -> io::Result<usize> {
        let mut u = Upstream::connect(addr, key, tls)?;
        u.owner = Some(owner);
        let entry = self.ups.vacant_entry();
        let ui = entry.key();
        self.poll.registry().register(
            &mut u.sock,
            upstream_token(ui),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(u);
        Ok(ui)
    }

    /// Moves request body bytes from the client's buffer towards the upstream (streaming mode).
    fn pump_request_body(&mut self, ci: usize) -> Result<bool, Abort> {
        let max_body = self.snapshot.gateway.limits.max_request_body_bytes;
        let c = &mut self.conns[ci];
        if c.req_body_done || c.req.body_buffered {
            return Ok(false);
        }
        let Some(ui) = c.up else { return Ok(false) };
        let u = &mut self.ups[ui];
        if u.pending_write() >= MAX_PENDING_UPSTREAM {
            return Ok(false);
        }
        if c.rlen == c.head.head_len {
            return if c.eof { Err(Abort) } else { Ok(false) };
        }
        let n = match c.take_body(BodySink::Raw(&mut u.wbuf)) {
            Ok(n) => n,
            Err(_) => {
                self.local_error(ci, 400, "Malformed chunked body", true);
                return Ok(true);
            }
        };
        if c.body_exceeds(max_body) {
            self.local_error(ci, 413, "Request body too large", true);
            return Ok(true);
        }
        if n > 0 && c.deadline_kind != Deadline::Connect {
            self.arm_exchange(ci);
        }
        Ok(n > 0)
    }

    /// Reads the whole request body into the chain's buffer (decoded), for hooks.
    fn buffer_body(&mut self, ci: usize) -> Result<bool, Abort> {
        let max_body = self.snapshot.gateway.limits.max_request_body_bytes;
        let c = &mut self.conns[ci];
        if c.req_body_done {
            c.req.body_buffered = true;
            c.st = St::Chain;
            self.run_chain(ci);
            return Ok(true);
        }
        if c.head.expect_continue && !c.sent_continue {
            c.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            c.sent_continue = true;
            // Progress: the interim response must be flushed before the client sends its body.
            return Ok(true);
        }
        if c.rlen == c.head.head_len {
            return if c.eof { Err(Abort) } else { Ok(false) };
        }
        let mut body = std::mem::take(&mut c.req.body);
        let taken = c.take_body(BodySink::Decoded(&mut body));
        c.req.body = body;
        let n = match taken {
            Ok(n) => n,
            Err(_) => {
                self.local_error(ci, 400, "Malformed chunked body", true);
                return Ok(true);
            }
        };
        if c.req.body.len() as u64 > max_body || c.req_chunk.announced() > max_body {
            self.local_error(ci, 413, "Request body too large", true);
            return Ok(true);
        }
        Ok(n > 0)
    }

    /// After a local answer, reads and drops the rest of the request body so that the connection
    /// can serve the next request.
    fn discard_body(&mut self, ci: usize) -> Result<bool, Abort> {
        let c = &mut self.conns[ci];
        if c.req_body_done {
            return Ok(false);
        }
        if c.rlen == c.head.head_len {
            return if c.eof { Err(Abort) } else { Ok(false) };
        }
        let n = c.take_body(BodySink::Discard).map_err(|_| Abort)?;
        Ok(n > 0)
    }

    /// Connect completion, writes and reads on the upstream socket.
    fn upstream_io(&mut self, ci: usize) -> Result<bool, Abort> {
        let Some(ui) = self.conns[ci].up else {
            return Ok(false);
        };
        let mut progress = false;
        let u = &mut self.ups[ui];
        if u.connecting {
            if !u.writable {
                return Ok(false);
            }
            match u.sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    let key = u.key.clone();
                    tracing::warn!("upstream connect to {key} failed: {e}");
                    self.pool.forget_addr(&key);
                    self.upstream_failed(ci, false);
                    return Ok(true);
                }
            }
            match u.sock.peer_addr() {
                Ok(_) => {
                    u.connecting = false;
                    progress = true;
                    let c = &mut self.conns[ci];
                    if c.deadline_kind == Deadline::Connect {
                        self.arm_exchange(ci);
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => {
                    u.writable = false;
                    return Ok(false);
                }
                Err(_) => {
                    self.upstream_failed(ci, false);
                    return Ok(true);
                }
            }
        }
        let u = &mut self.ups[ui];
        if u.pending_write() > 0 && u.writable {
            let written = match u.tls.as_deref_mut() {
                None => flush(&mut u.sock, &mut u.wbuf, &mut u.wpos, &mut u.writable),
                Some(t) => {
                    tls::io::flush(t, &mut u.sock, &mut u.wbuf, &mut u.wpos, &mut u.writable)
                }
            };
            match written {
                Ok(moved) => progress |= moved,
                Err(e) => {
                    if u.tls.is_some() {
                        tracing::warn!(upstream = %u.key, "upstream TLS write failed: {e}");
                    }
                    // The upstream stopped reading; a response may still be readable.
                    u.wbuf.clear();
                    u.wpos = 0;
                    u.eof = true;
                }
            }
        }
        let c = &self.conns[ci];
        let room = c.pending_write() < MAX_PENDING_CLIENT;
        let u = &mut self.ups[ui];
        if (u.readable || u.tls.is_some()) && room && !u.eof && u.rlen < u.rbuf.len() {
            let read = match u.tls.as_deref_mut() {
                None => fill(
                    &mut u.sock,
                    &mut u.rbuf,
                    &mut u.rlen,
                    &mut u.readable,
                    u.rdhup,
                ),
                Some(t) => tls::io::fill(t, &mut u.sock, &mut u.rbuf, &mut u.rlen, &mut u.readable),
            };
            match read {
                Ok((moved, eof)) => {
                    progress |= moved;
                    u.eof |= eof;
                }
                Err(e) => {
                    if u.tls.is_some() {
                        // Failed handshake or verification: the client gets a 502, the log why.
                        tracing::warn!(upstream = %u.key, "upstream TLS failed: {e}");
                    }
                    u.eof = true;
                    progress = true;
                }
            }
            if progress {
                let c = &mut self.conns[ci];
                if c.deadline_kind == Deadline::Upstream {
                    c.deadline = Some(self.now + self.snapshot.gateway.upstream.read_timeout);
                }
            }
        }
        Ok(progress)
    }

    /// The upstream connection failed before a complete response. Retries once on a fresh
    /// connection when the request never reached a live upstream (stale pooled connection) and is
    /// safe to repeat; otherwise answers 502.
    fn upstream_failed(&mut self, ci: usize, got_bytes: bool) {
        let c = &mut self.conns[ci];
        let Some(ui) = c.up.take() else { return };
        let reused = self.ups.get(ui).is_some_and(|u| u.reused);
        self.close_upstream(ui);
        let c = &mut self.conns[ci];
        if c.resp_started {
            self.close_conn(ci);
            return;
        }
        let retryable = reused
            && !got_bytes
            && !c.retried
            && c.req_body_done
            && c.req_body == BodyKind::None
            && c.head.is_idempotent(&c.rbuf);
        if retryable {
            c.retried = true;
            self.start_proxy(ci);
            return;
        }
        self.local_error(ci, 502, UPSTREAM_ERROR, false);
    }

    /// Parses the upstream response head and moves response body bytes to the client.
    fn pump_response(&mut self, ci: usize) -> Result<bool, Abort> {
        let Some(ui) = self.conns[ci].up else {
            return Ok(false);
        };
        let max_head = self.snapshot.gateway.limits.max_header_bytes.max(64 * 1024);
        let c = &mut self.conns[ci];
        let u = &mut self.ups[ui];
        let mut progress = false;
        if !c.resp_head_done {
            if u.rlen == 0 {
                if u.eof {
                    self.upstream_failed(ci, false);
                    return Ok(true);
                }
                return Ok(false);
            }
            match http::parse_response(&u.rbuf[..u.rlen], &mut c.resp, max_head) {
                Ok(false) => {
                    if u.eof {
                        self.upstream_failed(ci, true);
                        return Ok(true);
                    }
                    return Ok(false);
                }
                Err(e) => {
                    tracing::warn!(upstream = %u.key, "{e}");
                    self.upstream_failed(ci, true);
                    return Ok(true);
                }
                Ok(true) => {}
            }
            let hl = c.resp.head_len;
            if (100..200).contains(&c.resp.status) {
                // Interim response (we never forward Expect or Upgrade): drop it.
                u.rbuf.copy_within(hl..u.rlen, 0);
                u.rlen -= hl;
                return Ok(true);
            }
            c.resp_head_done = true;
            c.mark.upstream = c
                .mark
                .upstream_sent
                .map(|t| self.now.saturating_duration_since(t));
            c.resp_kind = c.resp.body_kind(c.head_req);
            c.resp_remaining = match c.resp_kind {
                BodyKind::Length(n) => n,
                _ => 0,
            };
            c.resp_chunk = ChunkedDecoder::new();
            c.resp_decode = c.resp_kind == BodyKind::Chunked && c.http10;
            if c.resp_kind == BodyKind::UntilClose || c.resp_decode {
                c.close_after = true;
            }
            let buffer = c.req.response_hooks;
            if buffer {
                c.resp_buffer = true;
                c.resp_decode = c.resp_kind == BodyKind::Chunked;
                let headers = c
                    .resp
                    .headers
                    .iter()
                    .filter(|h| {
                        let n = h.name.of(&u.rbuf);
                        !http::headers::is_hop_by_hop(n)
                            && !n.eq_ignore_ascii_case(b"content-length")
                    })
                    .map(|h| {
                        (
                            String::from_utf8_lossy(h.name.of(&u.rbuf)).into_owned(),
                            String::from_utf8_lossy(h.value.of(&u.rbuf)).into_owned(),
                        )
                    })
                    .collect();
                c.req.response = Some(Box::new(LocalResponse {
                    status: c.resp.status,
                    headers,
                    body: Vec::new(),
                    content_type: None,
                }));
            } else {
                write_response_head(c, &u.rbuf);
                c.mark.status = c.resp.status;
                c.resp_started = true;
            }
            u.rbuf.copy_within(hl..u.rlen, 0);
            u.rlen -= hl;
            progress = true;
            if c.resp_kind == BodyKind::None {
                c.resp_done = true;
            }
        }
        if !c.resp_done && u.rlen > 0 && c.pending_write() < MAX_PENDING_CLIENT {
            let sink = match c.req.response.as_mut() {
                Some(r) if c.resp_buffer => &mut r.body,
                _ => &mut c.wbuf,
            };
            let n = match c.resp_kind {
                BodyKind::Length(_) => {
                    let n = (c.resp_remaining.min(u.rlen as u64)) as usize;
                    c.resp_remaining -= n as u64;
                    sink.extend_from_slice(&u.rbuf[..n]);
                    c.resp_done = c.resp_remaining == 0;
                    n
                }
                BodyKind::Chunked => {
                    let out = if c.resp_decode {
                        Some(&mut *sink)
                    } else {
                        None
                    };
                    let n = match c.resp_chunk.feed(&u.rbuf[..u.rlen], out) {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::warn!(upstream = %u.key, "bad chunked response: {e}");
                            return Err(Abort);
                        }
                    };
                    if !c.resp_decode {
                        sink.extend_from_slice(&u.rbuf[..n]);
                    }
                    c.resp_done = c.resp_chunk.is_done();
                    n
                }
                BodyKind::UntilClose => {
                    sink.extend_from_slice(&u.rbuf[..u.rlen]);
                    u.rlen
                }
                BodyKind::None => 0,
            };
            u.rbuf.copy_within(n..u.rlen, 0);
            u.rlen -= n;
            progress |= n > 0;
        }
        if !c.resp_done && u.eof && u.rlen == 0 {
            if c.resp_kind == BodyKind::UntilClose {
                c.resp_done = true;
                progress = true;
            } else {
                // Truncated response: the client can only learn it from the closed connection.
                return Err(Abort);
            }
        }
        if c.resp_buffer
            && c.req.response.as_ref().map_or(0, |r| r.body.len() as u64)
                > self.snapshot.gateway.limits.max_request_body_bytes
        {
            tracing::warn!(upstream = %u.key, "response too large to buffer for response hooks");
            self.upstream_failed(ci, true);
            return Ok(true);
        }
        if c.resp_done {
            let buffered = c.resp_buffer;
            self.release_upstream(ci);
            if buffered {
                let c = &mut self.conns[ci];
                c.st = St::Chain;
                c.req.phase = Phase::Response(0);
                self.run_response_chain(ci);
            }
            progress = true;
        }
        Ok(progress)
    }

    /// The response is complete: pool the upstream connection if it can serve another request.
    fn release_upstream(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        let Some(ui) = c.up.take() else { return };
        let reusable = c.req_body_done
            && !c.resp.close
            && c.resp_kind != BodyKind::UntilClose
            && !self.shared.closing();
        let c_st_deadline_write = self.now + self.snapshot.gateway.limits.write_timeout;
        c.arm(Deadline::Write, c_st_deadline_write);
        if !c.req_body_done {
            // The upstream answered before reading the whole body: the rest cannot be forwarded,
            // and the connection's framing is lost.
            c.close_after = true;
        }
        c.st = St::Local;
        let u = &mut self.ups[ui];
        let clean = u.rlen == 0 && !u.eof && u.pending_write() == 0;
        if reusable && clean {
            u.owner = None;
            u.served += 1;
            u.idle_since = self.now;
            u.readable = false;
            if self.pool.put(
                &u.key,
                ui,
                self.snapshot.gateway.upstream.max_idle_per_target,
            ) {
                return;
            }
        }
        self.close_upstream(ui);
    }

    /// When the response is fully written, either closes or starts the next request.
    fn finish(&mut self, ci: usize) -> Result<bool, Abort> {
        let c = &mut self.conns[ci];
        match c.st {
            St::Local if c.pending_write() == 0 && (c.req_body_done || c.close_after) => {
                self.end_request(ci);
                let c = &mut self.conns[ci];
                if c.close_after {
                    if c.queue_close_notify() {
                        return Ok(true);
                    }
                    let _ = c.sock.shutdown(std::net::Shutdown::Write);
                    return Err(Abort);
                }
                c.reset_for_next();
                let idle = self.snapshot.gateway.limits.keepalive_timeout;
                c.arm(Deadline::Idle, self.now + idle);
                if c.rlen > 0 {
                    let at = self.now + self.snapshot.gateway.limits.client_header_timeout;
                    c.arm(Deadline::Head, at);
                }
                Ok(true)
            }
            St::Close if c.pending_write() == 0 => {
                self.end_request(ci);
                let c = &mut self.conns[ci];
                if c.queue_close_notify() {
                    return Ok(true);
                }
                let _ = c.sock.shutdown(std::net::Shutdown::Write);
                Err(Abort)
            }
            _ => Ok(false),
        }
    }

    /// Runs the request phases of the chain from where the request is: dispatches the next hook
    /// (and parks the connection until its reply), or goes upstream when none is left.
    fn run_chain(&mut self, ci: usize) {
        if self.conns[ci].req.admin {
            self.handle_admin(ci);
            return;
        }
        let Some(api) = self.conns[ci].api.clone() else {
            return;
        };
        let ignored = {
            let c = &self.conns[ci];
            api.is_ignored(c.head.path(&c.rbuf), c.head.method.str(&c.rbuf))
        };
        let (hook, def) = loop {
            let mut phase = self.conns[ci].req.phase;
            let step = chain::next_step(&api, &mut phase, &|h| self.hook_active(&api, h), ignored);
            self.conns[ci].req.phase = phase;
            let result = match step {
                Step::Upstream => {
                    self.start_proxy(ci);
                    return;
                }
                Step::TokenAuth => {
                    let op = self.token_auth_op(ci, &api);
                    self.store_step(ci, op)
                }
                Step::Enforce => match self.enforce_op(ci, &api) {
                    Ok(op) => self.store_step(ci, op),
                    Err(resp) => Err(resp),
                },
                Step::Hook(HookType::CustomKeyCheck, def) => match self.auth_cache_op(ci, &api) {
                    Ok(Some(op)) => self.store_step(ci, op),
                    Ok(None) => break (HookType::CustomKeyCheck, def),
                    Err(resp) => Err(resp),
                },
                Step::Hook(hook, def) => break (hook, def),
            };
            match result {
                Ok(true) => {}
                // Parked on the store; `on_store_reply` resumes the chain.
                Ok(false) => return,
                Err(resp) => {
                    self.respond_local(ci, resp);
                    return;
                }
            }
        };
        if self.dispatch_borrowed(ci, hook, def, &api) {
            return;
        }
        let send_body = self.snapshot.gateway.coprocess.send_body;
        let c = &self.conns[ci];
        let view = c.request_view();
        let obj =
            chain::request_object(hook, def, &api, &view, c.req.session.as_deref(), send_body);
        self.dispatch(ci, hook, def, obj);
    }

    /// The allocation-free way to send a request-phase hook: over the pipe, encoded straight
    /// from the read buffer ([`RequestHookObject`]) instead of through an owned object. Returns
    /// false, having done nothing, where the owned object is needed: gRPC, a gRPC fallback that
    /// must keep the object to re-send it, a body large enough to go as a file, or a request a
    /// hook already changed.
    fn dispatch_borrowed(
        &mut self,
        ci: usize,
        hook: HookType,
        def: &HookDef,
        api: &ApiDefinition,
    ) -> bool {
        let cp = &self.snapshot.gateway.coprocess;
        let Some((pipe, handle)) = self.pipe.as_ref() else {
            return false;
        };
        if self.transport_for(api) != Transport::Pipe
            || (cp.enable_grpc_fallback && self.grpc.is_some())
        {
            return false;
        }
        let c = &self.conns[ci];
        let threshold = cp.mmap_threshold_bytes;
        if threshold > 0 && c.req.body.len() >= threshold && pipe.supports_mmap() {
            return false;
        }
        let view = c.request_view();
        let session = c.req.session.as_deref();
        let Some(obj) = RequestHookObject::new(hook, def, api, &view, session, cp.send_body) else {
            return false;
        };
        let timeout = def.timeout.unwrap_or(cp.hook_timeout);
        let deadline = self.now + timeout;
        let encode = |buf: &mut Vec<u8>, id, max| obj.encode_dispatch(buf, id, max);
        let id =
            pipe.dispatch_encoded_deferred(handle.id, tag_of(ci, c.generation), deadline, encode);
        self.park_on_call(ci, id, hook, def, false, None);
        true
    }

    /// Runs a store operation: inline for the embedded store (in-process maps), on the store
    /// threads for Redis so that a slow or unreachable Redis never stalls this event loop.
    /// `Ok(true)`: applied, go on; `Ok(false)`: parked until [`Worker::on_store_reply`].
    fn store_step(&mut self, ci: usize, op: StoreOp) -> Result<bool, LocalResponse> {
        let Some((jobs, tx)) = &self.store_jobs else {
            let done = op(&self.shared);
            return self.apply_store_done(ci, done);
        };
        let c = &mut self.conns[ci];
        let tag = tag_of(ci, c.generation);
        let shared = Arc::clone(&self.shared);
        let tx = tx.clone();
        let waker = Arc::clone(&self.waker);
        let job: StoreJob = Box::new(move || {
            let done = op(&shared);
            let _ = tx.send((tag, done));
            let _ = waker.wake();
        });
        if jobs.send(job).is_err() {
            return Err(LocalResponse::error(
                503,
                "Session store unavailable",
                Vec::new(),
            ));
        }
        c.req.store_pending = true;
        c.st = St::Chain;
        // Safety net only: the store answers within its own timeouts.
        c.arm(Deadline::Hook, self.now + Duration::from_secs(30));
        Ok(false)
    }

    /// Applies a store result to the request. `Ok(true)` continues the chain.
    fn apply_store_done(&mut self, ci: usize, done: StoreDone) -> Result<bool, LocalResponse> {
        let c = &mut self.conns[ci];
        match done {
            StoreDone::Token(res) => {
                let (key, session) = match res {
                    Ok(v) => v,
                    Err(resp) => {
                        if resp.status == 401 || resp.status == 403 {
                            let msg = resp_message(&resp);
                            self.fire_event(ci, "AuthFailure", &msg);
                        }
                        return Err(resp);
                    }
                };
                let c = &mut self.conns[ci];
                // With plugin auth and token auth both on, `base_identity_provided_by` says whose
                // session is the identity (Tyk: the plugin's unless it is "auth_token").
                let token_identity = c
                    .api
                    .as_ref()
                    .is_some_and(|a| a.base_identity_provided_by == "auth_token");
                if c.req.session.is_none() || token_identity {
                    c.req.session = Some(Box::new(session));
                    c.req.session_key = Some(key);
                }
            }
            StoreDone::Cache(id, res) => match res? {
                Some(session) => {
                    c.req.session = Some(Box::new(session));
                    c.req.session_key = Some(id);
                }
                None => {
                    // Cache miss: back to the auth phase, which now calls the plugin.
                    c.req.auth_id = Some(id);
                    c.req.cache_checked = true;
                    c.req.phase = Phase::Auth;
                }
            },
            StoreDone::Stored(id, res) => {
                c.req.session = Some(Box::new(res?));
                c.req.session_key = Some(id);
            }
            StoreDone::Enforced(res) => {
                let (headers, session) = res?;
                c.req.session = Some(Box::new(session));
                c.req.resp_headers.extend(headers);
            }
            StoreDone::Admin(resp) => {
                // A reload it ran applies to whatever this worker handles next.
                self.refresh_snapshot();
                return Err(resp);
            }
        }
        Ok(true)
    }

    /// Sends an event to the plugin for every `cp_dynamic_handler` the API registers for
    /// `event` (Tyk's `event_handlers.events.<Event>`), over the API's transport (the pipe's
    /// `event` message or gRPC `DispatchEvent`). Fire and forget.
    fn fire_event(&self, ci: usize, event: &str, message: &str) {
        let Some(c) = self.conns.get(ci) else { return };
        let Some(api) = c.api.as_ref() else { return };
        let Some(handlers) = api
            .event_handlers
            .get("events")
            .and_then(|e| e.get(event))
            .and_then(|h| h.as_array())
        else {
            return;
        };
        for h in handlers {
            if h.get("handler_name").and_then(|v| v.as_str()) != Some("cp_dynamic_handler") {
                continue;
            }
            let name = h
                .get("handler_meta")
                .and_then(|m| m.get("name"))
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let key = c
                .head
                .header(&c.rbuf, &api.auth_header_name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let payload = serde_json::json!({
                "message": {
                    "Type": event,
                    "Meta": {
                        "Message": message,
                        "Path": c.head.path(&c.rbuf),
                        "Origin": c.peer.ip().to_string(),
                        "Key": key,
                    },
                    "TimeStamp": unix_time_text(),
                },
                "handler_name": name,
                "spec": {"APIID": api.api_id, "OrgID": api.org_id},
            })
            .to_string();
            match self.transport_for(api) {
                Transport::Grpc => {
                    if let Some((g, _)) = &self.grpc {
                        g.send_event(&payload);
                    }
                }
                Transport::Pipe => {
                    if let Some((p, _)) = &self.pipe {
                        p.send_event(&payload);
                    }
                }
                Transport::Off | Transport::Missing => {}
            }
        }
    }

    /// A store operation finished on a store thread: resume the request.
    fn on_store_reply(&mut self, tag: u64, done: StoreDone) {
        let ci = (tag >> 32) as usize;
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        if c.generation != tag as u32 || !c.req.store_pending {
            return;
        }
        c.req.store_pending = false;
        match self.apply_store_done(ci, done) {
            Ok(_) => self.run_chain(ci),
            Err(resp) => self.respond_local(ci, resp),
        }
        if self.conns.contains(ci) {
            self.drive(ci);
        }
    }

    /// Standard token auth: the session stored under the key in the API's auth header.
    fn token_auth_op(&self, ci: usize, api: &Arc<ApiDefinition>) -> StoreOp {
        let c = &self.conns[ci];
        let value = c
            .head
            .header(&c.rbuf, &api.auth_header_name)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let api = Arc::clone(api);
        Box::new(move |sh: &Shared| {
            StoreDone::Token(store::token_auth(&sh.store, &api, value.as_deref()))
        })
    }

    /// The ID extractor step before the auth hook: `Ok(None)` calls the plugin; `Ok(Some(op))`
    /// looks the extracted id up in the session cache first (a hit skips the plugin).
    fn auth_cache_op(
        &mut self,
        ci: usize,
        api: &Arc<ApiDefinition>,
    ) -> Result<Option<StoreOp>, LocalResponse> {
        let Some(ex) = api.custom_middleware.id_extractor.as_ref() else {
            return Ok(None);
        };
        let c = &mut self.conns[ci];
        if c.req.cache_checked {
            return Ok(None);
        }
        let buf = &c.rbuf;
        let head = &c.head;
        let header = |name: &str| {
            head.header(buf, name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let req = store::ExtractorRequest {
            method: head.method.str(buf),
            header: &header,
            query: head.query(buf),
            body: if c.req.body_buffered {
                Some(&c.req.body)
            } else {
                None
            },
        };
        let id = store::id_extractor_key(api, ex, &req)?;
        Ok(Some(Box::new(move |sh: &Shared| {
            let res = store::cached_session(&sh.store, &id, std::time::SystemTime::now());
            StoreDone::Cache(id, res)
        })))
    }

    /// After the auth hook installed a session: store it (under the extractor's id, else the
    /// plugin's token), keeping an existing session's quota. `None` when nothing is stored.
    fn store_session_op(&mut self, ci: usize) -> Option<StoreOp> {
        let c = &mut self.conns[ci];
        let token_identity = c
            .api
            .as_ref()
            .is_some_and(|a| a.use_standard_auth && a.base_identity_provided_by == "auth_token");
        if token_identity {
            // The token's session is the identity: the plugin's is neither stored nor used.
            c.req.session = None;
            c.req.auth_id = None;
            return None;
        }
        let mut session = (**c.req.session.as_ref()?).clone();
        let id = match c.req.auth_id.take() {
            Some(id) => id,
            None => session.key_id.clone().unwrap_or_default(),
        };
        Some(Box::new(move |sh: &Shared| {
            let res = store::store_auth_session(&sh.store, &id, &mut session).map(|()| session);
            StoreDone::Stored(id, res)
        }))
    }

    /// Expiry, access rights, rate limit and quota for the authenticated session.
    fn enforce_op(&self, ci: usize, api: &Arc<ApiDefinition>) -> Result<StoreOp, LocalResponse> {
        let c = &self.conns[ci];
        let (Some(session), Some(key)) = (c.req.session.as_ref(), c.req.session_key.as_ref())
        else {
            return Err(LocalResponse::error(403, "Forbidden", Vec::new()));
        };
        let mut session = (**session).clone();
        let key = key.clone();
        let api = Arc::clone(api);
        Ok(Box::new(move |sh: &Shared| {
            let res = store::enforce(
                &sh.store,
                &key,
                &mut session,
                &api,
                std::time::SystemTime::now(),
            )
            .map(|headers| (headers, session));
            StoreDone::Enforced(res)
        }))
    }

    /// Answers a Gateway API request (/tyk/...), body already buffered.
    fn handle_admin(&mut self, ci: usize) {
        let c = &self.conns[ci];
        let method = c.head.method.str(&c.rbuf).to_string();
        let path = c.head.path(&c.rbuf).to_string();
        let query = c.head.query(&c.rbuf).map(str::to_string);
        let secret = c
            .head
            .header(&c.rbuf, "x-tyk-authorization")
            .map(<[u8]>::to_vec);
        let body = std::mem::take(&mut self.conns[ci].req.body);
        let op: StoreOp = Box::new(move |sh: &Shared| {
            let snapshot = sh.snapshot.load_full();
            let reload = || sh.reload();
            let req = admin::AdminRequest {
                method: &method,
                path: &path,
                query: query.as_deref(),
                secret_header: secret.as_deref(),
                body: &body,
            };
            let ctx = admin::AdminContext {
                store: &sh.store,
                snapshot: &snapshot,
                reload: &reload,
                allow_master_keys: false,
            };
            StoreDone::Admin(admin::handle(&req, &ctx))
        });
        if let Err(resp) = self.store_step(ci, op) {
            self.respond_local(ci, resp);
        }
    }

    /// Sends a hook call and parks the connection on it.
    fn dispatch(
        &mut self,
        ci: usize,
        hook: HookType,
        def: &HookDef,
        obj: crate::coprocess::object::Object,
    ) {
        self.dispatch_via(ci, hook, def, obj, false);
    }

    /// Sends a hook call over the API's transport, or over gRPC when `force_grpc` (a fallback
    /// retry of a call the dead pipe child could not answer).
    fn dispatch_via(
        &mut self,
        ci: usize,
        hook: HookType,
        def: &HookDef,
        mut obj: crate::coprocess::object::Object,
        force_grpc: bool,
    ) {
        let cp = &self.snapshot.gateway.coprocess;
        let timeout = def.timeout.unwrap_or(cp.hook_timeout);
        let threshold = cp.mmap_threshold_bytes;
        let via_grpc = force_grpc
            || self.conns[ci]
                .api
                .as_ref()
                .is_some_and(|api| self.transport_for(api) == Transport::Grpc);
        // With fallback on, keep the object so a call lost with the pipe child can be re-sent
        // to the gRPC server.
        let keep = !via_grpc && cp.enable_grpc_fallback && self.grpc.is_some();
        let retry = keep.then(|| (Box::new(obj.clone()), def.clone()));
        let c = &mut self.conns[ci];
        let deadline = self.now + timeout;
        let tag = tag_of(ci, c.generation);
        let id = match (via_grpc, self.pipe.as_ref(), self.grpc.as_ref()) {
            (true, _, Some((grpc, handle))) => grpc.dispatch(handle.id, tag, deadline, &obj),
            (false, Some((pipe, handle)), _) => {
                if threshold > 0 && pipe.supports_mmap() {
                    c.req.spilled = spill_large_body(&mut obj, threshold);
                }
                pipe.dispatch_deferred(handle.id, tag, deadline, &obj)
            }
            _ => {
                self.local_error(ci, 500, "Internal Server Error", false);
                return;
            }
        };
        self.park_on_call(ci, id, hook, def, via_grpc, retry);
    }

    /// Parks the connection on hook call `id` until its reply (or the safety-net deadline).
    fn park_on_call(
        &mut self,
        ci: usize,
        id: u64,
        hook: HookType,
        def: &HookDef,
        via_grpc: bool,
        retry: Option<(Box<crate::coprocess::object::Object>, HookDef)>,
    ) {
        let cp = &self.snapshot.gateway.coprocess;
        let timeout = def.timeout.unwrap_or(cp.hook_timeout);
        // An auth hook never fails open: a protected API is never served without a session.
        let fail_open = hook != HookType::CustomKeyCheck && def.fail_open.unwrap_or(cp.fail_open);
        tracing::trace!(call = id, hook = hook.name(), name = %def.name, "hook dispatched");
        let c = &mut self.conns[ci];
        c.req.pending = Some(PendingCall {
            id,
            hook,
            fail_open,
            grpc: via_grpc,
        });
        c.req.retry = retry;
        c.mark.hook_sent = Some(self.now);
        c.st = St::Chain;
        // Safety net only: the client answers every call by its deadline.
        c.arm(Deadline::Hook, self.now + timeout + Duration::from_secs(2));
    }

    /// Takes the current plugin child's stdout into this worker's poll (the first worker to ask
    /// gets it; see [`ReplyPipe`]), letting go of the previous child's.
    fn attach_reply_pipe(&mut self) {
        let Some((pipe, handle)) = &self.pipe else {
            return;
        };
        self.reply_gen = pipe.generation();
        if let Some(old) = self.reply_pipe.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&old.fd()));
        }
        let Some(rp) = pipe.attach_replies(handle.id) else {
            return;
        };
        let registered = self.poll.registry().register(
            &mut SourceFd(&rp.fd()),
            PIPE_REPLIES,
            Interest::READABLE,
        );
        match registered {
            Ok(()) => self.reply_pipe = Some(rp),
            // Dropping the hold leaves the replies to the client's reader thread.
            Err(e) => tracing::warn!(worker = self.id, "cannot poll the plugin's stdout: {e}"),
        }
    }

    /// Reads the replies waiting on the plugin child's stdout, then handles this worker's.
    fn read_pipe_replies(&mut self) {
        let mut own = std::mem::take(&mut self.own_replies);
        if let (Some((pipe, _)), Some(rp)) = (&self.pipe, &self.reply_pipe) {
            if !pipe.read_replies(rp, &mut own) {
                // The child's stream ended; its restart publishes a new generation.
                let _ = self.poll.registry().deregister(&mut SourceFd(&rp.fd()));
                self.reply_pipe = None;
            }
        }
        for r in own.drain(..) {
            self.on_hook_reply(r, false);
        }
        self.own_replies = own;
        self.drain_replies();
    }

    /// Takes every reply queued for this worker.
    fn drain_replies(&mut self) {
        while let Some(r) = self
            .pipe
            .as_ref()
            .and_then(|(_, h)| h.replies.try_recv().ok())
        {
            self.on_hook_reply(r, false);
        }
        while let Some(r) = self
            .grpc
            .as_ref()
            .and_then(|(_, h)| h.replies.try_recv().ok())
        {
            self.on_hook_reply(r, true);
        }
        while let Some((tag, done)) = self
            .store_replies
            .as_ref()
            .and_then(|rx| rx.try_recv().ok())
        {
            self.on_store_reply(tag, done);
        }
    }

    fn on_hook_reply(&mut self, r: HookReply, via_grpc: bool) {
        tracing::trace!(call = r.call_id, ok = r.result.is_ok(), "hook reply");
        let ci = (r.tag >> 32) as usize;
        let generation = r.tag as u32;
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        if c.generation != generation {
            return;
        }
        let Some(pending) = c.req.pending else { return };
        if pending.id != r.call_id || pending.grpc != via_grpc {
            return;
        }
        c.req.pending = None;
        self.hook_ended(ci, pending.hook, pending.grpc, &r.result);
        let c = &mut self.conns[ci];
        if let Some(f) = c.req.spilled.take() {
            crate::coprocess::bodyfile::remove(&f);
        }
        let Some(api) = c.api.clone() else { return };
        let retry = c.req.retry.take();
        let reply = match r.result.and_then(unspill_reply) {
            Ok(obj) => obj,
            Err(CallError::ChildDied | CallError::Unavailable) if retry.is_some() => {
                // Fallback: the pipe child died or is restarting; the gRPC server serves the hook.
                if let Some((obj, def)) = retry {
                    tracing::debug!(api = %api.api_id, hook = pending.hook.name(), "pipe child down; hook re-sent over gRPC");
                    self.dispatch_via(ci, pending.hook, &def, *obj, true);
                    self.drive(ci);
                }
                return;
            }
            Err(e) => {
                if !matches!(e, CallError::PluginError(_)) || !pending.fail_open {
                    tracing::warn!(api = %api.api_id, hook = pending.hook.name(), "hook failed: {e}");
                }
                let outcome = if pending.fail_open {
                    Outcome::Continue
                } else {
                    Outcome::Respond(chain::dispatch_failure(pending.hook))
                };
                self.after_hook(ci, pending.hook, outcome);
                return;
            }
        };
        if pending.hook == HookType::Response {
            let c = &mut self.conns[ci];
            let Some(mut resp) = c.req.response.take() else {
                return;
            };
            // Over gRPC (proto3: the server always answers a whole Object) a missing `response`
            // is an error, as in Tyk; over the pipe it means "unchanged".
            if pending.grpc && reply.response.is_none() {
                self.after_hook(
                    ci,
                    HookType::Response,
                    Outcome::Respond(LocalResponse::error(500, "Middleware error", Vec::new())),
                );
                return;
            }
            match chain::apply_response_reply(&mut resp, reply) {
                Ok(()) => {
                    c.req.response = Some(resp);
                    self.after_hook(ci, HookType::Response, Outcome::Continue);
                }
                Err(e) => self.after_hook(ci, HookType::Response, Outcome::Respond(e)),
            }
            return;
        }
        let c = &mut self.conns[ci];
        let mut state = std::mem::take(&mut c.req);
        let outcome = {
            let view = RequestView {
                buf: &c.rbuf,
                head: &c.head,
                edits: state.edits.as_deref(),
                body: &state.body,
                scheme: c.scheme(),
            };
            // `apply` needs the view (borrowing state's edits) and state mutably: work on a copy
            // of the edits.
            let mut work = chain::RequestState {
                phase: state.phase,
                edits: state.edits.clone(),
                body_buffered: state.body_buffered,
                session: state.session.take(),
                spare_edits: state.spare_edits.take(),
                ..Default::default()
            };
            let out = chain::apply_request_reply(pending.hook, &api, &view, &mut work, reply);
            state.edits = work.edits;
            state.session = work.session;
            state.spare_edits = work.spare_edits;
            out
        };
        c.req = state;
        if let Outcome::Respond(resp) = &outcome {
            if resp.status >= 400 {
                // Tyk fires AuthFailure for a hook's error answer (and a failed auth hook).
                self.fire_event(ci, "AuthFailure", &resp_message(resp));
            }
        }
        let outcome = match outcome {
            Outcome::Continue if pending.hook == HookType::CustomKeyCheck => {
                match self.store_session_op(ci) {
                    None => Outcome::Continue,
                    Some(op) => match self.store_step(ci, op) {
                        Ok(true) => Outcome::Continue,
                        Ok(false) => return, // parked on the store
                        Err(resp) => Outcome::Respond(resp),
                    },
                }
            }
            other => other,
        };
        self.after_hook(ci, pending.hook, outcome);
    }

    fn after_hook(&mut self, ci: usize, hook: HookType, outcome: Outcome) {
        match outcome {
            Outcome::Respond(resp) => self.respond_local(ci, resp),
            Outcome::Continue => {
                if hook == HookType::Response {
                    self.run_response_chain(ci);
                } else {
                    self.run_chain(ci);
                }
            }
        }
        if self.conns.contains(ci) {
            self.drive(ci);
        }
    }

    /// Runs the next response hook on the buffered response, or writes it when none is left.
    fn run_response_chain(&mut self, ci: usize) {
        let Some(api) = self.conns[ci].api.clone() else {
            return;
        };
        let mut phase = self.conns[ci].req.phase;
        if !matches!(phase, Phase::Response(_)) {
            phase = Phase::Response(0);
        }
        let next = chain::next_response_hook(&api, &mut phase, &|h| self.hook_active(&api, h));
        self.conns[ci].req.phase = phase;
        let Some(def) = next else {
            let c = &mut self.conns[ci];
            let resp = c.req.response.take().map(|b| *b).unwrap_or_default();
            self.respond_local(ci, resp);
            return;
        };
        let send_body = self.snapshot.gateway.coprocess.send_body;
        let c = &self.conns[ci];
        let Some(resp) = c.req.response.as_deref() else {
            return;
        };
        let view = c.request_view();
        let obj =
            chain::response_object(def, &api, &view, c.req.session.as_deref(), resp, send_body);
        self.dispatch(ci, HookType::Response, def, obj);
    }

    /// Queues a complete gateway-built response and moves to flushing it.
    fn respond_local(&mut self, ci: usize, resp: LocalResponse) {
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        if let Some(ui) = c.up.take() {
            self.close_upstream(ui);
        }
        let c = &mut self.conns[ci];
        let close = c.close_after || self.shared.closing();
        if !c.req_body_done && c.head.expect_continue && !c.sent_continue {
            // The client may still be waiting to send the body: close rather than guess.
            c.close_after = true;
        }
        let close = close || c.close_after;
        let mut resp = resp;
        resp.headers.append(&mut c.req.resp_headers);
        c.mark.status = resp.status;
        response::Local {
            status: resp.status,
            headers: &resp.headers,
            content_type: resp.content_type,
            body: &resp.body,
            close,
            http10_keep_alive: c.http10 && !close,
            head: c.head_req,
        }
        .write(&mut c.wbuf);
        c.resp_started = true;
        c.st = if close { St::Close } else { St::Local };
        let at = self.now + self.snapshot.gateway.limits.write_timeout;
        c.arm(Deadline::Write, at);
    }
}

/// Moves a request (or response) body of at least `threshold` bytes out of the object into a body
/// file; returns the file to delete once the call is answered.
fn spill_large_body(
    obj: &mut crate::coprocess::object::Object,
    threshold: usize,
) -> Option<crate::coprocess::object::RawBodyFile> {
    use crate::coprocess::bodyfile;
    let big = |b: &Option<serde_bytes::ByteBuf>| b.as_ref().is_some_and(|b| b.len() >= threshold);
    let (body, file) = if obj.response.as_ref().is_some_and(|r| big(&r.raw_body)) {
        let r = obj.response.as_mut()?;
        (&mut r.raw_body, &mut r.raw_body_file)
    } else if obj.request.as_ref().is_some_and(|r| big(&r.raw_body)) {
        let r = obj.request.as_mut()?;
        (&mut r.raw_body, &mut r.raw_body_file)
    } else {
        return None;
    };
    match bodyfile::spill(body.as_ref()?) {
        Ok(f) => {
            *body = None;
            *file = Some(f.clone());
            Some(f)
        }
        Err(e) => {
            tracing::warn!("cannot write body file, sending the body inline: {e}");
            None
        }
    }
}

/// Replaces a `raw_body_file` in a plugin's reply by the bytes it names.
fn unspill_reply(
    mut obj: crate::coprocess::object::Object,
) -> Result<crate::coprocess::object::Object, CallError> {
    use crate::coprocess::bodyfile;
    if let Some(r) = obj.request.as_mut() {
        if let Some(f) = r.raw_body_file.take() {
            let bytes = bodyfile::take(&f).map_err(|e| CallError::Protocol(e.to_string()))?;
            r.raw_body = Some(serde_bytes::ByteBuf::from(bytes));
        }
    }
    if let Some(r) = obj.response.as_mut() {
        if let Some(f) = r.raw_body_file.take() {
            let bytes = bodyfile::take(&f).map_err(|e| CallError::Protocol(e.to_string()))?;
            r.raw_body = Some(serde_bytes::ByteBuf::from(bytes));
        }
    }
    Ok(obj)
}

/// Whether the API names any hook at all.
fn hooked_any(api: &ApiDefinition) -> bool {
    let mw = &api.custom_middleware;
    !mw.pre.is_empty()
        || !mw.post.is_empty()
        || !mw.post_key_auth.is_empty()
        || !mw.response.is_empty()
        || (mw.auth_check.is_some() && api.coprocess_auth && !api.use_keyless)
}

/// Reads from an edge-triggered socket into `buf[*len..]` until it would block or the buffer is
/// full. Returns (bytes arrived or EOF seen, EOF seen); clears `readable` when the socket is
/// drained.
///
/// A short read drains it: TCP hands over everything queued, and data arriving later raises a new
/// edge, so the read that would only return EAGAIN is skipped (one syscall less per request and
/// per upstream response). Once the peer's FIN was reported with the readiness (`rdhup`), the
/// EOF may already be queued behind the data without a further edge: then it reads on to EOF or
/// EAGAIN.
fn fill(
    sock: &mut mio::net::TcpStream,
    buf: &mut [u8],
    len: &mut usize,
    readable: &mut bool,
    rdhup: bool,
) -> io::Result<(bool, bool)> {
    let mut moved = false;
    while *len < buf.len() {
        let want = buf.len() - *len;
        match sock.read(&mut buf[*len..]) {
            Ok(0) => return Ok((true, true)),
            Ok(n) => {
                *len += n;
                moved = true;
                if n < want && !rdhup {
                    *readable = false;
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                *readable = false;
                break;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((moved, false))
}

/// Writes `buf[*pos..]` to an edge-triggered socket until done or it would block; empties the
/// buffer once all is written. Returns whether anything was written; clears `writable` on EAGAIN.
fn flush(
    sock: &mut mio::net::TcpStream,
    buf: &mut Vec<u8>,
    pos: &mut usize,
    writable: &mut bool,
) -> io::Result<bool> {
    let mut moved = false;
    while *pos < buf.len() {
        match sock.write(&buf[*pos..]) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "peer took no bytes")),
            Ok(n) => {
                *pos += n;
                moved = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                *writable = false;
                break;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if *pos == buf.len() {
        buf.clear();
        *pos = 0;
    }
    Ok(moved)
}

/// Writes a status code's three digits (what `write!` would, without the formatting machinery,
/// which costs more than the rest of a short head).
fn write_status_code(out: &mut Vec<u8>, status: u16) {
    if (100..1000).contains(&status) {
        let digit = |d: u16| b'0' + (d % 10) as u8;
        out.extend_from_slice(&[digit(status / 100), digit(status / 10), digit(status)]);
    } else {
        let _ = write!(out, "{status}");
    }
}

/// Writes the client-facing response head: the upstream's status and headers minus hop-by-hop
/// ones, with framing and connection headers chosen for this client.
fn write_response_head(c: &mut Conn, ubuf: &[u8]) {
    let r = &c.resp;
    let out = &mut c.wbuf;
    out.extend_from_slice(b"HTTP/1.1 ");
    write_status_code(out, r.status);
    out.push(b' ');
    let reason = r.reason.of(ubuf);
    if reason.is_empty() {
        out.extend_from_slice(response::reason(r.status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
    // Only a Connection header naming other headers makes them hop-by-hop (the usual
    // "keep-alive" names none, and then no header needs checking against it).
    let conn_hdr = if r.connection_tokens {
        r.headers
            .iter()
            .find(|h| h.name.of(ubuf).eq_ignore_ascii_case(b"connection"))
            .map(|h| h.value.of(ubuf))
    } else {
        None
    };
    for h in &r.headers {
        let name = h.name.of(ubuf);
        if http::headers::is_hop_by_hop(name) {
            continue;
        }
        if c.resp_decode && name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        if let Some(cv) = conn_hdr {
            if http::headers::listed_in_connection(cv, name) {
                continue;
            }
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.of(ubuf));
        out.extend_from_slice(b"\r\n");
    }
    if c.resp_kind == BodyKind::Chunked && !c.resp_decode {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    for (k, v) in &c.req.resp_headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if c.close_after {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if c.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
