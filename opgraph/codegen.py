"""What compiled replay (compiler.py) and batched replay (batched.py) share: the arguments'
structure (`Input`, `fill`), the nodes a recording holds (`reachable`), generated source run
with exec and registered with linecache (`Generated`), numbers written as source (`literal`),
and the batch's rules (`SUM_BLOCK`, `BatchWarning`). Below both, so that batched.py, which
imports numpy, imports nothing of compiler.py, and compiler.py loads batched.py only when
`Compiled.map` runs.
"""

from __future__ import annotations

import builtins
import itertools
import linecache
import math
import weakref
from collections.abc import Callable
from numbers import Real
from typing import TYPE_CHECKING, Any

from .errors import AnomalyError, CompileError, NotRealError, op_error, wrong_partials
from .reverse import topological_order
from .rules import real_partial
from .value import Value

if TYPE_CHECKING:
    from types import FrameType

    from .compiler import Compiled

# A parameter's gradient is summed over a batch in blocks of SUM_BLOCK samples, so that the
# chunks Compiled.map runs (whole blocks) do not change its bits.
SUM_BLOCK = 128


class BatchWarning(UserWarning):
    """An op has no array kernels: `Compiled.map` applies its scalar functions one by one."""


class Input:
    """Where an input number sits in the arguments' structure."""


def as_list(obj: Any) -> Any:
    """A numpy array as nested lists of floats (its structure); anything else as it is.

    Recognised by its type's module, so that the scalar engine never imports numpy.
    """
    if type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray":
        return obj.tolist()
    return obj


def fill(shape: Any, obj: Any, out: list[float], where: str) -> None:
    """Append the input numbers of `obj` to `out`, checking it has the recorded structure."""
    if shape is Input:
        if isinstance(obj, Value):
            out.append(obj.data)
        elif isinstance(obj, Real) and not isinstance(obj, bool):
            out.append(float(obj))
        else:
            raise CompileError(f"{where}: expected a number, got {type(obj).__name__}: {obj!r}")
    elif isinstance(shape, tuple) and len(shape) == 2 and shape[0] in (list, tuple):
        kind, items = shape
        if not isinstance(obj, list | tuple):
            obj = as_list(obj)  # a numpy array where a list was recorded
        if not isinstance(obj, list | tuple) or len(obj) != len(items):
            size = len(obj) if isinstance(obj, list | tuple) else None
            raise CompileError(
                f"{where}: recorded as a {kind.__name__} of {len(items)} items, got "
                f"{type(obj).__name__}"
                + (f" of {size} items" if size is not None else "")
                + "; compile again for other shapes"
            )
        for i, (item_shape, item) in enumerate(zip(items, obj, strict=True)):
            fill(item_shape, item, out, f"{where}[{i}]")
    elif obj is not shape:
        raise CompileError(
            f"{where}: this argument is fixed in the compiled graph (it is not a number); "
            f"it was {shape!r} when compiled, now {obj!r}; compile again to change it"
        )


def reachable(outputs: list[Value]) -> list[Value]:
    """Every node the outputs depend on, in creation (topological) order."""
    if len(outputs) == 1:
        return topological_order(outputs[0])
    seen: dict[int, Value] = {}
    for output in outputs:
        for node in topological_order(output):
            seen[id(node)] = node
    return sorted(seen.values(), key=lambda v: v._id)


_sources = itertools.count(1)  # numbers the generated sources' names


class Generated:
    """What compiled and batched replay share: generated source run with exec, a checking
    version of it made on first use (under detect_anomaly), and the line an error came from.

    The source is registered with `linecache` under a name of its own, such as
    `<opgraph.compile loss#3>`, so that a traceback through it shows the generated line; it
    is forgotten with the program. A subclass sets `kind` (the name's prefix), `namespace`,
    `replay`, `lines`, `_checked` and `_filenames` (an empty set before the first `_exec`),
    `_names` (an empty dict) if its code calls plugin functions by name (`_name`), and
    writes `_generate(checked)` and `_build(source)`.
    """

    kind: str
    compiled: Compiled
    namespace: dict[str, Any]
    replay: Callable
    lines: dict[int, int]
    _checked: tuple[Callable, dict[int, int]] | None
    _filenames: set[str]
    _names: dict[int, str]

    def _exec(self, source: str, **names: Any) -> Callable:
        """The `replay` function that `source` defines, with `names` in its globals."""
        filename = f"<{self.kind} {self.compiled.name}#{next(_sources)}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        weakref.finalize(self, linecache.cache.pop, filename, None)
        self._filenames.add(filename)
        namespace = {**self.namespace, **names}
        exec(builtins.compile(source, filename, "exec"), namespace)
        return namespace["replay"]

    def _name(self, fn: Callable, hint: str) -> str:
        """A global name in the generated code for a plugin function (`_names`: by the
        function's id, those given so far)."""
        if id(fn) not in self._names:
            name = f"{hint}_{len(self._names)}"
            self._names[id(fn)] = name
            self.namespace[name] = fn
        return self._names[id(fn)]

    def _function(self, checked: bool) -> tuple[Callable, dict[int, int]]:
        if not checked:
            return self.replay, self.lines
        if self._checked is None:  # detect_anomaly(): a second program, checking every line
            source, lines = self._generate(checked=True)
            self._checked = (self._build(source), lines)
        return self._checked

    def _generate(self, checked: bool) -> tuple[str, dict[int, int]]:
        """The source of `replay` and, for each of its lines, the node it computes."""
        raise NotImplementedError

    def _build(self, source: str) -> Callable:
        """The `replay` function of `source` (by `_exec`, with the names it needs)."""
        raise NotImplementedError

    # How the errors of a line of scalar code name the replay: "failed in compiled forward
    # of loss", or for batched replay's hoisted nodes, "batched" and a note.
    words = "compiled"
    note = ""

    def _error(self, exc: Exception, lines: dict[int, int], where: str) -> Exception:
        """`exc` from a line of scalar code as an OpError naming the node the line computes
        (its op, plugin and label), or `exc` itself if it came from no such line. A
        TypeError or ValueError in backward is first traced to a derivative that returns a
        partial that is not a real number (a complex one or an array fails only later, where
        numbers are added)."""
        line = self._failing_line(exc)
        traced = where == "backward" and isinstance(exc, TypeError | ValueError)
        unreal = _not_real(self._derived()) if traced else None
        if unreal is not None:
            node, why = unreal
            detail = f"{why} (then: {exc})"
        elif line in lines:
            node = self.compiled.nodes[lines[line]]
            detail = _recount(node, where) or f"{type(exc).__name__}: {exc}"
        else:
            return exc
        return op_error(
            node._opdef,
            f"failed in {self.words} {where} of {self.compiled.name}{self.note}",
            node=node,
            inputs=node._prev,
            recorded=True,
            detail=detail,
        )

    def _checked_error(self, *args: Any) -> Exception | None:
        """After a forward that made a number that is not real (a plugin's `a ** 0.5` of a
        negative `a`), which the unchecked code meets only where it stores or returns it:
        the checking replay, a check per node, run on `args`, stops at the node that made
        it. Its error naming that node, or None if it stops on no node's line or passes.
        An AnomalyError (an inf before it) propagates."""
        replay, lines = self._function(True)
        try:
            next(replay(*args))
        except AnomalyError:
            raise
        except Exception as exc:
            error = self._error(exc, lines, "forward")
            if error is not exc:
                error.__cause__ = exc
                return error
        return None

    def _derived(self) -> list[Value]:
        """The nodes whose derivatives this code calls (all of the recording's)."""
        return self.compiled.nodes

    def _line_forward_anomaly(self, i: int, out: float) -> None:
        """detect_anomaly(): node i of scalar code produced inf or nan."""
        node = self.compiled.nodes[i]
        raise op_error(
            node._opdef,
            f"produced {out} in {self.words} forward of {self.compiled.name}{self.note}",
            node=node,
            error=AnomalyError,
        )

    def _line_backward_anomaly(self, i: int, partial: float, grad: float) -> None:
        """detect_anomaly(): a gradient through node i of scalar code is inf or nan."""
        node = self.compiled.nodes[i]
        raise op_error(
            node._opdef,
            f"gave a non-finite gradient in {self.words} backward of {self.compiled.name}"
            f"{self.note}",
            node=node,
            detail=f"partial {partial}, grad {grad}",
            error=AnomalyError,
        )

    def _failing_line(self, exc: Exception) -> int | None:
        """The line of the generated source where `exc` was raised, if it was raised there."""
        found = self._failing_frame(exc)
        return found[1] if found is not None else None

    def _failing_frame(self, exc: Exception) -> tuple[FrameType, int] | None:
        """The frame of generated code where `exc` was raised, and its line, if it was."""
        tb, found = exc.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename in self._filenames:
                found = tb.tb_frame, tb.tb_lineno
            tb = tb.tb_next
        return found


def _partials_again(node: Value) -> tuple[Any, int] | None:
    """`node`'s partials, its op's derivative called again on the recorded inputs (the full
    op, as the generated line calls it), and how many there should be; None if it raises."""
    made = node._opdef
    assert made is not None  # (a line of the generated code computes a node an op made)
    op = made.base or made
    args = [p._data for p in node._prev]
    if op is not made:
        fixed, rest = dict(made.constants), iter(args)
        args = [fixed[i] if i in fixed else next(rest) for i in range(op.arity)]
    try:
        return tuple(op.derivative(node._data, *args)), op.arity
    except Exception:
        return None


def _recount(node: Value, where: str) -> str | None:
    """After a failed backward line: the problem if `node`'s derivative returns the wrong
    number of partials, else None."""
    found = _partials_again(node) if where == "backward" else None
    if found is None:
        return None
    partials, arity = found
    return wrong_partials(arity, partials) if len(partials) != arity else None


def _not_real(nodes: list[Value]) -> tuple[Value, NotRealError] | None:
    """The first of `nodes` whose op's derivative function (inline partials are numbers by
    construction) returns a partial that is not a real number, and eager's error for it."""
    for node in nodes:
        if node._opdef is None or node._opdef.partials is not None:
            continue
        found = _partials_again(node)
        for partial in found[0] if found is not None else ():
            try:
                real_partial(partial)
            except NotRealError as why:
                return node, why
    return None


def literal(x: float) -> str:
    """A float as Python source that evaluates to exactly it."""
    if math.isfinite(x):
        return repr(float(x))
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
