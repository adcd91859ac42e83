"""Derivatives of derivatives (`grad(..., create_graph=True)`), forward mode (`jvp`) and
gradient hooks, each against finite differences or against reverse mode."""

from __future__ import annotations

import math

import pytest
from dags import programs, run
from fdcheck import assert_gradients_close, central_difference
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import opgraph
from opgraph import (
    CompileError,
    Engine,
    HookError,
    NotDifferentiableError,
    Op,
    OpgraphError,
    Value,
    grad,
    hookimpl,
    jvp,
)
from opgraph.testing import check_op

# Every built-in op as a function of one Value, with a domain where it is smooth; binary ops
# appear with the other operand a Value (so that the mixed partials are checked below).
UNARY = {
    "add": (lambda x: x + x * 0.5, (-2, 2)),
    "mul": (lambda x: x * x * 1.5, (-2, 2)),
    "pow number": (lambda x: x**3.5, (0.2, 2)),
    "pow negative": (lambda x: x**-2, (0.3, 2)),
    "pow value": (lambda x: x**x, (0.3, 2)),
    "rpow": (lambda x: 1.7**x, (-2, 2)),
    "exp": (lambda x: x.exp(), (-2, 2)),
    "log": (lambda x: x.log(), (0.2, 3)),
    "tanh": (lambda x: x.tanh(), (-2, 2)),
    "relu": (lambda x: (x * x).relu() * x, (-2, 2)),
    "sigmoid": (lambda x: x.sigmoid(), (-3, 3)),
    "neg": (lambda x: -(x * x), (-2, 2)),
    "sub": (lambda x: 1 - x * x * x, (-2, 2)),
    "div": (lambda x: 1 / (x * x + 1), (-2, 2)),
}


def derivatives(fn, x: float, order: int) -> list[float]:
    """[f, f', f'', ...] at x by grad with create_graph, up to `order`."""
    leaf = Value(x)
    out = fn(leaf)
    values = [out.data]
    for _ in range(order):
        (out,) = grad(out, [leaf], create_graph=True)
        values.append(out.data)
    return values


def close(analytic: float, numeric: float, scale: float = 1.0) -> bool:
    return abs(analytic - numeric) <= 1e-5 * max(1.0, scale) + 1e-4 * abs(numeric)


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("x", [-1.7, -0.6, 0.45, 1.3])
def test_first_second_and_third_derivatives_match_finite_differences(name, x):
    fn, (low, high) = UNARY[name]
    x = low + (x + 2) / 4 * (high - low)  # the same four points, moved into the domain
    d = derivatives(fn, x, 3)
    for k in (1, 2, 3):
        # the k-th derivative against a central difference of the (k-1)-th
        numeric = central_difference(lambda t, k=k: derivatives(fn, t, k - 1)[-1], [x], 0)
        assert close(d[k], numeric, scale=max(map(abs, d))), (name, x, k, d[k], numeric)


def test_first_order_grad_equals_backward_to_the_bit_and_leaves_grads_alone():
    x, y = Value(0.3, label="x"), Value(-1.2, label="y")
    out = (x * y + x.tanh()) ** 2 / (y.exp() + 1)
    gx, gy = grad(out, [x, y])
    assert (x.grad, y.grad, out.grad) == (0.0, 0.0, 0.0)
    out.backward()
    assert (gx.data, gy.data) == (x.grad, y.grad)


def test_an_input_the_output_does_not_depend_on_gets_zero():
    x, unused = Value(2.0), Value(5.0)
    gx, gu = grad(x * x, [x, unused], create_graph=True)
    assert (gx.data, gu.data) == (4.0, 0.0)
    (again,) = grad(gu, [x])  # a zero that is a Value, differentiable too
    assert again.data == 0.0


def test_the_output_itself_as_input_gets_one():
    x = Value(2.0)
    y = x * 3
    assert [g.data for g in grad(y, [y, x])] == [1.0, 3.0]


def test_derivatives_to_any_order_of_a_polynomial():
    x = Value(2.0)
    out = x**5
    expected = [80.0, 160.0, 240.0, 240.0, 120.0, 0.0]  # 5x^4, 20x^3, 60x^2, 120x, 120, 0
    for value in expected:
        (out,) = grad(out, [x], create_graph=True)
        assert out.data == value


def test_mixed_partials_of_binary_ops():
    # d2/dadb of a * b is 1, of a ** b is a^(b-1) (1 + b ln a), of a / b is -1/b^2.
    for fn, expected in [
        (lambda a, b: a * b, lambda a, b: 1.0),
        (lambda a, b: a**b, lambda a, b: a ** (b - 1) * (1 + b * math.log(a))),
        (lambda a, b: a / b, lambda a, b: -1 / b**2),
        (lambda a, b: a - b * b, lambda a, b: 0.0),
    ]:
        a, b = Value(1.3), Value(0.7)
        da, _ = grad(fn(a, b), [a, b], create_graph=True)
        (dab,) = grad(da, [b])
        assert math.isclose(dab.data, expected(1.3, 0.7), rel_tol=1e-12, abs_tol=1e-15)


def test_edge_conventions_follow_pytorch():
    x = Value(1.5)
    (d,) = grad(x.relu(), [x], create_graph=True)
    assert grad(d, [x])[0].data == 0.0  # relu'' = 0
    (d,) = grad(x**0, [x], create_graph=True)
    assert d.data == 0.0 and grad(d, [x])[0].data == 0.0  # a zero exponent: no slope
    zero = Value(0.0)
    (d,) = grad(zero**2, [zero], create_graph=True)
    assert d.data == 0.0 and grad(d, [zero])[0].data == 2.0
    base, exponent = Value(0.0), Value(2.0)
    dbase, dexp = grad(base**exponent, [base, exponent], create_graph=True)
    assert dexp.data == 0.0  # a zero base, a non-negative exponent: no slope in the exponent
    assert grad(dbase, [base])[0].data == 2.0  # b (b - 1) a^(b-2) at a = 0, b = 2


def test_check_op_checks_second_derivatives_of_every_builtin():
    engine = opgraph.default_engine()
    domains = {"pow": ((0.2, 2), (-2, 2)), "log": (0.2, 3), "div": ((-2, 2), (0.5, 2))}
    for name in ["add", "mul", "pow", "exp", "log", "tanh", "relu", "sigmoid", "neg", "sub"]:
        check_op(engine, name, domain=domains.get(name, (-2, 2)), order=2, samples=5, rtol=1e-4)
    check_op(engine, "div", domain=domains["div"], order=2, samples=5, rtol=1e-4)


# --- random DAGs ------------------------------------------------------------------------------


def _usable(built) -> bool:
    return all(abs(x) > 1e-2 for x in built.relu_inputs) and all(
        abs(node.data) < 1e4 for node in built.nodes
    )


@settings(max_examples=60, deadline=None)
@given(program=programs(max_steps=10), data=st.data())
def test_hessian_vector_products_on_random_dags_match_finite_differences(program, data):
    built = run(program, Value)
    assume(_usable(built))
    n = len(program.leaves)
    leaves = built.nodes[:n]
    v = data.draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n))
    gradient = grad(built.output, leaves, create_graph=True)
    # Hv = d/dx (grad . v)
    dot = sum((g * vi for g, vi in zip(gradient, v, strict=True)), Value(0.0))
    hv = [h.data for h in grad(dot, leaves)]

    def gradient_at(t: float) -> list[float]:
        moved = [x + t * vi for x, vi in zip(program.leaves, v, strict=True)]
        again = run(program, Value, leaves=moved)
        assume(_usable(again))
        return [g.data for g in grad(again.output, again.nodes[:n])]

    h = 1e-5
    numeric = [
        (up - down) / (2 * h) for up, down in zip(gradient_at(h), gradient_at(-h), strict=True)
    ]
    scale = max(abs(g.data) for g in gradient) + max(abs(node.data) for node in built.nodes)
    assert_gradients_close(hv, numeric, scale=scale, rtol=1e-3, what=repr(program))


@settings(max_examples=80, deadline=None)
@given(program=programs(), data=st.data())
def test_jvp_equals_reverse_mode_on_random_dags(program, data):
    n = len(program.leaves)
    tangents = data.draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n))
    out, tangent = jvp(
        lambda *xs: run(program, lambda v: v, leaves=xs).output, program.leaves, tangents
    )
    built = run(program, Value)
    assert out.data == built.output.data
    built.output.backward()
    reverse = sum(leaf.grad * t for leaf, t in zip(built.nodes[:n], tangents, strict=True))
    if math.isfinite(reverse):
        scale = max(1.0, *(abs(leaf.grad) for leaf in built.nodes[:n]))
        assert abs(tangent - reverse) <= 1e-9 * scale, (program, tangent, reverse)


def test_jvp_of_a_function_that_ignores_an_input_and_its_errors():
    out, tangent = jvp(lambda x, y: x * x, [3.0, 4.0], [0.5, 1.0])
    assert (out.data, tangent) == (9.0, 3.0)
    _, tangent = jvp(lambda x, y: x, [3.0, 4.0], [0.5, 1.0])
    assert tangent == 0.5
    with pytest.raises(ValueError, match="one tangent per primal"):
        jvp(lambda x: x, [1.0], [1.0, 2.0])
    with pytest.raises(TypeError, match="real numbers"):
        jvp(lambda x: x, [Value(1.0)], [1.0])
    with pytest.raises(TypeError, match="must return a Value"):
        jvp(lambda x: 3.0, [1.0], [1.0])


# --- hooks ------------------------------------------------------------------------------------


def test_a_hook_observes_the_complete_gradient_once_per_pass():
    x = Value(3.0, label="x")
    h = x * x  # used twice below: its gradient is complete only after both uses
    out = h + h * 2
    seen = []
    h.register_hook(seen.append)
    out.backward()
    assert seen == [3.0] and x.grad == 18.0
    out.backward()
    assert seen == [3.0, 3.0] and x.grad == 36.0


def test_a_hook_that_returns_a_number_replaces_the_gradient_before_the_parents_get_it():
    x = Value(3.0)
    h = x * x
    out = h * 5
    handle = h.register_hook(lambda g: g * 0.5)
    out.backward()
    assert h.grad == 2.5 and x.grad == 15.0  # 2.5 * 2x
    handle.remove()
    handle.remove()  # twice is harmless
    x.grad = h.grad = 0.0
    out.backward()
    assert x.grad == 30.0


def test_several_hooks_run_in_order_each_on_the_previous_result():
    x = Value(2.0)
    out = x * 4
    calls = []
    x.register_hook(lambda g: calls.append(("first", g)) or g + 1)
    x.register_hook(lambda g: calls.append(("second", g)))
    x.register_hook(lambda g: g * 10)
    out.backward()
    assert calls == [("first", 4.0), ("second", 5.0)] and x.grad == 50.0


def test_hooks_run_during_grad_on_floats_and_on_values():
    x = Value(2.0)
    h = x * x
    out = h.exp()
    seen = []
    h.register_hook(lambda g: seen.append(g) or g * 2)
    (g,) = grad(out, [x])
    assert g.data == 2 * math.exp(4.0) * 4.0 and x.grad == 0.0 and h.grad == 0.0
    (g2,) = grad(out, [x], create_graph=True)
    assert isinstance(seen[1], Value) and g2.data == g.data
    assert seen[0] == math.exp(4.0)


def test_a_hook_on_a_leaf_and_a_hook_that_returns_a_wrong_type():
    x = Value(2.0, label="weight")
    x.register_hook(lambda g: "no")
    with pytest.raises(HookError, match="'weight'.*'no'"):
        (x * 3).backward()
    assert x.grad == 0.0  # a failed pass adds nothing


def test_a_hook_dies_with_its_node():
    from opgraph.hooks import HOOKS

    before = len(HOOKS)
    x = Value(1.0)
    x.register_hook(print)
    assert len(HOOKS) == before + 1
    del x
    assert len(HOOKS) == before


# --- an op whose derivative cannot be differentiated ----------------------------------------


class Hyperbolic:
    @hookimpl
    def register_ops(self, register):
        register(Op("cosh", math.cosh, lambda out, a: (math.sinh(a),)))
        # claims a value_derivative, but it only works on floats
        register(Op("sinh", math.sinh, lambda out, a: (math.cosh(a),),
                    value_derivative=lambda out, a: (math.cosh(a),)))  # fmt: skip
        register(Op("bad", math.sinh, lambda out, a: (1.0,), value_derivative=lambda o, a: ("x",)))


def test_an_op_without_value_derivative_works_once_and_refuses_twice():
    engine = Engine([Hyperbolic()], entry_points=False, name="hyper")
    x = engine.value(0.5, label="x")
    y = x.cosh() * x
    y.backward()
    assert math.isclose(x.grad, math.sinh(0.5) * 0.5 + math.cosh(0.5))
    assert math.isclose(grad(y, [x])[0].data, x.grad)
    with pytest.raises(NotDifferentiableError) as info:
        grad(y, [x], create_graph=True)
    message = str(info.value)
    assert "'cosh'" in message and "plugin" in message and "value_derivative" in message
    assert isinstance(info.value, OpgraphError)
    for name in ("sinh", "bad"):
        with pytest.raises(NotDifferentiableError, match=f"'{name}'.*value_derivative"):
            grad(getattr(x, name)(), [x], create_graph=True)
    # a branch that does not lead to the inputs is never differentiated
    z = engine.value(1.0)
    (g,) = grad(x * 2 + z.cosh(), [x], create_graph=True)
    assert g.data == 2.0


# --- the graph grad builds --------------------------------------------------------------------


def test_grad_nodes_are_ordinary_nodes_drawable_and_traced():
    pytest.importorskip("graphviz")
    from opgraph import draw_dot

    x = Value(0.5, label="x")
    (d,) = grad(x.tanh(), [x], create_graph=True)
    dot = draw_dot(d)
    assert "tanh" in dot.source and "x" in dot.source


def traced_tanh(name: str):
    """A traced engine's tracer, x and y = tanh(x), with the events so far drained, and a
    function that gives the events since as maps."""
    from opgraph.trace import Tracer, event_maps, records

    engine = Engine(name=name, entry_points=False)
    tracer = Tracer(engine)
    tracer.attach()
    x = engine.value(0.5, label="x")
    y = x.tanh()
    tracer.drain()
    return tracer, x, y, lambda: event_maps(records(tracer.drain()), 1, tracer.t0)


def test_grad_builds_traced_nodes():
    _, x, y, events_since = traced_tanh("traced-grad")
    (d,) = grad(y, [x], create_graph=True)
    events = events_since()
    ids = {e["id"] for e in events if e["type"] == "forward"}
    assert d.id in ids
    # the pass's nodes are one group for a viewer: the scope `grad`, inside the caller's
    scopes = {e.get("scope") for e in events if e["type"] == "forward" and e["op"]}
    assert "grad" in scopes and all(s.split("/")[0] == "grad" for s in scopes)  # (grad/sub ...)
    with opgraph.scope("newton"):
        (d2,) = grad(y, [x], create_graph=True)
    assert d2.scope.startswith("newton/grad") and y.scope == ""


def test_first_order_grad_results_are_not_traced_until_used():
    # An app that serves gradients: each result is a number the caller reads, not graph.
    tracer, x, y, events_since = traced_tanh("grad-service")
    results = [grad(y, [x])[0] for _ in range(100)]
    assert tracer.drain() == []  # 100 answers, no event
    assert results[0].data == pytest.approx(1 - math.tanh(0.5) ** 2)
    z = results[0] * 2  # used in traced work: then it is announced, with its data
    events = events_since()
    forwards = [e for e in events if e["type"] == "forward"]
    announced = {e["id"]: e for e in forwards}
    assert results[0].id in announced and z.id in announced
    assert announced[results[0].id]["data"] == results[0].data
    assert not {r.id for r in results[1:]} & set(announced)  # the other 99 never were


def test_compile_refuses_a_function_that_calls_grad_and_still_compiles_first_order():
    def derivative(x):
        return grad(x * x, [x])[0]

    with pytest.raises(CompileError, match="grad"):
        opgraph.compile(derivative, 1.0)
    compiled = opgraph.compile(lambda x: x * x, 3.0)
    assert compiled(3.0) == 9.0
    assert grad(Value(3.0) ** 2, [Value(1.0)])[0].data == 0.0  # grad works again afterwards


def test_grad_refuses_what_is_not_a_value_and_values_of_two_engines():
    other = Engine(name="other", entry_points=False)
    x = Value(1.0)
    with pytest.raises(TypeError, match="differentiates a Value"):
        grad(1.0, [x])
    with pytest.raises(TypeError, match="inputs must be Values"):
        grad(x * 2, [1.0])
    with pytest.raises(opgraph.EngineMismatchError):
        grad(x * 2, [other.value(1.0)])


def test_hooks_run_in_traced_and_anomaly_checking_passes():
    from opgraph import detect_anomaly
    from opgraph.trace import Tracer

    engine = Engine(name="hooked", entry_points=False)
    tracer = Tracer(engine)
    tracer.attach()
    x = engine.value(2.0)
    h = x * x
    h.register_hook(lambda g: g * 3)
    (h + 1).backward()
    assert h.grad == 3.0 and x.grad == 12.0
    tracer.detach()
    x.grad = h.grad = 0.0
    with detect_anomaly():
        (h + 1).backward()
    assert h.grad == 3.0 and x.grad == 12.0


def test_without_hooks_backward_takes_the_plain_chain_rule(monkeypatch):
    import weakref

    import opgraph.reverse

    monkeypatch.setattr(opgraph.reverse, "HOOKS", weakref.WeakKeyDictionary())  # none anywhere
    calls = []
    monkeypatch.setattr(opgraph.reverse, "_chain_rule_hooked", lambda order: calls.append(1))
    x = Value(2.0)
    (x * x).backward()
    assert x.grad == 4.0 and calls == []


@pytest.mark.parametrize("base", [2.0, 0.25])  # (a**b has no real slope in b for a < 0)
def test_a_zero_exponent_node_keeps_the_true_mixed_second_derivative(base):
    # d/db (d a**b / da) = d/db (b a**(b-1)) = a**(b-1) (1 + b ln a) = 1/a at b = 0. Masking
    # the base's slope to 0 at b = 0 (as PyTorch does) would give 0 here: a wrong number that
    # hypothesis's random graphs found against finite differences.
    a, b = Value(base), Value(0.0)
    (d_base,) = opgraph.grad(a**b, [a], create_graph=True)
    (mixed,) = opgraph.grad(d_base, [b])
    assert d_base.data == 0.0
    assert mixed.data == pytest.approx(1 / base, rel=1e-12)
    numeric = central_difference(lambda e: e * base ** (e - 1), [0.0], 0)
    assert mixed.data == pytest.approx(numeric, rel=1e-6)


def test_a_zero_base_and_zero_exponent_keep_pytorchs_zero_slope():
    a, b = Value(0.0), Value(0.0)
    (d_base,) = opgraph.grad(a**b, [a], create_graph=True)
    assert d_base.data == 0.0 and opgraph.grad(d_base, [b])[0].data == 0.0
