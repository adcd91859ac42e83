"""The moons training step batched: one point's loss compiled once, run over all points.

`opgraph.compile` records the loss of one point, its hinge plus the L2 term, and
`Compiled.map` runs it on the whole batch with numpy; `backward(weights=1/n)` sums the
points' gradients into the parameters, as the mean of the losses does. The mean of the
points' losses is micrograd's `data_loss + reg_loss`; the L2 term, a sum of products of
parameters, is one dot product per batch, not one per point. Same model, data, loss and
update as `moons.step`; the update and the zeroing of the gradients are
`opgraph.optim.SGD`'s (the plain loop's arithmetic, equal to the bit), and the points are
numpy arrays, made once, as a user of PyTorch makes its tensors.

`stored=True` keeps the parameters in one `opgraph.ParameterStore` (what
`nn.MLP(..., stored=True)` does): then reading their numbers, adding their gradients and
SGD's update are one numpy call each instead of a pass over 337 parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import opgraph
from opgraph import ParameterStore, Value
from opgraph.optim import SGD

from .moons import MLP

PARAMETERS = (2 + 1) * 16 + (16 + 1) * 16 + (16 + 1) * 1  # of MLP(2, [16, 16, 1]): 337


def moons_model(stored: bool = False) -> MLP:
    """MLP(2, [16, 16, 1]) with the weights of every run (its seed), its parameters plain
    Values or rows of one ParameterStore, made in the order of parameters()."""
    return MLP(ParameterStore(PARAMETERS).value if stored else Value, 2, [16, 16, 1])


def batched_step(
    X: list, y: list, learning_rate: float = 0.05, model: MLP | None = None, stored: bool = False
) -> Callable[[], float]:
    """A function running one batched training step on (X, y), returning the loss; of a
    new MLP(2, [16, 16, 1]) (the same weights every time, `stored` or not), or of `model`."""
    import numpy as np

    model = moons_model(stored) if model is None else model
    params = model.parameters()
    per_sample = opgraph.compile(
        lambda x, yi: (1 + -yi * model(x)).relu() + 1e-4 * sum(p * p for p in params), X[0], y[0]
    )
    weights = np.full(len(X), 1.0 / len(X))
    points, labels = np.array(X, dtype=np.float64), np.array(y, dtype=np.float64)
    optimizer = SGD(params, lr=learning_rate)

    def step() -> float:
        optimizer.zero_grad()
        losses = per_sample.map(points, labels)
        total = losses.sum() * (1.0 / len(losses))
        per_sample.backward(weights=weights)
        optimizer.step()
        return total

    return step
