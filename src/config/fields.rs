//! Typed reads of JSON fields that remember where they are.
//!
//! Tyk's files are read into a `serde_json::Value` first and then taken apart field by field,
//! instead of through `#[derive(Deserialize)]` structs, for two reasons: real files carry hundreds
//! of keys we must accept and list, and every problem has to be reported with its full field path
//! (`custom_middleware.pre[1].timeout_ms`), with all problems of a file collected rather than the
//! first one only.
//!
//! Go's `encoding/json` leaves a field at its zero value when the JSON holds `null`, so `null` is
//! read as "absent" everywhere here.

use serde_json::{Map, Value};

/// One problem with one field, before it is tied to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub field: String,
    pub reason: String,
}

impl Issue {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Issue {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Collects every issue of one file so that all of them can be reported together.
#[derive(Debug, Default)]
pub(crate) struct Issues {
    pub list: Vec<Issue>,
}

impl Issues {
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.list.push(Issue::new(field, reason));
    }

    /// The value if `r` is Ok; otherwise records the issue and returns `fallback` so that reading
    /// can go on and find the next problem.
    pub fn take<T>(&mut self, r: Result<T, Issue>, fallback: T) -> T {
        match r {
            Ok(v) => v,
            Err(issue) => {
                self.list.push(issue);
                fallback
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Joins a field path and a key: `join("proxy", "listen_path") == "proxy.listen_path"`.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A short description of what a value is, for "expected X, found Y" messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let mut shown: String = s.chars().take(40).collect();
            if shown.len() < s.len() {
                shown.push('…');
            }
            format!("the string {shown:?}")
        }
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// A JSON object (or an absent one) with the field path it was found at.
#[derive(Debug, Clone)]
pub(crate) struct Obj<'v> {
    map: Option<&'v Map<String, Value>>,
    path: String,
}

impl<'v> Obj<'v> {
    /// Views `value` found at `path` as an object; `null` is an empty object.
    pub fn from_value(value: &'v Value, path: impl Into<String>) -> Result<Self, Issue> {
        let path = path.into();
        match value {
            Value::Object(map) => Ok(Obj {
                map: Some(map),
                path,
            }),
            Value::Null => Ok(Obj::empty(path)),
            other => Err(Issue::new(
                path,
                format!("expected an object, found {}", describe(other)),
            )),
        }
    }

    /// An object with no keys, for a section that is absent.
    pub fn empty(path: impl Into<String>) -> Self {
        Obj {
            map: None,
            path: path.into(),
        }
    }

    /// The field path of this object ("" for a file's top level).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The field path of `key` inside this object.
    pub fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The object under `key`; absent (or `null`) is an empty object.
    pub fn obj(&self, key: &str) -> Result<Obj<'v>, Issue> {
        match self.get(key) {
            None => Ok(Obj::empty(self.field(key))),
            Some(v) => Obj::from_value(v, self.field(key)),
        }
    }

    /// The value of `key`, treating `null` as absent.
    pub fn get(&self, key: &str) -> Option<&'v Value> {
        match self.map.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// All keys present, in the map's order.
    pub fn keys(&self) -> impl Iterator<Item = &'v String> {
        self.map.into_iter().flat_map(|m| m.keys())
    }

    /// Keys not in `known`, as full field paths, sorted.
    pub fn unknown_keys(&self, known: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = self
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| self.field(k))
            .collect();
        out.sort();
        out
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, Issue> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(Issue::new(
                self.field(key),
                format!("expected true or false, found {}", describe(other)),
            )),
        }
    }

    /// An optional bool: `None` when absent.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, Issue> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.bool(key, false).map(Some),
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<&'v str>, Issue> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(Issue::new(
                self.field(key),
                format!("expected a string, found {}", describe(other)),
            )),
        }
    }

    pub fn string(&self, key: &str, default: &str) -> Result<String, Issue> {
        Ok(self.str(key)?.unwrap_or(default).to_string())
    }

    /// A non-negative whole number; `None` when absent.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, Issue> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let field = || self.field(key);
        match v {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Ok(Some(u))
                } else if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f < 0.0) {
                    Err(Issue::new(
                        field(),
                        format!("must not be negative, found {n}"),
                    ))
                } else {
                    Err(Issue::new(
                        field(),
                        format!("must be a whole number, found {n}"),
                    ))
                }
            }
            other => Err(Issue::new(
                field(),
                format!("expected a whole number, found {}", describe(other)),
            )),
        }
    }

    pub fn u64(&self, key: &str, default: u64) -> Result<u64, Issue> {
        Ok(self.opt_u64(key)?.unwrap_or(default))
    }

    /// A non-negative number that may have a fraction (Tyk's float seconds); `None` when absent.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, Issue> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f)),
                _ => Err(Issue::new(
                    self.field(key),
                    format!("must be a number that is not negative, found {n}"),
                )),
            },
            other => Err(Issue::new(
                self.field(key),
                format!("expected a number, found {}", describe(other)),
            )),
        }
    }

    /// An array; absent is empty.
    pub fn array(&self, key: &str) -> Result<&'v [Value], Issue> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a.as_slice()),
            Some(other) => Err(Issue::new(
                self.field(key),
                format!("expected an array, found {}", describe(other)),
            )),
        }
    }

    /// An array of strings; absent is empty.
    pub fn strings(&self, key: &str) -> Result<Vec<String>, Issue> {
        let items = self.array(key)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => {
                    return Err(Issue::new(
                        format!("{}[{i}]", self.field(key)),
                        format!("expected a string, found {}", describe(other)),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The raw value of a key that must be an object when present (`None` when absent).
    pub fn raw_object(&self, key: &str) -> Result<Option<&'v Map<String, Value>>, Issue> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(Issue::new(
                self.field(key),
                format!("expected an object, found {}", describe(other)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_reads_as_absent_and_types_are_checked() {
        let v = json!({"a": null, "b": "x", "n": -3, "f": 1.5, "arr": [1]});
        let o = Obj::from_value(&v, "top").unwrap();
        assert!(o.bool("a", true).unwrap());
        assert_eq!(
            o.bool("b", false).unwrap_err().reason,
            "expected true or false, found the string \"x\""
        );
        assert_eq!(o.u64("n", 0).unwrap_err().field, "top.n");
        assert!(o.u64("n", 0).unwrap_err().reason.contains("negative"));
        assert!(o.u64("f", 0).unwrap_err().reason.contains("whole number"));
        assert_eq!(o.opt_f64("f").unwrap(), Some(1.5));
        assert_eq!(o.strings("arr").unwrap_err().field, "top.arr[0]");
        assert_eq!(
            o.unknown_keys(&["a", "b"]),
            vec!["top.arr", "top.f", "top.n"]
        );
    }
}
