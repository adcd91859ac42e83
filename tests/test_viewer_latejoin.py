"""A viewer page that opens after the backward pass ended, in Chromium against a real
`engine.serve()`: the snapshot carries the last pass (`last_pass`, docs/protocol.md), so the
page steps through it and counts the nodes it reached as a page that watched it live does.
Before, such a page said "No backward pass to step through yet." and "0 of N reached in the
last pass" although it showed the grads."""

from __future__ import annotations

import random

from playwright.sync_api import expect
from test_viewer import (  # noqa: F401  (engine, server: pytest fixtures)
    engine,
    frames,
    hello,
    open_bytes,
    open_viewer,
    server,
    wait_rows,
)
from test_viewer_groups import item, tree_items

from opgraph import Engine, topological_order
from opgraph.demo import SEED, loss, make_moons
from opgraph.nn import MLP

expect.set_options(timeout=20_000)


def test_a_page_opened_after_the_pass_steps_through_it_and_counts_what_it_reached(page):
    engine = Engine(name="late", entry_points=False)  # noqa: F811  (not the fixture)
    X, y = make_moons(4, noise=0.1, seed=SEED)
    model = MLP(2, [4, 4, 1], rng=random.Random(SEED), engine=engine)
    with engine.serve(port=0) as live:
        total, _ = loss(model, X, y)
        total.backward()
        assert live.flush(timeout=30)
        order = [node.id for node in reversed(topological_order(total))]
        nodes = live.stats()["nodes"]

        page.goto(live.url + "?threshold=20")  # the overview of groups, whatever the size
        expect(page.locator("#st-nodes")).to_have_attribute("data-count", str(nodes))
        expect(page.locator("#st-pass")).to_have_text(f"backward pass 1: done, {len(order)} steps")

        # every node the pass reached is counted in the groups of the overview
        top = [i for i in tree_items(page) if i["level"] == 1]
        assert sum(i["reached"] for i in top) == len(order)
        expect(item(page, "s:L1")).to_have_attribute("data-state", "done")
        item(page, "s:L1").click()
        count = next(i["count"] for i in top if i["key"] == "s:L1")
        expect(page.locator("#details")).to_contain_text(
            f"{count} of {count} reached in the last pass"
        )

        # and the pass can be stepped through, in the order the engine ran it
        page.locator("#step-first").click()
        expect(page.locator("#step-info")).to_have_text(f"step 1/{len(order)}")
        current = page.locator("#node-list tr[aria-current=step]")
        expect(current).to_have_attribute("data-id", str(order[0]))
        page.keyboard.press("ArrowRight")
        expect(page.locator("#step-info")).to_have_text(f"step 2/{len(order)}")
        expect(current).to_have_attribute("data-id", str(order[1]))
        page.keyboard.press("End")
        expect(page.locator("#step-info")).to_have_text(f"step {len(order)}/{len(order)}")
        assert page.evaluate("opgraphViewer.selected") == order[-1]  # (its row is scrolled away)
        assert page.evaluate("opgraphViewer.graph.lastPass.steps.map(s => s.id)") == order


def node(id_, parents=(), op=None, grad=0.0, **extra):
    fields = {"id": id_, "op": op, "parents": list(parents), "data": 1.0, "grad": grad}
    return {"type": "node", **fields, "label": f"n{id_}", **extra}


def snapshot(last_pass) -> bytes:
    begin = {"type": "snapshot_begin", "seq": 5, "nodes": 3}
    if last_pass is not None:
        begin["last_pass"] = last_pass
    return frames(
        hello(),
        begin,
        node(0, grad=3.0, **{"pass": 1}),
        node(1, grad=2.0, **{"pass": 1}),
        node(2, [0, 1], "mul", grad=1.0, **{"pass": 1}),
        {"type": "snapshot_end", "seq": 5},
    )


def test_a_recording_whose_snapshot_has_a_last_pass_can_be_stepped(page, server, tmp_path):  # noqa: F811
    data = snapshot({"pass": 1, "root": 2, "steps": [2, 0, 1]})
    open_viewer(page, server)
    open_bytes(page, tmp_path, "late.ogtrace", data)
    expect(page.locator("#st-pass")).to_have_text("backward pass 1: done, 3 steps")
    page.keyboard.press("Home")
    expect(page.locator("#node-list tr[aria-current=step]")).to_have_attribute("data-id", "2")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#node-list tr[aria-current=step]")).to_have_attribute("data-id", "0")


def test_a_bad_last_pass_is_rejected_and_the_snapshot_kept(page, server, tmp_path):  # noqa: F811
    open_viewer(page, server)
    open_bytes(page, tmp_path, "bad.ogtrace", snapshot({"pass": 1, "root": 2, "steps": [2, 2]}))
    wait_rows(page, "rows.length === 3")
    expect(page.locator("#st-rejected")).to_contain_text("1")
    rejection = page.evaluate("opgraphViewer.lastRejection")
    assert "'last_pass.steps' must not list a node twice" in rejection
    page.keyboard.press("Home")  # nothing to step through: said so
    expect(page.locator("#notice")).to_contain_text("No backward pass to step through yet.")


def test_an_older_snapshot_without_last_pass_still_shows_its_graph(page, server, tmp_path):  # noqa: F811
    open_viewer(page, server)
    open_bytes(page, tmp_path, "old.ogtrace", snapshot(None))
    wait_rows(page, "rows.length === 3")
    assert page.evaluate("opgraphViewer.rejected") == 0
