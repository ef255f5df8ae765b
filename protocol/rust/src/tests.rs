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
    Bool(bool),
    I(i64),
    U(u64),
    F(f64),
    F32(f32),
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

// ---- The hand-written decoder (src/decode.rs) against serde ----

/// The MessagePack body of `msg` (no length prefix).
fn body_of(msg: &V) -> Vec<u8> {
    let mut buf = Vec::new();
    rmp_serde::encode::write_named(&mut buf, msg).unwrap();
    buf
}

/// Decode `body` both ways. The fast path may decline (`None`), but when it answers, it must agree
/// with serde exactly, and serde must accept the frame.
fn fast_and_serde(body: &[u8]) -> (Option<Incoming>, Result<Incoming, rmp_serde::decode::Error>) {
    let mut fast = Incoming::default();
    let fast = decode::incoming_into(body, &mut fast).map(|()| fast);
    let slow = rmp_serde::from_slice::<Incoming>(body);
    if let Some(f) = &fast {
        match &slow {
            Ok(s) => assert_eq!(f, s, "fast and serde decodes differ"),
            Err(e) => panic!("fast path accepted a frame serde refuses ({e}): {f:?}"),
        }
    }
    (fast, slow)
}

/// The fast path must take `body` (the shape the gateway sends) and agree with serde.
fn assert_fast(body: &[u8]) -> Incoming {
    let (fast, _) = fast_and_serde(body);
    fast.expect("the fast path should take this frame")
}

/// Decode one frame through `serve_io` with the add_header plugin: the replies (maybe none).
fn serve_one(body: &[u8]) -> Vec<Out> {
    let mut input = (body.len() as u32).to_be_bytes().to_vec();
    input.extend_from_slice(body);
    run(input, &ServeOptions::new("t"), &add_header_plugin).0
}

fn typical_dispatch() -> V {
    let request = m(&[
        (
            "headers",
            m(&[
                ("User-Agent", s("curl/7.88.1")),
                ("Accept", s("*/*")),
                ("Host", s("localhost:19501")),
            ]),
        ),
        ("set_headers", m(&[])),
        ("delete_headers", V::A(vec![])),
        ("body", s("")),
        ("url", s("/hook/")),
        ("params", m(&[])),
        ("add_params", m(&[])),
        ("extended_params", m(&[])),
        ("delete_params", V::A(vec![])),
        (
            "return_overrides",
            m(&[
                ("response_code", V::I(-1)),
                ("response_error", s("")),
                ("headers", m(&[])),
                ("override_error", V::Bool(false)),
                ("response_body", s("")),
            ]),
        ),
        ("method", s("GET")),
        ("request_uri", s("/hook/")),
        ("scheme", s("http")),
        ("raw_body", V::B(vec![])),
    ]);
    m(&[
        ("type", s("dispatch")),
        ("id", V::I(1)),
        (
            "object",
            m(&[
                ("hook_type", s("Pre")),
                ("hook_name", s("AddHeader")),
                ("request", request),
                ("metadata", m(&[])),
                (
                    "spec",
                    m(&[
                        ("OrgID", s("b")),
                        ("APIID", s("hook")),
                        ("bundle_hash", s("d41d8cd98f00b204e9800998ecf8427e")),
                    ]),
                ),
            ]),
        ),
    ])
}

/// A post hook's dispatch: session, response, body file, non-ASCII text, lists, every field set.
fn full_dispatch() -> V {
    let request = m(&[
        ("headers", m(&[("X-Name", s("Zoë ✓")), ("Host", s("h"))])),
        ("set_headers", m(&[("A", s("1"))])),
        ("delete_headers", V::A(vec![s("X-Old"), s("X-Older")])),
        ("body", s("héllo")),
        ("url", s("/x?a=1")),
        ("params", m(&[("a", s("1"))])),
        ("add_params", m(&[("b", s("2"))])),
        ("extended_params", m(&[("c", s("3"))])),
        ("delete_params", V::A(vec![s("d")])),
        (
            "return_overrides",
            m(&[
                ("response_code", V::I(200)),
                ("response_error", s("e")),
                ("headers", m(&[("H", s("v"))])),
                ("override_error", V::Bool(true)),
                ("response_body", s("b")),
            ]),
        ),
        ("method", s("POST")),
        ("request_uri", s("/x?a=1")),
        ("scheme", s("https")),
        ("raw_body", V::B(vec![0, 159, 146, 150])),
        (
            "raw_body_file",
            m(&[("path", s("/tmp/body")), ("len", V::F(42.0))]),
        ),
    ]);
    m(&[
        ("type", s("dispatch")),
        ("id", V::I(77)),
        (
            "object",
            m(&[
                ("hook_type", s("Response")),
                ("hook_name", s("Full")),
                ("request", request),
                (
                    "session",
                    m(&[
                        ("rate", V::F(10.5)),
                        ("quota_max", V::F(5.0)),
                        ("metadata", m(&[("token", s("abc"))])),
                        ("tags", V::A(vec![s("t")])),
                    ]),
                ),
                ("metadata", m(&[("token", s("abc"))])),
                ("spec", m(&[("APIID", s("api"))])),
                (
                    "response",
                    m(&[
                        ("status_code", V::F(201.0)),
                        ("raw_body", V::B(b"ok".to_vec())),
                        ("headers", m(&[("Set-Cookie", s("a=1"))])),
                        (
                            "multivalue_headers",
                            V::A(vec![m(&[
                                ("key", s("Set-Cookie")),
                                ("values", V::A(vec![s("a=1"), s("b=2")])),
                            ])]),
                        ),
                    ]),
                ),
            ]),
        ),
    ])
}

#[test]
fn fast_decoder_reads_the_typical_gateway_frame_like_serde() {
    let body = body_of(&typical_dispatch());
    let msg = assert_fast(&body);
    assert_eq!(msg.kind, "dispatch");
    assert_eq!(msg.id, Some(1));
    let o = msg.object.unwrap();
    assert_eq!(o.hook_type, HookType::Pre);
    assert_eq!(o.hook_name, "AddHeader");
    assert_eq!(o.request.headers["Host"], "localhost:19501");
    assert_eq!(o.request.return_overrides.response_code, -1);
    assert_eq!(o.spec["bundle_hash"], "d41d8cd98f00b204e9800998ecf8427e");
    assert!(o.session.is_none() && o.response.is_none());
}

#[test]
fn fast_decoder_reads_every_field_session_and_response_like_serde() {
    let msg = assert_fast(&body_of(&full_dispatch()));
    let o = msg.object.unwrap();
    assert_eq!(o.hook_type, HookType::Response);
    assert_eq!(o.request.headers["X-Name"], "Zoë ✓");
    assert_eq!(o.request.body, "héllo");
    assert_eq!(o.request.delete_headers, vec!["X-Old", "X-Older"]);
    assert_eq!(o.request.raw_body, vec![0, 159, 146, 150]);
    assert_eq!(o.request.raw_body_file.as_ref().unwrap().len, 42);
    assert!(o.request.return_overrides.override_error);
    assert_eq!(o.session.as_ref().unwrap().quota_max, 5);
    assert_eq!(o.response.as_ref().unwrap().status_code, 201);
    assert_eq!(
        o.response.as_ref().unwrap().multivalue_headers[0]
            .values
            .len(),
        2
    );
}

#[test]
fn fast_decoder_handles_hello_event_and_load_bundle_messages() {
    let msg = assert_fast(&body_of(&hello()));
    assert_eq!(
        (msg.kind.as_str(), msg.max_frame_bytes),
        ("hello", Some(1 << 20))
    );
    let msg = assert_fast(&body_of(&m(&[
        ("type", s("event")),
        ("payload", s("{}")),
        ("id", V::Nil(())),
    ])));
    assert_eq!((msg.payload.as_deref(), msg.id), (Some("{}"), None));
    let msg = assert_fast(&body_of(&m(&[
        ("type", s("load_bundle")),
        ("id", V::I(3)),
        ("api_id", s("a")),
        ("bundle_hash", s("h")),
        ("path", s("/p")),
        ("manifest", m(&[("file_list", V::A(vec![s("x")]))])),
    ])));
    assert_eq!(
        (msg.api_id, msg.bundle_hash, msg.path),
        ("a".into(), "h".into(), "/p".into())
    );
}

#[test]
fn fast_decoder_defaults_missing_fields_and_skips_unknown_ones_of_every_type() {
    let unknown = V::A(vec![
        V::Nil(()),
        V::Bool(true),
        V::I(-5),
        V::I(1 << 40),
        V::U(u64::MAX),
        V::F(1.5),
        V::F32(2.5),
        s("text"),
        V::B(vec![1, 2, 3]),
        m(&[("nested", V::A(vec![m(&[])]))]),
    ]);
    let body = body_of(&m(&[
        ("type", s("dispatch")),
        ("future", unknown.clone()),
        ("id", V::I(9)),
        (
            "object",
            m(&[
                ("extra", unknown.clone()),
                ("hook_name", s("H")),
                (
                    "request",
                    m(&[
                        ("extra", unknown.clone()),
                        ("return_overrides", m(&[("extra", unknown)])),
                    ]),
                ),
            ]),
        ),
    ]));
    let o = assert_fast(&body).object.unwrap();
    assert_eq!(o.hook_type, HookType::Unknown);
    assert_eq!(o.hook_name, "H");
    assert_eq!(
        o.request.return_overrides.response_code, -1,
        "missing = default"
    );
    assert!(o.request.headers.is_empty());
}

#[test]
fn ext_values_in_unknown_fields_are_treated_like_serde_does() {
    // {"type": "dispatch", "x": <ext>, "id": 2} for fixext4 and ext8.
    for ext in [vec![0xd6, 0x05, 1, 2, 3, 4], vec![0xc7, 0x02, 0x05, 9, 9]] {
        let mut body = vec![0x83];
        rmp::encode::write_str(&mut body, "type").unwrap();
        rmp::encode::write_str(&mut body, "dispatch").unwrap();
        rmp::encode::write_str(&mut body, "x").unwrap();
        body.extend(&ext);
        rmp::encode::write_str(&mut body, "id").unwrap();
        body.push(0x02);
        let (_, slow) = fast_and_serde(&body);
        assert_eq!(slow.unwrap().id, Some(2));
    }
}

#[test]
fn fast_decoder_applies_the_lenient_number_rule() {
    let with_code = |code: V| {
        body_of(&m(&[
            ("type", s("dispatch")),
            ("id", V::I(1)),
            (
                "object",
                m(&[(
                    "request",
                    m(&[("return_overrides", m(&[("response_code", code)]))]),
                )]),
            ),
        ]))
    };
    let code = |msg: Incoming| msg.object.unwrap().request.return_overrides.response_code;
    assert_eq!(code(assert_fast(&with_code(V::F(-1.0)))), -1);
    assert_eq!(code(assert_fast(&with_code(V::F32(404.0)))), 404);
    assert_eq!(code(assert_fast(&with_code(V::Nil(())))), 0);
    assert_eq!(
        code(assert_fast(&with_code(V::I(i32::MIN.into())))),
        i32::MIN
    );
    // Out of range and fractional numbers are refused (by serde, with its wording).
    for bad in [V::F(1.5), V::I(1 << 40), V::F(f64::NAN), V::U(u64::MAX)] {
        let (fast, slow) = fast_and_serde(&with_code(bad));
        assert!(fast.is_none());
        assert!(slow.is_err());
    }
    let replies = serve_one(&with_code(V::F(1.5)));
    assert!(
        replies[0].error.as_deref().unwrap().contains("1.5"),
        "{:?}",
        replies[0].error
    );
}

#[test]
fn odd_but_valid_shapes_fall_back_to_serde_and_still_work() {
    // A string sent as bin, raw_body sent as str or as an array of numbers, an unknown hook type:
    // serde accepts these today, so the SDK must keep accepting them.
    let body = body_of(&m(&[
        ("type", s("dispatch")),
        ("id", V::I(4)),
        (
            "object",
            m(&[
                ("hook_type", s("Teleport")),
                ("hook_name", V::B(b"AddHeader".to_vec())),
                (
                    "request",
                    m(&[("method", s("PUT")), ("raw_body", s("text body"))]),
                ),
            ]),
        ),
    ]));
    let (fast, slow) = fast_and_serde(&body);
    assert!(fast.is_none(), "bin for a string is left to serde");
    let o = slow.unwrap().object.unwrap();
    assert_eq!(o.hook_name, "AddHeader");
    assert_eq!(o.hook_type, HookType::Unknown);
    assert_eq!(o.request.raw_body, b"text body");
    let replies = serve_one(&body);
    assert_eq!(replies[0].id, Some(4));
    let patch = replies[0].object.as_ref().unwrap();
    assert_eq!(
        patch
            .request
            .as_ref()
            .unwrap()
            .set_headers
            .as_ref()
            .unwrap()["X-Test"],
        "PUT"
    );

    let body = body_of(&m(&[
        ("type", s("dispatch")),
        ("id", V::I(5)),
        (
            "object",
            m(&[(
                "request",
                m(&[("raw_body", V::A(vec![V::I(104), V::I(105)]))]),
            )]),
        ),
    ]));
    let (fast, slow) = fast_and_serde(&body);
    assert!(fast.is_none());
    assert_eq!(slow.unwrap().object.unwrap().request.raw_body, b"hi");

    // raw_body as a str takes the fast path, as serde_bytes takes str too.
    let body = body_of(&m(&[(
        "object",
        m(&[("request", m(&[("raw_body", s("é"))]))]),
    )]));
    assert_eq!(
        assert_fast(&body).object.unwrap().request.raw_body,
        "é".as_bytes()
    );
}

#[test]
fn wrong_types_and_duplicates_get_serde_error_replies() {
    let cases: Vec<(&str, V)> = vec![
        ("hook_name as a number", m(&[("hook_name", V::I(3))])),
        (
            "headers as a list",
            m(&[("request", m(&[("headers", V::A(vec![]))]))]),
        ),
        (
            "header value as a number",
            m(&[("request", m(&[("headers", m(&[("A", V::I(1))]))]))]),
        ),
        (
            "override_error as a number",
            m(&[(
                "request",
                m(&[("return_overrides", m(&[("override_error", V::I(1))]))]),
            )]),
        ),
        ("request as a string", m(&[("request", s("x"))])),
        ("session as a string", m(&[("session", s("x"))])),
        ("spec as nil", m(&[("spec", V::Nil(()))])),
    ];
    for (what, object) in cases {
        let body = body_of(&m(&[
            ("type", s("dispatch")),
            ("id", V::I(21)),
            ("object", object),
        ]));
        let (fast, slow) = fast_and_serde(&body);
        assert!(fast.is_none() && slow.is_err(), "{what}");
        let replies = serve_one(&body);
        assert_eq!(replies.len(), 1, "{what}");
        assert_eq!(replies[0].id, Some(21), "{what}");
        assert!(
            replies[0]
                .error
                .as_deref()
                .unwrap()
                .contains("could not decode"),
            "{what}"
        );
    }
    // A duplicate field is a serde error; the fast path must not quietly take the last value.
    let mut body = vec![0x83];
    for (k, v) in [("type", "dispatch"), ("type", "dispatch")] {
        rmp::encode::write_str(&mut body, k).unwrap();
        rmp::encode::write_str(&mut body, v).unwrap();
    }
    rmp::encode::write_str(&mut body, "id").unwrap();
    rmp::encode::write_uint(&mut body, 22).unwrap();
    let (fast, slow) = fast_and_serde(&body);
    assert!(fast.is_none() && slow.is_err());
    assert!(serve_one(&body)[0]
        .error
        .as_deref()
        .unwrap()
        .contains("duplicate"));
}

#[test]
fn non_utf8_text_gets_a_clean_error_reply_but_is_fine_in_unknown_fields() {
    let raw_str = |bytes: &[u8]| {
        let mut v = Vec::new();
        rmp::encode::write_str_len(&mut v, bytes.len() as u32).unwrap();
        v.extend_from_slice(bytes);
        v
    };
    // {"type": "dispatch", "id": 31, "object": {"hook_name": <bad>}}, and with <bad> under an
    // unknown key instead.
    for (key, wants_error) in [("hook_name", true), ("whatever", false)] {
        let mut body = vec![0x83];
        rmp::encode::write_str(&mut body, "type").unwrap();
        rmp::encode::write_str(&mut body, "dispatch").unwrap();
        rmp::encode::write_str(&mut body, "id").unwrap();
        rmp::encode::write_uint(&mut body, 31).unwrap();
        rmp::encode::write_str(&mut body, "object").unwrap();
        body.push(0x81);
        rmp::encode::write_str(&mut body, key).unwrap();
        body.extend(raw_str(&[0x66, 0xff, 0xfe, 0x80]));
        let (fast, slow) = fast_and_serde(&body);
        assert_eq!(slow.is_err(), wants_error, "{key}");
        assert_eq!(fast.is_none(), wants_error, "{key}");
        let replies = serve_one(&body);
        assert_eq!(replies[0].id, Some(31));
        let decode_error = replies[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("could not decode"));
        assert_eq!(decode_error, wants_error, "{key}: {:?}", replies[0].error);
    }
}

#[test]
fn every_truncation_of_a_dispatch_is_refused_without_a_panic() {
    for frame in [body_of(&typical_dispatch()), body_of(&full_dispatch())] {
        for cut in 0..frame.len() {
            let (fast, slow) = fast_and_serde(&frame[..cut]);
            assert!(fast.is_none() && slow.is_err(), "cut at {cut}");
            // The loop survives; a reply, if any, is an error.
            for reply in serve_one(&frame[..cut]) {
                assert!(reply.error.is_some(), "cut at {cut}");
            }
        }
    }
}

#[test]
fn fast_decoder_agrees_with_serde_on_every_single_byte_corruption() {
    // Replace each byte with markers that change the shape (nil, bool, fixmap, fixarray, fixstr,
    // bin8, str8, array16, reserved, negative fixint): the fast path either declines or decodes
    // exactly what serde decodes (checked inside `fast_and_serde`), and never panics.
    for frame in [body_of(&typical_dispatch()), body_of(&full_dispatch())] {
        for at in 0..frame.len() {
            for b in [
                0x00, 0x05, 0x7f, 0x80, 0x81, 0x90, 0x91, 0xa0, 0xa3, 0xc0, 0xc1, 0xc2, 0xc4, 0xd9,
                0xdc, 0xde, 0xff,
            ] {
                let mut bad = frame.clone();
                bad[at] = b;
                let _ = fast_and_serde(&bad);
            }
        }
    }
}

#[test]
fn deeply_nested_unknown_fields_are_left_to_serde_limits() {
    // 2000 nested arrays under an unknown key: serde refuses (depth limit); so must the SDK.
    let mut body = vec![0x82];
    rmp::encode::write_str(&mut body, "type").unwrap();
    rmp::encode::write_str(&mut body, "dispatch").unwrap();
    rmp::encode::write_str(&mut body, "deep").unwrap();
    body.extend(std::iter::repeat_n(0x91, 2000));
    body.push(0xc0);
    let (fast, slow) = fast_and_serde(&body);
    assert!(fast.is_none());
    assert!(slow.is_err());
    // Lengths that promise more values than bytes left fail early, without reserving memory.
    let mut body = vec![0x81];
    rmp::encode::write_str(&mut body, "object").unwrap();
    body.push(0x81);
    rmp::encode::write_str(&mut body, "spec").unwrap();
    body.extend([0xdf, 0xff, 0xff, 0xff, 0xff]);
    let (fast, slow) = fast_and_serde(&body);
    assert!(fast.is_none() && slow.is_err());
}

// ---- The hand-written reply encoder (src/encode.rs) against rmp-serde ----

/// The reply as serde wrote it before the hand-written encoder: the reference bytes.
#[derive(Serialize)]
struct SerdeReply<'a> {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<&'a ObjectPatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn assert_reply_bytes_match_serde(id: u64, object: Option<&ObjectPatch>, error: Option<&str>) {
    let mut hand = Vec::new();
    encode::reply(&mut hand, id, object, error).unwrap();
    let mut reference = Vec::new();
    encode_frame(&mut reference, &SerdeReply { id, object, error }).unwrap();
    assert_eq!(
        hand, reference,
        "id {id}, object {object:?}, error {error:?}"
    );
}

#[test]
fn reply_encoder_writes_the_same_bytes_as_serde() {
    for id in [0, 1, 127, 128, 255, 65_536, u64::MAX] {
        assert_reply_bytes_match_serde(id, None, None);
        assert_reply_bytes_match_serde(id, None, Some("nope"));
        assert_reply_bytes_match_serde(id, Some(&ObjectPatch::default()), None);
    }
    assert_reply_bytes_match_serde(3, None, Some(&"long error ".repeat(40)));

    let mut p = ObjectPatch::default();
    p.set_header("X-Pipegate-Rust", "1");
    assert_reply_bytes_match_serde(5, Some(&p), None);
    p.respond(403, "go away").delete_header("X-Old");
    assert_reply_bytes_match_serde(5, Some(&p), None);

    // Every field of every patch type set, with values that need the larger MessagePack forms.
    let mut full = ObjectPatch::default();
    full.set_header("A", "1").set_header("Zoë", "✓".repeat(100));
    full.respond(200, "x".repeat(70_000));
    {
        let r = full.request_mut();
        r.url = Some("/new?x=1".into());
        r.add_params = Some(HashMap::from([
            ("p".into(), "1".into()),
            ("q".into(), String::new()),
        ]));
        r.delete_params = Some(vec!["old".into(); 20]);
        r.method = Some("PATCH".into());
        r.raw_body = Some([0, 159, 146, 150].repeat(100));
        r.raw_body_file = Some(BodyFile {
            path: "/tmp/b".into(),
            len: 400,
        });
        let o = r.return_overrides.as_mut().unwrap();
        o.headers = Some(HashMap::from([("H".into(), "v".into())]));
        o.override_error = Some(true);
        o.response_error = Some("e".into());
        o.response_code = Some(-70_000);
    }
    full.session = Some(SessionState {
        rate: 10.5,
        quota_max: -1,
        metadata: HashMap::from([("token".into(), "abc".into())]),
        tags: vec!["t".into()],
        ..Default::default()
    });
    full.metadata = Some(HashMap::from([("token".into(), "abc".into())]));
    full.response = Some(ResponsePatch {
        status_code: Some(201),
        raw_body: Some(Vec::new()),
        headers: Some(HashMap::from([("Set-Cookie".into(), "a=1".into())])),
        multivalue_headers: Some(vec![
            Header {
                key: "Set-Cookie".into(),
                values: vec!["a=1".into(), "b=2".into()],
            },
            Header::default(),
        ]),
        raw_body_file: Some(BodyFile::default()),
    });
    assert_reply_bytes_match_serde(9, Some(&full), None);
    // Empty-but-present fields are sent (they mean "set to empty"), absent ones are not.
    let mut empties = ObjectPatch::default();
    let r = empties.request_mut();
    r.set_headers = Some(HashMap::new());
    r.delete_headers = Some(Vec::new());
    r.raw_body = Some(Vec::new());
    r.return_overrides = Some(ReturnOverridesPatch::default());
    assert_reply_bytes_match_serde(10, Some(&empties), None);
}
