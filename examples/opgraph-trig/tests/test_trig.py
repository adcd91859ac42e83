"""opgraph-trig's tests, with the fixtures of opgraph's pytest plugin."""

import math

import pytest


def test_sin(check_op):
    check_op("sin", domain=(-4, 4))


def test_cos(check_op):
    check_op("cos", domain=(-4, 4))


def test_atan2(check_op):
    # Every quadrant, away from the origin where the angle has no derivative.
    check_op("atan2", points=[(1, 2), (1, -2), (-1, 2), (-1, -2), (0.5, 0.1), (-3, 0.2)])
    check_op("atan2", domain=[(0.1, 3), (-3, 3)])


def test_softplus(check_op):
    check_op("softplus", domain=(-6, 6))


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
