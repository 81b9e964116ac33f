"""The extended resources a Neuron node advertises."""

from __future__ import annotations

from enum import StrEnum


class Resource(StrEnum):
    NEURON = "aws.amazon.com/neuron"
    NEURONCORE = "aws.amazon.com/neuroncore"
    # What AWS's device plugin 2.1-2.21 (2022-2024) registered for whole devices, and recommended: pod specs of
    # that era ask for it. An alias of NEURON: the same devices, IDs and accounting under a third name.
    NEURONDEVICE = "aws.amazon.com/neurondevice"

    @property
    def short(self) -> str:
        """The name without the vendor prefix, used as a metric label value."""
        return self.value.rsplit("/", 1)[1]

    @property
    def whole_devices(self) -> bool:
        """True for the names that count whole devices (`neuron` and its alias `neurondevice`)."""
        return self is not Resource.NEURONCORE

    @property
    def unit(self) -> str:
        """One of what the resource counts, as messages say it: "device" or "NeuronCore"."""
        return "device" if self.whole_devices else "NeuronCore"

    @property
    def units(self) -> str:
        return f"{self.unit}s"


DEVICE_RESOURCES: tuple[Resource, ...] = tuple(r for r in Resource if r.whole_devices)
