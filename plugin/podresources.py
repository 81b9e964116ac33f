"""Client for kubelet's PodResources API: which pod holds which Neuron devices and cores right now.

There is no "free" RPC in the device-plugin API, so this is the plugin's only view of what is released.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from neuronalloc import PodHolding, Resource, Topology
from neuronalloc.text import shorten
from neuronlog import get_logger
from plugin._proto.podresources.v1 import api_pb2 as pr_pb2
from plugin._proto.podresources.v1 import api_pb2_grpc as pr_grpc

log = get_logger(__name__)

LIST_TIMEOUT_SECONDS = 5.0
# kubelet's own PodResources clients accept answers up to 16 MiB; a larger one is refused by gRPC, not parsed.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
IGNORED_ID_SAMPLE = 10  # ignored IDs kept (shortened) to show in a warning; the rest are only counted
# Kubernetes names: a namespace is a DNS label, a pod name a DNS subdomain. A key that is neither cannot be a
# real pod; its hardware still counts as used, but it is not listed in the published state.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_POD_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_CONTAINER_NAME = _NAMESPACE  # a container name is a DNS label too
_RESOURCES = {resource.value: resource for resource in Resource}


class PodResourcesUnavailable(RuntimeError):
    """kubelet's PodResources socket did not answer; the message carries the gRPC status."""


@dataclass(frozen=True)
class CoreHolder:
    """The container holding one NeuronCore, directly (`neuroncore`) or through its device (`neuron`)."""

    namespace: str
    pod: str
    container: str
    resource: Resource  # the resource the container was given
    device: int  # the Neuron device the core is on


@dataclass(frozen=True)
class PodHoldings:
    """One PodResources answer, reduced to the Neuron hardware held on this node.

    `used_devices` / `used_cores` count every valid ID of every pod. `pods` lists who holds them, bounded by
    what the published state may carry: well-formed pod names, at most one pod per device and core.
    `by_name` says which resource name holds which IDs: kubelet tracks each name on its own, so the plugin
    must know what the *other* names hold (`neuron` and `neurondevice` both count in `used_devices`).
    """

    pods: Mapping[str, PodHolding]  # "namespace/name" -> holding
    used_devices: frozenset[int] = frozenset()
    used_cores: frozenset[int] = frozenset()
    by_name: Mapping[Resource, frozenset[int]] = field(default_factory=dict)
    ignored_ids: tuple[str, ...] = field(default=())  # a shortened sample of IDs that name nothing here
    ignored_count: int = 0
    unlisted_pods: int = 0  # pods holding hardware that `pods` leaves out (bad name, or over the bound)
    # core -> the container holding it (plugin_pod_neuroncore_info): at most one entry per core of the node,
    # only for well-formed pod and container names; if kubelet reports a core twice, the first holder wins.
    core_holders: Mapping[int, CoreHolder] = field(default_factory=dict)

    @classmethod
    def of(cls, pods: Mapping[str, PodHolding]) -> PodHoldings:
        """Holdings from a listing alone (tests, and callers that build one by hand)."""
        devices = frozenset[int]().union(*(h.devices for h in pods.values()))
        cores = frozenset[int]().union(*(h.cores for h in pods.values()))
        return cls(
            pods=pods,
            used_devices=devices,
            used_cores=cores,
            by_name={Resource.NEURON: devices, Resource.NEURONCORE: cores},
        )

    def held(self, resource: Resource) -> frozenset[int]:
        """The IDs held through this one resource name."""
        return self.by_name.get(resource, frozenset())


def parse_unit_id(raw: str, limit: int) -> int | None:
    """A device/core ID as kubelet reports it ("0".."limit-1"), or None if it names nothing on this node.

    The length is checked before int(), so a 5,000-digit string costs a comparison, not a ValueError."""
    if not raw or len(raw) > len(str(max(limit - 1, 0))):
        return None
    if not raw.isascii() or not raw.isdigit() or (len(raw) > 1 and raw[0] == "0"):
        return None
    value = int(raw)
    return value if value < limit else None


def _pod_key(pod: pr_pb2.PodResources) -> str | None:
    namespace, name = pod.namespace, pod.name
    if _NAMESPACE.fullmatch(namespace) and _POD_NAME.fullmatch(name):
        return f"{namespace}/{name}"
    return None


def holdings_from_pod_resources(pods: Iterable[pr_pb2.PodResources], topology: Topology) -> PodHoldings:
    """Sum every container's Neuron devices and cores per pod; pods holding none are left out."""
    held: dict[str, tuple[set[int], set[int]]] = {}
    used_devices: set[int] = set()
    used_cores: set[int] = set()
    by_name: dict[Resource, set[int]] = {resource: set() for resource in Resource}
    ignored: list[str] = []
    ignored_count = 0
    unlisted = 0
    max_listed = topology.device_count + topology.core_count  # each listed pod holds at least one unit
    core_holders: dict[int, CoreHolder] = {}
    for pod in pods:
        devices: set[int] = set()
        cores: set[int] = set()
        key = _pod_key(pod)
        for container in pod.containers:
            holder_named = key is not None and _CONTAINER_NAME.fullmatch(container.name) is not None
            for entry in container.devices:
                name = _RESOURCES.get(entry.resource_name)
                if name is None:
                    continue
                target = devices if name.whole_devices else cores
                limit = topology.unit_count(name)
                for raw in entry.device_ids:
                    unit = parse_unit_id(raw, limit)
                    if unit is not None:
                        target.add(unit)
                        by_name[name].add(unit)
                        if holder_named:
                            _hold(core_holders, topology, name, unit, pod, container.name)
                        continue
                    ignored_count += 1
                    if len(ignored) < IGNORED_ID_SAMPLE:
                        ignored.append(shorten(raw, 40))
        if not (devices or cores):
            continue
        used_devices |= devices
        used_cores |= cores
        if key is None or (key not in held and len(held) >= max_listed):
            unlisted += 1
            continue
        previous = held.get(key, (set(), set()))
        held[key] = (previous[0] | devices, previous[1] | cores)
    return PodHoldings(
        pods={key: PodHolding(frozenset(d), frozenset(c)) for key, (d, c) in sorted(held.items())},
        used_devices=frozenset(used_devices),
        used_cores=frozenset(used_cores),
        by_name={resource: frozenset(ids) for resource, ids in by_name.items()},
        ignored_ids=tuple(ignored),
        ignored_count=ignored_count,
        unlisted_pods=unlisted,
        core_holders=dict(sorted(core_holders.items())),
    )


def _hold(
    holders: dict[int, CoreHolder],
    topology: Topology,
    resource: Resource,
    unit: int,
    pod: pr_pb2.PodResources,
    container: str,
) -> None:
    """Record `container` as the holder of `unit`'s cores: the core itself, or every core of the device."""
    cores = topology.cores_of_device(unit) if resource.whole_devices else (unit,)
    for core in cores:
        if core not in holders:
            holders[core] = CoreHolder(pod.namespace, pod.name, container, resource, topology.device_of_core(core))


class PodResourcesClient:
    def __init__(self, socket_path: Path, topology: Topology) -> None:
        self._target = f"unix://{socket_path.absolute()}"
        self._topology = topology
        self._channel: grpc.aio.Channel | None = None
        self._reported: tuple[tuple[str, ...], int] = ((), 0)

    async def list_holdings(self) -> PodHoldings:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self._target, options=[("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]
            )
        stub = pr_grpc.PodResourcesListerStub(self._channel)
        try:
            response = await stub.List(pr_pb2.ListPodResourcesRequest(), timeout=LIST_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise PodResourcesUnavailable(
                f"PodResources List on {self._target} failed: {error.code().name}: {error.details()}"
            ) from None
        holdings = holdings_from_pod_resources(response.pod_resources, self._topology)
        anomalies = (holdings.ignored_ids, holdings.unlisted_pods)
        if anomalies != self._reported and (holdings.ignored_count or holdings.unlisted_pods):
            # Logged when what is odd changes, not on every 2 s poll.
            log.warning(
                "podresources.ignored_ids",
                ids=",".join(holdings.ignored_ids),
                count=holdings.ignored_count,
                unlisted_pods=holdings.unlisted_pods,
            )
        self._reported = anomalies
        return holdings

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
