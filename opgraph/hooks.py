"""Gradient hooks: `Value.register_hook(fn)` (docs/higher-order.md).

A node's hooks are kept in its `Tag` (value.py), which a node takes only once it has a label
or a hook, so a hook dies with its node and costs the other nodes nothing. A pass (reverse.py,
higher.py) looks at `HOOKS` once, and only when some living node has a hook does it look at
each node's: `HOOKS` is read as a table keyed by node, and is true while a hook is registered
on a node that lives (a weak set of the hooks dicts that hold one).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from numbers import Real
from typing import Any

from .errors import HookError, node_name
from .value import Above, Tag, Value, _number, engine_class


class Hooks(dict):
    """One node's hooks: {handle number: hook}, in registration order. Compared and hashed
    as itself (one node's), so that a weak set can hold it."""

    __slots__ = ("__weakref__",)
    __eq__ = object.__eq__
    __hash__ = object.__hash__  # pyright: ignore[reportAssignmentType] (dict's is None)


class HookTable:
    """The hooks of every node, read through the nodes' tags: `node in HOOKS`, `HOOKS[node]`,
    `HOOKS.get(node)`; false when no living node has a hook."""

    def __init__(self) -> None:
        self.live: weakref.WeakSet[Hooks] = weakref.WeakSet()  # those holding a hook

    def __len__(self) -> int:  # the living nodes with a hook
        return len(self.live)

    def get(self, node: Value) -> Hooks | None:
        tag = node._tag
        return None if type(tag) is str else tag.hooks

    def __contains__(self, node: Value) -> bool:
        return bool(self.get(node))

    def __getitem__(self, node: Value) -> Hooks:
        hooks = self.get(node)
        if not hooks:
            raise KeyError(node)
        return hooks


HOOKS = HookTable()
_handles = iter(range(1 << 62))


class RemovableHandle:
    """What `Value.register_hook` returns: `handle.remove()` unregisters the hook."""

    def __init__(self, hooks: Hooks, number: int):
        self._hooks = weakref.ref(hooks)  # (not the node: a handle keeps nothing alive)
        self._number = number

    def remove(self) -> None:
        """Unregister the hook (again is harmless)."""
        hooks = self._hooks()
        if hooks is not None:
            hooks.pop(self._number, None)
            if not hooks:
                HOOKS.live.discard(hooks)

    def __repr__(self) -> str:
        return f"<hook handle {self._number}>"


def register_hook(node: Value, fn: Callable[[Any], Any]) -> RemovableHandle:
    """Call `fn(grad)` once per pass, when `node`'s gradient is complete (Value.register_hook)."""
    if not callable(fn):
        raise TypeError(f"register_hook() takes a function of the gradient, got {fn!r}")
    tag = node._tag
    if type(tag) is str:  # no label, no hook yet: the node takes a Tag of its own
        tag = node._tag = Tag("", tag)
    hooks = tag.hooks
    if hooks is None:
        hooks = tag.hooks = Hooks()
    number = next(_handles)
    hooks[number] = fn
    HOOKS.live.add(hooks)
    return RemovableHandle(hooks, number)


def run_hooks(node: Value, grad: Any, hooks: dict[int, Callable], on_values: bool) -> Any:
    """`grad` after `node`'s hooks, in the order registered; a hook returning None observes.

    A replacement must be a real number, or (`on_values`, in grad(create_graph=True)) a
    Value of the node's engine.
    """
    for fn in list(hooks.values()):
        result = fn(grad)
        if result is None:
            continue
        if on_values and engine_class(result) is engine_class(node):
            grad = result
        elif isinstance(result, Real) and not isinstance(result, Value):
            grad = _number(result)
            if on_values:
                grad = engine_class(node)(grad)
        else:
            wanted = "a Value or a real number" if on_values else "a real number"
            raise HookError(
                f"a gradient hook of {node_name(node)} returned {result!r} of type "
                f"{type(result).__name__}; it must return None (to keep the gradient) or "
                f"{wanted} to replace it"
            )
    return grad


Above.register_hook = register_hook  # `Value.register_hook` (Value cannot import this module)
