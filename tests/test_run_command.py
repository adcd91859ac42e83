"""`opgraph run script.py`: the script runs as `python script.py` would, traced, and its final
graph stays served until Ctrl-C. Each test runs the command in a fresh interpreter."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import _tracing_helpers as th

SCRIPT = textwrap.dedent(
    """
    import sys
    import opgraph
    from opgraph import Value

    with opgraph.scope("model"):
        w = Value(2.0, label="w")
        y = w * 3
    y.label = "y"
    y.backward()
    print("argv", sys.argv[1:], __name__, flush=True)
    sys.exit(int(sys.argv[1]))
    """
)


def start(tmp_path, *options: str, args=("3", "--flag")) -> subprocess.Popen:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPGRAPH_")}
    return subprocess.Popen(
        [sys.executable, "-m", "opgraph", "run", "--port", "0", *options, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_the_script_runs_and_its_final_graph_stays_served_until_ctrl_c(tmp_path):
    process = start(tmp_path)
    try:
        first = process.stdout.readline()
        assert first.startswith("viewer: http://127.0.0.1:"), first
        url = first.split()[1]
        assert process.stdout.readline() == "argv ['3', '--flag'] __main__\n"
        said = process.stderr.readline()
        assert "train.py ended (exit code 3)" in said and "still serving" in said
        assert "Ctrl-C" in said

        async def join():  # a viewer that joins after the script ended
            reader = await th.connect_reader(th_stream(url))
            events = await reader.until(lambda e: e["type"] == "snapshot_end")
            await reader.ws.close()
            return events

        nodes = {e["label"]: e for e in asyncio.run(join()) if e["type"] == "node"}
        assert nodes["y"]["scope"] == "model" and nodes["y"]["data"] == 6.0
        assert nodes["w"]["grad"] == 3.0  # the graph as the script left it
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 3  # the script's exit code
        assert "stopped" in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def th_stream(url: str) -> str:
    from opgraph.server.client import stream_url

    return stream_url(url)


def test_exit_stops_with_the_script_and_passes_its_exit_code(tmp_path):
    process = start(tmp_path, "--exit", args=("0",))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.splitlines()[1] == "argv ['0'] __main__"
    assert "still serving" not in err


def test_a_failing_script_shows_its_traceback_and_exits_1(tmp_path):
    process = start(tmp_path, "--exit", args=("not a number",))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "ValueError: invalid literal for int()" in err
    assert 'train.py", line' in err and "runpy" not in err


def test_a_missing_script_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "opgraph", "run", str(tmp_path / "nope.py")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "can't open file" in result.stderr and "nope.py" in result.stderr


def test_opgraph_trace_says_when_the_viewer_goes_and_what_keeps_it(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPGRAPH_")}
    env.update(OPGRAPH_TRACE="1", OPGRAPH_TRACE_PORT="0")
    result = subprocess.run(
        [sys.executable, str(script), "0"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0
    last = result.stderr.strip().splitlines()[-1]
    assert "viewer" in last and "is gone" in last and "opgraph run" in last
