"""Who may connect to a trace server: the checks before a websocket upgrade
(docs/security.md).

A server on a loopback address accepts only a Host header that names a loopback address
(DNS rebinding); a browser's Origin must be the server's own page; and when the server has
a token, the request must carry it (`?token=...`, compared in constant time).
"""

from __future__ import annotations

import ipaddress
import secrets
from http import HTTPStatus
from urllib.parse import parse_qs

from websockets.http11 import Request, Response

from .http import text_response

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is loopback."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_is_loopback(host_header: str) -> bool:
    """Whether a Host header (`name:port`, `[::1]:port`) names a loopback address."""
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    return is_loopback(host)


def same_origins(host_header: str) -> set[str]:
    """The Origins of the server's own page, as a browser that reached `host_header` sends."""
    return {f"http://{host_header}", f"https://{host_header}"}


def check_upgrade(request: Request, query: str, *, host: str, token: str | None) -> Response | None:
    """None if `request` (its URL's query string `query`) may upgrade to a websocket on a
    server bound to `host` with `token`; otherwise the 403 response that says why."""
    host_header = request.headers.get("Host", "")
    if is_loopback(host) and not host_is_loopback(host_header):
        # A web page that rebinds its own domain name to 127.0.0.1 still sends its
        # name in Host: refuse it (DNS rebinding).
        return text_response(
            HTTPStatus.FORBIDDEN, f"Host {host_header!r} is not this loopback server"
        )
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") not in same_origins(host_header):
        return text_response(
            HTTPStatus.FORBIDDEN,
            f"Origin {origin!r} may not read this trace: only the server's own page "
            f"(and clients that send no Origin) may connect",
        )
    if token is not None:
        given = parse_qs(query).get("token", [""])[0]
        if not secrets.compare_digest(given.encode(), token.encode()):
            return text_response(
                HTTPStatus.FORBIDDEN, "this server needs ?token=... (printed when it started)"
            )
    return None
