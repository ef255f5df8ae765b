//! The scrape: sums every worker's cells and writes Prometheus text exposition format 0.0.4.
//!
//! Series appear once they have something to say (a request counted, a hook timed), except the
//! gauges, the plugin counters and build info, which are always present.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::cells::{
    ApiCells, Block, Hist, BUCKETS_US, CLASSES, HOOKS, HOOK_LABELS, TRANSPORTS, TRANSPORT_LABELS,
};
use super::{ProcessStats, Registry};

/// Sums of one histogram over workers.
#[derive(Default, Clone)]
struct HistSum {
    buckets: [u64; BUCKETS_US.len() + 1],
    sum_us: u64,
}

impl HistSum {
    fn add(&mut self, h: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(&h.buckets) {
            *a = a.wrapping_add(b.load(Ordering::Relaxed));
        }
        self.sum_us = self.sum_us.wrapping_add(h.sum_us.load(Ordering::Relaxed));
    }

    fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }
}

#[derive(Default, Clone)]
struct ApiSum {
    requests: [u64; CLASSES],
    request: HistSum,
    upstream: HistSum,
    hooks: [[HistSum; TRANSPORTS]; HOOKS],
}

impl ApiSum {
    fn add(&mut self, c: &ApiCells) {
        for (a, b) in self.requests.iter_mut().zip(&c.requests) {
            *a = a.wrapping_add(b.load(Ordering::Relaxed));
        }
        self.request.add(&c.request);
        self.upstream.add(&c.upstream);
        for (ha, hb) in self.hooks.iter_mut().zip(&c.hooks) {
            for (a, b) in ha.iter_mut().zip(hb) {
                a.add(b);
            }
        }
    }
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Seconds from microseconds, as Prometheus wants them.
fn secs(us: u64) -> String {
    let s = format!("{:.6}", us as f64 / 1e6);
    let t = s.trim_end_matches('0').trim_end_matches('.');
    if t.is_empty() {
        "0".to_string()
    } else {
        t.to_string()
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistSum) {
    let mut cum = 0u64;
    for (i, b) in h.buckets.iter().enumerate() {
        cum = cum.wrapping_add(*b);
        let le = BUCKETS_US.get(i).map_or("+Inf".to_string(), |&us| secs(us));
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", secs(h.sum_us));
    let _ = writeln!(out, "{name}_count{{{labels}}} {cum}");
}

/// Renders every metric of `registry` plus `stats`.
pub fn render(registry: &Registry, stats: &ProcessStats) -> String {
    let (labels, blocks): (Vec<(String, String)>, Vec<Arc<Block>>) = {
        let g = registry.inner.lock();
        (
            g.apis
                .iter()
                .map(|a| (escape(&a.api_id), escape(&a.name)))
                .collect(),
            g.workers.clone(),
        )
    };
    let mut apis = vec![ApiSum::default(); labels.len()];
    let mut timeouts = [[0u64; TRANSPORTS]; HOOKS];
    let mut failures = [[0u64; TRANSPORTS]; HOOKS];
    let (mut begun, mut ended, mut conns) = (0u64, 0u64, 0u64);
    for b in &blocks {
        for (sum, cells) in apis.iter_mut().zip(b.apis.iter()) {
            sum.add(cells);
        }
        for h in 0..HOOKS {
            for t in 0..TRANSPORTS {
                timeouts[h][t] += load(&b.hook_timeouts[h][t]);
                failures[h][t] += load(&b.hook_failures[h][t]);
            }
        }
        begun = begun.wrapping_add(load(&b.begun));
        ended = ended.wrapping_add(load(&b.ended));
        conns = conns.wrapping_add(load(&b.connections));
    }
    let api_labels = |slot: usize| {
        let (id, name) = &labels[slot];
        format!("api_id=\"{id}\",api_name=\"{name}\"")
    };

    let mut out = String::with_capacity(4096 + apis.len() * 2048);
    header(
        &mut out,
        "pipegate_build_info",
        "gauge",
        "pipegate build; the value is always 1.",
    );
    let _ = writeln!(
        out,
        "pipegate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    header(
        &mut out,
        "pipegate_requests_total",
        "counter",
        "Responses sent, by API and status class (api_id=\"\" for requests no API matched).",
    );
    for (slot, a) in apis.iter().enumerate() {
        for (i, n) in a.requests.iter().enumerate() {
            if *n > 0 {
                let _ = writeln!(
                    out,
                    "pipegate_requests_total{{{},code_class=\"{}xx\"}} {n}",
                    api_labels(slot),
                    i + 1
                );
            }
        }
    }

    header(
        &mut out,
        "pipegate_request_duration_seconds",
        "histogram",
        "Time from request head parsed to response queued, by API.",
    );
    for (slot, a) in apis.iter().enumerate() {
        if a.request.count() > 0 {
            histogram(
                &mut out,
                "pipegate_request_duration_seconds",
                &api_labels(slot),
                &a.request,
            );
        }
    }

    header(
        &mut out,
        "pipegate_upstream_duration_seconds",
        "histogram",
        "Time from request sent upstream to response head received, by API.",
    );
    for (slot, a) in apis.iter().enumerate() {
        if a.upstream.count() > 0 {
            histogram(
                &mut out,
                "pipegate_upstream_duration_seconds",
                &api_labels(slot),
                &a.upstream,
            );
        }
    }

    header(
        &mut out,
        "pipegate_hook_duration_seconds",
        "histogram",
        "Plugin hook call time, by API, hook and transport.",
    );
    for (slot, a) in apis.iter().enumerate() {
        for (h, per_t) in a.hooks.iter().enumerate() {
            for (t, hist) in per_t.iter().enumerate() {
                if hist.count() > 0 {
                    let l = format!(
                        "{},hook=\"{}\",transport=\"{}\"",
                        api_labels(slot),
                        HOOK_LABELS[h],
                        TRANSPORT_LABELS[t]
                    );
                    histogram(&mut out, "pipegate_hook_duration_seconds", &l, hist);
                }
            }
        }
    }

    for (name, help, table) in [
        (
            "pipegate_hook_timeouts_total",
            "Hook calls that got no answer within their timeout, by hook and transport.",
            &timeouts,
        ),
        (
            "pipegate_hook_failures_total",
            "Hook calls that failed otherwise (plugin error, protocol error, plugin down), by hook and transport.",
            &failures,
        ),
    ] {
        header(&mut out, name, "counter", help);
        for (h, per_t) in table.iter().enumerate() {
            for (t, n) in per_t.iter().enumerate() {
                if *n > 0 {
                    let _ = writeln!(
                        out,
                        "{name}{{hook=\"{}\",transport=\"{}\"}} {n}",
                        HOOK_LABELS[h], TRANSPORT_LABELS[t]
                    );
                }
            }
        }
    }

    header(
        &mut out,
        "pipegate_plugin_restarts_total",
        "counter",
        "Restarts of the pipe plugin child.",
    );
    let _ = writeln!(
        out,
        "pipegate_plugin_restarts_total {}",
        stats.plugin_restarts.unwrap_or(0)
    );
    header(
        &mut out,
        "pipegate_grpc_reconnects_total",
        "counter",
        "Connections opened to the gRPC plugin server after the first.",
    );
    let _ = writeln!(
        out,
        "pipegate_grpc_reconnects_total {}",
        stats.grpc_reconnects.unwrap_or(0)
    );

    header(
        &mut out,
        "pipegate_requests_in_flight",
        "gauge",
        "Requests begun and not yet ended.",
    );
    let _ = writeln!(
        out,
        "pipegate_requests_in_flight {}",
        begun.saturating_sub(ended)
    );
    header(
        &mut out,
        "pipegate_open_connections",
        "gauge",
        "Open client connections.",
    );
    let _ = writeln!(out, "pipegate_open_connections {conns}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_plain_decimals() {
        assert_eq!(secs(0), "0");
        assert_eq!(secs(500), "0.0005");
        assert_eq!(secs(1_000_000), "1");
        assert_eq!(secs(2_500_000), "2.5");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
