"""End to end (issue 19): a real moons training (the demo's model, loss and learning-rate
schedule, full-batch gradient descent) traced by the real tracer through a real
`engine.serve()` on loopback into the viewer page in Chromium, every step traced, with no
extra call in the loop. A page open from the start and a page that joins after the last
step both show the History of parameters equal to what the script saw at each step (the
data the step used, the grad its backward gave), the loss curve equal to the script's loss,
and the last pass numbered as the last step's. The same training published to a hub
(`opgraph serve`), which renumbers the run into its own stream, shows the same."""

from __future__ import annotations

import asyncio
import random
import threading

import _tracing_helpers as th
import msgpack
from playwright.sync_api import expect
from test_server_validate import HELLO
from test_viewer_groups import item
from test_viewer_steps_moons import STEPS as RUN_STEPS
from test_viewer_steps_moons import Run, history_rows

import opgraph
from opgraph import Engine
from opgraph.demo import SEED, learning_rate, loss, make_moons
from opgraph.nn import MLP
from opgraph.server.publisher import publish_url
from opgraph.server.server import TraceServer

expect.set_options(timeout=60_000)
POINTS = 10
STEPS = 10


def check(page, seen, losses, params) -> None:
    expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
    assert page.evaluate("opgraphViewer.rejected") == 0, page.evaluate("opgraphViewer.rejections")
    for p in params:
        page.evaluate("id => opgraphViewer.select(opgraphViewer.graph.nodes.get(id))", p._id)
        assert history_rows(page) == seen[p._id]
    page.locator("#loss-details summary").click()
    rows = page.get_by_role("table", name="Loss").locator("tbody tr")
    expect(rows).to_have_count(STEPS)
    cells = rows.evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert [(int(s), float(v)) for s, v in cells] == list(enumerate(losses, start=1))
    expect(page.locator("#st-pass")).to_contain_text(f"backward pass {STEPS}: done")


def dead_units(root) -> set[str]:
    """The neurons (scope paths) whose relu outputs are 0 for every sample, read from the
    script's own graph of a step."""
    outputs: dict[str, list[float]] = {}
    for node in opgraph.topological_order(root):
        if node.op_name == "relu":
            outputs.setdefault(node.scope, []).append(node.data)
    return {scope for scope, values in outputs.items() if all(v == 0.0 for v in values)}


def check_dead_units(page, hidden: list[str], dead: set[str]) -> None:
    """The page marks exactly the script's dead neurons, at the step shown (the newest)."""
    for layer in sorted({path.split("/")[0] for path in hidden}):
        if not item(page, f"s:{layer}").get_attribute("aria-expanded") == "true":
            item(page, f"s:{layer}").click()
    for path in hidden:
        if path in dead:
            expect(item(page, f"s:{path}")).to_have_attribute("data-dead", "true")
        else:
            expect(item(page, f"s:{path}")).not_to_have_attribute("data-dead", "true")


def check_scrubbing(page, param, seen) -> None:
    """Back to step 1 on the slider: the panel shows the parameter as the first step had it."""
    page.evaluate("id => opgraphViewer.select(opgraphViewer.graph.nodes.get(id))", param._id)
    slider = page.get_by_role("slider", name="Training step")
    slider.focus()
    page.keyboard.press("Home")
    expect(page.locator("#step-text")).to_have_text(f"step 1 of {STEPS}")
    step, data, grad = seen[param._id][0]
    expect(page.locator("#details [data-field=training-step]")).to_have_text(f"1 of {STEPS}")
    assert float(page.locator("#details [data-field=data]").inner_text()) == data
    assert float(page.locator("#details [data-field=grad]").inner_text()) == grad
    page.get_by_role("button", name="Newest").click()
    expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")


def test_a_real_training_shows_its_dead_units_scrubs_and_opens_as_a_recording(browser, tmp_path):
    """The whole task on a real run: every step traced (no call added to the loop) and
    recorded; the page marks the dead ReLU units the script's own graph has, scrubs back to
    step 1, and the recording opened in a page ("Open recording") shows the same History."""
    engine = Engine(name="moons-dead", entry_points=False)
    X, y = make_moons(POINTS, noise=0.1, seed=SEED)
    model = MLP(2, [16, 16, 1], rng=random.Random(SEED), engine=engine)
    params = model.parameters()
    hidden = [f"L{i}/N{j}" for i in (0, 1) for j in range(16)]
    seen: dict[int, list[tuple[int, float, float]]] = {}
    path = tmp_path / "moons.ogtrace"
    with engine.serve(port=0, record=path) as live:
        for k in range(1, STEPS + 1):
            total, _ = loss(model, X, y)
            model.zero_grad()
            total.backward()
            for p in params:
                seen.setdefault(p._id, []).append((k, p.data, p.grad))
            if k == STEPS:
                dead = dead_units(total)
            rate = learning_rate(k - 1, STEPS)
            for p in params:
                p.data -= rate * p.grad
        assert live.flush(timeout=60)
        context = browser.new_context(bypass_csp=True)
        errors: list[str] = []
        context.on("weberror", lambda error: errors.append(str(error.error)))
        page = context.new_page()
        page.goto(live.url)
        expect(page.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
        check_dead_units(page, hidden, dead)
        check_scrubbing(page, params[0], seen)
        recorded = context.new_page()
        recorded.goto(live.url + "?live=0")
        expect(recorded.locator("#st-conn")).to_have_text("offline")
        recorded.locator("#file").set_input_files(str(path))
        expect(recorded.locator("#st-conn")).to_have_text("recording: moons.ogtrace")
        expect(recorded.locator("#step-text")).to_have_text(f"step {STEPS} of {STEPS} (newest)")
        assert recorded.evaluate("opgraphViewer.rejected") == 0
        for p in (params[0], params[-1]):
            recorded.evaluate(
                "id => opgraphViewer.select(opgraphViewer.graph.nodes.get(id))", p._id
            )
            assert history_rows(recorded) == seen[p._id]
        check_dead_units(recorded, hidden, dead)
        context.close()
        assert errors == []
    print(f"dead units at step {STEPS}: {sorted(dead)}")


def test_a_real_training_traced_live_and_joined_late(browser):
    engine = Engine(name="moons-e2e", entry_points=False)
    X, y = make_moons(POINTS, noise=0.1, seed=SEED)
    model = MLP(2, [16, 16, 1], rng=random.Random(SEED), engine=engine)
    params = model.parameters()
    seen: dict[int, list[tuple[int, float, float]]] = {}
    losses: list[float] = []
    with engine.serve(port=0) as live:
        context = browser.new_context(bypass_csp=True)
        errors: list[str] = []
        context.on("weberror", lambda error: errors.append(str(error.error)))
        watching = context.new_page()
        watching.goto(live.url)
        expect(watching.locator("#st-conn")).to_have_attribute("data-state", "open")
        for k in range(1, STEPS + 1):  # the demo's loop, as a user writes it
            total, _ = loss(model, X, y)
            model.zero_grad()
            total.backward()
            for p in params:
                seen.setdefault(p._id, []).append((k, p.data, p.grad))
            losses.append(total.data)
            rate = learning_rate(k - 1, STEPS)
            for p in params:
                p.data -= rate * p.grad
        assert live.flush(timeout=60)
        # a weight of the first layer, a weight and the bias of the output neuron
        shown = (params[0], params[-2], params[-1])
        check(watching, seen, losses, shown)
        late = context.new_page()
        late.goto(live.url)
        check(late, seen, losses, shown)
        context.close()
        assert errors == []


def publish(server, events: list[dict]) -> None:
    """Send `events` to the hub as one script would, from a thread of its own (Playwright's
    sync API holds this thread's event loop)."""

    async def main() -> None:
        publisher = await th.open_ws(publish_url(server.publish_url))
        maps = [HELLO, *({k: v for k, v in e.items() if k != "seq"} for e in events)]
        await publisher.send(b"".join(msgpack.packb(m) for m in maps))
        await publisher.close()

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    thread.join(60)


def test_a_training_published_to_a_hub_live_and_joined_late(browser):
    """The hub renumbers a run's ids, passes, steps and structures into its own stream and
    gives each values-only step a block of its ids: a page watching and a page joining late
    find each parameter (by its label) with the History the script saw."""
    run = Run()
    server = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True)
    with server.start():
        context = browser.new_context(bypass_csp=True)
        errors: list[str] = []
        context.on("weberror", lambda error: errors.append(str(error.error)))
        watching = context.new_page()
        watching.goto(server.url)
        expect(watching.locator("#st-conn")).to_have_attribute("data-state", "open")
        publish(server, run.events)
        late = context.new_page()
        late.goto(server.url)
        for page in (watching, late):
            text = f"step {RUN_STEPS} of {RUN_STEPS} (newest)"
            expect(page.locator("#step-text")).to_have_text(text)
            assert page.evaluate("opgraphViewer.rejected") == 0
            for p in (run.model.parameters()[0], run.model.parameters()[-1]):
                hub_id = page.evaluate("l => opgraphViewer.graph.search(l)[0].id", p.label)
                page.evaluate(
                    "id => opgraphViewer.select(opgraphViewer.graph.nodes.get(id))", hub_id
                )
                assert history_rows(page) == run.seen[p._id]
        context.close()
        assert errors == []
