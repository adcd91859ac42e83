"""The Value: one node of the computation graph.

A Value holds a number (`data`), the derivative of the final output with respect to it
(`grad`), a `label` for people, its parents in order, and the op that made it. Unlike
micrograd it keeps no `_backward` closure: backward asks the op for its local derivatives.
Every operator is an op of the Value's engine, so every op, `+` included, comes from a plugin:
each engine installs its bound op functions as the operators of its Value class, and nearly
every node is built by them (binding.py, `_bind_primitive`), not by `Value.__init__`.

The node layout is `Value.__slots__`, written once below. The builders that make nodes
(`Value.__init__`, `__setstate__`, `__deepcopy__` here; the op functions and the constant
leaf in binding.py) each store every slot themselves, for speed; tests/test_value.py makes a
node each way and checks that every slot is set.

The parents live in two slots rather than in a tuple of their own: `_a`, the first operand,
and `_b`, the second (None when there is none); an op of three or more operands, rare, keeps
its operands after the first as a tuple in `_b`. A tuple per node would be a second object
for the garbage collector to walk and 56 more bytes; `_prev` (micrograd's name) and `parents`
give the parents as an ordered tuple.

The label and the scope share one slot, `_tag`: almost every node has no label, so it holds
the scope path the node was made in (an interned str, "" outside any scope: modes.py). A node
with a label or a gradient hook holds a `Tag` there instead, its label, scope and hooks
(hooks.py), its own (a copy or a pickle makes its own). So a node is seven slots, 88 bytes
with the collector's header, and has no `__weakref__` slot: nothing refers to nodes weakly
(the hooks' handles refer to the hooks, pickling remembers ids).

`data` and `grad` are always Python floats. They live in the slots `_data` and `_grad`, which
the engine itself reads and writes (ops, backward, compile, the tracer); the public `data` and
`grad` are properties whose setters turn any real number (an int, a bool, a Fraction, a numpy
scalar) into a float and refuse anything else, so that `p.data -= np.float32(lr) * p.grad`
cannot leave a numpy scalar in the graph.
"""

from __future__ import annotations

import copyreg
import inspect
import itertools
import math
import sys
import threading
from collections.abc import Callable
from numbers import Real
from operator import attrgetter
from types import MethodType
from typing import TYPE_CHECKING, Any, SupportsIndex

from .modes import NO_GRAD, mode, scope_path
from .trace.text import MAX_LABEL, viewer_text

if TYPE_CHECKING:
    from .binding import OpTable
    from .contracts import TracerHooks
    from .engine import Engine
    from .ops import Row


class _Above:
    """What Value asks of the layers above it, which it cannot import (docs/architecture.md:
    Value is the lowest layer of the engine, and the reverse pass, the hooks and the engines
    are built on it). Each of those modules sets its own functions on `Above`, the one
    instance, once when it is imported, and `import opgraph` imports them all before a Value
    can be made. (Plain attributes of an instance: nothing is bound to it when called.)
    """

    # reverse.py: micrograd's `backward()`, `zero_grad()` and `_backward()`
    backward: Callable[[Value, float], None]
    zero_grad: Callable[[Value], None]
    step: Callable[[Value], None]
    # hooks.py: `register_hook()`
    register_hook: Callable[[Value, Any], Any]
    # engine.py: the engine of opgraph.Value, created on first use
    default_engine: Callable[[], Engine]


Above = _Above()


class _DefaultOps:
    """Stands in for the default engine's op table until the first op needs it.

    Creating the default engine loads plugins, so `import opgraph` stays cheap and a broken
    plugin cannot break the import; the engine replaces this object on `Value` when created.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(Above.default_engine().ops, name)

    # Python looks these up on the type, never through __getattr__: `dir(Value(1.0))` before
    # the first op (tab completion on a learner's first line) iterates this object.
    def __iter__(self):
        return iter(Above.default_engine().ops)

    def __contains__(self, name: object) -> bool:
        return name in Above.default_engine().ops


def applies(op: str, reflected: bool = False) -> Any:
    """Mark a method of Value as the operator that applies `op` (reflected: `2 * v`)."""

    def mark(method: Any) -> Any:
        method.applies = (op, reflected)
        return method

    return mark


class Value:
    """A scalar in the computation graph, a drop-in for micrograd's `Value`."""

    __slots__ = (
        "_data",
        "_grad",
        "_tag",  # the scope path (str) if no label and no hook, else a Tag
        "_a",
        "_b",  # the second operand; for 3 or more, a tuple of those after the first
        "_opdef",
        "_id",
    )

    # Two slots hold either of two kinds, told apart by `type(...) is`, which type checkers do
    # not narrow on for str and tuple: declared Any.
    _tag: Any  # str | Tag
    _b: Any  # Value | tuple[Value, ...] | None

    # Set per engine on its own Value class (the default engine uses this class itself).
    _ops: OpTable = _DefaultOps()  # pyright: ignore[reportAssignmentType]
    _engine: Engine | None = None
    _tracer: TracerHooks | None = None  # the engine's tracer; None when tracing is off
    _ids = itertools.count()

    def __init__(self, data: float, label: str = "", _prev: tuple = (), _op: Row | None = None):
        if type(data) is not float:
            data = _number(data)
        self._data = data
        self._grad = 0.0
        if type(label) is not str or label:
            self._tag = Tag(_checked_label(label), scope_path.get())
        else:
            self._tag = scope_path.get()
        self._a, self._b = _split(_prev)
        self._opdef = _op
        self._id = next(self._ids)
        if self._tracer is not None and not mode.get() & NO_GRAD:  # no_grad work is untraced
            self._tracer.forward(self)

    # --- what the node is -----------------------------------------------------------------

    @property
    def data(self) -> float:
        """The node's number, always a float."""
        return self._data

    @data.setter
    def data(self, data: float) -> None:
        self._data = data if type(data) is float else _real(data, self, "data")

    @property
    def grad(self) -> float:
        """d (the output backward started from) / d self, always a float."""
        return self._grad

    @grad.setter
    def grad(self, grad: float) -> None:
        self._grad = grad if type(grad) is float else _real(grad, self, "grad")

    @property
    def label(self) -> str:
        tag = self._tag
        return "" if type(tag) is str else tag.label

    @label.setter
    def label(self, label: str) -> None:
        if type(label) is not str or not label.isascii() or len(label) > MAX_LABEL:
            label = _checked_label(label)  # (the usual short ASCII label needs nothing)
        tag = self._tag
        if type(tag) is not str:
            tag.label = label  # (a node's Tag is its own)
        elif label:
            self._tag = Tag(label, tag)
        if self._tracer is not None:
            self._tracer.relabel(self)

    # --- the read API for tools (the server, draw_dot: docs/api.md) ----------------------
    # `id` and `op` are read for every traced event: their getters are C functions
    # (operator.attrgetter), cheaper than a Python function.
    id = property(
        attrgetter("_id"),
        doc="The node's number in its engine, in creation order (so parents come first).",
    )
    op = property(attrgetter("_opdef"), doc="The op that made this node, or None for a leaf.")

    if TYPE_CHECKING:  # what the attrgetter properties above return, for type checkers

        @property
        def id(self) -> int: ...
        @property
        def op(self) -> Row | None: ...

    @property
    def scope(self) -> str:
        """The path of the scopes the node was made in ("L0/N3"), "" outside any scope."""
        tag = self._tag
        return tag if type(tag) is str else tag.scope

    @property
    def op_name(self) -> str | None:
        """The name of the op that made this node (`"add"`), or None for a leaf."""
        return self._opdef.name if self._opdef is not None else None

    @property
    def parent_ids(self) -> tuple[int, ...]:
        """The ids of `parents`, in order."""
        a = self._a
        if a is None:
            return ()
        b = self._b
        if b is None:
            return (a._id,)
        if type(b) is not tuple:
            return (a._id, b._id)
        return (a._id, *[p._id for p in b])

    @property
    def _prev(self) -> tuple[Value, ...]:
        # micrograd's name for the parents (a set there; here ordered, duplicates kept).
        a = self._a
        if a is None:
            return ()
        b = self._b
        if b is None:
            return (a,)
        return (a, b) if type(b) is not tuple else (a, *b)

    @property
    def parents(self) -> tuple[Value, ...]:
        """The operands of the op that made this node, in order, duplicates kept."""
        return self._prev

    @property
    def _op(self) -> str:
        # micrograd's string for the op, empty for leaves, as its draw_dot prints it:
        # `+`, `*`, `**2`, `tanh`, `ReLU` (the op's symbol and fixed argument, Op.title).
        return self._opdef.title if self._opdef is not None else ""

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            return Above.default_engine()
        return self._engine

    def __repr__(self) -> str:
        label = f", label={self.label!r}" if self.label else ""
        return f"Value(data={self._data}, grad={self._grad}{label})"

    # --- pickling and copying -------------------------------------------------------------

    # What a pickle or a copy stores, in this order: the node's fields but the id (and not its
    # hooks), each on its own, as they were stored before the label, scope and parents shared
    # slots: pickles made then load as they are.
    _STATE = ("_data", "_grad", "_label", "_a", "_b", "_more", "_opdef", "_scope")

    def __getstate__(self) -> tuple:
        return _state(self)

    def __setstate__(self, state: tuple) -> None:
        # An unpickled or copied node takes a fresh id: backward orders nodes by id, and the
        # ids of another process (or of the original) would clash with this one's. Pickle and
        # copy restore the parents before their children, so the fresh ids keep that order.
        if type(state) is not tuple or len(state) != len(self._STATE):
            raise ValueError(f"a Value's state is a tuple of {len(self._STATE)} fields")
        self._data, self._grad, label, a, b, more, self._opdef, scope = state
        if type(label) is not str or type(scope) is not str:
            raise TypeError(f"a Value's label and scope are str, got {label!r} and {scope!r}")
        self._tag = Tag(label, scope) if label else scope
        self._a, self._b = a, b if more is None else (b, *more)
        self._id = next(self._ids)

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple:
        # Without recursion: pickle saves a node's parents inside the node's own record, one
        # level of C recursion per level of the graph, and fails on a long chain. So the first
        # node pickle meets (a root) lists its ancestors that pickle has not saved yet, parents
        # first (by id), before its own state: by the time pickle saves a node's parents they
        # are saved already, and it writes a reference. See _flat_pickle below.
        ancestors = _pickle_plan(self)
        if ancestors is None:  # a listed ancestor, or a node with no ancestor to list
            # (typeshed's copyreg lacks __newobj__, which the copyreg module has had since 2.3)
            newobj = copyreg.__newobj__  # pyright: ignore[reportAttributeAccessIssue]
            return (newobj, (type(self),), _state(self))
        return (_unpickle_root, (type(self), ancestors), _state(self))

    def __copy__(self) -> Value:
        # What copy.copy did before __reduce_ex__ above (which would walk the whole graph for
        # one shallow copy): the same slots, parents shared, a fresh id.
        twin = object.__new__(type(self))
        twin.__setstate__(self.__getstate__())
        return twin

    def __deepcopy__(self, memo: dict) -> Value:
        # Without recursion (copy.deepcopy would recurse once per level of the graph and fail
        # on a training loss): copy every ancestor not copied yet, in the order of the
        # originals' ids, so the copies' fresh ids keep that order (and a backward pass over
        # the copy adds up the grads in the same order, to the bit); `memo` keeps shared nodes
        # shared.
        todo: dict[int, Value] = {}
        stack: list[Value] = [self]
        while stack:
            node = stack.pop()
            if id(node) not in memo and id(node) not in todo:
                todo[id(node)] = node
                stack.extend(node._prev)
        for node in sorted(todo.values(), key=lambda v: v._id):
            twin = node._twin(memo)
            twin._data, twin._grad = node._data, node._grad
            tag = node._tag  # (a Tag is the node's own: the twin gets one without the hooks)
            twin._tag = tag if type(tag) is str else Tag(tag.label, tag.scope)
            twin._a, twin._b = _split(tuple(memo[id(p)] for p in node._prev))
            twin._opdef, twin._id = node._opdef, next(node._ids)
            memo[id(node)] = twin
        # As copy.deepcopy does: the memo keeps the originals alive, so their ids stay unique.
        memo.setdefault(id(memo), []).extend(todo.values())
        return memo[id(self)]

    def _twin(self, memo: dict) -> Value:
        """A bare node of this node's class, for __deepcopy__ to fill in (a stored
        parameter's twin is the same row of a copy of its store: stored.py)."""
        return object.__new__(type(self))

    # --- operators: each applies one op of the engine's op table ---------------------------
    # These are the methods as written. Each engine installs its bound op functions in their
    # place on its own Value class (binding.py: `install_operators`), so that `a * b` runs
    # the engine's node builder (binding.py: `_bind_primitive`) with no lookup in between;
    # these run only until then, and for an op the engine lacks. `@applies` marks the op each
    # one applies: OPERATORS, after the class, is read from these marks.

    @applies("add")
    def __add__(self, other: Value | float) -> Value:
        return self._ops.add(self, other)

    @applies("add", reflected=True)
    def __radd__(self, other: float) -> Value:  # 2 + v
        return self._ops.add(other, self)

    @applies("mul")
    def __mul__(self, other: Value | float) -> Value:
        return self._ops.mul(self, other)

    @applies("mul", reflected=True)
    def __rmul__(self, other: float) -> Value:
        return self._ops.mul(other, self)

    @applies("pow")
    def __pow__(self, other: Value | float) -> Value:
        return self._ops.pow(self, other)

    @applies("pow", reflected=True)
    def __rpow__(self, other: float) -> Value:
        return self._ops.pow(other, self)

    @applies("neg")
    def __neg__(self) -> Value:
        return self._ops.neg(self)

    @applies("sub")
    def __sub__(self, other: Value | float) -> Value:
        return self._ops.sub(self, other)

    @applies("sub", reflected=True)
    def __rsub__(self, other: float) -> Value:
        return self._ops.sub(other, self)

    @applies("div")
    def __truediv__(self, other: Value | float) -> Value:
        return self._ops.div(self, other)

    @applies("div", reflected=True)
    def __rtruediv__(self, other: float) -> Value:
        return self._ops.div(other, self)

    @applies("exp")
    def exp(self) -> Value:
        return self._ops.exp(self)

    @applies("log")
    def log(self) -> Value:
        return self._ops.log(self)

    @applies("tanh")
    def tanh(self) -> Value:
        return self._ops.tanh(self)

    @applies("relu")
    def relu(self) -> Value:
        return self._ops.relu(self)

    @applies("sigmoid")
    def sigmoid(self) -> Value:
        return self._ops.sigmoid(self)

    # --- Python's number protocols: refused, with what to write instead -----------------
    # A Value is a node of a graph, not a number. A float, a truth value or an order taken from
    # it would leave the graph: the gradient would silently stop there, and a compiled replay
    # (opgraph.compile) would keep the branch it took once. So these say what to write.

    def __bool__(self) -> bool:
        raise TypeError(
            f"the truth of {_described(self)} is not defined (`if v:` would always be true): "
            f"test its number, `if v.data > 0:`; a branch on data is not part of the graph, and "
            f"opgraph.compile refuses it"
        )

    def __float__(self) -> float:
        raise TypeError(
            f"float() of {_described(self)}: its number is `v.data`; for a math function keep "
            f"the graph with the Value's method (`v.exp()`, `v.log()`, `v.tanh()`, not "
            f"math.exp(v)), so that backward reaches v"
        )

    def __lt__(self, other: object) -> bool:
        raise TypeError(_unordered(self, "<"))

    def __le__(self, other: object) -> bool:
        raise TypeError(_unordered(self, "<="))

    def __gt__(self, other: object) -> bool:
        raise TypeError(_unordered(self, ">"))

    def __ge__(self, other: object) -> bool:
        raise TypeError(_unordered(self, ">="))

    def __abs__(self) -> Value:
        raise TypeError(
            f"abs() of {_described(self)}: opgraph's built-in ops have no abs; write "
            f"`v.relu() + (-v).relu()`, or register an abs op (docs/plugins.md)"
        )

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: any op a plugin registers is a method too,
        # so `v.sin()` works once a plugin registers `sin`, and `v.atan2(w)` for binary ops.
        if name.startswith("_"):
            raise AttributeError(f"'Value' object has no attribute {name!r}")
        try:
            op = getattr(self._ops, name)
        except AttributeError as exc:
            raise AttributeError(
                f"'Value' object has no attribute {name!r}, and no plugin registers an op "
                f"of that name{getattr(exc, 'plugin_note', '')}"  # a plugin that failed to load
            ) from None
        try:
            method = op.as_method
        except AttributeError:  # once per bound op: a function with its name, doc, signature
            if name not in self._ops:  # an attribute of the op table itself, not an op
                raise AttributeError(f"'Value' object has no attribute {name!r}") from None
            method = op.as_method = _op_method(op)
        return MethodType(method, self)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._ops))

    # --- gradients ------------------------------------------------------------------------

    def _backward(self) -> None:
        """This node's own step of the chain rule, as micrograd's `_backward` closure does.

        Adds (d self / d parent) * self.grad to each parent's grad; a leaf has no step.
        For working through backpropagation by hand: set the root's grad to 1.0, then call
        `_backward()` on each node from the root down (children before parents).
        `backward()` does all of it at once and is not built on this method.
        """
        Above.step(self)

    def backward(self, gradient: float = 1.0) -> None:
        """Add d self / d node (times `gradient`) to the grad of every node in the graph."""
        Above.backward(self, gradient)

    def register_hook(self, fn: Any) -> Any:
        """Call `fn(grad)` in each backward pass (and `grad` call) once this node's gradient
        is complete, before it flows to the parents; a number returned replaces it.

        Returns a handle whose `remove()` unregisters the hook (docs/higher-order.md).
        """
        return Above.register_hook(self, fn)

    def zero_grad(self) -> None:
        """Reset the grad of every node in this graph to 0."""
        Above.zero_grad(self)


def _described(node: Value) -> str:
    """A node as an error names it: "Value 'w1'", or by its id, "Value #12"."""
    label = node.label
    return f"Value {label!r}" if label else f"Value #{node._id}"


def _unordered(node: Value, symbol: str) -> str:
    return (
        f"'{symbol}' on {_described(node)}: Values have no order; compare numbers, "
        f"`a.data {symbol} b.data` (a branch on data is not part of the graph, and "
        f"opgraph.compile refuses it); for max(a, b) in the graph write `(a - b).relu() + b`, "
        f"and `v.relu()` for max(v, 0)"
    )


class Tag:
    """A node's label, scope path and gradient hooks, in its `_tag` slot when it has a label
    or a hook (the other nodes keep just their scope path there). Each node has its own."""

    __slots__ = ("label", "scope", "hooks")

    def __init__(self, label: str, scope: str, hooks: Any = None):
        self.label, self.scope, self.hooks = label, scope, hooks

    def __repr__(self) -> str:
        return f"Tag({self.label!r}, {self.scope!r})"


def _state(node: Value) -> tuple:
    """A node's state, the fields of Value._STATE."""
    tag, b = node._tag, node._b
    label, scope = ("", tag) if type(tag) is str else (tag.label, tag.scope)
    if type(b) is tuple:
        return (node._data, node._grad, label, node._a, b[0], b[1:], node._opdef, scope)
    return (node._data, node._grad, label, node._a, b, None, node._opdef, scope)


# Each operator and op method of Value, and the op it applies; True marks a reflected operator
# (`2 * v` calls `v.__rmul__(2)`, which is `mul(2, v)`). Read from the `@applies` marks of the
# methods as written above, which are also what an engine keeps for an op it lacks
# (binding.py: `install_operators`).
DISPATCHING: dict[str, Any] = {
    name: method
    for name, method in vars(Value).items()
    if inspect.isfunction(method) and hasattr(method, "applies")
}
OPERATORS: dict[str, tuple[str, bool]] = {
    name: method.applies for name, method in DISPATCHING.items()
}


def _op_method(op: Any) -> Any:
    """The bound op `op` as a method of Value: `v.sin()` is `sin(v)`, `v.atan2(w)`.

    It carries the op's name, doc and signature (so `help(v.sin)` and `inspect.signature`
    describe the op), and counts arguments as the user wrote them, the Value not included.
    """
    name = op.__name__
    others = len(inspect.signature(op).parameters) - 1  # bind() signs it with its operands

    # Unary and binary ops, nearly all of them, pass their arguments on without unpacking.
    if others == 0:

        def method(self, *args):
            if args:
                raise _arguments_error(name, 0, len(args))
            return op(self)

    elif others == 1:

        def method(self, *args):
            if len(args) != 1:
                raise _arguments_error(name, 1, len(args))
            return op(self, args[0])

    else:

        def method(self, *args):
            if len(args) != others:
                raise _arguments_error(name, others, len(args))
            return op(self, *args)

    method.__name__ = name
    method.__qualname__ = f"Value.{name}"
    method.__doc__ = op.__doc__
    method.__module__ = op.__module__
    method.__signature__ = inspect.signature(op)
    return method


def _arguments_error(name: str, others: int, given: int) -> TypeError:
    wanted = "no arguments" if others == 0 else f"{others} argument{'s' * (others > 1)}"
    return TypeError(f"{name}() takes {wanted} besides the value, got {given}")


# --- pickling a graph of any depth (Value.__reduce_ex__) -------------------------------------
# Pickle saves each object once per pickle, then writes a reference to it, and has no hook for
# the start or end of a pickle. So each thread keeps (`_flat_pickle`):
# - `listed`, `next`: the ancestors the last root listed, and which one pickle saves next (it
#   saves them in order, and nothing else in between: their parents come earlier in the list);
# - `saved`: the nodes saved in this pickle (id -> `_mark`, the node's class and number): a
#   later root, pickled in the same pickle (`pickle.dumps(topological_order(loss))`), stops
#   listing at them.
# A pickle is told apart by the frame that called it (C code adds no frame of its own); a node
# asked for once saved belongs to a new pickle too (`dumps` called again from the same line).
# Marks, not the nodes: a graph is not kept alive by having been pickled, and a node whose
# id() a dead one had is told apart by its number, which no other node of its class has.

_flat_pickle = threading.local()


def _pickle_plan(node: Value) -> list[Value] | None:
    """The ancestors of `node` to list before it, parents first; None: pickle it as is."""
    flat = _flat_pickle
    try:
        listed, saved = flat.listed, flat.saved
    except AttributeError:
        listed, saved = flat.listed, flat.saved = [], {}
        flat.next = flat.caller = 0
    key = id(node)
    if flat.next < len(listed) and listed[flat.next] is node:  # the next one of a list
        flat.next += 1
        saved[key] = _mark(node)
        return None
    caller = _pickle_caller()
    if flat.caller != caller or saved.get(key) == _mark(node):
        saved.clear()  # another pickle
        flat.caller = caller
    listed = flat.listed = _unsaved_ancestors(node, saved)
    flat.next = 0
    saved[key] = _mark(node)
    return listed or None


def _mark(node: Value) -> tuple[int, int]:
    """What tells a node apart for as long as its class lives: the class and its number."""
    return id(type(node)), node._id


def _pickle_caller() -> tuple[int, int] | None:
    """Where pickle was called: the frame below Value.__reduce_ex__ and _pickle_plan (pickle's
    own code is C, no frame), as its id and the instruction it is at."""
    try:
        frame = sys._getframe(3)
    except ValueError:  # called from C with no Python frame below
        return None
    return id(frame), frame.f_lasti


def _unsaved_ancestors(node: Value, saved: dict) -> list[Value]:
    """The ancestors of `node` not in `saved`, by id (so parents before their children)."""
    found: dict[int, Value] = {}
    stack = [node]
    while stack:
        child = stack.pop()
        # The parents from the slots, not `_prev`: a property call per node is most of the time
        b = child._b
        for parent in (child._a, *b) if type(b) is tuple else (child._a, b):
            if parent is None:
                break
            key = id(parent)
            if key in found:
                continue
            if saved.get(key) == _mark(parent):
                continue
            found[key] = parent
            stack.append(parent)
    return sorted(found.values(), key=attrgetter("_id")) if found else []


def engine_class(node: Any) -> type:
    """The engine's Value class of a node: its own class, or for a stored parameter its
    class's base (stored.py). `engine_class(x) is cls` says "x is a node of cls's engine"."""
    return getattr(type(node), "_plain", type(node))


def _unpickle_root(cls: type, ancestors: list) -> Value:
    """A root node, after its ancestors (`ancestors`, loaded already); pickle then restores
    its state (`Value.__setstate__`)."""
    # (a stored parameter's class is refused: a parameter is made in a row of its store)
    if not (isinstance(cls, type) and issubclass(cls, Value)) or hasattr(cls, "_plain"):
        raise TypeError(f"not a pickled Value: {cls!r}")
    return object.__new__(cls)


def _split(parents: tuple) -> tuple[Any, Any]:
    """Parents as the slots `_a` and `_b` hold them."""
    if not parents:
        return None, None
    if len(parents) == 1:
        return parents[0], None
    if len(parents) == 2:
        return parents[0], parents[1]
    return parents[0], tuple(parents[1:])


def _number(data: Any) -> float:
    """A leaf's data as a float, or a TypeError that says what was wrong."""
    if isinstance(data, Real):
        try:
            return float(data)
        except OverflowError:  # an int beyond the largest float rounds to inf, as IEEE-754
            return -math.inf if data < 0 else math.inf
    if isinstance(data, Value):
        raise TypeError(
            "Value(...) takes a number; to reuse a Value, use it directly "
            f"(got Value with data {data.data!r})"
        )
    raise TypeError(f"a Value's data must be a real number, got {type(data).__name__}: {data!r}")


def _real(x: Any, node: Value, attribute: str) -> float:
    """`x` as a float for `node.data` or `node.grad`, or a TypeError naming the node."""
    if isinstance(x, Real):
        return _number(x)
    raise TypeError(
        f"the {attribute} of {_described(node)} must be a real number (a float, an int, a numpy "
        f"scalar ...), got {type(x).__name__}: {x!r}"
    )


def _checked_label(label: Any) -> str:
    """`label` as a node keeps it: a str that every viewer can show as it is (trace/text.py's
    `viewer_text`: lone surrogates replaced, cut to MAX_LABEL code points with `…`)."""
    if not isinstance(label, str):
        raise _label_error(label)
    return viewer_text(label, MAX_LABEL)


def _label_error(label: Any) -> TypeError:
    hint = ""
    if isinstance(label, tuple | list | set):  # micrograd's Value(data, _children, _op)
        hint = "; Value(data, children, op) is micrograd's internal form: new ops come from plugins"
    return TypeError(f"a Value's label must be a str, got {type(label).__name__}: {label!r}{hint}")
