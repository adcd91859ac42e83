"""`opgraph run script.py [args...]`: run a Python script with its trace served to the viewer.

The script runs as `python script.py args...` would run it (`sys.argv`, `__name__ ==
"__main__"`, its directory first on `sys.path`, its exit code), with the default engine traced
(docs/tracing.md). When it ends, the server keeps serving its final graph until Ctrl-C, so
that the viewer stays open on it; `--exit` stops with the script instead.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback
from pathlib import Path

from . import stop_on_sigterm, wait_until_interrupted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--record", metavar="FILE", help="also record the trace to FILE (.ogtrace)")
    parser.add_argument("--exit", action="store_true", help="stop serving when the script ends")
    parser.add_argument("script", help="the Python script to run")
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help="the script's arguments (its sys.argv[1:])"
    )


def run(args: argparse.Namespace) -> int:
    script = Path(args.script)
    if not script.is_file():
        print(f"opgraph run: can't open file {str(script)!r}: no such file", file=sys.stderr)
        return 2
    stop_on_sigterm()
    # This command serves the trace itself: OPGRAPH_TRACE would start a second server (or
    # publish elsewhere) when the script first uses the default engine.
    os.environ.pop("OPGRAPH_TRACE", None)
    from opgraph.trace import serve

    server = serve(port=args.port, record=args.record)
    with server:
        print(f"viewer: {server.url}", flush=True)
        if args.record:
            print(f"recording to {args.record}", flush=True)
        code = run_script(script, args.args)
        server.flush(timeout=5)
        if args.exit:
            return code
        print(
            f"opgraph run: {script.name} ended (exit code {code}); still serving its final "
            f"graph at {server.url} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        wait_until_interrupted(server)
    return code


def run_script(script: Path, argv: list[str]) -> int:
    """Run `script` as `python script argv...` would, in this process; its exit code."""
    saved_argv, saved_path = sys.argv, sys.path[:]
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
        return 0
    except SystemExit as exc:
        return exit_code(exc.code)
    except KeyboardInterrupt:
        print(f"opgraph run: {script.name} interrupted", file=sys.stderr)
        return 130
    except BaseException:
        # As Python reports an uncaught error: from the script's first frame (not this
        # command's and runpy's; none for a SyntaxError, which shows the line itself).
        kind, error, tb = sys.exc_info()
        while tb is not None and tb.tb_frame.f_code.co_filename != str(script):
            tb = tb.tb_next
        traceback.print_exception(kind, error, tb)
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def exit_code(code: object) -> int:
    """The status `sys.exit(code)` gives: None is 0, an int itself, anything else printed, 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
