"""docs/plugins.md documents every hook with its real signature, every hook has a test (as
datasette checks its own), and the tutorial shows the example plugin's real files.

tests/test_docs.py runs the page's Python blocks."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

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
