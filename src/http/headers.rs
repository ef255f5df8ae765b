//! Header-name rules shared by the proxy and the plugin object model.

/// Headers that describe one hop, not the message: never forwarded (RFC 9110 7.6.1), in either
/// direction. Lower-case for comparison.
const HOP_BY_HOP: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
];

/// True for a hop-by-hop header name (case-insensitive).
#[inline]
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// True when `name` is one of the comma-separated tokens of a Connection header value, which makes
/// it hop-by-hop for this message.
pub fn listed_in_connection(connection_value: &[u8], name: &[u8]) -> bool {
    connection_value
        .split(|&b| b == b',')
        .map(super::trim)
        .any(|tok| tok.eq_ignore_ascii_case(name))
}

/// Appends the Go-canonical form of a header name (`content-type` -> `Content-Type`), as Tyk's
/// `textproto.CanonicalMIMEHeaderKey` produces, so that plugins looking up `headers["Authorization"]`
/// keep working. Like Go, a name holding a byte that is not a token character is left unchanged.
pub fn canonical_name_into(name: &[u8], out: &mut String) {
    let valid = name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        out.push_str(&String::from_utf8_lossy(name));
        return;
    }
    let mut upper = true;
    for &b in name {
        let c = if upper {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        };
        out.push(c as char);
        upper = b == b'-';
    }
}

/// Turns `name` into its Go-canonical form in place (no allocation: only ASCII case changes);
/// names that are not tokens are left as they are, as [`canonical_name_into`] does.
pub fn canonicalize_in_place(name: &mut String) {
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return;
    }
    let mut upper = true;
    let mut out = std::mem::take(name).into_bytes();
    for b in out.iter_mut() {
        let was_dash = *b == b'-';
        if upper {
            b.make_ascii_uppercase();
        } else {
            b.make_ascii_lowercase();
        }
        upper = was_dash;
    }
    // Only ASCII letters changed case, so the bytes are still UTF-8.
    *name = String::from_utf8(out).unwrap_or_default();
}

/// The Go-canonical form of a header name, owned.
pub fn canonical_name(name: &[u8]) -> String {
    let mut s = String::with_capacity(name.len());
    canonical_name_into(name, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_canonical_form_matches_the_owned_one() {
        for n in [
            "x-foo-BAR",
            "CONTENT-TYPE",
            "a",
            "-x-",
            "x_weird.name",
            "bad name",
            "ünï",
            "",
        ] {
            let mut s = n.to_string();
            canonicalize_in_place(&mut s);
            assert_eq!(s, canonical_name(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn canonicalizes_like_go() {
        assert_eq!(canonical_name(b"content-type"), "Content-Type");
        assert_eq!(canonical_name(b"X-API-KEY"), "X-Api-Key");
        assert_eq!(canonical_name(b"authorization"), "Authorization");
        assert_eq!(canonical_name(b"x-1a"), "X-1a");
        assert_eq!(canonical_name(b"bad name"), "bad name");
    }

    #[test]
    fn hop_by_hop() {
        assert!(is_hop_by_hop(b"Transfer-Encoding"));
        assert!(is_hop_by_hop(b"KEEP-ALIVE"));
        assert!(!is_hop_by_hop(b"Content-Length"));
        assert!(listed_in_connection(b"close, X-Foo", b"x-foo"));
        assert!(!listed_in_connection(b"close", b"x-foo"));
    }
}
