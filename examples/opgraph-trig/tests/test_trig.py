"""opgraph-trig's tests, with the fixtures of opgraph's pytest plugin."""

import math

import pytest

from opgraph import NotDifferentiableError, grad


def test_sin(check_op):
    check_op("sin", domain=(-4, 4), order=2)  # first and second derivatives


def test_cos(check_op):
    check_op("cos", domain=(-4, 4), order=2)


def test_sin_to_the_fourth_derivative(opgraph_engine):
    x = opgraph_engine.value(0.5)
    out = x.sin()
    for expected in (math.cos, lambda a: -math.sin(a), lambda a: -math.cos(a), math.sin):
        (out,) = grad(out, [x], create_graph=True)
        assert out.data == pytest.approx(expected(0.5), rel=1e-12)


def test_atan2_is_differentiable_once(opgraph_engine):
    y, x = opgraph_engine.value(1.0), opgraph_engine.value(2.0)
    dy, dx = grad(y.atan2(x), [y, x])
    assert (dy.data, dx.data) == pytest.approx((0.4, -0.2))
    with pytest.raises(NotDifferentiableError, match="'atan2'.*plugin"):
        grad(y.atan2(x), [y, x], create_graph=True)


def test_atan2(check_op):
    # Every quadrant, away from the origin where the angle has no derivative.
    check_op("atan2", points=[(1, 2), (1, -2), (-1, 2), (-1, -2), (0.5, 0.1), (-3, 0.2)])
    check_op("atan2", domain=[(0.1, 3), (-3, 3)])


def test_softplus(check_op):
    check_op("softplus", domain=(-6, 6), order=2)  # a composite of twice-differentiable ops


def test_values(opgraph_engine):
    x = opgraph_engine.value(0.5)
    assert x.sin().data == math.sin(0.5)
    assert x.cos().data == math.cos(0.5)
    assert x.atan2(-1.0).data == math.atan2(0.5, -1.0)
    assert x.softplus().data == pytest.approx(math.log1p(math.exp(0.5)))


def test_atan2_origin_has_no_derivative(opgraph_engine):
    y, x = opgraph_engine.value(0.0), opgraph_engine.value(0.0)
    y.atan2(x).backward()
    assert math.isnan(y.grad) and math.isnan(x.grad)
