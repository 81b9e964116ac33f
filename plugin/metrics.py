"""Every metric the plugin exports (served on the metrics port by plugin/httpserve.py).

Names are the public contract in docs/CONTRACTS.md. Label sets are zero-initialised so that dashboards and
alerts see a 0, not a missing series, before the first event.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from neuronalloc import Resource, Topology, hardware_in_use, largest_free_block
from plugin.hwerrors import DROP_REASONS, HW_ERROR_KINDS
from plugin.nodeview import Usage

if TYPE_CHECKING:
    from plugin.podresources import CoreHolder

RPCS = ("GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate", "PreStartContainer")
ALLOCATION_RESULTS = ("ok", "invalid_argument", "failed_precondition")
# An RPC's result: how it answered (ok, or the gRPC code it refused with), cancelled by the caller, or error
# (anything unexpected, which gRPC answers UNKNOWN).
RPC_RESULTS = (*ALLOCATION_RESULTS, "cancelled", "error")
REGISTRATION_RESULTS = ("ok", "error")
PUBLISH_ERROR_REASONS = ("podresources_unavailable", "apiserver_unreachable", "apiserver_rejected")
STATES = ("healthy", "unhealthy", "allocated", "free")
HTTP_REJECT_REASONS = ("too_many_connections", "deadline")
CONDITION_ERROR_REASONS = ("apiserver_unreachable", "apiserver_rejected")
# neuron-monitor labels its per-core series `neuroncore` (the node-wide core index): the info series uses the
# same name, so `on (node, neuroncore)` joins them with no relabeling.
POD_CORE_LABELS = ("namespace", "pod", "container", "resource", "device", "neuroncore")
_RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class PluginMetrics:
    def __init__(self, resources: Collection[Resource] = tuple(Resource)) -> None:
        self._resources = tuple(resources)  # the names served: only theirs get per-resource series
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        ns, sub, reg = "neuron_contig", "plugin", self.registry
        self.devices = Gauge("devices", "Neuron devices by state", ["state"], namespace=ns, subsystem=sub, registry=reg)
        self.cores = Gauge("cores", "NeuronCores by state", ["state"], namespace=ns, subsystem=sub, registry=reg)
        self.largest_free_block = Gauge(
            "largest_free_block",
            "Largest request that fits now under the node's block rule",
            ["resource"], namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.allocations = Counter(
            "allocations", "Allocate calls by result", ["resource", "result"], namespace=ns, subsystem=sub, registry=reg
        )
        self.rpc_duration = Histogram(
            "rpc_duration_seconds",
            "Device-plugin RPC handling time (ListAndWatch: time to each update)",
            ["rpc", "resource"], namespace=ns, subsystem=sub, registry=reg, buckets=_RPC_BUCKETS,
        )  # fmt: skip
        self.rpcs = Counter(
            "rpcs", "Device-plugin RPCs by result (ListAndWatch: each device list handed to the stream)",
            ["rpc", "resource", "result"],
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.registrations = Counter(
            "registrations", "Register calls to kubelet by result", ["resource", "result"],
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.registered = Gauge(
            "registered", "1 while registered with kubelet", ["resource"], namespace=ns, subsystem=sub, registry=reg
        )
        self.publish_errors = Counter(
            "publish_errors", "Node-state publishing failures by reason", ["reason"],
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.last_publish = Gauge(
            "last_publish_timestamp_seconds", "Unix time of the last successful node-annotation write",
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.topology_fallback = Gauge(
            "topology_fallback", "1 = unknown instance type, devices treated as a linear chain",
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.device_healthy = Gauge(
            "device_healthy", "1 = device healthy", ["device"], namespace=ns, subsystem=sub, registry=reg
        )
        self.serving = Gauge(
            "serving", "1 while the plugin can serve kubelet (registered, PodResources fresh, not stopping)",
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.podresources_age = Gauge(
            "podresources_age_seconds", "Seconds since the last successful PodResources read (+Inf before the first)",
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.hw_errors = Counter(
            "hw_errors", "Kernel NEURON_HW_ERR records accepted, by error kind", ["kind"],
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.kernel_log_dropped = Counter(
            "kernel_log_dropped", "Kernel-log lines or records not acted on, by reason", ["reason"],
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.kernel_log_skipped_bytes = Counter(
            "kernel_log_skipped_bytes", "Kernel-log bytes never parsed (backlog skipped, over-long lines)",
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        # Only the configured source's series exists (none with --hw-error-log ""): a 0 means "cannot read".
        self.kernel_log_readable = Gauge(
            "kernel_log_readable", "1 while the configured kernel-log source can be read, 0 while it cannot",
            ["source"], namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.condition_errors = Counter(
            "condition_errors", "Failed writes of the NeuronDevicesHealthy node condition, by reason", ["reason"],
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.http_rejected = Counter(
            "http_connections_rejected", "Metrics-port connections closed by a limit", ["reason"],
            namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self.pod_neuroncore = Gauge(
            "pod_neuroncore_info",
            "1 for each NeuronCore a pod's container holds, whole device or core (from kubelet's PodResources)",
            POD_CORE_LABELS, namespace=ns, subsystem=sub, registry=reg,
        )  # fmt: skip
        self._pod_cores: dict[int, tuple[str, ...]] = {}  # core -> the label values exported for it
        self._zero_initialise()

    def _zero_initialise(self) -> None:
        for resource in self._resources:
            self.largest_free_block.labels(resource.short)
            self.registered.labels(resource.short)
            for rpc in RPCS:
                self.rpc_duration.labels(rpc, resource.short)
                for result in RPC_RESULTS:
                    self.rpcs.labels(rpc, resource.short, result)
            for result in ALLOCATION_RESULTS:
                self.allocations.labels(resource.short, result)
            for result in REGISTRATION_RESULTS:
                self.registrations.labels(resource.short, result)
        for state in STATES:
            self.devices.labels(state)
            self.cores.labels(state)
        for reason in PUBLISH_ERROR_REASONS:
            self.publish_errors.labels(reason)
        for kind in HW_ERROR_KINDS:
            self.hw_errors.labels(kind)
        for reason in DROP_REASONS:
            self.kernel_log_dropped.labels(reason)
        for reason in HTTP_REJECT_REASONS:
            self.http_rejected.labels(reason)
        for reason in CONDITION_ERROR_REASONS:
            self.condition_errors.labels(reason)
        self.podresources_age.set(float("inf"))

    def watch_serving(self, reason: Callable[[], str | None], podresources_age: Callable[[], float | None]) -> None:
        """Compute the serving gauge and the PodResources age at scrape time, from the live state."""
        self.serving.set_function(lambda: 1.0 if reason() is None else 0.0)
        self.podresources_age.set_function(lambda: float("inf") if (age := podresources_age()) is None else age)

    def observe(self, rpc: str, resource: Resource, result: str, elapsed: float) -> None:
        """One RPC, once, when it has answered: its time, its result, and for Allocate the allocations count."""
        self.rpc_duration.labels(rpc, resource.short).observe(elapsed)
        self.rpcs.labels(rpc, resource.short, result).inc()
        if rpc == "Allocate" and result in ALLOCATION_RESULTS:
            self.allocations.labels(resource.short, result).inc()

    def set_topology(self, topology: Topology) -> None:
        self.topology_fallback.set(0 if topology.known else 1)

    def set_usage(self, topology: Topology, usage: Usage) -> None:
        unhealthy = hardware_in_use(topology, usage.unhealthy_devices, ())
        in_use = hardware_in_use(topology, usage.used_devices, usage.used_cores)
        self.devices.labels("healthy").set(topology.device_count - len(unhealthy.devices))
        self.devices.labels("unhealthy").set(len(unhealthy.devices))
        self.devices.labels("allocated").set(len(in_use.devices))
        self.devices.labels("free").set(len(usage.free_devices))
        self.cores.labels("healthy").set(topology.core_count - len(unhealthy.cores))
        self.cores.labels("unhealthy").set(len(unhealthy.cores))
        self.cores.labels("allocated").set(len(in_use.cores))
        self.cores.labels("free").set(len(usage.free_cores))
        for resource in self._resources:  # neurondevice counts the same free devices as neuron
            free = usage.free_devices if resource.whole_devices else usage.free_cores
            self.largest_free_block.labels(resource.short).set(largest_free_block(topology, resource, free))
        # device_healthy is not rewritten here, every poll: it changes only on a health change, and
        # `set_device_health` is called then (and once at start), from the same set `usage` carries.

    def set_device_health(self, topology: Topology, unhealthy: Collection[int]) -> None:
        for device in range(topology.device_count):
            self.device_healthy.labels(str(device)).set(0 if device in unhealthy else 1)

    def set_pod_cores(self, holders: Mapping[int, CoreHolder]) -> None:
        """One info series per held core (so at most one per core of the node); a released core's is removed.

        Only what changed is touched: a core that keeps its holder keeps its series through every update."""
        wanted: dict[int, tuple[str, ...]] = {
            core: (h.namespace, h.pod, h.container, h.resource.short, str(h.device), str(core))
            for core, h in holders.items()
        }
        for core, labels in self._pod_cores.items():
            if wanted.get(core) != labels:
                self.pod_neuroncore.remove(*labels)
        for core, labels in wanted.items():
            if self._pod_cores.get(core) != labels:
                self.pod_neuroncore.labels(*labels).set(1)
        self._pod_cores = wanted

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
