"""The tracer: which events the engine produces for a graph, and what they carry."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import _tracing_helpers as th
from hypothesis import given, settings
from hypothesis import strategies as st

from opgraph import Engine, Value, no_grad
from opgraph.trace import Tracer, event_maps, records


def traced_engine(**options) -> tuple[Engine, Tracer]:
    engine = Engine(name="traced", entry_points=False)
    tracer = Tracer(engine, **options)
    engine.tracer = tracer
    return engine, tracer


def events_of(tracer: Tracer) -> list[dict]:
    return event_maps(records(tracer.drain()), 1, tracer.t0)


def test_known_expression_forward_and_backward_events():
    engine, tracer = traced_engine()
    a = engine.value(2.0, label="a")
    b = engine.value(-3.0, label="b")
    c = a * b
    c.label = "c"
    d = c + a**2
    e = d.tanh()
    e.backward()
    events = events_of(tracer)
    kinds = [ev["type"] for ev in events]
    assert kinds == ["forward"] * 2 + ["forward", "label"] + ["forward"] * 3 + [
        "backward_begin",
        *["backward"] * 6,
        "backward_end",
        "structure",  # the pass ended a step: its structure and numbers (test_steps_tracer.py)
        "step",
    ]
    forwards = [ev for ev in events if ev["type"] == "forward"]
    assert [(f["id"], f["op"], f["parents"]) for f in forwards] == [
        (a.id, None, []),
        (b.id, None, []),
        (c.id, "mul", [a.id, b.id]),
        (a.id + 3, "pow", [a.id]),
        (d.id, "add", [c.id, a.id + 3]),
        (e.id, "tanh", [d.id]),
    ]
    pow_event = forwards[3]
    assert pow_event["const"] == [2.0] and pow_event["data"] == 4.0
    assert "const" not in forwards[2]
    assert forwards[0]["label"] == "a" and forwards[2]["label"] == ""  # labelled afterwards
    assert events[3] == {"type": "label", "seq": 4, "id": c.id, "label": "c", "t": events[3]["t"]}
    # backward: the root first, each node once, every node after all nodes that use it
    steps = [ev for ev in events if ev["type"] == "backward"]
    assert [s["id"] for s in steps] == [e.id, d.id, a.id + 3, c.id, b.id, a.id]
    assert {s["id"]: s["grad"] for s in steps} == {n.id: n.grad for n in (a, b, c, d, e)} | {
        a.id + 3: 1 - e.data**2
    }
    assert events[7]["root"] == e.id and events[7]["pass"] == 1
    assert events[-3] == {**events[7], "type": "backward_end", "seq": 15, "t": events[-3]["t"]}
    times = [ev["t"] for ev in events]
    assert times == sorted(times)


def test_duplicate_parents_are_kept_in_order():
    engine, tracer = traced_engine()
    x = engine.value(3.0)
    y = x * x + x
    forwards = [e for e in events_of(tracer) if e["type"] == "forward"]
    assert forwards[1]["parents"] == [x.id, x.id]
    assert forwards[2]["parents"] == [y.parents[0].id, x.id]


def test_each_pass_reports_its_own_gradient_and_is_numbered():
    engine, tracer = traced_engine()
    x = engine.value(1.5)
    y = x * x
    y.backward()
    y.backward()  # accumulates: x.grad is twice 2x now
    events = events_of(tracer)
    passes = [e["pass"] for e in events if e["type"] == "backward_begin"]
    grads = [e["grad"] for e in events if e["type"] == "backward" and e["id"] == x.id]
    assert passes == [1, 2]
    assert grads == [3.0, 3.0]  # this pass's gradient, not the accumulated one
    assert x.grad == 6.0


def test_changed_leaf_data_is_announced_before_its_next_use():
    engine, tracer = traced_engine(idle=0)  # (nodes collected for a step: sent at each drain)
    w = engine.value(0.5, label="w")
    loss = (w * 2.0).tanh()
    loss.backward()
    events_of(tracer)
    w.data -= 0.1 * w.grad  # an optimizer step
    unchanged = engine.value(7.0)
    again = w * unchanged
    events = events_of(tracer)
    assert events[0]["type"] == "forward" and events[0]["id"] == unchanged.id
    assert events[1] == {"type": "data", "seq": 2, "id": w.id, "data": w.data, "t": events[1]["t"]}
    assert events[2]["type"] == "forward" and events[2]["id"] == again.id
    # used again without a change: nothing more
    w * unchanged
    assert [e["type"] for e in events_of(tracer)] == ["forward"]


def test_touch_announces_a_change_at_once_and_only_once():
    import opgraph

    engine, tracer = traced_engine()
    p = engine.value(1.0)
    events_of(tracer)
    opgraph.touch([p])
    assert events_of(tracer) == []
    p.data = math.nan
    opgraph.touch([p])
    opgraph.touch([p])  # nan is unchanged from nan
    events = events_of(tracer)
    assert len(events) == 1 and events[0]["type"] == "data" and math.isnan(events[0]["data"])


def test_nodes_made_before_tracing_are_announced_when_used():
    engine = Engine(name="late", entry_points=False)
    w = engine.value(0.3, label="w")
    h = (w * 4).relu()
    tracer = Tracer(engine)
    engine.tracer = tracer
    out = h + 1
    forwards = [e for e in events_of(tracer) if e["type"] == "forward"]
    # the constant 1 (made for `h + 1`), then w, the constant 4, w*4, relu, then out
    order = [f["id"] for f in forwards]
    assert order[-1] == out.id
    assert sorted(order) == list(range(out.id + 1))  # every node, once
    for f in forwards:  # each node after its parents
        assert all(order.index(p) < order.index(f["id"]) for p in f["parents"])
    assert next(f for f in forwards if f["id"] == w.id)["label"] == "w"


def test_work_under_no_grad_is_not_traced_until_its_result_is_used():
    engine, tracer = traced_engine()
    x = engine.value(2.0)
    events_of(tracer)
    with no_grad():
        y = x * 3 + 1.0  # the constant leaves 3 and 1.0, the intermediate, the result
    assert events_of(tracer) == []
    z = y * x  # y is used: announced then, as the leaf it is
    forwards = [e for e in events_of(tracer) if e["type"] == "forward"]
    assert [f["id"] for f in forwards] == [y.id, z.id]
    assert forwards[0]["op"] is None and forwards[0]["parents"] == []


def test_full_buffer_counts_lost_events_instead_of_growing():
    engine, tracer = traced_engine(max_buffer=100)
    x = engine.value(1.0)
    for _ in range(300):
        x = x + 1.0
    assert tracer.pending() == 100
    assert tracer.take_lost() == 2 * 300 + 1 - 100  # each step: a constant leaf and the add
    assert tracer.take_lost() == 0


def test_memory_of_announced_nodes_is_bounded_and_forgotten_nodes_are_reannounced():
    engine, tracer = traced_engine(max_known=1000)
    param = engine.value(0.1, label="param")
    for _ in range(3000):
        engine.value(1.0)
    assert len(tracer._known) <= 1000
    events_of(tracer)
    y = param * 2.0
    events = [e for e in events_of(tracer) if e["type"] == "forward"]
    # param was forgotten: it is announced again (same id, same label) before its use
    assert [e["id"] for e in events] == [y.parents[1].id, param.id, y.id]
    assert events[1]["label"] == "param" and events[1]["data"] == 0.1


def test_detached_tracer_sees_nothing():
    engine, tracer = traced_engine()
    engine.tracer = None
    x = engine.value(1.0)
    (x * x).backward()
    assert events_of(tracer) == []


# --- property: for any expression, the events describe exactly the engine's graph ---------

UNARY = ["tanh", "exp", "relu", "sigmoid"]
BINARY = ["add", "mul", "sub"]


@st.composite
def programs(draw):
    leaves = draw(st.integers(min_value=1, max_value=4))
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(UNARY + BINARY + ["pow"]),
                st.integers(min_value=0, max_value=10_000),
                st.integers(min_value=0, max_value=10_000),
            ),
            min_size=1,
            max_size=25,
        )
    )
    data = draw(
        st.lists(
            st.floats(min_value=-2, max_value=2, allow_nan=False),
            min_size=leaves,
            max_size=leaves,
        )
    )
    return data, steps


def build(engine, data, steps):
    values = [engine.value(d, label=f"x{i}") for i, d in enumerate(data)]
    for op, i, j in steps:
        a, b = values[i % len(values)], values[j % len(values)]
        if op == "pow":
            values.append(a**2)
        elif op in UNARY:
            values.append(getattr(a, op)())
        else:
            values.append(getattr(engine.ops, op)(a, b))
    return values


@settings(max_examples=60, deadline=None)
@given(programs())
def test_events_rebuild_exactly_the_engines_graph(program):
    engine, tracer = traced_engine()
    values = build(engine, *program)
    root = values[-1]
    root.backward()
    events = events_of(tracer)
    nodes = th.graph_of(events)
    expected = th.engine_graph(values)
    assert th.strip_grads(nodes) == expected
    for node in nodes.values():
        assert node.get("const") == ([2.0] if node["op"] == "pow" else None)
    # every node of the graph gets one backward step in the pass, with its final grad
    steps = [e for e in events if e["type"] == "backward"]
    assert sorted(s["id"] for s in steps) == sorted(th.engine_graph([root]))
    position = {s["id"]: k for k, s in enumerate(steps)}
    for i in position:
        for parent in expected[i]["parents"]:
            assert position[parent] > position[i]  # a parent's step comes after its users'
    from opgraph import topological_order

    for node in topological_order(root):
        assert nodes[node.id]["grad"] == node.grad


def test_events_reach_a_viewer_through_the_server_unchanged():
    """The same known expression, end to end: real server, real websocket client."""
    engine = Engine(name="wire", entry_points=False)

    async def main():
        with engine.serve(port=0) as server:
            reader = await th.connect_reader(server.ws_url)
            hello = await reader.next()
            await reader.until(lambda e: e["type"] == "snapshot_end")
            a = engine.value(2.0, label="a")
            b = engine.value(-3.0, label="b")
            c = a * b
            c.label = "c"
            out = (c + a**2).tanh()
            out.backward()
            got = await reader.until(lambda e: e["type"] == "backward_end")
            await reader.ws.close()
            return hello, got, [a, b, c, out]

    hello, got, (a, b, c, out) = asyncio.run(main())
    assert hello["protocol"] == "opgraph" and hello["version"] == 1 and hello["engine"] == "wire"
    assert hello["ops"]["tanh"] == "opgraph.plugins.activations"
    assert [e["seq"] for e in got] == list(range(1, len(got) + 1))
    nodes = th.graph_of([hello, *got])
    assert th.strip_grads(nodes) == th.engine_graph([out])
    assert nodes[a.id]["grad"] == a.grad and nodes[b.id]["grad"] == b.grad


def test_the_read_api_gives_what_the_server_reads():
    engine = Engine(entry_points=False, name="read")
    x = engine.value(2.0, label="x")
    y = x * x + x
    product = y.parents[0]
    assert (y.id, y.op_name, y.parent_ids) == (y.id, "add", (product.id, x.id))
    assert product.parent_ids == (x.id, x.id)  # duplicates kept, in order
    assert (x.op, x.op_name, x.parent_ids) == (None, None, ())
    assert y.op is engine.ops.definitions["add"]


def test_the_server_reads_nodes_only_through_the_read_api():
    """No module of the server reads a slot of Value (docs/api.md: the read API for tools)."""
    import ast

    import opgraph.server

    slots = set(Value.__slots__) | {"_prev", "_op", "_tracer"}
    for path in Path(opgraph.server.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in slots:
                raise AssertionError(f"{path.name}:{node.lineno} reads .{node.attr}")


def test_forward_packer_packs_what_the_read_api_says():
    from opgraph.trace import forward_packer

    engine = Engine(entry_points=False, name="ids")
    x, y = engine.value(1.0), engine.value(2.0)
    for node in [x, -x, x * y]:
        arity = len(node.parents)
        parts = [f"<{i}>" for i in range(arity + 4)]
        kept: dict = {}
        fields = forward_packer(arity, lambda *args: args, parts, kept)(7, node, 0.5, 9)
        numbers = (7, node.id, *node.parent_ids, 0.5, 9)
        assert fields == tuple(v for pair in zip(parts, numbers, strict=True) for v in pair)
        assert kept == {node.id: fields}
