"""Stored parameters: a model's numbers and gradients in two flat arrays, one numpy call a step.

A training step of batched replay (`Compiled.map`) reads every parameter's number, adds every
parameter's gradient back, and an optimiser updates them all: for the moons MLP, four Python
passes over 337 parameters, most of a 150 µs step. A `ParameterStore` keeps the numbers and
the gradients of its parameters in two float64 arrays instead (`store.data`, `store.grad`),
so that each of those passes is one numpy call over a slice:

    store = ParameterStore(3)
    w, b = store.value(0.5, "w"), store.value(0.0, "b")
    store.data        # array([0.5, 0. , 0. ]): w's number in row 0, b's in row 1

`nn.MLP(..., stored=True)` puts all its parameters in one store, in the order of
`parameters()`. The parameters are Values like any other (`StoredValue`, a subclass of the
engine's Value class): the same ops, the same `data` and `grad`, the same results to the bit.
Only where their numbers live differs: `_data` and `_grad`, the slots the engine reads, are
properties over the store's arrays, read through a ctypes double (C, no Python call). That
makes an eager step on a stored model about a tenth slower; the fast path is batched replay.

A store has a fixed capacity (numpy views of its memory never move) and lives as long as one
of its parameters does. A copy of a parameter (`copy.copy`) is a plain Value with its own
number; a deep copy or a pickle of a model gives parameters in a new store of their own, in
the same rows, so the copy is as fast as the original.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Sequence
from ctypes import c_double
from numbers import Integral
from operator import attrgetter
from typing import TYPE_CHECKING, Any, SupportsIndex

from .modes import scope_path
from .value import Above, Tag, Value, _checked_label, _number, _pickle_plan, _state

if TYPE_CHECKING:
    import numpy as np

    from .engine import Engine

__all__ = ["ParameterStore", "StoredValue", "store_rows", "stored_class"]


def _set_data(node: StoredValue, x: float) -> None:
    node._data_cell.value = x


def _set_grad(node: StoredValue, x: float) -> None:
    node._grad_cell.value = x


class StoredValue(Value):
    """A parameter of a `ParameterStore`: its number is row `_row` of `store.data`, its
    gradient row `_row` of `store.grad`. Made by `store.value(x)`, never by calling the class.

    Each engine has its own StoredValue class, a subclass of this one and of its Value class
    (`stored_class`), so that ops accept it as a Value of that engine."""

    __slots__ = ("_store", "_row", "_data_cell", "_grad_cell")

    # The base class's slots `_data` and `_grad` stay in the layout, unused, hidden by these.
    # Getters are C (attrgetter through the ctypes double): 70 ns a read, against 120 ns for
    # a Python function indexing the array.
    _data = property(attrgetter("_data_cell.value"), _set_data)
    _grad = property(attrgetter("_grad_cell.value"), _set_grad)
    _plain: type[Value] = Value  # the engine's Value class this class stores parameters of

    _store: ParameterStore
    _row: int

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "a StoredValue is a row of a ParameterStore: make one with store.value(x, label)"
        )

    @property
    def store(self) -> ParameterStore:
        """The store whose arrays hold this parameter's number and gradient."""
        return self._store

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple:
        # A parameter is a leaf: nothing to list before it (see Value.__reduce_ex__), but the
        # flat pickle's bookkeeping must see it. Pickled as its store and its row, so that a
        # model's parameters load into one new store, in the same rows.
        _pickle_plan(self)
        return (_unpickle_stored, (self._store, self._row), _state(self))

    def __setstate__(self, state: tuple) -> None:
        # (a pickle is input: a parameter with parents or an op would be a node in a row)
        if type(state) is tuple and len(state) == len(self._STATE):
            _, _, _, a, b, more, opdef, _ = state
            if a is not None or b is not None or more is not None or opdef is not None:
                raise pickle.UnpicklingError("a stored parameter is a leaf: no parents, no op")
        super().__setstate__(state)

    def __copy__(self) -> Value:
        # A shallow copy has a number of its own: a plain Value, not a second name for a row.
        twin = object.__new__(type(self)._plain)
        twin.__setstate__(self.__getstate__())
        return twin

    def _twin(self, memo: dict) -> Value:
        # Value.__deepcopy__: the same row of a copy of the store (one copy per deepcopy call)
        return copy.deepcopy(self._store, memo)._node(self._row)


def stored_class(cls: type[Value]) -> type[StoredValue]:
    """The StoredValue class of an engine's Value class (made once per engine)."""
    if cls is Value:  # the default engine's class
        return StoredValue
    found = cls.__dict__.get("_stored_class")
    if found is None:
        # StoredValue adds the slots and properties, `cls` brings the engine's ops (both
        # subclass Value; `cls` adds no slot, so the layouts agree).
        found = type("StoredValue", (StoredValue, cls), {"__slots__": (), "_plain": cls})
        cls._stored_class = found  # pyright: ignore[reportAttributeAccessIssue]
    return found


class ParameterStore:
    """The numbers (`data`) and gradients (`grad`) of up to `capacity` parameters of one
    engine, in two float64 numpy arrays; `value(x, label)` hands out the next row."""

    def __init__(self, capacity: int, engine: Engine | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, Integral) or capacity < 0:
            raise ValueError(f"ParameterStore(capacity): a count of rows, got {capacity!r}")
        capacity = int(capacity)
        try:
            import numpy  # (here, not at import: the scalar engine never imports numpy)
        except ImportError as exc:
            raise ImportError(
                "stored parameters keep their numbers in numpy arrays: pip install numpy "
                "(or 'opgraph[numpy]')"
            ) from exc
        self.engine = engine if engine is not None else Above.default_engine()
        self._class = stored_class(self.engine.Value)
        self._arrays(numpy.zeros(capacity), numpy.zeros(capacity))
        self._count = 0  # rows handed out by value(), in order

    def _arrays(self, data: np.ndarray, grad: np.ndarray) -> None:
        """Take `data` and `grad` as the store's arrays, no row held yet."""
        self._numbers, self._grads = data, grad
        # one buffer view of each, which every parameter's ctypes doubles share
        self._views = (memoryview(data), memoryview(grad))  # pyright: ignore[reportArgumentType]
        self._taken = bytearray(len(data))  # 1 for a row a parameter holds

    # The arrays, to read and write in place; not to replace (the parameters hold their
    # memory): `store.data[:] = numbers`, not `store.data = numbers`.
    @property
    def data(self) -> np.ndarray:
        """The parameters' numbers, one row each (rows not handed out yet are 0.0)."""
        return self._numbers

    @property
    def grad(self) -> np.ndarray:
        """The parameters' gradients, one row each."""
        return self._grads

    @property
    def capacity(self) -> int:
        return len(self._taken)

    def __len__(self) -> int:
        """The rows handed out."""
        return self._count

    def __repr__(self) -> str:
        return f"ParameterStore({self._count} of {self.capacity} rows, engine {self.engine.name!r})"

    def value(self, data: float, label: str = "") -> Value:
        """A new parameter (a leaf) in the next free row, with number `data` and grad 0."""
        if type(data) is not float:
            data = _number(data)
        scope = scope_path.get()  # (the label checked before a row is taken)
        tag = Tag(_checked_label(label), scope) if type(label) is not str or label else scope
        row = self._count
        if row == self.capacity:
            raise ValueError(
                f"the ParameterStore is full: all its {row} rows hold parameters; make it with "
                f"a larger capacity (for {label or 'this parameter'!r})"
            )
        node = self._node(row)
        self._count = row + 1
        node._data, node._grad, node._tag = data, 0.0, tag
        node._a = node._b = node._opdef = None
        node._id = next(self._class._ids)
        return node

    def _node(self, row: int) -> StoredValue:
        """A bare StoredValue over `row`, which no other parameter holds; its caller sets
        the rest of the slots."""
        if self._taken[row]:
            raise ValueError(f"row {row} of the ParameterStore is held by another parameter")
        self._taken[row] = 1
        node = object.__new__(self._class)
        node._store, node._row = self, row
        node._data_cell = c_double.from_buffer(self._views[0], 8 * row)
        node._grad_cell = c_double.from_buffer(self._views[1], 8 * row)
        return node

    def __deepcopy__(self, memo: dict) -> ParameterStore:
        # The same numbers and gradients, no row held yet: the copies of the parameters
        # (StoredValue._twin) take theirs back one by one.
        twin = object.__new__(ParameterStore)
        memo[id(self)] = twin
        twin.engine, twin._class, twin._count = self.engine, self._class, self._count
        twin._arrays(self.data.copy(), self.grad.copy())
        return twin

    def __reduce__(self) -> tuple:
        # The engine's Value class stands for the engine (as a pickled Value's class does).
        arrays = (self.data.tobytes(), self.grad.tobytes())
        return (_unpickle_store, (self._class._plain, *arrays, self._count))


def _unpickle_store(cls: Any, data: Any, grad: Any, count: Any) -> ParameterStore:
    """A store from a pickle, checked: a pickle is input like any other."""
    import numpy as np

    if not (isinstance(cls, type) and issubclass(cls, Value)) or hasattr(cls, "_plain"):
        raise pickle.UnpicklingError(f"a pickled ParameterStore names no engine: {cls!r}")
    # (the default engine's class is Value itself, whose engine is made on first use)
    engine = Above.default_engine() if cls is Value else cls._engine
    if engine is None or engine.Value is not cls:
        raise pickle.UnpicklingError(f"a pickled ParameterStore names no engine: {cls!r}")
    if not (type(data) is bytes and type(grad) is bytes and len(data) == len(grad)):
        raise pickle.UnpicklingError("a pickled ParameterStore's arrays are two bytes alike")
    if len(data) % 8 or type(count) is not int or not 0 <= count <= len(data) // 8:
        raise pickle.UnpicklingError(
            f"a pickled ParameterStore of {len(data)} bytes cannot hold {count!r} rows"
        )
    store = ParameterStore(0, engine)
    store._arrays(np.frombuffer(data, np.float64).copy(), np.frombuffer(grad, np.float64).copy())
    store._count = count
    return store


def _unpickle_stored(store: Any, row: Any) -> StoredValue:
    """A parameter from a pickle, in its row of its (unpickled) store; pickle then restores
    its state (Value.__setstate__)."""
    if type(store) is not ParameterStore:
        raise pickle.UnpicklingError(f"a pickled parameter's store is not a store: {store!r}")
    if type(row) is not int or not 0 <= row < len(store):
        raise pickle.UnpicklingError(f"a pickled parameter's row {row!r} is not one of its store's")
    try:
        return store._node(row)
    except ValueError as exc:  # two parameters in one row: one number with two names
        raise pickle.UnpicklingError(f"a pickle holds two parameters in row {row}") from exc


def store_rows(params: Sequence[Value]) -> tuple[ParameterStore | None, Any]:
    """The store that holds all of `params` and their rows in it: a slice when they are
    consecutive rows in order, else an index array. (None, None) unless every one is a
    stored parameter of one store and no row comes twice (then a pass over the parameters
    does the work, as for plain Values)."""
    if not params or not isinstance(params[0], StoredValue):
        return None, None
    store = params[0]._store
    rows = []
    for p in params:
        if not isinstance(p, StoredValue) or p._store is not store:
            return None, None
        rows.append(p._row)
    first = rows[0]
    if rows == list(range(first, first + len(rows))):
        return store, slice(first, first + len(rows))
    if len(set(rows)) != len(rows):
        return None, None  # numpy's `a[rows] += x` would add a repeated row's terms once
    import numpy as np

    return store, np.array(rows, dtype=np.intp)
