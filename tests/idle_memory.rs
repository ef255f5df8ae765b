//! Memory held by idle keep-alive connections (issue #7: RSS ≤ 20 MB with 10k idle connections).
//!
//! An edge gateway holds many more idle keep-alive connections than busy ones. Each idle
//! connection hands its buffers back to the worker's pool, so it costs only its small state.
//! The real gateway binary (one worker) serves one proxied request on each of 10,000
//! connections, which then stay open; the growth of its resident set is divided by the number of
//! connections and asserted. Memory, not time: the same on a loaded machine.
//!
//! Run with `cargo test --release --test idle_memory -- --nocapture` to see the figures.

mod common;

use common::*;
use serde_json::json;

/// Idle keep-alive connections held open.
const CONNS: usize = 10_000;
/// Most resident memory one idle connection may add: its connection state (under 1 KiB) with
/// room for allocator overhead. Before buffers were pooled it was ~14 KiB.
const MAX_BYTES_PER_IDLE_CONN: u64 = 2048;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

fn get_echoed(c: &mut Client, tok: &str) {
    let bytes = req("GET", &format!("/echo/{tok}")).token(tok).to_bytes();
    c.send(&bytes);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{tok}: {r:?}");
    assert_eq!(
        r.header("x-echo-token"),
        Some(tok),
        "{tok}: answer of another request"
    );
}

#[test]
fn ten_thousand_idle_keepalive_connections_hold_no_buffers() {
    raise_nofile_limit(2 * CONNS as u64 + 1000);
    let sb = Sandbox::new("idle-mem");
    let echo = EchoUpstream::start();
    sb.write_conf(&conf_with(json!({
        "pipegate": { "workers": 1, "keepalive_timeout_ms": 600_000 }
    })));
    sb.write_api(
        "echo",
        &keyless_api("echo", "/echo/", &format!("{}/", echo.url())),
    );
    let gw = Gateway::start(&sb);
    let mut warm = Client::connect(gw.addr());
    for i in 0..100 {
        get_echoed(&mut warm, &format!("warm{i}"));
    }
    drop(warm);
    let before = rss_kib(gw.pid());

    let mut conns: Vec<Client> = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let mut c = Client::connect(gw.addr());
        get_echoed(&mut c, &format!("first{i}"));
        conns.push(c);
    }
    let with = rss_kib(gw.pid());
    let per_conn = (with.saturating_sub(before) * 1024) / CONNS as u64;
    eprintln!(
        "{CONNS} idle keep-alive connections: RSS {before} KiB before, {with} KiB with them \
         ({per_conn} bytes per connection)"
    );
    assert!(
        per_conn <= MAX_BYTES_PER_IDLE_CONN,
        "each idle connection adds {per_conn} bytes (budget {MAX_BYTES_PER_IDLE_CONN}): \
         RSS {before} KiB -> {with} KiB"
    );

    // Parked connections take a buffer set back and answer their next request correctly.
    for (i, c) in conns.iter_mut().enumerate().step_by(7) {
        get_echoed(c, &format!("second{i}"));
    }
    // Pipelined requests on a parked connection: the second waits in the lent buffer.
    let c = &mut conns[1];
    let mut two = req("GET", "/echo/p1").token("p1").to_bytes();
    two.extend_from_slice(&req("GET", "/echo/p2").token("p2").to_bytes());
    c.send(&two);
    for tok in ["p1", "p2"] {
        let r = c.read_response();
        assert_eq!(r.header("x-echo-token"), Some(tok), "{r:?}");
    }
}
