"""The plugin tutorial's install commands, run as written in the environment the README makes.

docs/plugins.md step 6 says to install the plugin into opgraph's environment and run its
tests. The README's `bash scripts/demo` makes that environment: `python3 -m venv .venv` and
`pip install -e .`. A venv made so has the setuptools that Python bundles (65 on 3.11, and no
`wheel`), where `pip install --no-build-isolation -e` failed with "invalid command
'bdist_wheel'". This test makes the same environment, then runs the tutorial's shell block."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRIG = ROOT / "examples" / "opgraph-trig"

pytestmark = [pytest.mark.install, pytest.mark.slow]


def tutorial_commands() -> list[str]:
    """The commands of docs/plugins.md's "Install it and run the tests" block, as written."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    section = text.split("### 6. Install it and run the tests", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def readme_environment(folder: Path) -> Path:
    """The environment `bash scripts/demo` makes: a plain venv with opgraph installed."""
    script = (ROOT / "scripts" / "demo").read_text()
    assert "python3 -m venv .venv" in script and "pip install -q -e ." in script
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300)
    python = folder / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "-e", str(ROOT)], check=True, timeout=900)
    return folder / "bin"


def test_the_tutorials_commands_run_as_written(tmp_path):
    commands = tutorial_commands()
    assert commands[0] == "cd opgraph-trig" and commands[-1] == "pytest"
    bin_dir = readme_environment(tmp_path / "venv")
    shutil.copytree(TRIG, tmp_path / "opgraph-trig", ignore=shutil.ignore_patterns("build"))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(commands)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout), result.stdout[-2000:]
    listed = subprocess.run(
        [bin_dir / "opgraph", "plugins", "--installed"], capture_output=True, text=True, env=env
    )
    assert "trig  (opgraph-trig 0.1.0, entry point trig = opgraph_trig)" in listed.stdout
