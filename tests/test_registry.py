"""The op registry: plugins register ops, malformed ones are rejected with a clear error."""

from __future__ import annotations

import math
import re

import pytest

from opgraph import Composite, Engine, Op, OperandError, OpError, PluginError, hookimpl


def plugin(*ops, replace=False, name="myplugin"):
    """A plugin object (a class, as pluggy accepts) that registers `ops`."""

    def register_ops(register):
        for op in ops:
            register(op, replace=replace)

    return type(name, (), {"register_ops": staticmethod(hookimpl(register_ops))})


def engine_with(*plugins, **options) -> Engine:
    return Engine(plugins=plugins, entry_points=False, **options)


def sin_op(**changes) -> Op:
    fields = dict(name="sin", forward=math.sin, derivative=lambda out, a: (math.cos(a),))
    fields.update(changes)
    return Op(**fields)


# ---------------------------------------------------------------------------------------------
# Registering ops


def test_a_plugin_op_is_callable_as_a_method_and_from_the_op_table():
    engine = engine_with(plugin(sin_op()))
    x = engine.value(0.5, label="x")
    y = x.sin()
    assert y.data == math.sin(0.5)
    assert engine.ops.sin(x).data == math.sin(0.5)
    assert engine.ops["sin"](x).data == math.sin(0.5)
    assert "sin" in engine.ops
    y.backward()
    assert x.grad == math.cos(0.5)
    assert y._op == "sin"
    assert engine.ops.definitions["sin"].plugin == "myplugin"


def test_binary_and_nary_plugin_ops():
    # math.hypot takes *coordinates, so the arity is given
    hypot = Op("hypot", math.hypot, lambda out, a, b: (a / out, b / out), arity=2)
    fma = Op("fma", lambda a, b, c: a * b + c, lambda out, a, b, c: (b, a, 1.0))
    engine = engine_with(plugin(hypot, fma))
    a, b, c = engine.value(3.0), engine.value(4.0), engine.value(1.0)
    assert a.hypot(b).data == 5.0
    assert a.hypot(4).data == 5.0  # a plain number becomes a constant leaf
    out = engine.ops.fma(a, b, c)
    assert out.data == 13.0 and out._prev == (a, b, c)
    out.backward()
    assert (a.grad, b.grad, c.grad) == (4.0, 3.0, 1.0)
    with pytest.raises(OperandError, match=r"op 'fma' \(plugin 'myplugin'\) takes 3"):
        engine.ops.fma(a, b)


def test_composite_op_is_built_from_other_ops():
    square_plus = Composite("square_plus", lambda a, b: a * a + b)
    engine = engine_with(plugin(square_plus))
    a, b = engine.value(3.0), engine.value(1.0)
    out = a.square_plus(b)
    assert out.data == 10.0
    assert out._op == "+"  # the graph records the ops it is built from
    out.backward()
    assert (a.grad, b.grad) == (6.0, 1.0)


def test_engine_without_builtins_has_only_its_plugins_ops():
    engine = engine_with(plugin(sin_op()), builtins=False)
    assert list(engine.ops) == ["sin"]
    with pytest.raises(AttributeError, match="no op named 'add' is registered"):
        engine.value(1.0) + 1


def test_unknown_op_method_says_no_plugin_registers_it():
    engine = engine_with()
    with pytest.raises(AttributeError, match="no plugin registers an op of that name"):
        engine.value(1.0).sin()


def test_register_and_unregister_at_run_time():
    engine = engine_with()
    x = engine.value(0.5)
    name = engine.register(plugin(sin_op()))
    assert x.sin().data == math.sin(0.5)  # existing Values see the new op
    engine.unregister(name)
    with pytest.raises(AttributeError):
        x.sin()


def test_a_rejected_plugin_leaves_the_engine_as_it_was():
    engine = engine_with()
    with pytest.raises(PluginError):
        engine.register(plugin(sin_op(derivative=None)))
    assert "sin" not in engine.ops
    assert (engine.value(1.0) + 1).data == 2.0
    engine.register(plugin(sin_op()))  # the name is free again
    assert "sin" in engine.ops


def test_plugin_instances_are_named_by_class():
    class Trig:
        @hookimpl
        def register_ops(self, register):
            register(sin_op())

    class MoreTrig(Trig):
        pass

    with pytest.raises(PluginError) as info:
        engine_with(Trig(), MoreTrig())
    message = str(info.value)
    assert "Trig'" in message and "MoreTrig'" in message
    assert not re.search(r"'\d{6,}'", message), "a plugin named by its id()"


# ---------------------------------------------------------------------------------------------
# Duplicates


def test_duplicate_op_names_name_both_plugins():
    with pytest.raises(PluginError) as info:
        engine_with(plugin(sin_op(), name="first"), plugin(sin_op(), name="second"))
    message = str(info.value)
    assert "'sin'" in message and "'first'" in message and "'second'" in message
    assert "replace=True" in message


def test_duplicate_of_a_builtin_names_the_builtin_plugin():
    mul = Op("mul", lambda a, b: a * b, lambda out, a, b: (b, a))
    with pytest.raises(PluginError, match=r"'mul'.*opgraph\.plugins\.arithmetic.*'myplugin'"):
        engine_with(plugin(mul))


def test_replace_true_overrides_an_earlier_op():
    # A plugin may replace a built-in: here relu becomes leaky.
    leaky = Op(
        "relu",
        lambda a: a if a > 0 else 0.01 * a,
        lambda out, a: (1.0 if a > 0 else 0.01,),
    )
    engine = engine_with(plugin(leaky, replace=True))
    x = engine.value(-2.0)
    y = x.relu()
    assert y.data == -0.02
    y.backward()
    assert x.grad == 0.01
    assert engine.ops.definitions["relu"].plugin == "myplugin"


# ---------------------------------------------------------------------------------------------
# Malformed ops are rejected at registration, naming the plugin and the op


def rejected(op, match: str):
    with pytest.raises(PluginError, match=match) as info:
        engine_with(plugin(op))
    message = str(info.value)
    assert "'myplugin'" in message, message
    return message


def test_no_forward():
    message = rejected(sin_op(forward=None), "forward must be callable")
    assert "'sin'" in message


def test_derivative_not_callable():
    message = rejected(sin_op(derivative=(1.0,)), "derivative must be callable")
    assert "'sin'" in message


def test_arity_does_not_match_forward():
    message = rejected(sin_op(arity=2), "arity is 2 but the function takes 1")
    assert "'sin'" in message


def test_derivative_with_the_wrong_signature():
    message = rejected(
        sin_op(derivative=lambda a: (math.cos(a),)), r"derivative must take \(out, \*inputs\)"
    )
    assert "'sin'" in message


def test_derivative_returning_the_wrong_number_of_partials():
    op = Op("twice", lambda a: 2 * a, lambda out, a: (2.0, 0.0))
    message = rejected(op, "must return 1 partial")
    assert "'twice'" in message
    op = Op("both", lambda a, b: a + b, lambda out, a, b: 1.0)
    assert "'both'" in rejected(op, "must return 2 partial")


def test_varargs_forward_needs_an_explicit_arity():
    op = Op("total", lambda *xs: sum(xs), lambda out, *xs: (1.0,) * len(xs))
    rejected(op, "give arity= explicitly")
    engine = engine_with(plugin(Op("total", op.forward, op.derivative, arity=3)))
    assert engine.ops.total(1, 2, 3).data == 6.0


def test_invalid_names():
    rejected(sin_op(name="not valid"), "must be a Python identifier")
    rejected(sin_op(name="backward"), "would shadow an attribute of Value")
    rejected(sin_op(name="_private"), "would shadow an attribute of Value")
    rejected(sin_op(name="definitions"), "would shadow an attribute of Value or of the op table")


def test_registering_something_that_is_not_an_op():
    with pytest.raises(PluginError, match="'myplugin'.*expected an opgraph.Op"):
        engine_with(plugin(lambda a: a))


def test_a_plugin_failing_inside_register_ops_is_named():
    class Broken:
        @hookimpl
        def register_ops(register):
            raise RuntimeError("cannot import scipy")

    with pytest.raises(PluginError, match="'Broken' failed in register_ops.*cannot import scipy"):
        engine_with(Broken)


def test_a_misspelled_hook_is_reported():
    class Typo:
        @hookimpl
        def register_op(register):  # not register_ops
            pass

    with pytest.raises(PluginError, match="'Typo'.*register_op"):
        engine_with(Typo)


# ---------------------------------------------------------------------------------------------
# Errors inside a plugin's functions carry the op's and the plugin's name


def test_exception_in_forward_names_op_plugin_and_inputs():
    def forward(a):
        raise ValueError("bad input")

    engine = engine_with(plugin(Op("flaky", forward, lambda out, a: (1.0,))))
    with pytest.raises(OpError) as info:
        engine.value(1.5, label="w").flaky()
    message = str(info.value)
    for part in ["'flaky'", "'myplugin'", "forward", "1.5", "'w'", "ValueError: bad input"]:
        assert part in message, (part, message)
    assert isinstance(info.value.__cause__, ValueError)


def test_exception_in_derivative_names_op_plugin_and_node():
    def derivative(out, a):
        if a > 1:
            raise ArithmeticError("no slope here")
        return (1.0,)

    engine = engine_with(plugin(Op("flaky", lambda a: a, derivative)))
    y = engine.value(2.0, label="w").flaky()
    y.label = "y"
    with pytest.raises(OpError) as info:
        y.backward()
    message = str(info.value)
    for part in ["'flaky'", "'myplugin'", "backward", "'y'", "2.0", "'w'", "no slope here"]:
        assert part in message, (part, message)
    assert isinstance(info.value.__cause__, ArithmeticError)


def test_derivative_returning_wrong_count_at_backward_time():
    # The registration probe cannot call this derivative (it fails at 0.5), so backward
    # has to catch the wrong shape itself.
    def derivative(out, a):
        if a == 0.5:
            raise ValueError("probe point")
        return (1.0, 1.0)

    engine = engine_with(plugin(Op("odd", lambda a: a, derivative)))
    with pytest.raises(OpError, match="'odd'.*'myplugin'.*must return 1 partial"):
        engine.value(2.0).odd().backward()


def test_forward_returning_a_non_number():
    engine = engine_with(plugin(Op("text", lambda a: "one", lambda out, a: (1.0,))))
    with pytest.raises(OpError, match="'text'.*'myplugin'.*must return a real number"):
        engine.value(1.0).text()


def test_exception_in_a_composite_names_it():
    engine = engine_with(plugin(Composite("bad", lambda a: a.nonexistent_op())))
    with pytest.raises(OpError, match="'bad'.*'myplugin'.*nonexistent_op"):
        engine.value(1.0).bad()


def test_composite_returning_a_non_value():
    engine = engine_with(plugin(Composite("numeric", lambda a: a.data * 2)))
    with pytest.raises(OpError, match="'numeric'.*'myplugin'.*composite op must return a Value"):
        engine.value(1.0).numeric()
