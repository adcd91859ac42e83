"""The forms a trace event takes on its way to a viewer: a record in the tracer's buffer (a
kind, a time and three fields), the protocol map of docs/protocol.md (`event_map`,
`event_maps`), and the packed frame of a `forward` event (`forward_packer`, which the server
uses on its fast path). The tracer writes records; whoever drains them reads them here.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..value import Value

# Event kinds as they travel through the buffer. The buffer is a flat list of fields: each
# record is RECORD fields, the kind first, then the time, then three more (None when unused).
# BACKWARD_STEPS is one record for a chunk of backward steps: (kind, t, ids, grads, None).
# The steps of docs/protocol.md ("Steps"), one event each:
# STRUCTURE: (kind, t, number, (ids, offsets, inputs, order), root), the four arrays of
#   typecodes "Q", "I", "Q", "I" (uint64 and uint32) and root an int;
# STEP: (kind, t, (step, structure, first, pass), data, grad), two arrays of typecode "d"
#   (float64) or "f" (float32, the tracer's dtype="f4").
FORWARD, BACKWARD, BACKWARD_BEGIN, BACKWARD_END, DATA, LABEL, BACKWARD_STEPS = range(7)
STRUCTURE, STEP = 7, 8
RECORD = 5


def records(fields: list[Any]) -> Iterator[tuple]:
    """The records of a flat list of fields from `Tracer.drain`, as tuples."""
    return zip(*[iter(fields)] * RECORD, strict=True)


def forward_packer(
    arity: int,
    pack: Callable[..., bytes],
    parts: Sequence[bytes],
    keep: dict[int, bytes | tuple],  # (a hub's graph: its other nodes are tuples)
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
        scope = node.scope
        if scope:  # the optional `scope` field (docs/protocol.md)
            out["scope"] = scope
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
    if kind == STRUCTURE:
        ids, offsets, inputs, order = (_le_bytes(a) for a in event[3])
        out = {"type": "structure", "seq": seq, "structure": event[2], "ids": ids}
        out.update(offsets=offsets, inputs=inputs, order=order, root=event[4], t=t)
        return out
    if kind == STEP:
        step, structure, first, pass_ = event[2]
        data, grad = event[3], event[4]
        out = {"type": "step", "seq": seq, "step": step, "structure": structure, "first": first}
        out.update({"pass": pass_, "data": _le_bytes(data), "grad": _le_bytes(grad), "t": t})
        if data.typecode == "f":
            out["dtype"] = "f4"
        return out
    return {"type": "label", "seq": seq, "id": event[2], "label": event[3], "t": t}


# The protocol's u4 and u8 (the typecodes "I" and "Q" have these sizes on every platform
# CPython supports; checked once).
assert array("I").itemsize == 4 and array("Q").itemsize == 8


def _le_bytes(numbers: array) -> bytes:
    """An array's items as little-endian bytes, the protocol's `bin` arrays."""
    if sys.byteorder != "little":
        numbers = array(numbers.typecode, numbers)
        numbers.byteswap()
    return numbers.tobytes()
