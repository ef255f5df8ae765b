//! Downloading a bundle from `bundle_base_url`, as Tyk's `HTTPBundleGetter` does: the bundle name
//! is path-joined onto the base URL, a GET with a 5 s timeout must answer 200, and failures are
//! retried with exponential backoff (multiplier 2, at most 5 s between tries, 4 retries).
//!
//! Unlike Tyk, the body is capped ([`FetchOptions::max_size`]) however the server declares it,
//! and `file://` reads are not retried (a missing local file does not come back by waiting).
//! https uses rustls with the webpki root certificates; `bundle_insecure_skip_verify` turns
//! certificate verification off (Tyk's flag). Unlike Tyk, TLS 1.3 is allowed.

use std::fs::File;
use std::io::Read;
use std::thread;
use std::time::Duration;

use super::BundleError;

/// How a bundle is downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Timeout of one whole attempt, connect to last byte (Tyk: 5 s).
    pub timeout: Duration,
    /// Retries after the first attempt (Tyk: 4).
    pub max_retries: u32,
    /// Wait before the first retry; doubled for each further retry (Tyk's backoff starts at
    /// 500 ms). Tests set it to a few milliseconds.
    pub base_delay: Duration,
    /// Longest wait between two attempts (Tyk: 5 s).
    pub max_delay: Duration,
    /// Largest bundle accepted, in bytes (default 100 MiB).
    pub max_size: u64,
    /// Do not verify the server's certificate for https (Tyk's `bundle_insecure_skip_verify`).
    pub insecure_skip_verify: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            timeout: Duration::from_secs(5),
            max_retries: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            max_size: 100 * 1024 * 1024,
            insecure_skip_verify: false,
        }
    }
}

/// Where a bundle is fetched from, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BundleSource {
    /// An http(s) URL, ready to request.
    Http(String),
    /// A local file path (from a `file://` URL).
    File(String),
}

/// Builds the bundle URL as Tyk does (`u.Path = path.Join(u.Path, name)`): the base URL's path
/// is decoded, joined with the name, cleaned (`.`/`..`/`//` resolved, trailing `/` dropped) and
/// escaped again; the base URL's query is kept.
pub fn bundle_url(base_url: &str, name: &str) -> Result<String, BundleError> {
    Ok(match bundle_source(base_url, name)? {
        BundleSource::Http(url) => url,
        BundleSource::File(path) => format!("file://{}", escape_path(&path)),
    })
}

pub(crate) fn bundle_source(base_url: &str, name: &str) -> Result<BundleSource, BundleError> {
    let invalid = |reason: &str| BundleError::InvalidUrl {
        url: base_url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = base_url
        .split_once("://")
        .ok_or_else(|| invalid("expected scheme://host/path, e.g. http://bundles.local/"))?;
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.split('#').next().unwrap_or("");
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, raw_path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i..]),
        None => (before_query, ""),
    };
    let base_path = percent_decode(raw_path).ok_or_else(|| invalid("bad %-escape in the path"))?;
    let mut path = go_path_join(&base_path, name);
    match scheme.as_str() {
        "http" | "https" => {
            if authority.is_empty() {
                return Err(invalid("the URL has no host"));
            }
            if !path.starts_with('/') {
                path.insert(0, '/');
            }
            let mut url = format!("{scheme}://{authority}{}", escape_path(&path));
            if let Some(q) = query {
                url.push('?');
                url.push_str(q);
            }
            Ok(BundleSource::Http(url))
        }
        "file" => {
            if !authority.is_empty() && !authority.eq_ignore_ascii_case("localhost") {
                return Err(invalid(
                    "file:// URLs must not name a host (use file:///path)",
                ));
            }
            if !path.starts_with('/') {
                path.insert(0, '/');
            }
            Ok(BundleSource::File(path))
        }
        _ => Err(BundleError::UnknownScheme {
            url: base_url.to_string(),
        }),
    }
}

/// Go's `path.Join(a, b)`: join the non-empty elements with `/`, then `path.Clean`.
fn go_path_join(a: &str, b: &str) -> String {
    let joined = match (a.is_empty(), b.is_empty()) {
        (true, true) => return String::new(),
        (true, false) => b.to_string(),
        (false, true) => a.to_string(),
        (false, false) => format!("{a}/{b}"),
    };
    go_path_clean(&joined)
}

/// Go's `path.Clean`.
fn go_path_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = char::from(hex[0]).to_digit(16)?;
            let lo = char::from(hex[1]).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Go's `url.PathEscape`-for-`URL.Path` rules (`shouldEscape(c, encodePath)`).
fn escape_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for &b in p.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_'
                    | b'.'
                    | b'~'
                    | b'$'
                    | b'&'
                    | b'+'
                    | b','
                    | b'/'
                    | b':'
                    | b';'
                    | b'='
                    | b'@'
            );
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Downloads bundle `name` from `base_url`, retrying as Tyk does. Returns the zip bytes.
pub fn fetch(base_url: &str, name: &str, opts: &FetchOptions) -> Result<Vec<u8>, BundleError> {
    match bundle_source(base_url, name)? {
        BundleSource::File(path) => read_file(&path, opts.max_size),
        BundleSource::Http(url) => {
            let mut attempts = 0u32;
            let mut delay = opts.base_delay;
            loop {
                attempts += 1;
                match http_get(&url, opts) {
                    Ok(bytes) => return Ok(bytes),
                    Err(e @ BundleError::LimitExceeded { .. }) => return Err(e),
                    Err(e) if attempts > opts.max_retries => {
                        return Err(BundleError::Fetch {
                            url,
                            attempts,
                            last: Box::new(e),
                        })
                    }
                    Err(e) => {
                        tracing::warn!(url = %url, attempt = attempts, error = %e,
                            "bundle download failed, retrying in {delay:?}");
                        thread::sleep(delay);
                        delay = (delay * 2).min(opts.max_delay);
                    }
                }
            }
        }
    }
}

fn read_file(path: &str, max_size: u64) -> Result<Vec<u8>, BundleError> {
    let file = File::open(path).map_err(|e| BundleError::io("cannot open bundle", path, e))?;
    let mut out = Vec::new();
    file.take(max_size.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| BundleError::io("cannot read bundle", path, e))?;
    if out.len() as u64 > max_size {
        return Err(too_large(path, max_size));
    }
    Ok(out)
}

fn too_large(url: &str, max_size: u64) -> BundleError {
    BundleError::LimitExceeded {
        what: format!("{url} is larger than the download limit of {max_size} bytes"),
    }
}

fn http_get(url: &str, opts: &FetchOptions) -> Result<Vec<u8>, BundleError> {
    let transport = |reason: String| BundleError::Transport {
        url: url.to_string(),
        reason,
    };
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(opts.insecure_skip_verify)
        .build();
    let mut config = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(opts.timeout))
        .http_status_as_error(false)
        .user_agent("pipegate-bundle-fetcher");
    // Like Go's ProxyFromEnvironment, never send loopback requests through an env proxy.
    if is_loopback_url(url) {
        config = config.proxy(None);
    }
    let agent: ureq::Agent = config.build().into();
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| transport(e.to_string()))?;
    let code = resp.status().as_u16();
    if code != 200 {
        return Err(BundleError::HttpStatus {
            url: url.to_string(),
            code,
        });
    }
    let declared = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > opts.max_size) {
        return Err(too_large(url, opts.max_size));
    }
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(0));
    let mut out = Vec::with_capacity(capacity);
    resp.into_body()
        .into_reader()
        .take(opts.max_size.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| transport(e.to_string()))?;
    if out.len() as u64 > opts.max_size {
        return Err(too_large(url, opts.max_size));
    }
    Ok(out)
}

/// Whether an `http://` URL's host is localhost or a loopback address.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_join_follows_go_path_join() {
        let j = |b: &str, n: &str| bundle_url(b, n).unwrap_or_else(|e| e.to_string());
        assert_eq!(j("http://h/bundles/", "b.zip"), "http://h/bundles/b.zip");
        assert_eq!(j("http://h/bundles", "b.zip"), "http://h/bundles/b.zip");
        assert_eq!(j("http://h", "b.zip"), "http://h/b.zip");
        assert_eq!(j("http://h:8000/a/", "../b.zip"), "http://h:8000/b.zip");
        assert_eq!(j("http://h/a/", "../../x"), "http://h/x");
        assert_eq!(j("http://h/a//b/", "./c d.zip"), "http://h/a/b/c%20d.zip");
        assert_eq!(j("http://h/a%20b/", "c.zip"), "http://h/a%20b/c.zip");
        assert_eq!(j("http://h/a?token=1", "c.zip"), "http://h/a/c.zip?token=1");
        assert_eq!(j("HTTP://h/", "c?.zip"), "http://h/c%3F.zip");
        assert_eq!(j("file:///srv/b/", "x.zip"), "file:///srv/b/x.zip");
        assert!(j("ftp://h/", "x").starts_with("Unknown URL scheme"));
        assert_eq!(j("https://h/b/", "x.zip"), "https://h/b/x.zip");
        assert!(j("h/bundles", "x").contains("expected scheme://"));
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback_url("http://127.0.0.1:8080/x"));
        assert!(is_loopback_url("http://u:p@localhost/x"));
        assert!(is_loopback_url("http://[::1]:80/x"));
        assert!(!is_loopback_url("http://bundles.example/x"));
        assert!(!is_loopback_url("http://10.0.0.1/x"));
    }

    #[test]
    fn clean_matches_go() {
        assert_eq!(go_path_clean("a/b/../../.."), "..");
        assert_eq!(go_path_clean("/../a"), "/a");
        assert_eq!(go_path_clean(""), ".");
        assert_eq!(go_path_clean("a/./b/"), "a/b");
        assert_eq!(go_path_join("", ""), "");
    }
}
