"""DRA mode's block encoding: every published device is a legal block, the counters make exactly the blocks that
share hardware exclusive, every slice is within the API server's limits, and names decode back (or refuse)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronalloc import CATALOG, Resource, Topology, check_block, resolve_topology
from neuronalloc.draslices import (
    ATTR_SMALL_FIRST,
    DRIVER,
    MAX_CONSUMPTIONS_PER_DEVICE,
    MAX_COUNTER_SETS,
    MAX_COUNTERS_PER_CONSUMPTION,
    MAX_COUNTERS_PER_SET,
    MAX_DEVICES_PER_SLICE,
    UNHEALTHY_TAINT,
    Block,
    DraLayoutError,
    block_request,
    blocks_in_use,
    check_layout_fits,
    claim_template,
    consumption,
    counter_sets,
    grant_envs,
    grant_of,
    node_blocks,
    parse_block_name,
    slice_name,
    slice_specs,
    small_first_by_name,
)
from neuronalloc.text import MAX_MESSAGE

ALL_TYPES = [resolve_topology(name, row.devices) for name, row in sorted(CATALOG.items())]
ALL_TYPES.append(resolve_topology("trn2.48xlarge", 16, logical_nc=1))


def topologies() -> st.SearchStrategy[Topology]:
    unknown = st.builds(
        lambda n, cpd: resolve_topology("x9.metal", n, cores_per_device=cpd),
        st.integers(1, 12),
        st.sampled_from([1, 2, 4]),
    )
    return st.one_of(st.sampled_from(ALL_TYPES), unknown)


def hardware(topo: Topology, block: Block) -> tuple[frozenset[int], frozenset[int]]:
    """(devices held whole, cores held) by a block, in the shared-hardware sense."""
    if block.resource is Resource.NEURON:
        return frozenset(block.ids), frozenset()
    return frozenset(), frozenset(block.ids)


def conflict(topo: Topology, a: Block, b: Block) -> bool:
    """Whether two blocks may not be held at once: the same device or core, or a device held whole while one of
    its cores is held."""
    (da, ca), (db, cb) = hardware(topo, a), hardware(topo, b)
    if da & db or ca & cb:
        return True
    return bool(da & topo.devices_of_cores(cb)) or bool(db & topo.devices_of_cores(ca))


class Counters:
    """The scheduler's counter accounting for one pool: a device is allocatable while every counter it consumes
    has that much left."""

    def __init__(self, topo: Topology) -> None:
        self.left = {
            (s["name"], name): int(c["value"]) for s in counter_sets(topo) for name, c in s["counters"].items()
        }
        self.topo = topo

    def fits(self, block: Block) -> bool:
        return all(
            self.left[(entry["counterSet"], name)] >= int(c["value"])
            for entry in consumption(self.topo, block)
            for name, c in entry["counters"].items()
        )

    def take(self, block: Block) -> None:
        for entry in consumption(self.topo, block):
            for name, c in entry["counters"].items():
                self.left[(entry["counterSet"], name)] -= int(c["value"])


@pytest.mark.parametrize("topo", ALL_TYPES, ids=lambda t: f"{t.instance_type}-{t.cores_per_device}")
def test_every_published_block_is_legal_and_names_round_trip(topo: Topology) -> None:
    blocks = node_blocks(topo)
    assert len({b.name for b in blocks}) == len(blocks)
    for block in blocks:
        assert check_block(topo, block.resource, block.ids) is None, block
        assert parse_block_name(block.name, topo) == block


@pytest.mark.parametrize("topo", ALL_TYPES, ids=lambda t: f"{t.instance_type}-{t.cores_per_device}")
def test_device_blocks_are_exactly_what_the_rule_allows(topo: Topology) -> None:
    published = {b.ids for b in node_blocks(topo) if b.resource is Resource.NEURON}
    legal = {
        range(start, start + size)
        for size in range(1, topo.device_count + 1)
        for start in range(topo.device_count - size + 1)
        if check_block(topo, Resource.NEURON, range(start, start + size)) is None
    }
    assert published == legal


@pytest.mark.parametrize("topo", ALL_TYPES, ids=lambda t: f"{t.instance_type}-{t.cores_per_device}")
def test_core_sizes_offered(topo: Topology) -> None:
    """Every power-of-two core count up to the node's is offered (inside a device, or as whole devices)."""
    sizes = {b.size for b in node_blocks(topo) if b.resource is Resource.NEURONCORE}
    size = 1
    while size <= topo.core_count and size // topo.cores_per_device <= topo.device_count:
        if size < topo.cores_per_device or size // topo.cores_per_device in _group_sizes(topo):
            assert size in sizes, f"{size} cores missing on {topo.instance_type}"
        size *= 2


def _group_sizes(topo: Topology) -> set[int]:
    return {b.size // topo.cores_per_device for b in node_blocks(topo) if b.resource is Resource.NEURONCORE}


@pytest.mark.parametrize("topo", ALL_TYPES, ids=lambda t: f"{t.instance_type}-{t.cores_per_device}")
def test_counters_exclude_exactly_the_blocks_that_share_hardware(topo: Topology) -> None:
    """For every pair of blocks: once one is allocated, the other fits the counters iff they share no hardware."""
    blocks = node_blocks(topo)
    for a in blocks:
        counters = Counters(topo)
        assert counters.fits(a)
        counters.take(a)
        for b in blocks:
            assert counters.fits(b) == (not conflict(topo, a, b)), (a.name, b.name)


@settings(max_examples=300, deadline=None)
@given(topologies(), st.data())
def test_greedy_allocation_by_counters_never_overlaps_and_admits_every_disjoint_block(
    topo: Topology, data: st.DataObject
) -> None:
    """Allocate blocks in a random order as the scheduler would (counters permitting): what is admitted never
    shares hardware, and a block that is refused conflicts with one admitted."""
    blocks = node_blocks(topo)
    order = data.draw(st.permutations(blocks).map(lambda p: p[: min(len(p), 60)]))
    counters = Counters(topo)
    held: list[Block] = []
    for block in order:
        if counters.fits(block):
            assert not any(conflict(topo, block, h) for h in held), block
            counters.take(block)
            held.append(block)
        else:
            assert any(conflict(topo, block, h) for h in held), f"{block.name} refused with nothing in its way"


@pytest.mark.parametrize("topo", ALL_TYPES, ids=lambda t: f"{t.instance_type}-{t.cores_per_device}")
def test_slices_stay_within_the_api_servers_limits(topo: Topology) -> None:
    specs = slice_specs(topo, "ip-10-0-1-7.ec2.internal", unhealthy={0})
    counter_slice, *device_slices = specs
    sets = counter_slice.spec["sharedCounters"]
    assert "devices" not in counter_slice.spec
    assert len(sets) <= MAX_COUNTER_SETS
    assert all(len(s["counters"]) <= MAX_COUNTERS_PER_SET for s in sets)
    known = {(s["name"], name) for s in sets for name in s["counters"]}
    total = 0
    for spec in (s.spec for s in device_slices):
        assert "sharedCounters" not in spec
        assert 0 < len(spec["devices"]) <= MAX_DEVICES_PER_SLICE
        assert spec["pool"] == {"name": "ip-10-0-1-7.ec2.internal", "generation": 0, "resourceSliceCount": len(specs)}
        assert spec["driver"] == DRIVER and spec["nodeName"] == "ip-10-0-1-7.ec2.internal"
        for device in spec["devices"]:
            total += 1
            assert len(device["attributes"]) <= 32
            assert len(device["consumesCounters"]) <= MAX_CONSUMPTIONS_PER_DEVICE
            for entry in device["consumesCounters"]:
                assert len(entry["counters"]) <= MAX_COUNTERS_PER_CONSUMPTION
                assert {(entry["counterSet"], name) for name in entry["counters"]} <= known
    assert total == len(node_blocks(topo))


def test_slice_names_sort_in_publish_order_and_fit() -> None:
    names = [slice_name("node-a", i) for i in range(12)]
    assert names == sorted(names)
    long = slice_name("n" * 253, 3)
    assert len(long) <= 253 and long.endswith("-neuron-contig-03")


def test_blocks_on_an_unhealthy_device_are_tainted_and_stay_published() -> None:
    topo = resolve_topology("trn1.32xlarge", 16)
    devices = [d for s in slice_specs(topo, "n", unhealthy={5}) for d in s.spec.get("devices", [])]
    assert len(devices) == len(node_blocks(topo))
    for device in devices:
        block = parse_block_name(device["name"], topo)
        tainted = 5 in block.devices(topo)
        assert ("taints" in device) == tainted, device["name"]
        if tainted:
            assert device["taints"] == [{"key": UNHEALTHY_TAINT, "value": "neuron5", "effect": "NoSchedule"}]


def test_small_first_attribute_and_a_stable_share() -> None:
    topo = resolve_topology("inf2.48xlarge", 12)
    device = slice_specs(topo, "n", small_first=True)[1].spec["devices"][0]
    assert device["attributes"][ATTR_SMALL_FIRST] == {"bool": True}
    picked = sum(small_first_by_name(f"ip-10-0-{i}-{j}", 0.25) for i in range(20) for j in range(100))
    assert 400 <= picked <= 600
    assert small_first_by_name("x", 0.0) is False and small_first_by_name("x", 1.0) is True
    assert small_first_by_name("ip-10-0-1-7", 0.25) == small_first_by_name("ip-10-0-1-7", 0.25)


@pytest.mark.parametrize(
    "name",
    ["", "dev-0", "dev-1-0", "dev-00-1", "dev-0-16", "dev-1-2", "core-0-2", "core-1-2", "gpu-0-0", "dev-0-3 ",
     "dev-99999-100000", "dev-0-0\n", "\uff44ev-0-0", "dev-\u0660-\u0660", "x" * 100_000],
)  # fmt: skip
def test_names_that_are_not_blocks_of_the_node_are_refused(name: str) -> None:
    topo = resolve_topology("trn1.32xlarge", 16)
    with pytest.raises(DraLayoutError) as err:
        parse_block_name(name, topo)
    assert len(str(err.value)) <= MAX_MESSAGE


@given(st.one_of(st.text(max_size=300), st.integers(), st.none(), st.binary(max_size=20), st.lists(st.integers())))
def test_parse_block_name_raises_only_its_own_error(value: object) -> None:
    topo = resolve_topology("inf1.24xlarge", 16)
    try:
        block = parse_block_name(value, topo)
    except DraLayoutError as err:
        assert len(str(err)) <= MAX_MESSAGE
    else:
        assert block in node_blocks(topo)


def test_grant_is_the_union_and_refuses_what_the_runtime_would() -> None:
    topo = resolve_topology("inf1.6xlarge", 4)
    one = grant_of(topo, [parse_block_name("dev-1-2", topo)])
    assert (one.devices, one.cores) == ((1, 2), tuple(range(4, 12)))
    assert grant_envs(one) == {"NEURON_RT_VISIBLE_CORES": "4-11", "AWS_NEURON_VISIBLE_DEVICES": "1-2"}
    two = grant_of(topo, [parse_block_name("dev-2-2", topo), parse_block_name("dev-3-3", topo)])
    assert two.devices == (2, 3)
    cores = grant_of(topo, [parse_block_name("core-6-7", topo)])
    assert grant_envs(cores) == {"NEURON_RT_VISIBLE_CORES": "6-7", "AWS_NEURON_VISIBLE_DEVICES": "1"}
    for names, complaint in (
        (["dev-0-0", "dev-2-2"], "not one block"),
        (["dev-0-1", "dev-1-1"], "overlap"),
        (["dev-0-0", "core-4-4"], "mix"),
        ([], "no block"),
    ):
        with pytest.raises(DraLayoutError, match=complaint):
            grant_of(topo, [parse_block_name(n, topo) for n in names])


def test_blocks_in_use_skips_foreign_names() -> None:
    topo = resolve_topology("inf1.6xlarge", 4)
    assert blocks_in_use(topo, ["dev-0-1", "core-8-9", "gpu-7", "dev-9-9"]) == (frozenset({0, 1}), frozenset({8, 9}))


def test_nodes_the_encoding_cannot_describe_are_refused_with_the_way_out() -> None:
    for topo in (
        resolve_topology("x9.metal", 40, cores_per_device=2),
        resolve_topology("x9.metal", 4, cores_per_device=3),
        resolve_topology("x9.metal", 32, cores_per_device=16),
    ):
        with pytest.raises(DraLayoutError, match="device plugin"):
            check_layout_fits(topo)


@pytest.mark.parametrize(("resource", "size"), [(Resource.NEURON, 1), (Resource.NEURON, 8), (Resource.NEURONCORE, 4)])
def test_block_request_alternatives_only_move_the_block(resource: Resource, size: int) -> None:
    request = block_request(resource, size)
    alternatives = request["firstAvailable"]
    assert 1 <= len(alternatives) <= 8
    assert len({a["name"] for a in alternatives}) == len(alternatives)
    for alternative in alternatives:
        assert alternative["deviceClassName"].startswith(resource.short + ".")
        (selector,) = alternative["selectors"]
        assert f".size == {size}" in selector["cel"]["expression"]
    assert alternatives[-1]["selectors"][0]["cel"]["expression"].endswith(f".size == {size}")
    template = claim_template("one-block", resource, size)
    assert template["spec"]["spec"]["devices"]["requests"] == [request]


def test_publish_order_fills_devices_from_the_bottom_and_cores_from_the_top() -> None:
    topo = resolve_topology("inf1.6xlarge", 4)
    blocks = node_blocks(topo)
    singles = [b.first for b in blocks if b.resource is Resource.NEURON and b.size == 1]
    core_singles = [b.first for b in blocks if b.resource is Resource.NEURONCORE and b.size == 1]
    assert singles == [0, 1, 2, 3]
    assert core_singles[:4] == [12, 13, 14, 15]
    names = Counter(b.resource for b in blocks)
    assert names[Resource.NEURON] == 10


def test_every_block_consumes_from_distinct_sets_two_at_most() -> None:
    topo = resolve_topology("trn2.48xlarge", 16, logical_nc=1)
    for block in node_blocks(topo):
        entries = consumption(topo, block)
        assert len({e["counterSet"] for e in entries}) == len(entries) <= 2
