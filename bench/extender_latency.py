"""Extender latency: filter + prioritize over real HTTP at 1,000 and 5,000 nodes, in both node-cache modes.

    python bench/extender_latency.py [--nodes 1000 5000] [--requests 300] [--churn-ms 20] [--heartbeat-seconds 60]
                                     [--baseline-tree DIR]

The extender runs in its own process (the app `neuron-scheduler-extender` serves, with its cache fed the way
its watches feed it), and so does the baseline: a do-nothing aiohttp handler that reads the same body and
answers `{}`. The client, in this process, sends each pod's filter then prioritize one after the other on a
keep-alive connection, as kube-scheduler does, to the extender and then to the baseline, so both see the same
moment of the machine. Node states are random (inf1/inf2/trn1 mix, about half used); pods ask for 1-16 devices
or cores. One node's state changes every `--churn-ms` (a bind elsewhere), so the memo is invalidated as in a
busy cluster, and every node's plugin rewrites its `observed-at` once per `--heartbeat-seconds` (spread evenly:
at 5,000 nodes and 60 s, one node every 12 ms), as the plugins' heartbeats do. Each node count runs with every
name in each request, and with the window of names kube-scheduler sends with its default
percentageOfNodesToScore (`scheduler_sample`).

`--baseline-tree DIR` also serves the extender from another source tree (for example an older commit,
`git archive <commit> extender neuronalloc neuroncli neuronlog | tar -x -C DIR`), fed the same nodes and the same
churn, and sends it every pod in the same loop: one more row per run, measured at the same moments.

Printed: p50 / p99 of one filter + prioritize pair in steady state (pod shapes seen before), the ratio to the
do-nothing handler given the same bytes, the extender's own mean time per pair (its latency histogram), and
the slowest first pair of a never-seen shape ("cold max": every node judged in the request). The goal: p99
under 10 ms at 5,000 nodes in NodeNames mode.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OBSERVED_AT = "neuron-contig.io/observed-at"
MIX = ("inf1.6xlarge", "inf1.24xlarge", "inf2.48xlarge", "trn1.32xlarge")
NEURON, NEURONCORE = "aws.amazon.com/neuron", "aws.amazon.com/neuroncore"


def random_node(name: str, rng: random.Random) -> dict[str, Any]:
    from neuronalloc import CATALOG, NodeState, encode_node_state, free_sets, resolve_topology

    kind = rng.choice(MIX)
    topo = resolve_topology(kind, CATALOG[kind].devices)
    used = [d for d in range(topo.device_count) if rng.random() < 0.5]
    cores = [c for c in range(topo.core_count) if rng.random() < 0.1]
    free_devices, free_cores = free_sets(topo, used, cores, ())
    from datetime import UTC, datetime

    state = NodeState(topo, free_devices, free_cores, frozenset(), {}, datetime(2026, 11, 22, tzinfo=UTC))
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": {"node.kubernetes.io/instance-type": kind},
                     "annotations": encode_node_state(state)},
        "spec": {"providerID": f"aws:///us-west-2a/{name}"},
        "status": {"capacity": {NEURON: str(topo.device_count)}},
    }  # fmt: skip


SHAPES = [(resource, size) for resource in (NEURON, NEURONCORE) for size in (1, 2, 4, 8, 16)]


def random_pod(index: int, rng: random.Random, shape: tuple[str, int] | None = None) -> dict[str, Any]:
    resource, size = shape or (NEURONCORE if rng.random() < 0.3 else NEURON, rng.choice((1, 2, 4, 8, 16)))
    limits = {resource: str(size), "cpu": "4"}
    return {
        "metadata": {"name": f"pod-{index}", "namespace": "bench", "uid": f"u-{index}"},
        "spec": {"containers": [{"name": "main", "resources": {"limits": limits, "requests": limits}}]},
        "status": {"phase": "Pending"},
    }


def serve_extender(port: Any, nodes: int, seed: int, churn_ms: float, heartbeat_s: float, tree: str) -> None:
    """The extender app, its cache filled as its reflectors fill it, plus a task that changes one node now and
    then (a stand-in for binds elsewhere in the cluster) and one that rewrites each node's observed-at once per
    `heartbeat_s` (the plugins' heartbeats). `tree`: serve the extender from that source tree instead."""
    if tree:
        sys.path.insert(0, tree)
    from aiohttp import web

    from extender.main import tune_gc
    from extender.metrics import ExtenderMetrics
    from extender.server import ServerSettings, build_app

    view: Any
    try:
        from extender.cache import ClusterStore
        from extender.verdicts import Verdicts

        view = Verdicts(ClusterStore())
    except ImportError:  # an older tree (--tree), where one ClusterView was both the store and the verdicts
        from extender.cache import ClusterView  # type: ignore[attr-defined]

        view = ClusterView()
        view.store = view
    rng = random.Random(seed)
    current = {f"node-{i}": random_node(f"node-{i}", rng) for i in range(nodes)}
    view.store.apply("nodes", "SYNC", tuple(current.values()))
    view.store.apply("pods", "SYNC", ())
    tune_gc()  # as `neuron-scheduler-extender` does at start

    # Made before serving, as JSON: in the loop a change costs what a watch event costs the extender (decode
    # the object, apply it, re-judge the node), not what making up a random node state costs the bench.
    changes = [orjson.dumps(random_node(f"node-{rng.randrange(nodes)}", rng)) for _ in range(2000)]

    async def churn(_: web.Application) -> Any:
        async def change_states() -> None:
            for change in itertools.cycle(changes):
                await asyncio.sleep(churn_ms / 1000)
                doc = orjson.loads(change)
                current[doc["metadata"]["name"]] = doc
                view.store.apply("nodes", "MODIFIED", (doc,))

        async def heartbeats() -> None:
            for beat, name in enumerate(itertools.cycle(list(current))):
                await asyncio.sleep(heartbeat_s / nodes)
                doc = orjson.loads(orjson.dumps(current[name]))  # decoded from JSON, as a watch event is
                doc["metadata"]["annotations"][OBSERVED_AT] = time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_795_000_000 + beat)
                )
                current[name] = doc
                view.store.apply("nodes", "MODIFIED", (doc,))

        tasks = [asyncio.create_task(change_states())] if churn_ms > 0 else []
        tasks += [asyncio.create_task(heartbeats())] if heartbeat_s > 0 else []
        yield
        for task in tasks:
            task.cancel()

    async def backlog(_: web.Request) -> web.Response:
        return web.json_response({"backlog": view.warm_backlog})

    app = build_app(ServerSettings(), view, None, ExtenderMetrics())
    app.cleanup_ctx.append(churn)
    app.router.add_get("/bench/backlog", backlog)  # bench only: lets the client wait for the warmer
    _run(app, port)


def serve_nothing(port: Any) -> None:
    """The baseline: read the body, answer `{}`."""
    from aiohttp import web

    async def nothing(request: web.Request) -> web.Response:
        await request.read()  # and answers "every node passes", so the prioritize body is the same size
        return web.Response(body=b'{"NodeNames": null, "Nodes": null}', content_type="application/json")

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/filter", nothing)
    app.router.add_post("/prioritize", nothing)
    _run(app, port)


def _run(app: Any, port: Any) -> None:
    from aiohttp import web

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.value = runner.addresses[0][1]
        await asyncio.Event().wait()

    asyncio.run(main())


def start(target: Any, *args: Any) -> tuple[Any, int]:
    ctx = multiprocessing.get_context("spawn")
    port = ctx.Value("i", 0)
    proc = ctx.Process(target=target, args=(port, *args), daemon=True)
    proc.start()
    deadline = time.monotonic() + 120
    while port.value == 0:
        if time.monotonic() > deadline or not proc.is_alive():
            raise RuntimeError("server process did not start")
        time.sleep(0.05)
    return proc, int(port.value)


def measure(pool: urllib3.PoolManager, bases: list[str], bodies: list[bytes], warmup: int = 0) -> list[list[float]]:
    """Seconds per filter + prioritize pair, per server in `bases`, after `warmup` unmeasured pairs. Each body
    goes to every server in turn, so all see the same moment of a shared 2-core machine. As kube-scheduler
    does, the prioritize request carries only the nodes that passed filter. The client's own garbage
    collector is off while it measures: a pause of the bench's Python is not the extender's latency."""
    samples: list[list[float]] = [[] for _ in bases]
    gc.collect()
    gc.disable()
    try:
        for i, body in enumerate(bodies):
            for base, out in zip(bases, samples, strict=True):
                begin = time.perf_counter()
                pair(pool, base, body)
                if i >= warmup:
                    out.append(time.perf_counter() - begin)
    finally:
        gc.enable()
    return samples


def pair(pool: urllib3.PoolManager, base: str, body: bytes) -> None:
    filtered = post(pool, base + "/filter", body)
    doc = orjson.loads(body)
    # The do-nothing baseline answers null: its prioritize then carries every node (the larger body).
    if doc["NodeNames"] is not None and filtered.get("NodeNames") is not None:
        doc["NodeNames"] = filtered["NodeNames"]
    elif doc["Nodes"] is not None and filtered.get("Nodes") is not None:
        doc["Nodes"] = filtered["Nodes"]
    post(pool, base + "/prioritize", orjson.dumps(doc))


def post(pool: urllib3.PoolManager, url: str, body: bytes) -> Any:
    response = pool.request("POST", url, body=body, headers={"Content-Type": "application/json"}, retries=False,
                            timeout=60)  # fmt: skip
    if response.status != 200:
        raise RuntimeError(f"{url}: {response.status} {response.data[:200]!r}")
    return orjson.loads(response.data)


def wait_warm(pool: urllib3.PoolManager, base: str, limit: float = 300.0) -> None:
    """Until the extender's warmer has caught up with the shapes just seen (churn keeps it small, not 0)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if orjson.loads(pool.request("GET", base + "/bench/backlog").data)["backlog"] <= 5:
            return
        time.sleep(0.2)
    raise RuntimeError("warmer did not catch up")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def scheduler_sample(nodes: int) -> int:
    """How many feasible nodes kube-scheduler looks for, hence at most how many names reach the extender, with
    the default percentageOfNodesToScore (numFeasibleNodesToFind in pkg/scheduler/schedule_one.go): all below
    100 nodes, else (50 - nodes/125)% with a floor of 5% and of 100 nodes. 500 at 5,000 nodes."""
    if nodes < 100:
        return nodes
    return max(100, nodes * max(5, 50 - nodes // 125) // 100)


def server_seconds(pool: urllib3.PoolManager, base: str) -> float:
    """Total time the extender's own histogram has measured for filter and prioritize so far."""
    text = pool.request("GET", base + "/metrics").data.decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("neuron_contig_extender_request_duration_seconds_sum") and "bind" not in line
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="extender filter+prioritize latency over real HTTP")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--requests", type=int, default=300, help="measured pairs per NodeNames run")
    parser.add_argument("--nodes-mode-requests", type=int, default=40, help="measured pairs per Nodes run")
    parser.add_argument("--churn-ms", type=float, default=20.0)
    parser.add_argument("--heartbeat-seconds", type=float, default=60.0, help="0 = no observed-at heartbeats")
    parser.add_argument("--baseline-tree", default="", help="also serve the extender from this source tree")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    pool = urllib3.PoolManager(maxsize=1)
    print(f"{'nodes':>6} {'mode':<10} {'names':>6} {'body':>8} {'server':<6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'noop p50':>9} {'noop p99':>9} {'x p50':>6} {'x p99':>6} {'own ms':>7} {'cpu':>6} "
          f"{'cold max':>9}")  # fmt: skip
    noop, noop_port = start(serve_nothing)
    trees = {"ours": "", **({"base": args.baseline_tree} if args.baseline_tree else {})}
    try:
        for count in args.nodes:
            servers = {
                name: start(serve_extender, count, args.seed, args.churn_ms, args.heartbeat_seconds, tree)
                for name, tree in trees.items()
            }
            try:
                bases = {name: (f"http://127.0.0.1:{port}", proc.pid) for name, (proc, port) in servers.items()}
                run_node_count(pool, args, count, bases, f"http://127.0.0.1:{noop_port}")
            finally:
                for proc, _ in servers.values():
                    proc.terminate()
                    proc.join(10)
    finally:
        noop.terminate()
        noop.join(10)
    print("names: per request; below the node count, the window kube-scheduler sends with its default")
    print("  percentageOfNodesToScore. server: ours, or base (--baseline-tree). own ms: that extender's own mean")
    print("  time per pair, from its histogram. x: ratio to the do-nothing handler given the same bytes. cpu: that")
    print("  extender's CPU time over the measured loop per wall second (requests, churn, heartbeats, its warmer).")
    print("goal: p99 < 10 ms for filter + prioritize at 5,000 nodes in NodeNames mode")
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_node_count(
    pool: urllib3.PoolManager, args: argparse.Namespace, count: int, servers: dict[str, tuple[str, int]], noop: str
) -> None:
    extenders = {name: base for name, (base, _) in servers.items()}
    rng = random.Random(args.seed)
    names = [f"node-{i}" for i in range(count)]
    node_docs = [random_node(name, random.Random(args.seed + i)) for i, name in enumerate(names)]
    sample = scheduler_sample(count)
    runs = [("NodeNames", count, args.requests)]
    if sample < count:
        runs.append(("NodeNames", sample, args.requests))
    runs.append(("Nodes", count, args.nodes_mode_requests))
    for mode, width, n in runs:
        window = itertools.count(0, width)  # where kube-scheduler's next search starts: it moves on each time

        def body(pod: dict[str, Any], mode: str = mode, width: int = width, window: Any = window) -> bytes:
            start = next(window) % count
            chosen = (names + names)[start : start + width]
            if mode == "NodeNames":
                return orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": chosen})
            docs = (node_docs + node_docs)[start : start + width]
            return orjson.dumps({"Pod": pod, "Nodes": {"items": docs}, "NodeNames": None})

        # First pod of each shape: the extender judges every node (cold), then its warmer keeps those verdicts
        # current in the background. Steady state is what the scheduler sees.
        first = [body(random_pod(i, rng, shape)) for i, shape in enumerate(SHAPES)]
        colds = measure(pool, list(extenders.values()), first)
        for base in extenders.values():
            wait_warm(pool, base)
        bodies = [body(random_pod(i, rng)) for i in range(n + 10)]
        before = {name: server_seconds(pool, base) for name, base in extenders.items()}
        cpu_before = {name: cpu_seconds(pid) for name, (_, pid) in servers.items()}
        wall = time.monotonic()
        *ours, floor = measure(pool, [*extenders.values(), noop], bodies, 10)
        wall = time.monotonic() - wall
        for (name, base), samples, cold in zip(extenders.items(), ours, colds, strict=True):
            own_ms = (server_seconds(pool, base) - before[name]) / len(bodies) * 1000
            cpu = (cpu_seconds(servers[name][1]) - cpu_before[name]) / wall * 100
            print(f"{count:>6} {mode:<10} {width:>6} {len(bodies[0]) / 1024:>6.0f}KB {name:<6} "
                  f"{pct(samples, .5):>7.2f} {pct(samples, .99):>7.2f} {pct(floor, .5):>9.2f} {pct(floor, .99):>9.2f} "
                  f"{pct(samples, .5) / pct(floor, .5):>6.1f} {pct(samples, .99) / pct(floor, .99):>6.1f} "
                  f"{own_ms:>7.2f} {cpu:>5.1f}% {max(cold) * 1000:>9.0f}")  # fmt: skip
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
