"""A step's structure: what later steps are compared with, and the arrays that describe it.

docs/protocol.md, "Steps": the first step of a graph defines a structure (its nodes by
offset, its inputs, its backward order, its root); a later step whose nodes have that
structure goes out as one STEP record of packed numbers. `define` makes a structure from a
step, `Structure.same_nodes` and `same_pass` compare a later step with it (lists built and
compared in C), `merge` joins the passes of one step (`opgraph.step()`), and `packed` packs
a step's numbers. The tracer (tracer.py) decides when a step ends and what to send.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..value import Value

# A step of more nodes and inputs than this has no structure (docs/protocol.md: n + e at
# most 500,000): it is sent as events only, and the tracer holds no more of its nodes.
MAX_STEP = 500_000

_get_id, _get_op, _get_a, _get_b, _get_tag = (
    attrgetter(name) for name in ("_id", "_opdef", "_a", "_b", "_tag")
)


def _picker(indexes: list[int]) -> Callable[[list[Any]], tuple]:
    """A function that takes the items at `indexes` of a list, as a tuple, in C."""
    if len(indexes) == 1:
        (index,) = indexes
        return lambda items: (items[index],)
    return itemgetter(*indexes)


class Structure:
    """A step's structure, as later steps are compared with it (docs/protocol.md).

    A step is compared through its *pool*: its nodes, then the structure's inputs (the same
    nodes in every step), then None. Where the structure has an operand, the step's node
    must have the pool's item at the same index: the same object, compared in C.
    """

    __slots__ = (
        "a",
        "b",
        "contiguous",
        "gather",
        "inputs",
        "labels",
        "nary",
        "number",
        "offsets",
        "ops",
        "order",
        "root",
        "scopes",
        "steps",
        "tagged",
        "unreached",
    )

    def __init__(
        self,
        number: int,
        nodes: list[Value],
        inputs: list[Value],
        where: dict[int, int],
        order: list[Value],
        root: Value,
    ) -> None:
        self.number = number
        self.inputs = inputs
        first = nodes[0]._id
        self.offsets = [n._id - first for n in nodes]
        self.contiguous = self.offsets == list(range(len(nodes)))
        self.ops = list(map(_get_op, nodes))
        none = len(nodes) + len(inputs)  # the pool's last item, None

        def index(x: Any) -> Any:
            if x is None:
                return none
            if type(x) is tuple:  # the operands after the first of an op of three or more
                return tuple(where[p._id] for p in x)
            return where[x._id]

        a = [index(x) for x in map(_get_a, nodes)]
        b = [index(x) for x in map(_get_b, nodes)]
        self.nary = tuple in map(type, b)
        self.a = _picker(a)
        self.b: Any = b if self.nary else _picker(b)
        # Labels and scopes: a node without a label holds its scope path (a str) in `_tag`,
        # one with a label (or a hook) a Tag of its own, compared by its label and scope.
        tags = list(map(_get_tag, nodes))
        tagged = [i for i, tag in enumerate(tags) if type(tag) is not str]
        self.tagged = tagged
        self.labels = [(tags[i].label, tags[i].scope) for i in tagged]
        for i in tagged:
            tags[i] = None
        self.scopes = tags
        self.order = _picker([where[n._id] for n in order]) if order else None
        self.steps = len(order)
        self.root = where[root._id]
        reached = set(map(_get_id, order))
        self.unreached = [i for i, n in enumerate(nodes + inputs) if n._id not in reached]
        # Each node's and input's place in the pass's order, or after it for those the pass
        # did not reach (in `unreached` order): numbers read during a pass, in its order,
        # then those of the unreached, are put in the structure's order with it.
        gather = [0] * (len(nodes) + len(inputs))
        for j, n in enumerate(order):
            gather[where[n._id]] = j
        for k, i in enumerate(self.unreached):
            gather[i] = len(order) + k
        self.gather = _picker(gather)

    def pool(self, nodes: list[Value]) -> list[Any]:
        return [*nodes, *self.inputs, None]

    def same_nodes(self, nodes: list[Value], pool: list[Any]) -> bool:
        """Whether `nodes`, a step's, have this structure (the pass aside). Compared list by
        list, cheapest first: each comparison runs in C."""
        count = len(self.ops)
        if len(nodes) != count:
            return False
        first = nodes[0]._id
        if self.contiguous:
            # The hook appends nodes as they are made, so their ids increase: the ends tell.
            # (Threads making nodes at once could swap two; two nodes that pass every check
            # below in each other's place have the same op, operands, label and scope.)
            if nodes[-1]._id - first != count - 1:
                return False
        elif [n._id - first for n in nodes] != self.offsets:
            return False
        if list(map(_get_op, nodes)) != self.ops:
            return False
        if tuple(map(_get_a, nodes)) != self.a(pool):
            return False
        if self.nary:
            expected = [pool[i] if type(i) is int else tuple(pool[j] for j in i) for i in self.b]
            if list(map(_get_b, nodes)) != expected:
                return False
        elif tuple(map(_get_b, nodes)) != self.b(pool):
            return False
        tags = list(map(_get_tag, nodes))
        labels = [tags[i] for i in self.tagged]
        if [t if type(t) is str else (t.label, t.scope) for t in labels] != self.labels:
            return False
        for i in self.tagged:
            tags[i] = None
        return tags == self.scopes

    def same_pass(self, order: list[Value], root: Value, pool: list[Any]) -> bool:
        if pool[self.root] is not root:
            return False
        if self.order is None:
            return not order
        return tuple(order) == self.order(pool)

    def same_run(self, steps: int) -> bool:
        """Whether a pass from this structure's root over a step with its nodes (same_nodes)
        is this structure's pass, knowing only how many steps it ran: a pass's steps follow
        from its root and the graph under it (backward sorts the nodes it reaches by id), and
        the graph is the structure's, inputs included (the same nodes)."""
        return steps == self.steps

    def pass_order(self, pool: list[Any]) -> list[Value]:
        """The nodes of this structure's pass, in the order it ran them, for a step's pool."""
        return [] if self.order is None else list(self.order(pool))


def define(
    number: int, nodes: list[Value], order: list[Value], root: Value
) -> tuple[Structure, tuple] | None:
    """The structure of a step (its nodes, in creation order, and its pass), and the
    STRUCTURE record's arrays and root; None if it has more than MAX_STEP nodes and inputs.
    Its inputs: the operands made before the step, in order of first use, then the other
    nodes the pass reached (made before the step too)."""
    where = {n._id: i for i, n in enumerate(nodes)}
    inputs: dict[int, Value] = {}
    for node in nodes:
        for parent in node._prev:
            if parent._id not in where:
                inputs.setdefault(parent._id, parent)
    for node in order:
        if node._id not in where:
            inputs.setdefault(node._id, node)
    if root._id not in where:
        inputs.setdefault(root._id, root)
    if len(nodes) + len(inputs) > MAX_STEP:
        return None
    where.update((id_, len(nodes) + k) for k, id_ in enumerate(inputs))
    # (An input made during the step, a value made under no_grad() between its nodes, is
    # another object in the next step: no later step matches, each goes out as events.)
    structure = Structure(number, nodes, list(inputs.values()), where, order, root)
    arrays = (
        array("Q", map(_get_id, nodes)),
        array("I", structure.offsets),
        array("Q", inputs),
        array("I", [where[n._id] for n in order]),
    )
    return structure, (arrays, where[root._id])


def merge(passes: list[tuple[list[Value], list[float], Value]]) -> tuple[list, list, Value]:
    """Several passes of one step as one (opgraph.step()): each node once, in the order the
    passes first reached it, with the sum of its grads; the last pass's root."""
    if len(passes) == 1:
        return passes[0]
    total: dict[Value, float] = {}
    for nodes, grads, _ in passes:
        for node, grad in zip(nodes, grads, strict=True):
            total[node] = total.get(node, 0.0) + grad
    return list(total), list(total.values()), passes[-1][2]


def packed(typecode: str, numbers: list[float]) -> bytes:
    """`numbers` as little-endian float64 ("d") or float32 ("f") bytes (struct packs a list
    faster than array builds one)."""
    try:
        return struct.pack(f"<{len(numbers)}{typecode}", *numbers)
    except (struct.error, OverflowError):  # a float32 beyond its range: inf, as C casts it
        out = array(typecode, numbers)
        if sys.byteorder != "little":
            out.byteswap()
        return out.tobytes()
