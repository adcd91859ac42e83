"""docs/architecture.md stays true: every module it names exists, and every module of the
package, the viewer page, the benchmarks and the scripts is named there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP = (ROOT / "docs" / "architecture.md").read_text()

# The folders whose every file is a module the map must name (caches aside).
MAPPED = {
    "opgraph": "*.py",
    "opgraph/commands": "*.py",
    "opgraph/testing": "*.py",
    "opgraph/trace": "*.py",
    "plugins": "*.py",
    "server": "*.py",
    "server/static": "*",
    "benchmarks": "*.py",
    "scripts": "*",
}


def named_paths() -> set[str]:
    """Every path-like name in backticks: `opgraph/value.py`, `server/static/app.js` ..."""
    return {
        name.rstrip("/")
        for name in re.findall(r"`([\w./-]+)`", MAP)
        if "/" in name and not name.startswith(("http", "."))
    }


def test_every_module_the_map_names_exists():
    missing = sorted(path for path in named_paths() if not (ROOT / path).exists())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_module_is_named_in_the_map():
    named = named_paths()
    unnamed = sorted(
        str(path.relative_to(ROOT))
        for folder, pattern in MAPPED.items()
        for path in (ROOT / folder).glob(pattern)
        if path.is_file() and path.suffix != ".pyc"
        and str(path.relative_to(ROOT)) not in named
    )  # fmt: skip
    assert not unnamed, f"docs/architecture.md does not name these modules: {unnamed}"


def test_the_map_names_every_top_level_folder():
    folders = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in {"build", "dist"}
        and not p.name.endswith(".egg-info")
    }  # fmt: skip
    unnamed = sorted(f for f in folders if f"`{f}/`" not in MAP)
    assert not unnamed, f"docs/architecture.md does not name these folders: {unnamed}"


def layers_contract() -> dict:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]  # one contract: the layers
    assert contract["type"] == "layers" and contract["containers"] == ["opgraph"]
    return contract


def layer_names(contract: dict) -> list[list[str]]:
    return [[name.strip() for name in layer.split("|")] for layer in contract["layers"]]


def test_the_layers_contract_has_every_module_of_the_package():
    # A new module left out of the layers would escape them (`exhaustive` checks it too).
    contract = layers_contract()
    assert contract["exhaustive"] is True
    listed = [name for layer in layer_names(contract) for name in layer]
    modules = {p.stem for p in (ROOT / "opgraph").glob("*.py") if p.stem != "__init__"}
    packages = {"commands", "testing", "trace", "plugins", "server"}
    assert sorted(listed) == sorted(modules | packages)


def test_the_map_gives_the_layers_in_the_contracts_order():
    # docs/architecture.md's "Layers" paragraph: `a` > `b | c` > ... as in pyproject.toml
    paragraph = re.search(r"Top to bottom: (.*?)\.\n", MAP, re.DOTALL)
    assert paragraph, "docs/architecture.md has no 'Top to bottom: ...' list of the layers"
    written = [
        [name.strip(" `") for name in layer.split("|")]
        for layer in re.sub(r"\s+", " ", paragraph.group(1)).split(">")
    ]
    assert written == layer_names(layers_contract())


def test_the_server_imports_no_plugin():
    # The server reads nodes through the read API and knows no op: no module of server/
    # imports a plugin module, even inside a function. (The layers contract cannot say it: the
    # plugins are its lowest layer, and a downward import is allowed.)
    import ast

    found = []
    for path in sorted((ROOT / "server").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                # relative: `..plugins` from opgraph.server; absolute: opgraph.plugins
                base = ("opgraph." if node.level == 2 else "") + (node.module or "")
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(name.split(".")[:2] == ["opgraph", "plugins"] for name in names):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []


def test_the_walks_point_at_the_lines_they_quote():
    # "Two walks through the code": `path:line` `quoted text` pairs, the line still saying it.
    pairs = re.findall(r"`((?:opgraph|server|plugins)/[\w/]+\.py):(\d+)`\s+`([^`]+)`", MAP)
    assert len(pairs) >= 12, "the walks of `a * b` and `backward()` name their lines"
    wrong = []
    for path, line, quoted in pairs:
        lines = (ROOT / path).read_text().splitlines()
        number = int(line)
        said = lines[number - 1] if 0 < number <= len(lines) else ""
        if re.sub(r"\s+", " ", quoted.strip()) not in re.sub(r"\s+", " ", said):
            wrong.append(f"{path}:{line} does not say {quoted!r} (it says {said.strip()!r})")
    assert not wrong, "\n".join(wrong)
