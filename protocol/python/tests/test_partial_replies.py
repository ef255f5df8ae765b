"""Partial replies (only what a hook changed) against whole replies, in-process.

The runner answers with only the fields a hook changed, found through what the message views
record (objects.Changes) rather than by diffing a copy of the whole object. These tests run many
kinds of hooks both ways and check that the gateway ends up with the same object either way
(PROTOCOL.md section 5: a present field replaces, an absent one is unchanged). A change the
records missed would leave the old value in place and fail here.
"""

import copy
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipegate_plugin.objects import (  # noqa: E402
    AccessDefinition,
    MiniRequestObject,
    Object,
    ResponseObject,
    ReturnOverrides,
    SessionState,
    TykCoProcessRequest,
    clean,
)
from pipegate_plugin.runner import HookError, run_hook  # noqa: E402
from tyk.decorators import Hook  # noqa: E402

REQUEST = {
    "headers": {"Host": "api.example.com", "User-Agent": "wrk", "X-Del": "1"},
    "set_headers": {},
    "delete_headers": [],
    "body": "abc",
    "url": "/hook/?q=1",
    "params": {"q": "1"},
    "add_params": {},
    "extended_params": {},
    "delete_params": [],
    "return_overrides": {"response_code": -1},
    "method": "GET",
    "request_uri": "/hook/?q=1",
    "scheme": "http",
    "raw_body": b"abc",
}
SESSION = {
    "rate": 10.0,
    "per": 1.0,
    "quota_max": -1,
    "metadata": {"m": "x"},
    "access_rights": {"api1": {"api_id": "api1", "api_name": "A", "versions": ["Default"],
                               "allowed_urls": []}},
    "apply_policies": ["p1"],
    "basic_auth_data": {"password": "", "hash": ""},
    "org_id": "o",
}
RESPONSE = {
    "status_code": 200,
    "raw_body": b"body",
    "body": "body",
    "headers": {"Content-Type": "text/plain"},
    "multivalue_headers": [{"key": "Content-Type", "values": ["text/plain"]}],
}


def obj(hook_type, session=True, response=False):
    o = {"hook_type": hook_type, "hook_name": "h", "request": REQUEST,
         "metadata": {"token": "k"} if session else {}, "spec": {"APIID": "a"}}
    if session:
        o["session"] = SESSION
    if response:
        o["response"] = RESPONSE
    return copy.deepcopy(o)


# Objects each kind of hook is run against: with and without a session, and a bare one.
THREE = [obj("Pre", session=False), obj("Post"), {"hook_type": "Pre", "spec": {}}]
FOUR = [obj("CustomKeyCheck", session=False), obj("PostKeyAuth")]
FIVE = [obj("Response", response=True), obj("Response", session=False, response=True),
        {"hook_type": "Response", "spec": {}}]


# --- hooks: each touches the objects a different way ---------------------------------------------

def add_header(request, session, spec):
    request.add_header("X-Hook", "1")
    return request, session


def noop(request, session, spec):
    return request, session


def returns_none(request, session, spec):
    request.delete_header("X-Del")
    request.add_param("p", "1")
    request.delete_param("q")


def reads_only(request, session, spec):
    request.get_header("user-agent")
    len(request.object.headers), request.headers, request.object.url
    # (Reading an absent map or list field creates it, as protobuf does: that would be a change.)
    session.rate, session.access_rights["api1"].versions, session.metadata
    request.object.HasField("url")
    return request, session


def headers_map(request, session, spec):
    request.object.headers["X-New"] = "v"
    return request, session


def scalars(request, session, spec):
    request.object.url = "/other"
    request.object.method = "POST"
    request.object.raw_body = "text"  # coerced to bytes
    return request, session


def same_values(request, session, spec):
    request.object.url = request.object.url
    request.object.set_headers = {}
    session.rate = session.rate
    return request, session


def nested_overrides(request, session, spec):
    ro = request.object.return_overrides
    ro.response_code = 403
    ro.headers["X-Why"] = 5  # coerced to "5"
    return request, session


def replace_overrides(request, session, spec):
    request.object.return_overrides = ReturnOverrides(response_code=200, response_body="hi")
    return request, session


def deletes(request, session, spec):
    del request.object.url
    request.object.ClearField("method")
    del session.rate
    return request, session


def unknown_field(request, session, spec):
    request.object.raw_body_file = {"path": "/tmp/x", "len": 3}
    return request, session


def to_dict(request, session, spec):
    d = request.object.to_dict()
    d["url"] = "/via-dict"
    d.setdefault("set_headers", {})["X-D"] = "1"
    session.to_dict()["rate"] = 77.0
    return request, session


def touched_then_escaped(request, session, spec):
    request.object.set_headers["A"] = "1"
    request.object.url = "/first"
    d = request.object._d
    d["url"] = "/second"
    d["method"] = "PUT"
    request.object.delete_headers.append("Z")
    return request, session


def copy_from(request, session, spec):
    new = MiniRequestObject()
    new.CopyFrom(request.object)  # shares the maps with the original
    new.set_headers["X-C"] = "1"
    return TykCoProcessRequest(new), session


def copy_into_and_merge(request, session, spec):
    request.object.CopyFrom(MiniRequestObject(url="/o", set_headers={"Q": "1"}))
    request.object.MergeFrom({"set_headers": {"M": "1"}, "delete_headers": ["D"]})
    return request, session


def new_objects(request, session, spec):
    return {"url": "/dict", "headers": {"Host": "x"}}, SessionState(rate=1)


def second_view(request, session, spec):
    v = MiniRequestObject(request.object)
    v.set_headers["V"] = "2"
    SessionState(session).quota_max = 7
    return request, session


def shallow_copy(request, session, spec):
    c = copy.copy(request.object)  # the same dict under another view
    c.url = "/copied"
    copy.deepcopy(session).rate = 1  # a separate copy: no change
    return request, session


def stale_container(request, session, spec):
    sh = request.object.set_headers
    sh["A"] = "1"
    request.object.set_headers = {"B": "2"}
    sh["C"] = "3"
    return request, session


def session_nested(request, session, spec):
    session.access_rights["api1"].versions.append("v2")
    session.access_rights["new"] = AccessDefinition(api_id="new", versions=("a",))
    session.basic_auth_data.password = "p"
    session.monitor.trigger_limits.append(80)
    session.metadata["k"] = "v"
    return request, session


def auth_ok(request, session, metadata, spec):
    session.rate = 100
    metadata["token"] = "t"
    return request, session, metadata


def auth_new_metadata(request, session, metadata, spec):
    return request, session, {"token": "n", "x": 1}


def auth_refuses(request, session, metadata, spec):
    request.object.return_overrides.response_code = 401
    return request, session, metadata


def auth_in_place(request, session, metadata, spec):
    metadata["a"] = "b"


def response_changes(request, response, session, metadata, spec):
    response.headers["X-R"] = "1"
    response.raw_body = b"new"
    response.status_code = 201
    return response


def response_in_place(request, response, session, metadata, spec):
    response.multivalue_headers.add(key="X-M", values=["a", "b"])
    metadata["x"] = "y"
    request.add_header("Q", "1")


def response_noop(request, response, session, metadata, spec):
    response.raw_body = response.raw_body
    return response


def response_new(request, response, session, metadata, spec):
    return ResponseObject(status_code=202, raw_body=b"n")


def response_to_dict(request, response, session, metadata, spec):
    d = response.to_dict()
    d["status_code"] = 500
    d.setdefault("headers", {})["Z"] = "z"
    return response


HOOKS = [(Hook(f), THREE) for f in (
    add_header, noop, returns_none, reads_only, headers_map, scalars, same_values,
    nested_overrides, replace_overrides, deletes, unknown_field, to_dict, touched_then_escaped,
    copy_from, copy_into_and_merge, new_objects, second_view, shallow_copy, stale_container,
    session_nested,
)] + [(Hook(f), FOUR) for f in (
    auth_ok, auth_new_metadata, auth_refuses, auth_in_place,
)] + [(Hook(f), FIVE) for f in (
    response_changes, response_in_place, response_noop, response_new, response_to_dict,
)]


def applied(original, reply):
    """What the gateway ends up with after ``reply``: request and response fields replace
    one by one, session and metadata replace whole; absent means unchanged."""
    out = {}
    for part, cls in (("request", MiniRequestObject), ("response", ResponseObject)):
        now = clean(cls, original.get(part) or {})
        now.update(reply.get(part) or {})
        out[part] = now
    out["session"] = reply.get("session", clean(SessionState, original.get("session") or {}))
    out["metadata"] = reply.get(
        "metadata", clean(Object, {"metadata": original.get("metadata") or {}})["metadata"])
    return out


class PartialReplyTest(unittest.TestCase):
    def test_partial_and_whole_replies_leave_the_gateway_with_the_same_object(self):
        for hook, objects in HOOKS:
            for original in objects:
                with self.subTest(hook=hook.name, hook_type=original["hook_type"],
                                  session="session" in original):
                    whole = run_hook(hook, copy.deepcopy(original), partial=False)
                    partial = run_hook(hook, copy.deepcopy(original), partial=True)
                    self.assertEqual(applied(original, partial), applied(original, whole))

    def test_a_hook_that_changes_nothing_gets_an_empty_object(self):
        for f in (noop, reads_only, same_values):
            self.assertEqual(run_hook(Hook(f), obj("Post"), partial=True), {}, f.__name__)
        self.assertEqual(run_hook(Hook(response_noop), obj("Response", response=True), True), {})

    def test_only_the_changed_fields_are_sent(self):
        self.assertEqual(run_hook(Hook(add_header), obj("Pre", session=False), True),
                         {"request": {"set_headers": {"X-Hook": "1"}}})
        self.assertEqual(run_hook(Hook(nested_overrides), obj("Post"), True),
                         {"request": {"return_overrides": {"response_code": 403,
                                                           "headers": {"X-Why": "5"}}}})

    def test_changes_deep_inside_the_session_are_seen(self):
        reply = run_hook(Hook(session_nested), obj("Post"), True)
        session = reply["session"]  # sent whole, as the gateway installs it whole
        self.assertEqual(session["access_rights"]["api1"]["versions"], ["Default", "v2"])
        self.assertEqual(session["access_rights"]["new"]["versions"], ["a"])
        self.assertEqual(session["basic_auth_data"]["password"], "p")
        self.assertEqual(session["monitor"]["trigger_limits"], [80.0])
        self.assertNotIn("request", reply)

    def test_changes_through_the_raw_dict_are_seen(self):
        reply = run_hook(Hook(to_dict), obj("Post"), True)
        self.assertEqual(reply["request"], {"url": "/via-dict", "set_headers": {"X-D": "1"}})
        self.assertEqual(reply["session"]["rate"], 77.0)
        # Recorded before the escape, changed after it: compared with the value it arrived with.
        reply = run_hook(Hook(touched_then_escaped), obj("Pre", session=False), True)
        self.assertEqual(reply["request"], {"set_headers": {"A": "1"}, "url": "/second",
                                            "method": "PUT", "delete_headers": ["Z"]})

    def test_a_copy_sharing_the_maps_is_compared_with_the_request_as_it_arrived(self):
        reply = run_hook(Hook(copy_from), obj("Pre", session=False), True)
        self.assertEqual(reply, {"request": {"set_headers": {"X-C": "1"}}})

    def test_a_shallow_copy_is_the_same_request(self):
        reply = run_hook(Hook(shallow_copy), obj("Post"), True)
        self.assertEqual(reply, {"request": {"url": "/copied"}})

    def test_deleted_fields_are_not_sent(self):
        reply = run_hook(Hook(deletes), obj("Post"), True)
        self.assertNotIn("request", reply)
        self.assertNotIn("rate", reply["session"])  # the session itself changed: sent whole

    def test_errors_are_unchanged(self):
        def bad(request, session, spec):
            return "x"
        with self.assertRaises(HookError):
            run_hook(Hook(bad), obj("Pre"), True)


if __name__ == "__main__":
    unittest.main()
