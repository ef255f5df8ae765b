//! Responses the gateway writes itself: errors, health checks and plugin short-circuits.
//!
//! Error bodies follow Tyk's default `error.json` template byte for byte
//! (`{\n    "error": "<message>"\n}`, no trailing newline), so clients and tests written against Tyk
//! see the same thing.

use std::io::Write;

/// The standard reason phrase for a status code (empty for unknown codes, which HTTP allows).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes `HTTP/1.1 <status> <reason>\r\n`.
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason(status));
}

/// Renders Tyk's JSON error body for `message`.
pub fn error_body(message: &str) -> String {
    let escaped = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".to_string());
    format!("{{\n    \"error\": {escaped}\n}}")
}

/// A complete response built by the gateway.
pub struct Local<'a> {
    /// Status code.
    pub status: u16,
    /// Extra headers, written as given.
    pub headers: &'a [(String, String)],
    /// Content-Type, if any.
    pub content_type: Option<&'a str>,
    /// Body bytes.
    pub body: &'a [u8],
    /// Close the connection after this response.
    pub close: bool,
    /// The client spoke HTTP/1.0 and keeps the connection open.
    pub http10_keep_alive: bool,
    /// Answering a HEAD request: headers only.
    pub head: bool,
}

impl Local<'_> {
    /// Serialises the response into `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        status_line(out, self.status);
        for (k, v) in self.headers {
            // The gateway frames its own responses: a plugin's Content-Length or hop-by-hop
            // header (Connection, Transfer-Encoding, Upgrade, ...) is never written.
            if k.eq_ignore_ascii_case("content-length")
                || super::headers::is_hop_by_hop(k.as_bytes())
            {
                continue;
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(ct) = self.content_type {
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(ct.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.http10_keep_alive {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !self.head {
            out.extend_from_slice(self.body);
        }
    }
}

/// Writes a Tyk-style JSON error response.
pub fn write_error(out: &mut Vec<u8>, status: u16, message: &str, close: bool, head: bool) {
    let body = error_body(message);
    Local {
        status,
        headers: &[],
        content_type: Some("application/json"),
        body: body.as_bytes(),
        close,
        http10_keep_alive: false,
        head,
    }
    .write(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_matches_tyk_template() {
        assert_eq!(
            error_body("custom error message"),
            "{\n    \"error\": \"custom error message\"\n}"
        );
        assert_eq!(error_body("a\"b"), "{\n    \"error\": \"a\\\"b\"\n}");
    }

    #[test]
    fn writes_error_response() {
        let mut out = Vec::new();
        write_error(&mut out, 404, "Not found", true, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(s.contains("Content-Type: application/json\r\n"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\n{\n    \"error\": \"Not found\"\n}"));
    }
}
