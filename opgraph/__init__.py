"""opgraph: a scalar autograd engine whose ops come from plugins.

>>> from opgraph import Value
>>> x = Value(2.0, label="x")
>>> y = x * x + 3 * x  # dy/dx = 2x + 3
>>> y.backward()
>>> x.grad
7.0
"""

import os as _os
from typing import TYPE_CHECKING

# An installed opgraph holds opgraph.plugins and opgraph.server in this folder; a source
# checkout keeps them beside it, in plugins/ and server/ (setuptools' package-dir maps them,
# docs/architecture.md). Imported from a checkout (`PYTHONPATH=.`, or the checkout's folder
# first on sys.path as with `python -m` there), look for them there too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "server")) and all(
    _os.path.isfile(_os.path.join(_checkout, folder, "__init__.py"))
    for folder in ("plugins", "server")
):
    __path__.append(_checkout)

from . import optim
from .compiler import BatchWarning, Compiled, CompileWarning, compile
from .engine import Engine, default_engine, serve, step, widget
from .errors import (
    AnomalyError,
    CompileError,
    EngineMismatchError,
    GradcheckError,
    GraphvizNotFoundError,
    HookError,
    InvalidEvent,
    NotDifferentiableError,
    OpConflictError,
    OperandError,
    OpError,
    OpgraphError,
    OptimizerError,
    PluginError,
    PluginLoadError,
    PluginLoadWarning,
    PublishError,
    ReentrantBackwardError,
    ServerError,
)
from .higher import grad, jvp
from .hookspecs import hookimpl, hookspec
from .modes import current_scope, detect_anomaly, enable_grad, grad_enabled, no_grad, scope
from .ops import Composite, Op
from .reverse import backward, topological_order, zero_grad
from .stored import ParameterStore
from .trace import touch
from .value import Value

if TYPE_CHECKING:  # at run time, draw_dot is loaded on first use (see __getattr__)
    from .viz import draw_dot

from .version import __version__ as __version__

__all__ = [
    "AnomalyError",
    "BatchWarning",
    "CompileError",
    "CompileWarning",
    "Compiled",
    "Composite",
    "Engine",
    "EngineMismatchError",
    "GradcheckError",
    "GraphvizNotFoundError",
    "HookError",
    "InvalidEvent",
    "NotDifferentiableError",
    "Op",
    "OpError",
    "OperandError",
    "OpgraphError",
    "OptimizerError",
    "ParameterStore",
    "PluginError",
    "OpConflictError",
    "PluginLoadError",
    "PluginLoadWarning",
    "PublishError",
    "ReentrantBackwardError",
    "ServerError",
    "Value",
    "backward",
    "compile",
    "current_scope",
    "default_engine",
    "detect_anomaly",
    "draw_dot",
    "enable_grad",
    "grad",
    "grad_enabled",
    "hookimpl",
    "hookspec",
    "jvp",
    "no_grad",
    "optim",
    "scope",
    "serve",
    "step",
    "topological_order",
    "touch",
    "widget",
    "zero_grad",
]


def __getattr__(name: str) -> object:
    # draw_dot imports the graphviz package, so it loads on first use, not with `import opgraph`
    if name == "draw_dot":
        from .viz import draw_dot

        return draw_dot
    raise AttributeError(f"module 'opgraph' has no attribute {name!r}")
