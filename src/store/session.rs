//! Tyk's stored session format (`user.SessionState` as JSON) and its conversion to and from the
//! protobuf-shaped [`SessionState`] that plugins see.
//!
//! Why a second session type: Redis values written by Tyk, the Gateway API's request and response
//! bodies, and the embedded store's file all use Tyk's *internal* JSON names (`meta_data`,
//! `hmac_string`, `basic_auth_data.hash_type`, ...), which differ from the protobuf names
//! (`metadata`, `hmac_secret`, `hash`). Keeping the two shapes apart keeps both wire formats exact.
//!
//! Decoding follows Go's `encoding/json` where it matters for compatibility: every field is
//! optional, `null` means "zero value", an integer field accepts a float with no fraction (some
//! clients write `60.0`), and unknown fields are kept (in [`TykSession::extra`]) so that a session
//! written by a newer Tyk survives a read-modify-write through pipegate unchanged.
//!
//! Conversion rules (Tyk's `ProtoSessionState` / `TykSessionState`):
//! - `meta_data` → `metadata`: string values are copied; any other JSON value becomes its compact
//!   JSON text (so `{"nestedkey":"nestedvalue"}` reaches a plugin as that string).
//! - `metadata` → `meta_data`: values stay strings (Tyk does not parse them back).
//! - Per-API `limit`, `field_access_rights` and other fields the protobuf does not carry are lost
//!   when a session goes through a plugin, as in Tyk.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::coprocess::object::{
    AccessDefinition, AccessSpec, BasicAuthData, JwtData, Monitor, PairMap, SessionState, StringMap,
};

/// One API's entry in a session's `access_rights` (Tyk's `user.AccessDefinition`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TykAccessDefinition {
    /// API name (informational).
    #[serde(default, deserialize_with = "go::string")]
    pub api_name: String,
    /// API id this entry grants.
    #[serde(default, deserialize_with = "go::string")]
    pub api_id: String,
    /// Allowed versions.
    #[serde(default, deserialize_with = "go::vec")]
    pub versions: Vec<String>,
    /// Allowed URL patterns (not enforced by pipegate yet).
    #[serde(default, deserialize_with = "go::vec")]
    pub allowed_urls: Vec<TykAccessSpec>,
    /// Everything else (`limit`, `field_access_rights`, `allowance_scope`, ...), kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An allowed URL pattern and its methods (Tyk's `user.AccessSpec`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TykAccessSpec {
    /// URL pattern (a regular expression in Tyk).
    #[serde(default, deserialize_with = "go::string")]
    pub url: String,
    /// Methods.
    #[serde(default, deserialize_with = "go::vec")]
    pub methods: Vec<String>,
}

/// Basic auth credentials (Tyk's `user.BasicAuthData`; note the JSON name `hash_type`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TykBasicAuthData {
    /// Password or its hash.
    #[serde(default, deserialize_with = "go::string")]
    pub password: String,
    /// Hash algorithm ("" = plain text, "bcrypt", ...).
    #[serde(default, deserialize_with = "go::string")]
    pub hash_type: String,
}

/// JWT data (Tyk's `user.JWTData`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TykJwtData {
    /// Shared secret.
    #[serde(default, deserialize_with = "go::string")]
    pub secret: String,
}

/// Quota trigger settings (Tyk's `user.Monitor`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TykMonitor {
    /// Percentages of the quota that fire a trigger event.
    #[serde(default, deserialize_with = "go::vec")]
    pub trigger_limits: Vec<f64>,
}

/// A key's session exactly as Tyk stores it (`apikey-<key>` in Redis) and as the Gateway API
/// reads and writes it.
///
/// Serialization writes every standard field, zero values included, like Go does, so tools that
/// read Tyk's sessions find the fields they expect.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TykSession {
    /// Deprecated in Tyk.
    #[serde(default, deserialize_with = "go::i64")]
    pub last_check: i64,
    /// Deprecated in Tyk.
    #[serde(default, deserialize_with = "go::f64")]
    pub allowance: f64,
    /// Requests allowed per `per` seconds (<= 0: no rate limit).
    #[serde(default, deserialize_with = "go::f64")]
    pub rate: f64,
    /// Rate window in seconds.
    #[serde(default, deserialize_with = "go::f64")]
    pub per: f64,
    /// Tyk's throttling retry interval (not used by pipegate).
    #[serde(default, deserialize_with = "go::f64")]
    pub throttle_interval: f64,
    /// Tyk's throttling retry limit (not used by pipegate).
    #[serde(default, deserialize_with = "go::i64")]
    pub throttle_retry_limit: i64,
    /// GraphQL depth limit (not used by pipegate).
    #[serde(default, deserialize_with = "go::i64")]
    pub max_query_depth: i64,
    /// Creation time, RFC 3339 (Go's zero time when unknown).
    #[serde(default = "zero_time", deserialize_with = "go::string")]
    pub date_created: String,
    /// Expiry, unix seconds (<= 0 = never).
    #[serde(default, deserialize_with = "go::i64")]
    pub expires: i64,
    /// Requests per quota period (<= 0 = unlimited).
    #[serde(default, deserialize_with = "go::i64")]
    pub quota_max: i64,
    /// When the current quota period ends, unix seconds.
    #[serde(default, deserialize_with = "go::i64")]
    pub quota_renews: i64,
    /// Requests left in the quota period (output: the store's counter is authoritative).
    #[serde(default, deserialize_with = "go::i64")]
    pub quota_remaining: i64,
    /// Quota period, seconds (<= 0: the quota never renews).
    #[serde(default, deserialize_with = "go::i64")]
    pub quota_renewal_rate: i64,
    /// API id → rights; empty means every API.
    #[serde(default, deserialize_with = "go::map")]
    pub access_rights: BTreeMap<String, TykAccessDefinition>,
    /// Organisation id.
    #[serde(default, deserialize_with = "go::string")]
    pub org_id: String,
    /// OAuth client id.
    #[serde(default, deserialize_with = "go::string")]
    pub oauth_client_id: String,
    /// OAuth keys.
    #[serde(default, deserialize_with = "go::map")]
    pub oauth_keys: BTreeMap<String, String>,
    /// Client certificate id.
    #[serde(default, deserialize_with = "go::string")]
    pub certificate: String,
    /// Basic auth credentials.
    #[serde(default, deserialize_with = "go::object")]
    pub basic_auth_data: TykBasicAuthData,
    /// JWT data.
    #[serde(default, deserialize_with = "go::object")]
    pub jwt_data: TykJwtData,
    /// HMAC signing on.
    #[serde(default, deserialize_with = "go::bool")]
    pub hmac_enabled: bool,
    /// HTTP signature validation on.
    #[serde(default, deserialize_with = "go::bool")]
    pub enable_http_signature_validation: bool,
    /// HMAC secret (Tyk's JSON name is `hmac_string`).
    #[serde(default, deserialize_with = "go::string")]
    pub hmac_string: String,
    /// RSA certificate id for HTTP signatures.
    #[serde(default, deserialize_with = "go::string")]
    pub rsa_certificate_id: String,
    /// An inactive key is refused with 403.
    #[serde(default, deserialize_with = "go::bool")]
    pub is_inactive: bool,
    /// Deprecated single policy id.
    #[serde(default, deserialize_with = "go::string")]
    pub apply_policy_id: String,
    /// Policy ids.
    #[serde(default, deserialize_with = "go::vec")]
    pub apply_policies: Vec<String>,
    /// Analytics data expiry, seconds.
    #[serde(default, deserialize_with = "go::i64")]
    pub data_expires: i64,
    /// Quota trigger settings.
    #[serde(default, deserialize_with = "go::object")]
    pub monitor: TykMonitor,
    /// Deprecated spelling of `enable_detailed_recording`.
    #[serde(default, deserialize_with = "go::bool")]
    pub enable_detail_recording: bool,
    /// Record request and response bodies in analytics.
    #[serde(default, deserialize_with = "go::bool")]
    pub enable_detailed_recording: bool,
    /// Free-form metadata; values may be any JSON.
    #[serde(default, deserialize_with = "go::map")]
    pub meta_data: Map<String, Value>,
    /// Tags.
    #[serde(default, deserialize_with = "go::vec")]
    pub tags: Vec<String>,
    /// Human-readable alias.
    #[serde(default, deserialize_with = "go::string")]
    pub alias: String,
    /// Last update, unix seconds as text.
    #[serde(default, deserialize_with = "go::string")]
    pub last_updated: String,
    /// Until when (unix seconds) an ID-extractor cache hit skips the auth plugin.
    #[serde(default, deserialize_with = "go::i64")]
    pub id_extractor_deadline: i64,
    /// Session lifetime, seconds.
    #[serde(default, deserialize_with = "go::i64")]
    pub session_lifetime: i64,
    /// The key this session is stored under (Tyk writes it only when set).
    #[serde(
        default,
        deserialize_with = "go::string",
        skip_serializing_if = "String::is_empty"
    )]
    pub key_id: String,
    /// `"retain"` or `"delete"` (recent Tyk; written only when set).
    #[serde(
        default,
        deserialize_with = "go::string",
        skip_serializing_if = "String::is_empty"
    )]
    pub post_expiry_action: String,
    /// Seconds after expiry before deletion (recent Tyk; written only when set).
    #[serde(
        default,
        deserialize_with = "go::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub post_expiry_grace_period: Option<i64>,
    /// Fields this version does not model, kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn zero_time() -> String {
    GO_ZERO_TIME.to_string()
}

/// How Go writes an unset `time.Time`.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl TykSession {
    /// Parses a session from JSON bytes (a Gateway API body or a stored value).
    pub fn from_json(bytes: &[u8]) -> Result<TykSession, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The session as compact JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail; fall back to an empty object
        // rather than panic if a future field ever makes it fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    /// The protobuf-shaped session a plugin sees (Tyk's `ProtoSessionState`).
    pub fn to_proto(&self) -> SessionState {
        let access_rights: PairMap<AccessDefinition> = self
            .access_rights
            .iter()
            .map(|(id, ad)| {
                (
                    id.clone(),
                    AccessDefinition {
                        api_name: Some(ad.api_name.clone()),
                        api_id: Some(ad.api_id.clone()),
                        versions: Some(ad.versions.clone()),
                        allowed_urls: Some(
                            ad.allowed_urls
                                .iter()
                                .map(|u| AccessSpec {
                                    url: Some(u.url.clone()),
                                    methods: Some(u.methods.clone()),
                                })
                                .collect(),
                        ),
                    },
                )
            })
            .collect();
        let metadata: StringMap = self
            .meta_data
            .iter()
            .map(|(k, v)| (k.clone(), metadata_text(v)))
            .collect();
        SessionState {
            last_check: Some(self.last_check),
            allowance: Some(self.allowance),
            rate: Some(self.rate),
            per: Some(self.per),
            expires: Some(self.expires),
            quota_max: Some(self.quota_max),
            quota_renews: Some(self.quota_renews),
            quota_remaining: Some(self.quota_remaining),
            quota_renewal_rate: Some(self.quota_renewal_rate),
            access_rights: Some(access_rights),
            org_id: Some(self.org_id.clone()),
            oauth_client_id: Some(self.oauth_client_id.clone()),
            oauth_keys: Some(
                self.oauth_keys
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            basic_auth_data: Some(BasicAuthData {
                password: Some(self.basic_auth_data.password.clone()),
                hash: Some(self.basic_auth_data.hash_type.clone()),
            }),
            jwt_data: Some(JwtData {
                secret: Some(self.jwt_data.secret.clone()),
            }),
            hmac_enabled: Some(self.hmac_enabled),
            hmac_secret: Some(self.hmac_string.clone()),
            is_inactive: Some(self.is_inactive),
            apply_policy_id: Some(self.apply_policy_id.clone()),
            data_expires: Some(self.data_expires),
            monitor: Some(Monitor {
                trigger_limits: Some(self.monitor.trigger_limits.clone()),
            }),
            enable_detailed_recording: Some(self.enable_detailed_recording),
            metadata: Some(metadata),
            tags: Some(self.tags.clone()),
            alias: Some(self.alias.clone()),
            last_updated: Some(self.last_updated.clone()),
            id_extractor_deadline: Some(self.id_extractor_deadline),
            session_lifetime: Some(self.session_lifetime),
            apply_policies: Some(self.apply_policies.clone()),
            certificate: Some(self.certificate.clone()),
            max_query_depth: Some(self.max_query_depth),
            key_id: Some(self.key_id.clone()),
            post_expiry_action: Some(self.post_expiry_action.clone()),
            post_expiry_grace_period: self.post_expiry_grace_period,
        }
    }

    /// Tyk's internal session from a plugin's protobuf-shaped one (Tyk's `TykSessionState`).
    /// Absent fields take Go's zero values; metadata values stay strings.
    pub fn from_proto(s: &SessionState) -> TykSession {
        let access_rights = s
            .access_rights
            .as_ref()
            .map(|m| {
                m.iter()
                    .map(|(id, ad)| {
                        (
                            id.to_string(),
                            TykAccessDefinition {
                                api_name: ad.api_name.clone().unwrap_or_default(),
                                api_id: ad.api_id.clone().unwrap_or_default(),
                                versions: ad.versions.clone().unwrap_or_default(),
                                allowed_urls: ad
                                    .allowed_urls
                                    .as_deref()
                                    .unwrap_or_default()
                                    .iter()
                                    .map(|u| TykAccessSpec {
                                        url: u.url.clone().unwrap_or_default(),
                                        methods: u.methods.clone().unwrap_or_default(),
                                    })
                                    .collect(),
                                extra: Map::new(),
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let meta_data = s
            .metadata
            .as_ref()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        TykSession {
            last_check: s.last_check.unwrap_or_default(),
            allowance: s.allowance.unwrap_or_default(),
            rate: s.rate.unwrap_or_default(),
            per: s.per.unwrap_or_default(),
            expires: s.expires.unwrap_or_default(),
            quota_max: s.quota_max.unwrap_or_default(),
            quota_renews: s.quota_renews.unwrap_or_default(),
            quota_remaining: s.quota_remaining.unwrap_or_default(),
            quota_renewal_rate: s.quota_renewal_rate.unwrap_or_default(),
            access_rights,
            org_id: s.org_id.clone().unwrap_or_default(),
            oauth_client_id: s.oauth_client_id.clone().unwrap_or_default(),
            oauth_keys: s
                .oauth_keys
                .as_ref()
                .map(|m| m.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
                .unwrap_or_default(),
            certificate: s.certificate.clone().unwrap_or_default(),
            basic_auth_data: s
                .basic_auth_data
                .as_ref()
                .map(|b| TykBasicAuthData {
                    password: b.password.clone().unwrap_or_default(),
                    hash_type: b.hash.clone().unwrap_or_default(),
                })
                .unwrap_or_default(),
            jwt_data: TykJwtData {
                secret: s
                    .jwt_data
                    .as_ref()
                    .and_then(|j| j.secret.clone())
                    .unwrap_or_default(),
            },
            hmac_enabled: s.hmac_enabled.unwrap_or_default(),
            hmac_string: s.hmac_secret.clone().unwrap_or_default(),
            is_inactive: s.is_inactive.unwrap_or_default(),
            apply_policy_id: s.apply_policy_id.clone().unwrap_or_default(),
            apply_policies: s.apply_policies.clone().unwrap_or_default(),
            data_expires: s.data_expires.unwrap_or_default(),
            monitor: TykMonitor {
                trigger_limits: s
                    .monitor
                    .as_ref()
                    .and_then(|m| m.trigger_limits.clone())
                    .unwrap_or_default(),
            },
            enable_detailed_recording: s.enable_detailed_recording.unwrap_or_default(),
            meta_data,
            tags: s.tags.clone().unwrap_or_default(),
            alias: s.alias.clone().unwrap_or_default(),
            last_updated: s.last_updated.clone().unwrap_or_default(),
            id_extractor_deadline: s.id_extractor_deadline.unwrap_or_default(),
            session_lifetime: s.session_lifetime.unwrap_or_default(),
            max_query_depth: s.max_query_depth.unwrap_or_default(),
            key_id: s.key_id.clone().unwrap_or_default(),
            post_expiry_action: s.post_expiry_action.clone().unwrap_or_default(),
            post_expiry_grace_period: s.post_expiry_grace_period,
            ..TykSession::default_go()
        }
    }

    /// A session with Go's zero values (what `json.Unmarshal` of `{}` gives).
    pub fn default_go() -> TykSession {
        TykSession {
            date_created: zero_time(),
            ..TykSession::default()
        }
    }

    /// The policy ids this session asks for (`apply_policies`, else `apply_policy_id`).
    pub fn policy_ids(&self) -> Vec<&str> {
        if !self.apply_policies.is_empty() {
            return self.apply_policies.iter().map(String::as_str).collect();
        }
        if self.apply_policy_id.is_empty() {
            Vec::new()
        } else {
            vec![self.apply_policy_id.as_str()]
        }
    }
}

/// A metadata value as a plugin sees it: strings as they are, anything else as compact JSON.
fn metadata_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Go `encoding/json` leniency for the session's fields: `null` is the zero value, integers
/// accept floats without a fraction.
mod go {
    use super::*;

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(Option::<bool>::deserialize(d)?.unwrap_or_default())
    }

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or_default())
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Ok(opt_i64(d)?.unwrap_or_default())
    }

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    return Ok(Some(i));
                }
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Some(f as i64)),
                    _ => Err(de::Error::custom(format!(
                        "{n} is not an integer that fits in 64 bits"
                    ))),
                }
            }
            Some(other) => Err(de::Error::custom(format!(
                "expected an integer, found {other}"
            ))),
        }
    }

    pub fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
    }

    pub fn map<'de, D, M>(d: D) -> Result<M, D::Error>
    where
        D: Deserializer<'de>,
        M: Deserialize<'de> + Default,
    {
        Ok(Option::<M>::deserialize(d)?.unwrap_or_default())
    }

    pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Default,
    {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }
}
