//! The request body decoders: the chunked decoder (`http::ChunkedDecoder`) in pass-through and
//! decode mode, and the Content-Length value parser.
//!
//! The first input byte picks split points, so the same body arrives in different read sizes: the
//! decoder must give the same verdict, the same number of body bytes and the same payload however
//! the bytes are split (a body whose end depends on read boundaries is a smuggling bug), and
//! pass-through mode must end the body exactly where decode mode does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipegate::http::{self, ChunkedDecoder};

/// Feeds `body` in pieces of `step` bytes; returns (bytes consumed or error, payload, done).
fn run(body: &[u8], step: usize, decode: bool) -> (Result<usize, http::ChunkError>, Vec<u8>, bool) {
    let mut dec = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut used = 0;
    let mut at = 0;
    while at < body.len() {
        let end = (at + step).min(body.len());
        let piece = &body[at..end];
        let r = if decode {
            dec.feed(piece, Some(&mut out))
        } else {
            dec.feed(piece, None)
        };
        match r {
            Ok(n) => {
                assert!(n <= piece.len());
                used += n;
                if dec.is_done() {
                    return (Ok(used), out, true);
                }
                assert_eq!(
                    n,
                    piece.len(),
                    "an unfinished body must take the whole piece"
                );
            }
            Err(e) => return (Err(e), out, false),
        }
        at = end;
    }
    (Ok(used), out, dec.is_done())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let step = (sel as usize % 17) + 1;
    let whole = run(body, body.len().max(1), true);
    let split = run(body, step, true);
    let pass = run(body, step, false);
    assert_eq!(whole.0, split.0, "verdict depends on read boundaries");
    assert_eq!(whole.2, split.2);
    if whole.0.is_ok() {
        assert_eq!(whole.1, split.1, "payload depends on read boundaries");
    }
    assert_eq!(whole.0, pass.0, "pass-through and decode disagree");
    assert!(pass.1.is_empty());
    if let Ok(n) = whole.0 {
        assert!(whole.1.len() <= n);
    }

    // Content-Length: digits only, no sign, no whitespace, no overflow.
    let cl = http::parse_content_length(body);
    let reference = if !body.is_empty() && body.iter().all(u8::is_ascii_digit) {
        std::str::from_utf8(body)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    } else {
        None
    };
    // Values longer than 19 digits are refused even when they would fit (e.g. leading zeros).
    if body.len() <= 19 {
        assert_eq!(cl, reference);
    } else {
        assert_eq!(cl, None);
    }
});
