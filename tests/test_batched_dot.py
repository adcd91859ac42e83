"""Compiled.map computes a sum of products of parameters (an L2 penalty, a dot product of
two weight vectors) once per batch, as one dot product, instead of an add and a mul per
term on every sample.

A learner writes the regularizer into the per-sample loss (`hinge + alpha * sum(p * p)`):
mean over the batch, it is micrograd's `data_loss + reg_loss`. Found in the recorded graph
alone, whatever the order of its adds or of each product's factors. Its result is the same
in every sample's column; its parameters' gradients come from the batch's total of its
gradient. Compared with eager opgraph run on each sample alone, to 1e-12 relative (a dot
product adds in another order than the graph's chain, as a matrix product does).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import plugin
from hypothesis import given, settings
from hypothesis import strategies as st
from test_batched_matmul import bits_by_chunk, check_against_eager, points

import opgraph
from opgraph import AnomalyError, Engine, Op, Value, kernels
from opgraph.nn import MLP

DOT = "products of parameters (dot)"


def test_an_l2_penalty_in_the_per_sample_loss_is_one_dot_product_per_batch():
    model = MLP(2, [16, 16, 1], rng=random.Random(3))
    params = model.parameters()

    def loss(x):
        return (1 + -1.0 * model(x)).relu() + 1e-4 * sum(p * p for p in params)

    source = check_against_eager(loss, params, points(40, 2))
    assert f"sum of {len(params)} {DOT}" in source
    # One line for 337 products and 337 adds, reading the parameters as one slice:
    # the generated code stays the size of the network's, not of its parameter count.
    assert len(source.splitlines()) < 120
    assert "PV.take" not in source


def test_an_l2_penalty_written_with_powers_is_the_same_dot_product():
    """`p ** 2` (the built-in pow, whose forward is the engine's `kernels.power`) is a
    product of p with itself: a learner's other way to write the L2 term."""
    model = MLP(2, [8, 1], rng=random.Random(4))
    params = model.parameters()

    def loss(x):
        return (1 + -1.0 * model(x)).relu() + 1e-3 * sum(p**2 for p in params)

    source = check_against_eager(loss, params, points(30, 2, seed=6))
    assert f"sum of {len(params)} {DOT}" in source and "PV.take" not in source


def test_a_plugin_pow_with_the_engines_forward_but_another_derivative_stays_a_node():
    """A square is taken as a product only if its derivative is the product's (p + p): an
    op of a plugin with the engine's pow as forward and a partial of its own runs as
    itself, with its own partial, in batched replay as in eager mode."""
    half = Op(
        "halfsquare",
        kernels.power,
        lambda out, a, b: (0.5 * b * a, 0.0),
        static=(1,),
        array_forward=np.power,
        array_derivative=lambda out, a, b: (0.5 * b * a + 0.0 * out, np.zeros_like(out)),
    )
    engine = Engine(plugins=[plugin("halves", half)], entry_points=False)
    ps = [engine.value(v) for v in (0.5, -1.5, 2.0)]
    f = opgraph.compile(
        lambda x: (engine.ops.halfsquare(ps[0], 2) + engine.ops.halfsquare(ps[1], 2)) * x,
        1.0,
        engine=engine,
    )
    xs = [1.0, 2.0, 4.0]
    f.map(xs)
    f.backward()
    assert DOT not in (f.batch_source or "")
    assert [p.grad for p in ps] == [0.5 * 2 * p.data * sum(xs) for p in ps[:2]] + [0.0]


def test_a_hand_written_dot_product_of_two_weight_vectors_in_any_order():
    """Products written either way round, sums right-associated, a weight squared, another
    used twice, a bias, a row of the sample, and a constant among the terms."""
    rng = random.Random(9)
    u = [Value(rng.uniform(-1, 1)) for _ in range(5)]
    v = [Value(rng.uniform(-1, 1)) for _ in range(5)]
    bias = Value(0.3)
    params = [*u, *v, bias]

    def fn(x):
        terms = [u[0] * v[0], u[1] * v[1], v[2] * u[2], u[3] * u[3], u[4] * v[0]]
        total = x[0] * 2.0
        for term in reversed([*terms, bias, 0.25]):  # right-associated: t0 + (t1 + ...)
            total = term + total
        return (total * x[1]).tanh()

    source = check_against_eager(fn, params, points(30, 2, seed=4))
    assert f"sum of 5 {DOT}" in source
    assert "np.add.at(PG" in source  # v[0] second in two products: both gradients added


def test_products_of_parameters_beside_a_layer_stay_terms_of_its_matrix_product():
    """A sum with two products of a weight and a row is a matrix product; its products of
    two parameters are then extra terms, computed as nodes of their own."""
    rng = random.Random(2)
    w = [Value(rng.uniform(-1, 1)) for _ in range(4)]

    def fn(x):
        return (w[0] * x[0] + w[1] * x[1] + w[2] * w[3] + w[3] * w[2]).tanh()

    source = check_against_eager(fn, w, points(20, 2, seed=5))
    assert "np.matmul(" in source and DOT not in source


@st.composite
def dot_sums(draw):
    """A sum of products of parameters (indices into 6 parameters, repeats allowed, each
    product either way round), its other terms, and a random association order."""
    pairs = draw(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=2, max_size=9))
    flips = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    extras = draw(st.lists(st.sampled_from(["constant", "parameter", "row"]), max_size=3))
    order = draw(st.lists(st.integers(0, 20), min_size=12, max_size=12))
    return pairs, flips, extras, order


@settings(max_examples=80, deadline=None)
@given(dot_sums(), st.lists(st.floats(-2, 2), min_size=6, max_size=6), st.integers(1, 5))
def test_random_sums_of_parameter_products_batched_equal_eager(found, values, n):
    pairs, flips, extras, order = found
    params = [Value(v) for v in values]

    def fn(x):
        terms = [
            params[b] * params[a] if flip else params[a] * params[b]
            for (a, b), flip in zip(pairs, flips, strict=True)
        ]
        extra = {"constant": 0.5, "parameter": params[5], "row": x[0] * 1.5}
        terms += [extra[kind] for kind in extras]
        for draw in order[: len(terms) - 1]:  # a random association order
            k = draw % (len(terms) - 1)
            terms[k : k + 2] = [terms[k] + terms[k + 1]]
        return terms[0] * x[1] + x[0]  # the sum's gradient differs from sample to sample

    source = check_against_eager(fn, params, points(n, 2, seed=n), nonzero=False)
    assert DOT in source


def test_chunks_of_a_dot_product_give_the_same_bits_as_one_chunk():
    model = MLP(3, [8, 1], rng=random.Random(1))
    params = model.parameters()
    f = opgraph.compile(
        lambda x: model(x).tanh() + 0.01 * sum(p * p for p in params), [0.1, 0.2, 0.3]
    )
    X = np.random.default_rng(4).normal(size=(1000, 3))
    results = bits_by_chunk(f, params, X)
    assert DOT in (f.batch_source or "")
    assert results[1] == results[0] and results[2] == results[0]


def test_the_chunk_counts_the_rows_the_batch_has_not_the_nodes_of_the_penalty():
    """A penalty over 337 parameters records 674 nodes, one row of the batch: a batch of
    10,000 points stays one chunk, so backward() does not run the forward pass again."""
    model = MLP(2, [16, 16, 1], rng=random.Random(0))
    params = model.parameters()
    f = opgraph.compile(
        lambda x: (1 + -1.0 * model(x)).relu() + 1e-4 * sum(p * p for p in params), [0.0, 0.0]
    )
    assert f.chunk_size < 10_000  # counted from the recorded nodes, before the first map
    f.map(np.zeros((10, 2)))
    assert f.chunk_size >= 10_000


def test_detect_anomaly_names_a_dot_product_that_overflows():
    big = [Value(1e200), Value(1e200)]

    def fn(x):
        s = big[0] * big[0] + big[1] * big[1]
        s.label = "penalty"
        return s * x

    f = opgraph.compile(fn, 1.0)
    with opgraph.detect_anomaly(), pytest.raises(AnomalyError, match=r"'add'.*penalty"):
        f.map([1.0, 2.0])
    assert DOT in (f.batch_source or "")


def test_detect_anomaly_checks_the_parameters_gradients_of_a_dot_product():
    w = [Value(1e300), Value(2.0)]
    f = opgraph.compile(lambda x: w[0] * w[1] + w[1] * w[1] + x, 1.0)
    with opgraph.detect_anomaly():
        assert np.isfinite(f.map([1.0])).all()  # 2e300 + 4 + 1: a finite forward
        with pytest.raises(AnomalyError, match=r"'add'.*non-finite gradient.*its weights"):
            f.backward(weights=[1e300])  # x's gradient is 1e300; w[1]'s, 1e300 * 1e300, overflows
    assert DOT in (f.batch_source or "")
