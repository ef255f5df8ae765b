//! Log setup: the Tyk way of choosing format and level, on top of `tracing`.
//!
//! Format: `TYK_GW_LOGFORMAT` or `TYK_LOGFORMAT` in the environment, else tyk.conf `log_format`
//! (or the older `pipegate.log_format`), else text. JSON lines carry `timestamp`, `level`,
//! `target`, `message` and the event's fields at the top level, one object per line.
//!
//! Level: `RUST_LOG` (full `tracing` filter syntax, e.g. `info,access_log=off`) when set, else
//! `TYK_GW_LOGLEVEL` or `TYK_LOGLEVEL`, else tyk.conf `log_level`, else `info`.

use crate::config::{GatewayConfig, LogFormat};

/// The first non-empty value among the environment variables `names`.
fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .find(|v| !v.trim().is_empty())
}

/// The log format in force for `gw` and the environment.
pub fn format_for(gw: Option<&GatewayConfig>) -> LogFormat {
    match env_first(&["TYK_GW_LOGFORMAT", "TYK_LOGFORMAT"]).as_deref() {
        Some(v) if v.trim().eq_ignore_ascii_case("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => gw.map_or(LogFormat::Text, |g| g.log_format),
    }
}

/// The filter directive in force for `gw` and the environment (when `RUST_LOG` is unset).
pub fn level_for(gw: Option<&GatewayConfig>) -> String {
    env_first(&["TYK_GW_LOGLEVEL", "TYK_LOGLEVEL"])
        .map(|v| v.trim().to_ascii_lowercase())
        .or_else(|| gw.and_then(|g| g.log_level.clone()))
        .unwrap_or_else(|| "info".to_string())
}

/// Installs the global subscriber writing to stderr. A second call does nothing.
pub fn init(gw: Option<&GatewayConfig>) {
    // An empty RUST_LOG counts as unset (it would otherwise mean "errors only").
    let from_env = env_first(&["RUST_LOG"])
        .and_then(|_| tracing_subscriber::EnvFilter::try_from_default_env().ok());
    let filter = from_env.unwrap_or_else(|| {
        let level = level_for(gw);
        tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|e| {
            eprintln!("pipegate: log level {level:?} is not usable ({e}); logging at info");
            tracing_subscriber::EnvFilter::new("info")
        })
    });
    // A log line that cannot be written (stderr closed, e.g. piped into `head`) is dropped.
    // By default the formatter reports that with `eprintln!`, which panics on the same closed
    // stderr and kills the logging thread: a worker, or the signal thread, after which SIGTERM
    // could no longer stop the gateway.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format_for(gw) {
        LogFormat::Json => {
            let _ = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .try_init();
        }
        LogFormat::Text => {
            let _ = builder.try_init();
        }
    }
}
