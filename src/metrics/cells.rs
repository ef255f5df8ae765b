//! One worker's counters: plain cells the worker alone writes and the scrape reads.
//!
//! Every cell is an `AtomicU64` written with a relaxed load + store (never a read-modify-write):
//! the owning worker is the only writer, so no increment can be lost, and the store compiles to a
//! plain `mov` on x86 and ARM (no `lock` prefix, no cache-line ping-pong with other workers). A
//! scrape may see a histogram's buckets a few nanoseconds apart from its sum; Prometheus tolerates
//! that, as every client library with lock-free histograms does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (0.5 ms .. 10 s; `+Inf` above).
pub(crate) const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Hooks, in label order (`HOOK_LABELS`).
pub(crate) const HOOKS: usize = 5;
/// Hook label values, indexed like the cells.
pub(crate) const HOOK_LABELS: [&str; HOOKS] =
    ["pre", "auth_check", "post_key_auth", "post", "response"];
/// Transports a hook can run over.
pub(crate) const TRANSPORTS: usize = 2;
/// Transport label values, indexed like the cells.
pub(crate) const TRANSPORT_LABELS: [&str; TRANSPORTS] = ["pipe", "grpc"];
/// Status classes counted: 1xx .. 5xx.
pub(crate) const CLASSES: usize = 5;

/// Adds `n` to a cell only this thread writes.
#[inline]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A latency histogram: per-bucket (not cumulative) counts and the sum in microseconds. The count
/// is the sum of the buckets, so an observation is two stores.
#[derive(Default)]
pub(crate) struct Hist {
    pub buckets: [AtomicU64; BUCKETS_US.len() + 1],
    pub sum_us: AtomicU64,
}

impl Hist {
    #[inline]
    fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        bump(&self.buckets[i], 1);
        bump(&self.sum_us, us);
    }

    fn copy_from(&self, other: &Hist) {
        for (a, b) in self.buckets.iter().zip(&other.buckets) {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_us
            .store(other.sum_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// One API's cells in one worker.
#[derive(Default)]
pub(crate) struct ApiCells {
    /// Responses by status class (index = class - 1).
    pub requests: [AtomicU64; CLASSES],
    /// Whole request time, first byte of the head parsed to last byte of the response queued.
    pub request: Hist,
    /// Upstream time: request sent to response head received.
    pub upstream: Hist,
    /// Hook call time by hook and transport.
    pub hooks: [[Hist; TRANSPORTS]; HOOKS],
}

impl ApiCells {
    fn copy_from(&self, other: &ApiCells) {
        for (a, b) in self.requests.iter().zip(&other.requests) {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.request.copy_from(&other.request);
        self.upstream.copy_from(&other.upstream);
        for (ha, hb) in self.hooks.iter().zip(&other.hooks) {
            for (a, b) in ha.iter().zip(hb) {
                a.copy_from(b);
            }
        }
    }
}

/// Everything one worker counts. Replaced by a larger copy when a reload adds APIs (see
/// [`crate::metrics::WorkerMetrics::sync`]).
#[derive(Default)]
pub(crate) struct Block {
    /// Indexed by API slot (0 = requests that matched no API).
    pub apis: Box<[ApiCells]>,
    pub hook_timeouts: [[AtomicU64; TRANSPORTS]; HOOKS],
    pub hook_failures: [[AtomicU64; TRANSPORTS]; HOOKS],
    /// Requests begun and ended; in flight = begun - ended, summed over workers.
    pub begun: AtomicU64,
    pub ended: AtomicU64,
    /// Open client connections of this worker (a gauge the worker sets).
    pub connections: AtomicU64,
}

impl Block {
    /// A block with `slots` API slots holding the values of `old` (if any).
    pub fn grown_from(old: Option<&Block>, slots: usize) -> Block {
        let apis: Box<[ApiCells]> = (0..slots).map(|_| ApiCells::default()).collect();
        let b = Block {
            apis,
            ..Default::default()
        };
        if let Some(old) = old {
            for (a, o) in b.apis.iter().zip(old.apis.iter()) {
                a.copy_from(o);
            }
            let pairs = b
                .hook_timeouts
                .iter()
                .zip(&old.hook_timeouts)
                .chain(b.hook_failures.iter().zip(&old.hook_failures));
            for (ra, rb) in pairs {
                for (x, y) in ra.iter().zip(rb) {
                    x.store(y.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
            for (x, y) in [
                (&b.begun, &old.begun),
                (&b.ended, &old.ended),
                (&b.connections, &old.connections),
            ] {
                x.store(y.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        b
    }

    #[inline]
    pub fn request_begun(&self) {
        bump(&self.begun, 1);
    }

    #[inline]
    pub fn request_ended(
        &self,
        slot: usize,
        status: u16,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        bump(&self.ended, 1);
        let Some(api) = self.apis.get(slot) else {
            return;
        };
        // A request that ended without a response (client gone, connection aborted) has no
        // status: it leaves the in-flight gauge but is not counted as answered.
        if (100..600).contains(&status) {
            bump(&api.requests[usize::from(status / 100) - 1], 1);
            api.request.observe(total);
        }
        if let Some(u) = upstream {
            api.upstream.observe(u);
        }
    }

    #[inline]
    pub fn hook_ended(
        &self,
        slot: usize,
        hook: usize,
        transport: usize,
        took: Duration,
        outcome: super::HookOutcome,
    ) {
        if hook >= HOOKS || transport >= TRANSPORTS {
            return;
        }
        if let Some(api) = self.apis.get(slot) {
            api.hooks[hook][transport].observe(took);
        }
        match outcome {
            super::HookOutcome::Ok => {}
            super::HookOutcome::Timeout => bump(&self.hook_timeouts[hook][transport], 1),
            super::HookOutcome::Failed => bump(&self.hook_failures[hook][transport], 1),
        }
    }

    #[inline]
    pub fn set_connections(&self, n: usize) {
        self.connections.store(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_inclusive_upper_bounds() {
        let h = Hist::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[1].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[BUCKETS_US.len()].load(Ordering::Relaxed), 1);
        assert_eq!(h.sum_us.load(Ordering::Relaxed), 500 + 501 + 60_000_000);
    }

    #[test]
    fn growing_keeps_values() {
        let a = Block::grown_from(None, 2);
        a.request_ended(1, 204, Duration::from_millis(3), None);
        a.hook_ended(
            1,
            0,
            1,
            Duration::from_millis(1),
            super::super::HookOutcome::Timeout,
        );
        let b = Block::grown_from(Some(&a), 5);
        assert_eq!(b.apis.len(), 5);
        assert_eq!(b.apis[1].requests[1].load(Ordering::Relaxed), 1);
        assert_eq!(b.hook_timeouts[0][1].load(Ordering::Relaxed), 1);
        assert_eq!(b.ended.load(Ordering::Relaxed), 1);
        // Unknown slots and statuses are ignored rather than panicking.
        b.request_ended(99, 200, Duration::ZERO, None);
        b.request_ended(1, 0, Duration::ZERO, None);
        assert_eq!(b.ended.load(Ordering::Relaxed), 3);
    }
}
