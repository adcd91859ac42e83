"""Reverse-mode differentiation: the backward pass, without recursion and without closures.

Ids are handed out in creation order and a node is always created after its parents, so
sorting the reachable nodes by id gives a topological order. Walking it in reverse, each node
asks its op for the local derivatives and adds `local * node.grad` to each parent's grad
(the chain rule); `+=` makes a node used twice collect both contributions.

The loop itself is not written here: each op table has its own (`ops.chain_rule`), generated
by rules.py from the table's rows when the table is built. The partials of a row that gives
them inline (add's `1, 1`, mul's `b, a`, nearly every node of a network) are written into it,
so those nodes cost no call and no tuple; any other row's derivative is called.

Gradient hooks (`Value.register_hook`, hooks.py) live with their nodes: a pass checks once
whether any living node has one (`HOOKS`), and only then takes the slower path that looks at
each node, so that backward costs the same when no node has a hook.

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
from typing import TYPE_CHECKING

from .errors import AnomalyError, ReentrantBackwardError, node_name, op_error
from .hooks import HOOKS, run_hooks
from .modes import ANOMALY, mode
from .rules import float_partials
from .value import Above, _number

if TYPE_CHECKING:
    from .contracts import TracerHooks
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
        a = node._a  # the parents are the slots _a and _b (see value.py)
        if a is None:
            continue
        if a not in seen:
            visit(a)
            push(a)
        b = node._b
        if b is None:
            continue
        if type(b) is not tuple:
            if b not in seen:
                visit(b)
                push(b)
        else:  # the operands after the first of an op of three or more
            for parent in b:
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


def _backward(root: Value, gradient: float, nodes: list[Value], tracer: TracerHooks | None) -> None:
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
    if tracer is not None:  # before the grads carried over: each node's grad is this pass's
        tracer.backward_end(root)
    for node, grad in carried:
        node._grad += grad


# A traced pass reports its steps to the tracer in chunks of this many nodes (one call and one
# buffered item per chunk rather than per node; a viewer still sees the pass advance).
TRACE_CHUNK = 256


def _propagate(nodes: list[Value], tracer: TracerHooks | None) -> None:
    # The chain rule of the graph's op table (rules.chain_rule_for), made when it was built.
    plain = nodes[-1]._ops.chain_rule  # the root's: every node of a graph has one engine

    def hooked(order: list[Value]) -> None:
        _chain_rule_hooked(order, plain)

    chain_rule = hooked if HOOKS else plain
    if tracer is not None:
        _propagate_traced(nodes, tracer, chain_rule)
        return
    chain_rule(nodes[::-1])


def _chain_rule_hooked(order: list[Value], chain_rule) -> None:
    # The chain rule with hooks: a node's grad is complete when its turn comes (every node
    # that uses it came before), so its hooks run then, before it flows to its parents. The
    # stretches of nodes between hooked ones go through the plain `chain_rule`.
    start = 0
    for i, node in enumerate(order):
        hooks = HOOKS.get(node)
        if hooks:
            chain_rule(order[start:i])
            node._grad = run_hooks(node, node._grad, hooks, on_values=False)
            start = i
    chain_rule(order[start:])


def _propagate_traced(nodes: list[Value], tracer: TracerHooks, chain_rule) -> None:
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


def _propagate_checked(nodes: list[Value], tracer: TracerHooks | None) -> None:
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
        pairs = zip(parents, float_partials(node), strict=True)
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


def step(node: Value) -> None:
    """`node._backward()`: the node's own step of the chain rule, as micrograd's `_backward`
    closure does: adds (d node / d parent) * node.grad to each parent's grad (a leaf has no
    step). `backward()` is not built on it."""
    if node._opdef is None:
        return
    for parent, partial in zip(node._prev, float_partials(node), strict=True):
        parent.grad += partial * node.grad


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
RunningPass = tuple[int, Set["Value"], "Value | None", str, "TracerHooks | None"]

_registry = threading.Lock()
_pass_ended = threading.Condition(_registry)
_running: dict[int, RunningPass] = {}  # id(pass) -> pass
_waiting: dict[int, int] = {}  # a waiting thread -> the thread whose pass it waits for


def begin_pass(
    nodes: Set[Value], root: Value | None, kind: str, tracer: TracerHooks | None = None
) -> RunningPass:
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


# micrograd's methods of Value (`v.backward()`, `v.zero_grad()`, `v._backward()`) are these;
# Value is a layer below this module and cannot import it (value.py's `Above`).
Above.backward, Above.zero_grad, Above.step = backward, zero_grad, step
