"""The distribution as pip builds it: one top-level package, `opgraph`, with everything in it.

pyproject.toml maps plugins/ to opgraph.plugins and server/ to opgraph.server; a wheel that
also installed a top-level `plugins` or `server` module would clash with other packages.
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
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("opgraph-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    assert {name.split("/")[0] for name in names} == {
        "opgraph",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    for module in ("plugins/arithmetic.py", "server/server.py", "testing/pytest_plugin.py"):
        assert f"opgraph/{module}" in names
    static = {Path(n).name for n in names if n.startswith("opgraph/server/static/")}
    assert {"index.html", "app.js", "msgpack.js", "viewer.css"} <= static

    entry_points = configparser.ConfigParser()
    (ep_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points.read_string(zipfile.ZipFile(wheel).read(ep_file).decode())
    assert entry_points["console_scripts"]["opgraph"] == "opgraph.cli:main"
    assert entry_points["pytest11"]["opgraph"] == "opgraph.testing.pytest_plugin"
