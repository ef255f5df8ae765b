//! The gateway started in this process (one worker, `pipegate::server::start`) in front of an
//! upstream thread that allocates nothing per request, and one keep-alive client connection.
//!
//! Shared by `tests/alloc_budget.rs` (allocations per request, counted by a global allocator that
//! sees the whole process) and `benches/request.rs` (time per request), both through `#[path]`:
//! it is not declared in `tests/common/mod.rs` because those two targets need the gateway in their
//! own process, not the binary the rest of the harness starts. So that the allocation count stays
//! the gateway's, nothing here allocates per request: the upstream and the client each reuse one
//! buffer.
//!
//! Scenarios: a keyless API without a plugin, or the same API with one pipe `pre` hook (the
//! Rust-SDK demo plugin, `pipegate demo-plugin`, adding one header).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the upstream answers to every request.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";

/// The request the client sends: a GET with a handful of headers and a bearer token, no body.
pub const REQUEST: &[u8] = b"GET /bench/items/42?x=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: alloc-bench\r\nAccept: */*\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln\r\nX-Request-Id: 7f9c2ba4-e88f-11ee-a5d2-0242ac120002\r\n\r\n";

/// An upstream that answers every request on a keep-alive connection with [`RESPONSE`], reusing
/// one buffer per connection (no allocation per request). Requests carry no body.
fn upstream() -> SocketAddr {
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

fn write_config(dir: &Path, up: SocketAddr, with_hook: bool) -> PathBuf {
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

/// A running in-process gateway, its upstream, and one keep-alive client connection to it.
pub struct InProcessGateway {
    running: pipegate::server::Running,
    client: TcpStream,
    buf: Vec<u8>,
    dir: PathBuf,
}

impl InProcessGateway {
    /// Writes the config into a private temp directory (`name` keeps scenarios apart), starts the
    /// upstream and the gateway, and connects the client.
    pub fn start(name: &str, with_hook: bool) -> InProcessGateway {
        let dir =
            std::env::temp_dir().join(format!("pipegate-inproc-{}-{name}", std::process::id()));
        let up = upstream();
        let conf = write_config(&dir, up, with_hook);
        let (snapshot, bundles) = pipegate::server::load_config(&conf).expect("config");
        let running = pipegate::server::start(conf, snapshot, bundles).expect("start");
        let client = TcpStream::connect(running.addr).expect("connect");
        client.set_nodelay(true).expect("nodelay");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        InProcessGateway {
            running,
            client,
            buf: vec![0u8; 64 << 10],
            dir,
        }
    }

    /// One request: writes [`REQUEST`] and reads the whole response (a 200 with the upstream's
    /// 12-byte body), on the kept-alive connection.
    pub fn round_trip(&mut self) {
        self.client.write_all(REQUEST).expect("send");
        let mut have = 0;
        loop {
            let k = self.client.read(&mut self.buf[have..]).expect("read");
            assert!(k > 0, "gateway closed the connection");
            have += k;
            if let Some(h) = find(&self.buf[..have], b"\r\n\r\n") {
                let head = &self.buf[..h];
                assert!(
                    head.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(head)
                );
                // The body is the upstream's 12 bytes.
                if have >= h + 4 + 12 {
                    return;
                }
            }
        }
    }

    /// `n` requests one after another.
    pub fn drive(&mut self, n: u64) {
        for _ in 0..n {
            self.round_trip();
        }
    }

    /// Shuts the gateway down (its plugin child too), waits for it, and removes the temp directory.
    pub fn stop(self) {
        self.running.shutdown();
        drop(self.client);
        self.running.join();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
