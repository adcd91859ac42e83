"""Rogozhnikov's "Fastest Autograd in the West" task, on opgraph's scalar Values.

    python -m benchmarks.rogozhnikov [--quick]

The task (https://arogozhnikov.github.io/2023/12/28/fastest-autograd.html): a graph of
10,000 scalar operations over 100 starting variables, cycling through softplus of the node 10
back, the sum of `nodes[-30:-10:5]`, the product of the nodes 20 and 10 back, and the softmax
of the last 4 nodes; forward and backward of the last node, 10,000 times. Here softplus is
`log(1 + exp(x))` and softmax `exp(x_i) / sum(exp(x))` written with opgraph's ops (a few
nodes each). Timed three ways: eager (the graph built and differentiated each time),
compiled (`opgraph.compile`: recorded once, replayed), and batched (`Compiled.map`: the
10,000 runs as 10,000 samples of one batch, with different starting values each).

Each way runs fewer than 10,000 times, and its time is extrapolated to 10,000 runs (said so
in the table). The post's own figures (an M1 laptop) are quoted as published, not remeasured.
"""

from __future__ import annotations

import argparse
import sys
import time

import opgraph
from opgraph import Value

RUNS = 10_000  # the task's forward and backward passes
OPERATIONS = 10_000
START = 100  # starting variables: 0.0, 1.0, ..., 99.0 (the post's torch.arange(100))

# As published in the post (10k ops x 10k iterations, M1 macbook), for comparison only. The
# PyTorch figure is the post's estimate from 100 iterations (11.3 s).
PUBLISHED = {
    "PyTorch eager (estimate)": 1130.0,
    "Python tape (as quoted in issue 21)": 312.0,
    "numba (as quoted in issue 21)": 41.0,
    "C (as quoted in issue 21)": 0.99,
}


def softplus(x: Value) -> Value:
    return (x.exp() + 1.0).log()


def run_graph(start: list, operations: int) -> Value:
    """The task's graph over the starting Values; returns its last node."""
    nodes = list(start)
    for op in range(operations):
        match op % 4:
            case 0:
                nodes.append(softplus(nodes[-10]))
            case 1:
                nodes.append(sum(nodes[-30:-10:5]))
            case 2:
                nodes.append(nodes[-20] * nodes[-10])
            case _:
                exps = [x.exp() for x in nodes[-4:]]
                total = exps[0] + exps[1] + exps[2] + exps[3]
                nodes.extend(e / total for e in exps)
    return nodes[-1]


def seconds(fn, runs: int) -> float:
    """CPU seconds per run of fn, over `runs` runs (after one warm-up run)."""
    fn()
    start = time.process_time()
    for _ in range(runs):
        fn()
    return (time.process_time() - start) / runs


def bench_rogozhnikov(config) -> dict:
    """Seconds for the task's 10,000 forward and backward passes, extrapolated."""
    import numpy as np

    operations, runs = config.rog_operations, config.rog_runs
    start = [float(i) for i in range(START)]
    results: dict = {"operations": operations, "published_s": PUBLISHED}

    def eager() -> None:
        leaves = [Value(x) for x in start]
        run_graph(leaves, operations).backward()

    compile_start = time.process_time()
    compiled = opgraph.compile(lambda xs: run_graph(xs, operations), start)
    results["compile_s"] = time.process_time() - compile_start
    results["nodes"] = len(compiled.nodes)

    def replay() -> None:
        compiled(start)
        compiled.backward()

    batch = np.tile(np.array(start), (config.rog_batch, 1))
    batch += np.random.default_rng(0).uniform(-0.1, 0.1, batch.shape)

    def batched() -> None:
        compiled.map(batch)
        compiled.backward()

    results["eager_s"] = seconds(eager, runs["eager"]) * RUNS
    results["compiled_s"] = seconds(replay, runs["compiled"]) * RUNS
    results["batched_s"] = seconds(batched, runs["batched"]) / config.rog_batch * RUNS
    results["runs"] = {**runs, "batched": f"{runs['batched']} x {config.rog_batch} samples"}
    return results


def table(results: dict) -> str:
    ran = results["runs"]
    lines = [
        f"Rogozhnikov's task: {results['operations']:,} ops ({results['nodes']:,} opgraph "
        f"nodes) x {RUNS:,} forward+backward, s (extrapolated from fewer runs)",
        f"  eager (timed {ran['eager']} runs)        {results['eager_s']:>12,.1f}",
        f"  compiled (timed {ran['compiled']} runs)     {results['compiled_s']:>12,.1f}"
        f"   + compile {results['compile_s']:.1f} s once",
        f"  batched (timed {ran['batched']})  {results['batched_s']:>10,.1f}",
        "  published (M1, not remeasured): "
        + "; ".join(f"{k} {v:,g} s" for k, v in results["published_s"].items()),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rogozhnikov", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    config = parser.parse_args(argv)
    configure(config)
    print(table(bench_rogozhnikov(config)))
    return 0


def configure(config) -> None:
    if config.quick:
        config.rog_operations, config.rog_batch = 200, 16
        config.rog_runs = {"eager": 1, "compiled": 1, "batched": 1}
    else:
        config.rog_operations, config.rog_batch = OPERATIONS, 256
        config.rog_runs = {"eager": 3, "compiled": 5, "batched": 2}


if __name__ == "__main__":
    sys.exit(main())
