"""opgraph's pytest plugin: fixtures for testing op plugins, three lines per op.

Loaded in every pytest run once opgraph is installed (the `pytest11` entry point), so it
stays cheap: importing it creates no engine and loads no plugin; that happens only when a
test asks for a fixture. Name your plugins in the pytest configuration:

    [tool.pytest.ini_options]
    opgraph_plugins = ["opgraph_trig"]

or override the `opgraph_plugins` fixture in a conftest.py. Then:

    def test_sin(check_op):
        check_op("sin", domain=(-3, 3))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest

INI_NAME = "opgraph_plugins"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI_NAME,
        type="linelist",
        default=[],
        help="opgraph plugins for the opgraph_engine fixture: importable names, "
        "'module' or 'module:attribute'",
    )


def load_plugin(spec: str) -> Any:
    """Import a plugin named 'package.module' or 'package.module:attribute'."""
    module_name, _, attribute = spec.strip().partition(":")
    try:
        plugin = importlib.import_module(module_name)
        for part in attribute.split(".") if attribute else ():
            plugin = getattr(plugin, part)
    except Exception as exc:
        # Fails the tests that use the fixture, with this message instead of a traceback.
        pytest.fail(
            f"{INI_NAME}: cannot import plugin {spec!r}: {type(exc).__name__}: {exc}",
            pytrace=False,
        )
    return plugin


@pytest.fixture
def opgraph_plugins(request: pytest.FixtureRequest) -> list[Any]:
    """The plugins to register on `opgraph_engine`: from the `opgraph_plugins` ini option.

    Override this fixture (in a conftest.py or a test module) to return plugin objects.
    """
    return [load_plugin(spec) for spec in request.config.getini(INI_NAME)]


@pytest.fixture
def opgraph_engine(opgraph_plugins: list[Any]) -> Any:
    """A fresh engine with the built-in ops and your plugins, and no installed plugins.

    Every test gets its own, so nothing a test registers or traces leaks into another.
    Plugins are strict: a plugin that fails to load is an error, not a warning.
    """
    from opgraph import Engine

    return Engine(plugins=opgraph_plugins, entry_points=False, name="pytest", strict_plugins=True)


@pytest.fixture
def check_op(opgraph_engine: Any) -> Callable[..., Any]:
    """`check_op(name, points=..., eps=..., rtol=..., atol=..., domain=...)` on opgraph_engine.

    Raises (failing the test) with the worst mismatch between the op's derivative and
    central finite differences, and the inputs that produced it.
    """
    from opgraph.testing import check_op as check

    def check_on_engine(name: str, points: Any = None, **options: Any) -> Any:
        __tracebackhide__ = True  # a failure points at the test's line, not at opgraph
        return check(opgraph_engine, name, points, **options)

    return check_on_engine
