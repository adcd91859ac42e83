"""Hardening, second review: `opgraph run script.py` behaves as `python script.py` does (a forked
child, `--` in sys.argv, `__file__`, atexit handlers, one SIGTERM), pickling a graph of any
depth, and `no_grad()` in a generator. Each `opgraph run` test runs the real command and plain
`python` on the same script, in fresh processes, and compares them."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

WAIT = 30  # seconds: a bound for hang detection, never a speed requirement


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OPGRAPH_")}


def write(tmp_path, source: str, name: str = "script.py") -> str:
    (tmp_path / name).write_text(textwrap.dedent(source))
    return name


def python(tmp_path, script: str, *args: str) -> subprocess.CompletedProcess:
    """`python script args...`, in tmp_path."""
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=WAIT,
    )


def opgraph_run(tmp_path, script: str, *args: str, options=("--exit",)) -> subprocess.Popen:
    """`opgraph run --port 0 [options] script args...`, in tmp_path."""
    return subprocess.Popen(
        [sys.executable, "-m", "opgraph", "run", "--port", "0", *options, script, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )


def finished(process: subprocess.Popen) -> tuple[str, str]:
    """The stdout (without the viewer line) and stderr of an `opgraph run --exit` process."""
    try:
        out, err = process.communicate(timeout=WAIT)
    finally:
        process.kill()
    lines = out.splitlines(keepends=True)
    assert lines and lines[0].startswith("viewer: "), (out, err)
    return "".join(lines[1:]), err


class Lines:
    """The lines a stream gives, read in a thread, so a test can wait for one with a bound."""

    def __init__(self, stream):
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put("")  # end of stream

    def until(self, text: str) -> list[str]:
        """Every line up to the first that contains `text` (AssertionError after WAIT)."""
        while True:
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in {WAIT} s; saw {self.seen}") from None
            assert line, f"the stream ended before a line with {text!r}; saw {self.seen}"
            self.seen.append(line)
            if text in line:
                return self.seen


# --- a forked child -----------------------------------------------------------------------

FORKS = """
    import atexit, os, sys
    from opgraph import Value

    parent = os.getpid()
    atexit.register(lambda: print("atexit", "parent" if os.getpid() == parent else "child"))
    pid = os.fork()
    y = Value(2.0) * 3
    if pid == 0:
        print("child computed", y.data, flush=True)
        if sys.argv[1:] == ["exit"]:
            sys.exit(7)
        if sys.argv[1:] == ["_exit"]:
            os._exit(5)
    else:
        _, status = os.waitpid(pid, 0)
        print("parent saw the child end with", os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.parametrize("how", ["end", "exit", "_exit"])
def test_a_forked_child_ends_with_the_script_as_under_python(tmp_path, how):
    # The child reached the script's end in the runner: it waited on a server thread it
    # does not have, "still serving", and the parent's waitpid never returned.
    script = write(tmp_path, FORKS)
    expected = python(tmp_path, script, how)
    assert expected.returncode == 0, expected.stderr
    out, err = finished(opgraph_run(tmp_path, script, how))
    assert out == expected.stdout
    assert "still serving" not in err


def test_a_forked_child_never_serves_while_the_parent_does(tmp_path):
    script = write(tmp_path, FORKS)
    process = opgraph_run(tmp_path, script, "end", options=())
    try:
        stderr = Lines(process.stderr)
        said = stderr.until("still serving")
        assert "ended (exit code 0)" in said[-1]
        out = Lines(process.stdout)
        out.until("parent saw the child end with 0")  # so the child is gone: it never served
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT) == 0
        assert sum("still serving" in line for line in stderr.seen) == 1
    finally:
        process.kill()
        process.wait()


# --- sys.argv, __file__, __main__ ----------------------------------------------------------

SHOWS_ITSELF = """
    import sys
    print(sys.argv)
    print(__file__, __name__, __package__, __spec__, __cached__, type(__loader__).__name__)
    print(sorted(globals()), type(__builtins__).__name__)
"""


@pytest.mark.parametrize(
    "args",
    [["--", "--x"], ["a", "--", "b"], ["--"], ["--exit", "--port", "1"], ["--", "--", "x"]],
    ids=str,
)
@pytest.mark.parametrize("spelled", ["script.py", "./script.py", "absolute"])
def test_the_script_sees_the_argv_file_and_globals_python_gives_it(tmp_path, args, spelled):
    write(tmp_path, SHOWS_ITSELF)
    script = str(tmp_path / "script.py") if spelled == "absolute" else spelled
    expected = python(tmp_path, script, *args)
    assert expected.returncode == 0, expected.stderr
    out, _ = finished(opgraph_run(tmp_path, script, *args))
    assert out == expected.stdout  # `--` kept, __file__ absolute as python makes it


def test_a_double_dash_before_the_script_ends_opgraphs_options(tmp_path):
    script = write(tmp_path, SHOWS_ITSELF)
    expected = python(tmp_path, script, "--port")
    process = subprocess.Popen(
        [sys.executable, "-m", "opgraph", "run", "--exit", "--port", "0", "--", script, "--port"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    out, _ = finished(process)
    assert out == expected.stdout


# --- atexit ------------------------------------------------------------------------------

REGISTERS_ATEXIT = """
    import atexit, sys
    atexit.register(print, "first registered, last run", sys.argv[0])
    atexit.register(lambda: print("second registered, first run", __name__))
    print("body")
"""


def test_atexit_handlers_run_at_the_scripts_end_in_pythons_order(tmp_path):
    script = write(tmp_path, REGISTERS_ATEXIT)
    expected = python(tmp_path, script)
    out, _ = finished(opgraph_run(tmp_path, script))
    assert out == expected.stdout
    assert expected.stdout.count("registered") == 2


def test_atexit_handlers_run_before_the_runner_keeps_serving(tmp_path):
    # They ran only when the server stopped (Ctrl-C), long after the script's end.
    script = write(tmp_path, REGISTERS_ATEXIT)
    process = opgraph_run(tmp_path, script, options=())
    try:
        Lines(process.stderr).until("still serving")
        out = Lines(process.stdout)
        out.until("first registered, last run")
        shown = [line.split(",")[0] for line in out.seen[1:]]
        assert shown == ["body\n", "second registered", "first registered"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT) == 0
    finally:
        process.kill()
        process.wait()


# --- SIGTERM -----------------------------------------------------------------------------

SLEEPS = """
    import sys, time
    try:
        print("ready", flush=True)  # inside the try: a SIGTERM sent on reading it lands there
        time.sleep(600)
    except KeyboardInterrupt:
        if sys.argv[1:] != ["catch"]:
            raise
        print("saved my work", flush=True)
"""


@pytest.mark.parametrize("catch", [False, True], ids=["uncaught", "caught by the script"])
def test_one_sigterm_stops_the_command_while_the_script_runs(tmp_path, catch):
    # It only ended the script: the runner then kept serving until a second SIGTERM.
    script = write(tmp_path, SLEEPS)
    args = ["catch"] if catch else []
    plain = subprocess.Popen([sys.executable, script, *args], cwd=tmp_path, stdout=subprocess.PIPE)
    assert plain.stdout.readline() == b"ready\n"
    plain.send_signal(signal.SIGTERM)
    assert plain.wait(timeout=WAIT) == -signal.SIGTERM  # python stops on one SIGTERM
    process = opgraph_run(tmp_path, script, *args, options=())
    try:
        out = Lines(process.stdout)
        out.until("ready")
        process.send_signal(signal.SIGTERM)
        # and so does the command, with the status it gives SIGTERM (as Ctrl-C: 130 for an
        # interrupted script), or the script's own when it handled the interrupt itself
        assert process.wait(timeout=WAIT) == (0 if catch else 130)
        err = process.stderr.read()
        assert "still serving" not in err
        if catch:
            assert out.until("saved my work")
        else:
            assert "script.py interrupted" in err
    finally:
        process.kill()
        process.wait()


def test_one_sigterm_stops_the_command_while_it_serves_the_final_graph(tmp_path):
    script = write(tmp_path, "print('done')\nraise SystemExit(4)\n")
    process = opgraph_run(tmp_path, script, options=())
    try:
        Lines(process.stderr).until("still serving")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 4  # the script's exit code
    finally:
        process.kill()
        process.wait()
