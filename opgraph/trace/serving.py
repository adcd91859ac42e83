"""Starting a trace from the engine's side: `serve_engine`, `OPGRAPH_TRACE`
(`from_environment`), and `_server()`, the one gateway through which the engine reaches the
server (`opgraph.server` is imported nowhere else in the engine: pyproject.toml's import-linter
contract checks it).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..errors import ServerError, install_hint
from .text import redact

if TYPE_CHECKING:
    from opgraph.server.publisher import Publisher

    from ..contracts import TracedEngine, TraceServing
    from ..engine import Engine


class _ServerModule(Protocol):
    """`opgraph.server.server`, as the engine calls it."""

    def serve_engine(
        self,
        engine: TracedEngine,
        port: int = ...,
        host: str = ...,
        *,
        at_exit: bool = ...,
        announce: bool = ...,
        **options: Any,
    ) -> TraceServing: ...


class _PublisherModule(Protocol):
    """`opgraph.server.publisher`, as the engine calls it."""

    def publish(
        self, engine: TracedEngine, url: str, *, at_exit: bool = ..., dtype: str = ...
    ) -> Publisher: ...


class ServerModules(NamedTuple):
    """The modules of `opgraph.server` the engine calls, loaded by `_server()`."""

    server: _ServerModule
    publisher: _PublisherModule


def _server() -> ServerModules:
    """The tracing server (`opgraph.server`'s `server` and `publisher` modules), imported on
    first use: it loads websockets and msgpack. The one place where the engine reaches the
    server: `opgraph.serve`, `Engine.serve` and `from_environment` all go through here."""
    from opgraph.server import publisher, server

    return ServerModules(server, publisher)


def serve_engine(engine: Engine, port: int, host: str, **options: Any) -> TraceServing:
    """Serve the trace of `engine`: `Engine.serve` (and so `opgraph.serve`)."""
    return _server().server.serve_engine(engine, port=port, host=host, **options)


def widget_of(engine: Engine, **options: Any) -> Any:
    """`opgraph.widget`: the viewer as a notebook widget (`opgraph.server.widget`), which
    needs anywidget, an optional dependency."""
    try:
        import opgraph.server.widget
    except ModuleNotFoundError as exc:
        if exc.name not in ("anywidget", "traitlets", "ipywidgets"):
            raise
        raise ServerError(
            f"opgraph.widget() needs anywidget ({exc.name} is not installed in this Python, "
            f"{sys.executable}): {install_hint('anywidget', 'notebook')}"
        ) from exc
    return opgraph.server.widget.widget(engine, **options)


def from_environment(engine: Engine) -> TraceServing | Publisher | None:
    """Start tracing `engine` as the OPGRAPH_TRACE environment variable asks, if it does.

    `OPGRAPH_TRACE=1` serves the trace on port 8765 (OPGRAPH_TRACE_PORT chooses another; 0 a
    free one) and prints the viewer's URL; `OPGRAPH_TRACE=ws://host:port` publishes to a hub
    started with `opgraph serve` (connecting in the background: see `Publisher`).
    OPGRAPH_TRACE_RECORD=path also records the served trace; OPGRAPH_TRACE_DTYPE=f4 sends a
    training step's numbers as float32, served or published. Errors are reported on stderr,
    tokens hidden, and leave the program running untraced.
    """
    setting = os.environ.get("OPGRAPH_TRACE", "").strip()
    if setting in ("", "0", "false", "no", "off"):
        return None
    try:
        dtype = dtype_from_environment()
        if setting.startswith(("ws://", "wss://")):
            return _server().publisher.publish(engine, setting, at_exit=True, dtype=dtype)
        if setting not in ("1", "true", "yes", "on"):
            raise ValueError(f"expected 1 or a hub URL like ws://127.0.0.1:8765, got {setting!r}")
        port_setting = os.environ.get("OPGRAPH_TRACE_PORT", "8765").strip()
        if not port_setting.isdigit() or int(port_setting) > 65535:
            raise ValueError(
                f"OPGRAPH_TRACE_PORT must be a port number 0-65535, got {port_setting!r}"
            )
        port = int(port_setting)
        record = os.environ.get("OPGRAPH_TRACE_RECORD") or None
        serve_engine = _server().server.serve_engine
        return serve_engine(
            engine, port=port, record=record, dtype=dtype, at_exit=True, announce=True
        )
    except Exception as exc:  # tracing must never stop the program
        print(redact(f"opgraph: OPGRAPH_TRACE: tracing is off: {exc}"), file=sys.stderr)
        return None


def dtype_from_environment() -> str:
    """OPGRAPH_TRACE_DTYPE: how a traced step sends its numbers, "f8" (the default) or "f4"."""
    dtype = os.environ.get("OPGRAPH_TRACE_DTYPE", "f8").strip().lower() or "f8"
    if dtype not in ("f8", "f4"):
        raise ValueError(f"OPGRAPH_TRACE_DTYPE must be f8 (float64) or f4 (float32), got {dtype!r}")
    return dtype
