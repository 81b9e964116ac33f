"""GetPreferredAllocation / Allocate decisions against the node view, without gRPC (properties + rules)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronalloc import Resource, check_block, resolve_topology
from plugin.allocation import AllocationRejected, Rejection, grant, preferred, validate
from plugin.nodeview import MAX_PODRESOURCES_AGE_SECONDS, NodeView
from plugin.podresources import PodHoldings, PodResourcesUnavailable, holdings_from_pod_resources
from tests.plugin.kubelet_stub import pod_resources

TOPOLOGIES = [resolve_topology(t, n) for t, n in (("inf2.48xlarge", 12), ("trn1.32xlarge", 16), ("inf1.6xlarge", 4))]


def make_view(topology_index: int, core_holders: frozenset[int]) -> NodeView:
    topology = TOPOLOGIES[topology_index]
    cores = [str(c) for c in sorted(core_holders) if c < topology.core_count]
    pods = [pod_resources("ml", "c", {Resource.NEURONCORE.value: cores})] if cores else []

    async def read() -> PodHoldings:
        return holdings_from_pod_resources(pods, topology)

    view = NodeView(topology, read, clock=lambda: 0.0)
    asyncio.run(view.refresh())
    return view


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, len(TOPOLOGIES) - 1),
    st.frozensets(st.integers(0, 63), max_size=20),
    st.frozensets(st.integers(0, 15)),
    st.integers(1, 16),
)
def test_preferred_is_a_valid_block_of_usable_offered_devices(
    index: int, core_holders: frozenset[int], offered: frozenset[int], size: int
) -> None:
    view = make_view(index, core_holders)
    topology = view.topology
    available = [str(d) for d in sorted(offered) if d < topology.device_count]
    try:
        chosen = preferred(view, Resource.NEURON, available, [], size)
    except AllocationRejected as rejected:
        assert rejected.message  # a reason, never an empty error
        return
    assert len(chosen) == size
    assert {str(d) for d in chosen} <= set(available)
    assert set(chosen) <= view.usable(Resource.NEURON)  # never a device whose cores are in use
    assert check_block(topology, Resource.NEURON, chosen) is None
    assert validate(view, Resource.NEURON, [str(d) for d in chosen]) == chosen  # Allocate accepts it


def test_validate_reports_the_first_failed_check() -> None:
    view = make_view(1, frozenset({9}))  # trn1: core 9 is on device 4
    cases = {
        ("99",): (Rejection.INVALID_ARGUMENT, "unknown_id"),
        ("1", "1"): (Rejection.INVALID_ARGUMENT, "duplicate_id"),
        ("1", "2"): (Rejection.INVALID_ARGUMENT, "block_rule"),
        ("4", "5", "6", "7"): (Rejection.FAILED_PRECONDITION, "shared_hardware"),
        (): (Rejection.INVALID_ARGUMENT, "empty_request"),
    }
    for ids, (kind, check) in cases.items():
        with pytest.raises(AllocationRejected) as caught:
            validate(view, Resource.NEURON, list(ids))
        assert (caught.value.kind, caught.value.check) == (kind, check), ids
    view.set_unhealthy({0: "device_node_missing"})
    with pytest.raises(AllocationRejected, match=r"unhealthy devices \[0\] \(0: device_node_missing\)"):
        validate(view, Resource.NEURONCORE, ["0", "1"])


def test_grant_for_cores_and_devices() -> None:
    from pathlib import Path

    topology = TOPOLOGIES[0]  # inf2: 2 cores per device
    cores = grant(topology, Path("/host/dev"), Resource.NEURONCORE, (3, 4))
    assert cores.device_paths == (("/host/dev/neuron1", "/dev/neuron1"), ("/host/dev/neuron2", "/dev/neuron2"))
    assert cores.envs == {"NEURON_RT_VISIBLE_CORES": "3-4", "AWS_NEURON_VISIBLE_DEVICES": "1-2"}
    devices = grant(topology, Path("/dev"), Resource.NEURON, (10, 11))
    assert devices.envs == {"NEURON_RT_VISIBLE_CORES": "20-23", "AWS_NEURON_VISIBLE_DEVICES": "10-11"}


@given(
    st.one_of(st.text(), st.text(alphabet="0123456789", min_size=1), st.integers(4000, 6000).map(lambda n: "7" * n)),
    st.integers(0, 2000),
)
def test_parse_unit_id_never_raises(raw: str, limit: int) -> None:
    from plugin.podresources import parse_unit_id

    unit = parse_unit_id(raw, limit)
    assert unit is None or (0 <= unit < limit and raw == str(unit))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.text(max_size=60), st.integers(4000, 6000).map(lambda n: "8" * n)), max_size=40),
    st.sampled_from(list(Resource)),
)
def test_validate_and_preferred_raise_only_their_own_error_with_a_short_message(
    raw_ids: list[str], resource: Resource
) -> None:
    view = make_view(1, frozenset())
    for decide in (
        lambda: validate(view, resource, raw_ids),
        lambda: preferred(view, resource, raw_ids, raw_ids[:3], 4),
    ):
        try:
            decide()
        except AllocationRejected as rejected:
            assert 0 < len(rejected.message) <= 600 and len(rejected.ids) <= 120


def test_more_ids_than_the_node_has_are_refused_without_listing_them() -> None:
    view = make_view(1, frozenset())  # trn1: 16 devices
    many = [str(i) for i in range(10_000)]
    with pytest.raises(AllocationRejected) as caught:
        validate(view, Resource.NEURON, many)
    assert (caught.value.kind, caught.value.check) == (Rejection.INVALID_ARGUMENT, "too_many_ids")
    assert "10000 aws.amazon.com/neuron IDs" in caught.value.message and len(caught.value.message) <= 600
    with pytest.raises(AllocationRejected, match=r"10000 aws\.amazon\.com/neuron IDs offered"):
        preferred(view, Resource.NEURON, many, [], 4)


def unread_view(topology_index: int = 1) -> NodeView:
    async def unreachable() -> PodHoldings:
        raise PodResourcesUnavailable("stub: connection refused")

    return NodeView(TOPOLOGIES[topology_index], unreachable, clock=lambda: 0.0)


def test_without_a_podresources_read_both_decisions_refuse_and_say_why() -> None:
    view = unread_view()  # trn1; PodResources never answered: what is in use is unknown, not "nothing"
    with pytest.raises(PodResourcesUnavailable):
        asyncio.run(view.refresh())
    for decide in (
        lambda: validate(view, Resource.NEURONCORE, [str(c) for c in range(8)]),
        lambda: preferred(view, Resource.NEURONCORE, [str(c) for c in range(32)], [], 8),
    ):
        with pytest.raises(AllocationRejected) as caught:
            decide()
        assert (caught.value.kind, caught.value.check) == (Rejection.FAILED_PRECONDITION, "podresources_stale")
        assert "PodResources" in caught.value.message and "kubelet retries" in caught.value.message


def test_a_podresources_read_older_than_the_bound_refuses_until_a_fresh_one() -> None:
    now = [100.0]
    answers: list[PodHoldings | Exception] = [PodHoldings(pods={})]

    async def read() -> PodHoldings:
        answer = answers[-1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    view = NodeView(TOPOLOGIES[1], read, clock=lambda: now[0])
    asyncio.run(view.refresh())
    now[0] += MAX_PODRESOURCES_AGE_SECONDS - 0.5
    assert validate(view, Resource.NEURON, ["0"]) == (0,)
    answers.append(PodResourcesUnavailable("stub: kubelet is restarting"))
    with pytest.raises(PodResourcesUnavailable):
        asyncio.run(view.refresh())  # a failed read leaves the last good one in place
    now[0] += 1.0
    with pytest.raises(AllocationRejected, match=r"10\.5 s old .*limit 10 s"):
        validate(view, Resource.NEURON, ["0"])
    answers.append(PodHoldings(pods={}))
    asyncio.run(view.refresh())
    assert validate(view, Resource.NEURON, ["0"]) == (0,)
