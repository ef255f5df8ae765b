"""Framing over a real pipe: frames split across reads, many per read, larger than a read."""

import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipegate_plugin import wire  # noqa: E402
from pipegate_plugin.wire import FrameReader, ProtocolError  # noqa: E402


def write_in_pieces(fd, data, sizes):
    """Write ``data`` to ``fd`` in pieces of the given sizes (cycled), then close it."""
    pos = i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        os.write(fd, data[pos:pos + n])
        pos += n
        i += 1
    os.close(fd)


class FrameReaderTest(unittest.TestCase):
    def read_all(self, data, sizes, max_frame=wire.DEFAULT_MAX_FRAME_BYTES):
        r, w = os.pipe()
        writer = threading.Thread(target=write_in_pieces, args=(w, data, sizes))
        writer.start()
        try:
            reads = []
            frames = list(FrameReader(r, max_frame).frames(lambda: reads.append(1)))
            return frames, len(reads)
        finally:
            writer.join()
            os.close(r)

    def test_frames_split_anywhere_and_larger_than_a_read_come_out_whole(self):
        msgs = [{"id": i, "body": b"x" * (i * 37)} for i in range(40)]
        msgs.insert(20, {"id": 99, "body": os.urandom(700 * 1024)})  # about 3 reads' worth
        data = b"".join(wire.encode(m) for m in msgs)
        for sizes in ([1, 2, 3, 5, 7], [4096], [len(data)], [300 * 1024, 3]):
            frames, _ = self.read_all(data, sizes)
            self.assertEqual([wire.decode(f) for f in frames], msgs, sizes)

    def test_before_read_runs_once_the_buffered_frames_are_used_up(self):
        data = b"".join(wire.encode({"id": i}) for i in range(10))
        frames, flushes = self.read_all(data, [len(data)])
        self.assertEqual(len(frames), 10)
        # Once before the first read, and once before each later one (at most the data's
        # read and the end of input): never once per frame.
        self.assertLessEqual(flushes, 3)

    def test_input_ending_inside_a_frame_is_a_protocol_error(self):
        data = wire.encode({"id": 1}) + wire.encode({"id": 2, "b": b"y" * 1000})[:-10]
        with self.assertRaises(ProtocolError):
            self.read_all(data, [100])

    def test_a_frame_over_the_limit_is_a_protocol_error(self):
        with self.assertRaises(ProtocolError):
            self.read_all(wire.encode({"body": b"z" * 2000}), [4096], max_frame=1000)


class EncoderTest(unittest.TestCase):
    def test_a_reused_packer_encodes_like_encode_and_survives_an_error(self):
        enc = wire.frame_encoder()
        msg = {"id": 7, "object": {"request": {"set_headers": {"X": "1"}, "raw_body": b"\x00"}}}
        self.assertEqual(enc(msg), wire.encode(msg))
        with self.assertRaises(TypeError):
            enc({"id": 8, "object": object()})
        self.assertEqual(enc(msg), wire.encode(msg))


if __name__ == "__main__":
    unittest.main()
