"""Framing for pipegate's pipe protocol v1: a 4-byte big-endian length, then one MessagePack map.

Bodies travel as MessagePack bin (``use_bin_type=True``), strings as str.
"""

import os
import struct

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024

_LEN = struct.Struct(">I")
_READ_CHUNK = 256 * 1024


class ProtocolError(Exception):
    """The byte stream cannot be trusted any more (oversized or truncated frame)."""


def _pack_default(value):
    # Wrappers from pipegate_plugin.objects, sets and other containers a plugin may leave in a dict.
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, memoryview):
        return value.tobytes()
    raise TypeError(
        "cannot send a %s to the gateway; use str, bytes, numbers, lists and dicts"
        % type(value).__name__
    )


def encode(msg):
    """One frame (length prefix included) holding ``msg``."""
    body = msgpack.packb(msg, use_bin_type=True, default=_pack_default)
    return _LEN.pack(len(body)) + body


def frame_encoder():
    """An :func:`encode` for one thread that reuses a single msgpack Packer: ``packb`` builds a
    new Packer per call, a good part of the cost of a small reply. Not thread-safe (the Packer
    keeps its buffer between calls), so each thread that encodes needs its own."""
    pack = msgpack.Packer(use_bin_type=True, default=_pack_default).pack
    prefix = _LEN.pack

    def encode_frame(msg):
        body = pack(msg)
        return prefix(len(body)) + body

    return encode_frame


def decode(payload):
    """The map inside one frame's payload."""
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


class FrameReader(object):
    """Reads frames from a file descriptor in large chunks (many frames per ``read``)."""

    def __init__(self, fd, max_frame=DEFAULT_MAX_FRAME_BYTES):
        self.fd = fd
        self.max_frame = max_frame

    def frames(self, before_read=None):
        """Yield each frame payload (bytes); returns at a clean end of input.

        ``before_read`` is called each time the buffered frames are used up, just before a read
        that may block: the place to flush replies batched while handling those frames.

        Raises ProtocolError when a frame is over the limit or the input ends inside a frame.
        """
        # The buffer is immutable bytes: a payload is one slice of it, and a read only copies
        # the partial frame left at its end (usually a few bytes) in front of the new chunk.
        buf = b""
        pos = 0
        unpack_from = _LEN.unpack_from
        while True:
            end = len(buf)
            need = 0
            while end - pos >= 4:
                (n,) = unpack_from(buf, pos)
                if n > self.max_frame:
                    raise ProtocolError(
                        "incoming frame of %d bytes exceeds the %d byte limit; raise "
                        "coprocess_options.max_frame_bytes if such bodies are expected"
                        % (n, self.max_frame)
                    )
                stop = pos + 4 + n
                if stop > end:
                    need = stop - pos
                    break
                yield buf[pos + 4 : stop]
                pos = stop
            if before_read is not None:
                before_read()
            chunk = os.read(self.fd, _READ_CHUNK)
            if not chunk:
                if end > pos:
                    raise ProtocolError(
                        "input ended in the middle of a frame (%d bytes pending)" % (end - pos)
                    )
                return
            if end == pos:
                buf = chunk
            else:
                # A frame larger than a chunk is gathered whole before one join, so a big body
                # costs one copy rather than one per chunk.
                parts = [buf[pos:], chunk]
                have = end - pos + len(chunk)
                while have < need:
                    chunk = os.read(self.fd, _READ_CHUNK)
                    if not chunk:
                        raise ProtocolError(
                            "input ended in the middle of a frame (%d bytes pending)" % have
                        )
                    parts.append(chunk)
                    have += len(chunk)
                buf = b"".join(parts)
            pos = 0
