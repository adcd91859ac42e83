"""opgraph.widget() against the websocket viewer on the same trace, in a real kernel.

    python -m benchmarks.widget [--values 100000] [--builds 10]

Starts an ipykernel (as Jupyter does), shows a widget and says "ready" for its page, then
builds a chain of `--values` values and back-propagates it: the events and bytes per second
that reach a client reading the kernel's IOPub channel (what the Jupyter server does for the
page), from the start of the cell to its last frame. Then the same through `engine.serve()`
and a websocket client. Then the kernel's peak memory while `--builds` such graphs are made
and nobody reads IOPub (a stalled page), against the same with a reader. A script, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import msgpack
import psutil
import websockets
from jupyter_client.manager import start_new_kernel

BUILD = """
xs = [engine.value(float(i) * 1e-6) for i in range({values})]
acc = xs[0]
for x in xs[1:]:
    acc = acc + x * 0.5
acc.backward()
del xs, acc
"""


class Kernel:
    def __init__(self) -> None:
        self.km, self.kc = start_new_kernel(kernel_name="python3")
        self.process = psutil.Process(self.km.provisioner.process.pid)

    def run(self, code: str) -> tuple[list[str], list[dict]]:
        """Run `code`: what it printed, and the comm messages meanwhile."""
        msg_id = self.kc.execute(code)
        printed, comms = [], []
        while True:
            msg = self.kc.get_iopub_msg(timeout=600)
            kind = msg["msg_type"]
            if kind == "comm_msg":
                comms.append(msg)
            elif msg["parent_header"].get("msg_id") == msg_id:
                if kind == "error":
                    raise RuntimeError("\n".join(msg["content"]["traceback"]))
                if kind == "stream":
                    printed.append(msg["content"]["text"])
                if kind == "status" and msg["content"]["execution_state"] == "idle":
                    return printed, comms

    def ready(self, model_id: str) -> None:
        data = {"method": "custom", "content": {"type": "ready", "view": "bench"}}
        self.kc.shell_channel.send(
            self.kc.session.msg("comm_msg", {"comm_id": model_id, "data": data})
        )

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def decoded(frames: list[bytes]) -> tuple[int, int]:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 31)
    for frame in frames:
        unpacker.feed(frame)
    return sum(1 for _ in unpacker), sum(map(len, frames))


def report(name: str, frames: list[bytes], seconds: float) -> None:
    events, size = decoded(frames)
    print(
        f"{name}: {events:,} events, {size / 1e6:.1f} MB in {seconds:.2f} s: "
        f"{events / seconds:,.0f} events/s, {size / 1e6 / seconds:.1f} MB/s"
    )


def widget_rate(kernel: Kernel, values: int) -> None:
    printed, _ = kernel.run(
        "import opgraph\nengine = opgraph.Engine(name='bench')\n"
        "w = opgraph.widget(engine)\nprint(w.model_id)"
    )
    kernel.ready(printed[0].strip())
    kernel.run("assert w.flush()")
    start = time.perf_counter()
    _, comms = kernel.run(BUILD.format(values=values) + "assert w.flush(120)")
    seconds = time.perf_counter() - start
    report("widget (comm)", [bytes(b) for m in comms for b in m["buffers"]], seconds)
    kernel.run("w.close()")


def websocket_rate(kernel: Kernel, values: int) -> None:
    printed, _ = kernel.run("server = engine.serve(port=0)\nprint(server.ws_url)")
    url = printed[0].strip()

    async def main() -> tuple[list[Any], float]:
        async with websockets.connect(url, subprotocols=["opgraph.v1"], max_size=None) as ws:
            got: list[tuple[float, bytes]] = []

            async def read() -> None:
                async for frame in ws:
                    got.append((time.perf_counter(), frame))

            reader = asyncio.ensure_future(read())
            await asyncio.sleep(1)  # hello and the (empty) snapshot
            got.clear()
            start = time.perf_counter()
            code = BUILD.format(values=values) + "assert server.flush(120)"
            await asyncio.to_thread(kernel.run, code)
            await asyncio.sleep(0.5)
            reader.cancel()
            return [frame for _, frame in got], got[-1][0] - start

    frames, seconds = asyncio.run(main())
    report("websocket", frames, seconds)
    kernel.run("server.close()")


def stalled_memory(values: int, builds: int, read: bool) -> None:
    kernel = Kernel()
    try:
        printed, _ = kernel.run(
            "import opgraph\nengine = opgraph.Engine(name='stall')\n"
            "w = opgraph.widget(engine)\nprint(w.model_id)"
        )
        kernel.ready(printed[0].strip())
        kernel.run("assert w.flush()")
        before = kernel.process.memory_info().rss
        code = f"for _ in range({builds}):\n" + "".join(
            f"    {line}\n" for line in BUILD.format(values=values).strip().splitlines()
        )
        msg_id = kernel.kc.execute(code + "w.flush(120)\nprint('done')")
        peak, frames, done = before, 0, False
        while not done:
            peak = max(peak, kernel.process.memory_info().rss)
            if not read:
                time.sleep(0.2)
                done = kernel.kc.shell_channel.msg_ready() and _replied(kernel, msg_id)
                continue
            try:
                msg = kernel.kc.get_iopub_msg(timeout=0.2)
            except Exception:
                continue
            frames += msg["msg_type"] == "comm_msg"
            done = (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            )
        what = "a page reading" if read else "a stalled page (IOPub not read)"
        print(
            f"kernel memory with {what}: {before / 1e6:.0f} MB before, peak "
            f"{peak / 1e6:.0f} MB (+{(peak - before) / 1e6:.0f} MB)"
        )
    finally:
        kernel.close()


def _replied(kernel: Kernel, msg_id: str) -> bool:
    reply = kernel.kc.get_shell_msg(timeout=1)
    return reply["parent_header"].get("msg_id") == msg_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--builds", type=int, default=10)
    args = parser.parse_args()
    kernel = Kernel()
    try:
        widget_rate(kernel, args.values)
        websocket_rate(kernel, args.values)
    finally:
        kernel.close()
    stalled_memory(args.values, args.builds, read=True)
    stalled_memory(args.values, args.builds, read=False)


if __name__ == "__main__":
    main()
