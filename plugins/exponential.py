"""exp and log."""

from opgraph import Op, hookimpl

from .numerics import exp, log, reciprocal


@hookimpl
def register_ops(register):
    register(Op("exp", exp, lambda out, a: (out,)))  # d e^a / da = e^a, the output itself
    register(Op("log", log, lambda out, a: (reciprocal(a),)))
