"""Helpers shared by the tests.

The engine's: a plugin made of given ops, and an engine with only the given plugins (no
installed ones), so that each test sees exactly the ops it registers. Test modules import
them (`from conftest import engine, plugin`); `new_engine` and `make_plugin` are the same as
fixtures.

The viewer's: `browser` (Debian's chromium, one per test module) and `page` (a fresh page
that fails the test if the page reports an error). A module that needs another page (the
page's own policy in force, dialogs recorded) defines its own `page` fixture.

The markers (registered in pyproject.toml; `scripts/test --fast` runs the tests with none of
them): a test that starts Chromium, a process or a trace server (its code, its fixtures' or
the code of tests/ it calls names Playwright, `subprocess` or a server) is marked `browser`,
`subprocess` or `server` here, automatically; a file whose every test installs or is slow
says so in its `pytestmark`.

The work tree's: an audit hook refuses, in every test, a write under docs/ (tracked files)
unless OPGRAPH_UPDATE_DOC_IMAGES=1 asks to refresh the screenshots there (`WroteUnderDocs`).
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import types
from pathlib import Path

import msgpack
import pytest
from viewer_support import VIEWPORT, launch, load_module, page_error

from opgraph import Composite, Engine, Op, hookimpl

# Ctrl-C: the tests of `opgraph run`, `serve` and `replay` send SIGINT to a process as a
# terminal does to a foreground one. A test run started in the background by a shell without
# job control (`cmd &` in a script) ignores SIGINT, and its processes would inherit that and
# never stop; a handler, unlike "ignore", is not inherited by a new program.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def plugin(name: str, *ops: Op | Composite, replace: bool = False) -> types.ModuleType:
    """A plugin module named `name` whose register_ops registers `ops`."""
    module = types.ModuleType(name)

    @hookimpl
    def register_ops(register):
        for op in ops:
            register(op, replace=replace)

    module.register_ops = register_ops
    return module


def engine(*plugins, **options) -> Engine:
    """An engine with the built-ins and `plugins`, but no installed (entry-point) plugins."""
    return Engine(plugins=plugins, entry_points=False, **options)


@pytest.fixture
def new_engine():
    return engine


@pytest.fixture
def make_plugin():
    return plugin


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    # bypass_csp: the viewer tests wait with string predicates, which Playwright runs with
    # eval, forbidden by the page's Content-Security-Policy; test_viewer_csp.py and
    # test_viewer_groups.py run the page under that policy.
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if page_error(m) else None)
    yield page
    context.close()
    assert errors == [], f"the page reported errors: {errors}"


@pytest.fixture(scope="module")
def checks_page(browser):
    """A blank page with the viewer's msgpack.js and validate.js loaded: `page_problem` asks
    it what the page's validation says of an event."""
    page = browser.new_page()
    page.goto("about:blank")
    load_module(page, "msgpack.js", ["decode"], "msgpack")
    load_module(page, "validate.js", ["problemWith"], "validate")
    yield page
    page.close()


def page_problem(checks_page, event: dict) -> str | None:
    """What the page's validate.js says of `event`, sent as msgpack bytes: None if valid."""
    return checks_page.evaluate(
        "data => validate.problemWith(msgpack.decode(new Uint8Array(data)))",
        list(msgpack.packb(event)),
    )


def throwaway_environment(folder: Path) -> tuple[Path, Path]:
    """A virtual environment in `folder` that sees this one's packages (opgraph, pip,
    setuptools, pytest) but installs into its own site-packages, so that what a test installs
    there never reaches the environment running the tests, even when the run is cut short.
    Returns its python and its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([python, "-c", where], text=True).strip())
    # Its own site-packages first, then this environment's (with its .pth files).
    outer = sysconfig.get_paths()["purelib"]
    (site / "_opgraph_tests_outer.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    return python, site


# --- markers -------------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
# The names whose use marks a test: what starts a process, Chromium or a trace server.

# --- threads ------------------------------------------------------------------------------

THREAD_WAIT = 10  # seconds: a bounded wait that only a hang (or a bug) exceeds


@pytest.fixture
def tight_switching():
    """Switch threads every microsecond, so that threads certainly interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def in_threads(*jobs):
    """Run the jobs in threads started together; return what each returned or raised. A
    thread still running after a bounded wait fails the test (a hang)."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def run_job(i, job):
        barrier.wait(THREAD_WAIT)
        try:
            results[i] = job()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            results[i] = exc

    threads = [threading.Thread(target=run_job, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(4 * THREAD_WAIT)
        assert not thread.is_alive(), "a thread hung"
    return results


USES = {
    "subprocess": {"subprocess", "create_subprocess_exec", "create_subprocess_shell"},
    "browser": {"sync_playwright", "async_playwright"},
    # a trace server on loopback, or a websocket client or server of the tests' own
    "server": {
        "serve",
        "serve_engine",
        "TraceServer",
        "ReplayServer",
        "StreamServer",
        "receive_run",
        "Publisher",
        "open_ws",
        "connect_reader",
        "websockets",
    },
}


def code_names(code: types.CodeType) -> set[str]:
    """The global and attribute names a function's code uses, its nested functions' too."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= code_names(const)
    return names


def uses(function, wanted: set[str], seen: set) -> bool:
    """Whether `function`, or a function or class of tests/ it names, uses a `wanted` name."""
    function = getattr(getattr(function, "hypothesis", None), "inner_test", function)
    function = inspect.unwrap(function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen or not code.co_filename.startswith(str(TESTS)):
        return False
    seen.add(code)
    names = code_names(code)
    if names & wanted:
        return True
    scope = getattr(function, "__globals__", {})
    for name in names:
        found = scope.get(name)
        members = vars(found).values() if isinstance(found, type) else [found]
        if any(callable(member) and uses(member, wanted, seen) for member in members):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        functions = [getattr(item, "function", None)]
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures is not None:
            functions += [d[-1].func for d in fixtures.name2fixturedefs.values() if d]
        for marker, wanted in USES.items():
            seen: set = set()
            if any(f is not None and uses(f, wanted, seen) for f in functions):
                item.add_marker(marker)


# --- the work tree -----------------------------------------------------------------------

DOCS = TESTS.parent / "docs"
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class WroteUnderDocs(AssertionError):
    """A test opened a file under docs/ for writing without OPGRAPH_UPDATE_DOC_IMAGES=1."""


def refuse_writes_under_docs(event: str, args: tuple) -> None:
    """An audit hook: a test run leaves docs/ (tracked files) as it found it; screenshots go
    to the test's tmp_path unless OPGRAPH_UPDATE_DOC_IMAGES=1 asks to refresh docs/img."""
    if event != "open" or os.environ.get("OPGRAPH_UPDATE_DOC_IMAGES") == "1":
        return
    path, mode, flags = args
    writes = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & WRITES
    if not writes or isinstance(path, int):
        return
    where = Path(os.path.abspath(os.fsdecode(path)))
    if where.is_relative_to(DOCS):
        raise WroteUnderDocs(
            f"a test wrote {where}: tests write into tmp_path, and only"
            " OPGRAPH_UPDATE_DOC_IMAGES=1 lets them refresh docs/"
        )


sys.addaudithook(refuse_writes_under_docs)
