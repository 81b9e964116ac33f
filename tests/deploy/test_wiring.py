"""The manifests drive the real programs: every env var a container sets is a flag its entry point accepts
(flags read the upper-snake-cased env var, docs/CONTRACTS.md), and every command is an installed entry point."""

from __future__ import annotations

import functools
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.test_schema import CHART_VARIANTS
from tests.deploy.tools import REPO, helm, kustomize, must

OURS = {"neuron-device-plugin", "neuron-scheduler-extender"}


@functools.cache
def flags_of(entry_point: str) -> frozenset[str]:
    script = Path(sys.executable).parent / entry_point
    assert script.exists(), f"{entry_point} is not installed (pip install -e .)"
    return frozenset(re.findall(r"--[a-z][a-z0-9-]+", must([str(script), "--help"])))


@pytest.mark.parametrize("source", ["kustomize", "helm-everything-on"])
def test_every_env_var_is_a_flag_of_the_entry_point(source: str) -> None:
    objs = kustomize(".") if source == "kustomize" else helm(*CHART_VARIANTS["everything-on"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    seen = set()
    for obj in objs:
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            entry_point = container["command"][0]
            if entry_point not in OURS:
                continue
            assert entry_point in scripts
            for env in container.get("env", []):
                flag = "--" + env["name"].lower().replace("_", "-")
                assert flag in flags_of(entry_point), f"{entry_point} has no {flag} for env {env['name']}"
                seen.add(env["name"])
    assert {"NODE_NAME", "PORT"} <= seen
    if source != "kustomize":
        assert {"LOG_LEVEL", "HW_ERROR_LOG", "METRICS_PORT", "TLS_CERT_FILE", "TLS_KEY_FILE"} <= seen
