'use strict';
// Framing for pipegate's pipe protocol v1: a 4-byte big-endian length, then one MessagePack map.
// Bodies travel as MessagePack bin (Uint8Array/Buffer), text as str.

const { encode, decode } = require('@msgpack/msgpack');

const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024;

/** The byte stream cannot be trusted any more (oversized or truncated frame). */
class ProtocolError extends Error {}

/** One frame (length prefix included) holding `msg`. */
function encodeFrame(msg) {
  const body = encode(msg);
  const out = Buffer.allocUnsafe(4 + body.byteLength);
  out.writeUInt32BE(body.byteLength, 0);
  out.set(body, 4);
  return out;
}

/** The map inside one frame's payload. */
function decodeFrame(payload) {
  return decode(payload);
}

/**
 * Splits a byte stream into frame payloads. Chunks are kept as they arrive and joined only when a
 * frame spans several of them, so a large body arriving in many chunks is copied once.
 */
class FrameDecoder {
  constructor(maxFrame = DEFAULT_MAX_FRAME_BYTES) {
    this.maxFrame = maxFrame;
    this.chunks = [];
    this.length = 0;
  }

  /** Add bytes; returns every complete frame payload now available (may be none). */
  push(chunk) {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.length += chunk.length;
    }
    const frames = [];
    while (this.length >= 4) {
      const n = this._peekLength();
      if (n > this.maxFrame) {
        throw new ProtocolError(
          `incoming frame of ${n} bytes exceeds the ${this.maxFrame} byte limit; raise ` +
            'coprocess_options.max_frame_bytes if such bodies are expected',
        );
      }
      if (this.length < 4 + n) break;
      frames.push(this._take(4 + n).subarray(4));
    }
    return frames;
  }

  /** Bytes received but not yet part of a complete frame. */
  get pending() {
    return this.length;
  }

  _peekLength() {
    const first = this.chunks[0];
    if (first.length >= 4) return first.readUInt32BE(0);
    return this._take(4, true).readUInt32BE(0);
  }

  _take(k, peek = false) {
    const first = this.chunks[0];
    let out;
    if (first.length >= k) {
      out = first.subarray(0, k);
      if (!peek) {
        if (first.length === k) this.chunks.shift();
        else this.chunks[0] = first.subarray(k);
      }
    } else {
      out = Buffer.allocUnsafe(k);
      let filled = 0;
      let i = 0;
      while (filled < k) {
        const c = this.chunks[i];
        const n = Math.min(c.length, k - filled);
        c.copy(out, filled, 0, n);
        filled += n;
        i += 1;
      }
      if (!peek) {
        // Drop the fully used chunks, trim the partly used one.
        let left = k;
        while (left > 0) {
          const c = this.chunks[0];
          if (c.length <= left) {
            left -= c.length;
            this.chunks.shift();
          } else {
            this.chunks[0] = c.subarray(left);
            left = 0;
          }
        }
      }
    }
    if (!peek) this.length -= k;
    return out;
  }
}

module.exports = {
  DEFAULT_MAX_FRAME_BYTES,
  ProtocolError,
  encodeFrame,
  decodeFrame,
  FrameDecoder,
};
