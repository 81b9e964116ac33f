"""Fixtures of the real-Kubernetes tier: one control plane per session, one node pool per test."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, missing_prerequisites
from tests.cluster.workload import Pool

# Our entry points, run as real processes; they must exist before the tier can run.
ENTRY_POINTS = {"neuron-device-plugin": "plugin.main", "neuron-scheduler-extender": "extender.main"}


def _why_not_runnable() -> str | None:
    missing = missing_prerequisites()
    missing += [
        f"{script} is not importable yet ({module} missing)"
        for script, module in ENTRY_POINTS.items()
        if importlib.util.find_spec(module) is None
    ]
    return "; ".join(missing) or None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reason = _why_not_runnable()
    if reason:
        pytest.skip(f"real-cluster tier not runnable: {reason}")
    keep = os.environ.get("NEURONSIM_KEEP_WORKDIR")  # set to keep logs after the run
    workdir = Path(tempfile.mkdtemp(prefix="neuronsim-"))
    with Cluster(workdir) as running:
        yield running
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\nneuronsim workdir kept: {workdir}")


@pytest.fixture
def pool(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Pool]:
    """This test's own nodes and namespace; on failure the end of every log is attached to the report."""
    test_pool = Pool(cluster, request.node.name)
    try:
        yield test_pool
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            request.node.add_report_section("call", "cluster logs", cluster.log_tails())
        test_pool.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
