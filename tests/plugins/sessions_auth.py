#!/usr/bin/env python3
"""Auth plugin for tests/sessions_gateway.rs, written from protocol/PROTOCOL.md alone (raw
MessagePack frames, no SDK). Every auth_check call is logged, so a test can count how often the
gateway really called the plugin (the ID extractor cache must skip it).

Environment: SESSIONS_LOG (file) gets one line per dispatch: "<hook_name> <Authorization value>".

Hooks (hook_name):
- "PyAuth": Tyk's Python auth test (coprocess_python_test.go). Authorization "valid_token" gets a
  session with rate 1000 per 1 s, quota_max 1, quota_renewal_rate 60 and metadata token
  "valid_token"; anything else gets an empty session and no token (the gateway answers 403).
- "OnceAuth": Tyk's Python ID-extractor test: succeeds only on its first call (a counter), with an
  id_extractor_deadline one minute ahead; later calls return no session.
- "JsonAuth": a session chosen by the test. Authorization missing or starting with "bad" gets no
  session. Otherwise the session is the JSON in the X-Session header ({} if absent), metadata
  token is the Authorization value, and X-Cache-Seconds (if present) sets id_extractor_deadline to
  now + that many seconds.
- anything else (including the empty name Tyk gives an auth_check without a name): no session.
"""
import json
import os
import struct
import sys
import threading
import time

import msgpack

out_lock = threading.Lock()
log_lock = threading.Lock()
stdout = sys.stdout.buffer
log_path = os.environ.get("SESSIONS_LOG")
once_calls = {"n": 0}


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


def log_call(name, auth):
    if not log_path:
        return
    with log_lock:
        with open(log_path, "a") as f:
            f.write("%s %s\n" % (name, auth))


def hook(obj):
    name = obj.get("hook_name", "")
    headers = (obj.get("request") or {}).get("headers") or {}
    auth = headers.get("Authorization", "")
    log_call(name, auth)
    if name == "PyAuth":
        if auth == "valid_token":
            return {"session": {"rate": 1000.0, "per": 1.0, "quota_max": 1,
                                "quota_renewal_rate": 60},
                    "metadata": {"token": "valid_token"}}
        return {"session": {}}
    if name == "OnceAuth":
        once_calls["n"] += 1
        if once_calls["n"] == 1:
            return {"session": {"rate": 100.0, "per": 1.0,
                                "id_extractor_deadline": int(time.time()) + 60},
                    "metadata": {"token": auth}}
        return {}
    if name == "JsonAuth":
        if not auth or auth.startswith("bad"):
            return {}
        session = json.loads(headers.get("X-Session") or "{}")
        cache = headers.get("X-Cache-Seconds")
        if cache:
            session["id_extractor_deadline"] = int(time.time()) + int(cache)
        return {"session": session, "metadata": {"token": auth}}
    return {}


def handle(msg):
    try:
        send({"id": msg["id"], "object": hook(msg.get("object") or {})})
    except Exception as e:  # noqa: BLE001 - reported to the gateway, not fatal
        send({"id": msg["id"], "error": str(e)})


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
            send({"id": 0, "type": "hello", "protocol": 1, "name": "sessions"})
        elif t == "dispatch":
            # One call at a time, in order: the OnceAuth counter and the log stay exact.
            handle(msg)
        elif t == "load_bundle":
            send({"id": msg["id"]})


if __name__ == "__main__":
    main()
