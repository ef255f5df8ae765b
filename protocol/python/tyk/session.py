"""Tyk's session message, for plugins that import it by this name."""

from pipegate_plugin.objects import SessionState

TykSession = SessionState

__all__ = ["SessionState", "TykSession"]
