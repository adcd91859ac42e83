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

    `register(op, *, replace=False)`: `op` is an `opgraph.Op` (a primitive with its own
    forward and derivative) or an `opgraph.Composite` (built from other ops). A name that an
    earlier plugin already registered is an error naming both plugins, unless
    `replace=True`, in which case this plugin's op replaces the earlier one.

    Called once per plugin each time the engine builds its op table (when a plugin is
    registered or unregistered), never per arithmetic op, with `register` passed by name.
    Plugins are called in registration order: built-ins, then installed plugins, then the
    engine's `plugins=`; pluggy's tryfirst/trylast do not change it. Call `register` only
    while the hook runs, and return None (not a list of ops).
    """
