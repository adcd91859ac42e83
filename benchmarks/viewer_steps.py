"""What a training step costs the viewer page, in headless Chromium (issue 19).

    python -m benchmarks.viewer_steps [--steps 200] [--points 100]

Records two real steps of the moons demo's training (`MLP(2, [16, 16, 1])` on `--points`
points: about 65,000 nodes a step at 100) with the real engine and tracer and
`engine.serve(record=...)`: the first step in full with its `structure`, the second as a
values-only `step` (docs/protocol.md, "Steps"); then appends `--steps` more values-only
steps (the second step's numbers, nudged a little each step). The page (Debian's chromium through
Playwright) opens that recording and reports:

- `apply`: the page's time to apply one values-only `step` (checked, decoded, stored and
  written on every node of the graph), median and longest;
- `frame`: one draw of the overview right after a step (the numbers on the canvas, the
  list and the panel);
- `heap`: the page's JavaScript heap after all the steps, after a garbage collection, and
  what the step store says its arrays take (`steps.bytes`).

A script, not a test: on a machine shared with other work the figures vary by a factor of
two or more from run to run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import struct
import tempfile
from pathlib import Path
from typing import Any

import msgpack

from opgraph import Engine
from opgraph.demo import SEED, loss, make_moons
from opgraph.nn import MLP

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 760}


def record_two_steps(path: Path, points: int) -> None:
    """Two traced steps of the demo's training: the first in full with its `structure`, the
    second as one values-only `step` (what the tracer sends)."""
    engine = Engine(name="bench-steps", entry_points=False)
    X, y = make_moons(points, noise=0.1, seed=SEED)
    model = MLP(2, [16, 16, 1], rng=random.Random(SEED), engine=engine)
    with engine.serve(port=0, record=str(path)) as live:
        for _ in range(2):
            total, _ = loss(model, X, y)
            model.zero_grad()
            total.backward()
            for p in model.parameters():
                p.data -= 0.01 * p.grad
        assert live.flush(timeout=120)


def extend(path: Path, steps: int) -> dict[str, int]:
    """Append `steps` more values-only steps to the recording: the second step's map, its
    numbers nudged a little each step, with new ids and the next pass."""
    events = list(msgpack.Unpacker(open(path, "rb"), raw=False, strict_map_key=False))
    structure = next(e for e in events if e["type"] == "structure")
    first, second = [e for e in events if e["type"] == "step"][:2]
    n, e = len(structure["ids"]) // 8, len(structure["inputs"]) // 8
    data = struct.unpack(f"<{n + e}d", second["data"])
    grad = struct.unpack(f"<{n + e}d", second["grad"])
    span = second["first"] - first["first"]
    seq, step, pass_, first_id = events[-1]["seq"], second["step"], second["pass"], second["first"]
    with open(path, "ab") as out:
        for k in range(1, steps + 1):
            nudge = 1 + 0.001 * k
            seq, step, pass_, first_id = seq + 1, step + 1, pass_ + 1, first_id + span
            event = {
                "type": "step", "seq": seq, "step": step, "structure": structure["structure"],
                "first": first_id, "pass": pass_,
                "data": struct.pack(f"<{n + e}d", *(v * nudge for v in data)),
                "grad": struct.pack(f"<{n + e}d", *(v / nudge for v in grad)),
            }  # fmt: skip
            out.write(msgpack.packb(event))
    return {"nodes": n, "inputs": e, "bytes_per_step": 16 * (n + e), "last_step": step}


TIME_STEPS = """() => { const v = opgraphViewer, apply = v.apply.bind(v);
    window.stepTimes = []; window.frameTimes = [];
    v.apply = (event) => {
        if (event?.type !== "step" || event.step <= 2) return apply(event);
        const start = performance.now();
        apply(event);
        stepTimes.push(performance.now() - start);
        const drawStart = performance.now();
        v.draw();
        frameTimes.push(performance.now() - drawStart);
    }; }"""


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} ms, max {max(values):.2f} ms ({len(values)})"


def measure(steps: int, points: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="viewer-steps-"))
    path = folder / "steps.ogtrace"
    record_two_steps(path, points)
    shape = extend(path, steps)
    engine = Engine(name="page", entry_points=False)
    with engine.serve(port=0) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        page = browser.new_context(viewport=VIEWPORT, bypass_csp=True).new_page()
        page.goto(server.url + "?live=0")
        page.wait_for_function("window.opgraphViewer !== undefined")
        page.evaluate(TIME_STEPS)
        page.locator("#file").set_input_files(str(path))
        page.wait_for_function(
            f"opgraphViewer.steps.latest?.step === {shape['last_step']}",
            timeout=600_000,
            polling=500,
        )
        cdp = page.context.new_cdp_session(page)
        cdp.send("HeapProfiler.collectGarbage")
        heap = cdp.send("Runtime.getHeapUsage")["usedSize"]
        times = page.evaluate(
            "[stepTimes, frameTimes, opgraphViewer.steps.bytes, opgraphViewer.graph.size]"
        )
        browser.close()
    return {
        **shape,
        "graph_nodes": times[3],
        "steps": steps,
        "apply": summary(times[0]),
        "frame": summary(times[1]),
        "heap_mb": round(heap / 1e6, 1),
        "store_mb": round(times[2] / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--points", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(measure(args.steps, args.points), indent=2))


if __name__ == "__main__":
    main()
