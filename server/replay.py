"""Serving a recording to viewers as if it were live (`opgraph replay`, opgraph/commands).

Events are sent at the pace they were recorded (their `t`), `speed` times faster, or as fast
as possible with `speed=0`. A damaged recording replays up to the damage, which is reported.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from .recording import Recording
from .server import TraceServer

BATCH = 2000


class ReplayServer(TraceServer):
    """A server whose events come from a recording; `.done` is set when it has all been sent."""

    def __init__(self, path: str | Path, *, speed: float = 1.0, hold: bool = False, **options: Any):
        self.recording = Recording(path)
        events = iter(self.recording)
        hello = next(events, None)  # read now, so a bad file fails before serving
        if hello is None:
            raise ValueError(f"{path}: {self.recording.damage or 'empty recording'}")
        super().__init__(
            engine_name=hello.get("engine", "replay"),
            ops=hello.get("ops", {}),
            **options,
        )
        self.speed = speed
        self.replayed = 0
        self.error: str | None = None  # set if replaying failed for another reason
        self.done = asyncio.Event()
        # hold=True: the replay starts only once `release()` is called (`replay --wait`
        # serves first, waits for a viewer, then releases it)
        self._released = threading.Event()
        if not hold:
            self._released.set()
        self._events = events
        self.add_source(self._play)

    def release(self) -> None:
        """Start a replay made with hold=True."""
        self._released.set()

    async def _play(self) -> None:
        self.done = asyncio.Event()
        try:
            while not self._released.is_set():  # (polled: the loop stays free to serve)
                await asyncio.sleep(0.02)
            await self._play_events()
        except Exception as exc:  # a bug, not the file: the recording reader checked it
            self.error = f"replay failed after {self.replayed} events: {exc!r}"
        finally:
            self.done.set()  # never leave wait_done() (and `replay --exit`) waiting

    async def _play_events(self) -> None:
        start = time.monotonic()
        batch: list[dict] = []
        for event in self._events:
            t = event.get("t")
            if self.speed > 0 and t is not None:
                delay = t / 1e6 / self.speed - (time.monotonic() - start)
                if delay > 0.002:
                    self._send(batch)
                    await asyncio.sleep(delay)
            batch.append(event)
            if len(batch) >= BATCH:
                self._send(batch)
                await asyncio.sleep(0)
        self._send(batch)

    def _send(self, batch: list[dict]) -> None:
        if batch:
            self.hub.publish(batch)
            self.replayed += len(batch)
            batch.clear()

    def wait_done(self, timeout: float | None = None) -> bool:
        """Block until the whole recording has been handed to the hub."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            if self.loop is not None and self.call(self.done.is_set):
                return True
            time.sleep(0.02)
        return False
