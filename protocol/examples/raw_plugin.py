#!/usr/bin/env python3
"""A complete pipegate pipe plugin using only the msgpack package (protocol/PROTOCOL.md).

It adds the header X-Raw-Plugin: 1 to every request it is asked about. One request at a time:
fine for a demo; a real plugin should read ahead and answer many requests concurrently.
"""
import struct
import sys

import msgpack

stdin, stdout = sys.stdin.buffer, sys.stdout.buffer


def send(msg):
    body = msgpack.packb(msg, use_bin_type=True)
    stdout.write(struct.pack(">I", len(body)) + body)
    stdout.flush()


while True:
    head = stdin.read(4)
    if len(head) < 4:  # EOF on stdin: the gateway asks us to stop
        break
    msg = msgpack.unpackb(stdin.read(struct.unpack(">I", head)[0]), raw=False)
    kind = msg.get("type")
    if kind == "hello":
        send({"type": "hello", "id": 0, "protocol": 1, "name": "raw-plugin"})
    elif kind == "dispatch":
        send({"id": msg["id"], "object": {"request": {"set_headers": {"X-Raw-Plugin": "1"}}}})
    elif kind == "load_bundle":
        send({"id": msg["id"]})
    # "event" needs no answer; unknown types are ignored for forward compatibility.
