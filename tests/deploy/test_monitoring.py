"""Monitoring: the PrometheusRule passes promtool and its unit tests, every alert carries runbook text,
and the rules and the Grafana dashboard use only metric names from docs/CONTRACTS.md. The monitors translate
into a Prometheus configuration that promtool accepts (the cluster tier runs it: tests/cluster/test_prometheus.py),
and docs/monitoring.md's operator queries are the ones the cluster tier runs."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import promconfig
from tests.cluster.queries import OPERATOR_QUERIES, UTILIZATION_BY_POD, one_line
from tests.deploy.contracts import contract_metrics, series_names
from tests.deploy.tools import CHART, DEPLOY, REPO, Obj, find, kustomize, must, run, tool

MONITORING = DEPLOY / "monitoring"
REQUIRED_ALERTS = {
    "NeuronDeviceUnhealthy",
    "NeuronDevicePluginNotRegistered",
    "NeuronNodeStateStale",
    "NeuronDevicePluginDown",
    "NeuronSchedulerExtenderDown",
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
    """Guards the parser below: CONTRACTS.md names 42 metrics (8 of them the DRA driver's), 3 of them histograms."""
    metrics = contract_metrics()
    assert len(metrics) == 42
    assert {n for n, k in metrics.items() if k == "histogram"} == {
        "neuron_contig_plugin_rpc_duration_seconds",
        "neuron_contig_extender_request_duration_seconds",
        "neuron_contig_dra_rpc_duration_seconds",
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
    # The per-core info series carries the workload's namespace/pod/container: without honorLabels they would
    # arrive as exported_namespace/_pod/_container (tests/cluster/test_prometheus.py shows it on a live scrape).
    assert pod_monitor["podMetricsEndpoints"][0]["honorLabels"] is True
    service = find(core, "Service", "neuron-scheduler-extender")
    service_monitor = find(monitoring, "ServiceMonitor", "neuron-scheduler-extender")["spec"]
    assert service_monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The plain-HTTP metrics port: the verbs port requires a client certificate Prometheus must not hold.
    (endpoint,) = service_monitor["endpoints"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    extender = find(core, "Deployment", "neuron-scheduler-extender")["spec"]["template"]["spec"]["containers"][0]
    assert port["targetPort"] == "metrics" and "metrics" in {p["name"] for p in extender["ports"]}
    assert endpoint.get("scheme", "http") == "http" and "tlsConfig" not in endpoint


# ---- the monitors, translated as prometheus-operator translates them ------------------------------------------

MONITOR_FILES = (MONITORING / "monitors.yaml", MONITORING / "neuron-monitor-podmonitor.yaml")


def shipped_monitors() -> list[Obj]:
    return [m for path in MONITOR_FILES for m in promconfig.load_monitors(path)]


def test_every_shipped_monitor_translates_into_a_config_promtool_accepts(tmp_path: Path) -> None:
    jobs = promconfig.scrape_jobs(shipped_monitors(), tmp_path, interval="1s")
    assert [j.name for j in jobs] == [
        "podMonitor/kube-system/neuron-contig-device-plugin/0",
        "serviceMonitor/kube-system/neuron-scheduler-extender/0",
        "podMonitor/kube-system/neuron-monitor/0",
    ]
    assert [j.namespaces for j in jobs] == [("kube-system",), ("kube-system",), ("neuron-monitor",)]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    config = promconfig.prometheus_config(
        jobs, [tmp_path / "rules.yaml"], scrape_interval="1s", evaluation_interval="1s"
    )
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = must([tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")])
    assert "SUCCESS" in out


@pytest.mark.parametrize(
    ("where", "field"),
    [("endpoint", {"tlsConfig": {"insecureSkipVerify": True}}), ("spec", {"sampleLimit": 100}),
     ("relabeling", {"action": "replace", "sourceLabels": ["a"], "targetLabel": "b", "nonsense": 1})],
)  # fmt: skip
def test_translation_refuses_a_monitor_field_it_does_not_reproduce(
    tmp_path: Path, where: str, field: dict[str, Any]
) -> None:
    """A monitors.yaml edit the translation does not cover fails the tests instead of drifting from a real
    Prometheus: the field is refused, by name."""
    monitor = copy.deepcopy(shipped_monitors()[0])
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    {"endpoint": endpoint, "spec": monitor["spec"], "relabeling": endpoint["relabelings"][0]}[where].update(field)
    with pytest.raises(promconfig.UnsupportedMonitor, match=next(iter(field)) if where != "relabeling" else "nonsense"):
        promconfig.scrape_jobs([monitor], tmp_path)


def test_neuron_monitor_podmonitor_decodes_strictly_and_adds_the_node_label() -> None:
    path = MONITORING / "neuron-monitor-podmonitor.yaml"
    result = run([tool("manifestcheck"), "-"], stdin=path.read_text())
    assert result.returncode == 0, result.stderr
    (monitor,) = promconfig.load_monitors(path)
    ours = find(kustomize("monitoring"), "PodMonitor", "neuron-contig-device-plugin")
    # The same node relabeling as ours: the join on (node, neuroncore) needs both sides to name the node alike.
    assert (
        monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
        == ours["spec"]["podMetricsEndpoints"][0]["relabelings"]
    )


def promql_parses(tmp_path: Path, exprs: dict[str, str]) -> None:
    """promtool parses each expression (as a recording rule); a syntax error fails with its name."""
    rules = [{"record": f"check:{i}", "expr": expr} for i, expr in enumerate(exprs.values())]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = run([tool("promtool"), "check", "rules", str(tmp_path / "queries.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_shows_the_operator_queries_and_they_parse(tmp_path: Path) -> None:
    text = (REPO / "docs" / "monitoring.md").read_text()
    section = text[text.index("## Querying it") :]
    section = section.split("\n## ", 1)[0]
    for what, expr in OPERATOR_QUERIES:
        assert f"$ promtool query instant $PROM '{expr}'" in section, what
    promql_parses(tmp_path, {what: one_line(expr) for what, expr in OPERATOR_QUERIES})


def test_dashboard_queries_parse_and_one_joins_neuron_monitor(tmp_path: Path) -> None:
    doc = dashboard()
    exprs = {f"{p['title']} {t['refId']}": t["expr"] for p in doc["panels"] for t in p.get("targets", [])}
    promql_parses(tmp_path, {k: re.sub(r"\$node\b", "a|b", v) for k, v in exprs.items()})
    joins = [e for e in exprs.values() if "neuroncore_utilization_ratio" in e]
    assert joins == [one_line(UTILIZATION_BY_POD).replace("_info)", '_info{node=~"$node"})')]
