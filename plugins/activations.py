"""The activation functions: tanh, relu, sigmoid.

The array kernels are the same on numpy arrays, for batched replay; the derivatives of tanh
and sigmoid, written with the output, work on arrays and on Values as they are.
"""

import math

from opgraph import Op, hookimpl

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


def relu_array(a):
    import numpy as np

    return np.where(a <= 0, 0.0, a)  # as `relu`: nan stays nan, -0.0 becomes 0.0


def relu_array_derivative(out, a):
    return ((a > 0) * 1.0,)


def sigmoid_array(a):
    import numpy as np

    # `sigmoid` element by element: e = e^-|a| is e^-a for a >= 0 and e^a below.
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def d_tanh(out, a):
    return (1.0 - out * out,)  # 1 - tanh(a)^2, on floats and arrays alike


def d_sigmoid(out, a):
    return (out * (1.0 - out),)  # s(a) (1 - s(a)), on floats and arrays alike


def d_relu_value(out, a):
    # relu's derivative on Values: a step, a constant wherever it is defined, so relu's second
    # derivative is 0 (as PyTorch's).
    return (float(a.data > 0),)


# relu's symbol is micrograd's `_op`; tanh and sigmoid are written as their names. d_tanh and
# d_sigmoid work on Values too, so they are their own value_derivative.
# fmt: off
OPS = [
    Op("tanh", math.tanh, d_tanh, array_forward=tanh_array, array_derivative=d_tanh,
       value_derivative=d_tanh),
    Op("relu", lambda a: 0.0 if a <= 0 else a, lambda out, a: (float(a > 0),), symbol="ReLU",
       array_forward=relu_array, array_derivative=relu_array_derivative,
       value_derivative=d_relu_value),
    Op("sigmoid", sigmoid, d_sigmoid, array_forward=sigmoid_array, array_derivative=d_sigmoid,
       value_derivative=d_sigmoid),
]
# fmt: on


@hookimpl
def register_ops(register):
    for op in OPS:
        register(op)
