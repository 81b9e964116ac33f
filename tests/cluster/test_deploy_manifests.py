"""Every Kubernetes manifest under deploy/ is accepted by a real API server (server-side dry run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from tests.cluster.harness import REPO_ROOT, Cluster

DEPLOY = REPO_ROOT / "deploy"
# Files under deploy/ that are configuration for tools, not API objects.
NOT_API_GROUPS = ("kustomize.config.k8s.io", "kubescheduler.config.k8s.io", "kind.x-k8s.io")


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


def api_objects(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [
        d
        for d in docs
        if "kind" in d and not str(d.get("apiVersion", "")).startswith(NOT_API_GROUPS) and d["kind"] != "Kustomization"
    ]


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_applies_with_server_side_dry_run(cluster: Cluster, path: Path) -> None:
    objects = api_objects(path)
    if not objects:
        pytest.skip(f"{path.name} holds no Kubernetes API objects")
    dynamic = DynamicClient(cluster.api)
    not_served = []
    for obj in objects:
        try:
            api = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:  # a CRD kind (e.g. monitoring.coreos.com) this cluster does not have
            not_served.append(f"{obj['apiVersion']}/{obj['kind']}")
            continue
        # As kubectl does: a namespaced object without a namespace goes to "default".
        namespace: str | None = (obj["metadata"].get("namespace") or "default") if api.namespaced else None
        if namespace is not None and namespace not in ("default", "kube-system"):
            _ensure_namespace(cluster, namespace)
        api.server_side_apply(
            body=obj,
            name=obj["metadata"]["name"],
            namespace=namespace,
            field_manager="neuron-contig-tests",
            dry_run="All",
        )
    if not_served:
        pytest.skip(f"every other object applied; not served by this API server (CRD not installed): {not_served}")


def _ensure_namespace(cluster: Cluster, name: str) -> None:
    try:
        cluster.core.create_namespace({"metadata": {"name": name}})
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise
