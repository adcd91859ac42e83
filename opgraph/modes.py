"""Modes that change how ops run: `no_grad()` and `detect_anomaly()`.

Both are context managers backed by one context variable, so they are local to the thread and
to the asyncio task that enters them. The op hot path reads the variable once per op: zero
means the normal mode, anything else sends the op down the slower, checking path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

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
