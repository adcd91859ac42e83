"""Compiled.map: one recorded per-sample graph replayed over a batch with numpy.

Every result is compared with eager opgraph run on each sample alone: the per-sample outputs
and input gradients to 1e-12 relative, the parameters' gradients (sums over the batch) to
1e-9. numpy's elementary functions may differ from Python's `math` in the last bit, and
gradients are summed in another order, so "equal" here is "equal to those tolerances".
"""

from __future__ import annotations

import math
import operator
import random
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from conftest import plugin
from dags import OPS, programs, run
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import opgraph
from opgraph import AnomalyError, CompileError, Engine, Op, OpError, Value
from opgraph.compiler import BatchWarning
from opgraph.ops import Row, check
from opgraph.plugins import activations, arithmetic, exponential


def close(a: float, b: float, rel: float = 1e-12, scale: float = 0.0) -> bool:
    """Equal to `rel` relative (of the larger of a, b and `scale`); nan equals nan, and
    infinities must have the same sign."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b), scale)


def assert_close(actual, expected, rel: float = 1e-12, what: str = "", rows: bool = False):
    """Item by item. With `rows`, a gradient that cancels to about zero is compared relative
    to the largest finite gradient of its row (its sample), or to 1: summed in another
    order, terms that cancel leave another rounding error (4e-16 where eager has 0)."""
    actual, expected = np.atleast_2d(actual).tolist(), np.atleast_2d(expected).tolist()
    assert len(actual) == len(expected)
    for r, (row, expected_row) in enumerate(zip(actual, expected, strict=True)):
        finite = [abs(x) for x in expected_row if math.isfinite(x)]
        scale = max([1.0, *finite]) if rows else 0.0
        for i, (a, b) in enumerate(zip(row, expected_row, strict=True)):
            assert close(a, b, rel, scale), f"{what} [{r}, {i}]: batched {a!r}, eager {b!r}"


# --- the moons model ---------------------------------------------------------------------------


def mlp(seed: int = 0, sizes=(2, 16, 16, 1)) -> list:
    """micrograd's MLP as lists of (weights, bias), relu on every layer but the last."""
    rng = random.Random(seed)
    return [
        [([Value(rng.uniform(-1, 1)) for _ in range(nin)], Value(0.0)) for _ in range(nout)]
        for nin, nout in zip(sizes, sizes[1:], strict=False)
    ]


def forward(model, x):
    for depth, layer in enumerate(model):
        outs = []
        for w, b in layer:
            act = sum((wi * xi for wi, xi in zip(w, x, strict=True)), b)
            outs.append(act if depth == len(model) - 1 else act.relu())
        x = outs
    return x[0]


def parameters(model) -> list[Value]:
    return [p for layer in model for w, b in layer for p in (*w, b)]


def moons(n: int, seed: int = 1):
    from opgraph.demo import make_moons

    X, y = make_moons(n, noise=0.1, seed=seed)
    return X, [float(label) for label in y]


def eager_batch(fn, params, samples, weights):
    """Eager opgraph, sample by sample: outputs, summed parameter grads, input grads."""
    for p in params:
        p.grad = 0.0
    outputs, input_grads = [], []
    for sample, weight in zip(samples, weights, strict=True):
        leaves = [[Value(x) for x in a] if isinstance(a, list) else Value(a) for a in sample]
        out = fn(*leaves)
        out.backward(weight)
        outputs.append(out.data)
        flat = [v for arg in leaves for v in (arg if isinstance(arg, list) else [arg])]
        input_grads.append([v.grad for v in flat])
    grads = [p.grad for p in params]
    for p in params:
        p.grad = 0.0
    return outputs, grads, input_grads


def test_the_moons_hinge_loss_batched_equals_eager_per_sample():
    model = mlp()
    params = parameters(model)
    X, y = moons(40)

    def hinge(x, yi):
        return (1 + -yi * forward(model, x)).relu()

    per_sample = opgraph.compile(hinge, X[0], y[0])
    weights = np.random.default_rng(0).uniform(0, 1, len(X))
    losses = per_sample.map(X, y)
    assert isinstance(losses, np.ndarray) and losses.shape == (40,) and losses.dtype == np.float64
    per_sample.backward(weights=weights)
    grads = [p.grad for p in params]
    expected, expected_grads, expected_inputs = eager_batch(
        hinge, params, list(zip(X, y, strict=True)), weights.tolist()
    )
    assert_close(losses, expected, what="loss")
    assert_close(grads, expected_grads, rel=1e-9, what="parameter grad", rows=True)
    assert per_sample.batch_input_grads.shape == (40, 3)  # x0, x1, y of each sample
    assert_close(per_sample.batch_input_grads, expected_inputs, what="input grad", rows=True)
    assert any(g != 0 for g in grads)  # the comparison is not between zeros


def test_arrays_lists_and_tuples_give_the_same_batch_and_parameters_are_read_anew():
    model = mlp(sizes=(2, 4, 1))
    params = parameters(model)
    X, y = moons(10)
    per_sample = opgraph.compile(lambda x, yi: yi * forward(model, x), X[0], y[0])
    from_lists = per_sample.map(X, y)
    from_arrays = per_sample.map(np.array(X), np.array(y))
    from_tuples = per_sample.map(tuple(map(tuple, X)), tuple(y))
    assert from_lists.tolist() == from_arrays.tolist() == from_tuples.tolist()
    params[0].data += 1.0  # an optimizer step: the next map reads the new value
    expected = [yi * forward(model, [Value(a) for a in x]).data for x, yi in zip(X, y, strict=True)]
    assert_close(per_sample.map(np.array(X), y), expected)


def test_backward_accumulates_and_default_weights_are_ones():
    w = Value(0.5)
    f = opgraph.compile(lambda x: (w * x).tanh(), 1.0)
    xs = [0.1, -2.0, 3.0]
    f.map(xs)
    f.backward()
    expected = sum(x * (1 - math.tanh(0.5 * x) ** 2) for x in xs)
    assert close(w.grad, expected, 1e-9)
    f.backward(weights=[1.0, 1.0, 1.0])  # accumulates, as eager backward does
    assert close(w.grad, 2 * expected, 1e-9)
    assert_close(f.batch_input_grads[:, 0], [2 * 0.5 * (1 - math.tanh(0.5 * x) ** 2) for x in xs])
    f.zero_grad()
    assert w.grad == 0.0 and not f.batch_input_grads.any()


def test_several_outputs_give_a_tuple_of_arrays_and_backward_follows_the_first():
    w = Value(2.0)
    f = opgraph.compile(lambda x: (w * x, (w * x).exp()), 1.0)
    first, second = f.map([1.0, 2.0])
    assert first.tolist() == [2.0, 4.0]
    assert_close(second, [math.exp(2.0), math.exp(4.0)])
    f.backward()
    assert w.grad == 3.0  # d(w x)/dw summed over x = 1, 2; the exp output plays no part


def test_a_call_after_map_gets_the_scalar_backward_again():
    w = Value(3.0)
    f = opgraph.compile(lambda x: w * x * x, 1.0)
    f.map([1.0, 2.0])
    assert f(2.0) == 12.0
    f.backward()
    assert w.grad == 4.0 and f.input_grads == [12.0]
    with pytest.raises(CompileError, match="weights= is for backward.. after map"):
        f.backward(weights=[1.0])


# --- random expression graphs with every built-in op ------------------------------------------


def build(program, leaves):
    nodes = list(leaves)
    for op, args in program.steps:
        nodes.append(OPS[op][1](*[nodes[i] for i in args]))
    return sum(nodes[len(leaves) :])


@settings(max_examples=60, deadline=None)
@given(programs(), st.integers(0, 4), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_random_dags_batched_equal_eager_per_sample(program, split, n, seed):
    rng = np.random.default_rng(seed)
    split = min(split, len(program.leaves) - 1)  # at least one input: map needs samples
    params = [Value(x) for x in program.leaves[:split]]
    numbers = program.leaves[split:]
    samples = [[x + s for x in numbers] for s in rng.uniform(-0.5, 0.5, n).tolist()]
    samples[0] = list(numbers)  # the recorded point itself
    for sample in samples:  # relu's kink is where float rounding may flip a branch
        relu_inputs = run(program, Value, OPS, [p.data for p in params] + sample).relu_inputs
        assume(all(abs(r) > 1e-9 for r in relu_inputs))
    weights = rng.uniform(-2, 2, n)
    per_sample = opgraph.compile(lambda *xs: build(program, [*params, *xs]), *numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warnings, no BatchWarning: all have kernels
        outputs = per_sample.map(*[[s[k] for s in samples] for k in range(len(numbers))])
        per_sample.backward(weights=weights)
    grads = [p.grad for p in params]
    expected, expected_grads, expected_inputs = eager_batch(
        lambda *xs: build(program, [*params, *xs]), params, samples, weights.tolist()
    )
    # An output is a sum of the steps, which may cancel (tanh(x) - x + x**3 near 0): numpy's
    # kernels (np.tanh) may differ from the scalar ones by an ulp, so an output is compared
    # relative to the largest step of its sample, the precision the sum has.
    for k, sample in enumerate(samples):
        steps = run(program, Value, OPS, [p.data for p in params] + sample).nodes
        scale = max((abs(v.data) for v in steps if math.isfinite(v.data)), default=0.0)
        assert close(outputs[k], expected[k], 1e-12, scale), (k, outputs[k], expected[k], scale)
    assert_close(grads, expected_grads, rel=1e-9, what="parameter grad", rows=True)
    assert_close(per_sample.batch_input_grads, expected_inputs, what="input grad", rows=True)


# --- IEEE-754: inf and nan where eager gives them, silently -----------------------------------


def test_non_finite_values_match_eager_without_numpy_warnings():
    w = Value(1.0)

    def fn(x):
        return (
            (x * w).log()  # -inf at 0, nan below
            + (x * w) ** -1  # +-inf at +-0
            + (x * 1000.0).exp() * 0.0  # inf * 0 = nan on overflow
            + (x.relu() * w) ** 0.5  # sqrt of 0
            + (x * w).sigmoid() * (x * w).tanh()
            + (x - x) ** w  # 0 ** 1
        )

    xs = [2.0, 0.0, -0.0, -1.0, 1.0, math.inf, -math.inf, math.nan, 800.0, -800.0]
    per_sample = opgraph.compile(fn, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = per_sample.map(xs)
        per_sample.backward()
    grad = w.grad
    expected, expected_grads, expected_inputs = eager_batch(fn, [w], [[x] for x in xs], [1.0] * 10)
    assert_close(outputs, expected, what="output")
    assert_close(per_sample.batch_input_grads, expected_inputs, what="input grad", rows=True)
    assert math.isnan(grad) and math.isnan(expected_grads[0])
    assert any(math.isinf(v) for v in expected) and any(math.isnan(v) for v in expected)


def test_detect_anomaly_names_the_node_and_the_sample():
    w = Value(1.0)

    def fn(x):
        y = x * w
        y.label = "scaled"
        return y.log()

    per_sample = opgraph.compile(fn, 1.0)
    with opgraph.detect_anomaly(), pytest.raises(AnomalyError, match=r"'log'.*sample 2"):
        per_sample.map([1.0, 2.0, -1.0])


def test_detect_anomaly_checks_the_batched_backward():
    w = Value(1.0)
    per_sample = opgraph.compile(lambda x: (x * w) ** 0.5, 1.0)
    with opgraph.detect_anomaly():
        assert per_sample.map([4.0, 0.0]).tolist() == [2.0, 0.0]  # finite forward
        with pytest.raises(AnomalyError, match=r"'pow' with b=0.5.*non-finite gradient.*sample 1"):
            per_sample.backward()  # d sqrt(u)/du at u = 0 is inf


# --- array kernels ------------------------------------------------------------------------------


SPECIAL = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0, 1e-300, 710.0, -710.0, 1e308]
SPECIAL += [math.inf, -math.inf, math.nan]


def builtin_ops() -> list[Row]:
    """The built-in plugins' rows, checked (inline partials made into array derivatives)."""
    ops: list[Row] = []
    for module in (arithmetic, exponential, activations):
        module.register_ops(lambda op, replace=False: ops.append(op))
    return [check(op, "opgraph.plugins") for op in ops if isinstance(op, Op)]


def inlined(op: Row) -> bool:
    """Batched replay writes add and mul out with numpy's add and multiply, and their inline
    partials."""
    return op.forward in (operator.add, operator.mul) and op.partials is not None


def kernel_ops() -> list[Row]:
    return [op for op in builtin_ops() if not inlined(op)]


def test_the_builtin_ops_without_kernels_are_add_and_mul_written_out():
    assert sorted(op.name for op in builtin_ops() if inlined(op)) == ["add", "mul"]


@pytest.mark.parametrize("op", kernel_ops(), ids=lambda op: op.name)
def test_builtin_array_kernels_equal_their_scalar_forms(op):
    assert op.array_forward is not None and op.array_derivative is not None
    rng = random.Random(op.name)
    points = SPECIAL + [rng.uniform(-5, 5) for _ in range(50)]
    arity = 2 if op.name in ("add", "mul", "pow") else 1
    grid = [(a, b) for a in points for b in points] if arity == 2 else [(a,) for a in points]
    columns = [np.array(c) for c in zip(*grid, strict=True)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="ignore"):
            out = np.broadcast_to(op.array_forward(*columns), columns[0].shape)
            partials = op.array_derivative(out, *columns)
    for i, xs in enumerate(grid):
        expected = op.forward(*xs)
        assert close(out[i], expected, 1e-15), f"{op.name}{xs}: {out[i]!r} != {expected!r}"
        scalar_partials = op.derivative(float(out[i]), *xs)  # the same out: the kernel alone
        for k, (d, e) in enumerate(zip(partials, scalar_partials, strict=True)):
            got = float(np.broadcast_to(d, columns[0].shape)[i])
            assert close(got, e, 1e-14), f"{op.name}{xs} partial {k}: {got!r} != {e!r}"
        if out[i] == 0:  # signed zeros too (relu(-0.0) is 0.0)
            assert math.copysign(1, out[i]) == math.copysign(1, expected), (op.name, xs)


# --- an op without array kernels -----------------------------------------------------------------


def cube_derivative(out, a):
    return (3 * a * a,)


def test_an_op_without_array_kernels_warns_once_and_is_still_right():
    engine = Engine(
        plugins=[plugin("cubes", Op("cube", lambda a: a * a * a, cube_derivative))],
        entry_points=False,
    )
    w = engine.value(0.5)
    f = opgraph.compile(lambda x: (x * w).cube() + x.cube(), 1.0, engine=engine)
    with pytest.warns(BatchWarning, match=r"op 'cube' \(plugin 'cubes'\).*element by element"):
        out = f.map([1.0, -2.0, 3.0])
    f.backward()
    assert_close(out, [(0.5 * x) ** 3 + x**3 for x in (1.0, -2.0, 3.0)])
    assert close(w.grad, sum(3 * (0.5 * x) ** 2 * x for x in (1.0, -2.0, 3.0)), 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: not again on the next batch
        f.map([4.0])


def test_an_op_of_three_operands_without_kernels_batches():
    fma = Op("fma", lambda a, b, c: a * b + c, lambda out, a, b, c: (b, a, 1.0))
    engine = Engine(plugins=[plugin("fmas", fma)], entry_points=False)
    w = engine.value(-1.5)
    f = opgraph.compile(lambda x, c: engine.ops.fma(x, w, c * x), 2.0, 0.5, engine=engine)
    with pytest.warns(BatchWarning, match="'fma'"):
        out = f.map([3.0, 1.0], [2.0, 4.0])
    assert out.tolist() == [3.0 * -1.5 + 6.0, -1.5 + 4.0]
    f.backward()
    assert w.grad == 3.0 + 1.0
    assert f.batch_input_grads.tolist() == [[-1.5 + 2.0, 3.0], [-1.5 + 4.0, 1.0]]


def test_a_kernel_that_is_not_callable_is_an_error_naming_the_op():
    op = Op("ident", lambda a: a, lambda out, a: (1.0,), array_forward="np.abs")
    engine = Engine(plugins=[plugin("idents", op)], entry_points=False)
    f = opgraph.compile(lambda x: x.ident(), 1.0, engine=engine)
    with pytest.raises(
        CompileError, match=r"op 'ident' \(plugin 'idents'\) array_forward must be callable"
    ):
        f.map([1.0])


def test_an_empty_batch_gives_empty_arrays():
    w = Value(2.0)
    f = opgraph.compile(lambda x: (w * x).relu(), 1.0)
    assert f.map([]).shape == (0,) and f.map(np.zeros((0,))).shape == (0,)
    f.backward(weights=[])
    assert w.grad == 0.0 and f.batch_input_grads.shape == (0, 1)


def test_an_error_in_an_op_names_the_op_plugin_node_and_sample():
    def strict_sqrt(a):
        return math.sqrt(a)

    engine = Engine(
        plugins=[plugin("strict", Op("strict_sqrt", strict_sqrt, lambda out, a: (0.5 / out,)))],
        entry_points=False,
    )

    def fn(x):
        y = x * 1.0
        y.label = "scaled"
        return y.strict_sqrt()

    f = opgraph.compile(fn, 4.0, engine=engine)
    with pytest.warns(BatchWarning):
        assert f.map([4.0, 9.0]).tolist() == [2.0, 3.0]
    expected = r"'strict_sqrt' \(plugin 'strict'\).*node #\d+ \(sample 1\).*'scaled'.*domain"
    with pytest.raises(OpError, match=expected):
        f.map([4.0, -1.0])


def test_a_failing_array_kernel_names_the_op_and_plugin():
    def broken(a):
        raise RuntimeError("kernel broke")

    op = Op("ident", lambda a: a, lambda out, a: (1.0,), array_forward=broken)
    engine = Engine(plugins=[plugin("idents", op)], entry_points=False)
    f = opgraph.compile(lambda x: x.ident(), 1.0, engine=engine)
    with pytest.warns(BatchWarning, match="array_derivative"):  # the derivative has no kernel
        with pytest.raises(OpError, match=r"'ident' \(plugin 'idents'\).*kernel broke"):
            f.map([1.0])


def test_kernels_of_the_wrong_shape_or_count_are_errors_naming_the_op():
    def first_only(a):
        return a[:1]  # one row for a group of two nodes

    def no_partials(out, a):
        return ()

    op = Op(
        "ident",
        lambda a: a,
        lambda out, a: (1.0,),
        array_forward=first_only,
        array_derivative=no_partials,
    )
    engine = Engine(plugins=[plugin("idents", op)], entry_points=False)
    w = engine.value(1.0)
    f = opgraph.compile(lambda x: (x * w).ident() + (x * 2.0).ident(), 1.0, engine=engine)
    with pytest.raises(OpError, match=r"'ident' \(plugin 'idents'\) failed in batched forward"):
        f.map([1.0, 2.0])
    g = opgraph.compile(lambda x: (x * w).ident(), 1.0, engine=engine)
    g.map([1.0, 2.0])
    with pytest.raises(OpError, match=r"'ident'.*backward.*must return 1 partial derivative"):
        g.backward()


# --- bad batches ---------------------------------------------------------------------------------


def test_bad_batches_are_clear_errors():
    w = Value(1.0)
    f = opgraph.compile(lambda x, y: w * x[0] * x[1] + y, [1.0, 2.0], 3.0)
    with pytest.raises(CompileError, match=r"argument 0: expected an array of shape \(n, 2\)"):
        f.map(np.zeros((4, 3)), np.zeros(4))
    with pytest.raises(CompileError, match="3 samples, but the arguments before it have 4"):
        f.map(np.zeros((4, 2)), [1.0, 2.0, 3.0])
    with pytest.raises(CompileError, match="argument 1, sample 1: expected a number, got str"):
        f.map([[1.0, 2.0], [3.0, 4.0]], [1.0, "2"])
    with pytest.raises(CompileError, match=r"sample 0\[0\]: expected a number, got bool"):
        f.map([[True, False]], [1.0])
    with pytest.raises(CompileError, match="expected a batch of samples"):
        f.map(1.0, 2.0)
    with pytest.raises(CompileError, match="compiled with 2 argument"):
        f.map([[1.0, 2.0]])
    f.map([[1.0, 2.0]], [1.0])
    with pytest.raises(CompileError, match="weights must be 1 numbers"):
        f.backward(weights=[1.0, 2.0])
    with pytest.raises(CompileError, match="weights must be"):
        f.backward(weights=["a"])


class Net:
    """A model object: an argument that is not a number, so fixed in the compiled graph."""

    def __init__(self, sizes):
        self.layers = mlp(sizes=sizes)

    def __call__(self, x):
        return forward(self.layers, x)


def test_a_numpy_row_is_an_example_argument_and_a_call_argument():
    w = Value(2.0)
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    f = opgraph.compile(lambda x: w * x[0] + x[1], X[0])  # a row of X: two inputs
    assert len(f.inputs) == 2
    assert f(X[1]) == 10.0 and f.map(X).tolist() == [4.0, 10.0]


def test_backward_after_a_failed_map_is_an_error_not_an_older_call():
    w = Value(1.0)
    f = opgraph.compile(lambda x: (x * w).log(), 1.0)
    f(2.0)
    with opgraph.detect_anomaly(), pytest.raises(AnomalyError):
        f.map([-1.0])
    with pytest.raises(CompileError, match="call map.. before backward"):
        f.backward()


def test_fixed_arguments_are_passed_as_themselves():
    net = Net((2, 3, 1))
    f = opgraph.compile(lambda m, x: m(x), net, [0.5, -0.5])
    expected = [net([Value(a) for a in x]).data for x in ([1.0, 2.0], [3.0, 4.0])]
    assert_close(f.map(net, [[1.0, 2.0], [3.0, 4.0]]), expected)
    with pytest.raises(CompileError, match="fixed"):
        f.map(Net((2, 3, 1)), [[1.0, 2.0]])


# --- numpy stays optional ------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_the_scalar_engine_never_imports_numpy():
    result = run_python(
        """
        import sys
        import opgraph
        from opgraph import Value
        w = Value(0.5)
        y = (w * 2.0).tanh() ** 2 + (w.exp() - 1).relu()
        y.backward()
        f = opgraph.compile(lambda x: (w * x).sigmoid().log(), 1.0)
        f(2.0)
        f.backward()
        print("numpy" in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_map_without_numpy_says_what_to_install():
    result = run_python(
        """
        import sys
        sys.modules["numpy"] = None  # as if numpy were not installed
        import opgraph
        from opgraph import Value
        w = Value(0.5)
        f = opgraph.compile(lambda x: w * x, 1.0)
        assert f(2.0) == 1.0
        try:
            f.map([1.0, 2.0])
        except ImportError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert f"run {sys.executable} -m pip install numpy" in result.stdout
    assert "in a clone, pip install -e '.[numpy]'" in result.stdout


# --- the demo ------------------------------------------------------------------------------------


def test_demo_training_batched_follows_eager_training():
    from opgraph.demo import MLP, batched_loss, make_moons, train

    X, y = make_moons(20, noise=0.1, seed=3)
    eager_model = MLP(2, [8, 8, 1], rng=random.Random(5))
    batched_model = MLP(2, [8, 8, 1], rng=random.Random(5))
    eager = train(eager_model, X, y, 5)
    batched = train(batched_model, X, y, 5, loss_fn=batched_loss(batched_model, X, y))
    for a, b in zip(eager, batched, strict=True):
        assert close(a.loss, b.loss, 1e-9) and a.accuracy == b.accuracy
    for p, q in zip(eager_model.parameters(), batched_model.parameters(), strict=True):
        assert close(p.data, q.data, 1e-9)


def test_opgraph_demo_batch_command_reaches_full_accuracy(tmp_path, capsys):
    from opgraph.cli import main

    assert main(["demo", "--batch", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "compiled the per-sample loss in" in out
    assert "accuracy 100%" in out


def test_opgraph_demo_batch_refuses_other_modes_and_a_missing_numpy(tmp_path, capsys):
    from opgraph.cli import main

    assert main(["demo", "--batch", "--compile", "--out", str(tmp_path)]) == 2
    assert "use it alone" in capsys.readouterr().err
    result = run_python(
        f"""
        import sys
        sys.modules["numpy"] = None
        from opgraph.cli import main
        sys.exit(main(["demo", "--batch", "--steps", "1", "--out", {str(tmp_path)!r}]))
        """
    )
    assert result.returncode == 2
    # A command that works wherever opgraph came from: pip of this very Python.
    assert f"run {sys.executable} -m pip install numpy" in result.stderr
