"""The tracing server with real websocket clients on loopback: joins, backpressure, fan-out."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import _tracing_helpers as th
import pytest

import opgraph
from opgraph import Engine, OpgraphError
from opgraph.server.server import ServerError


def new_engine(name: str = "test") -> Engine:
    return Engine(name=name, entry_points=False)


def mlp_step(engine: Engine, params: list, width: int = 8) -> None:
    """A small training step: forward, backward, an optimizer update of the parameters."""
    x = [engine.value(0.1 * i) for i in range(width)]
    total = engine.value(0.0)
    for k, p in enumerate(params):
        total = total + (p * x[k % width]).tanh()
    loss = total * total
    loss.backward()
    for p in params:
        p.data -= 0.01 * p.grad
        p.grad = 0.0


async def final_seq(server) -> int:
    """The seq of the last event so far, once the server has numbered everything."""
    await asyncio.to_thread(server.flush)  # in a thread: our own viewers must keep reading
    return server.stats()["seq"]


async def numbered(server) -> int:
    """The seq of the last event so far, without waiting for any viewer."""
    while server.tracer.buffer:
        await asyncio.sleep(0.002)
    return server.stats()["seq"]  # runs on the loop: after the drain that emptied the buffer


def test_late_joiner_gets_a_snapshot_then_the_stream_without_gap_or_duplicate():
    engine = new_engine()
    params = [engine.value(0.1 * k, label=f"w{k}") for k in range(20)]

    async def main():
        with engine.serve(port=0) as server:
            early = await th.connect_reader(server.ws_url)
            first = await early.until(lambda e: e["type"] == "snapshot_end")
            assert [e["type"] for e in first] == ["hello", "snapshot_begin", "snapshot_end"]

            done, joined = threading.Event(), threading.Event()

            def train():
                steps = 0
                while steps < 40 or not joined.is_set():
                    mlp_step(engine, params)
                    time.sleep(0.002)
                    steps += 1
                done.set()

            producer = threading.Thread(target=train)
            producer.start()
            # Join while the program is running, once the server has numbered some events
            # (while the engine is busy, the drain may wait up to DRAIN_DEFER).
            while server.stats()["seq"] == 0:
                await asyncio.sleep(0.01)
            late = await th.connect_reader(server.ws_url)
            joined.set()
            while not done.is_set():
                await asyncio.sleep(0.01)
            producer.join()
            last = await final_seq(server)
            got_early = first + await early.until_seq(last)
            got_late = await late.until_seq(last)
            await early.ws.close()
            await late.ws.close()
            return got_early, got_late, last

    got_early, got_late, last = asyncio.run(main())
    hello, begin = got_late[0], got_late[1]
    assert hello["type"] == "hello" and begin["type"] == "snapshot_begin"
    assert 0 < begin["seq"] < last, "the late viewer must have joined mid-run"
    assert hello["seq"] == begin["seq"]
    end = next(i for i, e in enumerate(got_late) if e["type"] == "snapshot_end")
    assert sum(e["type"] == "node" for e in got_late[:end]) == begin["nodes"]
    live = [e["seq"] for e in got_late[end + 1 :]]
    assert live == list(range(begin["seq"] + 1, last + 1))  # no gap, no duplicate
    early_graph, late_graph = th.graph_of(got_early), th.graph_of(got_late)
    assert late_graph == early_graph  # grads and updated data included
    for p in params:  # the viewer knows the latest data of the parameters it has seen used
        assert early_graph[p.id]["label"] == p.label


def test_stalled_viewer_is_resynced_while_a_fast_one_loses_nothing(tmp_path):
    engine = new_engine()
    params = [engine.value(0.001 * k) for k in range(300)]
    limit = 10_000  # more than one step makes: the fast viewer never overflows
    recording = tmp_path / "run.ogtrace"

    async def main():
        with engine.serve(port=0, queue_limit=limit, record=recording) as server:
            fast = await th.connect_reader(server.ws_url)
            # A viewer that stops reading: a tiny receive buffer and a one-frame queue.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            stalled = th.Reader(await th.open_ws(server.ws_url, sock=sock, max_queue=1))
            await stalled.until(lambda e: e["type"] == "snapshot_end")
            await fast.until(lambda e: e["type"] == "snapshot_end")
            fast_events: list[dict] = []
            stop = asyncio.Event()

            async def read_fast():
                while not stop.is_set() or fast.pending:
                    try:
                        fast_events.append(await fast.next(timeout=0.5))
                    except TimeoutError:
                        continue

            reading = asyncio.ensure_future(read_fast())
            for _ in range(60):  # about 150,000 events, more than the kernel buffers hold
                mlp_step(engine, params, width=50)
                seq = await numbered(server)
                while not fast_events or fast_events[-1]["seq"] < seq:
                    await asyncio.sleep(0.005)  # the fast viewer keeps up (the test waits)
            last = await numbered(server)
            while fast_events[-1].get("seq") != last:
                await asyncio.sleep(0.05)
            stop.set()
            await reading
            stats = server.stats()
            stalled_events = await stalled.until_seq(last, timeout=30)
            await fast.ws.close()
            await stalled.ws.close()
            return fast_events, stalled_events, stats, last

    fast_events, stalled_events, stats, last = asyncio.run(main())
    assert [e["seq"] for e in fast_events] == list(range(1, last + 1))
    assert not any(e["type"] in ("dropped", "snapshot_begin") for e in fast_events)
    # while it stalls, the stalled viewer's queue overflowed and events are counted lost
    assert sorted(v["dropped"] > 0 for v in stats["viewers"]) == [False, True], stats
    for viewer in stats["viewers"]:
        assert viewer["max_queued"] <= limit  # memory per viewer stays bounded
    kinds = [e["type"] for e in stalled_events]
    assert "dropped" in kinds
    drop = kinds.index("dropped")
    assert stalled_events[drop]["count"] > 0
    assert kinds[drop + 1] == "snapshot_begin"
    # before the drop: gap-free; then the snapshot; then gap-free from its seq on
    before = [e["seq"] for e in stalled_events[:drop] if "seq" in e and e["type"] != "hello"]
    assert before == list(range(1, len(before) + 1))
    fast_graph = th.graph_of([{"type": "hello"}, *fast_events])
    stalled_graph = th.graph_of(stalled_events)
    assert stalled_graph == fast_graph  # consistent: the same final graph
    # the recording was made before any per-viewer dropping: it has every event
    from opgraph.server.recording import Recording

    recorded = list(Recording(recording))
    assert [e["seq"] for e in recorded[1:]] == list(range(1, last + 1))
    assert th.graph_of(recorded) == fast_graph
    assert sum(e["count"] for e in stalled_events if e["type"] == "dropped") > 0


def test_fifty_viewers_receive_the_same_complete_stream():
    engine = new_engine()
    params = [engine.value(0.1 * k) for k in range(10)]

    async def main():
        with engine.serve(port=0) as server:
            readers = await asyncio.gather(*[th.connect_reader(server.ws_url) for _ in range(50)])
            await asyncio.gather(*[r.until(lambda e: e["type"] == "snapshot_end") for r in readers])
            for _ in range(5):
                mlp_step(engine, params)
            last = await final_seq(server)
            streams = await asyncio.gather(*[r.until_seq(last) for r in readers])
            assert len(server.stats()["viewers"]) == 50
            await asyncio.gather(*[r.ws.close() for r in readers])
            return streams, last

    streams, last = asyncio.run(main())
    for stream in streams:
        assert [e["seq"] for e in stream] == list(range(1, last + 1))
        assert stream == streams[0]


def test_viewer_can_ask_for_a_snapshot_and_the_stream_continues_after_it():
    import msgpack

    engine = new_engine()

    async def main():
        with engine.serve(port=0) as server:
            reader = await th.connect_reader(server.ws_url)
            await reader.until(lambda e: e["type"] == "snapshot_end")
            a = engine.value(1.0, label="a")
            b = a * 3
            await reader.until_seq(await final_seq(server))
            await reader.ws.send(msgpack.packb({"type": "snapshot"}))
            await reader.ws.send(msgpack.packb({"type": "from-the-future", "x": 1}))  # ignored
            snap = await reader.until(lambda e: e["type"] == "snapshot_end")
            c = b + a
            after = await reader.next()
            await reader.ws.close()
            return snap, after, (a, b, c)

    snap, after, (a, b, c) = asyncio.run(main())
    assert snap[0] == {"type": "snapshot_begin", "seq": 3, "nodes": 3}
    assert [n["id"] for n in snap[1:-1]] == [a.id, b.parents[1].id, b.id]
    assert snap[1] == {
        "type": "node",
        **{"id": a.id, "op": None, "parents": [], "data": 1.0, "grad": 0.0, "label": "a"},
    }
    assert after["seq"] == 4 and after["type"] == "forward" and after["id"] == c.id


def test_an_engine_is_served_once_and_a_busy_port_is_a_clear_error():
    engine = new_engine("busy")
    with engine.serve(port=0) as server:
        with pytest.raises(ServerError, match="already traced"):
            engine.serve(port=0)
        other = new_engine("other")
        with pytest.raises(ServerError, match=f"127.0.0.1:{server.port}"):
            other.serve(port=server.port)
        with pytest.raises(OpgraphError, match=f"127.0.0.1:{server.port}"):  # one taxonomy
            opgraph.serve(port=server.port, engine=other)
        assert other.tracer is None
    assert engine.tracer is None  # closing detaches the tracer
    with engine.serve(port=0):  # and the engine can be served again
        pass


def test_abrupt_disconnects_do_not_disturb_the_engine_or_other_viewers():
    engine = new_engine()
    params = [engine.value(0.1 * k) for k in range(10)]

    async def main():
        with engine.serve(port=0) as server:
            keeper = await th.connect_reader(server.ws_url)
            await keeper.until(lambda e: e["type"] == "snapshot_end")
            for _ in range(5):  # viewers that vanish without a closing handshake
                sock = socket.create_connection(("127.0.0.1", server.port))
                ws = await th.open_ws(server.ws_url, sock=sock)
                await ws.recv()
                linger = struct.pack("ii", 1, 0)  # close with a TCP reset, no goodbye
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                ws.transport.abort()
            for _ in range(3):
                mlp_step(engine, params)
            last = await final_seq(server)
            events = await keeper.until_seq(last)
            await asyncio.sleep(0.1)
            viewers = len(server.stats()["viewers"])
            await keeper.ws.close()
            return events, last, viewers

    events, last, viewers = asyncio.run(main())
    assert [e["seq"] for e in events] == list(range(1, last + 1))
    assert viewers == 1  # the vanished viewers were cleaned up


def test_events_lost_before_the_server_numbers_them_resync_every_viewer():
    engine = new_engine()

    async def main():
        with engine.serve(port=0, buffer_limit=100) as server:
            reader = await th.connect_reader(server.ws_url)
            await reader.until(lambda e: e["type"] == "snapshot_end")
            x = engine.value(0.5)
            for _ in range(20_000):  # far faster than the loop drains a 100-event buffer
                x = x.tanh()
            last = await final_seq(server)
            # (snapshot_begin repeats the seq of the last event before it: not the end)
            got = await reader.until(
                lambda e: (
                    e["type"] == "snapshot_end"
                    or (e.get("seq") == last and e["type"] != "snapshot_begin")
                )
            )
            if got[-1]["type"] == "snapshot_end":
                got += await reader.until_seq(last) if last > got[-1]["seq"] else []
            await reader.ws.close()
            return got, last, x

    got, last, x = asyncio.run(main())
    drops = [e for e in got if e["type"] == "dropped"]
    assert drops and drops[0]["count"] > 0
    kinds = [e["type"] for e in got]
    assert kinds[kinds.index("dropped") + 1] == "snapshot_begin"
    seqs = [e["seq"] for e in got if e["type"] not in ("hello", "node", "dropped") and "seq" in e]
    assert seqs == sorted(seqs) and seqs[-1] == last  # numbered events are never skipped
    # what the viewer shows is a part of the real graph, exactly: no invented or stale node
    from opgraph import topological_order

    real = {n.id: n for n in topological_order(x)}
    graph = th.graph_of(got)
    assert graph and all(graph[i]["data"] == real[i].data for i in graph)
    assert all(graph[i]["parents"] == [p.id for p in real[i].parents] for i in graph)


def test_a_viewer_joining_after_a_plugin_was_added_hears_of_its_ops():
    from opgraph import Op, hookimpl

    class Square:
        @hookimpl
        def register_ops(self, register):
            register(Op("square", lambda a: a * a, lambda out, a: (2 * a,)))

    engine = new_engine()

    async def hello(server):
        reader = await th.connect_reader(server.ws_url)
        first = await reader.next()
        await reader.ws.close()
        return first

    with engine.serve(port=0) as server:
        assert "square" not in asyncio.run(hello(server))["ops"]
        engine.register(Square(), name="square-plugin")
        y = engine.value(3.0).square()
        assert asyncio.run(hello(server))["ops"]["square"] == "square-plugin"
        assert y.data == 9.0
