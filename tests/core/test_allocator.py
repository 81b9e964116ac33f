"""Allocator invariants, checked by hypothesis on every instance family and both resources."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronalloc import (
    Refusal,
    Resource,
    Topology,
    allocate,
    block_fit_score,
    check_block,
    fit_score,
    largest_free_block,
    resolve_topology,
)
from neuronalloc.blocks import candidate_starts, size_refusal
from tests.core.strategies import RESOURCES, free_subsets, topologies


def oracle_blocks(topo: Topology, resource: Resource, free: frozenset[int], size: int) -> list[range]:
    """Brute force: every ID set of `size` in `free` that check_block's written rule accepts."""
    total = topo.unit_count(resource)
    found = []
    for start in range(total - size + 1):
        block = range(start, start + size)
        if set(block) <= free and check_block(topo, resource, list(block)) is None:
            found.append(block)
    return found


def first_fit(topo: Topology, resource: Resource, free: frozenset[int], size: int) -> range | None:
    """What AWS's extender and HAMi do: the lowest-numbered block that fits."""
    blocks = oracle_blocks(topo, resource, free, size)
    return blocks[0] if blocks else None


Request = tuple[Topology, Resource, frozenset[int], int, frozenset[int]]


@st.composite
def requests(draw: st.DrawFn) -> Request:
    topo = draw(topologies())
    resource = draw(RESOURCES)
    free = draw(free_subsets(topo, resource))
    size = draw(st.integers(1, topo.unit_count(resource)))
    must = (
        draw(st.frozensets(st.sampled_from(sorted(free)), max_size=2)) if free and draw(st.booleans()) else frozenset()
    )
    return topo, resource, free, size, must


@settings(max_examples=400, deadline=None)
@given(requests())
def test_block_obeys_every_invariant(req: Request) -> None:
    topo, resource, free, size, must = req
    result = allocate(topo, resource, free, size, must)
    oracle = [b for b in oracle_blocks(topo, resource, free, size) if must <= set(b)]
    if isinstance(result, Refusal):
        assert oracle == [], f"refused {size} on {topo.instance_type} but {oracle[0]} fits: {result}"
        assert result.rule and result.message
        return
    assert len(result) == size
    assert check_block(topo, resource, result) is None, "not contiguous/aligned under the rule"
    assert set(result) <= free
    assert must <= set(result)
    assert range(result[0], result[-1] + 1) in oracle


@settings(max_examples=300, deadline=None)
@given(requests())
def test_deterministic_whatever_the_input_order(
    req: Request,
) -> None:
    topo, resource, free, size, must = req
    first = allocate(topo, resource, free, size, must)
    again = allocate(topo, resource, set(sorted(free, reverse=True)), size, set(must))
    assert first == again


@settings(max_examples=400, deadline=None)
@given(requests())
def test_never_leaves_a_smaller_largest_block_than_first_fit(
    req: Request,
) -> None:
    topo, resource, free, size, _ = req
    ours = allocate(topo, resource, free, size)
    theirs = first_fit(topo, resource, free, size)
    if isinstance(ours, Refusal):
        assert theirs is None
        return
    assert theirs is not None
    left_ours = largest_free_block(topo, resource, free - set(ours))
    left_theirs = largest_free_block(topo, resource, free - set(theirs))
    assert left_ours >= left_theirs


@settings(max_examples=300, deadline=None)
@given(requests())
def test_fit_score_is_in_range_and_zero_only_when_refused(
    req: Request,
) -> None:
    topo, resource, free, size, _ = req
    score = fit_score(topo, resource, free, size)
    assert 0 <= score <= 10
    assert (score == 0) == isinstance(allocate(topo, resource, free, size), Refusal)
    chosen = allocate(topo, resource, free, size)
    if not isinstance(chosen, Refusal):
        assert block_fit_score(topo, resource, free, chosen) == score, "scoring the chosen block is fit_score"


INF1_6 = resolve_topology("inf1.6xlarge", 4)
INF1_24 = resolve_topology("inf1.24xlarge", 16)
TRN1 = resolve_topology("trn1.32xlarge", 16)
INF2_48 = resolve_topology("inf2.48xlarge", 12)


@pytest.mark.parametrize(
    ("topo", "resource", "free", "size", "expected"),
    [
        # Best fit: the 2-run is filled exactly and the 4-run stays whole (first fit would break the 4-run).
        (INF1_24, Resource.NEURON, {0, 1, 2, 3, 6, 7}, 2, (6, 7)),
        # No wrap-around on the ring: {11, 0} is not a block.
        (INF2_48, Resource.NEURON, {11, 0}, 2, None),
        # trn: rows 0-3, 4-7 and 8-11 are free; taking 8-11 keeps the aligned 8-block 0-7 whole.
        (TRN1, Resource.NEURON, set(range(12)), 4, (8, 9, 10, 11)),
        # trn aligned: {2,3,4,5} is consecutive but not aligned.
        (TRN1, Resource.NEURON, {2, 3, 4, 5}, 4, None),
        # Cores fill the partly used device (device 0 has core 0 in use) before breaking a whole device.
        (INF1_6, Resource.NEURONCORE, set(range(1, 16)), 2, (1, 2)),
        # Cores stay inside one device when the size allows: 4 cores = exactly device 1, not 2-5.
        (INF1_6, Resource.NEURONCORE, set(range(2, 16)), 4, (12, 13, 14, 15)),
    ],
)
def test_policy_examples(
    topo: Topology, resource: Resource, free: set[int], size: int, expected: tuple[int, ...] | None
) -> None:
    result = allocate(topo, resource, frozenset(free), size)
    if expected is None:
        assert isinstance(result, Refusal) and result.kind == "no_block"
    else:
        assert result == expected


def test_unresolvable_sizes_say_the_rule() -> None:
    refusal = allocate(TRN1, Resource.NEURON, frozenset(range(16)), 3)
    assert isinstance(refusal, Refusal) and refusal.kind == "unresolvable"
    assert "1, 4, 8 or 16" in refusal.message
    too_big = allocate(INF1_6, Resource.NEURON, frozenset(range(4)), 5)
    assert isinstance(too_big, Refusal) and too_big.kind == "unresolvable" and "only 4" in too_big.message


def test_must_include_outside_or_oversized_is_invalid() -> None:
    outside = allocate(INF1_6, Resource.NEURON, frozenset(range(4)), 2, frozenset({9}))
    assert isinstance(outside, Refusal) and outside.kind == "invalid" and "9" in outside.message
    oversized = allocate(INF1_6, Resource.NEURON, frozenset(range(4)), 1, frozenset({0, 1}))
    assert isinstance(oversized, Refusal) and oversized.kind == "invalid"


@pytest.mark.parametrize(
    ("topo", "resource", "ids", "fragment"),
    [
        (INF1_6, Resource.NEURON, [0, 2], "not contiguous"),
        (INF1_6, Resource.NEURON, [1, 1], "repeat"),
        (INF1_6, Resource.NEURON, [3, 4], "do not exist"),
        (TRN1, Resource.NEURON, [4, 5], "1, 4, 8 or 16"),
        (TRN1, Resource.NEURON, [2, 3, 4, 5], "multiple of 4"),
        (INF1_6, Resource.NEURONCORE, [3, 5], "not contiguous"),
    ],
)
def test_check_block_names_ids_and_rule(topo: Topology, resource: Resource, ids: list[int], fragment: str) -> None:
    refusal = check_block(topo, resource, ids)
    assert refusal is not None
    assert fragment in refusal.message
    assert topo.instance_type in refusal.message


@given(topologies(), RESOURCES, st.integers(-2, 40))
def test_candidate_starts_cover_exactly_the_rule(topo: Topology, resource: Resource, size: int) -> None:
    if size_refusal(topo, resource, size) is not None:
        return
    starts = set(candidate_starts(topo, resource, size))
    accepted = {
        s for s in range(topo.unit_count(resource)) if check_block(topo, resource, list(range(s, s + size))) is None
    }
    assert starts == accepted


def test_fit_score_prefers_snug_blocks() -> None:
    assert fit_score(TRN1, Resource.NEURON, frozenset(range(4, 8)), 4) == 10
    assert fit_score(TRN1, Resource.NEURON, frozenset(range(16)), 4) < fit_score(
        TRN1, Resource.NEURON, frozenset(range(8)), 4
    )
    assert fit_score(TRN1, Resource.NEURON, frozenset({0, 1, 2}), 4) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["trn3.48xlarge", "trn3e.24xlarge", "trn3pd98.3xlarge"]),
    st.sampled_from([None, 1, 2]),
    st.data(),
)
def test_trn3_places_any_consecutive_run_and_nothing_else(name: str, lnc: int | None, data: st.DataObject) -> None:
    """Trn3's rule (TRN3_RULE, consecutive IDs): a request fits exactly when a free run is long enough, and the
    block is consecutive IDs inside the free set."""
    topo = resolve_topology(name, {"trn3.48xlarge": 16, "trn3e.24xlarge": 4}.get(name, 1), logical_nc=lnc)
    free = data.draw(free_subsets(topo, Resource.NEURON))
    size = data.draw(st.integers(1, topo.device_count))
    longest, run = 0, 0
    for device in range(topo.device_count):
        run = run + 1 if device in free else 0
        longest = max(longest, run)
    result = allocate(topo, Resource.NEURON, free, size)
    assert isinstance(result, tuple) == (size <= longest)
    if isinstance(result, tuple):
        assert list(result) == list(range(result[0], result[0] + size)) and set(result) <= free
    assert largest_free_block(topo, Resource.NEURON, free) == longest
