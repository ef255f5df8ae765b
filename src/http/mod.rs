//! HTTP/1.1 wire handling: request head parsing and validation, body framing, header names and
//! gateway-generated responses.
//!
//! Parsing is done with httparse and the result is kept as byte offsets into the connection's read
//! buffer, so a request head costs no allocation. Validation happens here, once, and rejects the
//! shapes that let a front proxy and a back server disagree about where a request ends (request
//! smuggling): Content-Length together with Transfer-Encoding, differing Content-Length values,
//! transfer codings other than a lone `chunked`, obs-fold and invalid header bytes.

pub mod chunked;
pub mod headers;
pub mod response;

pub use chunked::{ChunkError, ChunkedDecoder};

use std::mem::MaybeUninit;

/// Most request headers accepted; more is answered 431.
pub const MAX_HEADERS: usize = 128;

/// A byte range of the connection's read buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The bytes of this span in `buf`.
    #[inline]
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start..self.end]
    }

    /// The span as text; request heads are validated as visible ASCII or obs-text, so this
    /// only fails for obs-text (bytes >= 0x80), which then reads as empty.
    #[inline]
    pub fn str<'a>(&self, buf: &'a [u8]) -> &'a str {
        std::str::from_utf8(self.of(buf)).unwrap_or("")
    }

    /// The position of `sub` inside `base`. httparse hands back slices of the buffer, except
    /// for a few static strings (e.g. an empty reason phrase when the sent one is not UTF-8):
    /// anything outside `base` becomes an empty span instead of an overflowing subtraction.
    fn from_sub(base: &[u8], sub: &[u8]) -> Span {
        let b = base.as_ptr() as usize;
        let p = sub.as_ptr() as usize;
        if p < b || p + sub.len() > b + base.len() {
            return Span { start: 0, end: 0 };
        }
        let start = p - b;
        Span {
            start,
            end: start + sub.len(),
        }
    }
}

/// One header as name and value spans.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderSpan {
    /// Header name as sent.
    pub name: Span,
    /// Header value, surrounding whitespace trimmed.
    pub value: Span,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// A parsed and validated request head, as offsets into the read buffer.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Method token.
    pub method: Span,
    /// Path and query (origin form; absolute-form targets are reduced to this). Empty means "/".
    pub target: Span,
    /// End of the path within `target` (where `?` starts, or `target.end`).
    pub path_end: usize,
    /// HTTP/1.0 request.
    pub http10: bool,
    /// All headers in order.
    pub headers: Vec<HeaderSpan>,
    /// Length of the head including the final CRLFCRLF.
    pub head_len: usize,
    /// Request body framing.
    pub body: BodyKind,
    /// Whether the client wants the connection kept open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// Host: header value, or the authority of an absolute-form target.
    pub host: Option<Span>,
    /// Index in `headers` of the Connection header, whose tokens name further hop-by-hop headers.
    pub connection: Option<usize>,
    /// Header names that the client's Connection header lists (besides close/keep-alive).
    pub has_connection_tokens: bool,
}

impl Default for RequestHead {
    fn default() -> Self {
        RequestHead {
            method: Span::default(),
            target: Span::default(),
            path_end: 0,
            http10: false,
            headers: Vec::with_capacity(32),
            head_len: 0,
            body: BodyKind::None,
            keep_alive: true,
            expect_continue: false,
            host: None,
            connection: None,
            has_connection_tokens: false,
        }
    }
}

impl RequestHead {
    /// The request path (no query); "/" for an absolute-form target without a path.
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a str {
        if self.target.start == self.target.end {
            return "/";
        }
        std::str::from_utf8(&buf[self.target.start..self.path_end]).unwrap_or("/")
    }

    /// The query string without `?`, if any.
    pub fn query<'a>(&self, buf: &'a [u8]) -> Option<&'a str> {
        if self.path_end < self.target.end {
            std::str::from_utf8(&buf[self.path_end + 1..self.target.end]).ok()
        } else {
            None
        }
    }

    /// First value of a header, by case-insensitive name.
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.of(buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value.of(buf))
    }

    /// True when the request is safe to retry on another upstream connection (RFC 9110 idempotent
    /// methods without a body).
    pub fn is_idempotent(&self, buf: &[u8]) -> bool {
        matches!(
            self.method.of(buf),
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        ) && self.body == BodyKind::None
    }
}

/// A request the gateway refuses, with the status to answer and a message for the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    /// HTTP status to answer with.
    pub status: u16,
    /// Human-readable reason, placed in the JSON error body.
    pub message: &'static str,
}

impl HttpError {
    const fn new(status: u16, message: &'static str) -> Self {
        HttpError { status, message }
    }
}

/// Parses a request head from `buf` into `head`. Returns `Ok(false)` when more bytes are needed.
pub fn parse_request(
    buf: &[u8],
    head: &mut RequestHead,
    max_header_bytes: usize,
) -> Result<bool, HttpError> {
    // Left uninitialised: filling 128 empty headers costs more than parsing a short head.
    let mut raw = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_header_bytes {
                return Err(HttpError::new(431, "Request header fields too large"));
            }
            return Ok(false);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(431, "Too many request header fields"))
        }
        Err(httparse::Error::Version) => {
            return Err(HttpError::new(505, "HTTP version not supported"))
        }
        Err(_) => return Err(HttpError::new(400, "Malformed request")),
    };
    if len > max_header_bytes {
        return Err(HttpError::new(431, "Request header fields too large"));
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    head.head_len = len;
    head.http10 = req.version == Some(0);
    head.method = Span::from_sub(buf, method.as_bytes());
    head.headers.clear();
    head.host = None;
    head.connection = None;
    head.has_connection_tokens = false;
    head.expect_continue = false;

    if method == "CONNECT" {
        return Err(HttpError::new(405, "CONNECT is not supported"));
    }
    // Request target: origin-form, or absolute-form (reduced to its path; the authority is the host).
    let tbytes = target.as_bytes();
    let mut abs_host = None;
    let tspan = if tbytes.first() == Some(&b'/') {
        Span::from_sub(buf, tbytes)
    } else if let Some(rest) = strip_scheme(tbytes) {
        let auth_len = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        if auth_len == 0 {
            return Err(HttpError::new(400, "Malformed request target"));
        }
        abs_host = Some(Span::from_sub(buf, &rest[..auth_len]));
        let path = &rest[auth_len..];
        if path.first() == Some(&b'?') {
            // "http://host?q" has no path; the spans cannot express "/" + query without copying.
            return Err(HttpError::new(400, "Malformed request target"));
        }
        Span::from_sub(buf, path)
    } else if target == "*" && method == "OPTIONS" {
        return Err(HttpError::new(
            400,
            "Asterisk-form request target is not supported",
        ));
    } else {
        return Err(HttpError::new(400, "Malformed request target"));
    };
    if tbytes.len() > 8192 {
        return Err(HttpError::new(414, "URI too long"));
    }
    head.target = tspan;
    head.path_end = tspan
        .of(buf)
        .iter()
        .position(|&b| b == b'?')
        .map(|p| tspan.start + p)
        .unwrap_or(tspan.end);

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut host_count = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        let hs = HeaderSpan {
            name: Span::from_sub(buf, name),
            value: Span::from_sub(buf, value),
        };
        if name.eq_ignore_ascii_case(b"content-length") {
            let n =
                parse_content_length(value).ok_or(HttpError::new(400, "Invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::new(400, "Conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te_seen {
                return Err(HttpError::new(400, "Repeated Transfer-Encoding header"));
            }
            te_seen = true;
            if value.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or(b"");
                return Err(if last.eq_ignore_ascii_case(b"chunked") {
                    HttpError::new(501, "Transfer coding not supported")
                } else {
                    HttpError::new(400, "Invalid Transfer-Encoding")
                });
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            host_count += 1;
            if host_count > 1 {
                return Err(HttpError::new(400, "Repeated Host header"));
            }
            if abs_host.is_none() {
                head.host = Some(hs.value);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            head.connection = Some(head.headers.len());
            for tok in value.split(|&b| b == b',').map(trim) {
                if tok.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if !tok.is_empty() {
                    head.has_connection_tokens = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                head.expect_continue = !head.http10;
            } else {
                return Err(HttpError::new(417, "Expectation failed"));
            }
        }
        head.headers.push(hs);
    }
    if abs_host.is_some() {
        head.host = abs_host;
    }
    if !head.http10 && host_count == 0 {
        return Err(HttpError::new(400, "Missing Host header"));
    }
    if chunked && content_length.is_some() {
        return Err(HttpError::new(
            400,
            "Content-Length and Transfer-Encoding together",
        ));
    }
    if chunked && head.http10 {
        return Err(HttpError::new(
            400,
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    head.body = if chunked {
        BodyKind::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };
    if head.body == BodyKind::None {
        head.expect_continue = false;
    }
    head.keep_alive = if head.http10 {
        keep_alive_token && !close
    } else {
        !close
    };
    Ok(true)
}

fn strip_scheme(t: &[u8]) -> Option<&[u8]> {
    if t.len() > 7 && t[..7].eq_ignore_ascii_case(b"http://") {
        Some(&t[7..])
    } else if t.len() > 8 && t[..8].eq_ignore_ascii_case(b"https://") {
        Some(&t[8..])
    } else {
        None
    }
}

/// Trims optional whitespace (SP, HTAB) from both ends.
pub fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map(|p| p + 1)
        .unwrap_or(start);
    &v[start..end.max(start)]
}

/// Parses a Content-Length value: ASCII digits only, no sign, no list, fits in u64.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    Some(n)
}

/// A parsed upstream response head, as offsets into the upstream read buffer.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: Span,
    /// HTTP/1.0 response.
    pub http10: bool,
    /// Headers in order.
    pub headers: Vec<HeaderSpan>,
    /// Length of the head.
    pub head_len: usize,
    /// Content-Length, if sent.
    pub content_length: Option<u64>,
    /// Transfer-Encoding: chunked was sent.
    pub chunked: bool,
    /// The upstream asked to close the connection after this response.
    pub close: bool,
    /// The Connection header lists header names (besides close/keep-alive), which are then
    /// hop-by-hop for this response.
    pub connection_tokens: bool,
}

/// Parses an upstream response head. `Ok(false)` means more bytes are needed.
pub fn parse_response(
    buf: &[u8],
    head: &mut ResponseHead,
    max_header_bytes: usize,
) -> Result<bool, &'static str> {
    let mut raw = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_header_bytes {
                return Err("upstream response head too large");
            }
            return Ok(false);
        }
        Err(_) => return Err("malformed upstream response"),
    };
    head.status = resp.code.unwrap_or(0);
    head.reason = Span::from_sub(buf, resp.reason.unwrap_or("").as_bytes());
    head.http10 = resp.version == Some(0);
    head.head_len = len;
    head.headers.clear();
    head.content_length = None;
    head.chunked = false;
    head.close = head.http10;
    head.connection_tokens = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(value).ok_or("invalid upstream Content-Length")?;
            if head.content_length.is_some_and(|c| c != n) {
                return Err("conflicting upstream Content-Length");
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or(b"");
            if last.eq_ignore_ascii_case(b"chunked") {
                head.chunked = true;
            } else {
                // Not chunked-final: the body runs until close (RFC 9112 6.3).
                head.close = true;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for tok in value.split(|&b| b == b',').map(trim) {
                if tok.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    if head.http10 {
                        head.close = false;
                    }
                } else if !tok.is_empty() {
                    head.connection_tokens = true;
                }
            }
        }
        head.headers.push(HeaderSpan {
            name: Span::from_sub(buf, name),
            value: Span::from_sub(buf, value),
        });
    }
    if head.chunked {
        head.content_length = None;
    }
    Ok(true)
}

impl ResponseHead {
    /// How the body of this response is delimited, given the request method.
    pub fn body_kind(&self, head_request: bool) -> BodyKind {
        if head_request
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            BodyKind::None
        } else if self.chunked {
            BodyKind::Chunked
        } else if let Some(n) = self.content_length {
            if n == 0 {
                BodyKind::None
            } else {
                BodyKind::Length(n)
            }
        } else {
            BodyKind::UntilClose
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_reason_phrase_is_an_empty_span_not_an_overflow() {
        // Found by the fuzz smoke run: httparse returns a static "" for such a reason.
        let raw = b"HTTP/1.0 204 \xb2\x98 Content\r\nContent-Length: 0\r\n\r\n";
        let mut head = ResponseHead::default();
        assert!(matches!(
            parse_response(raw, &mut head, 8192),
            Ok(true) | Err(_)
        ));
        assert!(head.reason.end <= raw.len());
    }

    fn parse(s: &str) -> Result<RequestHead, HttpError> {
        let mut h = RequestHead::default();
        match parse_request(s.as_bytes(), &mut h, 8192)? {
            true => Ok(h),
            false => Err(HttpError::new(0, "partial")),
        }
    }

    #[test]
    fn parses_simple_get() {
        let s = "GET /a/b?x=1 HTTP/1.1\r\nHost: example\r\nX-A:  v \r\n\r\n";
        let h = parse(s).unwrap();
        let b = s.as_bytes();
        assert_eq!(h.method.of(b), b"GET");
        assert_eq!(h.path(b), "/a/b");
        assert_eq!(h.query(b), Some("x=1"));
        assert_eq!(h.header(b, "x-a"), Some(&b"v"[..]));
        assert_eq!(h.body, BodyKind::None);
        assert!(h.keep_alive);
        assert_eq!(h.head_len, s.len());
    }

    #[test]
    fn absolute_form_uses_authority() {
        let s = "GET http://up.example:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
        let h = parse(s).unwrap();
        let b = s.as_bytes();
        assert_eq!(h.path(b), "/p");
        assert_eq!(h.host.unwrap().of(b), b"up.example:8080");
    }

    #[test]
    fn http10_defaults_to_close() {
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn smuggling_shapes_rejected() {
        let cases = [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
            ("GET nopath HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        ];
        for (req, status) in cases {
            let err = parse(req).expect_err(req);
            assert_eq!(err.status, status, "{req:?}");
        }
    }

    #[test]
    fn duplicate_equal_content_length_is_accepted() {
        let h =
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
                .unwrap();
        assert_eq!(h.body, BodyKind::Length(3));
    }

    #[test]
    fn header_limit_gives_431() {
        let mut h = RequestHead::default();
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(
            parse_request(big.as_bytes(), &mut h, 8192)
                .unwrap_err()
                .status,
            431
        );
    }

    #[test]
    fn response_framing() {
        let mut r = ResponseHead::default();
        let s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_response(s, &mut r, 8192).unwrap());
        assert_eq!(r.body_kind(false), BodyKind::Chunked);
        assert_eq!(r.body_kind(true), BodyKind::None);
        let s = b"HTTP/1.0 200 OK\r\n\r\n";
        assert!(parse_response(s, &mut r, 8192).unwrap());
        assert_eq!(r.body_kind(false), BodyKind::UntilClose);
        assert!(r.close);
    }

    #[test]
    fn response_connection_tokens_are_noted_only_for_header_names() {
        let mut r = ResponseHead::default();
        for (conn, tokens, close) in [
            ("keep-alive", false, false),
            ("Keep-Alive , close", false, true),
            ("keep-alive, X-Up-Hop", true, false),
            ("X-Up-Hop", true, false),
            (" , ", false, false),
        ] {
            let s = format!("HTTP/1.1 200 OK\r\nConnection: {conn}\r\nContent-Length: 0\r\n\r\n");
            assert!(parse_response(s.as_bytes(), &mut r, 8192).unwrap());
            assert_eq!((r.connection_tokens, r.close), (tokens, close), "{conn:?}");
        }
        // Reset for the next response on the same head.
        assert!(parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", &mut r, 8192).unwrap());
        assert!(!r.connection_tokens);
    }
}
