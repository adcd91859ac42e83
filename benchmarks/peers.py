"""The moons step against what a user would write instead: PyTorch tensors, and micrograd.

    python -m benchmarks.peers [--quick]

The same MLP(2, [16, 16, 1]) step (zero grads, forward over the points, mean hinge loss plus
1e-4 times the L2 norm, backward, SGD update) three ways (and opgraph's eager step, at the
first size, against micrograd): PyTorch's eager tensors (CPU, float64, one thread),
opgraph's batched step (benchmarks/batched.py: `Compiled.map` and `opgraph.optim.SGD`, the
parameters in a ParameterStore as `nn.MLP(stored=True)` keeps them; the "plain" column is
the same step on plain Values) and micrograd's scalar Values. Same starting weights; before
timing, one step of PyTorch and one of opgraph are checked to give the same loss and the
same gradients to 1e-12 relative (of the largest gradient).

Timed by batch size (100, 1,000 and 10,000 points) as CPU time of the process, the best of
several rounds, the libraries taking turns; each timed step ends with `gc.collect()`, so that
each library pays for its own garbage (micrograd's graphs are cyclic: without it, part of its
garbage is collected during another library's step); what is alive before timing is frozen
(`gc.freeze()`), so that a collection walks only what the steps made. micrograd runs only at
100 points (a step at 10,000 points takes minutes).

PyTorch is optional: `pip install torch --index-url https://download.pytorch.org/whl/cpu`
(it is not part of the `bench` extra). Without it the PyTorch rows say so and are skipped.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections.abc import Callable

from micrograd.engine import Value as MicroValue

from opgraph import Value

from .batched import batched_step, moons_model
from .moons import MLP, make_moons, step

torch = None  # PyTorch, imported by bench_peers (optional: its rows are skipped without it)

NO_TORCH = (
    "PyTorch not installed: rows skipped "
    "(pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)
LEARNING_RATE = 0.05


def torch_step(model: MLP, X: list, y: list) -> tuple[Callable[[], float], list]:
    """The moons step in PyTorch tensors (float64), from `model`'s weights; returns the step
    and its parameters (W1, b1, W2, b2, W3, b3)."""
    assert torch is not None
    params = []
    for layer in model.layers:
        weights = [[w.data for w in neuron.w] for neuron in layer]
        biases = [neuron.b.data for neuron in layer]
        params.append(torch.tensor(weights, dtype=torch.float64, requires_grad=True))
        params.append(torch.tensor(biases, dtype=torch.float64, requires_grad=True))
    inputs = torch.tensor(X, dtype=torch.float64)
    labels = torch.tensor(y, dtype=torch.float64)

    def run() -> float:
        for p in params:
            p.grad = None
        h = inputs
        for k in range(0, len(params), 2):
            h = h @ params[k].T + params[k + 1]
            if k < len(params) - 2:
                h = torch.relu(h)
        losses = torch.relu(1 + -labels * h[:, 0])
        reg = sum((p * p).sum() for p in params)
        total = losses.mean() + 1e-4 * reg
        total.backward()
        with torch.no_grad():
            for p in params:
                p -= LEARNING_RATE * p.grad
        return total.item()

    return run, params


def check_equal(points: int) -> str:
    """One step of PyTorch and one of opgraph's batched step from the same weights: the same
    loss and gradients to 1e-12 relative. Returns a line saying so, or raises."""
    X, y = make_moons(points)
    model = moons_model(stored=True)
    run_torch, tensors = torch_step(model, X, y)
    run_opgraph = batched_step(X, y, model=model)
    ours, theirs = run_opgraph(), run_torch()
    grads = [p.grad for p in model.parameters()]  # the step's gradients, left after it
    expected = []
    for k in range(0, len(tensors), 2):  # neuron by neuron: its weights, then its bias
        for w, b in zip(tensors[k].grad.tolist(), tensors[k + 1].grad.tolist(), strict=True):
            expected += [*w, b]
    scale = max(abs(g) for g in expected)
    worst = max(abs(a - b) for a, b in zip(grads, expected, strict=True)) / scale
    loss_error = abs(ours - theirs) / abs(theirs)
    if loss_error > 1e-12 or worst > 1e-12:
        raise AssertionError(
            f"PyTorch and opgraph differ: loss {theirs!r} against {ours!r}, gradients by "
            f"{worst:.1e} of the largest"
        )
    return f"checked equal: loss to {loss_error:.1e}, gradients to {worst:.1e} relative"


def best_ms(runners: dict[str, Callable[[], object]], rounds: int, steps: dict) -> dict:
    """Milliseconds per step, each step followed by gc.collect(); best round of each.

    The objects alive before timing (modules, models, data: PyTorch's alone cost a full
    collection tens of milliseconds) are frozen (`gc.freeze()`), so that a collection walks
    only what the steps made: each library's own garbage."""
    best = {name: math.inf for name in runners}
    for run in runners.values():
        run()
    gc.collect()
    gc.freeze()
    try:
        _rounds(runners, rounds, steps, best)
    finally:
        gc.unfreeze()
    return best


def _rounds(runners: dict, rounds: int, steps: dict, best: dict) -> None:
    for _ in range(rounds):
        for name, run in runners.items():
            run()
            gc.collect()
            start = time.process_time()
            for _ in range(steps[name]):
                run()
                gc.collect()
            best[name] = min(best[name], (time.process_time() - start) / steps[name] * 1e3)


def bench_peers(config) -> dict:
    """The moons step of PyTorch, opgraph batched and micrograd, by number of points."""
    global torch
    try:
        import torch
    except ImportError:
        torch = None
    results: dict = {}
    if torch is None:
        results["note"] = NO_TORCH
    else:
        torch.set_num_threads(1)
        results["torch"] = f"{torch.__version__}, float64, 1 thread"
        results["check"] = check_equal(config.peer_points[0])
    for points in config.peer_points:
        X, y = make_moons(points)
        runners: dict[str, Callable[[], object]] = {}
        if torch is not None:
            runners["pytorch"] = torch_step(MLP(Value, 2, [16, 16, 1]), X, y)[0]
        runners["opgraph"] = batched_step(X, y, stored=True)
        runners["plain"] = batched_step(X, y)
        if points == config.peer_points[0]:  # the scalar engines: a step takes 0.1 to 1 s
            micro, eager = MLP(MicroValue, 2, [16, 16, 1]), MLP(Value, 2, [16, 16, 1])
            runners["micrograd"] = lambda m=micro, X=X, y=y: step(m, MicroValue, X, y)
            runners["eager"] = lambda m=eager, X=X, y=y: step(m, Value, X, y)
        steps = {name: max(1, config.peer_steps * 100 // points) for name in runners}
        steps["micrograd"] = steps["eager"] = 1
        row = best_ms(runners, config.rounds, steps)
        if "pytorch" in row:
            row["vs_pytorch"] = row["pytorch"] / row["opgraph"]
            row["plain_vs_pytorch"] = row["pytorch"] / row["plain"]
        if "micrograd" in row:
            row["vs_micrograd"] = row["micrograd"] / row["opgraph"]
            row["eager_vs_micrograd"] = row["micrograd"] / row["eager"]
        results[str(points)] = row
    return results


def table(results: dict) -> str:
    """The rows of the peers table."""
    lines = [f"{'moons step (gc.collect() in each)':<34}{'pytorch':>12}{'opgraph':>12}"]
    lines[0] += f"{'plain':>12}{'micrograd':>12}{'vs pytorch':>12}{'vs micrograd':>14}"
    for note in ("torch", "check", "note"):
        if note in results:
            lines.append(f"  {note}: {results[note]}")
    for points, row in results.items():
        if not isinstance(row, dict):
            continue
        if "eager" in row:
            lines.append(
                f"  opgraph eager (no compile), {int(points):,} points: {row['eager']:,.1f} ms, "
                f"{row['eager_vs_micrograd']:.1f}x micrograd"
            )

        def cell(key: str, digits: int = 3, suffix: str = "", row=row) -> str:
            return f"{row[key]:,.{digits}f}{suffix}" if key in row else "-"

        lines.append(
            f"{f'{int(points):,} points, ms':<34}{cell('pytorch'):>12}{cell('opgraph'):>12}"
            f"{cell('plain'):>12}{cell('micrograd', 1):>12}{cell('vs_pytorch', 2, 'x'):>12}"
            f"{cell('vs_micrograd', 0, 'x'):>14}"
        )
    return "\n".join(lines)


def plot(results: dict, width: int = 48) -> str:
    """Step time by number of points as bars on a log scale, PyTorch's above opgraph's."""
    rows = [
        (points, name, row[name])
        for points, row in results.items()
        if isinstance(row, dict)
        for name in ("pytorch", "opgraph")
        if name in row
    ]
    if not rows:
        return ""
    low = math.log10(min(ms for *_, ms in rows)) - 0.1
    high = math.log10(max(ms for *_, ms in rows))
    lines = ["ms per step, log scale"]
    for points, name, ms in rows:
        bar = "#" * max(1, round(width * (math.log10(ms) - low) / (high - low)))
        label = f"{int(points):,} points" if name == "pytorch" or len(rows) < 2 else ""
        lines.append(f"{label:>14} {name:<8} {bar} {ms:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, best kept (3)")
    config = parser.parse_args(argv)
    if config.quick:
        config.peer_points, config.peer_steps, config.rounds = [6, 60], 2, 1
    else:
        config.peer_points, config.peer_steps = [100, 1_000, 10_000], 40
    results = bench_peers(config)
    print(table(results))
    print(plot(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
