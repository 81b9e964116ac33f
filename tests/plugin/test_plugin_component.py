"""Component tests: the real `neuron-device-plugin` process against a kubelet stub on real unix sockets.

The kubelet and PodResources sides are test doubles (tests/plugin/kubelet_stub.py) that speak the real gRPC
protocols; the node is a fake /dev + sysfs tree in a temp dir.
"""

from __future__ import annotations

import os
import socket
import urllib.request

import grpc
import pytest

from plugin._proto.deviceplugin.v1beta1 import api_pb2 as dp_pb2
from tests.cluster.processes import free_port
from tests.plugin.harness import Cluster, fake_cluster
from tests.plugin.kubelet_stub import PluginEndpoint, pod_resources, wait_until

NEURON = "aws.amazon.com/neuron"
NEURONCORE = "aws.amazon.com/neuroncore"
NEURONDEVICE = "aws.amazon.com/neurondevice"


def start(cluster: Cluster, instance_type: str = "", extra: list[str] | None = None) -> dict[str, PluginEndpoint]:
    cluster.start_plugin(instance_type, extra)
    return {r: cluster.kubelet.wait_registered(r) for r in (NEURON, NEURONCORE)}


def ids(*values: int) -> list[str]:
    return [str(v) for v in values]


def preferred(endpoint: PluginEndpoint, available: list[str], size: int, must: list[str] | None = None) -> list[str]:
    request = dp_pb2.PreferredAllocationRequest(
        container_requests=[
            dp_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must or [], allocation_size=size
            )
        ]
    )
    response = endpoint.stub.GetPreferredAllocation(request, timeout=10)
    return list(response.container_responses[0].deviceIDs)


def allocate(endpoint: PluginEndpoint, device_ids: list[str]) -> dp_pb2.ContainerAllocateResponse:
    request = dp_pb2.AllocateRequest(container_requests=[dp_pb2.ContainerAllocateRequest(devices_ids=device_ids)])
    response: dp_pb2.AllocateResponse = endpoint.stub.Allocate(request, timeout=10)
    return response.container_responses[0]


def allocate_error(endpoint: PluginEndpoint, device_ids: list[str]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        allocate(endpoint, device_ids)
    return caught.value


# -- registration and device lists ----------------------------------------------------------------------------


def test_registers_every_resource_and_advertises_what_it_implements(trn1: Cluster) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    endpoints[NEURONDEVICE] = trn1.kubelet.wait_registered(NEURONDEVICE)
    requests = {r.resource_name: r for _, r in trn1.kubelet.registrations}
    assert set(requests) == {NEURON, NEURONCORE, NEURONDEVICE}
    for resource, request in requests.items():
        assert request.version == "v1beta1"
        assert "/" not in request.endpoint  # a file name relative to the plugin dir
        assert (trn1.socket_dir / request.endpoint).is_socket()
        options = endpoints[resource].options
        assert options.get_preferred_allocation_available is True
        assert options.pre_start_required is False


def test_full_device_lists_all_healthy(trn1: Cluster) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    endpoints[NEURON].wait_for_devices(lambda d: len(d) == 16)
    endpoints[NEURONCORE].wait_for_devices(lambda d: len(d) == 32)
    assert endpoints[NEURON].latest() == {str(i): "Healthy" for i in range(16)}
    assert endpoints[NEURONCORE].latest() == {str(i): "Healthy" for i in range(32)}


@pytest.mark.parametrize(("lnc", "cores"), [(None, 64), (2, 64), (1, 128)])
def test_trn2_core_count_follows_logical_nc_config(lnc: int | None, cores: int) -> None:
    with fake_cluster(16, core_count=8, lnc=lnc) as cluster:
        endpoints = start(cluster, "trn2.48xlarge")
        endpoints[NEURONCORE].wait_for_devices(lambda d: len(d) == cores)
        assert set(endpoints[NEURONCORE].latest()) == {str(i) for i in range(cores)}


def test_instance_type_from_device_count_and_sysfs_core_count(inf2: Cluster) -> None:
    endpoints = start(inf2)  # no --instance-type, no API server: 12 devices x 2 cores is inf2.48xlarge
    assert inf2.plugin is not None
    event = inf2.plugin.wait_event("discovery.done")
    assert (event["instance_type"], event["source"]) == ("inf2.48xlarge", "device_count")
    endpoints[NEURONCORE].wait_for_devices(lambda d: len(d) == 24)


def test_a_dev_of_a_thousand_entries_advertises_the_instance_type_s_twelve_devices() -> None:
    with fake_cluster(1000, core_count=2) as cluster:
        endpoints = start(cluster, "inf2.48xlarge")
        endpoints[NEURON].wait_for_devices(lambda d: len(d) == 12)
        endpoints[NEURONCORE].wait_for_devices(lambda d: len(d) == 24)
        assert cluster.plugin is not None
        event = cluster.plugin.wait_event("discovery.devices_ignored")
        assert (event["names"], event["count"]) == ("neuron12-999", 988)


def test_unknown_instance_type_falls_back_to_a_linear_chain_and_says_so() -> None:
    with fake_cluster(3, core_count=2) as cluster:
        endpoints = start(cluster)
        assert cluster.plugin is not None
        event = cluster.plugin.wait_event("discovery.unknown_instance_type")
        assert event["source"] == "fallback" and event["devices"] == 3
        assert "linear chain" in event["rule"]
        assert preferred(endpoints[NEURON], ids(0, 1, 2), 2) == ids(0, 1)


def test_settings_come_from_env_vars_when_flags_are_absent(trn1: Cluster) -> None:
    args = trn1.plugin_args("trn1.32xlarge", [])
    # Drop --instance-type and --device-root from the flags and give them as env vars instead.
    flags = dict(zip(args[::2], args[1::2], strict=True))
    env = {"INSTANCE_TYPE": flags.pop("--instance-type"), "DEVICE_ROOT": flags.pop("--device-root")}
    from tests.plugin.harness import PluginProcess

    argv = [item for pair in flags.items() for item in pair]
    trn1.plugin = PluginProcess(argv, trn1.root / "plugin.log", env=env)
    event = trn1.plugin.wait_event("discovery.done")
    assert (event["instance_type"], event["source"], event["devices"]) == ("trn1.32xlarge", "flag", 16)


# -- GetPreferredAllocation -----------------------------------------------------------------------------------


def test_preferred_allocation_is_the_best_fit_aligned_block_on_trn(trn1: Cluster) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    # Device 0 is taken: rows 4-7, 8-11 and 12-15 are free; 4-7 is the one that keeps the 8-block 8-15 intact.
    assert preferred(endpoints[NEURON], ids(*range(1, 16)), 4) == ids(4, 5, 6, 7)
    assert preferred(endpoints[NEURON], ids(*range(1, 16)), 1) == ids(1)


def test_preferred_allocation_honours_must_include(inf2: Cluster) -> None:
    endpoints = start(inf2, "inf2.48xlarge")
    assert preferred(endpoints[NEURON], ids(*range(12)), 3, must=ids(7)) in (ids(5, 6, 7), ids(6, 7, 8), ids(7, 8, 9))


def test_preferred_allocation_avoids_devices_whose_cores_are_in_use(trn1: Cluster) -> None:
    trn1.podresources.pods = [pod_resources("ml", "small", {NEURONCORE: ids(0, 1, 2)})]  # devices 0 and 1
    endpoints = start(trn1, "trn1.32xlarge")
    # Kubelet tracks the resources separately, so it offers devices 0-3 although cores on 0-1 are held.
    chosen = preferred(endpoints[NEURON], ids(*range(16)), 4)
    assert not {"0", "1"} & set(chosen)
    core_choice = preferred(endpoints[NEURONCORE], ids(*range(3, 32)), 1)
    assert core_choice == ids(3)  # fills the partly used device first


def test_preferred_allocation_refuses_when_no_block_exists(inf2: Cluster) -> None:
    endpoints = start(inf2, "inf2.48xlarge")
    with pytest.raises(grpc.RpcError) as caught:
        preferred(endpoints[NEURON], ids(0, 2, 4, 6), 2)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no free block of 2" in (caught.value.details() or "")


def test_preferred_allocation_rejects_a_size_the_rule_forbids(trn1: Cluster) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    with pytest.raises(grpc.RpcError) as caught:
        preferred(endpoints[NEURON], ids(*range(16)), 3)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "multiple of its size" in (caught.value.details() or "")


# -- Allocate -------------------------------------------------------------------------------------------------


def test_allocate_whole_devices(trn1: Cluster) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    response = allocate(endpoints[NEURON], ids(4, 5, 6, 7))
    assert [(d.host_path, d.container_path, d.permissions) for d in response.devices] == [
        (str(trn1.node.dev / f"neuron{i}"), f"/dev/neuron{i}", "rw") for i in range(4, 8)
    ]
    assert dict(response.envs) == {"NEURON_RT_VISIBLE_CORES": "8-15", "AWS_NEURON_VISIBLE_DEVICES": "4-7"}


def test_allocate_cores_spanning_two_devices(inf2: Cluster) -> None:
    endpoints = start(inf2, "inf2.48xlarge")
    response = allocate(endpoints[NEURONCORE], ids(3, 4, 5))
    assert [d.container_path for d in response.devices] == ["/dev/neuron1", "/dev/neuron2"]
    assert dict(response.envs) == {"NEURON_RT_VISIBLE_CORES": "3-5", "AWS_NEURON_VISIBLE_DEVICES": "1-2"}


@pytest.mark.parametrize(
    ("resource", "request_ids", "code", "words"),
    [
        (NEURON, ["16"], grpc.StatusCode.INVALID_ARGUMENT, "unknown aws.amazon.com/neuron IDs [16]"),
        (NEURON, ["x"], grpc.StatusCode.INVALID_ARGUMENT, "unknown aws.amazon.com/neuron IDs [x]"),
        (NEURON, ["1", "1"], grpc.StatusCode.INVALID_ARGUMENT, "[1] are requested more than once"),
        (NEURON, ["0", "2"], grpc.StatusCode.INVALID_ARGUMENT, "[0,2]"),
        (NEURON, ["0", "1", "2"], grpc.StatusCode.INVALID_ARGUMENT, "multiple of its size"),
        (NEURON, ["2", "3", "4", "5"], grpc.StatusCode.INVALID_ARGUMENT, "[2-5]"),
        (NEURONCORE, ["0", "2"], grpc.StatusCode.INVALID_ARGUMENT, "[0,2]"),
        (NEURONCORE, [], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        # A 5,000-digit ID once escaped as a ValueError from int() (gRPC UNKNOWN).
        (NEURON, ["9" * 5000], grpc.StatusCode.INVALID_ARGUMENT, "unknown aws.amazon.com/neuron IDs [999999"),
        (NEURONCORE, ["0", "1" * 5000], grpc.StatusCode.INVALID_ARGUMENT, "unknown aws.amazon.com/neuroncore IDs"),
    ],
)
def test_allocate_rejects_invalid_requests(
    trn1: Cluster, resource: str, request_ids: list[str], code: grpc.StatusCode, words: str
) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    error = allocate_error(endpoints[resource], request_ids)
    assert error.code() == code
    assert words in (error.details() or "")


def test_ten_thousand_ids_are_refused_with_a_short_message(trn1: Cluster) -> None:
    """The message once listed every ID, and gRPC refused the oversized status (RESOURCE_EXHAUSTED)."""
    endpoints = start(trn1, "trn1.32xlarge")
    many = [str(i) for i in range(10_000)]
    error = allocate_error(endpoints[NEURON], many)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000" in (error.details() or "") and len(error.details() or "") <= 600
    unknown = allocate_error(endpoints[NEURONCORE], [f"x{i}" for i in range(5_000)])
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT and len(unknown.details() or "") <= 600
    # An ID kubelet offers that names nothing here is left out (no block remains), never a crash.
    cases = (
        (many, [], "INVALID_ARGUMENT"),
        (ids(0), many, "INVALID_ARGUMENT"),
        (["9" * 5000], [], "FAILED_PRECONDITION"),
    )
    for available, must, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            preferred(endpoints[NEURON], available, 4, must)
        assert caught.value.code().name == code
        assert len(caught.value.details() or "") <= 600
    with pytest.raises(grpc.RpcError) as too_many:
        many_containers = [dp_pb2.ContainerAllocateRequest(devices_ids=["0"]) for _ in range(1_000)]
        endpoints[NEURON].stub.Allocate(dp_pb2.AllocateRequest(container_requests=many_containers), timeout=10)
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert allocate(endpoints[NEURON], ids(0)).envs["AWS_NEURON_VISIBLE_DEVICES"] == "0"  # still serving


def test_allocate_refuses_unhealthy_devices(trn1: Cluster) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    trn1.node.remove_device(5)
    endpoints[NEURON].wait_for_devices(lambda d: d["5"] == "Unhealthy")
    error = allocate_error(endpoints[NEURON], ids(4, 5, 6, 7))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unhealthy devices [5]" in (error.details() or "")
    error = allocate_error(endpoints[NEURONCORE], ids(10, 11))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_allocate_refuses_hardware_held_by_the_other_resource(trn1: Cluster) -> None:
    trn1.podresources.pods = [pod_resources("ml", "cores", {NEURONCORE: ids(9)})]  # core 9 is on device 4
    endpoints = start(trn1, "trn1.32xlarge")
    error = allocate_error(endpoints[NEURON], ids(4, 5, 6, 7))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "[4] share hardware with aws.amazon.com/neuroncore" in (error.details() or "")
    trn1.podresources.pods = [pod_resources("ml", "whole", {NEURON: ids(8, 9, 10, 11)})]
    # The core holder is gone now; Allocate re-reads PodResources before refusing, so device 4 is free again.
    allocate(endpoints[NEURON], ids(4, 5, 6, 7))
    error = allocate_error(endpoints[NEURONCORE], ids(20, 21))  # device 10 is held whole
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_allocate_remembers_its_own_grants_before_podresources_shows_them(inf2: Cluster) -> None:
    endpoints = start(inf2, "inf2.48xlarge")
    allocate(endpoints[NEURONCORE], ids(0))  # PodResources (the stub) never shows this pod
    error = allocate_error(endpoints[NEURON], ids(0, 1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert preferred(endpoints[NEURON], ids(*range(12)), 2) != ids(0, 1)


# -- health ---------------------------------------------------------------------------------------------------


def test_device_loss_turns_unhealthy_and_its_return_healthy(trn1: Cluster) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    endpoints[NEURON].wait_for_devices(lambda d: len(d) == 16)
    trn1.node.remove_device(3)
    endpoints[NEURON].wait_for_devices(lambda d: d["3"] == "Unhealthy")
    endpoints[NEURONCORE].wait_for_devices(lambda d: d["6"] == d["7"] == "Unhealthy")
    assert sum(h == "Unhealthy" for h in endpoints[NEURON].latest().values()) == 1
    trn1.node.add_device(3)
    endpoints[NEURON].wait_for_devices(lambda d: d["3"] == "Healthy")
    endpoints[NEURONCORE].wait_for_devices(lambda d: d["6"] == d["7"] == "Healthy")


def test_device_missing_at_start_is_listed_unhealthy(trn1: Cluster) -> None:
    trn1.node.remove_device(15)
    endpoints = start(trn1, "trn1.32xlarge")
    endpoints[NEURON].wait_for_devices(lambda d: len(d) == 16 and d["15"] == "Unhealthy")


def test_kernel_log_hardware_error_marks_its_device_unhealthy(trn1: Cluster) -> None:
    kmsg = trn1.root / "kern.log"  # what a syslog daemon writes for kernel messages
    kmsg.write_text("Nov 22 02:05:50 h kernel: NEURON_HW_ERR=DMA_ERROR nd-id=1 (before start: not replayed)\n")
    endpoints = start(trn1, "trn1.32xlarge", ["--hw-error-log", str(kmsg)])
    endpoints[NEURON].wait_for_devices(lambda d: len(d) == 16)
    with kmsg.open("a") as log:
        log.write(
            "Nov 22 02:05:56 h kernel: [ 812.3] NEURON_HW_ERR=SRAM_UNCORRECTABLE_ERROR instance-id=i-0 hostname=h "
            "nd-id=9 nc-id=0\n"
        )
    endpoints[NEURON].wait_for_devices(lambda d: d["9"] == "Unhealthy")
    assert [k for k, v in endpoints[NEURON].latest().items() if v == "Unhealthy"] == ["9"]


# -- kubelet restarts and shutdown ----------------------------------------------------------------------------


def test_reregisters_after_kubelet_restart(trn1: Cluster) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    endpoints[NEURON].wait_for_devices(lambda d: len(d) == 16)
    trn1.kubelet.restart()
    for resource in (NEURON, NEURONCORE):
        endpoint = trn1.kubelet.wait_registered(resource, count=2)
        endpoint.wait_for_devices(lambda d: len(d) in (16, 32))
    assert allocate(trn1.kubelet.endpoints[NEURON], ids(0)).envs["AWS_NEURON_VISIBLE_DEVICES"] == "0"


def test_reregisters_when_only_its_socket_is_deleted(trn1: Cluster) -> None:
    start(trn1, "trn1.32xlarge")
    (trn1.socket_dir / "neuron-contig-neuroncore.sock").unlink()
    trn1.kubelet.wait_registered(NEURONCORE, count=2)
    assert trn1.plugin is not None
    trn1.plugin.wait_event("kubelet.restart_detected", resource=NEURONCORE, reason="plugin_socket_removed")
    assert trn1.kubelet.registration_count(NEURON) == 1


def test_reregisters_when_kubelet_sock_is_recreated(trn1: Cluster) -> None:
    start(trn1, "trn1.32xlarge")
    trn1.kubelet.relisten()  # new kubelet.sock inode; plugin sockets and streams untouched
    trn1.kubelet.wait_registered(NEURON, count=2)
    trn1.kubelet.wait_registered(NEURONCORE, count=2)
    assert trn1.plugin is not None
    trn1.plugin.wait_event("kubelet.restart_detected", resource=NEURON, reason="kubelet_socket_recreated")


def test_reregisters_when_the_stream_is_cancelled(trn1: Cluster) -> None:
    endpoints = start(trn1, "trn1.32xlarge")
    endpoints[NEURON].wait_for_devices(lambda d: len(d) == 16)  # the stream is open
    endpoints[NEURON].close()  # kubelet drops ListAndWatch
    trn1.kubelet.wait_registered(NEURON, count=2)
    assert trn1.plugin is not None
    trn1.plugin.wait_event("kubelet.restart_detected", resource=NEURON, reason="list_and_watch_ended")
    assert trn1.kubelet.registration_count(NEURONCORE) == 1


def test_a_stream_that_fails_on_its_third_send_is_recovered_with_the_full_device_list(trn1: Cluster) -> None:
    # Intel's listAndWatchServerStub, over real gRPC: kubelet's stream breaks right after the third device list
    # (the first, then two health changes). The plugin must notice, register again, and the new stream must
    # start with every device and its current health, not only the change.
    trn1.kubelet.fail_stream_after[NEURON] = 3
    endpoints = start(trn1, "trn1.32xlarge")
    first = endpoints[NEURON]
    first.wait_for_devices(lambda d: len(d) == 16)
    trn1.node.remove_device(3)
    first.wait_for_devices(lambda d: d["3"] == "Unhealthy")
    trn1.node.remove_device(5)
    assert first.stream_closed.wait(10), "the stream did not fail on its third send"
    assert len(first.updates) == 3
    again = trn1.kubelet.wait_registered(NEURON, count=2)
    again.wait_for_devices(lambda d: len(d) == 16)
    listed = again.updates[0]
    assert len(listed) == 16 and listed["3"] == listed["5"] == "Unhealthy"
    assert sum(h == "Healthy" for h in listed.values()) == 14
    assert trn1.kubelet.registration_count(NEURONCORE) == 1  # the other resource's stream was left alone


def test_reregisters_when_kubelet_comes_back_after_a_long_absence(trn1: Cluster) -> None:
    start(trn1, "trn1.32xlarge")
    absent_then_back = []
    trn1.kubelet.restart(before_listen=lambda: absent_then_back.append(os.listdir(trn1.socket_dir)))
    assert absent_then_back == [[]]  # every socket was gone while kubelet was down
    trn1.kubelet.wait_registered(NEURON, count=2)
    trn1.kubelet.wait_registered(NEURONCORE, count=2)


def test_retries_registration_that_kubelet_rejects(trn1: Cluster) -> None:
    trn1.kubelet.reject_with = "stub: resource name not allowed"
    trn1.start_plugin("trn1.32xlarge")
    assert trn1.plugin is not None
    event = trn1.plugin.wait_event("registration.failed")
    assert "resource name not allowed" in event["error"]
    trn1.kubelet.reject_with = None
    trn1.kubelet.wait_registered(NEURON)


def test_sigterm_removes_sockets_and_exits_zero(trn1: Cluster) -> None:
    start(trn1, "trn1.32xlarge")
    ours = [trn1.socket_dir / r.endpoint for _, r in trn1.kubelet.registrations]
    assert all(p.is_socket() for p in ours)
    assert trn1.plugin is not None
    assert trn1.plugin.terminate() == 0
    assert not any(p.exists() for p in ours)
    assert (trn1.socket_dir / "kubelet.sock").exists()  # kubelet's socket is not ours to remove


def test_refuses_a_socket_another_process_serves(trn1: Cluster) -> None:
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(str(trn1.socket_dir / "neuron-contig-neuron.sock"))
    squatter.listen()
    try:
        trn1.start_plugin("trn1.32xlarge")
        assert trn1.plugin is not None
        assert trn1.plugin.proc.wait(15) == 1
        event = trn1.plugin.wait_event("plugin.socket_in_use")
        assert "neuron-contig-neuron.sock" in event["error"]
    finally:
        squatter.close()


def test_busy_metrics_port_is_a_clear_startup_error(trn1: Cluster) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        trn1.start_plugin("trn1.32xlarge", ["--metrics-port", str(busy.getsockname()[1])])
        assert trn1.plugin is not None
        assert trn1.plugin.proc.wait(15) == 1
        trn1.plugin.wait_event("metrics.port_unavailable")


def test_no_devices_and_no_instance_type_is_a_clear_startup_error() -> None:
    with fake_cluster(0) as cluster:
        cluster.start_plugin()
        assert cluster.plugin is not None
        assert cluster.plugin.proc.wait(15) == 1
        assert "no neuronN device under" in cluster.plugin.wait_event("discovery.failed")["error"]


def test_replaces_a_stale_socket(trn1: Cluster) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(trn1.socket_dir / "neuron-contig-neuron.sock"))
    stale.close()  # the file stays, nobody listens: a crashed predecessor
    start(trn1, "trn1.32xlarge")


# -- observability --------------------------------------------------------------------------------------------


def test_metrics_and_healthz(trn1: Cluster) -> None:
    port = free_port()
    trn1.podresources.pods = [pod_resources("ml", "a", {NEURON: ids(0, 1, 2, 3)})]
    endpoints = start(trn1, "trn1.32xlarge", ["--metrics-port", str(port)])
    allocate(endpoints[NEURON], ids(8, 9, 10, 11))
    allocate_error(endpoints[NEURON], ids(0, 2))
    with pytest.raises(grpc.RpcError):  # a refused GetPreferredAllocation is counted, with its result
        preferred(endpoints[NEURON], ids(*range(16)), 3)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        assert reply.status == 200

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    wait_until(lambda: 'neuron_contig_plugin_devices{state="allocated"} 8.0' in scrape(), what="usage metrics")
    text = scrape()
    for line in (
        'neuron_contig_plugin_allocations_total{resource="neuron",result="ok"} 1.0',
        'neuron_contig_plugin_allocations_total{resource="neuron",result="invalid_argument"} 1.0',
        'neuron_contig_plugin_allocations_total{resource="neuroncore",result="failed_precondition"} 0.0',
        'neuron_contig_plugin_registered{resource="neuroncore"} 1.0',
        'neuron_contig_plugin_registrations_total{resource="neuron",result="ok"} 1.0',
        'neuron_contig_plugin_devices{state="free"} 8.0',
        'neuron_contig_plugin_largest_free_block{resource="neuron"} 4.0',
        "neuron_contig_plugin_topology_fallback 0.0",
        'neuron_contig_plugin_device_healthy{device="15"} 1.0',
        'neuron_contig_plugin_publish_errors_total{reason="apiserver_unreachable"} 0.0',
    ):
        assert line in text, line
    assert 'neuron_contig_plugin_rpc_duration_seconds_count{resource="neuron",rpc="Allocate"} 2.0' in text
    for resource, result, rpc, count in (
        ("neuron", "ok", "Allocate", 1),
        ("neuron", "invalid_argument", "Allocate", 1),
        ("neuron", "invalid_argument", "GetPreferredAllocation", 1),
        ("neuroncore", "failed_precondition", "GetPreferredAllocation", 0),
    ):
        line = f'neuron_contig_plugin_rpcs_total{{resource="{resource}",result="{result}",rpc="{rpc}"}} {count}.0'
        assert line in text, line
