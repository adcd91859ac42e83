"""The viewer's hierarchical overview with many groups, in headless Chromium.

    python -m benchmarks.viewer_groups [--case shared|mlp|ring] [--groups N] [--frames 40]

Builds a trace with the real engine, serves it with a real `engine.serve()`, opens the
viewer page in Debian's chromium (Playwright, /usr/bin/chromium) and reports:

- `first`: when the first overview was drawn, `whole`: when the overview of the whole graph
  was drawn (seconds since the page started loading; given up after `--wait` seconds, the
  frames are then measured on what the page shows), and `worker`: the layout worker's time
  for the last overview;
- `describe`: the page's time to describe the overview for the worker (`describing`, in
  slices: the time spent in them);
- frames while panning, at the fitted zoom and zoomed in (`draw`: `performance.now()`
  around one draw; `frame`: `requestAnimationFrame` deltas), median and longest;
- `counts`: what the last draw issued (edge paths, bundles, boxes) and the looks it
  worked out (`looks`: 0 while panning), from the counters the page keeps for the tests.

Cases:
- `shared`: `--groups` top-level scopes (default 20,000) sharing one input `x` (each scope
  holds `x * 2`);
- `mlp`: one scope per sample around a small MLP (`MLP(2, [4, 4, 1])`), `--groups`
  samples (default 2,000), then the summed loss;
- `ring`: `--groups` scopes (default 20,000) in a ring: each uses the one before and
  the one before uses it back (every group in a cycle), the first uses the last.

`--static DIR` serves another copy of the page (`git worktree` or `git archive` of an
older commit's `server/static`) to compare before and after a change.

A script, not a test: on a machine shared with other work the figures vary by a factor of
two or more from run to run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import opgraph
from opgraph import Engine
from opgraph.nn import MLP

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 760}


def build_shared(engine: Engine, groups: int) -> None:
    x = engine.value(1.0, label="x")
    for i in range(groups):
        with opgraph.scope(f"g{i}"):
            x * 2.0


def build_mlp(engine: Engine, samples: int) -> None:
    import random

    model = MLP(2, [4, 4, 1], rng=random.Random(0), engine=engine)
    rng = random.Random(1)
    total = None
    for i in range(samples):
        with opgraph.scope(f"sample{i}"):
            x = [engine.value(rng.uniform(-1, 1)), engine.value(rng.uniform(-1, 1))]
            out = model(x)
        total = out if total is None else total + out
    total.backward()


def build_ring(engine: Engine, groups: int) -> None:
    with opgraph.scope("g0"):
        a = engine.value(1.0, label="x") * 2.0
    for i in range(1, groups):
        with opgraph.scope(f"g{i}"):
            b = a * 2.0
        with opgraph.scope(f"g{i - 1}"):
            b * 1.0  # and back: each pair of neighbours is a cycle
        a = b
    with opgraph.scope("g0"):
        a * 2.0  # the last into the first: a ring


BUILDERS = {
    "shared": (build_shared, 20_000),
    "mlp": (build_mlp, 2_000),
    "ring": (build_ring, 20_000),
}

OVERVIEW_DRAWN = """(nodes) => { const v = opgraphViewer;
    return v && v.graph.size === nodes && v.hasked?.version === v.graph.version
      && !v.layout.busy && v.hview?.drawn === true; }"""

PAN = """async ([frames, budget]) => {
    const v = opgraphViewer, draws = [], deltas = [];
    const frame = () => new Promise(requestAnimationFrame);
    await frame();
    let last = performance.now();
    const end = last + budget;
    for (let i = 0; i < frames && performance.now() < end; i++) {
        v.camera.x += 7; v.camera.y += i % 2 ? 3 : -3; v.follow = false;
        const start = performance.now();
        v.draw();
        draws.push(performance.now() - start);
        await frame();
        const now = performance.now();
        deltas.push(now - last);
        last = now;
    }
    return {draws, deltas, counts: v.drawCounts ?? null};
}"""


def settled_nodes(server: Any) -> int:
    """The nodes in the server's graph once the tracer's buffer is drained into it (a flush
    with no viewer drains one batch: poll until the count stops moving)."""
    last = -1
    while True:
        server.flush(timeout=10)
        nodes = server.stats()["nodes"]
        if nodes == last:
            return nodes
        last = nodes
        time.sleep(0.5)


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.1f} ms, max {max(values):.1f} ms ({len(values)})"


def measure(
    case: str,
    groups: int,
    frames: int,
    budget_s: float,
    static: Path | None = None,
    wait_s: float = 300,
) -> dict[str, Any]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    build, _ = BUILDERS[case]
    engine = Engine(name=f"viewer-{case}", entry_points=False)
    result: dict[str, Any] = {"case": case, "groups": groups}
    options: dict[str, Any] = {"static_dir": static} if static else {}
    with engine.serve(port=0, max_nodes=2_000_000, **options) as server:
        started = time.perf_counter()
        build(engine, groups)
        result["build_s"] = time.perf_counter() - started
        nodes = settled_nodes(server)
        result["nodes"] = nodes
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1, bypass_csp=True)
            joiner = "&" if "?" in server.url else "?"
            page.goto(f"{server.url}{joiner}max_nodes=2000000")
            page.wait_for_function(
                "() => window.opgraphViewer?.firstGroupsAt", timeout=wait_s * 1000, polling=200
            )
            result["first_s"] = page.evaluate("opgraphViewer.firstGroupsAt") / 1000
            try:
                page.wait_for_function(
                    OVERVIEW_DRAWN, arg=nodes, timeout=wait_s * 1000, polling=200
                )
                result["full_s"] = page.evaluate("performance.now()") / 1000
            except PlaywrightTimeout:  # measured anyway, on what the page shows by then
                result["full_s"] = None
            result["worker_ms"] = page.evaluate("opgraphViewer.layoutMs")
            result["units"] = page.evaluate("opgraphViewer.hview.order.length")
            result["edges"] = page.evaluate("opgraphViewer.hview.edges.length")
            # described again, a slice at a time: the time spent in its slices
            page.evaluate("() => { opgraphViewer.hasked = null; opgraphViewer.updateHierarchy(); }")
            page.wait_for_function(
                "() => !opgraphViewer.describing && !opgraphViewer.layout.busy",
                timeout=wait_s * 1000,
            )
            result["describe_ms"] = page.evaluate("opgraphViewer.describeMs")
            result["scale_fitted"] = page.evaluate("opgraphViewer.camera.scale")
            fitted = page.evaluate(PAN, [frames, budget_s * 1000])
            # zoomed in on the middle of the overview, where names and counts are drawn
            page.evaluate(
                """() => { const v = opgraphViewer, b = v.hview.box;
                    v.follow = false; v.camera.scale = 0.4;
                    v.camera.x = v.width / 2 - (b.left + b.right) / 2 * 0.4;
                    v.camera.y = v.height / 2 - (b.top + b.bottom) / 2 * 0.4; }"""
            )
            zoomed = page.evaluate(PAN, [frames, budget_s * 1000])
            browser.close()
    for name, run in (("fitted", fitted), ("zoomed", zoomed)):
        result[name] = {
            "draw": summary(run["draws"]),
            "frame": summary(run["deltas"]),
            "draw_median_ms": statistics.median(run["draws"]) if run["draws"] else None,
            "counts": run["counts"],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(BUILDERS), action="append")
    parser.add_argument("--groups", type=int, help="groups (samples for mlp)")
    parser.add_argument("--frames", type=int, default=40, help="frames per pan")
    parser.add_argument("--budget", type=float, default=20, help="seconds per pan at most")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--static", type=Path, help="serve this copy of the page instead")
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for the page")
    args = parser.parse_args()
    results = []
    for case in args.case or ["shared", "mlp", "ring"]:
        groups = args.groups or BUILDERS[case][1]
        result = measure(case, groups, args.frames, args.budget, args.static, args.wait)
        results.append(result)
        full = result["full_s"]
        whole = f"{full:.2f} s" if full is not None else f"not within {args.wait:.0f} s"
        print(
            f"{case} ({groups:,} groups, {result['nodes']:,} nodes, {result['units']:,} units,"
            f" {result['edges']:,} edges): first overview {result['first_s']:.2f} s,"
            f" whole {whole}, worker {result['worker_ms']:.0f} ms,"
            f" describe {result['describe_ms']:.0f} ms"
        )
        for name in ("fitted", "zoomed"):
            run = result[name]
            print(f"  pan {name}: draw {run['draw']}; frame {run['frame']}; counts {run['counts']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
