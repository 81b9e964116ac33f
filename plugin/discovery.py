"""Find this node's Neuron devices and resolve its topology.

Devices are the `neuronN` entries under the device root (character devices on a node, plain files in tests).
The instance type comes from the flag, else the node label, else the device count (with sysfs core_count to
tell families apart); a type the catalog does not know falls back to a linear chain of the devices found.

Everything read here is bounded, because a garbled /dev or sysfs must not make a monster node: only canonical
names count (`neuron0`, `neuron12`; not `neuron01`, not non-ASCII digits); a known type has exactly its catalog
device count, and an unknown one at most `MAX_DEVICES`; a sysfs number is read from at most a few bytes and a
`core_count` outside 1..`MAX_CORES_PER_DEVICE` is ignored. Whatever is ignored is logged with its name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from neuronalloc import Topology, encode_ranges, guess_instance_type, lookup_instance_type, resolve_topology
from neuronalloc.nodestate import MAX_CORES_PER_DEVICE, MAX_DEVICES
from neuronalloc.text import quote, shorten
from neuronlog import get_logger

log = get_logger(__name__)

# ASCII digits only, no leading zero; longer numbers than 9 digits are counted, never converted.
_DEVICE_NAME = re.compile(r"neuron(0|[1-9][0-9]{0,8})")
_LONG_NAME = re.compile(r"neuron[1-9][0-9]{9,}")  # canonical, but beyond any bound
_DEVICE_LIKE = re.compile(r"neuron\d+")  # what a person would read as a device name, in any script
SYSFS_CLASS_DIR = "class/neuron_device"
MAX_SYSFS_BYTES = 32  # a sysfs number is a few characters; never read more
SHOWN_NAMES = 10  # ignored names quoted in a warning; the rest are counted
MAX_BEYOND = 4096  # indices beyond the bound kept to name them in a warning; the rest are counted


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


@dataclass
class _Scan:
    indices: set[int] = field(default_factory=set)  # canonical names below MAX_DEVICES
    beyond: set[int] = field(default_factory=set)  # canonical names at or above it (at most MAX_BEYOND kept)
    beyond_count: int = 0
    odd: list[str] = field(default_factory=list)  # device-like names that are not canonical (a sample)
    odd_count: int = 0


def _scan(device_root: Path) -> _Scan:
    scan = _Scan()
    try:
        entries = os.scandir(device_root)
    except OSError:
        return scan  # an unreadable root means no devices
    with entries:
        for entry in entries:
            name = entry.name
            if not name.startswith("neuron"):
                continue
            match = _DEVICE_NAME.fullmatch(name)
            if match is None:
                if _LONG_NAME.fullmatch(name):
                    scan.beyond_count += 1
                elif _DEVICE_LIKE.fullmatch(name):
                    scan.odd_count += 1
                    if len(scan.odd) < SHOWN_NAMES:
                        scan.odd.append(name)
                continue
            index = int(match.group(1))
            if index < MAX_DEVICES:
                scan.indices.add(index)
            else:
                scan.beyond_count += 1
                if len(scan.beyond) < MAX_BEYOND:
                    scan.beyond.add(index)
    return scan


def _names(indices: set[int] | frozenset[int], count: int) -> str:
    """`neuron12-999`, or the first runs of a long list and how many devices were left unnamed."""
    text = "neuron" + encode_ranges(indices)
    if count > len(indices):
        text += f" (and {count - len(indices)} more)"
    return shorten(text, 200)


def _warn_odd(scan: _Scan) -> None:
    if scan.odd_count:
        log.warning(
            "discovery.devices_ignored",
            reason="not_canonical",
            names=",".join(quote(name, 40)[1:-1] for name in scan.odd),
            count=scan.odd_count,
        )


def scan_devices(device_root: Path) -> frozenset[int]:
    """Indices of the canonical neuronN entries under device_root below the ceiling (MAX_DEVICES).

    Non-canonical names are logged and left out."""
    scan = _scan(device_root)
    _warn_odd(scan)
    return frozenset(scan.indices)


def _read_int(path: Path) -> int | None:
    """The decimal number in a small sysfs-like file, or None. Reads at most MAX_SYSFS_BYTES."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SYSFS_BYTES + 1)
    except OSError:
        return None
    text = raw.strip()
    if len(raw) > MAX_SYSFS_BYTES or not re.fullmatch(rb"-?[0-9]{1,9}", text):
        return None
    return int(text)


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as file:
            return file.read(MAX_SYSFS_BYTES + 1).decode("ascii", "replace").strip()
    except OSError:
        return ""


def device_sysfs_dir(sysfs_root: Path, device: int) -> Path:
    return sysfs_root / SYSFS_CLASS_DIR / f"neuron{device}"


def read_core_count(sysfs_root: Path, devices: frozenset[int]) -> int | None:
    """NeuronCores per device as the driver reports it (the first device that tells), else None.

    A value outside 1..MAX_CORES_PER_DEVICE is logged and ignored: for an unknown type it would size the node."""
    for device in sorted(devices):
        path = device_sysfs_dir(sysfs_root, device) / "core_count"
        count = _read_int(path)
        if count is not None and 1 <= count <= MAX_CORES_PER_DEVICE:
            return count
        if count is not None or path.exists():
            log.warning(
                "discovery.core_count_ignored",
                device=device,
                value=shorten(_read_text(path), 40),
                limit=MAX_CORES_PER_DEVICE,
            )
    return None


def read_numa_nodes(sysfs_root: Path, devices: frozenset[int]) -> dict[int, int]:
    """device -> NUMA node from the PCI device's numa_node; -1 (no NUMA) and unreadable entries are left out."""
    nodes: dict[int, int] = {}
    for device in devices:
        node = _read_int(device_sysfs_dir(sysfs_root, device) / "device" / "numa_node")
        if node is not None and 0 <= node < 1024:  # kernels support at most 1024 NUMA nodes
            nodes[device] = node
    return nodes


# AWS's EKS guide writes the file as one `KEY=value` line; a bare number is accepted too.
_LNC_LINE = re.compile(rb"(?:NEURON_LOGICAL_NC_CONFIG=)?([12])")


def read_logical_nc(path: Path) -> int | None:
    """trn2's/trn3's logical NeuronCore setting (1 or 2), or None when the file is absent or garbled."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SYSFS_BYTES + 1)
    except OSError:
        return None
    found = _LNC_LINE.fullmatch(raw.strip()) if len(raw) <= MAX_SYSFS_BYTES else None
    return int(found.group(1)) if found else None


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
    scan = _scan(device_root)
    _warn_odd(scan)
    present = frozenset(scan.indices)
    core_count = read_core_count(sysfs_root, present)
    found_count = max(present) + 1 if present else 0
    name, source = choose_instance_type(instance_type_flag, node_label, found_count, core_count)
    row = lookup_instance_type(name)
    # A known type fixes the device count: a device missing at start shows as unhealthy rather than absent,
    # and entries beyond the type's count are not devices of this node. An unknown type stops at the ceiling.
    limit = row.devices if row else MAX_DEVICES
    extra = frozenset(d for d in present if d >= limit)
    if extra or scan.beyond_count:
        fields = {"instance_type": row.name} if row else {}
        log.warning(
            "discovery.devices_ignored",
            reason="beyond_instance_type" if row else "beyond_ceiling",
            names=_names(extra | scan.beyond, len(extra) + scan.beyond_count),
            count=len(extra) + scan.beyond_count,
            limit=limit,
            **fields,
        )
    present -= extra
    device_count = row.devices if row else (max(present) + 1 if present else 0)
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
