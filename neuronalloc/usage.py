"""Shared hardware: what is free as whole devices and as cores, given what is in use."""

from __future__ import annotations

from collections.abc import Iterable

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
