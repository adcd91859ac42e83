"""Batched replay's nodes that depend on no input, computed once per batch (`Hoisted`).

A node of the per-sample graph that reads only parameters and constants (an L1 penalty
`sum(p.relu() for p in params)` in each sample's loss, a weight computed from a parameter)
is the same for every sample. Batched replay (batched.py) does not make it a row of n
numbers: it runs once per batch, before the numpy code, as straight-line Python on floats,
and the values the numpy code reads enter it as rows of the parameter column, below the
parameters. batched.py loads this module; it imports numpy, and nothing of batched.py.
Also here: the small helpers both use (which node reads which, rows as a slice in source).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import rules
from .codegen import Generated, literal
from .errors import AnomalyError, node_name, op_error
from .value import Value

if TYPE_CHECKING:
    from .batched import BatchedProgram
    from .ops import Row


def progression(rows: np.ndarray) -> tuple[int, int] | None:
    """(start, step) if rows are start, start + step, ... with step >= 1, else None."""
    if len(rows) == 1:
        return int(rows[0]), 1
    step = int(rows[1] - rows[0])
    if step >= 1 and np.array_equal(rows, rows[0] + step * np.arange(len(rows))):
        return int(rows[0]), step
    return None


def slice_source(start: int, step: int, count: int) -> str:
    """The evenly spaced rows start, start + step, ... (count of them) as a slice in source."""
    stop = start + step * (count - 1) + 1
    return f"{start}:{stop}" if step == 1 else f"{start}:{stop}:{step}"


def index_source(rows: np.ndarray, name: str, namespace: dict[str, Any]) -> str:
    """Rows of an array as an index in source: a slice if they are evenly spaced, else
    `name`, the rows as an index array put in the generated code's `namespace`."""
    found = progression(rows)
    if found:
        return slice_source(*found, len(rows))
    namespace[name] = rows
    return name


def node_uses(nodes: list[Value]) -> tuple[dict[int, int], dict[int, Value]]:
    """How many times each node is an operand (by id), and a node that reads it (the only
    one, where it is read once)."""
    uses: dict[int, int] = {}
    user: dict[int, Value] = {}
    for node in nodes:
        for parent in node._prev:
            uses[id(parent)] = uses.get(id(parent), 0) + 1
            user[id(parent)] = node
    return uses, user


def _has_kernels(op: Row) -> bool:
    """Can a vector of op's nodes run as one numpy call: a forward that is a ufunc or an
    array kernel, and partials written inline or an array kernel?"""
    forward = rules.forward_ufunc(op) is not None or op.array_forward is not None
    return forward and (op.partials is not None or op.array_derivative is not None)


# A group of at least this many hoisted nodes of one op, at one depth and reading the same
# kinds of operands, runs as one numpy call over a vector of them rather than a line each.
VECTOR = 8
MAX_TERMS = 100  # terms of a sum written on one line of the hoisted code


class Hoisted(Generated):
    """The op nodes that depend on no input, only on parameters and constants (an L1
    penalty `sum(p.relu() for p in params)` in each sample's loss): the same for every
    sample, so computed once per batch rather than as rows of V.

    They are computed by straight-line Python on floats, as compiled replay computes them
    (the same operations as eager mode), in units: a unit is one node, a line of Python, or
    a vector, at least VECTOR nodes of one op at one depth (none reads another: the 337
    relus of the L1 penalty), one numpy call on a vector of their operands (`h3`), unpacked
    into floats where a line of Python reads them. A sum of at least VECTOR terms (a tree
    of adds nothing else reads, in any association order) is one line: numpy's sum of each
    vector all of whose nodes are terms, then the other terms; so the penalty's 337 adds
    are `float(h0.sum())`, and backward broadcasts its gradient to the vector.

    The nodes the batch reads are rows of PV below the parameters: the generated numpy code
    reads them as it reads parameters, and its backward gives their gradients summed over
    the batch (per block of samples, added in order: the same bits whatever the chunks).
    Backward here, once per batch, takes those totals through the hoisted nodes down to
    the parameters' totals. `replay(PV)` is a generator: it computes the nodes from the
    parameters' values in PV and writes the ones the batch reads into PV; sent the batch's
    totals (`total`, in PV's order), it adds a vector's parameters' gradients into it, and
    yields the gradients of the parameters in `grad_rows` that lines of Python compute."""

    kind = "opgraph.compile batched hoisted"
    words, note = "batched", " (computed once per batch)"  # in its errors (Generated)

    def __init__(self, program: BatchedProgram, hoisted: list[int], boundary: list[int]):
        self.compiled = program.compiled
        self.program = program
        self.hoisted = hoisted  # the nodes computed here, by index, in creation order
        self.boundary = boundary  # the ones the batch reads, in PV's order
        self.namespace: dict[str, Any] = {**rules.NAMESPACE, "np": np}  # IEEE div, power ...
        self._names: dict[int, str] = {}
        self._filenames: set[str] = set()
        self._checked: tuple[Callable, dict[int, int]] | None = None
        self.grad_rows = np.empty(0, dtype=np.intp)  # rows of the parameters backward gives
        self.trees = self._sum_trees()  # top add -> its terms, for sums of many terms
        self.absorbed = {i for _, adds in self.trees.values() for i in adds}
        self.units = self._units()
        # a vector by its first node (its lines name that node)
        self.vector_of = {unit[0]: u for u, unit in enumerate(self.units) if len(unit) > 1}
        self.operands = {u: self._operands(u) for u, unit in enumerate(self.units) if len(unit) > 1}
        self.sums = {i: self._sum_of(terms) for i, (terms, _) in self.trees.items()}
        self.unpacked = self._unpacked()
        self.source, self.lines = self._generate(checked=False)
        self.replay = self._build(self.source)

    # --- units ------------------------------------------------------------------------------

    def _kind(self, arg: Value | float) -> str:
        """C: a number or a constant; P: a parameter; H: a hoisted node."""
        if isinstance(arg, int | float) or id(arg) in self.program.constant_of:
            return "C"
        return "P" if id(arg) in self.program.parameter_ids else "H"

    def _sum_trees(self) -> dict[int, tuple[list[Value | float], list[int]]]:
        """The sums of at least VECTOR terms (`sum(p.relu() for p in params)`), by their
        top add: the terms, and the adds of the tree, which nothing else reads (one use,
        not an output). Found in whatever order the adds associate, as `_sums` does."""
        nodes, program = self.compiled.nodes, self.program
        hoisted = set(self.hoisted)
        uses, user = node_uses(nodes)
        outputs = {id(v) for v in self.compiled.outputs}

        def inner(v: Value | float) -> bool:  # an add of a larger sum
            return (
                not isinstance(v, int | float)
                and program.index[id(v)] in hoisted
                and uses.get(id(v)) == 1
                and id(v) not in outputs
                and program._is(v, "add")
                and program.index[id(user[id(v)])] in hoisted
                and program._is(user[id(v)], "add")
            )

        trees: dict[int, tuple[list[Value | float], list[int]]] = {}
        for i in self.hoisted:
            if not program._is(nodes[i], "add") or inner(nodes[i]):
                continue
            terms: list[Value | float] = []
            adds: list[int] = []
            stack = list(reversed(program._call(nodes[i])[1]))
            while stack:
                term = stack.pop()
                if inner(term):
                    assert not isinstance(term, int | float)  # (inner says so)
                    adds.append(program.index[id(term)])
                    stack.extend(reversed(program._call(term)[1]))
                else:
                    terms.append(term)
            if len(terms) >= VECTOR:
                trees[i] = (terms, adds)
        return trees

    def _reads(self, i: int) -> list[Value | float]:
        """What node i's line of Python reads: a sum's terms but its whole vectors, another
        node's arguments."""
        if i in self.sums:
            return self.sums[i][1]
        return self.program._call(self.compiled.nodes[i])[1]

    def _units(self) -> list[list[int]]:
        """The hoisted nodes in units (a list of one node, or a vector's nodes), in an
        order that computes a node's operands before it: depth by depth."""
        nodes, program = self.compiled.nodes, self.program
        depth: dict[int, int] = {}
        groups: dict[tuple, list[int]] = {}
        for i in self.hoisted:
            if i in self.absorbed:
                continue
            args = self.trees[i][0] if i in self.trees else program._call(nodes[i])[1]
            parents = [program.index[id(a)] for a in args if not isinstance(a, int | float)]
            depth[i] = 1 + max((depth.get(j, 0) for j in parents), default=0)
            if i in self.trees:  # a sum: a line of its own
                groups[("sum", i)] = [i]
                continue
            op = program._call(nodes[i])[0]
            kinds = tuple(self._kind(a) for a in args)
            groups.setdefault((depth[i], id(op), kinds), []).append(i)
        units: list[list[int]] = []
        for key, members in groups.items():
            kinds = key[-1]
            op = program._call(nodes[members[0]])[0]
            vector = len(members) >= VECTOR and kinds.count("C") < len(kinds)
            if vector and _has_kernels(op):
                units.append(members)
            else:
                units.extend([i] for i in members)
        return sorted(units, key=lambda unit: (depth[unit[0]], unit[0]))

    def _operands(self, u: int) -> list[tuple[str, Any]]:
        """How each argument position of vector u reads: ("C", numbers), ("P", rows of PV),
        ("H", unit) for the whole vector of another unit in its order, or ("gather", node
        indices) for hoisted nodes read one by one."""
        nodes, program = self.compiled.nodes, self.program
        calls = [program._call(nodes[i])[1] for i in self.units[u]]
        vectors = {tuple(unit): w for w, unit in enumerate(self.units) if len(unit) > 1}
        found: list[tuple[str, Any]] = []
        for j in range(len(calls[0])):
            args = [call[j] for call in calls]
            kind = self._kind(args[0])
            if kind == "C":
                values = [a if isinstance(a, int | float) else a._data for a in args]
                found.append(("C", values))
            elif kind == "P":
                rows = [program.parameter_row[id(a)] for a in args]
                found.append(("P", np.array(rows, dtype=np.intp)))
            else:
                parents = tuple(program.index[id(a)] for a in args)
                w = vectors.get(parents)
                found.append(("H", w) if w is not None else ("gather", list(parents)))
        return found

    def _sum_of(self, terms: list[Value | float]) -> tuple[list[int], list[Value | float]]:
        """A sum's terms: the vectors all of whose nodes are terms (each summed by numpy
        once), and the other terms."""
        index = self.program.index
        left: dict[int, int] = {}  # node -> how many times it is a term still
        for t in terms:
            if not isinstance(t, int | float):
                left[index[id(t)]] = left.get(index[id(t)], 0) + 1
        vectors = []
        for u, unit in enumerate(self.units):
            if len(unit) > 1 and all(left.get(i, 0) > 0 for i in unit):
                vectors.append(u)
                for i in unit:
                    left[i] -= 1
        rest: list[Value | float] = []
        for t in terms:
            j = None if isinstance(t, int | float) else index[id(t)]
            if j is None or left[j] > 0:
                rest.append(t)
                if j is not None:
                    left[j] -= 1
        return vectors, rest

    def _unpacked(self) -> set[int]:
        """The vectors whose nodes a line of Python reads (or the batch: they go into PV
        as floats): unpacked into a variable per node."""
        vector_of = {i: u for u, unit in enumerate(self.units) if len(unit) > 1 for i in unit}
        read: set[int] = {vector_of[i] for i in self.boundary if i in vector_of}
        index = self.program.index
        for unit in self.units:
            if len(unit) == 1:
                args = self._reads(unit[0])
                parents = [index[id(a)] for a in args if not isinstance(a, int | float)]
                read.update(vector_of[j] for j in parents if j in vector_of)
        for operands in self.operands.values():
            for kind, what in operands:
                if kind == "gather":
                    read.update(vector_of[j] for j in what if j in vector_of)
        return read

    # --- the source -------------------------------------------------------------------------

    def _arguments(self, node: Value) -> tuple[Row, list[str], list[int | None]]:
        """The op to call, its arguments as source, and the node index of each (None for a
        number the op fixes)."""
        op, args = self.program._call(node)
        texts: list[str] = []
        parents: list[int | None] = []
        for a in args:
            j = None if isinstance(a, int | float) else self.program.index[id(a)]
            texts.append(literal(a) if isinstance(a, int | float) else f"v{j}")
            parents.append(j)
        return op, texts, parents

    def _generate(self, checked: bool) -> tuple[str, dict[int, int]]:
        """The source of the generator, and the node each line computes (a vector's
        lines: its first node)."""
        nodes, program = self.compiled.nodes, self.program
        count = len(program.parameters)
        code = ["def replay(PV):", f"    pv = PV[:{count}, 0].tolist()"]
        lines: dict[int, int] = {}

        def emit(text: str, node: int | None = None) -> None:
            code.append("    " + text)
            if node is not None:
                lines[len(code)] = node

        leaves: dict[int, None] = {}  # the leaves lines of Python read, in order
        for unit in self.units:
            if len(unit) == 1:
                args = self._reads(unit[0])
                leaves.update(
                    (program.index[id(a)], None) for a in args if not isinstance(a, int | float)
                )
        for j in leaves:
            node = nodes[j]
            if node._opdef is None:
                row = program.parameter_row.get(id(node))
                emit(f"v{j} = pv[{row}]" if row is not None else f"v{j} = {literal(node._data)}")
        for u, unit in enumerate(self.units):
            if len(unit) > 1:
                self._vector_forward(u, checked, emit)
                continue
            i = unit[0]
            if i in self.sums:
                for line in self._sum_lines(i):
                    emit(line, i)
            else:
                op, args, _ = self._arguments(nodes[i])
                expression = rules.forward_source(op, args)
                if expression is None:
                    expression = f"{self._name(op.forward, op.name)}({', '.join(args)})"
                emit(f"v{i} = {expression}", i)
            if checked:
                # (isfinite of a complex raises: the error names node i too)
                emit(f"if not isfinite(v{i}): forward_anomaly({i}, v{i})", i)
        if self.boundary:
            values = "".join(f"v{i}, " for i in self.boundary)
            # (reals(): numpy would store a None as nan, a complex without its imaginary part)
            emit(f"PV[{count}:{count + len(self.boundary)}, 0] = reals(({values}))")
        emit("total = yield")
        emit("while True:")
        if self.boundary:
            emit(f"    t = total[{count}:].tolist()")
        grads = self._backward_lines(checked, emit)
        emit(f"    total = yield [{''.join(f'{g}, ' for g in grads)}]")
        return "\n".join(code) + "\n", lines

    def _sum_lines(self, i: int) -> list[str]:
        """A sum of many terms: numpy's sum of each vector of terms, then the other terms
        (an order other than the graph's: the same to rounding), MAX_TERMS to a line (a
        chain of 10,000 `+` is too deep for Python's compiler)."""
        vectors, rest = self.sums[i]
        index = self.program.index
        parts = [f"h{u}.sum()" for u in vectors]
        if parts:
            parts = [f"float({' + '.join(parts)})"]
        parts += [literal(t) if isinstance(t, int | float) else f"v{index[id(t)]}" for t in rest]
        lines = [f"v{i} = {' + '.join(parts[:MAX_TERMS])}"]
        for k in range(MAX_TERMS, len(parts), MAX_TERMS):
            lines.append(f"v{i} = v{i} + {' + '.join(parts[k : k + MAX_TERMS])}")
        return lines

    def _names_of(self, u: int) -> list[str]:
        """A vector's operands as the forward names them (numbers as literals)."""
        names = []
        for j, (kind, what) in enumerate(self.operands[u]):
            if kind == "C":
                same = all(v == what[0] and repr(v) == repr(what[0]) for v in what)
                if not same:
                    self.namespace[f"K{u}_{j}"] = np.array(what, dtype=np.float64)
                names.append(literal(what[0]) if same else f"K{u}_{j}")
            else:
                names.append(f"h{what}" if kind == "H" else f"a{u}_{j}")
        return names

    def _vector_forward(self, u: int, checked: bool, emit: Callable) -> None:
        unit = self.units[u]
        op = self.program._call(self.compiled.nodes[unit[0]])[0]
        names = self._names_of(u)
        emit(f"# {len(unit)} x {op.name}, one numpy call")
        for j, (kind, what) in enumerate(self.operands[u]):
            if kind == "P":
                emit(f"a{u}_{j} = PV[{self._rows(f'I{u}_{j}', what)}, 0]", unit[0])
            elif kind == "gather":
                emit(f"a{u}_{j} = np.array([{', '.join(f'v{p}' for p in what)}])", unit[0])
        ufunc = rules.forward_ufunc(op)
        if ufunc is not None:
            emit(f"h{u} = np.{ufunc}({', '.join(names)})", unit[0])
        else:
            self.namespace[f"F{u}"] = self.program._array_function(op, "array_forward", 0)
            emit(f"h{u} = F{u}({', '.join(names)})", unit[0])
        if checked:
            emit(f"if not np.isfinite(h{u}).all(): vector_anomaly({u}, h{u})")
        if u in self.unpacked:
            emit(f"{''.join(f'v{i}, ' for i in unit)}= h{u}.tolist()")

    def _rows(self, name: str, rows: np.ndarray) -> str:
        """Rows of PV (or of the totals) as an index: a slice, or a named array."""
        return index_source(rows, name, self.namespace)

    def _backward_lines(self, checked: bool, emit: Callable) -> list[str]:
        """The chain rule through the hoisted nodes, from the totals of those the batch reads;
        returns the variables of the parameters' gradients that lines of Python compute
        (rows `grad_rows` of PV; a vector adds its parameters' into `total` itself)."""
        nodes, program = self.compiled.nodes, self.program
        parameters = program.parameter_ids
        needed: set[int] = set()  # the nodes a parameter's gradient goes through
        for i in self.hoisted:
            if any(id(p) in parameters or program.index[id(p)] in needed for p in nodes[i]._prev):
                needed.add(i)
        grad: set[int] = set()  # the nodes and parameters whose gradient is a float, g{i}
        vector_grad: set[int] = set()  # the vectors whose gradient is an array, gh{u}
        for k, i in enumerate(self.boundary):
            if i in needed and id(nodes[i]) in program.reaches_root:
                emit(f"    g{i} = t[{k}]")
                grad.add(i)
        for u in range(len(self.units) - 1, -1, -1):
            unit = self.units[u]
            if len(unit) > 1:
                self._vector_backward(u, needed, grad, vector_grad, checked, emit)
                continue
            i = unit[0]
            if i not in grad:
                continue
            if i in self.sums:
                self._sum_backward(i, needed, grad, vector_grad, emit)
                continue
            op, args, parents = self._arguments(nodes[i])
            if op.partials is not None:  # inline: the rule's terms written out
                partials = rules.partial_sources(op.partials, f"v{i}", args, ieee=True)
                terms = [
                    rules.term_source(op.partials, k, f"v{i}", args, f"g{i}", ieee=True)
                    for k in range(len(args))
                ]
            else:
                d = self._name(op.derivative, f"d_{op.name}")
                partials = [f"d{k}" for k in range(len(args))]
                emit(f"    {', '.join(partials)}, = {d}(v{i}, {', '.join(args)})", i)
                terms = [f"{partial} * g{i}" for partial in partials]
            for k, j in enumerate(parents):
                if j is None or (j not in needed and id(nodes[j]) not in parameters):
                    continue  # a number, a constant, or a node no parameter is under
                emit(f"    g{j} {'+=' if j in grad else '='} {terms[k]}", i)
                grad.add(j)
                if checked:
                    check = f"backward_anomaly({i}, {partials[k]}, g{j})"
                    emit(f"    if not isfinite(g{j}): {check}")
        reached = [p for p in program.parameters if program.index[id(p)] in grad]
        self.grad_rows = np.array([program.parameter_row[id(p)] for p in reached], dtype=np.intp)
        return [f"g{program.index[id(p)]}" for p in reached]

    def _sum_backward(
        self, i: int, needed: set[int], grad: set[int], vector_grad: set[int], emit: Callable
    ) -> None:
        """A sum's gradient is each term's: a vector's, broadcast to its nodes."""
        vectors, rest = self.sums[i]
        for u in vectors:
            if needed.intersection(self.units[u]):
                size = len(self.units[u])
                emit(
                    f"    gh{u} = gh{u} + g{i}"
                    if u in vector_grad
                    else f"    gh{u} = np.full({size}, g{i})",
                    i,
                )
                vector_grad.add(u)
        parameters = self.program.parameter_ids
        for t in rest:
            if isinstance(t, int | float):
                continue
            j = self.program.index[id(t)]
            if j in needed or id(t) in parameters:
                emit(f"    g{j} {'+=' if j in grad else '='} g{i}", i)
                grad.add(j)

    def _vector_backward(
        self,
        u: int,
        needed: set[int],
        grad: set[int],
        vector_grad: set[int],
        checked: bool,
        emit: Callable,
    ) -> None:
        """A vector's backward: its nodes' gradients as an array `gv` (from lines of Python,
        and from vectors that read it whole), and each operand's contribution: added into
        `total` for parameters, into a vector's gradient, or into floats."""
        unit = self.units[u]
        parts = [f"gh{u}"] if u in vector_grad else []
        if any(i in grad for i in unit):
            parts.append(f"np.array([{', '.join(f'g{i}' if i in grad else '0.0' for i in unit)}])")
        if not parts:
            return  # no gradient reaches it
        first = unit[0]
        op = self.program._call(self.compiled.nodes[first])[0]
        names = self._names_of(u)
        emit(f"    gv = {' + '.join(parts)}  # {len(unit)} x {op.name}", first)
        if op.partials is not None:
            terms = [
                rules.term_source(op.partials, j, f"h{u}", names, "gv", ieee=False)
                for j in range(len(names))
            ]
        else:
            self.namespace[f"D{u}"] = self.program._array_function(op, "array_derivative", 0)
            partials = [f"d{j}" for j in range(len(names))]
            emit(f"    {', '.join(partials)}, = D{u}(h{u}, {', '.join(names)})", first)
            terms = [f"{d} * gv" for d in partials]
        for j, (kind, what) in enumerate(self.operands[u]):
            if kind == "C" or (kind == "H" and not needed.intersection(self.units[what])):
                continue
            emit(f"    c = {terms[j]}", first)
            if checked:
                emit(f"    if not np.isfinite(c).all(): vector_anomaly({u}, c, {j})")
            if kind == "P":
                index = self._rows(f"I{u}_{j}", what)
                repeated = len(np.unique(what)) < len(what)
                emit(
                    f"    np.add.at(total, {index}, c)" if repeated else f"    total[{index}] += c"
                )
            elif kind == "H":
                sign = f"gh{what} + " if what in vector_grad else ""
                emit(f"    gh{what} = {sign}c", first)
                vector_grad.add(what)
            else:
                emit("    c = c.tolist()", first)
                for k, p in enumerate(what):
                    if p in needed:
                        emit(f"    g{p} {'+=' if p in grad else '='} c[{k}]", first)
                        grad.add(p)

    def _build(self, source: str) -> Callable:
        return self._exec(
            source,
            isfinite=math.isfinite,
            reals=_reals,
            forward_anomaly=self._line_forward_anomaly,
            backward_anomaly=self._line_backward_anomaly,
            vector_anomaly=self._vector_anomaly,
        )

    # --- running, and errors that name the node -------------------------------------------

    def forward(self, PV: np.ndarray, checked: bool) -> tuple[Any, dict[int, int]]:  # noqa: N803
        """Compute the hoisted nodes into PV; the generator waiting for backward, and the
        lines of its source."""
        replay, lines = self._function(checked)
        running = replay(PV)
        try:
            with np.errstate(all="ignore"):
                next(running)
        except AnomalyError:
            raise
        except Exception as exc:
            error = self._error(exc, lines, "forward")
            if error is exc and not checked:  # (a complex number fails where PV takes it)
                try:
                    with np.errstate(all="ignore"):
                        error = self._checked_error(PV) or error
                except AnomalyError:
                    pass  # (an inf before it, fine unchecked: the first error stands)
            raise error from exc
        return running, lines

    def backward(self, running: Any, lines: dict[int, int], total: np.ndarray) -> None:
        """Add the hoisted nodes' part of the parameters' gradients into `total` (the batch's
        sums, in PV's order: the parameters', then the hoisted nodes')."""
        try:
            with np.errstate(all="ignore"):
                grads = running.send(total)  # (which adds vectors' parameters into total)
                total[self.grad_rows] += grads
        except AnomalyError:
            raise
        except Exception as exc:
            raise self._error(exc, lines, "backward") from exc

    def _derived(self) -> list[Value]:
        return [self.compiled.nodes[i] for i in self.hoisted]

    def _error(self, exc: Exception, lines: dict[int, int], where: str) -> Exception:
        """As Generated's. A vector's lines name its first node, so a vector's forward that
        raised is first traced to the node whose op, called on its own numbers, raises."""
        found = self._failing_frame(exc) if where == "forward" else None
        node = lines.get(found[1]) if found is not None else None
        u = self.vector_of.get(node) if node is not None else None
        if found is None or u is None:
            return super()._error(exc, lines, where)
        error = self._element_error(u, found[0].f_locals)
        if error is not None:
            return error
        first = self.compiled.nodes[self.units[u][0]]  # (only the array kernel raised)
        return op_error(
            first._opdef,
            f"failed in {self.words} forward of {self.compiled.name}{self.note}",
            node=f"{node_name(first)} and {len(self.units[u]) - 1} other node(s) of one numpy call",
            detail=f"{type(exc).__name__}: {exc}",
        )

    def _element_error(self, u: int, local: dict[str, Any]) -> Exception | None:
        """The error of vector u's first node whose op's scalar forward raises on the
        numbers the vector was given (read from the failed replay's locals), or None."""
        columns = []
        try:
            for kind, what in self.operands[u]:
                if kind == "C":
                    columns.append(list(what))
                elif kind == "P":
                    columns.append(local["PV"][what, 0].tolist())
                elif kind == "H":
                    columns.append(local[f"h{what}"].tolist())
                else:
                    columns.append([local[f"v{p}"] for p in what])
        except (KeyError, AttributeError):  # (a line before the op's call failed)
            return None
        nodes = self.compiled.nodes
        for k, i in enumerate(self.units[u]):
            op, call = self.program._call(nodes[i])
            numbers = [column[k] for column in columns]
            try:
                op.forward(*numbers)
            except Exception as why:
                return op_error(
                    nodes[i]._opdef,
                    f"failed in {self.words} forward of {self.compiled.name}{self.note}",
                    node=nodes[i],
                    inputs=[
                        _Now(x, getattr(a, "label", "")) for x, a in zip(numbers, call, strict=True)
                    ],
                    detail=f"{type(why).__name__}: {why}",
                )
        return None

    def _vector_anomaly(self, u: int, array: np.ndarray, position: int | None = None) -> None:
        """A vector's forward (position None) or its contribution to an operand gave inf or
        nan: named by the node of the first such element."""
        k = int(np.argwhere(~np.isfinite(array))[0][0])
        if position is None:
            self._line_forward_anomaly(self.units[u][k], float(array[k]))
        node = self.compiled.nodes[self.units[u][k]]
        raise op_error(
            node._opdef,
            f"gave a non-finite gradient in batched backward of {self.compiled.name} "
            f"(computed once per batch)",
            node=node,
            detail=f"{array[k]} for input {position}, its gradient summed over the batch",
            error=AnomalyError,
        )


class _Now(NamedTuple):
    """An input of a node as an error shows it: its number now, and its label."""

    data: float
    label: str


def _reals(values: tuple) -> tuple:
    """`values`, the hoisted numbers the batch reads, if each is a real number; else a
    TypeError (which the checking lines then trace to the node that made it)."""
    if not set(map(type, values)) <= {float} and not all(isinstance(v, Real) for v in values):
        raise TypeError(f"a number computed once per batch is not real: {values!r}"[:200])
    return values
