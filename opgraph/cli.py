"""The `opgraph` command line: `opgraph demo`, and one subcommand per feature.

Each subcommand is a pair of functions in the module of its feature: `add_arguments(parser)`
and `run(args) -> int`. This file only lists them, so adding a command is one line here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("opgraph.demo", "train micrograd's moons MLP and draw a neuron's graph"),
    "plugins": ("opgraph.plugin_cli", "list the op plugins, their distributions and their ops"),
    "serve": ("opgraph.server.server", "run a standalone trace hub that scripts publish to"),
    "replay": ("opgraph.server.replay", "serve a recorded trace (.ogtrace) to viewers"),
    "export": ("opgraph.server.chrome", "export a recorded trace as Chrome trace-event JSON"),
    "watch": ("opgraph.server.client", "print a live summary of a trace server's stream"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opgraph", description="A scalar autograd engine with plugins and a live trace."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`opgraph plugins | head`): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
