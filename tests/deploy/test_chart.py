"""The Helm chart: lint-clean, schema-guarded, and for default values identical to the plain manifests.

"Identical" allows exactly Helm's bookkeeping: the helm.sh/chart and app.kubernetes.io/managed-by labels
and checksum/* pod annotations. Everything else, including the embedded scheduler config and the rule
groups, must match object for object.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy.tools import CHART, DEPLOY, Obj, find, helm, helm_args, key, kustomize, must, run, tool

HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
SCHEDULER_CONFIG = "kube-scheduler-config.yaml"


def normalized(obj: Obj) -> Obj:
    obj = copy.deepcopy(obj)
    labels = obj["metadata"].get("labels") or {}
    for label in HELM_LABELS:
        labels.pop(label, None)
    template_meta = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    annotations = template_meta.get("annotations") or {}
    for name in [a for a in annotations if a.startswith("checksum/")]:
        del annotations[name]
    if "annotations" in template_meta and not annotations:
        del template_meta["annotations"]
    if obj["kind"] == "ConfigMap" and SCHEDULER_CONFIG in obj.get("data", {}):
        # Compared as YAML: the chart templates the config, the kustomization copies the file.
        obj["data"][SCHEDULER_CONFIG] = yaml.safe_load(obj["data"][SCHEDULER_CONFIG])
    return obj


def by_key(objs: list[Obj]) -> dict[tuple[str, str, str, str], Obj]:
    indexed = {key(o): normalized(o) for o in objs}
    assert len(indexed) == len(objs), "duplicate objects"
    return indexed


def assert_same(chart: list[Obj], plain: list[Obj]) -> None:
    rendered, expected = by_key(chart), by_key(plain)
    assert sorted(rendered) == sorted(expected)
    for k in expected:
        assert rendered[k] == expected[k], f"{k} differs between the chart and deploy/"


def test_helm_lint_is_clean() -> None:
    out = must([tool("helm"), "lint", "--strict", str(CHART)])
    assert "0 chart(s) failed" in out


def test_default_render_equals_plain_manifests() -> None:
    assert_same(helm(), kustomize("."))


def test_monitoring_render_equals_plain_monitoring_manifests() -> None:
    assert_same(helm("monitoring.enabled=true"), kustomize(".") + kustomize("monitoring"))


def test_scheduler_configmap_carries_the_config_file() -> None:
    """The existing scheduler config file is the ConfigMap's content, byte for byte (kustomize copies it)."""
    configmap = find(kustomize("."), "ConfigMap", "neuron-contig-scheduler-config")
    assert configmap["data"][SCHEDULER_CONFIG] == (DEPLOY / "scheduler" / SCHEDULER_CONFIG).read_text()
    deployment = find(kustomize("."), "Deployment", "neuron-contig-scheduler")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    mount = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    assert f"--config={mount['mountPath']}/{SCHEDULER_CONFIG}" in command


def test_chart_files_match_the_plain_monitoring_sources() -> None:
    rule = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    assert yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text()) == rule["spec"]
    assert (CHART / "files" / "grafana-dashboard.json").read_text() == (
        DEPLOY / "monitoring" / "grafana-dashboard.json"
    ).read_text()


def test_values_flow_into_the_manifests() -> None:
    objs = helm(
        "schedulerName=neuron-b",
        "extender.replicas=3",
        "image.tag=1.2.3",
        "plugin.hwErrorLog=/var/log/kern.log",
        "instanceTypes={inf2.48xlarge}",
    )
    config = yaml.safe_load(find(objs, "ConfigMap", "neuron-contig-scheduler-config")["data"][SCHEDULER_CONFIG])
    assert config["profiles"][0]["schedulerName"] == "neuron-b"
    assert config["leaderElection"]["resourceName"] == "neuron-b"
    lease_role = find(objs, "Role", "neuron-contig-scheduler-leader-election")
    assert lease_role["rules"][1]["resourceNames"] == ["neuron-b"]
    assert find(objs, "Deployment", "neuron-scheduler-extender")["spec"]["replicas"] == 3
    plugin = find(objs, "DaemonSet", "neuron-contig-device-plugin")["spec"]["template"]["spec"]
    assert plugin["containers"][0]["image"].endswith(":1.2.3")
    env = {e["name"]: e.get("value") for e in plugin["containers"][0]["env"]}
    assert env["HW_ERROR_LOG"] == "/var/log/kern.log"
    assert {"name": "hw-error-log", "hostPath": {"path": "/var/log/kern.log", "type": "File"}} in plugin["volumes"]
    extender = find(objs, "Deployment", "neuron-scheduler-extender")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in extender["env"]}["SCHEDULER_NAME"] == "neuron-b"
    terms = plugin["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["inf2.48xlarge"]


def test_filter_best_is_the_default_and_classic_verbs_are_one_value_away() -> None:
    def extender_config(*values: str) -> Obj:
        objs = helm(*values)
        config = yaml.safe_load(find(objs, "ConfigMap", "neuron-contig-scheduler-config")["data"][SCHEDULER_CONFIG])
        return dict(config["extenders"][0])

    shipped = extender_config()
    assert shipped["filterVerb"] == "filter-best" and shipped["bindVerb"] == "bind"
    assert "prioritizeVerb" not in shipped and "weight" not in shipped
    classic = extender_config("scheduler.filterBest=false", "scheduler.extenderWeight=7")
    assert (classic["filterVerb"], classic["prioritizeVerb"], classic["weight"]) == ("filter", "prioritize", 7)
    assert classic["bindVerb"] == "bind"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("extender.replicas=1", "/extender/replicas"),
        ("extender.tls.source=secrets", "secretName"),
        ("extender.tls.secretName=mine", "/extender/tls/secretName"),
        ("extender.tls.source=vault", "/extender/tls/source"),
        ("extender.metricsPort=8888", "must differ"),
        ("plugin.hwErrorLog=/dev/sda", "/plugin/hwErrorLog"),
        ("plugin.hwErrorLog=/var/log/", "/plugin/hwErrorLog"),
        ("plugin.hwErrorLog=var/log/messages", "/plugin/hwErrorLog"),
        ("plugin.hwErrorLog=ring", "/plugin/hwErrorLog"),
        ("plugin.hwErrorTrust=some", "/plugin/hwErrorTrust"),
        ("plugin.hwErrorLog=/var/log/../../etc/shadow", "/plugin/hwErrorLog"),
        ('--set-json=networkPolicy.metricsFrom=[{"podSelectr":{}}]', "/networkPolicy/metricsFrom/0"),
        ("plugin.logLevel=loud", "/plugin/logLevel"),
        ("plugin.metricsPort=0", "/plugin/metricsPort"),
        ("scheduler.extenderTimeout=soon", "/scheduler/extenderTimeout"),
        ("scheduler.filterBest=maybe", "/scheduler/filterBest"),
        ("instanceTypes=null", "instanceTypes"),
        ("typo=1", "typo"),
    ],
)
def test_values_schema_rejects_bad_values(value: str, complaint: str) -> None:
    result = run([*helm_args([value])])
    assert result.returncode != 0, f"--set {value} was accepted"
    assert complaint in result.stderr, result.stderr


def test_values_schema_documents_every_default() -> None:
    """Every key in values.yaml is declared in the schema (additionalProperties is false throughout)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values: Any = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(values)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({**values, "unknown": 1})
