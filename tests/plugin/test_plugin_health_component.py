"""Hardware health, end to end in one process: the real daemon against the kubelet stubs and the loopback
API-server stand-in. The default kernel-log source reads this machine's real ring buffer through syslog(2); a
plugin started without CAP_SYSLOG keeps serving and says why; a hardware error (from a syslog-format file, the
only way a test can put a facility-0 record in front of the plugin) sets the NeuronDevicesHealthy condition, and
the quarantine's end (--hw-error-quarantine) clears it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from neuronalloc.nodestate import UNHEALTHY_DEVICES
from tests.plugin.api_stub import FakeApiServer
from tests.plugin.harness import fake_cluster
from tests.plugin.kubelet_stub import wait_until
from tests.plugin.test_plugin_component import NEURON, NEURONCORE
from tests.plugin.test_plugin_ringbuffer import _can_read_the_ring, drop_capabilities
from tests.plugin.test_plugin_serving import Node

CONDITION = "NeuronDevicesHealthy"
SYSLOG = "Nov 22 02:05:56 ip-10-0-1-7 kernel: "


@pytest.fixture
def node() -> Iterator[Node]:
    api = FakeApiServer()
    try:
        with fake_cluster(12, core_count=2) as cluster:
            yield Node(cluster, api)
    finally:
        api.stop()


def start(node: Node, extra: list[str] | None = None, **kwargs: object) -> None:
    node.cluster.start_plugin(
        "inf2.48xlarge",
        [
            "--metrics-port", str(node.port),
            "--advertise-address", "127.0.0.1",
            "--kubeconfig", str(node.api.kubeconfig(node.cluster.root)),
            *(extra or []),
        ],
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def metric_line(node: Node, prefix: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=5) as reply:
        lines = [line for line in reply.read().decode().splitlines() if line.startswith(prefix)]
    assert lines, f"no {prefix}"
    return lines[0]


def restricted_dmesg() -> bool:
    with open("/proc/sys/kernel/dmesg_restrict") as restrict:
        return restrict.read().strip() == "1"


@pytest.mark.skipif(os.geteuid() != 0 or not restricted_dmesg(), reason="needs root and kernel.dmesg_restrict=1")
def test_without_cap_syslog_the_plugin_keeps_serving_and_says_why(node: Node) -> None:
    """The DaemonSet without CAP_SYSLOG (or a cluster that strips it): the ring buffer refuses syslog(2) with
    EPERM. The plugin still registers both resources, answers /readyz 200, checks device presence, and says in
    its log, in a gauge and in the node condition that hardware errors are not seen, and why."""
    start(node, preexec=drop_capabilities)
    endpoint = node.cluster.kubelet.wait_registered(NEURON)
    node.cluster.kubelet.wait_registered(NEURONCORE)
    assert node.cluster.plugin is not None
    event = node.cluster.plugin.wait_event("health.hw_error_log_unreadable")
    assert event["source"] == "ringbuffer" and "CAP_SYSLOG" in event["error"] and event["level"] == "warning"
    assert "Operation not permitted" in event["error"]
    node.wait_readyz(200, timeout=15)
    assert metric_line(node, "neuron_contig_plugin_kernel_log_readable") == (
        'neuron_contig_plugin_kernel_log_readable{source="ringbuffer"} 0.0'
    )
    wait_until(lambda: node.api.condition(CONDITION) is not None, what="the condition")
    condition = node.api.condition(CONDITION)
    assert condition is not None and (condition["status"], condition["reason"]) == ("True", "HardwareErrorsNotWatched")
    assert "CAP_SYSLOG" in condition["message"]
    node.cluster.node.remove_device(4)  # presence still works
    endpoint.wait_for_devices(lambda d: d["4"] == "Unhealthy")


@pytest.mark.skipif(not _can_read_the_ring(), reason="syslog(2) READ_ALL is refused here")
def test_by_default_the_plugin_follows_the_kernel_ring_buffer(node: Node) -> None:
    start(node)
    node.cluster.kubelet.wait_registered(NEURON)
    assert node.cluster.plugin is not None
    event = node.cluster.plugin.wait_event("health.hw_error_log_following")
    assert (event["source"], event["path"], event["format"]) == ("ringbuffer", "ringbuffer", "ringbuffer")
    node.wait_readyz(200, timeout=15)
    assert metric_line(node, "neuron_contig_plugin_kernel_log_readable") == (
        'neuron_contig_plugin_kernel_log_readable{source="ringbuffer"} 1.0'
    )
    wait_until(lambda: (node.api.condition(CONDITION) or {}).get("reason") == "AllDevicesHealthy", what="condition")


def test_a_hardware_error_sets_the_condition_and_the_quarantine_end_clears_it(node: Node) -> None:
    log_file = node.cluster.root / "kern.log"
    log_file.write_text("")
    start(node, ["--hw-error-log", str(log_file), "--hw-error-quarantine", "3"])
    endpoint = node.cluster.kubelet.wait_registered(NEURON)
    wait_until(lambda: (node.api.condition(CONDITION) or {}).get("status") == "True", what="healthy condition")
    with log_file.open("a") as log:
        log.write(
            SYSLOG + "NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR instance-id=i-0 hostname=h nd-id=9 nc-id=0 "
            "serial-num=19fc action=TERMINATE_INSTANCE\n"
        )
    endpoint.wait_for_devices(lambda d: d["9"] == "Unhealthy")
    wait_until(lambda: (node.api.condition(CONDITION) or {}).get("status") == "False", what="unhealthy condition")
    condition = node.api.condition(CONDITION)
    assert condition is not None and condition["reason"] == "NeuronHardwareError"
    assert condition["message"] == (
        "1 of 12 Neuron devices unhealthy, not offered to pods: hw_error:SRAM_UNCORRECTABLE_ERROR on 9"
    )
    wait_until(lambda: node.api.annotation(UNHEALTHY_DEVICES) == "9", what="unhealthy-devices annotation")
    # The quarantine (3 s here) passes without another record: the device and the condition recover.
    endpoint.wait_for_devices(lambda d: d["9"] == "Healthy", timeout=15)
    wait_until(lambda: (node.api.condition(CONDITION) or {}).get("status") == "True", what="recovered condition")
    recovered = node.api.condition(CONDITION)
    assert recovered is not None and recovered["reason"] == "AllDevicesHealthy"
    assert recovered["lastTransitionTime"] >= condition["lastTransitionTime"]
    wait_until(lambda: node.api.annotation(UNHEALTHY_DEVICES) == "", what="annotation cleared")
    assert len(node.api.status_patches()) == 3  # healthy, unhealthy, healthy: written on change only
