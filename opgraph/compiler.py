"""Compiled replay: record the graph a function builds once, then re-run it without Values.

A training loop rebuilds the same graph every step. `compile(fn, *example_args)` runs `fn`
once, takes the graph it built, and writes it out as two straight-line Python functions:
a forward pass, a line per node or per chain of arithmetic (a neuron's sum is one
expression), and a backward pass, the chain rule line by line in reverse.
Both call the same plugin `forward` and `derivative` functions as eager mode, so any op
compiles, third-party ones included; the partials of a row that gives them inline (add's,
mul's, nearly every node) are written out, by rules.py, exactly as eager mode computes them,
and a forward that is an operator (`operator.add`) as the operator (a call saved per node and
pass). A replay builds no Value and no graph.

What a replay can follow: everything inside ops (relu's branch, a plugin's piecewise op),
new argument values, and new `.data` on the leaf Values the graph reads (parameters after an
optimizer step). What it cannot: Python control flow on `.data` in `fn` itself; the graph is
the one recorded. Such a read is detected while recording and raises `CompileError`
(or warns, with `strict=False`).

`Compiled.map(*batches)` replays the graph recorded for one sample on a whole batch at once,
with numpy (see batched.py); `backward(weights=...)` then sums the samples' gradients.
"""

from __future__ import annotations

import math
import random
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

from . import rules
from .codegen import (
    SUM_BLOCK,
    BatchWarning,
    Generated,
    Input,
    as_list,
    fill,
    literal,
    reachable,
)
from .engine import default_engine
from .errors import (
    AnomalyError,
    CompileError,
    describe,
    install_hint,
)
from .modes import ANOMALY, enable_grad, mode
from .ops import Row
from .reverse import begin_pass, end_pass, seed_gradient
from .value import Value, _real, engine_class

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BatchWarning", "Compiled", "CompileError", "CompileWarning", "compile"]


class CompileWarning(UserWarning):
    """A compiled function may not replay what eager mode would compute (`strict=False`)."""


# Compiled.map runs a large batch in chunks: by default, of as many samples as fit their data
# and gradient arrays in MAP_MEMORY bytes (in whole blocks of SUM_BLOCK samples: codegen.py).
MAP_MEMORY = 128 * 2**20


def numpy_missing(what: str) -> str:
    """What to say when `what` needs numpy and it is missing: a command that installs it
    into this very Python, whether opgraph came from an index or from a clone."""
    python = sys.executable or "python"
    return (
        f"{what} with numpy, which is not installed in this Python ({python}): "
        f"{install_hint('numpy', 'numpy')}"
    )


def compile(
    fn: Callable[..., Any],
    *example_args: Any,
    strict: bool = True,
    engine: Any = None,
) -> Compiled:
    """Record the graph `fn(*example_args)` builds, once, and return it compiled.

    Numbers in the arguments (also inside lists and tuples) are the inputs of the compiled
    function: `fn` receives them as leaf Values, and each call may pass new numbers. Any other
    argument (a model, a string) is fixed: later calls must pass the same object. `fn`
    returns a Value, or a tuple or list of Values (backward differentiates the first).

    With `strict=True` (the default), `fn` reading the `.data` of a Value of the graph while
    it is recorded raises CompileError: the replay could not follow what it did with it.
    `strict=False` warns instead. `engine` makes the input Values (default: the default engine).
    """
    if not callable(fn):
        raise TypeError(f"compile(fn, *example_args): fn must be callable, got {type(fn).__name__}")
    return Compiled(fn, example_args, strict=strict, engine=engine)


# ---------------------------------------------------------------------------------------------
# Arguments: numbers become inputs, the rest is fixed


def _template(obj: Any, make_input: Callable[[float, int], Value], count: list[int]) -> Any:
    """The arguments with each number replaced by an input Value, and their structure."""
    obj = as_list(obj)
    if isinstance(obj, list | tuple):
        parts = [_template(x, make_input, count) for x in obj]
        values = [value for value, _ in parts]
        return (type(obj)(values) if type(obj) in (list, tuple) else values), (
            type(obj),
            [shape for _, shape in parts],
        )
    if isinstance(obj, Value) or (isinstance(obj, Real) and not isinstance(obj, bool)):
        data = obj.data if isinstance(obj, Value) else float(obj)
        count[0] += 1
        return make_input(data, count[0] - 1), Input
    return obj, obj  # fixed: the object itself


# ---------------------------------------------------------------------------------------------
# Detecting reads of `.data` while recording


_DATA_PROPERTY = Value.__dict__["data"]  # the property over the slot `_data`
recording = threading.local()  # `active` while this thread records (grad() refuses to run)

# The reads noted by each thread that is recording, by thread id. While it is not empty,
# `Value.data` is `_NOTING`, which notes a read only in a thread that records: other threads
# (a logger reading the parameters, another compile) are neither blamed nor slowed more
# than by a dict lookup. When no thread records, `Value.data` is the plain property again, so
# eager code pays nothing.
_recorders: dict[int, list[tuple[Value, str, int]]] = {}
_recorders_lock = threading.Lock()

# Modules that read `.data` to run the graph itself, not to decide what graph to build.
# Plugins are not among them: a composite op that branches on `.data` cannot be replayed.
_ENGINE_MODULES = frozenset(
    {
        "opgraph.value",
        "opgraph.ops",
        "opgraph.binding",
        "opgraph.reverse",
        "opgraph.errors",
        __name__,
    }
)


def _is_engine_module(name: str) -> bool:
    return name in _ENGINE_MODULES or name.startswith(("opgraph.server", "opgraph.trac"))


def _noting_get(value: Value) -> float:
    """`Value.data` while some thread records: in a recording thread, note who reads it."""
    reads = _recorders.get(threading.get_ident())
    if reads is not None:
        caller = sys._getframe(1)
        if not _is_engine_module(caller.f_globals.get("__name__", "")):
            reads.append((value, caller.f_code.co_filename, caller.f_lineno))
    return value._data


_NOTING = property(_noting_get, _DATA_PROPERTY.fset, doc=_DATA_PROPERTY.__doc__)


class _DataReads:
    """While active, the reads of `.data` made in this thread outside the engine."""

    def __init__(self) -> None:
        self.reads: list[tuple[Value, str, int]] = []
        self.thread = threading.get_ident()

    def __enter__(self) -> _DataReads:
        with _recorders_lock:
            if self.thread in _recorders:
                raise CompileError(
                    "compile() is already recording a function in this thread: it cannot be "
                    "nested (compile the inner function before, outside the outer one)"
                )
            _recorders[self.thread] = self.reads
            if len(_recorders) == 1:  # the first thread to record: watch reads
                Value.data = _NOTING  # pyright: ignore[reportAttributeAccessIssue]
        recording.active = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        recording.active = False
        with _recorders_lock:
            del _recorders[self.thread]
            if not _recorders:  # the last one: the plain property again
                Value.data = _DATA_PROPERTY


class _RandomCalls:
    """While active, the calls this thread makes to the random module (a profile hook, so
    that nothing is patched for other threads; left off if a profiler is already on)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []  # (function, file, line of the call)
        self._on = False

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":  # a Python function: random.uniform, random.gauss ...
            if frame.f_globals.get("__name__") == "random" and frame.f_back is not None:
                caller = frame.f_back
                if caller.f_globals.get("__name__") != "random":  # not random's own calls
                    self._note(f"random.{frame.f_code.co_name}", caller)
        elif event == "c_call" and isinstance(getattr(arg, "__self__", None), random.Random):
            if frame.f_globals.get("__name__") != "random":  # random.random, getrandbits
                self._note(f"random.{arg.__name__}", frame)

    def _note(self, name: str, frame: Any) -> None:
        if len(self.calls) < 100:
            self.calls.append((name, frame.f_code.co_filename, frame.f_lineno))

    def __enter__(self) -> _RandomCalls:
        self._on = sys.getprofile() is None
        if self._on:
            sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._on:
            sys.setprofile(None)


class _OneRun:
    """The runs of one Compiled, one at a time, and the thread that made the last one.

    A Compiled keeps the state of its last run (call or map) for `backward()`. Runs from
    several threads wait for each other; a backward() whose thread did not make the last
    run is refused (its own run is gone), and so is a run started from inside a run.
    """

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.RLock()
        self._running = False
        self.last_thread: int | None = None  # the thread of the last call or map

    def __enter__(self) -> None:
        self._lock.acquire()
        if self._running:  # re-entered by the same thread (an op calling the function)
            self._lock.release()
            raise CompileError(
                f"compiled {self.name} was called again from inside its own run (by an op "
                f"of its graph?); a compiled function cannot call itself"
            )
        self._running = True

    def __exit__(self, *exc_info: Any) -> None:
        self._running = False
        self._lock.release()

    def started(self) -> None:
        """A call or map begins in this thread: backward() is now this thread's."""
        self.last_thread = threading.get_ident()

    def check_backward(self) -> None:
        if self.last_thread not in (None, threading.get_ident()):
            raise CompileError(
                f"compiled {self.name} is in use by another thread: it ran the function "
                f"after this thread's last call, and a compiled function keeps only its last "
                f"run for backward(); give each thread its own compiled function (compile() "
                f"in each thread), or hold a lock around each call and its backward()"
            )


# ---------------------------------------------------------------------------------------------
# The compiled function


class Compiled:
    """A recorded graph, replayed by generated Python code. Made by `opgraph.compile`.

    `compiled(*args)` runs the forward pass and returns the output as a float (a tuple of
    floats when `fn` returned several Values). `compiled.backward()` then adds d output /
    d leaf to the `.grad` of every leaf Value the graph reads, as eager `.backward()` would;
    the gradients of the inputs are in `input_grads`. Calls from several threads run one
    at a time, and `backward()` differentiates the last run, which must be the calling
    thread's (else CompileError): give each thread its own compiled function.

    `compiled.map(*batches)` runs the same graph on n samples at once (numpy needed) and
    returns arrays; `compiled.backward(weights=...)` after it adds the weighted sum of the
    samples' gradients into each parameter's `.grad`, and puts the per-sample gradients of
    the inputs in `batch_input_grads`. A batch runs `chunk_size` samples at a time.
    """

    _chunk_size: int | None = None  # None: as many samples as MAP_MEMORY allows

    def __init__(self, fn: Callable[..., Any], args: Sequence[Any], *, strict: bool, engine):
        started = time.perf_counter()
        self.fn = fn
        self.engine = engine or default_engine()
        name = getattr(fn, "__qualname__", repr(fn))
        self.name = name
        inputs: list[Value] = []

        def make_input(data: float, index: int) -> Value:
            inputs.append(self.engine.value(data, label=f"input{index}"))
            return inputs[-1]

        values, self._shape = _template(tuple(args), make_input, [0])
        self.inputs = inputs
        marker = self.engine.value(0.0)  # nodes with larger ids are made while recording
        with _DataReads() as reads, _RandomCalls() as draws, enable_grad():
            result = fn(*values)
        self.outputs, self._single = _outputs(result, name)
        if engine_class(self.outputs[0]) is not self.engine.Value:
            raise CompileError(
                f"compile({name}): the graph belongs to engine "
                f"{self.outputs[0].engine.name!r}; pass engine= to compile()"
            )
        self.nodes = reachable(self.outputs)
        self.index = {id(node): i for i, node in enumerate(self.nodes)}  # node -> its number
        # a row of the batched arrays for each input and op node (chunk_size)
        self._rows = len(inputs) + sum(1 for node in self.nodes if node._opdef is not None)
        self._classify(marker._id)
        self._parameter_set = frozenset(self.parameters)  # the grads backward() writes
        self._check_reads(reads.reads, strict)
        self._warn_random(draws.calls)
        self._program = _Program(self)
        self.input_grads: list[float] = [0.0] * len(inputs)
        self._batched: Any = None  # the batched program, made at the first map()
        self._batch_layout: Any = None  # the arguments' sizes, found at the first map()
        self._mapped = False  # was the last run map() (not a call)?
        self.batch_input_grads: Any = None  # (n, inputs) array after map() and backward()
        self._one_run = _OneRun(name)
        self.compile_seconds = time.perf_counter() - started

    def __repr__(self) -> str:
        return (
            f"<Compiled {self.name}: {len(self.nodes)} nodes, {len(self.parameters)} "
            f"parameters, {len(self.inputs)} inputs, compiled in {self.compile_seconds:.3f} s>"
        )

    @property
    def chunk_size(self) -> int:
        """How many samples `map` runs at once: a larger batch runs in chunks of this many,
        so that its memory is bounded by the chunk, not by the batch. By default, as many
        as fit the chunk's data and gradient arrays (8 bytes per sample for each of their
        rows) in MAP_MEMORY bytes; a multiple of SUM_BLOCK. Set it to a multiple of
        SUM_BLOCK to change it, or to None for the default.

        Before the first map() the rows are counted from the graph (one per input and op
        node, in both arrays); after it, those the batched replay made (a sum of products
        is one row, not one per add and mul)."""
        if self._chunk_size is not None:
            return self._chunk_size
        if self._batched is not None:
            per_sample = self._batched.bytes_per_sample
        else:  # an input's or op node's row, in both arrays: counted once, nodes never change
            per_sample = 16 * self._rows
        return max(SUM_BLOCK, MAP_MEMORY // per_sample // SUM_BLOCK * SUM_BLOCK)

    @chunk_size.setter
    def chunk_size(self, size: int | None) -> None:
        if size is None:
            self._chunk_size = None
            return
        if type(size) is not int or size <= 0 or size % SUM_BLOCK:
            raise CompileError(
                f"compiled {self.name}: chunk_size must be a positive multiple of {SUM_BLOCK} "
                f"(gradients are summed over blocks of {SUM_BLOCK} samples, the same whatever "
                f"the chunks), got {size!r}"
            )
        self._chunk_size = size

    @property
    def source(self) -> str:
        """The generated Python source of the forward and backward passes."""
        return self._program.source

    @property
    def batch_source(self) -> str | None:
        """The generated numpy code of the batched replay (None before the first `map`),
        then the Python code of the nodes it computes once per batch, if any."""
        return self._batched.full_source if self._batched is not None else None

    def _classify(self, first_id: int) -> None:
        """Sort the graph's leaves into inputs, constants made by `fn`, and parameters."""
        input_ids = {id(v) for v in self.inputs}
        self.parameters: list[Value] = []  # leaves made before fn ran: read at every call
        for node in self.nodes:
            if node._opdef is None and id(node) not in input_ids and node._id <= first_id:
                self.parameters.append(node)

    def _check_reads(self, reads: list[tuple[Value, str, int]], strict: bool) -> None:
        """Complain about reads of `.data` on nodes whose data a replay may change."""
        varying = {id(v) for v in self.nodes if v._opdef is not None}
        varying.update(id(v) for v in self.inputs)
        varying.update(id(v) for v in self.parameters)
        unsafe = [(v, f, line) for v, f, line in reads if id(v) in varying]
        if not unsafe:
            return
        shown = "; ".join(
            f"{describe(v)}{f' (op {v._opdef.name!r})' if v._opdef else ''} at {f}:{line}"
            for v, f, line in unsafe[:3]
        )
        more = f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else ""
        message = (
            f"compile({self.name}): the function read the .data of {len(unsafe)} Value(s) of "
            f"its graph while being recorded: {shown}{more}. A compiled replay follows the "
            f"recorded graph and cannot follow Python decisions made on .data; return such "
            f"values as extra outputs instead, or pass strict=False to compile anyway"
        )
        if strict:
            raise CompileError(message)
        warnings.warn(message, CompileWarning, stacklevel=4)

    def _warn_random(self, calls: list[tuple[str, str, int]]) -> None:
        """Warn when the function drew random numbers while being recorded: a replay reuses
        the numbers drawn then, at every call (a model built inside the function, dropout)."""
        if not calls:
            return
        shown = "; ".join(f"{name} at {file}:{line}" for name, file, line in calls[:3])
        more = f" and {len(calls) - 3} more" if len(calls) > 3 else ""
        model = (
            " The compiled function has 0 parameters: a model built inside the function is "
            "built once, and its weights are constants of the replay; build it outside and call "
            "it inside."
            if not self.parameters
            else ""
        )
        warnings.warn(
            f"compile({self.name}): the function called the random module while being "
            f"recorded: {shown}{more}. A replay reuses the numbers drawn then, at every call."
            f"{model} Draw random numbers outside the function and pass them as arguments.",
            CompileWarning,
            stacklevel=4,
        )

    # --- running --------------------------------------------------------------------------

    def __call__(self, *args: Any) -> float | tuple[float, ...]:
        numbers: list[float] = []
        fill(self._shape, tuple(args), numbers, "arguments")
        checked = bool(mode.get() & ANOMALY or self.engine.detect_anomaly)
        with self._one_run:
            self._one_run.started()
            self._mapped = False
            outputs = self._program.run(numbers, checked)
        return outputs[0] if self._single else outputs

    def map(self, *batches: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the graph on n samples at once: the first output as a float64 array of
        shape (n,), or a tuple of arrays when `fn` returned several Values.

        Each argument holds n samples with the structure of its example argument: a list or
        tuple of n samples, or a numpy array whose first axis is the batch (fixed arguments,
        such as a model, are passed as themselves). Parameters are shared by all samples.
        Each sample's results are those of a call on it. Needs numpy (`opgraph[numpy]`).
        """
        try:
            from .batched import BatchedProgram, batch_inputs
        except ImportError as exc:
            if "numpy" not in str(exc):
                raise
            raise ImportError(numpy_missing("Compiled.map() runs the batch"), name="numpy") from exc
        inputs = batch_inputs(self, batches)
        checked = bool(mode.get() & ANOMALY or self.engine.detect_anomaly)
        with self._one_run:
            self._one_run.started()
            if self._batched is None:
                self._batched = BatchedProgram(self)
            self._mapped = True  # backward() is now the batched one (an error if this fails)
            outputs = self._batched.run(inputs, checked, self.chunk_size)
            self.batch_input_grads = self._batched.zeros((self._batched.n, len(self.inputs)))
        return outputs[0] if self._single else tuple(outputs)

    def zero_grad(self) -> None:
        """Set the `.grad` of every parameter, and every input gradient, to 0."""
        with self._one_run:
            for p in self.parameters:
                p.grad = 0.0
            self.input_grads = [0.0] * len(self.inputs)
            if self.batch_input_grads is not None:
                self.batch_input_grads = self._batched.zeros(self.batch_input_grads.shape)

    def backward(self, gradient: float = 1.0, *, weights: Any = None) -> None:
        """Add d output / d leaf (times `gradient`) to each parameter's `.grad`.

        The output is the first one `fn` returned. Gradients accumulate, as in eager mode;
        zero them (for example with `model.zero_grad()`) between steps.

        After `map()`, it adds the sum over the batch of each sample's gradient times its
        weight (`weights`: n numbers, default all 1), and adds each sample's input gradients
        to the rows of `batch_input_grads`.
        """
        seed = seed_gradient(gradient)
        # Not alongside another run of this function, nor an eager pass (or another replay)
        # that shares these parameters.
        with self._one_run:
            self._one_run.check_backward()
            running = begin_pass(self._parameter_set, None, f"compiled {self.name}.backward()")
            try:
                self._backward(seed, weights)
            finally:
                end_pass(running)

    def _backward(self, seed: float, weights: Any) -> None:
        if self._mapped:
            self._batched_backward(seed, weights)
            return
        if weights is not None:
            raise CompileError(
                f"compiled {self.name}: weights= is for backward() after map(); the last "
                f"run was a call on one sample"
            )
        grads = self._program.backward(seed)
        for i, g in enumerate(grads):
            self.input_grads[i] += g

    def _batched_backward(self, gradient: float, weights: Any) -> None:
        import numpy as np

        if not self._batched.ready:  # the last map() failed
            raise CompileError(f"compiled {self.name}: call map() before backward()")
        n = self._batched.n
        if weights is None:
            seed = np.full(n, float(gradient))
        else:
            seed = np.asarray(weights)
            if seed.dtype.kind not in "fiu" or seed.shape != (n,):
                raise CompileError(
                    f"compiled {self.name}: weights must be {n} numbers, one per sample of the "
                    f"last map(); got {type(weights).__name__} of dtype {seed.dtype} and shape "
                    f"{seed.shape}"
                )
            # float64 weights are multiplied as they are (the same numbers, without a copy)
            seed = seed.astype(np.float64, copy=False) * float(gradient)
        self.batch_input_grads += self._batched.backward(seed)


def _real_grad(parameter: Value, grad: Any) -> float:
    """A replayed grad that is not a float, as a float, or the TypeError `.grad = ` raises."""
    return _real(grad, parameter, "grad")


def _outputs(result: Any, name: str) -> tuple[list[Value], bool]:
    if isinstance(result, Value):
        return [result], True
    if isinstance(result, list | tuple) and result and all(isinstance(v, Value) for v in result):
        return list(result), False
    raise CompileError(
        f"compile({name}): the function must return a Value or a tuple of Values, "
        f"got {type(result).__name__}: {result!r}"
    )


# ---------------------------------------------------------------------------------------------
# Code generation


# A node inlined into its user's expression nests it one level deeper: past this many nodes in
# one expression, the next gets a line of its own, so that a sum of 10,000 terms stays far
# below the 200 levels of parentheses CPython's parser takes ("too many nested parentheses").
MAX_INLINED = 100
# Ops whose forward and partials, on floats, give floats (see _only_float_arithmetic).
_FLOAT_ARITHMETIC = ("add", "subtract", "multiply")
_VALUE_NAME = re.compile(r"\bv(\d+)\b")  # a node's value in the generated code: `v12`


class _Program(Generated):
    """The generated replay function of one recorded graph.

    Node i of the graph is the local variable `v{i}` (its data), and its gradient a local
    variable such as `g{i}`. The function is a generator: it reads the inputs and parameters,
    computes the nodes in order, and yields the outputs; sent a seed gradient, it runs the
    chain rule line by line in reverse, adds into the parameters' grads, and yields the
    inputs' grads. Its locals stay alive between the two, so nothing is copied from forward
    to backward.

    The function that runs is fused (`_generate`): a chain of arithmetic is one expression,
    and a gradient passed on unchanged (an add's) is not copied. The version that checks
    every result (detect_anomaly) is not, and neither is the one made, on the first failure
    inside a fused line, to find which of its nodes failed (`_unfused_error`).
    """

    def __init__(self, compiled: Compiled):
        self.compiled = compiled
        self.index = compiled.index
        self.outputs = [self.index[id(v)] for v in compiled.outputs]
        self.namespace: dict[str, Any] = dict(rules.NAMESPACE)  # inf, nan, IEEE div, power
        self._names: dict[int, str] = {}
        self._checked: tuple[Callable, dict[int, int]] | None = None
        self._unfused: tuple[Callable, dict[int, int]] | None = None
        self._filenames: set[str] = set()
        self.fused_lines: set[int] = set()  # lines of the fused source computing several nodes
        self.source, self.lines = self._generate(checked=False)
        self.replay = self._build(self.source)
        self._running: Any = None  # the generator of the last call, waiting for backward

    # --- the source -----------------------------------------------------------------------

    def _arguments(
        self, op: Row, parents: list[int], inlined: dict[int, str] | None = None
    ) -> tuple[Row, list[str], list[int]]:
        """The op to call, its argument expressions, and which partials belong to parents.
        A parent is `v{p}`, or its expression when it is in `inlined`."""
        names = [inlined[p] if inlined and p in inlined else f"v{p}" for p in parents]
        if op.base is None:
            return op, names, list(range(len(parents)))
        fixed = dict(op.constants)  # an op with constants baked in: call the full op
        rest = iter(names)
        args = [literal(fixed[i]) if i in fixed else next(rest) for i in range(op.base.arity)]
        return op.base, args, [i for i in range(op.base.arity) if i not in fixed]

    def _generate(self, checked: bool, fuse: bool = True) -> tuple[str, dict[int, int]]:
        """The source of the replay function, and which node each line computes.

        Fused (unless `checked`, or `fuse` is False): a node whose forward is inline
        arithmetic (`a * b`, rules.forward_source) is written inside its user's expression,
        in parentheses, when that user is inline arithmetic too, uses it once, and nothing
        else reads its value (it is not an output, and no backward line names it: mul's
        partials read its operands, tanh's its output). A neuron `b + w0*x0 + w1*x1 + ...`
        is one line. Python evaluates it left to right, the same float operations on the
        same operands as one line per node, so the results are the same to the bit.
        """
        fuse = fuse and not checked
        for k, p in enumerate(self.compiled.parameters):
            self.namespace[f"P{k}"] = p
        backward = self._backward_lines(checked, fuse)
        read = {int(i) for text, _ in backward for i in _VALUE_NAME.findall(text)}
        inline = self._inlinable(read) if fuse else set()
        forward, fused = self._forward_lines(checked, inline)
        code = ["def replay(x):"]
        lines: dict[int, int] = {}  # line number (from 1) -> node index
        for text, node in forward + backward:
            code.append("    " + text)
            if node is not None:
                lines[len(code)] = node
        if fuse:  # the forward lines of several nodes (a node's backward lines are its own)
            forward_lines = range(2, len(forward) + 2)
            self.fused_lines = {n for n in forward_lines if lines.get(n) in fused}
        return "\n".join(code) + "\n", lines

    def _inlinable(self, read: set[int]) -> set[int]:
        """The op nodes the fused forward may write inside their user's expression (see
        `_generate`); `read`: the nodes whose value the backward lines read."""
        nodes, index = self.compiled.nodes, self.index
        inline_forward: dict[int, bool] = {}
        users: dict[int, list[int]] = {}
        for j, node in enumerate(nodes):
            if node._opdef is None:
                continue
            op = node._opdef.base or node._opdef  # the op called (see _arguments)
            inline_forward[j] = op.forward in rules.SCALAR_INFIX  # (forward_source writes it)
            for p in node._prev:
                users.setdefault(index[id(p)], []).append(j)  # twice for `x * x`
        outputs = set(self.outputs)
        return {
            i
            for i, inline in inline_forward.items()
            if inline
            and len(users.get(i, ())) == 1
            and inline_forward[users[i][0]]
            and i not in outputs
            and i not in read
        }

    def _forward_lines(
        self, checked: bool, inline: set[int]
    ) -> tuple[list[tuple[str, int | None]], set[int]]:
        """Forward: inputs, parameters and constants first met, then a line per op node
        not in `inline`, and the yield of the outputs. Also the nodes whose line is fused."""
        compiled, index = self.compiled, self.index
        inputs = {id(v): k for k, v in enumerate(compiled.inputs)}
        parameters = {id(v): k for k, v in enumerate(compiled.parameters)}
        out: list[tuple[str, int | None]] = []
        pending: dict[int, tuple[str, int]] = {}  # inlined node -> (expression, its nodes)
        fused: set[int] = set()
        for i, node in enumerate(compiled.nodes):
            op = node._opdef
            if op is None:
                if id(node) in inputs:
                    out.append((f"v{i} = x[{inputs[id(node)]}]", None))
                elif id(node) in parameters:
                    out.append((f"v{i} = P{parameters[id(node)]}._data", None))
                else:  # a constant made while recording
                    out.append((f"v{i} = {literal(node._data)}", None))
                continue
            parents = [index[id(p)] for p in node._prev]
            inlined = {p: f"({pending[p][0]})" for p in parents if p in pending}
            size = 1 + sum(pending.pop(p)[1] for p in inlined)
            call_op, args, _ = self._arguments(op, parents, inlined)
            expression = rules.forward_source(call_op, args)
            if expression is None:
                expression = f"{self._name(call_op.forward, call_op.name)}({', '.join(args)})"
            if i in inline and size < MAX_INLINED:
                pending[i] = (expression, size)  # written inside its user's line
                continue
            out.append((f"v{i} = {expression}", i))
            if size > 1:
                fused.add(i)
            if checked:  # (isfinite of a complex raises: the error names node i too)
                out.append((f"if not isfinite(v{i}): forward_anomaly({i}, v{i})", i))
        assert not pending  # (each was taken into its one user's expression)
        out.append((f"seed = yield ({''.join(f'v{i}, ' for i in self.outputs)})", None))
        return out, fused

    def _backward_lines(self, checked: bool, fuse: bool) -> list[tuple[str, int | None]]:
        """Backward, as often as it is asked for: the chain rule from the first output down.

        Fused: a parent whose first term is the node's gradient itself (an add's partial of
        1) is given the node's variable instead of a copy of it; a variable shared so is
        added into in place only once no node still to be processed reads it (else the
        sum goes into a variable of the parent's own: `g4 = g9 + ...`). A gradient that
        nobody reads (a constant's) is not computed.
        """
        nodes, index = self.compiled.nodes, self.index
        root = self.outputs[0]
        out: list[tuple[str, int | None]] = [("while True:", None), (f"    g{root} = seed", None)]
        needed = self._needed() if fuse else None
        grad = {root: f"g{root}"}  # node -> the variable that holds its gradient
        sharers = {f"g{root}": {root}}  # variable -> the nodes still reading it
        for i in range(len(nodes) - 1, -1, -1):
            op = nodes[i]._opdef
            if op is None or i not in grad or (needed is not None and i not in needed):
                continue  # a leaf, a node the first output does not depend on, or no use
            parents = [index[id(p)] for p in nodes[i]._prev]
            call_op, args, keep = self._arguments(op, parents)
            g = grad[i]
            if call_op.partials is not None:  # inline: the rule's terms written out
                partials = rules.partial_sources(call_op.partials, f"v{i}", args, ieee=True)
                terms = [
                    rules.term_source(call_op.partials, k, f"v{i}", args, g, ieee=True)
                    for k in range(len(args))
                ]
            else:
                d = self._name(call_op.derivative, f"d_{call_op.name}")
                # The partials unpack into d0, d1, ...; a wrong count fails on this line.
                partials = [f"d{k}" for k in range(len(args))]
                out.append((f"    {', '.join(partials)}, = {d}(v{i}, {', '.join(args)})", i))
                terms = [f"{d} * {g}" for d in partials]
            for k, parent in zip(keep, parents, strict=True):
                if needed is not None and parent not in needed:
                    continue
                line = self._contribution(parent, terms[k], g if fuse else None, grad, sharers)
                if line is None:
                    continue
                out.append((line, i))
                if checked:
                    check = f"backward_anomaly({i}, {partials[k]}, {grad[parent]})"
                    out.append((f"    if not isfinite({grad[parent]}): {check}", None))
            sharers[g].discard(i)  # node i has read its gradient for the last time
        floats = self._only_float_arithmetic()
        for k, p in enumerate(self.compiled.parameters):
            if index[id(p)] in grad:
                # `_grad` directly, with `.grad`'s check: a grad that is not a float (a
                # plugin's complex partial) is converted or refused, naming the parameter.
                g = grad[index[id(p)]]
                check = "" if floats else f" if type({g}) is float else real_grad(P{k}, {g})"
                out.append((f"    P{k}._grad += {g}{check}", None))
        grads = [grad.get(index.get(id(v), -1), "0.0") for v in self.compiled.inputs]
        out.append((f"    seed = yield [{', '.join(grads)}]", None))  # unused input: 0.0
        return out

    def _only_float_arithmetic(self) -> bool:
        """Whether every op of the graph adds, subtracts or multiplies with its inline
        partials: then every gradient is a float (the inputs, parameters' data, constants
        and the seed are floats), and `.grad`'s check of each parameter's sum can go."""
        for node in self.compiled.nodes:
            if node._opdef is None:
                continue
            op = node._opdef.base or node._opdef
            if op.partials is None or rules.forward_ufunc(op) not in _FLOAT_ARITHMETIC:
                return False
        return True

    @staticmethod
    def _contribution(
        parent: int,
        term: str,
        alias: str | None,
        grad: dict[int, str],
        sharers: dict[str, set[int]],
    ) -> str | None:
        """The line adding `term` to `parent`'s gradient (`grad` and `sharers` updated), or
        None when the term is `alias` (the node's variable, when fused) and the parent takes
        that name for its gradient."""
        if parent not in grad:
            if alias is not None and term == alias:
                grad[parent] = alias  # the same number: no copy
                sharers[alias].add(parent)
                return None
            grad[parent] = f"g{parent}"
            sharers[f"g{parent}"] = {parent}
            return f"    g{parent} = {term}"
        if sharers[grad[parent]] == {parent}:  # its own, or no other node reads it still
            return f"    {grad[parent]} += {term}"
        shared, grad[parent] = grad[parent], f"g{parent}"  # x = x + t is x += t, to the bit
        sharers[shared].discard(parent)
        sharers[f"g{parent}"] = {parent}
        return f"    g{parent} = {shared} + {term}"

    def _needed(self) -> set[int]:
        """The nodes whose gradient is read: the inputs and parameters, and the op nodes
        with one of them among their ancestors."""
        leaves = {id(v) for v in self.compiled.inputs} | {id(v) for v in self.compiled.parameters}
        needed: set[int] = set()
        for i, node in enumerate(self.compiled.nodes):
            if node._opdef is None:
                if id(node) in leaves:
                    needed.add(i)
            elif any(self.index[id(p)] in needed for p in node._prev):
                needed.add(i)
        return needed

    kind = "opgraph.compile"

    def _build(self, source: str) -> Callable:
        return self._exec(
            source,
            isfinite=math.isfinite,
            real_grad=_real_grad,
            forward_anomaly=self._line_forward_anomaly,
            backward_anomaly=self._line_backward_anomaly,
        )

    # --- running, and errors that name the node -------------------------------------------

    def run(self, numbers: list[float], checked: bool) -> tuple:
        replay, lines = self._function(checked)
        self._running = None
        running = replay(numbers)
        try:
            outputs = next(running)
        except AnomalyError:
            raise
        except Exception as exc:
            cause = exc
            if not checked and self._failing_line(exc) in self.fused_lines:
                cause, lines = self._unfused_error(numbers, exc)
            raise self._error(cause, lines, "forward") from cause
        if not all(type(out) is float for out in outputs):
            self._refuse_unreal(numbers, outputs)
        self._running, self._lines = running, lines
        return outputs

    def _refuse_unreal(self, numbers: list[float], outputs: tuple) -> None:
        """An output that is not a real number (a plugin's forward went complex on these
        inputs: `a ** 0.5` of a negative `a`) is never returned: the checking replay, one
        node per line, names the node that made it, as eager mode refuses it."""
        if all(isinstance(out, Real) for out in outputs):
            return  # (an int from a plugin's forward: a real number, as eager takes it)
        raise self._checked_error(numbers) or CompileError(  # (or: while the checks see all)
            f"compiled {self.compiled.name}: an output is not a real number: {outputs!r}"
        )

    def _unfused_error(self, numbers: list[float], exc: Exception) -> tuple[Exception, dict]:
        """`exc` came from a fused line, which computes several nodes: the same inputs run
        through the replay of one node per line (made now, once) tell which node failed.
        Returns its error and lines, or `exc` if it does not fail (an op that is random)."""
        if self._unfused is None:
            source, lines = self._generate(checked=False, fuse=False)
            self._unfused = (self._build(source), lines)
        replay, lines = self._unfused
        try:
            next(replay(numbers))
        except Exception as precise:
            return precise, lines
        return exc, {}

    def backward(self, seed: float) -> list[float]:
        if self._running is None:
            raise CompileError(f"compiled {self.compiled.name}: call it before backward()")
        try:
            return self._running.send(seed)
        except AnomalyError:
            self._running = None
            raise
        except Exception as exc:
            self._running = None
            raise self._error(exc, self._lines, "backward") from exc
