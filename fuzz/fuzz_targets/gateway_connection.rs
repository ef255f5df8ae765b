//! The whole connection state machine, fed arbitrary bytes.
//!
//! The worker is driven by sockets, so each fuzz process starts the real gateway in-process once
//! (`server::start`, one worker, loopback, port 0) in front of an in-process upstream, with a
//! keyless API, a token-auth API and the Gateway API. Per input it opens a client connection,
//! writes the bytes, half-closes, and reads until the gateway closes. Pipelined requests, bodies,
//! `Expect`, upgrades, absolute-form targets: whatever the input holds goes through the same code
//! as in production. A worker panic aborts the process (libFuzzer reports the crash); a
//! connection not closed within the bound after the client's FIN is reported as a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// How long the gateway may take to close a connection after the client's FIN. Generous: the
/// point is to catch connections that stay open until a timeout (seconds), not slowness.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// Answers every request with a small fixed response, reading the body it announces.
fn upstream_conn(mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 4096];
    loop {
        // Head.
        let (head_len, body) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut len = 0usize;
                    let mut chunked = false;
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            len = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = true;
                        }
                    }
                    break (n, if chunked { None } else { Some(len) });
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        buf.drain(..head_len);
        // Body: exact length, or to the end of the chunked body (trailers included; the
        // gateway's own decoder, which the http_body target checks on its own).
        let mut dec = pipegate::http::ChunkedDecoder::new();
        loop {
            let done = match body {
                Some(n) if buf.len() >= n => {
                    buf.drain(..n);
                    true
                }
                Some(_) => false,
                None => match dec.feed(&buf, None) {
                    Ok(used) => {
                        buf.drain(..used);
                        dec.is_done()
                    }
                    Err(_) => return,
                },
            };
            if done {
                break;
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        if s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
        )
        .is_err()
        {
            return;
        }
    }
}

fn start() -> SocketAddr {
    let up = TcpListener::bind("127.0.0.1:0").expect("upstream listener");
    let up_addr = up.local_addr().expect("upstream address");
    thread::spawn(move || {
        for s in up.incoming().flatten() {
            thread::spawn(move || upstream_conn(s));
        }
    });

    let dir: PathBuf =
        std::env::temp_dir().join(format!("pipegate-fuzz-conn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("apps")).expect("fuzz config directory");
    let conf = serde_json::json!({
        "listen_address": "127.0.0.1",
        "listen_port": 0,
        "secret": "fuzz-secret",
        "app_path": "apps/",
        "proxy_default_timeout": 2,
        "pipegate": {
            "workers": 1,
            "client_header_timeout_ms": 2000,
            "client_body_timeout_ms": 2000,
            "keepalive_timeout_ms": 2000,
            "max_header_bytes": 8192,
            "max_request_body_bytes": 65536
        }
    });
    std::fs::write(dir.join("tyk.conf"), conf.to_string()).expect("write tyk.conf");
    let target = format!("http://{up_addr}");
    let keyless = serde_json::json!({
        "name": "a", "api_id": "a", "org_id": "o", "use_keyless": true,
        "proxy": {"listen_path": "/a/", "target_url": target, "strip_listen_path": true}
    });
    let keyed = serde_json::json!({
        "name": "k", "api_id": "k", "org_id": "o", "use_keyless": false,
        "auth": {"auth_header_name": "Authorization"},
        "proxy": {"listen_path": "/k/", "target_url": target, "strip_listen_path": true}
    });
    std::fs::write(dir.join("apps/a.json"), keyless.to_string()).expect("write API");
    std::fs::write(dir.join("apps/k.json"), keyed.to_string()).expect("write API");
    let conf_path = dir.join("tyk.conf");
    let (snapshot, bundles) = pipegate::server::load_config(&conf_path).expect("fuzz config loads");
    let running = pipegate::server::start(conf_path, snapshot, bundles).expect("gateway starts");
    let addr = running.addr;
    // The gateway runs for the life of the fuzz process.
    std::mem::forget(running);
    addr
}

fn gateway() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(start)
}

fuzz_target!(|data: &[u8]| {
    let addr = gateway();
    let Ok(mut s) = TcpStream::connect(addr) else {
        panic!("gateway stopped accepting connections");
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    // The gateway may answer (and close) before reading everything: a failed write is fine.
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let started = Instant::now();
    let mut tmp = [0u8; 16384];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            // Reset after the gateway closed with unread input: a clean enough close.
            Err(_) => return,
        }
        if started.elapsed() > CLOSE_BOUND {
            panic!("the gateway kept a half-closed connection open for {CLOSE_BOUND:?}");
        }
    }
});
