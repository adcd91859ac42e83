"""exp and log. The array kernels are the same on numpy arrays, for batched replay."""

from opgraph import Op, hookimpl

from .numerics import exp, log, reciprocal


def exp_array(a):
    import numpy as np

    return np.exp(a)  # inf on overflow, as `exp`


def log_array(a):
    import numpy as np

    return np.log(a)  # -inf at 0, nan below 0, as `log`


def log_array_derivative(out, a):
    return (1.0 / a,)  # +-inf at +-0, as `reciprocal` (numpy's errors are silenced)


def d_exp(out, a):
    return (out,)  # d e^a / da = e^a, the output itself, on floats, arrays and Values


# d ln a / da = 1 / a; on Values (value_derivative) a ** -1, a node that can be differentiated
# again.
# fmt: off
OPS = [
    Op("exp", exp, d_exp, array_forward=exp_array, array_derivative=d_exp,
       value_derivative=d_exp),
    Op("log", log, lambda out, a: (reciprocal(a),),
       array_forward=log_array, array_derivative=log_array_derivative,
       value_derivative=lambda out, a: (a**-1,)),
]
# fmt: on


@hookimpl
def register_ops(register):
    for op in OPS:
        register(op)
