"""Reverse-mode differentiation: the backward pass, without recursion and without closures.

Ids are handed out in creation order and a node is always created after its parents, so
sorting the reachable nodes by id gives a topological order. Walking it in reverse, each node
asks its op for the local derivatives and adds `local * node.grad` to each parent's grad
(the chain rule); `+=` makes a node used twice collect both contributions.
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import TYPE_CHECKING

from .errors import AnomalyError, OpError, describe
from .modes import ANOMALY, mode

if TYPE_CHECKING:
    from .value import Value

_by_id = attrgetter("_id")


def topological_order(root: Value) -> list[Value]:
    """Every node that `root` depends on, `root` included, parents before children."""
    seen = {root}
    stack = [root]
    while stack:
        for parent in stack.pop()._prev:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return sorted(seen, key=_by_id)


def backward(root: Value, gradient: float = 1.0) -> None:
    """Add d root / d node, times `gradient`, to the grad of every node `root` depends on.

    Gradients accumulate across calls, as in micrograd. Each call propagates only its own
    contribution, so calling it twice on one graph gives exactly twice the gradients.
    """
    nodes = topological_order(root)
    earlier = [node.grad for node in nodes]
    carried = any(earlier)
    if carried:  # propagate this pass alone, then add back what was there before
        for node in nodes:
            node.grad = 0.0
    root.grad = float(gradient)
    tracer = root._tracer
    if tracer is not None:
        tracer.backward_begin(root)
    try:
        if mode.get() & ANOMALY or root.engine.detect_anomaly:
            _propagate_checked(nodes, tracer)
        else:
            _propagate(nodes, tracer)
    except BaseException:  # a failed pass adds nothing: put every grad back as it was
        for node, grad in zip(nodes, earlier, strict=True):
            node.grad = grad
        raise
    if carried:
        for node, grad in zip(nodes, earlier, strict=True):
            node.grad += grad
    if tracer is not None:
        tracer.backward_end(root)


def _propagate(nodes: list[Value], tracer) -> None:
    for node in reversed(nodes):
        op = node._opdef
        if tracer is not None:
            tracer.backward(node)
        if op is None:  # a leaf
            continue
        parents, grad = node._prev, node.grad
        try:
            if len(parents) == 2:
                a, b = parents
                da, db = op.derivative(node.data, a.data, b.data)
                a.grad += da * grad
                b.grad += db * grad
            else:
                partials = op.derivative(node.data, *[p.data for p in parents])
                for parent, partial in zip(parents, partials, strict=True):
                    parent.grad += partial * grad
        except Exception as exc:
            raise derivative_error(node, exc) from exc


def _propagate_checked(nodes: list[Value], tracer) -> None:
    """The same pass, raising AnomalyError at the first non-finite partial or grad."""
    for node in reversed(nodes):
        op = node._opdef
        if tracer is not None:
            tracer.backward(node)
        if op is None:
            continue
        parents = node._prev
        try:
            partials = op.derivative(node.data, *[p.data for p in parents])
            pairs = list(zip(parents, partials, strict=True))
        except Exception as exc:
            raise derivative_error(node, exc) from exc
        for parent, partial in pairs:
            parent.grad += partial * node.grad
            if not (math.isfinite(partial) and math.isfinite(parent.grad)):
                inputs = ", ".join(describe(p) for p in parents)
                raise AnomalyError(
                    f"op {op.title!r} (plugin {op.plugin!r}) at node "
                    f"{node.label or node._id!r} gave a non-finite gradient in backward: "
                    f"partial {partial}, grad {parent.grad}, inputs ({inputs})"
                )


def derivative_error(node: Value, exc: Exception) -> OpError:
    op = node._opdef
    inputs = ", ".join(describe(p) for p in node._prev)
    message = str(exc)
    if isinstance(exc, ValueError | TypeError) and ("zip()" in message or "unpack" in message):
        problem = f"derivative must return {len(node._prev)} partial derivative(s), one per input"
    else:
        problem = f"{type(exc).__name__}: {exc}"
    where = f"node {node.label!r}" if node.label else f"node #{node._id}"
    return OpError(
        f"op {op.title!r} (plugin {op.plugin!r}) failed in backward at {where}, "
        f"inputs ({inputs}): {problem}"
    )


def zero_grad(root: Value) -> None:
    """Set the grad of every node `root` depends on to 0."""
    for node in topological_order(root):
        node.grad = 0.0
