"""Gradient hooks: `Value.register_hook(fn)` (docs/higher-order.md).

Hooks are kept in a side table keyed by node (weakly: a hook dies with its node), not in a
slot of Value: a pass (reverse.py, higher.py) looks at the table once, and only when it is
not empty does it look up each node, so hooks cost nothing when no node has one.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from numbers import Real
from typing import Any

from .errors import HookError, node_name
from .value import Above, Value, _number

# node -> {handle number: hook}, in registration order. Empty almost always: then no pass
# looks any node up in it.
HOOKS: weakref.WeakKeyDictionary[Value, dict[int, Callable]] = weakref.WeakKeyDictionary()
_handles = iter(range(1 << 62))


class RemovableHandle:
    """What `Value.register_hook` returns: `handle.remove()` unregisters the hook."""

    def __init__(self, node: Value, number: int):
        self._node = weakref.ref(node)
        self._number = number

    def remove(self) -> None:
        """Unregister the hook (again is harmless)."""
        node = self._node()
        hooks = HOOKS.get(node) if node is not None else None
        if hooks is not None:
            hooks.pop(self._number, None)
            if not hooks:
                del HOOKS[node]

    def __repr__(self) -> str:
        return f"<hook handle {self._number}>"


def register_hook(node: Value, fn: Callable[[Any], Any]) -> RemovableHandle:
    """Call `fn(grad)` once per pass, when `node`'s gradient is complete (Value.register_hook)."""
    if not callable(fn):
        raise TypeError(f"register_hook() takes a function of the gradient, got {fn!r}")
    number = next(_handles)
    HOOKS.setdefault(node, {})[number] = fn
    return RemovableHandle(node, number)


def run_hooks(node: Value, grad: Any, hooks: dict[int, Callable], on_values: bool) -> Any:
    """`grad` after `node`'s hooks, in the order registered; a hook returning None observes.

    A replacement must be a real number, or (`on_values`, in grad(create_graph=True)) a
    Value of the node's engine.
    """
    for fn in list(hooks.values()):
        result = fn(grad)
        if result is None:
            continue
        if on_values and type(result) is type(node):
            grad = result
        elif isinstance(result, Real) and not isinstance(result, Value):
            grad = _number(result)
            if on_values:
                grad = type(node)(grad)
        else:
            wanted = "a Value or a real number" if on_values else "a real number"
            raise HookError(
                f"a gradient hook of {node_name(node)} returned {result!r} of type "
                f"{type(result).__name__}; it must return None (to keep the gradient) or "
                f"{wanted} to replace it"
            )
    return grad


Above.register_hook = register_hook  # `Value.register_hook` (Value cannot import this module)
