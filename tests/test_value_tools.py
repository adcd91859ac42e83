"""What a learner and a plugin author reach for: `_backward()`, `dir()` and tab completion,
`help()` and signatures of plugin-op methods, and an op's name, symbol and `_op` string."""

from __future__ import annotations

import inspect
import math
import os
import pydoc
import subprocess
import sys

import pytest
from conftest import plugin

from opgraph import Composite, Engine, Op, OpError, PluginError, Value


def gelu(a: float) -> float:
    """The Gaussian error linear unit, a * Phi(a)."""
    return 0.5 * a * (1.0 + math.erf(a / math.sqrt(2.0)))


def gelu_derivative(out: float, a: float) -> tuple[float]:
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    return (out / a + a * phi if a else 0.5,)


def clip(a: float, lo: float, hi: float) -> float:
    return min(max(a, lo), hi)


def clip_derivative(out: float, a: float, lo: float, hi: float) -> tuple[float, float, float]:
    if math.isnan(a):
        raise ValueError("clip has no slope at nan")
    return (float(lo < a < hi), float(a <= lo), float(a >= hi))


TOOLS = [
    Op("gelu", gelu, gelu_derivative),
    Op("atan2", math.atan2, lambda out, y, x: (x / (x * x + y * y), -y / (x * x + y * y))),
    Op("clip", clip, clip_derivative, static=(1, 2)),
    Op("mean3", lambda *xs: sum(xs) / 3, lambda out, *xs: (1 / 3,) * 3, arity=3, symbol="μ"),
    Composite("double", lambda a: a + a, doc="Twice the value."),
]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(plugins=[plugin("tools", *TOOLS)], entry_points=False)


# ---------------------------------------------------------------------------------------------
# Value._backward(): one node's own step of the chain rule


def test_backward_step_adds_local_derivative_times_grad_to_each_parent_only():
    a, b = Value(2.0, label="a"), Value(-3.0, label="b")
    e = a * b
    L = e.tanh()
    L.grad = 1.0
    L._backward()
    assert e.grad == pytest.approx(1 - L.data**2)
    assert a.grad == b.grad == 0.0  # one step: the grandparents wait for e._backward()
    e._backward()
    assert (a.grad, b.grad) == (pytest.approx(-3.0 * e.grad), pytest.approx(2.0 * e.grad))
    e._backward()  # accumulates, as micrograd's closure does
    assert a.grad == pytest.approx(-6.0 * e.grad)


def test_backward_step_of_a_fixed_exponent_and_of_plugin_ops(engine):
    x = Value(3.0, label="x")
    y = x**2
    y.grad = 2.0
    y._backward()
    assert y._prev == (x,) and x.grad == 12.0  # 2x * grad

    a, b, c = (engine.value(v) for v in (1.0, 2.0, 6.0))
    m = a.mean3(b, c)
    m.grad = 3.0
    m._backward()
    assert [p.grad for p in (a, b, c)] == [pytest.approx(1.0)] * 3


def test_backward_step_matches_a_full_backward_node_by_node(engine):
    x, y = engine.value(0.7, label="x"), engine.value(-1.2, label="y")
    out = (x.atan2(y) * x.gelu() + x.clip(0, 0.5)).tanh() ** 3
    out.backward()
    expected = {node: node.grad for node in (x, y)}
    out.zero_grad()
    from opgraph import topological_order

    out.grad = 1.0
    for node in reversed(topological_order(out)):
        node._backward()
    assert x.grad == pytest.approx(expected[x], rel=1e-12)
    assert y.grad == pytest.approx(expected[y], rel=1e-12)


def test_backward_step_errors_as_backward_reports_them_and_change_nothing():
    def broken(out, a, b):
        raise ZeroDivisionError("float division by zero")

    engine = Engine(
        plugins=[
            plugin(
                "tools",
                Op("ratio", lambda a, b: a / b, broken),
                # one partial short, past the point (0.5, 0.5) where registering probes it
                Op("short", lambda a, b: a - b, lambda out, a, b: (1.0,) if a > 0.9 else (1, -1)),
            )
        ],
        entry_points=False,
    )
    a, b = engine.value(1.0, label="a"), engine.value(2.0, label="b")
    r = a.ratio(b)
    r.label = "r"
    r.grad = 1.0
    with pytest.raises(OpError) as info:
        r._backward()
    message = str(info.value)
    for part in ["op 'ratio'", "plugin 'tools'", "backward", "node 'r'", "ZeroDivisionError"]:
        assert part in message, (part, message)
    with pytest.raises(OpError, match=r"op 'short'.*derivative must return 2 partial"):
        a.short(b)._backward()
    assert a.grad == b.grad == 0.0


def test_leaf_backward_step_does_nothing():
    x = Value(1.5)
    x.grad = 2.0
    x._backward()
    assert x.grad == 2.0


# ---------------------------------------------------------------------------------------------
# dir() and tab completion on a learner's first line


def run_fresh(code: str) -> str:
    """Run `code` in a fresh interpreter (no default engine yet); its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPGRAPH")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_dir_and_tab_completion_work_before_the_first_op():
    out = run_fresh(
        "import rlcompleter\n"
        "from opgraph import Value\n"
        "x = Value(1.0)\n"
        "names = dir(x)\n"
        "print('tanh' in names, 'add' in names, 'backward' in names, 'grad' in names)\n"
        "print(rlcompleter.Completer({'x': Value(2.0)}).complete('x.ta', 0))\n"
        "print('mul' in Value._ops, sorted(Value._ops)[:2])\n"
    )
    assert out.splitlines() == ["True True True True", "x.tanh()", "True ['add', 'div']"]


def test_dir_lists_an_engines_plugin_ops(engine):
    names = dir(engine.value(1.0))
    assert {"gelu", "atan2", "clip", "mean3", "double", "tanh", "data"} <= set(names)
    assert names == sorted(names)


# ---------------------------------------------------------------------------------------------
# Plugin ops as methods: name, doc, signature, arguments counted as written


def test_help_on_a_plugin_op_method_shows_the_op(engine):
    x = engine.value(0.5)
    text = pydoc.render_doc(x.gelu, renderer=pydoc.plaintext)
    assert "gelu" in text and "Gaussian error linear unit" in text
    assert "partial" not in text
    assert x.gelu.__name__ == "gelu" and x.gelu.__doc__.startswith("The Gaussian")
    assert x.double.__doc__ == "Twice the value."
    assert repr(x.gelu).startswith("<bound method Value.gelu of Value(data=0.5")


def test_signatures_show_the_arguments_after_the_value(engine):
    x = engine.value(0.5)
    assert str(inspect.signature(x.gelu)) == "()"
    assert str(inspect.signature(x.atan2)) == "(x, /)"  # math.atan2(y, x): y is the value
    assert str(inspect.signature(x.clip)) == "(lo, hi, /)"
    assert str(inspect.signature(x.mean3)) == "(x2, x3, /)"  # forward takes *xs: numbered
    assert str(inspect.signature(engine.ops.clip)) == "(a, lo, hi, /)"
    assert engine.ops.clip.__name__ == "clip"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: x.gelu(1, 2), "gelu() takes no arguments besides the value, got 2"),
        (lambda x: x.atan2(), "atan2() takes 1 argument besides the value, got 0"),
        (lambda x: x.atan2(1, 2), "atan2() takes 1 argument besides the value, got 2"),
        (lambda x: x.clip(0), "clip() takes 2 arguments besides the value, got 1"),
        (lambda x: x.double(x), "double() takes no arguments besides the value, got 1"),
    ],
)
def test_wrong_argument_counts_are_counted_as_the_user_wrote_them(engine, call, message):
    x = engine.value(0.5)
    with pytest.raises(TypeError) as info:
        call(x)
    assert str(info.value) == message


def test_plugin_op_methods_compute_and_are_made_once_per_bound_op(engine):
    x, y = engine.value(1.0), engine.value(-2.0)
    assert x.atan2(y).data == math.atan2(1.0, -2.0)
    assert x.clip(0, 0.5).data == 0.5 and x.clip(0, 0.5)._prev == (x,)
    assert x.double().data == 2.0 and x.mean3(y, 4).data == 1.0
    assert x.gelu.__func__ is y.gelu.__func__


def test_methods_follow_the_op_table_when_plugins_change():
    engine = Engine(
        plugins=[plugin("tools", Op("gelu", gelu, gelu_derivative))], entry_points=False
    )
    x = engine.value(1.0)
    first = x.gelu
    engine.register(plugin("more", Op("twice", lambda a: 2 * a, lambda out, a: (2.0,))))
    assert x.twice().data == 2.0 and x.gelu().data == pytest.approx(gelu(1.0))
    assert x.gelu.__func__ is not first.__func__  # the new table's gelu


def test_unknown_and_private_attributes_raise_attribute_error():
    x = Value(1.0)
    with pytest.raises(AttributeError, match="no plugin registers an op of that name"):
        getattr(x, "sine")  # noqa: B009
    with pytest.raises(AttributeError, match="'Value' object has no attribute '_forward'"):
        getattr(x, "_forward")  # noqa: B009
    with pytest.raises(AttributeError, match="'Value' object has no attribute 'definitions'"):
        getattr(x, "definitions")  # noqa: B009 (the op table's own attribute is no op)
    assert not hasattr(x, "__array__")  # numpy and others probe for such hooks


# ---------------------------------------------------------------------------------------------
# name, symbol and _op


def test_an_ops_symbol_defaults_to_its_name_and_makes_its_op_string(engine):
    definitions = engine.ops.definitions
    assert definitions["gelu"].symbol == "gelu" and definitions["mean3"].symbol == "μ"
    x = engine.value(0.3)
    assert x.gelu()._op == "gelu" and x.mean3(1, 2)._op == "μ"
    # a symbol that is a word is followed by a space before its fixed arguments
    assert x.clip(0, 1)._op == "clip 0 1" and x.clip(-0.5, 2.25)._op == "clip -0.5 2.25"
    assert x.clip(0, 1).op.name == "clip"


def test_builtin_names_symbols_and_op_strings():
    ops = Value(1.0).engine.ops.definitions
    symbols = {name: op.symbol for name, op in ops.items()}
    assert symbols == {
        "add": "+",
        "mul": "*",
        "pow": "**",
        "neg": "-",
        "sub": "-",
        "div": "/",
        "exp": "exp",
        "log": "log",
        "tanh": "tanh",
        "relu": "ReLU",
        "sigmoid": "sigmoid",
    }
    x = Value(2.0)
    assert [(x**k)._op for k in (2, -1, 0.5, 1e20)] == ["**2", "**-1", "**0.5", "**1e+20"]
    assert (x ** Value(3.0))._op == "**"
    assert [v._op for v in (x + 1, x * 2, -x, x - 1, x / 2)] == ["+", "*", "*", "+", "*"]


@pytest.mark.parametrize("symbol", [" ", "\n", "a\tb", 5, "x" * 21])
def test_a_bad_symbol_is_rejected_naming_plugin_and_op(symbol):
    with pytest.raises(PluginError, match=r"plugin 'tools', op 'gelu': symbol must be"):
        Engine(plugins=[plugin("tools", Op("gelu", gelu, gelu_derivative, symbol=symbol))])


def test_errors_name_the_op_and_its_fixed_arguments_apart(engine):
    from opgraph import detect_anomaly

    x = engine.value(0.0, label="x")
    with detect_anomaly(), pytest.raises(Exception) as info:
        x**-1
    assert "op 'pow' with b=-1 (plugin 'opgraph.plugins.arithmetic')" in str(info.value)
    with pytest.raises(OpError, match=r"op 'clip' with lo=0, hi=1 \(plugin 'tools'\) failed"):
        engine.value(math.nan, label="y").clip(0, 1).gelu().backward()
