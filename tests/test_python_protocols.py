"""Which of Python's protocols a Value supports, and what it says where it does not.

A Value is a node of a graph. Truth, order, float() and abs() would each give a number that
leaves the graph (backward would silently stop there, and a compiled replay would keep the
branch taken once), so each is a TypeError that says what to write instead. compile() also
warns when the function draws random numbers while being recorded."""

from __future__ import annotations

import inspect
import math
import random
import sys
import warnings

import pytest

import opgraph
from opgraph import CompileWarning, Value
from opgraph.nn import MLP


@pytest.mark.parametrize(
    ("use", "says"),
    [
        (lambda s: bool(s), "`if v.data > 0:`"),
        (lambda s: s > 0, "`a.data > b.data`"),
        (lambda s: s <= 0, "`a.data <= b.data`"),
        (lambda s: 0 < s, "Values have no order"),
        (lambda s: max(s, s), "for max(a, b) in the graph write `(a - b).relu() + b`"),
        (lambda s: abs(s), "`v.relu() + (-v).relu()`"),
        (lambda s: float(s), "its number is `v.data`"),
        (lambda s: math.exp(s), "`v.exp()`"),
    ],
)
def test_number_protocols_say_what_to_write(use, says):
    s = Value(0.5, label="s")
    with pytest.raises(TypeError) as caught:
        use(s)
    assert says in str(caught.value)
    assert "Value 's'" in str(caught.value)  # names the node


def test_what_is_written_instead_gives_the_graph_and_its_gradient():
    a, b = Value(0.5), Value(2.0)
    m = (a - b).relu() + b  # max(a, b)
    absolute = (a - 3).relu() + (-(a - 3)).relu()  # |a - 3|
    (m + absolute).backward()
    assert (m.data, absolute.data) == (2.0, 2.5)
    assert (a.grad, b.grad) == (-1.0, 1.0)
    assert a.data > 0 and float(a.data) == 0.5


def test_truth_testing_while_compiling_is_refused_at_its_line():
    def loss(x):
        s = x * 2
        if s:  # always true: the replay would keep this branch
            return s
        return -s

    with pytest.raises(TypeError, match="opgraph.compile refuses it") as caught:
        opgraph.compile(loss, 1.0)
    line = inspect.getsourcelines(loss)[1] + 2
    assert any(entry.lineno + 1 == line for entry in caught.traceback)  # (0-based)


def draw_inside(x):
    noise = random.gauss(0.0, 1.0)  # frozen into the replay
    return x * noise


def test_a_random_draw_while_recording_warns_with_its_line():
    with pytest.warns(CompileWarning) as caught:
        compiled = opgraph.compile(draw_inside, 1.0)
    message = str(caught[0].message)
    line = inspect.getsourcelines(draw_inside)[1] + 1
    assert f"random.gauss at {__file__}:{line}" in message
    assert "A replay reuses the numbers drawn then" in message
    assert compiled(1.0) == compiled(1.0)  # what the warning is about
    assert sys.getprofile() is None  # the hook is gone after recording


def test_a_model_built_inside_the_function_warns_of_zero_parameters():
    def step(x0, x1):
        model = MLP(2, [4, 1])  # draws its weights: a new model at every eager call
        return model([x0, x1])

    with pytest.warns(CompileWarning, match="The compiled function has 0 parameters") as caught:
        compiled = opgraph.compile(step, 1.0, 2.0)
    assert "build it outside and call it inside" in str(caught[0].message)
    assert compiled.parameters == []


def test_a_model_built_outside_compiles_without_a_word():
    model = MLP(2, [4, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = opgraph.compile(lambda a, b: model([a, b]), 1.0, 2.0)
    assert len(compiled.parameters) == len(model.parameters())


def test_a_running_profiler_is_left_alone():
    calls = []

    def profiler(frame, event, arg):
        calls.append(event)

    sys.setprofile(profiler)
    try:
        opgraph.compile(draw_inside, 1.0)  # no warning: the hook would replace the profiler
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    assert calls
