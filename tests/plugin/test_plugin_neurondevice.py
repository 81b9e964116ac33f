"""`aws.amazon.com/neurondevice`, the alias of whole devices, against the real plugin process and a kubelet stub.

Kubelet tracks the three names on their own; these tests hand the plugin what one name holds (through the
PodResources stub, or through its own earlier Allocate) and check that the other names never get it.
"""

from __future__ import annotations

import urllib.request

import grpc

from tests.cluster.processes import free_port
from tests.plugin.harness import Cluster, PluginProcess
from tests.plugin.kubelet_stub import PluginEndpoint, pod_resources, wait_until
from tests.plugin.test_plugin_component import NEURON, NEURONCORE, allocate, allocate_error, ids, preferred

NEURONDEVICE = "aws.amazon.com/neurondevice"
ALL = (NEURON, NEURONCORE, NEURONDEVICE)


def start_all(cluster: Cluster, instance_type: str, extra: list[str] | None = None) -> dict[str, PluginEndpoint]:
    cluster.start_plugin(instance_type, extra)
    return {r: cluster.kubelet.wait_registered(r) for r in ALL}


def test_neurondevice_lists_the_devices_under_their_device_ids(trn1: Cluster) -> None:
    endpoints = start_all(trn1, "trn1.32xlarge")
    endpoints[NEURONDEVICE].wait_for_devices(lambda d: len(d) == 16)
    assert endpoints[NEURONDEVICE].latest() == {str(i): "Healthy" for i in range(16)}
    trn1.node.remove_device(6)
    endpoints[NEURONDEVICE].wait_for_devices(lambda d: d["6"] == "Unhealthy")
    endpoints[NEURON].wait_for_devices(lambda d: d["6"] == "Unhealthy")


def test_neurondevice_preferred_allocation_and_allocate_follow_the_neuron_rule(trn1: Cluster) -> None:
    endpoints = start_all(trn1, "trn1.32xlarge")
    alias = endpoints[NEURONDEVICE]
    # Device 0 taken: the aligned 4-block that keeps 8-15 whole is 4-7, exactly as for aws.amazon.com/neuron.
    assert (
        preferred(alias, ids(*range(1, 16)), 4)
        == ids(4, 5, 6, 7)
        == preferred(endpoints[NEURON], ids(*range(1, 16)), 4)
    )
    granted = allocate(alias, ids(4, 5, 6, 7))
    assert granted.envs["AWS_NEURON_VISIBLE_DEVICES"] == "4-7"
    assert granted.envs["NEURON_RT_VISIBLE_CORES"] == "8-15"
    assert [(d.host_path.rsplit("/", 1)[1], d.container_path, d.permissions) for d in granted.devices] == [
        (f"neuron{i}", f"/dev/neuron{i}", "rw") for i in (4, 5, 6, 7)
    ]
    error = allocate_error(alias, ids(1, 2))  # a 2-device block breaks trn1's torus rule
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1, 4, 8 or 16 devices" in (error.details() or "")


def test_hardware_held_under_one_name_is_refused_under_the_other_two(trn1: Cluster) -> None:
    trn1.podresources.pods = [
        pod_resources("ml", "new", {NEURON: ids(0, 1, 2, 3)}),
        pod_resources("ml", "old", {NEURONDEVICE: ids(4, 5, 6, 7)}),
        pod_resources("ml", "cores", {NEURONCORE: ids(17)}),  # core 17 is on device 8
    ]
    endpoints = start_all(trn1, "trn1.32xlarge")
    for name, block in ((NEURONDEVICE, ids(0, 1, 2, 3)), (NEURON, ids(4, 5, 6, 7)), (NEURONDEVICE, ids(8, 9, 10, 11))):
        error = allocate_error(endpoints[name], block)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (name, block)
        assert "share hardware with" in (error.details() or "")
    error = allocate_error(endpoints[NEURONCORE], ids(8, 9))  # device 4, held as neurondevice
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Kubelet offers every ID but the name's own holdings (it does not know the other names hold 0-3 and 8);
    # the plugin narrows that to what no name holds.
    assert preferred(endpoints[NEURONDEVICE], ids(*range(4), *range(8, 16)), 4) == ids(12, 13, 14, 15)
    assert preferred(endpoints[NEURON], ids(*range(4, 16)), 1) == ids(9)


def test_an_alias_grant_counts_before_podresources_shows_it(inf2: Cluster) -> None:
    endpoints = start_all(inf2, "inf2.48xlarge")
    allocate(endpoints[NEURONDEVICE], ids(0, 1))  # the stub's PodResources never shows this pod
    assert allocate_error(endpoints[NEURON], ids(1, 2)).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert allocate_error(endpoints[NEURONCORE], ids(3)).code() == grpc.StatusCode.FAILED_PRECONDITION  # device 1
    assert preferred(endpoints[NEURON], ids(*range(12)), 2) == ids(2, 3)


def test_disable_neurondevice_registers_two_names_and_still_accounts_the_alias(trn1: Cluster) -> None:
    trn1.podresources.pods = [pod_resources("ml", "old", {NEURONDEVICE: ids(0, 1, 2, 3)})]  # from before the switch
    args = trn1.plugin_args("trn1.32xlarge", [])
    trn1.plugin = PluginProcess(args, trn1.root / "plugin.log", env={"DISABLE_NEURONDEVICE": "true"})
    endpoints = {r: trn1.kubelet.wait_registered(r) for r in (NEURON, NEURONCORE)}
    event = trn1.plugin.wait_event("plugin.resources")
    assert event["resources"] == f"{NEURON},{NEURONCORE}"
    assert {r.resource_name for _, r in trn1.kubelet.registrations} == {NEURON, NEURONCORE}
    assert not (trn1.socket_dir / "neuron-contig-neurondevice.sock").exists()
    assert allocate_error(endpoints[NEURON], ids(0, 1, 2, 3)).code() == grpc.StatusCode.FAILED_PRECONDITION


def test_neurondevice_metrics(trn1: Cluster) -> None:
    port = free_port()
    trn1.podresources.pods = [pod_resources("ml", "old", {NEURONDEVICE: ids(0, 1, 2, 3)})]
    endpoints = start_all(trn1, "trn1.32xlarge", ["--metrics-port", str(port)])
    allocate(endpoints[NEURONDEVICE], ids(8, 9, 10, 11))
    allocate_error(endpoints[NEURONDEVICE], ids(0, 2))

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    wait_until(lambda: 'neuron_contig_plugin_devices{state="allocated"} 8.0' in scrape(), what="usage metrics")
    text = scrape()
    for line in (
        'neuron_contig_plugin_allocations_total{resource="neurondevice",result="ok"} 1.0',
        'neuron_contig_plugin_allocations_total{resource="neurondevice",result="invalid_argument"} 1.0',
        'neuron_contig_plugin_registered{resource="neurondevice"} 1.0',
        'neuron_contig_plugin_largest_free_block{resource="neurondevice"} 4.0',
        'neuron_contig_plugin_largest_free_block{resource="neuron"} 4.0',
    ):
        assert line in text, line
