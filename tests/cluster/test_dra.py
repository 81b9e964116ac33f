"""DRA mode on the real components: the stock kube-scheduler allocates claims from our ResourceSlices, the real
kubelet DRA manager calls our driver, the real resourceclaim-controller makes and frees the claims.

Each claim's devices must form one legal block of its node, no two claims share hardware, and the CDI spec names
exactly those devices with Allocate's env, on inf1, inf2, trn1 and trn2 nodes. A size no block has stays Pending
with the scheduler's reason. Driver restart, kubelet restart and device loss heal by themselves, and what was
prepared stays prepared.
"""

from __future__ import annotations

import json

import pytest

from kubectl_neuron.main import main as kubectl_neuron
from neuronalloc import Resource
from neuronalloc.draslices import node_blocks
from tests.cluster.dra import (
    DraGrant,
    assert_dra_grant_ok,
    assert_no_dra_overlap,
    claim_of,
    create_dra_pod,
    dra_grant,
    install_device_classes,
    slices_of,
    tainted_blocks,
)
from tests.cluster.harness import DRA_SCHEDULER, Cluster, PluginKind
from tests.cluster.processes import wait_for
from tests.cluster.workload import Pool, neuron_pod

DRA = PluginKind.DRA


@pytest.fixture(autouse=True)
def device_classes(cluster: Cluster) -> None:
    install_device_classes(cluster)


# (instance type, [(resource, size), ...]): each node's workload fills it with several sizes of both resources.
WORKLOADS = {
    "inf1.6xlarge": [(Resource.NEURON, 2), (Resource.NEURON, 1), (Resource.NEURONCORE, 2), (Resource.NEURONCORE, 1)],
    "inf2.48xlarge": [(Resource.NEURON, 4), (Resource.NEURON, 3), (Resource.NEURONCORE, 4), (Resource.NEURONCORE, 1)],
    "trn1.32xlarge": [(Resource.NEURON, 8), (Resource.NEURON, 4), (Resource.NEURON, 1), (Resource.NEURONCORE, 2)],
    "trn2.48xlarge": [(Resource.NEURON, 4), (Resource.NEURON, 1), (Resource.NEURONCORE, 8), (Resource.NEURONCORE, 2)],
}


def test_every_claim_gets_one_legal_block_with_its_cdi_spec_on_every_family(
    pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    for instance_type in WORKLOADS:
        pool.add_node(instance_type.split(".")[0], instance_type, plugin=DRA)
    pods: dict[str, tuple[Resource, int]] = {}
    for instance_type, workload in WORKLOADS.items():
        for i, (resource, size) in enumerate(workload):
            name = f"{instance_type.split('.')[0]}-{resource.short}-{size}-{i}"
            create_dra_pod(pool, name, resource, size, instance_type=instance_type)
            pods[name] = (resource, size)
    pool.wait_phase(pods, timeout=120)
    grants = [dra_grant(pool, name) for name in pods]
    for got in grants:
        resource, size = pods[got.pod]
        assert_dra_grant_ok(pool, got, resource, size)
    assert_no_dra_overlap(grants)

    # kubectl neuron shows the same from the slices and claims: who holds which device, what is free.
    assert kubectl_neuron(["--kubeconfig", str(pool.cluster.kubeconfig), "-o", "json"]) == 0
    shown = {n["name"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    for got in grants:
        view = shown[got.node]
        assert view["mode"] == "dra" and "error" not in view, view
        state = "whole" if got.grant.resource is Resource.NEURON else "cores"
        for device in got.grant.devices:
            cell = view["deviceMap"][device]
            assert cell["state"] == state and f"{pool.namespace}/{got.pod}" in cell["pods"], (got.pod, cell)


def test_a_size_no_block_has_stays_pending_with_the_schedulers_reason(pool: Pool) -> None:
    pool.add_node("trn1", "trn1.32xlarge", plugin=DRA)
    three = create_dra_pod(pool, "trn1-three", Resource.NEURON, 3)
    message = pool.wait_scheduling_message(three, "cannot allocate all claims")
    assert pool.pod(three).status.phase == "Pending"
    # The resource by count is not mapped to DRA (a DeviceClass would give N separate devices, not a block):
    # such a pod does not land on a DRA node.
    counted = neuron_pod("by-count", Resource.NEURON, 2, pool=pool.name, scheduler=DRA_SCHEDULER)
    pool.core.create_namespaced_pod(pool.namespace, counted)
    insufficient = pool.wait_scheduling_message("by-count", "Insufficient aws.amazon.com/neuron")
    print(f"size 3 on trn1: {message}\naws.amazon.com/neuron: 2 on a DRA node: {insufficient}")
    # A size the node has is placed meanwhile: the Pending pod blocks nothing.
    four = create_dra_pod(pool, "trn1-four", Resource.NEURON, 4)
    pool.wait_phase([four])
    assert_dra_grant_ok(pool, dra_grant(pool, four), Resource.NEURON, 4)


def _spec_files(pool: Pool, node: str) -> dict[str, str]:
    root = pool.nodes[node].cdi_root
    assert root is not None
    return {path.name: path.read_text() for path in sorted(root.iterdir())}


def test_driver_restart_kubelet_restart_and_device_loss_heal_and_lose_nothing(pool: Pool, cluster: Cluster) -> None:
    node = pool.add_node("trn1", "trn1.32xlarge", plugin=DRA)
    first = [create_dra_pod(pool, "a", Resource.NEURON, 4), create_dra_pod(pool, "b", Resource.NEURONCORE, 2)]
    pool.wait_phase(first)
    before: dict[str, DraGrant] = {name: dra_grant(pool, name) for name in first}
    specs = _spec_files(pool, node.name)

    # Driver restart (SIGKILL: no clean shutdown): the records bring every prepared claim back, CDI specs intact.
    assert node.plugin is not None
    node.plugin.kill()
    cluster.start_plugin(node)
    cluster.wait_dra_ready(node)
    assert _spec_files(pool, node.name) == specs
    second = create_dra_pod(pool, "c", Resource.NEURON, 4)
    pool.wait_phase([second])

    # Kubelet restart: kubelet wipes the node's slices and registers the driver again; the driver republishes.
    cluster.restart_kubelet(node.name)
    wait_for("slices republished", lambda: len(slices_of(cluster, node.name)) >= 2, timeout=60)
    for name in [*first, second]:
        assert pool.pod(name).status.phase == "Running", name
    assert {k: v for k, v in _spec_files(pool, node.name).items() if k in specs} == specs
    third = create_dra_pod(pool, "d", Resource.NEURON, 4)
    pool.wait_phase([third])

    # Device loss: every block on the lost device is withdrawn (tainted), the pods on it keep their claims, and
    # a new claim is placed elsewhere; the device's return heals it.
    grants = {name: dra_grant(pool, name) for name in [*first, second, third]}
    for name, got in before.items():
        assert grants[name].grant == got.grant, name
    assert_no_dra_overlap(grants.values())
    lost = grants["a"].grant.devices[0]
    (node.device_root / f"neuron{lost}").unlink()
    on_lost = {b.name for b in node_blocks(node.topology) if lost in b.devices(node.topology)}
    # The driver writes its slices one by one (device blocks and core blocks are in different slices), so a read
    # between two writes sees only some of the taints: wait for the whole set, and never more than it.
    wait_for(
        f"every block on device {lost} tainted, and only those",
        lambda: tainted_blocks(cluster, node.name) == on_lost,
        timeout=30,
    )
    fourth = create_dra_pod(pool, "e", Resource.NEURON, 1)
    pool.wait_phase([fourth])
    got = dra_grant(pool, fourth)
    assert lost not in got.grant.devices
    assert pool.pod("a").status.phase == "Running"
    (node.device_root / f"neuron{lost}").touch()
    wait_for(f"device {lost} healthy again", lambda: not tainted_blocks(cluster, node.name), timeout=30)
    uid = claim_of(pool, "a")["metadata"]["uid"]
    assert json.loads(_spec_files(pool, node.name)[f"neuron-contig.io-claim_{uid}.json"])

    # Deleting a pod unprepares its claim: the CDI spec goes, and the block is free for the next claim.
    pool.delete("c")
    wait_for("c's CDI spec removed", lambda: len(_spec_files(pool, node.name)) == 4, timeout=60)
    fifth = create_dra_pod(pool, "f", Resource.NEURON, 4)
    pool.wait_phase([fifth])
    assert_no_dra_overlap(dra_grant(pool, n) for n in ["a", "b", "d", "e", "f"])
