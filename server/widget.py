"""The viewer in a notebook cell, streamed through the kernel: `opgraph.widget()`.

A `TraceWidget` is an anywidget. Its page code is the viewer page's own (server/static,
bundled by bundle.py); its frames are the protocol's msgpack frames, sent as binary buffers
of the kernel's comm channel (`widget.send(content, buffers=[frame])`): no port, no server,
no token, so it works wherever the notebook's kernel does.

The kernel side is a hub viewer like any other (viewers.py): a `Viewer` whose send is the
comm's, joined to the hub of an `EngineServer` that listens on no port (`port=None`), shared
by every widget of one engine. A widget joins only when its page says "ready" (hello and a
snapshot first, then the stream), so that "Run All" loses nothing: events made before the
page was ready are in the snapshot. A page that goes away ("gone", the cell cleared or re-run)
leaves the hub; a widget made again by its cell takes over the feed, which stops with the
last widget of its engine closed.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from opgraph.errors import ServerError

from .bundle import viewer_css, widget_esm
from .server import EngineServer
from .viewers import Viewer

if TYPE_CHECKING:
    from opgraph.contracts import TracedEngine

__all__ = ["TraceWidget", "widget"]

# Options of serve() that mean a socket: a widget has none.
_SOCKET_OPTIONS = ("port", "host", "token", "static_dir", "accept_publishers")


class TraceWidget(anywidget.AnyWidget):
    """The live viewer of one engine's trace in a notebook cell (see docs/notebook.md)."""

    _esm = widget_esm()
    _css = viewer_css()
    height = traitlets.Int(600).tag(sync=True)  # pixels; the width is the cell's

    def __init__(self, feed: _Feed, **kwargs: Any):
        super().__init__(**kwargs)
        self._released = False  # close() has let the feed go (it does so once)
        self.feed = feed
        self.viewer: Viewer | None = None
        self._task: asyncio.Task | None = None
        self.views: set[str] = set()  # the pages showing it now (each says ready, then gone)
        self.shown = False  # some page has shown it
        self.frames_sent = 0
        self.bytes_sent = 0
        self.on_msg(self._on_msg)

    # --- the page's messages (handled on the kernel's main thread) ------------------------

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or self.feed.server._closed:
            return
        kind, view = content.get("type"), str(content.get("view", ""))
        feed = self.feed
        if kind == "ready":
            with _lock:
                self.views.add(view)
                self.shown = True
            feed.server.call(self._join)
        elif kind == "gone":
            # The kernel may handle this while the cell that makes a newer widget runs: under
            # the lock, a widget being made counts as newer (see `widget()`).
            with _lock:
                self.views.discard(view)
                unseen = not self.views
                newer = feed.making > 0 or feed.widgets[-1:] != [self]  # a cell run again
            if unseen:
                feed.server.call(self._leave)
                if newer:
                    self.close()
        elif kind == "snapshot" and self.viewer is not None:
            viewer = self.viewer
            self.feed.server.call(viewer.ask_snapshot)
        # unknown messages are ignored, so that the page can grow

    # --- on the feed's loop ----------------------------------------------------------------

    def _join(self) -> None:
        """A page is ready: (re)join the hub, so that every page gets hello and a snapshot."""
        self._leave()
        server = self.feed.server
        viewer = Viewer(
            server.hub,
            self._send_frame,
            name="widget",
            send_timeout=server.send_timeout,
            snapshot_interval=server.snapshot_interval,
        )
        server.hub.join(viewer)
        self.viewer, self._task = viewer, server._spawn(viewer.run())

    def _leave(self) -> None:
        if self.viewer is not None:
            self.feed.server.hub.leave(self.viewer)
        if self._task is not None:
            self._task.cancel()
        self.viewer = self._task = None

    async def _send_frame(self, frame: bytes) -> None:
        # The kernel's IOPub socket takes it from any thread; the page acknowledges nothing
        # (its messages wait while a cell runs), so a frame is handed on at once.
        self.send({"type": "frame"}, buffers=[frame])
        self.frames_sent += 1
        self.bytes_sent += len(frame)

    # --- the user's side -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What was sent to the pages, and the hub viewer's counters (queued, dropped ...)."""
        viewer = self.viewer
        counters = self.feed.server.call(viewer.stats) if viewer is not None else None
        return {
            "frames": self.frames_sent,
            "bytes": self.bytes_sent,
            "views": len(self.views),
            "viewer": counters,
        }

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event so far is handed to the kernel's channel (False if not
        within `timeout` seconds)."""
        return self.feed.server.flush(timeout)

    def close(self) -> None:
        """Stop showing the trace: the hub forgets this widget; the last one stops the feed.

        Once only: ipywidgets closes a widget again when the collector frees it, which may
        happen at any allocation, also while this thread holds `_lock` (making another
        widget): a second close that took the lock would wait for itself forever."""
        feed = getattr(self, "feed", None)  # (None: ipywidgets closing one that failed to start)
        if feed is not None and not self._released:
            self._released = True
            if not feed.server._closed:
                feed.server.call(self._leave)
            feed.release(self)
        super().close()


class _Feed:
    """One engine's trace for its widgets: an EngineServer with no socket."""

    def __init__(self, engine: TracedEngine, options: dict[str, Any]):
        self.engine = engine
        self.options = options
        self.server = EngineServer(engine, port=None, **options).start()
        self.widgets: list[TraceWidget] = []
        self.making = 0  # widgets being made for it, not in `widgets` yet (under _lock)
        self.stopped = False  # its last widget closed: it stops (under _lock)

    def release(self, widget: TraceWidget | None) -> None:
        """`widget` closed (None: one failed to be made); the last one stops the feed."""
        with _lock:
            if widget in self.widgets:
                self.widgets.remove(widget)
            last = not self.widgets and not self.making and not self.stopped
            if last:
                self.stopped = True
                if _feeds.get(id(self.engine)) is self:
                    del _feeds[id(self.engine)]
        if last:
            self.server.close()


_feeds: dict[int, _Feed] = {}  # id(engine) -> its feed (the feed holds the engine)
_lock = threading.Lock()


@atexit.register
def _close_feeds_at_exit() -> None:
    """At exit, while their loops still run: each feed's server closed. Otherwise a widget
    the interpreter frees afterwards waits for a loop that no longer runs (10 s, then a
    TimeoutError printed) before the program or the kernel can end."""
    with _lock:
        feeds = list(_feeds.values())
    for feed in feeds:
        feed.server.close()


def widget(engine: TracedEngine, **options: Any) -> TraceWidget:
    """The live viewer of `engine`'s trace as a notebook widget; see `opgraph.widget`."""
    bad = sorted(set(options) & set(_SOCKET_OPTIONS))
    if bad:
        raise ServerError(
            f"opgraph.widget() streams through the kernel and opens no socket: "
            f"{', '.join(bad)} {'is an option' if len(bad) == 1 else 'are options'} of "
            f"opgraph.serve()"
        )
    with _lock:
        feed = _feeds.get(id(engine))
        if feed is None:
            if engine.tracer is not None:
                raise ServerError(
                    f"engine {engine.name!r} is already traced ({engine.tracer!r}): close "
                    f"that server first, or show it with its own viewer"
                )
            feed = _feeds[id(engine)] = _Feed(engine, options)
        elif options and options != feed.options:
            raise ServerError(
                f"engine {engine.name!r} already has a widget made with other options "
                f"({feed.options or 'none'}): close it first to use {options}"
            )
        # A cell run again: its earlier widget's page is gone, and that widget is closed, not
        # leaked: here, or when its page says "gone" while or after this one is made (_on_msg).
        earlier = [w for w in feed.widgets if w.shown and not w.views]
        # The new widget takes over the trace: the earlier ones closed, the feed keeps running
        # (with the graph so far, a new page's snapshot), as a widget is being made for it.
        feed.making += 1
    try:
        for old in earlier:
            old.close()
        made = TraceWidget(feed)
    except BaseException:
        with _lock:
            feed.making -= 1
        feed.release(None)  # the feed stops unless a widget shows it
        raise
    with _lock:
        feed.making -= 1
        feed.widgets.append(made)
    return made
