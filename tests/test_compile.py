"""opgraph.compile: a recorded graph replayed by generated code agrees with eager mode.

Every comparison is against eager opgraph on the same inputs (to 1e-12 relative), on fixed
models and on random expression DAGs; the eager engine itself is checked against finite
differences in test_gradients.py.
"""

from __future__ import annotations

import math
import random
import warnings

import pytest
from conftest import engine, plugin
from dags import OPS, programs
from hypothesis import given, settings
from hypothesis import strategies as st

import opgraph
from opgraph import AnomalyError, CompileError, CompileWarning, Engine, Op, OpError, Value


def close(a: float, b: float, rel: float = 1e-12) -> bool:
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b), 1e-300) or (a != a and b != b)


def assert_all_close(actual, expected):
    assert len(actual) == len(expected)
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        assert close(a, b), f"item {i}: compiled {a!r}, eager {b!r}"


# --- a small micrograd-style model ------------------------------------------------------------


def make_model(seed=0, sizes=(2, 4, 4, 1)):
    rng = random.Random(seed)
    layers = []
    for nin, nout in zip(sizes, sizes[1:], strict=False):
        layers.append(
            [([Value(rng.uniform(-1, 1)) for _ in range(nin)], Value(0.1)) for _ in range(nout)]
        )
    return layers


def parameters(model):
    return [p for layer in model for w, b in layer for p in (*w, b)]


def forward(model, x):
    for depth, layer in enumerate(model):
        last = depth == len(model) - 1
        out = []
        for w, b in layer:
            act = sum((wi * xi for wi, xi in zip(w, x, strict=True)), b)
            out.append(act if last else act.relu())
        x = out
    return x[0]


def hinge_loss(model, X, y):
    scores = [forward(model, row) for row in X]
    losses = [(1 + -yi * s).relu() for yi, s in zip(y, scores, strict=True)]
    data_loss = sum(losses) * (1.0 / len(losses))
    return data_loss + 1e-4 * sum(p * p for p in parameters(model))


def data(seed=1, n=8):
    rng = random.Random(seed)
    X = [[rng.uniform(-2, 2), rng.uniform(-2, 2)] for _ in range(n)]
    y = [1.0 if a * b > 0 else -1.0 for a, b in X]
    return X, y


def eager_step(model, X, y):
    params = parameters(model)
    for p in params:
        p.grad = 0.0
    loss = hinge_loss(model, [[Value(v) for v in row] for row in X], y)
    loss.backward()
    return loss.data, [p.grad for p in params]


def compiled_step(compiled, model, X):
    params = parameters(model)
    for p in params:
        p.grad = 0.0
    out = compiled(X)
    compiled.backward()
    return out, [p.grad for p in params]


def test_compiled_training_matches_eager_step_by_step():
    X, y = data()
    model = make_model()
    twin = make_model()  # the same parameters, trained eagerly
    compiled = opgraph.compile(lambda X: hinge_loss(model, X, y), X)
    assert isinstance(compiled, opgraph.Compiled)
    for _ in range(5):
        loss, grads = compiled_step(compiled, model, X)
        eager_loss, eager_grads = eager_step(twin, X, y)
        assert close(loss, eager_loss)
        assert_all_close(grads, eager_grads)
        # An SGD step: the replay must read the parameters' new .data next time.
        for p, q in zip(parameters(model), parameters(twin), strict=True):
            p.data -= 0.5 * p.grad
            q.data -= 0.5 * q.grad
    assert compiled.compile_seconds > 0
    assert len(compiled.parameters) == len(parameters(model))
    assert len(compiled.inputs) == 16


def test_new_inputs_replay_through_relu_branches():
    # Recorded where every relu is active; replayed where some are not: the op's own
    # forward decides, as in eager mode.
    model = make_model(seed=3)
    X, y = data(seed=2)
    compiled = opgraph.compile(lambda X: hinge_loss(model, X, y), X)
    X2, _ = data(seed=7)
    loss, grads = compiled_step(compiled, model, X2)
    eager_loss, eager_grads = eager_step(model, X2, y)
    assert close(loss, eager_loss)
    assert_all_close(grads, eager_grads)


def test_gradients_accumulate_like_eager():
    w = Value(0.7)
    compiled = opgraph.compile(lambda x: (w * x).tanh() * w, 1.5)
    compiled(1.5)
    compiled.backward()
    once = w.grad
    compiled.backward()  # a second backward of the same forward adds the same again
    assert w.grad == 2 * once
    w.grad = 0.0
    out = (w * Value(1.5)).tanh() * w
    out.backward()
    assert close(once, w.grad)


def test_input_grads_and_several_outputs():
    w = Value(-0.3)
    compiled = opgraph.compile(lambda a, b: (a * b + w, a.exp()), 0.5, 2.0)
    out = compiled(1.25, -0.5)
    assert out == pytest.approx((1.25 * -0.5 - 0.3, math.exp(1.25)), rel=1e-15)
    compiled.backward(2.0)  # from the first output, times 2
    assert compiled.input_grads == [2 * -0.5, 2 * 1.25]
    assert w.grad == 2.0
    compiled.zero_grad()
    assert compiled.input_grads == [0.0, 0.0] and w.grad == 0.0


def test_pow_with_a_constant_exponent_and_constants_made_inside():
    w = Value(1.3)
    compiled = opgraph.compile(lambda x: (w**3 + x**-0.5) / Value(4.0) - 2**x, 2.0)
    x = Value(3.0)
    eager = (w**3 + x**-0.5) / Value(4.0) - 2**x
    eager.backward()
    w_grad, x_grad = w.grad, x.grad
    w.grad = 0.0
    assert close(compiled(3.0), eager.data)
    compiled.backward()
    assert close(w.grad, w_grad)
    assert close(compiled.input_grads[0], x_grad)


def test_source_is_straight_line_python_calling_the_plugin_functions():
    w = Value(2.0)
    compiled = opgraph.compile(lambda x: (x * w).relu(), 1.0)
    assert "def replay(x):" in compiled.source
    assert "relu_" in compiled.source and "d_relu_" in compiled.source
    assert "Value" not in compiled.source  # no node is built per replay
    # The built-in mul (forward operator.mul, rule="product") is written out as
    # arithmetic, as eager backward applies it; its functions are not called.
    assert "mul_" not in compiled.source
    assert compiled(3.0) == 6.0
    compiled.backward()
    assert w.grad == 3.0 and compiled.input_grads == [2.0]


# --- third-party ops ---------------------------------------------------------------------------


class Piecewise:
    """A plugin with a piecewise op (branching inside forward) and a failing op."""

    @opgraph.hookimpl
    def register_ops(self, register):
        register(
            Op(
                "softclip",
                lambda a: a if abs(a) < 1 else math.copysign(1 + math.log(abs(a)), a),
                lambda out, a: (1.0 if abs(a) < 1 else 1 / abs(a),),
            )
        )
        register(Op("strict_sqrt", math.sqrt, lambda out, a: (0.5 / out,)))
        register(Op("fma", lambda a, b, c: a * b + c, lambda out, a, b, c: (b, a, 1.0)))


def test_a_plugin_op_compiles_and_branches_at_replay():
    engine = Engine(plugins=[Piecewise()], entry_points=False)
    w = engine.value(0.5, label="w")
    compiled = opgraph.compile(lambda x: (x * w).softclip() * w, 1.0, engine=engine)
    for x in (1.0, 6.0, -9.0):  # inside and outside the op's linear piece
        w.grad = 0.0
        out = compiled(x)
        compiled.backward()
        grad = w.grad
        w.grad = 0.0
        eager = (engine.value(x) * w).softclip() * w
        eager.backward()
        assert close(out, eager.data)
        assert close(grad, w.grad)


def test_an_op_of_three_operands_compiles():
    engine = Engine(plugins=[Piecewise()], entry_points=False)
    w = engine.value(-1.5)
    compiled = opgraph.compile(lambda x, c: engine.ops.fma(x, w, c * x), 2.0, 0.5, engine=engine)
    assert compiled(3.0, 2.0) == 3.0 * -1.5 + 6.0
    compiled.backward()
    assert w.grad == 3.0
    assert compiled.input_grads == [-1.5 + 2.0, 3.0]


def test_an_error_in_a_replayed_op_names_the_op_plugin_and_node():
    engine = Engine(plugins=[Piecewise()], entry_points=False)
    w = engine.value(1.0, label="w")

    def fn(x):
        y = x * w
        y.label = "scaled"
        return y.strict_sqrt()

    compiled = opgraph.compile(fn, 4.0, engine=engine)
    assert compiled(9.0) == 3.0
    expected = r"op 'strict_sqrt' \(plugin '\S*Piecewise'\).*forward.*'scaled'"
    with pytest.raises(OpError, match=expected):
        compiled(-1.0)


def test_detect_anomaly_checks_the_replay():
    w = Value(1.0)
    compiled = opgraph.compile(lambda x: (x * w).log(), 2.0)
    assert math.isnan(compiled(-1.0))  # IEEE semantics, as in eager mode
    with opgraph.detect_anomaly(), pytest.raises(AnomalyError, match="'log'"):
        compiled(-1.0)


# --- what cannot compile is loud ---------------------------------------------------------------


def branchy(x):
    y = x * 2
    if y.data > 1:  # Python control flow on data: a replay cannot follow it
        return y.tanh()
    return y.exp()


def test_reading_data_of_the_graph_while_recording_is_an_error():
    with pytest.raises(CompileError, match=r"read the \.data.*test_compile\.py:\d+"):
        opgraph.compile(branchy, 3.0)
    assert Value.__dict__["data"].fget.__qualname__ == "Value.data"  # restored


def test_strict_false_warns_and_compiles_the_recorded_branch():
    with pytest.warns(CompileWarning, match="cannot follow"):
        compiled = opgraph.compile(branchy, 3.0, strict=False)
    assert compiled(0.1) == math.tanh(0.2)  # the recorded branch, not the one eager takes


def test_reading_data_outside_the_graph_is_fine():
    scale = Value(3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = opgraph.compile(lambda x: x * (scale.data * 2), 1.0)  # not in the graph
    assert compiled(2.0) == 12.0


def test_arguments_must_keep_their_structure_and_fixed_objects():
    marker = object()
    compiled = opgraph.compile(lambda xs, tag: xs[0] * xs[1], [1.0, 2.0], marker)
    assert compiled([3.0, 4.0], marker) == 12.0
    with pytest.raises(CompileError, match="list of 2 items"):
        compiled([3.0], marker)
    with pytest.raises(CompileError, match="fixed in the compiled graph"):
        compiled([3.0, 4.0], object())
    with pytest.raises(CompileError, match="expected a number"):
        compiled(["a", 4.0], marker)


def test_backward_before_a_call_and_bad_outputs_are_errors():
    compiled = opgraph.compile(lambda x: x * x, 1.0)
    with pytest.raises(CompileError, match="before backward"):
        compiled.backward()
    with pytest.raises(CompileError, match="must return a Value"):
        opgraph.compile(lambda x: 3.0, 1.0)
    with pytest.raises(TypeError, match="fn must be callable, got float"):
        opgraph.compile(1.0, 2.0)  # the function forgotten


# --- random expression graphs ------------------------------------------------------------------


def build(program, leaves):
    nodes = list(leaves)
    for op, args in program.steps:
        nodes.append(OPS[op][1](*[nodes[i] for i in args]))
    return sum(nodes[len(leaves) :])


@settings(max_examples=60, deadline=None)
@given(program=programs(), shift=st.floats(-0.5, 0.5), split=st.integers(0, 4))
def test_random_dags_compiled_equals_eager(program, shift, split):
    # The first `split` leaves are parameters (Values made outside), the rest inputs.
    params = [Value(x) for x in program.leaves[:split]]
    numbers = program.leaves[split:]
    compiled = opgraph.compile(lambda *xs: build(program, [*params, *xs]), *numbers)
    for attempt in range(2):  # as recorded, then with every leaf moved
        if attempt:
            for p in params:
                p.data += shift
            numbers = [x - shift for x in numbers]
        for p in params:
            p.grad = 0.0
        out = compiled(*numbers)
        compiled.input_grads = [0.0] * len(numbers)
        compiled.backward()
        grads = [p.grad for p in params] + compiled.input_grads
        leaves = [Value(p.data) for p in params] + [Value(x) for x in numbers]
        eager = build(program, leaves)
        eager.backward()
        assert close(out, eager.data)
        assert_all_close(grads, [v.grad for v in leaves])


# --- the demo ----------------------------------------------------------------------------------


def test_demo_training_compiled_follows_eager_training():
    from opgraph.demo import MLP, compiled_loss, make_moons, train

    X, y = make_moons(12, noise=0.1, seed=3)
    eager_model = MLP(2, [4, 4, 1], rng=random.Random(5))
    compiled_model = MLP(2, [4, 4, 1], rng=random.Random(5))
    eager = train(eager_model, X, y, 4)
    compiled = train(compiled_model, X, y, 4, loss_fn=compiled_loss(compiled_model, X, y))
    for a, b in zip(eager, compiled, strict=True):
        assert close(a.loss, b.loss) and a.accuracy == b.accuracy
    for p, q in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
        assert close(p.data, q.data, rel=1e-11)


@pytest.mark.slow  # the whole demo command (compiling, training, drawing): seconds
def test_opgraph_demo_compile_command(tmp_path, capsys):
    from opgraph.cli import main

    assert main(["demo", "--compile", "--steps", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "compiled the training step in" in out and "<Compiled" in out
    assert "final loss" in out


@pytest.mark.parametrize("count", [0, 2])
def test_a_derivative_with_the_wrong_count_in_a_compiled_backward_is_counted(count):
    """The generated line unpacks the partials; when it fails, the error counts them (not
    Python's unpacking message) and names the op, its plugin and the node."""

    def derivative(out, a):
        if a == 0.5:  # the point registration probes: the right count there
            return (1.0,)
        return (1.0,) * count

    e = engine(plugin("odds", Op("odd", lambda a: a, derivative)))
    compiled = opgraph.compile(lambda x: x.odd(), 2.0, engine=e)
    compiled(2.0)
    pattern = r"op 'odd' \(plugin 'odds'\) failed in compiled backward .*must return 1 partial"
    with pytest.raises(OpError, match=pattern):
        compiled.backward()
