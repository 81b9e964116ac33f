from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.plugin.harness import Cluster, fake_cluster


@pytest.fixture
def trn1() -> Iterator[Cluster]:
    """A trn1.32xlarge: 16 devices of 2 cores, aligned blocks of 1/4/8/16."""
    with fake_cluster(16, core_count=2) as cluster:
        yield cluster


@pytest.fixture
def inf2() -> Iterator[Cluster]:
    """An inf2.48xlarge: 12 devices of 2 cores, any consecutive window."""
    with fake_cluster(12, core_count=2) as cluster:
        yield cluster
