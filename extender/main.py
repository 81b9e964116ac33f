"""`neuron-scheduler-extender`: flags (each also read from its upper-snake-case env var; the flag wins), wiring,
serving, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from kubernetes.config import ConfigException

from extender.bind import Binder
from extender.cache import ClusterView
from extender.kube import KINDS, KubeApi, Reflector, WatchEvent
from extender.metrics import ExtenderMetrics
from extender.server import ServerSettings, build_app, build_metrics_app
from neuroncli.flags import Flag, add_flags
from neuronlog import configure_logging, get_logger

__all__ = ["Config", "main", "parse_config", "reflectors_for", "tune_gc"]

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
    log_level: str
    max_body_bytes: int
    read_timeout: float
    handler_timeout: float
    watch_timeout: int


_FLAGS: tuple[Flag, ...] = (
    Flag("address", "0.0.0.0", "listen address"),
    Flag("port", "8888", "serves /filter /prioritize /bind /healthz /readyz /metrics; 0 = any free port", int),
    Flag("metrics-port", "0", "serve /metrics on this port instead; 0 = on --port", int),
    Flag("kubeconfig", "", "kubeconfig file; empty = in-cluster service account"),
    Flag("tls-cert-file", "", "serve HTTPS with this cert"),
    Flag("tls-key-file", "", "and this key"),
    Flag("max-body-bytes", str(64 * 1024 * 1024), "request body cap; larger bodies get 413", int),
    Flag("read-timeout", "10", "seconds to receive a request body; slower gets 408", float),
    Flag("handler-timeout", "4.5", "seconds to answer; keep below the scheduler's httpTimeout", float),
    Flag("watch-timeout", "300", "seconds each API watch stays open before it is renewed", int),
    Flag("standalone", "", "no API server: answer Nodes-mode filter/prioritize only", switch=True),
    Flag("log-level", "info", "", choices=("debug", "info", "warning", "error")),
)


def parse_config(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        prog="neuron-scheduler-extender",
        description="Scheduler extender: only nodes with a contiguous free Neuron block pass; best fit scores highest.",
    )
    add_flags(p, _FLAGS, os.environ)
    ns = p.parse_args(argv)
    if bool(ns.tls_cert_file) != bool(ns.tls_key_file):
        p.error("--tls-cert-file and --tls-key-file go together")
    if ns.max_body_bytes < 1024:
        p.error("--max-body-bytes must be at least 1024")
    return Config(
        address=ns.address, port=ns.port, metrics_port=ns.metrics_port, kubeconfig=ns.kubeconfig,
        standalone=ns.standalone, tls_cert_file=ns.tls_cert_file, tls_key_file=ns.tls_key_file,
        log_level=ns.log_level, max_body_bytes=ns.max_body_bytes, read_timeout=ns.read_timeout,
        handler_timeout=ns.handler_timeout, watch_timeout=ns.watch_timeout,
    )  # fmt: skip


def reflectors_for(
    api: KubeApi, view: ClusterView, loop: asyncio.AbstractEventLoop, *, watch_timeout: int
) -> list[Reflector]:
    """Node and pod reflectors that feed `view` on `loop` (not started)."""

    def deliver(event: WatchEvent) -> None:
        loop.call_soon_threadsafe(view.apply, event.kind, event.type, event.objects)

    return [Reflector(api, kind, deliver, watch_timeout=watch_timeout) for kind in KINDS]


def tune_gc() -> None:
    """Fewer, later collections. The cache holds millions of small long-lived objects at 5,000 nodes; with
    CPython's default thresholds a full collection walks them all, mid-request, every few thousand
    allocations. Freezing what start-up built and raising the first threshold keeps p99 flat."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _tls(cfg: Config) -> ssl.SSLContext | None:
    if not cfg.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    return context


async def _serve(cfg: Config) -> int:
    loop = asyncio.get_running_loop()
    view = ClusterView()
    metrics = ExtenderMetrics()
    metrics.watch_cache(lambda: view.size, view.staleness_seconds)
    binder: Binder | None = None
    reflectors: list[Reflector] = []
    if not cfg.standalone:
        try:
            api = KubeApi(cfg.kubeconfig)
        except (ConfigException, OSError) as err:
            log.error(
                "extender.no_api_server",
                kubeconfig=cfg.kubeconfig or "in-cluster",
                error=str(err),
                rule="without --standalone the extender needs an API server for its node cache and bind",
            )
            return 2

        reflectors = reflectors_for(api, view, loop, watch_timeout=cfg.watch_timeout)
        binder = Binder(api, view)
    settings = ServerSettings(
        max_body_bytes=cfg.max_body_bytes, read_timeout=cfg.read_timeout, handler_timeout=cfg.handler_timeout,
        standalone=cfg.standalone, serve_metrics=cfg.metrics_port == 0,
    )  # fmt: skip
    runners = [web.AppRunner(build_app(settings, view, binder, metrics), access_log=None)]
    if cfg.metrics_port:
        runners.append(web.AppRunner(build_metrics_app(metrics), access_log=None))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        ports = []
        for runner, port, tls in (
            (runners[0], cfg.port, _tls(cfg)),
            *((r, cfg.metrics_port, None) for r in runners[1:]),
        ):
            await runner.setup()
            site = web.TCPSite(runner, cfg.address, port, ssl_context=tls, backlog=1024)
            await site.start()
            ports.append(_bound_port(runner))
        log.info("extender.listening", address=cfg.address, port=ports[0], metrics_port=ports[1:] or ports[0],
                 tls=bool(cfg.tls_cert_file), standalone=cfg.standalone)  # fmt: skip
        for reflector in reflectors:
            reflector.start()
        await stop.wait()
        log.info("extender.stopping", rule="signal received")
    finally:
        for reflector in reflectors:
            reflector.stop()
        for runner in runners:
            await runner.cleanup()
    return 0


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_config(argv)
    configure_logging(cfg.log_level)
    tune_gc()
    try:
        return asyncio.run(_serve(cfg))
    except OSError as err:  # the port is taken, the cert file is missing...
        log.error("extender.start_failed", error=str(err), port=cfg.port)
        return 1
    except ssl.SSLError as err:
        log.error("extender.start_failed", error=str(err), rule="TLS cert/key must be a matching PEM pair")
        return 1


if __name__ == "__main__":
    sys.exit(main())
