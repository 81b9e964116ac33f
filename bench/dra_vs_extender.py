"""DRA mode against the extender on the real kube-scheduler: one seeded trace through each, side by side.

    python bench/dra_vs_extender.py                       # about 8 minutes here (2 shared cores)
    python bench/dra_vs_extender.py --pods 60 --burst-nodes 20 --burst-pods 40     # a quicker look

Needs what the cluster tier needs (root, `tests/cluster/bin/neuronsim`). One control plane (etcd, kube-apiserver,
our extender and scheduler, kube-controller-manager's resourceclaim-controller, the stock scheduler's default
profile), then two phases per mode:

Placement (real nodes). The same cluster twice, a scaled-down mix of bench/placement_sim.py's
(`--mix`, default 2 x inf1.6xlarge, 1 x inf1.24xlarge, 1 x inf2.48xlarge, 2 x trn1.32xlarge: 68 devices), each
node a simulated kubelet (the real device manager, or the real DRA manager) with our plugin (extender mode) or
our DRA driver (DRA mode). A seeded trace of arrivals and departures (70% whole-device pods, 30% NeuronCore pods,
of 1, 2, 4, 8 or 16, offered at `--load` of the devices) is replayed in event order: an arrival is created and
either bound (placed) or reported unschedulable by the scheduler (not placed: it is deleted, no retry, in both
modes alike); departures due before the next arrival are deleted, and the replay waits until the scheduler's
inputs show them gone (extender: the plugin's node state; DRA: the claim deallocated by the
resourceclaim-controller).
Extender mode: pods ask `aws.amazon.com/neuron: N` of the second scheduler (best fit across nodes). DRA mode:
pods ask one block through `neuronalloc.draslices.claim_template` (firstAvailable: small node tiers first, then
the node group), the stock scheduler allocates; a quarter of the nodes (every 4th) are labelled small-first.
Printed: pods placed, large pods (8 or more devices) placed, and blocks checked (every grant one legal block,
no two overlapping). Fragmentation, sampled at every arrival (after the departures due, before the pod is
created) from what each running pod holds (extender: the device manager's grant; DRA: the claim's allocation):
the largest free whole-device block per node under its rule (`neuronalloc.largest_free_block`), averaged as
"largest free block in the cluster", "nodes that can still take an 8-device block", and "free devices outside
each node's largest free block" (a share of the free devices: 0 is no fragmentation). DRA's figures are also
printed as ratios against the extender's from the same run.

Throughput (bare nodes). `--burst-nodes` Node objects with no kubelet (as bench/scheduler_throughput.py does):
for the extender, the node-state annotations our plugin would publish; for DRA, the ResourceSlices our driver
would publish (`slice_specs`, the same layout). `--burst-pods` pods (1, 2, 4 or 8 devices, or 1-16 NeuronCores
in powers of two: sizes both modes can place; seeded) are created before the scheduler of that mode starts;
pods/s counts binds from the first to the last, as a pod watch sees them. The two schedulers run one after the
other on the same control plane: a ratio from one run, on a machine shared with others, is what to read, not the
absolute figures.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from neuronalloc import (
    CATALOG,
    NodeState,
    Resource,
    check_block,
    encode_node_state,
    largest_free_block,
    resolve_topology,
)
from neuronalloc.draslices import claim_template, parse_block_name, slice_specs
from tests.cluster.dra import claim_of, create_dra_pod, dra_grant, dra_pod, install_device_classes, template_name
from tests.cluster.harness import (
    OUR_SCHEDULER,
    POOL_LABEL,
    Cluster,
    PluginKind,
    bare_node,
    missing_prerequisites,
)
from tests.cluster.processes import wait_for
from tests.cluster.workload import ALLOCATION_ANNOTATION, Pool, neuron_pod

SIZES = (1, 2, 4, 8, 16)
SIZE_WEIGHTS = (35, 25, 20, 12, 8)
CORE_SHARE = 0.3
MEAN_RUN = 60.0
LARGE = 8
SMALL_FIRST_LABEL = "neuron-contig.io/small-first"
DEFAULT_MIX = "inf1.6xlarge=2,inf1.24xlarge=1,inf2.48xlarge=1,trn1.32xlarge=2"
MODES = ("extender", "dra")


@dataclass(frozen=True)
class TracePod:
    index: int
    arrival: float
    run: float
    resource: Resource
    size: int

    @property
    def name(self) -> str:
        return f"t{self.index:04d}-{self.resource.short}-{self.size}"

    @property
    def large(self) -> bool:
        return self.resource is Resource.NEURON and self.size >= LARGE


def parse_mix(text: str) -> list[tuple[str, int]]:
    mix = []
    for part in text.split(","):
        name, _, count = part.partition("=")
        if name not in CATALOG or not count.isdigit():
            raise SystemExit(f"--mix: {part!r} is not instance-type=count")
        mix.append((name, int(count)))
    return mix


def make_trace(seed: int, pods: int, load: float, mix: Sequence[tuple[str, int]]) -> list[TracePod]:
    rng = random.Random(seed)
    devices = sum(CATALOG[name].devices * count for name, count in mix)
    cpd = sum(CATALOG[n].cores_per_device * c for n, c in mix) / sum(c for _, c in mix)
    mean_size = sum(s * w for s, w in zip(SIZES, SIZE_WEIGHTS, strict=True)) / sum(SIZE_WEIGHTS)
    demand = (1 - CORE_SHARE) * mean_size + CORE_SHARE * mean_size / cpd
    rate = load * devices / (demand * MEAN_RUN)
    now, trace = 0.0, []
    for index in range(pods):
        now += rng.expovariate(rate)
        resource = Resource.NEURONCORE if rng.random() < CORE_SHARE else Resource.NEURON
        trace.append(TracePod(index, now, rng.expovariate(1 / MEAN_RUN), resource, rng.choices(SIZES, SIZE_WEIGHTS)[0]))
    return trace


# ---- placement: the trace on real nodes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    node: str
    devices: frozenset[int]  # devices this pod's grant ties up, whole or through some of their cores


@dataclass
class Placement:
    mode: str
    arrived: int = 0
    placed: int = 0
    large_arrived: int = 0
    large_placed: int = 0
    bad_blocks: int = 0
    seconds: float = 0.0
    samples: int = 0  # arrivals at which the free hardware was sampled
    largest_sum: float = 0.0  # sum over samples of the cluster's largest free device block
    large_nodes_sum: float = 0.0  # sum over samples of nodes that can take a LARGE-device block
    stranded_sum: float = 0.0  # sum over samples of the share of free devices outside their node's largest block
    stranded_samples: int = 0  # samples with any free device
    by_size: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # (resource, size) -> [arrived, placed]

    def mean_largest(self) -> float:
        return self.largest_sum / max(self.samples, 1)

    def mean_large_nodes(self) -> float:
        return self.large_nodes_sum / max(self.samples, 1)

    def mean_stranded(self) -> float:
        return self.stranded_sum / max(self.stranded_samples, 1)


def _allocated(pool: Pool, name: str) -> dict[str, Any] | None:
    pod = pool.pod(name)
    if not pod.status.resource_claim_statuses:
        return None
    claim = claim_of(pool, name)
    return claim if (claim.get("status") or {}).get("allocation") else None


def _admitted(pool: Pool, name: str) -> bool:
    return ALLOCATION_ANNOTATION in (pool.pod(name).metadata.annotations or {})


def _outcome(pool: Pool, name: str) -> str | None:
    """ "placed" once bound, "refused" once the scheduler said it cannot be placed, None while undecided (a
    string, not a bool: wait_for keeps waiting on False)."""
    pod = pool.pod(name)
    if pod.spec.node_name:
        return "placed"
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            return "refused"
    return None


class Replay:
    def __init__(self, cluster: Cluster, mode: str, mix: Sequence[tuple[str, int]]) -> None:
        self.cluster = cluster
        self.mode = mode
        self.pool = Pool(cluster, f"bench-{mode}")
        self.dra = mode == "dra"
        index = 0
        for name, count in mix:
            for i in range(count):
                labels = {SMALL_FIRST_LABEL: "true" if index % 4 == 0 else "false"} if self.dra else None
                suffix = f"{name.split('.')[0]}-{name.split('.')[1]}-{i}"
                kind = PluginKind.DRA if self.dra else PluginKind.OURS
                node = cluster.add_node(f"{self.pool.name}-{suffix}", name, pool=self.pool.name, plugin=kind,
                                        labels=labels)  # fmt: skip
                self.pool.nodes[node.name] = node
                index += 1

    def create(self, pod: TracePod) -> None:
        if self.dra:
            create_dra_pod(self.pool, pod.name, pod.resource, pod.size)
        else:
            self.pool.create(pod.name, pod.resource, pod.size, scheduler=OUR_SCHEDULER)

    def gone_everywhere(self, names: Sequence[str]) -> bool:
        """The scheduler's inputs no longer hold these pods' hardware."""
        if self.dra:
            # The resourceclaim-controller deallocates a deleted pod's claim (status emptied); the claim object
            # itself stays, as no garbage collector runs here, and an unallocated claim holds nothing.
            custom = k8s.CustomObjectsApi(self.cluster.api)
            claims = custom.list_namespaced_custom_object(
                "resource.k8s.io", "v1", self.pool.namespace, "resourceclaims"
            )
            holders = {
                ref.get("name")
                for claim in claims["items"]
                if (claim.get("status") or {}).get("allocation")
                for ref in (claim["metadata"].get("ownerReferences") or [])
            }
            return not holders & set(names)
        keys = {f"{self.pool.namespace}/{n}" for n in names}
        return all(not keys & set(self.pool.node_state(node).pods) for node in self.pool.nodes)

    def held(self, name: str) -> Held:
        """The devices a placed pod ties up (a device with any core held is not free for a whole-device block)."""
        if self.dra:
            claim = wait_for(f"{name}: claim allocated", lambda: _allocated(self.pool, name), timeout=60, interval=0.05)
            node = self.pool.nodes[claim["status"]["allocation"]["devices"]["results"][0]["pool"]]
            devices: set[int] = set()
            for result in claim["status"]["allocation"]["devices"]["results"]:
                devices.update(parse_block_name(result["device"], node.topology).devices(node.topology))
            return Held(node.name, frozenset(devices))
        wait_for(f"{name}: admitted", lambda: _admitted(self.pool, name), timeout=60, interval=0.05)
        alloc = self.pool.allocation(name)
        topo = self.pool.nodes[alloc.node].topology
        return Held(
            alloc.node,
            frozenset(alloc.of(Resource.NEURON)) | topo.devices_of_cores(alloc.of(Resource.NEURONCORE)),
        )

    def sample(self, out: Placement, ledger: dict[str, Held]) -> None:
        """Free whole-device blocks now, from what the running pods hold."""
        busy: dict[str, set[int]] = {name: set() for name in self.pool.nodes}
        for held in ledger.values():
            busy[held.node].update(held.devices)
        largest, large_nodes, free_total, stranded = 0, 0, 0, 0
        for name, node in self.pool.nodes.items():
            free = set(range(node.topology.device_count)) - busy[name]
            block = largest_free_block(node.topology, Resource.NEURON, free)
            largest = max(largest, block)
            large_nodes += block >= LARGE
            free_total += len(free)
            stranded += len(free) - block
        out.samples += 1
        out.largest_sum += largest
        out.large_nodes_sum += large_nodes
        if free_total:
            out.stranded_samples += 1
            out.stranded_sum += stranded / free_total

    def run(self, trace: Sequence[TracePod]) -> Placement:
        out = Placement(self.mode)
        ledger: dict[str, Held] = {}
        events: list[tuple[float, int, int]] = [(p.arrival, 1, p.index) for p in trace]
        heapq.heapify(events)
        running: set[str] = set()
        began = time.monotonic()
        while events:
            moment, kind, index = heapq.heappop(events)
            pod = trace[index]
            if kind == 0:
                leaving = [pod.name]
                while events and events[0][1] == 0:  # every departure due before the next arrival, at once
                    leaving.append(trace[heapq.heappop(events)[2]].name)
                self.pool.delete(*leaving)
                running.difference_update(leaving)
                for name in leaving:
                    ledger.pop(name, None)
                wait_for(
                    f"{len(leaving)} departures seen", partial(self.gone_everywhere, leaving), timeout=120, interval=0.1
                )
                continue
            self.sample(out, ledger)
            out.arrived += 1
            out.large_arrived += pod.large
            stats = out.by_size.setdefault((pod.resource.short, pod.size), [0, 0])
            stats[0] += 1
            self.create(pod)
            outcome = wait_for(
                f"{pod.name} bound or unschedulable", partial(_outcome, self.pool, pod.name), timeout=120, interval=0.05
            )
            if outcome == "placed":
                out.placed += 1
                out.large_placed += pod.large
                stats[1] += 1
                running.add(pod.name)
                ledger[pod.name] = self.held(pod.name)
                heapq.heappush(events, (moment + pod.run, 0, index))
            else:
                self.pool.delete(pod.name)
        out.bad_blocks = self.check(sorted(running))
        out.seconds = time.monotonic() - began
        return out

    def check(self, names: Sequence[str]) -> int:
        """Grants of the pods still running that are not one legal block, or overlap another (should be 0)."""
        self.pool.wait_phase(names, timeout=120)
        bad = 0
        held: dict[tuple[str, str, int], str] = {}
        for name in names:
            if self.dra:
                got = dra_grant(self.pool, name)
                node, resource, ids = got.node, got.grant.resource, got.grant.ids
            else:
                alloc = self.pool.allocation(name)
                resource = Resource.NEURON if alloc.of(Resource.NEURON) else Resource.NEURONCORE
                node, ids = alloc.node, alloc.of(resource)
            topo = self.pool.nodes[node].topology
            if check_block(topo, resource, ids) is not None:
                bad += 1
            units = ids if resource is Resource.NEURONCORE else sorted(topo.cores_of_devices(ids))
            for core in units:
                if held.setdefault((node, "core", core), name) != name:
                    bad += 1
        return bad

    def close(self) -> None:
        self.pool.close()


# ---- throughput: a burst on bare nodes --------------------------------------------------------------------


def _burst_pods(count: int, seed: int) -> list[tuple[str, Resource, int]]:
    """Sizes every mode can place (1, 2, 4, 8 devices; 1-16 NeuronCores in powers of two): DRA mode has no block
    of 3 devices on a trn1 node or of 6 cores anywhere, and a pod no node can take would be retried for the
    whole burst and measure the backoff, not the scheduler."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        resource = rng.choice((Resource.NEURON, Resource.NEURONCORE))
        out.append((f"b{i:05d}", resource, rng.choice((1, 2, 4, 8) if resource is Resource.NEURON else SIZES)))
    return out


class BindWatch(threading.Thread):
    """When each pod of a namespace was first seen bound."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        super().__init__(daemon=True)
        self.core = k8s.CoreV1Api(cluster.api)
        self.namespace = namespace
        self.bound: dict[str, float] = {}
        self._watch = k8s_watch.Watch()

    def run(self) -> None:
        try:
            for event in self._watch.stream(self.core.list_namespaced_pod, self.namespace, timeout_seconds=3600):
                pod = event["object"]
                if pod.spec.node_name and pod.metadata.name not in self.bound:
                    self.bound[pod.metadata.name] = time.monotonic()
        except Exception:  # the stream is closed at the end of the run
            return

    def stop(self) -> None:
        self._watch.stop()


def burst(cluster: Cluster, mode: str, nodes: int, pods: int, seed: int, stall: float) -> tuple[int, float]:
    """(pods bound, binds per second) for one mode's burst on its own bare nodes."""
    core = k8s.CoreV1Api(cluster.api)
    pool = f"burst-{mode}"
    core.create_namespace({"metadata": {"name": pool}})
    rng = random.Random(seed)
    custom = k8s.CustomObjectsApi(cluster.api)
    kinds = ("inf1.6xlarge", "inf1.24xlarge", "inf2.48xlarge", "trn1.32xlarge")
    for i in range(nodes):
        kind = rng.choice(kinds)
        topo = resolve_topology(kind, CATALOG[kind].devices)
        name = f"{pool}-{i:04d}"
        labels = {"node.kubernetes.io/instance-type": kind, POOL_LABEL: pool}
        base = {"cpu": "96", "memory": "768Gi", "pods": "110"}
        if mode == "dra":
            core.create_node(bare_node(name, base, {}, labels))
            for spec in slice_specs(topo, name, small_first=i % 4 == 0):
                body = {**spec.spec, "pool": {**spec.spec["pool"], "generation": 1}}
                custom.create_cluster_custom_object("resource.k8s.io", "v1", "resourceslices", {
                    "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                    "metadata": {"name": spec.name}, "spec": body,
                })  # fmt: skip
        else:
            state = NodeState(topo, frozenset(range(topo.device_count)), frozenset(range(topo.core_count)),
                              frozenset(), {}, datetime.now(UTC))  # fmt: skip
            allocatable = {**base, Resource.NEURON.value: str(topo.device_count),
                           Resource.NEURONCORE.value: str(topo.core_count)}  # fmt: skip
            core.create_node(bare_node(name, allocatable, encode_node_state(state), labels))
    watcher = BindWatch(cluster, pool)
    watcher.start()
    specs = _burst_pods(pods, seed)
    scheduler = cluster.dra_scheduler if mode == "dra" else cluster.scheduler
    assert scheduler is not None
    scheduler.stop()  # every pod exists before the scheduler starts: a burst, not an arrival rate
    templates: set[str] = set()
    for name, resource, size in specs:
        if mode == "dra":
            template = template_name(resource, size)
            if template not in templates:
                custom.create_namespaced_custom_object("resource.k8s.io", "v1", pool, "resourceclaimtemplates",
                                                       claim_template(template, resource, size))  # fmt: skip
                templates.add(template)
            core.create_namespaced_pod(pool, dra_pod(name, template, pool=pool))
        else:
            core.create_namespaced_pod(pool, neuron_pod(name, resource, size, pool=pool, scheduler=OUR_SCHEDULER))
    if mode == "dra":
        cluster.dra_scheduler = None
        cluster.start_dra_control_plane()
    else:
        cluster.scheduler = cluster.start_our_scheduler()
    wait_for(f"{mode}: the first bind", lambda: watcher.bound, timeout=180)  # start-up, informers, leader election
    last, last_change = 0, time.monotonic()
    while len(watcher.bound) < pods and time.monotonic() - last_change < stall:
        time.sleep(0.25)
        if len(watcher.bound) != last:
            last, last_change = len(watcher.bound), time.monotonic()
    watcher.stop()
    times = sorted(watcher.bound.values())
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    core.delete_collection_namespaced_pod(pool, grace_period_seconds=0)
    for i in range(nodes):
        core.delete_node(f"{pool}-{i:04d}")
    return len(times), rate


# ---- the table --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pods", type=int, default=120, help="trace arrivals per mode")
    parser.add_argument("--load", type=float, default=0.85, help="offered load as a share of the devices")
    parser.add_argument("--mix", default=DEFAULT_MIX, help="instance-type=count,... of the real nodes")
    parser.add_argument("--burst-nodes", type=int, default=50, help="bare nodes of the throughput burst (0 = skip)")
    parser.add_argument("--burst-pods", type=int, default=100)
    parser.add_argument("--stall", type=float, default=15.0, help="seconds without a bind that end a burst")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir (component logs) afterwards")
    args = parser.parse_args(argv)
    missing = missing_prerequisites()
    if missing:
        print("cannot run: " + "; ".join(missing), file=sys.stderr)
        return 2
    mix = parse_mix(args.mix)
    trace = make_trace(args.seed, args.pods, args.load, mix)
    devices = sum(CATALOG[n].devices * c for n, c in mix)
    large = sum(p.large for p in trace)
    print(f"trace: seed {args.seed}, {len(trace)} pods ({large} large: {LARGE}+ devices), offered load "
          f"{args.load:.0%} of {devices} devices on {args.mix}", flush=True)  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="neuronsim-dra-bench-"))
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    try:
        with Cluster(workdir) as cluster:
            cluster.start_dra_control_plane()
            install_device_classes(cluster)
            for mode in args.modes:
                replay = Replay(cluster, mode, mix)
                try:
                    placement = replay.run(trace)
                finally:
                    replay.close()
                results[mode] = {"placement": placement}
                print(f"# {mode}: trace replayed in {placement.seconds:.0f} s", flush=True)
            for mode in args.modes if args.burst_nodes else ():
                bound, rate = burst(cluster, mode, args.burst_nodes, args.burst_pods, args.seed, args.stall)
                results[mode]["burst"] = (bound, rate)
                print(f"# {mode}: burst of {args.burst_pods} pods on {args.burst_nodes} bare nodes: {bound} bound, "
                      f"{rate:.1f} pods/s", flush=True)  # fmt: skip
    finally:
        if args.keep_logs:
            print(f"# logs kept in {workdir / 'logs'}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(results), indent=2))
    print(f"# done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    def share(part: int, whole: int) -> str:
        return f"{part}/{whole} ({part / max(whole, 1):.1%})"

    # (label, cell, value for the ratio or None)
    rows: list[tuple[str, Callable[[dict[str, Any]], str], Callable[[dict[str, Any]], float] | None]] = [
        ("pods placed", lambda r: share(r["placement"].placed, r["placement"].arrived),
         lambda r: r["placement"].placed),
        (f"large pods placed ({LARGE}+ devices)",
         lambda r: share(r["placement"].large_placed, r["placement"].large_arrived),
         lambda r: r["placement"].large_placed),
        ("largest free device block in the cluster, mean", lambda r: f"{r['placement'].mean_largest():.2f}",
         lambda r: r["placement"].mean_largest()),
        (f"nodes that can take a {LARGE}-device block, mean", lambda r: f"{r['placement'].mean_large_nodes():.2f}",
         lambda r: r["placement"].mean_large_nodes()),
        ("free devices outside their node's largest block", lambda r: f"{r['placement'].mean_stranded():.1%}",
         lambda r: r["placement"].mean_stranded()),
        ("grants not one legal block or overlapping", lambda r: str(r["placement"].bad_blocks), None),
        (f"scheduling throughput, pods/s ({args.burst_pods} pods, {args.burst_nodes} bare nodes)",
         lambda r: f"{r['burst'][1]:.1f}" if "burst" in r else "-",
         lambda r: r["burst"][1] if "burst" in r else 0.0),
    ]  # fmt: skip
    modes = list(results)
    both = "dra" in results and "extender" in results
    width = max(len(label) for label, _, _ in rows)
    header = "  ".join(f"{m:>16}" for m in modes) + (f"  {'dra / extender':>16}" if both else "")
    print(f"\n{'':<{width}}  {header}")
    for label, cell, value in rows:
        line = f"{label:<{width}}  " + "  ".join(f"{cell(results[m]):>16}" for m in modes)
        if both and value is not None:
            base = value(results["extender"])
            line += f"  {value(results['dra']) / base:>16.2f}" if base else f"  {'-':>16}"
        print(line)
    print(f"\nplaced by request (resource size: {' / '.join(modes)}):")
    keys = sorted({k for r in results.values() for k in r["placement"].by_size})
    for key in keys:
        cells = []
        for m in modes:
            arrived, placed = results[m]["placement"].by_size.get(key, [0, 0])
            cells.append(f"{placed}/{arrived}")
        print(f"  {key[0]:>10} {key[1]:>2}: " + "  ".join(cells))


def _jsonable(results: dict[str, dict[str, Any]]) -> Any:
    out: dict[str, Any] = {}
    for mode, r in results.items():
        p = r["placement"]
        out[mode] = {
            "arrived": p.arrived, "placed": p.placed, "large_arrived": p.large_arrived, "large_placed": p.large_placed,
            "bad_blocks": p.bad_blocks, "seconds": p.seconds, "mean_largest_free_block": p.mean_largest(),
            "mean_nodes_taking_large": p.mean_large_nodes(), "mean_stranded_free_share": p.mean_stranded(),
            **({"burst_bound": r["burst"][0], "burst_pods_per_second": r["burst"][1]} if "burst" in r else {}),
        }  # fmt: skip
    return out


if __name__ == "__main__":
    sys.exit(main())
