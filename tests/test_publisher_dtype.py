"""float32 step maps chosen by a script that does not change its code: OPGRAPH_TRACE_DTYPE=f4
with OPGRAPH_TRACE=ws://... (a hub from the real `opgraph serve`) or OPGRAPH_TRACE=1, and
`opgraph run --dtype f4`. A real viewer receives `step` maps of dtype "f4", and the history
it joins to holds the script's losses as float32 (docs/tracing.md)."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import subprocess
import sys
import time

import _tracing_helpers as th
from _steps_helpers import floats, training_script
from test_steps_server import joined

from opgraph.server.client import stream_url

STEPS = 4

SCRIPT = training_script(STEPS)


def float32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


async def snapshot(viewer_url: str) -> list[dict]:
    reader = await th.connect_reader(stream_url(viewer_url))
    got = await reader.until(lambda e: e["type"] == "snapshot_end", timeout=60)
    await reader.ws.close()
    return got


def joined_after(viewer_url: str, steps: int) -> dict:
    """A late joiner's snapshot once the server has the script's `steps` steps: the script's
    server drains its events in the background, so a snapshot may come before the last ones."""
    for _ in range(100):  # a bounded wait (about 10 s): only a lost step exceeds it
        got = joined(asyncio.run(snapshot(viewer_url)))
        if "history" in got and len(floats(got["history"]["loss"])) == steps:
            return got
        time.sleep(0.1)
    raise AssertionError(f"the server never had the {steps} steps: {got}")


def check_f4(steps: list[dict], history: dict, losses: list[float]) -> None:
    """Every step map came as float32 (4 bytes a number), and the history holds the script's
    losses as float32 numbers, which the float64 ones are not."""
    assert steps and all(s["dtype"] == "f4" for s in steps)
    assert all(len(s["data"]) == len(s["grad"]) and len(s["data"]) % 4 == 0 for s in steps)
    assert floats(history["loss"]) == [float32(loss) for loss in losses]
    assert [float32(loss) for loss in losses] != losses


def test_a_script_publishes_f4_step_maps_to_a_hub():
    hub = th.opgraph_process("serve", "--port", "0")
    try:
        viewer_url = th.line_starting(hub, "viewer:").split()[-1]
        publish = th.line_starting(hub, "publish from").split("OPGRAPH_TRACE=")[-1]

        async def main():
            reader = await th.connect_reader(stream_url(viewer_url))
            await reader.until(lambda e: e["type"] == "snapshot_end")
            script = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SCRIPT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=th.script_env(OPGRAPH_TRACE=publish, OPGRAPH_TRACE_DTYPE="f4"),
            )  # fmt: skip
            out, err = await script.communicate()
            assert script.returncode == 0, err
            live = await reader.until(lambda e: e["type"] == "run" and e["state"] == "end")
            await reader.ws.close()
            return json.loads(out), live, joined(await snapshot(viewer_url))

        losses, live, got = asyncio.run(main())
    finally:
        hub.terminate()
        hub.wait(timeout=10)
    steps = [e for e in live if e["type"] == "step"]
    assert len(steps) == STEPS  # live: every step, each as the f4 map the script sent
    check_f4(steps, got["history"], losses)
    check_f4([got["step"]], got["history"], losses)  # a late joiner's latest step too


def test_opgraph_trace_1_serves_f4_step_maps():
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=th.script_env(OPGRAPH_TRACE="1", OPGRAPH_TRACE_PORT="0", OPGRAPH_TRACE_DTYPE="f4"),
    )
    try:
        assert script.stderr is not None and script.stdout is not None
        url = re.search(r"http://\S+", script.stderr.readline())
        assert url, "the script did not announce its viewer"
        losses = json.loads(script.stdout.readline())
        got = joined_after(url.group(0), STEPS)
        script.communicate("\n", timeout=30)
    finally:
        script.kill()
    assert script.returncode == 0
    check_f4([got["step"]], got["history"], losses)


def test_opgraph_run_dtype_f4_serves_f4_step_maps(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    run = subprocess.Popen(
        [sys.executable, "-m", "opgraph", "run", "--port", "0", "--dtype", "f4", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=th.script_env(),
    )
    try:
        assert run.stdout is not None and run.stderr is not None
        viewer_url = th.line_starting(run, "viewer:").split()[-1]
        losses = json.loads(run.stdout.readline())
        th.line_starting(run, "opgraph run: train.py ended", "stderr")  # still serving its graph
        got = joined(asyncio.run(snapshot(viewer_url)))
    finally:
        run.terminate()
        run.wait(timeout=10)
    check_f4([got["step"]], got["history"], losses)


def test_a_bad_dtype_is_named_and_the_script_runs_untraced():
    for trace in ("1", "ws://127.0.0.1:9"):
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            env=th.script_env(
                OPGRAPH_TRACE=trace, OPGRAPH_TRACE_PORT="0", OPGRAPH_TRACE_DTYPE="f2"
            ),
        )
        assert result.returncode == 0 and len(json.loads(result.stdout)) == STEPS
        assert (
            "opgraph: OPGRAPH_TRACE: tracing is off: OPGRAPH_TRACE_DTYPE must be f8 (float64) "
            "or f4 (float32), got 'f2'" in result.stderr
        )


def test_opgraph_run_refuses_another_dtype(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, "-m", "opgraph", "run", "--dtype", "f2", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""  # the script never ran
    assert "argument --dtype: invalid choice: 'f2' (choose from" in result.stderr
