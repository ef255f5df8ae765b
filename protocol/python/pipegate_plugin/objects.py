"""Protobuf-like Python objects backed by the wire dicts of pipegate's pipe protocol.

Tyk's Python plugins mutate protobuf messages in place::

    request.object.return_overrides.response_code = 403
    request.object.set_headers["X-Foo"] = "bar"
    session.rate = 1000
    session.access_rights["api1"].api_id = "api1"
    response.raw_body = b"newbody"

Here every message is a thin view over the dict that MessagePack decoded, so those statements write
straight into the dict that is sent back: no copy in, no copy out. Reading a field that is absent
gives the protobuf default (0, "", False, b"", empty map or list), like protobuf does. Field types
follow Tyk's .proto files; values are coerced on assignment (``session.rate = 100`` stores 100.0)
and once more by :func:`clean` just before a reply is encoded, so a plugin that writes
``metadata["n"] = 5`` still produces a valid str->str map.
"""

import json

# Field kinds.
STR, INT, FLOAT, BOOL, BYTES = "str", "int", "float", "bool", "bytes"
MAP = "map"  # map<string,string>
LIST = "list"  # repeated scalar (element kind in the tuple)

_SCALAR_DEFAULTS = {STR: "", INT: 0, FLOAT: 0.0, BOOL: False, BYTES: b""}
_SLOTS = ("_w", "_t")
# The Python type each scalar kind has on the wire.
_WIRE_TYPES = {STR: str, INT: int, FLOAT: float, BOOL: bool, BYTES: bytes}


def _coerce(kind, value):
    """Convert ``value`` to the wire type of a scalar field, the way protobuf would insist on."""
    if kind == STR:
        if isinstance(value, str):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("utf-8", errors="replace")
        return str(value)
    if kind == BYTES:
        if isinstance(value, bytes):
            return value
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        if value is None:
            return b""
        raise TypeError("expected bytes for a body field, got %s" % type(value).__name__)
    if kind == INT:
        if value is None:
            return 0
        if isinstance(value, float):
            if value != int(value):
                raise ValueError("expected an integer, got %r" % value)
        return int(value)
    if kind == FLOAT:
        return 0.0 if value is None else float(value)
    if kind == BOOL:
        return bool(value)
    return value


def _map_value(value):
    """A map<string,string> value: Tyk sends non-string metadata as JSON text, so do the same."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return json.dumps(value, separators=(",", ":"), default=str)


class Message(object):
    """Base class: a schema (``FIELDS``: name -> kind) plus the backing dict.

    The dict lives in the slot ``_w``; ``_t`` is the :class:`Changes` record of a message the
    runner handed to a hook (None for messages a plugin builds itself). ``_d`` is the dict too,
    for code that reaches for it; like :meth:`to_dict` it tells the record the dict escaped.

    Each field of ``FIELDS`` is read through a descriptor the class gets when it is defined
    (:func:`_field_reader`): far cheaper than ``__getattr__``, which Python only calls after a
    failed lookup has built an AttributeError. ``__getattr__`` is left for fields the schema does
    not know.
    """

    __slots__ = ("_w", "_t")
    FIELDS = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, kind in cls.FIELDS.items():
            if name not in cls.__dict__:  # a subclass's own method or property wins, as before
                setattr(cls, name, _field_reader(name, kind))

    def __init__(self, data=None, **fields):
        changes = None
        if data is None:
            data = {}
        elif isinstance(data, Message):
            # A second view of the same dict records into the same Changes.
            changes = data._t
            data = data._w
        elif not isinstance(data, dict):
            raise TypeError("%s needs a dict, got %s" % (type(self).__name__, type(data).__name__))
        _set_w(self, data)
        _set_t(self, changes)
        for k, v in fields.items():
            setattr(self, k, v)

    @property
    def _d(self):
        return self.to_dict()

    def __getattr__(self, name):
        # Only names without a descriptor get here: fields this schema version does not know.
        if name in _SLOTS:  # unset slot (object built without __init__): no recursion
            raise AttributeError(name)
        d = self._w
        if name in d:
            return d[name]
        raise AttributeError("%s has no field %r" % (type(self).__name__, name))

    def __setattr__(self, name, value):
        kind = type(self).FIELDS.get(name)
        d = self._w
        t = self._t
        if t is not None and name not in t and _WHOLE not in t:
            t[name] = _copy_field(kind, d.get(name, ABSENT))
        if kind is None:
            # Unknown to this schema version: keep it so it round-trips.
            d[name] = value
            return
        if isinstance(kind, str):
            if kind == MAP:
                d[name] = dict(value or {})
            else:
                d[name] = _coerce(kind, value)
            return
        tag = kind[0]
        if tag == LIST:
            d[name] = list(value or [])
        elif tag == "msg":
            d[name] = _unwrap(value)
        elif tag == "msgmap":
            src = value._d if isinstance(value, MessageMap) else (value or {})
            d[name] = {k: _unwrap(v) for k, v in src.items()}
        elif tag == "msglist":
            src = value._l if isinstance(value, MessageList) else (value or [])
            d[name] = [_unwrap(v) for v in src]

    def __delattr__(self, name):
        self._record(name)
        self._w.pop(name, None)

    def _record(self, name):
        """Remember field ``name`` as it is, before a change."""
        t = self._t
        if t is not None:
            t.record(type(self), self._w, name)

    def _escape(self):
        """The dict is leaving for code that may change it unseen: copy all of it now."""
        t = self._t
        if t is not None and _WHOLE not in t:
            t[_WHOLE] = snapshot(type(self), self._w)

    def __eq__(self, other):
        if isinstance(other, Message):
            return clean(type(self), self._w) == clean(type(other), other._w)
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self._w)

    # A few protobuf message methods that Tyk plugins use.
    def HasField(self, name):
        return name in self._w and not _is_default(type(self).FIELDS.get(name), self._w[name])

    def ClearField(self, name):
        self._record(name)
        self._w.pop(name, None)

    def CopyFrom(self, other):
        self._escape()
        self._w.clear()
        self._w.update(_unwrap(other))

    def MergeFrom(self, other):
        self._escape()
        for k, v in _unwrap(other).items():
            kind = type(self).FIELDS.get(k)
            if kind == MAP or (isinstance(kind, tuple) and kind[0] == "msgmap"):
                self._w.setdefault(k, {}).update(v)
            elif isinstance(kind, tuple) and kind[0] in (LIST, "msglist"):
                self._w.setdefault(k, []).extend(v)
            else:
                self._w[k] = v

    def to_dict(self):
        """The backing wire dict (live, not a copy)."""
        self._escape()
        return self._w

    def __reduce__(self):
        # copy.copy shares the dict (so it escapes), copy.deepcopy and pickle copy it.
        return (type(self), (self.to_dict(),))


_set_w = Message.__dict__["_w"].__set__
_set_t = Message.__dict__["_t"].__set__
_new = object.__new__


def tracked(cls, data, changes):
    """A ``cls`` view of wire dict ``data`` that records changes in ``changes`` (for the runner:
    no ``__init__`` checks, the dict comes from the decoder)."""
    view = _new(cls)
    _set_w(view, data)
    _set_t(view, changes)
    return view


# --- field readers -------------------------------------------------------------------------------


class _Field(object):
    """Reads one field of a message (a non-data descriptor: assignment goes to __setattr__)."""

    __slots__ = ("name", "kind")

    def __init__(self, name, kind):
        self.name = name
        self.kind = kind


class _ScalarField(_Field):
    """A scalar: the protobuf default when absent. Scalars are immutable, so reading one is not
    recorded as a possible change."""

    __slots__ = ("default",)

    def __init__(self, name, kind):
        _Field.__init__(self, name, kind)
        self.default = _SCALAR_DEFAULTS[kind]

    def __get__(self, msg, cls=None):
        if msg is None:
            return self
        v = msg._w.get(self.name)
        return self.default if v is None else v


class _MapField(_Field):
    """A map: handed out live, so it may be changed in place. The first time, the field is
    copied into the message's Changes record (if it has one). The container readers below do
    the same; each is written out whole because this runs on every access."""

    __slots__ = ()

    def __get__(self, msg, cls=None):
        if msg is None:
            return self
        name = self.name
        d = msg._w
        v = d.get(name)
        t = msg._t
        if t is not None and name not in t and _WHOLE not in t:
            t[name] = dict(v) if type(v) is dict else d.get(name, ABSENT)
        if not isinstance(v, dict):
            v = d[name] = {}
        return v


class _ListField(_Field):
    __slots__ = ()

    def __get__(self, msg, cls=None):
        if msg is None:
            return self
        name = self.name
        d = msg._w
        v = d.get(name)
        t = msg._t
        if t is not None and name not in t and _WHOLE not in t:
            t[name] = list(v) if type(v) is list else d.get(name, ABSENT)
        if not isinstance(v, list):
            v = d[name] = list(v) if isinstance(v, tuple) else []
        return v


class _MessageField(_Field):
    __slots__ = ()

    def __get__(self, msg, cls=None):
        if msg is None:
            return self
        name = self.name
        d = msg._w
        t = msg._t
        if t is not None and name not in t and _WHOLE not in t:
            t[name] = _copy_field(self.kind, d.get(name, ABSENT))
        v = d.get(name)
        if not isinstance(v, dict):
            v = d[name] = {}
        return self.kind[1](v)


class _MessageMapField(_Field):
    __slots__ = ()

    def __get__(self, msg, cls=None):
        if msg is None:
            return self
        name = self.name
        d = msg._w
        t = msg._t
        if t is not None and name not in t and _WHOLE not in t:
            t[name] = _copy_field(self.kind, d.get(name, ABSENT))
        v = d.get(name)
        if not isinstance(v, dict):
            v = d[name] = {}
        return MessageMap(self.kind[1], v)


class _MessageListField(_Field):
    __slots__ = ()

    def __get__(self, msg, cls=None):
        if msg is None:
            return self
        name = self.name
        d = msg._w
        t = msg._t
        if t is not None and name not in t and _WHOLE not in t:
            t[name] = _copy_field(self.kind, d.get(name, ABSENT))
        v = d.get(name)
        if not isinstance(v, list):
            v = d[name] = []
        return MessageList(self.kind[1], v)


def _field_reader(name, kind):
    if isinstance(kind, str):
        return _MapField(name, kind) if kind == MAP else _ScalarField(name, kind)
    tag = kind[0]
    if tag == LIST:
        return _ListField(name, kind)
    if tag == "msg":
        return _MessageField(name, kind)
    if tag == "msgmap":
        return _MessageMapField(name, kind)
    if tag == "msglist":
        return _MessageListField(name, kind)
    raise ValueError("field %r has an unknown kind %r" % (name, kind))


# --- change records: what the runner needs to send only what a hook changed -------------------

# Marks a field that was absent when it was recorded.
ABSENT = object()
# The key of a Changes record under which the copy of the whole message is kept.
_WHOLE = object()


def _copy_field(kind, v):
    """A copy of field value ``v`` deep enough that no later change through the message shows in
    it. Maps of strings and lists are copied in C; only nested messages recurse. Values of fields
    the schema does not know are kept as they are (the gateway ignores those fields)."""
    if kind is None or v is ABSENT or v is None or isinstance(kind, str) and kind != MAP:
        return v
    if kind == MAP:
        return dict(v) if type(v) is dict else v
    tag = kind[0]
    if tag == LIST:
        return list(v) if type(v) is list else v
    if tag == "msg":
        return snapshot(kind[1], v)
    if tag == "msgmap" and type(v) is dict:
        return {mk: snapshot(kind[1], mv) for mk, mv in v.items()}
    if tag == "msglist" and type(v) is list:
        return [snapshot(kind[1], x) for x in v]
    return v


def snapshot(cls, d):
    """A copy of message dict ``d`` that no later change to ``d`` shows in (see _copy_field)."""
    if type(d) is not dict:
        return d
    out = dict(d)
    for k, kind in _container_fields(cls):
        v = out.get(k)
        if v is not None:
            out[k] = _copy_field(kind, v)
    return out


_CONTAINER_FIELDS = {}


def _container_fields(cls):
    """``(name, kind)`` of the fields of ``cls`` that hold maps, lists or messages (cached)."""
    fields = _CONTAINER_FIELDS.get(cls)
    if fields is None:
        fields = _CONTAINER_FIELDS[cls] = [
            (k, kind) for k, kind in cls.FIELDS.items() if kind == MAP or not isinstance(kind, str)
        ]
    return fields


class Changes(dict):
    """How one wire message (request, session or response) was before a hook changed it.

    Copying a whole request per call to diff it afterwards costs more than most hooks, so the
    message views record instead: the first time a field is assigned, deleted, or handed out as a
    map, list or message (which the plugin may then change in place), its value is copied in
    here under the field's name (:data:`ABSENT` if it had none). Fields never recorded are
    unchanged, and the reply compares only the recorded ones. When the dict itself escapes
    (``to_dict()``, ``CopyFrom``, ...) a copy of all of it is kept under ``_WHOLE`` and recording
    stops: from then on every field is compared with that copy. A dict subclass, because one is
    made per message per call and a plain dict is the cheapest thing to make.
    """

    __slots__ = ()

    @classmethod
    def empty(cls):
        """The record of a message absent from the dispatch: it starts out as ``{}``."""
        return cls({_WHOLE: {}})

    def record(self, cls, d, name):
        """Remember field ``name`` of message dict ``d`` as it is, before a change."""
        if name not in self and _WHOLE not in self:
            self[name] = _copy_field(cls.FIELDS.get(name), d.get(name, ABSENT))

    def pristine(self, original):
        """The message as it arrived, given its dict ``original`` as it is now."""
        out = dict(self.get(_WHOLE, original))
        for k, v in self.items():
            if k is _WHOLE:
                continue
            if v is ABSENT:
                out.pop(k, None)
            else:
                out[k] = v
        return out

    def changed(self, cls, now, original):
        """The fields of ``now`` (what the hook returned) that differ from the message as it
        arrived, coerced to their wire types; ``{}`` when nothing changed. A field the hook
        deleted is not listed: in a reply, absent means unchanged."""
        if not self:
            if now is original:
                return {}
            before = original
        elif now is original and _WHOLE not in self:
            diff = {}
            for k, old in self.items():
                v = now.get(k, ABSENT)
                if v is not ABSENT and (old is ABSENT or old != v):
                    diff[k] = v
            return clean(cls, diff) if diff else diff
        else:
            before = self.pristine(original)
        diff = {k: v for k, v in now.items() if k not in before or before[k] != v}
        return clean(cls, diff) if diff else diff

    def differs(self, now, original):
        """True when message ``now`` is not the message as it arrived (deletions count)."""
        if not self and now is original:
            return False
        return now != self.pristine(original)


def _unwrap(value):
    if isinstance(value, Message):
        return value.to_dict()
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise TypeError("expected a message or a dict, got %s" % type(value).__name__)


class MessageMap(object):
    """A protobuf map<string, Message> view: ``m[key]`` creates an empty entry, like protobuf."""

    __slots__ = ("_cls", "_d")

    def __init__(self, cls, data):
        self._cls = cls
        self._d = data

    def __getitem__(self, key):
        v = self._d.get(key)
        if not isinstance(v, dict):
            v = self._d[key] = {}
        return self._cls(v)

    def __setitem__(self, key, value):
        self._d[key] = _unwrap(value)

    def __delitem__(self, key):
        del self._d[key]

    def __contains__(self, key):
        return key in self._d

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)

    def get(self, key, default=None):
        return self._cls(self._d[key]) if key in self._d else default

    def keys(self):
        return self._d.keys()

    def values(self):
        return [self._cls(v) for v in self._d.values()]

    def items(self):
        return [(k, self._cls(v)) for k, v in self._d.items()]

    def pop(self, key, *default):
        if key in self._d:
            return self._cls(self._d.pop(key))
        if default:
            return default[0]
        raise KeyError(key)

    def clear(self):
        self._d.clear()

    def __repr__(self):
        return "MessageMap(%r)" % (self._d,)


class MessageList(object):
    """A protobuf repeated-message view; ``add(**fields)`` appends and returns a new element."""

    __slots__ = ("_cls", "_l")

    def __init__(self, cls, data):
        self._cls = cls
        self._l = data

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._cls(v) for v in self._l[i]]
        return self._cls(self._l[i])

    def __setitem__(self, i, value):
        self._l[i] = _unwrap(value)

    def __delitem__(self, i):
        del self._l[i]

    def __len__(self):
        return len(self._l)

    def __iter__(self):
        return (self._cls(v) for v in self._l)

    def add(self, **fields):
        d = {}
        self._l.append(d)
        return self._cls(d, **fields)

    def append(self, value):
        self._l.append(_unwrap(value) if not isinstance(value, dict) else value)

    def extend(self, values):
        for v in values:
            self.append(v)

    def clear(self):
        del self._l[:]

    def __repr__(self):
        return "MessageList(%r)" % (self._l,)


def _is_default(kind, value):
    """Protobuf's notion of "not set": a default scalar, an empty collection, an empty message."""
    if value is None:
        return True
    if kind is None:
        return value in ("", 0, False, b"", {}, [])
    if isinstance(kind, str):
        if kind == MAP:
            return not value
        return value == _SCALAR_DEFAULTS[kind]
    tag = kind[0]
    if tag in (LIST, "msgmap", "msglist"):
        return not value
    if tag == "msg":
        return is_empty(kind[1], value)
    return False


def is_empty(cls, data):
    """True when every field of the message ``data`` (a dict) holds its default value."""
    if not data:
        return True
    fields = cls.FIELDS
    return all(_is_default(fields.get(k), v) for k, v in data.items())


def clean(cls, data):
    """A copy of the wire dict ``data`` with every known field coerced to its wire type.

    Run just before encoding a reply, so whatever a plugin stored (ints for doubles, str for
    bytes, non-string map values, tuples) leaves as valid protocol. Unknown keys are kept as they
    are (the gateway ignores what it does not know).
    """
    if isinstance(data, Message):
        data = data._w
    out = {}
    fields = cls.FIELDS
    for k, v in data.items():
        kind = fields.get(k)
        if kind is None:
            out[k] = v
        elif v is None:
            continue
        elif kind == MAP:
            out[k] = _clean_map(v)
        elif isinstance(kind, str):
            # Most values already have their wire type: skip the call (exact type: a bool is
            # not an int here, _coerce turns it into one).
            out[k] = v if type(v) is _WIRE_TYPES[kind] else _coerce(kind, v)
        else:
            tag = kind[0]
            if tag == LIST:
                out[k] = _clean_list(kind[1], v)
            elif tag == "msg":
                out[k] = clean(kind[1], _unwrap(v))
            elif tag == "msgmap":
                out[k] = {str(mk): clean(kind[1], _unwrap(mv)) for mk, mv in _unwrap_map(v).items()}
            elif tag == "msglist":
                items = v._l if isinstance(v, MessageList) else v
                out[k] = [clean(kind[1], _unwrap(x)) for x in items]
    return out


def _clean_map(v):
    """A map<string,string> value as the wire wants it (a copy)."""
    if type(v) is dict:
        for mk, mv in v.items():
            if type(mk) is not str or type(mv) is not str:
                break
        else:
            return dict(v)  # already str -> str, the usual case: copied in C
    return {str(mk): _map_value(mv) for mk, mv in _unwrap_map(v).items()}


def _clean_list(kind, v):
    """A repeated scalar as the wire wants it (a copy)."""
    wire_type = _WIRE_TYPES[kind]
    if type(v) is list:
        for x in v:
            if type(x) is not wire_type:
                break
        else:
            return list(v)
    return [_coerce(kind, x) for x in v]


def _unwrap_map(v):
    if isinstance(v, MessageMap):
        return v._d
    return v if isinstance(v, dict) else dict(v)


# --- Tyk's messages (field names and types from Tyk's coprocess .proto files) -------------------


class ReturnOverrides(Message):
    __slots__ = ()
    FIELDS = {
        "response_code": INT,
        "response_error": STR,
        "headers": MAP,
        "override_error": BOOL,
        "response_body": STR,
    }


class MiniRequestObject(Message):
    __slots__ = ()
    FIELDS = {
        "headers": MAP,
        "set_headers": MAP,
        "delete_headers": (LIST, STR),
        "body": STR,
        "url": STR,
        "params": MAP,
        "add_params": MAP,
        "extended_params": MAP,
        "delete_params": (LIST, STR),
        "return_overrides": ("msg", ReturnOverrides),
        "method": STR,
        "request_uri": STR,
        "scheme": STR,
        "raw_body": BYTES,
    }


class Header(Message):
    __slots__ = ()
    FIELDS = {"key": STR, "values": (LIST, STR)}


class ResponseObject(Message):
    __slots__ = ()
    FIELDS = {
        "status_code": INT,
        "raw_body": BYTES,
        "body": STR,
        "headers": MAP,
        "multivalue_headers": ("msglist", Header),
    }


class AccessSpec(Message):
    __slots__ = ()
    FIELDS = {"url": STR, "methods": (LIST, STR)}


class AccessDefinition(Message):
    __slots__ = ()
    FIELDS = {
        "api_name": STR,
        "api_id": STR,
        "versions": (LIST, STR),
        "allowed_urls": ("msglist", AccessSpec),
    }


class BasicAuthData(Message):
    __slots__ = ()
    FIELDS = {"password": STR, "hash": STR}


class JWTData(Message):
    __slots__ = ()
    FIELDS = {"secret": STR}


class Monitor(Message):
    __slots__ = ()
    FIELDS = {"trigger_limits": (LIST, FLOAT)}


class SessionState(Message):
    __slots__ = ()
    FIELDS = {
        "last_check": INT,
        "allowance": FLOAT,
        "rate": FLOAT,
        "per": FLOAT,
        "expires": INT,
        "quota_max": INT,
        "quota_renews": INT,
        "quota_remaining": INT,
        "quota_renewal_rate": INT,
        "access_rights": ("msgmap", AccessDefinition),
        "org_id": STR,
        "oauth_client_id": STR,
        "oauth_keys": MAP,
        "basic_auth_data": ("msg", BasicAuthData),
        "jwt_data": ("msg", JWTData),
        "hmac_enabled": BOOL,
        "hmac_secret": STR,
        "is_inactive": BOOL,
        "apply_policy_id": STR,
        "data_expires": INT,
        "monitor": ("msg", Monitor),
        "enable_detailed_recording": BOOL,
        "metadata": MAP,
        "tags": (LIST, STR),
        "alias": STR,
        "last_updated": STR,
        "id_extractor_deadline": INT,
        "session_lifetime": INT,
        "apply_policies": (LIST, STR),
        "certificate": STR,
        "max_query_depth": INT,
        "key_id": STR,
        "post_expiry_action": STR,
        "post_expiry_grace_period": INT,
    }


class Object(Message):
    """The whole dispatch object (Tyk's ``Object``)."""

    __slots__ = ()
    FIELDS = {
        "hook_type": STR,
        "hook_name": STR,
        "request": ("msg", MiniRequestObject),
        "session": ("msg", SessionState),
        "metadata": MAP,
        "spec": MAP,
        "response": ("msg", ResponseObject),
    }


class TykCoProcessRequest(object):
    """What Tyk passes as ``request``: helpers plus the raw message as ``.object``."""

    __slots__ = ("object",)

    def __init__(self, obj):
        self.object = obj if isinstance(obj, MiniRequestObject) else MiniRequestObject(obj)

    def add_header(self, key, value):
        self.object.set_headers[key] = value

    def delete_header(self, key):
        self.object.delete_headers.append(key)

    def add_param(self, key, value):
        self.object.add_params[key] = value

    def delete_param(self, key):
        self.object.delete_params.append(key)

    def get_header(self, key):
        """The header's value, or None. Exact (Go-canonical) name first, then ignoring case."""
        obj = self.object
        # Only reads: use the dict itself, so the header map is not recorded as handed out.
        headers = obj._w.get("headers") if isinstance(obj, Message) else None
        if type(headers) is not dict:
            headers = obj.headers
        if key in headers:
            return headers[key]
        lower = key.lower()
        for k, v in headers.items():
            if k.lower() == lower:
                return v
        return None

    def __getattr__(self, name):
        # Older Tyk plugins read request fields directly on the request (request.headers).
        if name == "object":
            raise AttributeError(name)
        return getattr(self.object, name)

    def __repr__(self):
        return "TykCoProcessRequest(%r)" % (self.object,)


_set_object = TykCoProcessRequest.__dict__["object"].__set__


def tracked_request(data, changes):
    """The ``request`` a hook gets: a TykCoProcessRequest around a MiniRequestObject view of
    ``data`` recording into ``changes``, and that view. For the runner: built without the
    ``__init__`` checks, in one call, since this happens on every dispatch."""
    view = _new(MiniRequestObject)
    _set_w(view, data)
    _set_t(view, changes)
    request = _new(TykCoProcessRequest)
    _set_object(request, view)
    return request, view
