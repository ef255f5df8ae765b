"""The Python plugin runner: the child process pipegate starts, speaking protocol v1 on stdin/stdout.

``python3 -m pipegate_plugin [options] [MODULE_OR_FILE_OR_BUNDLE_DIR ...]``

- Modules named on the command line are imported at start; their hooks serve every API.
- ``load_bundle`` messages import a bundle directory's Python files; those hooks serve only the
  APIs of that bundle, looked up by ``spec["bundle_hash"]`` plus the hook name (the way Tyk's Python
  dispatcher finds bundle hooks), falling back to the command-line modules.
- Fast hooks run inline on the reading thread, and the replies to every frame that arrived in one
  read go out in one write: no thread hand-off per call. A hook that takes longer than
  ``--inline-threshold-ms`` (default 1 ms) gets its next calls watched, and one of them that is
  slow because it waited (a network call, a sleep: see :meth:`Runner._watched_reply`) moves the
  hook to a pool of threads, so it does not hold up the others; it moves back after 100 fast
  calls in a row (200, 400, ... after each further move, so a hook that is only sometimes slow
  stays there).
  Pool replies go out in completion order through one writer thread that batches them. This is
  the difference from Tyk's embedded Python, where one global lock serializes every call.
- Replies carry only what the hook changed (the protocol's "absent means unchanged"), which is
  what makes the runner fast: coercing and encoding a whole object costs more than most hooks.
  The message views record the fields a hook touches (objects.Changes), so finding the changes
  does not take a copy of the whole object per call either.
- A hook that raises gets an error reply (the gateway answers 500, or 403 for auth) and its
  traceback goes to stderr; the runner keeps serving.
- End of stdin means shutdown: in-flight hooks get a short grace period, then the runner exits 0.

stdout carries the protocol, so the runner moves file descriptor 1 to a private copy and points
fd 1 (and ``print``) at stderr: a plugin's stray ``print`` cannot corrupt a frame.
"""

import argparse
import importlib
import importlib.util
import json
import os
import queue
import sys
import threading
import time
import traceback

try:
    import resource
except ImportError:  # not on every OS; only used to tell waiting from preemption
    resource = None

from tyk.decorators import HandlerDecorator

from . import objects
from .objects import (
    Changes,
    MiniRequestObject,
    Object,
    ResponseObject,
    SessionState,
    TykCoProcessRequest,
    clean,
    is_empty,
    tracked,
    tracked_request,
)
from .wire import PROTOCOL_VERSION, FrameReader, ProtocolError, decode, encode, frame_encoder

DEFAULT_NAME = "pipegate-python"
DEFAULT_WORKERS = 16
DEFAULT_DRAIN_SECONDS = 5.0
DEFAULT_INLINE_THRESHOLD_MS = 1.0
# A hook moved to the pool comes back inline after this many fast calls in a row; each further
# move doubles it, so a hook that is only sometimes slow settles on the pool.
_FAST_CALLS_TO_RETURN = 100
# After a slow inline call, this many further calls of the hook are watched for a slow call that
# waited (see Runner._watched_reply).
_WATCHED_CALLS = 100


_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)


def _voluntary_switches():
    """How often the calling thread gave up the CPU by itself (blocked on I/O, a sleep, a lock),
    as opposed to being preempted; None where the OS does not count it per thread."""
    if _RUSAGE_THREAD is None:
        return None
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


def _log(msg, level="info"):
    try:
        sys.stderr.write("level=%s msg=pipegate runner: %s\n" % (level, msg))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class HookError(Exception):
    """A hook was called wrongly or returned something the protocol cannot carry."""


class Handlers(object):
    """Hooks and event handlers found in a set of modules."""

    def __init__(self):
        self.hooks = {}
        self.events = {}

    def scan(self, module):
        # The same module object the plugins import, so isinstance() matches their decorators.
        from tyk import decorators

        for value in list(vars(module).values()):
            if isinstance(value, decorators.Event):
                self.events[value.name] = value
            elif isinstance(value, decorators.HandlerDecorator):
                self.hooks[value.name] = value

    def __bool__(self):
        return bool(self.hooks or self.events)


class Bundle(object):
    def __init__(self, bundle_hash, path, handlers):
        self.bundle_hash = bundle_hash
        self.path = path
        self.handlers = handlers


def _python_files(path, manifest):
    """Which files of a bundle directory to import, following Tyk's choice.

    Tyk imports ``middleware.py``, or the only file when the manifest lists exactly one. When
    neither applies, every ``.py`` the manifest lists is imported.
    """
    file_list = [f for f in (manifest.get("file_list") or []) if isinstance(f, str)]
    py = [f for f in file_list if f.endswith(".py")]
    if len(file_list) == 1 and py:
        return py
    if os.path.isfile(os.path.join(path, "middleware.py")):
        return ["middleware.py"]
    if py:
        return py
    if not file_list:
        return sorted(f for f in os.listdir(path) if f.endswith(".py"))
    return []


def _read_manifest(path):
    manifest_path = os.path.join(path, "manifest.json")
    if not os.path.isfile(manifest_path):
        return {}
    with open(manifest_path, "r") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("%s does not hold a JSON object" % manifest_path)
    return data


def _load_file(path, module_name):
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot import %s: not a Python source file" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


class Registry(object):
    """Every loaded hook, and the dispatch logic (no I/O: the tests call it directly too)."""

    def __init__(self):
        self.global_handlers = Handlers()
        self.bundles = {}
        self.api_bundle = {}
        self.has_cli_modules = False
        self._import_lock = threading.Lock()

    # --- loading -------------------------------------------------------------------------------

    def load_target(self, target):
        """Load a command-line target: a ``.py`` file, a directory (bundle-style), or a module."""
        self.has_cli_modules = True
        if os.path.isdir(target):
            path = os.path.abspath(target)
            files = _python_files(path, _read_manifest(path))
            if not files:
                raise ImportError("directory %s holds no Python plugin files" % target)
            if path not in sys.path:
                sys.path.insert(0, path)
            for f in files:
                stem = os.path.splitext(os.path.basename(f))[0]
                module = _load_file(os.path.join(path, f), self._cli_name(stem))
                self.global_handlers.scan(module)
        elif target.endswith(".py") or os.path.isfile(target):
            path = os.path.abspath(target)
            if not os.path.isfile(path):
                raise ImportError("plugin file %s does not exist" % target)
            directory = os.path.dirname(path)
            if directory not in sys.path:
                sys.path.insert(0, directory)
            stem = os.path.splitext(os.path.basename(path))[0]
            self.global_handlers.scan(_load_file(path, self._cli_name(stem)))
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            self.global_handlers.scan(importlib.import_module(target))

    @staticmethod
    def _cli_name(stem):
        # Keep the plain name (so `import myplugin` elsewhere finds the same module) unless it
        # would shadow something already imported, such as a standard library module.
        return stem if stem not in sys.modules else "pipegate_cli_" + stem

    def load_bundle(self, bundle_hash, api_id, path, manifest):
        """Import a bundle's Python files; its hooks then serve dispatches carrying its hash."""
        if not bundle_hash:
            raise ValueError("load_bundle without a bundle_hash")
        if api_id:
            self.api_bundle[api_id] = bundle_hash
        if bundle_hash in self.bundles:
            return self.bundles[bundle_hash]
        if not path or not os.path.isdir(path):
            raise ValueError("bundle directory %r does not exist" % (path,))
        if not isinstance(manifest, dict) or not manifest:
            manifest = _read_manifest(path)
        files = _python_files(path, manifest)
        handlers = Handlers()
        if files:
            handlers = self._import_isolated(bundle_hash, path, files)
            if not handlers:
                raise ImportError(
                    "bundle %s (%s) defines no @Hook or @Event functions in %s"
                    % (bundle_hash, path, ", ".join(files))
                )
        else:
            _log("bundle %s at %s has no Python files; its hooks come from the command-line "
                 "modules" % (bundle_hash, path))
        bundle = Bundle(bundle_hash, path, handlers)
        self.bundles[bundle_hash] = bundle
        return bundle

    def _import_isolated(self, bundle_hash, path, files):
        """Import the files with the bundle directory on sys.path, then forget the helper modules
        they imported, so two bundles may each ship their own ``helpers.py`` (Tyk does the same)."""
        handlers = Handlers()
        with self._import_lock:
            before = set(sys.modules)
            sys.path.insert(0, path)
            own = set()
            try:
                for f in files:
                    stem = os.path.splitext(f.replace(os.sep, "_"))[0]
                    name = "pipegate_bundle_%s_%s" % (bundle_hash, stem)
                    own.add(name)
                    handlers.scan(_load_file(os.path.join(path, f), name))
            finally:
                try:
                    sys.path.remove(path)
                except ValueError:
                    pass
                root = os.path.abspath(path) + os.sep
                for name in set(sys.modules) - before - own:
                    origin = getattr(sys.modules.get(name), "__file__", None) or ""
                    if os.path.abspath(origin).startswith(root):
                        sys.modules.pop(name, None)
        return handlers

    def hook_names(self):
        return sorted(self.global_handlers.hooks)

    # --- dispatch ------------------------------------------------------------------------------

    def find_hook(self, spec, name):
        if self.bundles:
            bundle = self.bundles.get(spec.get("bundle_hash") or "")
            if bundle is None:
                bundle_hash = self.api_bundle.get(spec.get("APIID") or "")
                bundle = self.bundles.get(bundle_hash) if bundle_hash else None
            if bundle is not None and name in bundle.handlers.hooks:
                return bundle.handlers.hooks[name]
        hook = self.global_handlers.hooks.get(name)
        if hook is None:
            raise HookError(
                "hook %r is not defined (bundle_hash %r); check the middleware name in the API "
                "definition against the @Hook function names" % (name, spec.get("bundle_hash", ""))
            )
        return hook

    def dispatch(self, wire, partial=False):
        """Run the hook a dispatch names and return the object to send back: the whole object,
        or with ``partial`` only what the hook changed (see :func:`run_hook`)."""
        if not isinstance(wire, dict):
            raise HookError("dispatch without an object map")
        spec = wire.get("spec")
        if not isinstance(spec, dict):
            spec = wire["spec"] = {}
        name = wire.get("hook_name") or ""
        # Without bundles the lookup is one dict access; find_hook handles the rest.
        hook = None if self.bundles else self.global_handlers.hooks.get(name)
        if hook is None:
            hook = self.find_hook(spec, name)
        return run_hook(hook, wire, partial)

    def find_event_handler(self, handler_name, api_id):
        """The API's bundle handler first (events carry APIID, not bundle_hash), then the
        command-line modules' handler."""
        bundle = self.bundles.get(self.api_bundle.get(api_id or "") or "")
        if bundle is not None and handler_name in bundle.handlers.events:
            return bundle.handlers.events[handler_name]
        return self.global_handlers.events.get(handler_name)

    def dispatch_event(self, payload):
        """Call the ``@Event`` handler the event names, if there is one; else do nothing."""
        data = json.loads(payload) if isinstance(payload, (str, bytes)) else payload
        if not isinstance(data, dict):
            return False
        spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
        handler = self.find_event_handler(data.get("handler_name") or "", spec.get("APIID"))
        if handler is None:
            return False
        handler(TykEvent(data), spec)
        return True


class TykEvent(object):
    """An event as Tyk's Python handlers see it: ``event.message``, ``event.handler_name``,
    ``event.spec`` (dict access works too)."""

    def __init__(self, data):
        self.__dict__.update(data)

    def __getitem__(self, key):
        return self.__dict__[key]

    def get(self, key, default=None):
        return self.__dict__.get(key, default)


def _sub(wire, key):
    value = wire.get(key)
    if not isinstance(value, dict):
        return None
    return value


def _as_dict(value, cls, what, hook):
    if isinstance(value, TykCoProcessRequest):
        obj = value.object
        # The runner's own look at the dict: not an escape (see objects.Changes).
        return obj._w if isinstance(obj, objects.Message) else obj.to_dict()
    if isinstance(value, objects.Message):
        return value._w
    if isinstance(value, dict):
        return value
    raise HookError(
        "hook %r returned a %s where the %s was expected" % (hook.name, type(value).__name__, what)
    )


def _unpack(result, count, hook, shape):
    if type(result) is tuple and len(result) == count:
        return result
    if isinstance(result, (tuple, list)) and len(result) == count:
        return result
    raise HookError("hook %r must return %s; it returned %r" % (hook.name, shape, result))


def run_hook(hook, wire, partial=False):
    """Call ``hook`` with Tyk's arguments for its arity and fold its results back into ``wire``.

    Mirrors Tyk's ``tyk/middleware.py``: the metadata passed to 4- and 5-argument hooks is the
    object's metadata map (the gateway fills it from the session), and metadata returned by a
    4-argument (auth) hook is merged into ``session.metadata``. The whole object is returned, or,
    with ``partial``, only what the hook changed (the pipe protocol's "absent means unchanged").
    """
    get = wire.get
    request_in = get("request")
    if type(request_in) is not dict and not isinstance(request_in, dict):
        request_in = None
        wire["request"] = request_d = {}
    else:
        request_d = request_in
    session_in = get("session")
    if session_in is not None and not isinstance(session_in, dict):
        session_in = None
    session_d = session_base = session_in if session_in is not None else {}
    metadata = get("metadata")
    if type(metadata) is not dict and not isinstance(metadata, dict):
        metadata = {}
    spec = wire["spec"]
    n = hook.arg_count
    # Tyk's decorators only forward the call: skip that frame (a subclass's own __call__ stays).
    call = hook.f if type(hook).__call__ is HandlerDecorator.__call__ else hook

    # With ``partial`` the views record what the hook touches (objects.Changes) rather than the
    # runner copying the whole object before every call. Metadata is a plain dict the hook gets
    # as it is, so it is copied, for the arities that receive it.
    req_changes = sess_changes = resp_changes = None
    md_before = metadata
    if partial:
        req_changes = Changes() if request_in is not None else Changes.empty()
        # No session (pre and auth hooks): the reply compares the hook's session with {}.
        if session_in is not None:
            sess_changes = Changes()
        if n != 3:
            md_before = dict(metadata)
    request, request_view = tracked_request(request_d, req_changes)
    session = tracked(SessionState, session_d, sess_changes)
    request_base = request_d
    response_d = response_base = None

    if n == 5:
        response_in = _sub(wire, "response")
        response_d = response_base = response_in if response_in is not None else {}
        if partial:
            resp_changes = Changes() if response_in is not None else Changes.empty()
        result = call(request, tracked(ResponseObject, response_d, resp_changes), session,
                      metadata, spec)
        if result is not None:
            if isinstance(result, (tuple, list)):
                raise HookError(
                    "hook %r (a response hook) must return the response, not a tuple" % hook.name
                )
            response_d = _as_dict(result, ResponseObject, "response", hook)
    elif n == 4:
        result = call(request, session, metadata, spec)
        if result is not None:
            req, sess, md = _unpack(result, 3, hook, "(request, session, metadata)")
            if req is not request or req.object is not request_view:
                request_d = _as_dict(req, MiniRequestObject, "request", hook)
            if sess is not session:
                session_d = _as_dict(sess, SessionState, "session", hook)
            if md is not None:
                if not isinstance(md, dict):
                    raise HookError("hook %r returned metadata that is not a dict" % hook.name)
                metadata = md
        if metadata:
            if sess_changes is not None and session_d is session_base:
                sess_changes.record(SessionState, session_d, "metadata")
            sm = session_d.get("metadata")
            if not isinstance(sm, dict):
                sm = session_d["metadata"] = {}
            sm.update(metadata)
    elif n == 3:
        result = call(request, session, spec)
        if result is not None:
            req, sess = _unpack(result, 2, hook, "(request, session)")
            # The usual ``return request, session`` hands back what went in: nothing to look up.
            if req is not request or req.object is not request_view:
                request_d = _as_dict(req, MiniRequestObject, "request", hook)
            if sess is not session:
                session_d = _as_dict(sess, SessionState, "session", hook)
    else:
        raise HookError(
            "hook %r takes %d arguments; Tyk hooks take 3 (request, session, spec), 4 (request, "
            "session, metadata, spec) or 5 (request, response, session, metadata, spec)"
            % (hook.name, n)
        )

    if not partial:
        out = dict(wire)
        out["request"] = request_d
        out["metadata"] = metadata
        if session_in is not None or not is_empty(SessionState, session_d):
            out["session"] = session_d
        else:
            out.pop("session", None)
        if response_d is not None:
            out["response"] = response_d
        return clean(Object, out)

    # The reply the pipe protocol allows: absent means unchanged (PROTOCOL.md section 5). The
    # result applies exactly as the whole echoed object would: request fields are applied one by
    # one; an auth_check hook's session and metadata go back whole (the gateway installs them as
    # they are); the response's ``headers`` and ``multivalue_headers`` travel together because
    # the gateway syncs one with the other.
    out = {}
    req = req_changes.changed(MiniRequestObject, request_d, request_base)
    if req:
        out["request"] = req
    auth = wire.get("hook_type") == "CustomKeyCheck"
    if auth or (
        sess_changes.differs(session_d, session_base) if sess_changes is not None
        else session_d != {}
    ):
        if session_in is not None or not is_empty(SessionState, session_d):
            out["session"] = clean(SessionState, session_d)
    if auth or (metadata is not md_before and metadata != md_before):
        out["metadata"] = clean(Object, {"metadata": metadata}).get("metadata", {})
    if response_d is not None:
        resp = resp_changes.changed(ResponseObject, response_d, response_base)
        if resp and ("headers" in resp or "multivalue_headers" in resp):
            for k in ("headers", "multivalue_headers"):
                if k not in resp and k in response_d:
                    resp[k] = clean(ResponseObject, {k: response_d[k]}).get(k)
        if resp:
            out["response"] = resp
    return out


class WorkerPool(object):
    """Daemon threads that run submitted callables; grows on demand up to ``max_workers``.

    Each submitted task either claims an idle thread, starts a new one, or (when all
    ``max_workers`` are busy) waits in a backlog; counting claims at submit time means a burst of
    tasks never queues behind a slow one while a thread could still be started. Daemon threads
    (unlike concurrent.futures') let the runner exit on shutdown even if a hook never returns.
    """

    def __init__(self, max_workers):
        self.max_workers = max(1, int(max_workers))
        self._q = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._backlog = 0
        self._threads = 0
        self._pending = 0
        self._done = threading.Condition(self._lock)

    def submit(self, fn, *args):
        spawn = False
        with self._lock:
            self._pending += 1
            if self._idle > 0:
                self._idle -= 1
            elif self._threads < self.max_workers:
                self._threads += 1
                spawn = True
            else:
                self._backlog += 1
        self._q.put((fn, args))
        if spawn:
            threading.Thread(target=self._work, name="pipegate-hook", daemon=True).start()

    def _work(self):
        while True:
            fn, args = self._q.get()
            try:
                fn(*args)
            except BaseException:  # a task must never kill its worker
                traceback.print_exc(file=sys.stderr)
            finally:
                with self._lock:
                    self._pending -= 1
                    if self._backlog > 0:
                        self._backlog -= 1
                    else:
                        self._idle += 1
                    if self._pending == 0:
                        self._done.notify_all()

    def wait_idle(self, timeout):
        """Wait until no task is queued or running; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
        return True


class Writer(object):
    """One thread writes every pool reply; it drains whatever is queued into a single ``write``.

    The reading thread writes its inline replies itself (:meth:`write_now`); one lock keeps the
    two writers' frames from interleaving.
    """

    def __init__(self, fd):
        self.fd = fd
        self._lock = threading.Lock()
        self._q = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="pipegate-writer", daemon=True)
        self._thread.start()

    def send(self, frame):
        self._q.put(frame)

    def close(self, timeout=5.0):
        self._q.put(None)
        self._thread.join(timeout)

    def _run(self):
        while True:
            item = self._q.get()
            stop = item is None
            chunks = [] if stop else [item]
            while not stop:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    chunks.append(item)
            if chunks:
                self.write_now(b"".join(chunks))
            if stop:
                return

    def write_now(self, data):
        """Write ``data`` (whole frames) at once from the calling thread."""
        data = memoryview(data)
        try:
            with self._lock:
                while data:
                    written = os.write(self.fd, data)
                    data = data[written:]
        except OSError as e:
            _log("cannot write to the gateway (%s); exiting" % e, "error")
            os._exit(1)


class Runner(object):
    """The protocol loop: reads frames on the calling thread, hands hooks to the pool."""

    def __init__(self, registry, in_fd, out_fd, name=DEFAULT_NAME, workers=DEFAULT_WORKERS,
                 announce_hooks=True, drain_seconds=DEFAULT_DRAIN_SECONDS,
                 inline_threshold_ms=DEFAULT_INLINE_THRESHOLD_MS):
        self.registry = registry
        self.reader = FrameReader(in_fd)
        self.writer = Writer(out_fd)
        self.pool = WorkerPool(workers)
        self.name = name
        self.announce_hooks = announce_hooks
        self.drain_seconds = drain_seconds
        # <= 0: every hook runs on the pool (the behaviour before inline calls existed).
        self.inline_threshold = inline_threshold_ms / 1000.0
        # Hook names on the pool -> [fast pool calls in a row, calls needed to move back].
        self.slow_hooks = {}
        self._moves = {}
        # Hook names that were slow once inline -> how many more calls to watch.
        self._watched = {}
        self._out = []
        # Inline replies are encoded on the reading thread only: it may keep one Packer.
        self._encode = frame_encoder()

    def _flush(self):
        if self._out:
            out, self._out = self._out, []
            self.writer.write_now(out[0] if len(out) == 1 else b"".join(out))

    def run(self):
        """Serve until end of input; returns the process exit code."""
        code = 0
        try:
            for frame in self.reader.frames(self._flush):
                if not self._handle(frame):
                    break
        except ProtocolError as e:
            _log("protocol error: %s; exiting so the gateway restarts the plugin" % e, "error")
            code = 2
        self._flush()
        if not self.pool.wait_idle(self.drain_seconds):
            _log("shutting down with hooks still running after %.1fs" % self.drain_seconds,
                 "warning")
        self.writer.close()
        return code

    def _send(self, msg):
        self.writer.send(encode(msg))

    def _handle(self, frame):
        try:
            msg = decode(frame)
        except Exception as e:  # undecodable: there is no id to answer
            _log("dropped an undecodable frame: %s" % e, "error")
            return True
        if not isinstance(msg, dict):
            _log("dropped a frame that is not a map", "error")
            return True
        kind = msg.get("type")
        mid = msg.get("id")
        if kind == "dispatch":
            wire = msg.get("object")
            name = wire.get("hook_name", "") if isinstance(wire, dict) else ""
            if self.inline_threshold <= 0 or name in self.slow_hooks:
                self.pool.submit(self._pooled, mid, wire, name)
            elif name in self._watched:
                self._out.append(self._watched_reply(mid, wire, name))
            else:
                started = time.perf_counter()
                self._out.append(self._reply(mid, wire, self._encode))
                if time.perf_counter() - started > self.inline_threshold:
                    # It waited (I/O, a sleep) or the box preempted it: its next calls tell.
                    self._watched[name] = _WATCHED_CALLS
        elif kind == "hello":
            self._hello(msg)
        elif kind == "event":
            self.pool.submit(self._event, msg.get("payload"))
        elif kind == "load_bundle":
            self._load_bundle(msg)
        elif kind == "shutdown":
            return False
        elif mid is not None:
            self._send({"id": mid, "error": "plugin does not support message type %r" % (kind,)})
        return True

    def _hello(self, msg):
        limit = msg.get("max_frame_bytes")
        if isinstance(limit, int) and limit > 0:
            self.reader.max_frame = limit
        if msg.get("protocol") not in (None, PROTOCOL_VERSION):
            _log("gateway speaks protocol %r; this runner speaks %d"
                 % (msg.get("protocol"), PROTOCOL_VERSION), "warning")
        reply = {"type": "hello", "id": msg.get("id", 0), "protocol": PROTOCOL_VERSION,
                 "name": self.name}
        if self.announce_hooks and self.registry.has_cli_modules:
            reply["hooks"] = self.registry.hook_names()
        self._send(reply)

    def _watched_reply(self, mid, wire, name):
        """An inline call of a hook that was slow before. A slow call during which the thread
        gave up the CPU by itself (a voluntary context switch: it waited on I/O, a sleep, a
        lock) moves the hook to the pool. A call that was only slow because other processes got
        the CPU does not: on a busy box that happens to any hook now and then, the pool cannot
        help it (the GIL runs one hook at a time anyway), and a pool call costs about twice the
        CPU of an inline one (thread hand-offs). Counting switches is a system call, so only
        watched calls pay for it."""
        switches = _voluntary_switches()
        started = time.perf_counter()
        frame = self._reply(mid, wire, self._encode)
        if (time.perf_counter() - started > self.inline_threshold
                and (switches is None or _voluntary_switches() != switches)):
            self._watched.pop(name, None)
            self._to_pool(name)
        else:
            left = self._watched.get(name, 1) - 1
            if left > 0:
                self._watched[name] = left
            else:
                self._watched.pop(name, None)
        return frame

    def _to_pool(self, name):
        moves = self._moves.get(name, 0)
        self._moves[name] = moves + 1
        self.slow_hooks[name] = [0, _FAST_CALLS_TO_RETURN << min(moves, 16)]
        if moves == 0:
            _log("hook %r took over %.1f ms; running it on the thread pool from now on"
                 % (name, self.inline_threshold * 1000))

    def _pooled(self, mid, wire, name):
        started = time.perf_counter()
        self.writer.send(self._reply(mid, wire))
        if self.inline_threshold <= 0:
            return
        # Pool threads update this state under the GIL; a lost update only delays a move back.
        state = self.slow_hooks.get(name)
        if state is None:
            return
        if time.perf_counter() - started > self.inline_threshold:
            state[0] = 0
        else:
            state[0] += 1
            if state[0] >= state[1]:
                self.slow_hooks.pop(name, None)

    def _reply(self, mid, wire, encode=encode):
        """Run one dispatch and return its reply frame (an error reply if the hook failed).
        ``encode`` is the calling thread's encoder."""
        try:
            frame = encode({"id": mid, "object": self.registry.dispatch(wire, partial=True)})
        except HookError as e:
            # A wiring mistake, not a crash inside the plugin: one line is enough.
            _log(str(e), "error")
            frame = encode({"id": mid, "error": str(e)})
        except Exception as e:
            name = wire.get("hook_name", "") if isinstance(wire, dict) else ""
            sys.stderr.write("pipegate runner: hook %r failed:\n" % (name,))
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            frame = encode({"id": mid, "error": "hook %r failed: %s: %s"
                            % (name, type(e).__name__, e)})
        return frame

    def _event(self, payload):
        try:
            self.registry.dispatch_event(payload)
        except Exception:
            sys.stderr.write("pipegate runner: event handler failed:\n")
            traceback.print_exc(file=sys.stderr)

    def _load_bundle(self, msg):
        mid = msg.get("id")
        try:
            bundle = self.registry.load_bundle(msg.get("bundle_hash") or "",
                                               msg.get("api_id") or "", msg.get("path") or "",
                                               msg.get("manifest"))
            # "hooks" is informational (the gateway ignores keys it does not know): the names
            # this bundle serves, which the hello could not list.
            reply = {"id": mid, "hooks": sorted(bundle.handlers.hooks)}
        except Exception as e:
            sys.stderr.write("pipegate runner: loading bundle %r failed:\n" % msg.get("path"))
            traceback.print_exc(file=sys.stderr)
            reply = {"id": mid, "error": "loading bundle %s failed: %s: %s"
                     % (msg.get("path"), type(e).__name__, e)}
        if mid is not None:
            self._send(reply)


def _take_stdio():
    """Keep private copies of fds 0 and 1 for the protocol; point fd 1 at stderr and fd 0 at
    /dev/null so plugin code that prints or reads stdin cannot corrupt the stream."""
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    return in_fd, out_fd


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python3 -m pipegate_plugin",
        description="Run Tyk-style Python plugins as a pipegate pipe plugin (the gateway starts "
                    "this as its child; stdin/stdout carry the protocol).")
    p.add_argument("targets", nargs="*", metavar="MODULE_OR_FILE_OR_BUNDLE_DIR",
                   help="plugin modules to load at start; their hooks serve every API")
    p.add_argument("--name", default=DEFAULT_NAME, help="plugin name reported in hello")
    p.add_argument("--workers", type=int,
                   default=int(os.environ.get("PIPEGATE_PYTHON_WORKERS", DEFAULT_WORKERS)),
                   help="threads running hooks concurrently (default %(default)s)")
    p.add_argument("--any-hook", action="store_true",
                   help="do not list hook names in hello, so the gateway sends every hook "
                        "(use when bundles loaded later bring hooks the modules lack)")
    p.add_argument("--inline-threshold-ms", type=float,
                   default=float(os.environ.get("PIPEGATE_PYTHON_INLINE_MS",
                                                DEFAULT_INLINE_THRESHOLD_MS)),
                   help="hooks faster than this run inline on the reading thread; a hook that "
                        "takes longer moves to the thread pool (0 = always use the pool; "
                        "default %(default)s)")
    p.add_argument("--drain-seconds", type=float, default=DEFAULT_DRAIN_SECONDS,
                   help="on shutdown, how long to wait for running hooks (default %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    registry = Registry()
    for target in args.targets:
        try:
            registry.load_target(target)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            _log("cannot load plugin %r: %s: %s; fix the module or the pipe_command arguments"
                 % (target, type(e).__name__, e), "error")
            return 1
    if args.targets and not registry.global_handlers:
        _log("the modules %s define no @Hook or @Event functions" % ", ".join(args.targets),
             "warning")
    in_fd, out_fd = _take_stdio()
    runner = Runner(registry, in_fd, out_fd, name=args.name, workers=args.workers,
                    announce_hooks=not args.any_hook, drain_seconds=args.drain_seconds,
                    inline_threshold_ms=args.inline_threshold_ms)
    code = runner.run()
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    # Hooks still running after the grace period are abandoned on purpose.
    os._exit(code)
