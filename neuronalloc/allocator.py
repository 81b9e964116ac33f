"""The allocator: choose one block for a request, as a pure function of the node's free IDs.

Policy is an ordered table of named preferences (lower key wins), applied to every block the rule allows that
lies in the free set and holds every must-include ID. The last preference, the lowest start ID, makes the choice
deterministic. The first preference for both resources keeps the node's largest free block as large as it can
be, so the allocator never leaves a smaller largest block than first fit would.

Devices
  1. keep-large-blocks: leave the free set whose block sizes, compared largest first, are the largest
     (windows: the free runs sorted by length; aligned: how many free aligned blocks of 16, 8, 4, 1 remain).
  2. lowest-start.
NeuronCores
  1. keep-largest-core-run: leave the longest run of free cores.
  2. fewest-devices: stay inside one device when the size allows it.
  3. keep-whole-devices: leave the most useful set of wholly free devices, so cores fill devices that are
     already partly used and whole devices stay available to `aws.amazon.com/neuron` requests.
  4. keep-large-core-runs: then the remaining core runs, largest first.
  5. lowest-start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cached_property

from neuronalloc.blocks import (
    enclosing_block,
    free_blocks,
    is_aligned,
    placeable_sizes,
    size_refusal,
)
from neuronalloc.ranges import encode_ranges, runs
from neuronalloc.refusal import Refusal
from neuronalloc.resources import Resource
from neuronalloc.topology import Topology

Key = tuple[int, ...]


@dataclass(frozen=True)
class _Candidate:
    """One block, with what the node would have left if it were chosen."""

    topo: Topology
    resource: Resource
    free: AbstractSet[int]
    block: range

    @cached_property
    def remaining(self) -> frozenset[int]:
        return frozenset(self.free) - frozenset(self.block)

    @cached_property
    def remaining_run_lengths(self) -> Key:
        return tuple(sorted((last - first + 1 for first, last in runs(self.remaining)), reverse=True))

    @cached_property
    def remaining_whole_devices(self) -> frozenset[int]:
        return whole_devices(self.topo, self.remaining)


def whole_devices(topo: Topology, free_cores: AbstractSet[int]) -> frozenset[int]:
    """Devices every core of which is free."""
    return frozenset(d for d in range(topo.device_count) if all(c in free_cores for c in topo.cores_of_device(d)))


def fragmentation_key(topo: Topology, resource: Resource, free: AbstractSet[int]) -> Key:
    """A free set's usefulness, compared largest blocks first: a larger key holds larger requests."""
    if is_aligned(topo, resource):
        return tuple(sum(1 for _ in free_blocks(topo, resource, free, s)) for s in placeable_sizes(topo, resource))
    return tuple(sorted((last - first + 1 for first, last in runs(free)), reverse=True))


def _negated(key: Key) -> Key:
    return tuple(-k for k in key)


@dataclass(frozen=True)
class Preference:
    name: str
    key: Callable[[_Candidate], Key]  # lower is better


def _devices_touched(c: _Candidate) -> Key:
    cpd = c.topo.cores_per_device
    return ((c.block.stop - 1) // cpd - c.block.start // cpd + 1,)


DEVICE_POLICY: Sequence[Preference] = (
    Preference("keep-large-blocks", lambda c: _negated(fragmentation_key(c.topo, c.resource, c.remaining))),
    Preference("lowest-start", lambda c: (c.block.start,)),
)

CORE_POLICY: Sequence[Preference] = (
    Preference("keep-largest-core-run", lambda c: (-(c.remaining_run_lengths or (0,))[0],)),
    Preference("fewest-devices", _devices_touched),
    Preference(
        "keep-whole-devices",
        lambda c: _negated(fragmentation_key(c.topo, Resource.NEURON, c.remaining_whole_devices)),
    ),
    Preference("keep-large-core-runs", lambda c: _negated(c.remaining_run_lengths)),
    Preference("lowest-start", lambda c: (c.block.start,)),
)


def policy_for(resource: Resource) -> Sequence[Preference]:
    return DEVICE_POLICY if resource is Resource.NEURON else CORE_POLICY


def _rank(policy: Sequence[Preference], candidate: _Candidate) -> tuple[Key, ...]:
    return tuple(p.key(candidate) for p in policy)


def _choose(
    topo: Topology, resource: Resource, free: AbstractSet[int], size: int, must_include: AbstractSet[int]
) -> range | Refusal:
    refusal = size_refusal(topo, resource, size)
    if refusal is not None:
        return refusal
    rule = topo.describe_rule(resource)
    total = topo.unit_count(resource)
    outside = sorted(i for i in must_include if not 0 <= i < total)
    if outside:
        return Refusal("invalid", rule, f"must-include IDs [{encode_ranges(outside)}] do not exist on this node")
    if len(must_include) > size:
        return Refusal("invalid", rule, f"must-include IDs [{encode_ranges(must_include)}] exceed the size {size}")
    frozen_free = frozenset(free)
    candidates = [
        _Candidate(topo, resource, frozen_free, block)
        for block in free_blocks(topo, resource, frozen_free, size)
        if all(i in block for i in must_include)
    ]
    if not candidates:
        unit = "devices" if resource is Resource.NEURON else "NeuronCores"
        with_must = f" holding [{encode_ranges(must_include)}]" if must_include else ""
        return Refusal(
            "no_block",
            rule,
            f"no free block of {size} {unit}{with_must} in free [{encode_ranges(frozen_free)}]: {rule}",
        )
    policy = policy_for(resource)
    return min(candidates, key=lambda c: _rank(policy, c)).block


def allocate(
    topo: Topology,
    resource: Resource,
    free: AbstractSet[int],
    size: int,
    must_include: AbstractSet[int] = frozenset(),
) -> tuple[int, ...] | Refusal:
    """The block to give a request of `size`, or why there is none. Deterministic for equal inputs."""
    chosen = _choose(topo, resource, free, size, must_include)
    return chosen if isinstance(chosen, Refusal) else tuple(chosen)


def fit_score(topo: Topology, resource: Resource, free: AbstractSet[int], size: int) -> int:
    """How well a request fits this node, 0..10.

    10 means the allocator's block fills a free block exactly, so nothing larger is broken; the score falls as
    the block it must break into grows (score = round(10 * size / broken block), at least 1). 0: it does not fit.
    Best fit across nodes keeps the cluster's large blocks for the requests that need them.
    """
    chosen = _choose(topo, resource, free, size, frozenset())
    if isinstance(chosen, Refusal):
        return 0
    broken = enclosing_block(topo, resource, frozenset(free), chosen)
    return max(1, round(10 * size / broken))
