"""The protocol's example clients in docs/protocol.md, run against a real server.

They loop forever by design, so tests/test_docs.py cannot run them as scripts; here the
Python client runs in a subprocess against a server on loopback and must print the grads.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from opgraph import Engine

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def fenced_block_after(heading: str, language: str) -> str:
    text = PROTOCOL.read_text()
    section = text.split(heading, 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no ```{language} block after {heading!r} in docs/protocol.md"
    return match.group(1)


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_python_client_prints_the_grads_of_a_backward_pass(tmp_path: Path):
    source = fenced_block_after("## A Python client in 20 lines", "py")
    engine = Engine(name="docs", entry_points=False)
    with engine.serve(port=0) as server:
        assert "ws://127.0.0.1:8765/ws" in source
        script = tmp_path / "client.py"
        script.write_text(source.replace("ws://127.0.0.1:8765/ws", server.ws_url))
        client = subprocess.Popen(
            [sys.executable, "-u", str(script)], stdout=subprocess.PIPE, text=True
        )
        try:
            wait_for(lambda: server.stats()["viewers"])
            x = engine.value(2.0, label="x")
            y = (x * x).tanh()
            y.backward()
            server.flush()
            lines = [client.stdout.readline().strip() for _ in range(3)]
        finally:
            client.kill()
            client.wait()
    grads = {f"node {node._id}: grad {node.grad:.4g}" for node in (x, y, y._prev[0])}
    assert set(lines) == grads
