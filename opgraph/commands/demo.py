"""`opgraph demo`: train micrograd's moons MLP (opgraph/demo.py) and draw a neuron's graph;
with `--serve`, while serving the training's live trace.

One training step of the demo builds about 65,000 nodes (forward and backward are about
130,000 events). `--serve` traces every step: the first goes out as events, each later one,
with the same graph, as one `step` event of its numbers (docs/protocol.md, "Steps").
`--trace-steps` chooses fewer. Between traced steps tracing is paused, and the parameters'
new values are announced (`data` events) when the next traced step uses them. After
training the server keeps serving the traced steps' graphs until interrupted.

The trace is served through `engine.serve()`: this module does not import opgraph.server.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opgraph.demo import (
    MLP,
    SEED,
    ProgressBar,
    Step,
    batched_loss,
    compiled_loss,
    draw_neuron,
    evaluate,
    loss,
    make_moons,
    train,
)
from opgraph.errors import GraphvizNotFoundError, ServerError

from . import add_history_steps, positive_int, stop_on_sigterm, wait_until_interrupted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=positive_int, default=100, help="training steps (100)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of data and weights ({SEED})")
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="directory for the neuron's SVG (.)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="record the step's graph once and replay it compiled (opgraph.compile)",
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help="compile one point's loss and run it over all points at once with numpy "
        "(Compiled.map; needs opgraph[numpy])",
    )
    add_serve_arguments(parser)


def _have_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def make_out_dir(out: Path) -> bool:
    """Create --out now, not after a minute of training; False (and says why) if it cannot."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"opgraph demo: --out {out}: cannot create the directory: {exc}", file=sys.stderr)
        return False
    return True


def headline(model: MLP, X: Sequence[Sequence[float]], steps: int, seed: int) -> str:
    return (
        f"training MLP(2, [16, 16, 1]) ({len(model.parameters())} parameters) on {len(X)} "
        f"two-moons points for {steps} steps (seed {seed})"
    )


def report_drawing(model: MLP, X: Sequence[Sequence[float]], out: Path) -> None:
    """Draw the first neuron's graph to out/neuron.svg and say where (or why not)."""
    try:
        path = draw_neuron(model, X, out / "neuron.svg")
    except GraphvizNotFoundError as exc:
        print(f"no drawing of a neuron's graph: {exc}")
    else:
        print(f"drew the graph of neuron L0.N0: {path.resolve()}")


def run(args: argparse.Namespace) -> int:
    if args.batch and (args.compile or args.serve):
        print(
            "opgraph demo: --batch replays the step compiled, over the whole batch: use it "
            "alone, not with --compile or --serve",
            file=sys.stderr,
        )
        return 2
    if args.batch and not _have_numpy():
        from opgraph.compiler import numpy_missing

        print(f"opgraph demo: {numpy_missing('--batch runs the batch')}", file=sys.stderr)
        return 2
    if args.serve:
        if args.compile:
            print(
                "opgraph demo: --compile replays the step without building Values, so there "
                "would be nothing to trace; use --serve or --compile, not both",
                file=sys.stderr,
            )
            return 2
        return run_served(args)
    if not make_out_dir(args.out):
        return 2
    X, y = make_moons(100, noise=0.1, seed=args.seed)
    model = MLP(2, [16, 16, 1], rng=random.Random(args.seed))
    print(headline(model, X, args.steps, args.seed))
    started = time.perf_counter()
    loss_fn = loss
    if args.compile:
        loss_fn = compiled_loss(model, X, y)
        seconds = time.perf_counter() - started
        print(f"compiled the training step in {seconds:.1f}s: {loss_fn.compiled}")
    if args.batch:
        loss_fn = batched_loss(model, X, y)
        seconds = time.perf_counter() - started
        print(f"compiled the per-sample loss in {seconds:.1f}s: {loss_fn.compiled}")
    train(model, X, y, args.steps, on_step=ProgressBar(args.steps), loss_fn=loss_fn)
    final_loss, accuracy = evaluate(model, X, y)
    print(f"trained in {time.perf_counter() - started:.1f}s")
    print(f"final loss {final_loss:.4f}, accuracy {accuracy:.0%}")
    report_drawing(model, X, args.out)
    return 0


# --- `opgraph demo --serve` -------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `opgraph demo --serve`."""
    group = parser.add_argument_group("live trace")
    group.add_argument("--serve", action="store_true", help="serve the training's live trace")
    group.add_argument(
        "--trace-steps",
        default="all",
        help="steps to trace: comma list of step numbers (from 1), 'first', 'last', "
        "or 'all' (default: all)",
    )
    group.add_argument("--port", type=int, default=8765, help="port of the trace server (8765)")
    group.add_argument("--record", metavar="FILE", help="also record the trace (.ogtrace)")
    add_history_steps(group)
    group.add_argument(
        "--no-wait", action="store_true", help="exit after training instead of serving on"
    )


def traced_steps(spec: str, steps: int) -> set[int]:
    """0-based step indexes from a --trace-steps value like 'first,10,last' or 'all'."""
    chosen: set[int] = set()
    for part in (p.strip().lower() for p in spec.split(",") if p.strip()):
        if part == "all":
            return set(range(steps))
        if part == "first":
            chosen.add(0)
        elif part == "last":
            chosen.add(steps - 1)
        elif part.isdigit() and 1 <= int(part) <= steps:
            chosen.add(int(part) - 1)
        else:
            raise ValueError(f"--trace-steps: {part!r} is not first, last, all or 1..{steps}")
    return chosen


def describe(chosen: set[int], steps: int) -> str:
    if len(chosen) == steps:
        return f"all {steps} steps"
    numbers = ", ".join(str(k + 1) for k in sorted(chosen))
    return f"step{'s' if len(chosen) > 1 else ''} {numbers} of {steps}" if chosen else "no step"


def history_option(args: argparse.Namespace) -> dict[str, Any]:
    """`--history-steps` as `serve()`'s option, only when given: the server's own default
    (opgraph.server.steps.HISTORY_STEPS) stays the one number."""
    return {} if args.history_steps is None else {"history_steps": args.history_steps}


def run_served(args: argparse.Namespace) -> int:
    stop_on_sigterm()
    try:
        chosen = traced_steps(args.trace_steps, args.steps)
    except ValueError as exc:
        print(f"opgraph demo: {exc}", file=sys.stderr)
        return 2
    if not make_out_dir(args.out):
        return 2
    X, y = make_moons(100, noise=0.1, seed=args.seed)
    model = MLP(2, [16, 16, 1], rng=random.Random(args.seed))
    try:
        server = model.engine.serve(port=args.port, record=args.record, **history_option(args))
    except ServerError as exc:
        hint = " (choose another port with --port)" if "cannot serve" in str(exc) else ""
        print(f"opgraph demo: {exc}{hint}", file=sys.stderr)
        return 1
    with server:
        print(headline(model, X, args.steps, args.seed))
        print(f"viewer: {server.url}", flush=True)
        print(
            f"tracing {describe(chosen, args.steps)} (one step is about 65,000 nodes, sent "
            f"in full once, then as its numbers; choose with --trace-steps)",
            flush=True,
        )
        progress = ProgressBar(args.steps)

        def on_step(step: Step) -> None:
            progress(step)
            if step.index + 1 in chosen:  # the next step is traced
                server.resume()
            else:
                server.pause()

        if 0 not in chosen:
            server.pause()
        started = time.perf_counter()
        try:
            train(model, X, y, args.steps, on_step=on_step)
        except KeyboardInterrupt:
            print("\ntraining interrupted", file=sys.stderr)
            return 130
        final_loss, accuracy = evaluate(model, X, y)
        print(f"trained in {time.perf_counter() - started:.1f}s")
        print(f"final loss {final_loss:.4f}, accuracy {accuracy:.0%}", flush=True)
        server.pause()  # the drawing's small graph is not part of the traced steps
        report_drawing(model, X, args.out)
        server.resume()
        server.touch(model.parameters())  # the viewer sees the trained weights
        server.flush(timeout=30)
        if args.no_wait:
            return 0
        print(f"serving the trace at {server.url} until interrupted (Ctrl-C)", flush=True)
        wait_until_interrupted(server)
    return 0
