"""The NeuronDevicesHealthy node condition: its wording (property-tested bounds) and the publisher's writes to a
loopback stand-in for the API server (tests/plugin/api_stub.py: real HTTP, the status subresource, conditions
merged by type as a strategic merge patch does). The real API server and admission policy: tests/cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin.condition import (
    CONDITION_TYPE,
    HEARTBEAT_SECONDS,
    MAX_MESSAGE_CHARS,
    Condition,
    ConditionPublisher,
    health_condition,
)
from plugin.hwerrors import KNOWN_KINDS
from plugin.kubeapi import from_kubeconfig
from plugin.metrics import PluginMetrics
from tests.plugin.api_stub import FakeApiServer

REASONS = st.sampled_from(["device_node_missing", *(f"hw_error:{kind}" for kind in KNOWN_KINDS), "hw_error:other"])


def test_wording_of_each_state() -> None:
    assert health_condition({}, 16) == Condition("True", "AllDevicesHealthy", "all 16 Neuron devices are healthy")
    unseen = health_condition({}, 16, hw_errors_unseen="syslog(2) ...: needs CAP_SYSLOG")
    assert (unseen.status, unseen.reason) == ("True", "HardwareErrorsNotWatched")
    assert "hardware errors are not seen: syslog(2) ...: needs CAP_SYSLOG" in unseen.message
    broken = health_condition(
        {3: "hw_error:SRAM_UNCORRECTABLE_ERROR", 5: "hw_error:SRAM_UNCORRECTABLE_ERROR", 9: "device_node_missing"}, 16
    )
    assert (broken.status, broken.reason) == ("False", "NeuronHardwareError")
    assert broken.message == (
        "3 of 16 Neuron devices unhealthy, not offered to pods: device_node_missing on 9; "
        "hw_error:SRAM_UNCORRECTABLE_ERROR on 3,5"
    )
    missing = health_condition({2: "device_node_missing,hw_error:DMA_ERROR"}, 4)
    assert missing.reason == "NeuronHardwareError" and "hw_error:DMA_ERROR on 2" in missing.message
    assert health_condition({2: "device_node_missing"}, 4).reason == "NeuronDeviceMissing"


@given(st.dictionaries(st.integers(0, 100_000), REASONS, max_size=300), st.none() | st.text(max_size=5000))
def test_the_condition_is_bounded_and_false_exactly_when_a_device_is_unhealthy(
    unhealthy: dict[int, str], unseen: str | None
) -> None:
    condition = health_condition(unhealthy, 100_001, hw_errors_unseen=unseen)
    assert condition.status == ("False" if unhealthy else "True")
    assert len(condition.message) <= MAX_MESSAGE_CHARS and len(condition.reason) <= 64
    assert condition.reason.isalpha()


# ---- the publisher ------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = datetime(2026, 11, 22, 2, 5, 56, tzinfo=UTC)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.stop()


def publisher(
    server: FakeApiServer, tmp_path: Path, state: list[Condition], clock: Clock
) -> tuple[ConditionPublisher, PluginMetrics]:
    metrics = PluginMetrics()
    api = from_kubeconfig(server.kubeconfig(tmp_path))
    return ConditionPublisher(
        "node-a", api, metrics, lambda: state[0], clock=lambda: clock.now, wall=lambda: clock.wall
    ), metrics


def test_writes_one_condition_through_the_status_subresource_only_on_change(
    api_server: FakeApiServer, tmp_path: Path
) -> None:
    clock, state = Clock(), [health_condition({}, 16)]
    pub, _ = publisher(api_server, tmp_path, state, clock)
    asyncio.run(pub.publish_once())
    (patch,) = api_server.status_patches()
    assert patch["path"] == "/api/v1/nodes/node-a/status"
    assert patch["headers"]["Content-Type"] == "application/strategic-merge-patch+json"
    assert patch["body"] == {
        "status": {
            "conditions": [
                {
                    "type": CONDITION_TYPE, "status": "True", "reason": "AllDevicesHealthy",
                    "message": "all 16 Neuron devices are healthy",
                    "lastHeartbeatTime": "2026-11-22T02:05:56Z", "lastTransitionTime": "2026-11-22T02:05:56Z",
                }
            ]
        }
    }  # fmt: skip
    assert api_server.condition("Ready") is not None  # kubelet's condition is left alone
    assert api_server.patches() == []  # no annotation write
    for _ in range(3):
        clock.advance(10)
        asyncio.run(pub.publish_once())
    assert len(api_server.status_patches()) == 1  # nothing changed
    state[0] = health_condition({4: "hw_error:DMA_ERROR"}, 16)
    clock.advance(1)
    asyncio.run(pub.publish_once())
    written = api_server.condition(CONDITION_TYPE)
    assert written is not None and written["status"] == "False" and written["reason"] == "NeuronHardwareError"
    assert written["lastTransitionTime"] == "2026-11-22T02:06:27Z"


def test_a_heartbeat_keeps_the_transition_time(api_server: FakeApiServer, tmp_path: Path) -> None:
    clock, state = Clock(), [health_condition({1: "device_node_missing"}, 4)]
    pub, _ = publisher(api_server, tmp_path, state, clock)
    asyncio.run(pub.publish_once())
    clock.advance(HEARTBEAT_SECONDS)
    asyncio.run(pub.publish_once())
    first, second = (p["body"]["status"]["conditions"][0] for p in api_server.status_patches())
    assert second["lastHeartbeatTime"] != first["lastHeartbeatTime"]
    assert second["lastTransitionTime"] == first["lastTransitionTime"]


def test_a_restart_keeps_the_transition_time_of_an_unchanged_status(api_server: FakeApiServer, tmp_path: Path) -> None:
    api_server.conditions.append(
        {"type": CONDITION_TYPE, "status": "True", "reason": "AllDevicesHealthy", "message": "x",
         "lastHeartbeatTime": "2026-11-01T00:00:00Z", "lastTransitionTime": "2026-11-01T00:00:00Z"}
    )  # fmt: skip
    clock, state = Clock(), [health_condition({}, 4)]
    pub, _ = publisher(api_server, tmp_path, state, clock)
    asyncio.run(pub.publish_once())
    written = api_server.condition(CONDITION_TYPE)
    assert written is not None and written["lastTransitionTime"] == "2026-11-01T00:00:00Z"
    assert written["lastHeartbeatTime"] == "2026-11-22T02:05:56Z"


def test_a_refused_write_backs_off_and_is_counted(api_server: FakeApiServer, tmp_path: Path) -> None:
    clock, state = Clock(), [health_condition({}, 4)]
    pub, metrics = publisher(api_server, tmp_path, state, clock)
    api_server.status_status = 403
    asyncio.run(pub.publish_once())
    asyncio.run(pub.publish_once())  # within the backoff: no second attempt
    assert len(api_server.status_patches()) == 1
    assert metrics.condition_errors.labels("apiserver_rejected")._value.get() == 1
    api_server.status_status = 200
    clock.advance(1.0)
    asyncio.run(pub.publish_once())
    assert api_server.condition(CONDITION_TYPE) is not None and pub.written == state[0]
