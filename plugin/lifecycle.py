"""Keep one resource registered with kubelet, whatever kubelet does.

One cycle: wait for kubelet.sock, serve our socket, Register, then watch. A kubelet restart is a normal event,
detected three ways (whichever comes first): kubelet.sock recreated, our socket deleted, or ListAndWatch
cancelled. Then the old server is stopped *before* registering again, because a late-closing old stream can
tear down the new registration on kubelet < 1.37.

`registration_problem()` answers live (from any thread) whether the resource is registered with the kubelet
running now; it does not wait for the 50 ms watch to notice a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from neuronalloc import Resource
from neuronlog import get_logger
from plugin.metrics import PluginMetrics
from plugin.registration import KUBELET_SOCKET_NAME, RegistrationError, register, socket_name
from plugin.server import DevicePluginServicer, ResourceServer
from plugin.sockets import SocketIdentity, socket_identity

log = get_logger(__name__)

WATCH_INTERVAL_SECONDS = 0.05  # re-registration must happen within 1 s of a kubelet restart
RETRY_MIN_SECONDS = 0.1
RETRY_MAX_SECONDS = 1.0


class Restart(StrEnum):
    KUBELET_SOCKET_RECREATED = "kubelet_socket_recreated"
    KUBELET_SOCKET_REMOVED = "kubelet_socket_removed"
    PLUGIN_SOCKET_REMOVED = "plugin_socket_removed"
    STREAM_ENDED = "list_and_watch_ended"


class ResourceLifecycle:
    def __init__(
        self,
        resource: Resource,
        socket_dir: Path,
        make_servicer: Callable[[], DevicePluginServicer],
        metrics: PluginMetrics,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.resource = resource
        self._socket_dir = socket_dir
        self._kubelet_socket = socket_dir / KUBELET_SOCKET_NAME
        self._make_servicer = make_servicer
        self._metrics = metrics
        self._on_change = on_change  # registration gained or lost: the serving state may have changed
        self._log = log.bind(resource=resource.value)
        # The server registered with the kubelet whose kubelet.sock had this identity; one tuple, swapped whole.
        self._registered: tuple[ResourceServer, SocketIdentity] | None = None
        self._ever_registered = False

    def registration_problem(self) -> str | None:
        name = self.resource.value
        registered = self._registered
        if registered is None:
            if self._ever_registered:
                return f"{name} not registered with kubelet again yet (kubelet restarted)"
            return f"starting: {name} not registered with kubelet yet"
        server, kubelet = registered
        current = socket_identity(self._kubelet_socket)
        if current != kubelet:
            what = "kubelet.sock removed" if current is None else "kubelet.sock recreated"
            return f"kubelet restarted ({what}): {name} not registered again yet"
        if not server.socket_intact():
            return f"{name}: the plugin socket was removed; registering again"
        if not server.servicer.streaming:
            return f"{name}: kubelet has no ListAndWatch stream open"
        return None

    async def run(self) -> None:
        """Run until cancelled. SocketInUseError (another plugin holds our socket) propagates: it is fatal."""
        retry = RETRY_MIN_SECONDS
        while True:
            kubelet = await self._wait_for_kubelet()
            server = ResourceServer(self._make_servicer(), self._socket_dir / socket_name(self.resource))
            try:
                await server.start()
                await register(self._kubelet_socket, self.resource, server.socket_path.name, server.servicer.options())
            except (RegistrationError, OSError, TimeoutError) as error:
                self._metrics.registrations.labels(self.resource.short, "error").inc()
                self._log.warning("registration.failed", error=str(error), retry_in=retry)
                await server.stop()
                await self._sleep_unless_kubelet_changes(retry, kubelet)
                retry = min(retry * 2, RETRY_MAX_SECONDS)
                continue
            except BaseException:
                await server.stop()
                raise
            retry = RETRY_MIN_SECONDS
            self._metrics.registrations.labels(self.resource.short, "ok").inc()
            self._metrics.registered.labels(self.resource.short).set(1)
            self._log.info("registration.ok", socket=str(server.socket_path))
            self._registered, self._ever_registered = (server, kubelet), True
            self._on_change()
            try:
                reason = await self._watch(server, kubelet)
                self._log.info("kubelet.restart_detected", reason=reason.value)
            finally:
                self._registered = None
                self._on_change()
                self._metrics.registered.labels(self.resource.short).set(0)
                await server.stop()

    async def _wait_for_kubelet(self) -> SocketIdentity:
        waited = False
        while (identity := socket_identity(self._kubelet_socket)) is None:
            if not waited:
                self._log.info("kubelet.waiting", socket=str(self._kubelet_socket))
                waited = True
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
        return identity

    async def _sleep_unless_kubelet_changes(self, seconds: float, kubelet: SocketIdentity) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline and socket_identity(self._kubelet_socket) == kubelet:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)

    async def _watch(self, server: ResourceServer, kubelet: SocketIdentity) -> Restart:
        streaming = False
        while True:
            if server.servicer.streaming != streaming:  # kubelet opened (or lost) ListAndWatch
                streaming = not streaming
                self._on_change()
            current = socket_identity(self._kubelet_socket)
            if current is None:
                return Restart.KUBELET_SOCKET_REMOVED
            if current != kubelet:
                return Restart.KUBELET_SOCKET_RECREATED
            if not server.socket_intact():
                return Restart.PLUGIN_SOCKET_REMOVED
            if server.servicer.stream_ended.is_set():
                return Restart.STREAM_ENDED
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
