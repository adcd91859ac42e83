"""Every error opgraph raises on purpose, in one place.

Each one names what it is about: the op, the plugin that provides it, and the labels of the
values involved, so that a user can find the culprit without reading a traceback.
"""

from __future__ import annotations


class OpgraphError(Exception):
    """Base class of opgraph's own errors."""


class PluginError(OpgraphError):
    """A plugin registered something malformed or conflicting."""


class PluginLoadError(PluginError):
    """An installed plugin (an entry point of the `opgraph` group) could not be loaded."""


class OpError(OpgraphError):
    """A plugin's forward or derivative function failed; the original error is the cause."""


class AnomalyError(OpgraphError, FloatingPointError):
    """`detect_anomaly()` found a non-finite forward or backward result."""


class EngineMismatchError(OpgraphError, TypeError):
    """Values of two different engines were combined."""


def describe(value) -> str:
    """A value as an error message shows it: its data, and its label when it has one."""
    label = getattr(value, "_label", "")
    data = getattr(value, "data", value)
    return f"{data!r} (label {label!r})" if label else repr(data)


class GraphvizNotFoundError(OpgraphError, RuntimeError):
    """Rendering a drawing needs Graphviz's `dot` program, which is not installed."""
