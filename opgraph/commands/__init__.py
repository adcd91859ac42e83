"""The `opgraph` commands: one module per command, `opgraph NAME` in `NAME.py`.

Each module has `add_arguments(parser)` and `run(args) -> int`, and nothing a library
needs: the engine and the server never import from here. `opgraph.cli` lists the commands
and imports a command's module only when that command runs (or shows its --help), so that
`opgraph plugins` does not load the server's websockets and msgpack. What several commands
share is below.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any


def add_history_steps(parser: Any, default: int | None = None) -> None:
    """`--history-steps N`, of `opgraph serve` and `opgraph demo --serve`: None leaves the
    server its own default (opgraph.server.steps.HISTORY_STEPS)."""
    parser.add_argument(
        "--history-steps",
        type=positive_int,
        metavar="N",
        default=default,
        help="training steps whose loss and inputs' numbers snapshots carry"
        + (f" ({default})" if default is not None else " (the server's default, if not given)"),
    )


def positive_int(text: str) -> int:
    """An option's whole number of at least 1 (argparse's `type=`)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


_sigterm_received = False
_command_pid = os.getpid()  # the process whose SIGTERM stops the command (stop_on_sigterm)


def stop_on_sigterm() -> None:
    """Make SIGTERM end a command like Ctrl-C does, so recordings are closed properly."""
    global _command_pid
    _command_pid = os.getpid()
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: Any) -> None:
    global _sigterm_received
    if os.getpid() != _command_pid:
        # A process a script forked (`opgraph run`) inherits this handler: SIGTERM ends it as
        # it would under python (a pool's terminate() ends its workers so), at whatever
        # moment it comes, even the first instant after the fork.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _sigterm_received = True  # a plain flag: a lock could be held by the frame we interrupt
    raise KeyboardInterrupt


def sigterm_received() -> bool:
    """True once SIGTERM arrived: unlike Ctrl-C, which `opgraph run` turns into the end of
    the script only, it asks the whole command to stop, even if the KeyboardInterrupt it
    raised was caught (by a script that saves its work on Ctrl-C, say)."""
    return _sigterm_received


def wait_until_interrupted(server: Any, message: str = "") -> None:
    """Keep serving until Ctrl-C, which ends a serving command normally (exit status 0).

    `message` is printed on stderr first, inside the wait: a Ctrl-C sent as soon as it is
    read must find the command waiting, not between the two."""
    try:
        if message:
            print(message, file=sys.stderr, flush=True)
        server.wait()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)


def add_wait_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--wait` and `--wait-timeout SECONDS`: start `what` only once a viewer has connected."""
    parser.add_argument(
        "--wait",
        action="store_true",
        help=f"wait for the first viewer to connect before {what}",
    )
    parser.add_argument(
        "--wait-timeout",
        type=non_negative_float,
        metavar="SECONDS",
        help=f"wait at most SECONDS for it (implies --wait), then start {what} anyway",
    )


def non_negative_float(text: str) -> float:
    number = float(text)
    if not number >= 0:  # (nan too)
        raise argparse.ArgumentTypeError(f"must be a number of seconds, at least 0, got {text}")
    return number


def wait_for_viewer(server: Any, args: argparse.Namespace, command: str, what: str) -> None:
    """With --wait or --wait-timeout: say that the command waits, and wait (a Ctrl-C in the
    wait is a KeyboardInterrupt for the caller)."""
    timeout = args.wait_timeout
    if not args.wait and timeout is None:
        return
    limit = "" if timeout is None else f" (at most {timeout:g} s)"
    print(f"waiting for a viewer to connect to {server.url}{limit} before {what}", flush=True)
    if server.wait_for_viewer(timeout):
        print(f"a viewer connected: {what}", flush=True)
    else:
        print(f"opgraph {command}: no viewer connected within {timeout:g} s: {what} anyway",
              file=sys.stderr, flush=True)  # fmt: skip
