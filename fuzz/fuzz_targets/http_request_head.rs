//! The request head parser (`http::parse_request`) and the upstream response head parser
//! (`http::parse_response`) on arbitrary bytes.
//!
//! Besides "never panics", it checks what the worker relies on: every span lies inside the
//! buffer, the head length is within the input and the limit, and a partial head stays partial
//! (or becomes an error) as bytes are removed from its end, so a head split across reads is parsed
//! the same way as in one read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipegate::http::{self, BodyKind, RequestHead, ResponseHead, Span};

const MAX_HEAD: usize = 8192;

fn in_buf(s: Span, len: usize) -> bool {
    s.start <= s.end && s.end <= len
}

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::default();
    match http::parse_request(data, &mut head, MAX_HEAD) {
        Ok(true) => {
            assert!(head.head_len <= data.len() && head.head_len <= MAX_HEAD);
            assert!(in_buf(head.method, data.len()));
            assert!(in_buf(head.target, data.len()));
            assert!(head.path_end >= head.target.start && head.path_end <= head.target.end);
            for h in &head.headers {
                assert!(in_buf(h.name, head.head_len));
                assert!(in_buf(h.value, head.head_len));
            }
            if let Some(hs) = head.host {
                assert!(in_buf(hs, head.head_len));
            }
            let _ = head.path(data);
            let _ = head.query(data);
            let _ = head.is_idempotent(data);
            if head.http10 {
                assert!(head.body != BodyKind::Chunked);
            }
            // The same head delivered one byte short is incomplete, never a different request.
            let mut again = RequestHead::default();
            if let Ok(done) = http::parse_request(&data[..head.head_len - 1], &mut again, MAX_HEAD)
            {
                assert!(!done, "a head one byte short parsed as complete");
            }
        }
        Ok(false) => assert!(data.len() < MAX_HEAD),
        Err(e) => assert!((400..=505).contains(&e.status)),
    }

    let mut resp = ResponseHead::default();
    if let Ok(true) = http::parse_response(data, &mut resp, MAX_HEAD) {
        assert!(resp.head_len <= data.len());
        for h in &resp.headers {
            assert!(in_buf(h.name, resp.head_len) && in_buf(h.value, resp.head_len));
        }
        let kind = resp.body_kind(false);
        if resp.chunked {
            assert!(matches!(kind, BodyKind::Chunked | BodyKind::None));
        }
        assert_eq!(resp.body_kind(true), BodyKind::None);
    }
});
