"""The kubelet side of the driver: plugin registration and the DRA plugin service (v1), each on its own socket.

Kubelet's plugin manager watches its plugins_registry directory: our socket there serves
`pluginregistration.Registration` (GetInfo: a "DRAPlugin" named after the driver, its endpoint, the service
`v1.DRAPlugin`); kubelet then dials the endpoint, `<plugins dir>/<driver>/dra.sock`, for NodePrepareResources
and NodeUnprepareResources. A kubelet restart re-reads plugins_registry and registers the socket again, so the
sockets stay in place across it; a socket someone removes is served again within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from neuronalloc.draslices import DRIVER
from neuronalloc.text import MAX_MESSAGE, shorten
from neuronlog import get_logger
from plugin._proto.dra.v1 import api_pb2 as dra_pb2
from plugin._proto.dra.v1 import api_pb2_grpc as dra_grpc
from plugin._proto.pluginregistration.v1 import api_pb2 as reg_pb2
from plugin._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from plugin.dra.metrics import DraMetrics
from plugin.dra.prepare import Preparer
from plugin.sockets import SocketIdentity, prepare_socket, remove_socket_if_ours, socket_identity, wait_dialable

log = get_logger(__name__)

PLUGIN_TYPE = "DRAPlugin"
SERVICE_VERSIONS = ("v1.DRAPlugin",)
MAX_REQUEST_BYTES = 1024 * 1024
MAX_CONCURRENT_RPCS = 32
MAX_CLAIMS_PER_CALL = 128  # one pod's claims; a pod lists far fewer
WATCH_INTERVAL_SECONDS = 0.5


def registration_socket_name() -> str:
    return f"{DRIVER}-reg.sock"


class RegistrationState:
    """What kubelet last told us in NotifyRegistrationStatus."""

    def __init__(self) -> None:
        self.registered = False
        self.error = ""
        self.info_calls = 0
        self.at = 0.0

    def problem(self) -> str | None:
        if self.registered:
            return None
        if self.error:
            return f"kubelet refused the registration: {shorten(self.error, 120)}"
        if self.info_calls:
            return "starting: kubelet asked for the plugin info but has not confirmed the registration"
        return "starting: kubelet has not registered the driver yet"


class RegistrationServicer(reg_grpc.RegistrationServicer):  # type: ignore[misc]
    def __init__(self, endpoint: Path, state: RegistrationState, metrics: DraMetrics) -> None:
        self._endpoint = str(endpoint)
        self._state = state
        self._metrics = metrics

    async def GetInfo(self, request: reg_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> reg_pb2.PluginInfo:
        with self._metrics.dra_rpc_duration.labels("GetInfo").time():
            # A kubelet asking is (re)registering us, perhaps after a restart: registered again only once it says so.
            self._state.info_calls += 1
            self._state.registered = False
            log.info("registration.get_info", endpoint=self._endpoint)
            return reg_pb2.PluginInfo(
                type=PLUGIN_TYPE, name=DRIVER, endpoint=self._endpoint, supported_versions=list(SERVICE_VERSIONS)
            )

    async def NotifyRegistrationStatus(
        self, request: reg_pb2.RegistrationStatus, context: grpc.aio.ServicerContext
    ) -> reg_pb2.RegistrationStatusResponse:
        with self._metrics.dra_rpc_duration.labels("NotifyRegistrationStatus").time():
            state = self._state
            state.registered, state.error, state.at = request.plugin_registered, request.error[:1000], time.time()
            self._metrics.kubelet_registered.set(1 if state.registered else 0)
            if state.registered:
                log.info("registration.ok", driver=DRIVER)
            else:
                log.error("registration.failed", driver=DRIVER, error=shorten(request.error, 300))
            return reg_pb2.RegistrationStatusResponse()


class DraServicer(dra_grpc.DRAPluginServicer):  # type: ignore[misc]
    def __init__(self, preparer: Preparer, pool: str, metrics: DraMetrics) -> None:
        self._preparer = preparer
        self._pool = pool
        self._metrics = metrics

    async def NodePrepareResources(
        self, request: dra_pb2.NodePrepareResourcesRequest, context: grpc.aio.ServicerContext
    ) -> dra_pb2.NodePrepareResourcesResponse:
        with self._metrics.dra_rpc_duration.labels("NodePrepareResources").time():
            if len(request.claims) > MAX_CLAIMS_PER_CALL:
                message = f"{len(request.claims)} claims in one call; at most {MAX_CLAIMS_PER_CALL}"
                log.warning("prepare.rejected", rule="too_many_claims", message=message)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            response = dra_pb2.NodePrepareResourcesResponse()
            for claim in request.claims:
                outcome = await self._preparer.prepare(claim.namespace, claim.name, claim.uid)
                self._metrics.prepares.labels(outcome.rule or "ok").inc()
                entry = response.claims[claim.uid[:128]]
                if outcome.prepared is None:
                    entry.error = shorten(outcome.error, MAX_MESSAGE)
                    continue
                prepared = outcome.prepared
                for index, result in enumerate(prepared.allocation.results):
                    # One CDI device carries the claim's whole block: the first device entry serves every request
                    # of the claim (no request names), the others only name their device.
                    entry.devices.append(
                        dra_pb2.Device(
                            request_names=[] if index == 0 else [result.request],
                            pool_name=self._pool,
                            device_name=result.block.name,
                            cdi_device_ids=[prepared.cdi_id] if index == 0 else [],
                        )
                    )
            return response

    async def NodeUnprepareResources(
        self, request: dra_pb2.NodeUnprepareResourcesRequest, context: grpc.aio.ServicerContext
    ) -> dra_pb2.NodeUnprepareResourcesResponse:
        with self._metrics.dra_rpc_duration.labels("NodeUnprepareResources").time():
            if len(request.claims) > MAX_CLAIMS_PER_CALL:
                message = f"{len(request.claims)} claims in one call; at most {MAX_CLAIMS_PER_CALL}"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            response = dra_pb2.NodeUnprepareResourcesResponse()
            for claim in request.claims:
                error = self._preparer.unprepare(claim.namespace, claim.name, claim.uid)
                self._metrics.unprepares.labels("error" if error else "ok").inc()
                response.claims[claim.uid[:128]].error = shorten(error, MAX_MESSAGE)
            return response


class SocketServer:
    """One grpc.aio server on one unix socket; `serve` keeps it there until cancelled, re-serving it when the socket
    file is removed (a wiped plugins_registry, a deleted plugins dir)."""

    def __init__(self, name: str, path: Path, add_servicer: Callable[[grpc.aio.Server], None]) -> None:
        self.name = name
        self.path = path
        self._add = add_servicer
        self.identity: SocketIdentity | None = None

    def intact(self) -> bool:
        return self.identity is not None and socket_identity(self.path) == self.identity

    async def _start(self) -> grpc.aio.Server:
        prepare_socket(self.path)  # SocketInUseError if another driver serves it: fatal, as for the plugin
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        self._add(server)
        server.add_insecure_port(f"unix://{self.path.absolute()}")
        await server.start()
        self.identity = socket_identity(self.path)
        await wait_dialable(self.path)
        log.info("socket.serving", socket=self.name, path=str(self.path))
        return server

    async def serve(self, on_change: Callable[[], None] = lambda: None) -> None:
        server = await self._start()
        on_change()
        try:
            while True:
                await asyncio.sleep(WATCH_INTERVAL_SECONDS)
                if not self.intact():
                    log.warning("socket.removed", socket=self.name, path=str(self.path))
                    await server.stop(0.2)
                    self.identity = None
                    on_change()
                    server = await self._start()
                    on_change()
        finally:
            identity, self.identity = self.identity, None
            try:
                await server.stop(0.2)
            finally:
                remove_socket_if_ours(self.path, identity)
