//! The pipe protocol's frame decoder and the decoding of what a plugin child sends: arbitrary
//! bytes are split into frames (in pieces chosen by the first byte, as pipe reads would deliver
//! them) and every frame is decoded as a child message. Frames must come out the same however
//! the stream is split, and a too-large length must fail the decoder for good.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipegate::coprocess::frame::{decode_child_message, FrameDecoder};

const MAX: usize = 1 << 16;

fn frames(stream: &[u8], step: usize) -> (Vec<Vec<u8>>, bool) {
    let mut dec = FrameDecoder::new(MAX);
    let mut out = Vec::new();
    for piece in stream.chunks(step.max(1)) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.len() <= MAX);
                    out.push(f.to_vec());
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(
                        dec.next_frame().is_err(),
                        "a failed decoder must stay failed"
                    );
                    return (out, true);
                }
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };
    let whole = frames(stream, stream.len());
    let split = frames(stream, sel as usize % 13 + 1);
    assert_eq!(whole, split, "frames depend on read boundaries");
    for f in &whole.0 {
        let _ = decode_child_message(f);
    }
    // The whole input as one frame payload, too (most of the decoder's work is here).
    let _ = decode_child_message(stream);
});
