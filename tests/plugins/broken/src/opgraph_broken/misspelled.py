"""A plugin whose hook name is misspelled: register_op instead of register_ops."""

from opgraph import Op, hookimpl


@hookimpl
def register_op(register):
    register(Op("square", lambda a: a * a, lambda out, a: (2 * a,)))
