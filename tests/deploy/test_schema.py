"""Every manifest and every chart rendering decodes strictly into the real Kubernetes Go types.

manifestcheck (tests/tools/manifestcheck) is built from k8s.io/api, k8s.io/kube-scheduler and the
prometheus-operator API modules: an unknown field, a wrong type or an unknown kind fails, offline. The
server-side dry run against a real API server belongs to the cluster tier (tests/cluster/).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.tools import DEPLOY, helm_text, kustomize_text, run, tool

EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))
CHART_VARIANTS = {
    "defaults": (),
    "everything-on": (
        "monitoring.enabled=true", "extender.tls.enabled=true", "extender.tls.secretName=extender-tls",
        "plugin.hwErrorLog=/var/log/kern.log", "plugin.logLevel=debug", "extender.logLevel=debug",
        "imagePullSecrets[0].name=regcred", "plugin.metricsPort=9500",
    ),
}


def check(text: str) -> list[str]:
    result = run([tool("manifestcheck"), "-"], stdin=text)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("directory", [".", "monitoring"])
def test_kustomizations_validate(directory: str) -> None:
    text = kustomize_text(directory)
    lines = check(text)
    assert len(lines) == text.count("\nkind: ") + text.startswith("kind: ")


@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_chart_renderings_validate(variant: str) -> None:
    lines = check(helm_text(CHART_VARIANTS[variant]))
    assert any("kubescheduler" not in line and "ConfigMap" in line for line in lines)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_and_use_the_neuron_scheduler(path: Path) -> None:
    check(path.read_text())
    assert "schedulerName: neuron-contig-scheduler" in path.read_text()


def test_kind_config_names_neuron_instance_types() -> None:
    import yaml

    from neuronalloc import CATALOG

    config = yaml.safe_load((DEPLOY / "kind" / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    types = {n["labels"]["node.kubernetes.io/instance-type"] for n in workers}
    assert types and types <= set(CATALOG)


def test_scheduler_config_file_validates() -> None:
    assert check((DEPLOY / "scheduler" / "kube-scheduler-config.yaml").read_text()) == [
        "ok kubescheduler.config.k8s.io/v1 KubeSchedulerConfiguration /"
    ]


@pytest.mark.parametrize(
    ("manifest", "complaint"),
    [
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 2}\n", 'unknown field "replica"'),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: http}]}\n", "cannot unmarshal"),
        ("apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n", "unknown apiVersion/kind"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n", "metadata.name"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  c.yaml: |\n"
            "    apiVersion: kubescheduler.config.k8s.io/v1\n    kind: KubeSchedulerConfiguration\n"
            "    extenders: [{urlPrefix: http://x, filterVerbs: filter}]\n",
            'data[c.yaml]: strict decode',
        ),
    ],
    ids=["unknown-field", "wrong-type", "unknown-kind", "bad-name", "embedded-scheduler-config"],
)
def test_the_checker_rejects_broken_manifests(manifest: str, complaint: str) -> None:
    result = run([tool("manifestcheck"), "-"], stdin=manifest)
    assert result.returncode == 1
    assert complaint in result.stderr, result.stderr
