//! The phases of a request's life, in Tyk's order, and what a plugin's reply does to the request.
//!
//! ```text
//! pre hooks ─▶ auth_check (plugin auth) ─▶ post_key_auth hooks ─▶ post hooks ─▶ upstream ─▶ response hooks
//! ```
//! `auth_check` and `post_key_auth` never run on keyless APIs. This is the one implementation of
//! hook semantics: the pipe and gRPC transports only carry [`Object`]s; everything a reply means
//! (Tyk's `ObjectPostProcess`, the auth rules, the response rules) is decided here.

use std::sync::Arc;

use super::RequestEdits;
use crate::config::{ApiDefinition, HookDef};
use crate::coprocess::object::{
    HookType, MiniRequestObject, Object, PairMap, ResponseObject, ReturnOverrides, SessionState,
    StringMap,
};
use crate::http::headers::canonical_name_into;
use crate::http::RequestHead;
use serde_bytes::ByteBuf;

/// Where the request is in the chain. Hook phases carry the index of the next hook to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Nothing run yet.
    #[default]
    Start,
    /// Running `pre` hooks.
    Pre(usize),
    /// Authentication (plugin `auth_check` or standard token auth).
    Auth,
    /// Standard token auth after plugin auth (`use_standard_auth`: both must pass).
    AuthToken,
    /// Enforcing the authenticated session (expiry, access rights, rate limit, quota).
    Enforce,
    /// Running `post_key_auth` hooks.
    PostKeyAuth(usize),
    /// Running `post` hooks.
    Post(usize),
    /// Proxying.
    Upstream,
    /// Running `response` hooks.
    Response(usize),
}

/// A response the gateway will write itself: a plugin's short-circuit, an error, or an upstream
/// response buffered for response hooks.
#[derive(Debug, Default, Clone)]
pub struct LocalResponse {
    /// Status code.
    pub status: u16,
    /// Headers, in order (names as given).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Content-Type to add (Tyk error bodies); `None` leaves whatever `headers` carry.
    pub content_type: Option<&'static str>,
}

impl LocalResponse {
    /// A Tyk-style JSON error, with extra headers (e.g. from a plugin's return_overrides).
    pub fn error(status: u16, message: &str, headers: Vec<(String, String)>) -> LocalResponse {
        LocalResponse {
            status,
            headers,
            body: crate::http::response::error_body(message).into_bytes(),
            content_type: Some("application/json"),
        }
    }
}

/// Per-request chain state, reused across the requests of a connection.
#[derive(Debug, Default)]
pub struct RequestState {
    /// Current phase.
    pub phase: Phase,
    /// Plugin changes to the request.
    pub edits: Option<Box<RequestEdits>>,
    /// The buffered request body, when a hook needs it.
    pub body: Vec<u8>,
    /// `body` holds the whole request body.
    pub body_buffered: bool,
    /// Buffered upstream response for response hooks.
    pub response: Option<Box<LocalResponse>>,
    /// The session installed by authentication.
    pub session: Option<Box<SessionState>>,
    /// The hook call in flight: (call id, hook type, whether it fails open).
    pub pending: Option<PendingCall>,
    /// Response hooks will run: the upstream response is buffered for them.
    pub response_hooks: bool,
    /// The key the session's counters belong to (token, or the ID extractor's session id).
    pub session_key: Option<String>,
    /// The ID extractor's session id for the auth hook in flight.
    pub auth_id: Option<String>,
    /// Headers added to the response (Tyk's X-RateLimit-*).
    pub resp_headers: Vec<(String, String)>,
    /// The request goes to the Gateway API (/tyk/), not through the chain.
    pub admin: bool,
    /// A store operation for this request runs on a store thread.
    pub store_pending: bool,
    /// The ID extractor cache was consulted (and missed) for this request.
    pub cache_checked: bool,
    /// The previous request's edits, cleared, kept so the next request's first edit does not
    /// allocate (keep-alive connections reuse their `RequestState`).
    pub spare_edits: Option<Box<RequestEdits>>,
    /// The object of the pipe call in flight and its hook, kept only when gRPC fallback is on.
    pub retry: Option<(Box<Object>, HookDef)>,
    /// A body file written for the call in flight, deleted when it is answered.
    pub spilled: Option<crate::coprocess::object::RawBodyFile>,
}

/// A hook call waiting for its reply.
#[derive(Debug, Clone, Copy)]
pub struct PendingCall {
    /// Transport call id.
    pub id: u64,
    /// Which kind of hook.
    pub hook: HookType,
    /// Continue unchanged if the call fails.
    pub fail_open: bool,
    /// Sent over gRPC (call ids are per transport).
    pub grpc: bool,
}

impl RequestState {
    /// Clears for the next request, keeping buffer capacity.
    pub fn reset(&mut self) {
        self.phase = Phase::Start;
        if let Some(mut e) = self.edits.take() {
            e.clear();
            self.spare_edits = Some(e);
        }
        self.body.clear();
        self.body_buffered = false;
        self.response = None;
        self.session = None;
        self.pending = None;
        self.response_hooks = false;
        self.session_key = None;
        self.auth_id = None;
        self.resp_headers.clear();
        self.admin = false;
        self.store_pending = false;
        self.cache_checked = false;
        self.retry = None;
        if let Some(f) = self.spilled.take() {
            crate::coprocess::bodyfile::remove(&f);
        }
    }

    /// The edits, created on first use.
    pub fn edits_mut(&mut self) -> &mut RequestEdits {
        let spare = &mut self.spare_edits;
        self.edits
            .get_or_insert_with(|| spare.take().unwrap_or_default())
    }
}

/// What the chain does next for a request.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// Call this hook (for `CustomKeyCheck`, the caller first consults the ID extractor cache).
    Hook(HookType, &'a HookDef),
    /// Tyk's standard token auth (`AuthKey`): a protected API without plugin auth.
    TokenAuth,
    /// Enforce the authenticated session.
    Enforce,
    /// Proxy the request.
    Upstream,
}

/// The next step of the request phases for `api`, advancing `phase` past it. `active` tells
/// whether a hook is served at all (plugins on, a transport for the API, the plugin implements
/// it). When plugin auth is configured but not served, the API falls back to token auth, as Tyk
/// does when rich plugins are disabled.
pub fn next_step<'a>(
    api: &'a ApiDefinition,
    phase: &mut Phase,
    active: &dyn Fn(&HookDef) -> bool,
    ignored: bool,
) -> Step<'a> {
    let mw = &api.custom_middleware;
    loop {
        match *phase {
            Phase::Start => *phase = Phase::Pre(0),
            Phase::Pre(i) => match mw.pre.get(i) {
                Some(h) => {
                    *phase = Phase::Pre(i + 1);
                    if active(h) {
                        return Step::Hook(HookType::Pre, h);
                    }
                }
                None => {
                    *phase = if api.use_keyless {
                        Phase::Post(0)
                    } else {
                        Phase::Auth
                    }
                }
            },
            Phase::Auth => {
                if ignored {
                    // Tyk's ignored paths skip authentication and the session checks.
                    *phase = Phase::PostKeyAuth(0);
                    continue;
                }
                if let Some(h) = api.auth_hook() {
                    if active(h) {
                        *phase = if api.use_standard_auth {
                            Phase::AuthToken
                        } else {
                            Phase::Enforce
                        };
                        return Step::Hook(HookType::CustomKeyCheck, h);
                    }
                }
                *phase = Phase::Enforce;
                return Step::TokenAuth;
            }
            Phase::AuthToken => {
                *phase = Phase::Enforce;
                return Step::TokenAuth;
            }
            Phase::Enforce => {
                *phase = Phase::PostKeyAuth(0);
                return Step::Enforce;
            }
            Phase::PostKeyAuth(i) => match mw.post_key_auth.get(i) {
                Some(h) => {
                    *phase = Phase::PostKeyAuth(i + 1);
                    if active(h) {
                        return Step::Hook(HookType::PostKeyAuth, h);
                    }
                }
                None => *phase = Phase::Post(0),
            },
            Phase::Post(i) => match mw.post.get(i) {
                Some(h) => {
                    *phase = Phase::Post(i + 1);
                    if active(h) {
                        return Step::Hook(HookType::Post, h);
                    }
                }
                None => {
                    *phase = Phase::Upstream;
                    return Step::Upstream;
                }
            },
            Phase::Upstream | Phase::Response(_) => return Step::Upstream,
        }
    }
}

/// The next response hook, advancing `phase`.
pub fn next_response_hook<'a>(
    api: &'a ApiDefinition,
    phase: &mut Phase,
    active: &dyn Fn(&HookDef) -> bool,
) -> Option<&'a HookDef> {
    loop {
        let i = match *phase {
            Phase::Response(i) => i,
            _ => 0,
        };
        let h = api.custom_middleware.response.get(i)?;
        *phase = Phase::Response(i + 1);
        if active(h) {
            return Some(h);
        }
    }
}

/// True when any request-phase hook of `api` will be called, so the body must be buffered first.
pub fn has_request_hooks(api: &ApiDefinition, active: &dyn Fn(&HookDef) -> bool) -> bool {
    let mut phase = Phase::Start;
    loop {
        match next_step(api, &mut phase, active, false) {
            Step::Hook(..) => return true,
            Step::Upstream => return false,
            Step::TokenAuth | Step::Enforce => {}
        }
    }
}

/// True when any response hook of `api` will be called, so the response must be buffered.
pub fn has_response_hooks(api: &ApiDefinition, active: &dyn Fn(&HookDef) -> bool) -> bool {
    api.custom_middleware.response.iter().any(active)
}

/// The request as the chain currently sees it: the parsed head plus earlier plugins' edits.
pub struct RequestView<'a> {
    /// Client read buffer.
    pub buf: &'a [u8],
    /// Parsed head.
    pub head: &'a RequestHead,
    /// Edits so far.
    pub edits: Option<&'a RequestEdits>,
    /// Buffered body (empty when not buffered).
    pub body: &'a [u8],
    /// "http" or "https".
    pub scheme: &'a str,
}

impl RequestView<'_> {
    fn method(&self) -> &str {
        self.edits
            .and_then(|e| e.method.as_deref())
            .unwrap_or_else(|| self.head.method.str(self.buf))
    }

    fn path(&self) -> &str {
        self.edits
            .and_then(|e| e.path.as_deref())
            .unwrap_or_else(|| self.head.path(self.buf))
    }

    fn query(&self) -> Option<&str> {
        match self.edits.and_then(|e| e.query.as_deref()) {
            Some(q) => Some(q),
            None => self.head.query(self.buf),
        }
    }

    fn body(&self) -> &[u8] {
        self.edits
            .and_then(|e| e.body.as_deref())
            .unwrap_or(self.body)
    }

    /// Headers as Tyk sends them: Go-canonical names, first value only, deleted ones removed, set
    /// ones replaced, plus `Host`.
    fn headers(&self) -> StringMap {
        let mut map: StringMap = PairMap(Vec::with_capacity(self.head.headers.len() + 2));
        for h in &self.head.headers {
            let name = h.name.of(self.buf);
            if let Some(e) = self.edits {
                if e.removes_header(name) {
                    continue;
                }
            }
            let mut key = String::with_capacity(name.len());
            canonical_name_into(name, &mut key);
            if key == "Host" || map.get(&key).is_some() {
                continue;
            }
            let value = String::from_utf8_lossy(h.value.of(self.buf)).into_owned();
            map.push(key, value);
        }
        if let Some(e) = self.edits {
            for (k, v) in &e.set_headers {
                let mut key = String::with_capacity(k.len());
                canonical_name_into(k.as_bytes(), &mut key);
                map.insert(key, v.clone());
            }
        }
        if let Some(host) = self.head.host {
            map.push("Host", host.str(self.buf).to_string());
        }
        map
    }

    fn params(&self) -> StringMap {
        let mut map = StringMap::new();
        if let Some(q) = self.query() {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                if map.get(&k).is_none() {
                    map.push(k.into_owned(), v.into_owned());
                }
            }
        }
        map
    }

    fn url(&self) -> String {
        match self.query() {
            Some(q) => format!("{}?{}", self.path(), q),
            None => self.path().to_string(),
        }
    }

    /// Builds Tyk's MiniRequestObject for this request.
    pub fn mini_request(&self, send_body: bool, raw_body_only: bool) -> MiniRequestObject {
        let body = if send_body { self.body() } else { &[][..] };
        let body_str = if raw_body_only {
            String::new()
        } else {
            std::str::from_utf8(body).unwrap_or("").to_string()
        };
        MiniRequestObject {
            headers: Some(self.headers()),
            set_headers: Some(StringMap::new()),
            delete_headers: Some(Vec::new()),
            body: Some(body_str),
            url: Some(self.url()),
            params: Some(self.params()),
            add_params: Some(StringMap::new()),
            extended_params: Some(StringMap::new()),
            delete_params: Some(Vec::new()),
            return_overrides: Some(ReturnOverrides {
                response_code: Some(-1),
                response_error: Some(String::new()),
                headers: Some(StringMap::new()),
                override_error: Some(false),
                response_body: Some(String::new()),
            }),
            method: Some(self.method().to_string()),
            request_uri: Some(self.head.target.str(self.buf).to_string()).map(|s| {
                if s.is_empty() {
                    "/".to_string()
                } else {
                    s
                }
            }),
            scheme: Some(self.scheme.to_string()),
            raw_body: Some(ByteBuf::from(body.to_vec())),
            raw_body_file: None,
        }
    }
}

/// Tyk's `spec` map: APIID, OrgID, bundle_hash and (when enabled) config_data.
pub fn spec_map(api: &ApiDefinition) -> StringMap {
    let mut spec = StringMap::new();
    spec.push("OrgID", api.org_id.clone());
    spec.push("APIID", api.api_id.clone());
    spec.push("bundle_hash", api.bundle_hash.clone());
    if let Some(cd) = &api.config_data {
        spec.push("config_data", cd.clone());
    }
    spec
}

/// Builds the object for a request-phase hook.
pub fn request_object(
    hook: HookType,
    def: &HookDef,
    api: &ApiDefinition,
    view: &RequestView<'_>,
    session: Option<&SessionState>,
    send_body: bool,
) -> Object {
    let session = match hook {
        HookType::Pre | HookType::CustomKeyCheck => None,
        _ => session.cloned().map(Box::new),
    };
    let metadata = session
        .as_ref()
        .and_then(|s| s.metadata.clone())
        .unwrap_or_default();
    Object {
        hook_type: Some(hook),
        hook_name: Some(def.name.clone()),
        request: Some(view.mini_request(send_body, def.raw_body_only)),
        session,
        metadata: Some(metadata),
        spec: Some(spec_map(api)),
        response: None,
    }
}

/// Builds the object for a response hook.
pub fn response_object(
    def: &HookDef,
    api: &ApiDefinition,
    view: &RequestView<'_>,
    session: Option<&SessionState>,
    resp: &LocalResponse,
    send_body: bool,
) -> Object {
    let session = session.cloned().unwrap_or_default();
    let metadata = session.metadata.clone().unwrap_or_default();
    let mut headers = StringMap::new();
    let mut multi: Vec<crate::coprocess::object::Header> = Vec::new();
    for (k, v) in &resp.headers {
        let mut key = String::with_capacity(k.len());
        canonical_name_into(k.as_bytes(), &mut key);
        if headers.get(&key).is_none() {
            headers.push(key.clone(), v.clone());
        }
        match multi
            .iter_mut()
            .find(|h| h.key.as_deref() == Some(key.as_str()))
        {
            Some(h) => h.values.get_or_insert_with(Vec::new).push(v.clone()),
            None => multi.push(crate::coprocess::object::Header {
                key: Some(key),
                values: Some(vec![v.clone()]),
            }),
        }
    }
    let body_str = if def.raw_body_only {
        None
    } else {
        std::str::from_utf8(&resp.body).ok().map(str::to_string)
    };
    Object {
        hook_type: Some(HookType::Response),
        hook_name: Some(def.name.clone()),
        request: Some(view.mini_request(send_body, def.raw_body_only)),
        session: Some(Box::new(session)),
        metadata: Some(metadata),
        spec: Some(spec_map(api)),
        response: Some(ResponseObject {
            status_code: Some(resp.status as i32),
            raw_body: Some(ByteBuf::from(resp.body.clone())),
            body: body_str,
            headers: Some(headers),
            multivalue_headers: Some(multi),
            raw_body_file: None,
        }),
    }
}

/// What the chain does after a hook's reply was applied.
#[derive(Debug)]
pub enum Outcome {
    /// Go on with the next phase.
    Continue,
    /// Answer the client now with this response.
    Respond(LocalResponse),
}

/// Message for a failed dispatch: the auth hook answers 403 "Key not authorised" and every other
/// hook 500 "Middleware error", as Tyk does.
pub fn dispatch_failure(hook: HookType) -> LocalResponse {
    if hook == HookType::CustomKeyCheck {
        LocalResponse::error(403, "Key not authorised", Vec::new())
    } else {
        LocalResponse::error(500, "Middleware error", Vec::new())
    }
}

/// Applies a request-phase hook's reply (Tyk's `ObjectPostProcess` and the auth rules).
///
/// A field absent from the reply leaves the request unchanged; a present one is applied as Tyk
/// applies it: `raw_body` replaces the body (`body` the string is ignored), `delete_headers` then
/// `set_headers`, `delete_params`/`add_params` on the current query (re-encoded with sorted keys),
/// `url` replaces the path, `method` the method, and `return_overrides` may answer the request.
pub fn apply_request_reply(
    hook: HookType,
    api: &Arc<ApiDefinition>,
    view: &RequestView<'_>,
    state: &mut RequestState,
    reply: Object,
) -> Outcome {
    let Object {
        request,
        session,
        metadata,
        ..
    } = reply;
    if let Some(req) = request {
        // Body: raw_body is authoritative on return.
        if let Some(raw) = req.raw_body {
            let raw = raw.into_vec();
            if raw.as_slice() != view.body() {
                state.edits_mut().body = Some(raw);
            }
        }
        // Headers: delete, then set (replacing).
        if let Some(del) = req.delete_headers {
            for name in del {
                state.edits_mut().delete_header(name);
            }
        }
        if let Some(set) = req.set_headers {
            for (k, v) in set.0 {
                if !valid_header(&k, &v) {
                    tracing::warn!(api = %api.api_id, header = ?k, "plugin set an invalid header (name must be a token, value without CR/LF/NUL)");
                    return Outcome::Respond(middleware_error());
                }
                // Tyk's setCustomHeader canonicalizes the name.
                let mut name = k;
                crate::http::headers::canonicalize_in_place(&mut name);
                state.edits_mut().set_header(name, v);
            }
        }
        // Query parameters: from the current query, delete, then add (replace).
        let adds = req.add_params.map(|p| p.0).unwrap_or_default();
        let dels = req.delete_params.unwrap_or_default();
        if !adds.is_empty() || !dels.is_empty() {
            let mut pairs: Vec<(String, String)> = view
                .query()
                .map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .into_owned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            pairs.retain(|(k, _)| !dels.iter().any(|d| d == k));
            for (k, v) in adds {
                pairs.retain(|(pk, _)| *pk != k);
                pairs.push((k, v));
            }
            // Go's url.Values.Encode sorts by key (stable for equal keys).
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            let q = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter())
                .finish();
            state.edits_mut().query = Some(q);
        }
        // URL: a new path (its query is not taken: Tyk recomputes the query from params).
        if let Some(url) = req.url {
            let current = view.url();
            if url != current {
                // Go's url.ParseRequestURI: absolute path, no control characters.
                if !url.starts_with('/') || url.bytes().any(|b| b < 0x20 || b == 0x7f) {
                    tracing::warn!(api = %api.api_id, url = ?url, "plugin returned an invalid url");
                    return Outcome::Respond(middleware_error());
                }
                let raw = url.split(['?', '#']).next().unwrap_or("/");
                let path = escape_path(raw);
                if path != view.path() {
                    state.edits_mut().path = Some(path);
                }
            }
        }
        if let Some(m) = req.method {
            if !m.is_empty() && m != view.method() {
                if m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    state.edits_mut().method = Some(m);
                } else {
                    return Outcome::Respond(LocalResponse::error(
                        500,
                        "Middleware error",
                        Vec::new(),
                    ));
                }
            }
        }
        if let Some(ro) = req.return_overrides {
            if let Some(resp) = override_response(ro) {
                if resp.headers.iter().any(|(k, v)| !valid_header(k, v)) {
                    tracing::warn!(api = %api.api_id, "plugin's return_overrides carry an invalid header");
                    return Outcome::Respond(middleware_error());
                }
                return Outcome::Respond(resp);
            }
        }
    }
    if hook == HookType::CustomKeyCheck {
        // A session and metadata["token"] are both required (Tyk: 403 "Forbidden" otherwise).
        let token = metadata
            .as_ref()
            .and_then(|m| m.get("token").cloned())
            .or_else(|| {
                session
                    .as_ref()
                    .and_then(|s| s.metadata.as_ref())
                    .and_then(|m| m.get("token").cloned())
            })
            .unwrap_or_default();
        let Some(mut session) = session else {
            return Outcome::Respond(LocalResponse::error(403, "Forbidden", Vec::new()));
        };
        if token.is_empty() {
            return Outcome::Respond(LocalResponse::error(403, "Forbidden", Vec::new()));
        }
        // object.metadata is merged into the session's metadata.
        if let Some(md) = metadata {
            let target = session.metadata.get_or_insert_with(StringMap::new);
            for (k, v) in md.0 {
                target.insert(k, v);
            }
        }
        session.org_id = Some(api.org_id.clone());
        session.key_id = Some(token);
        state.session = Some(session);
    }
    // Session changes from other hooks are discarded, as in Tyk.
    Outcome::Continue
}

/// Tyk's return_overrides rules: an error (code >= 400 without override_error) renders the JSON
/// error template with the plugin's message ("Key not authorised" when empty); any other positive
/// code answers with the plugin's headers and raw body.
fn override_response(ro: ReturnOverrides) -> Option<LocalResponse> {
    let code = ro.response_code.unwrap_or(-1);
    if code <= 0 {
        return None;
    }
    let mut body = ro.response_body.unwrap_or_default();
    if let Some(err) = ro.response_error {
        if !err.is_empty() {
            body = err;
        }
    }
    let headers: Vec<(String, String)> = ro.headers.map(|h| h.0).unwrap_or_default();
    let status = code.clamp(100, 999) as u16;
    if code >= 400 && !ro.override_error.unwrap_or(false) {
        let msg = if body.is_empty() {
            "Key not authorised"
        } else {
            body.as_str()
        };
        return Some(LocalResponse::error(status, msg, headers));
    }
    Some(LocalResponse {
        status,
        headers,
        body: body.into_bytes(),
        content_type: None,
    })
}

/// Applies a response hook's reply to the buffered response (Tyk's
/// `CustomMiddlewareResponseHook`): headers from `headers`/`multivalue_headers`, body from
/// `raw_body`, status from `status_code`. A reply without `response` leaves the response
/// unchanged (the pipe protocol's "absent = unchanged"; the worker answers 500 for gRPC replies
/// without one, as Tyk does).
pub fn apply_response_reply(resp: &mut LocalResponse, reply: Object) -> Result<(), LocalResponse> {
    // The pipe protocol lets a plugin send only what changed, so an absent `response` means
    // unchanged (Tyk's gRPC path answers 500 there; echoing servers always send it back).
    let Some(r) = reply.response else {
        return Ok(());
    };
    if r.headers.is_some() || r.multivalue_headers.is_some() {
        // Start from the multivalue list (the reply's, else the current headers).
        let mut multi: Vec<(String, Vec<String>)> = match r.multivalue_headers {
            Some(m) => m
                .into_iter()
                .filter_map(|h| Some((h.key?, h.values.unwrap_or_default())))
                .collect(),
            None => {
                let mut v: Vec<(String, Vec<String>)> = Vec::new();
                for (k, val) in &resp.headers {
                    match v.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(k)) {
                        Some((_, vals)) => vals.push(val.clone()),
                        None => v.push((k.clone(), vec![val.clone()])),
                    }
                }
                v
            }
        };
        if let Some(h) = r.headers {
            // Tyk's syncHeadersAndMultiValueHeaders: each key in `headers` replaces the first value
            // of its multivalue entry (or adds one); entries not in `headers` are dropped.
            let mut synced: Vec<(String, Vec<String>)> = Vec::with_capacity(h.len());
            for (k, v) in h.0 {
                match multi.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(&k)) {
                    Some((_, vals)) => {
                        let mut vals = std::mem::take(vals);
                        if vals.is_empty() {
                            vals.push(v);
                        } else {
                            vals[0] = v;
                        }
                        synced.push((k, vals));
                    }
                    None => synced.push((k, vec![v])),
                }
            }
            multi = synced;
        }
        resp.headers = multi
            .into_iter()
            .flat_map(|(k, vals)| {
                let mut key = String::with_capacity(k.len());
                canonical_name_into(k.as_bytes(), &mut key);
                vals.into_iter().map(move |v| (key.clone(), v))
            })
            .filter(|(k, _)| {
                !k.eq_ignore_ascii_case("content-length")
                    && !crate::http::headers::is_hop_by_hop(k.as_bytes())
            })
            .collect();
    }
    if resp.headers.iter().any(|(k, v)| !valid_header(k, v)) {
        tracing::warn!("response hook returned an invalid header");
        return Err(middleware_error());
    }
    if let Some(b) = r.raw_body {
        resp.body = b.into_vec();
    }
    if let Some(code) = r.status_code {
        if (100..=999).contains(&code) {
            resp.status = code as u16;
        }
    }
    Ok(())
}

fn middleware_error() -> LocalResponse {
    LocalResponse::error(500, "Middleware error", Vec::new())
}

/// A header a plugin may set: the name is an HTTP token and the value holds no control character
/// but HTAB (RFC 9110 5.5). CR, LF and NUL could split the message it is written into; the other
/// controls make a request the upstream must reject (found by the `plugin_reply` fuzz target),
/// so they are refused here, as Go's net/http refuses them in Tyk.
pub fn valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// Percent-encodes the bytes of a path that may not appear raw in a request target (as Go's
/// `URL.EscapedPath` does for a path without a valid raw form); existing `%XX` escapes are kept.
pub fn escape_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_paths_like_go() {
        assert_eq!(escape_path("/a b"), "/a%20b");
        assert_eq!(escape_path("/ok/%41/x"), "/ok/%41/x");
        assert_eq!(escape_path("/é"), "/%C3%A9");
    }

    #[test]
    fn header_validation() {
        assert!(valid_header("X-Ok", "fine value"));
        assert!(!valid_header("X-Evil", "a\r\nInjected: yes"));
        assert!(!valid_header("Bad Name", "v"));
        assert!(!valid_header("", "v"));
        // Found by fuzzing: other controls make a request the upstream must reject.
        assert!(!valid_header("X-Ctl", "a\x1cb"));
        assert!(!valid_header("X-Del", "a\x7fb"));
        assert!(valid_header("X-Tab", "a\tb"));
        assert!(valid_header("X-Utf8", "caf\u{e9}"));
    }
}
