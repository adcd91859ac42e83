"""opgraph.nn: micrograd's Neuron, Layer and MLP, plus activations, engines and labels."""

import math
import random

import micrograd.engine
import micrograd.nn
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import opgraph
from opgraph import Engine, EngineMismatchError, Op, Value, hookimpl
from opgraph.nn import MLP, Layer, Module, Neuron


class SinPlugin:
    @hookimpl
    def register_ops(self, register):
        register(Op("sin", math.sin, lambda out, a: (math.cos(a),)))


def softplus(v):
    return (1 + v.exp()).log()


def central_difference(f, params, h=1e-6):
    """d f / d p for every parameter p, by central finite differences."""
    slopes = []
    for p in params:
        saved = p.data
        p.data = saved + h
        up = f().data
        p.data = saved - h
        down = f().data
        p.data = saved
        slopes.append((up - down) / (2 * h))
    return slopes


def squared_error(model, xs, ys):
    return sum((model(x) - y) ** 2 for x, y in zip(xs, ys, strict=True))


# --- micrograd parity ------------------------------------------------------------------------


@pytest.mark.parametrize("nouts", [[1], [4, 1], [16, 16, 1], [3, 2]])
def test_same_seed_gives_micrograd_weights_outputs_and_gradients(nouts):
    random.seed(7)
    theirs = micrograd.nn.MLP(3, nouts)
    random.seed(7)
    ours = MLP(3, nouts)
    assert [p.data for p in ours.parameters()] == [p.data for p in theirs.parameters()]
    assert repr(ours) == repr(theirs)

    xs = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0]]
    their_out = [theirs(x) for x in xs]
    our_out = [ours(x) for x in xs]
    flat = lambda out: out if isinstance(out, list) else [out]  # noqa: E731
    for t, o in zip(their_out, our_out, strict=True):
        assert [v.data for v in flat(o)] == pytest.approx([v.data for v in flat(t)], rel=1e-12)

    their_loss = sum(v * v for out in their_out for v in flat(out))
    our_loss = sum(v * v for out in our_out for v in flat(out))
    their_loss.backward()
    our_loss.backward()
    theirs_grads = [p.grad for p in theirs.parameters()]
    assert [p.grad for p in ours.parameters()] == pytest.approx(theirs_grads, rel=1e-12)


def test_layer_with_one_output_returns_a_value_and_with_more_a_list():
    assert isinstance(Layer(2, 1)([1.0, 2.0]), Value)
    out = Layer(2, 3)([1.0, 2.0])
    assert isinstance(out, list) and len(out) == 3
    assert all(isinstance(v, Value) for v in out)


def test_module_structure_and_parameter_count():
    model = MLP(2, [16, 16, 1])
    assert len(model.parameters()) == (2 + 1) * 16 + (16 + 1) * 16 + (16 + 1) * 1 == 337
    assert [len(layer.neurons) for layer in model.layers] == [16, 16, 1]
    assert [n.nonlin for layer in model.layers for n in layer.neurons][-1] is False
    assert all(n.nonlin for layer in model.layers[:-1] for n in layer.neurons)
    assert Module().parameters() == []
    assert all(p.data == 0.0 for p in model.parameters() if p.label.endswith(".b"))
    assert all(-1 <= p.data <= 1 for p in model.parameters())


def test_a_one_neuron_layer_can_feed_the_next_layer():
    model = MLP(2, [1, 3, 1])
    out = model([0.5, -0.5])
    assert isinstance(out, Value)
    out.backward()
    assert any(p.grad != 0 for p in model.parameters())


def test_zero_grad_resets_every_parameter():
    model = MLP(2, [3, 1], act="tanh")
    model([1.0, -2.0]).backward()
    assert any(p.grad != 0 for p in model.parameters())
    model.zero_grad()
    assert all(p.grad == 0.0 and isinstance(p.grad, float) for p in model.parameters())


def test_gradients_accumulate_until_zero_grad_as_in_micrograd():
    model = MLP(2, [3, 1], act="tanh")
    model([1.0, -2.0]).backward()
    once = [p.grad for p in model.parameters()]
    model([1.0, -2.0]).backward()
    assert [p.grad for p in model.parameters()] == pytest.approx([2 * g for g in once])


# --- gradients against finite differences ----------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    act=st.sampled_from(["tanh", "sigmoid", "softplus"]),
    x=st.lists(st.floats(-2, 2), min_size=2, max_size=2),
)
def test_mlp_gradients_match_finite_differences(seed, act, x):
    # smooth activations only: finite differences are meaningless at relu's kink
    act = softplus if act == "softplus" else act
    model = MLP(2, [3, 2, 1], act=act, rng=random.Random(seed))
    xs, ys = [x, [0.3, -0.7]], [1.0, -1.0]
    loss = squared_error(model, xs, ys)
    loss.backward()
    params = model.parameters()
    expected = central_difference(lambda: squared_error(model, xs, ys), params)
    for p, slope in zip(params, expected, strict=True):
        assert p.grad == pytest.approx(slope, rel=1e-4, abs=1e-6), p.label


def test_relu_mlp_gradients_match_finite_differences_away_from_kinks():
    model = MLP(2, [4, 4, 1], rng=random.Random(3))
    xs, ys = [[0.8, -0.3], [-0.5, 0.9]], [1.0, -1.0]
    squared_error(model, xs, ys).backward()
    params = model.parameters()
    expected = central_difference(lambda: squared_error(model, xs, ys), params)
    assert [p.grad for p in params] == pytest.approx(expected, rel=1e-4, abs=1e-6)


# --- activations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "act, f", [("relu", lambda z: max(z, 0.0)), ("tanh", math.tanh), ("sigmoid", None)]
)
def test_neuron_applies_its_activation_to_the_affine_sum(act, f):
    n = Neuron(3, act=act, rng=random.Random(1))
    x = [0.5, -1.5, 2.0]
    z = sum(w.data * xi for w, xi in zip(n.w, x, strict=True)) + n.b.data
    f = f or (lambda z: 1 / (1 + math.exp(-z)))
    assert n(x).data == pytest.approx(f(z), rel=1e-12)
    assert Neuron(3, nonlin=False, act=act)(x).op.name == "add"


def test_repr_names_the_activation():
    assert repr(Neuron(2)) == "ReLUNeuron(2)"
    assert repr(Neuron(2, act="tanh")) == "TanhNeuron(2)"
    assert repr(Neuron(2, nonlin=False, act="tanh")) == "LinearNeuron(2)"
    assert repr(MLP(2, [2, 1], act="tanh")) == (
        "MLP of [Layer of [TanhNeuron(2), TanhNeuron(2)], Layer of [LinearNeuron(2)]]"
    )


def test_activation_can_be_a_plugin_op_of_an_isolated_engine():
    engine = Engine(plugins=[SinPlugin()], entry_points=False)
    model = MLP(2, [3, 1], act="sin", engine=engine, rng=random.Random(5))
    assert repr(model.layers[0].neurons[0]) == "SinNeuron(2)"
    out = model([0.4, -0.2])
    ops_used = {v.op.name for v in opgraph.topological_order(out) if v.op is not None}
    assert "sin" in ops_used
    out.backward()
    params = model.parameters()
    expected = central_difference(lambda: model([0.4, -0.2]), params)
    assert [p.grad for p in params] == pytest.approx(expected, rel=1e-5, abs=1e-8)


def test_activation_can_be_a_function_of_a_value():
    n = Neuron(2, act=softplus, rng=random.Random(2))
    assert repr(n) == "SoftplusNeuron(2)"
    z = n.w[0].data * 1.0 + n.w[1].data * 2.0
    assert n([1.0, 2.0]).data == pytest.approx(math.log1p(math.exp(z)))


def test_unknown_activation_is_rejected_naming_it_and_the_unary_ops():
    with pytest.raises(ValueError, match=r"act='swish'.*unary ops are: .*relu.*tanh"):
        MLP(2, [2, 1], act="swish")


def test_binary_op_is_rejected_as_activation():
    with pytest.raises(ValueError, match=r"act='mul'.*takes 2 operands"):
        Neuron(2, act="mul")
    with pytest.raises(TypeError, match="act must be"):
        Neuron(2, act=3)


def test_plugin_activation_is_unknown_to_an_engine_without_the_plugin():
    with pytest.raises(ValueError, match="'sin'"):
        Neuron(2, act="sin", engine=Engine(entry_points=False))


# --- engines, inputs, labels -----------------------------------------------------------------


def test_parameters_belong_to_the_given_engine():
    engine = Engine(entry_points=False)
    model = MLP(2, [2, 1], engine=engine)
    assert all(type(p) is engine.Value for p in model.parameters())
    assert type(model([1.0, 2.0])) is engine.Value
    assert model.engine is engine and model.layers[0].engine is engine
    assert Layer(2, 3, engine=engine).engine is engine
    assert all(type(p) is engine.Value for p in Layer(2, 3, engine=engine).parameters())
    assert all(type(p) is Value for p in MLP(2, [2, 1]).parameters())  # the default engine
    with pytest.raises(EngineMismatchError):
        model([Value(1.0), Value(2.0)])


def test_inputs_may_be_any_iterable_of_numbers_or_values():
    model = MLP(2, [3, 1], rng=random.Random(0))
    expected = model([0.5, -1.0]).data
    assert model((0.5, -1.0)).data == expected
    assert model(x for x in [0.5, -1.0]).data == expected
    assert model([Value(0.5), -1.0]).data == expected


def test_wrong_number_of_inputs_names_the_neuron():
    model = MLP(2, [2, 1])
    with pytest.raises(ValueError, match=r"neuron L0\.N0 takes 2 inputs, got 3"):
        model([1.0, 2.0, 3.0])


def test_layer_sizes_must_be_a_list():
    with pytest.raises(TypeError, match=r"nouts is the list of layer sizes.*got int: 3"):
        MLP(2, 3)


def test_layer_sizes_must_not_be_empty():
    # an MLP without layers would return its input unchanged, not a Value
    with pytest.raises(ValueError, match=r"nouts is empty, an MLP needs a layer"):
        MLP(2, [])


def test_same_rng_seed_gives_same_weights():
    def weights(seed):
        return [p.data for p in MLP(2, [4, 1], rng=random.Random(seed)).parameters()]

    assert weights(11) == weights(11)
    assert weights(11) != weights(12)


def test_parameters_and_neuron_outputs_are_labelled_by_module():
    model = MLP(2, [3, 2])
    labels = [p.label for p in model.parameters()]
    assert labels[:3] == ["L0.N0.w0", "L0.N0.w1", "L0.N0.b"]
    assert "L1.N1.w2" in labels and labels[-1] == "L1.N1.b"
    assert len(set(labels)) == len(labels)
    outputs = model([1.0, 2.0])
    assert [v.label for v in outputs] == ["L1.N0", "L1.N1"]
    hidden = {v.label for v in opgraph.topological_order(outputs[0]) if v.label.count(".") == 1}
    assert {"L0.N0", "L0.N1", "L0.N2"} <= hidden
    assert Neuron(2).w[0].label == "w0" and Neuron(2)([1.0, 1.0]).label == ""


def test_a_neurons_parameters_sit_in_the_scope_of_its_ops():
    model = MLP(2, [3, 2])
    out = model([1.0, 2.0])[1]
    # the viewer groups by scope: L1/N1's weights and bias in its group, with its ops
    ops = [v for v in opgraph.topological_order(out) if v.op is not None and v.scope == "L1/N1"]
    assert ops and set(model.layers[1].neurons[1].parameters()) <= {
        p for v in ops for p in v.parents if p.op is None
    }
    assert {p.scope for p in model.layers[1].neurons[1].parameters()} == {"L1/N1"}
    assert {p.scope for p in model.layers[0].parameters()} == {"L0/N0", "L0/N1", "L0/N2"}


def test_a_neuron_called_by_itself_sits_with_its_parameters():
    # As a draw_dot cell does: the neuron, not the model. Its ops carry its whole path.
    model = MLP(2, [3, 2])
    neuron = model.layers[1].neurons[1]
    alone = neuron([1.0, 2.0, 3.0])
    assert alone.scope == "L1/N1"
    ops = [v for v in opgraph.topological_order(alone) if v.op is not None]
    assert {v.scope for v in ops} == {"L1/N1"}  # no stray top-level group "N1"
    with opgraph.scope("probe"):
        assert neuron([1.0, 2.0, 3.0]).scope == "probe/L1/N1"
        assert model([1.0, 2.0])[1].scope == "probe/L1/N1"  # through its layer: the same
        assert model.layers[1]([1.0, 2.0, 3.0])[1].scope == "probe/L1/N1"
    assert model([1.0, 2.0])[1].scope == "L1/N1"  # and the model as before
    assert Neuron(2)([1.0, 1.0]).scope == "Neuron"  # a neuron of no layer: its kind
