"""The Engine: one plugin manager, the op table built from it, and an optional tracer.

Several engines with different ops can live in one process; each has its own `Value` class,
so their Values cannot be mixed by accident. `opgraph.Value` belongs to the default engine,
created on first use.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import os
import re
import threading
import types
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
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


@dataclass(frozen=True)
class PluginSource:
    """Where a registered plugin came from: a built-in, an entry point, or given in code."""

    builtin: bool = False
    entry_point: str | None = None  # "name = module:attr"
    distribution: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class PluginInfo:
    """One plugin of an engine, as `engine.plugins()` and `opgraph plugins` list it."""

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None
    builtin: bool
    hooks: list[str]
    ops: list[str]  # the ops it registered, in order
    replaces: dict[str, str] = field(default_factory=dict)  # op -> plugin it replaced

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the `opgraph` hooks, remembering where each plugin came from."""

    def __init__(self) -> None:
        super().__init__("opgraph")
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginSource] = {}

    def get_canonical_name(self, plugin: Any) -> str:
        # pluggy names an object without `__name__` (a class instance) by its id(), which
        # would make error messages say "plugin '139794187515408'"; use its class instead,
        # numbered from the second instance on.
        name = getattr(plugin, "__name__", None)
        if isinstance(name, str) and name:
            return name
        name = base = f"{type(plugin).__module__}.{type(plugin).__qualname__}"
        copies = itertools.count(2)
        while self.has_plugin(name):
            name = f"{base}-{next(copies)}"
        return name


def add_plugin(
    pm: pluggy.PluginManager,
    plugin: Any,
    name: str | None = None,
    source: PluginSource | None = None,
) -> str:
    """Check a plugin's hook functions, then register it; returns its name.

    Every mistake is reported here, naming the plugin: a hook function with a misspelled
    name, one whose argument names the hook does not provide, a plugin with no hook at all,
    a plugin registered twice.
    """
    if plugin is None:
        raise PluginError("cannot register None as a plugin")
    name = name or pm.get_canonical_name(plugin)
    if pm.has_plugin(name):
        raise PluginError(f"a plugin named {name!r} is already registered", plugin=name)
    if pm.is_registered(plugin):
        raise PluginError(
            f"plugin {name!r} is already registered as {pm.get_name(plugin)!r}", plugin=name
        )
    check_hooks(pm, plugin, name)
    # check_hooks() reports every problem pluggy's own validation and check_pending() would,
    # with clearer messages; theirs stay as a net.
    try:
        pm.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise _unregistrable(name, exc) from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # blame the plugin at fault, maybe another
        culprit = (pm.get_name(exc.plugin) if exc.plugin is not None else None) or name
        pm.unregister(plugin)
        raise _unregistrable(culprit, exc) from exc
    if source is not None and hasattr(pm, "sources"):
        pm.sources[name] = source
    return name


def _unregistrable(name: str, exc: Exception) -> PluginError:
    message = " ".join(str(exc).split())
    return PluginError(f"plugin {name!r} cannot be registered: {message}", plugin=name)


def hook_specs(pm: pluggy.PluginManager) -> dict[str, inspect.Signature]:
    """Each opgraph hook and the signature of its spec."""
    specs = {}
    for hook_name in dir(pm.hook):
        caller = getattr(pm.hook, hook_name)
        if not hook_name.startswith("_") and getattr(caller, "spec", None) is not None:
            specs[hook_name] = inspect.signature(caller.spec.function)
    return specs


def check_hooks(pm: pluggy.PluginManager, plugin: Any, name: str) -> list[str]:
    """The hooks a plugin implements, or a PluginError that says what is wrong with them."""
    specs = hook_specs(pm)
    implemented = []
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            continue
        hook = opts.get("specname") or attr
        if hook not in specs:
            if opts.get("optionalhook"):
                continue
            close = difflib.get_close_matches(hook, specs, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PluginError(
                f"plugin {name!r} implements {hook!r}, which is not an opgraph hook{hint} "
                f"(hooks: {', '.join(f'{h}{sig}' for h, sig in specs.items())})",
                plugin=name,
            )
        spec = specs[hook]
        function = getattr(plugin, attr)
        required = _required_arguments(function)
        unknown = [arg for arg in required if arg not in spec.parameters]
        if unknown:
            raise PluginError(
                f"plugin {name!r}: its hook function {attr}{_signature(function)} takes "
                f"{', '.join(map(repr, unknown))}, which the hook does not pass; "
                f"define it as {hook}{spec} (argument names matter: the hook passes them by name)",
                plugin=name,
            )
        if opts.get("wrapper") or opts.get("hookwrapper"):
            raise PluginError(
                f"plugin {name!r}: {hook} cannot be a wrapper; drop wrapper=/hookwrapper=",
                plugin=name,
            )
        implemented.append(hook)
    if not implemented:
        unmarked = [h for h in specs if callable(getattr(plugin, h, None))]
        hint = (
            f"; its function {unmarked[0]} is not marked with @opgraph.hookimpl"
            if unmarked
            else f"; give it a function marked @opgraph.hookimpl, such as {next(iter(specs))}"
        )
        raise PluginError(f"plugin {name!r} implements no opgraph hook{hint}", plugin=name)
    return implemented


def _required_arguments(function: Any) -> list[str]:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return []
    names = [
        p.name
        for p in parameters
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    # An unbound method of a class registered as a plugin: pluggy drops `self`, as we do.
    if names and names[0] == "self" and "." in getattr(function, "__qualname__", ""):
        names = names[1:]
    return names


def _signature(function: Any) -> str:
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return "(...)"


class Engine:
    """An autograd engine with its own plugins and op table.

    `plugins` are registered after the built-in ops (unless `builtins=False`) and the
    installed plugins; `entry_points=True` loads installed plugins of the `opgraph`
    entry-point group, filtered by the `OPGRAPH_PLUGINS` environment variable.
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
        self._registered: list[tuple[str, AnyOp, bool]] = []  # (plugin, op, replace) in order
        self.pm = PluginManager()
        self.ops: OpTable = OpTable({}, self.Value)
        # Built-ins first: a conflicting op of a later plugin is the one the error blames.
        for plugin in builtin_plugins() if builtins else ():
            add_plugin(self.pm, plugin, source=PluginSource(builtin=True, **_opgraph_dist()))
        if entry_points:
            load_entry_points(self.pm)
        for plugin in plugins:
            add_plugin(self.pm, plugin)
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
            flags = ANOMALY if self._detect_anomaly else 0
            self.ops = OpTable(definitions, self.Value, flags)
            self.Value._ops = self.ops
            self._registered = registrations

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
            f"{_how_to_disable(error.plugin or '', source.distribution)}",
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
            source = self.pm.sources.get(name) or _source_of(plugin)
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


def _normalize(name: str) -> str:
    """A name as PEP 503 compares them: `opgraph_Trig` is `opgraph-trig`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def selected_plugins() -> list[str] | None:
    """The names in OPGRAPH_PLUGINS, or None when it is not set (load every plugin)."""
    if "OPGRAPH_PLUGINS" not in os.environ:
        return None
    return [n.strip() for n in os.environ["OPGRAPH_PLUGINS"].split(",") if n.strip()]


def _how_to_disable(plugin: str, distribution: str | None) -> str:
    """A hint the user can paste: OPGRAPH_PLUGINS listing every plugin but the failing one."""
    selected = selected_plugins()
    names = [ep.name for ep in installed_entry_points()] if selected is None else selected
    failing = {_normalize(plugin), _normalize(distribution or plugin)}
    others = [name for name in names if _normalize(name) not in failing]
    return (
        f"To run without it, set OPGRAPH_PLUGINS={','.join(others)} (the other installed "
        f"plugins to load; an empty value loads none), or uninstall {distribution or 'it'}."
    )


def installed_entry_points() -> list[metadata.EntryPoint]:
    """The installed entry points of the `opgraph` group, in a stable order."""
    found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted(found, key=lambda ep: (_normalize(ep.dist.name) if ep.dist else "", ep.name))


def load_entry_points(pm: pluggy.PluginManager, only: Sequence[str] | None = None) -> list[str]:
    """Register the installed plugins of the `opgraph` entry-point group; returns their names.

    `only` (default: the comma list in OPGRAPH_PLUGINS, when set) names the entry points or
    distributions to load; an empty list loads none. Each entry point loads in its own try:
    a plugin that fails to import or to register raises PluginLoadError naming the entry
    point, its distribution and version, with the original exception as its cause.
    """
    if only is None:
        only = selected_plugins()
    wanted = None if only is None else {_normalize(n) for n in only}
    matched: set[str] = set()
    loaded = []
    for ep in installed_entry_points():
        dist = ep.dist.name if ep.dist else None
        version = ep.dist.version if ep.dist else None
        keys = {_normalize(ep.name), _normalize(dist or "")}
        if wanted is not None:
            if not keys & wanted:
                continue
            matched |= keys & wanted
        source = PluginSource(
            entry_point=f"{ep.name} = {ep.value}", distribution=dist, version=version
        )
        if pm.is_blocked(ep.name):
            continue
        if pm.has_plugin(ep.name):
            earlier = getattr(pm, "sources", {}).get(ep.name)
            if earlier == source:  # loaded by an earlier call
                continue
            where = f"distribution {earlier.distribution}" if earlier else "another plugin"
            raise PluginLoadError(
                f"two plugins are named {ep.name!r}: the entry point {ep.name} = {ep.value} of "
                f"distribution {dist} {version}, and {where}; uninstall one of them, or "
                f"choose one with OPGRAPH_PLUGINS",
                plugin=ep.name,
                entry_point=source.entry_point,
                distribution=dist,
                version=version,
            )
        try:
            plugin = ep.load()
            add_plugin(pm, plugin, name=ep.name, source=source)
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {ep.name!r} (entry point {ep.name} = {ep.value}, distribution "
                f"{dist} {version}) failed to load: {type(exc).__name__}: {exc}. "
                f"{_how_to_disable(ep.name, dist)}",
                plugin=ep.name,
                entry_point=f"{ep.name} = {ep.value}",
                distribution=dist,
                version=version,
            ) from exc
        loaded.append(ep.name)
    if wanted is not None and wanted - matched:
        installed = ", ".join(ep.name for ep in installed_entry_points()) or "none"
        warnings.warn(
            f"OPGRAPH_PLUGINS names {', '.join(sorted(wanted - matched))}, which no installed "
            f"plugin matches (installed entry points: {installed})",
            stacklevel=2,
        )
    return loaded


def _opgraph_dist() -> dict[str, str]:
    from . import __version__

    return {"distribution": "opgraph", "version": __version__}


def _source_of(plugin: Any) -> PluginSource:
    """Find the distribution of a plugin registered in code, from its top-level package."""
    module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
    if not isinstance(plugin, types.ModuleType) and inspect.isclass(plugin):
        module = plugin.__module__
    top = (module or "").partition(".")[0]
    dists = metadata.packages_distributions().get(top, [])
    if not dists:
        return PluginSource()
    try:
        return PluginSource(distribution=dists[0], version=metadata.version(dists[0]))
    except metadata.PackageNotFoundError:
        return PluginSource(distribution=dists[0])


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
