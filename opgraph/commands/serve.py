"""`opgraph serve`: a standalone trace hub that scripts publish to (docs/tracing.md)."""

from __future__ import annotations

import argparse
import sys

from opgraph.errors import ServerError
from opgraph.server.hub import MAX_BYTES, MAX_NODE_BYTES
from opgraph.server.security import is_loopback
from opgraph.server.server import TraceServer
from opgraph.server.steps import HISTORY_STEPS

from . import add_history_steps, positive_int, stop_on_sigterm, wait_until_interrupted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--record", metavar="FILE", help="also record the stream to FILE (.ogtrace)"
    )
    parser.add_argument(
        "--token", help="the token viewers must pass (default: generated when not on loopback)"
    )
    parser.add_argument(
        "--no-token",
        action="store_true",
        help="allow a non-loopback address without a token (unsafe)",
    )
    parser.add_argument("--static-dir", help="serve the viewer page from this directory")
    parser.add_argument(
        "--queue-limit",
        type=positive_int,
        default=100_000,
        help="events queued per viewer before it is resynced",
    )
    parser.add_argument(
        "--max-bytes",
        type=positive_int,
        default=MAX_BYTES,
        help="bytes of graph kept for snapshots (about; the oldest nodes are forgotten past it)",
    )
    parser.add_argument(
        "--max-node-bytes",
        type=positive_int,
        default=MAX_NODE_BYTES,
        help="bytes one published node may take (5 a parent, its label and scope)",
    )
    add_history_steps(parser, HISTORY_STEPS)


def hub_server(args: argparse.Namespace) -> TraceServer:
    token: str | bool | None = args.token
    if args.no_token:
        token = False
    return TraceServer(
        engine_name="hub",
        ops={},
        host=args.host,
        port=args.port,
        token=token,
        record=args.record,
        static_dir=args.static_dir,
        queue_limit=args.queue_limit,
        max_bytes=args.max_bytes,
        max_node_bytes=args.max_node_bytes,
        history_steps=args.history_steps,
        accept_publishers=True,
    )


def run(args: argparse.Namespace) -> int:
    stop_on_sigterm()
    try:
        server = hub_server(args).start()
    except ServerError as exc:
        print(f"opgraph serve: {exc}", file=sys.stderr)
        return 1
    with server:
        print(f"viewer: {server.url}", flush=True)
        if server.token is None and not is_loopback(server.host):
            print(
                f"opgraph serve: WARNING: no token on {server.host}: anyone who can reach port "
                f"{server.port} can read this trace and publish into it",
                file=sys.stderr,
                flush=True,
            )
        print(f"publish from scripts with: OPGRAPH_TRACE={server.publish_url}", flush=True)
        if args.record:
            print(f"recording to {args.record}", flush=True)
        wait_until_interrupted(server)
    return 0
