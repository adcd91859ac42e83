"""A viewer that stops reading, or asks for snapshot after snapshot, costs the server little
(real server on loopback, real sockets)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
import tracemalloc

import _tracing_helpers as th
import msgpack
import pytest

from opgraph.server.protocol import CLOSE_TOO_SLOW
from opgraph.server.server import TraceServer

NODES = 80_000  # a snapshot of about 5 MB: much more than the sockets' buffers take


def big_server(**options) -> TraceServer:
    server = TraceServer(engine_name="big", ops={}, port=0, **options).start()
    events = (
        {"type": "forward", "id": i, "op": None, "parents": [], "data": float(i), "label": ""}
        for i in range(NODES)
    )
    server.call(lambda: server.hub.publish(events))
    return server


def stalled_viewer(port: int) -> socket.socket:
    """A viewer that completes the handshake, then reads nothing (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(th.TIMEOUT)
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
        head += sock.recv(1)  # byte by byte: not a byte of the stream is read
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def read_close_code(sock: socket.socket) -> int | None:
    """Read the server's frames (unmasked) until its close frame; returns its code."""
    buffer = bytearray()

    def take(n: int) -> bytes:
        while len(buffer) < n:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            buffer.extend(chunk)
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    try:
        while True:
            opcode, length = take(2)
            opcode &= 0x0F
            if length == 126:
                (length,) = struct.unpack("!H", take(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", take(8))
            payload = take(length)
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if payload else None
    except (EOFError, ConnectionResetError):
        return None


def traced_now() -> int:
    return tracemalloc.get_traced_memory()[0]


def test_viewers_that_stop_reading_are_closed_and_their_memory_released():
    server = big_server(send_timeout=0.5, close_timeout=3)
    try:
        snapshot_bytes = server.call(lambda: sum(map(len, server.hub.snapshot_frames())))
        assert snapshot_bytes > 4_000_000
        hub, builds = server.hub, []
        build = hub._build_snapshot
        hub._build_snapshot = lambda: builds.append(1) or build()  # counts, and builds
        tracemalloc.start()
        try:
            baseline = traced_now()
            started = time.monotonic()
            # three viewers join at the same seq: they share one snapshot
            socks = [stalled_viewer(server.port) for _ in range(3)]
            while server.stats()["viewers"] and time.monotonic() - started < th.TIMEOUT:
                time.sleep(0.05)
            took = time.monotonic() - started
            assert server.stats()["viewers"] == [], "a viewer that stopped reading stays"
            # (0.5 s of deadline; the rest is building the snapshot, traced, on a busy machine)
            assert took < 10, f"closed after {took:.1f} s, with a send deadline of 0.5 s"
            # each one, reading at last, finds the close code after what it was sent
            assert [read_close_code(sock) for sock in socks] == [CLOSE_TOO_SLOW] * 3
            for sock in socks:
                sock.close()
            peak = tracemalloc.get_traced_memory()[1] - baseline
            deadline = time.monotonic() + th.TIMEOUT
            while traced_now() - baseline > 1_000_000 and time.monotonic() < deadline:
                time.sleep(0.05)
            held = traced_now() - baseline
        finally:
            tracemalloc.stop()
        assert builds == [1], "the viewers that joined together did not share a snapshot"
        assert peak < 1.5 * snapshot_bytes, f"{peak:,} bytes: a snapshot per viewer?"
        assert held < 1_000_000, f"{held:,} bytes still held after the viewers were closed"
        # the server goes on serving readers
        reader_got = asyncio.run(first_snapshot(server.ws_url))
        assert reader_got == NODES
    finally:
        server.close()


async def first_snapshot(url: str) -> int:
    reader = await th.connect_reader(url)
    begin = await reader.until(lambda e: e["type"] == "snapshot_begin")
    await reader.until(lambda e: e["type"] == "snapshot_end")
    await reader.ws.close()
    return begin[-1]["nodes"]


@pytest.mark.parametrize("interval", [0.4])
def test_a_flood_of_snapshot_requests_gets_a_few_snapshots(interval):
    server = TraceServer(engine_name="x", ops={}, port=0, snapshot_interval=interval).start()
    events = [
        {"type": "forward", "id": i, "op": None, "parents": [], "data": 0.0, "label": ""}
        for i in range(10)
    ]
    server.call(lambda: server.hub.publish(events))

    async def flood() -> tuple[int, int]:
        reader = await th.connect_reader(server.ws_url)
        await reader.until(lambda e: e["type"] == "snapshot_end")  # the one on joining
        request = msgpack.packb({"type": "snapshot"})
        loop = asyncio.get_running_loop()
        end = loop.time() + 4 * interval
        sent = snapshots = 0
        while loop.time() < end:
            for _ in range(50):
                await reader.ws.send(request)
            sent += 50
            try:
                while True:
                    event = await reader.next(timeout=0.02)
                    snapshots += event["type"] == "snapshot_begin"
            except TimeoutError:
                pass
        requests = server.stats()["viewers"][0]["snapshot_requests"]
        await reader.ws.close()
        return sent, snapshots, requests

    try:
        sent, snapshots, requests = asyncio.run(flood())
    finally:
        server.close()
    assert requests == sent  # every request was read (the connection was not stuck)
    # over 4 intervals: the first request at once, then one per interval at most
    assert 2 <= snapshots <= 5, f"{snapshots} snapshots for {sent} requests"
