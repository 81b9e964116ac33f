"""The minimal API client against a loopback HTTP stand-in for the API server (plain HTTP; TLS and the real
API server are covered by the cluster tier)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin.kubeapi import KubeApiError, KubeConfigError, from_kubeconfig, in_cluster
from tests.cluster.processes import free_port
from tests.plugin.api_stub import FakeApiServer, write_kubeconfig


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer(labels={"node.kubernetes.io/instance-type": "inf2.xlarge"})
    yield server
    server.stop()


def test_merge_patch_and_label_read(tmp_path: Path, api_server: FakeApiServer) -> None:
    api = from_kubeconfig(write_kubeconfig(tmp_path, f"http://127.0.0.1:{api_server.port}", {"token": "t0k"}))
    assert api.node_labels("node-a")["node.kubernetes.io/instance-type"] == "inf2.xlarge"
    api.patch_node_annotations("node-a", {"neuron-contig.io/free-devices": "0-3", "neuron-contig.io/pods": None})
    get, patch = api_server.requests
    assert (get["method"], get["path"]) == ("GET", "/api/v1/nodes/node-a")
    assert (patch["method"], patch["path"]) == ("PATCH", "/api/v1/nodes/node-a")
    assert patch["headers"]["Content-Type"] == "application/merge-patch+json"
    assert patch["headers"]["Authorization"] == "Bearer t0k"
    assert patch["body"] == {
        "metadata": {"annotations": {"neuron-contig.io/free-devices": "0-3", "neuron-contig.io/pods": None}}
    }


def test_errors_say_whether_to_retry(tmp_path: Path, api_server: FakeApiServer) -> None:
    api = from_kubeconfig(write_kubeconfig(tmp_path, f"http://127.0.0.1:{api_server.port}", {}))
    api_server.status = 403
    with pytest.raises(KubeApiError, match="HTTP 403") as rejected:
        api.patch_node_annotations("node-a", {})
    assert not rejected.value.unreachable
    down = from_kubeconfig(write_kubeconfig(tmp_path, f"http://127.0.0.1:{free_port()}", {}))
    with pytest.raises(KubeApiError) as unreachable:
        down.node_labels("node-a")
    assert unreachable.value.unreachable


def test_exec_plugins_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path, "https://example.invalid", {"exec": {"command": "aws"}})
    with pytest.raises(KubeConfigError, match="exec/auth-provider"):
        from_kubeconfig(path)


def test_in_cluster_without_the_service_env_says_so(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST is unset"):
        in_cluster(tmp_path, env={})


def test_kubeconfig_without_a_current_context_says_so(tmp_path: Path) -> None:
    (tmp_path / "broken").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(KubeConfigError, match="no usable current context"):
        from_kubeconfig(tmp_path / "broken")
