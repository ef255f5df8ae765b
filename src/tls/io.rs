//! Moving bytes between a non-blocking socket and a rustls connection.
//!
//! These are the TLS counterparts of the worker's plain `fill`/`flush`: same arguments, same
//! edge-triggered contract (a readiness flag is cleared only on `EAGAIN`), so the worker's state
//! machine does not care which one runs. A TLS failure (bad record, failed handshake, rejected
//! certificate) comes back as an `io::Error` of kind `InvalidData` whose message is rustls' reason;
//! the alert rustls queued for the peer is sent on a best-effort basis first.

use std::io::{self, ErrorKind, Read, Write};
use std::ops::DerefMut;

use mio::net::TcpStream;
use rustls::ConnectionCommon;

/// Reads TLS records from `sock` and decrypted bytes into `buf[*len..]` until the socket would
/// block or the buffer is full.
///
/// Returns (progress, EOF seen): progress is true when any byte moved, ciphertext included, so
/// that a handshake step counts and the caller goes on to flush rustls' answer. EOF is reported
/// once every decrypted byte has been handed out: on the peer's `close_notify`, or on a TCP close
/// without one (which HTTP/1.1 framing makes harmless: a truncated body is still detected).
pub fn fill<D>(
    tls: &mut impl DerefMut<Target = ConnectionCommon<D>>,
    sock: &mut TcpStream,
    buf: &mut [u8],
    len: &mut usize,
    readable: &mut bool,
) -> io::Result<(bool, bool)> {
    let mut moved = false;
    let mut tcp_eof = false;
    loop {
        // Plaintext already decrypted comes first: the socket may have nothing more.
        while *len < buf.len() {
            match tls.reader().read(&mut buf[*len..]) {
                Ok(0) => return Ok((true, true)),
                Ok(n) => {
                    *len += n;
                    moved = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok((true, true)),
                Err(e) => return Err(e),
            }
        }
        if *len == buf.len() || tcp_eof || !*readable {
            return Ok((moved, false));
        }
        match tls.read_tls(sock) {
            Ok(0) => {
                // Hand out what is left, then report EOF (the reader now says so).
                tcp_eof = true;
                moved = true;
            }
            Ok(_) => moved = true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                *readable = false;
                return Ok((moved, false));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Err(e) = tls.process_new_packets() {
            // Tell the peer why (rustls queued an alert), then fail this connection only.
            let _ = tls.write_tls(sock);
            return Err(io::Error::new(ErrorKind::InvalidData, e));
        }
    }
}

/// Encrypts `buf[*pos..]` and writes it, with anything rustls has queued (handshake messages,
/// alerts, `close_notify`), to `sock` until done or the socket would block. Empties `buf` once all
/// of it is taken. Returns whether anything moved.
///
/// rustls holds at most its buffer limit of ciphertext; beyond it the plaintext stays in `buf`,
/// so the caller's backpressure on `buf` keeps working.
pub fn flush<D>(
    tls: &mut impl DerefMut<Target = ConnectionCommon<D>>,
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    pos: &mut usize,
    writable: &mut bool,
) -> io::Result<bool> {
    let mut moved = false;
    loop {
        if *pos < buf.len() {
            let n = tls.writer().write(&buf[*pos..])?;
            *pos += n;
            moved |= n > 0;
        }
        if !tls.wants_write() {
            break;
        }
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "peer took no bytes")),
            Ok(_) => moved = true,
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
