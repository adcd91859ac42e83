"""The tracer's fast paths: backward steps reported in chunks, and the packers that turn
buffered events into msgpack without a dict per event. Each must say exactly what the slow,
obvious encoding says."""

from __future__ import annotations

import math
import random
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opgraph import Engine, Op, hookimpl, topological_order
from opgraph.reverse import TRACE_CHUNK
from opgraph.server.encode import (
    backward_bytes,
    backward_steps_bytes,
    forward_bytes,
    forward_encoder,
    node_bytes,
)
from opgraph.server.hub import Hub
from opgraph.trace import Tracer, event_count, event_maps, records

u32 = st.integers(min_value=0, max_value=2**32 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True)


def traced_engine(**options) -> tuple[Engine, Tracer]:
    engine = Engine(name="fast", entry_points=False)
    tracer = Tracer(engine, **options)
    tracer.attach()
    return engine, tracer


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@given(u32, st.lists(st.tuples(u32, floats), min_size=1, max_size=300), u32)
def test_a_chunk_of_backward_steps_packs_as_the_maps_one_by_one(first, steps, t):
    first = min(first, 2**32 - 1 - len(steps))
    ids = [id_ for id_, _ in steps]
    grads = [grad for _, grad in steps]
    packed = bytes(backward_steps_bytes(first, ids, grads, t))
    one_by_one = b"".join(
        backward_bytes(first + i, id_, grad, t) for i, (id_, grad) in enumerate(steps)
    )
    assert packed == one_by_one
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(packed)
    decoded = list(unpacker)
    assert [e["seq"] for e in decoded] == list(range(first, first + len(steps)))
    assert [e["id"] for e in decoded] == ids
    assert all(same(e["grad"], g) for e, g in zip(decoded, grads, strict=True))
    assert all(e["type"] == "backward" and e["t"] == t and len(e) == 5 for e in decoded)


def test_a_chunk_with_an_id_past_32_bits_refuses_rather_than_wraps():
    with pytest.raises(struct.error):
        backward_steps_bytes(1, [1, 2**32], [0.5, 0.5], 0)


class Total:
    """A plugin with an op of three operands (parents in the slots _a and _b, a tuple there)."""

    @hookimpl
    def register_ops(register):
        register(Op("total", lambda *xs: sum(xs), lambda out, *xs: (1.0,) * len(xs), arity=3))


ENGINE = Engine(name="packers", plugins=[Total], entry_points=False)
OPS = {"leaf": 0, "tanh": 1, "mul": 2, "add": 2, "total": 3}


scopes = st.sampled_from(["", "L0/N3", "é/" + "x" * 300])  # short, long (str 16) paths


@given(st.sampled_from(sorted(OPS)), u32, floats, u32, scopes)
def test_the_forward_packer_of_an_op_gives_the_protocol_map(name, seq, data, t, scope):
    arity = OPS[name]
    parents = [ENGINE.value(float(i)) for i in range(arity)]
    node = ENGINE.value(data) if name == "leaf" else getattr(ENGINE.ops, name)(*parents)
    op = None if name == "leaf" else name
    packed = forward_encoder(op, arity, None, scope)(seq, node, data, t)
    event = msgpack.unpackb(packed, raw=False)
    assert event.pop("scope", "") == scope  # only when there is one
    assert event == {
        "type": "forward",
        "seq": seq,
        "id": node.id,
        "op": op,
        "parents": [p.id for p in parents],
        "data": event["data"],
        "label": "",
        "t": t,
    }
    assert same(event["data"], data)


def test_a_traced_backward_pass_reports_every_step_in_order_across_chunks():
    engine, tracer = traced_engine()
    rng = random.Random(7)
    xs = [engine.value(rng.uniform(-1, 1), label=f"x{i}") for i in range(40)]
    y = engine.value(0.0)
    for i in range(3 * TRACE_CHUNK):  # several chunks, the last one partial
        y = y + (xs[i % 40] * xs[(i * 7) % 40]).tanh()
    y.backward()
    events = event_maps(records(tracer.drain()), 1, tracer.t0)
    begin = next(i for i, e in enumerate(events) if e["type"] == "backward_begin")
    steps = events[begin + 1 : -3]
    assert [e["type"] for e in events[-3:]] == ["backward_end", "structure", "step"]
    order = topological_order(y)
    assert [e["id"] for e in steps] == [n.id for n in reversed(order)]
    assert [e["grad"] for e in steps] == [n.grad for n in reversed(order)]  # one pass: all
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_backward_chunks_count_against_the_buffer_bound():
    engine, tracer = traced_engine(max_buffer=1000)
    x = engine.value(0.5)
    y = x
    for _ in range(600):
        y = y * 1.0001
    assert tracer.pending() == 1000 and tracer.take_lost() == 201  # x, 600 * (const, mul)
    tracer.drain()
    y.backward()  # begin, 1201 steps in chunks while they fit (the rest lost), end
    assert tracer.pending() <= 1000
    assert tracer.pending() + tracer.take_lost() == 1 + 1201 + 1


def test_the_hub_snapshot_says_which_pass_is_in_progress_and_what_it_reached():
    engine, tracer = traced_engine()
    a, b = engine.value(2.0, label="a"), engine.value(3.0, label="b")
    c = a * b
    hub = Hub("fast", {})
    hub.publish_traced(tracer.drain(), tracer.t0)
    # a pass that has begun and reached c only (as if the rest were still to come)
    hub.publish([{"type": "backward_begin", "root": c.id, "pass": 1}])
    hub.publish([{"type": "backward", "id": c.id, "grad": 1.0}])
    first = _snapshot(hub)
    assert first[0]["backward"] == {"pass": 1, "root": c.id}
    assert {n["id"]: n.get("pass") for n in first[1:-1]} == {a.id: None, b.id: None, c.id: 1}
    hub.publish([{"type": "backward_end", "root": c.id, "pass": 1}])
    assert "backward" not in _snapshot(hub)[0]


def _snapshot(hub: Hub) -> list[dict]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    for frame in hub.snapshot_frames():
        unpacker.feed(frame)
    return list(unpacker)


def test_drain_takes_about_limit_events_even_from_chunks_of_backward_steps():
    engine, tracer = traced_engine()
    y = engine.value(0.5)
    for _ in range(2000):
        y = y.tanh()
    tracer.drain()
    y.backward()  # begin, 2001 steps in 8 chunks, end
    sizes = []
    while tracer.pending():
        sizes.append(sum(event_count(r) for r in records(tracer.drain(300))))
    assert sum(sizes) == 1 + 2001 + 1 + 2  # and the step's structure and step
    assert all(size <= 300 + TRACE_CHUNK for size in sizes)  # at most one record past it
    assert max(sizes) > 1  # and more than one event at a time


@given(
    u32,
    u32,
    st.sampled_from(["mul", None]),
    st.lists(u32, max_size=3),
    floats,
    st.text(max_size=5),
    floats,
    st.none() | u32,
    st.none() | st.lists(floats, min_size=1, max_size=2),
    scopes,
)
def test_a_snapshot_node_rewritten_from_forward_bytes_is_the_node_map(
    seq, id_, op, parents, data, label, grad, pass_, const, scope
):
    forward = forward_bytes(seq, id_, op, parents, data, label, 7, const, scope)
    assert msgpack.unpackb(forward, raw=False).get("scope", "") == scope
    rewritten = node_bytes(forward, grad, pass_)
    if const:  # not rewritten: the hub decodes those
        assert rewritten is None
        return
    node = msgpack.unpackb(rewritten, raw=False)
    expected = {"type": "node", "id": id_, "op": op, "parents": parents, "label": label}
    if scope:
        expected["scope"] = scope
    assert {k: v for k, v in node.items() if k not in ("data", "grad", "pass")} == expected
    assert same(node["data"], data) and same(node["grad"], grad)
    assert node.get("pass") == pass_
