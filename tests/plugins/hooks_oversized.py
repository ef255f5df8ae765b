#!/usr/bin/env python3
"""A plugin that answers hello and normal hooks correctly, then sends frames over the gateway's
max_frame_bytes for a few hook names (tests/hooks_pipe.rs checks the gateway refuses them, answers
5xx and restarts it).

Hooks:
- Ok: sets X-Plugin-Pid (this process's pid) on the request.
- HugeLength: only a length prefix announcing ~2 GiB, then nothing: the gateway must act on the
  prefix alone instead of waiting for (or allocating) the payload.
- OverMax: a complete, valid reply frame larger than max_frame_bytes (the test sets 64 KiB).
"""
import os
import struct
import sys

import msgpack

stdout = sys.stdout.buffer


def send_raw(data):
    stdout.write(data)
    stdout.flush()


def send(msg):
    data = msgpack.packb(msg, use_bin_type=True)
    send_raw(struct.pack(">I", len(data)) + data)


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = sys.stdin.buffer.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def dispatch(msg):
    name = (msg.get("object") or {}).get("hook_name", "")
    call = msg["id"]
    if name == "HugeLength":
        send_raw(struct.pack(">I", 0x7FFFFFF0))
    elif name == "OverMax":
        send({"id": call, "object": {"request": {"set_headers": {"X-Big": "x" * (256 * 1024)}}}})
    else:
        send({"id": call, "object": {"request": {"set_headers": {"X-Plugin-Pid": str(os.getpid())}}}})


def main():
    while True:
        head = read_exact(4)
        if head is None:
            return
        (n,) = struct.unpack(">I", head)
        body = read_exact(n)
        if body is None:
            return
        msg = msgpack.unpackb(body, raw=False)
        t = msg.get("type")
        if t == "hello":
            send({"id": 0, "type": "hello", "protocol": 1, "name": "oversized"})
        elif t == "dispatch":
            dispatch(msg)
        elif t == "load_bundle":
            send({"id": msg["id"]})


if __name__ == "__main__":
    main()
