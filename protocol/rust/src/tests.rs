//! Protocol-level tests: feed gateway frames to `serve_io` and read back its replies.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::*;

/// A tiny dynamic MessagePack value, to write frames the way other languages would.
#[derive(Serialize, Clone)]
#[serde(untagged)]
enum V {
    Nil(()),
    I(i64),
    F(f64),
    S(String),
    B(#[serde(with = "serde_bytes")] Vec<u8>),
    A(Vec<V>),
    M(BTreeMap<String, V>),
}

fn s(x: &str) -> V {
    V::S(x.to_string())
}

fn m(entries: &[(&str, V)]) -> V {
    V::M(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

fn frames(msgs: &[V]) -> Vec<u8> {
    let mut out = Vec::new();
    for msg in msgs {
        encode_frame(&mut out, msg).unwrap();
    }
    out
}

/// The reply fields the tests look at.
#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Out {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<u64>,
    protocol: Option<u32>,
    name: Option<String>,
    hooks: Option<Vec<String>>,
    object: Option<ObjectPatch>,
    error: Option<String>,
}

fn run<P: Plugin>(input: Vec<u8>, options: &ServeOptions, plugin: &P) -> (Vec<Out>, Vec<u8>) {
    let mut output = Vec::new();
    serve_io(Cursor::new(input), &mut output, options, plugin).unwrap();
    let mut reader = FrameReader::new(Cursor::new(output.clone()), DEFAULT_MAX_FRAME_BYTES);
    let mut outs = Vec::new();
    while let Some(f) = reader.read_frame().unwrap() {
        outs.push(rmp_serde::from_slice(&f).unwrap());
    }
    (outs, output)
}

fn hello() -> V {
    m(&[
        ("type", s("hello")),
        ("id", V::I(0)),
        ("protocol", V::I(1)),
        ("gateway", s("pipegate/0.1.0")),
        ("max_frame_bytes", V::I(1 << 20)),
    ])
}

fn dispatch(id: i64, hook_name: &str, request: V) -> V {
    m(&[
        ("type", s("dispatch")),
        ("id", V::I(id)),
        (
            "object",
            m(&[
                ("hook_type", s("Pre")),
                ("hook_name", s(hook_name)),
                ("request", request),
                ("metadata", m(&[])),
                ("spec", m(&[("APIID", s("api1")), ("OrgID", s("org"))])),
            ]),
        ),
    ])
}

fn basic_request() -> V {
    m(&[
        (
            "headers",
            m(&[("Authorization", s("secret")), ("Host", s("x"))]),
        ),
        ("set_headers", m(&[])),
        ("delete_headers", V::A(vec![])),
        ("body", s("hi")),
        ("url", s("/api/get?a=1")),
        ("params", m(&[("a", s("1"))])),
        ("return_overrides", m(&[("response_code", V::I(-1))])),
        ("method", s("GET")),
        ("raw_body", V::B(b"hi".to_vec())),
    ])
}

fn add_header_plugin(call: HookCall) -> HookResult {
    match call.object.hook_name.as_str() {
        "AddHeader" => {
            let mut p = ObjectPatch::default();
            p.set_header("X-Test", call.object.request.method.clone());
            p.into()
        }
        "Boom" => panic!("kaboom"),
        "Fail" => HookResult::Error("nope".to_string()),
        "Echo" => HookResult::unchanged(),
        other => HookResult::Error(format!("no hook {other}")),
    }
}

#[test]
fn hello_is_answered_with_name_protocol_and_hooks() {
    let opts = ServeOptions::new("t").hooks(["AddHeader"]);
    let (outs, _) = run(frames(&[hello()]), &opts, &add_header_plugin);
    assert_eq!(outs.len(), 1);
    let h = &outs[0];
    assert_eq!(h.kind.as_deref(), Some("hello"));
    assert_eq!(h.id, Some(0));
    assert_eq!(h.protocol, Some(1));
    assert_eq!(h.name.as_deref(), Some("t"));
    assert_eq!(h.hooks.as_deref(), Some(&["AddHeader".to_string()][..]));
}

#[test]
fn mmap_is_announced_only_when_enabled() {
    let (_, raw) = run(
        frames(&[hello()]),
        &ServeOptions::new("t"),
        &add_header_plugin,
    );
    let mut r = FrameReader::new(Cursor::new(raw), 1 << 20);
    let f = r.read_frame().unwrap().unwrap();
    let map: HashMap<String, serde::de::IgnoredAny> = rmp_serde::from_slice(&f).unwrap();
    assert!(!map.contains_key("mmap"));

    let opts = ServeOptions::new("t").mmap(true);
    let (_, raw) = run(frames(&[hello()]), &opts, &add_header_plugin);
    let mut r = FrameReader::new(Cursor::new(raw), 1 << 20);
    let f = r.read_frame().unwrap().unwrap();
    #[derive(Deserialize)]
    struct M {
        mmap: bool,
    }
    assert!(rmp_serde::from_slice::<M>(&f).unwrap().mmap);
}

#[test]
fn body_comes_inline_or_from_the_handed_over_file() {
    let mut req = MiniRequestObject {
        raw_body: b"inline".to_vec(),
        ..Default::default()
    };
    assert_eq!(&*req.body().unwrap(), b"inline");
    let path = std::env::temp_dir().join(format!("pipegate-plugin-body-{}", std::process::id()));
    std::fs::write(&path, b"from file").unwrap();
    req.raw_body_file = Some(BodyFile {
        path: path.to_string_lossy().into_owned(),
        len: 9,
    });
    assert_eq!(&*req.body().unwrap(), b"from file");
    std::fs::remove_file(&path).unwrap();
    let err = req.body().unwrap_err();
    assert!(
        err.to_string().contains("cannot read the body file"),
        "{err}"
    );
}

#[test]
fn hello_without_hook_list_omits_the_key() {
    let (_, raw) = run(
        frames(&[hello()]),
        &ServeOptions::new("t"),
        &add_header_plugin,
    );
    let mut r = FrameReader::new(Cursor::new(raw), 1 << 20);
    let f = r.read_frame().unwrap().unwrap();
    let map: HashMap<String, serde::de::IgnoredAny> = rmp_serde::from_slice(&f).unwrap();
    assert!(!map.contains_key("hooks"));
    assert!(map.contains_key("name"));
}

#[test]
fn dispatch_replies_carry_the_id_and_only_the_change() {
    let input = frames(&[
        hello(),
        dispatch(5, "AddHeader", basic_request()),
        dispatch(6, "Echo", basic_request()),
    ]);
    let (outs, _) = run(input, &ServeOptions::new("t"), &add_header_plugin);
    assert_eq!(outs.len(), 3);
    assert_eq!(outs[1].id, Some(5));
    let patch = outs[1].object.as_ref().unwrap();
    let req = patch.request.as_ref().unwrap();
    assert_eq!(req.set_headers.as_ref().unwrap()["X-Test"], "GET");
    assert!(req.raw_body.is_none(), "unchanged body must be absent");
    assert!(patch.session.is_none());
    assert_eq!(outs[2].id, Some(6));
    assert_eq!(outs[2].object, Some(ObjectPatch::default()));
}

#[test]
fn errors_and_panics_become_error_replies_and_the_loop_goes_on() {
    let input = frames(&[
        hello(),
        dispatch(1, "Boom", basic_request()),
        dispatch(2, "Fail", basic_request()),
        dispatch(3, "AddHeader", basic_request()),
    ]);
    let (outs, _) = run(input, &ServeOptions::new("t"), &add_header_plugin);
    assert_eq!(outs[1].id, Some(1));
    assert!(outs[1].error.as_deref().unwrap().contains("kaboom"));
    assert!(outs[1].object.is_none());
    assert_eq!(outs[2].error.as_deref(), Some("nope"));
    assert_eq!(outs[3].id, Some(3));
    assert!(outs[3].object.is_some());
}

#[test]
fn events_get_no_reply_and_reach_the_plugin() {
    use std::cell::RefCell;
    struct Recorder(RefCell<Vec<String>>);
    impl Plugin for Recorder {
        fn dispatch(&self, _call: HookCall) -> HookResult {
            HookResult::unchanged()
        }
        fn event(&self, payload: &str) {
            self.0.borrow_mut().push(payload.to_string());
        }
    }
    let rec = Recorder(RefCell::new(Vec::new()));
    let input = frames(&[
        hello(),
        m(&[("type", s("event")), ("payload", s("{\"x\":1}"))]),
    ]);
    let (outs, _) = run(input, &ServeOptions::new("t"), &rec);
    assert_eq!(outs.len(), 1, "only the hello is answered");
    assert_eq!(rec.0.borrow().as_slice(), &["{\"x\":1}".to_string()]);
}

#[test]
fn load_bundle_is_acknowledged_or_refused() {
    struct Picky;
    impl Plugin for Picky {
        fn dispatch(&self, _call: HookCall) -> HookResult {
            HookResult::unchanged()
        }
        fn load_bundle(&self, b: &BundleLoad) -> Result<(), String> {
            if b.bundle_hash == "good" && b.path == "/b" && b.api_id == "a" {
                Ok(())
            } else {
                Err(format!("refusing {}", b.bundle_hash))
            }
        }
    }
    let lb = |id: i64, hash: &str| {
        m(&[
            ("type", s("load_bundle")),
            ("id", V::I(id)),
            ("api_id", s("a")),
            ("bundle_hash", s(hash)),
            ("path", s("/b")),
            ("manifest", m(&[("file_list", V::A(vec![]))])),
        ])
    };
    let (outs, _) = run(
        frames(&[hello(), lb(8, "good"), lb(9, "bad")]),
        &ServeOptions::new("t"),
        &Picky,
    );
    assert_eq!(outs[1].id, Some(8));
    assert!(outs[1].error.is_none() && outs[1].object.is_none());
    assert_eq!(outs[2].id, Some(9));
    assert_eq!(outs[2].error.as_deref(), Some("refusing bad"));
}

#[test]
fn unknown_message_types_with_an_id_get_an_error() {
    let input = frames(&[hello(), m(&[("type", s("frobnicate")), ("id", V::I(4))])]);
    let (outs, _) = run(input, &ServeOptions::new("t"), &add_header_plugin);
    assert_eq!(outs[1].id, Some(4));
    assert!(outs[1].error.as_deref().unwrap().contains("frobnicate"));
}

#[test]
fn undecodable_dispatch_with_an_id_gets_an_error() {
    // "object" is a string where a map is expected.
    let input = frames(&[
        hello(),
        m(&[
            ("type", s("dispatch")),
            ("id", V::I(12)),
            ("object", s("oops")),
        ]),
    ]);
    let (outs, _) = run(input, &ServeOptions::new("t"), &add_header_plugin);
    assert_eq!(outs[1].id, Some(12));
    assert!(outs[1]
        .error
        .as_deref()
        .unwrap()
        .contains("could not decode"));
}

#[test]
fn frames_over_the_hello_limit_stop_the_loop_with_an_error() {
    let mut input = frames(&[hello()]);
    let big = "y".repeat((1 << 20) + 1);
    input.extend(frames(&[dispatch(1, "AddHeader", m(&[("body", s(&big))]))]));
    let mut output = Vec::new();
    let err = serve_io(
        Cursor::new(input),
        &mut output,
        &ServeOptions::new("t"),
        &add_header_plugin,
    )
    .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn object_decodes_with_lenient_numbers_unknown_keys_and_a_session() {
    let obj = m(&[
        ("hook_type", s("PostKeyAuth")),
        ("hook_name", s("H")),
        ("future_field", m(&[("x", V::I(1))])),
        (
            "request",
            m(&[
                ("raw_body", V::B(vec![0, 159, 146, 150])),
                ("return_overrides", m(&[("response_code", V::F(-1.0))])),
            ]),
        ),
        (
            "session",
            m(&[
                ("rate", V::I(100)),
                ("per", V::F(1.0)),
                ("quota_max", V::F(5.0)),
                ("expires", V::Nil(())),
                ("metadata", m(&[("token", s("abc"))])),
                (
                    "monitor",
                    m(&[("trigger_limits", V::A(vec![V::I(80), V::F(90.5)]))]),
                ),
                (
                    "access_rights",
                    m(&[(
                        "api1",
                        m(&[
                            ("api_id", s("api1")),
                            (
                                "allowed_urls",
                                V::A(vec![m(&[
                                    ("url", s("/x")),
                                    ("methods", V::A(vec![s("GET")])),
                                ])]),
                            ),
                        ]),
                    )]),
                ),
            ]),
        ),
    ]);
    let mut buf = Vec::new();
    rmp_serde::encode::write_named(&mut buf, &obj).unwrap();
    let o: Object = rmp_serde::from_slice(&buf).unwrap();
    assert_eq!(o.hook_type, HookType::PostKeyAuth);
    assert_eq!(o.request.raw_body, vec![0, 159, 146, 150]);
    assert_eq!(o.request.return_overrides.response_code, -1);
    let sess = o.session.unwrap();
    assert_eq!(sess.rate, 100.0);
    assert_eq!(sess.quota_max, 5);
    assert_eq!(sess.expires, 0);
    assert_eq!(sess.metadata["token"], "abc");
    assert_eq!(sess.monitor.trigger_limits, vec![80.0, 90.5]);
    assert_eq!(
        sess.access_rights["api1"].allowed_urls[0].methods,
        vec!["GET"]
    );
}

#[test]
fn fractional_number_for_an_int_field_is_refused_clearly() {
    let obj = m(&[("session", m(&[("quota_max", V::F(1.5))]))]);
    let mut buf = Vec::new();
    rmp_serde::encode::write_named(&mut buf, &obj).unwrap();
    let err = rmp_serde::from_slice::<Object>(&buf).unwrap_err();
    assert!(err.to_string().contains("1.5"), "{err}");
}

#[test]
fn unknown_hook_type_name_decodes_as_unknown() {
    let obj = m(&[("hook_type", s("Teleport"))]);
    let mut buf = Vec::new();
    rmp_serde::encode::write_named(&mut buf, &obj).unwrap();
    let o: Object = rmp_serde::from_slice(&buf).unwrap();
    assert_eq!(o.hook_type, HookType::Unknown);
}

#[test]
fn patch_bodies_are_msgpack_bin_and_none_fields_are_absent() {
    let mut p = ObjectPatch::default();
    p.response_mut().raw_body = Some(b"new".to_vec());
    let mut buf = Vec::new();
    rmp_serde::encode::write_named(&mut buf, &p).unwrap();
    // {"response": {"raw_body": bin8(3) "new"}}
    let mut expected = vec![0x81, 0xa8];
    expected.extend(b"response");
    expected.extend([0x81, 0xa8]);
    expected.extend(b"raw_body");
    expected.extend([0xc4, 0x03]);
    expected.extend(b"new");
    assert_eq!(buf, expected);
}

#[test]
fn respond_sets_error_or_body_by_code() {
    let mut p = ObjectPatch::default();
    p.respond(403, "go away");
    let ro = p
        .request
        .as_ref()
        .unwrap()
        .return_overrides
        .as_ref()
        .unwrap();
    assert_eq!(ro.response_code, Some(403));
    assert_eq!(ro.response_error.as_deref(), Some("go away"));
    assert!(ro.response_body.is_none());

    let mut p = ObjectPatch::default();
    p.respond(200, "hello");
    let ro = p
        .request
        .as_ref()
        .unwrap()
        .return_overrides
        .as_ref()
        .unwrap();
    assert_eq!(ro.response_body.as_deref(), Some("hello"));
    assert!(ro.response_error.is_none());
}

#[test]
fn set_response_header_keeps_other_upstream_headers() {
    let original = ResponseObject {
        status_code: 200,
        headers: HashMap::from([("Set-Cookie".to_string(), "a=1".to_string())]),
        multivalue_headers: vec![Header {
            key: "Set-Cookie".to_string(),
            values: vec!["a=1".to_string(), "b=2".to_string()],
        }],
        ..Default::default()
    };
    let mut p = ObjectPatch::default();
    p.set_response_header(&original, "X-New", "1");
    let r = p.response.unwrap();
    let headers = r.headers.unwrap();
    assert_eq!(headers["X-New"], "1");
    assert_eq!(headers["Set-Cookie"], "a=1");
    let multi = r.multivalue_headers.unwrap();
    assert_eq!(multi.len(), 2);
    assert_eq!(multi[0].values, vec!["a=1", "b=2"]);
    assert!(r.status_code.is_none());
}

#[test]
fn header_lookup_falls_back_to_case_insensitive() {
    let mut o = Object::default();
    o.request
        .headers
        .insert("Authorization".to_string(), "k".to_string());
    assert_eq!(o.header("Authorization"), Some("k"));
    assert_eq!(o.header("authorization"), Some("k"));
    assert_eq!(o.header("X-Missing"), None);
}

/// A writer that counts its `write` calls, to prove replies are batched.
struct CountingWriter {
    writes: usize,
    data: Vec<u8>,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn pipelined_requests_in_one_read_are_answered_with_one_write() {
    let mut msgs = vec![hello()];
    for i in 1..=100 {
        msgs.push(dispatch(i, "AddHeader", basic_request()));
    }
    let input = frames(&msgs);
    let mut w = CountingWriter {
        writes: 0,
        data: Vec::new(),
    };
    serve_io(
        Cursor::new(input),
        &mut w,
        &ServeOptions::new("t"),
        &add_header_plugin,
    )
    .unwrap();
    assert_eq!(w.writes, 1, "101 replies should leave in a single write");
    let mut r = FrameReader::new(Cursor::new(w.data), 1 << 20);
    let mut n = 0;
    while r.read_frame().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 101);
}
