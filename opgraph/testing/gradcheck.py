"""check_op: compare an op's derivative with central finite differences.

For an op f of n inputs, at a point x the analytic gradient comes from opgraph's backward,
and the numeric one from central differences

    d f / d x_i  ~  (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)

whose error shrinks like eps**2. They agree when |analytic - numeric| <= atol + rtol *
|numeric| (numpy's `isclose`). The report names the worst point, so a wrong derivative is
found with the inputs that expose it, as autograd's `check_grads` and PyTorch's `gradcheck`
do.

It also checks forward mode against reverse mode (`jvp` along each input against backward's
partial), and with `order=2` the second derivatives: d2 f / dx_i dx_j from
`grad(grad(f, create_graph=True)[i])`, against central differences of the first derivative
d f / d x_i (itself from backward), the same comparison one order up.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any

from ..errors import GradcheckError
from ..modes import no_grad

if TYPE_CHECKING:
    from ..engine import Engine

Domain = tuple[float, float] | Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Mismatch:
    """The comparison of one partial derivative at one point."""

    inputs: tuple[float, ...]
    position: int  # which input the partial derivative is taken with respect to
    analytic: float
    numeric: float
    # For a second derivative, d2 f / d x_first d x_position: `first` (None for a first one).
    first: int | None = None

    @property
    def error(self) -> float:
        return abs(self.analytic - self.numeric)

    def excess(self, rtol: float, atol: float) -> float:
        """How far over the tolerance: above 1 is a failure (nan counts as infinitely far)."""
        if self.analytic == self.numeric:  # equal infinities included
            return 0.0
        ratio = self.error / (atol + rtol * abs(self.numeric))
        return math.inf if math.isnan(ratio) else ratio


@dataclass(frozen=True)
class GradcheckReport:
    """What check_op compared: the op, how many points, and the worst partial derivative."""

    op: str
    plugin: str
    points: int
    worst: Mismatch | None


def check_op(
    engine: Engine,
    name: str,
    points: Iterable[Sequence[float] | float] | None = None,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    domain: Domain = (-2.0, 2.0),
    samples: int = 20,
    seed: int = 0,
    order: int = 1,
) -> GradcheckReport:
    """Check op `name` of `engine` against central finite differences.

    `points` are the inputs to check at (a tuple per point, or a number for a unary op); by
    default `samples` random points drawn uniformly from `domain`, which is one (low, high)
    for every input or one pair per input, from a generator seeded with `seed`. Raises
    GradcheckError naming the op, its plugin and the worst mismatch with its inputs;
    returns a GradcheckReport when every partial derivative agrees.
    """
    __tracebackhide__ = True  # under pytest, a failure shows the test's frames, not these
    definition = _definition(engine, name)
    arity = definition.arity or 1
    if eps <= 0 or rtol < 0 or atol < 0 or (rtol == 0 and atol == 0):
        raise ValueError(
            f"need eps > 0 and rtol, atol >= 0, not both 0 (eps={eps}, rtol={rtol}, atol={atol})"
        )
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if points is None:
        points = random_points(arity, domain, samples, seed)
    points = list(points)  # walked twice: derivatives, then forward mode
    where = definition.described
    checked, worst, failures = 0, None, 0
    for point in points:
        xs = _as_point(point, arity, where)
        compared = list(_compare(engine, name, xs, eps, where))
        if order == 2:
            compared += _compare_second(engine, name, xs, eps, where)
        for mismatch in compared:
            excess = mismatch.excess(rtol, atol)
            failures += excess > 1
            if worst is None or excess > worst.excess(rtol, atol):
                worst = mismatch
        checked += 1
    if checked == 0:
        raise GradcheckError(f"{where}: no points to check")
    if failures:
        raise GradcheckError(_explain(where, worst, failures, checked, arity, rtol, atol, eps))
    for point in points:  # the derivatives are right: does forward mode give them too?
        _forward_matches_reverse(engine, name, _as_point(point, arity, where), rtol, atol, where)
    return GradcheckReport(name, definition.plugin, checked, worst)


def random_points(
    arity: int, domain: Domain, samples: int, seed: int = 0
) -> list[tuple[float, ...]]:
    """`samples` points of `arity` coordinates, uniform in `domain`."""
    bounds = _bounds(domain, arity)
    rng = random.Random(seed)
    return [tuple(rng.uniform(low, high) for low, high in bounds) for _ in range(samples)]


def _definition(engine: Engine, name: str) -> Any:
    __tracebackhide__ = True
    definitions = engine.ops.definitions
    if name not in definitions:
        known = ", ".join(sorted(definitions)) or "none"
        from ..loading import failures_note

        failures = getattr(getattr(engine, "pm", None), "failures", {})
        raise GradcheckError(
            f"engine {engine.name!r} has no op named {name!r} (registered ops: {known}); "
            f"is the plugin that provides it registered?{failures_note(failures)}"
        )
    return definitions[name]


def _bounds(domain: Domain, arity: int) -> list[tuple[float, float]]:
    __tracebackhide__ = True
    one = _pair(domain)
    pairs = [one] * arity if one is not None else [_pair(pair) for pair in domain]
    bounds = [pair for pair in pairs if pair is not None]
    if len(bounds) != arity or len(pairs) != arity:
        raise ValueError(
            f"domain must be one (low, high) pair or {arity} of them, one per input, "
            f"with low <= high; got {domain!r}"
        )
    return bounds


def _pair(pair: object) -> tuple[float, float] | None:
    """(low, high) from two real numbers with low <= high; None from anything else."""
    if not isinstance(pair, Iterable) or isinstance(pair, str):
        return None
    items = tuple(pair)
    if len(items) != 2:
        return None
    low, high = items
    if isinstance(low, Real) and isinstance(high, Real) and low <= high:
        return float(low), float(high)
    return None


def _as_point(point: Sequence[float] | float, arity: int, where: str) -> tuple[float, ...]:
    __tracebackhide__ = True
    xs = (point,) if isinstance(point, int | float | Real) else tuple(point)
    if len(xs) != arity or not all(isinstance(x, Real) for x in xs):
        raise ValueError(f"{where} takes {arity} input(s); the point {point!r} does not fit")
    return tuple(float(x) for x in xs)


def _compare(engine: Engine, name: str, xs: tuple[float, ...], eps: float, where: str):
    """Yield a Mismatch per input: backward's partial derivative beside the numeric one."""
    __tracebackhide__ = True
    op = engine.ops[name]
    leaves = [engine.Value(x) for x in xs]
    out = op(*leaves)
    _finite(out.data, where, xs, "its output")
    out.backward()
    for i, leaf in enumerate(leaves):
        yield Mismatch(xs, i, leaf.grad, _central_difference(engine, op, xs, i, eps, where))


def _first_derivatives(engine: Engine, op: Any, xs: tuple) -> list[float]:
    """backward's d f / d x_i at `xs`, for each input."""
    leaves = [engine.Value(x) for x in xs]
    op(*leaves).backward()
    return [leaf.grad for leaf in leaves]


def _forward_matches_reverse(engine, name, xs, rtol, atol, where) -> None:
    """jvp along each input must give backward's partial derivative."""
    __tracebackhide__ = True
    from ..higher import jvp

    op = engine.ops[name]
    reverse = _first_derivatives(engine, op, xs)
    for i in range(len(xs)):
        direction = [1.0 if j == i else 0.0 for j in range(len(xs))]
        _, forward = jvp(lambda *vs: op(*vs), xs, direction, engine=engine)
        if forward != reverse[i] and not abs(forward - reverse[i]) <= atol + rtol * abs(reverse[i]):
            raise GradcheckError(
                f"{where}: forward mode disagrees with reverse mode at inputs {xs}, with "
                f"respect to input {i + 1} of {len(xs)}: jvp gave {forward!r}, backward "
                f"{reverse[i]!r}"
            )


def _compare_second(engine: Engine, name: str, xs: tuple[float, ...], eps: float, where: str):
    """A Mismatch per pair (i, j): d2 f / dx_i dx_j by grad twice, beside the difference of
    backward's d f / dx_i at x +- eps e_j."""
    __tracebackhide__ = True
    from ..higher import grad

    op = engine.ops[name]
    leaves = [engine.Value(x) for x in xs]
    firsts = grad(op(*leaves), leaves, create_graph=True)
    reverse = _first_derivatives(engine, op, xs)
    for i, (first, expected) in enumerate(zip(firsts, reverse, strict=True)):
        # value_derivative and derivative must give the same first derivative
        if not (first.data == expected or abs(first.data - expected) <= 1e-9 * abs(expected)):
            if not (math.isnan(first.data) and math.isnan(expected)):
                raise GradcheckError(
                    f"{where}: value_derivative disagrees with derivative at inputs {xs}, "
                    f"with respect to input {i + 1} of {len(xs)}: {first.data!r} on Values, "
                    f"{expected!r} on floats"
                )
    mismatches = []
    for i, first in enumerate(firsts):
        seconds = grad(first, leaves)
        for j, second in enumerate(seconds):
            moved_up = [x + eps if k == j else x for k, x in enumerate(xs)]
            moved_down = [x - eps if k == j else x for k, x in enumerate(xs)]
            above = _first_derivatives(engine, op, tuple(moved_up))[i]
            below = _first_derivatives(engine, op, tuple(moved_down))[i]
            _finite(above, where, xs, f"its derivative in input {i + 1} at input {j + 1} + eps")
            _finite(below, where, xs, f"its derivative in input {i + 1} at input {j + 1} - eps")
            mismatches.append(Mismatch(xs, j, second.data, (above - below) / (2 * eps), first=i))
    return mismatches


def _central_difference(engine: Engine, op: Any, xs: tuple, i: int, eps: float, where: str):
    __tracebackhide__ = True

    def f(shift: float) -> float:
        moved = [x + shift if j == i else x for j, x in enumerate(xs)]
        with no_grad():
            return op(*[engine.Value(x) for x in moved]).data

    above, below = f(eps), f(-eps)
    _finite(above, where, xs, f"its output at input {i + 1} + eps")
    _finite(below, where, xs, f"its output at input {i + 1} - eps")
    return (above - below) / (2 * eps)


def _finite(value: float, where: str, xs: tuple, what: str) -> None:
    __tracebackhide__ = True
    if not math.isfinite(value):
        raise GradcheckError(
            f"{where}: {what} is {value} at inputs {xs}; finite differences need finite "
            f"values: choose points or a domain where the op is defined"
        )


def _explain(where, worst, failures, checked, arity, rtol, atol, eps) -> str:
    wrt = f"input {worst.position + 1} of {arity}"
    which = "derivative"
    if worst.first is not None:
        which = "second derivative"
        wrt = f"inputs {worst.first + 1} then {worst.position + 1} of {arity}"
    return (
        f"{where}: the {which} disagrees with central finite differences "
        f"({failures} partial derivative(s) over tolerance, at {checked} point(s) checked). "
        f"Worst at inputs {worst.inputs}, with respect to {wrt}: "
        f"analytic {worst.analytic!r}, numeric {worst.numeric!r}, "
        f"difference {worst.error:.3g} > atol + rtol * |numeric| = "
        f"{atol + rtol * abs(worst.numeric):.3g} (rtol={rtol}, atol={atol}, eps={eps})"
    )
