"""A bind slower than its deadline never lands twice, on real Kubernetes parts (issue 10).

Real parts: kube-apiserver and etcd, kube-scheduler running deploy/'s configuration (mutual TLS to the
extender), a simulated node's real kubelet device manager and PodResources server, our device plugin, and our
`neuron-scheduler-extender` process. It replaces the cluster's own extender on `Cluster.extender_port` for the
test (with a short `--handler-timeout` and a binder Lease of its own) and reaches the API server through
`StallingProxy`, a loopback TCP proxy that only moves bytes (TLS passes through it end to end).

What the proxy stands in for: an API server replica that stalls behind a load balancer. The connections the
extender has open to it when the stall begins (its keep-alive Binding connection among them) hold every byte the
extender sends for `STALL` seconds, then deliver it in order; new connections reach a healthy replica at once,
and nothing is held on the way back (watch events flow). A Binding POST sent on a stalled connection reaches the
API server after the extender's deadline: the extender has given up, its outcome unknown, and the POST's
`?timeout=` cannot help, since the API server's deadline starts when the request arrives. The real API server
then makes the binding late; the client's close (TLS close_notify, FIN) reaches it later still, held as long.
(A stall of every connection would not do: a new connection's TLS handshake would stall as well, so no second
Binding could be sent in time, and a wrong extender could not fail the test.)

The scenario: one node whose only free contiguous block is 0-3 among ten free devices (kube-scheduler's own
count has room for two pods of 4, so only the extender stands between two pods and that block). The stall
begins; pod A (4 devices) is bound to the block on the stalled connection and its POST times out; pod B (4
devices) follows. The extender must keep counting A's binding of unknown outcome until its watch shows A: B must
not be bound meanwhile (it would be, on a new connection, and A's late binding would then make two: kubelet
refuses one with `UnexpectedAdmissionError`, a Failed pod, or hands it a broken block).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from neuronalloc import Resource
from tests.cluster.harness import Cluster
from tests.cluster.lastblock import FILL_SIZE, FREED, SIZE, block_capacity, free_devices, wait_settled
from tests.cluster.processes import ManagedProcess, free_port, wait_for
from tests.cluster.tcpproxy import LoopbackProxy
from tests.cluster.workload import Pool

INSTANCE_TYPE = "inf1.24xlarge"  # 16 devices, blocks of 4
HANDLER_TIMEOUT = 2.0  # the extender's --handler-timeout: its bind gives up on the POST before this
STALL = 6.0  # seconds each byte on a stalled connection is held: well past the bind deadline
EXTENDER_LOG = "extender-bind-deadline"


class StallingProxy(LoopbackProxy):
    """A loopback TCP proxy to one backend port that moves bytes only. `stall(seconds)` marks every connection
    open now: from then on each chunk it carries toward the backend is held `seconds` after it was read, then
    delivered in order (its end of stream too). Connections opened later, and the backend's bytes toward the
    client, pass at once."""

    def __init__(self, backend: int) -> None:
        super().__init__(free_port(), "stalling-proxy")
        self.backend = backend
        self.held = 0  # chunks delivered late
        self.last_due = 0.0  # loop time (time.monotonic) the last held chunk is due
        self._delays: dict[asyncio.Task[None], list[float]] = {}  # open connection -> [its hold, in seconds]

    def stall(self, seconds: float) -> int:
        """Hold what the connections open now send from here on; returns how many there are."""

        async def mark() -> int:
            for delay in self._delays.values():
                delay[0] = seconds
            return len(self._delays)

        return self.call(mark())

    async def relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        delay = self._delays[task] = [0.0]
        try:
            await self.connect(self.backend, client_r, client_w, lambda r, w: self._heldpipe(r, w, delay))
        finally:
            del self._delays[task]

    async def _heldpipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: list[float]) -> None:
        """`pipe`, each chunk (and the end of stream) delivered `delay[0]` seconds after it was read, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            due = 0.0
            data = b"-"
            while data:
                try:
                    data = await source.read(64 * 1024)
                except OSError:
                    data = b""
                due = max(due, loop.time() + delay[0])
                if delay[0]:
                    self.held += 1
                    self.last_due = max(self.last_due, due)
                queue.put_nowait((due, data))

        reader = asyncio.ensure_future(read())
        try:
            while True:
                when, data = await queue.get()
                await asyncio.sleep(max(0.0, when - loop.time()))
                if not data:
                    if sink.can_write_eof():
                        sink.write_eof()
                    return
                sink.write(data)
                await sink.drain()
        except (OSError, RuntimeError):
            sink.close()
        finally:
            reader.cancel()

    def wait_delivered(self) -> None:
        """Until every chunk held is delivered and no more came in meanwhile (then a moment for the backend)."""
        while True:
            due = self.last_due
            time.sleep(max(0.0, due - time.monotonic()) + 0.5)
            if self.last_due == due:
                return


def _kubeconfig_via(cluster: Cluster, port: int, path: Path) -> Path:
    """The cluster's kubeconfig with the API server reached on `port` (the certificate names 127.0.0.1 still)."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def extender_behind_stall(cluster: Cluster, lease: str) -> Iterator[tuple[ManagedProcess, StallingProxy]]:
    """Swap the cluster's extender for one whose API server connections go through a `StallingProxy`; put the
    cluster's own back afterwards (as test_replicas does)."""
    proxy = StallingProxy(cluster.api_port).start()
    kubeconfig = _kubeconfig_via(cluster, proxy.port, cluster.workdir / f"kubeconfig-{lease}")
    with cluster.extender_stopped():
        extender: ManagedProcess | None = None
        try:
            extender = cluster.launch_extender(
                cluster.extender_port,
                name=EXTENDER_LOG,
                metrics_port=0,  # /metrics on its own (mutual-TLS) port, where _binds() reads it
                extra_args=[
                    f"--kubeconfig={kubeconfig}",
                    f"--handler-timeout={HANDLER_TIMEOUT}",
                    f"--lease-name={lease}",  # its own: its renewals stall too, and land late, apart from ours
                    "--advertise-address=127.0.0.1",
                ],
            )
            wait_for("the extender to hold its binder lease", lambda: _binds(cluster, "binder_active").get(()) == 1,
                     timeout=30, watch=[extender])  # fmt: skip
            yield extender, proxy
        finally:
            if extender is not None:
                extender.stop()
            proxy.close()


def _binds(cluster: Cluster, metric: str = "binds") -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of neuron_contig_extender_<metric> on the extender at `Cluster.extender_port`, by labels."""
    return cluster.extender_samples(f"neuron_contig_extender_{metric}")


def _log_size(cluster: Cluster) -> int:
    return (cluster.logs / f"{EXTENDER_LOG}.log").stat().st_size


def _log_events(cluster: Cluster, event: str, since: int) -> list[dict[str, object]]:
    """The extender's log events named `event`, from byte `since` of its log on."""
    out = []
    with (cluster.logs / f"{EXTENDER_LOG}.log").open("rb") as log:
        log.seek(since)
        text = log.read().decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("event") == event:
                    out.append(doc)
    return out


def _unknown_binds(cluster: Cluster, since: int) -> list[str]:
    """Names of the pods whose bind the extender gave up on with its outcome unknown."""
    return [
        str(e.get("pod")).rpartition("/")[2]
        for e in _log_events(cluster, "bind.refused", since)
        if e.get("rule") == "outcome_unknown" and "unknown" in str(e.get("error"))
    ]


def test_a_bind_slower_than_its_deadline_never_lands_twice(cluster: Cluster, pool: Pool) -> None:
    with extender_behind_stall(cluster, lease=f"{pool.name}-binder") as (extender, proxy):
        node = pool.add_node("inf1-24", INSTANCE_TYPE)
        # Ten free devices, one block of 4 among them (test_replicas' fill): only the extender can refuse B.
        size = FILL_SIZE[INSTANCE_TYPE]
        fill = [pool.create(f"fill-{i}", Resource.NEURON, size) for i in range(node.devices // size)]
        pool.wait_phase(fill)
        pool.delete(*(name for name in fill if FREED.issuperset(pool.allocation(name).of(Resource.NEURON))))
        kept = [name for name in fill if name in {p.metadata.name for p in pool.pods()}]
        assert block_capacity(pool, SIZE) == 1, f"room for other than one block of {SIZE}: {free_devices(pool)}"
        # The plugin has published the freed devices (the extender's watch follows within milliseconds): A's bind
        # starts at once, on a connection the stall holds.
        pool.wait_node_state(node.name, f"devices {sorted(FREED)} free", lambda state: state.free_devices == FREED)
        time.sleep(0.5)
        before = _binds(cluster).get((("reason", "outcome_unknown"),), 0.0)

        since = _log_size(cluster)
        # The connections open now include the extender's keep-alive Binding connection, open since the fill was
        # bound a few seconds ago (aiohttp keeps an idle one 15 s): A's POST goes out on it and is held.
        stalled = proxy.stall(STALL)
        pool.create("a", Resource.NEURON, SIZE)
        time.sleep(0.3)
        pool.create("b", Resource.NEURON, SIZE)
        wait_for("a bind of unknown outcome", lambda: _unknown_binds(cluster, since), timeout=15, watch=[extender])
        proxy.wait_delivered()
        pending = wait_settled(pool, ["a", "b"])

        extender.check_alive()
        pool.assert_no_overcommit()
        running = sorted(p.metadata.name for p in pool.pods() if p.status.phase == "Running")
        for name in running:
            pool.assert_block_ok(pool.allocation(name), Resource.NEURON, SIZE if name in ("a", "b") else size)
        assert running == sorted([*kept, "a"]), f"Running: {running}; Pending: {pending}"
        assert pool.allocation("a").of(Resource.NEURON) == (0, 1, 2, 3)
        assert "b" in pending and any("block" in m for m in pending["b"]), pending  # the extender's reason

        # A's binding is the one the extender gave up on, made late by the API server; the extender counted it
        # meanwhile (and said so), and never bound A itself.
        unknown = _unknown_binds(cluster, since)
        assert "a" in unknown, f"A's bind did not time out on the stalled connection: {unknown}"
        bound_here = [e["pod"] for e in _log_events(cluster, "bind.bound", since) if str(e.get("pod")).endswith("/a")]
        assert not bound_here, "A was bound by the extender, not by its late POST: the stall missed its connection"
        after = _binds(cluster).get((("reason", "outcome_unknown"),), 0.0)
        assert after - before >= 1, (before, after)
        print(f"stalled connections={stalled} held chunks={proxy.held} unknown binds={unknown} "
              f"B's message: {pending['b'][-1]!r}")  # fmt: skip
