"""`opgraph run script.py [args...]`: run a Python script with its trace served to the viewer.

The script runs as `python script.py args...` would run it (`sys.argv` with any `--` kept,
`__name__ == "__main__"`, an absolute `__file__`, its directory first on `sys.path`, its
threads waited for and its atexit handlers run when it ends, its exit code; a process it
forks ends with the script, never serves), with the default engine traced (docs/tracing.md).
When it ends, the server keeps serving its final graph until Ctrl-C, so that the viewer stays
open on it; `--exit` stops with the script instead, and so does one SIGTERM at any time.
`--wait` starts the script only once a viewer has connected (`--wait-timeout`: at most so
long), so that a short script is watched from its first event.
"""

from __future__ import annotations

import argparse
import atexit
import builtins
import io
import os
import sys
import threading
import traceback
import types
from importlib.machinery import SourceFileLoader
from pathlib import Path

from . import (
    add_wait_arguments,
    sigterm_received,
    stop_on_sigterm,
    wait_for_viewer,
    wait_until_interrupted,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--record", metavar="FILE", help="also record the trace to FILE (.ogtrace)")
    parser.add_argument("--exit", action="store_true", help="stop serving when the script ends")
    parser.add_argument(
        "--dtype",
        choices=("f8", "f4"),
        default="f8",
        help="a training step's numbers as float64 (f8) or float32 (f4, half the bytes)",
    )
    add_wait_arguments(parser, "running the script")
    # One positional for the script and its arguments: a positional of its own for the script
    # would take a `--` right after it as argparse's separator and drop it from the script's
    # sys.argv (`opgraph run s.py -- --x` must give s.py ['s.py', '--', '--x'], as python does).
    parser.add_argument(
        "script",
        nargs=argparse.REMAINDER,
        help="the Python script to run, then its arguments (its sys.argv[1:])",
    )


def run(args: argparse.Namespace) -> int:
    command = args.script[1:] if args.script[:1] == ["--"] else args.script  # `run -- s.py`
    if not command:
        print("opgraph run: no script given: opgraph run script.py [args...]", file=sys.stderr)
        return 2
    script, script_args = command[0], command[1:]  # as given: python's sys.argv[0]
    if not Path(script).is_file():
        print(f"opgraph run: can't open file {script!r}: no such file", file=sys.stderr)
        return 2
    stop_on_sigterm()
    # This command serves the trace itself: OPGRAPH_TRACE would start a second server (or
    # publish elsewhere) when the script first uses the default engine.
    os.environ.pop("OPGRAPH_TRACE", None)
    from opgraph import serve

    server = serve(port=args.port, record=args.record, dtype=args.dtype)
    with server:
        print(f"viewer: {server.url}", flush=True)
        if args.record:
            print(f"recording to {args.record}", flush=True)
        try:
            wait_for_viewer(server, args, "run", "running the script")
        except KeyboardInterrupt:
            print("opgraph run: stopped while waiting for a viewer", file=sys.stderr)
            return 130
        runner = os.getpid()
        code = run_script(script, script_args)
        if os.getpid() != runner:  # a process the script forked, at the script's end
            end_forked_child(code)
        stop_on_sigterm()  # again: the script may have replaced the handler
        server.flush(timeout=5)
        if args.exit or sigterm_received():
            return code
        wait_until_interrupted(
            server,
            f"opgraph run: {Path(script).name} ended (exit code {code}); still serving its final "
            f"graph at {server.url} (Ctrl-C to stop)",
        )
    return code


def run_script(script: str, argv: list[str]) -> int:
    """Run `script` as `python script argv...` would, in this process, up to and including its
    atexit handlers; its exit code."""
    saved = sys.argv, sys.path[:], sys.modules["__main__"]
    # python's __file__: joined to the working directory, neither normalised ("/d/./s.py")
    # nor its symlinks resolved
    path = os.path.join(os.getcwd(), script)
    main = sys.modules["__main__"] = main_module(path)
    sys.argv = [script, *argv]  # not made absolute, unlike `runpy.run_path`
    sys.path.insert(0, str(Path(script).resolve().parent))  # python resolves symlinks here
    running = set(threading.enumerate())
    try:
        code = run_main(path, main)
        code = wait_for_threads(running, script, code)
        # What the script registered runs now, with its __main__, not when the server stops.
        # `serve` registers no handler here (only OPGRAPH_TRACE's server does), so the runner
        # loses none of its own.
        atexit._run_exitfuncs()
        return code
    finally:
        sys.argv, sys.path[:], sys.modules["__main__"] = saved


def main_module(path: str) -> types.ModuleType:
    """A fresh `__main__` for the script at `path`, with the attributes python gives it."""
    main = types.ModuleType("__main__")
    # (__cached__ and __builtins__ through __dict__: ModuleType does not declare them)
    main.__file__ = path
    main.__dict__["__cached__"] = None
    main.__loader__ = SourceFileLoader("__main__", path)
    main.__dict__["__builtins__"] = builtins  # the module, as in python's __main__ (not a dict)
    main.__annotations__ = {}
    return main


def run_main(path: str, main: types.ModuleType) -> int:
    """Run the script at (absolute) `path` in the module `main`; its exit code."""
    try:
        with io.open_code(path) as file:  # as python reads it: bytes, its coding line obeyed
            source = file.read()
        exec(compile(source, path, "exec"), main.__dict__)
        return 0
    except SystemExit as exc:
        return exit_code(exc.code)
    except KeyboardInterrupt:
        print(f"opgraph run: {Path(path).name} interrupted", file=sys.stderr)
        return 130
    except BaseException:
        # As Python reports an uncaught error: from the script's first frame (not this
        # command's; none for a SyntaxError, which shows the line itself).
        kind, error, tb = sys.exc_info()
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        traceback.print_exception(kind, error, tb)
        return 1


def wait_for_threads(running: set[threading.Thread], script: str, code: int) -> int:
    """Wait, as python does before its atexit handlers, for the threads the script started and
    did not make daemons (those it started start more: wait for them too); its exit code, or
    130 if Ctrl-C stops the wait."""
    try:
        while threads := [
            thread
            for thread in threading.enumerate()
            if thread not in running and not thread.daemon and thread.is_alive()
        ]:
            for thread in threads:
                thread.join()
    except KeyboardInterrupt:
        print(f"opgraph run: {Path(script).name} interrupted", file=sys.stderr)
        return 130
    return code


def end_forked_child(code: int) -> None:
    """End a process the script forked (`os.fork()`) when it reaches the script's end, as
    python would end it: it has no server thread to serve with, and leaving through the
    server's `with` would wait on that thread."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed by the script, or a reader gone
            pass
    os._exit(code & 0xFF)


def exit_code(code: object) -> int:
    """The status `sys.exit(code)` gives: None is 0, an int itself, anything else printed, 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
