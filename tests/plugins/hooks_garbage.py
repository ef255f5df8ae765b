#!/usr/bin/env python3
"""A plugin that answers hello and normal hooks correctly, then corrupts its stdout on purpose for a
few hook names (tests/hooks_pipe.rs checks the gateway survives, answers 5xx and restarts it).

Hooks:
- Ok: sets X-Plugin-Pid (this process's pid) on the request.
- GarbageFrame: a well-formed length prefix followed by bytes that are not MessagePack.
- GarbageText: a plain text line on stdout, as a plugin that print()s would send.
- NotAMap: a frame holding a MessagePack string instead of a map.
- BadReply: a map with the call's id whose "object" is a string (undecodable, but attributable to
  one call; the stream itself stays intact).
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
    if name == "GarbageFrame":
        junk = b"\xc1" * 16  # 0xc1 is never used in MessagePack
        send_raw(struct.pack(">I", len(junk)) + junk)
    elif name == "GarbageText":
        send_raw(b"debug: handling request\n")
    elif name == "NotAMap":
        data = msgpack.packb("reply to %d, but not a map" % call)
        send_raw(struct.pack(">I", len(data)) + data)
    elif name == "BadReply":
        send({"id": call, "object": "this should have been a map"})
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
            send({"id": 0, "type": "hello", "protocol": 1, "name": "garbage"})
        elif t == "dispatch":
            dispatch(msg)
        elif t == "load_bundle":
            send({"id": msg["id"]})


if __name__ == "__main__":
    main()
