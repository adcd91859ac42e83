"""Tracing: what the engine tells viewers about each node, as events of docs/protocol.md.

Four modules, one job each:

- `tracer`: the `Tracer` the engine calls from its hot path, which buffers one record per
  event (bounded), and `touch`;
- `forms`: the forms an event takes after the buffer: records, protocol maps
  (`event_map`), packed `forward` frames (`forward_packer`);
- `text`: the rules for text handed to others: `viewer_text` with `MAX_LABEL` and
  `MAX_SCOPE`, and `redact` for what opgraph prints;
- `serving`: starting a trace: `serve_engine`, `OPGRAPH_TRACE` (`from_environment`), and
  `_server()`, the one gateway from the engine to `opgraph.server`.

The names below are the package's face: import them from `opgraph.trace`.
"""

from .forms import (
    BACKWARD,
    BACKWARD_BEGIN,
    BACKWARD_END,
    BACKWARD_STEPS,
    DATA,
    FORWARD,
    LABEL,
    RECORD,
    STEP,
    STRUCTURE,
    event_count,
    event_map,
    event_maps,
    forward_packer,
    plain_number,
    records,
)
from .serving import from_environment, serve_engine
from .text import ELLIPSIS, MAX_LABEL, MAX_SCOPE, redact, viewer_text
from .tracer import Tracer, touch

__all__ = [
    "BACKWARD",
    "BACKWARD_BEGIN",
    "BACKWARD_END",
    "BACKWARD_STEPS",
    "DATA",
    "ELLIPSIS",
    "FORWARD",
    "LABEL",
    "MAX_LABEL",
    "MAX_SCOPE",
    "RECORD",
    "STEP",
    "STRUCTURE",
    "Tracer",
    "event_count",
    "event_map",
    "event_maps",
    "forward_packer",
    "from_environment",
    "plain_number",
    "records",
    "redact",
    "serve_engine",
    "touch",
    "viewer_text",
]
