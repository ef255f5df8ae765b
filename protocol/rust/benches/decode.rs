//! Per-call cost of the SDK's protocol loop: dispatch frames in, reply frames out, through
//! `serve_io` (the path `serve` runs on stdin/stdout), with the `add_header` example's hook.
//! Each iteration feeds a batch of frames so the loop's per-batch buffers do not dominate.

mod common;

use std::io::Cursor;

use common::{dispatch_frames, Sample};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pipegate_plugin::{serve_io, HookCall, HookResult, ObjectPatch, ServeOptions};

const BATCH: u64 = 256;

fn add_header(call: HookCall) -> HookResult {
    match call.object.hook_name.as_str() {
        "AddHeader" => {
            let mut patch = ObjectPatch::default();
            patch.set_header("X-Pipegate-Rust", "1");
            patch.into()
        }
        other => HookResult::Error(format!("no hook named {other:?}")),
    }
}

fn bench_dispatch(c: &mut Criterion) {
    let options = ServeOptions::new("bench");
    let mut group = c.benchmark_group("sdk_dispatch");
    group.throughput(Throughput::Elements(BATCH));
    for (name, sample) in [
        ("typical", Sample::Typical),
        ("realistic", Sample::Realistic),
    ] {
        let input = dispatch_frames(sample, BATCH);
        let mut output = Vec::with_capacity(64 * 1024);
        group.bench_function(name, |b| {
            b.iter(|| {
                output.clear();
                serve_io(
                    Cursor::new(black_box(&input[..])),
                    &mut output,
                    &options,
                    &add_header,
                )
                .expect("in-memory serve_io");
                black_box(output.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_dispatch);
criterion_main!(benches);
