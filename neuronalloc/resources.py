"""The two extended resources a Neuron node advertises."""

from __future__ import annotations

from enum import StrEnum


class Resource(StrEnum):
    NEURON = "aws.amazon.com/neuron"
    NEURONCORE = "aws.amazon.com/neuroncore"

    @property
    def short(self) -> str:
        """The name without the vendor prefix, used as a metric label value."""
        return self.value.rsplit("/", 1)[1]

    @property
    def unit(self) -> str:
        """One of what the resource counts, as messages say it: "device" or "NeuronCore"."""
        return "device" if self is Resource.NEURON else "NeuronCore"

    @property
    def units(self) -> str:
        return f"{self.unit}s"
