#!/usr/bin/env python3
"""A Tyk-compatible gRPC plugin server (coprocess.Dispatcher) in Python with grpcio.

    pip install grpcio grpcio-tools
    python3 protocol/examples/grpc_server.py --listen tcp://127.0.0.1:5555
    python3 protocol/examples/grpc_server.py --listen unix:///tmp/plugin.sock

and in tyk.conf: "coprocess_options": {"enable_coprocess": true,
"coprocess_grpc_server": "tcp://127.0.0.1:5555"}, with hooks of driver "grpc" named below.

The Python stubs are generated at start-up with grpc_tools.protoc from protocol/proto into a
temporary directory. Why not check them in: the generated code is tied to the protobuf runtime
version installed next to it (stubs from a newer protoc refuse to load on an older runtime), and
generating from the .proto files proves on every run that the files pipegate ships are the ones
Tyk plugin servers are generated from. It costs well under a second. Pass --stubs DIR to use
stubs generated beforehand (e.g. Tyk's own coprocess/bindings/python) instead.

Hooks (the ones of Tyk's sample servers, plus one for inspection):
- MyPreMiddleware: sets the request header myheader: myvalue.
- MyPostMiddleware: sets x-grpc-post: <hook_type number>.
- MyAuthCheck: accepts Authorization: aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d with a session
  (rate 1000 per second, metadata token); answers 401 otherwise.
- MyResponseMiddleware: adds x-grpc-response: true to the response.
- Inspect: reports what the server received, as set_headers (X-Seen-Hook-Name,
  X-Seen-Hook-Type, X-Seen-Test-Header, X-Seen-Method, X-Seen-Raw-Body-Len) and metadata
  (seen_hook_type_name), and replaces the body with b"inspected".
- Dump: puts the received object as JSON (protobuf field names) into metadata["received_json"].
- any other name: the object is echoed unchanged.

On start it prints "listening on <address>" (the real port when given port 0).
"""

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")
PROTO_FILES = [
    "coprocess_common.proto",
    "coprocess_mini_request_object.proto",
    "coprocess_object.proto",
    "coprocess_response_object.proto",
    "coprocess_return_overrides.proto",
    "coprocess_session_state.proto",
]
VALID_TOKEN = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"


def die(msg):
    sys.stderr.write("grpc_server.py: %s\n" % msg)
    sys.exit(2)


def generate_stubs(out_dir):
    """Runs protoc (from grpcio-tools) on protocol/proto; the stubs import each other by bare
    module name, so out_dir goes on sys.path."""
    try:
        from grpc_tools import protoc
        import grpc_tools
    except ImportError:
        die("grpcio-tools is missing: pip install grpcio grpcio-tools")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", "-I", PROTO_DIR, "-I", well_known,
            "--python_out=" + out_dir, "--grpc_python_out=" + out_dir]
    args += [os.path.join(PROTO_DIR, f) for f in PROTO_FILES]
    if protoc.main(args) != 0:
        die("protoc failed on %s" % PROTO_DIR)


def load_stubs(stubs_dir):
    sys.path.insert(0, stubs_dir)
    import coprocess_object_pb2
    import coprocess_object_pb2_grpc
    import coprocess_common_pb2
    import coprocess_session_state_pb2
    return (coprocess_object_pb2, coprocess_object_pb2_grpc, coprocess_common_pb2,
            coprocess_session_state_pb2)


def make_dispatcher(pb, pb_grpc, common, session_pb):
    def my_pre(obj):
        obj.request.set_headers["myheader"] = "myvalue"
        return obj

    def my_post(obj):
        obj.request.set_headers["x-grpc-post"] = str(obj.hook_type)
        return obj

    def my_auth(obj):
        token = obj.request.headers.get("Authorization", "")
        if token != VALID_TOKEN:
            obj.request.return_overrides.response_code = 401
            obj.request.return_overrides.response_error = "Not authorized (Python gRPC middleware)"
            return obj
        obj.session.CopyFrom(session_pb.SessionState(
            rate=1000.0, per=1.0, quota_max=-1,
            id_extractor_deadline=int(time.time()) + 60))
        obj.session.metadata["token"] = token
        obj.metadata["token"] = token
        return obj

    def my_response(obj):
        obj.response.headers["x-grpc-response"] = "true"
        obj.response.multivalue_headers.add(key="x-grpc-response", values=["true"])
        return obj

    def inspect(obj):
        req = obj.request
        req.set_headers["X-Seen-Hook-Name"] = obj.hook_name
        req.set_headers["X-Seen-Hook-Type"] = str(obj.hook_type)
        req.set_headers["X-Seen-Test-Header"] = req.headers.get("X-Test", "<missing>")
        req.set_headers["X-Seen-Method"] = req.method
        req.set_headers["X-Seen-Raw-Body-Len"] = str(len(req.raw_body))
        obj.metadata["seen_hook_type_name"] = common.HookType.Name(obj.hook_type)
        req.raw_body = b"inspected"
        return obj

    def dump(obj):
        from google.protobuf import json_format
        # Field names as the generated (i.e. Tyk's) schema has them: proves name <-> number.
        obj.metadata["received_json"] = json_format.MessageToJson(
            obj, preserving_proto_field_name=True)
        return obj

    hooks = {
        "MyPreMiddleware": my_pre,
        "MyPostMiddleware": my_post,
        "MyAuthCheck": my_auth,
        "MyResponseMiddleware": my_response,
        "Inspect": inspect,
        "Dump": dump,
    }

    class Dispatcher(pb_grpc.DispatcherServicer):
        def Dispatch(self, obj, context):
            hook = hooks.get(obj.hook_name)
            return hook(obj) if hook else obj

        def DispatchEvent(self, event, context):
            sys.stderr.write("event: %s\n" % event.payload)
            return pb.EventReply()

    return Dispatcher()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="tcp://127.0.0.1:5555",
                    help="tcp://host:port, host:port or unix:///path (port 0 = any free port)")
    ap.add_argument("--max-message", type=int, default=100000000,
                    help="largest message received and sent, bytes (Tyk's tests use 100 MB)")
    ap.add_argument("--workers", type=int, default=10, help="handler threads")
    ap.add_argument("--stubs", help="directory of pre-generated *_pb2*.py stubs")
    args = ap.parse_args()

    try:
        import grpc
    except ImportError:
        die("grpcio is missing: pip install grpcio grpcio-tools")

    tmp = None
    stubs = args.stubs
    if not stubs:
        tmp = tempfile.TemporaryDirectory(prefix="pipegate-grpc-stubs-")
        generate_stubs(tmp.name)
        stubs = tmp.name
    pb, pb_grpc, common, session_pb = load_stubs(stubs)

    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[("grpc.max_receive_message_length", args.max_message),
                 ("grpc.max_send_message_length", args.max_message)])
    pb_grpc.add_DispatcherServicer_to_server(make_dispatcher(pb, pb_grpc, common, session_pb),
                                             server)

    listen = args.listen
    if listen.startswith("unix:"):
        path = listen[len("unix://"):] if listen.startswith("unix://") else listen[len("unix:"):]
        if os.path.exists(path):
            os.unlink(path)
        if server.add_insecure_port("unix:" + path) == 0:
            die("cannot listen on %s" % listen)
        shown = "unix://" + path
    else:
        addr = listen[len("tcp://"):] if listen.startswith("tcp://") else listen
        port = server.add_insecure_port(addr)
        if port == 0:
            die("cannot listen on %s" % listen)
        shown = "tcp://%s:%d" % (addr.rsplit(":", 1)[0], port)
    server.start()
    print("listening on %s" % shown, flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(1)
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
