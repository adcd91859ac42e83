"""Trigonometric ops for opgraph: sin, cos and atan2 as primitives, softplus as a composite."""

import math

from opgraph import Composite, Op, hookimpl


def atan2_derivative(out, y, x):
    # atan2(y, x) is the angle of the point (x, y); with r^2 = x^2 + y^2,
    # d/dy = x / r^2 and d/dx = -y / r^2.
    r2 = x * x + y * y
    if r2 == 0:
        return math.nan, math.nan  # the angle has no derivative at the origin
    return x / r2, -y / r2


def softplus(a):
    """log(1 + e^a), a smooth relu."""
    # Built from opgraph's own ops: backward goes through exp, add and log.
    return (a.exp() + 1).log()


@hookimpl
def register_ops(register):
    # One row per op: name, forward, local derivatives d out / d input (one per input), and,
    # for sin and cos, the same derivatives on Values (value_derivative): written with the
    # ops themselves, they are nodes that can be differentiated again, to any order.
    register(
        Op(
            "sin",
            math.sin,
            lambda out, a: (math.cos(a),),
            value_derivative=lambda out, a: (a.cos(),),
        )
    )
    register(
        Op(
            "cos",
            math.cos,
            lambda out, a: (-math.sin(a),),
            value_derivative=lambda out, a: (-a.sin(),),
        )
    )
    # No value_derivative: atan2 is differentiable once; grad(..., create_graph=True)
    # through it raises NotDifferentiableError naming it.
    register(Op("atan2", math.atan2, atan2_derivative))
    register(Composite("softplus", softplus))
