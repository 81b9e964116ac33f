"""Serving state, end to end: the real daemon against the kubelet stubs and the loopback API-server stand-in.

Serving = PodResources fresh, both resources registered with the current kubelet (ListAndWatch open), not
stopping. It shows live in GET /readyz and the serving gauge, and in the `neuron-contig.io/serving` annotation.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from neuronalloc.nodestate import FREE_DEVICES, PLUGIN_ADDRESS, SERVING
from tests.cluster.processes import free_port
from tests.plugin.api_stub import FakeApiServer
from tests.plugin.harness import Cluster, fake_cluster
from tests.plugin.kubelet_stub import wait_until
from tests.plugin.test_plugin_component import NEURON, NEURONCORE, allocate, allocate_error, ids


class Node:
    """A fake inf2.48xlarge with the plugin's metrics port on and publishing to the API-server stand-in."""

    def __init__(self, cluster: Cluster, api: FakeApiServer) -> None:
        self.cluster, self.api, self.port = cluster, api, free_port()

    def start(self) -> None:
        self.cluster.start_plugin(
            "inf2.48xlarge",
            [
                "--metrics-port", str(self.port),
                "--advertise-address", "127.0.0.1",
                "--kubeconfig", str(self.api.kubeconfig(self.cluster.root)),
            ],
        )  # fmt: skip

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except (urllib.error.URLError, ConnectionError):
            return 0, {}

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    def wait_readyz(self, status: int, timeout: float = 10.0) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        def ready() -> bool:
            code, body = self.readyz()
            seen[:] = [body]
            return code == status

        wait_until(ready, timeout, f"/readyz {status}")
        return seen[0]


@pytest.fixture
def node() -> Iterator[Node]:
    api = FakeApiServer()
    try:
        with fake_cluster(12, core_count=2) as cluster:
            yield Node(cluster, api)
    finally:
        api.stop()


def test_not_serving_until_podresources_answers_and_both_resources_are_registered(node: Node) -> None:
    # What a SIGKILLed predecessor left on the node: a state that still says it serves.
    node.api.annotations.update({SERVING: "true", FREE_DEVICES: "0-11"})
    node.cluster.podresources.unavailable = True
    node.start()
    body = node.wait_readyz(503)
    assert body["node"] == "node-a" and "PodResources" in body["reason"]
    wait_until(lambda: (node.api.annotation(SERVING) or "true") != "true", what="not serving published")
    assert "PodResources" in (node.api.annotation(SERVING) or "")
    assert node.api.annotation(PLUGIN_ADDRESS) == f"127.0.0.1:{node.port}"
    assert node.api.annotation(FREE_DEVICES) == "0-11"  # left alone: marked not serving, not guessed at
    assert node.metric("neuron_contig_plugin_serving") == 0.0
    assert node.metric("neuron_contig_plugin_podresources_age_seconds") == float("inf")
    patches_before = len(node.api.patches())

    node.cluster.podresources.unavailable = False
    for resource in (NEURON, NEURONCORE):
        node.cluster.kubelet.wait_registered(resource)
    assert node.wait_readyz(200) == {"node": "node-a", "serving": True}
    wait_until(lambda: node.api.annotation(SERVING) == "true", what="serving published")
    first_full = next(p["body"]["metadata"]["annotations"] for p in node.api.patches()[patches_before:])
    assert first_full[SERVING] != "true"  # the first whole state is written before registering
    assert node.metric("neuron_contig_plugin_serving") == 1.0
    assert node.metric("neuron_contig_plugin_podresources_age_seconds") < 5


def test_not_serving_while_kubelet_restarts(node: Node) -> None:
    node.start()
    node.cluster.kubelet.wait_registered(NEURON)
    node.wait_readyz(200)
    during: list[tuple[int, dict[str, Any]]] = []
    node.cluster.kubelet.restart(before_listen=lambda: during.append(node.readyz()))
    assert during[0][0] == 503 and "kubelet" in during[0][1]["reason"], during
    for resource in (NEURON, NEURONCORE):
        node.cluster.kubelet.wait_registered(resource, count=2)
    node.wait_readyz(200)


def test_stale_podresources_stops_serving_and_refuses_allocation(node: Node) -> None:
    node.start()
    endpoint = node.cluster.kubelet.wait_registered(NEURON)
    node.cluster.kubelet.wait_registered(NEURONCORE)
    node.wait_readyz(200)
    node.cluster.podresources.unavailable = True
    body = node.wait_readyz(503, timeout=15)  # once the last good read is older than 10 s
    assert "more than 10 s" in body["reason"]
    wait_until(lambda: "more than 10 s" in (node.api.annotation(SERVING) or ""), what="stale published")
    assert node.metric("neuron_contig_plugin_podresources_age_seconds") > 10
    error = allocate_error(endpoint, ids(0))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "kubelet retries" in (error.details() or "")
    node.cluster.podresources.unavailable = False
    node.wait_readyz(200)
    assert allocate(endpoint, ids(0)).envs["AWS_NEURON_VISIBLE_DEVICES"] == "0"


def test_sigterm_publishes_stopping_before_the_sockets_go(node: Node) -> None:
    seen_at_stopping: list[list[bool]] = []

    def on_patch(body: dict[str, Any]) -> None:
        if body["metadata"]["annotations"].get(SERVING) == "stopping":
            sockets = sorted(node.cluster.socket_dir.glob("neuron-contig-*.sock"))
            seen_at_stopping.append([s.is_socket() for s in sockets])

    node.api.on_patch = on_patch
    node.start()
    node.cluster.kubelet.wait_registered(NEURON)
    node.cluster.kubelet.wait_registered(NEURONCORE)
    wait_until(lambda: node.api.annotation(SERVING) == "true", what="serving published")
    assert node.cluster.plugin is not None
    assert node.cluster.plugin.terminate() == 0
    assert seen_at_stopping and seen_at_stopping[0] == [True, True, True]  # still serving kubelet at that moment
    assert node.api.annotation(SERVING) == "stopping"
    assert not list(node.cluster.socket_dir.glob("neuron-contig-*.sock"))


@pytest.mark.parametrize("failure", ["rejecting", "hanging"])
def test_sigterm_stops_in_bounded_time_when_the_api_server_fails(node: Node, failure: str) -> None:
    node.start()
    node.cluster.kubelet.wait_registered(NEURONCORE)
    wait_until(lambda: node.api.annotation(SERVING) == "true", what="serving published")
    if failure == "rejecting":
        node.api.status = 503
    else:
        node.api.delay = 60.0
    assert node.cluster.plugin is not None
    started = time.monotonic()
    assert node.cluster.plugin.terminate(timeout=30) == 0
    assert time.monotonic() - started < 5.0 + 3.0  # the stop-publish bound, plus shutting down
    node.cluster.plugin.wait_event("publish.stopping_timeout")
