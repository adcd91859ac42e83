"""Hub mode, the hub's side: publishing scripts' connections to `/publish` (`receive_run`).

Each script (publisher.py's `Publisher`, or any client that speaks docs/protocol.md) is one
run: the hub renumbers its ids and seqs into its own stream (`_Run`), so viewers stay
connected across many short runs and see their nodes side by side. Frames are acknowledged
as they arrive, checked whole (events.py), and applied by one task in turns with every other
publisher's (`_Intake`); what is received and not applied yet is bounded (backpressure).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import weakref
from array import array
from collections import deque
from collections.abc import Generator
from typing import Any

import msgpack

from .events import (
    MAX_INT,
    MAX_OPS,
    MAX_PARENTS,
    MAX_STRUCTURES,
    InvalidEvent,
    Steps,
    check_event,
    check_hello,
    close_reason,
    forget_oldest,
    packed,
    u4s,
    u8s,
)
from .hub import Hub
from .protocol import CLOSE_INVALID, CLOSE_POLICY, CLOSE_TEXT_FRAME

# The hub's intake: frames from every publisher are applied by one task, in turns (one frame
# of each publisher waits at a time, so turns are fair), CHUNK maps at a time, giving the loop
# back after each SLICE seconds of work: the page, pings, viewers and other publishers never
# wait long behind a big frame. A publisher that asked for acks (`acks` in its hello) is told
# how many of its frames the hub received as each one arrives (docs/protocol.md).
CHUNK = 250
SLICE = 0.01
# Bytes received from publishers and not applied yet: per publisher, and over all of them
# (opgraph's `Publisher` keeps at most its WINDOW unacknowledged: well below).
RUN_INTAKE = 4 << 20
TOTAL_INTAKE = 64 << 20
# The longest array and the largest map a publisher's event may hold (a node's parents, a
# hello's ops): msgpack refuses a longer one as it reads its length, before making its items
# (16 MiB of nils would be 16 million Nones, about 130 MB, then refused by the checks).
DECODE_LIMITS = {"max_array_len": MAX_PARENTS, "max_map_len": MAX_OPS}


async def receive_run(hub: Hub, ws: Any) -> None:
    """Receive one publishing script's events and feed them, renumbered, to `hub`.

    Frames are read as they come, acknowledged as received (if the publisher asked), and
    applied in their turn (see _Intake): a script that has sent everything may exit while the
    hub is still applying it. What a publisher has received and not applied is bounded
    (RUN_INTAKE bytes, TOTAL_INTAKE over all): past it, the hub reads on once some is applied.
    Each frame is checked whole (events.py) before anything of it is applied: a frame with
    one bad map changes nothing and closes the connection with 1007, naming the map.
    """
    conn = _Connection(hub, ws)
    intake = _intake(hub)
    intake.connections.add(conn)
    applier = asyncio.ensure_future(conn.apply_all(intake))
    try:
        async for message in ws:
            if isinstance(message, str):
                await ws.close(CLOSE_TEXT_FRAME, "publish binary msgpack frames")
                break
            if applier.done():  # refused: what follows is not read
                break
            await conn.receive(message, intake)
    finally:
        conn.ended = True
        conn.arrived.set()
        try:
            await asyncio.shield(applier)  # everything received is applied
        except asyncio.CancelledError:
            applier.cancel()
            raise
        finally:
            intake.pending -= len(conn.frames)
            intake.held -= sum(map(len, conn.frames))
            if conn.run is not None:
                conn.run.end()
            hub.closes[getattr(ws, "close_code", None)] += 1


class _Connection:
    """One publisher connection at the hub: its run (after its hello), and the frames it
    received and has not applied yet."""

    def __init__(self, hub: Hub, ws: Any):
        self.hub, self.ws = hub, ws
        self.run: _Run | None = None
        self.frames: deque[bytes] = deque()  # received, not applied yet
        self.held = 0  # their bytes
        self.received = 0  # frames received
        self.accepted = 0  # frames checked and accepted (acknowledged, when asked)
        self.acks: bool | None = None  # the publisher asked to be told (None: no hello yet)
        self.arrived = asyncio.Event()  # a frame arrived, or the connection ended
        self.applied = asyncio.Event()  # a frame was applied
        self.ended = False
        # what the checks of `structure` and `step` know of the stream (a script may have
        # numbered some before: it reconnected)
        self.checks = Steps(continuing=True)

    async def receive(self, message: bytes, intake: _Intake) -> None:
        """Take a frame in, then wait while too much is held (it is acknowledged once checked,
        in its turn: see `steps`)."""
        if self.acks is None:
            self.acks = _asks_acks(message)
        self.frames.append(message)
        self.held += len(message)
        intake.pending += 1
        intake.held += len(message)
        self.received += 1
        self.arrived.set()
        while self.frames and (self.held > RUN_INTAKE or intake.held > TOTAL_INTAKE):
            self.applied.clear()
            await self.applied.wait()

    async def apply_all(self, intake: _Intake) -> None:
        """Apply the frames received, in order, each in its turn; stop at a refused one."""
        while True:
            while not self.frames:
                if self.ended:
                    return
                self.arrived.clear()
                await self.arrived.wait()
            message = self.frames[0]
            try:
                refused = await intake.apply(self.steps(message))
            finally:
                self.frames.popleft()
                self.held -= len(message)
                intake.pending -= 1
                intake.held -= len(message)
                intake.space()
            if refused is not None:
                if not self.ended:
                    await self.ws.close(*refused)
                else:  # the script is gone: say it here, or nobody would
                    print(f"opgraph: refused a frame of a publisher: {refused[1]}", file=sys.stderr)
                intake.pending -= len(self.frames)
                intake.held -= sum(map(len, self.frames))
                self.frames.clear()
                return

    def steps(self, message: bytes) -> Generator[None, None, tuple[int, str] | None]:
        """Check a frame whole, then apply it, a chunk at a time; returns None, or the close
        code and reason that refuse it (then nothing of it was applied)."""
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, **DECODE_LIMITS)
        unpacker.feed(message)
        checked: list[dict] = []
        first = self.run is None
        hello = None  # the first frame's hello, checked
        index = 0
        while True:
            try:
                chunk = list(itertools.islice(unpacker, CHUNK))
            except ValueError as exc:
                if "exceeds max_" in str(exc):  # msgpack's words: "N exceeds max_array_len(M)"
                    return CLOSE_INVALID, _too_long(index, exc)
                return CLOSE_INVALID, "a publish frame must hold msgpack maps back to back"
            except Exception:
                return CLOSE_INVALID, "a publish frame must hold msgpack maps back to back"
            if not chunk:
                break
            if first and index == 0:
                head = chunk[0]
                if not isinstance(head, dict) or head.get("type") != "hello":
                    return CLOSE_POLICY, "a publisher must send an opgraph hello first"
                try:
                    hello = check_hello(head)
                except InvalidEvent as exc:
                    return CLOSE_INVALID, close_reason(exc)
                self.acks = head.get("acks") is True
                chunk, index = chunk[1:], 1
            try:
                for event in chunk:
                    checked.append(self._checked(event, index))
                    index += 1
            except InvalidEvent as exc:
                return CLOSE_INVALID, close_reason(exc)
            except _TooBig as exc:
                return CLOSE_POLICY, close_reason(exc)
            yield
        if first:
            if hello is None:  # an empty frame
                return CLOSE_POLICY, "a publisher must send an opgraph hello first"
            self.run = _Run(self.hub, hello)
        run = self.run
        assert run is not None  # (made from the first frame's hello)
        # Acknowledged once checked, before it is applied: a frame the hub acknowledged is
        # never refused later, so a script that saw every frame acknowledged lost nothing.
        self.accepted += 1
        if self.acks:
            # (msgpack is untyped: pyright reads packb's result off its pure-Python fallback,
            # whose pack() returns None when autoreset=False; packb's is always bytes)
            ack = msgpack.packb({"type": "ack", "frames": self.accepted})
            _send_soon(self.ws, ack)  # pyright: ignore[reportArgumentType]
        for start in range(0, len(checked), CHUNK):
            run.publish(checked[start : start + CHUNK])
            yield
        return None

    def _checked(self, event: Any, index: int) -> dict:
        event = check_event(event, index)
        self.checks.see(event, index)
        kind = event["type"]
        if kind == "forward":
            parents = event["parents"]
            size = 5 * len(parents) + len(event["label"]) + len(event.get("scope", ""))
            if len(parents) > 2:  # compact until applied: 8 bytes a parent, no int objects
                event["parents"] = array("q", parents)
        elif kind == "label":  # (the node's other parts are checked with its forward)
            size = len(event["label"])
        else:
            return event
        limit = self.hub.max_node_bytes
        if size > limit:
            raise _TooBig(
                f"event {index} ({kind}): the node takes {size:,} bytes, more than the hub "
                f"keeps per node ({limit:,}: 5 a parent, and its label and scope)"
            )
        return event


def _too_long(index: int, exc: ValueError) -> str:
    """The close reason for a map (the event at `index` or after) holding an array or a map
    longer than DECODE_LIMITS."""
    count, _, limit = str(exc).partition(" exceeds ")
    count = f"{int(count):,}" if count.isdigit() else count
    what = "an array" if "array" in limit else "a map"
    most = DECODE_LIMITS["max_array_len" if what == "an array" else "max_map_len"]
    return (
        f"event {index} or a later one holds {what} of {count} items, more than any event "
        f"may hold ({most:,})"
    )


class _TooBig(Exception):
    """A node larger than the hub keeps (`max_node_bytes`)."""


def _asks_acks(message: bytes) -> bool:
    """Whether the first map of a publisher's first frame (its hello) asks for acks."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(message)
    try:
        head = next(unpacker)
    except Exception:
        return False
    return isinstance(head, dict) and head.get("acks") is True


def _send_soon(ws: Any, frame: bytes) -> None:
    """Send `frame` on `ws` in the background; a closed connection is no error here."""
    transport = getattr(ws, "transport", None)
    if transport is not None and transport.is_closing():  # (asyncio would log each write)
        return

    async def send() -> None:
        try:
            await ws.send(frame)
        except Exception:  # the connection is gone: its handler reports how it ended
            pass

    task = asyncio.ensure_future(send())
    _sending.add(task)
    task.add_done_callback(_sending.discard)


_sending: set[asyncio.Task] = set()


class _Intake:
    """The frames waiting to be applied, in arrival order, and the task that applies them."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.loop = asyncio.get_running_loop()
        self.waiting: deque[tuple[Any, asyncio.Future]] = deque()
        self.wake = asyncio.Event()
        self.task = asyncio.ensure_future(self._work())
        self.pending = 0  # frames received from all publishers, not applied yet
        self.held = 0  # their bytes
        self.connections: weakref.WeakSet[_Connection] = weakref.WeakSet()

    def space(self) -> None:
        """Some bytes were applied: publishers that wait for room may read on."""
        for conn in self.connections:
            conn.applied.set()

    async def apply(self, steps: Any) -> Any:
        """Run generator `steps` (a frame's work, yielding between chunks) in its turn;
        returns what it returns."""
        future = self.loop.create_future()
        self.waiting.append((steps, future))
        self.wake.set()
        return await future

    async def _work(self) -> None:
        loop = self.loop
        while True:
            if not self.waiting:
                self.wake.clear()
                await self.wake.wait()
            budget = loop.time() + SLICE
            while self.waiting:
                steps, future = self.waiting.popleft()
                if future.cancelled():  # its connection went away before its turn
                    steps.close()
                    continue
                try:
                    while True:
                        next(steps)
                        if loop.time() >= budget:
                            await asyncio.sleep(0)  # the loop's other work goes first
                            budget = loop.time() + SLICE
                except StopIteration as done:
                    if not future.done():
                        future.set_result(done.value)
                except Exception as exc:  # given to the publisher's handler
                    if not future.done():
                        future.set_exception(exc)


def _intake(hub: Hub) -> _Intake:
    intake = getattr(hub, "intake", None)
    if intake is None or intake.loop is not asyncio.get_running_loop() or intake.task.done():
        intake = hub.intake = _Intake(hub)
    return intake


_runs = itertools.count(1)


class _Run:
    """One publishing script as the hub sees it: its name, clock offset, id map, open pass."""

    def __init__(self, hub: Hub, hello: dict):
        self.hub = hub
        self.source = _start_run(hub, hello)
        self.offset = hub.now_us() - hello.get("t", 0)  # the run's t + offset = the hub's t
        self.ids: dict[int, int] = {}  # the run's id -> the hub's id
        self.open_pass: tuple[int, int] | None = None  # (hub root, pass) begun, not ended
        # Steps: the hub numbers passes, steps and structures in its own stream. The run's
        # last passes -> the hub's; its structures -> (the hub's number, the last offset);
        # the ids of its latest values-only step -> the block of hub ids it was given
        # (run first, run last, hub first); the inputs of its latest structure, whose ids
        # stay mapped when the map is trimmed (a later step names them).
        self.passes: dict[int, int] = {}
        self.structures: dict[int, tuple[int, int]] = {}
        self.block: tuple[int, int, int] | None = None
        self.pinned: frozenset[int] = frozenset()
        self.in_use = 0  # the run's structure of its last step
        hub.publishers.add(self)

    def hub_id(self, run_id: int) -> int:
        mapped = self.ids.get(run_id)
        if mapped is None:
            block = self.block
            if block is not None and block[0] <= run_id <= block[1]:
                return block[2] + run_id - block[0]  # a node of the latest step
            mapped = self.ids[run_id] = self.hub.next_id
            self.hub.next_id += 1
        return mapped

    def new_pass(self, run_pass: int) -> int:
        """A pass the run begins: the hub's next number."""
        self.passes.pop(run_pass, None)
        return self.hub_pass(run_pass)

    def hub_pass(self, run_pass: int) -> int:
        """The hub's number of the run's pass `run_pass` (a new one for a pass not seen)."""
        mapped = self.passes.get(run_pass)
        if mapped is None:
            self.hub.next_pass += 1
            mapped = self.passes[run_pass] = self.hub.next_pass
            if len(self.passes) > 64:  # a step names its own pass, the last one
                del self.passes[next(iter(self.passes))]
        return mapped

    def structure(self, event: dict) -> dict:
        """A `structure` in the hub's numbers: its ids and inputs mapped id by id."""
        ids = u8s(event["ids"])
        inputs = u8s(event["inputs"])
        event["ids"] = packed(array("Q", [self.hub_id(id_) for id_ in ids]))
        event["inputs"] = packed(array("Q", [self.hub_id(id_) for id_ in inputs]))
        self.pinned = frozenset(inputs)
        self.hub.next_structure += 1
        last = u4s(event["offsets"])[-1]
        self.structures[event["structure"]] = (self.hub.next_structure, last)
        # as many as events.Steps knows, the same ones
        forget_oldest(self.structures, MAX_STRUCTURES, self.in_use)
        event["structure"] = self.hub.next_structure
        return event

    def step(self, event: dict) -> dict | None:
        """A `step` in the hub's numbers. The step that defined its structure names nodes
        the run announced; a later one's nodes get a fresh block of hub ids, as long as the
        structure's ids from the first (`offsets[-1] + 1`)."""
        number = event["structure"]
        if number not in self.structures:  # (events.Steps knows the same ones: not seen)
            return None
        self.in_use = number
        structure, last = self.structures[number] = self.structures.pop(number)  # kept last
        first = event["first"]
        if first in self.ids:
            event["first"] = self.ids[first]
        else:
            hub_first = self.hub.next_id
            self.hub.next_id += last + 1
            self.block = (first, first + last, hub_first)
            event["first"] = hub_first
        self.hub.next_step += 1
        event.update(step=self.hub.next_step, structure=structure)
        event["pass"] = self.hub_pass(event["pass"])
        return event

    def publish(self, events: list[dict]) -> None:
        """Renumber and publish a frame of checked events.

        A `dropped` map (the script lost events on the way) is not an event of the stream:
        every viewer is resynced instead, as when the hub itself loses events."""
        lost = sum(event["count"] for event in events if event["type"] == "dropped")
        renumbered = (_renumber(event, self) for event in events if event["type"] != "dropped")
        out = [event for event in renumbered if event is not None]
        if lost:
            self.hub.upstream_lost(lost)
        for event in out:
            if event["type"] == "backward_begin":
                self.open_pass = (event["root"], event["pass"])
            elif event["type"] == "backward_end" and self.open_pass == (
                event["root"],
                event["pass"],
            ):
                self.open_pass = None  # (the hub too ends only the pass that matches)
        self.hub.publish(out)
        if len(self.ids) > _trim_threshold(self.hub):
            self.trim()

    def trim(self) -> None:
        """Forget the ids of nodes the hub has forgotten (its `max_nodes`), so that the map
        stays bounded over a long run; such an id used again gets a new hub id, which
        viewers treat as a node they never saw."""
        nodes, pinned = self.hub.nodes, self.pinned
        self.ids = {run: hub for run, hub in self.ids.items() if hub in nodes or run in pinned}

    def end(self) -> None:
        """The script is gone: end its open pass (viewers would wait for it forever), then
        say the run ended."""
        self.hub.publishers.discard(self)
        now = self.hub.now_us()
        ending = []
        if self.open_pass is not None:
            root, pass_ = self.open_pass
            ending.append({"type": "backward_end", "root": root, "pass": pass_, "t": now})
        ending.append({"type": "run", "state": "end", "source": self.source, "t": now})
        self.hub.publish(ending)


def _trim_threshold(hub: Hub) -> int:
    # After a trim the map holds at most max_nodes ids (those of the hub's nodes); trimming
    # walks the whole map, so the next one waits for max_nodes / 4 new ids (1000 at least):
    # its cost per event stays small and the map below max_nodes * 1.25 (+ one frame).
    return hub.max_nodes + max(hub.max_nodes // 4, 1000)


def _start_run(hub: Hub, hello: dict) -> str:
    hub.runs += 1
    engine = hello.get("engine", "?")
    source = f"{engine}@{hello['pid']}" if "pid" in hello else f"run-{next(_runs)}"
    ops = hello.get("ops", {})
    hub.add_ops(ops)
    start = {"type": "run", "state": "start", "source": source, "engine": engine, "ops": ops}
    hub.publish([{**start, "t": hub.now_us()}])
    return source


def _renumber(event: dict, run: _Run) -> dict | None:
    """The checked event with the run's ids and times made the hub's."""
    event.pop("seq", None)
    if "t" in event:
        event["t"] = min(max(event["t"] + run.offset, 0), MAX_INT)
    kind = event["type"]
    if kind == "structure":  # (its `root` is an index, not an id)
        return run.structure(event)
    if kind == "step":
        return run.step(event)
    if kind == "backward_begin":  # passes too are numbered in the hub's stream
        event["pass"] = run.new_pass(event["pass"])
    elif kind == "backward_end":
        event["pass"] = run.hub_pass(event["pass"])
    elif kind == "forward":  # parents first: an unknown parent gets a smaller id
        ids, hub_id = run.ids, run.hub_id
        event["parents"] = [ids.get(p) or hub_id(p) for p in event["parents"]]
    for key in ("id", "root"):
        if key in event:
            event[key] = run.hub_id(event[key])
    return event
