"""The examples in README.md and docs/*.md run, and the public API is documented.

The ```python blocks of one file are concatenated in order and run as one script in a fresh
subprocess, in an empty temporary directory. A block fenced ```py is shown but not run (for
the rare snippet that cannot run there, such as a server that blocks forever).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import opgraph

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(
    [p for p in [ROOT / "README.md"] if p.exists()] + list((ROOT / "docs").glob("*.md"))
)
TIMEOUT = 120  # seconds for all the examples of one file
# Pages with no ```python block, whose examples a test of their own runs against a server.
RUN_ELSEWHERE = {"docs/protocol.md": "tests/test_docs_clients.py"}


@dataclass
class Block:
    line: int  # where the block's code starts in the Markdown file (1-based)
    code: str


def python_blocks(markdown: str) -> list[Block]:
    """The ```python fenced blocks of a Markdown text, in order."""
    blocks, code, start = [], None, 0
    for number, line in enumerate(markdown.splitlines(), start=1):
        stripped = line.strip()
        if code is None:
            if re.fullmatch(r"```python\s*", stripped):
                code, start = [], number + 1
        elif stripped.startswith("```"):
            blocks.append(Block(start, "\n".join(code) + "\n"))
            code = None
        else:
            code.append(line)
    assert code is None, f"a ```python block starting at line {start - 1} is never closed"
    return blocks


def script_of(blocks: list[Block], name: str) -> tuple[str, list[tuple[int, Block]]]:
    """One script from the blocks, and where each block starts in it (for error messages)."""
    lines, starts = [], []
    for i, block in enumerate(blocks, start=1):
        lines.append(f"# --- {name}, block {i}, line {block.line}")
        starts.append((len(lines) + 1, block))
        lines.extend(block.code.splitlines())
    return "\n".join(lines) + "\n", starts


def failing_block(output: str, script: Path, starts: list[tuple[int, Block]]) -> str:
    """The Markdown line of the last traceback frame inside the script, if any."""
    frames = re.findall(rf'File "{re.escape(str(script))}", line (\d+)', output)
    if not frames:
        return ""
    line = int(frames[-1])
    for start, block in reversed(starts):
        if line >= start:
            markdown_line = block.line + line - start
            return f", in the block starting at line {block.line} (line {markdown_line})"
    return ""


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(document: Path, tmp_path: Path):
    name = str(document.relative_to(ROOT))
    blocks = python_blocks(document.read_text())
    if not blocks:
        # Pages whose examples cannot run as a script are run by a test of their own.
        assert name in RUN_ELSEWHERE, f"{name} has no ```python blocks"
        return
    source, starts = script_of(blocks, name)
    script = tmp_path / "examples.py"
    script.write_text(source)
    workdir = tmp_path / "work"
    workdir.mkdir()
    try:
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the examples of {name} did not finish in {TIMEOUT} s:\n{exc.stdout}")
    if result.returncode != 0:
        where = failing_block(result.stderr, script, starts)
        pytest.fail(
            f"the examples of {name} failed{where}:\n"
            f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}",
            pytrace=False,
        )


def test_block_extraction():
    markdown = "\n".join(
        [
            "Text",
            "```python",
            "x = 1",
            "```",
            "```py",
            "not run",
            "```",
            "```",
            "not run either",
            "```",
            "```python",
            "print(x)",
            "```",
        ]
    )
    blocks = python_blocks(markdown)
    assert [(b.line, b.code) for b in blocks] == [(3, "x = 1\n"), (12, "print(x)\n")]


def test_a_failing_example_is_reported_with_its_file_and_line(tmp_path: Path):
    blocks = [Block(5, "x = 1\n"), Block(20, "y = 2\nraise ValueError('broken example')\n")]
    source, starts = script_of(blocks, "docs/demo.md")
    script = tmp_path / "examples.py"
    script.write_text(source)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode != 0
    where = failing_block(result.stderr, script, starts)
    assert where == ", in the block starting at line 20 (line 21)"


@pytest.mark.parametrize("page", ["index", "quickstart", "ops", "embedding", "api"])
def test_manual_pages_exist(page: str):
    path = ROOT / "docs" / f"{page}.md"
    assert path.exists(), f"docs/{page}.md is missing"
    assert python_blocks(path.read_text()), f"docs/{page}.md has no runnable example"


def test_every_public_name_is_documented():
    docs = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    undocumented = [name for name in opgraph.__all__ if f"`{name}" not in docs]
    assert not undocumented, f"opgraph.__all__ names missing from docs/*.md: {undocumented}"


def test_the_package_docstring_example_runs():
    import doctest

    result = doctest.testmod(opgraph)
    assert result.attempted > 0 and result.failed == 0
