"""A traced training run (issue 19): what tracing every step costs, sends and stores, and how
long a viewer that joins late waits.

    python -m benchmarks.training [--steps 5] [--bytes-steps 30] [--join-steps 1000]
                                  [--join-points 10] [--quick] [--json PATH]

Every viewer here is a real process (benchmarks/viewer_process.py) that decodes every frame
it gets, counting events, bytes, `dropped` and gaps in the seqs.

1. Step cost: opgraph.demo's moons step (MLP(2, [16, 16, 1]) on 100 points, about 65,000
   nodes) untraced, against the same step with every step traced and served to one viewer
   (`--steps` steps in a row, after one traced step of warm-up; the traced time runs until
   the server has handed every event to the viewer). Rounds alternate the two and keep the
   best of each. Process CPU time (the engine's thread and the server's) and wall time.
   Targets: at most 1.3x (stretch 1.1x), nothing dropped.
2. Bytes per step: `--bytes-steps` traced steps from a fresh server, with one viewer and a
   recording (`record=`): the bytes the viewer got after its first snapshot, and the
   recording's size, divided by the steps (the first step's full graph included).
   Target: at most 2 MB a step (stretch 0.5 MB).
3. Join time: `--join-steps` traced steps served to nobody, then a viewer joins: the seconds
   from connecting to `snapshot_end`, and the snapshot's size. The demo's model on
   `--join-points` of the moons points (10 by default, about 7,500 nodes a step, so that
   1,000 traced steps take a minute, not half an hour; the parameters, whose history a
   snapshot carries, are the full model's 337). Target: under 2 s.

A viewer that is slower than the stream would make the figures the viewer's: each run says
how long after the server the viewer had decoded everything, and the share of that time it
spent decoding.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opgraph import Engine
from opgraph.demo import SEED, make_moons, train
from opgraph.nn import MLP

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
FLUSH_TIMEOUT = 600  # seconds: a bound for a hang, far above any run


def moons(points: int, seed: int = SEED) -> tuple[MLP, list[list[float]], list[int]]:
    """The demo's model, on an engine of its own, and `points` of the demo's moons."""
    X, y = make_moons(points, noise=0.1, seed=seed)
    engine = Engine(name="training", entry_points=False)
    return MLP(2, [16, 16, 1], rng=random.Random(seed), engine=engine), X, y


def timed(run) -> tuple[float, float]:
    """(wall, CPU) seconds of `run()`; CPU counts every thread of this process."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


class ViewerProcess:
    """benchmarks/viewer_process.py in `follow` mode: `until(seq)` waits until it decoded
    every event up to `seq` and returns its report."""

    def __init__(self, url: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.viewer_process", "follow", url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        if self.stdout.readline().strip() != "ready":
            raise RuntimeError("the viewer process did not start")

    def until(self, seq: int) -> dict[str, Any]:
        self.stdin.write(f"{seq}\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise RuntimeError("the viewer process ended")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.stdin.write("\n")
            self.stdin.flush()
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


@contextmanager
def served(engine: Engine, **options: Any):
    """`engine` served on a free port with one viewer process following it."""
    server: Any = engine.serve(port=0, **options)
    viewer = None
    try:
        viewer = ViewerProcess(server.ws_url)
        viewer.until(server.stats()["seq"])  # its first snapshot
        yield server, viewer
    finally:
        if viewer is not None:
            viewer.close()
        server.close()


def settle(server: Any, viewer: ViewerProcess) -> tuple[dict[str, Any], float]:
    """Flush the server, then wait for the viewer: its report, and the wall time when the
    server had handed everything to it (time.time())."""
    if not server.flush(timeout=FLUSH_TIMEOUT):
        raise RuntimeError("the server did not hand every event to the viewer")
    flushed = time.time()
    return viewer.until(server.stats()["seq"]), flushed


def viewer_figures(before: dict, after: dict, server: Any, flushed: float, start: float) -> dict:
    """Whether anything was lost on the way to the viewer, and whether it kept up."""
    stats = server.stats()
    decoded = after["decoded_at"]
    return {
        "dropped": after["dropped"] - before["dropped"],
        "server_dropped": sum(viewer["dropped"] for viewer in stats["viewers"]),
        "gaps": after["gaps"] - before["gaps"],
        "events": sum(after["kinds"].values()) - sum(before["kinds"].values()),
        "live_bytes": after["live_bytes"] - before["live_bytes"],
        "viewer_lag_s": max(0.0, decoded - flushed),  # decoded this long after the server
        "viewer_busy_share": (after["busy_s"] - before["busy_s"]) / max(decoded - start, 1e-9),
        "kinds": {
            kind: count - before["kinds"].get(kind, 0)
            for kind, count in after["kinds"].items()
            if count - before["kinds"].get(kind, 0)
        },
    }


# --- 1. the step's cost ---------------------------------------------------------------------


def bench_step_cost(steps: int, rounds: int, points: int) -> dict[str, Any]:
    model, X, y = moons(points)
    engine = model.engine
    train(model, X, y, 1)  # warm up
    untraced, traced, runs = [], [], []
    with served(engine) as (server, viewer):
        for _ in range(rounds):
            server.pause()
            untraced.append(timed(lambda: train(model, X, y, steps)))
            server.resume()
            train(model, X, y, 1)  # traced warm-up: the first step sends the whole graph
            before, _ = settle(server, viewer)
            start = time.time()
            cost = timed(lambda: (train(model, X, y, steps), server.flush(timeout=FLUSH_TIMEOUT)))
            after, flushed = settle(server, viewer)
            traced.append(cost)
            runs.append(viewer_figures(before, after, server, flushed, start))
    wall_u, cpu_u = min(w for w, _ in untraced) / steps, min(c for _, c in untraced) / steps
    wall_t, cpu_t = min(w for w, _ in traced) / steps, min(c for _, c in traced) / steps
    return {
        "points": points,
        "steps": steps,
        "rounds": rounds,
        "untraced_ms": wall_u * 1e3,
        "traced_ms": wall_t * 1e3,
        "ratio_wall": wall_t / wall_u,
        "untraced_cpu_ms": cpu_u * 1e3,
        "traced_cpu_ms": cpu_t * 1e3,
        "ratio_cpu": cpu_t / cpu_u,
        "events_per_step": max(run["events"] for run in runs) / steps,
        "dropped": sum(run["dropped"] + run["server_dropped"] for run in runs),
        "gaps": sum(run["gaps"] for run in runs),
        "viewer_lag_s": max(run["viewer_lag_s"] for run in runs),
        "viewer_busy_share": max(run["viewer_busy_share"] for run in runs),
        "runs": runs,
    }


# --- 2. bytes per step ----------------------------------------------------------------------


def bench_bytes(steps: int, points: int) -> dict[str, Any]:
    model, X, y = moons(points)
    with tempfile.TemporaryDirectory() as folder:
        recording = Path(folder) / "run.ogtrace"
        with served(model.engine, record=recording) as (server, viewer):
            before, _ = settle(server, viewer)
            size_before = recording.stat().st_size if recording.exists() else 0
            start = time.time()
            wall, cpu = timed(lambda: train(model, X, y, steps))
            after, flushed = settle(server, viewer)
            figures = viewer_figures(before, after, server, flushed, start)
        recorded = recording.stat().st_size - size_before  # (closed: all of it on disk)
    return {
        "points": points,
        "steps": steps,
        "wire_bytes_per_step": figures["live_bytes"] / steps,
        "recording_bytes_per_step": recorded / steps,
        "recording_bytes": recorded,
        "step_ms_traced_and_recorded": wall / steps * 1e3,
        "step_cpu_ms_traced_and_recorded": cpu / steps * 1e3,
        **{key: figures[key] for key in ("dropped", "server_dropped", "gaps", "events")},
        "viewer_lag_s": figures["viewer_lag_s"],
        "viewer_busy_share": figures["viewer_busy_share"],
        "kinds": figures["kinds"],
    }


# --- 3. a viewer joining after many steps ---------------------------------------------------


def join_once(url: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.viewer_process", "join", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=FLUSH_TIMEOUT,
        check=True,
    )
    return json.loads(result.stdout)


def bench_join(steps: int, points: int, joins: int = 2) -> dict[str, Any]:
    model, X, y = moons(points)
    server: Any = model.engine.serve(port=0)
    try:
        wall, _ = timed(lambda: train(model, X, y, steps))
        server.flush(timeout=FLUSH_TIMEOUT)
        stats = server.stats()
        lost = server.tracer.take_lost() if hasattr(server, "tracer") else 0
        seen = [join_once(server.ws_url) for _ in range(joins)]
    finally:
        server.close()
    best = min(seen, key=lambda report: report["seconds"])
    return {
        "points": points,
        "steps": steps,
        "train_s": wall,
        "seq": stats["seq"],
        "hub_nodes": stats["nodes"],
        "tracer_lost": lost,
        "join_s": best["seconds"],
        "join_s_all": [report["seconds"] for report in seen],
        "snapshot_bytes": best["bytes"],
        "snapshot_kinds": best["kinds"],
    }


# --- running --------------------------------------------------------------------------------


def run(config: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    parts = [
        ("step cost", "cost", lambda: bench_step_cost(config.steps, config.rounds, config.points)),
        ("bytes per step", "bytes", lambda: bench_bytes(config.bytes_steps, config.points)),
        ("join", "join", lambda: bench_join(config.join_steps, config.join_points)),
    ]
    for title, key, part in parts:
        print(f"  training: {title} ...", file=sys.stderr, flush=True)
        try:
            results[key] = part()
        except Exception as exc:  # keep the other figures of a long run
            results[key] = f"failed: {type(exc).__name__}: {exc}"
    return results


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, figure, target) for the table."""
    out: list[tuple[str, str, str]] = []
    cost, size, join = results.get("cost"), results.get("bytes"), results.get("join")
    if isinstance(cost, dict):
        out += [
            ("moons step, untraced", f"{cost['untraced_ms']:,.1f} ms", ""),
            ("moons step, every step traced", f"{cost['traced_ms']:,.1f} ms", ""),
            ("  traced / untraced, wall", f"{cost['ratio_wall']:.2f}x", "<= 1.3x (1.1x)"),
            ("  traced / untraced, CPU", f"{cost['ratio_cpu']:.2f}x", "<= 1.3x (1.1x)"),
            ("  events per traced step", f"{cost['events_per_step']:,.0f}", ""),
            ("  dropped, missing seqs", f"{cost['dropped']:,}, {cost['gaps']:,}", "0, 0"),
            ("  viewer done after server", f"{cost['viewer_lag_s']:.2f} s", ""),
        ]
    else:
        out.append(("step cost", str(cost), ""))
    if isinstance(size, dict):
        out += [
            (
                f"bytes per step, wire ({size['steps']} steps)",
                f"{size['wire_bytes_per_step'] / 1e6:,.2f} MB",
                "<= 2 MB (0.5 MB)",
            ),
            ("bytes per step, recording", f"{size['recording_bytes_per_step'] / 1e6:,.2f} MB", ""),
            ("  dropped, missing seqs", f"{size['dropped']:,}, {size['gaps']:,}", "0, 0"),
        ]
    else:
        out.append(("bytes per step", str(size), ""))
    if isinstance(join, dict):
        out += [
            (
                f"join after {join['steps']:,} steps ({join['points']} points)",
                f"{join['join_s']:.2f} s",
                "< 2 s",
            ),
            ("  snapshot size", f"{join['snapshot_bytes'] / 1e6:,.1f} MB", ""),
        ]
    else:
        out.append(("join", str(join), ""))
    return out


def run_for_runner(config: Any) -> dict[str, Any]:
    """The figures `python -m benchmarks` shows (smaller with --quick)."""
    return run(parse_args(["--quick"] if config.quick else []))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--steps", type=int, default=5, help="traced steps per round (5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the step cost (2)")
    parser.add_argument("--points", type=int, default=100, help="moons points (100)")
    parser.add_argument("--bytes-steps", type=int, default=30, help="steps for bytes (30)")
    parser.add_argument("--join-steps", type=int, default=1000, help="steps before joining")
    parser.add_argument("--join-points", type=int, default=10, help="points for the join (10)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--json", type=Path, default=RESULTS / "training.json")
    config = parser.parse_args(argv)
    if config.quick:
        config.steps, config.rounds, config.points = 1, 1, 6
        config.bytes_steps, config.join_steps, config.join_points = 3, 5, 4
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    results = run(config)
    for what, figure, target in rows(results):
        print(f"{what:<44}{figure:>16}  {target}")
    results["meta"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "config": {key: str(value) for key, value in vars(config).items()},
    }
    config.json.parent.mkdir(parents=True, exist_ok=True)
    config.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {config.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
