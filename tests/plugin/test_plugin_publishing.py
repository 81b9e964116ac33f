"""Component tests of node-state publishing: the real daemon against the kubelet stubs and a loopback stand-in
for the API server's node endpoints (tests/plugin/api_stub.py). The round trip on a real API server is the
cluster tier's job; these pin what the process sends and how it behaves when the API server is away."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from neuronalloc import decode_node_state
from tests.plugin.api_stub import FakeApiServer
from tests.plugin.harness import Cluster, fake_cluster
from tests.plugin.kubelet_stub import pod_resources, wait_until
from tests.plugin.test_plugin_component import NEURON, NEURONCORE, allocate, ids

PREFIX = "neuron-contig.io/"


@pytest.fixture
def published() -> Iterator[tuple[Cluster, FakeApiServer]]:
    api = FakeApiServer(labels={"node.kubernetes.io/instance-type": "inf2.48xlarge"})
    try:
        with fake_cluster(12, core_count=2) as cluster:
            cluster.podresources.pods = [pod_resources("ml", "big", {NEURON: ids(0, 1, 2, 3)})]
            yield cluster, api
    finally:
        api.stop()


def start(cluster: Cluster, api: FakeApiServer) -> None:
    # No --instance-type: the process must read it from the node label.
    cluster.start_plugin("", ["--kubeconfig", str(api.kubeconfig(cluster.root))])
    cluster.kubelet.wait_registered(NEURON)
    cluster.kubelet.wait_registered(NEURONCORE)


def test_publishes_the_node_state_with_a_merge_patch(published: tuple[Cluster, FakeApiServer]) -> None:
    cluster, api = published
    start(cluster, api)
    wait_until(lambda: api.annotation(PREFIX + "free-devices") is not None, what="first publish")
    patch = api.patches()[0]
    assert patch["path"] == "/api/v1/nodes/node-a"
    assert patch["headers"]["Content-Type"] == "application/merge-patch+json"
    assert patch["headers"]["Authorization"] == "Bearer t0k"
    state = decode_node_state(dict(api.annotations))
    assert state.topology.instance_type == "inf2.48xlarge"
    assert cluster.plugin is not None
    assert cluster.plugin.wait_event("discovery.done")["source"] == "node_label"
    assert state.free_devices == frozenset(range(4, 12))
    assert json.loads(api.annotations[PREFIX + "pods"]) == {"ml/big": {"devices": "0-3"}}


def test_republishes_after_allocate_and_when_pods_end(published: tuple[Cluster, FakeApiServer]) -> None:
    cluster, api = published
    start(cluster, api)
    wait_until(lambda: api.annotation(PREFIX + "free-devices") == "4-11", what="first publish")
    allocate(cluster.kubelet.endpoints[NEURONCORE], ids(8))  # device 4 now has a core in use
    wait_until(lambda: api.annotation(PREFIX + "free-devices") == "5-11", what="publish after Allocate")
    assert api.annotation(PREFIX + "free-cores") == "9-23"
    cluster.podresources.pods = [pod_resources("ml", "core", {NEURONCORE: ids(8)})]  # "big" ended
    wait_until(lambda: api.annotation(PREFIX + "free-devices") == "0-3,5-11", what="publish after pod end")
    assert json.loads(api.annotations[PREFIX + "pods"]) == {"ml/core": {"cores": "8"}}
    writes = len(api.patches())
    # Freeing hardware is written once more a poll later (the echo: see plugin/publisher.py), then nothing.
    wait_until(lambda: len(api.patches()) == writes + 1, what="the echo of the freeing write")
    echo = api.patches()[-1]["body"]["metadata"]["annotations"]
    assert echo[PREFIX + "free-devices"] == "0-3,5-11"
    calls = cluster.podresources.calls
    wait_until(lambda: cluster.podresources.calls >= calls + 3, what="more PodResources polls")
    assert len(api.patches()) == writes + 1  # polls that change nothing write nothing


def test_keeps_serving_kubelet_while_the_api_server_fails(published: tuple[Cluster, FakeApiServer]) -> None:
    cluster, api = published
    api.status = 503
    start(cluster, api)
    assert cluster.plugin is not None
    cluster.plugin.wait_event("publish.failed", reason="apiserver_unreachable")
    response = allocate(cluster.kubelet.endpoints[NEURON], ids(4, 5))
    assert response.envs["AWS_NEURON_VISIBLE_DEVICES"] == "4-5"
    api.status = 200
    wait_until(lambda: api.annotation(PREFIX + "free-devices") == "6-11", timeout=15, what="publish after recovery")
