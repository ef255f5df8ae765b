//! The hook object as it travels on the pipe, mirroring Tyk's coprocess protobuf `Object` field for
//! field (snake_case names), so a plugin ported from Tyk's gRPC world reads the same names.
//!
//! Two families of types live here, because the two directions have different rules:
//! - what the gateway sends ([`Object`], [`MiniRequestObject`], [`ResponseObject`]) always carries
//!   every field, so plain fields with defaults are the easiest to read;
//! - what a plugin sends back ([`ObjectPatch`], [`RequestPatch`], [`ResponsePatch`],
//!   [`ReturnOverridesPatch`]) follows the protocol rule "absent = unchanged", so every field is an
//!   `Option` that is left out of the frame when `None`. Sending back only what changed keeps
//!   frames small, which is what makes a pipe plugin cheap.
//!
//! The SDK defines its own types on purpose: a plugin must not depend on the gateway crate.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;

use serde::{Deserialize, Serialize};

use crate::lenient;

/// Which hook point a dispatch is for: the name of Tyk's `HookType` enum value.
///
/// Unknown names decode as [`HookType::Unknown`] so a newer gateway cannot break an older plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum HookType {
    /// `pre` hooks: before authentication.
    Pre,
    /// `post` hooks: after authentication and the built-in checks.
    Post,
    /// `post_key_auth` hooks: right after key authentication.
    PostKeyAuth,
    /// The `auth_check` hook (custom authentication).
    CustomKeyCheck,
    /// `response` hooks: after the upstream answered.
    Response,
    /// Never sent by the gateway; the fallback for names this SDK does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

/// One dispatch as the gateway sends it (Tyk's `Object`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Object {
    /// The hook point.
    pub hook_type: HookType,
    /// The `name` of the middleware definition; a plugin serving several hooks switches on it.
    pub hook_name: String,
    /// The client request as the gateway sees it at this point of the chain.
    pub request: MiniRequestObject,
    /// The key's session; absent for `Pre` and `CustomKeyCheck` when there is none yet.
    pub session: Option<SessionState>,
    /// Session metadata (Tyk sends `session.metadata` here too, for compatibility).
    pub metadata: HashMap<String, String>,
    /// API facts: `OrgID`, `APIID`, `bundle_hash`, and `config_data` (JSON text) when set.
    pub spec: HashMap<String, String>,
    /// The upstream response; only for `Response` hooks.
    pub response: Option<ResponseObject>,
}

/// The request part of a dispatch (Tyk's `MiniRequestObject`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MiniRequestObject {
    /// Request headers, Go-canonical names (`Content-Type`), first value only, plus `Host`.
    pub headers: HashMap<String, String>,
    /// Headers to set (always empty on the way in).
    pub set_headers: HashMap<String, String>,
    /// Headers to delete (always empty on the way in).
    pub delete_headers: Vec<String>,
    /// The body as text; empty when it is not UTF-8 or the hook is `raw_body_only`.
    pub body: String,
    /// Path including the listen path, plus `?query`.
    pub url: String,
    /// Query parameters, first value per key.
    pub params: HashMap<String, String>,
    /// Query parameters to add (always empty on the way in).
    pub add_params: HashMap<String, String>,
    /// Always empty; kept because Tyk's protobuf has it.
    pub extended_params: HashMap<String, String>,
    /// Query parameters to delete (always empty on the way in).
    pub delete_params: Vec<String>,
    /// What the gateway should answer instead of proxying (`response_code` is sent as -1).
    pub return_overrides: ReturnOverrides,
    /// HTTP method.
    pub method: String,
    /// The raw request URI.
    pub request_uri: String,
    /// `http` or `https`.
    pub scheme: String,
    /// The body bytes (MessagePack bin).
    #[serde(with = "serde_bytes")]
    pub raw_body: Vec<u8>,
    /// Set instead of `raw_body` for large bodies when the plugin announced `mmap` support.
    pub raw_body_file: Option<BodyFile>,
}

/// A body handed over as a file instead of inline (only when the plugin said `"mmap": true`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BodyFile {
    /// Absolute path of the file holding the body.
    pub path: String,
    /// Body length in bytes.
    #[serde(deserialize_with = "lenient::u64")]
    pub len: u64,
}

/// Tyk's `ReturnOverrides` as the gateway sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReturnOverrides {
    /// -1 on the way in (no override).
    #[serde(deserialize_with = "lenient::i32")]
    pub response_code: i32,
    /// Error text for an override of 400 or more.
    pub response_error: String,
    /// Headers for the override response.
    pub headers: HashMap<String, String>,
    /// Reply with the raw body even for codes of 400 or more.
    pub override_error: bool,
    /// Alias of `response_error`.
    pub response_body: String,
}

impl Default for ReturnOverrides {
    fn default() -> Self {
        ReturnOverrides {
            response_code: -1,
            response_error: String::new(),
            headers: HashMap::new(),
            override_error: false,
            response_body: String::new(),
        }
    }
}

/// The upstream response for `Response` hooks (Tyk's `ResponseObject`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResponseObject {
    /// Upstream status code.
    #[serde(deserialize_with = "lenient::i32")]
    pub status_code: i32,
    /// The body bytes (MessagePack bin).
    #[serde(with = "serde_bytes")]
    pub raw_body: Vec<u8>,
    /// The body as text; empty when not UTF-8 or `raw_body_only`.
    pub body: String,
    /// First value of each header.
    pub headers: HashMap<String, String>,
    /// Every header with all its values.
    pub multivalue_headers: Vec<Header>,
    /// Set instead of `raw_body` for large bodies when the plugin announced `mmap` support.
    pub raw_body_file: Option<BodyFile>,
}

/// One header with all its values (Tyk's `Header`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Every value, in order.
    pub values: Vec<String>,
}

/// A key's session (Tyk's `SessionState`). Sent back whole by `auth_check` hooks to install it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionState {
    /// Deprecated in Tyk; kept for round trips.
    #[serde(deserialize_with = "lenient::i64")]
    pub last_check: i64,
    /// Deprecated in Tyk; kept for round trips.
    pub allowance: f64,
    /// Requests allowed per `per` seconds.
    pub rate: f64,
    /// Rate window in seconds.
    pub per: f64,
    /// Expiry (unix seconds); 0 = never.
    #[serde(deserialize_with = "lenient::i64")]
    pub expires: i64,
    /// Quota size; -1 = unlimited.
    #[serde(deserialize_with = "lenient::i64")]
    pub quota_max: i64,
    /// When the quota renews (unix seconds).
    #[serde(deserialize_with = "lenient::i64")]
    pub quota_renews: i64,
    /// Quota left.
    #[serde(deserialize_with = "lenient::i64")]
    pub quota_remaining: i64,
    /// Quota period in seconds.
    #[serde(deserialize_with = "lenient::i64")]
    pub quota_renewal_rate: i64,
    /// API id → access definition; empty = every API.
    pub access_rights: HashMap<String, AccessDefinition>,
    /// Organisation id.
    pub org_id: String,
    /// OAuth client id.
    pub oauth_client_id: String,
    /// OAuth keys.
    pub oauth_keys: HashMap<String, String>,
    /// Basic auth credentials.
    pub basic_auth_data: BasicAuthData,
    /// JWT secret.
    pub jwt_data: JwtData,
    /// HMAC signing enabled.
    pub hmac_enabled: bool,
    /// HMAC secret.
    pub hmac_secret: String,
    /// An inactive key is refused (403).
    pub is_inactive: bool,
    /// Deprecated single policy id.
    pub apply_policy_id: String,
    /// When the analytics data expires.
    #[serde(deserialize_with = "lenient::i64")]
    pub data_expires: i64,
    /// Quota trigger monitor.
    pub monitor: Monitor,
    /// Record detailed analytics for this key.
    pub enable_detailed_recording: bool,
    /// Free-form metadata; `metadata["token"]` names the key for `auth_check`.
    pub metadata: HashMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Human-readable alias.
    pub alias: String,
    /// Last update time.
    pub last_updated: String,
    /// ID-extractor cache deadline (unix seconds).
    #[serde(deserialize_with = "lenient::i64")]
    pub id_extractor_deadline: i64,
    /// Session lifetime in seconds.
    #[serde(deserialize_with = "lenient::i64")]
    pub session_lifetime: i64,
    /// Policy ids to apply.
    pub apply_policies: Vec<String>,
    /// Client certificate id.
    pub certificate: String,
    /// GraphQL query depth limit.
    #[serde(deserialize_with = "lenient::i64")]
    pub max_query_depth: i64,
    /// Key id.
    pub key_id: String,
    /// `retain` or `delete`.
    pub post_expiry_action: String,
    /// Seconds to keep an expired key; -1 = never delete.
    #[serde(deserialize_with = "lenient::i64")]
    pub post_expiry_grace_period: i64,
}

/// Access to one API (Tyk's proto `AccessDefinition`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessDefinition {
    /// API name.
    pub api_name: String,
    /// API id.
    pub api_id: String,
    /// Allowed versions.
    pub versions: Vec<String>,
    /// Allowed URLs and methods.
    pub allowed_urls: Vec<AccessSpec>,
}

/// One allowed URL pattern with its methods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessSpec {
    /// URL pattern.
    pub url: String,
    /// Allowed methods.
    pub methods: Vec<String>,
}

/// Basic auth credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BasicAuthData {
    /// Password (or its hash).
    pub password: String,
    /// Hash algorithm.
    pub hash: String,
}

/// JWT data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtData {
    /// Shared secret.
    pub secret: String,
}

/// Quota trigger monitor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Monitor {
    /// Quota percentages that fire events.
    pub trigger_limits: Vec<f64>,
}

impl Object {
    /// A request header by name, trying the exact (Go-canonical) spelling first and then ignoring
    /// case, so `header("authorization")` works too.
    pub fn header(&self, name: &str) -> Option<&str> {
        lookup_ignore_case(&self.request.headers, name)
    }
}

impl MiniRequestObject {
    /// The request body, inline or from the file the gateway handed over (`raw_body_file`, only
    /// sent when the plugin announced `mmap`). Reading the file can fail if it vanished.
    pub fn body(&self) -> io::Result<Cow<'_, [u8]>> {
        body_of(&self.raw_body, self.raw_body_file.as_ref())
    }
}

impl ResponseObject {
    /// The response body, inline or from the file the gateway handed over.
    pub fn body_bytes(&self) -> io::Result<Cow<'_, [u8]>> {
        body_of(&self.raw_body, self.raw_body_file.as_ref())
    }
}

fn body_of<'a>(inline: &'a [u8], file: Option<&BodyFile>) -> io::Result<Cow<'a, [u8]>> {
    match file {
        Some(f) if !f.path.is_empty() => std::fs::read(&f.path).map(Cow::Owned).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read the body file {} from the gateway: {e}", f.path),
            )
        }),
        _ => Ok(Cow::Borrowed(inline)),
    }
}

fn lookup_ignore_case<'a>(map: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    if let Some(v) = map.get(name) {
        return Some(v.as_str());
    }
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A hook's answer: only the parts that changed. `ObjectPatch::default()` means "change nothing".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectPatch {
    /// Request changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestPatch>,
    /// A session to install (only `auth_check` hooks' sessions are used by the gateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionState>,
    /// Metadata to merge into the session; `auth_check` must set `token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<HashMap<String, String>>,
    /// Response changes (`Response` hooks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponsePatch>,
}

/// Request changes; every `None` field is left out of the frame and so left unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestPatch {
    /// Headers to set (replacing existing values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_headers: Option<HashMap<String, String>>,
    /// Headers to delete (applied before `set_headers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_headers: Option<Vec<String>>,
    /// New URL (path + query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Query parameters to set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_params: Option<HashMap<String, String>>,
    /// Query parameters to delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_params: Option<Vec<String>>,
    /// Answer the client directly instead of proxying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_overrides: Option<ReturnOverridesPatch>,
    /// New method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// New body; `Some(vec![])` empties it.
    #[serde(skip_serializing_if = "Option::is_none", with = "serde_bytes", default)]
    pub raw_body: Option<Vec<u8>>,
    /// New body handed over as a file the plugin wrote (the gateway deletes it after reading).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_body_file: Option<BodyFile>,
}

/// Override changes; `None` fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReturnOverridesPatch {
    /// Status to answer with; 400 or more (without `override_error`) renders an error body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_code: Option<i32>,
    /// Error message for codes of 400 or more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_error: Option<String>,
    /// Headers for the override response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<HashMap<String, String>>,
    /// Send `response_body` raw even for codes of 400 or more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_error: Option<bool>,
    /// Body for the override response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

/// Response changes for `Response` hooks; `None` fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResponsePatch {
    /// New status code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    /// New body; `Some(vec![])` empties it.
    #[serde(skip_serializing_if = "Option::is_none", with = "serde_bytes", default)]
    pub raw_body: Option<Vec<u8>>,
    /// New header map (first values); see Tyk's header sync rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<HashMap<String, String>>,
    /// New full header list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multivalue_headers: Option<Vec<Header>>,
    /// New body handed over as a file the plugin wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_body_file: Option<BodyFile>,
}

impl ObjectPatch {
    /// The request part, created empty on first use.
    pub fn request_mut(&mut self) -> &mut RequestPatch {
        self.request.get_or_insert_with(RequestPatch::default)
    }

    /// The response part, created empty on first use.
    pub fn response_mut(&mut self) -> &mut ResponsePatch {
        self.response.get_or_insert_with(ResponsePatch::default)
    }

    /// Set (or replace) a request header on the way to the upstream.
    pub fn set_header(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.request_mut()
            .set_headers
            .get_or_insert_with(HashMap::new)
            .insert(name.into(), value.into());
        self
    }

    /// Remove a request header before it reaches the upstream.
    pub fn delete_header(&mut self, name: impl Into<String>) -> &mut Self {
        self.request_mut()
            .delete_headers
            .get_or_insert_with(Vec::new)
            .push(name.into());
        self
    }

    /// Stop the chain and answer the client: codes of 400 or more become the gateway's standard
    /// error body with `message`; lower codes are sent with `message` as the raw body.
    pub fn respond(&mut self, code: i32, message: impl Into<String>) -> &mut Self {
        let message = message.into();
        let overrides = self
            .request_mut()
            .return_overrides
            .get_or_insert_with(ReturnOverridesPatch::default);
        overrides.response_code = Some(code);
        if code >= 400 {
            overrides.response_error = Some(message);
        } else {
            overrides.response_body = Some(message);
        }
        self
    }

    /// Set a response header (`Response` hooks), keeping the other headers the upstream sent.
    ///
    /// Tyk rebuilds response headers from what the hook returns, so this copies the original
    /// header map and multi-value list from `original` before changing them.
    pub fn set_response_header(
        &mut self,
        original: &ResponseObject,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> &mut Self {
        let name = name.into();
        let value = value.into();
        let patch = self.response_mut();
        let headers = patch
            .headers
            .get_or_insert_with(|| original.headers.clone());
        headers.insert(name.clone(), value.clone());
        let multi = patch
            .multivalue_headers
            .get_or_insert_with(|| original.multivalue_headers.clone());
        match multi.iter_mut().find(|h| h.key.eq_ignore_ascii_case(&name)) {
            Some(h) => h.values = vec![value],
            None => multi.push(Header {
                key: name,
                values: vec![value],
            }),
        }
        self
    }
}
