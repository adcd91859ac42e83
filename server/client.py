"""A Python client for the trace stream, and `opgraph watch URL`.

    async with connect("ws://127.0.0.1:8765/ws") as conn:
        async for event in conn:          # decoded protocol maps, in order
            ...

`events(url)` does the same across reconnections (a restarted script or server), and
`Graph` rebuilds the graph from events, checking that no seq is missing.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgpack
import websockets
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "opgraph.v1"


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
        subprotocols=[SUBPROTOCOL],
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

    `nodes[id]` is a dict with op, parents, data, grad, label. `gaps` lists (expected, got)
    pairs where a seq was missing without a `dropped` to explain it (should stay empty).
    """

    def __init__(self) -> None:
        self.nodes: dict[int, dict[str, Any]] = {}
        self.hello: dict[str, Any] | None = None
        self.seq: int | None = None  # the last seq seen
        self.events = 0
        self.passes = 0
        self.current_pass: int | None = None
        self.dropped = 0
        self.snapshots = 0
        self.gaps: list[tuple[int, int]] = []
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
            self._in_snapshot = True
            self.current_pass = (event.get("backward") or {}).get("pass")  # in progress
            return
        if kind == "node":
            self.nodes[event["id"]] = _node(event, event.get("grad", 0.0))
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
    return node


# --- `opgraph watch URL` --------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument(
        "url",
        nargs="?",
        default="ws://127.0.0.1:8765/ws",
        help="the server (viewer page URL or ws://.../ws)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between summary lines")
    parser.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: never)"
    )
    parser.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit when the connection ends or cannot be made (default: keep retrying)",
    )


RETRY_MAX_DELAY = 5.0  # seconds between two tries to connect, at most


def connection_problem(exc: BaseException) -> str:
    """Why a connection failed, in a few words: "connection refused"."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return " ".join(str(exc).split()) or type(exc).__name__


async def watch(
    url: str,
    interval: float,
    duration: float | None,
    reconnect: bool,
    out=sys.stdout,
    err=sys.stderr,
) -> Graph:
    """Print a summary line every `interval` seconds: events/s, nodes, pass, drops.

    While nothing serves at `url` it says so, once per outage on `err` and on every
    summary line, and keeps retrying (with `reconnect`).
    """
    graph = Graph()
    start = last = time.monotonic()
    counted = 0
    problem: list[str] = []  # why the last try to connect failed; empty while connected

    def retrying(exc: Exception) -> None:
        if not problem:
            print(
                f"opgraph watch: nothing is serving at {url}: {connection_problem(exc)}; "
                f"retrying every {RETRY_MAX_DELAY:g}s at most (Ctrl-C to stop)",
                file=err,
                flush=True,
            )
        problem[:] = [connection_problem(exc)]

    def line(now: float) -> str:
        rate = (graph.events - counted) / max(now - last, 1e-9)
        session = graph.hello.get("session", "?") if graph.hello else "-"
        current = f"pass {graph.current_pass}" if graph.current_pass else "no pass"
        away = f"  not connected: {problem[0]}, retrying" if problem else ""
        return (
            f"{rate:10.0f} events/s  {len(graph.nodes):8d} nodes  "
            f"seq {'-' if graph.seq is None else graph.seq}  "
            f"{current}  {graph.passes} passes  dropped {graph.dropped}  session {session}"
            f"{away}"
        )

    async def consume() -> None:
        stream = events(url, reconnect=reconnect, max_delay=RETRY_MAX_DELAY, on_retry=retrying)
        async for event in stream:
            problem.clear()
            graph.apply(event)

    task = asyncio.ensure_future(consume())
    try:
        while not task.done():
            await asyncio.wait([task], timeout=interval)
            if task.done() and task.exception() is not None:
                break  # could not connect (without reconnect): raised below
            now = time.monotonic()
            print(line(now), file=out, flush=True)
            last, counted = now, graph.events
            if duration is not None and now - start >= duration:
                break
    finally:
        task.cancel()
        try:
            await task  # re-raises a connection error, so that `opgraph watch` reports it
        except asyncio.CancelledError:
            pass
    return graph


def run(args) -> int:
    from opgraph.trace import redact  # (the URL's token stays out of logs)

    url = stream_url(args.url)
    print(f"watching {redact(url)}", flush=True)
    try:
        asyncio.run(watch(url, args.interval, args.duration, not args.no_reconnect))
    except (OSError, websockets.InvalidHandshake) as exc:
        print(
            redact(f"opgraph watch: cannot connect to {url}: {connection_problem(exc)}"),
            file=sys.stderr,
        )
        return 1
    return 0
