"""docs/notebook.ipynb, run cell by cell in a real Jupyter kernel (nbclient, ipykernel): the
server's handle shows as an iframe of the live viewer, the viewer it points at is live and
holds the trained graph, and a drawing still renders as SVG."""

from __future__ import annotations

import asyncio
import html
import re
import urllib.request
from pathlib import Path

import _tracing_helpers as th
import nbformat
from nbclient import NotebookClient

from opgraph.server.client import stream_url

NOTEBOOK = Path(__file__).parent.parent / "docs" / "notebook.ipynb"


def outputs(cell) -> list[dict]:
    return [output.get("data", {}) for output in cell.get("outputs", [])]


def test_the_notebook_shows_the_live_viewer_and_the_drawing():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # "python3" is ipykernel's own kernel: this interpreter, the test's venv (no install)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        # while the kernel (and so the server) lives
        shown = [data["text/html"] for data in outputs(nb.cells[1]) if "text/html" in data]
        assert len(shown) == 1 and shown[0].startswith("<iframe ")
        assert 'width="100%"' in shown[0] and 'height="600"' in shown[0]
        src = html.unescape(re.search(r'src="([^"]+)"', shown[0]).group(1))
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", src)
        with urllib.request.urlopen(src, timeout=10) as page:  # the viewer page, live
            assert page.status == 200 and b"<html" in page.read().lower()
            assert (
                "frame-ancestors 'self' http://localhost:*"
                in page.headers["Content-Security-Policy"]
            )

        async def snapshot():
            reader = await th.connect_reader(stream_url(src))
            events = await reader.until(lambda e: e["type"] == "snapshot_end")
            await reader.ws.close()
            return [e for e in events if e["type"] == "node"]

        nodes = asyncio.run(snapshot())
    assert len(nodes) > 1000  # three steps of the moons demo
    assert {"L0/N0", "L1/N15", "L2/N0"} <= {n.get("scope") for n in nodes}
    printed = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert printed.count("accuracy") == 3
    drawing = outputs(nb.cells[4])
    assert any("image/svg+xml" in data for data in drawing)
    assert "cluster" in next(d["image/svg+xml"] for d in drawing if "image/svg+xml" in d)


def test_the_iframe_escapes_the_viewer_url_and_a_closed_server_says_so():
    from opgraph import Engine

    engine = Engine(name="nb", entry_points=False)
    token = 'x"><script>alert(1)</script>&y'
    with engine.serve(port=0, token=token) as server:
        shown = server._repr_html_()
        assert "<script>" not in shown and shown.count('"') == 10  # five attributes, quoted
        assert "opgraph.widget()" in shown  # where the frame stays blank, what works there
        src = html.unescape(re.search(r'src="([^"]+)"', shown).group(1))
        assert src == server.url and src.endswith("?token=" + token)
    assert server._repr_html_() == "<p>opgraph viewer of engine nb: closed</p>"
