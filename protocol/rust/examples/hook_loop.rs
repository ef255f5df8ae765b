//! Callgrind driver for the SDK's per-call cost: feeds N copies of a dispatch frame through
//! `serve_io` from memory into a `Vec` and prints the reply bytes. Run it under
//! `valgrind --tool=callgrind` with N and with N=0, subtract, divide by N (docs/PERFORMANCE.md).
//!
//! Usage: `hook_loop typical|realistic N`

#[path = "../benches/common/mod.rs"]
mod common;

use std::io::Cursor;

use common::{dispatch_frames, Sample};
use pipegate_plugin::{serve_io, HookCall, HookResult, ObjectPatch, ServeOptions};

/// The same hook as `examples/add_header.rs`.
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sample = match args.get(1).map(String::as_str) {
        Some("typical") => Sample::Typical,
        Some("realistic") => Sample::Realistic,
        _ => {
            eprintln!("usage: hook_loop typical|realistic N");
            std::process::exit(2);
        }
    };
    let Some(count) = args.get(2).and_then(|n| n.parse::<u64>().ok()) else {
        eprintln!("usage: hook_loop typical|realistic N");
        std::process::exit(2);
    };
    let input = dispatch_frames(sample, count);
    let mut output = Vec::with_capacity(64 * count as usize + 1024);
    let options = ServeOptions::new("hook-loop");
    if let Err(e) = serve_io(Cursor::new(input), &mut output, &options, &add_header) {
        eprintln!("hook_loop: {e}");
        std::process::exit(1);
    }
    let frame_bytes = common::dispatch_body(sample, 1).len();
    println!(
        "{count} frames of {sample:?} ({frame_bytes} bytes each), {} reply bytes",
        output.len()
    );
}
