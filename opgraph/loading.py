"""Plugin loading: where an engine's plugins come from, the checks each one passes, and the
calls of the `register_ops` hook. `load()` is the whole story; the rest is its steps.

An engine registers the built-in plugins, then the installed ones (the entry points of the
`opgraph` group that OPGRAPH_PLUGINS selects), then the ones given in code, and builds its
op table. An installed plugin that fails is left out with a PluginLoadWarning and kept in
`pm.failures`, unless strict (OPGRAPH_STRICT_PLUGINS=1) makes it a PluginLoadError. A
plugin given in code that fails is always an error. Nothing here runs per op.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import os
import re
import types
import warnings
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import OpConflictError, PluginError, PluginLoadError, PluginLoadWarning
from .version import __version__

ENTRY_POINT_GROUP = "opgraph"
STRICT_VARIABLE = "OPGRAPH_STRICT_PLUGINS"
HOOKS = {  # each hook's name and the signature of its spec
    name: inspect.signature(function)
    for name, function in vars(hookspecs).items()
    if hasattr(function, "opgraph_spec")
}


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """One plugin of an engine, as `engine.plugins()` and `opgraph plugins` list it. While
    plugins load, the same record says where one came from (and has no ops yet)."""

    name: str = ""
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None  # "name = module:attr"
    builtin: bool = False
    hooks: list[str] = dataclasses.field(default_factory=list)
    ops: list[str] = dataclasses.field(default_factory=list)  # the ops it registered, in order
    replaces: dict[str, str] = dataclasses.field(default_factory=dict)  # op -> plugin replaced
    error: str | None = None  # why an installed plugin failed to load (then it has no ops)
    left_out: dict[str, str] = dataclasses.field(default_factory=dict)  # op -> why, not loaded

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the `opgraph` hooks, remembering where each plugin came from
    (None: given in code) and the installed plugins that failed to load."""

    def __init__(self) -> None:
        super().__init__("opgraph")
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginInfo | None] = {}
        self.failures: dict[str, PluginLoadError] = {}
        # (plugin, op) -> why: ops of installed plugins left out, the plugin's others loaded
        self.left_out: dict[tuple[str, str], PluginLoadError] = {}

    def get_canonical_name(self, plugin: Any) -> str:
        # pluggy names an object without `__name__` (a class instance) by its id(), which
        # error messages would show; use its class, numbered from the second instance on.
        name = getattr(plugin, "__name__", None)
        if isinstance(name, str) and name:
            return name
        name = base = f"{type(plugin).__module__}.{type(plugin).__qualname__}"
        copies = itertools.count(2)
        while self.has_plugin(name):
            name = f"{base}-{next(copies)}"
        return name


def load(engine: Any, plugins: Any, *, builtins: bool, entry_points: bool) -> None:
    """Register an engine's plugins, in order, and build its op table."""
    pm, strict = engine.pm, engine.strict_plugins
    if builtins:  # first: a conflicting op of a later plugin is the one the error blames
        builtin = PluginInfo(builtin=True, distribution="opgraph", version=__version__)
        for plugin in builtin_plugins():
            add_plugin(pm, plugin, source=builtin)
    if entry_points:
        load_entry_points(pm, strict=strict)
    for plugin in plugins:
        add_plugin(pm, plugin)
    while True:  # an installed plugin whose ops are refused is left out, unless strict
        try:
            return engine.rebuild()
        except PluginError as error:
            source = pm.sources.get(error.plugin or "")
            if source is None or source.entry_point is None:  # not an installed plugin
                raise
            failure = refused(error, source)
            if strict:
                raise failure from error
            if isinstance(error, OpConflictError) and error.op is not None:
                leave_out_op(pm, source, error)  # that op only: the first registration wins
                continue
            pm.unregister(name=source.name)
            record_failure(pm, source.name, failure)


def builtin_plugins() -> list[Any]:
    from opgraph.plugins import BUILTIN_PLUGINS  # (absolute: plugins/ is mapped, not a folder here)

    return list(BUILTIN_PLUGINS)


def strict_plugins() -> bool:
    """Whether OPGRAPH_STRICT_PLUGINS asks for an error, not a warning, when a plugin fails."""
    return os.environ.get(STRICT_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


# --- installed plugins ------------------------------------------------------------------------


def load_entry_points(pm: PluginManager, *, strict: bool | None = None) -> list[str]:
    """Register the installed plugins that OPGRAPH_PLUGINS selects, each on its own; returns
    the names registered now. One that fails is raised when `strict` (default:
    OPGRAPH_STRICT_PLUGINS), or else left out with a warning while the others load."""
    strict = strict_plugins() if strict is None else strict
    loaded = []
    for ep in selected_entry_points():
        try:
            if load_entry_point(pm, ep):
                loaded.append(ep.name)
        except PluginLoadError as error:
            if strict:
                raise
            # A second plugin of a name is recorded apart from the first, which stays.
            taken = pm.has_plugin(ep.name)
            record_failure(pm, f"{ep.name} ({error.distribution})" if taken else ep.name, error)
    return loaded


def load_entry_point(pm: PluginManager, ep: metadata.EntryPoint) -> bool:
    """Import and register one installed plugin (False: it is registered already), or raise a
    PluginLoadError that says where it comes from and how to run without it."""
    dist = ep.dist.name if ep.dist else None
    source = PluginInfo(
        name=ep.name,
        entry_point=f"{ep.name} = {ep.value}",
        distribution=dist,
        version=ep.dist.version if ep.dist else None,
    )
    if pm.has_plugin(ep.name):
        earlier = pm.sources.get(ep.name)
        if earlier == source:
            return False
        where = f"distribution {earlier.distribution}" if earlier else "another plugin"
        raise load_error(
            f"two plugins are named {ep.name!r}: the entry point {source.entry_point} of "
            f"distribution {dist} {source.version}, and {where}; uninstall one of them, or "
            f"choose one with OPGRAPH_PLUGINS",
            source,
        )
    try:
        plugin = ep.load()
        if _is_hook_function(plugin):
            raise PluginError(
                f"the entry point points at the function {plugin.__name__}, not at a plugin; "
                f"point it at the module that holds the function: {ep.name} = {ep.module} "
                f"(not {ep.value})",
                plugin=ep.name,
            )
        add_plugin(pm, plugin, ep.name, source)
    except Exception as exc:
        raise load_error(
            f"plugin {ep.name!r} ({_where(source)}) failed to load: {_reason(exc)}. "
            f"{how_to_disable(ep.name, dist)}",
            source,
        ) from exc
    return True


def selected_entry_points() -> list[metadata.EntryPoint]:
    """The installed entry points that OPGRAPH_PLUGINS names by entry point or distribution
    (all of them when it is unset), with a warning for names that match none."""
    installed, selected = installed_entry_points(), selected_plugins()
    if selected is None:
        return installed
    wanted = {_normalize(name) for name in selected}
    unmatched = wanted.difference(*map(_keys, installed))
    if unmatched:
        warnings.warn(
            f"OPGRAPH_PLUGINS names {', '.join(sorted(unmatched))}, which no installed plugin "
            f"matches (installed entry points: {', '.join(ep.name for ep in installed) or 'none'})",
            stacklevel=4,
        )
    return [ep for ep in installed if _keys(ep) & wanted]


def installed_entry_points() -> list[metadata.EntryPoint]:
    """The installed entry points of the `opgraph` group, in a stable order."""
    found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted(found, key=lambda ep: (_normalize(ep.dist.name) if ep.dist else "", ep.name))


def selected_plugins() -> list[str] | None:
    """The names in OPGRAPH_PLUGINS, or None when it is not set (load every plugin)."""
    if "OPGRAPH_PLUGINS" not in os.environ:
        return None
    return [n.strip() for n in os.environ["OPGRAPH_PLUGINS"].split(",") if n.strip()]


def _keys(ep: metadata.EntryPoint) -> set[str]:
    return {_normalize(ep.name), _normalize(ep.dist.name if ep.dist else "")}


def _normalize(name: str) -> str:
    """A name as PEP 503 compares them: `opgraph_Trig` is `opgraph-trig`."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- failures of installed plugins --------------------------------------------------------------


def load_error(message: str, source: PluginInfo, op: str | None = None) -> PluginLoadError:
    """A PluginLoadError about an installed plugin, with where it comes from as attributes."""
    return PluginLoadError(
        message,
        plugin=source.name,
        op=op,
        entry_point=source.entry_point,
        distribution=source.distribution,
        version=source.version,
    )


def refused(error: PluginError, source: PluginInfo) -> PluginLoadError:
    """An error in building the op table that blames an installed plugin, with where that
    plugin comes from and how to run without it."""
    failure = load_error(
        f"{error} -- plugin {source.name!r} is the entry point {source.entry_point!r} of "
        f"distribution {source.distribution} {source.version}. "
        f"{how_to_disable(source.name, source.distribution)}",
        source,
        op=error.op,
    )
    failure.__cause__ = error
    return failure


def leave_out_op(pm: PluginManager, source: PluginInfo, conflict: OpConflictError) -> None:
    """Leave out one op of an installed plugin, which an earlier plugin registered first,
    and warn once; the plugin's other ops load."""
    op = str(conflict.op)
    failure = load_error(
        f"{conflict} -- op {op!r} of plugin {source.name!r} (distribution "
        f"{source.distribution} {source.version}) is left out: the first registration wins, "
        f"and the plugin's other ops are loaded",
        source,
        op=op,
    )
    failure.__cause__ = conflict
    pm.left_out[(source.name, op)] = failure
    warnings.warn(
        f"{failure} (set {STRICT_VARIABLE}=1 to make this an error)",
        PluginLoadWarning,
        stacklevel=4,
    )


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


def record_failure(pm: PluginManager, name: str, error: PluginLoadError) -> None:
    """Remember an installed plugin left out, and warn once, naming it and the cause."""
    pm.failures[name] = error
    warnings.warn(
        f"{error} (the other plugins are loaded; set {STRICT_VARIABLE}=1 to make this an error)",
        PluginLoadWarning,
        stacklevel=3,
    )


def failures_note(failures: dict[str, PluginLoadError]) -> str:
    """What "no op named ..." adds when installed plugins failed to load: "; plugin 'x'
    (...) failed to load: ...; it may have provided this op"; "" when none failed."""
    described = [
        f"plugin {name!r} ({_where(error)}) failed to load: {_reason(error.__cause__ or error)}"
        for name, error in failures.items()
    ]
    if not described:
        return ""
    they = "it" if len(described) == 1 else "one of them"
    return f"; {'; '.join(described)}; {they} may have provided this op"


def _where(source: PluginInfo | PluginLoadError) -> str:
    return f"entry point {source.entry_point}, distribution {source.distribution} {source.version}"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --- registering one plugin, and the checks of its hook functions ---------------------------


def add_plugin(
    pm: PluginManager, plugin: Any, name: str | None = None, source: PluginInfo | None = None
) -> str:
    """Check a plugin's hook functions, then register it; returns its name."""
    name = name or pm.get_canonical_name(plugin)
    if pm.has_plugin(name):
        raise PluginError(f"a plugin named {name!r} is already registered", plugin=name)
    if pm.is_registered(plugin):
        raise PluginError(
            f"plugin {name!r} is already registered as {pm.get_name(plugin)!r}", plugin=name
        )
    check_hooks(pm, plugin, name)
    try:  # pluggy's own checks, a net under ours; check_pending may blame another plugin
        pm.register(plugin, name=name)
        pm.check_pending()
    except (ValueError, pluggy.PluginValidationError) as exc:
        culprit = getattr(exc, "plugin", None)
        culprit = (pm.get_name(culprit) if culprit is not None else None) or name
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        message = " ".join(str(exc).split())
        raise PluginError(
            f"plugin {culprit!r} cannot be registered: {message}", plugin=culprit
        ) from exc
    pm.sources[name] = source
    return name


def check_hooks(pm: PluginManager, plugin: Any, name: str) -> None:
    """Refuse, saying what to write instead, a plugin whose hook functions pluggy would
    refuse, or would call in a way that fails later and obscurely."""
    if _is_hook_function(plugin):
        raise PluginError(
            f"plugin {name!r} is the function {plugin.__name__} itself; register the module "
            f"(or object) that holds it, such as {plugin.__module__}",
            plugin=name,
        )
    marked = {attr: opts for attr in dir(plugin) if (opts := pm.parse_hookimpl_opts(plugin, attr))}
    for attr, opts in marked.items():
        check_hook(plugin, name, attr, opts)
    if not marked:
        unmarked = [hook for hook in HOOKS if callable(getattr(plugin, hook, None))]
        hint = (
            f"; its function {unmarked[0]} is not marked with @opgraph.hookimpl"
            if unmarked
            else f"; give it a function marked @opgraph.hookimpl, such as {next(iter(HOOKS))}"
        )
        raise PluginError(f"plugin {name!r} implements no opgraph hook{hint}", plugin=name)


def check_hook(plugin: Any, name: str, attr: str, opts: Mapping[str, Any]) -> None:
    """Check one function marked @hookimpl: a known hook, not a wrapper, `self` where a
    method needs it, and only arguments the hook passes (it passes them by name)."""
    hook = opts.get("specname") or attr
    if hook not in HOOKS:
        close = difflib.get_close_matches(hook, HOOKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(f"{h}{signature}" for h, signature in HOOKS.items())
        raise PluginError(
            f"plugin {name!r} implements {hook!r}, which is not an opgraph hook{hint} "
            f"(hooks: {listed})",
            plugin=name,
        )
    if opts.get("wrapper") or opts.get("hookwrapper"):
        raise PluginError(
            f"plugin {name!r}: {hook} cannot be a wrapper; drop wrapper=/hookwrapper=",
            plugin=name,
        )
    spec, function = HOOKS[hook], getattr(plugin, attr)
    own = list(inspect.signature(getattr(function, "__func__", function)).parameters)
    # A class plugin is an instance whose hook methods take self: `engine.register(MyOps())`.
    if inspect.isclass(plugin) and inspect.isfunction(function) and own[:1] == ["self"]:
        raise PluginError(
            f"plugin {name!r} is the class {plugin.__name__}, whose {attr} takes self: "
            f"register an instance, {plugin.__name__}(), not the class",
            plugin=name,
        )
    if inspect.ismethod(function) and own and own[0] in spec.parameters:
        raise PluginError(
            f"plugin {name!r}: its method {attr}{inspect.signature(function.__func__)} has no "
            f"self, so Python would pass the instance as {own[0]!r}; "
            f"write def {attr}(self, {', '.join(spec.parameters)})",
            plugin=name,
        )
    parameters = inspect.signature(function).parameters.values()
    required = [p.name for p in parameters if p.default is p.empty and p.kind not in _STARS]
    unknown = [arg for arg in required if arg not in spec.parameters]
    if unknown:
        raise PluginError(
            f"plugin {name!r}: its hook function {attr}{inspect.signature(function)} takes "
            f"{', '.join(map(repr, unknown))}, which the hook does not pass; "
            f"define it as {hook}{spec} (argument names matter: the hook passes them by name)",
            plugin=name,
        )


_STARS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _is_hook_function(plugin: Any) -> bool:
    """Whether `plugin` is a hook function (`register_ops`) rather than what holds it."""
    marked = getattr(plugin, "opgraph_impl", None) is not None
    return inspect.isfunction(plugin) and (marked or plugin.__name__ in HOOKS)


# --- calling the hook, and what the plugins registered ----------------------------------------


def call_register_ops(pm: PluginManager) -> list[tuple[str, Any, bool]]:
    """Call each plugin's register_ops in registration order (built-ins first, whatever
    pluggy's tryfirst/trylast say); returns each (plugin, op, replace) it registered."""
    order = [name for name, _ in pm.list_name_plugin()]
    impls = sorted(pm.hook.register_ops.get_hookimpls(), key=lambda i: order.index(i.plugin_name))
    return [row for impl in impls for row in _call_register_ops(impl)]


def _call_register_ops(impl: pluggy.HookImpl) -> list[tuple[str, Any, bool]]:
    name, found, open_ = impl.plugin_name, [], True

    def register(op: Any, *, replace: bool = False) -> None:
        if not open_:
            raise PluginError(
                f"plugin {name!r} called register() after register_ops returned; "
                f"register every op while the hook runs",
                plugin=name,
            )
        found.append((name, op, bool(replace)))

    try:  # the hook's one argument, if the function takes it
        result = impl.function(*[register for _ in impl.argnames])
    except Exception as exc:
        raise PluginError(
            f"plugin {name!r} failed in register_ops: {_reason(exc)}", plugin=name
        ) from exc
    finally:
        open_ = False
    if result is not None:
        raise PluginError(
            f"plugin {name!r}: register_ops returned {result!r}; it must call "
            f"register(op) once per op and return nothing",
            plugin=name,
        )
    return found


def plugin_infos(pm: PluginManager, registered: list[tuple[str, Any, bool]]) -> list[PluginInfo]:
    """Every registered plugin, with where it came from and the ops it registered."""
    ops: dict[str, list[str]] = {}
    replaces: dict[str, dict[str, str]] = {}
    owner: dict[str, str] = {}
    for plugin, op, replace in registered:
        ops.setdefault(plugin, []).append(op.name)
        if replace and op.name in owner:
            replaces.setdefault(plugin, {})[op.name] = owner[op.name]
        owner[op.name] = plugin
    return [
        dataclasses.replace(
            pm.sources.get(name) or source_of(plugin),
            name=name,
            hooks=sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()),
            ops=ops.get(name, []),
            replaces=replaces.get(name, {}),
            left_out={op: str(e) for (owner, op), e in pm.left_out.items() if owner == name},
        )
        for name, plugin in pm.list_name_plugin()
        if plugin is not None
    ]


def failed_infos(pm: PluginManager) -> list[PluginInfo]:
    """The installed plugins left out, each with the error that says why."""
    return [
        PluginInfo(name, e.distribution, e.version, e.entry_point, error=str(e))
        for name, e in pm.failures.items()  # e: the PluginLoadError
    ]


def source_of(plugin: Any) -> PluginInfo:
    """The distribution of a plugin given in code, found from its top-level package."""
    module = getattr(plugin, "__module__", None) or type(plugin).__module__
    if isinstance(plugin, types.ModuleType):
        module = plugin.__name__
    dists = metadata.packages_distributions().get((module or "").partition(".")[0])
    if not dists:
        return PluginInfo()
    return PluginInfo(distribution=dists[0], version=metadata.version(dists[0]))
