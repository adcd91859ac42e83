"""The hook specifications: what a plugin may implement.

A plugin is any module or object with functions marked `@hookimpl`. opgraph has one hook so
far; it follows the pattern of llm's `register_models`: the plugin receives a `register`
callback and calls it once per op.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("opgraph")
hookimpl = pluggy.HookimplMarker("opgraph")


@hookspec
def register_ops(register):
    """Register ops: call `register(op)` once per `Op` or `Composite` this plugin provides.

    `register(op, replace=False)`: `op` is an `opgraph.Op` (a primitive with its own forward
    and derivative) or an `opgraph.Composite` (built from other ops). A name that another
    plugin already registered is an error unless `replace=True`, in which case this plugin's
    op replaces the earlier one.

    Called once per plugin each time the engine builds its op table (when plugins are
    registered or unregistered), never per arithmetic op. Plugins are called in registration
    order, built-ins first; the return value is ignored.
    """
