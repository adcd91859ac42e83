"""`opgraph demo --serve`: the moons demo trains while a viewer watches the chosen steps."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import _tracing_helpers as th
import pytest
import websockets

from opgraph.commands.demo import describe, traced_steps
from opgraph.server.client import stream_url


def test_trace_steps_are_chosen_by_number_or_name():
    assert traced_steps("first,last", 100) == {0, 99}
    assert traced_steps("1, 50 ,last", 100) == {0, 49, 99}
    assert traced_steps("all", 3) == {0, 1, 2}
    assert describe({0, 99}, 100) == "steps 1, 100 of 100"
    assert describe({4}, 10) == "step 5 of 10"
    for bad in ("0", "101", "middle"):
        with pytest.raises(ValueError, match="--trace-steps"):
            traced_steps(bad, 100)


def test_demo_serves_the_traced_step_to_a_viewer(tmp_path):
    demo = subprocess.Popen(
        [sys.executable, "-m", "opgraph", "demo", "--serve", "--port", "0", "--steps", "2",
         "--trace-steps", "2", "--no-wait", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        lines = []
        while not lines or not lines[-1].startswith("viewer:"):
            lines.append(demo.stdout.readline())
            assert lines[-1], f"the demo ended early: {lines} {demo.stderr.read()}"
        url = lines[-1].split()[-1]
        what = demo.stdout.readline()

        async def watch():
            reader = await th.connect_reader(stream_url(url))
            events = []
            try:
                while True:
                    events.append(await reader.next(timeout=120))
            except websockets.ConnectionClosed:  # the demo exits after training
                return events

        events = asyncio.run(watch())
        rest, _ = demo.communicate(timeout=120)
    finally:
        demo.kill()
    assert demo.returncode == 0
    assert "tracing step 2 of 2" in what and "--trace-steps" in what
    assert lines[0].startswith("training MLP(2, [16, 16, 1]) (337 parameters)")
    assert re.search(r"final loss \d+\.\d+, accuracy \d+%", rest)
    # like the demo without --serve, it draws a neuron's graph and says where
    svg = tmp_path / "neuron.svg"
    assert f"drew the graph of neuron L0.N0: {svg.resolve()}" in rest
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    kinds = [e["type"] for e in events]
    assert kinds.count("backward_begin") == 1 and kinds.count("backward_end") == 1
    nodes = th.graph_of(events)
    assert len(nodes) > 30_000  # one step of the demo
    params = {n["label"] for n in nodes.values() if n["op"] is None and n["label"]}
    assert len(params) >= 337  # every weight and bias of MLP(2, [16, 16, 1]), by label
    begin = next(e for e in events if e["type"] == "backward_begin")
    assert nodes[begin["root"]]["grad"] == 1.0
