"""Installed plugins, for real: `pip install` the example plugin and a broken one.

Both are installed into the running interpreter's environment (as a user would) and
uninstalled when the tests that need them end, so other tests see a clean environment.
The default engine is only ever created in subprocesses, never in this test process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opgraph import Engine, PluginLoadError
from opgraph.loading import PluginManager, add_plugin, builtin_plugins, load_entry_points

ROOT = Path(__file__).resolve().parent.parent
TRIG = ROOT / "examples" / "opgraph-trig"
BROKEN = ROOT / "tests" / "plugins" / "broken"


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
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


def install(source: Path, copy_to: Path, distribution: str):
    """pip install a package (from a copy, so the build leaves nothing in the repository)."""
    shutil.copytree(source, copy_to, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    if can_build_offline():
        result = pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(copy_to))
    else:  # fetches setuptools for an isolated build
        result = pip("install", "--no-deps", str(copy_to))
    assert result.returncode == 0, result.stdout + result.stderr
    yield
    pip("uninstall", "-y", distribution)


@pytest.fixture(scope="module")
def trig_installed(tmp_path_factory):
    yield from install(TRIG, tmp_path_factory.mktemp("trig") / "opgraph-trig", "opgraph-trig")


@pytest.fixture(scope="class")
def broken_installed(tmp_path_factory):
    # Class scope: while it is installed, a default engine anywhere fails to load, so it is
    # installed only for the tests of TestBrokenPlugin.
    copy = tmp_path_factory.mktemp("broken") / "opgraph-broken"
    yield from install(BROKEN, copy, "opgraph-broken")


def python(code: str, plugins: str | None = None, *args: str) -> subprocess.CompletedProcess:
    """Run Python in a fresh process, with OPGRAPH_PLUGINS set to `plugins` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "OPGRAPH_PLUGINS"}
    if plugins is not None:
        env["OPGRAPH_PLUGINS"] = plugins
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def cli(*args: str, plugins: str | None = None) -> subprocess.CompletedProcess:
    return python("", plugins, "-m", "opgraph", *args)


USE_SIN = """
import math
from opgraph import Value, default_engine
x = Value(0.5)
y = x.sin()
y.backward()
assert y.data == math.sin(0.5) and x.grad == math.cos(0.5)
print(default_engine().ops.definitions["sin"].plugin)
"""


@pytest.mark.usefixtures("trig_installed")
class TestExamplePlugin:
    def test_default_engine_discovers_it(self):
        result = python(USE_SIN)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "trig"

    def test_opgraph_plugins_excludes_it_from_the_default_engine(self):
        result = python("from opgraph import Value\nValue(0.5).sin()", "")
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
            load_entry_points(impostor)

    def test_plugins_command_lists_it(self):
        result = cli("plugins")
        assert result.returncode == 0, result.stderr
        assert "trig  (opgraph-trig 0.1.0, entry point trig = opgraph_trig)" in result.stdout
        assert "ops: sin, cos, atan2, softplus" in result.stdout
        assert "opgraph.plugins.arithmetic  (built-in, opgraph" in result.stdout

    def test_plugins_command_json(self):
        result = cli("plugins", "--json", "--installed")
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
            }
        ]
        excluded = cli("plugins", "--json", "--installed", plugins="")
        assert json.loads(excluded.stdout) == []
        misspelled = cli("plugins", "--installed", plugins="trigg")
        assert misspelled.stdout.strip() == "no plugins loaded"
        assert misspelled.stderr.startswith(
            "opgraph plugins: warning: OPGRAPH_PLUGINS names trigg, which no installed plugin"
        )

    def test_its_own_test_suite_passes(self, tmp_path):
        # The example's tests, run as its author would, against the installed package: the
        # src/ layout keeps the source tree off sys.path.
        shutil.copytree(TRIG, tmp_path / "trig", ignore=shutil.ignore_patterns("build"))
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=tmp_path / "trig",
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "6 passed" in result.stdout


@pytest.mark.usefixtures("broken_installed")
class TestBrokenPlugin:
    """One installed distribution, opgraph-broken, with an entry point per failure."""

    def test_import_error_names_entry_point_distribution_and_version(self, monkeypatch):
        monkeypatch.setenv("OPGRAPH_PLUGINS", "broken_import")
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

    def test_default_engine_shows_the_load_error(self):
        # No OPGRAPH_PLUGINS: every installed plugin loads, so the first op fails, by name.
        result = python("from opgraph import Value\nValue(1.0) + 1")
        assert result.returncode == 1
        assert "opgraph.errors.PluginLoadError: plugin 'broken_args'" in result.stderr
        assert "opgraph-broken 0.0.1" in result.stderr
        # The hint lists every other installed plugin, ready to paste.
        others = "broken_conflict,broken_hookname,broken_import,broken_raises,trig"
        assert f"set OPGRAPH_PLUGINS={others} (the other" in result.stderr

    def test_opgraph_plugins_leaves_it_out(self):
        assert (
            python("from opgraph import Value\nassert (Value(1.0) + 1).data == 2", "").returncode
            == 0
        )

    @pytest.mark.parametrize(
        "entry_point, problem",
        [
            ("broken_hookname", "implements 'register_op', which is not an opgraph hook"),
            ("broken_hookname", "did you mean 'register_ops'?"),
            ("broken_args", "its hook function register_ops(reg) takes 'reg'"),
            ("broken_conflict", "both plugin 'opgraph.plugins.arithmetic' and plugin"),
            ("broken_raises", "failed in register_ops: RuntimeError: the ops table"),
        ],
    )
    def test_each_failure_names_the_plugin(self, monkeypatch, entry_point, problem):
        monkeypatch.setenv("OPGRAPH_PLUGINS", entry_point)
        with pytest.raises(PluginLoadError) as caught:
            Engine()
        message = str(caught.value)
        assert problem in message
        assert f"'{entry_point}'" in message
        assert "opgraph-broken 0.0.1" in message and "OPGRAPH_PLUGINS" in message
        assert caught.value.plugin == entry_point
        assert caught.value.__cause__ is not None

    def test_plugins_command_reports_the_error(self):
        result = cli("plugins", plugins="trig,broken_args")
        assert result.returncode == 1
        assert result.stdout == ""
        assert "opgraph plugins: plugin 'broken_args'" in result.stderr
        assert "set OPGRAPH_PLUGINS=trig (the other" in result.stderr
        assert "Traceback" not in result.stderr
