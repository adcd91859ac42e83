"""opgraph.widget() in a real JupyterLab (from PyPI, on loopback, with a token), driven in
Chromium: "Run All" of a notebook whose first cell shows the widget and whose next cell runs
a small training loop; the widget's output then shows the nodes' labels and grads as text,
the last backward pass to step through, nothing dropped, and the kernel listens on no port
but those it listened on before the widget (Jupyter's channels). "Run All" again closes the
earlier widget, and leaves one feed and its one thread in the kernel. A page reloaded after
a save shows the widget again, and running its cell again closes the earlier one."""

from __future__ import annotations

import pytest
from notebook_support import (
    NOTEBOOK,
    assert_the_reloaded_widget_was_shown,
    assert_the_widget_was_shown,
    browser_page,
    jupyter,
    reload_and_run_again,
    run_widget_notebook,
)


@pytest.fixture
def lab(tmp_path):
    # every cell drawn, on screen or not (JupyterLab 4 draws only the visible ones)
    with jupyter("jupyterlab", tmp_path, windowing="none") as (server, base, token):
        yield server, f"{base}/lab/tree/{NOTEBOOK}?token={token}"


def test_run_all_in_jupyterlab_shows_the_backward_pass_with_nothing_dropped(lab, tmp_path):
    server, url = lab
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, browser_page(playwright) as (page, errors):
        seen = run_widget_notebook(page, server, url, tmp_path / "lab.png")
    assert_the_widget_was_shown(seen)
    assert errors == []


def test_a_saved_jupyterlab_page_reloaded_shows_the_widget_again(lab, tmp_path):
    """JupyterLab reopens the notebook after a reload (its workspace) and shows the saved
    widget from the running kernel; running its cell again closes the earlier widget."""
    server, url = lab
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, browser_page(playwright) as (page, errors):
        seen = reload_and_run_again(page, url, tmp_path / NOTEBOOK)
    assert_the_reloaded_widget_was_shown(seen)
    assert errors == []
