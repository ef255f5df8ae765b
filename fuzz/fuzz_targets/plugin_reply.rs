//! A plugin's reply object, decoded from MessagePack (`coprocess::object::Object`) and applied
//! to a real request (`middleware::chain::apply_request_reply`) and to a buffered response
//! (`apply_response_reply`), as the worker does with each pipe or gRPC reply.
//!
//! The first input byte picks the hook. Whatever the plugin sends, the request head the gateway
//! then writes upstream (`proxy::write_request_head`) must parse back as exactly one request with
//! the framing the gateway chose: a plugin must not be able to split, smuggle or reframe the
//! upstream request. Response headers a plugin sets must be valid and never hop-by-hop.
//!
//! The gateway reads reply frames with a hand-written fast path that declines anything unusual
//! (`coprocess::frame::decode_plain_reply`) before the serde path: the input, both as a whole
//! message and as the `object` of a reply, must decode the same both ways.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipegate::config::{self, ApiDefinition};
use pipegate::coprocess::frame::{
    decode_child_message, decode_child_message_serde, decode_plain_reply, ChildMessage,
};
use pipegate::coprocess::object::{HookType, Object};
use pipegate::http::{self, headers, BodyKind, RequestHead};
use pipegate::middleware::chain::{self, LocalResponse, Outcome, RequestState, RequestView};
use pipegate::proxy::{write_request_head, ClientIp, Outbound};
use std::path::Path;
use std::sync::{Arc, OnceLock};

const API: &str = r#"{
  "name": "fuzz", "api_id": "fuzz", "org_id": "o", "use_keyless": true,
  "proxy": {"listen_path": "/fuzz/", "target_url": "http://127.0.0.1:9/base?t=1", "strip_listen_path": true},
  "custom_middleware": {"driver": "pipe", "pre": [{"name": "Pre"}], "response": [{"name": "Resp"}]}
}"#;

const REQUEST: &[u8] = b"POST /fuzz/items?a=1&b=2 HTTP/1.1\r\nHost: gw.example\r\nX-Token: t\r\nContent-Length: 5\r\n\r\nhello";

fn api() -> &'static Arc<ApiDefinition> {
    static API_DEF: OnceLock<Arc<ApiDefinition>> = OnceLock::new();
    API_DEF.get_or_init(|| {
        let mut apis = config::parse_api_file(Path::new("fuzz.json"), API.as_bytes())
            .expect("the fuzz API definition is valid");
        Arc::new(apis.remove(0).0)
    })
}

/// The fast reply decoder, when it answers, and the gateway's decoder agree with serde on `frame`.
/// Compared with `==`, or failing that as Debug text: a session float may be NaN, which `==`
/// never equals.
fn same_as_serde(frame: &[u8]) {
    let serde = decode_child_message_serde(frame);
    let same = |got: &Result<ChildMessage, _>| *got == serde || format!("{got:?}") == format!("{serde:?}");
    let got = decode_child_message(frame);
    assert!(same(&got), "{frame:02x?}: {got:?} != {serde:?}");
    if let Some(reply) = decode_plain_reply(frame) {
        let got = Ok(ChildMessage::Reply(reply));
        assert!(same(&got), "{frame:02x?}: {got:?} != {serde:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    same_as_serde(rest);
    // `{"id": 1, "object": <rest>}`: the fuzzed bytes as the reply's object.
    let mut reply = b"\x82\xa2id\x01\xa6object".to_vec();
    reply.extend_from_slice(rest);
    same_as_serde(&reply);
    let Ok(obj) = Object::from_msgpack(rest) else {
        return;
    };
    let hook = match sel % 5 {
        0 => HookType::Pre,
        1 => HookType::CustomKeyCheck,
        2 => HookType::PostKeyAuth,
        3 => HookType::Post,
        _ => HookType::Response,
    };
    let api = api();
    let mut head = RequestHead::default();
    assert_eq!(http::parse_request(REQUEST, &mut head, 8192), Ok(true));
    let body = &REQUEST[head.head_len..];

    if hook == HookType::Response {
        let mut resp = LocalResponse {
            status: 200,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"upstream".to_vec(),
            content_type: None,
        };
        let resp = match chain::apply_response_reply(&mut resp, obj) {
            Ok(()) => resp,
            Err(err) => err,
        };
        assert!((100..=999).contains(&resp.status));
        for (k, v) in &resp.headers {
            assert!(chain::valid_header(k, v), "{k:?}: {v:?}");
            assert!(
                !headers::is_hop_by_hop(k.as_bytes()),
                "hop-by-hop {k:?} from a plugin"
            );
            assert!(!k.eq_ignore_ascii_case("content-length"));
        }
        return;
    }

    let view = RequestView {
        buf: REQUEST,
        head: &head,
        edits: None,
        body,
        scheme: "http",
    };
    let mut state = RequestState::default();
    match chain::apply_request_reply(hook, api, &view, &mut state, obj) {
        Outcome::Respond(resp) => {
            assert!((100..=999).contains(&resp.status));
            for (k, v) in &resp.headers {
                assert!(chain::valid_header(k, v), "{k:?}: {v:?}");
            }
        }
        Outcome::Continue => {
            let edits = state.edits.as_deref();
            let new_len = edits
                .and_then(|e| e.body.as_ref())
                .map(|b| b.len() as u64)
                .unwrap_or(body.len() as u64);
            let framing = if new_len == 0 {
                BodyKind::None
            } else {
                BodyKind::Length(new_len)
            };
            let client_ip = ClientIp::new([192, 0, 2, 1].into());
            let mut out = Vec::new();
            write_request_head(
                &Outbound {
                    buf: REQUEST,
                    head: &head,
                    api,
                    edits,
                    client_ip: &client_ip,
                    body: framing,
                    scheme: "http",
                },
                &mut out,
            );
            let mut up = RequestHead::default();
            match http::parse_request(&out, &mut up, 1 << 20) {
                Ok(true) => {}
                other => panic!(
                    "upstream head does not parse ({other:?}): {:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
            assert_eq!(up.head_len, out.len(), "upstream head has trailing bytes");
            let announced = match framing {
                BodyKind::None => BodyKind::None,
                other => other,
            };
            assert_eq!(up.body, announced, "a plugin changed the upstream framing");
            assert_eq!(up.host.map(|h| h.of(&out)), Some(&b"127.0.0.1:9"[..]));
        }
    }
});
