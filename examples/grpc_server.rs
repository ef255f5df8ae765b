//! A Tyk-compatible gRPC plugin server (`coprocess.Dispatcher`) written in Rust with tonic, using
//! the code pipegate generates from `protocol/proto`.
//!
//! ```text
//! cargo run --example grpc_server -- --listen tcp://127.0.0.1:5555
//! cargo run --example grpc_server -- --listen unix:///tmp/plugin.sock
//! ```
//! and in tyk.conf: `"coprocess_options": {"enable_coprocess": true,
//! "coprocess_grpc_server": "tcp://127.0.0.1:5555"}`, with hooks of driver `grpc` named below.
//!
//! The hooks are the ones of Tyk's own sample servers, so existing API definitions work:
//! - `MyPreMiddleware` (pre): sets the request header `myheader: myvalue`.
//! - `MyPostMiddleware` (post): sets `x-grpc-post: <hook_type number>`.
//! - `MyAuthCheck` (auth_check): accepts `Authorization: <VALID_TOKEN>` with a session (rate
//!   1000 per second, `metadata.token`), answers 401 `Not authorized` otherwise.
//! - `MyResponseMiddleware` (response): adds `x-grpc-response: true` to the response.
//! - any other name: the object is echoed unchanged (what a Tyk server does for unknown hooks).
//!
//! On start it prints `listening on <address>` (the real port when given port 0).

use pipegate::coprocess::proto::pb;
use pipegate::coprocess::proto::pb::dispatcher_server::{Dispatcher, DispatcherServer};
use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// The token `MyAuthCheck` accepts (the one in Tyk's Python sample server).
pub const VALID_TOKEN: &str = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";

/// Largest message accepted and sent: Tyk's tests and docs use 100 MB on both sides, because the
/// body travels twice (`body` and `raw_body`) and gRPC's default is only 4 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 100_000_000;

/// The sample hooks (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct SampleDispatcher;

fn set_request_header(obj: &mut pb::Object, name: &str, value: &str) {
    let req = obj.request.get_or_insert_with(Default::default);
    req.set_headers.insert(name.to_string(), value.to_string());
}

fn auth_check(mut obj: pb::Object) -> pb::Object {
    let token = obj
        .request
        .as_ref()
        .and_then(|r| r.headers.get("Authorization"))
        .cloned()
        .unwrap_or_default();
    if token != VALID_TOKEN {
        let req = obj.request.get_or_insert_with(Default::default);
        let ro = req.return_overrides.get_or_insert_with(Default::default);
        ro.response_code = 401;
        ro.response_error = "Not authorized (Rust gRPC middleware)".to_string();
        return obj;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let session = pb::SessionState {
        rate: 1000.0,
        per: 1.0,
        quota_max: -1,
        // Cache the session for the ID extractor for a minute.
        id_extractor_deadline: now + 60,
        metadata: [("token".to_string(), token.clone())].into_iter().collect(),
        ..Default::default()
    };
    obj.session = Some(session);
    // `metadata["token"]` names the key: mandatory for a successful auth hook.
    obj.metadata.insert("token".to_string(), token);
    obj
}

fn response_hook(mut obj: pb::Object) -> pb::Object {
    let resp = obj.response.get_or_insert_with(Default::default);
    resp.headers
        .insert("x-grpc-response".to_string(), "true".to_string());
    resp.multivalue_headers.push(pb::Header {
        key: "x-grpc-response".to_string(),
        values: vec!["true".to_string()],
    });
    obj
}

#[tonic::async_trait]
impl Dispatcher for SampleDispatcher {
    async fn dispatch(&self, request: Request<pb::Object>) -> Result<Response<pb::Object>, Status> {
        let mut obj = request.into_inner();
        let obj = match obj.hook_name.as_str() {
            "MyPreMiddleware" => {
                set_request_header(&mut obj, "myheader", "myvalue");
                obj
            }
            "MyPostMiddleware" => {
                let hook_type = obj.hook_type.to_string();
                set_request_header(&mut obj, "x-grpc-post", &hook_type);
                obj
            }
            "MyAuthCheck" => auth_check(obj),
            "MyResponseMiddleware" => response_hook(obj),
            _ => obj,
        };
        Ok(Response::new(obj))
    }

    async fn dispatch_event(
        &self,
        request: Request<pb::Event>,
    ) -> Result<Response<pb::EventReply>, Status> {
        eprintln!("event: {}", request.into_inner().payload);
        Ok(Response::new(pb::EventReply {}))
    }
}

/// Where to listen: `tcp://host:port`, `host:port` or `unix:///path` (Tyk's target syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (`127.0.0.1:0` picks a free port).
    Tcp(String),
    /// A Unix socket path (an existing socket file is replaced).
    Unix(std::path::PathBuf),
}

impl Listen {
    /// Parses the `--listen` value.
    pub fn parse(s: &str) -> Listen {
        if let Some(p) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            Listen::Unix(p.into())
        } else {
            Listen::Tcp(s.strip_prefix("tcp://").unwrap_or(s).to_string())
        }
    }
}

/// Serves `dispatcher` on `listen` until `shutdown` completes, calling `on_bound` with the bound
/// address first (so callers can listen on port 0 and learn the port).
pub async fn serve<D: Dispatcher>(
    dispatcher: D,
    listen: Listen,
    max_message: usize,
    on_bound: impl FnOnce(String),
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let svc = DispatcherServer::new(dispatcher)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
        .send_compressed(tonic::codec::CompressionEncoding::Zstd);
    let server = tonic::transport::Server::builder();
    match listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            on_bound(format!("tcp://{}", listener.local_addr()?));
            // Hook replies are small: never wait for Nagle (tonic's own nodelay setting does not
            // apply to an incoming stream).
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                if let Ok(c) = &conn {
                    let _ = c.set_nodelay(true);
                }
                conn
            });
            server
                .serve_with_incoming_shutdown(svc, incoming, shutdown)
                .await?;
        }
        Listen::Unix(path) => {
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            let listener = tokio::net::UnixListener::bind(&path)?;
            on_bound(format!("unix://{}", path.display()));
            server
                .serve_with_incoming_shutdown(svc, UnixListenerStream::new(listener), shutdown)
                .await?;
        }
    }
    Ok(())
}

const USAGE: &str =
    "usage: grpc_server [--listen tcp://127.0.0.1:5555 | unix:///path] [--max-message BYTES]";

fn main() -> std::process::ExitCode {
    let mut listen = Listen::Tcp("127.0.0.1:5555".into());
    let mut max_message = DEFAULT_MAX_MESSAGE;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = Listen::parse(&v),
            ("--max-message", Some(v)) => match v.parse() {
                Ok(n) => max_message = n,
                Err(_) => {
                    eprintln!("--max-message needs a number of bytes\n{USAGE}");
                    return std::process::ExitCode::FAILURE;
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let served = rt.block_on(serve(
        SampleDispatcher,
        listen,
        max_message,
        |addr| println!("listening on {addr}"),
        // Runs until killed (Ctrl-C / SIGTERM end the process).
        std::future::pending(),
    ));
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc_server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
