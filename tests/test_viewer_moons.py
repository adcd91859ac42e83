"""The viewer on a real network, end to end: opgraph's moons demo model (MLP(2, [16, 16, 1]),
built with the real engine) traced through a real `engine.serve()` on loopback into Debian's
chromium, one training step of the demo (forward on 100 points, then backward).

The overview shows the layers L0, L1 and L2 as groups; opening a layer shows its 16 neurons,
opening a neuron its ops and its own weights and bias (made in its scope); the backward pass
lights every group as done.

The test also takes viewer-groups.png and viewer-groups-layer.png, the pictures of
docs/viewer.md (into docs/img only with OPGRAPH_UPDATE_DOC_IMAGES=1: test_viewer.screenshot).
"""

from __future__ import annotations

import math
import random

import pytest
from playwright.sync_api import expect
from test_viewer import screenshot
from test_viewer_groups import box_center, item, tree_items, wait_layout

from opgraph import Engine
from opgraph.demo import SEED, loss, make_moons
from opgraph.nn import MLP

expect.set_options(timeout=20_000)  # as test_viewer_groups: one setting for the session
POINTS = 100  # the demo's data set: one step is about 65,000 nodes

# Nodes per group: a neuron's parameters (nin weights and a bias) and, for each point, a mul
# and an add per input, then its activation (relu), but not in the last layer.
L0_NEURON = 3 + POINTS * (2 * 2 + 1)
L1_NEURON = 17 + POINTS * (16 * 2 + 1)
L2_NEURON = 17 + POINTS * (16 * 2)


def shows_every_node(page, server) -> None:
    """Until the page has applied every event the server has sent so far."""
    assert server.flush(timeout=30)
    nodes = server.stats()["nodes"]
    expect(page.locator("#st-nodes")).to_have_attribute("data-count", str(nodes))


def box_inside(page, inner: str, outer: str) -> bool:
    return page.evaluate(
        """([inner, outer]) => { const boxes = opgraphViewer.hview.boxes;
            const a = boxes.get(inner), b = boxes.get(outer);
            return a.x >= b.x && a.y >= b.y
              && a.x + a.w <= b.x + b.w && a.y + a.h <= b.y + b.h; }""",
        [inner, outer],
    )


def zoom_to_fill(page, key: str) -> None:
    """Drag the box of `key` to the canvas's middle, then zoom in on it with the wheel until
    it nearly fills the canvas (the gestures of a user, through the page's own handlers)."""
    wait_layout(page, key)
    left, top, width, height, scale, box_w, box_h = page.evaluate(
        """(key) => { const v = opgraphViewer, b = v.hview.boxes.get(key), c = v.camera;
            const r = v.canvas.getBoundingClientRect();
            return [r.left + c.x + b.x * c.scale, r.top + c.y + b.y * c.scale,
                    r.width, r.height, c.scale, b.w, b.h]; }""",
        key,
    )
    canvas = page.locator("#canvas").bounding_box()
    middle = (canvas["x"] + width / 2, canvas["y"] + height / 2)
    page.mouse.move(left + box_w * scale / 2, top + box_h * scale / 2)
    page.mouse.down()
    page.mouse.move(*middle, steps=8)
    page.mouse.up()
    factor = min(0.92 * width / (box_w * scale), 0.92 * height / (box_h * scale))
    page.mouse.wheel(0, -math.log(factor) / 0.0015)  # pointer.js: a factor of exp(-deltaY * 0.0015)
    page.wait_for_function(f"opgraphViewer.camera.scale > {scale * factor * 0.99}")


def test_a_moons_training_step_in_the_hierarchical_viewer(page, tmp_path):
    engine = Engine(name="moons", entry_points=False)
    X, y = make_moons(POINTS, noise=0.1, seed=SEED)
    model = MLP(2, [16, 16, 1], rng=random.Random(SEED), engine=engine)  # as `opgraph demo`
    with engine.serve(port=0) as server:
        page.goto(server.url)
        expect(page.locator("#st-conn")).to_contain_text("connected")

        # the forward pass: the overview shows the three layers as closed groups
        total, _ = loss(model, X, y)
        shows_every_node(page, server)
        expect(page.locator("#canvas")).to_have_attribute("data-view", "hierarchy")
        layers = {"s:L0": 16 * L0_NEURON, "s:L1": 16 * L1_NEURON, "s:L2": L2_NEURON}
        for key, count in layers.items():  # the tree is refreshed a few times a second
            expect(item(page, key)).to_have_attribute("data-count", str(count))
        top = [i for i in tree_items(page) if i["level"] == 1]
        assert [i["key"] for i in top[:3]] == list(layers)
        assert all(i["expanded"] == "false" and i["state"] == "plain" for i in top[:3])
        assert [i["text"].split(" · ")[0] for i in top[:3]] == ["L0", "L1", "L2"]
        # the loss is a group of its own; only the inputs (leaves made in no scope) are not
        assert [i["key"] for i in top[3:] if i["key"].startswith("s:")] == ["s:loss"]
        assert all(i["key"].startswith("r:") for i in top[3:] if i["key"] != "s:loss")
        wait_layout(page, "s:L2")
        edges = page.evaluate("opgraphViewer.hview.edges.map(e => [e.from, e.to, e.count])")
        assert ["s:L0", "s:L1", 16 * 16 * POINTS] in edges  # each L1 neuron reads L0's 16
        assert ["s:L1", "s:L2", 16 * POINTS] in edges
        screenshot(page, "viewer-groups.png", tmp_path)

        # a click on L1 opens it: its 16 neurons, in the tree and drawn inside its frame
        page.mouse.click(*box_center(page, "s:L1"))
        expect(item(page, "s:L1")).to_have_attribute("aria-expanded", "true")
        neurons = [i for i in tree_items(page) if i["key"].startswith("s:L1/")]
        assert [i["key"] for i in neurons] == [f"s:L1/N{n}" for n in range(16)]
        assert all(i["level"] == 2 and i["count"] == L1_NEURON for i in neurons)
        wait_layout(page, "s:L1/N15")
        assert all(box_inside(page, f"s:L1/N{n}", "s:L1") for n in range(16))

        # the backward pass lights every group as done
        model.zero_grad()
        total.backward()
        shows_every_node(page, server)
        expect(page.locator("#st-pass")).to_contain_text("done")
        for key in ("s:L0", "s:L1", "s:L2", "s:L1/N0", "s:L1/N15"):
            expect(item(page, key)).to_have_attribute("data-state", "done")
        groups = [i for i in tree_items(page) if i["key"].startswith("s:")]
        assert all(i["reached"] == i["count"] for i in groups)  # every node got its gradient
        page.wait_for_function(
            "() => { const v = opgraphViewer, u = v.hview.boxes.get('s:L1/N7').unit;"
            " return v.lookUnit(u).state === 'done'; }"
        )
        # the picture: L1 opened, as a user sees it after dragging it to the middle and
        # zooming in with the wheel until it fills the canvas (its neurons' names readable)
        zoom_to_fill(page, "s:L1")
        page.mouse.move(1, 1)  # no tooltip in the picture
        screenshot(page, "viewer-groups-layer.png", tmp_path)

        # the keyboard opens L0, then its neuron N3: its ops and its own parameters
        neuron = model.layers[0].neurons[3]
        item(page, "s:L0").focus()
        page.keyboard.press("ArrowRight")
        expect(item(page, "s:L0")).to_have_attribute("aria-expanded", "true")
        for _ in range(4):
            page.keyboard.press("ArrowDown")
        expect(item(page, "s:L0/N3")).to_be_focused()
        page.keyboard.press("ArrowRight")
        expect(item(page, "s:L0/N3")).to_have_attribute("aria-expanded", "true")
        inside = [i for i in tree_items(page) if i["level"] == 3]
        texts = [i["text"] for i in inside]
        assert {"L0.N3.w0 · leaf", "L0.N3.w1 · leaf", "L0.N3.b · leaf"} <= set(texts)
        assert {t.split(" · ")[1] for t in texts[:-1]} == {"leaf", "mul", "add", "relu"}
        assert texts[-1] == f"… {L0_NEURON - 50} more nodes"
        for p in neuron.parameters():  # drawn in the neuron's frame, lit by the backward pass
            wait_layout(page, f"n:{p.id}")
            assert box_inside(page, f"n:{p.id}", "s:L0/N3")
            assert page.evaluate(f"opgraphViewer.graph.nodes.get({p.id}).grad") == pytest.approx(
                p.grad
            )
        page.keyboard.press("Enter")
        expect(page.locator("#details h2")).to_have_text("L0/N3")
        expect(page.locator("#details [data-field=count]")).to_have_text(str(L0_NEURON))
