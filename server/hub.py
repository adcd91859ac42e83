"""The hub: numbers events, keeps the current graph, and fans events out to viewers.

Everything here runs on the server's event loop thread, so nothing needs a lock. Events
come in as protocol maps (from the local tracer, a publishing script, or a recording); the
hub gives each its `seq`, applies it to its copy of the graph (what a snapshot shows), packs
it with msgpack, writes it to the recording, and offers the packed frame to each viewer's
bounded queue. A viewer whose queue overflows is resynced: `dropped`, then a snapshot.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import struct
from collections import deque
from collections.abc import Iterable
from time import perf_counter_ns
from typing import Any

import msgpack

from opgraph.trace import BACKWARD, FORWARD, event_map

from .encode import backward_bytes, forward_bytes

FRAME_EVENTS = 2000  # events per websocket frame (about 60-100 KB)
SNAPSHOT_FRAME_NODES = 2000

# A node of the hub's graph is a tuple (op, parents, data, label, const) and its grad is kept
# apart in a dict of floats: tuples of atomic values and dicts of floats are untracked by
# the garbage collector, which otherwise walks every node on each full collection.


class Hub:
    """The state shared by all viewers of one server: seq, graph, viewers, recording.

    `max_nodes` bounds the graph kept for snapshots: past it, the oldest nodes (by creation,
    or by their last `data` change) are forgotten.
    """

    def __init__(
        self,
        engine: str,
        ops: dict[str, str],
        *,
        queue_limit: int = 100_000,
        max_nodes: int = 500_000,
        recorder: Any = None,
    ):
        self.session = secrets.token_hex(8)
        self.engine = engine
        self.ops = dict(ops)
        self.queue_limit = queue_limit
        self.max_nodes = max_nodes
        self.recorder = recorder
        self.seq = 0
        self.nodes: dict[int, tuple] = {}
        self.grads: dict[int, float] = {}
        self.viewers: set[Viewer] = set()
        self.next_id = 0  # for renumbering published runs (hub mode)
        self.runs = 0
        self._pack = msgpack.Packer().pack
        self.t0 = perf_counter_ns()
        if recorder is not None:
            recorder.write(self._pack(self.hello_map(0)))

    def hello_map(self, seq: int) -> dict[str, Any]:
        return {
            "type": "hello",
            "seq": seq,
            "protocol": "opgraph",
            "version": 1,
            "session": self.session,
            "engine": self.engine,
            "ops": self.ops,
        }

    def now_us(self) -> int:
        """Microseconds since this hub started (the `t` of events the hub makes)."""
        return (perf_counter_ns() - self.t0) // 1000

    # --- events in ------------------------------------------------------------------------

    def publish(self, events: Iterable[dict[str, Any]]) -> int:
        """Number, apply, record and fan out `events` (maps without `seq`); returns the count.

        Maps that already have a `seq` (from a recording or a publisher) are renumbered.
        """
        pack, apply = self._pack, self.apply
        packed: list[bytes] = []
        seq = self.seq
        for event in events:
            seq += 1
            event["seq"] = seq
            apply(event)
            packed.append(pack(event))
        self.seq = seq
        self._fan_out(packed)
        return len(packed)

    def publish_traced(self, events: list[tuple], t0: int) -> int:
        """`publish` for the tuples of a local `Tracer`: the fast path, with no dict per event
        and the two commonest kinds packed by templates (see encode.py)."""
        pack, nodes, grads = self._pack, self.nodes, self.grads
        packed: list[bytes] = []
        append = packed.append
        seq = self.seq
        for event in events:
            seq += 1
            kind = event[0]
            t = (event[1] - t0) // 1000
            if kind == BACKWARD:
                id_, grad = event[2], event[3]
                grads[id_] = grad
                try:
                    append(backward_bytes(seq, id_, grad, t))
                except struct.error:  # a number past 32 bits
                    append(pack({"type": "backward", "seq": seq, "id": id_, "grad": grad, "t": t}))
            elif kind == FORWARD:
                _, _, node, data, label = event
                id_, op, parents = node._id, node._opdef, node._prev
                if len(parents) == 2:
                    parents = (parents[0]._id, parents[1]._id)
                else:
                    parents = tuple([p._id for p in parents])
                if op is None:
                    name = const = None
                else:
                    name = op.name
                    const = tuple([v for _, v in op.constants]) if op.constants else None
                nodes[id_] = (name, parents, data, label, const)
                try:
                    append(forward_bytes(seq, id_, name, parents, data, label, t, const))
                except struct.error:
                    append(pack(event_map(event, seq, t0)))
            else:
                out = event_map(event, seq, t0)
                self.apply(out)
                append(pack(out))
        self.seq = seq
        if len(nodes) > self.max_nodes:
            self._forget()
        self._fan_out(packed)
        return len(packed)

    def _fan_out(self, packed: list[bytes]) -> None:
        for start in range(0, len(packed), FRAME_EVENTS):
            chunk = packed[start : start + FRAME_EVENTS]
            frame = b"".join(chunk)
            if self.recorder is not None:
                self.recorder.write(frame)
            for viewer in self.viewers:
                viewer.offer(frame, len(chunk))

    def apply(self, event: dict[str, Any]) -> None:
        """Update the graph with one event (unknown kinds change nothing)."""
        kind, nodes = event["type"], self.nodes
        if kind == "forward":
            const = event.get("const")
            nodes[event["id"]] = (
                event.get("op"),
                tuple(event.get("parents", ())),
                event.get("data", 0.0),
                event.get("label", ""),
                tuple(const) if const else None,
            )
            if len(nodes) > self.max_nodes:
                self._forget()
            return
        id_ = event.get("id")
        node = nodes.get(id_)
        if node is None:
            return
        op, parents, data, label, const = node
        if kind == "backward":
            self.grads[id_] = event["grad"]
        elif kind == "data":
            del nodes[id_]  # renewed: re-inserted last, so it is forgotten last
            nodes[id_] = (op, parents, event["data"], label, const)
        elif kind == "label":
            nodes[id_] = (op, parents, data, event["label"], const)

    def _forget(self) -> None:
        """Forget the oldest nodes (by creation or last `data` change) down to 90% of the
        limit, in one go so that the cost per event stays small."""
        nodes = self.nodes
        excess = len(nodes) - self.max_nodes * 9 // 10
        for id_ in list(itertools.islice(nodes, excess)):
            del nodes[id_]
            self.grads.pop(id_, None)

    def upstream_lost(self, count: int) -> None:
        """The source lost `count` events before they were numbered: resync every viewer."""
        for viewer in self.viewers:
            viewer.lose(count)

    # --- snapshots ------------------------------------------------------------------------

    def snapshot_frames(self) -> list[bytes]:
        """The current graph as protocol frames: snapshot_begin, node maps, snapshot_end."""
        pack, seq, nodes, grads = self._pack, self.seq, self.nodes, self.grads
        frames = [pack({"type": "snapshot_begin", "seq": seq, "nodes": len(nodes)})]
        ids = sorted(nodes)
        for start in range(0, len(ids), SNAPSHOT_FRAME_NODES):
            parts = []
            for id_ in ids[start : start + SNAPSHOT_FRAME_NODES]:
                op, parents, data, label, const = nodes[id_]
                node = {"type": "node", "id": id_, "op": op, "parents": list(parents)}
                node.update(data=data, grad=grads.get(id_, 0.0), label=label)
                if const:
                    node["const"] = list(const)
                parts.append(pack(node))
            frames.append(b"".join(parts))
        frames.append(pack({"type": "snapshot_end", "seq": seq}))
        return frames

    def join(self, viewer: Viewer) -> list[bytes]:
        """Register a viewer; returns its first frames (hello and snapshot).

        Called synchronously on the loop: the snapshot reflects every event up to
        `self.seq`, and every later event goes to the viewer's queue, so it misses none and
        gets none twice.
        """
        frames = [self._pack(self.hello_map(self.seq)), *self.snapshot_frames()]
        self.viewers.add(viewer)
        return frames

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    def stats(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "nodes": len(self.nodes),
            "viewers": [viewer.stats() for viewer in self.viewers],
            "runs": self.runs,
        }


class Viewer:
    """One connected viewer: its bounded queue of frames, and the task that sends them."""

    def __init__(self, hub: Hub, send: Any, name: str = "viewer"):
        self.hub = hub
        self.send = send  # the websocket's send coroutine function
        self.name = name
        self.limit = hub.queue_limit
        self.queue: deque[tuple[bytes, int]] = deque()
        self.queued = 0  # events in the queue
        self.max_queued = 0
        self.lost = 0  # events lost since the last resync
        self.dropped_total = 0
        self.resyncs = 0
        self.resync = False  # send dropped + snapshot before anything else
        self.want_snapshot = False  # the viewer asked for a snapshot
        self.wake = asyncio.Event()
        self.sending = False  # a frame of the queue is being written

    def offer(self, frame: bytes, count: int) -> None:
        """Queue a frame of `count` events, or count them lost if the queue is full."""
        if self.resync:
            self.lost += count
        elif self.queued + count > self.limit:
            self.lose(count)
        else:
            self.queue.append((frame, count))
            self.queued += count
            if self.queued > self.max_queued:
                self.max_queued = self.queued
        self.wake.set()

    def lose(self, count: int) -> None:
        """Discard the queue; the viewer will get `dropped` and a snapshot."""
        self.lost += self.queued + count
        self.queue.clear()
        self.queued = 0
        self.resync = True
        self.wake.set()

    async def run(self, first_frames: list[bytes]) -> None:
        """Send the first frames, then queued frames as they come, resyncing when needed."""
        for frame in first_frames:
            await self.send(frame)
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue or self.resync or self.want_snapshot:
                if self.resync or self.want_snapshot:
                    await self._send_snapshot()
                    continue
                frame, count = self.queue.popleft()
                self.queued -= count
                self.sending = True
                try:
                    await self.send(frame)
                finally:
                    self.sending = False

    async def _send_snapshot(self) -> None:
        # Built synchronously: it reflects exactly the events up to hub.seq; the queue holds
        # only events up to hub.seq too, so it is dropped and the stream goes on at seq + 1.
        frames = self.hub.snapshot_frames()
        if self.resync:
            frames.insert(0, self.hub._pack({"type": "dropped", "count": self.lost}))
            self.dropped_total += self.lost
            self.resyncs += 1
        self.lost = 0
        self.resync = self.want_snapshot = False
        self.queue.clear()
        self.queued = 0
        for frame in frames:
            await self.send(frame)

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queued": self.queued,
            "max_queued": self.max_queued,
            "limit": self.limit,
            "dropped": self.dropped_total + self.lost,
            "resyncs": self.resyncs,
        }
