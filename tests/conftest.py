"""The hostile-input suite: every attack of issue 9 carries the `hostile` marker (`pytest -m hostile`), wherever
it lives (each attack is tested next to the component it targets, and all at once in the cluster tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Modules whose every test is an attack on a component, in bounded counts.
HOSTILE_MODULES = {
    "tests/core/test_decoders_hostile.py",
    "tests/extender/test_hostile_http.py",
    "tests/extender/test_limits.py",
    "tests/extender/test_tls.py",
    "tests/plugin/test_plugin_fail_closed.py",
    "tests/plugin/test_plugin_http.py",
    "tests/plugin/test_plugin_kernel_log.py",
    "tests/cluster/test_hostile.py",
    "tests/cluster/test_restarts.py",
    "tests/cluster/test_extender_tls.py",
    "tests/cluster/test_admission_policy.py",
}
ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix() in HOSTILE_MODULES:
            item.add_marker(pytest.mark.hostile)
