"""Pods, pools and what the simulated nodes recorded about them: the vocabulary of the cluster tests."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from neuronalloc import INSTANCE_TYPE_LABEL, Resource, check_block, decode_node_state, encode_ranges
from neuronalloc.nodestate import NodeState
from tests.cluster.harness import OUR_SCHEDULER, POOL_LABEL, Cluster, PluginKind, SimNode
from tests.cluster.processes import WaitTimeout, wait_for

ALLOCATION_ANNOTATION = "neuron-contig.test/allocation"  # written by `neuronsim node` at admission
SETTLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Allocation:
    """What the device manager handed one pod's container: IDs per resource, env, device specs."""

    pod: str
    node: str
    ids: Mapping[str, tuple[int, ...]]
    envs: Mapping[str, str]
    device_paths: tuple[str, ...]  # container paths of the DeviceSpecs

    def of(self, resource: Resource) -> tuple[int, ...]:
        return self.ids.get(resource.value, ())


def is_consecutive(ids: Sequence[int]) -> bool:
    ordered = sorted(ids)
    return all(b == a + 1 for a, b in itertools.pairwise(ordered))


def neuron_pod(
    name: str,
    resource: Resource,
    count: int,
    *,
    pool: str,
    scheduler: str = OUR_SCHEDULER,
    instance_type: str | None = None,
) -> dict[str, Any]:
    """A one-container pod asking for `count` of `resource`, confined to `pool`'s nodes (of one type, if given)."""
    selector = {POOL_LABEL: pool}
    if instance_type:
        selector[INSTANCE_TYPE_LABEL] = instance_type
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {POOL_LABEL: pool}},
        "spec": {
            "schedulerName": scheduler,
            "nodeSelector": selector,
            "tolerations": [{"key": POOL_LABEL, "operator": "Equal", "value": pool, "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.10",  # never pulled: the simulated node runs no containers
                    "resources": {"limits": {resource.value: str(count)}},
                }
            ],
        },
    }


class Pool:
    """A test's own nodes and namespace on the shared control plane (label + taint + toleration)."""

    def __init__(self, cluster: Cluster, name: str):
        self.cluster = cluster
        self.name = _dns_label(name)
        self.namespace = self.name
        self.nodes: dict[str, SimNode] = {}
        self.core = cluster.core
        self.core.create_namespace({"metadata": {"name": self.namespace}})

    # --- nodes ---

    def add_node(self, suffix: str, instance_type: str, *, plugin: PluginKind | None = PluginKind.OURS) -> SimNode:
        node = self.cluster.add_node(f"{self.name}-{suffix}", instance_type, pool=self.name, plugin=plugin)
        self.nodes[node.name] = node
        return node

    def node_state(self, node: str) -> NodeState:
        """The node's state as our plugin published it in its annotations."""
        annotations = self.core.read_node(node).metadata.annotations or {}
        return decode_node_state(annotations)

    def wait_node_state(self, node: str, what: str, predicate: Any, timeout: float = SETTLE_TIMEOUT) -> NodeState:
        def probe() -> NodeState | None:
            state = self.node_state(node)
            return state if predicate(state) else None

        return wait_for(f"{node}: published state where {what}", probe, timeout=timeout, watch=self._procs())

    # --- pods ---

    def create(
        self,
        name: str,
        resource: Resource,
        count: int,
        *,
        scheduler: str = OUR_SCHEDULER,
        instance_type: str | None = None,
    ) -> str:
        pod = neuron_pod(name, resource, count, pool=self.name, scheduler=scheduler, instance_type=instance_type)
        self.core.create_namespaced_pod(self.namespace, pod)
        return name

    def pod(self, name: str) -> k8s.V1Pod:
        return self.core.read_namespaced_pod(name, self.namespace)

    def pods(self) -> list[k8s.V1Pod]:
        return list(self.core.list_namespaced_pod(self.namespace).items)

    def delete(self, *names: str, wait: bool = True) -> None:
        for name in names:
            self.core.delete_namespaced_pod(name, self.namespace)
        if wait:
            remaining = set(names)

            def gone() -> bool:
                remaining.difference_update({n for n in remaining if not self._exists(n)})
                return not remaining

            wait_for(f"pods {sorted(remaining)} to be gone", gone, timeout=SETTLE_TIMEOUT, watch=self._procs())

    def _exists(self, name: str) -> bool:
        try:
            self.pod(name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def wait_phase(self, names: Iterable[str], phase: str = "Running", timeout: float = SETTLE_TIMEOUT) -> None:
        pending = set(names)

        def done() -> bool:
            for name in list(pending):
                pod = self.pod(name)
                if pod.status.phase == "Failed":
                    raise AssertionError(f"pod {name} failed: {pod.status.reason}: {pod.status.message}")
                if pod.status.phase == phase:
                    pending.discard(name)
            return not pending

        try:
            wait_for(f"{len(pending)} pods to be {phase}", done, timeout=timeout, watch=self._procs())
        except WaitTimeout as exc:
            details = [f"{name}: {self._describe(name)}" for name in sorted(pending)]
            raise AssertionError(f"{exc}; not {phase}:\n  " + "\n  ".join(details)) from exc

    def _describe(self, name: str) -> str:
        pod = self.pod(name)
        messages = self.scheduling_messages(name)
        last = f"; last FailedScheduling: {messages[-1]}" if messages else ""
        return f"phase {pod.status.phase}, node {pod.spec.node_name}{last}"

    def allocation(self, name: str) -> Allocation:
        pod = self.pod(name)
        raw = (pod.metadata.annotations or {}).get(ALLOCATION_ANNOTATION)
        if raw is None:
            raise AssertionError(f"pod {name} has no {ALLOCATION_ANNOTATION} annotation (phase {pod.status.phase})")
        (container,) = json.loads(raw)["containers"]
        return Allocation(
            pod=name,
            node=pod.spec.node_name,
            ids={res: tuple(int(i) for i in ids) for res, ids in container["deviceIDs"].items()},
            envs=container["envs"],
            device_paths=tuple(sorted(spec["containerPath"] for spec in container["deviceSpecs"])),
        )

    def scheduling_messages(self, name: str) -> list[str]:
        """Messages of the scheduler's FailedScheduling events for pod `name`."""
        events = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name},reason=FailedScheduling"
        )
        return [e.message for e in events.items]

    def wait_scheduling_message(self, name: str, fragment: str, timeout: float = SETTLE_TIMEOUT) -> str:
        def probe() -> str | None:
            return next((m for m in self.scheduling_messages(name) if fragment in m), None)

        return wait_for(
            f"pod {name}: a FailedScheduling event containing {fragment!r}", probe, timeout=timeout, watch=self._procs()
        )

    def _procs(self) -> list[Any]:
        procs: list[Any] = [self.cluster.scheduler] if self.cluster.scheduler else []
        for node in self.nodes.values():
            procs.append(node.kubelet)
            if node.plugin is not None:
                procs.append(node.plugin)
        return procs

    # --- checks shared by the scenarios ---

    def assert_block_ok(self, alloc: Allocation, resource: Resource, count: int) -> None:
        """The pod got exactly `count` IDs forming a legal block of its node's topology, and matching env."""
        node = self.nodes[alloc.node]
        ids = alloc.of(resource)
        assert len(ids) == count, f"{alloc.pod}: wanted {count} {resource.short}, got {ids}"
        assert is_consecutive(ids), f"{alloc.pod}: non-contiguous {resource.short} IDs {ids} on {alloc.node}"
        topology = node.topology
        refusal = check_block(topology, resource, ids)
        assert refusal is None, f"{alloc.pod}: block {ids} on {node.instance_type} breaks the rule: {refusal}"
        devices = sorted(topology.devices_of_cores(ids)) if resource is Resource.NEURONCORE else sorted(ids)
        assert alloc.device_paths == tuple(sorted(f"/dev/neuron{d}" for d in devices)), alloc
        cores = ids if resource is Resource.NEURONCORE else topology.cores_of_devices(ids)
        assert alloc.envs.get("NEURON_RT_VISIBLE_CORES") == encode_ranges(cores), alloc

    def assert_no_overcommit(self) -> None:
        """No device or core is held twice among Running pods, and no device is held whole while a core of
        it is held by another pod (devices and cores share the hardware). A device held whole counts under
        either name, `neuron` or its alias `neurondevice`."""
        whole: dict[tuple[str, int], str] = {}  # (node, device) -> pod holding it whole
        cores: dict[tuple[str, int], str] = {}  # (node, core) -> pod holding it
        core_devices: dict[tuple[str, int], str] = {}  # (node, device) -> a pod holding one of its cores
        for pod in self.pods():
            if pod.status.phase != "Running":
                continue
            alloc = self.allocation(pod.metadata.name)
            topology = self.nodes[alloc.node].topology
            held_whole = [*alloc.of(Resource.NEURON), *alloc.of(Resource.NEURONDEVICE)]
            assert len(held_whole) == len(set(held_whole)), f"{alloc.pod} holds a device twice: {held_whole}"
            for device in held_whole:
                other = whole.setdefault((alloc.node, device), alloc.pod)
                assert other == alloc.pod, f"device {device} on {alloc.node}: held by {other} and {alloc.pod}"
            for core in alloc.of(Resource.NEURONCORE):
                other = cores.setdefault((alloc.node, core), alloc.pod)
                assert other == alloc.pod, f"core {core} on {alloc.node}: held by {other} and {alloc.pod}"
                core_devices[(alloc.node, topology.device_of_core(core))] = alloc.pod
        for key, pod_name in whole.items():
            assert key not in core_devices, (
                f"device {key[1]} on {key[0]} is held whole by {pod_name} and has a core held by {core_devices[key]}"
            )

    def close(self) -> None:
        """Remove the pool's pods (forcibly: their node may be gone), nodes and namespace."""
        for pod in self.pods():
            try:
                self.core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=0)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise
        for name in list(self.nodes):
            self.cluster.remove_node(name)
        self.core.delete_namespace(self.namespace)


def pending_pods(pool: Pool) -> list[str]:
    return sorted(p.metadata.name for p in pool.pods() if p.status.phase == "Pending")


def settle(seconds: float) -> None:
    """Give the scheduler time to act on what it can; used only before asserting something did NOT happen."""
    time.sleep(seconds)


def _dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:40].rstrip("-") or "pool"
