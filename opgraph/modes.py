"""Modes that change how ops run: `no_grad()` and `detect_anomaly()`.

Both are context managers backed by one context variable, so they are local to the thread and
to the asyncio task that enters them. The op hot path reads the variable once per op: zero
means the normal mode, anything else sends the op down the slower, checking path.
"""

from __future__ import annotations

import dis
import functools
import inspect
import os
import sys
import types
from collections.abc import Callable, Generator
from contextvars import ContextVar
from typing import Any, TypeVar

from .errors import ModeLeakError
from .trace.text import MAX_SCOPE, viewer_text

F = TypeVar("F", bound=Callable[..., Any])

NO_GRAD = 1  # ops record no graph: their results are leaves
ANOMALY = 2  # a non-finite forward or backward result raises AnomalyError

mode: ContextVar[int] = ContextVar("opgraph_mode", default=0)


class _Mode:
    """`with` it: the mode `flag` is on (or off) for the block. Or decorate a function with it:
    the mode is on for each call, and for a generator function, for each resume of the
    generator (never while it is paused at a yield, when its caller runs)."""

    __slots__ = ("flag", "on", "_tokens")

    def __init__(self, flag: int, on: bool):
        self.flag, self.on = flag, on
        self._tokens: list = []

    def __enter__(self) -> None:
        frame = sys._getframe(1)
        if frame.f_code.co_flags & _GENERATORS:
            _refuse_a_yield_inside(frame, self)
        current = mode.get()
        self._tokens.append(mode.set(current | self.flag if self.on else current & ~self.flag))

    def __exit__(self, *exc_info: object) -> None:
        mode.reset(self._tokens.pop())

    def __call__(self, fn: F) -> F:
        if inspect.isasyncgenfunction(fn) or inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"{self.name}() cannot decorate {fn.__qualname__}, an async function: enter it "
                f"with `with {self.name}():` around the work inside, not around an await or yield"
            )
        flag, on = self.flag, self.on
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generator(*args: Any, **kwargs: Any) -> Any:
                return (yield from _resumed_in_mode(fn(*args, **kwargs), flag, on))

            return generator  # pyright: ignore[reportReturnType]

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with _Mode(flag, on):
                return fn(*args, **kwargs)

        return call  # pyright: ignore[reportReturnType]

    @property
    def name(self) -> str:
        if self.flag == NO_GRAD:
            return "no_grad" if self.on else "enable_grad"
        return "detect_anomaly"


def _resumed_in_mode(generator: Generator, flag: int, on: bool) -> Generator:
    """Run `generator` with the mode on (or off) while it runs, and as it was while it is paused:
    a `with` around each resume, none around the yield."""
    resume: Callable[[Any], Any] = generator.send  # or .throw, with the exception thrown in
    sent: Any = None
    while True:
        with _Mode(flag, on):
            try:
                item = resume(sent)
            except StopIteration as stop:
                return stop.value
        try:
            sent, resume = (yield item), generator.send
        except GeneratorExit:
            with _Mode(flag, on):
                generator.close()
            raise
        except BaseException as exc:  # thrown in at the yield: throw it into the generator
            sent, resume = exc, generator.throw


def no_grad() -> _Mode:
    """Inside `with no_grad():` operations compute values but record no graph. As a decorator
    (`@no_grad()`), for every call of the function, or every resume of a generator."""
    return _Mode(NO_GRAD, True)


def enable_grad() -> _Mode:
    """Undo an enclosing `no_grad()` for the body of the `with` block (or decorated function)."""
    return _Mode(NO_GRAD, False)


def detect_anomaly(enabled: bool = True) -> _Mode:
    """Inside `with detect_anomaly():` the first nan or inf in a forward or backward raises
    `AnomalyError` naming the op, its plugin, the node's label and the inputs."""
    return _Mode(ANOMALY, enabled)


# --- a mode entered around a yield --------------------------------------------------------------
# A generator runs in its caller's context, so a mode entered in it stays on in the caller while
# it is paused at a yield inside the block (what a `@contextmanager` wants, and nothing else).
# Python (3.11) calls nothing at a yield that would let the mode step aside without a cost on
# every op or call, so entering a mode around a yield is refused, when the `with` is entered,
# from the bytecode: a yield is inside the block when the handler that catches its exceptions
# leads (through the handlers of any try inside the block) to the `with`'s own cleanup.
# Checked once per `with` statement, then cached.

_GENERATORS = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR

_yield_inside: dict[tuple[types.CodeType, int], int | None] = {}  # (code, with) -> yield line


def _refuse_a_yield_inside(frame: types.FrameType, entered: _Mode) -> None:
    key = (frame.f_code, frame.f_lasti)
    line = _yield_inside.get(key, -1)
    if line == -1:
        line = _yield_inside[key] = _yield_line(frame.f_code, frame.f_lasti)
    if line is not None and not _driven_as_a_context_manager(frame):
        code = frame.f_code
        raise ModeLeakError(
            f"{entered.name}() is entered around a yield in generator {code.co_name}() "
            f"({code.co_filename}, line {line}): while the generator is paused there, its "
            f"caller would run in {entered.name}() too. Yield after the `with` block, or "
            f"decorate the generator function with @{entered.name}() for every resume"
        )


# Generators whose yield hands the mode to their caller on purpose: a `@contextmanager` (its
# `with` body runs in the mode) and a pytest fixture (the test runs in it), told apart by the
# code that runs them.
_CONTEXT_DRIVERS = (f"{os.sep}contextlib.py", f"{os.sep}_pytest{os.sep}fixtures.py")


def _driven_as_a_context_manager(frame: types.FrameType) -> bool:
    driver = frame.f_back
    return driver is not None and driver.f_code.co_filename.endswith(_CONTEXT_DRIVERS)


def _yield_line(code: types.CodeType, with_offset: int) -> int | None:
    """The line of a yield inside the `with` block starting at `with_offset`, or None."""
    instructions = list(dis.get_instructions(code))
    at = {i.offset: k for k, i in enumerate(instructions)}
    if with_offset not in at or instructions[at[with_offset]].opname != "BEFORE_WITH":
        return None  # entered by hand, or bytecode this check does not know: nothing to say
    # (set by Bytecode since 3.11, undocumented, and not in typeshed's stub)
    handlers = dis.Bytecode(code).exception_entries  # pyright: ignore[reportAttributeAccessIssue]

    def handler(offset: int) -> int | None:
        return next((e.target for e in handlers if e.start <= offset < e.end), None)

    cleanup = handler(with_offset + 2)  # the instruction after BEFORE_WITH is in the block
    if cleanup is None:
        return None
    lines = list(code.co_positions())
    for k, instruction in enumerate(instructions):
        if not _yields(instructions, k, code):
            continue
        target, steps = handler(instruction.offset), 0
        while target is not None and target != cleanup and steps < 100:
            target, steps = handler(target), steps + 1
        if target == cleanup:
            return lines[instruction.offset // 2][0]
    return None


def _yields(instructions: list[dis.Instruction], k: int, code: types.CodeType) -> bool:
    """Whether instruction `k` pauses the generator for its caller: any yield of a generator
    (`yield from` too); of an async generator, a yield but not an await (which pauses the task,
    whose context is its own)."""
    if instructions[k].opname != "YIELD_VALUE":
        return False
    if code.co_flags & inspect.CO_ASYNC_GENERATOR:
        return k > 0 and instructions[k - 1].opname == "ASYNC_GEN_WRAP"
    return True


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
