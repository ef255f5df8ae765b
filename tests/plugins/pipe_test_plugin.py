#!/usr/bin/env python3
"""A pipegate pipe plugin with switchable misbehaviour, driven by tests/pipe_client.rs.

Usage: pipe_test_plugin.py MODE

Modes that misbehave do so only in the first process: they create the file named by
$PIPEGATE_TEST_MARKER and misbehave only if it did not exist yet, so the restarted child behaves.

  echo       answer every dispatch (replies to each batch of frames are shuffled: out of order)
  crash      exit(3) abruptly after $CRASH_AFTER dispatches (default 50)
  hang       answer hello, then never reply
  garbage    print text to stdout at the first dispatch
  oversized  send a frame header announcing 2 GiB at the first dispatch
  unknown_id send a reply for an id never issued before every real reply
  nohello    never answer hello (always)
  badhello   answer hello with protocol 2 (always)
  exit7      write a line to stderr and exit with status 7 before hello (always)

Echo replies carry, in request.set_headers: X-Echo-Url (the request url), X-Pid, X-Bundles (api ids
loaded, comma separated) and X-Events (events received). Hook names change the answer:
"error" -> {"error": "boom"}; "slow:MS" -> sleep MS milliseconds before answering;
"full" -> echo the whole object back.
"""
import os
import random
import select
import struct
import sys
import time

import msgpack

MODE = sys.argv[1] if len(sys.argv) > 1 else "echo"
MARKER = os.environ.get("PIPEGATE_TEST_MARKER", "")


def first_run():
    """True (once) in the first process of a test, so misbehaviour is not repeated after restart."""
    if not MARKER:
        return True
    try:
        fd = os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


MISBEHAVE = MODE in ("crash", "hang", "garbage", "oversized") and first_run()
buf = bytearray()


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def write_all(data):
    view = memoryview(data)
    while view:
        n = os.write(1, view)
        view = view[n:]


def frame(msg):
    body = msgpack.packb(msg, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def read_some(block):
    """Reads what is available (waiting for some if block). Returns False at EOF."""
    if not block:
        ready, _, _ = select.select([0], [], [], 0)
        if not ready:
            return True
    data = os.read(0, 1 << 20)
    if not data:
        return False
    buf.extend(data)
    return True


def take_frames():
    out = []
    while len(buf) >= 4:
        (n,) = struct.unpack_from(">I", buf)
        if len(buf) < 4 + n:
            break
        out.append(msgpack.unpackb(bytes(buf[4 : 4 + n]), raw=False))
        del buf[: 4 + n]
    return out


def main():
    if MODE == "exit7":
        log("boom: missing dependency")
        sys.exit(7)
    log("pipe test plugin starting in mode %s (misbehave=%s)" % (MODE, MISBEHAVE))
    bundles = []
    events = 0
    dispatches = 0
    crash_after = int(os.environ.get("CRASH_AFTER", "50"))
    hooks = os.environ.get("TEST_HOOKS")
    while True:
        if not read_some(block=True):
            return
        while read_some(block=False) and len(buf) < (1 << 20):
            # Drain whatever else is already there so a batch holds many requests.
            if not select.select([0], [], [], 0)[0]:
                break
        out = []
        for msg in take_frames():
            kind = msg.get("type")
            if kind == "hello":
                if MODE == "nohello":
                    continue
                hello = {"type": "hello", "id": 0, "protocol": 2 if MODE == "badhello" else 1,
                         "name": "pipe-test-plugin"}
                if hooks is not None:
                    hello["hooks"] = [h for h in hooks.split(",") if h]
                if os.environ.get("TEST_MMAP") == "1":
                    hello["mmap"] = True
                out.append(hello)
            elif kind == "event":
                events += 1
            elif kind == "load_bundle":
                if msg.get("api_id") == "reject":
                    out.append({"id": msg["id"], "error": "bundle rejected"})
                else:
                    bundles.append(msg["api_id"])
                    out.append({"id": msg["id"]})
            elif kind == "dispatch":
                dispatches += 1
                if MISBEHAVE:
                    if MODE == "crash" and dispatches >= crash_after:
                        # Send what is answered so far: the crash leaves calls both answered
                        # and pending.
                        write_all(b"".join(frame(m) for m in out))
                        log("crashing on purpose after %d dispatches" % dispatches)
                        os._exit(3)
                    if MODE == "hang":
                        continue
                    if MODE == "garbage":
                        write_all(b"debug: got a request\n")
                        continue
                    if MODE == "oversized":
                        write_all(struct.pack(">I", 0x7FFFFFFF) + b"xxxx")
                        continue
                obj = msg.get("object") or {}
                name = obj.get("hook_name") or ""
                if name == "error":
                    out.append({"id": msg["id"], "error": "boom"})
                    continue
                if name.startswith("slow:"):
                    time.sleep(int(name[5:]) / 1000.0)
                if name == "full":
                    out.append({"id": msg["id"], "object": obj})
                    continue
                req = obj.get("request") or {}
                headers = {
                    "X-Echo-Url": req.get("url", ""),
                    "X-Pid": str(os.getpid()),
                    "X-Bundles": ",".join(bundles),
                    "X-Events": str(events),
                }
                if MODE == "unknown_id":
                    out.append({"id": msg["id"] + 10**9, "object": {}})
                out.append({"id": msg["id"], "object": {"request": {"set_headers": headers}}})
        if MODE != "unknown_id":
            random.shuffle(out)
        if out:
            write_all(b"".join(frame(m) for m in out))


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
