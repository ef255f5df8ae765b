"""A Tyk-style plugin the runner tests load from the command line (not a test module itself)."""

import json
import os
import time

from tyk.decorators import *
from gateway import TykGateway as tyk


@Hook
def PreAddHeader(request, session, spec):
    request.add_header("X-Pre", "1")
    request.delete_header("X-Remove-Me")
    request.object.set_headers["X-Url"] = request.object.url
    request.object.add_params["added"] = "yes"
    request.object.delete_params.append("gone")
    print("a stray print must not corrupt the protocol stream")
    return request, session


@Hook
def PreDeny(request, session, spec):
    request.object.return_overrides.response_code = 403
    request.object.return_overrides.response_error = "denied by plugin"
    request.object.return_overrides.headers["X-Why"] = "test"
    return request, session


@Hook
def PreBody(request, session, spec):
    # Tyk-style: the raw body is authoritative on return.
    request.object.raw_body = request.object.raw_body.upper() + b"\x00\xff"
    return request, session


@Hook
def AuthCheck(request, session, metadata, spec):
    if request.get_header("authorization") == "letmein":
        session.rate = 100
        session.per = 1
        session.quota_max = 10
        session.access_rights["api1"].api_id = "api1"
        session.access_rights["api1"].versions.append("Default")
        session.apply_policies.append("pol1")
        metadata["token"] = "letmein"
    else:
        request.object.return_overrides.response_code = 401
    return request, session, metadata


@Hook
def PostSession(request, session, spec):
    nested = json.loads(session.metadata["nested"])
    request.add_header("X-Nested", nested["k"])
    request.add_header("X-Rate", repr(session.rate))
    request.add_header("X-Quota", repr(session.quota_max))
    request.add_header("X-Config", json.loads(spec["config_data"])["greeting"])
    session.rate = 5
    return request, session


@Hook
def Response(request, response, session, metadata, spec):
    response.raw_body = b"newbody"
    response.headers["X-Resp"] = "1"
    response.status_code = 201
    return response


@Hook
def ResponseInPlace(request, response, session, metadata, spec):
    response.headers["X-In-Place"] = "yes"


@Hook
def Slow(request, session, spec):
    time.sleep(float(spec.get("sleep", "1.5")))
    request.add_header("X-Slow", "1")
    return request, session


@Hook
def Noop(request, session, spec):
    request.get_header("Authorization")
    return request, session


@Hook
def Busy(request, session, spec):
    # Slow on the CPU alone (no sleep, no I/O).
    end = time.perf_counter() + 0.005
    while time.perf_counter() < end:
        pass
    request.add_header("X-Busy", "1")
    return request, session


@Hook
def Fast(request, session, spec):
    request.add_header("X-Fast", "1")
    return request, session


@Hook
def Explode(request, session, spec):
    raise ValueError("boom from the plugin")


@Hook
def WrongArity(request, spec):
    return request


@Hook
def BadReturn(request, session, spec):
    return "not a tuple"


@Hook
def Store(request, session, spec):
    tyk.store_data("k", "v", 60)
    request.add_header("X-Stored", tyk.get_data("k"))
    return request, session


@Pre
def LegacyPre(request, session, spec):
    request.add_header("X-Legacy", "1")
    return request, session


@Event
def on_event(event, spec):
    path = os.environ.get("PIPEGATE_TEST_EVENT_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({"type": event.message["Type"], "api": spec["APIID"],
                       "handler": event.handler_name}, f)
