"""Pods of every size land only on a contiguous block, through the real scheduler, device manager and plugin."""

from __future__ import annotations

from neuronalloc import ALIGNED_SIZES, Resource
from tests.cluster.workload import Pool

MIXED_NODES = {
    "inf1-6": "inf1.6xlarge",
    "inf1-24": "inf1.24xlarge",
    "inf2-48": "inf2.48xlarge",
    "trn1-32": "trn1.32xlarge",
}


def _add_mixed_nodes(pool: Pool) -> None:
    for suffix, instance_type in MIXED_NODES.items():
        pool.add_node(suffix, instance_type)


def test_every_device_size_lands_on_a_contiguous_block(pool: Pool) -> None:
    """Each size from 1 to 16 devices, alone on the mixed pool: admitted, contiguous, legal for its node."""
    _add_mixed_nodes(pool)
    for size in range(1, 17):
        name = pool.create(f"dev-{size}", Resource.NEURON, size)
        pool.wait_phase([name])
        alloc = pool.allocation(name)
        pool.assert_block_ok(alloc, Resource.NEURON, size)
        node = pool.nodes[alloc.node]
        if node.instance_type.startswith("trn1"):
            assert size in ALIGNED_SIZES, f"size {size} placed on trn1 {alloc.node}"
        pool.delete(name)


def test_every_core_size_lands_on_a_contiguous_range(pool: Pool) -> None:
    """NeuronCore requests from 1 to 8 cores get one contiguous range of global core indices."""
    _add_mixed_nodes(pool)
    for size in range(1, 9):
        name = pool.create(f"core-{size}", Resource.NEURONCORE, size)
        pool.wait_phase([name])
        pool.assert_block_ok(pool.allocation(name), Resource.NEURONCORE, size)
        pool.delete(name)


def test_mixed_workload_at_once_is_contiguous_and_never_overcommitted(pool: Pool) -> None:
    """Devices and cores requested together, all at once: every pod admitted, contiguous, nothing shared."""
    _add_mixed_nodes(pool)
    # About half of the pool's 48 devices: any sane online placement fits it, so a Pending pod is a bug.
    requests = [(Resource.NEURON, n) for n in (8, 6, 4, 3, 2, 1)]
    requests += [(Resource.NEURONCORE, n) for n in (4, 2, 1)]
    names = {pool.create(f"mix-{i}-{res.short}-{n}", res, n): (res, n) for i, (res, n) in enumerate(requests)}
    pool.wait_phase(names)
    for name, (resource, size) in names.items():
        pool.assert_block_ok(pool.allocation(name), resource, size)
    pool.assert_no_overcommit()


def test_a_pod_takes_the_best_fitting_hole_not_an_empty_node(pool: Pool) -> None:
    """Best fit through the real scheduler and the shipped configuration (/filter-best): a 2-device pod goes to
    the node whose free devices it fills exactly, and the empty 16-device node keeps its large blocks."""
    pool.add_node("small", "inf1.6xlarge")
    pool.add_node("large", "inf1.24xlarge")
    filler = pool.create("filler", Resource.NEURON, 2, instance_type="inf1.6xlarge")
    pool.wait_phase([filler])
    small = pool.allocation(filler).node
    pool.wait_node_state(small, "the filler is published", lambda state: len(state.free_devices) == 2)
    for i in range(3):  # three in turn: each one alone sees the same two candidates
        name = pool.create(f"pair-{i}", Resource.NEURON, 2)
        pool.wait_phase([name])
        alloc = pool.allocation(name)
        pool.assert_block_ok(alloc, Resource.NEURON, 2)
        assert alloc.node == small, f"pair-{i} went to {alloc.node}, not to the exact 2-device hole on {small}"
        pool.wait_node_state(small, "the pair is published", lambda state: not state.free_devices)
        pool.delete(name)
        pool.wait_node_state(small, "the pair is gone", lambda state: len(state.free_devices) == 2)
