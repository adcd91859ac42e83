"""The Engine: one plugin manager, the op table built from it, and an optional tracer.

Several engines with different ops can live in one process; each has its own `Value` class,
so their Values cannot be mixed by accident. `opgraph.Value` belongs to the default engine,
created on first use.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, PluginLoadError
from .modes import ANOMALY
from .registry import AnyOp, OpTable, collect
from .value import Value

ENTRY_POINT_GROUP = "opgraph"


def builtin_plugins() -> list[Any]:
    from opgraph.plugins import BUILTIN_PLUGINS

    return list(BUILTIN_PLUGINS)


class Engine:
    """An autograd engine with its own plugins and op table.

    `plugins` are registered after the built-in ops (unless `builtins=False`);
    `entry_points=True` also loads installed plugins of the `opgraph` entry-point group,
    filtered by the `OPGRAPH_PLUGINS` environment variable.
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
        _value_class: type[Value] | None = None,
    ):
        self.name = name or f"engine-{next(self._names)}"
        self._detect_anomaly = detect_anomaly
        self.Value: type[Value] = _value_class or type("Value", (Value,), {"__slots__": ()})
        self.Value._engine = self
        if _value_class is None:
            self.Value._ids = itertools.count()
        self._lock = threading.RLock()
        self._tracer: Any = None
        self.pm = pluggy.PluginManager("opgraph")
        self.pm.add_hookspecs(hookspecs)
        self.ops: OpTable = OpTable({}, self.Value)
        for plugin in builtin_plugins() if builtins else ():
            self.pm.register(plugin)
        if entry_points:
            load_entry_points(self.pm)
        for plugin in plugins:
            self.pm.register(plugin)
        self._check_hooks()
        self.rebuild()

    def __repr__(self) -> str:
        return f"<Engine {self.name!r}: {len(self.ops)} ops>"

    # --- values ---------------------------------------------------------------------------

    def value(self, data: float, label: str = "") -> Value:
        """A new leaf Value of this engine."""
        return self.Value(data, label)

    # --- plugins and the op table ---------------------------------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Add a plugin at run time and rebuild the op table; returns the plugin's name.

        A plugin whose ops are rejected is unregistered again: the engine keeps its old ops.
        """
        with self._lock:
            registered = self.pm.register(plugin, name=name)
            try:
                self._check_hooks()
                self.rebuild()
            except Exception:
                self.pm.unregister(plugin)
                raise
            return registered

    def unregister(self, plugin: Any) -> None:
        """Remove a plugin (the object or its name) and rebuild the op table."""
        with self._lock:
            if isinstance(plugin, str):
                plugin = self.pm.get_plugin(plugin)
            self.pm.unregister(plugin)
            self.rebuild()

    def rebuild(self) -> None:
        """Ask every plugin for its ops and freeze them into a new op table.

        This is the only place that calls the `register_ops` hook. Each plugin is called on
        its own so that every op is known by the plugin that registered it.
        """
        with self._lock:
            definitions = collect(self._registrations())
            flags = ANOMALY if self._detect_anomaly else 0
            self.ops = OpTable(definitions, self.Value, flags)
            self.Value._ops = self.ops

    def _registrations(self) -> list[tuple[str, AnyOp, bool]]:
        registrations: list[tuple[str, AnyOp, bool]] = []
        # get_hookimpls() lists plugins in registration order: built-ins first.
        for impl in self.pm.hook.register_ops.get_hookimpls():

            def register(op: AnyOp, replace: bool = False, _plugin: str = impl.plugin_name):
                registrations.append((_plugin, op, replace))

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in register_ops: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        return registrations

    def _check_hooks(self) -> None:
        """Report hook functions whose names match no hook spec (a misspelled hook)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) if exc.plugin else "?"
            raise PluginError(f"plugin {name!r}: {exc}") from exc

    def plugin_names(self) -> list[str]:
        return [self.pm.get_name(p) for p in self.pm.get_plugins()]

    @property
    def detect_anomaly(self) -> bool:
        """When true, every op of this engine checks for nan and inf (see `detect_anomaly()`)."""
        return self._detect_anomaly

    @detect_anomaly.setter
    def detect_anomaly(self, enabled: bool) -> None:
        self._detect_anomaly = bool(enabled)
        self.rebuild()

    # --- tracing --------------------------------------------------------------------------

    @property
    def tracer(self) -> Any:
        """The object told about every node's forward and backward, or None (off)."""
        return self._tracer

    @tracer.setter
    def tracer(self, tracer: Any) -> None:
        self._tracer = tracer
        self.Value._tracer = tracer

    def serve(self, port: int = 8765, host: str = "127.0.0.1", **options: Any) -> Any:
        """Serve this engine's live trace to viewers; returns the running server.

        The server runs in a background thread; the result is a context manager with `.url`,
        `.port` and `.close()`. `port=0` picks a free port. Options: `record=path`,
        `token=`, `static_dir=`, `queue_limit=`, `max_nodes=` (see docs/tracing.md).
        """
        from opgraph.server.server import serve_engine

        return serve_engine(self, port=port, host=host, **options)


def load_entry_points(pm: pluggy.PluginManager, only: Sequence[str] | None = None) -> list[str]:
    """Register the installed plugins of the `opgraph` entry-point group.

    `only` (default: the comma list in OPGRAPH_PLUGINS, when set) names the entry points or
    distributions to load; an empty list loads none. Each entry point loads in its own try,
    so one broken plugin is reported by name instead of taking the engine down.
    """
    if only is None and "OPGRAPH_PLUGINS" in os.environ:
        only = [n.strip() for n in os.environ["OPGRAPH_PLUGINS"].split(",") if n.strip()]
    loaded = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if only is not None and ep.name not in only and dist not in only:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            raise PluginLoadError(
                f"plugin entry point {ep.name!r} ({ep.value}) from distribution "
                f"{dist} {version} failed to load: {type(exc).__name__}: {exc}. "
                f"To run without it, set OPGRAPH_PLUGINS to the plugins you want "
                f"(an empty value loads none)."
            ) from exc
        loaded.append(ep.name)
    return loaded


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
                    from .trace import from_environment

                    from_environment(_default)
    return _default
