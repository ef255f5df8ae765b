//! Tyk classic API definitions: one JSON file per API (or an array of them per file) in
//! `app_path`.
//!
//! Each definition is validated once here into an [`ApiDefinition`], so the request path never
//! re-checks a URL or a hook list. Behaviour follows Tyk, with these deliberate differences:
//! - `active` defaults to true (Go's zero value would be false): a definition written without it
//!   is meant to run.
//! - Things Tyk accepts and then fails on at request time are rejected at load, with the reason:
//!   a target URL that is not http(s), hooks with a driver pipegate cannot run (JavaScript, Go
//!   plugins), an ID extractor whose source its method cannot read (Tyk silently extracts an
//!   empty ID, mapping every client to one session), mux-style `{var}` listen paths.
//! - Security features pipegate does not implement (IP allow lists, JWT, ...) are accepted with a
//!   warning naming them, because the definition still has to load for a Tyk user to switch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use serde_json::Value;

use super::error::ConfigError;
use super::fields::{describe, join, Issue, Issues, Obj};
use super::gateway::GatewayConfig;
use super::go_json;

/// One API the gateway serves, validated.
#[derive(Debug, Clone)]
pub struct ApiDefinition {
    /// Tyk's `api_id`: unique, non-empty; sent to plugins as `spec["APIID"]`.
    pub api_id: String,
    /// Display name.
    pub name: String,
    /// Sent to plugins as `spec["OrgID"]`; prefixes session IDs from the ID extractor.
    pub org_id: String,
    /// Tyk's `slug` (kept for the admin API).
    pub slug: String,
    /// No authentication: `auth_check` and `post_key_auth` never run.
    pub use_keyless: bool,
    /// Path prefix this API is served under; always starts with '/'.
    pub listen_path: String,
    /// Parsed `proxy.target_url`.
    pub target: UpstreamTarget,
    /// `proxy.transport.ssl_insecure_skip_verify`: do not verify an https upstream's certificate
    /// (tyk.conf's `proxy_ssl_insecure_skip_verify` turns it on for every API).
    pub ssl_insecure_skip_verify: bool,
    /// `proxy.transport.ssl_min_version`; `None` (absent or 0) takes tyk.conf's
    /// `proxy_ssl_min_version`.
    pub ssl_min_version: Option<crate::tls::MinVersion>,
    /// How to speak TLS to an https target (built by [`load_apis`] with the gateway's defaults);
    /// `None` for http targets.
    pub upstream_tls: Option<Arc<crate::tls::client::UpstreamTls>>,
    /// Remove `listen_path` from the path sent upstream.
    pub strip_listen_path: bool,
    /// Send the client's Host header upstream instead of the target's.
    pub preserve_host_header: bool,
    /// Keep the target path's trailing slash when the request adds nothing to it.
    pub disable_strip_slash: bool,
    /// Plugin hooks, with disabled hooks already removed.
    pub custom_middleware: MiddlewareSection,
    /// Bundle file name, relative to the gateway's `bundle_base_url`.
    pub custom_middleware_bundle: String,
    /// The bundle is not fetched or used.
    pub custom_middleware_bundle_disabled: bool,
    /// `spec["config_data"]` for plugins: compact JSON with keys sorted as Go's `json.Marshal`
    /// writes them; `None` when `config_data_disabled` is set or the object is empty (Tyk then
    /// leaves the key out).
    pub config_data: Option<String>,
    /// `spec["bundle_hash"]`: lowercase hex MD5 of `custom_middleware_bundle` (MD5 of "" when
    /// there is none).
    pub bundle_hash: String,
    /// Plugin authentication is on (`enable_coprocess_auth || custom_plugin_auth_enabled`).
    pub coprocess_auth: bool,
    /// Standard token auth runs too (with plugin auth, both must pass).
    pub use_standard_auth: bool,
    /// Which auth method's session wins when several run (`custom_auth`, `auth_token`, ...).
    pub base_identity_provided_by: String,
    /// Header carrying the API key: `auth_configs.authToken.auth_header_name`, else
    /// `auth.auth_header_name`, else `Authorization`.
    pub auth_header_name: String,
    /// Paths whose requests skip authentication and plugin auth (`extended_paths.ignored`).
    pub ignored_paths: Vec<IgnoredPath>,
    /// Event handlers as written (`{"events": {...}}`); `Value::Null` when absent.
    pub event_handlers: Value,
    /// Tags as written.
    pub tags: Vec<String>,
    /// Skip analytics for this API.
    pub do_not_track: bool,
    /// The file the definition was read from.
    pub source: PathBuf,
    /// The definition object exactly as read, for the admin API.
    pub raw: Value,
    /// Why this API cannot serve (e.g. its plugin bundle failed to load): requests get a JSON 503
    /// naming no internals, the log names the API, the bundle and the reason. Other APIs are
    /// unaffected.
    pub unavailable: Option<String>,
    /// Index of this API's metric series ([`crate::metrics::Registry::api_slot`]), set when the
    /// configuration is loaded so requests never look labels up; 0 until then.
    pub metrics_slot: usize,
}

/// An upstream URL taken apart once, so the proxy never parses it per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// Scheme is https (TLS to the upstream).
    pub https: bool,
    /// Host name or IP literal to connect to; IPv6 without brackets.
    pub host: String,
    /// Port to connect to (80/443 when the URL has none).
    pub port: u16,
    /// Value for the Host header: host, plus `:port` unless it is the scheme's default;
    /// IPv6 in brackets.
    pub authority: String,
    /// Target path without trailing slashes ("" for none or "/"), joined with the request path.
    pub base_path: String,
    /// Target path exactly as written (used when `disable_strip_slash` keeps its trailing slash).
    pub raw_path: String,
    /// Query of the target URL without '?' ("" for none); Tyk puts it before the client's query,
    /// joined with '&'.
    pub query: String,
    /// The URL as written in the definition.
    pub url: String,
}

/// The `custom_middleware` section: the hooks of one API (or of a bundle manifest).
#[derive(Debug, Clone, Default)]
pub struct MiddlewareSection {
    /// Run before authentication, on every request.
    pub pre: Vec<HookDef>,
    /// Run after the other middleware, just before the proxy.
    pub post: Vec<HookDef>,
    /// Run after authentication succeeded (protected APIs only).
    pub post_key_auth: Vec<HookDef>,
    /// The custom auth hook. When plugin auth is on and the definition names no auth_check, this
    /// is a hook with an empty name, because Tyk then dispatches `hook_name: ""`.
    pub auth_check: Option<HookDef>,
    /// `auth_check.disabled` was set: plugin auth must not run even when it is switched on.
    pub auth_check_disabled: bool,
    /// Run on the upstream response.
    pub response: Vec<HookDef>,
    /// Plugin driver (`grpc`, `python`, `lua`); all are served by pipegate's coprocess.
    pub driver: String,
    /// How the auth hook's session cache key is taken from the request; `None` when absent,
    /// disabled, or left with empty `extract_from`/`extract_with` as dashboards export it.
    pub id_extractor: Option<IdExtractor>,
}

/// One enabled hook (Tyk's MiddlewareDefinition) plus pipegate's per-hook overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookDef {
    /// Function name the plugin dispatches on (`hook_name`).
    pub name: String,
    /// File path (meaningful to JS/Python; ignored for gRPC).
    pub path: String,
    /// Tyk's flag; only meaningful for JS plugins, kept for plugins that read it.
    pub require_session: bool,
    /// Send the body only as `raw_body`, not also as the `body` string.
    pub raw_body_only: bool,
    /// pipegate: this hook's own timeout (`timeout_ms`), overriding the gateway default.
    pub timeout: Option<Duration>,
    /// pipegate: this hook's own failure policy, overriding the gateway default.
    pub fail_open: Option<bool>,
}

/// Tyk's ID extractor: which part of the request identifies the client for session caching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdExtractor {
    /// `header`, `form` or `body`.
    pub extract_from: String,
    /// `value`, `regex` or `xpath`.
    pub extract_with: String,
    /// Header read when `extract_from` is `header`.
    pub header_name: String,
    /// Form field read when `extract_from` is `form`.
    pub param_name: String,
    /// Pattern for `regex`.
    pub regex_expression: String,
    /// Which whole-pattern match to use (Tyk's quirk: not a capture group).
    pub regex_match_index: usize,
    /// Expression for `xpath`.
    pub xpath_expression: String,
}

/// A path whose requests skip authentication (Tyk's `extended_paths.ignored`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredPath {
    /// The path pattern as written (Tyk treats it as a regular expression in which `{name}`
    /// stands for one path segment), matched against the path after the listen path.
    pub path: String,
    /// Methods it applies to, as written; empty means every method.
    pub methods: Vec<String>,
    /// Match without regard to letter case.
    pub ignore_case: bool,
    /// `path` compiled once at load (`None` when it is not a valid pattern: then it never
    /// matches, and a warning was logged).
    pub pattern: Option<PathPattern>,
}

/// A compiled Tyk path pattern: a regular expression anchored at the start of the path (after the
/// listen path), in which `{name}` stands for one path segment.
#[derive(Debug, Clone)]
pub struct PathPattern(pub regex::Regex);

impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}
impl Eq for PathPattern {}

impl PathPattern {
    /// Compiles a Tyk path pattern.
    pub fn compile(path: &str, ignore_case: bool) -> Result<PathPattern, String> {
        let mut re = String::with_capacity(path.len() + 8);
        if ignore_case {
            re.push_str("(?i)");
        }
        re.push('^');
        let mut rest = path;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            re.push_str(&rest[..open]);
            re.push_str("[^/]+");
            rest = &rest[open + close + 1..];
        }
        re.push_str(rest);
        regex::Regex::new(&re)
            .map(PathPattern)
            .map_err(|e| format!("{path:?} is not a valid path pattern: {e}"))
    }
}

impl IgnoredPath {
    fn new(path: String, methods: Vec<String>, ignore_case: bool) -> IgnoredPath {
        let pattern = match PathPattern::compile(&path, ignore_case) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("ignored path never matches: {e}");
                None
            }
        };
        IgnoredPath {
            path,
            methods,
            ignore_case,
            pattern,
        }
    }

    /// Whether a request (path after the listen path, method) is ignored by this entry.
    pub fn matches(&self, path: &str, method: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && self.pattern.as_ref().is_some_and(|p| p.0.is_match(path))
    }
}

impl ApiDefinition {
    /// Whether a request skips authentication (Tyk's ignored paths, matched against the path
    /// after the listen path).
    pub fn is_ignored(&self, path: &str, method: &str) -> bool {
        if self.ignored_paths.is_empty() {
            return false;
        }
        let rest = path
            .strip_prefix(self.listen_path.trim_end_matches('/'))
            .unwrap_or(path);
        let rest = if rest.is_empty() { "/" } else { rest };
        self.ignored_paths.iter().any(|p| p.matches(rest, method))
    }

    /// Appends to `out` the path sent upstream for `request_path` (no query string).
    ///
    /// Applies `strip_listen_path` (a plain prefix cut, as Tyk's `StripListenPath`; a request for
    /// the listen path without its trailing slash strips to "/"), then joins the target's base path
    /// and the rest with exactly one slash as Tyk's `singleJoiningSlash` does: leading slashes of
    /// the rest are dropped, an empty rest yields the base path alone (or "/"), and with
    /// `disable_strip_slash` an empty rest yields the target path as written, trailing slash
    /// included. It appends rather than replaces so the caller can build a request line in one
    /// buffer without allocating.
    pub fn upstream_path(&self, request_path: &str, out: &mut Vec<u8>) {
        let rest = if self.strip_listen_path {
            self.strip_listen(request_path)
        } else {
            request_path
        };
        let target = &self.target;
        if self.disable_strip_slash && (rest.is_empty() || rest == "/") {
            if target.raw_path.is_empty() {
                out.push(b'/');
            } else {
                out.extend_from_slice(target.raw_path.as_bytes());
            }
            return;
        }
        let rest = rest.trim_start_matches('/');
        if rest.is_empty() {
            if target.base_path.is_empty() {
                out.push(b'/');
            } else {
                out.extend_from_slice(target.base_path.as_bytes());
            }
            return;
        }
        out.extend_from_slice(target.base_path.as_bytes());
        out.push(b'/');
        out.extend_from_slice(rest.as_bytes());
    }

    /// `request_path` with the listen path cut off the front (possibly without its leading '/').
    fn strip_listen<'a>(&self, request_path: &'a str) -> &'a str {
        let lp = self.listen_path.as_str();
        if let Some(rest) = request_path.strip_prefix(lp) {
            return rest;
        }
        if lp.len() > 1 && lp.ends_with('/') && request_path == &lp[..lp.len() - 1] {
            return "";
        }
        request_path
    }

    /// The auth hook to run for a request, applying Tyk's rule: only on protected APIs with
    /// plugin auth on and `auth_check` not disabled.
    pub fn auth_hook(&self) -> Option<&HookDef> {
        if self.use_keyless || !self.coprocess_auth {
            return None;
        }
        self.custom_middleware.auth_check.as_ref()
    }

    /// Replaces the hooks, as loading a bundle does (Tyk overwrites the definition's
    /// `custom_middleware` with the manifest's), keeping the empty-name auth hook rule.
    pub fn set_custom_middleware(&mut self, mut section: MiddlewareSection) {
        fill_default_auth_check(&mut section, self.coprocess_auth);
        self.custom_middleware = section;
    }
}

fn fill_default_auth_check(section: &mut MiddlewareSection, coprocess_auth: bool) {
    if coprocess_auth && section.auth_check.is_none() && !section.auth_check_disabled {
        section.auth_check = Some(HookDef::default());
    }
}

impl UpstreamTarget {
    /// Parses an upstream URL: `http` or `https` only, a host, an optional port (default 80/443),
    /// an optional path and query. The error is a reason fit to follow the field name.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.is_empty() {
            return Err("is empty; set the upstream URL, e.g. \"http://127.0.0.1:8081/\"".into());
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{url:?} contains spaces or control characters; remove them"
            ));
        }
        let Some((scheme, rest)) = url.split_once("://").filter(|(s, _)| !s.is_empty()) else {
            return Err(format!(
                "{url:?} has no scheme; write it as http://host[:port]/path or https://host[:port]/path"
            ));
        };
        let https = if scheme.eq_ignore_ascii_case("http") {
            false
        } else if scheme.eq_ignore_ascii_case("https") {
            true
        } else {
            return Err(format!(
                "scheme {scheme:?} is not supported; use http:// or https://"
            ));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(
                "user credentials in the URL are not supported; remove \"user:password@\" and \
                 send credentials with a header instead"
                    .into(),
            );
        }
        let (host, port_text, bracketed) = if let Some(inner) = authority.strip_prefix('[') {
            let Some((v6, after)) = inner.split_once(']') else {
                return Err(format!("host {authority:?} has '[' without ']'"));
            };
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{v6:?} is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return Err(format!("unexpected {after:?} after the IPv6 address")),
                },
            };
            (v6, port, true)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p), false),
                None => (authority, None, false),
            }
        };
        if host.is_empty() {
            return Err(format!(
                "{url:?} has no host; write it as http://host[:port]/path"
            ));
        }
        if !bracketed
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(format!(
                "host {host:?} is not a valid host name or IP address (IPv6 goes in brackets: http://[::1]:8080/)"
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let port = match port_text {
            None | Some("") => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
            },
        };
        let without_fragment = tail.split('#').next().unwrap_or("");
        let (raw_path, query) = without_fragment
            .split_once('?')
            .unwrap_or((without_fragment, ""));
        let host_for_header = if bracketed {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let authority = if port == default_port {
            host_for_header
        } else {
            format!("{host_for_header}:{port}")
        };
        Ok(UpstreamTarget {
            https,
            host: host.to_string(),
            port,
            authority,
            base_path: raw_path.trim_end_matches('/').to_string(),
            raw_path: raw_path.to_string(),
            query: query.to_string(),
            url: url.to_string(),
        })
    }
}

/// Parses a `custom_middleware` object (from an API definition or a bundle's manifest.json).
///
/// `field` is the path used in errors, e.g. `"custom_middleware"`. Disabled hooks are dropped;
/// the driver is checked only when enabled hooks exist.
pub fn parse_middleware_section(
    file: &Path,
    field: &str,
    value: &Value,
) -> Result<MiddlewareSection, Vec<ConfigError>> {
    let mut issues = Issues::default();
    let section = match Obj::from_value(value, field) {
        Ok(obj) => middleware_section(&obj, &mut issues),
        Err(issue) => {
            issues.list.push(issue);
            MiddlewareSection::default()
        }
    };
    if !issues.is_empty() {
        return Err(to_errors(file, issues));
    }
    // A manifest's auth_check runs when it names a hook (plugin auth is switched on per API).
    let named_auth = section
        .auth_check
        .as_ref()
        .is_some_and(|h| !h.name.is_empty());
    if let Err(issue) = check_driver(&section, field, named_auth) {
        return Err(vec![ConfigError::new(file, issue.field, issue.reason)]);
    }
    Ok(section)
}

fn middleware_section(obj: &Obj<'_>, issues: &mut Issues) -> MiddlewareSection {
    let mut hooks = |key: &str| -> Vec<HookDef> {
        let items = issues.take(obj.array(key), &[]);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", obj.field(key));
            if let Some(hook) = hook_def(item, &path, false, issues) {
                out.push(hook);
            }
        }
        out
    };
    let pre = hooks("pre");
    let post = hooks("post");
    let post_key_auth = hooks("post_key_auth");
    let response = hooks("response");
    let (auth_check, auth_check_disabled) = match obj.get("auth_check") {
        None => (None, false),
        Some(v) => {
            let path = obj.field("auth_check");
            let disabled = Obj::from_value(v, path.as_str())
                .and_then(|o| o.bool("disabled", false))
                .unwrap_or(false);
            (hook_def(v, &path, true, issues), disabled)
        }
    };
    let driver = issues.take(obj.string("driver", ""), String::new());
    let id_extractor = match obj.get("id_extractor") {
        None => None,
        Some(v) => id_extractor(v, &obj.field("id_extractor"), issues),
    };
    MiddlewareSection {
        pre,
        post,
        post_key_auth,
        auth_check,
        auth_check_disabled,
        response,
        driver,
        id_extractor,
    }
}

/// One MiddlewareDefinition; `None` when disabled (or invalid, with the issue recorded).
fn hook_def(v: &Value, path: &str, name_optional: bool, issues: &mut Issues) -> Option<HookDef> {
    let obj = match Obj::from_value(v, path) {
        Ok(o) => o,
        Err(issue) => {
            issues.list.push(issue);
            return None;
        }
    };
    let before = issues.list.len();
    let disabled = issues.take(obj.bool("disabled", false), false);
    let name = issues.take(obj.string("name", ""), String::new());
    let file_path = issues.take(obj.string("path", ""), String::new());
    let require_session = issues.take(obj.bool("require_session", false), false);
    let raw_body_only = issues.take(obj.bool("raw_body_only", false), false);
    let _ = issues.take(obj.str("code"), None);
    let timeout_ms = issues.take(obj.opt_u64("timeout_ms"), None);
    let fail_open = issues.take(obj.opt_bool("fail_open"), None);
    if disabled {
        return None;
    }
    if name.is_empty() && !name_optional {
        issues.push(
            obj.field("name"),
            "is empty; set the plugin function name, or set \"disabled\": true",
        );
    }
    if timeout_ms == Some(0) {
        issues.push(
            obj.field("timeout_ms"),
            "must be greater than 0; leave it out to use coprocess_options.hook_timeout_ms",
        );
    }
    if issues.list.len() > before {
        return None;
    }
    Some(HookDef {
        name,
        path: file_path,
        require_session,
        raw_body_only,
        timeout: timeout_ms.map(Duration::from_millis),
        fail_open,
    })
}

fn id_extractor(v: &Value, path: &str, issues: &mut Issues) -> Option<IdExtractor> {
    let obj = match Obj::from_value(v, path) {
        Ok(o) => o,
        Err(issue) => {
            issues.list.push(issue);
            return None;
        }
    };
    let disabled = issues.take(obj.bool("disabled", false), false);
    let from = issues.take(obj.string("extract_from", ""), String::new());
    let with = issues.take(obj.string("extract_with", ""), String::new());
    let cfg = issues.take(
        obj.obj("extractor_config"),
        Obj::empty(obj.field("extractor_config")),
    );
    let header_name = issues.take(cfg.string("header_name", ""), String::new());
    let param_name = issues.take(cfg.string("param_name", ""), String::new());
    let regex_expression = issues.take(cfg.string("regex_expression", ""), String::new());
    let regex_match_index = issues.take(cfg.u64("regex_match_index", 0), 0);
    let xpath_expression = issues.take(cfg.string("xpath_expression", ""), String::new());
    if disabled || (from.is_empty() && with.is_empty()) {
        return None;
    }
    let before = issues.list.len();
    if !matches!(from.as_str(), "header" | "form" | "body") {
        let reason = if from == "querystring" {
            "\"querystring\" is not supported: Tyk silently extracts an empty ID from it, mapping \
             every client to one session; use \"header\" or \"form\""
                .to_string()
        } else {
            format!("{from:?} is not a source; use \"header\", \"form\" or \"body\"")
        };
        issues.push(obj.field("extract_from"), reason);
    }
    match with.as_str() {
        "value" if from == "body" => issues.push(
            obj.field("extract_with"),
            "\"value\" reads only \"header\" or \"form\"; use \"regex\" or \"xpath\" for the body",
        ),
        "value" | "regex" | "xpath" => {}
        other => issues.push(
            obj.field("extract_with"),
            format!("{other:?} is not a method; use \"value\", \"regex\" or \"xpath\""),
        ),
    }
    let mut require = |ok: bool, key: &str, what: &str| {
        if !ok {
            issues.push(cfg.field(key), format!("is empty; set {what}"));
        }
    };
    match from.as_str() {
        "header" => require(!header_name.is_empty(), "header_name", "the header to read"),
        "form" => require(
            !param_name.is_empty(),
            "param_name",
            "the form field to read",
        ),
        _ => {}
    }
    match with.as_str() {
        "regex" => require(
            !regex_expression.is_empty(),
            "regex_expression",
            "the pattern",
        ),
        "xpath" => require(
            !xpath_expression.is_empty(),
            "xpath_expression",
            "the expression",
        ),
        _ => {}
    }
    if issues.list.len() > before {
        return None;
    }
    Some(IdExtractor {
        extract_from: from,
        extract_with: with,
        header_name,
        param_name,
        regex_expression,
        regex_match_index: usize::try_from(regex_match_index).unwrap_or(usize::MAX),
        xpath_expression,
    })
}

/// Hooks need a driver pipegate can run; Tyk would answer every request with 500 instead.
/// `auth_runs` says whether the section's auth_check will be dispatched.
fn check_driver(section: &MiddlewareSection, field: &str, auth_runs: bool) -> Result<(), Issue> {
    let has_hooks = !section.pre.is_empty()
        || !section.post.is_empty()
        || !section.post_key_auth.is_empty()
        || !section.response.is_empty()
        || auth_runs;
    if !has_hooks || !section.driver.is_empty() {
        // "grpc" goes to the gRPC transport; every other value ("python", "lua", "pipe", ...) to
        // the pipe child, so Tyk definitions keep their driver unchanged.
        return Ok(());
    }
    let field = format!("{field}.driver");
    Err(Issue::new(
        field,
        "hooks are defined but no driver is set (Tyk would run them as JavaScript); set \"driver\" \
         to \"python\" or \"pipe\" for the pipe plugin process, or \"grpc\" for a gRPC server",
    ))
}

/// Security features of Tyk that pipegate does not implement; a definition using them loads
/// with a warning, because requests are then not checked by them.
const UNSUPPORTED_WHEN_TRUE: &[&str] = &[
    "use_basic_auth",
    "use_oauth2",
    "enable_jwt",
    "enable_signature_checking",
    "use_openid",
    "use_mutual_tls_auth",
    "use_go_plugin_auth",
    "enable_ip_whitelisting",
    "enable_ip_blacklisting",
];

/// Top-level keys of an API definition that pipegate reads.
const KNOWN_API_KEYS: &[&str] = &[
    "api_id",
    "name",
    "org_id",
    "slug",
    "active",
    "use_keyless",
    "proxy",
    "custom_middleware",
    "custom_middleware_bundle",
    "custom_middleware_bundle_disabled",
    "config_data",
    "config_data_disabled",
    "enable_coprocess_auth",
    "custom_plugin_auth_enabled",
    "use_standard_auth",
    "base_identity_provided_by",
    "auth",
    "auth_configs",
    "version_data",
    "event_handlers",
    "tags",
    "do_not_track",
];

const BASE_IDENTITIES: &[&str] = &[
    "",
    "auth_token",
    "custom_auth",
    "hmac_key",
    "basic_auth_user",
    "jwt_claim",
    "oidc_user",
    "oauth_key",
];

/// Reads one definition object. `prefix` is "" for a file holding one object, or `[i]` for the
/// i-th element of an array. `Ok(None)` means the API is inactive.
pub(crate) fn api_from_value(
    value: &Value,
    prefix: &str,
    source: &Path,
    issues: &mut Issues,
) -> Option<ApiDefinition> {
    let top = match value {
        Value::Object(_) => match Obj::from_value(value, prefix) {
            Ok(o) => o,
            Err(issue) => {
                issues.list.push(issue);
                return None;
            }
        },
        other => {
            issues.push(
                prefix,
                format!(
                    "expected an API definition object, found {}",
                    describe(other)
                ),
            );
            return None;
        }
    };
    let before = issues.list.len();
    let api_id = match top.str("api_id") {
        Ok(Some(id)) if !id.is_empty() => id.to_string(),
        Ok(_) => {
            issues.push(
                top.field("api_id"),
                "is missing or empty; every API needs a unique api_id",
            );
            String::new()
        }
        Err(issue) => {
            issues.list.push(issue);
            String::new()
        }
    };
    let name = issues.take(top.string("name", ""), String::new());
    if !issues.take(top.bool("active", true), true) {
        tracing::info!(
            file = %source.display(),
            api_id = %api_id,
            name = %name,
            "skipping inactive API (\"active\": false)"
        );
        return None;
    }
    let org_id = issues.take(top.string("org_id", ""), String::new());
    let slug = issues.take(top.string("slug", ""), String::new());
    let use_keyless = issues.take(top.bool("use_keyless", false), false);

    // proxy
    let proxy = issues.take(top.obj("proxy"), Obj::empty(top.field("proxy")));
    let listen_path = match issues.take(proxy.str("listen_path"), None) {
        None => {
            issues.push(
                proxy.field("listen_path"),
                "is missing; set the path prefix this API is served under, e.g. \"/my-api/\"",
            );
            String::new()
        }
        Some(lp) => match normalise_listen_path(lp) {
            Ok(lp) => lp,
            Err(reason) => {
                issues.push(proxy.field("listen_path"), reason);
                String::new()
            }
        },
    };
    let target = match issues.take(proxy.str("target_url"), None) {
        None => {
            issues.push(
                proxy.field("target_url"),
                "is missing; set the upstream URL, e.g. \"http://127.0.0.1:8081/\"",
            );
            None
        }
        Some(url) => match UpstreamTarget::parse(url) {
            Ok(t) => Some(t),
            Err(reason) => {
                issues.push(proxy.field("target_url"), reason);
                None
            }
        },
    };
    let strip_listen_path = issues.take(proxy.bool("strip_listen_path", false), false);
    let preserve_host_header = issues.take(proxy.bool("preserve_host_header", false), false);
    let disable_strip_slash = issues.take(proxy.bool("disable_strip_slash", false), false);
    let transport = issues.take(proxy.obj("transport"), Obj::empty(proxy.field("transport")));
    let ssl_insecure_skip_verify =
        issues.take(transport.bool("ssl_insecure_skip_verify", false), false);
    let ssl_min_version = super::gateway::tls_version(&transport, "ssl_min_version", true, issues);

    // plugins
    let cm = issues.take(
        top.obj("custom_middleware"),
        Obj::empty(top.field("custom_middleware")),
    );
    let mut custom_middleware = middleware_section(&cm, issues);
    let custom_middleware_bundle =
        issues.take(top.string("custom_middleware_bundle", ""), String::new());
    let custom_middleware_bundle_disabled =
        issues.take(top.bool("custom_middleware_bundle_disabled", false), false);
    let config_data_disabled = issues.take(top.bool("config_data_disabled", false), false);
    let config_data = match issues.take(top.raw_object("config_data"), None) {
        Some(map) if !map.is_empty() && !config_data_disabled => {
            top.get("config_data").map(go_json::marshal)
        }
        _ => None,
    };
    let enable_coprocess_auth = issues.take(top.bool("enable_coprocess_auth", false), false);
    let custom_plugin_auth_enabled =
        issues.take(top.bool("custom_plugin_auth_enabled", false), false);
    let coprocess_auth = enable_coprocess_auth || custom_plugin_auth_enabled;
    fill_default_auth_check(&mut custom_middleware, coprocess_auth);
    let bundle_in_use = !custom_middleware_bundle.is_empty() && !custom_middleware_bundle_disabled;
    if !bundle_in_use {
        // With a bundle, the manifest supplies the hooks and the driver; it is checked when the
        // bundle is loaded.
        let auth_runs = coprocess_auth && !use_keyless && custom_middleware.auth_check.is_some();
        if let Err(issue) = check_driver(&custom_middleware, cm.path(), auth_runs) {
            issues.list.push(issue);
        }
    }

    // auth
    let use_standard_auth = issues.take(top.bool("use_standard_auth", false), false);
    let base_identity_provided_by =
        issues.take(top.string("base_identity_provided_by", ""), String::new());
    if !BASE_IDENTITIES.contains(&base_identity_provided_by.as_str()) {
        issues.push(
            top.field("base_identity_provided_by"),
            format!(
                "{base_identity_provided_by:?} is not an auth method; use one of {}",
                BASE_IDENTITIES[1..].join(", ")
            ),
        );
    }
    let auth = issues.take(top.obj("auth"), Obj::empty(top.field("auth")));
    let auth_configs = issues.take(
        top.obj("auth_configs"),
        Obj::empty(top.field("auth_configs")),
    );
    let auth_token = issues.take(
        auth_configs.obj("authToken"),
        Obj::empty(auth_configs.field("authToken")),
    );
    let token_header = issues.take(auth_token.string("auth_header_name", ""), String::new());
    let legacy_header = issues.take(auth.string("auth_header_name", ""), String::new());
    let auth_header_name = [token_header, legacy_header]
        .into_iter()
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "Authorization".to_string());

    let ignored_paths = ignored_paths(&top, source, issues);

    let event_handlers = match top.get("event_handlers") {
        None => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => {
            issues.push(
                top.field("event_handlers"),
                format!("expected an object, found {}", describe(other)),
            );
            Value::Null
        }
    };
    let tags = issues.take(top.strings("tags"), Vec::new());
    let do_not_track = issues.take(top.bool("do_not_track", false), false);

    let unknown = top.unknown_keys(KNOWN_API_KEYS);
    if !unknown.is_empty() {
        tracing::debug!(
            file = %source.display(),
            api_id = %api_id,
            keys = %unknown.join(", "),
            "API definition keys that pipegate accepts but does not use"
        );
    }
    let unsupported: Vec<&str> = UNSUPPORTED_WHEN_TRUE
        .iter()
        .copied()
        .filter(|k| matches!(top.get(k), Some(Value::Bool(true))))
        .collect();
    if !unsupported.is_empty() {
        tracing::warn!(
            file = %source.display(),
            api_id = %api_id,
            features = %unsupported.join(", "),
            "API uses Tyk features pipegate does not implement; requests are not checked by them"
        );
    }

    if issues.list.len() > before {
        return None;
    }
    let target = target?;
    Some(ApiDefinition {
        api_id,
        name,
        org_id,
        slug,
        use_keyless,
        listen_path,
        target,
        ssl_insecure_skip_verify,
        ssl_min_version,
        upstream_tls: None,
        strip_listen_path,
        preserve_host_header,
        disable_strip_slash,
        custom_middleware,
        bundle_hash: md5_hex(custom_middleware_bundle.as_bytes()),
        custom_middleware_bundle,
        custom_middleware_bundle_disabled,
        config_data,
        coprocess_auth,
        use_standard_auth,
        base_identity_provided_by,
        auth_header_name,
        ignored_paths,
        event_handlers,
        tags,
        do_not_track,
        source: source.to_path_buf(),
        raw: value.clone(),
        unavailable: None,
        metrics_slot: 0,
    })
}

/// Makes the listen path start with '/', and rejects what plain prefix matching cannot serve.
fn normalise_listen_path(lp: &str) -> Result<String, String> {
    if lp.is_empty() {
        return Err(
            "is empty; set the path prefix this API is served under, e.g. \"/my-api/\"".into(),
        );
    }
    if lp.contains(['{', '}']) {
        return Err(format!(
            "{lp:?} uses mux-style variables, which pipegate does not support; use a fixed prefix"
        ));
    }
    if lp
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(format!(
            "{lp:?} contains spaces, control characters, '?' or '#'; a listen path is a plain path prefix"
        ));
    }
    Ok(if lp.starts_with('/') {
        lp.to_string()
    } else {
        format!("/{lp}")
    })
}

/// The ignored paths of the version pipegate serves.
///
/// pipegate does not route by version, so it uses one version: `version_data.default_version` if
/// it names one, else the one called "Default", else the only one, else the first by name (with a
/// warning). As in Tyk, `extended_paths` counts only with `use_extended_paths: true`; otherwise
/// the legacy `paths.ignored` string list (every method) is used.
fn ignored_paths(top: &Obj<'_>, source: &Path, issues: &mut Issues) -> Vec<IgnoredPath> {
    let vd = issues.take(
        top.obj("version_data"),
        Obj::empty(top.field("version_data")),
    );
    let _ = issues.take(vd.bool("not_versioned", false), false);
    let versions = issues.take(vd.obj("versions"), Obj::empty(vd.field("versions")));
    let default_version = issues.take(vd.string("default_version", ""), String::new());
    let mut names: Vec<&String> = versions.keys().collect();
    names.sort();
    let chosen = if !default_version.is_empty() && versions.get(&default_version).is_some() {
        Some(default_version.as_str())
    } else if versions.get("Default").is_some() {
        Some("Default")
    } else if names.len() == 1 {
        names.first().map(|s| s.as_str())
    } else if let Some(first) = names.first() {
        tracing::warn!(
            file = %source.display(),
            version = %first,
            "several versions and none is the default; pipegate does not route by version and uses this one"
        );
        Some(first.as_str())
    } else {
        None
    };
    let Some(chosen) = chosen else {
        return Vec::new();
    };
    let version = issues.take(versions.obj(chosen), Obj::empty(versions.field(chosen)));
    let use_extended = issues.take(version.bool("use_extended_paths", false), false);
    let mut out = Vec::new();
    if use_extended {
        let ext = issues.take(
            version.obj("extended_paths"),
            Obj::empty(version.field("extended_paths")),
        );
        let items = issues.take(ext.array("ignored"), &[]);
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", ext.field("ignored"));
            if let Some(p) = extended_ignored(item, &path, issues) {
                out.push(p);
            }
        }
    } else {
        let paths = issues.take(version.obj("paths"), Obj::empty(version.field("paths")));
        for p in issues.take(paths.strings("ignored"), Vec::new()) {
            out.push(IgnoredPath::new(p, Vec::new(), false));
        }
        let ext_has_ignored = version
            .get("extended_paths")
            .and_then(|e| e.get("ignored"))
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if ext_has_ignored {
            tracing::warn!(
                file = %source.display(),
                version = %chosen,
                "extended_paths.ignored is not used because use_extended_paths is not true (as in Tyk)"
            );
        }
    }
    out
}

/// One `extended_paths.ignored` entry (Tyk's EndPointMeta). Methods come from `method`, else
/// from the keys of `method_actions`; with neither, every method. An entry whose
/// `method_actions` is an empty object matches no method in Tyk and is dropped.
fn extended_ignored(v: &Value, path: &str, issues: &mut Issues) -> Option<IgnoredPath> {
    let obj = match Obj::from_value(v, path) {
        Ok(o) => o,
        Err(issue) => {
            issues.list.push(issue);
            return None;
        }
    };
    let disabled = issues.take(obj.bool("disabled", false), false);
    let p = issues.take(obj.string("path", ""), String::new());
    let method = issues.take(obj.string("method", ""), String::new());
    let ignore_case = issues.take(obj.bool("ignore_case", false), false);
    let actions = issues.take(obj.raw_object("method_actions"), None);
    if disabled {
        return None;
    }
    if p.is_empty() {
        issues.push(obj.field("path"), "is empty; set the path to ignore");
        return None;
    }
    let methods = if !method.is_empty() {
        vec![method]
    } else if let Some(actions) = actions {
        if actions.is_empty() {
            tracing::debug!(field = %path, "ignored path with empty method_actions matches no method; dropped");
            return None;
        }
        actions.keys().cloned().collect()
    } else {
        Vec::new()
    };
    Some(IgnoredPath::new(p, methods, ignore_case))
}

/// Lowercase hex MD5, as Go's `fmt.Sprintf("%x", md5.Sum(b))`.
pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    let digest = Md5::digest(bytes);
    let mut out = String::with_capacity(32);
    for b in digest.iter() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    out
}

fn to_errors(file: &Path, issues: Issues) -> Vec<ConfigError> {
    issues
        .list
        .into_iter()
        .map(|i| ConfigError::new(file, i.field, i.reason))
        .collect()
}

/// Loads every active API definition from `gw.app_path`: each `*.json` file, sorted by file
/// name, holding one definition object or an array of them.
///
/// Returns every problem found across all files (it does not stop at the first bad file), plus an
/// error for each api_id or listen_path used twice among active APIs, naming both files.
pub fn load_apis(gw: &GatewayConfig) -> Result<Vec<ApiDefinition>, Vec<ConfigError>> {
    let dir = &gw.app_path;
    let entries = std::fs::read_dir(dir).map_err(|e| {
        vec![ConfigError::new(
            &gw.conf_path,
            "app_path",
            format!(
                "cannot read the directory {}: {e}; create it or point app_path at the directory of API definition files",
                dir.display()
            ),
        )]
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut errors: Vec<ConfigError> = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                errors.push(ConfigError::new(
                    dir,
                    "",
                    format!("cannot list the directory: {e}"),
                ));
                continue;
            }
        };
        let path = entry.path();
        let is_json = path.extension().is_some_and(|ext| ext == "json");
        // metadata() follows symlinks, so linked definition files count.
        if is_json && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));

    let mut apis: Vec<(ApiDefinition, String)> = Vec::new();
    for file in &files {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                errors.push(ConfigError::unreadable(file, &e));
                continue;
            }
        };
        match parse_api_file(file, &bytes) {
            Ok(found) => apis.extend(found),
            Err(errs) => errors.extend(errs),
        }
    }

    for (i, (api, prefix)) in apis.iter().enumerate() {
        if let Some((first, first_prefix)) = apis[..i].iter().find(|(a, _)| a.api_id == api.api_id)
        {
            errors.push(ConfigError::new(
                &api.source,
                join(prefix, "api_id"),
                format!(
                    "{:?} is already used by {}{}; api_id must be unique among active APIs",
                    api.api_id,
                    first.source.display(),
                    describe_prefix(first_prefix)
                ),
            ));
        }
        if let Some((first, first_prefix)) = apis[..i]
            .iter()
            .find(|(a, _)| a.listen_path == api.listen_path)
        {
            errors.push(ConfigError::new(
                &api.source,
                join(prefix, "proxy.listen_path"),
                format!(
                    "{:?} is already used by API {:?} in {}{}; give one of them another listen_path or set \"active\": false",
                    api.listen_path,
                    first.api_id,
                    first.source.display(),
                    describe_prefix(first_prefix)
                ),
            ));
        }
    }

    let mut tls_configs = crate::tls::client::ClientConfigs::default();
    for (api, prefix) in apis.iter_mut().filter(|(a, _)| a.target.https) {
        let insecure = api.ssl_insecure_skip_verify || gw.proxy_ssl_insecure_skip_verify;
        let min = api.ssl_min_version.unwrap_or(gw.proxy_ssl_min_version);
        match tls_configs.upstream(&api.target.url, &api.target.host, insecure, min) {
            Ok(t) => api.upstream_tls = Some(Arc::new(t)),
            Err(reason) => {
                errors.push(ConfigError::new(
                    &api.source,
                    join(prefix, "proxy.target_url"),
                    reason,
                ));
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let apis: Vec<ApiDefinition> = apis.into_iter().map(|(a, _)| a).collect();
    if !gw.coprocess.enable_coprocess {
        for api in &apis {
            let cm = &api.custom_middleware;
            let has_hooks = !cm.pre.is_empty()
                || !cm.post.is_empty()
                || !cm.post_key_auth.is_empty()
                || !cm.response.is_empty()
                || api.auth_hook().is_some();
            if has_hooks {
                tracing::warn!(
                    api_id = %api.api_id,
                    "API has plugin hooks but coprocess_options.enable_coprocess is false: the hooks will not run (as in Tyk)"
                );
            }
        }
    }
    Ok(apis)
}

/// Validates one API definition file (an object or an array of them) from bytes already read:
/// the active APIs with their `[i]` prefixes (empty for a single object), or every problem found
/// in the file. Cross-file checks (unique api_id and listen_path) stay in [`load_apis`]. Split
/// out so the definition parser can be fuzzed without a file system round trip.
pub fn parse_api_file(
    file: &Path,
    bytes: &[u8],
) -> Result<Vec<(ApiDefinition, String)>, Vec<ConfigError>> {
    let root = super::parse_json(file, bytes).map_err(|e| vec![e])?;
    let mut issues = Issues::default();
    let mut found = Vec::new();
    match &root {
        Value::Array(items) => {
            if items.is_empty() {
                tracing::debug!(file = %file.display(), "API definition file holds an empty array");
            }
            for (i, item) in items.iter().enumerate() {
                let prefix = format!("[{i}]");
                if let Some(api) = api_from_value(item, &prefix, file, &mut issues) {
                    found.push((api, prefix));
                }
            }
        }
        Value::Object(_) => {
            if let Some(api) = api_from_value(&root, "", file, &mut issues) {
                found.push((api, String::new()));
            }
        }
        other => issues.push(
            "",
            format!(
                "expected an API definition object or an array of them, found {}",
                describe(other)
            ),
        ),
    }
    let errors = to_errors(file, issues);
    if errors.is_empty() {
        Ok(found)
    } else {
        Err(errors)
    }
}

fn describe_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!(" (element {prefix})")
    }
}
