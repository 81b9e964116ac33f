"""DRA mode's block encoding: a node's legal blocks as ResourceSlice devices that consume shared counters.

Pure, like the rest of the core: the driver publishes what `slice_specs` returns, prepares claims by reading
device names back with `parse_block_name`, and `kubectl neuron` and the benches decode the same names. Every
DRA device is one block a single claim request can get; the counters make two blocks that share hardware
mutually exclusive, so the stock kube-scheduler can only hand out non-overlapping legal blocks.

Blocks published on a node (every one of them passes `check_block`):
  - devices: every block the node's rule allows: inf windows of every size with no wrap, trn 1/4/8/16 at
    aligned starts. Named `dev-<first>-<last>` (device indices).
  - NeuronCores, a bounded encoding (every core window of a 64-core node would be 2,080 devices):
      * inside one device: aligned power-of-two ranges smaller than a device (cores 0, 1, 0-1, 2-3 on a
        4-core device);
      * the cores of whole devices: on window nodes every window of consecutive devices, on torus (aligned)
        nodes every aligned power-of-two group of devices (1, 2, 4, 8, 16).
    Named `core-<first>-<last>` (global core indices). A core request of another size (3 cores, or 6 on a
    4-core device) has no block: ask for the next size up (a `firstAvailable` list does that).

Counters (one pool per node, named after it; one counter-only slice, then the device slices):
  - set `devices`: counter `d<k>` per device, capacity = cores per device. A device block, and a core block
    of whole devices, consumes all of `d<k>` for each of its devices; a core block inside device k consumes
    its size from `d<k>`. So a device held whole has no core free, and a device with a core held cannot be
    held whole: the shared-hardware rule.
  - sets `cores-<g>`: counter `c<j>` per core (32 per set, sets aligned on device boundaries), capacity 1,
    consumed only by core blocks inside one device: two of them never share a core.
  Every device consumes from at most two sets, at most 32 counters each, and a slice holds at most 64 devices:
  the API server's limits. Devices are published 64 to a slice in the order below.

Order: the scheduler gives a request the first free matching device in slice-name, then device order, so the
order is the within-node policy. Device blocks of each size come lowest start first (first fit from device 0);
core blocks come from the highest device down, so NeuronCore requests fill partly used devices at the top and
whole devices stay free at the bottom, for `neuron` requests.

Health: a block that uses an unhealthy device carries a NoSchedule taint, so nothing new is allocated there,
while the blocks already allocated stay published and keep their counters consumed (withdrawing a device
object would let the scheduler count its counters as free).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuronalloc.blocks import check_block
from neuronalloc.ranges import encode_ranges
from neuronalloc.resources import Resource
from neuronalloc.text import quote
from neuronalloc.topology import ALIGNED_SIZES, Rule, Topology

DRIVER = "neuron.neuron-contig.io"
NEURON_CLASS = "neuron.neuron-contig.io"  # DeviceClass of whole-device blocks
NEURONCORE_CLASS = "neuroncore.neuron-contig.io"  # DeviceClass of NeuronCore blocks
CLASS_OF = {Resource.NEURON: NEURON_CLASS, Resource.NEURONCORE: NEURONCORE_CLASS}
# The resources DRA mode publishes blocks of; aws.amazon.com/neurondevice is the device plugin's alias of whole
# devices and has no DRA counterpart (a claim asks for a block of the neuron class).
DRA_RESOURCES = (Resource.NEURON, Resource.NEURONCORE)
UNHEALTHY_TAINT = DRIVER + "/unhealthy"

# Attribute names (qualified by the driver name, the default domain): what a claim's CEL can select on.
ATTR_RESOURCE = "resource"  # "neuron" or "neuroncore"
ATTR_SIZE = "size"  # devices (neuron) or cores (neuroncore) in the block
ATTR_START = "start"  # first device (neuron) or first global core index (neuroncore)
ATTR_FIRST_DEVICE = "firstDevice"
ATTR_DEVICES = "devices"  # devices the block touches
ATTR_INSTANCE_TYPE = "instanceType"
ATTR_FAMILY = "family"
ATTR_RULE = "rule"  # the node's device rule: "window" or "aligned"
ATTR_NODE_DEVICES = "nodeDevices"  # devices on the node: lets firstAvailable prefer small nodes
ATTR_CORES_PER_DEVICE = "coresPerDevice"
ATTR_SMALL_FIRST = "smallFirst"  # the node takes blocks of fewer than LARGE_DEVICES devices before other nodes
LARGE_DEVICES = 8  # a block touching this many devices or more is "large": it prefers nodes not small-first

MAX_DEVICES_PER_SLICE = 64  # with counter consumption (ResourceSliceMaxDevicesWithAdvancedFeatures)
MAX_COUNTER_SETS = 8
MAX_COUNTERS_PER_SET = 32
MAX_CONSUMPTIONS_PER_DEVICE = 2
MAX_COUNTERS_PER_CONSUMPTION = 32
MAX_SLICE_NAME = 253
DEVICE_SET = "devices"

_NAME = re.compile(r"(dev|core)-(0|[1-9][0-9]{0,3})-(0|[1-9][0-9]{0,3})")
_PREFIX = {Resource.NEURON: "dev", Resource.NEURONCORE: "core"}
_RESOURCE_OF = {prefix: resource for resource, prefix in _PREFIX.items()}


class DraLayoutError(ValueError):
    """A node the encoding cannot describe, or a device name that is not one of its blocks."""


@dataclass(frozen=True, order=True)
class Block:
    """One DRA device: a block of `size` devices or cores from `first`."""

    resource: Resource
    first: int
    size: int

    @property
    def last(self) -> int:
        return self.first + self.size - 1

    @property
    def ids(self) -> range:
        return range(self.first, self.first + self.size)

    @property
    def name(self) -> str:
        return f"{_PREFIX[self.resource]}-{self.first}-{self.last}"

    def devices(self, topo: Topology) -> range:
        if self.resource is Resource.NEURON:
            return self.ids
        return range(topo.device_of_core(self.first), topo.device_of_core(self.last) + 1)

    def cores(self, topo: Topology) -> range:
        if self.resource is Resource.NEURONCORE:
            return self.ids
        return range(self.first * topo.cores_per_device, (self.last + 1) * topo.cores_per_device)

    def whole_devices(self, topo: Topology) -> bool:
        """True if the block holds every core of each device it touches."""
        cpd = topo.cores_per_device
        return self.resource is Resource.NEURON or (self.first % cpd == 0 and self.size % cpd == 0)


# ---- which blocks a node offers -------------------------------------------------------------------------


def _powers_of_two(limit: int) -> list[int]:
    sizes, size = [], 1
    while size <= limit:
        sizes.append(size)
        size *= 2
    return sizes


def device_blocks(topo: Topology) -> list[Block]:
    """Every device block the node's rule allows, lowest start first within each size (smallest size first)."""
    n = topo.device_count
    if topo.rule is Rule.ALIGNED:
        sizes = [s for s in ALIGNED_SIZES if s <= n]
        return [Block(Resource.NEURON, start, s) for s in sizes for start in range(0, n - s + 1, s)]
    return [Block(Resource.NEURON, start, s) for s in range(1, n + 1) for start in range(0, n - s + 1)]


def core_blocks(topo: Topology) -> list[Block]:
    """The bounded NeuronCore encoding (module docstring), in publish order: highest device first."""
    cpd, n = topo.cores_per_device, topo.device_count
    inside = [
        Block(Resource.NEURONCORE, device * cpd + offset, size)
        for device in reversed(range(n))
        for size in _powers_of_two(cpd - 1)
        for offset in range(0, cpd - size + 1, size)
    ]
    if topo.rule is Rule.ALIGNED:
        groups = [(start, size) for size in _powers_of_two(n) for start in range(0, n - size + 1, size)]
    else:
        groups = [(start, size) for size in range(1, n + 1) for start in range(0, n - size + 1)]
    # Whole devices from the top too: within each size, the highest start first.
    groups.sort(key=lambda g: (g[1], -g[0]))
    whole = [Block(Resource.NEURONCORE, start * cpd, size * cpd) for start, size in groups]
    return inside + whole


def node_blocks(topo: Topology) -> list[Block]:
    """Every block the node publishes, in publish order (device blocks, then core blocks)."""
    check_layout_fits(topo)
    return device_blocks(topo) + core_blocks(topo)


def core_sets(topo: Topology) -> int:
    """How many `cores-<g>` counter sets the node needs (none when no core block sits inside a device)."""
    if topo.cores_per_device == 1:
        return 0
    return -(-topo.core_count // MAX_COUNTERS_PER_SET)


def check_layout_fits(topo: Topology) -> None:
    """Raise DraLayoutError for a node whose counters do not fit one counter slice."""
    device_sets = -(-topo.device_count // MAX_COUNTERS_PER_SET)
    if topo.device_count < 1:
        raise DraLayoutError(f"{topo.instance_type}: no devices to publish")
    if MAX_COUNTERS_PER_SET % topo.cores_per_device and topo.cores_per_device > 1:
        raise DraLayoutError(
            f"{topo.instance_type}: {topo.cores_per_device} cores per device do not divide the {MAX_COUNTERS_PER_SET} "
            "counters of a counter set; DRA mode needs 1, 2, 4, 8, 16 or 32 (run the device plugin on this node)"
        )
    if device_sets > 1:
        raise DraLayoutError(
            f"{topo.instance_type}: {topo.device_count} devices; DRA mode publishes nodes of at most "
            f"{MAX_COUNTERS_PER_SET} devices (run the device plugin on this node)"
        )
    if device_sets + core_sets(topo) > MAX_COUNTER_SETS:
        raise DraLayoutError(
            f"{topo.instance_type}: {topo.core_count} NeuronCores need more than {MAX_COUNTER_SETS} counter sets "
            "(run the device plugin on this node)"
        )


# ---- names ----------------------------------------------------------------------------------------------


def parse_block_name(name: object, topo: Topology) -> Block:
    """The block a device name of this node stands for. Raises DraLayoutError (bounded message) otherwise."""
    if not isinstance(name, str):
        raise DraLayoutError(f"device name: expected a string, got {type(name).__name__}")
    match = _NAME.fullmatch(name)
    if match is None:
        raise DraLayoutError(f"device {quote(name, 80)} is not a {DRIVER} block name (dev-F-L or core-F-L)")
    resource = _RESOURCE_OF[match.group(1)]
    first, last = int(match.group(2)), int(match.group(3))
    if last < first:
        raise DraLayoutError(f"device {name!r}: the block ends before it starts")
    block = Block(resource, first, last - first + 1)
    refusal = check_block(topo, resource, block.ids)
    if refusal is not None:
        raise DraLayoutError(f"device {name!r} is not a block of this node: {refusal}")
    if resource is Resource.NEURONCORE and not _is_published_core_block(topo, block):
        raise DraLayoutError(f"device {name!r} is not one of the NeuronCore blocks this node publishes")
    return block


def _is_published_core_block(topo: Topology, block: Block) -> bool:
    cpd = topo.cores_per_device
    if not block.whole_devices(topo):
        # Inside one device, an aligned power of two smaller than the device.
        return (
            block.size < cpd
            and block.size & (block.size - 1) == 0
            and block.first % block.size == 0
            and topo.device_of_core(block.first) == topo.device_of_core(block.last)
        )
    devices = block.size // cpd
    start = block.first // cpd
    if topo.rule is Rule.ALIGNED:
        return devices & (devices - 1) == 0 and start % devices == 0
    return True


# ---- counters -------------------------------------------------------------------------------------------


def core_set_name(group: int) -> str:
    return f"cores-{group}"


def counter_sets(topo: Topology) -> list[dict[str, Any]]:
    """The pool's SharedCounters. Capacities do not change with health (taints withdraw blocks instead)."""
    cpd = topo.cores_per_device
    sets = [
        {
            "name": DEVICE_SET,
            "counters": {f"d{d}": {"value": str(cpd)} for d in range(topo.device_count)},
        }
    ]
    for group in range(core_sets(topo)):
        cores = range(group * MAX_COUNTERS_PER_SET, min((group + 1) * MAX_COUNTERS_PER_SET, topo.core_count))
        sets.append({"name": core_set_name(group), "counters": {f"c{c}": {"value": "1"} for c in cores}})
    return sets


def consumption(topo: Topology, block: Block) -> list[dict[str, Any]]:
    """The ConsumesCounters entries of one block (module docstring)."""
    cpd = topo.cores_per_device
    if block.whole_devices(topo):
        return [
            {
                "counterSet": DEVICE_SET,
                "counters": {f"d{d}": {"value": str(cpd)} for d in block.devices(topo)},
            }
        ]
    device = topo.device_of_core(block.first)
    return [
        {"counterSet": DEVICE_SET, "counters": {f"d{device}": {"value": str(block.size)}}},
        {
            "counterSet": core_set_name(block.first // MAX_COUNTERS_PER_SET),
            "counters": {f"c{c}": {"value": "1"} for c in block.ids},
        },
    ]


# ---- slices ---------------------------------------------------------------------------------------------


def _attributes(topo: Topology, block: Block, small_first: bool) -> dict[str, Any]:
    devices = block.devices(topo)
    return {
        ATTR_RESOURCE: {"string": block.resource.short},
        ATTR_SIZE: {"int": block.size},
        ATTR_START: {"int": block.first},
        ATTR_FIRST_DEVICE: {"int": devices.start},
        ATTR_DEVICES: {"int": len(devices)},
        ATTR_INSTANCE_TYPE: {"string": topo.instance_type[:64]},
        ATTR_FAMILY: {"string": topo.family[:64]},
        ATTR_RULE: {"string": topo.rule.value},
        ATTR_NODE_DEVICES: {"int": topo.device_count},
        ATTR_CORES_PER_DEVICE: {"int": topo.cores_per_device},
        ATTR_SMALL_FIRST: {"bool": small_first},
    }


def device_doc(
    topo: Topology, block: Block, unhealthy: Collection[int] = (), *, small_first: bool = False
) -> dict[str, Any]:
    """One entry of a slice's `devices`."""
    doc: dict[str, Any] = {
        "name": block.name,
        "attributes": _attributes(topo, block, small_first),
        "consumesCounters": consumption(topo, block),
    }
    sick = [d for d in block.devices(topo) if d in unhealthy]
    if sick:
        doc["taints"] = [{"key": UNHEALTHY_TAINT, "value": f"neuron{sick[0]}", "effect": "NoSchedule"}]
    return doc


def slice_name(node: str, index: int) -> str:
    """`<node>-neuron-contig-<NN>`: slices are read in name order, so the index is the publish order."""
    suffix = f"-neuron-contig-{index:02d}"
    base = node if len(node) + len(suffix) <= MAX_SLICE_NAME else node[: MAX_SLICE_NAME - len(suffix)].rstrip(".-")
    return base + suffix


@dataclass(frozen=True)
class SliceSpec:
    """One ResourceSlice this node should have: its name and its `spec` without the pool generation."""

    name: str
    spec: dict[str, Any]


def slice_specs(
    topo: Topology, node: str, unhealthy: Collection[int] = (), *, small_first: bool = False
) -> list[SliceSpec]:
    """Every ResourceSlice of the node's pool: the counters first, then the blocks 64 at a time.

    `spec.pool.generation` is left 0: the publisher sets the pool's generation on all of them."""
    blocks = node_blocks(topo)
    chunks = [blocks[i : i + MAX_DEVICES_PER_SLICE] for i in range(0, len(blocks), MAX_DEVICES_PER_SLICE)]
    count = 1 + len(chunks)

    def spec(**content: Any) -> dict[str, Any]:
        return {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 0, "resourceSliceCount": count},
            **content,
        }

    out = [SliceSpec(slice_name(node, 0), spec(sharedCounters=counter_sets(topo)))]
    for index, chunk in enumerate(chunks, start=1):
        devices = [device_doc(topo, b, unhealthy, small_first=small_first) for b in chunk]
        out.append(SliceSpec(slice_name(node, index), spec(devices=devices)))
    return out


# ---- reading allocations back ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """What one claim gets on this node: the union of its blocks, which must itself be one block."""

    resource: Resource
    ids: tuple[int, ...]  # devices (neuron) or cores (neuroncore)
    devices: tuple[int, ...]
    cores: tuple[int, ...]


def grant_of(topo: Topology, blocks: Sequence[Block]) -> Grant:
    """The one block a claim's blocks make together. Raises DraLayoutError if they are not one legal block of
    one resource that the Neuron runtime would accept (overlapping, scattered, or devices mixed with cores)."""
    if not blocks:
        raise DraLayoutError("the claim holds no block of this driver")
    resources = {b.resource for b in blocks}
    names = ",".join(b.name for b in blocks[:8]) + ("" if len(blocks) <= 8 else f",... ({len(blocks)} blocks)")
    if len(resources) > 1:
        raise DraLayoutError(f"blocks [{names}] mix whole devices and NeuronCores: one claim gets one block")
    resource = blocks[0].resource
    ids: list[int] = []
    for block in blocks:
        ids.extend(block.ids)
    if len(set(ids)) != len(ids):
        raise DraLayoutError(f"blocks [{names}] overlap")
    refusal = check_block(topo, resource, ids)
    if refusal is not None:
        raise DraLayoutError(f"blocks [{names}] together are not one block ({refusal})")
    ordered = tuple(sorted(ids))
    if resource is Resource.NEURON:
        devices, cores = ordered, tuple(sorted(topo.cores_of_devices(ordered)))
    else:
        devices, cores = tuple(sorted(topo.devices_of_cores(ordered))), ordered
    return Grant(resource, ordered, devices, cores)


def grant_envs(grant: Grant) -> dict[str, str]:
    """The environment `Allocate` sets for the same hardware."""
    return {
        "NEURON_RT_VISIBLE_CORES": encode_ranges(grant.cores),
        "AWS_NEURON_VISIBLE_DEVICES": encode_ranges(grant.devices),
    }


def blocks_in_use(topo: Topology, names: Iterable[str]) -> tuple[frozenset[int], frozenset[int]]:
    """(devices held whole, cores held) by the named blocks; names that are not blocks of this node are skipped."""
    devices: set[int] = set()
    cores: set[int] = set()
    for name in names:
        try:
            block = parse_block_name(name, topo)
        except DraLayoutError:
            continue
        if block.resource is Resource.NEURON:
            devices.update(block.ids)
        else:
            cores.update(block.ids)
    return frozenset(devices), frozenset(cores)


def describe_layout(topo: Topology) -> Mapping[str, int]:
    """How many blocks of each resource the node publishes, and in how many slices (for logs and docs)."""
    blocks = node_blocks(topo)
    return {
        "device_blocks": sum(1 for b in blocks if b.resource is Resource.NEURON),
        "core_blocks": sum(1 for b in blocks if b.resource is Resource.NEURONCORE),
        "slices": 1 + -(-len(blocks) // MAX_DEVICES_PER_SLICE),
    }


# ---- claims that ask for one block ----------------------------------------------------------------------

# Node-size tiers a request tries in turn (devices on the node): a block on the smallest node that can hold it
# keeps the big nodes' large blocks for the requests that need them.
NODE_TIERS: tuple[int | None, ...] = (4, 12, None)


def small_first_by_name(node: str, share: float) -> bool:
    """Whether a node is small-first when no label says: a stable hash of its name puts about `share` of the
    nodes in that group, with no coordination between nodes."""
    if share <= 0:
        return False
    digest = 0
    for byte in node.encode():  # FNV-1a: stable across processes, unlike hash()
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % 10_000 < round(share * 10_000)


def _attr(name: str) -> str:
    return f'device.attributes["{DRIVER}"].{name}'


def block_selector(resource: Resource, size: int) -> str:
    """CEL: a block of exactly `size` devices (neuron) or NeuronCores (neuroncore)."""
    return f"{_attr(ATTR_SIZE)} == {size}"  # the DeviceClass already selects the resource


def block_request(resource: Resource, size: int, name: str = "block") -> dict[str, Any]:
    """One claim request for one block of `size`, as a `firstAvailable` list the scheduler's Score ranks.

    Alternatives, best first: on the smallest node tier that can hold it, a node of the preferred group (a small
    block prefers small-first nodes, a large block, touching LARGE_DEVICES devices or more, the others), then
    any node of that tier; then the next tier. Every alternative is the same block size: the list changes only
    where the block goes, never what the pod gets."""
    if size < 1:
        raise ValueError(f"a block has at least 1 {resource.unit}, got {size}")
    base = block_selector(resource, size)
    group = f"{_attr(ATTR_SMALL_FIRST)} == ({_attr(ATTR_DEVICES)} < {LARGE_DEVICES})"
    alternatives = []
    for tier in NODE_TIERS:
        if resource is Resource.NEURON and tier is not None and size > tier:
            continue
        where = base if tier is None else f"{base} && {_attr(ATTR_NODE_DEVICES)} <= {tier}"
        label = "any" if tier is None else f"upto{tier}"
        alternatives.append((f"{label}-grouped", f"{where} && {group}"))
        alternatives.append((label, where))
    return {
        "name": name,
        "firstAvailable": [
            {"name": sub, "deviceClassName": CLASS_OF[resource], "selectors": [{"cel": {"expression": expr}}]}
            for sub, expr in alternatives
        ],
    }


def claim_template(name: str, resource: Resource, size: int) -> dict[str, Any]:
    """A ResourceClaimTemplate asking for one block of `size` (the examples in deploy/examples/dra come from it)."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name},
        "spec": {"spec": {"devices": {"requests": [block_request(resource, size)]}}},
    }
