"""The chain rule, once: each op row's local derivatives turned into every executor's step.

A row gives its local derivatives (d out / d input, one per input) in one of two ways:

- inline, as expressions over `out` and the forward's parameter names, as a table of
  derivatives writes them: mul's `("b", "a")`, tanh's `("1 - out * out",)`. The expressions
  may use those names, numbers, `+ - * / **`, unary minus and parentheses, nothing else
  (`parse_partials` refuses the rest at registration);
- as a function, `derivative(out, *inputs) -> tuple`, for anything else (pow's edge cases,
  relu's step, a plugin's arbitrary code).

Every executor takes its step of the chain rule from here, and nowhere else writes a partial:

- `chain_rule_for(rows)`: the eager backward pass of one op table (`backward()`), a loop
  generated once per table rebuild, with each inline row's partials written into it as a
  branch of its own (add's `a._grad += grad`: no call and no tuple per node) and one general
  branch that calls the derivative of any other row;
- `float_partials(node)`: a node's partials as floats, counted and checked (`Value._backward`,
  `grad()`, `jvp()`, backward under `detect_anomaly()`);
- `value_partials(node)`: a node's partials as Values (`grad(..., create_graph=True)`): an
  inline rule is the same expression evaluated on Values, so it is differentiable again, to
  any order;
- `partial_sources` and `term_source`: an inline row's partials as source code, which compiled
  replay (floats) and batched replay (numpy arrays) paste into the code they generate.

An inline rule becomes Python source once per row (`functions`), with two spellings of `/` and `**`:
on floats they are IEEE-754 (`div`, `power` below: 1 / 0 is inf, not ZeroDivisionError), on
Values and numpy arrays they are the operators themselves. A partial that is the constant 1
contributes `grad` itself, not `1.0 * grad`: the same bits, one multiplication less.
Generated functions are registered with linecache under a `<opgraph ...>` file name, so a
traceback through them shows their lines.
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import hashlib
import inspect
import linecache
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING, Any

from .errors import (
    AnomalyError,
    EngineMismatchError,
    NotDifferentiableError,
    NotRealError,
    OpError,
    PartialsCountError,
    op_error,
    wrong_partials,
)
from .kernels import power
from .value import Value, _number, engine_class

if TYPE_CHECKING:
    from .ops import Row

# ---------------------------------------------------------------------------------------------
# Inline rules: parsing and checking


class RuleError(ValueError):
    """An inline rule a plugin wrote is malformed; ops.check words it with the op and plugin."""


_OPERATORS: dict[type, str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
}
ALLOWED = "out, the forward's parameter names, numbers, + - * / **, unary minus and parentheses"
MAX_LENGTH = 400  # characters per partial: a rule is a line of a table, not a program


@dataclass(frozen=True)
class Partials:
    """An op's inline rule: one expression per input, over `out` and the parameter names."""

    texts: tuple[str, ...]  # as the plugin wrote them
    params: tuple[str, ...]  # the forward's parameter names, in order
    trees: tuple[ast.expr, ...] = field(repr=False, compare=False)  # parsed, numbers as floats

    def is_one(self, k: int) -> bool:
        """Is partial k the constant 1 (the term is the gradient itself)?"""
        tree = self.trees[k]
        return isinstance(tree, ast.Constant) and tree.value == 1.0

    def fixed(self, constants: dict[int, float]) -> Partials:
        """The rule with some arguments fixed to numbers (`x ** 2`): their names become the
        numbers, and their partials are dropped."""
        values = {self.params[i]: value for i, value in constants.items()}
        keep = [i for i in range(len(self.params)) if i not in constants]
        trees = tuple(_Substitute(values).visit(_copy(self.trees[i])) for i in keep)
        return Partials(
            tuple(ast.unparse(t) for t in trees), tuple(self.params[i] for i in keep), trees
        )


def parameter_names(fn: Callable) -> list[str] | None:
    """The names of `fn`'s positional parameters, or None when it has no signature."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is p.empty]


def parse_partials(texts: Any, forward: Callable, arity: int) -> Partials:
    """Parse and check an inline rule, or raise RuleError saying what is wrong."""
    if isinstance(texts, str) or not isinstance(texts, tuple | list):
        raise RuleError(
            f"partials must be a tuple of expressions, one per input, such as ('b', 'a'); "
            f"got {texts!r}"
        )
    if len(texts) != arity:
        raise RuleError(
            f"partials gives {len(texts)} expression(s) for an op of {arity} input(s): "
            f"{tuple(texts)!r}"
        )
    params = parameter_names(forward)
    if params is None or len(params) != arity:
        raise RuleError(
            "inline partials name the forward's parameters, but its signature cannot be read; "
            "wrap it in a function with named parameters (lambda a: fn(a))"
        )
    if "out" in params:
        raise RuleError("the forward has a parameter named 'out', the name of the output")
    names = {"out", *params}
    trees = tuple(_parse(k, text, names) for k, text in enumerate(texts))
    return Partials(tuple(texts), tuple(params), trees)


def _parse(k: int, text: Any, names: set[str]) -> ast.expr:
    where = f"partial {k + 1}"
    if not isinstance(text, str):
        raise RuleError(f"{where} must be a string such as 'b' or '1 - out * out', got {text!r}")
    if len(text) > MAX_LENGTH:
        raise RuleError(f"{where} is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise RuleError(f"{where} {text!r} is not an expression: {exc.msg}") from None
    for node in ast.walk(tree):
        problem = _refused(node, names)
        if problem:
            raise RuleError(f"{where} {text!r} {problem}; an inline partial may use {ALLOWED}")
    return _Floats().visit(tree)


def _refused(node: ast.AST, names: set[str]) -> str | None:
    """Why `node` may not appear in an inline rule, or None."""
    if isinstance(node, ast.BinOp):
        return None if type(node.op) in _OPERATORS else f"uses the operator {_word(node.op)}"
    if isinstance(node, ast.UnaryOp):
        return None if isinstance(node.op, ast.USub | ast.UAdd) else f"uses {_word(node.op)}"
    if isinstance(node, ast.Name):
        return None if node.id in names else f"names {node.id!r}, which is not {_list(names)}"
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(_as_float(value)):
                return None
        return f"has the constant {value!r}, which is not a finite real number"
    if isinstance(node, ast.operator | ast.unaryop | ast.expr_context):
        return None
    return f"uses {_word(node)}"


def _as_float(value: float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond the largest float
        return math.inf


def _word(node: ast.AST) -> str:
    words = {
        "Call": "a call",
        "Attribute": "attribute access",
        "Subscript": "indexing",
        "Compare": "a comparison",
        "IfExp": "a conditional",
        "Lambda": "a lambda",
    }
    name = type(node).__name__
    return words.get(name, name)


def _list(names: set[str]) -> str:
    return "one of " + ", ".join(sorted(names))


class _Floats(ast.NodeTransformer):
    """Numbers as floats: `3 * a` computes `3.0 * a`, the same float, on every executor."""

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        return ast.Constant(float(node.value))  # pyright: ignore[reportArgumentType]  # checked: a number


class _Substitute(ast.NodeTransformer):
    """Names replaced: by source text (a variable, `a._data`), or by numbers."""

    def __init__(self, names: dict[str, Any]):
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.expr:
        new = self.names.get(node.id, node.id)
        if isinstance(new, float):
            return ast.Constant(new) if math.isfinite(new) and new >= 0 else _raw(_literal(new))
        return _raw(new)


class _IEEE(ast.NodeTransformer):
    """`x / y` and `x ** y` on floats as IEEE-754 functions (`div`, `power`)."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.op, ast.Div | ast.Pow):
            fn = "div" if isinstance(node.op, ast.Div) else "power"
            return ast.Call(ast.Name(fn, ast.Load()), [node.left, node.right], [])
        return node


def _raw(text: str) -> ast.Name:
    """Source text as an expression node, in parentheses unless it is a name, an attribute
    or a slice of one (`a._data`, `V[3:5]`), or an unsigned number: ast.unparse writes a
    name's text as it is."""
    plain = _PLAIN.fullmatch(text) is not None or _unsigned_number(text)
    return ast.Name(text if plain else f"({text})", ast.Load())


_PLAIN = re.compile(r"[A-Za-z_][\w.]*(\[[\w:]*\])?")


def _unsigned_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text[:1].isdigit()


def _copy(tree: ast.expr) -> ast.expr:
    return copy.deepcopy(tree)


def _literal(x: float) -> str:
    """A float as source that evaluates to exactly it (inf and nan are names in the code)."""
    if math.isfinite(x):
        return repr(float(x))
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


# ---------------------------------------------------------------------------------------------
# Inline rules as source code


def _source(tree: ast.expr, names: dict[str, Any], ieee: bool) -> ast.expr:
    tree = _Substitute(names).visit(_copy(tree))
    return _IEEE().visit(tree) if ieee else tree


def partial_sources(
    rule: Partials, out: str, args: Sequence[str | float], *, ieee: bool
) -> list[str]:
    """Each partial as source code, with `out` and the parameters replaced by expressions
    (`args`, one per parameter: source text, or a number fixed into the op). `ieee`: floats
    (compiled replay), else numpy arrays (batched replay)."""
    texts = [_text(out), *map(_text, args)]
    return [_template(tree, rule.params, ieee, False).format(*texts) for tree in rule.trees]


def term_source(
    rule: Partials, k: int, out: str, args: Sequence[str | float], grad: str, *, ieee: bool
) -> str:
    """Partial k times `grad`, as source: the chain rule's term for input k. A partial of 1
    gives `grad` itself (`1.0 * g` is `g` to the bit)."""
    if rule.is_one(k):
        return grad
    texts = [_text(out), *map(_text, args), _text(grad)]
    return _template(rule.trees[k], rule.params, ieee, True).format(*texts)


# Compiled and batched replay write a term for every node: each partial is turned into source
# once, with `{0}` for `out`, `{1}` ... for the parameters (and the grad last), and each node
# fills in its own names. The text is the one substituting into the tree would give: a name
# is written as it is, so `_text` writes each replacement as `_Substitute` makes it.


@functools.lru_cache(maxsize=4096)
def _template(tree: ast.expr, params: tuple[str, ...], ieee: bool, times_grad: bool) -> str:
    slots = {name: ast.Name(f"{{{i}}}", ast.Load()) for i, name in enumerate(("out", *params))}
    body = _Placeholders(slots).visit(_copy(tree))
    if ieee:
        body = _IEEE().visit(body)
    if times_grad:
        body = ast.BinOp(body, ast.Mult(), ast.Name(f"{{{len(slots)}}}", ast.Load()))
    return ast.unparse(body)


def _text(value: str | float) -> str:
    """How `_Substitute` writes a replacement: a number as its literal, text as `_raw` has it."""
    if type(value) is str and value.isidentifier():  # nearly every one: `v12`, `g3`
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value >= 0:
            return ast.unparse(ast.Constant(value))
        return _raw(_literal(value)).id
    assert isinstance(value, str)  # (source text: the args are text or floats)
    return _raw(value).id


class _Placeholders(ast.NodeTransformer):
    """Names replaced by the placeholders of a template."""

    def __init__(self, slots: dict[str, ast.Name]):
        self.slots = slots

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return self.slots.get(node.id, node)


# IEEE-754 forms of `/` and `**` on floats, which Python raises on (or goes complex);
# `power` is the engine's kernel (kernels.py), the built-in pow's forward.


def div(a: float, b: float) -> float:
    """a / b with IEEE-754's answers at b = 0: +-inf, or nan for 0 / 0."""
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


# Generated functions: compiled with a file name of their own and registered with linecache.
NAMESPACE = {"div": div, "power": power, "inf": math.inf, "nan": math.nan}


def generated(source: str, what: str, name: str, **names: Any) -> Callable:
    """The function `name` that `source` defines, its lines shown in tracebacks."""
    # Named by their text, so that a table rebuilt with the same rows reuses its entry.
    filename = f"<opgraph {what} {hashlib.sha1(source.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {**NAMESPACE, **names}
    exec(builtins.compile(source, filename, "exec"), namespace)
    return namespace[name]


@dataclass(frozen=True)
class RowRule:
    """An inline rule made into functions: on floats (`derivative`), and on Values and numpy
    arrays alike (`value_derivative`, `array_derivative`)."""

    derivative: Callable[..., tuple]
    value_derivative: Callable[..., tuple]


def functions(rule: Partials, label: str) -> RowRule:
    """The derivative functions of an inline rule, generated once per row."""
    # The parameters are renamed x0, x1 ...: a forward's `div` or `power` must not hide the
    # IEEE functions of the same names.
    names = {p: f"x{i}" for i, p in enumerate(rule.params)}
    params = ", ".join(("out", *names.values()))
    ieee = [ast.unparse(_source(t, names, ieee=True)) for t in rule.trees]
    plain = [ast.unparse(_source(t, names, ieee=False)) for t in rule.trees]
    source = (
        f"def derivative({params}):  # {label!r}\n    return ({', '.join(ieee)},)\n\n"
        f"def on_values({params}):\n    return ({', '.join(plain)},)\n"
    )
    floats = generated(source, f"rule of {label}", "derivative")
    return RowRule(floats, floats.__globals__["on_values"])


# ---------------------------------------------------------------------------------------------
# Forwards with an infix form


# A forward that is one of these functions of Python's operator module is, by the module's
# definition, its operator: compiled replay writes `a + b` rather than a call, and batched
# replay the numpy ufunc of the same IEEE-754 arithmetic, for any row (plugins' too).
INFIX: dict[Callable, tuple[str, str]] = {
    operator.add: ("+", "add"),
    operator.sub: ("-", "subtract"),
    operator.mul: ("*", "multiply"),
}


# Compiled replay also writes these operators: on floats `a / b` and `a ** b` are the very
# functions, errors included (ZeroDivisionError, OverflowError), where numpy's ufuncs return
# inf or nan, so batched replay calls such a forward as it is.
SCALAR_INFIX: dict[Callable, str] = {
    **{fn: symbol for fn, (symbol, _) in INFIX.items()},
    operator.truediv: "/",
    operator.pow: "**",
}


def forward_source(row: Row, args: Sequence[str]) -> str | None:
    """`a + b` for a forward that is operator.add (see SCALAR_INFIX); None for any other.
    An argument is a name, a number or an expression in parentheses; a negative number is
    put in parentheses (`(-2.0) ** a`, not `-(2.0 ** a)`)."""
    symbol = SCALAR_INFIX.get(row.forward)
    if symbol is None:
        return None
    a, b = (f"({x})" if x.startswith("-") else x for x in args)
    return f"{a} {symbol} {b}"


def forward_ufunc(row: Row) -> str | None:
    """The numpy ufunc's name for a forward in INFIX (`add`), else None."""
    infix = INFIX.get(row.forward)
    return infix[1] if infix else None


# ---------------------------------------------------------------------------------------------
# The eager chain rule, generated once per op table


def chain_rule_for(rows: Sequence[Row]) -> Callable[[list[Value]], None]:
    """The eager backward loop for an op table: `chain_rule(order)` runs the chain rule on
    `order` (children before parents), adding each node's partials times its grad to its
    parents' grads.

    Each inline row of `rows` gets a branch of its own, its partials written out; every other
    row, and a row of another table (a node made before the table was rebuilt), goes through
    the general branches, which call the row's derivative (an inline row's derivative is its
    rule on floats: the same numbers).
    """

    def add(target: str, term: str) -> list[str]:
        return [f"{target}._grad += {term}"]

    branches, names = _branches(rows, add, indent=12, first="if")
    source = _CHAIN_RULE.format(branches=branches, general="elif" if names else "if")
    return generated(
        source,
        "chain rule",
        "chain_rule",
        real_partial=real_partial,
        counted_partials=counted_partials,
        derivative_error=derivative_error,
        **names,
    )


def float_pass_for(rows: Sequence[Row]) -> Callable[..., dict[Value, float]]:
    """`grad()`'s chain rule on floats for an op table, into a dict rather than `.grad`:
    `float_pass(order, needed, output, hooks, run_hooks)` walks `order` (children first),
    keeps to the nodes in `needed` and returns {node: d output / d node}. The same branches as
    `chain_rule_for`, so the same numbers."""

    def add(target: str, term: str) -> list[str]:
        return [f"if {target} in needed:", f"    grads[{target}] = get({target}, 0.0) + {term}"]

    branches, names = _branches(rows, add, indent=8, first="elif")
    source = _FLOAT_PASS.format(branches=branches)
    return generated(source, "float pass", "float_pass", float_partials=float_partials, **names)


def tangent_pass_for(rows: Sequence[Row]) -> Callable[..., None]:
    """`jvp()`'s forward sweep for an op table: `tangent_pass(order, tangent)` walks `order`
    (parents first) and sets tangent[node] = sum over its parents of partial * tangent[parent],
    for the nodes whose parents have tangents (a parent with none depends on no primal)."""

    def add(target: str, term: str) -> list[str]:
        return [
            f"t = get({target})",
            "if t is not None:",
            f"    term = {term}",
            "    total = term if total is None else total + term",
        ]

    after = ["if total is not None:", "    tangent[node] = total"]
    branches, names = _branches(
        rows, add, indent=8, first="elif", grad="t", before=["total = None"], after=after
    )
    source = _TANGENT_PASS.format(branches=branches)
    return generated(source, "tangent pass", "tangent_pass", float_partials=float_partials, **names)


def _branches(
    rows: Sequence[Row],
    add: Callable[[str, str], list[str]],
    indent: int,
    first: str,
    grad: str = "grad",
    before: Sequence[str] = (),
    after: Sequence[str] = (),
) -> tuple[str, dict]:
    """The loop's branch for each inline row, `op is R<k>:` and its terms (partial k times
    `grad`), each added to its parent with `add(parent, term)`, between the lines `before`
    and `after`; and the rows by name, for the loop's globals."""
    names: dict[str, Row] = {}
    lines: list[str] = []
    for row in rows:
        if row.partials is None:
            continue
        name = f"R{len(names)}"
        names[name] = row
        targets = ["a", "b"]  # an op of three or more keeps those after the first in `b`:
        if row.arity > 2:
            targets = ["a", *[f"b[{k}]" for k in range(row.arity - 1)]]
        args = [f"{t}._data" for t in targets[: row.arity]]
        keyword = "elif" if lines else first
        lines.append(f"{keyword} op is {name}:  # {row.name}, partials {row.partials.texts}")
        lines.extend("    " + line for line in before)
        for k in range(row.arity):
            term = term_source(row.partials, k, "node._data", args, grad, ieee=True)
            lines.extend("    " + line for line in add(targets[k], term))
        lines.extend("    " + line for line in after)
    return "".join(" " * indent + line + "\n" for line in lines), names


# The loop: one branch per inline row (written in by chain_rule_for), then the general ones.
# A partial that is not a float goes through `real_partial`, which converts a real number and
# refuses anything else (a complex, None, a string).
_CHAIN_RULE = """\
def chain_rule(order):
    for node in order:
        op = node._opdef
        if op is None:  # a leaf
            continue
        a, b, grad = node._a, node._b, node._grad
        try:
{branches}            {general} b is None:
                (da,) = op.derivative(node._data, a._data)
                if type(da) is not float:
                    da = real_partial(da)
                a._grad += da * grad
            elif type(b) is not tuple:
                da, db = op.derivative(node._data, a._data, b._data)
                if type(da) is not float:
                    da = real_partial(da)
                if type(db) is not float:
                    db = real_partial(db)
                a._grad += da * grad
                b._grad += db * grad
            else:
                parents = node._prev
                partials = counted_partials(
                    op.derivative(node._data, *[p._data for p in parents]), node
                )
                for parent, partial in zip(parents, partials, strict=True):
                    if type(partial) is not float:
                        partial = real_partial(partial)
                    parent._grad += partial * grad
        except Exception as exc:
            raise derivative_error(node, exc) from exc
"""


_FLOAT_PASS = """\
def float_pass(order, needed, output, hooks, run_hooks):
    grads = {{output: 1.0}}
    get = grads.get
    for node in order:
        if node not in needed:
            continue
        grad = get(node, 0.0)
        if hooks is not None and node in hooks:
            grad = grads[node] = run_hooks(node, grad, hooks[node], on_values=False)
        op = node._opdef
        a, b = node._a, node._b
        if op is None:  # a leaf
            continue
{branches}        else:
            for parent, partial in zip(node._prev, float_partials(node), strict=True):
                if parent in needed:
                    grads[parent] = get(parent, 0.0) + partial * grad
    return grads
"""


_TANGENT_PASS = """\
def tangent_pass(order, tangent):
    get = tangent.get
    for node in order:
        op = node._opdef
        a, b = node._a, node._b
        if op is None:  # a leaf
            continue
{branches}        else:
            total = None
            partials = None
            for i, parent in enumerate(node._prev):
                t = get(parent)
                if t is None:  # a parent that depends on no primal
                    continue
                if partials is None:
                    partials = float_partials(node)
                term = partials[i] * t
                total = term if total is None else total + term
            if total is not None:
                tangent[node] = total
"""


# ---------------------------------------------------------------------------------------------
# A node's partials, for the other executors


def float_partials(node: Value) -> tuple[float, ...]:
    """`node`'s local derivatives as floats, counted and checked, as backward computes them."""
    parents, op = node._prev, node._opdef
    assert op is not None, "a leaf has no partials"
    try:
        partials = counted_partials(op.derivative(node._data, *[p._data for p in parents]), node)
        return tuple(p if type(p) is float else real_partial(p) for p in partials)
    except Exception as exc:
        raise derivative_error(node, exc) from exc


def value_partials(node: Value) -> tuple:
    """`node`'s local derivatives as Values (or float constants), for create_graph=True."""
    op = node._opdef
    assert op is not None, "a leaf has no partials"
    parents = node._prev
    derivative = op.value_derivative
    if derivative is None:
        raise op_error(
            op,
            "cannot be differentiated twice",
            node=node,
            inputs=parents,
            detail="it has no value_derivative (its derivative works on floats only), so "
            "grad(..., create_graph=True) cannot go through it; backward() and grad() "
            "work to first order (docs/plugins.md shows how to make an op twice "
            "differentiable)",
            error=NotDifferentiableError,
        )
    try:
        partials = counted_partials(derivative(node, *parents), node)
    except (OpError, AnomalyError, EngineMismatchError):
        raise
    except Exception as exc:
        raise op_error(
            op,
            "failed in value_derivative",
            node=node,
            inputs=parents,
            detail=f"{type(exc).__name__}: {exc} (value_derivative is given Values and must "
            "return Values built with opgraph's ops, or numbers for constant partials)",
            error=NotDifferentiableError,
        ) from exc
    checked: list[Any] = []
    for partial in partials:
        if type(partial) is type(node) or engine_class(partial) is engine_class(node):
            checked.append(partial)
        elif isinstance(partial, Real) and not isinstance(partial, Value):
            checked.append(_number(partial))
        else:
            raise op_error(
                op,
                "failed in value_derivative",
                node=node,
                inputs=parents,
                detail=f"it returned a partial {partial!r} of type {type(partial).__name__}; "
                "each one must be a Value of the node's engine or a real number",
                error=NotDifferentiableError,
            )
    return tuple(checked)


def real_partial(partial: object) -> float:
    """A partial derivative as a float, or NotRealError: a complex grad is never right."""
    if isinstance(partial, Real):
        return _number(partial)
    raise NotRealError(
        f"derivative returned a partial derivative {partial!r} of type "
        f"{type(partial).__name__}; each one must be a real number"
    )


def counted_partials(partials, node: Value):
    """`partials`, once counted: one per parent of `node`, or PartialsCountError."""
    if type(partials) is not tuple:
        partials = tuple(partials)  # a list, or a generator, which has no length
    if len(partials) != len(node._prev):
        raise PartialsCountError(wrong_partials(len(node._prev), partials))
    return partials


def derivative_error(node: Value, exc: Exception) -> OpError:
    """The OpError for a derivative that failed at `node`, naming the op and the node.

    The inline unary and binary paths unpack the partials without counting them (a count per
    node would cost time on every pass); when one fails, the derivative is called again here
    and its partials counted, to tell a wrong count from any other failure.
    """
    if isinstance(exc, NotRealError | PartialsCountError):
        problem = str(exc)
    else:
        problem = _recount(node) or f"{type(exc).__name__}: {exc}"
    return op_error(node._opdef, "failed in backward", node=node, inputs=node._prev, detail=problem)


def _recount(node: Value) -> str | None:
    """The wrong-count problem of `node`'s derivative, or None if the count is right (or the
    derivative fails, or its result has no length)."""
    op = node._opdef
    if op is None:  # a leaf: no derivative to count
        return None
    try:
        partials = op.derivative(node._data, *[p._data for p in node._prev])
        counted_partials(partials, node)
    except PartialsCountError as exc:
        return str(exc)
    except Exception:
        return None
    return None
