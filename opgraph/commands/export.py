"""`opgraph export --chrome run.ogtrace out.json`: a recording as Chrome trace-event JSON."""

from __future__ import annotations

import argparse
import sys

from opgraph.server.chrome import export_chrome


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chrome",
        action="store_true",
        help="Chrome trace-event JSON: the only format so far, and the default",
    )
    parser.add_argument("recording", help="a recording made with --record (.ogtrace)")
    parser.add_argument("out", help="the JSON file to write")


def run(args: argparse.Namespace) -> int:
    try:
        reader = export_chrome(args.recording, args.out)
    except OSError as exc:
        print(f"opgraph export: {exc}", file=sys.stderr)
        return 1
    if reader.hello is None:
        print(f"opgraph export: {args.recording}: {reader.damage}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: open it in https://ui.perfetto.dev or chrome://tracing")
    if reader.damage:
        print(f"opgraph export: stopped early: {reader.damage}", file=sys.stderr)
        return 2
    return 0
