"""Scopes: every node records the scope path it was made in (`opgraph.scope`, the nn modules,
composite ops), per thread and per asyncio task; paths travel to viewers as the `scope` field
of `forward` events and snapshot nodes, and draw_dot draws them as nested clusters."""

from __future__ import annotations

import asyncio
import copy
import pickle
import re
import threading
import tracemalloc

import _tracing_helpers as th
import pytest

import opgraph
from opgraph import Engine, Value, no_grad, scope
from opgraph.errors import InvalidEvent
from opgraph.nn import MLP, Layer, Neuron
from opgraph.server.events import check_event


def test_nested_scopes_make_a_path_and_nodes_keep_theirs():
    a = Value(2.0)
    assert a.scope == "" and opgraph.current_scope() == ""
    with scope("outer") as outer:
        b = a * 3
        with scope("inner") as inner:
            c = b + a
        d = c.tanh()
    e = d * d
    assert (outer, inner) == ("outer", "outer/inner")
    assert [b.scope, c.scope, d.scope, e.scope] == ["outer", "outer/inner", "outer", ""]
    assert c.parents[0].scope == "outer"  # a node keeps the scope it was made in
    # the same path is one string object: a node pays one pointer, no string of its own
    with scope("outer"), scope("inner"):
        f = a * 2
    assert f.scope is c.scope


def test_a_scope_object_can_be_entered_again_and_nested_in_itself():
    again = scope("block")
    with again:
        with again:
            x = Value(1.0) + 1
        y = Value(1.0) + 1
    assert (x.scope, y.scope) == ("block/block", "block")


@pytest.mark.parametrize("name", ["", "a/b", "/", "outer/"])
def test_a_name_that_is_empty_or_holds_a_slash_is_refused(name):
    with pytest.raises(ValueError, match="no '/'"):
        scope(name)


def test_a_name_that_is_not_a_string_is_refused():
    with pytest.raises(TypeError, match="must be a str, got int"):
        scope(3)  # type: ignore[arg-type]


def test_a_path_longer_than_the_protocol_allows_is_refused_on_entering():
    block = scope("x" * 600)
    with block, pytest.raises(ValueError, match="more than 1,000"), block:
        pass
    assert opgraph.current_scope() == ""  # left as it was


def test_scopes_are_per_thread():
    results = {}
    inside, leave = threading.Event(), threading.Event()

    def worker():
        with scope("worker"):
            inside.set()
            leave.wait(5)
            results["worker"] = (Value(1.0) * 2).scope

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(5)
    results["main"] = (Value(1.0) * 2).scope  # while the worker is inside its scope
    leave.set()
    thread.join()
    assert results == {"main": "", "worker": "worker"}


def test_scopes_are_per_asyncio_task():
    async def task(name, other_started, started):
        with scope(name):
            started.set()
            await other_started.wait()  # both tasks are inside their scopes now
            return (Value(1.0) * 2).scope

    async def main():
        a, b = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(task("A", b, a), task("B", a, b))

    assert asyncio.run(main()) == ["A", "B"]


def test_nn_modules_open_scopes_named_as_their_parameter_labels():
    model = MLP(2, [3, 1])
    out = model([1.0, -2.0])
    nodes = opgraph.topological_order(out)
    made = {n.scope for n in nodes if n.op is not None}
    assert made == {"L0/N0", "L0/N1", "L0/N2", "L1/N0"}
    assert out.scope == "L1/N0" and out.label == "L1.N0"
    for p in model.parameters():  # made at construction, in their neuron's scope
        layer, neuron, _ = p.label.split(".")
        assert p.scope == f"{layer}/{neuron}"
    w = model.layers[0].neurons[2].w[0]
    assert w.label == "L0.N2.w0"
    uses = [n for n in nodes if w in n.parents]
    assert {n.scope for n in uses} == {"L0/N2"}  # the label's module is the scope
    with scope("model"):
        assert model([1.0, -2.0]).scope == "model/L1/N0"
    assert Neuron(2)([1.0, 2.0]).scope == "Neuron"  # unnamed: named after its kind
    assert opgraph.current_scope() == ""  # building and calling closed every scope


def test_a_module_built_in_a_scope_makes_its_parameters_there():
    with scope("model"):
        model = MLP(2, [2, 1])
        out = model([1.0, -2.0])
    assert model.layers[1].neurons[0].b.scope == "model/L1/N0" == out.scope
    assert Layer(2, 1).neurons[0].w[0].scope == "Layer/N0"  # an unnamed layer: its kind
    assert Neuron(2, name="gate").b.scope == "gate"
    w0, w1, b = model.layers[0].neurons[1].parameters()
    assert w0.scope is w1.scope is b.scope  # one interned string, as for the ops
    with pytest.raises(ValueError, match="act='nope'"):
        Layer(2, 2, name="L0", act="nope")  # fails inside the layer's scope
    assert opgraph.current_scope() == ""  # which is closed


def test_a_layer_of_neurons_of_the_users_own_still_scopes_each_one():
    class Doubled(Neuron):
        def __call__(self, x):
            return super().__call__(x) * 2

    layer = Layer(2, 2, name="L0")
    layer.neurons[0] = Doubled(2, name="L0.N0")
    first, second = layer([1.0, 2.0])
    assert first.scope == "L0" and first.parents[0].scope == "L0/N0"  # its own op, then N0's
    assert second.scope == "L0/N1"
    with pytest.raises(ValueError, match="takes 2 inputs, got 3"):
        layer([1.0, 2.0, 3.0])
    assert opgraph.current_scope() == ""  # closed, even on the error


def test_a_composite_op_is_one_scope_named_after_it():
    a, b = Value(3.0), Value(2.0)
    c = a - b  # sub is a composite: a + (-b), and neg a composite too: -1 * b
    inner = [n for n in opgraph.topological_order(c) if n not in (a, b)]
    assert {n.scope for n in inner} == {"sub", "sub/neg"}  # one group, with one inside
    assert c.scope == "sub"
    with scope("loss"):
        d = a / b
    assert d.scope == "loss/div"
    assert d.data == 1.5


def test_pickle_and_deepcopy_keep_the_scope():
    with scope("kept"):
        y = Value(2.0) * 3
    assert pickle.loads(pickle.dumps(y)).scope == "kept"
    assert copy.deepcopy(y).scope == "kept"
    assert copy.copy(y).scope == "kept"


def bytes_per_node(make_graph) -> float:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    root = make_graph()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(opgraph.topological_order(root))


def test_scoped_nodes_cost_no_more_memory_than_unscoped_ones():
    x = Value(0.5)

    def chain():
        y = x
        for _ in range(20_000):
            y = y * 1.0001 + 0.5
        return y

    plain = bytes_per_node(chain)
    with scope("outer"), scope("inner"):
        scoped = bytes_per_node(chain)
    assert scoped <= plain + 1
    # micrograd's node (a dict, a set and a closure) takes about 680 bytes: a quarter of it
    assert scoped < 170


def test_no_grad_work_keeps_its_scope_but_is_not_traced():
    engine = Engine(name="nograd", entry_points=False)
    with engine.serve(port=0) as server:
        x = engine.value(1.0)
        with no_grad(), scope("eval"):
            y = x * 2
        server.flush()
        assert y.scope == "eval" and y.op is None
        assert y.id not in server.call(lambda: dict(server.hub.nodes))


def test_forward_events_and_late_snapshot_nodes_carry_the_scope():
    engine = Engine(name="scoped", entry_points=False)

    async def main():
        with engine.serve(port=0) as server:
            early = await th.connect_reader(server.ws_url)
            await early.until(lambda e: e["type"] == "snapshot_end")
            model = MLP(2, [2, 1], engine=engine)
            with scope("train"):
                out = model([1.0, 2.0])
                out.label = "score"  # the hub keeps a relabelled node apart: scope kept
                squared = out**2  # an op with a constant: packed the general way
            z = out * 2  # outside any scope: no field
            await asyncio.to_thread(server.flush)
            last = server.stats()["seq"]
            live = await early.until_seq(last)
            late = await th.connect_reader(server.ws_url)
            joined = await late.until(lambda e: e["type"] == "snapshot_end")
            await early.ws.close()
            await late.ws.close()
            return out, squared, z, live, joined

    out, squared, z, live, joined = asyncio.run(main())
    forwards = {e["id"]: e for e in live if e["type"] == "forward"}
    assert forwards[out.id]["scope"] == "train/L1/N0"
    assert "scope" not in forwards[z.id]
    assert forwards[squared.id]["scope"] == "train" and forwards[squared.id]["const"] == [2.0]
    neuron_ops = [
        e for e in forwards.values() if e["op"] is not None and e["id"] not in (z.id, squared.id)
    ]
    assert {e["scope"] for e in neuron_ops} == {"train/L0/N0", "train/L0/N1", "train/L1/N0"}
    snapshot = {e["id"]: e for e in joined if e["type"] == "node"}
    assert snapshot[out.id]["scope"] == "train/L1/N0" and snapshot[out.id]["label"] == "score"
    assert "scope" not in snapshot[z.id]
    for id_, event in forwards.items():  # every node: the same scope, live and late
        assert snapshot[id_].get("scope") == event.get("scope")


def test_events_from_outside_may_carry_a_scope_of_at_most_1000_characters():
    forward = {"type": "forward", "seq": 1, "id": 3, "op": None, "parents": []}
    forward.update(data=1.0, label="", t=0)
    assert check_event({**forward, "scope": "L0/N3"}, 0)["scope"] == "L0/N3"
    assert check_event({**forward, "scope": "s" * 1000}, 0)["scope"] == "s" * 1000
    with pytest.raises(InvalidEvent, match="'scope'.*at most 1000"):
        check_event({**forward, "scope": "s" * 1001}, 0)
    with pytest.raises(InvalidEvent, match="'scope'.*must be a string"):
        check_event({**forward, "scope": ["L0"]}, 0)
    with pytest.raises(InvalidEvent, match="'scope'.*must be a string"):
        check_event({**forward, "op": "add", "scope": None}, 0)


def test_draw_dot_draws_each_scope_as_a_nested_cluster():
    with scope("step"):  # built in the scope too: its parameters are drawn in their neurons
        model = MLP(2, [2, 1])
        out = model([1.0, 2.0])
    svg = opgraph.draw_dot(out).pipe(format="svg").decode()  # the real `dot`
    clusters = re.findall(r"<title>cluster_([^<]*)</title>", svg)
    assert sorted(clusters) == ["step", "step/L0", "step/L0/N0", "step/L0/N1", "step/L1"] + [
        "step/L1/N0"
    ]
    source = opgraph.draw_dot(out).source
    # nested: the neuron's cluster opens inside its layer's, inside the step's
    assert re.search(
        r"subgraph \"?cluster_step\"? \{.*subgraph \"?cluster_step/L0\"? \{", source, re.S
    )
    assert "label=N1" in source or 'label="N1"' in source


def test_a_published_scope_reaches_the_hub_and_its_late_viewers():
    from opgraph.server.publisher import Publisher
    from opgraph.server.server import TraceServer

    engine = Engine(name="publisher", entry_points=False)
    with TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start() as hub:
        publisher = Publisher(engine, hub.publish_url).start()
        try:
            w = engine.value(0.5, label="w")
            with scope("remote"):
                h = (w * 3.0).tanh()
            h.label = "h"

            async def snapshot():
                reader = await th.connect_reader(hub.ws_url)
                got = await reader.until(lambda e: e["type"] == "snapshot_end")
                await reader.ws.close()
                return {n["label"]: n for n in th.graph_of(got).values()}

            for _ in range(400):  # until the publisher's events reached the hub
                graph = asyncio.run(snapshot())
                if "h" in graph:
                    break
                asyncio.run(asyncio.sleep(0.025))
        finally:
            publisher.close()
    assert graph["h"]["scope"] == "remote" and "scope" not in graph["w"]
