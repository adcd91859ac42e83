"""`opgraph replay run.ogtrace`: serve a recording to viewers as if it were live.

`--wait` starts the replay only once a viewer has connected (`--wait-timeout`: at most so
long), so that the viewer sees it from its first event."""

from __future__ import annotations

import argparse
import sys

from opgraph.server.replay import ReplayServer

from . import add_wait_arguments, stop_on_sigterm, wait_for_viewer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recording", help="a recording made with --record (.ogtrace)")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="times real speed; 0: as fast as possible"
    )
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--static-dir", help="serve the viewer page from this directory")
    parser.add_argument(
        "--exit",
        action="store_true",
        help="exit when the recording has been sent instead of serving on",
    )
    add_wait_arguments(parser, "replaying")


def run(args: argparse.Namespace) -> int:
    stop_on_sigterm()
    try:
        server = ReplayServer(
            args.recording,
            speed=args.speed,
            host=args.host,
            port=args.port,
            static_dir=args.static_dir,
            hold=True,  # released below, once a viewer came if --wait asks for one
        )
        server.start()
    except (OSError, ValueError) as exc:
        print(f"opgraph replay: {exc}", file=sys.stderr)
        return 1
    with server:
        pace = "as fast as possible" if args.speed <= 0 else f"at {args.speed:g}x real speed"
        print(f"replaying {args.recording} {pace}; viewer: {server.url}", flush=True)
        try:
            wait_for_viewer(server, args, "replay", "replaying")
            server.release()
            server.wait_done()
            server.flush()
            damage = server.recording.damage
            print(f"replayed {server.replayed} events", flush=True)
            if damage or server.error:
                problem = damage or server.error
                print(f"opgraph replay: stopped early: {problem}", file=sys.stderr, flush=True)
            if not args.exit:
                print("serving the replayed graph until interrupted (Ctrl-C)", flush=True)
                server.wait()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 2 if server.recording.damage or server.error else 0
