"""Compiled.map recognises sums of products over the same inputs and runs them as one
matrix product, forward (`W @ X`) and backward (`g @ X.T` for W, `W.T @ g` for X).

The structure is found in the recorded graph alone: nothing in nn.py or the user's code
tells it, so a hand-written network of Values, summed in any association order, is batched
the same way. Every result is compared with eager opgraph run on each sample alone. A matrix
product adds its terms in another order than the graph's chain of adds, so "equal" is to a
tolerance: outputs and input gradients to 1e-12 relative, parameter gradients (sums over the
batch) to 1e-12 relative as well, each gradient relative to the largest of its row (a
gradient that cancels to about zero keeps a rounding error of the larger terms).
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from dags import OPS, programs, run
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_batched import assert_close, eager_batch

import opgraph
from opgraph import AnomalyError, Value
from opgraph.nn import MLP

REL = 1e-12
FORWARD_PRODUCT = re.compile(r"np\.matmul\(w\d+, x\d+, out=V")  # a group's W @ X


def check_against_eager(fn, params, samples, weights=None, *, nonzero=True):
    """Batched outputs and gradients of `fn` over `samples` against eager, sample by sample
    (`nonzero`: and some gradient is not 0); returns the batched program's source."""
    n = len(samples)
    weights = np.random.default_rng(0).uniform(-1, 1, n) if weights is None else weights
    compiled = opgraph.compile(fn, *samples[0])
    columns = [[s[k] for s in samples] for k in range(len(samples[0]))]
    for p in params:
        p.grad = 0.0
    outputs = compiled.map(*columns)
    compiled.backward(weights=weights)
    grads = [p.grad for p in params]
    expected, expected_grads, expected_inputs = eager_batch(fn, params, samples, list(weights))
    assert_close(outputs, expected, rel=REL, what="output", rows=True)
    assert_close(grads, expected_grads, rel=REL, what="parameter grad", rows=True)
    assert_close(compiled.batch_input_grads, expected_inputs, rel=REL, what="input", rows=True)
    if nonzero:
        assert any(g != 0 for g in grads)  # the comparison is not between zeros
    source = compiled.batch_source
    assert source is not None
    return source


def points(n: int, width: int, seed: int = 1) -> list[list]:
    rng = random.Random(seed)
    return [[[rng.uniform(-2, 2) for _ in range(width)]] for _ in range(n)]


def test_the_moons_mlp_of_opgraph_nn_runs_each_layer_as_one_matrix_product():
    model = MLP(2, [16, 16, 1], rng=random.Random(3))

    def hinge(x):
        return (1 + -1.0 * model(x)).relu()

    source = check_against_eager(hinge, model.parameters(), points(40, 2))
    assert len(FORWARD_PRODUCT.findall(source)) == 3  # the three layers
    assert "16 x sum of 16 products" in source


def test_a_hand_written_network_in_any_association_order_is_recognised():
    """No opgraph.nn: weights as Values, sums written right-associated, products written
    input first, the bias in the middle, as a user might."""
    rng = random.Random(7)
    w = [[Value(rng.uniform(-1, 1)) for _ in range(4)] for _ in range(5)]
    b = [Value(rng.uniform(-1, 1)) for _ in range(5)]
    v = [Value(rng.uniform(-1, 1)) for _ in range(5)]
    params = [p for row in w for p in row] + b + v

    def net(x):
        hidden = []
        for i in range(5):
            if i % 2:  # right-associated, bias in the middle
                s = x[0] * w[i][0] + (b[i] + (w[i][1] * x[1] + (x[2] * w[i][2] + w[i][3] * x[3])))
            else:  # a balanced tree
                s = (w[i][0] * x[0] + w[i][1] * x[1]) + ((w[i][2] * x[2] + x[3] * w[i][3]) + b[i])
            hidden.append(s.tanh())
        return sum(h * vi for h, vi in zip(hidden, v, strict=True)).sigmoid()

    source = check_against_eager(net, params, points(30, 4))
    assert "5 x sum of 4 products (matmul)" in source
    assert "sum of 5 products" in source  # the output: v . hidden, started from 0 + ...


def test_shared_weights_add_up_the_gradient_of_each_use():
    rng = random.Random(11)
    shared = Value(0.7)  # used by every neuron, and twice by the last
    w = [[Value(rng.uniform(-1, 1)) for _ in range(3)] for _ in range(3)]
    params = [shared, *(p for row in w for p in row)]

    def net(x):
        outs = [shared * x[0] + row[1] * x[1] + row[2] * x[2] for row in w[:2]]
        outs.append(shared * x[0] + shared * x[1] + w[2][2] * x[2])
        return sum(o.relu() * o for o in outs)

    source = check_against_eager(net, params, points(50, 3, seed=2))
    assert "np.matmul(" in source
    assert "np.add.at(PG" in source  # one weight at several places of W


def test_only_some_neurons_sharing_inputs_make_groups_of_their_own():
    """Neurons over x0..x3, neurons over x0, x1 only, and a product read twice (its own
    value is needed: it stays a node of its own, its sum falls back to adds)."""
    rng = random.Random(5)
    wide = [[Value(rng.uniform(-1, 1)) for _ in range(4)] for _ in range(3)]
    narrow = [[Value(rng.uniform(-1, 1)) for _ in range(2)] for _ in range(2)]
    u = [Value(rng.uniform(-1, 1)) for _ in range(2)]
    params = [p for rows in (wide, narrow) for row in rows for p in row] + u

    def net(x):
        a = [sum((wi * xi for wi, xi in zip(row, x, strict=True)), 0.5) for row in wide]
        b = [row[0] * x[0] + row[1] * x[1] for row in narrow]
        seen = u[0] * x[2]  # read by the sum and by the square below
        c = seen + u[1] * x[3]
        return sum(t.tanh() for t in (*a, *b)) + c + seen * seen

    source = check_against_eager(net, params, points(20, 4, seed=3))
    assert "3 x sum of 4 products" in source and "2 x sum of 2 products" in source
    assert len(FORWARD_PRODUCT.findall(source)) == 2  # not `c`: a product of it is read twice


def build(program, leaves, layers):
    """A random DAG (tests/dags.py) with dense layers over chosen nodes, each neuron's sum
    associated in a random order, all summed into the output."""
    nodes = list(leaves)
    for op, args in program.steps:
        nodes.append(OPS[op][1](*[nodes[i] for i in args]))
    outs = []
    for inputs, rows, orders in layers:
        for row, order in zip(rows, orders, strict=True):
            terms = [
                row[j] * nodes[i] if j % 2 else nodes[i] * row[j] for j, i in enumerate(inputs)
            ]
            terms.append(row[-1])  # the bias
            for draw in order[: len(terms) - 1]:  # a random association order
                k = draw % (len(terms) - 1)
                terms[k : k + 2] = [terms[k] + terms[k + 1]]
            outs.append(terms[0].tanh())
    return sum(nodes[len(leaves) :]) + sum(outs)


@st.composite
def layers(draw, nodes: int):
    """Dense layers: inputs (node indices), one row of weights and a bias per neuron, and
    the order each neuron's sum is associated in."""
    found = []
    for _ in range(draw(st.integers(1, 3))):
        inputs = draw(st.lists(st.integers(0, nodes - 1), min_size=2, max_size=5))
        neurons = draw(st.integers(1, 4))
        rows = [
            [Value(draw(st.floats(-1, 1))) for _ in range(len(inputs) + 1)] for _ in range(neurons)
        ]
        orders = [draw(st.lists(st.integers(0, 9), min_size=8, max_size=8)) for _ in rows]
        found.append((inputs, rows, orders))
    return found


@settings(max_examples=60, deadline=None)
@given(st.data(), programs(), st.integers(0, 3), st.integers(1, 6))
def test_random_dags_with_dense_layers_batched_equal_eager(data, program, split, n):
    split = min(split, len(program.leaves) - 1)  # at least one input
    params = [Value(x) for x in program.leaves[:split]]
    numbers = program.leaves[split:]
    dense = data.draw(layers(len(program.leaves) + len(program.steps)))
    dense_params = [p for _, rows, _ in dense for row in rows for p in row]
    rng = np.random.default_rng(n)
    samples = [[x + s for x in numbers] for s in rng.uniform(-0.5, 0.5, n).tolist()]
    samples[0] = list(numbers)
    for sample in samples:  # relu's kink is where float rounding may flip a branch
        relu_inputs = run(program, Value, OPS, [p.data for p in params] + sample).relu_inputs
        assume(all(abs(r) > 1e-9 for r in relu_inputs))

    def fn(*xs):
        return build(program, [*params, *xs], dense)

    weights = rng.uniform(-2, 2, n)
    check_against_eager(fn, params + dense_params, samples, weights, nonzero=False)


def bits_by_chunk(f, params, X) -> list:
    """`f.map(X)` then `backward()` in one chunk, then in chunks of 128 and of 256: the
    outputs' bytes and the parameters' gradients of each."""
    results = []
    for chunk in (1024, 128, 256):
        f.chunk_size = chunk
        for p in params:
            p.grad = 0.0
        out = f.map(X)
        f.backward()
        results.append((out.tobytes(), [p.grad for p in params]))
    return results


def test_chunks_of_a_matrix_product_give_the_same_bits_as_one_chunk():
    model = MLP(3, [8, 8, 1], rng=random.Random(1))
    f = opgraph.compile(lambda x: model(x).tanh(), [0.1, 0.2, 0.3])
    X = np.random.default_rng(4).normal(size=(1000, 3))
    results = bits_by_chunk(f, model.parameters(), X)
    assert "np.matmul(" in (f.batch_source or "")
    assert results[1] == results[0] and results[2] == results[0]


def test_detect_anomaly_names_the_sum_whose_product_overflows():
    w = [Value(1e200), Value(1e200)]

    def fn(x):
        s = w[0] * x[0] + w[1] * x[1]
        s.label = "act"
        return s.tanh()

    f = opgraph.compile(fn, [1.0, 1.0])
    with opgraph.detect_anomaly(), pytest.raises(AnomalyError, match=r"'add'.*act.*sample 1"):
        f.map([[1.0, 1.0], [1e200, 1.0]])
    assert "np.matmul(" in (f.batch_source or "")


def test_detect_anomaly_checks_the_backward_of_a_matrix_product():
    w = [Value(1e300), Value(1e300)]
    f = opgraph.compile(lambda x: (w[0] * x[0] + w[1] * x[1]) * 1e300, [1e-300, 1e-300])
    with opgraph.detect_anomaly():
        assert f.map([[1e-300, 1e-300]]).tolist() == [2e300]  # a finite forward
        with pytest.raises(AnomalyError, match=r"'add'.*non-finite gradient.*input 0"):
            f.backward()  # d out / d x = w * 1e300 overflows
    assert "np.matmul(" in (f.batch_source or "")
