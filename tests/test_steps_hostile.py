"""Hostile `structure` and `step` maps from a publisher or in a recording are refused whole.

A publisher's frame with one bad steps map changes nothing (no node, no seq, no step kept)
and closes the connection with 1007 and a reason naming the map and the field; a recording
stops at it and says where. The maps come after a valid training step, so each case breaks
exactly one rule of docs/protocol.md ("Checking events from outside").
"""

from __future__ import annotations

import asyncio

import _tracing_helpers as th
import msgpack
import pytest
from _steps_helpers import Training, f8, pack, u4, u8
from test_server_validate import HELLO, Tape, feed, settled, snapshot_graph

from opgraph.errors import InvalidEvent
from opgraph.server.events import MAX_STEP_NODES, MAX_STRUCTURES, Steps, check_event
from opgraph.server.hub import Hub
from opgraph.server.intake import receive_run
from opgraph.server.recording import Recording


def structure(**fields):
    """A second structure of the training's nodes (ids 2 and 3 are known after step 1)."""
    base = {"type": "structure", "structure": 2, "ids": u8(2, 3), "offsets": u4(0, 1)}
    base |= {"inputs": u8(0, 1), "order": u4(1, 0, 2, 3), "root": 1}
    return base | fields


def step(**fields):
    """Step 2 of structure 1 (n + e = 4), values only: fresh ids, the next pass."""
    base = {"type": "step", "step": 2, "structure": 1, "first": 10, "pass": 2}
    base |= {"data": f8(1, 2, 3, 4), "grad": f8(1, 2, 3, 4)}
    return base | fields


HUGE = MAX_STEP_NODES + 1
BAD = {
    "truncated data": (step(data=f8(1, 2, 3, 4)[:31]), "'data' must hold n + e = 4 numbers"),
    "truncated grad": (step(grad=f8(1, 2, 3)), "'grad' must hold n + e = 4 numbers"),
    "truncated ids": (structure(ids=u8(2, 3)[:13]), "'ids' must hold 8-byte numbers, got 13"),
    "truncated order": (structure(order=u4(1, 0)[:6]), "'order' must hold 4-byte numbers"),
    "huge structure": (
        structure(ids=bytes(8 * HUGE), offsets=bytes(4 * HUGE)),
        f"'ids' with 'inputs' must name at most {MAX_STEP_NODES:,} nodes",
    ),
    "offsets not one per id": (structure(offsets=u4(0)), "'offsets' must hold one number per id"),
    "offsets not from 0": (structure(offsets=u4(1, 2)), "'offsets' must start at 0 and increase"),
    "offsets decreasing": (structure(offsets=u4(0, 0)), "'offsets' must start at 0 and increase"),
    "ids decreasing": (structure(ids=u8(3, 2)), "'ids' must be increasing ids"),
    "ids past 2**53": (structure(ids=u8(2, 2**60)), "'ids' must be increasing ids (at most"),
    "unknown ids": (structure(ids=u8(2, 99)), "'ids' must be known ids, got 99"),
    "unknown input": (structure(inputs=u8(0, 99)), "'inputs' must be known ids, got 99"),
    "order index out of range": (structure(order=u4(1, 4)), "'order' must be indexes below"),
    "order duplicated": (structure(order=u4(1, 0, 0)), "'order' must list each index at most"),
    "root out of range": (structure(root=4), "'root' must be an index below n + e = 4, got 4"),
    "no nodes": (structure(ids=b"", offsets=b""), "'ids' must name at least one node"),
    "structure skipped": (structure(structure=3), "'structure' must be 2, got 3"),
    "unknown structure": (step(structure=7), "'structure' 7 is not a structure defined"),
    "step skipped": (step(step=5), "'step' must be 2, got 5"),
    "first not new": (step(first=3), "'first' must be above every id used before (5), got 3"),
    "first past 2**53": (step(first=2**53 - 1), "'first' must leave its last id, first + 1, at"),
    "pass not the next": (step(**{"pass": 7}), "'pass' must be 2, got 7"),
    "wrong dtype": (step(dtype="f2"), "'dtype' must be 'f4' (or absent, for f8)"),
    "f4 of f8 length": (step(dtype="f4"), "'data' must hold n + e = 4 numbers of 4 bytes"),
    "data not a bin": (step(data="abcd" * 8), "'data' must be a msgpack bin, got a string"),
    "ids not a bin": (structure(ids=[2, 3]), "'ids' must be a msgpack bin, got a list"),
    "step without grad": (
        {k: v for k, v in step().items() if k != "grad"},
        "'grad' is missing",
    ),
}


def hub_state(hub: Hub) -> str:
    steps = hub.steps
    return repr(
        (hub.seq, hub.next_id, dict(hub.nodes), hub.grads, hub.reached, hub.last_pass)
        + (list(steps.structures), steps.latest, list(steps.history.steps))
        + (hub.next_pass, hub.next_step, hub.next_structure)
    )


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_steps_map_refuses_its_whole_frame_and_names_the_field(case):
    bad, reason = BAD[case]
    tape = Tape()
    hub = Hub("hub", {}, recorder=tape)
    training = Training()
    good = pack(HELLO, *training.steps(1))
    # a valid label and a valid node before the bad map must not be applied either
    frame = pack({"type": "label", "id": 3, "label": "lost"}, leaf(5), bad)
    ws = feed(hub, [good, frame])
    code, said = ws.closed
    assert code == 1007 and said.startswith("event 2") and reason in said, said
    live = th.graph_of(tape.events())  # what a viewer there from the start saw
    assert live == snapshot_graph(hub)
    assert "lost" not in [n["label"] for n in live.values()] and len(live) == 4
    assert [n for n in hub.steps.history.steps] == [1]  # step 1 only: nothing of the frame


def leaf(id_):
    return {"type": "forward", "id": id_, "op": None, "parents": [], "data": 1.0, "label": ""}


def test_nothing_of_a_refused_frame_is_applied():
    """The hub's whole state (graph, numbers, steps kept) is the same before and after."""
    hub = Hub("hub", {})
    good = pack(HELLO, *Training().steps(1))
    states: list[str] = []

    class Publisher:
        closed: tuple[int, str] | None = None

        async def __aiter__(self):
            yield good
            await settled(hub)
            states.append(hub_state(hub))
            yield pack(step(), structure(order=u4(1, 1)))  # a valid step, then a bad map
            await settled(hub)

        async def close(self, code: int, reason: str) -> None:
            self.closed = (code, reason)
            states.append(hub_state(hub))

    ws = Publisher()
    asyncio.run(receive_run(hub, ws))
    assert ws.closed is not None and ws.closed[0] == 1007
    assert "event 1 (structure): 'order' must list each index at most once" in ws.closed[1]
    assert states[0] == states[1]


def test_a_frame_of_many_tiny_structures_is_refused_whole_or_kept_bounded():
    tiny = structure(ids=u8(3), offsets=u4(0), inputs=b"", order=u4(0), root=0)
    many = [tiny | {"structure": k} for k in range(2, 2 + 3 * MAX_STRUCTURES)]
    # refused whole when its last map is bad
    hub = Hub("hub", {})
    ws = feed(hub, [pack(HELLO, *Training().steps(1)), pack(*many, step(step=9))])
    assert ws.closed is not None and ws.closed[0] == 1007
    assert f"event {len(many)} (step): 'step' must be 2, got 9" in ws.closed[1]
    assert list(hub.steps.structures) == [1] and hub.next_structure == 1
    # accepted when all are valid: the hub keeps at most MAX_STRUCTURES of them, and the
    # structure in use stays known: its next step is applied
    hub = Hub("hub", {})
    training = Training()
    frames = [pack(HELLO, *training.steps(1)), pack(*many), pack(*training.steps(1))]
    assert feed(hub, frames).closed is None
    assert len(hub.steps.structures) <= MAX_STRUCTURES and 1 in hub.steps.structures
    assert list(hub.steps.history.steps) == [1, 2]


def test_a_recording_stops_at_a_bad_step_and_says_where(tmp_path):
    training = Training()
    maps = training.steps(4)
    maps[-1] = {**maps[-1], "pass": 9}  # step 4 claims pass 9
    events = [HELLO] + [{**m, "seq": i} for i, m in enumerate(maps, start=1)]
    path = tmp_path / "bad.ogtrace"
    path.write_bytes(b"".join(msgpack.packb(e) for e in events))
    reader = Recording(path)
    read = list(reader)
    assert reader.damage is not None
    assert "(step): 'pass' must be 4, got 9" in reader.damage.reason
    assert [e["step"] for e in read if e["type"] == "step"] == [1, 2, 3]


def test_the_stream_checks_accept_what_a_training_sends():
    checks = Steps()
    for index, event in enumerate(Training(gap=5).steps(50)):
        checks.see(check_event(event, index), index)
    assert checks.step == 50 and checks.passes == 50


def test_after_a_publishers_dropped_the_numbers_may_skip_the_lost_ones_once():
    # A script whose buffer overflowed lost a `structure`, `step`s and passes it had
    # numbered: it says `dropped`, and its next numbers are higher than the last the hub saw.
    events = list(Training().steps(3))
    checks = Steps()
    for index, event in enumerate(events):
        checks.see(check_event(event, index), index)
    assert (checks.structure, checks.step, checks.passes) == (1, 3, 3)
    checks.see(check_event({"type": "dropped", "count": 40}, 3), 3)
    later = structure(structure=3)  # structure 2 was lost
    checks.see(check_event(later, 4), 4)
    checks.see(check_event(step(step=9, structure=3, first=2, **{"pass": 3}), 5), 5)
    skipped = step(step=10, structure=3, first=20, **{"pass": 8})  # a values-only step
    checks.see(check_event(skipped, 6), 6)
    assert (checks.structure, checks.step, checks.passes) == (3, 10, 8)
    # Once only: what follows must follow again.
    with pytest.raises(InvalidEvent, match="'step' must be 11, got 12"):
        checks.see(check_event(step(step=12, structure=3, first=30, **{"pass": 9}), 7), 7)
    # And never lower, nor without a `dropped`.
    fresh = Steps()
    for index, event in enumerate(events):
        fresh.see(check_event(event, index), index)
    with pytest.raises(InvalidEvent, match="'structure' must be 2, got 3"):
        fresh.see(check_event(structure(structure=3), 3), 3)


def test_a_bad_step_over_a_real_socket_closes_1007_and_viewers_keep_the_last_good_step():
    from opgraph.server.publisher import publish_url
    from opgraph.server.server import TraceServer

    training = Training()

    async def main(server):
        viewer = await th.connect_reader(server.ws_url)
        await viewer.until(lambda e: e["type"] == "snapshot_end")
        publisher = await th.open_ws(publish_url(server.publish_url))
        await publisher.send(pack(HELLO, *training.steps(3)))
        bad = step(step=4, first=99, data=f8(1, 2, 3)) | {"pass": 4}  # data cut short
        await publisher.send(pack(bad))
        code = await th.close_code(publisher)
        reason = publisher.close_reason
        await viewer.until(lambda e: e["type"] == "run" and e["state"] == "end")
        late = await th.connect_reader(server.ws_url)
        snapshot = await late.until(lambda e: e["type"] == "snapshot_end")
        await viewer.ws.close()
        await late.ws.close()
        return code, reason, snapshot

    server = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True)
    with server.start():
        code, reason, snapshot = asyncio.run(asyncio.wait_for(main(server), th.TIMEOUT))
    assert code == 1007
    assert reason == "event 0 (step): 'data' must hold n + e = 4 numbers of 8 bytes, got 24 bytes"
    [last] = [e for e in snapshot if e["type"] == "step"]
    assert last["step"] == 3  # the last good step, nothing of the bad frame
