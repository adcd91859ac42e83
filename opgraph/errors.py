"""Every error opgraph raises on purpose, in one place.

Each one names what it is about: the op, the plugin that provides it, and the labels of the
values involved, so that a user can find the culprit without reading a traceback.
"""

from __future__ import annotations


class OpgraphError(Exception):
    """Base class of opgraph's own errors."""


class PluginError(OpgraphError):
    """A plugin registered something malformed or conflicting.

    `plugin` is the name of the plugin to blame and `op` the name of the op, when known.
    """

    def __init__(self, message: str, *, plugin: str | None = None, op: str | None = None):
        super().__init__(message)
        self.plugin = plugin
        self.op = op


class PluginLoadError(PluginError):
    """An installed plugin (an entry point of the `opgraph` group) could not be loaded.

    The original exception is the cause (`__cause__`); `entry_point`, `distribution` and
    `version` say where the plugin comes from.
    """

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        op: str | None = None,
        entry_point: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
    ):
        super().__init__(message, plugin=plugin, op=op)
        self.entry_point = entry_point
        self.distribution = distribution
        self.version = version


class PluginLoadWarning(UserWarning):
    """An installed plugin failed to load; the engine carries on without it.

    The message is the PluginLoadError's: the entry point, its distribution and version, the
    cause, and how to run without it. Set OPGRAPH_STRICT_PLUGINS=1 to make it an error.
    """


class OpError(OpgraphError):
    """A plugin's forward or derivative function failed; the original error is the cause."""


class AnomalyError(OpgraphError, FloatingPointError):
    """`detect_anomaly()` found a non-finite forward or backward result."""


class EngineMismatchError(OpgraphError, TypeError):
    """Values of two different engines were combined."""


class GraphvizNotFoundError(OpgraphError, RuntimeError):
    """Rendering a drawing needs Graphviz's `dot` program, which is not installed."""


def describe(value) -> str:
    """A value as an error message shows it: its data, and its label when it has one."""
    label = getattr(value, "_label", "")
    data = getattr(value, "data", value)
    return f"{data!r} (label {label!r})" if label else repr(data)


# --- errors of the tracing server, the publisher, compile and gradcheck ---------------------
# (Defined here so that `except opgraph.OpgraphError` catches them all; each is also
# importable from the module that raises it.)


class ServerError(OpgraphError):
    """A trace server could not start (address in use, bad option, engine already traced)."""


class PublishError(OpgraphError):
    """A hub cannot be published to (a sentence, never empty); the publisher reports it on
    stderr and reconnects or stops tracing, so it rarely reaches the program."""


class CompileError(OpgraphError):
    """A function cannot be compiled faithfully, or a compiled function got other arguments."""


class GradcheckError(OpgraphError, AssertionError):
    """An op's derivative disagrees with finite differences (or cannot be checked)."""


class InvalidEvent(OpgraphError, ValueError):
    """A map that breaks the protocol: `index` is its position, `field` the culprit."""

    def __init__(self, index: int, kind: str, field: str, problem: str):
        self.index, self.kind, self.field, self.problem = index, kind, field, problem
        where = f"event {index}" + (f" ({kind})" if kind else "")
        super().__init__(f"{where}: {field} {problem}" if field else f"{where}: {problem}")
