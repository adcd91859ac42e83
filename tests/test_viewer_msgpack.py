"""The viewer's msgpack module (server/static/msgpack.js), run in chromium, against bytes
packed by Python's msgpack: every type and size class the trace protocol uses."""

from __future__ import annotations

import json
import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playwright.sync_api import sync_playwright
from viewer_support import TO_PLAIN_JS, b64, launch, load_module, plain

EXPORTS = ["decode", "decodeMulti", "Reader", "MsgpackError"]


@pytest.fixture(scope="module")
def page():
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        page.set_content("<!doctype html><title>msgpack</title>")
        page.add_script_tag(content=TO_PLAIN_JS)
        load_module(page, "msgpack.js", EXPORTS, "msgpack")
        yield page
        browser.close()


def decode_in_page(page, data: bytes):
    # One JSON string crosses back to Python: quicker than a big structured result.
    return json.loads(
        page.evaluate(
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                return JSON.stringify(toPlain(msgpack.decodeMulti(bytes)));
            }""",
            b64(data),
        ),
        # JavaScript writes a float with an integral value without ".0"; parse numbers as
        # floats (exact for every integer the page gives as a Number: below 2**53).
        parse_int=float,
    )


def error_in_page(page, data: bytes, function: str = "decodeMulti") -> str:
    return page.evaluate(
        """([b64, fn]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            try { msgpack[fn](bytes); return "no error"; }
            catch (err) { return `${err.constructor.name}: ${err.message}`; }
        }""",
        [b64(data), function],
    )


def text(n: int) -> str:
    return ("opgraph∂" * (n // 8 + 1))[:n]


# (what, value, first byte Python's msgpack gives it): the first byte proves the size class.
CASES = [
    ("nil", None, 0xC0),
    ("false", False, 0xC2),
    ("true", True, 0xC3),
    ("positive fixint 0", 0, 0x00),
    ("positive fixint 127", 127, 0x7F),
    ("negative fixint -1", -1, 0xFF),
    ("negative fixint -32", -32, 0xE0),
    ("uint8", 255, 0xCC),
    ("uint16", 65535, 0xCD),
    ("uint32", 2**32 - 1, 0xCE),
    ("uint64 small", 2**32, 0xCF),
    ("uint64 largest exact", 2**53 - 1, 0xCF),
    ("uint64 beyond 2**53", 2**64 - 1, 0xCF),
    ("int8", -128, 0xD0),
    ("int16", -32768, 0xD1),
    ("int32", -(2**31), 0xD2),
    ("int64", -(2**31) - 1, 0xD3),
    ("int64 smallest exact", -(2**53 - 1), 0xD3),
    ("int64 beyond 2**53", -(2**63), 0xD3),
    ("float64", 0.1, 0xCB),
    ("float64 tiny", 5e-324, 0xCB),
    ("float64 huge", -1.7976931348623157e308, 0xCB),
    ("float64 nan", math.nan, 0xCB),
    ("float64 inf", math.inf, 0xCB),
    ("float64 -inf", -math.inf, 0xCB),
    ("float64 -0.0", -0.0, 0xCB),
    ("fixstr empty", "", 0xA0),
    ("fixstr 31", text(31), None),
    ("str8", "x" * 32, 0xD9),
    ("str8 255", "x" * 255, 0xD9),
    ("str16", "y" * 256, 0xDA),
    ("str16 65535", "y" * 65535, 0xDA),
    ("str32", "z" * 65536, 0xDB),
    ("utf-8 label", "∂L/∂w₁ 🎉 naïve", None),
    ("utf-8 str16", text(3000), 0xDA),
    ("bin8", bytes(range(200)), 0xC4),
    ("bin16", bytes(300), 0xC5),
    ("bin32", bytes(70000), 0xC6),
    ("fixarray empty", [], 0x90),
    ("fixarray 15", list(range(15)), 0x9F),
    ("array16", list(range(16)), 0xDC),
    ("array16 65535", [1] * 65535, 0xDC),
    ("array32", [2] * 65536, 0xDD),
    ("fixmap empty", {}, 0x80),
    ("fixmap 15", {f"k{i}": i for i in range(15)}, 0x8F),
    ("map16", {f"k{i}": i for i in range(16)}, 0xDE),
    ("map32", {f"k{i}": i for i in range(65536)}, 0xDF),
    ("__proto__ key stays data", {"__proto__": 1, "type": "x"}, 0x82),
]


@pytest.mark.parametrize("what, value, first", CASES, ids=[c[0] for c in CASES])
def test_every_type_and_size_class(page, what, value, first):
    packed = msgpack.packb(value, use_bin_type=True)
    if first is not None:
        assert packed[0] == first, f"{what}: Python packed it as 0x{packed[0]:02x}"
    (decoded,) = decode_in_page(page, packed)
    assert decoded == plain(value)


def test_float32(page):
    packed = msgpack.packb(1.5, use_single_float=True)
    assert packed[0] == 0xCA
    assert decode_in_page(page, packed) == [1.5]
    # float32 of 0.1 is not 0.1: the page must widen the float32, not guess
    packed = msgpack.packb(0.1, use_single_float=True)
    assert decode_in_page(page, packed)[0] == msgpack.unpackb(packed)


def test_protocol_events_back_to_back(page):
    events = [
        {
            "type": "hello",
            "seq": 0,
            "protocol": "opgraph",
            "version": 1,
            "session": "ab12",
            "engine": "default",
            "ops": {"add": "opgraph.plugins.arithmetic", "tanh": "acts"},
        },
        {
            "type": "forward",
            "seq": 1,
            "id": 0,
            "op": None,
            "parents": [],
            "data": 2.0,
            "label": "x",
        },
        {
            "type": "forward",
            "seq": 2,
            "id": 1,
            "op": "add",
            "parents": [0, 0],
            "data": 4.0,
            "label": "",
        },
        {
            "type": "forward",
            "seq": 3,
            "id": 2,
            "op": "pow",
            "parents": [1],
            "data": 16.0,
            "label": "y",
            "const": [2.0],
        },
        {"type": "backward", "seq": 4, "id": 2, "grad": 1.0},
        {"type": "dropped", "count": 70000},
        {"type": "snapshot_begin", "seq": 9, "nodes": 1},
        {
            "type": "node",
            "id": 5,
            "op": "tanh",
            "parents": [3],
            "data": -0.5,
            "grad": math.nan,
            "label": "h",
        },
        {"type": "snapshot_end", "seq": 9},
    ]
    frame = b"".join(msgpack.packb(e) for e in events)
    assert decode_in_page(page, frame) == plain(events)


def test_reader_decodes_one_object_at_a_time(page):
    frame = msgpack.packb({"type": "a"}) + msgpack.packb([1, 2]) + msgpack.packb("end")
    steps = page.evaluate(
        """(b64) => {
            const reader = new msgpack.Reader(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
            const steps = [];
            while (!reader.done) steps.push([toPlain(reader.next()), reader.offset]);
            return steps;
        }""",
        b64(frame),
    )
    first = len(msgpack.packb({"type": "a"}))
    assert steps == [
        [{"type": "a"}, first],
        [[1, 2], first + 3],
        ["end", len(frame)],
    ]


def test_truncated_frame_is_a_clear_error(page):
    frame = msgpack.packb({"type": "ok"}) + msgpack.packb({"type": "forward", "label": "x" * 40})
    message = error_in_page(page, frame[:-5])
    assert message.startswith("MsgpackError: msgpack: truncated object starting at byte 9")


def test_ext_types_are_refused_by_name(page):
    packed = msgpack.packb(msgpack.ExtType(5, b"abcd"))
    message = error_in_page(page, packed)
    assert message == (
        "MsgpackError: msgpack: type byte 0xd6 at byte 0 is not part of the opgraph protocol "
        "(ext types are not used)"
    )


def test_decode_refuses_trailing_bytes(page):
    assert error_in_page(page, msgpack.packb(1) + msgpack.packb(2), "decode") == (
        "MsgpackError: msgpack: 1 bytes after the object"
    )
    assert error_in_page(page, b"\xc1").startswith("MsgpackError: msgpack: type byte 0xc1")


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300)
    | st.binary(max_size=300)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=60,
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(objects=st.lists(values, min_size=1, max_size=5))
def test_any_protocol_value_round_trips(page, objects):
    frame = b"".join(msgpack.packb(o, use_bin_type=True) for o in objects)
    assert decode_in_page(page, frame) == plain(objects)
