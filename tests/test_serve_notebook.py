"""opgraph.serve()'s iframe in a real Jupyter front end, driven in Chromium: what a learner
following micrograd's lecture sees when a cell of plain `jupyter notebook` (Notebook 7) or
JupyterLab ends with the server's handle. "Run All" shows the live viewer in the cell's
output: the page loads inside the notebook's page (its Content-Security-Policy lets a local
notebook frame it), it connects to the kernel's server, and it lists the trained graph's
nodes with their labels and grads as text, the last backward pass, nothing dropped."""

from __future__ import annotations

import re

import pytest
from notebook_support import (
    FRONT_END_RACE,
    NOTEBOOK,
    TRAINING,
    browser_page,
    jupyter,
    open_notebook,
    run_all,
)

CELLS = ["import opgraph\nviewer = opgraph.serve(port=0)\nviewer", TRAINING]


@pytest.fixture(params=["notebook", "jupyterlab"])
def front_end(request, tmp_path):
    app = request.param
    path = "notebooks" if app == "notebook" else "lab/tree"
    windowing = None if app == "notebook" else "none"  # (Notebook 7: its defaults)
    with jupyter(app, tmp_path, windowing=windowing, cells=CELLS) as (server, base, token):
        yield f"{base}/{path}/{NOTEBOOK}?token={token}"


def test_run_all_shows_the_live_viewer_in_the_cell_with_the_trained_graph(front_end):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, browser_page(playwright) as (page, errors):
        blocked: list[str] = []  # the browser's word when a policy refuses the frame
        page.on(
            "console",
            lambda m: blocked.append(m.text) if "frame-ancestors" in m.text else None,
        )
        open_notebook(page, front_end)
        run_all(page)
        page.locator(".jp-OutputArea-output pre", has_text="trained").wait_for(timeout=120_000)
        iframe = page.locator(".jp-OutputArea-output iframe[title='opgraph viewer']")
        iframe.wait_for(timeout=60_000)
        viewer = iframe.content_frame
        rows = viewer.locator("#node-list tbody tr")
        try:
            rows.nth(3).wait_for(timeout=60_000)
            viewer.locator("#st-pass").filter(has_text=re.compile("pass")).wait_for(timeout=60_000)
        except Exception as exc:
            raise AssertionError(f"the viewer showed no graph; console: {blocked}") from exc
        texts = rows.all_inner_texts()
        status = viewer.locator("#status").inner_text()
        height = viewer.locator("body").evaluate("() => window.innerHeight")
        note = page.locator(".jp-OutputArea-output", has_text="opgraph.widget()").count()
    by_label = {t.split("\t")[1]: t.split("\t") for t in texts}
    assert {"x", "k", "y"} <= set(by_label)
    assert by_label["y"][4] == "1" and by_label["x"][4] not in ("", "0", "…")
    assert "0 dropped" in status and "no backward pass seen" not in status
    assert height == 600  # the page's own height in the frame: TraceServer.NOTEBOOK_HEIGHT
    assert note == 1  # the line under the frame that points to opgraph.widget()
    assert blocked == []  # no frame refused (frame-ancestors)
    assert [e for e in errors if not FRONT_END_RACE.match(e)] == []
