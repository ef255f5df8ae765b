//! The hand-written fast path for decoding the gateway's messages.
//!
//! Every hook call starts with decoding a dispatch, and through serde that cost three quarters of
//! the SDK's per-call instructions: serde's derived field matching validates every map key as
//! UTF-8 and runs it through an identifier visitor, and each value goes through several layers of
//! generic visitors. This module reads the common shapes directly with `rmp`'s low-level
//! functions, matching keys as byte slices and building the public types in place.
//!
//! It is deliberately a *subset* decoder: it accepts exactly the shapes the gateway sends (maps
//! with string keys, strings, bins, plain numbers) and answers `None` as soon as it meets anything
//! else: a struct sent as an array, a string sent as bin, a duplicate field, a non-UTF-8 string, a
//! truncated frame, trailing bytes. The caller then decodes the whole frame again with serde, so
//! every odd-but-valid input decodes exactly as before and every invalid one gets serde's error
//! text. The rare nested types (`session`, `response`, `raw_body_file`) are handed to serde here
//! too, on their own slice of the frame.

use std::collections::HashMap;

use rmp::decode::{self as rd, NumValueReadError};
use rmp::Marker;
use serde::de::DeserializeOwned;

use crate::object::{HookType, MiniRequestObject, Object, ReturnOverrides};
use crate::Incoming;

/// Decode one message into `msg` (a default `Incoming`), or answer `None` when it is not in the
/// plain shape this decoder handles: the caller then decodes it with serde, which decides whether
/// it is valid. `msg` is filled in place because it is large (an `Object` is over a kilobyte) and
/// every move of it is a memcpy.
pub(crate) fn incoming_into(frame: &[u8], msg: &mut Incoming) -> Option<()> {
    let mut r = Reader { buf: frame };
    r.incoming(msg)?;
    // Trailing bytes are serde's call; do not second-guess it here.
    r.buf.is_empty().then_some(())
}

/// rmp-serde refuses values nested deeper than 1024 levels; a skipped value with at most this many
/// containers cannot be nested that deep, so the fast path never accepts what serde would refuse.
const MAX_SKIPPED_CONTAINERS: u32 = 1000;

/// A cursor over the rest of the frame; every read either consumes a whole value or fails.
struct Reader<'a> {
    buf: &'a [u8],
}

/// Marks a field as seen; a second occurrence is a serde error ("duplicate field"), so the fast
/// path leaves it to serde.
fn first_time(seen: &mut u32, bit: u32) -> Option<()> {
    if *seen & bit != 0 {
        return None;
    }
    *seen |= bit;
    Some(())
}

/// A MessagePack number as read, before the lenient conversion to the field's type.
enum Number {
    Int(i128),
    Float(f64),
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

    fn map_len(&mut self) -> Option<u32> {
        rd::read_map_len(&mut self.buf).ok()
    }

    fn array_len(&mut self) -> Option<u32> {
        rd::read_array_len(&mut self.buf).ok()
    }

    /// A map key: any MessagePack str, as raw bytes (keys are compared, never stored).
    fn key(&mut self) -> Option<&'a [u8]> {
        let len = rd::read_str_len(&mut self.buf).ok()?;
        self.take(len)
    }

    fn string(&mut self) -> Option<String> {
        let len = rd::read_str_len(&mut self.buf).ok()?;
        let bytes = self.take(len)?;
        let text = if bytes.is_ascii() {
            // SAFETY: ASCII bytes are valid UTF-8. Header names, values, URLs and spec fields are
            // nearly always ASCII, and `is_ascii` checks a word at a time where `from_utf8` pays a
            // fixed setup per call: measured with callgrind, this saves ~60 instructions per
            // string, over 1k per typical dispatch. Other text takes the checked path below.
            unsafe { std::str::from_utf8_unchecked(bytes) }
        } else {
            std::str::from_utf8(bytes).ok()?
        };
        Some(text.to_owned())
    }

    fn is_nil(&self) -> bool {
        matches!(self.peek(), Some(Marker::Null))
    }

    fn nil(&mut self) -> Option<()> {
        rd::read_nil(&mut self.buf).ok()
    }

    fn optional_string(&mut self) -> Option<Option<String>> {
        if self.is_nil() {
            self.nil()?;
            return Some(None);
        }
        self.string().map(Some)
    }

    /// Bytes the way `serde_bytes` takes them: bin, or str (its UTF-8 bytes, unchecked as serde
    /// does not check them either). An array of numbers is left to serde.
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = match self.peek()? {
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => rd::read_bin_len(&mut self.buf).ok()?,
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                let len = rd::read_str_len(&mut self.buf).ok()?;
                let bytes = self.take(len)?;
                // serde_bytes reaches a str through `visit_str`, which rmp-serde only calls for
                // valid UTF-8 (and then `visit_bytes`, which takes anything): either way the bytes.
                return Some(bytes.to_vec());
            }
            _ => return None,
        };
        self.take(len).map(<[u8]>::to_vec)
    }

    fn bool(&mut self) -> Option<bool> {
        rd::read_bool(&mut self.buf).ok()
    }

    fn number(&mut self) -> Option<Number> {
        match self.peek()? {
            Marker::F32 => rd::read_f32(&mut self.buf)
                .ok()
                .map(|f| Number::Float(f.into())),
            Marker::F64 => rd::read_f64(&mut self.buf).ok().map(Number::Float),
            Marker::Null => self.nil().map(|()| Number::Int(0)),
            _ => {
                let v: Result<i128, NumValueReadError<_>> = rd::read_int(&mut self.buf);
                v.ok().map(Number::Int)
            }
        }
    }

    /// A number under the protocol's leniency rule (see `lenient.rs`): an int, a whole float or
    /// nil (0) within `min..=max`. Anything else goes to serde, which words the error.
    fn lenient_int(&mut self, min: i128, max: i128) -> Option<i128> {
        let v = match self.number()? {
            Number::Int(v) => v,
            Number::Float(f) => {
                if f.fract() != 0.0 || !f.is_finite() || f < min as f64 || f > max as f64 {
                    return None;
                }
                f as i128
            }
        };
        (min..=max).contains(&v).then_some(v)
    }

    /// `Option<u64>` as serde reads it: nil is `None`, a non-negative int is `Some` (no floats).
    fn optional_u64(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            Marker::Null => self.nil().map(|()| None),
            Marker::F32 | Marker::F64 => None,
            _ => {
                let v: Result<u64, NumValueReadError<_>> = rd::read_int(&mut self.buf);
                v.ok().map(Some)
            }
        }
    }

    /// Fills `map` (empty, from the default) in place, so an empty map costs nothing.
    fn string_map(&mut self, map: &mut HashMap<String, String>) -> Option<()> {
        let len = self.map_len()?;
        // Each entry takes at least two bytes: a bogus length cannot reserve a huge table.
        map.reserve((len as usize).min(self.buf.len() / 2));
        for _ in 0..len {
            let k = self.string()?;
            let v = self.string()?;
            map.insert(k, v);
        }
        Some(())
    }

    fn string_list(&mut self) -> Option<Vec<String>> {
        let len = self.array_len()?;
        let mut list = Vec::with_capacity((len as usize).min(self.buf.len()));
        for _ in 0..len {
            list.push(self.string()?);
        }
        Some(list)
    }

    /// Skip one whole value of any type (an unknown field). Iterative, so a deeply nested value
    /// cannot overflow the stack. A value with more than [`MAX_SKIPPED_CONTAINERS`] arrays and maps
    /// goes to serde, whose nesting limit then decides, so both paths accept the same frames.
    fn skip(&mut self) -> Option<()> {
        let mut pending: u64 = 1;
        let mut containers = 0u32;
        while pending > 0 {
            pending -= 1;
            let data = match self.peek()? {
                Marker::FixPos(_)
                | Marker::FixNeg(_)
                | Marker::Null
                | Marker::True
                | Marker::False => {
                    self.take(1)?;
                    0
                }
                Marker::U8
                | Marker::U16
                | Marker::U32
                | Marker::U64
                | Marker::I8
                | Marker::I16
                | Marker::I32
                | Marker::I64 => {
                    let v: Result<i128, NumValueReadError<_>> = rd::read_int(&mut self.buf);
                    v.ok()?;
                    0
                }
                Marker::F32 => {
                    rd::read_f32(&mut self.buf).ok()?;
                    0
                }
                Marker::F64 => {
                    rd::read_f64(&mut self.buf).ok()?;
                    0
                }
                Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                    rd::read_str_len(&mut self.buf).ok()?
                }
                Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                    rd::read_bin_len(&mut self.buf).ok()?
                }
                Marker::FixExt1
                | Marker::FixExt2
                | Marker::FixExt4
                | Marker::FixExt8
                | Marker::FixExt16
                | Marker::Ext8
                | Marker::Ext16
                | Marker::Ext32 => rd::read_ext_meta(&mut self.buf).ok()?.size,
                Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
                    containers += 1;
                    pending += u64::from(self.array_len()?);
                    0
                }
                Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                    containers += 1;
                    pending += 2 * u64::from(self.map_len()?);
                    0
                }
                Marker::Reserved => return None,
            };
            self.take(data)?;
            if containers > MAX_SKIPPED_CONTAINERS {
                return None;
            }
            // Every pending value needs at least one byte: a lying length fails here, early.
            if pending > self.buf.len() as u64 {
                return None;
            }
        }
        Some(())
    }

    /// The slice holding the next value, consumed.
    fn raw_value(&mut self) -> Option<&'a [u8]> {
        let start = self.buf;
        self.skip()?;
        Some(&start[..start.len() - self.buf.len()])
    }

    /// An optional rare type decoded by serde from its own slice (nil = `None`).
    fn optional_by_serde<T: DeserializeOwned>(&mut self) -> Option<Option<T>> {
        if self.is_nil() {
            self.nil()?;
            return Some(None);
        }
        let raw = self.raw_value()?;
        rmp_serde::from_slice(raw).ok().map(Some)
    }

    fn incoming(&mut self, msg: &mut Incoming) -> Option<()> {
        let mut seen = 0u32;
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"type" => {
                    first_time(&mut seen, 1)?;
                    msg.kind = self.string()?;
                }
                b"id" => {
                    first_time(&mut seen, 1 << 1)?;
                    msg.id = self.optional_u64()?;
                }
                b"object" => {
                    first_time(&mut seen, 1 << 2)?;
                    if self.is_nil() {
                        self.nil()?;
                        msg.object = None;
                    } else {
                        self.object(msg.object.get_or_insert_with(Object::default))?;
                    }
                }
                b"payload" => {
                    first_time(&mut seen, 1 << 3)?;
                    msg.payload = self.optional_string()?;
                }
                b"max_frame_bytes" => {
                    first_time(&mut seen, 1 << 4)?;
                    msg.max_frame_bytes = self.optional_u64()?;
                }
                b"api_id" => {
                    first_time(&mut seen, 1 << 5)?;
                    msg.api_id = self.string()?;
                }
                b"bundle_hash" => {
                    first_time(&mut seen, 1 << 6)?;
                    msg.bundle_hash = self.string()?;
                }
                b"path" => {
                    first_time(&mut seen, 1 << 7)?;
                    msg.path = self.string()?;
                }
                _ => self.skip()?,
            }
        }
        Some(())
    }

    fn object(&mut self, o: &mut Object) -> Option<()> {
        let mut seen = 0u32;
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"hook_type" => {
                    first_time(&mut seen, 1)?;
                    o.hook_type = self.hook_type()?;
                }
                b"hook_name" => {
                    first_time(&mut seen, 1 << 1)?;
                    o.hook_name = self.string()?;
                }
                b"request" => {
                    first_time(&mut seen, 1 << 2)?;
                    self.request(&mut o.request)?;
                }
                b"session" => {
                    first_time(&mut seen, 1 << 3)?;
                    o.session = self.optional_by_serde()?;
                }
                b"metadata" => {
                    first_time(&mut seen, 1 << 4)?;
                    self.string_map(&mut o.metadata)?;
                }
                b"spec" => {
                    first_time(&mut seen, 1 << 5)?;
                    self.string_map(&mut o.spec)?;
                }
                b"response" => {
                    first_time(&mut seen, 1 << 6)?;
                    o.response = self.optional_by_serde()?;
                }
                _ => self.skip()?,
            }
        }
        Some(())
    }

    /// The hook type by name; a name this SDK does not know is `Unknown` (serde's `other`).
    fn hook_type(&mut self) -> Option<HookType> {
        Some(match self.key()? {
            b"Pre" => HookType::Pre,
            b"Post" => HookType::Post,
            b"PostKeyAuth" => HookType::PostKeyAuth,
            b"CustomKeyCheck" => HookType::CustomKeyCheck,
            b"Response" => HookType::Response,
            _ => HookType::Unknown,
        })
    }

    /// Fills `req` (a default `MiniRequestObject`) in place: it is large, so building it where
    /// it will live saves copying it.
    fn request(&mut self, req: &mut MiniRequestObject) -> Option<()> {
        let mut seen = 0u32;
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"headers" => {
                    first_time(&mut seen, 1)?;
                    self.string_map(&mut req.headers)?;
                }
                b"set_headers" => {
                    first_time(&mut seen, 1 << 1)?;
                    self.string_map(&mut req.set_headers)?;
                }
                b"delete_headers" => {
                    first_time(&mut seen, 1 << 2)?;
                    req.delete_headers = self.string_list()?;
                }
                b"body" => {
                    first_time(&mut seen, 1 << 3)?;
                    req.body = self.string()?;
                }
                b"url" => {
                    first_time(&mut seen, 1 << 4)?;
                    req.url = self.string()?;
                }
                b"params" => {
                    first_time(&mut seen, 1 << 5)?;
                    self.string_map(&mut req.params)?;
                }
                b"add_params" => {
                    first_time(&mut seen, 1 << 6)?;
                    self.string_map(&mut req.add_params)?;
                }
                b"extended_params" => {
                    first_time(&mut seen, 1 << 7)?;
                    self.string_map(&mut req.extended_params)?;
                }
                b"delete_params" => {
                    first_time(&mut seen, 1 << 8)?;
                    req.delete_params = self.string_list()?;
                }
                b"return_overrides" => {
                    first_time(&mut seen, 1 << 9)?;
                    self.return_overrides(&mut req.return_overrides)?;
                }
                b"method" => {
                    first_time(&mut seen, 1 << 10)?;
                    req.method = self.string()?;
                }
                b"request_uri" => {
                    first_time(&mut seen, 1 << 11)?;
                    req.request_uri = self.string()?;
                }
                b"scheme" => {
                    first_time(&mut seen, 1 << 12)?;
                    req.scheme = self.string()?;
                }
                b"raw_body" => {
                    first_time(&mut seen, 1 << 13)?;
                    req.raw_body = self.bytes()?;
                }
                b"raw_body_file" => {
                    first_time(&mut seen, 1 << 14)?;
                    req.raw_body_file = self.optional_by_serde()?;
                }
                _ => self.skip()?,
            }
        }
        Some(())
    }

    fn return_overrides(&mut self, ro: &mut ReturnOverrides) -> Option<()> {
        let mut seen = 0u32;
        for _ in 0..self.map_len()? {
            match self.key()? {
                b"response_code" => {
                    first_time(&mut seen, 1)?;
                    ro.response_code = self.lenient_int(i32::MIN.into(), i32::MAX.into())? as i32;
                }
                b"response_error" => {
                    first_time(&mut seen, 1 << 1)?;
                    ro.response_error = self.string()?;
                }
                b"headers" => {
                    first_time(&mut seen, 1 << 2)?;
                    self.string_map(&mut ro.headers)?;
                }
                b"override_error" => {
                    first_time(&mut seen, 1 << 3)?;
                    ro.override_error = self.bool()?;
                }
                b"response_body" => {
                    first_time(&mut seen, 1 << 4)?;
                    ro.response_body = self.string()?;
                }
                _ => self.skip()?,
            }
        }
        Some(())
    }
}
