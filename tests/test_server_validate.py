"""Events from outside (publishing scripts, recordings) are checked before anything is applied.

A publisher frame with one bad map changes nothing and closes the publisher with 1007,
naming the map and the field; a damaged recording replays and exports up to the damage.
"""

from __future__ import annotations

import asyncio
import math

import _tracing_helpers as th
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opgraph.server.events import MAX_OPS, InvalidEvent, check_event, check_hello
from opgraph.server.hub import Hub
from opgraph.server.intake import receive_run
from opgraph.server.publisher import publish_url
from opgraph.server.server import TraceServer

HELLO = {"type": "hello", "seq": 0, "protocol": "opgraph", "version": 1, "session": "s"}
HELLO |= {"engine": "script", "ops": {"mul": "core", "tanh": "core"}, "pid": 7, "t": 0}


def leaf(id_, data=1.0, label=""):
    return {"type": "forward", "id": id_, "op": None, "parents": [], "data": data, "label": label}


def mul(id_, a, b):
    return {"type": "forward", "id": id_, "op": "mul", "parents": [a, b], "data": 2.0, "label": ""}


def pack(*events) -> bytes:
    return b"".join(msgpack.packb(e) for e in events)


# The review's list: each bad map, the field the close reason must name.
BAD = {
    "data without data": ({"type": "data", "id": 0}, "'data' is missing"),
    "backward without grad": ({"type": "backward", "id": 0}, "'grad' is missing"),
    "const not a list": ({**mul(5, 0, 1), "const": 5}, "'const' must be a list"),
    "t near 2**64": ({**leaf(5), "t": 2**64 - 3}, "'t' must be an integer from 0"),
    "string id": (leaf("5"), "'id' must be an integer"),
    "string parent": (mul(5, "0", 1), "'parents' must be an integer"),
    "string data": (leaf(5, data="1.0"), "'data' must be a number"),
    "string grad": ({"type": "backward", "id": 0, "grad": "1"}, "'grad' must be a number"),
    "string const": ({**mul(5, 0, 1), "const": ["2"]}, "'const' must be a number"),
    "label not a string": ({"type": "label", "id": 0, "label": 3}, "'label' must be a string"),
    "unknown type": ({"type": "nonsense", "id": 0}, "'type' 'nonsense' is not one of"),
    "parent after child": (mul(5, 0, 9), "'parents' must be ids smaller than"),
    "negative id": (leaf(-1), "'id' must be an integer from 0"),
    "bool data": (leaf(5, data=True), "'data' must be a number"),
    "pass 0": ({"type": "backward_begin", "root": 0, "pass": 0}, "'pass' must be an integer"),
    "huge label": (leaf(5, label="x" * 20_000), "'label' must be at most 10000"),
}


def test_the_rules_accept_what_the_engine_sends_and_name_what_they_refuse():
    assert check_event({**mul(2, 0, 1), "seq": 3, "t": 10, "const": [2]}, 0) == {
        **mul(2, 0, 1),
        "seq": 3,
        "t": 10,
        "const": [2.0],
    }
    weird = check_event({"type": "data", "id": 0, "data": float("nan"), "extra": [1]}, 0)
    assert math.isnan(weird["data"]) and "extra" not in weird  # unknown fields are dropped
    with pytest.raises(InvalidEvent, match=r"^event 4 \(backward\): 'grad' is missing$"):
        check_event({"type": "backward", "id": 0}, 4)
    with pytest.raises(InvalidEvent, match="'ops' must have at most 4096 ops"):
        check_hello({**HELLO, "ops": {f"op{i}": "p" for i in range(MAX_OPS + 1)}})


class Frames:
    """The hub's side of a publisher connection, in process: `receive_run` reads `frames`
    from it. Records the hub's state before each frame and when the connection is closed."""

    def __init__(self, hub: Hub, frames: list[bytes]):
        self.hub, self.frames = hub, frames
        self.before: list[tuple] = []
        self.closed: tuple[int, str] | None = None
        self.state_at_close: tuple | None = None

    async def __aiter__(self):
        for frame in self.frames:
            await settled(self.hub)  # (the hub reads on before it applied the last frame)
            self.before.append(hub_state(self.hub))
            yield frame
        await settled(self.hub)  # the connection stays open until the hub applied it all

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.state_at_close = hub_state(self.hub)


async def settled(hub: Hub) -> None:
    """Wait until the hub applied every frame it received."""
    while hub.intake is not None and hub.intake.pending:
        await asyncio.sleep(0)


def hub_state(hub: Hub) -> tuple:
    """Everything a frame may change, comparable (repr: nan equals nan)."""
    return repr(
        (hub.seq, hub.next_id, dict(hub.nodes), hub.grads, hub.reached, hub.ops)
        + (hub.pass_in_progress, hub.pass_root)
    )


class Tape:
    """A hub recorder that keeps what the hub sent, as a viewer from the start sees it."""

    def __init__(self):
        self.frames: list[bytes] = []

    def write(self, frame: bytes) -> None:
        self.frames.append(frame)

    def events(self) -> list[dict]:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(b"".join(self.frames))
        return list(unpacker)


def feed(hub: Hub, frames: list[bytes]) -> Frames:
    ws = Frames(hub, frames)
    asyncio.run(receive_run(hub, ws))
    return ws


def snapshot_graph(hub: Hub) -> dict:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(b"".join([msgpack.packb(hub.hello_map(hub.seq)), *hub.snapshot_frames()]))
    return th.graph_of(list(unpacker))


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_map_rejects_its_whole_frame(case):
    bad, reason = BAD[case]
    tape = Tape()
    hub = Hub("hub", {}, recorder=tape)
    good = pack(HELLO, leaf(0, label="x"), leaf(1, label="w"), mul(2, 0, 1))
    # the bad map comes after good ones that must not be applied either
    frame = pack({"type": "label", "id": 2, "label": "lost"}, leaf(3), bad)
    ws = feed(hub, [good, frame])
    code, said = ws.closed
    assert code == 1007 and said.startswith("event 2") and reason in said, said
    assert ws.state_at_close == ws.before[1]  # nothing of the frame was applied
    live = th.graph_of(tape.events())  # what a viewer there from the start saw
    assert live == snapshot_graph(hub)
    assert [n["label"] for n in live.values()] == ["x", "w", ""]
    runs = [e["state"] for e in tape.events() if e["type"] == "run"]
    assert runs == ["start", "end"]


def test_a_bad_hello_starts_no_run():
    hub = Hub("hub", {})
    for hello, code, said in [
        (leaf(0), 1008, "must send an opgraph hello first"),
        ({**HELLO, "ops": {f"op{i}": "p" for i in range(200_000)}}, 1007, "a map of 200,000"),
        ({**HELLO, "engine": "e" * 1000}, 1007, "'engine' must be at most 200"),
        ({**HELLO, "ops": {"mul": 3}}, 1007, "'ops' must be a string"),
        ({**HELLO, "version": 2}, 1007, "'version' 2 is not supported"),
    ]:
        ws = feed(hub, [pack(hello, leaf(0))])
        assert ws.closed[0] == code and said in ws.closed[1], ws.closed
    assert hub.runs == 0 and hub.seq == 0 and hub.ops == {}


def test_the_hub_keeps_a_bounded_number_of_op_names_over_many_runs():
    hub = Hub("hub", {})
    for run in range(5):
        ops = {f"op{run}.{i}": "p" for i in range(MAX_OPS)}
        assert feed(hub, [pack({**HELLO, "ops": ops})]).closed is None
    assert len(hub.ops) == MAX_OPS and "op4.0" in hub.ops  # the newest run's ops are kept


def test_a_long_run_keeps_the_hub_id_map_bounded_and_the_parameters_right():
    hub = Hub("hub", {}, max_nodes=200)
    steps = 1000  # 20,000 nodes through a hub that keeps 200
    frames = [pack(HELLO, leaf(0, data=0.0, label="param"))]
    for step in range(1, steps + 1):
        first = 1 + (step - 1) * 20
        events = [{"type": "data", "id": 0, "data": float(step)}]
        events += [mul(first + k, 0, first + k - 1 if k else 0) for k in range(20)]
        events += [{"type": "backward", "id": 0, "grad": float(step)}]
        frames.append(pack(*events))
    sizes = []

    class Watched(Frames):
        async def __aiter__(self):
            async for frame in super().__aiter__():
                yield frame
                await settled(hub)
                run = next(iter(hub.publishers))
                sizes.append(len(run.ids))

    ws = Watched(hub, frames)
    asyncio.run(receive_run(hub, ws))
    assert ws.closed is None
    assert len(hub.nodes) <= 200
    assert max(sizes) <= 200 + 1000 + 22  # trimmed along with the hub's nodes
    assert not hub.publishers  # the run ended
    graph = snapshot_graph(hub)
    param = next(i for i, n in graph.items() if n["label"] == "param")
    assert graph[param]["data"] == steps and graph[param]["grad"] == steps
    last = max(graph)
    assert graph[last]["parents"] == [param, last - 1]  # the parameter kept its hub id


def test_a_publisher_that_dies_mid_pass_ends_its_pass_for_viewers():
    async def main(server):
        viewer = await th.connect_reader(server.ws_url)
        await viewer.until(lambda e: e["type"] == "snapshot_end")
        publisher = await th.open_ws(publish_url(server.publish_url))
        await publisher.send(pack(HELLO, leaf(0), mul(1, 0, 0)))
        await publisher.send(pack({"type": "backward_begin", "root": 1, "pass": 1}))
        await publisher.send(pack({"type": "backward", "id": 1, "grad": 1.0}))
        live = await viewer.until(lambda e: e["type"] == "backward")
        await publisher.close()  # gone before its backward_end
        live += await viewer.until(lambda e: e["type"] == "run" and e["state"] == "end")
        late = await th.connect_reader(server.ws_url)
        snapshot = await late.until(lambda e: e["type"] == "snapshot_end")
        await viewer.ws.close()
        await late.ws.close()
        return live, snapshot

    server = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start()
    with server:
        live, snapshot = asyncio.run(asyncio.wait_for(main(server), th.TIMEOUT))
    begin = next(e for e in live if e["type"] == "backward_begin")
    end = next(e for e in live if e["type"] == "backward_end")
    assert (end["root"], end["pass"]) == (begin["root"], begin["pass"])
    assert [e["type"] for e in live[-2:]] == ["backward_end", "run"]
    assert "backward" not in snapshot[1]  # no pass in progress any more
    assert th.graph_of(live) == th.graph_of(snapshot)


def test_a_bad_frame_over_a_real_socket_closes_1007_and_the_graph_stays_whole():
    async def main(server):
        viewer = await th.connect_reader(server.ws_url)
        await viewer.until(lambda e: e["type"] == "snapshot_end")
        publisher = await th.open_ws(publish_url(server.publish_url))
        await publisher.send(pack(HELLO, leaf(0, label="a")))
        await publisher.send(pack(leaf(1, label="b"), {"type": "forward", "id": 2, "data": 1.0}))
        code = await th.close_code(publisher)
        reason = publisher.close_reason
        live = await viewer.until(lambda e: e["type"] == "run" and e["state"] == "end")
        late = await th.connect_reader(server.ws_url)
        snapshot = await late.until(lambda e: e["type"] == "snapshot_end")
        await viewer.ws.close()
        await late.ws.close()
        return code, reason, live, snapshot

    server = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start()
    with server:
        code, reason, live, snapshot = asyncio.run(asyncio.wait_for(main(server), th.TIMEOUT))
    assert code == 1007 and reason == "event 1 (forward): 'op' is missing"
    assert [n["label"] for n in th.graph_of(live).values()] == ["a"]
    assert th.graph_of(live) == th.graph_of(snapshot)


def test_a_publishers_dropped_resyncs_the_viewers_and_keeps_the_publisher():
    # A script that could not send some events says so with `dropped`: viewers must not keep
    # a graph with a silent hole, and the script must not be cut off for saying it.
    async def main(server):
        viewer = await th.connect_reader(server.ws_url)
        await viewer.until(lambda e: e["type"] == "snapshot_end")
        publisher = await th.open_ws(publish_url(server.publish_url))
        await publisher.send(pack(HELLO, leaf(0, label="a")))
        await publisher.send(pack({"type": "dropped", "count": 7}, leaf(9, label="b")))
        lost = await viewer.until(lambda e: e["type"] == "dropped")
        resynced = await viewer.until(lambda e: e["type"] == "snapshot_end")
        await publisher.send(pack(leaf(10, label="c")))
        after = await viewer.until(lambda e: e["type"] == "forward" and e["label"] == "c")
        still_open = publisher.close_code is None
        await publisher.close()
        await viewer.ws.close()
        return lost[-1], resynced, after, still_open

    server = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start()
    with server:
        lost, resynced, after, still_open = asyncio.run(asyncio.wait_for(main(server), th.TIMEOUT))
    assert lost["count"] >= 7 and still_open
    labels = {n["label"] for n in th.graph_of(resynced).values()}  # the snapshot after it
    assert {"a", "b"} <= labels
    assert "c" in {n["label"] for n in th.graph_of(after).values()}


# --- fuzzing the publisher input ------------------------------------------------------------

NASTY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(-9, 9), max_size=2),
)
KINDS = ["forward", "data", "label", "backward_begin", "backward", "backward_end"]


@st.composite
def event_maps(draw):
    """A valid live map, or one with a field removed, replaced or added."""
    kind = draw(st.sampled_from(KINDS))
    id_ = draw(st.integers(0, 30))
    real = st.floats(allow_nan=True, allow_infinity=True)
    if kind == "forward":
        parents = draw(st.lists(st.integers(0, max(id_ - 1, 0)), max_size=3)) if id_ else []
        event = {"type": kind, "id": id_, "op": draw(st.sampled_from([None, "mul"]))}
        event.update(parents=parents, data=draw(real), label=draw(st.text(max_size=3)))
    elif kind in ("backward_begin", "backward_end"):
        event = {"type": kind, "root": id_, "pass": draw(st.integers(1, 3))}
    else:
        value = draw(st.text(max_size=3) if kind == "label" else real)
        event = {"type": kind, "id": id_, {"backward": "grad"}.get(kind, kind): value}
    if draw(st.booleans()):
        event["t"] = draw(st.integers(0, 10**6))
    mutation = draw(st.sampled_from(["none", "none", "drop", "replace", "type"]))
    field = draw(st.sampled_from(sorted(event)))
    if mutation == "drop":
        del event[field]
    elif mutation == "replace":
        event[field] = draw(NASTY)
    elif mutation == "type":
        event["type"] = draw(st.sampled_from(["hello", "node", "run", "dropped", "x", 5]))
    return event


FRAMES = st.lists(
    st.one_of(
        st.lists(event_maps(), min_size=1, max_size=6).map(lambda events: pack(*events)),
        st.binary(max_size=12),  # not msgpack maps at all
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=FRAMES)
def test_fuzzed_publisher_frames_never_break_the_hub(frames):
    tape = Tape()
    hub = Hub("hub", {}, recorder=tape)
    ws = feed(hub, [pack(HELLO), *frames])  # an exception here fails the test
    if ws.closed is not None:
        assert ws.closed[0] == 1007, ws.closed
        assert ws.state_at_close == ws.before[-1]  # the rejected frame changed nothing
    seqs = [e["seq"] for e in tape.events()[1:]]
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free, never rolled back
    events = tape.events()
    # live == snapshot (by repr: nan equals nan; sorted: a snapshot lists nodes by id)
    assert repr(sorted(th.graph_of(events).items())) == repr(sorted(snapshot_graph(hub).items()))
    assert hub.pass_in_progress == 0  # the run's end closed any pass it left open


@settings(max_examples=300, deadline=None)
@given(event=event_maps(), seq=st.integers(0, 2**54), t=st.integers(-1, 2**54))
def test_the_fast_checks_agree_with_the_field_checks(event, seq, t):
    from opgraph.server import events

    event = {"seq": seq, "t": t, **event}  # as publishers send them
    try:
        general = repr(sorted(events._check_fields(event, event["type"], 0).items()))
    except (InvalidEvent, KeyError, TypeError):  # (KeyError, TypeError: a bad "type")
        general = "refused"
    try:
        checked = repr(sorted(check_event(event, 0).items()))
    except InvalidEvent:
        checked = "refused"
    assert checked == general


@pytest.mark.parametrize("what", ["array", "map"])
def test_an_event_holding_millions_of_items_is_refused_before_they_are_made(what):
    """A 16 MiB frame whose one map holds an array of millions of nils (or a map of millions
    of keys) would be ~130 MB of Python objects, refused only afterwards by the checks: the
    hub refuses it as msgpack reads its length, names why, and the graph stays as it was."""
    import tracemalloc

    n = 2_000_000
    if what == "array":  # {"type": "forward", "parents": [nil] * n}
        body = b"\x82" + msgpack.packb("type") + msgpack.packb("forward") + msgpack.packb("parents")
        body += b"\xdd" + n.to_bytes(4, "big") + b"\xc0" * n
    else:  # {0: nil, 1: nil, ...}: a map32 of n entries
        body = (
            b"\xdf" + n.to_bytes(4, "big") + b"".join(msgpack.packb(k) + b"\xc0" for k in range(n))
        )

    async def main(server):
        publisher = await th.open_ws(publish_url(server.publish_url))
        await publisher.send(pack(HELLO, leaf(0, label="a")))
        await publisher.send(body)
        return await th.close_code(publisher), publisher.close_reason

    server = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start()
    tracemalloc.start()
    try:
        with server:
            code, reason = asyncio.run(asyncio.wait_for(main(server), th.TIMEOUT))
            nodes = server.hub.stats()["nodes"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 1007
    article = "an array" if what == "array" else "a map"
    expected = f"event 0 or a later one holds {article} of {n:,} items, more than any event"
    assert reason.startswith(expected)
    assert nodes == 1  # the first frame's node, nothing of the refused one
    # The frame itself (up to 15 MB) is held, twice at most (received, then queued); its
    # millions of items never were (24 MB of list alone, plus the check's copies).
    assert peak < 3 * len(body) + (8 << 20)
