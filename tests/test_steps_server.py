"""Training steps through a real hub, a recording, a replay and an export.

A publisher on loopback sends a hand-made training (docs/protocol.md, "Steps"): step 1 as
events then `structure` and `step`, every later step as one `step` map. A viewer that joins
after N steps gets the structure's nodes named by the latest step's ids, the `structure`,
the latest `step` and a `history` whose rows are the numbers the script saw.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import _tracing_helpers as th
import msgpack
import pytest
from _steps_helpers import Training, floats, pack
from test_server_validate import HELLO, Tape, feed

from opgraph.server.events import u4s, u8s
from opgraph.server.hub import Hub
from opgraph.server.publisher import publish_url
from opgraph.server.recording import Recording
from opgraph.server.replay import ReplayServer
from opgraph.server.server import TraceServer

STEPS = 30


def joined(events: list[dict]) -> dict:
    """What a viewer that joined learns from its snapshot: nodes by id, and the steps maps."""
    end = next(i for i, e in enumerate(events) if e["type"] == "snapshot_end")
    snapshot = events[: end + 1]
    got: dict = {"nodes": {e["id"]: e for e in snapshot if e["type"] == "node"}}
    for e in snapshot:
        if e["type"] in ("structure", "step", "history", "snapshot_begin"):
            got[e["type"]] = e
    return got


def check_late_joiner(
    got: dict,
    training: Training,
    kept: int | None = None,
    loss_label: str = "loss",
    shift: int = 0,  # the hub's step numbers after those of earlier runs
) -> None:
    """The snapshot names the structure's nodes by the latest step's ids and carries the
    numbers the script saw: latest step on the nodes, loss and parameters in the history."""
    seen = training.seen
    structure, step, history = got["structure"], got["step"], got["history"]
    ids, offsets = list(u8s(structure["ids"])), list(u4s(structure["offsets"]))
    assert ids == [step["first"] + offset for offset in offsets]  # the latest step's ids
    assert offsets == training.offsets()
    a, loss = (got["nodes"][id_] for id_ in ids)  # the nodes are there, by those ids
    assert loss["label"] == loss_label and loss["parents"] == [a["id"], a["id"]]
    latest = seen[-1]
    assert floats(step["data"]) == latest["data"] and floats(step["grad"]) == latest["grad"]
    assert (a["data"], loss["data"]) == tuple(latest["data"][:2])
    assert (a["grad"], loss["grad"]) == tuple(latest["grad"][:2])
    w, x = (got["nodes"][id_] for id_ in u8s(structure["inputs"]))
    assert (w["label"], w["data"], w["grad"]) == ("w", latest["data"][2], latest["grad"][2])
    assert (x["label"], x["data"]) == ("x", latest["data"][3])
    rows = seen[-kept:] if kept else seen
    assert list(u8s(history["steps"]))[-len(rows) :] == [r["step"] + shift for r in rows]
    assert history["from"] == len(u8s(history["steps"])) - len(rows)
    assert floats(history["loss"])[-len(rows) :] == [r["data"][1] for r in rows]
    assert floats(history["data"]) == [v for r in rows for v in r["data"][2:]]
    assert floats(history["grad"]) == [v for r in rows for v in r["grad"][2:]]
    last_pass = got["snapshot_begin"]["last_pass"]  # the step's pass, to step through
    assert last_pass["pass"] == step["pass"] and last_pass["root"] == loss["id"]
    assert last_pass["steps"] == [loss["id"], a["id"], w["id"], x["id"]]


@pytest.fixture(scope="module")
def hub_session(tmp_path_factory):
    """A hub on loopback that records; a publisher sends STEPS steps, then names the
    latest step's loss in a `label` and in a new node; a viewer joins after it all."""
    path = tmp_path_factory.mktemp("steps") / "training.ogtrace"
    training = Training(gap=3)  # the engine's ids have holes: offsets are not 0, 1, 2...

    async def main(server):
        viewer = await th.connect_reader(server.ws_url)
        await viewer.until(lambda e: e["type"] == "snapshot_end")
        publisher = await th.open_ws(publish_url(server.publish_url))
        await publisher.send(pack(HELLO, *training.steps(1)))
        for _ in range(STEPS - 1):
            await publisher.send(pack(*training.next_step()))
        loss_id = training.seen[-1]["ids"][1]
        after = training.next_id + 10
        await publisher.send(
            pack(
                {"type": "label", "id": loss_id, "label": "final loss"},
                {"type": "forward", "id": after, "op": "tanh", "parents": [loss_id]}
                | {"data": 0.5, "label": "after"},
            )
        )
        await publisher.close()
        live = await viewer.until(lambda e: e["type"] == "run" and e["state"] == "end")
        late = await th.connect_reader(server.ws_url)
        snapshot = await late.until(lambda e: e["type"] == "snapshot_end")
        await viewer.ws.close()
        await late.ws.close()
        return live, snapshot

    server = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True, record=path)
    with server.start():
        live, snapshot = asyncio.run(asyncio.wait_for(main(server), th.TIMEOUT))
    return training, path, live, snapshot


def test_a_viewer_joining_a_hub_after_n_steps_gets_the_latest_step_and_the_history(
    hub_session,
):
    training, _, live, snapshot = hub_session
    got = joined(snapshot)
    # the later label and node named the latest step's loss by the publisher's id
    loss = next(n for n in got["nodes"].values() if n["label"] == "final loss")
    after = next(n for n in got["nodes"].values() if n["label"] == "after")
    assert after["parents"] == [loss["id"]]
    check_late_joiner(got, training, loss_label="final loss")
    # the structure's nodes are kept once: 2 parameters, 2 step nodes, 1 later node
    assert len(got["nodes"]) == 5
    # live: step 1 as events, then one `step` map per step, numbered by the hub
    steps = [e for e in live if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, STEPS + 1))
    assert [floats(e["data"]) for e in steps] == [s["data"] for s in training.seen]
    assert sum(e["type"] == "forward" for e in live) == 4 + 1


def test_the_recording_of_a_hub_with_steps_replays_to_the_same_late_joiner(hub_session):
    training, path, _, snapshot = hub_session
    reader = Recording(path)
    recorded = list(reader)
    assert reader.damage is None
    assert [e["step"] for e in recorded if e["type"] == "step"] == list(range(1, STEPS + 1))

    async def watch(server):
        reader = await th.connect_reader(server.ws_url)
        got = await reader.until(lambda e: e["type"] == "snapshot_end")
        await reader.ws.close()
        return got

    with ReplayServer(path, speed=0, port=0) as server:
        server.start()
        assert server.wait_done(timeout=th.TIMEOUT)
        replayed = asyncio.run(watch(server))
    mine, theirs = joined(replayed), joined(snapshot)
    for kind in ("structure", "step", "history"):
        assert mine[kind] == theirs[kind], kind
    assert mine["nodes"] == theirs["nodes"]


def test_export_writes_the_loss_and_each_parameter_as_counter_tracks(hub_session, tmp_path):
    training, path, _, _ = hub_session
    out = tmp_path / "trace.json"
    result = subprocess.run(
        [sys.executable, "-m", "opgraph", "export", "--chrome", str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    counters = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "C"]
    loss = [e["args"]["loss"] for e in counters if e["name"] == "loss"]
    assert loss == [s["data"][1] for s in training.seen]
    w = [e["args"] for e in counters if e["name"].startswith("w #")]
    assert w == [{"data": s["data"][2], "grad": s["grad"][2]} for s in training.seen]
    assert {e["name"].split(" #")[0] for e in counters} == {"loss", "w", "x"}


def test_the_history_is_bounded_at_history_steps():
    async def main(server, training):
        viewer = await th.connect_reader(server.ws_url)
        await viewer.until(lambda e: e["type"] == "snapshot_end")
        publisher = await th.open_ws(publish_url(server.publish_url))
        await publisher.send(pack(HELLO, *training.steps(1)))
        await publisher.send(pack(*training.steps(11)))
        await publisher.close()
        await viewer.until(lambda e: e["type"] == "run" and e["state"] == "end")
        late = await th.connect_reader(server.ws_url)
        got = await late.until(lambda e: e["type"] == "snapshot_end")
        await viewer.ws.close()
        await late.ws.close()
        return got

    training = Training()
    server = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True, history_steps=5)
    with server.start():
        got = joined(asyncio.run(asyncio.wait_for(main(server, training), th.TIMEOUT)))
    assert list(u8s(got["history"]["steps"])) == [8, 9, 10, 11, 12]
    check_late_joiner(got, training, kept=5)


def test_two_runs_on_a_hub_are_numbered_in_its_own_stream_and_its_recording_reads_back(
    tmp_path,
):
    tape = Tape()
    hub = Hub("hub", {}, recorder=tape)
    for gap in (0, 2):
        training = Training(gap=gap)
        frames = [pack(HELLO, *training.steps(1)), pack(*training.steps(4))]
        assert feed(hub, frames).closed is None
    path = tmp_path / "two.ogtrace"
    path.write_bytes(b"".join(tape.frames))
    reader = Recording(path)
    events = list(reader)
    assert reader.damage is None  # structure, step and pass numbers fit the stream
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 11))
    assert [e["structure"] for e in steps] == [1] * 5 + [2] * 5
    assert [e["pass"] for e in steps] == list(range(1, 11))
    passes = [e["pass"] for e in events if e["type"] == "backward_begin"]
    assert passes == [1, 6]  # the second run's pass 1 is the hub's pass 6
    got = joined(list(msgpack.Unpacker(_snapshot_bytes(hub), raw=False)))
    assert got["structure"]["structure"] == 2 and got["history"]["from"] == 5
    check_late_joiner(got, training, shift=5)


def _snapshot_bytes(hub: Hub):
    import io

    return io.BytesIO(b"".join([msgpack.packb(hub.hello_map(hub.seq)), *hub.snapshot_frames()]))


def test_a_values_only_step_leaves_the_graph_untouched_until_a_snapshot_needs_it():
    hub = Hub("hub", {})
    training = Training()
    hub.publish(training.steps(1))
    kept = dict(hub.nodes)
    hub.publish(training.steps(100))
    assert hub.nodes == kept  # no work per node for each step: the same nodes, unchanged
    got = joined(list(msgpack.Unpacker(_snapshot_bytes(hub), raw=False)))
    check_late_joiner(got, training)


def test_a_graph_that_changes_every_step_keeps_max_nodes_and_its_history():
    hub = Hub("hub", {}, max_nodes=40)
    losses = []
    next_id = 2
    maps = [
        {"type": "forward", "id": 0, "op": None, "parents": [], "data": 0.5, "label": "w"},
        {"type": "forward", "id": 1, "op": None, "parents": [], "data": 1.5, "label": "x"},
    ]
    from _steps_helpers import f8, u4, u8

    for step in range(1, 101):
        size = 1 + step % 3  # a chain of 1 to 3 nodes: a new structure every step
        ids = list(range(next_id, next_id + size))
        maps += [
            {"type": "forward", "id": i, "op": "mul", "parents": [0, i - 1 if k else 1]}
            | {"data": float(step), "label": ""}
            for k, i in enumerate(ids)
        ]
        maps += [
            {"type": "backward_begin", "root": ids[-1], "pass": step},
            {"type": "backward_end", "root": ids[-1], "pass": step},
            {"type": "structure", "structure": step, "ids": u8(*ids)}
            | {"offsets": u4(*range(size)), "inputs": u8(0, 1), "order": u4(), "root": size - 1},
            {"type": "step", "step": step, "structure": step, "first": ids[0], "pass": step}
            | {"data": f8(*[float(step)] * (size + 2)), "grad": f8(*[0.0] * (size + 2))},
        ]
        losses.append(float(step))
        next_id += size
    hub.publish(maps)
    assert len(hub.nodes) <= 40 and hub.steps.size <= 40 + 5
    got = joined(list(msgpack.Unpacker(_snapshot_bytes(hub), raw=False)))
    assert floats(got["history"]["loss"]) == losses
    assert got["history"]["from"] == 99 and got["structure"]["structure"] == 100


def test_events_after_a_step_see_the_graph_as_it_is_after_that_step():
    """A `data` on a parameter, and a node and a pass over the latest loss, after a step
    that came as one map: each finds the step's nodes and numbers, and changes them."""
    hub = Hub("hub", {})
    training = Training(gap=2)
    hub.publish(training.steps(5))
    a, loss = training.seen[-1]["ids"]
    hub.publish([{"type": "data", "id": 0, "data": 9.0}])  # w, set after the step
    after = loss + 10
    hub.publish(
        [
            {"type": "forward", "id": after, "op": "tanh", "parents": [loss], "data": 0.1}
            | {"label": "after"},
            {"type": "backward_begin", "root": after, "pass": 6},
            {"type": "backward", "id": after, "grad": 1.0},
            {"type": "backward", "id": loss, "grad": 0.5},
            {"type": "backward_end", "root": after, "pass": 6},
        ]
    )
    got = joined(list(msgpack.Unpacker(_snapshot_bytes(hub), raw=False)))
    nodes = got["nodes"]
    w = nodes[0]
    assert (w["data"], w["grad"]) == (9.0, training.seen[-1]["grad"][2])
    assert (nodes[loss]["data"], nodes[loss]["grad"]) == (training.seen[-1]["data"][1], 0.5)
    assert nodes[loss]["pass"] == 6 and nodes[a]["pass"] == 5
    assert nodes[after]["parents"] == [loss]
    assert got["snapshot_begin"]["last_pass"]["steps"] == [after, loss]


@pytest.mark.parametrize(
    "node",
    [
        ("mul", [3, 4], 2.5, "", None, ""),
        ("mul", [3, 7], 2.5, "", None, "L0/N3"),
        ("tanh", [4], -1.0, "a label", None, "L1"),
        (None, [], 0.5, "w", None, ""),
        ("pow", [4], 4.0, "", [2.0], "L0"),
        ("sum", [3, 4, 7], 1.0, "", None, ""),  # three parents: decoded, not patched
    ],
)
def test_a_renamed_node_is_the_node_with_its_new_id_parents_and_data(node):
    from opgraph.server.encode import as_tuple, forward_bytes, renamed_forward

    op, parents, data, label, const, scope = node
    packed = forward_bytes(5, 8, op, parents, data, label, 9, const, scope)
    renamed = renamed_forward(packed, 108, {3: 103, 4: 104}, 7.5)
    if len(parents) > 2:
        assert renamed is None
        return
    assert renamed is not None
    want = (op, tuple(104 if p == 4 else 103 if p == 3 else p for p in parents), 7.5, label)
    assert as_tuple(renamed) == (*want, tuple(const) if const else None, scope)
    assert msgpack.unpackb(renamed)["id"] == 108
