"""Stored parameters (opgraph/stored.py): a model whose parameters live in a ParameterStore
computes what the same model with plain Values computes, to the bit, everywhere a Value goes
(eager ops, backward, grad() and jvp(), hooks, compile and batched replay, optimisers), and
copies, pickles and bad pickles behave as a user of a model expects."""

from __future__ import annotations

import copy
import gc
import os
import pickle
import random
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from dags import programs, run
from hypothesis import given, settings

import opgraph
from opgraph import Engine, EngineMismatchError, ParameterStore, Value
from opgraph.nn import MLP, Layer, Neuron
from opgraph.optim import SGD, Adam
from opgraph.stored import StoredValue, _unpickle_store, _unpickle_stored, store_rows
from opgraph.value import _unpickle_root, engine_class


def moons(n=24, seed=3):
    rng = random.Random(seed)
    X = [[rng.uniform(-2, 2), rng.uniform(-1, 1)] for _ in range(n)]
    return X, [1.0 if x[0] * x[1] > 0 else -1.0 for x in X]


def loss_of(model, X, y):
    losses = [(1 + -yi * model(x)).relu() for x, yi in zip(X, y, strict=True)]
    return sum(losses) * (1.0 / len(losses)) + 1e-4 * sum(p * p for p in model.parameters())


def pair(sizes=(2, [6, 6, 1]), engine=None):
    """The same MLP twice, from the same draws: stored and plain."""
    nin, nouts = sizes
    return (
        MLP(nin, nouts, rng=random.Random(1), engine=engine, stored=True),
        MLP(nin, nouts, rng=random.Random(1), engine=engine),
    )


def numbers(model):
    return [(p.data, p.grad) for p in model.parameters()]


# --- what a stored parameter is --------------------------------------------------------------


def test_a_stored_model_keeps_its_parameters_in_one_store_in_the_order_of_parameters():
    stored, plain = pair()
    params = stored.parameters()
    assert len(stored.store) == stored.store.capacity == len(params) == 67
    assert all(type(p) is StoredValue and p.store is stored.store for p in params)
    assert stored.store.data.tolist() == [p.data for p in plain.parameters()]
    assert [p.label for p in params] == [p.label for p in plain.parameters()]
    assert [p.scope for p in params] == [p.scope for p in plain.parameters()]
    assert plain.store is None and type(plain.parameters()[0]) is Value
    # one slice of the store: what batched replay and the optimisers look for
    store, rows = store_rows(params)
    assert store is stored.store and rows == slice(0, 67)


def test_data_and_grad_are_the_stores_rows_both_ways():
    store = ParameterStore(3)
    w = store.value(2, "w")
    b = store.value(0.5)
    assert type(w.data) is float and w.data == 2.0 and w.grad == 0.0
    w.data -= 0.25
    w.grad = 3  # an int, kept as a float, as for a plain Value
    assert type(w.grad) is float
    assert store.data.tolist() == [1.75, 0.5, 0.0] and store.grad.tolist() == [3.0, 0.0, 0.0]
    store.data[1] = -1.0  # a write to the array is the parameter's number
    store.grad[:] = 0.0
    assert b.data == -1.0 and w.grad == 0.0
    with pytest.raises(AttributeError):  # replaced, the arrays would no longer be the rows
        store.data = np.zeros(3)
    assert store.capacity == len(ParameterStore(np.int64(3)).data) == 3
    with pytest.raises(TypeError, match=r"the data of .*'w'.*must be a real number"):
        w.data = "1.5"
    assert w.data == 1.75  # nothing lost
    assert repr(w) == "Value(data=1.75, grad=0.0, label='w')"


def test_a_stored_model_computes_what_the_plain_model_computes_to_the_bit():
    stored, plain = pair()
    X, y = moons()
    for model in (stored, plain):
        loss = loss_of(model, X, y)
        loss.backward()
        model.loss = loss.data
    assert stored.loss == plain.loss
    assert numbers(stored) == numbers(plain)
    assert stored.store.grad.tolist() == [p.grad for p in plain.parameters()]
    stored.zero_grad()
    assert not stored.store.grad.any()


@settings(max_examples=60, deadline=None)
@given(programs())
def test_random_graphs_of_stored_leaves_get_the_gradients_of_plain_leaves(program):
    store = ParameterStore(len(program.leaves))
    ours = run(program, store.value)
    theirs = run(program, Value)
    ours.output.backward()
    theirs.output.backward()
    same = np.testing.assert_array_equal  # to the bit, a NaN equal to a NaN
    same(ours.output.data, theirs.output.data)
    same([n.grad for n in ours.nodes], [n.grad for n in theirs.nodes])
    same(store.grad, [n.grad for n in theirs.nodes[: len(program.leaves)]])


def test_a_stored_value_is_made_only_in_a_row_of_a_store():
    with pytest.raises(TypeError, match=r"store\.value"):
        StoredValue(1.0)
    store = ParameterStore(1)
    store.value(1.0, "w")
    with pytest.raises(ValueError, match=r"full: all its 1 rows.*'b'"):
        store.value(0.0, "b")
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match="a count of rows"):
            ParameterStore(bad)
    with pytest.raises(TypeError, match="a real number"):
        ParameterStore(1).value("x")
    store = ParameterStore(1)
    for bad_label in (3, ["w"]):  # refused before a row is taken: the row stays free
        with pytest.raises(TypeError, match="label must be a str"):
            store.value(1.0, bad_label)
    assert len(store) == 0 and store.value(2.0, "ok").data == store.data[0] == 2.0


def test_neurons_and_layers_take_a_store_of_their_own_engine():
    engine = Engine(name="second", entry_points=False)
    store = ParameterStore(9, engine)
    layer = Layer(2, 3, engine=engine, store=store, rng=random.Random(0))
    params = layer.parameters()
    assert len(store) == 9 and all(p.store is store for p in params)
    assert all(engine_class(p) is engine.Value and isinstance(p, engine.Value) for p in params)
    assert type(layer([1.0, 2.0])[0]) is engine.Value
    with pytest.raises(ValueError, match=r"engine 'second'.*engine 'default'"):
        Neuron(2, store=store)
    with pytest.raises(TypeError, match="store= takes a ParameterStore"):
        Neuron(2, store=[0.0, 0.0, 0.0])
    with pytest.raises(EngineMismatchError):
        params[0] * Value(1.0)
    with pytest.raises(EngineMismatchError):
        opgraph.grad(params[0] * 2.0, [Value(1.0)])


def test_grad_jvp_and_hooks_treat_a_stored_parameter_as_a_value_of_its_engine():
    store = ParameterStore(2)
    a, b = store.value(0.7, "a"), store.value(-0.3, "b")
    pa, pb = Value(0.7), Value(-0.3)

    def f(x, y):
        return (x * y).tanh() + x**3

    first = opgraph.grad(f(a, b), [a, b], create_graph=True)
    second = opgraph.grad(first[0], [a, b])
    plain_first = opgraph.grad(f(pa, pb), [pa, pb], create_graph=True)
    plain_second = opgraph.grad(plain_first[0], [pa, pb])
    assert [g.data for g in first] == [g.data for g in plain_first]
    assert [g.data for g in second] == [g.data for g in plain_second]
    # a partial that is the parameter itself (mul's partial in x is y)
    assert opgraph.grad(a * b, [a], create_graph=True)[0] is b

    _, tangent = opgraph.jvp(lambda x: x * a, [2.0], [1.0])
    assert tangent == 0.7
    _, tangent = opgraph.jvp(lambda x: a, [2.0], [1.0])  # the output is the parameter
    assert tangent == 0.0

    a.register_hook(lambda g: g * 2)
    out = a * b
    out.backward()
    assert a.grad == 2 * -0.3 and store.grad[0] == a.grad
    assert opgraph.grad(a * b, [a], create_graph=True)[0].data == 2 * -0.3


def test_a_compiled_function_may_return_a_stored_parameter():
    store = ParameterStore(2)
    w, b = store.value(1.5, "w"), store.value(0.25, "b")
    f = opgraph.compile(lambda x: [w * x + b, b], 2.0)
    assert list(f(3.0)) == [4.75, 0.25]


# --- batched replay and optimisers -----------------------------------------------------------


def test_a_batched_training_run_on_a_stored_model_equals_the_plain_model_to_the_bit():
    X, y = moons(40)
    weights = np.full(len(X), 1.0 / len(X))
    models = pair((2, [8, 8, 1]))
    steps = []
    for model in models:
        f = opgraph.compile(lambda x, yi, m=model: (1 + -yi * m(x)).relu(), X[0], y[0])
        steps.append((model, f, SGD(model.parameters(), lr=0.1, momentum=0.5)))
    for _ in range(5):
        for model, f, opt in steps:
            opt.zero_grad()
            model.losses = f.map(X, y).tolist()
            f.backward(weights=weights)
            opt.step()
        assert models[0].losses == models[1].losses
        assert numbers(models[0]) == numbers(models[1])


def test_parameters_from_several_stores_or_repeated_are_updated_one_by_one():
    """store_rows finds no single store: the optimiser's loop over the slots does the work,
    with the plain loop's result."""
    s1, s2 = ParameterStore(2), ParameterStore(2)
    mixed = [s1.value(1.0), s2.value(2.0), Value(3.0), s1.value(4.0)]
    repeated = [s2.value(5.0)] * 2
    plain = [Value(1.0), Value(2.0), Value(3.0), Value(4.0)]
    plain_repeated = [Value(5.0)] * 2
    for params in (mixed, plain, repeated, plain_repeated):
        sum(p * p for p in params).backward()
        SGD(params, lr=0.1).step()
    assert store_rows(mixed) == (None, None) and store_rows(repeated) == (None, None)
    assert [p.data for p in mixed] == [p.data for p in plain]
    assert [p.data for p in repeated] == [p.data for p in plain_repeated]
    # rows of one store out of order: an index array, the same updates
    reordered = [mixed[3], mixed[0]]
    store, rows = store_rows(reordered)
    assert store is s1 and rows.tolist() == [1, 0]
    plain_reordered = [Value(p.data) for p in reordered]
    for params in (reordered, plain_reordered):
        for p in params:
            p.grad = 0.0
        (params[0] * 3.0 + params[1] * params[1]).backward()
        for optimizer in (SGD(params, lr=0.1, momentum=0.9), Adam(params, lr=0.1)):
            optimizer.step()
            optimizer.step()
    assert [p.data for p in reordered] == [p.data for p in plain_reordered]
    assert s1.data[:2].tolist() == [reordered[1].data, reordered[0].data]


# --- copies and pickles ----------------------------------------------------------------------


def test_a_copy_of_a_parameter_is_a_plain_value_with_a_number_of_its_own():
    store = ParameterStore(1)
    w = store.value(1.0, "w")
    twin = copy.copy(w)
    assert type(twin) is Value and twin.data == 1.0 and twin.label == "w"
    twin.data = 5.0
    assert w.data == 1.0 and store.data[0] == 1.0


def test_a_deep_copy_of_a_stored_model_is_stored_in_a_store_of_its_own():
    stored, plain = pair()
    X, y = moons()
    loss_of(stored, X, y).backward()
    twin = copy.deepcopy(stored)
    assert twin.store is not stored.store and twin.engine is stored.engine
    assert numbers(twin) == numbers(stored)
    assert store_rows(twin.parameters()) == (twin.store, slice(0, 67))
    twin.parameters()[0].data = 9.0
    twin.zero_grad()
    assert stored.parameters()[0].data != 9.0 and stored.store.grad.any()
    # a graph over the parameters copies them into one new store too
    stored.zero_grad()
    loss = loss_of(stored, X, y)
    loss_copy = copy.deepcopy(loss)
    leaves = [n for n in opgraph.topological_order(loss_copy) if isinstance(n, StoredValue)]
    assert len({id(n.store) for n in leaves}) == 1 and leaves[0].store is not stored.store
    loss.backward()
    loss_copy.backward()
    assert sorted(n.grad for n in leaves) == sorted(p.grad for p in stored.parameters())
    # a plain model deep-copies too, keeping its engine
    assert numbers(copy.deepcopy(plain)) == numbers(plain)


def test_a_pickled_stored_model_loads_into_one_store_in_a_fresh_process():
    stored, _ = pair()
    X, y = moons()
    loss_of(stored, X, y).backward()
    script = (
        "import pickle, sys\n"
        "from opgraph.stored import store_rows\n"
        "model = pickle.load(sys.stdin.buffer)\n"
        "store, rows = store_rows(model.parameters())\n"
        "assert store is model.store and rows == slice(0, 67), (store, rows)\n"
        "print(repr([(p.data, p.grad) for p in model.parameters()]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=pickle.dumps(stored),
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert eval(done.stdout) == numbers(stored)


def test_hostile_pickles_of_stores_and_parameters_are_refused():
    store = ParameterStore(2)
    store.value(1.0)
    eight = bytes(8)
    bad_stores = [
        (int, eight, eight, 1),  # not an engine's Value class
        (StoredValue, eight, eight, 1),  # a stored class is not an engine's
        (Value, eight, bytes(16), 1),  # arrays of two lengths
        (Value, bytes(7), bytes(7), 0),  # not whole float64s
        (Value, eight, eight, 2),  # more rows than the arrays hold
        (Value, eight, eight, -1),
        (Value, eight, eight, True),
        (Value, [1.0], [0.0], 1),  # not bytes
    ]
    for args in bad_stores:
        with pytest.raises(pickle.UnpicklingError):
            _unpickle_store(*args)
    for bad_store, row in [(object(), 0), (store, 1), (store, -1), (store, "0"), (store, True)]:
        with pytest.raises(pickle.UnpicklingError):
            _unpickle_stored(bad_store, row)
    loaded = _unpickle_store(Value, eight, eight, 1)
    _unpickle_stored(loaded, 0)
    with pytest.raises(pickle.UnpicklingError, match="two parameters in row 0"):
        _unpickle_stored(loaded, 0)
    with pytest.raises(TypeError, match="not a pickled Value"):
        _unpickle_root(StoredValue, [])


def test_a_pickled_parameter_with_parents_is_refused():
    store = ParameterStore(1)
    w = store.value(1.0, "w")
    parent = Value(2.0)
    state = list(w.__getstate__())
    state[3] = parent  # `_a`: a parameter is a leaf
    with pytest.raises(pickle.UnpicklingError, match="leaf"):
        w.__setstate__(tuple(state))


def test_a_store_lives_as_long_as_one_of_its_parameters():
    model = MLP(2, [4, 1], stored=True)
    alive = weakref.ref(model.store)
    kept = model.parameters()[3]
    del model
    gc.collect()
    assert alive() is kept.store
    kept.data = 2.0
    assert alive().data[3] == 2.0
    del kept
    gc.collect()
    assert alive() is None


# --- a StoredValue goes wherever a Value goes --------------------------------------------------

EVERYWHERE = [
    "test_value.py",
    "test_higher_order.py",
    "test_hardening_engine.py",
    "test_gradients.py",
    "test_compile.py",
    "test_scopes.py",
    "test_optim.py",
    "test_batched_dot.py",
]


@pytest.mark.subprocess
def test_the_engines_tests_pass_with_every_leaf_a_stored_parameter():
    """The engine's own tests, run with every `Value(...)` leaf made in a store
    (tests/stored_everywhere.py): a check of `type(x) is cls` where a node of an engine is
    meant fails them (a stored parameter's class is a subclass of the engine's)."""
    tests = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "stored_everywhere", "-p", "no:cacheprovider"]
        + [str(tests / name) for name in EVERYWHERE],
        cwd=tests.parent,
        env={**os.environ, "PYTHONPATH": str(tests)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
