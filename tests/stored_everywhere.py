"""A pytest plugin (`-p stored_everywhere`, with tests/ on the path) that makes every leaf a
user makes with `Value(...)` a stored parameter, in stores of 16,384 rows: the engine's tests
then check that a StoredValue goes everywhere a Value goes (tests/test_stored.py runs them).
Op outputs and the constant leaves ops make (binding.py) stay plain Values."""

from __future__ import annotations

import sys
from typing import Any

from opgraph.stored import ParameterStore, StoredValue
from opgraph.value import Above, Value

_stores: dict[type, ParameterStore] = {}


def _new(cls: type, *args: Any, **kwargs: Any) -> Any:
    made_by_op = args[2:3] or kwargs.get("_prev")  # Value(data, label, parents, op)
    # no arguments: pickle's NEWOBJ (cls.__new__(cls)), which then sets the node's state
    if issubclass(cls, StoredValue) or made_by_op or not (args or kwargs):
        return object.__new__(cls)
    if sys._getframe(1).f_globals.get("__name__") == "opgraph.binding":
        return object.__new__(cls)  # an op's node (its slow path calls cls(...))
    store = _stores.get(cls)
    if store is None or len(store) == store.capacity:
        engine = cls._engine if cls._engine is not None else Above.default_engine()
        store = _stores[cls] = ParameterStore(1 << 14, engine)
    node = store._node(len(store))  # Value.__init__ then sets its number through the store
    store._count += 1
    return node


Value.__new__ = _new  # pyright: ignore[reportAttributeAccessIssue]
