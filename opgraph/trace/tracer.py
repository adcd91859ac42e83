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

Steps (docs/protocol.md, "Steps"): a step is the nodes made since the last pass ended and
the pass that ends it. The first step of a structure goes out as events, as usual, then as a
STRUCTURE record and a STEP record (its numbers). From then on the tracer is optimistic: the
forward hook only collects the step's nodes (one list append), and when the pass begins it
compares them with the structure, a few lists built and compared in C. A step that
matches is one STEP record with its numbers packed in arrays, no forward or backward event;
one that does not goes out as events (late, but in creation order) and defines a new
structure. Collected nodes wait for the pass; when the engine is idle (no pass comes: a
notebook building an expression) the consumer's `drain` sends them as events after IDLE seconds.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections.abc import Iterable
from operator import attrgetter
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Literal

from .forms import (
    BACKWARD,
    BACKWARD_BEGIN,
    BACKWARD_END,
    BACKWARD_STEPS,
    DATA,
    FORWARD,
    LABEL,
    RECORD,
    STEP,
    STRUCTURE,
)
from .structure import MAX_STEP, Structure, define, merge, packed
from .text import MAX_LABEL, viewer_text

if TYPE_CHECKING:
    from ..contracts import TracedEngine
    from ..value import Value

_MISSING = object()

# Collected nodes the engine has not added to for this long (seconds) are sent as events by
# the next `drain` (the program stopped before a pass: a notebook cell, an evaluation).
IDLE = 0.5
IDLE_LOOKS = 10  # and as many looks in a row (drains, 10 ms apart) that saw the engine add nothing
BUSY_NS = 20_000_000  # ... and it has not run for more than this (ns of CPU) meanwhile
# The `dtype` option: the array typecode of a step's numbers.
DTYPES: dict[str, Literal["d", "f"]] = {"f8": "d", "f4": "f"}


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


_get_grad = attrgetter("_grad")


class Tracer:
    """Collects the trace events of one engine into a bounded buffer.

    `max_buffer` bounds the events waiting to be drained: past it, new events are counted
    in `lost` instead of stored, so memory stays bounded even when nobody drains.
    `max_known` bounds the memory of which nodes were announced (see `_forget`).
    `dtype` is how a `step` event sends its numbers: "f8" (float64, as the engine has them)
    or "f4" (float32, half the size). `idle`: after how many seconds without a new node the
    nodes collected for a step are sent anyway, as events (see `_flush_idle`).
    """

    def __init__(
        self,
        engine: TracedEngine,
        *,
        max_buffer: int = 2_000_000,
        max_known: int = 500_000,
        dtype: str = "f8",
        idle: float = IDLE,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'f8' (float64) or 'f4' (float32), got {dtype!r}")
        if not idle >= 0:
            raise ValueError(f"idle must be a number of seconds >= 0, got {idle!r}")
        self.engine = engine
        self.dtype = dtype
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
        # pass): [pass number, steps reported so far, the steps' nodes, root]
        self._open: list[list[Any]] = []
        self.t0 = perf_counter_ns()
        # Which nodes the viewers know. Recording every node in a dict would cost more than
        # the rest of the tracer, so: a node made while the tracer was attached is known by
        # its id (ids grow), with id ranges for the times it was attached; leaves, whose data
        # an optimizer changes, and nodes announced late are in `_known` with their data.
        # (Nodes collected for a step and not sent yet are not known: `_unsent_from`.)
        self._known: dict[int, float] = {}
        self._ranges: list[tuple[int, int]] = []  # [first, last + 1) of earlier attachments
        self._since: float = math.inf  # the first id made during the current attachment
        self._starting = True  # the next node seen starts the current attachment
        self._last_id = -1
        # Steps. The engine's thread appends the nodes of the step in progress to `_pending`
        # (only at its end); the first `_sent` of them went out as events. While
        # `_collecting` (a structure is known) the others wait for the pass. The consumer's
        # thread may send them (`_flush_idle`); the rare paths that read or change this
        # state hold `_lock`, the forward hook never does.
        self._lock = threading.RLock()
        self._pending: list[Value] = []
        self._sent = 0
        self._collecting = False
        self._flushed = False  # some of the step's collected nodes went out as events
        self._oversize = False  # the step grew past MAX_STEP: no structure
        self._troubles = 0  # events lost, or the consumer starting over: counted
        self._troubles_at = 0  # ... when the last step ended
        self._structure: Structure | None = None
        self.structures = 0  # structures numbered so far
        self.steps = 0  # steps numbered so far
        # A step whose nodes matched the structure when its pass began: the pass is not sent
        # while it runs (`_silent`); `_closed` is the step's nodes; `_spoiled` when something
        # (a label set, the consumer starting over) means it must go out as events after all.
        self._silent = False
        self._spoiled = False
        self._closed: list[Value] = []
        self._pool: list[Any] = []  # the closed step's pool (see Structure)
        self._matched: Structure | None = None  # the structure it matched
        self._silent_data: list[float] = []  # ... and its pass's numbers, in the pass's order
        self._silent_grads: list[float] = []
        self._last_step: tuple[int, Structure] | None = None  # first id, structure
        self._closed_ok = True  # the closed step kept all its nodes (not oversize)
        # opgraph.step(): once called, steps end there, not at passes (`_merged`: the passes
        # of the step so far, each (nodes, grads, root)).
        self._explicit = False
        self._step_asked = False  # step() was called during a pass: at its end
        self._merged: list[tuple[list[Value], list[float], Value]] = []
        # The consumer's idle check: (collected nodes, since when, the engine thread's CPU time
        # then, looks in a row that saw no change), and that thread's CPU clock (see
        # _engine_cpu_ns).
        self._watch = (0, 0, 0, 0)
        self._engine_clock: int | None = None
        self.idle_ns = int(idle * 1e9)

    # --- attaching ------------------------------------------------------------------------

    def attach(self) -> None:
        """Start tracing the engine (again)."""
        self._starting = True
        self.engine.tracer = self

    def detach(self) -> None:
        """Stop tracing the engine; nodes made meanwhile are announced if used later. Nodes
        collected for a step are sent now."""
        if self.engine.tracer is self:
            self.engine.tracer = None
        with self._lock:
            self._send_unsent()
            if self._since != math.inf:
                self._ranges.append((int(self._since), self._last_id + 1))
                self._since = math.inf

    def forget_all(self) -> None:
        """Forget which nodes were announced (the consumer starts over): every node is
        announced again, with its ancestors, when the program next uses it. Structures are
        forgotten too: the next step goes out as events and defines a new one."""
        with self._lock:
            self._known.clear()
            self._ranges.clear()
            self._since = math.inf
            self._starting = True
            self._structure = self._last_step = None
            if self._sent or self._open:  # the step in progress sent some nodes before
                self._troubles += 1
            self._send_unsent()

    # --- the hooks the engine calls -------------------------------------------------------

    def forward(self, node: Value) -> None:
        # (While a structure is known, `_collect` puts `_pending.append` in its place.)
        self._forward_full(node)
        self._pending.append(node)
        self._sent += 1
        if self._sent > MAX_STEP:
            with self._lock:
                self._trim()

    def _collect(self, on: bool) -> None:
        """Whether the forward hook only collects the step's nodes (a structure is known:
        the step is compared with it when it ends) or sends each node as it is made. Only
        the engine's thread calls it, so the hook it swaps is never half changed."""
        self._collecting = on
        self._engine_clock = _thread_clock()
        if on:
            vars(self)["forward"] = self._pending.append  # a C function: the cheapest hook
        else:
            vars(self).pop("forward", None)

    def _forward_full(self, node: Value) -> None:
        """Buffer the `forward` of `node`, after what its parents need (see _check_parent)."""
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
            self._lose(1)
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
        traced node uses it (docs/protocol.md). A collected node's label is read when the
        step is compared or sent."""
        if not (self._collecting or self._silent):
            if self._is_known(node):
                self._emit((LABEL, perf_counter_ns(), node._id, node.label, None))
            return
        with self._lock:
            if not self._silent and node._id >= self._unsent_from():
                return  # collected and not sent (the usual case: nn labels each neuron's output)
            if self._is_known(node):
                self._emit((LABEL, perf_counter_ns(), node._id, node.label, None))
            elif self._silent:  # perhaps a node of the step whose pass runs: compared already
                self._spoiled = True

    def backward_begin(self, root: Value) -> None:
        with self._lock:
            if self._explicit:  # numbered when the step ends (`end_step`)
                self._open.append([0, 0, [], root])
                return
            self.passes += 1
            nested = bool(self._open)
            self._open.append([self.passes, 0, [], root])
            if nested:
                if self._silent:
                    self._go_loud()
                self._emit((BACKWARD_BEGIN, perf_counter_ns(), root._id, self.passes, None))
                return
            self._close_step(root)
            if not self._silent:
                self._emit((BACKWARD_BEGIN, perf_counter_ns(), root._id, self.passes, None))

    def backward(self, node: Value) -> None:
        # node.grad is this pass's gradient: backward() sets aside what earlier passes left
        # and adds it back after backward_end (see docs/protocol.md).
        entry = self._open[-1]
        entry[1] += 1
        if self._silent:  # (its steps are the structure's: see Structure.same_run)
            self._silent_data.append(node._data)
            self._silent_grads.append(node._grad)
            return
        entry[2].append(node)
        if self._explicit:
            return
        if (node._opdef is None or node._id < self._since) and not self._is_known(node):
            self._announce(node)
        if self.pending() >= self.max_buffer:
            self._lose(1)
            return
        self.buffer.extend((BACKWARD, perf_counter_ns(), node._id, node._grad, None))

    def backward_steps(self, nodes: list[Value]) -> None:
        """The backward steps of `nodes` have run, in this order (a chunk of a pass).

        One buffered item for the whole chunk: the nodes' ids and grads, read now.
        """
        entry = self._open[-1]
        entry[1] += len(nodes)
        if self._silent:  # (its steps are the structure's: see Structure.same_run)
            # Their numbers, read now while the chain rule has the nodes in the CPU's cache
            # (read at the pass's end, 65,000 nodes cost three times as much).
            self._silent_data += [node._data for node in nodes]
            self._silent_grads += [node._grad for node in nodes]
            return
        entry[2] += nodes
        if self._explicit:
            return
        self._announce_unknown(nodes)
        self._steps(nodes)

    def _announce_unknown(self, nodes: list[Value]) -> None:
        """Announce the nodes of backward steps that the viewers do not know: leaves, and
        nodes made before tracing started."""
        since = self._since
        for node in [n for n in nodes if n._opdef is None or n._id < since]:
            if not self._is_known(node):
                self._announce(node)

    def _steps(self, nodes: list[Value], grads: list[float] | None = None) -> None:
        count = len(nodes)
        if self.pending() + count > self.max_buffer:
            self._lose(count)
            return
        ids = [node._id for node in nodes]
        if grads is None:
            grads = [node._grad for node in nodes]
        self._extra_in += count - 1
        self.buffer.extend((BACKWARD_STEPS, perf_counter_ns(), ids, grads, None))

    def _chunked_steps(self, nodes: list[Value], grads: list[float]) -> None:
        """The steps of a pass that was not sent while it ran, in chunks as the engine
        reports them (reverse.TRACE_CHUNK: a viewer sees the pass advance)."""
        self._announce_unknown(nodes)
        for start in range(0, len(nodes), 256):
            self._steps(nodes[start : start + 256], grads[start : start + 256])

    def backward_end(self, root: Value) -> None:
        with self._lock:
            if self._explicit:
                nodes = self._open.pop()[2]
                self._merged.append((nodes, list(map(_get_grad, nodes)), root))
                self._explicit_step_asked()
                return
            if len(self._open) > 1:  # a pass run inside a pass: it ends no step
                pass_ = self._open.pop()[0]
                self._emit((BACKWARD_END, perf_counter_ns(), root._id, pass_, None))
                return
            pass_, _, order, _ = self._open[0]
            nodes = self._closed
            if self._silent:
                structure = self._matched
                if (
                    not self._spoiled
                    and structure is not None
                    and structure.same_run(self._open[0][1])
                ):
                    self._open.pop()
                    self._silent = False
                    self._compact_step(nodes, pass_, read=True)
                    self._closed = self._pool = []
                    self._step_asked_in_pass()
                    return
                self._go_loud()
            self._open.pop()
            self._emit((BACKWARD_END, perf_counter_ns(), root._id, pass_, None))
            self._end_step(nodes, order, root, pass_)
            self._closed = self._pool = []
            self._step_asked_in_pass()

    def backward_failed(self, root: Value, nodes: list[Value], error: BaseException) -> None:
        """The pass over `nodes` (backward's topological order) raised `error`, and the
        engine put every grad back as it was before the pass. Viewers hold the grads the pass
        reported: report those nodes again with the grads they have now, then end the pass
        with its `error` (docs/protocol.md), so that viewers, snapshots and recordings hold
        what the engine holds. A failed pass ends no step: the step goes on, as events."""
        with self._lock:
            if self._explicit:  # it added nothing: the step's merged pass leaves it out
                self._open.pop()
                self._explicit_step_asked()
                return
            if self._silent:
                self._go_loud()
            pass_, reported, _, _ = self._open.pop()
            if reported:
                # Steps run from the root (the last node) down: the first `reported` of them.
                self._steps(nodes[: -reported - 1 : -1])
            self._emit((BACKWARD_END, perf_counter_ns(), root._id, pass_, _why(error)))
            if not self._open:  # the step's nodes, sent, stay the step's
                self._pending[0:0] = self._closed
                self._sent += len(self._closed)
                self._flushed = True
                self._oversize |= not self._closed_ok
                self._closed = self._pool = []

    # --- steps ----------------------------------------------------------------------------

    def end_step(self) -> None:
        """`opgraph.step()`: the step ends here, not at the end of each pass (from now on).
        Called during a pass (from a hook), it ends the step when the pass ends."""
        with self._lock:
            if self._open:
                self._step_asked = True
                return
            self._explicit = True
            self._end_explicit()

    def _step_asked_in_pass(self) -> None:
        # step() called during the pass that just ended this step: it asked for that end.
        if self._step_asked:
            self._step_asked = False
            self._explicit = True

    def _explicit_step_asked(self) -> None:
        if self._step_asked and not self._open:
            self._step_asked = False
            self._end_explicit()

    def _take_step(self) -> tuple[list[Value], int, bool]:
        """The collected nodes of the step that ends, how many of them were sent, and whether
        the step may be compared with the structure; the next step starts empty."""
        pending, sent = self._pending, self._sent
        nodes = pending[:]
        del pending[: len(nodes)]  # (the engine's thread, or it waits for the lock: atomic)
        self._sent = 0
        comparable = self._collecting and not self._flushed and not self._oversize
        self._closed_ok = not self._oversize
        self._flushed = self._oversize = False
        return nodes, sent, comparable and bool(nodes) and self._structure is not None

    def _close_step(self, root: Value) -> None:
        """The outermost pass begins: it ends the step of the nodes collected so far. If they
        have the known structure, the pass runs silent; else they go out as events."""
        nodes, sent, comparable = self._take_step()
        self._closed = nodes
        structure = self._structure
        if comparable and structure is not None:
            pool = structure.pool(nodes)
            # (The root too: the steps of a pass follow from its root and the graph.)
            if structure.same_nodes(nodes, pool) and pool[structure.root] is root:
                self._silent, self._spoiled, self._pool = True, False, pool
                self._matched = structure
                self._silent_data, self._silent_grads = [], []
                return
        self._send(nodes[sent:])

    def _go_loud(self) -> None:
        """The silent pass's step goes out as events after all: its nodes, the pass's begin
        and the steps it ran so far."""
        self._silent = False
        pass_, reported, order, root = self._open[0]
        assert self._matched is not None  # (the structure the silent step matched)
        order += self._matched.pass_order(self._pool)[:reported]  # the steps it ran so far
        self._send(self._closed)
        self._emit((BACKWARD_BEGIN, perf_counter_ns(), root._id, pass_, None))
        # (Each step's grad is final once it ran: later steps add only to nodes after it.)
        self._chunked_steps(order, list(map(_get_grad, order)))

    def _end_explicit(self) -> None:
        """opgraph.step(): the step's nodes and its passes, merged into one pass."""
        nodes, sent, comparable = self._take_step()
        merged, self._merged = self._merged, []
        if not merged:  # no pass: no step, its nodes go out as events
            self._send(nodes[sent:])
            return
        order, grads, root = merge(merged)
        self.passes += 1
        structure = self._structure
        if comparable and structure is not None:
            pool = structure.pool(nodes)
            if structure.same_nodes(nodes, pool) and structure.same_pass(order, root, pool):
                self._compact_step(nodes, self.passes, (order, grads))
                return
        self._send(nodes[sent:])
        self._emit((BACKWARD_BEGIN, perf_counter_ns(), root._id, self.passes, None))
        self._chunked_steps(order, grads)
        self._emit((BACKWARD_END, perf_counter_ns(), root._id, self.passes, None))
        self._end_step(nodes, order, root, self.passes, grads)

    def _compact_step(
        self,
        nodes: list[Value],
        pass_: int,
        merged: tuple[list[Value], list[float]] | None = None,
        silent: bool = True,
        read: bool = False,
    ) -> None:
        """A step of the known structure: one STEP record with its numbers (`silent`: and
        nothing else, its nodes and pass were not sent). The grads are the nodes' own (this
        pass's: backward_end comes before backward adds back what earlier passes left), or
        `merged`'s, a merged pass's nodes and grads (opgraph.step()); `read`: the numbers
        the silent pass read as it ran (`_silent_data`, `_silent_grads`)."""
        structure = self._structure
        assert structure is not None
        first = nodes[0]._id
        if self._starting:
            self._since, self._starting = first, False
        self._last_id = nodes[-1]._id
        inputs = structure.inputs
        data: Any
        grads: Any
        if read:
            pool, unreached = self._pool, structure.unreached
            data, grads = self._silent_data, self._silent_grads
            self._silent_data, self._silent_grads = [], []
            data += [pool[i]._data for i in unreached]
            grads += [0.0] * len(unreached)
            data, grads = structure.gather(data), structure.gather(grads)
        else:
            data = [n._data for n in nodes]
            data += [x._data for x in inputs]
            if merged is None:
                grads = [n._grad for n in nodes]
                grads += [x._grad for x in inputs]
                for i in structure.unreached:
                    grads[i] = 0.0
            else:
                grads = [0.0] * len(data)
                where = {id(node): i for i, node in enumerate([*nodes, *inputs])}
                for node, grad in zip(*merged, strict=True):
                    grads[where[id(node)]] = grad
        if self.pending() >= self.max_buffer:  # lost: its numbers are not spent
            self._lose(1)
            if silent:  # (nothing else used its pass's number)
                self.passes -= 1
            return
        self.steps += 1
        head = (self.steps, structure.number, first, pass_, self.dtype)
        typecode = DTYPES[self.dtype]
        data_bytes, grad_bytes = packed(typecode, data), packed(typecode, grads)
        self.buffer.extend((STEP, perf_counter_ns(), head, data_bytes, grad_bytes))
        self._last_step = (first, structure)
        known = self._known
        for x in inputs:  # the leaves' data was sent: a later `data` check compares with it
            if x._opdef is None:
                known[x._id] = x._data
        self._troubles_at = self._troubles

    def _end_step(
        self,
        nodes: list[Value],
        order: list[Value],
        root: Value,
        pass_: int,
        grads: list[float] | None = None,
    ) -> None:
        """A step that went out as events ended: its STRUCTURE and STEP records (unless it
        has no nodes or too many, or events were lost meanwhile), and it is the structure
        that later steps are compared with."""
        troubled = self._troubles != self._troubles_at
        self._troubles_at = self._troubles
        if troubled:  # viewers may lack some of its nodes: no structure to build on
            self._structure = None
            self._collect(False)
            return
        if not nodes or not self._closed_ok:
            return
        defined = define(self.structures + 1, nodes, order, root)
        if defined is None:  # too big for a structure
            return
        structure, (arrays, root_index) = defined
        if self.pending() + 2 > self.max_buffer:
            self._lose(2)
            self._troubles_at = self._troubles
            self._structure = None
            self._collect(False)
            return
        self.structures += 1
        self._emit((STRUCTURE, perf_counter_ns(), structure.number, arrays, root_index))
        self._structure = structure
        self._collect(True)
        merged = None if grads is None else (order, grads)
        self._compact_step(nodes, pass_, merged, silent=False)

    def _send(self, nodes: list[Value]) -> None:
        """Send collected nodes as events, as the forward hook does when it sends them."""
        for node in nodes:
            self._forward_full(node)

    def _send_unsent(self) -> None:
        """Send the step's collected nodes that wait (lock held, the engine's or the
        consumer's thread): the step then goes out as events (a new structure)."""
        if self._silent:
            self._spoiled = True
            return
        pending, sent = self._pending, self._sent
        count = len(pending)
        if count > sent:
            self._send(pending[sent:count])
            self._sent = count
            self._flushed = True

    def send_collected(self) -> None:
        """Send the nodes collected for the step in progress now, as events (any thread:
        `flush()` asks for everything so far). The step is then sent in full."""
        with self._lock:
            self._send_unsent()

    def _trim(self) -> None:
        """The step outgrew MAX_STEP: it gets no structure, and its sent nodes are let go."""
        del self._pending[: self._sent]
        self._sent = 0
        self._oversize = True

    def _flush_idle(self) -> None:
        """The consumer's side: send the collected nodes once the engine has added none for
        `idle_ns` (no pass came: a notebook, an evaluation), or once they are too many."""
        count = len(self._pending)
        waiting = count - self._sent
        if waiting <= 0 or self._silent:
            self._watch = (count, 0, 0, 0)
            return
        now, busy = perf_counter_ns(), self._engine_cpu_ns()
        seen, since, busy_since, looks = self._watch
        # The engine added nodes, or ran (between its last node and its pass: reachable(),
        # sorting the nodes, under load for longer than `idle`) since the last look.
        if seen != count or busy - busy_since > BUSY_NS:
            self._watch = (count, now, busy, 0)
            since, looks = now, 0
        else:
            looks += 1
            self._watch = (seen, since, busy_since, looks)
        # Idle means `idle` seconds AND several looks in a row: a consumer that held the GIL
        # for longer than `idle` (a large snapshot for a joining viewer) kept the engine from
        # running, which is not idleness; between looks the consumer sleeps, and the engine
        # gets its turn. (`idle=0`: at every look.)
        patient = self.idle_ns > 0 and (now - since < self.idle_ns or looks < IDLE_LOOKS)
        if waiting <= MAX_STEP and patient:
            return
        with self._lock:
            if self._collecting and not self._silent:
                self._send_unsent()
                if self._sent > MAX_STEP:
                    self._trim()

    def _engine_cpu_ns(self) -> int:
        """The CPU time of the engine's thread (the one that ended the last step), or 0 where
        a thread's CPU clock cannot be read: the idle check then goes by the clock alone."""
        clock = self._engine_clock
        if clock is None:
            return 0
        try:
            return time.clock_gettime_ns(clock)
        except OSError:  # the thread ended
            self._engine_clock = None
            return 0

    # --- data changes and late announcements ----------------------------------------------

    def _unsent_from(self) -> float:
        """The id of the first collected node not sent yet (inf if none): it and the nodes
        made after it are not known to the viewers."""
        if self._silent:
            return self._closed[0]._id
        if self._collecting:
            pending, sent = self._pending, self._sent
            if len(pending) > sent:
                return pending[sent]._id
        return math.inf

    def _is_known(self, node: Value) -> bool:
        """Whether the viewers were told about `node` (and it was not forgotten since)."""
        id_ = node._id
        if id_ in self._known:
            return True
        if node._opdef is None:  # leaves are all in _known, but those of the last step
            return self._last_step_leaf(id_)
        if id_ >= self._since:
            return id_ < self._unsent_from()
        return any(first <= id_ < end for first, end in self._ranges)

    def _last_step_leaf(self, id_: int) -> bool:
        """Whether `id_` is a leaf of the last step sent as one STEP record (its nodes are not
        remembered one by one: the structure says which ids were its leaves)."""
        if self._last_step is None:
            return False
        first, structure = self._last_step
        offset = id_ - first
        offsets = structure.offsets
        i = offset if structure.contiguous else bisect.bisect_left(offsets, offset)
        return 0 <= i < len(offsets) and offsets[i] == offset and structure.ops[i] is None

    def touch(self, values: Iterable[Value]) -> None:
        """Announce the current data of `values` now if it changed since it was last sent
        (the step's collected nodes go out first, as events)."""
        with self._lock:
            if self._silent:
                self._go_loud()
            self._send_unsent()
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
            self._lose(1)
        else:
            self.buffer.extend(event)

    def _lose(self, count: int) -> None:
        """`count` events did not fit in the buffer."""
        self.lost += count
        self._troubles += 1

    # --- the consumer's side --------------------------------------------------------------

    def drain(self, limit: int = 1 << 62) -> list[Any]:
        """Take buffered records, oldest first, until they hold `limit` events (the last
        record, a chunk of backward steps, may pass it) or none is left, as a flat list of
        fields (see `records`). Collected nodes the engine left waiting (`_flush_idle`) are
        sent first.

        Thread-safe against the engine, which adds whole records at the end only: the
        records are copied from the front, then deleted from it.
        """
        if self._collecting:
            self._flush_idle()
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


def _thread_clock() -> int | None:
    """The CPU clock of the calling thread, for another thread to read; None where there is
    none (pthread_getcpuclockid is Unix only)."""
    try:
        return time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return None


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
