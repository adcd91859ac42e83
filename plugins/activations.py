"""The activation functions: tanh, relu, sigmoid."""

import math

from opgraph import Op, hookimpl

from .numerics import exp


def sigmoid(a: float) -> float:
    # 1 / (1 + e^-a), written so that e^x never overflows for large |a|.
    if a >= 0:
        return 1.0 / (1.0 + exp(-a))
    e = exp(a)
    return e / (1.0 + e)


@hookimpl
def register_ops(register):
    register(Op("tanh", math.tanh, lambda out, a: (1.0 - out * out,)))
    # symbol: micrograd's `_op` for relu is "ReLU"; tanh, exp and sigmoid are their names
    register(
        Op("relu", lambda a: 0.0 if a <= 0 else a, lambda out, a: (float(a > 0),), symbol="ReLU")
    )
    register(Op("sigmoid", sigmoid, lambda out, a: (out * (1.0 - out),)))
