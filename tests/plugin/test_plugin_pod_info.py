"""The per-core info series (`neuron_contig_plugin_pod_neuroncore_info`): which container holds each NeuronCore.

It comes from the PodResources read the publisher already makes, carries neuron-monitor's `neuroncore` label for
joins, holds at most one series per core of the node, and drops a core's series when the pod releases it.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from neuronalloc import Resource, resolve_topology
from plugin._proto.podresources.v1 import api_pb2 as pr_pb2
from plugin.metrics import POD_CORE_LABELS, PluginMetrics
from plugin.nodeview import NodeView
from plugin.podresources import CoreHolder, PodHoldings, holdings_from_pod_resources
from plugin.publisher import Publisher
from plugin.serving import Serving
from tests.plugin.kubelet_stub import pod_resources

NEURON, NEURONCORE = Resource.NEURON.value, Resource.NEURONCORE.value
TRN1 = resolve_topology("trn1.32xlarge", 16)  # 2 cores per device
INF1 = resolve_topology("inf1.6xlarge", 4)  # 4 cores per device
INFO = "neuron_contig_plugin_pod_neuroncore_info"


def info_series(metrics: PluginMetrics) -> set[tuple[str, ...]]:
    """The info series as a scrape sees them: one tuple of label values (POD_CORE_LABELS order) per series."""
    text = metrics.exposition().decode()
    found = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == INFO:
                assert sample.value == 1
                assert set(sample.labels) == set(POD_CORE_LABELS), sample.labels
                found.add(tuple(sample.labels[name] for name in POD_CORE_LABELS))
    return found


def test_whole_devices_list_every_core_and_cores_name_their_device() -> None:
    train = pr_pb2.PodResources(
        name="train",
        namespace="ml",
        containers=[
            pr_pb2.ContainerResources(
                name="worker", devices=[pr_pb2.ContainerDevices(resource_name=NEURON, device_ids=["1"])]
            ),
            pr_pb2.ContainerResources(
                name="sidecar", devices=[pr_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=["0"])]
            ),
        ],
    )
    infer = pod_resources("web", "infer", {NEURONCORE: ["9", "10"]})
    clean = holdings_from_pod_resources([train, infer], INF1)
    assert clean.core_holders == {
        **{c: CoreHolder("ml", "train", "worker", Resource.NEURON, 1) for c in (4, 5, 6, 7)},
        9: CoreHolder("web", "infer", "main", Resource.NEURONCORE, 2),
        10: CoreHolder("web", "infer", "main", Resource.NEURONCORE, 2),
    }
    # Cores 5 and 6 reported twice (device 1 whole, and as cores, as an over-committed kubelet would): the first
    # holder listed keeps them, so there is still one series per core.
    overlap = holdings_from_pod_resources([train, pod_resources("web", "late", {NEURONCORE: ["5", "6"]})], INF1)
    assert {core: h.pod for core, h in overlap.core_holders.items()} == dict.fromkeys((4, 5, 6, 7), "train")


def test_badly_named_pods_and_containers_get_no_series_but_their_hardware_still_counts() -> None:
    odd_container = pr_pb2.PodResources(
        name="ok",
        namespace="ml",
        containers=[
            pr_pb2.ContainerResources(
                name="Bad_Name", devices=[pr_pb2.ContainerDevices(resource_name=NEURON, device_ids=["0"])]
            )
        ],
    )
    holdings = holdings_from_pod_resources(
        [odd_container, pod_resources("ml", "x" * 400, {NEURON: ["1"]}), pod_resources("ml", "fine", {NEURON: ["2"]})],
        TRN1,
    )
    assert holdings.used_devices == {0, 1, 2}
    assert set(holdings.core_holders) == {4, 5}  # device 2's cores only


POD = st.text(alphabet="ab-", min_size=1, max_size=6)
UNIT_ID = st.one_of(st.integers(0, 40).map(str), st.text(max_size=4))
CONTAINER = st.tuples(POD, st.sampled_from([NEURON, NEURONCORE]), st.lists(UNIT_ID, max_size=8))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(POD, st.lists(CONTAINER, max_size=3)), max_size=40))
def test_at_most_one_series_per_core_of_the_node_whatever_kubelet_answers(
    answer: list[tuple[str, list[tuple[str, str, list[str]]]]],
) -> None:
    pods = [
        pr_pb2.PodResources(
            name=name,
            namespace="ns",
            containers=[
                pr_pb2.ContainerResources(
                    name=container, devices=[pr_pb2.ContainerDevices(resource_name=res, device_ids=ids)]
                )
                for container, res, ids in containers
            ],
        )
        for name, containers in answer
    ]
    holdings = holdings_from_pod_resources(pods, TRN1)
    assert set(holdings.core_holders) <= set(range(TRN1.core_count))
    assert TRN1.devices_of_cores(holdings.core_holders) <= holdings.used_devices | TRN1.devices_of_cores(
        holdings.used_cores
    )
    metrics = PluginMetrics()
    metrics.set_pod_cores(holdings.core_holders)
    series = info_series(metrics)
    assert len(series) == len(holdings.core_holders) <= TRN1.core_count
    assert {int(s[5]) for s in series} == set(holdings.core_holders)
    for *_, resource, device, core in series:
        assert int(device) == TRN1.device_of_core(int(core)) and resource in ("neuron", "neuroncore")


def test_series_follow_the_podresources_reads_of_the_publisher() -> None:
    """Through the publisher's own read: a pod's cores appear, and vanish when it releases them."""
    pods = [pod_resources("ml", "train", {NEURON: ["0"]}), pod_resources("web", "infer", {NEURONCORE: ["3"]})]
    metrics = PluginMetrics()

    async def read() -> PodHoldings:
        return holdings_from_pod_resources(pods, TRN1)

    async def scenario() -> None:
        view = NodeView(TRN1, read, clock=lambda: 0.0)
        publisher = Publisher(view, "node-a", None, metrics, Serving(view, []))
        assert info_series(metrics) == set()
        await publisher.refresh_once()
        assert info_series(metrics) == {
            ("ml", "train", "main", "neuron", "0", "0"),
            ("ml", "train", "main", "neuron", "0", "1"),
            ("web", "infer", "main", "neuroncore", "1", "3"),
        }
        pods.pop(0)  # train ends
        pods.append(pod_resources("web", "infer-2", {NEURONCORE: ["2"]}))
        await publisher.refresh_once()
        assert info_series(metrics) == {
            ("web", "infer", "main", "neuroncore", "1", "3"),
            ("web", "infer-2", "main", "neuroncore", "1", "2"),
        }
        pods.clear()
        await publisher.refresh_once()
        assert info_series(metrics) == set()

    asyncio.run(scenario())
