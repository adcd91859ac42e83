"""micrograd's moons demo, written once for any micrograd-style `Value` class.

Both engines run this same code, so they build the same graph node for node: the demo's two-moons
data set (100 points), `MLP(2, [16, 16, 1])` with relu, the max-margin loss plus an L2 term,
then backward and an SGD update (micrograd's demo.ipynb, one training step).
"""

from __future__ import annotations

import random

# The demo's own data set, so that the figures are measured on the points `opgraph demo` trains on.
from opgraph.demo import SEED, make_moons  # noqa: F401 (used by run.py and paired.py)


class Neuron:
    def __init__(self, Value, nin: int, nonlin: bool, rng: random.Random):
        self.w = [Value(rng.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(0.0)
        self.nonlin = nonlin

    def __call__(self, x):
        act = sum((wi * xi for wi, xi in zip(self.w, x, strict=True)), self.b)
        return act.relu() if self.nonlin else act

    def parameters(self):
        return self.w + [self.b]


class MLP:
    """micrograd's MLP: layers of Neurons, relu everywhere but the last layer."""

    def __init__(self, Value, nin: int, nouts: list[int], seed: int = 1337):
        rng = random.Random(seed)
        sizes = [nin, *nouts]
        self.layers = [
            [Neuron(Value, sizes[i], i != len(nouts) - 1, rng) for _ in range(sizes[i + 1])]
            for i in range(len(nouts))
        ]

    def __call__(self, x):
        for layer in self.layers:
            x = [neuron(x) for neuron in layer]
        return x[0] if len(x) == 1 else x

    def parameters(self):
        return [p for layer in self.layers for neuron in layer for p in neuron.parameters()]


def loss(model: MLP, Value, X, y):
    """micrograd's demo loss: mean max-margin (hinge) loss plus 1e-4 times the L2 norm."""
    inputs = [[Value(x) for x in row] for row in X]
    scores = [model(row) for row in inputs]
    losses = [(1 + -yi * score).relu() for yi, score in zip(y, scores, strict=True)]
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = 1e-4 * sum(p * p for p in model.parameters())
    return data_loss + reg_loss


def step(model: MLP, Value, X, y, learning_rate: float = 0.05) -> float:
    """One training step: zero grads, forward, backward, SGD update. Returns the loss."""
    for p in model.parameters():
        p.grad = 0.0
    total = loss(model, Value, X, y)
    total.backward()
    for p in model.parameters():
        p.data -= learning_rate * p.grad
    return total.data
