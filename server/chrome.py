"""A recording as Chrome trace-event JSON (`opgraph export --chrome`, opgraph/commands).

Perfetto (ui.perfetto.dev) and chrome://tracing open the result. Three tracks:
"forward" has one slice per node, from the previous event to the node's creation (the time
the op took, Python overhead included; at most 100 us, as a longer gap is the program's own
work); "backward" has one slice per pass and, nested in
it, one slice per node's backward step, until the next step starts; "updates" has instant
events for `data` and `label` changes. Training steps (`step` maps) become counter tracks
("ph": "C"): "loss" (the root's data), and one per input of the step's structure (a
parameter: its data and grad); a step that came as one map has its pass as a slice of no
duration on "backward" (its backward steps were not sent one by one). Times are the
events' `t` (microseconds).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .events import reals, u4s, u8s
from .recording import Recording

PID = 1
MAX_OP_US = 100  # a longer gap before a node is the program's own work, not the op
FORWARD_TID, BACKWARD_TID, UPDATES_TID = 1, 2, 3


def chrome_trace(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The Chrome trace-event document for a stream of protocol maps (checked ones, as a
    `Recording` yields: a missing field becomes null rather than an error)."""
    out: list[dict[str, Any]] = []
    engine = "opgraph"
    ops: dict[int | None, str] = {}  # node id (None if missing) -> op name, for backward steps
    previous_t: float = 0
    open_step: dict[str, Any] | None = None  # the backward step slice waiting for its end
    open_pass: dict[str, Any] | None = None
    labels: dict[int, str] = {}  # node id -> its label, for the names of parameters' tracks
    # structure number -> (n, inputs, root index, the root's id relative to a step's first)
    structures: dict[int, tuple[int, list[int], int, int | None]] = {}
    stepped: set[int] = set()  # structures whose defining step came (its pass as events)

    def close_step(t: float) -> None:
        nonlocal open_step
        if open_step is not None:
            open_step["dur"] = max(t - open_step["ts"], 0)
            open_step = None

    for event in events:
        kind = event.get("type")
        t = event.get("t")
        t = t if isinstance(t, int | float) else previous_t
        if kind == "hello":
            engine = str(event.get("engine", engine))
            continue
        if kind == "forward":
            op, id_ = event.get("op"), event.get("id")
            ops[id_] = op or "leaf"
            if event.get("label") and id_ is not None:
                labels[id_] = event["label"]
            start = max(previous_t, t - MAX_OP_US)
            out.append(
                _slice(
                    op or "leaf",
                    "forward",
                    start,
                    t - start,
                    FORWARD_TID,
                    id=id_,
                    label=event.get("label", ""),
                    data=event.get("data"),
                    parents=event.get("parents", []),
                )
            )
        elif kind == "backward_begin":
            open_pass = _slice(
                f"backward pass {event.get('pass')}",
                "backward",
                t,
                0,
                BACKWARD_TID,
                root=event.get("root"),
            )
            out.append(open_pass)
        elif kind == "backward":
            close_step(t)
            id_ = event.get("id")
            open_step = _slice(
                ops.get(id_, "node"),
                "backward step",
                t,
                0,
                BACKWARD_TID,
                id=id_,
                grad=event.get("grad"),
            )
            out.append(open_step)
        elif kind == "backward_end":
            close_step(t)
            if open_pass is not None:
                open_pass["dur"] = max(t - open_pass["ts"], 0)
                open_pass = None
        elif kind == "structure":
            n, inputs, root = len(event["ids"]) // 8, list(u8s(event["inputs"])), event["root"]
            offset = u4s(event["offsets"])[root] if root < n else None
            structures[event["structure"]] = (n, inputs, root, offset)
        elif kind == "step" and event.get("structure") in structures:
            number = event["structure"]
            n, inputs, root, offset = structures[number]
            if number in stepped:  # a step that came as one map stands for its pass
                root_id = event.get("first", 0) + offset if offset is not None else inputs[root - n]
                name = f"backward pass {event.get('pass')}"
                out.append(_slice(name, "backward", t, 0, BACKWARD_TID, root=root_id))
            stepped.add(number)
            out.extend(_step_counters(event, t, n, inputs, root, labels))
        elif kind in ("data", "label"):
            out.append(
                {
                    "name": f"{kind} #{event.get('id')}",
                    "cat": kind,
                    "ph": "i",
                    "s": "t",
                    "ts": t,
                    "pid": PID,
                    "tid": UPDATES_TID,
                    "args": {k: event.get(k) for k in ("id", kind)},
                }
            )
        previous_t = t
    close_step(previous_t)
    names = {FORWARD_TID: "forward", BACKWARD_TID: "backward", UPDATES_TID: "updates"}
    meta = [{"name": "process_name", "ph": "M", "pid": PID, "args": {"name": f"opgraph {engine}"}}]
    meta += [
        {"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": name}}
        for tid, name in names.items()
    ]
    return {"traceEvents": meta + out, "displayTimeUnit": "ms"}


def _step_counters(
    step: dict[str, Any], t: float, n: int, inputs: list[int], root: int, labels: dict[int, str]
) -> list[dict[str, Any]]:
    """A step's counter events: the loss, and each input's data and grad."""
    data, grad = (reals(step[field], step.get("dtype")) for field in ("data", "grad"))
    if len(data) < n + len(inputs) or len(grad) < n + len(inputs):
        return []
    out = [_counter("loss", t, loss=data[root])]
    for j, id_ in enumerate(inputs):
        name = f"{labels[id_]} #{id_}" if id_ in labels else f"#{id_}"
        out.append(_counter(name, t, data=data[n + j], grad=grad[n + j]))
    return out


def _counter(name: str, ts: float, **values: Any) -> dict[str, Any]:
    return {"name": name, "cat": "step", "ph": "C", "ts": ts, "pid": PID, "args": values}


def _slice(name: str, cat: str, ts: float, dur: float, tid: int, **args: Any) -> dict[str, Any]:
    return {
        "name": name,
        "cat": cat,
        "ph": "X",
        "ts": ts,
        "dur": dur,
        "pid": PID,
        "tid": tid,
        "args": args,
    }


def export_chrome(recording: str | Path, out: str | Path) -> Recording:
    """Write `recording` as Chrome trace-event JSON to `out`; returns the read Recording
    (its `damage` says whether it stopped early)."""
    reader = Recording(recording)
    document = chrome_trace(reader)
    with open(out, "w") as file:
        json.dump(document, file, separators=(",", ":"))
    return reader
