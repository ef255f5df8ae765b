#!/usr/bin/env python3
"""A raw plugin (msgpack only, from protocol/PROTOCOL.md section 6) that announces "mmap": true and
works on large bodies through files: it reads `raw_body_file`, uppercases the body, and answers
with a file of its own (named with the pipegate-body- prefix in the same folder) for the request
hook, and inline for the response hook. It records what it received in X-Got-* headers."""
import mmap
import os
import struct
import sys

import msgpack

out = sys.stdout.buffer
inp = sys.stdin.buffer
seq = 0


def send(msg):
    data = msgpack.packb(msg, use_bin_type=True)
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()


def read_body(part):
    f = part.get("raw_body_file")
    if f:
        with open(f["path"], "rb") as fh:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return bytes(m), "file"
    return part.get("raw_body") or b"", "inline"


def hook(obj):
    global seq
    name = obj.get("hook_name")
    if name == "UpperReq":
        req = obj.get("request") or {}
        body, how = read_body(req)
        seq += 1
        path = os.path.join(os.path.dirname(req["raw_body_file"]["path"]) if how == "file" else "/dev/shm",
                            "pipegate-body-plugin-%d-%d" % (os.getpid(), seq))
        new = body.upper()
        with open(path, "wb") as fh:
            fh.write(new)
        return {"request": {"raw_body_file": {"path": path, "len": len(new)},
                            "set_headers": {"X-Got-Via": how, "X-Got-Len": str(len(body))}}}
    if name == "UpperResp":
        resp = obj.get("response") or {}
        body, how = read_body(resp)
        headers = dict(resp.get("headers") or {})
        headers["X-Resp-Got-Via"] = how
        return {"response": {"raw_body": body.upper(), "headers": headers,
                             "status_code": resp.get("status_code", 200)}}
    return {}


while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    (n,) = struct.unpack(">I", head)
    msg = msgpack.unpackb(inp.read(n), raw=False)
    if msg.get("type") == "hello":
        send({"type": "hello", "id": 0, "protocol": 1, "name": "bodyfile", "mmap": True})
    elif msg.get("type") == "dispatch":
        try:
            send({"id": msg["id"], "object": hook(msg.get("object") or {})})
        except Exception as e:  # noqa: BLE001
            send({"id": msg["id"], "error": repr(e)})
