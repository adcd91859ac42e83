"""The plain HTTP side of the trace server: the viewer page's files, and the headers every
response gets (docs/security.md).

Only GET and HEAD of the files of `static/` by name are served: no subdirectories, no dot
files, no symbolic links out of it.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import re
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

# Where this module's files really are: an editable install (scripts/test's is `strict`) is a
# tree of symbolic links into the checkout, and the page's files are served only from inside
# the real static/ (a link out of it is refused: static_response).
STATIC_DIR = Path(__file__).resolve().parent / "static"

# Sent with every response (the page, its files, errors, the upgrade): the page runs only
# its own files, connects only to its own server (ws: and wss: to the same host and port
# count as 'self'), and may be framed only by pages of local origins (a notebook on
# localhost; CSP cannot name an IPv6 address such as [::1]). See docs/security.md.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self' http://localhost:* http://127.0.0.1:*",
    ]
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),  # the page's URL may hold the token
)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
}
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def finish_response(connection: object, request: Request, response: Response) -> Response:
    """Every response gets the security headers; a HEAD request gets no body."""
    for name, value in SECURITY_HEADERS:
        if name not in response.headers:
            response.headers[name] = value
    if request.method == "HEAD":
        return dataclasses.replace(response, body=b"")
    return response


def text_response(status: HTTPStatus, text: str) -> Response:
    """A plain-text response: an error, or why a request was refused."""
    body = (text + "\n").encode()
    headers = Headers(
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return Response(status.value, status.phrase, headers, body)


def static_response(static_dir: Path, path: str) -> Response:
    """A file of `static_dir` by name: `/` is index.html; no subdirectories, no dot files."""
    name = unquote(path).lstrip("/") or "index.html"
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        return text_response(
            HTTPStatus.NOT_FOUND, f"no file {path!r} here (only files of the viewer page)"
        )
    file = static_dir / name
    try:
        if not file.resolve().is_relative_to(static_dir.resolve()):  # a symlink out of it
            return text_response(HTTPStatus.NOT_FOUND, f"no file {path!r} here")
        body = file.read_bytes()
    except (OSError, RuntimeError):  # missing, a directory, no permission, a symlink loop
        return text_response(HTTPStatus.NOT_FOUND, f"no file {path!r} here")
    suffix = file.suffix.lower()
    content_type = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0]
    headers = Headers(
        [
            ("Content-Type", content_type or "application/octet-stream"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
        ]
    )
    return Response(200, "OK", headers, body)
