"""`opgraph plugins`: list the plugins of the default engine, as `datasette plugins` does.

It shows what `opgraph.Value` would use: the built-in ops and the installed plugins that
OPGRAPH_PLUGINS lets load, each with its distribution, version and the ops it registered,
and every installed plugin that failed to load, with the reason. It exits 0 even then (it is
the tool to diagnose a broken plugin with), unless OPGRAPH_STRICT_PLUGINS=1.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from opgraph.engine import default_engine
from opgraph.errors import PluginLoadWarning
from opgraph.loading import PluginInfo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list, for machines")
    parser.add_argument(
        "--installed", action="store_true", help="only installed plugins, not the built-ins"
    )


def run(args: argparse.Namespace) -> int:
    # A PluginLoadError (strict mode) goes up to the command line's one-line error report.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = default_engine()
        infos = engine.plugins() + engine.failed_plugins()
    for warning in caught:  # OPGRAPH_PLUGINS naming no installed plugin, for one
        if not issubclass(warning.category, PluginLoadWarning):  # listed below instead
            print(f"opgraph plugins: warning: {warning.message}", file=sys.stderr)
    if args.installed:
        infos = [info for info in infos if not info.builtin]
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
    else:
        print(format_plugins(infos))
    failed = [info for info in infos if info.error]
    if failed:
        print(
            f"opgraph plugins: {len(failed)} plugin(s) failed to load: "
            f"{', '.join(info.name for info in failed)}",
            file=sys.stderr,
        )
    return 0


def format_plugins(infos: list[PluginInfo]) -> str:
    """The plugins as lines for people: name, origin, then the ops (or why it failed)."""
    if not infos:
        return "no plugins loaded"
    lines = []
    for info in infos:
        origin = [f"{info.distribution} {info.version}" if info.distribution else "not installed"]
        if info.builtin:
            origin.insert(0, "built-in")
        if info.entry_point:
            origin.append(f"entry point {info.entry_point}")
        flag = "  FAILED TO LOAD" if info.error else ""
        lines.append(f"{info.name}  ({', '.join(origin)}){flag}")
        if info.error:
            lines.append(f"    error: {info.error}")
            continue
        lines.append(f"    ops: {', '.join(info.ops) or 'none'}")
        for op, previous in info.replaces.items():
            lines.append(f"    replaces {op} of {previous}")
        for op in info.left_out:
            lines.append(f"    left out: {op} (another plugin registered it first)")
    return "\n".join(lines)
