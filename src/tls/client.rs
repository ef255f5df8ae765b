//! TLS to `https://` upstreams: one `rustls::ClientConfig` per verification policy.
//!
//! Verification is on by default, against the system trust roots as Go (and so Tyk) finds them:
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else the platform store. Tyk's
//! `proxy_ssl_insecure_skip_verify` (tyk.conf) or `proxy.transport.ssl_insecure_skip_verify`
//! (API definition) turns the chain and name checks off, as Go's `InsecureSkipVerify` does; the
//! handshake signature is still checked, so the session is at least bound to the key presented.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::MinVersion;

/// How to reach one API's https upstream, built when the definition is loaded.
#[derive(Debug)]
pub struct UpstreamTls {
    /// Shared by every connection to this target (and its session resumption cache).
    pub config: Arc<ClientConfig>,
    /// SNI and the name the certificate must carry: the target URL's host.
    pub server_name: ServerName<'static>,
    /// Key of the worker's keep-alive pool: the target URL plus the policy, so a connection
    /// opened without verification is never reused for an API that requires it.
    pub pool_key: String,
}

/// Client configurations built during one configuration load, shared by APIs with the same
/// policy; the trust roots are read at most once per load (so a SIGHUP picks up new CA files).
#[derive(Default)]
pub struct ClientConfigs {
    roots: Option<Arc<RootCertStore>>,
    built: Vec<((bool, MinVersion), Arc<ClientConfig>)>,
}

impl ClientConfigs {
    /// The upstream TLS settings for `host`; the error says what to change.
    pub fn upstream(
        &mut self,
        url: &str,
        host: &str,
        insecure: bool,
        min: MinVersion,
    ) -> Result<UpstreamTls, String> {
        let server_name = ServerName::try_from(host.to_string()).map_err(|e| {
            format!("{host:?} cannot be used as a TLS server name ({e}); use a DNS name or an IP address")
        })?;
        let config = self.config(insecure, min)?;
        let mut pool_key = url.to_string();
        if insecure {
            pool_key.push_str(" insecure");
        }
        if min == MinVersion::Tls13 {
            pool_key.push_str(" tls13");
        }
        Ok(UpstreamTls {
            config,
            server_name,
            pool_key,
        })
    }

    fn config(&mut self, insecure: bool, min: MinVersion) -> Result<Arc<ClientConfig>, String> {
        if let Some((_, c)) = self.built.iter().find(|(k, _)| *k == (insecure, min)) {
            return Ok(Arc::clone(c));
        }
        let provider = super::provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(min.versions())
            .map_err(|e| format!("cannot use this TLS version: {e}"))?;
        let mut config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
                .with_no_client_auth()
        } else {
            builder
                .with_root_certificates(self.roots())
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        self.built.push(((insecure, min), Arc::clone(&config)));
        Ok(config)
    }

    fn roots(&mut self) -> Arc<RootCertStore> {
        if let Some(r) = &self.roots {
            return Arc::clone(r);
        }
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("while reading trusted root certificates: {e}");
        }
        let mut store = RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        if ignored > 0 {
            tracing::debug!(added, ignored, "unparsable root certificates skipped");
        }
        if store.is_empty() {
            // As Go: not a load error, but every verified https upstream will fail (502, logged
            // as UnknownIssuer) until roots are installed.
            tracing::warn!("no trusted root certificates found (system store, or SSL_CERT_FILE / SSL_CERT_DIR when set): https upstreams cannot be verified; install the CA certificates, point SSL_CERT_FILE at a PEM bundle, or set proxy.transport.ssl_insecure_skip_verify");
        }
        let store = Arc::new(store);
        self.roots = Some(Arc::clone(&store));
        store
    }
}

/// Go's `InsecureSkipVerify`: any certificate chain and name, signatures still checked.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
