"""IEEE-754 versions of the float functions whose Python forms raise or go complex.

Python raises OverflowError for `math.exp(1000)` and ZeroDivisionError for `0.0 ** -1`, and
returns a complex number for `(-2.0) ** 0.5`; opgraph follows IEEE-754 (as PyTorch does):
inf on overflow, nan for an invalid operation, +-inf for a division by zero.
"""

from __future__ import annotations

import math

inf, nan = math.inf, math.nan


def _odd_integer(x: float) -> bool:
    return math.isfinite(x) and x.is_integer() and int(x) % 2 == 1


def power(a: float, b: float) -> float:
    """a ** b, as IEEE-754 pow."""
    try:
        out = a**b
    except ZeroDivisionError:  # zero to a negative power: a pole
        return math.copysign(inf, a) if _odd_integer(b) else inf
    except OverflowError:  # too large, or a negative base to a fractional power (complex)
        if a < 0 and not b.is_integer():
            return nan
        return -inf if a < 0 and _odd_integer(b) else inf
    return nan if isinstance(out, complex) else out


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
