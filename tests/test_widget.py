"""opgraph.widget(): the viewer in a notebook cell, streamed through the kernel's comm.

In a real kernel (ipykernel, driven as Jupyter drives it): the widget sends hello, a snapshot
and the events as binary comm buffers once its page says ready, loses nothing, and opens no
listening port.
In this process: the feed's life cycle (two widgets, a second engine, a cell run again,
closing). In Chromium: the bundled page code (the same modules the server serves) shows the
labels and grads of frames that a real hub made, fed through a comm-like model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import msgpack
import pytest
from jupyter_client.manager import start_new_kernel
from viewer_support import b64

import opgraph
from opgraph import Engine, ServerError, Value
from opgraph.nn import MLP
from opgraph.server import widget as widget_module
from opgraph.server.bundle import widget_esm

LISTENING = """
import psutil
def listening():
    sockets = psutil.Process().net_connections("all")
    return sorted({c.laddr for c in sockets if c.status == "LISTEN"})
"""

BUILD = """
a = engine.value(2.0, label="a"); b = engine.value(-3.0, label="b")
out = (a * b + 1.0).tanh(); out.label = "out"
out.backward()
assert w.flush()
"""


def _run(kc, code: str, timeout: float = 60) -> tuple[list[dict], list[dict]]:
    """Execute `code` in the kernel: its outputs, and every comm message the kernel sent
    meanwhile (the widget's frames, from the feed's thread, whatever their parent)."""
    msg_id = kc.execute(code)
    outputs, comms = [], []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        kind = msg["msg_type"]
        if kind == "comm_msg":
            comms.append(msg)
        elif msg["parent_header"].get("msg_id") == msg_id:
            if kind == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            if kind in ("stream", "execute_result", "display_data"):
                outputs.append(msg["content"])
            if kind == "status" and msg["content"]["execution_state"] == "idle":
                return outputs, comms


def _say(kc, comm_id: str, content: dict) -> None:
    """What the widget's page sends (anywidget's model.send): a custom comm message."""
    data = {"method": "custom", "content": content}
    kc.shell_channel.send(kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data}))


def _events(comms: list[dict]) -> list[dict]:
    unpacker = msgpack.Unpacker(raw=False)
    for msg in comms:
        assert msg["content"]["data"]["content"] == {"type": "frame"}
        for buffer in msg["buffers"]:
            unpacker.feed(bytes(buffer))
    return list(unpacker)


@pytest.mark.subprocess  # the kernel (conftest.py sees no subprocess call here)
def test_in_a_kernel_the_widget_streams_through_the_comm_and_opens_no_port():
    # "python3" is ipykernel's own kernel: this interpreter, the test's venv
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        setup = "import opgraph\nengine = opgraph.Engine(name='nb')\n" + LISTENING
        _run(kc, setup + "before = listening()")
        shown, comms = _run(kc, "w = opgraph.widget(engine)\nw")
        model_id = _model_id(shown)
        assert comms == []  # no page yet: nothing sent, nothing held
        _, comms = _run(kc, BUILD)  # built before the page is ready ("Run All")
        assert comms == []
        _say(kc, model_id, {"type": "ready", "view": "page-1"})
        _, first = _run(kc, "assert w.flush()")
        late = _events(first)  # a late page: hello, then the graph as a snapshot
        assert [e["type"] for e in late[:2]] == ["hello", "snapshot_begin"]
        assert {e["label"] for e in late if e["type"] == "node"} >= {"a", "b", "out"}
        assert late[-1]["type"] == "snapshot_end"
        # live: the events themselves (another graph: the same one again is a training step)
        _, comms = _run(kc, BUILD.replace(".tanh()", ".relu()"))
        live = _events(comms)
        kinds = [e["type"] for e in live]
        assert "forward" in kinds and "backward_begin" in kinds and "backward_end" in kinds
        seqs = [e["seq"] for e in live if "seq" in e and e["type"] != "snapshot_end"]
        assert seqs == list(range(late[-1]["seq"] + 1, late[-1]["seq"] + 1 + len(seqs)))
        grads = {e["id"]: e["grad"] for e in live if e["type"] == "backward"}
        assert len(grads) == 6 and grads[max(grads)] == 1.0  # a, b, a*b, 1.0, +, relu
        out, _ = _run(kc, "import json\nprint(json.dumps([w.stats(), listening() == before]))")
        stats, same_ports = json.loads(out[0]["text"])
        assert stats["viewer"]["dropped"] == 0 and stats["views"] == 1
        assert stats["frames"] == len(first) + len(comms)  # one comm message a frame
        assert same_ports  # the kernel listens where it did before: no port for the widget
        out, _ = _run(
            kc,
            "import threading\nn = threading.active_count()\nw.close()\n"
            "print(n - threading.active_count(), engine.tracer)",
        )
        assert out[0]["text"].split() == ["1", "None"]  # the feed's thread is gone
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.subprocess  # the kernel
def test_a_cell_run_again_after_its_page_said_gone_shows_the_graph_so_far():
    """JupyterLab and Notebook 7 clear a cell's outputs before they send its code, so the
    kernel may hear the earlier widget's page say "gone" before the cell runs again. The new
    widget takes over the engine's trace: its page gets the graph built before (a
    snapshot), not an empty trace (seen once in CI: a reloaded Notebook 7 page, the widget's
    cell run again, and no node shown)."""
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        _run(kc, "import opgraph\nengine = opgraph.Engine(name='nb')\nw = opgraph.widget(engine)")
        model_id = _model_id(_run(kc, "w")[0])
        _say(kc, model_id, {"type": "ready", "view": "page-1"})
        _run(kc, BUILD)
        _say(kc, model_id, {"type": "gone", "view": "page-1"})  # the outputs cleared
        shown, _ = _run(kc, "w2 = opgraph.widget(engine)\nw2")  # ... then the cell runs
        _say(kc, _model_id(shown), {"type": "ready", "view": "page-2"})
        _, comms = _run(kc, "assert w2.flush()")
        events = _events(comms)
        assert [e["type"] for e in events[:2]] == ["hello", "snapshot_begin"]
        assert {e["label"] for e in events if e["type"] == "node"} >= {"a", "b", "out"}
        out, _ = _run(kc, "print(w.comm is None, w2.feed is w.feed, engine.tracer is not None)")
        assert out[0]["text"].split() == ["True", "True", "True"]  # the earlier one closed
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _model_id(outputs: list[dict]) -> str:
    """The widget's model id in a cell's outputs (its view, as the page gets it)."""
    data = next(o["data"] for o in outputs if "data" in o)
    return data["application/vnd.jupyter.widget-view+json"]["model_id"]


def test_widgets_share_one_feed_per_engine_and_leave_nothing_behind():
    threads = threading.active_count()
    one, two = Engine(name="one"), Engine(name="two")
    a, b = opgraph.widget(one), opgraph.widget(one)
    c = opgraph.widget(two)
    assert a.feed is b.feed and a.feed is not c.feed
    assert threading.active_count() == threads + 2  # one loop thread per traced engine
    for w in (a, b):
        w._on_msg(w, {"type": "ready", "view": "p"}, [])
    assert len(a.feed.server.hub.viewers) == 2
    a.close()  # b still shows the trace
    assert one.tracer is not None and len(b.feed.server.hub.viewers) == 1
    b._on_msg(b, {"type": "gone", "view": "p"}, [])  # its cell was cleared: the hub lets go
    assert b.feed.server.hub.viewers == set()
    again = opgraph.widget(one)  # the cell run again: the earlier widget is closed ...
    assert b.comm is None and b.viewer is None
    assert again.feed is b.feed and not again.feed.server._closed  # ... its trace carries on
    # Run All: the new widget is made before the earlier page says "gone"; then it is closed
    again._on_msg(again, {"type": "ready", "view": "q"}, [])
    newer = opgraph.widget(one)
    assert again.comm is not None  # its page still shows it
    again._on_msg(again, {"type": "gone", "view": "q"}, [])
    assert again.comm is None and newer.feed.widgets == [newer]
    for w in (newer, c):
        w.close()
    assert one.tracer is None and two.tracer is None
    assert threading.active_count() == threads and widget_module._feeds == {}


def test_bad_widget_options_are_refused_with_a_reason():
    engine = Engine(name="opts")
    with pytest.raises(ServerError, match="opens no socket: port is an option of"):
        opgraph.widget(engine, port=0)
    w = opgraph.widget(engine, queue_limit=1000)
    try:
        with pytest.raises(ServerError, match="already has a widget made with other options"):
            opgraph.widget(engine, queue_limit=10)
    finally:
        w.close()
    with engine.serve(port=0):
        with pytest.raises(ServerError, match="is already traced"):
            opgraph.widget(engine)


def _frames_of_a_traced_graph(mlp: bool = False) -> list[bytes]:
    """What a widget sends its page for a small graph (or a scoped MLP's): hello, snapshot,
    then live events."""
    engine = Engine(name="page")
    w = opgraph.widget(engine)
    sent: list[bytes] = []
    w.send = lambda content, buffers=None: sent.extend(buffers or [])
    try:
        w._on_msg(w, {"type": "ready", "view": "p"}, [])
        if mlp:
            out = MLP(2, [4, 4, 1], engine=engine)([0.5, -1.0])
            assert isinstance(out, Value)  # (one output: a Value, not a list)
            out.backward()
        else:
            x = engine.value(0.5, label="x")
            y = (x * engine.value(4.0, label="k")).tanh()
            y.label = "y"
            y.backward()
        assert w.flush()
    finally:
        w.close()
    return sent


TWO = """
<!doctype html><html><head><title>notebook</title></head><body>
<div id="one"></div><div id="two"></div>
<script type="module">
import widget from "/widget.js";
window.listeners = { one: [], two: [] };
for (const name of ["one", "two"]) {
  const model = {
    get: (key) => ({ height: 400 })[key],
    on: (event, f) => window.listeners[name].push(f),
    off: () => {},
    send: () => {},
  };
  widget.render({ model, el: document.getElementById(name) });
}
window.deliver = (name, frames) => {
  const buffers = frames.map((b) => Uint8Array.from(atob(b), (c) => c.charCodeAt(0)).buffer);
  for (const f of window.listeners[name]) f({ type: "frame" }, buffers);
};
</script></body></html>
"""


def test_two_widgets_on_one_page_are_two_viewers_and_the_overview_worker_runs(page):
    frames = _frames_of_a_traced_graph(mlp=True)
    esm = widget_esm()
    page.route(
        "http://widget.test/**",
        lambda route: route.fulfill(
            body=esm if route.request.url.endswith("/widget.js") else TWO,
            content_type="text/javascript" if route.request.url.endswith(".js") else "text/html",
        ),
    )
    page.goto("http://widget.test/")
    page.wait_for_function("() => document.querySelectorAll('.opgraph-widget').length === 2")
    page.evaluate("(frames) => window.deliver('one', frames)", [b64(f) for f in frames])
    one, two = "#one .opgraph-widget", "#two .opgraph-widget"
    # scopes (L0/N1 ...): the overview, laid out by the worker the widget made from its bundle
    page.locator(f"{one} #st-nodes").filter(has_text="nodes").wait_for()
    page.locator(f"{one} #view-mode").select_option("aggregate")
    page.wait_for_function(
        f"() => document.querySelector('{one}').opgraphViewer.hview !== null", timeout=20_000
    )
    count = "(s) => document.querySelector(s).opgraphViewer.graph.size"
    assert page.evaluate(count, one) > 30 and page.evaluate(count, two) == 0
    assert page.locator(f"{two} #st-nodes").inner_text() == "0 nodes"  # ids found per widget


PAGE = """
<!doctype html><html><head><title>notebook</title></head><body><div id="cell"></div>
<script type="module">
import widget from "/widget.js";
const listeners = [];
window.sent = [];
const model = {
  get: (name) => ({ height: 600 })[name],
  on: (name, f) => listeners.push(f),
  off: (name, f) => listeners.splice(listeners.indexOf(f), 1),
  send: (message) => window.sent.push(message),
};
window.deliver = (frames) => {
  const buffers = frames.map((b) => {
    const bytes = Uint8Array.from(atob(b), (c) => c.charCodeAt(0));
    return new DataView(bytes.buffer);
  });
  for (const f of listeners) f({ type: "frame" }, buffers);
};
window.cleanup = widget.render({ model, el: document.getElementById("cell") });
</script></body></html>
"""


def _open_widget_page(page) -> None:
    """PAGE with the bundled widget, until its first message to the kernel."""
    esm = widget_esm()

    def serve(route):
        if route.request.url.endswith("/widget.js"):
            route.fulfill(body=esm, content_type="text/javascript")
        else:
            route.fulfill(body=PAGE, content_type="text/html")

    page.route("http://widget.test/**", serve)
    page.goto("http://widget.test/")
    page.wait_for_function("() => window.sent.length > 0")


def test_the_bundled_page_shows_labels_and_grads_of_the_comm_frames(page):
    frames = _frames_of_a_traced_graph()
    _open_widget_page(page)
    assert page.evaluate("window.sent")[0]["type"] == "ready"
    page.evaluate("(frames) => window.deliver(frames)", [b64(f) for f in frames])
    page.wait_for_function(
        "() => document.querySelector('.opgraph-widget').shadowRoot"
        ".querySelectorAll('#node-list tbody tr').length >= 4"
    )
    rows = page.evaluate(
        "() => [...document.querySelector('.opgraph-widget').shadowRoot"
        ".querySelectorAll('#node-list tbody tr')].map((r) => r.innerText)"
    )
    # id, label, op, data, grad: dy/dx = 4 (1 - tanh(2)^2), the labels and grads as text
    assert rows == [
        "0\tx\tleaf\t0.5\t0.2826",
        "1\tk\tleaf\t4\t0.03533",
        "2\t\t×\t2\t0.07065",
        "3\ty\ttanh\t0.964\t1",
    ]
    status = page.evaluate(
        "() => document.querySelector('.opgraph-widget').shadowRoot"
        ".getElementById('status').innerText"
    )
    assert "0 dropped" in status and "4 nodes" in status
    page.evaluate("window.cleanup()")  # the view goes away: the page says so
    assert page.evaluate("window.sent.map((m) => m.type)") == ["ready", "gone"]
    assert page.title() == "notebook"  # a widget leaves the notebook's title alone


def test_a_page_that_unloads_says_gone_and_one_shown_again_says_ready(page):
    """A reloaded notebook page never removes its widgets' views: the page says "gone" when
    it is hidden (the kernel cannot see it leave; Notebook 7's reload test shows the earlier
    widget then closes when its cell runs again), and "ready" if the browser shows it again
    from its back-forward cache. The events are made here; the reload is real there."""
    _open_widget_page(page)
    transition = "(kind) => window.dispatchEvent(new PageTransitionEvent(kind, {persisted: true}))"
    page.evaluate(transition, "pagehide")
    page.evaluate(transition, "pageshow")
    page.evaluate("window.cleanup()")  # the cell cleared: gone, and no more page events
    page.evaluate(transition, "pagehide")
    page.evaluate(transition, "pageshow")
    sent = page.evaluate("window.sent")
    assert [m["type"] for m in sent] == ["ready", "gone", "ready", "gone"]
    assert len({m["view"] for m in sent}) == 1  # one page, one view


def test_a_page_gone_while_the_cell_makes_the_next_widget_closes_the_earlier(monkeypatch):
    """Run All in JupyterLab: the kernel may handle the earlier page's "gone" while the cell
    that makes the next widget runs, after it looked for earlier widgets without a page and
    before it added the new one. The earlier widget is closed all the same, not left feeding
    a page that is gone (seen in 1 JupyterLab run of about 10)."""
    from opgraph.server import widget as ow

    engine = Engine(name="race")
    earlier = opgraph.widget(engine)
    earlier._on_msg(earlier, {"type": "ready", "view": "p"}, [])
    made = ow.TraceWidget.__init__

    def gone_meanwhile(self, *args, **kwargs):
        earlier._on_msg(earlier, {"type": "gone", "view": "p"}, [])
        made(self, *args, **kwargs)

    monkeypatch.setattr(ow.TraceWidget, "__init__", gone_meanwhile)
    newer = opgraph.widget(engine)
    monkeypatch.undo()
    try:
        assert earlier.comm is None and earlier.viewer is None  # closed, out of the hub
        assert newer.feed.widgets == [newer] and not newer.feed.server._closed
        assert engine.tracer is not None  # the newer widget still shows the trace
    finally:
        newer.close()
    assert engine.tracer is None and newer.feed.server._closed


def test_a_closed_widget_freed_by_the_collector_while_another_is_made_does_not_hang(
    monkeypatch,
):
    """ipywidgets closes a widget again when the collector frees it, and a collection may
    run at any allocation: here, while `opgraph.widget` holds its lock to start the next
    engine's feed. Seen once as a hung test run: the second close waited for that lock."""
    import gc

    from opgraph.server import server as server_module

    start = server_module.EngineServer.start

    def collect_first(self):
        gc.collect()  # the closed widget is freed here, inside the lock
        return start(self)

    engine = Engine(name="next")
    made: list = []
    thread = threading.Thread(target=lambda: made.append(opgraph.widget(engine)), daemon=True)
    gc.disable()  # no collection but the one inside the lock
    try:
        closed = opgraph.widget(Engine(name="freed"))
        closed.close()
        closed.cycle = closed  # garbage only the collector frees, as widgets' cycles are
        del closed
        monkeypatch.setattr(server_module.EngineServer, "start", collect_first)
        thread.start()
        thread.join(timeout=60)  # a bound for the hang, not a timing
    finally:
        gc.enable()
    assert not thread.is_alive(), "opgraph.widget() waited for its own lock"
    made[0].close()
    assert engine.tracer is None and widget_module._feeds == {}


def test_a_program_that_leaves_its_widget_open_ends_at_once_without_an_error():
    """A script (or a kernel shutting down) with a widget never closed: the feeds close at
    exit, so the widget the interpreter frees last does not wait for a stopped loop (it
    did: 10 s, then a TimeoutError printed from Widget.__del__)."""
    script = (
        "import opgraph\n"
        "from opgraph import Engine, Value\n"
        "engine = Engine(name='left')\n"
        "w = opgraph.widget(engine)\n"
        "x = engine.Value(2.0)\n"
        "(x * x).backward()\n"
        "print('made', engine.tracer is not None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "made True"
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
