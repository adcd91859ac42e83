"""Installed plugins, for real: `pip install` the example plugin and a broken one.

Both are installed, as a user would, into throwaway virtual environments that see the
running one's packages (conftest.throwaway_environment), never into the environment running
the tests: a run cut short leaves no plugin behind to break every later default engine. The
checks run in a subprocess of that environment, or in this process with its site-packages on
sys.path for the one test. The default engine is only ever created in subprocesses.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import throwaway_environment

from opgraph import Engine, PluginLoadError, PluginLoadWarning
from opgraph.loading import PluginManager, add_plugin, builtin_plugins, load_entry_points
from opgraph.testing import GradcheckError, check_op

ROOT = Path(__file__).resolve().parent.parent
TRIG = ROOT / "examples" / "opgraph-trig"
BROKEN = ROOT / "tests" / "plugins" / "broken"
BROKEN_ENTRY_POINTS = [
    "broken_args",
    "broken_conflict",
    "broken_hookname",
    "broken_import",
    "broken_noself",
    "broken_raises",
    "broken_target",
]


pytestmark = pytest.mark.install


class Environment(NamedTuple):
    python: Path
    site: Path


def pip(env: Environment, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [env.python, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def can_build_offline() -> bool:
    """Whether this environment can build a wheel without fetching build tools."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    from importlib.metadata import version

    major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def environment_with(folder: Path, *sources: Path) -> Environment:
    """A throwaway environment with the packages at `sources` pip-installed (each from a
    copy, so the build leaves nothing in the repository)."""
    env = Environment(*throwaway_environment(folder / "venv"))
    for source in sources:
        copy = folder / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        if can_build_offline():
            args = ("--no-deps", "--no-build-isolation", "--no-index", str(copy))
        else:  # fetches setuptools for an isolated build
            args = ("--no-deps", str(copy))
        result = pip(env, "install", *args)
        assert result.returncode == 0, result.stdout + result.stderr
    return env


@pytest.fixture(scope="module")
def trig_env(tmp_path_factory) -> Environment:
    return environment_with(tmp_path_factory.mktemp("trig"), TRIG)


@pytest.fixture(scope="class")
def broken_env(tmp_path_factory) -> Environment:
    # An environment of its own: where it is installed, a default engine fails to load.
    return environment_with(tmp_path_factory.mktemp("broken"), TRIG, BROKEN)


def running_environment_distributions() -> set[str]:
    """The distributions the environment running the tests has, asked of a fresh process."""
    code = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def python(
    env: Environment, code: str, plugins: str | None = None, *args: str, strict: bool = False
) -> subprocess.CompletedProcess:
    """Run Python in a fresh process of `env`, with OPGRAPH_PLUGINS set to `plugins` (None:
    unset), and OPGRAPH_STRICT_PLUGINS=1 if `strict`."""
    unset = ("OPGRAPH_PLUGINS", "OPGRAPH_STRICT_PLUGINS", "OPGRAPH_DEBUG")
    variables = {k: v for k, v in os.environ.items() if k not in unset}
    if plugins is not None:
        variables["OPGRAPH_PLUGINS"] = plugins
    if strict:
        variables["OPGRAPH_STRICT_PLUGINS"] = "1"
    return subprocess.run(
        [env.python, *(["-c", code] if code else []), *args],
        capture_output=True,
        text=True,
        env=variables,
        timeout=120,
    )


def cli(env: Environment, *args: str, plugins: str | None = None, strict: bool = False):
    return python(env, "", plugins, "-m", "opgraph", *args, strict=strict)


USE_SIN = """
import math
from opgraph import Value, default_engine
x = Value(0.5)
y = x.sin()
y.backward()
assert y.data == math.sin(0.5) and x.grad == math.cos(0.5)
print(default_engine().ops.definitions["sin"].plugin)
"""


SIN_TWICE = """
import math
from opgraph import Value, grad
x = Value(0.5)
(d,) = grad(x.sin() * x, [x], create_graph=True)  # sin x + x cos x
(dd,) = grad(d, [x])  # 2 cos x - x sin x
assert abs(dd.data - (2 * math.cos(0.5) - 0.5 * math.sin(0.5))) < 1e-12, dd.data
print("ok")
"""


class TestExamplePlugin:
    @pytest.fixture(autouse=True)
    def on_path(self, trig_env, monkeypatch):
        # For the tests that make engines in this process: the plugin importable for one test.
        monkeypatch.syspath_prepend(str(trig_env.site))

    def test_default_engine_discovers_it(self, trig_env):
        result = python(trig_env, USE_SIN)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "trig"

    def test_its_sin_is_differentiated_twice(self, trig_env):
        result = python(trig_env, SIN_TWICE)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"

    def test_opgraph_plugins_excludes_it_from_the_default_engine(self, trig_env):
        result = python(trig_env, "from opgraph import Value\nValue(0.5).sin()", "")
        assert result.returncode == 1
        assert "AttributeError" in result.stderr
        assert "no plugin registers an op of that name" in result.stderr

    @pytest.mark.parametrize(
        "selection", ["trig", "opgraph-trig", "opgraph_trig", "Opgraph.Trig", " trig ,"]
    )
    def test_opgraph_plugins_selects_it_by_entry_point_or_distribution(
        self, monkeypatch, selection
    ):
        monkeypatch.setenv("OPGRAPH_PLUGINS", selection)
        assert Engine().ops.definitions["sin"].plugin == "trig"

    def test_opgraph_plugins_with_an_unknown_name_warns(self, monkeypatch):
        monkeypatch.setenv("OPGRAPH_PLUGINS", "trigg")
        with pytest.warns(UserWarning, match="OPGRAPH_PLUGINS names trigg, which no installed"):
            assert "sin" not in Engine().ops

    def test_engine_loads_entry_points_unless_told_not_to(self, monkeypatch):
        monkeypatch.delenv("OPGRAPH_PLUGINS", raising=False)
        assert "sin" in Engine().ops
        assert "sin" not in Engine(entry_points=False).ops
        monkeypatch.setenv("OPGRAPH_PLUGINS", "")
        assert "sin" not in Engine().ops

    def test_an_entry_point_name_already_taken(self, monkeypatch):
        monkeypatch.setenv("OPGRAPH_PLUGINS", "opgraph-trig")
        pm = PluginManager()
        assert load_entry_points(pm) == ["trig"]
        assert load_entry_points(pm) == []  # loading again is harmless
        impostor = PluginManager()
        add_plugin(impostor, builtin_plugins()[0], name="trig")
        with pytest.raises(PluginLoadError, match="two plugins are named 'trig'"):
            load_entry_points(impostor, strict=True)
        with pytest.warns(PluginLoadWarning, match="two plugins are named 'trig'"):
            assert load_entry_points(impostor) == []
        assert list(impostor.failures) == ["trig (opgraph-trig)"]

    def test_plugins_command_lists_it(self, trig_env):
        result = cli(trig_env, "plugins")
        assert result.returncode == 0, result.stderr
        assert "trig  (opgraph-trig 0.1.0, entry point trig = opgraph_trig)" in result.stdout
        assert "ops: sin, cos, atan2, softplus" in result.stdout
        assert "opgraph.plugins.arithmetic  (built-in, opgraph" in result.stdout

    def test_plugins_command_json(self, trig_env):
        result = cli(trig_env, "plugins", "--json", "--installed")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [
            {
                "name": "trig",
                "distribution": "opgraph-trig",
                "version": "0.1.0",
                "entry_point": "trig = opgraph_trig",
                "builtin": False,
                "hooks": ["register_ops"],
                "ops": ["sin", "cos", "atan2", "softplus"],
                "replaces": {},
                "error": None,
                "left_out": {},
            }
        ]
        excluded = cli(trig_env, "plugins", "--json", "--installed", plugins="")
        assert json.loads(excluded.stdout) == []
        misspelled = cli(trig_env, "plugins", "--installed", plugins="trigg")
        assert misspelled.stdout.strip() == "no plugins loaded"
        assert misspelled.stderr.startswith(
            "opgraph plugins: warning: OPGRAPH_PLUGINS names trigg, which no installed plugin"
        )

    def test_its_own_test_suite_passes(self, trig_env, tmp_path):
        # The example's tests, run as its author would, against the installed package: the
        # src/ layout keeps the source tree off sys.path.
        shutil.copytree(TRIG, tmp_path / "trig", ignore=shutil.ignore_patterns("build"))
        result = subprocess.run(
            [trig_env.python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=tmp_path / "trig",
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "8 passed" in result.stdout


class TestBrokenPlugin:
    """One installed distribution, opgraph-broken, with an entry point per failure.

    By default a broken plugin is left out with a PluginLoadWarning and the rest of opgraph
    works; OPGRAPH_STRICT_PLUGINS=1 makes it the PluginLoadError it used to be."""

    @pytest.fixture(autouse=True)
    def on_path(self, broken_env, monkeypatch):
        monkeypatch.syspath_prepend(str(broken_env.site))

    def test_the_running_environment_never_has_it(self, broken_env):
        # Installed where the tests run, an interrupted run would leave it there, and every
        # later default engine would warn about it.
        assert (broken_env.site / "opgraph_broken").is_dir()
        assert not {"opgraph-broken", "opgraph-trig"} & running_environment_distributions()

    def test_import_error_names_entry_point_distribution_and_version(self, monkeypatch):
        monkeypatch.setenv("OPGRAPH_PLUGINS", "broken_import")
        monkeypatch.setenv("OPGRAPH_STRICT_PLUGINS", "1")
        with pytest.raises(PluginLoadError) as caught:
            Engine()
        error = caught.value
        assert isinstance(error.__cause__, ModuleNotFoundError)
        assert error.entry_point == "broken_import = opgraph_broken.import_error"
        assert (error.distribution, error.version) == ("opgraph-broken", "0.0.1")
        message = str(error)
        assert "plugin 'broken_import' (entry point broken_import = " in message
        assert "distribution opgraph-broken 0.0.1) failed to load" in message
        assert "No module named 'opgraph_missing_dependency'" in message
        assert "set OPGRAPH_PLUGINS= (the other installed plugins to load;" in message
        assert "or uninstall opgraph-broken" in message

    def test_default_engine_works_without_the_broken_plugins(self, broken_env):
        # No OPGRAPH_PLUGINS: every installed plugin loads; the broken ones are left out
        # with one warning each, and a program that never uses their ops runs.
        result = python(broken_env, "from opgraph import Value\nprint((Value(1.0) + 1).data)")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "2.0\n"
        for name in BROKEN_ENTRY_POINTS:
            assert (
                result.stderr.count(f"PluginLoadWarning: plugin '{name}'")
                + result.stderr.count(
                    f"PluginLoadWarning: op 'add' is registered by both plugin "
                    f"'opgraph.plugins.arithmetic' and plugin '{name}'"
                )
                == 1
            ), name
        assert "opgraph-broken 0.0.1" in result.stderr
        # The hint lists every other installed plugin, ready to paste.
        others = ",".join(sorted(set(BROKEN_ENTRY_POINTS) - {"broken_args"}) + ["trig"])
        assert f"set OPGRAPH_PLUGINS={others} (the other" in result.stderr
        assert "set OPGRAPH_STRICT_PLUGINS=1 to make this an error" in result.stderr

    def test_a_conflict_leaves_out_that_op_only(self, monkeypatch):
        # broken_conflict registers `add` (the built-in's) and `twice`: the first
        # registration of `add` wins, and `twice` loads; the warning says both.
        monkeypatch.setenv("OPGRAPH_PLUGINS", "broken_conflict")
        monkeypatch.delenv("OPGRAPH_STRICT_PLUGINS", raising=False)
        with pytest.warns(PluginLoadWarning) as caught:
            engine = Engine()
        assert len(caught) == 1
        message = str(caught[0].message)
        assert "op 'add' is registered by both plugin 'opgraph.plugins.arithmetic'" in message
        assert "op 'add' of plugin 'broken_conflict' (distribution opgraph-broken 0.0.1)" in message
        assert "the plugin's other ops are loaded" in message
        ops = engine.ops.definitions
        assert ops["add"].plugin == "opgraph.plugins.arithmetic"
        assert ops["twice"].plugin == "broken_conflict"
        x = engine.Value(1.5)
        y = engine.ops.twice(x) + x
        y.backward()
        assert (y.data, x.grad) == (4.5, 3.0)
        info = next(i for i in engine.plugins() if i.name == "broken_conflict")
        assert info.ops == ["twice"] and list(info.left_out) == ["add"]
        assert engine.failed_plugins() == []

    def test_warning_is_issued_once_per_plugin(self, broken_env, monkeypatch):
        monkeypatch.setenv("OPGRAPH_PLUGINS", "broken_import,trig")
        code = (
            "import warnings\nwarnings.simplefilter('default')\n"
            "from opgraph import Engine\nfor _ in range(3): Engine()"
        )
        result = python(broken_env, code, "broken_import,trig")
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("PluginLoadWarning") == 1

    def test_strict_mode_makes_it_an_error(self, broken_env):
        result = python(broken_env, "from opgraph import Value\nValue(1.0) + 1", strict=True)
        assert result.returncode == 1
        assert "opgraph.errors.PluginLoadError: plugin 'broken_args'" in result.stderr

    def test_opgraph_plugins_leaves_it_out(self, broken_env):
        code = "from opgraph import Value\nassert (Value(1.0) + 1).data == 2"
        result = python(broken_env, code, "", strict=True)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""

    @pytest.mark.parametrize(
        "entry_point, problem",
        [
            ("broken_hookname", "implements 'register_op', which is not an opgraph hook"),
            ("broken_hookname", "did you mean 'register_ops'?"),
            ("broken_args", "its hook function register_ops(reg) takes 'reg'"),
            ("broken_conflict", "both plugin 'opgraph.plugins.arithmetic' and plugin"),
            ("broken_raises", "failed in register_ops: RuntimeError: the ops table"),
            (
                "broken_target",
                "the entry point points at the function register_ops, not at a plugin; point "
                "it at the module that holds the function: broken_target = opgraph_broken.target "
                "(not opgraph_broken.target:register_ops)",
            ),
            (
                "broken_noself",
                "its method register_ops(register) has no self, so Python would pass the "
                "instance as 'register'; write def register_ops(self, register)",
            ),
        ],
    )
    def test_each_failure_names_the_plugin(self, monkeypatch, entry_point, problem):
        monkeypatch.setenv("OPGRAPH_PLUGINS", f"{entry_point},trig")
        monkeypatch.setenv("OPGRAPH_STRICT_PLUGINS", "1")
        with pytest.raises(PluginLoadError) as caught:
            Engine()
        message = str(caught.value)
        assert problem in message
        assert f"'{entry_point}'" in message
        assert "opgraph-broken 0.0.1" in message and "OPGRAPH_PLUGINS=trig" in message
        assert caught.value.plugin == entry_point
        assert caught.value.__cause__ is not None
        # Not strict: the same message as a warning, and the engine has the other plugins.
        monkeypatch.delenv("OPGRAPH_STRICT_PLUGINS")
        with pytest.warns(PluginLoadWarning) as warned:
            engine = Engine()
        assert [problem in str(w.message) for w in warned] == [True]
        assert "sin" in engine.ops and (engine.value(1.0) + 1).data == 2
        if entry_point == "broken_conflict":  # only its `add` is left out: see below
            return
        assert [info.name for info in engine.failed_plugins()] == [entry_point]
        assert problem in engine.failed_plugins()[0].error
        assert entry_point not in engine.plugin_names()

    def test_an_op_it_would_have_provided_names_it(self, monkeypatch):
        # broken_target's module does register `cube`; the entry point aims at the function.
        monkeypatch.setenv("OPGRAPH_PLUGINS", "broken_target")
        with pytest.warns(PluginLoadWarning):
            engine = Engine()
        note = (
            "plugin 'broken_target' (entry point broken_target = "
            "opgraph_broken.target:register_ops, distribution opgraph-broken 0.0.1) failed to "
            "load: PluginError: the entry point points at the function register_ops"
        )
        with pytest.raises(AttributeError) as as_method:
            engine.value(2.0).cube()
        assert "no plugin registers an op of that name; " + note in str(as_method.value)
        assert str(as_method.value).endswith("; it may have provided this op")
        with pytest.raises(AttributeError) as as_op:
            engine.ops.cube  # noqa: B018
        assert note in str(as_op.value)
        with pytest.raises(GradcheckError) as checked:
            check_op(engine, "cube")
        assert note in str(checked.value)
        # The op table still says nothing about failures when there are none.
        with pytest.raises(AttributeError) as clean:
            Engine(entry_points=False).ops.cube  # noqa: B018
        assert "failed to load" not in str(clean.value)

    def test_default_ops_name_it_too(self, broken_env):
        code = "import opgraph\nopgraph.default_engine().ops.cube"
        result = python(broken_env, code, "broken_target,trig")
        assert result.returncode == 1
        assert "AttributeError: no op named 'cube' is registered" in result.stderr
        assert "plugin 'broken_target' (entry point broken_target = " in result.stderr

    def test_plugins_command_lists_the_broken_one(self, broken_env):
        result = cli(broken_env, "plugins", plugins="trig,broken_args")
        assert result.returncode == 0, result.stderr
        assert "trig  (opgraph-trig 0.1.0, entry point trig = opgraph_trig)" in result.stdout
        assert (
            "broken_args  (opgraph-broken 0.0.1, entry point broken_args = "
            "opgraph_broken.wrong_args)  FAILED TO LOAD\n    error: plugin 'broken_args'"
        ) in result.stdout
        assert "set OPGRAPH_PLUGINS=trig (the other" in result.stdout
        assert result.stderr == "opgraph plugins: 1 plugin(s) failed to load: broken_args\n"

    def test_plugins_command_json_has_the_error(self, broken_env):
        result = cli(broken_env, "plugins", "--json", "--installed", plugins="trig,broken_import")
        assert result.returncode == 0, result.stderr
        listed = {info["name"]: info for info in json.loads(result.stdout)}
        assert listed["trig"]["error"] is None
        broken = listed["broken_import"]
        assert broken["ops"] == [] and broken["distribution"] == "opgraph-broken"
        assert "No module named 'opgraph_missing_dependency'" in broken["error"]

    def test_plugins_command_in_strict_mode_fails_in_one_line(self, broken_env):
        result = cli(broken_env, "plugins", plugins="trig,broken_args", strict=True)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.startswith("opgraph: error: plugin 'broken_args'")
        assert len(result.stderr.splitlines()) == 1
        assert "Traceback" not in result.stderr

    def test_demo_runs_beside_a_broken_plugin(self, broken_env, tmp_path):
        result = cli(
            broken_env, "demo", "--steps", "1", "--out", str(tmp_path), plugins="broken_import"
        )
        assert result.returncode == 0, result.stderr
        assert "trained in" in result.stdout
        assert result.stderr.startswith("opgraph: warning: plugin 'broken_import'")
        assert "Traceback" not in result.stderr

    def test_demo_in_strict_mode_fails_in_one_line(self, broken_env, tmp_path):
        args = ("demo", "--steps", "1", "--out", str(tmp_path))
        result = cli(broken_env, *args, plugins="broken_import", strict=True)
        assert result.returncode == 1
        assert result.stderr.startswith("opgraph: error: plugin 'broken_import' (entry point")
        assert "Traceback" not in result.stderr
        debug = cli(broken_env, "--debug", *args, plugins="broken_import", strict=True)
        assert debug.returncode == 1
        assert "Traceback" in debug.stderr and "PluginLoadError" in debug.stderr


def test_the_install_tests_leave_the_running_environment_as_it_was():
    assert not {"opgraph-broken", "opgraph-trig"} & running_environment_distributions()
