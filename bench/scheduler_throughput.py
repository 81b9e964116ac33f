"""Scheduling throughput on the real control plane: the stock kube-scheduler against ours (with the extender).

    python bench/scheduler_throughput.py          # the whole table, each run twice (about 14 minutes here)
    python bench/scheduler_throughput.py --nodes 1000 --qps 500 --bound 0 --repeat 1   # one pair, 1-2 minutes

Needs what the cluster tier needs (root, `tests/cluster/bin/neuronsim`). Per node count, one control plane from
`tests/cluster/harness.py`: etcd, kube-apiserver and our extender, then Node objects only (no kubelet, no plugin):
a seeded mix of inf1.6xlarge / inf1.24xlarge / inf2.48xlarge / trn1.32xlarge whose `status.allocatable` counts
both resources and whose `neuron-contig.io/` annotations are what our plugin would publish
(`neuronalloc.encode_node_state`, no plugin address) with about 40% of the devices held: the holders are placed
with the plugin's allocator past 40%, then some leave again, so the free sets are fragmented as after churn.

For each configuration, the same 1,000 pods (1-8 devices or 1-16 cores, seeded) are created, all of them before the
scheduler starts, once for the stock profile (`default-scheduler`: counts only, no extender) and once for ours
(`deploy/scheduler/kube-scheduler-config.yaml`: our extender's /filter-best, which filters and keeps the
best-scoring nodes in one call, then its /bind), on the same nodes. One scheduler runs at a time, with client QPS
`--qps` and burst twice that; after each run its pods are deleted, so every run starts from the same cluster. Each
pair runs `--repeat` times, in the other order every second time. Before the table, one run of ours that is not
counted fills the extender's verdict memo, as a long-running extender's is (`--no-warm-up` to skip it). More
profiles can join (`--profile stock ours classic noop noopbind`): `classic`, our extender with the scheduler
configuration before /filter-best (/filter, then /prioritize with weight 5, then /bind: the chart's
`scheduler.filterBest: false`); `noop`, our scheduler configuration's filter verb sent to a do-nothing extender
(`bench/noop_extender.py`, aiohttp over the same mutual TLS; no bind verb), the floor any Python extender pays in
the scheduler's cycle here; `noopbind`, the same with the bind verb, which it answers with the one Binding POST
(`extender.kube.KubeApi.bind_async`) and nothing else: the floor with every bind through an extender.

The variant `--bound 20000` first creates 20,000 pods already bound (`spec.nodeName` set), spread over the
nodes: the holders named in the annotations, with matching requests, then CPU-only pods up to the count; so a
bind's cost can be read with 1,000 and with 20,000 pods in the cluster. It runs at the highest `--qps` chosen.

Printed per run:
  pods/s     binds per second from the first bind to the last, as this process's pod watch saw them
  ratio      ours / stock pods/s in the same configuration (the same moment of a shared machine)
  p50 / p99  seconds from a pod's creation to its bind (all pods exist before the scheduler starts, so this
             is mostly the wait in the queue); 1st: from the scheduler's start to the first bind
  cycle      the scheduler's mean serial scheduling cycle (its own metric: the extender's filter (and prioritize,
             in `classic`) are inside it, binds are not; they run in goroutines): pods/s cannot exceed 1000 / cycle
  filter / prioritize / bind  the extender's mean ms per request, from its own `/metrics` histograms (/filter-best
             counts as filter)
  bad        predicted grants that are not one valid block or that overlap another grant or a held ID: each
             node's bound pods placed with the plugin's allocator through the extender's prediction
             (`extender.fit.judge_node`, then `neuronalloc.check_block`) in the order they were bound, the order
             kubelet admits pods that reach it one by one (and the extender predicts); a pod for which no block is
             left counts too (kubelet would refuse it). No kubelet admits anything here: this is the plan the
             binds imply. `bad*`: the same, the pods placed oldest first, as kubelet admits pods it receives in
             one batch (after its restart): for reference, not a goal
  cores      mean CPU cores used by kube-apiserver, etcd, kube-scheduler and the extender between the first and
             the last bind, and by the whole machine (`all`, others' work included)
With `--api-detail`, the scheduler's cycle and attempt times, and the API server's own mean time per (verb,
resource) during each run, from its metrics. A summary at the end gives each figure as mean [min-max].

Extra extender flags go through `--extender-arg=--flag=value` (repeatable); `--extender-launcher` prefixes its
command (for example `"python -m cProfile -o /tmp/x.prof"`), and `--py-spy DIR` samples it with py-spy during
every run of ours (`--py-spy-args=--gil` for where its Python time goes). `--loop-lag` runs the extender under
`bench/looplag.py` and prints how late its event loop ran a ready callback during each run of ours (mean, max,
share of samples over 1 / 5 / 20 ms); `--extender-tree DIR` serves the extender from another source tree (an
older commit), for before/after figures on the same bench. The extender's URL and TLS come from the harness,
whatever it starts the extender with.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import looplag
from extender.fit import PendingPod, judge_node
from extender.wire import PodInfo, parse_pod
from neuronalloc import (
    CATALOG,
    NodeState,
    PodHolding,
    Refusal,
    Resource,
    Topology,
    allocate,
    check_block,
    encode_node_state,
    free_sets,
    hardware_of,
    resolve_topology,
)
from tests.cluster.harness import (
    ADMIN_TOKEN,
    OUR_SCHEDULER,
    STOCK_SCHEDULER,
    Cluster,
    bare_node,
    missing_prerequisites,
)
from tests.cluster.processes import ManagedProcess, free_port, wait_for

MIX = ("inf1.6xlarge", "inf1.24xlarge", "inf2.48xlarge", "trn1.32xlarge")
USED_SHARE = 0.4
NEURON, NEURONCORE = Resource.NEURON, Resource.NEURONCORE
BOUND_NAMESPACE = "bench-bound"
PROFILES = ("stock", "ours", "classic", "noop", "noopbind")
OBSERVED_AT = datetime(2026, 1, 1, tzinfo=UTC)
STALL_SECONDS = 15.0  # no bind for this long: the rest are unschedulable (or the scheduler is stuck)


# ---- the cluster's contents ---------------------------------------------------------------------------------


@dataclass
class BenchNode:
    name: str
    topology: Topology
    state: NodeState
    holders: dict[str, tuple[Resource, int]]  # pod key -> what it asks (= what it holds)

    @property
    def allocatable(self) -> dict[str, str]:
        topo = self.topology
        return {
            NEURON.value: str(topo.device_count), NEURONCORE.value: str(topo.core_count),
            "cpu": "96", "memory": "768Gi", "pods": "110",
        }  # fmt: skip


def make_node(name: str, rng: random.Random) -> BenchNode:
    """A node whose published state has about USED_SHARE of its devices held by pods our plugin placed."""
    kind = rng.choice(MIX)
    topo = resolve_topology(kind, CATALOG[kind].devices)
    held: dict[str, tuple[Resource, tuple[int, ...]]] = {}

    def free() -> tuple[frozenset[int], frozenset[int]]:
        devices = [i for r, ids in held.values() if r is NEURON for i in ids]
        cores = [i for r, ids in held.values() if r is NEURONCORE for i in ids]
        return free_sets(topo, devices, cores, ())

    def used_share() -> float:
        return 1 - len(free()[0]) / topo.device_count

    serial = 0
    misses = 0
    # Fill past the target, then let random holders leave down to it: the fragmentation of a cluster with churn.
    while used_share() < min(0.9, USED_SHARE + 0.25) and misses < 20:
        resource = rng.choice((NEURON, NEURONCORE))
        size = rng.choice((1, 2, 4)) if resource is NEURON else rng.choice((1, 2, 4, 8))
        free_devices, free_cores = free()
        block = allocate(topo, resource, free_devices if resource is NEURON else free_cores, size)
        if isinstance(block, Refusal):
            misses += 1
            continue
        serial += 1
        held[f"{BOUND_NAMESPACE}/h-{name}-{serial}"] = (resource, block)
    while held and (share := used_share()) > USED_SHARE:
        key = rng.choice(sorted(held))
        leaving = held.pop(key)
        if USED_SHARE - used_share() > share - USED_SHARE:  # the share nearest the target, from either side
            held[key] = leaving
            break
    free_devices, free_cores = free()
    pods = {
        key: PodHolding(devices=frozenset(ids)) if r is NEURON else PodHolding(cores=frozenset(ids))
        for key, (r, ids) in held.items()
    }
    state = NodeState(topo, free_devices, free_cores, frozenset(), pods, OBSERVED_AT)
    return BenchNode(name, topo, state, {key: (r, len(ids)) for key, (r, ids) in held.items()})


def make_nodes(count: int, seed: int) -> list[BenchNode]:
    rng = random.Random(seed)
    return [make_node(f"bench-{i:05d}", rng) for i in range(count)]


def run_pods(count: int, seed: int) -> list[tuple[str, Resource, int]]:
    """The pods every run schedules: half ask for 1-8 devices, half for 1-16 cores."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        resource = rng.choice((NEURON, NEURONCORE))
        out.append((f"p-{i:05d}", resource, rng.randint(1, 8) if resource is NEURON else rng.randint(1, 16)))
    return out


def pod_doc(name: str, limits: dict[str, str], *, scheduler: str | None = None, node: str | None = None) -> Any:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": {"limits": limits}}],
    }
    if scheduler:
        spec["schedulerName"] = scheduler
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def bound_pods(nodes: Sequence[BenchNode], total: int) -> list[tuple[str, Any]]:
    """(namespace, pod) for `total` pods already bound: every holder the annotations name, with its request,
    then CPU-only pods, round-robin over the nodes."""
    docs: list[tuple[str, Any]] = []
    for node in nodes:
        for key, (resource, size) in node.holders.items():
            namespace, name = key.split("/")
            docs.append((namespace, pod_doc(name, {resource.value: str(size)}, node=node.name)))
    for i in range(max(0, total - len(docs))):
        node = nodes[i % len(nodes)]
        docs.append((BOUND_NAMESPACE, pod_doc(f"cpu-{i:05d}", {"cpu": "10m"}, node=node.name)))
    return docs


# ---- talking to the API server ------------------------------------------------------------------------------


class Api:
    """Raw JSON over urllib3 with the admin token: faster than the generated client for bulk work."""

    def __init__(self, cluster: Cluster, workers: int = 8) -> None:
        self.base = f"https://127.0.0.1:{cluster.api_port}"
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        self.pool = urllib3.PoolManager(
            maxsize=workers, ca_certs=str(cluster.pki / "apiserver.crt"), assert_hostname=False
        )
        self.workers = workers

    def request(self, method: str, path: str, body: Any = None, ok: Sequence[int] = (200, 201)) -> Any:
        data = None if body is None else orjson.dumps(body)
        response = self.pool.request(method, self.base + path, body=data, headers=self.headers, timeout=60,
                                     retries=False)  # fmt: skip
        if response.status not in ok:
            raise RuntimeError(f"{method} {path}: {response.status} {response.data[:300]!r}")
        return orjson.loads(response.data) if response.data else None

    def create_many(self, items: Sequence[tuple[str, Any]]) -> None:
        """POST each (path, body), `workers` at a time."""
        with ThreadPoolExecutor(self.workers) as pool:
            for _ in pool.map(lambda item: self.request("POST", item[0], item[1]), items):
                pass

    def ensure_namespace(self, name: str) -> None:
        self.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}}, ok=(201, 409))

    def pods(self, namespace: str) -> list[Any]:
        return list(self.request("GET", f"/api/v1/namespaces/{namespace}/pods")["items"])

    def delete_pods(self, namespace: str) -> None:
        """Every pod in the namespace, at once (grace 0: no kubelet will confirm a graceful delete)."""
        self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods?gracePeriodSeconds=0")
        wait_for(f"pods of {namespace} to be gone", lambda: not self.pods(namespace), timeout=120, interval=0.5)

    def metrics(self) -> str:
        response = self.pool.request("GET", self.base + "/metrics", headers=self.headers, timeout=30)
        return str(response.data.decode())


class PodWatch(threading.Thread):
    """Watches one namespace's pods: when each was first seen and when it was first seen bound.

    A busy API server closes watchers that fall behind ("unresponsive"): the watch is then opened again from the
    last resourceVersion seen, and the events it replays are stamped when they arrive (`reopened` counts it)."""

    def __init__(self, api: Api, namespace: str) -> None:
        super().__init__(name=f"watch-{namespace}", daemon=True)
        self.api = api
        self.namespace = namespace
        self.seen: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.reopened = 0
        self.failed: BaseException | None = None
        self._response: Any = None
        self._stopping = threading.Event()
        self._version = api.request("GET", f"/api/v1/namespaces/{namespace}/pods")["metadata"]["resourceVersion"]

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._watch_once()
                if not self._stopping.is_set():
                    self.reopened += 1
        except BaseException as err:  # reported by the run, unless we closed the stream ourselves
            if not self._stopping.is_set():
                self.failed = err

    def _watch_once(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods?watch=1&resourceVersion={self._version}&timeoutSeconds=3600"
        self._response = self.api.pool.request("GET", self.api.base + path, headers=self.api.headers,
                                               preload_content=False, timeout=urllib3.Timeout(connect=10))  # fmt: skip
        pending = b""
        for chunk in self._response.stream(amt=None, decode_content=False):
            now = time.monotonic()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    self._event(orjson.loads(line), now)
        self._response.release_conn()

    def _event(self, event: Any, now: float) -> None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        if event.get("type") == "ERROR":
            raise RuntimeError(f"watch error: {obj.get('message')}")
        self._version = meta.get("resourceVersion") or self._version
        name = meta.get("name")
        if not name or event.get("type") not in ("ADDED", "MODIFIED"):
            return
        self.seen.setdefault(name, now)
        if (obj.get("spec") or {}).get("nodeName") and name not in self.bound:
            self.bound[name] = now

    def stop(self) -> None:
        self._stopping.set()
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.shutdown()
                self._response.release_conn()


# ---- CPU accounting -----------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) the process has used so far, 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


class CpuSampler(threading.Thread):
    """Samples the CPU time of named processes and of the machine, `hz` times a second. A process may be named
    late (the scheduler, once started): rates are taken over the samples that know every process."""

    def __init__(self, procs: dict[str, ManagedProcess | None], hz: float = 10.0) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.procs = dict(procs)
        self.period = 1.0 / hz
        self.samples: list[tuple[float, dict[str, float], tuple[float, float]]] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.period):
            known = {k: process_cpu(p.pid) for k, p in list(self.procs.items()) if p is not None and p.pid}
            self.samples.append((time.monotonic(), known, machine_busy()))

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def cores(self, start: float, end: float) -> tuple[dict[str, float], float]:
        """Mean cores used per process, and by the whole machine, between `start` and `end`."""
        names = [k for k, p in self.procs.items() if p is not None]
        inside = [s for s in self.samples if start <= s[0] <= end and all(n in s[1] for n in names)]
        if len(inside) < 2:
            return {}, 0.0
        (t0, first, m0), (t1, last, m1) = inside[0], inside[-1]
        span = t1 - t0
        busy = (m1[0] - m0[0]) / (m1[1] - m0[1]) * (os.cpu_count() or 1) if m1[1] > m0[1] else 0.0
        return {n: (last[n] - first[n]) / span for n in names}, busy


def wait_quiet(procs: Sequence[ManagedProcess], limit: float = 180.0, below: float = 0.15) -> None:
    """Until these processes together use less than `below` CPU seconds in one second (caches caught up)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = sum(process_cpu(p.pid) for p in procs)
        time.sleep(1.0)
        if sum(process_cpu(p.pid) for p in procs) - before < below:
            return
    print(f"  (still busy after {limit:.0f} s; measuring anyway)", flush=True)


# ---- metrics ------------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def histogram_sums(text: str, name: str, keys: Sequence[str]) -> dict[tuple[str, ...], list[float]]:
    """For histogram `name`: (label values of `keys`) -> [sum, count], added up over the other labels."""
    out: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in (f"{name}_sum", f"{name}_count"):
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        slot = 0 if match.group(1).endswith("_sum") else 1
        out[tuple(labels.get(k, "") for k in keys)][slot] += float(match.group(3))
    return out


def delta_means(
    before: dict[tuple[str, ...], list[float]], after: dict[tuple[str, ...], list[float]]
) -> dict[tuple[str, ...], tuple[int, float]]:
    """key -> (requests, mean ms) between two scrapes."""
    out = {}
    for key, (total, count) in after.items():
        old_total, old_count = before.get(key, [0.0, 0.0])
        if count > old_count:
            out[key] = (int(count - old_count), (total - old_total) / (count - old_count) * 1000)
    return out


def scheduler_metrics_args(port: int) -> list[str]:
    """kube-scheduler flags that serve its /metrics on loopback without credentials."""
    return [f"--secure-port={port}", "--bind-address=127.0.0.1",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"]  # fmt: skip


def scrape_unverified(url: str) -> str:
    import urllib.request

    # The scheduler's self-signed serving certificate, on loopback: nothing to verify it against.
    with urllib.request.urlopen(url, timeout=30, context=ssl._create_unverified_context()) as response:
        return str(response.read().decode())


def scheduler_figures(text: str) -> dict[str, float]:
    """From the scheduler's own metrics (it starts fresh for each run): the mean ms of its serial scheduling
    cycle (`algorithm`: from the start of an attempt to the host chosen, extender filter and prioritize
    included) and of a successful attempt (`attempt`: the same, plus the bind)."""
    out: dict[str, float] = {}
    for key, name, labels in (
        ("algorithm", "scheduler_scheduling_algorithm_duration_seconds", ()),
        ("attempt", "scheduler_scheduling_attempt_duration_seconds", ("result",)),
    ):
        sums = histogram_sums(text, name, labels)
        if labels:
            sums = {k: v for k, v in sums.items() if k == ("scheduled",)}
        total, count = sum(v[0] for v in sums.values()), sum(v[1] for v in sums.values())
        out[key] = total / count * 1000 if count else float("nan")
        out[f"{key}_n"] = count
    return out


EXTENDER_HISTOGRAM = "neuron_contig_extender_request_duration_seconds"


def api_server_sums(text: str) -> dict[tuple[str, ...], list[float]]:
    """The API server's time per (verb, resource, subresource), and ("WAIT", resource, "") for the time its
    consistent reads waited for the watch cache to catch up with etcd."""
    sums = histogram_sums(text, "apiserver_request_duration_seconds", ("verb", "resource", "subresource"))
    waits = histogram_sums(text, "apiserver_watch_cache_read_wait_seconds", ("resource",))
    sums.update({("WAIT", resource, ""): value for (resource,), value in waits.items()})
    return sums


class ExtenderScrape:
    """GET /metrics from the extender, over whatever transport the harness gave it."""

    def __init__(self, cluster: Cluster, extra_args: Sequence[str]) -> None:
        port = next((a.split("=", 1)[1] for a in extra_args if a.startswith("--metrics-port=")), "0")
        base = getattr(cluster, "extender_url", f"http://127.0.0.1:{cluster.extender_port}")
        context = None
        if base.startswith("https"):
            context = cluster.extender_ssl_context() if hasattr(cluster, "extender_ssl_context") else None
        if port not in ("", "0"):
            base, context = f"http://127.0.0.1:{port}", None
        self.url = base + "/metrics"
        self.context = context or ssl.create_default_context()

    def __call__(self) -> str:
        import urllib.request

        context = self.context if self.url.startswith("https") else None
        with urllib.request.urlopen(self.url, timeout=30, context=context) as response:
            return str(response.read().decode())


# ---- the plan the binds imply -------------------------------------------------------------------------------


@dataclass
class PlanCheck:
    checked: int = 0  # pods bound to a node, checked
    no_block: int = 0  # no valid block left for the pod: kubelet would hand it a scattered set
    not_a_block: int = 0  # a predicted grant that check_block refuses
    overlap: int = 0  # a predicted grant that overlaps another grant or an ID the node already holds

    @property
    def bad(self) -> int:
        return self.no_block + self.not_a_block + self.overlap


def check_plan(nodes: dict[str, BenchNode], docs: Sequence[Any], order: dict[str, float] | None) -> PlanCheck:
    """Place each node's bound pods and check every grant: in the order given (pod name -> when it was bound:
    the order kubelet admits pods that reach it one by one, which the extender predicts), or oldest first
    (`order` None: how kubelet admits pods it receives in one batch, as after its restart)."""
    result = PlanCheck()
    by_node: dict[str, list[PodInfo]] = defaultdict(list)
    for doc in docs:
        pod = parse_pod(doc)
        if pod.node_name and not pod.request.empty:
            by_node[pod.node_name].append(pod)
    for name, pods in by_node.items():
        node = nodes[name]
        topo, state = node.topology, node.state
        taken = set(range(topo.core_count)) - state.free_cores  # cores not free before any of these pods
        before: list[PendingPod] = []
        ranked = sorted(pods, key=lambda p: (p.created, p.key) if order is None else (order.get(p.name, 0.0), p.key))
        for pod in ranked:
            result.checked += 1
            # `before` placed in the chosen order: their place in the admission order is their rank.
            verdict = judge_node(state, before, pod.request, scored=True)
            before.append(PendingPod(pod.key, len(before), pod.request))
            if not verdict.fits:
                result.no_block += 1
                continue
            for resource, block in verdict.blocks:
                if check_block(topo, resource, block) is not None:
                    result.not_a_block += 1
                cores = hardware_of(topo, resource, block).cores
                clash = bool(cores & taken) or (resource.whole_devices and not set(block) <= state.free_devices)
                result.overlap += clash
                taken |= cores
    return result


# ---- one run ------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    profile: str
    nodes: int
    qps: int
    bound_before: int
    pods: int
    bound: int = 0
    seconds: float = 0.0
    to_first_bind: float = 0.0
    latencies: list[float] = field(default_factory=list)
    verbs: dict[str, tuple[int, float]] = field(default_factory=dict)
    api: dict[tuple[str, ...], tuple[int, float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0  # cores busy on average between the first and last bind
    plan: PlanCheck = field(default_factory=PlanCheck)  # bound pods placed oldest first, as the extender predicts
    plan_bound_order: PlanCheck = field(default_factory=PlanCheck)  # placed in the order they were bound
    watch_reopened: int = 0
    scheduler: dict[str, float] = field(default_factory=dict)  # see `scheduler_figures`
    lag: dict[str, float] = field(default_factory=dict)  # the extender's event-loop lag (`bench.looplag.read`)

    @property
    def rate(self) -> float:
        return (self.bound - 1) / self.seconds if self.bound > 1 and self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, nodes: list[BenchNode]) -> None:
        self.args = args
        self.cluster = cluster
        self.nodes = {n.name: n for n in nodes}
        self.api = Api(cluster)
        self.extender_metrics = ExtenderScrape(cluster, args.extender_arg)
        self.pods = run_pods(args.pods, args.seed + 1)
        self.serial = 0
        self.lag_file: Path | None = None
        self.noop: ManagedProcess | None = None
        self.noop_port = 0

    def procs(self, scheduler: ManagedProcess | None, profile: str = "ours") -> dict[str, ManagedProcess | None]:
        names = {p.name: p for p in self.cluster._control_plane}
        return {
            "apiserver": names.get("kube-apiserver"), "etcd": names.get("etcd"), "scheduler": scheduler,
            "extender": self.noop if profile.startswith("noop") else self.cluster.extender,
        }  # fmt: skip

    def start_noop_scheduler(
        self, *, client_qps: float, client_burst: int, extra_args: Sequence[str], bind: bool = False
    ) -> ManagedProcess:
        """Our scheduler's configuration with its filter verb sent to `bench/noop_extender.py` (over the same mutual
        TLS) and no bind verb: the cycle's cost of a round trip to a Python server doing nothing. `bind`: its bind
        verb too, which the do-nothing extender answers with the one Binding POST and nothing else."""
        self.ensure_noop()
        config = self.cluster._our_scheduler_config()
        config["clientConnection"]["qps"], config["clientConnection"]["burst"] = client_qps, client_burst
        for extender in config.get("extenders", []):
            extender["urlPrefix"] = f"https://127.0.0.1:{self.noop_port}"
            if not bind:
                extender.pop("bindVerb", None)
        return self.cluster._start_scheduler("noop-kube-scheduler", config, extra_args)

    def start_classic_scheduler(
        self, *, client_qps: float, client_burst: int, extra_args: Sequence[str]
    ) -> ManagedProcess:
        """Our scheduler's configuration as it was before /filter-best: /filter, then /prioritize with weight 5, then
        /bind (the chart's `scheduler.filterBest: false`)."""
        config = self.cluster._our_scheduler_config()
        config["clientConnection"]["qps"], config["clientConnection"]["burst"] = client_qps, client_burst
        for extender in config.get("extenders", []):
            extender.update(filterVerb="filter", prioritizeVerb="prioritize", weight=5)
        return self.cluster._start_scheduler("classic-kube-scheduler", config, extra_args)

    def ensure_noop(self) -> None:
        cluster = self.cluster
        if self.noop is None:
            pki = cluster.extender_pki
            self.noop_port = free_port()
            self.noop = ManagedProcess("noop-extender", [
                sys.executable, str(Path(__file__).with_name("noop_extender.py")), f"--port={self.noop_port}",
                f"--cert={pki.server.cert}", f"--key={pki.server.key}", f"--client-ca={pki.ca_file}",
                f"--kubeconfig={cluster.kubeconfig}",
            ], cluster.logs / "noop-extender.log").start()  # fmt: skip
            context = cluster.extender_ssl_context()
            url = f"https://127.0.0.1:{self.noop_port}/readyz"
            wait_for("noop extender", lambda: _ok(url, context), timeout=60, watch=[self.noop])

    def close(self) -> None:
        if self.noop is not None:
            self.noop.stop()

    def run(self, profile: str, qps: int, bound_before: int) -> RunResult:
        self.serial += 1
        namespace = f"run-{self.serial}-{profile}"
        result = RunResult(profile, len(self.nodes), qps, bound_before, len(self.pods))
        self.api.ensure_namespace(namespace)
        if profile.startswith("noop"):
            self.ensure_noop()
        watch = PodWatch(self.api, namespace)
        watch.start()
        scheduler_name = STOCK_SCHEDULER if profile == "stock" else OUR_SCHEDULER
        path = f"/api/v1/namespaces/{namespace}/pods"
        self.api.create_many(
            [(path, pod_doc(name, {r.value: str(size)}, scheduler=scheduler_name)) for name, r, size in self.pods]
        )
        wait_for("the pod watch to see every pod", lambda: len(watch.seen) >= len(self.pods), timeout=120)
        wait_quiet([p for p in self.procs(None).values() if p is not None], limit=60)
        ext_before = histogram_sums(self.extender_metrics(), EXTENDER_HISTOGRAM, ("verb",))
        api_before = api_server_sums(self.api.metrics())
        sampler = CpuSampler(self.procs(None, profile))
        sampler.start()
        started = time.monotonic()
        starters: dict[str, Callable[..., ManagedProcess]] = {
            "stock": self.cluster.start_stock_scheduler, "ours": self.cluster.start_our_scheduler,
            "classic": self.start_classic_scheduler, "noop": self.start_noop_scheduler,
            "noopbind": functools.partial(self.start_noop_scheduler, bind=True),
        }  # fmt: skip
        start = starters[profile]
        metrics_port = free_port()
        scheduler = start(client_qps=qps, client_burst=2 * qps, extra_args=scheduler_metrics_args(metrics_port))
        sampler.procs["scheduler"] = scheduler
        spy = self.start_py_spy(namespace) if profile == "ours" else None
        try:
            self.wait_binds(watch, scheduler)
            text = scrape_unverified(f"https://127.0.0.1:{metrics_port}/metrics")
            (self.cluster.logs / f"{namespace}-scheduler-metrics.txt").write_text(text)
            result.scheduler = scheduler_figures(text)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(60)
            scheduler.stop()
            watch.stop()
            sampler.stop()
        ext_after = histogram_sums(self.extender_metrics(), EXTENDER_HISTOGRAM, ("verb",))
        api_after = api_server_sums(self.api.metrics())
        result.verbs = {key[0]: value for key, value in delta_means(ext_before, ext_after).items()}
        result.api = delta_means(api_before, api_after)
        times = sorted(watch.bound.values())
        result.bound = len(times)
        if times:
            result.seconds = times[-1] - times[0]
            result.to_first_bind = times[0] - started
            result.cpu, result.machine_busy = sampler.cores(times[0], times[-1])
            if profile == "ours" and self.lag_file is not None:
                result.lag = looplag.read(self.lag_file, times[0], times[-1])
        result.latencies = [t - watch.seen[name] for name, t in watch.bound.items() if name in watch.seen]
        result.watch_reopened = watch.reopened
        docs = self.api.pods(namespace)
        result.plan = check_plan(self.nodes, docs, order=None)
        result.plan_bound_order = check_plan(self.nodes, docs, order=watch.bound)
        self.api.delete_pods(namespace)
        return result

    def wait_binds(self, watch: PodWatch, scheduler: ManagedProcess) -> None:
        last_count, last_change = 0, time.monotonic()
        first_deadline = last_change + 180  # start-up, informers, leader election
        while len(watch.bound) < len(self.pods):
            time.sleep(0.25)
            scheduler.check_alive()
            if watch.failed is not None:
                raise RuntimeError(f"pod watch failed: {watch.failed!r}")
            now = time.monotonic()
            if len(watch.bound) != last_count:
                last_count, last_change = len(watch.bound), now
            elif last_count and now - last_change > self.args.stall:
                return
            elif not last_count and now > first_deadline:
                raise RuntimeError(f"no pod bound within 180 s; scheduler log:\n{scheduler.log_tail()}")

    def start_py_spy(self, label: str) -> subprocess.Popen[bytes] | None:
        if not self.args.py_spy or self.cluster.extender is None:
            return None
        exe = shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("--py-spy needs py-spy on PATH (pip install py-spy)")
        out = Path(self.args.py_spy) / f"{len(self.nodes)}n-{label}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [exe, "record", "--pid", str(self.cluster.extender.pid), "--rate", "100", "--format", "raw",
                "--threads", "--nonblocking", "-o", str(out), *shlex.split(self.args.py_spy_args)]  # fmt: skip
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def create_bound(self, total: int) -> int:
        """The variant's pods already bound (see the module docstring); returns how many were created."""
        docs = bound_pods(list(self.nodes.values()), total)
        self.api.ensure_namespace(BOUND_NAMESPACE)
        self.api.create_many([(f"/api/v1/namespaces/{ns}/pods", doc) for ns, doc in docs])
        return len(docs)


# ---- the table ----------------------------------------------------------------------------------------------

HEADER = (
    f"{'nodes':>5} {'qps':>4} {'bound':>6} {'profile':<7} {'pods/s':>7} {'ratio':>6} {'bound':>6} {'p50 s':>6} "
    f"{'p99 s':>6} {'1st s':>6} {'cycle':>6} {'filter':>7} {'prior.':>7} {'bind':>7} {'bad':>4} {'bad*':>4} "
    f"{'cores: api':>10} {'etcd':>5} {'sched':>5} {'ext':>5} {'all':>5}"
)


def row(result: RunResult, ratio: float | None) -> str:
    def verb(name: str) -> str:
        found = result.verbs.get(name)
        return f"{found[1]:>7.1f}" if found else f"{'-':>7}"

    cpu, nan = result.cpu, float("nan")
    ratio_text = f"{ratio:>6.2f}" if ratio is not None else f"{'':>6}"
    return (
        f"{result.nodes:>5} {result.qps:>4} {result.bound_before:>6} {result.profile:<7} {result.rate:>7.1f} "
        f"{ratio_text} {result.bound:>6} {result.pct(0.5):>6.1f} {result.pct(0.99):>6.1f} "
        f"{result.to_first_bind:>6.1f} {result.scheduler.get('algorithm', nan):>6.1f} {verb('filter')} "
        f"{verb('prioritize')} {verb('bind')} {result.plan_bound_order.bad:>4} {result.plan.bad:>4} "
        f"{cpu.get('apiserver', 0):>10.2f} {cpu.get('etcd', 0):>5.2f} "
        f"{cpu.get('scheduler', 0):>5.2f} {cpu.get('extender', 0):>5.2f} {result.machine_busy:>5.2f}"
    )


API_SHOWN = (
    ("GET", "pods", ""), ("GET", "nodes", ""), ("LIST", "pods", ""), ("POST", "pods", "binding"),
    ("PATCH", "pods", "status"), ("POST", "events", ""), ("PATCH", "events", ""), ("WAIT", "pods", ""),
)  # fmt: skip


def api_detail(result: RunResult) -> str:
    parts = []
    for key in API_SHOWN:
        found = result.api.get(key)
        if found:
            what = f"{key[0]} {key[1]}{'/' + key[2] if key[2] else ''}"
            what = "consistent pod reads waiting for the watch cache" if key[0] == "WAIT" else what
            parts.append(f"{what} {found[0]}x{found[1]:.1f}ms")
    return "      api server: " + (", ".join(parts) or "(no requests)")


def print_pair(results: Sequence[RunResult], detail: bool) -> None:
    stock = [r.rate for r in results if r.profile == "stock" and r.rate]
    base = sum(stock) / len(stock) if stock else None
    for result in results:
        ratio = result.rate / base if base and result.profile != "stock" else None
        print(row(result, ratio), flush=True)
        for label, plan in (("in bind order", result.plan_bound_order), ("oldest first", result.plan)):
            if plan.bad:
                print(f"      bad grants {label}, of {plan.checked}: no block left {plan.no_block}, not a block "
                      f"{plan.not_a_block}, overlapping {plan.overlap}", flush=True)  # fmt: skip
        if result.watch_reopened:
            print(f"      (the API server closed the bench's pod watch {result.watch_reopened}x; reopened)")
        if result.lag:
            lag = result.lag
            print(f"      extender event-loop lag: mean {lag['mean_ms']:.2f} ms, max {lag['max_ms']:.1f} ms, over "
                  f"1/5/20 ms {lag['over_1ms']:.1%} / {lag['over_5ms']:.1%} / {lag['over_20ms']:.1%} of samples",
                  flush=True)  # fmt: skip
        if detail:
            figures = result.scheduler
            print(f"      scheduler: cycle {figures.get('algorithm', 0):.1f} ms x{figures.get('algorithm_n', 0):.0f}, "
                  f"attempt to bound {figures.get('attempt', 0):.1f} ms", flush=True)  # fmt: skip
            print(api_detail(result), flush=True)


def spread(values: Sequence[float], digits: int = 1) -> str:
    """mean [min-max] of the runs, or the one value."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def print_summary(results: Sequence[RunResult]) -> None:
    """One line per configuration: each figure as mean [min-max] over the repeats; ratio per repeat pair."""
    configs: dict[tuple[int, int, int], list[RunResult]] = defaultdict(list)
    for result in results:
        configs[(result.nodes, result.qps, result.bound_before)].append(result)
    print("# summary, mean [min-max] over the runs: stock pods/s | ours pods/s | ratio | ours bind ms | "
          "ours filter ms | scheduler cycle ms stock / ours")  # fmt: skip
    for (nodes, qps, bound), runs in configs.items():
        stock = [r for r in runs if r.profile == "stock"]
        ours = [r for r in runs if r.profile == "ours"]
        ratios = [o.rate / s.rate for s, o in zip(stock, ours, strict=False) if s.rate]
        verbs = [r.verbs for r in ours]
        print(
            f"# {nodes:>5} nodes, qps {qps:>3}, {bound:>5} bound: {spread([r.rate for r in stock])} | "
            f"{spread([r.rate for r in ours])} | {spread(ratios, 2)} | "
            f"{spread([v['bind'][1] for v in verbs if 'bind' in v])} | "
            f"{spread([v['filter'][1] for v in verbs if 'filter' in v])}"
            f" | {spread([r.scheduler.get('algorithm', 0) for r in stock])} / "
            f"{spread([r.scheduler.get('algorithm', 0) for r in ours])}"
            + "".join(_extra_profile(name, runs, stock) for name in ("classic", "noop", "noopbind")),
            flush=True,
        )


def _extra_profile(name: str, runs: Sequence[RunResult], stock: Sequence[RunResult]) -> str:
    """` | classic: pods/s, ratio, cycle` for a profile beside stock and ours, if it ran."""
    these = [r for r in runs if r.profile == name]
    if not these:
        return ""
    ratios = [r.rate / s.rate for s, r in zip(stock, these, strict=False) if s.rate]
    cycles = [r.scheduler.get("algorithm", 0) for r in these]
    return f" | {name}: {spread([r.rate for r in these])} pods/s, ratio {spread(ratios, 2)}, cycle {spread(cycles)}"


def configurations(args: argparse.Namespace) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """Per node count: the (qps, bound pods) to run, the unbound ones first."""
    for nodes in args.nodes:
        plan = [(qps, 0) for qps in args.qps if 0 in args.bound]
        plan += [(max(args.qps), bound) for bound in sorted(set(args.bound) - {0})]
        yield nodes, plan


def run_node_count(args: argparse.Namespace, count: int, plan: list[tuple[int, int]], workdir: Path) -> list[RunResult]:
    began = time.monotonic()
    cluster = Cluster(workdir / f"{count}-nodes")
    bench: Bench | None = None
    try:
        cluster.start(extender=False, scheduler=False)
        nodes = make_nodes(count, args.seed)
        api = Api(cluster)
        api.create_many([("/api/v1/nodes", _node_doc(n)) for n in nodes])
        launcher = shlex.split(args.extender_launcher)
        lag_file = None
        if args.loop_lag or args.extender_tree:
            lag_file = workdir / f"{count}-loop-lag.jsonl"
            tree = ["--tree", args.extender_tree] if args.extender_tree else []
            launcher = [*(launcher or [sys.executable]), str(Path(looplag.__file__)), "--out", str(lag_file), *tree,
                        "--"]  # fmt: skip
        cluster.start_extender(args.extender_arg, launcher)
        bench = Bench(args, cluster, nodes)
        bench.lag_file = lag_file
        used = sum(n.topology.device_count - len(n.state.free_devices) for n in nodes)
        total = sum(n.topology.device_count for n in nodes)
        print(f"# {count} nodes ready in {time.monotonic() - began:.0f} s: {total} devices, {used / total:.0%} "
              f"held; {args.pods} pods per run", flush=True)  # fmt: skip
        if "ours" in args.profile and not args.no_warm_up:
            # The extender's verdict memo starts empty: the first run of ours would pay for filling it and be
            # slower than every later one. A long-running extender is warm.
            warm = bench.run("ours", max(args.qps), 0)
            print(f"# warm-up run of ours, not counted: {warm.rate:.1f} pods/s", flush=True)
        bound_now = 0
        results: list[RunResult] = []
        for qps, bound in plan:
            if bound > bound_now:
                began = time.monotonic()
                bound_now = bench.create_bound(bound)
                wait_quiet([p for p in bench.procs(None).values() if p is not None])
                print(f"# {bound_now} pods bound in {time.monotonic() - began:.0f} s", flush=True)
            for repeat in range(args.repeat):
                order = [p for p in PROFILES if p in args.profile]
                if repeat % 2:
                    order.reverse()
                pair = [bench.run(profile, qps, bound_now) for profile in order]
                print_pair(pair, args.api_detail)
                results += pair
    finally:
        if bench is not None:
            bench.close()
        cluster.close()
    return results


def _ok(url: str, context: ssl.SSLContext) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _node_doc(node: BenchNode) -> Any:
    labels = {"node.kubernetes.io/instance-type": node.topology.instance_type}
    return bare_node(node.name, node.allocatable, encode_node_state(node.state), labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--qps", type=int, nargs="+", default=[50, 500], help="the scheduler's client QPS (burst 2x)")
    parser.add_argument(
        "--profile",
        nargs="+",
        choices=PROFILES,
        default=["stock", "ours"],
        help="noop: our scheduler configuration with a do-nothing extender (bench/noop_extender.py)",
    )
    parser.add_argument("--bound", type=int, nargs="+", default=[0, 20000],
                        help="pods already bound; above 0 runs at the highest --qps")  # fmt: skip
    parser.add_argument("--pods", type=int, default=1000, help="pods per run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration and profile")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--stall", type=float, default=STALL_SECONDS, help="seconds without a bind that end a run")
    parser.add_argument("--extender-arg", action="append", default=[], help="extra extender flag, --extender-arg=--x=y")
    parser.add_argument("--extender-launcher", default="", help="prefix of the extender's command line")
    parser.add_argument("--py-spy", default="", help="directory: sample the extender with py-spy during ours")
    parser.add_argument("--py-spy-args", default="", help="more py-spy record flags, e.g. '--idle' or '--gil'")
    parser.add_argument("--api-detail", action="store_true", help="the API server's mean per verb, per run")
    parser.add_argument("--loop-lag", action="store_true", help="the extender's event-loop lag, per run of ours")
    parser.add_argument(
        "--extender-tree",
        default="",
        help="serve the extender from this source tree (an older "
        "commit: git archive <commit> extender neuronalloc neuroncli neuronlog | tar -x -C DIR)",
    )
    parser.add_argument("--no-warm-up", action="store_true", help="measure ours from a cold extender too")
    parser.add_argument("--workdir", default="", help="keep logs here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print("cannot run: " + "; ".join(missing), file=sys.stderr)
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="neuronsim-bench-"))
    began = time.monotonic()
    print(HEADER)
    results: list[RunResult] = []
    try:
        for count, plan in configurations(args):
            results += run_node_count(args, count, plan, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print_summary(results)
    print(f"# done in {(time.monotonic() - began) / 60:.1f} min. pods/s: first bind to last; ratio: ours / stock "
          "in the same configuration; p50/p99: pod creation to bind; 1st: scheduler start to first bind; cycle: the "
          "scheduler's mean serial scheduling cycle in ms (extender filter and prioritize included); "
          "filter/prior./bind: the extender's mean ms; bad: non-contiguous or overlapping predicted grants, the "
          "pods of each node placed in bind order (kubelet's, and the extender's model), bad*: placed oldest first; "
          "cores: mean CPU cores used from first to last bind; all: the whole machine's, others' work included"
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
