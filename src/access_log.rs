//! The access log (Tyk's `access_logs`): one `info` event per request, target `access_log`.
//!
//! It goes through `tracing` like every other log line, so the same text or JSON formatter and the
//! same filter apply (`RUST_LOG=access_log=off` silences it without touching tyk.conf). When
//! `access_logs.enabled` is false the worker does not even build an [`Entry`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{AccessLogOptions, ApiDefinition};

/// What one access log line says about a finished request.
pub struct Entry<'a> {
    /// The API that served it; `None` for requests no API matched.
    pub api: Option<&'a ApiDefinition>,
    pub method: &'a str,
    pub path: &'a str,
    /// 0 when the connection ended before a response.
    pub status: u16,
    pub total: Duration,
    pub upstream: Option<Duration>,
    pub hooks: Duration,
    /// Request head and body bytes received.
    pub bytes_in: u64,
    /// Response bytes written to the client.
    pub bytes_out: u64,
    pub peer: SocketAddr,
    pub host: Option<&'a str>,
    pub protocol: &'static str,
    pub user_agent: Option<&'a str>,
}

/// `v` when field `bit` is selected.
fn pick(fields: u32, bit: u32, v: &str) -> Option<&str> {
    (fields & (1 << bit) != 0).then_some(v)
}

fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Writes one access log line with the fields `opts.fields` selects.
pub fn emit(opts: &AccessLogOptions, e: &Entry<'_>) {
    // Bit order is `ACCESS_LOG_FIELDS`.
    let f = opts.fields;
    let on = |bit: u32| f & (1 << bit) != 0;
    let api_id = e.api.map_or("", |a| a.api_id.as_str());
    let api_name = e.api.map_or("", |a| a.name.as_str());
    let upstream_addr = e.api.map_or("", |a| a.target.url.as_str());
    let ip = e.peer.ip();
    tracing::info!(
        target: "access_log",
        prefix = "access-log",
        api_id = pick(f, 0, api_id),
        api_name = pick(f, 1, api_name),
        method = pick(f, 2, e.method),
        path = pick(f, 3, e.path),
        status = on(4).then_some(e.status),
        latency_total = on(5).then_some(ms(e.total)),
        upstream_latency = if on(6) { e.upstream.map(ms) } else { None },
        hook_latency = on(7).then_some(ms(e.hooks)),
        bytes_in = on(8).then_some(e.bytes_in),
        bytes_out = on(9).then_some(e.bytes_out),
        client_ip = on(10).then(|| tracing::field::display(ip)),
        remote_addr = on(11).then(|| tracing::field::display(e.peer)),
        host = if on(12) { e.host } else { None },
        protocol = pick(f, 13, e.protocol),
        user_agent = if on(14) { e.user_agent } else { None },
        upstream_addr = if on(15) && !upstream_addr.is_empty() { Some(upstream_addr) } else { None },
        "access"
    );
}

#[cfg(test)]
mod tests {
    use crate::config::ACCESS_LOG_FIELDS;

    /// `emit` addresses fields by bit number; the names in tyk.conf's template map to bits by
    /// their position in `ACCESS_LOG_FIELDS`. Both orders must stay the same.
    #[test]
    fn field_bits_match_the_template_names() {
        let in_emit = [
            "api_id",
            "api_name",
            "method",
            "path",
            "status",
            "latency_total",
            "upstream_latency",
            "hook_latency",
            "bytes_in",
            "bytes_out",
            "client_ip",
            "remote_addr",
            "host",
            "protocol",
            "user_agent",
            "upstream_addr",
        ];
        assert_eq!(ACCESS_LOG_FIELDS, in_emit);
        let src = include_str!("access_log.rs");
        for (bit, name) in in_emit.iter().enumerate() {
            let used = src.contains(&format!("{name} = pick(f, {bit},"))
                || src.contains(&format!("{name} = on({bit})"))
                || src.contains(&format!("{name} = if on({bit})"));
            assert!(used, "{name} is not emitted under bit {bit}");
        }
    }
}
