//! Incremental chunked transfer-coding decoder.
//!
//! One decoder serves both directions of the proxy. In *pass-through* mode it only finds where the
//! chunked body ends (the bytes are forwarded verbatim, framing included), which is what lets the
//! gateway stream bodies without re-encoding them. In *decode* mode it also appends the payload bytes
//! to a buffer, for hooks that need the whole body. Parsing is strict on purpose: chunk sizes must be
//! hex without sign or overflow and every line must end in CRLF, because lenient chunk parsing is
//! the classic request-smuggling vector.

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Total trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The chunk size is not hex, is empty, or overflows 64 bits.
    BadSize,
    /// A line did not end in CRLF where the grammar needs one.
    BadLineEnding,
    /// A chunk-size or trailer line was longer than the limit.
    LineTooLong,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkError::BadSize => "invalid chunk size",
            ChunkError::BadLineEnding => "chunk line does not end in CRLF",
            ChunkError::LineTooLong => "chunk line too long",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Reading hex digits of the chunk size.
    Size,
    /// After the size: optional extensions until CR.
    Ext,
    /// Saw CR after size/ext; need LF.
    SizeLf,
    /// Inside chunk data; `remaining` bytes left.
    Data,
    /// After data: need CR.
    DataCr,
    /// After data CR: need LF.
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Saw CR in a trailer line; need LF.
    TrailerLf,
    /// Saw CR of the final empty line; need LF.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Streaming state of one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    st: St,
    size: u64,
    digits: u32,
    remaining: u64,
    line: usize,
    trailers: usize,
    announced: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        ChunkedDecoder {
            st: St::Size,
            size: 0,
            digits: 0,
            remaining: 0,
            line: 0,
            trailers: 0,
            announced: 0,
        }
    }

    /// True once the terminating empty line after the last chunk has been consumed.
    pub fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// Sum of the chunk sizes announced so far (the current chunk's whole size included, before
    /// its data has arrived), so a body limit can refuse a chunk that could never fit instead of
    /// forwarding its size line first.
    pub fn announced(&self) -> u64 {
        self.announced
    }

    /// Consumes bytes from `input`, returning how many belong to this body. Stops at the end of the
    /// body, so bytes after it (a pipelined request) are left for the caller. When `out` is given,
    /// the chunk payload is appended to it.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.st {
                St::Size => match hex_val(b) {
                    Some(v) => {
                        if self.digits >= 16 {
                            return Err(ChunkError::BadSize);
                        }
                        self.size = (self.size << 4) | v as u64;
                        self.digits += 1;
                        // Above i64::MAX a peer parsing sizes as signed numbers sees a negative
                        // size: a known smuggling vector, so such a size is never forwarded.
                        if self.size > i64::MAX as u64 {
                            return Err(ChunkError::BadSize);
                        }
                        i += 1;
                    }
                    None => {
                        if self.digits == 0 {
                            return Err(ChunkError::BadSize);
                        }
                        self.line = self.digits as usize;
                        match b {
                            b'\r' => self.st = St::SizeLf,
                            b';' | b' ' | b'\t' => self.st = St::Ext,
                            _ => return Err(ChunkError::BadSize),
                        }
                        i += 1;
                    }
                },
                St::Ext => {
                    match b {
                        b'\r' => self.st = St::SizeLf,
                        b'\n' => return Err(ChunkError::BadLineEnding),
                        _ => {
                            self.line += 1;
                            if self.line > MAX_LINE {
                                return Err(ChunkError::LineTooLong);
                            }
                        }
                    }
                    i += 1;
                }
                St::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    i += 1;
                    if self.size == 0 {
                        self.st = St::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.announced = self.announced.saturating_add(self.size);
                        self.st = St::Data;
                    }
                }
                St::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.remaining) as usize;
                    if let Some(o) = out.as_deref_mut() {
                        o.extend_from_slice(&input[i..i + take]);
                    }
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.st = St::DataCr;
                    }
                }
                St::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.st = St::DataLf;
                    i += 1;
                }
                St::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.st = St::Size;
                    self.size = 0;
                    self.digits = 0;
                    i += 1;
                }
                St::TrailerStart => {
                    match b {
                        b'\r' => self.st = St::FinalLf,
                        b'\n' => return Err(ChunkError::BadLineEnding),
                        _ => {
                            self.line = 1;
                            self.st = St::Trailer;
                        }
                    }
                    self.trailers += 1;
                    i += 1;
                }
                St::Trailer => {
                    match b {
                        b'\r' => self.st = St::TrailerLf,
                        b'\n' => return Err(ChunkError::BadLineEnding),
                        _ => self.line += 1,
                    }
                    self.trailers += 1;
                    if self.line > MAX_LINE || self.trailers > MAX_TRAILERS {
                        return Err(ChunkError::LineTooLong);
                    }
                    i += 1;
                }
                St::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.st = St::TrailerStart;
                    i += 1;
                }
                St::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.st = St::Done;
                    return Ok(i + 1);
                }
                St::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `data` as one chunk (size line, data, CRLF). Empty data writes nothing, because an empty
/// chunk would end the body.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    while n > 0 {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let n = d.feed(input, Some(&mut out))?;
        Ok((n, out, d.is_done()))
    }

    #[test]
    fn decodes_and_stops_at_end() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        let (n, out, done) = decode_all(body).unwrap();
        assert!(done);
        assert_eq!(out, b"hello world");
        assert_eq!(&body[n..], b"GET / HTTP/1.1");
    }

    #[test]
    fn sizes_above_i64_max_are_refused_and_announced_sizes_add_up() {
        // A peer reading sizes as signed 64-bit numbers would see these as negative.
        assert_eq!(
            decode_all(b"8000000000000000\r\nx"),
            Err(ChunkError::BadSize)
        );
        assert_eq!(
            decode_all(b"ffffffffffffffff\r\nx"),
            Err(ChunkError::BadSize)
        );
        let mut d = ChunkedDecoder::new();
        assert!(d.feed(b"7fffffffffffffff\r\nab", None).is_ok());
        assert_eq!(d.announced(), i64::MAX as u64);
        let mut d = ChunkedDecoder::new();
        let body = b"5\r\nhello\r\na\r\n0123456789\r\n100000\r\n";
        assert_eq!(d.feed(body, None), Ok(body.len()));
        // The third chunk counts in full as soon as its size line is read.
        assert_eq!(d.announced(), 5 + 10 + 0x100000);
    }

    #[test]
    fn byte_at_a_time_matches_whole() {
        let body = b"a\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut total = 0;
        for b in body.iter() {
            total += d.feed(std::slice::from_ref(b), Some(&mut out)).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(total, body.len());
        assert_eq!(out, b"0123456789x");
    }

    #[test]
    fn rejects_smuggling_shapes() {
        assert_eq!(decode_all(b"-5\r\n").unwrap_err(), ChunkError::BadSize);
        assert_eq!(decode_all(b"+5\r\n").unwrap_err(), ChunkError::BadSize);
        assert_eq!(decode_all(b"0x5\r\n").unwrap_err(), ChunkError::BadSize);
        assert_eq!(
            decode_all(b"10000000000000000\r\n").unwrap_err(),
            ChunkError::BadSize
        );
        assert_eq!(decode_all(b"5\nhello").unwrap_err(), ChunkError::BadSize);
        assert_eq!(
            decode_all(b"5\r\nhelloX\r\n").unwrap_err(),
            ChunkError::BadLineEnding
        );
        assert_eq!(decode_all(b"\r\n").unwrap_err(), ChunkError::BadSize);
    }

    #[test]
    fn incomplete_is_not_done() {
        let (n, out, done) = decode_all(b"5\r\nhel").unwrap();
        assert_eq!(n, 6);
        assert_eq!(out, b"hel");
        assert!(!done);
    }

    #[test]
    fn write_chunk_roundtrips() {
        let mut enc = Vec::new();
        write_chunk(&mut enc, &[7u8; 300]);
        write_chunk(&mut enc, b"");
        enc.extend_from_slice(b"0\r\n\r\n");
        let (n, out, done) = decode_all(&enc).unwrap();
        assert!(done);
        assert_eq!(n, enc.len());
        assert_eq!(out, vec![7u8; 300]);
    }
}
