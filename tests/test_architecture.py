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


def test_the_layering_contracts_cover_every_engine_module():
    # A new engine module left out of the contracts' lists would escape them silently.
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    engine_contract = contracts["contracts"][0]["source_modules"]
    outside = {"__init__", "__main__", "cli"}  # the package's face and the command line
    engine = {
        f"opgraph.{p.stem}" for p in (ROOT / "opgraph").glob("*.py") if p.stem not in outside
    } | {"opgraph.testing", "opgraph.trace"}  # the packages: a contract covers their modules
    assert sorted(engine - set(engine_contract)) == []
    assert sorted(set(engine_contract) - engine) == []
