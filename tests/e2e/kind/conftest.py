"""The kind e2e tier: deploy/ manifests and the project image on a kind cluster (deploy/kind/up.sh).

Skipped, with the reason, where there is no Docker engine or kind/kubectl is missing. Set
NEURON_CONTIG_KIND_KEEP=1 to keep the cluster after the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.kind.kube import REPO_ROOT, Kubectl

UP = REPO_ROOT / "deploy" / "kind" / "up.sh"
CLUSTER = "neuron-contig-e2e"


def _why_not_runnable() -> str | None:
    if shutil.which("docker") is None:
        return "no Docker engine: docker is not on PATH"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"no Docker engine reachable (`docker info` failed: {probe.stderr.strip()[:200]})"
    for tool in ("kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    if not UP.exists():
        return f"{UP.relative_to(REPO_ROOT)} is missing"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/kind" in str(item.fspath):
            item.add_marker(pytest.mark.kind)


@pytest.fixture(scope="session")
def kind() -> Iterator[Kubectl]:
    reason = _why_not_runnable()
    if reason:
        pytest.skip(f"kind e2e tier skipped: {reason}")
    subprocess.run(["bash", str(UP)], check=True, timeout=1800)
    try:
        yield Kubectl(context=f"kind-{CLUSTER}")
    finally:
        if not os.environ.get("NEURON_CONTIG_KIND_KEEP"):
            subprocess.run(["bash", str(UP), "down"], check=False, timeout=300)


@pytest.fixture
def namespace(kind: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "e2e-" + request.node.name.lower().replace("_", "-")[:50].rstrip("-")
    kind.run("create", "namespace", name)
    try:
        yield name
    finally:
        kind.run("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)
