"""What a valid event is: the one place that checks maps coming from outside the server.

Publishing scripts (`/publish`) and recordings (`.ogtrace` files) hand the server protocol
maps it did not make. Each map is checked here, by type and range, before anything is
applied: `check_hello` and `check_event` return a clean copy (only the fields this version
knows, numbers as the protocol says) or raise `InvalidEvent`, naming the map's index and
the field. The local tracer's events (`Hub.publish_traced`) are trusted and skip this.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any, NoReturn

from opgraph.errors import InvalidEvent
from opgraph.trace import MAX_LABEL, MAX_SCOPE

from .protocol import PROTOCOL, VERSION

# Integers (ids, seq, pass, t, pid) stay exact in a JavaScript number, which is how the
# browser viewer reads them; 2**53 microseconds are 285 years.
MAX_INT = 2**53 - 1
# Lengths of strings count Unicode code points (Python's len), as the page does (validate.js);
# the limits of labels and scope paths are the engine's (opgraph/trace/text.py), which makes every
# label and scope path fit where it is made: MAX_LABEL, MAX_SCOPE.
MAX_NAME = 200  # characters of an op, plugin, engine, session or run name
MAX_OPS = 4096  # entries of a hello's (or a run's) `ops` map
MAX_PARENTS = 65_536  # operands of one node
MAX_CONST = 1024  # constants of one node

# Steps (docs/protocol.md, "Steps"): a structure's nodes and inputs together, n + e, at most
# MAX_STEP_NODES; a stream's checks remember the sizes of its last MAX_STRUCTURES structures
# (the last defined or used; a `step` of an older one is refused as unknown).
MAX_STEP_NODES = 500_000
MAX_STRUCTURES = 1000

# The live kinds a publisher may send (`dropped`: events it made but could not send); a
# recording holds the live kinds and the hub's `run` markers.
LIVE_KINDS = (
    *("forward", "data", "label", "backward_begin", "backward", "backward_end"),
    *("structure", "step"),
)
PUBLISHED_KINDS = (*LIVE_KINDS, "dropped")
RECORDED_KINDS = (*LIVE_KINDS, "run")


class _Bad(Exception):
    """Raised by a field check; check_event adds the index, kind and field."""


def _shown(value: Any) -> str:
    """A short description of a bad value (it may be huge or hostile)."""
    if isinstance(value, bool | int | float):
        text = repr(value)
        return text if len(text) <= 24 else f"an integer of {len(text)} digits"
    if isinstance(value, str):
        return repr(value) if len(value) <= 24 else f"a string of {len(value)} characters"
    return f"a {type(value).__name__}"


# --- field checks: each returns the clean value or raises _Bad ------------------------------


def _int(value: Any, low: int = 0) -> int:
    if type(value) is not int:  # bool is an int subclass: refused too
        raise _Bad(f"must be an integer, got {_shown(value)}")
    if not low <= value <= MAX_INT:
        raise _Bad(f"must be an integer from {low} to 2**53-1, got {_shown(value)}")
    return value


def _real(value: Any) -> float:
    """A float64 (nan and inf included); an integer is taken as the float it rounds to."""
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)  # msgpack integers fit in 64 bits, always a finite float
    raise _Bad(f"must be a number, got {_shown(value)}")


def _text(value: Any, limit: int) -> str:
    if type(value) is not str:
        raise _Bad(f"must be a string, got {_shown(value)}")
    if len(value) > limit:
        raise _Bad(f"must be at most {limit} characters, got {len(value)}")
    return value


def _name(value: Any) -> str:
    return _text(value, MAX_NAME)


def _label(value: Any) -> str:
    return _text(value, MAX_LABEL)


def _scope(value: Any) -> str:
    return _text(value, MAX_SCOPE)


def _source(value: Any) -> str:
    return _text(value, 2 * MAX_NAME)  # "<engine>@<pid>"


def _op(value: Any) -> str | None:
    return None if value is None else _name(value)


def _pass(value: Any) -> int:
    return _int(value, low=1)


def _list(value: Any, limit: int) -> list:
    if type(value) is not list:
        raise _Bad(f"must be a list, got {_shown(value)}")
    if len(value) > limit:
        raise _Bad(f"must have at most {limit} entries, got {len(value)}")
    return value


def _parents(value: Any) -> list[int]:
    return [_int(p) for p in _list(value, MAX_PARENTS)]


def _consts(value: Any) -> list[float]:
    return [_real(c) for c in _list(value, MAX_CONST)]


def _ops(value: Any) -> dict[str, str]:
    if type(value) is not dict:
        raise _Bad(f"must be a map of op name to plugin name, got {_shown(value)}")
    if len(value) > MAX_OPS:
        raise _Bad(f"must have at most {MAX_OPS} ops, got {len(value)}")
    return {_name(name): _name(plugin) for name, plugin in value.items()}


def _state(value: Any) -> str:
    if value not in ("start", "end"):
        raise _Bad(f"must be 'start' or 'end', got {_shown(value)}")
    return value


def _bin(value: Any) -> bytes:
    if type(value) is not bytes:
        raise _Bad(f"must be a msgpack bin, got {_shown(value)}")
    return value


def _dtype(value: Any) -> str:
    if value != "f4":
        raise _Bad(f"must be 'f4' (or absent, for f8), got {_shown(value)}")
    return value


# --- the packed arrays of `structure` and `step` (little-endian, whatever the machine) -----


def _numbers(code: str, data: bytes) -> array:
    numbers = array(code)
    numbers.frombytes(data)
    if sys.byteorder == "big":
        numbers.byteswap()
    return numbers


def u8s(data: bytes) -> array:
    """The uint64 numbers of a bin (its length a multiple of 8)."""
    return _numbers("Q", data)


def u4s(data: bytes) -> array:
    """The uint32 numbers of a bin (its length a multiple of 4)."""
    return _numbers("I", data)


def reals(data: bytes, dtype: str | None = None) -> array:
    """The floats of a `step`'s `data` or `grad` (f8, or f4 when `dtype` says so)."""
    return _numbers("f" if dtype == "f4" else "d", data)


def packed(numbers: array) -> bytes:
    """`numbers` as the little-endian bin the protocol sends."""
    if sys.byteorder == "big":
        numbers = array(numbers.typecode, numbers)
        numbers.byteswap()
    return numbers.tobytes()


assert array("I").itemsize == 4 and array("Q").itemsize == 8  # (u4s, u8s)

# kind -> (required fields, optional fields), each field -> its check
_KINDS: dict[str, tuple[dict, dict]] = {
    "forward": (
        {"id": _int, "op": _op, "parents": _parents, "data": _real, "label": _label},
        {"const": _consts, "scope": _scope},
    ),
    "data": ({"id": _int, "data": _real}, {}),
    "label": ({"id": _int, "label": _label}, {}),
    "backward": ({"id": _int, "grad": _real}, {}),
    "backward_begin": ({"root": _int, "pass": _pass}, {}),
    "backward_end": ({"root": _int, "pass": _pass}, {"error": _label}),  # error: it failed
    "dropped": ({"count": _int}, {}),
    "run": ({"state": _state, "source": _source}, {"engine": _name, "ops": _ops}),
    "structure": (
        {"structure": _pass, "ids": _bin, "offsets": _bin, "inputs": _bin, "order": _bin}
        | {"root": _int},
        {},
    ),
    "step": (
        {"step": _pass, "structure": _pass, "first": _int, "pass": _pass}
        | {"data": _bin, "grad": _bin},
        {"dtype": _dtype},
    ),
}
_EVERY_KIND = {"seq": _int, "t": _int}  # optional in every live map
_HELLO = (
    {"protocol": _name, "version": _int},
    {"seq": _int, "session": _name, "engine": _name, "ops": _ops, "pid": _int, "t": _int},
)


def _fields(event: dict, kind: str, index: int, required: dict, optional: dict) -> dict:
    clean: dict[str, Any] = {"type": kind}
    field = ""
    try:
        for field, check in required.items():
            if field not in event:
                raise _Bad("is missing")
            clean[field] = check(event[field])
        for checks in (optional, _EVERY_KIND):
            for field, check in checks.items():
                if field in event:
                    clean[field] = check(event[field])
    except _Bad as bad:
        raise InvalidEvent(index, kind, repr(field), str(bad)) from None
    return clean


# The maps publishers send most, exactly as the engine's tracer makes them, checked in one
# expression each (about three times faster than field by field); anything else, or a
# map that fails here, goes through the field checks, which name the problem.
_BACKWARD_KEYS = {"type", "seq", "id", "grad", "t"}
_FORWARD_KEYS = {"type", "seq", "id", "op", "parents", "data", "label", "t"}
_SCOPED_FORWARD_KEYS = _FORWARD_KEYS | {"scope"}


def _fast_backward(event: dict) -> bool:
    id_, seq, t = event.get("id"), event.get("seq"), event.get("t")
    return (
        event.keys() == _BACKWARD_KEYS
        and type(id_) is int
        and type(seq) is int
        and type(t) is int
        and type(event["grad"]) is float
        and 0 <= id_ <= MAX_INT
        and 0 <= seq <= MAX_INT
        and 0 <= t <= MAX_INT
    )


def _fast_forward(event: dict) -> bool:
    id_, seq, t = event.get("id"), event.get("seq"), event.get("t")
    op, parents, label = event.get("op"), event.get("parents"), event.get("label")
    scope = event.get("scope", "")
    return (
        (event.keys() == _FORWARD_KEYS or event.keys() == _SCOPED_FORWARD_KEYS)
        and type(scope) is str
        and len(scope) <= MAX_SCOPE
        and type(id_) is int
        and type(seq) is int
        and type(t) is int
        and type(event["data"]) is float
        and (op is None or (type(op) is str and len(op) <= MAX_NAME))
        and type(label) is str
        and len(label) <= MAX_LABEL
        and type(parents) is list
        and len(parents) <= MAX_PARENTS
        and 0 <= id_ <= MAX_INT
        and 0 <= seq <= MAX_INT
        and 0 <= t <= MAX_INT
        and all(type(p) is int and 0 <= p < id_ for p in parents)
    )


_FAST = {"backward": _fast_backward, "forward": _fast_forward}


def check_event(event: Any, index: int, kinds: tuple[str, ...] = PUBLISHED_KINDS) -> dict:
    """The clean copy of live map `event` (the `index`-th of its frame or file), whose
    kind must be one of `kinds`; raises InvalidEvent."""
    if type(event) is not dict:
        raise InvalidEvent(index, "", "", f"must be a map, got {_shown(event)}")
    kind = event.get("type")
    if type(kind) is not str:
        raise InvalidEvent(index, "", "'type'", f"must be a string, got {_shown(kind)}")
    if kind not in kinds:
        raise InvalidEvent(index, "", "'type'", f"{_shown(kind)} is not one of {', '.join(kinds)}")
    if kind in _FAST and _FAST[kind](event):
        return dict(event)
    return _check_fields(event, kind, index)


def _check_fields(event: dict, kind: str, index: int) -> dict:
    clean = _fields(event, kind, index, *_KINDS[kind])
    if kind == "forward":
        # Parents are made before their children, so they have smaller ids (a node made
        # before tracing started is announced late, but its id is still smaller).
        for parent in clean["parents"]:
            if parent >= clean["id"]:
                problem = f"must be ids smaller than the node's id {clean['id']}, got {parent}"
                raise InvalidEvent(index, kind, "'parents'", problem)
    elif kind == "structure":
        _check_structure(clean, index)
    return clean


def _check_structure(event: dict, index: int) -> None:
    """What a `structure` map must be on its own (Steps checks it against the stream)."""
    field = ""
    try:
        for field, size in (("ids", 8), ("offsets", 4), ("inputs", 8), ("order", 4)):
            if len(event[field]) % size:
                raise _Bad(f"must hold {size}-byte numbers, got {len(event[field])} bytes")
        n, e = len(event["ids"]) // 8, len(event["inputs"]) // 8
        field = "ids"
        if not n:
            raise _Bad("must name at least one node")
        if n + e > MAX_STEP_NODES:
            raise _Bad(f"with 'inputs' must name at most {MAX_STEP_NODES:,} nodes, got {n + e:,}")
        field = "offsets"
        if len(event["offsets"]) // 4 != n:
            raise _Bad(f"must hold one number per id ({n}), got {len(event['offsets']) // 4}")
        offsets = u4s(event["offsets"])
        if offsets[0] != 0 or not all(map(int.__lt__, offsets, offsets[1:])):
            raise _Bad("must start at 0 and increase")
        field = "ids"
        ids = u8s(event["ids"])
        if not all(map(int.__lt__, ids, ids[1:])) or ids[-1] > MAX_INT:
            raise _Bad("must be increasing ids (at most 2**53-1)")
        field = "inputs"
        if e and max(u8s(event["inputs"])) > MAX_INT:
            raise _Bad("must be ids (at most 2**53-1)")
        field = "order"
        order = u4s(event["order"])
        if order and max(order) >= n + e:
            raise _Bad(f"must be indexes below n + e = {n + e}, got {max(order)}")
        if len(set(order)) != len(order):
            raise _Bad("must list each index at most once")
        field = "root"
        if event["root"] >= n + e:
            raise _Bad(f"must be an index below n + e = {n + e}, got {event['root']}")
    except _Bad as bad:
        raise InvalidEvent(index, "structure", repr(field), str(bad)) from None


class Steps:
    """What the checks of `structure` and `step` know of the stream before them (one per
    publisher connection, one per recording read): the highest id and pass so far, the last
    step and structure numbers, and each recent structure's size. `see(event, index)` takes
    every checked map in stream order; it raises InvalidEvent for a `structure` or `step`
    that does not fit the stream (docs/protocol.md, "Checking events from outside")."""

    def __init__(self, *, continuing: bool = False) -> None:
        self.max_id = -1  # the highest id used so far (a forward's, a step's last node's)
        self.passes = 0  # the highest pass number so far
        self.step = 0
        self.structure = 0
        # structure -> (n, e, its last offset, its first id, whether it had its first step)
        self.sizes: dict[int, list] = {}
        self.in_use = 0  # the structure of the last step
        # After a publisher's `dropped` (events it made and could not send), the next
        # structure, step and pass numbers may skip the lost ones: each must only be higher.
        # A publisher's connection may continue a script that numbered some already (it
        # reconnected after the hub was away): its first numbers may then start higher.
        self.skipped: set[str] = {"structure", "step", "pass"} if continuing else set()

    def see(self, event: dict, index: int) -> None:
        kind = event["type"]
        if kind == "dropped":
            self.skipped = {"structure", "step", "pass"}
        elif kind == "forward":
            if event["id"] > self.max_id:
                self.max_id = event["id"]
        elif kind == "backward_begin":
            self.passes = max(self.passes, event["pass"])
            self.skipped.discard("pass")  # the pass after it must follow it
        elif kind == "structure":
            self._structure(event, index)
        elif kind == "step":
            self._step(event, index)

    def _structure(self, event: dict, index: int) -> None:
        number = event["structure"]
        if not self._follows("structure", number, self.structure):
            _refuse(index, "structure", "structure", f"must be {self.structure + 1}, got {number}")
        ids, inputs = u8s(event["ids"]), u8s(event["inputs"])
        # The receiver knows an id that was announced: bounded, as a stream can be endless,
        # this is checked as "not above the highest id announced so far".
        if ids[-1] > self.max_id:
            _refuse(index, "structure", "ids", f"must be known ids, got {ids[-1]}")
        if inputs and max(inputs) > self.max_id:
            _refuse(index, "structure", "inputs", f"must be known ids, got {max(inputs)}")
        self.structure = number
        last = u4s(event["offsets"])[-1]
        self.sizes[number] = [len(ids), len(inputs), last, ids[0], False]
        forget_oldest(self.sizes, MAX_STRUCTURES, self.in_use)

    def _step(self, event: dict, index: int) -> None:
        number, first, pass_ = event["step"], event["first"], event["pass"]
        if not self._follows("step", number, self.step):
            _refuse(index, "step", "step", f"must be {self.step + 1}, got {number}")
        size = self.sizes.get(event["structure"])
        if size is None:
            problem = f"{event['structure']} is not a structure defined before"
            _refuse(index, "step", "structure", problem + f" (or among the last {MAX_STRUCTURES})")
        n, e, last, defined_first, stepped = size
        if not stepped:  # the step that defined the structure: its nodes and pass were sent
            if first != defined_first:
                _refuse(
                    index, "step", "first", f"must be {defined_first}, the structure's first id"
                )
            if pass_ > self.passes:
                _refuse(index, "step", "pass", f"must be a pass sent before, got {pass_}")
        else:  # a step that stands for its nodes and its pass: new ids, the next pass
            if first <= self.max_id:
                problem = f"must be above every id used before ({self.max_id}), got {first}"
                _refuse(index, "step", "first", problem)
            if first + last > MAX_INT:
                problem = f"must leave its last id, first + {last}, at most 2**53-1"
                _refuse(index, "step", "first", problem)
            if not self._follows("pass", pass_, self.passes):
                _refuse(index, "step", "pass", f"must be {self.passes + 1}, got {pass_}")
            self.max_id, self.passes = first + last, pass_
        width = 4 if event.get("dtype") == "f4" else 8
        for field in ("data", "grad"):
            if len(event[field]) != (n + e) * width:
                got = len(event[field])
                problem = f"must hold n + e = {n + e} numbers of {width} bytes, got {got} bytes"
                _refuse(index, "step", field, problem)
        size[4] = True
        self.step = number
        self.in_use = event["structure"]
        self.sizes[self.in_use] = self.sizes.pop(self.in_use)  # used: kept last

    def _follows(self, what: str, number: int, last: int) -> bool:
        """Whether `number` may follow `last`: the next one, or any higher one after a
        `dropped` (once: the number after it must follow it again)."""
        if what in self.skipped and number > last:
            self.skipped.discard(what)
            return True
        return number == last + 1


def forget_oldest(kept: dict, limit: int, in_use: Any) -> None:
    """Forget the oldest entries of `kept` past `limit`, but not `in_use` (the structure
    of the last step: moved last instead), so that a training's own structure stays known
    however many others came since."""
    while len(kept) > max(limit, 1):
        oldest = next(iter(kept))
        if oldest == in_use:
            kept[oldest] = kept.pop(oldest)
            oldest = next(iter(kept))
        del kept[oldest]


def _refuse(index: int, kind: str, field: str, problem: str) -> NoReturn:
    raise InvalidEvent(index, kind, repr(field), problem)


def check_hello(event: Any, index: int = 0) -> dict:
    """The clean copy of a `hello` map (protocol PROTOCOL, version VERSION); raises
    InvalidEvent."""
    if type(event) is not dict or event.get("type") != "hello":
        raise InvalidEvent(index, "", "", "must be an opgraph hello")
    if event.get("protocol") != PROTOCOL:
        problem = f"must be {PROTOCOL!r}, got {_shown(event.get('protocol'))}"
        raise InvalidEvent(index, "hello", "'protocol'", problem)
    clean = _fields(event, "hello", index, *_HELLO)
    if clean["version"] != VERSION:
        problem = f"{clean['version']} is not supported (this reads version {VERSION})"
        raise InvalidEvent(index, "hello", "'version'", problem)
    return clean


def check_last_pass(value: Any, nodes: int) -> dict:
    """The clean copy of a snapshot's `last_pass` map ({pass, root, steps}) for a snapshot
    of `nodes` nodes: the pass reached each of its nodes once, so `steps` lists at most
    `nodes` distinct ids. Raises InvalidEvent (index 0, kind snapshot_begin)."""
    field = "'last_pass'"
    try:
        if type(value) is not dict:
            raise _Bad(f"must be a map {{pass, root, steps}}, got {_shown(value)}")
        field = "'last_pass.pass'"
        number = _pass(value.get("pass"))
        field = "'last_pass.root'"
        root = value.get("root")
        root = None if root is None else _int(root)
        field = "'last_pass.steps'"
        steps = [_int(id_) for id_ in _list(value.get("steps"), nodes)]
        if len(set(steps)) != len(steps):
            raise _Bad("must not list a node twice")
    except _Bad as bad:
        raise InvalidEvent(0, "snapshot_begin", field, str(bad)) from None
    return {"pass": number, "root": root, "steps": steps}


def close_reason(error: Exception) -> str:
    """`error` as a websocket close reason (at most 123 bytes of UTF-8)."""
    return str(error).encode()[:123].decode(errors="ignore")
