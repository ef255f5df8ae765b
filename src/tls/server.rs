//! TLS termination settings: `http_server_options.certificates`, SNI and `min_version`.
//!
//! The certificate and key files are read and checked when tyk.conf is loaded, so `pipegate
//! check` and a SIGHUP reload report a bad file before any client sees it; the result is one
//! `rustls::ServerConfig` in the configuration snapshot. New connections take the snapshot's
//! config, so after a reload they present the new certificates while open ones keep theirs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::MinVersion;

/// One entry of `http_server_options.certificates`, paths already resolved.
#[derive(Debug, Clone)]
pub struct CertificateEntry {
    /// The host name this certificate serves: exact (`api.example.com`) or one-label wildcard
    /// (`*.example.com`). Empty: only usable as the default (first) certificate.
    pub domain_name: String,
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: PathBuf,
}

/// A problem with the TLS settings: the field (relative to tyk.conf's root) and why.
pub type FieldError = (String, String);

/// Builds the server configuration: every certificate loaded and matched with its key, SNI
/// selection, the allowed versions and ALPN `http/1.1`. Returns every problem found, each naming
/// its field and file.
pub fn build(
    certificates: &[CertificateEntry],
    min: MinVersion,
) -> Result<Arc<ServerConfig>, Vec<FieldError>> {
    let provider = super::provider();
    let mut errors = Vec::new();
    let mut resolver = SniResolver::default();
    for (i, entry) in certificates.iter().enumerate() {
        let field = format!("http_server_options.certificates[{i}]");
        match load_pair(entry, &provider) {
            Ok(key) => resolver.add(&entry.domain_name, Arc::new(key)),
            Err((sub, reason)) => errors.push((format!("{field}.{sub}"), reason)),
        }
    }
    if certificates.is_empty() {
        errors.push((
            "http_server_options.certificates".to_string(),
            "use_ssl is on but no certificates are listed; add {\"domain_name\": ..., \"cert_file\": ..., \"key_file\": ...} entries (PEM files)".to_string(),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(min.versions())
        .map_err(|e| {
            vec![(
                "http_server_options.min_version".to_string(),
                format!("cannot be used with the built-in cipher suites: {e}"),
            )]
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads one certificate chain and its key; the error names the sub-field and the file.
fn load_pair(
    entry: &CertificateEntry,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, (&'static str, String)> {
    let chain = read_chain(&entry.cert_file).map_err(|r| ("cert_file", r))?;
    let key = read_key(&entry.key_file).map_err(|r| ("key_file", r))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => "does not match the certificate".to_string(),
            other => format!("cannot be used ({other})"),
        };
        (
            "key_file",
            format!(
                "the private key in {} {why}; it must be the key of the certificate in {}",
                entry.key_file.display(),
                entry.cert_file.display()
            ),
        )
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The certificates of a PEM file, in order.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a valid PEM certificate file: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no certificate (no \"-----BEGIN CERTIFICATE-----\" block); give the PEM certificate file",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{} holds no usable private key ({e}); give the PEM key file (PKCS#8, RSA or EC)",
            path.display()
        )
    })
}

/// Picks the certificate for a client's SNI name: an exact `domain_name`, then a wildcard one
/// (`*.example.com` covers `a.example.com`, not `a.b.example.com`), then the first certificate
/// (also used when the client sends no SNI, e.g. when it connects by IP address).
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn add(&mut self, domain_name: &str, key: Arc<CertifiedKey>) {
        if self.default.is_none() {
            self.default = Some(Arc::clone(&key));
        }
        let name = domain_name
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if name.is_empty() {
            return;
        }
        // The first entry for a name wins, as in Tyk's certificate map.
        match name.strip_prefix("*.") {
            Some(parent) => self.wildcard.entry(parent.to_string()).or_insert(key),
            None => self.exact.entry(name).or_insert(key),
        };
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            // rustls hands over SNI names lowercased and without a trailing dot.
            if let Some(k) = self.exact.get(name) {
                return Some(Arc::clone(k));
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(Arc::clone(k));
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Arc<CertifiedKey> {
        // The resolver only hands keys around; a fake signing key is not needed for picking, so
        // tell them apart by their (bogus) certificate bytes.
        #[derive(Debug)]
        struct NoSign;
        impl rustls::sign::SigningKey for NoSign {
            fn choose_scheme(
                &self,
                _: &[rustls::SignatureScheme],
            ) -> Option<Box<dyn rustls::sign::Signer>> {
                None
            }
            fn algorithm(&self) -> rustls::SignatureAlgorithm {
                rustls::SignatureAlgorithm::ECDSA
            }
        }
        Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(vec![n])],
            Arc::new(NoSign),
        ))
    }

    fn picked(r: &SniResolver, sni: Option<&str>) -> u8 {
        r.pick(sni).map_or(0, |k| k.cert[0].as_ref()[0])
    }

    #[test]
    fn sni_prefers_exact_then_wildcard_then_first() {
        let mut r = SniResolver::default();
        r.add("Default.Example.com", key(1));
        r.add("*.example.com", key(2));
        r.add("api.example.com", key(3));
        r.add("api.example.com", key(4));
        assert_eq!(picked(&r, Some("api.example.com")), 3);
        assert_eq!(picked(&r, Some("default.example.com")), 1);
        assert_eq!(picked(&r, Some("other.example.com")), 2);
        assert_eq!(picked(&r, Some("a.b.example.com")), 1);
        assert_eq!(picked(&r, Some("unknown.org")), 1);
        assert_eq!(picked(&r, None), 1);
    }

    #[test]
    fn min_version_values() {
        assert_eq!(MinVersion::from_tyk(0), Ok(MinVersion::Tls12));
        assert_eq!(MinVersion::from_tyk(771), Ok(MinVersion::Tls12));
        assert_eq!(MinVersion::from_tyk(772), Ok(MinVersion::Tls13));
        let e = MinVersion::from_tyk(769).unwrap_err();
        assert!(e.contains("TLS 1.0") && e.contains("771"), "{e}");
        assert!(MinVersion::from_tyk(770).unwrap_err().contains("TLS 1.1"));
        assert!(MinVersion::from_tyk(12).is_err());
        // Towards upstreams TLS 1.0/1.1 minimums still allow TLS 1.2: accepted, flagged.
        assert_eq!(
            MinVersion::from_tyk_upstream(769),
            Ok((MinVersion::Tls12, true))
        );
        assert_eq!(
            MinVersion::from_tyk_upstream(772),
            Ok((MinVersion::Tls13, false))
        );
        assert!(MinVersion::from_tyk_upstream(12).is_err());
    }

    #[test]
    fn missing_files_name_field_and_path() {
        let entries = [CertificateEntry {
            domain_name: "a".into(),
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
        }];
        let errs = build(&entries, MinVersion::Tls12).unwrap_err();
        assert_eq!(errs[0].0, "http_server_options.certificates[0].cert_file");
        assert!(errs[0].1.contains("/nonexistent/cert.pem"), "{}", errs[0].1);
        let errs = build(&[], MinVersion::Tls12).unwrap_err();
        assert_eq!(errs[0].0, "http_server_options.certificates");
    }
}
