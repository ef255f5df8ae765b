//! The hook object model shared by every transport (pipe now, gRPC later).
//!
//! The structs and fields are named exactly like Tyk's coprocess protobuf messages
//! (`coprocess.Object`, `MiniRequestObject`, `SessionState`, ...) so that a plugin author who knows
//! Tyk recognises every key, and so that the protobuf conversion for gRPC is a field-by-field copy.
//!
//! Design choices, and why:
//! - **Every field is an `Option`** and absent fields are not serialized. On the way back from the
//!   plugin an absent field means "unchanged" (the pipe protocol lets a plugin answer with only what
//!   it changed), which a plain `String`/`Vec` could not tell apart from "set to empty".
//! - **Maps are [`PairMap`]s (an ordered `Vec` of pairs), not `HashMap`s.** Request maps are small
//!   (a dozen headers), built once from the parsed request and consumed by iterating (applying
//!   `set_headers`, copying `headers`), almost never looked up by key. A `Vec` decodes with one
//!   allocation and no hashing, keeps the header order of the request, and encodes in that order,
//!   which makes frames reproducible. Lookups ([`PairMap::get`]) are a linear scan, which beats
//!   hashing for maps this small. Duplicate keys in a received map are kept in order; "last one
//!   wins" when applied in order, like a map.
//! - **Numbers are decoded leniently**: an int where a float is expected and a float with no
//!   fraction where an int is expected are accepted, because dynamic languages (Python, JS) do not
//!   keep the distinction. A value that does not fit is an error, never a silent wrap.
//! - **`raw_body` is MessagePack bin** (`serde_bytes::ByteBuf`), not base64: it is the
//!   authoritative body and may be binary. A `str` is accepted on decode too, because Python's
//!   `msgpack` packs `str` values as MessagePack str.
//! - Decoding never panics: every failure is a `Result` error (rmp-serde also bounds nesting depth).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::fmt;

/// Which of Tyk's hook kinds a call is for (`coprocess.HookType`).
///
/// Serialized as its name (`"Pre"`, ...) because names are self-describing for plugin authors; the
/// protobuf numbers (0..=5) are accepted on decode, as are Tyk's Python binding names (`"pre"`,
/// `"postkeyauth"`, ...). Any other name or number decodes as [`HookType::Unknown`] rather than
/// failing the whole reply: the gateway never acts on a hook type returned by a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HookType {
    /// Not a hook (protobuf value 0); never sent by pipegate.
    #[default]
    Unknown,
    /// `pre` hooks, before authentication (1).
    Pre,
    /// `post` hooks, just before the request is proxied (2).
    Post,
    /// `post_key_auth` hooks, after authentication (3).
    PostKeyAuth,
    /// The `auth_check` hook (4).
    CustomKeyCheck,
    /// `response` hooks, on the upstream response (5).
    Response,
}

impl HookType {
    /// The protobuf enum name, as sent on the pipe.
    pub fn name(self) -> &'static str {
        match self {
            HookType::Unknown => "Unknown",
            HookType::Pre => "Pre",
            HookType::Post => "Post",
            HookType::PostKeyAuth => "PostKeyAuth",
            HookType::CustomKeyCheck => "CustomKeyCheck",
            HookType::Response => "Response",
        }
    }

    /// The protobuf enum number, for the gRPC transport.
    pub fn as_i32(self) -> i32 {
        match self {
            HookType::Unknown => 0,
            HookType::Pre => 1,
            HookType::Post => 2,
            HookType::PostKeyAuth => 3,
            HookType::CustomKeyCheck => 4,
            HookType::Response => 5,
        }
    }

    /// From the protobuf number; out-of-range numbers are `Unknown`.
    pub fn from_i64(v: i64) -> HookType {
        match v {
            1 => HookType::Pre,
            2 => HookType::Post,
            3 => HookType::PostKeyAuth,
            4 => HookType::CustomKeyCheck,
            5 => HookType::Response,
            _ => HookType::Unknown,
        }
    }

    /// From a name: the protobuf name (any case) or Tyk's Python binding name; otherwise `Unknown`.
    pub fn from_name(name: &str) -> HookType {
        const ALL: [HookType; 5] = [
            HookType::Pre,
            HookType::Post,
            HookType::PostKeyAuth,
            HookType::CustomKeyCheck,
            HookType::Response,
        ];
        ALL.into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
            .unwrap_or(HookType::Unknown)
    }
}

impl Serialize for HookType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for HookType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HookType;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a hook type name or number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HookType, E> {
                Ok(HookType::from_name(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<HookType, E> {
                Ok(std::str::from_utf8(v).map_or(HookType::Unknown, HookType::from_name))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HookType, E> {
                Ok(HookType::from_i64(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HookType, E> {
                Ok(i64::try_from(v).map_or(HookType::Unknown, HookType::from_i64))
            }
        }
        d.deserialize_any(V)
    }
}

/// An ordered string-keyed map, encoded as a MessagePack map (see the module docs for why it is a
/// `Vec` of pairs).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PairMap<V>(pub Vec<(String, V)>);

/// The protobuf `map<string,string>`.
pub type StringMap = PairMap<String>;

impl<V> PairMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        PairMap(Vec::new())
    }

    /// The value of the last entry named `key` (exact, case-sensitive match, like a Go map).
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Replaces the value of an existing entry `key`, or appends one.
    pub fn insert(&mut self, key: impl Into<String>, value: V) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Appends without checking for an existing key (for building from already-unique sources).
    pub fn push(&mut self, key: impl Into<String>, value: V) {
        self.0.push((key.into(), value));
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V> FromIterator<(K, V)> for PairMap<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        PairMap(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl<V: Serialize> Serialize for PairMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Values of a [`PairMap`] are decoded through this trait so that string maps can be lenient
/// (numbers and bools become their text) while maps of messages decode normally.
pub trait MapValue: Sized {
    /// Decodes one map value.
    fn decode_value<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Self, A::Error>;
}

impl MapValue for String {
    fn decode_value<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Self, A::Error> {
        map.next_value::<LenientString>().map(|s| s.0)
    }
}

impl MapValue for AccessDefinition {
    fn decode_value<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Self, A::Error> {
        map.next_value()
    }
}

impl<'de, V: MapValue> Deserialize<'de> for PairMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: MapValue> Visitor<'de> for Vis<V> {
            type Value = PairMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map with string keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // Cap the pre-allocation: the size hint comes from the peer.
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(k) = map.next_key::<LenientString>()? {
                    let v = V::decode_value(&mut map)?;
                    out.push((k.0, v));
                }
                Ok(PairMap(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(PairMap(Vec::new()))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

/// A string that also accepts bytes (lossy UTF-8), numbers and bools, so that a plugin writing
/// `headers["X-Count"] = 5` still works.
pub(super) struct LenientString(pub(super) String);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LenientString, E> {
                Ok(LenientString(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<LenientString, E> {
                Ok(LenientString(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<LenientString, E> {
                Ok(LenientString(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LenientString, E> {
                Ok(LenientString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Lenient decoders for numeric and bool fields, used with `deserialize_with`.
pub(super) mod lenient {
    use super::*;

    /// Any scalar a dynamic language may put where a number is expected.
    enum Num {
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }

    struct NumVisitor;

    impl<'de> Visitor<'de> for NumVisitor {
        type Value = Option<Num>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Num::I(v)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Num::U(v)))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(Num::F(v)))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(Num::B(v)))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(NumVisitor)
        }
    }

    fn to_i64<E: de::Error>(n: Num) -> Result<i64, E> {
        match n {
            Num::I(v) => Ok(v),
            Num::U(v) => i64::try_from(v).map_err(|_| E::custom(format!("{v} does not fit int64"))),
            // The range check keeps `as` from saturating silently (2^63 itself is out of range).
            Num::F(v)
                if v.fract() == 0.0
                    && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&v) =>
            {
                Ok(v as i64)
            }
            Num::F(v) => Err(E::custom(format!("{v} is not an integer"))),
            Num::B(_) => Err(E::custom("expected an integer, found a bool")),
        }
    }

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_any(NumVisitor)?.map(to_i64).transpose()
    }

    pub fn opt_i32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
        match d
            .deserialize_any(NumVisitor)?
            .map(to_i64::<D::Error>)
            .transpose()?
        {
            None => Ok(None),
            Some(v) => i32::try_from(v)
                .map(Some)
                .map_err(|_| de::Error::custom(format!("{v} does not fit int32"))),
        }
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match d.deserialize_any(NumVisitor)?.map(to_i64::<D::Error>) {
            None => Ok(None),
            Some(Ok(v)) if v >= 0 => Ok(Some(v as u64)),
            Some(Ok(v)) => Err(de::Error::custom(format!("{v} is negative"))),
            Some(Err(e)) => Err(e),
        }
    }

    pub fn u64_req<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match d.deserialize_any(NumVisitor)?.map(to_i64::<D::Error>) {
            Some(Ok(v)) if v >= 0 => Ok(v as u64),
            _ => Err(de::Error::custom("expected a non-negative integer")),
        }
    }

    fn to_f64<E: de::Error>(n: Num) -> Result<f64, E> {
        match n {
            Num::I(v) => Ok(v as f64),
            Num::U(v) => Ok(v as f64),
            Num::F(v) => Ok(v),
            Num::B(_) => Err(E::custom("expected a number, found a bool")),
        }
    }

    pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(NumVisitor)?.map(to_f64).transpose()
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        match d.deserialize_any(NumVisitor)? {
            None => Ok(None),
            Some(Num::B(b)) => Ok(Some(b)),
            Some(Num::I(v)) => Ok(Some(v != 0)),
            Some(Num::U(v)) => Ok(Some(v != 0)),
            Some(Num::F(_)) => Err(de::Error::custom("expected a bool, found a float")),
        }
    }

    struct F64(f64);
    impl<'de> Deserialize<'de> for F64 {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            match d.deserialize_any(NumVisitor)? {
                Some(n) => to_f64(n).map(F64),
                None => Err(de::Error::custom("expected a number, found nil")),
            }
        }
    }

    pub fn opt_vec_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Vec<f64>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(F64(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Some(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V)
    }
}

/// `coprocess.Object`: everything a hook sees and may change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Object {
    /// Which kind of hook this call is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_type: Option<HookType>,
    /// The middleware definition's `name` (the function the plugin should run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_name: Option<String>,
    /// The request as the hook sees it, plus the changes it asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<MiniRequestObject>,
    /// The session (absent before authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Box<SessionState>>,
    /// Free-form metadata; `metadata["token"]` names the key an auth hook authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<StringMap>,
    /// API facts: `OrgID`, `APIID`, `bundle_hash`, `config_data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<StringMap>,
    /// The upstream response (Response hooks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseObject>,
}

/// A body handed over as a file instead of inline (pipe protocol extension; see PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawBodyFile {
    /// Absolute path of the file holding the body.
    pub path: String,
    /// Body length in bytes.
    #[serde(deserialize_with = "lenient::u64_req")]
    pub len: u64,
}

/// `coprocess.MiniRequestObject`: the request, and the changes a hook asks for.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MiniRequestObject {
    /// Incoming headers, Go-canonical names, first value only, plus `Host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<StringMap>,
    /// Headers the hook sets (replacing existing values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_headers: Option<StringMap>,
    /// Header names the hook deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_headers: Option<Vec<String>>,
    /// The body as text ("" when not UTF-8 or `raw_body_only`); ignored on return, as in Tyk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Full path including the listen path, plus `?query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Query parameters, first value per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<StringMap>,
    /// Query parameters the hook sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_params: Option<StringMap>,
    /// Always empty (unsupported in Tyk too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_params: Option<StringMap>,
    /// Query parameters the hook deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_params: Option<Vec<String>>,
    /// How the hook answers the client directly or fails the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_overrides: Option<ReturnOverrides>,
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The raw request URI as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_uri: Option<String>,
    /// `"http"` or `"https"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The body bytes; authoritative on return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<ByteBuf>,
    /// The body as a file instead of `raw_body` (pipe extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body_file: Option<RawBodyFile>,
}

/// `coprocess.ReturnOverrides`: a hook's direct answer or error.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReturnOverrides {
    /// Status to answer with; the gateway sends -1 ("no override").
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i32"
    )]
    pub response_code: Option<i32>,
    /// Error text (also used as the body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_error: Option<String>,
    /// Headers set on the direct or error response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<StringMap>,
    /// Answer a >= 400 code as a direct reply instead of an error.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub override_error: Option<bool>,
    /// Body of the direct reply (alias of `response_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
}

/// `coprocess.Header`: one header with all its values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Header {
    /// Header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Every value, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// `coprocess.ResponseObject`: the upstream response seen by Response hooks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResponseObject {
    /// HTTP status; a plugin must echo it (Tyk uses it as is).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i32"
    )]
    pub status_code: Option<i32>,
    /// The body bytes; authoritative on return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<ByteBuf>,
    /// The body as text; ignored on return, as in Tyk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// First value of each header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<StringMap>,
    /// Every header with all values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multivalue_headers: Option<Vec<Header>>,
    /// The body as a file instead of `raw_body` (pipe extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_body_file: Option<RawBodyFile>,
}

/// `coprocess.AccessSpec`: an allowed URL pattern and its methods.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AccessSpec {
    /// URL pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Allowed methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

/// `coprocess.AccessDefinition`: a session's rights to one API.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AccessDefinition {
    /// API name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_name: Option<String>,
    /// API id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<String>,
    /// Allowed versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<String>>,
    /// Allowed URL patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_urls: Option<Vec<AccessSpec>>,
}

/// `coprocess.BasicAuthData`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BasicAuthData {
    /// Password (or its hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Hash algorithm name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// `coprocess.JWTData`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JwtData {
    /// Shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `coprocess.Monitor`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Monitor {
    /// Quota percentages that fire a trigger event.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_vec_f64"
    )]
    pub trigger_limits: Option<Vec<f64>>,
}

/// `coprocess.SessionState`: a key's session, as installed by an auth hook.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SessionState {
    /// Deprecated in Tyk.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub last_check: Option<i64>,
    /// Deprecated in Tyk.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_f64"
    )]
    pub allowance: Option<f64>,
    /// Requests allowed per `per` seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_f64"
    )]
    pub rate: Option<f64>,
    /// Rate window in seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_f64"
    )]
    pub per: Option<f64>,
    /// Expiry, unix seconds (0 / -1 = never).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub expires: Option<i64>,
    /// Quota size (-1 = unlimited).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub quota_max: Option<i64>,
    /// When the quota renews, unix seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub quota_renews: Option<i64>,
    /// Requests left in the quota.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub quota_remaining: Option<i64>,
    /// Quota period in seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub quota_renewal_rate: Option<i64>,
    /// API id -> rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_rights: Option<PairMap<AccessDefinition>>,
    /// Organisation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// OAuth client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client_id: Option<String>,
    /// OAuth keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_keys: Option<StringMap>,
    /// Basic auth credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_data: Option<BasicAuthData>,
    /// JWT secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_data: Option<JwtData>,
    /// Whether HMAC signing is on.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub hmac_enabled: Option<bool>,
    /// HMAC secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<String>,
    /// An inactive key is refused (403).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub is_inactive: Option<bool>,
    /// Deprecated single policy id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_policy_id: Option<String>,
    /// Analytics data expiry, seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub data_expires: Option<i64>,
    /// Quota trigger settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Monitor>,
    /// Record request/response bodies in analytics.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub enable_detailed_recording: Option<bool>,
    /// Session metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<StringMap>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Human-readable alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Last update time (text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
    /// Until when (unix seconds) an ID-extractor cache hit skips the auth hook.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub id_extractor_deadline: Option<i64>,
    /// Session lifetime, seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub session_lifetime: Option<i64>,
    /// Policy ids applied to the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_policies: Option<Vec<String>>,
    /// Client certificate id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// GraphQL query depth limit.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub max_query_depth: Option<i64>,
    /// Key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `"retain"` or `"delete"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_expiry_action: Option<String>,
    /// Seconds after expiry before deletion (-1 = never).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_i64"
    )]
    pub post_expiry_grace_period: Option<i64>,
}

impl Object {
    /// Decodes an object from a MessagePack map (e.g. a reply's `object` value on its own).
    pub fn from_msgpack(bytes: &[u8]) -> Result<Object, String> {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Encodes the object as a MessagePack map with named fields, appending to `buf`.
    pub fn write_msgpack(&self, buf: &mut Vec<u8>) -> Result<(), String> {
        let mut ser = rmp_serde::Serializer::new(buf).with_struct_map();
        self.serialize(&mut ser).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Object {
        Object {
            hook_type: Some(HookType::Pre),
            hook_name: Some("MyPreHook".into()),
            request: Some(MiniRequestObject {
                headers: Some(
                    [("Host", "example.com"), ("X-Api-Key", "abc")]
                        .into_iter()
                        .map(|(k, v)| (k, v.to_string()))
                        .collect(),
                ),
                set_headers: Some(PairMap::new()),
                delete_headers: Some(vec![]),
                body: Some("{}".into()),
                url: Some("/api/x?a=1".into()),
                params: Some([("a", "1".to_string())].into_iter().collect()),
                return_overrides: Some(ReturnOverrides {
                    response_code: Some(-1),
                    ..Default::default()
                }),
                method: Some("GET".into()),
                raw_body: Some(ByteBuf::from(vec![0u8, 159, 146, 150])),
                ..Default::default()
            }),
            session: Some(Box::new(SessionState {
                rate: Some(10.0),
                per: Some(60.0),
                quota_max: Some(-1),
                access_rights: Some(PairMap(vec![(
                    "api1".into(),
                    AccessDefinition {
                        api_id: Some("api1".into()),
                        versions: Some(vec!["Default".into()]),
                        allowed_urls: Some(vec![AccessSpec {
                            url: Some("/x".into()),
                            methods: Some(vec!["GET".into()]),
                        }]),
                        ..Default::default()
                    },
                )])),
                monitor: Some(Monitor {
                    trigger_limits: Some(vec![80.0, 95.5]),
                }),
                ..Default::default()
            })),
            metadata: Some([("token", "t1".to_string())].into_iter().collect()),
            spec: Some([("APIID", "api1".to_string())].into_iter().collect()),
            response: None,
        }
    }

    fn encode(o: &Object) -> Vec<u8> {
        let mut v = Vec::new();
        o.write_msgpack(&mut v).expect("encode");
        v
    }

    #[test]
    fn roundtrip_msgpack() {
        let o = sample();
        let back = Object::from_msgpack(&encode(&o)).expect("decode");
        assert_eq!(back, o);
    }

    #[test]
    fn wire_shape_uses_names_bin_and_skips_absent() {
        let o = Object {
            hook_type: Some(HookType::PostKeyAuth),
            request: Some(MiniRequestObject {
                raw_body: Some(ByteBuf::from(b"hi".to_vec())),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = encode(&o);
        // {"hook_type":"PostKeyAuth","request":{"raw_body":bin"hi"}}
        let mut want = vec![0x82, 0xa9];
        want.extend_from_slice(b"hook_type");
        want.push(0xab);
        want.extend_from_slice(b"PostKeyAuth");
        want.push(0xa7);
        want.extend_from_slice(b"request");
        want.extend_from_slice(&[0x81, 0xa8]);
        want.extend_from_slice(b"raw_body");
        want.extend_from_slice(&[0xc4, 0x02, b'h', b'i']);
        assert_eq!(bytes, want);
    }

    #[test]
    fn hook_type_accepts_names_numbers_and_python_names() {
        for (v, want) in [
            (serde_json::json!("Pre"), HookType::Pre),
            (
                serde_json::json!("customkeycheck"),
                HookType::CustomKeyCheck,
            ),
            (serde_json::json!(3), HookType::PostKeyAuth),
            (serde_json::json!(5), HookType::Response),
            (serde_json::json!(0), HookType::Unknown),
            (serde_json::json!(9), HookType::Unknown),
            (serde_json::json!("Unknown"), HookType::Unknown),
            (serde_json::json!("nope"), HookType::Unknown),
        ] {
            let bytes = rmp_serde::to_vec(&v).expect("encode");
            let h: HookType = rmp_serde::from_slice(&bytes).expect("decode");
            assert_eq!(h, want, "{v}");
        }
        assert!(rmp_serde::from_slice::<HookType>(&[0x80]).is_err());
    }

    #[test]
    fn lenient_numbers() {
        let v = serde_json::json!({
            "session": {"rate": 5, "per": 1.0, "expires": 1700000000.0, "quota_max": -1,
                        "monitor": {"trigger_limits": [80, 90.5]}, "hmac_enabled": 1},
            "request": {"return_overrides": {"response_code": 403.0, "override_error": true}},
            "response": {"status_code": 200}
        });
        let o = Object::from_msgpack(&rmp_serde::to_vec(&v).expect("enc")).expect("decode");
        let s = o.session.expect("session");
        assert_eq!(s.rate, Some(5.0));
        assert_eq!(s.per, Some(1.0));
        assert_eq!(s.expires, Some(1_700_000_000));
        assert_eq!(s.quota_max, Some(-1));
        assert_eq!(s.hmac_enabled, Some(true));
        assert_eq!(
            s.monitor.and_then(|m| m.trigger_limits),
            Some(vec![80.0, 90.5])
        );
        let ro = o.request.and_then(|r| r.return_overrides).expect("ro");
        assert_eq!(ro.response_code, Some(403));
        assert_eq!(o.response.and_then(|r| r.status_code), Some(200));
    }

    #[test]
    fn lenient_numbers_reject_what_does_not_fit() {
        for v in [
            serde_json::json!({"response": {"status_code": 1.5}}),
            serde_json::json!({"response": {"status_code": 5_000_000_000i64}}),
            serde_json::json!({"session": {"expires": 1e30}}),
            serde_json::json!({"session": {"rate": true}}),
            serde_json::json!({"session": {"quota_max": u64::MAX}}),
        ] {
            let r = Object::from_msgpack(&rmp_serde::to_vec(&v).expect("enc"));
            assert!(r.is_err(), "{v} should fail");
        }
    }

    #[test]
    fn nil_and_absent_mean_unchanged_and_unknown_keys_are_ignored() {
        let v = serde_json::json!({"session": null, "future_field": {"x": 1},
                                   "request": {"set_headers": {"X-A": "1", "X-N": 2}, "body": null}});
        let o = Object::from_msgpack(&rmp_serde::to_vec(&v).expect("enc")).expect("decode");
        assert!(o.session.is_none());
        let r = o.request.expect("request");
        assert!(r.body.is_none());
        assert!(r.headers.is_none());
        let sh = r.set_headers.expect("set_headers");
        assert_eq!(sh.get("X-A").map(String::as_str), Some("1"));
        assert_eq!(sh.get("X-N").map(String::as_str), Some("2"));
    }

    #[test]
    fn raw_body_accepts_str() {
        let v = serde_json::json!({"request": {"raw_body": "text body"}});
        let o = Object::from_msgpack(&rmp_serde::to_vec(&v).expect("enc")).expect("decode");
        let rb = o.request.and_then(|r| r.raw_body).expect("raw_body");
        assert_eq!(rb.as_slice(), b"text body");
    }

    #[test]
    fn raw_body_file_extension() {
        let v =
            serde_json::json!({"response": {"raw_body_file": {"path": "/dev/shm/x", "len": 12.0}}});
        let o = Object::from_msgpack(&rmp_serde::to_vec(&v).expect("enc")).expect("decode");
        let f = o.response.and_then(|r| r.raw_body_file).expect("file");
        assert_eq!(
            f,
            RawBodyFile {
                path: "/dev/shm/x".into(),
                len: 12
            }
        );
    }

    #[test]
    fn pair_map_insert_get_and_duplicates() {
        let mut m = StringMap::new();
        m.insert("A", "1".into());
        m.insert("B", "2".into());
        m.insert("A", "3".into());
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("A").map(String::as_str), Some("3"));
        // Raw duplicate keys on the wire: kept in order, last wins on lookup.
        let bytes = [0x82, 0xa1, b'k', 0xa1, b'1', 0xa1, b'k', 0xa1, b'2'];
        let m: StringMap = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("k").map(String::as_str), Some("2"));
    }

    /// Random and mutated inputs must give errors, never panics.
    #[test]
    fn decode_never_panics_on_garbage() {
        let valid = encode(&sample());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5_000 {
            let mut buf = valid.clone();
            let flips = (next() % 8) as usize + 1;
            for _ in 0..flips {
                let i = (next() as usize) % buf.len();
                buf[i] = next() as u8;
            }
            let cut = (next() as usize) % (buf.len() + 1);
            let _ = Object::from_msgpack(&buf[..cut]);
            let _ = Object::from_msgpack(&buf);
        }
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = Object::from_msgpack(&junk);
        }
        // Deep nesting is bounded by rmp-serde's depth limit, not the stack.
        let deep = vec![0x91u8; 100_000];
        assert!(Object::from_msgpack(&deep).is_err());
    }
}
