"""Batched replay: one recorded per-sample graph, run over a whole batch with numpy.

`Compiled.map(*batches)` replays the graph `compile` recorded for one sample on n samples at
once. Every node of the graph becomes a row of n numbers (one per sample) in one 2-D array
`V`; parameters and constants, the same for every sample, are a column of their own.

Nodes are not run one by one: nodes of the same op that do not depend on each other, those at
the same depth of the graph, form a group that is one numpy operation on a (group x batch)
block of rows. The 16 neurons of a layer each multiply a weight by an input, then add up the
products: one `multiply` for all 16 x 16 products, then one `add` per position of the sums.
Operands are views of `V` wherever the rows they read are evenly spaced (a slice, a stride, a
row repeated), and gathers by index elsewhere. The generated code is straight-line Python,
one numpy call per group and operand, in a generator that keeps the forward operands alive
for the backward pass, as the scalar replay does.

A layer's neurons are sums of products: `b + w0 * x0 + w1 * x1 + ...`, a chain of adds over
muls. Found in the recorded graph alone (whatever the association order of the adds, a
parameter on either side of each product), the sums of at least two products of a parameter
and a row that read the same rows form a group computed as one matrix product, `W @ X`, and
their other terms (the bias) added after it; backward is `W.T @ g` for the rows and `g @ X.T`
(per block of samples) for the weights. A sum of products of two parameters (an L2
penalty in each sample's loss) is the same for every sample: one dot product per batch,
`pa.T @ pb`, written into every sample's column. Only adds and muls nothing else reads are
taken into a sum; everything else runs as above. The terms are added in another order than the
graph's chain, so results differ from eager mode by rounding (within 1e-12 relative of the
largest term's scale, see docs/performance.md).

Any other node that depends on no input (only on parameters and constants: an L1 penalty
`sum(p.relu() for p in params)`, a weight computed from a parameter) is the same for every
sample as well: it is not a row of V but computed once per batch, before the numpy code, by
straight-line Python on floats (`Hoisted`, in hoisted.py). The values the numpy code reads
are rows of the parameter column below the parameters, read as parameters; backward takes
the batch's total of their gradients through the hoisted nodes to the parameters, once.

Each op computes with its plugin's array kernels (`Op.array_forward`, `Op.array_derivative`);
a forward that is an operator (`operator.add`, `operator.mul`) with numpy's ufunc of the same
IEEE-754 arithmetic (`add`, `multiply`), and a row's inline partials written out (rules.py).
An op without kernels still works: its scalar functions are applied element by element, with
a warning. Floating-point errors give inf and nan as in eager mode, silently (`np.errstate`).
The backward pass is seeded with each sample's weight; the parameters' gradients are summed
over the batch, in blocks of SUM_BLOCK samples added up in order.

At 100 samples a numpy call costs about a microsecond whatever its size, so the generated
code makes few: each constant slice of V, G and PV is a view made once for a batch's arrays
(`views`), relu's kernels (the engine's own, opgraph/kernels.py) are written inline (against
rows of zeros kept below V's nodes),
and the first contribution to a row of G or PG is assigned, not added to zeros.

A large batch runs in chunks of `Compiled.chunk_size` samples, so that `V` and its gradients
take a bounded amount of memory; backward then runs each chunk's forward pass again (only a
batch of one chunk keeps its forward operands). Chunks are whole blocks, so the results are
the same to the bit however the batch is cut.

This module imports numpy: only `Compiled.map` imports it, so the scalar engine never does.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from numbers import Real
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from . import kernels, rules
from .codegen import SUM_BLOCK, BatchWarning, Generated, Input, fill, literal, reachable
from .errors import (
    AnomalyError,
    CompileError,
    NotRealError,
    PartialsCountError,
    node_name,
    op_error,
    op_message,
    wrong_partials,
)
from .hoisted import Hoisted, index_source, node_uses, progression, slice_source
from .ops import Row
from .stored import store_rows

if TYPE_CHECKING:
    from .compiler import Compiled
    from .value import Value

_DATA = attrgetter("_data")  # a Value's number, read from its slot


# ---------------------------------------------------------------------------------------------
# The batch of inputs


def batch_inputs(compiled: Compiled, args: Sequence[Any]) -> list[np.ndarray]:
    """The input numbers of n samples: for each batched argument, an (n, its inputs per
    sample) float64 array (which may be the caller's array itself, or a view of it).

    Each argument holds n samples of the example argument's structure: a list or tuple of n
    samples, or a numpy array whose first axis is the batch. Fixed arguments (a model) are
    passed as themselves, once.
    """
    _, items = compiled._shape
    name = compiled.name
    if len(args) != len(items):
        raise CompileError(
            f"{name}.map(): compiled with {len(items)} argument(s), got {len(args)}; pass each "
            f"argument as a batch of samples"
        )
    layout = compiled._batch_layout  # each argument's (_count, _dims), found once
    if layout is None:
        layout = compiled._batch_layout = [(_count(shape), _dims(shape)) for shape in items]
    blocks, n = [], None
    for j, (shape, arg) in enumerate(zip(items, args, strict=True)):
        count, dims = layout[j]
        if count == 0:  # a fixed argument: the very object, not a batch
            fill(shape, arg, [], f"{name}.map() argument {j}")
            continue
        array = type(arg) is np.ndarray and arg.ndim and arg.dtype == np.float64
        if array and arg.shape[1:] == dims:  # the fast path: already the right array
            block = arg.reshape(len(arg), count)
        else:
            block = _samples(shape, arg, f"{name}.map() argument {j}", count, dims)
        if n is not None and len(block) != n:
            raise CompileError(
                f"{name}.map() argument {j}: {len(block)} samples, but the arguments before "
                f"it have {n}; every batched argument needs the same number of samples"
            )
        n = len(block)
        blocks.append(block)
    if n is None:
        raise CompileError(
            f"{name}.map(): no argument holds samples: the function has no inputs (numbers "
            f"in its arguments), so there is nothing to batch; call it instead"
        )
    return blocks


def _count(shape: Any) -> int:
    """How many input numbers one sample of this structure holds."""
    if shape is Input:
        return 1
    if _is_structure(shape):
        return sum(_count(item) for item in shape[1])
    return 0


def _is_structure(shape: Any) -> bool:
    return isinstance(shape, tuple) and len(shape) == 2 and shape[0] in (list, tuple)


def _dims(shape: Any) -> tuple[int, ...] | None:
    """The array shape of one sample (() for a number), or None if it is not rectangular."""
    if shape is Input:
        return ()
    if not _is_structure(shape):
        return None
    inner = [_dims(item) for item in shape[1]]
    first = inner[0] if inner else None
    if first is None or any(d != first for d in inner):
        return None
    return (len(inner), *first)


def _samples(shape: Any, batch: Any, where: str, count: int, dims: Any) -> np.ndarray:
    """One argument's batch as an (n, inputs per sample) float array, checked (count and
    dims: `_count(shape)` and `_dims(shape)`)."""
    if not isinstance(batch, list | tuple | np.ndarray):
        raise CompileError(
            f"{where}: expected a batch of samples (a list, tuple or numpy array whose first "
            f"axis is the batch), got {type(batch).__name__}: {batch!r}"
        )
    if isinstance(batch, list | tuple) and not batch:  # no samples, whatever their shape
        return np.empty((0, count))
    if dims is not None:  # the fast path: a numeric array of the right shape
        try:
            array = np.asarray(batch)
        except (ValueError, TypeError):  # ragged, or objects numpy cannot take
            array = None
        if array is not None and array.dtype.kind in "fiu" and array.ndim >= 1:
            if array.shape[1:] != dims:
                expected = "(n" + "".join(f", {d}" for d in dims) + ")"
                raise CompileError(
                    f"{where}: expected an array of shape {expected}, n samples of the example "
                    f"argument's shape, got shape {array.shape}"
                )
            return array.reshape(len(array), count).astype(np.float64, copy=False)
    if isinstance(batch, np.ndarray) and batch.ndim == 0:
        raise CompileError(f"{where}: expected a batch of samples, got a 0-d array")
    rows = []
    for i, sample in enumerate(batch):  # anything else: sample by sample, as a call checks it
        numbers: list[float] = []
        fill(
            shape,
            sample.tolist() if isinstance(sample, np.ndarray) else sample,
            numbers,
            f"{where}, sample {i}",
        )
        rows.append(numbers)
    return np.array(rows, dtype=np.float64).reshape(len(rows), count)


# ---------------------------------------------------------------------------------------------
# Summing over the batch

# A parameter's gradient is summed over the samples in blocks of SUM_BLOCK (numpy's pairwise
# sum within a block), and the blocks' sums are added up in order. Chunks are whole numbers
# of blocks, so a batch gives the same bits however it is cut into chunks.


def _blocks_of(m: int) -> int:
    """How many blocks m samples make (the last one may be partial)."""
    return -(-m // SUM_BLOCK)


def block_sums(c: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The sums of each row of the (rows, m) array c over each block of samples: an array
    of shape (rows, blocks), written into `out` if given."""
    rows, m = c.shape
    if m <= SUM_BLOCK:
        return c.sum(axis=1, keepdims=True, out=out)
    full = m - m % SUM_BLOCK
    blocks = full // SUM_BLOCK
    if out is None:
        out = np.empty((rows, _blocks_of(m)))
    c[:, :full].reshape(rows, blocks, SUM_BLOCK).sum(axis=2, out=out[:, :blocks])
    if full < m:
        c[:, full:].sum(axis=1, out=out[:, blocks])
    return out


def block_products(g: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The gradients of W in `W @ x` for the gradient g of its rows: for each block of
    samples, the sum over the block of g times x (`g @ x.T`), flattened row by row. An array
    of shape (rows of g times rows of x, blocks), as block_sums gives for one weight per row."""
    m, n = g.shape
    k = x.shape[0]
    if out is None:
        out = np.empty((m * k, _blocks_of(n)))
    if n <= SUM_BLOCK:
        if out.flags.c_contiguous:  # one block: PG's rows, (m * k, 1), are W's gradient
            np.matmul(g, x.T, out=out.reshape(m, k))
        else:
            out[:, 0] = (g @ x.T).ravel()
        return out
    full = n - n % SUM_BLOCK
    b = full // SUM_BLOCK
    gb = g[:, :full].reshape(m, b, SUM_BLOCK).transpose(1, 0, 2)  # (blocks, m, SUM_BLOCK)
    xb = x[:, :full].reshape(k, b, SUM_BLOCK).transpose(1, 2, 0)  # (blocks, SUM_BLOCK, k)
    out[:, :b] = (gb @ xb).reshape(b, m * k).T
    if full < n:
        out[:, b] = (g[:, full:] @ x[:, full:].T).ravel()
    return out


def _running_total(start: np.ndarray | float, PG: np.ndarray) -> np.ndarray:
    """`start` plus each row's blocks, added one after the other in order: a batch's
    parameter gradients from 0.0, or a chunk's added to the chunks' before it. A column at
    a time: numpy's cumsum along rows of 79 blocks (10,000 samples) takes twice as long."""
    total = start + PG[:, 0]
    for b in range(1, PG.shape[1]):
        total += PG[:, b]
    return total


class _Batch:
    """The last map(), for backward(): its program and parameters, and the replay waiting
    for backward when the batch was one chunk, or else (running None) a copy of its inputs
    to run the chunks again; and the hoisted nodes' generator and lines (`Hoisted`), or
    None."""

    def __init__(self, replay, lines, inputs, PV, chunk: int, running: Any, hoisted: Any):  # noqa: N803
        self.replay, self.lines, self.inputs, self.PV = replay, lines, inputs, PV
        self.chunk, self.running, self.hoisted = chunk, running, hoisted


class _SumsIntoPG:
    """The backward statements that add into PG (the parameters' gradients, summed per
    block of samples), made in the order backward runs them.

    The first sum into a slice of rows nothing has written yet is assigned, computed
    straight into them (`block_sums(c, out=PG[a:b])`), instead of added to zeros; PG is
    zeroed only if some rows are not assigned so. 0.0 + x is x but for x = -0.0, a zero
    whose sign the running sum from 0.0 in backward() loses anyway: the same bits. After a
    sum into rows not known here (a strided slice), every later sum is added."""

    def __init__(self) -> None:
        self.touched: set[int] = set()  # rows written so far
        self.assigned: set[int] = set()  # rows whose first write was an assignment
        self.unknown = False  # a write to rows not known: no more assignments

    def add(self, index: str, rows: Any, call: str | None, args: str, at: bool = False) -> str:
        """The statement adding `call(args)` (`args` itself if call is None) into the rows
        `index` of PG: a slice (`0:16`), a row (`5`) or an index array's name; `rows` are
        their numbers. `at`: some rows repeat, each of their sums is added (np.add.at)."""
        expression = f"{call}({args})" if call else args
        if at:
            self.touched.update(rows)
            return f"np.add.at(PG, {index}, {expression})"
        bounds = re.fullmatch(r"(\d+):(\d+)", index)
        if self.unknown or (":" in index and bounds is None):  # a strided slice
            self.unknown = True
            return f"PG[{index}] += {expression}"
        written = set(range(int(bounds[1]), int(bounds[2]))) if bounds else set(rows)
        first = bounds is not None and not written & self.touched
        self.touched |= written
        if not first:
            return f"PG[{index}] += {expression}"
        self.assigned |= written
        return f"{call}({args}, out=PG[{index}])" if call else f"PG[{index}] = {args}"


# ---------------------------------------------------------------------------------------------
# Operands: where a group's argument reads its rows from


class _Operand:
    """One argument position of a group: how the forward reads it, how backward scatters."""

    def __init__(self, kind: str, read: str, scatter: Callable[[str], list[str]] | None = None):
        self.kind = kind  # "V": rows of V (per sample); "P": parameters; "C": constants
        self.read = read  # a Python expression
        self.scatter = scatter  # contribution expression -> statements adding it, or None
        self.rows: np.ndarray | None = None  # the rows of V it reads (kind V)


def _blocks(rows: np.ndarray) -> tuple[str, int, int, str] | None:
    """A repeated block of evenly spaced rows: rows == tile(block, a) or repeat(block, a).

    The inputs of a layer's neurons: each neuron reads the same rows. Returns
    (how, copies, block length, slice of the block), or None.
    """
    k = len(rows)
    for copies in range(2, k + 1):
        if k % copies:
            continue
        b = k // copies
        tiled = rows[:b]
        if np.array_equal(rows, np.tile(tiled, copies)):
            found = progression(tiled)
            if found:
                return "tile", copies, b, slice_source(*found, b)
        repeated = rows[::copies]
        if np.array_equal(rows, np.repeat(repeated, copies)):
            found = progression(repeated)
            if found:
                return "repeat", copies, b, slice_source(*found, b)
    return None


# ---------------------------------------------------------------------------------------------
# The program


class _Group:
    """Nodes of one op at one depth, computed by one array operation."""

    def __init__(self, op: Row, depth: int, backward: bool):
        self.op = op  # the op called: the full op for `x ** 2` (its constant is an argument)
        self.depth = depth
        self.backward = backward  # do the nodes lead to the first output?
        self.nodes: list[int] = []  # indices into compiled.nodes
        self.start = 0  # first row in V


class _Linear(_Group):
    """Neurons that are sums of products over the same inputs, computed by one matrix
    product: row i of the group is `sum_j W[i, j] * X[j] + extras[i]`, where X are the rows
    every neuron of the group reads (in creation order), W the parameters that multiply
    them, and the extras the other terms of each sum (a bias), added after the product."""

    def __init__(self, op: Row, depth: int, backward: bool, xs: list[Value]):
        super().__init__(op, depth, backward)
        self.xs = xs  # the inputs of the product, shared by every neuron of the group
        self.weights: list[list[Value]] = []  # per neuron, the weight of each of xs
        self.extras: list[list[Value | float]] = []  # per neuron, its other terms
        self.w_rows = np.empty(0, dtype=np.intp)  # the rows of PV of W, row by row


class _Sum:
    """A node found to be a sum of products: its products' (weight, input) pairs, sorted by
    the input's creation, and its other terms; the adds and muls it replaces."""

    def __init__(self, products: list[tuple[Value, Value]], extras: list, absorbed: list):
        products.sort(key=lambda wx: wx[1]._id)
        self.weights = [w for w, _ in products]
        self.xs = [x for _, x in products]
        self.extras = extras
        self.absorbed = absorbed


class _ParameterSum:
    """A node found to be a sum of products of two parameters (an L2 penalty, a dot product
    of weight vectors): the products' (a, b) pairs in the sum's order, its other terms, and
    the adds and muls it replaces."""

    def __init__(self, pairs: list[tuple[Value, Value]], extras: list, absorbed: list):
        self.pairs = pairs
        self.extras = extras
        self.absorbed = absorbed


class _Dot(_Group):
    """One sum of products of parameters, `sum_j a[j] * b[j] + extras`: the same for every
    sample, computed once per batch as one dot product of two columns of PV, and its
    parameters' gradients from the batch's total of its own (per block of samples)."""

    def __init__(self, op: Row, depth: int, backward: bool, found: _ParameterSum):
        super().__init__(op, depth, backward)
        self.a = [a for a, _ in found.pairs]
        self.b = [b for _, b in found.pairs]
        self.extras = [found.extras]  # (as _Linear's: per node, one node here)
        self.square = all(a is b for a, b in found.pairs)  # a sum of squares: b is a

    def sort(self, parameter_row: dict[int, int]) -> None:
        """Put the products in the order of their parameters' rows in PV (a sum in any
        order is the same to rounding), so that a sum over all the parameters, or a slice
        of them, reads and writes slices of PV and PG rather than gathers and scatters."""
        pairs = sorted(
            zip(self.a, self.b, strict=True),
            key=lambda ab: (parameter_row[id(ab[0])], parameter_row[id(ab[1])]),
        )
        self.a, self.b = [a for a, _ in pairs], [b for _, b in pairs]


class BatchedProgram(Generated):
    """The generated batched replay of one Compiled function."""

    def __init__(self, compiled: Compiled):
        self.compiled = compiled
        self.namespace: dict[str, Any] = {
            "np": np,
            "add": np.add,
            "subtract": np.subtract,
            "multiply": np.multiply,
        }
        self.warned: set[str] = set()
        self.index = compiled.index
        self._leaves()
        self.reaches_root = {id(v) for v in reachable(compiled.outputs[:1])}
        self._group()
        self._filenames: set[str] = set()
        self._view_makers: dict[bool, Callable] = {}  # arrays -> a replay's named views
        self._view_cache: dict[int, tuple] = {}  # the arrays of the last replays, and views
        self.source, self.lines = self._generate(checked=False)
        self.replay = self._build(self.source)
        self._checked: tuple[Callable, dict[int, int]] | None = None
        self._last: _Batch | None = None  # the last map(), for backward()
        self._V, self._G = np.empty((self.rows + self.zero_rows, 0)), np.empty((self.rows, 0))
        self.n = 0  # samples of the last batch

    @property
    def full_source(self) -> str:
        """The batched replay's source, then the hoisted nodes' (`Hoisted`), if any."""
        return self.source if self.hoisted is None else f"{self.source}\n{self.hoisted.source}"

    # --- layout ---------------------------------------------------------------------------

    def _leaves(self) -> None:
        """Inputs are the first rows of V; parameters and constants are columns of their own."""
        compiled = self.compiled
        self.input_row = {id(v): k for k, v in enumerate(compiled.inputs)}
        parameter_ids = {id(p) for p in compiled.parameters}
        self.constant_of: dict[int, float] = {}  # id -> value, constants made while recording
        for node in compiled.nodes:
            if node._opdef is None and id(node) not in self.input_row:
                if id(node) not in parameter_ids:
                    self.constant_of[id(node)] = node.data
        self.parameter_ids = parameter_ids

    def _call(self, node: Value) -> tuple[Row, list[Value | float]]:
        """The op to call on a node, and its arguments (parents, or the op's constants)."""
        op = node._opdef
        assert op is not None, "a compiled function's ops are its non-leaf nodes"
        if op.base is None:
            return op, list(node._prev)
        fixed = dict(op.constants)
        parents = iter(node._prev)
        return op.base, [fixed[i] if i in fixed else next(parents) for i in range(op.base.arity)]

    def _kind(self, arg: Value | float) -> str:
        """C: a constant (the same for every sample and never differentiated); P: a
        parameter, or a node computed once per batch (`Hoisted`), the same for every
        sample, its gradient summed over the batch; V: a row of V (an input or an op node,
        one number per sample)."""
        if isinstance(arg, float) or id(arg) in self.constant_of:
            return "C"
        return "P" if id(arg) in self.parameter_ids or id(arg) in self.hoisted_ids else "V"

    def _independent(self) -> set[int]:
        """The ids of the op nodes that depend on no input: on parameters and constants only,
        the same for every sample."""
        found: set[int] = set()
        for node in self.compiled.nodes:
            if node._opdef is not None and all(
                id(p) in found or (p._opdef is None and id(p) not in self.input_row)
                for p in node._prev
            ):
                found.add(id(node))
        return found

    # --- sums of products ------------------------------------------------------------------

    def _is(self, node: Value | float, ufunc: str) -> bool:
        """Is `node` an op node of add (ufunc "add") or mul ("multiply") with the usual
        partials, so that its chain rule is the one a matrix product's backward applies?"""
        if isinstance(node, int | float) or node._opdef is None:
            return False
        op = self._call(node)[0]
        rule = op.partials
        if rules.forward_ufunc(op) != ufunc or rule is None or len(rule.params) != 2:
            return False
        if ufunc == "add":
            return rule.is_one(0) and rule.is_one(1)
        return rule.texts == (rule.params[1], rule.params[0])  # d(a*b)/da = b, d/db = a

    def _sums(self) -> dict[int, _Sum | _ParameterSum]:
        """The nodes that are sums of at least two products of a parameter and a row
        (`_Sum`), or else of two parameters (`_ParameterSum`), by id: found from the graph
        alone, in whatever order its adds associate.

        A sum is a tree of adds; its leaves are its terms. An add or a product is taken into
        the sum only when nothing else reads it (one use, not an output), so that its value
        is never needed on its own.
        """
        nodes = self.compiled.nodes
        uses, user = node_uses(nodes)
        outputs = {id(v) for v in self.compiled.outputs}

        def inner(v: Value | float) -> bool:
            return not isinstance(v, int | float) and uses.get(id(v)) == 1 and id(v) not in outputs

        sums: dict[int, _Sum | _ParameterSum] = {}
        for node in nodes:
            if not self._is(node, "add") or (inner(node) and self._is(user[id(node)], "add")):
                continue  # not the top add of a sum
            adds, terms = [], []
            stack: list[Value | float] = list(reversed(self._call(node)[1]))
            while stack:
                term = stack.pop()
                if not isinstance(term, int | float) and inner(term) and self._is(term, "add"):
                    adds.append(term)
                    stack.extend(reversed(self._call(term)[1]))
                    continue
                found = self._product(term) if inner(term) else (None, None)
                terms.append((term, *found))
            # A parameter times a row makes a matrix product; failing two of those, two
            # parameters make a dot product. The other terms stay nodes of their own.
            for kind in ("row", "parameters"):
                taken = [t for t in terms if t[1] == kind]
                if len(taken) < 2:
                    continue
                extras = [term for term, found, _ in terms if found != kind]
                absorbed = [*adds, *(term for term, *_ in taken)]
                pairs = [pair for *_, pair in taken]
                made = _Sum if kind == "row" else _ParameterSum
                sums[id(node)] = made(pairs, extras, absorbed)
                break
        return sums

    def _product(self, term: Value | float) -> tuple[str | None, tuple[Value, Value] | None]:
        """("row", (weight, input)) if term is a parameter times a row of V (either order),
        ("parameters", (a, b)) if it is a parameter times a parameter (or a parameter's
        square, `_square`), else (None, None)."""
        square = self._square(term)
        if square is not None:
            return "parameters", (square, square)
        if not self._is(term, "multiply"):
            return None, None
        assert not isinstance(term, int | float)  # (an op node: _is says so)
        a, b = self._call(term)[1]
        if isinstance(a, int | float) or isinstance(b, int | float):
            return None, None
        if id(a) in self.independent or id(b) in self.independent:
            return None, None  # a factor computed once per batch: a node of its own (Hoisted)
        kinds = (self._kind(a), self._kind(b))
        if kinds == ("P", "V"):
            return "row", (a, b)
        if kinds == ("V", "P"):
            return "row", (b, a)
        if kinds == ("P", "P"):
            return "parameters", (a, b)
        return None, None

    def _square(self, term: Value | float) -> Value | None:
        """p if term is `p ** 2` of a parameter p, by the engine's pow (`kernels.power`, the
        exponent fixed), whose derivative in p is p + p on p's recorded value, as the
        product p * p's: a dot product takes it as that product."""
        if isinstance(term, int | float) or term._opdef is None:
            return None
        op, args = self._call(term)
        if op.forward is not kernels.power or len(args) != 2:
            return None
        p, exponent = args
        if isinstance(p, int | float) or self._kind(p) != "P":
            return None
        if not isinstance(exponent, int | float) or isinstance(exponent, bool) or exponent != 2:
            return None
        try:
            partial = op.derivative(term._data, p._data, 2.0)[0]
        except Exception:  # (its derivative fails here: batched replay runs it, and says so)
            return None
        return p if partial == p._data + p._data else None

    def _group(self) -> None:
        """Sort the op nodes into groups: same depth, same op, same kinds of arguments; sums
        of products over the same rows into one matrix product."""
        nodes = self.compiled.nodes
        self.independent = self._independent()
        self.hoisted_ids: set[int] = set()  # (none while the sums are found)
        sums = self._sums()
        absorbed = {id(v) for s in sums.values() for v in s.absorbed}
        hoisted = self._hoist(sums, absorbed)
        self.hoisted_ids = {id(nodes[i]) for i in hoisted}
        depth: dict[int, int] = {}
        groups: dict[tuple, _Group] = {}
        for i, node in enumerate(nodes):
            if node._opdef is None or id(node) in self.hoisted_ids:
                depth[id(node)] = 0  # the same for every sample: read like a parameter
                continue
            if id(node) in absorbed:
                continue
            backward = id(node) in self.reaches_root
            found = sums.get(id(node))
            if isinstance(found, _ParameterSum):  # a group of its own: one dot product
                terms = [e for e in found.extras if not isinstance(e, float)]
                depth[id(node)] = 1 + max((depth[id(t)] for t in terms), default=0)
                dot = _Dot(self._call(node)[0], depth[id(node)], backward, found)
                dot.nodes.append(i)
                groups[("dot", i)] = dot
                continue
            if found is not None:
                terms = [*found.xs, *(e for e in found.extras if not isinstance(e, float))]
                depth[id(node)] = 1 + max(depth[id(t)] for t in terms)
                kinds = tuple(self._kind(e) for e in found.extras)
                xs = tuple(id(x) for x in found.xs)
                key = ("linear", depth[id(node)], xs, kinds, backward)
                if key not in groups:
                    groups[key] = _Linear(self._call(node)[0], depth[id(node)], backward, found.xs)
                group = groups[key]
                assert isinstance(group, _Linear)
                group.nodes.append(i)
                group.weights.append(found.weights)
                group.extras.append(found.extras)
                continue
            depth[id(node)] = 1 + max(depth[id(p)] for p in node._prev)
            op, args = self._call(node)
            key = (depth[id(node)], id(op), tuple(self._kind(a) for a in args), backward)
            if key not in groups:
                groups[key] = _Group(op, depth[id(node)], backward)
            groups[key].nodes.append(i)
        # Depth by depth; within a depth, in the order the nodes were made, dot products
        # first: backward, walking the groups in reverse, then adds their gradients last,
        # into rows of PG that the layers' weight gradients were written straight into.
        self.groups = sorted(
            groups.values(), key=lambda g: (g.depth, not isinstance(g, _Dot), g.nodes[0])
        )
        row = len(self.compiled.inputs)  # V: the inputs, then each group's nodes
        self.row = dict(self.input_row)
        for group in self.groups:
            group.start = row
            for i in group.nodes:
                self.row[id(nodes[i])] = row
                row += 1
        self.rows = row
        # Rows of zeros below them in V, as many as the largest relu group: numpy's maximum
        # of two arrays is a vector loop, of an array and the number 0.0 twice as slow.
        relus = [len(g.nodes) for g in self.groups if _is_relu(g.op)]
        self.zero_rows = max(relus, default=0)
        self.bytes_per_sample = 8 * (2 * self.rows + self.zero_rows)  # V and G (chunk_size)
        # Parameters in the order the groups first read them: a group's weights are then a
        # slice of the parameter column rather than a gather. Dot products last: one gather
        # of all their parameters costs less than layers' weights gathered one by one.
        order: dict[int, Value] = {}
        for group in sorted(self.groups, key=lambda group: isinstance(group, _Dot)):
            for a in self._reads(group):
                if not isinstance(a, float | int) and id(a) in self.parameter_ids:
                    order.setdefault(id(a), a)
        for p in self.compiled.parameters:  # one no op reads (an output that is a parameter)
            order.setdefault(id(p), p)
        self.parameters = list(order.values())
        self.parameter_row = {id(p): k for k, p in enumerate(self.parameters)}
        # Below the parameters in PV, the hoisted nodes the batch reads, in the same order.
        read: dict[int, int] = {}
        for group in self.groups:
            for a in self._reads(group):
                if not isinstance(a, float | int) and id(a) in self.hoisted_ids:
                    read.setdefault(id(a), self.index[id(a)])
        for value in self.compiled.outputs:
            if id(value) in self.hoisted_ids:
                read.setdefault(id(value), self.index[id(value)])
        boundary = list(read.values())
        for k, i in enumerate(boundary):
            self.parameter_row[id(nodes[i])] = len(self.parameters) + k
        self.hoisted = Hoisted(self, hoisted, boundary) if hoisted else None
        for group in self.groups:
            if isinstance(group, _Dot):
                group.sort(self.parameter_row)
        self.reaching_parameters = [
            (k, p) for k, p in enumerate(self.parameters) if id(p) in self.reaches_root
        ]
        self.reaching = [p for _, p in self.reaching_parameters]
        self.reaching_rows = np.array([k for k, _ in self.reaching_parameters], dtype=np.intp)
        # The parameters' values, at each map, then the hoisted nodes the batch reads.
        self._PV = np.empty((len(self.parameter_row), 1))
        self._PV_parameters = self._PV[: len(self.parameters), 0]
        self.all_reach = len(self.reaching) == len(self.parameters)
        # Parameters that live in one ParameterStore are read and written with one numpy
        # call over their rows (a gather: PV's order is the groups', not the store's).
        self._store, self._store_rows = store_rows(self.parameters)
        self._grad_rows = store_rows(self.reaching)[1]

    def _hoist(self, sums: dict[int, _Sum | _ParameterSum], absorbed: set[int]) -> list[int]:
        """The op nodes computed once per batch (`Hoisted`), by index, in creation order:
        those that depend on no input, but for the nodes of a dot product (`_Dot`, a numpy
        call of its own: they stay rows of V) and the nodes that read one."""
        hoisted: list[int] = []
        ids: set[int] = set()
        for i, node in enumerate(self.compiled.nodes):
            if (
                id(node) in self.independent
                and id(node) not in absorbed
                and id(node) not in sums
                and all(p._opdef is None or id(p) in ids for p in node._prev)
            ):
                hoisted.append(i)
                ids.add(id(node))
        return hoisted

    def _reads(self, group: _Group) -> list[Value | float]:
        """What a group's nodes read: a matrix product's weights (row by row, so that a
        layer's weights are a slice of PV), then its other terms; another op's arguments."""
        if isinstance(group, _Linear):
            weights = [w for ws in group.weights for w in ws]
            return [*weights, *(e for extras in group.extras for e in extras)]
        if isinstance(group, _Dot):
            return [*group.a, *group.b, *group.extras[0]]
        return [a for i in group.nodes for a in self._call(self.compiled.nodes[i])[1]]

    # --- operands -------------------------------------------------------------------------

    def _constant(self, name: str, values: list[float]) -> str:
        """A constant operand: one number for the whole group, or a (group x 1) column."""
        if all(v == values[0] and repr(v) == repr(values[0]) for v in values):
            return literal(values[0])
        self.namespace[name] = np.array(values, dtype=np.float64).reshape(-1, 1)
        return name

    def _operand(self, name: str, args: list[Value | float]) -> _Operand:
        """How one argument position of a group reads its rows, and scatters gradients."""
        kind = self._kind(args[0])
        if kind == "C":
            values = [a if isinstance(a, float) else self.constant_of[id(a)] for a in args]
            return _Operand("C", self._constant(f"K{name}", values))
        if kind == "P":
            rows = np.array([self.parameter_row[id(a)] for a in args], dtype=np.intp)
            return self._parameter_operand(name, rows)
        rows = np.array([self.row[id(a)] for a in args], dtype=np.intp)
        operand = self._row_operand(name, rows)
        operand.rows = rows
        return operand

    def _row_operand(self, name: str, rows: np.ndarray, broadcast: bool = True) -> _Operand:
        """Rows of V, read as a view where they are evenly spaced; one row read by every
        node as one row that numpy broadcasts, unless `broadcast` is False (a matrix
        product's operand must have all its rows)."""
        k = len(rows)
        found = progression(rows)
        if found:
            where = f"[{slice_source(*found, k)}]"
            return _Operand("V", f"V{where}", lambda c: [f"G{where} += {c}"])
        if broadcast and np.all(rows == rows[0]):  # one row read by every node: broadcast it
            r = int(rows[0])
            return _Operand(
                "V", f"V[{r}:{r + 1}]", lambda c: [f"G[{r}:{r + 1}] += ({c}).sum(axis=0)"]
            )
        blocks = _blocks(rows)
        if blocks:
            how, copies, b, where = blocks
            if how == "tile":
                read = f"np.tile(V[{where}], ({copies}, 1))"
                fold = f".reshape({copies}, {b}, -1).sum(axis=0)"
            else:
                read = f"np.repeat(V[{where}], {copies}, axis=0)"
                fold = f".reshape({b}, {copies}, -1).sum(axis=1)"
            return _Operand("V", read, lambda c: [f"G[{where}] += ({c}){fold}"])
        self.namespace[f"I{name}"] = rows
        if len(np.unique(rows)) == k:
            return _Operand("V", f"V.take(I{name}, 0)", lambda c: [f"G[I{name}] += {c}"])
        # Rows read more than once: sum each row's contributions first (add.reduceat over
        # the contributions sorted by row), then add them in; `G[rows] +=` would keep one.
        order = np.argsort(rows, kind="stable")
        unique, starts = np.unique(rows[order], return_index=True)
        self.namespace.update({f"O{name}": order, f"U{name}": unique, f"S{name}": starts})
        return _Operand(
            "V",
            f"V.take(I{name}, 0)",
            lambda c: [f"G[U{name}] += np.add.reduceat(({c})[O{name}], S{name}, axis=0)"],
        )

    def _parameter_operand(self, name: str, rows: np.ndarray) -> _Operand:
        # A parameter's gradient is the sum over the batch of its per-sample gradients: here
        # the sums over each block of SUM_BLOCK samples, added up in order by backward().
        k = len(rows)
        found = progression(rows)
        if found:
            where = slice_source(*found, k)
            return _Operand(
                "P", f"PV[{where}]", lambda c: [self._pg.add(where, rows, "block_sums", c)]
            )
        if np.all(rows == rows[0]):
            r = int(rows[0])
            sums = "block_sums({}).sum(axis=0)"
            return _Operand(
                "P", f"PV[{r}:{r + 1}]", lambda c: [self._pg.add(str(r), [r], None, sums.format(c))]
            )
        self.namespace[f"I{name}"] = rows
        repeated = len(np.unique(rows)) < k
        return _Operand(
            "P",
            f"PV.take(I{name}, 0)",
            lambda c: [self._pg.add(f"I{name}", rows, "block_sums", c, at=repeated)],
        )

    # --- the source -----------------------------------------------------------------------

    def _kernels(self, group: _Group, gi: int) -> tuple[str | None, str | None]:
        """The names of the group's forward and derivative array functions (None: inline)."""
        op = group.op
        forward = derivative = None
        if _is_relu(op):
            return forward, derivative  # written inline (_relu_forward, _contributions)
        if rules.forward_ufunc(op) is None:
            forward = f"F{gi}"
            self.namespace[forward] = self._array_function(op, "array_forward", gi)
        if group.backward and op.partials is None:
            derivative = f"D{gi}"
            self.namespace[derivative] = self._array_function(op, "array_derivative", gi)
        return forward, derivative

    def _array_function(self, op: Row, field: str, gi: int) -> Callable:
        kernel = getattr(op, field, None)
        if kernel is not None:
            if not callable(kernel):
                raise op_error(op, f"{field} must be callable, got {kernel!r}", error=CompileError)
            if getattr(kernel, "__module__", "").startswith("opgraph.plugins."):
                return kernel  # the built-ins' kernels, tested element by element
            return _shape_checked(kernel, field, op.arity)
        if op.name not in self.warned:
            self.warned.add(op.name)
            missing = [f for f in ("array_forward", "array_derivative") if not getattr(op, f)]
            warnings.warn(
                op_message(
                    op,
                    f"has no array kernel ({' and '.join(missing)})",
                    detail=f"batched replay of {self.compiled.name} applies its scalar "
                    f"functions element by element, correct but slow",
                ),
                BatchWarning,
                stacklevel=4,
            )
        scalar = op.forward if field == "array_forward" else op.derivative
        return _elementwise(scalar, field == "array_derivative", op.arity, gi)

    def _generate(self, checked: bool) -> tuple[str, dict[int, int]]:
        """The source of the replay generator, and which group each line computes."""
        nodes = self.compiled.nodes
        code = ["def replay(V, G, PV):"]
        lines: dict[int, int] = {}
        self._pg = _SumsIntoPG()  # (the parameters' scatters add into PG through it)

        def emit(line: str, group: int | None = None) -> None:
            code.append("    " + line)
            if group is not None:
                lines[len(code)] = group

        emit("# (the views of V, G and PV the lines read, by name)")
        operands: list[list[_Operand]] = []
        for gi, group in enumerate(self.groups):
            out = f"V[{group.start}:{group.start + len(group.nodes)}]"
            if isinstance(group, _Linear | _Dot):
                if isinstance(group, _Linear):
                    operands.append(self._linear_forward(gi, group, out, emit))
                else:
                    operands.append(self._dot_forward(gi, group, out, emit))
                if checked:
                    emit(f"if not isfinite({out}).all(): forward_anomaly({gi}, {out})")
                continue
            calls = [self._call(nodes[i])[1] for i in group.nodes]
            ops = [self._operand(f"{gi}_{j}", [c[j] for c in calls]) for j in range(len(calls[0]))]
            operands.append(ops)
            forward, _ = self._kernels(group, gi)
            emit(f"# {len(group.nodes)} x {group.op.name}, depth {group.depth}")
            names = []
            for j, operand in enumerate(ops):
                if operand.kind == "C":
                    names.append(operand.read)
                else:
                    names.append(f"a{gi}_{j}")
                    emit(f"a{gi}_{j} = {operand.read}", gi)
            if _is_relu(group.op):
                zeros = f"V[{self.rows}:{self.rows + len(group.nodes)}]"
                for line in _relu_forward(names[0], zeros, out):
                    emit(line, gi)
            elif forward is None:
                ufunc = rules.forward_ufunc(group.op)
                emit(f"{ufunc}({names[0]}, {names[1]}, out={out})", gi)
            else:
                emit(f"{out} = {forward}({', '.join(names)})", gi)
            if checked:
                emit(f"if not isfinite({out}).all(): forward_anomaly({gi}, {out})")
        emit("seed = yield")

        # G is not zeroed: the first contribution to a row is assigned (`=`), later ones
        # added (`+=`); every row backward reads has been written by then. Only the inputs'
        # rows no op reads, returned whole, are set to zero (on the line kept for it here).
        # (Assigned, an input's gradient may be -0.0 where 0.0 + it was 0.0: backward()
        # adds it to batch_input_grads, zeros at map(), which makes it 0.0 again.)
        emit("while True:")
        written: set[int] = set()
        zeroing = len(code)
        emit("    # (the inputs' gradients no op gives)")
        allocation = len(code)
        emit("    PG = np.zeros((len(PV), blocks(V.shape[1])))")
        root = self.compiled.outputs[0]
        if id(root) in self.row:
            emit(f"    G[{self.row[id(root)]}] = seed")
            written.add(self.row[id(root)])
        elif id(root) in self.parameter_row:
            r = self.parameter_row[id(root)]
            emit("    " + self._pg.add(str(r), [r], None, "block_sums(seed[None])[0]"))
        for gi in range(len(self.groups) - 1, -1, -1):
            group = self.groups[gi]
            if not group.backward:
                continue
            ops = operands[gi]
            end = group.start + len(group.nodes)
            emit(f"    g = G[{group.start}:{end}]  # {group.op.name}, depth {group.depth}", gi)
            if isinstance(group, _Linear):
                contributions = self._linear_backward(gi, group, emit, checked)
            elif isinstance(group, _Dot):
                contributions = self._dot_backward(gi, group, emit, checked)
            elif _is_relu(group.op):
                contributions = self._relu_backward(gi, ops[0], written, checked, emit)
            else:
                contributions = self._contributions(gi, group, ops, emit)
            for j, operand in enumerate(ops):
                if operand.scatter is None or contributions[j] is None:
                    continue
                c = contributions[j]
                if checked:
                    emit(f"    c = {c}", gi)
                    check = "linear_anomaly" if isinstance(group, _Linear) else "backward_anomaly"
                    emit(f"    if not isfinite(c).all(): {check}({gi}, {j}, c)")
                    c = "c"
                for statement in self._scatter(operand, c, f"{gi}_{j}", written):
                    emit(f"    {_in_place(statement)}", gi)
        emit("    seed = yield PG, G")
        unread = [r for r in range(len(self.compiled.inputs)) if r not in written]
        if unread:
            self.namespace["ZIN"] = np.array(unread, dtype=np.intp)
            code[zeroing] = "        G[ZIN] = 0.0"
        if len(self._pg.assigned) == len(self.parameter_row):  # every row assigned: not zeroed
            code[allocation] = "        PG = np.empty((len(PV), blocks(V.shape[1])))"
        self._name_views(code, checked)
        return "\n".join(code) + "\n", lines

    def _name_views(self, code: list[str], checked: bool) -> None:
        """Name each slice of V, G and PV the code reads (`V[4:20]` is `V4_20`), the views
        made once for the arrays of a batch (`views`) rather than at every line of every
        step: a view costs about 0.1 us, and the moons step reads 59 of them."""
        names: dict[str, str] = {}

        def name(found: re.Match) -> str:
            array, start, stop, step, shape = found.groups()
            suffix = (f"_{step}" if step else "") + ("_matrix" if shape else "")
            return names.setdefault(found[0], f"{array}{start}_{stop}{suffix}")

        for k in range(2, len(code)):
            line = _SLICE.sub(name, code[k])
            target = re.match(r"(\s+)(\w+) = ", line)
            if target and target[2] in names.values():  # an assignment to a slice: into it
                line = f"{target[1]}{target[2]}[...] = {line[target.end() :]}"
            code[k] = line
        if names:
            unpack = ", ".join(names.values()) + ("," if len(names) == 1 else "")
            code[1] = f"    {unpack} = views(V, G, PV, {int(checked)})"
        # (the expressions are the generator's own slices, digits only: _SLICE)
        views = "".join(f"{expression}, " for expression in names)  # (none: "()")
        self._view_makers[checked] = eval(f"lambda V, G, PV: ({views})")  # noqa: S307

    def views(self, V: np.ndarray, G: np.ndarray, PV: np.ndarray, checked: int) -> tuple:  # noqa: N803
        """The named views of the arrays of a replay (`_name_views`), made once for them."""
        kept = self._view_cache.get(checked)
        if kept is not None and kept[0] is V and kept[1] is G and kept[2] is PV:
            return kept[3]
        views = self._view_makers[bool(checked)](V, G, PV)
        self._view_cache[checked] = (V, G, PV, views)
        return views

    def _relu_backward(
        self, gi: int, operand: _Operand, written: set[int], checked: bool, emit
    ) -> list:
        """relu's contribution: kernels.relu_derivative's `(a > 0) * 1.0` times g, without
        the float array (numpy multiplies by the mask's True and False as 1.0 and 0.0, the
        same numbers; nan > 0 is False, so g * 0.0, as eager's float(a > 0) * g).

        When it is the first write to contiguous rows of G, the mask is written into them
        as 0.0 and 1.0, then multiplied by g there (numpy multiplies a float array faster
        than it converts a boolean one: 85 against 94 us on 16 x 10,000) and nothing is
        left to scatter (None); else the mask is `d0`, and its product with g is scattered."""
        rows = operand.rows  # (None for a parameter's relu: its gradient goes to PG)
        found = progression(rows) if rows is not None else None
        if (
            rows is not None
            and found is not None
            and found[1] == 1
            and not written.intersection(rows.tolist())
            and not checked
        ):
            target = f"G[{slice_source(*found, len(rows))}]"
            emit(f"    np.greater(a{gi}_0, 0.0, out={target})", gi)
            emit(f"    multiply({target}, g, out={target})", gi)
            written.update(rows.tolist())
            return [None]
        emit(f"    d0 = a{gi}_0 > 0", gi)
        return ["d0 * g"]

    def _contributions(self, gi: int, group: _Group, ops: list[_Operand], emit) -> list:
        """The expressions of a group's contributions to each argument's gradient."""
        names = [op.read if op.kind == "C" else f"a{gi}_{j}" for j, op in enumerate(ops)]
        _, derivative = self._kernels(group, gi)
        end = group.start + len(group.nodes)
        if group.op.partials is not None:  # inline: the rule's terms written out
            out = f"V[{group.start}:{end}]"
            return [
                rules.term_source(group.op.partials, j, out, names, "g", ieee=False)
                for j in range(len(ops))
            ]
        partials = [f"d{j}" for j in range(len(ops))]
        emit(
            f"    {', '.join(partials)}, = {derivative}(V[{group.start}:{end}], "
            f"{', '.join(names)})",
            gi,
        )
        return [f"{d} * g" for d in partials]

    def _scatter(self, operand: _Operand, c: str, name: str, written: set[int]) -> list[str]:
        """The statements adding contribution `c` to an operand's gradient rows: the first
        contribution to a row of G is assigned, not added (G is not zeroed)."""
        assert operand.scatter is not None
        statements = operand.scatter(c)
        if operand.rows is not None:
            rows = set(operand.rows.tolist())
            fresh = sorted(rows - written)
            if len(fresh) == len(rows):  # the first contribution to all its rows
                statements = [statements[0].replace(" += ", " = ", 1)]
            elif fresh:
                self.namespace[f"Z{name}"] = np.array(fresh, dtype=np.intp)
                statements = [f"G[Z{name}] = 0.0", *statements]
            written.update(rows)
        return statements

    # --- matrix products --------------------------------------------------------------------

    def _linear_forward(self, gi: int, group: _Linear, out: str, emit) -> list[_Operand]:
        """`out = W @ X`, then each extra term added: a group of sums of products as one
        matrix product. Returns the operands whose gradients backward scatters: X, then the
        extras (W's are written by `_linear_backward`)."""
        m, k = len(group.nodes), len(group.xs)
        emit(f"# {m} x sum of {k} products (matmul), depth {group.depth}")
        w_rows = np.array(
            [self.parameter_row[id(w)] for ws in group.weights for w in ws], dtype=np.intp
        )
        index = index_source(w_rows, f"IW{gi}", self.namespace)
        read = f"PV[{index}]" if ":" in index else f"PV.take({index}, 0)"
        emit(f"w{gi} = {read}.reshape({m}, {k})", gi)
        x_rows = np.array([self.row[id(x)] for x in group.xs], dtype=np.intp)
        x = self._row_operand(f"{gi}_x", x_rows, broadcast=False)
        x.rows = x_rows
        emit(f"x{gi} = {x.read}", gi)
        emit(f"np.matmul(w{gi}, x{gi}, out={out})", gi)
        group.w_rows = w_rows
        return [x, *self._extra_terms(gi, group, out, emit)]

    def _extra_terms(self, gi: int, group: _Linear | _Dot, out: str, emit) -> list[_Operand]:
        """The other terms of the group's sums (a bias), added into `out` one position at a
        time after the products; returns their operands, whose gradients backward scatters."""
        ops = []
        for j in range(len(group.extras[0])):
            operand = self._operand(f"{gi}_{j}", [extras[j] for extras in group.extras])
            ops.append(operand)
            read = operand.read
            if operand.kind != "C":
                emit(f"a{gi}_{j} = {read}", gi)
                read = f"a{gi}_{j}"
            emit(f"add({out}, {read}, out={out})", gi)
        return ops

    def _linear_backward(self, gi: int, group: _Linear, emit, checked: bool) -> list:
        """Backward of `W @ X + extras` for the gradient g of its rows: W's is `g @ X.T`
        (summed per block of samples), X's `W.T @ g`, each extra's g itself."""
        w_rows = group.w_rows
        index = index_source(w_rows, f"IW{gi}", self.namespace)
        call, dw = "block_products", f"g, x{gi}"
        if checked:
            emit(f"    c = {call}({dw})", gi)
            emit(f"    if not isfinite(c).all(): linear_anomaly({gi}, -1, c)")
            call, dw = None, "c"
        # A weight used more than once: each use's gradient added (np.add.at).
        repeated = ":" not in index and len(np.unique(w_rows)) < len(w_rows)
        emit("    " + self._pg.add(index, w_rows, call, dw, at=repeated), gi)
        # One neuron: W.T @ g is an outer product, a broadcast multiply (BLAS is slower).
        dx = f"w{gi}.T * g" if len(group.nodes) == 1 else f"w{gi}.T @ g"
        return [dx, *["g" for _ in group.extras[0]]]

    # --- dot products of parameters ----------------------------------------------------------

    def _parameter_index(self, name: str, params: list[Value]) -> tuple[str, np.ndarray]:
        """Where the parameters are in PV and PG: a slice (`0:16`), or the name of an array
        of their rows (a gather); and their rows."""
        rows = np.array([self.parameter_row[id(p)] for p in params], dtype=np.intp)
        return index_source(rows, name, self.namespace), rows

    def _dot_forward(self, gi: int, group: _Dot, out: str, emit) -> list[_Operand]:
        """`out = a . b`, the same number in every sample's column, then each extra term
        added. Returns the extras' operands, whose gradients backward scatters."""
        emit(f"# sum of {len(group.a)} products of parameters (dot), depth {group.depth}")
        for column, params in (("pa", group.a), ("pb", group.b)):
            index, _ = self._parameter_index(f"I{column}{gi}", params)
            read = f"PV[{index}]" if ":" in index else f"PV.take({index}, 0)"
            if column == "pb" and group.square:
                read = f"pa{gi}"
            emit(f"{column}{gi} = {read}", gi)
        emit(f"{out} = pa{gi}.T @ pb{gi}", gi)  # a (1, 1) array: into every sample's column
        return self._extra_terms(gi, group, out, emit)

    def _dot_backward(self, gi: int, group: _Dot, emit, checked: bool) -> list:
        """Backward of `a . b + extras` for the gradient g of its row: summed over each
        block of samples (gs), a's gradient is `b * gs` and b's `a * gs`; each extra's is g."""
        emit(f"    gs{gi} = block_sums(g)", gi)
        for column, other, params in (("pa", "pb", group.a), ("pb", "pa", group.b)):
            c = f"d{column}{gi}"  # the gradients of the parameters of the column
            if group.square and column == "pb":
                c = f"dpa{gi}"  # a sum of squares: each square's two factors, the same
            else:
                emit(f"    {c} = {other}{gi} * gs{gi}", gi)
                if checked:
                    emit(f"    if not isfinite({c}).all(): linear_anomaly({gi}, -1, {c})")
            index, rows = self._parameter_index(f"I{column}{gi}", params)
            # A parameter in several products: each product's gradient added (np.add.at).
            repeated = len(np.unique(rows)) < len(rows)
            emit("    " + self._pg.add(index, rows, None, c, at=repeated), gi)
        return ["g" for _ in group.extras[0]]

    kind = "opgraph.compile batched"

    def _build(self, source: str) -> Callable:
        return self._exec(
            source,
            isfinite=np.isfinite,
            blocks=_blocks_of,
            block_sums=block_sums,
            block_products=block_products,
            views=self.views,
            forward_anomaly=self._forward_anomaly,
            backward_anomaly=self._backward_anomaly,
            linear_anomaly=self._linear_anomaly,
        )

    # --- running --------------------------------------------------------------------------

    def run(self, blocks: list[np.ndarray], checked: bool, chunk: int) -> list[np.ndarray]:
        """The outputs for a batch: `blocks` as batch_inputs gives them, (n, inputs) arrays
        of the inputs' rows in order; one array per output.

        The batch runs `chunk` samples at a time. A batch of one chunk keeps its forward
        pass for backward; a larger one keeps only a copy of its inputs, and backward runs
        the forward pass again chunk by chunk.
        """
        replay, lines = self._function(checked)
        self._last = None
        n = len(blocks[0])
        # One chunk is copied into V once; a larger batch's inputs are kept, copied (the
        # caller may change its arrays before backward()).
        inputs = [np.concatenate(blocks, axis=1)] if n > chunk else blocks
        # The slots, not the `data` property: a call per parameter and step saved (the
        # setter keeps `_data` a float).
        PV = self._PV  # the same array at every step: its views are made once
        if self._store is not None:
            self._PV_parameters[:] = self._store.data[self._store_rows]
        else:
            count = len(self.parameters)
            self._PV_parameters[:] = np.fromiter(map(_DATA, self.parameters), np.float64, count)
        hoisted = None if self.hoisted is None else self.hoisted.forward(PV, checked)
        outputs = [np.empty(n) for _ in self.compiled.outputs]
        self._buffers(min(n, chunk))
        running = None
        for start in range(0, n, chunk):
            running, V = self._forward(replay, lines, inputs, start, start + chunk, PV)
            for out, value in zip(outputs, self.compiled.outputs, strict=True):
                out[start : start + chunk] = self._output(V, PV, value)
        if n <= chunk:
            self._last = _Batch(replay, lines, None, PV, chunk, running, hoisted)
        else:
            self._last = _Batch(replay, lines, inputs, PV, chunk, None, hoisted)
        self.n = n
        return outputs

    def _forward(
        self,
        replay: Callable,
        lines: dict[int, int],
        blocks: list[np.ndarray],
        start: int,
        stop: int,
        PV: np.ndarray,  # noqa: N803
    ) -> tuple[Any, np.ndarray]:
        """The replay generator after its forward pass on the samples start:stop of the
        input blocks (one chunk), and the chunk's data."""
        V, G = self._V, self._G
        width = min(stop, len(blocks[0])) - start
        if width < V.shape[1]:  # the last chunk: the first columns of the arrays
            V, G = V[:, :width], G[:, :width]
        row = 0
        for block in blocks:  # the inputs' rows
            V[row : row + block.shape[1]] = block[start:stop].T
            row += block.shape[1]
        running = replay(V, G, PV)
        with np.errstate(all="ignore"):
            try:
                next(running)
            except AnomalyError:
                raise
            except Exception as exc:
                raise self._error(exc, lines, "forward") from exc
        return running, V

    def _buffers(self, width: int) -> None:
        """Make the data and gradient arrays `width` samples wide, unless they are: they are
        kept for the next batch, as fresh arrays of tens of megabytes cost a page fault per
        4 kB at every step."""
        if self._V.shape[1] != width:
            self._view_cache.clear()  # (it keeps the arrays it made views of)
            self._V = np.empty((self.rows + self.zero_rows, width))
            self._V[self.rows :] = 0.0  # the zeros relu's maximum reads
            self._G = np.empty((self.rows, width))

    @staticmethod
    def zeros(shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)

    def _output(self, V: np.ndarray, PV: np.ndarray, value: Value) -> np.ndarray | float:
        if id(value) in self.row:
            return V[self.row[id(value)]]
        if id(value) in self.parameter_row:
            return PV[self.parameter_row[id(value)], 0]
        return self.constant_of[id(value)]

    @property
    def ready(self) -> bool:
        """Did the last map() succeed (so that backward() has a batch to differentiate)?"""
        return self._last is not None

    def backward(self, seed: np.ndarray) -> np.ndarray:
        """Add each parameter's gradient, summed over the batch, to its `.grad`; return the
        (n, number of inputs) gradients of the inputs (for a batch of one chunk, a view of
        the gradient array, valid until the next run). `seed` weighs each sample."""
        last = self._last
        if last is None:
            raise CompileError(f"compiled {self.compiled.name}: call map() before backward()")
        inputs = len(self.compiled.inputs)
        if last.running is not None:  # one chunk, its forward pass kept
            PG, G = self._send(last.running, seed, last.lines)
            self._add_grads(self._through_hoisted(_running_total(0.0, PG)))
            return G[:inputs].T
        n = self.n
        total = np.zeros(len(self.parameter_row))
        input_grads = np.empty((n, inputs))
        for start in range(0, n, last.chunk):
            stop = min(start + last.chunk, n)
            # its forward pass again
            running, _ = self._forward(last.replay, last.lines, last.inputs, start, stop, last.PV)
            PG, G = self._send(running, seed[start:stop], last.lines)
            total = _running_total(total, PG)  # the blocks added to the total in order
            input_grads[start:stop] = G[:inputs].T
        self._add_grads(self._through_hoisted(total))
        return input_grads

    def _through_hoisted(self, total: np.ndarray) -> np.ndarray:
        """The batch's sums of the parameters' gradients, from `total` (in PV's order, the
        hoisted nodes' below them) with the hoisted nodes' parts added, once per batch."""
        last = self._last
        if self.hoisted is not None and last is not None and last.hoisted is not None:
            running, lines = last.hoisted
            try:
                self.hoisted.backward(running, lines, total)
            except Exception:
                self._last = None
                raise
        return total[: len(self.parameters)]

    def _add_grads(self, total: np.ndarray) -> None:
        """Add the batch's sums to the `.grad` of the parameters that reach the output."""
        sums = np.ascontiguousarray(total if self.all_reach else total[self.reaching_rows])
        if self._store is not None:  # (rows distinct: store_rows checked)
            self._store.grad[self._grad_rows] += sums
            return
        # Its memoryview (`.data`) gives the numbers as Python floats one by one, no list.
        for p, s in zip(self.reaching, sums.data, strict=True):
            p._grad += s  # the slot: a float, as the property's setter keeps it

    def _send(self, running: Any, seed: np.ndarray, lines: dict[int, int]) -> tuple:
        """The backward pass of one chunk: the block sums of the parameters' gradients, and
        the gradients of the chunk's rows."""
        with np.errstate(all="ignore"):
            try:
                return running.send(seed)
            except AnomalyError:
                self._last = None
                raise
            except Exception as exc:
                self._last = None
                raise self._error(exc, lines, "backward") from exc

    # --- errors that name the node --------------------------------------------------------

    def _nodes_of(self, gi: int, element: tuple[int, int] | None) -> str:
        group = self.groups[gi]
        if element is not None:
            node = self.compiled.nodes[group.nodes[element[0]]]
            return f"{node_name(node)} (sample {element[1]})"
        first = self.compiled.nodes[group.nodes[0]]
        more = (
            f" and {len(group.nodes) - 1} other node(s) of the group"
            if len(group.nodes) > 1
            else ""
        )
        return f"{node_name(first)}{more}"

    def _error(self, exc: Exception, lines: dict[int, int], where: str) -> Exception:
        line = self._failing_line(exc)
        if line not in lines:
            return exc
        gi = lines[line]
        group = self.groups[gi]
        element: tuple[int, int] | None = None
        if isinstance(exc, _ElementError):
            index = [int(i) for i in np.unravel_index(exc.position, exc.shape)]
            element = (index[0] if len(index) > 1 else 0, index[-1])
            exc = exc.cause
        first = self.compiled.nodes[group.nodes[0]]
        node = first if element is None else self.compiled.nodes[group.nodes[element[0]]]
        plain = isinstance(exc, PartialsCountError | NotRealError)  # (already says what)
        detail = str(exc) if plain else f"{type(exc).__name__}: {exc}"
        return op_error(
            first._opdef,
            f"failed in batched {where} of {self.compiled.name}",
            node=self._nodes_of(gi, element),
            inputs=node._prev,
            recorded=True,
            detail=detail,
        )

    def _forward_anomaly(self, gi: int, out: np.ndarray) -> None:
        element = _first_nonfinite(out)
        node = self.compiled.nodes[self.groups[gi].nodes[element[0]]]
        raise op_error(
            node._opdef,
            f"produced {out[element]} in batched forward of {self.compiled.name}",
            node=self._nodes_of(gi, element),
            error=AnomalyError,
        )

    def _backward_anomaly(self, gi: int, position: int, contribution: np.ndarray) -> None:
        element = _first_nonfinite(contribution)
        node = self.compiled.nodes[self.groups[gi].nodes[element[0]]]
        raise op_error(
            node._opdef,
            f"gave a non-finite gradient in batched backward of {self.compiled.name}",
            node=self._nodes_of(gi, element),
            detail=f"{contribution[element]} for input {position}",
            error=AnomalyError,
        )

    def _linear_anomaly(self, gi: int, position: int, contribution: np.ndarray) -> None:
        """A matrix product's backward gave inf or nan, for its weights (position -1) or
        for its inputs: named by the group, as the element is a sum over its neurons."""
        group = self.groups[gi]
        what = "its weights" if position < 0 else f"input {position}"
        raise op_error(
            self.compiled.nodes[group.nodes[0]]._opdef,
            f"gave a non-finite gradient in batched backward of {self.compiled.name}",
            node=self._nodes_of(gi, None),
            detail=f"a sum of products (matrix product) gave {what} a non-finite gradient",
            error=AnomalyError,
        )


# `G[a:b] = x * g` (or `@`), a first contribution to contiguous rows: computed straight into
# them (`out=`), the same numbers without a temporary array and its copy.
_PRODUCT_INTO_ROWS = re.compile(r"G\[(\d+:\d+)\] = ([\w.]+|\([-\w.+]+\)) ([*@]) g")


def _in_place(statement: str) -> str:
    found = _PRODUCT_INTO_ROWS.fullmatch(statement)
    if found is None:
        return statement
    rows, factor, operator = found.groups()
    ufunc = "multiply" if operator == "*" else "np.matmul"
    return f"{ufunc}({factor}, g, out=G[{rows}])"


def _is_relu(op: Row) -> bool:
    """Are op's array kernels the engine's relu (opgraph.kernels), which the generator writes
    out? Whatever the op's name: an op with kernels of its own is called through them."""
    return (
        op.array_forward is kernels.relu
        and op.array_derivative is kernels.relu_derivative
        and op.partials is None
        and rules.forward_ufunc(op) is None
    )


def _relu_forward(a: str, zeros: str, out: str) -> list[str]:
    """kernels.relu(a) written into out (zeros: rows of V that hold 0.0): maximum keeps nan
    (and may keep -0.0, which + 0.0 makes 0.0), as `relu` does."""
    return [f"np.maximum({a}, {zeros}, out={out})", f"add({out}, 0.0, out={out})"]


# A slice of V, G or PV with constant bounds, maybe read as a matrix.
_SLICE = re.compile(r"\b(PV|V|G)\[(\d+):(\d+)(?::(\d+))?\](\.reshape\(\d+, \d+\))?")


def _first_nonfinite(array: np.ndarray) -> tuple[int, int]:
    bad = np.argwhere(~np.isfinite(np.atleast_2d(array)))[0]
    return int(bad[0]), int(bad[1])


def _shape_checked(kernel: Callable, field: str, arity: int) -> Callable:
    """A plugin's kernel, checked to compute element by element: each result has the shape
    of its inputs broadcast together (or is a number), not fewer rows that numpy would
    silently broadcast into the group, and real numbers, not complex ones whose imaginary
    part numpy would silently drop as it stores them; a derivative returns one partial per
    input."""

    def check(result: Any, args: tuple) -> None:
        shape = np.shape(result)
        if shape and shape != np.broadcast_shapes(*[np.shape(a) for a in args]):
            raise ValueError(
                f"{field} returned an array of shape {shape} for inputs of shapes "
                f"{[np.shape(a) for a in args]}; it must compute element by element"
            )
        dtype = np.asarray(result).dtype
        if dtype.kind not in "fiub":
            raise TypeError(
                f"{field} returned {dtype} numbers; it must return real numbers (a float64 array)"
            )

    if field == "array_forward":

        def forward(*args: Any) -> Any:
            out = kernel(*args)
            check(out, args)
            return out

        return forward

    def derivative(out: Any, *args: Any) -> Any:
        partials = tuple(kernel(out, *args))
        if len(partials) != arity:
            raise PartialsCountError(wrong_partials(arity, partials))
        for partial in partials:
            check(partial, (out, *args))
        return partials

    return derivative


# ---------------------------------------------------------------------------------------------
# Ops without array kernels


class _ElementError(Exception):
    """A scalar function failed on one element of a group's block."""

    def __init__(self, cause: Exception, position: int, shape: tuple[int, ...]):
        super().__init__(str(cause))
        self.cause, self.position, self.shape = cause, position, shape


def _elementwise(scalar: Callable, is_derivative: bool, arity: int, gi: int) -> Callable:
    """An array function that applies a scalar forward (or derivative) element by element."""

    def forward(*args: Any) -> np.ndarray:
        arrays = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in args])
        shape = arrays[0].shape
        columns = [a.ravel().tolist() for a in arrays]
        out = []
        for position, xs in enumerate(zip(*columns, strict=True)):
            try:
                y = scalar(*xs)
                if not isinstance(y, Real):
                    raise TypeError(f"forward returned {y!r}; it must return a real number")
            except Exception as exc:
                raise _ElementError(exc, position, shape) from exc
            out.append(y)
        return np.array(out, dtype=np.float64).reshape(shape)

    def derivative(out: np.ndarray, *args: Any) -> tuple[np.ndarray, ...]:
        arrays = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in (out, *args)])
        shape = arrays[0].shape
        columns = [a.ravel().tolist() for a in arrays]
        partials = []
        for position, xs in enumerate(zip(*columns, strict=True)):
            try:
                ds = tuple(scalar(*xs))
                if len(ds) != arity:
                    raise PartialsCountError(wrong_partials(arity, ds))
                # (as eager checks them: a complex partial is never right)
                ds = tuple(d if type(d) is float else rules.real_partial(d) for d in ds)
            except Exception as exc:
                raise _ElementError(exc, position, shape) from exc
            partials.append(ds)
        table = np.array(partials, dtype=np.float64).reshape(*shape, arity)
        return tuple(table[..., j] for j in range(arity))

    return derivative if is_derivative else forward
