"""A node's Neuron topology: how many devices and cores it has, and which device blocks the runtime accepts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from neuronalloc.resources import Resource


class Rule(StrEnum):
    """Which device sets the Neuron runtime accepts as one block."""

    WINDOW = "window"  # inf1/inf2 rings, and the unknown-type fallback: any N consecutive IDs, no wrap-around
    ALIGNED = "aligned"  # trn 4x4 torus: 1, 4, 8 or 16 devices starting at a multiple of the size


ALIGNED_SIZES: tuple[int, ...] = (1, 4, 8, 16)


@dataclass(frozen=True)
class Topology:
    instance_type: str
    family: str
    device_count: int
    cores_per_device: int
    rule: Rule
    known: bool = True  # False: the instance type is not in the catalog and the devices form a linear chain

    def __post_init__(self) -> None:
        if self.device_count < 0:
            raise ValueError(f"device_count must be >= 0, got {self.device_count}")
        if self.cores_per_device < 1:
            raise ValueError(f"cores_per_device must be >= 1, got {self.cores_per_device}")

    @property
    def core_count(self) -> int:
        return self.device_count * self.cores_per_device

    def unit_count(self, resource: Resource) -> int:
        """How many IDs the node advertises for the resource."""
        return self.device_count if resource.whole_devices else self.core_count

    def device_of_core(self, core: int) -> int:
        return core // self.cores_per_device

    def cores_of_device(self, device: int) -> range:
        return range(device * self.cores_per_device, (device + 1) * self.cores_per_device)

    def devices_of_cores(self, cores: Iterable[int]) -> frozenset[int]:
        return frozenset(core // self.cores_per_device for core in cores)

    def cores_of_devices(self, devices: Iterable[int]) -> frozenset[int]:
        return frozenset(core for device in devices for core in self.cores_of_device(device))

    def describe_rule(self, resource: Resource) -> str:
        """The block rule in words, as error messages and scheduling events show it."""
        if resource is Resource.NEURONCORE:
            return (
                f"{self.instance_type}: a NeuronCore block is a contiguous range of global core indices "
                f"(core = device x {self.cores_per_device} + k, cores 0-{max(self.core_count - 1, 0)})"
            )
        if self.rule is Rule.ALIGNED:
            allowed = [str(s) for s in ALIGNED_SIZES if s <= self.device_count]
            sizes = allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1]) + " or " + allowed[-1]
            return (
                f"{self.instance_type}: a device block is {sizes} devices starting at a multiple of its size "
                f"(devices 0-{max(self.device_count - 1, 0)})"
            )
        chain = "" if self.known else " (unknown instance type: linear chain)"
        return (
            f"{self.instance_type}: a device block is consecutive device IDs with no wrap-around "
            f"(devices 0-{max(self.device_count - 1, 0)}){chain}"
        )
