"""Test doubles that stand in for kubelet, shipped with the tests (real gRPC servers on temp unix sockets).

- KubeletStub: kubelet's device-manager side. It serves Registration on <dir>/kubelet.sock and, like kubelet,
  answers each Register by dialling the plugin's socket, asking GetDevicePluginOptions and following
  ListAndWatch. `restart()` does what a kubelet restart does to the plugin directory.
- PodResourcesStub: kubelet's PodResources List, answering whatever pods the test sets.
- FakeNode: a /dev tree of plain `neuronN` files, a sysfs tree with `core_count`, and an LNC file.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from plugin._proto.deviceplugin.v1beta1 import api_pb2 as dp_pb2
from plugin._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from plugin._proto.podresources.v1 import api_pb2 as pr_pb2
from plugin._proto.podresources.v1 import api_pb2_grpc as pr_grpc

DEFAULT_WAIT = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = DEFAULT_WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@dataclass
class PluginEndpoint:
    """Kubelet's connection to one registered plugin: its options and every device list it streamed."""

    resource: str
    socket_path: Path
    channel: grpc.Channel
    stub: dp_grpc.DevicePluginStub
    options: dp_pb2.DevicePluginOptions
    updates: list[dict[str, str]] = field(default_factory=list)  # each: device ID -> health
    update_times: list[float] = field(default_factory=list)
    stream_closed: threading.Event = field(default_factory=threading.Event)
    fail_after: int | None = None  # break the stream once this many device lists have arrived
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def follow(self) -> None:
        call = self.stub.ListAndWatch(dp_pb2.Empty())
        try:
            for response in call:
                with self._cond:
                    self.updates.append({d.ID: d.health for d in response.devices})
                    self.update_times.append(time.monotonic())
                    self._cond.notify_all()
                if self.fail_after is not None and len(self.updates) >= self.fail_after:
                    call.cancel()  # the plugin's stream fails: its send is not delivered, the stream ends
        except grpc.RpcError:
            pass
        finally:
            self.stream_closed.set()

    def latest(self) -> dict[str, str]:
        with self._cond:
            return dict(self.updates[-1]) if self.updates else {}

    def wait_for_devices(self, predicate: Callable[[dict[str, str]], bool], timeout: float = DEFAULT_WAIT) -> None:
        wait_until(lambda: bool(self.updates) and predicate(self.latest()), timeout, f"{self.resource} device list")

    def close(self) -> None:
        self.channel.close()


class _Registration(dp_grpc.RegistrationServicer):  # type: ignore[misc]
    def __init__(self, stub: KubeletStub) -> None:
        self._stub = stub

    def Register(self, request: dp_pb2.RegisterRequest, context: grpc.ServicerContext) -> dp_pb2.Empty:
        self._stub.on_register(request, context)
        return dp_pb2.Empty()


class KubeletStub:
    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self.socket_path = socket_dir / "kubelet.sock"
        self.registrations: list[tuple[float, dp_pb2.RegisterRequest]] = []
        self.endpoints: dict[str, PluginEndpoint] = {}
        self.reject_with: str | None = None  # set to make Register fail with this message
        # resource -> N: the next stream of that resource fails once N device lists have been sent on it
        self.fail_stream_after: dict[str, int] = {}
        self._server: grpc.Server | None = None
        self._retired: list[grpc.Server] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        dp_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server

    def on_register(self, request: dp_pb2.RegisterRequest, context: grpc.ServicerContext) -> None:
        if self.reject_with:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.reject_with)
        socket_path = self.socket_dir / request.endpoint
        channel = grpc.insecure_channel(f"unix://{socket_path}")
        stub = dp_grpc.DevicePluginStub(channel)
        options = stub.GetDevicePluginOptions(dp_pb2.Empty(), timeout=10)
        endpoint = PluginEndpoint(request.resource_name, socket_path, channel, stub, options)
        with self._lock:
            endpoint.fail_after = self.fail_stream_after.pop(request.resource_name, None)
            self.registrations.append((time.monotonic(), request))
            previous = self.endpoints.get(request.resource_name)
            self.endpoints[request.resource_name] = endpoint
        if previous is not None:
            previous.close()
        threading.Thread(target=endpoint.follow, daemon=True).start()

    def registration_count(self, resource: str) -> int:
        with self._lock:
            return sum(1 for _, r in self.registrations if r.resource_name == resource)

    def wait_registered(self, resource: str, count: int = 1, timeout: float = DEFAULT_WAIT) -> PluginEndpoint:
        wait_until(lambda: self.registration_count(resource) >= count, timeout, f"registration #{count} of {resource}")
        return self.endpoints[resource]

    def stop(self) -> None:
        with self._lock:
            endpoints = list(self.endpoints.values())
        for endpoint in endpoints:
            endpoint.close()
        for server in [*self._retired, self._server]:
            if server is not None:
                server.stop(grace=None).wait()
        self._server, self._retired = None, []

    def relisten(self) -> None:
        """Replace kubelet.sock by a fresh socket (new inode) while the old server and streams live on."""
        old = self._server
        self.socket_path.unlink()
        self.start()
        if old is not None:
            self._retired.append(old)

    def restart(self, before_listen: Callable[[], None] | None = None) -> None:
        """What a kubelet restart does: stop, delete every socket in the plugin dir (other files stay), and
        listen on a fresh kubelet.sock."""
        self.stop()
        for entry in self.socket_dir.iterdir():
            if stat.S_ISSOCK(os.lstat(entry).st_mode):
                entry.unlink()
        if before_listen is not None:
            before_listen()
        self.start()


class _Lister(pr_grpc.PodResourcesListerServicer):  # type: ignore[misc]
    def __init__(self, stub: PodResourcesStub) -> None:
        self._stub = stub

    def List(
        self, request: pr_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> pr_pb2.ListPodResourcesResponse:
        self._stub.calls += 1
        if self._stub.unavailable:
            context.abort(grpc.StatusCode.UNAVAILABLE, "stub: kubelet is restarting")
        return pr_pb2.ListPodResourcesResponse(pod_resources=list(self._stub.pods))


def pod_resources(namespace: str, name: str, holdings: Mapping[str, Iterable[str]]) -> pr_pb2.PodResources:
    """A pod with one container holding `holdings` (resource name -> device IDs)."""
    devices = [pr_pb2.ContainerDevices(resource_name=r, device_ids=list(ids)) for r, ids in holdings.items()]
    return pr_pb2.PodResources(
        name=name, namespace=namespace, containers=[pr_pb2.ContainerResources(name="main", devices=devices)]
    )


class PodResourcesStub:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.pods: list[pr_pb2.PodResources] = []
        self.unavailable = False
        self.calls = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pr_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), self._server)
        self._server.add_insecure_port(f"unix://{socket_path}")

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None).wait()


@dataclass(frozen=True)
class FakeNode:
    """A fake node: /dev, sysfs and the trn2 LNC file, in one temp directory."""

    root: Path

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def lnc_file(self) -> Path:
        return self.root / "logical_nc_config"

    @classmethod
    def build(cls, root: Path, devices: int, core_count: int | None = None, lnc: int | None = None) -> FakeNode:
        node = cls(root)
        node.dev.mkdir(parents=True)
        for index in range(devices):
            node.add_device(index, core_count)
        (node.dev / "null").write_text("")  # other device nodes are ignored
        if lnc is not None:
            node.lnc_file.write_text(f"{lnc}\n")
        return node

    def add_device(self, index: int, core_count: int | None = None) -> None:
        (self.dev / f"neuron{index}").write_text("")
        if core_count is not None:
            sysfs = self.sys / "class" / "neuron_device" / f"neuron{index}"
            sysfs.mkdir(parents=True, exist_ok=True)
            (sysfs / "core_count").write_text(f"{core_count}\n")

    def remove_device(self, index: int) -> None:
        (self.dev / f"neuron{index}").unlink()
