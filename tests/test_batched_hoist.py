"""Compiled.map computes the nodes that depend on no input (only on parameters and constants)
once per batch, not as a row of n numbers per node.

A learner adds a regulariser to each sample's loss: `hinge + 1e-4 * sum(p.relu() ...)`, an
L1-like term of 337 relus and 337 adds. Those nodes are the same for every sample: batched
replay runs them once, as straight-line Python on floats (the same operations as eager
mode), writes the values the batch reads beside the parameters, and in backward takes the
batch's total of their gradients (per block of samples, as a parameter's) down to the
parameters. Compared with eager opgraph run on each sample alone, to 1e-12 relative.
"""

from __future__ import annotations

import math
import random
import re
import warnings

import numpy as np
import pytest
from conftest import plugin
from dags import OPS, programs, run
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_batched import build, eager_batch
from test_batched_matmul import bits_by_chunk, check_against_eager, points

import opgraph
from opgraph import AnomalyError, Engine, Op, OpError, Value
from opgraph.nn import MLP

HOISTED = "def replay(PV):"  # the hoisted nodes' code, after the batch's in batch_source
GROUP = re.compile(r"# \d+ x \w+, depth")  # one numpy group of n-wide rows


def batch_part(source: str) -> str:
    """The numpy code of the batch, without the hoisted nodes' code."""
    return source.split(HOISTED)[0]


def l1_relu(params):
    return 1e-4 * sum(p.relu() for p in params)


def l1_sqrt(params):
    return 1e-4 * sum((p * p + 1e-8) ** 0.5 for p in params)


@pytest.mark.parametrize("penalty", [l1_relu, l1_sqrt])
def test_an_l1_penalty_in_the_per_sample_loss_is_computed_once_per_batch(penalty):
    model = MLP(2, [16, 16, 1], rng=random.Random(3))
    params = model.parameters()

    def loss(x):
        return (1 + -1.0 * model(x)).relu() + penalty(params)

    source = check_against_eager(loss, params, points(40, 2))
    batch = batch_part(source)
    # The numpy code is the network's and one add of the penalty: no row per term (before:
    # a group per add of the 337-term chain, 340 groups, and the penalty's terms as rows).
    assert len(GROUP.findall(batch)) == 6  # relu, relu, mul, add, relu; the penalty's add
    assert len(batch.splitlines()) < 100
    # Once per batch: the terms' op is one numpy call over the parameters, their sum one.
    assert "337 x relu, one numpy call" in source or "337 x pow, one numpy call" in source
    assert "float(h" in source and ".sum())" in source


def test_stored_parameters_get_the_penalty_gradients_too():
    """`MLP(stored=True)`: the parameters' values are read from, and their gradients added
    to, the ParameterStore's arrays; the hoisted nodes' part is added in before, once."""
    model = MLP(2, [4, 1], rng=random.Random(8), stored=True)
    plain = MLP(2, [4, 1], rng=random.Random(8))

    def loss(m):
        return lambda x: (1 + -1.0 * m(x)).tanh() + l1_sqrt(m.parameters()) * 100.0

    source = check_against_eager(loss(model), model.parameters(), points(30, 2, seed=3))
    assert HOISTED in source
    X = np.random.default_rng(2).normal(size=(50, 2))
    grads = []
    for m in (model, plain):
        m.zero_grad()
        f = opgraph.compile(loss(m), [0.0, 0.0])
        f.map(X)
        f.backward()
        grads.append([p.grad for p in m.parameters()])
    assert grads[0] == grads[1]  # the same numbers, to the bit
    assert model.store is not None and model.store.grad.tolist() == grads[0]


def test_a_hand_written_net_with_computed_weights_and_penalties():
    """Weights computed from parameters (`tanh` of a raw weight, read by the products with
    the inputs), a node read by the batch and by other hoisted nodes, a node of constants
    only, a parameter used twice, a power and an exp: every gradient as eager's."""
    rng = random.Random(5)
    raw = [[Value(rng.uniform(-1, 1)) for _ in range(3)] for _ in range(4)]
    v = [Value(rng.uniform(-1, 1)) for _ in range(4)]
    scale = Value(0.7)
    params = [p for row in raw for p in row] + v + [scale]

    def net(x):
        weights = [[w.tanh() * scale for w in row] for row in raw]  # hoisted, read by the batch
        hidden = [sum(w * xi for w, xi in zip(row, x, strict=True)).relu() for row in weights]
        out = sum(h * vi for h, vi in zip(hidden, v, strict=True))
        size = sum(w * w for row in weights for w in row)  # reads the hoisted weights again
        constant = Value(2.0) * 3.0  # no parameter: computed once, no gradient
        decay = (scale * scale + 1.0).log() * constant + (-scale).exp()
        return (out - 1.0) ** 2 + 1e-2 * size + decay * x[0]

    source = check_against_eager(net, params, points(25, 3, seed=7))
    assert HOISTED in source
    assert "np.matmul(" in batch_part(source)  # the computed weights still make a layer


def test_outputs_computed_once_and_a_root_that_reads_no_input():
    w = Value(0.3)
    f = opgraph.compile(lambda x: (w.tanh() * 2.0, x * w), 1.0)
    first, second = f.map([1.0, 2.0, 3.0])
    assert first.tolist() == [math.tanh(0.3) * 2.0] * 3
    assert second.tolist() == [x * 0.3 for x in (1.0, 2.0, 3.0)]
    f.backward(weights=[1.0, 2.0, 0.5])
    expected = Value(0.3)
    (expected.tanh() * 2.0).backward()
    assert w.grad == pytest.approx(3.5 * expected.grad, rel=1e-15)
    assert f.batch_input_grads.tolist() == [[0.0]] * 3


def test_chunks_give_the_same_bits_as_one_chunk():
    model = MLP(3, [8, 1], rng=random.Random(1))
    params = model.parameters()
    f = opgraph.compile(lambda x: model(x).tanh() + l1_sqrt(params), [0.1, 0.2, 0.3])
    X = np.random.default_rng(4).normal(size=(1000, 3))
    results = bits_by_chunk(f, params, X)
    assert HOISTED in (f.batch_source or "")
    assert results[1] == results[0] and results[2] == results[0]


def test_an_op_without_array_kernels_computed_once_is_not_warned_about():
    """Hoisted nodes are Python on floats: an op with only scalar functions is at home."""
    cube = Op("cube", lambda a: a * a * a, lambda out, a: (3 * a * a,))
    engine = Engine(plugins=[plugin("cubes", cube)], entry_points=False)
    w = engine.value(0.5)
    f = opgraph.compile(lambda x: w.cube() * x, 1.0, engine=engine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f.map([1.0, 2.0]).tolist() == [0.125, 0.25]
    f.backward()
    assert w.grad == 3 * 0.25 * 3.0


def test_an_error_in_a_hoisted_node_names_the_op_plugin_and_node():
    def strict_sqrt(a):
        return math.sqrt(a)

    op = Op("strict_sqrt", strict_sqrt, lambda out, a: (0.5 / out,))
    engine = Engine(plugins=[plugin("strict", op)], entry_points=False)
    w = engine.value(4.0)

    def fn(x):
        y = w * 1.0
        y.label = "scaled"
        return y.strict_sqrt() * x

    f = opgraph.compile(fn, 1.0, engine=engine)
    assert f.map([1.0, 2.0]).tolist() == [2.0, 4.0]
    w.data = -1.0
    with pytest.raises(OpError, match=r"'strict_sqrt' \(plugin 'strict'\).*'scaled'.*domain"):
        f.map([1.0, 2.0])


def test_a_derivative_with_the_wrong_count_in_a_hoisted_node_is_named():
    def wrong_above_one(out, a):  # (registration probes it at 0.5)
        return (2.0,) if a < 1 else (2.0, 0.0)

    op = Op("twice", lambda a: 2.0 * a, wrong_above_one)
    engine = Engine(plugins=[plugin("twos", op)], entry_points=False)
    w = engine.value(1.5)
    f = opgraph.compile(lambda x: w.twice() * x, 1.0, engine=engine)
    f.map([1.0, 2.0])
    with pytest.raises(OpError, match=r"'twice' \(plugin 'twos'\).*backward.*1 partial"):
        f.backward()


def test_detect_anomaly_names_a_hoisted_node_that_overflows():
    big = Value(1e200)

    def fn(x):
        s = big.exp()
        s.label = "growth"
        return s * x

    f = opgraph.compile(fn, 1.0)
    with opgraph.detect_anomaly(), pytest.raises(AnomalyError, match=r"'exp'.*growth"):
        f.map([1.0, 2.0])
    assert HOISTED in (f.batch_source or "")


def test_detect_anomaly_checks_the_gradient_of_a_hoisted_node():
    """d sqrt(p) / dp is inf at p = 0: a finite forward, an infinite gradient, named."""
    zero = Value(0.0)

    def fn(x):
        root = zero**0.5
        root.label = "root"
        return root * x + x

    f = opgraph.compile(fn, 1.0)
    with opgraph.detect_anomaly():
        assert f.map([1.0, 2.0]).tolist() == [1.0, 2.0]
        with pytest.raises(AnomalyError, match=r"'pow'.*non-finite gradient.*root"):
            f.backward()


@settings(max_examples=80, deadline=None)
@given(programs(max_leaves=5), programs(max_leaves=3), st.integers(1, 6), st.integers(0, 2**16))
def test_random_graphs_with_hoisted_parts_batched_equal_eager(program, penalty, n, seed):
    """A random DAG over parameters and one input (its steps over parameters only are
    hoisted), plus a random DAG over parameters only, added in and multiplied by a node of
    the input: every node of the second is computed once per batch."""
    rng = np.random.default_rng(seed)
    params = [Value(x) for x in program.leaves[:-1]]
    extra = [Value(x) for x in penalty.leaves]
    start = program.leaves[-1]
    samples = [[start + s] for s in rng.uniform(-0.5, 0.5, n).tolist()]
    for sample in samples:  # relu's kink is where float rounding may flip a branch
        relu_inputs = run(program, Value, OPS, [p.data for p in params] + sample).relu_inputs
        assume(all(abs(r) > 1e-9 for r in relu_inputs))

    def fn(x):
        return build(program, [*params, x]) + build(penalty, extra) * (x * 0.5 + 1.0)

    # A hoisted node's gradient is its partial times the batch's total, where eager adds
    # each sample's product: with an infinite partial, eager's inf - inf (nan) is then
    # inf or -inf. Both are non-finite (detect_anomaly stops either); compared where finite.
    weights = np.random.default_rng(0).uniform(-1, 1, n)  # (check_against_eager's)
    outputs, grads, _ = eager_batch(fn, params + extra, samples, list(weights))
    assume(all(math.isfinite(v) for v in [*outputs, *grads]))
    with np.errstate(all="ignore"):
        source = check_against_eager(fn, params + extra, samples, weights, nonzero=False)
    assert HOISTED in source


# --- many hoisted nodes of one op: one numpy call, and their sum one numpy sum ---------------

UNARY = ["relu", "tanh", "exp", "sigmoid", "square", "sqrt", "rmul", "add_number", "neg"]


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(UNARY),
    st.lists(st.integers(0, 11), min_size=8, max_size=20),
    st.lists(st.integers(0, 30), min_size=20, max_size=20),
    st.lists(st.floats(-2, 2), min_size=12, max_size=12),
    st.booleans(),
    st.integers(1, 5),
)
def test_random_sums_of_an_op_over_parameters_batched_equal_eager(
    name, chosen, order, values, shared, n
):
    """An op over 8 to 20 parameters (repeats allowed), summed in a random association
    order with a constant and a parameter among the terms; with `shared`, some terms are
    also read by the batch (their values unpacked) and by a second hoisted sum."""
    params = [Value(v) for v in values]
    op = OPS[name][1]

    def fn(xs):
        x = xs[0]
        terms = [op(params[k]) for k in chosen]
        others = [t * x for t in terms[:3]] if shared else []
        second = sum(terms[::2]) * 0.5 if shared else 0.0
        terms += [0.25, params[11]]
        for draw in order[: len(terms) - 1]:  # a random association order
            k = draw % (len(terms) - 1)
            terms[k : k + 2] = [terms[k] + terms[k + 1]]
        return terms[0] * (x * x + 1.0) + sum(others) + second

    source = check_against_eager(fn, params, points(n, 1, seed=n), nonzero=False)
    if name != "square":  # (squares of parameters nothing else reads make a dot product)
        assert HOISTED in source


def test_a_vector_of_hoisted_nodes_that_overflows_names_the_node():
    params = [Value(0.1 * k) for k in range(10)]
    params[6].data = 1e3

    def fn(x):
        terms = [p.exp() for p in params]
        terms[6].label = "huge"
        return sum(terms) * x

    f = opgraph.compile(fn, 1.0)
    assert np.isinf(f.map([1.0])).all()
    with opgraph.detect_anomaly(), pytest.raises(AnomalyError, match=r"'exp'.*inf.*'huge'"):
        f.map([1.0, 2.0])
    assert "10 x exp, one numpy call" in (f.batch_source or "")


def test_a_vector_whose_gradient_is_infinite_names_the_node():
    params = [Value(1.0 + k) for k in range(9)] + [Value(0.0)]

    def fn(x):
        terms = [p**0.5 for p in params]
        terms[9].label = "root of zero"
        return sum(terms) * x

    f = opgraph.compile(fn, 1.0)
    with opgraph.detect_anomaly():
        f.map([1.0, 2.0])
        with pytest.raises(AnomalyError, match=r"'pow'.*non-finite gradient.*'root of zero'"):
            f.backward()
    assert "10 x pow, one numpy call" in (f.batch_source or "")


def _picky_engine(scalar_raises: bool = True) -> Engine:
    """An op that refuses numbers above 0.95, with an array kernel that refuses an array
    holding one (and whose scalar forward refuses nothing if not `scalar_raises`)."""

    def forward(a):
        if scalar_raises and a > 0.95:
            raise ValueError(f"too large: {a}")
        return 2.0 * a

    def array_forward(a):
        if (a > 0.95).any():
            raise ValueError("too large, somewhere")
        return 2.0 * a

    picky = Op(
        "picky",
        forward,
        derivative=lambda out, a: (2.0,),
        array_forward=array_forward,
        array_derivative=lambda out, a: (np.full_like(a, 2.0),),
    )
    return Engine(plugins=[plugin("pickers", picky)], entry_points=False)


@pytest.mark.parametrize("operand", ["parameters", "a vector", "hoisted nodes, one by one"])
def test_an_error_in_a_vector_names_the_node_that_raised_not_the_first(operand):
    """Ten picky nodes are one numpy call; the eighth's parameter grows past what the op
    takes. The error names that node and its number now, as compiled replay does, not the
    vector's first node with its recorded input."""
    engine = _picky_engine()
    params = [engine.value(0.05 * k, f"w{k}") for k in range(10)]

    def operands() -> list:
        if operand == "parameters":
            return params
        if operand == "a vector":
            return [p * 1.0 for p in params]  # ten muls, one numpy call
        return [p * 1.0 for p in params[:5]] + [p + 0.0 for p in params[5:]]  # lines

    def fn(x):
        return sum(engine.ops.picky(a) for a in operands()) * x

    f = opgraph.compile(fn, 1.0, engine=engine)
    f.map([1.0, 2.0])
    assert "10 x picky, one numpy call" in (f.batch_source or "")
    params[7].data = 0.97
    with pytest.raises(OpError) as batched:
        f.map([1.0, 2.0])
    with pytest.raises(OpError) as compiled:
        f(1.0)
    message = str(batched.value)
    assert "op 'picky' (plugin 'pickers') failed in batched forward" in message
    assert "ValueError: too large: 0.97" in message
    if operand == "parameters":
        assert "inputs (0.97 (label 'w7'))" in message
    node = re.search(r"at node #\d+", str(compiled.value))
    assert node is not None and node.group() in message  # the node compiled replay names


def test_an_array_kernel_alone_that_raises_in_a_vector_names_the_vector():
    engine = _picky_engine(scalar_raises=False)
    params = [engine.value(0.05 * k, f"w{k}") for k in range(10)]
    f = opgraph.compile(lambda x: sum(p.picky() for p in params) * x, 1.0, engine=engine)
    params[7].data = 0.97
    with pytest.raises(OpError, match=r"and 9 other node\(s\) of one numpy call: ValueError"):
        f.map([1.0, 2.0])


def test_a_sum_of_thousands_of_parameters_is_written_in_lines_python_compiles():
    """`sum(params)`: 3,000 terms, no op to vectorise, written 100 terms to a line (one
    line of 3,000 `+` is too deep for Python's compiler)."""
    params = [Value(math.sin(k)) for k in range(3000)]
    f = opgraph.compile(lambda x: (sum(params) + sum(p.relu() for p in params)) * x, 1.0)
    out = f.map([1.0, 2.0])
    f.backward()
    total = sum(p.data for p in params) + sum(max(p.data, 0.0) for p in params)
    assert out.tolist() == pytest.approx([total, 2 * total], rel=1e-12)
    assert [p.grad for p in params[:4]] == [3.0 * (1 + (p.data > 0)) for p in params[:4]]
