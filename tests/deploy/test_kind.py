"""The shell scripts of the deploy area: shellcheck-clean, and deploy/kind/up.sh refuses clearly where there is
no Docker engine (the kind tier then skips itself).

A stand-in `docker` that fails like an unreachable daemon is put first on PATH, so that this test never
starts a real cluster even where Docker exists.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import DEPLOY, REPO, must, run, tool


def test_up_sh_exits_3_without_a_docker_engine(tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(DEPLOY / "kind" / "up.sh")], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 3
    assert "no Docker engine reachable" in result.stderr
    assert run(["bash", "-n", str(DEPLOY / "kind" / "up.sh")]).returncode == 0


@pytest.mark.parametrize("script", ["scripts/install-deploy.sh", "deploy/kind/up.sh"])
def test_shellcheck_is_clean(script: str) -> None:
    must([tool("shellcheck"), str(REPO / script)])
