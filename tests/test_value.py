"""The Value as a drop-in for micrograd's: parity, graph structure, accumulation, no_grad."""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import sys
import threading
from pathlib import Path

import micrograd.engine
import pytest
from conftest import engine, plugin
from dags import MICROGRAD_OPS, programs, run
from hypothesis import given, settings

import opgraph
from opgraph import Value, enable_grad, grad_enabled, no_grad, topological_order
from opgraph.stored import ParameterStore, StoredValue
from opgraph.value import Tag

# ---------------------------------------------------------------------------------------------
# The node itself


def test_value_attributes():
    v = Value(3)
    assert v.data == 3.0 and type(v.data) is float
    assert v.grad == 0.0 and type(v.grad) is float
    assert v.label == ""
    v.label = "w"
    assert v.label == "w"
    assert Value(2.5, label="x").label == "x"
    assert repr(Value(2.5, label="x")) == "Value(data=2.5, grad=0.0, label='x')"
    assert repr(Value(-1)) == "Value(data=-1.0, grad=0.0)"


def test_leaves_have_no_parents_and_no_op():
    v = Value(1.0)
    assert v._prev == () and v.parents == ()
    assert v._op == "" and v.op is None


def test_parents_are_an_ordered_tuple():
    a, b = Value(1.0, label="a"), Value(2.0, label="b")
    difference = a - b  # a + (-b), and -b is b * -1
    assert difference._prev[0] is a
    assert difference._prev[1]._prev[0] is b
    assert (b * a)._prev == (b, a)
    assert (a * b)._prev == (a, b)
    assert (a * b)._op == "*" and (a + b)._op == "+"  # micrograd's strings


def test_x_plus_x_has_two_parent_slots_and_gradient_two():
    x = Value(3.0)
    y = x + x
    assert y._prev == (x, x)
    y.backward()
    assert x.grad == 2.0


def test_x_times_x_gradient_is_two_x():
    x = Value(3.0)
    y = x * x
    assert y._prev == (x, x)
    y.backward()
    assert x.grad == 6.0


def test_x_to_the_x_uses_both_slots():
    # d(x**x)/dx = x**x (ln x + 1): the base slot and the exponent slot both contribute
    x = Value(2.0)
    y = x**x
    assert y._prev == (x, x)
    y.backward()
    assert x.grad == pytest.approx(4.0 * (math.log(2.0) + 1.0), rel=1e-14)


def test_constant_exponent_is_part_of_the_op():
    # `x ** 2` has one parent and `_op` names the exponent, as micrograd's '**2' does.
    x = Value(3.0)
    y = x**2
    assert y._prev == (x,)
    assert y._op == "**2" and (x**-1)._op == "**-1" and (x**0.5)._op == "**0.5"
    assert y.op.name == "pow" and y.op.constants == ((1, 2.0),)
    # a Value exponent is a parent in its own right
    z = x ** Value(2.0)
    assert len(z._prev) == 2 and z._op == "**"


def test_reflected_operators_make_constant_leaves():
    x = Value(2.0)
    for expr, expected in [
        (2 + x, 4.0),
        (2 - x, 0.0),
        (3 * x, 6.0),
        (3 / x, 1.5),
        (3**x, 9.0),
        (x + 2, 4.0),
        (x - 2, 0.0),
        (x * 3, 6.0),
        (x / 4, 0.5),
        (-x, -2.0),
    ]:
        assert expr.data == expected
        assert isinstance(expr, Value)
    # In 3 ** x the base is a constant leaf and x the exponent: d/dx = 3**x ln 3
    y = 3**x
    assert [p.data for p in y._prev] == [3.0, 2.0]
    y.backward()
    assert x.grad == pytest.approx(9 * math.log(3))


def test_ids_follow_creation_order():
    a = Value(1.0)
    b = a * 2
    c = b + a
    assert a.id < b.id < c.id


def test_topological_order_puts_parents_first_and_lists_each_node_once():
    a, b = Value(1.0), Value(2.0)
    c = a * b
    d = c + c + a
    order = topological_order(d)
    assert len(order) == len(set(order))
    position = {node: i for i, node in enumerate(order)}
    for node in order:
        for parent in node._prev:
            assert position[parent] < position[node]
    assert order[-1] is d
    assert {a, b, c} <= set(order)


def test_nodes_hash_by_identity():
    # micrograd's draw_dot puts nodes in sets; equal data must not merge two nodes.
    a, b = Value(1.0), Value(1.0)
    assert len({a, b}) == 2
    assert a != b


# ---------------------------------------------------------------------------------------------
# Gradient accumulation and zero_grad


def test_backward_twice_doubles_every_gradient():
    x, y = Value(1.5), Value(-2.0)
    z = (x * y + x.tanh()) ** 2
    z.backward()
    first = (x.grad, y.grad)
    z.backward()
    assert (x.grad, y.grad) == pytest.approx((2 * first[0], 2 * first[1]), rel=1e-15)


def test_minibatch_accumulation_over_separate_graphs():
    # What training code relies on: parameters shared by several graphs collect the sum.
    w = Value(0.5)
    losses = [(w * x - t) ** 2 for x, t in [(1.0, 2.0), (2.0, 1.0), (-1.0, 0.0)]]
    for loss in losses:
        loss.backward()
    expected = sum(2 * (0.5 * x - t) * x for x, t in [(1.0, 2.0), (2.0, 1.0), (-1.0, 0.0)])
    assert w.grad == pytest.approx(expected)


def test_backward_with_a_gradient_argument_scales():
    x = Value(2.0)
    (x * x).backward(3.0)
    assert x.grad == 12.0


def test_zero_grad_resets_every_node_of_the_graph():
    x, y = Value(1.5), Value(-2.0)
    mid = x * y
    z = mid.exp() + x
    z.backward()
    assert x.grad != 0 and mid.grad != 0
    z.zero_grad()
    assert all(node.grad == 0.0 for node in topological_order(z))
    z.backward()
    fresh_x = Value(1.5)
    (((fresh_x * Value(-2.0)).exp()) + fresh_x).backward()
    assert x.grad == fresh_x.grad


@settings(max_examples=40, deadline=None)
@given(program=programs())
def test_accumulation_and_zero_grad_on_random_graphs(program):
    built = run(program, Value)
    built.output.backward()
    once = [node.grad for node in built.nodes]
    built.output.backward()
    twice = [node.grad for node in built.nodes]
    for a, b in zip(once, twice, strict=True):
        assert b == pytest.approx(2 * a, rel=1e-12, abs=1e-300) or (math.isnan(a) and math.isnan(b))
    built.output.zero_grad()
    assert all(node.grad == 0.0 for node in topological_order(built.output))


@settings(max_examples=40, deadline=None)
@given(program=programs())
def test_topological_order_on_random_graphs(program):
    built = run(program, Value)
    order = topological_order(built.output)
    position = {node: i for i, node in enumerate(order)}
    assert len(position) == len(order), "a node listed twice"
    assert order[-1] is built.output
    assert set(built.nodes[len(program.leaves) :]) <= set(order)  # every step reaches the output
    for node in order:
        for parent in node._prev:
            assert position[parent] < position[node]


# ---------------------------------------------------------------------------------------------
# no_grad


def test_no_grad_records_no_graph():
    x = Value(2.0)
    with no_grad():
        assert not grad_enabled()
        y = x * 3 + 1
    assert grad_enabled()
    assert y.data == 7.0
    assert y._prev == () and y._op == ""
    z = x * 3
    assert z._prev == (x,) or len(z._prev) == 2


@settings(max_examples=40, deadline=None)
@given(program=programs())
def test_no_grad_computes_the_same_numbers_without_a_graph(program):
    recorded = run(program, Value)
    with no_grad():
        quiet = run(program, Value)
    for a, b in zip(recorded.nodes + [recorded.output], quiet.nodes + [quiet.output], strict=True):
        assert a.data == b.data or (math.isnan(a.data) and math.isnan(b.data))
        assert b._prev == () and b._op == ""


def test_no_grad_result_is_a_leaf_for_backward():
    x = Value(2.0)
    with no_grad():
        y = x * 3
    (y * x).backward()
    assert x.grad == 6.0  # only through the recorded multiplication
    assert y.grad == 2.0


def test_enable_grad_inside_no_grad():
    x = Value(2.0)
    with no_grad():
        with enable_grad():
            y = x * x
        z = x * x
    assert y._prev == (x, x)
    assert z._prev == ()


def test_no_grad_is_restored_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            raise ZeroDivisionError
    assert grad_enabled()
    assert (Value(1.0) * 2)._prev


def test_no_grad_is_per_thread():
    x = Value(2.0)
    inside = threading.Event()
    release = threading.Event()
    results = {}

    def quiet():
        with no_grad():
            inside.set()
            release.wait(30)
            results["quiet"] = x * 2

    thread = threading.Thread(target=quiet)
    thread.start()
    assert inside.wait(30)
    results["main"] = x * 2  # while the other thread is inside no_grad()
    release.set()
    thread.join(30)
    assert results["main"]._prev, "no_grad() of another thread leaked into this one"
    assert results["quiet"]._prev == ()


def test_no_grad_is_per_asyncio_task():
    x = Value(2.0)

    async def quiet(entered: asyncio.Event, release: asyncio.Event):
        with no_grad():
            entered.set()
            await release.wait()
            return x * 2

    async def recording(entered: asyncio.Event, release: asyncio.Event):
        await entered.wait()
        y = x * 2  # the other task is suspended inside no_grad()
        release.set()
        return y

    async def main():
        entered, release = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(quiet(entered, release), recording(entered, release))

    quiet_result, recorded = asyncio.run(main())
    assert quiet_result._prev == ()
    assert recorded._prev


def test_a_task_started_inside_no_grad_inherits_it():
    # asyncio copies the context when a task is created, as for any context variable.
    x = Value(2.0)

    async def child():
        return x * 2

    async def main():
        with no_grad():
            task = asyncio.create_task(child())
        return await task

    assert asyncio.run(main())._prev == ()


# ---------------------------------------------------------------------------------------------
# Deep graphs


@pytest.mark.slow  # a million nodes: seconds, so not in `scripts/test --fast`
def test_million_node_chain_at_the_default_recursion_limit():
    x = Value(0.5)
    y = x
    for _ in range(1_000_000):
        y = y.relu()  # one node per step, each the parent of the next
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default, whatever the test runner set
    try:
        y.backward()
    finally:
        sys.setrecursionlimit(limit)
    assert x.grad == 1.0
    assert y._prev[0]._prev[0].grad == 1.0


def test_micrograd_itself_fails_on_a_deep_chain():
    # The contrast the chain test is about (if micrograd ever stops recursing, drop this).
    x = micrograd.engine.Value(0.5)
    y = x
    for _ in range(5000):
        y = y.relu()
    with pytest.raises(RecursionError):
        y.backward()


# ---------------------------------------------------------------------------------------------
# micrograd parity: the same code, the same numbers


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=150, deadline=None)
@given(program=programs(ops=MICROGRAD_OPS))
def test_random_programs_match_micrograd(program):
    ours = run(program, Value, ops=MICROGRAD_OPS)
    theirs = run(program, micrograd.engine.Value, ops=MICROGRAD_OPS)
    ours.output.backward()
    theirs.output.backward()
    assert close(ours.output.data, theirs.output.data), program
    for i, (a, b) in enumerate(zip(ours.nodes, theirs.nodes, strict=True)):
        assert close(a.data, b.data), f"data of v{i} in {program}"
        assert close(a.grad, b.grad), f"grad of v{i}: ours {a.grad}, micrograd {b.grad}\n{program}"


def trace(root):
    """micrograd's draw_dot helper, verbatim: it reads `_prev` and relies on hashing."""
    nodes, edges = set(), set()

    def build(v):
        if v not in nodes:
            nodes.add(v)
            for child in v._prev:
                edges.add((child, v))
                build(child)

    build(root)
    return nodes, edges


def test_micrograd_draw_dot_trace_runs_on_opgraph_values():
    a, b = Value(2.0, label="a"), Value(-3.0, label="b")
    c = a * b
    d = c + a
    e = d.relu()
    nodes, edges = trace(e)
    assert nodes == set(topological_order(e))
    assert edges == {(a, c), (b, c), (c, d), (a, d), (d, e)}
    # draw_dot labels op nodes with `_op` and names them str(id(n)) + n._op
    assert all(isinstance(n._op, str) for n in nodes)
    assert {n._op for n in nodes if n._prev} == {"*", "+", "ReLU"}
    assert {n._op for n in nodes if not n._prev} == {""}


def draw_dot(root):
    """micrograd's draw_dot (from its trace_graph notebook), verbatim but for formatting."""
    from graphviz import Digraph

    dot = Digraph(format="svg", graph_attr={"rankdir": "LR"})
    nodes, edges = trace(root)
    for n in nodes:
        uid = str(id(n))
        label = "{ data %.4f | grad %.4f }" % (n.data, n.grad)  # noqa: UP031 (micrograd's code)
        dot.node(name=uid, label=label, shape="record")
        if n._op:
            dot.node(name=uid + n._op, label=n._op)
            dot.edge(uid + n._op, uid)
    for n1, n2 in edges:
        dot.edge(str(id(n1)), str(id(n2)) + n2._op)
    return dot


def test_micrograd_draw_dot_renders_opgraph_values():
    x = Value(2.0)
    y = (x**2 + x * 3).relu() / 4  # ids like '12**2' and '12+' need graphviz's quoting
    y.backward()
    dot = draw_dot(y)
    op_nodes = sum(1 for n in topological_order(y) if n._op)
    assert dot.source.count("shape=record") == len(topological_order(y))
    assert dot.source.count("->") == op_nodes + len(trace(y)[1])
    if shutil.which("dot"):
        svg = dot.pipe(encoding="utf-8")
        assert svg.count('class="node"') == len(topological_order(y)) + op_nodes
        assert "**2" in svg


def micrograd_nn_with(value_module: str) -> dict:
    """micrograd's own nn.py, run unchanged except for the Value it imports."""
    source = (Path(micrograd.engine.__file__).parent / "nn.py").read_text()
    original = "from micrograd.engine import Value"
    assert original in source
    namespace: dict = {"__name__": f"micrograd_nn_on_{value_module}"}
    exec(source.replace(original, f"from {value_module} import Value"), namespace)
    return namespace


def train_moons_steps(nn: dict, steps: int) -> list[tuple[float, list[float]]]:
    """A few steps of micrograd's demo: max-margin loss, L2 term, SGD."""
    random.seed(1337)
    model = nn["MLP"](2, [8, 8, 1])
    rng = random.Random(0)
    xs = [[rng.uniform(-2, 2), rng.uniform(-1, 1)] for _ in range(12)]
    ys = [1 if x[1] > 0.3 * x[0] else -1 for x in xs]
    history = []
    for step in range(steps):
        scores = [model(x) for x in xs]
        losses = [(1 + -y * score).relu() for y, score in zip(ys, scores, strict=True)]
        data_loss = sum(losses) * (1.0 / len(losses))
        reg_loss = 1e-4 * sum(p * p for p in model.parameters())
        total = data_loss + reg_loss
        model.zero_grad()
        total.backward()
        learning_rate = 1.0 - 0.9 * step / steps
        for p in model.parameters():
            p.data -= learning_rate * p.grad
        history.append((total.data, [p.data for p in model.parameters()]))
    return history


def test_micrograd_nn_code_trains_identically_on_opgraph():
    ours = train_moons_steps(micrograd_nn_with("opgraph"), steps=4)
    theirs = train_moons_steps(micrograd_nn_with("micrograd.engine"), steps=4)
    for step, ((loss, params), (their_loss, their_params)) in enumerate(
        zip(ours, theirs, strict=True)
    ):
        assert math.isclose(loss, their_loss, rel_tol=1e-9), f"loss at step {step}"
        assert all(
            math.isclose(p, q, rel_tol=1e-9, abs_tol=1e-12)
            for p, q in zip(params, their_params, strict=True)
        )
    assert ours[-1][0] < ours[0][0]  # and it learns


def test_opgraph_exports_the_micrograd_names():
    assert opgraph.Value is Value
    v = Value(1.0)
    for name in ["data", "grad", "_prev", "_op", "backward", "relu"]:
        assert hasattr(v, name), name


# ---------------------------------------------------------------------------------------------
# The node layout: every way of making a node sets every slot


def _nodes_made_every_way() -> dict[str, Value]:
    """One node from each builder: Value.__init__, the bound unary and binary ops and the
    constant leaf (binding.py), an n-ary op, no_grad and detect_anomaly (their slow path),
    an op with a baked-in constant, a traced engine, unpickling, copy and deepcopy."""
    import copy
    import pickle

    fma = opgraph.Op("fma", lambda a, b, c: a * b + c, lambda out, a, b, c: (b, a, 1.0))
    fused = engine(plugin("layout", fma))

    class Tracer:  # what the engine tells a tracer; nothing is recorded
        def __getattr__(self, name):
            return lambda *args: None

    traced = engine(name="layout-traced")
    traced.tracer = Tracer()
    x, y = Value(2.0, "x"), Value(3.0)
    product = x * y
    nodes = {
        "leaf": x,
        "binary": product,
        "unary": x.tanh(),
        "constant leaf": (2 * x)._a,
        "pow with a constant": x**2,
        "n-ary": fused.ops.fma(fused.value(1.0), fused.value(2.0), 3.0),
        "traced binary": traced.value(1.0) * traced.value(2.0),
        "unpickled": pickle.loads(pickle.dumps(product)),
        "copied": copy.copy(product),
        "deep-copied": copy.deepcopy(product),
        "engine.value": fused.value(1.0),
    }
    store = ParameterStore(2)
    parameter = store.value(0.5, "p")
    nodes["stored parameter"] = parameter
    nodes["stored, of another engine"] = ParameterStore(1, fused).value(1.0)
    nodes["stored, unpickled"] = pickle.loads(pickle.dumps(parameter))
    nodes["stored, deep-copied"] = copy.deepcopy(parameter)
    nodes["stored, copied"] = copy.copy(parameter)
    with no_grad():
        nodes["under no_grad"] = x * y
    with opgraph.detect_anomaly():
        nodes["under detect_anomaly"] = x * y
    return nodes


def test_every_way_of_making_a_node_sets_every_slot():
    """The node layout is `Value.__slots__`, written once; each builder stores every slot
    itself (for speed), so this catches a builder that misses one."""
    slots = list(Value.__slots__)
    types = {"_data": float, "_grad": float, "_id": int}
    for how, node in _nodes_made_every_way().items():
        # a stored parameter's own slots too (its _data and _grad are its store's rows)
        for slot in slots + list(StoredValue.__slots__ if isinstance(node, StoredValue) else ()):
            try:
                value = object.__getattribute__(node, slot)
            except AttributeError:
                pytest.fail(f"a node made by {how} has no {slot}")
            if slot in types:
                assert type(value) is types[slot], (how, slot, value)
        tag = node._tag  # the scope path, or a Tag when there is a label (or a hook)
        assert type(tag) is str or type(tag) is Tag, (how, tag)
