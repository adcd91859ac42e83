"""The hub's memory of training steps (docs/protocol.md, "Steps: `structure` and `step`").

A `structure` map describes the graph of a step once; each `step` map then carries only the
step's numbers. The hub keeps each structure's nodes once, in its graph, under the ids of
the step whose numbers they hold; a `step` of a known structure costs no work per node when
it arrives (it runs under the engine's GIL): `Steps` keeps the map, and writes it into the
graph (its nodes renamed `first + offsets[i]`, their data, grad and pass) only when something
needs the graph as it is after that step: a snapshot, or a later event that names one of the
step's nodes or inputs (`before`). Each step also adds a row to a bounded history: the loss
(the root's data), and the inputs' data and grad while the structure stays the same.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import deque
from typing import TYPE_CHECKING, Any

from .encode import as_tuple, forward_bytes, node_size, renamed_forward
from .events import MAX_STRUCTURES, packed, reals, u4s, u8s

if TYPE_CHECKING:
    from .hub import Hub

HISTORY_STEPS = 10_000  # steps whose loss (and inputs' data and grad) a snapshot carries
HISTORY_BYTES = 256 << 20  # the inputs' rows of the history, at most (16 bytes an input a step)


class Structure:
    """A structure as the hub keeps it: its arrays, and where its nodes are in the graph."""

    __slots__ = (
        "number",
        "ids",
        "offsets",
        "inputs",
        "input_set",
        "order",
        "root",
        "map",
        "stepped",
        "reached_set",
    )

    def __init__(self, event: dict[str, Any]):
        self.number: int = event["structure"]
        self.ids = u8s(event["ids"])  # the ids its nodes have in the hub's graph now
        self.offsets = u4s(event["offsets"])
        self.inputs = u8s(event["inputs"])
        self.input_set = frozenset(self.inputs)
        self.order = u4s(event["order"])
        self.root: int = event["root"]
        self.map = {key: event[key] for key in ("offsets", "inputs", "order", "root")}
        self.stepped = False  # its first step (the one that defined it) came
        self.reached_set: frozenset[int] | None = None

    def reached(self) -> frozenset[int]:
        """The indexes its pass reaches (made once, when first needed)."""
        if self.reached_set is None:
            self.reached_set = frozenset(self.order)
        return self.reached_set

    @property
    def size(self) -> int:
        return len(self.ids) + len(self.inputs)

    def node_id(self, index: int) -> int:
        """The id in the hub's graph of node `index` (the nodes, then the inputs)."""
        n = len(self.ids)
        return self.ids[index] if index < n else self.inputs[index - n]


class History:
    """The numbers of the last `limit` steps, their loss, and for the current structure's
    trailing run of steps the inputs' data and grad (f8 rows, at most `max_bytes`)."""

    def __init__(self, limit: int, max_bytes: int):
        self.limit, self.max_bytes = limit, max_bytes
        self.steps = array("Q")
        self.loss = array("d")
        self.structure = 0
        self.rows: deque[tuple[bytes, bytes]] = deque(maxlen=1)

    def add(self, number: int, loss: float, structure: int, data: bytes, grad: bytes) -> None:
        self.steps.append(number)
        self.loss.append(loss)
        if len(self.steps) > self.limit:
            del self.steps[0], self.loss[0]
        if structure != self.structure:  # rows are of the current structure only
            self.structure = structure
            rows = min(self.limit, self.max_bytes // max(2 * len(data), 1))
            self.rows = deque(maxlen=max(rows, 1))
        self.rows.append((data, grad))

    def map(self) -> dict[str, Any]:
        rows = self.rows
        return {
            "type": "history",
            "steps": packed(self.steps),
            "loss": packed(self.loss),
            "structure": self.structure,
            "from": len(self.steps) - min(len(rows), len(self.steps)),
            "data": b"".join(row[0] for row in rows),
            "grad": b"".join(row[1] for row in rows),
        }


class Steps:
    """The structures a hub was sent, its latest step, and the history (see the module)."""

    def __init__(self, hub: Hub, history_steps: int, history_bytes: int = HISTORY_BYTES):
        self.hub = hub
        self.structures: dict[int, Structure] = {}  # the last ones (see `structure`)
        self.size = 0  # their nodes and inputs, in all
        self.current: Structure | None = None  # the latest step's structure
        self.latest: dict[str, Any] | None = None  # the latest step's map
        self.pending = False  # the latest step is not written into the graph yet
        self.settled_inputs: set[int] = set()  # inputs given the pending step's numbers early
        self.last_pass_is_step = False  # no pass began since the latest step
        self.history = History(history_steps, history_bytes)

    # --- events in ------------------------------------------------------------------------

    def structure(self, event: dict[str, Any]) -> None:
        structure = Structure(event)
        old = self.structures.pop(structure.number, None)
        self.size -= old.size if old is not None else 0
        self.structures[structure.number] = structure
        self.size += structure.size
        # Bounded: past MAX_STRUCTURES structures, or max_nodes nodes and inputs in all,
        # the oldest go (never the current one, nor the new one).
        kept = self.structures
        while len(kept) > 2 and (len(kept) > MAX_STRUCTURES or self.size > self.hub.max_nodes):
            oldest = next(iter(kept))
            if kept[oldest] is self.current:  # (moved last: the next oldest goes)
                kept[oldest] = kept.pop(oldest)
                oldest = next(iter(kept))
            self.size -= kept.pop(oldest).size

    def step(self, event: dict[str, Any]) -> None:
        structure = self.structures.get(event["structure"])
        if structure is None:  # forgotten (or never sent): passed on, not kept
            return
        self.structures[structure.number] = self.structures.pop(structure.number)  # kept last
        if self.pending and structure is not self.current:
            self.settle()  # the other structure's latest numbers go into the graph first
        self.settled_inputs.clear()  # this step's numbers are newer than any event before
        self.current, self.latest = structure, event
        if structure.stepped:  # its nodes and pass came as this map: written when needed
            self.pending, self.last_pass_is_step = True, True
        else:  # the step that defined it: its nodes and pass came as events
            structure.stepped = True
        self._remember(structure, event)

    def _remember(self, structure: Structure, event: dict[str, Any]) -> None:
        """Add the step to the history: its loss and its inputs' row (as f8)."""
        dtype = event.get("dtype")
        width = 4 if dtype == "f4" else 8
        n, e = len(structure.ids), len(structure.inputs)
        data, grad = event["data"], event["grad"]
        try:
            (loss,) = struct.unpack_from("<f" if width == 4 else "<d", data, structure.root * width)
        except struct.error:  # a map of the hub's own that events.py would refuse
            return
        rows = [part[n * width : (n + e) * width] for part in (data, grad)]
        if width == 4:
            rows = [packed(array("d", reals(row, dtype))) for row in rows]
        self.history.add(event["step"], loss, structure.number, rows[0], rows[1])

    def pass_begins(self) -> None:
        self.last_pass_is_step = False

    def before(self, id_: int) -> None:
        """An event names node `id_`: if the pending step has it, write the step first."""
        structure, latest = self.current, self.latest
        if structure is None or latest is None:
            return
        first = latest["first"]
        if first <= id_ <= first + structure.offsets[-1]:
            self.settle()
        elif id_ in structure.input_set and id_ not in self.settled_inputs:
            self._settle_input(structure, latest, id_)

    def before_all(self, ids: list[int]) -> None:
        """`before` for a chunk of backward steps, checked at once (a C loop or two)."""
        structure, latest = self.current, self.latest
        if structure is None or latest is None or not ids:
            return
        first = latest["first"]
        if min(ids) <= first + structure.offsets[-1] and max(ids) >= first:
            self.settle()
        elif not structure.input_set.isdisjoint(ids):
            for id_ in structure.input_set.intersection(ids):
                if id_ not in self.settled_inputs:
                    self._settle_input(structure, latest, id_)

    # --- writing the pending step into the hub's graph -------------------------------------

    def _numbers(self, latest: dict[str, Any]) -> tuple[array, array]:
        dtype = latest.get("dtype")
        return reals(latest["data"], dtype), reals(latest["grad"], dtype)

    def _settle_input(self, structure: Structure, latest: dict[str, Any], id_: int) -> None:
        index = len(structure.ids) + structure.inputs.index(id_)
        data, grad = self._numbers(latest)
        node = self.hub.nodes.pop(id_, None)
        self.hub.reached.pop(id_, None)
        if node is not None:
            self._write(node, id_, None, data[index], grad[index])
        if index in structure.reached():
            self.hub.reached[id_] = latest["pass"]
        self.settled_inputs.add(id_)

    def settle(self) -> None:
        """Write the pending step into the graph: the structure's nodes renamed to the step's
        ids with its data and grad, the inputs' data and grad, and its pass. Work per node,
        done once per snapshot at most (or when a later event names the step's nodes)."""
        structure, latest = self.current, self.latest
        if not self.pending or structure is None or latest is None:
            return
        self.pending = False
        hub, n = self.hub, len(structure.ids)
        data, grad = self._numbers(latest)
        if len(data) < structure.size or len(grad) < structure.size:
            return  # a map of the hub's own that events.py would refuse
        first = latest["first"]
        new_ids = array("Q", [first + offset for offset in structure.offsets])
        old_ids, structure.ids = structure.ids, new_ids
        rename = dict(zip(old_ids, new_ids, strict=True)) if old_ids != new_ids else None
        self._rename(old_ids, new_ids, rename, data, grad)
        for j, id_ in enumerate(structure.inputs):
            node = hub.nodes.pop(id_, None) if id_ not in self.settled_inputs else None
            if node is not None:
                hub.reached.pop(id_, None)
                self._write(node, id_, None, data[n + j], grad[n + j])
        reached, pass_ = hub.reached, latest["pass"]
        steps = []
        for index in structure.order:
            id_ = structure.node_id(index)
            if index < n or id_ not in self.settled_inputs:
                reached[id_] = pass_
            steps.append(id_)
        self.settled_inputs.clear()
        if self.last_pass_is_step:  # the step's pass is the last one: it can be stepped through
            hub.last_pass = (pass_, structure.node_id(structure.root), steps)

    def _rename(
        self, old_ids: array, new_ids: array, rename: dict | None, data: array, grad: array
    ) -> None:
        """The structure's nodes `old_ids` become `new_ids`, with `data` and `grad`: the
        loop of `_write`, with the packed nodes patched in place (encode.renamed_forward)."""
        hub = self.hub
        nodes, grads, reached = hub.nodes, hub.grads, hub.reached
        # all taken out first: a new id may be the old id of another node (not in a valid
        # stream, whose step ids are new, but the hub must not mix nodes up anyway)
        taken = [nodes.pop(old, None) for old in old_ids]
        for old in old_ids:
            grads.pop(old, None)
            reached.pop(old, None)
        for i, node in enumerate(taken):
            if node is None:  # forgotten: stays forgotten
                continue
            new = new_ids[i]
            kept = renamed_forward(node, new, rename, data[i]) if type(node) is bytes else None
            if kept is None:
                self._write(node, new, rename, data[i], grad[i])
                continue
            nodes[new] = kept  # (as long as before: graph_bytes stays right)
            grads[new] = grad[i]

    def _write(
        self, node: bytes | tuple, new: int, rename: dict | None, data: float, grad: float
    ) -> None:
        """`node`, taken out of the graph, goes back in as node `new` with `data` and `grad`
        (its parents renamed by `rename`), last (it is forgotten last)."""
        hub = self.hub
        nodes = hub.nodes
        hub.graph_bytes -= node_size(node)
        op, parents, _, label, const, scope = as_tuple(node)
        if rename is not None:
            parents = tuple([rename.get(p, p) for p in parents])
        try:
            kept: bytes | tuple = forward_bytes(0, new, op, parents, data, label, 0, const, scope)
        except (struct.error, TypeError, ValueError):  # a number past 32 bits
            kept = (op, parents, data, label, const, sys.intern(scope))
        nodes[new] = kept
        hub.graph_bytes += node_size(kept)
        hub.grads[new] = grad

    # --- snapshots --------------------------------------------------------------------------

    def snapshot_maps(self) -> list[dict[str, Any]]:
        """The maps a snapshot carries after its nodes (call `settle` first): the current
        structure (named by the latest step's ids) and the latest step, if the graph still
        has all its nodes, then the history; nothing before the first step."""
        structure, latest = self.current, self.latest
        if structure is None or latest is None:
            return []
        maps = []
        nodes = self.hub.nodes
        if all(id_ in nodes for id_ in structure.ids):
            head = {"type": "structure", "structure": structure.number}
            maps.append({**head, "ids": packed(structure.ids), **structure.map})
            maps.append({key: value for key, value in latest.items() if key != "seq"})
        maps.append(self.history.map())
        return maps
