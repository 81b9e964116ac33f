"""The allocator: choose one block for a request, as a pure function of the node's free IDs.

Policy is an ordered table of named preferences (lower key wins), applied to every block the rule allows that
lies in the free set and holds every must-include ID. The last preference, the lowest start ID, makes the
choice deterministic. The first preference for both resources keeps the node's largest free block as large as
it can be, so the allocator never leaves a smaller largest block than first fit would.

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

from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cached_property

from neuronalloc.blocks import enclosing_block, size_refusal
from neuronalloc.ranges import encode_ranges
from neuronalloc.refusal import Refusal
from neuronalloc.resources import Resource
from neuronalloc.shapes import AlignedShape, Key, Shape, WindowShape, shape_of
from neuronalloc.topology import Topology


def whole_devices(topo: Topology, free_cores: AbstractSet[int]) -> frozenset[int]:
    """Devices every core of which is free."""
    return frozenset(d for d in range(topo.device_count) if all(c in free_cores for c in topo.cores_of_device(d)))


@dataclass(frozen=True)
class _Request:
    """What is computed once per request and shared by every candidate block."""

    topo: Topology
    resource: Resource
    free: frozenset[int]

    @cached_property
    def shape(self) -> Shape:
        return shape_of(self.topo, self.resource, self.free)

    @cached_property
    def whole_device_shape(self) -> Shape:
        return shape_of(self.topo, Resource.NEURON, whole_devices(self.topo, self.free))


@dataclass(frozen=True)
class _Candidate:
    request: _Request
    block: range

    @cached_property
    def remaining(self) -> Key:
        return self.request.shape.key_without(self.block.start, self.block.stop - 1)

    @cached_property
    def largest_remaining(self) -> int:
        shape = self.request.shape
        assert isinstance(shape, WindowShape)  # cores are always windows
        return shape.largest_without(self.block.start, self.block.stop - 1)

    @cached_property
    def devices(self) -> range:
        cpd = self.request.topo.cores_per_device
        return range(self.block.start // cpd, (self.block.stop - 1) // cpd + 1)


def _negated(key: Key) -> Key:
    return tuple(-k for k in key)


@dataclass(frozen=True)
class Preference:
    name: str
    key: Callable[[_Candidate], Key]  # lower is better


DEVICE_POLICY: Sequence[Preference] = (
    Preference("keep-large-blocks", lambda c: _negated(c.remaining)),
    Preference("lowest-start", lambda c: (c.block.start,)),
)

CORE_POLICY: Sequence[Preference] = (
    Preference("keep-largest-core-run", lambda c: (-c.largest_remaining,)),
    Preference("fewest-devices", lambda c: (len(c.devices),)),
    Preference(
        "keep-whole-devices",
        lambda c: _negated(c.request.whole_device_shape.key_without(c.devices.start, c.devices.stop - 1)),
    ),
    Preference("keep-large-core-runs", lambda c: _negated(c.remaining)),
    Preference("lowest-start", lambda c: (c.block.start,)),
)


def policy_for(resource: Resource) -> Sequence[Preference]:
    return DEVICE_POLICY if resource.whole_devices else CORE_POLICY


def _blocks(request: _Request, size: int) -> Iterator[range]:
    """Every block of `size` wholly inside the free set, read off the shape rather than tested ID by ID."""
    shape = request.shape
    if isinstance(shape, AlignedShape):
        for start in sorted(shape.free_starts.get(size, ())):
            yield range(start, start + size)
        return
    for first, last in shape.runs:
        for start in range(first, last - size + 2):
            yield range(start, start + size)


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
    request = _Request(topo, resource, frozenset(i for i in free if 0 <= i < total))
    low, high = (min(must_include), max(must_include)) if must_include else (total, -1)
    candidates = [
        _Candidate(request, block)
        for block in _blocks(request, size)
        if block.start <= low and high < block.stop  # a block is contiguous: holding both ends holds all
    ]
    if not candidates:
        unit = resource.units
        holding = f" holding [{encode_ranges(must_include)}]" if must_include else ""
        free_text = encode_ranges(request.free)
        return Refusal("no_block", rule, f"no free block of {size} {unit}{holding} in free [{free_text}]: {rule}")
    return _best(candidates, policy_for(resource)).block


def _best(candidates: list[_Candidate], policy: Sequence[Preference]) -> _Candidate:
    """Lexicographic minimum over the policy, one preference at a time: later (costlier) keys are computed only
    for the candidates still tied, which keeps a 128-core node to a few hundred microseconds."""
    for preference in policy:
        if len(candidates) == 1:
            break
        keyed = [(preference.key(c), c) for c in candidates]
        best = min(key for key, _ in keyed)
        candidates = [c for key, c in keyed if key == best]
    return candidates[0]


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
    """How well a request fits this node, 0..10. The definition of the score: the product scores a block it has
    already chosen with `block_fit_score` (the same number); tests and benchmarks call this one.

    10 means the allocator's block fills a free block exactly, so nothing larger is broken; the score falls as
    the block it must break into grows: round(10 * size / broken block), at least 1. 0: it does not fit.
    Best fit across nodes keeps the cluster's large blocks for the requests that need them.
    """
    chosen = _choose(topo, resource, free, size, frozenset())
    if isinstance(chosen, Refusal):
        return 0
    return block_fit_score(topo, resource, free, chosen)


def block_fit_score(topo: Topology, resource: Resource, free: AbstractSet[int], block: Sequence[int]) -> int:
    """`fit_score` for a block `allocate` already chose from `free`: the same score, without choosing again."""
    broken = enclosing_block(topo, resource, free, range(block[0], block[-1] + 1))
    return max(1, round(10 * len(block) / broken))


__all__ = ["CORE_POLICY", "DEVICE_POLICY", "Preference", "allocate", "block_fit_score", "fit_score"]
