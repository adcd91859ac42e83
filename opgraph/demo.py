"""`opgraph demo`: micrograd's moons demo, trained with opgraph.

An MLP(2, [16, 16, 1]) learns to separate two interleaved half-moons of 100 points with
micrograd's max-margin (SVM) loss plus an L2 penalty, by plain gradient descent for 100 steps
with micrograd's learning-rate schedule. Then it draws one trained neuron's graph with
Graphviz.

The pieces are functions so that other features can reuse them: `make_moons`, `loss`,
`train` (with an `on_step` callback) and `draw_neuron`. `opgraph demo --compile` trains
with `compiled_loss`, the same loss through `opgraph.compile`; `opgraph demo --batch` with
`batched_loss`, the per-sample loss compiled once and run over the whole batch with numpy.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from .engine import Engine
from .modes import no_grad, scope
from .nn import MLP, Neuron
from .value import Value
from .viz import draw_dot, render

if TYPE_CHECKING:
    from .compiler import Compiled

Points = list[list[float]]
SEED = 1337  # the default seed of the data and the weights


class Model(Protocol):
    """What the demo needs of a model (an `MLP` is one): the engine its parameters live in,
    a score for a point, and the parameters to train."""

    engine: Engine

    def __call__(self, x: Sequence[Value]) -> Value | list[Value]: ...

    def parameters(self) -> list[Value]: ...

    def zero_grad(self) -> None: ...


class Loss(Protocol):
    """What `train` needs of a loss: its value and a backward pass (a `Value` is one)."""

    @property
    def data(self) -> float: ...

    def backward(self) -> None: ...


# loss_fn(model, X, y) -> (loss, accuracy), what `train` calls each step
LossFunction = Callable[[Model, Sequence[Sequence[float]], Sequence[int]], tuple[Loss, float]]


def make_moons(
    n: int = 100, noise: float = 0.1, seed: int | None = None
) -> tuple[Points, list[int]]:
    """Two interleaving half circles, like scikit-learn's `make_moons`, with labels -1 and 1.

    The upper moon (label -1) is the half circle of radius 1 around (0, 0); the lower moon
    (label 1) is the same half circle turned upside down and moved to (1, 0.5). Gaussian
    noise of standard deviation `noise` is added to every coordinate, and the points are
    shuffled. The same `seed` gives the same points.
    """
    rng = random.Random(seed)
    n_upper = n // 2
    n_lower = n - n_upper
    upper = [(math.cos(t), math.sin(t)) for t in _linspace(0, math.pi, n_upper)]
    lower = [(1 - math.cos(t), 0.5 - math.sin(t)) for t in _linspace(0, math.pi, n_lower)]
    points = [(x, y, -1) for x, y in upper] + [(x, y, 1) for x, y in lower]
    rng.shuffle(points)
    X = [[x + rng.gauss(0, noise), y + rng.gauss(0, noise)] for x, y, _ in points]
    labels = [label for _, _, label in points]
    return X, labels


def _linspace(start: float, stop: float, n: int) -> list[float]:
    if n == 1:
        return [start]
    return [start + (stop - start) * i / (n - 1) for i in range(n)]


def loss(
    model: Model, X: Sequence[Sequence[float]], y: Sequence[int], alpha: float = 1e-4
) -> tuple[Value, float]:
    """micrograd's demo loss: (total loss, accuracy) of `model` on points X with labels y.

    The data loss is the mean max-margin (SVM) loss relu(1 - y_i * score_i): zero once a
    point is on the right side with a margin of 1. The L2 term alpha * sum(p**2) keeps the
    weights small. Accuracy is the fraction of points whose score has the label's sign.
    """
    value = model.engine.value
    inputs = [[value(x) for x in row] for row in X]
    scores = [_score(model, row) for row in inputs]
    # The loss's own ops in a scope of their own: a viewer shows them as one group ("loss",
    # with "hinge" and "l2" in it) beside the model's layers.
    with scope("loss"):
        with scope("hinge"):
            losses = [(1 + -yi * score).relu() for yi, score in zip(y, scores, strict=True)]
            data_loss = sum(losses) * (1.0 / len(losses))
        with scope("l2"):
            reg_loss = alpha * sum(p * p for p in model.parameters())
        total_loss = data_loss + reg_loss
    # sum() of Values is a Value (or 0 for no Values, which no point and no parameter give)
    assert isinstance(total_loss, Value)
    accuracy = sum((yi > 0) == (score.data > 0) for yi, score in zip(y, scores, strict=True))
    return total_loss, accuracy / len(y)


def _score(model: Model, point: Sequence[Value]) -> Value:
    """The model's score of one point: the demo's model has one output."""
    score = model(point)
    if isinstance(score, list):
        raise ValueError(f"the demo's model must have one output, this one has {len(score)}")
    return score


def _outputs(result: float | tuple[float, ...]) -> tuple[float, ...]:
    """A compiled function's outputs as a tuple (it returns a single output bare)."""
    return result if isinstance(result, tuple) else (result,)


class CompiledLoss:
    """What a compiled loss gives `train` in place of a Value: `.data` and `.backward()`."""

    def __init__(self, data: float, backward: Callable[[], None]):
        self.data = data
        self._backward = backward

    def backward(self) -> None:
        self._backward()


class CompiledLossFunction:
    """A `loss_fn` for `train` that runs a compiled graph, `compiled` (shown by the command)."""

    def __init__(
        self,
        compiled: Compiled,
        run: Callable[[Sequence[Sequence[float]], Sequence[int]], tuple[CompiledLoss, float]],
    ):
        self.compiled = compiled
        self._run = run

    def __call__(
        self, model: Model, X: Sequence[Sequence[float]], y: Sequence[int]
    ) -> tuple[CompiledLoss, float]:
        return self._run(X, y)


def compiled_loss(
    model: Model, X: Sequence[Sequence[float]], y: Sequence[int], alpha: float = 1e-4
) -> CompiledLossFunction:
    """`loss`, compiled once with `opgraph.compile`, as a `loss_fn` for `train`.

    The points and labels are the compiled function's inputs; the scores are extra outputs,
    so accuracy is computed from floats (reading `.data` while recording would be refused).
    """
    from .compiler import compile

    def loss_and_scores(points: list[list[Value]], labels: list[Value]) -> tuple[Value, ...]:
        scores = [_score(model, row) for row in points]
        losses = [(1 + -yi * score).relu() for yi, score in zip(labels, scores, strict=True)]
        data_loss = sum(losses) * (1.0 / len(losses))
        reg_loss = alpha * sum(p * p for p in model.parameters())
        total_loss = data_loss + reg_loss
        assert isinstance(total_loss, Value)  # as in `loss`
        return (total_loss, *scores)

    compiled = compile(loss_and_scores, X, y, engine=model.engine)

    def run(X: Sequence[Sequence[float]], y: Sequence[int]) -> tuple[CompiledLoss, float]:
        total, *scores = _outputs(compiled(X, y))
        accuracy = sum((yi > 0) == (score > 0) for yi, score in zip(y, scores, strict=True))
        return CompiledLoss(total, compiled.backward), accuracy / len(y)

    return CompiledLossFunction(compiled, run)


def batched_loss(
    model: Model, X: Sequence[Sequence[float]], y: Sequence[int], alpha: float = 1e-4
) -> CompiledLossFunction:
    """`loss` as a batch, as a `loss_fn` for `train`: needs numpy (`opgraph[numpy]`).

    The hinge loss of one point is compiled once, with the point's score as a second output,
    and `Compiled.map` runs it on all points at once; backward weighs each point by 1/n, as
    the mean does. The L2 term, the same for every point, is compiled on its own.
    """
    import numpy as np

    from .compiler import compile

    def hinge_and_score(point: list[Value], label: Value) -> tuple[Value, Value]:
        score = _score(model, point)
        return (1 + -label * score).relu(), score

    per_sample = compile(hinge_and_score, X[0], y[0], engine=model.engine)
    parameters = model.parameters()
    l2 = compile(lambda: alpha * sum(p * p for p in parameters), engine=model.engine)

    def run(X: Sequence[Sequence[float]], y: Sequence[int]) -> tuple[CompiledLoss, float]:
        losses, scores = per_sample.map(X, y)
        n = len(losses)
        data_loss = 0.0
        for point_loss in losses.tolist():  # added up in order, as eager `sum` does
            data_loss += point_loss
        (reg_loss,) = _outputs(l2())
        total = data_loss * (1.0 / n) + reg_loss

        def backward() -> None:
            per_sample.backward(weights=np.full(n, 1.0 / n))
            l2.backward()

        right = sum((yi > 0) == (s > 0) for yi, s in zip(y, scores.tolist(), strict=True))
        return CompiledLoss(total, backward), right / len(y)

    return CompiledLossFunction(per_sample, run)


@dataclass(frozen=True)
class Step:
    """What one training step reports to `on_step` (loss and accuracy before its update)."""

    index: int  # 0-based
    steps: int
    loss: float
    accuracy: float
    learning_rate: float


def learning_rate(step: int, steps: int) -> float:
    """micrograd's schedule: from 1.0 at the first step down to 0.1 at the end."""
    return 1.0 - 0.9 * step / steps


def train(
    model: Model,
    X: Sequence[Sequence[float]],
    y: Sequence[int],
    steps: int = 100,
    on_step: Callable[[Step], None] | None = None,
    loss_fn: LossFunction = loss,
) -> list[Step]:
    """Full-batch gradient descent, as micrograd's demo: forward, zero_grad, backward, update.

    Calls `on_step(step)` after each update and returns every step's report.
    `loss_fn(model, X, y) -> (loss, accuracy)` replaces the loss (e.g. a compiled one).
    """
    history = []
    for k in range(steps):
        total_loss, accuracy = loss_fn(model, X, y)
        model.zero_grad()
        total_loss.backward()
        rate = learning_rate(k, steps)
        for p in model.parameters():
            p.data -= rate * p.grad
        step = Step(k, steps, total_loss.data, accuracy, rate)
        history.append(step)
        if on_step is not None:
            on_step(step)
    return history


def evaluate(model: Model, X: Sequence[Sequence[float]], y: Sequence[int]) -> tuple[float, float]:
    """(loss, accuracy) of the model as it is now, without recording a graph."""
    with no_grad():
        total_loss, accuracy = loss(model, X, y)
    return total_loss.data, accuracy


def draw_neuron(model: MLP, X: Sequence[Sequence[float]], path: Path) -> Path:
    """Render the graph of the model's first neuron on one input point, with its gradients.

    The point is the first on which the neuron is active (a relu that outputs 0 would show
    zero gradients). Raises GraphvizNotFoundError when the `dot` program is missing.
    """
    neuron: Neuron = model.layers[0].neurons[0]
    value = model.engine.value
    out = None
    for row in X:
        inputs = [value(x, f"x{i}") for i, x in enumerate(row)]
        out = neuron(inputs)
        if out.data > 0:
            break
    if out is None:
        raise ValueError("draw_neuron needs at least one input point, X is empty")
    neuron.zero_grad()
    out.backward()
    return render(draw_dot(out), path)


class ProgressBar:
    """A plain-text progress bar: redrawn in place on a terminal, a line per tenth elsewhere."""

    def __init__(self, steps: int, stream: TextIO | None = None, width: int = 30):
        self.steps, self.width = steps, width
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()
        self.shown_tenths = -1

    def __call__(self, step: Step) -> None:
        done = step.index + 1
        tenths = done * 10 // self.steps
        if not self.tty and tenths == self.shown_tenths and done != self.steps:
            return
        self.shown_tenths = tenths
        filled = done * self.width // self.steps
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        remaining = elapsed / done * (self.steps - done)
        line = (
            f"step {done:>{len(str(self.steps))}}/{self.steps} [{bar}] "
            f"loss {step.loss:.4f}  accuracy {step.accuracy:6.1%}  "
            f"{elapsed:.0f}s elapsed, {remaining:.0f}s left"
        )
        if self.tty:
            end = "\n" if done == self.steps else ""
            self.stream.write(f"\r{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
