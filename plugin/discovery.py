"""Find this node's Neuron devices and resolve its topology.

Devices are the `neuronN` entries under the device root (character devices on a node, plain files in tests).
The instance type comes from the flag, else the node label, else the device count (with sysfs core_count to
tell families apart); a type the catalog does not know falls back to a linear chain of the devices found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from neuronalloc import Topology, guess_instance_type, lookup_instance_type, resolve_topology

_DEVICE_NAME = re.compile(r"^neuron(\d+)$")
SYSFS_CLASS_DIR = "class/neuron_device"


class TypeSource(StrEnum):
    FLAG = "flag"
    NODE_LABEL = "node_label"
    DEVICE_COUNT = "device_count"
    FALLBACK = "fallback"


class DiscoveryError(RuntimeError):
    """The node offers nothing the plugin can serve; the message says what was looked for and where."""


@dataclass(frozen=True)
class Discovery:
    topology: Topology
    type_source: TypeSource
    present: frozenset[int]  # device indices whose node exists right now
    numa_nodes: dict[int, int]  # device index -> NUMA node, where sysfs tells


def scan_devices(device_root: Path) -> frozenset[int]:
    """Indices of the neuronN entries under device_root; an unreadable root means no devices."""
    try:
        names = [entry.name for entry in device_root.iterdir()]
    except OSError:
        return frozenset()
    return frozenset(int(m.group(1)) for m in map(_DEVICE_NAME.match, names) if m)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def device_sysfs_dir(sysfs_root: Path, device: int) -> Path:
    return sysfs_root / SYSFS_CLASS_DIR / f"neuron{device}"


def read_core_count(sysfs_root: Path, devices: frozenset[int]) -> int | None:
    """NeuronCores per device as the driver reports it (the first device that tells), else None."""
    for device in sorted(devices):
        count = _read_int(device_sysfs_dir(sysfs_root, device) / "core_count")
        if count is not None and count > 0:
            return count
    return None


def read_numa_nodes(sysfs_root: Path, devices: frozenset[int]) -> dict[int, int]:
    """device -> NUMA node from the PCI device's numa_node; -1 (no NUMA) and unreadable entries are left out."""
    nodes: dict[int, int] = {}
    for device in devices:
        node = _read_int(device_sysfs_dir(sysfs_root, device) / "device" / "numa_node")
        if node is not None and node >= 0:
            nodes[device] = node
    return nodes


def read_logical_nc(path: Path) -> int | None:
    """trn2's logical NeuronCore setting (1 or 2), or None when the file is absent or garbled."""
    value = _read_int(path)
    return value if value in (1, 2) else None


def choose_instance_type(
    flag_value: str, node_label: str | None, device_count: int, core_count: int | None
) -> tuple[str | None, TypeSource]:
    if flag_value:
        return flag_value, TypeSource.FLAG
    if node_label:
        return node_label, TypeSource.NODE_LABEL
    guessed = guess_instance_type(device_count, core_count)
    if guessed is not None:
        return guessed.name, TypeSource.DEVICE_COUNT
    return None, TypeSource.FALLBACK


def discover(
    *,
    device_root: Path,
    sysfs_root: Path,
    logical_nc_config: Path,
    instance_type_flag: str,
    node_label: str | None,
) -> Discovery:
    present = scan_devices(device_root)
    core_count = read_core_count(sysfs_root, present)
    found_count = max(present) + 1 if present else 0
    name, source = choose_instance_type(instance_type_flag, node_label, found_count, core_count)
    row = lookup_instance_type(name)
    # A known type fixes the device count, so a device missing at start shows as unhealthy rather than absent.
    device_count = max(row.devices, found_count) if row else found_count
    if device_count == 0:
        raise DiscoveryError(
            f"no neuronN device under {device_root} and no known instance type "
            f"(--instance-type {instance_type_flag!r}, node label {node_label!r})"
        )
    topology = resolve_topology(
        name,
        device_count,
        cores_per_device=core_count,
        logical_nc=read_logical_nc(logical_nc_config),
    )
    if not topology.known:
        source = TypeSource.FALLBACK
    return Discovery(topology, source, present, read_numa_nodes(sysfs_root, present))
