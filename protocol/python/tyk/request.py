"""Tyk's request wrapper, for plugins that import it by this name."""

from pipegate_plugin.objects import TykCoProcessRequest

__all__ = ["TykCoProcessRequest"]
