"""The old home of the op contract, split into ops.py (the contract) and binding.py (the hot path).

Kept for graphs pickled before the split: a pickled node refers to its op through
`opgraph.registry._registered_op`. New code imports `Op` and `Composite` from `opgraph`.
"""

from .ops import Composite, Op, _registered_op

__all__ = ["Composite", "Op", "_registered_op"]
