"""The contracts between opgraph's parts, as Protocols: what each side may call on the other.

- `TracerHooks`: what the engine calls on the tracer attached to it (`Engine.tracer`), from its
  hot path: once per node made, per label set, per backward pass and chunk of its steps.
- `TraceBuffer`: what a consumer of the trace (the server's drain, a hub publisher) calls on
  the tracer it reads from.
- `TracedEngine`, `OpTableView`, `OpInfo`: what a tracer and the server read of an engine:
  its name, its op table (each op's name and plugin, for `hello`) and its tracer slot.
- `Node`, `NodeOp`: a node as tools read it (Value's read API, docs/api.md).
- `TraceServing`: what `serve()` and `Engine.serve()` return.

Types only: nothing here runs on the hot path, and this module imports nothing at run time
but `typing`, so that the engine, the server and the tools can all name these types.
opgraph's own classes keep these contracts: `_conformance` below is checked by pyright.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, Self

if TYPE_CHECKING:
    from .engine import Engine
    from .trace import Tracer as BufferedTracer
    from .value import Value


class TracerHooks(Protocol):
    """What the engine calls on its tracer. Each call is on the engine's thread, from the
    hot path, so an implementation must be quick and must not raise."""

    def forward(self, node: Value) -> None:
        """`node` was made (not under `no_grad()`): its parents, data and label are set."""
        ...

    def relabel(self, node: Value) -> None:
        """`node.label` was set after the node was made."""
        ...

    def backward_begin(self, root: Value) -> None:
        """A backward pass from `root` begins (passes may nest: a hook may run one)."""
        ...

    def backward(self, node: Value) -> None:
        """One backward step has run (detect_anomaly's checked pass reports step by step)."""
        ...

    def backward_steps(self, nodes: list[Value]) -> None:
        """The backward steps of `nodes` have run, in this order (a chunk of the pass)."""
        ...

    def backward_end(self, root: Value) -> None:
        """The pass begun from `root` has ended; every grad of it is final, and each node's
        grad is still this pass's own (backward adds what earlier passes left after this)."""
        ...

    def backward_failed(self, root: Value, nodes: list[Value], error: BaseException) -> None:
        """The pass over `nodes` (in topological order) raised `error`, and the engine put
        every grad back as it was before the pass."""
        ...

    def touch(self, values: Iterable[Value]) -> None:
        """The program asks that the current data of `values` be announced now
        (`opgraph.touch`)."""
        ...

    def end_step(self) -> None:
        """The program marks the end of a training step (`opgraph.step`)."""
        ...


class TraceBuffer(Protocol):
    """What a consumer (the server's drain, a publisher) calls on the tracer it reads.

    The engine's thread adds events; the consumer's thread drains them. `drain` returns a
    flat list of fields, read with `opgraph.trace.records`.
    """

    @property
    def t0(self) -> int:
        """perf_counter_ns() when the tracer was made: event times count from it."""
        ...

    @property
    def max_buffer(self) -> int:
        """How many events may wait; past it, events are counted as lost."""
        ...

    def attach(self) -> None: ...

    def detach(self) -> None: ...

    def forget_all(self) -> None:
        """Forget which nodes were announced: the consumer starts over."""
        ...

    def pending(self) -> int: ...

    def oldest_ns(self) -> int | None: ...

    def drain(self, limit: int = ...) -> list[Any]: ...

    @property
    def lost(self) -> int:
        """Events not stored because the buffer was full, since the last `take_lost()`."""
        ...

    def take_lost(self) -> int: ...

    def hello(self) -> dict[str, Any]:
        """The fields of `hello` that describe the engine (its name and ops)."""
        ...

    def touch(self, values: Iterable[Value]) -> None: ...


class OpInfo(Protocol):
    """An op of an engine's table as a reader sees it (an `Op` or a `Composite`)."""

    @property
    def name(self) -> str: ...

    @property
    def plugin(self) -> str:
        """The name of the plugin that registered the op."""
        ...

    @property
    def arity(self) -> int | None: ...


class NodeOp(OpInfo, Protocol):
    """The op that made a node (always an `Op`: a Composite makes its nodes with others)."""

    @property
    def constants(self) -> tuple[tuple[int, float], ...]:
        """(position, value) of each operand fixed in the op (the 2 of `x ** 2`)."""
        ...


class OpTableView(Protocol):
    """An engine's op table as a reader sees it: the registered ops by name."""

    @property
    def definitions(self) -> Mapping[str, OpInfo]: ...


class TracedEngine(Protocol):
    """What a tracer and the tracing server use of an engine."""

    @property
    def name(self) -> str: ...

    @property
    def ops(self) -> OpTableView: ...

    @property
    def tracer(self) -> TracerHooks | None:
        """The attached tracer, or None (tracing off)."""
        ...

    @tracer.setter
    def tracer(self, tracer: TracerHooks | None) -> None: ...


class Node(Protocol):
    """A node as tools read it (Value's read API, docs/api.md)."""

    @property
    def id(self) -> int:
        """The node's number in its engine, in creation order (parents come first)."""
        ...

    @property
    def op(self) -> NodeOp | None:
        """The op that made the node, or None for a leaf."""
        ...

    @property
    def op_name(self) -> str | None: ...

    @property
    def parent_ids(self) -> tuple[int, ...]: ...

    @property
    def data(self) -> float: ...

    @property
    def grad(self) -> float: ...

    @property
    def label(self) -> str: ...

    @property
    def scope(self) -> str:
        """The scope path the node was made in ("L0/N3"), "" for none."""
        ...


class TraceServing(Protocol):
    """What `opgraph.serve()` and `Engine.serve()` return: a running server of the engine's
    trace, in a thread of its own, and a context manager that closes it."""

    @property
    def url(self) -> str:
        """The viewer page's URL (with the token, when there is one)."""
        ...

    @property
    def port(self) -> int: ...

    def pause(self) -> None:
        """Stop tracing the engine (nodes made meanwhile are announced when next used)."""
        ...

    def resume(self) -> None: ...

    def touch(self, values: Iterable[Value]) -> None: ...

    def flush(self, timeout: float = ...) -> bool:
        """Wait until every event so far is sent to every viewer; False after `timeout`."""
        ...

    def wait(self) -> None:
        """Block until the server stops."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: Any) -> None: ...


if TYPE_CHECKING:

    def _conformance(tracer: BufferedTracer, engine: Engine, value: Value) -> None:
        """opgraph's own classes keep the contracts (pyright checks these assignments).
        (`Value`'s `id`, `op` and `scope`, properties made from attrgetter for speed, declare
        their types to checkers under `if TYPE_CHECKING:` in value.py.)"""
        hooks: TracerHooks = tracer
        buffer: TraceBuffer = tracer
        traced: TracedEngine = engine
        node: Node = value
        del hooks, buffer, traced, node
