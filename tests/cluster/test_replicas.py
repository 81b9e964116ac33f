"""Two and three extender replicas behind one address never over-commit the last blocks of real nodes.

In production kube-scheduler reaches the extender through a Service: each new TCP connection goes to any
replica, and only the holder of the binder Lease binds (the others forward /bind to it; extender/bind.py,
extender/lease.py, extender/forward.py). Here the Service is `RoundRobinProxy`, a loopback TCP proxy on the port
the scheduler is configured with (`Cluster.extender_port`) that hands each new connection to the next replica.
It sees only bytes, so mutual TLS passes through it untouched, from the scheduler to a replica. The replicas are
real `neuron-scheduler-extender` processes with the cluster's PKI, each on its own port, advertising 127.0.0.1.

A burst of pods asks for more blocks than the nodes have left. Non-holders answer filter from their own watch-fed
view, which does not yet know the holder's latest bindings, so several pods are sent to bind to the same last
block; the holder must refuse all but one. Kubelet would fail a second pod's admission
(`UnexpectedAdmissionError`), so a Failed pod, a shared device, or fewer Running pods than the free blocks hold
each fail the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence

import pytest

from neuronalloc import Resource
from tests.cluster.harness import Cluster
from tests.cluster.lastblock import FILL_SIZE, FREED, SIZE, block_capacity, free_devices, wait_settled
from tests.cluster.processes import ManagedProcess, free_port, wait_for
from tests.cluster.tcpproxy import LoopbackProxy
from tests.cluster.workload import Pool

NODES = {"inf1-24": "inf1.24xlarge", "trn1-32": "trn1.32xlarge"}  # 16 devices each: eight blocks of 4
BURST = 20  # pods of SIZE created at once for the pool's last blocks
FORWARDED = "neuron_contig_extender_binds_forwarded"
BINDER_ACTIVE = "neuron_contig_extender_binder_active"


class RoundRobinProxy(LoopbackProxy):
    """A Service's load balancing, per connection: each accepted connection is piped, byte for byte, to the next
    backend port in turn. At most `max_connections` are open at once; one more is closed at once (a client
    reconnects, as it would to a full Service endpoint)."""

    def __init__(self, port: int, backends: Sequence[int], *, max_connections: int = 64) -> None:
        super().__init__(port, "round-robin-proxy")
        self.backends = tuple(backends)
        self.max_connections = max_connections
        self.accepted = [0] * len(self.backends)  # connections handed to each backend
        self.refused = 0
        self._next = 0

    async def relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if len(self._open) > self.max_connections:  # this one counts already
            self.refused += 1
            client_w.close()
            return
        index = self._next % len(self.backends)
        self._next += 1
        self.accepted[index] += 1
        await self.connect(self.backends[index], client_r, client_w)


class Replicas:
    """`count` extender processes sharing one binder Lease, on ports of their own."""

    def __init__(self, cluster: Cluster, count: int, lease: str) -> None:
        self.cluster = cluster
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[ManagedProcess] = []
        self.lease = lease

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            self.procs.append(
                self.cluster.launch_extender(
                    port,
                    name=f"extender-replica-{i}",
                    metrics_port=0,  # /metrics on each replica's own port, where samples() reads it
                    extra_args=["--advertise-address=127.0.0.1", f"--lease-name={self.lease}"],
                )
            )

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def samples(self, metric: str) -> list[dict[tuple[tuple[str, str], ...], float]]:
        """Per replica: the samples of `metric` (a counter's `_total` included), by their labels."""
        return [self.cluster.extender_samples(metric, port) for port in self.ports]

    def holders(self) -> list[int]:
        """Indexes of the replicas that say they hold the binder Lease."""
        return [i for i, found in enumerate(self.samples(BINDER_ACTIVE)) if sum(found.values()) == 1]

    def forwarded(self) -> dict[str, float]:
        """Binds forwarded to the holder, summed over the replicas, by result."""
        total: dict[str, float] = {}
        for found in self.samples(FORWARDED):
            for labels, value in found.items():
                result = dict(labels).get("result", "")
                total[result] = total.get(result, 0.0) + value
        return total


@contextlib.contextmanager
def replicas_behind_one_address(cluster: Cluster, count: int, lease: str) -> Iterator[tuple[Replicas, RoundRobinProxy]]:
    """Swap the cluster's one extender for `count` replicas behind a round-robin proxy on the same port; put the
    one extender back afterwards (it hands its own Lease back when it stops, so it binds again at once)."""
    with cluster.extender_stopped():
        replicas = Replicas(cluster, count, lease)
        proxy: RoundRobinProxy | None = None
        try:
            replicas.start()
            # A holder before the scheduler sends anything (the others read its address on their next lease
            # round; a bind reaching one before then waits for it).
            holders = wait_for(
                "a replica to hold the binder lease", lambda: replicas.holders() or None, timeout=30,
                watch=replicas.procs,
            )  # fmt: skip
            assert len(holders) == 1, f"replicas {holders} all say they hold the binder lease"
            proxy = RoundRobinProxy(cluster.extender_port, replicas.ports).start()
            yield replicas, proxy
        finally:
            if proxy is not None:
                proxy.close()
            replicas.stop()


@pytest.mark.parametrize("count", [2, 3])
def test_replicas_never_overcommit(cluster: Cluster, pool: Pool, count: int) -> None:
    with replicas_behind_one_address(cluster, count, lease=f"{pool.name}-binder") as (replicas, proxy):
        for suffix, instance_type in NODES.items():
            pool.add_node(suffix, instance_type)
        # Ten free devices per node with room for one block of 4: kube-scheduler's own count (10 >= 4) passes a
        # node for a second pod after the first took its block, so only the extender stands between the burst and
        # an over-commit (with the pool's free devices in blocks, the count alone would stop it).
        fill: dict[str, int] = {}
        for node in pool.nodes.values():
            size = FILL_SIZE[node.instance_type]
            for i in range(node.devices // size):
                name = pool.create(f"fill-{node.instance_type[:4]}-{i}", Resource.NEURON, size,
                                   instance_type=node.instance_type)  # fmt: skip
                fill[name] = size
        pool.wait_phase(fill)
        pool.delete(*(name for name in fill if FREED.issuperset(pool.allocation(name).of(Resource.NEURON))))
        capacity = block_capacity(pool, SIZE)
        free = free_devices(pool)
        assert capacity == len(pool.nodes), f"room for {capacity} blocks of {SIZE} in {free}"
        assert all(len(ids) >= 2 * SIZE for ids in free.values()), f"the count alone would stop the burst: {free}"

        burst = [f"burst-{i}" for i in range(BURST)]
        for name in burst:
            pool.create(name, Resource.NEURON, SIZE)
        pending = wait_settled(pool, burst)

        pool.assert_no_overcommit()
        running = [p.metadata.name for p in pool.pods() if p.status.phase == "Running"]
        for name in running:
            pool.assert_block_ok(pool.allocation(name), Resource.NEURON, fill.get(name, SIZE))
        running_burst = sorted(set(running) & set(burst))
        assert len(running_burst) == capacity, (
            f"{len(running_burst)} burst pods Running for {capacity} free blocks of {SIZE}: {running_burst}"
        )
        assert len(pending) == BURST - capacity, f"Pending: {sorted(pending)}"
        # The extender said why (kube-scheduler's own count still had room on both nodes).
        assert any("block" in m for messages in pending.values() for m in messages), pending
        assert block_capacity(pool, SIZE) == 0

        for proc in replicas.procs:
            proc.check_alive()
        forwarded = replicas.forwarded()
        connections = dict(zip(replicas.ports, proxy.accepted, strict=True))
        assert sum(forwarded.values()) > 0, (
            f"no bind was forwarded to the binder (by result {forwarded}; connections per replica port {connections})"
        )
        print(f"replicas={count} forwarded={forwarded} connections={connections} pending message: "
              f"{next(iter(pending.values()))[-1]!r}")  # fmt: skip
