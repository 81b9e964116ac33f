"""The external tools the deploy tests drive, and the renderings they share.

Tools come from scripts/install-deploy.sh (into <repo>/.deps/bin), else PATH. A missing tool skips its
tests on a developer's machine with the install command to run; under CI (CI=true) it fails instead, so a
green CI run always means the checks ran.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "neuron-contig"
LOCAL_BIN = REPO / ".deps" / "bin"
RELEASE = "neuron-contig"
NAMESPACE = "kube-system"
TOOL_TIMEOUT = 120
# The chart's extender.tls.source=auto picks cert-manager when the cluster serves this API: the renderings
# compared with deploy/ are those of such a cluster.
CERT_MANAGER_API = "cert-manager.io/v1"

Obj = dict[str, Any]


def tool(name: str) -> str:
    for candidate in (LOCAL_BIN / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    message = f"{name} not found in {LOCAL_BIN} or on PATH: run scripts/install-deploy.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(args: Sequence[str], *, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT, cwd=cwd, check=False
    )


def must(args: Sequence[str], **kwargs: Any) -> str:
    result = run(args, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
    return result.stdout


def docs(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


@functools.cache
def kustomize_text(directory: str) -> str:
    return must([tool("kustomize"), "build", str(DEPLOY / directory)])


def kustomize(directory: str = ".") -> list[Obj]:
    return docs(kustomize_text(directory))


def helm_args(
    sets: Iterable[str] = (), *, api_versions: Iterable[str] = (CERT_MANAGER_API,), namespace: str = NAMESPACE
) -> list[str]:
    """`helm template` with each of `sets` as --set KEY=VALUE, or passed as is when it starts with "--"
    (e.g. "--set-json=KEY=JSON"); `api_versions` are what the pretended cluster serves beyond the built-in."""
    args = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", namespace]
    for api in api_versions:
        args += ["--api-versions", api]
    for value in sets:
        args += [value] if value.startswith("--") else ["--set", value]
    return args


@functools.cache
def helm_text(
    sets: tuple[str, ...] = (), api_versions: tuple[str, ...] = (CERT_MANAGER_API,), namespace: str = NAMESPACE
) -> str:
    return must(helm_args(sets, api_versions=api_versions, namespace=namespace))


def helm(*sets: str, api_versions: tuple[str, ...] = (CERT_MANAGER_API,), namespace: str = NAMESPACE) -> list[Obj]:
    return docs(helm_text(tuple(sets), api_versions, namespace))


def key(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def find(objs: Iterable[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]
