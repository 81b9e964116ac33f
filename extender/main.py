"""`neuron-scheduler-extender`: flags (each also read from its upper-snake-case env var; the flag wins), wiring,
serving, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from kubernetes.config import ConfigException

from extender.bind import Binder, BindSettings
from extender.cache import ClusterStore
from extender.forward import Forwarder
from extender.kube import KINDS, KubeApi, Reflector, WatchEvent
from extender.lease import BinderLease, LeaseSettings, binder_identity
from extender.listener import ConnectionLimits, Listener, effective_max_connections, raise_fd_limit
from extender.metrics import ExtenderMetrics
from extender.podcache import SeenPods
from extender.probe import PluginProbe
from extender.ratelog import Throttle
from extender.server import ServerSettings, build_app, build_metrics_app
from extender.tls import TlsFiles
from extender.verdicts import Verdicts
from extender.wire import WireError, object_key
from neuroncli.flags import Flag, add_flags
from neuronlog import configure_logging, get_logger

__all__ = ["Config", "main", "parse_config", "pending_reflector", "reflectors_for", "throttle_library_logs", "tune_gc"]

log = get_logger("extender")


@dataclass(frozen=True, slots=True)
class Config:
    address: str
    port: int
    metrics_port: int
    kubeconfig: str
    standalone: bool
    tls_cert_file: str
    tls_key_file: str
    tls_client_ca_file: str
    log_level: str
    max_body_bytes: int
    max_names_body_bytes: int
    max_inflight_bytes: int
    max_connections: int
    header_timeout: float
    idle_timeout: float
    read_timeout: float
    handler_timeout: float
    watch_timeout: int
    scheduler_name: str
    lease_name: str
    lease_namespace: str
    lease_duration: int
    advertise_address: str
    best_nodes: int


_MiB = 1024 * 1024
_SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_FLAGS: tuple[Flag, ...] = (
    Flag("address", "0.0.0.0", "listen address"),
    Flag("port", "8888", "serves /filter /filter-best /prioritize /bind /healthz /readyz /metrics; 0 = any free "
         "port", int),
    Flag("metrics-port", "0", "serve /metrics (and /healthz, /readyz) on this port too; 0 = on --port only", int),
    Flag("kubeconfig", "", "kubeconfig file; empty = in-cluster service account"),
    Flag("tls-cert-file", "", "serve HTTPS with this cert"),
    Flag("tls-key-file", "", "and this key"),
    Flag("tls-client-ca-file", "", "require client certificates signed by this CA (mutual TLS)"),
    Flag("max-body-bytes", str(64 * _MiB), "largest body accepted: the cap on a Nodes-mode (--standalone) "
         "filter/prioritize body; larger gets 413", int),
    Flag("max-names-body-bytes", str(4 * _MiB), "cap on a filter/prioritize body when the extender keeps its "
         "node cache (NodeNames mode); larger gets 413", int),
    Flag("max-inflight-bytes", str(192 * _MiB), "estimated memory all request bodies in flight may hold together, "
         "raw and decoded; more gets 503, one body decoding to more gets 413", int),
    Flag("max-connections", "256", "open client connections on --port; at the cap a new one replaces the "
         "longest-idle one, else it is refused", int),
    Flag("header-timeout", "5", "seconds from connect (or a kept-alive request's first byte) to a complete "
         "request head; slower gets 408 and is closed", float),
    Flag("idle-timeout", "120", "seconds a kept-alive connection may wait for its next request", float),
    Flag("read-timeout", "10", "seconds to receive a request body; slower gets 408", float),
    Flag("handler-timeout", "4.5", "seconds to answer once the body is in; keep below the scheduler's httpTimeout",
         float),
    Flag("watch-timeout", "300", "seconds each API watch stays open before it is renewed", int),
    Flag("scheduler-name", "neuron-contig-scheduler", "bind only pods with this spec.schedulerName"),
    Flag("lease-name", "neuron-contig-extender", "the coordination.k8s.io Lease whose holder is the one replica "
         "that binds (others forward to it); empty = no lease, safe with one replica only"),
    Flag("lease-namespace", "", "namespace of the Lease; empty = this pod's namespace (else default)"),
    Flag("lease-duration", "15", "seconds a binder lease lasts without renewal", int),
    Flag("advertise-address", "", "IP other replicas use to reach this one, published in the Lease; empty = "
         "--address if specific, else the IP the host name resolves to (the pod IP)"),
    Flag("best-nodes", "8", "the most nodes /filter-best passes: those with the best score that fit, the "
         "scheduler's order breaking ties", int),
    Flag("standalone", "", "no API server: answer Nodes-mode filter/prioritize only", switch=True),
    Flag("log-level", "info", "", choices=("debug", "info", "warning", "error")),
)  # fmt: skip


def parse_config(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="neuron-scheduler-extender",
        description="Scheduler extender: only nodes with a contiguous free Neuron block pass; best fit scores highest.",
    )
    add_flags(p, _FLAGS, os.environ)
    ns = p.parse_args(argv)
    if bool(ns.tls_cert_file) != bool(ns.tls_key_file):
        p.error("--tls-cert-file and --tls-key-file go together")
    if ns.tls_client_ca_file and not ns.tls_cert_file:
        p.error("--tls-client-ca-file needs --tls-cert-file and --tls-key-file (mutual TLS is TLS)")
    for flag in ("max_body_bytes", "max_names_body_bytes"):
        if getattr(ns, flag) < 1024:
            p.error(f"--{flag.replace('_', '-')} must be at least 1024")
    if ns.max_inflight_bytes < 1 * _MiB:
        p.error("--max-inflight-bytes must be at least 1 MiB")
    if ns.best_nodes < 1:
        p.error("--best-nodes must be at least 1")
    if ns.max_connections < 8:
        p.error("--max-connections must be at least 8")
    if ns.advertise_address:
        try:
            ipaddress.ip_address(ns.advertise_address)
        except ValueError:
            p.error(f"--advertise-address must be an IP address, got {ns.advertise_address!r}")
    if not 3 <= ns.lease_duration <= 300:
        p.error("--lease-duration must be from 3 to 300 seconds")
    for flag in ("header_timeout", "idle_timeout", "read_timeout", "handler_timeout"):
        if not getattr(ns, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} must be above 0")
    return Config(
        address=ns.address, port=ns.port, metrics_port=ns.metrics_port, kubeconfig=ns.kubeconfig,
        standalone=ns.standalone, tls_cert_file=ns.tls_cert_file, tls_key_file=ns.tls_key_file,
        tls_client_ca_file=ns.tls_client_ca_file, log_level=ns.log_level, max_body_bytes=ns.max_body_bytes,
        max_names_body_bytes=ns.max_names_body_bytes, max_inflight_bytes=ns.max_inflight_bytes,
        max_connections=ns.max_connections, header_timeout=ns.header_timeout, idle_timeout=ns.idle_timeout,
        read_timeout=ns.read_timeout, handler_timeout=ns.handler_timeout, watch_timeout=ns.watch_timeout,
        scheduler_name=ns.scheduler_name, lease_name=ns.lease_name, lease_namespace=ns.lease_namespace,
        lease_duration=ns.lease_duration, advertise_address=ns.advertise_address, best_nodes=ns.best_nodes,
    )  # fmt: skip


def reflectors_for(
    api: KubeApi, store: ClusterStore, loop: asyncio.AbstractEventLoop, *, watch_timeout: int
) -> list[Reflector]:
    """Node and pod reflectors that feed `store` on `loop` (not started)."""

    def deliver(event: WatchEvent) -> None:
        loop.call_soon_threadsafe(store.apply, event.kind, event.type, event.objects)

    return [Reflector(api, kind, deliver, watch_timeout=watch_timeout) for kind in KINDS]


def pending_reflector(
    api: KubeApi, metrics: ExtenderMetrics, loop: asyncio.AbstractEventLoop, *, watch_timeout: int
) -> Reflector:
    """A watch on our scheduler's unbound pods, so the pending count forgets a pod once it is deleted or bound
    (it leaves the watch's selector: the API server sends DELETED)."""

    def on_loop(event: WatchEvent) -> None:
        keys = []
        for doc in event.objects:
            try:
                keys.append(object_key("pods", doc))
            except WireError:
                continue  # a pod without a name cannot be one we counted
        if event.type == "SYNC":
            metrics.keep_pending_only(keys)
        elif event.type == "DELETED":
            metrics.forget_pods(keys)

    def deliver(event: WatchEvent) -> None:
        loop.call_soon_threadsafe(on_loop, event)

    return Reflector(api, "pending", deliver, watch_timeout=watch_timeout)


def tune_gc() -> None:
    """Fewer, later collections. The cache holds millions of small long-lived objects at 5,000 nodes; with
    CPython's default thresholds a full collection walks them all, mid-request, every few thousand
    allocations. Freezing what start-up built and raising the first threshold keeps p99 flat."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class _Throttled(logging.Filter):
    """Lets through one record per (logger, message) per interval: asyncio and aiohttp log every failed TLS
    read or malformed request on their own, and a flood of those must not become a flood of lines."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        return self._throttle.admit((record.name, str(record.msg)[:200])) is not None


def throttle_library_logs() -> None:
    for name in ("asyncio", "aiohttp.server", "aiohttp.web", "aiohttp.access"):
        logging.getLogger(name).addFilter(_Throttled())


async def _serve(cfg: Config) -> int:
    loop = asyncio.get_running_loop()
    store = ClusterStore()
    verdicts = Verdicts(store)
    metrics = ExtenderMetrics()
    metrics.watch_cache(lambda: store.size, store.staleness_seconds)
    tls = _tls_files(cfg, metrics)
    identity = binder_identity()
    api: KubeApi | None = None
    binder: Binder | None = None
    reflectors: list[Reflector] = []
    if not cfg.standalone:
        try:
            api = KubeApi(cfg.kubeconfig, scheduler_name=cfg.scheduler_name)
        except (ConfigException, OSError) as err:
            log.error(
                "extender.no_api_server",
                kubeconfig=cfg.kubeconfig or "in-cluster",
                error=str(err),
                rule="without --standalone the extender needs an API server for its node cache and bind",
            )
            return 2
        reflectors = reflectors_for(api, store, loop, watch_timeout=cfg.watch_timeout)
        reflectors.append(pending_reflector(api, metrics, loop, watch_timeout=cfg.watch_timeout))
        pods = next(r for r in reflectors if r.kind == "pods")
        binder = Binder(
            api, verdicts, SeenPods(), settings=BindSettings(scheduler_name=cfg.scheduler_name),
            forwarder=Forwarder(identity, tls.client_context if tls else None), probe=PluginProbe(),
            refresh_pods=pods.relist, on_outcome=lambda o: metrics.bind_outcome(o.reason, o.forwarded, o.ok),
        )  # fmt: skip
    settings = ServerSettings(
        max_body_bytes=cfg.max_body_bytes, max_names_body_bytes=cfg.max_names_body_bytes,
        max_inflight_bytes=cfg.max_inflight_bytes, read_timeout=cfg.read_timeout,
        handler_timeout=cfg.handler_timeout, standalone=cfg.standalone, best_nodes=cfg.best_nodes,
        serve_metrics=cfg.metrics_port == 0,
    )  # fmt: skip
    fd_limit = raise_fd_limit()
    listeners_count = 2 if cfg.metrics_port else 1
    max_connections = effective_max_connections(cfg.max_connections, fd_limit, listeners_count)
    if max_connections < cfg.max_connections:
        log.warning("extender.connections_lowered", max_connections=max_connections, fd_limit=fd_limit,
                    rule="--max-connections lowered to fit under the file-descriptor limit")  # fmt: skip
    limits = ConnectionLimits(max_connections=max_connections, header_timeout=cfg.header_timeout,
                              idle_timeout=cfg.idle_timeout)  # fmt: skip
    main_runner = web.AppRunner(build_app(settings, verdicts, binder, metrics), access_log=None, handle_signals=False)
    runners = [main_runner]
    await main_runner.setup()
    listeners = [
        Listener(main_runner, cfg.address, cfg.port, limits, tls=tls.server_context if tls else None,
                 on_reject=metrics.http_rejected, name="http"),
    ]  # fmt: skip
    if cfg.metrics_port:
        metrics_runner = web.AppRunner(build_metrics_app(metrics, settings, store), access_log=None,
                                       handle_signals=False)  # fmt: skip
        await metrics_runner.setup()
        runners.append(metrics_runner)
        listeners.append(Listener(metrics_runner, cfg.address, cfg.metrics_port, limits,
                                  on_reject=metrics.http_rejected, name="metrics_http"))  # fmt: skip
    for name, listener in zip(("main", "metrics"), listeners, strict=False):
        metrics.watch_connections(name, _counter(listener))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lease: BinderLease | None = None
    lease_task: asyncio.Task[None] | None = None
    try:
        ports = [await listener.start() for listener in listeners]
        log.info("extender.listening", address=cfg.address, port=ports[0], metrics_port=ports[1:] or ports[0],
                 tls=tls is not None, mutual_tls=bool(tls and tls.mutual), standalone=cfg.standalone,
                 max_connections=max_connections)  # fmt: skip
        if tls is None:
            log.warning("extender.plain_http", port=ports[0],
                        rule="no --tls-cert-file: serving plain HTTP; anyone who can reach the port can call "
                        "/filter, /prioritize and /bind (deploy/ runs mutual TLS)")  # fmt: skip
        if binder is not None and api is not None:
            if cfg.lease_name:
                lease = BinderLease(api, _lease_settings(cfg, identity, ports[0], tls is not None),
                                    on_change=_on_lease_change(metrics, binder))  # fmt: skip
                binder.lease = lease
                lease_task = loop.create_task(lease.run())
            else:
                log.warning("extender.no_lease", rule="--lease-name is empty: this replica binds on its own, "
                            "which is safe with one replica only")  # fmt: skip
        for reflector in reflectors:
            reflector.start()
        await stop.wait()
        log.info("extender.stopping", rule="signal received")
    finally:
        if lease is not None and binder is not None:
            await lease.step_down(binder.drained)  # stop binding, finish binds in flight, hand the lease back
        if lease_task is not None:
            lease_task.cancel()
        for reflector in reflectors:
            reflector.stop()
        for listener in listeners:
            await listener.stop()
        for runner in runners:
            await runner.cleanup()
        if binder is not None:
            await binder.close()
        if api is not None:
            await api.close()
        if lease is not None:
            lease.close()
    return 0


def _on_lease_change(metrics: ExtenderMetrics, binder: Binder) -> Callable[[bool], None]:
    def changed(holding: bool) -> None:
        metrics.lease_held(holding)
        binder.lease_changed(holding)

    return changed


def _lease_settings(cfg: Config, identity: str, port: int, tls: bool) -> LeaseSettings:
    host = _advertise_host(cfg)
    url = f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}" if host else ""
    namespace = cfg.lease_namespace or _own_namespace()
    duration = float(cfg.lease_duration)
    return LeaseSettings(cfg.lease_name, namespace, identity, url, duration=duration, renew_every=duration / 7.5,
                         margin=max(1.0, duration / 15))  # fmt: skip


def _advertise_host(cfg: Config) -> str:
    """Where other replicas reach this one: --advertise-address, else a specific --address, else the address
    the host (pod) name resolves to, as in a pod's /etc/hosts."""
    if cfg.advertise_address:
        return cfg.advertise_address
    if cfg.address not in ("", "0.0.0.0", "::"):
        return cfg.address
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return ""


def _own_namespace() -> str:
    try:
        return Path(_SERVICE_ACCOUNT_NAMESPACE).read_text().strip()[:63] or "default"
    except OSError:
        return "default"


def _counter(listener: Listener) -> Callable[[], float]:
    return lambda: listener.open_connections


def _tls_files(cfg: Config, metrics: ExtenderMetrics) -> TlsFiles | None:
    if not cfg.tls_cert_file:
        return None
    return TlsFiles(cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_client_ca_file, on_reload=metrics.tls_reloaded)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(argv)
    configure_logging(cfg.log_level)
    throttle_library_logs()
    tune_gc()
    try:
        return asyncio.run(_serve(cfg))
    except OSError as err:  # the port is taken, the cert file is missing...
        log.error("extender.start_failed", error=str(err), port=cfg.port)
        return 1
    except ssl.SSLError as err:
        log.error("extender.start_failed", error=str(err),
                  rule="TLS cert/key must be a matching PEM pair, and the client CA a PEM certificate")  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
