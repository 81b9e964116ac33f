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
