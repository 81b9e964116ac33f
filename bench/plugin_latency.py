"""Device-plugin latency over the real unix sockets, with a do-nothing gRPC server as the same-run baseline.

Prints, for 16 devices (trn1.32xlarge, 4-device requests) and 64 cores (trn2.48xlarge at LNC=2, 8-core
requests): GetPreferredAllocation + Allocate round-trip p50/p99 for the real plugin process and for a do-nothing
grpc.aio server in its own process, and their ratio; then device loss -> Unhealthy and kubelet restart ->
re-registration times.

    python bench/plugin_latency.py [--rounds 400]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from plugin._proto.deviceplugin.v1beta1 import api_pb2 as dp_pb2  # noqa: E402
from plugin._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc  # noqa: E402
from tests.plugin.harness import Cluster, fake_cluster  # noqa: E402

NEURON, NEURONCORE = "aws.amazon.com/neuron", "aws.amazon.com/neuroncore"


class _NoopServicer(dp_grpc.DevicePluginServicer):  # type: ignore[misc]
    async def GetPreferredAllocation(self, request, context):  # type: ignore[no-untyped-def]
        return dp_pb2.PreferredAllocationResponse(
            container_responses=[dp_pb2.ContainerPreferredAllocationResponse(deviceIDs=["0"])]
        )

    async def Allocate(self, request, context):  # type: ignore[no-untyped-def]
        return dp_pb2.AllocateResponse(container_responses=[dp_pb2.ContainerAllocateResponse()])


async def _serve_noop(socket_path: str) -> None:
    server = grpc.aio.server()
    dp_grpc.add_DevicePluginServicer_to_server(_NoopServicer(), server)
    server.add_insecure_port(f"unix://{socket_path}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def measure_pairs(stub: dp_grpc.DevicePluginStub, units: int, size: int, rounds: int) -> list[float]:
    """Seconds per GetPreferredAllocation + Allocate pair, as kubelet issues them at pod admission."""
    available = [str(u) for u in range(units)]
    preferred_request = dp_pb2.PreferredAllocationRequest(
        container_requests=[
            dp_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=size)
        ]
    )
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        chosen = stub.GetPreferredAllocation(preferred_request, timeout=10).container_responses[0].deviceIDs
        ids = list(chosen) if len(chosen) == size else available[:size]
        stub.Allocate(
            dp_pb2.AllocateRequest(container_requests=[dp_pb2.ContainerAllocateRequest(devices_ids=ids)]), timeout=10
        )
        samples.append(time.perf_counter() - started)
    return samples


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def noop_samples(root: Path, units: int, size: int, rounds: int) -> list[float]:
    socket_path = root / "noop.sock"
    server = subprocess.Popen(
        [sys.executable, __file__, "--noop-server", str(socket_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with grpc.insecure_channel(f"unix://{socket_path}") as channel:
            stub = dp_grpc.DevicePluginStub(channel)
            measure_pairs(stub, units, size, 20)  # warm-up
            return measure_pairs(stub, units, size, rounds)
    finally:
        server.terminate()
        server.wait(10)


def latency(
    instance_type: str, devices: int, core_count: int, resource: str, units: int, size: int, rounds: int
) -> None:
    with fake_cluster(devices, core_count=core_count, lnc=2) as cluster:
        cluster.start_plugin(instance_type, ["--log-level", "warning"])
        endpoint = cluster.kubelet.wait_registered(resource)
        endpoint.wait_for_devices(lambda d: len(d) == units)
        measure_pairs(endpoint.stub, units, size, 20)  # warm-up
        ours = measure_pairs(endpoint.stub, units, size, rounds)
        base = noop_samples(cluster.root, units, size, rounds)
    p50, p99, b50, b99 = (percentile(ours, 50), percentile(ours, 99), percentile(base, 50), percentile(base, 99))
    print(
        f"{instance_type:15} {resource.split('/')[1]:10} {units:3} units, size {size}: "
        f"plugin p50 {p50 * 1e3:6.2f} ms p99 {p99 * 1e3:6.2f} ms | do-nothing p50 {b50 * 1e3:6.2f} ms "
        f"p99 {b99 * 1e3:6.2f} ms | ratio p50 {p50 / b50:4.1f}x p99 {p99 / b99:4.1f}x"
    )


def has_health(device: str, health: str, devices: dict[str, str]) -> bool:
    return devices.get(device) == health


def device_loss(cluster: Cluster, repeats: int) -> None:
    endpoint = cluster.kubelet.endpoints[NEURON]
    lost, back = [], []
    for i in range(repeats):
        device = i % 16
        started = time.monotonic()
        cluster.node.remove_device(device)
        endpoint.wait_for_devices(functools.partial(has_health, str(device), "Unhealthy"))
        lost.append(endpoint.update_times[-1] - started)
        started = time.monotonic()
        cluster.node.add_device(device)
        endpoint.wait_for_devices(functools.partial(has_health, str(device), "Healthy"))
        back.append(endpoint.update_times[-1] - started)
    print(
        f"device loss -> Unhealthy: p50 {statistics.median(lost) * 1e3:.0f} ms, max {max(lost) * 1e3:.0f} ms; "
        f"return -> Healthy: p50 {statistics.median(back) * 1e3:.0f} ms, max {max(back) * 1e3:.0f} ms "
        f"({repeats} runs; poll interval 200 ms; goal <= 1000 ms)"
    )


def kubelet_restart(cluster: Cluster, repeats: int) -> None:
    times = []
    for i in range(repeats):
        started = time.monotonic()
        cluster.kubelet.restart()
        for resource in (NEURON, NEURONCORE):
            cluster.kubelet.wait_registered(resource, count=i + 2)
        times.append(max(t for t, _ in cluster.kubelet.registrations[-2:]) - started)
    print(
        f"kubelet restart -> both resources re-registered: p50 {statistics.median(times) * 1e3:.0f} ms, "
        f"max {max(times) * 1e3:.0f} ms ({repeats} runs; goal <= 1000 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--noop-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.noop_server:
        asyncio.run(_serve_noop(args.noop_server))
        return
    latency("trn1.32xlarge", 16, 2, NEURON, 16, 4, args.rounds)
    latency("trn2.48xlarge", 16, 8, NEURONCORE, 64, 8, args.rounds)
    with fake_cluster(16, core_count=2) as cluster:
        cluster.start_plugin("trn1.32xlarge", ["--log-level", "warning"])
        for resource in (NEURON, NEURONCORE):
            cluster.kubelet.wait_registered(resource)
        cluster.kubelet.endpoints[NEURON].wait_for_devices(lambda d: len(d) == 16)
        device_loss(cluster, args.repeats)
        kubelet_restart(cluster, args.repeats)


if __name__ == "__main__":
    main()
