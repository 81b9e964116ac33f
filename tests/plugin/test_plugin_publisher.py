"""From PodResources answers to free sets and node annotations (publisher, node view, ledger)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronalloc import PodHolding, Resource, decode_node_state, resolve_topology
from neuronalloc.nodestate import ALL_KEYS, FREE_CORES, FREE_DEVICES, OBSERVED_AT, PODS, SERVING
from plugin._proto.podresources.v1 import api_pb2 as pr_pb2
from plugin.kubeapi import KubeApiError
from plugin.metrics import PluginMetrics
from plugin.nodeview import Ledger, NodeView
from plugin.podresources import PodHoldings, PodResourcesUnavailable, holdings_from_pod_resources
from plugin.publisher import HEARTBEAT_SECONDS, Publisher, annotation_patch, frees_hardware, needs_write
from plugin.serving import Serving
from tests.plugin.kubelet_stub import pod_resources

NEURON, NEURONCORE = Resource.NEURON.value, Resource.NEURONCORE.value
TRN1 = resolve_topology("trn1.32xlarge", 16)


def test_holdings_sum_containers_per_pod_and_skip_foreign_resources() -> None:
    pod = pr_pb2.PodResources(
        name="train",
        namespace="ml",
        containers=[
            pr_pb2.ContainerResources(
                name="a", devices=[pr_pb2.ContainerDevices(resource_name=NEURON, device_ids=["0", "1"])]
            ),
            pr_pb2.ContainerResources(
                name="b",
                devices=[
                    pr_pb2.ContainerDevices(resource_name=NEURON, device_ids=["2", "3"]),
                    pr_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=["GPU-1"]),
                ],
            ),
        ],
    )
    cpu_only = pr_pb2.PodResources(name="web", namespace="default", containers=[pr_pb2.ContainerResources(name="c")])
    odd = pod_resources("ml", "odd", {NEURONCORE: ["31", "32", "07", "-1", "x"]})
    holdings = holdings_from_pod_resources([pod, cpu_only, odd], TRN1)
    assert holdings.pods == {
        "ml/odd": PodHolding(cores=frozenset({31})),
        "ml/train": PodHolding(devices=frozenset({0, 1, 2, 3})),
    }
    assert holdings.ignored_ids == ("32", "07", "-1", "x")


def test_holdings_keep_a_bounded_sample_of_ignored_ids_and_count_the_rest() -> None:
    junk = [str(i) for i in range(16, 20_016)]
    holdings = holdings_from_pod_resources([pod_resources("ml", "junk", {NEURON: ["1", *junk]})], TRN1)
    assert holdings.pods == {"ml/junk": PodHolding(devices=frozenset({1}))}
    assert holdings.ignored_count == 20_000 and 0 < len(holdings.ignored_ids) <= 10
    assert all(len(raw) <= 40 for raw in holdings.ignored_ids)


def test_holdings_count_every_id_but_list_only_well_named_pods_within_the_node_s_bound() -> None:
    pods = [pod_resources("ml", f"p{i}", {NEURONCORE: [str(i % 32)]}) for i in range(500)]
    pods.append(pod_resources("ml", "x" * 5000, {NEURON: ["15"]}))  # no such pod name can exist
    pods.append(pod_resources("", "no-namespace", {NEURON: ["14"]}))
    holdings = holdings_from_pod_resources(pods, TRN1)
    assert holdings.used_cores == frozenset(range(32)) and holdings.used_devices == {14, 15}  # nothing lost
    assert len(holdings.pods) <= TRN1.device_count + TRN1.core_count
    assert all(len(key) <= 64 + 253 and not key.startswith("/") for key in holdings.pods)
    assert holdings.unlisted_pods == 502 - len(holdings.pods)


POD_NAME = st.one_of(st.text(max_size=20), st.text(alphabet="ab-", min_size=250, max_size=400))
UNIT_ID = st.one_of(st.integers(0, 40).map(str), st.text(max_size=8))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(POD_NAME, POD_NAME, st.lists(UNIT_ID, max_size=6)), max_size=80))
def test_any_podresources_answer_publishes_a_state_that_decodes(
    answer: list[tuple[str, str, list[str]]],
) -> None:
    pods = [pod_resources(ns, name, {NEURONCORE: ids, NEURON: ids[:1]}) for ns, name, ids in answer]
    view = view_with(pods)
    state = view.node_state()
    assert state is not None
    decoded = decode_node_state(__import__("neuronalloc").encode_node_state(state))
    assert decoded.free_devices == state.free_devices and decoded.pods == state.pods


def view_with(pods: list[pr_pb2.PodResources], unhealthy: Mapping[int, str] | None = None) -> NodeView:
    async def read() -> PodHoldings:
        return holdings_from_pod_resources(pods, TRN1)

    view = NodeView(TRN1, read, clock=lambda: 0.0)
    if unhealthy:
        view.set_unhealthy(unhealthy)
    asyncio.run(view.refresh())
    return view


def test_free_sets_follow_the_shared_hardware_rule() -> None:
    view = view_with(
        [
            pod_resources("ml", "whole", {NEURON: ["0", "1", "2", "3"]}),
            pod_resources("ml", "cores", {NEURONCORE: ["9"]}),
        ],
        unhealthy={15: "device_node_missing"},
    )
    usage = view.usage()
    assert usage.free_devices == frozenset(range(5, 15))  # 0-3 whole, 4 has core 9 in use, 15 unhealthy
    assert usage.free_cores == frozenset({8} | set(range(10, 30)))
    state = view.node_state()
    assert state is not None
    round_trip = decode_node_state(__import__("neuronalloc").encode_node_state(state))
    assert round_trip.free_devices == usage.free_devices and round_trip.unhealthy_devices == {15}
    assert round_trip.pods["ml/cores"] == PodHolding(cores=frozenset({9}))


def test_usable_ids_only_exclude_the_other_resource() -> None:
    view = view_with(
        [pod_resources("ml", "whole", {NEURON: ["4", "5", "6", "7"]}), pod_resources("ml", "c", {NEURONCORE: ["0"]})]
    )
    # Own-resource holdings are kubelet's business (its `available` list is authoritative and fresher).
    assert view.usable(Resource.NEURON) == frozenset(range(1, 16))
    assert view.usable(Resource.NEURONCORE) == frozenset(range(32)) - frozenset(range(8, 16))


def test_ledger_keeps_unshown_grants_until_podresources_shows_them_or_they_expire() -> None:
    ledger = Ledger(ttl=30)
    ledger.record(Resource.NEURONCORE, frozenset({4, 5}), now=0)
    ledger.record(Resource.NEURON, frozenset({8, 9}), now=0)
    ledger.reconcile(PodHoldings.of({"a/b": PodHolding(cores=frozenset({4, 5}))}), now=1)
    assert ledger.used(Resource.NEURONCORE) == frozenset()
    assert ledger.used(Resource.NEURON) == {8, 9}
    ledger.reconcile(PodHoldings(pods={}), now=30)
    assert ledger.used(Resource.NEURON) == frozenset()


def test_no_state_before_podresources_answers() -> None:
    async def fail() -> PodHoldings:
        raise PodResourcesUnavailable("stub")

    view = NodeView(TRN1, fail, clock=lambda: 0.0)
    with pytest.raises(PodResourcesUnavailable):
        asyncio.run(view.refresh())
    assert view.node_state() is None


def test_patch_removes_stale_keys_and_write_ignores_observed_at_alone() -> None:
    desired = {FREE_DEVICES: "0-3", OBSERVED_AT: "2026-11-22T02:00:00Z"}
    patch = annotation_patch(desired, None)
    assert patch[FREE_DEVICES] == "0-3" and all(patch[k] is None for k in ALL_KEYS if k not in desired)
    assert annotation_patch(desired, {**desired, PODS: "{}"}) == {**desired, PODS: None}
    later = {**desired, OBSERVED_AT: "2026-11-22T02:00:05Z"}
    assert not needs_write(later, desired, since_write=5)
    assert needs_write(later, desired, since_write=HEARTBEAT_SECONDS)
    assert needs_write({**later, FREE_DEVICES: "0-2"}, desired, since_write=5)


class RecordingNodeApi:
    """Test double for the API server (the real round trip is tested in the cluster tier): records patches,
    and fails while `down` is set."""

    def __init__(self) -> None:
        self.patches: list[dict[str, str | None]] = []
        self.down = False

    def node_labels(self, node: str) -> dict[str, str]:
        return {}

    def patch_node_annotations(self, node: str, annotations: Mapping[str, str | None]) -> None:
        if self.down:
            raise KubeApiError("stub: connection refused", unreachable=True)
        assert node == "node-a"
        self.patches.append(dict(annotations))


def test_publisher_writes_on_change_only_and_rides_out_an_unreachable_api_server() -> None:
    pods = [pod_resources("ml", "a", {NEURON: ["0", "1", "2", "3"]})]
    api = RecordingNodeApi()
    metrics = PluginMetrics()
    now = [0.0]

    async def read() -> PodHoldings:
        return holdings_from_pod_resources(pods, TRN1)

    async def scenario() -> None:
        view = NodeView(TRN1, read, clock=lambda: now[0])
        publisher = Publisher(view, "node-a", api, metrics, Serving(view, []), clock=lambda: now[0])
        await publisher.refresh_once()
        await publisher.refresh_once()  # nothing changed: no second write
        assert len(api.patches) == 1 and api.patches[0][FREE_DEVICES] == "4-15"
        api.down = True
        pods.append(pod_resources("ml", "b", {NEURON: ["4", "5", "6", "7"]}))
        now[0] = 1.0
        await publisher.refresh_once()
        assert view.usage().free_devices == frozenset(range(8, 16))  # the view moves on without the API server
        now[0] = 1.5
        await publisher.refresh_once()  # within the backoff: not even tried
        api.down = False
        now[0] = 3.0
        await publisher.refresh_once()
        assert len(api.patches) == 2 and api.patches[1][FREE_DEVICES] == "8-15"
        assert api.patches[1][FREE_CORES] == "16-31"

    asyncio.run(scenario())
    assert metrics.publish_errors.labels("apiserver_unreachable")._value.get() == 1


def test_a_write_that_frees_hardware_is_echoed_once_a_second_later_and_one_that_takes_it_is_not() -> None:
    """kube-scheduler retries a waiting pod on the node event of the freeing write and can reach the extender
    before the extender's watch has that write (seen on the cluster tier: the pod then waited a minute). The
    echo, about a second later and changing only observed-at, is a second event once the extender caught up."""
    pods = [pod_resources("ml", "a", {NEURON: ["0", "1", "2", "3"]})]
    api = RecordingNodeApi()
    now = [0.0]
    wall = [datetime(2026, 11, 28, 13, 0, 0, tzinfo=UTC)]

    async def read() -> PodHoldings:
        return holdings_from_pod_resources(pods, TRN1)

    async def at(seconds: float) -> None:
        now[0] = seconds
        wall[0] = datetime(2026, 11, 28, 13, 0, 0, tzinfo=UTC) + timedelta(seconds=seconds)
        await publisher.refresh_once()

    view = NodeView(TRN1, read, clock=lambda: now[0], wall_clock=lambda: wall[0])
    publisher = Publisher(view, "node-a", api, PluginMetrics(), Serving(view, []), clock=lambda: now[0])

    async def scenario() -> None:
        await at(0.0)
        pods.append(pod_resources("ml", "b", {NEURON: ["4", "5"]}))
        await at(2.0)  # takes hardware: written, no echo
        await at(4.0)
        assert [p[FREE_DEVICES] for p in api.patches] == ["4-15", "6-15"]
        pods.pop()
        await at(6.0)  # frees 4-5
        await at(6.5)  # too soon for the echo
        assert [p[FREE_DEVICES] for p in api.patches] == ["4-15", "6-15", "4-15"]
        await at(8.0)  # the echo: the same state, a new observed-at
        await at(10.0)  # once only
        assert [p[FREE_DEVICES] for p in api.patches] == ["4-15", "6-15", "4-15", "4-15"]
        assert api.patches[3][OBSERVED_AT] != api.patches[2][OBSERVED_AT]

    asyncio.run(scenario())
    assert frees_hardware({SERVING: "true"}, {SERVING: "stopping"})
    assert not frees_hardware({FREE_CORES: "0-3"}, {FREE_CORES: "0-7"})
    assert not frees_hardware({FREE_CORES: "0-3"}, None)


HOLDING = st.fixed_dictionaries(
    {},
    optional={
        NEURON: st.frozensets(st.integers(0, 15), max_size=6),
        NEURONCORE: st.frozensets(st.integers(0, 31), max_size=8),
    },
)


@settings(max_examples=150, deadline=None)
@given(st.lists(HOLDING, max_size=6), st.frozensets(st.integers(0, 15), max_size=4))
def test_published_free_sets_never_include_held_or_unhealthy_hardware(
    holdings: list[dict[str, frozenset[int]]], unhealthy: frozenset[int]
) -> None:
    pods = [
        pod_resources("ns", f"p{i}", {r: [str(u) for u in sorted(ids)] for r, ids in held.items()})
        for i, held in enumerate(holdings)
    ]
    view = view_with(pods, unhealthy=dict.fromkeys(unhealthy, "device_node_missing"))
    state = view.node_state()
    assert state is not None
    held_devices = frozenset().union(*(h.get(NEURON, frozenset()) for h in holdings))
    held_cores = frozenset().union(*(h.get(NEURONCORE, frozenset()) for h in holdings))
    busy_devices = held_devices | TRN1.devices_of_cores(held_cores) | unhealthy
    assert not state.free_devices & busy_devices
    assert state.free_devices == frozenset(range(16)) - busy_devices
    assert not state.free_cores & (held_cores | TRN1.cores_of_devices(held_devices | unhealthy))
    assert {k for k, h in state.pods.items() if h.devices or h.cores} == {
        f"ns/p{i}" for i, h in enumerate(holdings) if any(h.values())
    }


def test_neurondevice_holdings_publish_as_devices_and_count_for_every_name() -> None:
    alias = Resource.NEURONDEVICE.value
    view = view_with(
        [
            pod_resources("ml", "old-spec", {alias: ["0", "1", "2", "3"]}),
            pod_resources("ml", "whole", {NEURON: ["4", "5", "6", "7"]}),
            pod_resources("ml", "cores", {NEURONCORE: ["17"]}),  # device 8
        ]
    )
    usage = view.usage()
    assert usage.free_devices == frozenset(range(9, 16))
    assert usage.free_cores == frozenset({16} | set(range(18, 32)))
    state = view.node_state()
    assert state is not None
    round_trip = decode_node_state(__import__("neuronalloc").encode_node_state(state))
    assert round_trip.pods["ml/old-spec"] == PodHolding(devices=frozenset({0, 1, 2, 3}))
    assert round_trip.free_devices == usage.free_devices
    # Each name's usable IDs exclude what the two others hold.
    assert view.usable(Resource.NEURON) == frozenset(range(16)) - {0, 1, 2, 3, 8}
    assert view.usable(Resource.NEURONDEVICE) == frozenset(range(16)) - {4, 5, 6, 7, 8}
    assert view.usable(Resource.NEURONCORE) == frozenset(range(16, 32))


def test_ledger_clears_an_alias_grant_only_when_shown_under_its_own_name() -> None:
    ledger = Ledger(ttl=30)
    ledger.record(Resource.NEURONDEVICE, frozenset({8, 9}), now=0)
    ledger.reconcile(PodHoldings.of({"a/b": PodHolding(devices=frozenset({8, 9}))}), now=1)  # shown as neuron
    assert ledger.used(Resource.NEURONDEVICE) == {8, 9}
    shown = PodHoldings(pods={}, used_devices=frozenset({8, 9}), by_name={Resource.NEURONDEVICE: frozenset({8, 9})})
    ledger.reconcile(shown, now=2)
    assert ledger.used(Resource.NEURONDEVICE) == frozenset()
