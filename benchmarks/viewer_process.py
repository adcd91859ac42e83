"""A viewer in a process of its own, for the benchmarks: it decodes every frame it gets.

    python -m benchmarks.viewer_process follow WS_URL   # reads the stream; answers on stdout
    python -m benchmarks.viewer_process join WS_URL     # joins, takes the snapshot, reports

`follow` reads the stream as a page would (websockets client, msgpack.Unpacker over every
frame), counts events by kind and bytes, and checks that nothing is lost: every live event's
seq is one more than the one before (or than the last snapshot's), and `dropped` events are
counted. It prints `ready`, then for each line `N` read on stdin one JSON line once it has
decoded every event up to seq N: its counters, the wall clock time (`time.time()`) when it
decoded the last of them, and its own CPU time, so that the benchmark can tell whether the
viewer was the bottleneck. An empty line ends it.

`join` connects, reads hello and the snapshot, and prints one JSON line: the seconds from
connecting to `snapshot_end`, the snapshot's bytes and its events by kind.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import msgpack
import websockets
from websockets.typing import Subprotocol

from opgraph.server.protocol import SUBPROTOCOL

UNNUMBERED = ("hello", "snapshot_begin", "snapshot_end", "dropped", "node")


class Stream:
    """What the viewer has decoded so far."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.bytes = 0  # every frame
        self.frames = 0
        self.live_bytes = 0  # frames after the first snapshot
        self.seq = 0  # the last seq: a live event's, or a snapshot's
        self.gaps = 0  # seqs missing without a `dropped` to say so
        self.dropped = 0  # the counts of `dropped` events
        self.snapshots = 0
        self.after_drop = False
        self.decoded_at = 0.0  # time.time() when the last frame was decoded
        self.busy = 0.0  # seconds spent decoding

    def feed(self, frame: bytes, unpacker: msgpack.Unpacker) -> None:
        start = time.perf_counter()
        self.frames += 1
        self.bytes += len(frame)
        if self.snapshots:
            self.live_bytes += len(frame)
        unpacker.feed(frame)
        for event in unpacker:
            self.event(event)
        self.decoded_at = time.time()
        self.busy += time.perf_counter() - start

    def event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type"))
        self.kinds[kind] += 1
        if kind == "dropped":
            self.dropped += event.get("count", 0)
            self.after_drop = True
        elif kind == "snapshot_end":
            self.snapshots += 1
            self.seq, self.after_drop = event["seq"], False
        elif kind not in UNNUMBERED and isinstance(event.get("seq"), int):
            if self.seq and event["seq"] != self.seq + 1 and not self.after_drop:
                self.gaps += event["seq"] - self.seq - 1
            self.seq = event["seq"]

    def report(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kinds": dict(self.kinds),
            "bytes": self.bytes,
            "live_bytes": self.live_bytes,
            "frames": self.frames,
            "gaps": self.gaps,
            "dropped": self.dropped,
            "snapshots": self.snapshots,
            "decoded_at": self.decoded_at,
            "busy_s": self.busy,
            "cpu_s": time.process_time(),
        }


async def connect(url: str) -> Any:
    return await websockets.connect(
        url, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=None, open_timeout=60
    )


async def follow(url: str) -> None:
    stream, unpacker = Stream(), msgpack.Unpacker(raw=False, strict_map_key=False)
    progress = asyncio.Event()
    targets: asyncio.Queue[int | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read_stdin() -> None:  # a thread: lines of stdin into the queue
        for line in sys.stdin:
            loop.call_soon_threadsafe(targets.put_nowait, int(line) if line.strip() else None)
            if not line.strip():
                return
        loop.call_soon_threadsafe(targets.put_nowait, None)

    async def answer() -> None:
        while (target := await targets.get()) is not None:
            while stream.seq < target:
                progress.clear()
                await progress.wait()
            print(json.dumps(stream.report()), flush=True)

    async with await connect(url) as ws:
        threading.Thread(target=read_stdin, daemon=True).start()
        answering = asyncio.ensure_future(answer())
        print("ready", flush=True)
        while not answering.done():
            receiving = asyncio.ensure_future(ws.recv())
            await asyncio.wait([receiving, answering], return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
                break
            stream.feed(receiving.result(), unpacker)
            progress.set()


async def join(url: str) -> None:
    stream, unpacker = Stream(), msgpack.Unpacker(raw=False, strict_map_key=False)
    start = time.perf_counter()
    async with await connect(url) as ws:
        connected = time.perf_counter() - start
        while not stream.snapshots:
            stream.feed(await ws.recv(), unpacker)
        seconds = time.perf_counter() - start
    report = stream.report()
    print(json.dumps({**report, "seconds": seconds, "connect_s": connected}), flush=True)


def main(argv: list[str]) -> None:
    mode, url = argv
    asyncio.run({"follow": follow, "join": join}[mode](url))


if __name__ == "__main__":
    main(sys.argv[1:])
