"""A Python client for the trace stream (`opgraph watch` is built on it).

    async with connect("ws://127.0.0.1:8765/ws") as conn:
        async for event in conn:          # decoded protocol maps, in order
            ...

`events(url)` does the same across reconnections (a restarted script or server), and
`Graph` rebuilds the graph from events, checking that no seq is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgpack
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from opgraph.errors import InvalidEvent

from .events import MAX_INT, check_last_pass, reals, u4s, u8s
from .protocol import SUBPROTOCOL


def stream_url(url: str) -> str:
    """The `/ws` URL for a server address, its viewer page URL, or a `/ws` URL."""
    if "://" not in url:
        url = f"ws://{url}"
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class Connection:
    """One websocket connection to a trace server, yielding decoded events."""

    def __init__(self, ws: Any):
        self.ws = ws

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._events()

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        try:
            async for frame in self.ws:
                if isinstance(frame, str):
                    raise ValueError("the server sent a text frame; opgraph sends binary msgpack")
                unpacker.feed(frame)
                for event in unpacker:
                    yield event
        except ConnectionClosed:
            return

    async def request_snapshot(self) -> None:
        """Ask the server for a fresh snapshot (the `snapshot` control message)."""
        await self.ws.send(msgpack.packb({"type": "snapshot"}))

    async def close(self) -> None:
        await self.ws.close()


async def connect(url: str, *, open_timeout: float = 10, **options: Any) -> Connection:
    """Connect to a trace server (`ws://host:port/ws`, or its viewer page URL)."""
    ws = await websockets.connect(
        stream_url(url),
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        max_size=None,
        open_timeout=open_timeout,
        compression=None,
        **options,
    )
    return Connection(ws)


async def events(
    url: str,
    *,
    reconnect: bool = True,
    retry_delay: float = 0.5,
    max_delay: float = 5.0,
    on_retry: Callable[[Exception], None] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every event from the server at `url`; with `reconnect`, across reconnections.

    After a reconnection the stream starts again with `hello` and a snapshot, so a `Graph`
    fed with these events stays correct. While the server is away it retries with
    exponential backoff, up to `max_delay` seconds between tries, calling `on_retry` with
    the connection error before each wait.
    """
    delay = retry_delay
    while True:
        try:
            conn = await connect(url)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            if not reconnect:
                raise
            if on_retry is not None:
                on_retry(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
            continue
        delay = retry_delay
        async with conn:
            async for event in conn:
                yield event
        if not reconnect:
            return
        await asyncio.sleep(retry_delay)


class Graph:
    """The graph a viewer would show, rebuilt from events; counts what happened.

    `nodes[id]` is a dict with op, parents, data, grad, label (and const, scope if any).
    `gaps` lists (expected, got) pairs where a seq was missing without a `dropped` to
    explain it (should stay empty).
    """

    def __init__(self) -> None:
        self.nodes: dict[int, dict[str, Any]] = {}
        self.hello: dict[str, Any] | None = None
        self.seq: int | None = None  # the last seq seen
        self.events = 0
        self.passes = 0
        self.current_pass: int | None = None
        # The last pass that ended before the latest snapshot ({pass, root, steps}: its
        # steps' node ids in order), from the snapshot's `last_pass`; None if it had none.
        self.last_pass: dict[str, Any] | None = None
        self.rejected: list[str] = []  # why a part of a snapshot was not read
        self.dropped = 0
        self.snapshots = 0
        self.gaps: list[tuple[int, int]] = []
        # Training steps (docs/protocol.md, "Steps"): each structure's arrays, the ids its
        # nodes have now, whether a step of it came; the latest `step` and `history` maps.
        self.structures: dict[int, dict[str, Any]] = {}
        self.step: dict[str, Any] | None = None
        self.history: dict[str, Any] | None = None
        self._after_drop = False
        self._in_snapshot = False

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        self.events += 1
        if kind == "hello":
            if self.hello is not None and event.get("session") != self.hello.get("session"):
                self.nodes.clear()  # a new server session: a new graph
            self.hello, self.seq = event, None
            return
        if kind == "dropped":
            self.dropped += event.get("count", 0)
            self._after_drop = True
            return
        if kind == "snapshot_begin":
            self.nodes.clear()
            self.structures.clear()
            self.step = self.history = None
            self._in_snapshot = True
            self.current_pass = (event.get("backward") or {}).get("pass")  # in progress
            self.last_pass = None
            if "last_pass" in event:
                try:
                    nodes = event.get("nodes")
                    limit = nodes if type(nodes) is int else MAX_INT
                    self.last_pass = check_last_pass(event["last_pass"], limit)
                except InvalidEvent as error:
                    self.rejected.append(str(error))
            return
        if kind == "node":
            self.nodes[event["id"]] = _node(event, event.get("grad", 0.0))
            return
        if kind == "history":
            self.history = event
            return
        if self._in_snapshot and kind in ("structure", "step"):
            self._steps(event, in_snapshot=True)
            return
        if kind == "snapshot_end":
            self.snapshots += 1
            self._in_snapshot = self._after_drop = False
            self.seq = event["seq"]
            return
        seq = event.get("seq")
        if isinstance(seq, int):
            if self.seq is not None and seq != self.seq + 1 and not self._after_drop:
                self.gaps.append((self.seq + 1, seq))
            self.seq = seq
        if kind == "forward":
            self.nodes[event["id"]] = _node(event, 0.0)
        elif kind == "backward":
            node = self.nodes.get(event["id"])
            if node is not None:
                node["grad"] = event["grad"]
        elif kind == "data":
            node = self.nodes.get(event["id"])
            if node is not None:
                node["data"] = event["data"]
        elif kind == "label":
            node = self.nodes.get(event["id"])
            if node is not None:
                node["label"] = event["label"]
        elif kind == "backward_begin":
            self.current_pass = event.get("pass")
            self.passes += 1
        elif kind == "backward_end":
            self.current_pass = None
        elif kind in ("structure", "step"):
            self._steps(event, in_snapshot=False)

    def _steps(self, event: dict[str, Any], in_snapshot: bool) -> None:
        """A `structure` is kept; a `step` puts its numbers on its structure's nodes, renamed
        `first + offsets[i]` (but for the step that defined the structure, whose nodes came
        as events)."""
        if event["type"] == "structure":
            self.structures[event["structure"]] = {
                "ids": list(u8s(event["ids"])),
                "offsets": list(u4s(event["offsets"])),
                "inputs": list(u8s(event["inputs"])),
                "stepped": in_snapshot,  # (a snapshot's: its nodes are its latest step's)
            }
            return
        self.step = event
        structure = self.structures.get(event["structure"])
        if structure is None or in_snapshot:  # a snapshot's nodes have it already
            return
        old = structure["ids"]
        new = (
            old if not structure["stepped"] else [event["first"] + o for o in structure["offsets"]]
        )
        structure["stepped"], structure["ids"] = True, new
        if new is not old:
            self.passes += 1  # the step stands for its pass
        data, grad = (reals(event[key], event.get("dtype")) for key in ("data", "grad"))
        rename = dict(zip(old, new, strict=True))
        taken = [self.nodes.pop(id_, None) for id_ in old]
        for i, node in enumerate(taken):
            if node is not None:
                node["parents"] = [rename.get(p, p) for p in node["parents"]]
                node["data"], node["grad"] = data[i], grad[i]
                self.nodes[new[i]] = node
        for j, id_ in enumerate(structure["inputs"], start=len(old)):
            node = self.nodes.get(id_)
            if node is not None:
                node["data"], node["grad"] = data[j], grad[j]


def _node(event: dict[str, Any], grad: float) -> dict[str, Any]:
    node = {
        "op": event.get("op"),
        "parents": list(event.get("parents", [])),
        "data": event.get("data"),
        "grad": grad,
        "label": event.get("label", ""),
    }
    if event.get("const"):
        node["const"] = list(event["const"])
    if event.get("scope"):
        node["scope"] = event["scope"]
    return node
