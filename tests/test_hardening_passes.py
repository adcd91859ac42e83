"""Hardening, second review (issue 17): backward passes and what they touch.

A. A pass started from a gradient hook over the nodes of the running pass is refused (it used
   to add to that pass's half-done grads: a wrong number); one over a separate graph runs.
B. Passes guard their nodes, not the process: overlapping passes of two threads take turns
   and give exact grads; a hook blocked on one graph stalls no pass over another; a hook may
   join a thread running backward on a separate graph; two threads whose hooks each
   backpropagate the other's graph get an error, not a deadlock; traced passes of one engine
   still reach the viewer one at a time.
C. A plugin row whose value_derivative disagrees with its derivative is refused.

Every wait on another thread is bounded, to detect a hang; nothing asserts a duration.
"""

from __future__ import annotations

import math
import sys
import textwrap
import threading
import time

import pytest
from conftest import engine, plugin

import opgraph
from opgraph import (
    Engine,
    Op,
    OpgraphError,
    PluginError,
    PluginLoadError,
    PluginLoadWarning,
    ReentrantBackwardError,
    Value,
    grad,
)
from opgraph.reverse import _waiting
from opgraph.trace import BACKWARD_BEGIN, BACKWARD_END, Tracer, records

BOUND = 30.0  # seconds: only ever reached when something hangs


def labelled_graph():
    """w -> h = w*w -> l1 = 2h and l2 = 3h: two losses sharing h and w (the issue's graph)."""
    w = Value(3.0, label="w")
    h = w * w
    h.label = "h"
    l1 = h * 2
    l1.label = "l1"
    l2 = h * 3
    l2.label = "l2"
    return w, h, l1, l2


class Worker(threading.Thread):
    """A thread running `job`, keeping its exception to report in the main thread."""

    def __init__(self, job, name: str = "worker"):
        super().__init__(name=name, daemon=True)
        self.job, self.error, self.finished = job, None, threading.Event()

    def run(self):
        try:
            self.job()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.finished.set()

    def joined(self) -> Worker:
        self.join(BOUND)
        assert not self.is_alive(), f"{self.name} hangs"
        return self


def wait_until(condition, what: str) -> None:
    """Poll `condition` (a state another thread reaches) until true; fail after BOUND."""
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.001)


def waiting_for_a_pass(thread: threading.Thread) -> bool:
    """Whether `thread` waits in backward() for another thread's pass to end."""
    return thread.ident in _waiting


# ---------------------------------------------------------------------------------------------
# A. Re-entrant passes from a hook


def test_a_pass_from_a_hook_over_the_running_pass_nodes_is_refused_and_changes_nothing():
    w, h, l1, l2 = labelled_graph()
    w.grad = 1.0  # a grad from an earlier pass, which must survive
    handle = l1.register_hook(lambda g: l2.backward())
    with pytest.raises(ReentrantBackwardError) as info:
        l1.backward()
    message = str(info.value)
    assert isinstance(info.value, OpgraphError)
    assert "backward() of node 'l2' (op 'mul')" in message
    assert "backward() of node 'l1' (op 'mul')" in message
    assert "share 2 nodes: node 'h' (op 'mul'), node 'w'" in message
    assert "opgraph.grad()" in message  # what to do instead
    assert (w.grad, h.grad, l1.grad, l2.grad) == (1.0, 0.0, 0.0, 0.0)  # nothing half-added
    handle.remove()
    # The right answer, never the 48 the nested pass gave: two passes, one after the other.
    w.grad = 0.0
    l1.backward()
    l2.backward()
    assert w.grad == 30.0 and h.grad == 5.0


def test_grad_from_a_hook_over_the_running_pass_nodes_is_right():
    # The alternative the error names: grad() reads and writes no .grad.
    w, h, l1, l2 = labelled_graph()
    seen = []
    l1.register_hook(lambda g: seen.append(grad(l2, [w])[0].data))
    l1.backward()
    assert seen == [18.0] and w.grad == 12.0 and l2.grad == 0.0


def test_a_pass_from_a_hook_over_a_separate_graph_runs():
    w, h, l1, _ = labelled_graph()
    x = Value(5.0, label="x")
    y = x * x
    other = Engine(entry_points=False, name="other")
    z = other.value(2.0)
    q = z * 4

    def separate_passes(g):
        y.backward()
        q.backward()

    l1.register_hook(separate_passes)
    l1.backward()
    assert (w.grad, x.grad, z.grad) == (12.0, 10.0, 4.0)
    l1.backward()  # again: each pass adds its own
    assert (w.grad, x.grad, z.grad) == (24.0, 20.0, 8.0)


def test_zero_grad_from_a_hook_over_the_running_pass_is_refused():
    w, h, l1, l2 = labelled_graph()
    l1.register_hook(lambda g: l2.zero_grad())
    with pytest.raises(ReentrantBackwardError, match=r"zero_grad\(\) of node 'l2'.*'l1'"):
        l1.backward()
    assert w.grad == 0.0


def test_a_compiled_backward_from_a_hook_over_the_running_pass_parameters_is_refused():
    w = Value(3.0, label="w")
    compiled = opgraph.compile(lambda x: x * w, 2.0)
    compiled(2.0)
    loss = w * w
    loss.label = "loss"
    handle = loss.register_hook(lambda g: compiled.backward())
    with pytest.raises(ReentrantBackwardError, match=r"compiled .*backward\(\).*'loss'.*'w'"):
        loss.backward()
    assert w.grad == 0.0
    handle.remove()
    loss.backward()
    compiled.backward()
    assert w.grad == 6.0 + 2.0


# ---------------------------------------------------------------------------------------------
# B. Threads


def mlp_loss(V, seed: int):
    """A small network's loss (a few hundred nodes) and its parameters."""
    params = [V(((seed * 7 + i * 13) % 17) / 17 - 0.5) for i in range(40)]
    total = V(0.0)
    for k in range(8):
        hidden = [
            (params[j] * (k / 8) + params[j + 20] * 0.3 + 0.1).tanh() for j in range(0, 20, 2)
        ]
        total = total + sum(h * params[j + 1] for j, h in zip(range(0, 20, 2), hidden, strict=True))
    return total, params


def test_overlapping_passes_of_two_threads_take_turns_and_give_exact_grads():
    loss, params = mlp_loss(Value, 1)
    other = sum(p * p * 0.5 for p in params)  # a second loss over the same parameters
    loss.backward()
    other.backward()
    expected = [p.grad for p in params]  # one pass, then the other
    loss.zero_grad()
    other.zero_grad()

    # The first pass stays in a hook until the second one, started meanwhile, waits for it:
    # they do overlap.
    in_hook = threading.Event()
    second = Worker(lambda: in_hook.wait(BOUND) and other.backward(), "second")

    def hold(g):
        in_hook.set()
        wait_until(lambda: waiting_for_a_pass(second), "the second pass waits")

    loss.register_hook(hold)
    first = Worker(loss.backward, "first")
    first.start()
    second.start()
    assert first.joined().error is None and second.joined().error is None
    assert [p.grad for p in params] == expected


@pytest.mark.parametrize("same_engine", [True, False], ids=["same engine", "two engines"])
def test_a_hook_blocked_on_one_graph_does_not_stall_a_pass_over_another(same_engine):
    engine_a = Engine(entry_points=False, name="a")
    engine_b = engine_a if same_engine else Engine(entry_points=False, name="b")
    x = engine_a.value(2.0)
    a_root = x * x
    in_hook, release = threading.Event(), threading.Event()

    def blocked(g):
        in_hook.set()
        release.wait(BOUND)

    a_root.register_hook(blocked)
    a = Worker(a_root.backward, "a")
    a.start()
    try:
        assert in_hook.wait(BOUND)
        y = engine_b.value(5.0)
        b_root = y * 3  # a two-node pass
        b = Worker(b_root.backward, "b")
        b.start()
        assert b.finished.wait(BOUND), "the pass over the other graph waited for the hook"
        assert b.error is None and y.grad == 3.0
        assert a.is_alive() and not a.finished.is_set()  # A is still inside its hook
    finally:
        release.set()
    assert a.joined().error is None and x.grad == 4.0


def test_a_hook_that_joins_a_thread_running_backward_on_a_separate_graph_completes():
    w, h, l1, _ = labelled_graph()
    x = Value(5.0)
    y = x * x
    inner: list[Worker] = []

    def join_a_pass(g):
        worker = Worker(y.backward, "inner")
        inner.append(worker)
        worker.start()
        worker.join(BOUND)

    l1.register_hook(join_a_pass)
    outer = Worker(l1.backward, "outer")
    outer.start()
    assert outer.joined().error is None
    assert not inner[0].is_alive() and inner[0].error is None
    assert w.grad == 12.0 and x.grad == 10.0


def test_two_threads_whose_hooks_backpropagate_each_others_graph_get_an_error_not_a_hang():
    wa, wb = Value(2.0, label="wa"), Value(3.0, label="wb")
    ha, hb = wa * wa, wb * wb
    ra, rb = ha * 2, hb * 3
    ra.label, rb.label = "ra", "rb"
    into_a, into_b = ha * 5, hb * 7  # sharing the nodes of the other thread's pass
    into_a.label, into_b.label = "into_a", "into_b"
    both_inside = threading.Barrier(2)

    def hook_then(target):
        def hook(g):
            both_inside.wait(BOUND)  # both passes are running now
            target.backward()

        return hook

    ra.register_hook(hook_then(into_b))
    rb.register_hook(hook_then(into_a))
    a, b = Worker(ra.backward, "a"), Worker(rb.backward, "b")
    a.start()
    b.start()
    a.joined(), b.joined()
    failed = [t for t in (a, b) if t.error is not None]
    assert len(failed) == 1, (a.error, b.error)
    error = failed[0].error
    assert isinstance(error, ReentrantBackwardError) and "wait forever" in str(error)
    names = {"'ra'", "'rb'", "'into_a'", "'into_b'"}
    assert sum(name in str(error) for name in names) == 3  # its own two passes, the other's
    # The failed pass added nothing; the other one and the pass its hook ran added theirs.
    if a.error is None:  # a: ra (d/dwa = 4 wa), then into_b (d/dwb = 14 wb); b: nothing
        assert (wa.grad, wb.grad, hb.grad, rb.grad) == (8.0, 42.0, 7.0, 0.0)
    else:
        assert (wb.grad, wa.grad, ha.grad, ra.grad) == (18.0, 20.0, 5.0, 0.0)


def test_traced_passes_of_one_engine_reach_the_viewer_one_at_a_time():
    traced = Engine(entry_points=False, name="traced")
    tracer = Tracer(traced)
    tracer.attach()
    try:
        x, y = traced.value(2.0), traced.value(3.0)
        ra, rb = x * x, y * y  # separate graphs, one tracer
        second = Worker(rb.backward, "second")
        started = threading.Event()

        def hold(g):
            started.set()
            wait_until(lambda: waiting_for_a_pass(second), "the second traced pass waits")

        ra.register_hook(hold)
        first = Worker(ra.backward, "first")
        tracer.drain()
        first.start()
        assert started.wait(BOUND)
        second.start()
        assert first.joined().error is None and second.joined().error is None
        passes = [
            (kind, root)
            for kind, _, root, *_ in records(tracer.drain())
            if kind in (BACKWARD_BEGIN, BACKWARD_END)
        ]
        assert passes == [
            (BACKWARD_BEGIN, ra.id),
            (BACKWARD_END, ra.id),
            (BACKWARD_BEGIN, rb.id),
            (BACKWARD_END, rb.id),
        ]
    finally:
        tracer.detach()


# ---------------------------------------------------------------------------------------------
# C. A value_derivative that disagrees with the derivative


def cube(value_derivative):
    return Op(
        "cube", lambda a: a**3, lambda out, a: (3 * a * a,), value_derivative=value_derivative
    )


def test_a_value_derivative_that_disagrees_is_refused_naming_op_and_plugin():
    wrong = plugin("cubes", cube(lambda out, a: (2 * a,)))
    with pytest.raises(PluginError, match="value_derivative disagrees with its derivative") as info:
        engine(wrong)
    assert (info.value.plugin, info.value.op) == ("cubes", "cube")
    message = str(info.value)
    assert "plugin 'cubes', op 'cube'" in message and "on Values" in message
    # Registered at run time: refused, and the engine keeps its ops.
    e = engine()
    with pytest.raises(PluginError, match="'cube'"):
        e.register(wrong)
    assert "cube" not in e.ops and "cubes" not in e.plugin_names()
    # The right row is accepted and gives the right derivatives (12 and 6x = 12 at 2).
    right = engine(plugin("cubes", cube(lambda out, a: (3 * a * a,))))
    x = right.value(2.0)
    (slope,) = grad(x.cube(), [x], create_graph=True)
    assert slope.data == 12.0 and grad(slope, [x])[0].data == 12.0


def test_partials_given_for_the_wrong_inputs_are_refused():
    # a * b^2: d/da = b^2, d/db = 2ab; the value_derivative swaps them
    swapped = Op(
        "mulsq",
        lambda a, b: a * b * b,
        lambda out, a, b: (b * b, 2 * a * b),
        value_derivative=lambda out, a, b: (2 * a * b, b * b),
    )
    with pytest.raises(PluginError, match="'mulsq'.*partial for input 1 of 2"):
        engine(plugin("swapped", swapped))


def test_a_value_derivative_wrong_only_for_a_fixed_argument_is_refused():
    # `x ** 3` calls it with the exponent as a plain number: there it says 2x
    def value_derivative(out, a, b):
        if isinstance(b, Value):
            return (b * a ** (b - 1), out * a.log())
        return (2 * a, 0.0)

    power = Op(
        "power",
        lambda a, b: a**b,
        lambda out, a, b: (b * a ** (b - 1), out * math.log(a)),
        static=(1,),
        value_derivative=value_derivative,
    )
    with pytest.raises(PluginError, match="'power'.*value_derivative disagrees"):
        engine(plugin("powers", power))


def installed_plugin(tmp_path, monkeypatch, source: str):
    """A plugin installed as pip would: its module and a dist-info with its entry point."""
    (tmp_path / "opgraph_cubes.py").write_text(textwrap.dedent(source))
    info = tmp_path / "opgraph_cubes-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: opgraph-cubes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[opgraph]\ncubes = opgraph_cubes\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OPGRAPH_PLUGINS", "cubes")
    monkeypatch.delenv("OPGRAPH_STRICT_PLUGINS", raising=False)
    monkeypatch.delitem(sys.modules, "opgraph_cubes", raising=False)


WRONG_CUBES = """
    from opgraph import Op, hookimpl

    @hookimpl
    def register_ops(register):
        register(Op("cube", lambda a: a**3, lambda out, a: (3 * a * a,),
                    value_derivative=lambda out, a: (2 * a,)))
"""


def test_an_installed_plugin_with_a_disagreeing_value_derivative_is_left_out(tmp_path, monkeypatch):
    installed_plugin(tmp_path, monkeypatch, WRONG_CUBES)
    with pytest.warns(PluginLoadWarning, match=r"'cube'.*value_derivative disagrees"):
        e = Engine(name="with-installed")
    assert "cube" not in e.ops and "mul" in e.ops
    (failure,) = e.failed_plugins()
    assert failure.name == "cubes" and failure.distribution == "opgraph-cubes"
    with pytest.raises(PluginLoadError, match=r"'cube'.*value_derivative disagrees"):
        Engine(name="strict", strict_plugins=True)
