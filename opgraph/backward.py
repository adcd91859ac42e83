"""Reverse-mode differentiation: the backward pass, without recursion and without closures.

Ids are handed out in creation order and a node is always created after its parents, so
sorting the reachable nodes by id gives a topological order. Walking it in reverse, each node
asks its op for the local derivatives and adds `local * node.grad` to each parent's grad
(the chain rule); `+=` makes a node used twice collect both contributions.

The loop itself is not written here: each op table has its own (`ops.chain_rule`), generated
by rules.py from the table's rows when the table is built. The partials of a row that gives
them inline (add's `1, 1`, mul's `b, a`, nearly every node of a network) are written into it,
so those nodes cost no call and no tuple; any other row's derivative is called.

Gradient hooks (`Value.register_hook`, higher.py) live in a side table: a pass checks once
whether it is empty, and only when it is not does it take the slower path that looks up each
node, so that backward costs the same when no node has a hook.
"""

from __future__ import annotations

import math
import threading
from numbers import Real
from operator import attrgetter
from typing import TYPE_CHECKING

from .errors import AnomalyError, op_error
from .hooks import HOOKS, run_hooks
from .modes import ANOMALY, mode
from .rules import float_partials
from .value import _number

if TYPE_CHECKING:
    from .value import Value

_by_id = attrgetter("_id")


def topological_order(root: Value) -> list[Value]:
    """Every node that `root` depends on, `root` included, parents before children."""
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
    return sorted(seen, key=_by_id)


# One backward pass at a time in the process. A pass first sets aside the grads its graph
# holds and adds them back at the end (see backward()), so two passes that overlap on any node
# (one graph from two threads, or two losses sharing parameters) would each read the other's
# half-done grads. Uncontended, the lock costs well under a microsecond per pass.
_one_pass = threading.RLock()


def backward(root: Value, gradient: float = 1.0) -> None:
    """Add d root / d node, times `gradient`, to the grad of every node `root` depends on.

    Gradients accumulate across calls, as in micrograd. Each call propagates only its own
    contribution, so calling it twice on one graph gives exactly twice the gradients.
    Passes from several threads run one after the other.
    """
    if type(gradient) is not float:
        gradient = seed_gradient(gradient)
    with _one_pass:
        _backward(root, gradient)


def seed_gradient(gradient: object) -> float:
    """backward's `gradient` as a float: any real number, and nothing else."""
    if isinstance(gradient, Real):
        return _number(gradient)
    raise TypeError(
        f"backward(gradient=...) must be a real number, got {type(gradient).__name__}: {gradient!r}"
    )


def _backward(root: Value, gradient: float) -> None:
    nodes = topological_order(root)
    # Propagate this pass alone from zero grads, then add back what was there before.
    carried = [(node, node._grad) for node in nodes if node._grad]
    for node, _ in carried:
        node._grad = 0.0
    root._grad = gradient
    tracer = root._tracer
    if tracer is not None:
        tracer.backward_begin(root)
    try:
        if mode.get() & ANOMALY or root.engine.detect_anomaly:
            _propagate_checked(nodes, tracer)
        else:
            _propagate(nodes, tracer)
    except BaseException:  # a failed pass adds nothing: put every grad back as it was
        for node in nodes:
            node._grad = 0.0
        for node, grad in carried:
            node._grad = grad
        raise
    for node, grad in carried:
        node._grad += grad
    if tracer is not None:
        tracer.backward_end(root)


# A traced pass reports its steps to the tracer in chunks of this many nodes (one call and one
# buffered item per chunk rather than per node; a viewer still sees the pass advance).
TRACE_CHUNK = 256


def _propagate(nodes: list[Value], tracer) -> None:
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


def zero_grad(root: Value) -> None:
    """Set the grad of every node `root` depends on to 0."""
    for node in topological_order(root):
        node._grad = 0.0
