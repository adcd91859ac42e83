"""opgraph.widget() in a real Jupyter Notebook 7 (`python -m notebook` from PyPI, on loopback,
with a token), driven in Chromium: the plain Notebook that learners following micrograd's
lecture open, at its own URL (/notebooks/...) with its own page, menus and toolbar, and its
default settings. "Run All" shows the widget in the cell's output with the nodes' labels and
grads as text, the last backward pass, nothing dropped, and the kernel listens on no new port;
keys typed in the viewer are the viewer's; "Run All" again closes the earlier widget. A page
reloaded after a save shows the widget again, from the kernel that still runs, and running
the widget's cell again then still closes the earlier widget."""

from __future__ import annotations

import pytest
from notebook_support import (
    FRONT_END_RACE,
    NOTEBOOK,
    assert_the_reloaded_widget_was_shown,
    assert_the_widget_was_shown,
    browser_page,
    jupyter,
    reload_and_run_again,
    run_widget_notebook,
)


@pytest.fixture
def notebook(tmp_path):
    # Notebook 7's default settings (its windowing included), as a learner has them
    with jupyter("notebook", tmp_path) as (server, base, token):
        yield server, f"{base}/notebooks/{NOTEBOOK}?token={token}"


def test_run_all_in_notebook_7_shows_the_backward_pass_with_nothing_dropped(notebook, tmp_path):
    server, url = notebook
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, browser_page(playwright) as (page, errors):
        seen = run_widget_notebook(page, server, url, tmp_path / "notebook.png")
        # the widget is drawn in its own cell's output, the cell's width and 600 pixels high
        cell = page.locator(".jp-Notebook .jp-Cell").nth(1)  # CELLS[1]: `view`
        shown = cell.locator(".jp-OutputArea-output .opgraph-widget")
        box = shown.bounding_box() if shown.count() == 1 else None
        output = cell.locator(".jp-OutputArea").bounding_box()
        app = page.evaluate("() => document.body.dataset.notebook")
    assert app == "notebooks"  # Notebook 7's notebook page, not JupyterLab's
    assert_the_widget_was_shown(seen)
    assert box is not None and output is not None
    assert box["height"] == 600 and box["width"] > 0.8 * output["width"]
    assert [e for e in errors if not FRONT_END_RACE.match(e)] == []


def test_a_saved_notebook_7_page_reloaded_shows_the_widget_again(notebook, tmp_path):
    server, url = notebook
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, browser_page(playwright) as (page, errors):
        seen = reload_and_run_again(page, url, tmp_path / NOTEBOOK)
    assert_the_reloaded_widget_was_shown(seen)
    assert [e for e in errors if not FRONT_END_RACE.match(e)] == []
