"""The test cluster watched by a real Prometheus configured from deploy/monitoring/, as it would be on EKS.

- Scrape jobs: deploy/monitoring/monitors.yaml (and neuron-monitor-podmonitor.yaml), translated as
  prometheus-operator translates them (tests/cluster/promconfig.py); only the scrape interval is shortened.
- Targets: what Kubernetes service discovery would find for the pods deploy/ runs: one device-plugin pod per
  node (deploy/plugin/daemonset.yaml's template, on that node), the extender's pod behind its Service
  (deploy/extender/), and one neuron-monitor pod per node (the stand-in exporters), each at the loopback port
  where the real process listens.
- Rules: deploy/monitoring/prometheusrule.yaml's groups, extracted from the PrometheusRule object, unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import neuronmonitor, promconfig
from tests.cluster.harness import REPO_ROOT, Cluster, SimNode
from tests.cluster.neuronmonitor import NeuronMonitorStandIn
from tests.cluster.processes import free_port
from tests.cluster.prometheus import Prometheus

DEPLOY = REPO_ROOT / "deploy"
MONITORING = DEPLOY / "monitoring"
MONITOR_FILES = (MONITORING / "monitors.yaml", MONITORING / "neuron-monitor-podmonitor.yaml")
RULES = MONITORING / "prometheusrule.yaml"
INTERVAL = "1s"  # scrape and rule evaluation (deploy/ scrapes every 30 s)

Obj = dict[str, Any]


def deploy_object(path: Path, kind: str) -> Obj:
    (obj,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == kind]
    return obj  # type: ignore[no-any-return]


def rule_groups() -> list[Obj]:
    """The PrometheusRule object's groups, as prometheus-operator writes them into Prometheus's rule file."""
    return deploy_object(RULES, "PrometheusRule")["spec"]["groups"]  # type: ignore[no-any-return]


def alert_rules() -> list[Obj]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def monitors() -> list[Obj]:
    return [m for path in MONITOR_FILES for m in promconfig.load_monitors(path)]


def _suffix(*parts: str, length: int = 5) -> str:
    """A stable stand-in for the random suffix Kubernetes gives a controller's pods."""
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()
    return "".join("bcdfghjklmnpqrstvwxz2456789"[int(c, 16)] for c in digest[:length])


class Observed:
    """A real Prometheus over the cluster's plugins and extender. Call `publish_targets()` after nodes change."""

    def __init__(self, cluster: Cluster, workdir: Path, *, extra_rule_files: Iterable[Path] = ()) -> None:
        self.cluster = cluster
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "targets").mkdir(exist_ok=True)
        self.rules_file = workdir / "rules.yaml"
        self.rules_file.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
        self.jobs = promconfig.scrape_jobs(monitors(), workdir / "targets", interval=INTERVAL)
        self.extra_rule_files = list(extra_rule_files)
        self.prometheus = Prometheus(workdir / "prometheus", self._config())
        self.neuron_monitors: dict[str, NeuronMonitorStandIn] = {}
        self.extender_restarts = 0
        self._plugin = deploy_object(DEPLOY / "plugin" / "daemonset.yaml", "DaemonSet")
        self._extender = deploy_object(DEPLOY / "extender" / "deployment.yaml", "Deployment")
        self._service = deploy_object(DEPLOY / "extender" / "service.yaml", "Service")

    def _config(self) -> Obj:
        return promconfig.prometheus_config(
            self.jobs,
            [self.rules_file, *self.extra_rule_files],
            scrape_interval=INTERVAL,
            evaluation_interval=INTERVAL,
        )

    def start(self) -> Observed:
        """Give the extender its plain-HTTP metrics port (as deploy/ does), then start Prometheus."""
        if self.cluster.extender_metrics_port is None:
            self.cluster.extender_metrics_port = free_port()
            self.cluster.restart_extender()
        self.publish_targets()
        self.prometheus.start()
        return self

    def close(self) -> None:
        self.prometheus.stop()
        for standin in self.neuron_monitors.values():
            standin.close()
        self.neuron_monitors.clear()

    def add_rule_file(self, path: Path) -> None:
        """Load one more rule file next to the shipped rules (SIGHUP reload)."""
        self.extra_rule_files.append(path)
        self.prometheus.write_config(self._config())
        self.prometheus.reload()

    def remove_rule_file(self, path: Path) -> None:
        self.extra_rule_files.remove(path)
        self.prometheus.write_config(self._config())
        self.prometheus.reload()

    # ---- what service discovery would see -----------------------------------------------------------------

    def plugin_pod(self, node: SimNode) -> str:
        return f"{self._plugin['metadata']['name']}-{_suffix('plugin', node.name)}"

    @property
    def extender_pod(self) -> str:
        name = self._extender["metadata"]["name"]
        return f"{name}-{_suffix('rs', name, length=10)}-{_suffix('pod', str(self.extender_restarts))}"

    def neuron_monitor(self, node: SimNode) -> NeuronMonitorStandIn:
        if node.name not in self.neuron_monitors:
            serial = len(self.neuron_monitors) + 1
            self.neuron_monitors[node.name] = NeuronMonitorStandIn(node.name, node.instance_type, serial)
        return self.neuron_monitors[node.name]

    def targets(self) -> list[promconfig.Target]:
        targets: list[promconfig.Target] = []
        plugin_ns = self._plugin["metadata"]["namespace"]
        for node in self.cluster.nodes.values():
            if node.plugin_kind is None:
                continue
            template = self._plugin["spec"]["template"]
            pod = promconfig.pod_meta(
                template, namespace=plugin_ns, pod=self.plugin_pod(node), node=node.name, ip="127.0.0.1",
                controller=("DaemonSet", self._plugin["metadata"]["name"]),
            )  # fmt: skip
            targets += promconfig.pod_targets(template, pod, {"metrics": node.metrics_port})
            standin = self.neuron_monitor(node)
            pod = promconfig.pod_meta(
                neuronmonitor.TEMPLATE, namespace=neuronmonitor.NAMESPACE,
                pod=f"neuron-monitor-{_suffix('neuron-monitor', node.name)}", node=node.name, ip="127.0.0.1",
                controller=("DaemonSet", "neuron-monitor"),
            )  # fmt: skip
            targets += promconfig.pod_targets(neuronmonitor.TEMPLATE, pod, {8000: standin.port})
        template = self._extender["spec"]["template"]
        pod = promconfig.pod_meta(
            template, namespace=self._extender["metadata"]["namespace"], pod=self.extender_pod,
            node="control-plane", ip="127.0.0.1", controller=("ReplicaSet", self.extender_pod.rsplit("-", 1)[0]),
        )  # fmt: skip
        ports: Mapping[str | int, int] = {
            "https": self.cluster.extender_port,
            "metrics": self.cluster.extender_metrics_port or self.cluster.extender_port,
        }
        targets += promconfig.pod_targets(template, pod, ports)
        targets += promconfig.endpoints_targets(self._service, template, pod, ports)
        return targets

    def publish_targets(self) -> None:
        promconfig.write_targets(self.jobs, self.targets())
        live = {n for n in self.cluster.nodes}
        for name in list(self.neuron_monitors):
            if name not in live:
                self.neuron_monitors.pop(name).close()
