"""Steps as frames, on the tracer's side (docs/protocol.md, "Steps"): the first step of a
structure goes out as events, then as `structure` and `step`; a later step with the same
structure is one `step` event. Every test rebuilds each step's graph from the events, as a
viewer would, and compares it with the engine's graph of that step, numbers included."""

from __future__ import annotations

import random
import struct
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import opgraph
from opgraph import Engine, no_grad, topological_order
from opgraph.demo import loss as moons_loss
from opgraph.demo import make_moons
from opgraph.nn import MLP
from opgraph.trace import Tracer, event_maps, records


def traced(name: str = "steps", **options) -> tuple[Engine, Tracer]:
    engine = Engine(name=name, entry_points=False)
    tracer = Tracer(engine, **options)
    tracer.attach()
    return engine, tracer


def traced_leaf(name: str = "steps", **options) -> tuple[Engine, Tracer, opgraph.Value]:
    """A traced engine and a parameter `w` made before tracing began."""
    engine = Engine(name=name, entry_points=False)
    w = engine.value(0.5, label="w")
    tracer = Tracer(engine, **options)
    tracer.attach()
    return engine, tracer, w


def traced_model(seed: int = 3, **options) -> tuple[Engine, Tracer, MLP]:
    """A model whose parameters were made before tracing began, as with `serve()` after
    building the model (parameters made while traced are nodes of the first step: see
    test_parameters_made_while_traced_make_the_second_step_full_too)."""
    engine = Engine(name="steps", entry_points=False)
    model = MLP(2, [4, 4, 1], rng=random.Random(seed), engine=engine)
    tracer = Tracer(engine, **options)
    tracer.attach()
    return engine, tracer, model


class Viewer:
    """Applies events as the protocol says a viewer does, and keeps each step's graph:
    {id: (op, parents, const, label, scope, data, grad)} for its nodes and inputs."""

    def __init__(self) -> None:
        self.nodes: dict[int, dict] = {}
        self.structures: dict[int, dict] = {}
        self.steps: list[dict] = []  # the `step` maps, with the graph they stand for
        self.seq = 0
        self.passes = 0

    def apply(self, maps: list[dict]) -> list[dict]:
        for event in maps:
            assert event["seq"] == self.seq + 1  # gap-free
            self.seq = event["seq"]
            kind = event["type"]
            if kind == "forward":
                self.nodes[event["id"]] = dict(event)
            elif kind == "label":
                self.nodes[event["id"]]["label"] = event["label"]
            elif kind == "backward_begin":
                assert event["pass"] == self.passes + 1  # passes stay consecutive
                self.passes = event["pass"]
            elif kind == "structure":
                self._structure(event)
            elif kind == "step":
                self._step(event)
        return maps

    def _structure(self, event: dict) -> None:
        assert event["structure"] == len(self.structures) + 1
        ids = _numbers("Q", event["ids"])
        offsets = _numbers("I", event["offsets"])
        inputs = _numbers("Q", event["inputs"])
        order = _numbers("I", event["order"])
        assert len(ids) == len(offsets) and offsets[:1] in ([], [0])
        assert all(i < j for i, j in zip(offsets, offsets[1:], strict=False))
        assert all(i in self.nodes for i in ids + inputs)  # ids the viewer knows
        assert len(set(order)) == len(order) and all(i < len(ids) + len(inputs) for i in order)
        templates = [dict(self.nodes[i]) for i in ids]
        self.structures[event["structure"]] = {
            "ids": ids,
            "offsets": offsets,
            "inputs": inputs,
            "order": order,
            "root": event["root"],
            "templates": templates,
        }

    def _step(self, event: dict) -> None:
        assert event["step"] == len(self.steps) + 1
        structure = self.structures[event["structure"]]
        typecode = "f" if event.get("dtype") == "f4" else "d"
        data, grad = _numbers(typecode, event["data"]), _numbers(typecode, event["grad"])
        ids = [event["first"] + offset for offset in structure["offsets"]]
        count = len(ids) + len(structure["inputs"])
        assert len(data) == len(grad) == count
        new_id = dict(zip(structure["ids"], ids, strict=True))  # the defining step's ids
        graph = {}
        for i, (id_, template) in enumerate(zip(ids, structure["templates"], strict=True)):
            parents = [new_id.get(p, p) for p in template["parents"]]
            graph[id_] = (
                template["op"],
                parents,
                template.get("const"),
                template["label"],
                template.get("scope", ""),
                data[i],
                grad[i],
            )
            node = dict(template, id=id_, parents=parents, data=data[i])
            self.nodes[id_] = node  # a `step` stands for its nodes' forward
        for k, id_ in enumerate(structure["inputs"], len(ids)):
            node = self.nodes[id_]
            node["data"] = data[k]
            graph[id_] = (
                node["op"],
                node["parents"],
                node.get("const"),
                node["label"],
                node.get("scope", ""),
                data[k],
                grad[k],
            )
        if event["pass"] != self.passes:  # a step that stands for its pass too
            assert event["pass"] == self.passes + 1
            self.passes = event["pass"]
        all_ids = ids + structure["inputs"]
        self.steps.append(dict(event, graph=graph, root=all_ids[structure["root"]]))


def _numbers(typecode: str, raw: bytes) -> list:
    numbers = array(typecode)
    numbers.frombytes(raw)
    if sys.byteorder != "little":
        numbers.byteswap()
    return numbers.tolist()


def same_step(step: dict, root) -> bool:
    """Whether a step's graph, rebuilt from events, is the engine's under `root`: its nodes
    the pass did not reach (made in the step, unused by the root) have grad 0."""
    expected = engine_step(root)
    graph = step["graph"]
    rest = [node for id_, node in graph.items() if id_ not in expected]
    assert all(node[6] == 0.0 for node in rest)
    assert {id_: graph.get(id_) for id_ in expected} == expected
    return graph[step["root"]] == expected[root.id]


def engine_step(root) -> dict[int, tuple]:
    """The engine's graph under `root`, as `Viewer` keeps a step's."""
    graph = {}
    for node in topological_order(root):
        op = node.op
        const = [value for _, value in op.constants] if op is not None and op.constants else None
        graph[node.id] = (
            op.name if op is not None else None,
            [p.id for p in node.parents],
            const,
            node.label,
            node.scope,
            node.data,
            node.grad,
        )
    return graph


def drained(tracer: Tracer, viewer: Viewer) -> list[dict]:
    return viewer.apply(event_maps(records(tracer.drain()), viewer.seq + 1, tracer.t0))


def kinds(maps: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in maps:
        counts[event["type"]] = counts.get(event["type"], 0) + 1
    return counts


# --- a training loop -------------------------------------------------------------------------


def train_traced(steps: int, tracer: Tracer, model: MLP, X, y, viewer: Viewer, change=None):
    """Train as opgraph.demo does, draining after each step; returns, per step, the events
    and the engine's graph of the step as the script saw it right after backward."""
    seen = []
    for k in range(steps):
        total, _ = moons_loss(model, X, y)
        if change is not None:
            total = change(k, total)
        model.zero_grad()
        total.backward()
        expected = engine_step(total)
        params = {p.id: (p.data, p.grad) for p in model.parameters()}
        for p in model.parameters():
            p.data -= 0.1 * p.grad
        seen.append((drained(tracer, viewer), expected, total.data, params))
    return seen


def test_a_training_loop_is_its_first_step_as_events_then_one_step_event_per_step():
    _, tracer, model = traced_model()
    X, y = make_moons(8, seed=1)
    viewer = Viewer()
    seen = train_traced(5, tracer, model, X, y, viewer)
    first = kinds(seen[0][0])
    assert first["structure"] == 1 and first["step"] == 1 and first["forward"] > 100
    assert [e["type"] for e in seen[0][0][-2:]] == ["structure", "step"]
    for maps, *_ in seen[1:]:
        assert [e["type"] for e in maps] == ["step"]  # nothing else: no forward, no backward
    assert [s["step"] for s in viewer.steps] == [1, 2, 3, 4, 5]
    assert [s["pass"] for s in viewer.steps] == [1, 2, 3, 4, 5]
    assert {s["structure"] for s in viewer.steps} == {1}
    for step, (_, expected, loss, params) in zip(viewer.steps, seen, strict=True):
        assert step["graph"] == expected  # every node: op, operands, label, scope, numbers
        assert step["graph"][step["root"]][5] == loss  # the loss, exactly
        for id_, (data, grad) in params.items():
            assert step["graph"][id_][5:] == (data, grad)  # each parameter, exactly


def test_parameters_made_while_traced_make_the_second_step_full_too():
    engine, tracer = traced()
    model = MLP(2, [4, 4, 1], rng=random.Random(3), engine=engine)  # nodes of step 1
    X, y = make_moons(5, seed=4)
    viewer = Viewer()
    seen = train_traced(4, tracer, model, X, y, viewer)
    assert [kinds(m).get("structure", 0) for m, *_ in seen] == [1, 1, 0, 0]
    assert [e["type"] for e in seen[2][0]] == ["step"]
    for step, (_, expected, _, _) in zip(viewer.steps, seen, strict=True):
        assert step["graph"] == expected


def test_a_structure_that_changes_goes_out_as_events_and_defines_a_new_one():
    _, tracer, model = traced_model()
    X, y = make_moons(6, seed=2)
    viewer = Viewer()

    def change(k, total):  # from step 3 on, the loss has one more op
        return total * 1.5 if k >= 2 else total

    seen = train_traced(5, tracer, model, X, y, viewer, change)
    assert [kinds(m).get("structure", 0) for m, *_ in seen] == [1, 0, 1, 0, 0]
    assert kinds(seen[2][0])["forward"] > 100  # step 3: all its nodes, as events
    assert [e["type"] for e in seen[3][0]] == ["step"]
    assert [s["structure"] for s in viewer.steps] == [1, 1, 2, 2, 2]
    for step, (_, expected, loss, _) in zip(viewer.steps, seen, strict=True):
        assert step["graph"] == expected
        assert step["graph"][step["root"]][5] == loss


def test_labels_are_part_of_the_structure_and_a_label_set_after_a_step_is_an_event():
    engine, tracer, w = traced_leaf()
    viewer = Viewer()
    roots = []
    for k in range(5):
        x = engine.value(float(k))
        out = (w * x).tanh()
        out.label = "out" if k != 3 else "renamed"  # set on a collected node, before backward
        w.grad = 0.0  # (a step's grads are its pass's: the engine's, after a zero_grad)
        out.backward()
        roots.append(out)
        maps = drained(tracer, viewer)
        if k in (3, 4):
            assert kinds(maps)["structure"] == 1  # a new label: a new structure
        elif k > 0:
            assert [e["type"] for e in maps] == ["step"]
        assert same_step(viewer.steps[-1], out)
        w.data -= 0.1 * w.grad
    assert [s["structure"] for s in viewer.steps] == [1, 1, 1, 2, 3]
    roots[-1].label = "last"  # after its step: the viewer knows the node, by the step's ids
    maps = drained(tracer, viewer)
    assert [(e["type"], e["id"], e["label"]) for e in maps] == [("label", roots[-1].id, "last")]
    assert viewer.nodes[roots[-1].id]["label"] == "last"


def test_no_grad_work_between_steps_keeps_steps_compact_and_inside_a_step_stays_correct():
    engine, tracer, w = traced_leaf()
    viewer = Viewer()
    for k in range(4):
        with no_grad():  # evaluation between steps: untraced nodes take up ids
            for _ in range(k + 1):
                (w * 3.0).tanh()
        out = (w * engine.value(float(k + 1))).tanh()
        w.grad = 0.0  # (a step's grads are its pass's: the engine's, after a zero_grad)
        out.backward()
        maps = drained(tracer, viewer)
        assert k == 0 or [e["type"] for e in maps] == ["step"]
        assert same_step(viewer.steps[-1], out)
        w.data -= 0.1 * w.grad
    for _ in range(3):  # a no_grad value used inside the step: another input every step
        with no_grad():
            target = w * 2.0
        out = (w - target) ** 2
        w.grad = 0.0
        out.backward()
        maps = drained(tracer, viewer)
        assert "forward" in kinds(maps)  # never the known structure: sent as events
        assert same_step(viewer.steps[-1], out)


def test_a_failed_pass_ends_no_step_and_the_next_pass_does():
    engine, tracer, w = traced_leaf()
    viewer = Viewer()
    for k in range(2):
        out = (w * float(k + 2)).tanh()
        out.backward()
        drained(tracer, viewer)
    assert len(viewer.steps) == 2
    mid = w * 4.0
    out = mid.tanh()

    def fail(grad):
        raise ZeroDivisionError("no")

    handle = mid.register_hook(fail)
    with pytest.raises(Exception, match="no"):
        out.backward()
    maps = drained(tracer, viewer)
    ends = [e for e in maps if e["type"] == "backward_end"]
    assert len(ends) == 1 and "ZeroDivisionError" in ends[0]["error"]
    assert "step" not in kinds(maps) and kinds(maps)["forward"] >= 2  # sent as events
    handle.remove()
    w.grad = 0.0
    out.backward()  # the same step's nodes, now with a pass that succeeds
    maps = drained(tracer, viewer)
    assert kinds(maps)["structure"] == 1 and kinds(maps)["step"] == 1
    assert same_step(viewer.steps[-1], out)
    assert [s["pass"] for s in viewer.steps] == [1, 2, 4]  # pass 3 failed


def test_opgraph_step_makes_several_passes_one_step_with_their_summed_grads():
    engine, tracer, w = traced_leaf()
    viewer = Viewer()
    opgraph.step(engine)  # from now on, steps end at step(): before the first one too
    for k in range(4):
        w.grad = 0.0
        roots = []
        for micro in range(2):  # gradient accumulation: two passes a step
            out = (w * float(micro + k + 1)).tanh()
            out.backward()
            roots.append(out)
        assert drained(tracer, viewer) == [] or k == 0  # nothing until the step ends
        opgraph.step(engine)
        maps = drained(tracer, viewer)
        assert k == 0 or [e["type"] for e in maps] == ["step"]
        graph = viewer.steps[-1]["graph"]
        assert graph[w.id][5:] == (w.data, w.grad)  # the grad summed over both passes
        assert graph[viewer.steps[-1]["root"]][5] == roots[-1].data  # the last pass's root
        w.data -= 0.1 * w.grad
    assert [s["pass"] for s in viewer.steps] == [1, 2, 3, 4]


def test_collected_nodes_go_out_when_the_engine_is_idle():
    engine, tracer, w = traced_leaf(idle=3600)
    viewer = Viewer()
    for _ in range(2):
        (w * 2.0).tanh().backward()
        drained(tracer, viewer)
    expression = (w * 3.0).exp()  # a notebook cell: no backward follows
    assert drained(tracer, viewer) == []  # collected, and the engine may not be done
    tracer.idle_ns = 0  # (as if the engine had been idle long enough)
    maps = drained(tracer, viewer)
    assert [e["id"] for e in maps if e["type"] == "forward"][-1] == expression.id
    assert viewer.nodes[expression.id]["data"] == expression.data
    w.grad = 0.0
    expression.backward()  # the flushed step is a full step: a new structure
    maps = drained(tracer, viewer)
    assert kinds(maps)["structure"] == 1
    assert same_step(viewer.steps[-1], expression)


def test_touch_and_detach_send_collected_nodes_first():
    engine, tracer, w = traced_leaf()
    viewer = Viewer()
    for _ in range(2):
        (w * 2.0).tanh().backward()
        drained(tracer, viewer)
    out = w * 5.0
    w.data = 0.25
    opgraph.touch([w])
    maps = drained(tracer, viewer)
    # 5.0, then w's new data (checked when its user is sent), then w * 5.0
    assert [e["type"] for e in maps] == ["forward", "data", "forward"]
    assert maps[2]["id"] == out.id and maps[1]["data"] == 0.25
    again = out * 2.0
    tracer.detach()
    assert [e["id"] for e in drained(tracer, viewer)] == [again._b.id, again.id]  # 2.0, out * 2


def test_float32_steps_hold_the_engine_numbers_rounded_to_float32():
    engine, tracer, model = traced_model(5, dtype="f4")
    X, y = make_moons(4, seed=3)
    viewer = Viewer()
    seen = train_traced(3, tracer, model, X, y, viewer)
    assert all(e.get("dtype") == "f4" for e in viewer.steps)

    def f32(x: float) -> float:
        return struct.unpack("f", struct.pack("f", x))[0]

    for step, (_, expected, _, _) in zip(viewer.steps, seen, strict=True):
        for id_, node in expected.items():
            assert step["graph"][id_][:5] == node[:5]
            assert step["graph"][id_][5:] == (f32(node[5]), f32(node[6]))
    with pytest.raises(ValueError, match="f8"):
        Tracer(engine, dtype="f2")


def test_steps_of_two_engines_are_their_own():
    (_, tracer_one, w1), (_, tracer_two, w2) = traced_leaf("one"), traced_leaf("two")
    viewers = Viewer(), Viewer()
    for k in range(3):
        a = (w1 * float(k)).tanh()
        b = (w2 + float(k)).relu() * w2
        w1.grad = w2.grad = 0.0
        a.backward()
        b.backward()
        for tracer, viewer, root in ((tracer_one, viewers[0], a), (tracer_two, viewers[1], b)):
            maps = drained(tracer, viewer)
            assert k == 0 or [e["type"] for e in maps] == ["step"]
            assert same_step(viewer.steps[-1], root)


def test_a_step_whose_events_were_lost_defines_no_structure():
    engine, tracer, w = traced_leaf(max_buffer=30)
    viewer = Viewer()
    x = w
    for _ in range(20):  # 40 nodes: past the buffer's 30 events
        x = x * 1.01
    x.backward()
    maps = drained(tracer, viewer)
    assert tracer.take_lost() > 0 and "structure" not in kinds(maps)
    tracer.forget_all()  # the consumer starts over, as after `dropped`
    viewer = Viewer()
    viewer.seq, viewer.passes = maps[-1]["seq"], 1
    tracer.max_buffer = 10_000
    out = (w * 2.0).tanh()
    w.grad = 0.0
    out.backward()
    maps = drained(tracer, viewer)
    assert kinds(maps)["structure"] == 1  # announced again, in full
    assert same_step(viewer.steps[-1], out)


# --- random graphs -------------------------------------------------------------------------

OPS = ("add", "mul", "tanh", "relu", "sub", "pow2")


def apply(op: str, a, b):
    if op == "add":
        return a + b
    if op == "mul":
        return a * b
    if op == "sub":
        return a - b
    if op == "pow2":
        return a**2
    return a.tanh() if op == "tanh" else a.relu()


@settings(max_examples=40, deadline=None)
@given(
    recipe=st.lists(
        st.tuples(st.sampled_from(OPS), st.integers(0, 50), st.integers(0, 50)),
        min_size=1,
        max_size=12,
    ),
    first=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
    second=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
)
def test_a_random_graph_built_twice_is_one_step_event_with_the_engine_numbers(
    recipe, first, second
):
    engine = Engine(name="random", entry_points=False)
    params = [engine.value(x, label=f"p{i}") for i, x in enumerate(first)]
    tracer = Tracer(engine)
    tracer.attach()
    viewer = Viewer()

    def build():
        nodes = [*params, engine.value(1.0)]
        for op, i, j in recipe:
            nodes.append(apply(op, nodes[i % len(nodes)], nodes[j % len(nodes)]))
        return nodes[-1]

    root = build()
    root.backward()
    drained(tracer, viewer)
    for p, x in zip(params, second, strict=True):
        p.data, p.grad = x, 0.0
    root = build()
    root.backward()
    maps = drained(tracer, viewer)
    assert [e["type"] for e in maps] == ["step"]
    assert same_step(viewer.steps[-1], root)
