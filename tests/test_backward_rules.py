"""The backward pass writes out the partials of an op that gives them inline (the built-in
add's `("1", "1")` and mul's `("b", "a")`), a speed-up: it must give exactly, bit for bit,
what calling a derivative function with the same partials gives. `rule=`, which these rows
used to declare, is refused with what to write instead."""

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

# The same add and mul with derivative functions: the backward pass calls them.
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
    assert builtin["add"].partials.texts == ("1", "1")
    assert builtin["mul"].partials.texts == ("b", "a")
    called = CALLED.ops.definitions
    assert called["add"].partials is None and called["mul"].partials is None


def test_the_builtin_plugins_import_only_the_public_api():
    """They are written as a third-party plugin would be: `opgraph` and their own package."""
    import ast
    from pathlib import Path

    import opgraph.plugins

    for path in Path(opgraph.plugins.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("opgraph."), (path.name, node.module)


@pytest.mark.parametrize("rule", ["sum", "product", "products", ["product"]])
def test_rule_is_refused_saying_which_partials_to_write(rule):
    old = plugin("old_rules", Op("times", operator.mul, lambda out, a, b: (b, a), rule=rule))
    with pytest.raises(
        opgraph.PluginError,
        match=r"plugin 'old_rules', op 'times': rule= is gone.*partials=\('b', 'a'\)",
    ):
        Engine(plugins=[old], entry_points=False)


@pytest.mark.parametrize(
    "op, problem",
    [
        (Op("m", operator.mul, lambda out, a, b: (b, a), partials=("b", "a")), "derivative"),
        (Op("m", operator.mul, partials=("b", "a"), value_derivative=max), "value_derivative"),
        (Op("m", operator.mul, partials=("b", "a"), array_derivative=max), "array_derivative"),
    ],
)
def test_inline_partials_and_a_derivative_function_are_one_or_the_other(op, problem):
    with pytest.raises(
        opgraph.PluginError, match=rf"op 'm': gives both inline partials and {problem}"
    ):
        Engine(plugins=[plugin("both", op)], entry_points=False)


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
    """A third-party op with add's or mul's inline partials gets the same written-out chain
    rule, and the right gradients."""
    e = Engine(
        plugins=[
            plugin(
                "reuse",
                Op("plus", lambda a, b: a + b, partials=("1", "1")),
                Op("times", lambda x, y: x * y, partials=("y", "x")),
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


# --- compiled replay writes the same partials into its source -----------------------------------

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
