"""DRA nodes for `kubectl neuron`: each node's state rebuilt from its ResourceSlices and the claims allocated
from them, in the same shape the device plugin publishes, so the map, the free sets and the largest free
blocks read the same in both modes.

Pure, like view.py. A node is a DRA node when slices of driver neuron.neuron-contig.io name it. Its topology
comes from the block attributes (instance type, devices, cores per device); an unhealthy device is one whose
single-device block carries the driver's unhealthy taint; a block is held by an allocated claim whose result
names the node's pool, shown as the pod the claim is reserved for (or the claim, before a pod reserves it).
Anything garbled is an error for that node, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from neuronalloc import NodeState, PodHolding, Resource, free_sets, resolve_topology, with_cores_per_device
from neuronalloc.draslices import (
    ATTR_CORES_PER_DEVICE,
    ATTR_INSTANCE_TYPE,
    ATTR_NODE_DEVICES,
    DRIVER,
    UNHEALTHY_TAINT,
    DraLayoutError,
    parse_block_name,
)
from neuronalloc.nodestate import MAX_CORES_PER_DEVICE, MAX_DEVICES

Obj = Mapping[str, Any]


class DraStateError(ValueError):
    """A node's slices or claims cannot be read as DRA mode's blocks."""


def _int_attr(device: Obj, name: str, high: int) -> int:
    value = ((device.get("attributes") or {}).get(name) or {}).get("int")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise DraStateError(f"device {str(device.get('name'))[:60]!r}: attribute {name} is not 1..{high}")
    return value


def dra_slices_by_node(slices: Sequence[Obj]) -> dict[str, list[Obj]]:
    """The newest pool generation's slices of our driver, per node."""
    by_node: dict[str, list[Obj]] = {}
    for item in slices:
        spec = item.get("spec") or {}
        if spec.get("driver") == DRIVER and isinstance(spec.get("nodeName"), str):
            by_node.setdefault(spec["nodeName"], []).append(item)
    for node, items in by_node.items():
        newest = max(((i.get("spec") or {}).get("pool") or {}).get("generation") or 0 for i in items)
        by_node[node] = [
            i for i in items if (((i.get("spec") or {}).get("pool") or {}).get("generation") or 0) == newest
        ]
    return by_node


def _holder(claim: Obj) -> str:
    meta = claim.get("metadata") or {}
    namespace = str(meta.get("namespace", ""))
    for consumer in (claim.get("status") or {}).get("reservedFor") or []:
        if isinstance(consumer, Mapping) and consumer.get("resource") == "pods" and consumer.get("name"):
            return f"{namespace}/{consumer['name']}"
    return f"{namespace}/claim:{meta.get('name', '')}"


def dra_node_state(node: str, slices: Sequence[Obj], claims: Sequence[Obj], now: datetime) -> NodeState:
    devices = [d for s in slices for d in ((s.get("spec") or {}).get("devices") or []) if isinstance(d, Mapping)]
    if not devices:
        raise DraStateError("the node's ResourceSlices list no device (the pool may be incomplete)")
    first = devices[0]
    instance_type = ((first.get("attributes") or {}).get(ATTR_INSTANCE_TYPE) or {}).get("string")
    count = _int_attr(first, ATTR_NODE_DEVICES, MAX_DEVICES)
    cpd = _int_attr(first, ATTR_CORES_PER_DEVICE, MAX_CORES_PER_DEVICE)
    topo = with_cores_per_device(resolve_topology(str(instance_type or "unknown"), count), cpd)
    if topo.device_count != count:
        raise DraStateError(f"{instance_type} has {topo.device_count} devices, the slices say {count}")
    unhealthy: set[int] = set()
    for device in devices:
        tainted = any(isinstance(t, Mapping) and t.get("key") == UNHEALTHY_TAINT for t in device.get("taints") or [])
        if not tainted:
            continue
        try:
            block = parse_block_name(device.get("name"), topo)
        except DraLayoutError as error:
            raise DraStateError(str(error)) from None
        if block.resource is Resource.NEURON and block.size == 1:
            unhealthy.add(block.first)
    pods: dict[str, tuple[set[int], set[int]]] = {}
    used_devices: set[int] = set()
    used_cores: set[int] = set()
    for claim in claims:
        results = (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or []
        for result in results:
            if not isinstance(result, Mapping) or result.get("driver") != DRIVER or result.get("pool") != node:
                continue
            try:
                block = parse_block_name(result.get("device"), topo)
            except DraLayoutError as error:
                raise DraStateError(f"claim {_holder(claim)}: {error}") from None
            held = pods.setdefault(_holder(claim), (set(), set()))
            if block.resource is Resource.NEURON:
                held[0].update(block.ids)
                used_devices.update(block.ids)
            else:
                held[1].update(block.ids)
                used_cores.update(block.ids)
    free_devices, free_cores = free_sets(topo, used_devices, used_cores, unhealthy)
    return NodeState(
        topology=topo,
        free_devices=free_devices,
        free_cores=free_cores,
        unhealthy_devices=frozenset(unhealthy),
        pods={key: PodHolding(frozenset(d), frozenset(c)) for key, (d, c) in pods.items()},
        observed_at=now,
    )
