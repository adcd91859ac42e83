"""Who may connect, what the page serves, and how bad input is refused (real sockets)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import os
import re
import signal
import socket
import time

import _tracing_helpers as th
import msgpack
import pytest
import websockets

from opgraph import Engine
from opgraph.server.server import TraceServer


@pytest.fixture
def served():
    engine = Engine(name="secure", entry_points=False)
    with engine.serve(port=0) as server:
        yield engine, server


def raw_upgrade(port: int, path: str = "/ws", headers: dict | None = None) -> tuple[int, bytes]:
    """Send a websocket upgrade by hand (any Host/Origin); returns the status and the rest."""
    key = base64.b64encode(os.urandom(16)).decode()
    fields = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    with socket.create_connection(("127.0.0.1", port), timeout=th.TIMEOUT) as sock:
        sock.sendall((request + "\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                break
            response += chunk
    status = int(response.split(b" ", 2)[1])
    return status, response


def still_serves(server, engine) -> None:
    """A normal viewer still gets the stream, and the engine still works."""

    async def check():
        reader = await th.connect_reader(server.ws_url)
        await reader.until(lambda e: e["type"] == "snapshot_end")
        x = engine.value(4.0, label="after")
        event = await reader.until(lambda e: e.get("type") == "forward")
        await reader.ws.close()
        return x, event[-1]

    x, event = asyncio.run(check())
    assert event["id"] == x.id and event["label"] == "after"


# --- Origin, Host, token, subprotocol -------------------------------------------------------


def test_a_page_from_another_origin_cannot_open_the_stream(served):
    engine, server = served

    async def attempt(origin):
        try:
            ws = await th.open_ws(server.ws_url, origin=origin)
        except websockets.InvalidStatus as exc:
            return exc.response.status_code, exc.response.body.decode()
        await ws.close()
        return 101, ""

    status, body = asyncio.run(attempt("http://evil.example"))
    assert status == 403 and "evil.example" in body
    assert asyncio.run(attempt(f"http://127.0.0.1:{server.port}"))[0] == 101  # its own page
    assert asyncio.run(attempt(f"http://localhost:{server.port}"))[0] == 403  # another origin
    status, _ = raw_upgrade(server.port, headers={"Origin": "null"})
    assert status == 403
    status, _ = raw_upgrade(server.port)  # no Origin: a script
    assert status == 101
    still_serves(server, engine)


def test_dns_rebinding_is_refused_by_the_host_check(served):
    engine, server = served
    rebound = {"Host": f"attacker.example:{server.port}"}
    status, response = raw_upgrade(server.port, headers=rebound)
    assert status == 403 and b"attacker.example" in response
    same_origin = {**rebound, "Origin": f"http://attacker.example:{server.port}"}
    assert raw_upgrade(server.port, headers=same_origin)[0] == 403
    assert raw_upgrade(server.port, headers={"Host": f"localhost:{server.port}"})[0] == 101


def test_a_server_on_all_interfaces_requires_its_token():
    engine = Engine(name="wide", entry_points=False)
    with engine.serve(port=0, host="0.0.0.0") as server:
        assert server.token and len(server.token) >= 16
        assert f"?token={server.token}" in server.url and server.token in server.ws_url
        plain = f"ws://127.0.0.1:{server.port}/ws"

        async def attempt(url):
            try:
                ws = await th.open_ws(url)
            except websockets.InvalidStatus as exc:
                return exc.response.status_code
            reader = th.Reader(ws)
            hello = await reader.next()
            await ws.close()
            return hello["type"]

        assert asyncio.run(attempt(plain)) == 403
        assert asyncio.run(attempt(plain + "?token=wrong")) == 403
        assert asyncio.run(attempt(server.ws_url)) == "hello"
        # any Host is fine off loopback (the token is the protection), Origin still checked
        assert raw_upgrade(server.port, f"/ws?token={server.token}", {"Host": "box:1"})[0] == 101
        origin = {"Origin": "http://evil.example"}
        assert raw_upgrade(server.port, f"/ws?token={server.token}", origin)[0] == 403
    # a token can be chosen, also on loopback; and explicitly disabled off loopback
    chosen = TraceServer(engine_name="x", ops={}, token="s3cret")
    assert chosen.token == "s3cret"
    assert TraceServer(engine_name="x", ops={}, host="0.0.0.0", token=False).token is None
    assert TraceServer(engine_name="x", ops={}).token is None  # loopback: none needed


def test_subprotocol_negotiation(served):
    engine, server = served

    async def attempt(subprotocols):
        try:
            ws = await websockets.connect(server.ws_url, subprotocols=subprotocols)
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        chosen = ws.subprotocol
        await ws.close()
        return chosen

    assert asyncio.run(attempt(["opgraph.v1"])) == "opgraph.v1"
    assert asyncio.run(attempt(["x", "opgraph.v1"])) == "opgraph.v1"
    assert asyncio.run(attempt(None)) is None  # no subprotocol: accepted as v1
    assert asyncio.run(attempt(["opgraph.v2"])) == 400


# --- bad frames -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame, code",
    [
        ("hello", 1003),  # a text frame
        (b"\xc1\xc1\xc1", 1007),  # not msgpack
        (msgpack.packb([1, 2, 3]), 1007),  # msgpack, not a map
        (msgpack.packb({"kind": "snapshot"}), 1007),  # a map without a type
        (msgpack.packb({"type": "x", "pad": "a" * 5000}), 1009),  # over 4,096 bytes
    ],
    ids=["text", "garbage", "not-a-map", "no-type", "oversized"],
)
def test_bad_frames_close_that_connection_with_a_proper_code(served, frame, code):
    engine, server = served

    async def send_bad():
        ws = await th.open_ws(server.ws_url)
        await ws.recv()
        await ws.send(frame)
        return await th.close_code(ws)

    assert asyncio.run(send_bad()) == code
    still_serves(server, engine)


def test_garbage_on_the_socket_and_non_http_bytes_do_no_harm(served):
    engine, server = served

    async def corrupt_framing():
        ws = await th.open_ws(server.ws_url)
        await ws.recv()
        ws.transport.write(b"\xff\xff\xff\xff not a websocket frame")  # below the library
        return await th.close_code(ws)

    assert asyncio.run(corrupt_framing()) == 1002  # protocol error
    with socket.create_connection(("127.0.0.1", server.port), timeout=th.TIMEOUT) as sock:
        sock.sendall(os.urandom(3000) + b"\r\n\r\n")
        try:
            sock.recv(1024)
        except (ConnectionResetError, TimeoutError):
            pass
    still_serves(server, engine)


def test_half_open_connections_are_closed_by_the_keepalive():
    server = TraceServer(
        engine_name="x", ops={}, port=0, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.3
    )
    with server.start():
        key = base64.b64encode(os.urandom(16)).decode()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=th.TIMEOUT)
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert sock.recv(12) == b"HTTP/1.1 101"
        assert len(server.stats()["viewers"]) == 1
        # the client now goes silent: it answers no ping, like a peer that vanished
        deadline = time.monotonic() + th.TIMEOUT
        while server.stats()["viewers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.stats()["viewers"] == []
        sock.close()


# --- the page -------------------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=th.TIMEOUT)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, response.getheader("Content-Type", ""), body


def test_the_page_and_its_files_are_served_with_content_types(tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>viewer</title>")
    (static / "app.js").write_text("export const x = 1;")
    (static / "style.css").write_text("body {}")
    (static / "sub").mkdir()
    (static / "sub" / "inner.js").write_text("TOPSECRET")
    (static / ".hidden").write_text("TOPSECRET")
    (tmp_path / "secret.txt").write_text("TOPSECRET")
    engine = Engine(name="page", entry_points=False)
    with engine.serve(port=0, static_dir=static) as server:
        port = server.port
        assert get(port, "/") == (
            200,
            "text/html; charset=utf-8",
            b"<!doctype html><title>viewer</title>",
        )
        assert get(port, "/index.html")[0] == 200
        status, kind, body = get(port, "/app.js")
        assert (status, kind, body) == (
            200,
            "text/javascript; charset=utf-8",
            b"export const x = 1;",
        )
        assert get(port, "/style.css")[1] == "text/css; charset=utf-8"
        assert get(port, "/app.js?v=2")[0] == 200  # a query string is not part of the name
        for path in [
            "/missing.js",
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/..%2fsecret.txt",
            "/sub/inner.js",
            "/sub%2finner.js",
            "/.hidden",
            "/sub",
        ]:
            status, _, body = get(port, path)
            assert status == 404, path
            assert b"TOPSECRET" not in body
        still_serves(server, engine)


def test_the_default_page_is_the_viewers_directory():
    from opgraph.server.http import STATIC_DIR

    assert STATIC_DIR.name == "static" and STATIC_DIR.parent.name == "server"


def test_publishing_needs_a_hub_its_token_and_no_foreign_origin():
    import msgpack as mp

    hub = TraceServer(engine_name="hub", ops={}, port=0, token="tok", accept_publishers=True)

    async def attempt(url, origin=None, frames=()):
        try:
            ws = await websockets.connect(url, origin=origin, subprotocols=["opgraph.v1"])
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        for frame in frames:
            await ws.send(frame)
        code = await th.close_code(ws, timeout=2) if frames else None
        await ws.close()
        return code or 101

    with hub.start():
        base = f"ws://127.0.0.1:{hub.port}/publish"
        assert asyncio.run(attempt(base)) == 403
        assert asyncio.run(attempt(base + "?token=tok", origin="http://evil.example")) == 403
        assert asyncio.run(attempt(base + "?token=tok")) == 101
        # a publisher must start with an opgraph hello, and send msgpack maps
        not_hello = mp.packb({"type": "forward", "id": 0})
        assert asyncio.run(attempt(base + "?token=tok", frames=[not_hello])) == 1008
        assert asyncio.run(attempt(base + "?token=tok", frames=[b"\xc1"])) == 1007
        assert hub.stats()["nodes"] == 0
    engine = Engine(name="not-a-hub", entry_points=False)
    with engine.serve(port=0) as server:  # a script's own server takes no publishers
        assert asyncio.run(attempt(f"ws://127.0.0.1:{server.port}/publish")) == 404


# --- response headers, methods, odd requests --------------------------------------------------


def raw_http(port: int, request: str) -> tuple[int, dict[str, list[str]], bytes]:
    """Send `request` as is; returns the status, the headers (lowercase names) and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=th.TIMEOUT) as sock:
        sock.sendall(request.encode())
        response = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            response += chunk
            head, _, body = response.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if b"\r\n\r\n" in response and (
                b" 101 " in head.split(b"\r\n")[0] or (length and len(body) >= int(length[1]))
            ):
                break
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split(" ")[1]), headers, body


def upgrade_request(port: int, path: str = "/ws", extra: str = "", method: str = "GET") -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    )


def test_every_response_carries_the_security_headers(served):
    engine, server = served
    port = server.port
    requests = {
        "the page": f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        "a file": f"GET /app.js HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        "a 404": f"GET /nothing.js HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        "a 405": f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n",
        "a 400": f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n\r\n",
        "a refused origin": upgrade_request(port, extra="Origin: http://evil.example\r\n"),
        "a refused subprotocol": upgrade_request(port, extra="Sec-WebSocket-Protocol: x\r\n"),
        "a refused upgrade": f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        "the upgrade": upgrade_request(port),
    }
    statuses = {}
    for what, request in requests.items():
        status, headers, _ = raw_http(port, request)
        statuses[what] = status
        assert headers.get("x-content-type-options") == ["nosniff"], what
        assert headers.get("referrer-policy") == ["no-referrer"], what
        (policy,) = headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'", what
        assert directives["script-src"] == "'self'", what  # no inline, no foreign script
        assert directives["connect-src"] == "'self'", what
        ancestors = directives["frame-ancestors"].split()
        assert set(ancestors) == {"'self'", "http://localhost:*", "http://127.0.0.1:*"}
    assert statuses == {
        "the page": 200,
        "a file": 200,
        "a 404": 404,
        "a 405": 405,
        "a 400": 400,
        "a refused origin": 403,
        "a refused subprotocol": 400,
        "a refused upgrade": 426,
        "the upgrade": 101,
    }
    still_serves(server, engine)


def test_only_get_and_head_are_answered(served):
    engine, server = served
    port = server.port
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"]:
        request = f"{method} / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        status, headers, _ = raw_http(port, request)
        assert (status, headers.get("allow")) == (405, ["GET, HEAD"]), method
    status, headers, _ = raw_http(port, upgrade_request(port, method="POST"))
    assert (status, headers.get("allow")) == (405, ["GET"])
    page = raw_http(port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
    head = raw_http(port, f"HEAD / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
    assert head[0] == 200 and head[2] == b""  # the headers of the page, without the page
    assert head[1]["content-length"] == page[1]["content-length"] == [str(len(page[2]))]
    assert raw_http(port, f"HEAD /none.js HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")[0] == 404
    still_serves(server, engine)


def test_symlinks_out_of_the_page_directory_are_not_followed(tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>viewer</title>")
    (tmp_path / "secret.txt").write_text("TOPSECRET")
    (static / "secret.txt").symlink_to(tmp_path / "secret.txt")
    (static / "passwd.txt").symlink_to("/etc/passwd")
    (static / "loop.txt").symlink_to(static / "loop.txt")
    (static / "home.html").symlink_to(static / "index.html")  # inside: fine
    engine = Engine(name="links", entry_points=False)
    with engine.serve(port=0, static_dir=static) as server:
        for path in ["/secret.txt", "/passwd.txt", "/loop.txt"]:
            status, _, body = get(server.port, path)
            assert status == 404 and b"TOPSECRET" not in body and b"root:" not in body, path
        assert get(server.port, "/home.html")[2] == b"<!doctype html><title>viewer</title>"


@pytest.mark.parametrize("header", ["Host", "Origin"])
@pytest.mark.parametrize("path", ["/ws", "/"])
def test_two_host_or_origin_headers_are_refused_quietly(served, header, path, caplog, capfd):
    engine, server = served
    port = server.port
    twice = {
        "Host": f"Host: 127.0.0.1:{port}\r\nHost: evil.example\r\n",
        "Origin": f"Origin: http://127.0.0.1:{port}\r\nOrigin: http://evil.example\r\n",
    }[header]
    request = (
        f"GET {path} HTTP/1.1\r\n{twice}Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with caplog.at_level("DEBUG"):
        status, _, body = raw_http(port, request)
    assert status == 400 and f"more than one {header} header".encode() in body
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= 40]
    assert "Traceback" not in capfd.readouterr().err
    still_serves(server, engine)


def test_an_empty_token_is_refused_off_loopback(capsys):
    from opgraph.commands.serve import add_arguments, run
    from opgraph.server.server import ServerError

    with pytest.raises(ServerError, match="empty token"):
        TraceServer(engine_name="x", ops={}, host="0.0.0.0", token="")
    engine = Engine(name="open", entry_points=False)
    with pytest.raises(ServerError, match="empty token"):
        engine.serve(port=0, host="0.0.0.0", token="")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sigterm = signal.getsignal(signal.SIGTERM)  # run() makes SIGTERM stop it
    try:
        assert run(parser.parse_args(["--host", "0.0.0.0", "--port", "0", "--token", ""])) == 1
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert "empty token" in capsys.readouterr().err
    # --no-token off loopback serves, and says what it means
    import threading

    args = parser.parse_args(["--host", "0.0.0.0", "--port", "0", "--no-token"])
    timer = threading.Timer(1.0, lambda: signal.raise_signal(signal.SIGTERM))
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        timer.start()
        assert run(args) == 0
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, sigterm)
    assert "WARNING: no token on 0.0.0.0" in capsys.readouterr().err
    # on loopback an empty token is no token, as before
    assert TraceServer(engine_name="x", ops={}, token="").token is None
    assert TraceServer(engine_name="x", ops={}, host="0.0.0.0", token=False).token is None
