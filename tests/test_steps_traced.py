"""A real traced training loop (the engine's tracer, helper A's steps) through the local
server, its recording and a replay: the late joiner's history is what the script saw."""

from __future__ import annotations

import asyncio

import _tracing_helpers as th
from _steps_helpers import floats
from test_steps_server import joined

from opgraph import Engine
from opgraph.server.events import u4s, u8s
from opgraph.server.recording import Recording
from opgraph.server.replay import ReplayServer

STEPS = 25


def train(engine, params, seen, steps=STEPS):
    xs = [engine.value(0.3 * k - 0.5, label=f"x{k}") for k in range(len(params))]
    for _ in range(steps):
        total = engine.value(0.0)
        for p, x in zip(params, xs, strict=True):
            total = total + (p * x).tanh()
        loss = total * total
        loss.label = "loss"
        loss.backward()
        seen.append(
            {
                "loss": loss.data,
                "data": {p.id: p.data for p in params},
                "grad": {p.id: p.grad for p in params},
            }
        )
        for p in params:
            p.data -= 0.05 * p.grad
            p.grad = 0.0
    return loss


async def late_joiner(url):
    reader = await th.connect_reader(url)
    got = await reader.until(lambda e: e["type"] == "snapshot_end")
    await reader.ws.close()
    return joined(got)


def recorded_structure(events):
    return next(e for e in events if e["type"] == "structure")


def check(got, params, seen, loss):
    structure, step, history = got["structure"], got["step"], got["history"]
    assert step["step"] == STEPS
    ids = [step["first"] + o for o in u4s(structure["offsets"])]
    assert list(u8s(structure["ids"])) == ids and all(i in got["nodes"] for i in ids)
    assert got["nodes"][loss.id]["label"] == "loss"  # the last step's nodes, by its ids
    assert got["nodes"][loss.id]["data"] == loss.data
    assert floats(history["loss"]) == [s["loss"] for s in seen]
    inputs = list(u8s(structure["inputs"]))
    assert {p.id for p in params} <= set(inputs)
    e, rows = len(inputs), len(seen) - history["from"]
    data, grad = floats(history["data"]), floats(history["grad"])
    assert len(data) == rows * e
    for k, s in enumerate(seen[history["from"] :]):
        for j, id_ in enumerate(inputs):
            if id_ in s["data"]:
                assert data[k * e + j] == s["data"][id_] and grad[k * e + j] == s["grad"][id_]


def test_a_traced_training_loop_reaches_a_late_joiner_and_a_recording_with_its_history(
    tmp_path,
):
    path = tmp_path / "train.ogtrace"
    engine = Engine(name="trained", entry_points=False)
    params = [engine.value(0.1 * k - 0.2, label=f"w{k}") for k in range(4)]
    seen: list[dict] = []
    with engine.serve(port=0, record=path) as server:
        loss = train(engine, params, seen)
        engine.tracer.touch(params)
        server.flush()  # the tracer's buffer drained: the snapshot has every step
        live = asyncio.run(asyncio.wait_for(late_joiner(server.ws_url), th.TIMEOUT))
    check(live, params, seen, loss)
    reader = Recording(path)
    recorded = list(reader)
    assert reader.damage is None
    assert sum(e["type"] == "step" for e in recorded) == STEPS
    assert sum(e["type"] == "structure" for e in recorded) >= 1
    # later steps are numbers only: the nodes of a step or two (the tracer may define the
    # structure at step 2), and the inputs; a full trace would be STEPS times the nodes
    nodes_per_step = len(u4s(recorded_structure(recorded)["offsets"]))
    forwards = sum(e["type"] == "forward" for e in recorded)
    assert forwards <= 2 * (nodes_per_step + len(params)), (forwards, nodes_per_step)
    with ReplayServer(path, speed=0, port=0) as replay:
        replay.start()
        assert replay.wait_done(timeout=th.TIMEOUT)
        replayed = asyncio.run(asyncio.wait_for(late_joiner(replay.ws_url), th.TIMEOUT))
    check(replayed, params, seen, loss)
