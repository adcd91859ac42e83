"""The benchmark runner runs end to end (tiny sizes) and writes comparable JSON.

No timing is asserted: the figures are the benchmark's output, not a test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_prints_a_table_and_writes_json(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = ("moons step, gc on", "compiled moons step", "memory per node", "memory, v * 1.0001")
    for row in (*rows, "deepest chain"):
        assert row in result.stdout
    results = json.loads((tmp_path / "quick.json").read_text())
    assert results["meta"]["quick"] is True
    for section in ("ops", "backward", "moons", "memory", "memory_chain", "depth", "tracing"):
        assert section in results
    # The traced training run: a real viewer process got every event of every traced step.
    training = results["training"]
    assert training["cost"]["gaps"] == 0 and training["bytes"]["gaps"] == 0
    assert training["bytes"]["wire_bytes_per_step"] > 0 and training["join"]["snapshot_bytes"] > 0
    step = results["moons"]["gc on"]
    assert step["micrograd"] > 0 and step["opgraph"] > 0
    assert step["ratio"] == step["micrograd"] / step["opgraph"]
    # micrograd's recursive backward stops near the recursion limit; opgraph's does not.
    assert results["depth"]["micrograd"] < results["depth"]["recursion_limit"]
    assert results["depth"]["opgraph"] == 10_000
    assert len(list(tmp_path.glob("quick-*.json"))) == 1
    # The peers table: PyTorch's rows, or a note saying they were skipped and why.
    assert "moons step (gc.collect() in each)" in result.stdout
    peers = results["peers"]
    assert "check" in peers if "torch" in peers else "PyTorch not installed" in peers["note"]
    assert peers["6"]["opgraph"] > 0 and peers["6"]["micrograd"] > 0

    # A second run compares itself with the first.
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--out",
            str(tmp_path / "2"),
            "--compare",
            str(tmp_path / "quick.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert "compared with the run of" in again.stdout
