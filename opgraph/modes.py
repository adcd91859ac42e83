"""Modes that change how ops run: `no_grad()` and `detect_anomaly()`.

Both are context managers backed by one context variable, so they are local to the thread and
to the asyncio task that enters them. The op hot path reads the variable once per op: zero
means the normal mode, anything else sends the op down the slower, checking path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

from .trace import MAX_SCOPE, viewer_text

NO_GRAD = 1  # ops record no graph: their results are leaves
ANOMALY = 2  # a non-finite forward or backward result raises AnomalyError

mode: ContextVar[int] = ContextVar("opgraph_mode", default=0)


@contextmanager
def _set(flag: int, on: bool) -> Iterator[None]:
    current = mode.get()
    token = mode.set(current | flag if on else current & ~flag)
    try:
        yield
    finally:
        mode.reset(token)


def no_grad() -> AbstractContextManager[None]:
    """Inside `with no_grad():` operations compute values but record no graph."""
    return _set(NO_GRAD, True)


def enable_grad() -> AbstractContextManager[None]:
    """Undo an enclosing `no_grad()` for the body of the `with` block."""
    return _set(NO_GRAD, False)


def detect_anomaly(enabled: bool = True) -> AbstractContextManager[None]:
    """Inside `with detect_anomaly():` the first nan or inf in a forward or backward raises
    `AnomalyError` naming the op, its plugin, the node's label and the inputs."""
    return _set(ANOMALY, enabled)


def grad_enabled() -> bool:
    """True unless inside `no_grad()`."""
    return not mode.get() & NO_GRAD


# --- scopes ------------------------------------------------------------------------------------
# The scope a node is made in: a path of names ("L0/N3"), "" outside any scope. Like the mode,
# a context variable, so per thread and per asyncio task. Paths are interned (`_paths`), so
# that every node made in one scope holds the same string object: the slot costs 8 bytes and
# no allocation per node.

MAX_SCOPE_PATH = MAX_SCOPE  # code points: the protocol's limit for the `scope` field

scope_path: ContextVar[str] = ContextVar("opgraph_scope", default="")

_paths: dict[tuple[str, str], str] = {}


def child_path(parent: str, name: str) -> str:
    """The interned path of scope `name` inside the scope `parent` (a path itself)."""
    path = _paths.get((parent, name))
    if path is None:
        if not isinstance(name, str):
            raise TypeError(f"a scope's name must be a str, got {type(name).__name__}: {name!r}")
        if not name or "/" in name:
            raise ValueError(
                f"a scope's name must be non-empty and contain no '/' (nest scopes to make a "
                f"path), got {name!r}"
            )
        path = viewer_text(f"{parent}/{name}" if parent else name)  # lone surrogates replaced
        if len(path) > MAX_SCOPE_PATH:
            raise ValueError(
                f"scope path {path[:60]!r}... is {len(path):,} characters long, more than "
                f"{MAX_SCOPE_PATH:,}: nest fewer scopes or use shorter names"
            )
        if len(_paths) >= 100_000:  # names made on the fly (f"step{i}") must not grow it forever
            _paths.clear()
        path = _paths[parent, name] = path
    return path


class scope:
    """`with opgraph.scope("encoder"):` every node made in the block records the scope path
    (`Value.scope`), nested scopes joined by `/` ("encoder/layer1"). Names may not contain
    `/`. Local to the thread and asyncio task that enters it, like `no_grad()`. One scope
    object may be entered again, nested, but by one thread or task at a time: `with
    opgraph.scope(name):` makes a new one each time."""

    __slots__ = ("name", "_tokens")

    def __init__(self, name: str):
        child_path("", name)  # check the name now, not on entering
        self.name = name
        self._tokens: list = []

    def __enter__(self) -> str:
        path = child_path(scope_path.get(), self.name)
        self._tokens.append(scope_path.set(path))
        return path

    def __exit__(self, *exc_info: object) -> None:
        scope_path.reset(self._tokens.pop())


def current_scope() -> str:
    """The scope path new nodes get here: "" outside any scope."""
    return scope_path.get()
