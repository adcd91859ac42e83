"""Helpers shared by the tests.

The engine's: a plugin made of given ops, and an engine with only the given plugins (no
installed ones), so that each test sees exactly the ops it registers. Test modules import
them (`from conftest import engine, plugin`); `new_engine` and `make_plugin` are the same as
fixtures.

The viewer's: `browser` (Debian's chromium, one per test module) and `page` (a fresh page
that fails the test if the page reports an error). A module that needs another page (the
page's own policy in force, dialogs recorded) defines its own `page` fixture.
"""

from __future__ import annotations

import types

import pytest
from viewer_support import VIEWPORT, launch, page_error

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
