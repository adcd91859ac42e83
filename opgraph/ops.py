"""The op contract: what a plugin registers (`Op`, `Composite`) and how registration checks it.

This is the module a plugin author reads. A plugin describes an op once, as one row of a table
of derivatives: its name, its forward function, its local derivatives. The engine collects
every plugin's rows (`collect`), checks each one (`check`, which makes the `Op` a plugin wrote
into the `Row` the engine runs), and hands them to binding.py, which turns each row into the
plain function that builds nodes (the hot path); rules.py turns their local derivatives into
the chain rule of every executor.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import unicodedata
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import rules
from .errors import OpConflictError, PluginError, registration_error, wrong_partials
from .rules import Partials
from .value import OPERATORS, Above, Value


@dataclass(frozen=True)
class Op:
    """A primitive op as a plugin writes it: one row of a table of derivatives.

    `forward(*xs) -> float` computes the output from the inputs' data.
    Its local derivatives, d out / d x_i for each input, are given one of two ways:

    - `partials`, inline: one expression per input over `out` and the forward's parameter
      names, as a table of derivatives writes them: `("b", "a")` for `a * b`,
      `("1 - out * out",)` for tanh. They may use those names, numbers, `+ - * / **`, unary
      minus and parentheses (registration refuses anything else). From them opgraph derives
      everything else: the derivative on floats, on Values (so the op is differentiable to
      any order), on numpy arrays, and the lines compiled and batched replay write out.
    - `derivative(out, *xs) -> tuple`, a function, for anything the expressions cannot say
      (a branch, a call): it returns d out / d x_i for each input, given the output and the
      inputs; backward multiplies each by the output's grad (the chain rule). Then
      `value_derivative`, optional, is the same derivative on Values: given the output node
      and the input nodes it returns the partials as Values built with opgraph's ops (or
      plain numbers for constant partials), which `grad(..., create_graph=True)` can
      differentiate again; without it the op is differentiable once.

    `arity` defaults to the number of positional parameters of `forward`.
    `static` lists argument positions that, given a plain number, are baked into the op
    instead of becoming a constant leaf: `x ** 2` has one parent, as in micrograd.
    `array_forward` and `array_derivative`, optional, are `forward` and `derivative` on numpy
    arrays (element by element), for batched replay (`Compiled.map`); without them it applies
    the scalar functions to each element (inline partials need no `array_derivative`).
    `rule` is gone: registration says what to write instead (`partials=("1", "1")` for
    `rule="sum"`, `partials=("b", "a")` for `rule="product"`).

    An op has three printed forms. `name` (`pow`) is its identifier: the op table's key, the
    method `v.pow(...)`, and the word every error message uses. `symbol` (`**`) is how it is
    written, micrograd-style; it defaults to the name. `title` is micrograd's `_op` string,
    the symbol followed by any fixed argument (`**2` for `x ** 2`), which draw_dot shows.

    The fields are optional here only so that `check()` can name what is missing; the engine
    never runs an `Op`, but the `Row` that `check()` makes of it.
    """

    name: str
    forward: Callable[..., float] | None = None
    derivative: Callable[..., Sequence[float]] | None = None
    arity: int | None = None
    static: tuple[int, ...] = ()
    doc: str = ""
    symbol: str = ""  # micrograd's way of writing the op (`*`, `**`); "" means the name
    # Optional: the op on numpy arrays, element by element, for `Compiled.map` (batched
    # replay): array_forward(*xs) -> array, array_derivative(out, *xs) -> tuple of arrays.
    array_forward: Callable[..., Any] | None = field(default=None, repr=False)
    array_derivative: Callable[..., Sequence[Any]] | None = field(default=None, repr=False)
    rule: str = ""  # removed: registration refuses it, saying which partials to write
    # Optional: the derivative on Values, for derivatives of derivatives (grad, create_graph).
    value_derivative: Callable[..., Sequence[Any]] | None = field(default=None, repr=False)
    partials: tuple[str, ...] | None = None  # the local derivatives inline, as expressions


@dataclass(frozen=True, eq=False)
class Row:
    """A checked primitive op, as the engine runs it: made by `check()` from an `Op`.

    Every field an executor calls is there: `derivative` is the plugin's function, or the
    inline `partials` on floats (rules.py). `partials` is the parsed inline rule (None for a
    row with a derivative function), `value_derivative` the derivative on Values (None: the
    op is differentiable once). Nodes carry their Row (`Value.op`).
    """

    name: str
    forward: Callable[..., float]
    derivative: Callable[..., Sequence[float]]
    arity: int
    plugin: str  # the name of the plugin that registered the op
    symbol: str
    doc: str = ""
    static: tuple[int, ...] = ()
    partials: Partials | None = None
    value_derivative: Callable[..., Sequence[Any]] | None = field(default=None, repr=False)
    array_forward: Callable[..., Any] | None = field(default=None, repr=False)
    array_derivative: Callable[..., Sequence[Any]] | None = field(default=None, repr=False)
    constants: tuple[tuple[int, float], ...] = field(default=(), repr=False)  # (position, value)
    base: Row | None = field(default=None, repr=False)  # the row before fixing constants

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

    def __copy__(self) -> Row:
        return self

    def __deepcopy__(self, memo: dict) -> Row:
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
    if fn is None:
        return []
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in _POSITIONAL]


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


AnyOp = Row | Composite  # a checked definition of the op table


def _registered_op(name: str, plugin: str, constants: tuple[tuple[int, float], ...]) -> Row:
    """The op `name` of `plugin` in the default engine: how a pickled node finds its op."""
    op = Above.default_engine().ops.definitions.get(name)
    if not isinstance(op, Row) or op.plugin != plugin:
        now = f"plugin {op.plugin!r} registers it" if op is not None else "no plugin registers it"
        raise PluginError(
            f"cannot load a pickled Value made by op {name!r} of plugin {plugin!r}: in the "
            f"default engine of this process {now}",
            plugin=plugin,
            op=name,
        )
    return with_constants(op, constants) if constants else op


# The op table's own attributes (binding.py's OpTable keeps its ops as attributes beside them).
TABLE_NAMES = frozenset({"definitions", "chain_rule", "float_pass", "tangent_pass"})

# Names an op may not take: they would shadow an attribute of Value. The unary built-ins that
# Value has as methods (v.exp(), v.tanh() ...) dispatch to the op table, so they are allowed.
METHOD_OPS = frozenset(method for method in OPERATORS if not method.startswith("__"))


@functools.cache
def reserved_names() -> frozenset[str]:
    """Names no op may take: Value's attributes, and the op table's own (`ops.definitions`)."""
    value_names = {n for n in dir(Value) if not n.startswith("_")} - METHOD_OPS
    return frozenset(value_names | TABLE_NAMES)


def with_constants(op: Row, constants: tuple[tuple[int, float], ...]) -> Row:
    """The op with some arguments fixed to numbers: `pow` with exponent 2 is unary.

    The result keeps the full op as `base`, so that `compile` can call it directly. An inline
    rule is fixed too: the numbers take the place of their names (rules.py).
    """
    fixed = dict(constants)
    keep = [i for i in range(op.arity) if i not in fixed]
    forward, derivative = op.forward, op.derivative
    forward_fixed: Callable[..., float]
    derivative_fixed: Callable[..., Sequence[float]]
    value_derivative_fixed: Callable[..., Sequence[Any]] | None = None

    if op.arity == 2 and keep == [0]:  # the common case, `x ** 2`: no argument shuffling
        (c,) = fixed.values()

        def forward_one(a):
            return forward(a, c)

        def derivative_one(out, a):
            return (derivative(out, a, c)[0],)

        forward_fixed, derivative_fixed = forward_one, derivative_one
        if op.value_derivative is not None:
            value_derivative = op.value_derivative

            def value_derivative_one(out, a):  # the fixed argument stays a plain number
                return (value_derivative(out, a, c)[0],)

            value_derivative_fixed = value_derivative_one

    else:

        def full(xs: Sequence[float]) -> list[float]:
            args, it = [], iter(xs)
            for i in range(op.arity):
                args.append(fixed[i] if i in fixed else next(it))
            return args

        def forward_many(*xs):
            return forward(*full(xs))

        def derivative_many(out, *xs):
            partials = derivative(out, *full(xs))
            return tuple(partials[i] for i in keep)

        forward_fixed, derivative_fixed = forward_many, derivative_many
        if op.value_derivative is not None:
            value_derivative = op.value_derivative

            def value_derivative_many(out, *xs):
                partials = value_derivative(out, *full(xs))
                return tuple(partials[i] for i in keep)

            value_derivative_fixed = value_derivative_many

    partials = None
    if op.partials is not None:
        partials = op.partials.fixed(fixed)
        made = rules.functions(partials, f"{op.plugin}.{op.name}")
        derivative_fixed, value_derivative_fixed = made.derivative, made.value_derivative
    return replace(
        op,
        forward=forward_fixed,
        derivative=derivative_fixed,
        value_derivative=value_derivative_fixed,
        partials=partials,
        arity=len(keep),
        static=(),
        constants=constants,
        base=op,
    )


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
        return registration_error(plugin, op.name, problem)

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
    assert isinstance(op, Op) and op.forward is not None  # (body, checked above)

    if any(not isinstance(i, int) or not 0 <= i < arity for i in op.static):
        raise fail(f"static positions {op.static} are out of range for arity {arity}")
    if op.rule:
        raise fail(_RULE_GONE)
    row = Row(
        name=op.name,
        forward=op.forward,
        derivative=_no_derivative,
        arity=arity,
        plugin=plugin,
        symbol=symbol,
        doc=doc,
        static=tuple(op.static),
        value_derivative=op.value_derivative,
        array_forward=op.array_forward,
        array_derivative=op.array_derivative,
    )
    if op.partials is not None:
        return _inline(op, row, fail)
    row = replace(row, derivative=_checked_derivative(op, arity, fail))
    _probe(row, fail)
    return row


_RULE_GONE = (
    "rule= is gone: give the local derivatives inline instead, partials=('1', '1') for "
    "rule='sum' and partials=('b', 'a') (the forward's parameter names) for rule='product', "
    "without derivative="
)


def _no_derivative(out: float, *xs: float) -> Sequence[float]:  # replaced before use
    raise AssertionError("a row is made with its derivative")


def _inline(op: Op, row: Row, fail: Callable[[str], PluginError]) -> Row:
    """The row of an op that gives its partials inline, with the functions made from them."""
    given = [f for f in ("derivative", "value_derivative", "array_derivative") if getattr(op, f)]
    if given:
        raise fail(
            f"gives both inline partials and {', '.join(given)}: the partials are its "
            f"derivative on floats, Values and arrays; give one or the other"
        )
    try:
        partials = rules.parse_partials(op.partials, row.forward, row.arity)
    except rules.RuleError as exc:
        raise fail(str(exc)) from None
    made = rules.functions(partials, f"{row.plugin}.{row.name}")
    return replace(
        row,
        partials=partials,
        derivative=made.derivative,
        value_derivative=made.value_derivative,
        array_derivative=made.value_derivative,  # the same expressions, on numpy arrays
    )


def _checked_derivative(
    op: Op, arity: int, fail: Callable[[str], PluginError]
) -> Callable[..., Sequence[float]]:
    """The op's derivative function, checked with its value_derivative."""
    if op.derivative is None:
        raise fail(
            "derivative must be callable; none was given: a primitive Op needs its local "
            "derivatives, inline (partials=('b', 'a')) or as a function "
            "derivative(out, *inputs) -> tuple; an op built from other ops is a Composite"
        )
    if not callable(op.derivative):
        raise fail(f"derivative must be callable, got {op.derivative!r}")
    takes = _positional_arity(op.derivative)
    if takes is not None and takes != arity + 1:
        raise fail(f"derivative must take (out, *inputs): {arity + 1} arguments, not {takes}")
    if op.value_derivative is not None:
        if not callable(op.value_derivative):
            raise fail(f"value_derivative must be callable, got {op.value_derivative!r}")
        takes = _positional_arity(op.value_derivative)
        if takes is not None and takes != arity + 1:
            raise fail(
                f"value_derivative must take (out, *inputs): {arity + 1} arguments, not {takes}"
            )
    return op.derivative


def _first_line(doc: str | None) -> str:
    """An op's doc when the plugin gives none: the first line of its function's docstring."""
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def _probe(op: Row, fail: Callable[[str], PluginError]) -> None:
    """Call the op once at a harmless point to catch a derivative with the wrong shape.

    A forward or derivative that raises there (a domain error) is not judged here: backward
    checks the shape again on every call.
    """
    xs = (0.5,) * op.arity
    try:
        partials = op.derivative(op.forward(*xs), *xs)
    except Exception:
        return
    if not isinstance(partials, tuple | list) or len(partials) != op.arity:
        raise fail(wrong_partials(op.arity, partials))


def collect(
    registrations: Iterable[tuple[str, AnyOp, bool]], left_out: Container[tuple[str, Any]] = ()
) -> dict[str, AnyOp]:
    """Merge (plugin, op, replace) registrations, in order, into one table by name, but the
    (plugin, op name) pairs `left_out` (an installed plugin's op that conflicted: loading.py).

    Once the table is whole, the engine compares each op's value_derivative with its
    derivative (binding.py's `check_value_derivatives`: it is built from the table's ops)."""
    table: dict[str, AnyOp] = {}
    for plugin, op, replaces in registrations:
        if (plugin, getattr(op, "name", None)) in left_out:
            continue
        op = check(op, plugin)
        earlier = table.get(op.name)
        if earlier is not None and earlier.plugin == plugin:
            raise PluginError(
                f"plugin {plugin!r} registers op {op.name!r} twice", plugin=plugin, op=op.name
            )
        if earlier is not None and not replaces:
            raise OpConflictError(
                f"op {op.name!r} is registered by both plugin {earlier.plugin!r} and plugin "
                f"{plugin!r}; pass register(op, replace=True) in {plugin!r} to replace it",
                plugin=plugin,
                op=op.name,
            )
        table[op.name] = op
    return table
