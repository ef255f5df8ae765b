#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ from real inputs: requests as clients send
them, pipe frames as plugins send them, bundles as `pipegate bundle build` writes them, and the
real Tyk files the integration tests use. Run from the repository root; needs python3-msgpack.
The files are committed, so this only has to run again when a seed should change."""
import hashlib
import io
import json
import os
import re
import struct
import zipfile

import msgpack

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


REQUESTS = {
    "get": b"GET /a/items?x=1 HTTP/1.1\r\nHost: gw.example\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    "post_cl": b"POST /a/items HTTP/1.1\r\nHost: gw.example\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
    "post_chunked": b"POST /a/up HTTP/1.1\r\nHost: gw.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    "absolute_form": b"GET http://gw.example/a/abs?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
    "http10_keepalive": b"GET /a/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "expect_continue": b"PUT /a/x HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "connection_tokens": b"GET /a/ HTTP/1.1\r\nHost: gw\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    "keyed": b"GET /k/private HTTP/1.1\r\nHost: gw\r\nAuthorization: some-token\r\n\r\n",
    "admin": b"GET /tyk/apis HTTP/1.1\r\nHost: gw\r\nx-tyk-authorization: fuzz-secret\r\n\r\n",
    "admin_wrong_secret": b"GET /tyk/keys HTTP/1.1\r\nHost: gw\r\nx-tyk-authorization: nope\r\n\r\n",
    "hello": b"GET /hello HTTP/1.1\r\nHost: gw\r\n\r\n",
    "cl_te": b"POST /a/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /a/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
}

for name, r in REQUESTS.items():
    put("http_request_head", name, r)
put("http_request_head", "response_chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n")
put("http_request_head", "response_http10", b"HTTP/1.0 204 No Content\r\nContent-Length: 0\r\n\r\n")

# gateway_connection: single requests and pipelined sequences.
for name, r in REQUESTS.items():
    put("gateway_connection", name, r)
put("gateway_connection", "pipelined", REQUESTS["get"] + REQUESTS["post_chunked"] + REQUESTS["keyed"] + REQUESTS["hello"])
put("gateway_connection", "pipelined_admin", REQUESTS["admin"] + REQUESTS["admin_wrong_secret"] + REQUESTS["post_cl"])
put("gateway_connection", "partial_body", b"POST /a/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nshort")

# http_body: selector byte, then a body.
put("http_body", "chunked", b"\x03" + b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n")
put("http_body", "chunked_hex", b"\x00" + b"000A\r\n0123456789\r\n0\r\n\r\n")
put("http_body", "chunked_bare_lf", b"\x05" + b"5\nhello\n0\n\n")
put("http_body", "content_length", b"\x01" + b"18446744073709551615")
put("http_body", "content_length_small", b"\x02" + b"42")


def frame(msg):
    data = msgpack.packb(msg, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


HELLO = {"id": 0, "type": "hello", "protocol": 1, "name": "scenarios", "hooks": ["Pre"], "mmap": True}
REPLY = {"id": 7, "object": {"request": {"set_headers": {"X-Pre": "1"}, "delete_headers": ["X-Remove-Me"],
                                          "add_params": {"a": "1"}, "url": "/rewritten", "method": "PUT"}}}
AUTH = {"id": 8, "object": {"session": {"rate": 100, "per": 1, "quota_max": -1, "metadata": {"token": "abc"}},
                            "metadata": {"token": "abc"}}}
OVERRIDE = {"id": 9, "object": {"request": {"return_overrides": {"response_code": 418, "response_error": "teapot",
                                                                  "headers": {"X-O": "1"}}}}}
RESP = {"id": 10, "object": {"response": {"status_code": 201, "headers": {"X-Resp": "1"},
                                           "multivalue_headers": [{"key": "Set-Cookie", "values": ["a=1", "b=2"]}],
                                           "raw_body": b"wrapped"}}}
ERROR = {"id": 11, "error": "plugin failed"}
put("pipe_frame", "hello", b"\x04" + frame(HELLO))
put("pipe_frame", "replies", b"\x01" + frame(REPLY) + frame(AUTH) + frame(OVERRIDE) + frame(RESP) + frame(ERROR))
put("pipe_frame", "event_ignored", b"\x00" + frame({"type": "log", "message": "hi"}))
put("pipe_frame", "oversized_len", b"\x02" + struct.pack(">I", 0xFFFFFFF0) + b"xx")

# plugin_reply: selector (hook: 0 pre, 1 auth, 2 post_key_auth, 3 post, 4 response), then an object.
put("plugin_reply", "pre_edits", b"\x00" + msgpack.packb(REPLY["object"], use_bin_type=True))
put("plugin_reply", "auth_session", b"\x01" + msgpack.packb(AUTH["object"], use_bin_type=True))
put("plugin_reply", "override", b"\x03" + msgpack.packb(OVERRIDE["object"], use_bin_type=True))
put("plugin_reply", "response", b"\x04" + msgpack.packb(RESP["object"], use_bin_type=True))
put("plugin_reply", "body_and_hop_headers", b"\x02" + msgpack.packb(
    {"request": {"raw_body": b"new body", "set_headers": {"Transfer-Encoding": "chunked", "Host": "evil",
                                                          "Content-Length": "0", "Connection": "close"}}},
    use_bin_type=True))

MANIFEST_MW = {"driver": "python", "pre": [{"name": "MyPreHook", "path": "", "require_session": False,
                                            "raw_body_only": False}],
               "auth_check": {"name": "MyAuth", "path": ""}, "response": [{"name": "Resp"}]}
plugin = b"from tyk.decorators import *\n\n@Hook\ndef MyPreHook(request, session, spec):\n    return request, session\n"
checksum = hashlib.md5(plugin).hexdigest()
manifest = {"file_list": ["middleware.py"], "custom_middleware": MANIFEST_MW, "checksum": checksum, "signature": ""}
put("bundle_manifest", "python", json.dumps(manifest))
put("bundle_manifest", "go_case_keys", json.dumps({"File_List": ["a.py"], "CUSTOM_MIDDLEWARE": None, "Checksum": "x"}))
put("bundle_manifest", "signed", json.dumps(dict(manifest, signature="c2lnbmF0dXJl")))


def zip_of(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            z.writestr(name, data)
    return buf.getvalue()


put("bundle_zip", "bundle", zip_of([("manifest.json", json.dumps(manifest)), ("middleware.py", plugin)]))
put("bundle_zip", "nested", zip_of([("manifest.json", json.dumps(dict(manifest, file_list=["lib/m.py"]))),
                                    ("lib/", b""), ("lib/m.py", plugin)]))
put("bundle_zip", "traversal", zip_of([("manifest.json", json.dumps(manifest)), ("../escape.py", plugin)]))

gw_src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "gateway_core.rs")).read()


def raw_const(name):
    m = re.search(r'const %s: &str = r#"(.*?)"#;' % name, gw_src, re.S)
    return m.group(1)


put("config_gateway", "tyk_real", raw_const("REAL_TYK_CONF"))
put("config_gateway", "example", open("examples/tyk.conf").read())
put("config_gateway", "pipegate_options", json.dumps({
    "listen_address": "127.0.0.1", "listen_port": 8080, "secret": "s", "app_path": "apps/",
    "enable_bundle_downloader": True, "bundle_base_url": "http://bundles.example/", "bundles_path": "bundles",
    "coprocess_options": {"enable_coprocess": True, "pipe_command": ["python3", "plugin.py"],
                          "pipe_env": {"A": "1"}, "hook_timeout_ms": 5000, "fail_open": False,
                          "max_frame_bytes": 1048576, "mmap_threshold_bytes": 65536},
    "storage": {"type": "redis", "host": "localhost", "port": 6379},
    "pipegate": {"workers": 2, "max_header_bytes": 16384, "client_header_timeout_ms": 5000,
                 "log_format": "json"}}))
put("config_api", "tyk_real", raw_const("REAL_TYK_API").replace("__TARGET__", "http://127.0.0.1:8080/"))
put("config_api", "example", open("examples/apps/httpbin-keyless.json").read())
put("config_api", "hooks_and_auth", json.dumps([{
    "name": "p", "api_id": "p", "org_id": "o", "use_keyless": False, "enable_coprocess_auth": True,
    "proxy": {"listen_path": "/p/", "target_url": "http://up.example:9000/base?k=v", "strip_listen_path": True,
              "preserve_host_header": True},
    "custom_middleware": {"driver": "pipe", "pre": [{"name": "Pre", "raw_body_only": True}],
                          "auth_check": {"name": "Auth"},
                          "id_extractor": {"extract_from": "header", "extract_with": "value",
                                           "extractor_config": {"header_name": "Authorization"}}},
    "version_data": {"versions": {"Default": {"extended_paths": {"ignored": [{"path": "/health",
                                                                             "method_actions": {"GET": {"action": "no_action"}}}]}}}},
    "custom_middleware_bundle": "b.zip"}, {"name": "q", "api_id": "q", "active": False}]))
