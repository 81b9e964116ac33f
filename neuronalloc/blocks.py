"""The block rules: which ID sets form one block, for each rule and resource.

Devices follow the node's rule (windows or aligned). Cores are always a window of global core indices.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from collections.abc import Set as AbstractSet

from neuronalloc.ranges import encode_ranges, runs
from neuronalloc.refusal import Refusal
from neuronalloc.resources import Resource
from neuronalloc.topology import ALIGNED_SIZES, Rule, Topology


def is_aligned(topo: Topology, resource: Resource) -> bool:
    return resource.whole_devices and topo.rule is Rule.ALIGNED


def size_refusal(topo: Topology, resource: Resource, size: int) -> Refusal | None:
    """A refusal if no free state of this node could ever hold a block of `size`, else None."""
    rule = topo.describe_rule(resource)
    unit = resource.units
    if size < 1:
        return Refusal("invalid", rule, f"{size} {unit} requested: a request is at least 1 ({topo.instance_type})")
    total = topo.unit_count(resource)
    if size > total:
        return Refusal(
            "unresolvable", rule, f"{size} {unit} requested but the node has only {total} ({topo.instance_type})"
        )
    if is_aligned(topo, resource) and size not in ALIGNED_SIZES:
        return Refusal("unresolvable", rule, f"{size} devices cannot form a block: {rule}")
    return None


def candidate_starts(topo: Topology, resource: Resource, size: int) -> range:
    """Every start ID of a block of `size` under the rule (assumes `size_refusal` passed)."""
    total = topo.unit_count(resource)
    step = size if is_aligned(topo, resource) else 1
    return range(0, total - size + 1, step)


def check_block(topo: Topology, resource: Resource, ids: Collection[int]) -> Refusal | None:
    """None if `ids` is one block under the node's rule, else the refusal naming the IDs and the rule."""
    rule = topo.describe_rule(resource)
    shown = ",".join(str(i) for i in ids)
    unique = sorted(set(ids))
    if len(unique) != len(ids):
        return Refusal("invalid", rule, f"IDs [{shown}] repeat an ID: {rule}")
    refusal = size_refusal(topo, resource, len(unique))
    if refusal is not None:
        return Refusal(refusal.kind, rule, f"IDs [{shown}]: {refusal.message}")
    total = topo.unit_count(resource)
    outside = [i for i in unique if not 0 <= i < total]
    if outside:
        return Refusal("invalid", rule, f"IDs [{encode_ranges(outside)}] do not exist on this node: {rule}")
    first = unique[0]
    if unique[-1] - first + 1 != len(unique):
        return Refusal("invalid", rule, f"IDs [{encode_ranges(unique)}] are not contiguous: {rule}")
    if is_aligned(topo, resource) and first % len(unique):
        return Refusal(
            "invalid", rule, f"IDs [{encode_ranges(unique)}] do not start at a multiple of {len(unique)}: {rule}"
        )
    return None


def free_blocks(topo: Topology, resource: Resource, free: AbstractSet[int], size: int) -> Iterator[range]:
    """Every block of `size` that lies wholly in `free`, lowest start first."""
    if size_refusal(topo, resource, size) is not None:
        return
    for start in candidate_starts(topo, resource, size):
        block = range(start, start + size)
        if all(i in free for i in block):
            yield block


def placeable_sizes(topo: Topology, resource: Resource) -> tuple[int, ...]:
    """Every block size the rule allows on this node, largest first."""
    total = topo.unit_count(resource)
    if is_aligned(topo, resource):
        return tuple(s for s in reversed(ALIGNED_SIZES) if s <= total)
    return tuple(range(total, 0, -1))


def largest_free_block(topo: Topology, resource: Resource, free: AbstractSet[int]) -> int:
    """The largest request that `free` can hold as one block under the rule (0 if none)."""
    if is_aligned(topo, resource):
        for size in placeable_sizes(topo, resource):
            if next(free_blocks(topo, resource, free, size), None) is not None:
                return size
        return 0
    in_range = [i for i in free if 0 <= i < topo.unit_count(resource)]
    return max((last - first + 1 for first, last in runs(in_range)), default=0)


def enclosing_block(topo: Topology, resource: Resource, free: AbstractSet[int], block: range) -> int:
    """The size of the largest free block that `block` breaks into: the free run (windows) or the largest
    wholly free aligned parent (aligned rule) around it. Equal to len(block) for a perfect fit."""
    if is_aligned(topo, resource):
        best = len(block)
        for size in placeable_sizes(topo, resource):
            if size <= best:
                break
            start = block.start - block.start % size
            if all(i in free for i in range(start, start + size)):
                best = size
                break
        return best
    low = block.start
    while low - 1 in free:
        low -= 1
    high = block.stop
    while high in free:
        high += 1
    return high - low
