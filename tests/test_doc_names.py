"""Every dotted name the docs give (`opgraph.X.Y`) resolves, and no public name of `opgraph`
hides a submodule of the same name (as the function `opgraph.compile` once hid the module, so
that `opgraph.compile.BatchWarning`, which the docs named, raised AttributeError)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import types
from pathlib import Path

import pytest

import opgraph

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]

# Fenced code blocks, then inline code spans in the prose between them.
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
# `opgraph.` followed by identifiers: not a path (`opgraph/x.py`), not a file name
# (`name.opgraph.py`), not the command (`opgraph demo`, no dot).
DOTTED = re.compile(r"(?<![\w./-])opgraph(?:\.[A-Za-z_]\w*)+(?![\w/-])")
# The websocket subprotocol's names (`opgraph.v1`, protocol.md) are wire strings, not Python.
SUBPROTOCOL = re.compile(r"opgraph\.v\d+")


def doc_names() -> dict[str, list[str]]:
    """Each dotted name in the docs' code, with where it appears (file:line)."""
    found: dict[str, list[str]] = {}

    def note(text: str, path: Path, offset: int, full: str) -> None:
        for match in DOTTED.finditer(text):
            if SUBPROTOCOL.fullmatch(match.group()):
                continue
            line = full.count("\n", 0, offset + match.start()) + 1
            found.setdefault(match.group(), []).append(f"{path.name}:{line}")

    for path in DOCS:
        full = path.read_text(encoding="utf-8")
        prose_start = 0
        for fence in FENCE.finditer(full):
            for span in SPAN.finditer(full, prose_start, fence.start()):
                note(span.group(2), path, span.start(2), full)
            note(fence.group(2), path, fence.start(2), full)
            prose_start = fence.end()
        for span in SPAN.finditer(full, prose_start):
            note(span.group(2), path, span.start(2), full)
    return found


def resolve(dotted: str) -> object:
    """Import the longest module prefix of `dotted`, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj: object = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise  # a module that exists but fails to import is an error of its own
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(dotted)


NAMES = doc_names()


def test_the_docs_name_opgraph_objects():
    # the scan finds what it must: a name in prose, one in a code block, one dotted deep
    assert {"opgraph.compile", "opgraph.BatchWarning", "opgraph.compiler.MAP_MEMORY"} <= set(NAMES)
    assert not any(name.startswith("opgraph.compile.") for name in NAMES)
    from opgraph.server.protocol import SUBPROTOCOL as wire_name

    assert SUBPROTOCOL.fullmatch(wire_name)  # what the scan leaves out is the wire name only


@pytest.mark.parametrize("dotted", sorted(NAMES))
def test_each_dotted_name_in_the_docs_resolves(dotted):
    try:
        resolve(dotted)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{dotted} (in {', '.join(NAMES[dotted])}) does not resolve: {exc}")


def test_no_public_name_of_opgraph_shadows_a_submodule():
    public = set(opgraph.__all__) | {name for name in dir(opgraph) if not name.startswith("_")}
    shadowing = sorted(
        name
        for name in public
        if not isinstance(getattr(opgraph, name), types.ModuleType)
        and importlib.util.find_spec(f"opgraph.{name}") is not None
    )
    assert shadowing == []


def test_the_resolver_refuses_a_shadowed_module_path():
    # what the docs once said: the attribute is the function, which has no BatchWarning
    with pytest.raises(AttributeError):
        resolve("opgraph.compile.BatchWarning")
    assert resolve("opgraph.compiler.BatchWarning") is opgraph.BatchWarning
