"""The benchmark runner runs end to end (tiny sizes) and writes comparable JSON.

No timing is asserted: the figures are the benchmark's output, not a test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"


def _series_of(root: ET.Element) -> dict[str, list[tuple[float, float]]]:
    """The figure's marked points (x, y on the page) by library."""
    return {
        group.get("data-name", ""): [
            (float(c.get("cx", "")), float(c.get("cy", ""))) for c in group.iter(f"{SVG}circle")
        ]
        for group in root.iter(f"{SVG}g")
    }


def test_the_figure_puts_slower_steps_higher_and_more_points_further_right():
    from benchmarks.figure import svg

    peers = {
        "torch": "2.13.0+cpu",
        "100": {"pytorch": 0.4, "opgraph": 0.2, "micrograd": 1000.0, "eager": 70.0},
        "1000": {"pytorch": 0.6, "opgraph": 0.5},
        "10000": {"pytorch": 2.6, "opgraph": 3.0},
    }
    drawn = _series_of(ET.fromstring(svg(peers)))
    assert [len(drawn[name]) for name in ("pytorch", "opgraph", "micrograd", "eager")] == [
        3,
        3,
        1,
        1,
    ]
    for rows in (drawn["pytorch"], drawn["opgraph"]):
        assert rows[0][0] < rows[1][0] < rows[2][0]  # 100, 1,000, 10,000 points
        assert rows[0][1] > rows[1][1] > rows[2][1]  # slower steps higher on the page
    assert drawn["opgraph"][0][1] > drawn["pytorch"][0][1]  # 0.2 ms below 0.4 ms
    assert drawn["micrograd"][0][1] < drawn["eager"][0][1] < drawn["pytorch"][2][1]
    # The decades span everything: micrograd's second sits inside the plot.
    assert all(40 <= y <= 350 for rows in drawn.values() for _, y in rows)


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
    # The figure of docs/performance.md, drawn from this run's results.
    figure = subprocess.run(
        [sys.executable, "-m", "benchmarks.figure", str(tmp_path / "quick.json"), "p.svg"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert figure.returncode == 0, figure.stderr
    drawn = _series_of(ET.parse(tmp_path / "p.svg").getroot())
    expected = {"opgraph", "plain", "micrograd", "eager"} | ({"pytorch"} & set(peers["6"]))
    assert set(drawn) == expected
    assert len(drawn["opgraph"]) == len(drawn["plain"]) == 2  # lines through both sizes

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
