#!/usr/bin/env python3
"""The scenario plugin of the hook integration tests as a Tyk gRPC plugin server
(coprocess.Dispatcher, grpcio): the same scenarios as scenarios.py, for the gRPC transport.

    python3 tests/plugins/scenarios_grpc.py --listen tcp://127.0.0.1:0
    python3 tests/plugins/scenarios_grpc.py --listen unix:///tmp/x/plugin.sock

Prints "listening on <address>" (the real port when given port 0) once it serves.

The scenario logic is not copied: every call goes through scenarios.py's hook(), which takes the
object as a dict and returns the changes as a (partial) dict, the way the pipe protocol allows.
A real gRPC plugin server cannot leave fields out (proto3 has no "absent"; Tyk's servers echo
the object they got), so this server does what those servers do: it applies the changes to the
object it received and returns the whole object. Applying follows the pipe protocol's rule
("a present key replaces, an absent one is unchanged"): scalars, maps and lists in the changes
replace the received ones, messages merge field by field. Consequences a test must expect:
- raw_body is echoed unless a scenario changes it, as Tyk requires (it is authoritative on
  return), and so are url, method, status_code and the response headers.
- "Noop" ({}) echoes the object, so a response hook's response comes back unchanged.

Conversion: protobuf -> dict with google.protobuf.json_format (proto field names, every field
printed, enum names such as "Pre" as the pipe protocol sends them), then bytes fields back to
bytes and 64-bit integers back to ints (JSON mapping makes them base64 and strings); changes ->
protobuf with json_format.ParseDict onto the received object (bytes as base64).

Scenarios that exist only here, because only gRPC can express them (the hook() log line is
written for them too):
- NoResponse: replies with the object minus its `response` (Tyk answers 500 for a response hook).
- EmptyObject: replies with an empty Object (no request, no session, no response).
- FreshObject: replies with a new Object whose request only has set_headers X-Fresh: 1, as a
  server that builds its reply instead of echoing does (url, method and raw_body are then "").
- BigReply: replaces raw_body with `?bytes=N` bytes (a reply over grpc_recv_max_size).
- Deadline: sets X-Deadline-Left-Ms to the time left of the call's gRPC deadline ("none" if the
  gateway sent no deadline).

Environment: SCENARIO_LOG as for scenarios.py (one "hook_type hook_name" line per call).
Stubs are generated at start from protocol/proto by the example server's functions
(protocol/examples/grpc_server.py), so the test server runs on the .proto files pipegate ships.
"""

import argparse
import base64
import concurrent.futures
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "protocol", "examples"))

import grpc_server as example  # noqa: E402  (generate_stubs, load_stubs)
import scenarios  # noqa: E402  (hook(): the scenario logic)


def message_to_dict(msg, json_format, descriptor):
    """`msg` as the dict scenarios.hook() expects (what the pipe protocol would carry)."""
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True)
    fix_types(d, msg.DESCRIPTOR, descriptor)
    return d


def fix_types(d, desc, descriptor):
    """Undoes the JSON mapping where it changes Python types: bytes fields come back as bytes
    (not base64) and 64-bit integers as ints (not strings)."""
    fd = descriptor.FieldDescriptor
    int64 = (fd.TYPE_INT64, fd.TYPE_UINT64, fd.TYPE_SINT64, fd.TYPE_FIXED64, fd.TYPE_SFIXED64)

    def scalar(field, v):
        if field.type == fd.TYPE_BYTES:
            return base64.b64decode(v)
        if field.type in int64:
            return int(v)
        return v

    for field in desc.fields:
        if field.name not in d:
            continue
        v = d[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for item in v.values():
                    fix_types(item, value_field.message_type, descriptor)
            else:
                d[field.name] = {k: scalar(value_field, x) for k, x in v.items()}
        elif field.message_type is not None:
            for item in (v if isinstance(v, list) else [v]):
                fix_types(item, field.message_type, descriptor)
        elif isinstance(v, list):
            d[field.name] = [scalar(field, x) for x in v]
        else:
            d[field.name] = scalar(field, v)


def json_able(v):
    """The changes scenarios.hook() returned, in the form ParseDict takes (bytes as base64)."""
    if isinstance(v, dict):
        return {k: json_able(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_able(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(bytes(v)).decode("ascii")
    return v


def make_dispatcher(pb, pb_grpc, json_format, descriptor):
    def no_response(obj, _context):
        obj.ClearField("response")
        return obj

    def empty_object(_obj, _context):
        return pb.Object()

    # MiniRequestObject lives in its own generated module (the stubs directory is on sys.path).
    import coprocess_mini_request_object_pb2 as mini_pb

    def fresh_object(_obj, _context):
        return pb.Object(request=mini_pb.MiniRequestObject(set_headers={"X-Fresh": "1"}))

    def big_reply(obj, _context):
        size = int(obj.request.params.get("bytes", "0"))
        obj.request.raw_body = b"x" * size
        return obj

    def deadline(obj, context):
        left = context.time_remaining()
        obj.request.set_headers["X-Deadline-Left-Ms"] = (
            "none" if left is None else str(int(left * 1000)))
        return obj

    grpc_only = {
        "NoResponse": no_response,
        "EmptyObject": empty_object,
        "FreshObject": fresh_object,
        "BigReply": big_reply,
        "Deadline": deadline,
    }

    class Dispatcher(pb_grpc.DispatcherServicer):
        def Dispatch(self, obj, context):
            # hook() logs the call, and answers {} for the gRPC-only names.
            changes = scenarios.hook(message_to_dict(obj, json_format, descriptor))
            json_format.ParseDict(json_able(changes or {}), obj)
            special = grpc_only.get(obj.hook_name)
            return special(obj, context) if special else obj

        def DispatchEvent(self, event, context):
            log = os.environ.get("SCENARIO_LOG")
            if log:
                with open(log, "a") as f:
                    f.write("event %s\n" % event.payload)
            return pb.EventReply()

    return Dispatcher()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", required=True,
                    help="tcp://host:port (port 0 = any free port) or unix:///path")
    ap.add_argument("--max-message", type=int, default=100_000_000,
                    help="largest message received and sent, bytes")
    ap.add_argument("--workers", type=int, default=64, help="handler threads")
    args = ap.parse_args()

    import grpc
    from google.protobuf import descriptor, json_format

    with tempfile.TemporaryDirectory(prefix="pipegate-scenario-stubs-") as stubs:
        example.generate_stubs(stubs)
        pb, pb_grpc, _common, _session = example.load_stubs(stubs)
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=args.workers),
            options=[("grpc.max_receive_message_length", args.max_message),
                     ("grpc.max_send_message_length", args.max_message)])
        pb_grpc.add_DispatcherServicer_to_server(
            make_dispatcher(pb, pb_grpc, json_format, descriptor), server)

        listen = args.listen
        if listen.startswith("unix://"):
            path = listen[len("unix://"):]
            if os.path.exists(path):
                os.unlink(path)
            if server.add_insecure_port("unix:" + path) == 0:
                example.die("cannot listen on %s" % listen)
            shown = "unix://" + path
        else:
            addr = listen[len("tcp://"):] if listen.startswith("tcp://") else listen
            port = server.add_insecure_port(addr)
            if port == 0:
                example.die("cannot listen on %s" % listen)
            shown = "tcp://%s:%d" % (addr.rsplit(":", 1)[0], port)
        server.start()
        print("listening on %s" % shown, flush=True)
        server.wait_for_termination()


if __name__ == "__main__":
    main()
