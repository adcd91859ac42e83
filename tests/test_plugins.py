"""Registering op plugins on an Engine: what a plugin author can do, and every error they can
get, each naming the plugin (and the op)."""

from __future__ import annotations

import math
import operator
import re
import subprocess
import sys
import types
import unicodedata

import pytest
from conftest import engine, plugin
from hypothesis import given, settings
from hypothesis import strategies as st

from opgraph import Composite, Op, OperandError, OpError, PluginError, Value, hookimpl
from opgraph.testing import check_op

SIN = Op("sin", math.sin, lambda out, a: (math.cos(a),))
SQUARE = Op("square", lambda a: a * a, lambda out, a: (2 * a,))


# --- the hook --------------------------------------------------------------------------------


def test_hook_register_ops():
    """register_ops is called once per plugin per rebuild, built-ins first, by keyword."""
    calls = []

    def recording(name):
        module = types.ModuleType(name)

        @hookimpl(tryfirst=True)  # pluggy's ordering hints do not change the build order
        def register_ops(register):
            calls.append(name)
            register(Op(name, math.exp, lambda out, a: (out,)))

        module.register_ops = register_ops
        return module

    e = engine(recording("first"), recording("second"))
    assert calls == ["first", "second"]
    assert [p.name for p in e.plugins()][:3] == [
        "opgraph.plugins.arithmetic",
        "opgraph.plugins.exponential",
        "opgraph.plugins.activations",
    ]
    e.Value(1.0).first() + 2.0  # ops run without calling the hook again
    assert calls == ["first", "second"]
    e.register(recording("third"))
    assert calls == ["first", "second", "first", "second", "third"]


def test_hook_without_arguments_registers_nothing():
    module = types.ModuleType("quiet")
    module.register_ops = hookimpl(lambda: None)
    module.register_ops.__name__ = "register_ops"
    e = engine(module)
    assert e.plugins()[-1].ops == []


# --- built-ins first, conflicts and replace ---------------------------------------------------


def test_conflict_with_a_builtin_blames_the_third_party_plugin():
    with pytest.raises(PluginError) as caught:
        engine(plugin("mine", Op("add", operator.add, lambda out, a, b: (1.0, 1.0))))
    message = str(caught.value)
    assert "'opgraph.plugins.arithmetic' and plugin 'mine'" in message
    assert "register(op, replace=True) in 'mine'" in message
    assert (caught.value.plugin, caught.value.op) == ("mine", "add")


def test_conflict_blames_a_tryfirst_plugin_too():
    module = types.ModuleType("eager")

    @hookimpl(tryfirst=True)
    def register_ops(register):
        register(Op("exp", math.exp, lambda out, a: (out,)))

    module.register_ops = register_ops
    with pytest.raises(PluginError, match="'opgraph.plugins.exponential' and plugin 'eager'"):
        engine(module)


def test_conflict_between_two_plugins_blames_the_later():
    with pytest.raises(PluginError, match="both plugin 'one' and plugin 'two'") as caught:
        engine(plugin("one", SIN), plugin("two", SIN))
    assert caught.value.plugin == "two"
    assert "replace=True" in str(caught.value)


def test_a_plugin_registering_a_name_twice():
    with pytest.raises(PluginError, match="plugin 'twice' registers op 'sin' twice"):
        engine(plugin("twice", SIN, SIN))


def test_replace_a_builtin_explicitly():
    # An add that saturates at 10: every `+` now goes through the replacement.
    capped = Op("add", lambda a, b: min(a + b, 10.0), lambda out, a, b: (1.0, 1.0))
    e = engine(plugin("capped", capped, replace=True))
    assert (e.Value(7.0) + 8.0).data == 10.0
    assert e.ops.definitions["add"].plugin == "capped"
    info = {p.name: p for p in e.plugins()}
    assert info["capped"].replaces == {"add": "opgraph.plugins.arithmetic"}
    assert "add" in info["opgraph.plugins.arithmetic"].ops


def test_replace_with_nothing_to_replace_registers_the_op():
    e = engine(plugin("mine", SIN, replace=True), builtins=False)
    assert list(e.ops) == ["sin"]


# --- what an op may be -----------------------------------------------------------------------


def test_ternary_primitive_as_method_and_in_the_op_table():
    # fma(a, b, c) = a * b + c: a primitive of arity 3 with one partial derivative per input.
    fma = Op("fma", lambda a, b, c: a * b + c, lambda out, a, b, c: (b, a, 1.0))
    e = engine(plugin("fused", fma))
    a, b, c = e.Value(2.0), e.Value(3.0), e.Value(4.0)
    out = a.fma(b, c)
    out.backward()
    assert out.data == 10.0 and (a.grad, b.grad, c.grad) == (3.0, 2.0, 1.0)
    assert e.ops.fma(1.0, 2.0, c).data == 6.0
    check_op(e, "fma")


def test_composite_may_use_ops_of_another_plugin_registered_later():
    # sin_squared is registered before the plugin that provides sin: ops resolve at call time.
    sin_squared = Composite("sin_squared", lambda a: a.sin() * a.sin())
    e = engine(plugin("squares", sin_squared), plugin("trig", SIN))
    x = e.Value(0.7)
    y = x.sin_squared()
    y.backward()
    assert y.data == pytest.approx(math.sin(0.7) ** 2)
    assert x.grad == pytest.approx(2 * math.sin(0.7) * math.cos(0.7))
    check_op(e, "sin_squared", domain=(-3, 3))


def test_composite_whose_op_is_missing_names_both():
    e = engine(plugin("squares", Composite("sin_squared", lambda a: a.sin() * a.sin())))
    with pytest.raises(Exception, match="sin_squared.*plugin 'squares'.*'sin'"):
        e.Value(0.7).sin_squared()


def test_op_doc_defaults_to_the_forward_docstring():
    e = engine(plugin("trig", SIN))
    assert e.ops.definitions["sin"].doc == math.sin.__doc__.splitlines()[0]
    assert e.ops.sin.__doc__ == e.ops.definitions["sin"].doc


# --- errors at registration, each naming the plugin and the op -------------------------------


def unary(name: str) -> Op:
    return Op(name, math.sin, lambda out, a: (math.cos(a),))


@pytest.mark.parametrize(
    "op, problem",
    [
        (unary("my op"), "must be a Python identifier"),
        (unary("lambda"), "not a keyword"),
        (unary("ﬁ"), "must be in NFKC form"),
        (unary("data"), "would shadow an attribute"),
        (unary("grad"), "would shadow an attribute"),
        (unary("backward"), "would shadow an attribute"),
        (unary("definitions"), "would shadow an attribute"),
        (unary("_hidden"), "would shadow an attribute"),
        (Op("sin", math.sin, lambda out, a: (1.0,), arity=2), "arity is 2 but the function"),
        (Op("sin", math.sin, lambda a: (1.0,)), "derivative must take (out, *inputs)"),
        (Op("sin", math.sin, lambda out, a: (1.0, 2.0)), "return 1 partial derivative"),
        (Op("sin", math.sin), "derivative must be callable; none was given"),
        (Op("sin", derivative=lambda out, a: (1.0,)), "forward must be callable; none was given"),
        (Op("sin", 3.0, lambda out, a: (1.0,)), "forward must be callable"),
        (Op("sin", lambda *xs: 0.0, lambda out, a: (1.0,)), "give arity= explicitly"),
        (Composite("twice"), "fn must be callable; none was given"),
    ],
)
def test_malformed_op_is_reported_with_plugin_and_op(op, problem):
    with pytest.raises(PluginError) as caught:
        engine(plugin("sloppy", op))
    assert f"plugin 'sloppy', op {op.name!r}" in str(caught.value)
    assert problem in str(caught.value)
    assert (caught.value.plugin, caught.value.op) == ("sloppy", op.name)


def test_registering_something_that_is_not_an_op():
    module = types.ModuleType("sloppy")

    @hookimpl
    def register_ops(register):
        register("sin", math.sin)

    module.register_ops = register_ops
    with pytest.raises(PluginError, match="plugin 'sloppy' failed in register_ops: TypeError"):
        engine(module)
    module.register_ops = hookimpl(lambda register: register("sin"))
    module.register_ops.__name__ = "register_ops"
    with pytest.raises(PluginError, match="expected an opgraph.Op or opgraph.Composite"):
        engine(module)


# --- errors in the plugin's hook functions ---------------------------------------------------


def test_misspelled_hook_name():
    module = types.ModuleType("typo")
    module.register_op = hookimpl(lambda register: None)
    with pytest.raises(PluginError) as caught:
        engine(module)
    assert "plugin 'typo' implements 'register_op', which is not an opgraph hook" in str(
        caught.value
    )
    assert "did you mean 'register_ops'?" in str(caught.value)


def test_wrong_argument_name():
    module = types.ModuleType("argh")

    def register_ops(reg):
        pass

    module.register_ops = hookimpl(register_ops)
    with pytest.raises(PluginError) as caught:
        engine(module)
    message = str(caught.value)
    assert "plugin 'argh': its hook function register_ops(reg) takes 'reg'" in message
    assert "define it as register_ops(register)" in message


def test_pluggy_check_pending_still_runs_and_blames_the_culprit():
    # A plugin slipped in through pluggy directly, bypassing engine.register's checks, is
    # still caught by pluggy's check_pending() at the next registration, by its name.
    e = engine()
    typo = types.ModuleType("typo")
    typo.register_op = hookimpl(lambda register: None)
    e.pm.register(typo)
    with pytest.raises(PluginError, match="plugin 'typo' cannot be registered: unknown hook"):
        e.register(plugin("trig", SIN))
    assert "trig" not in e.plugin_names() and "sin" not in e.ops


def test_hook_function_not_marked():
    module = types.ModuleType("unmarked")
    module.register_ops = lambda register: None
    with pytest.raises(PluginError, match="register_ops is not marked with @opgraph.hookimpl"):
        engine(module)


def test_object_with_no_hook():
    with pytest.raises(PluginError, match="plugin 'builtins.object' implements no opgraph hook"):
        engine(object())


def test_wrapper_hook_is_refused():
    module = types.ModuleType("wrapping")

    def register_ops(register):
        yield

    module.register_ops = hookimpl(wrapper=True)(register_ops)
    with pytest.raises(PluginError, match="plugin 'wrapping': register_ops cannot be a wrapper"):
        engine(module)


def test_register_ops_returning_ops_instead_of_registering_them():
    module = types.ModuleType("returner")
    module.register_ops = hookimpl(lambda register: [SIN])
    module.register_ops.__name__ = "register_ops"
    with pytest.raises(PluginError, match="plugin 'returner': register_ops returned"):
        engine(module)


def test_register_ops_raising_keeps_the_cause():
    module = types.ModuleType("raiser")

    @hookimpl
    def register_ops(register):
        raise KeyError("missing table")

    module.register_ops = register_ops
    with pytest.raises(PluginError, match="plugin 'raiser' failed in register_ops: KeyError"):
        engine(module)
    try:
        engine(module)
    except PluginError as exc:
        assert isinstance(exc.__cause__, KeyError)


def test_register_called_after_the_hook_returned():
    kept = []
    module = types.ModuleType("late")
    module.register_ops = hookimpl(lambda register: kept.append(register))
    module.register_ops.__name__ = "register_ops"
    engine(module)
    with pytest.raises(PluginError, match="plugin 'late' called register\\(\\) after"):
        kept[0](SIN)


def test_same_plugin_twice():
    trig = plugin("trig", SIN)
    e = engine(trig)
    with pytest.raises(PluginError, match="a plugin named 'trig' is already registered"):
        e.register(trig)
    with pytest.raises(PluginError, match="already registered as 'trig'"):
        e.register(trig, name="trig2")


def test_plugin_objects_are_named_by_their_class():
    class Squares:
        @hookimpl
        def register_ops(self, register):
            register(SQUARE)

    e = engine(Squares())
    assert e.plugin_names()[-1] == f"{__name__}.{Squares.__qualname__}"
    assert e.Value(3.0).square().data == 9.0

    class MoreSquares(Squares):  # two instances of related classes: both named in a clash
        pass

    with pytest.raises(PluginError) as info:
        engine(Squares(), MoreSquares())
    message = str(info.value)
    assert "Squares'" in message and "MoreSquares'" in message
    assert not re.search(r"'\d{6,}'", message), "a plugin named by its id()"


def test_a_class_registered_instead_of_its_instance_is_told_to_register_an_instance():
    # The documented class plugin is an instance whose hook methods take self.
    class Squares:
        @hookimpl
        def register_ops(self, register):
            register(SQUARE)

    with pytest.raises(PluginError) as caught:
        engine(Squares)
    assert str(caught.value) == (
        "plugin 'Squares' is the class Squares, whose register_ops takes self: "
        "register an instance, Squares(), not the class"
    )
    assert engine(Squares()).Value(3.0).square().data == 9.0


def test_a_hook_method_without_self_is_told_to_take_self():
    # Without the check, Python passes the instance as `register`, and the plugin fails
    # with "'NoSelf' object is not callable".
    class NoSelf:
        @hookimpl
        def register_ops(register):  # noqa: N805 -- the mistake under test
            register(SQUARE)

    with pytest.raises(PluginError) as caught:
        engine(NoSelf())
    message = str(caught.value)
    assert "its method register_ops(register) has no self" in message
    assert message.endswith("write def register_ops(self, register)")
    assert "not callable" not in message


def test_the_hook_function_registered_instead_of_its_module():
    module = plugin("squares", SQUARE)
    with pytest.raises(PluginError) as caught:
        engine(module.register_ops)
    message = str(caught.value)
    assert "is the function register_ops itself; register the module" in message
    assert "implements no opgraph hook" not in message


# --- registering and unregistering at run time -----------------------------------------------


def test_register_and_unregister_rebuild_the_op_table_then_only():
    e = engine()
    table = e.ops
    e.Value(1.0) + 2.0
    assert e.ops is table  # using ops never rebuilds
    name = e.register(plugin("trig", SIN))
    assert name == "trig" and e.ops is not table
    assert e.Value(0.5).sin().data == math.sin(0.5)
    e.unregister("trig")
    with pytest.raises(AttributeError, match="no plugin registers an op of that name"):
        e.Value(0.5).sin()
    trig = plugin("trig", SIN)
    e.register(trig)
    e.unregister(trig)
    assert "sin" not in e.ops and "trig" not in e.plugin_names()


def test_rejected_plugin_leaves_the_engine_as_it_was():
    e = engine(plugin("trig", SIN))
    table, names = e.ops, e.plugin_names()
    with pytest.raises(PluginError, match="both plugin 'trig' and plugin 'again'"):
        e.register(plugin("again", SIN))
    assert e.ops is table and e.plugin_names() == names
    e.register(plugin("again", SQUARE))  # the name is free again
    assert "square" in e.ops


def test_unregister_unknown_plugin():
    e = engine()
    with pytest.raises(PluginError, match="no plugin 'nope' is registered on engine"):
        e.unregister("nope")


def test_values_made_before_a_rebuild_use_the_new_table():
    e = engine()
    x = e.Value(0.5)
    e.register(plugin("trig", SIN))
    assert x.sin().data == math.sin(0.5)


# --- listing plugins ---------------------------------------------------------------------------


def test_plugins_lists_distribution_version_and_ops():
    e = engine(plugin("trig", SIN, SQUARE))
    infos = {p.name: p for p in e.plugins()}
    builtin = infos["opgraph.plugins.arithmetic"]
    assert builtin.builtin and builtin.distribution == "opgraph"
    assert builtin.version == __import__("opgraph").__version__
    assert builtin.ops == ["add", "mul", "pow", "neg", "sub", "div"]
    mine = infos["trig"]
    assert not mine.builtin and mine.entry_point is None and mine.distribution is None
    assert mine.ops == ["sin", "square"] and mine.hooks == ["register_ops"]
    assert mine.to_dict()["ops"] == ["sin", "square"]
    every_op = [op for info in e.plugins() for op in info.ops]
    assert sorted(every_op) == sorted(e.ops)


def test_plugin_from_an_installed_distribution_names_it():
    # A plugin registered in code from an installed package (pytest's own modules, here):
    # plugins() finds its distribution from the module's top-level package.
    module = plugin("probe", SIN)
    module.__name__ = "_pytest.probe"
    infos = {p.name: p for p in engine(module).plugins()}
    assert infos["_pytest.probe"].distribution == "pytest"
    assert infos["_pytest.probe"].version == pytest.__version__


# --- any name: accepted and callable as a method, or refused by name ------------------------


@settings(max_examples=60, deadline=None)
@given(name=st.text(min_size=1, max_size=12) | st.sampled_from(sorted(dir(Value))))
def test_any_op_name_works_as_a_method_or_is_refused_naming_it(name):
    e = engine(builtins=False)  # no built-in op to conflict with
    try:
        e.register(plugin("named", Op(name, math.sin, lambda out, a: (math.cos(a),))))
    except PluginError as error:
        assert f"plugin 'named', op {name!r}" in str(error)
        assert (error.plugin, error.op) == ("named", name)
        assert name not in e.ops
        return
    assert name.isidentifier() and unicodedata.normalize("NFKC", name) == name
    assert getattr(e.Value(0.5), name)().data == math.sin(0.5)
    assert e.ops[name](0.5).data == math.sin(0.5)


def test_plugins_command_into_a_closed_pipe_ends_without_a_traceback():
    # `opgraph plugins --json | head -1`: the reader is gone before opgraph writes
    command = [sys.executable, "-m", "opgraph", "plugins", "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


# --- using a plugin's ops (merged from the former test_registry.py) --------------------------


def test_a_plugin_op_is_callable_as_a_method_and_from_the_op_table():
    e = engine(plugin("trig", SIN))
    x = e.value(0.5, label="x")
    y = x.sin()
    assert y.data == math.sin(0.5)
    assert e.ops.sin(x).data == math.sin(0.5)
    assert e.ops["sin"](x).data == math.sin(0.5)
    assert "sin" in e.ops
    y.backward()
    assert x.grad == math.cos(0.5)
    assert y._op == "sin"
    assert e.ops.definitions["sin"].plugin == "trig"


def test_a_varargs_forward_with_arity_and_an_nary_op_counting_its_operands():
    # math.hypot takes *coordinates, so the arity is given
    hypot = Op("hypot", math.hypot, lambda out, a, b: (a / out, b / out), arity=2)
    fma = Op("fma", lambda a, b, c: a * b + c, lambda out, a, b, c: (b, a, 1.0))
    e = engine(plugin("myplugin", hypot, fma))
    a, b, c = e.value(3.0), e.value(4.0), e.value(1.0)
    assert a.hypot(b).data == 5.0
    assert a.hypot(4).data == 5.0  # a plain number becomes a constant leaf
    out = e.ops.fma(a, b, c)
    assert out.data == 13.0 and out._prev == (a, b, c)
    out.backward()
    assert (a.grad, b.grad, c.grad) == (4.0, 3.0, 1.0)
    with pytest.raises(OperandError, match=r"op 'fma' \(plugin 'myplugin'\) takes 3"):
        e.ops.fma(a, b)
    total = Op("total", lambda *xs: sum(xs), lambda out, *xs: (1.0,) * len(xs), arity=3)
    assert engine(plugin("sums", total)).ops.total(1, 2, 3).data == 6.0


def test_composite_op_is_built_from_other_ops():
    square_plus = Composite("square_plus", lambda a, b: a * a + b)
    e = engine(plugin("squares", square_plus))
    a, b = e.value(3.0), e.value(1.0)
    out = a.square_plus(b)
    assert out.data == 10.0
    assert out._op == "+"  # the graph records the ops it is built from
    out.backward()
    assert (a.grad, b.grad) == (6.0, 1.0)


def test_engine_without_builtins_has_no_operators():
    e = engine(plugin("trig", SIN), builtins=False)
    with pytest.raises(AttributeError, match="no op named 'add' is registered"):
        e.value(1.0) + 1


def test_a_replaced_op_is_differentiated_by_its_replacement():
    # A plugin may replace a built-in: here relu becomes leaky.
    leaky = Op("relu", lambda a: a if a > 0 else 0.01 * a, lambda out, a: (1.0 if a > 0 else 0.01,))
    e = engine(plugin("leaky", leaky, replace=True))
    x = e.value(-2.0)
    y = x.relu()
    assert y.data == -0.02
    y.backward()
    assert x.grad == 0.01


def test_malformed_ops_named_by_a_class_plugin_too():
    """A plugin object (a class, as pluggy accepts) is blamed by its name, as a module is."""

    def class_plugin(*ops):
        def register_ops(register):
            for op in ops:
                register(op)

        return type("Sloppy", (), {"register_ops": staticmethod(hookimpl(register_ops))})

    not_callable = Op("sin", math.sin, (1.0,))
    with pytest.raises(PluginError, match="plugin 'Sloppy', op 'sin': derivative must be callable"):
        engine(class_plugin(not_callable))
    # a derivative returning a bare number, not one partial per input
    both = Op("both", lambda a, b: a + b, lambda out, a, b: 1.0)
    with pytest.raises(PluginError, match="'both'.*must return 2 partial"):
        engine(class_plugin(both))


# --- errors inside a plugin's functions carry the op's and the plugin's name -----------------


def test_exception_in_forward_names_op_plugin_and_inputs():
    def forward(a):
        raise ValueError("bad input")

    e = engine(plugin("myplugin", Op("flaky", forward, lambda out, a: (1.0,))))
    with pytest.raises(OpError) as info:
        e.value(1.5, label="w").flaky()
    message = str(info.value)
    for part in ["'flaky'", "'myplugin'", "forward", "1.5", "'w'", "ValueError: bad input"]:
        assert part in message, (part, message)
    assert isinstance(info.value.__cause__, ValueError)


def test_exception_in_derivative_names_op_plugin_and_node():
    def derivative(out, a):
        if a > 1:
            raise ArithmeticError("no slope here")
        return (1.0,)

    e = engine(plugin("myplugin", Op("flaky", lambda a: a, derivative)))
    y = e.value(2.0, label="w").flaky()
    y.label = "y"
    with pytest.raises(OpError) as info:
        y.backward()
    message = str(info.value)
    for part in ["'flaky'", "'myplugin'", "backward", "'y'", "2.0", "'w'", "no slope here"]:
        assert part in message, (part, message)
    assert isinstance(info.value.__cause__, ArithmeticError)


@pytest.mark.parametrize("arity", [1, 2, 3])
def test_derivative_returning_wrong_count_at_backward_time(arity):
    """The registration probe cannot call this derivative (it fails at 0.5), so backward
    counts the partials itself, on the inline unary and binary paths as on the general one."""

    def derivative(out, *xs):
        if xs[0] == 0.5:
            raise ValueError("probe point")
        return (1.0,) * (arity + 1)

    odd = Op("odd", lambda *xs: xs[0], derivative, arity=arity)
    e = engine(plugin("myplugin", odd))
    with pytest.raises(OpError, match=f"'odd'.*'myplugin'.*must return {arity} partial"):
        e.ops.odd(*[e.value(2.0)] * arity).backward()


def test_forward_returning_a_non_number():
    e = engine(plugin("myplugin", Op("text", lambda a: "one", lambda out, a: (1.0,))))
    with pytest.raises(OpError, match="'text'.*'myplugin'.*must return a real number"):
        e.value(1.0).text()


def test_exception_in_a_composite_names_it():
    e = engine(plugin("myplugin", Composite("bad", lambda a: a.nonexistent_op())))
    with pytest.raises(OpError, match="'bad'.*'myplugin'.*nonexistent_op"):
        e.value(1.0).bad()


def test_composite_returning_a_non_value():
    e = engine(plugin("myplugin", Composite("numeric", lambda a: a.data * 2)))
    with pytest.raises(OpError, match="'numeric'.*'myplugin'.*composite op must return a Value"):
        e.value(1.0).numeric()
