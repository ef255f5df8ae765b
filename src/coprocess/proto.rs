//! Tyk's coprocess protobuf messages (generated from `protocol/proto/*.proto` by `build.rs`) and
//! the one conversion between them and the transport-neutral [`Object`] model.
//!
//! The generated code lives in [`pb`]: `pb::Object`, `pb::MiniRequestObject`, ..., the
//! `pb::dispatcher_client::DispatcherClient` used by the gRPC transport, and
//! `pb::dispatcher_server` for plugin servers written in Rust (see `examples/grpc_server.rs`).
//!
//! Why the conversion is not a plain copy: proto3 has no "absent" scalars, while every field of
//! [`Object`] is an `Option` (absent = unchanged, for the pipe protocol). Going out, `None`
//! becomes the proto3 default. Coming back, every scalar, list and map becomes `Some(value)`,
//! faithfully, even when it is the default: a gRPC plugin server echoes the whole object, and
//! Tyk applies what it gets (an empty `raw_body` empties the body, an empty `url` is an error),
//! so the middleware chain must see exactly what the server sent. Only a sub-message the server
//! left out (`request`, `session`, `response`, `return_overrides`, ...) becomes `None`, because
//! that is the one absence proto3 can express.

use super::object::{self, Object, PairMap, StringMap};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// The code generated from `protocol/proto/*.proto` (package `coprocess`).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    unreachable_pub
)]
pub mod pb {
    tonic::include_proto!("coprocess");
}

/// The full gRPC method path of `Dispatch`, as Tyk's plugin servers register it.
pub const DISPATCH_PATH: &str = "/coprocess.Dispatcher/Dispatch";
/// The full gRPC method path of `DispatchEvent`.
pub const DISPATCH_EVENT_PATH: &str = "/coprocess.Dispatcher/DispatchEvent";

fn map_out(m: &Option<StringMap>) -> BTreeMap<String, String> {
    // Inserting in order keeps PairMap's "last entry wins" for duplicate keys.
    m.as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect())
        .unwrap_or_default()
}

fn map_in(m: BTreeMap<String, String>) -> Option<StringMap> {
    Some(PairMap(m.into_iter().collect()))
}

fn str_out(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

fn list_out(v: &Option<Vec<String>>) -> Vec<String> {
    v.clone().unwrap_or_default()
}

fn bytes_out(b: &Option<ByteBuf>) -> Vec<u8> {
    b.as_ref().map(|b| b.to_vec()).unwrap_or_default()
}

impl From<&Object> for pb::Object {
    fn from(o: &Object) -> pb::Object {
        pb::Object {
            hook_type: o.hook_type.unwrap_or_default().as_i32(),
            hook_name: str_out(&o.hook_name),
            request: o.request.as_ref().map(pb::MiniRequestObject::from),
            session: o.session.as_deref().map(pb::SessionState::from),
            metadata: map_out(&o.metadata),
            spec: map_out(&o.spec),
            response: o.response.as_ref().map(pb::ResponseObject::from),
        }
    }
}

impl From<pb::Object> for Object {
    fn from(p: pb::Object) -> Object {
        Object {
            hook_type: Some(object::HookType::from_i64(i64::from(p.hook_type))),
            hook_name: Some(p.hook_name),
            request: p.request.map(Into::into),
            session: p.session.map(|s| Box::new(s.into())),
            metadata: map_in(p.metadata),
            spec: map_in(p.spec),
            response: p.response.map(Into::into),
        }
    }
}

/// `raw_body_file` (a pipe-protocol extension) has no protobuf field: the gRPC transport reads
/// the file into `raw_body` before sending (see `grpc.rs`).
impl From<&object::MiniRequestObject> for pb::MiniRequestObject {
    fn from(r: &object::MiniRequestObject) -> pb::MiniRequestObject {
        pb::MiniRequestObject {
            headers: map_out(&r.headers),
            set_headers: map_out(&r.set_headers),
            delete_headers: list_out(&r.delete_headers),
            body: str_out(&r.body),
            url: str_out(&r.url),
            params: map_out(&r.params),
            add_params: map_out(&r.add_params),
            extended_params: map_out(&r.extended_params),
            delete_params: list_out(&r.delete_params),
            return_overrides: r.return_overrides.as_ref().map(Into::into),
            method: str_out(&r.method),
            request_uri: str_out(&r.request_uri),
            scheme: str_out(&r.scheme),
            raw_body: bytes_out(&r.raw_body),
        }
    }
}

impl From<pb::MiniRequestObject> for object::MiniRequestObject {
    fn from(r: pb::MiniRequestObject) -> object::MiniRequestObject {
        object::MiniRequestObject {
            headers: map_in(r.headers),
            set_headers: map_in(r.set_headers),
            delete_headers: Some(r.delete_headers),
            body: Some(r.body),
            url: Some(r.url),
            params: map_in(r.params),
            add_params: map_in(r.add_params),
            extended_params: map_in(r.extended_params),
            delete_params: Some(r.delete_params),
            return_overrides: r.return_overrides.map(Into::into),
            method: Some(r.method),
            request_uri: Some(r.request_uri),
            scheme: Some(r.scheme),
            raw_body: Some(ByteBuf::from(r.raw_body)),
            raw_body_file: None,
        }
    }
}

impl From<&object::ReturnOverrides> for pb::ReturnOverrides {
    fn from(r: &object::ReturnOverrides) -> pb::ReturnOverrides {
        pb::ReturnOverrides {
            response_code: r.response_code.unwrap_or_default(),
            response_error: str_out(&r.response_error),
            headers: map_out(&r.headers),
            override_error: r.override_error.unwrap_or_default(),
            response_body: str_out(&r.response_body),
        }
    }
}

impl From<pb::ReturnOverrides> for object::ReturnOverrides {
    fn from(r: pb::ReturnOverrides) -> object::ReturnOverrides {
        object::ReturnOverrides {
            response_code: Some(r.response_code),
            response_error: Some(r.response_error),
            headers: map_in(r.headers),
            override_error: Some(r.override_error),
            response_body: Some(r.response_body),
        }
    }
}

impl From<&object::ResponseObject> for pb::ResponseObject {
    fn from(r: &object::ResponseObject) -> pb::ResponseObject {
        pb::ResponseObject {
            status_code: r.status_code.unwrap_or_default(),
            raw_body: bytes_out(&r.raw_body),
            body: str_out(&r.body),
            headers: map_out(&r.headers),
            multivalue_headers: r
                .multivalue_headers
                .iter()
                .flatten()
                .map(|h| pb::Header {
                    key: str_out(&h.key),
                    values: list_out(&h.values),
                })
                .collect(),
        }
    }
}

impl From<pb::ResponseObject> for object::ResponseObject {
    fn from(r: pb::ResponseObject) -> object::ResponseObject {
        object::ResponseObject {
            status_code: Some(r.status_code),
            raw_body: Some(ByteBuf::from(r.raw_body)),
            body: Some(r.body),
            headers: map_in(r.headers),
            multivalue_headers: Some(
                r.multivalue_headers
                    .into_iter()
                    .map(|h| object::Header {
                        key: Some(h.key),
                        values: Some(h.values),
                    })
                    .collect(),
            ),
            raw_body_file: None,
        }
    }
}

impl From<&object::AccessDefinition> for pb::AccessDefinition {
    fn from(a: &object::AccessDefinition) -> pb::AccessDefinition {
        pb::AccessDefinition {
            api_name: str_out(&a.api_name),
            api_id: str_out(&a.api_id),
            versions: list_out(&a.versions),
            allowed_urls: a
                .allowed_urls
                .iter()
                .flatten()
                .map(|s| pb::AccessSpec {
                    url: str_out(&s.url),
                    methods: list_out(&s.methods),
                })
                .collect(),
        }
    }
}

impl From<pb::AccessDefinition> for object::AccessDefinition {
    fn from(a: pb::AccessDefinition) -> object::AccessDefinition {
        object::AccessDefinition {
            api_name: Some(a.api_name),
            api_id: Some(a.api_id),
            versions: Some(a.versions),
            allowed_urls: Some(
                a.allowed_urls
                    .into_iter()
                    .map(|s| object::AccessSpec {
                        url: Some(s.url),
                        methods: Some(s.methods),
                    })
                    .collect(),
            ),
        }
    }
}

impl From<&object::SessionState> for pb::SessionState {
    fn from(s: &object::SessionState) -> pb::SessionState {
        pb::SessionState {
            last_check: s.last_check.unwrap_or_default(),
            allowance: s.allowance.unwrap_or_default(),
            rate: s.rate.unwrap_or_default(),
            per: s.per.unwrap_or_default(),
            expires: s.expires.unwrap_or_default(),
            quota_max: s.quota_max.unwrap_or_default(),
            quota_renews: s.quota_renews.unwrap_or_default(),
            quota_remaining: s.quota_remaining.unwrap_or_default(),
            quota_renewal_rate: s.quota_renewal_rate.unwrap_or_default(),
            access_rights: s
                .access_rights
                .iter()
                .flat_map(|m| m.iter())
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect(),
            org_id: str_out(&s.org_id),
            oauth_client_id: str_out(&s.oauth_client_id),
            oauth_keys: map_out(&s.oauth_keys),
            basic_auth_data: s.basic_auth_data.as_ref().map(|b| pb::BasicAuthData {
                password: str_out(&b.password),
                hash: str_out(&b.hash),
            }),
            jwt_data: s.jwt_data.as_ref().map(|j| pb::JwtData {
                secret: str_out(&j.secret),
            }),
            hmac_enabled: s.hmac_enabled.unwrap_or_default(),
            hmac_secret: str_out(&s.hmac_secret),
            is_inactive: s.is_inactive.unwrap_or_default(),
            apply_policy_id: str_out(&s.apply_policy_id),
            data_expires: s.data_expires.unwrap_or_default(),
            monitor: s.monitor.as_ref().map(|m| pb::Monitor {
                trigger_limits: m.trigger_limits.clone().unwrap_or_default(),
            }),
            enable_detailed_recording: s.enable_detailed_recording.unwrap_or_default(),
            metadata: map_out(&s.metadata),
            tags: list_out(&s.tags),
            alias: str_out(&s.alias),
            last_updated: str_out(&s.last_updated),
            id_extractor_deadline: s.id_extractor_deadline.unwrap_or_default(),
            session_lifetime: s.session_lifetime.unwrap_or_default(),
            apply_policies: list_out(&s.apply_policies),
            certificate: str_out(&s.certificate),
            max_query_depth: s.max_query_depth.unwrap_or_default(),
            key_id: str_out(&s.key_id),
            post_expiry_action: str_out(&s.post_expiry_action),
            post_expiry_grace_period: s.post_expiry_grace_period.unwrap_or_default(),
        }
    }
}

impl From<pb::SessionState> for object::SessionState {
    fn from(s: pb::SessionState) -> object::SessionState {
        object::SessionState {
            last_check: Some(s.last_check),
            allowance: Some(s.allowance),
            rate: Some(s.rate),
            per: Some(s.per),
            expires: Some(s.expires),
            quota_max: Some(s.quota_max),
            quota_renews: Some(s.quota_renews),
            quota_remaining: Some(s.quota_remaining),
            quota_renewal_rate: Some(s.quota_renewal_rate),
            access_rights: Some(PairMap(
                s.access_rights
                    .into_iter()
                    .map(|(k, v)| (k, v.into()))
                    .collect(),
            )),
            org_id: Some(s.org_id),
            oauth_client_id: Some(s.oauth_client_id),
            oauth_keys: map_in(s.oauth_keys),
            basic_auth_data: s.basic_auth_data.map(|b| object::BasicAuthData {
                password: Some(b.password),
                hash: Some(b.hash),
            }),
            jwt_data: s.jwt_data.map(|j| object::JwtData {
                secret: Some(j.secret),
            }),
            hmac_enabled: Some(s.hmac_enabled),
            hmac_secret: Some(s.hmac_secret),
            is_inactive: Some(s.is_inactive),
            apply_policy_id: Some(s.apply_policy_id),
            data_expires: Some(s.data_expires),
            monitor: s.monitor.map(|m| object::Monitor {
                trigger_limits: Some(m.trigger_limits),
            }),
            enable_detailed_recording: Some(s.enable_detailed_recording),
            metadata: map_in(s.metadata),
            tags: Some(s.tags),
            alias: Some(s.alias),
            last_updated: Some(s.last_updated),
            id_extractor_deadline: Some(s.id_extractor_deadline),
            session_lifetime: Some(s.session_lifetime),
            apply_policies: Some(s.apply_policies),
            certificate: Some(s.certificate),
            max_query_depth: Some(s.max_query_depth),
            key_id: Some(s.key_id),
            post_expiry_action: Some(s.post_expiry_action),
            post_expiry_grace_period: Some(s.post_expiry_grace_period),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::HookType;
    use prost::Message;

    fn smap(pairs: &[(&str, &str)]) -> Option<StringMap> {
        Some(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    fn strings(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    /// An object with every field of every message set to a non-default value (maps sorted by
    /// key, as they come back from the ordered protobuf maps).
    fn full() -> Object {
        let session = object::SessionState {
            last_check: Some(1),
            allowance: Some(2.5),
            rate: Some(3.5),
            per: Some(4.5),
            expires: Some(5),
            quota_max: Some(6),
            quota_renews: Some(7),
            quota_remaining: Some(8),
            quota_renewal_rate: Some(9),
            access_rights: Some(PairMap(vec![(
                "api1".into(),
                object::AccessDefinition {
                    api_name: Some("API one".into()),
                    api_id: Some("api1".into()),
                    versions: strings(&["Default", "v2"]),
                    allowed_urls: Some(vec![object::AccessSpec {
                        url: Some("/x".into()),
                        methods: strings(&["GET", "POST"]),
                    }]),
                },
            )])),
            org_id: Some("org".into()),
            oauth_client_id: Some("client".into()),
            oauth_keys: smap(&[("k", "v")]),
            basic_auth_data: Some(object::BasicAuthData {
                password: Some("pw".into()),
                hash: Some("bcrypt".into()),
            }),
            jwt_data: Some(object::JwtData {
                secret: Some("s".into()),
            }),
            hmac_enabled: Some(true),
            hmac_secret: Some("hs".into()),
            is_inactive: Some(true),
            apply_policy_id: Some("p0".into()),
            data_expires: Some(20),
            monitor: Some(object::Monitor {
                trigger_limits: Some(vec![80.0, 95.5]),
            }),
            enable_detailed_recording: Some(true),
            metadata: smap(&[("token", "t1"), ("x", "{\"nested\":1}")]),
            tags: strings(&["a", "b"]),
            alias: Some("alias".into()),
            last_updated: Some("now".into()),
            id_extractor_deadline: Some(27),
            session_lifetime: Some(28),
            apply_policies: strings(&["p1", "p2"]),
            certificate: Some("cert".into()),
            max_query_depth: Some(31),
            key_id: Some("key".into()),
            post_expiry_action: Some("delete".into()),
            post_expiry_grace_period: Some(-1),
        };
        Object {
            hook_type: Some(HookType::PostKeyAuth),
            hook_name: Some("MyHook".into()),
            request: Some(object::MiniRequestObject {
                headers: smap(&[("Content-Type", "text/plain"), ("Host", "h")]),
                set_headers: smap(&[("X-Set", "1")]),
                delete_headers: strings(&["X-Del"]),
                body: Some("body".into()),
                url: Some("/api/x?a=1".into()),
                params: smap(&[("a", "1")]),
                add_params: smap(&[("b", "2")]),
                extended_params: smap(&[("c", "3")]),
                delete_params: strings(&["d"]),
                return_overrides: Some(object::ReturnOverrides {
                    response_code: Some(-1),
                    response_error: Some("err".into()),
                    headers: smap(&[("X-O", "o")]),
                    override_error: Some(true),
                    response_body: Some("rb".into()),
                }),
                method: Some("PUT".into()),
                request_uri: Some("/api/x?a=1".into()),
                scheme: Some("https".into()),
                raw_body: Some(ByteBuf::from(vec![0u8, 159, 146, 150])),
                raw_body_file: None,
            }),
            session: Some(Box::new(session)),
            metadata: smap(&[("token", "t1")]),
            spec: smap(&[("APIID", "api1"), ("OrgID", "org")]),
            response: Some(object::ResponseObject {
                status_code: Some(201),
                raw_body: Some(ByteBuf::from(b"resp".to_vec())),
                body: Some("resp".into()),
                headers: smap(&[("Set-Cookie", "a=1")]),
                multivalue_headers: Some(vec![object::Header {
                    key: Some("Set-Cookie".into()),
                    values: strings(&["a=1", "b=2"]),
                }]),
                raw_body_file: None,
            }),
        }
    }

    #[test]
    fn every_field_survives_a_wire_round_trip() {
        let o = full();
        let bytes = pb::Object::from(&o).encode_to_vec();
        let back = Object::from(pb::Object::decode(bytes.as_slice()).expect("decode"));
        assert_eq!(back, o);
    }

    #[test]
    fn absent_goes_out_as_default_and_comes_back_faithfully() {
        let o = Object {
            hook_type: Some(HookType::Pre),
            request: Some(object::MiniRequestObject::default()),
            ..Default::default()
        };
        let p = pb::Object::from(&o);
        assert_eq!(p.hook_type, 1);
        assert!(p.session.is_none() && p.response.is_none());
        let back = Object::from(p);
        let r = back.request.expect("request stays");
        // proto3 cannot say "absent" for scalars: they come back as values.
        assert_eq!(r.url.as_deref(), Some(""));
        assert_eq!(r.raw_body.as_ref().map(|b| b.as_slice()), Some(&b""[..]));
        assert_eq!(r.set_headers, Some(PairMap::new()));
        // ... but left-out messages stay absent.
        assert!(r.return_overrides.is_none());
        assert!(back.session.is_none());
        assert!(back.response.is_none());
        assert_eq!(back.hook_name.as_deref(), Some(""));
    }

    #[test]
    fn hook_type_numbers_match_tyk() {
        for (h, n) in [
            (HookType::Unknown, 0),
            (HookType::Pre, 1),
            (HookType::Post, 2),
            (HookType::PostKeyAuth, 3),
            (HookType::CustomKeyCheck, 4),
            (HookType::Response, 5),
        ] {
            let p = pb::Object::from(&Object {
                hook_type: Some(h),
                ..Default::default()
            });
            assert_eq!(p.hook_type, n);
            assert_eq!(pb::HookType::try_from(n).map(|t| t as i32), Ok(n));
            assert_eq!(Object::from(p).hook_type, Some(h));
        }
        let unknown = pb::Object {
            hook_type: 42,
            ..Default::default()
        };
        assert_eq!(Object::from(unknown).hook_type, Some(HookType::Unknown));
    }

    /// Hand-checked wire bytes: the field numbers and types Tyk's servers decode.
    #[test]
    fn wire_bytes_use_tyks_field_numbers() {
        let o = Object {
            hook_type: Some(HookType::CustomKeyCheck),
            hook_name: Some("A".into()),
            request: Some(object::MiniRequestObject {
                return_overrides: Some(object::ReturnOverrides {
                    response_code: Some(-1),
                    ..Default::default()
                }),
                raw_body: Some(ByteBuf::from(b"z".to_vec())),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = pb::Object::from(&o).encode_to_vec();
        let want: Vec<u8> = [
            &[0x08, 0x04][..],   // 1: hook_type varint 4
            &[0x12, 0x01, b'A'], // 2: hook_name "A"
            &[0x1a, 0x10],       // 3: request, 16 bytes
            &[0x52, 0x0b, 0x08], // request.10: return_overrides, 11 bytes; 1: response_code
            &[0xff; 9],          // -1 as a 10-byte varint ...
            &[0x01],             // ... last byte
            &[0x72, 0x01, b'z'], // request.14: raw_body
        ]
        .concat();
        assert_eq!(bytes, want);
    }

    #[test]
    fn duplicate_keys_last_wins_going_out() {
        let o = Object {
            metadata: Some(PairMap(vec![
                ("k".into(), "1".into()),
                ("k".into(), "2".into()),
            ])),
            ..Default::default()
        };
        let p = pb::Object::from(&o);
        assert_eq!(p.metadata.get("k").map(String::as_str), Some("2"));
        assert_eq!(p.metadata.len(), 1);
    }

    #[test]
    fn garbage_never_panics() {
        let valid = pb::Object::from(&full()).encode_to_vec();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3_000 {
            let mut buf = valid.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % buf.len();
                buf[i] = (seed >> 32) as u8;
            }
            if let Ok(p) = pb::Object::decode(buf.as_slice()) {
                let _ = Object::from(p);
            }
        }
    }
}
