"""The three resource names and the new catalog rows, through the real scheduler, device manager and plugin.

A Trn3 node serves `aws.amazon.com/neuron`, `aws.amazon.com/neuroncore` and the alias
`aws.amazon.com/neurondevice` from one accounting: kubelet's device manager tracks the three names on their own,
so only the plugin and the extender keep a device held under one name from being handed out under another.
A SageMaker HyperPod node (`ml.trn1.32xlarge`) keeps trn1's aligned rule.
"""

from __future__ import annotations

from neuronalloc import Resource
from tests.cluster.harness import Cluster
from tests.cluster.processes import wait_for
from tests.cluster.workload import Pool

NEURON, NEURONCORE, NEURONDEVICE = Resource.NEURON, Resource.NEURONCORE, Resource.NEURONDEVICE


def assert_kubelet_never_overcommitted(cluster: Cluster, node: str) -> None:
    """Kubelet's own record (PodResources List): no device under two names or two pods, none held whole while
    a core of it is held."""
    topology = cluster.nodes[node].topology
    whole: list[int] = []
    cores: list[int] = []
    for held in cluster.pod_resources(node).values():
        whole += [*held.get(NEURON.value, ()), *held.get(NEURONDEVICE.value, ())]
        cores += held.get(NEURONCORE.value, ())
    assert len(whole) == len(set(whole)), f"{node}: a device held twice: {sorted(whole)}"
    assert len(cores) == len(set(cores)), f"{node}: a core held twice: {sorted(cores)}"
    shared = set(whole) & topology.devices_of_cores(cores)
    assert not shared, f"{node}: devices {sorted(shared)} held whole and by cores"


def settled(pool: Pool, names: list[str]) -> bool:
    """Every pod Running, or told by the scheduler why not."""
    return all(pool.pod(n).status.phase == "Running" or pool.scheduling_messages(n) for n in names)


def test_a_mix_of_the_three_names_on_a_trn3_node_never_overcommits(pool: Pool) -> None:
    node = pool.add_node("trn3", "trn3.48xlarge")  # 16 devices x 4 cores (LNC=2), consecutive-ID rule
    wait_for(
        f"{node.name}: {NEURONDEVICE.value} allocatable",
        lambda: len(pool.cluster.allocatable_devices(node.name).get(NEURONDEVICE.value, ())) == 16,
        timeout=60,
    )
    # Wave 1: 14 of the 16 devices, under all three names; each must run on a legal block.
    wave1 = {
        "old-spec-4": (NEURONDEVICE, 4),
        "new-spec-4": (NEURON, 4),
        "old-spec-3": (NEURONDEVICE, 3),  # 3 devices: fine on Trn3 (consecutive IDs), never on a torus
        "cores-8": (NEURONCORE, 8),
        "new-spec-1": (NEURON, 1),
        "cores-3": (NEURONCORE, 3),
    }
    for name, (resource, count) in wave1.items():
        pool.create(name, resource, count)
    pool.wait_phase(list(wave1), timeout=90)
    for name, (resource, count) in wave1.items():
        alloc = pool.allocation(name)
        assert alloc.node == node.name
        pool.assert_block_ok(alloc, resource, count)
    pool.assert_no_overcommit()
    assert_kubelet_never_overcommitted(pool.cluster, node.name)
    state = pool.node_state(node.name)
    assert state.pods[f"{pool.namespace}/old-spec-4"].devices == frozenset(
        pool.allocation("old-spec-4").of(NEURONDEVICE)
    )

    # Wave 2: more than is left (at most 2 whole devices and a core or two), asked under every name at once.
    wave2 = {"late-nd-2": (NEURONDEVICE, 2), "late-n-2": (NEURON, 2), "late-c-4": (NEURONCORE, 4)}
    for name, (resource, count) in wave2.items():
        pool.create(name, resource, count)
    wait_for("wave 2 placed or refused", lambda: settled(pool, list(wave2)), timeout=90)
    pool.assert_no_overcommit()
    assert_kubelet_never_overcommitted(pool.cluster, node.name)
    running = [n for n in wave2 if pool.pod(n).status.phase == "Running"]
    assert len(running) < len(wave2), "wave 2 asks for more than the node has left"

    # Freeing 8 devices lets the rest of wave 2 run, still without sharing anything.
    pool.delete("old-spec-4", "new-spec-4")
    pool.wait_phase(list(wave2), timeout=90)
    for name, (resource, count) in wave2.items():
        pool.assert_block_ok(pool.allocation(name), resource, count)
    pool.assert_no_overcommit()
    assert_kubelet_never_overcommitted(pool.cluster, node.name)


def test_a_sagemaker_trn1_node_keeps_the_aligned_rule(pool: Pool) -> None:
    node = pool.add_node("hyperpod", "ml.trn1.32xlarge")
    assert pool.node_state(node.name).topology.instance_type == "ml.trn1.32xlarge"
    pool.create("one", NEURON, 1)
    pool.wait_phase(["one"])
    pool.create("four", NEURON, 4)
    pool.wait_phase(["four"])
    alloc = pool.allocation("four")
    pool.assert_block_ok(alloc, NEURON, 4)  # node.topology is trn1's: a 4-block starts at a multiple of 4
    assert alloc.of(NEURON)[0] % 4 == 0
    refused = pool.create("three", NEURON, 3)
    message = pool.wait_scheduling_message(refused, "cannot form a block")
    assert "ml.trn1.32xlarge" in message
