"""Draining the tracer while the engine runs: the drain takes whole records from the front of
a buffer the engine thread keeps adding to, and the server's drain lets a busy engine run
(up to DRAIN_DEFER of lag) without ever starving the viewers."""

from __future__ import annotations

import asyncio
import threading
import time

import _tracing_helpers as th

from opgraph import Engine
from opgraph.server.server import DRAIN_INTERVAL
from opgraph.trace import FORWARD, Tracer, event_count, records


def test_draining_while_the_engine_adds_loses_and_repeats_nothing():
    engine = Engine(name="drain-race", entry_points=False)
    # idle=0: each drain also sends the nodes collected for the step in progress, racing the
    # engine that adds to them (see Tracer._flush_idle)
    tracer = Tracer(engine, idle=0)
    tracer.attach()
    made: list[int] = []

    def program():
        for k in range(300):
            x = engine.value(0.5)
            y = x
            for _ in range(20 + k % 2):  # a structure unlike the last step's: all as events
                y = y.tanh() * 0.5
            y.backward()
            made.extend(n.id for n in (x, y))

    producer = threading.Thread(target=program)
    producer.start()
    drained: list[tuple] = []
    while producer.is_alive() or tracer.pending():
        drained += records(tracer.drain(97))  # small batches: many drains race the engine
    producer.join()
    tracer.detach()
    forward_ids = [record[2].id for record in drained if record[0] == FORWARD]
    assert forward_ids == sorted(set(forward_ids))  # each node once, in the order made
    assert set(made) <= set(forward_ids)
    assert tracer.pending() == 0 and tracer.lost == 0
    # every backward step drained: 61 or 64 nodes a pass (x, and tanh, 0.5 and mul 20 or
    # 21 times), plus begin and end, and the step's structure and step, for 300 passes
    steps = sum(event_count(r) for r in drained if r[0] not in (FORWARD,))
    assert steps == sum(1 + 3 * (20 + k % 2) + 2 + 2 for k in range(300))


def test_a_viewer_gets_events_while_the_engine_never_pauses():
    """A program that makes events without a pause longer than the drain's interval is not
    waited for forever: its events reach the viewer while it runs (after DRAIN_DEFER)."""
    engine = Engine(name="busy", entry_points=False)

    async def main():
        with engine.serve(port=0) as server:
            reader = await th.connect_reader(server.ws_url)
            await reader.until(lambda e: e["type"] == "snapshot_end")
            stop = threading.Event()

            def busy():  # never idle for a whole DRAIN_INTERVAL, for 3 s at most
                deadline = time.monotonic() + 3
                while not stop.is_set() and time.monotonic() < deadline:
                    (engine.value(0.5) * 0.5).tanh()
                    time.sleep(DRAIN_INTERVAL / 50)

            producer = threading.Thread(target=busy)
            producer.start()
            try:
                first = await reader.until(lambda e: e["type"] == "forward")
                running = producer.is_alive()
            finally:
                stop.set()
                await asyncio.to_thread(producer.join)
            await reader.ws.close()
            return first, running

    first, running = asyncio.run(main())
    assert first[-1]["type"] == "forward"
    assert running  # the first events came while the engine was still busy
