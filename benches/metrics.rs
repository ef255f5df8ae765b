//! What the metrics cost a request: the calls a worker makes for one proxied request with one
//! hook (request begun, hook ended, request ended with upstream time), and a scrape.
//!
//! Run with `cargo bench --bench metrics`. Figures go in docs/PERFORMANCE.md.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pipegate::coprocess::object::HookType;
use pipegate::metrics::{self, HookOutcome, ProcessStats};

fn bench_metrics(c: &mut Criterion) {
    let reg = metrics::registry();
    let slot = reg.api_slot("bench", "bench API");
    for i in 0..20 {
        reg.api_slot(&format!("other-{i}"), "other");
    }
    let mut w = reg.worker();
    w.sync();
    let mut g = c.benchmark_group("metrics");
    g.bench_function("request_without_hooks", |b| {
        b.iter(|| {
            w.request_begun();
            w.request_ended(
                black_box(slot),
                black_box(200),
                black_box(Duration::from_micros(830)),
                black_box(Some(Duration::from_micros(410))),
            );
        })
    });
    g.bench_function("request_with_one_hook", |b| {
        b.iter(|| {
            w.request_begun();
            w.hook_ended(
                black_box(slot),
                black_box(HookType::Pre),
                black_box(false),
                black_box(Duration::from_micros(95)),
                HookOutcome::Ok,
            );
            w.request_ended(
                black_box(slot),
                black_box(200),
                black_box(Duration::from_micros(830)),
                black_box(Some(Duration::from_micros(410))),
            );
        })
    });
    g.bench_function("scrape_21_apis_1_worker", |b| {
        b.iter(|| black_box(metrics::render(reg, &ProcessStats::default())))
    });
    g.finish();
}

criterion_group!(benches, bench_metrics);
criterion_main!(benches);
