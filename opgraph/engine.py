"""The Engine: one plugin manager, the op table built from it, and an optional tracer.

Several engines with different ops can live in one process; each has its own `Value` class,
so their Values cannot be mixed by accident. `opgraph.Value` belongs to the default engine,
created on first use.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable
from typing import Any

from .binding import OpTable, install_operators
from .errors import PluginError, PluginLoadError
from .loading import (
    PluginFailure,
    PluginInfo,
    PluginManager,
    PluginSource,
    add_plugin,
    builtin_plugins,
    how_to_disable,
    load_entry_points,
    opgraph_distribution,
    record_failure,
    source_of,
)
from .loading import strict_plugins as strict_plugins_from_env
from .modes import ANOMALY
from .ops import AnyOp, collect
from .value import Value


class Engine:
    """An autograd engine with its own plugins and op table.

    `plugins` are registered after the built-in ops (unless `builtins=False`) and the
    installed plugins; `entry_points=True` loads installed plugins of the `opgraph`
    entry-point group, filtered by the `OPGRAPH_PLUGINS` environment variable.

    An installed plugin that fails to load is left out with a PluginLoadWarning (see
    `failed_plugins()`), unless `strict_plugins` (default: `OPGRAPH_STRICT_PLUGINS=1`) makes
    it a PluginLoadError. Plugins given in code are always checked strictly.
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
            strict_plugins = strict_plugins_from_env()
        self.strict_plugins = strict_plugins
        self.Value: type[Value] = _value_class or type("Value", (Value,), {"__slots__": ()})
        self.Value._engine = self
        if _value_class is None:
            self.Value._ids = itertools.count()
        self._lock = threading.RLock()
        self._tracer: Any = None
        self._registered: list[tuple[str, AnyOp, bool]] = []  # (plugin, op, replace) in order
        self.pm = PluginManager()
        self.ops: OpTable = OpTable({}, self.Value)
        # Built-ins first: a conflicting op of a later plugin is the one the error blames.
        for plugin in builtin_plugins() if builtins else ():
            add_plugin(self.pm, plugin, source=PluginSource(builtin=True, **opgraph_distribution()))
        if entry_points:
            load_entry_points(self.pm, strict=self.strict_plugins)
        for plugin in plugins:
            add_plugin(self.pm, plugin)
        self._first_build()

    def __repr__(self) -> str:
        return f"<Engine {self.name!r}: {len(self.ops)} ops>"

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
            registered = add_plugin(self.pm, plugin, name)
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
            source = self.pm.sources.pop(name, None)
            self.pm.unregister(obj)
            try:
                self.rebuild()
            except Exception:  # cannot happen with today's checks; keep the engine whole
                self.pm.register(obj, name=name)
                if source is not None:
                    self.pm.sources[name] = source
                raise

    def rebuild(self) -> None:
        """Ask every plugin for its ops and freeze them into a new op table.

        This is the only place that calls the `register_ops` hook. Each plugin is called on
        its own so that every op is known by the plugin that registered it.
        """
        with self._lock:
            registrations = self._registrations()
            try:
                definitions = collect(registrations)
            except PluginError as exc:
                blamed = self._blame_installed(exc)
                if blamed is exc:
                    raise
                raise blamed from exc
            self._bind(definitions)
            self._registered = registrations

    def _first_build(self) -> None:
        """Build the op table, leaving out (with a warning) each installed plugin whose ops
        are rejected or whose register_ops fails, unless plugins are strict."""
        while True:
            try:
                self.rebuild()
                return
            except PluginLoadError as exc:  # blamed on an installed plugin: drop it
                source = self.pm.sources.get(exc.plugin or "")
                if self.strict_plugins or source is None or source.entry_point is None:
                    raise
                self.pm.unregister(name=exc.plugin)
                del self.pm.sources[exc.plugin]
                record_failure(self.pm, exc.plugin, source, _first_line(exc), exc)

    def failed_plugins(self) -> list[PluginInfo]:
        """The installed plugins left out because they failed to load, with the reason."""
        return [failure.info() for failure in self.pm.failures.values()]

    def _bind(self, definitions: dict[str, AnyOp]) -> None:
        """Bind the ops to this engine's Value class, with the current tracer and flags.

        The bound functions hold the tracer and the anomaly flag as constants, so they are
        bound again whenever either changes: with tracing off, a node pays for no tracer.
        """
        flags = ANOMALY if self._detect_anomaly else 0
        self.ops = _EngineOpTable(definitions, self.Value, flags, self._tracer)
        self.ops._failures = tuple(self.pm.failures.values())
        self.Value._ops = self.ops
        install_operators(self.Value, self.ops)

    def _registrations(self) -> list[tuple[str, AnyOp, bool]]:
        registrations: list[tuple[str, AnyOp, bool]] = []
        impls: dict[str, list[Any]] = {}
        for impl in self.pm.hook.register_ops.get_hookimpls():
            impls.setdefault(impl.plugin_name, []).append(impl)
        # Plugins in registration order (built-ins first), whatever tryfirst/trylast say.
        for name, plugin in self.pm.list_name_plugin():
            for impl in impls.get(name, []) if plugin is not None else []:
                registrations.extend(self._call_register_ops(name, impl))
        return registrations

    def _call_register_ops(self, name: str, impl: Any) -> list[tuple[str, AnyOp, bool]]:
        found: list[tuple[str, AnyOp, bool]] = []
        open_ = True

        def register(op: AnyOp, *, replace: bool = False) -> None:
            if not open_:
                raise PluginError(
                    f"plugin {name!r} called register() after register_ops returned; "
                    f"register every op while the hook runs",
                    plugin=name,
                )
            found.append((name, op, bool(replace)))

        arguments = {"register": register}
        try:
            result = impl.function(*[arguments[arg] for arg in impl.argnames])
        except PluginError:
            raise
        except Exception as exc:
            raise self._blame_installed(
                PluginError(
                    f"plugin {name!r} failed in register_ops: {type(exc).__name__}: {exc}",
                    plugin=name,
                )
            ) from exc
        finally:
            open_ = False
        if result is not None:
            raise self._blame_installed(
                PluginError(
                    f"plugin {name!r}: register_ops returned {result!r}; it must call "
                    f"register(op) once per op and return nothing",
                    plugin=name,
                )
            )
        return found

    def _blame_installed(self, error: PluginError) -> PluginError:
        """Say where a failing plugin was installed from, and how to run without it."""
        source = self.pm.sources.get(error.plugin or "")
        if source is None or source.entry_point is None:
            return error
        return PluginLoadError(
            f"{error} -- plugin {error.plugin!r} is the entry point {source.entry_point!r} "
            f"of distribution {source.distribution} {source.version}. "
            f"{how_to_disable(error.plugin or '', source.distribution)}",
            plugin=error.plugin,
            op=error.op,
            entry_point=source.entry_point,
            distribution=source.distribution,
            version=source.version,
        )

    def plugin_names(self) -> list[str]:
        """The names of the registered plugins, in registration order."""
        return [name for name, plugin in self.pm.list_name_plugin() if plugin is not None]

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin with its distribution, version and the ops it registered."""
        ops: dict[str, list[str]] = {}
        replaces: dict[str, dict[str, str]] = {}
        owner: dict[str, str] = {}
        for plugin, op, replace in self._registered:
            ops.setdefault(plugin, []).append(op.name)
            if replace and op.name in owner:
                replaces.setdefault(plugin, {})[op.name] = owner[op.name]
            owner[op.name] = plugin
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            source = self.pm.sources.get(name) or source_of(plugin)
            hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ())
            infos.append(
                PluginInfo(
                    name=name,
                    distribution=source.distribution,
                    version=source.version,
                    entry_point=source.entry_point,
                    builtin=source.builtin,
                    hooks=hooks,
                    ops=ops.get(name, []),
                    replaces=replaces.get(name, {}),
                )
            )
        return infos

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
    def tracer(self) -> Any:
        """The object told about every node's forward and backward, or None (off)."""
        return self._tracer

    @tracer.setter
    def tracer(self, tracer: Any) -> None:
        with self._lock:
            self._tracer = tracer
            self.Value._tracer = tracer
            self._bind(self.ops.definitions)

    def serve(self, port: int = 8765, host: str = "127.0.0.1", **options: Any) -> Any:
        """Serve this engine's live trace to viewers; returns the running server.

        The server runs in a background thread; the result is a context manager with `.url`,
        `.port` and `.close()`. `port=0` picks a free port. Options: `record=path`,
        `token=`, `static_dir=`, `queue_limit=`, `max_nodes=` (see docs/tracing.md).
        """
        from .trace import serve

        return serve(port, host, engine=self, **options)


def _first_line(error: PluginLoadError) -> str:
    """A rebuild error without the "-- plugin ... is the entry point ..." it appends."""
    return str(error).split(" -- plugin ")[0]


class _EngineOpTable(OpTable):
    """The op table, whose "no op named ..." error names the installed plugins that failed
    to load: one of them may have provided the op."""

    _failures: tuple[PluginFailure, ...] = ()

    def _missing(self, name: str):
        try:
            super()._missing(name)
        except AttributeError as exc:
            exc.plugin_note = failed_plugins_note(self._failures)  # type: ignore[attr-defined]
            if exc.plugin_note:
                exc.args = (f"{exc}{exc.plugin_note}",)
            raise


def failed_plugins_note(failures: Iterable[PluginFailure]) -> str:
    """ "; plugin 'x' (...) failed to load: ...; it may have provided this op", or ""."""
    described = [failure.describe() for failure in failures]
    if not described:
        return ""
    they = "it" if len(described) == 1 else "one of them"
    return f"; {'; '.join(described)}; {they} may have provided this op"


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
