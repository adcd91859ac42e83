"""The viewer shows training (issue 19): a hand-made stream of a small graph traced as steps
(docs/protocol.md, "Steps: `structure` and `step`") played to the real page in Chromium by
a stand-in server (viewer_support.StreamServer): one step sent as events and its
`structure`, then values-only `step` maps. What a user relies on: the History table of a
parameter is the numbers the script had, the loss curve has a point per step, scrubbing
shows a step's numbers, a late joiner's snapshot gives the same, the step diff names what
moved, and a hostile `structure`/`step`/`history` is rejected and counted."""

from __future__ import annotations

import math
import struct

import pytest
from playwright.sync_api import expect
from test_viewer import frames, hello
from test_viewer_steps_moons import history_rows
from viewer_support import StreamServer

expect.set_options(timeout=15_000)

STEPS = 30
X = 1.5  # the data point, an input made once before the loop
LR = 0.05

# The model: loss = (w * x + b) ** 2. ids: w 0, b 1, x 2; a step's nodes: mul, add, pow.
W, B, XID = 0, 1, 2
INPUTS = [W, XID, B]  # in order of first use by the step's nodes
OFFSETS = [0, 1, 2]
ROOT = 2  # the pow node


def u8(values) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def u4(values) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def f8(values) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def training() -> list[dict]:
    """Each step's numbers as the script has them: data and grad of [mul, add, pow, w, x, b]."""
    w, b = 0.8, -0.3
    out = []
    for _ in range(STEPS):
        mul = w * X
        add = mul + b
        loss = add**2
        g_add = 2 * add
        grads = [g_add, g_add, 1.0, g_add * X, g_add * w, g_add]
        out.append({"data": [mul, add, loss, w, X, b], "grad": grads})
        w, b = w - LR * grads[3], b - LR * grads[5]
    return out


STEPS_DATA = training()


def first_id(k: int) -> int:
    """The id of step k's first node: 3 for step 1, then 3 new ids per step."""
    return 3 + 3 * (k - 1)


def step_map(k: int, seq: int | None, **change) -> dict:
    numbers = STEPS_DATA[k - 1]
    event = {
        "type": "step",
        "step": k,
        "structure": 1,
        "first": first_id(k),
        "pass": k,
        "data": f8(numbers["data"]),
        "grad": f8(numbers["grad"]),
    }
    if seq is not None:
        event["seq"] = seq
    return {**event, **change}


def structure_map(seq: int | None, ids=(3, 4, 5), **change) -> dict:
    event = {
        "type": "structure",
        "structure": 1,
        "ids": ids if isinstance(ids, bytes) else u8(ids),
        "offsets": u4(OFFSETS),
        "inputs": u8(INPUTS),
        "order": u4([2, 1, 0, 3, 5, 4]),  # pow, add, mul, w, b, x
        "root": ROOT,
    }
    if seq is not None:
        event["seq"] = seq
    return {**event, **change}


def first_step_events() -> list[dict]:
    """Step 1 as the tracer sends it: forward maps, the pass, its structure and its step."""
    d, g = STEPS_DATA[0]["data"], STEPS_DATA[0]["grad"]

    def fwd(seq, id_, parents, op, data, label="", const=None):
        event = {"type": "forward", "seq": seq, "id": id_, "op": op, "parents": parents}
        event.update(data=data, label=label)
        if const is not None:
            event["const"] = const
        return event

    events = [
        fwd(1, W, [], None, d[3], "w"),
        fwd(2, B, [], None, d[5], "b"),
        fwd(3, XID, [], None, X, "x"),
        fwd(4, 3, [W, XID], "mul", d[0]),
        fwd(5, 4, [3, B], "add", d[1]),
        fwd(6, 5, [4], "pow", d[2], "loss", const=[2.0]),
        {"type": "backward_begin", "seq": 7, "root": 5, "pass": 1},
    ]
    seq = 8
    for index in [2, 1, 0, 3, 5, 4]:
        node_id = [3, 4, 5, W, XID, B][index]
        events.append({"type": "backward", "seq": seq, "id": node_id, "grad": g[index]})
        seq += 1
    events.append({"type": "backward_end", "seq": seq, "root": 5, "pass": 1})
    events.append(structure_map(seq + 1))
    events.append(step_map(1, seq + 2))
    return events


def live_stream(steps: int = STEPS, extra: list[dict] | None = None) -> bytes:
    events = first_step_events()
    seq = events[-1]["seq"]
    for k in range(2, steps + 1):
        seq += 1
        events.append(step_map(k, seq))
    for event in extra or []:
        seq += 1
        events.append({**event, "seq": seq})
    return frames(hello(), *events)


def history_map() -> dict:
    """The `history` a snapshot carries after the 30 steps: each step's loss, and the
    inputs' (w and x) data and grad by step."""
    return {
        "type": "history",
        "steps": u8(range(1, STEPS + 1)),
        "loss": f8([s["data"][ROOT] for s in STEPS_DATA]),
        "structure": 1,
        "from": 0,
        "data": f8([v for s in STEPS_DATA for v in s["data"][3:]]),
        "grad": f8([v for s in STEPS_DATA for v in s["grad"][3:]]),
    }


def late_join_stream(histories: list[dict] | None = None, w_now: float | None = None) -> bytes:
    """What a server sends a viewer joining after the last step: a snapshot with the latest
    step's nodes (named by its ids), its `structure`, `step` and the `history`."""
    last = STEPS_DATA[-1]
    d, g = last["data"], last["grad"]
    first = first_id(STEPS)
    ids = [first, first + 1, first + 2]
    seq = 1000
    nodes = [
        {
            "type": "node",
            "id": W,
            "op": None,
            "parents": [],
            "data": d[3],
            "grad": g[3],
            "label": "w",
        },
        {
            "type": "node",
            "id": B,
            "op": None,
            "parents": [],
            "data": d[5],
            "grad": g[5],
            "label": "b",
        },
        {
            "type": "node",
            "id": XID,
            "op": None,
            "parents": [],
            "data": X,
            "grad": g[4],
            "label": "x",
        },
        {
            "type": "node",
            "id": ids[0],
            "op": "mul",
            "parents": [W, XID],
            "data": d[0],
            "grad": g[0],
            "label": "",
        },
        {
            "type": "node",
            "id": ids[1],
            "op": "add",
            "parents": [ids[0], B],
            "data": d[1],
            "grad": g[1],
            "label": "",
        },
        {
            "type": "node",
            "id": ids[2],
            "op": "pow",
            "parents": [ids[1]],
            "data": d[2],
            "grad": g[2],
            "label": "loss",
            "const": [2.0],
        },
    ]
    if w_now is not None:  # w changed after the last step (the optimizer's update)
        nodes[0]["data"] = w_now
    history = history_map()
    return frames(
        {**hello(), "seq": seq},
        {
            "type": "snapshot_begin",
            "seq": seq,
            "nodes": len(nodes),
            # the last pass, as a server sends it: the latest step's, from its root
            "last_pass": {
                "pass": STEPS,
                "root": ids[2],
                "steps": [ids[2], ids[1], ids[0], W, B, XID],
            },
        },
        *nodes,
        structure_map(None, ids=ids),
        step_map(STEPS, None),
        *(histories if histories is not None else [history]),
        {"type": "snapshot_end", "seq": seq},
    )


# --- reading the page ----------------------------------------------------------------------


def loss_rows(page) -> list[tuple[int, float]]:
    page.locator("#loss-details summary").click()
    table = page.get_by_role("table", name="Loss")
    expect(table.locator("tbody tr")).to_have_count(STEPS)
    cells = table.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return [(int(s), float(v)) for s, v in cells]


def select(page, node_id: int) -> None:
    page.evaluate("id => opgraphViewer.select(opgraphViewer.graph.nodes.get(id))", node_id)


def field(page, name: str):
    return page.locator(f'#details dd[data-field="{name}"]')


def parameter_history(index: int) -> list[tuple[int, float, float]]:
    return [(k + 1, s["data"][index], s["grad"][index]) for k, s in enumerate(STEPS_DATA)]


def open_stream(page, stream: bytes):
    server = StreamServer(stream)
    server.__enter__()
    page.goto(server.url)
    expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
    return server


@pytest.fixture(params=["live", "late join"])
def shown(request, page):
    """The page after a live stream of 30 steps, or after joining when they were over."""
    stream = live_stream() if request.param == "live" else late_join_stream()
    server = open_stream(page, stream)
    yield page
    server.__exit__(None, None, None)


# --- the tests -----------------------------------------------------------------------------


def test_a_parameters_history_is_the_numbers_the_script_had(shown):
    page = shown
    select(page, W)
    assert history_rows(page) == parameter_history(3)
    select(page, B)
    assert history_rows(page) == parameter_history(5)
    assert page.evaluate("opgraphViewer.rejected") == 0
    # the last pass is the latest step's, live as for a late joiner
    expect(page.locator("#st-pass")).to_have_text(f"backward pass {STEPS}: done, 6 steps")


def test_the_loss_curve_has_a_point_per_step_equal_to_the_roots_data(shown):
    page = shown
    curve = page.get_by_role("img", name="Loss over")
    expect(curve).to_have_attribute("data-points", str(STEPS))
    expected = [(k + 1, s["data"][ROOT]) for k, s in enumerate(STEPS_DATA)]
    assert loss_rows(page) == expected
    assert f"{STEPS} steps" in (curve.get_attribute("aria-label") or "")


def test_scrubbing_to_a_step_shows_its_numbers_on_the_graph_and_in_the_panel(shown):
    page = shown
    select(page, B)
    slider = page.get_by_role("slider", name="Training step")
    slider.focus()
    page.keyboard.press("Home")  # the slider is keyboard driven: the first step kept
    expect(page.locator("#step-text")).to_have_text(f"step 1 of {STEPS}")
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    expect(page.locator("#step-text")).to_have_text(f"step 5 of {STEPS}")
    expect(slider).to_have_attribute("aria-valuetext", f"step 5 of {STEPS}")
    five = STEPS_DATA[4]
    expect(field(page, "training-step")).to_have_text(f"5 of {STEPS}")
    assert float(field(page, "data").inner_text()) == five["data"][5]
    assert float(field(page, "grad").inner_text()) == five["grad"][5]
    # the graph's nodes hold step 5's numbers (the node list shows them)
    page.wait_for_function(
        "([id, v]) => Number(document.querySelector(`#node-list tr[data-id='${id}']`)"
        ".dataset.data) === v",
        arg=[W, five["data"][3]],
    )
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("]")  # from anywhere on the page: the next step
    expect(page.locator("#step-text")).to_have_text(f"step 6 of {STEPS}")
    page.keyboard.press("[")
    expect(page.locator("#step-text")).to_have_text(f"step 5 of {STEPS}")
    page.get_by_role("button", name="Newest").click()
    expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
    expect(field(page, "training-step")).to_have_text(f"{STEPS} of {STEPS}")
    assert float(field(page, "data").inner_text()) == STEPS_DATA[-1]["data"][5]


def test_a_step_node_shows_its_window_and_old_steps_say_they_are_not_kept(page):
    server = open_stream(page, live_stream())
    try:
        page.evaluate("opgraphViewer.steps.windowSteps")  # the default: 100, every step kept
        select(page, 5)  # the loss node, named by step 1's id
        rows = history_rows(page)
        assert rows == [(k + 1, s["data"][ROOT], s["grad"][ROOT]) for k, s in enumerate(STEPS_DATA)]
    finally:
        server.__exit__(None, None, None)


def test_events_naming_the_latest_steps_ids_find_the_structures_nodes(page):
    # a label set on the loss after step 30, by the id step 30 gave it (first + offsets[2])
    latest_loss = first_id(STEPS) + 2
    extra = [{"type": "label", "id": latest_loss, "label": "final loss"}]
    server = open_stream(page, live_stream(extra=extra))
    try:
        expect(page.locator('#node-list tr[data-id="5"]')).to_have_attribute(
            "data-label", "final loss"
        )
        assert page.evaluate("opgraphViewer.graph.size") == 6  # no new node for the alias
    finally:
        server.__exit__(None, None, None)


def test_comparing_two_steps_lists_what_moved_most(shown):
    page = shown
    slider = page.get_by_role("slider", name="Training step")
    slider.focus()
    page.keyboard.press("End")
    page.get_by_label("Compare with step").fill("1")
    page.get_by_label("Compare with step").press("Enter")
    movers = page.get_by_role("list", name="Top movers").locator("li")
    expect(movers.first).to_be_visible()
    first, last = STEPS_DATA[0], STEPS_DATA[-1]
    live = page.evaluate("opgraphViewer.steps.records[0].full")
    ids = [3, 4, 5, W, XID, B]
    indexes = range(6) if live else [3, 4, 5]  # a late joiner has every node of the last step only
    deltas = {ids[i]: last["data"][i] - first["data"][i] for i in indexes}
    expected = sorted((i for i in deltas if deltas[i] != 0), key=lambda i: -abs(deltas[i]))
    shown_ids = [int(x) for x in movers.evaluate_all("items => items.map(i => i.dataset.id)")]
    assert shown_ids == expected
    shown_deltas = movers.evaluate_all("items => items.map(i => Number(i.dataset.delta))")
    assert all(math.isclose(a, deltas[i]) for a, i in zip(shown_deltas, shown_ids, strict=True))
    # the movers are highlighted in the drawing as search matches are
    assert sorted(page.evaluate("[...opgraphViewer.moverSet]")) == sorted(shown_ids)


# --- hostile maps ----------------------------------------------------------------------------

HOSTILE = [
    ("ids and offsets of different lengths", structure_map(0, offsets=u4([0, 1])), "'offsets'"),
    ("an id never announced", structure_map(0, ids=(3, 4, 999)), "never announced"),
    ("offsets that do not start at 0", structure_map(0, offsets=u4([1, 2, 3])), "'offsets[0]'"),
    ("an order index out of range", structure_map(0, order=u4([2, 1, 0, 99])), "'order'"),
    ("a bin cut mid-number", structure_map(0, ids=b"\x03" * 7), "'ids' must be a bin"),
    (
        "a huge n",
        structure_map(0, ids=b"\x00" * 8 * 600_000, offsets=b"\x00" * 4 * 600_000),
        "at most",
    ),
    ("an id above 2^53", structure_map(0, inputs=u8([0, 2**60, 1])), "2^53"),
]


@pytest.mark.parametrize(("what", "event", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_structure_is_rejected_and_counted(page, what, event, reason):
    events = [e for e in first_step_events() if e["type"] not in ("structure", "step")]
    seq = events[-1]["seq"]
    hostile = {**event, "seq": seq + 1, "structure": 1}
    following = step_map(1, seq + 2)  # refers to the structure that was refused
    server = StreamServer(frames(hello(), *events, hostile, following))
    with server:
        page.goto(server.url)
        expect(page.locator("#st-rejected")).to_contain_text("2 invalid events rejected")
        rejections = page.evaluate("opgraphViewer.rejections")
        assert reason in rejections[0] and "'structure' event" in rejections[0]
        assert "'step' event" in rejections[1] and "never defined" in rejections[1]
        assert page.locator("#timeline").is_hidden()
        assert page.evaluate("opgraphViewer.steps.structures.size") == 0


HOSTILE_STEPS = [
    (
        "data of the wrong length",
        {"data": f8([1.0] * 5), "grad": f8([1.0] * 5)},
        "must hold 6 numbers",
    ),
    ("an unknown structure", {"structure": 7}, "never defined"),
    ("a step number that skips", {"step": 9}, "'step' must be"),
    ("a first id already used", {"first": 4}, "'first' must be above"),
    ("a pass that skips", {"pass": 5}, "'pass' must be"),
    ("an unknown dtype", {"dtype": "i8"}, "'dtype'"),
    ("grad not a bin", {"grad": [1.0] * 6}, "'grad'"),
]


@pytest.mark.parametrize(
    ("what", "change", "reason"), HOSTILE_STEPS, ids=[h[0] for h in HOSTILE_STEPS]
)
def test_a_hostile_step_is_rejected_and_counted_and_changes_nothing(page, what, change, reason):
    stream = live_stream(steps=3, extra=[step_map(4, None, **change), step_map(4, None)])
    server = StreamServer(stream)
    with server:
        page.goto(server.url)
        expect(page.locator("#step-text")).to_have_text("step 4 of 4 (newest)")
        assert page.evaluate("opgraphViewer.rejected") == 1
        assert reason in page.evaluate("opgraphViewer.lastRejection")
        select(page, W)
        assert history_rows(page) == parameter_history(3)[:4]


def test_a_hostile_history_is_rejected_and_the_snapshot_kept(page):
    bad = {
        "type": "history",
        "steps": u8([1, 2]),
        "loss": f8([1.0]),
        "structure": 1,
        "from": 0,
        "data": b"",
        "grad": b"",
    }
    only_loss = {
        "type": "history",
        "steps": u8(range(1, STEPS + 1)),
        "loss": f8([0.5] * STEPS),
        "structure": 1,
        "from": STEPS,
        "data": b"",
        "grad": b"",
    }
    server = StreamServer(late_join_stream([bad, only_loss]))
    with server:
        page.goto(server.url)
        expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
        expect(page.locator("#st-rejected")).to_contain_text("1 invalid events rejected")
        assert "'loss' must hold 2" in page.evaluate("opgraphViewer.lastRejection")
        assert page.evaluate("opgraphViewer.steps.records.length") == STEPS
        assert page.evaluate("opgraphViewer.graph.size") == 6


def test_the_page_keeps_the_history_and_the_window_it_says(page):
    """With 20 steps of history and a window of 5 (page options), after 30 steps: a
    parameter's History and the loss curve have the newest 20 steps, a node made in the step
    the newest 5, and an older step shows its parameters but says its other nodes' numbers
    were not kept."""
    with StreamServer(live_stream()) as server:
        page.goto(server.url + "?history_steps=20&window_steps=5")
        expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
        select(page, W)
        assert history_rows(page) == parameter_history(3)[-20:]
        expect(page.get_by_role("img", name="Loss over")).to_have_attribute("data-points", "20")
        select(page, 4)  # the add node
        rows = history_rows(page)
        assert [r[0] for r in rows] == list(range(STEPS - 4, STEPS + 1))
        assert rows[-1][1] == STEPS_DATA[-1]["data"][1]
        slider = page.get_by_role("slider", name="Training step")
        slider.focus()
        page.keyboard.press("Home")
        expect(page.locator("#step-text")).to_have_text(f"step {STEPS - 19} of {STEPS}")
        expect(field(page, "data")).to_contain_text(f"not kept for step {STEPS - 19}")
        select(page, B)
        assert float(field(page, "data").inner_text()) == STEPS_DATA[STEPS - 20]["data"][5]
        memory = page.evaluate("opgraphViewer.steps.records.filter(r => r.full).length")
        assert memory == 5


def test_play_walks_through_the_steps_and_stops_at_the_newest(page):
    with StreamServer(live_stream()) as server:
        page.goto(server.url)
        expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
        page.evaluate(
            """() => { window.shownSteps = [];
                new MutationObserver(() => shownSteps.push(document.getElementById("step-text")
                  .textContent)).observe(document.getElementById("step-text"),
                  {childList: true, characterData: true, subtree: true}); }"""
        )
        play = page.get_by_role("button", name="Play the training steps")
        play.click()
        expect(page.get_by_role("button", name="Pause the training steps")).to_have_attribute(
            "aria-pressed", "true"
        )
        expect(play).to_have_attribute("aria-pressed", "false", timeout=30_000)  # at the end
        expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
        shown = page.evaluate("shownSteps")
        assert shown[0] == f"step 1 of {STEPS}" and f"step 15 of {STEPS}" in shown


def test_a_snapshot_shows_its_nodes_numbers_and_the_latest_step_as_the_step_used_them(page):
    """The snapshot's nodes are the graph now (w updated after the last step); its `step` is
    what the last step used: the panel shows w's data now, its History the step's."""
    w_now = STEPS_DATA[-1]["data"][3] - 0.25
    with StreamServer(late_join_stream(w_now=w_now)) as server:
        page.goto(server.url)
        expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
        select(page, W)
        assert history_rows(page) == parameter_history(3)
        assert float(field(page, "data").inner_text()) == w_now


def test_a_history_alone_gives_the_loss(page):
    """A server whose graph lost the structure's nodes sends the `history` alone: the page
    has the loss per step (no structure to read the parameters' rows by)."""
    history = history_map()
    stream = frames(
        {**hello(), "seq": 50},
        {"type": "snapshot_begin", "seq": 50, "nodes": 0},
        history,
        {"type": "snapshot_end", "seq": 50},
    )
    with StreamServer(stream) as server:
        page.goto(server.url)
        expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
        assert page.evaluate("opgraphViewer.rejected") == 0
        expected = [(k + 1, s["data"][ROOT]) for k, s in enumerate(STEPS_DATA)]
        assert loss_rows(page) == expected


def test_values_only_steps_do_not_change_the_graphs_shape(page):
    """A values-only step writes numbers on the nodes and leaves the graph's version (what
    makes the page lay the overview out again) alone: after 30 steps it is what it was
    after 3."""
    versions = []
    for steps in (3, STEPS):
        with StreamServer(live_stream(steps=steps)) as server:
            page.goto(server.url)
            expect(page.locator("#step-text")).to_have_text(f"step {steps} of {steps} (newest)")
            versions.append(page.evaluate("opgraphViewer.graph.version"))
    assert versions[0] == versions[1]
