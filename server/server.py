"""The tracing server: one port for the viewer page (`GET /`) and the stream (`/ws`).

It runs an asyncio loop in a background thread. Sources of events feed its `Hub`: the local
engine's tracer (drained on a timer), scripts publishing to `/publish` (hub mode), or a
recording (`opgraph replay`). See docs/tracing.md and docs/protocol.md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import ipaddress
import mimetypes
import os
import re
import secrets
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import msgpack
import websockets
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response

from opgraph.trace import Tracer, event_count, records

from .hub import (
    CLOSE_TOO_SLOW,
    RESYNC_INTERVAL,
    RESYNC_PASS_WAIT,
    SEND_TIMEOUT,
    SNAPSHOT_INTERVAL,
    Hub,
    Viewer,
)
from .recording import Recorder

if TYPE_CHECKING:
    from opgraph.engine import Engine

SUBPROTOCOL = "opgraph.v1"
STATIC_DIR = Path(__file__).parent / "static"
CONTROL_MAX_SIZE = 4096  # bytes of one control message from a viewer
PUBLISH_MAX_SIZE = 16 << 20  # bytes of one frame from a publishing script
DRAIN_INTERVAL = 0.01  # seconds between drains of the local tracer's buffer
DRAIN_BATCH = 20_000  # events per drain step, so viewers get sent between steps
RECORD_FLUSH_INTERVAL = 0.5  # seconds between flushes of a recording to disk
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")

# Sent with every response (the page, its files, errors, the upgrade): the page runs only
# its own files, connects only to its own server (ws: and wss: to the same host and port
# count as 'self'), and may be framed only by pages of local origins (a notebook on
# localhost; CSP cannot name an IPv6 address such as [::1]). See docs/security.md.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self' http://localhost:* http://127.0.0.1:*",
    ]
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),  # the page's URL may hold the token
)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
}
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class ServerError(Exception):
    """The server could not start (address in use, bad option)."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TraceServer:
    """A running tracing server: a context manager with `.url`, `.port`, `.close()`.

    Made by `opgraph.serve()`, `engine.serve()`, `opgraph serve` and `opgraph replay`.
    `token`: None makes one when `host` is not a loopback address (required there, unless
    `token=False`); a string sets it (an empty one only on loopback). `static_dir` is where
    the viewer page comes from. A viewer that takes more than `send_timeout` seconds to
    accept a frame is closed (code 4000); the snapshots a viewer asks for are sent at most
    every `snapshot_interval` seconds. See docs/security.md.
    """

    def __init__(
        self,
        *,
        engine_name: str,
        ops: dict[str, str],
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | bool | None = None,
        record: str | os.PathLike | None = None,
        static_dir: str | os.PathLike | None = None,
        queue_limit: int = 100_000,
        max_nodes: int = 500_000,
        accept_publishers: bool = False,
        ping_interval: float = 20,
        ping_timeout: float = 20,
        close_timeout: float = 5,
        resync_interval: float = RESYNC_INTERVAL,
        resync_pass_wait: float = RESYNC_PASS_WAIT,
        send_timeout: float = SEND_TIMEOUT,
        snapshot_interval: float = SNAPSHOT_INTERVAL,
    ):
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
            raise ServerError(
                f"cannot record to {os.fspath(record)}: {exc.strerror or exc}"
            ) from exc
        self.hub = Hub(
            engine_name,
            ops,
            queue_limit=queue_limit,
            max_nodes=max_nodes,
            recorder=self.recorder,
            resync_interval=resync_interval,
            resync_pass_wait=resync_pass_wait,
        )
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._finished = threading.Event()  # the loop thread has ended
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
        try:
            server = await websockets.serve(
                self._handle,
                self.host,
                self.requested_port,
                process_request=self._process_request,
                process_response=_finish_response,
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
            for source in self._sources:
                self._spawn(source())
            if self.recorder is not None:
                self._spawn(self._flush_recording())
            self._ready.set()
            await self._stop.wait()
            for task in list(self._tasks):
                task.cancel()
            server.close(close_connections=True)
            await asyncio.sleep(0)  # let the handlers see the cancellation
        if self.recorder is not None:
            self.recorder.close()

    async def _flush_recording(self) -> None:
        # A killed server loses at most this much of its recording.
        while True:
            await asyncio.sleep(RECORD_FLUSH_INTERVAL)
            self.recorder.flush()

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
        # A viewer waiting for its resync is settled: it will get a snapshot, not events.
        return any((v.queue or v.sending or v.ready) and not v.resync for v in self.hub.viewers)

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

    def __enter__(self) -> TraceServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def wait(self) -> None:
        """Block until the server stops (or KeyboardInterrupt)."""
        while self._thread is not None and not self._finished.wait(timeout=0.5):
            pass

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

    # --- HTTP: the page, and the checks before an upgrade ---------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        upgrade = parts.path in ("/ws", "/publish")
        allowed = ("GET",) if upgrade else ("GET", "HEAD")
        if request.method not in allowed:
            response = _text(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not served here")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        for name in ("Host", "Origin"):
            if len(request.headers.get_all(name)) > 1:  # which one would the browser mean?
                return _text(HTTPStatus.BAD_REQUEST, f"more than one {name} header")
        if upgrade:
            if parts.path == "/publish" and not self.accept_publishers:
                return _text(
                    HTTPStatus.NOT_FOUND, "this server is not a hub; start one with `opgraph serve`"
                )
            return self._check_upgrade(request, parts.query)
        return static_response(self.static_dir, parts.path)

    def _check_upgrade(self, request: Request, query: str) -> Response | None:
        host = request.headers.get("Host", "")
        if is_loopback(self.host) and not _host_is_loopback(host):
            # A web page that rebinds its own domain name to 127.0.0.1 still sends its
            # name in Host: refuse it (DNS rebinding).
            return _text(HTTPStatus.FORBIDDEN, f"Host {host!r} is not this loopback server")
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in _same_origins(host):
            return _text(
                HTTPStatus.FORBIDDEN,
                f"Origin {origin!r} may not read this trace: only the server's own page "
                f"(and clients that send no Origin) may connect",
            )
        if self.token is not None:
            given = parse_qs(query).get("token", [""])[0]
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return _text(
                    HTTPStatus.FORBIDDEN, "this server needs ?token=... (printed when it started)"
                )
        return None

    # --- websocket connections ------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path).path
        try:
            if path == "/publish":
                await self._publisher(ws)
            else:
                await self._viewer(ws)
        except ConnectionClosed:
            pass

    def _refresh_ops(self) -> None:
        """Overridden by servers whose ops can change (an engine gaining a plugin)."""

    async def _viewer(self, ws: ServerConnection) -> None:
        ws.protocol.max_message_size = CONTROL_MAX_SIZE
        self._refresh_ops()
        viewer = Viewer(
            self.hub,
            ws.send,
            name=_peer(ws),
            send_timeout=self.send_timeout,
            snapshot_interval=self.snapshot_interval,
        )
        self.hub.join(viewer)
        sender = self._spawn(viewer.run())
        receiver = asyncio.ensure_future(self._control(ws, viewer))
        try:
            await asyncio.wait([sender, receiver], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.leave(viewer)
            sender.cancel()
            receiver.cancel()
        if viewer.too_slow is not None:
            await self._close_too_slow(ws, viewer)
        elif sender.done() and not sender.cancelled() and sender.exception() is not None:
            if not isinstance(sender.exception(), ConnectionClosed):
                await ws.close(1011, "internal error")

    async def _close_too_slow(self, ws: ServerConnection, viewer: Viewer) -> None:
        """Close a viewer that stopped reading: the close frame waits behind the data it has
        not read, so if it still does not read, the connection is dropped."""
        print(f"opgraph: closing a viewer that stopped reading: {viewer.too_slow}", file=sys.stderr)
        reason = f"too slow: a frame was not taken within {self.send_timeout:g} s"
        try:
            async with asyncio.timeout(self.close_timeout):
                await ws.close(CLOSE_TOO_SLOW, reason)
        except TimeoutError:
            ws.transport.abort()

    async def _control(self, ws: ServerConnection, viewer: Viewer) -> None:
        """Read control messages until the viewer leaves or breaks the protocol."""
        async for message in ws:
            if isinstance(message, str):
                await ws.close(1003, "text frames are not opgraph control messages")
                return
            try:
                control = msgpack.unpackb(message, raw=False)
            except Exception:
                await ws.close(1007, "a control message must be one msgpack map")
                return
            if not isinstance(control, dict) or not isinstance(control.get("type"), str):
                await ws.close(1007, "a control message must be a msgpack map with a 'type'")
                return
            if control["type"] == "snapshot":
                viewer.ask_snapshot()  # rate-limited: see Viewer.request_earliest
            # unknown control types are ignored, so that the protocol can grow

    async def _publisher(self, ws: ServerConnection) -> None:
        from .publish import receive_run

        await receive_run(self.hub, ws)


def _select_subprotocol(connection: ServerConnection, offered: list[str]) -> str | None:
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    if not offered:
        return None  # accepted as v1
    raise NegotiationError(f"this server speaks {SUBPROTOCOL}; offered: {', '.join(offered)}")


def _host_is_loopback(host_header: str) -> bool:
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    return is_loopback(host)


def _same_origins(host_header: str) -> set[str]:
    return {f"http://{host_header}", f"https://{host_header}"}


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except Exception:
        return "viewer"


def _finish_response(
    connection: ServerConnection, request: Request, response: Response
) -> Response:
    """Every response gets the security headers; a HEAD request gets no body."""
    for name, value in SECURITY_HEADERS:
        if name not in response.headers:
            response.headers[name] = value
    if request.method == "HEAD":
        return dataclasses.replace(response, body=b"")
    return response


def _text(status: HTTPStatus, text: str) -> Response:
    body = (text + "\n").encode()
    headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return Response(status.value, status.phrase, headers, body)


def static_response(static_dir: Path, path: str) -> Response:
    """A file of `static_dir` by name: `/` is index.html; no subdirectories, no dot files."""
    name = unquote(path).lstrip("/") or "index.html"
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        return _text(HTTPStatus.NOT_FOUND, f"no file {path!r} here (only files of the viewer page)")
    file = static_dir / name
    try:
        if not file.resolve().is_relative_to(static_dir.resolve()):  # a symlink out of it
            return _text(HTTPStatus.NOT_FOUND, f"no file {path!r} here")
        body = file.read_bytes()
    except (OSError, RuntimeError):  # missing, a directory, no permission, a symlink loop
        return _text(HTTPStatus.NOT_FOUND, f"no file {path!r} here")
    suffix = file.suffix.lower()
    content_type = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0]
    headers = Headers(
        [
            ("Content-Type", content_type or "application/octet-stream"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
        ]
    )
    return Response(200, "OK", headers, body)


# --- serving an engine's trace ----------------------------------------------------------------


class EngineServer(TraceServer):
    """A server fed by one engine's tracer (what `engine.serve()` returns)."""

    def __init__(self, engine: Engine, *, buffer_limit: int = 2_000_000, **options: Any):
        ops = {name: op.plugin for name, op in engine.ops.definitions.items()}
        super().__init__(engine_name=engine.name, ops=ops, **options)
        self.engine = engine
        self.tracer = Tracer(engine, max_buffer=buffer_limit)
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
        while True:
            self._drain_now()
            if len(self.tracer.buffer) > 0:
                await asyncio.sleep(0)  # more to do: let viewers be sent to first
            else:
                await asyncio.sleep(DRAIN_INTERVAL)

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
    engine: Engine,
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
        atexit.register(server.close)
    return server


# --- `opgraph serve`: a standalone hub ------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--record", metavar="FILE", help="also record the stream to FILE (.ogtrace)"
    )
    parser.add_argument(
        "--token", help="the token viewers must pass (default: generated when not on loopback)"
    )
    parser.add_argument(
        "--no-token",
        action="store_true",
        help="allow a non-loopback address without a token (unsafe)",
    )
    parser.add_argument("--static-dir", help="serve the viewer page from this directory")
    parser.add_argument(
        "--queue-limit",
        type=positive_int,
        default=100_000,
        help="events queued per viewer before it is resynced",
    )


def positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def wait_until_interrupted(server: Any) -> None:
    """Keep serving until Ctrl-C, which ends a serving command normally (exit status 0)."""
    try:
        server.wait()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)


def hub_server(args) -> TraceServer:
    token: str | bool | None = args.token
    if args.no_token:
        token = False
    return TraceServer(
        engine_name="hub",
        ops={},
        host=args.host,
        port=args.port,
        token=token,
        record=args.record,
        static_dir=args.static_dir,
        queue_limit=args.queue_limit,
        accept_publishers=True,
    )


def stop_on_sigterm() -> None:
    """Make SIGTERM end a command like Ctrl-C does, so recordings are closed properly."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run(args) -> int:
    stop_on_sigterm()
    try:
        server = hub_server(args).start()
    except ServerError as exc:
        print(f"opgraph serve: {exc}", file=sys.stderr)
        return 1
    with server:
        print(f"viewer: {server.url}", flush=True)
        if server.token is None and not is_loopback(server.host):
            print(
                f"opgraph serve: WARNING: no token on {server.host}: anyone who can reach port "
                f"{server.port} can read this trace and publish into it",
                file=sys.stderr,
                flush=True,
            )
        print(f"publish from scripts with: OPGRAPH_TRACE={server.publish_url}", flush=True)
        if args.record:
            print(f"recording to {args.record}", flush=True)
        wait_until_interrupted(server)
    return 0
