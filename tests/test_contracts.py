"""opgraph/contracts.py: the Protocols are what the engine and the server really use.

pyright checks the types (pyrightconfig.json); these tests check, at run time, that a tracer
keeping only the `TracerHooks` contract gets every call the engine makes, and that opgraph's own
classes have every member of the contracts they keep, with the same parameters.
"""

import inspect

import pytest

import opgraph
from opgraph import Engine, detect_anomaly
from opgraph.contracts import TraceBuffer, TracedEngine, TracerHooks, TraceServing
from opgraph.trace import Tracer as BufferedTracer


def members(protocol: type) -> set[str]:
    """The names a Protocol declares (typing.get_protocol_members is Python 3.13+)."""
    names = {
        name
        for klass in protocol.__mro__
        if klass.__module__ == "opgraph.contracts"
        for name in [*vars(klass), *getattr(klass, "__annotations__", {})]
    }
    keep = {"__enter__", "__exit__"}
    return {n for n in names if not n.startswith("_") or n in keep}


class ContractOnly:
    """A tracer with the methods of the `TracerHooks` Protocol and nothing else: it records
    which the engine called."""

    def __init__(self):
        self.calls = []

    def forward(self, node):
        self.calls.append("forward")

    def relabel(self, node):
        self.calls.append("relabel")

    def backward_begin(self, root):
        self.calls.append("backward_begin")

    def backward(self, node):
        self.calls.append("backward")

    def backward_steps(self, nodes):
        self.calls.append("backward_steps")

    def backward_end(self, root):
        self.calls.append("backward_end")

    def backward_failed(self, root, nodes, error):
        self.calls.append("backward_failed")

    def touch(self, values):
        self.calls.append("touch")

    def end_step(self):
        self.calls.append("end_step")


def test_a_tracer_keeping_only_the_contract_gets_every_call_the_engine_makes():
    assert {n for n in vars(ContractOnly) if not n.startswith("_")} == members(TracerHooks)
    engine = Engine(entry_points=False)
    tracer = ContractOnly()
    engine.tracer = tracer
    x = engine.value(2.0, "x")
    y = x * x + 1  # forward, through the bound op functions
    y.label = "y"  # relabel
    y.backward()  # backward_begin, backward_steps, backward_end
    with detect_anomaly():
        (x * 3).backward()  # the checked pass reports step by step: backward
    z = x * x
    z.register_hook(lambda g: "not a gradient")
    with pytest.raises(opgraph.HookError):
        z.backward()  # backward_failed
    opgraph.touch([x])
    opgraph.step(engine)  # end_step
    assert set(tracer.calls) == members(TracerHooks)


@pytest.mark.parametrize(
    "protocol, make",
    [
        (TracerHooks, lambda: BufferedTracer(Engine(entry_points=False))),
        (TraceBuffer, lambda: BufferedTracer(Engine(entry_points=False))),
        (TracedEngine, lambda: Engine(entry_points=False)),
    ],
)
def test_opgraphs_classes_have_every_member_of_their_contracts(protocol, make):
    obj = make()
    for name in members(protocol):
        assert hasattr(obj, name), f"{type(obj).__name__} has no {name}"
        declared = inspect.getattr_static(protocol, name)
        if inspect.isfunction(declared):
            wanted = list(inspect.signature(declared).parameters)[1:]
            assert list(inspect.signature(getattr(obj, name)).parameters) == wanted, name


def test_the_engine_server_has_every_member_of_trace_serving():
    from opgraph.server.server import EngineServer

    server = EngineServer(Engine(entry_points=False), port=0)  # made, not started
    for name in members(TraceServing):
        assert hasattr(server, name), f"EngineServer has no {name}"
