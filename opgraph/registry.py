"""The op registry: what an op is, how plugins register ops, and the frozen op table.

A plugin describes an op once (`Op` or `Composite`); the engine collects every plugin's ops
when its plugins change, checks them, and binds each to its `Value` class as a plain Python
function. Those bound functions are the hot path: no pluggy call, no lookup by name.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import math
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from numbers import Real
from typing import TYPE_CHECKING, Any

from .errors import AnomalyError, EngineMismatchError, OpError, PluginError, describe
from .modes import ANOMALY, NO_GRAD, mode
from .value import _number

if TYPE_CHECKING:
    from .value import Value


@dataclass(frozen=True)
class Op:
    """A primitive op: its forward function and its local derivatives.

    `forward(*xs) -> float` computes the output from the inputs' data.
    `derivative(out, *xs) -> tuple` returns d out / d x_i for each input, given the output
    and the inputs; backward multiplies each by the output's grad (the chain rule).
    `arity` defaults to the number of positional parameters of `forward`.
    `static` lists argument positions that, given a plain number, are baked into the op
    instead of becoming a constant leaf: `x ** 2` has one parent, as in micrograd.
    `array_forward` and `array_derivative`, optional, are the same two functions on numpy
    arrays (element by element), for batched replay (`Compiled.map`); without them it
    applies `forward` and `derivative` to each element.

    An op has three printed forms. `name` (`pow`) is its identifier: the registry key, the
    method `v.pow(...)`, and the word every error message uses. `symbol` (`**`) is how it is
    written, micrograd-style; it defaults to the name. `title` is micrograd's `_op` string,
    the symbol followed by any fixed argument (`**2` for `x ** 2`), which draw_dot shows.
    """

    name: str
    forward: Callable[..., float] | None = None  # None only to report it by name in check()
    derivative: Callable[..., Sequence[float]] | None = None
    arity: int | None = None
    static: tuple[int, ...] = ()
    doc: str = ""
    symbol: str = ""  # micrograd's way of writing the op (`*`, `**`); "" means the name
    plugin: str = ""  # set by the registry: the name of the plugin that registered the op
    constants: tuple[tuple[int, float], ...] = field(default=(), repr=False)  # (position, value)
    base: Op | None = field(default=None, repr=False, compare=False)  # the op before fixing
    # Optional: the op on numpy arrays, element by element, for `Compiled.map` (batched
    # replay): array_forward(*xs) -> array, array_derivative(out, *xs) -> tuple of arrays.
    array_forward: Callable[..., Any] | None = field(default=None, repr=False)
    array_derivative: Callable[..., Sequence[Any]] | None = field(default=None, repr=False)

    @property
    def title(self) -> str:
        """micrograd's `_op` string for the op: `*`, `**2` for `x ** 2`, `ReLU`."""
        symbol = self.symbol or self.name
        if not self.constants:
            return symbol
        constants = " ".join(_number_text(value) for _, value in self.constants)
        # `**2` as micrograd writes it, but `clip 0 1` for a symbol that is a word
        return f"{symbol} {constants}" if symbol[-1].isalnum() else symbol + constants

    @property
    def described(self) -> str:
        """The op as error messages name it: `op 'pow' with b=-1 (plugin '...')`."""
        fixed = ""
        if self.constants:
            names = _parameter_names(self.base.forward if self.base else None)
            fixed = " with " + ", ".join(
                f"{names[i] if i < len(names) else f'argument {i + 1}'}={_number_text(value)}"
                for i, value in self.constants
            )
        return f"op {self.name!r}{fixed} (plugin {self.plugin!r})"

    # An op is pickled by name: a pickled graph is loaded with the ops of the default engine
    # of the loading process (plugin functions are often lambdas, which pickle cannot store).
    # Copies share the op: it is immutable.
    def __reduce__(self):
        return (_registered_op, (self.name, self.plugin, self.constants))

    def __copy__(self) -> Op:
        return self

    def __deepcopy__(self, memo: dict) -> Op:
        return self


@dataclass(frozen=True)
class Composite:
    """An op defined as a function of Values built from other ops (`div` is `a * b**-1`).

    It needs no derivative: backward goes through the ops it is built from, so its nodes
    never carry it and its `symbol` (`/` for div) is for documentation only.
    """

    name: str
    fn: Callable[..., Value] | None = None  # None only to report it by name in check()
    arity: int | None = None
    doc: str = ""
    symbol: str = ""
    plugin: str = ""

    @property
    def described(self) -> str:
        return f"op {self.name!r} (plugin {self.plugin!r})"


def _number_text(value: float) -> str:
    """A fixed argument as micrograd prints it: `2` for 2.0, `-1`, `0.5`."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _parameter_names(fn: Callable | None) -> list[str]:
    """The names of `fn`'s positional parameters, for messages (empty when unknown)."""
    try:
        params = list(inspect.signature(fn).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in _POSITIONAL]


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


AnyOp = Op | Composite


def _registered_op(name: str, plugin: str, constants: tuple[tuple[int, float], ...]) -> Op:
    """The op `name` of `plugin` in the default engine: how a pickled node finds its op."""
    from .engine import default_engine

    op = default_engine().ops.definitions.get(name)
    if not isinstance(op, Op) or op.plugin != plugin:
        now = f"plugin {op.plugin!r} registers it" if op is not None else "no plugin registers it"
        raise PluginError(
            f"cannot load a pickled Value made by op {name!r} of plugin {plugin!r}: in the "
            f"default engine of this process {now}",
            plugin=plugin,
            op=name,
        )
    return with_constants(op, constants) if constants else op


# Names an op may not take: they would shadow an attribute of Value. The unary built-ins that
# Value has as methods (v.exp(), v.tanh() ...) dispatch to the op table, so they are allowed.
METHOD_OPS = frozenset({"exp", "tanh", "relu", "log", "sigmoid"})


@functools.cache
def reserved_names() -> frozenset[str]:
    """Names no op may take: Value's attributes, and the op table's own (`ops.definitions`)."""
    from .value import Value

    value_names = {n for n in dir(Value) if not n.startswith("_")} - METHOD_OPS
    table_names = {n for n in dir(OpTable) if not n.startswith("_")} | {"definitions"}
    return frozenset(value_names | table_names)


# ---------------------------------------------------------------------------------------------
# Checking what a plugin registers


def _positional_arity(fn: Callable) -> int | None:
    """How many positional arguments `fn` takes, or None for *args."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return None
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in positional and p.default is p.empty)


def check(op: Any, plugin: str) -> AnyOp:
    """Check one registered op and return it with its plugin and arity filled in.

    Raises PluginError naming the plugin and the op for anything malformed.
    """
    if not isinstance(op, Op | Composite):
        raise PluginError(
            f"plugin {plugin!r} registered {op!r}: expected an opgraph.Op or opgraph.Composite",
            plugin=plugin,
        )

    def fail(problem: str) -> PluginError:
        return PluginError(
            f"plugin {plugin!r}, op {op.name!r}: {problem}", plugin=plugin, op=op.name
        )

    if not isinstance(op.name, str) or not op.name.isidentifier() or keyword.iskeyword(op.name):
        raise fail("an op name must be a Python identifier and not a keyword")
    if unicodedata.normalize("NFKC", op.name) != op.name:
        # Python reads identifiers in NFKC form: `v.ﬁ()` in source code means `v.fi()`.
        raise fail(
            f"an op name must be in NFKC form, as Python reads it: {op.name!r} is read "
            f"as {unicodedata.normalize('NFKC', op.name)!r}"
        )
    if op.name.startswith("_") or op.name in reserved_names():
        raise fail(
            "this name would shadow an attribute of Value or of the op table "
            "(data, grad, label, backward ...); choose another"
        )
    symbol = op.symbol or op.name
    if (
        not isinstance(symbol, str)
        or not symbol.strip()
        or not symbol.isprintable()
        or len(symbol) > 20
    ):
        raise fail(f"symbol must be a short printable string such as '*' or '**', got {symbol!r}")
    op = replace(op, symbol=symbol)
    body = op.forward if isinstance(op, Op) else op.fn
    what = "forward" if isinstance(op, Op) else "fn"
    if body is None:
        raise fail(f"{what} must be callable; none was given")
    if not callable(body):
        raise fail(f"{what} must be callable, got {body!r}")
    arity = op.arity if op.arity is not None else _positional_arity(body)
    if arity is None:
        raise fail("give arity= explicitly: the function takes *args")
    if not isinstance(arity, int) or arity < 1:
        raise fail(f"arity must be a positive integer, got {arity!r}")
    takes = _positional_arity(body)
    if takes is not None and takes != arity:
        raise fail(f"arity is {arity} but the function takes {takes} positional arguments")
    doc = op.doc or _first_line(inspect.getdoc(body))
    if isinstance(op, Composite):
        return replace(op, arity=arity, plugin=plugin, doc=doc)

    if op.derivative is None:
        raise fail(
            "derivative must be callable; none was given: a primitive Op needs "
            "derivative(out, *inputs) -> tuple; an op built from other ops is a Composite"
        )
    if not callable(op.derivative):
        raise fail(f"derivative must be callable, got {op.derivative!r}")
    takes = _positional_arity(op.derivative)
    if takes is not None and takes != arity + 1:
        raise fail(f"derivative must take (out, *inputs): {arity + 1} arguments, not {takes}")
    if any(not 0 <= i < arity for i in op.static):
        raise fail(f"static positions {op.static} are out of range for arity {arity}")
    _probe(op, arity, fail)
    return replace(op, arity=arity, plugin=plugin, doc=doc)


def _first_line(doc: str | None) -> str:
    """An op's doc when the plugin gives none: the first line of its function's docstring."""
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def _probe(op: Op, arity: int, fail: Callable[[str], PluginError]) -> None:
    """Call the op once at a harmless point to catch a derivative with the wrong shape.

    A forward or derivative that raises there (a domain error) is not judged here: backward
    checks the shape again on every call.
    """
    xs = (0.5,) * arity
    try:
        partials = op.derivative(op.forward(*xs), *xs)
    except Exception:
        return
    if not isinstance(partials, tuple | list) or len(partials) != arity:
        raise fail(
            f"derivative must return a tuple of {arity} partial derivative(s), "
            f"one per input; it returned {partials!r}"
        )


def collect(registrations: Iterable[tuple[str, AnyOp, bool]]) -> dict[str, AnyOp]:
    """Merge (plugin, op, replace) registrations, in order, into one table by name."""
    table: dict[str, AnyOp] = {}
    for plugin, op, replaces in registrations:
        op = check(op, plugin)
        earlier = table.get(op.name)
        if earlier is not None and earlier.plugin == plugin:
            raise PluginError(
                f"plugin {plugin!r} registers op {op.name!r} twice", plugin=plugin, op=op.name
            )
        if earlier is not None and not replaces:
            raise PluginError(
                f"op {op.name!r} is registered by both plugin {earlier.plugin!r} and plugin "
                f"{plugin!r}; pass register(op, replace=True) in {plugin!r} to replace it",
                plugin=plugin,
                op=op.name,
            )
        table[op.name] = op
    return table


# ---------------------------------------------------------------------------------------------
# Binding ops to an engine's Value class: the hot path


def _coercer(cls: type[Value], op: AnyOp, tracer: Any) -> Callable[[Any], Value]:
    """A function that turns an operand into a Value of `cls`, or explains why it cannot."""
    from .value import Value

    new, next_id = object.__new__, cls._ids.__next__

    def to_value(x: Any) -> Value:
        if type(x) is float or type(x) is int:
            # A constant leaf (the 2 of `2 * x`), built in place as the op functions do.
            node = new(cls)
            node._data = x if type(x) is float else _float_of_int(x)
            node._grad, node._label = 0.0, ""
            node._a = node._b = node._more = node._opdef = None
            node._id = next_id()
            if tracer is not None:
                tracer.forward(node)
            return node
        if isinstance(x, Value):
            if x._ops is cls._ops:
                return x
            raise EngineMismatchError(
                f"op {op.name!r}: {describe(x)} belongs to engine {x.engine.name!r}, the other "
                f"operands to engine {cls._engine.name!r}; Values of two engines do not mix"
            )
        if isinstance(x, Real):
            return cls(x)
        raise TypeError(
            f"op {op.name!r} (plugin {op.plugin!r}) got an operand of type "
            f"{type(x).__name__}: {x!r}; operands must be Values or real numbers"
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
    raise OpError(
        f"{op.described}: forward returned {out!r} of type "
        f"{type(out).__name__}; it must return a real number"
    )


def forward_error(op: AnyOp, operands: Sequence[Value], exc: Exception) -> OpError:
    inputs = ", ".join(describe(v) for v in operands)
    return OpError(
        f"{op.described} failed in forward on inputs ({inputs}): {type(exc).__name__}: {exc}"
    )


def _checked(op: Op, cls: type[Value], out: float, parents: tuple, flags: int) -> Value:
    """The slow path of an op under no_grad() or detect_anomaly()."""
    if flags & ANOMALY and not math.isfinite(out):
        inputs = ", ".join(describe(v) for v in parents)
        raise AnomalyError(f"{op.described} produced {out} in forward from inputs ({inputs})")
    if flags & NO_GRAD:
        return cls(out)
    return cls(out, "", parents, op)


def _bind_primitive(op: Op, cls: type[Value], engine_flags: int, tracer: Any) -> Callable:
    """The function that runs `op` on operands: the hot path of every graph.

    It builds the output node in place (`new(cls)` and six slot stores) rather than calling
    `cls(...)`, which would run `Value.__init__` through a slower generic call; `tracer` and
    `engine_flags` are fixed here, so the engine binds its ops again when either changes.
    """
    forward, to_value = op.forward, _coercer(cls, op, tracer)
    new, next_id, get_mode = object.__new__, cls._ids.__next__, mode.get

    # Unary and binary ops get their own functions: they are almost every op in a graph, and
    # unpacking *args costs more than the rest of the work.
    if op.arity == 1:

        def unary(a):
            if type(a) is not cls:
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
            node._data, node._grad, node._label = out, 0.0, ""
            node._a, node._b, node._more = a, None, None
            node._opdef, node._id = op, next_id()
            if tracer is not None:
                tracer.forward(node)
            return node

        return unary

    if op.arity == 2:

        def binary(a, b):
            if type(a) is not cls:
                a = to_value(a)
            if type(b) is not cls:
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
            node._data, node._grad, node._label = out, 0.0, ""
            node._a, node._b, node._more = a, b, None
            node._opdef, node._id = op, next_id()
            if tracer is not None:
                tracer.forward(node)
            return node

        return binary

    def nary(*operands):
        if len(operands) != op.arity:
            raise TypeError(f"op {op.name!r} takes {op.arity} operands, got {len(operands)}")
        parents = tuple(x if type(x) is cls else to_value(x) for x in operands)
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


def with_constants(op: Op, constants: tuple[tuple[int, float], ...]) -> Op:
    """The op with some arguments fixed to numbers: `pow` with exponent 2 is unary.

    The result keeps the full op as `base`, so that `compile` can call it directly.
    """
    fixed = dict(constants)
    keep = [i for i in range(op.arity) if i not in fixed]
    forward, derivative = op.forward, op.derivative

    if op.arity == 2 and keep == [0]:  # the common case, `x ** 2`: no argument shuffling
        (c,) = fixed.values()

        def forward_fixed(a):
            return forward(a, c)

        def derivative_fixed(out, a):
            return (derivative(out, a, c)[0],)

    else:

        def full(xs: Sequence[float]) -> list[float]:
            args, it = [], iter(xs)
            for i in range(op.arity):
                args.append(fixed[i] if i in fixed else next(it))
            return args

        def forward_fixed(*xs):
            return forward(*full(xs))

        def derivative_fixed(out, *xs):
            partials = derivative(out, *full(xs))
            return tuple(partials[i] for i in keep)

    return replace(
        op,
        forward=forward_fixed,
        derivative=derivative_fixed,
        arity=len(keep),
        static=(),
        constants=constants,
        base=op,
    )


def _bind_static(op: Op, cls: type[Value], engine_flags: int, tracer: Any) -> Callable:
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


def _bind_composite(op: Composite, cls: type[Value], tracer: Any) -> Callable[..., Value]:
    fn, to_value = op.fn, _coercer(cls, op, tracer)

    def run(values: Sequence[Value]) -> Value:
        try:
            out = fn(*values)
        except (OpError, EngineMismatchError, AnomalyError):
            raise
        except Exception as exc:
            raise forward_error(op, values, exc) from exc
        if type(out) is not cls:
            raise OpError(
                f"composite op {op.name!r} (plugin {op.plugin!r}) returned {out!r}; "
                f"it must return a Value built from other ops"
            )
        return out

    # As for primitives, unary and binary composites (neg, sub, div) skip the *args work.
    if op.arity == 1:

        def unary(a):
            return run((a if type(a) is cls else to_value(a),))

        return unary

    if op.arity == 2:

        def binary(a, b):
            return run((a if type(a) is cls else to_value(a), b if type(b) is cls else to_value(b)))

        return binary

    def composite(*operands):
        if len(operands) != op.arity:
            raise TypeError(f"op {op.name!r} takes {op.arity} operands, got {len(operands)}")
        return run([x if type(x) is cls else to_value(x) for x in operands])

    return composite


def bind(
    op: AnyOp, cls: type[Value], engine_flags: int = 0, tracer: Any = None
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
    fn.__signature__ = _signature(op)  # type: ignore[attr-defined]
    return fn


def _signature(op: AnyOp) -> inspect.Signature:
    """The operands of `op`, positional, named as its function names them (else x1, x2 ...)."""
    names = _parameter_names(op.forward if isinstance(op, Op) else op.fn)[: op.arity]
    if len(names) != op.arity:
        names = [f"x{i + 1}" for i in range(op.arity)]  # type: ignore[arg-type]
    return inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in names]
    )


class OpTable:
    """One engine's frozen op table. `ops.add(a, b)`, `ops["add"]`, `"sin" in ops`.

    Attributes are the bound op functions; `ops.definitions[name]` is the registered
    `Op` or `Composite` with the plugin that provides it.
    """

    def __init__(
        self,
        definitions: dict[str, AnyOp],
        cls: type[Value],
        engine_flags: int = 0,
        tracer: Any = None,
    ):
        self.definitions = dict(definitions)
        for name, op in definitions.items():
            setattr(self, name, bind(op, cls, engine_flags, tracer))

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
