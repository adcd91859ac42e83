"""The Engine: one plugin manager, the op table built from it, and an optional tracer.

Several engines with different ops can live in one process; each has its own `Value` class,
so their Values cannot be mixed by accident. `opgraph.Value` belongs to the default engine,
created on first use.
"""

from __future__ import annotations

import itertools
import os
import pickle
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import loading
from .binding import OpTable, check_value_derivatives, install_operators
from .errors import PluginError
from .loading import PluginInfo
from .modes import ANOMALY
from .ops import AnyOp, collect
from .trace.serving import from_environment, serve_engine, widget_of
from .value import Above, Value

if TYPE_CHECKING:
    from .contracts import TracerHooks, TraceServing


class Engine:
    """An autograd engine with its own plugins and op table.

    `plugins` are registered after the built-in ops (unless `builtins=False`) and the
    installed plugins (unless `entry_points=False`). An installed plugin that fails to load
    is left out with a warning (`failed_plugins()`), unless `strict_plugins` (default:
    `OPGRAPH_STRICT_PLUGINS=1`); see loading.py.
    """

    _names = itertools.count(1)

    def __init__(
        self,
        plugins: Iterable[Any] = (),
        *,
        entry_points: bool = True,
        builtins: bool = True,
        name: str | None = None,
        detect_anomaly: bool = False,
        strict_plugins: bool | None = None,
        _value_class: type[Value] | None = None,
    ):
        self.name = name or f"engine-{next(self._names)}"
        self._detect_anomaly = detect_anomaly
        if strict_plugins is None:
            strict_plugins = loading.strict_plugins()
        self.strict_plugins = strict_plugins
        self.Value: type[Value] = _value_class or type("Value", (Value,), {"__slots__": ()})
        self.Value._engine = self
        if _value_class is None:
            self.Value._ids = itertools.count()
        self._lock = threading.RLock()
        self._tracer: TracerHooks | None = None
        self._registered: list[tuple[str, AnyOp, bool]] = []  # (plugin, op, replace) in order
        self.pm = loading.PluginManager()
        self.ops: OpTable = OpTable({}, self.Value)
        loading.load(self, plugins, builtins=builtins, entry_points=entry_points)

    def __repr__(self) -> str:
        return f"<Engine {self.name!r}: {len(self.ops)} ops>"

    # An engine is shared by everything built on it, as a module is: a copy of a model keeps
    # the model's engine, and a pickle names the default engine. Another engine's plugins
    # and ops live only in this process, so its models (and Values) are not pickled.
    def __copy__(self) -> Engine:
        return self

    def __deepcopy__(self, memo: dict) -> Engine:
        return self

    def __reduce__(self) -> tuple:
        if self is _default:
            return (default_engine, ())
        raise pickle.PicklingError(
            f"engine {self.name!r} cannot be pickled: only models of the default engine can "
            f"(an engine's plugins live in its process)"
        )

    # --- values ---------------------------------------------------------------------------

    def value(self, data: float, label: str = "") -> Value:
        """A new leaf Value of this engine."""
        return self.Value(data, label)

    # --- plugins and the op table ---------------------------------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Add a plugin at run time and rebuild the op table; returns the plugin's name.

        A plugin whose hooks or ops are rejected is unregistered again: the engine keeps its
        old ops, and the PluginError names the plugin (and the op).
        """
        with self._lock:
            registered = loading.add_plugin(self.pm, plugin, name)
            try:
                self.rebuild()
            except Exception:
                self.pm.unregister(plugin)
                raise
            return registered

    def unregister(self, plugin: Any) -> None:
        """Remove a plugin (the object or its name) and rebuild the op table."""
        with self._lock:
            name = plugin if isinstance(plugin, str) else self.pm.get_name(plugin)
            obj = self.pm.get_plugin(name) if name is not None else None
            if obj is None:
                raise PluginError(
                    f"no plugin {plugin!r} is registered on engine {self.name!r}; "
                    f"registered: {', '.join(self.plugin_names()) or 'none'}"
                )
            self.pm.unregister(obj)
            try:
                self.rebuild()
            except Exception:  # cannot happen with today's checks; keep the engine whole
                self.pm.register(obj, name=name)
                raise

    def rebuild(self) -> None:
        """Ask every plugin for its ops (the only call of the `register_ops` hook) and freeze
        them into a new op table."""
        with self._lock:
            registrations = loading.call_register_ops(self.pm)
            left_out = self.pm.left_out  # ops of installed plugins in conflict (loading.py)
            definitions = collect(registrations, left_out)
            check_value_derivatives(definitions)
            self._bind(definitions)
            self._registered = [
                (plugin, op, replace)
                for plugin, op, replace in registrations
                if (plugin, op.name) not in left_out
            ]

    def _bind(self, definitions: dict[str, AnyOp]) -> None:
        """Bind the ops to this engine's Value class, with the current tracer and flags.

        The bound functions hold the tracer and the anomaly flag as constants, so they are
        bound again whenever either changes: with tracing off, a node pays for no tracer.
        """
        flags = ANOMALY if self._detect_anomaly else 0
        self.ops = _EngineOpTable(definitions, self.Value, flags, self._tracer)
        self.ops.failures = self.pm.failures
        self.Value._ops = self.ops
        install_operators(self.Value, self.ops)

    def plugin_names(self) -> list[str]:
        """The names of the registered plugins, in registration order."""
        return [name for name, plugin in self.pm.list_name_plugin() if plugin is not None]

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin with its distribution, version and the ops it registered."""
        return loading.plugin_infos(self.pm, self._registered)

    def failed_plugins(self) -> list[PluginInfo]:
        """The installed plugins left out because they failed to load, with the reason."""
        return loading.failed_infos(self.pm)

    @property
    def detect_anomaly(self) -> bool:
        """When true, every op of this engine checks for nan and inf (see `detect_anomaly()`)."""
        return self._detect_anomaly

    @detect_anomaly.setter
    def detect_anomaly(self, enabled: bool) -> None:
        with self._lock:
            self._detect_anomaly = bool(enabled)
            self._bind(self.ops.definitions)

    # --- tracing --------------------------------------------------------------------------

    @property
    def tracer(self) -> TracerHooks | None:
        """The object told about every node's forward and backward, or None (off)."""
        return self._tracer

    @tracer.setter
    def tracer(self, tracer: TracerHooks | None) -> None:
        with self._lock:
            self._tracer = tracer
            self.Value._tracer = tracer
            self._bind(self.ops.definitions)

    def serve(self, port: int = 8765, host: str = "127.0.0.1", **options: Any) -> TraceServing:
        """Serve this engine's live trace to viewers; returns the running server.

        The server runs in a background thread; the result is a context manager with `.url`,
        `.port` and `.close()`. `port=0` picks a free port. Options: `record=path`,
        `token=`, `static_dir=`, `queue_limit=`, `max_nodes=`, `dtype="f4"` (a training
        step's numbers as float32) (see docs/tracing.md).
        """
        return serve_engine(self, port, host, **options)


class _EngineOpTable(OpTable):
    """The op table, whose "no op named ..." error names the installed plugins that failed
    to load: one of them may have provided the op."""

    failures: dict[str, Any] = {}

    def _missing(self, name: str):
        try:
            super()._missing(name)
        except AttributeError as exc:
            exc.plugin_note = loading.failures_note(self.failures)  # pyright: ignore[reportAttributeAccessIssue]
            exc.args = (f"{exc}{exc.plugin_note}",)  # pyright: ignore[reportAttributeAccessIssue]
            raise


_default: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The engine behind `opgraph.Value`, created on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Engine(name="default", _value_class=Value)
                if os.environ.get("OPGRAPH_TRACE"):
                    from_environment(_default)
    return _default


def serve(
    port: int = 8765,
    host: str = "127.0.0.1",
    *,
    engine: Engine | None = None,
    **options: Any,
) -> Any:
    """Serve the trace of `engine` (default: the default engine); see `Engine.serve`."""
    return (engine or default_engine()).serve(port, host, **options)


def widget(engine: Engine | None = None, **options: Any) -> Any:
    """The live viewer of `engine`'s trace (default: the default engine) as a notebook widget,
    streamed through the kernel: no port, no server (docs/notebook.md). It needs anywidget
    (`pip install 'opgraph[notebook]'`). Options are `serve()`'s that do not name a socket
    (`queue_limit=`, `max_nodes=`, `record=` ...); every widget of one engine shares its trace.
    """
    return widget_of(engine or default_engine(), **options)


def step(engine: Engine | None = None) -> None:
    """Mark the end of a training step for the trace of `engine` (default: the default
    engine). A no-op when the engine is not traced.

    A step normally ends with each backward pass (docs/tracing.md, "Steps"). Once a program
    calls `step()`, the engine's steps end only where it calls it: all the passes of a step
    (gradient accumulation: one per micro-batch) are sent as one, whose grads are the sum of
    theirs and whose root is the last pass's.
    """
    tracer = (engine or default_engine()).tracer
    if tracer is not None:
        tracer.end_step()


Above.default_engine = default_engine  # for Value, which cannot import this module
