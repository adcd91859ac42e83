"""Hardening, second review: `opgraph run script.py` behaves as `python script.py` does (a forked
child, `--` in sys.argv, `__file__`, atexit handlers, one SIGTERM), pickling a graph of any
depth, and `no_grad()` in a generator. Each `opgraph run` test runs the real command and plain
`python` on the same script, in fresh processes, and compares them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import pickle
import queue
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import opgraph
import opgraph.value as value_module
from opgraph import Value, enable_grad, grad_enabled, no_grad, topological_order
from opgraph.errors import ModeLeakError

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
                seen = self.seen
                raise AssertionError(f"no line with {text!r} in {WAIT} s; saw {seen}") from None
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


POOL = """
    import multiprocessing

    def square(x):
        return x * x

    if __name__ == "__main__":
        with multiprocessing.get_context("fork").Pool(2) as pool:  # ends them with SIGTERM
            print(pool.map(square, [1, 2, 3]), flush=True)
"""


def test_a_fork_pool_ends_its_workers_quietly_as_under_python(tmp_path):
    # The workers inherited the runner's SIGTERM handler: each printed a KeyboardInterrupt
    # traceback when the pool terminated it.
    script = write(tmp_path, POOL)
    expected = python(tmp_path, script)
    out, err = finished(opgraph_run(tmp_path, script))
    assert out == expected.stdout == "[1, 4, 9]\n"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


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


STARTS_A_THREAD = """
    import atexit, threading, time
    from opgraph import Value

    def work():
        time.sleep(0.5)  # still running when the script's last line ends
        print("thread done", (Value(2.0) * 3).data, flush=True)

    atexit.register(print, "atexit")
    threading.Thread(target=work).start()
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # not waited for
    print("script's last line", flush=True)
"""


def test_the_scripts_threads_end_before_its_atexit_handlers_as_in_python(tmp_path):
    script = write(tmp_path, STARTS_A_THREAD)
    expected = python(tmp_path, script)
    out, _ = finished(opgraph_run(tmp_path, script))
    assert out == expected.stdout == "script's last line\nthread done 6.0\natexit\n"


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


# --- pickling a graph of any depth ------------------------------------------------------------


def deep_chain(steps: int):
    """A chain of 2 * steps nodes (`x * v + w` again and again), labelled and scoped in parts."""
    w, v = Value(0.5, label="w"), Value(0.999999, label="v")
    x = w
    for step in range(steps):
        if step % 1000 == 0:
            with opgraph.scope(f"block{step // 1000}"):
                x = x * v + w
            x.label = f"step{step}"
        else:
            x = x * v + w
    return x, w, v


def kept(node: Value) -> tuple:
    return node.data, node.grad, node.label, node.scope, node.op


def shape(order: list[Value]) -> list[tuple[int, ...]]:
    position = {id(node): k for k, node in enumerate(order)}
    return [tuple(position[id(parent)] for parent in node.parents) for node in order]


@pytest.mark.slow  # a million nodes pickled and loaded: tens of seconds
def test_a_million_node_chain_pickles_without_recursion_and_backpropagates_the_same():
    # pickle saved each node's parents inside the node: RecursionError a few hundred levels
    # down. A million nodes (and two leaves): as deep a graph as a long training run makes.
    out, w, v = deep_chain(500_000)
    out.grad = 0.25
    limit = sys.getrecursionlimit()
    loaded, lw, lv = pickle.loads(pickle.dumps((out, w, v)))
    assert sys.getrecursionlimit() == limit  # not raised behind the test's back
    assert lw is not w and lw.id > out.id and loaded.id > lw.id  # fresh ids, parents first
    old, new = topological_order(out), topological_order(loaded)
    assert len(old) == len(new) == 1_000_002 and not {id(n) for n in old} & {id(n) for n in new}
    assert list(map(kept, old)) == list(map(kept, new))  # data, grad, label, scope, op
    assert shape(old) == shape(new)  # each node's parents, as positions in the order
    out.backward()
    loaded.backward()
    assert (lw.grad, lv.grad) == (w.grad, v.grad) and w.grad > 1.0


def test_nodes_of_one_graph_pickled_together_stay_one_graph():
    out, w, v = deep_chain(3000)
    middle = out._a._a._a  # an inner node, pickled after the output and before its parents
    order = topological_order(out)
    loaded = pickle.loads(pickle.dumps([out, middle, list(reversed(order)), w]))
    lout, lmiddle, lreversed, lw = loaded
    assert lout._a._a._a is lmiddle and lreversed[0] is lout and lreversed[-1] is lw
    assert len({id(n) for n in topological_order(lout)} | {id(n) for n in lreversed}) == len(order)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(out, protocol=protocol)).data == out.data


def test_a_graph_pickled_again_and_copied_after_pickling_is_whole_each_time():
    out, w, _ = deep_chain(3000)
    for _ in range(3):  # the same line pickles it again: each pickle holds the whole graph
        loaded = pickle.loads(pickle.dumps(out))
        assert len(topological_order(loaded)) == len(topological_order(out))
    shallow = copy.copy(out)
    assert shallow._a is out._a and shallow.id > out.id


@pytest.mark.parametrize("cls", [dict, os.system], ids=["dict", "os.system"])
def test_a_hostile_pickle_of_a_root_is_refused(cls):
    class Hostile:  # a root of a class that is not a Value
        def __reduce__(self):
            return (value_module._unpickle_root, (cls, []))

    with pytest.raises(TypeError, match="not a pickled Value"):
        pickle.loads(pickle.dumps(Hostile()))


def test_a_root_with_a_state_of_the_wrong_shape_is_refused():
    x = Value(1.0) * Value(2.0)

    class Hostile:
        def __reduce__(self):
            return (value_module._unpickle_root, (type(x), []), ("too", "short"))

    with pytest.raises(ValueError):
        pickle.loads(pickle.dumps(Hostile()))


# --- a mode entered around a yield --------------------------------------------------------------


def recorded() -> bool:
    """Whether an op made here records its graph (what a leaked no_grad would switch off)."""
    return (Value(1.0) * 2).parents != ()


def test_no_grad_around_a_yield_is_refused_where_it_is_entered_and_the_caller_keeps_its_mode():
    # The caller ran in no_grad while the generator was paused inside the block: its ops
    # silently recorded no graph.
    def leaky(xs):
        for x in xs:
            try:
                with no_grad():
                    yield Value(x) * 2  # inside a try inside the block: found all the same
            except ValueError:
                pass

    gen = leaky([1.0, 2.0])
    with pytest.raises(ModeLeakError) as info:
        next(gen)
    message = str(info.value)
    assert "no_grad()" in message and "leaky()" in message and "@no_grad()" in message
    assert f"line {leaky.__code__.co_firstlineno + 4}" in message  # the yield's line
    assert grad_enabled() and recorded()


@pytest.mark.parametrize(
    "mode, name", [(enable_grad, "enable_grad"), (opgraph.detect_anomaly, "detect_anomaly")]
)
def test_every_mode_around_a_yield_is_refused(mode, name):
    def leaky():
        with no_grad():  # an outer mode around no yield is fine
            pass
        with mode():
            yield from [1, 2]

    with no_grad():
        with pytest.raises(ModeLeakError, match=rf"{name}\(\) is entered around a yield"):
            next(leaky())
        assert not grad_enabled()  # the caller's own mode, untouched


@contextlib.contextmanager
def frozen_in_scope(name):
    with no_grad(), opgraph.scope(name):
        yield name  # a context manager: its caller's block is meant to run in the mode


@pytest.fixture
def frozen():
    with no_grad():
        yield  # so is a fixture's test


def test_a_mode_around_the_yield_of_a_context_manager_or_a_fixture_is_allowed(frozen):
    assert not grad_enabled()
    with enable_grad():
        with frozen_in_scope("eval") as name:
            assert name == "eval" and not grad_enabled() and not recorded()
            assert Value(1.0).scope == "eval"
        assert grad_enabled()


def test_a_mode_around_the_work_between_yields_is_allowed():
    def fine(xs):
        for x in xs:
            with no_grad():
                y = Value(x) * 2
            yield y  # after the block
        with no_grad():
            pass
        yield None

    for y in fine([1.0, 2.0]):
        assert grad_enabled() and recorded()
        assert y is None or y.parents == ()


def test_a_decorated_generator_runs_in_no_grad_and_its_caller_never_does():
    @no_grad()
    def frozen(xs):
        """Doubles xs."""
        total = 0.0
        for x in xs:
            assert not grad_enabled()
            sent = yield Value(x) * 2
            assert not grad_enabled()  # on again after each resume
            total += sent or 0.0
        return total

    assert frozen.__doc__ == "Doubles xs." and frozen.__name__ == "frozen"
    gen = frozen([1.0, 2.0, 3.0])
    first = next(gen)
    assert first.parents == () and grad_enabled() and recorded()
    assert gen.send(10.0).data == 4.0 and grad_enabled() and recorded()
    with pytest.raises(KeyError):
        gen.throw(KeyError("thrown at the yield"))  # reaches the generator, which lets it out
    assert grad_enabled()

    def delegating():
        return (yield from frozen([1.0, 2.0]))

    outer = delegating()
    next(outer)
    outer.send(1.0)
    with pytest.raises(StopIteration) as done:
        outer.send(2.0)
    assert done.value.value == 3.0 and grad_enabled()


def test_a_decorated_generator_closed_early_runs_its_cleanup_in_the_mode():
    seen = []

    @no_grad()
    def cleans_up():
        try:
            yield 1
        finally:
            seen.append(grad_enabled())

    gen = cleans_up()
    next(gen)
    gen.close()
    assert seen == [False] and grad_enabled()


def test_a_decorated_function_and_refused_async_functions():
    @no_grad()
    def frozen(x):
        return Value(x) * 2

    assert frozen(1.0).parents == () and grad_enabled()

    async def coroutine():
        return None

    async def agen():
        yield None

    for fn in (coroutine, agen):
        with pytest.raises(TypeError, match="cannot decorate .* an async function"):
            no_grad()(fn)


def test_an_async_generator_may_await_in_a_mode_but_not_yield():
    async def awaits():
        with no_grad():
            await asyncio.sleep(0)  # pauses the task, whose context is its own: no leak
            x = Value(1.0) * 2
        yield x
        with no_grad():
            yield None

    async def consume():
        gen = awaits()
        assert (await gen.__anext__()).parents == ()
        assert grad_enabled()
        with pytest.raises(ModeLeakError, match="awaits"):
            await gen.__anext__()
        assert grad_enabled()

    asyncio.run(consume())
