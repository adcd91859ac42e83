"""The tracing server: one port for the viewer page (`GET /`) and the stream (`/ws`).

It runs an asyncio loop in a background thread. Sources of events feed its `Hub`: the local
engine's tracer (drained on a timer), scripts publishing to `/publish` (hub mode), or a
recording (`opgraph replay`). Each websocket is handed on by its path: a viewer's (`/ws`) to
viewers.py, a publishing script's (`/publish`) to intake.py. See docs/tracing.md and
docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import html
import os
import secrets
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine, Sequence
from http import HTTPStatus
from pathlib import Path
from time import monotonic, perf_counter_ns
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from opgraph.errors import ServerError
from opgraph.trace import Tracer, event_count, records

from .http import STATIC_DIR, finish_response, static_response, text_response
from .hub import MAX_BYTES, MAX_NODE_BYTES, Hub
from .intake import receive_run
from .protocol import PUBLISH_MAX_SIZE, SUBPROTOCOL
from .recording import Recorder
from .security import check_upgrade, is_loopback
from .steps import HISTORY_STEPS
from .viewers import (
    QUEUE_BYTES,
    RESYNC_INTERVAL,
    RESYNC_PASS_WAIT,
    SEND_TIMEOUT,
    SNAPSHOT_INTERVAL,
    serve_viewer,
)

if TYPE_CHECKING:
    from opgraph.contracts import TraceBuffer, TracedEngine, TraceServing

DRAIN_INTERVAL = 0.01  # seconds between drains of the local tracer's buffer
DRAIN_BATCH = 20_000  # events per drain step, so viewers get sent between steps
# While the engine is making events, the drain waits (up to DRAIN_DEFER seconds of lag, or
# a quarter of the tracer's buffer): packing them at the same time would take the GIL from
# the engine's thread in turns, and each turn waits for the OS to run the other thread.
DRAIN_DEFER = 0.25
RECORD_FLUSH_INTERVAL = 0.5  # seconds between flushes of a recording to disk

__all__ = ["EngineServer", "ServerError", "TraceServer", "serve_engine"]


# What the notebook shows under the iframe: where the frame stays blank, and what works there.
IFRAME_NOTE = (
    "A blank frame? This viewer is served at 127.0.0.1 on the kernel's machine, and lets only "
    "pages of local origins frame it: in Colab, a remote JupyterHub or VS Code the browser "
    "cannot reach it or may not frame it. Show <code>opgraph.widget()</code> there instead: "
    "it streams through the kernel, with no port."
)


class TraceServer:
    """A running tracing server: a context manager with `.url`, `.port`, `.close()`.

    Made by `opgraph.serve()`, `engine.serve()`, `opgraph serve` and `opgraph replay`.
    `token`: None makes one when `host` is not a loopback address (required there, unless
    `token=False`); a string sets it (an empty one only on loopback). `static_dir` is where
    the viewer page comes from. A viewer's queue holds at most `queue_limit` events and
    `queue_bytes` bytes (past either, it is resynced). A viewer that takes more than
    `send_timeout` seconds to accept a frame is closed (code 4000); the snapshots a viewer
    asks for are sent at most every `snapshot_interval` seconds. The graph kept for
    snapshots holds at most `max_nodes` nodes and about `max_bytes` bytes (the oldest are
    forgotten); a hub refuses a published node of more than `max_node_bytes`. Snapshots carry
    the loss (and the inputs' numbers) of the last `history_steps` training steps. See
    docs/security.md.
    """

    def __init__(
        self,
        *,
        engine_name: str,
        ops: dict[str, str],
        host: str = "127.0.0.1",
        port: int | None = 8765,
        token: str | bool | None = None,
        record: str | os.PathLike | None = None,
        static_dir: str | os.PathLike | None = None,
        queue_limit: int = 100_000,
        queue_bytes: int = QUEUE_BYTES,
        max_nodes: int = 500_000,
        max_bytes: int = MAX_BYTES,
        max_node_bytes: int = MAX_NODE_BYTES,
        accept_publishers: bool = False,
        ping_interval: float = 20,
        ping_timeout: float = 20,
        close_timeout: float = 5,
        resync_interval: float = RESYNC_INTERVAL,
        resync_pass_wait: float = RESYNC_PASS_WAIT,
        send_timeout: float = SEND_TIMEOUT,
        snapshot_interval: float = SNAPSHOT_INTERVAL,
        history_steps: int = HISTORY_STEPS,
    ):
        if type(history_steps) is not int or history_steps < 1:  # (a bool is no count)
            raise ServerError(
                f"history_steps must be a whole number of at least 1, got {history_steps!r}"
            )
        if token == "" and not is_loopback(host):
            raise ServerError(
                f"an empty token on {host} would let anyone who can reach it read the trace: "
                f"give a token, or none to have one made (token=False, or --no-token, to "
                f"serve without one anyway)"
            )
        if token is None:
            token = None if is_loopback(host) else secrets.token_urlsafe(16)
        elif token is True:
            token = secrets.token_urlsafe(16)
        self.token: str | None = token or None
        self.host = host
        self.requested_port = port
        self.static_dir = Path(static_dir) if static_dir is not None else STATIC_DIR
        self.accept_publishers = accept_publishers
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.close_timeout = close_timeout
        self.send_timeout, self.snapshot_interval = send_timeout, snapshot_interval
        try:
            self.recorder = Recorder(record) if record else None
        except OSError as exc:  # a missing directory, no permission: say which file
            assert record is not None  # (only a recorder opens a file)
            raise ServerError(
                f"cannot record to {os.fspath(record)}: {exc.strerror or exc}"
            ) from exc
        self.hub = Hub(
            engine_name,
            ops,
            queue_limit=queue_limit,
            queue_bytes=queue_bytes,
            max_nodes=max_nodes,
            max_bytes=max_bytes,
            max_node_bytes=max_node_bytes,
            recorder=self.recorder,
            resync_interval=resync_interval,
            resync_pass_wait=resync_pass_wait,
            history_steps=history_steps,
        )
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._finished = threading.Event()  # the loop thread has ended
        self._viewer_came = threading.Event()  # a viewer has connected (wait_for_viewer)
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        self._sources: list[Callable[[], Coroutine]] = []

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> TraceServer:
        self._thread = threading.Thread(target=self._run, name="opgraph-trace-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            if self.recorder is not None:
                self.recorder.close()
            raise ServerError(
                f"cannot serve the trace on {self.host}:{self.requested_port}: {self._error}"
                f"{_port_hint(self._error)}"
            ) from self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start() or close()
            self._error = self._error or exc
            self._ready.set()
        finally:
            self._finished.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.requested_port is None:  # no socket: viewers join through widgets (widget.py)
            await self._serve_sources()
        else:
            await self._listen(self.requested_port)
        if self.recorder is not None and self._error is None:  # (start() closes it on error)
            self.recorder.close()

    async def _listen(self, port: int) -> None:
        """Serve the page and the streams on `port` until close()."""
        try:
            server = await websockets.serve(
                self._handle,
                self.host,
                port,
                process_request=self._process_request,
                process_response=finish_response,
                select_subprotocol=_select_subprotocol,
                max_size=PUBLISH_MAX_SIZE,
                compression=None,
                server_header=None,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=self.close_timeout,
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        async with server:
            self.port = server.sockets[0].getsockname()[1]
            await self._serve_sources(server)

    async def _serve_sources(self, server: websockets.Server | None = None) -> None:
        """Run the sources (and the recording's flushes) until close(); then cancel them."""
        for source in self._sources:
            self._spawn(source())
        if self.recorder is not None:
            self._spawn(self._flush_recording(self.recorder))
        self._ready.set()
        assert self._stop is not None  # (made by _main)
        await self._stop.wait()
        for task in list(self._tasks):
            task.cancel()
        if server is not None:
            server.close(close_connections=True)
        await asyncio.sleep(0)  # let the handlers see the cancellation

    async def _flush_recording(self, recorder: Recorder) -> None:
        # A killed server loses at most this much of its recording.
        while True:
            await asyncio.sleep(RECORD_FLUSH_INTERVAL)
            recorder.flush()

    def _spawn(self, coro: Coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def add_source(self, source: Callable[[], Coroutine]) -> None:
        """Run `source()` on the loop once it starts (before `start()` only)."""
        self._sources.append(source)

    def call(self, fn: Callable[[], Any], timeout: float = 10) -> Any:
        """Run `fn()` on the server's loop and return its result."""

        async def run() -> Any:
            return fn()

        assert self.loop is not None, "call() before start()"
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event so far is handed to the kernel for every viewer.

        Returns False if some viewer was still behind after `timeout` seconds.
        """
        if self._closed or self.loop is None:
            return True

        async def settle() -> bool:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                self._drain_now()
                if not self._pending():
                    return True
                await asyncio.sleep(0.005)
            return not self._pending()

        future = asyncio.run_coroutine_threadsafe(settle(), self.loop)
        try:
            return future.result(timeout + 1)
        except TimeoutError:
            return False

    def _pending(self) -> bool:
        return any(viewer.behind() for viewer in self.hub.viewers)

    def _drain_now(self) -> None:
        """Overridden by sources that buffer outside the hub (the local tracer)."""

    def close(self) -> None:
        """Stop serving: viewers are disconnected, the recording is closed."""
        if self._closed:
            return
        self._closed = True
        # (Not Thread.is_alive(): after a KeyboardInterrupt in Thread.join() it can say False
        # while the thread still runs.)
        if self.loop is not None and self._stop is not None and not self._finished.is_set():
            try:
                self.loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop already ended
                pass
        self._finished.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def wait(self) -> None:
        """Block until the server stops (or KeyboardInterrupt)."""
        while self._thread is not None and not self._finished.wait(timeout=0.5):
            pass

    def wait_for_viewer(self, timeout: float | None = None) -> bool:
        """Block until a viewer has connected (at once if one already did); False if none
        did within `timeout` seconds (None: no limit). Ctrl-C interrupts the wait."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = 0.25 if deadline is None else min(0.25, deadline - monotonic())
            if self._viewer_came.wait(max(left, 0.0)):
                return True
            if deadline is not None and monotonic() >= deadline:
                return False

    def stats(self) -> dict[str, Any]:
        """Counters of the hub and of each viewer (queued events, drops, resyncs)."""
        return self.call(self.hub.stats)

    # --- addresses ------------------------------------------------------------------------

    @property
    def _netloc(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The viewer page's URL (with the token, when there is one)."""
        query = f"?token={self.token}" if self.token else ""
        return f"http://{self._netloc}/{query}"

    @property
    def ws_url(self) -> str:
        """The stream's websocket URL (with the token, when there is one)."""
        query = f"?token={self.token}" if self.token else ""
        return f"ws://{self._netloc}/ws{query}"

    @property
    def publish_url(self) -> str:
        """What to set OPGRAPH_TRACE to so that scripts publish here (hub mode)."""
        query = f"?token={self.token}" if self.token else ""
        return f"ws://{self._netloc}{query}"

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.url
        return f"<TraceServer {self.hub.engine!r} {state}>"

    # The viewer's size in a notebook cell: the width of the cell, and tall enough for the
    # graph and the side panel.
    NOTEBOOK_HEIGHT = 600

    def _repr_html_(self) -> str:
        """How Jupyter shows the server: the live viewer in an iframe (docs/notebook.md).
        The page allows being framed by local pages only (docs/security.md)."""
        if self._closed:
            return f"<p>opgraph viewer of engine {html.escape(self.hub.engine)}: closed</p>"
        return (
            f'<iframe src="{html.escape(self.url, quote=True)}" width="100%" '
            f'height="{self.NOTEBOOK_HEIGHT}" style="border: 1px solid #ccc" '
            f'title="opgraph viewer"></iframe>'
            f"<p>{IFRAME_NOTE}</p>"
        )

    # --- HTTP: the page, and the checks before an upgrade ---------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        upgrade = parts.path in ("/ws", "/publish")
        allowed = ("GET",) if upgrade else ("GET", "HEAD")
        if request.method not in allowed:
            response = text_response(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not served here"
            )
            response.headers["Allow"] = ", ".join(allowed)
            return response
        for name in ("Host", "Origin"):
            if len(request.headers.get_all(name)) > 1:  # which one would the browser mean?
                return text_response(HTTPStatus.BAD_REQUEST, f"more than one {name} header")
        if upgrade:
            if parts.path == "/publish" and not self.accept_publishers:
                return text_response(
                    HTTPStatus.NOT_FOUND, "this server is not a hub; start one with `opgraph serve`"
                )
            return check_upgrade(request, parts.query, host=self.host, token=self.token)
        return static_response(self.static_dir, parts.path)

    # --- websocket connections ------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # (set by the handshake, before the handler runs)
        path = urlsplit(ws.request.path).path
        try:
            if path == "/publish":
                await receive_run(self.hub, ws)
            else:
                await self._viewer(ws)
        except ConnectionClosed:
            pass

    def _refresh_ops(self) -> None:
        """Overridden by servers whose ops can change (an engine gaining a plugin)."""

    async def _viewer(self, ws: ServerConnection) -> None:
        self._refresh_ops()
        # (Set before serve_viewer joins the hub, with no await in between: whatever the
        # waiting thread then makes reaches the hub after the join, so the viewer sees it.)
        self._viewer_came.set()
        await serve_viewer(
            self.hub,
            ws,
            self._spawn,
            send_timeout=self.send_timeout,
            snapshot_interval=self.snapshot_interval,
            close_timeout=self.close_timeout,
        )


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    if SUBPROTOCOL in offered:
        return Subprotocol(SUBPROTOCOL)
    if not offered:
        return None  # accepted as v1
    raise NegotiationError(f"this server speaks {SUBPROTOCOL}; offered: {', '.join(offered)}")


# --- serving an engine's trace ----------------------------------------------------------------


class EngineServer(TraceServer):
    """A server fed by one engine's tracer (what `engine.serve()` returns)."""

    def __init__(
        self,
        engine: TracedEngine,
        *,
        buffer_limit: int = 2_000_000,
        dtype: str = "f8",
        **options: Any,
    ):
        try:  # (before anything starts)
            tracer = Tracer(engine, max_buffer=buffer_limit, dtype=dtype)
        except ValueError as exc:
            raise ServerError(f"cannot serve engine {engine.name!r}: {exc}") from exc
        ops = {name: op.plugin for name, op in engine.ops.definitions.items()}
        super().__init__(engine_name=engine.name, ops=ops, **options)
        self.engine = engine
        self.tracer: TraceBuffer = tracer
        self.drain_failures = 0  # batches of events lost to an error (reported once)
        self.add_source(self._drain_forever)

    def start(self) -> EngineServer:
        if self.engine.tracer is not None:
            raise ServerError(
                f"engine {self.engine.name!r} is already traced ({self.engine.tracer!r}); "
                f"close that server first"
            )
        super().start()
        self.tracer.attach()
        return self

    async def _drain_forever(self) -> None:
        seen = 0  # the events waiting when last looked at
        while True:
            waiting = self.tracer.pending()
            if waiting > seen and not self._overdue():
                seen = waiting  # the engine is busy making events: let it run
                await asyncio.sleep(DRAIN_INTERVAL)
                continue
            self._drain_now()
            seen = self.tracer.pending()
            if seen > 0:
                await asyncio.sleep(0)  # more to do: let viewers be sent to first
            else:
                await asyncio.sleep(DRAIN_INTERVAL)

    def flush(self, timeout: float = 5.0) -> bool:
        self.tracer.send_collected()  # a step's nodes waiting for its pass: "so far" too
        return super().flush(timeout)

    def _overdue(self) -> bool:
        """Whether the buffered events waited long enough for the engine to pause."""
        tracer = self.tracer
        oldest = tracer.oldest_ns()
        if oldest is None or tracer.pending() >= tracer.max_buffer // 4:
            return True
        return perf_counter_ns() - oldest >= DRAIN_DEFER * 1e9

    def _drain_now(self) -> None:
        """Hand the tracer's buffered events to the hub. Never raises: a failure drops the
        batch, is reported once on stderr, and viewers are resynced (`dropped`, snapshot)."""
        seq, events = self.hub.seq, None
        try:
            lost = self.tracer.take_lost()
            if lost:
                self.hub.upstream_lost(lost)
            events = self.tracer.drain(DRAIN_BATCH)
            if events:
                self.hub.publish_traced(events, self.tracer.t0)
        except Exception as exc:
            self._drain_failed(exc, events or [], seq)

    def _drain_failed(self, exc: Exception, events: list, seq: int) -> None:
        count = sum(map(event_count, records(events)))
        # Viewers may have got the batch's first frames: its numbers are spent, and the
        # next event follows them, so that seqs never go back; `dropped` covers the gap.
        self.hub.seq = max(self.hub.seq, seq + count)
        self.hub.upstream_lost(count)
        self.drain_failures += 1
        if self.drain_failures == 1:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            print(
                f"opgraph: serving the trace of engine {self.engine.name!r}: sending events "
                f"to viewers failed ({type(exc).__name__}: {exc}, in {where}); {count} "
                f"events dropped, viewers get a fresh snapshot (later failures are only "
                f"counted, in drain_failures)",
                file=sys.stderr,
            )

    def _refresh_ops(self) -> None:
        # A plugin registered after serve() started: new viewers' hello lists its ops too.
        self.hub.ops = {name: op.plugin for name, op in self.engine.ops.definitions.items()}

    def close(self) -> None:
        if self._closed:
            return
        self.tracer.detach()
        if self.loop is not None and not self._finished.is_set():
            try:
                self.flush(timeout=2)
            except Exception:
                pass
        super().close()

    # pausing: the demo traces some steps and not others
    def pause(self) -> None:
        """Stop tracing the engine (nodes made meanwhile are announced when next used)."""
        self.tracer.detach()

    def resume(self) -> None:
        """Trace the engine again after `pause()`."""
        if not self._closed and self.engine.tracer is None:
            self.tracer.attach()

    def touch(self, values: Any) -> None:
        """Announce changed data of `values` now (see `opgraph.trace.touch`)."""
        self.tracer.touch(values)


def serve_engine(
    engine: TracedEngine,
    port: int = 8765,
    host: str = "127.0.0.1",
    *,
    at_exit: bool = False,
    announce: bool = False,
    **options: Any,
) -> EngineServer:
    """Start serving `engine`'s trace; see `Engine.serve` (docs/tracing.md)."""
    server = EngineServer(engine, host=host, port=port, **options).start()
    if announce:
        print(
            f"opgraph: serving the trace of engine {engine.name!r} at {server.url}", file=sys.stderr
        )
        if server.token:
            print(f"opgraph: token {server.token}", file=sys.stderr)
    if at_exit:
        atexit.register(_close_at_exit, server, announce)
    return server


def _close_at_exit(server: EngineServer, announce: bool) -> None:
    if announce and not server._closed:  # OPGRAPH_TRACE=1: say where the viewer went
        print(
            f"opgraph: the program ended, so its viewer at {server.url} is gone; "
            f"`opgraph run script.py` keeps serving the final graph until Ctrl-C",
            file=sys.stderr,
        )
    server.close()


if TYPE_CHECKING:

    def _conformance(server: EngineServer) -> None:
        """What `serve()` returns keeps the TraceServing contract (pyright checks it)."""
        serving: TraceServing = server
        del serving


def _port_hint(error: BaseException) -> str:
    """What to do when the port is taken: another server (an earlier run?) holds it."""
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return (
            "; another program (an earlier opgraph run?) is using that port: choose another "
            "with --port PORT, or --port 0 (port=0 in serve()) for any free port"
        )
    return ""
