//! `manifest.json`: what a bundle contains and how it is checked (Tyk's `apidef.BundleManifest`).

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::BundleError;

/// The name of the manifest inside every bundle.
pub const MANIFEST_NAME: &str = "manifest.json";

/// A bundle's manifest.
///
/// `custom_middleware` is kept as raw JSON because the gateway validates it with the same code as
/// an API definition's `custom_middleware` (`crate::config::parse_middleware_section`), and
/// because a bundle rebuilt by pipegate must carry hook settings pipegate does not know
/// (e.g. Tyk's `traffic_logs`) through unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleManifest {
    /// Files covered by the checksum and signature, in hashing order, relative to the bundle root.
    pub file_list: Vec<String>,
    /// The hooks; an absent or `null` section is stored as `{}` (Go's zero `MiddlewareSection`).
    pub custom_middleware: Value,
    /// Lowercase hex MD5 of the concatenated `file_list` files.
    pub checksum: String,
    /// Standard base64 RSA PKCS#1 v1.5 SHA-256 signature of the same bytes; empty when unsigned.
    pub signature: String,
}

impl BundleManifest {
    /// Parses manifest bytes the way Go's `json.Unmarshal` fills `apidef.BundleManifest`: unknown
    /// keys are ignored, keys match case-insensitively when there is no exact match, `null` leaves
    /// a field empty, and a wrong type is an error. `source` names the file in errors.
    pub fn parse(bytes: &[u8], source: &Path) -> Result<(BundleManifest, Value), BundleError> {
        let json_err = |reason: String| BundleError::ManifestJson {
            path: source.to_path_buf(),
            reason,
        };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| json_err(e.to_string()))?;
        let empty = Map::new();
        let obj = match &value {
            Value::Object(map) => map,
            // Go unmarshals `null` into a struct as a no-op.
            Value::Null => &empty,
            other => {
                return Err(json_err(format!(
                    "the manifest must be a JSON object, not {}",
                    type_name(other)
                )))
            }
        };
        let file_list = match field(obj, "file_list") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        Value::Null => out.push(String::new()),
                        other => {
                            return Err(json_err(format!(
                                "file_list[{i}] must be a string, not {}",
                                type_name(other)
                            )))
                        }
                    }
                }
                out
            }
            Some(other) => {
                return Err(json_err(format!(
                    "file_list must be an array of file names, not {}",
                    type_name(other)
                )))
            }
        };
        let custom_middleware = match field(obj, "custom_middleware") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(other) => {
                return Err(json_err(format!(
                    "custom_middleware must be an object, not {}",
                    type_name(other)
                )))
            }
        };
        let string = |key: &str| -> Result<String, BundleError> {
            match field(obj, key) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(json_err(format!(
                    "{key} must be a string, not {}",
                    type_name(other)
                ))),
            }
        };
        let manifest = BundleManifest {
            file_list,
            custom_middleware,
            checksum: string("checksum")?,
            signature: string("signature")?,
        };
        Ok((manifest, value))
    }

    /// Compact JSON with Go's field order (`file_list`, `custom_middleware`, `checksum`,
    /// `signature`), as `tyk bundle build` writes it.
    pub fn to_json(&self) -> String {
        let files = Value::Array(self.file_list.iter().cloned().map(Value::String).collect());
        format!(
            "{{\"file_list\":{files},\"custom_middleware\":{},\"checksum\":{},\"signature\":{}}}",
            self.custom_middleware,
            Value::String(self.checksum.clone()),
            Value::String(self.signature.clone()),
        )
    }

    /// `custom_middleware.driver`, or "" when absent or not a string.
    pub(crate) fn driver(&self) -> &str {
        self.custom_middleware
            .get("driver")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Hooks as `tyk bundle build` counts them: every entry of the four hook arrays (disabled
    /// ones too) plus `auth_check` and `traffic_logs` when they name a function.
    pub(crate) fn hook_count(&self) -> usize {
        let cm = &self.custom_middleware;
        let arrays: usize = ["pre", "post", "post_key_auth", "response"]
            .iter()
            .map(|k| cm.get(*k).and_then(Value::as_array).map_or(0, Vec::len))
            .sum();
        let named = ["auth_check", "traffic_logs"]
            .iter()
            .filter(|k| {
                cm.get(**k)
                    .and_then(|h| h.get("name"))
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
            })
            .count();
        arrays + named
    }
}

/// A key as Go's decoder finds it: exact match first, else an ASCII case-insensitive one.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks that a bundle-relative name (a zip entry or a `file_list` item) stays inside the bundle
/// directory, and returns it as a clean relative path.
///
/// Stricter than Tyk's zip-slip check (which only refuses names that resolve outside the
/// destination): any `..` component and any absolute name is refused, because a legitimate bundle
/// never needs them and `a/../b` is a common disguise.
pub(crate) fn safe_relative_path(name: &str) -> Result<PathBuf, String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.contains('\0') {
        return Err("the name contains a NUL byte".into());
    }
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err("it contains a `..` component (path escape)".into());
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("it is an absolute path".into());
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("the name does not name a file".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `bundle_manifest` fuzz target: without exact float parsing, a hook setting
    /// like 3.3333333333333334e31 came back one unit in the last place off after a rebuild.
    #[test]
    fn to_json_round_trips_numbers_exactly() {
        let src = br#"{"file_list": ["m.py"], "custom_middleware": {"driver": "python",
            "x": [3.3333333333333334e+31, -3.3333333333333336e+22, 0.1, 1e-300, 33333.0]},
            "checksum": "c", "signature": ""}"#;
        let (m, _) = BundleManifest::parse(src, Path::new("manifest.json")).expect("valid");
        let (again, _) = BundleManifest::parse(m.to_json().as_bytes(), Path::new("manifest.json"))
            .expect("re-parses");
        assert_eq!(m, again);
    }
}
