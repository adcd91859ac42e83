"""Drawing a graph with Graphviz, like micrograd's `draw_dot` from the lecture.

`draw_dot(root)` returns a `graphviz.Digraph`: a record node per Value showing its label,
data and grad, an oval node per operation showing micrograd's `_op` string (`+`, `*`, `**2`,
`tanh`), and one edge per parent slot (so `x + x` draws two edges from x). Nodes made in a
scope (`opgraph.scope`, the nn modules) are drawn inside a box per scope, nested as the
scopes are (Graphviz clusters). It renders in
Jupyter; `render(dot, "graph.svg")` writes a file. Both need Graphviz's `dot` program; without
it they raise `GraphvizNotFoundError`, which says how to install it.

Graphviz lays out a few hundred nodes in seconds, but its time grows much faster than the
graph (measured here: 478 values in 2.4 s, 1,488 in 47 s), so `draw_dot` refuses graphs of
more than `max_nodes` values (1,000 by default) unless told otherwise. For a whole training
step use the live viewer instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import graphviz

from .errors import GraphvizNotFoundError
from .reverse import topological_order
from .value import Value

INSTALL_HINT = (
    "install Graphviz to render drawings: `sudo apt-get install graphviz` (Debian, Ubuntu), "
    "`brew install graphviz` (macOS), `conda install -c conda-forge graphviz`, or see "
    "https://graphviz.org/download/ (the Python package `graphviz` alone is not enough)"
)


class Drawing(graphviz.Digraph):
    """A `graphviz.Digraph` whose rendering explains how to install a missing Graphviz."""

    # graphviz's own signatures (pipe's are overloads on `encoding`) pass through unchanged
    def pipe(self, *args: Any, **kwargs: Any) -> Any:
        return _explained(super().pipe, *args, **kwargs)

    def render(self, *args: Any, **kwargs: Any) -> Any:
        return _explained(super().render, *args, **kwargs)

    def _repr_mimebundle_(self, *args: Any, **kwargs: Any) -> Any:  # how Jupyter displays it
        return _explained(super()._repr_mimebundle_, *args, **kwargs)


P = ParamSpec("P")
R = TypeVar("R")


def _explained(method: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return method(*args, **kwargs)
    except graphviz.ExecutableNotFound as exc:
        message = f"the Graphviz `dot` program was not found; {INSTALL_HINT}"
        raise GraphvizNotFoundError(message) from exc


def _escape(text: str) -> str:
    """Make text safe inside a record label, where { } | < > and quotes have meanings."""
    for char in '\\{}|<>"':
        text = text.replace(char, "\\" + char)
    return text


def draw_dot(
    root: Value, format: str = "svg", rankdir: str = "LR", *, max_nodes: int | None = 1000
) -> graphviz.Digraph:
    """The graph that `root` depends on, as a Graphviz digraph (left to right by default).

    Raises ValueError when the graph has more than `max_nodes` values (None: no limit).
    """
    if not isinstance(root, Value):
        raise TypeError(f"draw_dot draws the graph of a Value, got {type(root).__name__}: {root!r}")
    if rankdir not in ("LR", "TB", "RL", "BT"):
        raise ValueError(f"rankdir must be one of LR, TB, RL, BT; got {rankdir!r}")
    nodes = topological_order(root)
    if max_nodes is not None and len(nodes) > max_nodes:
        raise ValueError(
            f"the graph of {root.label or f'node #{root.id}'} has {len(nodes):,} values, more "
            f"than max_nodes={max_nodes:,}, and Graphviz's layout time grows steeply with size "
            f"(minutes for a few thousand values). Pass max_nodes=None to draw it anyway, or "
            f"watch it in the live viewer."
        )
    dot = Drawing(format=format, graph_attr={"rankdir": rankdir})
    by_scope: dict[str, list[Value]] = {}
    for node in nodes:
        by_scope.setdefault(node.scope, []).append(node)
    _draw_scope(dot, "", by_scope, _scope_tree(by_scope))
    for node in nodes:
        name = str(node.id)
        if node.op is not None:
            # an op node feeds the record of its result; one edge per parent slot feeds it
            dot.edge(name + "op", name)
            for parent in node.parents:
                dot.edge(str(parent.id), name + "op")
    return dot


def _scope_tree(by_scope: dict[str, list[Value]]) -> dict[str, list[str]]:
    """Each scope path drawn (those of the nodes and their enclosing ones) -> its children."""
    children: dict[str, list[str]] = {"": []}
    for path in by_scope:
        names = path.split("/") if path else []
        for depth in range(1, len(names) + 1):  # "L0", then "L0/N3"
            scope = "/".join(names[:depth])
            if scope not in children:
                children[scope] = []
                children["/".join(names[: depth - 1])].append(scope)
    return children


def _draw_scope(graph: graphviz.Digraph, path: str, by_scope: dict, children: dict) -> None:
    """The nodes made in scope `path`, and each scope inside it as a nested cluster (a box
    labelled with the scope's name: Graphviz draws subgraphs named cluster_* that way)."""
    for node in by_scope.get(path, ()):
        name = str(node.id)
        label = f"{{ {_escape(node.label)} | data {node.data:.4f} | grad {node.grad:.4f} }}"
        graph.node(name, label=label, shape="record")
        if node.op is not None:
            graph.node(name + "op", label=node._op)
    for child in sorted(children.get(path, ())):
        cluster = graphviz.Digraph(name=f"cluster_{child}")
        cluster.attr(label=child.rpartition("/")[2], style="rounded", color="gray60")
        _draw_scope(cluster, child, by_scope, children)
        graph.subgraph(cluster)


def render(dot: graphviz.Digraph, path: str | Path, format: str | None = None) -> Path:
    """Write `dot` rendered to `path` (format from its suffix, else the Digraph's format).

    Creates the parent directories; returns the path. Raises GraphvizNotFoundError, with
    installation instructions, when the `dot` program is missing.
    """
    path = Path(path)
    format = format or path.suffix.lstrip(".") or dot.format
    data = _explained(dot.pipe, format=format)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
