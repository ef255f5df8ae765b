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
    """Base class: a schema (``FIELDS``: name -> kind) plus the backing dict ``_d``."""

    __slots__ = ("_d",)
    FIELDS = {}

    def __init__(self, data=None, **fields):
        if data is None:
            data = {}
        elif isinstance(data, Message):
            data = data._d
        elif not isinstance(data, dict):
            raise TypeError("%s needs a dict, got %s" % (type(self).__name__, type(data).__name__))
        object.__setattr__(self, "_d", data)
        for k, v in fields.items():
            setattr(self, k, v)

    def __getattr__(self, name):
        kind = type(self).FIELDS.get(name)
        d = object.__getattribute__(self, "_d")
        if kind is None:
            if name in d:
                return d[name]
            raise AttributeError("%s has no field %r" % (type(self).__name__, name))
        if isinstance(kind, str):
            v = d.get(name)
            if kind == MAP:
                if not isinstance(v, dict):
                    v = d[name] = {}
                return v
            return _SCALAR_DEFAULTS[kind] if v is None else v
        tag = kind[0]
        if tag == LIST:
            v = d.get(name)
            if not isinstance(v, list):
                v = d[name] = list(v) if isinstance(v, tuple) else []
            return v
        v = d.get(name)
        if tag == "msg":
            if not isinstance(v, dict):
                v = d[name] = {}
            return kind[1](v)
        if tag == "msgmap":
            if not isinstance(v, dict):
                v = d[name] = {}
            return MessageMap(kind[1], v)
        if tag == "msglist":
            if not isinstance(v, list):
                v = d[name] = []
            return MessageList(kind[1], v)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        kind = type(self).FIELDS.get(name)
        d = object.__getattribute__(self, "_d")
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
        object.__getattribute__(self, "_d").pop(name, None)

    def __eq__(self, other):
        if isinstance(other, Message):
            return clean(type(self), self._d) == clean(type(other), other._d)
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self._d)

    # A few protobuf message methods that Tyk plugins use.
    def HasField(self, name):
        return name in self._d and not _is_default(type(self).FIELDS.get(name), self._d[name])

    def ClearField(self, name):
        self._d.pop(name, None)

    def CopyFrom(self, other):
        self._d.clear()
        self._d.update(_unwrap(other))

    def MergeFrom(self, other):
        for k, v in _unwrap(other).items():
            kind = type(self).FIELDS.get(k)
            if kind == MAP or (isinstance(kind, tuple) and kind[0] == "msgmap"):
                self._d.setdefault(k, {}).update(v)
            elif isinstance(kind, tuple) and kind[0] in (LIST, "msglist"):
                self._d.setdefault(k, []).extend(v)
            else:
                self._d[k] = v

    def to_dict(self):
        """The backing wire dict (live, not a copy)."""
        return self._d


def _unwrap(value):
    if isinstance(value, Message):
        return value._d
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
        data = data._d
    out = {}
    fields = cls.FIELDS
    for k, v in data.items():
        kind = fields.get(k)
        if kind is None:
            out[k] = v
        elif v is None:
            continue
        elif isinstance(kind, str):
            if kind == MAP:
                out[k] = {str(mk): _map_value(mv) for mk, mv in _unwrap_map(v).items()}
            else:
                out[k] = _coerce(kind, v)
        else:
            tag = kind[0]
            if tag == LIST:
                out[k] = [_coerce(kind[1], x) for x in v]
            elif tag == "msg":
                out[k] = clean(kind[1], _unwrap(v))
            elif tag == "msgmap":
                out[k] = {str(mk): clean(kind[1], _unwrap(mv)) for mk, mv in _unwrap_map(v).items()}
            elif tag == "msglist":
                items = v._l if isinstance(v, MessageList) else v
                out[k] = [clean(kind[1], _unwrap(x)) for x in items]
    return out


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
        headers = self.object.headers
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
