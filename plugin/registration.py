"""The Register call to kubelet's Registration service."""

from __future__ import annotations

from pathlib import Path

import grpc

from neuronalloc import Resource
from plugin._proto.deviceplugin.v1beta1 import api_pb2 as dp_pb2
from plugin._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc

API_VERSION = "v1beta1"
KUBELET_SOCKET_NAME = "kubelet.sock"
# Kubelet dials the plugin back from inside Register with a 10 s timeout; wait longer than that.
REGISTER_TIMEOUT_SECONDS = 15.0


def plugin_options() -> dp_pb2.DevicePluginOptions:
    """What this plugin implements: no PreStartContainer work, a real preferred allocation.

    Register and GetDevicePluginOptions must advertise the same thing. A fresh message each call, because
    protobuf messages are mutable.
    """
    return dp_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


class RegistrationError(RuntimeError):
    """Kubelet did not accept the registration; the message carries kubelet's answer."""


def socket_name(resource: Resource) -> str:
    """The plugin socket's file name in the plugin dir, e.g. "neuron-contig-neuroncore.sock"."""
    return f"neuron-contig-{resource.short}.sock"


async def register(
    kubelet_socket: Path, resource: Resource, endpoint: str, timeout: float = REGISTER_TIMEOUT_SECONDS
) -> None:
    request = dp_pb2.RegisterRequest(
        version=API_VERSION,
        endpoint=endpoint,
        resource_name=resource.value,
        options=plugin_options(),
    )
    async with grpc.aio.insecure_channel(f"unix://{kubelet_socket.absolute()}") as channel:
        try:
            await dp_grpc.RegistrationStub(channel).Register(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise RegistrationError(
                f"Register {resource.value} at {kubelet_socket}: {error.code().name}: {error.details()}"
            ) from None
