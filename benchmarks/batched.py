"""The moons training step batched: one point's loss compiled once, run over all points.

`opgraph.compile` records the hinge loss of one point, `Compiled.map` runs it on the whole
batch with numpy, and `backward(weights=1/n)` sums the points' gradients into the
parameters, as the mean of the losses does. The L2 term, the same for every point, is
compiled on its own. Same model, data, loss and update as `moons.step`.
"""

from __future__ import annotations

from collections.abc import Callable

import opgraph
from opgraph import Value

from .moons import MLP


def batched_step(X: list, y: list, learning_rate: float = 0.05) -> Callable[[], float]:
    """A function running one batched training step on (X, y), returning the loss."""
    import numpy as np

    model = MLP(Value, 2, [16, 16, 1])
    params = model.parameters()
    per_sample = opgraph.compile(lambda x, yi: (1 + -yi * model(x)).relu(), X[0], y[0])
    l2 = opgraph.compile(lambda: 1e-4 * sum(p * p for p in params))
    weights = np.full(len(X), 1.0 / len(X))

    def step() -> float:
        for p in params:
            p.grad = 0.0
        losses = per_sample.map(X, y)
        total = losses.sum() * (1.0 / len(losses)) + l2()
        per_sample.backward(weights=weights)
        l2.backward()
        for p in params:
            p.data -= learning_rate * p.grad
        return total

    return step
