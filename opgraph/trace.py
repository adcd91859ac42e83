"""The tracer: what the engine tells a viewer about each node, as events of docs/protocol.md.

The engine calls an attached tracer from its hot path (`Value.__init__`, the label setter,
backward), so the tracer does as little as it can there: it appends one small tuple per event
to a buffer. Whoever consumes the trace (the server's event loop, or a publisher sending to a
hub) drains the buffer from another thread, numbers the events and turns them into the maps
of the protocol with `event_map`.

Data changes: the engine does not watch `.data` assignments. The tracer remembers the data
it last announced per node and, whenever a node is used as an operand, announces a `data`
event first if the value changed (an optimizer step changes the parameters, the next forward
uses them). `touch(values)` announces changes right away.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import Engine
    from .value import Value

# Event kinds as they travel through the buffer. The buffer is a flat list of fields: each
# record is RECORD fields, the kind first, then the time, then three more (None when unused).
# BACKWARD_STEPS is one record for a chunk of backward steps: (kind, t, ids, grads, None).
FORWARD, BACKWARD, BACKWARD_BEGIN, BACKWARD_END, DATA, LABEL, BACKWARD_STEPS = range(7)
RECORD = 5

_MISSING = object()

# --- text for viewers -----------------------------------------------------------------------
# Labels and scope paths travel as msgpack strings (UTF-8) to the hub and the page, which check
# them against these limits. One rule, on every side (docs/protocol.md, "Strings"):
# a length counts Unicode code points (Python's `len`; the page counts the same way, not in
# UTF-16 units), and the engine makes every label and scope path fit where it is made (the
# label of a Value, `scope()`), so what a viewer shows is what the program has. The server
# takes these limits from here (server/events.py).
MAX_LABEL = 10_000  # code points of a node's label
MAX_SCOPE = 1000  # code points of a scope path ("L0/N3")
ELLIPSIS = "\u2026"  # ends a label cut to MAX_LABEL
_SURROGATE = re.compile("[\ud800-\udfff]")


def viewer_text(text: str, limit: int | None = None) -> str:
    """`text` as every viewer can take it: each lone surrogate (from a file name decoded with
    `surrogateescape`, say), which UTF-8 cannot encode, replaced by U+FFFD; and when `limit`
    is given and `text` has more code points, its first `limit - 1` followed by `…`.
    Free for the usual short ASCII text."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _SURROGATE.sub("\ufffd", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + ELLIPSIS
    return text


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

    def __init__(self, engine: Engine, *, max_buffer: int = 2_000_000, max_known: int = 500_000):
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
        a = node._a  # the parents: slots _a, _b, _more (see value.py)
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
            if b is not None:
                if b._opdef is None:
                    if known.get(b._id, _MISSING) is not b._data:
                        self._check_parent(b)
                elif b._id < since:
                    self._check_parent(b)
                if node._more is not None:  # (no iterator made for the usual case)
                    for parent in node._more:
                        self._check_parent(parent)
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
        buffer.extend((FORWARD, perf_counter_ns(), node, node._data, node._label))

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
            self._emit((LABEL, perf_counter_ns(), node._id, node._label, None))

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
        self._emit((FORWARD, perf_counter_ns(), node, node._data, node._label))

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


def records(fields: list[Any]) -> Iterator[tuple]:
    """The records of a flat list of fields from `Tracer.drain`, as tuples."""
    return zip(*[iter(fields)] * RECORD, strict=True)


def forward_packer(
    arity: int, pack: Callable[..., bytes], parts: Sequence[bytes], keep: dict[int, bytes]
) -> Any:
    """A function `(seq, node, data, t) -> bytes` that packs a FORWARD record of a node with
    `arity` (0 to 2) parents as `pack(parts[0], seq, parts[1], id, parts[2], first parent's
    id, ..., data, parts[-1], t)` (a struct template whose constant parts precede each
    number: see server/encode.py), and keeps the result in `keep[id]`.

    A consumer reads a buffered node through Value's read API (`id`, `op`, `parent_ids`:
    docs/api.md). This one reader is here, on the engine's side, because it reads the slots:
    it runs for most events the server sends, where a property per read would cost a tenth
    of the server's time per event.
    """
    if arity == 2:
        a, b, c, d, e, f = parts

        def binary(seq: int, node: Value, data: float, t: int) -> bytes:
            id_ = node._id
            keep[id_] = packed = pack(a, seq, b, id_, c, node._a._id, d, node._b._id, e, data, f, t)
            return packed

        return binary
    if arity == 1:
        a, b, c, e, f = parts

        def unary(seq: int, node: Value, data: float, t: int) -> bytes:
            id_ = node._id
            keep[id_] = packed = pack(a, seq, b, id_, c, node._a._id, e, data, f, t)
            return packed

        return unary
    a, b, c, f = parts

    def leaf(seq: int, node: Value, data: float, t: int) -> bytes:
        id_ = node._id
        keep[id_] = packed = pack(a, seq, b, id_, c, data, f, t)
        return packed

    return leaf


def event_count(item: tuple) -> int:
    """How many events a buffered item holds."""
    return len(item[2]) if item[0] == BACKWARD_STEPS else 1


def plain_number(x: Any) -> float | int:
    """`x` as a number msgpack can pack: a float or an int stays, anything else (a numpy
    float32 or int64 a program assigned to `.data`) becomes a float, and nan if it cannot."""
    if type(x) is float or type(x) is int:
        return x
    try:
        return float(x)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def event_maps(items: Iterable[tuple], first_seq: int, t0: int) -> list[dict[str, Any]]:
    """The protocol maps of buffered items, numbered from `first_seq`."""
    maps, seq = [], first_seq
    for item in items:
        if item[0] == BACKWARD_STEPS:
            t = (item[1] - t0) // 1000
            for id_, grad in zip(item[2], item[3], strict=True):
                if type(grad) is not float:
                    grad = plain_number(grad)
                maps.append({"type": "backward", "seq": seq, "id": id_, "grad": grad, "t": t})
                seq += 1
        else:
            maps.append(event_map(item, seq, t0))
            seq += 1
    return maps


def event_map(event: tuple, seq: int, t0: int) -> dict[str, Any]:
    """The protocol map of one buffered event (not a BACKWARD_STEPS chunk: see
    `event_maps`), numbered `seq`; `t` counts from `t0` (ns)."""
    kind, t = event[0], (event[1] - t0) // 1000
    if kind == FORWARD:
        _, _, node, data, label = event
        op = node._opdef
        parents = [p._id for p in node._prev]
        out = {"type": "forward", "seq": seq, "id": node._id, "op": op and op.name}
        out.update(parents=parents, data=plain_number(data), label=label, t=t)
        if op is not None and op.constants:
            out["const"] = [value for _, value in op.constants]
        if node._scope:  # the optional `scope` field (docs/protocol.md)
            out["scope"] = node._scope
        return out
    if kind == BACKWARD:
        grad = plain_number(event[3])
        return {"type": "backward", "seq": seq, "id": event[2], "grad": grad, "t": t}
    if kind == BACKWARD_BEGIN:
        return {"type": "backward_begin", "seq": seq, "root": event[2], "pass": event[3], "t": t}
    if kind == BACKWARD_END:
        end = {"type": "backward_end", "seq": seq, "root": event[2], "pass": event[3], "t": t}
        if event[4] is not None:  # the pass failed, and says why
            end["error"] = event[4]
        return end
    if kind == DATA:
        return {"type": "data", "seq": seq, "id": event[2], "data": plain_number(event[3]), "t": t}
    return {"type": "label", "seq": seq, "id": event[2], "label": event[3], "t": t}


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


_TOKEN = re.compile(r"(token=)[^&#\s'\":;,)\]]+")


def redact(text: str) -> str:
    """`text` with the value of every `token=` in it replaced by `***`: what opgraph prints
    about a hub URL (messages, errors) must not hand its token to whoever reads the logs."""
    return _TOKEN.sub(r"\1***", text)


# --- starting a trace -----------------------------------------------------------------------


def _server() -> Any:
    """The tracing server (`opgraph.server`, with its `server` and `publish` modules), imported
    on first use: it loads websockets and msgpack. The one place where the engine reaches the
    server: `serve`, `Engine.serve` and `from_environment` all go through here."""
    import opgraph.server.publish
    import opgraph.server.server

    return opgraph.server


def serve(
    port: int = 8765,
    host: str = "127.0.0.1",
    *,
    engine: Engine | None = None,
    **options: Any,
):
    """Serve the trace of `engine` (default: the default engine); see `Engine.serve`."""
    from .engine import default_engine

    engine = engine or default_engine()
    return _server().server.serve_engine(engine, port=port, host=host, **options)


def from_environment(engine: Engine) -> Any:
    """Start tracing `engine` as the OPGRAPH_TRACE environment variable asks, if it does.

    `OPGRAPH_TRACE=1` serves the trace on port 8765 (OPGRAPH_TRACE_PORT chooses another; 0 a
    free one) and prints the viewer's URL; `OPGRAPH_TRACE=ws://host:port` publishes to a hub
    started with `opgraph serve` (connecting in the background: see `Publisher`).
    OPGRAPH_TRACE_RECORD=path also records the served trace. Errors are reported on stderr,
    tokens hidden, and leave the program running untraced.
    """
    setting = os.environ.get("OPGRAPH_TRACE", "").strip()
    if setting in ("", "0", "false", "no", "off"):
        return None
    try:
        if setting.startswith(("ws://", "wss://")):
            return _server().publish.publish(engine, setting, at_exit=True)
        if setting not in ("1", "true", "yes", "on"):
            raise ValueError(f"expected 1 or a hub URL like ws://127.0.0.1:8765, got {setting!r}")
        port_setting = os.environ.get("OPGRAPH_TRACE_PORT", "8765").strip()
        if not port_setting.isdigit() or int(port_setting) > 65535:
            raise ValueError(
                f"OPGRAPH_TRACE_PORT must be a port number 0-65535, got {port_setting!r}"
            )
        port = int(port_setting)
        record = os.environ.get("OPGRAPH_TRACE_RECORD") or None
        serve_engine = _server().server.serve_engine
        return serve_engine(engine, port=port, record=record, at_exit=True, announce=True)
    except Exception as exc:  # tracing must never stop the program
        print(redact(f"opgraph: OPGRAPH_TRACE: tracing is off: {exc}"), file=sys.stderr)
        return None
