"""The engine's own kernels: functions of ops that the generated code writes out, or
recognises by identity.

An op plugin gives batched replay its `array_forward` and `array_derivative` (ops.py). Most
are called, once per group of nodes. relu's array kernels here are the engine's own, and a
plugin that uses them gets them written into the generated code (batched.py): no call, and
the result computed straight into its rows, the same numbers. This is to relu what writing
`operator.add` as numpy's `add` is to add (rules.py). `power`, IEEE-754 pow on floats, is the
built-in pow's forward and the generated scalar code's `**`; batched replay knows a square of
a parameter made by it (`p ** 2`) as the product `p * p`. numpy is imported when a kernel
runs, not here: the scalar engine does not need it.
"""

from __future__ import annotations

import math
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


def power(a: float, b: float) -> float:
    """a ** b as IEEE-754 pow: +-inf at a pole (zero to a negative power), nan for a
    negative base to a fractional power (Python raises or goes complex), inf on overflow."""
    try:
        out = a**b
    except ZeroDivisionError:  # zero to a negative power: a pole
        return math.copysign(math.inf, a) if _odd_integer(b) else math.inf
    except OverflowError:  # too large, or a negative base to a fractional power
        if a < 0 and not b.is_integer():
            return math.nan
        return -math.inf if a < 0 and _odd_integer(b) else math.inf
    return math.nan if isinstance(out, complex) else out


def _odd_integer(x: float) -> bool:
    return math.isfinite(x) and x.is_integer() and int(x) % 2 == 1
