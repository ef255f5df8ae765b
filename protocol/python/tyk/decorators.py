"""Tyk's hook decorators: ``@Hook`` (and the older ``@Pre``, ``@Post``, ``@PostKeyAuth``,
``@CustomKeyCheck``) mark hook functions; ``@Event`` marks event handlers.

The runner finds hooks by scanning a plugin module for instances of these classes and calls them
by the function's argument count, as Tyk's Python dispatcher does:

- 3 arguments ``(request, session, spec)`` return ``(request, session)``;
- 4 arguments ``(request, session, metadata, spec)`` return ``(request, session, metadata)``
  (custom authentication: set ``metadata["token"]``);
- 5 arguments ``(request, response, session, metadata, spec)`` return ``response``.
"""

import inspect

__all__ = ["Hook", "Pre", "Post", "PostKeyAuth", "CustomKeyCheck", "Event", "HandlerDecorator"]


def _positional_count(f):
    """How many positional parameters ``f`` takes (bound ``self`` excluded)."""
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds)


class HandlerDecorator(object):
    """Common base of every hook decorator: remembers the function, its name and its arity."""

    def __init__(self, f):
        self.f = f
        self.name = getattr(f, "__name__", type(f).__name__)
        self.arg_count = _positional_count(f)
        self.__doc__ = getattr(f, "__doc__", None)

    def __call__(self, *args):
        return self.f(*args)

    def __repr__(self):
        return "<%s hook %s/%d>" % (type(self).__name__, self.name, self.arg_count)


class Hook(HandlerDecorator):
    """The current Tyk decorator for every hook type; the arity selects the calling convention."""


class Pre(HandlerDecorator):
    """Legacy Tyk decorator for pre hooks."""


class Post(HandlerDecorator):
    """Legacy Tyk decorator for post hooks."""


class PostKeyAuth(HandlerDecorator):
    """Legacy Tyk decorator for post-key-auth hooks."""


class CustomKeyCheck(HandlerDecorator):
    """Legacy Tyk decorator for custom authentication hooks."""


class Event(object):
    """Marks an event handler ``f(event, spec)``; ``event.message`` holds the event details."""

    def __init__(self, f):
        self.f = f
        self.name = getattr(f, "__name__", type(f).__name__)

    def __call__(self, event, spec):
        return self.f(event, spec)

    def __repr__(self):
        return "<Event handler %s>" % self.name
