"""How useful a free set is, and how that changes when a range of IDs is taken: the allocator's inner loop.

A shape is computed once per request; `key_without` then costs O(runs) for windows and O(sizes) for aligned
blocks, instead of rebuilding sets for every candidate block.
"""

from __future__ import annotations

import bisect
from collections.abc import Set as AbstractSet

from neuronalloc.blocks import free_blocks, is_aligned, placeable_sizes
from neuronalloc.ranges import runs
from neuronalloc.resources import Resource
from neuronalloc.topology import Topology

Key = tuple[int, ...]


class WindowShape:
    """Free IDs as maximal runs. Key: the run lengths, largest first (larger key = larger requests fit)."""

    def __init__(self, ids: AbstractSet[int]) -> None:
        self.runs = runs(ids)
        self._firsts = [first for first, _ in self.runs]
        self._lengths = sorted((last - first + 1 for first, last in self.runs), reverse=True)

    def key(self) -> Key:
        return tuple(self._lengths)

    def run_containing(self, index: int) -> tuple[int, int] | None:
        at = bisect.bisect_right(self._firsts, index) - 1
        if at >= 0 and self.runs[at][1] >= index:
            return self.runs[at]
        return None

    def largest_without(self, lo: int, hi: int) -> int:
        """The longest run once IDs lo..hi (inclusive), which lie inside one run, are no longer free."""
        run = self.run_containing(lo)
        if run is None:
            return self._lengths[0] if self._lengths else 0
        first, last = run
        length = last - first + 1
        # The longest other run is the first length that is not this run's (equal lengths are interchangeable).
        others = self._lengths[1] if self._lengths[0] == length and len(self._lengths) > 1 else None
        longest_other = self._lengths[0] if self._lengths[0] != length else (others or 0)
        return max(longest_other, lo - first, last - hi)

    def key_without(self, lo: int, hi: int) -> Key:
        """The key once IDs lo..hi (inclusive) are no longer free."""
        lengths = list(self._lengths)
        at = max(bisect.bisect_right(self._firsts, lo) - 1, 0)
        while at < len(self.runs) and self.runs[at][0] <= hi:
            first, last = self.runs[at]
            if last >= lo:
                lengths.remove(last - first + 1)
                lengths.extend(piece for piece in (lo - first, last - hi) if piece > 0)
            at += 1
        return tuple(sorted(lengths, reverse=True))


class AlignedShape:
    """Free devices under the aligned rule. Key: how many free aligned blocks of each size, largest size first."""

    def __init__(self, topo: Topology, ids: AbstractSet[int]) -> None:
        self.sizes = placeable_sizes(topo, Resource.NEURON)
        self.free_starts = {
            size: frozenset(block.start for block in free_blocks(topo, Resource.NEURON, ids, size))
            for size in self.sizes
        }

    def key(self) -> Key:
        return tuple(len(self.free_starts[size]) for size in self.sizes)

    def key_without(self, lo: int, hi: int) -> Key:
        return tuple(
            len(starts) - sum(1 for start in range(lo - lo % size, hi + 1, size) if start in starts)
            for size, starts in ((size, self.free_starts[size]) for size in self.sizes)
        )


Shape = WindowShape | AlignedShape


def shape_of(topo: Topology, resource: Resource, ids: AbstractSet[int]) -> Shape:
    return AlignedShape(topo, ids) if is_aligned(topo, resource) else WindowShape(ids)
