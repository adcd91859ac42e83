"""docs/plugins.md documents every hook with its real signature, every hook has a test (as
datasette checks its own), and the tutorial shows the example plugin's real files.

tests/test_docs.py runs the page's Python blocks together; here each runs on its own, and the
tutorial runs step by step as a reader follows it: its files written to a temporary
directory, its commands run, the package really installed with pip, into a throwaway
environment that sees this one's packages (never into the one running the tests)."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import throwaway_environment

from opgraph import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "plugins.md").read_text()
EXAMPLE = ROOT / "examples" / "opgraph-trig"

HOOKS = {
    name: function
    for name, function in vars(hookspecs).items()
    if callable(function) and hasattr(function, "opgraph_spec")
}


def test_there_are_hooks():
    assert "register_ops" in HOOKS


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_is_documented_with_its_signature(name):
    signature = f"{name}{inspect.signature(HOOKS[name])}"
    headings = re.findall(r"^### `(.+)`$", DOC, re.M)
    assert signature in headings, f"docs/plugins.md needs a heading: ### `{signature}`"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_test(name):
    tests = "".join(path.read_text() for path in (ROOT / "tests").glob("test_plugins*.py"))
    assert re.search(rf"^def test_hook_{name}\b", tests, re.M), f"write test_hook_{name}"


def fenced(language: str, after: str) -> str:
    """The first ```language block after the text `after`."""
    start = DOC.index(after)
    match = re.compile(rf"^```{language}\n(.*?)^```", re.S | re.M).search(DOC, start)
    return match.group(1)


@pytest.mark.parametrize(
    "after, language, path",
    [
        ("### 2. pyproject.toml", "toml", "pyproject.toml"),
        ("### 3. The plugin", "python", "src/opgraph_trig/__init__.py"),
        ("### 5. Tests", "python", "tests/test_trig.py"),
    ],
)
def test_tutorial_shows_the_example_files(after, language, path):
    assert fenced(language, after) == (EXAMPLE / path).read_text()


# --- the tutorial, step by step, as a plugin author follows it ---------------------------------


def blocks(language: str) -> list[str]:
    """Every ```language block of the page (```py blocks are shown, not run by test_docs)."""
    return re.findall(rf"^```{language}\n(.*?)^```", DOC, re.S | re.M)


def run(
    command: list[str], cwd: Path, *, offline: bool = True, **env: str
) -> subprocess.CompletedProcess:
    # Offline by default: pip finds every requirement installed, as the tutorial's reader
    # does. The install fetches the build's setuptools from the index, as the reader's does.
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if offline:
        environment["PIP_NO_INDEX"] = "1"
    environment.pop("OPGRAPH_PLUGINS", None)
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, **env},
    )


def shell_line(line: str, python: Path) -> list[str]:
    """A line of the tutorial's ```sh blocks, run with the environment's `python`."""
    words = shlex.split(line)
    if words[0] in ("pip", "pytest", "opgraph"):
        return [str(python), "-m", *words]
    return words


@pytest.mark.parametrize("block", blocks("python"), ids=lambda code: code.split("\n")[0][:40])
def test_every_python_block_runs_on_its_own(block, tmp_path):
    result = run([sys.executable, "-c", block], tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.install
def test_the_tutorial_runs_as_written(tmp_path):
    # Step 1 and 2: the files, from the page (README.md: any text).
    project = tmp_path / "opgraph-trig"
    (project / "src" / "opgraph_trig").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "README.md").write_text("# opgraph-trig\n\nsin, cos, atan2 and softplus.\n")
    (project / "pyproject.toml").write_text(fenced("toml", "### 2. pyproject.toml"))
    plugin = fenced("python", "### 3. The plugin")
    (project / "src" / "opgraph_trig" / "__init__.py").write_text(plugin)
    (project / "tests" / "test_trig.py").write_text(fenced("python", "### 5. Tests"))
    # Step 4: try_trig.py, run in the project before anything is installed.
    (project / "try_trig.py").write_text(fenced("py", "### 4. Try it before packaging"))
    tried = run([sys.executable, "try_trig.py"], project)
    assert tried.returncode == 0, tried.stderr
    # Step 6: the commands of the ```sh block, from the directory holding opgraph-trig/.
    install = fenced("sh", "### 6. Install it and run the tests").splitlines()
    assert install[0] == "cd opgraph-trig" and install[1].startswith("pip install ")
    python, _ = throwaway_environment(tmp_path / "venv")
    for line in install[1:]:
        result = run(shell_line(line, python), project, offline=False)
        assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
    assert "8 passed" in result.stdout
    # Installed, every program of the environment has the ops, and opgraph lists it.
    anywhere = run([str(python), "-c", USE_TRIG], tmp_path)
    assert anywhere.returncode == 0, anywhere.stderr
    shown = fenced("", "and `opgraph plugins` lists it:").splitlines()
    assert shown[0] == "$ opgraph plugins --installed"
    listed = run(shell_line(shown[0][2:], python), tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == shown[1:]
    # ... and the environment running the tests has not got it.
    mine = run([sys.executable, "-c", USE_TRIG], tmp_path)
    assert mine.returncode == 1 and "no plugin registers an op of that name" in mine.stderr


USE_TRIG = """
import math
import opgraph
assert opgraph.Value(0.5).sin().data == math.sin(0.5)
"""
