"""`kubectl neuron` against the real API server of the cluster tier (tests/cluster/): real kube-apiserver,
kube-scheduler with our extender, simulated Neuron nodes with the real kubelet device manager and our plugin.

This module starts its own control plane (the cluster tier's fixtures are scoped to tests/cluster/), so it
costs one more start-up; it skips, like that tier, where the tier's binaries cannot run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubectl_neuron.main import main
from neuronalloc import Resource, encode_ranges
from tests.cluster.harness import Cluster, missing_prerequisites
from tests.cluster.processes import wait_for
from tests.cluster.workload import Pool

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    missing = missing_prerequisites()
    if missing or shutil.which("neuron-device-plugin") is None:
        pytest.skip(f"real-cluster tier not runnable: {'; '.join(missing) or 'neuron-device-plugin missing'}")
    workdir = Path(tempfile.mkdtemp(prefix="nk-"))
    try:
        with Cluster(workdir) as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_kubectl_neuron_shows_the_real_cluster(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    pool = Pool(cluster, "kn")  # short: unix socket paths under the workdir are capped at 107 bytes
    try:
        inf1 = pool.add_node("inf1", "inf1.6xlarge")
        trn1 = pool.add_node("trn1", "trn1.32xlarge")
        cluster.inject_hw_error(trn1.name, 3)  # device 3 is withdrawn; the plugin's condition says why
        pool.wait_node_state(trn1.name, "device 3 unhealthy", lambda s: s.unhealthy_devices == {3})
        wait_for("the NeuronDevicesHealthy condition on trn1", lambda: any(
            c.type == "NeuronDevicesHealthy" and c.status == "False"
            for c in cluster.core.read_node(trn1.name).status.conditions or []), timeout=30)  # fmt: skip
        running = pool.create("pair", Resource.NEURON, 2)
        pool.wait_phase([running])
        held = frozenset(pool.allocation(running).of(Resource.NEURON))
        node = pool.allocation(running).node
        pool.wait_node_state(
            node, f"pair holds {sorted(held)}", lambda s: s.pods.get(f"{pool.namespace}/{running}") is not None
        )
        waiting = pool.create("too-big", Resource.NEURON, 32)  # more than any node has
        pool.wait_scheduling_message(waiting, "")

        assert main(["--kubeconfig", str(cluster.kubeconfig), "-o", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        nodes = {n["name"]: n for n in doc["nodes"]}
        assert set(pool.nodes) <= set(nodes)
        shown = nodes[node]
        assert shown["status"] == "OK", shown
        assert shown["pods"] == [f"{pool.namespace}/{running}"]
        assert [c["device"] for c in shown["deviceMap"] if c["state"] == "whole"] == sorted(held)
        assert nodes[inf1.name]["instanceType"] == "inf1.6xlarge"
        assert nodes[inf1.name]["healthCondition"]["reason"] == "AllDevicesHealthy"
        broken = nodes[trn1.name]
        assert broken["status"] == "Unhealthy" and broken["unhealthyDevices"] == "3"
        assert broken["healthCondition"]["status"] == "False", broken
        assert broken["healthCondition"]["message"].endswith("hw_error:SRAM_UNCORRECTABLE_ERROR on 3")
        if node == inf1.name:
            assert shown["freeDevices"] == encode_ranges(frozenset(range(4)) - held)
        pending = {f"{p['namespace']}/{p['name']}": p for p in doc["pending"]}
        big = pending[f"{pool.namespace}/{waiting}"]
        assert big["requests"] == {"neuron": 32}
        assert big["reason"] == "FailedScheduling"
        assert big["message"] in {" ".join(m.split()) for m in pool.scheduling_messages(waiting)}

        assert main(["--kubeconfig", str(cluster.kubeconfig), "--node", node, "-o", "wide"]) == 0
        table = capsys.readouterr().out
        assert f"={pool.namespace}/{running}" in table
    finally:
        pool.close()
