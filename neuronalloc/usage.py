"""Shared hardware: what is free as whole devices and as cores, given what is in use under each name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from neuronalloc.resources import DEVICE_RESOURCES, Resource
from neuronalloc.topology import Topology


def free_sets(
    topo: Topology,
    used_devices: Iterable[int],
    used_cores: Iterable[int],
    unhealthy_devices: Iterable[int],
) -> tuple[frozenset[int], frozenset[int]]:
    """(free devices, free cores). A device with any core in use is not free as a device; a device in use or
    unhealthy has no free cores. IDs outside the node (a device that vanished) are ignored."""
    all_devices = frozenset(range(topo.device_count))
    held = all_devices & frozenset(used_devices)
    sick = all_devices & frozenset(unhealthy_devices)
    cores_in_use = frozenset(c for c in used_cores if 0 <= c < topo.core_count)
    free_devices = all_devices - held - sick - topo.devices_of_cores(cores_in_use)
    free_cores = topo.cores_of_devices(all_devices - held - sick) - cores_in_use
    return free_devices, free_cores


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
