"""Monitoring: the PrometheusRule passes promtool and its unit tests, every alert carries runbook text,
and the rules and the Grafana dashboard use only metric names from docs/CONTRACTS.md."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.contracts import contract_metrics, series_names
from tests.deploy.tools import CHART, DEPLOY, Obj, find, kustomize, must, tool

MONITORING = DEPLOY / "monitoring"
REQUIRED_ALERTS = {
    "NeuronDeviceUnhealthy",
    "NeuronDevicePluginNotRegistered",
    "NeuronNodeStateStale",
    "NeuronDevicePluginDown",
    "NeuronExtenderViewStale",
    "NeuronNodeStatePublishFailing",
    "NeuronPodsPendingNoContiguousBlock",
    "NeuronExtenderErrorRateHigh",
    "NeuronExtenderLatencyHigh",
    "NeuronFragmentationHigh",
}


def rule_groups() -> dict[str, Any]:
    return yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]  # type: ignore[no-any-return]


def alerts() -> list[Obj]:
    return [rule for group in rule_groups()["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard() -> Obj:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())  # type: ignore[no-any-return]


def dashboard_exprs(doc: Obj) -> list[str]:
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for variable in doc["templating"]["list"]:
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return exprs


def test_contract_metrics_were_found() -> None:
    """Guards the parser below: CONTRACTS.md names 33 metrics, 2 of them histograms."""
    metrics = contract_metrics()
    assert len(metrics) == 33
    assert {n for n, k in metrics.items() if k == "histogram"} == {
        "neuron_contig_plugin_rpc_duration_seconds",
        "neuron_contig_extender_request_duration_seconds",
    }


@pytest.mark.parametrize("source", ["deploy", "chart"])
def test_promtool_check_rules(tmp_path: Path, source: str) -> None:
    rules = tmp_path / "prometheus-rules.yaml"
    if source == "deploy":
        rules.write_text(yaml.safe_dump(rule_groups()))
    else:
        shutil.copy(CHART / "files" / "prometheus-rules.yaml", rules)
    out = must([tool("promtool"), "check", "rules", str(rules)])
    assert f"SUCCESS: {len(alerts())} rules found" in out


def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "prometheus-rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    shutil.copy(MONITORING / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    out = must([tool("promtool"), "test", "rules", "alerts-test.yaml"], cwd=tmp_path)
    assert "SUCCESS" in out
    tested = {
        t["alertname"]
        for case in yaml.safe_load((MONITORING / "alerts-test.yaml").read_text())["tests"]
        for t in case["alert_rule_test"]
    }
    assert {"NeuronDeviceUnhealthy", "NeuronPodsPendingNoContiguousBlock"} <= tested


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """Loosen the unhealthy-device rule to fire at once: the unit tests must catch it."""
    groups = rule_groups()
    for group in groups["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "NeuronDeviceUnhealthy":
                rule["for"] = "0m"
    (tmp_path / "prometheus-rules.yaml").write_text(yaml.safe_dump(groups))
    shutil.copy(MONITORING / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    from tests.deploy.tools import run

    result = run([tool("promtool"), "test", "rules", "alerts-test.yaml"], cwd=tmp_path)
    assert result.returncode != 0 and "NeuronDeviceUnhealthy" in result.stdout + result.stderr


def test_every_required_alert_exists_with_runbook_text() -> None:
    by_name = {a["alert"]: a for a in alerts()}
    assert set(by_name) >= REQUIRED_ALERTS
    for name, alert in by_name.items():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        for annotation in ("summary", "description", "runbook"):
            assert len(alert["annotations"].get(annotation, "")) > 20, f"{name}: {annotation}"
        assert alert["annotations"]["runbook"].startswith("1. "), f"{name}: runbook gives steps"


def test_rules_use_only_contract_metrics() -> None:
    used = set().union(*(series_names(a["expr"]) for a in alerts()))
    assert used and used <= set(contract_metrics()), used - set(contract_metrics())


def test_dashboard_parses_and_uses_only_contract_metrics() -> None:
    doc = dashboard()
    exprs = dashboard_exprs(doc)
    used = set().union(*(series_names(e) for e in exprs))
    assert used <= set(contract_metrics()), used - set(contract_metrics())
    # Device maps, allocations, latency, fragmentation and health are all on it.
    assert {
        "neuron_contig_plugin_device_healthy",
        "neuron_contig_plugin_devices",
        "neuron_contig_plugin_allocations_total",
        "neuron_contig_plugin_rpc_duration_seconds",
        "neuron_contig_extender_request_duration_seconds",
        "neuron_contig_plugin_largest_free_block",
        "neuron_contig_extender_pods_unschedulable",
    } <= used
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert doc["uid"] == "neuron-contig"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in doc["panels"] if p["type"] != "row")


def test_dashboard_configmap_carries_the_json() -> None:
    configmap = find(kustomize("monitoring"), "ConfigMap", "neuron-contig-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["neuron-contig.json"]) == dashboard()


def test_monitors_select_the_workloads() -> None:
    core, monitoring = kustomize("."), kustomize("monitoring")
    plugin = find(core, "DaemonSet", "neuron-contig-device-plugin")["spec"]["template"]
    pod_monitor = find(monitoring, "PodMonitor", "neuron-contig-device-plugin")["spec"]
    assert pod_monitor["selector"]["matchLabels"].items() <= plugin["metadata"]["labels"].items()
    port_names = {p["name"] for p in plugin["spec"]["containers"][0]["ports"]}
    assert pod_monitor["podMetricsEndpoints"][0]["port"] in port_names
    relabel = pod_monitor["podMetricsEndpoints"][0]["relabelings"][0]
    assert relabel == {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
    service = find(core, "Service", "neuron-scheduler-extender")
    service_monitor = find(monitoring, "ServiceMonitor", "neuron-scheduler-extender")["spec"]
    assert service_monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The plain-HTTP metrics port: the verbs port requires a client certificate Prometheus must not hold.
    (endpoint,) = service_monitor["endpoints"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    extender = find(core, "Deployment", "neuron-scheduler-extender")["spec"]["template"]["spec"]["containers"][0]
    assert port["targetPort"] == "metrics" and "metrics" in {p["name"] for p in extender["ports"]}
    assert endpoint.get("scheme", "http") == "http" and "tlsConfig" not in endpoint
