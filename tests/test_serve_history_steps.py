"""`--history-steps N`: how many training steps of history (loss, and the inputs' numbers) a
hub (`opgraph serve`) or the demo's server (`opgraph demo --serve`) keeps for late joiners,
set from the real command line and read by a real viewer's snapshot (docs/security.md)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import _tracing_helpers as th
import pytest
from _steps_helpers import floats, training_script
from test_steps_server import joined

from opgraph import Engine, ServerError
from opgraph.server.client import stream_url
from opgraph.server.events import u8s

SCRIPT = training_script(7, start=0.5)


def late_joiner_history(viewer_url: str) -> dict:
    async def join():
        reader = await th.connect_reader(stream_url(viewer_url))
        got = await reader.until(lambda e: e["type"] == "snapshot_end", timeout=120)
        await reader.ws.close()
        return joined(got)

    return asyncio.run(join())["history"]


def test_a_hub_keeps_the_history_steps_it_is_given():
    hub = th.opgraph_process("serve", "--port", "0", "--history-steps", "3")
    try:
        viewer_url = th.line_starting(hub, "viewer:").split()[-1]
        publish = th.line_starting(hub, "publish from scripts with:").split("OPGRAPH_TRACE=")[-1]
        script = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            capture_output=True,
            text=True,
            env=th.script_env(OPGRAPH_TRACE=publish),
            timeout=120,
        )
        assert script.returncode == 0, script.stderr
        losses = json.loads(script.stdout)
        history = late_joiner_history(viewer_url)
    finally:
        hub.terminate()
        hub.wait(timeout=10)
    assert list(u8s(history["steps"])) == [5, 6, 7]  # the last 3 of 7 steps
    assert floats(history["loss"]) == losses[-3:]


@pytest.mark.parametrize("bad", ["0", "-2", "ten", "2.5", ""])
def test_serve_refuses_a_history_of_no_steps_or_not_a_number(bad):
    result = subprocess.run(
        [sys.executable, "-m", "opgraph", "serve", "--port", "0", "--history-steps", bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""  # no hub was started
    expected = "must be at least 1, got" if bad.lstrip("-").isdigit() else "must be a whole number"
    assert f"opgraph serve: error: argument --history-steps: {expected}" in result.stderr


def test_the_demo_server_keeps_the_history_steps_it_is_given(tmp_path):
    demo = th.opgraph_process(
        "demo", "--serve", "--port", "0", "--steps", "3", "--history-steps", "2",
        "--out", str(tmp_path),
    )  # fmt: skip
    try:
        viewer_url = th.line_starting(demo, "viewer:").split()[-1]
        th.line_starting(demo, "serving the trace at")  # trained: every step is in the history
        history = late_joiner_history(viewer_url)
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    assert list(u8s(history["steps"])) == [2, 3]
    assert len(floats(history["loss"])) == 2


def test_the_demo_refuses_a_history_of_no_steps():
    result = subprocess.run(
        [sys.executable, "-m", "opgraph", "demo", "--serve", "--history-steps", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "argument --history-steps: must be at least 1, got 0" in result.stderr


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_serve_in_a_script_refuses_a_bad_history_steps(bad):
    with pytest.raises(ServerError, match="history_steps must be a whole number of at least 1"):
        Engine(name="history", entry_points=False).serve(port=0, history_steps=bad)
