"""opgraph/trace/serving.py: the engine's one gateway to `opgraph.server` is typed. `_server()`
gives the server's modules as `ServerModules`, whose Protocols say what the engine calls of
them, and `from_environment` says what OPGRAPH_TRACE starts. pyright checks the types; these
tests check, at run time, that the real modules keep those Protocols (the same parameters)
and that OPGRAPH_TRACE starts what `from_environment` declares, on loopback."""

from __future__ import annotations

import inspect
import typing

import pytest

from opgraph import Engine
from opgraph.contracts import TraceServing
from opgraph.server.publisher import Publisher
from opgraph.server.server import TraceServer
from opgraph.trace import serving


def declared(protocol: type) -> dict[str, list[str]]:
    """The methods a Protocol declares, and their parameters after `self`."""
    return {
        name: list(inspect.signature(member).parameters)[1:]
        for name, member in vars(protocol).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def test_the_gateway_gives_the_server_modules_with_the_calls_the_engine_makes():
    hints = typing.get_type_hints(serving.ServerModules)
    modules = serving._server()
    assert isinstance(modules, serving.ServerModules) and set(hints) == {"server", "publisher"}
    for field, protocol in hints.items():
        module = getattr(modules, field)
        assert module.__name__ == f"opgraph.server.{field}"
        for name, parameters in declared(protocol).items():
            assert list(inspect.signature(getattr(module, name)).parameters) == parameters, name


def test_from_environment_says_what_it_starts():
    names = {**vars(serving), "Publisher": Publisher, "TraceServing": TraceServing}
    names["Engine"] = Engine  # (the names serving.py imports for pyright only)
    hints = typing.get_type_hints(serving.from_environment, globalns=names)
    assert hints["return"] == TraceServing | Publisher | None
    assert typing.get_type_hints(serving._server, globalns=names)["return"] is serving.ServerModules


def test_opgraph_trace_1_starts_a_server_keeping_trace_serving(monkeypatch):
    monkeypatch.setenv("OPGRAPH_TRACE", "1")
    monkeypatch.setenv("OPGRAPH_TRACE_PORT", "0")
    server = serving.from_environment(Engine(name="gateway", entry_points=False))
    assert server is not None and not isinstance(server, Publisher)
    with server:
        assert all(hasattr(server, name) for name in ("url", "flush", "pause", "touch"))
        assert server.url.startswith("http://127.0.0.1:")


def test_opgraph_trace_ws_starts_a_publisher(monkeypatch):
    with TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True) as hub:
        hub.start()
        monkeypatch.setenv("OPGRAPH_TRACE", hub.publish_url)
        publisher = serving.from_environment(Engine(name="gateway", entry_points=False))
        assert isinstance(publisher, Publisher)
        try:
            assert publisher.wait_connected(timeout=30)
        finally:
            publisher.close()


@pytest.mark.parametrize("setting", ["", "0", "off"])
def test_opgraph_trace_off_starts_nothing(monkeypatch, setting):
    monkeypatch.setenv("OPGRAPH_TRACE", setting)
    assert serving.from_environment(Engine(name="gateway", entry_points=False)) is None
