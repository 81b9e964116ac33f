"""Client for kubelet's PodResources API: which pod holds which Neuron devices and cores right now.

There is no "free" RPC in the device-plugin API, so this is the plugin's only view of what is released.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from neuronalloc import PodHolding, Resource, Topology
from neuronlog import get_logger
from plugin._proto.podresources.v1 import api_pb2 as pr_pb2
from plugin._proto.podresources.v1 import api_pb2_grpc as pr_grpc

log = get_logger(__name__)

LIST_TIMEOUT_SECONDS = 5.0


class PodResourcesUnavailable(RuntimeError):
    """kubelet's PodResources socket did not answer; the message carries the gRPC status."""


@dataclass(frozen=True)
class PodHoldings:
    """One PodResources answer, reduced to the Neuron hardware each pod holds."""

    pods: Mapping[str, PodHolding]  # "namespace/name" -> holding
    ignored_ids: tuple[str, ...] = field(default=())  # IDs that name no device or core of this node

    @property
    def used_devices(self) -> frozenset[int]:
        return frozenset().union(*(h.devices for h in self.pods.values()))

    @property
    def used_cores(self) -> frozenset[int]:
        return frozenset().union(*(h.cores for h in self.pods.values()))


def parse_unit_id(raw: str, limit: int) -> int | None:
    """A device/core ID as kubelet reports it ("0".."limit-1"), or None if it names nothing on this node."""
    if not raw.isascii() or not raw.isdigit() or (len(raw) > 1 and raw[0] == "0"):
        return None
    value = int(raw)
    return value if value < limit else None


def holdings_from_pod_resources(pods: Iterable[pr_pb2.PodResources], topology: Topology) -> PodHoldings:
    """Sum every container's Neuron devices and cores per pod; pods holding none are left out."""
    held: dict[str, tuple[set[int], set[int]]] = {}
    ignored: list[str] = []
    for pod in pods:
        devices: set[int] = set()
        cores: set[int] = set()
        for container in pod.containers:
            for entry in container.devices:
                if entry.resource_name == Resource.NEURON.value:
                    target, limit = devices, topology.device_count
                elif entry.resource_name == Resource.NEURONCORE.value:
                    target, limit = cores, topology.core_count
                else:
                    continue
                for raw in entry.device_ids:
                    unit = parse_unit_id(raw, limit)
                    if unit is None:
                        ignored.append(raw)
                    else:
                        target.add(unit)
        if devices or cores:
            key = f"{pod.namespace}/{pod.name}"
            previous = held.get(key, (set(), set()))
            held[key] = (previous[0] | devices, previous[1] | cores)
    return PodHoldings(
        pods={key: PodHolding(frozenset(d), frozenset(c)) for key, (d, c) in sorted(held.items())},
        ignored_ids=tuple(ignored),
    )


class PodResourcesClient:
    def __init__(self, socket_path: Path, topology: Topology) -> None:
        self._target = f"unix://{socket_path.absolute()}"
        self._topology = topology
        self._channel: grpc.aio.Channel | None = None

    async def list_holdings(self) -> PodHoldings:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self._target)
        stub = pr_grpc.PodResourcesListerStub(self._channel)
        try:
            response = await stub.List(pr_pb2.ListPodResourcesRequest(), timeout=LIST_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            raise PodResourcesUnavailable(
                f"PodResources List on {self._target} failed: {error.code().name}: {error.details()}"
            ) from None
        holdings = holdings_from_pod_resources(response.pod_resources, self._topology)
        if holdings.ignored_ids:
            log.warning("podresources.ignored_ids", ids=",".join(holdings.ignored_ids))
        return holdings

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
