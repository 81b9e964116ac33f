"""The last-blocks pool the replica and bind-deadline tests share: nodes filled with small pods and partly
freed again so that many devices are free but few contiguous blocks are, and the wait for a burst of pods to
settle (Running, or Pending with the scheduler's message)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from neuronalloc import Resource
from neuronalloc.blocks import free_blocks
from tests.cluster.processes import WaitTimeout, wait_for
from tests.cluster.workload import Pool

# The fill: each node full of small pods (trn1 has no blocks of 2), of which those on FREED are deleted again.
FILL_SIZE = {"inf1.24xlarge": 2, "trn1.32xlarge": 1}
# Ten devices free per node, but one block of 4 (0-3): 6-7, 10-11 and 14-15 are pairs apart.
FREED = frozenset({0, 1, 2, 3, 6, 7, 10, 11, 14, 15})
SIZE = 4
SETTLE_TIMEOUT = 45.0
STABLE_FOR = 3.0  # seconds the set of Running pods must not change before the burst counts as settled


def free_devices(pool: Pool) -> dict[str, set[int]]:
    """Per node of the pool, the devices no Running pod holds."""
    free = {name: set(range(node.devices)) for name, node in pool.nodes.items()}
    for pod in pool.pods():
        if pod.status.phase == "Running":
            alloc = pool.allocation(pod.metadata.name)
            free[alloc.node].difference_update(alloc.of(Resource.NEURON))
    return free


def block_capacity(pool: Pool, size: int) -> int:
    """How many more pods of `size` devices the pool's free devices can hold: disjoint legal blocks, counted per
    node lowest start first (optimal for blocks of one size on a line of devices)."""
    capacity = 0
    for name, free in free_devices(pool).items():
        for block in free_blocks(pool.nodes[name].topology, Resource.NEURON, set(free), size):
            if all(i in free for i in block):  # disjoint from the blocks already counted
                free.difference_update(block)
                capacity += 1
    return capacity


def wait_settled(pool: Pool, names: Sequence[str]) -> dict[str, list[str]]:
    """Wait until every pod is Running or Pending unbound with a FailedScheduling message, and the Running ones
    have not changed for STABLE_FOR seconds. Returns the Pending pods' messages. A Failed pod fails at once."""
    last: list[frozenset[str]] = [frozenset()]
    since = [time.monotonic()]
    pending: dict[str, list[str]] = {}

    failed: list[str] = []

    def settled() -> bool:
        running = set()
        pending.clear()
        unsettled = []
        for pod in pool.pods():
            name = pod.metadata.name
            if pod.status.phase == "Failed":  # for good: stop waiting (wait_for takes an exception for "not yet")
                failed.append(f"pod {name} failed: {pod.status.reason}: {pod.status.message}")
                return True
            if pod.status.phase == "Running":
                running.add(name)
            elif name in names and not pod.spec.node_name and (messages := pool.scheduling_messages(name)):
                pending[name] = messages
            else:
                unsettled.append(name)
        now = time.monotonic()
        if frozenset(running) != last[0]:
            last[0], since[0] = frozenset(running), now
        return not unsettled and now - since[0] >= STABLE_FOR

    try:
        wait_for("the burst to settle", settled, timeout=SETTLE_TIMEOUT, interval=0.5, watch=pool._procs())
    except WaitTimeout as exc:
        raise AssertionError(f"{exc}; Running: {sorted(last[0])}") from exc
    assert not failed, failed[0]
    return dict(pending)
