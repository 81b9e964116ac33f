"""A stand-in for neuron-monitor's Prometheus exporter, for the per-pod utilization join. A mock by necessity:
neuron-monitor needs the Neuron driver and runtime, which cannot run here.

The series are shaped as aws-neuron-sdk's `neuron-monitor-prometheus.py` shapes them (its
`process_neuroncore_counters`): `neuroncore_utilization_ratio`, a gauge of 0..1 per NeuronCore in use, labelled
with the instance labels (`instance_name`, `instance_id`, `instance_type`, `availability_zone`, `region`,
`subnet_id`), the runtime's `runtime_tag`, and `neuroncore` (the node-wide core index). No label names the node
or the device: on Kubernetes, `node` comes from the scrape (deploy/monitoring/neuron-monitor-podmonitor.yaml).

It is served over real HTTP, one per node, as AWS's neuron-monitor DaemonSet runs one pod per node
(src/k8/k8s-neuron-monitor-daemonset.yml: namespace `neuron-monitor`, pod labels `app: neuron-monitor` and
`version: v1`, one unnamed container port 8000); `TEMPLATE` is that pod template's part service discovery sees.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

NAMESPACE = "neuron-monitor"
INSTANCE_LABELS = ("instance_name", "instance_id", "instance_type", "availability_zone", "region", "subnet_id")
TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"app": "neuron-monitor", "version": "v1"}},
    "spec": {"containers": [{"name": "neuron-monitor", "ports": [{"containerPort": 8000}]}]},
}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a scrape cut short when Prometheus stops is not worth a traceback


class NeuronMonitorStandIn:
    def __init__(self, node: str, instance_type: str, serial: int) -> None:
        self.node = node
        self.instance = {
            "instance_name": "",
            "instance_id": f"i-0{serial:016x}",
            "instance_type": instance_type,
            "availability_zone": "us-west-2d",
            "region": "us-west-2",
            "subnet_id": "subnet-0123456789abcdef0",
        }
        self.registry = CollectorRegistry()
        self.utilization = Gauge(
            "neuroncore_utilization_ratio",
            "NeuronCore utilization ratio",
            [*INSTANCE_LABELS, "runtime_tag", "neuroncore"],
            registry=self.registry,
        )
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=f"neuron-monitor-{node}", daemon=True).start()

    def set_runtimes(self, runtimes: Mapping[str, Mapping[int, float]]) -> None:
        """runtime_tag -> {core: utilization 0..1}: the cores each Neuron runtime on the node uses."""
        self.utilization.clear()
        for tag, cores in runtimes.items():
            for core, ratio in cores.items():
                self.utilization.labels(*self.instance.values(), tag, str(core)).set(ratio)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
