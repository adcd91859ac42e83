"""Tracing scripts without changing them: OPGRAPH_TRACE, the hub, `opgraph watch`, the client."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import subprocess
import sys
import textwrap

import _tracing_helpers as th
import pytest

from opgraph import Engine
from opgraph.commands.watch import watch
from opgraph.server.client import Graph, events, stream_url

# A script that knows nothing of tracing: it labels its nodes and prints its graph as JSON.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from opgraph import Value, topological_order

    tag = sys.argv[1]
    x = Value(1.5, label=tag + ".x")
    w = Value(-0.5, label=tag + ".w")
    y = (x * w + x ** 2).tanh()
    for k, node in enumerate(topological_order(y)):
        if not node.label:
            node.label = f"{tag}.n{k}"
    if len(sys.argv) > 2:  # wait for the test before the backward pass
        print("ready", flush=True)
        sys.stdin.readline()
    y.backward()
    nodes = topological_order(y)
    print(json.dumps({
        n.label: {
            "op": n.op.name if n.op else None,
            "parents": [p.label for p in n.parents],
            "data": n.data,
            "grad": n.grad,
        }
        for n in nodes
    }))
    """
)


def by_label(nodes: dict[int, dict], prefix: str) -> dict[str, dict]:
    """The viewer's graph for one script, keyed by labels instead of (renumbered) ids."""
    label = {i: n["label"] for i, n in nodes.items()}
    return {
        n["label"]: {
            "op": n["op"],
            "parents": [label[p] for p in n["parents"]],
            "data": n["data"],
            "grad": n["grad"],
        }
        for n in nodes.values()
        if n["label"].startswith(prefix + ".")
    }


def test_hub_keeps_viewers_connected_across_two_publishing_scripts(tmp_path):
    hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opgraph",
            "serve",
            "--port",
            "0",
            "--record",
            str(tmp_path / "hub.ogtrace"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=th.script_env(),
    )
    try:
        viewer_url = hub.stdout.readline().split()[-1]
        publish = hub.stdout.readline().strip().split("OPGRAPH_TRACE=")[-1]
        assert viewer_url.startswith("http://127.0.0.1:") and publish.startswith("ws://127.0.0.1:")

        async def main():
            reader = await th.connect_reader(stream_url(viewer_url))
            got = await reader.until(lambda e: e["type"] == "snapshot_end")
            # two scripts publishing at the same time, then a third after them
            runs = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    SCRIPT,
                    tag,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=th.script_env(OPGRAPH_TRACE=publish),
                )  # fmt: skip
                for tag in ("one", "two")
            ]
            outputs = [await run.communicate() for run in runs]
            ends = 0
            while ends < 2:
                event = await reader.next()
                got.append(event)
                ends += event["type"] == "run" and event["state"] == "end"
            await reader.ws.close()
            return got, outputs

        got, outputs = asyncio.run(main())
    finally:
        hub.terminate()
        hub.wait(timeout=10)
    hello = got[0]
    assert hello["engine"] == "hub"
    for _, stderr in outputs:
        assert b"publishing the trace" in stderr, stderr
    runs = [e for e in got if e["type"] == "run"]
    assert sorted(r["state"] for r in runs) == ["end", "end", "start", "start"]
    starts = [r for r in runs if r["state"] == "start"]
    assert all(r["engine"] == "default" and "tanh" in r["ops"] for r in starts)
    assert len({r["source"] for r in starts}) == 2
    nodes = th.graph_of(got)
    for tag, (stdout, _) in zip(("one", "two"), outputs, strict=True):
        assert by_label(nodes, tag) == json.loads(stdout)  # structure, data and grads
    forwards = [e for e in got if e["type"] == "forward"]
    assert len({e["id"] for e in forwards}) == len(forwards)  # no id used twice
    # the hub recorded both runs, and stopped cleanly on SIGTERM
    from opgraph.server.recording import Recording

    recording = Recording(tmp_path / "hub.ogtrace")
    recorded = list(recording)
    assert recording.damage is None
    assert th.graph_of(recorded) == nodes


def test_publishing_to_a_missing_hub_warns_and_runs_untraced():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "alone"],
        capture_output=True,
        text=True,
        timeout=60,
        env=th.script_env(OPGRAPH_TRACE="ws://127.0.0.1:9"),  # nothing listens on port 9
    )
    assert result.returncode == 0
    assert "tracing is off" in result.stderr and "127.0.0.1:9" in result.stderr
    assert json.loads(result.stdout)["alone.x"]["grad"] != 0


def test_opgraph_trace_1_serves_a_script_without_code_changes():
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "env", "wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=th.script_env(OPGRAPH_TRACE="1", OPGRAPH_TRACE_PORT="0"),
    )
    try:
        announced = script.stderr.readline()
        url = re.search(r"http://\S+", announced).group(0)
        assert script.stdout.readline().strip() == "ready"

        async def main():
            reader = await th.connect_reader(stream_url(url))
            got = await reader.until(lambda e: e["type"] == "snapshot_end")
            script.stdin.write("\n")
            script.stdin.flush()
            got += await reader.until(lambda e: e["type"] == "backward_end")
            await reader.ws.close()
            return got

        got = asyncio.run(main())
        stdout, _ = script.communicate(timeout=30)
    finally:
        script.kill()
    assert got[0]["engine"] == "default"
    # the nodes made before we joined came in the snapshot or the stream, then the pass
    assert by_label(th.graph_of(got), "env") == json.loads(stdout)


def test_watch_prints_a_live_summary_and_the_client_reconnects():
    engine = Engine(name="watched", entry_points=False)
    port_holder = {}

    async def main():
        server = engine.serve(port=0)
        port_holder["port"] = server.port
        x = engine.value(2.0)
        (x * x).backward()
        await asyncio.to_thread(server.flush)  # the first pass is numbered before watch joins
        out = io.StringIO()
        summary = asyncio.ensure_future(watch(server.ws_url, 0.2, 1.0, reconnect=False, out=out))
        while not server.stats()["viewers"]:  # joined: its snapshot is taken
            await asyncio.sleep(0.01)
        (x * 3).backward()
        graph = await summary

        # the client's events() survives a server restart on the same port
        seen: list[dict] = []

        async def follow():
            async for event in events(server.ws_url, retry_delay=0.05):
                seen.append(event)

        follower = asyncio.ensure_future(follow())
        while not any(e["type"] == "snapshot_end" for e in seen):
            await asyncio.sleep(0.02)
        await asyncio.to_thread(server.close)
        restarted = engine.serve(port=port_holder["port"])
        engine.value(5.0, label="after restart")
        while not any(e.get("label") == "after restart" for e in seen):
            await asyncio.sleep(0.02)
        follower.cancel()
        await asyncio.to_thread(restarted.close)
        return out.getvalue(), graph, seen

    text, graph, seen = asyncio.run(asyncio.wait_for(main(), th.TIMEOUT))
    lines = text.strip().splitlines()
    assert len(lines) >= 3
    # joined after the first pass (in the snapshot: 2 nodes), saw the second live
    assert re.search(r"events/s +4 nodes +seq \d+ +no pass +1 passes +dropped 0", lines[-1]), lines
    assert graph.passes == 1 and graph.gaps == [] and graph.snapshots == 1
    sessions = [e["session"] for e in seen if e["type"] == "hello"]
    assert len(sessions) == 2 and sessions[0] != sessions[1]
    rebuilt = Graph()
    for event in seen:
        rebuilt.apply(event)
    assert any(n["label"] == "after restart" for n in rebuilt.nodes.values())


def test_a_publisher_reconnects_when_its_hub_restarts():
    from opgraph.server.publisher import Publisher
    from opgraph.server.server import TraceServer

    def hub(port=0):
        return TraceServer(engine_name="hub", ops={}, port=port, accept_publishers=True).start()

    def labels(server):
        async def read():
            reader = await th.connect_reader(server.ws_url)
            got = await reader.until(lambda e: e["type"] == "snapshot_end")
            await reader.ws.close()
            return th.graph_of(got)

        return {n["label"]: n for n in asyncio.run(read()).values()}

    def wait_for(server, label):
        for _ in range(400):
            if label in labels(server):
                return
            asyncio.run(asyncio.sleep(0.025))
        raise AssertionError(f"{label!r} never reached the hub")

    engine = Engine(name="publisher", entry_points=False)
    first = hub()
    publisher = Publisher(engine, first.publish_url).start()
    try:
        w = engine.value(0.5, label="w")
        h = (w * 3.0).tanh()
        h.label = "h"
        wait_for(first, "h")
        port = first.port
        first.close()
        second = hub(port)  # the same address: the publisher finds it again
        try:
            for _ in range(400):
                if publisher.connections == 2:
                    break
                asyncio.run(asyncio.sleep(0.025))
            out = h + w  # uses nodes announced to the first hub only
            out.label = "out"
            wait_for(second, "out")
            graph = labels(second)
        finally:
            second.close()
    finally:
        publisher.close()
    assert publisher.connections == 2 and publisher.error is None
    # the new run re-announced what `out` is built from, so the graph is whole
    assert graph["out"]["op"] == "add" and graph["h"]["op"] == "tanh"
    assert graph["w"]["op"] is None and graph["w"]["data"] == 0.5
    ids = {label: i for i, n in enumerate(graph.values()) for label in [n["label"]]}
    assert len(ids) == len(graph)


def test_watch_says_when_it_cannot_connect():
    # a port nobody listens on: bound, then freed
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    watcher = subprocess.run(
        [sys.executable, "-m", "opgraph", "watch", f"http://127.0.0.1:{port}/", "--no-reconnect"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watcher.returncode == 1
    assert f"opgraph watch: cannot connect to ws://127.0.0.1:{port}/ws" in watcher.stderr


def test_serve_refuses_a_queue_limit_below_one(capsys):
    from opgraph.cli import build_parser

    for bad in ("0", "-5"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--queue-limit", bad])
        assert f"--queue-limit: must be at least 1, got {bad}" in capsys.readouterr().err


def test_a_bad_opgraph_trace_port_is_named_and_the_script_runs_untraced():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "badport"],
        capture_output=True,
        text=True,
        timeout=60,
        env=th.script_env(OPGRAPH_TRACE="1", OPGRAPH_TRACE_PORT="abc"),
    )
    assert result.returncode == 0
    assert json.loads(result.stdout)["badport.x"]["grad"] != 0  # ran untraced
    assert "tracing is off" in result.stderr and "OPGRAPH_TRACE_PORT" in result.stderr


def test_a_label_past_the_hubs_limit_is_cut_not_refused_forever():
    # The hub refuses a frame with a label over MAX_LABEL characters; a publisher that sent it
    # as it is would be cut off, reconnect, send it again, and never trace anything more.
    from opgraph.server.events import MAX_LABEL
    from opgraph.server.publisher import Publisher
    from opgraph.server.server import TraceServer

    hub = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start()
    engine = Engine(name="long-labels", entry_points=False)
    publisher = Publisher(engine, hub.publish_url).start()
    try:
        long = engine.value(1.0, label="x" * (MAX_LABEL + 5))
        after = long * 2.0
        after.label = "after"

        async def read():
            for _ in range(400):
                reader = await th.connect_reader(hub.ws_url)
                got = th.graph_of(await reader.until(lambda e: e["type"] == "snapshot_end"))
                await reader.ws.close()
                if any(n["label"] == "after" for n in got.values()):
                    return got
                await asyncio.sleep(0.025)
            raise AssertionError("'after' never reached the hub")

        graph = asyncio.run(read())
    finally:
        publisher.close()
        hub.close()
    labels = sorted((n["label"] for n in graph.values()), key=len)
    assert labels[-1] == "x" * (MAX_LABEL - 1) + "\u2026"
    assert publisher.connections == 1 and publisher.error is None
