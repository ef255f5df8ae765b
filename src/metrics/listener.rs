//! The optional separate metrics listener (`pipegate.metrics.listen_address`), so operators can
//! keep the scrape endpoint off the edge port.
//!
//! One thread, blocking sockets, one request per connection (`Connection: close`): a scrape every
//! few seconds needs nothing more, and it never touches the workers' event loops. A client that
//! stalls is dropped after a short timeout so it cannot hold the thread.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Time a scraper has to send its request head and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_HEAD: usize = 8192;

/// Produces the exposition text for one scrape.
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET <path>` on `listener` from a background thread.
pub fn spawn(listener: TcpListener, path: String, scrape: Scrape) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("pipegate-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = serve(s, &path, &scrape) {
                            tracing::debug!("metrics connection: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("metrics listener accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(|_| ())
}

fn serve(mut s: TcpStream, path: &str, scrape: &Scrape) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return respond(&mut s, 431, "text/plain", b"request head too large\n");
        }
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or(&[]);
    let target = parts.next().unwrap_or(&[]);
    let target_path = target.split(|&b| b == b'?').next().unwrap_or(&[]);
    if target_path != path.as_bytes() {
        return respond(&mut s, 404, "text/plain", b"not found\n");
    }
    match method {
        b"GET" => {
            let body = scrape();
            respond(&mut s, 200, super::CONTENT_TYPE, body.as_bytes())
        }
        b"HEAD" => {
            let body = scrape();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                super::CONTENT_TYPE,
                body.len()
            );
            s.write_all(head.as_bytes())
        }
        _ => respond(&mut s, 405, "text/plain", b"method not allowed\n"),
    }
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::http::response::reason(status),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()
}
