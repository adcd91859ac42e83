"""A viewer that joins a notebook's server while a training step runs (Run All: the page in the
output cell connects while the next cells train) loses nothing it saw: the events that overflow
its queue while its first snapshot is still on its way are covered by a newer snapshot, not
counted as dropped, and that snapshot carries the last backward pass to step through.

A real Jupyter kernel (nbclient, ipykernel) runs the notebook and the server; a real websocket
client joins after two steps and reads nothing while the third runs (a page busy decoding a
large snapshot), through a socket with a small receive buffer, so that its snapshot is still
being sent when the step's events come, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

import _tracing_helpers as th
import nbformat
import websockets
from nbclient import NotebookClient
from websockets.typing import Subprotocol

from opgraph.server.client import Graph
from opgraph.server.protocol import SUBPROTOCOL

# The queue limit is small, so that the third step's events overflow it many times over.
SETUP = """\
import json
import opgraph
from opgraph.demo import SEED, loss, make_moons, train
from opgraph.nn import MLP

viewer = opgraph.serve(port=0, queue_limit=2_000, send_timeout=300, ping_interval=None,
                       resync_interval=0, resync_pass_wait=0.1)
print(viewer.ws_url)"""
TWO_STEPS = """\
X, y = make_moons(100, noise=0.1, seed=SEED)
model = MLP(2, [16, 16, 1])
history = train(model, X, y, steps=2)"""
# A step on other points: a graph of another shape, so that its nodes are sent as events
# (a step that repeats a known structure would be one `step` map: docs/protocol.md).
THIRD_STEP = """\
total, accuracy = loss(model, X[:60], y[:60])
model.zero_grad()
total.backward()
for p in model.parameters():
    p.data -= 0.1 * p.grad
print(json.dumps({"root": total.id, "data": total.data,
                  "reached": len(opgraph.topological_order(total))}))"""
FLUSH = """\
assert viewer.flush(timeout=60)
print(viewer.stats()["seq"])"""
STATS = "print(json.dumps(viewer.stats()))"

TIMEOUT = 120  # seconds: a bound for hangs, not a timing


def printed(cell) -> str:
    return "".join(output.get("text", "") for output in cell.outputs)


async def stalled_client(url: str):
    """A client joined to `url` that takes at most one frame until it is read from: its
    socket's receive buffer is a few KB, so the server's sends wait for it."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.connect((parts.hostname, parts.port))
    sock.setblocking(False)
    ws = await websockets.connect(
        url,
        sock=sock,
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        max_size=None,
        max_queue=1,
        open_timeout=th.TIMEOUT,
        ping_interval=None,  # (it answers no ping while it reads nothing)
    )
    return th.Reader(ws)


def test_a_viewer_joining_a_notebook_mid_training_gets_a_newer_snapshot_not_drops():
    nb = nbformat.v4.new_notebook()
    cells = (SETUP, TWO_STEPS, THIRD_STEP, FLUSH, STATS)
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    client = NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3", allow_errors=False)

    async def main() -> tuple[Graph, list[int], int, dict, dict]:
        async with client.async_setup_kernel():
            await client.async_execute_cell(nb.cells[0], 0)
            await client.async_execute_cell(nb.cells[1], 1)
            reader = await stalled_client(printed(nb.cells[0]).strip())
            await client.async_execute_cell(nb.cells[2], 2)  # while the client reads nothing
            await client.async_execute_cell(nb.cells[3], 3)
            step, last = json.loads(printed(nb.cells[2])), int(printed(nb.cells[3]))
            graph = Graph()  # what the viewer shows, from everything it is sent
            snapshots = []  # the seq of each snapshot it gets
            while graph.seq is None or graph.seq < last or graph._in_snapshot:
                event = await reader.next(TIMEOUT)
                graph.apply(event)
                if event["type"] == "snapshot_end":
                    snapshots.append(event["seq"])
            await client.async_execute_cell(nb.cells[4], 4)
            await reader.ws.close()
            return graph, snapshots, last, step, json.loads(printed(nb.cells[4]))

    graph, snapshots, last, step, stats = asyncio.run(main())
    (viewer,) = stats["viewers"]
    # It joined before the third step's events, which one newer snapshot stood for (not one
    # built while the first was still on its way, only to be out of date in turn) ...
    assert len(snapshots) == 2 and snapshots[0] < last <= snapshots[1], snapshots
    assert viewer["resyncs"] == len(snapshots) - 1
    # ... and no event was counted as dropped, none missing.
    assert graph.dropped == 0 and viewer["dropped"] == 0 and graph.gaps == []
    # The newest snapshot holds the third step, and its backward pass to step through.
    assert graph.last_pass is not None
    assert graph.last_pass["pass"] == 3 and graph.last_pass["root"] == step["root"]
    assert len(graph.last_pass["steps"]) == step["reached"]
    assert graph.nodes[step["root"]]["data"] == step["data"]
    assert graph.nodes[step["root"]]["grad"] == 1.0
