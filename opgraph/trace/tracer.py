"""The tracer: what the engine tells viewers about each node, buffered.

The engine calls an attached tracer from its hot path (`Value.__init__`, the label setter,
backward), so the tracer does as little as it can there: it appends one record (five fields)
per event to a flat buffer. Whoever consumes the trace (the server's event loop, or a
publisher sending to a hub) drains the buffer from another thread, numbers the events and
turns them into the maps of the protocol with `event_map` (forms.py, which also says what a
buffered record holds).

Data changes: the engine does not watch `.data` assignments. The tracer remembers the data
it last announced per node and, whenever a node is used as an operand, announces a `data`
event first if the value changed (an optimizer step changes the parameters, the next forward
uses them). `touch(values)` announces changes right away.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

from .forms import (
    BACKWARD,
    BACKWARD_BEGIN,
    BACKWARD_END,
    BACKWARD_STEPS,
    DATA,
    FORWARD,
    LABEL,
    RECORD,
)
from .text import MAX_LABEL, viewer_text

if TYPE_CHECKING:
    from ..contracts import TracedEngine
    from ..value import Value

_MISSING = object()


def _why(error: BaseException) -> str:
    """`error` as a failed pass's `error` field: "TypeName: message". Never raises: it runs
    while the pass's own error propagates, which it must not replace."""
    name = type(error).__name__
    try:
        message = str(error)
    except Exception:
        message = ""
    return viewer_text(f"{name}: {message}" if message else name, MAX_LABEL)


def _same(a: float, b: float) -> bool:
    # nan == nan is false; two nans are the same value for a viewer.
    return a == b or (a != a and b != b)


class Tracer:
    """Collects the trace events of one engine into a bounded buffer.

    `max_buffer` bounds the events waiting to be drained: past it, new events are counted
    in `lost` instead of stored, so memory stays bounded even when nobody drains.
    `max_known` bounds the memory of which nodes were announced (see `_forget`).
    """

    def __init__(
        self, engine: TracedEngine, *, max_buffer: int = 2_000_000, max_known: int = 500_000
    ):
        self.engine = engine
        # Flat, so that buffering an event makes no object the garbage collector tracks (a
        # tuple per event, kept until drained, made a traced step collect twice as often).
        # Records are added whole by one list.extend (atomic under the GIL); the consumer
        # takes a slice from the front and deletes it (two atomic steps: the engine only
        # ever adds at the end), which costs nothing per field, where a deque's popleft did.
        self.buffer: list[Any] = []
        self.max_buffer = max_buffer
        self.max_known = max_known
        self.lost = 0  # events not stored because the buffer was full
        # A BACKWARD_STEPS record holds several events. The events waiting are
        # len(buffer) // RECORD + _extra_in - _extra_out: each counter is written by one
        # thread only (the engine's, the consumer's), so no lock is needed.
        self._extra_in = 0
        self._extra_out = 0
        self.passes = 0
        # The passes begun and not ended, innermost last (a hook may run a pass inside a
        # pass): [pass number, backward steps reported so far]
        self._open: list[list[int]] = []
        self.t0 = perf_counter_ns()
        # Which nodes the viewers know. Recording every node in a dict would cost more than
        # the rest of the tracer, so: a node made while the tracer was attached is known by
        # its id (ids grow), with id ranges for the times it was attached; leaves, whose data
        # an optimizer changes, and nodes announced late are in `_known` with their data.
        self._known: dict[int, float] = {}
        self._ranges: list[tuple[int, int]] = []  # [first, last + 1) of earlier attachments
        self._since: float = math.inf  # the first id made during the current attachment
        self._starting = True  # the next node seen starts the current attachment
        self._last_id = -1

    # --- attaching ------------------------------------------------------------------------

    def attach(self) -> None:
        """Start tracing the engine (again)."""
        self._starting = True
        self.engine.tracer = self

    def detach(self) -> None:
        """Stop tracing the engine; nodes made meanwhile are announced if used later."""
        if self.engine.tracer is self:
            self.engine.tracer = None
        if self._since != math.inf:
            self._ranges.append((int(self._since), self._last_id + 1))
            self._since = math.inf

    def forget_all(self) -> None:
        """Forget which nodes were announced (the consumer starts over): every node is
        announced again, with its ancestors, when the program next uses it."""
        self._known.clear()
        self._ranges.clear()
        self._since = math.inf
        self._starting = True

    # --- the hooks the engine calls -------------------------------------------------------

    def forward(self, node: Value) -> None:
        id_ = node._id
        if self._starting:
            self._since, self._starting = id_, False
        self._last_id = id_
        a = node._a  # the parents: slots _a and _b (see value.py)
        if a is not None:
            # Usually a parent is a leaf announced with this very float object (a parameter
            # or input unchanged since), or a node made while traced: nothing to say.
            known, since = self._known, self._since
            if a._opdef is None:
                if known.get(a._id, _MISSING) is not a._data:
                    self._check_parent(a)
            elif a._id < since:
                self._check_parent(a)
            b = node._b
            if b is None:
                pass
            elif type(b) is tuple:  # the operands after the first of an op of three or more
                for parent in b:
                    self._check_parent(parent)
            elif b._opdef is None:
                if known.get(b._id, _MISSING) is not b._data:
                    self._check_parent(b)
            elif b._id < since:
                self._check_parent(b)
        else:  # a leaf: remember its data (even if the event is lost: it would be again)
            self._known[id_] = node._data
            if len(self._known) > self.max_known:
                self._forget()
        buffer = self.buffer
        if len(buffer) // RECORD + self._extra_in - self._extra_out >= self.max_buffer:
            self.lost += 1
            return
        # The node itself: its id, op and parents never change, so they are read when the
        # event is drained; data and label are taken now.
        tag = node._tag  # the scope path, or a Tag when the node has a label (value.py)
        label = "" if type(tag) is str else tag.label
        buffer.extend((FORWARD, perf_counter_ns(), node, node._data, label))

    def _check_parent(self, parent: Value) -> None:
        """Announce a parent the viewers do not know, or its data if that changed."""
        if parent._opdef is None:  # a leaf: new to the viewers, or changed data?
            data = self._known.get(parent._id, _MISSING)
            if data is not parent._data:  # the same float object: unchanged (usual)
                self._check(parent, data)
        elif parent._id < self._since and not self._is_known(parent):
            self._announce(parent)  # made before tracing started

    def relabel(self, node: Value) -> None:
        """A label set after the node was made: a `label` event if the viewers know the node.
        A node they do not know (made under `no_grad()`, before tracing started, or
        forgotten) is not announced for its label: it is announced, label and all, when a
        traced node uses it (docs/protocol.md)."""
        if self._is_known(node):
            self._emit((LABEL, perf_counter_ns(), node._id, node.label, None))

    def backward_begin(self, root: Value) -> None:
        self.passes += 1
        self._open.append([self.passes, 0])
        self._emit((BACKWARD_BEGIN, perf_counter_ns(), root._id, self.passes, None))

    def backward(self, node: Value) -> None:
        # node.grad is this pass's gradient: backward() sets aside what earlier passes left
        # and adds it back after backward_end (see docs/protocol.md).
        if (node._opdef is None or node._id < self._since) and not self._is_known(node):
            self._announce(node)
        self._open[-1][1] += 1
        if self.pending() >= self.max_buffer:
            self.lost += 1
            return
        self.buffer.extend((BACKWARD, perf_counter_ns(), node._id, node._grad, None))

    def backward_steps(self, nodes: list[Value]) -> None:
        """The backward steps of `nodes` have run, in this order (a chunk of a pass).

        One buffered item for the whole chunk: the nodes' ids and grads, read now.
        """
        since = self._since
        for node in [n for n in nodes if n._opdef is None or n._id < since]:
            if not self._is_known(node):
                self._announce(node)
        self._open[-1][1] += len(nodes)
        self._steps(nodes)

    def _steps(self, nodes: list[Value]) -> None:
        count = len(nodes)
        if self.pending() + count > self.max_buffer:
            self.lost += count
            return
        ids = [node._id for node in nodes]
        grads = [node._grad for node in nodes]
        self._extra_in += count - 1
        self.buffer.extend((BACKWARD_STEPS, perf_counter_ns(), ids, grads, None))

    def backward_end(self, root: Value) -> None:
        pass_, _ = self._open.pop()
        self._emit((BACKWARD_END, perf_counter_ns(), root._id, pass_, None))

    def backward_failed(self, root: Value, nodes: list[Value], error: BaseException) -> None:
        """The pass over `nodes` (backward's topological order) raised `error`, and the
        engine put every grad back as it was before the pass. Viewers hold the grads the pass
        reported: report those nodes again with the grads they have now, then end the pass
        with its `error` (docs/protocol.md), so that viewers, snapshots and recordings hold
        what the engine holds."""
        pass_, reported = self._open.pop()
        if reported:
            # Steps run from the root (the last node) down: the first `reported` of them.
            self._steps(nodes[: -reported - 1 : -1])
        self._emit((BACKWARD_END, perf_counter_ns(), root._id, pass_, _why(error)))

    # --- data changes and late announcements ----------------------------------------------

    def _is_known(self, node: Value) -> bool:
        """Whether the viewers were told about `node` (and it was not forgotten since)."""
        id_ = node._id
        if id_ in self._known:
            return True
        if node._opdef is None:
            return False  # leaves are all in _known
        if id_ >= self._since:
            return True
        return any(first <= id_ < end for first, end in self._ranges)

    def touch(self, values: Iterable[Value]) -> None:
        """Announce the current data of `values` now if it changed since it was last sent."""
        for value in values:
            announced = self._known.get(value._id, _MISSING)
            if announced is _MISSING and self._is_known(value):
                # made while traced but not remembered (not a leaf): send its data anyway
                self._known[value._id] = value._data
                self._emit((DATA, perf_counter_ns(), value._id, value._data, None))
            else:
                self._check(value, announced)

    def _check(self, node: Value, announced: Any) -> None:
        if announced is _MISSING:
            self._announce(node)
        elif not _same(announced, node._data):
            self._known[node._id] = node._data
            self._emit((DATA, perf_counter_ns(), node._id, node._data, None))
        else:
            self._known[node._id] = node._data  # equal value, new object: remember this one

    def _announce(self, node: Value) -> None:
        """Send `forward` for a node the viewers never saw, and for its unseen ancestors.

        That happens when tracing starts after some nodes exist (parameters built before
        `serve()`), or for a node forgotten by `_forget`. Parents go first, in id order.
        """
        unseen = {node}
        stack = [node]
        while stack:
            for parent in stack.pop()._prev:
                if parent not in unseen and not self._is_known(parent):
                    unseen.add(parent)
                    stack.append(parent)
        for each in sorted(unseen, key=lambda v: v._id):
            self._forward_one(each)

    def _forward_one(self, node: Value) -> None:
        self._known[node._id] = node._data
        self._emit((FORWARD, perf_counter_ns(), node, node._data, node.label))

    def _forget(self) -> None:
        """Forget the oldest quarter of announced nodes, to keep memory bounded.

        A forgotten node that is used again is announced again (a `forward` for an id the
        viewer knows, which replaces it): correct, only a little redundant.
        """
        known = self._known
        for key in list(itertools.islice(known, len(known) // 4)):
            del known[key]

    def pending(self) -> int:
        """How many events wait in the buffer."""
        return len(self.buffer) // RECORD + self._extra_in - self._extra_out

    def oldest_ns(self) -> int | None:
        """When the oldest waiting event was made (perf_counter_ns), or None if none waits."""
        buffer = self.buffer
        return buffer[1] if buffer else None  # a record's time follows its kind

    def _emit(self, event: tuple) -> None:
        if self.pending() >= self.max_buffer:
            self.lost += 1
        else:
            self.buffer.extend(event)

    # --- the consumer's side --------------------------------------------------------------

    def drain(self, limit: int = 1 << 62) -> list[Any]:
        """Take buffered records, oldest first, until they hold `limit` events (the last
        record, a chunk of backward steps, may pass it) or none is left, as a flat list of
        fields (see `records`).

        Thread-safe against the engine, which adds whole records at the end only: the
        records are copied from the front, then deleted from it.
        """
        buffer = self.buffer
        fields = buffer[: min(len(buffer) // RECORD, limit) * RECORD]
        kinds = fields[::RECORD]
        if BACKWARD_STEPS in kinds:  # records of several events: stop where `limit` is met
            count = 0
            for taken, (kind, ids) in enumerate(zip(kinds, fields[2::RECORD], strict=True), 1):
                count += len(ids) if kind == BACKWARD_STEPS else 1
                if count >= limit:
                    del fields[taken * RECORD :]
                    break
            self._extra_out += count - len(fields) // RECORD
        del buffer[: len(fields)]
        return fields

    def take_lost(self) -> int:
        lost, self.lost = self.lost, 0
        return lost

    def hello(self) -> dict[str, Any]:
        """The fields of `hello` that describe this tracer's engine."""
        ops = self.engine.ops.definitions
        return {"engine": self.engine.name, "ops": {n: op.plugin for n, op in ops.items()}}


def touch(values: Iterable[Value]) -> None:
    """Send a `data` event now for each of `values` whose data changed since last announced.

    Tracing notices changed parameters when they are next used; call this after the last
    optimizer step (or whenever a viewer should see new values at once). A no-op when the
    values' engine is not traced.
    """
    for value in values:
        tracer = value._tracer
        if tracer is not None:
            tracer.touch([value])
