"""Fast msgpack encoding of the two most frequent events, `forward` and `backward`.

Packing a dict with msgpack costs a dict, and the packer walking it. These events have fixed
keys, so most of their bytes are constant: `struct` writes the numbers into a template in one
call. The result is ordinary msgpack (a map with the same keys, integers as uint32, floats as
float64): any msgpack decoder reads it as the map `msgpack.packb` would give. Numbers that do
not fit the template (ids past 2**32) raise `struct.error`; callers fall back to `packb`.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence

import msgpack

from opgraph.contracts import Node
from opgraph.trace import forward_packer, viewer_text

_pack = msgpack.Packer().pack

# A node of a hub's graph (hub.py) is the packed `forward` map it was announced with, or a
# tuple (op, parents, data, label, const, scope) once something changed it. What it costs is
# about its packed bytes (or its parts) plus NODE_OVERHEAD (its entry in the dict, the object).
NODE_OVERHEAD = 120


def _text(text: str | None) -> bytes:
    """A string field, packed. The engine makes labels and scope paths UTF-8-safe where it
    makes them (opgraph.trace.viewer_text); a string that is not (a label restored from an
    old pickle, an op's name) is packed with its lone surrogates replaced, rather than failing
    the whole batch it is in."""
    try:
        return _pack(text)
    except UnicodeEncodeError:
        if text is None:  # nil always packs: this is a bug, not the text
            raise
        return _pack(viewer_text(text))


def _key(name: str) -> bytes:
    return _pack(name)


# backward: {"type": "backward", "seq": u32, "id": u32, "grad": f64, "t": u32}
_B_PARTS = (
    b"\x85" + _key("type") + _pack("backward") + _key("seq") + b"\xce",
    _key("id") + b"\xce",
    _key("grad") + b"\xcb",
    _key("t") + b"\xce",
)
_BACKWARD = struct.Struct(
    ">" + "".join(f"{len(part)}s{fmt}" for part, fmt in zip(_B_PARTS, "IIdI", strict=True))
)


def backward_bytes(seq: int, id_: int, grad: float, t: int) -> bytes:
    a, b, c, d = _B_PARTS
    return _BACKWARD.pack(a, seq, b, id_, c, grad, d, t)


# forward: {"type": "forward", "seq"[, "scope"], "id", "op", "parents", "data", "label", "t"
# [, "const"]}: 8 fields, one more for each optional one (`scope` comes right after `seq`,
# where node_bytes finds it).
_F_START = {
    n: bytes([0x80 | n]) + _key("type") + _pack("forward") + _key("seq") + b"\xce"
    for n in (8, 9, 10)
}
_F_ID = _key("id") + b"\xce"
_F_HEAD = struct.Struct(f">{len(_F_START[8])}sI")
_ID = struct.Struct(">I")
_SCOPE_KEY = _key("scope")
_OP_KEY = _key("op")
_PARENTS_KEY = _key("parents")
_DATA = struct.Struct(f">{len(_key('data')) + 1}sd")
_DATA_KEY = _key("data") + b"\xcb"
_LABEL_KEY = _key("label")
_T = struct.Struct(f">{len(_key('t')) + 1}sI")
_T_KEY = _key("t") + b"\xce"
_CONST_KEY = _key("const")
_PARENTS = {
    0: None,
    1: struct.Struct(">BBI"),
    2: struct.Struct(">BBIBI"),
}
_ops: dict[str | None, bytes] = {}


def _parents_bytes(ids: Sequence[int]) -> bytes:
    n = len(ids)
    if n == 2:
        return _PARENTS[2].pack(0x92, 0xCE, ids[0], 0xCE, ids[1])
    if n == 1:
        return _PARENTS[1].pack(0x91, 0xCE, ids[0])
    if n == 0:
        return b"\x90"
    for id_ in ids:  # same rule as the rest: ids must fit in 32 bits
        if not 0 <= id_ < 1 << 32:
            raise struct.error("id out of range")
    return _pack(list(ids))


def forward_bytes(
    seq: int,
    id_: int,
    op: str | None,
    parents: Sequence[int],
    data: float,
    label: str,
    t: int,
    const: list[float] | None = None,
    scope: str = "",
) -> bytes:
    if not label and not const and len(parents) <= 2:
        template = _templates.get((op, len(parents), scope))
        if template is None:
            if len(_templates) > 10_000:  # one per op, arity and scope path: keep it bounded
                _templates.clear()
            template = _templates[op, len(parents), scope] = _template(op, len(parents), scope)
        pack, parts = template
        if len(parents) == 2:
            a, b, c, d, e, f = parts
            return pack(a, seq, b, id_, c, parents[0], d, parents[1], e, data, f, t)
        if len(parents) == 1:
            a, b, c, e, f = parts
            return pack(a, seq, b, id_, c, parents[0], e, data, f, t)
        a, b, c, f = parts
        return pack(a, seq, b, id_, c, data, f, t)
    return _forward_general(seq, id_, op, parents, data, label, t, const, scope)


def _scope_part(scope: str) -> bytes:
    """The `scope` field (key and value), or nothing for a node outside any scope."""
    return _SCOPE_KEY + _text(scope) if scope else b""


# The common forward (no label, no constants, at most two parents) as one struct per op,
# arity and scope: constant byte strings between the numbers.
_templates: dict[tuple[str | None, int, str], tuple] = {}


def _template(
    op: str | None, arity: int, scope: str = ""
) -> tuple[Callable[..., bytes], tuple[bytes, ...]]:
    head = _F_START[8 + bool(scope)]
    id_part = _scope_part(scope) + _F_ID
    op_part = _OP_KEY + _text(op) + _PARENTS_KEY
    tail = _LABEL_KEY + b"\xa0" + _T_KEY
    if arity == 2:
        parts = (head, id_part, op_part + b"\x92\xce", b"\xce", _DATA_KEY, tail)
        formats = "IIIIdI"
    elif arity == 1:
        parts = (head, id_part, op_part + b"\x91\xce", _DATA_KEY, tail)
        formats = "IIIdI"
    else:
        parts = (head, id_part, op_part + b"\x90" + _DATA_KEY, tail)
        formats = "IIdI"
    layout = "".join(f"{len(p)}s{f}" for p, f in zip(parts, formats, strict=True))
    return struct.Struct(">" + layout).pack, parts


def _forward_general(seq, id_, op, parents, data, label, t, const, scope="") -> bytes:
    op_bytes = _ops.get(op)
    if op_bytes is None:
        op_bytes = _ops[op] = _text(op)
    has_const = bool(const)
    parts = [
        _F_HEAD.pack(_F_START[8 + has_const + bool(scope)], seq),
        _scope_part(scope),
        _F_ID,
        _ID.pack(id_),
        _OP_KEY,
        op_bytes,
        _PARENTS_KEY,
        _parents_bytes(parents),
        _DATA.pack(_DATA_KEY, data),
        _LABEL_KEY,
        _text(label) if label else b"\xa0",
        _T.pack(_T_KEY, t),
    ]
    if has_const:
        parts.append(_CONST_KEY)
        parts.append(_pack(const))
    return b"".join(parts)


# A chunk of backward steps at once: every map has the layout of `backward_bytes` and the same
# `t`, so the chunk is that map repeated, with the numbers written in column by column: each
# column (seq, id, grad) packed with one struct call, then each of its bytes copied into every
# record by one strided slice assignment (a loop in C, not in Python).
_B_OFFSETS = {
    "seq": len(_B_PARTS[0]),
    "id": len(_B_PARTS[0]) + 4 + len(_B_PARTS[1]),
    "grad": len(_B_PARTS[0]) + 4 + len(_B_PARTS[1]) + 4 + len(_B_PARTS[2]),
}


def backward_steps_bytes(
    first_seq: int, ids: Sequence[int], grads: Sequence[float], t: int
) -> bytearray:
    """The `backward` maps of consecutive steps numbered from `first_seq`, all with time `t`,
    back to back: the same bytes as `backward_bytes` called for each."""
    count, size = len(ids), _BACKWARD.size
    out = bytearray(backward_bytes(0, 0, 0.0, t) * count)
    columns = (
        ("seq", struct.pack(f">{count}I", *range(first_seq, first_seq + count)), 4),
        ("id", struct.pack(f">{count}I", *ids), 4),
        ("grad", struct.pack(f">{count}d", *grads), 8),
    )
    for name, column, width in columns:
        offset = _B_OFFSETS[name]
        for byte in range(width):
            out[offset + byte :: size] = column[byte::width]
    return out


def forward_encoder(
    op: str | None, arity: int, keep: dict[int, bytes | tuple] | None = None, scope: str = ""
) -> Callable[[int, Node, float, int], bytes]:
    """A function `(seq, node, data, t) -> bytes` packing the `forward` of a node made by op
    `op` (nil for a leaf) with `arity` parents, no label and no constants, made in `scope`:
    `forward_bytes`
    with no checks left for each event; the bytes are also kept in `keep[node.id]`. The node
    is read by `opgraph.trace.forward_packer` (with the template of `_template`) for up to
    two parents, and by its read API beyond."""
    keep = {} if keep is None else keep
    if arity <= 2:
        return forward_packer(arity, *_template(op, arity, scope), keep)

    def general(seq: int, node: Node, data: float, t: int) -> bytes:
        id_ = node.id
        parents = node.parent_ids
        keep[id_] = packed = forward_bytes(seq, id_, op, parents, data, "", t, None, scope)
        return packed

    return general


# The snapshot's `node` map of a node, rewritten from the `forward` bytes above without
# decoding them: a forward map without constants is the header, then `type` and `seq`
# (_F_PREFIX bytes), then scope (if any), id, op, parents, data and label, then `t` (the last
# _T.size bytes). The node map keeps the middle and adds `grad` (and `pass`).
_F_PREFIX = len(_F_START[8]) + 4
_NODE_HEAD = {n: bytes([0x80 | n]) + _key("type") + _pack("node") for n in (7, 8, 9)}
_GRAD = struct.Struct(f">{len(_key('grad')) + 1}sd")
_GRAD_KEY = _key("grad") + b"\xcb"
_PASS_KEY = _key("pass")


def node_bytes(forward: bytes, grad: float, pass_: int | None) -> bytes | None:
    """The `node` map for a snapshot, from the bytes `forward_bytes` or `forward_encoder`
    made for the node; None for a forward with constants (decode it instead)."""
    scoped = forward.startswith(_SCOPE_KEY, _F_PREFIX)
    if forward[0] != 0x88 + scoped:  # one more field: it has `const`, after `t`
        return None
    middle = forward[_F_PREFIX : -_T.size]
    if pass_ is None:
        return b"".join((_NODE_HEAD[7 + scoped], middle, _GRAD.pack(_GRAD_KEY, grad)))
    head = _NODE_HEAD[8 + scoped]
    return b"".join((head, middle, _GRAD.pack(_GRAD_KEY, grad), _PASS_KEY, _pack(pass_)))


def node_size(node: bytes | tuple) -> int:
    """About the bytes a node of the hub's graph holds (the packed map, or the tuple's parts;
    strings counted once per character, an interned scope not at all)."""
    if type(node) is not tuple:
        return len(node) + NODE_OVERHEAD
    parents, label, const = node[1], node[3], node[4]
    try:
        return NODE_OVERHEAD + 64 + 8 * len(parents) + len(label) + (8 * len(const) if const else 0)
    except TypeError:  # a map of the hub's own that events.py would refuse (tests of the page)
        return NODE_OVERHEAD + 64


def as_tuple(node: bytes | tuple) -> tuple:
    """A node of the hub's graph as (op, parents, data, label, const, scope)."""
    if type(node) is not tuple:  # the packed forward map
        event = msgpack.unpackb(node, raw=False)
        const = event.get("const")
        node = (
            event.get("op"),
            tuple(event.get("parents", ())),
            event.get("data", 0.0),
            event.get("label", ""),
            tuple(const) if const else None,
            sys.intern(event.get("scope", "")),
        )
    return node


# A node of a training step renamed (server/steps.py): its forward bytes with another id,
# its parents renamed and other data, patched in place of the numbers, without decoding.
_F64 = struct.Struct(">d")


def _str_size(packed: bytes, at: int) -> int:
    """The size of the msgpack str (or nil) that starts at `at`; 0 if it is neither."""
    head = packed[at]
    if head == 0xC0 or 0xA0 <= head <= 0xBF:
        return 1 + (head & 0x1F if head != 0xC0 else 0)
    if head == 0xD9:
        return 2 + packed[at + 1]
    if head == 0xDA:
        return 3 + int.from_bytes(packed[at + 1 : at + 3], "big")
    if head == 0xDB:
        return 5 + int.from_bytes(packed[at + 1 : at + 5], "big")
    return 0


def renamed_forward(forward: bytes, id_: int, rename: dict | None, data: float) -> bytes | None:
    """`forward` (bytes of `forward_bytes`) with id `id_`, each parent `p` renamed
    `rename[p]` if it is there, and `data`; None for a layout it does not patch (more than
    two parents, a number past 32 bits): decode that one instead."""
    at = _F_PREFIX
    if forward.startswith(_SCOPE_KEY, at):
        at += len(_SCOPE_KEY)
        at += _str_size(forward, at)
    if not forward.startswith(_F_ID, at):
        return None
    id_at = at + len(_F_ID)
    at = id_at + 4
    if not forward.startswith(_OP_KEY, at):
        return None
    at += len(_OP_KEY)
    at += _str_size(forward, at)
    if not forward.startswith(_PARENTS_KEY, at):
        return None
    at += len(_PARENTS_KEY)
    count = forward[at] - 0x90
    if not 0 <= count <= 2:
        return None
    parents_at = at + 1
    data_at = parents_at + 5 * count
    if not forward.startswith(_DATA_KEY, data_at):
        return None
    out = bytearray(forward)
    try:
        _ID.pack_into(out, id_at, id_)
        for at in range(parents_at, data_at, 5):
            if out[at] != 0xCE:
                return None
            if rename is not None:
                new = rename.get(_ID.unpack_from(out, at + 1)[0])
                if new is not None:
                    _ID.pack_into(out, at + 1, new)
    except struct.error:  # a number past 32 bits
        return None
    _F64.pack_into(out, data_at + len(_DATA_KEY), data)
    return bytes(out)
