"""`opgraph watch URL`: print a live summary of a trace server's stream."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import websockets

from opgraph.server.client import Graph, events, stream_url
from opgraph.trace import redact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        nargs="?",
        default="ws://127.0.0.1:8765/ws",
        help="the server (viewer page URL or ws://.../ws)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between summary lines")
    parser.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: never)"
    )
    parser.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit when the connection ends or cannot be made (default: keep retrying)",
    )


RETRY_MAX_DELAY = 5.0  # seconds between two tries to connect, at most


def connection_problem(exc: BaseException) -> str:
    """Why a connection failed, in a few words: "connection refused"."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return " ".join(str(exc).split()) or type(exc).__name__


async def watch(
    url: str,
    interval: float,
    duration: float | None,
    reconnect: bool,
    out=sys.stdout,
    err=sys.stderr,
) -> Graph:
    """Print a summary line every `interval` seconds: events/s, nodes, pass, drops.

    While nothing serves at `url` it says so, once per outage on `err` and on every
    summary line, and keeps retrying (with `reconnect`).
    """
    graph = Graph()
    start = last = time.monotonic()
    counted = 0
    problem: list[str] = []  # why the last try to connect failed; empty while connected

    def retrying(exc: Exception) -> None:
        if not problem:
            print(
                f"opgraph watch: nothing is serving at {url}: {connection_problem(exc)}; "
                f"retrying every {RETRY_MAX_DELAY:g}s at most (Ctrl-C to stop)",
                file=err,
                flush=True,
            )
        problem[:] = [connection_problem(exc)]

    def line(now: float) -> str:
        rate = (graph.events - counted) / max(now - last, 1e-9)
        session = graph.hello.get("session", "?") if graph.hello else "-"
        current = f"pass {graph.current_pass}" if graph.current_pass else "no pass"
        away = f"  not connected: {problem[0]}, retrying" if problem else ""
        return (
            f"{rate:10.0f} events/s  {len(graph.nodes):8d} nodes  "
            f"seq {'-' if graph.seq is None else graph.seq}  "
            f"{current}  {graph.passes} passes  dropped {graph.dropped}  session {session}"
            f"{away}"
        )

    async def consume() -> None:
        stream = events(url, reconnect=reconnect, max_delay=RETRY_MAX_DELAY, on_retry=retrying)
        async for event in stream:
            problem.clear()
            graph.apply(event)

    task = asyncio.ensure_future(consume())
    try:
        while not task.done():
            await asyncio.wait([task], timeout=interval)
            if task.done() and task.exception() is not None:
                break  # could not connect (without reconnect): raised below
            now = time.monotonic()
            print(line(now), file=out, flush=True)
            last, counted = now, graph.events
            if duration is not None and now - start >= duration:
                break
    finally:
        task.cancel()
        try:
            await task  # re-raises a connection error, so that `opgraph watch` reports it
        except asyncio.CancelledError:
            pass
    return graph


def run(args: argparse.Namespace) -> int:
    # (redact: the URL's token stays out of logs)
    url = stream_url(args.url)
    print(f"watching {redact(url)}", flush=True)
    try:
        asyncio.run(watch(url, args.interval, args.duration, not args.no_reconnect))
    except (OSError, websockets.InvalidHandshake) as exc:
        print(
            redact(f"opgraph watch: cannot connect to {url}: {connection_problem(exc)}"),
            file=sys.stderr,
        )
        return 1
    return 0
