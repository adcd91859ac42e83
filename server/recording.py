"""Recordings: the wire format in a file (hello, then every live event, back to back).

`Recorder` appends what the hub sends; `Recording` reads a file back one event at a time,
checking each map with the rules of events.py (what a publisher may send, plus the hub's
`run` markers, with seq numbers one apart; `structure` and `step` against the stream before
them), and when the file is truncated or damaged it
stops at the damage and says where.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from .events import RECORDED_KINDS, InvalidEvent, Steps, check_event, check_hello

SUFFIX = ".ogtrace"


class Recorder:
    """Writes packed frames to a file, buffered; `close()` flushes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file: BinaryIO = open(self.path, "wb", buffering=1 << 20)  # noqa: SIM115
        self.bytes = 0

    def write(self, frame: bytes) -> None:
        if not self.file.closed:
            self.file.write(frame)
            self.bytes += len(frame)

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


@dataclass
class Damage:
    """Where and why reading a recording stopped early."""

    offset: int  # byte offset of the first byte not used
    events: int  # events read before the damage
    last_seq: int | None
    reason: str

    def __str__(self) -> str:
        after = f"after seq {self.last_seq}" if self.last_seq is not None else "at the start"
        return (
            f"recording damaged at byte {self.offset} ({after}, {self.events} events read): "
            f"{self.reason}"
        )


class Recording:
    """Iterates over the maps of a recording; `damage` is set if it stopped early.

    rec = Recording("run.ogtrace")
    for event in rec: ...
    if rec.damage: print(rec.damage)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.damage: Damage | None = None
        self.hello: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, "rb") as file:
            yield from self._read(file)

    def _read(self, file: BinaryIO) -> Iterator[dict[str, Any]]:
        unpacker = msgpack.Unpacker(file, raw=False, strict_map_key=False, read_size=1 << 16)
        count, last_seq, offset = 0, None, 0
        steps = Steps()  # what the checks of `structure` and `step` know of the stream
        size = file.seek(0, io.SEEK_END)
        file.seek(0)

        def stop(reason: str) -> Damage:
            return Damage(offset, count, last_seq, reason)

        while True:
            try:
                event = unpacker.unpack()
            except msgpack.OutOfData:
                if offset < size:
                    self.damage = stop(f"truncated: {size - offset} bytes of an incomplete event")
                break
            except (msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
                self.damage = stop(f"not msgpack ({type(exc).__name__}: {exc})")
                break
            try:
                event = _checked(event, count, last_seq)
                if count:
                    steps.see(event, count)
            except InvalidEvent as exc:
                self.damage = stop(str(exc))
                break
            if count == 0:
                self.hello = event
                last_seq = event.get("seq", 0)
            else:
                last_seq = event["seq"]
            offset = unpacker.tell()
            count += 1
            yield event
        if count == 0 and self.damage is None:
            self.damage = stop("empty: not an opgraph recording")


def _checked(event: Any, index: int, last_seq: int | None) -> dict[str, Any]:
    """The clean copy of the `index`-th map of a recording (events.py's rules, and each live
    event numbered one more than the one before); raises InvalidEvent."""
    if index == 0:
        if type(event) is not dict or event.get("type") != "hello":
            problem = "not an opgraph recording: it must begin with an opgraph hello"
            raise InvalidEvent(0, "", "", problem)
        try:
            return check_hello(event)
        except InvalidEvent as exc:
            if exc.field == "'protocol'":
                raise InvalidEvent(0, "", "", "not an opgraph recording: " + str(exc)) from None
            raise
    event = check_event(event, index, RECORDED_KINDS)
    expected = (0 if last_seq is None else last_seq) + 1  # a hello without seq is seq 0
    if event.get("seq") != expected:
        got = event.get("seq", "none")
        raise InvalidEvent(index, event["type"], "'seq'", f"must be {expected}, got {got}")
    return event
