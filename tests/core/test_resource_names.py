"""The three resource names: `neurondevice` is an alias of whole devices, sharing one accounting with `neuron`
and `neuroncore`, so that a mix of the three on one node never over-commits a device."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from neuronalloc import (
    DEVICE_RESOURCES,
    Refusal,
    Resource,
    Topology,
    allocate,
    check_block,
    free_sets,
    largest_free_block,
    resolve_topology,
    usable_through,
)
from tests.core.strategies import topologies


def test_neurondevice_is_a_third_name_for_whole_devices() -> None:
    assert Resource.NEURONDEVICE.value == "aws.amazon.com/neurondevice"
    assert Resource.NEURONDEVICE.short == "neurondevice"
    assert Resource.NEURONDEVICE.units == "devices"
    assert DEVICE_RESOURCES == (Resource.NEURON, Resource.NEURONDEVICE)
    assert [r.whole_devices for r in Resource] == [True, False, True]


@settings(max_examples=200, deadline=None)
@given(topologies(), st.data())
def test_neurondevice_follows_exactly_the_neuron_rule(topo: Topology, data: st.DataObject) -> None:
    """Same IDs, same block rule, same choice, same refusal as aws.amazon.com/neuron, on every family."""
    assert topo.unit_count(Resource.NEURONDEVICE) == topo.unit_count(Resource.NEURON) == topo.device_count
    free = data.draw(st.frozensets(st.integers(0, max(topo.device_count - 1, 0))))
    size = data.draw(st.integers(1, max(topo.device_count, 1)))
    as_neuron = allocate(topo, Resource.NEURON, free, size)
    as_alias = allocate(topo, Resource.NEURONDEVICE, free, size)
    if isinstance(as_neuron, Refusal):
        assert isinstance(as_alias, Refusal) and as_alias.kind == as_neuron.kind
    else:
        assert as_alias == as_neuron
    ids = data.draw(st.lists(st.integers(0, topo.device_count), max_size=4))
    assert (check_block(topo, Resource.NEURONDEVICE, ids) is None) == (check_block(topo, Resource.NEURON, ids) is None)
    assert largest_free_block(topo, Resource.NEURONDEVICE, free) == largest_free_block(topo, Resource.NEURON, free)


def test_usable_through_counts_every_name_once() -> None:
    topo = resolve_topology("trn1.32xlarge", 16)  # 2 cores per device
    held = {
        Resource.NEURON: {0, 1, 2, 3},
        Resource.NEURONDEVICE: {4, 5, 6, 7},
        Resource.NEURONCORE: {16},
    }  # core 16: dev 8
    sick = {15}
    # Each name's own holdings are left to the caller; the other two names' are excluded.
    assert usable_through(topo, Resource.NEURON, held, sick) == frozenset(range(16)) - set(range(4, 9)) - sick
    assert usable_through(topo, Resource.NEURONDEVICE, held, sick) == frozenset(range(16)) - set(range(4)) - {8, 15}
    assert usable_through(topo, Resource.NEURONCORE, held, sick) == frozenset(range(16, 30))


Holding = tuple[Resource, frozenset[int]]


def assert_never_overcommitted(topo: Topology, holdings: list[Holding]) -> None:
    """Each device is held by at most one whole-device holding (under either name) or by core holdings, never
    both; each core by at most one holding."""
    whole = Counter(d for name, ids in holdings if name.whole_devices for d in ids)
    cores = Counter(c for name, ids in holdings if not name.whole_devices for c in ids)
    assert all(n == 1 for n in whole.values()), whole
    assert all(n == 1 for n in cores.values()), cores
    assert not set(whole) & topo.devices_of_cores(cores), (whole, cores)


Step = tuple[str, Resource, int, int]  # (action, name, size, which holding to release)

steps = st.lists(
    st.tuples(st.sampled_from(["take", "take", "release"]), st.sampled_from(list(Resource)), st.integers(1, 16),
              st.integers(0, 63)),
    max_size=30,
)  # fmt: skip


def held_by_name(holdings: list[Holding]) -> dict[Resource, frozenset[int]]:
    return {r: frozenset().union(*(ids for name, ids in holdings if name is r)) for r in Resource}


@settings(max_examples=300, deadline=None)
@given(topologies(), steps, st.frozensets(st.integers(0, 15), max_size=2))
def test_a_mix_of_the_three_names_never_overcommits_the_extender_view(
    topo: Topology, plan: list[Step], sick: frozenset[int]
) -> None:
    """The extender's view: one pair of free sets for the node (free_sets over everything held, whatever the
    name), each request placed by the allocator from the free set of its unit."""
    holdings: list[Holding] = []
    for action, name, size, which in plan:
        if action == "release":
            if holdings:
                holdings.pop(which % len(holdings))
            continue
        held = held_by_name(holdings)
        used_devices = held[Resource.NEURON] | held[Resource.NEURONDEVICE]
        free_devices, free_cores = free_sets(topo, used_devices, held[Resource.NEURONCORE], sick)
        chosen = allocate(topo, name, free_devices if name.whole_devices else free_cores, size)
        if not isinstance(chosen, Refusal):
            holdings.append((name, frozenset(chosen)))
        assert_never_overcommitted(topo, holdings)
        assert not {d for n, ids in holdings if n.whole_devices for d in ids} & sick


@settings(max_examples=300, deadline=None)
@given(topologies(), steps)
def test_a_mix_of_the_three_names_never_overcommits_the_plugin_view(topo: Topology, plan: list[Step]) -> None:
    """The plugin's view: kubelet tracks each name on its own (its `available` list for a name is every ID minus
    what that name holds), and the plugin narrows it with usable_through, as GetPreferredAllocation does."""
    holdings: list[Holding] = []
    for action, name, size, which in plan:
        if action == "release":
            if holdings:
                holdings.pop(which % len(holdings))
            continue
        held = held_by_name(holdings)
        available = frozenset(range(topo.unit_count(name))) - held[name]  # kubelet's list: blind to other names
        free = available & usable_through(topo, name, held, ())
        chosen = allocate(topo, name, free, size)
        if not isinstance(chosen, Refusal):
            holdings.append((name, frozenset(chosen)))
        assert_never_overcommitted(topo, holdings)
