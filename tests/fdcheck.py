"""Central finite differences, the reference the engine's gradients are checked against.

Not a test module: the gradient tests import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

# A central difference has truncation error O(h**2) and rounding error O(eps * |f| / h);
# h = eps ** (1/3) (about 6e-6, scaled by |x|) balances the two.
STEP = 6e-6


def central_difference(f: Callable[..., float], xs: Sequence[float], i: int) -> float:
    """d f / d xs[i] at xs, by (f(x + h) - f(x - h)) / 2h."""
    h = STEP * max(1.0, abs(xs[i]))
    up = list(xs)
    down = list(xs)
    up[i] += h
    down[i] -= h
    return (f(*up) - f(*down)) / (up[i] - down[i])


def numeric_gradient(f: Callable[..., float], xs: Sequence[float]) -> list[float]:
    return [central_difference(f, xs, i) for i in range(len(xs))]


def assert_gradients_close(
    analytic: Sequence[float],
    numeric: Sequence[float],
    *,
    scale: float = 1.0,
    rtol: float = 1e-4,
    what: str = "",
) -> None:
    """Each analytic partial must match its finite difference.

    `scale` is the magnitude of the function's values near the point: the rounding error
    of a finite difference grows with it, so the absolute tolerance does too.
    """
    atol = 1e-6 * max(1.0, scale)
    for i, (a, n) in enumerate(zip(analytic, numeric, strict=True)):
        assert math.isfinite(a), f"{what}: input {i} has a non-finite gradient {a}"
        assert abs(a - n) <= atol + rtol * max(abs(a), abs(n)), (
            f"{what}: input {i}: backward gave {a!r}, finite differences {n!r}"
        )
