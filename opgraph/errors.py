"""Every error opgraph raises on purpose, in one place.

Each one names what it is about: the op, the plugin that provides it, and the labels of the
values involved, so that a user can find the culprit without reading a traceback.
"""

from __future__ import annotations

import sys
from typing import TypeVar


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


class OpConflictError(PluginError):
    """Two plugins registered an op of the same name, and the later did not ask to replace it.

    For an installed plugin only that op is left out (the first registration wins) with a
    `PluginLoadWarning`; for a plugin given in code it is raised."""


class PluginLoadWarning(UserWarning):
    """An installed plugin failed to load; the engine carries on without it.

    The message is the PluginLoadError's: the entry point, its distribution and version, the
    cause, and how to run without it. Set OPGRAPH_STRICT_PLUGINS=1 to make it an error.
    """


class OpError(OpgraphError):
    """A plugin's forward or derivative function failed; the original error is the cause."""


class NotDifferentiableError(OpError):
    """An op's derivative cannot itself be differentiated (it has no `value_derivative`), and
    `grad(..., create_graph=True)` was asked to go through it. First-order `backward()` and
    `grad()` work; the message names the op and its plugin."""


class HookError(OpgraphError, TypeError):
    """A gradient hook (`Value.register_hook`) returned something that is not a gradient."""


class AnomalyError(OpgraphError, FloatingPointError):
    """`detect_anomaly()` found a non-finite forward or backward result."""


class EngineMismatchError(OpgraphError, TypeError):
    """Values of two different engines were combined."""


class OperandError(OpgraphError, TypeError):
    """An op got an operand that is neither a Value nor a real number, or too many or too few
    operands (a TypeError, as Python's own operators raise)."""


class NotRealError(OpgraphError, TypeError):
    """A derivative returned a partial that is not a real number (backward reports it as an
    OpError naming the op and the node)."""


class PartialsCountError(OpgraphError, ValueError):
    """A derivative returned too many or too few partials (backward reports it as an OpError
    naming the op and the node)."""


class ReentrantBackwardError(OpgraphError, RuntimeError):
    """A backward pass (or zero_grad) was started inside another pass over the same nodes,
    from a gradient hook, where it would read and write that pass's half-done gradients; or
    two threads' passes, started from hooks, would wait for each other forever. Names the
    nodes of both passes."""


class GraphvizNotFoundError(OpgraphError, RuntimeError):
    """Rendering a drawing needs Graphviz's `dot` program, which is not installed."""


# ---------------------------------------------------------------------------------------------
# Messages about an op: every error that concerns an op at run time is worded here, so that
# each names the op (`Op.described`: its name, fixed arguments and plugin), the node and the
# inputs in the same words.


def node_name(node) -> str:
    """`node 'h'` for a labelled node, `node #12` (its id) for the others."""
    label = getattr(node, "label", "")
    return f"node {label!r}" if label else f"node #{node._id}"


def op_message(
    op, event: str, *, node=None, inputs=None, recorded: bool = False, detail: str = ""
) -> str:
    """`op 'pow' with b=-1 (plugin 'p') failed in backward at node 'h', inputs (0.0): ...`.

    `node` is a Value or already a description (`node 'h' (sample 3)`); `inputs` the values
    the op was applied to, `recorded` when they are those of a compiled graph's recording.
    """
    message = f"{op.described} {event}"
    if node is not None:
        message += f" at {node if isinstance(node, str) else node_name(node)}"
    if inputs is not None:
        shown = ", ".join(describe(v) for v in inputs)
        message += f", inputs{' as recorded' if recorded else ''} ({shown})"
    return f"{message}: {detail}" if detail else message


_E = TypeVar("_E", bound=OpgraphError)


def op_error(op, event: str, *, error: type[_E] = OpError, **where) -> _E:
    """The error `error` (OpError by default) with `op_message(op, event, **where)`."""
    return error(op_message(op, event, **where))


def registration_error(plugin: str, op: str, problem: str) -> PluginError:
    """`plugin 'p', op 'x': problem`: an op a plugin registers is malformed (before it has a
    plugin of its own, so before `described` can name it)."""
    return PluginError(f"plugin {plugin!r}, op {op!r}: {problem}", plugin=plugin, op=op)


def wrong_partials(expected: int, partials) -> str:
    """The problem of a derivative that returned the wrong number of partial derivatives."""
    return (
        f"derivative must return {expected} partial derivative(s), one per input, as a tuple; "
        f"it returned {partials!r}"
    )


def describe(value) -> str:
    """A value as an error message shows it: its data, and its label when it has one."""
    label = getattr(value, "label", "")
    data = getattr(value, "data", value)
    return f"{data!r} (label {label!r})" if label else repr(data)


def install_hint(package: str, extra: str) -> str:
    """How to install an optional `package` into this very Python, whether opgraph came
    from an index or from a clone (where `opgraph[extra]` means nothing to pip)."""
    python = sys.executable or "python"
    return (
        f"run {python} -m pip install {package} (or pip install 'opgraph[{extra}]' where "
        f"opgraph came from an index; in a clone, pip install -e '.[{extra}]')"
    )


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


class OptimizerError(OpgraphError, ValueError):
    """An optimiser (`opgraph.optim`) got parameters that are not Values, or a
    hyperparameter out of its range."""


class GradcheckError(OpgraphError, AssertionError):
    """An op's derivative disagrees with finite differences (or cannot be checked)."""


class ModeLeakError(OpgraphError, RuntimeError):
    """`with no_grad():` (or another mode) around a yield in a generator: the mode would stay
    on in the generator's caller while the generator is paused there."""


class InvalidEvent(OpgraphError, ValueError):
    """A map that breaks the protocol: `index` is its position, `field` the culprit."""

    def __init__(self, index: int, kind: str, field: str, problem: str):
        self.index, self.kind, self.field, self.problem = index, kind, field, problem
        where = f"event {index}" + (f" ({kind})" if kind else "")
        super().__init__(f"{where}: {field} {problem}" if field else f"{where}: {problem}")
