"""A viewer that joins after a backward pass ended gets that pass in its snapshot
(`snapshot_begin`'s `last_pass`, docs/protocol.md "Snapshot"): the order of its steps, so it
can step through the pass as a viewer that watched it live. Real server, real websocket
client; the hub's bounds and the checks of `last_pass` on their own."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from opgraph import Engine, topological_order
from opgraph.errors import InvalidEvent
from opgraph.server.client import Graph, connect
from opgraph.server.events import check_last_pass
from opgraph.server.hub import Hub


def neuron(engine: Engine):
    """tanh(x1*w1 + x2*w2 + b) * 2: a small graph whose backward pass reaches every node."""
    x1, x2 = engine.value(2.0, label="x1"), engine.value(0.0, label="x2")
    w1, w2 = engine.value(-3.0, label="w1"), engine.value(1.0, label="w2")
    b = engine.value(6.88, label="b")
    return ((x1 * w1 + x2 * w2 + b).tanh()) * 2


def backward_order(root) -> list[int]:
    """The ids in the order the engine runs backward steps (reverse topological order)."""
    return [node.id for node in reversed(topological_order(root))]


async def snapshot_graph(url: str) -> Graph:
    """The graph a Python client builds from the hello and snapshot it gets on joining."""
    graph = Graph()
    conn = await connect(url)
    try:
        async for event in conn:
            graph.apply(event)
            if event["type"] == "snapshot_end":
                return graph
    finally:
        await conn.close()
    raise AssertionError("the stream ended before the snapshot did")


def test_a_client_joining_after_a_pass_gets_the_pass_in_its_snapshot():
    engine = Engine(name="late", entry_points=False)
    with engine.serve(port=0) as server:
        y = neuron(engine)
        y.backward()
        assert server.flush(timeout=30)
        graph = asyncio.run(asyncio.wait_for(snapshot_graph(server.ws_url), 30))
    assert graph.current_pass is None  # no pass in progress: the last one ended
    assert graph.last_pass == {"pass": 1, "root": y.id, "steps": backward_order(y)}
    assert graph.rejected == []
    assert graph.nodes[y.id]["grad"] == 1.0


def test_a_second_pass_replaces_the_first_and_a_failed_one_is_not_remembered():
    hub = Hub("e", {})
    hub.publish(forwards(3))
    hub.publish(a_pass(1, root=2, steps=[2, 1, 0]))
    hub.publish(a_pass(2, root=2, steps=[2, 0, 1]))
    assert last_pass(hub) == {"pass": 2, "root": 2, "steps": [2, 0, 1]}
    hub.publish(a_pass(3, root=2, steps=[2], error="ValueError: boom"))
    assert last_pass(hub) is None  # its grads were put back: nothing to step through


def test_the_last_pass_is_dropped_once_its_nodes_are_forgotten():
    hub = Hub("e", {}, max_nodes=10)
    hub.publish(forwards(3))
    hub.publish(a_pass(1, root=2, steps=[2, 1, 0]))
    hub.publish(forwards(7, first=3))  # 10 nodes: all kept
    assert last_pass(hub) == {"pass": 1, "root": 2, "steps": [2, 1, 0]}
    hub.publish(forwards(1, first=10))  # past max_nodes: the oldest (the pass's) are forgotten
    assert 0 not in hub.nodes
    assert hub.last_pass is None  # its steps are no longer held
    assert last_pass(hub) is None


def test_a_replaced_node_drops_the_last_pass():
    hub = Hub("e", {})
    hub.publish(forwards(3))
    hub.publish(a_pass(1, root=2, steps=[2, 1, 0]))
    hub.publish(forwards(1, first=1))  # node 1 announced again: another node, no grad
    assert last_pass(hub) is None


@pytest.mark.parametrize(
    ("value", "nodes", "field", "problem"),
    [
        ([1], 3, "'last_pass'", "must be a map"),
        ({"pass": 0, "root": 1, "steps": []}, 3, "'last_pass.pass'", "from 1"),
        ({"pass": 1, "root": "x", "steps": []}, 3, "'last_pass.root'", "must be an integer"),
        ({"pass": 1, "root": 1, "steps": [1, 2]}, 1, "'last_pass.steps'", "at most 1 entries"),
        ({"pass": 1, "root": 1, "steps": [1, 1]}, 3, "'last_pass.steps'", "twice"),
        ({"pass": 1, "root": 1, "steps": [1, -2]}, 3, "'last_pass.steps'", "integer from 0"),
        ({"pass": 1, "root": 1}, 3, "'last_pass.steps'", "must be a list"),
    ],
)
def test_a_bad_last_pass_is_refused_with_the_field_named(value, nodes, field, problem):
    with pytest.raises(InvalidEvent) as raised:
        check_last_pass(value, nodes)
    assert raised.value.field == field and problem in raised.value.problem
    assert "snapshot_begin" in str(raised.value)


def test_a_client_keeps_a_snapshot_whose_last_pass_is_bad():
    graph = Graph()
    graph.apply({"type": "hello", "protocol": "opgraph", "version": 1, "seq": 1})
    graph.apply({"type": "snapshot_begin", "seq": 1, "nodes": 1, "last_pass": {"pass": 1}})
    node = {"type": "node", "id": 0, "op": None, "parents": [], "data": 1.0, "label": "a"}
    graph.apply(node)
    graph.apply({"type": "snapshot_end", "seq": 1})
    assert graph.last_pass is None and list(graph.nodes) == [0]
    assert len(graph.rejected) == 1 and "'last_pass.steps'" in graph.rejected[0]


def forwards(count: int, first: int = 0) -> list[dict]:
    return [
        {"type": "forward", "id": id_, "op": None, "parents": [], "data": 1.0, "label": ""}
        for id_ in range(first, first + count)
    ]


def a_pass(number: int, root: int, steps: list[int], error: str | None = None) -> list[dict]:
    end = {"type": "backward_end", "root": root, "pass": number}
    if error is not None:
        end["error"] = error
    return [
        {"type": "backward_begin", "root": root, "pass": number},
        *({"type": "backward", "id": id_, "grad": 0.5} for id_ in steps),
        end,
    ]


def last_pass(hub: Hub) -> dict | None:
    return msgpack.unpackb(hub.snapshot_frames()[0]).get("last_pass")
