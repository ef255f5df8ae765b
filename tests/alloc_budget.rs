//! Heap allocations per proxied request, in steady state, counted by a counting global allocator.
//!
//! Run with `cargo test --release --test alloc_budget -- --nocapture` (prints the figures). The
//! gateway runs in this process (one worker) in front of
//! an upstream thread that allocates nothing per request; the client (this thread) reuses one
//! buffer. So every allocation counted while the measured requests run belongs to the gateway: its
//! worker, and with a hook its pipe reader/writer threads (the plugin child is another process).
//!
//! Scenarios: a keyless API without a plugin, and the same API with one pipe `pre` hook (the
//! Rust-SDK demo plugin adding one header). Budget (issue #7): 0 without a plugin, at most 4 with
//! one hook. A count, not a timing: the same on a loaded machine, so it is asserted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates every call to the system allocator unchanged; the counters are relaxed
// atomics, which neither allocate nor reenter the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";

/// An upstream that answers every request on a keep-alive connection with [`RESPONSE`], reusing
/// one buffer per connection (no allocation per request). Requests carry no body.
fn upstream() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 << 10];
    let mut have = 0;
    loop {
        match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        // Answer every complete head in the buffer (pipelining-safe).
        while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            if s.write_all(RESPONSE).is_err() {
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn write_config(dir: &Path, up: std::net::SocketAddr, with_hook: bool) -> std::path::PathBuf {
    let apps = dir.join("apps");
    std::fs::create_dir_all(&apps).expect("mkdir");
    let mut conf = serde_json::json!({
        "listen_address": "127.0.0.1",
        "listen_port": 0,
        "app_path": "apps/",
        "pipegate": {"workers": 1},
    });
    let mut api = serde_json::json!({
        "name": "bench", "api_id": "bench", "org_id": "o", "use_keyless": true,
        "proxy": {"listen_path": "/bench/", "target_url": format!("http://{up}/"), "strip_listen_path": true}
    });
    if with_hook {
        conf["coprocess_options"] = serde_json::json!({
            "enable_coprocess": true,
            "pipe_command": [env!("CARGO_BIN_EXE_pipegate"), "demo-plugin"],
        });
        api["custom_middleware"] =
            serde_json::json!({"driver": "pipe", "pre": [{"name": "DemoPre"}]});
    }
    let path = dir.join("tyk.conf");
    std::fs::write(&path, serde_json::to_vec(&conf).expect("json")).expect("write conf");
    std::fs::write(
        apps.join("bench.json"),
        serde_json::to_vec(&api).expect("json"),
    )
    .expect("write api");
    path
}

/// Sends `n` requests one after another on one keep-alive connection, reading each response.
fn drive(c: &mut TcpStream, buf: &mut [u8], n: u64) {
    const REQ: &[u8] = b"GET /bench/items/42?x=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: alloc-bench\r\nAccept: */*\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln\r\nX-Request-Id: 7f9c2ba4-e88f-11ee-a5d2-0242ac120002\r\n\r\n";
    for _ in 0..n {
        c.write_all(REQ).expect("send");
        let mut have = 0;
        loop {
            let k = c.read(&mut buf[have..]).expect("read");
            assert!(k > 0, "gateway closed the connection");
            have += k;
            if let Some(h) = find(&buf[..have], b"\r\n\r\n") {
                let head = &buf[..h];
                assert!(
                    head.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(head)
                );
                // The body is the upstream's 12 bytes.
                if have >= h + 4 + 12 {
                    break;
                }
            }
        }
    }
}

/// Allocations and bytes per request for one scenario.
fn measure(name: &str, with_hook: bool) -> (f64, f64) {
    let dir = std::env::temp_dir().join(format!("pipegate-alloc-{}-{name}", std::process::id()));
    let up = upstream();
    let conf = write_config(&dir, up, with_hook);
    let (snapshot, bundles) = pipegate::server::load_config(&conf).expect("config");
    let running = pipegate::server::start(conf, snapshot, bundles).expect("start");
    let mut c = TcpStream::connect(running.addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = vec![0u8; 64 << 10];
    // Warm up: pools, buffers, the upstream connection and the plugin reach their steady size.
    drive(&mut c, &mut buf, 3000);
    std::thread::sleep(Duration::from_millis(200));
    let n: u64 = std::env::var("ALLOC_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    drive(&mut c, &mut buf, n);
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let per = (a1 - a0) as f64 / n as f64;
    let bytes = (b1 - b0) as f64 / n as f64;
    println!("{name:<24} {per:>7.2} allocations/request {bytes:>9.0} bytes/request");
    running.shutdown();
    drop(c);
    running.join();
    let _ = std::fs::remove_dir_all(&dir);
    (per, bytes)
}

/// One test, so nothing else runs in this process while counting.
#[test]
fn steady_state_allocations_per_request_stay_in_budget() {
    let (plain, _) = measure("no_plugin", false);
    // A stray allocation now and then (a timer wheel growing, a log line) is not per request.
    assert!(
        plain < 0.01,
        "{plain} allocations per proxied request without a plugin; budget 0"
    );
    let (hook, _) = measure("one_pipe_pre_hook", true);
    assert!(
        hook <= 4.0,
        "{hook} allocations per request with one pipe hook; budget 4"
    );
}
