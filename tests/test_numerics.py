"""IEEE-754 numerics, anomaly detection, and bad operands."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import opgraph
from opgraph import AnomalyError, Op, Value, detect_anomaly, hookimpl, no_grad

inf, nan = math.inf, math.nan


def same(a: float, b: float) -> bool:
    """Equal as IEEE values: nan equals nan, and the sign of a zero or infinity counts."""
    if math.isnan(b):
        return math.isnan(a)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


# ---------------------------------------------------------------------------------------------
# IEEE-754 results instead of Python exceptions


@pytest.mark.parametrize(
    "expr, expected",
    [
        # overflow gives inf (Python raises OverflowError for most of these)
        (lambda: Value(1000.0).exp(), inf),
        (lambda: Value(10.0) ** 400, inf),
        (lambda: Value(-10.0) ** 401, -inf),
        (lambda: Value(10.0) ** Value(400.0), inf),
        (lambda: 2 ** Value(5000.0), inf),
        (lambda: Value(1e308) * 10, inf),
        (lambda: Value(-1e308) - 1e308, -inf),
        (lambda: Value(1e-300) ** -2, inf),
        # underflow gives 0
        (lambda: Value(-1000.0).exp(), 0.0),
        (lambda: Value(1e-300) ** 2, 0.0),
        # an invalid operation gives nan, never a complex number
        (lambda: Value(-2.0) ** 0.5, nan),
        (lambda: Value(-2.0) ** Value(0.5), nan),
        (lambda: Value(-10.0) ** 1000.5, nan),  # complex, and too large
        (lambda: Value(-1.0).log(), nan),
        (lambda: Value(inf) - inf, nan),
        (lambda: Value(0.0) * inf, nan),
        (lambda: Value(inf) / inf, nan),
        (lambda: Value(0.0) / 0.0, nan),
        # division by zero gives a signed infinity
        (lambda: 1 / Value(0.0), inf),
        (lambda: 1 / Value(-0.0), -inf),
        (lambda: -1 / Value(0.0), -inf),
        (lambda: Value(1.0) / 0, inf),
        (lambda: Value(0.0) ** -1, inf),
        (lambda: Value(-0.0) ** -1, -inf),
        (lambda: Value(0.0) ** -2, inf),
        (lambda: Value(0.0).log(), -inf),
        # nan and inf pass through the other ops
        (lambda: Value(nan).tanh(), nan),
        (lambda: Value(inf).tanh(), 1.0),
        (lambda: Value(-inf).sigmoid(), 0.0),
        (lambda: Value(inf).sigmoid(), 1.0),
        (lambda: Value(inf).relu(), inf),
        (lambda: Value(-inf).exp(), 0.0),
    ],
)
def test_ieee_results(expr, expected):
    out = expr()
    assert type(out.data) is float
    assert same(out.data, expected), f"got {out.data}, expected {expected}"


@pytest.mark.parametrize(
    "fn, x, expected_grad",
    [
        (lambda a: 1 / a, 0.0, -inf),  # d(1/a)/da = -1/a**2
        (lambda a: a.log(), 0.0, inf),
        (lambda a: a**0.5, 0.0, inf),
        (lambda a: a.exp(), 1000.0, inf),
        (lambda a: a.log(), -1.0, -1.0),  # 1/a, although log(-1) itself is nan
    ],
)
def test_backward_gives_ieee_gradients(fn, x, expected_grad):
    a = Value(x)
    fn(a).backward()
    assert same(a.grad, expected_grad), f"got {a.grad}"


any_float = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(a=any_float, b=any_float)
def test_pow_never_raises_nor_goes_complex(a, b):
    for out in [Value(a) ** b, Value(a) ** Value(b), a ** Value(b)]:
        assert type(out.data) is float
        out.backward()
        assert all(type(p.grad) is float for p in out._prev)
    if math.isfinite(a) and math.isfinite(b):
        try:
            expected = a**b
        except ZeroDivisionError:
            return  # covered by the poles above
        except OverflowError:
            assert math.isinf(out.data) or math.isnan(out.data)
            return
        if isinstance(expected, complex):
            assert math.isnan(out.data)
        else:
            assert same(out.data, expected)


@settings(max_examples=300, deadline=None)
@given(a=any_float, b=any_float)
def test_no_op_raises_on_any_float(a, b):
    x, y = Value(a), Value(b)
    outputs = [
        x + y, x - y, x * y, x / y, -x, x.exp(), x.log(), x.tanh(), x.relu(), x.sigmoid(),
        b / x, b - x,
    ]  # fmt: skip
    for out in outputs:
        assert type(out.data) is float
        out.backward()
    assert type(x.grad) is float and type(y.grad) is float


def test_huge_integers_overflow_to_inf():
    # int -> float conversion rounds to inf past the largest float, as IEEE-754 does.
    assert Value(10**400).data == inf
    assert Value(-(10**400)).data == -inf
    assert (Value(1.0) + 10**400).data == inf
    assert (Value(2.0) ** (10**400)).data == inf


# ---------------------------------------------------------------------------------------------
# detect_anomaly


def test_anomaly_in_forward_names_op_plugin_label_and_inputs():
    x = Value(0.0, label="x")
    with detect_anomaly():
        with pytest.raises(AnomalyError) as info:
            x.log()
    message = str(info.value)
    for part in ["'log'", "opgraph.plugins.exponential", "forward", "-inf", "'x'", "0.0"]:
        assert part in message, (part, message)


def test_anomaly_in_forward_for_binary_ops_names_every_input():
    a, b = Value(1.0, label="numerator"), Value(0.0, label="denominator")
    with detect_anomaly(), pytest.raises(AnomalyError) as info:
        a / b
    message = str(info.value)
    # a / b is a * b**-1: the pole is in pow, and its input is the labelled denominator
    assert "op 'pow' with b=-1" in message and "'denominator'" in message and "inf" in message


def test_anomaly_in_backward_names_op_plugin_node_and_inputs():
    x = Value(0.0, label="x")
    root = x**0.5  # finite forward (0), infinite slope at 0
    root.label = "root"
    with detect_anomaly():
        with pytest.raises(AnomalyError) as info:
            root.backward()
    message = str(info.value)
    for part in ["op 'pow' with b=0.5", "opgraph.plugins.arithmetic", "backward", "'root'", "'x'"]:
        assert part in message, (part, message)


def test_anomaly_detection_off_by_default():
    x = Value(0.0)
    y = x.log()
    (x**0.5).backward()
    assert y.data == -inf and x.grad == inf


def test_anomaly_detection_can_be_switched_off_inside():
    with detect_anomaly():
        with detect_anomaly(False):
            assert Value(-1.0).log().data != Value(-1.0).log().data  # nan
        with pytest.raises(AnomalyError):
            Value(-1.0).log()


def test_anomaly_detection_keeps_results_when_finite():
    with detect_anomaly():
        x = Value(0.7)
        y = (x * x).tanh() + x.exp() / x
        y.backward()
    reference = Value(0.7)
    expected = (reference * reference).tanh() + reference.exp() / reference
    expected.backward()
    assert y.data == expected.data
    assert x.grad == reference.grad


def test_anomaly_detection_also_applies_under_no_grad():
    with detect_anomaly(), no_grad(), pytest.raises(AnomalyError):
        Value(1000.0).exp()


def test_engine_option_detects_anomalies():
    engine = opgraph.Engine(entry_points=False, detect_anomaly=True, name="careful")
    assert engine.detect_anomaly
    with pytest.raises(AnomalyError, match=r"'exp'.*'big'"):
        engine.value(1000.0, label="big").exp()
    x = engine.value(0.0, label="x")
    y = x**0.5
    with pytest.raises(AnomalyError, match="backward"):
        y.backward()
    # the default engine is untouched
    assert Value(1000.0).exp().data == inf


def test_engine_option_can_be_switched():
    engine = opgraph.Engine(entry_points=False)
    assert engine.value(-1.0).log().data != 0  # nan, silently
    engine.detect_anomaly = True
    with pytest.raises(AnomalyError):
        engine.value(-1.0).log()
    engine.detect_anomaly = False
    assert math.isnan(engine.value(-1.0).log().data)


def test_anomaly_in_a_plugin_op_names_the_plugin():
    class Risky:
        @hookimpl
        def register_ops(register):
            register(Op("inverse", lambda a: 1 / a if a else inf, lambda out, a: (-out * out,)))

    engine = opgraph.Engine(plugins=[Risky], entry_points=False)
    with detect_anomaly(), pytest.raises(AnomalyError, match=r"'inverse'.*'Risky'.*'w'"):
        engine.value(0.0, label="w").inverse()


def test_anomaly_error_is_a_floating_point_error():
    assert issubclass(AnomalyError, FloatingPointError)
    assert issubclass(AnomalyError, opgraph.OpgraphError)


# ---------------------------------------------------------------------------------------------
# Non-numeric operands


@pytest.mark.parametrize(
    "data, shown", [(None, "NoneType"), ("1.5", "str"), ([1.0], "list"), (1 + 2j, "complex")]
)
def test_value_of_a_non_number(data, shown):
    with pytest.raises(TypeError, match=f"real number, got {shown}"):
        Value(data)


def test_value_of_a_value_says_to_use_it_directly():
    with pytest.raises(TypeError, match="use it directly"):
        Value(Value(1.0))


def test_label_must_be_a_string():
    a = Value(1.0)
    with pytest.raises(TypeError, match="label must be a str.*new ops come from plugins"):
        Value(2.0, (a,), "tanh")  # micrograd's internal constructor form
    with pytest.raises(TypeError, match="label must be a str, got int"):
        a.label = 3
    assert a.label == ""


def test_value_accepts_any_real_number():
    assert Value(Fraction(1, 4)).data == 0.25
    assert Value(True).data == 1.0
    assert Value(7).data == 7.0
    with pytest.raises(TypeError, match="Decimal"):
        Value(Decimal("1.5"))  # not a numbers.Real


@pytest.mark.parametrize(
    "combine, op",
    [
        (lambda v: v + "a", "add"),
        (lambda v: "a" + v, "add"),
        (lambda v: v * None, "mul"),
        (lambda v: [1] * v, "mul"),
        (lambda v: v ** "2", "pow"),
        (lambda v: v - "a", "sub"),
        (lambda v: "a" / v, "div"),
        (lambda v: v / (1 + 2j), "div"),
    ],
)
def test_non_numeric_operands(combine, op):
    with pytest.raises(TypeError) as info:
        combine(Value(1.0))
    message = str(info.value)
    assert f"op '{op}'" in message, message
    assert "operands must be Values or real numbers" in message


def test_a_failed_backward_leaves_every_grad_as_it_was():
    # A training loop that skips a bad minibatch must keep the gradients it has collected.
    w = Value(0.0, label="w")
    (w * 3 + 1).backward()  # a good example: w.grad = 3
    bad = (w * 1.0) ** 0.5  # sqrt(0): infinite slope
    with detect_anomaly(), pytest.raises(AnomalyError):
        bad.backward()
    assert w.grad == 3.0
    assert all(node.grad == 0.0 for node in opgraph.topological_order(bad) if node is not w)
