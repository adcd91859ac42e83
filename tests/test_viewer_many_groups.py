"""The hierarchical overview with many groups, in Chromium: 20,000 top-level scopes sharing
one input, one scope per sample around a small MLP, and a ring of 20,000 groups for the
layout worker. Built with the real engine and served by a real `engine.serve()` where a
trace is involved.

Nothing here is timed (benchmarks/viewer_groups.py measures). What is checked is what makes
the page fast whatever the number of groups: a frame draws only what is in view (the page's
counters of boxes and edge segments drawn, against the boxes in view counted here), the many
edges of one unit are drawn as one bundle whose count is the sum of the edges it stands for,
boxes smaller than a pixel are merged, a box's colour is worked out once and kept while
nothing it depends on changes (the page's count of looks worked out per draw) yet changes
when a selection or a backward pass reaches its group, the layout gives every group a box
and no two boxes overlap, and the page answers while it is panned.
"""

from __future__ import annotations

import random

from playwright.sync_api import expect
from viewer_support import StreamServer

import opgraph
from opgraph import Engine
from opgraph.nn import MLP

expect.set_options(timeout=60_000)

# The boxes in view, counted from the layout and the camera (not by the page's drawing).
IN_VIEW = """() => { const v = opgraphViewer, c = v.camera;
    const [left, top] = c.toWorld(0, 0), [right, bottom] = c.toWorld(v.width, v.height);
    let n = 0;
    for (const b of v.hview.order) {
        if (!b.open && b.x <= right && b.x + b.w >= left && b.y <= bottom && b.y + b.h >= top) n++;
    }
    return n; }"""

# Pairs of boxes of the layout that overlap (closed boxes: all of one size, so two overlap
# only if they share or neighbour a cell of that size).
OVERLAPS = """(boxes) => {
    const cells = new Map(), found = [];
    const key = (i, j) => `${i},${j}`;
    for (const b of boxes) {
        const i = Math.floor(b.x / b.w), j = Math.floor(b.y / b.h);
        for (let di = -1; di <= 1; di++) for (let dj = -1; dj <= 1; dj++) {
            for (const o of cells.get(key(i + di, j + dj)) ?? []) {
                const apart = b.x >= o.x + o.w || o.x >= b.x + b.w
                    || b.y >= o.y + o.h || o.y >= b.y + b.h;
                if (!apart) found.push([o.key, b.key]);
            }
        }
        const k = key(i, j);
        if (!cells.has(k)) cells.set(k, []);
        cells.get(k).push(b);
    }
    return found; }"""


def overview(page, server) -> None:
    """Until the page shows the overview of every node the server has."""
    page.goto(server.url)
    expect(page.locator("#st-conn")).to_contain_text("connected")
    whole_overview(page, server)


def whole_overview(page, server) -> None:
    """Until the page's overview, laid out and drawn, holds every node the server sent."""
    assert server.flush(timeout=60)  # with a viewer connected: every event is sent to it
    nodes = server.stats()["nodes"]
    page.wait_for_function(
        """(nodes) => { const v = window.opgraphViewer;
            return v && v.graph.size === nodes && v.hasked?.version === v.graph.version
              && !v.layout.busy && v.hview?.drawn === true; }""",
        arg=nodes,
        timeout=120_000,
        polling=200,
    )
    expect(page.locator("#canvas")).to_have_attribute("data-view", "hierarchy")


def look_at(page, scale: float) -> dict:
    """Zoom the camera on the middle of the overview, draw, return what the draw counted
    and the boxes in view."""
    counts = page.evaluate(
        """(scale) => { const v = opgraphViewer, b = v.hview.box;
            v.follow = false; v.camera.scale = scale;
            v.camera.x = v.width / 2 - (b.left + b.right) / 2 * scale;
            v.camera.y = v.height / 2 - (b.top + b.bottom) / 2 * scale;
            v.draw(); return v.drawCounts; }""",
        scale,
    )
    counts["in_view"] = page.evaluate(IN_VIEW)
    return counts


def segments(counts: dict) -> int:
    return counts["lines"] + counts["trunks"] + counts["buses"] + counts["stubs"]


def test_20000_groups_sharing_one_input(page):
    engine = Engine(name="shared", entry_points=False)
    groups = 20_000
    with engine.serve(port=0) as server:
        x = engine.value(1.0, label="x")
        for i in range(groups):
            with opgraph.scope(f"g{i}"):
                x * 2.0
        overview(page, server)
        expect(page.locator("#tree-count")).to_have_text("20,000 groups")
        keys = page.evaluate("[...opgraphViewer.hview.boxes.keys()]")
        assert {k for k in keys if k.startswith("s:")} == {f"s:g{i}" for i in range(groups)}
        assert [k for k in keys if k.startswith("r:")] == ["r:0 leaf"]  # the shared input x
        # every group uses x once: 20,000 edges, drawn as one bundle that says so
        edges = page.evaluate("opgraphViewer.hview.edges.map(e => [e.from, e.to, e.count])")
        assert sorted(edges) == sorted(["r:0 leaf", f"s:g{i}", 1] for i in range(groups))
        bundles = page.evaluate("opgraphViewer.hview.prepared.bundles")
        assert bundles == [{"hub": "r:0 leaf", "side": "out", "count": groups, "members": groups}]
        boxes = page.evaluate(
            "opgraphViewer.hview.order.map(({unit, x, y, w, h}) => ({key: unit.key, x, y, w, h}))"
        )
        assert page.evaluate(OVERLAPS, boxes) == []
        # laid out as a block, not one column 20,000 boxes tall
        width = max(b["x"] + b["w"] for b in boxes)
        height = max(b["y"] + b["h"] for b in boxes)
        assert 0.25 < width / height < 4

        # the whole overview fitted: every box in view, but boxes a pixel wide are merged
        # into a rectangle per column, and the 20,000 edges are one trunk and a bus per column
        fitted = page.evaluate("opgraphViewer.drawCounts")
        fitted["in_view"] = page.evaluate(IN_VIEW)
        assert fitted["boxes"] == fitted["in_view"] == groups + 1
        assert fitted["runs"] < 1_000
        assert fitted["lines"] == 0 and fitted["trunks"] == 1
        assert segments(fitted) < 1_000
        # zoomed in: what is drawn is bounded by the few hundred boxes in view
        for scale in (0.1, 0.4, 1.0):
            counts = look_at(page, scale)
            assert counts["boxes"] == counts["in_view"] < groups / 3
            assert counts["stubs"] <= counts["boxes"]  # one per box the bundle reaches
            assert segments(counts) <= 2 * counts["boxes"] + 2

        # dragging the canvas with the mouse: the page keeps answering
        canvas = page.locator("#canvas").bounding_box()
        page.mouse.move(canvas["x"] + 300, canvas["y"] + 300)
        page.mouse.down()
        page.mouse.move(canvas["x"] + 100, canvas["y"] + 150, steps=20)
        page.mouse.up()
        page.wait_for_function("() => opgraphViewer.follow === false", timeout=30_000)
        moved = page.evaluate("opgraphViewer.drawCounts")
        assert segments(moved) <= 2 * moved["boxes"] + 2


# The colour of a box's middle pixel, the camera centred on it at `scale` (the box's middle
# on a pixel's: a box two or more pixels tall covers that pixel whole, no anti-aliasing).
COLOUR_AT = """([key, scale]) => {
    const v = opgraphViewer, b = v.hview.boxes.get(key), c = v.camera;
    v.follow = false; c.scale = scale;
    c.x = Math.round(v.width / 2) + 0.5 - (b.x + b.w / 2) * scale;
    c.y = Math.round(v.height / 2) + 0.5 - (b.y + b.h / 2) * scale;
    v.draw();
    const [r, g, bl] = v.ctx.getImageData(Math.round(v.width / 2) * devicePixelRatio,
        Math.round(v.height / 2) * devicePixelRatio, 1, 1).data;
    return "#" + [r, g, bl].map((n) => n.toString(16).padStart(2, "0")).join(""); }"""

# Draws while the camera moves, as a drag does: the looks each worked out.
PAN_LOOKS = """(frames) => { const v = opgraphViewer, worked = [];
    v.follow = false;
    for (let i = 0; i < frames; i++) {
        v.camera.x += 7; v.camera.y += i % 2 ? 3 : -3;
        v.draw(); worked.push(v.drawCounts.looks);
    }
    return worked; }"""

PLAIN, DONE, SELECTED = "#8792a2", "#e8892b", "#1c7ed6"  # tiny boxes' colours (render.js)


def test_a_pan_works_out_no_colour_yet_a_selection_or_a_backward_pass_shows(page):
    engine = Engine(name="looks", entry_points=False)
    groups = 20_000
    with engine.serve(port=0) as server:
        x = engine.value(1.0, label="x")
        outs = []
        for i in range(groups):
            with opgraph.scope(f"g{i}"):
                outs.append(x * 2.0)
        overview(page, server)
        fitted = page.evaluate("opgraphViewer.drawCounts")
        assert fitted["runs"] > 0  # boxes a few pixels wide: merged, colours kept on the boxes
        # panning changes nothing a colour depends on: no look is worked out again
        assert page.evaluate(PAN_LOOKS, 5) == [0] * 5
        for scale in (0.1, 0.4, 1.0):  # plain boxes with names; boxes with their text
            look_at(page, scale)
            assert page.evaluate(PAN_LOOKS, 3) == [0] * 3

        # boxes 10 pixels wide (merged when they touch): g7 and g9 plain
        tiny = 0.06
        assert page.evaluate(COLOUR_AT, ["s:g7", tiny]) == PLAIN
        assert page.evaluate(COLOUR_AT, ["s:g9", tiny]) == PLAIN
        assert page.evaluate("opgraphViewer.drawCounts.runs") > 0

        # selecting g7 from the group tree (keyboard): its box turns the selection's colour
        item = page.locator('#group-tree [data-key="s:g7"]')
        item.focus()
        item.press("Enter")
        page.wait_for_function("opgraphViewer.selected === 's:g7'")
        assert page.evaluate(COLOUR_AT, ["s:g7", tiny]) == SELECTED
        assert page.evaluate(COLOUR_AT, ["s:g8", tiny]) == PLAIN
        assert page.evaluate(PAN_LOOKS, 3) == [0] * 3

        # A backward pass from g9's output while the next layout is still being made (the
        # layout worker held busy): the page draws the layout it has, and g9 lights up in it.
        page.evaluate("opgraphViewer.layout.busy = true")
        page.evaluate("opgraphViewer.hview.held = true")  # marks the layout drawn now
        backward(page, server, outs[9])
        assert page.evaluate(COLOUR_AT, ["s:g9", tiny]) == DONE
        assert page.evaluate(COLOUR_AT, ["s:g10", tiny]) == PLAIN
        assert page.evaluate(COLOUR_AT, ["s:g7", tiny]) == SELECTED
        assert page.evaluate(PAN_LOOKS, 3) == [0] * 3
        # a second pass: the overview shows the last one
        backward(page, server, outs[11])
        assert page.evaluate(COLOUR_AT, ["s:g11", tiny]) == DONE
        assert page.evaluate(COLOUR_AT, ["s:g9", tiny]) == PLAIN
        assert page.evaluate("opgraphViewer.hview.held === true")  # the same layout all along

        # the worker answers: the new layout shows the same
        page.evaluate("() => { const l = opgraphViewer.layout; l.busy = false; l.postNext(); }")
        whole_overview(page, server)
        assert page.evaluate(COLOUR_AT, ["s:g11", tiny]) == DONE
        assert page.evaluate(COLOUR_AT, ["s:g9", tiny]) == PLAIN

        # g9 opened: its node is drawn, and keeps its look while panning too
        page.evaluate("opgraphViewer.toggleGroup('s:g9', true)")
        page.wait_for_function(
            "() => { const v = opgraphViewer;"
            " return !v.layout.busy && v.hview.boxes.get('s:g9')?.open && v.hview.drawn; }",
            timeout=60_000,
        )
        node = page.evaluate("[...opgraphViewer.hview.boxes.keys()].find((k) => k[0] === 'n')")
        for scale in (tiny, 0.4, 1.0):
            page.evaluate(COLOUR_AT, [node, scale])  # centred on it
            assert page.evaluate(PAN_LOOKS, 3) == [0] * 3


def backward(page, server, value) -> None:
    """Run a backward pass from `value` and wait until the page has applied all of it."""
    passes = page.evaluate("opgraphViewer.graph.passes.length")
    value.backward()
    assert server.flush(timeout=60)
    page.wait_for_function(
        "(passes) => { const g = opgraphViewer.graph;"
        " return g.passes.length > passes && g.lastPass.done === true; }",
        arg=passes,
        timeout=60_000,
    )
    # ... and the events after it: the pass's `structure` and `step` (docs/protocol.md).
    page.wait_for_function("(seq) => opgraphViewer.lastSeq >= seq", arg=server.hub.seq)


def test_one_scope_per_sample_around_an_mlp(page):
    engine = Engine(name="samples", entry_points=False)
    samples = 500
    model = MLP(2, [4, 4, 1], rng=random.Random(0), engine=engine)
    rng = random.Random(1)
    with engine.serve(port=0) as server:
        total = None
        for i in range(samples):
            with opgraph.scope(f"sample{i}"):
                out = model([engine.value(rng.uniform(-1, 1)), engine.value(rng.uniform(-1, 1))])
            total = out if total is None else total + out
        overview(page, server)
        # each layer's parameters (in scopes L0, L1, L2) reach every sample: one bundle per
        # layer, counting every use (L0: 4 neurons of 2 weights and a bias, used once each
        # per sample)
        bundles = page.evaluate("opgraphViewer.hview.prepared.bundles")
        per_sample = {"s:L0": 4 * 3, "s:L1": 4 * 5, "s:L2": 1 * 5}
        layers = {
            b["hub"]: (b["side"], b["count"], b["members"]) for b in bundles if b["side"] == "out"
        }
        assert layers == {hub: ("out", uses * samples, samples) for hub, uses in per_sample.items()}
        # the summed loss (no scope): the adds in bands of ranks, each band meeting dozens
        # of samples, drawn as bundles into the bands; each sample's output is used once
        into = [b for b in bundles if b["side"] == "in"]
        assert into and all(b["hub"].startswith("r:") and b["hub"].endswith(" add") for b in into)
        edges = page.evaluate("opgraphViewer.hview.edges.map(e => [e.from, e.to, e.count])")
        for hub, uses in per_sample.items():
            assert sorted(e for e in edges if e[0] == hub) == sorted(
                [hub, f"s:sample{i}", uses] for i in range(samples)
            )
        to_loss = [e for e in edges if e[0].startswith("s:sample") and e[1].startswith("r:")]
        assert sum(e[2] for e in to_loss) == samples
        for bundle in into:  # a bundle counts every edge into its band
            reaching = [e for e in edges if e[1] == bundle["hub"]]
            assert (bundle["count"], bundle["members"]) == (
                sum(e[2] for e in reaching),
                len(reaching),
            )
        for scale in (0.05, 0.4):
            counts = look_at(page, scale)
            assert counts["boxes"] == counts["in_view"]
            assert counts["trunks"] <= len(bundles)
            assert counts["stubs"] <= 2 * counts["boxes"]  # a box is reached on either side
            assert segments(counts) <= 3 * counts["boxes"] + 3 * len(bundles)


def test_a_ring_of_20000_groups_is_laid_out_whole_without_overlaps(page):
    """The layout worker on its own (served from the page's origin, as the page starts it):
    20,000 groups in a ring where each pair of neighbours uses each other (every group in a
    cycle, which the worker breaks), and 100,000 groups fed by one input."""
    with StreamServer() as server:
        page.goto(server.url + "?live=0")
        ring, fan = page.evaluate(
            "async () => { const overlaps = "
            + OVERLAPS
            + """;
                const worker = new Worker("/layout-worker.js", {type: "module"});
                const lay = (units, edges) => new Promise((done, fail) => {
                    worker.onmessage = (m) => done(m.data);
                    worker.onerror = (e) => fail(new Error(e.message));
                    worker.postMessage({seq: 1, requests: [{key: `s:${units.length}`,
                        units: units.map((key) => ({key, open: false})), edges}]});
                });
                const check = (keys, r) => {
                    const boxes = r.keys.map((key, i) => ({key, x: r.boxes[4 * i],
                        y: r.boxes[4 * i + 1], w: r.boxes[4 * i + 2], h: r.boxes[4 * i + 3]}));
                    const same = r.keys.length === keys.length
                        && r.keys.every((k, i) => k === keys[i]);
                    return {same,
                        placed: boxes.every((b) => b.x >= 0 && b.y >= 0 && b.w > 0 && b.h > 0),
                        overlaps: overlaps(boxes).slice(0, 5), w: r.w, h: r.h};
                };
                const ring = [], edges = [], n = 20000;
                for (let i = 0; i < n; i++) ring.push(`s:g${i}`);
                for (let i = 0; i < n; i++) edges.push(i, (i + 1) % n, 1, (i + 1) % n, i, 1);
                const a = check(ring, await lay(ring, edges));
                const fan = ["r:0 leaf"], out = [];
                for (let i = 0; i < 100000; i++) { fan.push(`s:g${i}`); out.push(0, i + 1, 1); }
                const b = check(fan, await lay(fan, out));
                worker.terminate();
                return [a, b];
            }"""
        )
    for layout in (ring, fan):  # every group has a box of its own
        assert layout["same"] and layout["placed"] and layout["overlaps"] == []
    assert 0.25 < fan["w"] / fan["h"] < 4  # a block, not a column
