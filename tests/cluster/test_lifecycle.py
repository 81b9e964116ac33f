"""Deletes, and restarts of each moving part: state is rebuilt from kubelet, never carried over stale."""

from __future__ import annotations

from neuronalloc import Resource
from tests.cluster.harness import Cluster
from tests.cluster.workload import Pool


def test_delete_frees_the_block_and_republishes(pool: Pool) -> None:
    node = pool.add_node("inf1", "inf1.6xlarge")
    first = pool.create("whole-node", Resource.NEURON, 4)
    pool.wait_phase([first])
    state = pool.wait_node_state(node.name, "no device is free", lambda s: not s.free_devices)
    assert f"{pool.namespace}/{first}" in state.pods

    pool.delete(first)
    state = pool.wait_node_state(node.name, "all 4 devices are free", lambda s: s.free_devices == frozenset(range(4)))
    assert not state.pods
    second = pool.create("whole-node-again", Resource.NEURON, 4)
    pool.wait_phase([second])
    pool.assert_block_ok(pool.allocation(second), Resource.NEURON, 4)


def test_kubelet_restart_keeps_running_pods_and_admits_new_ones(pool: Pool, cluster: Cluster) -> None:
    """The device manager restarts and wipes its sockets: the plugin re-registers, running pods keep their
    devices (from kubelet's checkpoint, no new Allocate), and new pods are admitted."""
    node = pool.add_node("inf2", "inf2.48xlarge")
    before = [pool.create("a", Resource.NEURON, 4), pool.create("b", Resource.NEURONCORE, 3)]
    pool.wait_phase(before)
    allocations = {name: pool.allocation(name) for name in before}

    cluster.restart_kubelet(node.name)  # returns once the plugin has registered with the new device manager
    # The restarted device manager (from its checkpoint) must report, through the real PodResources server,
    # exactly what each pod was given before the restart; and the plugin must publish the same.
    held = cluster.pod_resources(node.name)
    state = pool.node_state(node.name)
    for name in before:
        key, alloc = f"{pool.namespace}/{name}", allocations[name]
        assert pool.pod(name).status.phase == "Running"
        assert held[key] == {res: frozenset(ids) for res, ids in alloc.ids.items()}, (key, held.get(key), alloc)
        assert (state.pods[key].devices, state.pods[key].cores) == (
            frozenset(alloc.of(Resource.NEURON)),
            frozenset(alloc.of(Resource.NEURONCORE)),
        ), key

    after = pool.create("c", Resource.NEURON, 4)
    pool.wait_phase([after])
    pool.assert_block_ok(pool.allocation(after), Resource.NEURON, 4)
    pool.assert_no_overcommit()


def test_plugin_restart_rebuilds_state_without_stale_entries(pool: Pool, cluster: Cluster) -> None:
    """AWS issue 1300: usage maps outlive the pods they describe. Here a pod is deleted while the plugin is
    down; the restarted plugin must publish state from PodResources alone, and the freed block is usable."""
    node = pool.add_node("inf1", "inf1.6xlarge")
    keep = pool.create("keep", Resource.NEURON, 2)
    gone = pool.create("gone", Resource.NEURON, 2)
    pool.wait_phase([keep, gone])
    pool.wait_node_state(node.name, "both pods accounted for", lambda s: len(s.pods) == 2)

    assert node.plugin is not None
    node.plugin.stop()
    pool.delete(gone)
    # The annotations still name the deleted pod: exactly the stale state a restart must not trust.
    assert f"{pool.namespace}/{gone}" in pool.node_state(node.name).pods
    cluster.start_plugin(node)
    cluster.wait_node_ready(node)
    kept = pool.allocation(keep).of(Resource.NEURON)
    state = pool.wait_node_state(
        node.name, f"only {keep} accounted for", lambda s: set(s.pods) == {f"{pool.namespace}/{keep}"}
    )
    assert state.free_devices == frozenset(range(4)) - set(kept)

    again = pool.create("again", Resource.NEURON, 2)
    pool.wait_phase([again])
    pool.assert_block_ok(pool.allocation(again), Resource.NEURON, 2)
    pool.assert_no_overcommit()


def test_extender_restart_mid_workload(pool: Pool, cluster: Cluster) -> None:
    """Pods created while the extender is down wait (ignorable: false) and are placed correctly after."""
    # Three nodes for 31.5 devices of demand: the scheduler's order after the restart is not fixed, and two
    # nodes would leave the test at the mercy of which pod lands first.
    for name in ("inf1-a", "inf1-b", "inf1-c"):
        pool.add_node(name, "inf1.24xlarge")
    first = [pool.create(f"first-{i}", Resource.NEURON, n) for i, n in enumerate((8, 4, 2))]
    pool.wait_phase(first)
    assert cluster.extender is not None
    cluster.extender.stop()
    during = [pool.create(f"during-{i}", Resource.NEURON, n) for i, n in enumerate((4, 3, 8))]
    cluster.start_extender()
    after = [pool.create(f"after-{i}", Resource.NEURONCORE, n) for i, n in enumerate((4, 2))]
    pool.wait_phase(during + after, timeout=90)
    for name in first + during:
        alloc = pool.allocation(name)
        pool.assert_block_ok(alloc, Resource.NEURON, len(alloc.of(Resource.NEURON)))
    for name in after:
        alloc = pool.allocation(name)
        pool.assert_block_ok(alloc, Resource.NEURONCORE, len(alloc.of(Resource.NEURONCORE)))
    pool.assert_no_overcommit()
