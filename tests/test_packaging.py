"""The distribution as pip builds it: one top-level package, `opgraph`, with everything in it.

plugins/ and server/ are installed as opgraph.plugins and opgraph.server (setuptools'
package-dir); a wheel that also installed a top-level `plugins` or `server` module would clash
with other packages. The checkout has no symbolic links, runs from `PYTHONPATH=.`, and pyright
sees each of its modules once (docs/architecture.md).
"""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("opgraph", "plugins", "server")  # the folders of the package, in the checkout
# Caches and what other tests write while this one copies (they run in parallel) stay out.
SKIP = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "*.ogtrace")


def test_the_wheel_installs_only_the_opgraph_package_with_its_viewer_and_entry_points(tmp_path):
    source = tmp_path / "opgraph"
    shutil.copytree(ROOT, source, ignore=SKIP)  # a copy: the build leaves nothing here
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # setuptools says what it dislikes (a license table, undeclared data files) as warnings
    assert "SetuptoolsDeprecationWarning" not in result.stdout + result.stderr
    assert "SetuptoolsWarning" not in result.stdout + result.stderr
    assert "BuildBackendWarning" not in result.stdout + result.stderr  # e.g. a package left out
    (wheel,) = (tmp_path / "dist").glob("opgraph-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    assert {name.split("/")[0] for name in names} == {
        "opgraph",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    for module in ("plugins/arithmetic.py", "server/server.py", "testing/pytest_plugin.py"):
        assert f"opgraph/{module}" in names
    assert "opgraph/py.typed" in names  # PEP 561: type checkers read opgraph's own hints
    static = {Path(n).name for n in names if n.startswith("opgraph/server/static/")}
    # every file of the page: app.js imports the others, and one missing breaks the page
    page = {p.name for p in (ROOT / "server" / "static").iterdir() if p.is_file()}
    assert {"index.html", "app.js", "receive.js", "panel.js", "viewer.css"} <= page
    assert sorted(page - static) == []

    # Installed from the wheel (not editable), the package is whole: subpackages, viewer files.
    target = tmp_path / "installed"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for module in ("plugins/__init__.py", "plugins/arithmetic.py", "server/hub.py", "py.typed"):
        assert (target / "opgraph" / module).is_file()
    assert {p.name for p in (target / "opgraph" / "server" / "static").iterdir()} >= static
    code = (
        "import opgraph, opgraph.plugins.arithmetic, opgraph.server.http as http\n"
        "print(opgraph.__path__, http.__file__)"
    )
    result = run_without_site(code, target, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        repr([str(target / "opgraph")]),
        str(target / "opgraph" / "server" / "http.py"),
    ]

    entry_points = configparser.ConfigParser()
    (ep_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points.read_string(zipfile.ZipFile(wheel).read(ep_file).decode())
    assert entry_points["console_scripts"]["opgraph"] == "opgraph.cli:main"
    assert entry_points["pytest11"]["opgraph"] == "opgraph.testing.pytest_plugin"


def dependency_folders() -> list[str]:
    """The folders that hold opgraph's dependencies (for a `python -S` without site)."""
    import msgpack
    import pluggy
    import websockets

    return sorted({str(Path(m.__file__).parent.parent) for m in (msgpack, pluggy, websockets)})


def run_without_site(code: str, folder: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`python -S -c code`: no site-packages (so no installed or editable opgraph), only
    `folder` and the dependencies' own folders on the path."""
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": ":".join([str(folder), *dependency_folders()])},
        timeout=60,
    )


def test_the_subpackages_import_from_a_plain_checkout_without_the_editable_install(tmp_path):
    # `python -S` skips site-packages and so the editable install: only the checkout on
    # PYTHONPATH (and the dependencies' own folders) can provide the modules; opgraph/__init__.py
    # finds plugins/ and server/ beside it.
    code = (
        "import opgraph.server.hub, opgraph.plugins.arithmetic, opgraph.testing\n"
        "print(opgraph.server.hub.__file__); print(opgraph.plugins.arithmetic.__file__)"
    )
    result = run_without_site(code, ROOT, tmp_path)
    assert result.returncode == 0, result.stderr
    hub, arithmetic = result.stdout.split()
    assert hub == str(ROOT / "server" / "hub.py")
    assert arithmetic == str(ROOT / "plugins" / "arithmetic.py")


def test_the_checkout_has_no_symbolic_links():
    # A checkout made without symbolic links (Windows, core.symlinks=false) must work as well.
    links = [
        str(path.relative_to(ROOT))
        for folder in PACKAGES
        for path in [ROOT / folder, *(ROOT / folder).rglob("*")]
        if path.is_symlink()
    ]
    assert links == []
    if (ROOT / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert [line for line in listed.stdout.splitlines() if line.startswith("120000")] == []


def test_pyright_sees_every_module_once_and_resolves_the_subpackages():
    # Static tools follow neither setuptools' import hook nor opgraph/__init__.py: pyright
    # finds opgraph.plugins and opgraph.server in the strict editable install's link tree
    # (scripts/test), and analyses each file of the checkout once, by its own path. Only
    # what it sees is checked here; scripts/test fails on any type error it reports.
    result = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.stdout.startswith("{"), result.stdout + result.stderr
    report = json.loads(result.stdout)
    modules = [p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")]
    assert report["summary"]["filesAnalyzed"] == len(modules)
    unresolved = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d.get("rule") in ("reportMissingImports", "reportAttributeAccessIssue")
        and ("opgraph.server" in d["message"] or "opgraph.plugins" in d["message"]
             or 'module "opgraph' in d["message"] or "could not be resolved" in d["message"])
    ]  # fmt: skip
    assert unresolved == [], "run scripts/test (it installs opgraph editable in strict mode)"
    outside = {d["file"] for d in report["generalDiagnostics"]}
    assert all(Path(f).is_relative_to(ROOT) and "build" not in Path(f).parts for f in outside)


def test_the_installed_package_serves_the_viewer_page_from_any_folder(tmp_path):
    # Run from another folder, Python imports opgraph as installed: scripts/test's strict
    # editable install is a tree of symbolic links into the checkout, which the page's
    # "no symlink out of static/" rule must not take for an escape.
    code = (
        "from opgraph.server.http import STATIC_DIR, static_response\n"
        "for path in ('/', '/app.js', '/validate.js'):\n"
        "    print(path, static_response(STATIC_DIR, path).status_code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/", "200", "/app.js", "200", "/validate.js", "200"]
