"""Every attack of issue 9 at once, against the live cluster while it schedules: nothing crashes, nothing answers
500, memory stays under the manifests' limits, readiness comes back, and every pod gets a legal block of its own.

The attacks, in bounded counts (each also has a focused test next to its component; `pytest -m hostile` runs
them all):
  - on the extender: eight concurrent 58 MiB bodies and hundreds of half-sent connections, from a client with
    the scheduler's certificate (the worst case: an insider) and handshakes without one; a 5,000-digit quantity;
    `/bind` for a pod of another scheduler that asks for no Neuron resource; a Node whose state annotations are
    5,000-digit garbage;
  - on a plugin: a flood of kernel-log lines that are not the kernel's or name an impossible device, one 8 MB
    line without a newline; Allocate with 10,000 IDs and with a 5,000-digit ID; a device root holding
    `neuron99999`, `neuron01` and a thousand other look-alikes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import grpc
import pytest
from kubernetes import client as k8s

from neuronalloc import Resource, encode_node_state
from neuronalloc.nodestate import DEVICES
from plugin._proto.deviceplugin.v1beta1 import api_pb2 as dp_pb2
from plugin._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from plugin.registration import socket_name
from tests.cluster.harness import NEURON, Cluster, SimNode
from tests.cluster.processes import ManagedProcess, wait_for
from tests.cluster.workload import Pool

pytestmark = pytest.mark.hostile

EXTENDER_LIMIT_MIB = 512  # deploy/extender/deployment.yaml
PLUGIN_LIMIT_MIB = 128  # deploy/plugin/daemonset.yaml
MiB = 1024 * 1024
HALF_SENT = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"


def peak_mib(process: ManagedProcess) -> float:
    """The most the process was ever resident (VmHWM, as the kernel counts it), in MiB."""
    assert process.pid is not None
    with open(f"/proc/{process.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


class Statuses:
    """Every HTTP status the attacks got back; 0 = the server closed the connection without an answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[int] = []

    def add(self, status: int) -> None:
        with self._lock:
            self.seen.append(status)


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, statuses: Statuses) -> None:
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            await response.read()
            statuses.add(response.status)
    except (TimeoutError, aiohttp.ClientError, OSError):
        statuses.add(0)


def _filter_body(size: int) -> bytes:
    filler = "x" * 1000
    names = [f"node-{i}-{filler}" for i in range(size // 1010)]
    return json.dumps({"Pod": {"metadata": {"name": "p"}}, "NodeNames": names}).encode()


async def _flood_extender(cluster: Cluster, statuses: Statuses) -> None:
    url = cluster.extender_url
    insider = aiohttp.TCPConnector(ssl=cluster.extender_ssl_context(), limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=insider, timeout=timeout) as session:
        huge = _filter_body(58 * MiB)
        await asyncio.gather(*(_post(session, f"{url}/filter", huge, statuses) for _ in range(8)))
        digits = json.dumps({
            "Pod": {"metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "c", "resources": {"limits": {NEURON: "9" * 5000}}}]}},
            "NodeNames": ["a"],
        }).encode()  # fmt: skip
        await asyncio.gather(*(_post(session, f"{url}/filter", digits, statuses) for _ in range(20)))
    # Half-sent requests from an insider, and handshakes from outsiders with no certificate.
    host, port = "127.0.0.1", cluster.extender_port
    opened: list[socket.socket] = []
    insider_context = cluster.extender_ssl_context()
    for _ in range(300):
        try:  # past the extender's connection cap, it may refuse or evict: that is the point
            tls = insider_context.wrap_socket(socket.create_connection((host, port), timeout=5), server_hostname=host)
            tls.sendall(
                b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
            )
            opened.append(tls)
        except (OSError, ssl.SSLError):
            statuses.add(0)
    for _ in range(200):
        try:
            opened.append(socket.create_connection((host, port), timeout=5))  # never starts a handshake
        except OSError:
            statuses.add(0)
    outsider = cluster.extender_ssl_context(client=False)
    for _ in range(50):
        try:
            raw = socket.create_connection((host, port), timeout=5)
            outsider.wrap_socket(raw, server_hostname="127.0.0.1").sendall(b"GET /readyz HTTP/1.1\r\n\r\n")
        except (OSError, ssl.SSLError):
            statuses.add(0)
    await asyncio.sleep(2)
    for sock in opened:
        sock.close()


def _bind_foreign_pod(cluster: Cluster) -> str:
    """A pod of the default scheduler asking for no Neuron resource, bound through our /bind: must be refused."""
    core = cluster.core
    if not any(ns.metadata.name == "payments" for ns in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": "payments"}})
    pod = core.create_namespaced_pod(
        "payments",
        {
            "metadata": {"name": "db-0"},
            "spec": {
                "schedulerName": "not-ours",
                "containers": [{"name": "db", "image": "registry.k8s.io/pause:3.10"}],
            },
        },
    )
    node = next(iter(cluster.nodes))
    body = json.dumps({"PodName": "db-0", "PodNamespace": "payments", "PodUID": pod.metadata.uid, "Node": node})
    request = _https_request(cluster, "/bind", body.encode())
    return str(json.loads(request)["Error"])


def _https_request(cluster: Cluster, path: str, body: bytes) -> bytes:
    import urllib.request

    request = urllib.request.Request(
        f"{cluster.extender_url}{path}", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10, context=cluster.extender_ssl_context()) as response:
        return bytes(response.read())


@contextmanager
def poisoned_node(cluster: Cluster) -> Iterator[str]:
    """A Node whose state annotations are garbage (a 5,000-digit device count): it must not stop the watch."""
    state = {k: v for k, v in encode_node_state_for("inf2.48xlarge").items()}
    state[DEVICES] = "9" * 5000
    name = "hostile-poisoned-node"
    cluster.core.create_node({"metadata": {"name": name, "annotations": state}})
    try:
        yield name
    finally:
        cluster.core.delete_node(name)


def encode_node_state_for(instance_type: str) -> dict[str, str]:
    from datetime import UTC, datetime

    from neuronalloc import CATALOG, NodeState, free_sets, resolve_topology

    topo = resolve_topology(instance_type, CATALOG[instance_type].devices)
    free_devices, free_cores = free_sets(topo, (), (), ())
    return encode_node_state(NodeState(topo, free_devices, free_cores, frozenset(), {}, datetime.now(UTC)))


def _flood_kernel_log(node: SimNode, seconds: float) -> int:
    """Lines that must mark nothing: another writer quoting the marker, an impossible device, an 8 MB line."""
    spoof = (
        b"Nov 28 10:00:00 ip-10-0-0-1 kubelet[1234]: E1128 logs say NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR nd-id=3\n"
        b"Nov 28 10:00:00 ip-10-0-0-1 kernel: NEURON_HW_ERR=DMA_ERROR instance-id=i-0 hostname=h nd-id=9999 nc-id=0\n"
    )
    chunk = spoof * 2000
    written = 0
    deadline = time.monotonic() + seconds
    with node.hw_error_log.open("ab") as log:
        log.write(b"Nov 28 10:00:00 ip-10-0-0-1 kernel: " + b"A" * (8 * MiB))  # no newline yet
        log.write(b"\n")
        while time.monotonic() < deadline:
            log.write(chunk)
            log.flush()
            written += 4000
            time.sleep(0.02)
    return written


def _hostile_allocate(node: SimNode) -> list[grpc.StatusCode]:
    target = f"unix://{node.device_plugin_dir / socket_name(Resource.NEURON)}"
    codes = []
    with grpc.insecure_channel(target) as channel:
        stub = dp_grpc.DevicePluginStub(channel)
        for ids in ([str(i) for i in range(10_000)], ["9" * 5000]):
            request = dp_pb2.AllocateRequest(container_requests=[dp_pb2.ContainerAllocateRequest(devices_ids=ids)])
            with pytest.raises(grpc.RpcError) as caught:
                stub.Allocate(request, timeout=10)
            codes.append(caught.value.code())
            assert len(caught.value.details() or "") <= 600
    return codes


def _look_alike_devices(root: Path) -> None:
    for name in ("neuron99999", "neuron01", "neuron٣", *(f"neuron{i}" for i in range(100, 1100))):
        (root / name).touch()


def test_every_attack_at_once_while_the_cluster_schedules(pool: Pool, cluster: Cluster) -> None:
    inf2 = pool.add_node("inf2", "inf2.48xlarge")
    trn1 = pool.add_node("trn1", "trn1.32xlarge")
    assert cluster.extender is not None and inf2.plugin is not None and trn1.plugin is not None

    statuses = Statuses()
    failures: list[BaseException] = []

    def extender_attacks() -> None:
        try:
            asyncio.run(_flood_extender(cluster, statuses))
        except BaseException as error:  # reported below, after the workload
            failures.append(error)

    attacker = threading.Thread(target=extender_attacks, name="extender-attacks")
    attacker.start()
    _look_alike_devices(inf2.device_root)
    cluster.restart_plugin(inf2.name, wait=False)
    with poisoned_node(cluster):
        workload = []
        for i, (resource, count) in enumerate(
            [(Resource.NEURON, 4), (Resource.NEURONCORE, 3), (Resource.NEURON, 8), (Resource.NEURON, 2),
             (Resource.NEURONCORE, 8), (Resource.NEURON, 1), (Resource.NEURON, 4), (Resource.NEURONCORE, 2)]
        ):  # fmt: skip
            workload.append(pool.create(f"w{i}", resource, count))
        flooded = _flood_kernel_log(trn1, seconds=5)
        codes = _hostile_allocate(trn1)
        refused = _bind_foreign_pod(cluster)
        attacker.join(timeout=180)
        assert not attacker.is_alive(), "the extender attacks did not finish"
        pool.wait_phase(workload, timeout=120)

    assert not failures, failures
    assert statuses.seen.count(400) >= 20, f"the 5,000-digit quantities were not refused: {statuses.seen}"
    assert set(statuses.seen[:8]) <= {0, 408, 413, 503}, f"58 MiB bodies were not refused: {statuses.seen[:8]}"
    assert 500 not in statuses.seen, f"the extender answered 500: {sorted(set(statuses.seen))}"
    assert {s for s in statuses.seen if s >= 500} <= {503}, sorted(set(statuses.seen))
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT]
    assert "not-ours" in refused or "scheduler" in refused, refused
    assert cluster.core.read_namespaced_pod("db-0", "payments").spec.node_name is None
    cluster.core.delete_namespaced_pod("db-0", "payments", grace_period_seconds=0)

    # Nothing crashed, memory stayed under the limits, and readiness is back.
    for process in (cluster.extender, inf2.plugin, trn1.plugin):
        assert process is not None
        process.check_alive()
    assert peak_mib(cluster.extender) < EXTENDER_LIMIT_MIB, peak_mib(cluster.extender)
    for node in (inf2, trn1):
        assert node.plugin is not None
        assert peak_mib(node.plugin) < PLUGIN_LIMIT_MIB, (node.name, peak_mib(node.plugin))
    context = cluster.extender_ssl_context()
    wait_for("extender /readyz", lambda: _https_get_ok(cluster, context), timeout=30)

    # The look-alike device nodes added nothing; the flood marked no device unhealthy.
    assert len(cluster.allocatable_devices(inf2.name).get(NEURON, ())) == 12
    assert len(cluster.allocatable_devices(trn1.name).get(NEURON, ())) == 16, f"{flooded} lines flooded"
    assert not pool.node_state(trn1.name).unhealthy_devices

    # Every pod got a legal block of its own.
    pool.assert_no_overcommit()
    for name in workload:
        alloc = pool.allocation(name)
        for resource in Resource:
            if alloc.of(resource):
                pool.assert_block_ok(alloc, resource, len(alloc.of(resource)))


def _https_get_ok(cluster: Cluster, context: ssl.SSLContext) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"{cluster.extender_url}/readyz", timeout=5, context=context) as response:
        return bool(response.status == 200)


@pytest.fixture(autouse=True)
def _no_leftover_namespace(cluster: Cluster) -> Iterator[None]:
    yield
    try:
        cluster.core.delete_namespace("payments")
    except k8s.ApiException as error:
        if error.status != 404:
            raise
