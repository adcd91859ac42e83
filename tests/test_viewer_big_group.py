"""Opening a group of 20,000 nodes in Chromium, from a hand-made stream shaped like a neuron of
the moons model traced over many steps: neuron L1/N0's 16 weights and bias, and for each of
600 samples (100 points by 6 steps) its chain of a mul and an add per input and a relu, its
inputs the outputs of layer L0 (33 nodes a sample: 19,817 nodes in the group).

What a user relies on, checked without timing anything: the page stays interactive while the
group is described, laid out and drawn (no task of the page's thread runs long enough to
freeze it: see HANG_MS), the layout gives every node of the group a box inside the group's,
the group is about as wide as a screen rather than a strip, the camera fits it, the edges
drawn are bounded by the pixels in view, and a node of the open group can be picked from the
tree. The times are printed (pytest -s) for docs/viewer.md, never asserted.
"""

from __future__ import annotations

from playwright.sync_api import expect
from test_viewer_groups import Trace, item
from viewer_support import StreamServer

expect.set_options(timeout=60_000)

INPUTS = 16  # L1's neurons read L0's 16 outputs
SAMPLES = 600
GROUP = "L1/N0"
GROUP_NODES = INPUTS + 1 + SAMPLES * (2 * INPUTS + 1)

# A hang detector, not a speed test (the machine may be loaded: a task's time on the wall
# includes the time its process waited for a core). Opening the group once ran as tasks of
# 0.5 to 1.2 s (describing 20,000 units, preparing them, stroking 19,200 edges as polygons),
# a trace of 50 steps froze the tab for minutes; now no task is much over 50 ms on a quiet
# machine. What fails without the fix whatever the load are the checks of the layout, the
# camera and the edges drawn.
HANG_MS = 1000

LONG_TASKS = """window.longTasks = [];
    new PerformanceObserver((list) => {
        for (const e of list.getEntries()) longTasks.push(Math.round(e.duration));
    }).observe({type: "longtask"});"""


# The long tasks so far, once the frames drawn by now are done and their entries delivered.
LATEST_TASKS = """() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(
    () => setTimeout(() => done(longTasks), 100))))"""


def neuron_trace() -> Trace:
    trace = Trace()
    weights = [trace.node(scope=GROUP, label=f"w{i}") for i in range(INPUTS)]
    bias = trace.node(scope=GROUP, label="b")
    for _ in range(SAMPLES):
        xs = [trace.node(scope=f"L0/N{j}", label=f"x{j}") for j in range(INPUTS)]
        act = bias
        for w, x in zip(weights, xs, strict=True):
            act = trace.node("add", [act, trace.node("mul", [w, x], GROUP)], GROUP)
        trace.node("relu", [act], GROUP)
    return trace


def settled(page, key: str) -> None:
    """Until the layout showing `key` open is described, laid out, prepared and drawn."""
    page.wait_for_function(
        """(key) => { const v = opgraphViewer;
            return v.hview?.boxes.get(key)?.open && v.hview.drawn && !v.layout.busy
              && !v.describing && v.hasked.open === v.openVersion
              && v.hasked.version === v.graph.version; }""",
        arg=key,
        timeout=120_000,
        polling=50,
    )


def test_opening_a_group_of_20000_nodes_stays_interactive_and_fits_it(page):
    trace = neuron_trace()
    page.add_init_script(LONG_TASKS)
    with StreamServer(trace.bytes()) as server:
        page.goto(server.url)
        expect(page.locator("#st-nodes")).to_have_attribute("data-count", str(trace.next_id))
        expect(item(page, "s:L1")).to_be_visible()
        page.wait_for_function("() => opgraphViewer.hview?.drawn && !opgraphViewer.layout.busy")
        page.evaluate("longTasks.length = 0")
        started = page.evaluate("performance.now()")

        item(page, "s:L1").click()  # the layer, then its neuron, as a user opens them
        expect(item(page, f"s:{GROUP}")).to_be_visible()
        item(page, f"s:{GROUP}").click()
        expect(item(page, f"s:{GROUP}")).to_have_attribute("aria-expanded", "true")
        expect(item(page, f"s:{GROUP}")).to_have_attribute("data-count", str(GROUP_NODES))
        # while it is being laid out, the page answers and keeps drawing frames
        frames = page.evaluate(
            "() => new Promise((done) => { let n = 0; const tick = () =>"
            " ++n === 3 ? done(n) : requestAnimationFrame(tick); requestAnimationFrame(tick); })"
        )
        assert frames == 3
        settled(page, f"s:{GROUP}")
        opened = page.evaluate("performance.now()") - started

        # every node of the group has a box inside the group's frame, none of them overlap
        layout = page.evaluate(
            """(key) => { const v = opgraphViewer, g = v.hview.boxes.get(key);
                const ids = new Set(v.graph.scopes.byPath.get(key.slice(2)).ids), inside = [];
                for (const [k, b] of v.hview.boxes) {
                    if (!k.startsWith("n:") || !ids.has(Number(k.slice(2)))) continue;
                    inside.push(b.x >= g.x && b.y >= g.y && b.x + b.w <= g.x + g.w
                        && b.y + b.h <= g.y + g.h);
                }
                const c = v.camera;
                return {nodes: inside.length, inside: inside.every(Boolean),
                    group: [g.x, g.y, g.w, g.h],
                    screen: [c.x + g.x * c.scale, c.y + g.y * c.scale,
                        g.w * c.scale, g.h * c.scale],
                    view: [v.width, v.height], follow: v.follow,
                    times: [v.describeMs ?? -1, v.layoutMs, v.prepareMs ?? -1]}; }""",
            f"s:{GROUP}",
        )
        longest = max(page.evaluate(LATEST_TASKS), default=0)
        describe, worker, prepare = layout["times"]
        print(
            f"\nopening {GROUP} ({GROUP_NODES} nodes, {trace.next_id} in the trace):"
            f" drawn {opened:.0f} ms after the click; describe {describe:.0f} ms,"
            f" worker {worker:.0f} ms, prepare {prepare:.0f} ms (in slices);"
            f" longest task {longest} ms"
        )
        assert longest < HANG_MS  # the page never froze while the group opened
        assert layout["nodes"] == GROUP_NODES and layout["inside"]
        _, _, w, h = layout["group"]
        assert 1 <= w / h <= 2.5  # about a screen's shape: not a strip, not a sliver
        # the camera fits the group: all of it on the canvas, filling its width or height
        x, y, sw, sh = layout["screen"]
        width, height = layout["view"]
        assert x >= 0 and y >= 0 and x + sw <= width + 1 and y + sh <= height + 1
        assert sw >= 0.8 * (width - 80) or sh >= 0.8 * (height - 80)
        assert layout["follow"] is False  # the camera stays on it as the graph grows

        # fitted, its nodes are a few pixels wide: the boxes are the picture, the 19,200 edges
        # between them a grey haze left out; zoomed in until they are readable, drawn again
        fitted = page.evaluate("opgraphViewer.drawCounts")
        assert fitted["boxes"] >= GROUP_NODES
        assert fitted["lines"] == 0 and fitted["hidden"] >= SAMPLES * INPUTS

        # a node of the open group, picked in the tree: its details
        node = page.locator('#group-tree [role=treeitem][data-key^="n:"]').first
        node.click()
        expect(page.locator("#details h2")).to_have_text("w0")
        # zoomed in: the page draws what is in view, edges included
        page.evaluate(
            """() => { const v = opgraphViewer; v.camera.zoomAt(v.width / 2, v.height / 2, 10);
                v.draw(); }"""
        )
        zoomed = page.evaluate("opgraphViewer.drawCounts")
        assert 0 < zoomed["boxes"] < GROUP_NODES / 10
        assert zoomed["lines"] > 0 and zoomed["hidden"] == 0


def test_nodes_that_arrive_while_a_big_group_is_described_are_shown_next(page):
    """The description of a 20,000-node group takes several slices; a node arriving in
    between (here: unscoped, using the group's last node, at a rank no unscoped node had)
    has no band in the description under way. It is left out of it, then shown by the next
    one; the page neither fails nor stops laying out."""
    trace = neuron_trace()
    with StreamServer(trace.bytes()) as server:
        page.goto(server.url)
        expect(page.locator("#st-nodes")).to_have_attribute("data-count", str(trace.next_id))
        page.wait_for_function("() => opgraphViewer.hview?.drawn && !opgraphViewer.layout.busy")
        last = trace.next_id - 1  # the group's last relu
        slices = page.evaluate(
            """async ([group, last]) => { const v = opgraphViewer;
                v.toggleGroup("s:L1", true); v.toggleGroup(group, true); v.draw();
                let slices = 0;  // until the description is under way, then a node arrives
                while (v.describing && v.describing.slices.work === 0) {
                    await new Promise((done) => setTimeout(done, 0)); slices++; }
                v.graph.addNode({id: last + 1, op: "neg", parents: [last], data: -1});
                v.requestDraw();
                return v.describing ? slices : -1; }""",
            [f"s:{GROUP}", last],
        )
        assert slices >= 0  # the node arrived while the description was under way
        settled(page, f"s:{GROUP}")
        edges = page.evaluate(
            "(last) => opgraphViewer.hview.edges.filter(e => e.from === `n:${last}`)"
            ".map(e => [e.to.split(' ')[1], e.count])",
            last,
        )
        assert edges == [["neg", 1]]  # from the relu to the band of the late node
