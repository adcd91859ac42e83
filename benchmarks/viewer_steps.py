"""What a training step costs the viewer page, in headless Chromium (issue 19).

    python -m benchmarks.viewer_steps [--steps 200] [--points 100]

Records one real step of the moons demo model (`MLP(2, [16, 16, 1])` on `--points`
points: about 65,000 nodes at 100) with the real engine and `engine.serve(record=...)`,
then extends the recording as the steps protocol does (docs/protocol.md, "Steps"): the
step's `structure` and `step` maps, then `--steps` values-only `step` maps (the first
step's numbers, nudged a little each step). The page (Debian's chromium through
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


def record_one_step(path: Path, points: int) -> None:
    engine = Engine(name="bench-steps", entry_points=False)
    X, y = make_moons(points, noise=0.1, seed=SEED)
    model = MLP(2, [16, 16, 1], rng=random.Random(SEED), engine=engine)
    with engine.serve(port=0, record=str(path)) as live:
        total, _ = loss(model, X, y)
        total.backward()
        assert live.flush(timeout=120)


def extend(path: Path, steps: int) -> dict[str, int]:
    """Append the first step's `structure` and `step`, then `steps` values-only steps."""
    events = list(msgpack.Unpacker(open(path, "rb"), raw=False, strict_map_key=False))
    forwards = [e for e in events if e["type"] == "forward"]
    grads = {e["id"]: e["grad"] for e in events if e["type"] == "backward"}
    order_ids = [e["id"] for e in events if e["type"] == "backward"]
    root = next(e["root"] for e in events if e["type"] == "backward_begin")
    nodes = sorted((e for e in forwards if e["op"] is not None), key=lambda e: e["id"])
    inputs = [e for e in forwards if e["op"] is None]
    items = nodes + inputs
    index = {e["id"]: i for i, e in enumerate(items)}
    ids = [e["id"] for e in nodes]
    data = [e["data"] for e in items]
    grad = [grads.get(e["id"], 0.0) for e in items]
    seq = events[-1]["seq"]
    out = open(path, "ab")
    seq += 1
    structure = {
        "type": "structure", "seq": seq, "structure": 1,
        "ids": struct.pack(f"<{len(ids)}Q", *ids),
        "offsets": struct.pack(f"<{len(ids)}I", *(i - ids[0] for i in ids)),
        "inputs": struct.pack(f"<{len(inputs)}Q", *(e["id"] for e in inputs)),
        "order": struct.pack(f"<{len(order_ids)}I", *(index[i] for i in order_ids)),
        "root": index[root],
    }  # fmt: skip
    out.write(msgpack.packb(structure))
    span = ids[-1] - ids[0] + 1
    first = ids[0]
    for k in range(1, steps + 2):
        seq += 1
        nudge = 1 + 0.001 * (k - 1)
        step = {
            "type": "step", "seq": seq, "step": k, "structure": 1, "first": first, "pass": k,
            "data": struct.pack(f"<{len(items)}d", *(v * nudge for v in data)),
            "grad": struct.pack(f"<{len(items)}d", *(v / nudge for v in grad)),
        }  # fmt: skip
        out.write(msgpack.packb(step))
        first += span
    out.close()
    return {"nodes": len(ids), "inputs": len(inputs), "bytes_per_step": 16 * len(items)}


TIME_STEPS = """() => { const v = opgraphViewer, apply = v.apply.bind(v);
    window.stepTimes = []; window.frameTimes = [];
    v.apply = (event) => {
        if (event?.type !== "step" || event.step === 1) return apply(event);
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
    record_one_step(path, points)
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
            f"opgraphViewer.steps.latest?.step === {steps + 1}", timeout=600_000, polling=500
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
