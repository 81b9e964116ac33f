from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronalloc import (
    Free,
    NodeState,
    NodeStateError,
    PodHolding,
    Resource,
    Topology,
    decode_node_state,
    encode_node_state,
    free_sets,
    hardware_in_use,
    resolve_topology,
)
from neuronalloc import nodestate as ns
from tests.core.strategies import topologies


@st.composite
def usages(draw: st.DrawFn) -> tuple[Topology, frozenset[int], frozenset[int], frozenset[int]]:
    topo = draw(topologies())
    devices = st.integers(0, max(topo.device_count - 1, 0))
    used_devices = draw(st.frozensets(devices, max_size=4))
    used_cores = draw(st.frozensets(st.integers(0, topo.core_count - 1), max_size=6))
    unhealthy = draw(st.frozensets(devices, max_size=2))
    return topo, used_devices, used_cores, unhealthy


@given(usages())
def test_devices_and_cores_share_hardware(
    usage: tuple[Topology, frozenset[int], frozenset[int], frozenset[int]],
) -> None:
    topo, used_devices, used_cores, unhealthy = usage
    free_devices, free_cores = free_sets(topo, used_devices, used_cores, unhealthy)
    assert not free_devices & (used_devices | unhealthy | topo.devices_of_cores(used_cores))
    assert not free_cores & used_cores
    assert not topo.devices_of_cores(free_cores) & (used_devices | unhealthy)
    # A free device has every core free; a device not free as a whole may still lend its free cores.
    assert topo.cores_of_devices(free_devices) <= free_cores
    untouched = set(range(topo.device_count)) - used_devices - unhealthy - topo.devices_of_cores(used_cores)
    assert free_devices == untouched


@given(usages())
def test_free_take_is_free_sets(usage: tuple[Topology, frozenset[int], frozenset[int], frozenset[int]]) -> None:
    topo, used_devices, used_cores, unhealthy = usage
    taken = (
        Free.everything(topo)
        .take(topo, Resource.NEURON, used_devices | unhealthy)
        .take(topo, Resource.NEURONCORE, used_cores)
    )
    assert (taken.devices, taken.cores) == free_sets(topo, used_devices, used_cores, unhealthy)
    held = hardware_in_use(topo, used_devices, used_cores)
    assert held.devices == used_devices | topo.devices_of_cores(used_cores)
    assert held.cores == used_cores | topo.cores_of_devices(used_devices)


@given(usages(), st.data())
def test_release_gives_back_what_take_took(
    usage: tuple[Topology, frozenset[int], frozenset[int], frozenset[int]], data: st.DataObject
) -> None:
    topo, used_devices, used_cores, unhealthy = usage
    before = Free(*free_sets(topo, used_devices, used_cores, unhealthy))
    resource = data.draw(st.sampled_from(list(Resource)))
    block = (
        data.draw(st.frozensets(st.sampled_from(sorted(before.of(resource))), max_size=4))
        if before.of(resource)
        else frozenset()
    )
    assert before.take(topo, resource, block).release(topo, resource, block) == before


@st.composite
def node_states(draw: st.DrawFn) -> NodeState:
    topo = draw(topologies())
    used_devices = draw(st.frozensets(st.integers(0, topo.device_count - 1), max_size=3))
    used_cores = draw(st.frozensets(st.integers(0, topo.core_count - 1), max_size=3))
    unhealthy = draw(st.frozensets(st.integers(0, topo.device_count - 1), max_size=2))
    free_devices, free_cores = free_sets(topo, used_devices, used_cores, unhealthy)
    pods = {"default/a": PodHolding(devices=used_devices), "ml/b-0": PodHolding(cores=used_cores)}
    seconds = draw(st.integers(0, 4_000_000_000))
    return NodeState(
        topo, free_devices, free_cores, unhealthy - used_devices, pods, datetime.fromtimestamp(seconds, UTC)
    )


@settings(max_examples=200)
@given(node_states())
def test_node_state_round_trip(state: NodeState) -> None:
    annotations = encode_node_state(state)
    assert all(key.startswith("neuron-contig.io/") for key in annotations)
    assert decode_node_state(annotations) == state


def _valid() -> dict[str, str]:
    topo = resolve_topology("inf1.6xlarge", 4)
    state = NodeState(
        topo, frozenset({2, 3}), frozenset(range(8, 16)), frozenset(), {}, datetime(2026, 1, 1, tzinfo=UTC)
    )
    return encode_node_state(state)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        (ns.FREE_DEVICES, "0-3,x", "free-devices"),
        (ns.FREE_DEVICES, "7", "out of range"),
        (ns.DEVICES, "-4", "devices"),
        (ns.DEVICES, "100000", "devices"),
        (ns.CORES_PER_DEVICE, "0", "cores-per-device"),
        (ns.OBSERVED_AT, "yesterday", "observed-at"),
        (ns.PODS, "[1]", "pods"),
        (ns.PODS, '{"nonamespace": {}}', "pods"),
        (ns.PODS, '{"a/b": {"devices": "9"}}', "pods"),
        (ns.FREE_DEVICES, "0", "not all in"),
    ],
)
def test_garbled_annotations_name_the_key(key: str, value: str, fragment: str) -> None:
    annotations = _valid()
    annotations[key] = value
    with pytest.raises(NodeStateError, match=fragment):
        decode_node_state(annotations)


def test_missing_annotations_are_listed() -> None:
    with pytest.raises(NodeStateError, match=r"missing annotations: .*free-devices"):
        decode_node_state({k: v for k, v in _valid().items() if k != ns.FREE_DEVICES})


@given(st.dictionaries(st.sampled_from(ns.ALL_KEYS), st.one_of(st.text(max_size=20), st.integers(), st.none())))
def test_decoder_only_ever_raises_node_state_error(annotations: dict[str, object]) -> None:
    with contextlib.suppress(NodeStateError):
        decode_node_state({**_valid(), **annotations})  # type: ignore[dict-item]
