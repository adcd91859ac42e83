"""Every built-in op's forward and gradient, checked against math and finite differences."""

from __future__ import annotations

import math

import pytest
from dags import OPS, programs, run
from fdcheck import assert_gradients_close, central_difference, numeric_gradient
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from opgraph import Value


def reals(lo: float, hi: float, *, away_from: float | None = None, gap: float = 1e-2):
    """Floats in [lo, hi], optionally kept `gap` away from a kink or pole."""
    xs = st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    if away_from is not None:
        xs = xs.filter(lambda x: abs(x - away_from) > gap)
    return xs


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# name -> (function of Values, reference function of floats, a domain per argument).
# The domain is where the op is smooth; kinks, poles and branch cuts are tested separately.
CASES = {
    # primitives, as methods and operators
    "add": (lambda a, b: a + b, lambda a, b: a + b, [reals(-1e3, 1e3)] * 2),
    "mul": (lambda a, b: a * b, lambda a, b: a * b, [reals(-1e3, 1e3)] * 2),
    "exp": (lambda a: a.exp(), math.exp, [reals(-30, 30)]),
    "log": (lambda a: a.log(), math.log, [reals(0.05, 1e4)]),
    "tanh": (lambda a: a.tanh(), math.tanh, [reals(-8, 8)]),
    "relu": (lambda a: a.relu(), lambda a: max(a, 0.0), [reals(-1e3, 1e3, away_from=0)]),
    "sigmoid": (lambda a: a.sigmoid(), sigmoid, [reals(-30, 30)]),
    # pow with a constant exponent: integer exponents for any base, others for base > 0
    "pow 2": (lambda a: a**2, lambda a: a**2, [reals(-1e3, 1e3)]),
    "pow 3": (lambda a: a**3, lambda a: a**3, [reals(-1e2, 1e2)]),
    "pow -1": (lambda a: a**-1, lambda a: 1 / a, [reals(-1e3, 1e3, away_from=0, gap=0.1)]),
    "pow -2": (lambda a: a**-2, lambda a: a**-2.0, [reals(-1e3, 1e3, away_from=0, gap=0.1)]),
    "pow 0.5": (lambda a: a**0.5, math.sqrt, [reals(0.01, 1e4)]),
    "pow -1.5": (lambda a: a**-1.5, lambda a: a**-1.5, [reals(0.1, 1e3)]),
    "pow 0": (lambda a: a**0, lambda a: 1.0, [reals(-1e3, 1e3)]),
    "pow 1": (lambda a: a**1, lambda a: a, [reals(-1e3, 1e3)]),
    # pow with a Value exponent differentiates in both arguments (base > 0: a ** b is real)
    "pow Value": (lambda a, b: a**b, lambda a, b: a**b, [reals(0.05, 20), reals(-4, 4)]),
    # composites: neg, sub, div
    "neg": (lambda a: -a, lambda a: -a, [reals(-1e3, 1e3)]),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, [reals(-1e3, 1e3)] * 2),
    "div": (
        lambda a, b: a / b,
        lambda a, b: a / b,
        [reals(-1e3, 1e3), reals(-1e3, 1e3, away_from=0, gap=0.1)],
    ),
    # a plain number on either side: reflected operators make it a constant
    "v + 2": (lambda a: a + 2, lambda a: a + 2, [reals(-1e3, 1e3)]),
    "2 + v": (lambda a: 2 + a, lambda a: 2 + a, [reals(-1e3, 1e3)]),
    "v - 2": (lambda a: a - 2, lambda a: a - 2, [reals(-1e3, 1e3)]),
    "2 - v": (lambda a: 2 - a, lambda a: 2 - a, [reals(-1e3, 1e3)]),
    "v * 2.5": (lambda a: a * 2.5, lambda a: a * 2.5, [reals(-1e3, 1e3)]),
    "2.5 * v": (lambda a: 2.5 * a, lambda a: 2.5 * a, [reals(-1e3, 1e3)]),
    "v / 4": (lambda a: a / 4, lambda a: a / 4, [reals(-1e3, 1e3)]),
    "2 / v": (lambda a: 2 / a, lambda a: 2 / a, [reals(-1e3, 1e3, away_from=0, gap=0.1)]),
    "2 ** v": (lambda a: 2**a, lambda a: 2**a, [reals(-30, 30)]),
    "0.5 ** v": (lambda a: 0.5**a, lambda a: 0.5**a, [reals(-30, 30)]),
}


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_op_forward_and_gradient(name, data):
    fn, reference, domains = CASES[name]
    xs = [data.draw(domain, label=f"x{i}") for i, domain in enumerate(domains)]
    leaves = [Value(x) for x in xs]
    out = fn(*leaves)
    assert out.data == pytest.approx(reference(*xs), rel=1e-12, abs=1e-300)

    out.backward()
    numeric = numeric_gradient(lambda *ys: fn(*map(Value, ys)).data, xs)
    assert_gradients_close(
        [leaf.grad for leaf in leaves], numeric, scale=abs(out.data), what=f"{name} at {xs}"
    )


def test_every_builtin_op_is_covered():
    # A new built-in op must get a row in CASES. (entry_points=False: only the built-ins,
    # whatever plugins are installed.)
    from opgraph import Engine

    covered = {name.split()[0] for name in CASES}
    assert set(Engine(entry_points=False).ops) <= covered


@pytest.mark.parametrize(
    "fn, x, grad",
    [
        (lambda a: a.relu(), 0.0, 0.0),  # micrograd's convention at the kink
        (lambda a: a.relu(), -3.0, 0.0),
        (lambda a: a.relu(), 3.0, 1.0),
        (lambda a: a**2, 0.0, 0.0),
        (lambda a: a**0, 0.0, 0.0),  # as PyTorch: a zero exponent has zero slope
        (lambda a: a**3, -2.0, 12.0),  # integer exponents: any base
        (lambda a: a**-1, -2.0, -0.25),
        (lambda a: a.sigmoid(), 800.0, 0.0),  # no overflow in e**-a
        (lambda a: a.sigmoid(), -800.0, 0.0),
        (lambda a: a.tanh(), 30.0, 0.0),
    ],
)
def test_gradient_at_special_points(fn, x, grad):
    a = Value(x)
    fn(a).backward()
    assert a.grad == grad


def test_pow_value_exponent_gradients_exactly():
    # d(a**b)/da = b * a**(b-1), d(a**b)/db = a**b * ln a
    a, b = Value(3.0), Value(2.0)
    (a**b).backward()
    assert a.grad == pytest.approx(6.0)
    assert b.grad == pytest.approx(9.0 * math.log(3.0))


def test_pow_value_exponent_at_zero_base():
    # 0 ** b for b > 0 is 0 on the side where it is defined: zero slope in b, as PyTorch.
    a, b = Value(0.0), Value(2.0)
    (a**b).backward()
    assert (a.grad, b.grad) == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Random expression DAGs


@settings(max_examples=150, deadline=None)
@given(program=programs())
def test_random_dag_gradients_match_finite_differences(program):
    built = run(program, Value)
    # relu is not differentiable at 0, and a program is kept off the kinks it can reach.
    assume(all(abs(x) > 1e-3 for x in built.relu_inputs))
    assume(all(abs(node.data) < 1e6 for node in built.nodes))
    built.output.backward()

    def f(*leaves):
        return run(program, Value, leaves=leaves).output.data

    leaves = built.nodes[: len(program.leaves)]
    numeric = numeric_gradient(f, program.leaves)
    scale = max(abs(node.data) for node in built.nodes)
    assert_gradients_close(
        [leaf.grad for leaf in leaves], numeric, scale=scale, rtol=1e-4, what=repr(program)
    )


@settings(max_examples=60, deadline=None)
@given(program=programs())
def test_random_dag_intermediate_grads_match_finite_differences(program):
    """Each intermediate node's grad is d output / d node: the slope of the output when
    that node's value is shifted, the graph above it recomputed."""
    built = run(program, Value)
    assume(all(abs(x) > 1e-3 for x in built.relu_inputs))
    assume(all(abs(node.data) < 1e6 for node in built.nodes))
    built.output.backward()
    n = len(program.leaves)

    def output_with_shift(k: int, shift: float) -> float:
        nodes = [Value(x) for x in program.leaves]
        for j, (op, args) in enumerate(program.steps):
            node = OPS[op][1](*[nodes[i] for i in args])
            nodes.append(node + shift if j == k else node)
        return sum(nodes[n:]).data

    analytic = [node.grad for node in built.nodes[n:]]
    numeric = [
        central_difference(lambda s, k=k: output_with_shift(k, s), [0.0], 0)
        for k in range(len(program.steps))
    ]
    scale = max(abs(node.data) for node in built.nodes)
    assert_gradients_close(analytic, numeric, scale=scale, what=repr(program))
