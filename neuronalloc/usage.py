"""Shared hardware: what is free as whole devices and as cores, given what is in use.

One rule, `hardware_of`: a block of whole devices holds those devices and every core on them; a block of cores
holds those cores and keeps their devices from being free as whole devices. Everything else here (the free
sets of a node, what a placement takes and gives back, what a pod's holding covers) follows from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from neuronalloc.resources import Resource
from neuronalloc.topology import Topology


class Hardware(NamedTuple):
    """Devices and cores, as one block or holding ties them up."""

    devices: frozenset[int]
    cores: frozenset[int]


def hardware_of(topo: Topology, resource: Resource, block: Iterable[int]) -> Hardware:
    """The devices and cores a block of `resource` ties up (the shared-hardware rule)."""
    ids = frozenset(block)
    if resource is Resource.NEURON:
        return Hardware(ids, topo.cores_of_devices(ids))
    return Hardware(topo.devices_of_cores(ids), ids)


def hardware_in_use(topo: Topology, used_devices: Iterable[int], used_cores: Iterable[int]) -> Hardware:
    """What whole devices and cores in use tie up together, on this node only (IDs outside it are ignored)."""
    devices = hardware_of(topo, Resource.NEURON, (d for d in used_devices if 0 <= d < topo.device_count))
    cores = hardware_of(topo, Resource.NEURONCORE, (c for c in used_cores if 0 <= c < topo.core_count))
    return Hardware(devices.devices | cores.devices, devices.cores | cores.cores)


@dataclass(frozen=True, slots=True)
class Free:
    """What a node has free, as whole devices and as cores (the shared-hardware rule keeps them consistent)."""

    devices: frozenset[int]
    cores: frozenset[int]

    @classmethod
    def everything(cls, topo: Topology) -> Free:
        return cls(frozenset(range(topo.device_count)), frozenset(range(topo.core_count)))

    def of(self, resource: Resource) -> frozenset[int]:
        return self.devices if resource is Resource.NEURON else self.cores

    def take(self, topo: Topology, resource: Resource, block: Iterable[int]) -> Free:
        """The free sets after `block` is held."""
        held = hardware_of(topo, resource, block)
        return Free(self.devices - held.devices, self.cores - held.cores)

    def release(self, topo: Topology, resource: Resource, block: Iterable[int]) -> Free:
        """The free sets after `block`, held until now, is handed back: its cores are free again, and a device
        is free whole again once every core on it is."""
        held = hardware_of(topo, resource, block)
        cores = self.cores | held.cores
        whole = frozenset(d for d in held.devices if all(c in cores for c in topo.cores_of_device(d)))
        return Free(self.devices | whole, cores)


def free_sets(
    topo: Topology,
    used_devices: Iterable[int],
    used_cores: Iterable[int],
    unhealthy_devices: Iterable[int],
) -> tuple[frozenset[int], frozenset[int]]:
    """(free devices, free cores). A device with any core in use is not free as a device; a device in use or
    unhealthy has no free cores. IDs outside the node (a device that vanished) are ignored."""
    held = hardware_in_use(topo, (*used_devices, *unhealthy_devices), used_cores)
    free = Free.everything(topo)
    return free.devices - held.devices, free.cores - held.cores
