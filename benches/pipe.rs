//! The plugin round trip: a hook object encoded, sent to a real child over its stdin, answered on
//! its stdout and decoded, as the gateway does it (through `PipeClient`); and the hook object's
//! two wire encodings side by side (MessagePack for the pipe, protobuf for gRPC).
//!
//! Run with `cargo bench --bench pipe`. The children: `pipegate demo-plugin` (the Rust SDK) and the
//! Python runner (`python3 -m pipegate_plugin`, with a Tyk-style hook adding one header, as in
//! `benches/loadtest.sh`; skipped with a message when python3 or its msgpack module is missing).
//! `one_in_flight` is the added latency of one hook on an idle gateway; `batch_N` divides the time
//! of N concurrent calls by N, the cost per hook under load (frames batched per write and read).
//!
//! The object is `pipegate plugin-bench`'s own (`plugin_bench::sample_object`): a POST parsed from
//! a request with a dozen headers, a JWT and a 1 KiB JSON body, turned into a `pre` hook object by
//! the chain's own code, so the benches and the command measure the same thing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mio::{Events, Poll, Token, Waker};
use pipegate::coprocess::object::{HookType, Object};
use pipegate::coprocess::pipe::{PipeClient, PipeOptions};
use pipegate::coprocess::proto::pb;
use pipegate::middleware::chain::{request_object, RequestView};
use pipegate::middleware::hook_object::RequestHookObject;
use pipegate::plugin_bench::{sample_object, sample_request, BenchOptions, BenchTarget};
use prost::Message as _;

/// The raw request and the `pre` hook object built from it, with hook name `hook`.
fn fixture(hook: &str) -> (Vec<u8>, Object) {
    let opts = BenchOptions {
        // Only the object-building fields matter here; the target is never started.
        target: BenchTarget::Pipe(String::new()),
        hook: HookType::Pre,
        name: hook.into(),
        concurrency: 1,
        requests: 1,
        warmup: 0,
        body_bytes: 1024,
        timeout: Duration::from_secs(5),
        headers: Vec::new(),
        progress: false,
    };
    (
        sample_request(&opts).expect("sample request"),
        sample_object(&opts).expect("sample object"),
    )
}

/// `one_in_flight` and `batch_{batch}` round trips of `obj` through `client`, in group `group`.
fn bench_round_trips(
    c: &mut Criterion,
    group: &str,
    client: &PipeClient,
    obj: &Object,
    batch: u64,
) {
    let mut poll = Poll::new().expect("poll");
    let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("waker"));
    let handle = client.register_worker(waker);
    let mut events = Events::with_capacity(16);

    let mut wait = |n: u64| {
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

    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_in_flight", |b| {
        b.iter(|| {
            client.dispatch(handle.id, 1, Instant::now() + Duration::from_secs(5), obj);
            wait(1);
        })
    });
    g.throughput(Throughput::Elements(batch));
    g.bench_function(format!("batch_{batch}"), |b| {
        b.iter(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            for i in 0..batch {
                client.dispatch(handle.id, i, deadline, obj);
            }
            wait(batch);
        })
    });
    g.finish();
}

/// The Tyk-style Python plugin: one `pre` hook adding one header (as in `benches/loadtest.sh`).
const PYTHON_PLUGIN: &str = "from tyk.decorators import *\n\
@Hook\n\
def AddHeader(request, session, spec):\n    request.add_header('X-Hook', '1')\n    return request, session\n";

/// Starts the Python runner on [`PYTHON_PLUGIN`] (written into `dir`) and checks it answers, or
/// says why it cannot run here.
fn start_python(dir: &Path, obj: &Object) -> Result<Arc<PipeClient>, String> {
    let pythonpath = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/python");
    let probe = Command::new("python3")
        .args(["-c", "import msgpack"])
        .env("PYTHONPATH", pythonpath)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !probe.status.success() {
        let err = String::from_utf8_lossy(&probe.stderr);
        return Err(format!(
            "python3 cannot import msgpack ({}); install it with `python3 -m pip install msgpack`",
            err.lines().last().unwrap_or("no message")
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let plugin = dir.join("bench_plugin.py");
    std::fs::write(&plugin, PYTHON_PLUGIN)
        .map_err(|e| format!("cannot write {}: {e}", plugin.display()))?;
    let mut o = PipeOptions::new(vec![
        "python3".into(),
        "-m".into(),
        "pipegate_plugin".into(),
        plugin.display().to_string(),
    ]);
    o.env.push(("PYTHONPATH".into(), pythonpath.into()));
    let client = PipeClient::start(o).map_err(|e| format!("cannot start the runner: {e}"))?;
    // One probe call: the runner is up and the hook answers.
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let waker = Arc::new(Waker::new(poll.registry(), Token(0)).map_err(|e| format!("waker: {e}"))?);
    let handle = client.register_worker(waker);
    client.dispatch(handle.id, 0, Instant::now() + Duration::from_secs(10), obj);
    let mut events = Events::with_capacity(4);
    let reply = loop {
        if let Ok(r) = handle.replies.try_recv() {
            break r.result;
        }
        poll.poll(&mut events, Some(Duration::from_secs(11)))
            .map_err(|e| format!("poll: {e}"))?;
    };
    match reply {
        Ok(_) => Ok(client),
        Err(e) => {
            client.shutdown(Duration::from_secs(2));
            Err(format!("the runner did not answer the probe call: {e}"))
        }
    }
}

fn bench_pipe(c: &mut Criterion) {
    let (raw, obj) = fixture("DemoPre");

    let exe = env!("CARGO_BIN_EXE_pipegate").to_string();
    let client = PipeClient::start(PipeOptions::new(vec![exe, "demo-plugin".into()]))
        .expect("start demo plugin");
    bench_round_trips(c, "pipe_roundtrip", &client, &obj, 64);
    client.shutdown(Duration::from_secs(2));

    let (_, py_obj) = fixture("AddHeader");
    let dir = std::env::temp_dir().join(format!("pipegate-bench-py-{}", std::process::id()));
    match start_python(&dir, &py_obj) {
        Ok(client) => {
            bench_round_trips(c, "pipe_roundtrip_python", &client, &py_obj, 32);
            client.shutdown(Duration::from_secs(2));
        }
        Err(why) => eprintln!("skipping pipe_roundtrip_python: {why}"),
    }
    let _ = std::fs::remove_dir_all(&dir);

    let mut g = c.benchmark_group("object");
    let mut buf = Vec::with_capacity(4096);
    g.bench_function("encode_dispatch_1k_body", |b| {
        b.iter(|| {
            buf.clear();
            pipegate::coprocess::frame::encode_dispatch(&mut buf, 7, &obj, 1 << 26).unwrap()
        })
    });
    // The gRPC transport's encoding of the same object: the one conversion to the generated
    // types (`coprocess::proto`), then prost, as `GrpcClient::dispatch` and tonic's codec do.
    g.bench_function("protobuf_encode_object_1k_body", |b| {
        b.iter(|| {
            buf.clear();
            let msg = pb::Object::from(&obj);
            msg.encode(&mut buf).unwrap()
        })
    });
    // The gateway's two ways to build a request hook's frame from a parsed request: the owned
    // object (gRPC, edited requests) and the borrowed one (first pipe hook of a request).
    let mut head = pipegate::http::RequestHead::default();
    pipegate::http::parse_request(&raw, &mut head, 64 << 10).expect("parses");
    let view = RequestView {
        buf: &raw,
        head: &head,
        edits: None,
        body: &raw[head.head_len..],
        scheme: "http",
    };
    let api_json = br#"{"api_id":"a","org_id":"o","proxy":{"listen_path":"/bench/","target_url":"http://127.0.0.1:1/"}}"#;
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
            o.encode_dispatch(&mut buf, 7, 1 << 26).unwrap()
        })
    });
    let reply = rmp_serde::to_vec_named(&obj).expect("encode");
    g.bench_function("decode_object_1k_body", |b| {
        b.iter(|| rmp_serde::from_slice::<Object>(&reply).unwrap())
    });
    // Whole reply frames as plugins send them, through the gateway's decoder (the hand-written
    // fast path) and through the serde path it falls back to: a reply setting one header (what
    // the Rust SDK's demo hook answers), and one carrying a 1 KiB body and a dozen set_headers.
    let typical = reply_frame(&serde_json::json!(
        {"id": 7, "object": {"request": {"set_headers": {"X-Pipegate-Rust": "1"}}}}
    ));
    let mut big = serde_json::json!({"id": 7, "object": {"request": {"set_headers": {}}}});
    for i in 0..12 {
        big["object"]["request"]["set_headers"][format!("X-Plugin-Header-{i}")] =
            serde_json::Value::String(format!("value-{i}-abcdefghijklmnop"));
    }
    let mut big = reply_frame(&big);
    append_raw_body(&mut big, &[b'x'; 1024]);
    for (name, frame) in [
        ("decode_child_reply_set_header", &typical),
        ("decode_child_reply_1k_body_12_headers", &big),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| pipegate::coprocess::frame::decode_child_message(frame).unwrap())
        });
        g.bench_function(format!("{name}_serde"), |b| {
            b.iter(|| pipegate::coprocess::frame::decode_child_message_serde(frame).unwrap())
        });
    }
    // A gRPC reply of the same object: prost decodes, then the one conversion back to `Object`.
    let reply = pb::Object::from(&obj).encode_to_vec();
    g.bench_function("protobuf_decode_object_1k_body", |b| {
        b.iter(|| Object::from(pb::Object::decode(reply.as_slice()).unwrap()))
    });
    g.finish();
}

/// A reply frame's payload: `v` as MessagePack (maps with str keys, as every plugin SDK writes).
fn reply_frame(v: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec(v).expect("encode reply")
}

/// Adds `raw_body` (a MessagePack bin, as the SDKs send bodies) to the request map of a reply
/// built by [`reply_frame`] from `{"id", "object": {"request": {...}}}` with keys in that order.
fn append_raw_body(frame: &mut Vec<u8>, body: &[u8]) {
    // The request map is the last value; bump its fixmap length and append the entry.
    let request_key = frame
        .windows(8)
        .position(|w| w == b"\xa7request")
        .expect("request key");
    let len_at = request_key + 8;
    assert!(
        frame[len_at] & 0xf0 == 0x80 && frame[len_at] < 0x8f,
        "small request map"
    );
    frame[len_at] += 1;
    rmp::encode::write_str(frame, "raw_body").expect("key");
    rmp::encode::write_bin(frame, body).expect("body");
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_pipe
}
criterion_main!(benches);
