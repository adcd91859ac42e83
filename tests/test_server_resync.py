"""Resyncing a viewer that cannot keep up: not snapshot after snapshot, and at the start of a
backward pass so that the viewer sees the pass. A real server and a real client on loopback;
a queue limit of 10 events makes every frame overflow, whatever the machine's speed."""

from __future__ import annotations

import asyncio

import _tracing_helpers as th
import msgpack

from opgraph import Engine, topological_order
from opgraph.server.client import Graph


def chain(engine: Engine, x, length: int):
    for _ in range(length):
        x = (x * 0.999).tanh()
    return x


async def numbered(server) -> int:
    while server.tracer.pending():
        await asyncio.sleep(0.002)
    return server.stats()["seq"]


def snapshots(events: list[dict]) -> list[list[dict]]:
    """The snapshots in `events`, each as [snapshot_begin, node maps..., snapshot_end]."""
    found, current = [], None
    for event in events:
        if event["type"] == "snapshot_begin":
            current = [event]
        elif current is not None:
            current.append(event)
            if event["type"] == "snapshot_end":
                found.append(current)
                current = None
    return found


def test_a_viewer_that_falls_behind_is_resynced_when_a_backward_pass_begins():
    engine = Engine(name="resync", entry_points=False)

    async def main():
        # No minimum interval, and no deadline within the test: only a pass start resyncs.
        options = dict(queue_limit=10, resync_interval=0, resync_pass_wait=600)
        with engine.serve(port=0, **options) as server:
            reader = await th.connect_reader(server.ws_url)
            await reader.until(lambda e: e["type"] == "snapshot_end")
            x = engine.value(0.5, label="x")
            y = chain(engine, x, 100)  # one frame of 400 events: the viewer overflows
            await numbered(server)
            for _ in range(30):  # many more overflows: they do not each cost a snapshot
                y = chain(engine, y, 5)
                await numbered(server)
            resyncs_before_the_pass = server.stats()["viewers"][0]["resyncs"]
            y.backward()  # the pass begins: the viewer is resynced right there
            last = await numbered(server)
            got = await reader.until(lambda e: e["type"] == "snapshot_end")
            # the pass's steps overflow the queue of 10 again; ask for a snapshot after it
            await reader.ws.send(msgpack.packb({"type": "snapshot"}))
            got += await reader.until(lambda e: e["type"] == "snapshot_end")
            stats = server.stats()["viewers"][0]
            await reader.ws.close()
            return got, last, y, resyncs_before_the_pass, stats

    got, last, y, resyncs_before_the_pass, stats = asyncio.run(main())
    assert resyncs_before_the_pass == 0
    assert [e["type"] for e in got].count("dropped") == 2 == stats["resyncs"]
    during, after = snapshots(got)
    # the first snapshot was taken as the pass began: it says so, and no node has a grad yet
    assert during[0]["backward"] == {"pass": 1, "root": y.id}
    during_nodes = [node for node in during if node["type"] == "node"]
    assert all("pass" not in node and node["grad"] == 0.0 for node in during_nodes)
    assert during[0]["seq"] < last
    graph = Graph()  # the Python client follows: the pass is in progress after the snapshot
    for event in during:
        graph.apply(event)
    assert graph.current_pass == 1
    # the second came after the pass: every node shows the pass that reached it and its grad
    assert "backward" not in after[0] and after[0]["seq"] == last
    real = {node.id: node for node in topological_order(y)}
    nodes = {node["id"]: node for node in after if node["type"] == "node"}
    assert set(real) <= set(nodes)
    assert all(nodes[i]["pass"] == 1 and nodes[i]["grad"] == real[i].grad for i in real)


def test_a_viewer_that_falls_behind_is_resynced_at_the_latest_after_the_pass_wait():
    engine = Engine(name="resync", entry_points=False)

    async def main():
        options = dict(queue_limit=10, resync_interval=0, resync_pass_wait=0.2)
        with engine.serve(port=0, **options) as server:
            reader = await th.connect_reader(server.ws_url)
            await reader.until(lambda e: e["type"] == "snapshot_end")
            chain(engine, engine.value(0.5), 100)  # overflows; no pass follows
            last = await numbered(server)
            got = await reader.until(lambda e: e["type"] == "snapshot_end")
            await reader.ws.close()
            return got, last

    got, last = asyncio.run(main())
    assert [e["type"] for e in got[:2]] == ["dropped", "snapshot_begin"]
    assert got[1]["seq"] == last and "backward" not in got[1]
    assert len(got) == 2 + got[1]["nodes"] + 1
