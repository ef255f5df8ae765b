//! Heap allocations per proxied request, in steady state, counted by a counting global allocator.
//!
//! Run with `cargo test --release --test alloc_budget -- --nocapture` (prints the figures). The
//! gateway runs in this process (one worker, set up by `tests/common/in_process.rs`, which
//! `benches/request.rs` shares) in front of an upstream thread that allocates nothing per request;
//! the client (this thread) reuses one buffer. So every allocation counted while the measured requests run belongs to the gateway: its
//! worker, and with a hook its pipe reader/writer threads (the plugin child is another process).
//!
//! Scenarios: a keyless API without a plugin, and the same API with one pipe `pre` hook (the
//! Rust-SDK demo plugin adding one header). Budget (issue #7): 0 without a plugin, at most 4 with
//! one hook. A count, not a timing: the same on a loaded machine, so it is asserted.

use std::alloc::{GlobalAlloc, Layout, System};
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

#[path = "common/in_process.rs"]
mod in_process;

use in_process::InProcessGateway;

/// Allocations and bytes per request for one scenario.
fn measure(name: &str, with_hook: bool) -> (f64, f64) {
    let mut gw = InProcessGateway::start(name, with_hook);
    // Warm up: pools, buffers, the upstream connection and the plugin reach their steady size.
    gw.drive(3000);
    std::thread::sleep(Duration::from_millis(200));
    let n: u64 = std::env::var("ALLOC_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    gw.drive(n);
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let per = (a1 - a0) as f64 / n as f64;
    let bytes = (b1 - b0) as f64 / n as f64;
    println!("{name:<24} {per:>7.2} allocations/request {bytes:>9.0} bytes/request");
    gw.stop();
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
