"""The fused compiled replay: arithmetic chains written as one expression, gradients passed
on without copies, and the same numbers, to the bit, as eager mode and the unfused replay.

Bits, not closeness: fusion changes how the replay is written, never which float operations
run on which operands, nor their order. Errors from inside a fused line still name the node
that failed (the replay re-runs one node per line to find it).
"""

from __future__ import annotations

import operator
import random
import re
import struct

import pytest
from conftest import engine, plugin
from dags import OPS, programs
from hypothesis import given, settings
from hypothesis import strategies as st

import opgraph
from opgraph import Op, OpError, Value


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def run_replay(compiled, params, numbers):
    """Outputs, parameter grads and input grads of one call and backward of `compiled`."""
    for p in params:
        p.grad = 0.0
    compiled.input_grads = [0.0] * len(compiled.inputs)
    out = compiled(*numbers)
    compiled.backward()
    outputs = out if isinstance(out, tuple) else (out,)
    return [*outputs, *(p.grad for p in params), *compiled.input_grads]


def run_eager(fn, params, numbers):
    """The same in eager mode, on fresh input Values (the parameters are shared)."""
    for p in params:
        p.grad = 0.0
    inputs = [Value(x) for x in numbers]
    out = fn(*inputs)
    outputs = out if isinstance(out, tuple) else (out,)
    outputs[0].backward()
    result = [*(v.data for v in outputs), *(p.grad for p in params), *(v.grad for v in inputs)]
    for p in params:
        p.grad = 0.0
    return result


def unfused(compiled):
    """The same compiled function running the replay of one node per line (as detect_anomaly
    does, without its checks): the reference the fused replay is compared with."""
    program = compiled._program
    source, program.lines = program._generate(checked=False, fuse=False)
    program.replay, program.fused_lines = program._build(source), set()
    return compiled


def forward_op_lines(compiled) -> list[str]:
    """The forward lines computing op nodes (not reading inputs, parameters, constants)."""
    forward = compiled.source.split("seed = yield")[0].splitlines()[1:]
    leaf = re.compile(r"\s*v\d+ = (x\[\d+\]|P\d+\._data|-?[\d.e+-]+|-?inf|nan)$")
    return [line.strip() for line in forward if line.strip() and not leaf.match(line)]


def assert_same_bits(fused, reference, what):
    assert len(fused) == len(reference)
    for k, (a, b) in enumerate(zip(fused, reference, strict=True)):
        assert bits(a) == bits(b), f"{what}, item {k}: fused {a!r}, {b!r}"


def check(fn, params, numbers, *, fused: bool = True):
    """Compile `fn`; its replay equals eager mode and the unfused replay to the bit."""
    compiled = opgraph.compile(fn, *numbers)
    if fused:  # the graph has something to fuse: fewer lines than op nodes
        assert len(forward_op_lines(compiled)) < sum(1 for v in compiled.nodes if v._opdef)
    result = run_replay(compiled, params, numbers)
    assert_same_bits(result, run_eager(fn, params, numbers), "eager")
    assert_same_bits(result, run_replay(unfused(compiled), params, numbers), "unfused")
    return compiled


# --- the same numbers ----------------------------------------------------------------------------


def build(program, leaves):
    nodes = list(leaves)
    for op, args in program.steps:
        nodes.append(OPS[op][1](*[nodes[i] for i in args]))
    return nodes


@settings(max_examples=80, deadline=None)
@given(
    program=programs(max_leaves=5, max_steps=30),
    split=st.integers(0, 4),
    extra=st.integers(0, 3),
    shift=st.floats(-0.5, 0.5),
)
def test_random_dags_fused_equal_eager_and_unfused_to_the_bit(program, split, extra, shift):
    # The first `split` leaves are parameters, the rest inputs; besides the sum of the steps,
    # `extra` intermediate nodes are outputs too (outputs are never inlined).
    params = [Value(x) for x in program.leaves[:split]]
    numbers = program.leaves[split:]
    picks = [len(program.steps) - 1 - k for k in range(min(extra, len(program.steps)))]

    def fn(*xs):
        nodes = build(program, [*params, *xs])
        steps = nodes[len(program.leaves) :]
        return (sum(steps), *(steps[k] for k in picks)) if picks else sum(steps)

    compiled = opgraph.compile(fn, *numbers)
    result = []
    for attempt in range(2):  # as recorded, then with every leaf moved
        if attempt:
            for p in params:
                p.data += shift
            numbers = [x - shift for x in numbers]
        result = run_replay(compiled, params, numbers)
        assert_same_bits(result, run_eager(fn, params, numbers), "eager")
    twin = unfused(opgraph.compile(fn, *numbers))
    assert_same_bits(result, run_replay(twin, params, numbers), "unfused")


def test_a_node_used_twice_by_one_user_and_shared_parents():
    w, b = Value(0.7), Value(-0.2)

    def fn(x, y):
        u = w * x + b  # an inlinable sum, used twice by each of its users below
        v = x * y  # read by two users
        return (u * u + (u + u)) * (v + 1.5) + (v - y) * w

    check(fn, [w, b], [1.25, -0.5])


def test_an_add_of_a_node_with_itself_does_not_change_a_shared_gradient():
    # u = t + r passes its gradient to t and r under one name; t = s + s passes it to s
    # twice: s's sum must go to a variable of its own, r reads the shared one after.
    w = [Value(0.1 * (k + 1)) for k in range(3)]

    def fn(x):
        r = w[2] * x
        s = w[0] * x + w[1]
        t = s + s
        return (t + r) * x

    check(fn, w, [0.8])


def test_intermediate_nodes_as_outputs_and_several_outputs():
    w = Value(1.5)

    def fn(x, y):
        a = w * x + y  # an output, used once by an add: computed on a line of its own
        b = (a + x) * y
        return b + w, a, b * w

    compiled = check(fn, [w], [0.5, 2.0])
    assert compiled(0.5, 2.0) == (8.0, 2.75, 9.75)  # exact in binary


def test_a_neuron_is_one_line_and_gradients_are_not_copied():
    rng = random.Random(0)
    ws = [Value(rng.uniform(-1, 1)) for _ in range(8)]
    b = Value(0.1)

    def neuron(*xs):
        return (b + sum((wi * xi for wi, xi in zip(ws, xs, strict=True)), Value(0.0))).tanh()

    compiled = check(neuron, [*ws, b], [rng.uniform(-1, 1) for _ in range(8)])
    lines = forward_op_lines(compiled)
    assert len(lines) == 2  # the sum of 8 products and the bias, then the tanh
    assert len(re.findall(r"v\d+ \* v\d+", lines[0])) == 8
    backward = compiled.source.split("while True:")[1].splitlines()
    assert not [line for line in backward if re.fullmatch(r"\s*g\d+ = g\d+", line)]


def test_the_l2_term_of_a_model_is_a_few_lines_both_ways():
    params = [Value(0.01 * k) for k in range(337)]
    compiled = check(lambda: 1e-4 * sum(p * p for p in params), params, [])
    assert len(forward_op_lines(compiled)) <= 10  # 1,014 nodes
    backward = compiled.source.split("while True:")[1].splitlines()
    assert len(backward) <= 3 * len(params) + 5  # two terms and the += of each parameter
    leaves = {id(p) for p in params}
    constants = [i for i, v in enumerate(compiled.nodes) if not v._opdef and id(v) not in leaves]
    assert len(constants) == 2  # 0 (where sum starts) and 1e-4: their gradients are for nobody
    assert not [
        line for line in backward if re.match(rf"\s*g({'|'.join(map(str, constants))}) ", line)
    ]


def test_a_sum_of_10000_terms_compiles_and_runs():
    # Inlined without bound, the sum would be nested 20,000 deep: CPython's parser refuses
    # more than 200 levels of parentheses.
    numbers = [random.Random(k).uniform(-1, 1) for k in range(10_000)]
    w = Value(0.5)
    compiled = check(lambda *xs: sum(w * x for x in xs), [w], numbers)
    assert len(forward_op_lines(compiled)) < 20_000 // 50


# --- errors inside a fused line name the node ----------------------------------------------------


def ratio_engine():
    """A plugin whose ops are Python's operators: inline in the replay, and they raise."""
    ops = [
        Op("ratio", operator.truediv, partials=("1 / b", "-a / (b * b)")),
        Op("ipow", operator.pow, partials=("b * a ** (b - 1)", "0"), static=(1,)),
    ]
    return engine(plugin("operators", *ops))


def fused_line(compiled, text: str) -> str:
    return next(line for line in forward_op_lines(compiled) if text in line)


@pytest.mark.parametrize(
    ("op", "numbers", "error"),
    [("ratio", (1.0, 0.0), "ZeroDivisionError"), ("ipow", (1e200, 1.0), "OverflowError")],
)
def test_an_op_failing_inside_a_fused_line_is_named(op, numbers, error):
    e = ratio_engine()
    w = e.value(2.0, label="w")

    def fn(x, y):
        z = x.ratio(y) if op == "ratio" else x.ipow(3.0)
        z.label = "inner"
        s = w * y + z + x  # z is inlined into the sum (nothing reads its value)
        s.label = "outer"
        return s * w

    compiled = opgraph.compile(fn, 3.0, 2.0, engine=e)
    symbol = "/" if op == "ratio" else "**"
    line = fused_line(compiled, symbol)
    assert "*" in line.replace("**", "") and "+" in line  # z is computed on the sum's line
    compiled(3.0, 2.0)
    with pytest.raises(OpError) as info:
        compiled(*numbers)
    message = str(info.value)
    assert re.match(
        rf"op '{op}'( with b=3)? \(plugin 'operators'\) failed in compiled forward", message
    )
    assert "'inner'" in message and "'outer'" not in message and error in message
    assert w.grad == 0.0
    compiled(3.0, 2.0)  # and the replay goes on working
    compiled.backward()
    assert w.grad != 0.0


def test_a_failing_derivative_after_a_fused_forward_is_named_and_adds_nothing():
    def derivative(out, a):
        if a < 0:
            raise ValueError("no slope below zero")
        return (0.5 / out,)

    e = engine(plugin("roots", Op("root", lambda a: abs(a) ** 0.5, derivative)))
    ws = [e.value(0.5, label=f"w{k}") for k in range(3)]

    def fn(x, y):
        s = ws[0] * x + ws[1] * y + ws[2]
        s.label = "neuron"
        return s.root() + ws[0] * ws[1]

    compiled = opgraph.compile(fn, 1.0, 2.0, engine=e)
    assert len(forward_op_lines(compiled)) == 3  # the neuron, root, and the sum
    compiled(-4.0, 1.0)
    with pytest.raises(OpError) as info:
        compiled.backward()
    message = str(info.value)
    assert "op 'root' (plugin 'roots') failed in compiled backward" in message
    assert "no slope below zero" in message and "'neuron'" in message
    assert [w.grad for w in ws] == [0.0, 0.0, 0.0]  # nothing added before the failure


def test_an_error_the_unfused_rerun_does_not_repeat_is_raised_as_it_was():
    # An op that fails once (a flaky forward, returning a value the next line cannot use):
    # the re-run one node per line succeeds, so the original error is raised, not lost.
    odd = {"next": False, "calls": 0}

    class Odd(float):
        def __mul__(self, other):
            raise ArithmeticError("odd value")

    def flaky(a):
        odd["calls"] += 1
        if odd["next"]:
            odd["next"] = False
            return Odd(a)
        return a

    e = engine(plugin("flaky", Op("flaky", flaky, lambda out, a: (1.0,))))
    w = e.value(2.0)
    compiled = opgraph.compile(lambda x: x.flaky() * w + x, 1.0, engine=e)
    assert compiled(1.0) == 3.0
    odd["next"], odd["calls"] = True, 0
    with pytest.raises(ArithmeticError, match="odd value"):
        compiled(1.0)  # fails inside the fused line; the re-run one node per line does not
    assert odd["calls"] == 2
    assert compiled(1.0) == 3.0


def test_a_negative_number_baked_into_an_inline_power_keeps_its_sign():
    # `-2.0 ** x` would be -(2.0 ** x): the replay writes `(-2.0) ** x`. (Only the forward
    # is compared: the rule's slope in b is a stand-in.)
    op = Op("power_of", operator.pow, partials=("b * a ** (b - 1)", "0"), static=(0,))
    e = engine(plugin("powers", op))
    compiled = opgraph.compile(lambda x: e.ops.power_of(-2.0, x) + x, 1.0, engine=e)
    assert "(-2.0) ** " in compiled.source
    assert compiled(2.0) == 6.0 and compiled(3.0) == -5.0
