"""Array kernels that batched replay writes out instead of calling.

An op plugin gives batched replay its `array_forward` and `array_derivative` (ops.py). Most
are called, once per group of nodes. The kernels here are the engine's own, and a plugin that
uses them gets them written into the generated code (batched.py): no call, and the result
computed straight into its rows, the same numbers. This is to relu what writing
`operator.add` as numpy's `add` is to add (rules.py). numpy is imported when a kernel runs,
not here: the scalar engine does not need it.
"""

from __future__ import annotations

from typing import Any


def relu(a: Any) -> Any:
    """relu on an array: nan stays nan, and + 0.0 makes -0.0 (which maximum may keep) 0.0,
    as the scalar relu does. maximum is a single pass, several times faster than np.where."""
    import numpy as np

    out = np.maximum(a, 0.0)
    out += 0.0
    return out


def relu_derivative(out: Any, a: Any) -> tuple[Any]:
    """relu's partial on an array: 1.0 where a > 0, else 0.0 (nan > 0 is false)."""
    return ((a > 0) * 1.0,)
