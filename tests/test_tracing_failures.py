"""Tracing never stops silently: a failure while sending events is reported and the stream
resyncs; a frozen or silent hub is noticed within a bounded time, with bounded memory and a
prompt exit; tokens never appear in what opgraph prints."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import _tracing_helpers as th
import numpy as np
import pytest

from opgraph import Engine
from opgraph.server import hub as hub_module
from opgraph.server import publisher as publisher_module
from opgraph.server.client import stream_url
from opgraph.server.publisher import CONNECT_TIMEOUT, EXIT_TIMEOUT, MAX_PENDING, Publisher
from opgraph.server.server import TraceServer

# --- a failure in the drain or the publish loop -----------------------------------------------


def train_with_numpy_scalars(engine: Engine, steps: int = 3):
    """A training loop as a numpy user writes it: `data` becomes a numpy float32 or int64."""
    w = engine.value(0.5, label="w")
    b = engine.value(0.0, label="b")
    for _ in range(steps):
        loss = (w * 2.0 + b).tanh()
        loss.backward()
        w.data -= np.float32(0.1) * w.grad  # a numpy float32 from now on
        b.data = np.int64(3)
        w.grad = b.grad = 0.0
    return w, b


def test_numpy_scalars_in_data_do_not_stop_a_served_trace():
    engine = Engine(name="numpy", entry_points=False)

    async def main():
        with engine.serve(port=0) as server:
            reader = await th.connect_reader(server.ws_url)
            got = await reader.until(lambda e: e["type"] == "snapshot_end")
            w, b = await asyncio.to_thread(train_with_numpy_scalars, engine)
            after = w * b  # events after the numpy assignments still arrive
            after.label = "after"
            got += await reader.until(lambda e: e.get("label") == "after")
            await reader.ws.close()
            return got, w, b

    got, w, b = asyncio.run(asyncio.wait_for(main(), th.TIMEOUT))
    nodes = {n["label"]: n for n in th.graph_of(got).values()}
    assert nodes["w"]["data"] == pytest.approx(float(w.data))
    assert nodes["b"]["data"] == 3.0
    assert nodes["after"]["data"] == pytest.approx(float(w.data) * 3)


def test_numpy_scalars_in_data_reach_a_hub():
    engine = Engine(name="numpy-pub", entry_points=False)
    with TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start() as hub:

        async def main():
            reader = await th.connect_reader(hub.ws_url)
            await reader.until(lambda e: e["type"] == "snapshot_end")
            publisher = Publisher(engine, hub.publish_url).start()
            try:
                w, b = await asyncio.to_thread(train_with_numpy_scalars, engine)
                (w * b).label = "after"
                got = await reader.until(lambda e: e.get("label") == "after")
            finally:
                await asyncio.to_thread(publisher.close)
            await reader.ws.close()
            return got, publisher

        got, publisher = asyncio.run(asyncio.wait_for(main(), th.TIMEOUT))
    data = [e["data"] for e in got if e["type"] == "data"]
    assert 3.0 in data and all(type(x) is float for x in data)
    assert publisher.error is None and publisher.failures == 0 and publisher.dropped == 0


def test_a_failing_drain_is_reported_once_and_viewers_resync(monkeypatch, capfd):
    engine = Engine(name="failing", entry_points=False)
    real = hub_module.backward_steps_bytes
    failures = []

    def fails_twice(*args):  # an encoder that breaks on two batches, then recovers
        if len(failures) < 2:
            failures.append(args)
            raise RuntimeError("encoder broke")
        return real(*args)

    monkeypatch.setattr(hub_module, "backward_steps_bytes", fails_twice)

    async def main():
        server = engine.serve(port=0, resync_interval=0, resync_pass_wait=0.05)
        try:
            reader = await th.connect_reader(server.ws_url)
            got = await reader.until(lambda e: e["type"] == "snapshot_end")
            x = engine.value(1.5, label="x")
            (x * x).backward()  # lost to the encoder: viewers get dropped + a snapshot
            got += await reader.until(lambda e: e["type"] == "dropped")
            got += await reader.until(lambda e: e["type"] == "snapshot_end")
            (x * 3.0).backward()  # lost again: counted, not reported again
            while len(failures) < 2:
                await asyncio.sleep(0.01)
            got += await reader.until(lambda e: e["type"] == "snapshot_end")
            y = x + 1.0  # the stream goes on
            y.label = "y"
            y.backward()
            got += await reader.until(lambda e: e["type"] == "backward_end")
            await reader.ws.close()
            return got, server.drain_failures
        finally:
            await asyncio.to_thread(server.close)

    got, drain_failures = asyncio.run(asyncio.wait_for(main(), th.TIMEOUT))
    err = capfd.readouterr().err
    assert drain_failures == 2
    assert err.count("sending events to viewers failed") == 1, err
    assert "RuntimeError: encoder broke" in err and "'failing'" in err
    assert "in test_tracing_failures.py:" in err  # where it broke
    assert [e["type"] for e in got].count("dropped") == 2
    # after the last snapshot, seqs follow on without a gap and the graph is whole
    last = max(i for i, e in enumerate(got) if e["type"] == "snapshot_begin")
    nodes = {n["label"]: n for n in th.graph_of(got[last:]).values() if n["label"]}
    assert nodes["y"]["grad"] == 1.0 and nodes["x"]["grad"] == 1.0
    seqs = [e["seq"] for e in got[last:] if "seq" in e and not e["type"].startswith("snap")]
    assert seqs == list(range(got[last]["seq"] + 1, got[last]["seq"] + 1 + len(seqs)))


def test_a_failing_publisher_batch_is_reported_once_and_the_run_goes_on(monkeypatch, capfd):
    engine = Engine(name="failing-pub", entry_points=False)
    real, failed = publisher_module.event_maps, []

    def fails_once(*args):
        if not failed:
            failed.append(True)
            raise TypeError("cannot pack that")
        return real(*args)

    monkeypatch.setattr(publisher_module, "event_maps", fails_once)
    with TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start() as hub:

        async def main():
            reader = await th.connect_reader(hub.ws_url)
            got = await reader.until(lambda e: e["type"] == "snapshot_end")
            publisher = Publisher(engine, hub.publish_url).start()
            try:
                w = engine.value(0.5, label="w")
                await asyncio.to_thread(publisher.wait_connected, th.TIMEOUT)
                while not failed:
                    await asyncio.sleep(0.01)
                out = (w * 2.0).tanh()  # w was lost with the batch: announced again
                out.label = "out"
                got += await reader.until(lambda e: e.get("label") == "out")
            finally:
                await asyncio.to_thread(publisher.close)
            await reader.ws.close()
            return got, publisher

        got, publisher = asyncio.run(asyncio.wait_for(main(), th.TIMEOUT))
    err = capfd.readouterr().err
    assert err.count("packing events failed (TypeError: cannot pack that)") == 1, err
    assert publisher.failures == 1 and publisher.dropped >= 1 and publisher.error is None
    graph = th.graph_of(got)  # whole: `out` and the nodes it is made of
    (out,) = [n for n in graph.values() if n["label"] == "out"]
    (w,) = [graph[p] for p in graph[out["parents"][0]]["parents"] if graph[p]["label"]]
    assert out["op"] == "tanh" and w["label"] == "w" and w["data"] == 0.5


def test_a_publisher_that_falls_behind_drops_counts_and_keeps_the_graph_whole(capfd):
    engine = Engine(name="burst", entry_points=False)
    with TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start() as hub:

        async def main():
            reader = await th.connect_reader(hub.ws_url)
            got = await reader.until(lambda e: e["type"] == "snapshot_end")
            publisher = Publisher(engine, hub.publish_url, max_pending=50).start()
            try:
                w = engine.value(0.5, label="w")
                await asyncio.to_thread(publisher.wait_connected, th.TIMEOUT)
                burst = [w * float(i) for i in range(5000)]  # far more than 50 at once
                while not publisher.dropped or publisher.tracer.pending():
                    await asyncio.sleep(0.01)
                last = burst[-1] + 1.0  # burst[-1] was dropped: announced again
                last.label = "last"
                got += await reader.until(lambda e: e.get("label") == "last")
            finally:
                await asyncio.to_thread(publisher.close)
            await reader.ws.close()
            return got, publisher

        got, publisher = asyncio.run(asyncio.wait_for(main(), th.TIMEOUT))
    err = capfd.readouterr().err
    assert err.count("the program makes events faster than they reach the hub") == 1, err
    assert publisher.tracer.pending() == 0 and 0 < publisher.dropped < 10_000
    assert f"events sent, {publisher.dropped} dropped" in err  # the total, at close
    graph = th.graph_of(got)
    (last,) = [n for n in graph.values() if n["label"] == "last"]
    made_by = graph[last["parents"][0]]
    assert made_by["op"] == "mul" and made_by["data"] == 0.5 * 4999
    assert graph[made_by["parents"][0]]["label"] == "w"


# --- a frozen or silent hub -------------------------------------------------------------------

# A script that trains until told to stop on stdin, reporting the tracer's waiting events.
TRAINER = textwrap.dedent(
    """
    import json, sys, threading, time
    from opgraph import Value
    from opgraph.engine import default_engine

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    started = time.monotonic()
    w = Value(0.5, label="w")  # the first op: must not wait for the hub
    first_op = time.monotonic() - started
    cap = default_engine().tracer.max_buffer
    most, steps = 0, 0
    while not stop.is_set():
        loss = (w * 2.0 + 1.0).tanh()
        loss.backward()
        w.data -= 0.01 * w.grad
        w.grad = 0.0
        steps += 1
        if steps % 200 == 0:
            tracer = default_engine().tracer  # None while paused
            most = max(most, tracer.pending() if tracer else 0)
        if steps == 500:
            print("training", flush=True)
    report = {"first_op": first_op, "cap": cap, "most_pending": most, "steps": steps}
    print(json.dumps(report), flush=True)
    """
)


class Script:
    """A subprocess whose output lines are collected, with the time each arrived."""

    def __init__(self, code: str, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: dict[str, list[tuple[float, str]]] = {"out": [], "err": []}
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()

    def _read(self, name: str, stream) -> None:
        for line in stream:
            self.lines[name].append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, name: str, pattern: str, timeout: float = th.TIMEOUT, since=0.0) -> tuple:
        """The first line of stream `name` (out, err) that arrived after `since` and matches."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for when, line in self.lines[name]:
                if when >= since and re.search(pattern, line):
                    return when, line
            time.sleep(0.01)
        raise AssertionError(f"no {pattern!r} in {self.lines}")

    def stop(self) -> tuple[dict, float]:
        """Tell the script to finish; its report, and how long it took to exit after it."""
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        when, line = self.wait_for("out", r"^\{")
        self.proc.wait(th.TIMEOUT)
        exited = time.monotonic()
        time.sleep(0.05)  # the readers take the last lines
        return json.loads(line), exited - when

    def err(self) -> str:
        return "\n".join(line for _, line in self.lines["err"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def hub_process():
    """A real `opgraph serve` in its own process: (process, viewer URL, publish URL)."""
    proc = th.opgraph_process("serve", "--port", "0", stderr=subprocess.DEVNULL)
    try:
        viewer = proc.stdout.readline().split()[-1]
        publish = proc.stdout.readline().strip().split("OPGRAPH_TRACE=")[-1]
        yield proc, viewer, publish
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_a_frozen_hub_is_noticed_soon_with_bounded_memory_and_a_prompt_exit(hub_process):
    hub, viewer_url, publish_url = hub_process
    script = Script(TRAINER, th.script_env(OPGRAPH_TRACE=publish_url))
    try:

        async def events_arrive():
            reader = await th.connect_reader(stream_url(viewer_url))
            await reader.until(lambda e: e["type"] == "backward_end")
            await reader.ws.close()

        asyncio.run(events_arrive())  # the script publishes
        script.wait_for("out", "training")
        frozen = time.monotonic()
        os.kill(hub.pid, signal.SIGSTOP)  # sockets stay open; nothing answers
        # (A hub too busy to answer in time is taken for frozen too: hence `since`.)
        noticed, message = script.wait_for("err", "lost the hub", since=frozen)
        assert noticed - frozen < 8, f"noticed after {noticed - frozen:.1f} s"
        assert publish_url.split("?")[0] in message and "tracing paused" in message
        assert re.search(r"lost the hub: (it took no data|no answer to a ping)", message)

        os.kill(hub.pid, signal.SIGCONT)  # it recovers: the script publishes again
        script.wait_for("err", "publishing again", since=noticed)

        os.kill(hub.pid, signal.SIGSTOP)  # frozen again, then the script ends
        time.sleep(0.5)
        report, exit_delay = script.stop()
    finally:
        script.kill()
    assert exit_delay < EXIT_TIMEOUT + 1, f"exit took {exit_delay:.2f} s"
    assert report["cap"] == MAX_PENDING and report["most_pending"] <= report["cap"]
    # what did not reach the hub at exit is counted: frozen, the hub acknowledges nothing
    last = script.lines["err"][-1][1]
    gave_up = r"gave up waiting at exit after [\d.]+ s, while .*: "
    assert re.search(rf"{gave_up}\d+ events reached the hub, \d+ did not \(", last), last


def test_a_hub_that_never_answers_blocks_nothing_and_is_named():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    url = f"ws://127.0.0.1:{silent.getsockname()[1]}"
    try:
        # a script longer than the connection deadline: told why, then runs untraced
        script = Script(TRAINER, th.script_env(OPGRAPH_TRACE=url))
        try:
            script.wait_for("out", "training")
            _, message = script.wait_for("err", "cannot publish", timeout=CONNECT_TIMEOUT + 10)
            report, exit_delay = script.stop()
        finally:
            script.kill()
        assert report["first_op"] < 0.5  # not blocked on connecting
        assert f"{url}/publish" in message and f"no answer within {CONNECT_TIMEOUT:g} s" in message
        assert message.endswith("tracing is off")
        assert exit_delay < 1.0  # nothing left to send

        # a script shorter than it: its exit waits for the attempt, and says what it was doing
        script = Script(TRAINER, th.script_env(OPGRAPH_TRACE=url))
        try:
            script.wait_for("out", "training")
            report, exit_delay = script.stop()
        finally:
            script.kill()
        assert exit_delay < CONNECT_TIMEOUT + 1.5, f"exit took {exit_delay:.2f} s"
        assert "no answer within" in script.err()  # the attempt ran out: then the count
        assert re.search(
            r"0 events sent, \d+ dropped \(at exit: connecting to the hub \(no answer yet\)\)$",
            script.err(),
        ), script.err()
    finally:
        silent.close()


# --- tokens are never printed -----------------------------------------------------------------


def test_publisher_messages_never_show_the_hub_token(capfd):
    token = "s3cret-T0ken"
    with TraceServer(
        engine_name="hub", ops={}, port=0, token=token, accept_publishers=True
    ).start() as hub:
        # a script with the right token publishes; what it prints hides the token
        result = subprocess.run(
            [sys.executable, "-c", "from opgraph import Value; (Value(2.0) * 3.0).backward()"],
            capture_output=True,
            text=True,
            timeout=th.TIMEOUT,
            env=th.script_env(OPGRAPH_TRACE=hub.publish_url),
        )
        assert result.returncode == 0
        assert "publishing the trace of engine 'default'" in result.stderr
        assert "token=***" in result.stderr and token not in result.stderr
        assert hub.stats()["runs"] == 1

        # a wrong token: refused, with the hub's reason, and neither token shown
        engine = Engine(name="wrong-token", entry_points=False)
        publisher = Publisher(engine, f"ws://127.0.0.1:{hub.port}?token=wr0ng-T0ken").start()
        publisher.close(timeout=th.TIMEOUT)
    err = capfd.readouterr().err
    assert "the hub refused the connection: HTTP 403: this server needs ?token=" in err
    assert "wr0ng-T0ken" not in err and token not in err and "token=***" in err
    assert publisher.error is not None and "wr0ng" not in publisher.error


def test_a_bad_opgraph_trace_setting_is_named_without_its_token():
    result = subprocess.run(
        [sys.executable, "-c", "from opgraph import Value; print(Value(2.0) * 3.0)"],
        capture_output=True,
        text=True,
        timeout=th.TIMEOUT,
        env=th.script_env(OPGRAPH_TRACE="http://hub.example:8765/?token=t0p-s3cret"),
    )
    assert result.returncode == 0 and "6.0" in result.stdout
    assert "tracing is off" in result.stderr and "token=***" in result.stderr
    assert "t0p-s3cret" not in result.stderr


def test_opgraph_watch_names_the_server_without_its_token():
    with socket.socket() as probe:  # a port nobody listens on: bound, then freed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/?token=w4tch-s3cret"
    watcher = subprocess.run(
        [sys.executable, "-m", "opgraph", "watch", url, "--no-reconnect"],
        capture_output=True,
        text=True,
        timeout=th.TIMEOUT,
    )
    assert watcher.returncode == 1
    assert f"watching ws://127.0.0.1:{port}/ws?token=***" in watcher.stdout
    assert "cannot connect to" in watcher.stderr and "token=***" in watcher.stderr
    assert "w4tch-s3cret" not in watcher.stdout + watcher.stderr
