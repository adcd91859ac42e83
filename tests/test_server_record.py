"""Record, replay and export: a recording goes round the server and into Chrome's format."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import _tracing_helpers as th
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opgraph import Engine
from opgraph.server.chrome import chrome_trace, export_chrome
from opgraph.server.events import u4s, u8s
from opgraph.server.recording import Recording
from opgraph.server.replay import ReplayServer
from opgraph.server.server import ServerError


def record_training(path, steps: int = 3):
    """Train a tiny model while recording; returns the parameters and the final loss."""
    engine = Engine(name="recorded", entry_points=False)
    params = [engine.value(0.1 * k - 0.2, label=f"w{k}") for k in range(5)]
    with engine.serve(port=0, record=path):
        for _ in range(steps):
            total = engine.value(0.0)
            for k, p in enumerate(params):
                total = total + (p * (k + 1.0)).tanh()
            loss = total * total
            loss.label = "loss"
            loss.backward()
            for p in params:
                p.data -= 0.05 * p.grad
                p.grad = 0.0
        engine.tracer.touch(params)
    return params, loss


def test_a_recording_is_hello_then_every_event_in_order(tmp_path):
    path = tmp_path / "run.ogtrace"
    params, loss = record_training(path)
    reader = Recording(path)
    events = list(reader)
    assert reader.damage is None
    assert events[0]["type"] == "hello" and events[0]["engine"] == "recorded"
    assert [e["seq"] for e in events[1:]] == list(range(1, len(events)))
    kinds = {e["type"] for e in events[1:]}
    assert kinds == {"forward", "backward_begin", "backward", "backward_end", "data", "label"} | {
        "structure",  # the training's steps: the first as events, then one `step` map each
        "step",
    }
    graph = th.graph_of(events)
    for p in params:
        assert graph[p.id]["data"] == p.data  # the data events carried the updates
    assert graph[loss.id]["label"] == "loss"
    # any msgpack reader can read it: it is the wire format, maps back to back
    raw = list(msgpack.Unpacker(open(path, "rb"), raw=False))
    assert raw == events


def test_replay_serves_the_recording_as_a_live_stream(tmp_path):
    path = tmp_path / "run.ogtrace"
    record_training(path)
    recorded = list(Recording(path))

    async def watch(server):
        reader = await th.connect_reader(server.ws_url)
        got = await reader.until_seq(len(recorded) - 1)
        await reader.ws.close()
        return got

    with ReplayServer(path, speed=0, port=0) as server:
        server.start()
        live = asyncio.run(watch(server))  # joined while (or after) it replays
        assert server.wait_done(timeout=th.TIMEOUT)
        late = asyncio.run(watch(server))  # joined after the end: a snapshot of it all
    hello = live[0]
    assert hello["engine"] == "recorded" and hello["ops"] == recorded[0]["ops"]
    assert hello["session"] != recorded[0]["session"]  # a replay is a new session
    assert th.graph_of(live) == th.graph_of(recorded) == th.graph_of(late)
    begin = dict(late[1])
    last_pass = begin.pop("last_pass")  # the recording's last pass, to step through
    assert begin == {"type": "snapshot_begin", "seq": len(recorded) - 1, "nodes": begin["nodes"]}
    # the last pass is the last step's, which came as one map: its steps are its
    # structure's `order`, its nodes named `first + offsets[i]`, then its inputs
    structure = next(e for e in recorded if e["type"] == "structure")
    step = [e for e in recorded if e["type"] == "step"][-1]
    ids = [step["first"] + offset for offset in u4s(structure["offsets"])]
    ids += list(u8s(structure["inputs"]))
    steps = [ids[index] for index in u4s(structure["order"])]
    assert last_pass == {"pass": step["pass"], "root": ids[structure["root"]], "steps": steps}
    streamed = [e for e in live if "seq" in e and e["type"] not in ("hello",) and "t" in e]
    assert streamed == [e for e in recorded[1:] if e["seq"] > live[1]["seq"]]


def test_replay_keeps_the_recorded_pace_scaled_by_speed(tmp_path):
    path = tmp_path / "slow.ogtrace"
    hello = {"type": "hello", "seq": 0, "protocol": "opgraph", "version": 1, "session": "s"}
    events = [
        {
            "type": "forward",
            "seq": i + 1,
            "id": i,
            "op": None,
            "parents": [],
            "data": 1.0,
            "label": "",
            "t": i * 100_000,
        }  # fmt: skip
        for i in range(4)
    ]  # one event every 0.1 s of recorded time
    path.write_bytes(
        b"".join(msgpack.packb(e) for e in [{**hello, "engine": "e", "ops": {}}, *events])
    )

    def replay_seconds(speed):
        with ReplayServer(path, speed=speed, port=0) as server:
            start = time.monotonic()
            server.start()
            assert server.wait_done(timeout=th.TIMEOUT)
            return time.monotonic() - start

    assert replay_seconds(1.0) >= 0.3  # the last event is 0.3 s after the first
    assert replay_seconds(0) < replay_seconds(1.0)


@pytest.mark.parametrize("cut", ["truncated", "garbage", "not-opgraph"])
def test_a_damaged_recording_replays_up_to_the_damage_and_says_where(tmp_path, cut):
    path = tmp_path / "run.ogtrace"
    record_training(path, steps=1)
    whole = path.read_bytes()
    events = list(Recording(path))
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(whole)
    for _ in range(10):
        unpacker.unpack()
    keep = unpacker.tell()  # the byte offset after the first 10 events
    damaged = tmp_path / "damaged.ogtrace"
    if cut == "truncated":
        damaged.write_bytes(whole[: keep + 7])  # 10 events, then 7 bytes of the 11th
    elif cut == "garbage":
        damaged.write_bytes(whole[:keep] + b"\xc1" + whole[keep:])  # 0xc1 is never msgpack
    else:
        damaged.write_bytes(msgpack.packb({"type": "hello", "protocol": "other"}) + whole)
    reader = Recording(damaged)
    got = list(reader)
    if cut == "not-opgraph":
        assert got == [] and "not an opgraph recording" in str(reader.damage)
        result = run_cli("replay", str(damaged), "--port", "0", "--speed", "0", "--exit")
        assert result.returncode == 1 and "not an opgraph recording" in result.stderr
        return
    assert got == events[:10]
    assert reader.damage.offset == keep and reader.damage.last_seq == 9
    assert ("truncated" if cut == "truncated" else "not msgpack") in reader.damage.reason
    result = run_cli("replay", str(damaged), "--port", "0", "--speed", "0", "--exit")
    assert result.returncode == 2, result.stderr
    assert "replayed 9 events" in result.stdout
    assert f"recording damaged at byte {keep} (after seq 9" in result.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "opgraph", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_export_writes_chrome_trace_events_with_passes_and_ops_as_slices(tmp_path):
    path = tmp_path / "run.ogtrace"
    params, loss = record_training(path, steps=2)
    out = tmp_path / "run.json"
    result = run_cli("export", "--chrome", str(path), str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    events = document["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"forward", "backward", "updates"}
    slices = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and isinstance(e["ts"], int) for e in slices)
    passes = [e for e in slices if e["cat"] == "backward"]
    steps = [e for e in slices if e["cat"] == "backward step"]
    assert [p["name"] for p in passes] == ["backward pass 1", "backward pass 2"]
    recorded = list(Recording(path))
    assert len(steps) == sum(e["type"] == "backward" for e in recorded)
    for step in steps:  # each step lies inside its pass (Perfetto nests them)
        assert any(
            p["ts"] <= step["ts"] and step["ts"] + step["dur"] <= p["ts"] + p["dur"] for p in passes
        )
    forwards = [e for e in slices if e["cat"] == "forward"]
    assert len(forwards) == sum(e["type"] == "forward" for e in recorded)
    assert {"tanh", "mul", "add", "leaf"} <= {e["name"] for e in forwards}
    # (the loss of the first step: later steps came as `step` maps, with no backward steps)
    first_loss = next(e["root"] for e in recorded if e["type"] == "backward_begin")
    loss_step = next(s for s in steps if s["args"]["id"] == first_loss)
    assert loss_step["name"] == "mul" and loss_step["args"]["grad"] == 1.0
    assert any(e["ph"] == "i" and e["cat"] == "data" for e in events)
    # chrome_trace works on any stream of maps, too
    assert chrome_trace(recorded) == document
    # and a damaged recording exports what it has, saying where it stopped
    damaged = tmp_path / "cut.ogtrace"
    damaged.write_bytes(path.read_bytes()[:-3])
    reader = export_chrome(damaged, tmp_path / "cut.json")
    assert reader.damage is not None and "truncated" in reader.damage.reason
    result = run_cli("export", "--chrome", str(damaged), str(tmp_path / "cut2.json"))
    assert result.returncode == 2 and "stopped early" in result.stderr


def test_a_recording_that_cannot_be_written_is_a_clear_error(tmp_path):
    missing = tmp_path / "no such directory" / "run.ogtrace"
    engine = Engine(name="unrecorded", entry_points=False)
    with pytest.raises(ServerError, match=f"cannot record to {missing}: No such file"):
        engine.serve(port=0, record=missing)
    assert engine.tracer is None  # nothing half-started
    for command in (["serve"], ["demo", "--serve", "--no-wait", "--steps", "1"]):
        result = subprocess.run(
            [sys.executable, "-m", "opgraph", *command, "--port", "0", "--record", str(missing)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == 1, result.stderr
        assert f"cannot record to {missing}" in result.stderr
        assert "Traceback" not in result.stderr and "--port" not in result.stderr


# --- damaged recordings: every map is checked, replay and export stop at the damage ---------

_RECORDED: dict[str, bytes] = {}


def recorded_bytes() -> bytes:
    """A real recording (made once per test session): two training steps."""
    if "run" not in _RECORDED:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "run.ogtrace"
            record_training(path, steps=2)
            _RECORDED["run"] = path.read_bytes()
    return _RECORDED["run"]


def recorded_events() -> tuple[list[dict], set[int]]:
    """The maps of the real recording, and the byte offsets where each one ends."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(recorded_bytes())
    events, ends = [], set()
    for event in unpacker:
        events.append(event)
        ends.add(unpacker.tell())
    return events, ends


def repacked(edit) -> bytes:
    """The real recording with its maps changed by `edit(events)`, packed again."""
    events = recorded_events()[0]
    edit(events)
    return b"".join(msgpack.packb(e) for e in events)


def _drop(kind: str, field: str):
    def edit(events):
        index = next(i for i, e in enumerate(events) if e["type"] == kind and i > 20)
        del events[index][field]

    return edit


def _set(kind: str, field: str, value):
    def edit(events):
        index = next(i for i, e in enumerate(events) if e["type"] == kind and i > 20)
        events[index][field] = value

    return edit


# Maps that parse as msgpack but break the protocol: `backward` without `grad` made
# `replay --exit` hang (the replaying task died), `forward` without `id` made export raise.
BROKEN = {
    "backward without grad": (_drop("backward", "grad"), "(backward): 'grad' is missing"),
    "forward without id": (_drop("forward", "id"), "(forward): 'id' is missing"),
    "t near 2**64": (_set("data", "t", 2**64 - 1), "(data): 't' must be an integer"),
    "a seq skipped": (_set("label", "seq", 10**6), "(label): 'seq' must be"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_replay_and_export_stop_at_a_broken_map_with_one_line(tmp_path, case):
    edit, said = BROKEN[case]
    path = tmp_path / "broken.ogtrace"
    path.write_bytes(repacked(edit))
    reader = Recording(path)
    good = list(reader)
    assert said in reader.damage.reason and reader.damage.events == len(good)
    replay = run_cli("replay", str(path), "--port", "0", "--speed", "0", "--exit")
    export = run_cli("export", "--chrome", str(path), str(tmp_path / "out.json"))
    for result in (replay, export):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        [line] = [line for line in result.stderr.splitlines() if "stopped early" in line]
        assert said in line and f"({len(good) - 1} events read)" not in line
    assert f"replayed {len(good) - 1} events" in replay.stdout  # all but the hello
    assert len(json.loads((tmp_path / "out.json").read_text())["traceEvents"]) > 4


def test_the_cli_never_hangs_nor_raises_on_randomly_damaged_recordings(tmp_path):
    import random

    whole = recorded_bytes()
    rng = random.Random(9)
    for k in range(4):
        data = bytearray(whole[: rng.randrange(len(whole))] if k % 2 else whole)
        for _ in range(3):
            data[rng.randrange(100, len(data))] = rng.randrange(256)
        path = tmp_path / f"damaged{k}.ogtrace"
        path.write_bytes(bytes(data))
        for command in (
            ["replay", str(path), "--port", "0", "--speed", "0", "--exit"],
            ["export", "--chrome", str(path), str(tmp_path / "out.json")],
        ):
            result = run_cli(*command)  # (a 60 s timeout: a hang fails the test)
            assert result.returncode in (0, 1, 2), result.stderr  # 1: the hello is damaged
            assert "Traceback" not in result.stderr
            if result.returncode:
                assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
)
def test_fuzzed_recordings_read_up_to_the_damage_and_replay_into_a_hub(cut, flips):
    from opgraph.server.hub import Hub

    whole = recorded_bytes()
    data = bytearray(whole[: int(len(whole) * cut)])
    for where, byte in flips:
        if data:
            data[int(where * (len(data) - 1))] = byte
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzzed.ogtrace"
        path.write_bytes(bytes(data))
        reader = Recording(path)
        events = list(reader)  # never raises
        if events:
            assert events[0]["type"] == "hello"
        if not flips:  # only cut: a prefix, damaged unless cut between two maps
            original, ends = recorded_events()
            assert events == original[: len(events)]
            assert (reader.damage is None) == (len(data) in ends)
        chrome_trace(events)  # never raises
        hub = Hub("replay", events[0].get("ops", {}) if events else {})
        hub.publish(events[1:])  # what replay does: never raises
        assert hub.seq == max(len(events) - 1, 0)
