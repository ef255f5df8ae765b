//! Upstream side of the proxy: connections, the per-worker keep-alive pool, and the outbound request
//! head.
//!
//! Each worker owns its pool, so taking and returning a connection is a plain vector operation with
//! no lock. Upstream sockets keep one mio registration for their whole life (their token never
//! changes), so reusing a pooled connection costs no `epoll_ctl`; an idle connection that the
//! upstream closes shows up as a readable event and is dropped from the pool.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;

use crate::config::{ApiDefinition, UpstreamTarget};
use crate::http::{headers, BodyKind, RequestHead};
use crate::middleware::RequestEdits;
use crate::tls::client::UpstreamTls;

/// Size of an upstream connection's read buffer.
pub const UPSTREAM_BUF: usize = 64 * 1024;

/// One connection to an upstream server.
pub struct Upstream {
    /// The socket.
    pub sock: TcpStream,
    /// The TLS session to an https target (`None` for http).
    pub tls: Option<Box<rustls::ClientConnection>>,
    /// Pool key (the target URL; for https, with its verification policy).
    pub key: String,
    /// Slab index of the client connection using it; `None` while idle in the pool.
    pub owner: Option<usize>,
    /// Still waiting for the non-blocking connect to finish.
    pub connecting: bool,
    /// Bytes to send (request head and body).
    pub wbuf: Vec<u8>,
    /// How much of `wbuf` is sent.
    pub wpos: usize,
    /// Received bytes not yet consumed: `rbuf[..rlen]`.
    pub rbuf: Vec<u8>,
    /// Valid bytes in `rbuf`.
    pub rlen: usize,
    /// Edge-triggered readiness not yet used up.
    pub readable: bool,
    /// The upstream's FIN (or an error) was reported: read to EOF, not just to a short read.
    pub rdhup: bool,
    /// Edge-triggered readiness not yet used up.
    pub writable: bool,
    /// The upstream closed its side.
    pub eof: bool,
    /// Taken from the pool (so a failure before any response byte may be a stale connection).
    pub reused: bool,
    /// Requests served on this connection.
    pub served: u64,
    /// When it went idle.
    pub idle_since: Instant,
}

impl Upstream {
    /// Starts a non-blocking connect to `addr`; with `tls`, the TLS handshake follows it as soon
    /// as the first bytes are written.
    pub fn connect(addr: SocketAddr, key: &str, tls: Option<&UpstreamTls>) -> io::Result<Upstream> {
        let tls = match tls {
            Some(t) => Some(Box::new(
                rustls::ClientConnection::new(Arc::clone(&t.config), t.server_name.clone())
                    .map_err(io::Error::other)?,
            )),
            None => None,
        };
        let sock = TcpStream::connect(addr)?;
        let _ = sock.set_nodelay(true);
        Ok(Upstream {
            sock,
            tls,
            key: key.to_string(),
            owner: None,
            connecting: true,
            wbuf: Vec::with_capacity(4096),
            wpos: 0,
            rbuf: vec![0; UPSTREAM_BUF],
            rlen: 0,
            readable: false,
            rdhup: false,
            writable: false,
            eof: false,
            reused: false,
            served: 0,
            idle_since: Instant::now(),
        })
    }

    /// Bytes queued but not yet written (on TLS, plus one while rustls holds records to send).
    pub fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
            + self
                .tls
                .as_ref()
                .map_or(0, |t| usize::from(t.wants_write()))
    }
}

/// The pool's maps are looked up twice per proxied request (take, put): foldhash costs a
/// fraction of std's SipHash there, and the keys come from the configuration, not from clients.
type TargetMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Idle upstream connections of one worker, by target.
#[derive(Default)]
pub struct Pool {
    idle: TargetMap<Vec<usize>>,
    /// Resolved addresses by target key, so DNS is not asked on every request.
    addrs: TargetMap<SocketAddr>,
}

impl Pool {
    /// Takes an idle connection for `key`, most recently used first (it is the least likely to have
    /// been closed by the upstream's idle timeout).
    pub fn take(&mut self, key: &str) -> Option<usize> {
        self.idle.get_mut(key).and_then(|v| v.pop())
    }

    /// Returns a connection to the pool; `false` when the pool for that target is full (the caller
    /// closes it).
    pub fn put(&mut self, key: &str, idx: usize, max_idle: usize) -> bool {
        if let Some(v) = self.idle.get_mut(key) {
            if v.len() >= max_idle {
                return false;
            }
            v.push(idx);
            return true;
        }
        if max_idle == 0 {
            return false;
        }
        self.idle.insert(key.to_string(), vec![idx]);
        true
    }

    /// Forgets an idle connection (it was closed by the upstream).
    pub fn remove(&mut self, key: &str, idx: usize) {
        if let Some(v) = self.idle.get_mut(key) {
            v.retain(|&i| i != idx);
        }
    }

    /// All idle connection indices (for shutdown and idle expiry).
    pub fn all_idle(&self) -> impl Iterator<Item = (&String, &Vec<usize>)> {
        self.idle.iter()
    }

    /// The socket address of a target (cached under its pool `key`), resolved once per worker.
    /// Resolution may block on DNS the first time a host name (not an IP literal) is used; it is
    /// cached afterwards.
    pub fn resolve(&mut self, key: &str, target: &UpstreamTarget) -> io::Result<SocketAddr> {
        if let Some(a) = self.addrs.get(key) {
            return Ok(*a);
        }
        let addr = (target.host.as_str(), target.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for host"))?;
        self.addrs.insert(key.to_string(), addr);
        Ok(addr)
    }

    /// Forgets a cached address (after a connect failure, so that a DNS change is picked up).
    pub fn forget_addr(&mut self, key: &str) {
        self.addrs.remove(key);
    }
}

/// The client's IP address as text, written once per connection: X-Forwarded-For names it on
/// every request, and formatting an address costs more than copying the rest of the head.
#[derive(Clone, Copy)]
pub struct ClientIp {
    text: [u8; ClientIp::MAX],
    len: u8,
}

impl ClientIp {
    /// The longest text of an IP address (an IPv4-mapped IPv6 address).
    const MAX: usize = 45;

    /// Formats `ip`.
    pub fn new(ip: IpAddr) -> ClientIp {
        let mut text = [0u8; ClientIp::MAX];
        let mut rest = &mut text[..];
        let _ = write!(rest, "{ip}");
        let len = ClientIp::MAX - rest.len();
        ClientIp {
            text,
            len: len as u8,
        }
    }

    /// The address as written in headers.
    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }
}

/// Everything needed to write the outbound request head.
pub struct Outbound<'a> {
    /// The client's read buffer, which the head spans point into.
    pub buf: &'a [u8],
    /// The parsed client request.
    pub head: &'a RequestHead,
    /// The API it was routed to.
    pub api: &'a ApiDefinition,
    /// Changes made by plugin hooks, if any.
    pub edits: Option<&'a RequestEdits>,
    /// The client's address, for X-Forwarded-For.
    pub client_ip: &'a ClientIp,
    /// Body framing to announce upstream.
    pub body: BodyKind,
    /// "http" or "https" as seen by the gateway.
    pub scheme: &'a str,
}

/// Writes the request head sent upstream into `out`.
///
/// The path is the client's (or the plugin's rewritten) path with the API's listen path stripped
/// when configured and the target's base path prefixed. Hop-by-hop headers, and headers named in
/// the client's Connection header, are dropped; Host is the target's unless
/// `preserve_host_header`; X-Forwarded-For gets the client address appended.
pub fn write_request_head(o: &Outbound<'_>, out: &mut Vec<u8>) {
    let buf = o.buf;
    let head = o.head;
    let method = o
        .edits
        .and_then(|e| e.method.as_deref())
        .unwrap_or_else(|| head.method.str(buf));
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    let path = o
        .edits
        .and_then(|e| e.path.as_deref())
        .unwrap_or_else(|| head.path(buf));
    let query = o
        .edits
        .and_then(|e| e.query.as_deref())
        .or_else(|| head.query(buf));
    o.api.upstream_path(path, out);
    // Tyk puts the target URL's own query first, then the client's, joined with '&'.
    let tq = o.api.target.query.as_str();
    let cq = query.unwrap_or("");
    if !tq.is_empty() || !cq.is_empty() {
        out.push(b'?');
        out.extend_from_slice(tq.as_bytes());
        if !tq.is_empty() && !cq.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(cq.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    let host = if o.api.preserve_host_header {
        head.host
            .map(|h| h.of(buf))
            .unwrap_or(o.api.target.authority.as_bytes())
    } else {
        o.api.target.authority.as_bytes()
    };
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");

    let conn_value = head.connection.map(|i| head.headers[i].value.of(buf));
    let mut xff_written = false;
    let mut proto_seen = false;
    for h in &head.headers {
        let name = h.name.of(buf);
        if headers::is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"expect")
        {
            continue;
        }
        if head.has_connection_tokens {
            if let Some(cv) = conn_value {
                if headers::listed_in_connection(cv, name) {
                    continue;
                }
            }
        }
        if let Some(e) = o.edits {
            if e.removes_header(name) {
                continue;
            }
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            if xff_written {
                continue;
            }
            xff_written = true;
            out.extend_from_slice(b"X-Forwarded-For: ");
            // Join every X-Forwarded-For line the client sent, then append the client address.
            let mut first = true;
            for h2 in head
                .headers
                .iter()
                .filter(|h2| h2.name.of(buf).eq_ignore_ascii_case(b"x-forwarded-for"))
            {
                if !first {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(h2.value.of(buf));
                first = false;
            }
            out.extend_from_slice(b", ");
            out.extend_from_slice(o.client_ip.as_bytes());
            out.extend_from_slice(b"\r\n");
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            proto_seen = true;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.of(buf));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(e) = o.edits {
        for (k, v) in &e.set_headers {
            // Framing and routing stay the gateway's: a plugin cannot set Host, Content-Length,
            // Expect (the gateway answers 100-continue itself) or a hop-by-hop header upstream.
            if headers::is_hop_by_hop(k.as_bytes())
                || k.eq_ignore_ascii_case("host")
                || k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("expect")
            {
                continue;
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if !xff_written {
        out.extend_from_slice(b"X-Forwarded-For: ");
        out.extend_from_slice(o.client_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !proto_seen {
        out.extend_from_slice(b"X-Forwarded-Proto: ");
        out.extend_from_slice(o.scheme.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match o.body {
        BodyKind::None => {
            if method_expects_body(method) {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
        }
        BodyKind::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn method_expects_body(m: &str) -> bool {
    matches!(m, "POST" | "PUT" | "PATCH")
}

#[cfg(test)]
mod tests {
    use super::ClientIp;
    use std::net::{IpAddr, Ipv6Addr};

    #[test]
    fn client_ip_text_matches_display_up_to_the_longest_address() {
        let cases: Vec<IpAddr> = vec![
            [192, 0, 2, 1].into(),
            [255, 255, 255, 255].into(),
            Ipv6Addr::LOCALHOST.into(),
            "2001:db8::8a2e:370:7334".parse().expect("literal"),
            "::ffff:192.0.2.1".parse().expect("literal"),
            Ipv6Addr::new(
                0xffff, 0xfffe, 0xfffd, 0xfffc, 0xfffb, 0xfffa, 0xfff9, 0xfff8,
            )
            .into(),
        ];
        for ip in cases {
            assert_eq!(ClientIp::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }
}
