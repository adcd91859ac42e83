"""A real training run in the page: the moons demo's model (`MLP(2, [16, 16, 1])`, the demo's
loss, full-batch gradient descent) trained by the real engine for a few steps, its steps
sent to the page in Chromium as the steps protocol says the tracer sends them
(docs/protocol.md, "Steps"): the first step as `forward`/`backward` events, its
`structure` and `step`, then one values-only `step` per step, built from the real nodes of
each step. The page's History of a parameter is what the script saw (its data as the step
used it, its grad after the step's backward), the loss curve is the script's loss, and
scrubbing shows an earlier step's numbers. The screenshots of docs/viewer.md
(viewer-training.png, viewer-training-diff.png) are taken here (test_viewer.screenshot).

The tracer (`opgraph.trace`) emitting these maps itself is tested on its own; here the maps
are made from the engine's nodes so that the page is checked against numbers the test
knows independently of the tracer."""

from __future__ import annotations

import random
import struct

import pytest
from playwright.sync_api import expect
from test_viewer import frames, hello, screenshot
from viewer_support import StreamServer

from opgraph import Engine, Value, topological_order
from opgraph.demo import SEED, learning_rate, loss, make_moons
from opgraph.nn import MLP

expect.set_options(timeout=20_000)
POINTS = 10
STEPS = 12


def forward_map(node: Value, seq: int) -> dict:
    op = node._opdef
    event = {"type": "forward", "seq": seq, "id": node._id, "op": op and op.name}
    event.update(parents=[p._id for p in node._prev], data=node.data, label=node.label)
    if op is not None and op.constants:
        event["const"] = [value for _, value in op.constants]
    if node.scope:
        event["scope"] = node.scope
    return event


class Run:
    """The training run and the maps a tracer sends for it."""

    def __init__(self) -> None:
        engine = Engine(name="moons-steps", entry_points=False)
        X, y = make_moons(POINTS, noise=0.1, seed=SEED)
        self.model = MLP(2, [16, 16, 1], rng=random.Random(SEED), engine=engine)
        self.seen: dict[int, list[tuple[int, float, float]]] = {}  # parameter id -> rows
        self.losses: list[float] = []
        self.events: list[dict] = []
        self.seq = 0
        self.offsets: list[int] | None = None
        last_id = max(p._id for p in self.model.parameters())
        for k in range(1, STEPS + 1):
            total, _ = loss(self.model, X, y)
            self.model.zero_grad()
            total.backward()
            last_id = self.send_step(k, total, last_id)
            for p in self.model.parameters():
                self.seen.setdefault(p._id, []).append((k, p.data, p.grad))
            self.losses.append(total.data)
            rate = learning_rate(k - 1, STEPS)
            for p in self.model.parameters():
                p.data -= rate * p.grad

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def send_step(self, k: int, root: Value, last_id: int) -> int:
        """The maps of step k (its nodes: those made since `last_id`); returns its last id."""
        graph = topological_order(root)  # parents before children, by id
        nodes = [n for n in graph if n._id > last_id]
        inputs: list[Value] = []  # the nodes made before, in order of first use
        known = {n._id for n in nodes}
        for node in nodes:
            for parent in node._prev:
                if parent._id not in known:
                    known.add(parent._id)
                    inputs.append(parent)
        items = nodes + inputs
        first = nodes[0]._id
        offsets = [n._id - first for n in nodes]
        if self.offsets is None:
            self.define(nodes, inputs, root)
            self.offsets = offsets
        assert offsets == self.offsets, "every step of the demo has the same structure"
        data = struct.pack(f"<{len(items)}d", *(n.data for n in items))
        grad = struct.pack(f"<{len(items)}d", *(n.grad for n in items))
        step = {"type": "step", "seq": self.next_seq(), "step": k, "structure": 1}
        step.update(first=first, data=data, grad=grad, **{"pass": k})
        self.events.append(step)
        return nodes[-1]._id

    def define(self, nodes: list[Value], inputs: list[Value], root: Value) -> None:
        """The first step in full: its nodes, its pass, then its structure."""
        for node in sorted(inputs, key=lambda n: n._id) + nodes:
            self.events.append(forward_map(node, self.next_seq()))
        items = nodes + inputs
        order = sorted(range(len(items)), key=lambda i: -items[i]._id)  # root first
        self.events.append(
            {"type": "backward_begin", "seq": self.next_seq(), "root": root._id, "pass": 1}
        )
        for i in order:
            self.events.append({"type": "backward", "seq": self.next_seq(), "id": items[i]._id,
                                "grad": items[i].grad})  # fmt: skip
        self.events.append(
            {"type": "backward_end", "seq": self.next_seq(), "root": root._id, "pass": 1}
        )
        ids = [n._id for n in nodes]
        self.events.append({
            "type": "structure", "seq": self.next_seq(), "structure": 1,
            "ids": struct.pack(f"<{len(ids)}Q", *ids),
            "offsets": struct.pack(f"<{len(ids)}I", *(i - ids[0] for i in ids)),
            "inputs": struct.pack(f"<{len(inputs)}Q", *(n._id for n in inputs)),
            "order": struct.pack(f"<{len(order)}I", *order),
            "root": items.index(root),
        })  # fmt: skip


@pytest.fixture(scope="module")
def run() -> Run:
    return Run()


def history_rows(page) -> list[tuple[int, float, float]]:
    table = page.get_by_role("table", name="History")
    expect(table).to_be_visible()
    cells = table.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return [(int(s), float(d), float(g)) for s, d, g in cells]


def test_a_real_training_run_in_the_page(page, run, tmp_path):
    with StreamServer(frames(hello(), *run.events)) as server:
        page.goto(server.url)
        expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
        assert page.evaluate("opgraphViewer.rejected") == 0

        # the History of parameters, as the script saw them: the first weight of L0/N0, a
        # weight of the last layer, a bias
        params = run.model.parameters()
        for p in (params[0], params[-2], params[-1]):
            page.evaluate("id => opgraphViewer.select(opgraphViewer.graph.nodes.get(id))", p._id)
            assert history_rows(page) == run.seen[p._id]

        # the loss curve: the script's loss at every step
        curve = page.get_by_role("img", name="Loss over")
        expect(curve).to_have_attribute("data-points", str(STEPS))
        page.locator("#loss-details summary").click()
        rows = page.get_by_role("table", name="Loss").locator("tbody tr")
        expect(rows).to_have_count(STEPS)
        cells = rows.evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.textContent))")
        assert [(int(s), float(v)) for s, v in cells] == list(enumerate(run.losses, start=1))
        page.locator("#loss-details summary").click()

        # scrubbing: step 3's numbers on the selected parameter
        p = params[0]
        page.evaluate("id => opgraphViewer.select(opgraphViewer.graph.nodes.get(id))", p._id)
        slider = page.get_by_role("slider", name="Training step")
        slider.focus()
        page.keyboard.press("Home")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        expect(page.locator("#step-text")).to_have_text(f"step 3 of {STEPS}")
        expect(page.locator('#details dd[data-field="training-step"]')).to_have_text(
            f"3 of {STEPS}"
        )
        data = page.locator('#details dd[data-field="data"]').inner_text()
        assert float(data) == run.seen[p._id][2][1]
        screenshot(page, "viewer-training.png", tmp_path)  # docs/viewer.md: a parameter's History

        # what moved most from step 1 to the last step, listed and highlighted
        page.get_by_role("button", name="Newest").click()
        page.get_by_label("Compare with step").fill("1")
        page.get_by_label("Compare with step").press("Enter")
        movers = page.get_by_role("list", name="Top movers").locator("li")
        expect(movers).to_have_count(10)
        page.locator("#tree-section [role=treeitem]", has_text="L0").first.click()
        page.keyboard.press("Enter")  # open layer L0
        screenshot(page, "viewer-training-diff.png", tmp_path)
