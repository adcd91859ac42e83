"""Shared pieces of the tests that show opgraph.widget() in a real Jupyter front end
(tests/test_widget_lab.py: JupyterLab 4, tests/test_widget_notebook.py: Notebook 7): the
notebook they run, a Jupyter server from PyPI on loopback with a token and nothing from the
network, and what a user does there in Chromium (Run All, keys typed in the viewer, Run All
again) with what the page then shows. Notebook 7 is built from JupyterLab's components: its
notebook, Run menu and kernel indicator have JupyterLab's classes, so one driver serves
both."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from viewer_support import CHROMIUM_ARGS, VIEWPORT, launch

# a small training loop: the same graph each step, so the viewer gets training steps too
TRAINING = (
    "x = opgraph.Value(0.5, label='x')\nk = opgraph.Value(4.0, label='k')\n"
    "for step in range(5):\n"
    "    x.grad = k.grad = 0.0\n"
    "    y = (x * k).tanh(); y.label = 'y'\n"
    "    y.backward()\n"
    "    k.data -= 0.1 * k.grad\n"
    "print('trained', round(k.data, 4))"
)

CELLS = [
    # the kernel's listening ports before the widget (its channels, and IOPub's own pipe)
    "import psutil\n"
    "print('listening', sorted({c.laddr.port for c in psutil.Process().net_connections('all')"
    " if c.status == 'LISTEN'}))",
    "import opgraph\nview = opgraph.widget()\nview",
    TRAINING,
    # what the kernel holds: its threads, the engines' feeds, and which widgets are closed
    "import threading, opgraph.server.widget as ow\n"
    "shown = globals().setdefault('shown', []); shown.append(view)\n"
    "ours = [t for t in threading.enumerate() if t.name == 'opgraph-trace-server']\n"
    "print('state', len(ours), len(ow._feeds), [v.comm is None for v in shown])",
]

NOTEBOOK = "widget.ipynb"

# Notebook 7's own start-up race (jupyter/notebook#7862): its keyboard-shortcuts plugin reads
# the schema of a settings plugin not loaded yet, in the page's core bundle, before any cell
# runs. It is not opgraph's (the widget's code runs from a blob: URL, serve()'s page from its
# own server), and is the only page error the tests leave out.
FRONT_END_RACE = re.compile(
    r"Cannot read properties of undefined \(reading 'schema'\)\n"
    r"TypeError: [^\n]*\n\s+at \S+/static/notebook/notebook_core\.\w+\.js"
)


def write_notebook(folder: Path, cells: list[str] = CELLS) -> None:
    """`cells` as `folder`/widget.ipynb, for the Python 3 kernel."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, folder / NOTEBOOK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout  # a hang, not a speed: Jupyter starting
    while time.monotonic() < deadline:
        if server.poll() is not None:
            assert server.stderr is not None
            pytest.fail(f"jupyter exited with {server.returncode}: {server.stderr.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail("jupyter did not answer")


@contextmanager
def jupyter(
    app: str, folder: Path, windowing: str | None = None, cells: list[str] = CELLS
) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """`python -m <app>` ("jupyterlab" or "notebook") serving `folder`, which holds
    widget.ipynb (of `cells`): yields the server's process, its base URL and its token.
    `windowing` is the notebook's windowingMode setting ("none": every cell drawn, on screen
    or not); None leaves the front end's default."""
    write_notebook(folder, cells)
    if windowing is not None:
        settings = folder / "settings" / "@jupyterlab" / "notebook-extension"
        settings.mkdir(parents=True)
        (settings / "tracker.jupyterlab-settings").write_text(f'{{"windowingMode": "{windowing}"}}')
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(folder / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(folder / "workspaces"),
    }
    server = subprocess.Popen(
        [
            sys.executable, "-m", app, "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={folder}", "--allow-root",
            "--ServerApp.terminals_enabled=False",
            # nothing from the network: no news, no update check, no extension index (the
            # jupyterlab server extension answers these for Notebook 7's pages too)
            "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_up(f"{base}/api/status?token={token}", server)
        yield server, base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def kernel_ports(server: subprocess.Popen) -> set[int]:
    """The kernel's listening ports now."""
    kernels = [
        p
        for p in psutil.Process(server.pid).children(recursive=True)
        if "ipykernel_launcher" in " ".join(p.cmdline())
    ]
    assert len(kernels) == 1
    return {c.laddr.port for c in kernels[0].net_connections("all") if c.status == "LISTEN"}


def notebook_state(page: Any) -> str:
    """What the notebook shows: each cell's prompt and output, and the kernel's status."""
    return page.evaluate(
        """() => JSON.stringify({
            kernel: document.querySelector('.jp-Notebook-ExecutionIndicator')
                ?.getAttribute('data-status'),
            cells: [...document.querySelectorAll('.jp-Notebook .jp-Cell')].map((c) => [
                c.querySelector('.jp-InputPrompt')?.textContent,
                c.querySelector('.jp-OutputArea')?.textContent.slice(0, 200),
            ]),
            menu: [...document.querySelectorAll('.lm-Menu-item[data-command="runmenu:run-all"]')]
                .map((e) => e.getAttribute('aria-disabled')),
            active: document.activeElement?.className,
        })"""
    )


def open_notebook(page: Any, url: str) -> None:
    """Open the notebook at `url` once its kernel is idle, in command mode."""
    page.goto(url)
    page.locator(".jp-Notebook").wait_for(timeout=120_000)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
    page.locator(".jp-Notebook").click()
    page.keyboard.press("Escape")


def run_all(page: Any) -> None:
    run_from_menu(page, "runmenu:run-all")


def run_from_menu(page: Any, command: str) -> None:
    """The Run menu's item for `command`, until the cells' prompts show it ran. JupyterLab
    can take the click and run nothing (2 runs in 12 after the page loaded: every prompt
    unchanged, the kernel idle), so a click that changed no prompt within 20 s is made again
    (nothing ran, so nothing runs twice); the item is clicked only once it is enabled."""
    menu = page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$"))
    item = page.locator(f".lm-Menu-item[data-command='{command}']")
    prompts = page.locator(".jp-Notebook .jp-InputPrompt")
    for _ in range(3):
        before = prompts.all_inner_texts()
        menu.click(timeout=30_000)
        item.wait_for(timeout=30_000)
        if item.get_attribute("aria-disabled") == "true":
            page.keyboard.press("Escape")
            page.wait_for_timeout(1000)
            continue
        item.click(timeout=30_000)
        try:
            page.wait_for_function(
                "(before) => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]"
                ".some((p, i) => p.innerText !== before[i])",
                arg=before,
                timeout=20_000,
            )
            return
        except Exception:
            warnings.warn(f"{command} ran nothing: clicked again", stacklevel=2)
    raise AssertionError(f"{command} ran nothing, 3 times: {notebook_state(page)}")


@dataclass
class Seen:
    """What the page showed, and what the kernel held, in `run_widget_notebook`."""

    rows: list[str]  # the widget's node list, a row's cells tab-separated
    status: str  # the widget's status line
    mode: str  # the viewer's view after "v" was typed in it
    cells: tuple[int, int]  # the notebook's cells before and after "d d" typed in the viewer
    listening: list[int]  # the kernel's listening ports after the training
    listening_before: list[int]  # ... and before the widget (the first cell's output)
    first: str  # the state cell's output after the first Run All
    again: str  # ... after Run All again and that cell run once more
    status_again: str  # the new widget's status line
    widgets: int  # widgets on the page in the end


@contextmanager
def browser_page(playwright: Any) -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page of the viewport the viewer tests use, and the page's errors (each
    with its stack: a test may tell the front end's own from the widget's)."""
    browser = launch(playwright, CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(f"{error}\n{error.stack}"))
        yield page, errors
    finally:
        browser.close()


def assert_the_widget_was_shown(seen: Seen) -> None:
    """What Run All, keys in the viewer, and Run All again must show in any front end: the
    labels and grads as text, nothing dropped, the viewer's keys its own, no new port in the
    kernel, and the earlier widget closed when its cell ran again."""
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


def run_widget_notebook(page: Any, server: subprocess.Popen, url: str, shot: Path) -> Seen:
    """Open widget.ipynb at `url`, Run All, read the widget, type keys in the viewer, then
    Run All again and run the state cell once more; `shot` is a screenshot if nothing ran."""
    open_notebook(page, url)
    run_all(page)
    widget = page.locator(".opgraph-widget")
    rows = widget.locator("#node-list tbody tr")
    trained = page.locator(".jp-OutputArea-output pre", has_text="trained")
    try:
        trained.wait_for(state="attached", timeout=120_000)
    except Exception as exc:
        page.screenshot(path=str(shot))
        raise AssertionError(f"no 'trained' output: {notebook_state(page)}") from exc
    rows.nth(3).wait_for(timeout=60_000)
    widget.locator("#st-pass").filter(has_text=re.compile("pass")).wait_for(timeout=60_000)
    # keys typed in the viewer are its own ("v": the next view), not the notebook's
    # command-mode shortcuts ("d d" would delete the widget's cell)
    cells = page.locator(".jp-Notebook .jp-Cell").count()
    widget.locator("#canvas").click()
    page.keyboard.press("v")
    page.keyboard.press("d")
    page.keyboard.press("d")
    mode = widget.locator("#view-mode").input_value()
    cells_after = page.locator(".jp-Notebook .jp-Cell").count()
    texts = rows.all_inner_texts()
    status = widget.locator("#status").inner_text()
    listening = sorted(kernel_ports(server))
    before = page.locator(".jp-OutputArea-output pre", has_text="listening").inner_text()
    state = page.locator(".jp-OutputArea-output pre", has_text="state")
    first = state.inner_text().strip()
    # Run All again: the widget's cell runs again, its earlier widget is closed, and the
    # new one's page gets the graph again (a snapshot), with nothing dropped
    run_all(page)
    rows.nth(3).wait_for(timeout=60_000)  # the new widget's page is ready
    # (its earlier page said "gone" after the new widget's cell ran: Run All sends every
    # cell at once) then, once Run All has run the state cell, that cell alone again
    state.filter(has_text=re.compile(r"\[(True|False), False\]")).wait_for(timeout=60_000)
    page.locator(".jp-Notebook .jp-Cell").nth(len(CELLS) - 1).locator(
        ".jp-InputPrompt"
    ).click()  # selects the cell (command mode: no key goes to an editor or the widget)
    run_from_menu(page, "notebook:run-cell")
    try:
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-OutputArea-output pre')]"
            ".some((e) => e.textContent.includes('[True, False, False]'))",
            timeout=60_000,
        )
    except Exception as exc:
        raise AssertionError(f"state not closed: {notebook_state(page)}") from exc
    again = state.inner_text().strip()
    rows.nth(3).wait_for(timeout=60_000)
    return Seen(
        rows=texts,
        status=status,
        mode=mode,
        cells=(cells, cells_after),
        listening=listening,
        listening_before=json.loads(before.split(" ", 1)[1]),
        first=first,
        again=again,
        status_again=widget.locator("#status").inner_text(),
        widgets=widget.count(),
    )


@dataclass
class Reloaded:
    """What the page showed in `reload_and_run_again`."""

    rows: list[str]  # the reloaded page's node list, a row's cells tab-separated
    status: str  # ... and its status line
    again: str  # the state cell's output after the widget's cell and it ran again
    status_again: str  # the new widget's status line
    widgets: int  # widgets on the page in the end


def reload_and_run_again(page: Any, url: str, saved: Path) -> Reloaded:
    """Open the notebook at `url`, Run All, save it (to `saved`), reload the page, read the
    widget the reloaded page shows from the running kernel, then run the widget's cell and
    the state cell again."""
    open_notebook(page, url)
    run_all(page)
    widget = page.locator(".opgraph-widget")
    rows = widget.locator("#node-list tbody tr")
    state = page.locator(".jp-OutputArea-output pre", has_text="state")
    state.wait_for(timeout=120_000)
    rows.nth(3).wait_for(timeout=60_000)
    page.keyboard.press("Control+s")  # what a user does before reloading
    _wait_saved(saved)
    page.reload()  # the outputs come from the file, the widget from the running kernel
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=120_000)
    rows.nth(3).wait_for(timeout=60_000)  # the reloaded page got the graph (a snapshot)
    widget.locator("#st-pass").filter(has_text=re.compile("pass")).wait_for(timeout=60_000)
    texts = rows.all_inner_texts()
    status = widget.locator("#status").inner_text()
    # the widget's cell run again, then the state cell: the earlier widget is closed (the
    # page before the reload is gone, not a page still showing it), and the new one shows
    # the graph built before (its cell's outputs are cleared before it runs: its page may
    # say "gone" before the kernel runs the cell)
    for cell in (1, len(CELLS) - 1):
        page.locator(".jp-Notebook .jp-Cell").nth(cell).locator(".jp-InputPrompt").click()
        run_from_menu(page, "notebook:run-cell")
    try:
        state.filter(has_text=re.compile(r"\[(True|False), False\]")).wait_for(timeout=60_000)
    except Exception as exc:
        raise AssertionError(f"state not shown: {notebook_state(page)}") from exc
    again = state.inner_text().strip()
    rows.nth(3).wait_for(timeout=60_000)  # the new widget's page is ready
    return Reloaded(
        rows=texts,
        status=status,
        again=again,
        status_again=widget.locator("#status").inner_text(),
        widgets=widget.count(),
    )


def assert_the_reloaded_widget_was_shown(seen: Reloaded) -> None:
    by_label = {t.split("\t")[1]: t.split("\t") for t in seen.rows}
    assert {"x", "k", "y"} <= set(by_label) and by_label["y"][4] == "1"
    assert "0 dropped" in seen.status and "no backward pass seen" not in seen.status
    # one feed and its one thread; the widget shown before the reload closed, the new open
    assert seen.again == "state 1 1 [True, False]"
    assert seen.widgets == 1 and "0 dropped" in seen.status_again


def _wait_saved(path: Path) -> None:
    """Until the notebook's file holds the widget's output (a hang, not a speed)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cells = json.loads(path.read_text())["cells"]
        if any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for o in cells[1].get("outputs", [])):  # fmt: skip
            return
        time.sleep(0.2)
    raise AssertionError("the notebook was not saved")
