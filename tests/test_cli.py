"""The `opgraph` command line as a user meets it: --help of every command shows the
defaults, errors are one line (a traceback only with --debug), `export` needs no --chrome,
and `watch` says when nothing is serving at its URL."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import types

import pytest

from opgraph import Engine, OpgraphError
from opgraph.cli import COMMANDS, build_parser, main


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_shows_its_defaults(command, capsys):
    text = help_of(command, capsys)
    for action in subparsers()[command]._actions:
        default = action.default
        if default is None or isinstance(default, bool) or default == argparse.SUPPRESS:
            continue
        assert str(default) in text, f"opgraph {command} --help: {action.dest} = {default!r}"
    assert "--debug" in text


@pytest.mark.parametrize(
    "command, expected",
    [
        ("serve", ["--port PORT port (0: any free port) (default: 8765)", "(default: 100000)"]),
        ("replay", ["(default: 1.0)", "(default: 8765)", "address to bind (default: 127.0.0.1)"]),
        ("watch", ["(default: ws://127.0.0.1:8765/ws)", "summary lines (default: 1.0)"]),
        ("demo", ["training steps (100)", "(1337)"]),
    ],
)
def test_help_names_port_speed_and_interval_defaults(command, expected, capsys):
    text = help_of(command, capsys)
    for words in expected:
        assert words in text
    assert "(default: None)" not in text and "(default: False)" not in text


def record(path) -> None:
    engine = Engine(name="recorded", entry_points=False)
    with engine.serve(port=0, record=path):
        x = engine.value(2.0, label="x")
        (x * x + 1).backward()


def test_export_defaults_to_chrome_and_still_accepts_the_flag(tmp_path, capsys):
    path = tmp_path / "run.ogtrace"
    record(path)
    assert main(["export", str(path), str(tmp_path / "plain.json")]) == 0
    assert main(["export", "--chrome", str(path), str(tmp_path / "flag.json")]) == 0
    assert "wrote" in capsys.readouterr().out
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain == json.loads((tmp_path / "flag.json").read_text())
    assert plain["traceEvents"]


@pytest.fixture
def failing_command(monkeypatch):
    """An `opgraph fail` command whose run raises the error the test puts in `raised`."""
    raised: list[BaseException] = []
    module = types.ModuleType("opgraph_test_failing_command")
    module.add_arguments = lambda parser: None

    def run(args):
        raise raised[0]

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(COMMANDS, "fail", (module.__name__, "fail on purpose"))
    monkeypatch.delenv("OPGRAPH_DEBUG", raising=False)
    return raised


@pytest.mark.parametrize(
    "error, line",
    [
        (OpgraphError("plugin 'x' failed\n  badly"), "opgraph: error: plugin 'x' failed badly\n"),
        (
            FileNotFoundError(2, "No such file or directory", "run.ogtrace"),
            "opgraph: error: [Errno 2] No such file or directory: 'run.ogtrace'\n",
        ),
    ],
)
def test_errors_are_one_line_without_a_traceback(failing_command, capsys, error, line):
    failing_command.append(error)
    assert main(["fail"]) == 1
    assert capsys.readouterr().err == line


def test_debug_shows_the_traceback(failing_command, monkeypatch):
    failing_command.append(OpgraphError("broken"))
    with pytest.raises(OpgraphError):
        main(["--debug", "fail"])
    with pytest.raises(OpgraphError):
        main(["fail", "--debug"])
    monkeypatch.setenv("OPGRAPH_DEBUG", "1")
    with pytest.raises(OpgraphError):
        main(["fail"])


def free_port() -> int:
    with socket.socket() as probe:  # bound, then freed: nobody listens there
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_watch_says_nothing_is_serving_and_keeps_retrying():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPGRAPH_DEBUG"}
    watcher = subprocess.run(
        [sys.executable, "-m", "opgraph", "watch", f"127.0.0.1:{port}"]
        + ["--interval", "0.3", "--duration", "1.4"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert watcher.returncode == 0, watcher.stderr
    url = f"ws://127.0.0.1:{port}/ws"
    assert watcher.stderr == (
        f"opgraph watch: nothing is serving at {url}: connection refused; "
        f"retrying every 5s at most (Ctrl-C to stop)\n"
    )  # once, not at every retry
    lines = watcher.stdout.splitlines()
    assert lines[0] == f"watching {url}"
    summaries = lines[1:]
    assert len(summaries) >= 3
    assert all(line.endswith("not connected: connection refused, retrying") for line in summaries)


def modules_loaded_by(code: str) -> dict:
    """What a fresh interpreter has imported after running `code` (json of sys.modules)."""
    probe = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "OPGRAPH_DEBUG"},
    )
    assert probe.returncode == 0, probe.stderr
    return {"stdout": probe.stdout, "modules": json.loads(probe.stdout.splitlines()[-1])}


HEAVY = ("websockets", "msgpack", "graphviz", "opgraph.server")


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(HEAVY)]


def test_plugins_loads_neither_the_server_nor_graphviz():
    run = modules_loaded_by("from opgraph.cli import main; main(['plugins'])")
    assert "opgraph.plugins.arithmetic" in run["stdout"]  # it did list the plugins
    assert heavy(run["modules"]) == []


def test_help_lists_every_command_without_importing_any():
    run = modules_loaded_by(
        "from opgraph.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    for name in COMMANDS:
        assert f"    {name} " in run["stdout"]
    assert [m for m in run["modules"] if m.startswith("opgraph.commands.")] == []
    assert heavy(run["modules"]) == []


def test_a_commands_help_imports_only_that_command():
    run = modules_loaded_by(
        "from opgraph.cli import main\ntry:\n    main(['export', '--help'])\n"
        "except SystemExit:\n    pass"
    )
    assert "the JSON file to write" in run["stdout"]
    commands = [m for m in run["modules"] if m.startswith("opgraph.commands.")]
    assert commands == ["opgraph.commands.export"]


def test_version(capsys):
    from opgraph import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"opgraph {__version__}\n"


def test_the_engine_reaches_the_server_only_through_trace():
    """opgraph's library modules import opgraph.server in one place: trace/serving.py's
    _server()."""
    import ast
    from pathlib import Path

    import opgraph

    def imports_the_server(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            # `.server` from opgraph/, `..server` from opgraph/trace/
            if any(n.startswith(("opgraph.server", ".server", "..server")) for n in names):
                return True
        return False

    package = Path(opgraph.__file__).parent
    modules = [*package.glob("*.py"), *package.glob("trace/*.py")]
    importers = sorted(p.relative_to(package).as_posix() for p in modules if imports_the_server(p))
    assert importers == ["trace/serving.py"]
    demo = modules_loaded_by("import opgraph.demo")["modules"]
    assert [m for m in demo if m.startswith(("websockets", "msgpack", "opgraph.server"))] == []


def test_run_on_a_busy_port_says_how_to_get_a_free_one(tmp_path):
    # A second `opgraph run` while the first still serves: the port is taken.
    script = tmp_path / "train.py"
    script.write_text("print('never runs')\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "opgraph", "run", "--port", str(port), str(script)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert f"cannot serve the trace on 127.0.0.1:{port}" in result.stderr
    assert "choose another with --port PORT, or --port 0" in result.stderr
    assert "never runs" not in result.stdout
