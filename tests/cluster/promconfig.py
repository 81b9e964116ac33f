"""A Prometheus configuration generated from deploy/monitoring/'s PodMonitor and ServiceMonitor objects, the way
prometheus-operator generates it, with file-based discovery standing in for Kubernetes service discovery.

prometheus-operator (v0.93.0, pkg/prometheus/promcfg.go: generatePodMonitorConfig, generateServiceMonitorConfig)
turns each endpoint of a monitor into one scrape job: `kubernetes_sd_configs` (role `pod` or `endpoints`, the
monitor's namespaces), a fixed prefix of relabelings (keep the selected pods or services and the named port; set
`namespace`, `container`, `pod`, `service`, `job`, `endpoint`), then the monitor's own `relabelings`, then the
sharding rules. `scrape_jobs` writes the same jobs, field by field, for the fields the operator translates that
our monitors may use, and refuses any other field: a monitors.yaml edit this translation does not cover fails the
tests instead of drifting from what a real Prometheus would run.

Only discovery differs. The test cluster runs no pods for Kubernetes service discovery to find, so each job reads
a file of targets (`file_sd_configs`) carrying the `__meta_kubernetes_*` labels that discovery sets for a pod or an
endpoint: `pod_targets` and `endpoints_targets` build them from deploy/'s DaemonSet, Deployment and Service, with
the real loopback addresses of the processes. Every pod is offered to every job of its role and namespace, as
discovery does, so the monitors' own keep rules decide what is scraped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

OPERATOR_VERSION = "v0.93.0"
SHARD = "0"  # the config reloader substitutes $(SHARD); one shard here
MONITOR_KINDS = ("PodMonitor", "ServiceMonitor")

# Fields of the monitors that this translation knows; any other one is refused (see the module docstring).
_SPEC_FIELDS = {
    "PodMonitor": {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel", "podTargetLabels"},
    "ServiceMonitor": {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels"},
}
_ENDPOINT_FIELDS = {
    "PodMonitor": {"port", "portNumber", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                   "relabelings", "metricRelabelings"},
    "ServiceMonitor": {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings",
                       "metricRelabelings"},
}  # fmt: skip
_SELECTOR_FIELDS = {"matchLabels", "matchExpressions"}
_RELABEL_FIELDS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}


class UnsupportedMonitor(ValueError):
    """The monitor uses a field this translation does not reproduce."""


@dataclass(frozen=True)
class ScrapeJob:
    name: str
    role: str  # "pod" | "endpoints"
    namespaces: tuple[str, ...]  # () = every namespace
    config: Obj
    targets_file: Path


@dataclass
class Target:
    """One discovered target: `__address__` plus the meta labels Kubernetes service discovery would attach."""

    role: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.labels["__meta_kubernetes_namespace"]


def load_monitors(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") in MONITOR_KINDS]


def scrape_jobs(monitors: Iterable[Obj], targets_dir: Path, *, interval: str | None = None) -> list[ScrapeJob]:
    """One job per monitor endpoint. `interval` overrides every endpoint's scrape interval (the tests scrape
    every second instead of every 30 s); nothing else is changed."""
    jobs = []
    for monitor in monitors:
        kind, spec = monitor["kind"], monitor["spec"]
        _only(spec, _SPEC_FIELDS[kind], f"{kind} spec")
        _only(spec["selector"], _SELECTOR_FIELDS, f"{kind} selector")
        endpoints = spec["podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"]
        for i, endpoint in enumerate(endpoints):
            _only(endpoint, _ENDPOINT_FIELDS[kind], f"{kind} endpoint")
            build = _pod_monitor_job if kind == "PodMonitor" else _service_monitor_job
            jobs.append(build(monitor, endpoint, i, targets_dir, interval))
    return jobs


def prometheus_config(
    jobs: Sequence[ScrapeJob], rule_files: Sequence[Path], *, scrape_interval: str, evaluation_interval: str
) -> Obj:
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [job.config for job in jobs],
    }


def write_targets(jobs: Sequence[ScrapeJob], targets: Iterable[Target]) -> None:
    """Offer every target to every job of its role and namespace (atomically: Prometheus watches the files)."""
    offered = list(targets)
    for job in jobs:
        mine = [
            {"targets": [t.labels["__address__"]], "labels": {k: v for k, v in t.labels.items() if k != "__address__"}}
            for t in offered
            if t.role == job.role and (not job.namespaces or t.namespace in job.namespaces)
        ]
        tmp = job.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(mine, indent=1, sort_keys=True))
        tmp.replace(job.targets_file)


# ---- the operator's translation ---------------------------------------------------------------------------


def _pod_monitor_job(monitor: Obj, ep: Obj, i: int, targets_dir: Path, interval: str | None) -> ScrapeJob:
    meta, spec = monitor["metadata"], monitor["spec"]
    namespace, name = meta["namespace"], meta["name"]
    job_name = f"podMonitor/{namespace}/{name}/{i}"
    relabelings: list[Obj] = [_init_relabeling()]
    relabelings.append(_running_filter())
    relabelings += _selector_relabelings(spec["selector"], "pod")
    if ep.get("port"):
        relabelings.append(_keep(["__meta_kubernetes_pod_container_port_name"], ep["port"]))
    elif ep.get("portNumber"):
        relabelings.append(_keep(["__meta_kubernetes_pod_container_port_number"], str(ep["portNumber"])))
    relabelings += [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    relabelings += _target_labels("pod", spec.get("podTargetLabels", ()))
    relabelings.append({"target_label": "job", "replacement": f"{namespace}/{name}"})
    if spec.get("jobLabel"):
        relabelings.append(_copy_label(f"__meta_kubernetes_pod_label_{_sanitize(spec['jobLabel'])}", "job"))
    if ep.get("port"):
        relabelings.append({"target_label": "endpoint", "replacement": ep["port"]})
    relabelings += _user_relabelings(ep.get("relabelings", ()))
    relabelings += _sharding()
    return _job(job_name, "pod", _namespaces(spec, namespace), ep, relabelings, targets_dir, interval)


def _service_monitor_job(monitor: Obj, ep: Obj, i: int, targets_dir: Path, interval: str | None) -> ScrapeJob:
    meta, spec = monitor["metadata"], monitor["spec"]
    namespace, name = meta["namespace"], meta["name"]
    job_name = f"serviceMonitor/{namespace}/{name}/{i}"
    relabelings: list[Obj] = [_init_relabeling()]
    relabelings += _selector_relabelings(spec["selector"], "service")
    if ep.get("port"):
        relabelings.append(_keep(["__meta_kubernetes_endpoint_port_name"], ep["port"]))
    address = ["__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"]
    relabelings += [
        {"source_labels": address, "separator": ";", "regex": "Node;(.*)", "replacement": "${1}",
         "target_label": "node"},
        {"source_labels": address, "separator": ";", "regex": "Pod;(.*)", "replacement": "${1}",
         "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    ]  # fmt: skip
    relabelings.append(_running_filter())
    relabelings += _target_labels("service", spec.get("targetLabels", ()))
    relabelings += _target_labels("pod", spec.get("podTargetLabels", ()))
    relabelings.append(
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"}
    )
    if spec.get("jobLabel"):
        relabelings.append(_copy_label(f"__meta_kubernetes_service_label_{_sanitize(spec['jobLabel'])}", "job"))
    if ep.get("port"):
        relabelings.append({"target_label": "endpoint", "replacement": ep["port"]})
    relabelings += _user_relabelings(ep.get("relabelings", ()))
    relabelings += _sharding()
    return _job(job_name, "endpoints", _namespaces(spec, namespace), ep, relabelings, targets_dir, interval)


def _job(
    name: str,
    role: str,
    namespaces: tuple[str, ...],
    ep: Obj,
    relabelings: list[Obj],
    targets_dir: Path,
    interval: str | None,
) -> ScrapeJob:
    targets_file = targets_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".json")
    config: Obj = {"job_name": name, "honor_labels": bool(ep.get("honorLabels", False))}
    # In place of kubernetes_sd_configs: {role, namespaces: {names: [...]}}.
    config["file_sd_configs"] = [{"files": [str(targets_file)]}]
    if interval or ep.get("interval"):
        config["scrape_interval"] = interval or ep["interval"]
    if ep.get("scrapeTimeout"):
        config["scrape_timeout"] = ep["scrapeTimeout"]
    if ep.get("path"):
        config["metrics_path"] = ep["path"]
    if ep.get("scheme"):
        config["scheme"] = ep["scheme"]
    config["relabel_configs"] = relabelings
    if ep.get("metricRelabelings"):
        config["metric_relabel_configs"] = _user_relabelings(ep["metricRelabelings"])
    return ScrapeJob(name, role, namespaces, config, targets_file)


def _namespaces(spec: Obj, own: str) -> tuple[str, ...]:
    selector = spec.get("namespaceSelector") or {}
    _only(selector, {"any", "matchNames"}, "namespaceSelector")
    if selector.get("any"):
        return ()
    return tuple(selector.get("matchNames") or (own,))


def _init_relabeling() -> Obj:
    return {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}


def _running_filter() -> Obj:
    return {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"}


def _keep(source_labels: list[str], regex: str) -> Obj:
    return {"action": "keep", "source_labels": source_labels, "regex": regex}


def _selector_relabelings(selector: Obj, role: str) -> list[Obj]:
    prefix = f"__meta_kubernetes_{role}_"
    out = []
    for key in sorted(selector.get("matchLabels") or {}):
        name = _sanitize(key)
        out.append(
            _keep([f"{prefix}label_{name}", f"{prefix}labelpresent_{name}"], f"({selector['matchLabels'][key]});true")
        )
    for exp in selector.get("matchExpressions") or ():
        name, op, values = _sanitize(exp["key"]), exp["operator"], "|".join(exp.get("values") or ())
        if op in ("In", "NotIn"):
            rule = _keep([f"{prefix}label_{name}", f"{prefix}labelpresent_{name}"], f"({values});true")
        elif op in ("Exists", "DoesNotExist"):
            rule = _keep([f"{prefix}labelpresent_{name}"], "true")
        else:
            raise UnsupportedMonitor(f"selector operator {op!r}")
        if op in ("NotIn", "DoesNotExist"):
            rule["action"] = "drop"
        out.append(rule)
    return out


def _target_labels(role: str, names: Iterable[str]) -> list[Obj]:
    return [_copy_label(f"__meta_kubernetes_{role}_label_{_sanitize(n)}", _sanitize(n)) for n in names]


def _copy_label(source: str, target: str) -> Obj:
    return {"source_labels": [source], "target_label": target, "regex": "(.+)", "replacement": "${1}"}


def _user_relabelings(relabelings: Iterable[Obj]) -> list[Obj]:
    """The operator's generateRelabelConfig: camelCase fields to snake_case, the action lower-cased."""
    out = []
    for rc in relabelings:
        _only(rc, _RELABEL_FIELDS, "relabeling")
        item: Obj = {}
        if rc.get("sourceLabels"):
            item["source_labels"] = list(rc["sourceLabels"])
        if "separator" in rc:
            item["separator"] = rc["separator"]
        if rc.get("targetLabel"):
            item["target_label"] = rc["targetLabel"]
        if rc.get("regex"):
            item["regex"] = rc["regex"]
        if rc.get("modulus"):
            item["modulus"] = rc["modulus"]
        if "replacement" in rc:
            item["replacement"] = rc["replacement"]
        if rc.get("action"):
            item["action"] = str(rc["action"]).lower()
        out.append(item)
    return out


def _sharding() -> list[Obj]:
    return [
        {"source_labels": ["__address__", "__tmp_hash"], "target_label": "__tmp_hash", "regex": "(.+);",
         "replacement": "$1", "action": "replace"},
        {"source_labels": ["__tmp_hash"], "target_label": "__tmp_hash", "modulus": 1, "action": "hashmod"},
        {"source_labels": ["__tmp_hash", "__tmp_disable_sharding"], "regex": f"{SHARD};|.+;.+", "action": "keep"},
    ]  # fmt: skip


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _only(obj: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise UnsupportedMonitor(
            f"{what} uses {sorted(unknown)}, which tests/cluster/promconfig.py does not translate: add it there, "
            f"as prometheus-operator {OPERATOR_VERSION} translates it"
        )


# ---- what Kubernetes service discovery would find ---------------------------------------------------------


def pod_meta(
    template: Obj, *, namespace: str, pod: str, node: str, ip: str, controller: tuple[str, str]
) -> dict[str, str]:
    """The `__meta_kubernetes_pod_*` labels of a running pod made from `template` (a pod template)."""
    labels = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_node_name": node,
        "__meta_kubernetes_pod_host_ip": ip,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_controller_kind": controller[0],
        "__meta_kubernetes_pod_controller_name": controller[1],
    }
    for key, value in (template["metadata"].get("labels") or {}).items():
        labels[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = str(value)
        labels[f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"] = "true"
    return labels


def pod_targets(template: Obj, pod_labels: Mapping[str, str], ports: Mapping[str | int, int]) -> list[Target]:
    """Role `pod`: one target per declared container port. Its address is where the process really listens
    (`ports`: port name or declared number -> loopback port; a port not listed keeps its declared number, and
    nothing answers there); the meta labels keep the declared port, as the pod spec says."""
    targets = []
    for container in template["spec"]["containers"]:
        for port in container.get("ports") or ():
            labels = dict(pod_labels)
            labels.update(_container_port_meta(container, port))
            labels["__address__"] = f"{pod_labels['__meta_kubernetes_pod_ip']}:{_real_port(port, ports)}"
            targets.append(Target("pod", labels))
    return targets


def endpoints_targets(
    service: Obj, template: Obj, pod_labels: Mapping[str, str], ports: Mapping[str | int, int]
) -> list[Target]:
    """Role `endpoints`: one target per port of `service` on the pod behind it (ready, pod-backed)."""
    meta = service["metadata"]
    base = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_endpoints_name": meta["name"],
        "__meta_kubernetes_service_name": meta["name"],
        "__meta_kubernetes_endpoint_ready": "true",
        "__meta_kubernetes_endpoint_node_name": pod_labels["__meta_kubernetes_pod_node_name"],
        "__meta_kubernetes_endpoint_address_target_kind": "Pod",
        "__meta_kubernetes_endpoint_address_target_name": pod_labels["__meta_kubernetes_pod_name"],
    }
    for key, value in (meta.get("labels") or {}).items():
        for prefix in ("__meta_kubernetes_service_label_", "__meta_kubernetes_endpoints_label_"):
            base[prefix + _sanitize(key)] = str(value)
        for prefix in ("__meta_kubernetes_service_labelpresent_", "__meta_kubernetes_endpoints_labelpresent_"):
            base[prefix + _sanitize(key)] = "true"
    by_target = {
        key: (c, p)
        for c in template["spec"]["containers"]
        for p in c.get("ports") or ()
        for key in (p.get("name"), p["containerPort"])
        if key is not None
    }
    targets = []
    for service_port in service["spec"]["ports"]:
        container, port = by_target[service_port.get("targetPort", service_port["port"])]
        labels = {**pod_labels, **base, **_container_port_meta(container, port)}
        labels["__meta_kubernetes_endpoint_port_name"] = service_port.get("name", "")
        labels["__meta_kubernetes_endpoint_port_protocol"] = service_port.get("protocol", "TCP")
        labels["__address__"] = f"{pod_labels['__meta_kubernetes_pod_ip']}:{_real_port(port, ports)}"
        targets.append(Target("endpoints", labels))
    return targets


def _real_port(port: Obj, ports: Mapping[str | int, int]) -> int:
    return ports.get(port.get("name", ""), ports.get(port["containerPort"], port["containerPort"]))


def _container_port_meta(container: Obj, port: Obj) -> dict[str, str]:
    return {
        "__meta_kubernetes_pod_container_name": container["name"],
        "__meta_kubernetes_pod_container_image": str(container.get("image", "")),
        "__meta_kubernetes_pod_container_init": "false",
        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
        "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
    }
