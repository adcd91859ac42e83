"""Engines: isolated op sets side by side, the default engine, threads."""

from __future__ import annotations

import math
import sys
import threading

import pytest

import opgraph
from opgraph import EngineMismatchError, Op, Value, default_engine, hookimpl, topological_order


class Trig:
    """A plugin with one op, sin."""

    @hookimpl
    def register_ops(register):
        register(Op("sin", math.sin, lambda out, a: (math.cos(a),)))


class Cube:
    """Another plugin, with cube."""

    @hookimpl
    def register_ops(register):
        register(Op("cube", lambda a: a**3, lambda out, a: (3 * a * a,)))


def test_default_engine_backs_opgraph_value():
    engine = default_engine()
    assert engine is default_engine()
    assert Value(1.0).engine is engine
    assert engine.Value is Value
    assert isinstance(engine.value(2.0), Value)
    assert {"add", "mul", "pow", "exp", "log", "tanh", "relu", "sigmoid"} <= set(engine.ops)
    assert {"neg", "sub", "div"} <= set(engine.ops)


def test_two_engines_with_different_op_sets_side_by_side():
    trig = opgraph.Engine(plugins=[Trig], entry_points=False, name="trig")
    cube = opgraph.Engine(plugins=[Cube], entry_points=False, name="cube")
    x, y = trig.value(0.5), cube.value(2.0)
    assert x.sin().data == math.sin(0.5)
    assert y.cube().data == 8.0
    assert "sin" not in cube.ops and "cube" not in trig.ops
    with pytest.raises(AttributeError):
        y.sin()
    with pytest.raises(AttributeError):
        x.cube()
    # each engine keeps its own Value class, and the built-in ops work in both
    assert type(x) is trig.Value and type(y) is cube.Value
    assert (x * 2).engine is trig and (y * 2).engine is cube
    # and the default engine does not see either plugin (an installed one may provide sin)
    default_ops = default_engine().ops.definitions
    assert all(op.plugin not in ("Trig", "Cube") for op in default_ops.values())


class LeakyRelu:
    @hookimpl
    def register_ops(register):
        leaky = Op("relu", lambda a: max(a, 0.1 * a), lambda out, a: (1.0 if a > 0 else 0.1,))
        register(leaky, replace=True)


def test_one_op_name_two_meanings_in_two_engines():
    leaky = opgraph.Engine(plugins=[LeakyRelu], entry_points=False)
    plain = opgraph.Engine(entry_points=False)
    x, y, z = leaky.value(-2.0), plain.value(-2.0), Value(-2.0)
    assert (x.relu().data, y.relu().data, z.relu().data) == (-0.2, 0.0, 0.0)
    x.relu().backward()
    y.relu().backward()
    assert (x.grad, y.grad) == (0.1, 0.0)


def test_mixing_values_of_two_engines_raises():
    first = opgraph.Engine(entry_points=False, name="first")
    second = opgraph.Engine(entry_points=False, name="second")
    a = first.value(1.0, label="a")
    b = second.value(2.0, label="b")
    for combine in [
        lambda: a + b,
        lambda: b * a,
        lambda: a - b,  # composite ops check too
        lambda: a / b,
        lambda: a**b,
        lambda: a + Value(1.0),  # the default engine is an engine like any other
        lambda: Value(1.0) * b,
        lambda: first.ops.mul(a, b),
    ]:
        with pytest.raises(EngineMismatchError) as info:
            combine()
        message = str(info.value)
        assert "do not mix" in message
        assert "first" in message or "second" in message or "default" in message
    with pytest.raises(EngineMismatchError, match=r"'b'.*engine 'second'.*engine 'first'"):
        a + b
    assert isinstance(EngineMismatchError("x"), TypeError)


def test_engine_ids_count_per_engine():
    engine = opgraph.Engine(entry_points=False)
    a = engine.value(1.0)
    b = engine.value(2.0)
    assert (a.id, b.id) == (0, 1)
    assert (a * b).id == 2


def test_building_graphs_from_several_threads():
    engine = opgraph.Engine(entry_points=False)
    threads_count, per_thread = 4, 3000
    outputs: list = [None] * threads_count
    start = threading.Barrier(threads_count)

    def build(k: int) -> None:
        start.wait()
        x = engine.value(float(k + 1), label=f"x{k}")
        y = x
        for _ in range(per_thread):
            y = y * 1.0 + x * 0.0  # each step: 2 constants, 2 muls, 1 add
        outputs[k] = (x, y)

    threads = [threading.Thread(target=build, args=(k,)) for k in range(threads_count)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to provoke races
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)

    ids = []
    for k, (x, y) in enumerate(outputs):
        assert y.data == k + 1
        nodes = topological_order(y)
        ids.extend(node.id for node in nodes)
        y.backward()
        assert x.grad == 1.0
    assert len(ids) == len(set(ids)), "two nodes got the same id"
    assert len(ids) == threads_count * (1 + 5 * per_thread)


def test_backward_in_several_threads_on_separate_graphs():
    errors = []

    def work(k: int) -> None:
        try:
            for _ in range(50):
                x = Value(0.1 * k)
                y = (x * x).tanh().exp() / (1 + x.sigmoid())
                y.backward()
                expected = central(lambda v: (v * v).tanh().exp() / (1 + v.sigmoid()), 0.1 * k)
                assert math.isclose(x.grad, expected, rel_tol=1e-5, abs_tol=1e-8)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors


def central(f, x: float, h: float = 1e-6) -> float:
    return (f(Value(x + h)).data - f(Value(x - h)).data) / (2 * h)


def test_engine_repr_and_plugin_names():
    engine = opgraph.Engine(plugins=[Trig], entry_points=False, name="mine")
    assert repr(engine) == f"<Engine 'mine': {len(engine.ops)} ops>"
    names = engine.plugin_names()
    assert "Trig" in names and "opgraph.plugins.arithmetic" in names


def test_op_table_lookup_errors():
    engine = opgraph.Engine(entry_points=False)
    with pytest.raises(AttributeError, match="no op named 'nope'.*registered ops: add"):
        _ = engine.ops.nope
    with pytest.raises(KeyError):
        engine.ops["nope"]
    assert "nope" not in engine.ops


class Counting:
    """A plugin that counts how often the engine asks it for its ops."""

    calls = 0

    @hookimpl
    def register_ops(register):
        Counting.calls += 1
        register(Op("sin", math.sin, lambda out, a: (math.cos(a),)))


class NoPluginManager:
    def __getattr__(self, name):
        raise AssertionError(f"the plugin manager was used ({name}) during arithmetic")


def test_arithmetic_never_calls_pluggy():
    # The op table is built once when plugins change; ops and backward use only the table.
    Counting.calls = 0
    engine = opgraph.Engine(plugins=[Counting], entry_points=False)
    assert Counting.calls == 1
    engine.pm = NoPluginManager()
    x = engine.value(0.3)
    y = x
    for _ in range(100):
        y = (y * 1.01 + x.sin()).tanh() - 0.1 / (1 + y.exp())
    y.backward()
    assert x.grad != 0.0
    assert Counting.calls == 1
