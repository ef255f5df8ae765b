//! Framing: a 4-byte big-endian length, then that many bytes holding one MessagePack map.
//!
//! [`FrameReader`] reads the pipe in large chunks and hands out every complete frame that arrived,
//! so a burst of pipelined requests costs one `read` call, not two per frame. [`encode_frame`]
//! appends to a caller-owned buffer so many replies can go out in one `write`.

use std::io::{self, Read, Write};

use serde::Serialize;

/// The frame size limit when the gateway's hello does not say otherwise (64 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

const HEADER_LEN: usize = 4;
const READ_CHUNK: usize = 256 * 1024;

/// Serialize `msg` as a MessagePack map (string keys) and append it to `out` as one frame.
pub fn encode_frame<T: Serialize + ?Sized>(out: &mut Vec<u8>, msg: &T) -> io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = rmp_serde::encode::write_named(out, msg) {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("could not encode a frame as MessagePack: {e}"),
        ));
    }
    let len = out.len() - start - HEADER_LEN;
    let len = u32::try_from(len).map_err(|_| {
        out.truncate(start);
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than the 4 GiB the length prefix can express"),
        )
    })?;
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Write one frame holding `msg` and flush; handy for tests and simple tools.
pub fn write_frame<W: Write, T: Serialize + ?Sized>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut buf = Vec::new();
    encode_frame(&mut buf, msg)?;
    w.write_all(&buf)?;
    w.flush()
}

/// Reads frames from a byte stream, buffering so that many frames come from one `read`.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
}

impl<R: Read> FrameReader<R> {
    /// Wrap `inner`; frames longer than `max_frame` bytes are a protocol error.
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader {
            inner,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Change the frame size limit (the gateway announces its own in hello).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The next frame already in the buffer, without reading: `Ok(None)` when the buffer holds no
    /// complete frame. The returned slice is valid until the next call on this reader.
    pub fn next_buffered(&mut self) -> io::Result<Option<&[u8]>> {
        let avail = self.end - self.start;
        if avail < HEADER_LEN {
            return Ok(None);
        }
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > self.max_frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "incoming frame of {len} bytes exceeds the {} byte limit; the stream is \
                     unusable, so the plugin stops (raise coprocess_options.max_frame_bytes if \
                     such bodies are expected)",
                    self.max_frame
                ),
            ));
        }
        if avail < HEADER_LEN + len {
            return Ok(None);
        }
        let from = self.start + HEADER_LEN;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// Read more bytes from the stream into the buffer. Returns `Ok(false)` at a clean end of
    /// stream (no partial frame pending) and an `UnexpectedEof` error when the stream ends in the
    /// middle of a frame.
    pub fn fill(&mut self) -> io::Result<bool> {
        self.make_room();
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    if self.start == self.end {
                        return Ok(false);
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "input ended in the middle of a frame ({} bytes pending)",
                            self.end - self.start
                        ),
                    ));
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Read until one whole frame is available and return it; `Ok(None)` at a clean end of stream.
    pub fn read_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(Some(frame.to_vec()));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Move pending bytes to the front and grow the buffer so the pending frame (whose length may
    /// already be known) fits, leaving room for at least one more chunk.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut need = self.end + READ_CHUNK;
        if self.end >= HEADER_LEN {
            let mut len_bytes = [0u8; HEADER_LEN];
            len_bytes.copy_from_slice(&self.buf[..HEADER_LEN]);
            let frame_total = HEADER_LEN + u32::from_be_bytes(len_bytes) as usize;
            need = need.max(frame_total);
        }
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn frame_of(map: &BTreeMap<&str, u32>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, map).unwrap();
        out
    }

    #[test]
    fn encoded_frame_has_big_endian_length_and_map_body() {
        let mut m = BTreeMap::new();
        m.insert("id", 7u32);
        let bytes = frame_of(&m);
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        assert_eq!(len, bytes.len() - 4);
        // fixmap with one entry, then fixstr "id", then positive fixint 7.
        assert_eq!(&bytes[4..], &[0x81, 0xa2, b'i', b'd', 0x07]);
    }

    /// A reader that hands out at most `step` bytes per call, to exercise frames split across reads.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut data = Vec::new();
        for i in 0..50u32 {
            let mut m = BTreeMap::new();
            m.insert("id", i);
            data.extend(frame_of(&m));
        }
        let mut r = FrameReader::new(
            Trickle {
                data,
                pos: 0,
                step: 3,
            },
            1024,
        );
        for i in 0..50u32 {
            let f = r.read_frame().unwrap().unwrap();
            let m: BTreeMap<String, u32> = rmp_serde::from_slice(&f).unwrap();
            assert_eq!(m["id"], i);
        }
        assert!(r.read_frame().unwrap().is_none());
    }

    #[test]
    fn frame_larger_than_the_read_chunk_is_read_whole() {
        let big = "x".repeat(READ_CHUNK * 3 + 17);
        let mut m = BTreeMap::new();
        m.insert("body", big.clone());
        let mut data = Vec::new();
        encode_frame(&mut data, &m).unwrap();
        let mut r = FrameReader::new(io::Cursor::new(data), DEFAULT_MAX_FRAME_BYTES);
        let f = r.read_frame().unwrap().unwrap();
        let back: BTreeMap<String, String> = rmp_serde::from_slice(&f).unwrap();
        assert_eq!(back["body"], big);
    }

    #[test]
    fn oversized_frame_is_an_error() {
        let mut data = vec![0, 0, 1, 0]; // 256 bytes announced
        data.extend(vec![0u8; 256]);
        let mut r = FrameReader::new(io::Cursor::new(data), 255);
        let err = r.read_frame().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the 255 byte limit"));
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_an_error() {
        let data = vec![0, 0, 0, 9, 1, 2];
        let mut r = FrameReader::new(io::Cursor::new(data), 1024);
        let err = r.read_frame().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
