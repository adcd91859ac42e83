"""opgraph: a scalar autograd engine whose ops come from plugins.

from opgraph import Value
x = Value(2.0, label="x")
y = (x * x + x.exp()).tanh()
y.backward()
print(x.grad)
"""

from .backward import backward, topological_order, zero_grad
from .engine import Engine, default_engine
from .errors import (
    AnomalyError,
    EngineMismatchError,
    OpError,
    OpgraphError,
    PluginError,
    PluginLoadError,
)
from .hookspecs import hookimpl, hookspec
from .modes import detect_anomaly, enable_grad, grad_enabled, no_grad
from .registry import Composite, Op
from .trace import serve, touch
from .value import Value

__version__ = "0.1.0"

__all__ = [
    "AnomalyError",
    "Composite",
    "Engine",
    "EngineMismatchError",
    "Op",
    "OpError",
    "OpgraphError",
    "PluginError",
    "PluginLoadError",
    "Value",
    "backward",
    "default_engine",
    "detect_anomaly",
    "enable_grad",
    "grad_enabled",
    "hookimpl",
    "hookspec",
    "no_grad",
    "serve",
    "topological_order",
    "touch",
    "zero_grad",
]
