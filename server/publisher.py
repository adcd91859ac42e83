"""Hub mode, the script's side: a script publishes its trace to a long-running `opgraph serve`.

A script run with `OPGRAPH_TRACE=ws://127.0.0.1:8765` sends its events to the hub's
`/publish` path (`Publisher`, on a background thread, never blocking the engine); the hub
takes them in (intake.py) and renumbers each run's ids and seqs into its own stream, so
viewers stay connected across many short runs and see their nodes side by side.

A publisher never stops silently and never holds the program up: it connects in the
background, notices a hub that stops answering within a few seconds (deadlines below),
keeps at most `max_pending` events waiting, and at exit waits for the hub while it shows
signs of life (at most EXIT_TIMEOUT without one, EXIT_CAP in all). Every message it prints
names the hub (with its token redacted) and why.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import sys
import threading
from collections import deque
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import msgpack
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from opgraph.errors import PublishError
from opgraph.trace import Tracer, event_count, event_maps, plain_number, records, redact

from .events import MAX_LABEL
from .protocol import CLOSE_POLICY, SUBPROTOCOL, hello

if TYPE_CHECKING:
    from opgraph.contracts import TraceBuffer, TracedEngine

SEND_INTERVAL = 0.01  # seconds between looks at an empty buffer
BATCH = 2_000  # events per frame (at most; about 130 KB)
WINDOW = 512 << 10  # bytes sent and not yet acknowledged by the hub, at most (one frame more)
# Deadlines (seconds). A hub that answers none of them is frozen, cut off, or not a hub.
CONNECT_TIMEOUT = 10.0  # TCP connection and websocket handshake (slow on a loaded machine)
SEND_TIMEOUT = 4.0  # for the hub to take a frame (its buffers full: it stopped reading)
PING_INTERVAL = 1.0  # a ping this often, even when idle...
PING_TIMEOUT = 4.0  # ...that the hub must answer within this
CLOSE_TIMEOUT = 0.5  # for the hub to answer a close
# At exit the program waits until the hub has acknowledged every event sent, as long as
# the hub shows it is alive (it acknowledges a frame, answers a ping: one every EXIT_PING s):
# it gives up after EXIT_TIMEOUT s without a sign (in ticks of EXIT_TICK s of its own wait),
# or EXIT_CAP s in all. A live hub on an overloaded machine goes unscheduled for seconds
# (measured: 2.5-5.6 s with 100 scripts on 2 cores), so the stall allowed is long; the
# keepalive's PING_TIMEOUT no longer applies then (the exit's own pings judge the hub). The
# cap is long too: with 100 scripts of 5,000 nodes ending at once on 2 cores, a live hub took
# up to 30 s to check the last frames of all (each in its turn; benchmarks/hub_load.py).
EXIT_TIMEOUT = 10.0
EXIT_PING = 0.2
EXIT_CAP = 120.0
EXIT_TICK = 0.02
RETRY_MAX = 2.0  # the longest pause between attempts to reconnect
MAX_PENDING = 200_000  # events waiting to be sent; past it they are dropped and counted


def publish_url(url: str) -> str:
    """The hub's `/publish` URL for a hub address such as `ws://127.0.0.1:8765`."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"a hub URL looks like ws://127.0.0.1:8765, got {redact(repr(url))}")
    path = parts.path if parts.path not in ("", "/") else "/publish"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class Publisher:
    """Sends one engine's trace to a hub from a background thread.

    `start()` returns at once; the connection is made in the background and events made
    meanwhile wait in the tracer's buffer (at most `max_pending`; beyond, they are dropped
    and counted). If the first connection fails, the publisher says why on stderr and tracing
    is off. If the hub goes away or stops answering later, it says why, pauses tracing (events
    are dropped) and reconnects in the background; it then continues as a new run, whose
    nodes are announced again when the program uses them. The engine never waits.
    """

    def __init__(
        self,
        engine: TracedEngine,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_pending: int = MAX_PENDING,
        dtype: str = "f8",
    ):
        self.engine = engine
        self.url = publish_url(url)
        self.shown_url = redact(self.url)  # the URL as messages print it
        self.tracer: TraceBuffer = Tracer(engine, max_buffer=max_pending, dtype=dtype)
        self.connect_timeout = connect_timeout
        self.sent = 0  # events handed to a connection
        self.delivered = 0  # events the hub acknowledged (received: it applies them)
        self.dropped = 0  # events made that never reached the hub (away, too slow, an error)
        self.connections = 0  # how many times it connected (reconnections included)
        self.failures = 0  # batches lost to an error while packing (reported once)
        self.error: str | None = None  # why publishing stopped for good
        self.waiting_on = "connecting to the hub"  # what it waits for now (for messages)
        self._seq = 0
        self._in_flight: deque[tuple[int, int]] = deque()  # (bytes, events) of each frame sent
        self._acked = 0  # frames of this connection the hub acknowledged
        self._ack_wake: asyncio.Event | None = None
        self._sign = perf_counter_ns()  # the last sign of life from the hub (or of progress)
        self._connecting_until = 0  # while connecting: when the attempt's deadline passes
        self._closing = False
        self._quiet = False  # close() gave up waiting: the thread says nothing more
        self._said_slow = False  # the first overflow of the buffer is reported
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opgraph-publisher", daemon=True)

    # --- the program's side ---------------------------------------------------------------

    def start(self) -> Publisher:
        """Start tracing and connecting (in the background); returns at once."""
        if self.engine.tracer is not None:
            raise RuntimeError(f"engine {self.engine.name!r} is already traced")
        self.tracer.attach()
        self._connecting_until = perf_counter_ns() + int(self.connect_timeout * 1e9)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the publisher is connected (True), gave up, or `timeout` passed."""
        end = perf_counter_ns() + int(timeout * 1e9)
        while not self._connected.wait(0.01):
            if self._done.is_set() or perf_counter_ns() > end:
                return False
        return True

    def close(self, timeout: float = EXIT_TIMEOUT, cap: float = EXIT_CAP) -> None:
        """Stop tracing, send what is buffered, wait for the hub to acknowledge it, and close
        the connection. Waits while the hub shows signs of life: at most `timeout` seconds
        without one, `cap` seconds in all; then says exactly what did not reach it."""
        self.tracer.detach()
        start = perf_counter_ns()
        self._closing = True
        self._poke()
        # The time without a sign of life is counted in this loop's own ticks, not on the
        # clock: on a machine too loaded to run this process on time, the hub is not run on
        # time either, and a live hub is not taken for a dead one.
        sign, quiet = self._sign, 0.0
        while not self._done.wait(EXIT_TICK):
            now = perf_counter_ns()
            if self._sign != sign or now < self._connecting_until:
                sign, quiet = self._sign, 0.0
            else:
                quiet += EXIT_TICK
            if quiet > timeout or now - start > cap * 1e9:
                self._quiet = True
                self._say(self._exit_report((now - start) / 1e9))
                return
        if self.dropped:  # (also after an error: the count is said at exit)
            away = "" if self._connected.is_set() else f" (at exit: {self.waiting_on})"
            self._say(f"{self.delivered} events sent, {self.dropped} dropped{away}")

    def _exit_report(self, waited: float) -> str:
        """What did not reach the hub when the exit stops waiting, counted exactly."""
        unsent = self.tracer.pending() + self.tracer.lost
        unacked = self.sent - self.delivered
        lost = unacked + unsent + self.dropped
        parts = [f"{unacked} sent and not acknowledged", f"{unsent} not sent"]
        if self.dropped:
            parts.append(f"{self.dropped} dropped before")
        return (
            f"gave up waiting at exit after {waited:.2f} s, while {self.waiting_on}: "
            f"{self.delivered} events reached the hub, {lost} did not ({', '.join(parts)})"
        )

    def _poke(self) -> None:
        """Wake the publisher's loop (to see `_closing` at once)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop already ended
                pass

    def _say(self, message: str) -> None:
        print(redact(f"opgraph: hub {self.shown_url}: {message}"), file=sys.stderr, flush=True)

    # --- the background thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # report, never raise into the program
            self._stop(f"publishing stopped ({describe(exc)})")
        finally:
            self._done.set()

    def _stop(self, message: str) -> None:
        """Stop for good: tracing off, and say why (once)."""
        self.tracer.detach()
        self.dropped += sum(map(event_count, records(self.tracer.drain())))
        if self.error is None:
            self.error = message
            if not self._quiet:
                self._say(f"{message}; tracing is off")

    async def _main(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        self._ack_wake = asyncio.Event()
        self.waiting_on = "connecting to the hub (no answer yet)"
        try:
            ws = await self._connect()
        except PublishError as exc:
            self._stop(f"cannot publish: {exc}")
            return
        self._publishing()
        while ws is not None:
            problem = await self._publish_on(ws)
            if problem is None:
                return
            if f"code {CLOSE_POLICY} " in problem:  # refused: sending again would be too
                self._stop(f"the hub refused this run: {problem}")
                return
            self._pause()
            self.waiting_on = f"reconnecting (the hub was lost: {problem})"
            if self._closing:  # close() counts what was lost and says why
                return
            if not self._quiet:
                self._say(f"lost the hub: {problem}; tracing paused, reconnecting")
            ws = await self._reconnect()

    async def _connect(self) -> Any:
        """Open a connection to the hub and send this run's hello (PublishError if not).
        Meanwhile the program's exit waits for it (up to `connect_timeout`)."""
        self._connecting_until = perf_counter_ns() + int(self.connect_timeout * 1e9)
        try:
            return await self._open()
        finally:
            self._connecting_until = 0

    async def _open(self) -> Any:
        try:
            ws = await websockets.connect(
                self.url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                max_size=None,
                compression=None,
                open_timeout=self.connect_timeout,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
            )
        except TimeoutError as exc:
            raise PublishError(
                f"no answer within {self.connect_timeout:g} s (connecting or the websocket "
                f"handshake hangs: is it frozen, or not an opgraph hub?)"
            ) from exc
        except InvalidStatus as exc:
            raise PublishError(f"the hub refused the connection: {refusal(exc)}") from exc
        except (OSError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise PublishError(describe(exc)) from exc
        first = hello(
            0,
            session=secrets.token_hex(8),
            pid=os.getpid(),
            t=(perf_counter_ns() - self.tracer.t0) // 1000,
            acks=True,  # the hub tells how many frames it received
            **self.tracer.hello(),
        )
        try:
            # (msgpack is untyped: pyright reads packb's result off its pure-Python fallback,
            # whose pack() returns None when autoreset=False; packb's is always bytes)
            await self._send(ws, msgpack.packb(first))  # pyright: ignore[reportArgumentType]
        except (ConnectionClosed, PublishError) as exc:
            ws.transport.abort()
            raise PublishError(closed_reason(exc)) from exc
        self._in_flight.clear()
        self._acked = 0
        self._sign = perf_counter_ns()
        return ws

    def _publishing(self) -> None:
        """Counted as connected once the tracer records again: a program that waits for
        `connections` (or `wait_connected`) and then makes a node has it traced."""
        self.connections += 1
        self._connected.set()

    async def _publish_on(self, ws: Any) -> str | None:
        """Send events until the program ends (None) or the connection fails (why)."""
        reader = asyncio.ensure_future(self._read_acks(ws))
        try:
            await self._pump(ws)
            self.waiting_on = "waiting for the hub to acknowledge the last events"
            await self._all_acked(ws)
            self.waiting_on = "closing the connection"
            try:  # (bounded by CLOSE_TIMEOUT, but a full write buffer could hold it up)
                await asyncio.wait_for(ws.close(), 2 * CLOSE_TIMEOUT)
            except TimeoutError:
                ws.transport.abort()
            return None
        except PublishError as exc:
            ws.transport.abort()
            return str(exc)
        except ConnectionClosed as exc:
            return closed_reason(exc)
        finally:
            reader.cancel()
            # frames the hub did not acknowledge: lost with the connection (or unknown)
            self.dropped += sum(events for _, events in self._in_flight)
            self.sent -= sum(events for _, events in self._in_flight)
            self._in_flight.clear()

    async def _read_acks(self, ws: Any) -> None:
        """Count the hub's acks (`{type: "ack", frames: n}`) as they come."""
        wake = self._ack_wake
        assert wake is not None  # (made by _main before it connects)
        async for message in ws:
            try:
                ack = msgpack.unpackb(message)
                frames = ack["frames"] if ack.get("type") == "ack" else None
            except Exception:
                continue
            if type(frames) is not int:
                continue
            while self._acked < frames and self._in_flight:
                self._acked += 1
                if self._acked > 1:  # (the hello frame is not in _in_flight)
                    self.delivered += self._in_flight.popleft()[1]
            self._acked = max(self._acked, frames)
            self._sign = perf_counter_ns()
            wake.set()

    def _unacked_bytes(self) -> int:
        return sum(size for size, _ in self._in_flight)

    async def _wait_acks(self, ws: Any, until: Any) -> None:
        """Wait until `until()` holds, pinging now and then while the program exits (each
        pong is a sign of life that keeps close() waiting)."""
        wake = self._ack_wake
        assert wake is not None  # (made by _main before it connects)
        if self._closing:
            _stop_keepalive(ws)
        while not until():
            wake.clear()
            waiter = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait([waiter], timeout=EXIT_PING if self._closing else 1.0)
            finally:
                waiter.cancel()
            if self._closing and not until():
                _stop_keepalive(ws)  # (closing began while it waited)
                pong = await ws.ping()
                pong.add_done_callback(self._pong)
            if ws.close_code is not None:
                await ws.send(b"")  # raises ConnectionClosed, with the reason

    def _pong(self, pong: asyncio.Future) -> None:
        if not pong.cancelled() and pong.exception() is None:
            self._sign = perf_counter_ns()

    async def _all_acked(self, ws: Any) -> None:
        await self._wait_acks(ws, lambda: not self._in_flight)

    async def _send(self, ws: Any, frame: bytes) -> None:
        """Send one frame, or raise PublishError if the hub does not take it in time."""
        try:
            await asyncio.wait_for(ws.send(frame), SEND_TIMEOUT)
        except TimeoutError:
            raise PublishError(
                f"it took no data for {SEND_TIMEOUT:g} s (frozen, or too slow?)"
            ) from None

    async def _pump(self, ws: Any) -> None:
        """Send events until the program ends; raises when the connection fails."""
        pack, t0 = msgpack.Packer(default=plain_number).pack, self.tracer.t0
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while True:
                closing = self._closing  # read before draining: a final drain follows it
                self.waiting_on = "sending events"
                if self._in_flight and self._unacked_bytes() > WINDOW:
                    self.waiting_on = "waiting for the hub to take more events"
                    await self._wait_acks(ws, lambda: self._unacked_bytes() <= WINDOW)
                    continue
                frame, count = self._next_frame(pack, t0)
                if frame:
                    self._in_flight.append((len(frame), count))
                    await self._send(ws, frame)
                    self._sign = perf_counter_ns()
                elif closing:
                    return
                else:  # idle: notice a hub that went away even with nothing to send
                    self.waiting_on = "waiting for events"
                    await asyncio.wait([closed], timeout=SEND_INTERVAL)
                    if closed.done():
                        await ws.send(b"")  # raises ConnectionClosed, with the reason
        finally:
            closed.cancel()

    def _next_frame(self, pack: Any, t0: int) -> tuple[bytes, int]:
        """The next frame to send: the buffered events (at most BATCH), packed; and how
        many events it holds."""
        parts = []
        lost = self.tracer.take_lost()
        if lost:  # the buffer was full: tell the hub, and announce nodes again when used
            if not self._said_slow:
                self._said_slow = True
                self._say(
                    f"the program makes events faster than they reach the hub: more than "
                    f"{self.tracer.max_buffer} waiting, {lost} dropped so far (the total "
                    f"follows at exit); nodes are announced again when used"
                )
            self.tracer.forget_all()
            self.dropped += lost
            parts.append(pack({"type": "dropped", "count": lost}))
        events = self.tracer.drain(BATCH)
        if not events:
            return b"".join(parts), 0
        try:
            maps = event_maps(records(events), self._seq + 1, t0)
            parts += [pack(_within_limits(event)) for event in maps]
        except Exception as exc:  # never stop publishing: drop this batch, start over
            parts.append(pack({"type": "dropped", "count": self._failed(exc, events)}))
            return b"".join(parts), 0
        self._seq += len(maps)
        self.sent += len(maps)
        return b"".join(parts), len(maps)

    def _failed(self, exc: Exception, events: list) -> int:
        """Count a batch lost to an error (said once); returns how many events it held."""
        count = sum(map(event_count, records(events)))
        self.dropped += count
        self.failures += 1
        self.tracer.forget_all()
        if self.failures == 1:
            self._say(
                f"packing events failed ({describe(exc)}); {count} events dropped, nodes "
                f"are announced again when used (later failures are only counted)"
            )
        return count

    def _pause(self) -> None:
        """The hub is away: trace nothing until it is back (what was buffered is dropped)."""
        self._connected.clear()
        self.tracer.detach()
        self.dropped += self.tracer.take_lost()
        self.dropped += sum(map(event_count, records(self.tracer.drain())))

    async def _reconnect(self) -> Any:
        """Try again until the hub is back (or the program ends); None if it ends first.

        The hub sees the new connection as a new run that knows no node, so the tracer
        forgets what it announced: nodes are announced again, with their ancestors, when the
        program next uses them.
        """
        delay = 0.2
        while not self._closing:
            try:
                ws = await self._connect()
            except PublishError:
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._closing:
                await ws.close()
                return None
            self.tracer.forget_all()
            self.dropped += sum(map(event_count, records(self.tracer.drain())))
            self.tracer.attach()
            if self._closing:  # closed meanwhile: stay detached
                self.tracer.detach()
            self._publishing()
            self._say("publishing again")
            return ws
        return None

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up when the program closes the publisher."""
        assert self._wake is not None  # (made by _main, which runs the rest)
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass


def _stop_keepalive(ws: Any) -> None:
    """End the connection's keepalive (its PING_TIMEOUT): while the program exits, the exit's
    own pings and EXIT_TIMEOUT decide whether the hub is alive, and a hub that answers late
    on a loaded machine is not cut off with the last events in flight."""
    task = getattr(ws, "keepalive_task", None)  # (websockets' asyncio Connection)
    if task is not None:
        task.cancel()


def describe(exc: BaseException) -> str:
    """A one-line reason from an exception, never empty."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def refusal(exc: InvalidStatus) -> str:
    """What the hub said when it refused the upgrade: `HTTP 403: the reason`."""
    response = exc.response
    body = response.body.decode("utf-8", "replace").strip().splitlines() if response.body else []
    reason = f": {body[0][:200]}" if body else ""
    return f"HTTP {response.status_code}{reason}"


def closed_reason(exc: BaseException) -> str:
    """Why a connection ended, in words."""
    if isinstance(exc, PublishError):
        return str(exc)
    if isinstance(exc, ConnectionClosed):
        sent, rcvd = exc.sent, exc.rcvd
        if sent is not None and sent.reason == "keepalive ping timeout":
            return f"no answer to a ping within {PING_TIMEOUT:g} s (frozen, or cut off?)"
        if rcvd is not None:
            why = f" ({rcvd.reason})" if rcvd.reason else ""
            return f"the hub closed the connection with code {rcvd.code}{why}"
        cause = exc.__cause__
        if cause is not None:
            return f"the connection broke ({describe(cause)})"
        return "the connection broke without a close frame"
    return describe(exc)


def _within_limits(event: dict) -> dict:
    """The event as the hub accepts it: a label longer than the hub's limit is cut (with an
    ellipsis), or the hub would refuse the whole frame, and the script would reconnect and
    send it again, forever."""
    label = event.get("label")
    if label is not None and len(label) > MAX_LABEL:
        event["label"] = label[: MAX_LABEL - 1] + "\u2026"
    return event


def publish(
    engine: TracedEngine, url: str, *, at_exit: bool = False, dtype: str = "f8"
) -> Publisher:
    """Publish `engine`'s trace to the hub at `url` (`OPGRAPH_TRACE=ws://...`); `dtype="f4"`
    sends a training step's numbers as float32 (`OPGRAPH_TRACE_DTYPE=f4`).

    Returns at once; connecting happens in the background (see `Publisher`)."""
    publisher = Publisher(engine, url, dtype=dtype).start()
    print(
        f"opgraph: publishing the trace of engine {engine.name!r} to {publisher.shown_url}",
        file=sys.stderr,
    )
    if at_exit:
        atexit.register(publisher.close)
    return publisher
