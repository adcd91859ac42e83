"""The viewer page against hostile traces: a recording someone sent, a script publishing to a
hub, a link pointing the page at a foreign stream. Trace data is never read as HTML or run as
script, events whose fields have the wrong type are rejected (with the reason in the status
bar) before they change anything, and the page connects to another stream than its own
server's only when the user chooses to.

Real parts throughout: Debian's chromium, the real tracing server, hub and replay server, a
real publisher websocket, and a small stand-in server (viewer_support.StreamServer) that
serves the page with a strict Content-Security-Policy or plays a foreign stream.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from urllib.parse import quote

import msgpack
import pytest
from conftest import page_problem
from playwright.sync_api import expect
from viewer_support import STATIC, StreamServer
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from opgraph import Engine
from opgraph.server.replay import ReplayServer
from opgraph.server.server import TraceServer

expect.set_options(timeout=15_000)

# Each payload, if it ever ran, would count itself in window.__pwned (or open a dialog).
PWN = "window.__pwned=(window.__pwned||0)+1"
IMG = f'<img src=x onerror="alert(1);{PWN}">'
SCRIPT = f"<script>{PWN}</script>"
SVG = f'"><svg onload="{PWN}">'
JS = f"javascript:{PWN}"
FRAME = f'\'><iframe src="javascript:{PWN}"></iframe>'
PAYLOADS = [IMG, SCRIPT, SVG, JS, FRAME]

# What the page needs and no more: its own scripts, styles, icon and stream.
STRICT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    page = context.new_page()
    page.dialogs = []
    page.warnings = []
    page.errors = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda m: record_console(page, m))
    # Every violation of a Content-Security-Policy the page reports, for the CSP tests.
    page.add_init_script(
        "window.violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => violations.push(`${e.effectiveDirective} ${e.blockedURI}`));"
    )
    yield page
    assert_clean(page)
    context.close()
    assert page.errors == [], f"the page reported errors: {page.errors}"


def record_console(page, message) -> None:
    if message.type == "warning":
        page.warnings.append(message.text)
    # A refused connection is expected where a test makes one (and says so).
    expected = ("WebSocket connection", "Content Security Policy")
    if message.type == "error" and not any(text in message.text for text in expected):
        page.errors.append(message.text)


def assert_clean(page) -> None:
    """Nothing of the payloads ran or became an element."""
    page.wait_for_timeout(200)  # an <img onerror> would fire by now
    assert page.dialogs == [], f"a payload opened a dialog: {page.dialogs}"
    assert page.evaluate("window.__pwned") is None, "a payload ran"
    assert page.locator("img, svg, iframe, object, embed").count() == 0
    assert page.evaluate("[...document.scripts].map(s => s.getAttribute('src'))") == ["page.js"]


# --- hostile traces ------------------------------------------------------------------------


def hello(**fields) -> dict:
    return {
        "type": "hello",
        "seq": 0,
        "protocol": "opgraph",
        "version": 1,
        "session": SCRIPT,
        "engine": SVG,
        "ops": {IMG: FRAME, "add": JS},
        **fields,
    }


def forward(seq: int, id_, parents=(), op=None, label="", data=1.0, **extra) -> dict:
    event = {"type": "forward", "seq": seq, "id": id_, "op": op, "parents": list(parents)}
    return {**event, "data": data, "label": label, **extra}


def valid_events() -> list[dict]:
    """Well-typed events whose strings are all payloads: shown, as text."""
    leaves = [forward(k + 1, k, label=payload) for k, payload in enumerate(PAYLOADS)]
    n = len(PAYLOADS)
    return [
        *leaves,
        forward(n + 1, n, op=IMG, parents=[0, 1], label=SVG, data=2.0, const=[3.0]),
        {"type": "run", "seq": n + 2, "state": "start", "source": IMG, "ops": {SCRIPT: SVG}},
        forward(n + 3, n + 1, op=SCRIPT, parents=[n], label=JS),
        {"type": "label", "seq": n + 4, "id": 1, "label": FRAME},
    ]


# Ill-typed events, each with the reason the page gives for rejecting it. Their strings are
# payloads too, in the very fields that reached innerHTML before.
INVALID = [
    (forward(20, IMG, label="string id"), "'forward' event: 'id' must be a non-negative integer"),
    (forward(21, 50, parents=[SVG]), "'forward' event (id 50): 'parents' must be a list of"),
    (forward(22, 51, data=IMG), "'forward' event (id 51): 'data' must be a number"),
    (forward(23, 52, const=[SCRIPT]), "'forward' event (id 52): 'const' must be a list of numbers"),
    (forward(24, 53, label=[IMG]), "'forward' event (id 53): 'label' must be a string"),
    (forward(25, 54, op={"x": IMG}), "'forward' event (id 54): 'op' must be nil or a string"),
    (forward(26, -1, label="negative"), "'forward' event: 'id' must be a non-negative"),
    (forward(27, 55, label="x" * 20_000), "'forward' event (id 55): 'label' must be a string of"),
    (forward(IMG, 56), "'forward' event (id 56): 'seq' must be a non-negative integer"),
    ({"type": "backward", "seq": 28, "id": 0, "grad": SCRIPT}, "'backward' event (id 0): 'grad'"),
    ({"type": "data", "seq": 29, "id": 0, "data": IMG}, "'data' event (id 0): 'data' must be"),
    ({"type": "label", "seq": 30, "id": 0, "label": 7}, "'label' event (id 0): 'label' must be"),
    ({"type": "run", "seq": 31, "state": "start", "ops": {IMG: 1}}, "'run' event: 'ops' must be"),
]
END = "the-end"


def hostile_events(invalid: bool = True) -> list[dict]:
    """hello, the valid payload events, the invalid ones, and a last node labelled END."""
    bad = [event for event, _ in INVALID] if invalid else []
    return copy.deepcopy([hello(), *valid_events(), *bad, forward(40, 60, label=END)])


def pack(events: list[dict]) -> bytes:
    return b"".join(msgpack.packb(event) for event in events)


def wait_for_label(page, label: str) -> None:
    page.wait_for_function(
        "label => [...document.querySelectorAll('#node-list tbody tr')]"
        ".some(r => r.dataset.label === label)",
        arg=label,
    )


def check_shown_as_text(page, engine: str = SVG) -> None:
    """Every payload that the page shows is there as text: in the list, the details, the
    links between nodes, the overview's groups and the status bar."""
    labels = page.eval_on_selector_all(
        "#node-list tbody tr", "rows => rows.map(r => r.cells[1].textContent)"
    )
    assert labels[: len(PAYLOADS)] == [IMG, FRAME, SVG, JS, FRAME]  # node 1 was relabelled
    ops = page.eval_on_selector_all(
        "#node-list tbody tr", "rows => rows.map(r => r.cells[2].textContent)"
    )
    assert ops[len(PAYLOADS) : len(PAYLOADS) + 2] == [f"{IMG} 3", SCRIPT]
    # the node made by op IMG, whose plugin is FRAME (hello's ops map)
    row = page.locator("#node-list tbody tr").nth(len(PAYLOADS))
    row.click()
    expect(page.locator("#details h2")).to_have_text(SVG)
    expect(page.locator("#details [data-field=op]")).to_have_text(IMG)
    expect(page.locator("#details [data-field=plugin]")).to_have_text(FRAME)
    links = page.locator("#details button[data-goto]")
    expect(links.nth(0)).to_contain_text(IMG)
    expect(links.nth(1)).to_contain_text(FRAME)  # node 1, relabelled by a `label` event
    # following a link shows that node
    links.nth(0).click()
    expect(page.locator("#details h2")).to_have_text(IMG)
    # the op a `run` brought, with its plugin
    page.locator("#node-list tbody tr").nth(len(PAYLOADS) + 1).click()
    expect(page.locator("#details [data-field=op]")).to_have_text(SCRIPT)
    expect(page.locator("#details [data-field=plugin]")).to_have_text(SVG)
    # the overview's group of op IMG
    page.evaluate(
        """op => {
            const v = opgraphViewer;
            v.selectGroup([...v.graph.bands().groups.values()].find(g => g.op === op));
        }""",
        IMG,
    )
    expect(page.locator("#details h2")).to_contain_text(IMG)
    expect(page.locator("#details [data-field=plugin]")).to_have_text(FRAME)
    # the engine's name, in the status bar
    expect(page.locator("#st-proto")).to_have_text(f"opgraph v1 · {engine}")


def check_rejections(page, count: int = len(INVALID)) -> None:
    rejected = page.locator("#st-rejected")
    expect(rejected).to_be_visible()
    expect(rejected).to_contain_text(f"{count} invalid events rejected")
    for _, reason in INVALID[:count]:
        assert any(reason in warning for warning in page.warnings), reason
    # none of them changed the graph: the valid nodes and END only
    ids = page.eval_on_selector_all("#node-list tbody tr", "rows => rows.map(r => r.dataset.id)")
    assert sorted(map(int, ids)) == [*range(len(PAYLOADS) + 2), 60]


def page_server() -> StreamServer:
    """A page to open recordings in, with no stream of its own."""
    return StreamServer(csp=STRICT_CSP)


# --- the entry paths -----------------------------------------------------------------------


def test_a_hostile_recording_opened_in_the_page(page, tmp_path):
    path = tmp_path / "hostile.ogtrace"
    path.write_bytes(pack(hostile_events()))
    with page_server() as server:
        page.goto(server.url + "?live=0")
        page.locator("#file").set_input_files(str(path))
        wait_for_label(page, END)
        check_rejections(page)
        check_shown_as_text(page)
        assert page.evaluate("violations") == []


def test_an_invalid_hello_refuses_the_whole_recording(page, tmp_path):
    path = tmp_path / "bad-hello.ogtrace"
    bad_hello = hello(session=["not", "a", "string"], engine=IMG)
    path.write_bytes(pack([bad_hello, forward(1, 0, label=IMG)]))
    with page_server() as server:
        page.goto(server.url + "?live=0")
        page.locator("#file").set_input_files(str(path))
        expect(page.locator("#notice")).to_contain_text("The stream's hello is invalid")
        expect(page.locator("#st-rejected")).to_contain_text("'hello' event: 'session' must be")
        expect(page.locator("#st-nodes")).to_have_attribute("data-count", "0")


def test_a_live_server_fed_hostile_labels_and_events(page):
    engine = Engine(name=SVG)
    with engine.serve(port=0) as server:
        page.goto(server.url)
        expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
        # through the engine: labels are whatever a program sets
        a = engine.value(2.0, label=IMG)
        b = engine.value(3.0, label=SCRIPT)
        c = a * b
        c.label = SVG
        server.flush()
        wait_for_label(page, SVG)
        page.locator("#node-list tbody tr").nth(2).click()
        expect(page.locator("#details h2")).to_have_text(SVG)
        expect(page.locator("#details button[data-goto]").nth(0)).to_contain_text(IMG)
        expect(page.locator("#st-proto")).to_have_text(f"opgraph v1 · {SVG}")
        # straight into the server's hub, past the engine: ill-typed events, as a broken or
        # malicious tracer would send them
        # (those whose fields other than the id are wrong)
        ill_typed = [copy.deepcopy(INVALID[k][0]) for k in (1, 2, 3, 4, 5, 7)]
        events = [dict(event, id=event["id"] + 100) for event in ill_typed]
        events.append(forward(0, 200, label=END))
        for event in events:
            event.pop("seq")
        server.call(lambda: server.hub.publish(events))
        server.flush()
        wait_for_label(page, END)
        expect(page.locator("#st-rejected")).to_contain_text("6 invalid events rejected")
        assert page.locator("#node-list tbody tr").count() == 4


def test_a_server_whose_hello_and_events_are_hostile(page):
    # the server's own hello (engine name, ops and their plugins) and events put straight
    # into its hub, as a server fed by a hostile tracer would send them
    server = TraceServer(engine_name=SVG, ops={IMG: FRAME}, port=0).start()
    with server:
        page.goto(server.url)
        expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
        events = hostile_events()[1:]
        for event in events:
            event.pop("seq", None)
        server.call(lambda: server.hub.publish(events))
        server.flush()
        wait_for_label(page, END)
        check_shown_as_text(page)
        # the string seq was replaced by the hub's, so one event fewer is ill-typed
        expect(page.locator("#st-rejected")).to_contain_text(f"{len(INVALID) - 1} invalid")


def test_a_hostile_publisher_on_a_hub(page):
    hub = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True).start()
    with hub:
        page.goto(hub.url)
        expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
        # A publisher may not send `run` (the hub makes its own, from the publisher's hello):
        # the ops that run brought come in the hello here, and reach the page in the hub's run.
        events = [e for e in hostile_events() if e["type"] != "run"]
        events[0]["ops"] = {**events[0]["ops"], SCRIPT: SVG}
        for event in events:
            event.pop("seq", None)
        valid = len(valid_events())  # the hello, then the well-typed events (less the run)
        with connect(hub.publish_url + "/publish", subprotocols=["opgraph.v1"]) as ws:
            for event in events[:valid]:  # one frame each: a hub may refuse a frame whole
                ws.send(msgpack.packb(event))
            hub.flush()
            wait_for_label(page, JS)
            # the hub renumbers ids in arrival order: the same ids as the run's here
            check_shown_as_text(page, engine="hub")
            try:  # then the ill-typed ones: a hub that checks them closes the connection
                for event in events[valid:]:
                    ws.send(msgpack.packb(event))
            except ConnectionClosed:
                pass
        hub.flush()
        # the page has applied, or rejected, all that the hub passed on
        page.wait_for_function("seq => opgraphViewer.lastSeq >= seq", arg=hub.hub.seq)
        ids = page.eval_on_selector_all(
            "#node-list tbody tr", "rows => rows.map(r => Number(r.dataset.id))"
        )
        assert ids[: len(PAYLOADS) + 2] == list(range(len(PAYLOADS) + 2))
        labels = page.eval_on_selector_all(
            "#node-list tbody tr", "rows => rows.map(r => r.cells[1].textContent)"
        )
        assert set(labels) <= {*PAYLOADS, END, ""}


def test_a_hostile_recording_served_by_replay(page, tmp_path):
    # The events are recorded 2 s into the run, so the page joins before they are replayed
    # and gets them as live events (a server that takes them as they are could not put
    # string ids in a snapshot).
    def paced(events):  # (and numbered one by one, as a recording must be)
        return [events[0], *({**e, "seq": i, "t": 2_000_000} for i, e in enumerate(events) if i)]

    # The reader stops at a recording's first invalid map (test_server_record.py), so the
    # recording holds the well-typed hostile events: their strings are the payloads.
    path = tmp_path / "hostile.ogtrace"
    path.write_bytes(pack(paced(hostile_events(invalid=False))))
    with ReplayServer(path, speed=1, port=0).start() as server:
        page.goto(server.url)
        expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
        assert server.replayed == 0, "the page joined too late to see the replay live"
        assert server.wait_done(10)
        server.flush()
        wait_for_label(page, END)
        check_shown_as_text(page)


# --- ?ws=: another stream only by the user's choice ------------------------------------------


def own_graph() -> bytes:
    own = {**hello(), "session": "own", "engine": "own", "ops": {"add": "arithmetic"}}
    return pack([own, forward(1, 0, label="own-a"), forward(2, 1, label="own-b")])


def test_a_ws_link_asks_before_connecting_to_a_foreign_stream(page):
    with StreamServer(pack(hostile_events())) as foreign, StreamServer(own_graph()) as own:
        asked = foreign.ws_url + "?q=" + quote(IMG)
        page.goto(own.url + "?ws=" + quote(asked, safe=""))
        # the page shows its own server's graph and names the other stream, as text
        wait_for_label(page, "own-b")
        prompt = page.locator("#ws-prompt")
        expect(prompt).to_be_visible()
        expect(prompt).to_contain_text("This link asks to connect to")
        expect(page.locator("#ws-prompt-url")).to_have_text(asked)
        assert foreign.connections == 0
        assert own.connections == 1
        # the user chooses it: the foreign graph replaces the own one, its URL stays shown
        page.locator("#ws-connect").click()
        expect(prompt).to_be_hidden()
        wait_for_label(page, END)
        expect(page.locator("#st-url")).to_have_text(f"stream: {asked} (not this page's server)")
        assert foreign.connections == 1
        check_rejections(page)
        check_shown_as_text(page)


def test_a_ws_link_can_be_declined(page):
    with StreamServer(pack(hostile_events())) as foreign, StreamServer(own_graph()) as own:
        page.goto(own.url + "?ws=" + quote(foreign.ws_url, safe=""))
        page.locator("#ws-dismiss").click()
        expect(page.locator("#ws-prompt")).to_be_hidden()
        wait_for_label(page, "own-b")
        expect(page.locator("#st-url")).to_be_hidden()
        assert foreign.connections == 0


@pytest.mark.parametrize("asked", [JS, "http://127.0.0.1:1/ws", IMG])
def test_a_ws_link_that_is_no_websocket_url_is_ignored(page, asked):
    with StreamServer(own_graph()) as own:
        page.goto(own.url + "?ws=" + quote(asked, safe=""))
        expect(page.locator("#notice")).to_contain_text("Ignored the link's ws= parameter")
        expect(page.locator("#ws-prompt")).to_be_hidden()
        wait_for_label(page, "own-b")


def test_a_foreign_stream_refused_by_the_content_security_policy_is_said_so(page):
    with (
        StreamServer(pack(hostile_events())) as foreign,
        StreamServer(own_graph(), csp=STRICT_CSP) as own,
    ):
        page.goto(own.url + "?ws=" + quote(foreign.ws_url, safe=""))
        wait_for_label(page, "own-b")
        page.locator("#ws-connect").click()
        conn = page.locator("#st-conn")
        expect(conn).to_have_attribute("data-state", "refused")
        expect(conn).to_contain_text("Content-Security-Policy does not allow connecting to")
        expect(conn).to_contain_text(foreign.ws_url)
        assert foreign.connections == 0


def test_a_foreign_opgraph_server_refuses_the_page_and_the_page_says_so(page):
    # An opgraph server only lets its own page read its trace (it checks the Origin), so a
    # link cannot make one page read another server's trace either.
    engine = Engine(name="elsewhere")
    with engine.serve(port=0) as elsewhere, StreamServer(own_graph()) as own:
        engine.value(1.0, label="secret")
        elsewhere.flush()
        page.goto(own.url + "?ws=" + quote(elsewhere.ws_url, safe=""))
        wait_for_label(page, "own-b")
        page.locator("#ws-connect").click()
        conn = page.locator("#st-conn")
        expect(conn).to_have_attribute("data-state", "unreachable")
        expect(conn).to_contain_text(f"could not connect to {elsewhere.ws_url}")
        expect(page.locator("#st-url")).to_contain_text(elsewhere.ws_url)
        expect(page.locator("#st-nodes")).to_have_attribute("data-count", "0")


# --- a strict Content-Security-Policy ------------------------------------------------------


def test_the_page_works_under_a_strict_content_security_policy(page):
    events = [
        hello(session="csp", engine="csp", ops={"mul": "arithmetic"}),
        forward(1, 0, label="a", data=2.0),
        forward(2, 1, label="b", data=3.0),
        forward(3, 2, op="mul", parents=[0, 1], label="c", data=6.0),
        {"type": "backward_begin", "seq": 4, "root": 2, "pass": 1},
        {"type": "backward", "seq": 5, "id": 2, "grad": 1.0},
        {"type": "backward", "seq": 6, "id": 1, "grad": 2.0},
        {"type": "backward", "seq": 7, "id": 0, "grad": 3.0},
        {"type": "backward_end", "seq": 8, "root": 2, "pass": 1},
    ]
    with StreamServer(pack(events), csp=STRICT_CSP) as server:
        response = page.goto(server.url)
        assert response.headers["content-security-policy"] == STRICT_CSP
        expect(page.locator("#st-conn")).to_have_attribute("data-state", "open")
        expect(page.locator("#st-pass")).to_have_text("backward pass 1: done, 3 steps")
        page.locator("#node-list tbody tr").nth(2).click()
        expect(page.locator("#details h2")).to_have_text("c")
        expect(page.locator("#details [data-field=plugin]")).to_have_text("arithmetic")
        page.keyboard.press("Home")  # stepping, the help, the overview: all scripted, no inline
        expect(page.locator("#step-info")).to_have_text("step 1/3")
        page.keyboard.press("?")
        expect(page.locator("#help")).to_be_visible()
        page.keyboard.press("Escape")
        page.select_option("#view-mode", "aggregate")
        expect(page.locator("#canvas")).to_have_attribute("data-view", "aggregate")
        assert page.evaluate("violations") == []


def test_index_html_has_no_inline_script_or_style():
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert re.findall(r"\son[a-z]+\s*=", html) == []  # onclick= and friends
    assert re.findall(r"\sstyle\s*=", html) == []
    assert "javascript:" not in html


def test_no_static_file_writes_html_from_strings():
    for path in Path(STATIC).glob("*.js"):
        source = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, f"{path.name} uses {sink}"


# --- the checks themselves, event by event -------------------------------------------------

CHECKS = [
    ({"type": "forward", "id": 0, "parents": [], "data": 1.0}, None),
    ({"type": "forward", "id": 0, "parents": [], "data": float("nan"), "op": None}, None),
    ({"type": "forward", "id": 2**53, "parents": [], "data": 1.0}, "'id' must be"),
    ({"type": "forward", "id": 1.5, "parents": [], "data": 1.0}, "'id' must be"),
    ({"type": "forward", "id": True, "parents": [], "data": 1.0}, "'id' must be"),
    ({"type": "forward", "id": 0, "data": 1.0}, "'parents' is missing"),
    ({"type": "forward", "id": 0, "parents": [], "data": None}, "'data' must be a number"),
    ({"type": "forward", "id": 0, "parents": [0.5], "data": 1.0}, "'parents' must be"),
    ({"type": "forward", "id": 0, "parents": [], "data": 1.0, "op": "x" * 201}, "'op' must be"),
    ({"type": "node", "id": 0, "parents": [], "data": 1.0, "grad": "1"}, "'grad' must be"),
    ({"type": "forward", "id": 3, "parents": [1, 3], "data": 1.0}, "cannot be its own parent"),
    ({"type": "backward_begin", "root": "0", "pass": 1}, "'root' must be"),
    ({"type": "snapshot_begin", "nodes": 1, "backward": {"pass": "1"}}, "'backward' must be"),
    ({"type": "dropped", "count": -3}, "'count' must be"),
    ({"type": "hello", "protocol": "opgraph", "version": 1, "ops": [1]}, "'ops' must be"),
    ({"type": "some_future_kind", "anything": {"x": [1]}}, None),
    ({"type": "some_future_kind", "seq": "1"}, "'seq' must be"),
    ({"type": 5}, "needs a string 'type'"),
    ([1, 2], "an event must be a map"),
]


@pytest.mark.parametrize("event, problem", CHECKS)
def test_problem_with(checks_page, event, problem):
    found = page_problem(checks_page, event)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
