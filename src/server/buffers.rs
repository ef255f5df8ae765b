//! A worker's spare connection buffers.
//!
//! A keep-alive connection spends most of its life idle between requests. Holding a 16 KiB read
//! buffer, a write buffer and the header index through that idle time made 10,000 idle
//! connections cost 145 MiB. Instead, a connection that goes idle with nothing buffered parks its
//! buffers here and takes a set back when its next bytes arrive. Under load the same few sets
//! circulate between the busy connections (a push and a pop, no allocation); idle connections
//! own nothing but their small state.

use crate::http::HeaderSpan;

use super::conn::{Conn, Deadline, St, CLIENT_BUF};

/// Most spare sets a worker keeps; beyond this a parked set is freed. Enough for every
/// connection of a typical load (wrk -c64 over two workers) to find a set without allocating,
/// small enough that the spares themselves stay around 2 MiB per worker.
pub const MAX_SPARES: usize = 64;

/// One connection's buffers, as parked.
struct Spare {
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    headers: Vec<HeaderSpan>,
}

/// The pool itself: a stack, so the most recently used (cache-warm) set is lent first.
pub struct BufferPool {
    spares: Vec<Spare>,
}

impl Default for BufferPool {
    fn default() -> BufferPool {
        BufferPool {
            spares: Vec::with_capacity(MAX_SPARES),
        }
    }
}

impl BufferPool {
    /// Gives `c` a buffer set if it has none (a new connection, or one that parked its set while
    /// idle). Call before reading from the client.
    #[inline]
    pub fn lend(&mut self, c: &mut Conn) {
        if !c.rbuf.is_empty() {
            return;
        }
        match self.spares.pop() {
            Some(s) => {
                c.rbuf = s.rbuf;
                c.head.headers = s.headers;
                if c.wbuf.is_empty() {
                    c.wbuf = s.wbuf;
                }
            }
            None => {
                c.rbuf = vec![0; CLIENT_BUF];
                c.head.headers = Vec::with_capacity(16);
            }
        }
        if c.wbuf.capacity() < CLIENT_BUF {
            c.wbuf.reserve(CLIENT_BUF - c.wbuf.len());
        }
    }

    /// Takes `c`'s buffers back when it is idle between requests with nothing buffered either
    /// way (plain connections only: a TLS session keeps its own buffers anyway). Returns whether
    /// it parked them.
    #[inline]
    pub fn park_if_idle(&mut self, c: &mut Conn) -> bool {
        let idle = c.st == St::Head
            && c.deadline_kind == Deadline::Idle
            && c.rlen == 0
            && c.wbuf.is_empty()
            && c.tls.is_none()
            && !c.rbuf.is_empty();
        if idle {
            self.park(c);
        }
        idle
    }

    /// Takes `c`'s buffers back unconditionally (the connection is closing).
    pub fn reclaim(&mut self, c: &mut Conn) {
        if !c.rbuf.is_empty() {
            self.park(c);
        }
    }

    fn park(&mut self, c: &mut Conn) {
        let rbuf = std::mem::take(&mut c.rbuf);
        let mut wbuf = std::mem::take(&mut c.wbuf);
        let mut headers = std::mem::take(&mut c.head.headers);
        c.rlen = 0;
        c.wpos = 0;
        // Only standard sets go back: a buffer grown for a large head or a slow reader would
        // make every later idle-and-wake cycle keep that much.
        if self.spares.len() < MAX_SPARES && rbuf.len() == CLIENT_BUF {
            if wbuf.capacity() > 4 * CLIENT_BUF {
                wbuf = Vec::new();
            }
            wbuf.clear();
            headers.clear();
            self.spares.push(Spare {
                rbuf,
                wbuf,
                headers,
            });
        }
    }

    /// Spare sets held (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.spares.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A connection over a real loopback socket (Conn owns a mio stream).
    fn conn() -> (Conn, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (server, peer) = l.accept().expect("accept");
        let sock = mio::net::TcpStream::from_std(server);
        let c = Conn::new(sock, None, peer, Instant::now(), Duration::from_secs(5));
        (c, client)
    }

    #[test]
    fn a_new_connection_owns_nothing_until_lent() {
        let mut pool = BufferPool::default();
        let (mut c, _peer) = conn();
        assert_eq!(c.rbuf.capacity() + c.wbuf.capacity(), 0);
        pool.lend(&mut c);
        assert_eq!(c.rbuf.len(), CLIENT_BUF);
        assert!(c.wbuf.capacity() >= CLIENT_BUF);
    }

    #[test]
    fn an_idle_connection_parks_its_set_and_the_next_one_reuses_it() {
        let mut pool = BufferPool::default();
        let (mut a, _pa) = conn();
        let (mut b, _pb) = conn();
        pool.lend(&mut a);
        let (r, w) = (a.rbuf.as_ptr(), a.wbuf.as_ptr());
        assert!(pool.park_if_idle(&mut a));
        assert_eq!((a.rbuf.capacity(), a.wbuf.capacity()), (0, 0));
        assert_eq!(pool.len(), 1);
        pool.lend(&mut b);
        assert_eq!(
            (b.rbuf.as_ptr(), b.wbuf.as_ptr()),
            (r, w),
            "the parked set is reused"
        );
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn a_connection_with_bytes_buffered_or_mid_request_keeps_its_set() {
        let mut pool = BufferPool::default();
        let (mut c, _p) = conn();
        pool.lend(&mut c);
        c.rlen = 3; // part of a pipelined request
        assert!(!pool.park_if_idle(&mut c));
        c.rlen = 0;
        c.wbuf.extend_from_slice(b"HTTP/1.1 200 OK\r\n"); // not yet written
        assert!(!pool.park_if_idle(&mut c));
        c.wbuf.clear();
        c.st = St::Proxy;
        assert!(!pool.park_if_idle(&mut c));
        c.st = St::Head;
        c.deadline_kind = Deadline::Head; // a head has started arriving
        assert!(!pool.park_if_idle(&mut c));
        c.deadline_kind = Deadline::Idle;
        assert!(pool.park_if_idle(&mut c));
    }

    #[test]
    fn grown_buffers_are_freed_and_the_pool_is_bounded() {
        let mut pool = BufferPool::default();
        let (mut c, _p) = conn();
        pool.lend(&mut c);
        c.rbuf.resize(4 * CLIENT_BUF, 0); // grown for a large head
        pool.reclaim(&mut c);
        assert_eq!(pool.len(), 0, "a grown read buffer is not kept");
        let mut conns: Vec<_> = (0..MAX_SPARES + 8).map(|_| conn()).collect();
        for (c, _) in conns.iter_mut() {
            pool.lend(c);
        }
        for (c, _) in conns.iter_mut() {
            pool.reclaim(c);
        }
        assert_eq!(pool.len(), MAX_SPARES);
    }
}
