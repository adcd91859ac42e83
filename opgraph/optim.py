"""Optimisers: `SGD` and `Adam` over a list of parameters, `step()` and `zero_grad()`.

The update a training loop writes, `for p in params: p.data -= lr * p.grad`, goes through the
`data` and `grad` properties: three calls per parameter and step, which cost more than the
arithmetic, and as much as a batched forward pass over a hundred samples. An optimiser
applies the same update to all its parameters in one tight loop over their slots, with the
same floating-point operations in the same order, so its results equal the plain loop's to
the bit (the plain loop keeps working).

    opt = opgraph.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = model_loss()
        loss.backward()
        opt.step()

The parameters may be those of a compiled function (`compiled.parameters`) or a model's
(`model.parameters()`): they are the same Values either way. The model or the compiled
function itself stands for its parameters (`SGD(model, lr=0.05)`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Real
from typing import Any

from .errors import OptimizerError
from .stored import store_rows
from .value import Value

__all__ = ["SGD", "Adam"]


def _parameters(params: Any, name: str) -> list[Value]:
    """The parameters as a list, each checked to be a Value (a clear error, not a slot
    missing later). A model or a compiled function stands for its parameters."""
    found = getattr(params, "parameters", None)
    if found is not None and not isinstance(params, Iterable):
        params = found() if callable(found) else found  # model.parameters(), compiled.parameters
    if isinstance(params, Value) or not isinstance(params, Iterable):
        raise OptimizerError(
            f"{name}(params, ...): params must be an iterable of Values (for example "
            f"model.parameters()), got {type(params).__name__}"
        )
    found = list(params)
    for k, p in enumerate(found):
        if not isinstance(p, Value):
            raise OptimizerError(
                f"{name}(params, ...): parameter {k} is a {type(p).__name__}, not a Value: {p!r}"
            )
    if not found:
        raise OptimizerError(f"{name}(params, ...): no parameters to optimise")
    return found


def _rate(value: float, what: str, name: str, low: float = 0.0, high: float = math.inf) -> float:
    """A hyperparameter as a float, checked to lie in [low, high)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not low <= value < high:
        bounds = f"in [{low}, {high})" if high != math.inf else f">= {low}"
        raise OptimizerError(f"{name}: {what} must be a real number {bounds}, got {value!r}")
    return float(value)


class _Optimizer:
    """What SGD and Adam share: their parameters, and zeroing their gradients."""

    def __init__(self, params: Any) -> None:
        self.params = _parameters(params, type(self).__name__)
        # Parameters that all live in one ParameterStore (nn.MLP(stored=True)) are updated
        # by numpy calls over their rows: the same operations on each number, in one call.
        self._store, self._rows = store_rows(self.params)

    def _zeros(self) -> Any:
        """A number of state per parameter, all 0.0: an array for stored parameters, which
        are updated by numpy calls, else a list."""
        if self._store is None:
            return [0.0] * len(self.params)
        import numpy as np  # (imported already by the store)

        return np.zeros(len(self.params))

    def zero_grad(self) -> None:
        """Set every parameter's gradient to 0.0 (as `p.grad = 0.0` does)."""
        if self._store is not None:
            self._store.grad[self._rows] = 0.0
            return
        for p in self.params:
            p._grad = 0.0

    def step(self) -> None:
        raise NotImplementedError


class SGD(_Optimizer):
    """Stochastic gradient descent: `p.data -= lr * p.grad` for every parameter; with
    `momentum`, PyTorch's: `buf = momentum * buf + p.grad; p.data -= lr * buf`."""

    def __init__(self, params: Any, lr: float, momentum: float = 0.0) -> None:
        super().__init__(params)
        self.lr = _rate(lr, "lr", "SGD")
        self.momentum = _rate(momentum, "momentum", "SGD", 0.0, 1.0)
        self._buffers = self._zeros()

    def step(self) -> None:
        """Apply one update to every parameter."""
        lr, params = self.lr, self.params
        if self._store is not None:  # the same arithmetic, one numpy call per operation
            data, grad, rows = self._store.data, self._store.grad, self._rows
            if not self.momentum:
                data[rows] -= lr * grad[rows]
            else:
                buffers = self._buffers = self.momentum * self._buffers + grad[rows]
                data[rows] -= lr * buffers
            return
        if not self.momentum:
            for p in params:
                p._data -= lr * p._grad  # the slots: the arithmetic of `p.data -= lr * p.grad`
            return
        momentum, buffers = self.momentum, self._buffers
        for k, p in enumerate(params):
            buffer = buffers[k] = momentum * buffers[k] + p._grad
            p._data -= lr * buffer


class Adam(_Optimizer):
    """Adam (Kingma and Ba), as PyTorch writes it: with t the step number,
    `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g g`, and
    `p.data -= lr * (m / (1 - b1 ** t)) / (sqrt(v / (1 - b2 ** t)) + eps)`."""

    def __init__(
        self,
        params: Any,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params)
        self.lr = _rate(lr, "lr", "Adam")
        if not isinstance(betas, tuple) or len(betas) != 2:
            raise OptimizerError(f"Adam: betas must be a tuple of two numbers, got {betas!r}")
        self.b1 = _rate(betas[0], "betas[0]", "Adam", 0.0, 1.0)
        self.b2 = _rate(betas[1], "betas[1]", "Adam", 0.0, 1.0)
        self.eps = _rate(eps, "eps", "Adam")
        self.t = 0  # steps taken
        self._m, self._v = self._zeros(), self._zeros()

    def step(self) -> None:
        """Apply one update to every parameter."""
        self.t += 1
        b1, b2, eps, lr = self.b1, self.b2, self.eps, self.lr
        c1, c2 = 1.0 - b1**self.t, 1.0 - b2**self.t  # the bias corrections
        if self._store is not None:  # the same arithmetic, one numpy call per operation
            from numpy import sqrt as array_sqrt  # (imported already by the store)

            data, rows = self._store.data, self._rows
            g = self._store.grad[rows]
            m = self._m = b1 * self._m + (1.0 - b1) * g
            v = self._v = b2 * self._v + (1.0 - b2) * g * g
            data[rows] -= lr * (m / c1) / (array_sqrt(v / c2) + eps)
            return
        m, v, sqrt = self._m, self._v, math.sqrt
        for k, p in enumerate(self.params):
            g = p._grad
            mk = m[k] = b1 * m[k] + (1.0 - b1) * g
            vk = v[k] = b2 * v[k] + (1.0 - b2) * g * g
            p._data -= lr * (mk / c1) / (sqrt(vk / c2) + eps)
