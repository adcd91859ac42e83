"""Binding: each engine's ops turned into the plain functions that build nodes (the hot path).

`ops.py` says what an op is; this module makes, for one engine, the function that applies an
op: it coerces the operands, calls the plugin's forward, and builds the output node in place.
Every node of a graph but the leaves a user makes is built here (`_bind_primitive`); the
operators of the engine's Value class (`a * b`) are these functions themselves
(`install_operators`). No pluggy call and no lookup by name happen on this path.

A node is built by storing every slot of `Value.__slots__` (see value.py); the builders here
and in value.py must set all of them, which tests/test_value.py checks for each way a node is
made.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

from . import rules
from .errors import (
    AnomalyError,
    EngineMismatchError,
    OperandError,
    OpError,
    describe,
    op_error,
    registration_error,
)
from .modes import ANOMALY, NO_GRAD, child_path, mode, scope_path
from .ops import AnyOp, Composite, Row, _parameter_names, with_constants
from .stored import stored_class
from .value import DISPATCHING, OPERATORS, Value, _number

if TYPE_CHECKING:
    from .contracts import TracerHooks


def _coercer(cls: type[Value], op: AnyOp, tracer: TracerHooks | None) -> Callable[[Any], Value]:
    """A function that turns an operand into a Value of `cls`, or explains why it cannot."""
    new, next_id, get_scope = object.__new__, cls._ids.__next__, scope_path.get

    def to_value(x: Any) -> Value:
        if type(x) is float or type(x) is int:
            # A constant leaf (the 2 of `2 * x`), built in place as the op functions do.
            node = new(cls)
            node._data = _float_of_int(x) if type(x) is int else x
            node._grad, node._tag = 0.0, get_scope()
            node._a = node._b = node._opdef = None
            node._id = next_id()
            if tracer is not None and not mode.get() & NO_GRAD:  # no_grad work is untraced
                tracer.forward(node)
            return node
        if isinstance(x, Value):
            if x._ops is cls._ops:
                return x
            assert cls._engine is not None  # (an engine sets it before it binds its ops)
            raise op_error(
                op,
                f"got {describe(x)} of engine {x.engine.name!r}, the other operands are of "
                f"engine {cls._engine.name!r}; Values of two engines do not mix",
                error=EngineMismatchError,
            )
        if isinstance(x, Real):
            return cls(_number(x))
        raise op_error(
            op,
            f"got an operand of type {type(x).__name__}: {x!r}; operands must be Values or "
            f"real numbers",
            error=OperandError,
        )

    return to_value


def _float_of_int(x: int) -> float:
    try:
        return float(x)
    except OverflowError:  # beyond the largest float: inf, as IEEE-754
        return _number(x)


def _as_float(op: AnyOp, out: Any) -> float:
    if isinstance(out, Real):
        return _number(out)  # a float even for an int beyond the largest float
    raise op_error(
        op, f"forward returned {out!r} of type {type(out).__name__}; it must return a real number"
    )


def forward_error(op: AnyOp, operands: Sequence[Value], exc: Exception) -> OpError:
    return op_error(op, "failed in forward", inputs=operands, detail=f"{type(exc).__name__}: {exc}")


def _checked(op: Row, cls: type[Value], out: float, parents: tuple, flags: int) -> Value:
    """The slow path of an op under no_grad() or detect_anomaly()."""
    if flags & ANOMALY and not math.isfinite(out):
        raise op_error(op, f"produced {out} in forward", inputs=parents, error=AnomalyError)
    if flags & NO_GRAD:
        return cls(out)  # a leaf, untraced (Value.__init__ reads the mode)
    return cls(out, "", parents, op)


def _bind_primitive(
    op: Row, cls: type[Value], engine_flags: int, tracer: TracerHooks | None
) -> Callable:
    """The function that runs `op` on operands: the hot path of every graph.

    It builds the output node in place (`new(cls)` and seven slot stores) rather than calling
    `cls(...)`, which would run `Value.__init__` through a slower generic call; `tracer` and
    `engine_flags` are fixed here, so the engine binds its ops again when either changes.
    """
    forward, to_value = op.forward, _coercer(cls, op, tracer)
    stored = stored_class(cls)  # a stored parameter of this engine is a Value of it too
    new, next_id, get_mode = object.__new__, cls._ids.__next__, mode.get
    get_scope = scope_path.get

    # Unary and binary ops get their own functions: they are almost every op in a graph, and
    # unpacking *args costs more than the rest of the work.
    if op.arity == 1:

        def unary(a):
            if type(a) is not cls and type(a) is not stored:
                a = to_value(a)
            try:
                out = forward(a._data)
            except Exception as exc:
                raise forward_error(op, (a,), exc) from exc
            if type(out) is not float:
                out = _as_float(op, out)
            if get_mode() or engine_flags:
                return _checked(op, cls, out, (a,), get_mode() | engine_flags)
            node = new(cls)
            node._data, node._grad, node._tag = out, 0.0, get_scope()
            node._a, node._b = a, None
            node._opdef, node._id = op, next_id()
            if tracer is not None:
                tracer.forward(node)
            return node

        return unary

    if op.arity == 2:

        def binary(a, b):
            if type(a) is not cls and type(a) is not stored:
                a = to_value(a)
            if type(b) is not cls and type(b) is not stored:
                b = to_value(b)
            try:
                out = forward(a._data, b._data)
            except Exception as exc:
                raise forward_error(op, (a, b), exc) from exc
            if type(out) is not float:
                out = _as_float(op, out)
            if get_mode() or engine_flags:
                return _checked(op, cls, out, (a, b), get_mode() | engine_flags)
            node = new(cls)
            node._data, node._grad, node._tag = out, 0.0, get_scope()
            node._a, node._b = a, b
            node._opdef, node._id = op, next_id()
            if tracer is not None:
                tracer.forward(node)
            return node

        return binary

    def nary(*operands):
        if len(operands) != op.arity:
            raise op_error(
                op, f"takes {op.arity} operands, got {len(operands)}", error=OperandError
            )
        parents = tuple(x if type(x) is cls or type(x) is stored else to_value(x) for x in operands)
        try:
            out = forward(*[p._data for p in parents])
        except Exception as exc:
            raise forward_error(op, parents, exc) from exc
        if type(out) is not float:
            out = _as_float(op, out)
        flags = get_mode() | engine_flags
        if flags:
            return _checked(op, cls, out, parents, flags)
        return cls(out, "", parents, op)  # Value.__init__ tells the tracer

    return nary


def _bind_static(
    op: Row, cls: type[Value], engine_flags: int, tracer: TracerHooks | None
) -> Callable:
    """Bind an op with static positions: plain numbers there are baked into the op."""
    full = _bind_primitive(op, cls, engine_flags, tracer)

    @functools.lru_cache(maxsize=256)
    def fixed(constants: tuple[tuple[int, float], ...]) -> Callable[..., Value]:
        return _bind_primitive(with_constants(op, constants), cls, engine_flags, tracer)

    def apply(*operands):
        constants = tuple(
            (i, _number(operands[i]))
            for i in op.static
            if i < len(operands) and isinstance(operands[i], Real)
        )
        if not constants:
            return full(*operands)
        positions = {i for i, _ in constants}
        rest = [x for i, x in enumerate(operands) if i not in positions]
        return fixed(constants)(*rest)

    if op.arity == 2 and op.static == (1,):
        # The common case, `x ** 2`, without building tuples and sets on every call.
        by_exponent: dict[float, Callable[..., Value]] = {}

        def apply_binary(a, b):
            if type(b) is float or type(b) is int:
                unary = by_exponent.get(b)
                if unary is None:
                    if len(by_exponent) > 256:
                        by_exponent.clear()
                    unary = by_exponent[b] = fixed(((1, _number(b)),))
                return unary(a)
            return apply(a, b)

        return apply_binary
    return apply


def _bind_composite(
    op: Composite, cls: type[Value], tracer: TracerHooks | None
) -> Callable[..., Value]:
    fn, to_value = op.fn, _coercer(cls, op, tracer)
    stored = stored_class(cls)  # as in _bind_primitive
    assert fn is not None  # (Composite.check() refused a composite without one)
    get_scope, set_scope, reset_scope = scope_path.get, scope_path.set, scope_path.reset
    inside: dict[str, str] = {}  # the scope the parts run in, by the scope the op runs in

    def run(values: Sequence[Value]) -> Value:
        # The parts run in a scope named after the op: a viewer shows them as one group.
        parent = get_scope()
        path = inside.get(parent)
        if path is None:
            if len(inside) > 1024:  # (scopes made on the fly must not grow it without end)
                inside.clear()
            path = inside[parent] = child_path(parent, op.name)
        token = set_scope(path)
        try:
            out = fn(*values)
        except (OpError, EngineMismatchError, AnomalyError):
            raise
        except Exception as exc:
            raise forward_error(op, values, exc) from exc
        finally:
            reset_scope(token)
        if type(out) is not cls and type(out) is not stored:
            raise op_error(
                op, f"returned {out!r}; a composite op must return a Value built from other ops"
            )
        return out

    # As for primitives, unary and binary composites (neg, sub, div) skip the *args work.
    if op.arity == 1:

        def unary(a):
            return run((a if type(a) is cls or type(a) is stored else to_value(a),))

        return unary

    if op.arity == 2:

        def binary(a, b):
            a = a if type(a) is cls or type(a) is stored else to_value(a)
            return run((a, b if type(b) is cls or type(b) is stored else to_value(b)))

        return binary

    def composite(*operands):
        if len(operands) != op.arity:
            raise op_error(
                op, f"takes {op.arity} operands, got {len(operands)}", error=OperandError
            )
        return run([x if type(x) is cls or type(x) is stored else to_value(x) for x in operands])

    return composite


def bind(
    op: AnyOp, cls: type[Value], engine_flags: int = 0, tracer: TracerHooks | None = None
) -> Callable[..., Value]:
    """The function that applies `op` to operands and returns a new Value of `cls`.

    `engine_flags` (ANOMALY for an engine that checks every op) and `tracer` (told about
    every new node, or None) are fixed into the function.
    """
    if isinstance(op, Composite):
        fn = _bind_composite(op, cls, tracer)
    elif op.static:
        fn = _bind_static(op, cls, engine_flags, tracer)
    else:
        fn = _bind_primitive(op, cls, engine_flags, tracer)
    # Named, documented and signed as the op, so `help(ops.sin)` and `help(v.sin)` show it.
    fn.__name__ = fn.__qualname__ = op.name
    fn.__doc__ = op.doc or None
    fn.__signature__ = _signature(op)
    return fn


def _signature(op: AnyOp) -> inspect.Signature:
    """The operands of `op`, positional, named as its function names them (else x1, x2 ...)."""
    names = _parameter_names(op.forward if isinstance(op, Row) else op.fn)[: op.arity]
    if len(names) != op.arity:
        names = [f"x{i + 1}" for i in range(op.arity)]  # pyright: ignore[reportArgumentType]
    return inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in names]
    )


class OpTable:
    """One engine's frozen op table. `ops.add(a, b)`, `ops["add"]`, `"sin" in ops`.

    Attributes are the bound op functions; `ops.definitions[name]` is the checked `Row`
    (or `Composite`) with the plugin that provides it; `ops.chain_rule` is the eager backward
    loop made from the rows (rules.chain_rule_for), `ops.float_pass` grad()'s and
    `ops.tangent_pass` jvp()'s.
    """

    def __init__(
        self,
        definitions: dict[str, AnyOp],
        cls: type[Value],
        engine_flags: int = 0,
        tracer: TracerHooks | None = None,
    ):
        self.definitions = dict(definitions)
        for name, op in definitions.items():
            setattr(self, name, bind(op, cls, engine_flags, tracer))
        rows = [op for op in definitions.values() if isinstance(op, Row)]
        self.chain_rule = rules.chain_rule_for(rows)  # backward's loop
        self.float_pass = rules.float_pass_for(rows)  # grad()'s, into a dict
        self.tangent_pass = rules.tangent_pass_for(rows)  # jvp()'s forward sweep

    def __getitem__(self, name: str) -> Callable[..., Value]:
        try:
            return self.__dict__[name] if name in self.definitions else self._missing(name)
        except AttributeError as exc:
            raise KeyError(name) from exc

    def __getattr__(self, name: str) -> Any:
        return self._missing(name)

    def _missing(self, name: str):
        known = ", ".join(sorted(self.__dict__.get("definitions", ()))) or "none"
        raise AttributeError(f"no op named {name!r} is registered; registered ops: {known}")

    def __contains__(self, name: object) -> bool:
        return name in self.definitions

    def __iter__(self):
        return iter(sorted(self.definitions))

    def __len__(self) -> int:
        return len(self.definitions)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.definitions))

    def __repr__(self) -> str:
        return f"<OpTable {', '.join(sorted(self.definitions))}>"


def install_operators(cls: type[Value], ops: OpTable) -> None:
    """Make the operators of an engine's Value class its bound ops themselves.

    `a * b` then runs the engine's `mul` (built by `_bind_primitive` above) without a
    dispatch step in between (a Python call saved per node). An op the engine lacks keeps
    the dispatching method of value.py, whose op table raises the error that lists the
    registered ops.
    """
    for method, (name, reflected) in OPERATORS.items():
        if name not in ops:
            setattr(cls, method, DISPATCHING[method])
        elif reflected:
            setattr(cls, method, _reflected(ops[name]))
        else:
            setattr(cls, method, ops[name])


def _reflected(op):
    def reflected(self, other):
        return op(other, self)

    reflected.__name__ = reflected.__qualname__ = f"r{op.__name__}"
    return reflected


# ---------------------------------------------------------------------------------------------
# Registration's last check: value_derivative against derivative, on a probe table


# Where registration compares an op's value_derivative with its derivative: input i of point
# `start` is start + 0.375 i, each input a different number (so that a partial given for the
# wrong input shows), positive (inside the domain of log and sqrt) and away from relu's kink.
_VALUE_PROBE_STARTS = (0.5, 1.25, 0.75)


class _ProbeEngine:
    """What `.engine` of the Values of the probe answers (it has no engine of its own)."""

    name = "(value_derivative check)"
    detect_anomaly = False


def check_value_derivatives(table: dict[str, AnyOp]) -> None:
    """Refuse an op whose value_derivative disagrees with its derivative (the first order of
    grad(..., create_graph=True) would be wrong, silently), raising PluginError.

    value_derivative builds Values with the engine's ops, so it is called on Values of a
    class of their own, bound to the new table without a tracer. A point where the forward,
    the derivative or the value_derivative raises, or gives a non-finite number, proves
    nothing and is skipped: a value_derivative that fails is reported where grad() calls it.
    """
    try:
        key = frozenset(table.items())
    except TypeError:  # an op holding an unhashable callable: check it every time
        _check_table(tuple(table.items()))
    else:
        _checked_table(key)  # each engine rebuilds the same table: checked once


def _check_table(items: Iterable[tuple[str, AnyOp]]) -> None:
    table = dict(items)
    # An inline row's value_derivative is made from its own partials: nothing to compare.
    probed = [
        op
        for op in table.values()
        if isinstance(op, Row) and op.value_derivative and op.partials is None
    ]
    if not probed:
        return
    cls: Any = type("Value", (Value,), {"__slots__": ()})
    cls._ids, cls._tracer, cls._engine = itertools.count(), None, _ProbeEngine()
    cls._ops = OpTable(table, cls)
    install_operators(cls, cls._ops)
    for op in probed:
        for start in _VALUE_PROBE_STARTS:
            xs = tuple(start + 0.375 * i for i in range(op.arity))
            # As a plain number at the static positions too: how `x ** 3` calls it.
            for fixed in dict.fromkeys(((), op.static)):
                _compare_partials(op, cls, xs, fixed)


_checked_table = functools.lru_cache(maxsize=16)(_check_table)  # (raising is not cached)


def _compare_partials(op: Row, cls: Any, xs: tuple[float, ...], fixed: tuple[int, ...]) -> None:
    try:
        out = op.forward(*xs)
        expected = tuple(op.derivative(out, *xs))
        args = [x if i in fixed else cls(x) for i, x in enumerate(xs)]
        value_derivative = op.value_derivative
        assert value_derivative is not None  # (only such rows are probed)
        got = tuple(value_derivative(cls(out), *args))
    except Exception:
        return
    if len(got) != len(xs) or len(expected) != len(xs):
        return  # a wrong count: reported where it is used
    for i, (value, number) in enumerate(zip(got, expected, strict=True)):
        if i in fixed:
            continue
        value = value._data if isinstance(value, Value) else value
        if not isinstance(value, Real) or not isinstance(number, Real):
            continue
        value, number = _number(value), _number(number)
        if not (math.isfinite(value) and math.isfinite(number)):
            continue
        if not math.isclose(value, number, rel_tol=1e-9, abs_tol=1e-12):
            raise registration_error(
                op.plugin,
                op.name,
                f"its value_derivative disagrees with its derivative at inputs {xs}: the "
                f"partial for input {i + 1} of {len(xs)} is {value!r} on Values and {number!r} "
                f"on floats, so grad(..., create_graph=True) would give wrong derivatives; "
                f"value_derivative must be the derivative again, on Values (docs/plugins.md)",
            )
