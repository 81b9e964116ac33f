"""Fail closed: without a fresh PodResources read the plugin cannot know what is in use, so it refuses.

In-process tests run the real DevicePluginServicer on a real unix socket, with the real PodResources client
against the PodResources stub (tests/plugin/kubelet_stub.py); the component test runs the real daemon.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from neuronalloc import Resource, resolve_topology
from plugin._proto.deviceplugin.v1beta1 import api_pb2 as dp_pb2
from plugin._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from plugin.metrics import PluginMetrics
from plugin.nodeview import MAX_PODRESOURCES_AGE_SECONDS, NodeView
from plugin.podresources import PodHoldings, PodResourcesClient, PodResourcesUnavailable
from plugin.server import DevicePluginServicer, ResourceServer
from tests.plugin.harness import Cluster
from tests.plugin.kubelet_stub import PodResourcesStub, pod_resources

NEURON, NEURONCORE = Resource.NEURON.value, Resource.NEURONCORE.value
INF2 = resolve_topology("inf2.48xlarge", 12)


@pytest.fixture
def tmp_sockets() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ncp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def allocate_request(ids: list[str]) -> dp_pb2.AllocateRequest:
    return dp_pb2.AllocateRequest(container_requests=[dp_pb2.ContainerAllocateRequest(devices_ids=ids)])


def preferred_request(available: list[str], size: int) -> dp_pb2.PreferredAllocationRequest:
    return dp_pb2.PreferredAllocationRequest(
        container_requests=[
            dp_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=size)
        ]
    )


def test_unreachable_podresources_never_grants_hardware_another_pod_holds(tmp_sockets: Path) -> None:
    """The reproduced bug: PodResources unreachable, devices 0-3 held whole by another pod, and Allocate granted
    cores 0-7 (on devices 0-3) because "never read" counted as "nothing used"."""
    stub = PodResourcesStub(tmp_sockets / "pr.sock")
    stub.pods = [pod_resources("ml", "whole", {NEURON: ["0", "1", "2", "3"]})]
    stub.unavailable = True
    stub.start()

    async def scenario() -> None:
        client = PodResourcesClient(stub.socket_path, INF2)
        view = NodeView(INF2, client.list_holdings, clock=time.monotonic)
        servicer = DevicePluginServicer(
            Resource.NEURONCORE, view, PluginMetrics(), Path("/dev"), {}, on_allocated=lambda: None
        )
        server = ResourceServer(servicer, tmp_sockets / "core.sock")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"unix://{server.socket_path}") as channel:
                plugin = dp_grpc.DevicePluginStub(channel)
                for call in (
                    plugin.Allocate(allocate_request([str(c) for c in range(8)]), timeout=10),
                    plugin.GetPreferredAllocation(preferred_request([str(c) for c in range(24)], 8), timeout=10),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call
                    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                    details = caught.value.details() or ""
                    assert "PodResources" in details and "kubelet retries" in details, details
                stub.unavailable = False  # kubelet answers again: the refusal re-reads, and now knows 0-3 are held
                with pytest.raises(grpc.aio.AioRpcError) as held:
                    await plugin.Allocate(allocate_request([str(c) for c in range(8)]), timeout=10)
                assert "share hardware" in (held.value.details() or "")
                granted = await plugin.Allocate(allocate_request([str(c) for c in range(8, 16)]), timeout=10)
                assert granted.container_responses[0].envs["AWS_NEURON_VISIBLE_DEVICES"] == "4-7"
        finally:
            await server.stop()
            await client.close()

    try:
        asyncio.run(scenario())
    finally:
        stub.stop()


def test_a_stale_read_refuses_over_grpc(tmp_sockets: Path) -> None:
    now = [0.0]
    kubelet_answers = [True]

    async def answer() -> PodHoldings:
        if not kubelet_answers[-1]:
            raise PodResourcesUnavailable("stub: gone")
        return PodHoldings(pods={})

    async def scenario() -> None:
        view = NodeView(INF2, answer, clock=lambda: now[0])
        await view.refresh()
        servicer = DevicePluginServicer(Resource.NEURON, view, PluginMetrics(), Path("/dev"), {}, lambda: None)
        server = ResourceServer(servicer, tmp_sockets / "dev.sock")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"unix://{server.socket_path}") as channel:
                plugin = dp_grpc.DevicePluginStub(channel)
                await plugin.Allocate(allocate_request(["0"]), timeout=10)
                # The read is now too old, and the re-read on refusal fails too.
                kubelet_answers.append(False)
                now[0] = MAX_PODRESOURCES_AGE_SECONDS + 1
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await plugin.Allocate(allocate_request(["1"]), timeout=10)
                assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "s old" in (caught.value.details() or "")
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_registers_only_after_the_first_podresources_read(trn1: Cluster) -> None:
    trn1.podresources.unavailable = True
    trn1.start_plugin("trn1.32xlarge")
    assert trn1.plugin is not None
    trn1.plugin.wait_event("podresources.unavailable")
    time.sleep(2.5)  # more than a poll: the plugin has tried again, and still must not register
    assert trn1.kubelet.registration_count(NEURON) == trn1.kubelet.registration_count(NEURONCORE) == 0
    assert not list(trn1.socket_dir.glob("neuron-contig-*.sock"))
    trn1.podresources.unavailable = False
    trn1.kubelet.wait_registered(NEURON)
    trn1.kubelet.wait_registered(NEURONCORE)
    ok = trn1.plugin.wait_event("podresources.ok")
    first_registration = trn1.plugin.wait_event("registration.ok")
    assert ok["ts"] <= first_registration["ts"]
