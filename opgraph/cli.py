"""The `opgraph` command line: `opgraph demo`, and one subcommand per feature.

Each subcommand is a pair of functions in the module of its feature: `add_arguments(parser)`
and `run(args) -> int`. This file only lists them, so adding a command is one line here.

Errors are reported in one line, `opgraph: error: ...`, without a traceback; `--debug` (or
OPGRAPH_DEBUG=1) shows it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from .errors import OpgraphError

# name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("opgraph.demo", "train micrograd's moons MLP and draw a neuron's graph"),
    "plugins": ("opgraph.plugin_cli", "list the op plugins, their distributions and their ops"),
    "serve": ("opgraph.server.server", "run a standalone trace hub that scripts publish to"),
    "replay": ("opgraph.server.replay", "serve a recorded trace (.ogtrace) to viewers"),
    "export": ("opgraph.server.chrome", "export a recorded trace as Chrome trace-event JSON"),
    "watch": ("opgraph.server.client", "print a live summary of a trace server's stream"),
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


def build_parser() -> argparse.ArgumentParser:
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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        module.add_arguments(sub)
        sub.add_argument(  # also after the command: `opgraph demo --debug`
            "--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP
        )
        sub.set_defaults(run=module.run)
    return parser


def debug_from_environment() -> bool:
    return os.environ.get("OPGRAPH_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a plugin that failed to load, for one) as one line, without source lines."""
    print(f"opgraph: warning: {message}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
