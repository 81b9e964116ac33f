"""The manifests drive the real programs: every env var a container sets is a flag its entry point accepts
(flags read the upper-snake-cased env var, docs/CONTRACTS.md), and every command is an installed entry point."""

from __future__ import annotations

import functools
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.tools import REPO, helm, kustomize, must
from tests.deploy.variants import CHART_VARIANTS

OURS = {"neuron-device-plugin", "neuron-scheduler-extender", "neuron-dra-driver"}


@functools.cache
def flags_of(entry_point: str) -> frozenset[str]:
    script = Path(sys.executable).parent / entry_point
    assert script.exists(), f"{entry_point} is not installed (pip install -e .)"
    return frozenset(re.findall(r"--[a-z][a-z0-9-]+", must([str(script), "--help"])))


@pytest.mark.parametrize("source", ["kustomize", "helm-everything-on"])
def test_every_env_var_is_a_flag_of_the_entry_point(source: str) -> None:
    objs = kustomize(".") + kustomize("dra") if source == "kustomize" else helm(*CHART_VARIANTS["everything-on"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    seen, missing = set(), set()
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
                if flag not in flags_of(entry_point):
                    missing.add(f"{entry_point} {flag} (env {env['name']})")
                seen.add(env["name"])
    assert not missing, f"flags the manifests set that the entry points lack: {sorted(missing)}"
    assert {
        "NODE_NAME", "ADVERTISE_ADDRESS", "PORT", "METRICS_PORT", "SCHEDULER_NAME", "TLS_CERT_FILE", "TLS_KEY_FILE",
        "TLS_CLIENT_CA_FILE", "LEASE_NAMESPACE", "LEASE_NAME",
    } <= seen  # fmt: skip
    if source != "kustomize":
        assert {"LOG_LEVEL", "HW_ERROR_LOG"} <= seen
