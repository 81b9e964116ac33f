"""deploy/ and the Helm chart against the cluster tier's real kube-apiserver (v1.35).

- Every Kubernetes manifest file under deploy/, and every rendering of the chart's documented switches
  (tests/deploy/variants.py: every value of every switch paired with every other), passes a server-side
  dry run: the API server's own validation, defaulting and admission (the admission policy's CEL is compiled).
- cert-manager (Issuer, Certificate) and prometheus-operator (PodMonitor, ServiceMonitor, PrometheusRule) kinds
  need their CRDs, which this cluster does not have: the module installs minimal CRD stubs for them (served,
  right scope, any content accepted). For those kinds the dry run proves the apiVersion, kind, scope and
  metadata; their fields are checked offline (tests/deploy: manifestcheck's prometheus-operator Go types, and
  tests/deploy/certmanager.py for cert-manager).
- Pod Security admission (the API server's own) admits the extender and the scheduler under "restricted", and
  the device plugin only under "privileged", as their manifests say.
- The chart, installed and upgraded with Helm on this API server, keeps the certificates it made (lookup):
  an upgrade changes neither the Secrets nor the pods; deleting the Secrets and upgrading replaces both
  certificates and rolls the pods (their CA checksum changes).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from tests.cluster.harness import REPO_ROOT, Cluster
from tests.deploy.tools import CHART, helm_text, tool
from tests.deploy.variants import CHART_VARIANTS

DEPLOY = REPO_ROOT / "deploy"
# Files under deploy/ that are configuration for tools, not API objects.
NOT_API_GROUPS = ("kustomize.config.k8s.io", "kubescheduler.config.k8s.io", "kind.x-k8s.io")
# group -> (kind, plural) served by the CRD stubs
STUB_KINDS = {
    "cert-manager.io": [("Issuer", "issuers"), ("Certificate", "certificates")],
    "monitoring.coreos.com": [
        ("PodMonitor", "podmonitors"), ("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules"),
    ],
}  # fmt: skip
FIELD_MANAGER = "neuron-contig-tests"
SERVER_SECRET, CLIENT_SECRET = "neuron-scheduler-extender-tls", "neuron-contig-scheduler-client-tls"


def manifest_files() -> list[Path]:
    if not DEPLOY.is_dir():
        return []
    return sorted(
        p
        for p in DEPLOY.rglob("*.y*ml")
        if "helm" not in p.relative_to(DEPLOY).parts[0]
        and p.name not in ("Chart.yaml", "values.yaml")
        and "templates" not in p.parts
    )


def api_objects(docs: list[Any]) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if isinstance(d, dict)
        and "kind" in d
        and not str(d.get("apiVersion", "")).startswith(NOT_API_GROUPS)
        and d["kind"] != "Kustomization"
    ]


def dry_run(cluster: Cluster, objects: list[dict[str, Any]]) -> list[str]:
    """Server-side apply each object with dryRun=All; the refusals, one line each."""
    dynamic = DynamicClient(cluster.api)
    refusals = []
    for obj in objects:
        try:
            api = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:
            refusals.append(f"{obj['apiVersion']}/{obj['kind']}: not served by this API server")
            continue
        # As kubectl does: a namespaced object without a namespace goes to "default".
        namespace: str | None = (obj["metadata"].get("namespace") or "default") if api.namespaced else None
        if namespace is not None and namespace not in ("default", "kube-system"):
            _ensure_namespace(cluster, namespace)
        try:
            api.server_side_apply(
                body=obj, name=obj["metadata"]["name"], namespace=namespace, field_manager=FIELD_MANAGER, dry_run="All"
            )
        except Exception as err:  # the dynamic client's ApiException subclasses
            refusals.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(err, 'body', err)}")
    return refusals


def _ensure_namespace(cluster: Cluster, name: str, labels: dict[str, str] | None = None) -> None:
    try:
        cluster.core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise


def _crd_stub(group: str, kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def crd_stubs(cluster: Cluster) -> Iterator[None]:
    """Minimal CRDs for the cert-manager and prometheus-operator kinds, removed when the module ends."""
    api = k8s.ApiextensionsV1Api(cluster.api)
    stubs = [_crd_stub(group, kind, plural) for group, kinds in STUB_KINDS.items() for kind, plural in kinds]
    for stub in stubs:
        try:
            api.create_custom_resource_definition(stub)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + 30
    for stub in stubs:
        while not any(
            c.type == "Established" and c.status == "True"
            for c in (api.read_custom_resource_definition(stub["metadata"]["name"]).status.conditions or [])
        ):
            assert time.monotonic() < deadline, f"CRD stub {stub['metadata']['name']} not established"
            time.sleep(0.2)
    yield
    for stub in stubs:
        try:
            api.delete_custom_resource_definition(stub["metadata"]["name"])
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise


# ---- Helm on the real API server (before the CRD stubs exist: "auto" must find no cert-manager) ----------------


class Helm:
    def __init__(self, cluster: Cluster, home: Path, namespace: str):
        self.cluster, self.namespace = cluster, namespace
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self.exe = tool("helm")

    def __call__(self, *args: str) -> str:
        argv = [self.exe, "--namespace", self.namespace, *args]
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=120, check=False)
        assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}{result.stdout}"
        return result.stdout


def _serves_cert_manager(cluster: Cluster) -> bool:
    groups = k8s.ApisApi(cluster.api).get_api_versions().groups
    return any(v.group_version == "cert-manager.io/v1" for g in groups for v in g.versions)


def _secret_data(cluster: Cluster, namespace: str) -> dict[str, dict[str, str]]:
    return {
        name: dict(cluster.core.read_namespaced_secret(name, namespace).data) for name in (SERVER_SECRET, CLIENT_SECRET)
    }


def _pod_templates(cluster: Cluster, namespace: str) -> dict[str, tuple[int, dict[str, str]]]:
    """Deployment -> (generation, pod template annotations)."""
    apps = k8s.AppsV1Api(cluster.api)
    return {
        name: (d.metadata.generation, dict(d.spec.template.metadata.annotations or {}))
        for name in ("neuron-scheduler-extender", "neuron-contig-scheduler")
        for d in [apps.read_namespaced_deployment(name, namespace)]
    }


def test_helm_keeps_the_certificates_it_made_across_upgrades(cluster: Cluster, tmp_path: Path) -> None:
    namespace = f"neuron-helm-{uuid.uuid4().hex[:6]}"
    _ensure_namespace(cluster, namespace)
    helm = Helm(cluster, tmp_path, namespace)
    try:
        # "auto" on this cluster: no cert-manager.io/v1 here (unless the stubs below already exist), so the chart
        # makes the certificates itself.
        manifest = helm("install", "neuron-contig", str(CHART), "--dry-run=server")
        made_by_chart = f"name: {SERVER_SECRET}" in manifest and "kind: Certificate" not in manifest
        assert made_by_chart is not _serves_cert_manager(cluster)

        helm("install", "neuron-contig", str(CHART), "--set", "extender.tls.source=chart")
        installed, templates = _secret_data(cluster, namespace), _pod_templates(cluster, namespace)
        assert installed[SERVER_SECRET]["ca.crt"] == installed[CLIENT_SECRET]["ca.crt"]
        checksums = {a["checksum/extender-ca"] for _, a in templates.values()}
        assert len(checksums) == 1

        helm("upgrade", "neuron-contig", str(CHART), "--reuse-values", "--set", "extender.logLevel=debug")
        assert _secret_data(cluster, namespace) == installed, "an upgrade must not replace the certificates"
        upgraded = _pod_templates(cluster, namespace)
        assert upgraded["neuron-contig-scheduler"] == templates["neuron-contig-scheduler"], "no scheduler rollout"
        assert upgraded["neuron-scheduler-extender"][1] == templates["neuron-scheduler-extender"][1]

        # Replacing them (docs/security.md): delete one Secret, upgrade; both are made anew and the pods roll.
        cluster.core.delete_namespaced_secret(SERVER_SECRET, namespace)
        helm("upgrade", "neuron-contig", str(CHART), "--reuse-values")
        replaced = _secret_data(cluster, namespace)
        assert (
            replaced[SERVER_SECRET]["ca.crt"] == replaced[CLIENT_SECRET]["ca.crt"] != installed[SERVER_SECRET]["ca.crt"]
        )
        assert replaced[CLIENT_SECRET]["tls.crt"] != installed[CLIENT_SECRET]["tls.crt"]
        rolled = _pod_templates(cluster, namespace)
        assert {a["checksum/extender-ca"] for _, a in rolled.values()} - checksums
        assert rolled["neuron-contig-scheduler"][0] > templates["neuron-contig-scheduler"][0]
    finally:
        subprocess.run([helm.exe, "--namespace", namespace, "uninstall", "neuron-contig"], env=helm.env,
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        cluster.core.delete_namespace(namespace)


# ---- server-side dry run ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_applies_with_server_side_dry_run(cluster: Cluster, crd_stubs: None, path: Path) -> None:
    objects = api_objects(list(yaml.safe_load_all(path.read_text())))
    if not objects:
        pytest.skip(f"{path.name} holds no Kubernetes API objects")
    assert dry_run(cluster, objects) == []


def test_every_chart_combination_applies_with_server_side_dry_run(cluster: Cluster, crd_stubs: None) -> None:
    """Each distinct object of every rendering in tests/deploy/variants.py, once (most objects recur)."""
    unique: dict[str, tuple[dict[str, Any], str]] = {}
    for variant, sets in sorted(CHART_VARIANTS.items()):
        for obj in api_objects(list(yaml.safe_load_all(helm_text(sets)))):
            unique.setdefault(json.dumps(obj, sort_keys=True), (obj, variant))
    refusals = []
    for obj, variant in unique.values():
        refusals += [f"[{variant}] {r}" for r in dry_run(cluster, [obj])]
    assert refusals == []
    kinds = {obj["kind"] for obj, _ in unique.values()}
    assert {"Certificate", "Issuer", "Secret", "NetworkPolicy", "ValidatingAdmissionPolicy", "PodMonitor"} <= kinds


def test_auto_finds_cert_manager_when_the_cluster_serves_it(cluster: Cluster, crd_stubs: None, tmp_path: Path) -> None:
    namespace = f"neuron-helm-{uuid.uuid4().hex[:6]}"
    _ensure_namespace(cluster, namespace)
    try:
        manifest = Helm(cluster, tmp_path, namespace)("install", "neuron-contig", str(CHART), "--dry-run=server")
        assert "kind: Certificate" in manifest and f"name: {SERVER_SECRET}\n  namespace" not in manifest
    finally:
        cluster.core.delete_namespace(namespace)


# ---- Pod Security admission ------------------------------------------------------------------------------------


def _pod_from(path: Path) -> dict[str, Any]:
    (workload,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in ("Deployment", "DaemonSet")]
    template = workload["spec"]["template"]
    spec = {k: v for k, v in template["spec"].items() if k != "priorityClassName"}  # not Pod Security's concern
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": workload["metadata"]["name"]}, "spec": spec}


@pytest.fixture(scope="module")
def pod_security_namespaces(cluster: Cluster) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    levels = {level: f"psa-{level}-{suffix}" for level in ("restricted", "baseline", "privileged")}
    for level, name in levels.items():
        _ensure_namespace(cluster, name, {"pod-security.kubernetes.io/enforce": level,
                                          "pod-security.kubernetes.io/enforce-version": "latest"})  # fmt: skip
    yield levels
    for name in levels.values():
        cluster.core.delete_namespace(name)


def _admitted(cluster: Cluster, namespace: str, pod: dict[str, Any]) -> str:
    """ "ok", or the API server's refusal."""
    try:
        cluster.core.create_namespaced_pod(namespace, pod, dry_run="All")
    except k8s.ApiException as exc:
        return str(json.loads(exc.body).get("message", exc.body))
    return "ok"


@pytest.mark.parametrize("path", ["extender/deployment.yaml", "scheduler/deployment.yaml"])
def test_extender_and_scheduler_pass_restricted(
    cluster: Cluster, pod_security_namespaces: dict[str, str], path: str
) -> None:
    assert _admitted(cluster, pod_security_namespaces["restricted"], _pod_from(DEPLOY / path)) == "ok"


def test_the_plugin_needs_privileged_for_its_host_paths(
    cluster: Cluster, pod_security_namespaces: dict[str, str]
) -> None:
    pod = _pod_from(DEPLOY / "plugin" / "daemonset.yaml")
    for level in ("restricted", "baseline"):
        refusal = _admitted(cluster, pod_security_namespaces[level], pod)
        assert f'violates PodSecurity "{level}:latest"' in refusal and "hostPath" in refusal, refusal
    assert _admitted(cluster, pod_security_namespaces["privileged"], pod) == "ok"
