"""Helpers shared by the engine's tests: a plugin made of given ops, and an engine with only
the given plugins (no installed ones), so that each test sees exactly the ops it registers.

Test modules import them (`from conftest import engine, plugin`); `new_engine` and
`make_plugin` are the same as fixtures.
"""

from __future__ import annotations

import types

import pytest

from opgraph import Composite, Engine, Op, hookimpl


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
