"""`opgraph run --wait` and `opgraph replay --wait`: the command serves, says it waits, and
starts the script (or the replay) only once a viewer has connected, so that the viewer sees
it from its first event; `--wait-timeout` bounds the wait. Real subprocesses, real
websocket clients on loopback; every wait is bounded (hang detection, not timing)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import _tracing_helpers as th
from test_run_command import SCRIPT
from test_server_record import record_training

from opgraph.server.client import stream_url
from opgraph.server.recording import Recording


def opgraph(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPGRAPH_")}
    return subprocess.Popen(
        [sys.executable, "-m", "opgraph", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def watch(url: str, until) -> list[dict]:
    reader = await th.connect_reader(stream_url(url))
    try:
        return await reader.until(until)
    finally:
        await reader.ws.close()


def test_run_wait_runs_the_script_once_a_viewer_is_connected(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    process = opgraph("run", "--port", "0", "--exit", "--wait", str(script), "0")
    try:
        first = process.stdout.readline()
        assert first.startswith("viewer: http://127.0.0.1:"), first
        url = first.split()[1]
        said = process.stdout.readline()
        assert said == f"waiting for a viewer to connect to {url} before running the script\n"
        events = asyncio.run(watch(url, lambda e: e["type"] == "backward_end"))
        assert events[1] == {"type": "snapshot_begin", "seq": 0, "nodes": 0}  # nothing ran yet
        live = [e for e in events[3:] if e["type"] == "forward"]
        assert {e["label"] for e in live} >= {"w"}  # the whole run, streamed live
        assert events[-1]["type"] == "backward_end"
        out, err = process.communicate(timeout=60)
        assert out == "a viewer connected: running the script\nargv ['0'] __main__\n", err
        assert process.returncode == 0
    finally:
        process.kill()
        process.wait()


def test_run_wait_timeout_runs_the_script_anyway_and_says_so(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    process = opgraph("run", "--port", "0", "--exit", "--wait-timeout", "0.2", str(script), "0")
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    lines = out.splitlines()
    assert lines[1].endswith("(at most 0.2 s) before running the script")
    assert lines[2] == "argv ['0'] __main__"
    assert "opgraph run: no viewer connected within 0.2 s: running the script anyway" in err
    assert process.returncode == 0


def test_ctrl_c_while_run_waits_stops_without_running_the_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    process = opgraph("run", "--port", "0", "--wait", str(script), "0")
    try:
        process.stdout.readline()
        assert process.stdout.readline().startswith("waiting for a viewer")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert "argv" not in out  # the script never ran
    assert "opgraph run: stopped while waiting for a viewer" in err
    assert process.returncode == 130


def test_replay_wait_replays_once_a_viewer_is_connected(tmp_path):
    path = tmp_path / "run.ogtrace"
    record_training(path)
    recorded = list(Recording(path))
    process = opgraph("replay", "--port", "0", "--speed", "0", "--exit", "--wait", str(path))
    try:
        first = process.stdout.readline()
        assert first.startswith(f"replaying {path} as fast as possible; viewer: "), first
        url = first.split()[-1]
        said = process.stdout.readline()
        assert said == f"waiting for a viewer to connect to {url} before replaying\n"
        last = len(recorded) - 1
        events = asyncio.run(watch(url, lambda e: e.get("seq") == last and "t" in e))
        assert events[1] == {"type": "snapshot_begin", "seq": 0, "nodes": 0}  # nothing yet
        streamed = [e for e in events[3:] if e["type"] != "run"]
        assert streamed == [e for e in recorded[1:] if e["type"] != "run"]  # all of it, live
        out, err = process.communicate(timeout=60)
        assert out == f"a viewer connected: replaying\nreplayed {last} events\n", err
        assert process.returncode == 0
    finally:
        process.kill()
        process.wait()
