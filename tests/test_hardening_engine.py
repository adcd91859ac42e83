"""The engine never holds a non-float nor gives a silently wrong gradient.

Numbers of any real type become floats as they enter a node; anything else is refused with an
error naming the node or the op. Gradients stay right after a pickle round trip into a fresh
process, after copies, with a plugin derivative returning a complex, and with passes from
several threads.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import subprocess
import sys
from array import array
from fractions import Fraction
from numbers import Real

import pytest
from conftest import engine, in_threads, plugin
from dags import programs, run
from hypothesis import given, settings
from hypothesis import strategies as st

import opgraph
from opgraph import (
    Engine,
    Op,
    OpError,
    Value,
    detect_anomaly,
    grad_enabled,
    no_grad,
    topological_order,
)
from opgraph.ops import check


class Float32:
    """A real number that is not a float subclass, as numpy's float32 and int64 are."""

    def __init__(self, x: float):
        self.x = x

    def __float__(self) -> float:
        return float(self.x)

    def __mul__(self, other):
        return Float32(self.x * float(other))

    __rmul__ = __mul__

    def __rsub__(self, other):
        return Float32(float(other) - self.x)

    def __repr__(self) -> str:
        return f"Float32({self.x})"


Real.register(Float32)


def engine_with(*ops, **options) -> Engine:
    return engine(plugin("hardening", *ops), **options)


# ---------------------------------------------------------------------------------------------
# A. data and grad are always Python floats


@pytest.mark.parametrize(
    "number, expected",
    [
        (3, 3.0),
        (True, 1.0),
        (Fraction(1, 4), 0.25),
        (Float32(0.5), 0.5),
        (10**400, math.inf),
        (-(10**400), -math.inf),
    ],
)
def test_data_and_grad_become_floats_on_assignment(number, expected):
    v = Value(1.0)
    v.data = number
    v.grad = number
    assert type(v.data) is float and v.data == expected
    assert type(v.grad) is float and v.grad == expected


def test_a_float_subclass_is_stored_as_a_plain_float():
    class Float64(float):  # numpy's float64 is a float subclass
        pass

    v = Value(Float64(2.0))
    v.data = Float64(3.0)
    v.grad = Float64(4.0)
    assert (type(v.data), type(v.grad)) == (float, float)
    assert (v.data, v.grad) == (3.0, 4.0)


def test_an_sgd_step_with_a_numpy_like_rate_keeps_floats():
    # The reported symptom: `p.data -= np.float32(lr) * p.grad` left a float32 in the graph.
    w = Value(2.0, label="w")
    (w * w).backward()
    w.data -= Float32(0.1) * w.grad
    assert type(w.data) is float and w.data == pytest.approx(1.6)
    y = w * 3.0
    assert type(y.data) is float


def test_a_traced_training_step_with_a_numpy_like_rate_sends_only_floats():
    # What the tracing server's drain task packs: every data and grad of every event.
    from opgraph.trace import Tracer, event_maps, records

    engine = Engine(name="traced-floats", entry_points=False)
    tracer = Tracer(engine)
    engine.tracer = tracer
    w = engine.value(0.5, label="w")
    for _ in range(2):
        w.grad = 0
        loss = (w * 3.0 - 1.0) ** 2
        loss.backward()
        w.data -= Float32(0.1) * w.grad
        opgraph.touch([w])
    events = event_maps(records(tracer.drain()), 1, tracer.t0)
    numbers = [
        e[key] for e in events if e["type"] != "step" for key in ("data", "grad") if key in e
    ]
    assert numbers and all(type(x) is float for x in numbers)
    assert any(e["type"] == "data" for e in events)  # the update was sent
    # A step's numbers are packed float64 (docs/protocol.md), w's among them as a float.
    step = next(e for e in events if e["type"] == "step")
    assert type(step["data"]) is bytes and 0.5 in array("d", step["data"]).tolist()


@pytest.mark.parametrize("bad", ["1.5", 1j, None, [1.0], (1.0,), Value(1.0)])
@pytest.mark.parametrize("attribute", ["data", "grad"])
def test_non_numbers_are_refused_with_the_node_named(bad, attribute):
    v = Value(1.0, label="w1")
    with pytest.raises(TypeError, match=rf"the {attribute} of Value 'w1' must be a real number"):
        setattr(v, attribute, bad)
    assert (v.data, v.grad) == (1.0, 0.0)  # unchanged
    unlabelled = Value(1.0)
    with pytest.raises(TypeError, match=rf"Value #{unlabelled.id} must"):
        setattr(unlabelled, attribute, bad)


def test_numpy_scalars_become_floats():
    np = pytest.importorskip("numpy")
    w = Value(1.0)
    w.data -= np.float32(0.5) * w.grad
    w.grad = np.int64(3)
    assert (type(w.data), type(w.grad)) == (float, float)
    with pytest.raises(TypeError, match="must be a real number"):
        w.data = np.array([1.0])


def test_micrograd_training_code_runs_unchanged():
    w, b = Value(0.5), Value(0.0)
    for _ in range(3):
        w.grad = 0.0
        b.grad = 0.0
        loss = (w * 2.0 + b - 1.0) ** 2
        loss.backward()
        for p in (w, b):
            p.data += -0.1 * p.grad
    assert type(w.data) is float and abs(w.data * 2.0 + b.data - 1.0) < 0.5


# ---------------------------------------------------------------------------------------------
# B. Pickling and copying: fresh ids in creation order, so backward stays right

# Run in a fresh interpreter: load the pickled graph, extend it with new nodes (reading
# both the output and an inner node), backpropagate, and print every grad.
FRESH_PROCESS = """
import json, pickle, sys
from opgraph import Value
nodes, output = pickle.load(sys.stdin.buffer)
new = Value(0.75, label="new")
top = output * new + nodes[-1] * nodes[0] + new.tanh()
top.backward()
print(json.dumps({"grads": [n.grad for n in nodes], "new": new.grad, "top": top.data}))
"""


def extend(nodes, output):
    """The same extension as FRESH_PROCESS, in this process."""
    new = Value(0.75, label="new")
    top = output * new + nodes[-1] * nodes[0] + new.tanh()
    top.backward()
    return {"grads": [n.grad for n in nodes], "new": new.grad, "top": top.data}


def assert_same_gradients(got, expected):
    assert got["top"] == expected["top"]
    assert got["new"] == pytest.approx(expected["new"], rel=1e-9, abs=1e-12)
    assert got["grads"] == pytest.approx(expected["grads"], rel=1e-9, abs=1e-12)


@settings(max_examples=10, deadline=None)
@given(programs())
def test_a_pickled_graph_extended_in_a_fresh_process_gets_the_right_gradients(program):
    for _ in range(100):  # ids here beyond those the fresh process hands its new nodes
        Value(0.0)
    built = run(program, Value)
    payload = pickle.dumps((built.nodes, built.output))
    expected = extend(built.nodes, built.output)  # the original graph, in this process
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], input=payload, capture_output=True, check=True
    )
    assert_same_gradients(json.loads(result.stdout), expected)
    nodes, output = pickle.loads(payload)  # and loaded in this process, where ids are high
    assert_same_gradients(extend(nodes, output), expected)


@settings(max_examples=30, deadline=None)
@given(programs(), st.sampled_from(["copy", "deepcopy", "pickle"]))
def test_copied_graphs_get_the_right_gradients(program, how):
    built = run(program, Value)
    if how == "copy":  # a shallow copy of each node shares its parents with the original
        nodes = [copy.copy(n) for n in built.nodes]
        output = copy.copy(built.output)
    else:
        dup = copy.deepcopy if how == "deepcopy" else lambda x: pickle.loads(pickle.dumps(x))
        nodes, output = dup((built.nodes, built.output))
    expected = extend(built.nodes, built.output)
    for node in [*built.nodes, *topological_order(built.output)]:
        node.grad = 0.0
    # A copy of the output backpropagates into the original graph (copy) or its own (deepcopy).
    assert_same_gradients(extend(built.nodes if how == "copy" else nodes, output), expected)


def test_unpickled_nodes_take_fresh_ids_parents_first():
    x = Value(2.0, label="x")
    shared = x * x
    out = shared * shared + shared
    loaded = pickle.loads(pickle.dumps(out))
    order = topological_order(loaded)
    assert all(n.id > out.id for n in order)  # newer than anything made before the load
    for node in order:
        assert all(parent.id < node.id for parent in node.parents)
    leaf = next(n for n in order if n.label == "x")
    assert sum(n is leaf for n in order) == 1  # the shared node stays shared
    loaded.backward()
    assert leaf.grad == 4 * 2.0**3 + 2 * 2.0  # d(x^4 + x^2)/dx


def test_deepcopy_of_a_deep_graph_does_not_recurse_and_gives_the_same_gradients_to_the_bit():
    w = Value(0.5, label="w")
    chain = w
    for k in range(3000):  # deeper than the recursion limit allows copy.deepcopy to go
        chain = (chain * 0.999 + w * 1e-3).tanh() if k % 2 else chain * w + 0.1
    memo: dict = {}
    twin = copy.deepcopy(chain, memo)
    chain.backward()
    twin.backward()
    w_twin = memo[id(w)]
    assert w_twin is not w and w_twin.id > chain.id
    assert w_twin.grad == w.grad and w.grad != 0.0


def test_a_pickled_op_missing_from_the_loading_engine_is_a_clear_error():
    op = check(Op("cube", lambda a: a**3, lambda out, a: (3 * a * a,)), "gone")
    node = Value(2.0)  # a node as another process's plugin made it
    node._opdef = op
    node._a = Value(1.0)
    with pytest.raises(opgraph.PluginError, match=r"op 'cube' of plugin 'gone'.*no plugin"):
        pickle.loads(pickle.dumps(node))


# ---------------------------------------------------------------------------------------------
# B. A derivative that returns a non-real number


def bad_derivative_ops(partial):
    return [
        Op("bad1", lambda a: 2.0 * a, lambda out, a: (partial,)),
        Op("bad2", lambda a, b: a + b, lambda out, a, b: (1.0, partial)),
        Op("bad3", lambda a, b, c: a + b + c, lambda out, a, b, c: (1.0, 1.0, partial)),
    ]


@pytest.mark.parametrize("partial", [-0.75j, "1.0", None, [1.0]])
@pytest.mark.parametrize("anomaly", [False, True])
@pytest.mark.parametrize("op", ["bad1", "bad2", "bad3"])
def test_a_non_real_partial_raises_op_error_and_changes_no_grad(partial, anomaly, op):
    engine = engine_with(*bad_derivative_ops(partial), detect_anomaly=anomaly)
    a, b, c = engine.value(1.0, "a"), engine.value(2.0, "b"), engine.value(3.0, "c")
    operands = {"bad1": (a,), "bad2": (a, b), "bad3": (a, b, c)}[op]
    out = getattr(engine.ops, op)(*operands)
    out.label = "out"
    top = out * a  # a good node above the bad one: its pass starts fine
    a.grad, b.grad, c.grad = 0.5, 0.25, 0.125  # left by an earlier pass
    with pytest.raises(OpError) as info:
        top.backward()
    message = str(info.value)
    assert f"op {op!r} (plugin 'hardening')" in message and "node 'out'" in message
    assert "must be a real number" in message and type(partial).__name__ in message
    assert (a.grad, b.grad, c.grad, out.grad, top.grad) == (0.5, 0.25, 0.125, 0.0, 0.0)


def test_a_non_real_partial_under_the_detect_anomaly_context_is_an_op_error():
    engine = engine_with(*bad_derivative_ops(1j))
    x = engine.value(1.0, "x")
    y = engine.ops.bad1(x)
    with detect_anomaly(), pytest.raises(OpError, match=r"op 'bad1'.*must be a real number"):
        y.backward()
    assert x.grad == 0.0


def test_a_real_partial_of_another_type_is_converted():
    half = Op("half", lambda a: a / 2, lambda out, a: (Fraction(1, 2),))
    twice = Op("twice", lambda a, b: a + b, lambda out, a, b: (Float32(1.0), True))
    engine = engine_with(half, twice)
    x = engine.value(3.0)
    y = engine.ops.twice(engine.ops.half(x), x)
    y.backward()
    assert type(x.grad) is float and x.grad == 1.5
    with detect_anomaly():
        y.backward()
    assert type(x.grad) is float and x.grad == 3.0


def test_a_non_real_partial_in_a_compiled_backward_is_refused_naming_the_parameter():
    engine = engine_with(*bad_derivative_ops(1j))
    w = engine.value(1.0, label="w")
    compiled = opgraph.compile(lambda x: engine.ops.bad1(w * x), 2.0, engine=engine)
    compiled(2.0)
    # the op that made it, as eager names it, and the parameter it would have reached
    pattern = r"op 'bad1'.*partial derivative 1j of type complex.*grad of Value 'w'"
    with pytest.raises(OpError, match=pattern):
        compiled.backward()
    assert w.grad == 0.0


# ---------------------------------------------------------------------------------------------
# B. backward(gradient=...)


@pytest.mark.parametrize("bad", ["2", b"2", 2j, None, [2.0]])
def test_backward_gradient_must_be_a_real_number(bad):
    x = Value(3.0)
    y = x * x
    with pytest.raises(TypeError, match=r"backward\(gradient=\.\.\.\) must be a real number"):
        y.backward(bad)
    assert (x.grad, y.grad) == (0.0, 0.0)
    compiled = opgraph.compile(lambda v: v * v, 3.0)
    compiled(3.0)
    with pytest.raises(TypeError, match="must be a real number"):
        compiled.backward(bad)


@pytest.mark.parametrize("gradient", [2, True, Fraction(1, 2), Float32(0.5)])
def test_backward_gradient_of_any_real_type_is_converted(gradient):
    x = Value(3.0)
    (x * x).backward(gradient)
    assert type(x.grad) is float and x.grad == 6.0 * float(gradient)


# ---------------------------------------------------------------------------------------------
# B. Backward from several threads


def mlp_loss(seed: int):
    """A small network's loss: a few hundred nodes, its leaves, and the parameters."""
    params = [Value(((seed * 7 + i * 13) % 17) / 17 - 0.5) for i in range(40)]
    total = Value(0.0)
    for k in range(8):
        hidden = [
            (params[j] * (k / 8) + params[j + 20] * 0.3 + 0.1).tanh() for j in range(0, 20, 2)
        ]
        total = total + sum(h * params[j + 1] for j, h in zip(range(0, 20, 2), hidden, strict=True))
    return total, params


def test_one_graph_backpropagated_from_several_threads_gets_the_sequential_gradients(
    tight_switching,
):
    loss, params = mlp_loss(1)
    loss.backward()
    once = [p.grad for p in params]
    loss.zero_grad()
    for _ in range(4):
        loss.backward()
    sequential = [p.grad for p in params]
    assert sequential == pytest.approx([4 * g for g in once])
    loss.zero_grad()
    assert in_threads(*[loss.backward] * 4) == [None] * 4
    assert [p.grad for p in params] == sequential


def test_separate_and_overlapping_graphs_from_several_threads_stay_right(tight_switching):
    losses = [mlp_loss(seed) for seed in range(4)]
    expected = []
    for loss, params in losses:
        loss.backward()
        expected.append([p.grad for p in params])
        loss.zero_grad()
    assert in_threads(*[loss.backward for loss, _ in losses]) == [None] * len(losses)
    assert [[p.grad for p in params] for _, params in losses] == expected
    # Two losses sharing their parameters: each parameter gets both contributions.
    loss, params = mlp_loss(5)
    other = sum(p * p for p in params)
    loss.backward()
    other.backward()
    both = [p.grad for p in params]
    loss.zero_grad()
    other.zero_grad()
    assert in_threads(loss.backward, other.backward) == [None, None]
    assert [p.grad for p in params] == pytest.approx(both, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# C. no_grad() around a yield


def test_no_grad_around_a_yield_is_refused_rather_than_leaked_into_the_caller():
    # A generator shares its caller's context: a mode it entered around a yield stayed on in
    # the caller while the generator was paused there. It is refused where it is entered (more
    # in tests/test_hardening_run.py).
    def batches():
        with no_grad():
            yield 1
            yield 2

    gen = batches()
    with pytest.raises(opgraph.errors.ModeLeakError, match=r"no_grad\(\).*yield.*batches"):
        next(gen)
    assert grad_enabled()
    assert (Value(1.0) * 2).parents != ()


def test_no_grad_inside_the_generator_body_between_yields_does_not_leak():
    # The safe form the docs recommend: the mode wraps the computation, not the yield.
    def evaluations(xs):
        for x in xs:
            with no_grad():
                y = Value(x) * 2
            yield y

    for y in evaluations([1.0, 2.0]):
        assert grad_enabled()
        assert y.parents == ()
