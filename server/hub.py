"""The hub: numbers events, keeps the current graph, and fans events out to viewers.

Everything here runs on the server's event loop thread, so nothing needs a lock. Events
come in as protocol maps (from the local tracer, a publishing script, or a recording); the
hub gives each its `seq`, applies it to its copy of the graph (what a snapshot shows), packs
it with msgpack, writes it to the recording, and offers the packed frame to each viewer
(viewers.py: a bounded queue each; one that overflows is resynced: `dropped`, then a
snapshot). The graph is bounded in nodes and in bytes: past either, the oldest are forgotten.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import struct
import sys
import weakref
from collections import Counter
from collections.abc import Iterable
from time import perf_counter_ns
from typing import Any

import msgpack

from opgraph.contracts import Node
from opgraph.trace import BACKWARD_BEGIN, BACKWARD_STEPS, FORWARD, event_map, records

from .encode import (
    NODE_OVERHEAD,
    as_tuple,
    backward_steps_bytes,
    forward_bytes,
    forward_encoder,
    node_bytes,
    node_size,
)
from .events import MAX_OPS
from .protocol import hello
from .steps import HISTORY_STEPS, Steps
from .viewers import RESYNC_INTERVAL, RESYNC_PASS_WAIT, Viewer

FRAME_EVENTS = 2000  # events per websocket frame (about 60-100 KB)
SNAPSHOT_FRAME_NODES = 2000
# The graph kept for snapshots is bounded in bytes too (`max_bytes`): a node costs the bytes
# of its packed forward map plus NODE_OVERHEAD (its entry in the dict, the bytes object).
# Past the bound, the oldest nodes are forgotten, as past `max_nodes`.
MAX_BYTES = 256 << 20
MAX_NODE_BYTES = 1 << 20  # one published node: 5 bytes a parent, its label and scope

# A node of the hub's graph is either the packed `forward` map it was announced with (bytes
# from encode.py, as the fast path stores it; snapshots rewrite them, see node_bytes) or a
# tuple (op, parents, data, label, const, scope) once something changed it; its grad is kept apart
# in a dict of floats. Bytes are not tracked by the garbage collector at all, and tuples of
# atomic values and dicts of floats are untracked by it after a while: a graph of objects
# the collector follows would make it walk every node on each full collection, and each new
# tuple counts towards the next collection (measured: storing
# two tuples per node doubled the collections of a traced moons step).


class Hub:
    """The state shared by all viewers of one server: seq, graph, viewers, recording.

    `max_nodes` and `max_bytes` bound the graph kept for snapshots: past either, the oldest
    nodes (by creation, or by their last `data` change) are forgotten.
    """

    def __init__(
        self,
        engine: str,
        ops: dict[str, str],
        *,
        queue_limit: int = 100_000,
        max_nodes: int = 500_000,
        max_bytes: int = MAX_BYTES,
        max_node_bytes: int = MAX_NODE_BYTES,
        recorder: Any = None,
        resync_interval: float = RESYNC_INTERVAL,
        resync_pass_wait: float = RESYNC_PASS_WAIT,
        history_steps: int = HISTORY_STEPS,
    ):
        self.session = secrets.token_hex(8)
        self.engine = engine
        self.ops = dict(ops)
        self.queue_limit = queue_limit
        self.max_nodes = max_nodes
        self.max_bytes = max_bytes
        self.max_node_bytes = max_node_bytes  # one published node, at most (intake.py)
        self.intake: Any = None  # the task applying publishers' frames (intake.py)
        self.graph_bytes = 0  # what the nodes kept cost (see node_size), about
        self.recorder = recorder
        self.resync_interval = resync_interval
        self.resync_pass_wait = resync_pass_wait
        self.seq = 0
        self.nodes: dict[int, bytes | tuple] = {}  # a packed forward, or its parts
        self.grads: dict[int, float] = {}
        # The backward pass in progress (0: none) and its root, and for each node the last
        # pass whose backward step reached it: what a snapshot says about backward.
        self.pass_in_progress = 0
        self.pass_root: int | None = None
        self.reached: dict[int, int] = {}
        # The order of the steps of the pass in progress (node ids), and the last pass that
        # ended without error: (pass, root, steps), which a snapshot carries as `last_pass`
        # so that a viewer that joins later can step through it. Both are bounded by
        # max_nodes (a pass reaches each node once); the last pass is dropped once one of
        # its nodes is forgotten.
        self.pass_steps: list[int] | None = []
        self.last_pass: tuple[int, int | None, list[int]] | None = None
        # op name -> (the Op, {scope path: a function packing its forward maps}), filled as
        # ops appear in scopes
        self._encoders: dict[str | None, tuple[Any, dict[str, Any]]] = {}
        # Training steps: structures, the latest step, the history (steps.py)
        self.steps = Steps(self, history_steps)
        self.viewers: set[Viewer] = set()
        self.next_id = 0  # for renumbering published runs (hub mode)
        # the hub's own numbers of passes, steps and structures (hub mode: several runs)
        self.next_pass = self.next_step = self.next_structure = 0
        self.runs = 0  # publishing scripts seen (hub mode)
        self.publishers: set[Any] = set()  # the runs publishing now (intake.py's _Run)
        self.closes: Counter[int | None] = Counter()  # publisher connections ended, by code
        self._pack = msgpack.Packer().pack
        self.t0 = perf_counter_ns()
        if recorder is not None:
            recorder.write(self._pack(self.hello_map(0)))

    def hello_map(self, seq: int) -> dict[str, Any]:
        return hello(seq, session=self.session, engine=self.engine, ops=self.ops)

    def now_us(self) -> int:
        """Microseconds since this hub started (the `t` of events the hub makes)."""
        return (perf_counter_ns() - self.t0) // 1000

    # --- events in ------------------------------------------------------------------------

    def publish(self, events: Iterable[dict[str, Any]]) -> int:
        """Number, apply, record and fan out `events` (maps without `seq`); returns the count.

        Maps that already have a `seq` (from a recording or a publisher) are renumbered.
        The maps must be valid (events from outside are checked by events.py first).
        """
        pack, apply, store = self._pack, self.apply, self._store_forward
        frames = _Frames(self)
        add = frames.parts.append
        seq = self.seq
        try:
            for event in events:
                if seq - frames.first >= FRAME_EVENTS:
                    frames.flush(seq)
                event["seq"] = seq + 1
                packed = None
                if event["type"] == "forward":
                    packed = store(event)  # kept as the bytes it is sent as
                if packed is None:
                    packed = pack(event)  # before apply: an event that fails changes nothing
                    apply(event)
                seq += 1
                add(packed)
                if event["type"] == "backward_begin":
                    self._pass_begins(frames, seq)
        finally:  # even if a map was bad: what was applied is sent, and seq stays gap-free
            self.seq = seq
            sent = frames.flush(seq)
        return sent

    def _store_forward(self, event: dict[str, Any]) -> bytes | None:
        """Keep a checked `forward` map as its packed bytes (what viewers are sent, and the
        most compact form: 5 bytes a parent); None if a number does not fit, or a field is not
        of the type the fast encoder packs (a hub fed maps of its own: then `apply` keeps it
        as a tuple and it is packed as any other map)."""
        const = event.get("const")
        try:
            packed = forward_bytes(
                event["seq"],
                event["id"],
                event["op"],
                event["parents"],
                event["data"],
                event["label"],
                event.get("t", 0),
                list(const) if const else None,
                sys.intern(event.get("scope", "")),
            )
        except (struct.error, TypeError, ValueError):
            return None
        self._keep(event["id"], packed)
        return packed

    def _keep(self, id_: int, node: bytes | tuple) -> None:
        """Store node `id_` (replacing the one it had: its grad and pass go), within bounds."""
        if self.steps.pending:  # a node of the latest step replaced: write that step first
            self.steps.before(id_)
        nodes = self.nodes
        old = nodes.pop(id_, None)
        if old is not None:
            self.graph_bytes -= node_size(old)
        nodes[id_] = node
        self.graph_bytes += node_size(node)
        self.grads.pop(id_, None)  # a forward replaces the node, grad included
        self.reached.pop(id_, None)
        if len(nodes) > self.max_nodes or self.graph_bytes > self.max_bytes:
            self._forget()

    def _pass_begins(self, frames: _Frames, seq: int) -> None:
        """A backward pass began with event `seq`: resync the viewers that wait for one, so
        that they see the pass from its start."""
        now = asyncio.get_running_loop().time() if self.viewers else 0.0
        waiting = [v for v in self.viewers if v.resync and now >= v.resync_earliest()]
        if waiting:
            frames.flush(seq)  # the events up to the pass's start; the snapshot covers them
            self.seq = seq
            snapshot = self.snapshot_frames()
            for viewer in waiting:
                viewer.resync_with(snapshot)

    def publish_traced(self, fields: list[Any], t0: int) -> int:
        """`publish` for the items of a local `Tracer`: the fast path, with no dict per event,
        `forward` packed by templates and chunks of `backward` steps packed column by column
        (see encode.py)."""
        pack, nodes, grads, encoders = self._pack, self.nodes, self.grads, self._encoders
        frames = _Frames(self)
        parts = frames.parts
        add = parts.append
        seq = self.seq
        # (Unpacked in the for statement: zip then reuses its tuple, no object per event.)
        for kind, t_ns, x, y, z in records(fields):
            if seq - frames.first >= FRAME_EVENTS:
                frames.flush(seq)
            t = (t_ns - t0) // 1000
            if kind == FORWARD:
                seq += 1
                op = x.op
                encoder = encoders.get(op.name if op is not None else None)
                try:
                    if (
                        z  # a label
                        or encoder is None  # a new op
                        or encoder[0] is not op
                        or (pack_forward := encoder[1].get(x.scope)) is None  # a new scope
                    ):
                        packed = self._encode_forward(seq, x, y, z, t)
                    else:
                        packed = pack_forward(seq, x, y, t)  # (kept in nodes, by node id)
                    self.graph_bytes += len(packed) + NODE_OVERHEAD
                except struct.error:  # a number past 32 bits: kept as a tuple
                    out = event_map((kind, t_ns, x, y, z), seq, t0)
                    packed = pack(out)
                    self.apply(out)
                add(packed)
            elif kind == BACKWARD_STEPS:
                ids, values = x, y
                if self.steps.pending:
                    self.steps.before_all(ids)
                grads.update(zip(ids, values, strict=True))
                self.reached.update(dict.fromkeys(ids, self.pass_in_progress))
                self._record_steps(ids)
                try:
                    add(backward_steps_bytes(seq + 1, ids, values, t))
                    seq += len(ids)
                except struct.error:  # a number past 32 bits
                    for id_, grad in zip(ids, values, strict=True):
                        seq += 1
                        backward = {"type": "backward", "seq": seq, "id": id_, "grad": grad}
                        add(pack({**backward, "t": t}))
            else:
                seq += 1
                out = event_map((kind, t_ns, x, y, z), seq, t0)
                self.apply(out)
                add(pack(out))
                if kind == BACKWARD_BEGIN:
                    self._pass_begins(frames, seq)
        self.seq = seq
        if len(nodes) > self.max_nodes or self.graph_bytes > self.max_bytes:
            self._forget()
        return frames.flush(seq)

    def _encode_forward(self, seq: int, node: Node, data: float, label: str, t: int) -> bytes:
        """The packed `forward` of `node`; remembers a fast encoder for its op (see encode.py)."""
        op, scope = node.op, node.scope
        parents = node.parent_ids
        if op is None:
            name = const = None
        else:
            name = op.name
            const = [value for _, value in op.constants] if op.constants else None
        if not const:  # ops with constants (x ** 2) are rare enough for the general path
            known = self._encoders.get(name)
            if known is None or known[0] is not op or len(known[1]) > 1000:
                known = self._encoders[name] = (op, {})
            known[1][scope] = forward_encoder(name, len(parents), self.nodes, scope)
        packed = forward_bytes(seq, node.id, name, parents, data, label, t, const, scope)
        self.nodes[node.id] = packed
        return packed

    def _send_frame(self, frame: bytes, count: int) -> None:
        if self.recorder is not None:
            self.recorder.write(frame)
        for viewer in self.viewers:
            viewer.offer(frame, count)

    def apply(self, event: dict[str, Any]) -> None:
        """Update the graph with one event (unknown kinds change nothing). Every field is
        read before anything changes, so a map that raises leaves the graph as it was."""
        kind, nodes = event["type"], self.nodes
        if kind == "backward_begin":
            self.pass_in_progress, self.pass_root = event["pass"], event["root"]
            self.pass_steps = []
            self.steps.pass_begins()
            return
        if kind == "structure":
            self.steps.structure(event)
            return
        if kind == "step":
            self.steps.step(event)
            return
        if kind == "backward_end":
            # Only the pass it ends: with several scripts on a hub, passes may overlap.
            if (event["pass"], event["root"]) == (self.pass_in_progress, self.pass_root):
                self._pass_ends(event.get("error") is None)
            return
        if kind == "forward":
            const = event.get("const")
            node = (
                event["op"],
                tuple(event["parents"]),
                event["data"],
                event["label"],
                tuple(const) if const else None,
                sys.intern(event.get("scope", "")),
            )
            self._keep(event["id"], node)
            return
        if kind not in ("backward", "data", "label"):
            return
        id_ = event["id"]
        value = event["grad" if kind == "backward" else kind]
        if self.steps.pending:  # the latest step's numbers are older than this event
            self.steps.before(id_)
        node = nodes.get(id_)
        if node is None:
            return
        if kind == "backward":  # (the node itself is not read: not decoded either)
            self.grads[id_] = value
            self.reached[id_] = self.pass_in_progress
            self._record_steps((id_,))
            return
        op, parents, data, label, const, scope = as_tuple(node)
        if kind == "data":
            data = value
            del nodes[id_]  # renewed: re-inserted last, so it is forgotten last
        else:
            label = value
        new = nodes[id_] = (op, parents, data, label, const, scope)
        self.graph_bytes += node_size(new) - node_size(node)
        if self.graph_bytes > self.max_bytes:
            self._forget()

    def _record_steps(self, ids: Iterable[int]) -> None:
        """Note the order of a pass's steps; a pass of more steps than max_nodes (events
        of overlapping passes) is not remembered."""
        steps = self.pass_steps
        if steps is None or not self.pass_in_progress:
            return
        steps.extend(ids)
        if len(steps) > self.max_nodes:
            self.pass_steps = None

    def _pass_ends(self, ok: bool) -> None:
        """The pass in progress ended: remember it as the last pass if it did not fail (a
        failed pass put every grad back; its steps are not a pass to step through)."""
        steps = self.pass_steps
        if ok and steps is not None:
            self.last_pass = (self.pass_in_progress, self.pass_root, steps)
        else:
            self.last_pass = None
        self.pass_in_progress, self.pass_root, self.pass_steps = 0, None, []

    def _last_pass_map(self) -> dict[str, Any] | None:
        """The snapshot's `last_pass`, or None (no pass ended, or one of its nodes was
        forgotten or replaced since: then it is dropped for good)."""
        if self.last_pass is None:
            return None
        number, root, steps = self.last_pass
        reached, nodes = self.reached, self.nodes
        if not all(id_ in nodes and reached.get(id_, 0) >= number for id_ in steps):
            self.last_pass = None
            return None
        return {"pass": number, "root": root, "steps": steps}

    def add_ops(self, ops: dict[str, str]) -> None:
        """Merge a run's ops into those of `hello`, keeping at most MAX_OPS (the newest):
        a hub that lives for months must not grow with every run's op names."""
        self.ops.update(ops)
        for name in list(itertools.islice(self.ops, max(len(self.ops) - MAX_OPS, 0))):
            del self.ops[name]

    def _forget(self) -> None:
        """Forget the oldest nodes (by creation or last `data` change) down to 90% of the
        limit, in one go so that the cost per event stays small."""
        nodes, grads, reached = self.nodes, self.grads, self.reached
        excess = len(nodes) - self.max_nodes * 9 // 10
        goal = self.max_bytes * 9 // 10
        forgotten = 0
        for id_ in list(itertools.islice(nodes, max(excess, 0))):
            forgotten += node_size(nodes.pop(id_))
            grads.pop(id_, None)
            reached.pop(id_, None)
        self.graph_bytes -= forgotten
        while nodes and self.graph_bytes > goal:
            id_ = next(iter(nodes))
            self.graph_bytes -= node_size(nodes.pop(id_))
            grads.pop(id_, None)
            reached.pop(id_, None)
        if self.last_pass is not None and not all(id_ in nodes for id_ in self.last_pass[2]):
            self.last_pass = None  # its nodes are gone: nothing left to step through

    def upstream_lost(self, count: int) -> None:
        """The source lost `count` events before they were numbered: resync every viewer."""
        for viewer in self.viewers:
            viewer.lose(count)

    # --- snapshots ------------------------------------------------------------------------

    # The last snapshot made, while some viewer still holds it (see snapshot_frames). It is
    # reused while hub.seq is unchanged: whatever changes the graph numbers an event.
    _snapshot: weakref.ref[Snapshot] | None = None

    def snapshot_frames(self) -> Snapshot:
        """The current graph as protocol frames: snapshot_begin, node maps, snapshot_end.

        Viewers that join (or resync) at the same seq share one snapshot: it is built once,
        and kept only as long as a viewer is still sending it.
        """
        cached = self._snapshot() if self._snapshot is not None else None
        if cached is not None and cached.seq == self.seq:
            return cached
        snapshot = Snapshot(self._build_snapshot())
        snapshot.seq = self.seq
        self._snapshot = weakref.ref(snapshot)
        return snapshot

    def _build_snapshot(self) -> list[bytes]:
        self.steps.settle()  # the graph as it is after the latest step
        pack, seq, nodes, grads = self._pack, self.seq, self.nodes, self.grads
        reached = self.reached
        begin = {"type": "snapshot_begin", "seq": seq, "nodes": len(nodes)}
        if self.pass_in_progress:
            begin["backward"] = {"pass": self.pass_in_progress, "root": self.pass_root}
        last_pass = self._last_pass_map()
        if last_pass is not None:
            begin["last_pass"] = last_pass
        frames = [pack(begin)]
        ids = sorted(nodes)
        for start in range(0, len(ids), SNAPSHOT_FRAME_NODES):
            parts = []
            for id_ in ids[start : start + SNAPSHOT_FRAME_NODES]:
                kept = nodes[id_]
                if type(kept) is bytes:  # the forward bytes: rewritten, not decoded
                    packed = node_bytes(kept, grads.get(id_, 0.0), reached.get(id_))
                    if packed is not None:
                        parts.append(packed)
                        continue
                op, parents, data, label, const, scope = as_tuple(kept)
                node = {"type": "node", "id": id_, "op": op, "parents": list(parents)}
                node.update(data=data, grad=grads.get(id_, 0.0), label=label)
                if const:
                    node["const"] = list(const)
                if scope:
                    node["scope"] = scope
                if id_ in reached:
                    node["pass"] = reached[id_]
                parts.append(pack(node))
            frames.append(b"".join(parts))
        steps = self.steps.snapshot_maps()  # structure, latest step, history
        if steps:
            frames.append(b"".join(map(pack, steps)))
        frames.append(pack({"type": "snapshot_end", "seq": seq}))
        return frames

    def join(self, viewer: Viewer) -> None:
        """Register a viewer; its first frames (hello and a snapshot) are made ready for it.

        Called synchronously on the loop: the snapshot reflects every event up to
        `self.seq`, and every later event goes to the viewer's queue, so it misses none and
        gets none twice.
        """
        viewer.ready = ([self._pack(self.hello_map(self.seq))], self.snapshot_frames())
        viewer.wake.set()
        self.viewers.add(viewer)

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    def stats(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "nodes": len(self.nodes),
            "graph_bytes": self.graph_bytes,
            "viewers": [viewer.stats() for viewer in self.viewers],
            "runs": self.runs,
            "publishers": len(self.publishers),
            "closes": dict(self.closes),
        }


class Snapshot(list):
    """The frames of one snapshot at `seq` (a list that the hub can hold weakly)."""

    seq = 0


class _Frames:
    """Packed events (`parts`, appended to by the caller) gathered into frames of about
    FRAME_EVENTS events: `flush(seq)` sends the events after `first` up to `seq` as one."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.parts: list[bytes | bytearray] = []
        self.first = self.start = hub.seq  # the seq before the frame's first event

    def flush(self, seq: int) -> int:
        """Send what is gathered (the events up to `seq`); returns the events sent so far."""
        if self.parts:
            self.hub._send_frame(b"".join(self.parts), seq - self.first)
            self.parts.clear()
            self.first = seq
        return seq - self.start
