"""The Dockerfile: hadolint-clean, multi-stage and slim, pinned, non-root, no HEALTHCHECK, both entry points;
its dependency lock agrees with pyproject.toml. (No Docker engine here: deploy/kind/up.sh builds it where one
exists.)"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from tests.deploy.lockfile import canonical, closure, runtime_requirements
from tests.deploy.tools import DEPLOY, REPO, run, tool

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            verb, _, rest = line.partition(" ")
            out.append((verb.upper(), rest.strip()))
    return out


def lock() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "image" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return pins


def test_hadolint_is_clean() -> None:
    result = run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_pinned_base_and_non_root_final_stage() -> None:
    steps = instructions()
    froms = [rest for verb, rest in steps if verb == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    (base_arg,) = [rest for verb, rest in steps if verb == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    base = base_arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), f"base pinned to a patch release: {base}"
    final = steps[max(i for i, (verb, _) in enumerate(steps) if verb == "FROM") :]
    users = [rest for verb, rest in final if verb == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the final stage runs as non-root"
    assert not any(verb == "HEALTHCHECK" for verb, _ in steps)
    assert any(verb == "COPY" and rest.startswith("--from=build") for verb, rest in final), "only the venv is copied"


def test_both_entry_points_are_installed() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"neuron-device-plugin", "neuron-scheduler-extender", "kubectl-neuron"} <= set(scripts)
    copied = {rest.split()[0] for verb, rest in instructions() if verb == "COPY"}
    for package in {target.split(".")[0] for target in scripts.values()} | {"neuronalloc", "neuroncli", "neuronlog"}:
        assert package in copied, f"{package}/ is not copied into the image"
        assert f"!{package}/" in (REPO / ".dockerignore").read_text()


def test_lock_pins_the_whole_runtime_closure_consistently() -> None:
    pins = lock()
    assert set(closure()) <= set(pins), f"unpinned: {set(closure()) - set(pins)}"
    for requirement in runtime_requirements():
        version = pins[canonical(requirement.name)]
        assert requirement.specifier.contains(version), f"{requirement} vs lock {version}"
    assert not any(Requirement(f"{n}=={v}").name.startswith(("pytest", "mypy", "ruff")) for n, v in pins.items())
