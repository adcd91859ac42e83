"""The backward pass of a git revision against the working tree's, in one process.

    python -m benchmarks.paired [REV] [--rounds N]

Two runs of `python -m benchmarks` are minutes apart, and on a shared machine the load changes
in between by more than most changes to the engine gain. This loads `opgraph/reverse.py` as
it is at REV (default HEAD) next to the current one, and times both on the same moons graphs,
taking turns round by round: the backward pass per node, and the eager moons step (with the
collector on, as users run, and off). It prints each one's best round and in how many rounds
the current code was the faster. Only reverse.py is swapped: both use the current Value and
ops.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

from opgraph import Value
from opgraph.value import Above

from .moons import MLP, SEED, loss, make_moons, step
from .run import best_time

ROOT = Path(__file__).resolve().parent.parent


def load_backward(rev: str):
    """opgraph/reverse.py as it is at `rev` (opgraph/backward.py before it was renamed), as a
    module of the opgraph package."""
    for name in ("reverse", "backward"):
        shown = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:opgraph/{name}.py"],
            capture_output=True,
            text=True,
        )
        if shown.returncode == 0:
            break
    shown.check_returncode()
    source = shown.stdout
    path = Path(tempfile.mkdtemp()) / "backward_then.py"
    path.write_text(source)
    # A name inside the package, so that its relative imports (`from .errors ...`) resolve.
    spec = importlib.util.spec_from_file_location("opgraph._backward_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paired", description=__doc__)
    parser.add_argument("rev", nargs="?", default="HEAD", help="git revision (HEAD)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (7)")
    parser.add_argument("--points", type=int, default=100, help="moons points (100)")
    config = parser.parse_args(argv)

    current = importlib.import_module("opgraph.reverse")
    lent = Above.backward, Above.zero_grad, Above.step
    versions = {config.rev: load_backward(config.rev), "now": current}
    Above.backward, Above.zero_grad, Above.step = lent  # (a loaded reverse.py sets its own)
    X, y = make_moons(config.points, noise=0.1, seed=SEED)
    models = {name: MLP(Value, 2, [16, 16, 1]) for name in versions}
    original = current.backward

    def backward_ns(name, collector):
        root = loss(models[name], Value, X, y)
        nodes = len(current.topological_order(root))
        return best_time(lambda: versions[name].backward(root), 1, collector) / nodes * 1e9

    def step_ms(name, collector, steps=4):
        def training_loop():
            for _ in range(steps):
                step(models[name], Value, X, y)

        # Value.backward() calls value.Above.backward (set by reverse.py): swap it there.
        Above.backward = versions[name].backward
        try:
            step(models[name], Value, X, y)  # warm-up, leaving its garbage as a loop does
            return best_time(training_loop, 1, collector) / steps * 1e3
        finally:
            Above.backward = original

    figures = [
        ("backward, gc on", "ns/node", lambda n: backward_ns(n, True)),
        ("backward, gc off", "ns/node", lambda n: backward_ns(n, False)),
        ("moons step, gc on", "ms", lambda n: step_ms(n, True)),
        ("moons step, gc off", "ms", lambda n: step_ms(n, False)),
    ]
    print(f"{'':<22}{config.rev:>14}{'now':>14}   now faster in")
    for label, unit, measure in figures:
        times = {name: [] for name in versions}
        for _ in range(config.rounds):
            for name in versions:
                times[name].append(measure(name))
        then, now = times[config.rev], times["now"]
        wins = sum(b < a for a, b in zip(then, now, strict=True))
        print(
            f"{label:<22}{min(then):>14,.1f}{min(now):>14,.1f}   "
            f"{wins} of {config.rounds} rounds  {unit}, best round"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
