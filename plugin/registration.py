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


class RegistrationError(RuntimeError):
    """Kubelet did not accept the registration; the message carries kubelet's answer."""


def socket_name(resource: Resource) -> str:
    """The plugin socket's file name in the plugin dir, e.g. "neuron-contig-neuroncore.sock"."""
    return f"neuron-contig-{resource.short}.sock"


async def register(
    kubelet_socket: Path,
    resource: Resource,
    endpoint: str,
    options: dp_pb2.DevicePluginOptions,
    timeout: float = REGISTER_TIMEOUT_SECONDS,
) -> None:
    """Register `resource` served at `endpoint` with the options its server advertises (the servicer's own,
    so Register and GetDevicePluginOptions say the same)."""
    request = dp_pb2.RegisterRequest(
        version=API_VERSION, endpoint=endpoint, resource_name=resource.value, options=options
    )
    async with grpc.aio.insecure_channel(f"unix://{kubelet_socket.absolute()}") as channel:
        try:
            await dp_grpc.RegistrationStub(channel).Register(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise RegistrationError(
                f"Register {resource.value} at {kubelet_socket}: {error.code().name}: {error.details()}"
            ) from None
