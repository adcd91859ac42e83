"""Hub mode: scripts publish their trace to a long-running `opgraph serve`.

A script run with `OPGRAPH_TRACE=ws://127.0.0.1:8765` sends its events to the hub's
`/publish` path (`Publisher`, on a background thread, never blocking the engine); the hub
renumbers each run's ids and seqs into its own stream (`receive_run`), so viewers stay
connected across many short runs and see their nodes side by side.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import secrets
import sys
import threading
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import msgpack
import websockets
from websockets.exceptions import ConnectionClosed

from opgraph.trace import Tracer, event_count, event_maps, records

from .hub import Hub

if TYPE_CHECKING:
    from opgraph.engine import Engine

SUBPROTOCOL = "opgraph.v1"
SEND_INTERVAL = 0.01
BATCH = 20_000


def publish_url(url: str) -> str:
    """The hub's `/publish` URL for a hub address such as `ws://127.0.0.1:8765`."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"a hub URL looks like ws://127.0.0.1:8765, got {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/publish"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class Publisher:
    """Sends one engine's trace to a hub from a background thread.

    If the hub cannot be reached at the start, the publisher says so on stderr and stops
    tracing. If the connection breaks later, it reconnects (events made meanwhile are
    dropped) and continues as a new run. The engine never waits.
    """

    def __init__(self, engine: Engine, url: str, *, connect_timeout: float = 5.0):
        self.engine = engine
        self.url = publish_url(url)
        self.tracer = Tracer(engine)
        self.connect_timeout = connect_timeout
        self.sent = 0
        self.dropped = 0  # events made while the hub was away
        self.connections = 0  # how many times it connected (reconnections included)
        self.error: str | None = None
        self._seq = 0
        self._closing = False
        self._ready = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opgraph-publisher", daemon=True)

    def start(self) -> Publisher:
        if self.engine.tracer is not None:
            raise RuntimeError(f"engine {self.engine.name!r} is already traced")
        self.tracer.attach()
        self._thread.start()
        self._ready.wait(self.connect_timeout + 1)
        if self.error:
            raise ConnectionError(self.error)
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # report, never raise into the program
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            self._ready.set()
            self._done.set()

    def _fail(self, message: str) -> None:
        self.tracer.detach()
        if self.error is None:
            self.error = message
            if self._ready.is_set():  # after start(): nobody else will report it
                print(f"opgraph: publishing to {self.url} stopped: {message}", file=sys.stderr)

    async def _main(self) -> None:
        try:
            ws = await self._connect()
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            self._fail(f"cannot reach the hub at {self.url}: {exc}")
            return
        self.connections += 1
        self._ready.set()
        while ws is not None:
            try:
                async with ws:
                    finished = await self._pump(ws)
                problem = "it closed the connection"
            except ConnectionClosed as exc:
                finished, problem = False, str(exc)
            if finished or self._closing:
                return
            print(f"opgraph: lost the hub at {self.url} ({problem}); reconnecting", file=sys.stderr)
            ws = await self._reconnect()

    async def _connect(self) -> Any:
        """Open a connection to the hub and send this run's hello."""
        ws = await asyncio.wait_for(
            websockets.connect(
                self.url, subprotocols=[SUBPROTOCOL], max_size=None, compression=None
            ),
            self.connect_timeout,
        )
        hello = {
            "type": "hello",
            "seq": 0,
            "protocol": "opgraph",
            "version": 1,
            "session": secrets.token_hex(8),
            "pid": os.getpid(),
            "t": (perf_counter_ns() - self.tracer.t0) // 1000,
            **self.tracer.hello(),
        }
        await ws.send(msgpack.packb(hello))
        return ws

    async def _reconnect(self) -> Any:
        """Try again until the hub is back (or the program ends); None if it ends first.

        Events made meanwhile are dropped. The hub sees the new connection as a new run that
        knows no node, so the tracer forgets what it announced: nodes are announced again,
        with their ancestors, when the program next uses them.
        """
        delay = 0.2
        while not self._closing:
            self.dropped += sum(map(event_count, records(self.tracer.drain())))
            try:
                ws = await self._connect()
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.tracer.forget_all()
            self.dropped += sum(map(event_count, records(self.tracer.drain())))
            self.connections += 1
            print(f"opgraph: publishing to {self.url} again", file=sys.stderr)
            return ws
        return None

    async def _pump(self, ws: Any) -> bool:
        """Send events until the program ends (True) or the hub goes away (False)."""
        pack, t0 = msgpack.Packer().pack, self.tracer.t0
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while True:
                closing = self._closing  # read before draining: a final drain follows it
                events = self.tracer.drain(BATCH)
                if events:
                    maps = event_maps(records(events), self._seq + 1, t0)
                    self._seq += len(maps)
                    await ws.send(b"".join([pack(event) for event in maps]))
                    self.sent += len(maps)
                elif closing:
                    return True
                else:  # idle: notice a hub that went away even with nothing to send
                    done, _ = await asyncio.wait([closed], timeout=SEND_INTERVAL)
                    if done:
                        return False
        finally:
            closed.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Stop tracing, send what is buffered, and close the connection."""
        self.tracer.detach()
        self._closing = True
        self._done.wait(timeout)


def publish(engine: Engine, url: str, *, at_exit: bool = False) -> Publisher:
    """Publish `engine`'s trace to the hub at `url` (`OPGRAPH_TRACE=ws://...`)."""
    publisher = Publisher(engine, url).start()
    print(
        f"opgraph: publishing the trace of engine {engine.name!r} to {publisher.url}",
        file=sys.stderr,
    )
    if at_exit:
        atexit.register(publisher.close)
    return publisher


# --- the hub's side -------------------------------------------------------------------------

_runs = itertools.count(1)


async def receive_run(hub: Hub, ws: Any) -> None:
    """Receive one publishing script's events and feed them, renumbered, to `hub`."""
    ids: dict[int, int] = {}  # the run's id -> the hub's id

    def hub_id(run_id: int) -> int:
        mapped = ids.get(run_id)
        if mapped is None:
            mapped = ids[run_id] = hub.next_id
            hub.next_id += 1
        return mapped

    source = None
    offset = 0  # the run's t + offset = the hub's t
    try:
        async for message in ws:
            if isinstance(message, str):
                await ws.close(1003, "publish binary msgpack frames")
                return
            events = _unpack_all(message)
            if events is None:
                await ws.close(1007, "a publish frame must hold msgpack maps with a 'type'")
                return
            if source is None:
                first = events.pop(0) if events else {}
                if first.get("type") != "hello" or first.get("protocol") != "opgraph":
                    await ws.close(1008, "a publisher must send an opgraph hello first")
                    return
                source = _start_run(hub, first)
                run_t = first.get("t")
                offset = hub.now_us() - (run_t if isinstance(run_t, int) else 0)
            try:
                out = [_renumber(event, hub_id, offset) for event in events]
            except (TypeError, ValueError) as exc:
                await ws.close(1007, f"malformed event: {exc}"[:120])
                return
            hub.publish([event for event in out if event is not None])
    finally:
        if source is not None:
            hub.publish([{"type": "run", "state": "end", "source": source, "t": hub.now_us()}])


def _unpack_all(message: bytes) -> list[dict] | None:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    try:
        unpacker.feed(message)
        events = list(unpacker)
    except Exception:
        return None
    if not all(isinstance(e, dict) and isinstance(e.get("type"), str) for e in events):
        return None
    return events


def _start_run(hub: Hub, hello: dict) -> str:
    hub.runs += 1
    engine = str(hello.get("engine", "?"))
    source = f"{engine}@{hello['pid']}" if "pid" in hello else f"run-{next(_runs)}"
    ops = hello.get("ops") if isinstance(hello.get("ops"), dict) else {}
    hub.ops.update(ops)
    start = {"type": "run", "state": "start", "source": source, "engine": engine, "ops": ops}
    hub.publish([{**start, "t": hub.now_us()}])
    return source


def _renumber(event: dict, hub_id, offset: int) -> dict | None:
    """The event with the run's ids and times made the hub's (None to skip it)."""
    kind = event["type"]
    if kind in ("hello", "dropped") or kind.startswith("snapshot") or kind == "node":
        return None
    event.pop("seq", None)
    if isinstance(event.get("t"), int):
        event["t"] += offset
    for key in ("id", "root"):
        if key in event and type(event[key]) is not int:
            raise TypeError(f"{kind} {key} must be an integer")
    if "id" in event:
        event["id"] = hub_id(event["id"])
    if "root" in event:
        event["root"] = hub_id(event["root"])
    if kind == "forward":
        event["parents"] = [hub_id(p) for p in event.get("parents", ())]
    return event
