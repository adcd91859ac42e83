"""The viewer page after a resync in the middle of a backward pass: the snapshot says which
pass is in progress (docs/protocol.md, "Snapshot"), and the steps that follow continue it."""

from __future__ import annotations

from playwright.sync_api import expect
from test_viewer import (  # noqa: F401  (engine, server: pytest fixtures; browser, page: conftest)
    engine,
    forward,
    frames,
    hello,
    open_bytes,
    open_viewer,
    rows,
    server,
)


def node(id_, op=None, parents=(), data=1.0, grad=0.0, label="", **extra):
    fields = {"id": id_, "op": op, "parents": list(parents), "data": data, "grad": grad}
    return {"type": "node", **fields, "label": label, **extra}


def test_a_snapshot_taken_during_a_pass_continues_that_pass(page, server, tmp_path):  # noqa: F811
    events = [
        hello(),
        forward(1, 0, label="a", data=2.0),
        {"type": "dropped", "count": 40},  # passes 1 and 2 were lost; pass 3 has begun
        {"type": "snapshot_begin", "seq": 41, "nodes": 3, "backward": {"pass": 3, "root": 2}},
        node(0, label="a", data=2.0),
        node(1, label="b", data=3.0),
        node(2, op="mul", parents=[0, 1], label="c", data=6.0, grad=1.0, **{"pass": 3}),
        {"type": "snapshot_end", "seq": 41},
        {"type": "backward", "seq": 42, "id": 1, "grad": 2.0},
        {"type": "backward", "seq": 43, "id": 0, "grad": 3.0},
        {"type": "backward_end", "seq": 44, "root": 2, "pass": 3},
    ]
    open_viewer(page, server)
    open_bytes(page, tmp_path, "resync.ogtrace", frames(*events))
    expect(page.locator("#st-pass")).to_have_text("backward pass 3: done, 2 steps")
    grads = {r["label"]: r["grad"] for r in rows(page)}
    assert grads == {"a": 3.0, "b": 2.0, "c": 1.0}
