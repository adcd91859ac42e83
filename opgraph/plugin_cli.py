"""`opgraph plugins`: list the plugins of the default engine, as `datasette plugins` does.

It shows what `opgraph.Value` would use: the built-in ops and the installed plugins that
OPGRAPH_PLUGINS lets load, each with its distribution, version and the ops it registered.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from .engine import default_engine
from .errors import PluginError
from .loading import PluginInfo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list, for machines")
    parser.add_argument(
        "--installed", action="store_true", help="only installed plugins, not the built-ins"
    )


def run(args: argparse.Namespace) -> int:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            infos = default_engine().plugins()
        for warning in caught:  # OPGRAPH_PLUGINS naming no installed plugin, for one
            print(f"opgraph plugins: warning: {warning.message}", file=sys.stderr)
    except PluginError as exc:
        print(f"opgraph plugins: {exc}", file=sys.stderr)
        if exc.__cause__ is not None:
            cause = exc.__cause__
            print(f"caused by {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1
    if args.installed:
        infos = [info for info in infos if not info.builtin]
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
    else:
        print(format_plugins(infos))
    return 0


def format_plugins(infos: list[PluginInfo]) -> str:
    """The plugins as lines for people: name, origin, then the ops."""
    if not infos:
        return "no plugins loaded"
    lines = []
    for info in infos:
        origin = [f"{info.distribution} {info.version}" if info.distribution else "not installed"]
        if info.builtin:
            origin.insert(0, "built-in")
        if info.entry_point:
            origin.append(f"entry point {info.entry_point}")
        lines.append(f"{info.name}  ({', '.join(origin)})")
        lines.append(f"    ops: {', '.join(info.ops) or 'none'}")
        for op, previous in info.replaces.items():
            lines.append(f"    replaces {op} of {previous}")
    return "\n".join(lines)
