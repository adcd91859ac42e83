"""Reverse-mode differentiation: the backward pass, without recursion and without closures.

Ids are handed out in creation order and a node is always created after its parents, so
sorting the reachable nodes by id gives a topological order. Walking it in reverse, each node
asks its op for the local derivatives and adds `local * node.grad` to each parent's grad
(the chain rule); `+=` makes a node used twice collect both contributions.

Nearly every node of a network is an add or a mul, so the pass knows their two rules by heart
and applies them inline, without a call and a tuple per node: an op that declares
`rule="sum"` (partials 1, 1) or `rule="product"` (partials b, a), as the built-in add and
mul do, has that declaration checked against its derivative when it is registered (ops.py),
and backward applies the rule instead of calling the derivative. Any other op's derivative is
called.

Gradient hooks (`Value.register_hook`, higher.py) live in a side table: a pass checks once
whether it is empty, and only when it is not does it take the slower path that looks up each
node, so that backward costs the same when no node has a hook.

Threads: a pass guards the nodes it touches, not the process (`begin_pass`). Passes whose
graphs share a node run one after the other; passes over separate graphs run at once, from
any thread; a pass started from a hook over the nodes of the pass that ran the hook is refused
(ReentrantBackwardError), since it would read and write that pass's half-done grads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Set
from numbers import Real
from operator import attrgetter
from threading import get_ident
from typing import TYPE_CHECKING, Any

from .errors import (
    AnomalyError,
    NotRealError,
    OpError,
    PartialsCountError,
    ReentrantBackwardError,
    node_name,
    op_error,
    wrong_partials,
)
from .hooks import HOOKS, run_hooks
from .modes import ANOMALY, mode
from .value import _number

if TYPE_CHECKING:
    from .value import Value

_by_id = attrgetter("_id")


def topological_order(root: Value) -> list[Value]:
    """Every node that `root` depends on, `root` included, parents before children."""
    return sorted(reachable(root), key=_by_id)


def reachable(root: Value) -> set[Value]:
    """Every node that `root` depends on, `root` included, as a set."""
    seen = {root}
    stack = [root]
    visit, pop, push = seen.add, stack.pop, stack.append
    while stack:
        node = pop()
        a = node._a  # the parents are the slots _a, _b, _more (see value.py)
        if a is None:
            continue
        if a not in seen:
            visit(a)
            push(a)
        b = node._b
        if b is None:
            continue
        if b not in seen:
            visit(b)
            push(b)
        if node._more is not None:
            for parent in node._more:
                if parent not in seen:
                    visit(parent)
                    push(parent)
    return seen


def backward(root: Value, gradient: float = 1.0) -> None:
    """Add d root / d node, times `gradient`, to the grad of every node `root` depends on.

    Gradients accumulate across calls, as in micrograd. Each call propagates only its own
    contribution, so calling it twice on one graph gives exactly twice the gradients.
    Passes from several threads whose graphs share nodes run one after the other.
    """
    if type(gradient) is not float:
        gradient = seed_gradient(gradient)
    nodes = reachable(root)
    tracer = root._tracer
    running = begin_pass(nodes, root, "backward()", tracer)
    try:
        _backward(root, gradient, sorted(nodes, key=_by_id), tracer)
    finally:
        end_pass(running)


def seed_gradient(gradient: object) -> float:
    """backward's `gradient` as a float: any real number, and nothing else."""
    if isinstance(gradient, Real):
        return _number(gradient)
    raise TypeError(
        f"backward(gradient=...) must be a real number, got {type(gradient).__name__}: {gradient!r}"
    )


def _backward(root: Value, gradient: float, nodes: list[Value], tracer) -> None:
    # Propagate this pass alone from zero grads, then add back what was there before.
    carried = [(node, node._grad) for node in nodes if node._grad]
    for node, _ in carried:
        node._grad = 0.0
    root._grad = gradient
    if tracer is not None:
        tracer.backward_begin(root)
    try:
        if mode.get() & ANOMALY or root.engine.detect_anomaly:
            _propagate_checked(nodes, tracer)
        else:
            _propagate(nodes, tracer)
    except BaseException as exc:  # a failed pass adds nothing: put every grad back as it was
        for node in nodes:
            node._grad = 0.0
        for node, grad in carried:
            node._grad = grad
        if tracer is not None:  # and viewers see the pass end, failed, with those grads
            tracer.backward_failed(root, nodes, exc)
        raise
    for node, grad in carried:
        node._grad += grad
    if tracer is not None:
        tracer.backward_end(root)


# A traced pass reports its steps to the tracer in chunks of this many nodes (one call and one
# buffered item per chunk rather than per node; a viewer still sees the pass advance).
TRACE_CHUNK = 256


def _propagate(nodes: list[Value], tracer) -> None:
    chain_rule = _chain_rule_hooked if HOOKS else _chain_rule
    if tracer is not None:
        _propagate_traced(nodes, tracer, chain_rule)
        return
    chain_rule(nodes[::-1])


def _chain_rule_hooked(order: list[Value]) -> None:
    # The chain rule with hooks: a node's grad is complete when its turn comes (every node
    # that uses it came before), so its hooks run then, before it flows to its parents. The
    # stretches of nodes between hooked ones go through the plain `_chain_rule`.
    start = 0
    for i, node in enumerate(order):
        hooks = HOOKS.get(node)
        if hooks:
            _chain_rule(order[start:i])
            node._grad = run_hooks(node, node._grad, hooks, on_values=False)
            start = i
    _chain_rule(order[start:])


def _chain_rule(order: list[Value]) -> None:
    # The chain rule, node by node from the root down: each parent gets the op's local
    # derivative times the node's grad. The sum and product rules (add and mul) are written
    # out (a partial of 1 needs no product: `1.0 * grad` is `grad` to the bit); other unary
    # and binary ops, nearly all the rest, skip the general loop. A partial that is not a
    # float goes through `real_partial`, which converts a real number and refuses anything
    # else (a complex, None, a string).
    for node in order:
        op = node._opdef
        if op is None:  # a leaf
            continue
        a, b, grad = node._a, node._b, node._grad
        rule = op.rule
        try:
            if rule == "sum":  # d(a + b) = (1, 1), as registration checked
                a._grad += grad
                b._grad += grad
            elif rule == "product":  # d(a * b) = (b, a)
                a._grad += b._data * grad
                b._grad += a._data * grad
            elif b is None:
                (da,) = op.derivative(node._data, a._data)
                if type(da) is not float:
                    da = real_partial(da)
                a._grad += da * grad
            elif node._more is None:
                da, db = op.derivative(node._data, a._data, b._data)
                if type(da) is not float:
                    da = real_partial(da)
                if type(db) is not float:
                    db = real_partial(db)
                a._grad += da * grad
                b._grad += db * grad
            else:
                parents = node._prev
                partials = op.derivative(node._data, *[p._data for p in parents])
                for parent, partial in zip(parents, counted_partials(partials, node), strict=True):
                    if type(partial) is not float:
                        partial = real_partial(partial)
                    parent._grad += partial * grad
        except Exception as exc:
            raise derivative_error(node, exc) from exc


def real_partial(partial: object) -> float:
    """A partial derivative as a float, or NotRealError: a complex grad is never right."""
    if isinstance(partial, Real):
        return _number(partial)
    raise NotRealError(
        f"derivative returned a partial derivative {partial!r} of type "
        f"{type(partial).__name__}; each one must be a real number"
    )


def _propagate_traced(nodes: list[Value], tracer, chain_rule) -> None:
    """The same pass, telling the tracer about each chunk of steps once it has run.

    A node's grad is final for this pass once its own step has run: only the nodes that use
    it add to it, and they all come before it in this order. So a chunk's grads can be read
    after the chunk. If a step fails, the steps of its chunk before it are not reported.
    """
    order = nodes[::-1]
    for start in range(0, len(order), TRACE_CHUNK):
        chunk = order[start : start + TRACE_CHUNK]
        chain_rule(chunk)
        tracer.backward_steps(chunk)


def _propagate_checked(nodes: list[Value], tracer) -> None:
    """The same pass, raising AnomalyError at the first non-finite partial or grad."""
    hooked = HOOKS if HOOKS else None
    for node in reversed(nodes):
        op = node._opdef
        if hooked is not None and node in hooked:
            node._grad = run_hooks(node, node._grad, hooked[node], on_values=False)
        if tracer is not None:
            tracer.backward(node)
        if op is None:
            continue
        parents = node._prev
        try:
            partials = op.derivative(node._data, *[p._data for p in parents])
            pairs = [
                (parent, real_partial(partial) if type(partial) is not float else partial)
                for parent, partial in zip(parents, counted_partials(partials, node), strict=True)
            ]
        except Exception as exc:
            raise derivative_error(node, exc) from exc
        for parent, partial in pairs:
            parent._grad += partial * node._grad
            if not (math.isfinite(partial) and math.isfinite(parent._grad)):
                raise op_error(
                    op,
                    "gave a non-finite gradient in backward",
                    node=node,
                    inputs=parents,
                    detail=f"partial {partial}, grad {parent._grad}",
                    error=AnomalyError,
                )


def counted_partials(partials, node: Value):
    """`partials`, once counted: one per parent of `node`, or PartialsCountError."""
    if type(partials) is not tuple:
        partials = tuple(partials)  # a list, or a generator, which has no length
    if len(partials) != len(node._prev):
        raise PartialsCountError(wrong_partials(len(node._prev), partials))
    return partials


def derivative_error(node: Value, exc: Exception) -> OpError:
    """The OpError for a derivative that failed at `node`, naming the op and the node.

    The inline unary and binary paths unpack the partials without counting them (a count per
    node would cost time on every pass); when one fails, the derivative is called again here
    and its partials counted, to tell a wrong count from any other failure.
    """
    if isinstance(exc, NotRealError | PartialsCountError):
        problem = str(exc)
    else:
        problem = _recount(node) or f"{type(exc).__name__}: {exc}"
    return op_error(node._opdef, "failed in backward", node=node, inputs=node._prev, detail=problem)


def _recount(node: Value) -> str | None:
    """The wrong-count problem of `node`'s derivative, or None if the count is right (or the
    derivative fails, or its result has no length)."""
    try:
        partials = node._opdef.derivative(node._data, *[p._data for p in node._prev])
        counted_partials(partials, node)
    except PartialsCountError as exc:
        return str(exc)
    except Exception:
        return None
    return None


def zero_grad(root: Value) -> None:
    """Set the grad of every node `root` depends on to 0 (after any pass over them ends)."""
    nodes = reachable(root)
    running = begin_pass(nodes, root, "zero_grad()")
    try:
        for node in nodes:
            node._grad = 0.0
    finally:
        end_pass(running)


# ---------------------------------------------------------------------------------------------
# Which nodes the running passes touch
#
# A pass sets aside the grads its graph holds and adds them back at the end (see _backward),
# so two passes that share a node must not overlap in time: each would read the other's
# half-done grads. Each running pass is registered with the set of nodes it touches; a pass
# that shares a node with another thread's running pass waits for it to end, and one that
# shares a node with a pass of its own thread (started from a gradient hook of that pass,
# which cannot end before the hook returns) is refused. Passes over separate graphs run at
# once. Uncontended, a pass costs one short critical section at its start and one at its end.


# A running pass: (thread, nodes, root, kind, tracer). The thread running it, the nodes whose
# grads it reads and writes, what to call it in errors (`root` and `kind`, see begin_pass),
# and the tracer it reports to: two threads' traced passes of one tracer take turns, so a
# viewer sees one pass at a time. A tuple: made on every pass, it costs less than an object.
RunningPass = tuple[int, Set["Value"], "Value | None", str, Any]

_registry = threading.Lock()
_pass_ended = threading.Condition(_registry)
_running: dict[int, RunningPass] = {}  # id(pass) -> pass
_waiting: dict[int, int] = {}  # a waiting thread -> the thread whose pass it waits for


def begin_pass(nodes: Set[Value], root: Value | None, kind: str, tracer=None) -> RunningPass:
    """Register a pass over `nodes`, once no other thread's running pass shares one of them.

    `root` and `kind` (`backward()`, `zero_grad()`, `compiled f.backward()`) name the pass in
    errors. Raises ReentrantBackwardError for a pass that shares nodes with a running pass
    of this thread, or whose wait would close a cycle of threads waiting for each other.
    Every `begin_pass` must be followed by `end_pass` (try/finally).
    """
    running = (get_ident(), nodes, root, kind, tracer)
    with _registry:
        if _running:
            _wait_for_overlapping(running)
        _running[id(running)] = running
    return running


def end_pass(running: RunningPass) -> None:
    """Unregister a pass, waking the threads waiting for one to end."""
    with _registry:
        del _running[id(running)]
        if _waiting:
            _pass_ended.notify_all()


def _wait_for_overlapping(new: RunningPass) -> None:
    # Called with _registry held; Condition.wait releases it while waiting.
    me = new[0]
    while True:
        blocking = _blocking(new)
        if blocking is None:
            return
        if blocking[0] == me:
            raise ReentrantBackwardError(_reentrant_message(new, blocking))
        if _waits_for(blocking[0], me):
            raise ReentrantBackwardError(_deadlock_message(new, blocking))
        _waiting[me] = blocking[0]
        try:
            _pass_ended.wait()
        finally:
            del _waiting[me]


def _blocking(new: RunningPass) -> RunningPass | None:
    """A running pass `new` must not overlap: one of this thread sharing a node (checked
    first: it never ends while `new` waits), else one of another thread sharing a node or
    the tracer; None if there is none."""
    me, nodes, _, _, tracer = new
    other_thread = None
    for running in _running.values():
        if not nodes.isdisjoint(running[1]):
            if running[0] == me:
                return running
            other_thread = running
        elif tracer is not None and running[4] is tracer and running[0] != me:
            other_thread = running
    return other_thread


def _waits_for(thread: int, me: int) -> bool:
    """Whether `thread` waits, directly or through other threads, for a pass of `me`."""
    seen = set()
    while thread in _waiting and thread not in seen:
        seen.add(thread)
        thread = _waiting[thread]
        if thread == me:
            return True
    return False


def _reentrant_message(new: RunningPass, running: RunningPass) -> str:
    return (
        f"{_pass_name(new)} was called while {_pass_name(running)} runs in the same thread "
        f"(from one of its gradient hooks), and the two graphs share "
        f"{_shared(new, running)}. The running pass holds half-done gradients of those nodes, "
        f"so the new one would give wrong numbers; call it after the running pass returns, or "
        f"use opgraph.grad(), which reads and writes no .grad"
    )


def _deadlock_message(new: RunningPass, running: RunningPass) -> str:
    shared = _shared(new, running) if not new[1].isdisjoint(running[1]) else "a tracer"
    mine = [_pass_name(p) for p in _running.values() if p[0] == new[0]]  # (it called the hook)
    return (
        f"{_pass_name(new)} would wait for {_pass_name(running)}, running in another thread "
        f"that waits for this thread's {' and '.join(mine) or 'pass'} (passes started from "
        f"gradient hooks in two threads, over each other's nodes): the two would wait "
        f"forever. The passes share {shared}"
    )


def _pass_name(running: RunningPass) -> str:
    _, _, root, kind, _ = running
    return kind if root is None else f"{kind} of {_node_described(root)}"


def _shared(a: RunningPass, b: RunningPass) -> str:
    """The nodes two passes share, the latest made first: `2 nodes: node 'h' (op 'mul'), ...`."""
    shared = sorted(a[1] & b[1], key=_by_id, reverse=True)
    shown = ", ".join(_node_described(node) for node in shared[:4])
    more = f" and {len(shared) - 4} more" if len(shared) > 4 else ""
    return f"{len(shared)} node{'s' if len(shared) != 1 else ''}: {shown}{more}"


def _node_described(node: Value) -> str:
    op = node._opdef
    return node_name(node) if op is None else f"{node_name(node)} (op {op.name!r})"
