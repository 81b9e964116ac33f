"""What cannot fit stays Pending with the extender's reason in the scheduler's events; nothing is over-committed."""

from __future__ import annotations

from neuronalloc import Resource, allocate
from neuronalloc.blocks import size_refusal
from tests.cluster.processes import wait_for
from tests.cluster.workload import Pool, pending_pods, settle


def test_trn1_size_3_stays_pending_with_the_rule(pool: Pool) -> None:
    """A trn1 pod of 3 devices can never be placed: the extender marks the node unresolvable and says why."""
    node = pool.add_node("trn1", "trn1.32xlarge")
    name = pool.create("trn-3", Resource.NEURON, 3)
    refusal = size_refusal(node.topology, Resource.NEURON, 3)
    assert refusal is not None and refusal.kind == "unresolvable"
    message = pool.wait_scheduling_message(name, refusal.message)
    assert refusal.rule in message
    settle(3)
    assert pool.pod(name).status.phase == "Pending"
    assert pool.pod(name).spec.node_name is None


def test_burst_at_a_nearly_full_node_overcommits_nothing(pool: Pool) -> None:
    """Free devices are two separate pairs: 3-device pods are refused by the extender (count fits, no block),
    a burst of 2-device pods takes exactly the two pairs, and the rest stay Pending."""
    node = pool.add_node("inf2", "inf2.48xlarge")
    fillers = [pool.create(f"fill-{i}", Resource.NEURON, 2) for i in range(6)]
    pool.wait_phase(fillers)
    by_start = sorted(fillers, key=lambda n: pool.allocation(n).of(Resource.NEURON)[0])
    # Free the 2nd and 4th pairs: 4 devices free, in two runs of 2 that are not adjacent.
    freed = [by_start[1], by_start[3]]
    free = frozenset(d for n in freed for d in pool.allocation(n).of(Resource.NEURON))
    pool.delete(*freed)
    pool.wait_node_state(node.name, f"free devices are {sorted(free)}", lambda s: s.free_devices == free)

    refusal = allocate(node.topology, Resource.NEURON, free, 3)
    assert not isinstance(refusal, tuple) and refusal.kind == "no_block"
    threes = [pool.create(f"three-{i}", Resource.NEURON, 3) for i in range(2)]
    for name in threes:
        # The in-tree filters pass (4 devices free): only the extender can have said this.
        pool.wait_scheduling_message(name, "block of 3 devices")

    twos = [pool.create(f"two-{i}", Resource.NEURON, 2) for i in range(4)]

    def running_twos() -> list[str]:
        return [n for n in twos if pool.pod(n).status.phase == "Running"]

    wait_for("two of the 2-device pods to run", lambda: len(running_twos()) >= 2, timeout=60)
    settle(3)  # room for a wrong third placement to show up
    running = running_twos()
    assert len(running) == 2, f"exactly the two free pairs can be used, got {running}"
    assert sorted(d for n in running for d in pool.allocation(n).of(Resource.NEURON)) == sorted(free)
    assert not [p.metadata.name for p in pool.pods() if p.status.phase == "Failed"]
    assert set(pending_pods(pool)) == set(threes) | (set(twos) - set(running))
    for name in set(twos) - set(running):
        assert pool.scheduling_messages(name), f"{name} is Pending without a FailedScheduling event"
    pool.assert_no_overcommit()
