"""IEEE-754 versions of the float functions whose Python forms raise or go complex.

Python raises OverflowError for `math.exp(1000)` and ZeroDivisionError for `0.0 ** -1`, and
returns a complex number for `(-2.0) ** 0.5`; opgraph follows IEEE-754 (as PyTorch does):
inf on overflow, nan for an invalid operation, +-inf for a division by zero.
"""

from __future__ import annotations

import math

from opgraph import kernels

inf, nan = math.inf, math.nan
power = kernels.power  # a ** b, as IEEE-754 pow: the engine's, which its code generators know


def exp(a: float) -> float:
    try:
        return math.exp(a)
    except OverflowError:
        return inf


def log(a: float) -> float:
    if a > 0:
        return math.log(a)
    return -inf if a == 0 else nan  # nan stays nan


def reciprocal(a: float) -> float:
    """1 / a, with 1 / +-0 = +-inf."""
    return 1.0 / a if a != 0 else math.copysign(inf, a)
