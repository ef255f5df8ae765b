"""A Tyk-style Python plugin, unchanged from what Tyk's embedded Python would run.

Hooks (name them so in the API definition's custom_middleware):
- MyPreHook (pre): adds the request header ``X-Pipegate-Example: pre``.
- MyAuthCheck (auth_check): accepts ``Authorization: letmein``; the session allows 100 requests
  per second and ``metadata["token"]`` names the key. Anything else gets 403.
- MyResponseHook (response): adds the response header ``X-Pipegate-Example-Response: 1``.
- on_auth_failure (event handler, ``cp_dynamic_handler`` with ``"name": "on_auth_failure"``): logs.
"""

import time

from tyk.decorators import *
from gateway import TykGateway as tyk


@Hook
def MyPreHook(request, session, spec):
    request.add_header("X-Pipegate-Example", "pre")
    return request, session


@Hook
def MyAuthCheck(request, session, metadata, spec):
    auth = request.get_header("Authorization")
    if auth == "letmein":
        session.rate = 100
        session.per = 1
        session.quota_max = -1
        session.id_extractor_deadline = int(time.time()) + 60
        metadata["token"] = "letmein"
        tyk.log("MyAuthCheck: accepted a request for API %s" % spec.get("APIID"), "info")
        return request, session, metadata
    request.object.return_overrides.response_code = 403
    request.object.return_overrides.response_error = "Access denied: wrong credentials"
    return request, session, metadata


@Hook
def MyResponseHook(request, response, session, metadata, spec):
    response.headers["X-Pipegate-Example-Response"] = "1"
    return response


@Event
def on_auth_failure(event, spec):
    tyk.log("event %s for API %s" % (event.message.get("Type"), spec.get("APIID")), "warning")
