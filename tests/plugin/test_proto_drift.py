"""The checked-in gRPC stubs in plugin/_proto are exactly what `python -m plugin.genproto` makes of protos/."""

from __future__ import annotations

from plugin._proto.deviceplugin.v1beta1 import api_pb2 as dp_pb2
from plugin._proto.podresources.v1 import api_pb2 as pr_pb2
from plugin.genproto import stub_drift


def test_checked_in_stubs_match_the_proto_files() -> None:
    drifted = stub_drift()
    assert drifted == [], f"run `python -m plugin.genproto` and commit the result; drifted: {drifted}"


def test_method_paths_carry_the_kubelet_package_names() -> None:
    assert dp_pb2.DESCRIPTOR.package == "v1beta1"
    assert pr_pb2.DESCRIPTOR.package == "v1"
    plugin_service = dp_pb2.DESCRIPTOR.services_by_name["DevicePlugin"]
    assert [m.name for m in plugin_service.methods] == [
        "GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate", "PreStartContainer",
    ]  # fmt: skip
    assert dp_pb2.DESCRIPTOR.services_by_name["Registration"].methods[0].full_name == "v1beta1.Registration.Register"
    lister = pr_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert {m.name for m in lister.methods} == {"List", "GetAllocatableResources", "Get"}


def test_field_numbers_match_the_fact_sheet() -> None:
    numbers = {
        (m, f.name): f.number
        for m, d in dp_pb2.DESCRIPTOR.message_types_by_name.items()
        for f in d.fields
    }  # fmt: skip
    assert numbers[("ContainerPreferredAllocationRequest", "available_deviceIDs")] == 1
    assert numbers[("ContainerPreferredAllocationRequest", "must_include_deviceIDs")] == 2
    assert numbers[("ContainerPreferredAllocationRequest", "allocation_size")] == 3
    assert numbers[("ContainerAllocateResponse", "cdi_devices")] == 5
    assert numbers[("RegisterRequest", "options")] == 4
    assert numbers[("Device", "topology")] == 3


def test_dra_and_registration_services_carry_the_upstream_paths() -> None:
    """Kubelet dials /k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/... and /pluginregistration.Registration/...:
    the package names must be upstream's, whatever directory the files live in."""
    from plugin._proto.dra.v1 import api_pb2 as dra_pb2
    from plugin._proto.pluginregistration.v1 import api_pb2 as reg_pb2

    dra = dra_pb2.DESCRIPTOR.services_by_name["DRAPlugin"]
    assert [m.full_name for m in dra.methods] == [
        "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin.NodePrepareResources",
        "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin.NodeUnprepareResources",
    ]
    registration = reg_pb2.DESCRIPTOR.services_by_name["Registration"]
    assert [m.full_name for m in registration.methods] == [
        "pluginregistration.Registration.GetInfo",
        "pluginregistration.Registration.NotifyRegistrationStatus",
    ]
    device = {f.name: f.number for f in dra_pb2.Device.DESCRIPTOR.fields}
    assert device == {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4, "share_id": 5}
    info = {f.name: f.number for f in reg_pb2.PluginInfo.DESCRIPTOR.fields}
    assert info == {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4}
