"""A hub under load: N real publishing scripts at once against a real hub on loopback.

    python -m benchmarks.hub_load [--scripts 20] [--nodes 5000] [--passes 1] [--timeout 300]

Starts a hub (a `TraceServer` that accepts publishers, in its own process, recording its
stream), then N scripts at once, each run with `OPGRAPH_TRACE` pointing at the hub: each
makes `--nodes` nodes in a scope of its own and runs `--passes` backward passes. While they
run, `GET /` is asked every quarter second. Reports:

- how long `GET /` took during the load (median and worst);
- how long the scripts' exits waited for the hub to acknowledge their last events;
- how the scripts' connections ended at the hub, by close code;
- per script, the nodes and backward steps the hub recorded against those the script made,
  runs that never ended at the hub, and what the scripts printed (lost the hub, gave up);
- the hub's peak RSS and CPU time, and its event loop's worst lateness (with the CPU its
  thread used meanwhile, and how long it waited for a CPU: little CPU and a long wait mean
  the machine did not run the hub, not a blocked loop), and the most CPU it used between two
  turns of a 50 ms timer (the longest its own work held the page up);
- the load of the machine before and after (it may be shared).

Bounded: everything is killed after `--timeout` seconds. A script, not a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# One publishing script: a chain of `nodes` nodes in scope `tag`, then `passes` backward
# passes. It knows nothing of the hub: OPGRAPH_TRACE does the publishing.
SCRIPT = """
import atexit, sys, time
done = []  # when the work ended: the exit's wait for the hub follows (atexit runs it first)
atexit.register(lambda: done and print(f"exit wait {time.monotonic() - done[0]:.3f}"))
import opgraph
from opgraph import Value

tag, nodes, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with opgraph.scope(tag):
    leaves = [Value(0.001 * i) for i in range(min(100, nodes))]
    y = leaves[0]
    for i in range(nodes - len(leaves)):
        y = y + leaves[i % len(leaves)]
for _ in range(passes):
    y.backward()
done.append(time.monotonic())
"""

# The hub: a real TraceServer in its own process; prints its publish URL, serves until its
# stdin closes, then prints its counters as JSON.
HUB = """
import asyncio, json, resource, sys, time
from opgraph.server.server import TraceServer

server = TraceServer(engine_name="hub", ops={}, port=0, accept_publishers=True,
                     record=sys.argv[1]).start()
# The loop's worst lateness, the CPU its thread used meanwhile, and how long it waited for
# a CPU meanwhile (Linux: the run_delay of /proc/thread-self/schedstat; -1 elsewhere).
worst = [0.0, 0.0, 0.0]
busiest = [0.0]  # the most CPU the loop used in one turn (lateness from its own work)

def run_delay():
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return -1.0

async def lag():
    loop = asyncio.get_running_loop()
    while True:
        start, cpu, waited = loop.time(), time.thread_time(), run_delay()
        await asyncio.sleep(0.05)
        late = loop.time() - start - 0.05
        busiest[0] = max(busiest[0], time.thread_time() - cpu)
        if late > worst[0]:
            worst[:] = [late, time.thread_time() - cpu, run_delay() - waited]

asyncio.run_coroutine_threadsafe(lag(), server.loop)
print(server.publish_url, server.url, flush=True)
sys.stdin.read()
stats = server.stats()
stats.pop("viewers", None)
stats["loop_worst_lag_s"], stats["loop_cpu_during_it_s"], stats["loop_cpu_wait_s"] = worst
stats["loop_busiest_s"] = busiest[0]
stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
stats["cpu_s"] = time.process_time()
server.close()
print(json.dumps(stats, default=str), flush=True)
"""


def env_for(url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPGRAPH_TRACE")}
    env["OPGRAPH_TRACE"] = url
    return env


class PagePoller(threading.Thread):
    """Asks `GET /` every quarter second until stopped; keeps how long each answer took."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.times: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                conn.request("GET", "/")
                body = conn.getresponse().read()
                conn.close()
                assert b"<html" in body.lower()
                self.times.append(time.monotonic() - start)
            except Exception as exc:  # reported, never raised
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.stop.wait(0.25)


def count_recording(path: Path) -> dict:
    """Per scope (= script): the distinct nodes and the backward steps the hub recorded;
    and the runs that started and ended."""
    from opgraph.server.recording import Recording

    scope_of: dict[int, str] = {}
    nodes: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    runs = Counter()
    for event in Recording(path):
        kind = event["type"]
        if kind == "forward":
            scope = event.get("scope", "")
            if event["id"] not in scope_of:
                nodes[scope] += 1
            scope_of[event["id"]] = scope
        elif kind == "backward":
            steps[scope_of.get(event["id"], "")] += 1
        elif kind == "run":
            runs[event["state"]] += 1
    return {"nodes": nodes, "steps": steps, "runs": runs}


def run(scripts: int, nodes: int, passes: int, timeout: float) -> dict:
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="hub_load-"))
    recording = work / "hub.ogtrace"
    hub = subprocess.Popen(
        [sys.executable, "-c", HUB, str(recording)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs: list[subprocess.Popen] = []
    try:
        publish_url, page_url = hub.stdout.readline().split()
        port = int(page_url.split(":")[2].split("/")[0])
        poller = PagePoller(port)
        poller.start()
        start = time.monotonic()
        for k in range(scripts):
            out = open(work / f"s{k}.out", "w")  # noqa: SIM115
            err = open(work / f"s{k}.err", "w")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", SCRIPT, f"s{k}", str(nodes), str(passes)],
                    env=env_for(publish_url),
                    stdout=out,
                    stderr=err,
                )
            )
            out.close()
            err.close()
        for proc in procs:
            proc.wait(timeout=max(timeout - (time.monotonic() - start), 1))
        scripts_done = time.monotonic() - start
        # the hub may still be working through what it received: wait for every run's end
        while time.monotonic() - start < timeout:
            time.sleep(1.0)  # (the recording is flushed every half second)
            if hub_runs_ended(recording):
                break
        settled = time.monotonic() - start
        poller.stop.set()
        poller.join()
        hub.stdin.close()
        stats = json.loads(hub.stdout.readline())
    finally:
        for proc in [*procs, hub]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    counted = count_recording(recording)
    messages = Counter()
    for k in range(scripts):
        for line in (work / f"s{k}.err").read_text().splitlines():
            for what in ("lost the hub", "gave up", "dropped", "not received", "refused"):
                if what in line:
                    messages[what] += 1
    exit_waits = [
        float(line.split()[-1])
        for k in range(scripts)
        for line in (work / f"s{k}.out").read_text().splitlines()
        if line.startswith("exit wait ")
    ]
    expected_steps = passes * nodes
    short = {
        f"s{k}": (counted["nodes"][f"s{k}"], counted["steps"][f"s{k}"])
        for k in range(scripts)
        if counted["nodes"][f"s{k}"] != nodes or counted["steps"][f"s{k}"] != expected_steps
    }
    times = poller.times
    return {
        "scripts": scripts,
        "nodes_per_script": nodes,
        "passes": passes,
        "scripts_done_s": round(scripts_done, 1),
        "hub_settled_s": round(settled, 1),
        "page_gets": len(times),
        "page_median_s": round(statistics.median(times), 3) if times else None,
        "page_worst_s": round(max(times), 3) if times else None,
        "page_over_1s": sum(t > 1.0 for t in times),
        "page_failures": poller.failures[:3],
        "exit_wait_median_s": round(statistics.median(exit_waits), 2) if exit_waits else None,
        "exit_wait_worst_s": round(max(exit_waits), 2) if exit_waits else None,
        "closes": stats.get("closes"),
        "runs_started": counted["runs"]["start"],
        "runs_ended": counted["runs"]["end"],
        "complete_scripts": scripts - len(short),
        "incomplete": dict(list(short.items())[:10]),
        "nodes_recorded": sum(counted["nodes"].values()),
        "nodes_made": scripts * nodes,
        "script_messages": dict(messages),
        "hub_loop_worst_lag_s": round(stats["loop_worst_lag_s"], 3),
        "hub_loop_cpu_during_it_s": round(stats["loop_cpu_during_it_s"], 3),
        "hub_loop_cpu_wait_during_it_s": round(stats["loop_cpu_wait_s"], 3),
        "hub_loop_most_cpu_between_turns_s": round(stats["loop_busiest_s"], 3),
        "hub_peak_rss_mb": round(stats["peak_rss_mb"]),
        "hub_cpu_s": round(stats["cpu_s"], 1),
        "load_before": [round(x, 1) for x in load_before],
        "load_after": [round(x, 1) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "work_dir": str(work),
    }


def hub_runs_ended(recording: Path) -> bool:
    """Whether every run the hub started has ended, by its recording (flushed every half
    second; the scripts have all exited)."""
    try:
        data = recording.read_bytes()
    except OSError:
        return False
    return data.count(b"\xa5state\xa3end") == data.count(b"\xa5state\xa5start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    result = run(args.scripts, args.nodes, args.passes, args.timeout)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
