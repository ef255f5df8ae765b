//! Framing and messages of the pipe protocol (see `protocol/PROTOCOL.md`).
//!
//! A frame is a 4-byte big-endian length N followed by N bytes holding one MessagePack map. The
//! encoders append to a caller-owned `Vec<u8>` so that the writer can coalesce many frames into one
//! buffer and one `write`, and so that no frame costs an allocation once the buffer has grown. The
//! [`FrameDecoder`] accepts bytes in whatever chunks the pipe delivers and hands out complete frames
//! as slices of its own buffer (no copy), refusing a length above the configured maximum before
//! buffering anything of it: a peer cannot make the gateway allocate more than the maximum.

use super::object::{lenient, LenientString, Object};
use super::reply_decode;
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read};

/// Protocol version spoken by this gateway (sent and required in `hello`).
pub const PROTOCOL_VERSION: u64 = 1;
/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Default largest frame (64 MiB), as in `coprocess_options.max_frame_bytes`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;
/// How much the decoder asks the pipe for at least, per read.
pub const READ_CHUNK: usize = 256 << 10;

/// A framing or message error.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameError {
    /// A length prefix (or an encoded message) above the maximum. The stream cannot be trusted.
    TooLarge {
        /// The announced (or encoded) length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A message could not be encoded (a bug or an unencodable value).
    Encode(String),
    /// A frame is not a valid message. `id` is set when the frame was a map with a usable `id`, so
    /// that the one call it belongs to can be failed while the stream stays usable.
    Decode {
        /// The request id the frame carried, if any could be read.
        id: Option<u64>,
        /// What was wrong.
        reason: String,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => write!(
                f,
                "frame of {len} bytes exceeds max_frame_bytes ({max}); raise coprocess_options.max_frame_bytes \
                 or send less (e.g. large bodies as raw_body_file), and make sure the plugin never prints to stdout"
            ),
            FrameError::Encode(e) => write!(f, "cannot encode message: {e}"),
            FrameError::Decode { id: Some(id), reason } => write!(f, "bad reply to request {id}: {reason}"),
            FrameError::Decode { id: None, reason } => write!(f, "undecodable frame: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// `hello`, the gateway's first message (id 0).
#[derive(Debug, Clone)]
pub struct Hello<'a> {
    /// Gateway name and version, e.g. `pipegate/0.1.0`.
    pub gateway: &'a str,
    /// The largest frame the gateway accepts (the child should not send more).
    pub max_frame_bytes: u64,
}

impl Serialize for Hello<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Hello", 5)?;
        m.serialize_field("type", "hello")?;
        m.serialize_field("id", &0u64)?;
        m.serialize_field("protocol", &PROTOCOL_VERSION)?;
        m.serialize_field("gateway", self.gateway)?;
        m.serialize_field("max_frame_bytes", &self.max_frame_bytes)?;
        m.end()
    }
}

/// `dispatch`: run a hook on `object` (an owned [`Object`], or anything that serializes as one,
/// such as the chain's borrowed request view, which saves building the owned object per call).
#[derive(Debug, Clone)]
pub struct Dispatch<'a, T: ?Sized = Object> {
    /// Request id, echoed in the reply.
    pub id: u64,
    /// The hook's object.
    pub object: &'a T,
}

impl<T: Serialize + ?Sized> Serialize for Dispatch<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Dispatch", 3)?;
        m.serialize_field("type", "dispatch")?;
        m.serialize_field("id", &self.id)?;
        m.serialize_field("object", self.object)?;
        m.end()
    }
}

/// `event`: Tyk's DispatchEvent, fire and forget.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// The event as JSON text.
    pub payload: &'a str,
}

impl Serialize for Event<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Event", 2)?;
        m.serialize_field("type", "event")?;
        m.serialize_field("payload", self.payload)?;
        m.end()
    }
}

/// `load_bundle`: tell the child where an API's plugin bundle is.
#[derive(Debug, Clone)]
pub struct LoadBundle<'a> {
    /// Request id, echoed in the reply.
    pub id: u64,
    /// The API the bundle belongs to.
    pub api_id: &'a str,
    /// The bundle's MD5 hex (`spec["bundle_hash"]` in dispatches).
    pub bundle_hash: &'a str,
    /// Absolute directory of the unpacked bundle.
    pub path: &'a str,
    /// The bundle's manifest.json.
    pub manifest: &'a serde_json::Value,
}

impl Serialize for LoadBundle<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("LoadBundle", 6)?;
        m.serialize_field("type", "load_bundle")?;
        m.serialize_field("id", &self.id)?;
        m.serialize_field("api_id", self.api_id)?;
        m.serialize_field("bundle_hash", self.bundle_hash)?;
        m.serialize_field("path", self.path)?;
        m.serialize_field("manifest", self.manifest)?;
        m.end()
    }
}

/// Appends one frame holding `msg` to `buf`. On error `buf` is left as it was.
///
/// Returns the payload length. A payload above `max` is refused: the child would treat it as a
/// protocol error.
pub fn encode_frame<T: Serialize>(
    buf: &mut Vec<u8>,
    msg: &T,
    max: usize,
) -> Result<usize, FrameError> {
    encode_frame_with(buf, max, |out| {
        msg.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
    })
}

/// Appends one frame whose payload `write` appends; the length prefix, the size limit and the
/// roll-back on error are handled here, as in [`encode_frame`]. Exists for encoders that write
/// MessagePack with `rmp` directly instead of through serde, where that is measurably cheaper
/// (the borrowed request hook object on the hot path).
pub fn encode_frame_with<E: fmt::Display>(
    buf: &mut Vec<u8>,
    max: usize,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<usize, FrameError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = write(buf) {
        buf.truncate(start);
        return Err(FrameError::Encode(e.to_string()));
    }
    let len = buf.len() - start - HEADER_LEN;
    let limit = max.min(u32::MAX as usize);
    if len > limit {
        buf.truncate(start);
        return Err(FrameError::TooLarge { len, max: limit });
    }
    buf[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(len)
}

/// Appends a `dispatch` frame.
pub fn encode_dispatch<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    id: u64,
    object: &T,
    max: usize,
) -> Result<usize, FrameError> {
    encode_frame(buf, &Dispatch { id, object }, max)
}

/// Appends a `hello` frame.
pub fn encode_hello(buf: &mut Vec<u8>, gateway: &str, max: usize) -> Result<usize, FrameError> {
    let hello = Hello {
        gateway,
        max_frame_bytes: max as u64,
    };
    encode_frame(buf, &hello, max)
}

/// Appends an `event` frame.
pub fn encode_event(buf: &mut Vec<u8>, payload: &str, max: usize) -> Result<usize, FrameError> {
    encode_frame(buf, &Event { payload }, max)
}

/// The child's answer to `hello`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HelloReply {
    /// Protocol version the child speaks (must be [`PROTOCOL_VERSION`]).
    pub protocol: Option<u64>,
    /// The plugin's name, for logs.
    pub name: Option<String>,
    /// Hook names the child implements; `None` = all.
    pub hooks: Option<Vec<String>>,
    /// Whether the child accepts bodies as files (`raw_body_file`).
    pub mmap: bool,
}

/// What a reply carries.
// The object is moved once, into the worker's `HookReply`; boxing it would cost an allocation
// per reply to save a memcpy of about a kilobyte.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyOutcome {
    /// The (possibly partial) changed object; an absent `object` decodes as an empty one, i.e.
    /// "no change".
    Object(Object),
    /// The plugin reported a failure.
    Error(String),
}

/// A child's reply to a `dispatch` or `load_bundle`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The request id it answers.
    pub id: u64,
    /// The result.
    pub outcome: ReplyOutcome,
}

/// Any message a child sends.
#[allow(clippy::large_enum_variant)] // see `ReplyOutcome`
#[derive(Debug, Clone, PartialEq)]
pub enum ChildMessage {
    /// The hello answer.
    Hello(HelloReply),
    /// A reply to a request.
    Reply(Reply),
    /// A map without an `id` (and not a hello): nothing to route, ignored. Carries its `type`.
    Ignored(Option<String>),
}

#[derive(Deserialize)]
struct RawChild<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    id: Option<u64>,
    #[serde(default)]
    object: Option<Object>,
    #[serde(default)]
    error: Option<LenientString>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    protocol: Option<u64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    hooks: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    mmap: Option<bool>,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    id: Option<u64>,
}

/// Decodes one frame payload from the child. Never panics; an error says whether the frame's id
/// could be read (see [`FrameError::Decode`]).
///
/// Plain hook replies (the hot path: one per hooked request) are read by the hand-written decoder
/// in `reply_decode`, filling the reply where it is returned; every other frame, and every frame
/// that decoder declines, goes through [`decode_child_message_serde`], with the same result.
pub fn decode_child_message(frame: &[u8]) -> Result<ChildMessage, FrameError> {
    // Built as the returned value and filled through a reference, with one variable returned on
    // every path: the compiler then builds it in the caller's slot, where returning a `Reply`
    // wrapped on the way out cost a ~700-byte memcpy per reply (callgrind).
    let mut msg = Ok(ChildMessage::Reply(Reply {
        id: 0,
        outcome: ReplyOutcome::Object(Object::default()),
    }));
    let fast = match &mut msg {
        Ok(ChildMessage::Reply(reply)) => reply_decode::reply_into(frame, reply).is_some(),
        _ => false,
    };
    if !fast {
        msg = decode_child_message_serde(frame);
    }
    msg
}

/// The hand-written reply decoder alone: `Some` for the plain reply shapes it reads, `None` when
/// it declines (the frame is then serde's, see [`decode_child_message`]). Public so that the fuzz
/// target and the benches can hold it against [`decode_child_message_serde`].
pub fn decode_plain_reply(frame: &[u8]) -> Option<Reply> {
    let mut reply = Reply {
        id: 0,
        outcome: ReplyOutcome::Object(Object::default()),
    };
    reply_decode::reply_into(frame, &mut reply).map(|()| reply)
}

/// Decodes any child message through serde (rmp-serde into the lenient object model): the
/// reference behaviour, and the path for everything the fast reply decoder declines. Public for
/// the differential fuzz target and the benches.
pub fn decode_child_message_serde(frame: &[u8]) -> Result<ChildMessage, FrameError> {
    let raw: RawChild<'_> = match rmp_serde::from_slice(frame) {
        Ok(r) => r,
        Err(e) => {
            let id = rmp_serde::from_slice::<IdOnly>(frame)
                .ok()
                .and_then(|i| i.id);
            return Err(FrameError::Decode {
                id,
                reason: e.to_string(),
            });
        }
    };
    let is_hello = match raw.kind.as_deref() {
        Some(k) => k == "hello",
        None => raw.id == Some(0),
    };
    if is_hello {
        return Ok(ChildMessage::Hello(HelloReply {
            protocol: raw.protocol,
            name: raw.name,
            hooks: raw.hooks,
            mmap: raw.mmap.unwrap_or(false),
        }));
    }
    let Some(id) = raw.id else {
        // A well-formed map that answers nothing: a message type from a newer protocol revision
        // (ignored for forward compatibility) or a stray map. Either way the stream is intact.
        return Ok(ChildMessage::Ignored(raw.kind.map(Cow::into_owned)));
    };
    let outcome = match raw.error {
        Some(e) => ReplyOutcome::Error(e.0),
        None => ReplyOutcome::Object(raw.object.unwrap_or_default()),
    };
    Ok(ChildMessage::Reply(Reply { id, outcome }))
}

/// Splits a byte stream into frames.
///
/// Bytes live in one buffer: `buf[start..filled]` is unconsumed data. Frames are returned as slices
/// of it; consumed space is reclaimed lazily (before the next read), so a burst of small frames costs
/// no copying at all.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    max: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder refusing frames whose payload exceeds `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            filled: 0,
            max: max_frame_bytes.min(u32::MAX as usize),
            failed: None,
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.filled - self.start
    }

    /// Appends bytes (any split: partial frames, many frames, both).
    pub fn push(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.buf[self.filled..self.filled + bytes.len()].copy_from_slice(bytes);
        self.filled += bytes.len();
    }

    /// Reads once from `r` straight into the buffer, asking for at least [`READ_CHUNK`] bytes (or
    /// the rest of a large frame whose length is known). Returns what `read` returned.
    pub fn read_from<R: Read>(&mut self, r: &mut R) -> io::Result<usize> {
        let mut want = READ_CHUNK;
        if let Some(len) = self.peek_len() {
            if len <= self.max {
                want = want.max(HEADER_LEN + len - self.buffered().min(HEADER_LEN + len));
            }
        }
        self.reserve(want);
        let n = r.read(&mut self.buf[self.filled..])?;
        self.filled += n;
        Ok(n)
    }

    /// The next complete frame's payload, `Ok(None)` if more bytes are needed, or an error if the
    /// length prefix exceeds the maximum (the decoder then stays failed: the stream is lost).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(len) = self.peek_len() else {
            return Ok(None);
        };
        if len > self.max {
            let e = FrameError::TooLarge { len, max: self.max };
            self.failed = Some(e.clone());
            return Err(e);
        }
        if self.buffered() < HEADER_LEN + len {
            return Ok(None);
        }
        let from = self.start + HEADER_LEN;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    fn peek_len(&self) -> Option<usize> {
        let b = self.buf.get(self.start..self.start + HEADER_LEN)?;
        if self.buffered() < HEADER_LEN {
            return None;
        }
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// Makes room for `extra` more bytes after `filled`, compacting before growing.
    fn reserve(&mut self, extra: usize) {
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
            // Give back the memory of an unusually large frame once it is consumed.
            if self.buf.len() > 4 * READ_CHUNK && extra <= READ_CHUNK {
                self.buf = Vec::new();
            }
        }
        if self.buf.len() - self.filled >= extra {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.filled < extra {
            // Amortised doubling for small pushes; reads ask for READ_CHUNK anyway.
            let new_len = (self.filled + extra).max(self.buf.len() * 2);
            self.buf.resize(new_len, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coprocess::object::{HookType, MiniRequestObject, StringMap};

    #[derive(Deserialize, Debug, PartialEq)]
    struct SeenDispatch {
        #[serde(rename = "type")]
        kind: String,
        id: u64,
        object: Object,
    }

    fn frames_of(dec: &mut FrameDecoder) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = dec.next_frame().expect("frame") {
            out.push(f.to_vec());
        }
        out
    }

    fn reply_frame(id: u64, header: &str) -> Vec<u8> {
        let v =
            serde_json::json!({"id": id, "object": {"request": {"set_headers": {"X-Id": header}}}});
        let body = rmp_serde::to_vec(&v).expect("enc");
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn encode_dispatch_roundtrip_and_header() {
        let obj = Object {
            hook_type: Some(HookType::Pre),
            hook_name: Some("H".into()),
            ..Default::default()
        };
        let mut buf = vec![0xEE]; // frames append after existing content
        let len = encode_dispatch(&mut buf, 42, &obj, 1 << 20).expect("encode");
        assert_eq!(buf[0], 0xEE);
        assert_eq!(&buf[1..5], &(len as u32).to_be_bytes());
        assert_eq!(buf.len(), 1 + 4 + len);
        let seen: SeenDispatch = rmp_serde::from_slice(&buf[5..]).expect("decode");
        assert_eq!(
            seen,
            SeenDispatch {
                kind: "dispatch".into(),
                id: 42,
                object: obj
            }
        );
    }

    #[test]
    fn hello_frame_bytes() {
        let mut buf = Vec::new();
        encode_hello(&mut buf, "pipegate/0.1.0", 1024).expect("encode");
        #[derive(Deserialize)]
        struct H {
            #[serde(rename = "type")]
            kind: String,
            id: u64,
            protocol: u64,
            gateway: String,
            max_frame_bytes: u64,
        }
        let h: H = rmp_serde::from_slice(&buf[4..]).expect("decode");
        assert_eq!(
            (
                h.kind.as_str(),
                h.id,
                h.protocol,
                h.gateway.as_str(),
                h.max_frame_bytes
            ),
            ("hello", 0, 1, "pipegate/0.1.0", 1024)
        );
    }

    #[test]
    fn encode_refuses_oversized_and_leaves_buffer_intact() {
        let obj = Object {
            hook_name: Some("x".repeat(1000)),
            ..Default::default()
        };
        let mut buf = b"keep".to_vec();
        let err = encode_dispatch(&mut buf, 1, &obj, 100).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { max: 100, .. }));
        assert_eq!(buf, b"keep");
    }

    #[test]
    fn event_and_load_bundle_shapes() {
        let mut buf = Vec::new();
        encode_event(&mut buf, "{\"a\":1}", 1 << 20).expect("event");
        let manifest =
            serde_json::json!({"file_list": ["a.py"], "custom_middleware": {"driver": "python"}});
        let lb = LoadBundle {
            id: 9,
            api_id: "api",
            bundle_hash: "abc",
            path: "/b",
            manifest: &manifest,
        };
        encode_frame(&mut buf, &lb, 1 << 20).expect("bundle");
        let mut dec = FrameDecoder::new(1 << 20);
        dec.push(&buf);
        let frames = frames_of(&mut dec);
        assert_eq!(frames.len(), 2);
        let ev: serde_json::Value = rmp_serde::from_slice(&frames[0]).expect("ev");
        assert_eq!(
            ev,
            serde_json::json!({"type": "event", "payload": "{\"a\":1}"})
        );
        let b: serde_json::Value = rmp_serde::from_slice(&frames[1]).expect("lb");
        assert_eq!(
            b,
            serde_json::json!({"type": "load_bundle", "id": 9, "api_id": "api", "bundle_hash": "abc",
                               "path": "/b", "manifest": manifest})
        );
    }

    #[test]
    fn decoder_handles_byte_by_byte_and_merged_chunks() {
        let mut stream = Vec::new();
        for i in 1..=50u64 {
            stream.extend_from_slice(&reply_frame(i, &format!("v{i}")));
        }
        // One byte at a time.
        let mut dec = FrameDecoder::new(1 << 20);
        let mut got = Vec::new();
        for b in &stream {
            dec.push(std::slice::from_ref(b));
            got.extend(frames_of(&mut dec));
        }
        assert_eq!(got.len(), 50);
        // Irregular chunks spanning frame boundaries.
        let mut dec = FrameDecoder::new(1 << 20);
        let mut got2 = Vec::new();
        let mut pos = 0;
        let mut step = 1;
        while pos < stream.len() {
            let end = (pos + step).min(stream.len());
            dec.push(&stream[pos..end]);
            got2.extend(frames_of(&mut dec));
            pos = end;
            step = step * 7 % 97 + 1;
        }
        assert_eq!(got, got2);
        assert_eq!(dec.buffered(), 0);
        for (i, f) in (1..).zip(got.iter()) {
            match decode_child_message(f).expect("msg") {
                ChildMessage::Reply(Reply {
                    id,
                    outcome: ReplyOutcome::Object(o),
                }) => {
                    assert_eq!(id, i);
                    let sh = o.request.and_then(|r| r.set_headers).expect("sh");
                    assert_eq!(
                        sh.get("X-Id").map(String::as_str),
                        Some(format!("v{i}").as_str())
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn decoder_reads_from_reader() {
        let mut stream = Vec::new();
        for i in 0..1000u64 {
            stream.extend_from_slice(&reply_frame(i, "x"));
        }
        let mut src = io::Cursor::new(stream);
        let mut dec = FrameDecoder::new(1 << 20);
        let mut n = 0;
        while dec.read_from(&mut src).expect("read") > 0 {
            n += frames_of(&mut dec).len();
        }
        assert_eq!(n, 1000);
    }

    #[test]
    fn decoder_large_frame_grows_and_shrinks() {
        let big = vec![7u8; 3 * READ_CHUNK];
        let v = serde_json::json!({"id": 1, "error": "x"});
        let mut payload = rmp_serde::to_vec(&v).expect("enc");
        payload.extend_from_slice(&big); // trailing bytes are ignored by the message decoder
        let mut stream = (payload.len() as u32).to_be_bytes().to_vec();
        stream.extend_from_slice(&payload);
        stream.extend_from_slice(&reply_frame(2, "y"));
        let mut dec = FrameDecoder::new(8 * READ_CHUNK);
        let mut src = io::Cursor::new(stream);
        let mut frames = Vec::new();
        while dec.read_from(&mut src).expect("read") > 0 {
            frames.extend(frames_of(&mut dec));
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].len(), payload.len());
    }

    #[test]
    fn decoder_rejects_oversized_and_stays_failed() {
        let mut dec = FrameDecoder::new(1000);
        dec.push(&1001u32.to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge {
                len: 1001,
                max: 1000
            })
        );
        dec.push(&reply_frame(1, "x"));
        assert!(dec.next_frame().is_err());
        // Text printed to stdout looks like a huge length.
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        dec.push(b"hello world\n");
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn child_messages() {
        let enc = |v: serde_json::Value| rmp_serde::to_vec(&v).expect("enc");
        assert_eq!(
            decode_child_message(&enc(
                serde_json::json!({"type": "hello", "id": 0, "protocol": 1,
                "name": "p", "hooks": ["A"], "mmap": true, "extra": [1, 2]})
            ))
            .expect("hello"),
            ChildMessage::Hello(HelloReply {
                protocol: Some(1),
                name: Some("p".into()),
                hooks: Some(vec!["A".into()]),
                mmap: true
            })
        );
        assert_eq!(
            decode_child_message(&enc(serde_json::json!({"id": 5}))).expect("bare"),
            ChildMessage::Reply(Reply {
                id: 5,
                outcome: ReplyOutcome::Object(Object::default())
            })
        );
        assert_eq!(
            decode_child_message(&enc(
                serde_json::json!({"id": 6, "error": "boom", "object": null})
            ))
            .expect("err"),
            ChildMessage::Reply(Reply {
                id: 6,
                outcome: ReplyOutcome::Error("boom".into())
            })
        );
        let want = Object {
            request: Some(MiniRequestObject {
                set_headers: Some(StringMap::from_iter([("X-Foo", "bar".to_string())])),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            decode_child_message(&enc(serde_json::json!({"id": 7, "object": {"request": {"set_headers": {"X-Foo": "bar"}}}})))
                .expect("partial"),
            ChildMessage::Reply(Reply {
                id: 7,
                outcome: ReplyOutcome::Object(want)
            })
        );
        // A broken object with a readable id: the call can be failed on its own.
        assert!(matches!(
            decode_child_message(&enc(serde_json::json!({"id": 8, "object": {"request": 5}}))),
            Err(FrameError::Decode { id: Some(8), .. })
        ));
        assert_eq!(
            decode_child_message(&enc(serde_json::json!({"object": {}}))),
            Ok(ChildMessage::Ignored(None))
        );
        assert_eq!(
            decode_child_message(&enc(
                serde_json::json!({"type": "log", "text": "future message"})
            )),
            Ok(ChildMessage::Ignored(Some("log".into())))
        );
        // A reply may carry any type other than hello (e.g. the request's own).
        assert!(matches!(
            decode_child_message(&enc(serde_json::json!({"type": "dispatch", "id": 3}))),
            Ok(ChildMessage::Reply(Reply { id: 3, .. }))
        ));
        assert!(matches!(
            decode_child_message(b"\xc1garbage"),
            Err(FrameError::Decode { id: None, .. })
        ));
        assert!(matches!(
            decode_child_message(&[]),
            Err(FrameError::Decode { id: None, .. })
        ));
    }

    #[test]
    fn child_decode_never_panics_on_garbage() {
        let good = reply_frame(3, "abc")[4..].to_vec();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5_000 {
            let mut f = good.clone();
            for _ in 0..(next() % 6 + 1) {
                let i = next() as usize % f.len();
                f[i] = next() as u8;
            }
            let _ = decode_child_message(&f);
            let _ = decode_child_message(&f[..next() as usize % f.len()]);
        }
        // And a decoder fed random bytes only ever yields frames or TooLarge.
        let mut dec = FrameDecoder::new(4096);
        for _ in 0..10_000 {
            let chunk: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            dec.push(&chunk);
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        let _ = decode_child_message(f);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        dec = FrameDecoder::new(4096);
                        break;
                    }
                }
            }
        }
    }
}
