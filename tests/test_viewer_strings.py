"""The page in Chromium shows the engine's strings as the engine has them: one rule for string
lengths on both sides (code points, docs/protocol.md), lone surrogates replaced where the
strings are made; and a backward pass that failed ends in the page with the engine's grads.

Real parts: Debian's chromium, the real tracing server on loopback, the real engine."""

from __future__ import annotations

import pytest
from conftest import page_problem
from playwright.sync_api import expect

import opgraph
from opgraph import Engine, topological_order
from opgraph.server.events import MAX_LABEL, MAX_SCOPE

expect.set_options(timeout=15_000)

EMOJI = "\U0001f600"  # one code point, two UTF-16 units


def shown(page, node_id: int) -> dict | None:
    """The node as the page holds it: label, scope, grad."""
    return page.evaluate(
        """id => { const n = opgraphViewer.graph.nodes.get(id);
                   return n ? {label: n.label, scope: n.scope, grad: n.grad} : null; }""",
        node_id,
    )


def wait_for_node(page, node_id: int) -> None:
    page.wait_for_function("id => opgraphViewer.graph.nodes.has(id)", arg=node_id)


def test_emoji_scopes_and_labels_within_the_limits_are_shown_as_the_engine_has_them(page):
    engine = Engine(name="emoji", entry_points=False)
    with engine.serve(port=0) as server:
        page.goto(server.url)
        expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
        with opgraph.scope(EMOJI * 600):  # 600 code points, 1,200 UTF-16 units
            a = engine.value(1.0, label=EMOJI * 6000)  # 12,000 UTF-16 units
            b = a * 2.0
        b.label = EMOJI * MAX_LABEL  # the longest label, by label event
        cut = engine.value(3.0, label=EMOJI * (MAX_LABEL + 1))  # cut by the engine
        last = engine.value(0.0, label="last")
        server.flush()
        wait_for_node(page, last.id)
        page.wait_for_function("n => opgraphViewer.graph.nodes.get(n).label.length > 4", arg=b.id)
        for node in (a, b, cut):
            got = shown(page, node.id)
            assert got["label"] == node.label and got["scope"] == node.scope
        assert len(cut.label) == MAX_LABEL and cut.label.endswith("\u2026")
        assert page.evaluate("opgraphViewer.rejected") == 0


def test_a_surrogate_label_is_shown_replaced_with_its_neighbours(page):
    engine = Engine(name="surrogates", entry_points=False)
    with engine.serve(port=0) as server:
        page.goto(server.url)
        expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
        nodes = [engine.value(float(k), label=f"v{k}") for k in range(1000)]
        with opgraph.scope("run\udcff"):
            nodes.insert(500, engine.value(-1.0, label="file\udc80.csv"))
        server.flush()
        wait_for_node(page, nodes[-1].id)
        assert page.evaluate("opgraphViewer.graph.size") == 1001
        assert shown(page, nodes[500].id) == {
            "label": "file\ufffd.csv",
            "scope": "run\ufffd",
            "grad": 0,
        }
        assert page.evaluate("opgraphViewer.rejected") == 0


def test_a_failed_pass_ends_in_the_page_with_the_engines_grads(page):
    engine = Engine(name="failing", entry_points=False)
    with engine.serve(port=0) as server:
        page.goto(server.url)
        expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
        x = engine.value(0.5, label="x")
        y = x
        for _ in range(700):  # longer than a chunk of reported steps
            y = (y * 1.01).tanh()
        topological_order(y)[100].register_hook(lambda grad: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            y.backward()
        server.flush()
        expect(page.locator("#st-pass")).to_have_text("backward pass 1: failed, grads rolled back")
        expect(page.locator("#notice")).to_contain_text("Backward pass 1 failed: ZeroDivisionError")
        grads = page.evaluate(
            "ids => ids.map(id => opgraphViewer.graph.nodes.get(id).grad)",
            [n.id for n in topological_order(y)],
        )
        want = [n.grad for n in topological_order(y)]
        assert grads == want and set(want) == {0.0}


def forward(**fields) -> dict:
    return {"type": "forward", "seq": 1, "id": 1, "op": None, "parents": [], "data": 1.0,
            "label": "", **fields}  # fmt: skip


@pytest.mark.parametrize(
    "event, problem",
    [
        (forward(label=EMOJI * MAX_LABEL), None),
        (forward(label=EMOJI * (MAX_LABEL - 1) + "ab"), "'label' must be"),
        (forward(label="x" * (MAX_LABEL + 1)), "'label' must be"),
        (forward(scope=EMOJI * MAX_SCOPE), None),
        (forward(scope=EMOJI * (MAX_SCOPE + 1)), "'scope' must be"),
        ({"type": "backward_end", "seq": 2, "root": 1, "pass": 1, "error": EMOJI * 10}, None),
        ({"type": "backward_end", "seq": 2, "root": 1, "pass": 1, "error": 3}, "'error' must"),
    ],
)
def test_the_page_counts_lengths_as_python_does(checks_page, event, problem):
    found = page_problem(checks_page, event)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
