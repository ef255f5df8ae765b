"""pipegate's Python plugin SDK.

Run Tyk-style Python plugins unchanged under pipegate::

    python3 -m pipegate_plugin my_plugin.py

The gateway starts that command as its plugin child (``coprocess_options.pipe_command``) and speaks
the pipe protocol with it; see ``pipegate_plugin.runner`` for what the runner does, and
``pipegate_plugin.objects`` for the protobuf-like objects hooks receive.
"""

from .objects import (
    AccessDefinition,
    AccessSpec,
    BasicAuthData,
    Header,
    JWTData,
    MiniRequestObject,
    Monitor,
    Object,
    ResponseObject,
    ReturnOverrides,
    SessionState,
    TykCoProcessRequest,
)
from .runner import Registry, Runner, main, run_hook
from .wire import PROTOCOL_VERSION

__version__ = "0.1.0"

__all__ = [
    "AccessDefinition",
    "AccessSpec",
    "BasicAuthData",
    "Header",
    "JWTData",
    "MiniRequestObject",
    "Monitor",
    "Object",
    "ResponseObject",
    "ReturnOverrides",
    "SessionState",
    "TykCoProcessRequest",
    "Registry",
    "Runner",
    "main",
    "run_hook",
    "PROTOCOL_VERSION",
]
