"""Hardware health on the real control plane: a NEURON_HW_ERR record sets the node's NeuronDevicesHealthy
condition (status subresource, next to the kubelet's Ready) and withdraws the device (kubelet's device manager
stops counting it allocatable, the plugin's annotations stop counting it free, and the extender refuses the block
it breaks); the quarantine's end brings all of it back and the waiting pod runs.

The error is injected through the kernel-log stand-in (`Cluster.inject_hw_error`: a syslog-format file the
plugin follows), since a test cannot make the kernel write a facility-0 record. The quarantine is shortened with
--hw-error-quarantine.
"""

from __future__ import annotations

from typing import Any

from neuronalloc import Resource
from tests.cluster.harness import NEURON
from tests.cluster.processes import wait_for
from tests.cluster.workload import Pool, is_consecutive

CONDITION = "NeuronDevicesHealthy"
QUARANTINE_SECONDS = 30


def node_condition(pool: Pool, node: str, kind: str) -> dict[str, Any] | None:
    for condition in pool.core.read_node(node).status.conditions or []:
        if condition.type == kind:
            return dict(condition.to_dict())
    return None


def wait_condition(pool: Pool, node: str, status: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = node_condition(pool, node, CONDITION)
        return found if found and (found["status"], found["reason"]) == (status, reason) else None

    return wait_for(f"{node}: {CONDITION}={status} ({reason})", probe, timeout=timeout, watch=pool._procs())


def allocatable(pool: Pool, node: str) -> int:
    return int(pool.core.read_node(node).status.allocatable.get(NEURON, "0"))


def test_a_hardware_error_withdraws_the_device_and_its_quarantine_end_restores_it(pool: Pool) -> None:
    cluster = pool.cluster
    node = cluster.add_node(
        f"{pool.name}-inf2", "inf2.48xlarge", pool=pool.name,
        plugin_args=[f"--hw-error-quarantine={QUARANTINE_SECONDS}"],
    )  # fmt: skip
    pool.nodes[node.name] = node
    healthy = wait_condition(pool, node.name, "True", "AllDevicesHealthy")
    assert healthy["message"] == "all 12 Neuron devices are healthy"

    cluster.inject_hw_error(node.name, 5)
    broken = wait_condition(pool, node.name, "False", "NeuronHardwareError")
    assert broken["message"] == (
        "1 of 12 Neuron devices unhealthy, not offered to pods: hw_error:SRAM_UNCORRECTABLE_ERROR on 5"
    )
    ready = node_condition(pool, node.name, "Ready")
    assert ready is not None and ready["status"] == "True", "the kubelet's condition is untouched"
    wait_for("allocatable drops to 11", lambda: allocatable(pool, node.name) == 11, timeout=30, watch=pool._procs())
    assert 5 not in cluster.allocatable_devices(node.name)[NEURON]
    pool.wait_node_state(node.name, "device 5 is unhealthy", lambda s: s.unhealthy_devices == {5})

    # 11 devices are allocatable, so kube-scheduler's own count check passes a 7-device pod; only the extender
    # can see that 0-4 and 6-11 hold no 7 consecutive devices.
    name = pool.create("seven", Resource.NEURON, 7)
    message = pool.wait_scheduling_message(name, "block of 7 devices", timeout=QUARANTINE_SECONDS / 2)
    assert "contiguous" in message
    assert pool.pod(name).spec.node_name is None

    # No second record: the quarantine passes, the device and the condition come back, the pod runs.
    wait_condition(pool, node.name, "True", "AllDevicesHealthy", timeout=QUARANTINE_SECONDS + 30)
    wait_for("allocatable back to 12", lambda: allocatable(pool, node.name) == 12, timeout=30, watch=pool._procs())
    pool.wait_phase([name])
    devices = pool.allocation(name).of(Resource.NEURON)
    assert len(devices) == 7 and is_consecutive(devices)
    recovered = node_condition(pool, node.name, CONDITION)
    assert recovered is not None and recovered["last_transition_time"] > broken["last_transition_time"]
