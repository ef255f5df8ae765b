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
use std::fmt;
use std::sync::LazyLock;

use rmp::encode as mp;
use serde::Serialize;

use super::chain::RequestView;
use crate::config::{ApiDefinition, HookDef};
use crate::coprocess::frame::{encode_frame_with, FrameError};
use crate::coprocess::object::{HookType, ReturnOverrides, SessionState};

/// Query strings with more pairs than this take the owned path (de-duplication here is
/// quadratic, which is cheaper than allocating only for short queries).
const MAX_BORROWED_PARAMS: usize = 32;
/// Header names longer than this take the owned path (the canonical name is formed on the stack).
const MAX_NAME: usize = 128;
/// Requests with more headers than this take the owned path (one `u64` marks the headers sent).
const MAX_HEADERS: usize = 64;

/// Encodes exactly as `chain::request_object(hook, def, api, view, session, send_body)` does.
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
        if head.headers.len() > MAX_HEADERS
            || head
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

impl RequestHookObject<'_> {
    /// Appends this object's `dispatch` frame for call `id`: the same bytes as
    /// [`encode_dispatch`](crate::coprocess::frame::encode_dispatch) of the owned object.
    ///
    /// Written with `rmp` directly rather than through serde: about twenty of the object's keys
    /// and values never change between calls (the empty edit fields, `return_overrides`), so they
    /// are copied from [`FIXED`] in two runs, and the rest skips serde's per-field calls. This
    /// took the frame from about 4,000 to about 1,500 instructions per hook call (callgrind).
    pub fn encode_dispatch(
        &self,
        buf: &mut Vec<u8>,
        id: u64,
        max: usize,
    ) -> Result<usize, FrameError> {
        encode_frame_with(buf, max, |out| self.write_dispatch(out, id))
    }

    fn write_dispatch(&self, out: &mut Vec<u8>, id: u64) -> Result<(), WriteError> {
        let fixed = &*FIXED;
        out.extend_from_slice(&fixed.dispatch);
        mp::write_uint(out, id)?;
        mp::write_str(out, "object")?;
        let session = self.session();
        mp::write_map_len(out, if session.is_some() { 6 } else { 5 })?;
        mp::write_str(out, "hook_type")?;
        mp::write_str(out, self.hook.name())?;
        mp::write_str(out, "hook_name")?;
        mp::write_str(out, &self.def.name)?;
        mp::write_str(out, "request")?;
        self.write_request(out, fixed)?;
        if let Some(session) = session {
            mp::write_str(out, "session")?;
            write_serde(out, session)?;
        }
        mp::write_str(out, "metadata")?;
        match session.and_then(|s| s.metadata.as_ref()) {
            Some(md) => write_serde(out, md)?,
            None => mp::write_map_len(out, 0).map(drop)?,
        }
        mp::write_str(out, "spec")?;
        write_spec(out, self.api)
    }

    /// `MiniRequestObject`, its fields in the owned object's order.
    fn write_request(&self, out: &mut Vec<u8>, fixed: &Fixed) -> Result<(), WriteError> {
        let view = self.view;
        let body_str = if self.def.raw_body_only {
            ""
        } else {
            std::str::from_utf8(self.body).unwrap_or("")
        };
        mp::write_map_len(out, 14)?;
        mp::write_str(out, "headers")?;
        write_headers(out, view)?;
        out.extend_from_slice(&fixed.after_headers);
        mp::write_str(out, body_str)?;
        mp::write_str(out, "url")?;
        mp::write_str(out, self.target)?;
        mp::write_str(out, "params")?;
        write_params(out, view.head.query(view.buf))?;
        out.extend_from_slice(&fixed.after_params);
        mp::write_str(out, view.head.method.str(view.buf))?;
        mp::write_str(out, "request_uri")?;
        mp::write_str(out, self.target)?;
        mp::write_str(out, "scheme")?;
        mp::write_str(out, view.scheme)?;
        mp::write_str(out, "raw_body")?;
        mp::write_bin(out, self.body)?;
        Ok(())
    }
}

/// Why writing the object failed: only serde values (session, metadata) can fail; writing into a
/// `Vec` cannot.
#[derive(Debug)]
struct WriteError(String);

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<mp::ValueWriteError<std::io::Error>> for WriteError {
    fn from(e: mp::ValueWriteError<std::io::Error>) -> Self {
        WriteError(e.to_string())
    }
}

/// Writes a value as the owned object's serializer would (maps for structs).
fn write_serde<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), WriteError> {
    value
        .serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .map_err(|e| WriteError(e.to_string()))
}

/// The runs of a request hook frame that are the same for every call, encoded once.
struct Fixed {
    /// `{"type": "dispatch", "id": ` (the frame's map header and its first keys).
    dispatch: Vec<u8>,
    /// From `set_headers` up to the `body` key: the edit fields a fresh request leaves empty.
    after_headers: Vec<u8>,
    /// From `add_params` up to the `method` key, with `return_overrides` as the owned object
    /// sends it (no override).
    after_params: Vec<u8>,
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    // Writing into a Vec cannot fail; a failure would only shorten a fixed run, which the
    // byte-for-byte test below would catch.
    let mut dispatch = Vec::new();
    let _ = mp::write_map_len(&mut dispatch, 3);
    let _ = mp::write_str(&mut dispatch, "type");
    let _ = mp::write_str(&mut dispatch, "dispatch");
    let _ = mp::write_str(&mut dispatch, "id");

    let mut after_headers = Vec::new();
    let _ = mp::write_str(&mut after_headers, "set_headers");
    let _ = mp::write_map_len(&mut after_headers, 0);
    let _ = mp::write_str(&mut after_headers, "delete_headers");
    let _ = mp::write_array_len(&mut after_headers, 0);
    let _ = mp::write_str(&mut after_headers, "body");

    let mut after_params = Vec::new();
    for key in ["add_params", "extended_params"] {
        let _ = mp::write_str(&mut after_params, key);
        let _ = mp::write_map_len(&mut after_params, 0);
    }
    let _ = mp::write_str(&mut after_params, "delete_params");
    let _ = mp::write_array_len(&mut after_params, 0);
    let _ = mp::write_str(&mut after_params, "return_overrides");
    let no_override = ReturnOverrides {
        response_code: Some(-1),
        response_error: Some(String::new()),
        headers: Some(Default::default()),
        override_error: Some(false),
        response_body: Some(String::new()),
    };
    let _ = write_serde(&mut after_params, &no_override);
    let _ = mp::write_str(&mut after_params, "method");
    Fixed {
        dispatch,
        after_headers,
        after_params,
    }
});

/// The client's headers as Tyk sends them: Go-canonical names, first value only, `Host` last.
fn write_headers(out: &mut Vec<u8>, view: &RequestView<'_>) -> Result<(), WriteError> {
    let host = view.head.host.map(|h| h.str(view.buf));
    let kept = kept_headers(view);
    let n = kept.count_ones() + u32::from(host.is_some());
    mp::write_map_len(out, n)?;
    let mut name_buf = [0u8; MAX_NAME];
    for (i, h) in view.head.headers.iter().enumerate().take(MAX_HEADERS) {
        if kept & (1 << i) == 0 {
            continue;
        }
        mp::write_str(out, &canonical_on_stack(h.name.of(view.buf), &mut name_buf))?;
        mp::write_str(out, &String::from_utf8_lossy(h.value.of(view.buf)))?;
    }
    if let Some(host) = host {
        mp::write_str(out, "Host")?;
        mp::write_str(out, host)?;
    }
    Ok(())
}

/// Bit i set: header i is sent (not `Host`, not a repeat of an earlier name). `new` declines
/// requests with more than [`MAX_HEADERS`] headers, so one word holds the set.
fn kept_headers(view: &RequestView<'_>) -> u64 {
    let buf = view.buf;
    let hs = &view.head.headers;
    let mut kept = 0u64;
    for (i, h) in hs.iter().enumerate().take(MAX_HEADERS) {
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
fn write_params(out: &mut Vec<u8>, query: Option<&str>) -> Result<(), WriteError> {
    let q = query.unwrap_or("").as_bytes();
    let first = |i: usize, key: &str| {
        !form_urlencoded::parse(q)
            .take(i)
            .any(|(k, _)| k.as_ref() == key)
    };
    let n = form_urlencoded::parse(q)
        .enumerate()
        .filter(|(i, (k, _))| first(*i, k))
        .count();
    mp::write_map_len(out, n as u32)?;
    for (i, (k, v)) in form_urlencoded::parse(q).enumerate() {
        if first(i, &k) {
            mp::write_str(out, &k)?;
            mp::write_str(out, &v)?;
        }
    }
    Ok(())
}

/// Tyk's `spec` map, as `chain::spec_map` builds it.
fn write_spec(out: &mut Vec<u8>, api: &ApiDefinition) -> Result<(), WriteError> {
    mp::write_map_len(out, 3 + u32::from(api.config_data.is_some()))?;
    mp::write_str(out, "OrgID")?;
    mp::write_str(out, &api.org_id)?;
    mp::write_str(out, "APIID")?;
    mp::write_str(out, &api.api_id)?;
    mp::write_str(out, "bundle_hash")?;
    mp::write_str(out, &api.bundle_hash)?;
    if let Some(cd) = &api.config_data {
        mp::write_str(out, "config_data")?;
        mp::write_str(out, cd)?;
    }
    Ok(())
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
        borrowed
            .encode_dispatch(&mut b, 9, 1 << 20)
            .expect("borrowed encodes");
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
        // More headers than one bit set can mark.
        let mut headers = b"GET /a HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..70 {
            headers.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        headers.extend_from_slice(b"\r\n");
        assert!(both(&headers, HookType::Pre, None, false, None).is_none());
    }
}
