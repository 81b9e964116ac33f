"""`neuron-device-plugin`: wire the parts together and run them until SIGTERM.

Signals only set an event. Shutdown first marks the plugin not serving ("stopping": /readyz and the gauge at
once) and waits a bounded time for the publisher to write that to the node, so the extender stops choosing
this node while kubelet can still be served; then it cancels every task, waits a bounded time, and reports
what failed; each resource server removes its own socket as its task unwinds.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from neuronalloc import INSTANCE_TYPE_LABEL, Resource, hardware_in_use
from neuronlog import get_logger
from plugin.condition import Condition, ConditionPublisher, health_condition
from plugin.config import PluginConfig, load_config
from plugin.discovery import Discovery, discover
from plugin.entry import run_daemon
from plugin.health import HealthMonitor, HealthSource, KernelLogSource, PresenceSource
from plugin.httpserve import LoopLiveness, serve_http
from plugin.kubeapi import KubeApiError, KubeConfigError, NodeApi, connect
from plugin.lifecycle import ResourceLifecycle
from plugin.metrics import PluginMetrics
from plugin.nodeview import NodeView, PodResourcesStatus
from plugin.podresources import PodResourcesClient
from plugin.publisher import Publisher
from plugin.server import DevicePluginServicer
from plugin.serving import Serving
from plugin.sockets import SocketInUseError
from plugin.threads import in_daemon_thread

log = get_logger("plugin")

SHUTDOWN_TIMEOUT_SECONDS = 5.0
# On SIGTERM, how long to wait for "stopping" to reach the node before stopping anyway (the API server may be
# down). Kubelet's default grace period is 30 s; this plus SHUTDOWN_TIMEOUT_SECONDS stays well inside it.
STOP_PUBLISH_TIMEOUT_SECONDS = 5.0


def _connect_api(config: PluginConfig) -> NodeApi | None:
    if not config.publishing_enabled:
        log.info("publish.disabled", reason="--kubeconfig none")
        return None
    try:
        return connect(config.kubeconfig)
    except KubeConfigError as error:
        # Serving kubelet matters more than publishing: run without the API server, loudly.
        log.error("publish.disabled", reason="kubeconfig", error=str(error))
        return None


async def _node_label(api: NodeApi | None, config: PluginConfig) -> str | None:
    if api is None or config.instance_type:
        return None
    try:
        labels = await asyncio.wait_for(in_daemon_thread(api.node_labels, config.node_name), 15)
    except (KubeApiError, TimeoutError) as error:
        log.warning("discovery.node_label_unavailable", node=config.node_name, error=str(error))
        return None
    return labels.get(INSTANCE_TYPE_LABEL)


def _log_discovery(found: Discovery) -> None:
    topology = found.topology
    (log.info if topology.known else log.warning)(
        "discovery.done" if topology.known else "discovery.unknown_instance_type",
        instance_type=topology.instance_type,
        source=found.type_source.value,
        devices=topology.device_count,
        cores_per_device=topology.cores_per_device,
        rule=topology.describe_rule(Resource.NEURON),
        present=",".join(map(str, sorted(found.present))),
    )


def _held_devices(view: NodeView) -> Callable[[], frozenset[int] | None]:
    """Devices a pod holds (whole, or some of their cores), or None while PodResources cannot say. Called from
    the health worker thread: it only reads the view's current holdings."""
    topology = view.topology

    def held() -> frozenset[int] | None:
        if view.podresources_status() is not PodResourcesStatus.FRESH:
            return None
        return hardware_in_use(topology, view.used(Resource.NEURON), view.used(Resource.NEURONCORE)).devices

    return held


def _health_sources(
    config: PluginConfig, found: Discovery, metrics: PluginMetrics, view: NodeView
) -> tuple[list[HealthSource], KernelLogSource | None]:
    count = found.topology.device_count
    sources: list[HealthSource] = [PresenceSource(config.device_root, count)]
    kernel_log = None
    if config.hw_error_log:
        kernel_log = KernelLogSource(
            config.hw_error_log,
            count,
            metrics=metrics,
            quarantine=config.hw_error_quarantine,
            allocated=_held_devices(view),
            trust_allocated=config.hw_error_trust == "allocated",
        )
        sources.append(kernel_log)
    else:
        log.warning("health.hw_error_log_off", reason='--hw-error-log ""', effect="hardware errors are not seen")
    return sources, kernel_log


def _wanted_condition(
    health: HealthMonitor, device_count: int, kernel_log: KernelLogSource | None
) -> Callable[[], Condition]:
    def wanted() -> Condition:
        unseen = 'the kernel log is off (--hw-error-log "")' if kernel_log is None else kernel_log.problem
        return health_condition(health.unhealthy, device_count, hw_errors_unseen=unseen)

    return wanted


async def _run_until_signal(
    jobs: Mapping[str, Coroutine[Any, Any, None]], before_stop: Callable[[], Awaitable[None]]
) -> int:
    """Run the jobs until SIGTERM/SIGINT or until one of them ends (a failure). 0 = clean stop.

    `before_stop` runs while every job still runs, before any is cancelled."""
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
        if isinstance(error, SocketInUseError):
            log.error("plugin.socket_in_use", error=str(error))
        else:
            log.error("plugin.task_failed", task=task.get_name(), error=repr(error))
    log.info("plugin.stopping", reason="signal" if stop_task in done else "task_failed")
    await before_stop()
    stop_task.cancel()
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_SECONDS)
    for task in pending:
        log.error("plugin.shutdown_timeout", task=task.get_name())
        exit_code = 1
    return exit_code


async def run(config: PluginConfig) -> int:
    metrics = PluginMetrics(config.resources)
    api = _connect_api(config)
    found = discover(
        device_root=config.device_root,
        sysfs_root=config.sysfs_root,
        logical_nc_config=config.logical_nc_config,
        instance_type_flag=config.instance_type,
        node_label=await _node_label(api, config),
    )
    _log_discovery(found)
    log.info("plugin.resources", resources=",".join(r.value for r in config.resources))
    topology = found.topology
    metrics.set_topology(topology)

    podresources = PodResourcesClient(config.pod_resources_socket, topology)
    view = NodeView(topology, podresources.list_holdings, clock=time.monotonic)
    if config.advertise_address and not config.metrics_port:
        log.warning("publish.no_plugin_address", reason="--metrics-port 0: there is no /readyz to advertise")

    condition: ConditionPublisher | None = None

    def on_health_change(unhealthy: Mapping[int, str]) -> None:
        view.set_unhealthy(unhealthy)
        metrics.set_device_health(topology, frozenset(unhealthy))
        if condition is not None:
            condition.trigger()

    sources, kernel_log = _health_sources(config, found, metrics, view)
    health = HealthMonitor(sources, on_health_change, clock=time.monotonic)
    health.check()  # the first device list kubelet sees is already correct
    metrics.set_device_health(topology, frozenset(health.unhealthy))  # also when all are healthy (no change)
    if api is not None:
        wanted = _wanted_condition(health, topology.device_count, kernel_log)
        condition = ConditionPublisher(config.node_name, api, metrics, wanted)

    def servicer_for(resource: Resource) -> DevicePluginServicer:
        return DevicePluginServicer(
            resource, view, metrics, config.device_root, found.numa_nodes, on_allocated=publisher.trigger
        )

    lifecycles = [
        ResourceLifecycle(
            resource,
            config.kubelet_socket_dir,
            functools.partial(servicer_for, resource),
            metrics,
            on_change=lambda: publisher.trigger(),
        )
        for resource in config.resources
    ]
    serving = Serving(view, lifecycles)
    metrics.watch_serving(serving.reason, view.podresources_age)
    publisher = Publisher(view, config.node_name, api, metrics, serving, plugin_address=config.plugin_address)

    liveness = LoopLiveness()

    http_server = None
    if config.metrics_port:
        try:
            http_server = serve_http(
                metrics,
                config.metrics_port,
                is_alive=liveness.alive,
                readiness=serving.reason,
                node=config.node_name,
            )
        except OSError as error:
            log.error("metrics.port_unavailable", port=config.metrics_port, error=str(error))
            await podresources.close()
            return 1

    async def register_after_first_read(lifecycle: ResourceLifecycle) -> None:
        # Kubelet admits pods as soon as devices are registered; before PodResources has answered, the plugin
        # could only refuse them (it cannot tell what is in use), so it does not offer devices yet.
        if not view.first_read.is_set():
            log.info("registration.deferred", resource=lifecycle.resource.value, reason="podresources_not_read")
            await view.first_read.wait()
        await lifecycle.run()

    jobs: dict[str, Coroutine[Any, Any, None]] = {
        "health": health.run(),
        "publisher": publisher.run(),
        "tick": liveness.run(),
    }
    if condition is not None:
        jobs["condition"] = condition.run()
    for lifecycle in lifecycles:
        jobs[f"lifecycle-{lifecycle.resource.short}"] = register_after_first_read(lifecycle)

    async def stop_serving() -> None:
        serving.stopping = True
        if api is None:
            return
        publisher.trigger()
        try:
            await asyncio.wait_for(publisher.stopping_published.wait(), STOP_PUBLISH_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("publish.stopping_timeout", node=config.node_name, waited=STOP_PUBLISH_TIMEOUT_SECONDS)

    try:
        exit_code = await _run_until_signal(jobs, stop_serving)
    finally:
        await podresources.close()
        if kernel_log is not None:
            kernel_log.close()
        if http_server is not None:
            http_server.shutdown()
    log.info("plugin.stopped", exit_code=exit_code)
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    return run_daemon("neuron-device-plugin", argv, load_config, run)


if __name__ == "__main__":
    raise SystemExit(main())
