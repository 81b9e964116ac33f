"""Shared hardware: what is free as whole devices and as cores, given what is in use under each name.

One rule, `hardware_of`: a block of whole devices (`neuron`, or its alias `neurondevice`) holds those devices and
every core on them; a block of cores holds those cores and keeps their devices from being free as whole devices.
Everything else here (the free sets of a node, what a placement takes and gives back, what a pod's holding
covers, what one name may use given the other two) follows from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from neuronalloc.resources import DEVICE_RESOURCES, Resource
from neuronalloc.topology import Topology


class Hardware(NamedTuple):
    """Devices and cores, as one block or holding ties them up."""

    devices: frozenset[int]
    cores: frozenset[int]


def hardware_of(topo: Topology, resource: Resource, block: Iterable[int]) -> Hardware:
    """The devices and cores a block of `resource` ties up (the shared-hardware rule)."""
    ids = frozenset(block)
    if resource.whole_devices:
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
        return self.devices if resource.whole_devices else self.cores

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


def usable_through(
    topo: Topology,
    resource: Resource,
    held: Mapping[Resource, Iterable[int]],
    unhealthy_devices: Iterable[int],
) -> frozenset[int]:
    """IDs of `resource` that health and what is held through the *other* resource names leave usable.

    `held` maps each name to the IDs held through it. A device held under `neuron` or `neurondevice`, or any of
    its cores under `neuroncore`, is used for all three names; the resource's own holdings are left out, for
    the caller to take from whoever tracks that one name (kubelet's `available` list, or its own holdings).
    """
    other_devices = frozenset(i for name in DEVICE_RESOURCES if name is not resource for i in held.get(name, ()))
    other_cores = () if resource is Resource.NEURONCORE else held.get(Resource.NEURONCORE, ())
    free_devices, free_cores = free_sets(topo, other_devices, other_cores, unhealthy_devices)
    return free_devices if resource.whole_devices else free_cores
