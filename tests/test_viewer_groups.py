"""The viewer's hierarchical overview in Chromium, on synthetic traces shaped like the moons
model (MLP(2, [16, 16, 1]): every op of neuron j of layer i made in scope `Li/Nj`, its
parameters too; the loss ops in no scope): groups for layers and neurons, opened with a
click or the keyboard, the group tree as text, groups lit by the backward pass, separate
computations side by side, a 135,000-node trace's first groups and frame times, and
scope names shown as text, never as HTML.

docs/img/viewer-groups*.png come from the real moons step (test_viewer_moons.py).
"""

from __future__ import annotations

import random
import re
import statistics
from contextlib import contextmanager

import msgpack
import pytest
from playwright.sync_api import expect
from viewer_support import VIEWPORT, StreamServer, page_error

from opgraph.server.events import InvalidEvent, check_event
from opgraph.server.http import CONTENT_SECURITY_POLICY

expect.set_options(timeout=20_000)
SIZES = [2, 16, 16, 1]  # MLP(2, [16, 16, 1])


class Trace:
    """Protocol maps of a synthetic trace, with ids and seqs counted."""

    def __init__(self):
        self.events: list[dict] = [
            {"type": "hello", "protocol": "opgraph", "version": 1, "seq": 0, "session": "s",
             "engine": "synthetic", "ops": {op: "core" for op in ("add", "mul", "tanh", "relu")}},
        ]  # fmt: skip
        self.next_id = 0
        self.random = random.Random(0)  # the same numbers every run

    def node(self, op=None, parents=(), scope="", label=""):
        data = self.random.uniform(-1, 1)
        event = {"type": "forward", "seq": len(self.events), "id": self.next_id, "op": op,
                 "parents": list(parents), "data": data, "label": label}  # fmt: skip
        if scope:
            event["scope"] = scope
        self.events.append(event)
        self.next_id += 1
        return event["id"]

    def add(self, kind, **fields):
        self.events.append({"type": kind, "seq": len(self.events), **fields})

    def bytes(self) -> bytes:
        return b"".join(msgpack.packb(e) for e in self.events)


def moons(steps=1, batch=4, trace=None):
    """A moons-like training trace: parameters in their neuron's scope, per sample the
    neurons' ops in theirs, the hinge loss and its sum in none.
    Returns (trace, params, loss ids)."""
    trace = trace or Trace()
    params = {}  # (layer, neuron) -> [w..., b]
    for layer in range(len(SIZES) - 1):
        for n in range(SIZES[layer + 1]):
            scope = f"L{layer}/N{n}"
            params[layer, n] = [trace.node(scope=scope, label=f"w{i}") for i in range(SIZES[layer])]
            params[layer, n].append(trace.node(scope=scope, label="b"))
    losses = []
    for _ in range(steps):
        total = None
        for _ in range(batch):
            xs = [trace.node(label="x0"), trace.node(label="x1")]  # inputs: no scope
            for layer in range(len(SIZES) - 1):
                outs = []
                for n in range(SIZES[layer + 1]):
                    scope, *ws = f"L{layer}/N{n}", *params[layer, n]
                    act = ws[-1]
                    for w, x in zip(ws[:-1], xs, strict=True):
                        act = trace.node("add", [act, trace.node("mul", [w, x], scope)], scope)
                    if layer < len(SIZES) - 2:
                        act = trace.node("tanh", [act], scope)
                    outs.append(act)
                xs = outs
            margin = trace.node("relu", [trace.node("add", [trace.node("mul", [xs[0]])])])
            total = margin if total is None else trace.node("add", [total, margin])
        losses.append(trace.node("mul", [total], label="loss"))
    return trace, params, losses


@contextmanager
def show(page, trace: Trace, query: str = "?threshold=100"):
    """The page showing `trace` (a stand-in server streams it), every node applied."""
    with StreamServer(trace.bytes()) as server:
        page.goto(server.url + query)
        expect(page.locator("#st-nodes")).to_have_attribute("data-count", str(trace.next_id))
        yield server


def tree_items(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#group-tree [role=treeitem]",
        """items => items.map(i => ({key: i.dataset.key,
            level: Number(i.getAttribute("aria-level")), expanded: i.getAttribute("aria-expanded"),
            text: i.textContent, state: i.dataset.state, reached: Number(i.dataset.reached),
            count: Number(i.dataset.count)}))""",
    )


def item(page, key: str):
    quoted = key.replace("\\", "\\\\").replace('"', '\\"')  # a CSS string
    return page.locator(f'#group-tree [role=treeitem][data-key="{quoted}"]')


def wait_layout(page, key: str) -> None:
    """Until the layout of the graph as it is now, showing `key`, has been drawn."""
    page.wait_for_function(
        """(key) => { const v = opgraphViewer;
            return v.hview?.boxes.has(key) && v.hview.drawn && !v.layout.busy
              && v.hasked.version === v.graph.version && v.hasked.open === v.openVersion; }""",
        arg=key,
    )


def box_center(page, key: str) -> list[float]:
    """Where the page draws a unit of the overview, in page pixels."""
    wait_layout(page, key)
    return page.evaluate(
        """(key) => { const v = opgraphViewer, b = v.hview.boxes.get(key), c = v.camera;
            const r = v.canvas.getBoundingClientRect();
            return [r.left + c.x + (b.x + b.w / 2) * c.scale,
                    r.top + c.y + (b.y + 12) * c.scale]; }""",
        key,
    )


def test_layers_are_groups_opened_by_click_and_keyboard(page):
    trace, _, _ = moons(batch=4)
    with show(page, trace):
        expect(page.locator("#canvas")).to_have_attribute("data-view", "hierarchy")
        # L1: its parameters and 4 samples' ops
        expect(item(page, "s:L1")).to_have_attribute("data-count", str(16 * (17 + 4 * 33)))
        top = [i for i in tree_items(page) if i["level"] == 1]
        assert [i["key"] for i in top[:3]] == ["s:L0", "s:L1", "s:L2"]
        assert all(i["expanded"] == "false" for i in top[:3])
        assert any(i["key"].startswith("r:") for i in top)  # the unscoped loss: rank bands
        wait_layout(page, "s:L2")
        edges = page.evaluate("opgraphViewer.hview.edges.map(e => [e.from, e.to, e.count])")
        # each of L1's 16 neurons uses L0's 16 outputs, in each of 4 samples
        assert ["s:L0", "s:L1", 16 * 16 * 4] in edges
        assert ["s:L1", "s:L2", 16 * 4] in edges

        # a click on the layer opens it: its neurons are shown, in the tree and drawn
        page.mouse.click(*box_center(page, "s:L1"))
        expect(item(page, "s:L1")).to_have_attribute("aria-expanded", "true")
        expect(item(page, "s:L1/N15")).to_have_attribute("aria-level", "2")
        neurons = [i["key"] for i in tree_items(page) if i["key"].startswith("s:L1/")]
        assert neurons == [f"s:L1/N{n}" for n in range(16)]
        page.wait_for_function("opgraphViewer.hview.boxes.has('s:L1/N7')")
        expect(page.locator("#details h2")).to_have_text("L1")
        expect(page.locator("#details [data-toggle]")).to_have_text("Close the group")
        page.mouse.click(*box_center(page, "s:L1"))  # a click on its title bar closes it
        expect(item(page, "s:L1")).to_have_attribute("aria-expanded", "false")

        # the keyboard: → opens, ↓ moves, → opens a neuron (its ops), ← closes, ← goes up
        item(page, "s:L0").focus()
        page.keyboard.press("ArrowRight")
        expect(item(page, "s:L0")).to_have_attribute("aria-expanded", "true")
        page.keyboard.press("ArrowDown")
        expect(item(page, "s:L0/N0")).to_be_focused()
        page.keyboard.press("ArrowRight")
        expect(item(page, "s:L0/N0")).to_have_attribute("aria-expanded", "true")
        ops = [i for i in tree_items(page) if i["key"].startswith("n:") and i["level"] == 3]
        assert len(ops) == 3 + 4 * 5  # w0, w1, b and 4 samples of mul, add, mul, add, tanh
        page.wait_for_function(f"opgraphViewer.hview.boxes.has('{ops[0]['key']}')")
        page.keyboard.press("ArrowLeft")
        expect(item(page, "s:L0/N0")).to_have_attribute("aria-expanded", "false")
        page.keyboard.press("ArrowLeft")  # to the parent, which stays open
        expect(item(page, "s:L0")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator("#details h2")).to_have_text("L0")
        expect(page.locator("#details [data-field=count]")).to_have_text(str(16 * (3 + 4 * 5)))
        assert page.evaluate("opgraphViewer.stepIndex") is None  # arrows did not step
        page.evaluate("document.activeElement.blur()")
        page.keyboard.press("Enter")  # outside the tree, Enter closes the selected group
        expect(item(page, "s:L0")).to_have_attribute("aria-expanded", "false")
        page.keyboard.press("Enter")  # and opens it
        expect(item(page, "s:L0")).to_have_attribute("aria-expanded", "true")

        # search finds groups by path
        page.fill("#search", "N7")
        expect(item(page, "s:L1/N7")).to_contain_text("L1/N7")
        assert {i["key"] for i in tree_items(page)} == {"s:L0/N7", "s:L1/N7"}
        item(page, "s:L1/N7").click()  # opens what holds it, and it
        expect(page.locator("#details h2")).to_have_text("L1/N7")
        page.fill("#search", "")
        expect(item(page, "s:L1")).to_have_attribute("aria-expanded", "true")
        # a node picked in the node list is shown in its neighbourhood; Esc goes back
        page.locator("#node-list tbody tr").first.click()
        expect(page.locator("#canvas")).to_have_attribute("data-view", "focus")
        page.keyboard.press("Escape")
        expect(page.locator("#canvas")).to_have_attribute("data-view", "hierarchy")


def test_backward_pass_lights_groups(page):
    trace, params, losses = moons(batch=3)
    forward = [e for e in trace.events if e["type"] == "forward"]
    ops = [e for e in reversed(forward) if e["op"]]  # reverse creation: a topological order
    loss = [e["id"] for e in ops if not e.get("scope")]
    in_l2 = [e["id"] for e in ops if e.get("scope", "").startswith("L2")]
    in_l1 = [e["id"] for e in ops if e.get("scope", "").startswith("L1")]
    trace.add("backward_begin", root=losses[0], **{"pass": 1})
    for node in loss + in_l2 + in_l1[:200]:  # the loss and L2's ops, 200 of L1's, none of L0's
        trace.add("backward", id=node, grad=0.5)
    scope_of = {e["id"]: e.get("scope", "") for e in forward}
    l2 = sum(1 for s in scope_of.values() if s.startswith("L2"))
    with show(page, trace):
        expect(item(page, "s:L1")).to_have_attribute("data-state", "current")  # the last step
        states = {i["key"]: i for i in tree_items(page) if i["key"].startswith("s:")}
        assert states["s:L1"]["reached"] == 200
        assert states["s:L2"]["state"] == "partial"  # its parameters are not reached
        assert states["s:L2"]["reached"] == l2 - 17
        assert states["s:L0"]["state"] == "plain" and states["s:L0"]["reached"] == 0
        bands = [i for i in tree_items(page) if i["key"].startswith("r:") and "relu" in i["key"]]
        assert bands and all(b["state"] == "done" for b in bands)  # the loss: all reached
        page.wait_for_function(
            "() => { const v = opgraphViewer, u = v.hview?.boxes.get('s:L1')?.unit;"
            " return u && v.lookUnit(u).state === 'current' && v.lookUnit(u).progress > 0; }"
        )
        item(page, "s:L1").click()
        expect(page.locator("#details [data-field=step]")).to_contain_text("200 of")


def boxes_overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_separate_graphs_are_laid_out_as_separate_components(page):
    trace = Trace()
    for i in range(20):  # 20 requests: a*b + c each, the second one in a scope
        a, b, c = (trace.node(label=f"{name}{i}") for name in "abc")
        trace.node("add", [trace.node("mul", [a, b]), c], label=f"y{i}")
    for i in range(20):
        a, b = (trace.node(label=f"{name}{i}", scope=f"req{i}") for name in "ab")
        trace.node("add", [trace.node("mul", [a, b], f"req{i}"), b], f"req{i}")
    with show(page, trace, "?threshold=1000"):  # 180 nodes: the detail view
        expect(page.locator("#canvas")).to_have_attribute("data-view", "detail")
        boxes = page.evaluate(
            """() => { const v = opgraphViewer, scene = v.scene(), out = {};
                for (const node of scene.nodes) {
                    const root = v.graph.componentOf(node).id, p = scene.pos(node);
                    const b = out[root] ??= [Infinity, Infinity, -Infinity, -Infinity];
                    b[0] = Math.min(b[0], p.x); b[1] = Math.min(b[1], p.y);
                    b[2] = Math.max(b[2], p.x + 172); b[3] = Math.max(b[3], p.y + 56);
                }
                return Object.values(out); }"""
        )
        assert len(boxes) == 40
        assert not any(boxes_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[:i])
        assert len({b[0] for b in boxes}) > 2 and len({b[1] for b in boxes}) > 2
    with show(page, trace, "?threshold=10"):  # the overview: the 20 scopes side by side
        expect(page.locator("#canvas")).to_have_attribute("data-view", "hierarchy")
        page.wait_for_function("opgraphViewer.hview?.boxes.has('s:req19')")
        groups = page.evaluate(
            """() => [...opgraphViewer.hview.boxes.values()].filter(b => b.unit.kind === 'group')
                .map(b => [b.x, b.y, b.x + b.w, b.y + b.h])"""
        )
        assert len(groups) == 20
        assert not any(boxes_overlap(a, b) for i, a in enumerate(groups) for b in groups[:i])
        assert len({g[0] for g in groups}) > 2 and len({g[1] for g in groups}) > 2
    del trace.events[1 + 20 * 5 :]  # the 20 computations without scopes: bands per component
    trace.next_id = 100
    with show(page, trace, "?threshold=10"):
        expect(page.locator("#canvas")).to_have_attribute("data-view", "hierarchy")
        page.wait_for_function("opgraphViewer.hview?.order.length === 20 * 3")  # leaf, mul, add
        parts = page.evaluate(
            """() => { const out = {};
                for (const b of opgraphViewer.hview.order) {
                    const part = b.unit.key.split(":")[1];  // "r:<component>:<band> <op>"
                    const box = out[part] ??= [Infinity, Infinity, -Infinity, -Infinity];
                    box[0] = Math.min(box[0], b.x); box[1] = Math.min(box[1], b.y);
                    box[2] = Math.max(box[2], b.x + b.w); box[3] = Math.max(box[3], b.y + b.h);
                }
                return Object.values(out); }"""
        )
        assert len(parts) == 20
        assert not any(boxes_overlap(a, b) for i, a in enumerate(parts) for b in parts[:i])
        assert len({p[0] for p in parts}) > 2 and len({p[1] for p in parts}) > 2


def test_135k_nodes_first_groups_and_frame_times(page):
    trace, _, _ = moons(steps=2, batch=104)
    count = trace.next_id
    assert 130_000 <= count <= 140_000
    page.add_init_script(
        """window.longest = 0;
        new PerformanceObserver((list) => {
            for (const e of list.getEntries()) longest = Math.max(longest, e.duration);
        }).observe({type: "longtask"});"""
    )
    with show(page, trace, ""):  # the default threshold: the overview
        first_groups = page.evaluate("opgraphViewer.firstGroupsAt") / 1000
        applied = page.evaluate("performance.now()") / 1000
        page.wait_for_function("opgraphViewer.hview?.boxes.has('s:L2')")
        frames = page.evaluate(
            """async () => {
                const v = opgraphViewer, frames = [], draws = [];
                const frame = () => new Promise(requestAnimationFrame);
                await frame();
                let last = performance.now();
                for (let i = 0; i < 90; i++) {  // pan, then zoom in, then out
                    if (i < 30) v.camera.x += 9;
                    else v.camera.zoomAt(v.width / 2, v.height / 2, i < 60 ? 1.06 : 1 / 1.06);
                    v.follow = false;
                    const start = performance.now();
                    v.draw();
                    draws.push(performance.now() - start);
                    await frame();
                    const now = performance.now();
                    frames.push(now - last);
                    last = now;
                }
                return {frames, draws};
            }"""
        )
        longest = page.evaluate("longest")
        describe = page.evaluate(  # described and prepared in slices: the time of the slices
            """async () => { const v = opgraphViewer;
                v.toggleGroup("s:L1", true); v.toggleGroup("s:L1/N3", true); v.updateHierarchy();
                const busy = () => v.describing || v.layout.busy
                    || !v.hview.boxes.get("s:L1/N3")?.open;
                await new Promise((done) => {
                    const wait = () => busy() ? setTimeout(wait, 5) : done();
                    wait(); });
                v.toggleGroup("s:L1", false); v.toggleGroup("s:L1/N3", false);
                return [v.describeMs, v.layoutMs, v.hview.order.length, v.prepareMs]; }"""
        )
        median = statistics.median(frames["frames"])
        draw = statistics.median(frames["draws"])
        print(
            f"\n{count} nodes: first groups at {first_groups:.2f} s,"
            f" all applied by {applied:.2f} s;"
            f" pan/zoom frames median {median:.1f} ms, max {max(frames['frames']):.1f} ms;"
            f" draw median {draw:.2f} ms, max {max(frames['draws']):.2f} ms;"
            f" longest task while loading {longest:.0f} ms; opening L1 and its neuron N3"
            f" ({describe[2]} units shown): {describe[0]:.1f} ms on the page,"
            f" {describe[1]:.1f} ms in the worker, {describe[3]:.1f} ms preparing it"
        )
        assert first_groups < 10
        assert median < 200
        # opening a layer of 135k nodes' trace (its 16 neurons) is laid out in the worker
        item(page, "s:L1").click()
        page.wait_for_function("opgraphViewer.hview.boxes.has('s:L1/N15')")


def test_a_scope_holding_html_is_shown_as_text(page):
    payload = '<img src=x onerror="window.pwned=1">'
    trace = Trace()
    a = trace.node(label="a", scope=f"{payload}/<b onclick=alert(1)>bold")
    trace.node("mul", [a, a], scope=payload)
    with show(page, trace, "?threshold=1"):
        expect(item(page, f"s:{payload}")).to_contain_text(payload)
        item(page, f"s:{payload}").click()
        expect(page.locator("#details h2")).to_have_text(payload)
        inner = "<b onclick=alert(1)>bold"
        expect(item(page, f"s:{payload}/{inner}")).to_contain_text(inner)
        assert page.locator("#side img, #side b").count() == 0
        expect(page.locator("#canvas")).to_have_attribute("data-groups", re.compile(r"^[1-9]"))
        assert page.evaluate("window.pwned") is None


def test_scope_that_is_not_a_bounded_string_is_rejected(page):
    trace = Trace()
    trace.node(label="a", scope="L0")
    trace.node(label="b")
    trace.events[-1]["scope"] = 7
    trace.node(label="c")
    trace.events[-1]["scope"] = "x" * 1001
    server = StreamServer(trace.bytes())
    with server:
        page.goto(server.url)
        expect(page.locator("#st-nodes")).to_have_attribute("data-count", "1")
        expect(page.locator("#st-rejected")).to_contain_text("2 invalid events rejected")
        expect(page.locator("#st-rejected")).to_contain_text("'scope' must be a string")
    for bad in (7, "x" * 1001, None):
        with pytest.raises(InvalidEvent, match="'scope'"):
            check_event({**trace.events[1], "scope": bad}, 0)
    assert check_event(trace.events[1], 0)["scope"] == "L0"


def test_the_layout_worker_runs_under_the_served_policy(browser):
    trace, _, _ = moons(batch=2)
    context = browser.new_context(viewport=VIEWPORT)  # no bypass_csp: the policy applies
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if page_error(m) else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        with StreamServer(trace.bytes(), csp=CONTENT_SECURITY_POLICY) as server:
            page.goto(server.url + "?threshold=100")
            expect(page.locator("#canvas")).to_have_attribute("data-view", "hierarchy")
            expect(page.locator("#canvas")).to_have_attribute("data-groups", re.compile(r"^[1-9]"))
    finally:
        context.close()
    assert errors == []
