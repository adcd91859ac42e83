"""Helpers shared by the tracing tests: real websocket clients of a real server on loopback,
and the environment and output of real `opgraph` processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import deque
from typing import Any

import msgpack
import websockets

TIMEOUT = 20  # seconds: no test waits longer for an event


def script_env(**extra: str) -> dict[str, str]:
    """This process's environment for a script or `opgraph` process, without the OPGRAPH_TRACE
    variables (a developer's own setting must not trace it), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPGRAPH_TRACE")}
    return env | extra


def opgraph_process(*args: str, stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """`python -m opgraph *args` in a process of its own (`script_env`), its output as text
    pipes; `stderr=subprocess.DEVNULL` for one that runs long and is not read."""
    command = [sys.executable, "-m", "opgraph", *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=script_env()
    )


def line_starting(process: subprocess.Popen, prefix: str, stream: str = "stdout") -> str:
    """The first line of the process's `stream` (its stdout or stderr, a text pipe) that
    starts with `prefix`, stripped; fails with what it printed if it ends first."""
    pipe = getattr(process, stream)
    seen: list[str] = []
    while not seen or not seen[-1].startswith(prefix):
        seen.append(pipe.readline())
        assert seen[-1], f"the process ended early: {seen} {process.communicate()}"
    return seen[-1].strip()


async def open_ws(url: str, **options: Any):
    options.setdefault("subprotocols", ["opgraph.v1"])
    options.setdefault("max_size", None)
    return await websockets.connect(url, open_timeout=TIMEOUT, **options)


class Reader:
    """Reads decoded events from a websocket, one at a time, with a timeout."""

    def __init__(self, ws: Any):
        self.ws = ws
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.pending: deque[dict] = deque()
        self.frames = 0

    async def next(self, timeout: float = TIMEOUT) -> dict:
        while not self.pending:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            assert isinstance(frame, bytes), "the server must send binary frames"
            self.frames += 1
            self.unpacker.feed(frame)
            self.pending.extend(self.unpacker)
        return self.pending.popleft()

    async def until(self, predicate, timeout: float = TIMEOUT) -> list[dict]:
        """Events up to and including the first one for which `predicate` is true."""
        got = []
        while True:
            event = await self.next(timeout)
            got.append(event)
            if predicate(event):
                return got

    async def until_seq(self, seq: int, timeout: float = TIMEOUT) -> list[dict]:
        return await self.until(
            lambda e: e.get("seq", -1) >= seq and e["type"] not in ("hello", "snapshot_begin"),
            timeout,
        )


async def connect_reader(url: str, **options: Any) -> Reader:
    return Reader(await open_ws(url, **options))


async def close_code(ws: Any, timeout: float = TIMEOUT) -> int | None:
    """Wait until the server closes `ws`; returns the close code it sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


def graph_of(events: list[dict]) -> dict[int, dict]:
    """Replay events (snapshots included) into {id: node}, as a viewer would."""
    from opgraph.server.client import Graph

    graph = Graph()
    for event in events:
        graph.apply(event)
    assert graph.gaps == [], f"missing seqs: {graph.gaps}"
    return graph.nodes


def engine_graph(values) -> dict[int, dict]:
    """What a viewer should show for `values` and everything they depend on."""
    from opgraph import topological_order

    nodes = {}
    for value in values:
        for node in topological_order(value):
            nodes[node.id] = {
                "op": node.op.name if node.op else None,
                "parents": [p.id for p in node.parents],
                "data": node.data,
                "label": node.label,
            }
            if node.scope:
                nodes[node.id]["scope"] = node.scope
    return nodes


def strip_grads(nodes: dict[int, dict]) -> dict[int, dict]:
    keys = ("op", "parents", "data", "label", "scope")
    return {i: {k: n[k] for k in keys if k in n} for i, n in nodes.items()}
