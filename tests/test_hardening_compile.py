"""compile and map under real threads, large batches and failures (issue 17, second review).

One Compiled used from two threads gives each thread's exact gradients or a CompileError
saying another thread uses it, never a wrong number. Recording watches only the recording
thread's reads of `.data`: another thread logging the parameters is not blamed, and two
threads compile at once. `map` runs large batches in chunks of bounded memory, equal to the
bit to one chunk. A failure inside generated code shows the generated line in its traceback.
"""

from __future__ import annotations

import gc
import linecache
import math
import re
import threading
import traceback
import tracemalloc
import warnings

import numpy as np
import pytest
from conftest import in_threads, plugin

import opgraph
from opgraph import CompileError, Engine, Op, OpError, Value
from opgraph.compiler import MAP_MEMORY, SUM_BLOCK

WAIT = 10  # seconds: a bounded wait that only a hang (or the bug) exceeds


# --- 1. one Compiled, two threads ----------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True], ids=["call", "map"])
def test_one_compiled_from_two_threads_gives_exact_grads_or_a_clear_error(tight_switching, batched):
    w = Value(1.0)
    f = opgraph.compile(lambda x: sum((w * x).relu() for _ in range(100)), 1.0)  # d/dw: 100 x
    steps, n = 1000, 8
    barrier = threading.Barrier(2)
    done = {1.0: 0, 1000.0: 0}  # successful call-and-backward steps per thread, by its x
    refused = []

    def train(x):
        def job():
            for _ in range(steps):
                barrier.wait(WAIT)  # both threads start each step together
                try:
                    if batched:
                        assert f.map(np.full(n, x)).tolist() == [100 * x] * n
                    else:
                        assert f(x) == 100 * x
                    f.backward()
                except CompileError as exc:
                    assert "in use by another thread" in str(exc)
                    refused.append(exc)
                else:
                    done[x] += 1

        return job

    assert in_threads(train(1.0), train(1000.0)) == [None, None]
    # Integers: the exact sum whatever the order. A backward of the other thread's run
    # would add 1000 for 1 (or 1 for 1000): 20,003 instead of 20,000.
    per_step = 100 * (n if batched else 1)
    assert w.grad == per_step * (done[1.0] * 1.0 + done[1000.0] * 1000.0)
    assert done[1.0] + done[1000.0] + len(refused) == 2 * steps


def test_backward_after_another_threads_call_names_the_other_thread():
    w = Value(2.0)
    f = opgraph.compile(lambda x: w * x, 1.0)
    called, other_called = threading.Event(), threading.Event()
    results = {}

    def first():
        f(3.0)
        called.set()
        assert other_called.wait(WAIT)
        with pytest.raises(CompileError, match="in use by another thread") as info:
            f.backward()
        results["first"] = str(info.value)

    def second():
        assert called.wait(WAIT)
        f(5.0)
        other_called.set()
        f.backward()  # its own run: right

    assert in_threads(first, second) == [None, None]
    assert w.grad == 5.0  # only the second thread's run was differentiated
    assert "own compiled function" in results["first"]


def test_a_compiled_called_from_inside_its_own_run_is_an_error_not_a_hang():
    holder = {}

    def forward(a):
        return a + holder["f"](a)  # the op calls the compiled function it is part of

    op = Op("recursive", forward, lambda out, a: (2.0,))
    engine = Engine(plugins=[plugin("recursion", op)], entry_points=False)
    inner = opgraph.compile(lambda x: x * 2.0, 1.0, engine=engine)
    holder["f"] = inner
    f = opgraph.compile(lambda x: x.recursive(), 1.0, engine=engine)
    holder["f"] = f
    with pytest.raises(OpError, match="called again from inside its own run"):
        f(1.0)
    holder["f"] = inner
    assert f(1.0) == 3.0  # usable afterwards


# --- 2. recording watches only its own thread ------------------------------------------------


def test_a_thread_reading_parameters_while_another_compiles_is_not_blamed():
    params = [Value(float(i)) for i in range(50)]
    stop, read_all = threading.Event(), threading.Event()
    sums = []

    def logger():  # logs the parameters while the main thread compiles
        while not stop.is_set():
            sums.append(sum(p.data for p in params))
            read_all.set()

    def fn(x):
        y = sum((p * x for p in params), Value(0.0))
        read_all.clear()
        assert read_all.wait(WAIT)  # the logger read every parameter during the recording
        return y

    thread = threading.Thread(target=logger)
    thread.start()
    try:
        f = opgraph.compile(fn, 1.0)  # strict: a read it blamed would be an error
    finally:
        stop.set()
        thread.join(WAIT)
    assert f(2.0) == 2.0 * sum(range(50)) and set(sums) == {float(sum(range(50)))}
    assert Value.__dict__["data"].fget.__qualname__ == "Value.data"  # the plain property


def test_two_threads_compile_at_once_and_each_is_watched_alone():
    both_recording = threading.Barrier(3)

    def compile_one(k, reads_data):
        w = Value(float(k))

        def fn(x):
            y = w * x
            both_recording.wait(WAIT)  # all three threads are recording now
            if reads_data and y.data > 0:  # Python deciding on the graph's data
                return y.tanh()
            return y + k

        return lambda: opgraph.compile(fn, 1.0)

    plain, other, branchy = in_threads(
        compile_one(2, False), compile_one(3, False), compile_one(4, True)
    )
    assert plain(10.0) == 22.0 and other(10.0) == 33.0
    assert isinstance(branchy, CompileError)  # only the thread that read it is blamed
    assert "read the .data of 1 Value(s)" in str(branchy)
    assert "test_hardening_compile.py" in str(branchy)


def test_compile_nested_in_the_same_thread_is_still_refused():
    def fn(x):
        opgraph.compile(lambda y: y * 2.0, 1.0)
        return x * 2.0

    with pytest.raises(CompileError, match="cannot be nested"):
        opgraph.compile(fn, 1.0)
    assert opgraph.compile(lambda y: y * 3.0, 1.0)(2.0) == 6.0  # recording was left cleanly


# --- 3. map in chunks ------------------------------------------------------------------------


def model(seed=0):
    rng = np.random.default_rng(seed)
    weights = [[Value(float(rng.uniform(-1, 1))) for _ in range(3)] for _ in range(6)]
    return weights, [p for row in weights for p in row]


def per_sample(weights):
    """A small network using every kind of built-in op, of one sample (x0, x1) and label."""

    def fn(x, label):
        hidden = [(row[0] * x[0] + row[1] * x[1] + row[2]).tanh() for row in weights[:3]]
        more = [(row[0] * x[0] - row[1]).relu() + (row[2] * x[1]).exp() for row in weights[3:]]
        score = sum(h * m for h, m in zip(hidden, more, strict=True))
        return ((score - label) ** 2 + 1.0).log() + (score * score + 1.0) ** 0.5, score

    return fn


def run_map(f, params, chunk, X, labels, weights):
    f.chunk_size = chunk
    for p in params:
        p.grad = 0.0
    loss, score = f.map(X, labels)
    f.backward(weights=weights)
    return loss, score, [p.grad for p in params], f.batch_input_grads.copy()


@pytest.mark.parametrize("n", [128 * 5, 128 * 7 + 3, 1000])
def test_map_in_chunks_equals_one_chunk_to_the_bit(n):
    weights, params = model()
    f = opgraph.compile(per_sample(weights), [0.5, -0.5], 1.0)
    rng = np.random.default_rng(n)
    X, labels = rng.normal(size=(n, 2)), rng.normal(size=n)
    sample_weights = rng.uniform(0, 2, size=n)
    whole = run_map(f, params, 128 * 8, X, labels, sample_weights)  # n <= chunk: one chunk
    for chunk in (128, 256):
        chunked = run_map(f, params, chunk, X, labels, sample_weights)
        assert chunked[0].tobytes() == whole[0].tobytes()  # the losses
        assert chunked[1].tobytes() == whole[1].tobytes()  # the second output
        assert chunked[2] == whole[2]  # every parameter's weighted gradient
        assert chunked[3].tobytes() == whole[3].tobytes()  # the inputs' gradients
    assert all(math.isfinite(g) for g in whole[2]) and any(g != 0.0 for g in whole[2])


def test_backward_after_a_chunked_map_accumulates_and_a_later_call_is_scalar_again():
    weights, params = model(1)
    f = opgraph.compile(per_sample(weights), [0.5, -0.5], 1.0)
    X, labels = np.linspace(-1, 1, 600).reshape(300, 2), np.linspace(0, 1, 300)
    once = run_map(f, params, 128, X, labels, None)[2]
    f.backward()  # a second backward on the same chunked map adds the same again
    assert [p.grad for p in params] == [2 * g for g in once]
    f(X[0].tolist(), labels[0])
    assert f.batch_input_grads.shape == (300, 3)
    with pytest.raises(CompileError, match="weights= is for backward.. after map"):
        f.backward(weights=np.ones(300))


def test_chunk_size_must_be_a_positive_multiple_of_the_sum_block():
    f = opgraph.compile(lambda x: x * 2.0 + 1.0, 1.0)  # rows: the input and 2 op nodes
    # By default, as many samples as fit the data and gradient arrays in MAP_MEMORY bytes.
    memory, block = MAP_MEMORY, SUM_BLOCK
    assert f.chunk_size % block == 0 and 2 * 3 * 8 * f.chunk_size <= memory
    assert 2 * 3 * 8 * (f.chunk_size + block) > memory
    for bad in (0, -128, 100, 128.0, True, "256"):
        with pytest.raises(CompileError, match="chunk_size must be a positive multiple of 128"):
            f.chunk_size = bad
    f.chunk_size = 256
    assert f.chunk_size == 256 and f.map(np.arange(1000.0)).tolist() == list(
        np.arange(1000.0) * 2 + 1
    )
    f.chunk_size = None  # the default again
    assert 2 * 3 * 8 * f.chunk_size <= memory


def test_memory_kept_after_a_large_map_is_bounded_by_the_chunk_not_the_batch():
    weights, params = model(2)
    f = opgraph.compile(per_sample(weights), [0.5, -0.5], 1.0)
    f.chunk_size = 256
    n = 256 * 64
    X, labels, sample_weights = np.ones((n, 2)), np.zeros(n), np.ones(n)
    rows = len(f.nodes)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        outputs = f.map(X, labels)
        f.backward(weights=sample_weights)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # What a chunk needs (data and gradient rows, operands: generously 8 arrays of the
    # graph's rows), plus what is proportional to n by nature: the outputs, and the inputs
    # and their gradients (3 numbers a sample), generously 4 times over.
    per_chunk = 8 * rows * f.chunk_size * 8
    per_batch = 4 * n * (len(outputs) + 2 * 3) * 8
    unchunked = 2 * rows * n * 8  # the data and gradient arrays of the whole batch
    assert kept < per_chunk + per_batch < unchunked / 2


def test_an_empty_list_is_an_empty_batch_like_an_empty_array():
    weights, params = model(3)
    f = opgraph.compile(per_sample(weights), [0.5, -0.5], 1.0)
    from_list = f.map([], [])
    from_array = f.map(np.zeros((0, 2)), np.zeros(0))
    assert [a.shape for a in from_list] == [a.shape for a in from_array] == [(0,), (0,)]
    f.backward(weights=[])
    assert f.batch_input_grads.shape == (0, 3) and all(p.grad == 0.0 for p in params)
    g = opgraph.compile(lambda x: x * 2.0, 1.0)
    assert g.map([]).shape == g.map(()).shape == (0,)


# --- 4. tracebacks through generated code ------------------------------------------------------


def strict_sqrt_engine():
    def broken_kernel(a):
        raise RuntimeError("kernel broke")

    op = Op(
        "strict_sqrt",
        lambda a: math.sqrt(a),
        lambda out, a: (0.5 / out,),
        array_forward=broken_kernel,
        array_derivative=lambda out, a: (0.5 / out,),
    )
    return Engine(plugins=[plugin("strict", op)], entry_points=False)


def generated_line(source: str, text: str) -> str:
    return next(line.strip() for line in source.splitlines() if text in line)


@pytest.mark.parametrize("anomaly", [False, True], ids=["plain", "detect_anomaly"])
def test_a_failing_op_in_a_compiled_replay_shows_the_generated_line(anomaly):
    engine = strict_sqrt_engine()
    f = opgraph.compile(lambda x: (x * 2.0).strict_sqrt(), 2.0, engine=engine)
    with pytest.raises(OpError, match="strict_sqrt") as info:
        if anomaly:  # the checking version of the program: its own source and lines
            with opgraph.detect_anomaly():
                f(-1.0)
        else:
            f(-1.0)
    text = "".join(traceback.format_exception(info.value))
    assert re.search(r'File "<opgraph\.compile \S*<lambda>#\d+>", line \d+, in replay', text)
    assert generated_line(f.source, "= strict_sqrt_") in text  # the line that failed


def test_a_failing_kernel_in_a_batched_replay_shows_the_generated_line():
    engine = strict_sqrt_engine()
    f = opgraph.compile(lambda x: (x * 2.0).strict_sqrt(), 2.0, engine=engine)
    with pytest.raises(OpError, match="kernel broke") as info:
        f.map([1.0, 2.0])
    text = "".join(traceback.format_exception(info.value))
    assert re.search(r'File "<opgraph\.compile batched \S*<lambda>#\d+>", line \d+', text)
    assert generated_line(f.batch_source, "= F") in text


def test_the_generated_source_is_forgotten_with_its_compiled_function():
    before = set(linecache.cache)
    f = opgraph.compile(lambda x: x * 2.0, 1.0)
    f.map([1.0])
    added = set(linecache.cache) - before
    assert len(added) == 2  # the scalar and the batched program
    assert all(linecache.getline(name, 1).startswith("def replay") for name in added)
    del f
    gc.collect()
    assert not added & set(linecache.cache)


# --- a plugin's derivative that returns a complex partial ------------------------------------


def _complex_partial_engine() -> Engine:
    twisted = Op("twisted", lambda a: 2.0 * a, derivative=lambda out, a: (complex(2.0, 1.0),))
    return Engine(plugins=[plugin("twisters", twisted)], entry_points=False)


@pytest.mark.parametrize(
    "how",
    ["compiled", "batched, a row per sample", "batched, once per batch"],
)
def test_a_complex_partial_is_named_in_compiled_and_batched_backward_as_in_eager(how):
    """Eager backward says which op's derivative returned a complex partial; a replay said
    'the grad of w must be a real number' (compiled), a numpy casting error naming nothing
    (a node computed once per batch), or float()'s complaint (a row): now each names the op,
    its plugin and the node, with eager's words."""
    engine = _complex_partial_engine()
    w = engine.value(0.5, "w")
    twisted = engine.ops.twisted
    if how == "batched, once per batch":  # twisted(w) depends on no input: hoisted

        def loss(x):
            return twisted(w) * x
    else:

        def loss(x):
            return twisted(w * x)

    f = opgraph.compile(loss, 1.0, engine=engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", opgraph.BatchWarning)  # (no array kernel: by element)
        if how == "compiled":
            f(2.0)
        else:
            f.map([1.0, 2.0])
    pattern = (
        r"op 'twisted' \(plugin 'twisters'\) failed in \w+ backward of .*loss.* at node #\d+.*"
        r"derivative returned a partial derivative \(2\+1j\) of type complex"
    )
    with pytest.raises(OpError, match=pattern):
        f.backward()
    with pytest.raises(OpError, match=r"partial derivative \(2\+1j\) of type complex"):
        loss(engine.value(1.0)).backward()  # eager, the same words


@pytest.mark.parametrize(
    "how",
    ["compiled", "batched, a row per sample", "batched, once per batch"],
)
def test_a_forward_that_goes_complex_on_new_numbers_is_named_not_returned(how):
    """A plugin's forward `a ** 0.5` is real where it was recorded and complex for a
    negative `a`. Eager refuses it; compiled replay returned the complex number as the
    output, and a node computed once per batch raised float()'s complaint naming nothing:
    now both name the op, its plugin and the node, and return nothing."""
    root = Op("root", lambda a: a**0.5, derivative=lambda out, a: (0.5 / out,))
    engine = Engine(plugins=[plugin("roots", root)], entry_points=False)
    w = engine.value(4.0, "w")
    once = how == "batched, once per batch"

    def loss(x):
        return engine.ops.root(w) * x if once else engine.ops.root(x * w)

    f = opgraph.compile(loss, 4.0, engine=engine)
    if once:
        w.data = -4.0  # the parameter goes negative: root(w) is complex
    pattern = r"op 'root' \(plugin 'roots'\) failed in \w+ forward of .*loss.* at node #\d+"
    with warnings.catch_warnings(), pytest.raises(OpError, match=pattern):
        warnings.simplefilter("ignore", opgraph.BatchWarning)  # (no array kernel)
        if how == "compiled":
            f(-4.0)
        else:
            f.map([4.0, 1.0 if once else -4.0])
    with pytest.raises(OpError, match=r"forward returned .* of type complex"):
        engine.ops.root(engine.value(-4.0))  # eager


@pytest.mark.parametrize("kernel", ["array_forward", "array_derivative"])
def test_an_array_kernel_that_returns_complex_numbers_is_refused_not_cast(kernel):
    """numpy stores a complex result into the float64 rows by dropping its imaginary part,
    with a warning at most: the batch's root(-4) was 0.0 where eager refuses the op. A
    kernel's result must be real numbers; the error names the op, its plugin and the node."""

    def complex_root(a):
        return np.asarray(a, dtype=complex) ** 0.5

    def complex_partial(out, a):
        return (np.asarray(0.5 / out, dtype=complex),)

    def real_partial(out, a):
        return (0.5 / out,)

    root = Op(
        "root",
        lambda a: a**0.5,
        derivative=lambda out, a: (0.5 / out,),
        array_forward=complex_root if kernel == "array_forward" else np.sqrt,
        array_derivative=complex_partial if kernel == "array_derivative" else real_partial,
    )
    engine = Engine(plugins=[plugin("roots", root)], entry_points=False)
    w = engine.value(4.0, "w")
    f = opgraph.compile(lambda x: engine.ops.root(x * w), 4.0, engine=engine)
    where = "forward" if kernel == "array_forward" else "backward"
    pattern = rf"op 'root' \(plugin 'roots'\) failed in batched {where}.*{kernel} returned complex"
    with warnings.catch_warnings(), pytest.raises(OpError, match=pattern):
        warnings.simplefilter("error")  # (nor a ComplexWarning, nor a BatchWarning)
        f.map([4.0, 1.0])
        f.backward()


@pytest.mark.parametrize("bad", ["a forward's None", "an array as a partial"])
def test_a_hostile_plugin_in_a_node_computed_once_per_batch_is_named(bad):
    """A node that depends on no input runs once per batch as Python (hoisted.py). A
    forward's None became nan as numpy stored it (the batch's loss nan, silently), and an
    array partial failed with numpy's broadcasting error naming nothing: each is named."""
    if bad == "a forward's None":
        op = Op("odd", lambda a: None if a < 0 else a, derivative=lambda out, a: (1.0,))
        where, detail = "forward", "not real|NoneType"
    else:
        op = Op("odd", lambda a: 2.0 * a, derivative=lambda out, a: (np.array([1.0, 2.0]),))
        where, detail = "backward", "partial derivative array"
    engine = Engine(plugins=[plugin("odds", op)], entry_points=False)
    w = engine.value(0.5, "w")
    f = opgraph.compile(lambda x: engine.ops.odd(w) * x, 1.0, engine=engine)
    w.data = -0.5
    pattern = rf"op 'odd' \(plugin 'odds'\) failed in batched {where}.*once per batch.*'w'"
    with pytest.raises(OpError, match=rf"{pattern}.*({detail})"):
        f.map([1.0, -1.0])
        f.backward()
