"""The viewer's graph model (server/static/graph.js), run in chromium: the rank layout (the
longest path from the leaves) on random graphs, the overview's groups, search and
neighbourhoods."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playwright.sync_api import sync_playwright
from viewer_support import launch, load_module

# Builds a Graph from forward maps in the page and reports what the viewer would draw.
BUILD = """(events) => {
    const graph = new model.Graph();
    const seen = [];  // each node's position the moment it arrived
    for (const event of events) {
        const node = graph.addNode(event);
        seen.push([node.id, node.x, node.y]);
    }
    const overview = graph.bands();
    const nodes = graph.order.map((n) => ({
        id: n.id, rank: n.rank, x: n.x, y: n.y, parents: n.parents, placeholder: n.placeholder,
        group: `${n.rank >> overview.shift} ${n.group.op}`,
    }));
    const groups = [...overview.groups.values()].map((g) => ({key: g.key, op: g.op,
        count: g.count, band: g.band}));
    const edges = [...overview.edges.values()].map((e) => [e.from.key, e.to.key, e.count]);
    return {seen, nodes, groups, edges, edgeCount: graph.edgeCount, bandShift: overview.shift};
}"""


@pytest.fixture(scope="module")
def page():
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        page.set_content("<!doctype html><title>graph</title>")
        load_module(page, "graph.js", ["Graph", "layoutSubgraph", "COLUMN_WIDTH"], "model")
        yield page
        browser.close()


@st.composite
def dags(draw, max_nodes=40):
    """Forward events of a random graph in creation order; duplicate parents included."""
    n = draw(st.integers(min_value=1, max_value=max_nodes))
    events = []
    for i in range(n):
        arity = 0 if i == 0 else draw(st.integers(min_value=0, max_value=min(3, i)))
        parents = [draw(st.integers(min_value=0, max_value=i - 1)) for _ in range(arity)]
        op = draw(st.sampled_from(["add", "mul", "tanh"])) if parents else None
        events.append({"type": "forward", "id": i, "op": op, "parents": parents,
                       "data": float(i), "label": f"v{i}"})  # fmt: skip
    return events


def longest_path_ranks(events):
    rank = {}
    for e in events:
        rank[e["id"]] = 1 + max((rank[p] for p in e["parents"]), default=-1)
    return rank


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=dags())
def test_rank_layout(page, events):
    result = page.evaluate(BUILD, events)
    width = page.evaluate("model.COLUMN_WIDTH")
    nodes = {n["id"]: n for n in result["nodes"]}
    ranks = longest_path_ranks(events)
    for node in nodes.values():
        # rank: the longest path from the leaves; the column follows the rank
        assert node["rank"] == ranks[node["id"]]
        assert node["x"] == node["rank"] * width
        # every node is right of all of its inputs
        for parent in node["parents"]:
            assert nodes[parent]["x"] < node["x"]
    # a node never moves once drawn: the final positions are those it arrived with
    assert [[n["id"], n["x"], n["y"]] for n in result["nodes"]] == result["seen"]
    # no two nodes of one column share a place
    places = [(n["x"], n["y"]) for n in nodes.values()]
    assert len(places) == len(set(places))
    # every parent slot is an edge, duplicates included (x + x: two)
    assert result["edgeCount"] == sum(len(e["parents"]) for e in events)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=dags())
def test_overview_groups_count_every_node_and_edge(page, events):
    result = page.evaluate(BUILD, events)
    nodes = {n["id"]: n for n in result["nodes"]}
    groups = {g["key"]: g for g in result["groups"]}
    assert sum(g["count"] for g in groups.values()) == len(nodes)
    for node in nodes.values():
        group = groups[node["group"]]
        assert group["op"] == (next(e for e in events if e["id"] == node["id"])["op"] or "leaf")
        assert group["band"] == node["rank"] >> result["bandShift"]
    # edges between groups add up to the edges that cross groups
    crossing = sum(
        1 for n in nodes.values() for p in n["parents"] if nodes[p]["group"] != n["group"]
    )
    assert sum(count for _, _, count in result["edges"]) == crossing


def test_long_chains_are_banded_into_at_most_16_columns(page):
    events = [{"type": "forward", "id": 0, "op": None, "parents": [], "data": 0.0, "label": "x"}]
    for i in range(1, 1000):
        events.append(
            {
                "type": "forward",
                "id": i,
                "op": "add",
                "parents": [i - 1, 0],
                "data": 0.0,
                "label": "",
            }  # fmt: skip
        )
    result = page.evaluate(BUILD, events)
    bands = {g["band"] for g in result["groups"]}
    assert max(bands) < 16
    assert result["bandShift"] == 6  # 999 >> 6 == 15
    assert sum(g["count"] for g in result["groups"]) == 1000


def test_unknown_parents_become_placeholders_then_real_nodes(page):
    events = [
        {"type": "forward", "id": 5, "op": "add", "parents": [3, 3], "data": 2.0, "label": "c"},
        {"type": "forward", "id": 3, "op": None, "parents": [], "data": 1.0, "label": "late"},
    ]
    result = page.evaluate(BUILD, events)
    nodes = {n["id"]: n for n in result["nodes"]}
    assert nodes[3]["placeholder"] is False  # the forward of a known id replaces it
    assert nodes[5]["rank"] == 1
    assert result["edgeCount"] == 2


def test_search_and_neighbourhood(page):
    found = page.evaluate(
        """() => {
            const g = new model.Graph();
            const add = (id, op, parents, label) =>
                g.addNode({id, op, parents, data: 0, label});
            add(0, null, [], "w");
            add(1, null, [], "x");
            add(2, "mul", [0, 1], "w*x");
            add(3, "tanh", [2], "out w");
            for (let i = 4; i < 30; i++) add(i, "mul", [0, 1], `use${i}`);
            const labels = (nodes) => nodes.map((n) => n.label);
            const around = g.neighbourhood(g.nodes.get(2), {up: 5, down: 1, fan: 6});
            return {
                w: labels(g.search("w")),
                id: labels(g.search("#3")),
                op: labels(g.search("op:tanh")),
                leaves: labels(g.search("op:leaf")),
                around: labels(around.nodes),
                aroundX: around.nodes.map((n) => around.positions.get(n.id).x),
            };
        }"""
    )
    assert found["w"] == ["w", "w*x", "out w"]  # the exact label first, then by id
    assert found["id"] == ["out w"]
    assert found["op"] == ["out w"]
    assert found["leaves"] == ["w", "x"]
    # the node, its inputs, and its user; not the 26 other users of its inputs
    assert found["around"] == ["w", "x", "w*x", "out w"]
    width = page.evaluate("model.COLUMN_WIDTH")
    assert found["aroundX"] == [0, 0, width, 2 * width]  # laid out by rank on their own


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=dags())
def test_components_and_scope_groups_count_every_node(page, events):
    """The union-find components are the weakly connected components; the scope tree
    counts each node once in its group and every enclosing one."""
    scopes = ["", "A", "A/B", "C", "A/B/"]  # "A/B/" is "A/B"
    for event in events:
        event["scope"] = scopes[event["id"] % len(scopes)]
    result = page.evaluate(
        """(events) => {
            const g = new model.Graph();
            for (const e of events) g.addNode(e);
            const component = Object.fromEntries(g.order.map((n) => [n.id, g.componentOf(n).id]));
            const counts = Object.fromEntries(
                [...g.scopes.byPath.values()].map((s) => [s.path, s.count]));
            return {component, counts, count: g.componentCount, singletons: g.singletons,
                scoped: g.scopes.scoped};
        }""",
        events,
    )
    parent = {e["id"]: e["id"] for e in events}

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for e in events:
        for p in e["parents"]:
            parent[find(p)] = find(e["id"])
    same = {(a, b) for a in parent for b in parent if find(a) == find(b)}
    component = {int(k): v for k, v in result["component"].items()}
    assert {(a, b) for a in component for b in component if component[a] == component[b]} == same
    roots = {find(i) for i in parent}
    assert result["count"] == len(roots)
    sizes = [sum(1 for i in parent if find(i) == r) for r in roots]
    assert result["singletons"] == sizes.count(1)
    paths = [scopes[e["id"] % len(scopes)].strip("/") for e in events]
    for path, count in result["counts"].items():
        inside = [p for p in paths if p and (p == path or p.startswith(path + "/") or not path)]
        assert count == len(inside), path
    assert result["scoped"] == sum(1 for p in paths if p)
