"""opgraph against micrograd, side by side in one process.

    python -m benchmarks [--quick] [--repeat N] [--out DIR] [--compare OLD.json]

Measures, for both engines, with the garbage collector on (as users run) and off:
graph construction per op, backward per node, one training step of micrograd's moons demo,
memory per node (of the moons loss graph, and of a chain of ops with constants), and the
deepest chain each can backpropagate; for opgraph also the
compiled moons step (and its compile time), the batched moons step (`Compiled.map`, with
numpy, the parameters in a ParameterStore) and how it grows with the number of points, what
tracing costs, a traced training
run (benchmarks/training.py: every step traced to a viewer process, bytes per step on the wire
and in a recording, a viewer joining after 1,000 steps), Rogozhnikov's 10,000-op task
(benchmarks/rogozhnikov.py) and, last, the moons step against PyTorch and micrograd by batch
size (benchmarks/peers.py). Prints a table and writes JSON to benchmarks/results/
(`latest.json` and a timestamped copy).

Times are CPU time of this process (`time.process_time`), the best of `--repeat` runs: on a
machine shared with other work, wall time mostly measures the other work. Every ratio is
micrograd's time over opgraph's, measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import platform
import sys
import time
import timeit
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import micrograd
from micrograd.engine import Value as MicroValue

import opgraph
from opgraph import Value as OpValue
from opgraph.reverse import topological_order

from .moons import MLP, SEED, loss, make_moons, step

try:
    import numpy  # noqa: F401

    from . import peers, rogozhnikov
    from .batched import batched_step
except ImportError:  # numpy is optional: the batched figures need it
    batched_step = peers = rogozhnikov = None

# Steps per timed call of the batched runner: a step takes about a millisecond.
BATCHED_INNER = 25

ENGINES = {"micrograd": MicroValue, "opgraph": OpValue}
RESULTS = Path(__file__).parent / "results"


# --- timing helpers ---------------------------------------------------------------------------


def best_time(fn: Callable[[], object], repeat: int, collector: bool) -> float:
    """The fastest of `repeat` runs of `fn`, in CPU seconds, with the collector on or off."""
    best = math.inf
    for _ in range(repeat):
        gc.collect()
        if not collector:
            gc.disable()
        try:
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        finally:
            gc.enable()
    return best


def per_call(stmt: str, names: dict, number: int, repeat: int, collector: bool) -> float:
    """Nanoseconds per execution of `stmt`, the best of `repeat` batches of `number`."""
    setup = "import gc; gc.enable()" if collector else "import gc; gc.disable()"
    timer = timeit.Timer(stmt, setup=setup, timer=time.process_time, globals=names)
    try:
        return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9
    finally:
        gc.enable()


def micrograd_topo(root) -> list:
    """micrograd's own topological sort (recursive), to count its nodes."""
    topo, seen = [], set()

    def build(v):
        if v not in seen:
            seen.add(v)
            for child in v._prev:
                build(child)
            topo.append(v)

    build(root)
    return topo


def count_nodes(name: str, root) -> int:
    return len(topological_order(root) if name == "opgraph" else micrograd_topo(root))


# --- the benchmarks ---------------------------------------------------------------------------


def bench_ops(config) -> dict:
    """Graph construction: nanoseconds per op, one op per statement."""
    statements = ["a * b", "a + b", "a * 2.0", "2.0 * a", "a ** 2", "a.relu()", "-a"]
    results = {}
    for collector in (True, False):
        for stmt in statements:
            row = {}
            for name, V in ENGINES.items():
                names = {"a": V(1.5), "b": V(-2.5)}
                row[name] = per_call(stmt, names, config.op_number, config.repeat, collector)
            row["ratio"] = row["micrograd"] / row["opgraph"]
            results[f"{stmt} | gc {'on' if collector else 'off'}"] = row
    return results


def bench_backward(config, X, y) -> dict:
    """Backward per node, on a freshly built moons loss graph (building it is not timed)."""
    results = {}
    for collector in (True, False):
        row = {name: math.inf for name in ENGINES}
        for _ in range(config.rounds):
            for name, V in ENGINES.items():
                root = loss(MLP(V, 2, [16, 16, 1]), V, X, y)
                row["nodes"] = nodes = count_nodes(name, root)
                seconds = best_time(root.backward, 1, collector)
                row[name] = min(row[name], seconds / nodes * 1e9)
                del root
        row["ratio"] = row["micrograd"] / row["opgraph"]
        results[f"gc {'on' if collector else 'off'}"] = row
    return results


def sustained(runners: dict[str, Callable[[], object]], config, collector: bool) -> dict:
    """Milliseconds per step of consecutive training steps, as a training loop runs them.

    The garbage of one step is left for the next ones to collect, as in a real loop (a
    collection between timed steps would hide micrograd's cycles). The engines take turns,
    round by round, and each keeps its best round, so a burst of load elsewhere on the
    machine hits both alike.
    """
    best = {name: math.inf for name in runners}
    for _ in range(config.rounds):
        for name, run in runners.items():
            gc.collect()
            if not collector:
                gc.disable()
            try:
                run()  # warm-up, leaving its garbage behind as any earlier step would
                start = time.process_time()
                for _ in range(config.steps):
                    run()
                seconds = (time.process_time() - start) / config.steps
            finally:
                gc.enable()
            best[name] = min(best[name], seconds * 1e3)
    return best


def bench_moons(config, X, y) -> dict:
    """One training step of the moons demo (zero grads, forward, backward, SGD update):
    micrograd, opgraph eager, and opgraph compiled (`opgraph.compile`, compiled once)."""
    models = {name: MLP(V, 2, [16, 16, 1]) for name, V in ENGINES.items()}
    compiled_model = MLP(OpValue, 2, [16, 16, 1])
    params = compiled_model.parameters()

    def loss_of(points):  # `points` arrive as input Values: no Value(...) wrapping here
        scores = [compiled_model(row) for row in points]
        losses = [(1 + -yi * s).relu() for yi, s in zip(y, scores, strict=True)]
        data_loss = sum(losses) * (1.0 / len(losses))
        return data_loss + 1e-4 * sum(p * p for p in params)

    start_cpu, start_wall = time.process_time(), time.perf_counter()
    compiled = opgraph.compile(loss_of, X)
    compile_cpu, compile_wall = time.process_time() - start_cpu, time.perf_counter() - start_wall

    def compiled_step():
        for p in params:
            p.grad = 0.0
        compiled(X)
        compiled.backward()
        for p in params:
            p.data -= 0.05 * p.grad

    runners = {name: functools.partial(step, models[name], V, X, y) for name, V in ENGINES.items()}
    runners["compiled"] = compiled_step
    if batched_step is not None:
        one_batched_step = batched_step(X, y, stored=True)
        runners["batched"] = lambda: [one_batched_step() for _ in range(BATCHED_INNER)]
    results: dict = {
        "nodes": len(compiled.nodes),
        "compile_cpu_s": compile_cpu,
        "compile_wall_s": compile_wall,
    }
    for collector in (True, False):
        row = sustained(runners, config, collector)
        row["ratio"] = row["micrograd"] / row["opgraph"]
        row["compiled_ratio"] = row["micrograd"] / row["compiled"]
        if "batched" in row:
            row["batched"] /= BATCHED_INNER
            row["batched_ratio"] = row["micrograd"] / row["batched"]
        results[f"gc {'on' if collector else 'off'}"] = row
    return results


def bench_batched(config) -> dict:
    """The batched moons step (collector on) at 100, 1,000 and 10,000 points: ms per step."""
    if batched_step is None:
        return {"note": "not measured: numpy is not installed (pip install -e '.[bench]')"}
    results = {}
    for points in config.batch_points:
        X, y = make_moons(points)
        run = batched_step(X, y, stored=True)
        inner = max(1, BATCHED_INNER * 100 // points)
        row = sustained(
            {"batched": lambda run=run, k=inner: [run() for _ in range(k)]}, config, True
        )
        ms = row["batched"] / inner
        results[str(points)] = {"ms": ms, "us_per_point": ms * 1e3 / points}
    return results


def bench_peers(config) -> dict:
    """The moons step against PyTorch (when installed) and micrograd: benchmarks/peers.py."""
    if peers is None:
        return {"note": "not measured: numpy is not installed (pip install -e '.[bench]')"}
    return peers.bench_peers(config)


def bench_rogozhnikov(config) -> dict:
    """Rogozhnikov's 10,000-op scalar graph task: benchmarks/rogozhnikov.py."""
    if rogozhnikov is None:
        return {"note": "not measured: numpy is not installed (pip install -e '.[bench]')"}
    rogozhnikov.configure(config)
    return rogozhnikov.bench_rogozhnikov(config)


def bench_memory(X, y) -> dict:
    """Bytes per node of the moons loss graph (tracemalloc; the model's own memory excluded)."""
    results = {}
    for name, V in ENGINES.items():
        model = MLP(V, 2, [16, 16, 1])
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        root = loss(model, V, X, y)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        nodes = count_nodes(name, root) - len(model.parameters())
        results[name] = (after - before) / nodes
    results["ratio"] = results["micrograd"] / results["opgraph"]
    return results


def bench_memory_chain(config) -> dict:
    """Bytes per op of `v = v * 1.0001 + 0.5` repeated (tracemalloc): each op makes a node
    and the leaf of its constant, so this is what the two cost together."""
    results = {}
    for name, V in ENGINES.items():
        v = V(1.0)
        v * 1.0001 + 0.5  # (opgraph's default engine made and its ops bound)
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(config.chain_steps):
                v = v * 1.0001 + 0.5
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            gc.enable()
        results[name] = (after - before) / config.chain_steps / 2
    results["ratio"] = results["micrograd"] / results["opgraph"]
    return results


def _chain_backward(V, depth: int) -> bool:
    x = V(0.5)
    y = x
    for _ in range(depth):
        y = y * 1.0001
    try:
        y.backward()
    except RecursionError:
        return False
    return True


def bench_depth(config) -> dict:
    """The deepest chain `y = y * 1.0001` whose backward succeeds, at the default recursion
    limit: micrograd's exact limit (bisection), opgraph's largest depth tried."""
    lo, hi = 1, 1
    while _chain_backward(MicroValue, hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _chain_backward(MicroValue, mid) else (lo, mid)
    deepest = 0
    for depth in config.depths:
        if not _chain_backward(OpValue, depth):
            break
        deepest = depth
    return {
        "micrograd": lo,
        "opgraph": deepest,
        "opgraph_note": f"largest depth tried: {max(config.depths):,}",
        "recursion_limit": sys.getrecursionlimit(),
    }


def bench_tracing(config, X, y, moons_ms: float) -> dict:
    """What tracing costs when off: the test each node makes, timed on its own.

    With no tracer, each op makes one `tracer is not None` test on a constant of its bound
    function, and backward one on a local; this times that many tests against a step.
    Tracing on (no viewer, one viewer) is measured by benchmarks/bench_tracing.py when the
    tracing server is installed.
    """
    model = MLP(OpValue, 2, [16, 16, 1])
    nodes = count_nodes("opgraph", loss(model, OpValue, X, y))
    tracer = None

    def tests():
        for _ in range(nodes):
            if tracer is not None:
                pass
            if tracer is not None:  # backward's test
                pass

    def loop():
        for _ in range(nodes):
            pass

    cost = max(0.0, best_time(tests, config.repeat, True) - best_time(loop, config.repeat, True))
    results = {"off_cost_percent": 100 * cost * 1e3 / moons_ms, "nodes": nodes}
    try:
        from . import bench_tracing  # the tracing server's own benchmark, when present
    except ImportError:
        bench_tracing = None
    runner = getattr(bench_tracing, "run_for_runner", None)
    if runner is None:
        results["on"] = "not measured: the tracing server is not in this checkout"
    else:
        try:
            results["on"] = runner(config)
        except Exception as exc:  # keep the other figures of a long run
            results["on"] = f"failed: {type(exc).__name__}: {exc}"
    return results


def bench_training(config) -> dict:
    """A traced training run, every step traced (issue 19): see benchmarks/training.py."""
    from . import training

    return training.run_for_runner(config)


# --- the table --------------------------------------------------------------------------------


def table(results: dict) -> str:
    lines = []

    def row(label, micro, op, ratio, unit):
        lines.append(f"{label:<34}{micro:>14}{op:>14}{ratio:>10}  {unit}")

    def fmt(x, digits=0):
        return f"{x:,.{digits}f}"

    row("", "micrograd", "opgraph", "ratio", "")
    lines.append("-" * 80)
    for key, r in results["ops"].items():
        row(f"op {key}", fmt(r["micrograd"]), fmt(r["opgraph"]), f"{r['ratio']:.2f}x", "ns/op")
    for key, r in results["backward"].items():
        row(
            f"backward, {key}",
            fmt(r["micrograd"]),
            fmt(r["opgraph"]),
            f"{r['ratio']:.2f}x",
            "ns/node",
        )
    moons = results["moons"]
    for key in ("gc on", "gc off"):
        r = moons[key]
        row(
            f"moons step, {key}",
            fmt(r["micrograd"], 1),
            fmt(r["opgraph"], 1),
            f"{r['ratio']:.2f}x",
            "ms",
        )
    for key in ("gc on", "gc off"):
        r = moons[key]
        row(
            f"compiled moons step, {key}",
            fmt(r["micrograd"], 1),
            fmt(r["compiled"], 1),
            f"{r['compiled_ratio']:.1f}x",
            "ms",
        )
    row(
        "compile time (CPU / wall)",
        "",
        f"{moons['compile_cpu_s']:.2f}/{moons['compile_wall_s']:.2f}",
        "",
        "s",
    )
    for key in ("gc on", "gc off"):
        r = moons[key]
        if "batched" in r:
            row(
                f"batched moons step, {key}",
                fmt(r["micrograd"], 1),
                fmt(r["batched"], 3),
                f"{r['batched_ratio']:,.0f}x",
                "ms",
            )
    for points, r in results.get("batched", {}).items():
        if isinstance(r, dict):
            row(f"batched step, {int(points):,} points", "", fmt(r["ms"], 3), "", "ms, gc on")
    if "rogozhnikov" in results and "eager_s" in results["rogozhnikov"]:
        lines.append("")
        lines.append(rogozhnikov.table(results["rogozhnikov"]) if rogozhnikov else "")
    if "peers" in results:  # (not in runs made before it was measured)
        lines.append("")
        lines.append(peers.table(results["peers"]) if peers else str(results["peers"]))
        lines.append(peers.plot(results["peers"]) if peers else "")
        lines.append("")
    m = results["memory"]
    row("memory per node", fmt(m["micrograd"]), fmt(m["opgraph"]), f"{m['ratio']:.2f}x", "bytes")
    if "memory_chain" in results:  # (not in runs made before it was measured)
        m = results["memory_chain"]
        ratio = f"{m['ratio']:.2f}x"
        row("memory, v * 1.0001 + 0.5", fmt(m["micrograd"]), fmt(m["opgraph"]), ratio, "bytes/op")
    d = results["depth"]
    row("deepest chain backward", fmt(d["micrograd"]), f">={d['opgraph']:,}", "", "nodes")
    t = results["tracing"]
    row("tracing off, cost of the tests", "", f"{t['off_cost_percent']:.2f}", "", "% of step")
    if isinstance(t["on"], dict):
        for key, value in t["on"].items():
            row(
                f"tracing {key}",
                "",
                f"{value:,.2f}" if isinstance(value, float) else str(value),
                "",
                "",
            )
    else:
        lines.append(f"tracing on: {t['on']}")
    if "training" in results:  # (not in runs made before it was measured)
        from .training import rows

        lines.append("a training run, every step traced, one viewer process:")
        for what, figure, target in rows(results["training"]):
            row(f"  {what}", "", figure, "", target)
    return "\n".join(lines)


def compare(new: dict, old: dict) -> str:
    """Each opgraph figure now, against the same figure in an earlier run."""
    lines = [f"compared with the run of {old['meta']['time']}: opgraph now / then"]
    for section in ("ops", "backward", "moons"):
        for key, r in new[section].items():
            then = old.get(section, {}).get(key)
            if isinstance(r, dict) and then:
                lines.append(f"  {section} {key}: {r['opgraph'] / then['opgraph']:.2f}")
                if "compiled" in r:
                    lines.append(f"  compiled {key}: {r['compiled'] / then['compiled']:.2f}")
                if "batched" in r and "batched" in then:
                    lines.append(f"  batched {key}: {r['batched'] / then['batched']:.2f}")
    return "\n".join(lines)


# --- running ----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs (rounds) per figure, best kept (3)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON")
    parser.add_argument("--compare", type=Path, help="an earlier results JSON to compare with")
    config = parser.parse_args(argv)
    if config.quick:
        config.points, config.op_number, config.depths = 6, 2_000, [100, 10_000]
        config.repeat = config.repeat or 1
        config.rounds, config.steps = 1, 1
        config.batch_points = [6, 60]
        config.chain_steps = 1_000
        config.peer_points, config.peer_steps = [6, 60], 2
    else:
        config.points, config.op_number = 100, 20_000
        config.depths = [1_000, 10_000, 100_000, 1_000_000]
        config.repeat = config.repeat or 3
        config.rounds, config.steps = config.repeat, 4
        config.batch_points = [100, 1_000, 10_000]
        config.chain_steps = 50_000
        config.peer_points, config.peer_steps = [100, 1_000, 10_000], 40
    return config


def main(argv=None) -> int:
    config = parse_args(argv)
    X, y = make_moons(config.points, noise=0.1, seed=SEED)
    results: dict = {
        "meta": {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "opgraph": opgraph.__version__,
            "micrograd": getattr(micrograd, "__version__", "0.1.0"),
            "quick": config.quick,
            "repeat": config.repeat,
            "points": config.points,
            "timer": "process CPU time, best of repeat",
        }
    }
    steps = [
        ("ops", lambda: bench_ops(config)),
        ("backward", lambda: bench_backward(config, X, y)),
        ("moons", lambda: bench_moons(config, X, y)),
        ("batched", lambda: bench_batched(config)),
        ("memory", lambda: bench_memory(X, y)),
        ("memory_chain", lambda: bench_memory_chain(config)),
        ("depth", lambda: bench_depth(config)),
        ("tracing", lambda: bench_tracing(config, X, y, results["moons"]["gc on"]["opgraph"])),
        ("training", lambda: bench_training(config)),
        ("rogozhnikov", lambda: bench_rogozhnikov(config)),
        # Last: importing PyTorch makes every later full collection walk its objects too.
        ("peers", lambda: bench_peers(config)),
    ]
    for name, run in steps:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run()
    print(table(results))
    config.out.mkdir(parents=True, exist_ok=True)
    stamp = results["meta"]["time"].replace(":", "").replace("+0000", "Z")
    name = "quick" if config.quick else "latest"
    for path in (config.out / f"{name}.json", config.out / f"{name}-{stamp}.json"):
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {config.out / f'{name}.json'}")
    if config.compare:
        print(compare(results, json.loads(config.compare.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
