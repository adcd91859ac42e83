"""The `opgraph` command line: `opgraph demo`, and one subcommand per feature.

Each subcommand is a module of opgraph/commands with two functions, `add_arguments(parser)`
and `run(args) -> int`. This file only lists them, so adding a command is one line here. A
command's module is imported only when that command runs or shows its --help: `opgraph
--help` lists the commands from the table below, and `opgraph plugins` does not load the
server (websockets, msgpack) or graphviz.

Errors are reported in one line, `opgraph: error: ...`, without a traceback; `--debug` (or
OPGRAPH_DEBUG=1) shows it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Collection, Sequence
from typing import TextIO

from . import __version__
from .errors import OpgraphError

# name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("opgraph.commands.demo", "train micrograd's moons MLP and draw a neuron's graph"),
    "plugins": (
        "opgraph.commands.plugins",
        "list the op plugins, their distributions and their ops",
    ),
    "serve": ("opgraph.commands.serve", "run a standalone trace hub that scripts publish to"),
    "replay": ("opgraph.commands.replay", "serve a recorded trace (.ogtrace) to viewers"),
    "export": ("opgraph.commands.export", "export a recorded trace as Chrome trace-event JSON"),
    "watch": ("opgraph.commands.watch", "print a live summary of a trace server's stream"),
    "run": ("opgraph.commands.run", "run a Python script with its trace served to the viewer"),
}

DEBUG_HELP = "show the traceback of an error (also OPGRAPH_DEBUG=1)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default in --help, unless there is none to show (None, a flag)
    or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or isinstance(default, bool) or default == argparse.SUPPRESS:
            return text
        if "default" in text or f"({default})" in text:
            return text
        return super()._get_help_string(action) or text


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of `opgraph`, with the arguments of the commands in `load` (default: all).

    Every command is listed; a command not in `load` has no arguments of its own and its
    module is not imported (`main` loads only the command it is given).
    """
    parser = argparse.ArgumentParser(
        prog="opgraph",
        description="A scalar autograd engine with plugins and a live trace.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=debug_from_environment(),
        help=DEBUG_HELP,
    )
    parser.add_argument("--version", action="version", version=f"opgraph {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        if load is None or name in load:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
        sub.add_argument(  # also after the command: `opgraph demo --debug`
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
    return parser


def command_in(argv: Sequence[str]) -> str | None:
    """The command named in `argv` (its first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def debug_from_environment() -> bool:
    return os.environ.get("OPGRAPH_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Warnings (a plugin that failed to load, for one) as one line, without source lines."""
    print(f"opgraph: warning: {message}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_in(argv)
    args = build_parser(load=[] if command is None else [command]).parse_args(argv)
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = show_warning
        try:
            return args.run(args) or 0
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (`opgraph plugins | head`): end quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except (OpgraphError, OSError) as exc:
            if args.debug:
                raise
            print(f"opgraph: error: {one_line(exc)}", file=sys.stderr)
            return 1


def one_line(exc: BaseException) -> str:
    """An error and its cause, without a traceback."""
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
