//! A request-phase hook object serialized straight from the parsed request.
//!
//! [`chain::request_object`] builds an owned [`Object`](crate::coprocess::object::Object): about
//! thirty small allocations per hook call (every header name and value, the URL, the spec map).
//! The pipe transport only needs the object's MessagePack bytes, so for the common case — the
//! first hook of a request, before any plugin changed it — [`RequestHookObject`] writes the same
//! bytes from borrowed slices of the read buffer, allocating nothing. It is used only where it is
//! byte-for-byte identical to the owned object (checked by the tests below); anything else
//! (earlier edits, a fragment in the target, a huge query string) returns `None` from
//! [`RequestHookObject::new`] and the caller builds the owned object as before.

use std::borrow::Cow;

use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use super::chain::RequestView;
use crate::config::{ApiDefinition, HookDef};
use crate::coprocess::object::{HookType, ReturnOverrides, SessionState};

/// Query strings with more pairs than this take the owned path (de-duplication here is
/// quadratic, which is cheaper than allocating only for short queries).
const MAX_BORROWED_PARAMS: usize = 32;
/// Header names longer than this take the owned path (the canonical name is formed on the stack).
const MAX_NAME: usize = 128;

/// Serializes exactly as `chain::request_object(hook, def, api, view, session, send_body)` does.
pub struct RequestHookObject<'a> {
    hook: HookType,
    def: &'a HookDef,
    api: &'a ApiDefinition,
    view: &'a RequestView<'a>,
    session: Option<&'a SessionState>,
    body: &'a [u8],
    target: &'a str,
}

impl<'a> RequestHookObject<'a> {
    /// The borrowed object, or `None` when the owned one must be built instead (see module docs).
    pub fn new(
        hook: HookType,
        def: &'a HookDef,
        api: &'a ApiDefinition,
        view: &'a RequestView<'a>,
        session: Option<&'a SessionState>,
        send_body: bool,
    ) -> Option<RequestHookObject<'a>> {
        if view.edits.is_some() || hook == HookType::Response {
            return None;
        }
        let head = view.head;
        let target = std::str::from_utf8(&view.buf[head.target.start..head.target.end]).ok()?;
        // `url` is path + "?" + query: the target itself unless it carries a fragment.
        if target.is_empty() || target.contains('#') {
            return None;
        }
        if let Some(q) = head.query(view.buf) {
            if q.bytes().filter(|&b| b == b'&').count() >= MAX_BORROWED_PARAMS {
                return None;
            }
        }
        if head
            .headers
            .iter()
            .any(|h| h.name.of(view.buf).len() > MAX_NAME)
        {
            return None;
        }
        let body = if send_body { view.body } else { &[][..] };
        Some(RequestHookObject {
            hook,
            def,
            api,
            view,
            session,
            body,
            target,
        })
    }

    fn session(&self) -> Option<&'a SessionState> {
        match self.hook {
            HookType::Pre | HookType::CustomKeyCheck => None,
            _ => self.session,
        }
    }
}

impl Serialize for RequestHookObject<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let session = self.session();
        let mut m = s.serialize_struct("Object", if session.is_some() { 6 } else { 5 })?;
        m.serialize_field("hook_type", &self.hook)?;
        m.serialize_field("hook_name", &self.def.name)?;
        m.serialize_field("request", &MiniRequest(self))?;
        if let Some(session) = session {
            m.serialize_field("session", session)?;
        }
        match session.and_then(|s| s.metadata.as_ref()) {
            Some(md) => m.serialize_field("metadata", md)?,
            None => m.serialize_field("metadata", &EmptyMap)?,
        }
        m.serialize_field("spec", &Spec(self.api))?;
        m.end()
    }
}

struct MiniRequest<'a, 'b>(&'b RequestHookObject<'a>);

impl Serialize for MiniRequest<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let o = self.0;
        let view = o.view;
        let body_str = if o.def.raw_body_only {
            ""
        } else {
            std::str::from_utf8(o.body).unwrap_or("")
        };
        let mut m = s.serialize_struct("MiniRequestObject", 14)?;
        m.serialize_field("headers", &Headers(view))?;
        m.serialize_field("set_headers", &EmptyMap)?;
        m.serialize_field("delete_headers", &EmptySeq)?;
        m.serialize_field("body", body_str)?;
        m.serialize_field("url", o.target)?;
        m.serialize_field("params", &Params(view.head.query(view.buf)))?;
        m.serialize_field("add_params", &EmptyMap)?;
        m.serialize_field("extended_params", &EmptyMap)?;
        m.serialize_field("delete_params", &EmptySeq)?;
        m.serialize_field(
            "return_overrides",
            &ReturnOverrides {
                response_code: Some(-1),
                response_error: Some(String::new()),
                headers: Some(Default::default()),
                override_error: Some(false),
                response_body: Some(String::new()),
            },
        )?;
        m.serialize_field("method", view.head.method.str(view.buf))?;
        m.serialize_field("request_uri", o.target)?;
        m.serialize_field("scheme", view.scheme)?;
        m.serialize_field("raw_body", serde_bytes::Bytes::new(o.body))?;
        m.end()
    }
}

/// The client's headers as Tyk sends them: Go-canonical names, first value only, `Host` last.
struct Headers<'a, 'b>(&'b RequestView<'a>);

impl Headers<'_, '_> {
    /// Bit i set: header i is sent (not `Host`, not a repeat of an earlier name). `new` declines
    /// requests with more than 64 headers, so one word holds the set.
    fn kept(&self) -> u64 {
        let buf = self.0.buf;
        let hs = &self.0.head.headers;
        let mut kept = 0u64;
        for (i, h) in hs.iter().enumerate().take(64) {
            let name = h.name.of(buf);
            if !name.eq_ignore_ascii_case(b"host")
                && !hs[..i]
                    .iter()
                    .any(|e| e.name.of(buf).eq_ignore_ascii_case(name))
            {
                kept |= 1 << i;
            }
        }
        kept
    }
}

impl Serialize for Headers<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let view = self.0;
        let host = view.head.host.map(|h| h.str(view.buf));
        let kept = self.kept();
        let n = kept.count_ones() as usize + usize::from(host.is_some());
        let mut m = s.serialize_map(Some(n))?;
        let mut name_buf = [0u8; MAX_NAME];
        for (i, h) in view.head.headers.iter().enumerate().take(64) {
            if kept & (1 << i) == 0 {
                continue;
            }
            let name = canonical_on_stack(h.name.of(view.buf), &mut name_buf);
            let value: Cow<'_, str> = String::from_utf8_lossy(h.value.of(view.buf));
            m.serialize_entry(&*name, &*value)?;
        }
        if let Some(host) = host {
            m.serialize_entry("Host", host)?;
        }
        m.end()
    }
}

/// Go's canonical header name (as `canonical_name_into`), formed in `buf`; names that are not
/// tokens are kept as sent. `new` guarantees `name.len() <= MAX_NAME`.
fn canonical_on_stack<'a>(name: &'a [u8], buf: &'a mut [u8; MAX_NAME]) -> Cow<'a, str> {
    let valid = name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid || name.len() > MAX_NAME {
        return String::from_utf8_lossy(name);
    }
    let mut upper = true;
    for (i, &b) in name.iter().enumerate() {
        buf[i] = if upper {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        };
        upper = b == b'-';
    }
    // Token bytes are ASCII, so this never fails; the fallback keeps it panic-free.
    match std::str::from_utf8(&buf[..name.len()]) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(name),
    }
}

/// The query's parameters, first value of each name, decoded (Tyk's `params`).
struct Params<'a>(Option<&'a str>);

impl Serialize for Params<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let q = self.0.unwrap_or("").as_bytes();
        let first = |i: usize, key: &str| {
            !form_urlencoded::parse(q)
                .take(i)
                .any(|(k, _)| k.as_ref() == key)
        };
        let n = form_urlencoded::parse(q)
            .enumerate()
            .filter(|(i, (k, _))| first(*i, k))
            .count();
        let mut m = s.serialize_map(Some(n))?;
        for (i, (k, v)) in form_urlencoded::parse(q).enumerate() {
            if first(i, &k) {
                m.serialize_entry(&*k, &*v)?;
            }
        }
        m.end()
    }
}

/// Tyk's `spec` map, as `chain::spec_map` builds it.
struct Spec<'a>(&'a ApiDefinition);

impl Serialize for Spec<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let api = self.0;
        let mut m = s.serialize_map(Some(3 + usize::from(api.config_data.is_some())))?;
        m.serialize_entry("OrgID", &api.org_id)?;
        m.serialize_entry("APIID", &api.api_id)?;
        m.serialize_entry("bundle_hash", &api.bundle_hash)?;
        if let Some(cd) = &api.config_data {
            m.serialize_entry("config_data", cd)?;
        }
        m.end()
    }
}

struct EmptyMap;

impl Serialize for EmptyMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_map(Some(0))?.end()
    }
}

struct EmptySeq;

impl Serialize for EmptySeq {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_seq(Some(0))?.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coprocess::frame::encode_dispatch;
    use crate::http::{parse_request, RequestHead};
    use crate::middleware::chain::request_object;
    use crate::middleware::RequestEdits;

    fn api() -> ApiDefinition {
        let v = serde_json::json!({
            "api_id": "api-1", "org_id": "org-1",
            "proxy": {"listen_path": "/api/", "target_url": "http://127.0.0.1:1/"},
            "config_data": {"b": [1, 2], "a": "x"},
        });
        let mut issues = Default::default();
        let api =
            crate::config::api::api_from_value(&v, "", std::path::Path::new("t.json"), &mut issues)
                .expect("valid definition");
        assert!(api.config_data.is_some());
        api
    }

    fn def(raw_body_only: bool) -> HookDef {
        HookDef {
            name: "MyHook".into(),
            path: String::new(),
            require_session: false,
            raw_body_only,
            timeout: None,
            fail_open: None,
        }
    }

    /// Encodes both ways; `None` when the borrowed object declined.
    fn both(
        raw: &[u8],
        hook: HookType,
        session: Option<&SessionState>,
        raw_body_only: bool,
        edits: Option<&RequestEdits>,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut head = RequestHead::default();
        assert!(parse_request(raw, &mut head, 64 << 10).expect("parses"));
        let view = RequestView {
            buf: raw,
            head: &head,
            edits,
            body: &raw[head.head_len..],
            scheme: "http",
        };
        let api = api();
        let d = def(raw_body_only);
        let owned = request_object(hook, &d, &api, &view, session, true);
        let mut a = Vec::new();
        encode_dispatch(&mut a, 9, &owned, 1 << 20).expect("owned encodes");
        let borrowed = RequestHookObject::new(hook, &d, &api, &view, session, true)?;
        let mut b = Vec::new();
        encode_dispatch(&mut b, 9, &borrowed, 1 << 20).expect("borrowed encodes");
        Some((a, b))
    }

    const REQ: &[u8] = b"POST /api/orders/1?expand=items&x=%20y&expand=again&flag HTTP/1.1\r\n\
Host: api.example.com\r\ncontent-type: application/json\r\nX-REQUEST-ID: abc\r\n\
x-request-id: second\r\nAccept: */*\r\nx_weird.name: v\r\nContent-Length: 11\r\n\r\n{\"id\":1234}";

    #[test]
    fn borrowed_bytes_equal_the_owned_object_bytes() {
        let session = SessionState {
            rate: Some(10.0),
            metadata: Some(
                [("token".to_string(), "t1".to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        };
        for hook in [
            HookType::Pre,
            HookType::CustomKeyCheck,
            HookType::PostKeyAuth,
            HookType::Post,
        ] {
            for sess in [None, Some(&session)] {
                for raw_only in [false, true] {
                    let (a, b) = both(REQ, hook, sess, raw_only, None).expect("borrowed used");
                    assert_eq!(
                        a,
                        b,
                        "{hook:?} session={} raw_only={raw_only}",
                        sess.is_some()
                    );
                }
            }
        }
        // No query, no body, non-UTF-8 body, no Host.
        for raw in [
            &b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"PUT /bin HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n\xff\x00\xfe",
            b"GET /q?a=1&b HTTP/1.0\r\n\r\n",
        ] {
            let (a, b) = both(raw, HookType::Pre, None, false, None).expect("borrowed used");
            assert_eq!(a, b, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn declines_where_it_would_differ() {
        let edits = RequestEdits::default();
        assert!(both(REQ, HookType::Pre, None, false, Some(&edits)).is_none());
        let frag = b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n";
        assert!(both(frag, HookType::Pre, None, false, None).is_none());
        let mut many = b"GET /a?".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("k{i}=v&").as_bytes());
        }
        many.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(both(&many, HookType::Pre, None, false, None).is_none());
    }
}
