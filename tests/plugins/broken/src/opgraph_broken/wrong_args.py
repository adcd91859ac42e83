"""A plugin whose hook function names its argument wrongly: reg instead of register."""

from opgraph import Op, hookimpl


@hookimpl
def register_ops(reg):
    reg(Op("square", lambda a: a * a, lambda out, a: (2 * a,)))
