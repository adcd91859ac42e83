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

from .events import MAX_INT, InvalidEvent, check_event, check_hello, close_reason
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


class _Run:
    """One publishing script as the hub sees it: its name, clock offset, id map, open pass."""

    def __init__(self, hub: Hub, hello: dict):
        self.hub = hub
        self.source = _start_run(hub, hello)
        self.offset = hub.now_us() - hello.get("t", 0)  # the run's t + offset = the hub's t
        self.ids: dict[int, int] = {}  # the run's id -> the hub's id
        self.open_pass: tuple[int, int] | None = None  # (hub root, pass) begun, not ended
        hub.publishers.add(self)

    def hub_id(self, run_id: int) -> int:
        mapped = self.ids.get(run_id)
        if mapped is None:
            mapped = self.ids[run_id] = self.hub.next_id
            self.hub.next_id += 1
        return mapped

    def publish(self, events: list[dict]) -> None:
        """Renumber and publish a frame of checked events."""
        out = [_renumber(event, self) for event in events]
        for event in out:
            if event["type"] == "backward_begin":
                self.open_pass = (event["root"], event["pass"])
            elif event["type"] == "backward_end" and self.open_pass == (
                event["root"],
                event["pass"],
            ):
                self.open_pass = None  # (the hub too ends only the pass that matches)
        self.hub.publish(out)
        if len(self.ids) > _trim_threshold(self.hub):
            self.trim()

    def trim(self) -> None:
        """Forget the ids of nodes the hub has forgotten (its `max_nodes`), so that the map
        stays bounded over a long run; such an id used again gets a new hub id, which
        viewers treat as a node they never saw."""
        nodes = self.hub.nodes
        self.ids = {run: hub for run, hub in self.ids.items() if hub in nodes}

    def end(self) -> None:
        """The script is gone: end its open pass (viewers would wait for it forever), then
        say the run ended."""
        self.hub.publishers.discard(self)
        now = self.hub.now_us()
        ending = []
        if self.open_pass is not None:
            root, pass_ = self.open_pass
            ending.append({"type": "backward_end", "root": root, "pass": pass_, "t": now})
        ending.append({"type": "run", "state": "end", "source": self.source, "t": now})
        self.hub.publish(ending)


def _trim_threshold(hub: Hub) -> int:
    # After a trim the map holds at most max_nodes ids (those of the hub's nodes); trimming
    # walks the whole map, so the next one waits for max_nodes / 4 new ids (1000 at least):
    # its cost per event stays small and the map below max_nodes * 1.25 (+ one frame).
    return hub.max_nodes + max(hub.max_nodes // 4, 1000)


async def receive_run(hub: Hub, ws: Any) -> None:
    """Receive one publishing script's events and feed them, renumbered, to `hub`.

    Each frame is checked whole (events.py) before anything of it is applied: a frame with
    one bad map changes nothing and closes the connection with 1007, naming the map.
    """
    run = None
    try:
        async for message in ws:
            if isinstance(message, str):
                await ws.close(1003, "publish binary msgpack frames")
                return
            events = _unpack_all(message)
            if events is None:
                await ws.close(1007, "a publish frame must hold msgpack maps back to back")
                return
            try:
                hello = None
                if run is None:
                    first = events[0] if events else {}
                    if not isinstance(first, dict) or first.get("type") != "hello":
                        await ws.close(1008, "a publisher must send an opgraph hello first")
                        return
                    hello = check_hello(first)
                checked = [
                    check_event(event, index)
                    for index, event in enumerate(events)
                    if index or hello is None
                ]
            except InvalidEvent as exc:
                await ws.close(1007, close_reason(exc))
                return
            if run is None:
                run = _Run(hub, hello)
            run.publish(checked)
    finally:
        if run is not None:
            run.end()


def _unpack_all(message: bytes) -> list | None:
    """The maps of a frame, or None if it is not msgpack objects back to back."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    try:
        unpacker.feed(message)
        return list(unpacker)
    except Exception:
        return None


def _start_run(hub: Hub, hello: dict) -> str:
    hub.runs += 1
    engine = hello.get("engine", "?")
    source = f"{engine}@{hello['pid']}" if "pid" in hello else f"run-{next(_runs)}"
    ops = hello.get("ops", {})
    hub.add_ops(ops)
    start = {"type": "run", "state": "start", "source": source, "engine": engine, "ops": ops}
    hub.publish([{**start, "t": hub.now_us()}])
    return source


def _renumber(event: dict, run: _Run) -> dict:
    """The checked event with the run's ids and times made the hub's."""
    event.pop("seq", None)
    if "t" in event:
        event["t"] = min(max(event["t"] + run.offset, 0), MAX_INT)
    if event["type"] == "forward":  # parents first: an unknown parent gets a smaller id
        event["parents"] = [run.hub_id(p) for p in event["parents"]]
    for key in ("id", "root"):
        if key in event:
            event[key] = run.hub_id(event[key])
    return event
