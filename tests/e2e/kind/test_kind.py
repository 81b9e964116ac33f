"""The cluster-tier scenarios on kind, with the real kubelet and container runtime (needs Docker)."""

from __future__ import annotations

import subprocess

from neuronalloc import Resource, check_block, resolve_topology
from neuronalloc.blocks import size_refusal
from tests.e2e.kind.kube import Kubectl, holding, neuron_pod

INF1, TRN1 = "inf1.6xlarge", "trn1.32xlarge"


def _run_and_check(kind: Kubectl, ns: str, name: str, resource: Resource, count: int, instance_type: str) -> None:
    kind.apply(neuron_pod(ns, name, resource, count, instance_type))
    pod = kind.wait_running(ns, name)
    node = pod["spec"]["nodeName"]
    ids = kind.wait(f"{name} in {node}'s published state", lambda: holding(kind, node, ns, name, resource))
    topology = resolve_topology(instance_type, 16 if instance_type == TRN1 else 4)
    assert len(ids) == count and check_block(topology, resource, ids) is None, (name, sorted(ids))
    # What the container saw: the env the plugin set and exactly the device nodes of the block.
    logs = kind.run("logs", "-n", ns, name)
    devices = sorted(ids) if resource is Resource.NEURON else sorted(topology.devices_of_cores(ids))
    assert sorted(line for line in logs.split() if line.startswith("neuron")) == sorted(f"neuron{d}" for d in devices)


def test_every_size_is_contiguous(kind: Kubectl, namespace: str) -> None:
    for size in (1, 2, 3, 4):
        _run_and_check(kind, namespace, f"inf-{size}", Resource.NEURON, size, INF1)
        kind.run("delete", "pod", "-n", namespace, f"inf-{size}", "--wait=true")
    for size in (1, 4, 8, 16):
        _run_and_check(kind, namespace, f"trn-{size}", Resource.NEURON, size, TRN1)
        kind.run("delete", "pod", "-n", namespace, f"trn-{size}", "--wait=true")
    _run_and_check(kind, namespace, "cores-3", Resource.NEURONCORE, 3, INF1)


def test_trn1_size_3_pending_with_the_rule(kind: Kubectl, namespace: str) -> None:
    kind.apply(neuron_pod(namespace, "trn-3", Resource.NEURON, 3, TRN1))
    refusal = size_refusal(resolve_topology(TRN1, 16), Resource.NEURON, 3)
    assert refusal is not None
    kind.wait(
        "unresolvable event", lambda: any(refusal.message in m for m in kind.scheduling_messages(namespace, "trn-3"))
    )
    assert kind.pod(namespace, "trn-3")["status"]["phase"] == "Pending"


def test_delete_frees_and_plugin_restart_rebuilds(kind: Kubectl, namespace: str) -> None:
    node = kind.node_for(INF1)
    _run_and_check(kind, namespace, "whole", Resource.NEURON, 4, INF1)
    kind.run(
        "delete",
        "pod",
        "-n",
        "kube-system",
        "-l",
        "app.kubernetes.io/component=device-plugin",
        "--field-selector",
        f"spec.nodeName={node}",
    )
    kind.run("delete", "pod", "-n", namespace, "whole", "--wait=true")
    kind.wait(
        "all 4 devices free after delete + plugin restart",
        lambda: kind.node_state(node).free_devices == frozenset(range(4)),
    )
    _run_and_check(kind, namespace, "again", Resource.NEURON, 4, INF1)


def test_kubelet_and_extender_restart(kind: Kubectl, namespace: str) -> None:
    node = kind.node_for(TRN1)
    _run_and_check(kind, namespace, "before", Resource.NEURON, 8, TRN1)
    held = holding(kind, node, namespace, "before", Resource.NEURON)
    subprocess.run(["docker", "exec", node, "systemctl", "restart", "kubelet"], check=True, timeout=120)
    kind.run("rollout", "restart", "-n", "kube-system", "deployment/neuron-scheduler-extender")
    kind.run("rollout", "status", "-n", "kube-system", "deployment/neuron-scheduler-extender", "--timeout=180s")
    _run_and_check(kind, namespace, "after", Resource.NEURON, 4, TRN1)
    assert holding(kind, node, namespace, "before", Resource.NEURON) == held
    assert not held & holding(kind, node, namespace, "after", Resource.NEURON)
