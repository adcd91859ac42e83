"""opgraph.optim: SGD and Adam update every parameter as the plain loop does, to the bit.

The plain loop (`p.data -= lr * p.grad`) and the documented formulas, written out over
`.data` and `.grad`, are the reference; an optimiser's results must equal them exactly, on a
model trained eagerly and on the same model trained through a compiled batched step.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

import opgraph
from opgraph import OptimizerError, Value
from opgraph.nn import MLP
from opgraph.optim import SGD, Adam


def moons_loss(model, X, y):
    losses = [(1 + -yi * model(x)).relu() for x, yi in zip(X, y, strict=True)]
    return sum(losses) * (1.0 / len(losses)) + 1e-4 * sum(p * p for p in model.parameters())


def data(n=12, seed=2):
    rng = random.Random(seed)
    X = [[rng.uniform(-2, 2), rng.uniform(-1, 1)] for _ in range(n)]
    return X, [1.0 if x[0] * x[1] > 0 else -1.0 for x in X]


def plain_sgd(params, lr, momentum, buffers):
    for k, p in enumerate(params):
        if momentum:
            buffers[k] = momentum * buffers[k] + p.grad
            p.data -= lr * buffers[k]
        else:
            p.data -= lr * p.grad


def plain_adam(params, lr, b1, b2, eps, t, m, v):
    for k, p in enumerate(params):
        m[k] = b1 * m[k] + (1 - b1) * p.grad
        v[k] = b2 * v[k] + (1 - b2) * p.grad * p.grad
        m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
        p.data -= lr * m_hat / (math.sqrt(v_hat) + eps)


def train_pair(make_optimizer, plain, steps=6, stored=False):
    """The same model trained with the optimiser and with the plain loop: the parameters
    after each step. `stored`: the optimiser's model keeps its parameters in a
    ParameterStore, which the optimiser updates with numpy calls."""
    X, y = data()
    ours = MLP(2, [6, 6, 1], rng=random.Random(1), stored=stored)
    theirs = MLP(2, [6, 6, 1], rng=random.Random(1))
    opt = make_optimizer(ours.parameters())
    state: dict = {}
    for t in range(1, steps + 1):
        opt.zero_grad()
        moons_loss(ours, X, y).backward()
        opt.step()
        theirs.zero_grad()
        moons_loss(theirs, X, y).backward()
        plain(theirs.parameters(), t, state)
        assert [p.data for p in ours.parameters()] == [p.data for p in theirs.parameters()]
    assert any(p.grad != 0 for p in ours.parameters())


@pytest.mark.parametrize("stored", [False, True], ids=["plain", "stored"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_equals_the_plain_loop_to_the_bit(momentum, stored):
    def plain(params, t, state):
        plain_sgd(params, 0.05, momentum, state.setdefault("b", [0.0] * len(params)))

    train_pair(lambda ps: SGD(ps, lr=0.05, momentum=momentum), plain, stored=stored)


@pytest.mark.parametrize("stored", [False, True], ids=["plain", "stored"])
def test_adam_equals_the_documented_formula_to_the_bit(stored):
    def plain(params, t, state):
        m, v = (
            state.setdefault("m", [0.0] * len(params)),
            state.setdefault("v", [0.0] * len(params)),
        )
        plain_adam(params, 0.01, 0.9, 0.999, 1e-8, t, m, v)

    train_pair(lambda ps: Adam(ps, lr=0.01), plain, stored=stored)


@pytest.mark.parametrize("stored", [False, True], ids=["plain", "stored"])
def test_a_compiled_batched_step_with_sgd_follows_the_plain_loop(stored):
    X, y = data(40)
    models = [MLP(2, [8, 8, 1], rng=random.Random(4), stored=s) for s in (stored, False)]
    steps = []
    for model in models:
        f = opgraph.compile(lambda x, yi, m=model: (1 + -yi * m(x)).relu(), X[0], y[0])
        steps.append(f)
    opt = SGD(steps[0].parameters, lr=0.1)
    assert set(map(id, opt.params)) == set(map(id, models[0].parameters()))
    weights = np.full(len(X), 1.0 / len(X))
    for _ in range(4):
        opt.zero_grad()
        steps[0].map(X, y)
        steps[0].backward(weights=weights)
        opt.step()
        models[1].zero_grad()
        steps[1].map(X, y)
        steps[1].backward(weights=weights)
        for p in models[1].parameters():
            p.data -= 0.1 * p.grad
    assert [p.data for p in models[0].parameters()] == [p.data for p in models[1].parameters()]
    assert [p.grad for p in models[0].parameters()] == [p.grad for p in models[1].parameters()]


def test_a_model_or_a_compiled_function_stands_for_its_parameters():
    model = MLP(2, [3, 1], rng=random.Random(0))
    f = opgraph.compile(lambda x: model(x), [0.5, 0.5])
    assert SGD(model, lr=0.1).params == model.parameters()
    assert set(map(id, Adam(f).params)) == set(map(id, model.parameters()))


def test_zero_grad_zeroes_every_parameter():
    params = [Value(1.0), Value(2.0)]
    (params[0] * params[1]).backward()
    SGD(params, lr=0.1).zero_grad()
    assert [p.grad for p in params] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SGD(Value(1.0), lr=0.1), "iterable of Values"),
        (lambda: SGD([Value(1.0), 2.0], lr=0.1), "parameter 1 is a float"),
        (lambda: SGD([], lr=0.1), "no parameters"),
        (lambda: SGD([Value(1.0)], lr="0.1"), "lr must be a real number"),
        (lambda: SGD([Value(1.0)], lr=-1.0), "lr must be a real number >= 0"),
        (lambda: SGD([Value(1.0)], lr=0.1, momentum=1.0), r"momentum .* in \[0.0, 1.0\)"),
        (lambda: Adam([Value(1.0)], betas=(0.9,)), "betas must be a tuple of two"),
        (lambda: Adam([Value(1.0)], eps=math.nan), "eps must be a real number"),
    ],
)
def test_bad_arguments_are_clear_errors(make, match):
    with pytest.raises(OptimizerError, match=match):
        make()
