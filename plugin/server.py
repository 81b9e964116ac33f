"""One DevicePlugin gRPC server per resource: the RPC handlers and the server's own lifecycle.

The handlers run on grpc.aio's event loop, the same loop as health, the publisher and registration, so the
node view needs no locks and shutdown is plain task cancellation.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import grpc

from neuronalloc import Resource
from neuronlog import get_logger
from plugin import allocation
from plugin._proto.deviceplugin.v1beta1 import api_pb2 as dp_pb2
from plugin._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from plugin.allocation import AllocationRejected, Rejection
from plugin.metrics import PluginMetrics
from plugin.nodeview import NodeView
from plugin.podresources import PodResourcesUnavailable
from plugin.sockets import SocketIdentity, prepare_socket, remove_socket_if_ours, socket_identity, wait_dialable

log = get_logger(__name__)

HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"
# Kubelet's requests are a few kilobytes (one container, at most every ID of the node). gRPC refuses larger
# ones itself, before they are parsed; concurrent calls are capped for the same reason.
MAX_REQUEST_BYTES = 1024 * 1024
MAX_CONCURRENT_RPCS = 64
_STATUS = {
    Rejection.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Rejection.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclass
class _Call:
    """One RPC's result, set by its handler before it answers or refuses."""

    result: str = "error"


class DevicePluginServicer(dp_grpc.DevicePluginServicer):  # type: ignore[misc]
    PRE_START_DOES_WORK = False  # PreStartContainer answers at once: there is nothing to prepare

    def __init__(
        self,
        resource: Resource,
        view: NodeView,
        metrics: PluginMetrics,
        device_root: Path,
        numa_nodes: dict[int, int],
        on_allocated: Callable[[], None],
    ) -> None:
        self.resource = resource
        self._view = view
        self._metrics = metrics
        self._device_root = device_root
        self._numa_nodes = numa_nodes
        self._on_allocated = on_allocated
        self._log = log.bind(resource=resource.value)
        self.stream_ended = asyncio.Event()  # kubelet's ListAndWatch went away: time to register again
        self.open_streams = 0  # ListAndWatch streams that have delivered their first device list

    @property
    def streaming(self) -> bool:
        return self.open_streams > 0

    # -- device list -------------------------------------------------------------------------------------
    def device_list(self) -> dp_pb2.ListAndWatchResponse:
        topology = self._view.topology
        devices = []
        for unit in range(topology.unit_count(self.resource)):
            device = unit if self.resource.whole_devices else topology.device_of_core(unit)
            numa = self._numa_nodes.get(device)
            devices.append(
                dp_pb2.Device(
                    ID=str(unit),
                    health=HEALTHY if self._view.is_healthy(device) else UNHEALTHY,
                    topology=dp_pb2.TopologyInfo(nodes=[dp_pb2.NUMANode(ID=numa)]) if numa is not None else None,
                )
            )
        return dp_pb2.ListAndWatchResponse(devices=devices)

    # -- what kubelet may call -----------------------------------------------------------------------------
    def options(self) -> dp_pb2.DevicePluginOptions:
        """The options Register and GetDevicePluginOptions advertise, read off this class (as Intel's server
        does), so they cannot drift from the handlers. PreStartContainer is answered but has no work to do, so
        kubelet is not asked to call it. A fresh message each call: protobuf messages are mutable."""
        implements = type(self).GetPreferredAllocation is not dp_grpc.DevicePluginServicer.GetPreferredAllocation
        return dp_pb2.DevicePluginOptions(
            pre_start_required=self.PRE_START_DOES_WORK, get_preferred_allocation_available=implements
        )

    @contextmanager
    def _observed(self, rpc: str) -> Iterator[_Call]:
        """Observe one RPC once, when it ends, with the result the handler set (error if it set none)."""
        call, started = _Call(), time.perf_counter()
        try:
            yield call
        except asyncio.CancelledError:
            call.result = "cancelled"
            raise
        finally:
            self._metrics.observe(rpc, self.resource, call.result, time.perf_counter() - started)

    async def _refuse(
        self, call: _Call, rejected: AllocationRejected, event: str, context: grpc.aio.ServicerContext, **fields: Any
    ) -> NoReturn:
        call.result = rejected.kind.value
        self._log.warning(event, ids=rejected.ids, check=rejected.check, message=rejected.message, **fields)
        await context.abort(_STATUS[rejected.kind], rejected.message)
        raise AssertionError("context.abort returned")  # it raises; this tells type checkers so

    def _check_container_count(self, count: int, rpc: str) -> None:
        """Every container request needs its own hardware, so more of them than the node has units is wrong."""
        limit = self._view.topology.unit_count(self.resource)
        if count > limit:
            raise AllocationRejected(
                Rejection.INVALID_ARGUMENT,
                "too_many_containers",
                "",
                f"{count} container requests in one {rpc}; this node has {limit} {self.resource.units}",
            )

    # -- RPCs --------------------------------------------------------------------------------------------
    async def GetDevicePluginOptions(
        self, request: dp_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> dp_pb2.DevicePluginOptions:
        with self._observed("GetDevicePluginOptions") as call:
            options = self.options()
            call.result = "ok"
            return options

    async def ListAndWatch(
        self, request: dp_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dp_pb2.ListAndWatchResponse]:
        self._log.info("listandwatch.started")
        changes = self._view.health_changes
        seen = changes.version
        counted = False
        try:
            while True:
                with self._observed("ListAndWatch") as call:
                    update = self.device_list()
                    call.result = "ok"
                yield update
                if not counted:  # resumed after the first list was written: kubelet has the devices now
                    counted = True
                    self.open_streams += 1
                seen = await changes.wait_past(seen)
        finally:
            if counted:
                self.open_streams -= 1
            self._log.info("listandwatch.ended")
            self.stream_ended.set()

    async def GetPreferredAllocation(
        self, request: dp_pb2.PreferredAllocationRequest, context: grpc.aio.ServicerContext
    ) -> dp_pb2.PreferredAllocationResponse:
        rpc, event = "GetPreferredAllocation", "preferred_allocation.rejected"
        with self._observed(rpc) as call:
            try:
                self._check_container_count(len(request.container_requests), rpc)
            except AllocationRejected as rejected:
                await self._refuse(call, rejected, event, context)
            responses = []
            for container in request.container_requests:
                decide = functools.partial(
                    allocation.preferred,
                    self._view,
                    self.resource,
                    list(container.available_deviceIDs),
                    list(container.must_include_deviceIDs),
                    container.allocation_size,
                )
                try:
                    chosen = await self._with_fresh_view_on_refusal(decide)
                except AllocationRejected as rejected:
                    await self._refuse(
                        call,
                        rejected,
                        event,
                        context,
                        size=container.allocation_size,
                        available=allocation.show_ids(container.available_deviceIDs),
                    )
                self._log.info("preferred_allocation.chosen", ids=",".join(map(str, chosen)))
                responses.append(dp_pb2.ContainerPreferredAllocationResponse(deviceIDs=[str(u) for u in chosen]))
            call.result = "ok"
            return dp_pb2.PreferredAllocationResponse(container_responses=responses)

    async def Allocate(
        self, request: dp_pb2.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> dp_pb2.AllocateResponse:
        with self._observed("Allocate") as call:
            try:
                self._check_container_count(len(request.container_requests), "Allocate")
            except AllocationRejected as rejected:
                await self._refuse(call, rejected, "allocate.rejected", context)
            blocks: list[tuple[int, ...]] = []
            for container in request.container_requests:
                ids = list(container.devices_ids)
                try:
                    blocks.append(
                        await self._with_fresh_view_on_refusal(
                            functools.partial(allocation.validate, self._view, self.resource, ids)
                        )
                    )
                except AllocationRejected as rejected:
                    await self._refuse(call, rejected, "allocate.rejected", context)
            responses = []
            for block in blocks:
                grant = allocation.grant(self._view.topology, self._device_root, self.resource, block)
                envs = grant.envs  # a property that encodes ranges on every read
                self._view.record_allocation(self.resource, frozenset(block))
                self._log.info(
                    "allocate.granted",
                    ids=",".join(map(str, block)),
                    devices=envs["AWS_NEURON_VISIBLE_DEVICES"],
                    cores=envs["NEURON_RT_VISIBLE_CORES"],
                )
                responses.append(
                    dp_pb2.ContainerAllocateResponse(
                        envs=envs,
                        devices=[
                            dp_pb2.DeviceSpec(host_path=host, container_path=container_path, permissions="rw")
                            for host, container_path in grant.device_paths
                        ],
                    )
                )
            self._on_allocated()
            call.result = "ok"
            return dp_pb2.AllocateResponse(container_responses=responses)

    async def PreStartContainer(
        self, request: dp_pb2.PreStartContainerRequest, context: grpc.aio.ServicerContext
    ) -> dp_pb2.PreStartContainerResponse:
        with self._observed("PreStartContainer") as call:
            call.result = "ok"
            return dp_pb2.PreStartContainerResponse()

    async def _with_fresh_view_on_refusal(self, decide: Callable[[], tuple[int, ...]]) -> tuple[int, ...]:
        """Decide; if the view says no, re-read PodResources once (a holder may just have ended) and decide again."""
        try:
            return decide()
        except AllocationRejected as first:
            if first.kind is not Rejection.FAILED_PRECONDITION:
                raise
            try:
                await self._view.refresh()
            except PodResourcesUnavailable as error:
                self._log.warning("podresources.unavailable", error=str(error))
                raise first from None
            return decide()


class ServerState(Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPED = "stopped"


class ResourceServer:
    """A gRPC server on one unix socket. start() once; stop() is safe before start() and when repeated."""

    def __init__(self, servicer: DevicePluginServicer, socket_path: Path) -> None:
        self.servicer = servicer
        self.socket_path = socket_path
        self.state = ServerState.NEW
        self._server: grpc.aio.Server | None = None
        self._identity: SocketIdentity | None = None

    async def start(self) -> None:
        if self.state is not ServerState.NEW:
            raise RuntimeError(f"server for {self.socket_path} cannot start from state {self.state.value}")
        prepare_socket(self.socket_path)  # raises SocketInUseError if another process serves it
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        dp_grpc.add_DevicePluginServicer_to_server(self.servicer, server)
        server.add_insecure_port(f"unix://{self.socket_path.absolute()}")
        self._server = server
        self.state = ServerState.SERVING
        await server.start()
        self._identity = socket_identity(self.socket_path)
        await wait_dialable(self.socket_path)

    def socket_intact(self) -> bool:
        """False once our socket file was deleted or replaced (kubelet restart wipes the directory)."""
        return self._identity is not None and socket_identity(self.socket_path) == self._identity

    async def stop(self, grace: float = 0.2) -> None:
        if self.state is ServerState.SERVING and self._server is not None:
            self.state = ServerState.STOPPED
            try:
                await self._server.stop(grace)
            finally:  # even when shutdown cancels us mid-stop, the socket must not outlive the process
                remove_socket_if_ours(self.socket_path, self._identity)
        self.state = ServerState.STOPPED
