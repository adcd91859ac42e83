"""Plugin discovery and registration: the pluggy side of opgraph.

Where plugins come from (the built-ins, the `opgraph` entry-point group filtered by
OPGRAPH_PLUGINS, or code), the checks a plugin's hook functions pass before it is registered,
and the record of where each registered plugin came from. The engine turns the registered
plugins into its op table (engine.py); nothing here runs per op.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import os
import re
import types
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, PluginLoadError, PluginLoadWarning

ENTRY_POINT_GROUP = "opgraph"
STRICT_VARIABLE = "OPGRAPH_STRICT_PLUGINS"


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
    error: str | None = None  # why an installed plugin failed to load (then it has no ops)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PluginFailure:
    """An installed plugin that failed to load or to register its ops, and why."""

    name: str
    source: PluginSource
    reason: str  # the cause, in one line: "ModuleNotFoundError: No module named 'scipy'"
    error: PluginLoadError  # the full message, with how to run without it

    def describe(self) -> str:
        """The plugin and its cause, as the "no op named ..." error mentions it."""
        where = f"entry point {self.source.entry_point}"
        if self.source.distribution:
            where += f", distribution {self.source.distribution} {self.source.version}"
        return f"plugin {self.name!r} ({where}) failed to load: {self.reason}"

    def info(self) -> PluginInfo:
        return PluginInfo(
            name=self.name,
            distribution=self.source.distribution,
            version=self.source.version,
            entry_point=self.source.entry_point,
            builtin=False,
            hooks=[],
            ops=[],
            error=str(self.error),
        )


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the `opgraph` hooks, remembering where each plugin came from
    and which installed plugins failed to load."""

    def __init__(self) -> None:
        super().__init__("opgraph")
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginSource] = {}
        self.failures: dict[str, PluginFailure] = {}

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
    if _is_hook_function(pm, plugin):
        raise PluginError(
            f"plugin {name!r} is the function {plugin.__name__} itself; register the module "
            f"(or object) that holds it, such as {plugin.__module__}",
            plugin=name,
        )
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
        _check_class_style(plugin, name, attr, spec)
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


def _is_hook_function(pm: pluggy.PluginManager, plugin: Any) -> bool:
    """Whether `plugin` is a hook function (`register_ops`) rather than what holds it."""
    marked = getattr(plugin, f"{pm.project_name}_impl", None) is not None
    return inspect.isfunction(plugin) and (marked or plugin.__name__ in hook_specs(pm))


def _check_class_style(plugin: Any, name: str, attr: str, spec: inspect.Signature) -> None:
    """Catch the two ways of mixing up `self` in a class plugin, which Python reports only
    later and obscurely ("'MyOps' object is not callable", or a missing argument).

    A class plugin is an instance whose hook methods take `self`:
    `engine.register(MyOps())` with `def register_ops(self, register)`.
    """
    if isinstance(plugin, types.ModuleType):
        return
    definition = f"def {attr}(self, {', '.join(spec.parameters)})"
    if inspect.isclass(plugin):
        raw = inspect.getattr_static(plugin, attr, None)
        if inspect.isfunction(raw) and _first_parameter(raw) == "self":
            raise PluginError(
                f"plugin {name!r} is the class {plugin.__name__}, whose {attr} takes self: "
                f"register an instance, {plugin.__name__}(), not the class",
                plugin=name,
            )
        return
    function = getattr(plugin, attr)
    if inspect.ismethod(function) and _first_parameter(function.__func__) in spec.parameters:
        raise PluginError(
            f"plugin {name!r}: its method {attr}{_signature(function.__func__)} has no self, "
            f"so Python would pass the instance as {_first_parameter(function.__func__)!r}; "
            f"write {definition}",
            plugin=name,
        )


def _first_parameter(function: Any) -> str | None:
    try:
        return next(iter(inspect.signature(function).parameters), None)
    except (TypeError, ValueError):
        return None


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


def _normalize(name: str) -> str:
    """A name as PEP 503 compares them: `opgraph_Trig` is `opgraph-trig`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def selected_plugins() -> list[str] | None:
    """The names in OPGRAPH_PLUGINS, or None when it is not set (load every plugin)."""
    if "OPGRAPH_PLUGINS" not in os.environ:
        return None
    return [n.strip() for n in os.environ["OPGRAPH_PLUGINS"].split(",") if n.strip()]


def strict_plugins() -> bool:
    """Whether OPGRAPH_STRICT_PLUGINS asks for an error, not a warning, when a plugin fails."""
    return os.environ.get(STRICT_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def how_to_disable(plugin: str, distribution: str | None) -> str:
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


def load_entry_points(
    pm: pluggy.PluginManager,
    only: Sequence[str] | None = None,
    *,
    strict: bool | None = None,
) -> list[str]:
    """Register the installed plugins of the `opgraph` entry-point group; returns their names.

    `only` (default: the comma list in OPGRAPH_PLUGINS, when set) names the entry points or
    distributions to load; an empty list loads none. Each entry point loads on its own: a
    plugin that fails to import or to register makes a PluginLoadError naming the entry
    point, its distribution and version, with the original exception as its cause. With
    `strict` (default: OPGRAPH_STRICT_PLUGINS) it is raised; otherwise it is issued as a
    PluginLoadWarning, recorded in `pm.failures`, and the other plugins load.
    """
    if strict is None:
        strict = strict_plugins()
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
            error = PluginLoadError(
                f"two plugins are named {ep.name!r}: the entry point {ep.name} = {ep.value} of "
                f"distribution {dist} {version}, and {where}; uninstall one of them, or "
                f"choose one with OPGRAPH_PLUGINS",
                plugin=ep.name,
                entry_point=source.entry_point,
                distribution=dist,
                version=version,
            )
            if strict:
                raise error
            # The first one stays; this one is the failure (keyed apart, not to hide it).
            record_failure(pm, f"{ep.name} ({dist})", source, str(error), error)
            continue
        try:
            plugin = ep.load()
            _check_target(pm, ep, plugin)
            add_plugin(pm, plugin, name=ep.name, source=source)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            error = PluginLoadError(
                f"plugin {ep.name!r} (entry point {ep.name} = {ep.value}, distribution "
                f"{dist} {version}) failed to load: {reason}. "
                f"{how_to_disable(ep.name, dist)}",
                plugin=ep.name,
                entry_point=f"{ep.name} = {ep.value}",
                distribution=dist,
                version=version,
            )
            if strict:
                raise error from exc
            error.__cause__ = exc
            record_failure(pm, ep.name, source, reason, error)
            continue
        loaded.append(ep.name)
    if wanted is not None and wanted - matched:
        installed = ", ".join(ep.name for ep in installed_entry_points()) or "none"
        warnings.warn(
            f"OPGRAPH_PLUGINS names {', '.join(sorted(wanted - matched))}, which no installed "
            f"plugin matches (installed entry points: {installed})",
            stacklevel=2,
        )
    return loaded


def _check_target(pm: pluggy.PluginManager, ep: metadata.EntryPoint, plugin: Any) -> None:
    """An entry point names the module of the hooks, not the hook function itself."""
    if _is_hook_function(pm, plugin):
        raise PluginError(
            f"the entry point points at the function {plugin.__name__}, not at a plugin; "
            f"point it at the module that holds the function: {ep.name} = {ep.module} "
            f"(not {ep.value})",
            plugin=ep.name,
        )


def record_failure(
    pm: pluggy.PluginManager, name: str, source: PluginSource, reason: str, error: PluginLoadError
) -> None:
    """Remember an installed plugin that failed, and warn once, naming it and the cause."""
    if hasattr(pm, "failures"):
        pm.failures[name] = PluginFailure(name, source, reason, error)
    warnings.warn(
        f"{error} (the other plugins are loaded; set {STRICT_VARIABLE}=1 to make this an error)",
        PluginLoadWarning,
        stacklevel=3,
    )


def opgraph_distribution() -> dict[str, str]:
    from . import __version__

    return {"distribution": "opgraph", "version": __version__}


def source_of(plugin: Any) -> PluginSource:
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
