//! The demo: a small echo upstream and a self-contained gateway configuration around it.
//!
//! The echo upstream is a plain blocking HTTP/1.1 server (a thread per connection) that answers
//! with a JSON description of the request it received. `pipegate demo` uses it so that a new user
//! sees the gateway work with nothing else installed, and the integration tests start it as a real
//! upstream process (`pipegate echo-upstream`). Query parameters make it misbehave on purpose:
//! `status=N`, `delay_ms=N`, `size=N` (a body of N bytes instead of JSON), `chunked=1`, `close=1`
//! (close-delimited body), `reset=1` (a truncated body, then a TCP reset).

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::http::{self, BodyKind, ChunkedDecoder};

/// Serves the echo upstream on `listener` until the process exits.
pub fn serve_echo(listener: TcpListener) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let _ = thread::Builder::new()
                    .name("echo-conn".into())
                    .spawn(move || {
                        let _ = echo_conn(s);
                    });
            }
            Err(e) => {
                tracing::warn!("echo upstream accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn echo_conn(stream: TcpStream) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone()?;
    let mut rd = BufReader::with_capacity(64 * 1024, stream);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut head = http::RequestHead::default();
    loop {
        // Read until a full head is buffered.
        let complete = loop {
            match http::parse_request(&buf, &mut head, 1 << 20) {
                Ok(true) => break true,
                Ok(false) => {}
                Err(e) => {
                    let mut resp = Vec::new();
                    http::response::write_error(&mut resp, e.status, e.message, true, false);
                    out.write_all(&resp)?;
                    return Ok(());
                }
            }
            let mut tmp = [0u8; 16 * 1024];
            let n = rd.read(&mut tmp)?;
            if n == 0 {
                break false;
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        if !complete {
            return Ok(());
        }
        let hl = head.head_len;
        let mut body = Vec::new();
        let mut rest = buf.split_off(hl);
        match head.body {
            BodyKind::Length(n) => {
                while (rest.len() as u64) < n {
                    let mut tmp = [0u8; 64 * 1024];
                    let r = rd.read(&mut tmp)?;
                    if r == 0 {
                        return Ok(());
                    }
                    rest.extend_from_slice(&tmp[..r]);
                }
                let tail = rest.split_off(n as usize);
                body = rest;
                rest = tail;
            }
            BodyKind::Chunked => {
                let mut dec = ChunkedDecoder::new();
                loop {
                    let used = match dec.feed(&rest, Some(&mut body)) {
                        Ok(u) => u,
                        Err(_) => return Ok(()),
                    };
                    rest.drain(..used);
                    if dec.is_done() {
                        break;
                    }
                    let mut tmp = [0u8; 64 * 1024];
                    let r = rd.read(&mut tmp)?;
                    if r == 0 {
                        return Ok(());
                    }
                    rest.extend_from_slice(&tmp[..r]);
                }
            }
            _ => {}
        }
        let keep = respond(&buf, &head, &body, &mut out)?;
        buf = rest;
        if !keep {
            return Ok(());
        }
    }
}

fn respond(
    buf: &[u8],
    head: &http::RequestHead,
    body: &[u8],
    out: &mut TcpStream,
) -> io::Result<bool> {
    let params: BTreeMap<String, String> = head
        .query(buf)
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let num = |k: &str| params.get(k).and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = num("delay_ms") {
        thread::sleep(Duration::from_millis(ms));
    }
    let status = num("status").unwrap_or(200) as u16;
    let mut headers = BTreeMap::new();
    for h in &head.headers {
        headers.insert(
            http::headers::canonical_name(h.name.of(buf)),
            String::from_utf8_lossy(h.value.of(buf)).into_owned(),
        );
    }
    let token = head.header(buf, "x-echo-token").map(|t| t.to_vec());
    let payload: Vec<u8> = match num("size") {
        Some(n) => vec![b'x'; n as usize],
        None => {
            let mut v = serde_json::json!({
                "method": head.method.str(buf),
                "path": head.path(buf),
                "query": head.query(buf).unwrap_or(""),
                "headers": headers,
                "body_len": body.len(),
            });
            if let Ok(s) = std::str::from_utf8(body) {
                if body.len() <= 64 * 1024 {
                    v["body"] = serde_json::Value::String(s.to_string());
                }
            }
            serde_json::to_vec(&v).unwrap_or_default()
        }
    };
    let mut resp = Vec::with_capacity(payload.len() + 256);
    http::response::status_line(&mut resp, status);
    resp.extend_from_slice(b"Content-Type: application/json\r\nX-Echo-Upstream: 1\r\n");
    if let Some(t) = &token {
        resp.extend_from_slice(b"X-Echo-Token: ");
        resp.extend_from_slice(t);
        resp.extend_from_slice(b"\r\n");
    }
    let is_head = head.method.of(buf) == b"HEAD";
    if params.contains_key("reset") {
        // A head promising more body than is sent, then a TCP reset (SO_LINGER 0).
        resp.extend_from_slice(
            format!("Content-Length: {}\r\n\r\n", payload.len() + 1000).as_bytes(),
        );
        resp.extend_from_slice(&payload);
        out.write_all(&resp)?;
        let _ = socket2::SockRef::from(&*out).set_linger(Some(Duration::ZERO));
        return Ok(false);
    }
    if params.contains_key("close") {
        resp.extend_from_slice(b"Connection: close\r\n\r\n");
        out.write_all(&resp)?;
        if !is_head {
            out.write_all(&payload)?;
        }
        return Ok(false);
    }
    if params.contains_key("chunked") {
        resp.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        if !is_head {
            for piece in payload.chunks(1000) {
                http::chunked::write_chunk(&mut resp, piece);
            }
            resp.extend_from_slice(b"0\r\n\r\n");
        }
    } else {
        resp.extend_from_slice(format!("Content-Length: {}\r\n\r\n", payload.len()).as_bytes());
        if !is_head {
            resp.extend_from_slice(&payload);
        }
    }
    out.write_all(&resp)?;
    Ok(head.keep_alive)
}

/// The demo plugin, run as the gateway's pipe child by `pipegate demo` (`pipegate demo-plugin`).
/// It is built on the Rust SDK in `protocol/rust`, so the demo needs nothing beyond the build.
/// Hooks: `DemoPre` adds `X-Pipegate-Demo: pre hook ran` to the request (and answers 403 itself when
/// the client sends `X-Demo-Block`); `DemoResponse` adds `X-Pipegate-Demo-Response: 1`.
pub fn run_demo_plugin() -> io::Result<()> {
    use pipegate_plugin::{serve_with, HookCall, HookResult, ObjectPatch, ServeOptions};
    let options = ServeOptions::new("pipegate-demo").hooks(["DemoPre", "DemoResponse"]);
    serve_with(options, |call: HookCall| -> HookResult {
        let mut patch = ObjectPatch::default();
        match call.object.hook_name.as_str() {
            "DemoPre" => {
                if call.object.header("X-Demo-Block").is_some() {
                    patch.respond(403, "blocked by the demo plugin");
                } else {
                    patch.set_header("X-Pipegate-Demo", "pre hook ran");
                }
            }
            "DemoResponse" => {
                if let Some(resp) = call.object.response.as_ref() {
                    patch.set_response_header(resp, "X-Pipegate-Demo-Response", "1");
                }
            }
            other => return HookResult::Error(format!("demo plugin has no hook {other:?}")),
        }
        patch.into()
    })
}
