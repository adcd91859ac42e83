"""Never a pass, a node or a batch lost in silence: a failed backward pass ends for viewers
and recordings with the engine's grads; a string UTF-8 cannot encode loses nothing; labels
are cut to one rule where they are made; a node made under no_grad() stays unannounced.

Each test runs a real server on loopback with real websocket clients (or a real hub with a
real publisher), or reads a real recording."""

from __future__ import annotations

import asyncio

import _tracing_helpers as th
import pytest
from conftest import plugin

import opgraph
from opgraph import Engine, Op, OpgraphError, topological_order
from opgraph.server.events import MAX_LABEL
from opgraph.server.publisher import Publisher
from opgraph.server.recording import Recording
from opgraph.server.server import TraceServer

# --- a failed backward pass --------------------------------------------------------------


class HookFailed(Exception):
    pass


def chain(engine: Engine, length: int):
    """x -> tanh -> ... -> loss: a graph longer than a chunk of reported steps (256), so that
    a pass failing near its leaves has reported hundreds of steps already."""
    x = engine.value(0.5, label="x")
    node = x
    for k in range(length):
        node = (node * 0.9 + 0.01).tanh()
        node.label = f"n{k}"
    return x, node


def failing_pass(engine: Engine):
    """A first pass that succeeds, then a second one over a longer graph sharing its leaf that
    a hook stops near the leaves: the engine rolls that pass's grads back."""
    x, first = chain(engine, 50)
    first.backward()  # pass 1: the grads viewers should keep seeing
    second = first
    for k in range(600):
        second = (second * 1.1).tanh()
        second.label = f"m{k}"
    stop_at = topological_order(second)[60]

    def hook(grad):
        raise HookFailed("no further, please")

    stop_at.register_hook(hook)
    before = {n.id: n.grad for n in topological_order(second)}
    with pytest.raises(HookFailed):
        second.backward()  # pass 2: fails after reporting hundreds of steps
    after = {n.id: n.grad for n in topological_order(second)}
    assert after == before  # the engine put every grad back
    assert any(g != 0 for g in after.values()) and any(g == 0 for g in after.values())
    return second


def grads_of(nodes: dict[int, dict]) -> dict[int, float]:
    return {i: n["grad"] for i, n in nodes.items()}


def engine_grads(root) -> dict[int, float]:
    return {n.id: n.grad for n in topological_order(root)}


def test_a_failed_pass_ends_for_live_viewers_and_late_joiners_with_the_engines_grads():
    engine = Engine(name="failing", entry_points=False)

    async def main():
        with engine.serve(port=0) as server:
            live = await th.connect_reader(server.ws_url)
            await live.until(lambda e: e["type"] == "snapshot_end")
            root = await asyncio.to_thread(failing_pass, engine)
            await asyncio.to_thread(server.flush)
            last = server.stats()["seq"]
            events = await live.until_seq(last)
            late = await th.connect_reader(server.ws_url)
            snapshot = await late.until(lambda e: e["type"] == "snapshot_end")
            return root, events, snapshot

    root, events, snapshot = asyncio.run(main())
    ends = [e for e in events if e["type"] == "backward_end"]
    begins = [e for e in events if e["type"] == "backward_begin"]
    assert [e["pass"] for e in begins] == [e["pass"] for e in ends] == [1, 2]
    assert "error" not in ends[0]
    assert ends[1]["error"] == "HookFailed: no further, please"
    assert ends[1]["root"] == root.id
    # What the live viewer holds, and the late joiner's snapshot, are the engine's grads.
    want = engine_grads(root)
    live_grads = grads_of(th.graph_of(events))
    assert {i: live_grads[i] for i in want} == want
    begin = snapshot[1]
    assert begin["type"] == "snapshot_begin" and "backward" not in begin  # no pass running
    nodes = {e["id"]: e for e in snapshot if e["type"] == "node"}
    assert {i: nodes[i]["grad"] for i in want} == want


def test_a_failed_pass_in_a_recording_ends_and_replays_to_the_engines_grads(tmp_path):
    path = tmp_path / "failed.ogtrace"
    engine = Engine(name="recorded", entry_points=False)
    with engine.serve(port=0, record=path):
        root = failing_pass(engine)
    recording = Recording(path)
    events = list(recording)
    assert recording.damage is None
    kinds = [e["type"] for e in events if e["type"].startswith("backward_")]
    assert kinds == ["backward_begin", "backward_end"] * 2  # no pass left open
    assert events[-1]["type"] == "backward_end" and "HookFailed" in events[-1]["error"]
    replayed = grads_of(th.graph_of(events))
    assert {n.id: replayed[n.id] for n in topological_order(root)} == engine_grads(root)


def test_a_derivative_that_raises_under_detect_anomaly_ends_the_pass_as_failed():
    # The checked path (detect_anomaly) reports each step before it runs: the failing node's
    # own step is rolled back too.
    def bad_derivative(out, x):
        raise ArithmeticError("no derivative here")

    engine = Engine(
        plugins=[plugin("bad", Op("bad", lambda x: x, bad_derivative))], entry_points=False
    )

    async def main():
        with engine.serve(port=0) as server:
            live = await th.connect_reader(server.ws_url)
            await live.until(lambda e: e["type"] == "snapshot_end")
            x = engine.value(2.0, label="x")
            loss = (x.bad() * 3.0).tanh()
            with opgraph.detect_anomaly(), pytest.raises(OpgraphError, match="no derivative"):
                loss.backward()
            await asyncio.to_thread(server.flush)
            return loss, await live.until_seq(server.stats()["seq"])

    loss, events = asyncio.run(main())
    end = events[-1]
    assert end["type"] == "backward_end" and "no derivative here" in end["error"]
    got = grads_of(th.graph_of(events))
    assert {n.id: got[n.id] for n in topological_order(loss)} == engine_grads(loss)
    assert all(g == 0.0 for g in engine_grads(loss).values())


def test_a_published_failed_pass_reaches_the_hub_as_failed():
    hub = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start()
    engine = Engine(name="published", entry_points=False)
    publisher = Publisher(engine, hub.publish_url).start()
    assert publisher.wait_connected(th.TIMEOUT)
    kept = []

    def failing_pass():
        x = engine.value(1.5, label="x")
        y = (x * x).tanh()
        y.register_hook(lambda grad: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            y.backward()
        kept.append(engine.value(0.0, label="after"))

    async def read():
        # The reader joins before the pass, so it sees the pass's events live (a late
        # joiner gets a snapshot, which carries no pass events).
        reader = await th.connect_reader(hub.ws_url)
        await asyncio.to_thread(failing_pass)
        return await reader.until(lambda e: e.get("label") == "after")

    try:
        events = asyncio.run(asyncio.wait_for(read(), th.TIMEOUT))
    finally:
        publisher.close()
        hub.close()
    ends = [e for e in events if e["type"] == "backward_end"]
    assert len(ends) == 1 and ends[0]["error"].startswith("ZeroDivisionError")


# --- strings UTF-8 cannot encode ----------------------------------------------------------

BAD = "data\udcff\udc80.csv"  # os.fsdecode of bytes that are not UTF-8 (surrogateescape)
SHOWN = "data\ufffd\ufffd.csv"


def wide_graph(engine: Engine, count: int = 10_000):
    """`count` labelled leaves, the one in the middle labelled with lone surrogates, in a
    scope that has them too, and their sum."""
    leaves = []
    for k in range(count):
        if k == count // 2:
            with opgraph.scope(BAD):
                leaves.append(engine.value(float(k), label=BAD))
        else:
            leaves.append(engine.value(float(k), label=f"v{k}"))
    return leaves


def check_every_node_arrived(nodes: dict[int, dict], count: int = 10_000) -> None:
    labels = sorted(n["label"] for n in nodes.values())
    assert len(labels) == count
    assert SHOWN in labels and f"v{count - 1}" in labels and "v0" in labels
    (bad,) = [n for n in nodes.values() if n["label"] == SHOWN]
    assert bad["scope"] == SHOWN and bad["data"] == count // 2


def test_a_label_and_scope_utf8_cannot_encode_lose_nothing_on_a_local_server():
    engine = Engine(name="surrogates", entry_points=False)

    async def main():
        with engine.serve(port=0) as server:
            live = await th.connect_reader(server.ws_url)
            await live.until(lambda e: e["type"] == "snapshot_end")
            await asyncio.to_thread(wide_graph, engine)
            await asyncio.to_thread(server.flush)
            events = await live.until_seq(server.stats()["seq"])
            assert server.stats()["seq"] == 10_000
            late = await th.connect_reader(server.ws_url)
            return events, await late.until(lambda e: e["type"] == "snapshot_end")

    events, snapshot = asyncio.run(main())
    check_every_node_arrived(th.graph_of(events))
    check_every_node_arrived(th.graph_of(snapshot))


def test_a_label_and_scope_utf8_cannot_encode_lose_nothing_through_a_publisher_and_hub():
    hub = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start()
    engine = Engine(name="surrogates", entry_points=False)
    publisher = Publisher(engine, hub.publish_url).start()
    assert publisher.wait_connected(th.TIMEOUT)
    try:

        async def main():
            live = await th.connect_reader(hub.ws_url)
            await live.until(lambda e: e["type"] == "snapshot_end")
            await asyncio.to_thread(wide_graph, engine)
            engine.value(0.0, label="end")
            return await live.until(lambda e: e.get("label") == "end")

        events = asyncio.run(main())
    finally:
        publisher.close()
        hub.close()
    assert publisher.dropped == 0 and publisher.failures == 0
    nodes = th.graph_of(events)
    del nodes[max(nodes)]  # "end"
    check_every_node_arrived(nodes)


def test_the_engine_keeps_the_replaced_text():
    engine = Engine(name="plain", entry_points=False)
    v = engine.value(1.0, label=BAD)
    assert v.label == SHOWN
    v.label = "\ud83d" + "ok"  # half an emoji
    assert v.label == "\ufffdok"
    with opgraph.scope(BAD) as path:
        assert path == SHOWN and engine.value(0.0).scope == SHOWN


# --- one rule for string lengths ------------------------------------------------------------


def test_a_label_past_the_limit_arrives_cut_by_the_documented_rule():
    engine = Engine(name="long", entry_points=False)
    text = "".join(chr(0x1F600 + k % 50) for k in range(MAX_LABEL + 500))  # emoji

    async def main():
        with engine.serve(port=0) as server:
            live = await th.connect_reader(server.ws_url)
            await live.until(lambda e: e["type"] == "snapshot_end")
            made = engine.value(1.0, label=text)
            later = made * 2.0
            later.label = "y" * (MAX_LABEL + 1)
            await asyncio.to_thread(server.flush)
            return made, later, await live.until_seq(server.stats()["seq"])

    made, later, events = asyncio.run(main())
    assert made.label == text[: MAX_LABEL - 1] + "\u2026" and len(made.label) == MAX_LABEL
    assert later.label == "y" * (MAX_LABEL - 1) + "\u2026"
    nodes = th.graph_of(events)
    assert nodes[made.id]["label"] == made.label
    assert nodes[later.id]["label"] == later.label
    exact = engine.value(0.0, label="z" * MAX_LABEL)
    assert exact.label == "z" * MAX_LABEL  # at the limit: kept whole


# --- no_grad ------------------------------------------------------------------------------


def test_a_label_set_on_a_node_made_under_no_grad_announces_nothing():
    engine = Engine(name="nograd", entry_points=False)

    async def main():
        with engine.serve(port=0) as server:
            live = await th.connect_reader(server.ws_url)
            await live.until(lambda e: e["type"] == "snapshot_end")
            v = engine.value(2.0, label="v")
            with opgraph.no_grad():
                q = v * 7
                q.label = "x"
            q.label = "x again, outside no_grad"  # still a node viewers never saw
            engine.value(0.0, label="end")
            await asyncio.to_thread(server.flush)
            events = await live.until(lambda e: e.get("label") == "end")
            late = await th.connect_reader(server.ws_url)
            snapshot = await late.until(lambda e: e["type"] == "snapshot_end")
            # used by a traced node, it is announced then, with its label
            used = q + 1.0
            await asyncio.to_thread(server.flush)
            more = await live.until(lambda e: e.get("id") == used.id)
            return v, q, events, snapshot, more

    v, q, events, snapshot, more = asyncio.run(main())
    assert all(e.get("id") != q.id for e in events + snapshot)
    assert {e["label"] for e in snapshot if e["type"] == "node"} == {"v", "end"}
    forward = [e for e in more if e.get("id") == q.id]
    assert [(e["type"], e["label"]) for e in forward] == [("forward", "x again, outside no_grad")]


def test_a_node_unpickled_with_such_a_label_is_still_sent_with_everything_around_it():
    # Pickles keep a str as it is: a node pickled before labels were made UTF-8-safe comes
    # back with its lone surrogates; the encoder replaces them rather than fail the batch.
    engine = Engine(name="unpickled", entry_points=False)
    state = list(engine.value(4.0, label="plain").__getstate__())
    state[engine.Value._STATE.index("_label")] = BAD
    old = engine.Value.__new__(engine.Value)
    old.__setstate__(tuple(state))
    assert old.label == BAD

    async def main():
        with engine.serve(port=0) as server:
            live = await th.connect_reader(server.ws_url)
            await live.until(lambda e: e["type"] == "snapshot_end")
            before = [engine.value(float(k), label=f"b{k}") for k in range(100)]
            used = old * 2.0
            after = [engine.value(float(k), label=f"a{k}") for k in range(100)]
            await asyncio.to_thread(server.flush)
            return before + [used] + after, await live.until_seq(server.stats()["seq"])

    made, events = asyncio.run(main())
    nodes = th.graph_of(events)
    assert nodes[old.id]["label"] == SHOWN
    assert all(node.id in nodes for node in made)


def test_a_pass_failing_with_an_error_that_cannot_be_shown_still_ends_and_raises_it():
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    engine = Engine(name="unprintable", entry_points=False)

    async def main():
        with engine.serve(port=0) as server:
            live = await th.connect_reader(server.ws_url)
            await live.until(lambda e: e["type"] == "snapshot_end")
            y = engine.value(2.0, label="x").tanh()

            def hook(grad):
                raise Unprintable

            y.register_hook(hook)
            with pytest.raises(Unprintable):  # the program's own error, not another
                y.backward()
            await asyncio.to_thread(server.flush)
            return await live.until_seq(server.stats()["seq"])

    events = asyncio.run(main())
    assert events[-1]["type"] == "backward_end" and events[-1]["error"] == "Unprintable"
