"""Tyk's Python plugin API (``tyk.decorators``), provided by pipegate's Python runner.

Tyk plugins start with ``from tyk.decorators import *``; this package makes that import work
unchanged when the plugin runs under ``python3 -m pipegate_plugin``.
"""
