"""The backward pass applies the chain rule of an op that declares `rule="sum"` or
`rule="product"` (the built-in add and mul) inline, a speed-up: it must give exactly, bit for
bit, what calling their derivatives gives, and registration refuses a false declaration."""

from __future__ import annotations

import math
import operator

import pytest
from conftest import plugin
from dags import OPS, programs, run
from fdcheck import assert_gradients_close, numeric_gradient
from hypothesis import given, settings
from hypothesis import strategies as st

import opgraph
from opgraph import Engine, Op, Value

# The same add and mul, declaring no rule: the backward pass calls their derivatives.
CALLED = Engine(
    plugins=[
        plugin(
            "called_rules",
            Op("add", operator.add, lambda out, a, b: (1.0, 1.0)),
            Op("mul", operator.mul, lambda out, a, b: (b, a)),
            replace=True,
        )
    ],
    entry_points=False,
)


def same_bits(x: float, y: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return x == y and math.copysign(1.0, x) == math.copysign(1.0, y)


def test_the_builtin_ops_use_the_inline_rules_and_the_other_engine_does_not():
    builtin = Value._ops.definitions
    assert (builtin["add"].rule, builtin["mul"].rule) == ("sum", "product")
    assert {op.rule for op in CALLED.ops.definitions.values() if hasattr(op, "rule")} == {""}


def test_the_builtin_plugins_import_only_the_public_api():
    """They are written as a third-party plugin would be: `opgraph` and their own package."""
    import ast
    from pathlib import Path

    import opgraph.plugins

    for path in Path(opgraph.plugins.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("opgraph."), (path.name, node.module)


@pytest.mark.parametrize(
    "rule, derivative",
    [
        ("product", lambda out, a, b: (a, b)),  # swapped: d(a * b)/da is b, not a
        ("sum", lambda out, a, b: (1.0, -1.0)),  # subtraction's partials
        ("product", lambda out, a, b: (b, 1.0)),  # right at a = 1 only
        ("product", lambda out, a, b: 1 / 0),  # a derivative that fails
    ],
)
def test_a_rule_the_derivative_does_not_follow_is_refused_naming_op_and_plugin(rule, derivative):
    liar = plugin("liars", Op("times", operator.mul, derivative, rule=rule))
    with pytest.raises(opgraph.PluginError, match=rf"plugin 'liars', op 'times'.*rule='{rule}'"):
        Engine(plugins=[liar], entry_points=False)


@pytest.mark.parametrize(
    "op, problem",
    [
        (Op("twice", lambda a: 2 * a, lambda out, a: (2.0,), rule="sum"), "binary op"),
        (Op("p", pow, lambda out, a, b: (b, a), rule="product", static=(1,)), "static"),
        (Op("m", operator.mul, lambda out, a, b: (b, a), rule="products"), "one of"),
        (Op("m", operator.mul, lambda out, a, b: (b, a), rule=["product"]), "one of"),
    ],
)
def test_a_rule_on_the_wrong_kind_of_op_is_refused(op, problem):
    with pytest.raises(opgraph.PluginError, match=problem):
        Engine(plugins=[plugin("rules", op)], entry_points=False)


@settings(max_examples=150, deadline=None)
@given(
    program=programs(),
    scale=st.sampled_from([1.0, -1e-300, 1e200, 0.0]),
    gradient=st.sampled_from([1.0, -0.0, 3.5, math.inf]),
)
def test_inline_rules_give_the_called_rules_bit_for_bit(program, scale, gradient):
    """Every node's grad, after two backward passes (accumulation), with leaves scaled to
    reach zeros, signed zeros, overflow and nan: identical on both engines."""
    leaves = [x * scale for x in program.leaves]
    inline = run(program, Value, leaves=leaves)
    called = run(program, CALLED.value, leaves=leaves)
    for built in (inline, called):
        built.output.backward(gradient)
        built.output.backward(gradient)
    for a, b in zip(inline.nodes, called.nodes, strict=True):
        assert same_bits(a.data, b.data), (program, a, b)
        assert same_bits(a.grad, b.grad), (program, a, b)


def test_a_plugin_op_may_reuse_the_inline_rules():
    """A third-party op that declares rule="sum" or rule="product" gets the inline chain rule
    too, and the right gradients."""
    e = Engine(
        plugins=[
            plugin(
                "reuse",
                Op("plus", lambda a, b: a + b, lambda out, a, b: (1.0, 1.0), rule="sum"),
                Op("times", lambda a, b: a * b, lambda out, a, b: (b, a), rule="product"),
            )
        ],
        entry_points=False,
    )

    def f(x, y, z):
        return e.ops.times(e.ops.plus(x, y), e.ops.times(y, z)).tanh()

    point = [0.3, -0.7, 1.1]
    leaves = [e.value(x) for x in point]
    f(*leaves).backward()
    numeric = numeric_gradient(lambda *xs: f(*map(e.value, xs)).data, point)
    assert_gradients_close([v.grad for v in leaves], numeric, scale=1.0, what="plus/times")


def test_inline_rules_on_a_shared_node():
    """`x * x + x`: the node x collects both of mul's partials and add's 1."""
    x = Value(3.0)
    y = x * x + x
    y.backward()
    assert x.grad == 2 * 3.0 + 1


# --- compiled replay writes the same rules into its source -------------------------------------

NO_RELU = {name: op for name, op in OPS.items() if name != "relu"}  # relu's input is read


@settings(max_examples=40, deadline=None)
@given(program=programs(ops=NO_RELU, max_steps=8), scale=st.sampled_from([1.0, 1e200, 0.0]))
def test_compiled_gradients_are_eager_gradients_bit_for_bit(program, scale):
    leaves = [x * scale for x in program.leaves]
    eager = run(program, Value, ops=NO_RELU, leaves=leaves)
    eager.output.backward()
    compiled = opgraph.compile(
        lambda *xs: run(program, lambda x: x, ops=NO_RELU, leaves=xs).output, *leaves
    )
    assert same_bits(compiled(*leaves), eager.output.data)
    compiled.backward()
    for leaf, grad in zip(eager.nodes, compiled.input_grads, strict=False):
        assert same_bits(leaf.grad, grad), (program, leaf, grad)


def test_compiled_inline_mul_reports_a_non_finite_gradient():
    a = Value(1e300, label="a")
    compiled = opgraph.compile(lambda x: x * a + x, 1.5)
    with opgraph.detect_anomaly():
        assert compiled(1.5) == 1.5e300
        with pytest.raises(opgraph.AnomalyError, match=r"op 'mul'.*partial 1e\+300, grad inf"):
            compiled.backward(1e10)
