"""opgraph.widget() in a real JupyterLab (from PyPI, on loopback, with a token), driven in
Chromium: "Run All" of a notebook whose first cell shows the widget and whose next cell runs
a small training loop; the widget's output then shows the nodes' labels and grads as text,
the last backward pass to step through, nothing dropped, and the kernel listens on no port
but those it listened on before the widget (Jupyter's channels). "Run All" again closes the
earlier widget, and leaves one feed and its one thread in the kernel."""

from __future__ import annotations

import pytest
from notebook_support import NOTEBOOK, jupyter, run_widget_notebook
from viewer_support import CHROMIUM_ARGS, VIEWPORT, launch


@pytest.fixture
def lab(tmp_path):
    # every cell drawn, on screen or not (JupyterLab 4 draws only the visible ones)
    with jupyter("jupyterlab", tmp_path, windowing="none") as (server, base, token):
        yield server, f"{base}/lab/tree/{NOTEBOOK}?token={token}"


def test_run_all_in_jupyterlab_shows_the_backward_pass_with_nothing_dropped(lab, tmp_path):
    server, url = lab
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright, CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        seen = run_widget_notebook(page, server, url, tmp_path / "lab.png")
        browser.close()
    by_label = {t.split("\t")[1]: t.split("\t") for t in seen.rows}
    assert {"x", "k", "y"} <= set(by_label)
    assert by_label["y"][4] == "1"  # the output's grad, as text
    assert by_label["x"][4] not in ("", "0", "…")  # a grad that flowed back to x
    assert "0 dropped" in seen.status and "no backward pass seen" not in seen.status
    assert seen.mode == "detail" and seen.cells[1] == seen.cells[0]
    assert seen.listening == seen.listening_before  # the widget opened none
    # one feed and its one thread; the first widget closed, the new one open
    assert seen.first == "state 1 1 [False]"
    assert seen.again == "state 1 1 [True, False, False]"
    assert seen.widgets == 1 and "0 dropped" in seen.status_again
    assert errors == []
