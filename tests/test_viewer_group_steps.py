"""A group over the training steps in Chromium (issue 19): the spread of its parameters'
gradients per step, and a dead ReLU unit marked as such. A hand-made stream of a small
layer traced as steps (docs/protocol.md, "Steps: `structure` and `step`") is played to the
real page by a stand-in server: layer L0 of three ReLU neurons (weights and bias in their
neuron's scope, as opgraph/nn.py makes them), four samples a step, the loss the sum of the
neurons' outputs, 12 steps. Neuron N1's bias drops to -5 at step 7: from then on its relu
outputs 0 for every sample, and its parameters' gradients are all 0.

What a user relies on: the group's panel has a "Grad spread" table whose rows are the min,
quartiles and max of |grad| over its parameters, step by step, equal to what the script
had; the spread is drawn as a chart there and as a sparkline on the group's box; N1 is
"dead" in the tree and on its box at the steps where it is, its layer says it holds a dead
unit, and scrubbing to an earlier step shows it alive.
"""

from __future__ import annotations

import re

from playwright.sync_api import expect
from test_viewer import frames, hello
from test_viewer_groups import item, wait_layout
from test_viewer_steps import f8, u4, u8
from viewer_support import StreamServer

expect.set_options(timeout=20_000)

STEPS = 12
DEAD_FROM = 7  # N1's bias is -5 from this step on
SAMPLES = [(0.5, -0.2), (-0.7, 0.3), (0.9, 0.8), (-0.1, -0.6)]
NEURONS = 3
FIELDS = ["min", "q1", "median", "q3", "max"]


def params_at(k: int) -> list[list[float]]:
    """[w0, w1, b] of each neuron at step k."""
    return [
        [0.5 + 0.1 * k, -0.3, 0.2],
        [0.1, 0.1, -5.0 if k >= DEAD_FROM else 5.0],
        [-0.2, 0.4 * k, 0.1],
    ]


class Step:
    """One step's graph: its nodes (op, operands, scope, label) in creation order, its data and
    grads, and the parameters' (ids 0-8, made before the step) grads."""

    def __init__(self, k: int):
        params = self.param_data = params_at(k)
        self.nodes: list[tuple] = []  # (op, parents (ids), scope, label)
        self.data: list[float] = []
        self.param_grad = [[0.0, 0.0, 0.0] for _ in range(NEURONS)]
        self.first = 3 * NEURONS  # the first id of the defining step
        relus = []  # (node index, pre-activation)
        backprop = []  # per relu: (its add's index, the muls' indexes, x ids, neuron)
        for x0, x1 in SAMPLES:
            xs = [self.add(None, [], "", "x0", x0), self.add(None, [], "", "x1", x1)]
            for j in range(NEURONS):
                (w0, w1, b), scope = params[j], f"L0/N{j}"
                m0 = self.add("mul", [3 * j, xs[0]], scope, "", w0 * x0)
                m1 = self.add("mul", [3 * j + 1, xs[1]], scope, "", w1 * x1)
                a = self.add("add", [m0, m1], scope, "", w0 * x0 + w1 * x1)
                a2 = self.add("add", [a, 3 * j + 2], scope, "", w0 * x0 + w1 * x1 + b)
                r = self.add("relu", [a2], scope, "", max(0.0, self.data[-1]))
                relus.append(r)
                backprop.append((j, (x0, x1), self.data[a2 - self.first]))
        total = relus[0]
        for r in relus[1:]:
            value = self.data[total - self.first] + self.data[r - self.first]
            total = self.add("add", [total, r], "", "", value)
        self.root = total - self.first
        # a hinge in scope "loss": a relu of no parameters, 0 at every step (not a unit)
        flipped = self.add("neg", [total], "loss", "", -self.data[total - self.first])
        self.add("relu", [flipped], "loss", "hinge", 0.0)
        # d loss / d relu = 1; through a relu only where its input was positive
        self.grad = [1.0] * len(self.nodes)  # every node on the way to the loss: 1 or 0
        for j, (x0, x1), pre in backprop:
            if pre > 0:
                self.param_grad[j][0] += x0
                self.param_grad[j][1] += x1
                self.param_grad[j][2] += 1.0
        self.grad[-2:] = [0.0, 0.0]  # made after the loss: the pass does not reach them
        for index, (op, parents, _, _) in enumerate(self.nodes):
            if op == "relu" and self.data[parents[0] - self.first] <= 0:
                for upstream in self.upstream(index):
                    self.grad[upstream] = 0.0

    def add(self, op, parents, scope, label, data) -> int:
        self.nodes.append((op, parents, scope, label))
        self.data.append(data)
        return self.first + len(self.nodes) - 1

    def upstream(self, index: int) -> list[int]:
        """The step's nodes a relu's input was made from, inside its neuron (not the x's)."""
        _, parents, scope, _ = self.nodes[index]
        out = []
        for parent in parents:
            i = parent - self.first
            if 0 <= i and self.nodes[i][2] == scope:
                out += [i, *self.upstream(i)]
        return out

    def params(self) -> list[float]:
        return [p for neuron in self.param_data for p in neuron]

    def grads(self) -> list[float]:
        return [g for neuron in self.param_grad for g in neuron]


STEP_LIST = [Step(k) for k in range(1, STEPS + 1)]
N = len(STEP_LIST[0].nodes)


def stream() -> bytes:
    first = STEP_LIST[0]
    events: list[dict] = []
    seq = 0

    def emit(event):
        nonlocal seq
        seq += 1
        events.append({**event, "seq": seq})

    for j in range(NEURONS):
        for name, value in zip(["w0", "w1", "b"], first.param_data[j], strict=True):
            emit({"type": "forward", "id": len(events), "op": None, "parents": [],
                  "data": value, "label": name, "scope": f"L0/N{j}"})  # fmt: skip
    for i, (op, parents, scope, label) in enumerate(first.nodes):
        event = {"type": "forward", "id": first.first + i, "op": op, "parents": parents,
                 "data": first.data[i], "label": label}  # fmt: skip
        if scope:
            event["scope"] = scope
        emit(event)
    root = first.first + first.root
    order = list(range(N - 1, -1, -1)) + [N + i for i in range(3 * NEURONS)]
    emit({"type": "backward_begin", "root": root, "pass": 1})
    grads = first.grad + first.grads()
    for index in order:
        node = first.first + index if index < N else index - N
        emit({"type": "backward", "id": node, "grad": grads[index]})
    emit({"type": "backward_end", "root": root, "pass": 1})
    emit({"type": "structure", "structure": 1, "ids": u8(range(first.first, first.first + N)),
          "offsets": u4(range(N)), "inputs": u8(range(3 * NEURONS)), "order": u4(order),
          "root": first.root})  # fmt: skip
    for k, step in enumerate(STEP_LIST, start=1):
        emit({"type": "step", "step": k, "structure": 1, "first": first.first + (k - 1) * N,
              "pass": k, "data": f8(step.data + step.params()),
              "grad": f8(step.grad + step.grads())})  # fmt: skip
    events[0:0] = [hello()]
    events[0]["ops"] = {"add": "core", "mul": "core", "relu": "core"}
    return frames(*events)


def spread(values: list[float]) -> list[float]:
    """min, quartiles, max of |values|, interpolated as the page does (numpy's default)."""
    ordered = sorted(abs(v) for v in values)

    def at(q):
        position = q * (len(ordered) - 1)
        low, high = int(position), min(int(position) + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return [ordered[0], at(0.25), at(0.5), at(0.75), ordered[-1]]


def spread_rows(page) -> dict[int, list[float]]:
    rows = page.eval_on_selector_all(
        "#details table.spread-table tbody tr",
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))",
    )
    return {int(r[0]): [float(v) for v in r[1:]] for r in rows}


def test_grad_spread_and_a_dead_relu_unit_over_the_steps(page):
    with StreamServer(stream()) as server:
        page.goto(server.url + "?threshold=10")
        page.wait_for_function(f"opgraphViewer.steps.latest?.step === {STEPS}")
        assert page.evaluate("opgraphViewer.rejections") == []
        expect(page.locator("#canvas")).to_have_attribute("data-view", "hierarchy")

        # at the newest step N1 is dead: its layer says so in the tree
        expect(item(page, "s:L0")).to_contain_text("1 dead unit")
        item(page, "s:L0").click()  # opens it: its neurons, N1 marked dead
        expect(item(page, "s:L0/N1")).to_have_text(re.compile(r"N1 · .* · dead$"))
        expect(item(page, "s:L0/N1")).to_have_attribute("data-dead", "true")
        for j in (0, 2):
            expect(item(page, f"s:L0/N{j}")).not_to_contain_text("dead")
        expect(item(page, "s:loss")).not_to_contain_text("dead")  # a hinge, not a unit

        # the layer's panel: the spread of its 9 parameters' |grad| at each step
        expect(page.locator("#details h2")).to_have_text("L0")
        expect(page.locator("#details [data-field=dead]")).to_have_text(
            f"1 dead unit inside at step {STEPS}"
        )
        expect(page.locator("#details table.spread-table caption")).to_have_text("Grad spread")
        expected = {k: spread(s.grads()) for k, s in enumerate(STEP_LIST, start=1)}
        assert spread_rows(page) == expected
        last = expected[STEPS]
        expect(page.locator("#details .spread-summary")).to_contain_text(
            f"9 parameters, step {STEPS}: |grad| median"
        )
        label = page.locator("#details canvas.spread-chart").get_attribute("aria-label")
        assert label.startswith("|grad| of this group's 9 parameters over 12 steps")
        assert last[0] == 0  # N1's parameters: no gradient once dead

        # N1's own: its gradients vanish from the step it died
        item(page, "s:L0/N1").click()  # selects it (and opens it)
        expect(page.locator("#details h2")).to_have_text("L0/N1")
        expect(page.locator("#details [data-field=dead]")).to_have_text(
            f"dead: its relu nodes output 0 for every sample of step {STEPS}"
        )
        rows = spread_rows(page)
        assert rows == {k: spread(s.grads()[3:6]) for k, s in enumerate(STEP_LIST, start=1)}
        assert all(rows[k] == [0.0] * 5 for k in range(DEAD_FROM, STEPS + 1))
        assert all(rows[k][4] > 0 for k in range(1, DEAD_FROM))
        item(page, "s:L0/N1").click()  # closed again: a box

        # on the canvas, zoomed in on the layer: N1's box tagged dead, a sparkline per neuron
        wait_layout(page, "s:L0/N2")
        counts = zoom_on(page, "s:L0")
        assert counts["dead"] == 1 and counts["sparklines"] == NEURONS

        # scrubbing to step 3: N1 was alive then
        page.locator("#step-slider").fill("2")  # the third kept step
        expect(item(page, "s:L0/N1")).not_to_contain_text("dead")
        expect(item(page, "s:L0")).not_to_contain_text("dead")
        assert item(page, "s:L0/N1").get_attribute("data-dead") is None
        counts = zoom_on(page, "s:L0")
        assert counts["dead"] == 0 and counts["sparklines"] == NEURONS
        item(page, "s:L0/N1").press("Enter")  # selected: no dead fact, the step marked
        expect(page.locator("#details .spread-summary")).to_contain_text("3 parameters, step 3:")
        assert page.locator("#details [data-field=dead]").count() == 0


def zoom_on(page, key: str) -> dict:
    """Fit the camera on the box of `key` at a readable zoom (names and numbers written),
    draw, and return what the draw counted."""
    return page.evaluate(
        """(key) => { const v = opgraphViewer, b = v.hview.boxes.get(key), c = v.camera;
            v.follow = false;
            c.fit({left: b.x, top: b.y, right: b.x + b.w, bottom: b.y + b.h}, v.width, v.height);
            c.scale = Math.max(c.scale, 0.9);
            v.draw(); return v.drawCounts; }""",
        key,
    )
