"""What tracing costs: the moons training step untraced, with tracing off, and traced live.

    python benchmarks/bench_tracing.py [--steps 3] [--json PATH]

1. Tracing off: the demo's moons step (MLP(2, [16, 16, 1]) on 100 points, about 65,000
   nodes) with no tracer attached, against the same step with the tracer hooks removed from
   the engine (its op binder, Value.__init__ and backward recompiled without their
   `tracer is not None` tests). The difference is what tracing costs when it is off
   (goal: at most 3%).
2. Tracing on: the same step while the engine's trace is served to one viewer, a separate
   process (as a browser would be) that reads and decodes every event. Reported: the step's
   slowdown (goal: at most 2x, in wall time), and the events per second delivered to the
   viewer, from the start of the step to the moment the viewer decoded the step's last
   event (goal: 300,000 events/s). Then 5 traced steps in a row, as a training loop runs
   them: there the server cannot wait for the engine to pause (see docs/tracing.md).

Each configuration runs `--steps` steps, interleaved, and the fastest is kept (the machine's
other load only ever slows a run down). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import json
import os
import platform
import random
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

from opgraph.demo import MLP, make_moons, train

backward_module = importlib.import_module("opgraph.reverse")
value_module = importlib.import_module("opgraph.value")

VIEWER = r"""
import asyncio, sys, time
import msgpack, websockets

async def main(url):
    async with websockets.connect(url, subprotocols=["opgraph.v1"], max_size=None) as ws:
        unpacker = msgpack.Unpacker(raw=False)
        print("ready", flush=True)
        count, last_seq, last_time = 0, 0, 0.0
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        wanted = asyncio.ensure_future(stdin.readline())
        target = None
        while True:
            if target is None and wanted.done():
                target = int(wanted.result())
            if target is not None and last_seq >= target:
                print(count, last_seq, repr(last_time), flush=True)
                target, wanted = None, asyncio.ensure_future(stdin.readline())
                continue
            try:
                frame = await asyncio.wait_for(ws.recv(), 0.05)
            except TimeoutError:
                continue
            unpacker.feed(frame)
            for event in unpacker:
                count += 1
                seq = event.get("seq")
                if isinstance(seq, int) and event["type"] not in ("hello", "snapshot_begin"):
                    last_seq = seq
            last_time = time.time()

asyncio.run(main(sys.argv[1]))
"""


def moons_model(seed: int = 1337):
    X, y = make_moons(100, noise=0.1, seed=seed)
    return MLP(2, [16, 16, 1], rng=random.Random(seed)), X, y


def timed_step(model, X, y, cpu: list | None = None) -> float:
    """Wall seconds of one training step; appends the process's CPU seconds to `cpu`.

    CPU time counts every thread of this process (the server's too) and not other programs,
    so it is the steadier measure on a busy machine.
    """
    gc.collect()
    start, start_cpu = time.perf_counter(), time.process_time()
    train(model, X, y, 1)
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


# --- the engine without its tracer hooks (what "tracing off" is compared with) -------------

binding_module = importlib.import_module("opgraph.binding")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def without_tracer_tests(func):
    """`func` compiled again from its source, without its `if ... tracer is not None:` blocks.

    The engine tests for a tracer in four places: the op functions that `_bind_primitive`
    makes, the constant leaves of `_coercer`, `Value.__init__` and backward's `_propagate`.
    Dropping those blocks gives the engine as it would be with tracing compiled out entirely.
    """
    kept, skipping = [], None
    for line in textwrap.dedent(inspect.getsource(func)).splitlines():
        if skipping is not None and line.strip() and _indent(line) > skipping:
            continue  # the body of a tracer test
        skipping = None
        if line.strip().startswith("if ") and "tracer is not None" in line:
            skipping = _indent(line)
            continue
        kept.append(line)
    namespace = dict(func.__globals__)
    exec("\n".join(kept), namespace)
    return namespace[func.__name__]


@contextmanager
def without_tracer_hooks(engine):
    patches = [
        (binding_module, "_bind_primitive"),
        (binding_module, "_coercer"),
        (backward_module, "_propagate"),
        (value_module.Value, "__init__"),
    ]
    originals = [(owner, name, owner.__dict__[name]) for owner, name in patches]
    for owner, name, original in originals:
        setattr(owner, name, without_tracer_tests(original))
    engine._bind(engine.ops.definitions)  # the op functions again, from the patched binder
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        engine._bind(engine.ops.definitions)


def bench_off(steps: int) -> dict:
    model, X, y = moons_model()
    train(model, X, y, 1)  # warm up
    off, unhooked, off_cpu, unhooked_cpu = [], [], [], []
    for _ in range(steps):
        off.append(timed_step(model, X, y, off_cpu))
        with without_tracer_hooks(model.engine):
            unhooked.append(timed_step(model, X, y, unhooked_cpu))
    return {
        "step_s_tracing_off": min(off),
        "step_s_without_hooks": min(unhooked),
        "tracing_off_overhead": min(off) / min(unhooked) - 1,
        "step_cpu_s_tracing_off": min(off_cpu),
        "step_cpu_s_without_hooks": min(unhooked_cpu),
        "tracing_off_overhead_cpu": min(off_cpu) / min(unhooked_cpu) - 1,
        "runs_tracing_off": off,
        "runs_without_hooks": unhooked,
    }


# --- tracing on, no viewer ---------------------------------------------------------------------


def bench_no_viewer(steps: int) -> dict:
    """The step while the engine's trace is served to nobody (events made, then dropped)."""
    model, X, y = moons_model()
    train(model, X, y, 1)  # warm up
    untraced_cpu: list[float] = []
    traced_cpu: list[float] = []
    for _ in range(steps):
        timed_step(model, X, y, untraced_cpu)
        with model.engine.serve(port=0) as server:
            start_cpu = time.process_time()
            timed_step(model, X, y)
            server.flush(timeout=120)
            traced_cpu.append(time.process_time() - start_cpu)
    return {
        "step_cpu_s_untraced": min(untraced_cpu),
        "step_cpu_s_served_no_viewer": min(traced_cpu),
        "slowdown_cpu": min(traced_cpu) / min(untraced_cpu),
    }


def run_for_runner(config) -> dict:
    """The figures `python -m benchmarks` shows, in its table's units."""
    steps = 1 if config.quick else config.repeat
    off = bench_off(steps)
    if config.quick:  # the smoke test: no server, no viewer process
        return {"off, CPU overhead %": 100 * off["tracing_off_overhead_cpu"]}
    alone = bench_no_viewer(steps)
    on = bench_on(steps)
    return {
        "off, CPU overhead %": 100 * off["tracing_off_overhead_cpu"],
        "on, no viewer, CPU slowdown x": alone["slowdown_cpu"],
        "on, 1 viewer, step slowdown x": on["slowdown"],
        "on, 1 viewer, CPU slowdown x": on["slowdown_cpu"],
        "on, 1 viewer, events/s delivered": on["delivered_events_per_s"],
        "on, 1 viewer, events dropped": on["dropped"],
        f"on, {BACK_TO_BACK} steps in a row, slowdown x": on["back_to_back_slowdown"],
    }


# --- tracing on, one viewer in another process -------------------------------------------------


BACK_TO_BACK = 5  # traced steps in a row, as a training loop runs them


def bench_on(steps: int) -> dict:
    model, X, y = moons_model()
    engine = model.engine
    train(model, X, y, 1)  # warm up
    untraced_cpu: list[float] = []
    untraced = [timed_step(model, X, y, untraced_cpu) for _ in range(steps)]
    server = engine.serve(port=0, queue_limit=10_000_000)  # this viewer must lose nothing
    viewer = subprocess.Popen(
        [sys.executable, "-c", VIEWER, server.ws_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    traced, traced_cpu, rates, events, lags = [], [], [], [], []
    try:
        assert viewer.stdout.readline().strip() == "ready"
        server.flush()
        for _ in range(steps):
            first = server.stats()["seq"]
            wall_start = time.time()
            start_cpu = time.process_time()
            traced.append(timed_step(model, X, y))
            server.flush(timeout=120)
            traced_cpu.append(time.process_time() - start_cpu)  # the server's sending too
            last = server.stats()["seq"]
            viewer.stdin.write(f"{last}\n")
            viewer.stdin.flush()
            count, seq, delivered_at = viewer.stdout.readline().split()
            delivered = last - first
            rates.append(delivered / (float(delivered_at) - wall_start))
            lags.append(float(delivered_at) - wall_start - traced[-1])
            events.append(delivered)
        # Training without a pause: BACK_TO_BACK steps in a row, then until the viewer has
        # everything. The drain cannot wait for a pause here: this is the steady state.
        untraced_run = sum(sorted(untraced)[:1]) * BACK_TO_BACK
        first = server.stats()["seq"]
        wall_start = time.time()
        train(model, X, y, BACK_TO_BACK)
        run_wall = time.time() - wall_start
        server.flush(timeout=120)
        last = server.stats()["seq"]
        viewer.stdin.write(f"{last}\n")
        viewer.stdin.flush()
        count, seq, delivered_at = viewer.stdout.readline().split()
        run_rate = (last - first) / (float(delivered_at) - wall_start)
        stats = server.stats()
    finally:
        viewer.kill()
        server.close()
    dropped = sum(v["dropped"] for v in stats["viewers"])
    return {
        "step_s_untraced": min(untraced),
        "step_s_traced": min(traced),
        "slowdown": min(traced) / min(untraced),
        "step_cpu_s_untraced": min(untraced_cpu),
        "step_cpu_s_traced": min(traced_cpu),
        "slowdown_cpu": min(traced_cpu) / min(untraced_cpu),
        "tracing_cpu_us_per_event": (min(traced_cpu) - min(untraced_cpu)) / max(events) * 1e6,
        "events_per_step": max(events),
        "delivered_events_per_s": max(rates),
        "delivery_lag_s": min(lags),
        "dropped": dropped,
        "back_to_back_slowdown": run_wall / untraced_run,
        "back_to_back_events_per_s": run_rate,
        "runs_untraced": untraced,
        "runs_traced": traced,
        "runs_rate": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration")
    parser.add_argument(
        "--json",
        default=str(Path(__file__).parent / "results" / "bench_tracing.json"),
        help="where to write the results",
    )
    args = parser.parse_args()
    off = bench_off(args.steps)
    on = bench_on(args.steps)
    rows = [
        ("moons step, tracer hooks removed", f"{off['step_s_without_hooks'] * 1e3:8.1f} ms", ""),
        (
            "moons step, tracing off",
            f"{off['step_s_tracing_off'] * 1e3:8.1f} ms",
            f"{off['tracing_off_overhead']:+.1%} (goal <= 3%)",
        ),
        (
            "  in CPU time",
            f"{off['step_cpu_s_tracing_off'] * 1e3:8.1f} ms",
            f"{off['tracing_off_overhead_cpu']:+.1%} of "
            f"{off['step_cpu_s_without_hooks'] * 1e3:.1f} ms without hooks",
        ),
        ("moons step, untraced (run 2)", f"{on['step_s_untraced'] * 1e3:8.1f} ms", ""),
        (
            "moons step, traced, 1 viewer",
            f"{on['step_s_traced'] * 1e3:8.1f} ms",
            f"x{on['slowdown']:.2f} slower",
        ),
        (
            "  in CPU time (all threads)",
            f"{on['step_cpu_s_traced'] * 1e3:8.1f} ms",
            f"x{on['slowdown_cpu']:.2f} of {on['step_cpu_s_untraced'] * 1e3:.1f} ms untraced",
        ),
        ("events per traced step", f"{on['events_per_step']:8d}", ""),
        (
            "tracing CPU per event",
            f"{on['tracing_cpu_us_per_event']:8.2f} us",
            f"(one core: {1e6 / on['tracing_cpu_us_per_event']:,.0f} events/s)",
        ),
        (
            "delivered to the viewer",
            f"{on['delivered_events_per_s']:8.0f} /s",
            "(goal >= 300,000/s)",
        ),
        ("viewer done after the step", f"{on['delivery_lag_s'] * 1e3:8.1f} ms", ""),
        ("events dropped", f"{on['dropped']:8d}", ""),
        (
            f"{BACK_TO_BACK} traced steps in a row",
            f"x{on['back_to_back_slowdown']:7.2f}",
            f"slower; {on['back_to_back_events_per_s']:,.0f} events/s delivered",
        ),
    ]
    print(f"{'':36} {'':>12}")
    for name, value, note in rows:
        print(f"{name:36} {value:>12}  {note}")
    result = {
        "benchmark": "tracing",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "steps": args.steps,
        "tracing_off": off,
        "tracing_on": on,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
