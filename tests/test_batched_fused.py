"""The batched step's generated code: relu written inline, the parameters' gradients written
straight into their rows, the inputs copied once, and the same numbers as eager mode.

Elementwise ops compute each sample alone, with the same IEEE-754 operations as eager mode, so
the outputs of elementwise chains are compared exactly: nan with nan, and a zero with the zero
of the same sign (relu makes -0.0 into 0.0); so are the input gradients of a chain that reads
each input once. Gradients summed in another order than eager mode's (the parameters', over
the batch; an input's, read by several nodes) are compared to 1e-12 relative.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from dags import OPS, programs
from hypothesis import given, settings
from hypothesis import strategies as st
from test_batched import assert_close, eager_batch
from test_batched_matmul import check_against_eager, points

import opgraph
from opgraph import AnomalyError, Value
from opgraph.nn import MLP

SPECIAL = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-320, -1e-320, 1e300, -1e300]
KERNEL_CALL = re.compile(r"\b[FD]\d+\(")  # a call of a plugin's array function


def same(a: float, b: float) -> bool:
    """Exactly equal: nan and nan, a zero and the zero of the same sign."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def assert_same(actual, expected, what: str) -> None:
    actual, expected = np.ravel(actual).tolist(), np.ravel(expected).tolist()
    assert len(actual) == len(expected)
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        assert same(a, b), f"{what} [{i}]: batched {a!r}, eager {b!r}"


# One step of a chain: (name, constant). `h` is the chain so far, `y` the second input, `p` a
# parameter.
STEPS = {
    "relu": lambda h, y, p, c: h.relu(),
    "neg": lambda h, y, p, c: -h,
    "add": lambda h, y, p, c: h + c,
    "rsub": lambda h, y, p, c: c - h,
    "mul": lambda h, y, p, c: h * c,
    "param": lambda h, y, p, c: h * p,
    "hinge": lambda h, y, p, c: (1 + -y * h).relu(),  # the moons loss
    "twice": lambda h, y, p, c: h.relu() + h.relu() * c,  # one row read by two relus
}

chains = st.lists(
    st.tuples(
        st.sampled_from(sorted(STEPS)),
        st.sampled_from([1.0, -1.0, 0.5, -2.0, 0.0, -0.0, 1e300]),
    ),
    min_size=1,
    max_size=8,
)
numbers = st.one_of(
    st.sampled_from(SPECIAL), st.floats(-3.0, 3.0, allow_nan=False, allow_subnormal=False)
)


@settings(max_examples=80, deadline=None)
@given(chains, st.lists(st.tuples(numbers, numbers), min_size=1, max_size=9), numbers)
def test_relu_chains_with_nan_inf_and_negative_zero_equal_eager(chain, samples, weight):
    p = Value(1.5)

    def fn(x, y):
        h = x.relu()
        for name, c in chain:
            h = STEPS[name](h, y, p, c)
        return h

    samples = [list(s) for s in samples]
    weights = [weight] + [1.0] * (len(samples) - 1)
    compiled = opgraph.compile(fn, 1.0, 1.0)
    p.grad = 0.0
    outputs = compiled.map(*[[s[k] for s in samples] for k in range(2)])
    compiled.backward(weights=np.array(weights))
    grad = p.grad
    expected, expected_grads, expected_inputs = eager_batch(fn, [p], samples, weights)
    assert_same(outputs, expected, "output")
    # An input read by several nodes (y, by each hinge) sums its gradients in another order.
    assert_close(compiled.batch_input_grads, expected_inputs, what="input grad", rows=True)
    assert_close([grad], expected_grads, rel=1e-12, what="parameter grad")
    source = compiled.batch_source or ""
    assert "np.maximum(" in source and not KERNEL_CALL.search(source)


def test_relu_is_written_inline_forward_and_backward_in_the_moons_net():
    model = MLP(2, [16, 16, 1])
    samples = [[x, 1.0 if x[0] > 0 else -1.0] for [x] in points(50, 2)]
    source = check_against_eager(
        lambda x, y: (1 + -y * model(x)).relu(), model.parameters(), samples
    )
    assert not KERNEL_CALL.search(source), source  # no call of the plugin's kernels
    assert len(re.findall(r"np\.maximum\(a\d+_0, V\d+_\d+, out=V\d+_\d+\)", source)) == 3
    # backward: the mask a > 0 written as 0.0 and 1.0 into the rows it goes to, times g
    assert len(re.findall(r"np\.greater\(a\d+_0, 0\.0, out=(G\d+_\d+)\)", source)) == 3
    assert len(re.findall(r"multiply\((G\d+_\d+), g, out=\1\)", source)) == 3


def test_relu_of_one_row_read_by_several_nodes_over_chunks_equals_eager():
    """Two relus of one node read its row broadcast against the rows of zeros; the batch's
    last chunk is narrower than the others, and so are its zeros."""
    w = Value(0.75)

    def fn(x):
        h = x * w
        return h.relu() * 2.0 + h.relu() - (h * -1.0).relu()

    xs = [[x] for x in [*SPECIAL, *np.linspace(-2, 2, 291).tolist()]]  # 300 samples
    compiled = opgraph.compile(fn, 1.0)
    compiled.chunk_size = 128
    outputs = compiled.map([x for [x] in xs])
    weights = np.linspace(-1, 1, len(xs))
    compiled.backward(weights=weights)
    grad = w.grad
    expected, expected_grads, expected_inputs = eager_batch(fn, [w], xs, weights.tolist())
    assert_same(outputs, expected, "output")
    assert_same(compiled.batch_input_grads, expected_inputs, "input grad")
    assert math.isnan(grad) and math.isnan(expected_grads[0])  # nan * w reaches w's sum


def test_a_batch_of_one_chunk_and_of_several_give_the_same_bits():
    """One chunk keeps its forward pass and sums the blocks a column at a time; several run
    the forward again and sum with a running total: the same additions in the same order."""
    model = MLP(2, [16, 16, 1])
    xs = points(1000, 2, seed=3)
    xs[5] = [[-0.0, 0.0]]
    ys = [1.0 if x[0] > 0 else -1.0 for [x] in xs]
    f = opgraph.compile(lambda x, y: (1 + -y * model(x)).relu(), [0.0, 0.0], 1.0)
    results = []
    for chunk in (f.chunk_size, 256, 128):
        f.chunk_size = chunk
        model.zero_grad()
        out = f.map(np.array([x for [x] in xs]), np.array(ys))
        f.backward(weights=np.full(len(xs), 1e-3))
        grads = [p.grad for p in model.parameters()]
        results.append(
            (np.asarray(out).tobytes(), np.array(grads).tobytes(), f.batch_input_grads.tobytes())
        )
    assert results[1] == results[0] and results[2] == results[0]


def test_the_parameters_gradients_are_written_into_PG_not_added_to_zeros():  # noqa: N802
    model = MLP(2, [16, 16, 1])
    samples = [[x, 1.0] for [x] in points(20, 2)]
    source = check_against_eager(
        lambda x, y: (1 + -y * model(x)).relu(), model.parameters(), samples
    )
    assert "PG = np.empty(" in source
    assert len(re.findall(r"block_products\(g, x\d+, out=PG\[\d+:\d+\]\)", source)) == 3
    assert len(re.findall(r"block_sums\(g, out=PG\[\d+:\d+\]\)", source)) == 3
    assert not re.search(r"PG\[[^\]]*\] \+=", source)
    assert "G[:" not in source  # the inputs' rows are not zeroed: every one is written


def test_a_batch_of_several_chunks_keeps_its_own_copy_of_the_inputs():
    """backward() runs the forward pass of each chunk again: from the numbers map() had,
    even if the caller changed its array in between."""
    w = Value(0.5)
    xs = np.linspace(-2, 2, 300)
    f = opgraph.compile(lambda x: (x * w).relu() * x, 1.0)
    f.chunk_size = 128
    f.map(xs)
    f.backward()
    expected = w.grad
    w.grad = 0.0
    f.map(xs)
    xs[:] = 7.0  # after map, before backward
    f.backward()
    assert w.grad == expected


def test_detect_anomaly_names_an_inline_relu_and_the_sample():
    def fn(x):
        h = (x * 2.0).relu()
        h.label = "hidden"
        return h * 3.0

    f = opgraph.compile(fn, 1.0)
    assert np.asarray(f.map([1.0, -1.0])).tolist() == [6.0, 0.0]
    with opgraph.detect_anomaly(), pytest.raises(AnomalyError, match=r"'mul'.*sample 1"):
        f.map([1.0, math.inf])  # x * 2.0 is the first node to make inf
    g = opgraph.compile(lambda x: x.relu().relu() * 1.0, 1.0)
    with opgraph.detect_anomaly(), pytest.raises(AnomalyError, match=r"'relu'.*sample 2"):
        g.map([1.0, 2.0, math.nan])
    assert not KERNEL_CALL.search(g.batch_source or "")


def test_views_follow_the_batch_size_and_the_parameters_between_maps():
    """The views of V, G and PV are made once for a batch's arrays: a batch of another
    size (other arrays) gets new ones, and new parameter values are read into PV."""
    model = MLP(2, [4, 1])
    params = model.parameters()

    def fn(x):
        out = model(x)
        assert isinstance(out, Value)  # one output neuron
        return out.relu()

    f = opgraph.compile(fn, [0.0, 0.0])
    f.chunk_size = 128
    for n, scale in [(7, 1.0), (3, 1.0), (7, -2.0), (300, 0.5), (7, 0.5), (300, 1.0)]:
        for p in params:
            p.data = p.data * scale + 0.1
        xs = points(n, 2, seed=n)
        weights = np.linspace(-1, 1, n)
        for p in params:
            p.grad = 0.0
        outputs = f.map(np.array([x for [x] in xs]))
        f.backward(weights=weights)
        grads = [p.grad for p in params]
        expected, expected_grads, expected_inputs = eager_batch(fn, params, xs, list(weights))
        assert_close(outputs, expected, what="output", rows=True)
        assert_close(grads, expected_grads, what="parameter grad", rows=True)
        assert_close(f.batch_input_grads, expected_inputs, what="input grad", rows=True)
    assert "= views(V, G, PV, 0)" in (f.batch_source or "")


def test_a_graph_without_op_groups_still_batches():
    """No slices to name: the output is an input or a parameter."""
    w = Value(2.0)
    f = opgraph.compile(lambda x: x, 1.0)
    assert np.asarray(f.map([1.0, -0.0])).tolist() == [1.0, -0.0]
    f.backward(weights=np.array([3.0, 4.0]))
    assert f.batch_input_grads.tolist() == [[3.0], [4.0]]
    g = opgraph.compile(lambda x: w, 1.0)
    assert np.asarray(g.map([1.0, 5.0])).tolist() == [2.0, 2.0]
    g.backward()
    assert w.grad == 2.0 and g.batch_input_grads.tolist() == [[0.0], [0.0]]


# The ops of tests/dags.py that compute the same IEEE-754 operations batched as eager, so that
# a graph of them without parameters (no matrix products) gives the same outputs to the bit.
EXACT_OPS = {
    name: OPS[name]
    for name in ("add", "sub", "mul", "neg", "add_number", "radd", "rsub", "rmul", "relu")
}
ANY = st.one_of(
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf]),
    st.floats(-3.0, 3.0, allow_nan=False, allow_subnormal=True),
)


@settings(max_examples=60, deadline=None)
@given(programs(EXACT_OPS, max_leaves=3, max_steps=14), st.lists(ANY, min_size=1, max_size=7))
def test_random_relu_dags_with_special_inputs_equal_eager(program, values):
    """Random DAGs of tests/dags.py, relu among exact ops, on inputs that are 0.0, -0.0,
    nan, inf or anything: the outputs to the bit, the input gradients to 1e-12 (an input read
    by several nodes sums its gradients in another order)."""
    k = len(program.leaves)
    samples = [[values[(i + j) % len(values)] for j in range(k)] for i in range(len(values))]

    def fn(*xs):  # dags.run, without its reads of relu's inputs (a compile refuses them)
        nodes = list(xs)
        for op, args in program.steps:
            nodes.append(EXACT_OPS[op][1](*[nodes[i] for i in args]))
        return sum(nodes[k:])

    f = opgraph.compile(fn, *program.leaves)
    outputs = f.map(*[[s[j] for s in samples] for j in range(k)])
    f.backward(weights=np.linspace(-1.0, 2.0, len(samples)))
    expected, _, expected_inputs = eager_batch(fn, [], samples, np.linspace(-1, 2, len(samples)))
    assert_same(outputs, expected, "output")
    assert_close(f.batch_input_grads, expected_inputs, what="input grad", rows=True)


def test_parameters_summed_into_PG_rows_no_slice_assigns_start_from_zero():  # noqa: N802
    """A parameter read by several nodes of a group is added into its row of PG (`+=`), so
    that row is zeroed first, while a layer's weights are written into theirs."""
    w, b = Value(0.5), Value(-0.25)
    layer = [Value(0.1 * k) for k in range(4)]

    def fn(x):
        h = sum((wk * xk for wk, xk in zip(layer[:2], x, strict=True)), b)
        g = sum((wk * xk for wk, xk in zip(layer[2:], x, strict=True)), b)
        return (h * w).relu() + (g * w).relu() + (x[0] * w).relu()

    samples = [[x] for [x] in points(200, 2, seed=7)]
    source = check_against_eager(fn, [w, b, *layer], samples)
    assert "PG = np.zeros(" in source and re.search(r"PG\[\d+\] \+=", source)
