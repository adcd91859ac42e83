"""draw_dot: the structure of the Digraph, real renders with Graphviz's dot, and a missing dot."""

import re
import shutil
import subprocess
import sys

import graphviz
import pytest

import opgraph
from opgraph import GraphvizNotFoundError, Value, draw_dot
from opgraph.nn import Neuron
from opgraph.viz import render


def statements(dot):
    """The node and edge statements of the Digraph's source, stripped."""
    return [line.strip() for line in dot.body]


def nodes_and_edges(dot):
    nodes, edges = {}, []
    for line in statements(dot):
        edge = re.fullmatch(r'"?(\w+)"? -> "?(\w+)"?', line)
        if edge:
            edges.append(edge.groups())
            continue
        node = re.fullmatch(r'"?(\w+)"? \[label=(.*?)( shape=record)?\]', line)
        assert node, line
        nodes[node.group(1)] = (node.group(2), bool(node.group(3)))
    return nodes, edges


def text_of_svg(svg: str) -> str:
    return " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", svg))


def test_digraph_has_a_record_per_value_an_op_node_per_op_and_an_edge_per_parent_slot():
    a, b = Value(2.0, label="a"), Value(-3.0, label="b")
    c = a * b
    c.label = "c"
    d = c + a
    d.label = "d"
    d.backward()
    dot = draw_dot(d)
    assert isinstance(dot, graphviz.Digraph)
    assert dot.format == "svg" and dot.graph_attr["rankdir"] == "LR"
    nodes, edges = nodes_and_edges(dot)
    records = {name: label for name, (label, record) in nodes.items() if record}
    ops = {name: label for name, (label, record) in nodes.items() if not record}
    assert records == {
        str(a.id): '"{ a | data 2.0000 | grad -2.0000 }"',
        str(b.id): '"{ b | data -3.0000 | grad 2.0000 }"',
        str(c.id): '"{ c | data -6.0000 | grad 1.0000 }"',
        str(d.id): '"{ d | data -4.0000 | grad 1.0000 }"',
    }
    assert ops == {f"{c.id}op": '"*"', f"{d.id}op": '"+"'}  # micrograd's _op strings
    assert sorted(edges) == sorted(
        [
            (f"{c.id}op", str(c.id)),
            (str(a.id), f"{c.id}op"),
            (str(b.id), f"{c.id}op"),
            (f"{d.id}op", str(d.id)),
            (str(c.id), f"{d.id}op"),
            (str(a.id), f"{d.id}op"),
        ]
    )


def test_a_value_used_twice_by_one_op_draws_two_edges():
    x = Value(3.0, label="x")
    y = x + x
    _, edges = nodes_and_edges(draw_dot(y))
    assert edges.count((str(x.id), f"{y.id}op")) == 2


def test_op_node_shows_a_constant_exponent_and_leaves_have_no_op_node():
    x = Value(3.0, label="x")
    y = x**2
    nodes, edges = nodes_and_edges(draw_dot(y))
    assert nodes[f"{y.id}op"] == ('"**2"', False)
    assert len(nodes) == 3 and len(edges) == 2  # x, y, the pow node; x -> pow -> y


def test_format_and_rankdir_are_passed_to_graphviz():
    dot = draw_dot(Value(1.0) * 2, format="png", rankdir="TB")
    assert dot.format == "png" and "rankdir=TB" in dot.source
    with pytest.raises(ValueError, match="rankdir must be one of"):
        draw_dot(Value(1.0), rankdir="XY")


def test_draw_dot_of_something_else_than_a_value_says_so():
    with pytest.raises(TypeError, match="draw_dot draws the graph of a Value, got float: 2.5"):
        draw_dot(2.5)


def test_draw_dot_refuses_a_graph_dot_would_take_minutes_on_unless_told():
    x = Value(1.0, label="x")
    y = x
    for _ in range(600):
        y = y * 1.0001
    y.label = "long"
    with pytest.raises(ValueError, match=r"graph of long has 1,201 values.*max_nodes=None"):
        draw_dot(y)
    # 1,201 records; per product an op node, its edge to the result and two parent edges
    assert len(draw_dot(y, max_nodes=None).body) == 1201 + 600 * 4
    assert draw_dot(y, max_nodes=2000).body


def test_works_with_a_deep_graph_without_recursion():
    y = Value(0.0)
    for _ in range(5000):
        y = y + 1
    assert len(draw_dot(y, max_nodes=None).body) > 5000


def test_real_render_to_svg_shows_labels_data_grads_and_ops(tmp_path):
    n = Neuron(2, act="tanh", name="N")
    out = n([Value(1.0, label="x0"), Value(-2.0, label="x1")])
    out.backward()
    path = render(draw_dot(out), tmp_path / "drawings" / "neuron.svg")
    assert path == tmp_path / "drawings" / "neuron.svg"
    svg = path.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    text = text_of_svg(svg)
    for word in ["N.w0", "N.w1", "N.b", "x0", "x1", "*", "+", "tanh", "grad 1.0000"]:
        assert word in text
    assert f"data {out.data:.4f}".replace("-", "&#45;") in text


def test_render_takes_the_format_from_the_suffix(tmp_path):
    dot = draw_dot(Value(1.0, label="a") + 1)
    assert render(dot, tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    assert render(dot, tmp_path / "g", format="pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in render(dot, tmp_path / "noext").read_bytes()  # the Digraph's own format


def test_labels_with_record_syntax_are_drawn_verbatim(tmp_path):
    x = Value(2.0, label='a{b}|c<d>"e\\f')
    svg = render(draw_dot(x * 3), tmp_path / "g.svg").read_text()
    assert "a{b}|c&lt;d&gt;&quot;e\\f" in text_of_svg(svg)


def test_pipe_and_jupyter_display_render_svg():
    dot = draw_dot(Value(1.0, label="a").exp())
    assert b"<svg" in dot.pipe()
    bundle = dot._repr_mimebundle_()
    assert "<svg" in bundle["image/svg+xml"]


@pytest.fixture
def no_dot(monkeypatch, tmp_path):
    """A PATH on which there is no Graphviz (the real condition, not a mock of graphviz)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None


def test_without_dot_every_way_to_render_says_how_to_install_graphviz(no_dot, tmp_path):
    dot = draw_dot(Value(1.0, label="a") + 2)
    for attempt in [
        lambda: render(dot, tmp_path / "g.svg"),
        lambda: render(graphviz.Digraph(), tmp_path / "plain.svg"),  # any Digraph
        dot.pipe,
        lambda: dot.render(tmp_path / "g"),
        dot._repr_mimebundle_,
    ]:
        with pytest.raises(GraphvizNotFoundError, match=r"apt-get install graphviz") as info:
            attempt()
        assert "brew install graphviz" in str(info.value)
        assert isinstance(info.value.__cause__, graphviz.ExecutableNotFound)
    assert not (tmp_path / "g.svg").exists()


def test_draw_dot_is_exported_and_loads_graphviz_only_when_used():
    assert opgraph.draw_dot is draw_dot and "draw_dot" in opgraph.__all__
    code = (
        "import sys, opgraph; assert 'graphviz' not in sys.modules; "
        "from opgraph import draw_dot; assert 'graphviz' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
