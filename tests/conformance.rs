//! HTTP/1.1 request conformance and smuggling corpus, as one data-driven table.
//!
//! Every row is sent on a connection that already served a request (as smuggling attempts are),
//! and asserts the status, what happens to the connection afterwards (closed, or still usable for
//! a follow-up request), and for accepted rows the exact request the upstream received (path and
//! body). Rejected rows carry a smuggled second request after the ambiguous one; it must never
//! reach the upstream. `tests/gateway_core.rs` keeps the older smuggling test; this table is the
//! complete list (issue #8).

mod common;

use common::*;

/// What the gateway must do with a row.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused with this status (Tyk JSON error body) and the connection closed (404, which is
    /// not a framing problem, keeps the connection usable).
    Reject(u16),
    /// Forwarded: the upstream sees this path and body; the connection stays usable.
    Forward {
        path: &'static str,
        body: &'static [u8],
    },
}

const SMUGGLED: &str = "GET /s/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

fn rows() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::*;
    let post = |path: &str, headers: &str, body: &str| -> Vec<u8> {
        format!("POST {path} HTTP/1.1\r\nHost: gateway.test\r\n{headers}\r\n{body}").into_bytes()
    };
    let smuggle = |headers: &str, body: &str| post("/s/x", headers, &format!("{body}{SMUGGLED}"));
    let long_target = format!("/s/{}", "a".repeat(9000));
    vec![
        // Content-Length and Transfer-Encoding together, either order.
        (
            "CL then TE",
            smuggle(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Reject(400),
        ),
        (
            "TE then CL",
            smuggle(
                "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
                "0\r\n\r\n",
            ),
            Reject(400),
        ),
        // Transfer-Encoding variants.
        (
            "TE chunked, identity (chunked not last)",
            smuggle("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        (
            "TE identity, chunked (unsupported coding)",
            smuggle("Transfer-Encoding: identity, chunked\r\n", "0\r\n\r\n"),
            Reject(501),
        ),
        (
            "TE gzip, chunked (unsupported coding)",
            smuggle("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            Reject(501),
        ),
        (
            "TE chunked, chunked (one header)",
            smuggle("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            Reject(501),
        ),
        (
            "TE twice",
            smuggle(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Reject(400),
        ),
        (
            "TE twice, second identity",
            smuggle(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "0\r\n\r\n",
            ),
            Reject(400),
        ),
        (
            "TE unknown token",
            smuggle("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        (
            "TE empty",
            smuggle("Transfer-Encoding: \r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        (
            "TE with vertical tab",
            smuggle("Transfer-Encoding: \x0bchunked\r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        (
            "TE Chunked (case)",
            post(
                "/s/te-case",
                "Transfer-Encoding: Chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Forward {
                path: "/te-case",
                body: b"hello",
            },
        ),
        (
            "TE CHUNKED (case)",
            post(
                "/s/te-upper",
                "Transfer-Encoding: CHUNKED\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Forward {
                path: "/te-upper",
                body: b"hello",
            },
        ),
        (
            "TE with tab before value",
            post(
                "/s/te-tab",
                "Transfer-Encoding:\tchunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Forward {
                path: "/te-tab",
                body: b"hello",
            },
        ),
        (
            "TE with trailing whitespace",
            post(
                "/s/te-ws",
                "Transfer-Encoding: chunked \t\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Forward {
                path: "/te-ws",
                body: b"hello",
            },
        ),
        (
            "TE in HTTP/1.0",
            b"POST /s/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            Reject(400),
        ),
        // Content-Length variants.
        (
            "CL twice, equal",
            post(
                "/s/cl-dup",
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                "hello",
            ),
            Forward {
                path: "/cl-dup",
                body: b"hello",
            },
        ),
        (
            "CL twice, differing",
            smuggle("Content-Length: 5\r\nContent-Length: 44\r\n", "hello"),
            Reject(400),
        ),
        (
            "CL list",
            smuggle("Content-Length: 5, 44\r\n", "hello"),
            Reject(400),
        ),
        (
            "CL list of equal values",
            smuggle("Content-Length: 5, 5\r\n", "hello"),
            Reject(400),
        ),
        (
            "CL with +",
            smuggle("Content-Length: +5\r\n", "hello"),
            Reject(400),
        ),
        (
            "CL negative",
            smuggle("Content-Length: -5\r\n", "hello"),
            Reject(400),
        ),
        (
            "CL hex",
            smuggle("Content-Length: 0x5\r\n", "hello"),
            Reject(400),
        ),
        (
            "CL with inner space",
            smuggle("Content-Length: 5 5\r\n", "hello"),
            Reject(400),
        ),
        (
            "CL empty",
            smuggle("Content-Length: \r\n", "hello"),
            Reject(400),
        ),
        (
            "CL overflowing u64",
            smuggle("Content-Length: 99999999999999999999\r\n", "hello"),
            Reject(400),
        ),
        (
            "CL of 20 digits (u64::MAX)",
            smuggle("Content-Length: 18446744073709551615\r\n", "hello"),
            Reject(400),
        ),
        (
            "CL over the body limit",
            smuggle("Content-Length: 9999999999999999999\r\n", "hello"),
            Reject(413),
        ),
        (
            "CL with surrounding whitespace (OWS)",
            post("/s/cl-ows", "Content-Length: \t5 \r\n", "hello"),
            Forward {
                path: "/cl-ows",
                body: b"hello",
            },
        ),
        (
            "CL with leading zeros",
            post("/s/cl-zeros", "Content-Length: 005\r\n", "hello"),
            Forward {
                path: "/cl-zeros",
                body: b"hello",
            },
        ),
        // Chunk sizes and lines.
        (
            "chunk size negative",
            smuggle("Transfer-Encoding: chunked\r\n", "-1\r\nx\r\n0\r\n\r\n"),
            Reject(400),
        ),
        (
            "chunk size 0x prefix",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "0x5\r\nhello\r\n0\r\n\r\n",
            ),
            Reject(400),
        ),
        (
            "chunk size hex garbage",
            smuggle("Transfer-Encoding: chunked\r\n", "5g\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        (
            "chunk size with leading space",
            smuggle("Transfer-Encoding: chunked\r\n", " 5\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        (
            "chunk size overflowing u64",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "10000000000000005\r\nhello\r\n0\r\n\r\n",
            ),
            Reject(400),
        ),
        (
            "chunk size above i64::MAX (negative when signed)",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
            Reject(400),
        ),
        (
            "chunk size i64::MAX, over the body limit",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "7fffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
            Reject(413),
        ),
        (
            "chunk size just over the body limit",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "100001\r\nhello\r\n0\r\n\r\n",
            ),
            Reject(413),
        ),
        (
            "chunk size empty",
            smuggle("Transfer-Encoding: chunked\r\n", "\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        (
            "chunk data longer than its size",
            smuggle("Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        (
            "chunk lines with bare LF",
            smuggle("Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n"),
            Reject(400),
        ),
        (
            "chunk line with bare CR",
            smuggle("Transfer-Encoding: chunked\r\n", "5\rhello\r\n0\r\n\r\n"),
            Reject(400),
        ),
        (
            "chunk extension with bare LF",
            smuggle(
                "Transfer-Encoding: chunked\r\n",
                "5;a=b\nhello\r\n0\r\n\r\n",
            ),
            Reject(400),
        ),
        (
            "chunk extensions",
            post(
                "/s/ext",
                "Transfer-Encoding: chunked\r\n",
                "5;name=value;flag\r\nhello\r\n0;last=1\r\n\r\n",
            ),
            Forward {
                path: "/ext",
                body: b"hello",
            },
        ),
        (
            "chunk extension with quoted string",
            post(
                "/s/ext-q",
                "Transfer-Encoding: chunked\r\n",
                "5;n=\"v w\"\r\nhello\r\n0\r\n\r\n",
            ),
            Forward {
                path: "/ext-q",
                body: b"hello",
            },
        ),
        (
            "chunk size upper-case hex with leading zeros",
            post(
                "/s/hex",
                "Transfer-Encoding: chunked\r\n",
                "000A\r\n0123456789\r\n0\r\n\r\n",
            ),
            Forward {
                path: "/hex",
                body: b"0123456789",
            },
        ),
        (
            "chunked with trailers",
            post(
                "/s/trailer",
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            ),
            Forward {
                path: "/trailer",
                body: b"hello",
            },
        ),
        // Line endings in the head.
        (
            "head with bare LF line endings",
            b"POST /s/lf HTTP/1.1\nHost: gateway.test\nContent-Length: 5\n\nhello".to_vec(),
            Forward {
                path: "/lf",
                body: b"hello",
            },
        ),
        (
            "bare CR in the request line",
            format!("GET /s/x HTTP/1.1\rHost: a\r\n\r\n{SMUGGLED}").into_bytes(),
            Reject(400),
        ),
        (
            "bare CR inside a header line",
            format!(
                "GET /s/x HTTP/1.1\r\nHost: a\r\nX-A: b\rContent-Length: 5\r\n\r\nhello{SMUGGLED}"
            )
            .into_bytes(),
            Reject(400),
        ),
        // Bytes in header names and values.
        (
            "NUL in a header name",
            smuggle("X-A\0b: c\r\nContent-Length: 0\r\n", ""),
            Reject(400),
        ),
        (
            "NUL in a header value",
            smuggle("X-Nul: a\0b\r\nContent-Length: 0\r\n", ""),
            Reject(400),
        ),
        (
            "control byte in a header value",
            smuggle("X-Ctl: a\x01b\r\nContent-Length: 0\r\n", ""),
            Reject(400),
        ),
        (
            "DEL in a header name",
            smuggle("X-A\x7fb: c\r\nContent-Length: 0\r\n", ""),
            Reject(400),
        ),
        (
            "space in a header name",
            smuggle("X A: c\r\nContent-Length: 0\r\n", ""),
            Reject(400),
        ),
        (
            "space before colon",
            smuggle("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        (
            "tab before colon",
            smuggle("Content-Length\t: 5\r\n", "hello"),
            Reject(400),
        ),
        (
            "empty header name",
            smuggle(": c\r\nContent-Length: 0\r\n", ""),
            Reject(400),
        ),
        (
            "obs-fold",
            format!(
                "GET /s/x HTTP/1.1\r\nHost: gateway.test\r\nX-Folded: a\r\n b\r\n\r\n{SMUGGLED}"
            )
            .into_bytes(),
            Reject(400),
        ),
        (
            "obs-fold of Transfer-Encoding",
            smuggle("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"),
            Reject(400),
        ),
        (
            "header line starting with whitespace",
            format!("GET /s/x HTTP/1.1\r\n Host: gateway.test\r\n\r\n{SMUGGLED}").into_bytes(),
            Reject(400),
        ),
        // Request targets and request lines.
        (
            "absolute-form target routes by its path",
            b"GET http://other.example/s/abs?q=1 HTTP/1.1\r\nHost: gateway.test\r\n\r\n".to_vec(),
            Forward {
                path: "/abs?q=1",
                body: b"",
            },
        ),
        (
            "absolute-form without a path",
            b"GET http://other.example HTTP/1.1\r\nHost: gateway.test\r\n\r\n".to_vec(),
            Reject(404),
        ),
        (
            "absolute-form with a query and no path",
            b"GET http://other.example?x=1 HTTP/1.1\r\nHost: gateway.test\r\n\r\n".to_vec(),
            Reject(400),
        ),
        (
            "absolute-form with an empty authority",
            b"GET http:///s/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n".to_vec(),
            Reject(400),
        ),
        (
            "asterisk-form OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nHost: gateway.test\r\n\r\n".to_vec(),
            Reject(400),
        ),
        (
            "asterisk-form with GET",
            b"GET * HTTP/1.1\r\nHost: gateway.test\r\n\r\n".to_vec(),
            Reject(400),
        ),
        (
            "authority-form CONNECT",
            b"CONNECT gateway.test:443 HTTP/1.1\r\nHost: gateway.test\r\n\r\n".to_vec(),
            Reject(405),
        ),
        (
            "relative target",
            b"GET s/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n".to_vec(),
            Reject(400),
        ),
        (
            "oversized request target",
            format!("GET {long_target} HTTP/1.1\r\nHost: gateway.test\r\n\r\n").into_bytes(),
            Reject(414),
        ),
        (
            "two spaces in the request line",
            b"GET  /s/x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            Reject(400),
        ),
        (
            "unknown HTTP version",
            b"GET /s/x HTTP/2.0\r\nHost: a\r\n\r\n".to_vec(),
            Reject(505),
        ),
        (
            "missing Host",
            b"GET /s/x HTTP/1.1\r\nX-A: b\r\n\r\n".to_vec(),
            Reject(400),
        ),
        (
            "Host twice",
            b"GET /s/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            Reject(400),
        ),
        (
            "unknown Expect",
            smuggle("Expect: 200-ok\r\nContent-Length: 0\r\n", ""),
            Reject(417),
        ),
    ]
}

#[test]
fn conformance_and_smuggling_table() {
    let sb = Sandbox::new("conformance");
    let up = ScriptedUpstream::always(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    sb.write_conf(&conf_with(serde_json::json!({
        "pipegate": { "max_header_bytes": 16384, "max_request_body_bytes": 1048576 }
    })));
    sb.write_api("s", &keyless_api("s", "/s/", &up.url()));
    let gw = Gateway::start(&sb);

    let mut forwarded = 0;
    let mut wrong = Vec::new();
    for (name, raw, expect) in rows() {
        let mut c = gw.client();
        let warm = c.request(&req("GET", "/hello").to_bytes());
        assert_eq!(warm.status, 200, "{name}: warm-up request failed: {warm:?}");
        c.send(&raw);
        let r = c
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("{name}: no response: {e}"));
        let wanted = match expect {
            Expect::Reject(s) => s,
            Expect::Forward { .. } => 200,
        };
        if r.status != wanted {
            // Collected, so one run lists every row that disagrees.
            wrong.push(format!("{name}: expected {wanted}, got {r:?}"));
            if matches!(expect, Expect::Forward { .. }) && r.status == 200 {
                forwarded += 1;
            }
            continue;
        }
        match expect {
            Expect::Reject(status) => {
                r.assert_tyk_error(status);
                if status == 404 {
                    // Not a framing problem: the connection stays usable.
                    let again = c.request(&req("GET", "/hello").to_bytes());
                    assert_eq!(again.status, 200, "{name}: follow-up request: {again:?}");
                } else {
                    c.assert_closed();
                }
            }
            Expect::Forward { path, body } => {
                forwarded += 1;
                assert!(
                    up.wait_for_requests(forwarded, IO_TIMEOUT),
                    "{name}: the upstream did not get the request"
                );
                let got = up.requests().last().cloned().expect("a recorded request");
                assert_eq!(got.target, path, "{name}: {got:?}");
                assert_eq!(got.body, body, "{name}: {got:?}");
                // The connection is still in sync: a second request on it is answered.
                let again = c.request(&req("GET", "/hello").to_bytes());
                assert_eq!(again.status, 200, "{name}: follow-up request: {again:?}");
            }
        }
        assert!(
            gw.panics().is_empty(),
            "{name}: the gateway panicked: {:?}",
            gw.panics()
        );
    }
    assert!(
        wrong.is_empty(),
        "rows answered wrongly:\n{}",
        wrong.join("\n")
    );
    let seen = up.requests();
    assert!(
        seen.iter().all(|r| !r.target.contains("smuggled")),
        "a smuggled request reached the upstream: {seen:?}"
    );
    assert_eq!(
        seen.len(),
        forwarded,
        "only the accepted rows reach the upstream: {seen:?}"
    );
}
