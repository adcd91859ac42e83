"""A plugin that registers `add`, which opgraph already has, without replace=True, and an op
of its own, `twice`: only `add` is left out (the first registration wins)."""

import operator

from opgraph import Op, hookimpl


@hookimpl
def register_ops(register):
    register(Op("add", operator.add, lambda out, a, b: (1.0, 1.0)))
    register(Op("twice", lambda x: 2.0 * x, partials=("2.0",)))
