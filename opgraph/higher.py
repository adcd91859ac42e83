"""Derivatives of derivatives, forward mode and gradient hooks (docs/higher-order.md).

`grad(output, inputs)` is a reverse pass like `backward()`, but it returns the derivatives
instead of adding them to `.grad`, and it walks only the nodes between `output` and `inputs`.
With `create_graph=True` it runs the chain rule on Values rather than floats: each op's
`value_derivative` (an inline rule's own expressions, or the plugin's function; rules.py)
gives its partials as nodes, and every product and sum of the
chain rule is a node too, so the derivatives it returns are part of the graph and can be
differentiated again, to any order.

`jvp(fn, primals, tangents)` is forward mode: one sweep from the inputs to the output,
parents before children, carrying each node's tangent (d node along `tangents`) with the
same local derivatives backward uses.

grad() runs the gradient hooks of hooks.py, as backward does; jvp() runs none.

Neither reads nor writes any `.grad`: each keeps its derivatives in a dict of its own and
reads only the nodes' data, which no pass changes. So they need no part in backward's guard
of the nodes a pass touches (reverse.py), run alongside any pass, and work inside a
backward hook over that pass's own nodes, where a nested backward() is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

from .errors import CompileError, EngineMismatchError, describe
from .hooks import HOOKS, run_hooks
from .modes import enable_grad, no_grad, scope
from .reverse import topological_order
from .rules import value_partials
from .value import Value, _number, engine_class

# ---------------------------------------------------------------------------------------------
# grad


def grad(
    output: Value, inputs: Sequence[Value] | Value, *, create_graph: bool = False
) -> list[Value]:
    """d output / d input for each of `inputs`, as Values, without touching any `.grad`.

    With `create_graph=True` the results are nodes of the graph, built from the ops'
    `value_derivative`s: they can be backpropagated, or passed to `grad` again, to any
    order. An input `output` does not depend on gets 0. Gradient hooks run, once each, on
    the nodes between `output` and `inputs`.
    """
    if isinstance(inputs, Value):
        inputs = [inputs]
    inputs = list(inputs)
    cls = _engine_class(output, inputs)
    _refuse_while_compiling()
    order = topological_order(output)
    needed = _leading_to(order, inputs)
    if output not in needed:
        grads: dict[Value, Any] = {}
    elif create_graph:
        # The derivatives must be nodes, even inside no_grad(); a viewer shows the nodes of
        # this pass as one group, `grad`, in the scope grad() was called in.
        with enable_grad(), scope("grad"):
            grads = _value_pass(order, needed, output)
    else:
        grads = _float_pass(order, needed, output)
        # Numbers the caller reads, not new graph: made under no_grad, a viewer is told of
        # one only if a traced node later uses it (an app answering gradient requests
        # would otherwise grow its trace by a leaf per result).
        with no_grad():
            return [_as_value(cls, grads.get(x, 0.0)) for x in inputs]
    return [_as_value(cls, grads.get(x, 0.0)) for x in inputs]


def _engine_class(output: Any, inputs: list[Any]) -> type[Value]:
    if not isinstance(output, Value):
        raise TypeError(f"grad() differentiates a Value, got {type(output).__name__}: {output!r}")
    cls = engine_class(output)
    for x in inputs:
        if not isinstance(x, Value):
            raise TypeError(f"grad() inputs must be Values, got {type(x).__name__}: {x!r}")
        if engine_class(x) is not cls:
            raise EngineMismatchError(
                f"grad(): input {describe(x)} is of engine {x.engine.name!r}, the output of "
                f"engine {output.engine.name!r}"
            )
    return cls


def _refuse_while_compiling() -> None:
    from .compiler import recording

    if getattr(recording, "active", False):
        raise CompileError(
            "compile() cannot record a function that calls opgraph.grad(): compiled replays "
            "are first-order; call grad() outside the compiled function"
        )


def _leading_to(order: list[Value], inputs: list[Value]) -> set[Value]:
    """The nodes of `order` (parents first) that are inputs or depend on one."""
    needed = set(inputs)
    for node in order:
        if node._opdef is not None and node not in needed:
            b = node._b
            if node._a in needed or (b in needed if type(b) is not tuple else needed & set(b)):
                needed.add(node)
    return needed


def _float_pass(order: list[Value], needed: set[Value], output: Value) -> dict[Value, float]:
    """The chain rule on floats, from `output` down to the inputs, into a dict: the op
    table's float pass (rules.float_pass_for), whose steps are backward's."""
    hooks = HOOKS if HOOKS else None
    return output._ops.float_pass(reversed(order), needed, output, hooks, run_hooks)


def _value_pass(order: list[Value], needed: set[Value], output: Value) -> dict[Value, Any]:
    """The chain rule on Values: every partial, product and sum is a node of the graph.

    A gradient is kept as a plain float while it is a constant (the 1 the pass starts from,
    add's partials), so that `1 * g` and the like build no node.
    """
    cls = engine_class(output)
    grads: dict[Value, Any] = {output: 1.0}
    hooks = HOOKS if HOOKS else None
    for node in reversed(order):
        if node not in needed:
            continue
        g = grads.get(node, 0.0)
        if hooks is not None and node in hooks:
            g = grads[node] = run_hooks(node, _as_value(cls, g), hooks[node], on_values=True)
        if node._opdef is None:
            continue
        for parent, partial in zip(node._prev, value_partials(node), strict=True):
            if parent in needed:
                term = _times(partial, g)
                grads[parent] = term if parent not in grads else grads[parent] + term
    return grads


def _times(partial: Any, g: Any) -> Any:
    # 1 * x is x to the bit: no node for it.
    if type(partial) is float and partial == 1.0:
        return g
    if type(g) is float and g == 1.0:
        return partial
    return partial * g


def _as_value(cls: type[Value], g: Any) -> Value:
    return g if isinstance(g, Value) else cls(g)  # (a Value here is of the graph's engine)


# ---------------------------------------------------------------------------------------------
# jvp: forward mode


def jvp(
    fn: Callable[..., Value],
    primals: Sequence[float],
    tangents: Sequence[float],
    *,
    engine: Any = None,
) -> tuple[Value, float]:
    """`(fn(*primals), d fn along tangents)`, the tangent by one forward sweep.

    `fn` takes one Value per primal and returns a Value. The tangent is the directional
    derivative sum_i d fn / d x_i * tangents[i], carried node by node from the inputs to the
    output with each op's local derivatives (the ones backward uses), not by a reverse pass.
    """
    primals, tangents = list(primals), list(tangents)
    if len(primals) != len(tangents):
        raise ValueError(
            f"jvp() needs one tangent per primal: {len(primals)} primals, {len(tangents)} tangents"
        )
    for what, numbers in (("primals", primals), ("tangents", tangents)):
        for x in numbers:
            if not isinstance(x, Real) or isinstance(x, Value):
                raise TypeError(f"jvp() {what} must be real numbers, got {x!r}")
    if engine is None:
        from .engine import default_engine

        engine = default_engine()
    leaves = [engine.Value(x) for x in primals]
    with enable_grad():
        out = fn(*leaves)
    if engine_class(out) is not engine.Value:
        raise TypeError(f"jvp(): fn must return a Value of engine {engine.name!r}, got {out!r}")
    tangent = {leaf: _number(t) for leaf, t in zip(leaves, tangents, strict=True)}
    # The sweep, parents first, with the op table's local derivatives (rules.py).
    engine.ops.tangent_pass(topological_order(out), tangent)
    return out, tangent.get(out, 0.0)
