"""The rules for text opgraph hands to others: strings every viewer can show
(`viewer_text`, with the length limits `MAX_LABEL` and `MAX_SCOPE` that the engine applies
where labels and scope paths are made, and the hub and the page check), and `redact`, which
hides hub tokens in what opgraph prints.
"""

from __future__ import annotations

import re

# Labels and scope paths travel as msgpack strings (UTF-8) to the hub and the page, which check
# them against these limits. One rule, on every side (docs/protocol.md, "Strings"):
# a length counts Unicode code points (Python's `len`; the page counts the same way, not in
# UTF-16 units), and the engine makes every label and scope path fit where it is made (the
# label of a Value, `scope()`), so what a viewer shows is what the program has. The server
# takes these limits from here (server/events.py).
MAX_LABEL = 10_000  # code points of a node's label
MAX_SCOPE = 1000  # code points of a scope path ("L0/N3")
ELLIPSIS = "\u2026"  # ends a label cut to MAX_LABEL
_SURROGATE = re.compile("[\ud800-\udfff]")


def viewer_text(text: str, limit: int | None = None) -> str:
    """`text` as every viewer can take it: each lone surrogate (from a file name decoded with
    `surrogateescape`, say), which UTF-8 cannot encode, replaced by U+FFFD; and when `limit`
    is given and `text` has more code points, its first `limit - 1` followed by `…`.
    Free for the usual short ASCII text."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _SURROGATE.sub("\ufffd", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + ELLIPSIS
    return text


_TOKEN = re.compile(r"(token=)[^&#\s'\":;,)\]]+")


def redact(text: str) -> str:
    """`text` with the value of every `token=` in it replaced by `***`: what opgraph prints
    about a hub URL (messages, errors) must not hand its token to whoever reads the logs."""
    return _TOKEN.sub(r"\1***", text)
