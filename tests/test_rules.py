"""One row with inline partials is all a new op needs (rules.py): every executor (eager
backward, `Value._backward()`, `grad`, `grad(create_graph=True)`, `jvp`, compiled and batched
replay) differentiates it right with no other edit; and a hostile inline rule is refused at
registration, naming the op and the plugin."""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
from conftest import plugin
from fdcheck import assert_gradients_close, numeric_gradient

import opgraph
from opgraph import Engine, Op, PluginError, topological_order
from opgraph.compiler import BatchWarning

# A plugin of three ops given by their rows alone: no derivative function, no array kernel
# for the derivative, no value_derivative.
ROWS = plugin(
    "opgraph_cubes",
    Op("cube", lambda a: a * a * a, partials=("3 * a * a",)),
    # binary, with `/` and the output: d(x/y)/dx = 1/y, d(x/y)/dy = -x/y^2 = -out/y
    Op("ratio", lambda x, y: x / y, partials=("1 / y", "-out / y")),
    # three inputs: d(a*b + c) = (b, a, 1)
    Op("fma", lambda a, b, c: a * b + c, partials=("b", "a", "1")),
    # a fixed argument (`scale(x, 3)` has one parent): d(a*k)/da = k
    Op("scale", lambda a, k: a * k, partials=("k", "a"), static=(1,)),
)
ENGINE = Engine(plugins=[ROWS], entry_points=False)
OPS = ENGINE.ops


def f(x, y):
    """Every new op, and the built-ins around them."""
    return OPS.fma(OPS.cube(x), OPS.ratio(x, y), OPS.scale(y, 3.0)).tanh() + x * y


def f_exact(x: float, y: float) -> tuple[float, float]:
    """d f / dx and d f / dy, worked out by hand."""
    inner = x**3 * (x / y) + 3.0 * y
    t = 1.0 - math.tanh(inner) ** 2
    d_inner_dx = 3.0 * x**2 * (x / y) + x**3 / y
    d_inner_dy = x**3 * (-x / y**2) + 3.0
    return t * d_inner_dx + y, t * d_inner_dy + x


POINT = (0.7, -1.3)


def eager_grads(point=POINT) -> list[float]:
    xs = [ENGINE.value(v) for v in point]
    f(*xs).backward()
    return [v.grad for v in xs]


def test_eager_backward_matches_the_analytic_derivatives_and_finite_differences():
    grads = eager_grads()
    assert grads == pytest.approx(f_exact(*POINT), rel=1e-12)
    numeric = numeric_gradient(lambda *v: f(*map(ENGINE.value, v)).data, POINT)
    assert_gradients_close(grads, numeric, scale=1.0, what="inline rows")


def test_the_rows_partials_are_written_into_the_tables_backward_loop():
    source = inspect.getsource(OPS.chain_rule)  # generated, and registered with linecache
    for name in ("cube", "ratio", "fma", "scale"):
        assert f"# {name}, partials" in source
    assert "3.0 * a._data * a._data * grad" in source


def test_backward_by_hand_with_underscore_backward_gives_the_same_bits():
    xs = [ENGINE.value(v) for v in POINT]
    out = f(*xs)
    out.grad = 1.0
    for node in reversed(topological_order(out)):
        node._backward()
    assert [v.grad for v in xs] == eager_grads()


def test_grad_on_floats_gives_the_same_bits():
    xs = [ENGINE.value(v) for v in POINT]
    assert [g.data for g in opgraph.grad(f(*xs), xs)] == eager_grads()


def test_second_derivatives_through_the_same_expressions_on_values():
    x, y = ENGINE.value(0.7), ENGINE.value(-1.3)
    # cube'' = 6 x; d^2 (x / y) / dy^2 = 2 x / y^3; d^2 fma(x, y, x) / dx dy = 1
    (dx,) = opgraph.grad(OPS.cube(x), [x], create_graph=True)
    assert dx.data == pytest.approx(3 * 0.7**2, rel=1e-15)
    assert opgraph.grad(dx, [x])[0].data == pytest.approx(6 * 0.7, rel=1e-15)
    (dy,) = opgraph.grad(OPS.ratio(x, y), [y], create_graph=True)
    assert opgraph.grad(dy, [y])[0].data == pytest.approx(2 * 0.7 / (-1.3) ** 3, rel=1e-14)
    (dx,) = opgraph.grad(OPS.fma(x, y, x), [x], create_graph=True)
    assert opgraph.grad(dx, [y])[0].data == 1.0
    # third order, through a derivative of a derivative: cube''' = 6
    (d1,) = opgraph.grad(OPS.cube(x), [x], create_graph=True)
    (d2,) = opgraph.grad(d1, [x], create_graph=True)
    assert opgraph.grad(d2, [x])[0].data == pytest.approx(6.0, rel=1e-15)


def test_jvp_is_the_gradient_along_the_tangent():
    tangent = (0.25, -2.0)
    out, derivative = opgraph.jvp(f, POINT, tangent, engine=ENGINE)
    expected = sum(g * t for g, t in zip(f_exact(*POINT), tangent, strict=True))
    assert out.data == f(*map(ENGINE.value, POINT)).data
    assert derivative == pytest.approx(expected, rel=1e-12)


def test_compiled_replay_writes_the_partials_out_and_gives_the_same_bits():
    compiled = opgraph.compile(f, *POINT, engine=ENGINE)
    assert "3.0 * v" in compiled.source and "d_cube" not in compiled.source  # no call
    assert compiled(*POINT) == f(*map(ENGINE.value, POINT)).data
    compiled.backward()
    assert compiled.input_grads == eager_grads()
    point = (-0.4, 2.5)  # another point, the same recorded graph
    compiled.zero_grad()
    compiled(*point)
    compiled.backward()
    assert compiled.input_grads == eager_grads(point)


def test_batched_replay_derives_the_array_derivative_from_the_row():
    compiled = opgraph.compile(f, *POINT, engine=ENGINE)
    points = [POINT, (-0.4, 2.5), (1.5, 0.3), (2.0, -0.9)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled.map([p[0] for p in points], [p[1] for p in points])
    # The forwards have no array kernel (applied element by element, with a warning); their
    # derivatives need none: the inline partials run on the arrays.
    messages = [str(w.message) for w in caught if issubclass(w.category, BatchWarning)]
    assert messages and all("array_derivative" not in m for m in messages)
    assert "d_cube" not in compiled.batch_source and "3.0 *" in compiled.batch_source
    compiled.backward()
    for sample, point in zip(compiled.batch_input_grads, points, strict=True):
        assert list(sample) == pytest.approx(eager_grads(point), rel=1e-12, abs=1e-300)


# --- hostile inline rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    "forward, partials, problem",
    [
        (lambda a: a, ("__import__('os').getcwd()",), "uses a call"),
        (lambda a: a, ("a.real",), "uses attribute access"),
        (lambda a: a, ("a[0]",), "uses indexing"),
        (lambda a: a, ("a if a else 1",), "uses a conditional"),
        (lambda a: a, ("a < 1",), "uses a comparison"),
        (lambda a: a, ("(lambda: 1)()",), "uses a call"),
        (lambda a: a, ("x",), r"names 'x', which is not one of a, out"),
        (lambda a: a, ("__builtins__",), r"names '__builtins__'"),
        (lambda a: a, ("a +",), "is not an expression"),
        (lambda a: a, ("a; b",), "is not an expression"),
        (lambda a: a, ("'1'",), "has the constant '1'"),
        (lambda a: a, ("1e400",), "has the constant inf"),
        (lambda a: a, ("a % 2",), "uses the operator Mod"),
        (lambda a: a, ("not a",), "uses Not"),
        (lambda a: a, ("a" * 500,), "longer than"),
        (lambda a: a, (1.0,), "must be a string"),
        (lambda a: a, "1", "must be a tuple"),
        (lambda a, b: a, ("1",), r"gives 1 expression\(s\) for an op of 2 input\(s\)"),
        (lambda out: out, ("1",), "parameter named 'out'"),
    ],
)
def test_a_hostile_inline_rule_is_refused_naming_op_and_plugin(forward, partials, problem):
    hostile = plugin("opgraph_hostile", Op("evil", forward, partials=partials))
    with pytest.raises(PluginError, match=rf"plugin 'opgraph_hostile', op 'evil': .*{problem}"):
        Engine(plugins=[hostile], entry_points=False)


def test_a_forward_without_a_signature_is_refused_with_what_to_write():
    row = Op("biggest", max, arity=2, partials=("1", "0"))
    with pytest.raises(PluginError, match=r"op 'biggest': .*signature.*lambda a: fn\(a\)"):
        Engine(plugins=[plugin("opgraph_sigless", row)], entry_points=False)


def test_a_refused_rule_loses_nothing():
    engine = Engine(plugins=[ROWS], entry_points=False)
    bad = plugin("opgraph_bad_rule", Op("evil", lambda a: a, partials=("open('x')",)))
    with pytest.raises(PluginError, match="op 'evil'"):
        engine.register(bad)
    assert "evil" not in engine.ops and "cube" in engine.ops
    x = engine.value(2.0)
    engine.ops.cube(x).backward()
    assert x.grad == 12.0


def test_parameters_named_like_the_generated_codes_helpers_are_only_parameters():
    """A forward's `div` or `power` parameter does not hide the IEEE `/` and `**` helpers."""
    row = Op("quot", lambda div, power: div / power, partials=("1 / power", "-div / power**2"))
    engine = Engine(plugins=[plugin("opgraph_named", row)], entry_points=False)
    a, b = engine.value(3.0), engine.value(2.0)
    out = engine.ops.quot(a, b)
    out.grad = 1.0
    out._backward()  # through the row's derivative function, not backward's loop
    assert (a.grad, b.grad) == (0.5, -0.75)
