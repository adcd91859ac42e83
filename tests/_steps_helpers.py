"""Hand-made training streams with `structure` and `step` maps (docs/protocol.md, "Steps"),
as a tracer of a training loop sends them, for the server's tests of steps."""

from __future__ import annotations

import struct
import textwrap
from typing import Any

import msgpack


def training_script(steps: int, start: float = 0.1) -> str:
    """A training loop that knows nothing of tracing (OPGRAPH_TRACE publishes it): `steps`
    steps of three tanh neurons, inputs from `start`; prints its losses as JSON. With an
    argument, it waits for a line on stdin after training (a served trace ends with it)."""
    return textwrap.dedent(
        f"""
        import json, sys
        from opgraph import Value

        w = [Value(0.3 * k - 0.4, label=f"w{{k}}") for k in range(3)]
        x = [Value({start} + k, label=f"x{{k}}") for k in range(3)]
        losses = []
        for _ in range({steps}):
            total = sum(((wk * xk).tanh() for wk, xk in zip(w, x)), Value(0.0))
            loss = total * total
            loss.backward()
            losses.append(loss.data)
            for p in w:
                p.data -= 0.05 * p.grad
                p.grad = 0.0
        print(json.dumps(losses), flush=True)
        if len(sys.argv) > 1:
            sys.stdin.readline()
        """
    )


def u8(*ids: int) -> bytes:
    return struct.pack(f"<{len(ids)}Q", *ids)


def u4(*numbers: int) -> bytes:
    return struct.pack(f"<{len(numbers)}I", *numbers)


def f8(*numbers: float) -> bytes:
    return struct.pack(f"<{len(numbers)}d", *numbers)


def floats(data: bytes, code: str = "d") -> list[float]:
    return list(struct.unpack(f"<{len(data) // struct.calcsize(code)}{code}", data))


def forward(id_: int, op: str | None, parents: list[int], data: float, label: str) -> dict:
    return {
        "type": "forward",
        "id": id_,
        "op": op,
        "parents": parents,
        "data": data,
        "label": label,
    }


def pack(*events: dict) -> bytes:
    return b"".join(msgpack.packb(e) for e in events)


class Training:
    """A model `loss = (w * x) ** 2` by `mul`s, trained by gradient descent on w: the
    parameter w (id 0) and the datum x (id 1) are the inputs, each step makes the nodes
    a = w * x and loss = a * a. Step 1 is sent as events, then `structure` and `step`; every
    later step as one `step` map. `first_id` and `gap` shape the ids (a gap: ids the engine
    used for nodes it did not trace)."""

    def __init__(self, w: float = 0.5, x: float = 1.5, lr: float = 0.1, gap: int = 0):
        self.w, self.x, self.lr, self.gap = w, x, lr, gap
        self.step = 0
        self.next_id = 2
        self.seen: list[dict[str, Any]] = []  # per step: the numbers the script saw

    def numbers(self) -> tuple[list[float], list[float]]:
        """(data, grad) of this step: nodes a, loss, then inputs w, x."""
        w, x = self.w, self.x
        a = w * x
        loss = a * a
        da = 2 * a
        return [a, loss, w, x], [da, 1.0, da * x, da * w]

    def offsets(self) -> list[int]:
        return [0, 1 + self.gap]

    def next_step(self) -> list[dict[str, Any]]:
        """The maps of the next step (without seq), and the update of w after it."""
        self.step += 1
        data, grad = self.numbers()
        first = self.next_id
        ids = [first + o for o in self.offsets()]
        self.next_id = ids[-1] + 1
        self.seen.append({"step": self.step, "ids": ids, "data": data, "grad": grad})
        maps: list[dict[str, Any]] = []
        if self.step == 1:
            a, loss = ids
            maps += [
                {
                    "type": "forward",
                    "id": 0,
                    "op": None,
                    "parents": [],
                    "data": data[2],
                    "label": "w",
                },
                {
                    "type": "forward",
                    "id": 1,
                    "op": None,
                    "parents": [],
                    "data": data[3],
                    "label": "x",
                },
                {
                    "type": "forward",
                    "id": a,
                    "op": "mul",
                    "parents": [0, 1],
                    "data": data[0],
                    "label": "",
                },
                {
                    "type": "forward",
                    "id": loss,
                    "op": "mul",
                    "parents": [a, a],
                    "data": data[1],
                    "label": "loss",
                },
                {"type": "backward_begin", "root": loss, "pass": 1},
                {"type": "backward", "id": loss, "grad": grad[1]},
                {"type": "backward", "id": a, "grad": grad[0]},
                {"type": "backward", "id": 0, "grad": grad[2]},
                {"type": "backward", "id": 1, "grad": grad[3]},
                {"type": "backward_end", "root": loss, "pass": 1},
                self.structure_map(ids),
            ]
        maps.append(
            {
                "type": "step",
                "step": self.step,
                "structure": 1,
                "first": first,
                "pass": self.step,
                "data": f8(*data),
                "grad": f8(*grad),
            }
        )
        self.w -= self.lr * grad[2]
        return maps

    def structure_map(self, ids: list[int]) -> dict[str, Any]:
        return {
            "type": "structure",
            "structure": 1,
            "ids": u8(*ids),
            "offsets": u4(*self.offsets()),
            "inputs": u8(0, 1),
            "order": u4(1, 0, 2, 3),
            "root": 1,
        }

    def steps(self, count: int) -> list[dict[str, Any]]:
        return [m for _ in range(count) for m in self.next_step()]
