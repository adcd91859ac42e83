"""Viewers: each connected viewer's bounded queue of frames, and the task that sends them.

The hub (hub.py) offers every frame of events to each viewer; a viewer whose queue overflows
is resynced: `dropped`, then a snapshot the hub takes (shared by the viewers that need one at
the same seq). A viewer still joining (taking its first snapshot) whose queue overflows gets
a newer snapshot instead, without `dropped`: it saw none of those events, and the snapshot
stands for them. Every send has a deadline: a viewer that stops reading is closed, so that
nothing stays held for it. A viewer's control messages (`snapshot`) are read here too.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgpack
from websockets.exceptions import ConnectionClosed

from .protocol import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID,
    CLOSE_TEXT_FRAME,
    CLOSE_TOO_SLOW,
    CONTROL_MAX_SIZE,
)

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from .hub import Hub, Snapshot

# Resyncing a viewer that cannot keep up (see Viewer): after a snapshot, the next resync
# waits at least RESYNC_INTERVAL seconds (or twice what sending that snapshot took, if more),
# then happens when the next backward pass begins, or RESYNC_PASS_WAIT seconds later at
# the latest. (Defaults; `serve(resync_interval=..., resync_pass_wait=...)` sets them.)
# A viewer's queue is bounded in bytes too (`queue_bytes`): a training step's map stands for
# a whole step (about 16 bytes a node), so queue_limit events could be gigabytes.
QUEUE_BYTES = 64 << 20
RESYNC_INTERVAL = 0.5
RESYNC_PASS_WAIT = 1.0
# A viewer that takes more than SEND_TIMEOUT seconds to accept one frame (its TCP window
# stays shut) is closed with CLOSE_TOO_SLOW: otherwise what is being sent to it (a snapshot
# of a large graph: tens of MB) stays in memory for as long as it does not read. The
# snapshots a viewer asks for are sent at most every SNAPSHOT_INTERVAL seconds (or four times
# as long as sending the last one took, if longer: then the viewer spends at most a fifth of
# its time on them); requests meanwhile make one snapshot.
SEND_TIMEOUT = 10.0
SNAPSHOT_INTERVAL = 2.0


async def serve_viewer(
    hub: Hub,
    ws: ServerConnection,
    spawn: Callable[[Coroutine], asyncio.Task],
    *,
    send_timeout: float,
    snapshot_interval: float,
    close_timeout: float,
) -> None:
    """Serve one viewer's connection (`/ws`): hello and a snapshot, then the stream, until it
    leaves, breaks the protocol, or stops reading (then it is closed with CLOSE_TOO_SLOW).
    `spawn` runs the task that sends to it (the server cancels its tasks when it stops)."""
    ws.protocol.max_message_size = CONTROL_MAX_SIZE
    viewer = Viewer(
        hub,
        ws.send,
        name=_peer(ws),
        send_timeout=send_timeout,
        snapshot_interval=snapshot_interval,
    )
    hub.join(viewer)
    sender = spawn(viewer.run())
    receiver = asyncio.ensure_future(_read_controls(ws, viewer))
    try:
        await asyncio.wait([sender, receiver], return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.leave(viewer)
        sender.cancel()
        receiver.cancel()
    if viewer.too_slow is not None:
        await _close_too_slow(ws, viewer, close_timeout)
    elif sender.done() and not sender.cancelled() and sender.exception() is not None:
        if not isinstance(sender.exception(), ConnectionClosed):
            await ws.close(CLOSE_INTERNAL_ERROR, "internal error")


async def _close_too_slow(ws: ServerConnection, viewer: Viewer, close_timeout: float) -> None:
    """Close a viewer that stopped reading: the close frame waits behind the data it has
    not read, so if it still does not read, the connection is dropped."""
    print(f"opgraph: closing a viewer that stopped reading: {viewer.too_slow}", file=sys.stderr)
    reason = f"too slow: a frame was not taken within {viewer.send_timeout:g} s"
    try:
        async with asyncio.timeout(close_timeout):
            await ws.close(CLOSE_TOO_SLOW, reason)
    except TimeoutError:
        ws.transport.abort()


async def _read_controls(ws: ServerConnection, viewer: Viewer) -> None:
    """Read control messages until the viewer leaves or breaks the protocol."""
    async for message in ws:
        if isinstance(message, str):
            await ws.close(CLOSE_TEXT_FRAME, "text frames are not opgraph control messages")
            return
        try:
            control = msgpack.unpackb(message, raw=False)
        except Exception:
            await ws.close(CLOSE_INVALID, "a control message must be one msgpack map")
            return
        if not isinstance(control, dict) or not isinstance(control.get("type"), str):
            await ws.close(CLOSE_INVALID, "a control message must be a msgpack map with a 'type'")
            return
        if control["type"] == "snapshot":
            viewer.ask_snapshot()  # rate-limited: see Viewer.request_earliest
        # unknown control types are ignored, so that the protocol can grow


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except Exception:
        return "viewer"


class TooSlow(Exception):
    """A viewer did not accept a frame within its send deadline."""


class Viewer:
    """One connected viewer: its bounded queue of frames, and the task that sends them.

    Every send has a deadline (`send_timeout`): a viewer that does not take a frame in time
    is given up (`run` returns, `too_slow` says why) so that nothing stays held for it.
    """

    def __init__(
        self,
        hub: Hub,
        send: Any,
        name: str = "viewer",
        *,
        send_timeout: float = SEND_TIMEOUT,
        snapshot_interval: float = SNAPSHOT_INTERVAL,
    ):
        self.hub = hub
        self.send = send  # the websocket's send coroutine function
        self.name = name
        self.send_timeout = send_timeout
        self.snapshot_interval = snapshot_interval
        self.limit = hub.queue_limit
        self.queue: deque[tuple[bytes, int]] = deque()
        self.queued = 0  # events in the queue
        self.queued_bytes = 0  # and their bytes (a training step's map is about 16 a node)
        self.max_queued = 0
        self.max_queued_bytes = 0
        self.lost = 0  # events lost since the last resync
        self.dropped_total = 0
        self.resyncs = 0
        self.resync = False  # send a snapshot (after `dropped`, if it lost events) first
        # Joining: no live event sent yet, only snapshots (see offer).
        self.joining = True
        self.sending_snapshot = False
        self.want_snapshot = False  # the viewer asked for a snapshot
        self.snapshot_requests = 0  # how many times it asked
        # frames to send before anything else: (hello or dropped, a snapshot the hub took)
        self.ready: tuple[list[bytes], Snapshot] | None = None
        self.wake = asyncio.Event()
        self.sending = False  # a frame of the queue is being written
        self.snapshot_done: float | None = None  # loop time the last snapshot was sent
        self.snapshot_took = 0.0  # seconds that sending it took
        self.too_slow: str | None = None  # why the viewer was given up

    def offer(self, frame: bytes, count: int) -> None:
        """Queue a frame of `count` events, or count them lost if the queue is full.

        A viewer still joining loses nothing it saw: its first snapshot is still on its way
        (a large one takes seconds, while a running loop makes events far faster than that),
        so the events that overflow are covered by a newer snapshot, not counted as dropped.
        """
        if self.resync:
            self.lost += 0 if self.joining else count
        elif self.queued + count > self.limit or (
            self.queued_bytes + len(frame) > self.hub.queue_bytes and self.queue
        ):
            self._overflow(count)
        else:
            self.queue.append((frame, count))
            self.queued += count
            self.queued_bytes += len(frame)
            self.max_queued_bytes = max(self.max_queued_bytes, self.queued_bytes)
            if self.queued > self.max_queued:
                self.max_queued = self.queued
        self.wake.set()

    def lose(self, count: int) -> None:
        """The source lost `count` events before they were numbered: no snapshot has them,
        so they are counted even while the viewer joins. Discard the queue; the viewer will
        get `dropped` and a snapshot."""
        self.lost += count
        self._overflow(0)

    def _overflow(self, count: int) -> None:
        """Discard the queue; a snapshot follows, after `dropped` (unless the viewer is still
        joining: then the snapshot stands for the events it never saw, see offer)."""
        if not self.joining:
            self.lost += self.queued + count
        self.queue.clear()
        self.queued = self.queued_bytes = 0
        self.resync = True
        self.wake.set()

    def ask_snapshot(self) -> None:
        """The viewer asked for a snapshot: one is sent when its rate limit allows."""
        self.want_snapshot = True
        self.snapshot_requests += 1
        self.wake.set()

    # A viewer that cannot keep up would otherwise get snapshot after snapshot (each one
    # large, and followed at once by the next overflow) and never see a backward pass: so
    # after a snapshot, the next resync waits a while, then comes when a pass begins.

    def resync_earliest(self) -> float:
        """The loop time from which this viewer may be resynced when a pass begins (never
        while a snapshot is still being sent to it: the next would queue up behind it)."""
        if self.sending_snapshot:
            return math.inf
        if self.snapshot_done is None:
            return 0.0
        return self.snapshot_done + max(self.hub.resync_interval, 2 * self.snapshot_took)

    def resync_deadline(self) -> float:
        """The loop time at which this viewer is resynced even if no pass begins."""
        if self.snapshot_done is None:
            return 0.0
        return self.resync_earliest() + self.hub.resync_pass_wait

    def request_earliest(self) -> float:
        """The loop time from which a snapshot the viewer asked for may be sent."""
        if self.snapshot_done is None:
            return 0.0
        return self.snapshot_done + max(self.snapshot_interval, 4 * self.snapshot_took)

    def resync_with(self, snapshot: Snapshot) -> None:
        """Resync now with `snapshot` (frames of the hub's graph at hub.seq)."""
        self.ready = (self._resync_head(), snapshot)
        self.want_snapshot = False
        self.wake.set()

    def _resync_head(self) -> list[bytes]:
        """What precedes a resync's snapshot: `dropped`, if the viewer lost events."""
        head = [self.hub._pack({"type": "dropped", "count": self.lost})] if self.lost else []
        self.dropped_total += self.lost
        self.resyncs += 1
        self.lost = 0
        self.resync = False
        self.queue.clear()
        self.queued = self.queued_bytes = 0
        return head

    async def run(self) -> None:
        """Send the ready frames (hello and snapshot, from `Hub.join`), then queued frames as
        they come, resyncing when needed; return when done or when the viewer is too slow."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._send_due(loop)
                wait = self._next_due(loop.time())
                try:
                    await asyncio.wait_for(self.wake.wait(), wait)
                except TimeoutError:
                    pass
                self.wake.clear()
        except TooSlow as exc:
            # Let go of everything meant for this viewer; the caller closes the connection.
            self.too_slow = str(exc)
            self.ready = None
            self.queue.clear()
            self.queued = self.queued_bytes = 0

    def _next_due(self, now: float) -> float | None:
        """Seconds until a snapshot falls due (None: nothing is waiting for a time)."""
        times = []
        if self.resync:
            times.append(self.resync_deadline())
        if self.want_snapshot:
            times.append(self.request_earliest())
        return max(min(times) - now, 0.0) if times else None

    async def _send_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send what is due now: ready frames, a snapshot, or the queue."""
        while True:
            now = loop.time()
            if self.ready is not None:
                await self._send_snapshot_frames(*self._take_ready())
            elif (self.want_snapshot and now >= self.request_earliest()) or (
                self.resync and now >= self.resync_deadline()
            ):
                await self._send_snapshot()
            elif self.queue and not self.resync:
                frame, count = self.queue.popleft()
                self.queued -= count
                self.queued_bytes -= len(frame)
                self.sending = True
                try:
                    await self._send(frame)
                finally:
                    self.sending = False
            else:
                return

    def _take_ready(self) -> tuple[list[bytes], Snapshot]:
        ready, self.ready = self.ready, None
        assert ready is not None  # (called when frames are ready)
        return ready

    async def _send(self, frame: bytes) -> None:
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.send(frame)
        except TimeoutError:
            raise TooSlow(
                f"viewer {self.name} took more than {self.send_timeout:g} s to accept "
                f"{len(frame):,} bytes"
            ) from None

    async def _send_snapshot(self) -> None:
        # Built synchronously: it reflects exactly the events up to hub.seq; the queue holds
        # only events up to hub.seq too, so it is dropped and the stream goes on at seq + 1.
        snapshot = self.hub.snapshot_frames()
        head = self._resync_head() if self.resync else []
        self.lost = 0
        self.resync = self.want_snapshot = False
        self.queue.clear()
        self.queued = self.queued_bytes = 0
        await self._send_snapshot_frames(head, snapshot)

    async def _send_snapshot_frames(self, head: list[bytes], snapshot: Snapshot) -> None:
        # (The snapshot may be shared with other viewers: it is read, never changed.)
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.sending_snapshot = True
        try:
            for frame in head:
                await self._send(frame)
            for frame in snapshot:
                await self._send(frame)
        finally:
            self.sending_snapshot = False
        self.snapshot_done = loop.time()
        self.snapshot_took = self.snapshot_done - start
        # Live events follow unless the queue overflowed meanwhile: then another snapshot.
        self.joining = self.joining and self.resync

    def behind(self) -> bool:
        """Whether events are still on their way to this viewer (one waiting for its resync
        is not: it will get a snapshot, not events)."""
        return bool((self.queue or self.sending or self.ready) and not self.resync)

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queued": self.queued,
            "max_queued": self.max_queued,
            "queued_bytes": self.queued_bytes,
            "max_queued_bytes": self.max_queued_bytes,
            "limit": self.limit,
            "dropped": self.dropped_total + self.lost,
            "resyncs": self.resyncs,
            "snapshot_requests": self.snapshot_requests,
        }
