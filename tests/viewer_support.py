"""Shared pieces of the viewer's browser tests: launching Debian's chromium through Playwright
and loading the viewer's JavaScript modules into a page."""

from __future__ import annotations

import asyncio
import base64
import math
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

STATIC = Path(__file__).resolve().parent.parent / "server" / "static"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 760}  # the size of the docs' screenshots
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch(playwright: Any, args: list[str] = CHROMIUM_ARGS) -> Any:
    """Debian's chromium, headless (never a browser downloaded by `playwright install`)."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("chromium is not installed: scripts/test installs it with apt-get")
    return playwright.chromium.launch(
        executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
        headless=True,
        args=args,
    )


def load_module(page: Any, name: str, exports: list[str], global_name: str) -> None:
    """Run server/static/<name> as a module in `page`, its exports under window.<global_name>."""
    source = (STATIC / name).read_text()
    names = ", ".join(exports)
    page.add_script_tag(content=f"{source}\nwindow.{global_name} = {{ {names} }};", type="module")
    page.wait_for_function(f"() => window.{global_name} !== undefined")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def plain(value: Any) -> Any:
    """A value in the JSON-safe form `toPlain` gives decoded values in the page."""
    if isinstance(value, float):
        if math.isnan(value):
            return {"$": "nan"}
        if math.isinf(value):
            return {"$": "inf" if value > 0 else "-inf"}
        return value
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 - 1 else {"$big": str(value)}
    if isinstance(value, bytes):
        return {"$bin": list(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    raise TypeError(type(value))


# The page-side twin of `plain`.
TO_PLAIN_JS = """
window.toPlain = function toPlain(v) {
  if (typeof v === "number") {
    if (Number.isNaN(v)) return {"$": "nan"};
    if (v === Infinity) return {"$": "inf"};
    if (v === -Infinity) return {"$": "-inf"};
    return v;
  }
  if (typeof v === "bigint") return {"$big": v.toString()};
  if (v instanceof Uint8Array) return {"$bin": Array.from(v)};
  if (Array.isArray(v)) return v.map(toPlain);
  if (v && typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) {
      Object.defineProperty(out, k, {value: toPlain(x), enumerable: true, writable: true});
    }
    return out;
  }
  return v;
};
"""


class StreamServer:
    """A small stand-in server on loopback: the viewer page from server/static, with an
    optional Content-Security-Policy header, and on `/ws` a fixed byte stream (one frame)
    that every viewer gets on connecting. Serves a page or plays a foreign stream in tests
    that must not depend on what the real server sends."""

    def __init__(self, stream: bytes = b"", csp: str | None = None):
        self.stream = stream
        self.csp = csp
        self.connections = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def __enter__(self) -> StreamServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test stream server did not start")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        from opgraph.server.http import static_response

        def process_request(connection: Any, request: Any) -> Any:
            if request.path.split("?")[0] == "/ws":
                return None
            response = static_response(STATIC, request.path.split("?")[0])
            if self.csp:
                response.headers["Content-Security-Policy"] = self.csp
            return response

        async def handler(ws: Any) -> None:
            self.connections += 1
            await ws.send(self.stream)
            await ws.wait_closed()

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            handler,
            "127.0.0.1",
            0,
            process_request=process_request,
            subprotocols=["opgraph.v1"],
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()


def page_error(message: Any) -> bool:
    """A console message that is an error of the page's own (a refused websocket connection
    while a server is away is expected: the page reconnects)."""
    return message.type == "error" and "WebSocket connection" not in message.text
