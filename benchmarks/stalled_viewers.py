"""Server memory held by viewers that stop reading while they join a large graph.

    python -m benchmarks.stalled_viewers [--nodes 490000] [--viewers 4] [--wait 15]

Starts a hub holding `--nodes` nodes, connects `--viewers` raw websocket clients that
complete the handshake and then read nothing (a 4 KB receive buffer), and reports the
Python memory (tracemalloc) the server holds for them 3 s after they joined and again
`--wait` seconds later (past the default send deadline of 10 s), per viewer, and whether
the server still counts them. Then one client asks for a snapshot every 10 ms for `--flood`
seconds while reading all it gets: the MB it received say how well such requests are
rate-limited. A script, not a test: it takes a while on a large graph.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import time
import tracemalloc

import msgpack
import websockets

from opgraph.server.server import TraceServer


def stalled_viewer(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    return sock


async def flood(url: str, seconds: float) -> int:
    """Ask for snapshots every 10 ms for `seconds`, reading everything; returns bytes read."""
    ws = await websockets.connect(url, max_size=None, compression=None)
    request = msgpack.packb({"type": "snapshot"})
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def ask() -> None:
        while loop.time() < end:
            await ws.send(request)
            await asyncio.sleep(0.01)

    asking = asyncio.ensure_future(ask())
    received = 0
    while loop.time() < end:
        try:
            received += len(await asyncio.wait_for(ws.recv(), 0.5))
        except TimeoutError:
            pass
    asking.cancel()
    await ws.close()
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=490_000)
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--wait", type=float, default=15)
    parser.add_argument("--flood", type=float, default=10)
    args = parser.parse_args()
    server = TraceServer(engine_name="big", ops={}, port=0).start()
    try:
        events = (
            {"type": "forward", "id": i, "op": "add", "parents": [i - 1] if i else []}
            | {"data": float(i), "label": f"n{i}"}
            for i in range(args.nodes)
        )
        server.call(lambda: server.hub.publish(events), timeout=600)
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        socks = [stalled_viewer(server.port) for _ in range(args.viewers)]
        for label, pause in [("3 s after joining", 3), (f"{args.wait:g} s later", args.wait)]:
            time.sleep(pause)
            held = tracemalloc.get_traced_memory()[0] - baseline
            viewers = len(server.stats()["viewers"])
            print(
                f"{label}: {held / 1e6:.1f} MB held for {args.viewers} stalled viewers "
                f"({held / args.viewers / 1e6:.1f} MB each); {viewers} still connected",
                flush=True,
            )
        tracemalloc.stop()
        for sock in socks:
            sock.close()
        if args.flood:
            got = asyncio.run(flood(server.ws_url, args.flood))
            print(f"snapshot requests every 10 ms for {args.flood:g} s: {got / 1e6:.0f} MB sent")
    finally:
        server.close()


if __name__ == "__main__":
    main()
