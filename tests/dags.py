"""Random expression DAGs for property tests (hypothesis), runnable with any Value class.

A program is a list of leaf numbers and a list of steps `(op, args)`, each arg the index of
an earlier node (a leaf or an earlier step), so nodes are reused freely: `x * x`, a node
feeding three others. The same program can be run with opgraph's Value and micrograd's,
and re-run at shifted leaf values for finite differences.

Ops that have a restricted domain get an operand kept inside it (`b * b + 1` as a
divisor, `a * a + 0.5` under a log), so every program is differentiable wherever its relu
inputs stay away from 0; `run` records those inputs so a test can require that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st

# name -> (arity, function of Values). Every form of every built-in op appears: operators,
# reflected operators with a plain number, methods, pow with a constant and a Value exponent.
MICROGRAD_OPS: dict[str, tuple[int, Callable]] = {
    "add": (2, lambda a, b: a + b),
    "sub": (2, lambda a, b: a - b),
    "mul": (2, lambda a, b: a * b),
    "div": (2, lambda a, b: a / (b * b + 1)),
    "neg": (1, lambda a: -a),
    "square": (1, lambda a: a**2),
    "cube": (1, lambda a: a**3),
    "reciprocal": (1, lambda a: (a * a + 0.5) ** -1),
    "add_number": (1, lambda a: a + 1.5),
    "radd": (1, lambda a: 2 + a),
    "rsub": (1, lambda a: 1 - a),
    "rmul": (1, lambda a: 3 * a),
    "rdiv": (1, lambda a: 2 / (a * a + 1)),
    "sub_number": (1, lambda a: a - 0.25),
    "div_number": (1, lambda a: a / 4),
    "relu": (1, lambda a: a.relu()),
}

OPS: dict[str, tuple[int, Callable]] = {
    **MICROGRAD_OPS,
    "sqrt": (1, lambda a: (a * a + 0.5) ** 0.5),
    "pow_value": (2, lambda a, b: (a * a + 0.5) ** b.tanh()),
    "rpow": (1, lambda a: 1.5 ** a.tanh()),
    "exp": (1, lambda a: a.exp()),
    "log": (1, lambda a: (a * a + 0.5).log()),
    "tanh": (1, lambda a: a.tanh()),
    "sigmoid": (1, lambda a: a.sigmoid()),
}


@dataclass
class Program:
    leaves: list[float]
    steps: list[tuple[str, tuple[int, ...]]]

    def __repr__(self) -> str:
        lines = [f"v{i} = {x!r}" for i, x in enumerate(self.leaves)]
        n = len(self.leaves)
        for k, (op, args) in enumerate(self.steps):
            lines.append(f"v{n + k} = {op}({', '.join(f'v{a}' for a in args)})")
        return "Program:\n  " + "\n  ".join(lines) + "\n  output = sum of the steps"


@dataclass
class Run:
    nodes: list  # leaves, then one node per step
    output: object  # the sum of every step's node: every node reaches the output
    relu_inputs: list[float] = field(default_factory=list)


def run(program: Program, make: Callable, ops=OPS, leaves: Sequence[float] | None = None) -> Run:
    """Build the program's graph with `make(number) -> Value`."""
    nodes = [make(x) for x in (program.leaves if leaves is None else leaves)]
    relu_inputs = []
    for op, args in program.steps:
        operands = [nodes[i] for i in args]
        if op == "relu":
            relu_inputs.append(operands[0].data)
        nodes.append(ops[op][1](*operands))
    output = sum(nodes[len(program.leaves) :])  # starts as 0 + node: the reflected add
    return Run(nodes, output, relu_inputs)


@st.composite
def programs(draw, ops=OPS, max_leaves: int = 4, max_steps: int = 12) -> Program:
    leaves = draw(
        st.lists(st.floats(-2.0, 2.0, allow_subnormal=False), min_size=1, max_size=max_leaves)
    )
    steps = []
    for k in range(draw(st.integers(1, max_steps))):
        available = len(leaves) + k
        name = draw(st.sampled_from(sorted(ops)))
        arity = ops[name][0]
        # Favour recent nodes (deep graphs) but reach back to any node (reuse).
        index = st.integers(0, available - 1) | st.integers(max(0, available - 2), available - 1)
        steps.append((name, tuple(draw(index) for _ in range(arity))))
    return Program(leaves, steps)
