"""The driver's metrics: the device plugin's node-state series under the same names, plus DRA's own.

A DRA node exports `neuron_contig_plugin_devices`, `_cores`, `_largest_free_block`, `_device_healthy`,
`_topology_fallback`, `_serving` and the kernel-log series exactly as a device-plugin node does, so dashboards and
the device-health and fragmentation alerts cover both modes. The device-plugin-only series (Allocate, kubelet
registration by resource, node-annotation publishing, PodResources, the node condition, the per-pod NeuronCore
series) are not exported: they would read as "never registered" and "never published" here (the driver writes no
node condition and reads no PodResources). "Allocated" means held by a claim this driver has prepared.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from neuronalloc import Resource, Topology
from neuronalloc.draslices import DRA_RESOURCES
from plugin.metrics import PluginMetrics
from plugin.nodeview import Usage

PREPARE_RULES = ("ok", "already", "bad_reference", "unknown_holding", "api", "allocation", "unhealthy", "overlap")
RPCS = ("NodePrepareResources", "NodeUnprepareResources", "GetInfo", "NotifyRegistrationStatus")
SLICE_OPS = ("create", "update", "delete")
SLICE_RESULTS = ("ok", "error")
BLOCK_STATES = ("published", "allocatable", "tainted")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DraMetrics(PluginMetrics):
    def __init__(self) -> None:
        super().__init__()
        for device_plugin_only in (
            self.allocations, self.rpc_duration, self.rpcs, self.registrations, self.registered,
            self.publish_errors, self.last_publish, self.podresources_age, self.condition_errors, self.pod_neuroncore,
        ):  # fmt: skip
            self.registry.unregister(device_plugin_only)
        ns, sub, reg = "neuron_contig", "dra", self.registry
        self.prepares = Counter(
            "prepares", "Claims NodePrepareResources was asked for, by outcome (ok, already, or the rule refused)",
            ["result"], namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.unprepares = Counter(
            "unprepares", "Claims NodeUnprepareResources was asked for, by outcome", ["result"],
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.prepared_claims = Gauge(
            "prepared_claims", "Claims prepared on this node", ["resource"], namespace=ns, subsystem=sub, registry=reg
        )
        self.dra_rpc_duration = Histogram(
            "rpc_duration_seconds", "Kubelet DRA and registration RPC handling time", ["rpc"],
            namespace=ns, subsystem=sub, registry=reg, buckets=_BUCKETS,
        )  # fmt: skip
        self.kubelet_registered = Gauge(
            "registered", "1 while kubelet reports the driver registered", namespace=ns, subsystem=sub, registry=reg
        )
        self.slice_writes = Counter(
            "slice_writes", "ResourceSlice writes by operation and result", ["op", "result"],
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.pool_generation = Gauge(
            "pool_generation", "Generation of this node's published pool", namespace=ns, subsystem=sub, registry=reg
        )
        self.blocks = Gauge(
            "blocks", "Blocks by state: published, allocatable now (healthy, no hardware prepared), tainted unhealthy",
            ["resource", "state"], namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        for result in PREPARE_RULES:
            self.prepares.labels(result)
        for result in ("ok", "error"):
            self.unprepares.labels(result)
        for rpc in RPCS:
            self.dra_rpc_duration.labels(rpc)
        for op in SLICE_OPS:
            for result in SLICE_RESULTS:
                self.slice_writes.labels(op, result)
        for resource in DRA_RESOURCES:
            self.prepared_claims.labels(resource.short)
            for state in BLOCK_STATES:
                self.blocks.labels(resource.short, state)

    def set_blocks(self, resource: Resource, published: int, allocatable: int, tainted: int) -> None:
        self.blocks.labels(resource.short, "published").set(published)
        self.blocks.labels(resource.short, "allocatable").set(allocatable)
        self.blocks.labels(resource.short, "tainted").set(tainted)

    def set_state(self, topology: Topology, usage: Usage, prepared: dict[Resource, int]) -> None:
        self.set_usage(topology, usage)
        for resource, count in prepared.items():
            self.prepared_claims.labels(resource.short).set(count)
