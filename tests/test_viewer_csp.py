"""The viewer page under its Content-Security-Policy, in Chromium: it works, talks only to
its own server, and loads in a frame of a local page (a notebook) but of no other."""

from __future__ import annotations

import http.server
import threading

import pytest
from playwright.sync_api import expect, sync_playwright
from viewer_support import CHROMIUM_ARGS, launch

import opgraph
from opgraph import Engine

expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        # notebook.example: a foreign origin, answered by a server on this machine
        browser = launch(
            playwright,
            args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP notebook.example 127.0.0.1"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()  # no bypass_csp: the policy applies
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else 0)
    page.on("pageerror", lambda error: page.console_errors.append(str(error)))
    yield page
    context.close()


@pytest.fixture
def served():
    engine = Engine(name="csp", entry_points=False)
    with engine.serve(port=0) as server:
        yield engine, server


def csp_errors(page) -> list[str]:
    return [text for text in page.console_errors if "Content Security Policy" in text]


def test_the_viewer_works_under_its_policy_and_connects_only_to_its_server(served, page):
    engine, server = served
    a = engine.value(2.0, label="a")
    y = a * a + 1
    y.backward()
    server.flush()
    page.goto(server.url)
    expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")  # ws: is 'self'
    expect(page.locator("#st-nodes")).to_have_attribute("data-count", str(y.id + 1))
    page.locator("#node-list tr[data-label='a']").click()
    expect(page.locator("#details h2")).to_have_text("a")
    assert page.console_errors == []
    # a script of the page cannot open a stream elsewhere, even on this machine
    with Engine(name="other", entry_points=False).serve(port=0) as other:
        outcome = page.evaluate(
            """(url) => new Promise(resolve => {
                const socket = new WebSocket(url, "opgraph.v1");
                socket.onopen = () => resolve("open");
                socket.onerror = () => resolve("error");
            })""",
            other.ws_url,
        )
        assert outcome == "error"
        assert other.stats()["viewers"] == []
    assert any("connect-src" in text for text in csp_errors(page))


class NotebookPage(http.server.BaseHTTPRequestHandler):
    """A page that frames the viewer (`target`), like a notebook's output cell."""

    target = ""
    body = ""  # the page's body, when not a bare iframe of `target`

    def do_GET(self) -> None:
        body = (self.body or f'<!doctype html><iframe src="{self.target}"></iframe>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def framing_page(page, host: str, target: str, body: str = "") -> None:
    """Open a page from http://host:port (a real server on loopback) that frames `target`
    (or whose body is `body`)."""
    handler = type("Page", (NotebookPage,), {"target": target, "body": body})
    notebook = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=notebook.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://{host}:{notebook.server_port}/notebook")
        page.wait_for_load_state("load")  # the frame included
    finally:
        notebook.shutdown()
        notebook.server_close()


def test_a_local_page_may_frame_the_viewer(served, page):
    engine, server = served
    engine.value(1.0, label="framed")
    server.flush()
    framing_page(page, "localhost", server.url)
    frame = page.frame_locator("iframe")
    expect(frame.locator("#st-conn")).to_have_attribute("data-state", "open")
    expect(frame.locator("#node-list tr[data-label='framed']")).to_have_count(1)
    assert csp_errors(page) == []


def test_a_foreign_page_may_not_frame_the_viewer(served, page):
    engine, server = served
    framing_page(page, "notebook.example", server.url)
    assert page.frame_locator("iframe").locator("#st-conn").count() == 0
    assert server.stats()["viewers"] == []
    assert any("frame-ancestors" in text for text in csp_errors(page)), page.console_errors


def test_the_iframe_a_notebook_shows_loads_the_live_viewer(served, page):
    # What Jupyter puts in an output cell for `server` (its _repr_html_), on a page of
    # another local origin (another port), as a notebook server on localhost would serve it.
    engine, server = served
    with opgraph.scope("cell"):
        engine.value(1.0, label="framed") * 2
    server.flush()
    cell = f"<!doctype html><div class='output'>{server._repr_html_()}</div>"
    framing_page(page, "127.0.0.1", "", body=cell)
    frame = page.frame_locator("iframe[title='opgraph viewer']")
    expect(frame.locator("#st-conn")).to_have_attribute("data-state", "open")
    expect(frame.locator("#st-nodes")).to_have_attribute("data-count", "3")
    box = page.locator("iframe").bounding_box()  # its border included
    assert box["height"] == server.NOTEBOOK_HEIGHT + 2 and box["width"] > 600
    assert csp_errors(page) == []
