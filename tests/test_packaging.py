"""The distribution as pip builds it: one top-level package, `opgraph`, with everything in it.

plugins/ and server/ are reached as opgraph.plugins and opgraph.server through the links
opgraph/plugins and opgraph/server; a wheel that also installed a top-level `plugins` or `server`
module would clash with other packages.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__")


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
    (wheel,) = (tmp_path / "dist").glob("opgraph-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    assert {name.split("/")[0] for name in names} == {
        "opgraph",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    for module in ("plugins/arithmetic.py", "server/server.py", "testing/pytest_plugin.py"):
        assert f"opgraph/{module}" in names
    static = {Path(n).name for n in names if n.startswith("opgraph/server/static/")}
    # every file of the page: app.js imports the others, and one missing breaks the page
    page = {p.name for p in (ROOT / "server" / "static").iterdir() if p.is_file()}
    assert {"index.html", "app.js", "receive.js", "panel.js", "viewer.css"} <= page
    assert sorted(page - static) == []

    entry_points = configparser.ConfigParser()
    (ep_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points.read_string(zipfile.ZipFile(wheel).read(ep_file).decode())
    assert entry_points["console_scripts"]["opgraph"] == "opgraph.cli:main"
    assert entry_points["pytest11"]["opgraph"] == "opgraph.testing.pytest_plugin"


def test_the_subpackages_import_from_a_plain_checkout_without_the_editable_install(tmp_path):
    # `python -S` skips site-packages and so the editable install's import hook: only the
    # checkout on PYTHONPATH (and the dependencies' own folders) can provide the modules.
    import msgpack
    import pluggy
    import websockets

    deps = {str(Path(m.__file__).parent.parent) for m in (msgpack, pluggy, websockets)}
    code = (
        "import opgraph.server.hub, opgraph.plugins.arithmetic, opgraph.testing\n"
        "print(opgraph.server.hub.__file__); print(opgraph.plugins.arithmetic.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": ":".join([str(ROOT), *sorted(deps)])},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    hub, arithmetic = result.stdout.split()
    assert hub == str(ROOT / "opgraph" / "server" / "hub.py")
    assert arithmetic == str(ROOT / "opgraph" / "plugins" / "arithmetic.py")
