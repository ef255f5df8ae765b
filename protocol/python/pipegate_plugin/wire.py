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


def decode(payload):
    """The map inside one frame's payload."""
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


class FrameReader(object):
    """Reads frames from a file descriptor in large chunks (many frames per ``read``)."""

    def __init__(self, fd, max_frame=DEFAULT_MAX_FRAME_BYTES):
        self.fd = fd
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    def frames(self, before_read=None):
        """Yield each frame payload; returns at a clean end of input.

        ``before_read`` is called each time the buffered frames are used up, just before a read
        that may block: the place to flush replies batched while handling those frames.

        Raises ProtocolError when a frame is over the limit or the input ends inside a frame.
        """
        while True:
            while True:
                frame = self._next_buffered()
                if frame is None:
                    break
                yield frame
            if before_read is not None:
                before_read()
            chunk = os.read(self.fd, _READ_CHUNK)
            if not chunk:
                pending = len(self._buf) - self._pos
                if pending:
                    raise ProtocolError(
                        "input ended in the middle of a frame (%d bytes pending)" % pending
                    )
                return
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += chunk

    def _next_buffered(self):
        avail = len(self._buf) - self._pos
        if avail < 4:
            return None
        (n,) = _LEN.unpack_from(self._buf, self._pos)
        if n > self.max_frame:
            raise ProtocolError(
                "incoming frame of %d bytes exceeds the %d byte limit; raise "
                "coprocess_options.max_frame_bytes if such bodies are expected" % (n, self.max_frame)
            )
        if avail < 4 + n:
            return None
        start = self._pos + 4
        self._pos = start + n
        return bytes(self._buf[start : self._pos])
