"""Opening a big group in the viewer page, in headless Chromium (issue 19).

    python -m benchmarks.viewer_big_group [--points 600] [--static DIR]

Builds one step of the moons demo model (`MLP(2, [16, 16, 1])`, the demo's loss) on
`--points` points with the real engine, traced by a real `engine.serve()`: neuron `L1/N0`
holds 17 + 33 x points nodes (19,817 at 600 points, as 6 traced steps of 100 points do
when every step is sent as a graph). The page (Debian's chromium through Playwright) shows
the overview; then layer `L1` and neuron `L1/N0` are opened, and it reports:

- `longest`: the longest task of the page's thread from the opening until the neuron is
  drawn (`PerformanceObserver`, `longtask`; 0 when none took 50 ms);
- `opened`: from the opening until the neuron is laid out and drawn;
- `describe`, `worker`, `prepare`: the page's time to describe what is shown for the layout
  worker, the worker's, and the page's to prepare the layout for drawing (the page's
  two run in slices: the time of their slices);
- `draw`: one draw of the fitted neuron with its rasterising (a `getImageData` after it);
- `box` and `scale`: the neuron's box (width x height, world units) and the camera's scale.

`--static DIR` serves another copy of the page (`git archive` of an older commit's
`server/static`) to compare before and after a change; the figures that copy does not
keep are reported as missing.

A script, not a test: on a machine shared with other work the figures vary by a factor of
two or more from run to run.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.viewer_groups import settled_nodes
from opgraph import Engine
from opgraph.demo import SEED, loss, make_moons
from opgraph.nn import MLP

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 760}
GROUP = "s:L1/N0"

LONG_TASKS = """window.longTasks = [];
    new PerformanceObserver((list) => {
        for (const e of list.getEntries()) longTasks.push(e.duration);
    }).observe({type: "longtask"});"""

OPENED = """(key) => { const v = opgraphViewer;
    return v.hview?.boxes.get(key)?.open && v.hview.drawn && !v.layout.busy && !v.describing
      && v.hasked.open === v.openVersion; }"""

FIGURES = """(key) => { const v = opgraphViewer, b = v.hview.boxes.get(key), ctx = v.ctx;
    const start = performance.now();
    v.draw(); ctx.getImageData(0, 0, 1, 1);
    return {draw_ms: performance.now() - start, describe_ms: v.describeMs ?? null,
        worker_ms: v.layoutMs, prepare_ms: v.prepareMs ?? null, box: [b.w, b.h],
        scale: v.camera.scale, longest_ms: Math.max(0, ...longTasks)}; }"""


def measure(points: int, static: Path | None = None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    engine = Engine(name="big-group", entry_points=False)
    X, y = make_moons(points, noise=0.1, seed=SEED)
    model = MLP(2, [16, 16, 1], rng=random.Random(SEED), engine=engine)
    options: dict[str, Any] = {"static_dir": static} if static else {}
    result: dict[str, Any] = {"points": points}
    with engine.serve(port=0, max_nodes=2_000_000, **options) as server:
        total, _ = loss(model, X, y)
        model.zero_grad()
        total.backward()
        result["nodes"] = settled_nodes(server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1, bypass_csp=True)  # pyright: ignore[reportArgumentType]  # a plain dict is what Playwright takes
            page.add_init_script(LONG_TASKS)
            page.goto(server.url)
            page.wait_for_function(
                """(nodes) => { const v = opgraphViewer; return v && v.graph.size === nodes
                    && v.hview?.drawn && !v.layout.busy; }""",
                arg=result["nodes"],
                timeout=300_000,
            )
            result["group_nodes"] = page.evaluate(
                "opgraphViewer.graph.scopes.byPath.get('L1/N0').count"
            )
            page.evaluate("longTasks.length = 0")
            started = time.perf_counter()
            page.evaluate(
                """(key) => { const v = opgraphViewer;
                    v.toggleGroup("s:L1", true); v.toggleGroup(key, true); }""",
                GROUP,
            )
            page.wait_for_function(OPENED, arg=GROUP, timeout=300_000, polling=20)
            result["opened_s"] = time.perf_counter() - started
            page.wait_for_timeout(300)  # the long tasks of the frames drawn by now, reported
            result.update(page.evaluate(FIGURES, GROUP))
            browser.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--points", type=int, default=600, help="points of the one step")
    parser.add_argument("--static", type=Path, help="serve this copy of the page instead")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    r = measure(args.points, args.static)
    missing = lambda value: "-" if value is None else f"{value:.0f} ms"  # noqa: E731
    print(
        f"{r['points']} points ({r['nodes']:,} nodes, {r['group_nodes']:,} in L1/N0):"
        f" opened and drawn in {r['opened_s']:.2f} s, longest task {r['longest_ms']:.0f} ms;"
        f" describe {missing(r['describe_ms'])}, worker {r['worker_ms']:.0f} ms,"
        f" prepare {missing(r['prepare_ms'])}; a fitted draw {r['draw_ms']:.1f} ms;"
        f" box {r['box'][0]:.0f} x {r['box'][1]:.0f}, scale {r['scale']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
