"""The cost of `grad` and `jvp` per node, beside `backward`, on the moons loss graph.

    python -m benchmarks.higher [--rounds N] [--points N]

Each figure is the best round, in ns per node of the loss graph, the collector off. The
passes take turns round by round, so that the load of a shared machine falls on all alike.
`grad(create_graph=True)` builds a graph of the derivatives: its figure includes building
those nodes. `jvp` is timed on its forward sweep alone (the time to build the graph, which
any mode needs, is subtracted).
"""

from __future__ import annotations

import argparse
import math

from opgraph import Value, grad, jvp, topological_order

from .moons import MLP, SEED, loss, make_moons
from .run import best_time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.higher", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure (5)")
    parser.add_argument("--points", type=int, default=100, help="moons points (100)")
    config = parser.parse_args(argv)

    X, y = make_moons(config.points, noise=0.1, seed=SEED)
    model = MLP(Value, 2, [16, 16, 1])
    params = model.parameters()
    root = loss(model, Value, X, y)
    nodes = len(topological_order(root))
    data = [p.data for p in params]
    tangents = [1.0] * len(params)

    def with_params(*xs):  # the loss as a function of the parameters, for jvp
        _use_parameters(model, xs)
        return loss(model, Value, X, y)

    def build():
        _use_parameters(model, params)
        return loss(model, Value, X, y)

    passes = {
        "backward": lambda: root.backward(),
        "grad": lambda: grad(root, params),
        "grad, create_graph": lambda: grad(root, params, create_graph=True),
        "build the graph": build,
        "jvp, with building": lambda: jvp(with_params, data, tangents),
    }
    best = dict.fromkeys(passes, math.inf)
    for _ in range(config.rounds):
        for name, run in passes.items():
            best[name] = min(best[name], best_time(run, 1, collector=False))
    per_node = {name: seconds / nodes * 1e9 for name, seconds in best.items()}
    per_node["jvp"] = per_node.pop("jvp, with building") - per_node["build the graph"]
    print(f"moons loss graph: {nodes} nodes; best of {config.rounds} rounds, ns per node")
    for name in ("backward", "grad", "grad, create_graph", "jvp"):
        ratio = per_node[name] / per_node["backward"]
        print(f"{name:<22}{per_node[name]:>10.1f}  {ratio:>6.2f}x backward")
    return 0


def _use_parameters(model: MLP, values) -> None:
    """Make `values`, in order, the model's parameters."""
    it = iter(values)
    for layer in model.layers:
        for neuron in layer:
            neuron.w = [next(it) for _ in neuron.w]
            neuron.b = next(it)


if __name__ == "__main__":
    raise SystemExit(main())
