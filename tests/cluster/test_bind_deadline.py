"""A bind slower than its deadline never lands twice, on real Kubernetes parts (issue 10).

Real parts: kube-apiserver and etcd, kube-scheduler running deploy/'s configuration (mutual TLS to the
extender), a simulated node's real kubelet device manager and PodResources server, our device plugin, and our
`neuron-scheduler-extender` process. It replaces the cluster's own extender on `Cluster.extender_port` for the
test (with a short `--handler-timeout` and a Lease of its own) and reaches the API server through
`DelayingProxy`, a loopback TCP proxy that only moves bytes (TLS passes through it end to end).

What the proxy stands in for: a latency spike on the path from the extender to the API server. While it is on,
every byte the extender sends is held for `DELAY` seconds, then delivered in order; the other direction (watch
events, replies) is not held. A Binding POST sent then reaches the API server after the extender's deadline has
passed: the extender has given up (its outcome is unknown) and the POST's `?timeout=` cannot help, since the API
server's deadline starts when the request arrives. The binding is then made late, by the real API server, and
the client's close (TLS close_notify, FIN) reaches it later still, as it would after such a delay.

The scenario: one node whose only free contiguous block is 0-3 among ten free devices (kube-scheduler's own
count has room for two pods of 4, so only the extender stands between two pods and that block). With the delay
on, pod A (4 devices) is bound to the block and its POST times out; pod B (4 devices) follows at once. The
extender must keep counting A's binding of unknown outcome until its watch shows A there: B must never be bound
to the block. Had B's Binding been sent as well, both would land, and kubelet would refuse one of them
(`UnexpectedAdmissionError`, a Failed pod) or hand it a broken block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from neuronalloc import Resource
from tests.cluster.harness import Cluster
from tests.cluster.processes import ManagedProcess, free_port, wait_for
from tests.cluster.test_replicas import FILL_SIZE, FREED, SIZE, _block_capacity, _free_devices, _pipe, _wait_settled
from tests.cluster.workload import Pool

INSTANCE_TYPE = "inf1.24xlarge"  # 16 devices, blocks of 4
HANDLER_TIMEOUT = 2.0  # the extender's --handler-timeout: its bind gives up on the POST before this
DELAY = 6.0  # seconds each byte toward the API server is held while the delay is on: well past the deadline
BINDS = "neuron_contig_extender_binds"
EXTENDER_LOG = "extender-bind-deadline"


class DelayingProxy:
    """A loopback TCP proxy to one backend port. `delay` seconds (0 = none) is added to every chunk the client
    sends from the moment it is read; chunks of one connection keep their order. The backend's bytes toward the
    client pass at once. `last_due` is the loop time the last held chunk is (or was) due."""

    def __init__(self, backend: int) -> None:
        self.port = free_port()
        self.backend = backend
        self.delay = 0.0
        self.last_due = 0.0
        self.held = 0  # chunks delivered later than they arrived
        self._open: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delaying-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> DelayingProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        try:
            future.result(timeout=10)
        except BaseException:
            self.close()
            raise
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            upstream_r, connected = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.backend), timeout=5
            )
            upstream_w = connected
            await asyncio.gather(self._held_pipe(client_r, connected), _pipe(upstream_r, client_w))
        except (OSError, TimeoutError, asyncio.CancelledError):
            pass  # the backend is down, or the proxy is closing: the client sees its connection closed
        finally:
            self._open.discard(task)
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.close()

    async def _held_pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """`_pipe`, each chunk (and the end of stream) delivered no sooner than `delay` after it was read."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        due = 0.0

        async def read() -> None:
            nonlocal due
            try:
                while True:
                    data = await source.read(64 * 1024)
                    delay = self.delay
                    due = max(due, loop.time() + delay)
                    self.last_due = max(self.last_due, due)
                    self.held += 1 if delay and data else 0
                    queue.put_nowait((due, data))
                    if not data:
                        return
            except OSError:
                queue.put_nowait((due, b""))

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

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)

    def wait_delivered(self) -> None:
        """Until every chunk held so far is due (then a moment for the backend to act on it)."""
        time.sleep(max(0.0, self.last_due - time.monotonic()) + 0.5)

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()


def _kubeconfig_via(cluster: Cluster, port: int, path: Path) -> Path:
    """The cluster's kubeconfig with the API server reached on `port` (the certificate names 127.0.0.1 still)."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def extender_behind_delay(cluster: Cluster, lease: str) -> Iterator[tuple[ManagedProcess, DelayingProxy]]:
    """Swap the cluster's extender for one whose API server connections go through a `DelayingProxy`; put the
    cluster's own back afterwards (as test_replicas does)."""
    proxy = DelayingProxy(cluster.api_port).start()
    kubeconfig = _kubeconfig_via(cluster, proxy.port, cluster.workdir / f"kubeconfig-{lease}")
    if cluster.extender is not None:
        cluster.extender.stop()
    extender: ManagedProcess | None = None
    try:
        extender = cluster.launch_extender(
            cluster.extender_port,
            name=EXTENDER_LOG,
            metrics_port=0,  # /metrics on its own (mutual-TLS) port, where _binds() reads it
            extra_args=[
                f"--kubeconfig={kubeconfig}",
                f"--handler-timeout={HANDLER_TIMEOUT}",
                f"--lease-name={lease}",
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
        cluster.start_extender()


def _binds(cluster: Cluster, metric: str = "binds") -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of neuron_contig_extender_<metric> on the extender at `Cluster.extender_port`, by labels."""
    name = f"neuron_contig_extender_{metric}"
    url = f"{cluster.extender_url}/metrics"
    with urllib.request.urlopen(url, timeout=5, context=cluster.extender_ssl_context()) as response:
        text = response.read().decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in (name, f"{name}_total")
    }


def _log_events(cluster: Cluster, event: str) -> list[dict[str, object]]:
    out = []
    for line in (cluster.logs / f"{EXTENDER_LOG}.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("event") == event:
                    out.append(doc)
    return out


def test_a_bind_slower_than_its_deadline_never_lands_twice(cluster: Cluster, pool: Pool) -> None:
    with extender_behind_delay(cluster, lease=f"{pool.name}-binder") as (extender, proxy):
        node = pool.add_node("inf1-24", INSTANCE_TYPE)
        # Ten free devices, one block of 4 among them (test_replicas' fill): only the extender can refuse B.
        size = FILL_SIZE[INSTANCE_TYPE]
        fill = [pool.create(f"fill-{i}", Resource.NEURON, size) for i in range(node.devices // size)]
        pool.wait_phase(fill)
        pool.delete(*(name for name in fill if FREED.issuperset(pool.allocation(name).of(Resource.NEURON))))
        kept = [name for name in fill if name in {p.metadata.name for p in pool.pods()}]
        assert _block_capacity(pool, SIZE) == 1, f"room for other than one block of {SIZE}: {_free_devices(pool)}"
        before = _binds(cluster).get((("reason", "outcome_unknown"),), 0.0)

        started = time.monotonic()
        proxy.delay = DELAY
        pool.create("a", Resource.NEURON, SIZE)
        time.sleep(0.3)
        pool.create("b", Resource.NEURON, SIZE)
        # Keep the delay on long enough for a second bind to reach the block after A's failed (the one that
        # would make two bindings), then let everything held arrive.
        time.sleep(max(0.0, DELAY - (time.monotonic() - started)))
        proxy.delay = 0.0
        proxy.wait_delivered()
        pending = _wait_settled(pool, ["a", "b"])

        extender.check_alive()
        pool.assert_no_overcommit()
        running = sorted(p.metadata.name for p in pool.pods() if p.status.phase == "Running")
        for name in running:
            pool.assert_block_ok(pool.allocation(name), Resource.NEURON, SIZE if name in ("a", "b") else size)
        (winner,) = [name for name in running if name in ("a", "b")] or [None]
        assert winner is not None, f"neither a nor b is Running (Pending: {pending})"
        assert pool.allocation(winner).of(Resource.NEURON) == (0, 1, 2, 3)
        loser = "b" if winner == "a" else "a"
        assert loser in pending, f"{loser} is neither Running nor Pending with a reason"
        assert any("block" in m for m in pending[loser]), pending[loser]  # the extender's reason
        assert sorted(running) == sorted([*kept, winner])

        # The extender saw the bind whose outcome was unknown, and kept counting it.
        unknown = [e for e in _log_events(cluster, "bind.refused") if e.get("rule") == "outcome_unknown"]
        assert unknown, "no bind of unknown outcome: the delay did not outlast the bind's deadline"
        assert all("unknown" in str(e.get("error")) for e in unknown), unknown
        after = _binds(cluster).get((("reason", "outcome_unknown"),), 0.0)
        assert after - before >= 1, (before, after)
        print(f"winner={winner} held_chunks={proxy.held} unknown binds={[e.get('pod') for e in unknown]} "
              f"loser's message: {pending[loser][-1]!r}")  # fmt: skip
