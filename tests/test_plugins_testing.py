"""opgraph.testing: check_op against finite differences, and the pytest plugin's fixtures."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opgraph import Composite, Engine, Op, hookimpl
from opgraph.testing import GradcheckError, check_op, random_points


def engine_with(*ops: Op | Composite) -> Engine:
    module = types.ModuleType("under_test")

    @hookimpl
    def register_ops(register):
        for op in ops:
            register(op)

    module.register_ops = register_ops
    return Engine(plugins=[module], entry_points=False)


BUILTIN = Engine(entry_points=False)


@pytest.mark.parametrize(
    "name, domain",
    [
        ("add", (-3, 3)),
        ("mul", (-3, 3)),
        ("pow", [(0.2, 3), (-2, 2)]),  # a positive base: ln a is in d/db
        ("neg", (-3, 3)),
        ("sub", (-3, 3)),
        ("div", [(-3, 3), (0.5, 3)]),
        ("exp", (-3, 3)),
        ("log", (0.1, 5)),
        ("tanh", (-3, 3)),
        ("sigmoid", (-6, 6)),
        ("relu", (0.1, 3)),
    ],
)
def test_builtin_ops_pass(name, domain):
    report = check_op(BUILTIN, name, domain=domain, samples=10)
    assert report.points == 10 and report.op == name and report.plugin.startswith("opgraph.")


def test_relu_passes_on_both_sides_of_its_kink():
    check_op(BUILTIN, "relu", points=[-2.0, -0.5, 0.5, 2.0])


# A sine whose derivative is wrong: -cos instead of cos.
BAD_SIN = Op("sin", math.sin, lambda out, a: (-math.cos(a),))


def test_wrong_derivative_reports_the_worst_point_and_its_inputs():
    points = [1.4, 1.5, 3.1, -0.4]
    with pytest.raises(GradcheckError) as caught:
        check_op(engine_with(BAD_SIN), "sin", points=points)
    message = str(caught.value)
    # The slopes differ by 2|cos x|, most (also relative to the tolerance) at x = 3.1.
    assert "op 'sin' (plugin 'under_test')" in message
    assert "Worst at inputs (3.1,), with respect to input 1 of 1" in message
    assert f"analytic {-math.cos(3.1)!r}" in message
    assert "4 partial derivative(s) over tolerance, at 4 point(s) checked" in message


def test_wrong_partial_of_a_binary_op_names_that_input():
    # atan2 with the partial derivative in x off by a sign.
    def derivative(out, y, x):
        r2 = x * x + y * y
        return x / r2, y / r2

    with pytest.raises(GradcheckError, match="with respect to input 2 of 2"):
        check_op(engine_with(Op("atan2", math.atan2, derivative)), "atan2", domain=(0.5, 2))


def test_composite_ops_are_checked_through_their_parts():
    softplus = Composite("softplus", lambda a: (a.exp() + 1).log())
    check_op(engine_with(softplus), "softplus", domain=(-5, 5))


def test_nan_derivative_is_a_failure():
    with pytest.raises(GradcheckError, match="analytic nan"):
        check_op(engine_with(Op("sin", math.sin, lambda out, a: (math.nan,))), "sin")


def test_point_where_the_op_is_not_finite():
    with pytest.raises(GradcheckError, match="its output is -inf at inputs \\(0.0,\\)"):
        check_op(BUILTIN, "log", points=[1.0, 0.0])
    with pytest.raises(GradcheckError, match="at input 1 - eps"):
        check_op(BUILTIN, "log", points=[1e-7])


def test_unknown_op_lists_the_registered_ones():
    with pytest.raises(GradcheckError, match="no op named 'sin' .*registered ops: add, div"):
        check_op(BUILTIN, "sin")


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"points": [(1.0, 2.0)]}, "takes 1 input"),
        ({"domain": (3, 1)}, "low <= high"),
        ({"domain": [(0, 1), (0, 1)]}, "one (low, high) pair or 1 of them"),
        ({"domain": [(0, "2")]}, "low <= high"),  # not a number: refused, not compared
        ({"eps": 0}, "need eps > 0"),
        ({"rtol": 0, "atol": 0}, "not both 0"),
    ],
)
def test_bad_arguments(options, problem):
    with pytest.raises(ValueError, match=problem.replace("(", "\\(").replace(")", "\\)")):
        check_op(BUILTIN, "exp", **options)


def test_no_points():
    with pytest.raises(GradcheckError, match="no points to check"):
        check_op(BUILTIN, "exp", points=[])


@settings(max_examples=40, deadline=None)
@given(
    p=st.floats(-5, 5),
    q=st.floats(-5, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_linear_op_with_its_derivative_passes(p, q, seed):
    op = Op("lin", lambda a, b: p * a + q * b, lambda out, a, b: (p, q))
    report = check_op(engine_with(op), "lin", seed=seed, samples=5, atol=1e-6)
    assert report.worst.error <= 1e-6 + 1e-5 * abs(report.worst.numeric)


@settings(max_examples=40, deadline=None)
@given(p=st.floats(-5, 5), delta=st.floats(1e-3, 10) | st.floats(-10, -1e-3))
def test_derivative_off_by_delta_fails(p, delta):
    op = Op("lin", lambda a: p * a, lambda out, a: (p + delta,))
    with pytest.raises(GradcheckError) as caught:
        check_op(engine_with(op), "lin", samples=3)
    assert f"analytic {p + delta!r}" in str(caught.value)


@given(
    arity=st.integers(1, 4),
    low=st.floats(-100, 100),
    width=st.floats(0, 50),
    seed=st.integers(0, 1000),
)
def test_random_points_are_in_the_domain_and_repeatable(arity, low, width, seed):
    points = random_points(arity, (low, low + width), 7, seed)
    assert len(points) == 7 and all(len(p) == arity for p in points)
    assert all(low <= x <= low + width for p in points for x in p)
    assert points == random_points(arity, (low, low + width), 7, seed)


# --- second derivatives and forward mode ------------------------------------------------------

# A sine with a right first derivative and a wrong one on Values: +sin instead of -sin below.
WRONG_TWICE = Op(
    "sin", math.sin, lambda out, a: (math.cos(a),), value_derivative=lambda out, a: (a.cos(),)
)
# The right number on Values, cos a, but with a slope of -sin a + 1/2: (a - a.data) is 0.
WRONG_TWICE_VALUES = Op(
    "sin",
    math.sin,
    lambda out, a: (math.cos(a),),
    value_derivative=lambda out, a: (a.cos() + (a - a.data) * 0.5,),
)


def test_order_2_finds_a_wrong_second_derivative_that_order_1_misses():
    for op in (WRONG_TWICE, WRONG_TWICE_VALUES):
        engine = engine_with(op, Op("cos", math.cos, lambda out, a: (math.sin(a),)))
        check_op(engine, "sin", domain=(-3, 3))
        with pytest.raises(GradcheckError, match=r"'sin'.*the second derivative disagrees"):
            check_op(engine, "sin", domain=(-3, 3), order=2)


def test_order_2_on_an_op_differentiable_once_names_it():
    from opgraph import NotDifferentiableError

    engine = engine_with(Op("sin", math.sin, lambda out, a: (math.cos(a),)))
    with pytest.raises(NotDifferentiableError, match="'sin'.*plugin"):
        check_op(engine, "sin", order=2)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        check_op(engine, "sin", order=3)


def test_forward_mode_is_checked_against_reverse_mode():
    calls = iter(range(10**6))

    def drifting(out, a):  # right for the first three calls (registration, then the
        n = next(calls)  # checks at two points), then not a function of its inputs
        return (math.cos(a) + (n if n >= 3 else 0),)

    engine = engine_with(Op("sin", math.sin, drifting))
    with pytest.raises(GradcheckError, match="forward mode disagrees with reverse mode"):
        check_op(engine, "sin", points=[0.5, 1.0])


# --- the pytest plugin, in a real pytest run of a plugin author's project ----------------------

AUTHOR_PLUGIN = """
import math
from opgraph import Op, hookimpl

@hookimpl
def register_ops(register):
    register(Op("sin", math.sin, lambda out, a: (math.cos(a),)))
    register(Op("badcos", math.cos, lambda out, a: (math.sin(a),)))  # sign forgotten
"""

AUTHOR_TESTS = """
def test_sin(check_op):
    check_op("sin", domain=(-3, 3))

def test_badcos(check_op):
    check_op("badcos", points=[0.25, 1.0])

def test_engine_is_fresh_and_isolated(opgraph_engine):
    assert "sin" in opgraph_engine.ops
    opgraph_engine.unregister("author_plugin")  # does not leak into the next test

def test_engine_again(opgraph_engine):
    assert opgraph_engine.Value(0.5).sin().data > 0.47
"""

OVERRIDE_TESTS = """
import pytest

@pytest.fixture
def opgraph_plugins():
    return []  # built-ins only, for this module

def test_only_builtins(opgraph_engine):
    assert "sin" not in opgraph_engine.ops and "exp" in opgraph_engine.ops
"""


def run_pytest(project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pytest_plugin_fixtures_in_an_authors_project(tmp_path):
    (tmp_path / "author_plugin.py").write_text(AUTHOR_PLUGIN)
    (tmp_path / "test_author.py").write_text(AUTHOR_TESTS)
    (tmp_path / "test_override.py").write_text(OVERRIDE_TESTS)
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent("""
        [tool.pytest.ini_options]
        opgraph_plugins = ["author_plugin"]
        pythonpath = ["."]
        """)
    )
    result = run_pytest(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed, 4 passed" in output
    assert "FAILED test_author.py::test_badcos" in output
    assert "op 'badcos' (plugin 'author_plugin')" in output
    assert "Worst at inputs (1.0,)" in output


def test_pytest_plugin_reports_a_plugin_it_cannot_import():
    from opgraph.testing.pytest_plugin import load_plugin

    with pytest.raises(pytest.fail.Exception) as caught:
        load_plugin("no_such_plugin")
    assert "opgraph_plugins: cannot import plugin 'no_such_plugin': ModuleNotFoundError" in str(
        caught.value
    )
    assert load_plugin("opgraph.plugins.arithmetic:register_ops").__name__ == "register_ops"


def test_a_failing_check_shows_the_test_line_and_the_reason_not_opgraph(tmp_path):
    # opgraph's frames (__tracebackhide__) are hidden: the report is the test's own line
    # and the one-line reason, as with a failing assert.
    (tmp_path / "author_plugin.py").write_text(AUTHOR_PLUGIN)
    (tmp_path / "test_bad.py").write_text(
        'def test_badcos(check_op):\n    check_op("badcos", points=[0.25, 1.0])\n'
    )
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nopgraph_plugins = ["author_plugin"]\npythonpath = ["."]\n'
    )
    result = run_pytest(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    failure = output.split(" FAILURES ")[1].split(" short test summary ")[0]
    assert '>       check_op("badcos", points=[0.25, 1.0])' in failure
    assert "E       opgraph.errors.GradcheckError: op 'badcos'" in failure
    assert "opgraph/testing" not in failure and "def check_op" not in failure
    assert len(output.splitlines()) < 20, output  # was 69 lines, most of them opgraph's


def test_order_2_finds_a_value_derivative_that_disagrees_with_the_derivative():
    # right on floats, and on Values, past 2, the derivative of cos instead of sin's
    # (registration refuses one that disagrees at its few probe points, all below 2)
    engine = engine_with(
        Op(
            "sin",
            math.sin,
            lambda out, a: (math.cos(a),),
            value_derivative=lambda o, a: (-a.sin(),) if a.data > 2 else (a.cos(),),
        )
    )
    with pytest.raises(GradcheckError, match="value_derivative disagrees with derivative"):
        check_op(engine, "sin", order=2, domain=(2.5, 3.0))
