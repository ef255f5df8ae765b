//! One client connection's state: buffers, the current request and where it is in its life.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::config::ApiDefinition;
use crate::http::{BodyKind, ChunkedDecoder, RequestHead, ResponseHead};
use crate::middleware::chain::{Phase, RequestState};
use crate::proxy::ClientIp;

/// Initial size of a connection's read buffer; grows up to the header limit for large heads.
pub const CLIENT_BUF: usize = 16 * 1024;
/// Stop reading from the upstream while this much is queued for the client (backpressure).
pub const MAX_PENDING_CLIENT: usize = 256 * 1024;
/// Stop reading the client's body while this much is queued for the upstream.
pub const MAX_PENDING_UPSTREAM: usize = 256 * 1024;

/// Where request body bytes go.
pub enum BodySink<'a> {
    /// As received, framing included (streamed to the upstream).
    Raw(&'a mut Vec<u8>),
    /// Payload only (buffered for hooks).
    Decoded(&'a mut Vec<u8>),
    /// Nowhere (after a local answer, to reach the next request).
    Discard,
}

/// Where a connection is in the life of its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum St {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Reading the whole request body because a hook needs it.
    Body,
    /// Running the middleware chain (possibly waiting for a plugin's reply).
    Chain,
    /// Exchanging with the upstream.
    Proxy,
    /// A complete response is queued; flushing it (and discarding any unread request body).
    Local,
    /// Flushing what is queued, then closing.
    Close,
}

/// What the connection's single deadline guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Keep-alive idle time between requests.
    Idle,
    /// Time to receive a complete request head.
    Head,
    /// Progress while receiving the request body.
    Body,
    /// Upstream TCP connect.
    Connect,
    /// Progress while waiting for / receiving the upstream response.
    Upstream,
    /// Progress while writing to the client.
    Write,
    /// A plugin call (the coprocess client normally answers first).
    Hook,
}

/// Per-connection state. The buffers come from the worker's [`super::buffers::BufferPool`]:
/// lent when bytes arrive, parked again while the connection idles between requests, so a
/// keep-alive request costs no allocation here and an idle connection holds no buffer.
pub struct Conn {
    /// Client socket.
    pub sock: TcpStream,
    /// The TLS session, on TLS connections only (`use_ssl`): plain connections carry nothing
    /// extra and take no extra branch beyond this `None`.
    pub tls: Option<Box<rustls::ServerConnection>>,
    /// Client address.
    pub peer: SocketAddr,
    /// `peer`'s address as text, for X-Forwarded-For.
    pub client_ip: ClientIp,
    /// Read buffer: `rbuf[..rlen]` holds the current head (from 0) followed by unconsumed bytes.
    pub rbuf: Vec<u8>,
    /// Valid bytes in `rbuf`.
    pub rlen: usize,
    /// Bytes queued for the client.
    pub wbuf: Vec<u8>,
    /// How much of `wbuf` is written.
    pub wpos: usize,
    /// Edge-triggered readiness not yet used up.
    pub readable: bool,
    /// The client's FIN (or an error) was reported: read to EOF, not just to a short read.
    pub rdhup: bool,
    /// Edge-triggered readiness not yet used up.
    pub writable: bool,
    /// The client closed its sending side.
    pub eof: bool,
    /// Lifecycle state.
    pub st: St,
    /// Current request head (spans into `rbuf`).
    pub head: RequestHead,
    /// Current request's API.
    pub api: Option<Arc<ApiDefinition>>,
    /// The request answered is a HEAD request.
    pub head_req: bool,
    /// The request is HTTP/1.0.
    pub http10: bool,
    /// The connection is closed after the current response.
    pub close_after: bool,
    /// Request body framing and progress.
    pub req_body: BodyKind,
    /// Bytes of a Content-Length body still to come.
    pub req_remaining: u64,
    /// Chunked request body state.
    pub req_chunk: ChunkedDecoder,
    /// The whole request body has been received.
    pub req_body_done: bool,
    /// Body bytes received so far (for the size limit).
    pub req_body_seen: u64,
    /// `100 Continue` was sent for this request.
    pub sent_continue: bool,
    /// Middleware chain state for the current request.
    pub req: RequestState,
    /// Upstream connection in use.
    pub up: Option<usize>,
    /// Upstream response head (spans into the upstream's buffer until copied).
    pub resp: ResponseHead,
    /// The response head has been parsed.
    pub resp_head_done: bool,
    /// Response body framing.
    pub resp_kind: BodyKind,
    /// Bytes of a Content-Length response body still to come.
    pub resp_remaining: u64,
    /// Chunked response body state.
    pub resp_chunk: ChunkedDecoder,
    /// Decode a chunked response for an HTTP/1.0 client instead of passing it through.
    pub resp_decode: bool,
    /// Buffer the response body for response hooks.
    pub resp_buffer: bool,
    /// Bytes of the response already queued for the client (a failure after this can only close).
    pub resp_started: bool,
    /// The upstream response is complete.
    pub resp_done: bool,
    /// This request already retried on a fresh upstream connection.
    pub retried: bool,
    /// Current deadline, if any.
    pub deadline: Option<Instant>,
    /// What the deadline guards.
    pub deadline_kind: Deadline,
    /// Requests completed on this connection.
    pub served: u64,
    /// Increments per request; plugin replies carry it so a late reply for an earlier request on the
    /// same connection is recognised and dropped.
    pub generation: u32,
    /// When the current request started.
    pub started: Instant,
    /// Timing, status and size of the current request, for the metrics and the access log.
    pub mark: crate::metrics::RequestMark,
}

impl Conn {
    /// A fresh connection waiting for its first request.
    pub fn new(
        sock: TcpStream,
        tls: Option<Box<rustls::ServerConnection>>,
        peer: SocketAddr,
        now: Instant,
        idle: Duration,
    ) -> Conn {
        Conn {
            sock,
            tls,
            peer,
            client_ip: ClientIp::new(peer.ip()),
            // Lent by the worker's buffer pool when the first bytes arrive.
            rbuf: Vec::new(),
            rlen: 0,
            wbuf: Vec::new(),
            wpos: 0,
            readable: false,
            rdhup: false,
            writable: false,
            eof: false,
            st: St::Head,
            head: RequestHead::default(),
            api: None,
            head_req: false,
            http10: false,
            close_after: false,
            req_body: BodyKind::None,
            req_remaining: 0,
            req_chunk: ChunkedDecoder::new(),
            req_body_done: true,
            req_body_seen: 0,
            sent_continue: false,
            req: RequestState::default(),
            up: None,
            resp: ResponseHead::default(),
            resp_head_done: false,
            resp_kind: BodyKind::None,
            resp_remaining: 0,
            resp_chunk: ChunkedDecoder::new(),
            resp_decode: false,
            resp_buffer: false,
            resp_started: false,
            resp_done: false,
            retried: false,
            deadline: Some(now + idle),
            deadline_kind: Deadline::Idle,
            served: 0,
            generation: 0,
            started: now,
            mark: crate::metrics::RequestMark::default(),
        }
    }

    /// Sets the deadline.
    #[inline]
    pub fn arm(&mut self, kind: Deadline, at: Instant) {
        self.deadline = Some(at);
        self.deadline_kind = kind;
    }

    /// Bytes queued for the client and not yet written (on TLS, plus one while rustls holds
    /// records to send: handshake messages, alerts, encrypted data).
    #[inline]
    pub fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
            + self
                .tls
                .as_ref()
                .map_or(0, |t| usize::from(t.wants_write()))
    }

    /// "https" on TLS connections, else "http" (X-Forwarded-Proto, the plugin's request.scheme).
    #[inline]
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Closing an idle TLS connection (keep-alive timeout, shutdown): one non-blocking attempt to
    /// send `close_notify`, so the client's TLS stack sees an orderly close rather than a
    /// truncation. Never used after a failure, where an orderly close would hide a cut response.
    pub fn close_notify_best_effort(&mut self) {
        if let Some(t) = self.tls.as_mut() {
            if !t.is_handshaking() {
                t.send_close_notify();
                let _ = t.write_tls(&mut self.sock);
            }
        }
    }

    /// Before closing a TLS connection: queues `close_notify` so that the client can tell a
    /// complete response from a cut one. True when something was queued and must be flushed
    /// first; false on plain connections and once it has been sent.
    pub fn queue_close_notify(&mut self) -> bool {
        match self.tls.as_mut() {
            Some(t) => {
                t.send_close_notify();
                t.wants_write()
            }
            None => false,
        }
    }

    /// Takes the request body bytes that have arrived (after the head), up to where the body
    /// ends, following its framing, and hands them to `sink`; returns how many were taken.
    /// Every mode (stream to the upstream, buffer for hooks, discard) frames the body here.
    pub fn take_body(&mut self, sink: BodySink<'_>) -> Result<usize, crate::http::ChunkError> {
        let start = self.head.head_len;
        let avail = &self.rbuf[start..self.rlen];
        let n = match self.req_body {
            BodyKind::Length(_) => {
                let n = self.req_remaining.min(avail.len() as u64) as usize;
                self.req_remaining -= n as u64;
                self.req_body_done = self.req_remaining == 0;
                match sink {
                    BodySink::Raw(out) | BodySink::Decoded(out) => {
                        out.extend_from_slice(&avail[..n])
                    }
                    BodySink::Discard => {}
                }
                n
            }
            BodyKind::Chunked => {
                let n = match sink {
                    BodySink::Decoded(out) => self.req_chunk.feed(avail, Some(out))?,
                    BodySink::Raw(out) => {
                        let n = self.req_chunk.feed(avail, None)?;
                        out.extend_from_slice(&avail[..n]);
                        n
                    }
                    BodySink::Discard => self.req_chunk.feed(avail, None)?,
                };
                self.req_body_done = self.req_chunk.is_done();
                n
            }
            BodyKind::None | BodyKind::UntilClose => 0,
        };
        self.req_body_seen += n as u64;
        self.consume_after_head(n);
        Ok(n)
    }

    /// True when the request body is over `max` bytes: received (framing included) or, for a
    /// chunked body, announced by its chunk sizes.
    pub fn body_exceeds(&self, max: u64) -> bool {
        self.req_body_seen > max || self.req_chunk.announced() > max
    }

    /// Drops `n` bytes right after the head (consumed body bytes), keeping the head in place.
    pub fn consume_after_head(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let start = self.head.head_len;
        self.rbuf.copy_within(start + n..self.rlen, start);
        self.rlen -= n;
    }

    /// The request as the middleware chain sees it: the parsed head, this request's edits and
    /// buffered body.
    pub fn request_view(&self) -> crate::middleware::chain::RequestView<'_> {
        crate::middleware::chain::RequestView {
            buf: &self.rbuf,
            head: &self.head,
            edits: self.req.edits.as_deref(),
            body: &self.req.body,
            scheme: self.scheme(),
        }
    }

    /// Resets per-request state for the next request on a keep-alive connection, moving any
    /// pipelined bytes to the front of the read buffer.
    pub fn reset_for_next(&mut self) {
        let consumed = self.head.head_len;
        self.rbuf.copy_within(consumed..self.rlen, 0);
        self.rlen -= consumed;
        self.head.head_len = 0;
        if self.rbuf.len() > CLIENT_BUF && self.rlen <= CLIENT_BUF {
            self.rbuf.truncate(CLIENT_BUF);
            self.rbuf.shrink_to_fit();
        }
        self.st = St::Head;
        self.api = None;
        self.head_req = false;
        self.http10 = false;
        self.req_body = BodyKind::None;
        self.req_remaining = 0;
        self.req_chunk = ChunkedDecoder::new();
        self.req_body_done = true;
        self.req_body_seen = 0;
        self.sent_continue = false;
        self.req.reset();
        self.up = None;
        self.resp_head_done = false;
        self.resp_kind = BodyKind::None;
        self.resp_remaining = 0;
        self.resp_chunk = ChunkedDecoder::new();
        self.resp_decode = false;
        self.resp_buffer = false;
        self.resp_started = false;
        self.resp_done = false;
        self.retried = false;
        self.served += 1;
        self.generation = self.generation.wrapping_add(1);
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        if self.wbuf.capacity() > 4 * MAX_PENDING_CLIENT && self.wbuf.is_empty() {
            self.wbuf.shrink_to(CLIENT_BUF);
        }
        let _ = Phase::Start;
    }
}
