"""micrograd's first lecture, cell by cell, on opgraph's Value.

The lecture builds `L = (a*b + c) * f` and a tanh neuron, backpropagates by hand (setting
grads, then calling each node's `_backward()` in reverse), sorts the graph topologically by
hand over `_prev`, and only then writes `backward()`. It draws with its own `draw_dot`, which
prints `_op`. Each test is a stretch of the lecture with the numbers it shows; where micrograd
(from PyPI, which has +, *, ** and relu but no tanh or exp) can run the same cells, the test
runs them there too and compares.
"""

from __future__ import annotations

import math
import shutil

import micrograd.engine
import pytest
from graphviz import Digraph

from opgraph import Value

# ---------------------------------------------------------------------------------------------
# The lecture's own helpers, as a learner types them (micrograd-style, not opgraph's)


def trace(root):
    # builds a set of all nodes and edges in a graph
    nodes, edges = set(), set()

    def build(v):
        if v not in nodes:
            nodes.add(v)
            for child in v._prev:
                edges.add((child, v))
                build(child)

    build(root)
    return nodes, edges


def draw_dot(root):
    dot = Digraph(format="svg", graph_attr={"rankdir": "LR"})  # LR = left to right
    nodes, edges = trace(root)
    for n in nodes:
        uid = str(id(n))
        # for any value in the graph, create a rectangular ('record') node for it
        label = "{ %s | data %.4f | grad %.4f }" % (n.label, n.data, n.grad)  # noqa: UP031
        dot.node(name=uid, label=label, shape="record")
        if n._op:
            # if this value is a result of some operation, create an op node for it
            dot.node(name=uid + n._op, label=n._op)
            dot.edge(uid + n._op, uid)
    for n1, n2 in edges:
        # connect n1 to the op node of n2
        dot.edge(str(id(n1)), str(id(n2)) + n2._op)
    return dot


def build_topo(root):
    topo, visited = [], set()

    def build(v):
        if v not in visited:
            visited.add(v)
            for child in v._prev:
                build(child)
            topo.append(v)

    build(root)
    return topo


def op_labels(dot: Digraph) -> list[str]:
    """The labels of the op nodes of a drawing (the records have a `{ ... }` label)."""
    labels = []
    for line in dot.body:
        if "label=" in line and "shape=record" not in line:
            labels.append(line.split("label=", 1)[1].rstrip("]\n").strip('"'))
    return sorted(labels)


# ---------------------------------------------------------------------------------------------
# L = (a*b + c) * f


def expression(V=Value):
    """The lecture's first graph; V is opgraph's Value or micrograd's."""
    a, b, c, f = V(2.0), V(-3.0), V(10.0), V(-2.0)
    e = a * b
    d = e + c
    L = d * f
    for node, name in zip((a, b, c, e, d, f, L), "abcedfL", strict=True):
        node.label = name  # micrograd 0.1.0's Value takes no label; set it as an attribute
    return a, b, c, e, d, f, L


def test_forward_pass_and_drawing_print_micrographs_ops():
    a, b, c, e, d, f, L = expression()
    assert (e.data, d.data, L.data) == (-6.0, 4.0, -8.0)
    assert (e._op, d._op, L._op, a._op) == ("*", "+", "*", "")
    dot = draw_dot(L)
    assert op_labels(dot) == ["*", "*", "+"]
    # micrograd's own Values drawn by the same draw_dot: the same op nodes
    assert op_labels(draw_dot(expression(micrograd.engine.Value)[-1])) == op_labels(dot)
    assert "{ L | data -8.0000 | grad 0.0000 }" in dot.source
    if shutil.which("dot"):
        svg = dot.pipe(encoding="utf-8")
        assert svg.count('class="node"') == 7 + 3  # seven values, three op nodes


def test_manual_backprop_with_node_backward_in_reverse_order():
    for V in (Value, micrograd.engine.Value):
        a, b, c, e, d, f, L = expression(V)
        L.grad = 1.0
        for node in (L, d, e, c, b, a, f):  # each node after every node that uses it
            node._backward()
        grads = {n.label: n.grad for n in (a, b, c, e, d, f, L)}
        # the lecture's hand-derived grads: dL/df = d, dL/dd = f, + routes, * swaps
        assert grads == {"a": 6.0, "b": -4.0, "c": -2.0, "e": -2.0, "d": -2.0, "f": 4.0, "L": 1.0}


def test_a_leafs_backward_does_nothing():
    a, b, c, e, d, f, L = expression()
    a.grad = 5.0
    a._backward()
    assert [n.grad for n in (a, b, c, e, d, f, L)] == [5.0, 0, 0, 0, 0, 0, 0]


def test_numerical_gradient_agrees_and_one_optimisation_step():
    def lol(bump_a=0.0):  # the lecture's `lol()`: L with a nudged by h
        a, b, c, e, d, f, L = expression()
        a.data += bump_a
        return ((a * b + c) * f).data

    h = 0.001
    assert (lol(h) - lol()) / h == pytest.approx(6.0, abs=1e-6)

    a, b, c, e, d, f, L = expression()
    L.backward()
    for leaf in (a, b, c, f):  # nudge each leaf in the direction of its gradient
        leaf.data += 0.01 * leaf.grad
    e = a * b
    d = e + c
    L = d * f
    assert L.data == pytest.approx(-7.286496, abs=1e-9)  # the lecture's printout


# ---------------------------------------------------------------------------------------------
# The neuron: o = tanh(x1*w1 + x2*w2 + b)


def neuron(tanh=None):
    x1, x2 = Value(2.0, label="x1"), Value(0.0, label="x2")
    w1, w2 = Value(-3.0, label="w1"), Value(1.0, label="w2")
    b = Value(6.8813735870195432, label="b")
    x1w1 = x1 * w1
    x1w1.label = "x1*w1"
    x2w2 = x2 * w2
    x2w2.label = "x2*w2"
    x1w1x2w2 = x1w1 + x2w2
    x1w1x2w2.label = "x1*w1 + x2*w2"
    n = x1w1x2w2 + b
    n.label = "n"
    o = tanh(n) if tanh else n.tanh()
    o.label = "o"
    return dict(x1=x1, x2=x2, w1=w1, w2=w2, b=b, x1w1=x1w1, x2w2=x2w2, x1w1x2w2=x1w1x2w2, n=n, o=o)


LECTURE_GRADS = {"o": 1.0, "n": 0.5, "b": 0.5, "x1w1": 0.5, "x2w2": 0.5, "x1w1x2w2": 0.5}
LECTURE_GRADS |= {"x1": -1.5, "w1": 1.0, "x2": 0.5, "w2": 0.0}


def grads(nodes: dict) -> dict:
    return {name: round(node.grad, 10) for name, node in nodes.items()}


def test_neuron_by_hand_then_node_by_node():
    v = neuron()
    assert v["o"].data == pytest.approx(0.7071, abs=1e-4)
    assert v["o"]._op == "tanh" and v["n"]._op == "+" and v["x1w1"]._op == "*"
    assert op_labels(draw_dot(v["o"])) == ["*", "*", "+", "+", "tanh"]

    # by hand, as the lecture does first: do/dn = 1 - o**2
    assert 1 - v["o"].data ** 2 == pytest.approx(0.5)

    # then node by node: o.grad = 1.0 and each node's _backward() from o down
    v["o"].grad = 1.0
    for name in ("o", "n", "b", "x1w1x2w2", "x2w2", "x1w1", "x2", "w2", "x1", "w1"):
        v[name]._backward()
    assert grads(v) == pytest.approx(LECTURE_GRADS)


def test_neuron_with_a_hand_written_topological_sort():
    v = neuron()
    topo = build_topo(v["o"])
    assert set(topo) == set(v.values())
    assert topo[-1] is v["o"]
    position = {node: i for i, node in enumerate(topo)}
    assert all(position[p] < position[node] for node in topo for p in node._prev)

    v["o"].grad = 1.0
    for node in reversed(topo):
        node._backward()
    assert grads(v) == pytest.approx(LECTURE_GRADS)


def test_neuron_with_backward():
    v = neuron()
    v["o"].backward()
    assert grads(v) == pytest.approx(LECTURE_GRADS)


def test_neuron_with_tanh_broken_into_exp_and_division():
    # the lecture's exercise: tanh(n) = (e^2n - 1) / (e^2n + 1), from exp, **-1, + and *
    def tanh(n):
        e = (2 * n).exp()
        return (e - 1) / (e + 1)

    v = neuron(tanh)
    assert v["o"].data == pytest.approx(math.sqrt(0.5))
    ops = sorted(node._op for node in trace(v["o"])[0] if node._op)
    # e - 1 is e + (1 * -1), and a / b is a * b**-1, as the lecture writes them
    assert ops == sorted(["*"] * 5 + ["+"] * 4 + ["exp", "**-1"])
    for node in reversed(build_topo(v["o"])):
        if node is v["o"]:
            node.grad = 1.0
        node._backward()
    assert grads(v) == pytest.approx(LECTURE_GRADS)


def test_using_a_node_twice_accumulates_and_the_lectures_bug_does_not_happen():
    a = Value(3.0, label="a")
    b = a + a
    b.backward()
    assert a.grad == 2.0  # the lecture's bug (grads set, not added) would give 1

    a = Value(3.0, label="a")
    b = a + a
    b.grad = 1.0
    b._backward()  # one step adds both contributions: _prev keeps the duplicate
    assert b._prev == (a, a) and a.grad == 2.0


def test_micrograd_relu_and_pow_op_strings_match():
    for exponent in (2, -1, 3):
        ours, theirs = Value(2.0) ** exponent, micrograd.engine.Value(2.0) ** exponent
        assert ours._op == theirs._op == f"**{exponent}"
    assert Value(2.0).relu()._op == micrograd.engine.Value(2.0).relu()._op == "ReLU"
