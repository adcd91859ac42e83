"""The live trace viewer in a real browser (Debian's chromium driven by Playwright) against
the real tracing server (`engine.serve(port=0)`): what a learner sees and can do.

The tests also take the screenshots of docs/viewer.md: into the test's tmp_path, or into
docs/img/ when OPGRAPH_UPDATE_DOC_IMAGES=1 (`screenshot`), so that a test run leaves the work
tree as it found it.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
from pathlib import Path

import msgpack
import pytest
from PIL import Image, ImageChops
from playwright.sync_api import expect
from viewer_support import STATIC

from opgraph import Engine, topological_order
from opgraph.trace import touch

DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
UPDATE_DOC_IMAGES = "OPGRAPH_UPDATE_DOC_IMAGES"  # =1: screenshots refresh docs/img
# Waits for what the page shows; generous, for a CI machine busy with other work.
expect.set_options(timeout=15_000)


@pytest.fixture
def engine():
    return Engine(name="viewer-test")


@pytest.fixture
def server(engine):
    with engine.serve(port=0) as server:
        yield server


def open_viewer(page, server) -> None:
    page.goto(server.url)
    expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
    expect(page.locator("#st-proto")).to_contain_text("opgraph v1")


def wait_nodes(page, count: int) -> None:
    expect(page.locator("#st-nodes")).to_have_attribute("data-count", str(count))


def rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#node-list tbody tr",
        """rows => rows.map(r => ({
            id: Number(r.dataset.id), label: r.dataset.label, op: r.dataset.op,
            data: Number(r.dataset.data), grad: Number(r.dataset.grad),
            step: r.dataset.bwStep === undefined ? null : Number(r.dataset.bwStep),
            state: r.dataset.state, current: r.getAttribute("aria-current"),
            cells: [...r.cells].map(c => c.textContent),
        }))""",
    )


def wait_rows(page, condition: str, arg=None) -> None:
    """Wait until `condition(rows)` holds in the page (rows as `rows()` gives them)."""
    page.wait_for_function(
        """([condition, arg]) => {
            const rows = [...document.querySelectorAll("#node-list tbody tr")].map(r => ({
                id: Number(r.dataset.id), label: r.dataset.label, grad: Number(r.dataset.grad),
                data: Number(r.dataset.data), step: r.dataset.bwStep, state: r.dataset.state,
                current: r.getAttribute("aria-current"), text: r.textContent,
            }));
            return new Function("rows", "arg", `return (${condition});`)(rows, arg);
        }""",
        arg=[condition, arg],
    )


def shown(value: float) -> str:
    """A number as the page shows it: 4 significant digits (formatNumber in render.js)."""
    text = repr(float(f"{value:.4g}"))
    return text[:-2] if text.endswith(".0") else text


def screenshot(page, name: str, tmp_path: Path) -> Path:
    """The page's picture as `name`, in `tmp_path`, or in docs/img with OPGRAPH_UPDATE_DOC_IMAGES=1.

    A test run never writes tracked files: refreshing the docs' pictures is asked for."""
    # The events-per-second figure is the one thing on the page that depends on timing; once
    # the stream is quiet it reads 0, so the committed pictures only change when the page does.
    page.wait_for_function(
        "opgraphViewer.eventsThisSecond === 0 && opgraphViewer.eventsPerSecond === 0"
        " && document.getElementById('st-rate').textContent.startsWith('0 ')",
        timeout=10_000,
    )
    folder = DOCS_IMG if os.environ.get(UPDATE_DOC_IMAGES) == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    picture = page.screenshot()
    # Chromium draws the same page with off-by-one anti-aliasing and compresses it to other
    # bytes from run to run: rewrite the file only when the picture visibly changed, so a
    # refresh leaves the pictures that did not change as they were.
    if not path.exists() or visibly_different(path.read_bytes(), picture):
        path.write_bytes(picture)
    return path


def visibly_different(png: bytes, other: bytes) -> bool:
    first, second = (Image.open(io.BytesIO(p)).convert("RGB") for p in (png, other))
    if first.size != second.size:
        return True
    return max(high for _, high in ImageChops.difference(first, second).getextrema()) > 8


def neuron(engine):
    """micrograd's neuron: tanh(x1*w1 + x2*w2 + b), then y = o * o (two edges from o)."""
    V = engine.Value
    x1, x2 = V(2.0, "x1"), V(0.0, "x2")
    w1, w2 = V(-3.0, "w1"), V(1.0, "w2")
    b = V(6.8813735870195432, "b")
    x1w1 = x1 * w1
    x1w1.label = "x1*w1"  # set after creation: a `label` event
    x2w2 = x2 * w2
    x2w2.label = "x2*w2"
    n = x1w1 + x2w2 + b
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    y = o * o
    y.label = "y"
    return {v.label: v for v in (x1, x2, w1, w2, b, x1w1, x2w2, n, o, y)}, y


def backward_order(root) -> list[int]:
    """The ids in the order the engine runs backward steps: reverse topological order."""
    return [node.id for node in reversed(topological_order(root))]


# --- what it shows ----------------------------------------------------------------------------


def test_nodes_labels_data_and_grads_appear_live(page, engine, server, tmp_path):
    open_viewer(page, server)
    values, y = neuron(engine)
    server.flush()
    count = y.id + 1  # ids count from 0 in creation order: every node of the expression
    wait_nodes(page, count)
    wait_rows(page, "rows.length === arg && rows.some(r => r.label === 'y')", count)
    listed = {r["label"]: r for r in rows(page) if r["label"]}
    assert set(listed) == set(values)
    for label, value in values.items():
        row = listed[label]
        assert row["id"] == value.id
        assert row["op"] == (value.op.name if value.op else "")
        assert row["data"] == value.data  # exact, in the row's data-data attribute
        assert row["cells"][3] == shown(value.data)  # as a learner reads it
    assert page.locator("#canvas").get_attribute("data-view") == "detail"
    assert "no backward pass seen" in page.inner_text("#st-pass")

    y.backward()
    server.flush()
    expect(page.locator("#st-pass")).to_contain_text("backward pass 1: done")
    wait_rows(page, "rows.every(r => r.step !== undefined)")
    listed = {r["label"]: r for r in rows(page) if r["label"]}
    for label, value in values.items():
        assert listed[label]["grad"] == value.grad
        assert listed[label]["cells"][4] == shown(value.grad)
    # y = o*o has o twice among its parents: the details list both inputs.
    page.locator("#node-list tr[data-label='y']").click()
    details = page.locator("#details")
    expect(details.locator("h2")).to_have_text("y")
    inputs = details.locator("ul.links").first.locator("button")
    expect(inputs).to_have_count(2)
    expect(inputs.nth(0)).to_contain_text("input 1 o =")
    expect(inputs.nth(1)).to_contain_text("input 2 o =")
    assert details.locator("[data-field=op]").inner_text() == "mul"
    assert details.locator("[data-field=plugin]").inner_text() == y.op.plugin
    assert float(details.locator("[data-field=data]").inner_text()) == y.data
    assert float(details.locator("[data-field=grad]").inner_text()) == 1.0
    screenshot(page, "viewer-neuron.png", tmp_path)


def test_data_and_label_changes_update_the_page(page, engine, server):
    open_viewer(page, server)
    p = engine.value(1.0, label="p")
    loss = (p * p).tanh()
    loss.backward()
    p.data -= 0.5 * p.grad  # an optimizer step
    touch([p])
    loss.label = "loss"
    server.flush()
    wait_rows(page, "rows.some(r => r.label === 'loss') && rows.some(r => r.data === arg)", p.data)
    listed = {r["id"]: r for r in rows(page)}
    assert listed[p.id]["data"] == p.data
    assert listed[loss.id]["label"] == "loss"

    # a label is text, never markup: it cannot inject elements into the page
    sneaky = '<img src=x onerror="document.title=`pwned`">'
    q = engine.value(3.0, label=sneaky)
    (q * p).label = "uses it"
    server.flush()
    page.locator("#node-list tr[data-label='uses it']").click()
    expect(page.locator("#details button[data-goto]").first).to_contain_text(sneaky)
    page.locator("#details button[data-goto]").first.click()
    expect(page.locator("#details h2")).to_have_text(sneaky)
    assert page.locator("#details img").count() == 0
    assert page.title() != "pwned"


def test_status_bar(page, engine, server):
    open_viewer(page, server)
    values, y = neuron(engine)
    y.backward()
    server.flush()
    wait_nodes(page, y.id + 1)
    status = page.locator("#status")
    expect(status.locator("#st-conn")).to_have_text("connected")
    expect(status.locator("#st-proto")).to_have_text("opgraph v1 · viewer-test")
    expect(status.locator("#st-nodes")).to_have_text(f"{y.id + 1} nodes")
    expect(status.locator("#st-pass")).to_have_text(f"backward pass 1: done, {y.id + 1} steps")
    expect(status.locator("#st-dropped")).to_have_text("0 dropped")
    # events per second: counted over the last second, so it shows a number soon
    expect(status.locator("#st-rate")).to_have_text(re.compile(r"^\d[\d,]* ev/s$"))


# --- backward: highlighting order and stepping -------------------------------------------------


def test_backward_highlight_order_and_stepping(page, engine, server, tmp_path):
    open_viewer(page, server)
    values, y = neuron(engine)
    y.backward()
    server.flush()
    order = backward_order(y)
    by_id = {node.id: node for node in topological_order(y)}
    wait_rows(page, "rows.filter(r => r.step !== undefined).length === arg", len(order))
    by_step = sorted((r for r in rows(page) if r["step"] is not None), key=lambda r: r["step"])
    assert [r["id"] for r in by_step] == order  # lit in the order the chain rule ran

    # Step through the pass from its first step with the keyboard.
    page.keyboard.press("Home")
    expect(page.locator("#pause")).to_have_text("Resume")  # stepping pauses the live view
    for index, node_id in enumerate(order):
        expect(page.locator("#step-info")).to_have_text(f"step {index + 1}/{len(order)}")
        current = page.locator("#node-list tr[aria-current=step]")
        expect(current).to_have_attribute("data-id", str(node_id))
        expect(current).to_have_attribute("data-state", "current")
        # nodes whose step is still to come show no grad yet
        later = order[index + 1 :]
        if later:
            expect(page.locator(f"#node-list tr[data-id='{later[0]}'] td").nth(4)).to_have_text("…")
        # the gradient flows from the current node back to each of its input slots
        edges = page.evaluate(
            "() => opgraphViewer.gradEdges().map(([parent, node, k]) => [parent.id, node.id, k])"
        )
        node = by_id[node_id]
        assert edges == [[p.id, node.id, k] for k, p in enumerate(node.parents)]
        if index == 3:
            screenshot(page, "viewer-stepping.png", tmp_path)
        if index < len(order) - 1:
            page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # past the last step: stays there
    expect(page.locator("#step-info")).to_have_text(f"step {len(order)}/{len(order)}")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#node-list tr[aria-current=step]")).to_have_attribute(
        "data-id", str(order[-2])
    )
    page.keyboard.press("Shift+ArrowLeft")  # 10 steps at a time, stopping at the first
    shown_step = max(1, len(order) - 1 - 10)  # from step len-1 of 1..len
    expect(page.locator("#step-info")).to_have_text(f"step {shown_step}/{len(order)}")
    page.keyboard.press("End")
    page.locator("#step-first").click()
    expect(page.locator("#node-list tr[aria-current=step]")).to_have_attribute(
        "data-id", str(order[0])
    )
    expect(page.locator("#st-pass")).to_have_text(f"backward pass 1: step 1 of {len(order)}")
    page.keyboard.press("Escape")  # leave stepping: every node shows its grad again
    expect(page.locator("#step-info")).to_have_text("")
    wait_rows(page, "rows.every(r => !r.text.includes('…'))")


def test_pause_and_resume(page, engine, server):
    open_viewer(page, server)
    a = engine.value(1.5, label="a")
    b = a * a
    b.label = "b"
    server.flush()
    wait_nodes(page, 2)
    page.keyboard.press("Space")
    expect(page.locator("#pause")).to_have_text("Resume")
    c = (b + 1.0).exp()  # 3 more nodes (the constant 1.0 is a leaf)
    c.label = "c"
    server.flush()
    # the events arrived and wait; the view stays as it was
    expect(page.locator("#st-paused")).to_have_text("paused · 4 events waiting")
    wait_nodes(page, 2)
    assert [r["label"] for r in rows(page)] == ["a", "b"]
    page.locator("#pause").click()
    wait_nodes(page, 5)
    expect(page.locator("#st-paused")).to_have_text("")
    wait_rows(page, "rows.some(r => r.label === 'c')")


def test_search_jumps_to_nodes(page, engine, server):
    open_viewer(page, server)
    values, y = neuron(engine)
    y.backward()
    server.flush()
    wait_nodes(page, y.id + 1)
    page.keyboard.press("/")
    expect(page.locator("#search")).to_be_focused()
    page.keyboard.type("w")
    # matches: w1, w2, x1*w1, x2*w2
    expect(page.locator("#list-count")).to_have_text("4 matches")
    assert sorted(r["label"] for r in rows(page)) == ["w1", "w2", "x1*w1", "x2*w2"]
    page.keyboard.press("Enter")
    expect(page.locator("#details h2")).to_have_text("w1")
    expect(page.locator("#search-info")).to_have_text("1 of 4")
    expect(page.locator("#node-list tr.selected")).to_have_attribute("data-label", "w1")
    page.keyboard.press("Enter")
    expect(page.locator("#details h2")).to_have_text("w2")
    page.keyboard.press("Shift+Enter")
    expect(page.locator("#details h2")).to_have_text("w1")
    assert float(page.locator("#details [data-field=grad]").inner_text()) == values["w1"].grad
    page.fill("#search", "op:tanh")
    expect(page.locator("#list-count")).to_have_text("1 matches")
    page.fill("#search", f"#{values['b'].id}")
    page.keyboard.press("Enter")
    expect(page.locator("#details h2")).to_have_text("b")
    page.fill("#search", "nothing-like-this")
    page.keyboard.press("Enter")
    expect(page.locator("#search-info")).to_have_text("no match")
    # the node list works from the keyboard: focus a row, Enter selects it
    page.fill("#search", "")
    page.locator("#node-list tr[data-label='x2']").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#details h2")).to_have_text("x2")
    # clicking an input in the details panel goes to that node
    page.fill("#search", "")
    page.locator("#node-list tr[data-label='n']").click()
    page.locator("#details button[data-goto]").filter(has_text="b =").click()
    expect(page.locator("#details h2")).to_have_text("b")


def test_reconnects_after_a_server_restart_and_clears_a_new_session(page, engine):
    first = engine.serve(port=0)
    port = first.port
    try:
        open_viewer(page, first)
        old = engine.value(4.0, label="old") * 2
        old.label = "from-the-first-server"
        first.flush()
        wait_rows(page, "rows.some(r => r.label === 'from-the-first-server')")
    finally:
        first.close()
    expect(page.locator("#st-conn")).to_have_attribute("data-state", "retrying")

    other = Engine(name="restarted")
    with other.serve(port=port) as second:
        fresh = other.value(1.0, label="after-restart").exp()
        fresh.label = "fresh"
        second.flush()
        expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
        expect(page.locator("#st-proto")).to_have_text("opgraph v1 · restarted")
        wait_nodes(page, 2)
        wait_rows(page, "rows.length === 2")
        assert [r["label"] for r in rows(page)] == ["after-restart", "fresh"]
        expect(page.locator("#notice")).to_contain_text("New server session")


def test_connects_to_a_server_that_needs_a_token(page, engine):
    with engine.serve(port=0, token="s3cret-token") as server:
        assert "?token=s3cret-token" in server.url
        open_viewer(page, server)  # the page passes its ?token= on to /ws
        a = engine.value(1.0, label="guarded")
        a.exp()
        server.flush()
        wait_nodes(page, 2)


def test_late_joiner_gets_the_graph_from_a_snapshot(page, engine, server):
    values, y = neuron(engine)
    y.backward()
    server.flush()
    open_viewer(page, server)
    wait_nodes(page, y.id + 1)
    wait_rows(page, "rows.length === arg", y.id + 1)
    listed = {r["id"]: r for r in rows(page)}
    for value in values.values():
        assert listed[value.id]["label"] == value.label
        assert listed[value.id]["grad"] == value.grad


# --- recordings --------------------------------------------------------------------------------


def test_open_a_recording_and_play_it_back(page, tmp_path):
    path = tmp_path / "neuron.ogtrace"
    recorded = Engine(name="recorded")
    with recorded.serve(port=0, record=path) as server:
        values, y = neuron(recorded)
        y.backward()
        server.flush()
    # Any server can serve the page; `?live=0` keeps it off the stream.
    with Engine(name="page-only").serve(port=0) as page_server:
        page.goto(page_server.url + "?live=0")
        play_recording(page, path, values, y)


def play_recording(page, path, values, y):
    expect(page.locator("#st-conn")).to_have_text("offline")
    page.locator("#file").set_input_files(str(path))
    expect(page.locator("#st-conn")).to_have_text("recording: neuron.ogtrace")
    wait_nodes(page, y.id + 1)
    expect(page.locator("#st-pass")).to_contain_text("backward pass 1: done")
    wait_rows(page, "rows.filter(r => r.step !== undefined).length === arg", y.id + 1)
    listed = {r["label"]: r for r in rows(page) if r["label"]}
    for label, value in values.items():
        assert listed[label]["data"] == value.data
        assert listed[label]["grad"] == value.grad
    # the same controls: step through its backward pass
    order = backward_order(y)
    page.keyboard.press("End")
    expect(page.locator("#node-list tr[aria-current=step]")).to_have_attribute(
        "data-id", str(order[-1])
    )
    # slow playback, paused partway: events wait, resume applies them
    page.select_option("#speed", "4")
    page.locator("#restart").click()
    page.wait_for_function("() => Number(document.querySelector('#st-nodes').dataset.count) >= 3")
    page.locator("#pause").click()
    expect(page.locator("#st-paused")).to_contain_text("events waiting")
    stopped_at = int(page.locator("#st-nodes").get_attribute("data-count"))
    assert stopped_at < y.id + 1
    page.select_option("#speed", "0")
    page.locator("#pause").click()
    wait_nodes(page, y.id + 1)


def frames(*events: dict) -> bytes:
    return b"".join(msgpack.packb(e) for e in events)


def hello(session="s1", version=1):
    return {
        "type": "hello",
        "seq": 0,
        "protocol": "opgraph",
        "version": version,
        "session": session,
        "engine": "handmade",
        "ops": {"add": "builtin-add"},
    }


def forward(seq, id_, parents=(), op=None, label="", data=1.0, **extra):
    return {
        "type": "forward",
        "seq": seq,
        "id": id_,
        "op": op,
        "parents": list(parents),
        "data": data,
        "label": label,
        **extra,
    }


def open_bytes(page, tmp_path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    page.locator("#file").set_input_files(str(path))


def test_protocol_details_dropped_snapshot_unknown_kinds(page, server, tmp_path):
    open_viewer(page, server)
    data = frames(
        hello(),
        forward(1, 0, label="a", future_field=[1, 2]),
        {"type": "some_future_kind", "seq": 2, "whatever": {"x": 1}},
        forward(3, 1, label="kept"),
        {"type": "dropped", "count": 7},
        {"type": "snapshot_begin", "seq": 10, "nodes": 3},
        {
            "type": "node",
            "id": 0,
            "op": None,
            "parents": [],
            "data": 1.0,
            "grad": 0.5,
            "label": "a",
        },
        {
            "type": "node",
            "id": 1,
            "op": None,
            "parents": [],
            "data": 2.0,
            "grad": 0.0,
            "label": "b",
        },
        {
            "type": "node",
            "id": 4,
            "op": "add",
            "parents": [0, 3],
            "data": 5.0,
            "grad": 1.0,
            "label": "c",
        },  # parent 3 is unknown: drawn as a placeholder
        {"type": "snapshot_end", "seq": 10},
        forward(10, 9, label="duplicate seq, ignored"),
        forward(11, 5, op="add", parents=[4, 4], label="d", data=10.0),
        {
            "type": "run",
            "seq": 12,
            "state": "start",
            "source": "train@42",
            "engine": "e",
            "ops": {"sin": "opgraph-sin"},
        },
        forward(13, 6, op="sin", parents=[5], label="from-a-run"),
        forward(16, 7, label="after a gap of two"),  # seq 14 and 15 never came
    )
    open_bytes(page, tmp_path, "handmade.ogtrace", data)
    wait_rows(page, "rows.some(r => r.label === 'd')")
    expect(page.locator("#st-dropped")).to_have_text("7 dropped, 2 missing")
    listed = {r["id"]: r for r in rows(page)}
    assert sorted(listed) == [0, 1, 3, 4, 5, 6, 7]
    assert listed[1]["label"] == "b"  # the snapshot replaced what came before it
    assert listed[0]["grad"] == 0.5
    assert listed[3]["cells"][2:] == ["unseen", "?", "?"]  # a parent never seen: no numbers
    assert all(r["label"] != "duplicate seq, ignored" for r in listed.values())
    # a hub's `run` brings the ops of its script: details name their plugin
    page.locator("#node-list tr[data-label='from-a-run']").click()
    expect(page.locator("#details [data-field=plugin]")).to_have_text("opgraph-sin")


def test_backward_lights_up_node_by_node_as_events_arrive(page, server, tmp_path):
    # Played back at 4 events per second, every backward step is on screen for a while.
    events = [
        hello(),
        forward(1, 0, label="a", data=2.0),
        forward(2, 1, label="b", data=3.0),
        forward(3, 2, op="mul", parents=[0, 1], label="c", data=6.0),
        forward(4, 3, op="add", parents=[2, 0], label="d", data=8.0),
        {"type": "backward_begin", "seq": 5, "root": 3, "pass": 1},
        {"type": "backward", "seq": 6, "id": 3, "grad": 1.0},
        {"type": "backward", "seq": 7, "id": 2, "grad": 1.0},
        {"type": "backward", "seq": 8, "id": 1, "grad": 2.0},
        {"type": "backward", "seq": 9, "id": 0, "grad": 4.0},
        {"type": "backward_end", "seq": 10, "root": 3, "pass": 1},
    ]
    open_viewer(page, server)
    open_bytes(page, tmp_path, "abcd.ogtrace", frames(*events))
    expect(page.locator("#st-pass")).to_have_text("backward pass 1: done, 4 steps")
    page.evaluate(
        r"""() => {
            const canvas = document.querySelector("#canvas");
            window.lit = [];
            new MutationObserver(() => {
                const m = canvas.getAttribute("aria-label").match(/Backward step at (.*)\.$/);
                if (m && lit[lit.length - 1] !== m[1]) lit.push(m[1]);
            }).observe(canvas, {attributes: true, attributeFilter: ["aria-label"]});
        }"""
    )
    page.select_option("#speed", "4")  # slow down, and play it again
    page.locator("#restart").click()
    page.wait_for_function("() => lit.length >= 4")  # ~3 s: 11 events at 4 a second
    expect(page.locator("#st-pass")).to_have_text("backward pass 1: done, 4 steps")
    assert page.evaluate("lit") == ["d", "c", "b", "a"]  # the chain rule's order
    grads = {r["label"]: r["grad"] for r in rows(page)}
    assert grads == {"a": 4.0, "b": 2.0, "c": 1.0, "d": 1.0}


def test_refuses_an_unknown_protocol_version(page, engine, server, tmp_path):
    open_viewer(page, server)
    open_bytes(page, tmp_path, "v2.ogtrace", frames(hello(version=2), forward(1, 0, label="x")))
    expect(page.locator("#notice")).to_contain_text("speaks opgraph protocol 1")
    expect(page.locator("#notice")).to_contain_text("version 2")
    wait_nodes(page, 0)
    # back to the live server, which speaks version 1
    page.locator("#live").click()
    expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
    a = engine.value(1.0, label="live-again")
    a.exp()
    server.flush()
    wait_nodes(page, 2)


def test_a_damaged_recording_is_reported(page, server, tmp_path):
    open_viewer(page, server)
    data = frames(hello(), forward(1, 0, label="x"), forward(2, 1, label="y"))
    open_bytes(page, tmp_path, "cut.ogtrace", data[:-6])
    expect(page.locator("#notice")).to_contain_text("Could not read the trace: msgpack: truncated")
    wait_nodes(page, 1)


# --- big graphs ----------------------------------------------------------------------------


def mlp_graph(engine, neurons: int, inputs: int = 20, halfway=None):
    """One layer of tanh neurons and a summed loss: ~3 nodes per weight, like the moons demo.
    `halfway()`, if given, is called once half the neurons are built."""
    V = engine.Value
    xs = [V(math.sin(i), f"x{i}") for i in range(inputs)]
    outs = []
    for j in range(neurons):
        if halfway is not None and j == neurons // 2:
            halfway()
        act = V(0.1, f"n{j}.b")
        for i, x in enumerate(xs):
            act = act + V(math.cos(i + j), f"n{j}.w{i}") * x
        out = act.tanh()
        out.label = f"n{j}"
        outs.append(out)
    loss = outs[0]
    for out in outs[1:]:
        loss = loss + out
    loss.label = "loss"
    return loss


def test_aggregate_view_of_50000_nodes_stays_responsive(page, engine, server, tmp_path):
    open_viewer(page, server)
    page.evaluate(
        """() => {
            const nodes = document.querySelector("#st-nodes");
            window.counts = [];
            new MutationObserver(() => counts.push(nodes.dataset.count))
              .observe(nodes, {attributes: true});
            window.longest = 0;
            new PerformanceObserver((list) => {
              for (const e of list.getEntries()) longest = Math.max(longest, e.duration);
            }).observe({type: "longtask"});
        }"""
    )
    # The program builds the graph in another thread while the page receives it; it builds
    # the second half only once the page has paused, so that nodes are still to come then
    # (however fast the page took the first half).
    built, paused = [], threading.Event()
    builder = threading.Thread(
        target=lambda: built.append(mlp_graph(engine, neurons=820, halfway=paused.wait))
    )
    builder.start()
    try:
        # Mid-load, the page answers a key press: Space pauses it with nodes still to come.
        page.wait_for_function(
            "() => Number(document.querySelector('#st-nodes').dataset.count) > 1000"
        )
        page.keyboard.press("Space")
        expect(page.locator("#pause")).to_have_text("Resume")
        expect(page.locator("#st-paused")).to_have_text(re.compile(r"^paused · [\d,]+ events"))
        assert int(page.locator("#st-nodes").get_attribute("data-count")) < 50_000
        paused.set()
        page.keyboard.press("Space")
    finally:
        paused.set()
        builder.join()
    loss = built[0]
    total = loss.id + 1
    assert total >= 50_000
    loss.backward()
    server.flush(timeout=60)
    expect(page.locator("#st-nodes")).to_have_attribute("data-count", str(total), timeout=90_000)
    counts = page.evaluate("counts")
    assert len(set(counts)) >= 3, "the page showed no intermediate states while loading"
    expect(page.locator("#canvas")).to_have_attribute("data-view", "aggregate")
    expect(page.locator("#st-pass")).to_have_text(
        f"backward pass 1: done, {total} steps", timeout=60_000
    )
    expect(page.locator("#list-more")).to_contain_text("Showing the first 400")
    print(f"\nlongest task while loading {total} nodes: {page.evaluate('longest'):.0f} ms")
    screenshot(page, "viewer-aggregate.png", tmp_path)

    # Focus on the neighbourhood of one neuron, found by search.
    page.fill("#search", "n5")
    page.keyboard.press("Enter")
    expect(page.locator("#canvas")).to_have_attribute("data-view", "focus")
    expect(page.locator("#details h2")).to_have_text("n5")
    page.fill("#search", "")
    wait_rows(page, "rows.some(r => r.label === 'n5') && rows.length <= 250")
    listed = {r["label"] for r in rows(page)}
    assert "n5" in listed
    n5 = next(r for r in rows(page) if r["label"] == "n5")
    assert n5["step"] is not None  # reached by the backward pass
    screenshot(page, "viewer-focus.png", tmp_path)
    page.keyboard.press("Escape")
    expect(page.locator("#canvas")).to_have_attribute("data-view", "aggregate")


def test_click_pan_and_zoom(page, engine, server):
    open_viewer(page, server)
    values, y = neuron(engine)
    server.flush()
    wait_nodes(page, y.id + 1)

    def screen_of(value):  # where the page draws a node: its world box through the camera
        return page.evaluate(
            """(id) => {
                const v = opgraphViewer, node = v.graph.nodes.get(id), c = v.camera;
                const box = v.canvas.getBoundingClientRect();
                return [box.left + c.x + (node.x + 86) * c.scale,
                        box.top + c.y + (node.y + 28) * c.scale, c.scale];
            }""",
            value.id,
        )

    x, y_, scale = screen_of(values["o"])
    page.mouse.move(x, y_)  # hovering shows the node's numbers
    expect(page.locator("#tooltip")).to_be_visible()
    expect(page.locator("#tooltip")).to_have_text(
        f"o · tanh\ndata {shown(values['o'].data)}\ngrad 0", use_inner_text=True
    )
    page.mouse.click(x, y_)
    expect(page.locator("#details h2")).to_have_text("o")
    page.mouse.wheel(0, -400)  # zoom in around the pointer: the node under it stays put
    page.wait_for_function(f"() => opgraphViewer.camera.scale > {scale}")
    x2, y2, _ = screen_of(values["o"])
    assert abs(x2 - x) < 2 and abs(y2 - y_) < 2
    page.mouse.move(x2, y2 + 200)  # drag empty canvas below the node: the view pans
    page.mouse.down()
    page.mouse.move(x2 - 100, y2 + 250, steps=5)
    page.mouse.up()
    x3, y3, _ = screen_of(values["o"])
    assert (round(x3 - x2), round(y3 - y2)) == (-100, 50)
    expect(page.locator("#details h2")).to_have_text("o")  # a drag is not a click
    page.keyboard.press("f")  # fit: every node inside the canvas again
    inside = page.evaluate(
        """() => { const v = opgraphViewer, c = v.camera;
            return v.graph.order.every(n => c.x + n.x * c.scale >= 0 &&
              c.x + (n.x + 172) * c.scale <= v.width && c.y + n.y * c.scale >= 0 &&
              c.y + (n.y + 56) * c.scale <= v.height); }"""
    )
    assert inside


def test_memory_stays_bounded_on_long_runs(page, engine, server):
    page.goto(server.url + "?max_nodes=60")
    expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
    weight = engine.value(0.5, label="weight")
    total = weight
    for step in range(40):  # 3 new nodes per step (a constant, *, +), using the weight
        total = total + weight * step
        total.label = f"total{step}"
    server.flush()
    wait_rows(page, "rows.some(r => r.label === 'total39')")
    count = int(page.locator("#st-nodes").get_attribute("data-count"))
    assert count <= 60
    expect(page.locator("#notice")).to_contain_text("Over 60 nodes: kept the newest 30")
    labels = {r["label"] for r in rows(page)}
    assert "weight" in labels  # an input the newest nodes use is kept
    assert "total0" not in labels


def test_keyboard_help(page, server):
    open_viewer(page, server)
    page.keyboard.press("?")
    help_dialog = page.locator("#help")
    expect(help_dialog).to_be_visible()
    expect(help_dialog).to_contain_text("pause / resume the live view")
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()


def test_protocol_md_browser_client_runs_with_the_viewers_msgpack_module(page, tmp_path):
    """The ```html example of docs/protocol.md, served beside the viewer's msgpack.js."""
    protocol = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    (example,) = re.findall(r"```html\n(.*?)```", protocol, flags=re.S)
    static = tmp_path / "static"
    static.mkdir()
    page_html = f'<!doctype html><title>-</title><link rel="icon" href="data:,">\n{example}'
    (static / "index.html").write_text(page_html)
    (static / "msgpack.js").write_text((STATIC / "msgpack.js").read_text())
    engine = Engine(name="docs-client")
    with engine.serve(port=0, static_dir=static) as server:
        page.goto(server.url)
        x = engine.value(0.5, label="x")
        y = x * x
        y.backward()
        server.flush()
        expect(page).to_have_title(f"{y.id + 1} nodes")  # ids count the nodes from 0


def test_static_files_are_served_with_module_content_types(server):
    import urllib.request

    for name, kind in [
        ("", "text/html"),
        ("app.js", "text/javascript"),
        ("msgpack.js", "text/javascript"),
        ("viewer.css", "text/css"),
    ]:
        with urllib.request.urlopen(server.url.split("?")[0] + name) as response:
            assert response.headers["Content-Type"].startswith(kind), name
