//! The plugin round trip: a hook object encoded, sent to a real child over its stdin, answered on
//! its stdout and decoded, as the gateway does it (through `PipeClient`).
//!
//! The child is `pipegate demo-plugin` (the Rust SDK). Run with `cargo bench --bench pipe`.
//! `one_in_flight` is the added latency of one hook on an idle gateway; `batch_64` divides the time
//! of 64 concurrent calls by 64, the cost per hook under load (frames batched per write and read).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mio::{Events, Poll, Token, Waker};
use pipegate::coprocess::object::{HookType, MiniRequestObject, Object, PairMap};
use pipegate::coprocess::pipe::{PipeClient, PipeOptions};
use pipegate::middleware::chain::{request_object, RequestView};
use pipegate::middleware::hook_object::RequestHookObject;
use serde_bytes::ByteBuf;

fn object() -> Object {
    let mut headers = PairMap::new();
    for (k, v) in [
        ("Host", "api.example.com"),
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"),
        ("X-Request-Id", "7f9c2ba4-e88f-11ee-a5d2-0242ac120002"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Cookie", "session=abcdef0123456789; theme=dark"),
        ("Accept-Language", "en-US,en;q=0.9"),
        ("Cache-Control", "no-cache"),
        ("Content-Length", "1024"),
    ] {
        headers.push(k, v.to_string());
    }
    Object {
        hook_type: Some(HookType::Pre),
        hook_name: Some("DemoPre".into()),
        request: Some(MiniRequestObject {
            headers: Some(headers),
            url: Some("/demo/orders/12345?expand=true".into()),
            method: Some("POST".into()),
            raw_body: Some(ByteBuf::from(vec![b'a'; 1024])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn bench_pipe(c: &mut Criterion) {
    let exe = env!("CARGO_BIN_EXE_pipegate").to_string();
    let client = PipeClient::start(PipeOptions::new(vec![exe, "demo-plugin".into()]))
        .expect("start demo plugin");
    let mut poll = Poll::new().expect("poll");
    let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("waker"));
    let handle = client.register_worker(waker);
    let mut events = Events::with_capacity(16);
    let obj = object();

    let mut wait = |n: usize| {
        let mut got = 0;
        while got < n {
            while let Ok(r) = handle.replies.try_recv() {
                assert!(r.result.is_ok(), "hook failed: {:?}", r.result);
                got += 1;
            }
            if got < n {
                poll.poll(&mut events, Some(Duration::from_secs(5)))
                    .expect("poll");
            }
        }
    };

    let mut g = c.benchmark_group("pipe_roundtrip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_in_flight", |b| {
        b.iter(|| {
            client.dispatch(handle.id, 1, Instant::now() + Duration::from_secs(5), &obj);
            wait(1);
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("batch_64", |b| {
        b.iter(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            for i in 0..64 {
                client.dispatch(handle.id, i, deadline, &obj);
            }
            wait(64);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("object");
    let mut buf = Vec::with_capacity(4096);
    g.bench_function("encode_dispatch_1k_body", |b| {
        b.iter(|| {
            buf.clear();
            pipegate::coprocess::frame::encode_dispatch(&mut buf, 7, &obj, 1 << 26).unwrap()
        })
    });
    // The gateway's two ways to build a request hook's frame from a parsed request: the owned
    // object (gRPC, edited requests) and the borrowed one (first pipe hook of a request).
    let raw = {
        let mut r =
            b"POST /demo/orders/12345?expand=true HTTP/1.1\r\nHost: api.example.com\r\n".to_vec();
        if let Some(req) = &obj.request {
            for (k, v) in req.headers.iter().flat_map(|h| h.iter()) {
                if k != "Host" {
                    r.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                }
            }
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(&[b'a'; 1024]);
        r
    };
    let mut head = pipegate::http::RequestHead::default();
    pipegate::http::parse_request(&raw, &mut head, 64 << 10).expect("parses");
    let view = RequestView {
        buf: &raw,
        head: &head,
        edits: None,
        body: &raw[head.head_len..],
        scheme: "http",
    };
    let api_json = br#"{"api_id":"a","org_id":"o","proxy":{"listen_path":"/demo/","target_url":"http://127.0.0.1:1/"}}"#;
    let (api, _) = pipegate::config::parse_api_file(std::path::Path::new("a.json"), api_json)
        .expect("api")
        .remove(0);
    let def = pipegate::config::HookDef {
        name: "DemoPre".into(),
        path: String::new(),
        require_session: false,
        raw_body_only: false,
        timeout: None,
        fail_open: None,
    };
    g.bench_function("request_hook_frame_owned", |b| {
        b.iter(|| {
            buf.clear();
            let o = request_object(HookType::Pre, &def, &api, &view, None, true);
            pipegate::coprocess::frame::encode_dispatch(&mut buf, 7, &o, 1 << 26).unwrap()
        })
    });
    g.bench_function("request_hook_frame_borrowed", |b| {
        b.iter(|| {
            buf.clear();
            let o = RequestHookObject::new(HookType::Pre, &def, &api, &view, None, true).unwrap();
            pipegate::coprocess::frame::encode_dispatch(&mut buf, 7, &o, 1 << 26).unwrap()
        })
    });
    let reply = rmp_serde::to_vec_named(&obj).expect("encode");
    g.bench_function("decode_object_1k_body", |b| {
        b.iter(|| rmp_serde::from_slice::<Object>(&reply).unwrap())
    });
    g.finish();
    client.shutdown(Duration::from_secs(2));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_pipe
}
criterion_main!(benches);
