"""Every manifest and every chart rendering decodes strictly into the real Kubernetes Go types.

manifestcheck (tests/tools/manifestcheck) is built from k8s.io/api, k8s.io/kube-scheduler and the
prometheus-operator API modules: an unknown field, a wrong type or an unknown kind fails, offline. It does not
know cert-manager's kinds: those go through tests/deploy/certmanager.py. The server-side dry run against a real
API server belongs to the cluster tier (tests/cluster/).
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy import certmanager
from tests.deploy.tools import DEPLOY, helm_text, kustomize_text, run, tool
from tests.deploy.variants import CHART_VARIANTS

EXAMPLES = sorted((DEPLOY / "examples").glob("*.yaml"))


def split_cert_manager(text: str) -> tuple[str, list[dict]]:  # type: ignore[type-arg]
    """The YAML stream without its cert-manager documents (as text), and those documents (parsed)."""
    kept, cert_manager = [], []
    for chunk in re.split(r"^---[ \t]*$", text, flags=re.MULTILINE):
        doc = yaml.safe_load(chunk)
        if isinstance(doc, dict) and certmanager.is_cert_manager(doc):
            cert_manager.append(doc)
        else:
            kept.append(chunk)
    return "\n---\n".join(kept), cert_manager


def check(text: str) -> list[str]:
    """manifestcheck's "ok" lines for the stream; cert-manager documents are checked by certmanager.validate."""
    rest, cert_manager = split_cert_manager(text)
    result = run([tool("manifestcheck"), "-"], stdin=rest)
    assert result.returncode == 0, result.stderr
    for doc in cert_manager:
        certmanager.validate(doc)
    return result.stdout.splitlines() + [f"ok {d['apiVersion']} {d['kind']}" for d in cert_manager]


@pytest.mark.parametrize("directory", [".", "monitoring", "dra"])
def test_kustomizations_validate(directory: str) -> None:
    text = kustomize_text(directory)
    lines = check(text)
    assert len(lines) == text.count("\nkind: ") + text.startswith("kind: ")


@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_chart_renderings_validate(variant: str) -> None:
    text = helm_text(CHART_VARIANTS[variant])
    lines = check(text)
    if "mode=dra" not in CHART_VARIANTS[variant]:  # DRA mode has no second scheduler, so no scheduler config
        assert any("kubescheduler" not in line and "ConfigMap" in line for line in lines)
    assert len(lines) == len([d for d in yaml.safe_load_all(text) if d])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_and_use_the_neuron_scheduler(path: Path) -> None:
    check(path.read_text())
    assert "schedulerName: neuron-contig-scheduler" in path.read_text()


def test_kind_config_names_neuron_instance_types() -> None:
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
            "data[c.yaml]: strict decode",
        ),
    ],
    ids=["unknown-field", "wrong-type", "unknown-kind", "bad-name", "embedded-scheduler-config"],
)
def test_the_checker_rejects_broken_manifests(manifest: str, complaint: str) -> None:
    result = run([tool("manifestcheck"), "-"], stdin=manifest)
    assert result.returncode == 1
    assert complaint in result.stderr, result.stderr


CERTIFICATE = {
    "apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "x", "namespace": "ns"},
    "spec": {"secretName": "x-tls", "dnsNames": ["x.ns.svc"], "usages": ["server auth"],
             "issuerRef": {"name": "ca", "kind": "Issuer", "group": "cert-manager.io"}},
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"isCa": True}, "Additional properties"),
        ({"usages": ["server-auth"]}, "is not one of"),
        ({"duration": "90d"}, "does not match"),
        ({"privateKey": {"algorithm": "ECDSA", "rotationPolicy": "Sometimes"}}, "is not one of"),
        ({"issuerRef": {"name": "ca", "kind": "Signer"}}, "is not one of"),
        ({"secretName": None}, "is not of type"),
    ],
    ids=["unknown-field", "bad-usage", "bad-duration", "bad-rotation-policy", "bad-issuer-kind", "no-secret"],
)
def test_the_cert_manager_checker_rejects_broken_certificates(change: dict, complaint: str) -> None:  # type: ignore[type-arg]
    certmanager.validate(CERTIFICATE)
    broken = {**CERTIFICATE, "spec": {**CERTIFICATE["spec"], **change}}  # type: ignore[dict-item]
    with pytest.raises(jsonschema.ValidationError, match=complaint):
        certmanager.validate(broken)


def test_the_cert_manager_checker_rejects_an_issuer_of_two_kinds() -> None:
    issuer = {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "x"},
              "spec": {"selfSigned": {}, "ca": {"secretName": "ca"}}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError, match="too many properties"):
        certmanager.validate(issuer)
