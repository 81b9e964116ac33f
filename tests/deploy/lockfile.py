"""The image's dependency lock (deploy/image/requirements.txt): pyproject's runtime dependencies and their
whole closure, pinned to the versions installed here.

    python -m tests.deploy.lockfile > deploy/image/requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

from tests.deploy.tools import REPO

HEADER = """\
# Runtime dependencies of the neuron-contig image, pinned with their whole closure so that an image
# build is reproducible. Direct pins must agree with pyproject.toml (tests/deploy checks it).
# Regenerate after changing pyproject.toml's dependencies (in an environment where they are installed):
#   python -m tests.deploy.lockfile > deploy/image/requirements.txt
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def closure() -> dict[str, str]:
    """canonical name -> installed version, for the runtime dependencies and everything they pull in."""
    pinned: dict[str, str] = {}
    stack = [r.name for r in runtime_requirements()]
    while stack:
        name = canonical(stack.pop())
        if name in pinned:
            continue
        dist = metadata.distribution(name)
        pinned[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                stack.append(requirement.name)
    return pinned


def render() -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(closure().items()))


if __name__ == "__main__":
    sys.stdout.write(render())
