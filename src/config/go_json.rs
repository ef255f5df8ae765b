//! JSON text byte-for-byte as Go's `json.Marshal` writes it for a decoded `interface{}`.
//!
//! Tyk sends an API's `config_data` to plugins as `spec["config_data"]`, the string produced by
//! `json.Marshal(map[string]interface{})`. Plugins that compare or hash that string, or parse it
//! with a strict decoder, must see the same text from pipegate, so this reproduces Go's rules:
//! - object keys sorted by byte order, no whitespace;
//! - every number is a float64 (Go decodes JSON numbers into `interface{}` as float64), printed in
//!   the shortest form that round-trips, in plain decimal for 1e-6 <= |x| < 1e21 and exponent form
//!   (`1e+21`, `1e-7`) outside that range; so `12345678901234567890` becomes
//!   `12345678901234567000`, as in Tyk;
//! - strings escape `<`, `>`, `&`, U+2028 and U+2029 (Go's HTML-safe default), `\b`, `\f`, `\n`,
//!   `\r`, `\t` in short form and other control characters as `\u00XX`.

use serde_json::{Number, Value};
use std::fmt::Write as _;

/// Writes `v` as Go's `json.Marshal` would.
pub(crate) fn marshal(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sort explicitly: serde_json's map order depends on a crate feature that any crate
            // in the build can switch on.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                write_value(out, val);
            }
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, n: &Number) {
    let Some(f) = n.as_f64() else {
        // Not reachable without serde_json's arbitrary_precision; keep the text rather than lose it.
        out.push_str(&n.to_string());
        return;
    };
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust's `{:e}` gives the shortest round-trip mantissa, like Go's AppendFloat(-1);
        // Go then writes the exponent with a sign, at least two digits for positive exponents,
        // and trims `e-07` to `e-7`.
        let sci = format!("{f:e}");
        let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        out.push_str(mantissa);
        if exp < 0 {
            let _ = write!(out, "e-{}", -exp);
        } else {
            let _ = write!(out, "e+{exp:02}");
        }
    } else {
        // Rust's Display for f64 is the shortest round-trip decimal without an exponent, which is
        // Go's 'f' format with precision -1; it also prints -0.0 as "-0", as Go does.
        let _ = write!(out, "{f}");
    }
}

fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\u{0}'..='\u{1f}' => {
                let code = c as u32;
                out.push_str("\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(HEX[((code >> shift) & 0xf) as usize] as char);
                }
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::marshal;

    fn go(text: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        marshal(&v)
    }

    #[test]
    fn keys_sorted_recursively_and_compact() {
        assert_eq!(
            go(r#"{ "z": 1, "a": {"y": [true, null], "b": "x"}, "B": 2 }"#),
            r#"{"B":2,"a":{"b":"x","y":[true,null]},"z":1}"#
        );
    }

    #[test]
    fn numbers_follow_go_float64_formatting() {
        assert_eq!(
            go("[1.0, 0.5, 100, -2, 1e20]"),
            "[1,0.5,100,-2,100000000000000000000]"
        );
        assert_eq!(
            go("[1e21, 1.5e300, 0.000001, 1e-7, 2.5e-10]"),
            "[1e+21,1.5e+300,0.000001,1e-7,2.5e-10]"
        );
        assert_eq!(go("[12345678901234567890]"), "[12345678901234567000]");
        assert_eq!(go("[-0.0, 0]"), "[-0,0]");
    }

    #[test]
    fn strings_escape_like_go() {
        assert_eq!(
            go(r#"["<a href=\"x\">&</a>", "line\nbreak\ttab\u0001", "\u2028é"]"#),
            r#"["\u003ca href=\"x\"\u003e\u0026\u003c/a\u003e","line\nbreak\ttab\u0001","\u2028é"]"#
        );
    }
}
