//! The hand-written fast path for decoding a plugin's reply to a hook call.
//!
//! Every hooked request decodes one reply frame, and through serde that cost ~3.2k instructions for
//! a reply setting one header: rmp-serde's derived field matching validates every map key as UTF-8
//! and runs it through identifier visitors, each value goes through several layers of generic
//! visitors, and the ~650-byte `Object` is moved through `Option<Object>`, the raw message struct,
//! `ReplyOutcome`, `ChildMessage` and `Result`. This module reads the common reply shapes directly
//! with `rmp::decode`, matches keys as byte slices (no UTF-8 check: only the known ASCII names
//! match) and fills the [`Reply`] where it will live.
//!
//! It is deliberately a *subset* decoder with one contract: for any frame it either answers
//! exactly what the serde path ([`super::frame::decode_child_message_serde`]) answers, or it
//! declines (`None`) and the caller decodes the whole frame again with serde. It declines at the
//! first thing outside the plain shapes plugins send: a key it does not know (including `session`,
//! `response`, `raw_body_file` and the hello fields, unless nil), a struct sent as an array, a
//! string sent as bin, a float or nil where it would need the lenient rules' finer points, a
//! non-UTF-8 string, a duplicate key, a missing or zero `id`, a hello, trailing bytes, truncation.
//! It never produces an error: every error (and its wording, and the id it carries) is serde's.
//! Its nesting is fixed (message, object, request, return_overrides, string map), so depth limits
//! never come into play.

use rmp::decode::{self as rd, NumValueReadError};
use rmp::Marker;
use serde_bytes::ByteBuf;

use super::frame::{Reply, ReplyOutcome};
use super::object::{HookType, MiniRequestObject, Object, PairMap, ReturnOverrides, StringMap};

/// Decodes a plain reply frame into `reply` (fresh: `id` 0, an empty `Object` outcome), or
/// declines with `None`. After a decline `reply` holds a partial result and must be discarded.
pub(super) fn reply_into(frame: &[u8], reply: &mut Reply) -> Option<()> {
    let ReplyOutcome::Object(object) = &mut reply.outcome else {
        return None;
    };
    let mut r = Reader { buf: frame };
    let mut seen = Seen::default();
    let mut hello_kind = None;
    let mut id = None;
    let mut error = None;
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"type" => {
                seen.first(0)?;
                hello_kind = r.optional_kind_is_hello()?;
            }
            b"id" => {
                seen.first(1)?;
                id = r.optional_id()?;
            }
            b"object" => {
                seen.first(2)?;
                if !r.nil()? {
                    r.object(object)?;
                }
            }
            b"error" => {
                seen.first(3)?;
                if !r.nil()? {
                    error = Some(r.lenient_string()?);
                }
            }
            _ => return None,
        }
    }
    // rmp-serde ignores trailing bytes; declining keeps that (rare) case entirely serde's.
    if !r.buf.is_empty() {
        return None;
    }
    let id = id?;
    // As in the serde path: a `type` decides whether this is a hello, else an id of 0 does.
    if hello_kind.unwrap_or(id == 0) {
        return None;
    }
    reply.id = id;
    if let Some(text) = error {
        reply.outcome = ReplyOutcome::Error(text);
    }
    Some(())
}

/// Which fields of one map were seen: a second occurrence is serde's "duplicate field" error, so
/// the fast path declines it.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    fn first(&mut self, field: u32) -> Option<()> {
        let bit = 1 << field;
        if self.0 & bit != 0 {
            return None;
        }
        self.0 |= bit;
        Some(())
    }
}

/// A cursor over the rest of the frame; every successful read consumes one whole value.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<Marker> {
        self.buf.first().map(|b| Marker::from_u8(*b))
    }

    fn take(&mut self, len: u32) -> Option<&'a [u8]> {
        let len = usize::try_from(len).ok()?;
        if len > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(head)
    }

    /// Consumes a nil and answers `true`, or answers `false` and consumes nothing.
    fn nil(&mut self) -> Option<bool> {
        match self.buf.first() {
            Some(0xc0) => {
                self.buf = &self.buf[1..];
                Some(true)
            }
            Some(_) => Some(false),
            None => None,
        }
    }

    /// A big-endian length of `N` bytes after a marker.
    fn be_len<const N: usize>(&mut self) -> Option<u32> {
        let (bytes, rest) = self.buf.split_first_chunk::<N>()?;
        self.buf = rest;
        Some(bytes.iter().fold(0u32, |len, b| len << 8 | u32::from(*b)))
    }

    /// The length of a map (fixmap, map16, map32). Written out rather than through
    /// `rmp::decode::read_map_len`, whose `io::Read` plumbing cost ~20 instructions per call on
    /// the hot path (callgrind); the other readers, off the common path, use `rmp::decode`.
    fn map_len(&mut self) -> Option<u32> {
        let (&marker, rest) = self.buf.split_first()?;
        self.buf = rest;
        match marker {
            0x80..=0x8f => Some(u32::from(marker & 0x0f)),
            0xde => self.be_len::<2>(),
            0xdf => self.be_len::<4>(),
            _ => None,
        }
    }

    /// The length of a str (fixstr, str8, str16, str32), written out as [`Self::map_len`].
    fn str_len(&mut self) -> Option<u32> {
        let (&marker, rest) = self.buf.split_first()?;
        self.buf = rest;
        match marker {
            0xa0..=0xbf => Some(u32::from(marker & 0x1f)),
            0xd9 => self.be_len::<1>(),
            0xda => self.be_len::<2>(),
            0xdb => self.be_len::<4>(),
            _ => None,
        }
    }

    /// A map key as raw bytes; only MessagePack str keys (serde also takes bin and field numbers,
    /// which the fast path leaves to it).
    fn key(&mut self) -> Option<&'a [u8]> {
        let len = self.str_len()?;
        self.take(len)
    }

    /// A MessagePack str holding valid UTF-8, borrowed. A bin, or a str with invalid UTF-8 (which
    /// rmp-serde hands to visitors as bytes), is declined.
    fn str(&mut self) -> Option<&'a str> {
        let len = self.str_len()?;
        let bytes = self.take(len)?;
        if bytes.is_ascii() {
            // SAFETY: ASCII bytes are valid UTF-8. Header names and values, URLs and metadata
            // are nearly always ASCII, and `is_ascii` (a word at a time, inlined) skips the
            // fixed per-call cost of `from_utf8` (~87 instructions per string, callgrind on the
            // typical reply); the whole `str` read, length included, is now ~50. Other text
            // takes the checked path.
            Some(unsafe { std::str::from_utf8_unchecked(bytes) })
        } else {
            std::str::from_utf8(bytes).ok()
        }
    }

    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    /// `Option<String>`: nil is `None`, a str is `Some`.
    fn optional_string(&mut self, slot: &mut Option<String>) -> Option<()> {
        *slot = if self.nil()? {
            None
        } else {
            Some(self.string()?)
        };
        Some(())
    }

    /// Any MessagePack integer (the formats rmp-serde hands to visitors as `u64` or `i64`).
    fn int(&mut self) -> Option<i128> {
        let v: Result<i128, NumValueReadError<_>> = rd::read_int(&mut self.buf);
        v.ok()
    }

    /// `LenientString`: a str, a bin (lossy UTF-8), an integer or a bool, as text. Floats (whose
    /// text depends on f32 vs f64) and everything else are declined.
    fn lenient_string(&mut self) -> Option<String> {
        match self.peek()? {
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => self.string(),
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let len = rd::read_bin_len(&mut self.buf).ok()?;
                Some(String::from_utf8_lossy(self.take(len)?).into_owned())
            }
            Marker::True | Marker::False => {
                rd::read_bool(&mut self.buf).ok().map(|b| b.to_string())
            }
            Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::U8
            | Marker::U16
            | Marker::U32
            | Marker::U64
            | Marker::I8
            | Marker::I16
            | Marker::I32
            | Marker::I64 => self.int().map(|v| v.to_string()),
            _ => None,
        }
    }

    /// `type`: nil is `None`; a str answers whether it is `hello`.
    fn optional_kind_is_hello(&mut self) -> Option<Option<bool>> {
        if self.nil()? {
            return Some(None);
        }
        Some(Some(self.str()? == "hello"))
    }

    /// `id` under `lenient::opt_u64`: nil is `None`, an integer within 0..=i64::MAX is `Some`.
    /// Floats and everything out of range are declined (serde accepts whole floats, refuses the
    /// rest).
    fn optional_id(&mut self) -> Option<Option<u64>> {
        if self.nil()? {
            return Some(None);
        }
        match self.peek()? {
            Marker::F32 | Marker::F64 => None,
            _ => {
                let v = self.int()?;
                (0..=i128::from(i64::MAX))
                    .contains(&v)
                    .then_some(Some(v as u64))
            }
        }
    }

    /// `hook_type`: a name (any case, Python binding names too) or a protobuf number; anything
    /// unknown is [`HookType::Unknown`], as in its serde impl. Floats and bools (serde errors)
    /// are declined.
    fn optional_hook_type(&mut self) -> Option<Option<HookType>> {
        if self.nil()? {
            return Some(None);
        }
        let hook = match self.peek()? {
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                HookType::from_name(self.str()?)
            }
            Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::U8
            | Marker::U16
            | Marker::U32
            | Marker::U64
            | Marker::I8
            | Marker::I16
            | Marker::I32
            | Marker::I64 => {
                i64::try_from(self.int()?).map_or(HookType::Unknown, HookType::from_i64)
            }
            _ => return None,
        };
        Some(Some(hook))
    }

    /// `response_code` under `lenient::opt_i32`: nil, an integer or a whole float within i32.
    fn optional_i32(&mut self) -> Option<Option<i32>> {
        if self.nil()? {
            return Some(None);
        }
        let f = match self.peek()? {
            Marker::F32 => f64::from(rd::read_f32(&mut self.buf).ok()?),
            Marker::F64 => rd::read_f64(&mut self.buf).ok()?,
            _ => return i32::try_from(self.int()?).ok().map(Some),
        };
        if f.fract() != 0.0 || !(f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&f) {
            return None;
        }
        Some(Some(f as i32))
    }

    /// `override_error` under `lenient::opt_bool`: nil, a bool, or an integer (non-zero is true).
    fn optional_bool(&mut self) -> Option<Option<bool>> {
        if self.nil()? {
            return Some(None);
        }
        match self.peek()? {
            Marker::True | Marker::False => rd::read_bool(&mut self.buf).ok().map(Some),
            Marker::F32 | Marker::F64 => None,
            _ => self.int().map(|v| Some(v != 0)),
        }
    }

    /// `Option<StringMap>`: nil, or a map whose keys and values are lenient strings.
    fn optional_string_map(&mut self, slot: &mut Option<StringMap>) -> Option<()> {
        if self.nil()? {
            *slot = None;
            return Some(());
        }
        let len = self.map_len()?;
        // Each entry takes at least two bytes: a lying length cannot reserve much.
        let mut pairs = Vec::with_capacity((len as usize).min(self.buf.len() / 2));
        for _ in 0..len {
            let k = self.lenient_string()?;
            let v = self.lenient_string()?;
            pairs.push((k, v));
        }
        *slot = Some(PairMap(pairs));
        Some(())
    }

    /// `Option<Vec<String>>`: nil, or an array of str.
    fn optional_string_list(&mut self, slot: &mut Option<Vec<String>>) -> Option<()> {
        if self.nil()? {
            *slot = None;
            return Some(());
        }
        let len = rd::read_array_len(&mut self.buf).ok()?;
        let mut list = Vec::with_capacity((len as usize).min(self.buf.len()));
        for _ in 0..len {
            list.push(self.string()?);
        }
        *slot = Some(list);
        Some(())
    }

    /// `raw_body` as `serde_bytes` takes it: nil, a bin, or a str (its bytes, whatever they are:
    /// rmp-serde hands invalid UTF-8 over as bytes, which `ByteBuf` takes too).
    fn optional_bytes(&mut self) -> Option<Option<ByteBuf>> {
        if self.nil()? {
            return Some(None);
        }
        let len = match self.peek()? {
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => rd::read_bin_len(&mut self.buf).ok()?,
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => self.str_len()?,
            _ => return None,
        };
        Some(Some(ByteBuf::from(self.take(len)?.to_vec())))
    }

    /// A value the fast path does not decode must be nil (then the field stays `None`).
    fn nil_only(&mut self) -> Option<()> {
        self.nil()?.then_some(())
    }

    fn object(&mut self, o: &mut Object) -> Option<()> {
        let mut seen = Seen::default();
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"hook_type" => {
                    seen.first(0)?;
                    o.hook_type = self.optional_hook_type()?;
                }
                b"hook_name" => {
                    seen.first(1)?;
                    self.optional_string(&mut o.hook_name)?;
                }
                b"request" => {
                    seen.first(2)?;
                    if self.nil()? {
                        o.request = None;
                    } else {
                        self.request(o.request.get_or_insert_with(Default::default))?;
                    }
                }
                b"metadata" => {
                    seen.first(3)?;
                    self.optional_string_map(&mut o.metadata)?;
                }
                b"spec" => {
                    seen.first(4)?;
                    self.optional_string_map(&mut o.spec)?;
                }
                b"session" => {
                    seen.first(5)?;
                    self.nil_only()?;
                }
                b"response" => {
                    seen.first(6)?;
                    self.nil_only()?;
                }
                _ => return None,
            }
        }
        Some(())
    }

    fn request(&mut self, req: &mut MiniRequestObject) -> Option<()> {
        let mut seen = Seen::default();
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"headers" => {
                    seen.first(0)?;
                    self.optional_string_map(&mut req.headers)?;
                }
                b"set_headers" => {
                    seen.first(1)?;
                    self.optional_string_map(&mut req.set_headers)?;
                }
                b"delete_headers" => {
                    seen.first(2)?;
                    self.optional_string_list(&mut req.delete_headers)?;
                }
                b"body" => {
                    seen.first(3)?;
                    self.optional_string(&mut req.body)?;
                }
                b"url" => {
                    seen.first(4)?;
                    self.optional_string(&mut req.url)?;
                }
                b"params" => {
                    seen.first(5)?;
                    self.optional_string_map(&mut req.params)?;
                }
                b"add_params" => {
                    seen.first(6)?;
                    self.optional_string_map(&mut req.add_params)?;
                }
                b"extended_params" => {
                    seen.first(7)?;
                    self.optional_string_map(&mut req.extended_params)?;
                }
                b"delete_params" => {
                    seen.first(8)?;
                    self.optional_string_list(&mut req.delete_params)?;
                }
                b"return_overrides" => {
                    seen.first(9)?;
                    if self.nil()? {
                        req.return_overrides = None;
                    } else {
                        self.return_overrides(
                            req.return_overrides.get_or_insert_with(Default::default),
                        )?;
                    }
                }
                b"method" => {
                    seen.first(10)?;
                    self.optional_string(&mut req.method)?;
                }
                b"request_uri" => {
                    seen.first(11)?;
                    self.optional_string(&mut req.request_uri)?;
                }
                b"scheme" => {
                    seen.first(12)?;
                    self.optional_string(&mut req.scheme)?;
                }
                b"raw_body" => {
                    seen.first(13)?;
                    req.raw_body = self.optional_bytes()?;
                }
                b"raw_body_file" => {
                    seen.first(14)?;
                    self.nil_only()?;
                }
                _ => return None,
            }
        }
        Some(())
    }

    fn return_overrides(&mut self, ro: &mut ReturnOverrides) -> Option<()> {
        let mut seen = Seen::default();
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"response_code" => {
                    seen.first(0)?;
                    ro.response_code = self.optional_i32()?;
                }
                b"response_error" => {
                    seen.first(1)?;
                    self.optional_string(&mut ro.response_error)?;
                }
                b"headers" => {
                    seen.first(2)?;
                    self.optional_string_map(&mut ro.headers)?;
                }
                b"override_error" => {
                    seen.first(3)?;
                    ro.override_error = self.optional_bool()?;
                }
                b"response_body" => {
                    seen.first(4)?;
                    self.optional_string(&mut ro.response_body)?;
                }
                _ => return None,
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use crate::coprocess::frame::{
        decode_child_message, decode_child_message_serde, decode_plain_reply, ChildMessage,
        FrameError, Reply, ReplyOutcome,
    };
    use crate::coprocess::object::{HookType, MiniRequestObject, Object, ReturnOverrides};
    use serde_json::json;

    /// The differential check: the gateway's decoder answers exactly what serde answers, and so
    /// does the fast path whenever it answers. Returns whether the fast path answered.
    fn check(frame: &[u8]) -> bool {
        let serde = decode_child_message_serde(frame);
        // Debug text when `==` fails: a session float may be NaN, which `==` never equals.
        let same = |got: &Result<ChildMessage, FrameError>| {
            *got == serde || format!("{got:?}") == format!("{serde:?}")
        };
        let got = decode_child_message(frame);
        assert!(same(&got), "frame {frame:02x?}: {got:?} != {serde:?}");
        match decode_plain_reply(frame) {
            Some(reply) => {
                let got = Ok(ChildMessage::Reply(reply));
                assert!(same(&got), "frame {frame:02x?}: {got:?} != {serde:?}");
                true
            }
            None => false,
        }
    }

    fn enc(v: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec(v).expect("encode")
    }

    /// `v` is read by the fast path (and equals serde); returns the decoded message.
    fn fast(v: serde_json::Value) -> ChildMessage {
        let frame = enc(&v);
        assert!(check(&frame), "fast path declined {v}");
        decode_child_message(&frame).expect("decodes")
    }

    /// The fast path declines `frame`; serde's answer (checked equal) is returned.
    fn declined(frame: &[u8]) -> Result<ChildMessage, FrameError> {
        assert!(!check(frame), "fast path answered {frame:02x?}");
        decode_child_message(frame)
    }

    fn object_of(m: ChildMessage) -> Object {
        match m {
            ChildMessage::Reply(Reply {
                outcome: ReplyOutcome::Object(o),
                ..
            }) => o,
            other => panic!("not an object reply: {other:?}"),
        }
    }

    fn request_of(m: ChildMessage) -> MiniRequestObject {
        object_of(m).request.expect("request")
    }

    /// A MessagePack writer for the shapes serde_json cannot produce (bin, f32, odd keys).
    #[derive(Default)]
    struct Mp(Vec<u8>);

    impl Mp {
        fn map(mut self, n: u32) -> Self {
            rmp::encode::write_map_len(&mut self.0, n).expect("w");
            self
        }
        fn array(mut self, n: u32) -> Self {
            rmp::encode::write_array_len(&mut self.0, n).expect("w");
            self
        }
        fn s(mut self, v: &str) -> Self {
            rmp::encode::write_str(&mut self.0, v).expect("w");
            self
        }
        fn bin(mut self, v: &[u8]) -> Self {
            rmp::encode::write_bin(&mut self.0, v).expect("w");
            self
        }
        fn f32(mut self, v: f32) -> Self {
            rmp::encode::write_f32(&mut self.0, v).expect("w");
            self
        }
        fn f64(mut self, v: f64) -> Self {
            rmp::encode::write_f64(&mut self.0, v).expect("w");
            self
        }
        fn uint(mut self, v: u64) -> Self {
            rmp::encode::write_uint(&mut self.0, v).expect("w");
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        /// `{"id": id, "object": {"request": {<key>: <value written by f>}}}`.
        fn in_request(id: u64, key: &str, f: impl FnOnce(Mp) -> Mp) -> Vec<u8> {
            let m = Mp::default().map(2).s("id").uint(id).s("object").map(1);
            f(m.s("request").map(1).s(key)).0
        }
    }

    #[test]
    fn typical_reply() {
        let req = request_of(fast(
            json!({"id": 7, "object": {"request": {"set_headers": {"X-Pipegate-Rust": "1"}}}}),
        ));
        assert_eq!(
            req.set_headers
                .and_then(|m| m.get("X-Pipegate-Rust").cloned()),
            Some("1".into())
        );
    }

    #[test]
    fn every_request_field() {
        let req = request_of(fast(json!({"id": 1, "type": "reply", "object": {
            "hook_type": "Pre", "hook_name": "H",
            "request": {
                "headers": {"Host": "h", "X-A": "a"},
                "set_headers": {"X-B": "b"},
                "delete_headers": ["X-C", "X-D"],
                "body": "text", "url": "/u?x=1",
                "params": {"x": "1"}, "add_params": {"y": "2"}, "extended_params": {},
                "delete_params": ["z"],
                "return_overrides": {"response_code": 418, "response_error": "teapot",
                    "headers": {"X-E": "e"}, "override_error": true, "response_body": "body"},
                "method": "PUT", "request_uri": "/u?x=1", "scheme": "https",
                "raw_body": "raw as str"
            },
            "metadata": {"token": "t"}, "spec": {"APIID": "a"}
        }})));
        assert_eq!(req.delete_headers, Some(vec!["X-C".into(), "X-D".into()]));
        assert_eq!(req.delete_params, Some(vec!["z".into()]));
        assert_eq!(req.method.as_deref(), Some("PUT"));
        assert_eq!(req.scheme.as_deref(), Some("https"));
        assert_eq!(
            req.raw_body.as_deref().map(|b| &b[..]),
            Some(&b"raw as str"[..])
        );
        assert_eq!(
            req.return_overrides,
            Some(ReturnOverrides {
                response_code: Some(418),
                response_error: Some("teapot".into()),
                headers: Some([("X-E", "e".to_string())].into_iter().collect()),
                override_error: Some(true),
                response_body: Some("body".into()),
            })
        );
        // Everything absent or nil: all `None`, as in serde.
        fast(
            json!({"id": 2, "object": {"hook_type": null, "hook_name": null, "request": {
            "headers": null, "set_headers": null, "delete_headers": null, "body": null,
            "url": null, "params": null, "add_params": null, "extended_params": null,
            "delete_params": null, "return_overrides": null, "method": null,
            "request_uri": null, "scheme": null, "raw_body": null, "raw_body_file": null},
            "metadata": null, "spec": null, "session": null, "response": null}}),
        );
        fast(json!({"id": 3, "object": {"request": {"return_overrides": {
            "response_code": null, "response_error": null, "headers": null,
            "override_error": null, "response_body": null}}}}));
        assert_eq!(
            object_of(fast(json!({"id": 4, "object": null}))),
            Object::default()
        );
        assert_eq!(object_of(fast(json!({"id": 5}))), Object::default());
        assert_eq!(
            object_of(fast(json!({"id": 6, "object": {"request": {}}}))).request,
            Some(MiniRequestObject::default())
        );
        // raw_body as bin, including bytes that are not UTF-8.
        let frame = Mp::in_request(8, "raw_body", |m| m.bin(&[0, 0xff, 0xfe]));
        assert!(check(&frame));
    }

    #[test]
    fn hook_types_by_name_and_number() {
        for (v, want) in [
            (json!("Pre"), HookType::Pre),
            (json!("postkeyauth"), HookType::PostKeyAuth),
            (json!("nope"), HookType::Unknown),
            (json!(4), HookType::CustomKeyCheck),
            (json!(-3), HookType::Unknown),
            (json!(u64::MAX), HookType::Unknown),
        ] {
            let o = object_of(fast(json!({"id": 1, "object": {"hook_type": v}})));
            assert_eq!(o.hook_type, Some(want), "{v}");
        }
        // Floats and bools are serde errors.
        for v in [json!(1.0), json!(true)] {
            assert!(declined(&enc(&json!({"id": 1, "object": {"hook_type": v}}))).is_err());
        }
    }

    #[test]
    fn lenient_strings_in_maps_and_error() {
        let req = request_of(fast(json!({"id": 1, "object": {"request": {"set_headers":
            {"X-Int": 5, "X-Neg": -7, "X-Big": u64::MAX, "X-Bool": false}}}})));
        let sh = req.set_headers.expect("set_headers");
        assert_eq!(sh.get("X-Int").map(String::as_str), Some("5"));
        assert_eq!(sh.get("X-Neg").map(String::as_str), Some("-7"));
        assert_eq!(
            sh.get("X-Big").map(String::as_str),
            Some("18446744073709551615")
        );
        assert_eq!(sh.get("X-Bool").map(String::as_str), Some("false"));
        // A bin value is lossy UTF-8; an integer key is its text.
        let frame = Mp::in_request(2, "set_headers", |m| {
            m.map(2).s("X-Bin").bin(b"a\xffb").uint(12).s("twelve")
        });
        assert!(check(&frame));
        let sh = match decode_child_message(&frame) {
            Ok(m) => request_of(m).set_headers.expect("set_headers"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(sh.get("X-Bin").map(String::as_str), Some("a\u{fffd}b"));
        assert_eq!(sh.get("12").map(String::as_str), Some("twelve"));
        // error: text, number, bool; it wins over an object, which is still decoded.
        for (v, want) in [
            (json!("boom"), "boom"),
            (json!(500), "500"),
            (json!(true), "true"),
        ] {
            let m = fast(json!({"id": 9, "error": v, "object": {"request": {"body": "b"}}}));
            assert_eq!(
                m,
                ChildMessage::Reply(Reply {
                    id: 9,
                    outcome: ReplyOutcome::Error(want.into())
                })
            );
        }
        fast(json!({"id": 9, "error": null, "object": {"hook_name": "h"}}));
    }

    #[test]
    fn lenient_numbers_in_return_overrides() {
        let ro = |v: serde_json::Value| {
            request_of(fast(
                json!({"id": 1, "object": {"request": {"return_overrides": v}}}),
            ))
            .return_overrides
            .expect("return_overrides")
        };
        assert_eq!(ro(json!({"response_code": 403.0})).response_code, Some(403));
        assert_eq!(ro(json!({"response_code": -1})).response_code, Some(-1));
        assert_eq!(
            ro(json!({"response_code": i32::MIN})).response_code,
            Some(i32::MIN)
        );
        assert_eq!(ro(json!({"override_error": 1})).override_error, Some(true));
        assert_eq!(ro(json!({"override_error": 0})).override_error, Some(false));
        assert_eq!(ro(json!({"override_error": -2})).override_error, Some(true));
        let frame = Mp::in_request(2, "return_overrides", |m| {
            m.map(1).s("response_code").f32(201.0)
        });
        assert!(check(&frame));
        // What the lenient rules refuse is serde's error, with the reply's id.
        for v in [
            json!({"response_code": 1.5}),
            json!({"response_code": 3_000_000_000u64}),
            json!({"response_code": 1e300}),
            json!({"response_code": true}),
            json!({"override_error": 1.0}),
        ] {
            let frame = enc(&json!({"id": 3, "object": {"request": {"return_overrides": v}}}));
            assert!(
                matches!(
                    declined(&frame),
                    Err(FrameError::Decode { id: Some(3), .. })
                ),
                "{v}"
            );
        }
        let nan = Mp::in_request(4, "return_overrides", |m| {
            m.map(1).s("response_code").f64(f64::NAN)
        });
        assert!(declined(&nan).is_err());
    }

    #[test]
    fn message_type_and_id() {
        for t in ["reply", "dispatch", "Hello", ""] {
            fast(json!({"type": t, "id": 3}));
        }
        // id 0 with a type other than hello is a reply; without a type it is a hello.
        fast(json!({"type": "reply", "id": 0}));
        assert!(matches!(
            declined(&enc(&json!({"id": 0}))),
            Ok(ChildMessage::Hello(_))
        ));
        assert!(matches!(
            declined(&enc(&json!({"type": "hello", "id": 5, "protocol": 1}))),
            Ok(ChildMessage::Hello(_))
        ));
        assert!(matches!(
            declined(&enc(&json!({"type": "log"}))),
            Ok(ChildMessage::Ignored(Some(_)))
        ));
        assert!(matches!(
            declined(&enc(&json!({"id": null, "object": {}}))),
            Ok(ChildMessage::Ignored(None))
        ));
        fast(json!({"id": i64::MAX}));
        // A whole float id is accepted by serde; the fast path leaves it to serde.
        assert!(matches!(
            declined(&enc(&json!({"id": 5.0}))),
            Ok(ChildMessage::Reply(Reply { id: 5, .. }))
        ));
        for v in [json!(-1), json!(u64::MAX), json!("5"), json!(true)] {
            assert!(declined(&enc(&json!({"id": v}))).is_err(), "{v}");
        }
        assert!(declined(&enc(&json!({"type": 5, "id": 1}))).is_err());
    }

    #[test]
    fn unusual_shapes_are_left_to_serde() {
        let with_object = |o: serde_json::Value| enc(&json!({"id": 3, "object": o}));
        // Shapes the fast path does not read, that serde accepts.
        for frame in [
            with_object(json!({"session": {"rate": 5}})),
            with_object(json!({"response": {"status_code": 200}})),
            with_object(json!({"request": {"raw_body_file": {"path": "/p", "len": 1}}})),
            with_object(json!({"future_field": 1})),
            with_object(json!({"request": {"future_field": 1}})),
            with_object(json!({"request": {"return_overrides": {"future": 1}}})),
            with_object(json!({"request": {"set_headers": {"X-F": 1.5}}})),
            with_object(json!([null, "hook name"])),
            enc(&json!({"id": 3, "future": {"a": [1, 2]}})),
            enc(&json!({"id": 3, "protocol": 1, "name": "n", "hooks": ["A"], "mmap": true})),
            enc(&json!({"id": 3, "error": 1.5})),
            enc(&json!([null, 3])),
            // A str holding invalid UTF-8: lossy text in a string map.
            Mp::in_request(3, "set_headers", |m| {
                m.map(1).s("X-A").raw(&[0xa2, b'a', 0xff])
            }),
            // A string field sent as bin (valid UTF-8 is accepted by serde).
            Mp::in_request(3, "method", |m| m.bin(b"GET")),
            // A list element sent as bin.
            Mp::in_request(3, "delete_headers", |m| m.array(1).bin(b"X-A")),
            // A key sent as bin.
            Mp::default().map(1).bin(b"id").uint(3).0,
            // Trailing bytes after the message.
            {
                let mut f = enc(&json!({"id": 3}));
                f.push(0xc0);
                f
            },
            // Deep nesting inside an unknown field.
            {
                let mut f = Mp::default().map(2).s("id").uint(3).s("x").0;
                f.extend(std::iter::repeat_n(0x91, 2000));
                f.push(0xc0);
                f
            },
        ] {
            let _ = declined(&frame);
        }
        // Duplicates are serde errors at every level.
        for frame in [
            Mp::default().map(2).s("id").uint(3).s("id").uint(4).0,
            Mp::default()
                .map(3)
                .s("id")
                .uint(3)
                .s("object")
                .raw(&[0xc0])
                .s("object")
                .map(0)
                .0,
            Mp::in_request(3, "body", |m| m.s("a").s("body").s("b")),
            Mp::default()
                .map(2)
                .s("id")
                .uint(3)
                .s("object")
                .map(2)
                .s("spec")
                .map(0)
                .s("spec")
                .raw(&[0xc0])
                .0,
        ] {
            // The request map in `in_request` says one entry; make it two for the body case.
            let mut frame = frame;
            if let Some(p) = frame.windows(8).position(|w| w == b"\xa7request") {
                frame[p + 8] = 0x82;
            }
            assert!(declined(&frame).is_err(), "{frame:02x?}");
        }
        // Type errors the fast path declines: serde's error, with the id when it precedes.
        for v in [
            json!({"request": 5}),
            json!({"request": {"headers": ["a"]}}),
            json!({"request": {"delete_headers": "X-A"}}),
            json!({"request": {"delete_headers": [null]}}),
            json!({"request": {"set_headers": {"X-A": null}}}),
            json!({"request": {"raw_body": [1, 2]}}),
            json!({"request": {"body": 5}}),
            json!({"metadata": "x"}),
            json!({"spec": [["APIID", "a"]]}),
        ] {
            let r = declined(&with_object(v.clone()));
            assert!(
                r.is_ok() || matches!(r, Err(FrameError::Decode { id: Some(3), .. })),
                "{v}"
            );
        }
        assert!(declined(&[]).is_err());
        assert!(declined(b"\xc1").is_err());
    }

    /// Every truncation and every single-byte change of a few typical replies decodes the same
    /// both ways, and nothing panics.
    #[test]
    fn truncations_and_corruptions_match_serde() {
        let mut frames = vec![
            enc(
                &json!({"id": 7, "object": {"request": {"set_headers": {"X-Pipegate-Rust": "1"}}}}),
            ),
            enc(&json!({"id": 300, "type": "reply", "error": "hook failed"})),
            enc(
                &json!({"id": 70000, "object": {"hook_type": "Pre", "hook_name": "H",
                "request": {"delete_headers": ["X-A"], "url": "/x", "add_params": {"a": 1},
                    "return_overrides": {"response_code": 403, "override_error": 1,
                        "headers": {"X-R": "r"}, "response_error": "no"}},
                "metadata": {"token": "t"}}}),
            ),
        ];
        frames.push(Mp::in_request(9, "raw_body", |m| {
            m.bin(b"body bytes \x00\xff")
        }));
        let mut answered = 0;
        for frame in &frames {
            assert!(check(frame));
            for cut in 0..frame.len() {
                check(&frame[..cut]);
            }
            for i in 0..frame.len() {
                let mut f = frame.clone();
                for b in 0..=255u8 {
                    f[i] = b;
                    answered += usize::from(check(&f));
                }
            }
        }
        // The corruptions that keep a plain reply (another id, another header) stay fast.
        assert!(answered > 1000, "fast path answered only {answered}");
    }
}
