"""add, mul and pow as primitives; neg, sub and div composed from them.

Each register() call is one row of a table of derivatives: the op's name, its forward, its
local derivatives d out / d input (one per input), and micrograd's symbol for it (`_op`).
"""

import operator

from opgraph import Composite, Op, hookimpl
from opgraph.backward import add_derivative, mul_derivative

from .numerics import log, power


def pow_derivative(out: float, a: float, b: float) -> tuple[float, float]:
    # d(a**b)/da = b * a**(b-1); d(a**b)/db = a**b * ln a. As PyTorch does, a zero exponent
    # has zero slope in a, and a zero base with a non-negative exponent zero slope in b.
    d_base = 0.0 if b == 0 else b * power(a, b - 1)
    d_exponent = 0.0 if a == 0 and b >= 0 else out * log(a)
    return d_base, d_exponent


@hookimpl
def register_ops(register):
    # add_derivative is (1, 1) and mul_derivative (b, a): backward applies these two inline.
    register(Op("add", operator.add, add_derivative, symbol="+"))
    register(Op("mul", operator.mul, mul_derivative, symbol="*"))
    # static=(1,): a plain-number exponent is part of the op, so `x ** 2` has one parent.
    register(Op("pow", power, pow_derivative, static=(1,), symbol="**"))
    register(Composite("neg", lambda a: a * -1, symbol="-"))
    register(Composite("sub", lambda a, b: a + (-b), symbol="-"))
    register(Composite("div", lambda a, b: a * b**-1, symbol="/"))
