"""The `opgraph` commands: one module per command, `opgraph NAME` in `NAME.py`.

Each module has `add_arguments(parser)` and `run(args) -> int`, and nothing a library
needs: the engine and the server never import from here. `opgraph.cli` lists the commands
and imports a command's module only when that command runs (or shows its --help), so that
`opgraph plugins` does not load the server's websockets and msgpack. What several commands
share is below.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any


def positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def stop_on_sigterm() -> None:
    """Make SIGTERM end a command like Ctrl-C does, so recordings are closed properly."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def wait_until_interrupted(server: Any) -> None:
    """Keep serving until Ctrl-C, which ends a serving command normally (exit status 0)."""
    try:
        server.wait()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
