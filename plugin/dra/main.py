"""`neuron-dra-driver`: DRA mode's node daemon. Wire the parts together and run them until SIGTERM.

Start-up: read the node (its labels and UID) from the API server, discover the devices exactly as the device
plugin does, load the claims prepared before (rewriting their CDI specs), then serve kubelet's DRA socket and
registration socket and publish the node's ResourceSlices. Nothing here refuses to wait: the API server being
down at start is retried; a node whose topology the block encoding cannot describe is a clear exit.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from neuronalloc import INSTANCE_TYPE_LABEL, Resource, Topology, free_sets, largest_free_block
from neuronalloc.draslices import (
    DRA_RESOURCES,
    DraLayoutError,
    check_layout_fits,
    describe_layout,
    node_blocks,
    small_first_by_name,
)
from neuronalloc.text import shorten
from neuronlog import get_logger
from plugin._proto.dra.v1 import api_pb2_grpc as dra_grpc
from plugin._proto.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from plugin.discovery import discover
from plugin.dra.api import DraApi, connect_dra
from plugin.dra.config import DriverConfig, load_config
from plugin.dra.kubelet import DraServicer, RegistrationServicer, RegistrationState, SocketServer
from plugin.dra.metrics import DraMetrics
from plugin.dra.prepare import Preparer
from plugin.dra.slices import SlicePublisher
from plugin.dra.store import Store
from plugin.entry import run_daemon
from plugin.health import HealthMonitor, HealthSource, KernelLogSource, PresenceSource
from plugin.httpserve import LoopLiveness, serve_http
from plugin.kubeapi import KubeApiError, KubeConfigError
from plugin.nodeview import Usage
from plugin.sockets import SocketInUseError
from plugin.threads import in_daemon_thread

log = get_logger("dra")

SMALL_FIRST_LABEL = "neuron-contig.io/small-first"
SHUTDOWN_TIMEOUT_SECONDS = 5.0
NODE_RETRY_MAX_SECONDS = 10.0
STOPPING = "stopping"


async def read_node(api: DraApi, name: str) -> Mapping[str, Any]:
    """The Node object, retried until the API server answers (nothing can be published without it)."""
    delay = 0.5
    while True:
        try:
            return await asyncio.wait_for(in_daemon_thread(api.node, name), 15)
        except (KubeApiError, TimeoutError) as error:
            log.warning("node.unavailable", node=name, error=shorten(str(error), 300), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, NODE_RETRY_MAX_SECONDS)


def small_first_of(labels: Mapping[str, Any], node: str, share: float) -> tuple[bool, str]:
    value = labels.get(SMALL_FIRST_LABEL)
    if value in ("true", "false"):
        return value == "true", "node_label"
    return small_first_by_name(node, share), "name_hash"


def owner_reference(node: Mapping[str, Any]) -> dict[str, Any] | None:
    meta = node.get("metadata") or {}
    if not isinstance(meta.get("uid"), str) or not isinstance(meta.get("name"), str):
        return None
    return {"apiVersion": "v1", "kind": "Node", "name": meta["name"], "uid": meta["uid"], "controller": True}


class NodeState:
    """The driver's live view for metrics and readiness: health, prepared claims, publishing, registration."""

    def __init__(self, topo: Topology, store: Store, metrics: DraMetrics) -> None:
        self.topo = topo
        self.store = store
        self.metrics = metrics
        self.unhealthy: dict[int, str] = {}
        self._blocks = node_blocks(topo)

    def refresh(self) -> None:
        topo = self.topo
        used_devices, used_cores = self.store.in_use()
        sick = frozenset(self.unhealthy)
        free_devices, free_cores = free_sets(topo, used_devices, used_cores, sick)
        usage = Usage(used_devices, used_cores, sick, free_devices, free_cores)
        prepared = {r: 0 for r in DRA_RESOURCES}
        for claim in self.store.claims.values():
            prepared[claim.grant.resource] += 1
        self.metrics.set_state(topo, usage, prepared)
        for resource in DRA_RESOURCES:
            blocks = [b for b in self._blocks if b.resource is resource]
            free = free_devices if resource is Resource.NEURON else free_cores
            tainted = sum(1 for b in blocks if any(d in sick for d in b.devices(topo)))
            allocatable = sum(1 for b in blocks if all(i in free for i in b.ids))
            self.metrics.set_blocks(resource, len(blocks), allocatable, tainted)

    def largest(self) -> dict[str, int]:
        used_devices, used_cores = self.store.in_use()
        free_devices, free_cores = free_sets(self.topo, used_devices, used_cores, self.unhealthy)
        return {
            "neuron": largest_free_block(self.topo, Resource.NEURON, free_devices),
            "neuroncore": largest_free_block(self.topo, Resource.NEURONCORE, free_cores),
        }


async def run(config: DriverConfig) -> int:
    metrics = DraMetrics()
    try:
        api = connect_dra(config.kubeconfig)
    except KubeConfigError as error:
        log.error("dra.no_api_server", error=str(error))
        return 1
    node = await read_node(api, config.node_name)
    labels = (node.get("metadata") or {}).get("labels") or {}
    found = discover(
        device_root=config.device_root,
        sysfs_root=config.sysfs_root,
        logical_nc_config=config.logical_nc_config,
        instance_type_flag=config.instance_type,
        node_label=labels.get(INSTANCE_TYPE_LABEL) if isinstance(labels, dict) else None,
    )
    topo = found.topology
    metrics.set_topology(topo)
    try:
        check_layout_fits(topo)
    except DraLayoutError as error:
        log.error("dra.unsupported_node", instance_type=topo.instance_type, error=str(error))
        return 1
    small_first, small_first_source = small_first_of(labels if isinstance(labels, dict) else {}, config.node_name,
                                         config.small_first_share)  # fmt: skip
    store = Store(config.plugin_dir, config.cdi_root, config.device_root, topo)
    for problem in store.load():
        log.error("claim.record_unreadable", error=problem)
    state = NodeState(topo, store, metrics)
    log.info(
        "dra.started",
        node=config.node_name,
        instance_type=topo.instance_type,
        source=found.type_source.value,
        devices=topo.device_count,
        cores_per_device=topo.cores_per_device,
        rule=topo.describe_rule(Resource.NEURON),
        small_first=small_first,
        small_first_source=small_first_source,
        prepared_claims=len(store.claims),
        **describe_layout(topo),
    )

    publisher = SlicePublisher(
        api, config.node_name, topo, metrics, small_first=small_first, owner=owner_reference(node)
    )

    def on_health_change(unhealthy: Mapping[int, str]) -> None:
        state.unhealthy = dict(unhealthy)
        metrics.set_device_health(topo, frozenset(unhealthy))
        publisher.set_unhealthy(unhealthy)
        state.refresh()

    sources: list[HealthSource] = [PresenceSource(config.device_root, topo.device_count)]
    if config.hw_error_log:
        sources.append(KernelLogSource(config.hw_error_log, topo.device_count, metrics=metrics))
    health = HealthMonitor(sources, on_health_change, clock=time.monotonic)
    health.check()
    metrics.set_device_health(topo, frozenset(health.unhealthy))
    state.refresh()

    async def fetch_claim(namespace: str, name: str) -> Any:
        return await asyncio.wait_for(in_daemon_thread(api.claim, namespace, name), 15)

    preparer = Preparer(topo, config.node_name, store, fetch_claim, lambda: health.unhealthy, on_change=state.refresh)
    registration = RegistrationState()
    dra_server = SocketServer(
        "dra", config.dra_socket,
        lambda s: dra_grpc.add_DRAPluginServicer_to_server(DraServicer(preparer, config.node_name, metrics), s),
    )  # fmt: skip
    reg_server = SocketServer(
        "registration", config.registration_socket,
        lambda s: reg_grpc.add_RegistrationServicer_to_server(
            RegistrationServicer(config.dra_socket, registration, metrics), s
        ),
    )  # fmt: skip
    stopping = False

    def reason() -> str | None:
        if stopping:
            return STOPPING
        if not dra_server.intact():
            return f"starting: the DRA socket {config.dra_socket} is not served yet"
        if not reg_server.intact():
            return f"starting: the registration socket {config.registration_socket} is not served yet"
        problem = registration.problem() or publisher.problem
        if problem is not None:
            return problem
        if store.unknown:
            return "a prepared claim's record cannot be read: new claims are refused until kubelet unprepares it"
        return None

    metrics.serving.set_function(lambda: 1.0 if reason() is None else 0.0)
    liveness = LoopLiveness()

    http_server = None
    if config.metrics_port:
        try:
            http_server = serve_http(
                metrics,
                config.metrics_port,
                is_alive=liveness.alive,
                readiness=reason,
                node=config.node_name,
            )
        except OSError as error:
            log.error("metrics.port_unavailable", port=config.metrics_port, error=str(error))
            return 1

    async def kubelet_side() -> None:
        # Kubelet dials the DRA socket as soon as it has the registration: serve that one first.
        serve_dra = asyncio.create_task(dra_server.serve(), name="dra-socket")
        try:
            while not dra_server.intact():
                if serve_dra.done():
                    serve_dra.result()
                await asyncio.sleep(0.05)
            await reg_server.serve()
        finally:
            serve_dra.cancel()
            await asyncio.gather(serve_dra, return_exceptions=True)

    jobs: dict[str, Coroutine[Any, Any, None]] = {
        "health": health.run(),
        "slices": publisher.run(),
        "kubelet": kubelet_side(),
        "tick": liveness.run(),
    }
    try:
        exit_code = await _run_until_signal(jobs, lambda: None)
    finally:
        stopping = True
        for source in sources:
            if isinstance(source, KernelLogSource):
                source.close()
        if http_server is not None:
            http_server.shutdown()
    log.info("dra.stopped", exit_code=exit_code)
    return exit_code


async def _run_until_signal(jobs: Mapping[str, Coroutine[Any, Any, None]], before_stop: Any) -> int:
    """Run the jobs until SIGTERM/SIGINT or until one ends (a failure). 0 = clean stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = {asyncio.create_task(job, name=name) for name, job in jobs.items()}
    stop_task = asyncio.create_task(stop.wait(), name="signal")
    done, _ = await asyncio.wait({*tasks, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    for task in done - {stop_task}:
        exit_code = 1
        error = None if task.cancelled() else task.exception()
        event = "dra.socket_in_use" if isinstance(error, SocketInUseError) else "dra.task_failed"
        log.error(event, task=task.get_name(), error=repr(error))
    log.info("dra.stopping", reason="signal" if stop_task in done else "task_failed")
    before_stop()
    stop_task.cancel()
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_SECONDS)
    for task in pending:
        log.error("dra.shutdown_timeout", task=task.get_name())
        exit_code = 1
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    return run_daemon("neuron-dra-driver", argv, load_config, run)


if __name__ == "__main__":
    raise SystemExit(main())
