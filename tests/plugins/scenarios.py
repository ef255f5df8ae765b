#!/usr/bin/env python3
"""Scenario plugin for the hook integration tests, written from protocol/PROTOCOL.md alone (msgpack
only, no SDK). Each hook name is one scenario; replies go out of order from a thread pool.

Environment: SCENARIO_LOG (optional file) gets one line per dispatch "hook_type hook_name".
Query parameters steer some scenarios (Override: status, response_body, override; Slow and Freeze:
sleep seconds).
"""
import json
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
                                            "X-Config-Data": spec.get("config_data", ""),
                                            "X-Org-Id": spec.get("OrgID", ""),
                                            "X-Bundle-Hash": spec.get("bundle_hash", ""),
                                            "X-Has-Config-Data": str("config_data" in spec).lower(),
                                            "X-Spec-Keys": ",".join(sorted(spec))}}}
    if name == "Inspect":
        # The whole object as JSON (raw_body described, not copied) in one header, so a test can
        # check every field the gateway sent.
        return {"request": {"set_headers": {"X-Inspect": json.dumps(describe(obj), sort_keys=True)}}}
    if name == "InspectResp":
        # Response hook: the response body becomes the JSON description of the object.
        return {"response": {"raw_body": json.dumps(describe(obj), sort_keys=True).encode()}}
    if name == "BodyStrOnly":
        # Only the `body` string changes: the gateway must ignore it (raw_body is authoritative).
        return {"request": {"body": "changed through body only"}}
    if name == "BadUrl":
        return {"request": {"url": "not a request uri"}}
    if name == "NewBody":
        # Response hook changing only raw_body (Tyk's testResponseHook).
        return {"response": {"raw_body": b"newbody"}}
    if name == "EchoWhole":
        # Tyk gRPC style: the whole object comes back, with one change.
        req.setdefault("set_headers", {})["X-Whole"] = "1"
        if obj.get("response") is not None:
            obj["response"].setdefault("headers", {})["X-Whole-Resp"] = "1"
        return obj
    if name == "Noop":
        return {}
    if name == "Freeze":
        # Holds the output lock: no reply of any call goes out while it sleeps (a hung child).
        with out_lock:
            time.sleep(float((req.get("params") or {}).get("sleep", "30")))
        return {}
    if name == "SetLower":
        # Lower-case names: set_headers is canonicalized and delete_headers matches any case.
        return {"request": {"set_headers": {"x-lower-set": "v"}, "delete_headers": ["x-remove-me"]}}
    if name == "RespDrop":
        # Tyk's header sync: multivalue entries whose key is not in `headers` are dropped.
        return {"response": {"headers": {"X-Only": "1"}}}
    if name == "Inject":
        # CR/LF in a header value or name must never reach the wire as extra header lines.
        return {"request": {"set_headers": {"X-Evil": "a\r\nInjected: yes",
                                            "Bad Name\r\nInjected2": "v",
                                            "X-Fine": "fine"}}}
    if name == "InjectUrl":
        # A url carrying a request line break (Go's url parser refuses control characters).
        return {"request": {"url": "/x HTTP/1.1\r\nInjected: yes\r\nX-Tail: /y"}}
    if name == "SpaceUrl":
        # A url with a space, which Go escapes (%20) when it writes the request line.
        return {"request": {"url": "/a b"}}
    if name == "InjectResp":
        resp = obj.get("response") or {}
        rh = dict(resp.get("headers") or {})
        rh["X-Evil"] = "a\r\nInjected: yes"
        return {"response": {"headers": rh}}
    if name == "InjectOverride":
        return {"request": {"return_overrides": {"response_code": 200, "response_body": "ok",
                                                  "headers": {"X-Evil": "a\r\nInjected: yes",
                                                              "X-Fine": "fine"}}}}
    if name == "Reflect":
        # Short-circuit: answers the client directly with its own token.
        tok = headers.get("X-Echo-Token", "")
        return {"request": {"return_overrides": {"response_code": 200, "response_body": tok,
                                                  "headers": {"X-Reflected": tok}}}}
    if name == "Hijack":
        # Tries to take over routing, framing and the connection of the upstream request.
        return {"request": {"raw_body": b"12345", "set_headers": {
            "Host": "evil.example", "Content-Length": "0", "Transfer-Encoding": "chunked",
            "Connection": "close, X-Legit", "Expect": "100-continue", "Upgrade": "h2c",
            "Keep-Alive": "timeout=1", "Te": "trailers", "Trailer": "X-T",
            "Proxy-Connection": "close", "X-Legit": "yes"}}}
    if name == "HijackOverride":
        return {"request": {"return_overrides": {"response_code": 200, "response_body": "short",
                                                  "headers": {"Content-Length": "999",
                                                              "Transfer-Encoding": "chunked",
                                                              "Connection": "close",
                                                              "Upgrade": "h2c",
                                                              "Keep-Alive": "timeout=1",
                                                              "X-Legit": "yes"}}}}
    if name == "HijackResp":
        return {"response": {"status_code": 200, "raw_body": b"resp",
                             "headers": {"Content-Length": "999", "Transfer-Encoding": "chunked",
                                         "Connection": "close", "Upgrade": "h2c",
                                         "X-Legit": "yes"}}}
    if name == "CloseStdout":
        # Fault: the child closes its stdout but stays alive (and keeps reading stdin).
        with out_lock:
            os.close(1)
        time.sleep(3600)
        return {}
    if name == "WrongId":
        # Fault: first a reply to an id nobody asked for, then a second reply to an earlier
        # call that was already answered, then the real reply (the gateway must route only
        # that one, to this request).
        tok = headers.get("X-Echo-Token", "")
        wrong = {"request": {"set_headers": {"X-Plugin-Token": "wrong-" + tok}}}
        send({"id": current.id + 1000000007, "object": wrong})
        if answered:
            send({"id": answered[-1], "object": wrong})
        return {"request": {"set_headers": {"X-Plugin-Token": tok}}}
    if name == "Pid":
        return {"request": {"set_headers": {"X-Plugin-Pid": str(os.getpid())}}}
    return {}


def describe(obj):
    """A JSON-able copy of `obj`: bytes become {"bin": len} (so the type is visible too)."""
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [describe(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return {"bin": len(obj), "text": obj.decode("utf-8", "replace")[:200]}
    return obj


answered = []
current = threading.local()


def handle(msg):
    try:
        current.id = msg["id"]
        reply = hook(msg.get("object") or {})
        send({"id": msg["id"], "object": reply})
        answered.append(msg["id"])
        del answered[:-8]
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
        elif t == "event" and log_path:
            with open(log_path, "a") as f:
                f.write("event %s\n" % msg.get("payload", ""))


if __name__ == "__main__":
    main()
