"""Tyk's ``gateway`` module (``from gateway import TykGateway as tyk``) for plugins run by pipegate.

In Tyk these calls go into the gateway process through cgo. A pipegate plugin is a separate
process, so they are implemented locally:

- ``log`` / ``log_error`` write one line to stderr, which the gateway logs with the plugin's name
  and pid (stdout carries the protocol, so the runner sends stray prints to stderr too);
- ``store_data`` / ``get_data`` keep values **in this process's memory only** (with the TTL
  honoured). They are not shared with the gateway's Redis or with other gateway nodes, and they are
  lost when the plugin restarts;
- ``trigger_event`` is a **no-op** that logs a warning: pipegate plugins cannot fire gateway events.
"""

import sys
import threading
import time
import traceback

_LEVELS = ("debug", "info", "warning", "warn", "error", "fatal")


class TykGateway(object):
    """Tyk's gateway API as class methods, the way Tyk plugins call them."""

    _store = {}
    _store_lock = threading.Lock()

    @classmethod
    def log(cls, msg, level="info"):
        """Write ``msg`` to stderr as one line tagged with ``level``."""
        level = str(level).lower() if level else "info"
        if level not in _LEVELS:
            level = "info"
        text = str(msg).replace("\n", "\\n")
        try:
            sys.stderr.write("level=%s msg=%s\n" % (level, text))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    @classmethod
    def log_error(cls, *args):
        """Log an error; like Tyk, append the exception being handled (if any)."""
        etype, evalue, _ = sys.exc_info()
        if len(args) == 1 or etype is None:
            cls.log(" ".join(str(a) for a in args) or "error", "error")
        elif not args:
            cls.log("%s %s" % (etype, evalue), "error")
        else:
            cls.log("%s %s %s" % (args[0], etype, evalue), "error")
        if etype is not None:
            traceback.print_exc(file=sys.stderr)

    @classmethod
    def store_data(cls, key, value, ttl):
        """Keep ``value`` under ``key`` for ``ttl`` seconds (0 or less: no expiry), in memory only."""
        try:
            ttl = float(ttl)
        except (TypeError, ValueError):
            ttl = 0.0
        expires = time.monotonic() + ttl if ttl > 0 else None
        with cls._store_lock:
            cls._store[key] = (value, expires)

    @classmethod
    def get_data(cls, key):
        """The value stored under ``key``, or ``""`` when missing or expired (as Tyk returns)."""
        with cls._store_lock:
            item = cls._store.get(key)
            if item is None:
                return ""
            value, expires = item
            if expires is not None and time.monotonic() >= expires:
                del cls._store[key]
                return ""
            return value

    @classmethod
    def trigger_event(cls, event_name, payload):
        """Not supported by pipegate's pipe protocol: logged and dropped."""
        cls.log(
            "trigger_event(%r) is not supported by pipegate plugins; event dropped" % (event_name,),
            "warning",
        )
