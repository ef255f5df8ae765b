"""In-process tests of hook and event lookup (no child process)."""

import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipegate_plugin.runner import HookError, Registry  # noqa: E402

BUNDLE = """
from tyk.decorators import *

SEEN = []

@Hook
def H(request, session, spec):
    request.add_header("X-From", "bundle")
    return request, session

@Event
def ev(event, spec):
    SEEN.append(event.message["Type"])
"""


class RegistryTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pipegate-registry-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        with open(os.path.join(self.tmp, "middleware.py"), "w") as f:
            f.write(BUNDLE)
        self.reg = Registry()
        self.bundle = self.reg.load_bundle("h1", "api1", self.tmp, {"file_list": ["middleware.py"]})

    def event(self, api_id):
        return json.dumps({"message": {"Type": "AuthFailure"}, "handler_name": "ev",
                           "spec": {"APIID": api_id, "OrgID": "o"}})

    def test_bundle_event_handler_serves_only_its_api(self):
        self.assertTrue(self.reg.dispatch_event(self.event("api1")))
        self.assertFalse(self.reg.dispatch_event(self.event("api2")))
        module = sys.modules["pipegate_bundle_h1_middleware"]
        self.assertEqual(module.SEEN, ["AuthFailure"])

    def test_bundle_hook_found_by_hash_or_api_id(self):
        wire = {"hook_name": "H", "request": {}, "spec": {"bundle_hash": "h1"}}
        out = self.reg.dispatch(wire)
        self.assertEqual(out["request"]["set_headers"], {"X-From": "bundle"})
        wire = {"hook_name": "H", "request": {}, "spec": {"APIID": "api1"}}
        self.assertEqual(self.reg.dispatch(wire)["request"]["set_headers"], {"X-From": "bundle"})
        with self.assertRaises(HookError):
            self.reg.dispatch({"hook_name": "H", "request": {}, "spec": {"bundle_hash": "zz"}})

    def test_loading_the_same_hash_again_reuses_the_bundle(self):
        again = self.reg.load_bundle("h1", "api3", "/does/not/matter", {})
        self.assertIs(again, self.bundle)
        wire = {"hook_name": "H", "request": {}, "spec": {"APIID": "api3"}}
        self.assertEqual(self.reg.dispatch(wire)["request"]["set_headers"], {"X-From": "bundle"})


if __name__ == "__main__":
    unittest.main()
