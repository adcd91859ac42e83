"""add, mul and pow as primitives; neg, sub and div composed from them.

Each row of OPS is one row of a table of derivatives: the op's name, its forward, its local
derivatives d out / d input (one per input), and micrograd's symbol for it (`_op`). add's and
mul's partials are written inline, over the forward's parameters `a` and `b` (operator.add
takes `a, b`): from them opgraph derives their derivative on floats, Values and arrays, and
the lines every backward pass writes out. pow's derivative branches at its edge cases, so it
is a function, with `pow_value_derivative`, the same on Values, which makes it differentiable
to any order (docs/higher-order.md), and array kernels for batched replay (numpy is imported
only when they run).
"""

import operator

from opgraph import Composite, Op, Value, hookimpl

from .numerics import log, power


def pow_derivative(out: float, a: float, b: float) -> tuple[float, float]:
    # d(a**b)/da = b * a**(b-1); d(a**b)/db = a**b * ln a. As PyTorch does, a zero exponent
    # has zero slope in a, and a zero base with a non-negative exponent zero slope in b.
    d_base = 0.0 if b == 0 else b * power(a, b - 1)
    d_exponent = 0.0 if a == 0 and b >= 0 else out * log(a)
    return d_base, d_exponent


def pow_value_derivative(out, a, b):
    # pow_derivative on Values (b stays a plain number when the exponent is fixed, `x ** 2`),
    # so that its partials are nodes that can be differentiated again. The edge cases branch
    # on the numbers, as PyTorch's `where` does: a partial set to 0 there has derivative 0.
    # A zero exponent that is a node keeps b * a**(b-1) wherever it is finite (a != 0): its
    # value is 0 there too, and its slope in b, 1/a, is the true one (PyTorch masks it to 0).
    exponent = b.data if isinstance(b, Value) else b
    masked = exponent == 0 and (not isinstance(b, Value) or a.data == 0)
    d_base = 0.0 if masked else b * a ** (b - 1)
    if not isinstance(b, Value) or (a.data == 0 and exponent >= 0):
        d_exponent = 0.0  # a fixed exponent has no partial (with_constants drops it)
    else:
        d_exponent = out * a.log()
    return d_base, d_exponent


def pow_array(a, b):
    import numpy as np

    return np.power(a, b)  # IEEE-754 pow, as `power`


def pow_array_derivative(out, a, b):
    import numpy as np

    # pow_derivative element by element; np.log is IEEE-754 log (-inf at 0, nan below).
    d_base = np.where(b == 0, 0.0, b * np.power(a, b - 1.0))
    d_exponent = np.where((a == 0) & (b >= 0), 0.0, out * np.log(a))
    return d_base, d_exponent


# static=(1,): a plain-number exponent is part of the op, so `x ** 2` has one parent.
# fmt: off
OPS = [
    Op("add", operator.add, partials=("1", "1"), symbol="+"),
    Op("mul", operator.mul, partials=("b", "a"), symbol="*"),
    Op("pow", power, pow_derivative, symbol="**", static=(1,),
       array_forward=pow_array, array_derivative=pow_array_derivative,
       value_derivative=pow_value_derivative),
    Composite("neg", lambda a: a * -1, symbol="-"),
    Composite("sub", lambda a, b: a + (-b), symbol="-"),
    Composite("div", lambda a, b: a * b**-1, symbol="/"),
]
# fmt: on


@hookimpl
def register_ops(register):
    for op in OPS:
        register(op)
