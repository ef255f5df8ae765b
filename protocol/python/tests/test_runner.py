"""End-to-end tests: start ``python3 -m pipegate_plugin`` as a child and speak the pipe protocol.

Run from the repository root::

    python3 -m unittest discover -s protocol/python/tests

The runner is started from the source tree (PYTHONPATH), so installing the package is not needed.
"""

import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)
SAMPLE = os.path.join(HERE, "sample_plugin.py")
EXAMPLE = os.path.join(PKG_ROOT, "examples", "tyk_style_plugin.py")
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def frame(msg):
    body = msgpack.packb(msg, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class Child(object):
    """The runner as a child process, with a reader thread so receives can time out."""

    def __init__(self, *args, env=None):
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = PKG_ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipegate_plugin"] + list(args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=full_env, cwd=PKG_ROOT,
        )
        self.replies = queue.Queue()
        self.stderr_lines = []
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_stdout(self):
        out = self.proc.stdout
        while True:
            head = out.read(4)
            if len(head) < 4:
                self.replies.put(None)
                return
            (n,) = struct.unpack(">I", head)
            self.replies.put(msgpack.unpackb(out.read(n), raw=False))

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode("utf-8", "replace"))

    def send(self, msg):
        self.proc.stdin.write(frame(msg))
        self.proc.stdin.flush()

    def recv(self, timeout=10):
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no reply within %ss; stderr:\n%s"
                                 % (timeout, "".join(self.stderr_lines)))

    def hello(self):
        self.send({"type": "hello", "id": 0, "protocol": 1, "gateway": "pipegate/test",
                   "max_frame_bytes": 1 << 20})
        return self.recv()

    def close(self, timeout=10):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for t in self._threads:
                t.join(5)
            self.proc.stdout.close()
            self.proc.stderr.close()


def request(**overrides):
    req = {
        "headers": {"Host": "example.com", "Authorization": "letmein", "X-Remove-Me": "x"},
        "set_headers": {},
        "delete_headers": [],
        "body": "hello",
        "url": "/api/path?a=1&gone=2",
        "params": {"a": "1", "gone": "2"},
        "add_params": {},
        "extended_params": {},
        "delete_params": [],
        "return_overrides": {"response_code": -1, "response_error": "", "headers": {},
                             "override_error": False, "response_body": ""},
        "method": "GET",
        "request_uri": "/api/path?a=1&gone=2",
        "scheme": "http",
        "raw_body": b"hello",
    }
    req.update(overrides)
    return req


def dispatch(mid, hook_name, hook_type="Pre", spec=None, **fields):
    obj = {
        "hook_type": hook_type,
        "hook_name": hook_name,
        "request": request(),
        "metadata": {},
        "spec": spec or {"APIID": "api1", "OrgID": "org1", "bundle_hash": EMPTY_MD5},
    }
    obj.update(fields)
    return {"type": "dispatch", "id": mid, "object": obj}


class RunnerTestCase(unittest.TestCase):
    args = (SAMPLE,)

    def setUp(self):
        self.child = Child(*self.args)
        self.addCleanup(self.child.close)
        self.hello_reply = self.child.hello()

    def call(self, mid, hook_name, **kw):
        self.child.send(dispatch(mid, hook_name, **kw))
        reply = self.child.recv()
        self.assertEqual(reply["id"], mid)
        return reply


class HelloTest(RunnerTestCase):
    def test_hello_lists_the_command_line_hooks(self):
        h = self.hello_reply
        self.assertEqual(h["type"], "hello")
        self.assertEqual(h["id"], 0)
        self.assertEqual(h["protocol"], 1)
        self.assertEqual(h["name"], "pipegate-python")
        for name in ("PreAddHeader", "AuthCheck", "Response", "LegacyPre"):
            self.assertIn(name, h["hooks"])
        self.assertNotIn("on_event", h["hooks"], "event handlers are not hooks")

    def test_hello_without_modules_omits_hooks(self):
        child = Child("--name", "bundles-only")
        self.addCleanup(child.close)
        h = child.hello()
        self.assertEqual(h["name"], "bundles-only")
        self.assertNotIn("hooks", h)

    def test_any_hook_flag_omits_hooks(self):
        child = Child("--any-hook", SAMPLE)
        self.addCleanup(child.close)
        self.assertNotIn("hooks", child.hello())


class HookArityTest(RunnerTestCase):
    def test_three_argument_pre_hook_mutates_the_request(self):
        reply = self.call(1, "PreAddHeader")
        req = reply["object"]["request"]
        self.assertEqual(req["set_headers"], {"X-Pre": "1", "X-Url": "/api/path?a=1&gone=2"})
        self.assertEqual(req["delete_headers"], ["X-Remove-Me"])
        self.assertEqual(req["add_params"], {"added": "yes"})
        self.assertEqual(req["delete_params"], ["gone"])
        # Replies are partial (PROTOCOL.md section 5): what the hook did not touch is not sent.
        for unchanged in ("return_overrides", "headers", "url", "method", "raw_body"):
            self.assertNotIn(unchanged, req)
        self.assertEqual(set(reply["object"]), {"request"}, "no session in, none out for pre hooks")

    def test_raw_body_goes_back_as_msgpack_bin(self):
        reply = self.call(2, "PreBody")
        # Replies are decoded with raw=False: a MessagePack str would come back as str, only a
        # bin comes back as bytes.
        body = reply["object"]["request"]["raw_body"]
        self.assertIsInstance(body, bytes)
        self.assertEqual(body, b"HELLO\x00\xff")
        self.assertNotIn("body", reply["object"]["request"], "the unchanged str body stays home")

    def test_return_overrides(self):
        ro = self.call(3, "PreDeny")["object"]["request"]["return_overrides"]
        self.assertEqual(ro["response_code"], 403)
        self.assertEqual(ro["response_error"], "denied by plugin")
        self.assertEqual(ro["headers"], {"X-Why": "test"})

    def test_four_argument_auth_hook_installs_session_and_token(self):
        reply = self.call(4, "AuthCheck", hook_type="CustomKeyCheck")
        obj = reply["object"]
        self.assertEqual(obj["metadata"], {"token": "letmein"})
        session = obj["session"]
        self.assertIsInstance(session["rate"], float)
        self.assertEqual(session["rate"], 100.0)
        self.assertEqual(session["per"], 1.0)
        self.assertEqual(session["quota_max"], 10)
        self.assertIsInstance(session["quota_max"], int)
        self.assertEqual(session["metadata"], {"token": "letmein"}, "metadata merged into session")
        self.assertEqual(session["access_rights"]["api1"]["api_id"], "api1")
        self.assertEqual(session["access_rights"]["api1"]["versions"], ["Default"])
        self.assertEqual(session["apply_policies"], ["pol1"])

    def test_four_argument_auth_hook_refusal_sends_no_session(self):
        self.child.send(dispatch(5, "AuthCheck", hook_type="CustomKeyCheck"))
        self.child.recv()
        msg = dispatch(6, "AuthCheck", hook_type="CustomKeyCheck")
        msg["object"]["request"]["headers"]["Authorization"] = "wrong"
        self.child.send(msg)
        obj = self.child.recv()["object"]
        self.assertEqual(obj["request"]["return_overrides"]["response_code"], 401)
        self.assertNotIn("session", obj)
        self.assertNotIn("token", obj["metadata"])

    def test_session_round_trips_through_a_post_hook(self):
        session = {"rate": 10, "per": 60.0, "quota_max": 1000.0, "org_id": "org1",
                   "metadata": {"nested": "{\"k\":\"v\"}"}, "tags": ["a"],
                   "basic_auth_data": {"password": "", "hash": ""}, "jwt_data": {"secret": ""},
                   "monitor": {"trigger_limits": [80, 90.5]}, "future_field": "kept"}
        spec = {"APIID": "api1", "OrgID": "org1", "bundle_hash": EMPTY_MD5,
                "config_data": json.dumps({"greeting": "hi"})}
        obj = self.call(7, "PostSession", hook_type="Post", session=session, spec=spec,
                        metadata={"nested": "{\"k\":\"v\"}"})["object"]
        sh = obj["request"]["set_headers"]
        self.assertEqual(sh["X-Nested"], "v")
        self.assertEqual(sh["X-Rate"], "10")  # an int on the wire reads back as sent
        self.assertEqual(sh["X-Quota"], "1000.0")
        self.assertEqual(sh["X-Config"], "hi")
        out = obj["session"]
        self.assertEqual(out["rate"], 5.0)
        self.assertIsInstance(out["rate"], float)
        self.assertEqual(out["quota_max"], 1000)
        self.assertIsInstance(out["quota_max"], int, "int64 fields go back as ints")
        self.assertEqual(out["monitor"]["trigger_limits"], [80.0, 90.5])
        self.assertEqual(out["tags"], ["a"])
        self.assertEqual(out["org_id"], "org1")
        self.assertEqual(out["future_field"], "kept", "unknown keys round-trip")

    def test_five_argument_response_hook(self):
        response = {"status_code": 200, "raw_body": b"old", "body": "old",
                    "headers": {"Content-Type": "text/plain"},
                    "multivalue_headers": [{"key": "Content-Type", "values": ["text/plain"]}]}
        obj = self.call(8, "Response", hook_type="Response", response=response,
                        session={})["object"]
        r = obj["response"]
        self.assertEqual(r["raw_body"], b"newbody")
        self.assertEqual(r["status_code"], 201)
        self.assertEqual(r["headers"], {"Content-Type": "text/plain", "X-Resp": "1"})
        self.assertEqual(r["multivalue_headers"],
                         [{"key": "Content-Type", "values": ["text/plain"]}])

    def test_response_hook_returning_none_keeps_in_place_changes(self):
        response = {"status_code": 200, "raw_body": b"x", "headers": {}}
        r = self.call(9, "ResponseInPlace", hook_type="Response", response=response)["object"]
        self.assertEqual(r["response"]["headers"], {"X-In-Place": "yes"})
        self.assertNotIn("raw_body", r["response"], "an unchanged body is not sent back")
        self.assertNotIn("status_code", r["response"])

    def test_legacy_pre_decorator_works(self):
        sh = self.call(10, "LegacyPre")["object"]["request"]["set_headers"]
        self.assertEqual(sh, {"X-Legacy": "1"})

    def test_in_memory_store(self):
        sh = self.call(11, "Store")["object"]["request"]["set_headers"]
        self.assertEqual(sh, {"X-Stored": "v"})


class ErrorTest(RunnerTestCase):
    def test_exception_becomes_error_reply_and_runner_keeps_serving(self):
        reply = self.call(1, "Explode")
        self.assertNotIn("object", reply)
        self.assertIn("boom from the plugin", reply["error"])
        self.assertIn("ValueError", reply["error"])
        self.assertEqual(self.call(2, "Fast")["object"]["request"]["set_headers"], {"X-Fast": "1"})
        deadline = time.time() + 5
        while time.time() < deadline and not any("Traceback" in l for l in self.child.stderr_lines):
            time.sleep(0.05)
        self.assertTrue(any("Traceback" in l for l in self.child.stderr_lines),
                        "the traceback goes to stderr")

    def test_unknown_hook(self):
        self.assertIn("'NoSuchHook' is not defined", self.call(3, "NoSuchHook")["error"])

    def test_wrong_arity(self):
        self.assertIn("takes 2 arguments", self.call(4, "WrongArity")["error"])

    def test_bad_return_value(self):
        self.assertIn("must return (request, session)", self.call(5, "BadReturn")["error"])

    def test_unknown_message_type_with_id_gets_error(self):
        self.child.send({"type": "frobnicate", "id": 77})
        reply = self.child.recv()
        self.assertEqual(reply["id"], 77)
        self.assertIn("frobnicate", reply["error"])

    def test_stray_print_goes_to_stderr(self):
        self.call(6, "PreAddHeader")
        deadline = time.time() + 5
        while time.time() < deadline:
            if any("stray print" in l for l in self.child.stderr_lines):
                break
            time.sleep(0.05)
        self.assertTrue(any("stray print" in l for l in self.child.stderr_lines))


class ConcurrencyTest(RunnerTestCase):
    def test_slow_hook_does_not_block_a_fast_one(self):
        # Calls run inline. A call over 1 ms gets the hook's next calls watched; a watched call
        # that is slow because it waited (here: a sleep) moves the hook to the pool.
        warm_spec = {"APIID": "api1", "OrgID": "o", "bundle_hash": EMPTY_MD5, "sleep": "0.05"}
        self.call(9, "Slow", spec=warm_spec)
        self.assertFalse(any("'Slow' took over" in l for l in self.child.stderr_lines))
        self.call(10, "Slow", spec=warm_spec)
        self.assertTrue(any("'Slow' took over" in l for l in self.child.stderr_lines)
                        or self._wait_for_stderr("'Slow' took over"))
        slow_spec = {"APIID": "api1", "OrgID": "o", "bundle_hash": EMPTY_MD5, "sleep": "1.5"}
        start = time.time()
        # One write, so both frames arrive in the same read: the hard case for a thread pool.
        self.child.proc.stdin.write(frame(dispatch(1, "Slow", spec=slow_spec))
                                    + frame(dispatch(2, "Fast")))
        self.child.proc.stdin.flush()
        first = self.child.recv()
        first_at = time.time() - start
        second = self.child.recv()
        self.assertEqual(first["id"], 2, "the fast reply overtakes the slow one")
        self.assertLess(first_at, 1.0)
        self.assertEqual(second["id"], 1)
        self.assertEqual(second["object"]["request"]["set_headers"], {"X-Slow": "1"})

    def _wait_for_stderr(self, text):
        deadline = time.time() + 5
        while time.time() < deadline:
            if any(text in l for l in self.child.stderr_lines):
                return True
            time.sleep(0.05)
        return False

    def test_a_hook_slow_without_waiting_stays_inline(self):
        # Busy on the CPU for 5 ms, never blocking: what preemption on a loaded box looks like
        # too. The pool could not run it faster (one GIL), so it is not moved there.
        for i in range(3):
            self.call(20 + i, "Busy")
        self.call(30, "Fast")
        self.assertEqual(self.child.close(), 0)  # all of stderr read
        self.assertFalse(any("took over" in l for l in self.child.stderr_lines),
                         "".join(self.child.stderr_lines))

    def test_fast_hooks_stay_inline_and_keep_order(self):
        # Inline calls are answered in arrival order, all in one batch.
        n = 50
        self.child.proc.stdin.write(b"".join(frame(dispatch(i, "Fast")) for i in range(1, n + 1)))
        self.child.proc.stdin.flush()
        ids = [self.child.recv()["id"] for _ in range(n)]
        self.assertEqual(ids, list(range(1, n + 1)))
        self.assertFalse(any("took over" in l for l in self.child.stderr_lines))

    def test_one_batch_of_mixed_hooks_is_answered_in_order_with_only_the_changes(self):
        names = ["Noop", "PreDeny", "Fast", "Noop", "PreBody"] * 4
        self.child.proc.stdin.write(
            b"".join(frame(dispatch(i + 1, n)) for i, n in enumerate(names)))
        self.child.proc.stdin.flush()
        for i, name in enumerate(names):
            r = self.child.recv()
            self.assertEqual(r["id"], i + 1)
            obj = r["object"]
            if name == "Noop":
                self.assertEqual(obj, {}, "a hook that changes nothing sends nothing back")
            elif name == "PreDeny":
                self.assertEqual(list(obj), ["request"])
                self.assertEqual(obj["request"]["return_overrides"]["response_code"], 403)
            elif name == "Fast":
                self.assertEqual(obj, {"request": {"set_headers": {"X-Fast": "1"}}})
            else:
                self.assertEqual(obj, {"request": {"raw_body": b"HELLO\x00\xff"}})

    def test_many_pipelined_requests_all_answered(self):
        n = 300
        self.child.proc.stdin.write(b"".join(frame(dispatch(i, "Fast")) for i in range(1, n + 1)))
        self.child.proc.stdin.flush()
        ids = set()
        for _ in range(n):
            r = self.child.recv()
            self.assertEqual(r["object"]["request"]["set_headers"], {"X-Fast": "1"})
            ids.add(r["id"])
        self.assertEqual(ids, set(range(1, n + 1)))


BUNDLE_MIDDLEWARE = """
from tyk.decorators import *
from helpers import VALUE

@Hook
def BundleHook(request, session, spec):
    request.add_header("X-Bundle", VALUE)
    return request, session
"""


class BundleTest(RunnerTestCase):
    def setUp(self):
        super(BundleTest, self).setUp()
        self.tmp = tempfile.mkdtemp(prefix="pipegate-bundles-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def make_bundle(self, name, files, file_list=None):
        path = os.path.join(self.tmp, name)
        os.makedirs(path)
        for fname, text in files.items():
            with open(os.path.join(path, fname), "w") as f:
                f.write(text)
        manifest = {"file_list": file_list if file_list is not None else sorted(files),
                    "custom_middleware": {"driver": "python",
                                          "pre": [{"name": "BundleHook"}]}}
        with open(os.path.join(path, "manifest.json"), "w") as f:
            json.dump(manifest, f)
        return path, manifest

    def load(self, mid, bundle_hash, api_id, path, manifest):
        self.child.send({"type": "load_bundle", "id": mid, "api_id": api_id,
                         "bundle_hash": bundle_hash, "path": path, "manifest": manifest})
        reply = self.child.recv()
        self.assertEqual(reply["id"], mid)
        return reply

    def test_hooks_are_looked_up_by_bundle_hash(self):
        a = self.make_bundle("a", {"middleware.py": BUNDLE_MIDDLEWARE,
                                   "helpers.py": "VALUE = 'from-a'\n"})
        b = self.make_bundle("b", {"middleware.py": BUNDLE_MIDDLEWARE,
                                   "helpers.py": "VALUE = 'from-b'\n"})
        loaded = self.load(1, "hash-a", "api-a", *a)
        self.assertNotIn("error", loaded)
        self.assertEqual(loaded["hooks"], ["BundleHook"])
        self.assertNotIn("error", self.load(2, "hash-b", "api-b", *b))

        def header_for(mid, bundle_hash, api_id):
            spec = {"APIID": api_id, "OrgID": "o", "bundle_hash": bundle_hash}
            obj = self.call(mid, "BundleHook", spec=spec)["object"]
            return obj["request"]["set_headers"]["X-Bundle"]

        self.assertEqual(header_for(3, "hash-a", "api-a"), "from-a")
        self.assertEqual(header_for(4, "hash-b", "api-b"), "from-b",
                         "each bundle gets its own helpers module")
        # A bundle hook is not visible to other APIs...
        spec = {"APIID": "other", "OrgID": "o", "bundle_hash": EMPTY_MD5}
        self.assertIn("error", self.call(5, "BundleHook", spec=spec))
        # ...while command-line hooks serve bundle APIs too.
        spec = {"APIID": "api-a", "OrgID": "o", "bundle_hash": "hash-a"}
        obj = self.call(6, "Fast", spec=spec)["object"]
        self.assertEqual(obj["request"]["set_headers"], {"X-Fast": "1"})

    def test_single_file_bundle_without_middleware_py(self):
        path, manifest = self.make_bundle(
            "single", {"plugin.py": BUNDLE_MIDDLEWARE.replace("from helpers import VALUE",
                                                              "VALUE = 'single'")})
        self.assertNotIn("error", self.load(1, "hash-s", "api-s", path, manifest))
        spec = {"APIID": "api-s", "OrgID": "o", "bundle_hash": "hash-s"}
        obj = self.call(2, "BundleHook", spec=spec)["object"]
        self.assertEqual(obj["request"]["set_headers"]["X-Bundle"], "single")

    def test_manifest_is_read_from_disk_when_not_sent(self):
        path, _ = self.make_bundle(
            "disk", {"middleware.py": BUNDLE_MIDDLEWARE.replace("from helpers import VALUE",
                                                                "VALUE = 'disk'")})
        self.child.send({"type": "load_bundle", "id": 1, "api_id": "api-d",
                         "bundle_hash": "hash-d", "path": path})
        self.assertNotIn("error", self.child.recv())
        spec = {"APIID": "api-d", "OrgID": "o", "bundle_hash": "hash-d"}
        obj = self.call(2, "BundleHook", spec=spec)["object"]
        self.assertEqual(obj["request"]["set_headers"]["X-Bundle"], "disk")

    def test_broken_bundle_gets_an_error_reply(self):
        path, manifest = self.make_bundle("bad", {"middleware.py": "def broken(:\n"})
        reply = self.load(1, "hash-bad", "api-bad", path, manifest)
        self.assertIn("SyntaxError", reply["error"])
        # The runner is still alive.
        self.assertIn("object", self.call(2, "Fast"))

    def test_missing_bundle_directory_gets_an_error_reply(self):
        reply = self.load(1, "hash-x", "api-x", os.path.join(self.tmp, "nope"), {})
        self.assertIn("does not exist", reply["error"])


class EventTest(unittest.TestCase):
    def test_event_calls_the_handler_and_gets_no_reply(self):
        tmp = tempfile.mkdtemp(prefix="pipegate-event-")
        self.addCleanup(shutil.rmtree, tmp, True)
        out = os.path.join(tmp, "event.json")
        child = Child(SAMPLE, env={"PIPEGATE_TEST_EVENT_FILE": out})
        self.addCleanup(child.close)
        child.hello()
        payload = {"message": {"Type": "AuthFailure", "Meta": {}, "TimeStamp": "now"},
                   "handler_name": "on_event", "spec": {"APIID": "api1", "OrgID": "o"}}
        child.send({"type": "event", "payload": json.dumps(payload)})
        # An unknown handler is ignored.
        child.send({"type": "event", "payload": json.dumps(dict(payload, handler_name="nah"))})
        child.send(dispatch(1, "Fast"))
        self.assertEqual(child.recv()["id"], 1, "events get no reply")
        deadline = time.time() + 5
        while time.time() < deadline and not os.path.exists(out):
            time.sleep(0.05)
        time.sleep(0.1)
        with open(out) as f:
            self.assertEqual(json.load(f), {"type": "AuthFailure", "api": "api1",
                                            "handler": "on_event"})


class LifecycleTest(unittest.TestCase):
    def test_eof_on_stdin_exits_zero(self):
        child = Child(SAMPLE)
        child.hello()
        self.assertEqual(child.close(timeout=10), 0)

    def test_eof_before_hello_exits_zero(self):
        self.assertEqual(Child().close(timeout=10), 0)

    def test_oversized_frame_is_a_protocol_error(self):
        child = Child(SAMPLE)
        child.hello()  # limit is 1 MiB
        child.proc.stdin.write(struct.pack(">I", (1 << 20) + 1))
        child.proc.stdin.flush()
        self.assertEqual(child.proc.wait(10), 2)
        child.close()

    def test_unloadable_module_fails_fast(self):
        child = Child("/nonexistent/plugin.py")
        self.assertEqual(child.proc.wait(10), 1)
        child.close()
        self.assertTrue(any("cannot load plugin" in l for l in child.stderr_lines))

    def test_example_plugin_serves_its_three_hooks(self):
        child = Child(EXAMPLE)
        self.addCleanup(child.close)
        self.assertEqual(sorted(child.hello()["hooks"]),
                         ["MyAuthCheck", "MyPreHook", "MyResponseHook"])
        child.send(dispatch(1, "MyPreHook"))
        obj = child.recv()["object"]
        self.assertEqual(obj["request"]["set_headers"], {"X-Pipegate-Example": "pre"})
        child.send(dispatch(2, "MyAuthCheck", hook_type="CustomKeyCheck"))
        obj = child.recv()["object"]
        self.assertEqual((obj["session"]["rate"], obj["session"]["per"]), (100.0, 1.0))
        self.assertEqual(obj["metadata"]["token"], "letmein")
        child.send(dispatch(3, "MyResponseHook", hook_type="Response",
                            response={"status_code": 200, "raw_body": b"", "headers": {}}))
        obj = child.recv()["object"]
        self.assertEqual(obj["response"]["headers"], {"X-Pipegate-Example-Response": "1"})


if __name__ == "__main__":
    unittest.main()
