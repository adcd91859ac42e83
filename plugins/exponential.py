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


# d e^a / da = e^a, the output itself; d ln a / da = 1 / a.
# fmt: off
OPS = [
    Op("exp", exp, lambda out, a: (out,),
       array_forward=exp_array, array_derivative=lambda out, a: (out,)),
    Op("log", log, lambda out, a: (reciprocal(a),),
       array_forward=log_array, array_derivative=log_array_derivative),
]
# fmt: on


@hookimpl
def register_ops(register):
    for op in OPS:
        register(op)
