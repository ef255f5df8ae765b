#!/usr/bin/env python3
"""Scenario plugin for the hook integration tests, written from protocol/PROTOCOL.md alone (msgpack
only, no SDK). Each hook name is one scenario; replies go out of order from a thread pool.

Environment: SCENARIO_LOG (optional file) gets one line per dispatch "hook_type hook_name".
"""
import os
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack

out_lock = threading.Lock()
stdout = sys.stdout.buffer
log_path = os.environ.get("SCENARIO_LOG")


def send(msg):
    data = msgpack.packb(msg, use_bin_type=True)
    with out_lock:
        stdout.write(struct.pack(">I", len(data)) + data)
        stdout.flush()


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = sys.stdin.buffer.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def hook(obj):
    name = obj.get("hook_name", "")
    req = obj.get("request") or {}
    headers = req.get("headers") or {}
    if log_path:
        with open(log_path, "a") as f:
            f.write("%s %s\n" % (obj.get("hook_type"), name))
    if name == "AddHeaders":
        return {"request": {"set_headers": {"X-Pre": "1", "X-Hook-Saw-Url": req.get("url", "")},
                            "delete_headers": ["X-Remove-Me"]}}
    if name == "Params":
        return {"request": {"add_params": {"added": "yes"}, "delete_params": ["gone"]}}
    if name == "Rewrite":
        return {"request": {"url": "/rewritten/path", "method": "PUT"}}
    if name == "Body":
        return {"request": {"raw_body": b"replaced body"}}
    if name == "SeeBody":
        return {"request": {"set_headers": {"X-Body-Len": str(len(req.get("raw_body") or b"")),
                                            "X-Body-Str": req.get("body", "")[:50]}}}
    if name == "Override":
        params = req.get("params") or {}
        ro = {"headers": {"X-Foo": "Bar"}, "response_code": int(params.get("status", "200"))}
        if params.get("response_body") == "true":
            ro["response_body"] = "foobar"
        else:
            ro["response_error"] = '{"foo": "bar"}'
        if params.get("override") == "true":
            ro["override_error"] = True
        return {"request": {"return_overrides": ro}}
    if name == "Auth":
        if headers.get("Authorization") == "letmein":
            return {"session": {"rate": 100.0, "per": 1.0, "metadata": {"user": "alice"}},
                    "metadata": {"token": "letmein"}}
        if headers.get("Authorization") == "notoken":
            return {"session": {"rate": 1.0}}
        return {"request": {"return_overrides": {"response_code": 401,
                                                  "response_error": "bad key"}}}
    if name == "AfterAuth":
        session = obj.get("session") or {}
        md = session.get("metadata") or {}
        return {"request": {"set_headers": {"X-Session-Rate": str(session.get("rate")),
                                            "X-Session-User": md.get("user", "")}}}
    if name == "Resp":
        resp = obj.get("response") or {}
        rh = dict(resp.get("headers") or {})
        rh["X-Resp"] = "1"
        body = resp.get("raw_body") or b""
        return {"response": {"status_code": 201, "headers": rh,
                             "raw_body": b"wrapped:" + body}}
    if name == "Echo":
        # Out-of-order replies: sleep a little, varying by token.
        tok = headers.get("X-Echo-Token", "")
        time.sleep((hash(tok) % 5) / 1000.0)
        return {"request": {"set_headers": {"X-Plugin-Token": tok}}}
    if name == "Slow":
        time.sleep(float((req.get("params") or {}).get("sleep", "5")))
        return {}
    if name == "Crash":
        os._exit(3)
    if name == "Fail":
        raise RuntimeError("scenario failure")
    if name == "Spec":
        spec = obj.get("spec") or {}
        return {"request": {"set_headers": {"X-Api-Id": spec.get("APIID", ""),
                                            "X-Config-Data": spec.get("config_data", "")}}}
    return {}


def handle(msg):
    try:
        reply = hook(msg.get("object") or {})
        send({"id": msg["id"], "object": reply})
    except Exception as e:  # noqa: BLE001 - a plugin error is reported, not fatal
        send({"id": msg["id"], "error": str(e)})


def main():
    pool = ThreadPoolExecutor(max_workers=16)
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
            send({"id": 0, "type": "hello", "protocol": 1, "name": "scenarios"})
        elif t == "dispatch":
            pool.submit(handle, msg)
        elif t == "load_bundle":
            send({"id": msg["id"]})


if __name__ == "__main__":
    main()
