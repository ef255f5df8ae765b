//! TLS: termination of client connections and https upstreams, both with rustls (ring provider).
//!
//! rustls runs sans-I/O here: the worker's mio loop owns the sockets and moves bytes between them
//! and the rustls state machines ([`io`]), so a TLS connection is one more state on the same
//! event loop, never a thread or a task. Plain connections carry no TLS state at all.
//!
//! - [`server`]: the `http_server_options` certificates, SNI selection and `min_version`,
//!   built into a `rustls::ServerConfig` when tyk.conf is loaded (and again on SIGHUP).
//! - [`client`]: per-API client configurations for `https://` targets: system roots (honouring
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR`), `ssl_insecure_skip_verify`, `ssl_min_version`.
//! - [`io`]: reading and writing through a rustls connection on a non-blocking socket.

pub mod client;
pub mod io;
pub mod server;

use rustls::SupportedProtocolVersion;

/// The lowest TLS version allowed, from Tyk's Go `uint16` constants (771 = TLS 1.2, 772 = TLS
/// 1.3; 0 = the default, TLS 1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3 (Tyk's 771, and the default).
    #[default]
    Tls12,
    /// TLS 1.3 only (Tyk's 772).
    Tls13,
}

impl MinVersion {
    /// Reads Tyk's numeric value. TLS 1.0 and 1.1 (769, 770) are refused rather than silently
    /// raised: rustls does not implement them, and a config asking for them expects old clients
    /// to get in.
    pub fn from_tyk(v: u64) -> Result<MinVersion, String> {
        match v {
            0 | 771 => Ok(MinVersion::Tls12),
            772 => Ok(MinVersion::Tls13),
            769 | 770 => Err(format!(
                "{v} (TLS 1.{}) is not supported: pipegate's TLS (rustls) implements TLS 1.2 and 1.3 only; use 771 (TLS 1.2) or 772 (TLS 1.3)",
                v - 769
            )),
            _ => Err(format!(
                "{v} is not a TLS version; use 771 (TLS 1.2) or 772 (TLS 1.3), or leave it out for TLS 1.2"
            )),
        }
    }

    /// Reads Tyk's value for connections to upstreams. There a minimum of TLS 1.0 or 1.1 still
    /// allows TLS 1.2, which is what Go would negotiate with any current server, so 769/770 mean
    /// TLS 1.2 (the caller warns) instead of failing a configuration that works in Tyk.
    pub fn from_tyk_upstream(v: u64) -> Result<(MinVersion, bool), String> {
        match v {
            769 | 770 => Ok((MinVersion::Tls12, true)),
            _ => MinVersion::from_tyk(v).map(|m| (m, false)),
        }
    }

    /// The protocol versions rustls may negotiate.
    pub fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: &[&SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match self {
            MinVersion::Tls12 => BOTH,
            MinVersion::Tls13 => ONLY13,
        }
    }
}

/// The crypto provider used everywhere (ring; no aws-lc in the build).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
