//! One whole proxied request through the gateway's chain: client write → gateway (parse, route,
//! hooks) → upstream → back to the client, on one keep-alive connection.
//!
//! The gateway runs in this process (one worker) in front of an upstream thread, set up exactly as
//! `tests/alloc_budget.rs` does (the same file, `tests/common/in_process.rs`). Run with
//! `cargo bench --bench request`. `request_no_plugin` is the gateway's own cost plus two loopback
//! hops; `request_pipe_pre_hook` adds one pipe `pre` hook (the Rust-SDK demo plugin, a child
//! process, adding one header), so the difference is what a hook costs a request on an idle
//! gateway. The client, the gateway, the upstream and the plugin share the machine's cores.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

#[path = "../tests/common/in_process.rs"]
mod in_process;

use in_process::InProcessGateway;

fn bench_request(c: &mut Criterion) {
    for (name, with_hook) in [
        ("request_no_plugin", false),
        ("request_pipe_pre_hook", true),
    ] {
        let mut gw = InProcessGateway::start(name, with_hook);
        // Warm up outside the measurement: the upstream connection, buffers and the plugin child.
        gw.drive(500);
        c.bench_function(name, |b| b.iter(|| gw.round_trip()));
        gw.stop();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_request
}
criterion_main!(benches);
