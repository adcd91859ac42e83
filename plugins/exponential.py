"""exp and log. The array kernels are the same on numpy arrays, for batched replay."""

from opgraph import Op, hookimpl

from .numerics import exp, log


def exp_array(a):
    import numpy as np

    return np.exp(a)  # inf on overflow, as `exp`


def log_array(a):
    import numpy as np

    return np.log(a)  # -inf at 0, nan below 0, as `log`


# d e^a / da = e^a, the output itself; d ln a / da = 1 / a (IEEE-754 on floats: +-inf at
# +-0). Inline partials work on floats, Values and arrays alike.
OPS = [
    Op("exp", exp, partials=("out",), array_forward=exp_array),
    Op("log", log, partials=("1 / a",), array_forward=log_array),
]


@hookimpl
def register_ops(register):
    for op in OPS:
        register(op)
