"""The wire protocol's constants, in one place (docs/protocol.md).

Every module of the server, the publisher and the Python client takes them from here:
the websocket subprotocol, the protocol's name and version, the size limits of frames, the
close codes, and the `hello` map that opens every stream.
"""

from __future__ import annotations

from typing import Any

SUBPROTOCOL = "opgraph.v1"  # the websocket subprotocol (Sec-WebSocket-Protocol)
PROTOCOL = "opgraph"  # `hello`'s protocol field...
VERSION = 1  # ...and its version

CONTROL_MAX_SIZE = 4096  # bytes of one control message from a viewer
PUBLISH_MAX_SIZE = 16 << 20  # bytes of one frame from a publishing script

# Close codes (RFC 6455 ones, and the application's own from 4000)
CLOSE_INTERNAL_ERROR = 1011  # the server failed
CLOSE_TEXT_FRAME = 1003  # a text frame: opgraph speaks binary msgpack only
CLOSE_INVALID = 1007  # a frame that is not msgpack maps, or a map that breaks the protocol
CLOSE_POLICY = 1008  # a publisher that does not start with hello
CLOSE_TOO_SLOW = 4000  # a viewer that did not take a frame within its send deadline


def hello(seq: int, **fields: Any) -> dict[str, Any]:
    """The `hello` map, numbered `seq`, with `fields` (session, engine, ops, pid, t)."""
    return {"type": "hello", "seq": seq, "protocol": PROTOCOL, "version": VERSION, **fields}
