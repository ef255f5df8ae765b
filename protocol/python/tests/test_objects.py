"""Unit tests for the protobuf-like wire objects (in-process, no child)."""

import copy
import os
import pickle
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipegate_plugin.objects import (  # noqa: E402
    MiniRequestObject,
    Object,
    ResponseObject,
    SessionState,
    TykCoProcessRequest,
    clean,
    is_empty,
)


class MessageTest(unittest.TestCase):
    def test_writes_go_straight_into_the_wire_dict(self):
        wire = {"return_overrides": {"response_code": -1}}
        req = MiniRequestObject(wire)
        req.return_overrides.response_code = 403
        req.set_headers["X"] = "y"
        req.delete_headers.append("Z")
        self.assertEqual(wire["return_overrides"]["response_code"], 403)
        self.assertEqual(wire["set_headers"], {"X": "y"})
        self.assertEqual(wire["delete_headers"], ["Z"])

    def test_absent_fields_read_as_protobuf_defaults(self):
        s = SessionState({})
        self.assertEqual((s.rate, s.quota_max, s.org_id, s.is_inactive), (0.0, 0, "", False))
        self.assertEqual(s.basic_auth_data.password, "")
        self.assertEqual(ResponseObject({}).raw_body, b"")

    def test_assignment_coerces_to_the_field_type(self):
        s = SessionState({})
        s.rate = 100
        s.quota_max = 5.0
        self.assertIsInstance(s.rate, float)
        self.assertIsInstance(s.quota_max, int)
        with self.assertRaises(ValueError):
            s.quota_max = 1.5
        r = ResponseObject({})
        r.raw_body = "text"
        self.assertEqual(r.raw_body, b"text")

    def test_message_map_creates_entries_on_access_like_protobuf(self):
        s = SessionState({})
        s.access_rights["api1"].api_id = "api1"
        s.access_rights["api1"].allowed_urls.add(url="/x", methods=["GET"])
        self.assertIn("api1", s.access_rights)
        self.assertEqual(s.to_dict()["access_rights"],
                         {"api1": {"api_id": "api1",
                                   "allowed_urls": [{"url": "/x", "methods": ["GET"]}]}})
        self.assertIsNone(s.access_rights.get("other"))

    def test_clean_makes_any_plugin_output_valid_wire_data(self):
        wire = {"session": {"rate": 1, "metadata": {"n": 5, "d": {"a": 1}, "s": "x"},
                            "monitor": {"trigger_limits": [1, 2]}, "tags": ("a",)},
                "request": {"raw_body": "str body", "set_headers": {"A": "b"}},
                "unknown": {"kept": True}}
        out = clean(Object, wire)
        self.assertEqual(out["session"]["rate"], 1.0)
        self.assertIsInstance(out["session"]["rate"], float)
        self.assertEqual(out["session"]["metadata"], {"n": "5", "d": '{"a":1}', "s": "x"})
        self.assertEqual(out["session"]["monitor"]["trigger_limits"], [1.0, 2.0])
        self.assertEqual(out["session"]["tags"], ["a"])
        self.assertEqual(out["request"]["raw_body"], b"str body")
        self.assertEqual(out["unknown"], {"kept": True})

    def test_is_empty_follows_protobuf_presence(self):
        self.assertTrue(is_empty(SessionState, {}))
        self.assertTrue(is_empty(SessionState, {"rate": 0.0, "metadata": {},
                                                "basic_auth_data": {"password": ""}}))
        self.assertFalse(is_empty(SessionState, {"metadata": {"token": "t"}}))
        self.assertFalse(is_empty(SessionState, {"basic_auth_data": {"password": "p"}}))

    def test_has_field_and_clear_field(self):
        s = SessionState({"rate": 0.0, "alias": "x"})
        self.assertFalse(s.HasField("rate"))
        self.assertTrue(s.HasField("alias"))
        s.ClearField("alias")
        self.assertFalse(s.HasField("alias"))

    def test_copy_deepcopy_and_pickle(self):
        s = SessionState({"rate": 1.0, "metadata": {"a": "b"}})
        shallow, deep = copy.copy(s), copy.deepcopy(s)
        again = pickle.loads(pickle.dumps(s))
        s.metadata["a"] = "changed"
        self.assertEqual(shallow.metadata["a"], "changed")
        self.assertEqual((deep.rate, deep.metadata["a"]), (1.0, "b"))
        self.assertEqual(again, deep)

    def test_unknown_attribute_raises(self):
        with self.assertRaises(AttributeError):
            SessionState({}).no_such_field


class RequestWrapperTest(unittest.TestCase):
    def test_helpers(self):
        wire = {"headers": {"Authorization": "k", "Content-Type": "text/plain"}}
        r = TykCoProcessRequest(wire)
        self.assertEqual(r.get_header("Authorization"), "k")
        self.assertEqual(r.get_header("content-type"), "text/plain")
        self.assertIsNone(r.get_header("X-Missing"))
        r.add_header("A", "1")
        r.delete_header("B")
        r.add_param("p", "v")
        r.delete_param("q")
        self.assertEqual(wire["set_headers"], {"A": "1"})
        self.assertEqual(wire["delete_headers"], ["B"])
        self.assertEqual(wire["add_params"], {"p": "v"})
        self.assertEqual(wire["delete_params"], ["q"])
        self.assertEqual(r.headers["Authorization"], "k", "fields readable on the wrapper too")


if __name__ == "__main__":
    unittest.main()
