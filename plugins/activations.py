"""The activation functions: tanh, relu, sigmoid.

The array kernels are the same on numpy arrays, for batched replay (relu's are the engine's
own, `opgraph.kernels`, which batched replay writes out); the derivatives of tanh and sigmoid
are written inline with the output, which works on floats, arrays and Values.
"""

import math

from opgraph import Op, hookimpl, kernels

from .numerics import exp


def sigmoid(a: float) -> float:
    # 1 / (1 + e^-a), written so that e^x never overflows for large |a|.
    if a >= 0:
        return 1.0 / (1.0 + exp(-a))
    e = exp(a)
    return e / (1.0 + e)


def tanh_array(a):
    import numpy as np

    return np.tanh(a)


def sigmoid_array(a):
    import numpy as np

    # `sigmoid` element by element: e = e^-|a| is e^-a for a >= 0 and e^a below.
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def d_relu_value(out, a):
    # relu's derivative on Values: a step, a constant wherever it is defined, so relu's second
    # derivative is 0 (as PyTorch's).
    return (float(a.data > 0),)


# tanh' = 1 - tanh^2 and sigmoid' = s (1 - s), written with the output, inline; relu's step
# is a branch, so a function (its symbol is micrograd's `_op`).
# fmt: off
OPS = [
    Op("tanh", math.tanh, partials=("1 - out * out",), array_forward=tanh_array),
    Op("relu", lambda a: 0.0 if a <= 0 else a, lambda out, a: (float(a > 0),), symbol="ReLU",
       array_forward=kernels.relu, array_derivative=kernels.relu_derivative,
       value_derivative=d_relu_value),
    Op("sigmoid", sigmoid, partials=("out * (1 - out)",), array_forward=sigmoid_array),
]
# fmt: on


@hookimpl
def register_ops(register):
    for op in OPS:
        register(op)
