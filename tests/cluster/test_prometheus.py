"""Observability on a real Prometheus: the shipped rules, dashboard and monitors against the live plugins and
extender (tests/cluster/observed.py says how Prometheus is set up: deploy/'s monitors translated as
prometheus-operator does, deploy/'s rules unchanged, scrape and evaluation every second).

Rules whose `for:` is minutes long are checked by evaluating their expression; one test waits for a rule to fire
for real, through a copy of NeuronDeviceUnhealthy whose `for:` is shortened to 2 s (the only rule changed, and
only in that copy, which carries an extra label so it never collides with the shipped rule).

The tests run in file order on one pool of the demo's four nodes: each scenario undoes what it did, except the
NEURON_HW_ERR (its device stays quarantined) and the pending pods (kept for the dashboard test).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuronalloc import Resource
from tests.cluster.demo import NODES, WORKLOAD
from tests.cluster.harness import Cluster, SimNode
from tests.cluster.observed import MONITORING, Observed, alert_rules, rule_groups
from tests.cluster.prometheus import Prometheus, Series, brief, finite, labels_of, prometheus_binary, value
from tests.cluster.queries import OPERATOR_QUERIES, UTILIZATION_BY_POD, one_line
from tests.cluster.workload import Pool

pytestmark = pytest.mark.skipif(prometheus_binary() is None, reason="prometheus is not installed")

POOL = "prom"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULES = {rule["alert"]: rule for rule in alert_rules()}
PLUGIN_JOB = "kube-system/neuron-contig-device-plugin"
EXTENDER_JOB = "neuron-scheduler-extender"
SETTLE = 30.0  # seconds for a change to reach a query: plugin poll + scrape (1 s) + evaluation (1 s)
# Dashboard queries that are 0 on a healthy cluster, even under the demo's workload: they show only events.
EVENTS_ONLY = {
    "Nodes on fallback topology": "1 only for an instance type the catalog does not know; the demo's are known",
    "Annotation publish errors": "failed node-annotation patches; the demo's API server accepts every one",
}


class Scene:
    """The module's pool (the demo's nodes and workload) and the Prometheus watching it."""

    def __init__(self, cluster: Cluster, observed: Observed, pool: Pool) -> None:
        self.cluster, self.observed, self.pool = cluster, observed, pool
        self.prom: Prometheus = observed.prometheus

    def node(self, suffix: str) -> SimNode:
        return self.pool.nodes[f"{self.pool.name}-{suffix}"]

    def expr(self, alert: str) -> str:
        return str(RULES[alert]["expr"])

    def wait(self, what: str, expr: str, done: Any, timeout: float = SETTLE) -> list[Series]:
        return self.prom.wait(what, expr, done, timeout=timeout, watch=self.pool._procs())

    def wait_empty(self, alert: str, timeout: float = SETTLE) -> None:
        self.wait(f"{alert}'s expression to return nothing", self.expr(alert), lambda r: not r, timeout)

    def feed_neuron_monitor(self) -> dict[str, list[float]]:
        """Each node's neuron-monitor stand-in reports one runtime per pod, on the pod's cores, each core at
        utilization 0.01 x (core + 1). Returns what each pod's average must be ("namespace/pod" -> values)."""
        held = self.pod_cores()
        tags = {pod: str(4000 + i) for i, pod in enumerate(sorted(set(held.values())))}
        runtimes: dict[str, dict[str, dict[int, float]]] = {}
        want: dict[str, list[float]] = {}
        for (node_name, core), pod in held.items():
            runtimes.setdefault(node_name, {}).setdefault(tags[pod], {})[core] = 0.01 * (core + 1)
            want.setdefault(pod, []).append(0.01 * (core + 1))
        for node_name, node in self.pool.nodes.items():
            self.observed.neuron_monitor(node).set_runtimes(runtimes.get(node_name, {}))
        return want

    def pod_cores(self) -> dict[tuple[str, int], str]:
        """(node, core) -> "namespace/pod", from each node's PodResources (kubelet's own answer)."""
        held: dict[tuple[str, int], str] = {}
        for name, node in self.pool.nodes.items():
            for pod, resources in self.cluster.pod_resources(name).items():
                devices = frozenset[int]().union(
                    *(resources.get(r.value, frozenset()) for r in Resource if r.whole_devices)
                )
                cores = set(resources.get(Resource.NEURONCORE.value, ())) | node.topology.cores_of_devices(devices)
                held.update({(name, core): pod for core in cores})
        return held


@pytest.fixture(scope="module")
def scene(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    observed = Observed(cluster, tmp_path_factory.mktemp("prometheus"))
    pool = Pool(cluster, POOL)
    try:
        for suffix, instance_type in NODES.items():
            pool.add_node(suffix, instance_type)
        observed.start()
        scene = Scene(cluster, observed, pool)
        expected = 2 * len(NODES) + 1  # a plugin and a neuron-monitor per node, one extender
        scene.wait("every target up", "count(up == 1)", lambda r: bool(r) and value(r[0]) == expected)
        for name, resource, count in WORKLOAD:
            pool.create(name, resource, count)
        pool.wait_phase([name for name, _, _ in WORKLOAD], timeout=90)
        yield scene
    finally:
        observed.close()
        pool.close()


# ---- targets and labels -------------------------------------------------------------------------------------


def test_targets_carry_the_labels_the_monitors_give_on_eks(scene: Scene) -> None:
    """The PodMonitor's relabelings put `node` on every plugin series; the ServiceMonitor scrapes only the
    extender's plain-HTTP metrics port (not its mutual-TLS port); each job's labels are prometheus-operator's."""
    up = scene.prom.query("up")
    plugins = [s["metric"] for s in up if s["metric"]["job"] == PLUGIN_JOB]
    assert {(m["node"], m["pod"]) for m in plugins} == {
        (node.name, scene.observed.plugin_pod(node)) for node in scene.pool.nodes.values()
    }
    for metric, node in zip(sorted(plugins, key=lambda m: m["node"]), sorted(scene.pool.nodes), strict=True):
        assert metric == {
            "__name__": "up", "job": PLUGIN_JOB, "namespace": "kube-system", "container": "device-plugin",
            "endpoint": "metrics", "node": node, "pod": metric["pod"],
            "instance": f"127.0.0.1:{scene.pool.nodes[node].metrics_port}",
        }  # fmt: skip
    (extender,) = [s["metric"] for s in up if s["metric"]["job"] == EXTENDER_JOB]
    assert extender == {
        "__name__": "up", "job": EXTENDER_JOB, "namespace": "kube-system", "service": EXTENDER_JOB,
        "container": "extender", "endpoint": "metrics", "pod": scene.observed.extender_pod,
        "instance": f"127.0.0.1:{scene.cluster.extender_metrics_port}",
    }  # fmt: skip
    assert all(value(s) == 1 for s in up)
    # Every plugin series has the node label, and the extender's none.
    assert not scene.prom.query('{__name__=~"neuron_contig_plugin_.+", node=""}')
    assert scene.prom.query('count({__name__=~"neuron_contig_extender_.+", pod!=""})')


# ---- alerts -------------------------------------------------------------------------------------------------


def signal_of(expr: str) -> str:
    """The part of an alert expression that yields the series its labels come from: the first operand of a
    top-level `and`/`or`, without its final comparison against a number."""
    first = re.split(r"\s+(?:and|or)\b", expr, maxsplit=1)[0]
    return re.sub(r"\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+\s*$", "", first).strip()


def referenced_labels(rule: dict[str, Any]) -> set[str]:
    return set(re.findall(r"\$labels\.([a-zA-Z_]+)", json.dumps(rule["annotations"])))


def ensure_hw_error(scene: Scene) -> list[Series]:
    """The demo's NEURON_HW_ERR on trn1 device 15. Written again at every call: the plugin quarantines a device
    for 5 minutes after its last error, and a slow session can take longer than that between the first test
    that needs it and the last (the pending pod of 8 would then find 8-15 free and run)."""
    node = scene.node("trn1-32xl")
    scene.cluster.inject_hw_error(node.name, 15)
    return scene.wait(
        "device 15 unhealthy", scene.expr("NeuronDeviceUnhealthy"), lambda r: ("15",) in labels_of(r, "device")
    )


# No trn1 block has 3 devices (unresolvable). No aligned block of 8 is free (no_block): devices 0-7 are partly
# held by the demo's pods and 8-15 include the quarantined device 15, while kube-scheduler's count check passes
# (14 of the trn1's 15 healthy devices are not held whole).
PENDING = {"trn1-needs-3": 3, "trn1-needs-8": 8}


def ensure_pending(scene: Scene) -> list[Series]:
    """The demo's trn1 pod of 3 devices, and one of 8 devices that the trn1 counts but cannot place."""
    ensure_hw_error(scene)
    for name, count in PENDING.items():
        if not scene.pool._exists(name):
            scene.pool.create(name, Resource.NEURON, count, instance_type="trn1.32xlarge")
    return scene.wait(f"{len(PENDING)} pods pending", scene.expr("NeuronPodsPendingNoContiguousBlock"),
                      lambda r: bool(r) and value(r[0]) == len(PENDING))  # fmt: skip


def test_healthy_baseline_no_alert_expression_returns_a_series(scene: Scene) -> None:
    """The demo's pods running, nothing wrong: no shipped alert expression returns a series, none is pending."""
    for alert, rule in RULES.items():
        assert scene.prom.query(rule["expr"]) == [], f"{alert}: {brief(scene.prom.query(rule['expr']))}"
    assert scene.prom.query("ALERTS") == []


def test_every_alert_s_annotations_name_labels_its_series_carry(scene: Scene) -> None:
    """Each alert's summary/description/runbook uses $labels.X: the live series its expression is built from
    carry every such X (else the page reads "on  is unhealthy"). Evaluated without the alert's threshold."""
    for alert, rule in RULES.items():
        signal = signal_of(rule["expr"])
        series = scene.wait(f"{alert}: {signal} to return series", signal, bool)
        wanted = referenced_labels(rule)
        for s in series:
            assert wanted <= set(s["metric"]), f"{alert}: {signal} lacks {wanted - set(s['metric'])}: {s}"


def test_device_with_its_dev_node_removed_is_the_only_unhealthy_one(scene: Scene) -> None:
    node = scene.node("inf2-48xl")
    path = node.device_root / "neuron7"
    expr = scene.expr("NeuronDeviceUnhealthy")
    path.unlink()
    try:
        found = scene.wait("device 7 unhealthy", expr, bool)
        assert labels_of(found, "node", "device") == {(node.name, "7")} and len(found) == 1
        assert found[0]["metric"]["job"] == PLUGIN_JOB
    finally:
        path.touch()
    scene.wait_empty("NeuronDeviceUnhealthy")


def test_device_with_a_hardware_error_is_the_only_unhealthy_one(scene: Scene) -> None:
    """The demo's NEURON_HW_ERR on trn1 device 15 (`ensure_hw_error` keeps it quarantined for the rest of the
    module: the dashboard test wants it)."""
    node = scene.node("trn1-32xl")
    found = ensure_hw_error(scene)
    assert labels_of(found, "node", "device") == {(node.name, "15")} and len(found) == 1
    counted = scene.prom.query(f'neuron_contig_plugin_hw_errors_total{{node="{node.name}"}} > 0')
    assert labels_of(counted, "kind") == {("SRAM_UNCORRECTABLE_ERROR",)}


def test_a_short_for_copy_of_the_unhealthy_rule_fires_and_resolves_for_real(scene: Scene, tmp_path: Path) -> None:
    """NeuronDeviceUnhealthy with `for: 2s` (this test's copy; the shipped rule keeps its 2 minutes and stays
    pending meanwhile): it fires with its annotations rendered from the live labels, and resolves."""
    rule = dict(RULES["NeuronDeviceUnhealthy"])
    rule["for"] = "2s"
    rule["labels"] = {**rule["labels"], "neuron_contig_test": "short-for"}
    rules = tmp_path / "short-for.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "test-short-for", "rules": [rule]}]}))
    scene.observed.add_rule_file(rules)
    node = scene.node("inf1-24xl")
    path = node.device_root / "neuron3"
    try:
        wait_for_rules(scene.prom, {"NeuronDeviceUnhealthy": 2})
        path.unlink()
        firing = wait_for_alert(scene, node.name, "3", "firing")
        assert firing["annotations"]["summary"] == f"Neuron device 3 on {node.name} is unhealthy."
        assert f"/dev/neuron3 on node {node.name}" in firing["annotations"]["description"]
        assert firing["annotations"]["runbook"].startswith(f"1. kubectl neuron --node {node.name} ")
        assert firing["labels"]["severity"] == "critical"
        shipped = [
            a for a in scene.prom.alerts()
            if a["labels"].get("device") == "3" and "neuron_contig_test" not in a["labels"]
        ]  # fmt: skip
        assert [a["state"] for a in shipped] == ["pending"]  # the shipped for: 2m holds
    finally:
        path.touch()
    scene.wait(
        "the alert to resolve", f'ALERTS{{alertname="NeuronDeviceUnhealthy", node="{node.name}"}}', lambda r: not r
    )
    scene.observed.remove_rule_file(rules)
    wait_for_rules(scene.prom, {"NeuronDeviceUnhealthy": 1})


def wait_for_rules(prom: Prometheus, counts: dict[str, int]) -> None:
    def loaded() -> bool:
        names = [r.get("name") for r in prom.rules()]
        return all(names.count(n) == c for n, c in counts.items())

    from tests.cluster.processes import wait_for

    wait_for(f"rules loaded: {counts}", loaded, timeout=SETTLE, watch=[prom.process])


def wait_for_alert(scene: Scene, node: str, device: str, state: str) -> dict[str, Any]:
    from tests.cluster.processes import wait_for

    def probe() -> dict[str, Any] | None:
        for alert in scene.prom.alerts():
            labels = alert["labels"]
            if labels.get("neuron_contig_test") and labels.get("node") == node and labels.get("device") == device:
                return alert if alert["state"] == state else None
        return None

    return wait_for(f"the short-for copy {state} for {node} device {device}", probe, timeout=SETTLE)


def test_plugin_stopped_is_down_on_its_node_and_clears_after_restart(scene: Scene) -> None:
    """NeuronDevicePluginDown names the node. NeuronDevicePluginNotRegistered cannot (the plugin's series are
    gone with it): the down alert is the one for a stopped plugin."""
    node = scene.node("inf1-6xl")
    assert node.plugin is not None
    node.plugin.stop()
    try:
        down = scene.wait("the plugin down", scene.expr("NeuronDevicePluginDown"), bool)
        assert labels_of(down, "node", "pod") == {(node.name, scene.observed.plugin_pod(node))} and len(down) == 1
        assert scene.prom.query(scene.expr("NeuronDevicePluginNotRegistered")) == []
    finally:
        scene.cluster.start_plugin(node)
        scene.cluster.wait_node_ready(node)
    scene.wait_empty("NeuronDevicePluginDown")
    scene.wait_empty("NeuronDevicePluginNotRegistered")


def test_kubelet_stopped_leaves_the_plugin_unregistered_on_its_node_until_it_returns(scene: Scene) -> None:
    node = scene.node("inf1-6xl")
    node.kubelet.stop()
    try:
        found = scene.wait("every resource unregistered", scene.expr("NeuronDevicePluginNotRegistered"),
                           lambda r: len(r) == len(Resource))  # fmt: skip
        assert labels_of(found, "node", "resource") == {(node.name, resource.short) for resource in Resource}
        failing = scene.wait("publishing failing", scene.expr("NeuronNodeStatePublishFailing"), bool)
        assert labels_of(failing, "node", "reason") == {(node.name, "podresources_unavailable")}
        assert "podresources_unavailable" in RULES["NeuronNodeStatePublishFailing"]["annotations"]["runbook"]
    finally:
        scene.cluster.start_kubelet(node)
        scene.cluster.wait_node_ready(node)
    scene.wait_empty("NeuronDevicePluginNotRegistered")
    scene.wait_empty("NeuronDevicePluginDown")


def test_pods_pending_for_want_of_a_block_are_counted(scene: Scene) -> None:
    """The expression returns the resource they wait for and how many wait; the rejections say why."""
    found = ensure_pending(scene)
    assert labels_of(found, "resource") == {("neuron",)} and len(found) == 1
    assert all(scene.pool.pod(name).status.phase == "Pending" for name in PENDING)
    rejected = scene.prom.query("sum by (reason) (neuron_contig_extender_nodes_rejected_total) > 0")
    assert {"unresolvable", "no_block"} <= {r for (r,) in labels_of(rejected, "reason")}


# ---- the dashboard ------------------------------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in doc["panels"] for target in panel.get("targets", [])]


def grafana_regex_escape(text: str) -> str:
    """Grafana's prometheusRegularEscape: regex metacharacters get a backslash, doubled inside a PromQL string."""
    return re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", text.replace("\\", "\\\\\\\\"))


def substitute(expr: str, variables: dict[str, list[str]]) -> str:
    """Grafana's interpolation of a multi-value variable in a Prometheus query: `(a|b|c)`."""
    for name, values in variables.items():
        regex = "(" + "|".join(grafana_regex_escape(v) for v in values) + ")"
        expr = expr.replace("${" + name + "}", regex).replace("$" + name, regex)
    assert "$" not in expr.replace("$1", ""), expr
    return expr


def test_every_dashboard_query_answers_from_the_live_cluster(scene: Scene) -> None:
    """During the demo workload (its pods, a pod no trn1 block can hold, a hardware error): every panel query,
    with $node set as Grafana sets it from the dashboard's own variable query, returns a series with a value;
    and one that is not 0, unless the panel is listed as showing only events."""
    ensure_pending(scene)
    ensure_hw_error(scene)
    want = scene.feed_neuron_monitor()
    scene.wait("the utilization join", one_line(UTILIZATION_BY_POD), lambda r: len(r) == len(want))
    doc = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in doc["templating"]["list"] if v["name"] == "node"]
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"]).groups()  # type: ignore[union-attr]
    nodes = scene.prom.api(f"label/{label}/values", **{"match[]": metric})
    assert set(scene.pool.nodes) <= set(nodes)
    queries = dashboard_queries()
    assert {title for title, _ in queries} >= set(EVENTS_ONLY)
    empty, zero = [], []
    for title, expr in queries:
        series = finite(scene.prom.query(substitute(expr, {"node": sorted(scene.pool.nodes)})))
        if not series:
            empty.append(f"{title}: {expr}")
        elif title not in EVENTS_ONLY and all(value(s) == 0 for s in series):
            zero.append(f"{title}: {expr}: {brief(series)}")
    assert not empty, "panels with no series:\n  " + "\n  ".join(empty)
    assert not zero, "panels showing only 0:\n  " + "\n  ".join(zero)
    (join,) = [expr for title, expr in queries if title.startswith("NeuronCore utilization by pod")]
    assert join == one_line(UTILIZATION_BY_POD).replace("_info)", '_info{node=~"$node"})')


def test_every_operator_query_of_the_readme_answers(scene: Scene) -> None:
    """docs/monitoring.md's queries (tests/cluster/queries.py) return series during the demo workload."""
    ensure_pending(scene)
    scene.feed_neuron_monitor()
    for what, expr in OPERATOR_QUERIES:
        scene.wait(what, one_line(expr), lambda r: bool(finite(r)))


# ---- per-pod utilization: the join with neuron-monitor ------------------------------------------------------


def test_per_pod_utilization_joins_neuron_monitor_series_on_node_and_core(scene: Scene) -> None:
    """One info series per held core, labelled with the holder; neuron-monitor's per-core series (stand-ins with
    its exact labels, scraped through neuron-monitor-podmonitor.yaml) join them with one `on (node, neuroncore)`:
    each running pod's average utilization comes out under its own namespace and name."""
    held = scene.pod_cores()
    info = scene.wait("an info series per held core", "neuron_contig_plugin_pod_neuroncore_info",
                      lambda r: len(r) == len(held))  # fmt: skip
    assert {(s["metric"]["node"], int(s["metric"]["neuroncore"])): f"{s['metric']['namespace']}/{s['metric']['pod']}"
            for s in info} == held  # fmt: skip
    for s in info:
        node = scene.pool.nodes[s["metric"]["node"]]
        assert int(s["metric"]["device"]) == node.topology.device_of_core(int(s["metric"]["neuroncore"]))
        assert s["metric"]["container"] == "main" and s["metric"]["resource"] in {r.short for r in Resource}
    want = scene.feed_neuron_monitor()
    monitor = scene.wait("neuron-monitor's series", "neuroncore_utilization_ratio", lambda r: len(r) == len(held))
    assert {s["metric"]["job"] for s in monitor} == {"kube-system/neuron-monitor"}
    assert {(s["metric"]["namespace"], s["metric"]["node"]) for s in monitor} == {
        ("neuron-monitor", node) for node, _ in held
    }
    joined = scene.wait("the join to cover every pod", one_line(UTILIZATION_BY_POD), lambda r: len(r) == len(want))
    got = {f"{s['metric']['namespace']}/{s['metric']['pod']}": value(s) for s in joined}
    assert got == pytest.approx({pod: sum(v) / len(v) for pod, v in want.items()})


def test_a_released_core_loses_its_info_series(scene: Scene) -> None:
    scene.pool.create("short-lived", Resource.NEURONCORE, 2, instance_type="trn1.32xlarge")
    scene.pool.wait_phase(["short-lived"])
    selector = f'neuron_contig_plugin_pod_neuroncore_info{{namespace="{scene.pool.namespace}", pod="short-lived"}}'
    found = scene.wait("its two cores", selector, lambda r: len(r) == 2)
    assert labels_of(found, "resource") == {("neuroncore",)}
    scene.pool.delete("short-lived")
    scene.wait("its series gone", selector, lambda r: not r)


# ---- the extender -------------------------------------------------------------------------------------------


def test_pending_count_forgets_deleted_pods(scene: Scene) -> None:
    ensure_pending(scene)
    scene.pool.delete(*PENDING)
    scene.wait_empty("NeuronPodsPendingNoContiguousBlock", timeout=10)


def test_extender_stopped_is_down_and_restarted_rebuilds_a_fresh_view(scene: Scene) -> None:
    """Stopped: NeuronSchedulerExtenderDown's expression returns, while the staleness and pending gauges are gone
    and the error rate does not move. Restarted: the replica's view is fresh (NeuronExtenderViewStale's runbook:
    a new replica rebuilds its cache from a fresh list), its pending count starts from what it filters, and pods
    schedule again."""
    cluster = scene.cluster
    assert cluster.extender is not None
    scene.pool.delete(*(name for name in PENDING if scene.pool._exists(name)))
    cluster.extender.stop()
    try:
        scene.pool.create("during-outage", Resource.NEURON, 1, instance_type="inf1.24xlarge")
        down = scene.wait("the extender down", scene.expr("NeuronSchedulerExtenderDown"), bool)
        assert len(down) == 1
        # The extender's gauges are gone (nothing to judge), and the scheduler's failed calls never reach its
        # request counters: without the down alert, nothing would page.
        for alert in ("NeuronExtenderViewStale", "NeuronPodsPendingNoContiguousBlock"):
            assert scene.prom.query(signal_of(scene.expr(alert))) == [], alert
        assert scene.prom.query(scene.expr("NeuronExtenderErrorRateHigh")) == []
    finally:
        cluster.start_extender()
    scene.wait_empty("NeuronSchedulerExtenderDown")
    scene.wait_empty("NeuronPodsPendingNoContiguousBlock")
    scene.pool.wait_phase(["during-outage"], timeout=60)
    staleness = scene.wait("the new replica's staleness", signal_of(scene.expr("NeuronExtenderViewStale")), bool)
    assert labels_of(staleness, "pod") == {(scene.observed.extender_pod,)} and value(staleness[0]) < 60
    scene.pool.delete("during-outage")


def test_extender_killed_then_restarted_moves_the_error_rate_as_its_runbook_says(scene: Scene) -> None:
    """SIGKILL leaves the binder Lease held by the dead replica: the restarted one refuses binds (`not_binder`)
    until the Lease expires (15 s), and the error-rate expression rises above 5%; then every bind succeeds and no
    error is added, so the 5-minute rate falls back (the runbook's "a short burst is expected")."""
    cluster = scene.cluster
    assert cluster.extender is not None
    cluster.extender.kill()
    cluster.start_extender()
    scene.pool.create("after-crash", Resource.NEURON, 1, instance_type="inf1.24xlarge")
    scene.wait("the error rate above 5%", scene.expr("NeuronExtenderErrorRateHigh"), bool, timeout=60)
    binds = "sum by (reason) (neuron_contig_extender_binds_total) > 0"
    assert ("not_binder",) in labels_of(scene.prom.query(binds), "reason")
    assert "not_binder" in RULES["NeuronExtenderErrorRateHigh"]["annotations"]["runbook"]
    scene.pool.wait_phase(["after-crash"], timeout=60)
    before = {s["metric"]["reason"]: value(s) for s in scene.wait("the bind counted", binds, bool)}
    more = [f"after-crash-{i}" for i in range(3)]
    for name in more:
        scene.pool.create(name, Resource.NEURONCORE, 1, instance_type="inf1.24xlarge")
    scene.pool.wait_phase(more, timeout=60)
    after = scene.wait("3 more binds counted", binds, lambda r: any(
        s["metric"]["reason"] == "ok" and value(s) >= before.get("ok", 0) + 3 for s in r))  # fmt: skip
    assert {s["metric"]["reason"]: value(s) for s in after if s["metric"]["reason"] != "ok"} == {
        reason: count for reason, count in before.items() if reason != "ok"
    }
    scene.pool.delete("after-crash", *more)


def test_every_rule_group_is_loaded_unchanged(scene: Scene) -> None:
    """What Prometheus evaluates is the PrometheusRule's groups, rule for rule (name, expression, for, labels)."""
    loaded = {g["name"]: g for g in scene.prom.api("rules")["groups"] if g["name"] != "test-short-for"}
    shipped = {g["name"]: g for g in rule_groups()}
    assert set(loaded) == set(shipped)

    def pretty(expr: str) -> str:  # the rules API re-prints each expression from its parse: compare parses
        return str(scene.prom.api("format_query", query=expr))

    for name, group in shipped.items():
        live = [
            (r["name"], pretty(r["query"]), r["duration"], r["labels"], r["annotations"]) for r in loaded[name]["rules"]
        ]
        want = [
            (r["alert"], pretty(r["expr"]), _seconds(r["for"]), r["labels"], r["annotations"]) for r in group["rules"]
        ]
        assert live == want


def _seconds(duration: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([smh])", duration).groups()  # type: ignore[union-attr]
    return int(number) * {"s": 1, "m": 60, "h": 3600}[unit]
